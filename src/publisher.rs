//! [`EventPublisher`]: the cheap-to-clone handle web handlers publish through.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

use crate::{
    AmqpPublish, ChannelPool, DomainEvent, Event, OrganizationId, PublishError, PublisherConfig,
    Receipt, SchemaRegistry,
    circuit_breaker::{BreakerHandle, BreakerState, CircuitBreakerLayer},
    detached::{CloseReport, DetachedConfig, DetachedQueue},
    organization::{GetOrganization, NoOrganizationSource, OrganizationLayer},
    retry::RetryLayer,
    timeout::TimeoutLayer,
    validate::ValidationLayer,
};

/// The boxed publish stack: any `Service<Event>` with the crate's error type.
pub type PublishService = BoxCloneSyncService<Event, Receipt, PublishError>;

impl<E: DomainEvent> From<E> for Event {
    fn from(event: E) -> Self {
        Event::new(event)
    }
}

/// Publishes events through the full middleware stack. `Send + Sync + Clone`;
/// clones share the pool and the stack.
///
/// # Example
/// ```no_run
/// use fitviz_events::{EventPublisher, PublisherConfig, events::WorkoutCreated};
///
/// # async fn demo() -> Result<(), fitviz_events::PublishError> {
/// let publisher = EventPublisher::connect(PublisherConfig::from_env()?).await?;
/// let receipt = publisher
///     .publish(fitviz_events::Event::new(WorkoutCreated::example()).with_organization("org-42"))
///     .await?;
/// println!("confirmed {} in {:?}", receipt.event_id, receipt.elapsed);
/// publisher.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EventPublisher {
    service: PublishService,
    shared: Arc<Shared>,
}

struct Shared {
    pool: Option<ChannelPool>,
    breaker: Option<BreakerHandle>,
    validation: Option<ValidationLayer>,
    organization: OrganizationLayer,
    detached: DetachedQueue,
    flush_timeout: Duration,
    closed: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventPublisher")
            .field("pool", &self.shared.pool)
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .field("in_flight", &self.shared.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

/// Builds an [`EventPublisher`].
#[must_use]
pub struct EventPublisherBuilder {
    config: PublisherConfig,
    registry: SchemaRegistry,
    organization: OrganizationLayer,
    detached: DetachedConfig,
}

impl fmt::Debug for EventPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventPublisherBuilder")
            .field("config", &self.config)
            .field("registry", &self.registry)
            .field("organization", &self.organization)
            .field("detached", &self.detached)
            .finish()
    }
}

