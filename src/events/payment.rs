//! Payment events: `payment.completed`, `payment.failed`.

use serde::{Deserialize, Serialize};

use super::currency::iso_4217;
use super::identifier;
use crate::schema::{DomainEvent, ValidationError, validate_with_garde};

/// The largest amount a payment may carry, in minor units: 100 000 000.00.
const MAX_AMOUNT_MINOR: i64 = 10_000_000_000;

/// How a payment was made; `card`, `direct_debit`, `cash` or `wallet` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    /// A credit or debit card.
    Card,
    /// A direct debit (e.g. SEPA) from a bank account.
    DirectDebit,
    /// Cash at the front desk.
    Cash,
    /// A digital wallet (Apple Pay, Google Pay, ...).
    Wallet,
}

/// A payment went through (`payment.completed`).
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate, schemars::JsonSchema,
)]
pub struct PaymentCompleted {
    /// The payment's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub payment_id: String,
    /// The member who paid; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub member_id: String,
    /// The amount in minor units of `currency` (cents); 1 to 10 000 000 000
    /// (100 000 000.00).
    #[garde(range(min = 1, max = MAX_AMOUNT_MINOR))]
    pub amount_minor: i64,
    /// The ISO-4217 currency code, uppercase, e.g. `EUR`.
    #[schemars(regex(pattern = "^[A-Z]{3}$"))]
    #[garde(custom(iso_4217))]
    pub currency: String,
    /// How it was paid.
    #[garde(skip)]
    pub method: PaymentMethod,
    /// The payment provider's or invoice reference, if any; at most 128 characters.
    #[garde(length(chars, max = 128))]
    pub reference: Option<String>,
}

impl DomainEvent for PaymentCompleted {
    const EVENT_TYPE: &'static str = "payment.completed";
    const RULES_NOT_IN_SCHEMA: &'static [&'static str] = &[super::ID_RULE, super::CURRENCY_RULE];

    fn validate(&self) -> Result<(), ValidationError> {
        validate_with_garde(self)
    }
}

/// A payment attempt failed (`payment.failed`).
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, garde::Validate, schemars::JsonSchema,
)]
pub struct PaymentFailed {
    /// The payment's id; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub payment_id: String,
    /// The member who was charged; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub member_id: String,
    /// The amount in minor units of `currency` (cents); greater than 0.
    #[garde(range(min = 1))]
    pub amount_minor: i64,
    /// The ISO-4217 currency code, uppercase, e.g. `EUR`.
    #[schemars(regex(pattern = "^[A-Z]{3}$"))]
    #[garde(custom(iso_4217))]
    pub currency: String,
    /// The provider's machine-readable failure code, e.g. `card_declined`; 1–64 characters.
    #[garde(length(chars, min = 1, max = 64), custom(identifier))]
    pub failure_code: String,
    /// A human-readable explanation, if any; at most 500 characters.
    #[garde(length(chars, max = 500))]
    pub failure_message: Option<String>,
    /// Whether trying again may succeed.
    #[garde(skip)]
    pub retryable: bool,
}

