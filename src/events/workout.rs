//! Workout events: `workout.created`, `workout.updated`, `workout.deleted`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{identifier, timestamp};
use crate::schema::{DomainEvent, ValidationError, validate_with_garde};

/// A workout was created (`workout.created`).
///
/// Only `workout_id` is required: it is all a consumer needs to know which workout the
/// event is about (the tenant is the envelope's `organization_id`), and the original
/// Python library's documented call sends just `{"workout_id": "123", "title": "Morning
/// Yoga"}` — a workout may be a plan or a class template with no member, type or start
/// yet. Every other field is optional and checked when present.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate, schemars::JsonSchema,
)]
pub struct WorkoutCreated {
    /// The workout's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub workout_id: String,
    /// The workout's title, e.g. `Morning Yoga`, if it has one; 1–200 characters.
    #[schemars(length(min = 1, max = 200))]
    #[garde(inner(length(chars, min = 1, max = 200)))]
    pub title: Option<String>,
    /// The member who did the workout, if it is a member's; 1–64 characters.
    #[schemars(length(min = 1, max = 64))]
    #[garde(inner(length(chars, min = 1, max = 64), custom(identifier)))]
    pub member_id: Option<String>,
    /// The kind of workout, e.g. `strength`, `running`, if known; 1–64 characters.
    #[schemars(length(min = 1, max = 64))]
    #[garde(inner(length(chars, min = 1, max = 64), custom(identifier)))]
    pub workout_type: Option<String>,
    /// How long it lasted, in minutes, if known; 1–1440 (one day).
    #[garde(range(min = 1, max = 1440))]
    pub duration_minutes: Option<u32>,
    /// Calories burned, if known; at most 20 000.
    #[garde(range(max = 20_000))]
    pub calories: Option<u32>,
    /// When the workout started (UTC), if known.
    #[garde(inner(custom(timestamp)))]
    pub started_at: Option<DateTime<Utc>>,
}

impl DomainEvent for WorkoutCreated {
    const EVENT_TYPE: &'static str = "workout.created";
    const RULES_NOT_IN_SCHEMA: &'static [&'static str] = &[super::ID_RULE, super::TIMESTAMP_RULE];

    fn validate(&self) -> Result<(), ValidationError> {
        validate_with_garde(self)
    }
}

/// Version 2 of `workout.created` — a **breaking** change from [`WorkoutCreated`]
/// (version 1), declared in [`BREAKING_CHANGES`](super::BREAKING_CHANGES): `workout_type`
/// is renamed `activity`, and `duration_minutes` became `duration_seconds`.
///
/// Publishers of `workout.created` keep sending version 1 (the typed [`WorkoutCreated`],
/// and JSON events unless they pin version 2 or call
/// [`Event::with_version(2)`](crate::Event::with_version)); consumers bring version 1 to
/// this shape with [`SchemaRegistry::upcast`](crate::SchemaRegistry::upcast), which uses
/// the `From<WorkoutCreated>` conversion.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate, schemars::JsonSchema,
)]
pub struct WorkoutCreatedV2 {
    /// The workout's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub workout_id: String,
    /// The workout's title, if it has one; 1–200 characters.
    #[schemars(length(min = 1, max = 200))]
    #[garde(inner(length(chars, min = 1, max = 200)))]
    pub title: Option<String>,
    /// The member who did the workout, if it is a member's; 1–64 characters.
    #[schemars(length(min = 1, max = 64))]
    #[garde(inner(length(chars, min = 1, max = 64), custom(identifier)))]
    pub member_id: Option<String>,
    /// The kind of activity, e.g. `strength`, `running` (version 1's `workout_type`);
    /// 1–64 characters.
    #[schemars(length(min = 1, max = 64))]
    #[garde(inner(length(chars, min = 1, max = 64), custom(identifier)))]
    pub activity: Option<String>,
    /// How long it lasted, in seconds, if known; 1–86 400 (one day).
    #[garde(range(min = 1, max = 86_400))]
    pub duration_seconds: Option<u32>,
    /// Calories burned, if known; at most 20 000.
    #[garde(range(max = 20_000))]
    pub calories: Option<u32>,
    /// When the workout started (UTC), if known.
    #[garde(inner(custom(timestamp)))]
    pub started_at: Option<DateTime<Utc>>,
}

