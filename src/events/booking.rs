//! Booking events: `booking.confirmed`, `booking.cancelled`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{identifier, timestamp};
use crate::schema::{DomainEvent, ValidationError, validate_with_garde};

/// A member's spot in a class was confirmed (`booking.confirmed`).
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate, schemars::JsonSchema,
)]
pub struct BookingConfirmed {
    /// The booking's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub booking_id: String,
    /// The booked class; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub class_id: String,
    /// The member who booked; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub member_id: String,
    /// When the class starts (UTC).
    #[garde(custom(timestamp))]
    pub class_starts_at: DateTime<Utc>,
    /// The assigned spot (bike, mat, ...), if the class numbers them; at least 1.
    #[garde(range(min = 1))]
    pub spot_number: Option<u32>,
}

impl DomainEvent for BookingConfirmed {
    const EVENT_TYPE: &'static str = "booking.confirmed";
    const RULES_NOT_IN_SCHEMA: &'static [&'static str] = &[super::ID_RULE, super::TIMESTAMP_RULE];

    fn validate(&self) -> Result<(), ValidationError> {
        validate_with_garde(self)
    }
}

/// Who cancelled a booking; `member`, `staff` or `system` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    /// The member who held the booking.
    Member,
    /// A member of the gym's staff.
    Staff,
    /// FitViz itself, e.g. when the class was cancelled or a payment failed.
    System,
}

/// A booking was cancelled (`booking.cancelled`).
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate, schemars::JsonSchema,
)]
pub struct BookingCancelled {
    /// The booking's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub booking_id: String,
    /// The booked class; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub class_id: String,
    /// The member who held the booking; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub member_id: String,
    /// Who cancelled it.
    #[garde(skip)]
    pub cancelled_by: CancelledBy,
    /// Why, if given; at most 500 characters.
    #[garde(length(chars, max = 500))]
    pub reason: Option<String>,
    /// Whether it was cancelled inside the gym's late-cancellation window.
    #[garde(skip)]
    pub late_cancellation: bool,
}

impl DomainEvent for BookingCancelled {
    const EVENT_TYPE: &'static str = "booking.cancelled";
    const RULES_NOT_IN_SCHEMA: &'static [&'static str] = &[super::ID_RULE];

    fn validate(&self) -> Result<(), ValidationError> {
        validate_with_garde(self)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::schema::SchemaRegistry;
    use crate::testing::Example;

    #[test]
    fn examples_are_valid_and_round_trip() {
        assert_example_valid(BookingConfirmed::example());
        assert_example_valid(BookingCancelled::example());
    }

    #[test]
    fn booking_confirmed_rules() {
        let ok = BookingConfirmed::example;
        assert_rejected(
            BookingConfirmed {
                booking_id: String::new(),
                ..ok()
            },
            "booking_id",
        );
        assert_rejected(
            BookingConfirmed {
                booking_id: chars(65),
                ..ok()
            },
            "booking_id",
        );
        assert_rejected(
            BookingConfirmed {
                class_id: String::new(),
                ..ok()
            },
            "class_id",
        );
        assert_rejected(
            BookingConfirmed {
                class_id: chars(65),
                ..ok()
            },
            "class_id",
        );
        assert_rejected(
            BookingConfirmed {
                member_id: String::new(),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            BookingConfirmed {
                member_id: chars(65),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            BookingConfirmed {
                spot_number: Some(0),
                ..ok()
            },
            "spot_number",
        );
        assert_eq!(
            BookingConfirmed {
                spot_number: Some(1),
                ..ok()
            }
            .validate(),
            Ok(())
        );
        assert_eq!(
            BookingConfirmed {
                spot_number: None,
                ..ok()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn booking_cancelled_rules() {
        let ok = BookingCancelled::example;
        assert_rejected(
            BookingCancelled {
                booking_id: String::new(),
                ..ok()
            },
            "booking_id",
        );
        assert_rejected(
            BookingCancelled {
                booking_id: chars(65),
                ..ok()
            },
            "booking_id",
        );
        assert_rejected(
            BookingCancelled {
                class_id: String::new(),
                ..ok()
            },
            "class_id",
        );
        assert_rejected(
            BookingCancelled {
                class_id: chars(65),
                ..ok()
            },
            "class_id",
        );
        assert_rejected(
            BookingCancelled {
                member_id: String::new(),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            BookingCancelled {
                member_id: chars(65),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            BookingCancelled {
                reason: Some(chars(501)),
                ..ok()
            },
            "reason",
        );
        assert_eq!(
            BookingCancelled {
                reason: Some(chars(500)),
                ..ok()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn cancelled_by_is_snake_case_in_json() {
        for (who, name) in [
            (CancelledBy::Member, "member"),
            (CancelledBy::Staff, "staff"),
            (CancelledBy::System, "system"),
        ] {
            assert_eq!(serde_json::to_value(who).unwrap(), name);
            let event = BookingCancelled {
                cancelled_by: who,
                ..BookingCancelled::example()
            };
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["cancelled_by"], name);
            assert_eq!(
                SchemaRegistry::builtin().validate_json(BookingCancelled::EVENT_TYPE, &json),
                Some(Ok(()))
            );
        }
        let mut json = serde_json::to_value(BookingCancelled::example()).unwrap();
        json["cancelled_by"] = "Member".into();
        let err = SchemaRegistry::builtin()
            .validate_json(BookingCancelled::EVENT_TYPE, &json)
            .unwrap()
            .unwrap_err();
        assert_eq!(err.violations()[0].field, "data");
        assert!(
            err.violations()[0]
                .message
                .contains("unknown variant `Member`"),
            "{err}"
        );
    }

    #[test]
    fn json_unknown_and_missing_fields_are_rejected() {
        assert_unknown_field_rejected(BookingConfirmed::example());
        assert_unknown_field_rejected(BookingCancelled::example());
        assert_missing_field_rejected(BookingConfirmed::example(), "class_starts_at");
        assert_missing_field_rejected(BookingCancelled::example(), "cancelled_by");
        assert_missing_field_rejected(BookingCancelled::example(), "late_cancellation");
    }
}
