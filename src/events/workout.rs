//! Workout events: `workout.created`, `workout.updated`, `workout.deleted`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{identifier, timestamp};
use crate::{schema::DomainEvent, schema::ValidationError};

/// A member logged a workout (`workout.created`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct WorkoutCreated {
    /// The workout's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub workout_id: String,
    /// The member who did the workout; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub member_id: String,
    /// The kind of workout, e.g. `strength`, `running`; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub workout_type: String,
    /// How long it lasted, in minutes; 1–1440 (one day).
    #[garde(range(min = 1, max = 1440))]
    pub duration_minutes: u32,
    /// Calories burned, if known; at most 20 000.
    #[garde(range(max = 20_000))]
    pub calories: Option<u32>,
    /// When the workout started (UTC).
    #[garde(custom(timestamp))]
    pub started_at: DateTime<Utc>,
}

impl DomainEvent for WorkoutCreated {
    const EVENT_TYPE: &'static str = "workout.created";

    fn validate(&self) -> Result<(), ValidationError> {
        ValidationError::from_garde(Self::EVENT_TYPE, garde::Validate::validate(self))
    }
}

/// A member edited a logged workout (`workout.updated`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct WorkoutUpdated {
    /// The workout's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub workout_id: String,
    /// The member who owns the workout; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub member_id: String,
    /// The names of the fields that changed; at least one, each 1–64 characters.
    #[garde(
        length(min = 1),
        inner(length(chars, min = 1, max = 64), custom(identifier))
    )]
    pub changed_fields: Vec<String>,
    /// The new duration in minutes, if it changed; 1–1440.
    #[garde(range(min = 1, max = 1440))]
    pub duration_minutes: Option<u32>,
}

impl DomainEvent for WorkoutUpdated {
    const EVENT_TYPE: &'static str = "workout.updated";

    fn validate(&self) -> Result<(), ValidationError> {
        ValidationError::from_garde(Self::EVENT_TYPE, garde::Validate::validate(self))
    }
}

/// A logged workout was removed (`workout.deleted`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct WorkoutDeleted {
    /// The workout's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub workout_id: String,
    /// The member who owned the workout; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub member_id: String,
    /// Why it was deleted, if given; at most 500 characters.
    #[garde(length(chars, max = 500))]
    pub reason: Option<String>,
}

impl DomainEvent for WorkoutDeleted {
    const EVENT_TYPE: &'static str = "workout.deleted";

