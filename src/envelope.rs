//! Middleware that completes the envelope of an event: the one place its source,
//! schema version and correlation id are filled in.
//!
//! In the [publish stack](crate::stack) it is stage 4: it needs the event's
//! organization (stage 3) and takes the request scope.
//!
//! Each is set only when the event does not carry its own:
//!
//! - `source`: the publisher's configured application name;
//! - `version`: typed events carry their own ([`DomainEvent::VERSION`]), a JSON event
//!   given one with [`Event::with_version`] keeps it; any other JSON event gets the
//!   version its type is pinned to — the [`SchemaRegistry`]'s current version for it
//!   (see [`SchemaRegistry::with_current`]), or 1 for an unregistered type — whether
//!   validation is on or off;
//! - `correlation_id`: the request id of the request the event is published in (see
//!   [`http`](crate::http)).
//!
//! The event id and timestamp are given when the event is created, so the caller
//! knows the id before publishing; the organization is decided by the
//! [organization layer](crate::organization), which runs just before this one.
//!
//! [`DomainEvent::VERSION`]: crate::DomainEvent::VERSION
//!
//! # Example
//! ```
//! use fitviz_events::{Event, PublishError, Receipt, SchemaRegistry, envelope::EnvelopeLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let inner = service_fn(|e: Event| async move {
//!     assert_eq!(e.source(), Some("billing-api"));
//!     assert_eq!(e.version(), 1);
//!     Ok::<_, PublishError>(Receipt::new(e.id(), Default::default()))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(EnvelopeLayer::new("billing-api", SchemaRegistry::builtin()))
//!     .service(inner);
//! svc.oneshot(Event::from_json("workout.created", serde_json::json!({}))).await.unwrap();
//! # }
//! ```

use std::sync::Arc;

use tower_layer::Layer;

use crate::{
    error::PublishError,
    event::Event,
    prepare::{Prepare, PrepareEvent},
    schema::SchemaRegistry,
};

/// Fills in the envelope; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct EnvelopeLayer {
    source: Arc<str>,
    registry: SchemaRegistry,
}

impl EnvelopeLayer {
    /// Stamps `source` on events without one, and the current version `registry` gives
    /// their type.
    pub fn new(source: impl Into<Arc<str>>, registry: SchemaRegistry) -> Self {
        Self {
            source: source.into(),
            registry,
        }
    }

    /// Fills in what `event` does not carry yet.
    pub fn stamp(&self, event: &mut Event) {
        event.set_source_if_absent(&self.source);
        if !event.has_version() {
            let version = self.registry.version(event.event_type());
            event.set_version(version);
        }
        if let Some(scope) = event.context_mut().take_request() {
            event.set_correlation_id_if_absent(scope.correlation_id.as_ref());
        }
    }
}

impl<S> Layer<S> for EnvelopeLayer {
    type Service = Envelope<S>;

    fn layer(&self, inner: S) -> Envelope<S> {
        Prepare::new(inner, self.clone())
    }
}

impl PrepareEvent for EnvelopeLayer {
    fn prepare(&self, event: &mut Event) -> Result<(), PublishError> {
        self.stamp(event);
        Ok(())
    }
}

/// The service built by [`EnvelopeLayer`].
pub type Envelope<S> = Prepare<S, EnvelopeLayer>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::context::RequestScope, events::WorkoutCreated, testing::Example};

    fn layer() -> EnvelopeLayer {
        EnvelopeLayer::new("svc", SchemaRegistry::builtin())
    }

    #[test]
    fn fills_in_what_is_missing_and_keeps_what_is_there() {
        let mut event = Event::from_json("workout.created", serde_json::json!({}));
        layer().stamp(&mut event);
        assert_eq!(event.source(), Some("svc"));
        assert_eq!(event.version(), 1);
        assert_eq!(event.correlation_id(), None);

        let mut own = Event::from_json("workout.created", serde_json::json!({}))
            .with_source("own")
            .with_version(7)
            .with_correlation_id("own-req");
        own.context_mut().set_request(Arc::new(RequestScope {
            correlation_id: Some("req-1".into()),
            ..Default::default()
        }));
        layer().stamp(&mut own);
        assert_eq!(own.source(), Some("own"));
        assert_eq!(own.version(), 7);
        assert_eq!(own.correlation_id(), Some("own-req"));
        assert!(own.context().request().is_none(), "the scope is consumed");
    }

    #[test]
    fn the_request_id_becomes_the_correlation_id() {
        let mut event = Event::new(WorkoutCreated::example());
        event.context_mut().set_request(Arc::new(RequestScope {
            correlation_id: Some("req-1".into()),
            ..Default::default()
        }));
        layer().stamp(&mut event);
        assert_eq!(event.correlation_id(), Some("req-1"));
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct V3;
    impl crate::schema::DomainEvent for V3 {
        const EVENT_TYPE: &'static str = "thing.happened";
        const VERSION: u32 = 3;
        fn validate(&self) -> Result<(), crate::schema::ValidationError> {
            Ok(())
        }
    }

    #[test]
    fn the_registered_version_is_stamped_whether_or_not_validation_runs() {
        let layer = EnvelopeLayer::new("svc", SchemaRegistry::empty().register::<V3>());
        let mut event = Event::from_json("thing.happened", serde_json::json!(null));
        layer.stamp(&mut event);
        assert_eq!(event.version(), 3);
    }
}
