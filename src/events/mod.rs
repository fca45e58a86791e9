//! The eleven built-in FitViz domain events, with their validation rules.
//!
//! Every event is a plain struct with public fields that derives
//! [`garde::Validate`] and implements
//! [`DomainEvent`]. [`SchemaRegistry::builtin`] registers all of them, so a JSON
//! payload published under one of these types is checked by exactly the same rules
//! as the typed struct. [`testing::Example`](crate::testing::Example) gives a valid
//! instance of each, for demos and tests.
//!
//! Rules shared by all events: every `*_id` field (and `workout_type`,
//! `changed_fields`, `failure_code`) is an *identifier*: 1–64 characters, no
//! control character (`\0`, `\t`, `\n`, …) nor invisible format character (Unicode
//! category Cf: zero-width space, joiners, byte order mark, bidirectional formatting, …)
//! anywhere, and no whitespace at either end — so an id made only of spaces, tabs,
//! newlines or NULs is refused. Every timestamp is a UTC RFC 3339 string in JSON,
//! within 1970-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999999999Z, and never a leap
//! second (`23:59:60`, which chrono represents with a nanosecond field ≥ 1 000 000 000).
//! Amounts are in minor units (cents); `currency` is an active ISO-4217 code in
//! uppercase (`EUR`). Lengths count Unicode characters.
//!
//! | Event type | Struct | Rules besides the ids |
//! | --- | --- | --- |
//! | `workout.created` | [`WorkoutCreated`] | only `workout_id` required; `title` 1–200 chars; `workout_type` 1–64 chars; `duration_minutes` 1–1440; `calories` ≤ 20 000 |
//! | `workout.updated` | [`WorkoutUpdated`] | only `workout_id` required; `title` 1–200 chars; `changed_fields` each 1–64 chars; `duration_minutes` 1–1440 |
//! | `workout.deleted` | [`WorkoutDeleted`] | only `workout_id` required; `reason` ≤ 500 chars |
//! | `booking.confirmed` | [`BookingConfirmed`] | `spot_number` ≥ 1 |
//! | `booking.cancelled` | [`BookingCancelled`] | `cancelled_by` one of `member`, `staff`, `system`; `reason` ≤ 500 chars |
//! | `membership.created` | [`MembershipCreated`] | `plan_id` 1–64 chars; `expires_at` after `starts_at`; `price_minor` > 0; `currency` ISO-4217 |
//! | `membership.expired` | [`MembershipExpired`] | `plan_id` 1–64 chars |
//! | `payment.completed` | [`PaymentCompleted`] | `amount_minor` 1–10 000 000 000; `currency` ISO-4217; `method` one of `card`, `direct_debit`, `cash`, `wallet`; `reference` ≤ 128 chars |
//! | `payment.failed` | [`PaymentFailed`] | `amount_minor` > 0; `currency` ISO-4217; `failure_code` 1–64 chars; `failure_message` ≤ 500 chars |
//! | `class.scheduled` | [`ClassScheduled`] | `name` 1–128 chars; `ends_at` after `starts_at`; `capacity` 1–1000; `location` ≤ 128 chars |
//! | `class.cancelled` | [`ClassCancelled`] | `reason` 1–500 chars |
//!
//! Optional fields (`Option<_>`) are checked only when present; in JSON they may be
//! `null` or left out. Every other field is required.
//!
//! **What is required.** A field is required when a consumer cannot act on the event
//! without it. A workout event needs only its `workout_id` (the tenant is the envelope's
//! `organization_id`): the original Python library's documented call sends
//! `{"workout_id": "123", "title": "Morning Yoga"}`, and a workout may be a plan or class
//! template with no member, type or start time. A booking, membership or payment event
//! keeps its ids, member and amounts required: the notification service cannot tell a
//! member about a booking, a membership or a payment without them, and these events
//! have no documented call of the original library sending less.
//!
//! **Unknown fields** in a JSON payload are forwarded unchanged by default, or rejected
//! naming the field, as [`UnknownFields`](crate::schema::UnknownFields) (the setting
//! `FITVIZ_EVENTS_UNKNOWN_FIELDS`) says.
//!
//! A rule broken by a typed event is reported as a [`Violation`](crate::schema::Violation)
//! whose `field` is the field name (`expires_at`, `currency`, `changed_fields[0]`);
//! a JSON payload that does not even deserialize (an unknown or missing field, a
//! wrong type) is reported on the field `data`, with a message naming the culprit.
//!
//! # Example
//! ```
//! use fitviz_events::{DomainEvent, SchemaRegistry, events::MembershipCreated, testing::Example};
//!
//! let membership = MembershipCreated::example();
//! assert!(membership.validate().is_ok());
//!
//! let mut bad = MembershipCreated::example();
//! bad.expires_at = bad.starts_at;
//! bad.currency = "EURO".to_owned();
//! let err = bad.validate().unwrap_err();
//! assert_eq!(err.event_type(), "membership.created");
//! assert!(err.violations().iter().any(|v| v.field == "expires_at"));
//! assert!(err.violations().iter().any(|v| v.field == "currency"));
//!
//! // The same rules apply to JSON payloads.
//! let mut json = serde_json::to_value(MembershipCreated::example()).unwrap();
//! json["price_minor"] = 0.into();
//! let err = SchemaRegistry::builtin()
//!     .validate_json("membership.created", &json)
//!     .expect("built-in type")
//!     .unwrap_err();
//! assert_eq!(err.violations()[0].field, "price_minor");
//! ```

