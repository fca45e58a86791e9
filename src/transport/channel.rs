//! One confirm-mode channel: it owns the lapin channel, the tracker of its confirms
//! and the permits for the publishes in flight on it, and publishes one message at a
//! time with [`ConfirmChannel::publish`], resolving with that message's own outcome.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use uuid::Uuid;

use super::{
    confirm::{ConfirmTracker, Outcome, PublishFuture, Tracked},
    liveness::{self, Liveness},
};
use crate::{
    error::{ErrorKind, PublishError},
    telemetry::SentGuard,
};

/// How long closing a channel may take (a silent broker never answers close-ok).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Above this many publishes in flight on a channel, a publish that is ready to be
/// written first yields once, so that the other ready publishes are written with it.
/// Below it, publishes are written at once: a lone publish (or the start of a burst)
/// pays no scheduling delay, and the broker has work while the rest of a burst gathers.
const GATHER_ABOVE_IN_FLIGHT: usize = 32;

/// How long a channel must have been open before a nack replaces it.
const RETIRE_AFTER: Duration = Duration::from_secs(1);

/// One message, encoded and addressed.
pub(crate) struct Message {
    pub(crate) event_id: Uuid,
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
}

/// What a channel knows of the connection it is opened on.
pub(crate) struct OpenOn {
    /// The connection's generation.
    pub(crate) generation: u64,
    /// Whether the broker blocks that connection.
    pub(crate) blocked: Arc<AtomicBool>,
    /// The `host:port` of that connection's node.
    pub(crate) node: Arc<str>,
    /// The connection's liveness checks.
    pub(crate) liveness: Arc<Liveness>,
}

/// An open channel in confirm mode; see the [module docs](self).
pub(crate) struct ConfirmChannel {
    inner: Arc<Inner>,
}

struct Inner {
    channel: lapin::Channel,
    /// The generation of the connection the channel is on.
    generation: u64,
    /// Whether the broker blocks that connection.
    blocked: Arc<AtomicBool>,
    /// The `host:port` of that connection's node.
    node: Arc<str>,
    tracker: Arc<ConfirmTracker>,
    permits: Arc<Semaphore>,
    /// The number of permits `permits` started with.
    max_in_flight: usize,
    /// The connection's negotiated maximum frame size, in bytes.
    frame_max: usize,
    /// Set when the broker nacked a publish on this channel: the pool replaces it.
    retired: AtomicBool,
    /// When the channel was opened.
    opened: Instant,
    /// Whether the broker has acked a publish on it.
    acked: AtomicBool,
    /// How long a confirm may be late before the connection is asked whether the
    /// broker is still there.
    confirm_timeout: Duration,
    /// The connection's liveness checks.
    liveness: Arc<Liveness>,
}

