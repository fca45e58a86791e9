//! Membership events: `membership.created`, `membership.expired`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[cfg(test)]
use super::utc;
use super::{after, currency::iso_4217};
use super::{identifier, timestamp};
use crate::schema::{DomainEvent, ValidationError, validate_with_garde};

/// A member bought or was given a membership (`membership.created`).
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate, schemars::JsonSchema,
)]
pub struct MembershipCreated {
    /// The membership's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub membership_id: String,
    /// The member it belongs to; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub member_id: String,
    /// The plan it was created from; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub plan_id: String,
    /// When it starts (UTC).
    #[garde(custom(timestamp))]
    pub starts_at: DateTime<Utc>,
    /// When it expires (UTC); must be after `starts_at`.
    #[garde(custom(timestamp), custom(after(&self.starts_at, "starts_at")))]
    pub expires_at: DateTime<Utc>,
    /// The price in minor units of `currency` (cents); greater than 0.
    #[garde(range(min = 1))]
    pub price_minor: i64,
    /// The ISO-4217 currency code, uppercase, e.g. `EUR`.
    #[schemars(regex(pattern = "^[A-Z]{3}$"))]
    #[garde(custom(iso_4217))]
    pub currency: String,
}

impl DomainEvent for MembershipCreated {
    const EVENT_TYPE: &'static str = "membership.created";
    const RULES_NOT_IN_SCHEMA: &'static [&'static str] = &[
        super::ID_RULE,
        super::TIMESTAMP_RULE,
        "`expires_at` is after `starts_at`",
        super::CURRENCY_RULE,
    ];

    fn validate(&self) -> Result<(), ValidationError> {
        validate_with_garde(self)
    }
}

/// A membership ran out (`membership.expired`).
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate, schemars::JsonSchema,
)]
pub struct MembershipExpired {
    /// The membership's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub membership_id: String,
    /// The member it belonged to; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub member_id: String,
    /// The plan it was created from; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub plan_id: String,
    /// When it expired (UTC).
    #[garde(custom(timestamp))]
    pub expired_at: DateTime<Utc>,
    /// Whether the member has already renewed it.
    #[garde(skip)]
    pub renewed: bool,
}

impl DomainEvent for MembershipExpired {
    const EVENT_TYPE: &'static str = "membership.expired";
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
        assert_example_valid(MembershipCreated::example());
        assert_example_valid(MembershipExpired::example());
    }

    #[test]
    fn membership_created_rules() {
        let ok = MembershipCreated::example;
        assert_rejected(
            MembershipCreated {
                membership_id: String::new(),
                ..ok()
            },
            "membership_id",
        );
        assert_rejected(
            MembershipCreated {
                membership_id: chars(65),
                ..ok()
            },
            "membership_id",
        );
        assert_rejected(
            MembershipCreated {
                member_id: String::new(),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            MembershipCreated {
                member_id: chars(65),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            MembershipCreated {
                plan_id: String::new(),
                ..ok()
            },
            "plan_id",
        );
        assert_rejected(
            MembershipCreated {
                plan_id: chars(65),
                ..ok()
            },
            "plan_id",
        );
        assert_rejected(
            MembershipCreated {
                price_minor: 0,
                ..ok()
            },
            "price_minor",
        );
        assert_rejected(
            MembershipCreated {
                price_minor: -4990,
                ..ok()
            },
            "price_minor",
        );
        assert_eq!(
            MembershipCreated {
                price_minor: 1,
                ..ok()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn membership_created_expires_after_it_starts() {
        let ok = MembershipCreated::example;
        let same = MembershipCreated {
            expires_at: ok().starts_at,
            ..ok()
        };
        let err = assert_rejected(same, "expires_at");
        assert_eq!(err.violations().len(), 1, "{err}");
        assert_eq!(err.violations()[0].message, "must be after starts_at");
        let before = MembershipCreated {
            expires_at: utc(2026, 2, 1, 0, 0),
            ..ok()
        };
        assert_rejected(before, "expires_at");
        let one_minute = MembershipCreated {
            expires_at: utc(2026, 3, 1, 0, 1),
            ..ok()
        };
        assert_eq!(one_minute.validate(), Ok(()));
    }

    #[test]
    fn membership_created_currency_is_iso_4217() {
        let ok = MembershipCreated::example;
        for bad in ["", "eur", "Eur", "EU", "EURO", "E1R", "ABC", "ANG"] {
            let err = assert_rejected(
                MembershipCreated {
                    currency: bad.to_owned(),
                    ..ok()
                },
                "currency",
            );
            assert_eq!(err.violations().len(), 1, "{bad:?}: {err}");
        }
        for good in ["USD", "GBP", "CHF", "SEK", "JPY"] {
            assert_eq!(
                MembershipCreated {
                    currency: good.to_owned(),
                    ..ok()
                }
                .validate(),
                Ok(())
            );
        }
    }

    #[test]
    fn membership_created_cross_field_rule_applies_to_json() {
        let mut json = serde_json::to_value(MembershipCreated::example()).unwrap();
        json["expires_at"] = "2026-02-01T00:00:00Z".into();
        json["currency"] = "usd".into();
        let err = crate::schema::SchemaRegistry::builtin()
            .validate_json(MembershipCreated::EVENT_TYPE, &json)
            .unwrap()
            .unwrap_err();
        assert!(
            err.violations().iter().any(|v| v.field == "expires_at"),
            "{err}"
        );
        assert!(
            err.violations().iter().any(|v| v.field == "currency"),
            "{err}"
        );
    }

    #[test]
    fn membership_expired_rules() {
        let ok = MembershipExpired::example;
        assert_rejected(
            MembershipExpired {
                membership_id: String::new(),
                ..ok()
            },
            "membership_id",
        );
        assert_rejected(
            MembershipExpired {
                membership_id: chars(65),
                ..ok()
            },
            "membership_id",
        );
        assert_rejected(
            MembershipExpired {
                member_id: String::new(),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            MembershipExpired {
                member_id: chars(65),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            MembershipExpired {
                plan_id: String::new(),
                ..ok()
            },
            "plan_id",
        );
        assert_rejected(
            MembershipExpired {
                plan_id: chars(65),
                ..ok()
            },
            "plan_id",
        );
        assert_eq!(
            MembershipExpired {
                renewed: true,
                plan_id: chars(64),
                ..ok()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn json_unknown_and_missing_fields_are_rejected() {
        assert_unknown_field_rejected(MembershipCreated::example());
        assert_unknown_field_rejected(MembershipExpired::example());
        assert_missing_field_rejected(MembershipCreated::example(), "currency");
        assert_missing_field_rejected(MembershipCreated::example(), "expires_at");
        assert_missing_field_rejected(MembershipExpired::example(), "renewed");
    }
}
