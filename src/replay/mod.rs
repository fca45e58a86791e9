//! Reading the archive stream `<exchange>.archive` back: from the first event, an
//! offset, a time or the newest, until the head at the start or a time, filtered by
//! event type, organization and time (see [*Replaying events*](crate::guide::replay)).
//!
//! A [`Replay`] says what to read; [`Replay::open`] connects (a connection of its own,
//! named `<connection name>.replay`) and gives a [`ReplayStream`], whose
//! [`next`](ReplayStream::next) yields each matching [`ArchivedEvent`] with its offset,
//! in the order of the log.
//!
//! How it reads, and why (RabbitMQ 3.10, AMQP 0-9-1; PITFALLS.md):
//! - a consumer with `x-stream-offset`, a bounded prefetch and manual acks (a stream
//!   refuses auto-ack, and `basic.get` on a stream closes the whole connection): memory
//!   stays flat whatever the stream's size;
//! - **the end**: a stream does not say how long it is (a passive declare reports 0
//!   messages), so the head is found first, by a consumer attached at `last`: the
//!   newest chunk is delivered, its highest offset is the head, and events published
//!   after that are not read. But when the newest chunk is the broker's own (the one
//!   that opens each segment) nothing is delivered (seen here: 1 run in 3 of the
//!   retention test, whose 50 kB segments roll over often); after 2 s without a
//!   delivery — an idle archive, or an empty one — the head is unknown
//!   ([`ReplayProgress::head`] `None`) and the replay ends once nothing came for 1 s;
//! - **offsets** only grow, in the order the broker stored the events: contiguous
//!   within a segment, but each new segment takes one offset for the broker's own
//!   bookkeeping (measured: 2,000 events in 50 kB segments ended at offset 2,015, a gap
//!   of one at each of the 20 segment starts). Resume from `last offset + 1`, never by
//!   counting;
//! - **seeking** delivers whole chunks: the events before the asked offset in the
//!   first chunk are skipped here, never yielded;
//! - **times**: the broker's timestamp offsets are its arrival times, to the second,
//!   on chunk boundaries, so a time is used only to seek (a margin earlier,
//!   [`Replay::seek_margin`]); the range is then exact on the envelope's own
//!   `timestamp` (milliseconds): from `from` included to `until` excluded;
//! - **a lost connection** (or channel, or a read that stalls: no delivery for 10 s
//!   before the head) is reopened, up to 5 times in a row, and the read resumes at the
//!   offset after the last one processed: nothing is yielded twice and nothing is
//!   skipped;
//! - copies republished by an earlier replay (the `replayed_from` header) are skipped
//!   unless [`Replay::include_replayed`]; entries that are not this crate's JSON
//!   envelopes are skipped with a warning naming their offset and counted
//!   ([`ReplayProgress::undecodable`]).
//!
//! ```no_run
//! use fitviz_events::{PublisherConfig, replay::{Replay, ReplayFrom}};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = PublisherConfig::from_env()?;
//! let mut events = Replay::new(&config.exchange)
//!     .from(ReplayFrom::First)
//!     .event_type("payment.*")
//!     .organization("org-42")
//!     .open(&config)
//!     .await?;
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("{} {} {}", event.offset, event.event_type, event.event_id);
//! }
//! println!("{:?}", events.progress());
//! # Ok(()) }
//! ```

mod event;
mod offsets;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::{
    Channel, Connection, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use serde::Serialize;

#[cfg(feature = "outbox-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox-postgres")))]
pub use self::offsets::PostgresOffsets;
pub use self::{
    event::ArchivedEvent,
    offsets::{MemoryOffsets, OffsetStore, OffsetStoreError},
};
use crate::{
    config::{PublisherConfig, topic_matches},
    schema::SchemaRegistry,
    topology::{TopologyError, TopologyErrorKind, archive_name},
};

/// How long to wait for the newest chunk when looking for the head; none by then: the
/// archive is empty.
const HEAD_WAIT: Duration = Duration::from_secs(2);
/// The newest chunk is taken as whole once no delivery came for this long.
const CHUNK_GAP: Duration = Duration::from_millis(200);
/// Without a known head, the replay ends once nothing came for this long.
const IDLE_END: Duration = Duration::from_secs(1);
/// No delivery for this long before the head: the read is stuck, reattached.
const STALL: Duration = Duration::from_secs(10);
/// Reconnections in a row before a replay gives up.
const MAX_RECONNECTS: u32 = 5;

/// Where a replay starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplayFrom {
    /// The oldest event the archive still holds.
    First,
    /// The event at this offset (or the oldest still held, when retention removed it).
    Offset(u64),
    /// The first event whose envelope `timestamp` is at or after this time.
    Time(DateTime<Utc>),
    /// The newest event (the head when the replay starts; nothing when the head cannot
    /// be found, see [`ReplayProgress::head`]).
    Last,
}