    fn validate(&self) -> Result<(), ValidationError> {
        ValidationError::from_garde(Self::EVENT_TYPE, garde::Validate::validate(self))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::testing::Example;

    #[test]
    fn examples_are_valid_and_round_trip() {
        assert_example_valid(WorkoutCreated::example());
        assert_example_valid(WorkoutUpdated::example());
        assert_example_valid(WorkoutDeleted::example());
    }

    #[test]
    fn workout_created_rules() {
        let ok = WorkoutCreated::example;
        assert_rejected(
            WorkoutCreated {
                workout_id: String::new(),
                ..ok()
            },
            "workout_id",
        );
        assert_rejected(
            WorkoutCreated {
                workout_id: chars(65),
                ..ok()
            },
            "workout_id",
        );
        assert_rejected(
            WorkoutCreated {
                member_id: String::new(),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            WorkoutCreated {
                member_id: chars(65),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            WorkoutCreated {
                workout_type: String::new(),
                ..ok()
            },
            "workout_type",
        );
        assert_rejected(
            WorkoutCreated {
                workout_type: chars(65),
                ..ok()
            },
            "workout_type",
        );
        assert_rejected(
            WorkoutCreated {
                duration_minutes: 0,
                ..ok()
            },
            "duration_minutes",
        );
        assert_rejected(
            WorkoutCreated {
                duration_minutes: 1441,
                ..ok()
            },
            "duration_minutes",
        );
        assert_rejected(
            WorkoutCreated {
                calories: Some(20_001),
                ..ok()
            },
            "calories",
        );
    }

    #[test]
    fn workout_created_limits_are_inclusive() {
        let edge = WorkoutCreated {
            workout_id: chars(64),
            member_id: "m".to_owned(),
            workout_type: chars(64),
            duration_minutes: 1440,
            calories: Some(20_000),
            ..WorkoutCreated::example()
        };
        assert_eq!(edge.validate(), Ok(()));
        let minimal = WorkoutCreated {
            duration_minutes: 1,
            calories: None,
            ..edge
        };
        assert_eq!(minimal.validate(), Ok(()));
    }

    #[test]
    fn workout_created_reports_every_broken_rule() {
        let bad = WorkoutCreated {
            workout_id: String::new(),
            duration_minutes: 0,
            ..WorkoutCreated::example()
        };
        let err = assert_rejected(bad, "workout_id");
        assert_eq!(err.violations().len(), 2, "{err}");
        assert!(
            err.violations()
                .iter()
                .any(|v| v.field == "duration_minutes")
        );
    }

    #[test]
    fn workout_updated_rules() {
        let ok = WorkoutUpdated::example;
        assert_rejected(
            WorkoutUpdated {
                workout_id: String::new(),
                ..ok()
            },
            "workout_id",
        );
        assert_rejected(
            WorkoutUpdated {
                workout_id: chars(65),
                ..ok()
            },
            "workout_id",
        );
        assert_rejected(
            WorkoutUpdated {
                member_id: String::new(),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            WorkoutUpdated {
                member_id: chars(65),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            WorkoutUpdated {
                changed_fields: vec![],
                ..ok()
            },
            "changed_fields",
        );
        let empty_name = vec!["calories".to_owned(), String::new()];
        assert_rejected(
            WorkoutUpdated {
                changed_fields: empty_name,
                ..ok()
            },
            "changed_fields[1]",
        );
        assert_rejected(
            WorkoutUpdated {
                changed_fields: vec![chars(65)],
                ..ok()
            },
            "changed_fields[0]",
        );
        assert_rejected(
            WorkoutUpdated {
                duration_minutes: Some(0),
                ..ok()
            },
            "duration_minutes",
        );
        assert_rejected(
            WorkoutUpdated {
                duration_minutes: Some(1441),
                ..ok()
            },
            "duration_minutes",
        );
        assert_eq!(
            WorkoutUpdated {
                duration_minutes: None,
                ..ok()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn workout_deleted_rules() {
        let ok = WorkoutDeleted::example;
        assert_rejected(
            WorkoutDeleted {
                workout_id: String::new(),
                ..ok()
            },
            "workout_id",
        );
        assert_rejected(
            WorkoutDeleted {
                workout_id: chars(65),
                ..ok()
            },
            "workout_id",
        );
        assert_rejected(
            WorkoutDeleted {
                member_id: String::new(),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            WorkoutDeleted {
                member_id: chars(65),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            WorkoutDeleted {
                reason: Some(chars(501)),
                ..ok()
            },
            "reason",
        );
        assert_eq!(
            WorkoutDeleted {
                reason: Some(chars(500)),
                ..ok()
            }
            .validate(),
            Ok(())
        );
        assert_eq!(
            WorkoutDeleted {
                reason: None,
                ..ok()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn json_unknown_and_missing_fields_are_rejected() {
        assert_unknown_field_rejected(WorkoutCreated::example());
        assert_unknown_field_rejected(WorkoutUpdated::example());
        assert_unknown_field_rejected(WorkoutDeleted::example());
        assert_missing_field_rejected(WorkoutCreated::example(), "duration_minutes");
        assert_missing_field_rejected(WorkoutUpdated::example(), "changed_fields");
        assert_missing_field_rejected(WorkoutDeleted::example(), "member_id");
    }

    #[test]
    fn json_optional_fields_may_be_null_or_absent() {
        let mut json = serde_json::to_value(WorkoutCreated::example()).unwrap();
        json["calories"] = serde_json::Value::Null;
        assert_eq!(
            crate::schema::SchemaRegistry::builtin()
                .validate_json(WorkoutCreated::EVENT_TYPE, &json),
            Some(Ok(()))
        );
        json.as_object_mut().unwrap().remove("calories");
        let parsed: WorkoutCreated = serde_json::from_value(json).unwrap();
        assert_eq!(parsed.calories, None);
    }
}