impl DomainEvent for WorkoutCreatedV2 {
    const EVENT_TYPE: &'static str = "workout.created";
    const VERSION: u32 = 2;
    const RULES_NOT_IN_SCHEMA: &'static [&'static str] = &[super::ID_RULE, super::TIMESTAMP_RULE];

    fn validate(&self) -> Result<(), ValidationError> {
        validate_with_garde(self)
    }
}

/// Upcasts version 1 to version 2.
impl From<WorkoutCreated> for WorkoutCreatedV2 {
    fn from(v1: WorkoutCreated) -> Self {
        Self {
            workout_id: v1.workout_id,
            title: v1.title,
            member_id: v1.member_id,
            activity: v1.workout_type,
            duration_seconds: v1.duration_minutes.map(|minutes| minutes * 60),
            calories: v1.calories,
            started_at: v1.started_at,
        }
    }
}

/// A workout was edited (`workout.updated`).
///
/// Only `workout_id` is required (what a consumer needs to refetch or invalidate the
/// workout); the member, the new title and the list of changed fields are optional.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate, schemars::JsonSchema,
)]
pub struct WorkoutUpdated {
    /// The workout's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub workout_id: String,
    /// The member who owns the workout, if it is a member's; 1–64 characters.
    #[schemars(length(min = 1, max = 64))]
    #[garde(inner(length(chars, min = 1, max = 64), custom(identifier)))]
    pub member_id: Option<String>,
    /// The new title, if it changed; 1–200 characters.
    #[schemars(length(min = 1, max = 200))]
    #[garde(inner(length(chars, min = 1, max = 200)))]
    pub title: Option<String>,
    /// The names of the fields that changed, if the publisher knows them (empty or absent:
    /// not said); each 1–64 characters.
    #[serde(default)]
    #[garde(inner(length(chars, min = 1, max = 64), custom(identifier)))]
    pub changed_fields: Vec<String>,
    /// The new duration in minutes, if it changed; 1–1440.
    #[garde(range(min = 1, max = 1440))]
    pub duration_minutes: Option<u32>,
}

impl DomainEvent for WorkoutUpdated {
    const EVENT_TYPE: &'static str = "workout.updated";
    const RULES_NOT_IN_SCHEMA: &'static [&'static str] = &[super::ID_RULE];

    fn validate(&self) -> Result<(), ValidationError> {
        validate_with_garde(self)
    }
}

/// A workout was removed (`workout.deleted`).
///
/// Only `workout_id` is required; the member and the reason are optional.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate, schemars::JsonSchema,
)]
pub struct WorkoutDeleted {
    /// The workout's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub workout_id: String,
    /// The member who owned the workout, if it was a member's; 1–64 characters.
    #[schemars(length(min = 1, max = 64))]
    #[garde(inner(length(chars, min = 1, max = 64), custom(identifier)))]
    pub member_id: Option<String>,
    /// Why it was deleted, if given; at most 500 characters.
    #[garde(length(chars, max = 500))]
    pub reason: Option<String>,
}