impl ReplayFrom {
    /// Right after `stored`, the offset a consumer stored last ([`OffsetStore`]):
    /// [`Offset`](Self::Offset)`(stored + 1)`, or [`First`](Self::First) when it has
    /// none yet.
    pub fn after(stored: Option<u64>) -> Self {
        match stored {
            Some(offset) => Self::Offset(offset.saturating_add(1)),
            None => Self::First,
        }
    }
}

/// Where a replay ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplayUntil {
    /// The head when the replay started: the newest event then (the default).
    #[default]
    Head,
    /// Events whose envelope `timestamp` is before this time (and not after the head).
    Time(DateTime<Utc>),
}

/// Where [`ArchivedEvent::republish`] sends a copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplayTarget {
    /// One queue, through the default exchange: only that consumer gets the copy.
    Queue(String),
    /// The exchange and routing key it was first published with: every queue bound for
    /// it gets the copy — and the archive, where it is marked (`replayed_from`) and
    /// skipped by later replays unless [`Replay::include_replayed`].
    Exchange,
}

/// What a replay reads: see the [module docs](self).
#[derive(Clone)]
#[must_use]
pub struct Replay {
    stream: String,
    from: ReplayFrom,
    until: ReplayUntil,
    event_types: Vec<String>,
    organizations: Vec<String>,
    include_replayed: bool,
    prefetch: u16,
    seek_margin: Duration,
    registry: SchemaRegistry,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("stream", &self.stream)
            .field("from", &self.from)
            .field("until", &self.until)
            .field("event_types", &self.event_types)
            .field("organizations", &self.organizations)
            .field("include_replayed", &self.include_replayed)
            .field("prefetch", &self.prefetch)
            .field("seek_margin", &self.seek_margin)
            .finish_non_exhaustive()
    }
}

/// How far a replay got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReplayProgress {
    /// Entries read from the stream (at or after the start offset).
    pub read: u64,
    /// Events yielded: those that passed the filters.
    pub matched: u64,
    /// Entries that are not this crate's JSON envelopes, skipped.
    pub undecodable: u64,
    /// Copies republished by an earlier replay, skipped.
    pub skipped_replayed: u64,
    /// The offset of the last entry read.
    pub last_offset: Option<u64>,
    /// The head when the replay started; `None` when it could not be found (an empty or
    /// idle archive whose newest chunk holds no event): the replay then ends once
    /// nothing came for a second.
    pub head: Option<u64>,
    /// Connections reopened after a loss.
    pub reconnects: u32,
}

impl Replay {
    /// A replay of `<exchange>.archive`, from the first event to the head, every event.
    pub fn new(exchange: &str) -> Self {
        Self::of_stream(archive_name(exchange))
    }

    /// A replay of the stream `name`.
    pub fn of_stream(name: impl Into<String>) -> Self {
        Self {
            stream: name.into(),
            from: ReplayFrom::First,
            until: ReplayUntil::Head,
            event_types: Vec::new(),
            organizations: Vec::new(),
            include_replayed: false,
            prefetch: 500,
            seek_margin: Duration::from_secs(60),
            registry: SchemaRegistry::builtin(),
        }
    }

