//! Dead letters: list a dead-letter queue without consuming it, and replay its messages
//! to the queue they were dead-lettered from (or to their exchange).
//!
//! Both take a [`lapin::Channel`] of their own (listing holds the messages unacked until
//! it has seen them; replaying puts the channel in confirm mode).
//!
//! **Listing** gets up to `limit` messages with `basic.get` (not acknowledged), reads
//! each one's `x-death` header and body (as text when it is UTF-8, in base64 otherwise:
//! [`DeadLetter::body`], [`DeadLetter::body_base64`]), then gives them all back
//! (`basic.nack`, requeue). The
//! queue is unchanged afterwards, but its messages are redelivered (`redelivered` set)
//! and, while listed, invisible to other consumers. AMQP 0-9-1 has no peek: on a quorum
//! queue each listing **counts as a delivery** of every message it shows, and a queue
//! with an `x-delivery-limit` (as [`ConsumerQueue`](super::ConsumerQueue) gives consumer
//! queues) dead-letters a message after that many listings — or drops it when it has no
//! dead-letter exchange. Nor can AMQP read a queue's arguments or policy, so the limit
//! cannot be checked. Hence the rule: [`list`] reads only the queues this crate declares
//! without a delivery limit — dead-letter queues `<name>.dlq` and the unrouted queue
//! `<exchange>.unrouted` ([`check_listable`]) — and refuses any other queue with
//! [`TopologyErrorKind::CountsAsDelivery`] before touching it;
//! [`list_counting_deliveries`] lists any queue, for a caller who knows it has no limit
//! or accepts the deliveries. A dead-letter queue must have no delivery limit
//! ([`ConsumerQueue`](super::ConsumerQueue) declares it without one; on RabbitMQ 4,
//! which gives quorum queues a default limit of 20, set `delivery-limit` to -1 by
//! policy).
//!
//! **Replaying** takes one message at a time: publishes a copy (same body, properties
//! and `message_id`) through an [`EventPublisher`]'s delivery stack
//! ([`publish_encoded`](EventPublisher::publish_encoded): confirm mode, `mandatory`, the
//! publish deadline, retry, the circuit breaker, failover and telemetry, the same path
//! the outbox relay uses), then acks the dead letter. A copy no queue takes fails the
//! replay, whatever the publisher's unroutable policy (it is not kept in the publisher's
//! `<exchange>.unrouted`), and so does one the broker nacks, or one not confirmed within
//! the publish deadline — the dead letter then stays, and a sick broker cannot hang the
//! replay. At-least-once: a crash between the confirm and the ack leaves both
//! copies, which consumers de-duplicate by `message_id` / `event_id`; when nothing
//! crashes, each message is moved exactly once. By default ([`ReplayTo::Queue`]) the
//! copy goes to the queue named by the newest `x-death` entry, through the default
//! exchange: only that consumer sees it again. [`ReplayTo::Exchange`] publishes it to
//! the exchange and routing key it was first published with — every queue bound for it
//! gets it again, not only the one that rejected it.
//!
//! A replay that fails part-way (a target gone, the channel closed) has still moved the
//! messages before the failure: its error carries the report of what it did
//! ([`TopologyError::replay_report`]).
//!
//! # Example
//! ```no_run
//! use fitviz_events::{EventPublisher, topology::{self, dead_letters::{self, ReplayTo}}};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = fitviz_events::PublisherConfig::from_env()?;
//! let publisher = EventPublisher::connect(config.clone()).await?;
//! let connection = topology::connect(&config).await?;
//! let channel = connection.create_channel().await?;
//! for letter in dead_letters::list(&channel, "notifications.dlq", 100).await? {
//!     let death = &letter.deaths[0];
//!     println!("{:?} {} from {} ({} times)", letter.message_id, death.reason, death.queue, death.count);
//! }
//! let report = dead_letters::replay(&channel, &publisher, "notifications.dlq", ReplayTo::Queue, None).await?;
//! println!("{}", serde_json::to_string(&report)?);
//! # Ok(()) }
//! ```

use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions},
    types::{AMQPValue, FieldTable},
};
use serde::Serialize;

