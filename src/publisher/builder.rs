//! [`EventPublisherBuilder`]: composes the front and the delivery stacks.

use std::{fmt, sync::Arc, time::Duration};

use tower::{ServiceBuilder, util::BoxCloneSyncService};
use tower_layer::Layer;
use tower_service::Service;

use lapin::types::ShortString;

use super::{Encoding, EventPublisher, PublishService, detached::DetachedSettings};
use crate::{
    circuit_breaker::CircuitBreakerLayer,
    config::PublisherConfig,
    envelope::EnvelopeLayer,
    error::PublishError,
    event::{Event, Receipt},
    fairness::FairShareLayer,
    organization::{GetOrganization, NoOrganizationSource, OrganizationLayer},
    retry::RetryLayer,
    schema::SchemaRegistry,
    telemetry::{Instruments, TelemetryLayer},
    timeout::TimeoutLayer,
    transport::{AmqpPublish, HeaderCheck, PublishTransport, TransportParts},
    validate::ValidationLayer,
};

/// Builds an [`EventPublisher`]; start with [`EventPublisher::builder`].
#[must_use]
pub struct EventPublisherBuilder {
    config: PublisherConfig,
    registry: SchemaRegistry,
    /// Versions pinned with `pin_version`, applied over whichever registry is set.
    pins: Vec<(String, u32)>,
    organization: OrganizationLayer,
}

impl fmt::Debug for EventPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventPublisherBuilder")
            .field("config", &self.config)
            .field("registry", &self.registry)
            .field("pins", &self.pins)
            .field("organization", &self.organization)
            .finish()
    }
}

/// What a publisher is built with besides its delivery stack.
struct Parts {
    telemetry: TelemetryLayer,
    /// The transport the publisher owns (closes, reports the state of).
    transport: Option<AmqpPublish>,
    /// The frame-size check of an AMQP transport, for `spawn`.
    header_check: Option<HeaderCheck>,
    breaker: Option<CircuitBreakerLayer>,
    fair: Option<FairShareLayer>,
}

/// The front of the stack (stages 2–4 of the [map](crate::stack)). Every event passes
/// it once, before it is published or queued.
#[derive(Clone)]
pub(super) struct Front {
    validation: Option<ValidationLayer>,
    organization: OrganizationLayer,
    envelope: EnvelopeLayer,
}

impl Front {
    /// `inner` behind the front, boxed.
    pub(super) fn wrap<S>(&self, inner: S) -> BoxCloneSyncService<Event, S::Response, PublishError>
    where
        S: Service<Event, Error = PublishError> + Clone + Send + Sync + 'static,
        S::Response: 'static,
        S::Future: Send + 'static,
    {
        BoxCloneSyncService::new(self.layer(inner))
    }

    /// `inner` behind the front and, outermost, `telemetry` (so that the producer span
    /// and the duration cover validation too), boxed.
    pub(super) fn wrap_observed<S>(&self, telemetry: &TelemetryLayer, inner: S) -> PublishService
    where
        S: Service<Event, Response = Receipt, Error = PublishError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        BoxCloneSyncService::new(self.observed(telemetry, inner))
    }

    /// Stages 1–4 of the [map](crate::stack) over `inner`, unboxed.
    fn observed<S>(
        &self,
        telemetry: &TelemetryLayer,
        inner: S,
    ) -> impl Service<Event, Response = Receipt, Error = PublishError, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
    where
        S: Service<Event, Response = Receipt, Error = PublishError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        telemetry.layer(self.layer(inner))
    }

    fn layer<S>(
        &self,
        inner: S,
    ) -> impl Service<Event, Response = S::Response, Error = PublishError, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
    where
        S: Service<Event, Error = PublishError> + Clone + Send + Sync + 'static,
        S::Response: 'static,
        S::Future: Send + 'static,
    {
        ServiceBuilder::new()
            .option_layer(self.validation.clone())
            .layer(self.organization.clone())
            .layer(self.envelope.clone())
            .service(inner)
    }
}

impl EventPublisherBuilder {
    pub(super) fn new(config: PublisherConfig) -> Self {
        Self {
            config,
            registry: SchemaRegistry::builtin(),
            pins: Vec::new(),
            organization: OrganizationLayer::new(NoOrganizationSource),
        }
    }

