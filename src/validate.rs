//! Middleware that validates events before anything else sees them.
//!
//! In the [publish stack](crate::stack) it is stage 2: it needs nothing from the layers
//! outside it.
//!
//! It checks the event type (lowercase `noun.verb`, at most 255 bytes), then the
//! payload: a typed [`DomainEvent`](crate::DomainEvent) by its own rules, a JSON
//! payload against the schema registered for its type in the [`SchemaRegistry`] — of
//! the version it names ([`Event::with_version`]), else of the type's current version.
//! Fields of a JSON payload that its schema does not name are forwarded or rejected as the
//! [`UnknownFields`] policy says (forwarded by default). An unregistered type is rejected
//! unless allowed. A rejected event never reaches
//! the inner service, so it is never retried and never counts as a broker failure.
//!
//! # Example
//! ```
//! use fitviz_events::{Event, ErrorKind, SchemaRegistry, validate::ValidationLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let inner = service_fn(|e: Event| async move {
//!     Ok::<_, fitviz_events::PublishError>(fitviz_events::Receipt::new(e.id(), Default::default()))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(ValidationLayer::new(SchemaRegistry::builtin()))
//!     .service(inner);
//! let bad = Event::from_json("workout.created", serde_json::json!({"workout_id": 7}));
//! let err = svc.oneshot(bad).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Validation);
//! # }
//! ```

use tower_layer::Layer;

use crate::{
    error::PublishError,
    event::{Event, EventData, check_event_type},
    prepare::{Prepare, PrepareEvent},
    schema::{SchemaRegistry, UnknownFields, ValidationError},
};

/// Validates events; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct ValidationLayer {
    registry: SchemaRegistry,
    allow_unregistered: bool,
    unknown_fields: UnknownFields,
}

impl ValidationLayer {
    /// Validates against `registry`; unregistered JSON event types are rejected.
    pub fn new(registry: SchemaRegistry) -> Self {
        Self {
            registry,
            allow_unregistered: false,
            unknown_fields: UnknownFields::default(),
        }
    }

    /// What to do with the fields of a JSON payload its schema does not name (by default
    /// [`UnknownFields::Forward`]).
    #[must_use]
    pub fn unknown_fields(mut self, policy: UnknownFields) -> Self {
        self.unknown_fields = policy;
        self
    }

    /// Lets JSON events of unregistered types through (their type name is still checked).
    #[must_use]
    pub fn allow_unregistered(mut self, allow: bool) -> Self {
        self.allow_unregistered = allow;
        self
    }
}

impl<S> Layer<S> for ValidationLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Validate<S> {
        Prepare::new(inner, self.clone())
    }
}

/// The service built by [`ValidationLayer`].
pub type Validate<S> = Prepare<S, ValidationLayer>;

impl ValidationLayer {
    /// Validates one event.
    ///
    /// # Errors
    /// A [`ValidationError`] naming the field at fault.
    pub fn check(&self, event: &Event) -> Result<(), ValidationError> {
        let event_type = event.event_type();
        check_event_type(event_type)
            .map_err(|why| ValidationError::single(event_type, "event_type", why))?;
        match &event.data {
            EventData::Typed(typed) => typed.validate_dyn(),
            EventData::Json(data) => {
                match self.registry.validate_json_with(
                    event_type,
                    event.explicit_version(),
                    data,
                    self.unknown_fields,
                ) {
                    Some(result) => result,
                    None if self.allow_unregistered => Ok(()),
                    None => Err(ValidationError::single(
                        event_type,
                        "event_type",
                        "is not a registered event type (register its schema, or allow unregistered types)",
                    )),
                }
            }
        }
    }
}

impl PrepareEvent for ValidationLayer {
    fn prepare(&self, event: &mut Event) -> Result<(), PublishError> {
        self.check(event).map_err(|error| {
            tracing::debug!(event_id = %event.id(), event_type = event.event_type(), %error, "event rejected by validation");
            PublishError::validation(error).for_event(event.id())
        })
    }
}
