//! [`Spill`]: where a publisher's detached events go when they cannot be published now
//! — the outbox (`Outbox::spill_detached`), so that an event `spawn` accepted survives a
//! full queue, a broker outage and a deploy.

use std::{future::Future, pin::Pin};

use crate::{error::PublishError, event::Event};

/// A future of the spill.
pub(crate) type SpillFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Persists detached events for later publishing.
pub(crate) trait Spill: Send + Sync {
    /// Persists `events` (each through the publisher's front and encoder), all or none;
    /// returns how many.
    fn spill(&self, events: Vec<Event>) -> SpillFuture<'_, Result<usize, String>>;

    /// Persists one event `spawn` could not queue: `Ok` once stored; the event's own
    /// error (validation, …) or [`ErrorKind::QueueFull`](crate::ErrorKind::QueueFull)
    /// naming why it could not be stored.
    fn spill_one(&self, event: Event) -> SpillFuture<'_, Result<(), PublishError>>;
}