use super::{
    error::{TopologyError, TopologyErrorKind},
    queue::{check_name, short},
};
use crate::{error::ErrorKind, event::EncodedEvent, publisher::EventPublisher};

/// A dead-lettered message, as listed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The `message_id` property (the event id, for this crate's events).
    pub message_id: Option<String>,
    /// The `type` property (the event type).
    pub event_type: Option<String>,
    /// The routing key it has now.
    pub routing_key: String,
    /// Its `x-death` entries, newest first.
    pub deaths: Vec<Death>,
    /// The body, when it is valid UTF-8 (as this crate's JSON events are); `None`
    /// otherwise, and left out of the JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in standard base64 (RFC 4648, with padding) when it is not valid UTF-8,
    /// so a binary body is shown whole rather than with its bytes replaced; `None`
    /// otherwise, and left out of the JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

/// One `x-death` entry: where and why a message was dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Death {
    /// The queue it was dead-lettered from.
    pub queue: String,
    /// `rejected`, `expired`, `maxlen` or `delivery_limit`.
    pub reason: String,
    /// How often it was dead-lettered from that queue for that reason.
    pub count: i64,
    /// The exchange it had been published to.
    pub exchange: String,
    /// The routing keys it had been published with.
    pub routing_keys: Vec<String>,
}

/// Where [`replay`] sends a dead letter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplayTo {
    /// The queue it was dead-lettered from (newest `x-death` entry), through the default
    /// exchange: only that queue gets it again.
    #[default]
    Queue,
    /// The exchange and routing key it was first published with: every queue bound for
    /// it gets it again.
    Exchange,
}

pub use super::replay_report::{ReplayReport, Replayed};

/// Checks, before any I/O, that [`list`] reads `queue`: a valid name, and a dead-letter
/// queue `<name>.dlq` or an unrouted queue `<exchange>.unrouted` — the queues this crate
/// declares without a delivery limit (see the [module docs](self)).
///
/// # Errors
/// [`TopologyErrorKind::Config`] for an invalid name,
/// [`TopologyErrorKind::CountsAsDelivery`] for any other queue, saying why.
pub fn check_listable(queue: &str) -> Result<(), TopologyError> {
    check_name("queue", queue, "")?;
    let listable = [".dlq", crate::transport::unrouted_name("").as_str()]
        .iter()
        .any(|suffix| queue.len() > suffix.len() && queue.ends_with(suffix));
    if listable {
        return Ok(());
    }
    Err(TopologyError::new(
        TopologyErrorKind::CountsAsDelivery,
        format!(
            "queue `{queue}` is not a dead-letter queue (`<name>.dlq`) or an unrouted \
             queue (`<exchange>.unrouted`): listing gets each message and puts it back, \
             which counts as a delivery, and with an `x-delivery-limit` (what consumer \
             queues are declared with) a few listings dead-letter its messages, or drop \
             them when it has no dead-letter exchange; AMQP cannot read the queue's limit \
             to check, so nothing was read (list it anyway with --count-as-delivery / \
             `list_counting_deliveries`)"
        ),
    ))
}

