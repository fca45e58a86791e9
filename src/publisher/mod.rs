//! [`EventPublisher`]: the cheap-to-clone handle web handlers publish through.
//!
//! Data flows one way, through the layers of the [map](crate::stack). Every event
//! passes the *front* once, and then:
//!
//! - [`publish`](EventPublisher::publish): the *delivery* stack;
//! - [`spawn`](EventPublisher::spawn): a bounded queue, drained in the background
//!   through the same delivery stack.

mod builder;
mod detached;
mod spill;

pub use builder::EventPublisherBuilder;
pub use detached::CloseReport;
pub(crate) use spill::Spill;
#[cfg(feature = "outbox-postgres")]
pub(crate) use spill::SpillFuture;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::types::ShortString;
use tokio::sync::Notify;
use tower::{ServiceExt, util::BoxCloneSyncService};

use self::{
    builder::Front,
    detached::{DetachedQueue, DetachedSettings, Enqueue},
};
use crate::{
    circuit_breaker::{BreakerHandle, BreakerState},
    config::PublisherConfig,
    error::{ErrorKind, PublishError},
    event::{EncodedEvent, Event, OrganizationId, Receipt, context::MetricType},
    fairness::FairShareLayer,
    log_limit::LogLimiter,
    schema::DomainEvent,
    transport::{AmqpPublish, ConnectionState, HeaderCheck, encode, header_frame_bytes},
};

/// A boxed delivery stack: any `Service<Event>` with the crate's error type, as
/// [`EventPublisherBuilder::build_with_delivery`] takes it.
pub type PublishService = BoxCloneSyncService<Event, Receipt, PublishError>;

/// The front in front of the detached queue.
type SpawnService = BoxCloneSyncService<Event, (), PublishError>;

/// The front alone: an event validated, with its organization, stamped.
type PrepareService = BoxCloneSyncService<Event, Event, PublishError>;

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
/// use fitviz_events::{Event, EventPublisher, PublisherConfig, events::WorkoutCreated};
/// use fitviz_events::testing::Example;
///
/// # async fn demo() -> Result<(), fitviz_events::PublishError> {
/// let publisher = EventPublisher::connect(PublisherConfig::from_env()?).await?;
/// let receipt = publisher
///     .publish(Event::new(WorkoutCreated::example()).with_organization("org-42"))
///     .await?;
/// println!("confirmed {} in {:?}", receipt.event_id, receipt.elapsed);
/// publisher.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EventPublisher {
    /// Front → delivery.
    publish: PublishService,
    /// Front → detached queue.
    spawn: SpawnService,
    shared: Arc<Shared>,
}

struct Shared {
    /// Front → the event, for `encode`.
    prepare: PrepareService,
    /// Telemetry → delivery, without the front: for `publish_encoded`.
    delivery: PublishService,
    /// Where `encode` addresses events, and its limits.
    encoding: Encoding,
    transport: Option<AmqpPublish>,
    breaker: Option<BreakerHandle>,
    fair: Option<FairShareLayer>,
    detached: Arc<DetachedQueue>,
    flush_timeout: Duration,
    closed: AtomicBool,
    /// Publishes in flight, plus the [`CLOSED`] bit once `close` began: a publish is
    /// admitted only while the bit is clear, so after `close` the count only falls and
    /// callers looping on `publish` cannot keep `close` waiting.
    in_flight: AtomicUsize,
    idle: Notify,
    /// Limits `try_publish`'s warnings: a burst of identical failures is one line.
    log: LogLimiter,
    /// Where detached events go when the queue is full or the broker is down, and what
    /// `close` could not send (the outbox, when it spills).
    spill: std::sync::OnceLock<Arc<dyn Spill>>,
}

/// What `encode` needs besides the front.
pub(super) struct Encoding {
    pub(super) exchange: ShortString,
    pub(super) max_body_bytes: usize,
    pub(super) header_check: Option<HeaderCheck>,
}