impl EventPublisherBuilder {
    /// Replaces the schema registry (by default the eleven built-in events).
    pub fn registry(mut self, registry: SchemaRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// Where events without an organization id take theirs from.
    pub fn organization_source(mut self, source: impl GetOrganization) -> Self {
        let mut layer = OrganizationLayer::new(source);
        layer.copy_exemptions_from(&self.organization);
        self.organization = layer;
        self
    }

    /// Lets events of `event_type` be published without an organization id.
    pub fn organization_less(mut self, event_type: impl Into<String>) -> Self {
        self.organization = self.organization.organization_less(event_type);
        self
    }

    /// Settings of the detached-publish queue used by [`EventPublisher::spawn`].
    pub fn detached(mut self, detached: DetachedConfig) -> Self {
        self.detached = detached;
        self
    }

    /// Connects: builds the channel pool and declares (or checks) the exchange.
    ///
    /// # Errors
    /// [`ErrorKind::Connection`](crate::ErrorKind::Connection) when the broker cannot
    /// be reached or the exchange cannot be declared.
    pub async fn connect(self) -> Result<EventPublisher, PublishError> {
        let pool = ChannelPool::new(&self.config)?;
        pool.declare_exchange(&self.config).await?;
        let transport = AmqpPublish::new(
            pool.clone(),
            self.config.exchange.as_str(),
            self.config.source.as_str(),
        );
        let breaker = self.breaker_layer();
        let service = self.stack(&breaker, transport);
        Ok(self.finish(service, Some(pool), Some(breaker.handle())))
    }

    /// Builds the publisher over any transport (for example the in-memory sink of
    /// [`testing`](crate::testing)) with the same middleware stack.
    pub fn build_with_transport<T>(self, transport: T) -> EventPublisher
    where
        T: tower_service::Service<Event, Response = Receipt, Error = PublishError>
            + Clone
            + Send
            + Sync
            + 'static,
        T::Future: Send + 'static,
    {
        let breaker = self.breaker_layer();
        let service = self.stack(&breaker, transport);
        self.finish(service, None, Some(breaker.handle()))
    }

    fn breaker_layer(&self) -> CircuitBreakerLayer {
        CircuitBreakerLayer::new(
            self.config.breaker_failure_threshold,
            self.config.breaker_open_duration,
        )
    }

    /// A publisher over a ready-made service stack (see `examples/custom_stack.rs`);
    /// `spawn` and `close` work as usual. Must be called inside a tokio runtime.
    pub fn build_with_service(self, service: PublishService) -> EventPublisher {
        self.finish(service, None, None)
    }

    fn validation_layer(&self) -> Option<ValidationLayer> {
        self.config.validation.then(|| {
            ValidationLayer::new(self.registry.clone())
                .allow_unregistered(self.config.allow_unregistered)
        })
    }

    fn finish(
        self,
        service: PublishService,
        pool: Option<ChannelPool>,
        breaker: Option<BreakerHandle>,
    ) -> EventPublisher {
        EventPublisher {
            shared: Arc::new(Shared {
                pool,
                breaker,
                validation: self.validation_layer(),
                organization: self.organization.clone(),
                detached: DetachedQueue::start(service.clone(), self.detached.clone()),
                flush_timeout: self.config.publish_timeout,
                closed: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
            service,
        }
    }

    /// The default stack, outermost first: validation → organization → overall
    /// deadline → retry → circuit breaker → per-attempt deadline → transport.
    fn stack<T>(&self, breaker: &CircuitBreakerLayer, transport: T) -> PublishService
    where
        T: tower_service::Service<Event, Response = Receipt, Error = PublishError>
            + Clone
            + Send
            + Sync
            + 'static,
        T::Future: Send + 'static,
    {
        let config = &self.config;
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .option_layer(self.validation_layer())
                .layer(self.organization.clone())
                .layer(TimeoutLayer::overall(config.publish_timeout))
                .layer(RetryLayer::new(
                    config.retry_attempts,
                    config.retry_base_delay,
                    config.retry_max_delay,
                ))
                .layer(breaker.clone())
                .layer(TimeoutLayer::attempt(config.confirm_timeout))
                .service(transport),
        )
    }
}

/// Decrements the in-flight count when a publish ends (or is dropped).
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl EventPublisher {
    /// A builder for `config`.
    pub fn builder(config: PublisherConfig) -> EventPublisherBuilder {
        EventPublisherBuilder {
            config,
            registry: SchemaRegistry::builtin(),
            organization: OrganizationLayer::new(NoOrganizationSource),
            detached: DetachedConfig::default(),
        }
    }

    /// Connects with `config` and the default stack.
    ///
    /// # Errors
    /// See [`EventPublisherBuilder::connect`].
    pub async fn connect(config: PublisherConfig) -> Result<Self, PublishError> {
        Self::builder(config).connect().await
    }

    /// Publishes one event and waits for the broker's confirm.
    ///
    /// # Errors
    /// A [`PublishError`]; its [`kind`](PublishError::kind) says what went wrong.
    pub async fn publish(&self, event: impl Into<Event>) -> Result<Receipt, PublishError> {
        let event = event.into();
        let shared = &*self.shared;
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let _guard = InFlight(shared);
        if shared.closed.load(Ordering::Acquire) {
            return Err(PublishError::shutdown().for_event(event.id()));
        }
        self.service.clone().oneshot(event).await
    }

    /// Publishes many events at once, pipelined over the pool's channels, and
    /// returns one outcome per event, in the order given. A failure of some events
    /// never hides which ones failed; the others are still published.
    pub async fn publish_batch<I>(&self, events: I) -> Vec<Result<Receipt, PublishError>>
    where
        I: IntoIterator,
        I::Item: Into<Event>,
    {
        futures_util::future::join_all(events.into_iter().map(|event| self.publish(event))).await
    }

    /// Publishes a JSON payload under `event_type` — the original library's
    /// `publish(event_type, data, organization_id)`. The payload is validated
    /// against the schema registered for `event_type`.
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    pub async fn publish_json(
        &self,
        event_type: impl Into<String>,
        data: serde_json::Value,
        organization_id: Option<OrganizationId>,
    ) -> Result<Receipt, PublishError> {
        let mut event = Event::from_json(event_type.into(), data);
        if let Some(org) = organization_id {
            event = event.with_organization(org);
        }
        self.publish(event).await
    }

    /// Publishes and returns whether the broker confirmed the event; failures are
    /// logged with `tracing` and never panic. The graceful mode of the original library.
    pub async fn try_publish(&self, event: impl Into<Event>) -> bool {
        let event = event.into();
        let (id, event_type) = (event.id(), event.event_type().to_owned());
        match self.publish(event).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(event_id = %id, %event_type, kind = ?error.kind(), %error, "event not published");
                false
            }
        }
    }

    /// Hands the event to the bounded detached-publish queue and returns at once —
    /// the original library's `async_publish`. The event is validated and stamped
    /// with its organization id now, so a bad event is reported to the caller; the
    /// background worker then publishes it through the same stack, retrying while
    /// the broker is unavailable (see [`detached`](crate::detached)).
    ///
    /// # Errors
    /// Validation and organization errors, [`ErrorKind::QueueFull`](crate::ErrorKind::QueueFull)
    /// when the queue is full (per its [`Overflow`](crate::detached::Overflow) policy), and
    /// [`ErrorKind::Shutdown`](crate::ErrorKind::Shutdown) after `close`.
    pub async fn spawn(&self, event: impl Into<Event>) -> Result<(), PublishError> {
        let mut event = event.into();
        let shared = &*self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(PublishError::shutdown().for_event(event.id()));
        }
        if let Some(validation) = &shared.validation {
            validation
                .check(&mut event)
                .map_err(|e| PublishError::validation(e).for_event(event.id()))?;
        }
        shared.organization.stamp(&mut event)?;
        shared.detached.enqueue(event).await
    }

    /// The circuit breaker's state, for health checks (`None` for a custom stack
    /// built with [`EventPublisherBuilder::build_with_service`]).
    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.shared.breaker.as_ref().map(BreakerHandle::state)
    }

    /// Detached events waiting in the queue.
    pub fn queued(&self) -> usize {
        self.shared.detached.queued()
    }

    /// Stops accepting events, publishes the detached queue (for at most the
    /// configured publish timeout), waits for the publishes in flight to finish,
    /// then closes the channels and connections. Reports what was not sent.
    pub async fn close(&self) -> CloseReport {
        self.close_within(self.shared.flush_timeout).await
    }

    /// [`close`](Self::close) with an explicit deadline for flushing the detached queue.
    pub async fn close_within(&self, flush_deadline: Duration) -> CloseReport {
        let shared = &*self.shared;
        shared.closed.store(true, Ordering::Release);
        let report = shared.detached.flush(flush_deadline).await;
        loop {
            let idle = shared.idle.notified();
            if shared.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
        if let Some(pool) = &shared.pool {
            pool.close().await;
        }
        report
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}
