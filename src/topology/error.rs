//! The errors of declaring a topology and of working on dead letters.

use std::{borrow::Cow, error::Error as StdError, fmt};

use super::replay_report::ReplayReport;
use crate::error::PublishError;

type BoxError = Box<dyn StdError + Send + Sync>;

/// What went wrong, for callers that act on it (a CLI's exit code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TopologyErrorKind {
    /// `406 PRECONDITION_FAILED`: the exchange or queue exists with other arguments or
    /// type. x-arguments are frozen when a queue is declared: delete and re-declare it
    /// (its messages are lost), or move the setting to a policy.
    Conflict,
    /// `404 NOT_FOUND`: an exchange or queue that was only checked, or replayed to, does
    /// not exist.
    NotFound,
    /// `403 ACCESS_REFUSED`: the user may not configure or use it.
    AccessRefused,
    /// The broker could not be reached, or the channel or connection closed.
    Connection,
    /// The broker refused a republished message (nack, or returned: no queue bound).
    Refused,
    /// The configuration or the arguments are invalid.
    Config,
    /// Refused before touching the queue: listing it would count as a delivery of each
    /// message (it is not a dead-letter queue, and may have an `x-delivery-limit`); see
    /// [`dead_letters::list`](super::dead_letters::list).
    CountsAsDelivery,
}

/// Declaring a topology, or listing or replaying dead letters, failed.
///
/// `Display` names what was being done and the broker's answer, e.g. ``queue
/// `orders` exists with other arguments (406 PRECONDITION_FAILED - inequivalent arg
/// 'x-delivery-limit' …): x-arguments are frozen at declare time; …``.
#[derive(Debug)]
pub struct TopologyError {
    kind: TopologyErrorKind,
    message: Cow<'static, str>,
    source: Option<BoxError>,
    replay: Option<Box<ReplayReport>>,
}

impl TopologyError {
    pub(crate) fn new(kind: TopologyErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            replay: None,
        }
    }

    /// The same error, caused by `source`.
    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The error of a replay that had done `report` before it failed: the message says
    /// how many it had moved.
    pub(crate) fn with_replay_report(mut self, report: ReplayReport) -> Self {
        self.message = format!(
            "{}; {} dead letter(s) had been replayed before this error (they are moved)",
            self.message,
            report.replayed.len()
        )
        .into();
        self.replay = Some(Box::new(report));
        self
    }

    /// For an error of [`replay`](super::dead_letters::replay): what it had done before
    /// it failed — the messages in [`ReplayReport::replayed`] were moved (confirmed at
    /// their target and removed from the dead-letter queue) and must not be replayed
    /// again; the failed one and the rest are still in the queue. `None` for other errors
    /// and for a replay that failed before it began (name, confirm mode).
    pub fn replay_report(&self) -> Option<&ReplayReport> {
        self.replay.as_deref()
    }

    /// The broker answered `what` (e.g. ``declaring queue `q` ``) with `error`: classified
    /// by its reply code, 406 explained.
    pub(crate) fn broker(what: &str, error: lapin::Error) -> Self {
        let (kind, message) = match reply(&error) {
            Some((406, text)) => (
                TopologyErrorKind::Conflict,
                format!(
                    "{what}: it exists with other arguments or another type (406 {text}); \
                     x-arguments are frozen when it is declared: delete and re-declare it \
                     (its messages are lost) or change the setting through a policy"
                ),
            ),
            Some((404, text)) => (
                TopologyErrorKind::NotFound,
                format!("{what}: not found (404 {text})"),
            ),
            Some((403, text)) => (
                TopologyErrorKind::AccessRefused,
                format!("{what}: access refused (403 {text})"),
            ),
            Some((code, text)) => (
                TopologyErrorKind::Connection,
                format!("{what}: the broker closed the channel ({code} {text})"),
            ),
            None => (TopologyErrorKind::Connection, format!("{what}: {error}")),
        };
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(error)),
            replay: None,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> TopologyErrorKind {
        self.kind
    }

    /// Whether the broker answered `406 PRECONDITION_FAILED` (arguments differ).
    pub fn is_conflict(&self) -> bool {
        self.kind == TopologyErrorKind::Conflict
    }
}

/// The reply code and text of a channel or connection closed by the broker.
fn reply(error: &lapin::Error) -> Option<(u16, String)> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some((e.get_id(), e.get_message().to_string())),
        _ => None,
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for TopologyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<PublishError> for TopologyError {
    fn from(error: PublishError) -> Self {
        let kind = match error.kind() {
            crate::ErrorKind::Config => TopologyErrorKind::Config,
            _ => TopologyErrorKind::Connection,
        };
        Self::new(kind, error.to_string())
    }
}
