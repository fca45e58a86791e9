//! The innermost service: publishes an [`Event`] on a pooled confirm-mode channel
//! and resolves only when the broker has answered for *that* event.
//!
//! In the [publish stack](crate::stack) it is stage 10, innermost: it needs a
//! validated, stamped event with its organization, and reads the metric type and the
//! span.
//!
//! | broker answer | result |
//! |---|---|
//! | `basic.ack`, routed | `Ok(`[`Receipt`]`)` |
//! | `basic.ack` with a `basic.return` for this event (`mandatory`, no queue bound) | by [`UnroutablePolicy`]: kept in `<exchange>.unrouted` (`Ok`, [`Routing::Kept`]), [`ErrorKind::Unroutable`], or `Ok` with [`Routing::Dropped`] |
//! | `basic.nack` | [`ErrorKind::Nacked`] |
//! | channel or connection lost after the event was written | [`ErrorKind::Connection`], [`maybe_delivered`](PublishError::maybe_delivered) |
//! | channel closed by the broker with `403`, `404` or `406` after the event was written (no write permission or an `internal` exchange; no such exchange; a message over `max_message_size`) | [`ErrorKind::AccessRefused`], [`ErrorKind::NotFound`], [`ErrorKind::PreconditionFailed`]: not stored, not retried, not counted by the breaker |
//! | channel already closed: not written | [`ErrorKind::Connection`] |
//! | no confirm after `confirm_timeout`, and no answer to a round trip on the connection within `min(confirm_timeout, 2 s)` | [`ErrorKind::Timeout`], [`maybe_delivered`](PublishError::maybe_delivered) |
//!
//! A late confirm on a connection whose broker still answers is waited for: a quorum
//! queue electing a new leader holds confirms for seconds, and the confirm comes (see
//! `liveness.rs`). Sending the event again instead would add a duplicate and load on a
//! cluster that is electing.
//!
//! A connection error carries the connection's
//! [generation](PublishError::connection_generation), so that the circuit breaker
//! counts a lost connection once, however many publishes were in flight on it.
//!
//! Outcomes are exact even with hundreds of confirms in flight per channel (see
//! `confirm/mod.rs` for how returns are attributed). The transport bounds its waits for
//! a channel and a connection, but not the wait for a confirm from a broker that still
//! answers: put a timeout layer around it (the [`EventPublisher`](crate::EventPublisher)
//! does). It sends events as they are: the
//! publisher's front has already validated and stamped them.
//!
//! Inside, each file has one job: `parts` says what a transport shares with the
//! publisher built over it ([`PublishTransport`]), `encode` turns an event into a message,
//! `exchange` declares the exchange, `connection` opens connections (`tls` those
//! over TLS), `pool` shares confirm-mode channels, `channel` publishes on one of
//! them, `confirm` tracks its confirms, `liveness` asks a connection whether the
//! broker is still there when a confirm is late.

mod archive;
mod channel;
mod confirm;
mod connection;
mod encode;
pub(crate) mod exchange;
mod health;
mod liveness;
mod parts;
mod pool;
mod reconnect;
mod refusal;
mod sequence;
mod tls;
mod unrouted;

pub use archive::archive_name;
pub(crate) use connection::open_connection;
pub(crate) use encode::{check_body_size, encode, header_frame_bytes};
pub use health::ConnectionState;
pub use parts::{PublishTransport, TransportParts};
pub use unrouted::{UnroutedQueue, unrouted_name};

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use lapin::types::ShortString;
use tokio::task::AbortHandle;
use tower_service::Service;

use self::{
    channel::Message,
    confirm::Outcome,
    connection::{ConnectionManager, ConnectionSettings, NodeSettings},
    exchange::Exchange,
    health::Health,
    pool::{ChannelPool, PoolSettings, PooledChannel},
    tls::Tls,
};
use crate::{
    config::{PublisherConfig, UnroutablePolicy},
    error::{ErrorKind, PublishError},
    event::context::MetricType,
    event::{Event, Receipt, Routing},
    telemetry::{Instruments, SentGuard},
};