use chrono::{DateTime, NaiveDate, Utc};

use crate::{schema::DomainEvent, schema::SchemaRegistry};

mod booking;
mod class;
mod currency;
mod membership;
mod payment;
mod workout;

pub use booking::{BookingCancelled, BookingConfirmed, CancelledBy};
pub use class::{ClassCancelled, ClassScheduled};
pub use membership::{MembershipCreated, MembershipExpired};
pub use payment::{PaymentCompleted, PaymentFailed, PaymentMethod};
pub use workout::{WorkoutCreated, WorkoutCreatedV2, WorkoutDeleted, WorkoutUpdated};

/// The event types of the eleven built-in events, in the order of the table above.
pub const BUILTIN_EVENT_TYPES: [&str; 11] = [
    WorkoutCreated::EVENT_TYPE,
    WorkoutUpdated::EVENT_TYPE,
    WorkoutDeleted::EVENT_TYPE,
    BookingConfirmed::EVENT_TYPE,
    BookingCancelled::EVENT_TYPE,
    MembershipCreated::EVENT_TYPE,
    MembershipExpired::EVENT_TYPE,
    PaymentCompleted::EVENT_TYPE,
    PaymentFailed::EVENT_TYPE,
    ClassScheduled::EVENT_TYPE,
    ClassCancelled::EVENT_TYPE,
];

/// Rules of every identifier field that a JSON Schema cannot express.
const ID_RULE: &str = "every identifier field (`*_id`, `workout_type`, `activity`, `changed_fields`, `failure_code`) has no control character, no invisible format character (Unicode category Cf: zero-width space, joiners, word joiner, byte order mark, soft hyphen, bidirectional formatting, …) and no line or paragraph separator anywhere, and no whitespace at either end";
/// Rules of every timestamp field that a JSON Schema cannot express.
const TIMESTAMP_RULE: &str = "every timestamp is within 1970-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999999999Z (UTC) and never a leap second (`:60`)";
/// The currency rule.
const CURRENCY_RULE: &str =
    "`currency` is an active ISO-4217 code in uppercase (`EUR`), checked against the list";

/// The versions of built-in types that break what consumers of the version before need
/// (a field renamed, removed, retyped or newly required): `(event type, version, why)`.
/// Every other newer version keeps each field of the one before, with its meaning (a
/// test checks both ways). See [*Versioning*](crate::guide::wire_contract).
pub const BREAKING_CHANGES: &[(&str, u32, &str)] = &[(
    "workout.created",
    2,
    "`workout_type` renamed `activity`; `duration_minutes` replaced by `duration_seconds`",
)];