    /// The schemas each event's `data` is validated against
    /// ([`ArchivedEvent::validation`]); the built-in registry by default.
    pub fn registry(mut self, registry: SchemaRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// Where to start ([`ReplayFrom::First`] by default).
    pub fn from(mut self, from: ReplayFrom) -> Self {
        self.from = from;
        self
    }

    /// Where to end ([`ReplayUntil::Head`] by default).
    pub fn until(mut self, until: ReplayUntil) -> Self {
        self.until = until;
        self
    }

    /// Only events whose type matches this topic pattern (`*` one word, `#` any
    /// number); several patterns: any of them. None: every type.
    pub fn event_type(mut self, pattern: impl Into<String>) -> Self {
        self.event_types.push(pattern.into());
        self
    }

    /// Only events of this organization; several: any of them. None: every
    /// organization (and events without one).
    pub fn organization(mut self, organization_id: impl Into<String>) -> Self {
        self.organizations.push(organization_id.into());
        self
    }

    /// Also yields the copies an earlier replay republished to the exchange (marked
    /// with the `replayed_from` header), which are skipped by default: the original
    /// is in the archive already.
    pub fn include_replayed(mut self, include: bool) -> Self {
        self.include_replayed = include;
        self
    }

    /// How many unacknowledged deliveries the broker may send ahead (500 by default):
    /// bounds the memory a replay holds.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// How much earlier than a [`ReplayFrom::Time`] the read starts, and how far past a
    /// [`ReplayUntil::Time`] it goes on (60 s by default): the broker orders events by
    /// its arrival time, the range is on the publishers' clocks.
    pub fn seek_margin(mut self, margin: Duration) -> Self {
        self.seek_margin = margin;
        self
    }

    /// Checks the stream's name and the patterns, before any I/O.
    ///
    /// # Errors
    /// [`TopologyErrorKind::Config`] naming what is wrong.
    pub fn check(&self) -> Result<(), TopologyError> {
        crate::topology::check_name("stream", &self.stream, "")?;
        crate::config::ArchivePatterns::new(self.event_types.iter().cloned()).map_err(|why| {
            TopologyError::new(
                TopologyErrorKind::Config,
                format!("event type pattern: {why}"),
            )
        })?;
        Ok(())
    }

    /// Connects to `config`'s broker, finds the head and starts reading.
    ///
    /// # Errors
    /// [`TopologyErrorKind::Config`] (a name or pattern), [`TopologyErrorKind::NotFound`]
    /// when the stream does not exist, [`TopologyErrorKind::Connection`].
    pub async fn open(self, config: &PublisherConfig) -> Result<ReplayStream, TopologyError> {
        self.check()?;
        let connection = connect(config).await?;
        let head = find_head(&connection, &self.stream, self.prefetch).await?;
        let (start, min_offset) = match self.from {
            ReplayFrom::First => (AMQPValue::LongString("first".into()), 0),
            ReplayFrom::Offset(offset) => (offset_value(offset), offset),
            ReplayFrom::Time(time) => {
                let seek =
                    time.timestamp() - i64::try_from(self.seek_margin.as_secs()).unwrap_or(0);
                (AMQPValue::Timestamp(u64::try_from(seek).unwrap_or(0)), 0)
            }
            ReplayFrom::Last => (AMQPValue::LongString("last".into()), head.unwrap_or(0)),
        };
        let mut stream = ReplayStream {
            config: config.clone(),
            replay: self,
            connection: Some(connection),
            reading: None,
            next_offset: min_offset,
            unacked: 0,
            done: head.is_some_and(|head| min_offset > head),
            progress: ReplayProgress {
                head,
                ..ReplayProgress::default()
            },
        };
        if !stream.done {
            stream.start(start).await?;
        }
        Ok(stream)
    }
}

/// The events of a [`Replay`], read one at a time.
pub struct ReplayStream {
    config: PublisherConfig,
    replay: Replay,
    connection: Option<Connection>,
    reading: Option<(Channel, Consumer)>,
    /// The lowest offset not processed yet: where a resumed read starts, and below
    /// which deliveries (the start of a chunk) are skipped.
    next_offset: u64,
    /// Deliveries not acknowledged yet on the current channel.
    unacked: u32,
    done: bool,
    progress: ReplayProgress,
}

impl std::fmt::Debug for ReplayStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayStream")
            .field("stream", &self.replay.stream)
            .field("progress", &self.progress)
            .finish()
    }
}

impl ReplayStream {
    /// How far it got.
    pub fn progress(&self) -> ReplayProgress {
        self.progress
    }