/// Publishes events with `mandatory = true` on a pool of confirm-mode channels and
/// waits for the broker's confirm. Cheap to clone; clones share the pool.
///
/// # Example
/// ```no_run
/// use fitviz_events::{EventPublisher, PublisherConfig, transport::AmqpPublish};
///
/// # async fn demo() -> Result<(), fitviz_events::PublishError> {
/// let config = PublisherConfig::from_env()?;
/// let transport = AmqpPublish::connect(&config).await?;
/// let publisher = EventPublisher::builder(config).build_with_transport(transport);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmqpPublish {
    inner: Arc<Inner>,
}

struct Inner {
    pool: ChannelPool,
    exchange: Arc<Exchange>,
    health: Health,
    max_body_bytes: usize,
    /// The per-event metrics, shared with the publisher's telemetry layer.
    instruments: Arc<Instruments>,
    header_check: HeaderCheck,
    /// The reconnect task, aborted by `close`.
    reconnect: OnceLock<AbortHandle>,
    /// What to do with an event the broker returns.
    unroutable: UnroutablePolicy,
    /// Declare `<exchange>.unrouted` (or only check it exists).
    declare_unrouted: bool,
    /// The connection generation `<exchange>.unrouted` was last declared on, plus one.
    unrouted_declared: AtomicU64,
    /// Which events the archive stream takes, and whether it exists.
    archive: archive::ArchiveCheck,
}

impl Inner {
    /// What to do with `event` if the broker returns it: the configured policy, but for
    /// a message that is not one of the publisher's events (a dead letter moved back),
    /// which fails instead of being kept or dropped.
    fn unroutable_policy(&self, event: &Event) -> UnroutablePolicy {
        match event.context().encoded() {
            Some(encoded) => self.unroutable_policy_of(encoded),
            None => self.unroutable,
        }
    }

    /// [`unroutable_policy`](Self::unroutable_policy) of an encoded event.
    fn unroutable_policy_of(&self, encoded: &crate::event::EncodedEvent) -> UnroutablePolicy {
        if encoded.unroutable_is_error() {
            UnroutablePolicy::Error
        } else {
            self.unroutable
        }
    }
}

impl fmt::Debug for AmqpPublish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpPublish")
            .field("exchange", self.inner.exchange.name())
            .field("pool", &self.inner.pool)
            .finish()
    }
}

impl AmqpPublish {
    /// A transport for `config`'s broker and exchange. It returns at once and connects
    /// in the background: a task opens the connections and a confirm-mode channel per
    /// lane, and replaces them whenever they are lost (see [`state`](Self::state)).
    /// Each new connection goes to one of the configured addresses, tried in a shuffled
    /// order, and declares (or, with `declare_exchange = false`, checks) the exchange.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when `config` is invalid (see [`PublisherConfig::validate`]).
    pub fn new(config: &PublisherConfig) -> Result<Self, PublishError> {
        // Validates the whole config, reading the TLS files once.
        let tls = config.validated_tls()?.map(Tls::new);
        let exchange = Exchange::new(&config.exchange, config.declare_exchange)?;
        let nodes = (config.url.nodes().iter().zip(config.amqp_uris()))
            .map(|(node, uri)| NodeSettings {
                uri,
                redacted: node.redacted().to_owned(),
                address: node.address().to_owned(),
            })
            .collect();
        let health = Health::default();
        let connections = ConnectionManager::new(
            ConnectionSettings {
                nodes,
                name: (config.connection_name.clone()).unwrap_or_else(|| config.source.clone()),
                timeout: config.connection_timeout,
                tls,
            },
            exchange.clone(),
            health.clone(),
        );
        let frame_max = Arc::new(AtomicUsize::new(0));
        let pool = ChannelPool::new(
            connections,
            &PoolSettings {
                pool_size: config.pool_size,
                max_in_flight: config.max_in_flight,
                confirm_timeout: config.confirm_timeout,
                connection_timeout: config.connection_timeout,
                wait_timeout: config.pool_wait_timeout,
                frame_max: frame_max.clone(),
            },
        )?;
        let inner = Arc::new(Inner {
            pool,
            exchange,
            health,
            max_body_bytes: config.max_body_bytes,
            instruments: Arc::new(Instruments::new(&config.exchange)),
            header_check: HeaderCheck { frame_max },
            reconnect: OnceLock::new(),
            unroutable: config.unroutable,
            declare_unrouted: config.declare_exchange,
            unrouted_declared: AtomicU64::new(0),
            archive: archive::ArchiveCheck::new(config.archive.clone()),
        });
        let _ = inner.reconnect.set(reconnect::spawn(&inner));
        Ok(Self { inner })
    }