impl SchemaRegistry {
    /// The eleven built-in FitViz events (defined here, next to them, so that the
    /// schema module does not depend on the events), with every version of each:
    /// `workout.created` has versions 1 (current) and 2 ([`WorkoutCreatedV2`]), with an
    /// upcast from 1 to 2.
    pub fn builtin() -> Self {
        Self::empty()
            .register_with_json_schema::<WorkoutCreated>()
            .register_with_json_schema::<WorkoutCreatedV2>()
            .register_upcast::<WorkoutCreated, WorkoutCreatedV2>()
            .register_with_json_schema::<WorkoutUpdated>()
            .register_with_json_schema::<WorkoutDeleted>()
            .register_with_json_schema::<BookingConfirmed>()
            .register_with_json_schema::<BookingCancelled>()
            .register_with_json_schema::<MembershipCreated>()
            .register_with_json_schema::<MembershipExpired>()
            .register_with_json_schema::<PaymentCompleted>()
            .register_with_json_schema::<PaymentFailed>()
            .register_with_json_schema::<ClassScheduled>()
            .register_with_json_schema::<ClassCancelled>()
    }
}

/// garde rule for a timestamp that must come strictly after `earlier`
/// (the field named `earlier_field`), e.g. `expires_at` after `starts_at`.
///
/// Used as `#[garde(custom(after(&self.starts_at, "starts_at")))]` so that the
/// violation is reported on the later field.
fn after<'a>(
    earlier: &'a DateTime<Utc>,
    earlier_field: &'static str,
) -> impl FnOnce(&DateTime<Utc>, &()) -> garde::Result + 'a {
    move |value, _| {
        if value > earlier {
            Ok(())
        } else {
            Err(garde::Error::new(format!("must be after {earlier_field}")))
        }
    }
}

/// garde rule for an identifier field: see the [module docs](self) (the length is a
/// separate `length` rule).
fn identifier(value: &str, _ctx: &()) -> garde::Result {
    if value.is_empty() {
        return Ok(()); // reported once, by the `length` rule
    }
    crate::ident::check_identifier(value, usize::MAX).map_err(garde::Error::new)
}

/// garde rule for a timestamp: within 1970-01-01 ..= 9999-12-31 (UTC) and not a leap
/// second. The offset a timestamp was given with is not checked here.
fn timestamp(value: &DateTime<Utc>, _ctx: &()) -> garde::Result {
    use chrono::{Datelike, Timelike};
    if value.nanosecond() >= 1_000_000_000 {
        return Err(garde::Error::new("must not be a leap second (`:60`)"));
    }
    if value.year() < 1970 || value.year() > 9999 {
        return Err(garde::Error::new(
            "must be between 1970-01-01 and 9999-12-31 (utc)",
        ));
    }
    Ok(())
}

/// A fixed UTC timestamp, for the examples and tests.
pub(crate) fn utc(year: i32, month: u32, day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(year, month, day)
        .and_then(|date| date.and_hms_opt(hour, minute, 0))
        .expect("a valid fixed example timestamp")
        .and_utc()
}

/// Shared assertions for the per-domain tests.
#[cfg(test)]
mod test_support {
    use crate::schema::{DomainEvent, SchemaRegistry, UnknownFields, ValidationError};

    /// `event` must fail validation with a violation on exactly `field`.
    pub(super) fn assert_rejected<T: DomainEvent>(event: T, field: &str) -> ValidationError {
        let err = event.validate().expect_err(&format!(
            "{} should be rejected on `{field}`",
            T::EVENT_TYPE
        ));
        assert_eq!(err.event_type(), T::EVENT_TYPE);
        assert!(
            err.violations().iter().any(|v| v.field == field),
            "expected a violation on `{field}`, got {err}"
        );
        for v in err.violations() {
            assert!(!v.message.is_empty(), "empty message on `{}`", v.field);
            assert!(
                !v.message.starts_with(char::is_uppercase),
                "messages are lowercase: {:?}",
                v.message
            );
        }
        err
    }