    /// The next matching event, `None` once the end is reached.
    ///
    /// # Errors
    /// [`TopologyErrorKind::Connection`] when the connection was lost and could not be
    /// reopened 5 times in a row; the stream ends after an error.
    pub async fn next(&mut self) -> Option<Result<ArchivedEvent, TopologyError>> {
        let mut failures = 0;
        loop {
            if self.done {
                self.stop().await;
                return None;
            }
            let delivery = match (self.reading.as_mut(), self.progress.head) {
                (Some((_, consumer)), Some(_)) => {
                    match tokio::time::timeout(STALL, consumer.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            tracing::warn!(
                                stream = %self.replay.stream,
                                offset = self.next_offset,
                                head = ?self.progress.head,
                                "no delivery for {STALL:?} before the head: reading again"
                            );
                            None
                        }
                    }
                }
                // No head known: the end is when nothing more comes for a while.
                (Some((_, consumer)), None) => {
                    match tokio::time::timeout(IDLE_END, consumer.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            self.done = true;
                            continue;
                        }
                    }
                }
                (None, _) => None,
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                lost => {
                    let why = match lost {
                        Some(Err(error)) => error.to_string(),
                        _ => "the consumer was cancelled or stalled".to_owned(),
                    };
                    failures += 1;
                    if let Err(error) = self.resume(failures, &why).await {
                        self.done = true;
                        self.stop().await;
                        return Some(Err(error));
                    }
                    continue;
                }
            };
            self.acknowledge(&delivery).await;
            let Some(offset) = stream_offset(&delivery) else {
                tracing::warn!(stream = %self.replay.stream, "a delivery without x-stream-offset: skipped");
                continue;
            };
            if offset < self.next_offset {
                continue; // the start of a chunk, before the asked offset
            }
            failures = 0;
            self.next_offset = offset + 1;
            self.progress.read += 1;
            self.progress.last_offset = Some(offset);
            if self.progress.head.is_some_and(|head| offset >= head) {
                self.done = true;
            }
            if let Some(event) = self.matching(offset, &delivery) {
                self.progress.matched += 1;
                return Some(Ok(event));
            }
        }
    }

    /// Acknowledges deliveries in groups (one `basic.ack` with `multiple` for half the
    /// prefetch): on a stream an ack only grants credit, and one per delivery cost a
    /// third of the read rate.
    async fn acknowledge(&mut self, delivery: &Delivery) {
        self.unacked += 1;
        if self.unacked < u32::from(self.replay.prefetch / 2).max(1) {
            return;
        }
        self.unacked = 0;
        let _ = delivery.acker.ack(BasicAckOptions { multiple: true }).await;
    }

    /// The event at `offset` if it passes the filters.
    fn matching(&mut self, offset: u64, delivery: &Delivery) -> Option<ArchivedEvent> {
        let replay = &self.replay;
        let mut event = match ArchivedEvent::decode(offset, delivery) {
            Ok(event) => event,
            Err(why) => {
                tracing::warn!(stream = %replay.stream, offset, %why, "an archive entry that is not an event envelope: skipped");
                self.progress.undecodable += 1;
                return None;
            }
        };
        if event.replayed && !replay.include_replayed {
            self.progress.skipped_replayed += 1;
            return None;
        }
        if let ReplayFrom::Time(from) = replay.from
            && event.timestamp < from
        {
            return None;
        }
        if let ReplayUntil::Time(until) = replay.until
            && event.timestamp >= until
        {
            let margin = chrono::Duration::from_std(replay.seek_margin).unwrap_or_default();
            if event.timestamp > until + margin {
                self.done = true;
            }
            return None;
        }
        let type_ok = replay.event_types.is_empty()
            || (replay.event_types.iter()).any(|p| topic_matches(p, &event.event_type));
        let org_ok = replay.organizations.is_empty()
            || (event.organization_id.as_ref())
                .is_some_and(|org| replay.organizations.contains(org));
        if !(type_ok && org_ok) {
            return None;
        }
        event.validation = event.validate(&replay.registry);
        Some(event)
    }

    /// Starts consuming at `start`.
    async fn start(&mut self, start: AMQPValue) -> Result<(), TopologyError> {
        let Some(connection) = self.connection.as_ref() else {
            return Err(TopologyError::new(
                TopologyErrorKind::Connection,
                "the replay's connection is closed",
            ));
        };
        let reading = consume(connection, &self.replay.stream, self.replay.prefetch, start).await?;
        self.reading = Some(reading);
        self.unacked = 0;
        Ok(())
    }

    /// Reopens what was lost (the channel, or the connection) and resumes at the offset
    /// after the last one processed.
    async fn resume(&mut self, failures: u32, why: &str) -> Result<(), TopologyError> {
        if failures > MAX_RECONNECTS {
            return Err(TopologyError::new(
                TopologyErrorKind::Connection,
                format!(
                    "reading `{}` failed {MAX_RECONNECTS} times in a row, last: {why}; \
                     resume from offset {}",
                    self.replay.stream, self.next_offset
                ),
            ));
        }
        tracing::info!(stream = %self.replay.stream, offset = self.next_offset, %why, "the replay's read was interrupted: resuming");
        tokio::time::sleep(Duration::from_millis(100) * failures).await;
        self.reading = None;
        let alive = self
            .connection
            .as_ref()
            .is_some_and(|c| c.status().connected());
        if !alive {
            self.connection = None;
            match connect(&self.config).await {
                Ok(connection) => self.connection = Some(connection),
                Err(error) => {
                    tracing::debug!(%error, "reconnecting the replay failed");
                    return Ok(()); // the next round tries again
                }
            }
        }
        self.progress.reconnects += 1;
        match self.start(offset_value(self.next_offset)).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == TopologyErrorKind::NotFound => Err(error),
            Err(error) => {
                tracing::debug!(%error, "resuming the replay failed");
                Ok(())
            }
        }
    }

    /// Stops reading and closes the connection.
    pub async fn close(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        if let Some((channel, _)) = self.reading.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                channel.close(200, "replay done".into()),
            )
            .await;
        }
        if let Some(connection) = self.connection.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                connection.close(200, "replay done".into()),
            )
            .await;
        }
    }
}