impl DomainEvent for PaymentFailed {
    const EVENT_TYPE: &'static str = "payment.failed";
    const RULES_NOT_IN_SCHEMA: &'static [&'static str] = &[super::ID_RULE, super::CURRENCY_RULE];

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
        assert_example_valid(PaymentCompleted::example());
        assert_example_valid(PaymentFailed::example());
    }

    #[test]
    fn payment_completed_rules() {
        let ok = PaymentCompleted::example;
        assert_rejected(
            PaymentCompleted {
                payment_id: String::new(),
                ..ok()
            },
            "payment_id",
        );
        assert_rejected(
            PaymentCompleted {
                payment_id: chars(65),
                ..ok()
            },
            "payment_id",
        );
        assert_rejected(
            PaymentCompleted {
                member_id: String::new(),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            PaymentCompleted {
                member_id: chars(65),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            PaymentCompleted {
                amount_minor: 0,
                ..ok()
            },
            "amount_minor",
        );
        assert_rejected(
            PaymentCompleted {
                amount_minor: -1,
                ..ok()
            },
            "amount_minor",
        );
        assert_rejected(
            PaymentCompleted {
                amount_minor: MAX_AMOUNT_MINOR + 1,
                ..ok()
            },
            "amount_minor",
        );
        assert_eq!(
            PaymentCompleted {
                amount_minor: MAX_AMOUNT_MINOR,
                ..ok()
            }
            .validate(),
            Ok(())
        );
        assert_eq!(
            PaymentCompleted {
                amount_minor: 1,
                ..ok()
            }
            .validate(),
            Ok(())
        );
        assert_rejected(
            PaymentCompleted {
                currency: "eur".to_owned(),
                ..ok()
            },
            "currency",
        );
        assert_rejected(
            PaymentCompleted {
                currency: "XYZ".to_owned(),
                ..ok()
            },
            "currency",
        );
        assert_rejected(
            PaymentCompleted {
                reference: Some(chars(129)),
                ..ok()
            },
            "reference",
        );
        assert_eq!(
            PaymentCompleted {
                reference: Some(chars(128)),
                ..ok()
            }
            .validate(),
            Ok(())
        );
        assert_eq!(
            PaymentCompleted {
                reference: None,
                ..ok()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn max_amount_is_one_hundred_million_major_units() {
        assert_eq!(MAX_AMOUNT_MINOR, 100_000_000 * 100);
    }

    #[test]
    fn payment_failed_rules() {
        let ok = PaymentFailed::example;
        assert_rejected(
            PaymentFailed {
                payment_id: String::new(),
                ..ok()
            },
            "payment_id",
        );
        assert_rejected(
            PaymentFailed {
                payment_id: chars(65),
                ..ok()
            },
            "payment_id",
        );
        assert_rejected(
            PaymentFailed {
                member_id: String::new(),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            PaymentFailed {
                member_id: chars(65),
                ..ok()
            },
            "member_id",
        );
        assert_rejected(
            PaymentFailed {
                amount_minor: 0,
                ..ok()
            },
            "amount_minor",
        );
        assert_rejected(
            PaymentFailed {
                amount_minor: i64::MIN,
                ..ok()
            },
            "amount_minor",
        );
        assert_rejected(
            PaymentFailed {
                currency: "EURO".to_owned(),
                ..ok()
            },
            "currency",
        );
        assert_rejected(
            PaymentFailed {
                currency: "AAA".to_owned(),
                ..ok()
            },
            "currency",
        );
        assert_rejected(
            PaymentFailed {
                failure_code: String::new(),
                ..ok()
            },
            "failure_code",
        );
        assert_rejected(
            PaymentFailed {
                failure_code: chars(65),
                ..ok()
            },
            "failure_code",
        );
        assert_rejected(
            PaymentFailed {
                failure_message: Some(chars(501)),
                ..ok()
            },
            "failure_message",
        );
        assert_eq!(
            PaymentFailed {
                failure_message: Some(chars(500)),
                ..ok()
            }
            .validate(),
            Ok(())
        );
        assert_eq!(
            PaymentFailed {
                failure_message: None,
                ..ok()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn payment_method_is_snake_case_in_json() {
        for (method, name) in [
            (PaymentMethod::Card, "card"),
            (PaymentMethod::DirectDebit, "direct_debit"),
            (PaymentMethod::Cash, "cash"),
            (PaymentMethod::Wallet, "wallet"),
        ] {
            let event = PaymentCompleted {
                method,
                ..PaymentCompleted::example()
            };
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["method"], name);
            assert_eq!(
                SchemaRegistry::builtin().validate_json(PaymentCompleted::EVENT_TYPE, &json),
                Some(Ok(()))
            );
        }
        let mut json = serde_json::to_value(PaymentCompleted::example()).unwrap();
        json["method"] = "directDebit".into();
        let err = SchemaRegistry::builtin()
            .validate_json(PaymentCompleted::EVENT_TYPE, &json)
            .unwrap()
            .unwrap_err();
        assert_eq!(err.violations()[0].field, "data");
        assert!(
            err.violations()[0]
                .message
                .contains("unknown variant `directDebit`"),
            "{err}"
        );
    }

    #[test]
    fn json_unknown_and_missing_fields_are_rejected() {
        assert_unknown_field_rejected(PaymentCompleted::example());
        assert_unknown_field_rejected(PaymentFailed::example());
        assert_missing_field_rejected(PaymentCompleted::example(), "method");
        assert_missing_field_rejected(PaymentCompleted::example(), "amount_minor");
        assert_missing_field_rejected(PaymentFailed::example(), "failure_code");
        assert_missing_field_rejected(PaymentFailed::example(), "retryable");
    }
}
