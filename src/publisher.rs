//! [`EventPublisher`]: the cheap-to-clone handle web handlers publish through.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::sync::Notify;
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

use crate::{
    AmqpPublish, ChannelPool, DomainEvent, Event, OrganizationId, PublishError, PublisherConfig,
    Receipt, SchemaRegistry,
    organization::{GetOrganization, NoOrganizationSource, OrganizationLayer},
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
}

impl fmt::Debug for EventPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventPublisherBuilder")
            .field("config", &self.config)
            .field("registry", &self.registry)
            .field("organization", &self.organization)
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

    /// Connects: builds the channel pool and declares (or checks) the exchange.
    ///
    /// # Errors
    /// [`ErrorKind::Connection`](crate::ErrorKind::Connection) when the broker cannot
    /// be reached or the exchange cannot be declared.
    pub async fn connect(self) -> Result<EventPublisher, PublishError> {
        let pool = ChannelPool::new(&self.config)?;
        pool.declare_exchange(&self.config).await?;
        let transport =
            AmqpPublish::new(pool.clone(), self.config.exchange(), self.config.source());
        let service = self.stack(transport);
        Ok(EventPublisher::from_parts(service, Some(pool)))
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
        let service = self.stack(transport);
        EventPublisher::from_parts(service, None)
    }

    fn stack<T>(&self, transport: T) -> PublishService
    where
        T: tower_service::Service<Event, Response = Receipt, Error = PublishError>
            + Clone
            + Send
            + Sync
            + 'static,
        T::Future: Send + 'static,
    {
        let validation = self.config.validation().then(|| {
            ValidationLayer::new(self.registry.clone())
                .allow_unregistered(self.config.allow_unregistered())
        });
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .option_layer(validation)
                .layer(self.organization.clone())
                .service(transport)
                .map_err(|e: PublishError| e),
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
        }
    }

    /// Connects with `config` and the default stack.
    ///
    /// # Errors
    /// See [`EventPublisherBuilder::connect`].
    pub async fn connect(config: PublisherConfig) -> Result<Self, PublishError> {
        Self::builder(config).connect().await
    }

    /// A publisher over a ready-made service stack (see `examples/custom_stack.rs`).
    pub fn from_service(service: PublishService) -> Self {
        Self::from_parts(service, None)
    }

    fn from_parts(service: PublishService, pool: Option<ChannelPool>) -> Self {
        Self {
            service,
            shared: Arc::new(Shared {
                pool,
                closed: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
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

    /// Stops accepting events, waits for the publishes in flight to finish, then
    /// closes the channels and connections.
    pub async fn close(&self) {
        let shared = &*self.shared;
        shared.closed.store(true, Ordering::Release);
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
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}