impl Drop for ReplayStream {
    /// A stream dropped before its end (or without [`close`](ReplayStream::close))
    /// closes its connection in the background.
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    connection.close(200, "replay dropped".into()),
                )
                .await;
            });
        }
    }
}

/// A connection of the replay's own, `<connection name>.replay`.
async fn connect(config: &PublisherConfig) -> Result<Connection, TopologyError> {
    let name = format!(
        "{}.replay",
        config.connection_name.as_deref().unwrap_or(&config.source)
    );
    Ok(crate::transport::open_connection(config, &name).await?)
}

/// A consumer of `stream` from `start` on a channel of its own.
async fn consume(
    connection: &Connection,
    stream: &str,
    prefetch: u16,
    start: AMQPValue,
) -> Result<(Channel, Consumer), TopologyError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| TopologyError::broker("opening a channel", e))?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| TopologyError::broker("setting the prefetch", e))?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), start);
    let consumer = channel
        .basic_consume(
            stream.into(),
            "fitviz-events-replay".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .map_err(|e| TopologyError::broker(&format!("reading the stream `{stream}`"), e))?;
    Ok((channel, consumer))
}

/// The highest offset of the newest chunk of `stream`, or `None` when it is empty (no
/// delivery within [`HEAD_WAIT`]). A consumer the broker cancels or that fails before
/// the chunk is whole (retention removing segments as the reader attaches) is tried
/// again, up to 3 times.
async fn find_head(
    connection: &Connection,
    stream: &str,
    prefetch: u16,
) -> Result<Option<u64>, TopologyError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (channel, mut consumer) = consume(
            connection,
            stream,
            prefetch,
            AMQPValue::LongString("last".into()),
        )
        .await?;
        let mut head = None;
        let mut wait = HEAD_WAIT;
        let whole = loop {
            match tokio::time::timeout(wait, consumer.next()).await {
                // No delivery for this long: the chunk is whole (or the stream empty).
                Err(_) => break true,
                Ok(Some(Ok(delivery))) => {
                    head = head.max(stream_offset(&delivery));
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                    wait = CHUNK_GAP;
                }
                Ok(Some(Err(error))) => {
                    tracing::debug!(%error, stream, "looking for the head failed");
                    break false;
                }
                Ok(None) => break false,
            }
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            channel.close(200, "head found".into()),
        )
        .await;
        if whole {
            return Ok(head);
        }
        if attempt == 3 {
            return Err(TopologyError::new(
                TopologyErrorKind::Connection,
                format!("could not read the newest events of `{stream}` (3 attempts)"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn offset_value(offset: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX))
}

/// The `x-stream-offset` header of a delivery from a stream.
fn stream_offset(delivery: &Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}
