//! [`Receipt`]: the proof that the broker confirmed an event, and where it went ([`Routing`]).

use std::time::Duration;

use uuid::Uuid;

/// Proof that the broker confirmed an event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The id of the confirmed event.
    pub event_id: Uuid,
    /// Time from handing the event to the transport until the broker's confirm.
    pub elapsed: Duration,
    /// Where the event went: a consumer's queue, or kept (or dropped) because no queue
    /// was bound for it (see [`UnroutablePolicy`](crate::config::UnroutablePolicy)).
    pub routing: Routing,
}

impl Receipt {
    /// A receipt for `event_id` confirmed and routed to a queue after `elapsed`.
    pub fn new(event_id: Uuid, elapsed: Duration) -> Self {
        Self {
            event_id,
            elapsed,
            routing: Routing::Routed,
        }
    }

    /// The same receipt, saying the event went `routing`.
    #[must_use]
    pub fn with_routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }
}

/// Where a confirmed event went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Routing {
    /// Routed to at least one queue bound for its routing key (or, when a broker-side
    /// alternate exchange is set on the exchange by policy, possibly kept by it: the
    /// broker does not say).
    Routed,
    /// No queue was bound for it: kept in `<exchange>.unrouted`
    /// ([`UnroutablePolicy::AlternateExchange`](crate::config::UnroutablePolicy::AlternateExchange)).
    Kept,
    /// No queue was bound for it and it was not stored
    /// ([`UnroutablePolicy::Ignore`](crate::config::UnroutablePolicy::Ignore)).
    Dropped,
    /// Stored in the archive stream `<exchange>.archive`, replayable from it — and in
    /// every consumer queue bound for it, if there is one: the archive takes every event
    /// of the types it is bound for ([`ArchivePatterns`](crate::config::ArchivePatterns)),
    /// so the broker never returns such an event and cannot say whether a consumer's
    /// queue took it too. A consumer that binds its queue later replays it from the
    /// archive (see [*Replaying events*](crate::guide::replay)).
    Archived,
}
