//! The innermost service: publishes an [`Event`] on a pooled confirm-mode channel
//! and resolves only when the broker has answered for *that* event.
//!
//! | broker answer | result |
//! |---|---|
//! | `basic.ack`, routed | `Ok(`[`Receipt`]`)` |
//! | `basic.ack` with a `basic.return` for this event (`mandatory`, no queue bound) | [`ErrorKind::Unroutable`] |
//! | `basic.nack` | [`ErrorKind::Nacked`] |
//! | channel or connection lost | [`ErrorKind::Connection`] |
//!
//! Outcomes are exact even with hundreds of confirms in flight per channel (see
//! `confirm.rs` for how returns are attributed). The transport has no deadline of
//! its own: put a timeout layer around it (the
//! [`EventPublisher`](crate::EventPublisher) does).

mod confirm;

pub(crate) use confirm::ConfirmTracker;
use confirm::Outcome;
pub use confirm::reattributed_returns;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use lapin::{
    BasicProperties,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio::sync::TryAcquireError;
use tower_service::Service;

use crate::{
    ChannelPool, Event, PublishError, Receipt, ValidationError, check_event_type, error::ErrorKind,
};

/// AMQP header carrying the event's organization id.
pub const HEADER_ORGANIZATION_ID: &str = "organization_id";
/// AMQP header carrying the event's schema version.
pub const HEADER_SCHEMA_VERSION: &str = "schema_version";

/// Above this many publishes in flight on a channel, a publish that is ready to be
/// written first yields once, so that the other ready publishes are written with it.
/// Below it, publishes are written at once: a lone publish (or the start of a burst)
/// pays no scheduling delay, and the broker has work while the rest of a burst gathers.
const GATHER_ABOVE_IN_FLIGHT: usize = 32;

/// Publishes events with `mandatory = true` on a [`ChannelPool`] and waits for the
/// broker's confirm. Cheap to clone.
#[derive(Clone)]
pub struct AmqpPublish {
    inner: Arc<Inner>,
}

struct Inner {
    pool: ChannelPool,
    exchange: Arc<str>,
    /// `None` when the name is longer than AMQP allows; publishing then fails.
    exchange_short: Option<ShortString>,
    source: Arc<str>,
}

impl fmt::Debug for AmqpPublish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpPublish")
            .field("exchange", &self.inner.exchange)
            .field("source", &self.inner.source)
            .field("pool", &self.inner.pool)
            .finish()
    }
}

impl AmqpPublish {
    /// A transport publishing to `exchange`, stamping `source` on events without one.
    pub fn new(
        pool: ChannelPool,
        exchange: impl Into<Arc<str>>,
        source: impl Into<Arc<str>>,
    ) -> Self {
        let exchange: Arc<str> = exchange.into();
        Self {
            inner: Arc::new(Inner {
                pool,
                exchange_short: ShortString::try_new(&*exchange).ok(),
                exchange,
                source: source.into(),
            }),
        }
    }

    /// The pool this transport publishes on.
    pub fn pool(&self) -> &ChannelPool {
        &self.inner.pool
    }
}

fn short(event_type: &str, field: &str, value: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(value).map_err(|_| {
        PublishError::validation(ValidationError::single(
            event_type,
            field,
            "is longer than 255 bytes",
        ))
    })
}

/// Encodes the body and AMQP properties of `event`.
pub(crate) fn encode(event: &Event) -> Result<(Vec<u8>, BasicProperties), PublishError> {
    let event_type = event.event_type();
    check_event_type(event_type).map_err(|why| {
        PublishError::validation(ValidationError::single(event_type, "event_type", why))
    })?;
    let body = event.to_json_bytes().map_err(|e| {
        PublishError::validation(ValidationError::single(
            event_type,
            "data",
            format!("cannot be encoded as json: {e}"),
        ))
    })?;
    let mut headers = FieldTable::default();
    if let Some(org) = event.organization_id() {
        headers.insert(
            HEADER_ORGANIZATION_ID.into(),
            AMQPValue::LongString(LongString::from(org.as_str())),
        );
    }
    headers.insert(
        HEADER_SCHEMA_VERSION.into(),
        AMQPValue::LongLongInt(i64::from(event.version())),
    );
    let timestamp = u64::try_from(event.timestamp().timestamp()).unwrap_or(0);
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.id().to_string().into())
        .with_timestamp(timestamp)
        .with_type(short(event_type, "event_type", event_type)?)
        .with_headers(headers);
    if let Some(source) = event.source() {
        properties = properties.with_app_id(short(event_type, "source", source)?);
    }
    if let Some(correlation_id) = event.correlation_id() {
        properties =
            properties.with_correlation_id(short(event_type, "correlation_id", correlation_id)?);
    }
    Ok((body, properties))
}