    /// What the transport knows of its connections now: connected or not, to which
    /// node, blocked by the broker, the last connection error. For readiness checks.
    pub fn state(&self) -> ConnectionState {
        self.inner.health.state()
    }

    /// Checks the content header of events against the negotiated `frame_max`, for the
    /// detached queue (which must refuse an event before queueing it).
    pub(crate) fn header_check(&self) -> HeaderCheck {
        self.inner.header_check.clone()
    }

    /// The transport's per-event metrics, for the publisher's telemetry layer.
    pub(crate) fn instruments(&self) -> Arc<Instruments> {
        self.inner.instruments.clone()
    }

    /// Calls `f` whenever a connection opens or the broker unblocks one.
    pub(crate) fn on_restored(&self, f: impl Fn() + Send + Sync + 'static) {
        self.inner.health.on_restored(f);
    }

    /// [`new`](Self::new), then opens a first connection and declares the exchange, so
    /// that an unreachable broker or a wrong exchange is reported at start-up.
    ///
    /// # Errors
    /// [`ErrorKind::Connection`] when the broker cannot be reached or the exchange
    /// cannot be declared (or does not exist, with `declare_exchange = false`).
    pub async fn connect(config: &PublisherConfig) -> Result<Self, PublishError> {
        let transport = Self::new(config)?;
        transport.inner.pool.connect().await?;
        Ok(transport)
    }

    /// Closes the channels and connections; later publishes fail with
    /// [`ErrorKind::Shutdown`].
    pub async fn close(&self) {
        if let Some(task) = self.inner.reconnect.get() {
            task.abort();
        }
        self.inner.pool.close().await;
    }

    async fn publish(&self, event: Event) -> Result<Receipt, PublishError> {
        let message = self.message(&event, self.inner.exchange.name())?;
        let header_bytes = header_frame_bytes(&message.properties);
        let body_size = message.body.len();
        let started = Instant::now();
        // Properties that fit the smallest frame any broker may negotiate (4096 bytes:
        // always, with checked ids and no large custom headers) need no look at the
        // connection; larger ones are checked against the connection's negotiated
        // frame_max before anything is sent.
        let channel = self.inner.pool.channel().await?;
        if header_bytes > MIN_FRAME_MAX && header_bytes > channel.frame_max() {
            return Err(PublishError::too_large(
                "the event's properties and headers (the content header frame)",
                Some(header_bytes),
                channel.frame_max(),
            ));
        }
        let generation = channel.generation();
        if channel.is_blocked() {
            let reason = (self.inner.health.blocked_reason(generation))
                .unwrap_or_else(|| "blocked".to_owned());
            return Err(PublishError::new(
                ErrorKind::Blocked,
                format!("the broker has blocked the connection ({reason}): the event was not sent"),
            ));
        }
        if let Some(span) = event.context().span() {
            span.record("messaging.message.body.size", body_size);
            let (host, port) = split_address(channel.node());
            span.record("server.address", host);
            if let Some(port) = port {
                span.record("server.port", port);
            }
        }
        let outcome = self
            .send(channel, message, event.context().metric_type())
            .await?;
        if let Outcome::Unroutable { .. } = outcome {
            match self.inner.unroutable_policy(&event) {
                UnroutablePolicy::Error => {}
                UnroutablePolicy::Ignore => {
                    tracing::debug!("unroutable event dropped (unroutable policy `ignore`)");
                    return Ok(
                        Receipt::new(event.id(), started.elapsed()).with_routing(Routing::Dropped)
                    );
                }
                UnroutablePolicy::AlternateExchange => return self.keep(&event, started).await,
            }
        }
        let result = outcome_to_result(
            outcome,
            generation,
            (event.id(), event.event_type()),
            self.inner.exchange.name().as_str(),
            started,
        );
        if !self.inner.archive.is_on() {
            return result;
        }
        self.archived(result, self.archive_key(&event), generation)
            .await
    }