impl DomainEvent for WorkoutDeleted {
    const EVENT_TYPE: &'static str = "workout.deleted";
    const RULES_NOT_IN_SCHEMA: &'static [&'static str] = &[super::ID_RULE];

    fn validate(&self) -> Result<(), ValidationError> {
        validate_with_garde(self)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::{
        schema::{SchemaRegistry, UnknownFields},
        testing::Example,
    };

    #[test]
    fn examples_are_valid_and_round_trip() {
        assert_example_valid(WorkoutCreated::example());
        assert_example_valid(WorkoutUpdated::example());
        assert_example_valid(WorkoutDeleted::example());
    }

    #[test]
    fn workout_created_rules() {
        let ok = WorkoutCreated::example;
        for (bad, field) in [
            (
                WorkoutCreated {
                    workout_id: String::new(),
                    ..ok()
                },
                "workout_id",
            ),
            (
                WorkoutCreated {
                    workout_id: chars(65),
                    ..ok()
                },
                "workout_id",
            ),
            (
                WorkoutCreated {
                    title: Some(String::new()),
                    ..ok()
                },
                "title",
            ),
            (
                WorkoutCreated {
                    title: Some(chars(201)),
                    ..ok()
                },
                "title",
            ),
            (
                WorkoutCreated {
                    member_id: Some(String::new()),
                    ..ok()
                },
                "member_id",
            ),
            (
                WorkoutCreated {
                    member_id: Some(chars(65)),
                    ..ok()
                },
                "member_id",
            ),
            (
                WorkoutCreated {
                    workout_type: Some(String::new()),
                    ..ok()
                },
                "workout_type",
            ),
            (
                WorkoutCreated {
                    workout_type: Some(chars(65)),
                    ..ok()
                },
                "workout_type",
            ),
            (
                WorkoutCreated {
                    duration_minutes: Some(0),
                    ..ok()
                },
                "duration_minutes",
            ),
            (
                WorkoutCreated {
                    duration_minutes: Some(1441),
                    ..ok()
                },
                "duration_minutes",
            ),
            (
                WorkoutCreated {
                    calories: Some(20_001),
                    ..ok()
                },
                "calories",
            ),
        ] {
            assert_rejected(bad, field);
        }
    }

    #[test]
    fn workout_created_limits_are_inclusive() {
        let edge = WorkoutCreated {
            workout_id: chars(64),
            title: Some(chars(200)),
            member_id: Some("m".to_owned()),
            workout_type: Some(chars(64)),
            duration_minutes: Some(1440),
            calories: Some(20_000),
            ..WorkoutCreated::example()
        };
        assert_eq!(edge.validate(), Ok(()));
        let minimal = WorkoutCreated {
            title: Some("x".to_owned()),
            duration_minutes: Some(1),
            calories: None,
            ..edge
        };
        assert_eq!(minimal.validate(), Ok(()));
    }

    /// Only the id is required: the original library's README call validates, and so
    /// does the id alone.
    #[test]
    fn workout_created_requires_only_the_workout_id() {
        let registry = SchemaRegistry::builtin();
        for data in [
            serde_json::json!({"workout_id": "123", "title": "Morning Yoga"}),
            serde_json::json!({"workout_id": "123"}),
            serde_json::json!({"workout_id": "123", "member_id": null, "started_at": null}),
        ] {
            assert_eq!(
                registry.validate_json(WorkoutCreated::EVENT_TYPE, &data),
                Some(Ok(())),
                "{data}"
            );
        }
        let parsed: WorkoutCreated = serde_json::from_value(
            serde_json::json!({"workout_id": "123", "title": "Morning Yoga"}),
        )
        .unwrap();
        assert_eq!(parsed.title.as_deref(), Some("Morning Yoga"));
        assert_eq!(parsed.member_id, None);
    }

    #[test]
    fn workout_created_reports_every_broken_rule() {
        let bad = WorkoutCreated {
            workout_id: String::new(),
            duration_minutes: Some(0),
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
        for (bad, field) in [
            (
                WorkoutUpdated {
                    workout_id: String::new(),
                    ..ok()
                },
                "workout_id",
            ),
            (
                WorkoutUpdated {
                    workout_id: chars(65),
                    ..ok()
                },
                "workout_id",
            ),
            (
                WorkoutUpdated {
                    member_id: Some(String::new()),
                    ..ok()
                },
                "member_id",
            ),
            (
                WorkoutUpdated {
                    member_id: Some(chars(65)),
                    ..ok()
                },
                "member_id",
            ),
            (
                WorkoutUpdated {
                    title: Some(chars(201)),
                    ..ok()
                },
                "title",
            ),
            (
                WorkoutUpdated {
                    changed_fields: vec!["calories".to_owned(), String::new()],
                    ..ok()
                },
                "changed_fields[1]",
            ),
            (
                WorkoutUpdated {
                    changed_fields: vec![chars(65)],
                    ..ok()
                },
                "changed_fields[0]",
            ),
            (
                WorkoutUpdated {
                    duration_minutes: Some(0),
                    ..ok()
                },
                "duration_minutes",
            ),
            (
                WorkoutUpdated {
                    duration_minutes: Some(1441),
                    ..ok()
                },
                "duration_minutes",
            ),
        ] {
            assert_rejected(bad, field);
        }
        let minimal = WorkoutUpdated {
            member_id: None,
            title: None,
            changed_fields: vec![],
            duration_minutes: None,
            ..ok()
        };
        assert_eq!(minimal.validate(), Ok(()));
        let data = serde_json::json!({"workout_id": "123", "title": "Evening Yoga"});
        assert_eq!(
            SchemaRegistry::builtin().validate_json(WorkoutUpdated::EVENT_TYPE, &data),
            Some(Ok(()))
        );
    }

    #[test]
    fn workout_deleted_rules() {
        let ok = WorkoutDeleted::example;
        for (bad, field) in [
            (
                WorkoutDeleted {
                    workout_id: String::new(),
                    ..ok()
                },
                "workout_id",
            ),
            (
                WorkoutDeleted {
                    workout_id: chars(65),
                    ..ok()
                },
                "workout_id",
            ),
            (
                WorkoutDeleted {
                    member_id: Some(String::new()),
                    ..ok()
                },
                "member_id",
            ),
            (
                WorkoutDeleted {
                    member_id: Some(chars(65)),
                    ..ok()
                },
                "member_id",
            ),
            (
                WorkoutDeleted {
                    reason: Some(chars(501)),
                    ..ok()
                },
                "reason",
            ),
        ] {
            assert_rejected(bad, field);
        }
        for fine in [
            WorkoutDeleted {
                reason: Some(chars(500)),
                ..ok()
            },
            WorkoutDeleted {
                reason: None,
                member_id: None,
                ..ok()
            },
        ] {
            assert_eq!(fine.validate(), Ok(()));
        }
    }

    #[test]
    fn json_unknown_fields_follow_the_policy_and_missing_ids_are_rejected() {
        assert_unknown_field_rejected(WorkoutCreated::example());
        assert_unknown_field_rejected(WorkoutUpdated::example());
        assert_unknown_field_rejected(WorkoutDeleted::example());
        assert_unknown_field_forwarded(WorkoutCreated::example());
        assert_unknown_field_forwarded(WorkoutUpdated::example());
        assert_unknown_field_forwarded(WorkoutDeleted::example());
        assert_missing_field_rejected(WorkoutCreated::example(), "workout_id");
        assert_missing_field_rejected(WorkoutUpdated::example(), "workout_id");
        assert_missing_field_rejected(WorkoutDeleted::example(), "workout_id");
        let err = SchemaRegistry::builtin()
            .validate_json_with(
                WorkoutCreated::EVENT_TYPE,
                None,
                &serde_json::json!({"workout_id": "123", "titel": "typo"}),
                UnknownFields::Reject,
            )
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown field `titel`, expected one of `workout_id`, `title`"),
            "{err}"
        );
    }

    #[test]
    fn workout_created_v2_rules_and_upcast() {
        let v2 = WorkoutCreatedV2::example();
        assert_eq!(v2.validate(), Ok(()));
        assert_rejected(
            WorkoutCreatedV2 {
                duration_seconds: Some(86_401),
                ..v2.clone()
            },
            "duration_seconds",
        );
        assert_rejected(
            WorkoutCreatedV2 {
                activity: Some(String::new()),
                ..v2.clone()
            },
            "activity",
        );
        // The conversion keeps everything, renamed; the registry's JSON upcast agrees.
        let v1 = WorkoutCreated::example();
        let converted = WorkoutCreatedV2::from(v1.clone());
        assert_eq!(converted.activity, v1.workout_type);
        assert_eq!(converted.duration_seconds, Some(45 * 60));
        let registry = SchemaRegistry::builtin();
        let (version, json) = registry
            .upcast("workout.created", 1, serde_json::to_value(&v1).unwrap())
            .unwrap();
        assert_eq!(version, 2);
        assert_eq!(json, serde_json::to_value(&converted).unwrap());
        // Already the newest: validated and returned as is.
        let v2_json = serde_json::to_value(&v2).unwrap();
        assert_eq!(
            registry.upcast("workout.created", 2, v2_json.clone()),
            Ok((2, v2_json))
        );
        // An invalid version-1 payload is not converted.
        let err = registry
            .upcast("workout.created", 1, serde_json::json!({"workout_id": ""}))
            .unwrap_err();
        assert_eq!(err.violations()[0].field, "workout_id");
        let err = registry
            .upcast("workout.created", 9, serde_json::json!({}))
            .unwrap_err();
        assert_eq!(err.violations()[0].field, "version");
        // A type with one version: upcast only validates.
        let deleted = serde_json::to_value(WorkoutDeleted::example()).unwrap();
        assert_eq!(
            registry.upcast("workout.deleted", 1, deleted.clone()),
            Ok((1, deleted))
        );
    }

    #[test]
    fn json_events_validate_against_the_version_they_name() {
        let registry = SchemaRegistry::builtin();
        let v1 = serde_json::to_value(WorkoutCreated::example()).unwrap();
        let v2 = serde_json::to_value(WorkoutCreatedV2::example()).unwrap();
        let check = |version, data: &serde_json::Value| {
            registry
                .validate_json_with("workout.created", version, data, UnknownFields::Reject)
                .unwrap()
        };
        assert_eq!(check(None, &v1), Ok(()), "current is version 1");
        assert_eq!(check(Some(1), &v1), Ok(()));
        assert_eq!(check(Some(2), &v2), Ok(()));
        assert!(check(None, &v2).is_err(), "v2 is not current");
        // Under `forward`, the v2 shape passes as v1 (its differing fields are optional):
        // the pitfall docs/wire-contract.md's *Versioning* warns about.
        assert_eq!(
            registry.validate_json_with("workout.created", None, &v2, UnknownFields::Forward),
            Some(Ok(()))
        );
        assert!(check(Some(2), &v1).is_err());
        let err = check(Some(3), &v1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`workout.created`: version: version 3 of `workout.created` is not registered (registered: 1, 2)"
        );
        // Pinned to version 2, unnamed JSON events are version 2.
        let pinned = registry.with_current("workout.created", 2);
        assert_eq!(pinned.version("workout.created"), Some(2));
        assert_eq!(
            pinned.validate_json_with("workout.created", None, &v2, UnknownFields::Reject),
            Some(Ok(()))
        );
    }

    #[test]
    fn json_optional_fields_may_be_null_or_absent() {
        let mut json = serde_json::to_value(WorkoutCreated::example()).unwrap();
        json["calories"] = serde_json::Value::Null;
        assert_eq!(
            SchemaRegistry::builtin().validate_json(WorkoutCreated::EVENT_TYPE, &json),
            Some(Ok(()))
        );
        json.as_object_mut().unwrap().remove("calories");
        let parsed: WorkoutCreated = serde_json::from_value(json).unwrap();
        assert_eq!(parsed.calories, None);
    }
}
