//! The archive stream `<exchange>.archive`: every event (or those of the configured
//! patterns), kept on the broker by age and size, replayable.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;

use super::{TopologyError, TopologyErrorKind, queue::string};
use crate::config::ArchivePatterns;

/// The archive stream of an events exchange: a durable RabbitMQ stream
/// `<exchange>.archive` bound to it with [`patterns`](Self::patterns) (every event by
/// default), that keeps events by age and size — an append-only log that consumers
/// read from any point without removing anything (see [*Replaying
/// events*](crate::guide::replay)).
///
/// Retention drops whole segments, oldest first, once the stream is over
/// [`max_age`](Self::max_age) or [`max_bytes`](Self::max_bytes): a segment
/// ([`segment_bytes`](Self::segment_bytes)) is the granularity, so keep it well under
/// `max_bytes` (RabbitMQ's default segment, 500 MB, would keep a small stream whole).
/// The arguments are frozen when the stream is declared; declaring it again with others
/// fails with [`TopologyErrorKind::Conflict`].
///
/// ```
/// use std::time::Duration;
/// use fitviz_events::{config::ArchivePatterns, topology::{ArchiveStream, Topology}};
///
/// let topology = Topology::new("fitviz.events").archive(
///     ArchiveStream::default()
///         .max_age(Duration::from_secs(30 * 24 * 3600))
///         .patterns(ArchivePatterns::new(["payment.#"]).unwrap()),
/// );
/// assert_eq!(topology.archive_stream().unwrap().bindings().patterns(), ["payment.#"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[must_use]
pub struct ArchiveStream {
    patterns: ArchivePatterns,
    #[serde(serialize_with = "as_secs")]
    max_age: Duration,
    max_bytes: u64,
    segment_bytes: u64,
}

impl Default for ArchiveStream {
    /// Every event, kept 7 days and at most 10 GB, in segments of 100 MB.
    fn default() -> Self {
        Self {
            patterns: ArchivePatterns::all(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 10_000_000_000,
            segment_bytes: 100_000_000,
        }
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl ArchiveStream {
    /// The event types it keeps (every event by default). The publisher's
    /// [`archive`](crate::PublisherConfig::archive) setting must say the same, for its
    /// receipts to say [`Archived`](crate::Routing::Archived).
    pub fn patterns(mut self, patterns: ArchivePatterns) -> Self {
        self.patterns = patterns;
        self
    }

    /// `x-max-age`: events older than this are dropped (whole segments), in whole seconds.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// `x-max-length-bytes`: the stream's size above which its oldest segments are dropped.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// `x-stream-max-segment-size-bytes`: the size of one segment, the unit retention drops.
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// The patterns it is bound with.
    pub fn bindings(&self) -> &ArchivePatterns {
        &self.patterns
    }

    /// Checks the settings: at least one pattern, an age of at least a second, sizes
    /// above zero and a segment no larger than the stream.
    pub(super) fn check(&self) -> Result<(), TopologyError> {
        let invalid = |why: String| Err(TopologyError::new(TopologyErrorKind::Config, why));
        if !self.patterns.is_on() {
            return invalid(
                "the archive stream needs at least one pattern (`#`: every event)".into(),
            );
        }
        if self.max_age.as_secs() == 0 {
            return invalid(format!(
                "the archive's max age must be at least one second, got {:?}",
                self.max_age
            ));
        }
        if self.max_bytes == 0 || self.segment_bytes == 0 || self.segment_bytes > self.max_bytes {
            return invalid(format!(
                "the archive's segment size ({} bytes) must be above zero and at most its \
                 max size ({} bytes): retention drops whole segments",
                self.segment_bytes, self.max_bytes
            ));
        }
        Ok(())
    }

    /// The stream's arguments.
    pub(crate) fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("stream"));
        args.insert(
            "x-max-age".into(),
            string(&format!("{}s", self.max_age.as_secs())),
        );
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(self.max_bytes).unwrap_or(i64::MAX)),
        );
        args.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(self.segment_bytes).unwrap_or(i64::MAX)),
        );
        args
    }
}
