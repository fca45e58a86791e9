//! [`UnknownFields`]: what validation does with fields a schema does not name.

use std::fmt;

/// What validation does with the fields of a JSON payload that its type's schema does
/// not name (`PublisherConfig::unknown_fields`, `FITVIZ_EVENTS_UNKNOWN_FIELDS`).
///
/// Only JSON payloads ([`Event::from_json`](crate::Event::from_json),
/// [`publish_json`](crate::EventPublisher::publish_json)) can carry unknown fields: a typed
/// event serializes exactly its own fields. Either way every field the schema names is
/// checked by its rules, so a consumer can rely on those.
///
/// The default is [`Forward`](Self::Forward): code migrating from the original Python
/// library sends fields the built-in schemas do not name (pydantic ignores extra fields by
/// default, so they were accepted there), and a consumer loses nothing by seeing them —
/// consumers must ignore fields they do not know anyway, since adding an optional field is
/// not a breaking change (see [*Versioning*](crate::guide::wire_contract)). Choose
/// [`Reject`](Self::Reject) to catch a misspelt optional field (`calorie` for `calories`)
/// at the publisher instead of losing it silently.
///
/// A type of your own whose `Deserialize` denies unknown fields itself
/// (`#[serde(deny_unknown_fields)]`) rejects them whatever the policy; a type whose field
/// list serde does not reveal (one with `#[serde(flatten)]`) is not checked for them.
///
/// # Example
/// ```
/// use fitviz_events::{SchemaRegistry, schema::UnknownFields};
/// use serde_json::json;
///
/// let registry = SchemaRegistry::builtin();
/// let data = json!({"workout_id": "w-1", "title": "Morning Yoga", "mood": "calm"});
/// let forward = registry.validate_json_with("workout.created", None, &data, UnknownFields::Forward);
/// assert_eq!(forward, Some(Ok(())));
/// let err = registry
///     .validate_json_with("workout.created", None, &data, UnknownFields::Reject)
///     .unwrap()
///     .unwrap_err();
/// assert!(err.to_string().contains("unknown field `mood`"), "{err}");
/// assert_eq!("reject".parse(), Ok(UnknownFields::Reject));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnknownFields {
    /// The payload is refused with [`ErrorKind::Validation`](crate::ErrorKind::Validation),
    /// the violation on `data` naming the first unknown field and the fields expected.
    Reject,
    /// The payload is published unchanged, unknown fields included.
    #[default]
    Forward,
}

impl UnknownFields {
    /// `reject` or `forward`, as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Forward => "forward",
        }
    }
}

impl fmt::Display for UnknownFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Accepted values of [`UnknownFields`], for error messages.
pub(crate) const UNKNOWN_FIELDS_VALUES: &str = "expected `reject` or `forward`";

impl std::str::FromStr for UnknownFields {
    type Err = String;

    /// `reject` or `forward`, in any case.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "reject" => Ok(Self::Reject),
            "forward" => Ok(Self::Forward),
            _ => Err(UNKNOWN_FIELDS_VALUES.to_owned()),
        }
    }
}
