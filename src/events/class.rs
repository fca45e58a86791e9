//! Class events: `class.scheduled`, `class.cancelled`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::after;
#[cfg(test)]
use super::utc;
use super::{identifier, timestamp};
use crate::schema::{DomainEvent, ValidationError, validate_with_garde};

/// A class was put on the schedule (`class.scheduled`).
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate, schemars::JsonSchema,
)]
pub struct ClassScheduled {
    /// The class's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub class_id: String,
    /// The class's display name, e.g. `Evening Spin`; 1–128 characters.
    #[garde(length(chars, min = 1, max = 128))]
    pub name: String,
    /// The instructor who leads it; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub instructor_id: String,
    /// When it starts (UTC).
    #[garde(custom(timestamp))]
    pub starts_at: DateTime<Utc>,
    /// When it ends (UTC); must be after `starts_at`.
    #[garde(custom(timestamp), custom(after(&self.starts_at, "starts_at")))]
    pub ends_at: DateTime<Utc>,
    /// How many members can book it; 1–1000.
    #[garde(range(min = 1, max = 1000))]
    pub capacity: u32,
    /// Where it takes place (room, studio, park), if given; at most 128 characters.
    #[garde(length(chars, max = 128))]
    pub location: Option<String>,
}

impl DomainEvent for ClassScheduled {
    const EVENT_TYPE: &'static str = "class.scheduled";
    const RULES_NOT_IN_SCHEMA: &'static [&'static str] = &[
        super::ID_RULE,
        super::TIMESTAMP_RULE,
        "`ends_at` is after `starts_at`",
    ];

    fn validate(&self) -> Result<(), ValidationError> {
        validate_with_garde(self)
    }
}

/// A scheduled class was called off (`class.cancelled`).
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate, schemars::JsonSchema,
)]
pub struct ClassCancelled {
    /// The class's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub class_id: String,
    /// When the class would have started (UTC).
    #[garde(custom(timestamp))]
    pub starts_at: DateTime<Utc>,
    /// Why it was cancelled; 1–500 characters.
    #[garde(length(chars, min = 1, max = 500))]
    pub reason: String,
    /// Whether the members who booked it should be notified.
    #[garde(skip)]
    pub notify_members: bool,
}

impl DomainEvent for ClassCancelled {
    const EVENT_TYPE: &'static str = "class.cancelled";
    const RULES_NOT_IN_SCHEMA: &'static [&'static str] = &[super::ID_RULE, super::TIMESTAMP_RULE];

    fn validate(&self) -> Result<(), ValidationError> {
        validate_with_garde(self)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::testing::Example;

    #[test]
    fn examples_are_valid_and_round_trip() {
        assert_example_valid(ClassScheduled::example());
        assert_example_valid(ClassCancelled::example());
    }

    #[test]
    fn class_scheduled_rules() {
        let ok = ClassScheduled::example;
        assert_rejected(
            ClassScheduled {
                class_id: String::new(),
                ..ok()
            },
            "class_id",
        );
        assert_rejected(
            ClassScheduled {
                class_id: chars(65),
                ..ok()
            },
            "class_id",
        );
        assert_rejected(
            ClassScheduled {
                name: String::new(),
                ..ok()
            },
            "name",
        );
        assert_rejected(
            ClassScheduled {
                name: chars(129),
                ..ok()
            },
            "name",
        );
        assert_eq!(
            ClassScheduled {
                name: chars(128),
                ..ok()
            }
            .validate(),
            Ok(())
        );
        assert_rejected(
            ClassScheduled {
                instructor_id: String::new(),
                ..ok()
            },
            "instructor_id",
        );
        assert_rejected(
            ClassScheduled {
                instructor_id: chars(65),
                ..ok()
            },
            "instructor_id",
        );
        assert_rejected(
            ClassScheduled {
                capacity: 0,
                ..ok()
            },
            "capacity",
        );
        assert_rejected(
            ClassScheduled {
                capacity: 1001,
                ..ok()
            },
            "capacity",
        );
        assert_eq!(
            ClassScheduled {
                capacity: 1000,
                ..ok()
            }
            .validate(),
            Ok(())
        );
        assert_eq!(
            ClassScheduled {
                capacity: 1,
                ..ok()
            }
            .validate(),
            Ok(())
        );
        assert_rejected(
            ClassScheduled {
                location: Some(chars(129)),
                ..ok()
            },
            "location",
        );
        assert_eq!(
            ClassScheduled {
                location: None,
                ..ok()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn class_scheduled_ends_after_it_starts() {
        let ok = ClassScheduled::example;
        let zero_length = ClassScheduled {
            ends_at: ok().starts_at,
            ..ok()
        };
        let err = assert_rejected(zero_length, "ends_at");
        assert_eq!(err.violations().len(), 1, "{err}");
        assert_eq!(err.violations()[0].message, "must be after starts_at");
        assert_rejected(
            ClassScheduled {
                ends_at: utc(2026, 3, 9, 17, 0),
                ..ok()
            },
            "ends_at",
        );
    }

    #[test]
    fn class_cancelled_rules() {
        let ok = ClassCancelled::example;
        assert_rejected(
            ClassCancelled {
                class_id: String::new(),
                ..ok()
            },
            "class_id",
        );
        assert_rejected(
            ClassCancelled {
                class_id: chars(65),
                ..ok()
            },
            "class_id",
        );
        assert_rejected(
            ClassCancelled {
                reason: String::new(),
                ..ok()
            },
            "reason",
        );
        assert_rejected(
            ClassCancelled {
                reason: chars(501),
                ..ok()
            },
            "reason",
        );
        assert_eq!(
            ClassCancelled {
                reason: chars(500),
                ..ok()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn json_unknown_and_missing_fields_are_rejected() {
        assert_unknown_field_rejected(ClassScheduled::example());
        assert_unknown_field_rejected(ClassCancelled::example());
        assert_missing_field_rejected(ClassScheduled::example(), "ends_at");
        assert_missing_field_rejected(ClassScheduled::example(), "capacity");
        assert_missing_field_rejected(ClassCancelled::example(), "reason");
        assert_missing_field_rejected(ClassCancelled::example(), "notify_members");
    }
}