    /// The routing key an event was published with to this publisher's exchange (the
    /// only one the archive is bound to), or `None` when it went elsewhere.
    fn archive_key<'a>(&self, event: &'a Event) -> Option<&'a str> {
        match event.context().encoded() {
            Some(encoded) => (encoded.exchange_name() == self.inner.exchange.name())
                .then(|| encoded.routing_key()),
            None => Some(event.event_type()),
        }
    }

    /// `result`, saying [`Routing::Archived`] instead of `Routed` when the event went to
    /// the exchange with routing key `key` and the archive took it.
    async fn archived(
        &self,
        result: Result<Receipt, PublishError>,
        key: Option<&str>,
        generation: u64,
    ) -> Result<Receipt, PublishError> {
        match (result, key) {
            (Ok(receipt), Some(key)) if receipt.routing == Routing::Routed => {
                let inner = &self.inner;
                let exchange = inner.exchange.name().as_str();
                match inner
                    .archive
                    .holds(&inner.pool, exchange, key, generation)
                    .await
                {
                    true => Ok(receipt.with_routing(Routing::Archived)),
                    false => Ok(receipt),
                }
            }
            (result, _) => result,
        }
    }

    /// The message for `event`: its earlier encoding when it has one (sent as it is, to
    /// the exchange it was encoded for unless `exchange` is the unrouted queue's), or the
    /// event encoded now, addressed to `exchange`.
    fn message(&self, event: &Event, exchange: &ShortString) -> Result<Message, PublishError> {
        if let Some(encoded) = event.context().encoded() {
            let to = if exchange == self.inner.exchange.name() {
                encoded.exchange_name().clone()
            } else {
                exchange.clone()
            };
            return Ok(Message {
                event_id: encoded.id(),
                exchange: to,
                routing_key: encoded.routing_key_name().clone(),
                body: encoded.body().to_vec(),
                properties: encoded.properties().clone(),
            });
        }
        let (body, properties) = encode(event, self.inner.max_body_bytes)?;
        Ok(Message {
            event_id: event.id(),
            exchange: exchange.clone(),
            routing_key: ShortString::from(event.event_type()),
            body,
            properties,
        })
    }

    /// Sends `message` on `channel` and waits for the broker's answer, recording the
    /// attempt's metrics and what the answer says about the channel; the channel goes
    /// back to the pool before the outcome is returned.
    async fn send(
        &self,
        channel: PooledChannel,
        message: Message,
        metric_type: MetricType,
    ) -> Result<Outcome, PublishError> {
        let sent = self.inner.instruments.attempt(metric_type);
        let outcome = channel.publish(message, &sent).await?;
        settle(&channel, sent, &outcome);
        Ok(outcome)
    }

    /// Publishes an event the broker returned to `<exchange>.unrouted`, with a confirm,
    /// declaring (or checking) that exchange and queue first on each new connection.
    async fn keep(&self, event: &Event, started: Instant) -> Result<Receipt, PublishError> {
        let exchange = self.inner.exchange.name().as_str();
        let unrouted = unrouted_name(exchange);
        let channel = self.inner.pool.channel().await?;
        let generation = channel.generation();
        if self.inner.unrouted_declared.load(Ordering::Relaxed) != generation + 1 {
            let passive = !self.inner.declare_unrouted;
            let (result, _) = (self.inner.pool)
                .with_admin_channel(async |admin| {
                    UnroutedQueue::default()
                        .declare(admin, exchange, passive)
                        .await
                })
                .await?;
            if let Err((what, error)) = result {
                return Err(PublishError::new(
                    ErrorKind::Unroutable,
                    format!(
                        "no queue is bound to exchange `{exchange}` for routing key `{}`, and the event could not be kept: {what}: {error}",
                        event.event_type()
                    ),
                ));
            }
            self.inner
                .unrouted_declared
                .store(generation + 1, Ordering::Relaxed);
        }
        let message = self.message(event, &ShortString::from(unrouted.as_str()))?;
        let outcome = self
            .send(channel, message, event.context().metric_type())
            .await?;
        match outcome {
            Outcome::Routed => {
                tracing::debug!(queue = %unrouted, "unroutable event kept");
                Ok(Receipt::new(event.id(), started.elapsed()).with_routing(Routing::Kept))
            }
            outcome => outcome_to_result(
                outcome,
                generation,
                (event.id(), event.event_type()),
                &unrouted,
                started,
            ),
        }
    }
}