/// Why a publisher cannot publish now: see [`EventPublisher::readiness`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotReady {
    /// One line per problem (no credentials: connection errors show passwords as `***`).
    pub reasons: Vec<String>,
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not ready: {}", self.reasons.join("; "))
    }
}

impl std::error::Error for NotReady {}

/// The `frame_max` RabbitMQ negotiates by default, for `encode` before any connection.
const DEFAULT_FRAME_MAX: usize = 131_072;

/// The top bit of [`Shared::in_flight`]: set by `close`.
const CLOSED: usize = 1 << (usize::BITS - 1);

impl fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventPublisher")
            .field("transport", &self.shared.transport)
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .field(
                "in_flight",
                &(self.shared.in_flight.load(Ordering::Relaxed) & !CLOSED),
            )
            .finish()
    }
}

/// Decrements the in-flight count when a publish ends (or is dropped).
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) & !CLOSED == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The `Shutdown` error for `event`, after spending a unit of tokio's cooperative
/// budget: a caller looping on a closed publisher yields now and then, so timers and
/// `close` itself still run on its thread.
async fn shut_down(event: &Event) -> PublishError {
    tokio::task::coop::consume_budget().await;
    PublishError::shutdown().for_event(event.id())
}

impl EventPublisher {
    /// `publish` is the front over the delivery stack, boxed once; the detached queue's
    /// worker uses `delivery` alone.
    #[allow(clippy::too_many_arguments)] // private; called once, by the builder
    fn new(
        publish: PublishService,
        front: Front,
        delivery: PublishService,
        detached: DetachedSettings,
        encoding: Encoding,
        flush_timeout: Duration,
        transport: Option<AmqpPublish>,
        breaker: Option<BreakerHandle>,
        fair: Option<FairShareLayer>,
    ) -> Self {
        let queue = Arc::new(DetachedQueue::start(delivery.clone(), detached));
        let detached = queue.clone();
        Self {
            publish,
            spawn: front.wrap(Enqueue::new(queue)),
            shared: Arc::new(Shared {
                prepare: front.wrap(tower::service_fn(|event: Event| {
                    std::future::ready(Ok::<_, PublishError>(event))
                })),
                delivery,
                encoding,
                transport,
                breaker,
                fair,
                detached,
                flush_timeout,
                closed: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
                log: LogLimiter::default(),
                spill: std::sync::OnceLock::new(),
            }),
        }
    }

    /// A builder for `config`.
    pub fn builder(config: PublisherConfig) -> EventPublisherBuilder {
        EventPublisherBuilder::new(config)
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
        let Some(_guard) = self.admit() else {
            return Err(shut_down(&event).await);
        };
        self.publish.clone().oneshot(event).await
    }