    /// Replaces the schema registry (by default the eleven built-in events).
    pub fn registry(mut self, registry: SchemaRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// Pins the version JSON events of `event_type` are validated against and sent as
    /// when they do not name one (by default the registry's current version, see
    /// [`SchemaRegistry::with_current`]). A newer version of this crate may register
    /// newer versions of a built-in type but never changes the current one without a
    /// breaking release; pinning says so in your code.
    ///
    /// # Panics
    /// When building, if that version of that type is not registered ([`connect`](Self::connect)
    /// returns [`ErrorKind::Config`](crate::ErrorKind::Config) instead).
    pub fn pin_version(mut self, event_type: impl Into<String>, version: u32) -> Self {
        self.pins.push((event_type.into(), version));
        self
    }

    /// The registry with the pinned versions, or which pin names an unregistered version.
    fn pinned_registry(&self) -> Result<SchemaRegistry, String> {
        let mut registry = self.registry.clone();
        for (event_type, version) in &self.pins {
            if !registry.versions(event_type).contains(version) {
                return Err(format!(
                    "pin_version: version {version} of `{event_type}` is not registered"
                ));
            }
            registry = registry.with_current(event_type, *version);
        }
        Ok(registry)
    }

    /// Where events without an organization id take theirs from: a [`GetOrganization`],
    /// for example a closure `Fn() -> Option<OrganizationId>` — the original library's
    /// `organization_id_getter=lambda: get_current_org_id()`. It is asked for every event
    /// that carries no organization of its own (`publish_json(type, data, None)`).
    ///
    /// ```
    /// use fitviz_events::{EventPublisher, OrganizationId, PublisherConfig};
    ///
    /// fn current_org_id() -> Option<String> { Some("org-42".to_owned()) }
    ///
    /// let builder = EventPublisher::builder(PublisherConfig::default())
    ///     .organization_source(|| current_org_id().and_then(|id| OrganizationId::parse(&id).ok()));
    /// ```
    ///
    /// [`OrganizationId`]: crate::OrganizationId
    pub fn organization_source(mut self, source: impl GetOrganization) -> Self {
        self.organization = self.organization.with_source(source);
        self
    }

    /// Lets events of `event_type` be published without an organization id.
    pub fn organization_less(mut self, event_type: impl Into<String>) -> Self {
        self.organization = self.organization.organization_less(event_type);
        self
    }

    /// Connects: opens a first connection to the broker and declares (or checks) the
    /// exchange, then builds the default stack over an [`AmqpPublish`] transport.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for an invalid configuration;
    /// [`ErrorKind::Connection`](crate::ErrorKind::Connection) when the broker cannot
    /// be reached or the exchange cannot be declared.
    pub async fn connect(mut self) -> Result<EventPublisher, PublishError> {
        self.registry = self.pinned_registry().map_err(PublishError::config)?;
        let transport = AmqpPublish::connect(&self.config).await?;
        let breaker = self.breaker_layer();
        // One view of the broker's health: when the transport's reconnect task opens
        // a connection (or the broker unblocks one), the breaker probes at once.
        let handle = breaker.handle();
        transport.on_restored(move || handle.probe_now());
        let owned = transport.clone();
        Ok(self.over_transport(breaker, transport, Some(owned)))
    }

    /// Builds the publisher over any [`PublishTransport`] (for example
    /// [`MemorySink`](crate::testing::MemorySink), a [`tower::service_fn`], or an
    /// [`AmqpPublish`] made with [`AmqpPublish::new`], which connects in the background)
    /// with the default stack, sharing what the transport shares
    /// ([`PublishTransport::parts`]: an `AmqpPublish` its per-event metrics and its
    /// frame-size check, as one made by [`connect`](Self::connect) does).
    /// Must be called inside a tokio runtime.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`PublisherConfig::validate`]; a
    /// configuration read with [`PublisherConfig::from_env`] always is valid), or a
    /// [pinned version](Self::pin_version) is not registered.
    pub fn build_with_transport<T>(self, transport: T) -> EventPublisher
    where
        T: PublishTransport + Clone + Send + Sync + 'static,
        T::Future: Send + 'static,
    {
        let breaker = self.breaker_layer();
        self.over_transport(breaker, transport, None)
    }

    /// The default stack over `transport`, with what it shares; `owned`: the transport
    /// the publisher closes and reports the state of.
    fn over_transport<T>(
        self,
        breaker: CircuitBreakerLayer,
        transport: T,
        owned: Option<AmqpPublish>,
    ) -> EventPublisher
    where
        T: PublishTransport + Clone + Send + Sync + 'static,
        T::Future: Send + 'static,
    {
        let TransportParts {
            instruments,
            header_check,
            bounds_own_waits,
        } = transport.parts();
        let fair = self.fair_share_layer();
        let instruments =
            instruments.unwrap_or_else(|| Arc::new(Instruments::new(&self.config.exchange)));
        let telemetry = self.telemetry_layer(instruments);
        let attempt = if bounds_own_waits {
            self.amqp_attempt_deadline()
        } else {
            self.config.confirm_timeout
        };
        let delivery = self.delivery(&breaker, &fair, transport, attempt);
        let parts = Parts {
            telemetry,
            transport: owned,
            header_check,
            breaker: Some(breaker),
            fair: Some(fair),
        };
        self.finish(delivery, parts)
    }

    /// Builds the publisher over a delivery stack of your own (see
    /// `examples/custom_stack.rs`): events still pass the front (validation,
    /// organization, envelope) first, and `spawn` and `close` work as usual.
    /// Must be called inside a tokio runtime.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`PublisherConfig::validate`]), or a
    /// [pinned version](Self::pin_version) is not registered.
    pub fn build_with_delivery(self, delivery: PublishService) -> EventPublisher {
        let telemetry = self.telemetry_layer(Arc::new(Instruments::new(&self.config.exchange)));
        let parts = Parts {
            telemetry,
            transport: None,
            header_check: None,
            breaker: None,
            fair: None,
        };
        self.finish(delivery, parts)
    }

    fn telemetry_layer(&self, instruments: Arc<Instruments>) -> TelemetryLayer {
        TelemetryLayer::with_instruments(instruments).registry(self.registry.clone())
    }

    fn fair_share_layer(&self) -> FairShareLayer {
        FairShareLayer::new(self.config.max_in_flight_per_organization())
    }

    fn breaker_layer(&self) -> CircuitBreakerLayer {
        CircuitBreakerLayer::new(
            self.config.breaker_failure_threshold,
            self.config.breaker_open_duration,
        )
    }

    fn front(&self) -> Front {
        Front {
            validation: self.config.validation.then(|| {
                ValidationLayer::new(self.registry.clone())
                    .allow_unregistered(self.config.allow_unregistered)
                    .unknown_fields(self.config.unknown_fields)
            }),
            organization: self.organization.clone(),
            envelope: EnvelopeLayer::new(self.config.source.as_str(), self.registry.clone()),
        }
    }

    /// The per-attempt deadline over a transport that bounds its own waits
    /// ([`TransportParts`]; an [`AmqpPublish`]): the publish deadline, as a backstop
    /// only. The transport bounds its own waits (the pool's wait timeout, the
    /// connection timeout) and handles a late confirm itself: after `confirm_timeout` it
    /// asks the connection for a round trip, fails the attempt when the broker does not
    /// answer, and otherwise keeps waiting for the confirm already in flight rather than
    /// sending the event again (`transport/liveness.rs`). An attempt deadline of
    /// `confirm_timeout` here would cut that wait short: during a leader election every
    /// attempt in flight would time out together, be sent again, and open the breaker.
    fn amqp_attempt_deadline(&self) -> Duration {
        self.config.publish_timeout
    }

    /// The default delivery stack: stages 5–10 of the [map](crate::stack), with
    /// `attempt` as the attempt deadline.
    ///
    /// Returned unboxed: `publish` boxes it once together with the front.
    fn delivery<T>(
        &self,
        breaker: &CircuitBreakerLayer,
        fair: &FairShareLayer,
        transport: T,
        attempt: Duration,
    ) -> impl Service<Event, Response = Receipt, Error = PublishError, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
    where
        T: Service<Event, Response = Receipt, Error = PublishError> + Clone + Send + Sync + 'static,
        T::Future: Send + 'static,
    {
        let config = &self.config;
        ServiceBuilder::new()
            .layer(TimeoutLayer::overall(config.publish_timeout))
            .layer(fair.clone())
            .layer(RetryLayer::new(
                config.retry_attempts,
                config.retry_base_delay,
                config.retry_max_delay,
            ))
            .layer(breaker.clone())
            .layer(TimeoutLayer::attempt(attempt))
            .service(transport)
    }

    fn finish<D>(mut self, delivery: D, parts: Parts) -> EventPublisher
    where
        D: Service<Event, Response = Receipt, Error = PublishError> + Clone + Send + Sync + 'static,
        D::Future: Send + 'static,
    {
        if let Err(error) = self.config.validate() {
            panic!("invalid publisher configuration: {error}");
        }
        let Parts {
            telemetry,
            transport,
            header_check,
            breaker,
            fair,
        } = parts;
        self.registry = self
            .pinned_registry()
            .unwrap_or_else(|error| panic!("invalid publisher configuration: {error}"));
        let mut detached = DetachedSettings::from_config(&self.config);
        detached.header_check = header_check.clone();
        let encoding = Encoding {
            exchange: ShortString::from(self.config.exchange.as_str()),
            max_body_bytes: self.config.max_body_bytes,
            header_check,
        };
        let front = self.front();
        EventPublisher::new(
            front.wrap_observed(&telemetry, delivery.clone()),
            front,
            // Detached events: the worker publishes them through the delivery stack,
            // each in its producer span.
            BoxCloneSyncService::new(telemetry.layer(delivery)),
            detached,
            encoding,
            self.config.publish_timeout,
            transport,
            breaker.map(|b| b.handle()),
            fair,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{stack, testing::MemorySink};

    /// The stack the builder composes is the map in `stack.rs`, stage for stage.
    #[tokio::test]
    async fn the_default_stack_is_the_map() {
        let builder = EventPublisher::builder(PublisherConfig::default());
        let telemetry = builder.telemetry_layer(Arc::new(Instruments::new("fitviz.events")));
        let delivery = builder.delivery(
            &builder.breaker_layer(),
            &builder.fair_share_layer(),
            MemorySink::new(),
            Duration::from_secs(1),
        );
        let service = builder.front().observed(&telemetry, delivery);
        let composed = stack::stages_of(std::any::type_name_of_val(&service));
        assert_eq!(composed, stack::PUBLISH);
    }
}