impl reconnect::Transport for Inner {
    fn pool(&self) -> &ChannelPool {
        &self.pool
    }

    fn health(&self) -> &Health {
        &self.health
    }
}

/// Checks an event's content header (properties and headers) against the last
/// `frame_max` a connection negotiated: what `publish` checks on its channel, for an
/// event that is queued now and published later.
#[derive(Clone, Debug)]
pub(crate) struct HeaderCheck {
    /// 0 until a channel has been opened.
    frame_max: Arc<AtomicUsize>,
}

impl HeaderCheck {
    /// The last `frame_max` a connection negotiated; 0 before any.
    pub(crate) fn frame_max(&self) -> usize {
        self.frame_max.load(Ordering::Relaxed)
    }

    /// # Errors
    /// [`ErrorKind::TooLarge`] when the event has custom headers and its content header
    /// does not fit the frame; events without custom headers always fit.
    pub(crate) fn check(&self, event: &Event) -> Result<(), PublishError> {
        if event.headers().next().is_none() {
            return Ok(());
        }
        let frame_max = self.frame_max.load(Ordering::Relaxed);
        if frame_max == 0 {
            return Ok(()); // Not known yet: the worker's publish checks it.
        }
        let (_, properties) = encode(event, usize::MAX)?;
        let header_bytes = header_frame_bytes(&properties);
        if header_bytes > MIN_FRAME_MAX && header_bytes > frame_max {
            return Err(PublishError::too_large(
                "the event's properties and headers (the content header frame)",
                Some(header_bytes),
                frame_max,
            )
            .for_event(event.id()));
        }
        Ok(())
    }
}

/// `host:port` as the `server.address` and `server.port` span attributes.
fn split_address(address: &str) -> (&str, Option<u16>) {
    match address.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()),
        None => (address, None),
    }
}

/// The smallest `frame_max` AMQP 0-9-1 allows a broker to negotiate.
const MIN_FRAME_MAX: usize = 4096;

impl Service<Event> for AmqpPublish {
    type Response = Receipt;
    type Error = PublishError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        // Readiness is decided per call, by the pool's wait timeout.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, event: Event) -> Self::Future {
        let this = self.clone();
        let span = tracing::debug_span!(
            target: "fitviz_events::publish",
            "publish_attempt",
            event_id = %event.id(),
            event_type = event.event_type(),
            error.type = tracing::field::Empty,
        );
        ResponseFuture(Box::pin(tracing::Instrument::instrument(
            async move {
                let id = event.id();
                let result = this.publish(event).await.map_err(|e| e.for_event(id));
                match &result {
                    Ok(receipt) => tracing::debug!(
                        elapsed_us = receipt.elapsed.as_micros() as u64,
                        "confirmed"
                    ),
                    Err(error) => {
                        tracing::Span::current().record("error.type", error.kind().as_str());
                        tracing::debug!(kind = ?error.kind(), %error, "attempt failed")
                    }
                }
                result
            },
            span,
        )))
    }
}