impl Service<Event> for AmqpPublish {
    type Response = Receipt;
    type Error = PublishError;
    type Future = Pin<Box<dyn Future<Output = Result<Receipt, PublishError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        // Readiness is decided per call, by the pool's wait timeout.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut event: Event) -> Self::Future {
        let this = self.clone();
        let span = tracing::debug_span!(
            "publish_attempt",
            event_id = %event.id(),
            event_type = event.event_type(),
        );
        Box::pin(tracing::Instrument::instrument(
            async move {
                event.set_source_if_absent(&this.inner.source);
                let id = event.id();
                let (body, properties) = encode(&event).map_err(|e| e.for_event(id))?;
                let routing_key = ShortString::from(event.event_type());
                let exchange = this.inner.exchange_short.clone().ok_or_else(|| {
                    PublishError::new(
                        ErrorKind::Config,
                        "the exchange name is longer than 255 bytes",
                    )
                    .for_event(id)
                })?;
                let started = Instant::now();

                let pooled = this
                    .inner
                    .pool
                    .channel()
                    .await
                    .map_err(|e| e.for_event(id))?;
                // Without awaiting while a permit is free: see `ChannelPool::channel`.
                let permit = match pooled.in_flight.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(TryAcquireError::NoPermits) => {
                        { pooled.in_flight.clone().acquire_owned().await }
                            .map_err(|_| PublishError::shutdown().for_event(id))?
                    }
                    Err(TryAcquireError::Closed) => {
                        return Err(PublishError::shutdown().for_event(id));
                    }
                };
                let publish_on = Arc::clone(&pooled);
                let publish: confirm::PublishFuture = Box::pin(async move {
                    publish_on
                        .channel
                        .basic_publish(
                            exchange,
                            routing_key,
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &body,
                            properties,
                        )
                        .await
                });
                if pooled.in_flight() > GATHER_ABOVE_IN_FLIGHT {
                    // Everything is ready, and the channel is busy anyway. Before
                    // writing, let the other publishes that are ready to start (the rest
                    // of a batch, other requests on this worker) get this far too: they
                    // then reach lapin back to back, and its I/O thread writes them in a
                    // few large writes instead of being woken for every event (see the
                    // README's Performance section). Nothing is registered yet: a
                    // publish dropped here is never sent.
                    tokio::task::yield_now().await;
                }
                // Waits, within this attempt's deadline, if this event is still in
                // flight on the channel (an earlier attempt whose confirm is due).
                let tracked = pooled.tracker.track_when_free(id, publish).await;
                drop(pooled);
                let outcome = tracked.await;
                drop(permit);
                let result = outcome_to_result(outcome, &event, &this.inner.exchange, started);
                match &result {
                    Ok(receipt) => tracing::debug!(
                        elapsed_us = receipt.elapsed.as_micros() as u64,
                        "confirmed"
                    ),
                    Err(error) => tracing::debug!(kind = ?error.kind(), %error, "attempt failed"),
                }
                result
            },
            span,
        ))
    }
}

fn outcome_to_result(
    outcome: Outcome,
    event: &Event,
    exchange: &str,
    started: Instant,
) -> Result<Receipt, PublishError> {
    let id = event.id();
    match outcome {
        Outcome::Routed => Ok(Receipt::new(id, started.elapsed())),
        Outcome::Unroutable {
            reply_code,
            reply_text,
        } => Err(PublishError::new(
            ErrorKind::Unroutable,
            format!(
                "the broker returned the event: no queue is bound to exchange `{exchange}` for routing key `{}` ({reply_code} {reply_text})",
                event.event_type()
            ),
        )
        .for_event(id)),
        Outcome::Nacked => Err(PublishError::new(
            ErrorKind::Nacked,
            "the broker refused the event (basic.nack)",
        )
        .for_event(id)),
        Outcome::Failed(error) => {
            let err = PublishError::new(
                ErrorKind::Connection,
                "the channel closed before the broker confirmed the event",
            )
            .for_event(id);
            Err(match error {
                Some(e) => err.with_source(e),
                None => err,
            })
        }
        Outcome::Unknown => Err(PublishError::new(
            ErrorKind::Connection,
            "the channel closed after the broker acked the event, before it was known whether it was routed",
        )
        .for_event(id)),
    }
}