    /// The example is valid, typed and as JSON through the built-in registry, and
    /// survives a serde round trip unchanged.
    pub(super) fn assert_example_valid<T: DomainEvent + Clone + PartialEq>(example: T) {
        assert_eq!(example.validate(), Ok(()), "{}::example()", T::EVENT_TYPE);
        let json = serde_json::to_value(&example).expect("serializes");
        assert_eq!(
            SchemaRegistry::builtin().validate_json(T::EVENT_TYPE, &json),
            Some(Ok(())),
            "{} example as JSON",
            T::EVENT_TYPE
        );
        let back: T = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, example);
    }

    /// A JSON payload validated through the built-in registry fails deserialization,
    /// reported on `data` with a message containing `needle`.
    fn assert_json_rejected<T: DomainEvent>(json: &serde_json::Value, needle: &str) {
        let err = SchemaRegistry::builtin()
            .validate_json(T::EVENT_TYPE, json)
            .expect("built-in type is registered")
            .expect_err("payload should be rejected");
        assert_eq!(err.event_type(), T::EVENT_TYPE);
        assert_eq!(err.violations().len(), 1, "{err}");
        assert_eq!(err.violations()[0].field, "data");
        assert!(
            err.violations()[0].message.contains(needle),
            "message should name `{needle}`: {err}"
        );
    }

    /// With the `reject` policy, an unknown field added to the example's JSON is
    /// rejected, naming the field.
    pub(super) fn assert_unknown_field_rejected<T: DomainEvent>(example: T) {
        let mut json = serde_json::to_value(example).expect("serializes");
        json.as_object_mut()
            .expect("an object")
            .insert("surprise_field".to_owned(), serde_json::json!(1));
        let err = SchemaRegistry::builtin()
            .validate_json_with(T::EVENT_TYPE, None, &json, UnknownFields::Reject)
            .expect("built-in type is registered")
            .expect_err("payload should be rejected");
        assert_eq!(err.violations().len(), 1, "{err}");
        assert_eq!(err.violations()[0].field, "data");
        assert!(
            (err.violations()[0].message).starts_with("unknown field `surprise_field`"),
            "{err}"
        );
    }

    /// With the `forward` policy (the default), an unknown field added to the example's
    /// JSON is accepted.
    pub(super) fn assert_unknown_field_forwarded<T: DomainEvent>(example: T) {
        let mut json = serde_json::to_value(example).expect("serializes");
        json.as_object_mut()
            .expect("an object")
            .insert("surprise_field".to_owned(), serde_json::json!(1));
        for registry_call in [
            SchemaRegistry::builtin().validate_json(T::EVENT_TYPE, &json),
            SchemaRegistry::builtin().validate_json_with(
                T::EVENT_TYPE,
                None,
                &json,
                UnknownFields::Forward,
            ),
        ] {
            assert_eq!(registry_call, Some(Ok(())), "{}", T::EVENT_TYPE);
        }
    }

    /// The example's JSON without `field` is rejected, naming the field.
    pub(super) fn assert_missing_field_rejected<T: DomainEvent>(example: T, field: &str) {
        let mut json = serde_json::to_value(example).expect("serializes");
        assert!(
            json.as_object_mut()
                .expect("an object")
                .remove(field)
                .is_some(),
            "the example has no field `{field}`"
        );
        assert_json_rejected::<T>(&json, &format!("missing field `{field}`"));
    }

    /// A string of `n` characters, multi-byte so that limits count characters.
    pub(super) fn chars(n: usize) -> String {
        "é".repeat(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::check_event_type;

    #[test]
    fn builtin_registry_holds_exactly_the_builtin_types() {
        let registry = SchemaRegistry::builtin();
        let mut expected = BUILTIN_EVENT_TYPES.to_vec();
        expected.sort_unstable();
        assert_eq!(registry.event_types(), expected);
        for event_type in BUILTIN_EVENT_TYPES {
            assert_eq!(check_event_type(event_type), Ok(()), "{event_type}");
            // Pinned: a newer version never becomes what JSON events are sent as silently.
            assert_eq!(registry.version(event_type), Some(1), "{event_type}");
        }
        assert_eq!(registry.versions("workout.created"), [1, 2]);
        assert_eq!(registry.newest_version("workout.created"), Some(2));
        assert_eq!(registry.versions("booking.confirmed"), [1]);
    }

    /// Each newer version of a built-in type either keeps every field of the version
    /// before, with the same value after the upcast (so consumers of the older version
    /// find what they read), or is declared in [`BREAKING_CHANGES`] — and a declared one
    /// really does break.
    #[test]
    fn newer_versions_keep_what_older_consumers_need_or_are_declared_breaking() {
        let registry = SchemaRegistry::builtin();
        let examples = crate::testing::versioned_examples();
        let mut pairs = 0;
        for event_type in BUILTIN_EVENT_TYPES {
            let versions = registry.versions(event_type);
            for pair in versions.windows(2) {
                let (old, new) = (pair[0], pair[1]);
                pairs += 1;
                let old_example = examples
                    .iter()
                    .find(|e| e.event_type() == event_type && e.version() == old)
                    .unwrap_or_else(|| panic!("an example of {event_type} v{old}"));
                let old_data = old_example.data_json();
                let (version, upcast) = registry
                    .upcast(event_type, old, old_data.clone())
                    .unwrap_or_else(|e| panic!("{event_type} v{old}: {e}"));
                assert!(version >= new);
                assert_eq!(
                    registry.validate_json_with(
                        event_type,
                        Some(version),
                        &upcast,
                        crate::schema::UnknownFields::Reject
                    ),
                    Some(Ok(()))
                );
                let kept = old_data
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(field, value)| upcast.get(field) == Some(value));
                let declared = BREAKING_CHANGES
                    .iter()
                    .any(|(t, v, _)| *t == event_type && *v == new);
                assert!(
                    kept || declared,
                    "{event_type} v{new} drops or changes fields of v{old} without being declared breaking"
                );
                assert!(
                    !(kept && declared),
                    "{event_type} v{new} is declared breaking but keeps every field of v{old}"
                );
            }
        }
        assert_eq!(pairs, 1, "one built-in type has two versions");
        for (event_type, version, why) in BUILTIN_EVENT_TYPES
            .iter()
            .flat_map(|t| BREAKING_CHANGES.iter().filter(move |(b, ..)| b == t))
        {
            assert!(registry.versions(event_type).contains(version), "{why}");
        }
    }

    #[test]
    fn after_is_strict() {
        let start = utc(2026, 3, 1, 0, 0);
        assert!(after(&start, "starts_at")(&utc(2026, 3, 1, 0, 1), &()).is_ok());
        let same = after(&start, "starts_at")(&start, &()).unwrap_err();
        assert_eq!(same.message().to_string(), "must be after starts_at");
        assert!(after(&start, "starts_at")(&utc(2026, 2, 28, 23, 59), &()).is_err());
    }

    #[test]
    fn identifier_rule() {
        for good in ["w-1", "Ö 7", "組織"] {
            assert!(identifier(good, &()).is_ok(), "{good:?}");
        }
        for (bad, why) in [
            ("   ", "starts or ends with whitespace"),
            ("\t", "contains a control character"),
            ("\n", "contains a control character"),
            ("\0", "contains a control character"),
            ("\0\0", "contains a control character"),
            ("m\r\n1", "contains a control character"),
            (" m-1", "starts or ends with whitespace"),
            ("m-1 ", "starts or ends with whitespace"),
            (
                "\u{202e}1-m",
                "contains U+202E RIGHT-TO-LEFT OVERRIDE, a bidirectional-formatting character",
            ),
            (
                "w\u{200b}-1",
                "contains U+200B ZERO WIDTH SPACE, an invisible format character (Unicode category Cf)",
            ),
        ] {
            let err = identifier(bad, &()).unwrap_err();
            assert_eq!(err.message().to_string(), why, "{bad:?}");
        }
    }

    #[test]
    fn timestamp_rule() {
        let parse = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        for good in [
            "1970-01-01T00:00:00Z",
            "2026-03-14T07:30:00+14:00",
            "9999-12-31T23:59:59.999999999Z",
        ] {
            assert!(timestamp(&parse(good), &()).is_ok(), "{good}");
        }
        let leap = parse("2016-12-31T23:59:60Z");
        assert_eq!(
            timestamp(&leap, &()).unwrap_err().message().to_string(),
            "must not be a leap second (`:60`)"
        );
        for bad in ["0000-01-01T00:00:00Z", "1969-12-31T23:59:59Z"] {
            assert_eq!(
                timestamp(&parse(bad), &())
                    .unwrap_err()
                    .message()
                    .to_string(),
                "must be between 1970-01-01 and 9999-12-31 (utc)",
                "{bad}"
            );
        }
        // 9999-12-31T23:00:00-01:00 is 10000-01-01 in UTC.
        let beyond = NaiveDate::from_ymd_opt(10_000, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        assert!(timestamp(&beyond, &()).is_err());
    }

    #[test]
    fn built_in_events_apply_the_rules_to_json_payloads() {
        let registry = SchemaRegistry::builtin();
        for (field, value) in [
            ("member_id", serde_json::json!("\0")),
            ("member_id", serde_json::json!("\n")),
            ("member_id", serde_json::json!(" ")),
            ("workout_id", serde_json::json!("\t")),
            ("workout_type", serde_json::json!("run\r\n")),
            ("started_at", serde_json::json!("0000-01-01T00:00:00Z")),
            ("started_at", serde_json::json!("2016-12-31T23:59:60Z")),
        ] {
            let mut json =
                serde_json::to_value(<WorkoutCreated as crate::testing::Example>::example())
                    .unwrap();
            json[field] = value.clone();
            let err = registry
                .validate_json(WorkoutCreated::EVENT_TYPE, &json)
                .unwrap()
                .expect_err(&format!("{field} = {value}"));
            assert_eq!(err.violations()[0].field, field, "{value}");
        }
    }

    /// Every identifier and timestamp field of every built-in event, as JSON: a
    /// control character, blank or bidi-marked id and a year-0000 or leap-second
    /// timestamp are each reported on that field.
    #[test]
    fn every_identifier_and_timestamp_field_of_every_event_is_checked() {
        let registry = SchemaRegistry::builtin();
        let (mut ids, mut timestamps) = (0, 0);
        for event in crate::testing::examples() {
            let example = event.data_json();
            let object = example.as_object().unwrap();
            for (field, value) in object {
                let is_id = field.ends_with("_id")
                    || ["workout_type", "failure_code"].contains(&field.as_str());
                let is_timestamp = value
                    .as_str()
                    .is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok());
                let bad_values: &[&str] = if is_id {
                    ids += 1;
                    &["\0", "\n", " ", "\t", "x\r\ny", " x", "\u{202e}x"]
                } else if is_timestamp {
                    timestamps += 1;
                    &[
                        "0000-01-01T00:00:00Z",
                        "2016-12-31T23:59:60Z",
                        "1969-12-31T23:59:59Z",
                    ]
                } else {
                    continue;
                };
                for bad in bad_values {
                    let mut json = example.clone();
                    json[field] = serde_json::json!(bad);
                    let err = registry
                        .validate_json(event.event_type(), &json)
                        .unwrap()
                        .expect_err(&format!("{} {field} = {bad:?}", event.event_type()));
                    assert!(
                        err.violations().iter().any(|v| &v.field == field),
                        "{} {field} = {bad:?}: {err}",
                        event.event_type()
                    );
                }
            }
        }
        assert!(ids >= 25, "{ids} identifier fields");
        assert!(timestamps >= 8, "{timestamps} timestamp fields");
    }

    #[test]
    fn example_timestamps_are_utc_rfc3339() {
        let json = serde_json::to_value(utc(2026, 3, 2, 7, 30)).unwrap();
        assert_eq!(json, "2026-03-02T07:30:00Z");
    }
}