    /// Counts a publish in flight, unless `close` began.
    fn admit(&self) -> Option<InFlight<'_>> {
        let shared = &*self.shared;
        let mut state = shared.in_flight.load(Ordering::Acquire);
        loop {
            if state & CLOSED != 0 {
                return None;
            }
            match shared.in_flight.compare_exchange_weak(
                state,
                state + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(InFlight(shared)),
                Err(now) => state = now,
            }
        }
    }

    /// Runs the front of the stack on `event` (validation, organization, envelope) and
    /// encodes it as [`publish`](Self::publish) would send it, without sending it: for
    /// storing it and sending it later byte for byte with
    /// [`publish_encoded`](Self::publish_encoded) (the [outbox](crate::guide) does).
    /// Bad input fails here with the same error `publish` gives it; the content header
    /// is checked against the last `frame_max` a connection negotiated (before any, the
    /// broker's default, 131,072 bytes). With the `opentelemetry` feature the message
    /// carries the current span's trace context.
    ///
    /// # Errors
    /// As the front of [`publish`](Self::publish), and
    /// [`ErrorKind::TooLarge`] for a body over
    /// [`PublisherConfig::max_body_bytes`] or a content header over the frame size.
    pub async fn encode(&self, event: impl Into<Event>) -> Result<EncodedEvent, PublishError> {
        let mut event = self.shared.prepare.clone().oneshot(event.into()).await?;
        let current = tracing::Span::current();
        if !current.is_disabled() {
            event
                .context_mut()
                .set_telemetry(MetricType::default(), Some(current));
        }
        let encoding = &self.shared.encoding;
        let (body, properties) = encode(&event, encoding.max_body_bytes)?;
        let frame_max = match encoding.header_check.as_ref().map(HeaderCheck::frame_max) {
            Some(negotiated) if negotiated > 0 => negotiated,
            _ => DEFAULT_FRAME_MAX,
        };
        let header_bytes = header_frame_bytes(&properties);
        if header_bytes > frame_max {
            return Err(PublishError::too_large(
                "the event's properties and headers (the content header frame)",
                Some(header_bytes),
                frame_max,
            )
            .for_event(event.id()));
        }
        Ok(EncodedEvent::new(
            &event,
            encoding.exchange.clone(),
            properties,
            body,
        ))
    }

    /// Publishes an event [encoded](Self::encode) earlier, through the delivery stack
    /// (deadline, fair share, retry, circuit breaker, the confirmed transport) and the
    /// telemetry, but not the front again: the broker gets the stored bytes unchanged,
    /// with the same `message_id`, on every attempt.
    ///
    /// # Errors
    /// As the delivery part of [`publish`](Self::publish).
    pub async fn publish_encoded(&self, event: EncodedEvent) -> Result<Receipt, PublishError> {
        let event = event.to_event();
        let Some(_guard) = self.admit() else {
            return Err(shut_down(&event).await);
        };
        self.shared.delivery.clone().oneshot(event).await
    }

    /// Publishes encoded events in their order, with one outcome per event in the same
    /// order: what the outbox relay uses to keep the order of an ordering key. The events
    /// are written one after another on the channel of one lane, chosen by `key` (the
    /// same key, the same lane), and their confirms awaited together — pipelined like
    /// [`publish_batch`](Self::publish_batch), but in order. Nothing is retried and
    /// nothing moves to another channel: the first event that cannot be written ends the
    /// sequence and the events behind it are reported not sent, so what reached the
    /// broker is a prefix of the sequence (but for a `basic.nack` in the middle, which
    /// RabbitMQ sends only on internal errors); retry from the first failure, in order.
    /// The whole sequence is bounded by `publish_timeout`; while the circuit breaker is
    /// open nothing is sent.
    ///
    /// Over a transport other than the publisher's own AMQP one (a
    /// [`MemorySink`](crate::testing::MemorySink), a delivery stack of your own), the
    /// events go through [`publish_encoded`](Self::publish_encoded) one at a time.
    pub async fn publish_encoded_in_order(
        &self,
        key: u64,
        events: &[EncodedEvent],
    ) -> Vec<Result<Receipt, PublishError>> {
        let refuse_all = |first: PublishError| {
            let mut first = Some(first);
            (events.iter())
                .map(|event| {
                    Err(first
                        .take()
                        .unwrap_or_else(|| {
                            PublishError::new(
                                ErrorKind::CircuitOpen,
                                "not sent: the sequence was refused",
                            )
                        })
                        .for_event(event.id()))
                })
                .collect()
        };
        let Some(_guard) = self.admit() else {
            return refuse_all(PublishError::shutdown());
        };
        if self.breaker_state() == Some(BreakerState::Open) {
            return refuse_all(PublishError::new(
                ErrorKind::CircuitOpen,
                "the circuit breaker is open: the sequence was not sent",
            ));
        }
        match &self.shared.transport {
            Some(transport) => {
                // `flush_timeout` is the publish timeout.
                (transport.publish_in_order(key, events, self.shared.flush_timeout)).await
            }
            None => {
                let mut results = Vec::with_capacity(events.len());
                for event in events {
                    let failed = results.last().is_some_and(Result::is_err);
                    results.push(match failed {
                        true => Err(PublishError::new(
                            ErrorKind::Connection,
                            "not sent: an event ahead of it in the ordered sequence was not sent",
                        )
                        .for_event(event.id())),
                        false => {
                            (self.shared.delivery.clone())
                                .oneshot(event.to_event())
                                .await
                        }
                    });
                }
                results
            }
        }
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
    /// against the schema registered for `event_type` (fields it does not name are
    /// forwarded or rejected as [`PublisherConfig::unknown_fields`] says). With
    /// `organization_id` `None` the event takes its organization from the
    /// [organization source](EventPublisherBuilder::organization_source), if any.
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

    /// [`publish_json`](Self::publish_json) returning whether the broker confirmed the
    /// event; failures are logged as by [`try_publish`](Self::try_publish) — the original
    /// library's `success = publisher.publish(event_type, data, organization_id)`.
    pub async fn try_publish_json(
        &self,
        event_type: impl Into<String>,
        data: serde_json::Value,
        organization_id: Option<OrganizationId>,
    ) -> bool {
        let mut event = Event::from_json(event_type.into(), data);
        if let Some(org) = organization_id {
            event = event.with_organization(org);
        }
        self.try_publish(event).await
    }

    /// Publishes and returns whether the broker confirmed the event; failures are
    /// logged with `tracing` and never panic. The graceful mode of the original library.
    ///
    /// A burst of identical failures (same error kind and event type) is logged once,
    /// then at most once every five seconds with the number of lines left out since
    /// (the field `suppressed`), so a caller looping on a failure does not flood the logs.
    pub async fn try_publish(&self, event: impl Into<Event>) -> bool {
        let event = event.into();
        let (id, event_type) = (event.id(), event.event_type().to_owned());
        match self.publish(event).await {
            Ok(_) => true,
            Err(error) => {
                if let Some(suppressed) = self.shared.log.admit((error.kind(), &event_type)) {
                    tracing::warn!(event_id = %id, %event_type, kind = ?error.kind(), %error, suppressed, "event not published");
                }
                false
            }
        }
    }

    /// Hands the event to the bounded detached-publish queue and returns at once —
    /// the original library's `async_publish`. The event passes the front now
    /// (validation, organization, envelope), so a bad event is reported to the
    /// caller; the background worker then delivers it through the delivery stack,
    /// retrying while the broker is unavailable.
    ///
    /// # Errors
    /// Validation and organization errors, [`ErrorKind::TooLarge`]
    /// for an event over [`PublisherConfig::max_body_bytes`] (checked before it is queued),
    /// [`ErrorKind::QueueFull`] when the queue stays full or
    /// the event's organization already has its share of it (see the `detached_*`
    /// settings of [`PublisherConfig`]), and [`ErrorKind::Shutdown`]
    /// after `close`. Each of these returns without waiting but spends a unit of tokio's
    /// cooperative budget, so a caller looping on them still lets other tasks run.
    pub async fn spawn(&self, event: impl Into<Event>) -> Result<(), PublishError> {
        let mut event = event.into();
        // Its producer span opens later, in the worker: under the caller's span.
        let current = tracing::Span::current();
        if !current.is_disabled() {
            event.context_mut().set_spawner_span(current);
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(shut_down(&event).await);
        }
        let Some(spill) = self.shared.spill.get() else {
            return self.spawn.clone().oneshot(event).await;
        };
        // With a spill: an event that would wait for a broker that is down, or find the
        // queue full, is persisted instead.
        if self.broker_down() {
            return spill.spill_one(event).await;
        }
        let copy = event.clone();
        match self.spawn.clone().oneshot(event).await {
            Err(error) if error.kind() == ErrorKind::QueueFull => spill.spill_one(copy).await,
            result => result,
        }
    }

    /// Whether the publisher's own connection is down or its breaker open.
    fn broker_down(&self) -> bool {
        self.connection_state()
            .is_some_and(|state| !state.connected)
            || self.breaker_state() == Some(BreakerState::Open)
    }

    /// Sends detached events that cannot be published now (the queue is full, the broker
    /// is down, `close` ran out of time) to `spill` instead of refusing or dropping them.
    #[cfg_attr(not(feature = "outbox-postgres"), allow(dead_code))]
    pub(crate) fn spill_to(&self, spill: Arc<dyn Spill>) -> bool {
        self.shared.spill.set(spill).is_ok()
    }

    /// The circuit breaker's state, for health checks (`None` for a delivery stack
    /// of your own, built with [`EventPublisherBuilder::build_with_delivery`]).
    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.shared.breaker.as_ref().map(BreakerHandle::state)
    }

    /// The state of the connections to the broker — connected or not, to which node,
    /// blocked, the last connection error — for readiness checks (`None` unless the
    /// publisher was made with [`connect`](Self::connect) or
    /// [`EventPublisherBuilder::connect`], which own their transport).
    pub fn connection_state(&self) -> Option<ConnectionState> {
        self.shared.transport.as_ref().map(AmqpPublish::state)
    }

    /// Whether the publisher can publish now, for a readiness probe: not when it owns
    /// its transport and no connection is open or the broker blocks one, nor while the
    /// circuit breaker is open (half-open lets a probe through: ready). Never use it for
    /// liveness — a broker outage must not get every instance restarted.
    ///
    /// # Errors
    /// [`NotReady`] with a reason per problem.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let mut reasons = Vec::new();
        if let Some(connection) = self.connection_state() {
            if !connection.connected {
                reasons.push(match connection.last_error {
                    Some(error) => format!("not connected to the broker: {error}"),
                    None => "not connected to the broker".to_owned(),
                });
            }
            if let Some(reason) = connection.blocked {
                reasons.push(format!("blocked by the broker: {reason}"));
            }
        }
        if self.breaker_state() == Some(BreakerState::Open) {
            reasons.push(
                "circuit breaker open: publishes are refused until it probes the broker".to_owned(),
            );
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(NotReady { reasons })
        }
    }

    /// The publishes of `organization` in flight now, as the per-organization fair share
    /// counts them (`None`: events without an organization; always 0 for a delivery stack
    /// of your own). At most [`PublisherConfig::max_in_flight_per_organization`].
    pub fn in_flight_of(&self, organization: Option<&str>) -> usize {
        self.shared
            .fair
            .as_ref()
            .map_or(0, |fair| fair.in_flight(organization))
    }

    /// Detached events of `organization` queued or being published (`None`: events
    /// without an organization). At most
    /// [`PublisherConfig::detached_share_per_organization`].
    pub fn queued_of(&self, organization: Option<&str>) -> usize {
        self.shared.detached.queued_of(organization.unwrap_or(""))
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
        shared.in_flight.fetch_or(CLOSED, Ordering::AcqRel);
        let mut report = shared.detached.flush(flush_deadline).await;
        if let Some(spill) = shared.spill.get()
            && !report.unsent.is_empty()
        {
            let unsent = std::mem::take(&mut report.unsent);
            match spill.spill(unsent.clone()).await {
                Ok(spilled) => {
                    tracing::info!(
                        spilled,
                        "detached events not sent before shutdown went to the outbox"
                    );
                    report.spilled = spilled as u64;
                }
                Err(error) => {
                    tracing::error!(%error, unsent = unsent.len(), "detached events not sent before shutdown could not go to the outbox either");
                    report.unsent = unsent;
                }
            }
        }
        loop {
            let idle = shared.idle.notified();
            if shared.in_flight.load(Ordering::Acquire) & !CLOSED == 0 {
                break;
            }
            idle.await;
        }
        if let Some(transport) = &shared.transport {
            transport.close().await;
        }
        report
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}