/// Lists up to `limit` messages of the dead-letter queue `queue` without consuming them
/// (see the [module docs](self)); a queue that is not a dead-letter queue
/// ([`check_listable`]) is refused, because listing it counts as a delivery.
///
/// # Errors
/// [`TopologyErrorKind::CountsAsDelivery`] for a queue that is not a dead-letter queue
/// (nothing is read; [`list_counting_deliveries`] lists it),
/// [`TopologyErrorKind::NotFound`] when the queue does not exist (the channel is then
/// closed), [`TopologyErrorKind::Connection`] when the channel fails.
pub async fn list(
    channel: &Channel,
    queue: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, TopologyError> {
    check_listable(queue)?;
    list_counting_deliveries(channel, queue, limit).await
}

/// Lists up to `limit` messages of any queue, each listing counting as a delivery of
/// every message shown: on a queue with an `x-delivery-limit`, a message listed that
/// many times is dead-lettered (or dropped). Prefer [`list`].
///
/// # Errors
/// As [`list`], without [`TopologyErrorKind::CountsAsDelivery`].
pub async fn list_counting_deliveries(
    channel: &Channel,
    queue: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, TopologyError> {
    check_name("queue", queue, "")?;
    let mut held = Vec::new();
    let result = async {
        while held.len() < limit {
            match get(channel, queue).await? {
                Some(delivery) => held.push(delivery),
                None => break,
            }
        }
        Ok::<_, TopologyError>(())
    }
    .await;
    let letters = held.iter().map(describe).collect();
    for delivery in held {
        requeue(&delivery).await?;
    }
    result.map(|()| letters)
}

/// Moves up to `limit` (all, with `None`) dead letters of `queue` back, each one
/// published through `publisher` and confirmed at its target before it is acked on
/// `channel` (see the [module docs](self)).
///
/// `channel` reads the dead-letter queue (`basic.get`, unacked until its copy is
/// confirmed); `publisher` sends the copies, to the exchange the [`ReplayTo`] names —
/// not necessarily its own. Its configuration (deadline, retry, breaker, the
/// connection's name) applies; its unroutable policy does not: a copy no queue takes is
/// an error.
///
/// # Errors
/// [`TopologyErrorKind::Refused`] when the broker returns or nacks a copy (the target
/// queue no longer exists, …) or its headers do not fit the connection's frame size:
/// that dead letter stays in the queue and the replay stops;
/// [`TopologyErrorKind::Connection`] when the copy could not be published (no confirm
/// within the publish deadline, the circuit breaker open, the publisher closed — the
/// [`PublishError`](crate::PublishError) is the error's source); [`TopologyErrorKind::NotFound`] (the queue,
/// or the target exchange) and [`TopologyErrorKind::AccessRefused`] as the broker says.
/// An error after the replay began carries what it had done until then
/// ([`TopologyError::replay_report`]): the messages it moved are moved.
pub async fn replay(
    channel: &Channel,
    publisher: &EventPublisher,
    queue: &str,
    to: ReplayTo,
    limit: Option<usize>,
) -> Result<ReplayReport, TopologyError> {
    check_name("queue", queue, "")?;
    let mut report = ReplayReport::default();
    let mut skipped = Vec::new();
    // What the queue held when the replay started: copies landing at its tail (a target
    // that routes back into it) are never replayed again.
    let mut budget: Option<u32> = None;
    let mut moved = std::collections::HashSet::new();
    let result = async {
        while limit.is_none_or(|limit| report.replayed.len() < limit) {
            let Some((delivery, left)) = get_counted(channel, queue).await? else {
                break;
            };
            let budget = budget.get_or_insert(left.saturating_add(1));
            if *budget == 0 {
                skipped.push(delivery);
                break;
            }
            *budget -= 1;
            let letter = describe(&delivery);
            let Some(death) = letter.deaths.first() else {
                report.skipped.push(letter.message_id.clone());
                skipped.push(delivery); // held until the end, so it is not got again
                continue;
            };
            if to == ReplayTo::Queue && death.queue == queue {
                report.into_itself.push(letter.message_id.clone());
                skipped.push(delivery);
                continue;
            }
            if letter
                .message_id
                .as_ref()
                .is_some_and(|id| moved.contains(id))
            {
                report.came_back = true;
                skipped.push(delivery);
                break;
            }
            let (exchange, routing_key) = match to {
                ReplayTo::Queue => (String::new(), death.queue.clone()),
                ReplayTo::Exchange => (
                    death.exchange.clone(),
                    (death.routing_keys.first().cloned())
                        .unwrap_or_else(|| letter.routing_key.clone()),
                ),
            };
            if let Err(error) = publish(publisher, &exchange, &routing_key, &delivery).await {
                requeue(&delivery).await?;
                return Err(error);
            }
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| TopologyError::broker("acking the replayed dead letter", e))?;
            if let Some(id) = &letter.message_id {
                moved.insert(id.clone());
            }
            report.replayed.push(Replayed {
                message_id: letter.message_id,
                exchange,
                routing_key,
            });
        }
        Ok(())
    }
    .await;
    let mut result = result;
    for delivery in skipped {
        let requeued = requeue(&delivery).await;
        if result.is_ok() {
            result = requeued;
        }
    }
    match result {
        Ok(()) => Ok(report),
        Err(error) => Err(error.with_replay_report(report)),
    }
}

async fn get(channel: &Channel, queue: &str) -> Result<Option<Delivery>, TopologyError> {
    Ok(get_counted(channel, queue)
        .await?
        .map(|(delivery, _)| delivery))
}

/// The next message, unacked, and how many were left in the queue after it.
async fn get_counted(
    channel: &Channel,
    queue: &str,
) -> Result<Option<(Delivery, u32)>, TopologyError> {
    channel
        .basic_get(short(queue)?, BasicGetOptions { no_ack: false })
        .await
        .map(|message| message.map(|m| (m.delivery, m.message_count)))
        .map_err(|e| TopologyError::broker(&format!("getting from queue `{queue}`"), e))
}

async fn requeue(delivery: &Delivery) -> Result<(), TopologyError> {
    delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .map(drop)
        .map_err(|e| TopologyError::broker("giving a dead letter back", e))
}

/// Publishes a copy of `delivery` (body and properties unchanged) to `exchange` with
/// `routing_key` through `publisher`, and waits for its confirm.
async fn publish(
    publisher: &EventPublisher,
    exchange: &str,
    routing_key: &str,
    delivery: &Delivery,
) -> Result<(), TopologyError> {
    let what = || format!("replaying to exchange `{exchange}` with routing key `{routing_key}`");
    let copy = EncodedEvent::from_message(
        short(exchange)?,
        short(routing_key)?,
        delivery.properties.clone(),
        delivery.data.clone(),
    );
    let error = match publisher.publish_encoded(copy).await {
        Ok(_) => return Ok(()),
        Err(error) => error,
    };
    let (kind, outcome) = match error.kind() {
        ErrorKind::Unroutable => (
            TopologyErrorKind::Refused,
            "returned by the broker (no queue bound)",
        ),
        ErrorKind::Nacked => (TopologyErrorKind::Refused, "refused by the broker (nack)"),
        ErrorKind::TooLarge | ErrorKind::PreconditionFailed => {
            (TopologyErrorKind::Refused, "refused")
        }
        ErrorKind::NotFound => (TopologyErrorKind::NotFound, "the exchange does not exist"),
        ErrorKind::AccessRefused => (TopologyErrorKind::AccessRefused, "access refused"),
        ErrorKind::Config => (TopologyErrorKind::Config, "not sent"),
        _ => (TopologyErrorKind::Connection, "not confirmed"),
    };
    Err(TopologyError::new(
        kind,
        format!("{}: {outcome} ({error}): the dead letter stays", what()),
    )
    .with_source(error))
}

/// The listing of a delivery.
fn describe(delivery: &Delivery) -> DeadLetter {
    use base64::Engine as _;
    let properties = &delivery.properties;
    let (body, body_base64) = match std::str::from_utf8(&delivery.data) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(&delivery.data)),
        ),
    };
    DeadLetter {
        message_id: properties.message_id().as_ref().map(ToString::to_string),
        event_type: properties.kind().as_ref().map(ToString::to_string),
        routing_key: delivery.routing_key.to_string(),
        deaths: properties
            .headers()
            .as_ref()
            .map(deaths)
            .unwrap_or_default(),
        body,
        body_base64,
    }
}

/// The `x-death` entries of `headers`.
fn deaths(headers: &FieldTable) -> Vec<Death> {
    let Some(AMQPValue::FieldArray(entries)) = headers.inner().get("x-death") else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(table) => Some(death(table)),
            _ => None,
        })
        .collect()
}

fn death(table: &FieldTable) -> Death {
    let fields = table.inner();
    let text = |key: &str| fields.get(key).and_then(as_text).unwrap_or_default();
    let routing_keys = match fields.get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().iter().filter_map(as_text).collect(),
        _ => Vec::new(),
    };
    Death {
        queue: text("queue"),
        reason: text("reason"),
        count: fields.get("count").and_then(as_int).unwrap_or(0),
        exchange: text("exchange"),
        routing_keys,
    }
}

fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn as_int(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        AMQPValue::ShortShortInt(n) => Some((*n).into()),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}
