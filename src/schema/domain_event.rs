//! [`DomainEvent`]: what a FitViz event type is, and its object-safe view.

use std::fmt;

use serde::{Serialize, de::DeserializeOwned};

use super::ValidationError;

/// A FitViz domain event with a fixed type name, schema version and rules.
///
/// Implement it for your own events (and [`SchemaRegistry::register`](crate::SchemaRegistry::register) them so JSON
/// payloads of that type are validated too). The built-in events derive
/// [`garde::Validate`] and forward to it with [`validate_with_garde`]; any other validation works as long as it
/// reports through [`ValidationError`].
///
/// # Example
/// ```
/// use fitviz_events::{DomainEvent, schema::ValidationError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, garde::Validate)]
/// #[serde(deny_unknown_fields)]
/// struct BadgeEarned {
///     #[garde(length(min = 1, max = 64))]
///     member_id: String,
///     #[garde(length(min = 1, max = 64))]
///     badge: String,
/// }
///
/// impl DomainEvent for BadgeEarned {
///     const EVENT_TYPE: &'static str = "badge.earned";
///     fn validate(&self) -> Result<(), ValidationError> {
///         fitviz_events::schema::validate_with_garde(self)
///     }
/// }
///
/// let err = BadgeEarned { member_id: "".into(), badge: "gold".into() }.validate().unwrap_err();
/// assert_eq!(err.violations()[0].field, "member_id");
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static {
    /// The event type and routing key, lowercase `noun.verb`.
    const EVENT_TYPE: &'static str;
    /// The schema version of the payload, sent as the envelope's `version` field and as the
    /// AMQP header `schema_version` (an integer).
    const VERSION: u32 = 1;
    /// Rules [`validate`](Self::validate) enforces that a JSON Schema cannot express (an
    /// end after a start, a currency code from a list, …), in words: listed in the
    /// `description` of the exported JSON Schema (see
    /// [`SchemaRegistry::register_with_json_schema`](crate::SchemaRegistry::register_with_json_schema)).
    const RULES_NOT_IN_SCHEMA: &'static [&'static str] = &[];

    /// Checks the event's semantic rules.
    ///
    /// # Errors
    /// A [`ValidationError`] listing every field that breaks a rule.
    fn validate(&self) -> Result<(), ValidationError>;
}

/// Object-safe view of a [`DomainEvent`], stored in an [`Event`](crate::Event).
pub(crate) trait DynDomainEvent: erased_serde::Serialize + fmt::Debug + Send + Sync {
    fn validate_dyn(&self) -> Result<(), ValidationError>;
}

impl<T: DomainEvent> DynDomainEvent for T {
    fn validate_dyn(&self) -> Result<(), ValidationError> {
        DomainEvent::validate(self)
    }
}

/// The body of [`DomainEvent::validate`] for an event whose rules are its
/// [`garde`] attributes (as the built-in events' are): runs them and names the event type
/// in the error.
///
/// ```
/// # use fitviz_events::{DomainEvent, schema::{ValidationError, validate_with_garde}};
/// # #[derive(Debug, serde::Serialize, serde::Deserialize, garde::Validate)]
/// # struct BadgeEarned { #[garde(length(min = 1))] member_id: String }
/// impl DomainEvent for BadgeEarned {
///     const EVENT_TYPE: &'static str = "badge.earned";
///     fn validate(&self) -> Result<(), ValidationError> {
///         validate_with_garde(self)
///     }
/// }
/// assert!(BadgeEarned { member_id: String::new() }.validate().is_err());
/// ```
///
/// # Errors
/// A [`ValidationError`] with one violation per broken rule.
pub fn validate_with_garde<T>(event: &T) -> Result<(), ValidationError>
where
    T: DomainEvent + garde::Validate,
    T::Context: Default,
{
    ValidationError::from_garde(T::EVENT_TYPE, garde::Validate::validate(event))
}