impl fmt::Debug for ConfirmChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfirmChannel")
            .field("id", &self.inner.channel.id())
            .field("connected", &self.inner.channel.status().connected())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl ConfirmChannel {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub(crate) async fn open(
        connection: &Connection,
        on: OpenOn,
        max_in_flight: usize,
        confirm_timeout: Duration,
    ) -> Result<Self, PublishError> {
        let OpenOn {
            generation,
            blocked,
            node,
            liveness,
        } = on;
        let channel = connection.create_channel().await.map_err(|e| {
            PublishError::connection("could not open a channel", e).on_connection(generation)
        })?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| {
                PublishError::connection("could not enable publisher confirms", e)
                    .on_connection(generation)
            })?;
        let frame_max = match connection.configuration().frame_max() {
            0 => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        tracing::debug!(
            channel = channel.id(),
            frame_max,
            "opened confirm-mode channel"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                channel,
                generation,
                blocked,
                node,
                tracker: ConfirmTracker::spawn(),
                permits: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                frame_max,
                retired: AtomicBool::new(false),
                opened: Instant::now(),
                acked: AtomicBool::new(false),
                confirm_timeout,
                liveness,
            }),
        })
    }

    /// The negotiated maximum frame size of the channel's connection, in bytes: the
    /// content header frame (all properties and headers) must fit in one frame.
    pub(crate) fn frame_max(&self) -> usize {
        self.inner.frame_max
    }

    /// The generation of the connection the channel is on.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// The `host:port` of the node the channel's connection is to.
    pub(crate) fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether the broker blocks the channel's connection (`connection.blocked`).
    pub(crate) fn is_blocked(&self) -> bool {
        self.inner.blocked.load(Ordering::Relaxed)
    }

    /// Open, no confirm failed on it, and not [retired](Self::retire).
    pub(crate) fn is_healthy(&self) -> bool {
        self.inner.channel.status().connected()
            && !self.inner.tracker.has_failed()
            && !self.inner.retired.load(Ordering::Acquire)
    }

    /// Records that the broker acked a publish on this channel.
    pub(crate) fn acked(&self) {
        if !self.inner.acked.load(Ordering::Relaxed) {
            self.inner.acked.store(true, Ordering::Relaxed);
        }
    }

    /// After a nack on this channel: makes the pool replace it (publishes in flight on
    /// it still settle) when nothing was acked on it yet, or when it has been open for
    /// [`RETIRE_AFTER`] or more.
    ///
    /// RabbitMQ 3.10 keeps nacking every publish of a channel that used a quorum queue
    /// whose leader was lost (its node stopped or died) — also one opened just after the
    /// loss, before the new leader was elected — for as long as the channel lives, while
    /// a channel opened later publishes to the new leader (measured with
    /// `tests/cluster.rs`). A queue full with `reject-publish` nacks on any channel:
    /// replacing channels that also carry acks (other routing keys) again and again
    /// would only cost round trips for those, so such a channel is replaced at most once
    /// per `RETIRE_AFTER`.
    pub(crate) fn retire_after_nack(&self) {
        let never_acked = !self.inner.acked.load(Ordering::Relaxed);
        if never_acked || self.inner.opened.elapsed() >= RETIRE_AFTER {
            self.inner.retired.store(true, Ordering::Release);
        }
    }

    /// How many publishes hold a permit (being written or awaiting their confirm).
    fn in_flight(&self) -> usize {
        self.inner
            .max_in_flight
            .saturating_sub(self.inner.permits.available_permits())
    }

    /// Publishes `message` with `mandatory = true` and resolves with the broker's
    /// answer for this message alone. Waits for a permit when `max_in_flight`
    /// publishes are already in flight on the channel, and (within the caller's
    /// deadline) while the same event id is still in flight on it.
    ///
    /// A late confirm is waited for as long as the broker answers on the connection
    /// (see `liveness.rs`): the caller's deadline bounds that wait.
    ///
    /// # Errors
    /// [`ErrorKind::Shutdown`] when the channel is closed for publishing;
    /// [`ErrorKind::Timeout`] (outcome unknown) when the confirm is late and the broker
    /// does not answer a round trip on the connection.
    pub(crate) async fn publish(
        &self,
        message: Message,
        sent: &SentGuard<'_>,
    ) -> Result<Outcome, PublishError> {
        self.write(message, sent, false).await?.confirm().await
    }

    /// The first half of [`publish`](Self::publish): waits for a permit and writes
    /// `message`; the returned [`Written`] waits for its confirm. Messages written one
    /// after another `in_order` on one channel reach the broker in that order (the
    /// ordered path, `sequence.rs`): the write is driven to its end before this returns.
    /// Otherwise the message is written when [`Written::confirm`] is first polled, after
    /// letting other ready publishes catch up (see [`GATHER_ABOVE_IN_FLIGHT`]).
    ///
    /// # Errors
    /// [`ErrorKind::Shutdown`] when the channel is closed for publishing.
    pub(crate) async fn write(
        &self,
        message: Message,
        sent: &SentGuard<'_>,
        in_order: bool,
    ) -> Result<Written<'_>, PublishError> {
        let inner = &self.inner;
        // Without awaiting while a permit is free: an uncontended semaphore await still
        // spends the task's cooperative budget.
        let permit = match inner.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => { inner.permits.clone().acquire_owned().await }
                .map_err(|_| PublishError::shutdown())?,
            Err(TryAcquireError::Closed) => return Err(PublishError::shutdown()),
        };
        let Message {
            event_id,
            exchange,
            routing_key,
            body,
            properties,
        } = message;
        let publish_on = Arc::clone(inner);
        let publish: PublishFuture = Box::pin(async move {
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
        if !in_order && self.in_flight() > GATHER_ABOVE_IN_FLIGHT {
            // Everything is ready, and the channel is busy anyway. Before writing, let
            // the other publishes that are ready to start (the rest of a batch, other
            // requests on this worker) get this far too: they then reach lapin back to
            // back, and its I/O thread writes them in a few large writes instead of
            // being woken for every event (see BENCHMARKS.md). Nothing is registered
            // yet: a publish dropped here is never sent.
            tokio::task::yield_now().await;
        }
        // Waits, within the caller's deadline, if this event is still in flight on the
        // channel (an earlier attempt whose confirm is due).
        let mut tracked = inner.tracker.track_when_free(event_id, publish).await;
        if in_order {
            tracked.written().await;
        }
        sent.written();
        Ok(Written {
            inner,
            tracked,
            permit,
        })
    }

    /// Closes the channel, without waiting long for the broker.
    pub(crate) async fn close(&self, reason: &str) {
        if self.inner.channel.status().connected() {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, self.inner.channel.close(200, reason.into()))
                    .await;
        }
    }
}

/// A message [written](ConfirmChannel::write) on a channel, its confirm not yet in.
pub(crate) struct Written<'a> {
    inner: &'a Inner,
    tracked: Tracked,
    /// Held until the confirm is in: `max_in_flight` bounds the unconfirmed messages.
    permit: OwnedSemaphorePermit,
}

impl Written<'_> {
    /// Waits for the broker's answer for this message alone. A late confirm is waited
    /// for as long as the broker answers on the connection (see `liveness.rs`): the
    /// caller's deadline bounds that wait.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] (outcome unknown) when the confirm is late and the broker
    /// does not answer a round trip on the connection.
    pub(crate) async fn confirm(self) -> Result<Outcome, PublishError> {
        let Self {
            inner,
            tracked,
            permit,
        } = self;
        let confirm_timeout = inner.confirm_timeout;
        let bound = liveness::check_timeout(confirm_timeout);
        let outcome = liveness::await_confirm(tracked, confirm_timeout, |since| {
            inner.liveness.answered_since(since, bound)
        })
        .await;
        drop(permit);
        outcome.map_err(|unanswered| {
            PublishError::new(
                ErrorKind::Timeout,
                format!(
                    "no confirm after {} ms, and the broker at {} did not answer a round trip \
                     on the connection within {} ms",
                    unanswered.waited.as_millis(),
                    inner.node,
                    bound.as_millis()
                ),
            )
            .mark_maybe_delivered()
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tracker.close();
        if self.channel.status().connected() {
            let channel = self.channel.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = tokio::time::timeout(
                        CLOSE_TIMEOUT,
                        channel.close(200, "pooled channel discarded".into()),
                    )
                    .await;
                });
            }
        }
    }
}