/// The response future of [`AmqpPublish`]: resolves with the broker's answer for
/// the event.
pub struct ResponseFuture(Pin<Box<dyn Future<Output = Result<Receipt, PublishError>> + Send>>);

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Receipt, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// Records the attempt's metrics and what the broker's answer says about the channel.
fn settle(channel: &PooledChannel, sent: SentGuard<'_>, outcome: &Outcome) {
    match outcome {
        Outcome::NotSent(_) => sent.not_sent(),
        Outcome::Routed => sent.finish(None),
        Outcome::Unroutable { .. } => sent.finish(Some(ErrorKind::Unroutable)),
        Outcome::Nacked => sent.finish(Some(ErrorKind::Nacked)),
        Outcome::Failed(error) => sent.finish(Some(failed_kind(error.as_ref()))),
        Outcome::Unknown => sent.finish(Some(ErrorKind::Connection)),
    }
    match outcome {
        // A channel may nack whatever it carries (a quorum queue whose leader is
        // gone): the next publishes may need a new one.
        Outcome::Nacked => channel.retire_after_nack(),
        Outcome::Routed | Outcome::Unroutable { .. } => channel.acked(),
        _ => {}
    }
}

/// The kind a channel failure after the event was written ends with: a refusal's own
/// kind when the broker closed the channel with 403, 404 or 406, `Connection` otherwise.
fn failed_kind(error: Option<&lapin::Error>) -> ErrorKind {
    error
        .and_then(refusal::refusal)
        .map_or(ErrorKind::Connection, |(kind, _, _)| kind)
}

/// The broker's answer as the publish's result; `generation` is the connection's,
/// which connection errors carry for the circuit breaker.
fn outcome_to_result(
    outcome: Outcome,
    generation: u64,
    (id, event_type): (uuid::Uuid, &str),
    exchange: &str,
    started: Instant,
) -> Result<Receipt, PublishError> {
    match outcome {
        Outcome::Routed => Ok(Receipt::new(id, started.elapsed())),
        Outcome::Unroutable {
            reply_code,
            reply_text,
        } => Err(PublishError::new(
            ErrorKind::Unroutable,
            format!(
                "the broker returned the event: no queue is bound to exchange `{exchange}` for routing key `{event_type}` ({reply_code} {reply_text})",
            ),
        )),
        Outcome::Nacked => Err(PublishError::new(
            ErrorKind::Nacked,
            "the broker refused the event (basic.nack)",
        )),
        Outcome::Failed(error) => {
            let refused = error.as_ref().and_then(|error| {
                refusal::refused(|| format!("the publish to exchange `{exchange}`"), error)
            });
            if let Some(refused) = refused {
                return Err(refused);
            }
            let err = PublishError::new(
                ErrorKind::Connection,
                "the channel closed before the broker confirmed the event",
            );
            Err(match error {
                Some(e) => err.with_source(e),
                None => err,
            }
            .on_connection(generation)
            .mark_maybe_delivered())
        }
        Outcome::NotSent(error) => {
            let err = PublishError::new(
                ErrorKind::Connection,
                "the channel was closed: the event was not sent",
            );
            Err(match error {
                Some(e) => err.with_source(e),
                None => err,
            }
            .on_connection(generation))
        }
        Outcome::Unknown => Err(PublishError::new(
            ErrorKind::Connection,
            "the channel closed after the broker acked the event, before it was known whether it was routed",
        )
        .on_connection(generation)
        .mark_maybe_delivered()),
    }
}
