//! [`ReplayReport`]: what a dead-letter replay moved, skipped and left — also carried by
//! the error of a replay that stopped part way.

use serde::Serialize;

/// What [`replay`](super::dead_letters::replay) did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReplayReport {
    /// The messages moved (confirmed at their target, then acked in the dead-letter
    /// queue).
    pub replayed: Vec<Replayed>,
    /// Messages left in the dead-letter queue because they have no `x-death` header
    /// (they were not dead-lettered), by `message_id`.
    pub skipped: Vec<Option<String>>,
    /// Messages left in the queue because their target is the queue being replayed
    /// (with [`ReplayTo::Queue`](super::dead_letters::ReplayTo::Queue), their newest `x-death` names it: a queue replayed
    /// after an earlier replay into it): a copy would land at its tail and be replayed
    /// again, forever. Replay the queue they were dead-lettered into instead.
    pub into_itself: Vec<Option<String>>,
    /// Whether the replay stopped because a message it had moved came back into the
    /// queue (replayed to an exchange the queue itself is bound to). A replay also never
    /// handles more messages than the queue held when it started.
    pub came_back: bool,
}

/// One replayed message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Replayed {
    /// Its `message_id`, unchanged.
    pub message_id: Option<String>,
    /// The exchange it was published to (`""`: the default exchange).
    pub exchange: String,
    /// The routing key (for the default exchange: the queue).
    pub routing_key: String,
}
