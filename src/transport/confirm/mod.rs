//! Exact per-event outcomes for pipelined publisher confirms on one channel.
//!
//! # The problem
//! With many publishes in flight on one channel, lapin hands a `basic.return`
//! (an unroutable `mandatory` message) to whichever pending confirm it completes
//! next; with a multiple `basic.ack` it completes them in hash-map order. So the
//! confirm of event A may carry the return of event B, and an `Ack(None)` for B
//! does not prove that B was routed.
//!
//! # How outcomes are settled
//! Every returned message carries its `message_id` (the event id), so a return
//! always identifies the unroutable event, whichever confirm carried it. (Messages
//! that are not this crate's events — dead letters moved back — are tracked under the
//! [`tracking_id`] of their `message_id`, which the return gives back the same way;
//! one id is never in flight twice on a channel, so that, too, is exact.) What is
//! left is to know when an acked event can be declared routed, that is, when its
//! return, if there is one, must already have been seen. Facts from lapin 4.12
//! (`acknowledgement.rs`, `returned_messages.rs`) and AMQP:
//!
//! 1. The broker sends an event's `basic.return` before the `basic.ack` covering it.
//! 2. lapin queues returns FIFO and pops one (or none, when the queue is empty) each
//!    time it completes a pending confirm, in its single I/O thread. A confirm that
//!    completes with no return (a *witness*) proves that the queue was empty at that
//!    moment, so every return received before it has been attached to a confirm that
//!    completed earlier.
//! 3. lapin wakes a confirm's waker right after resolving it, in the same thread, so
//!    the order of wake-ups is the order of completions.
//!
//! The tracker polls every confirm with a waker that records a global rank on
//! wake-up. One settler task per channel drains those wake-ups, records every
//! return under its event id, and declares an acked event routed once a witness
//! completed at or after it and every confirm that could have completed before that
//! witness has been seen. Publishes that have not yet been handed to the tracker
//! (still inside `basic_publish`) block the conclusion until they are; this keeps it
//! exact without a lock around publish and confirm, so confirms stay pipelined.
//!
//! # Layout
//! This module holds the concurrent parts: the tracking waker and its wake-up log,
//! the polling of lapin's confirms, the settler task, the publish-order lock and
//! the [`Tracked`] future. The bookkeeping (which events are live, which returns
//! were seen, the witnesses, which acked events are still waiting for one) is the
//! plain state type in `state.rs`, with its own unit tests: the tracker polls a
//! confirm, ranks its completion and hands both to it, under one lock.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::task::AtomicWaker;
use lapin::{Confirmation, PublisherConfirm, message::BasicReturnMessage};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::event::tracking_id;

mod state;

pub(crate) use state::Outcome;
use state::{Completion, Rank, Reply, Returned, State};

pub(crate) type PublishFuture =
    Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// What the tracker's lock guards.
#[derive(Debug)]
struct Locked {
    state: State<PublisherConfirm, Arc<TrackingWaker>>,
    /// Publishes whose `basic_publish` finished, to be tracked on the next round:
    /// its result, or `None` when the publish was abandoned.
    handoffs: Vec<(u64, Option<lapin::Result<PublisherConfirm>>)>,
    /// A spare buffer swapped with [`ConfirmTracker::woken`] on each round.
    woken: Vec<(u64, u64)>,
    closed: bool,
}

impl Locked {
    /// Closed, and no confirm is left to track: the settler may stop.
    fn finished(&self) -> bool {
        self.closed && self.state.is_empty()
    }
}

/// Tracks the confirms of one confirm-mode channel; see the module docs.
#[derive(Debug)]
pub(crate) struct ConfirmTracker {
    state: Mutex<Locked>,
    /// Held while a publish takes its delivery tag and queues its frames; see
    /// [`OrderedPublish`].
    publish_order: Arc<Mutex<()>>,
    /// The completions not processed yet, as (sequence number, rank), in rank order.
    woken: Mutex<Vec<(u64, u64)>>,
    /// Whether `woken` is non-empty, readable without its lock (a hint: the task
    /// woken by a completion always looks again).
    any_woken: AtomicBool,
    /// Mirrors the state's `has_failed`, so that the pool's health check takes no lock.
    failed: AtomicBool,
    rank: AtomicU64,
    settler: AtomicWaker,
    /// Notified when an id another publish waits for is no longer live.
    released: Notify,
}

#[derive(Debug)]
struct TrackingWaker {
    tracker: Weak<ConfirmTracker>,
    seq: u64,
    /// The task waiting for this event's outcome, woken directly so that it does the
    /// processing itself; the settler is woken instead when no one waits.
    owner: AtomicWaker,
    /// The event's outcome once settled, until its caller takes it.
    outcome: Mutex<Option<Outcome>>,
}

impl TrackingWaker {
    fn take_outcome(&self) -> Option<Outcome> {
        lock(&self.outcome).take()
    }
}

impl Reply for Arc<TrackingWaker> {
    fn deliver(&self, outcome: Outcome) {
        *lock(&self.outcome) = Some(outcome);
        self.owner.wake();
    }
}

impl Wake for TrackingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(tracker) = self.tracker.upgrade() {
            {
                let mut woken = lock(&tracker.woken);
                let rank = tracker.rank.fetch_add(1, Ordering::SeqCst);
                woken.push((self.seq, rank));
                tracker.any_woken.store(true, Ordering::Release);
            }
            match self.owner.take() {
                Some(owner) => owner.wake(),
                None => tracker.settler.wake(),
            }
        }
    }
}

impl Drop for ConfirmTracker {
    /// Drops the pending lapin confirms on a thread of their own. The last reference
    /// to a tracker can go in [`TrackingWaker::wake_by_ref`], called by lapin while it
    /// notifies a confirm (for example when the connection fails): dropping a
    /// `PublisherConfirm` there re-enters lapin's listener, whose lock the notification
    /// holds, and the thread deadlocks (seen in `tests/cluster.rs`, at the end of a
    /// whole-cluster outage).
    fn drop(&mut self) {
        let locked = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let handoffs = std::mem::take(&mut locked.handoffs);
        if locked.state.is_empty() && handoffs.is_empty() {
            return;
        }
        let state = std::mem::replace(&mut locked.state, State::new());
        let spawned = std::thread::Builder::new()
            .name("fitviz-confirm-drop".into())
            .spawn(move || drop((state, handoffs)));
        if let Err(error) = spawned {
            // The closure, and the confirms with it, were dropped here: rare enough.
            tracing::debug!(%error, "could not start a thread to drop pending confirms");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConfirmTracker {
    /// A tracker with its settler task spawned on the current tokio runtime.
    pub(crate) fn spawn() -> Arc<Self> {
        let tracker = Arc::new(Self {
            state: Mutex::new(Locked {
                state: State::new(),
                handoffs: Vec::new(),
                woken: Vec::new(),
                closed: false,
            }),
            publish_order: Arc::new(Mutex::new(())),
            woken: Mutex::new(Vec::new()),
            any_woken: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            rank: AtomicU64::new(0),
            settler: AtomicWaker::new(),
            released: Notify::new(),
        });
        let weak = Arc::downgrade(&tracker);
        tokio::spawn(Settler(weak));
        tracker
    }

    /// Whether a confirm on this channel failed (the channel is dead).
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Stops the settler once every tracked confirm has completed.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.settler.wake();
    }

    /// Registers event `id`, runs `publish` (the `basic_publish` call) and tracks its
    /// confirm. The returned future resolves with the event's exact outcome.
    ///
    /// A return is matched to its event by `message_id`, so one id must not be in
    /// flight twice on a channel (a retry after a timed-out attempt whose confirm is
    /// still due, or the same event published twice at once): then `publish` is given
    /// back ([`track_when_free`](Self::track_when_free) waits and tries again).
    ///
    /// Dropping the returned future never loses track of the confirm: if it is
    /// dropped while `basic_publish` is running, the rest of the publish is spawned;
    /// dropped before its first poll, nothing is sent.
    pub(crate) fn track(
        self: &Arc<Self>,
        id: Uuid,
        publish: PublishFuture,
    ) -> Result<Tracked, PublishFuture> {
        let (seq, tracking) = {
            let mut locked = lock(&self.state);
            let reserved = locked.state.reserve(id, |seq| {
                Arc::new(TrackingWaker {
                    tracker: Arc::downgrade(self),
                    seq,
                    owner: AtomicWaker::new(),
                    outcome: Mutex::new(None),
                })
            });
            match reserved {
                Some((seq, tracking)) => (seq, tracking.clone()),
                None => return Err(publish),
            }
        };
        Ok(Tracked {
            tracker: self.clone(),
            seq,
            tracking,
            publish: Some(OrderedPublish {
                inner: publish,
                order: self.publish_order.clone(),
                started: false,
            }),
        })
    }

    /// [`track`](Self::track), waiting first for an earlier publish of the same id on
    /// this channel to be settled.
    pub(crate) async fn track_when_free(
        self: &Arc<Self>,
        id: Uuid,
        publish: PublishFuture,
    ) -> Tracked {
        let mut publish = match self.track(id, publish) {
            Ok(tracked) => return tracked,
            Err(unstarted) => unstarted,
        };
        loop {
            // Listen before looking again, so that no release is missed.
            let released = self.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            match self.track(id, publish) {
                Ok(tracked) => return tracked,
                Err(unstarted) => publish = unstarted,
            }
            released.await;
        }
    }

    fn has_woken(&self) -> bool {
        self.any_woken.load(Ordering::Acquire)
    }

    fn process_now(&self) {
        let mut locked = lock(&self.state);
        self.process(&mut locked);
        if locked.finished() {
            self.settler.wake();
        }
    }

    /// Tracks the confirm of `seq` right away, in the caller's task: no settler
    /// wake-up is needed unless lapin already completed it.
    fn handoff(&self, seq: u64, result: lapin::Result<PublisherConfirm>) {
        let mut locked = lock(&self.state);
        locked.handoffs.push((seq, Some(result)));
        self.process(&mut locked);
        if locked.finished() {
            self.settler.wake();
        }
    }

    /// The publish of `seq` was dropped before its first poll: nothing was sent and
    /// no delivery tag taken, so there is nothing to track; forget it.
    fn withdraw(&self, seq: u64) {
        let mut locked = lock(&self.state);
        locked.state.withdraw(seq);
        // Settlements it held back may be possible now.
        self.process(&mut locked);
        if locked.finished() {
            self.settler.wake();
        }
    }

    /// The publish of `seq` was dropped outside a runtime: its confirm cannot be
    /// tracked, so the channel can no longer prove anything and is marked failed.
    fn abandon(&self, seq: u64) {
        lock(&self.state).handoffs.push((seq, None));
        self.settler.wake();
    }

    /// One run of the settler: take hand-offs and wake-ups, record outcomes, settle.
    fn run(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.settler.register(cx.waker());
        let mut locked = lock(&self.state);
        self.process(&mut locked);
        if locked.finished() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Takes hand-offs, then completions in the order lapin resolved them, then
    /// settles what can be settled. Always all three, in this order: a settlement is
    /// only sound once every completion ranked before it has been processed.
    fn process(&self, locked: &mut Locked) {
        let Locked {
            state,
            handoffs,
            woken: spare,
            ..
        } = locked;

        // Newly handed-off confirms: poll once with their tracking waker. One that is
        // already complete gets a rank now, later than its true completion.
        for (seq, result) in handoffs.drain(..) {
            match result {
                None => state.publish_failed(seq, None),
                Some(Err(error)) => state.publish_failed(seq, Some(error)),
                Some(Ok(confirm)) => {
                    state.track(seq, confirm);
                    self.poll_confirm(state, seq, None);
                }
            }
        }

        // Completions in the order lapin resolved them.
        let mut woken = std::mem::take(spare);
        {
            let mut shared = lock(&self.woken);
            std::mem::swap(&mut *shared, &mut woken);
            self.any_woken.store(false, Ordering::Release);
        }
        for &(seq, rank) in &woken {
            self.poll_confirm(state, seq, Some(rank));
        }
        // Keep the buffer's capacity for the next round.
        woken.clear();
        *spare = woken;

        state.settle_awaiting();
        if state.has_failed() {
            self.failed.store(true, Ordering::Release);
        }
        if state.take_released() {
            self.released.notify_waiters();
        }
    }

    /// Polls the pending confirm of `seq` with its tracking waker and hands its
    /// completion, if any, to the state: with `woken_rank`, the rank its tracking
    /// waker took when lapin completed it, or else one taken now.
    fn poll_confirm(
        &self,
        state: &mut State<PublisherConfirm, Arc<TrackingWaker>>,
        seq: u64,
        woken_rank: Option<u64>,
    ) {
        let Some((confirm, tracking)) = state.pending(seq) else {
            return;
        };
        let waker = Waker::from(tracking.clone());
        let result = match Pin::new(confirm).poll(&mut Context::from_waker(&waker)) {
            Poll::Pending => return,
            Poll::Ready(result) => result,
        };
        // A confirm found complete on its first poll is ranked only now, after its
        // completion was observed: a rank taken before the poll could be older than
        // a completion that happened during it.
        let rank = match woken_rank {
            Some(rank) => Rank::Exact(rank),
            None => Rank::Observed(self.rank.fetch_add(1, Ordering::SeqCst)),
        };
        let completion = match result {
            Ok(Confirmation::Ack(returned)) => {
                Completion::Ack(returned.as_ref().map(returned_parts))
            }
            Ok(Confirmation::Nack(returned)) => {
                Completion::Nack(returned.as_ref().map(returned_parts))
            }
            Ok(Confirmation::NotRequested) => Completion::NotRequested,
            Err(error) => Completion::Failed(Some(error)),
        };
        state.complete(seq, rank, completion);
    }
}

/// What the tracker needs of a returned message: its event id (the
/// [`tracking_id`] of its `message_id`, as it was tracked), code and text.
fn returned_parts(message: &BasicReturnMessage) -> Returned {
    let message_id = message.delivery.properties.message_id();
    Returned {
        event_id: Some(tracking_id(message_id.as_ref().map(|id| id.as_str()))),
        reply_code: message.reply_code,
        reply_text: message.reply_text.to_string(),
    }
}

/// The settler task of one channel.
struct Settler(Weak<ConfirmTracker>);

impl Future for Settler {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.upgrade() {
            Some(tracker) => tracker.run(cx),
            None => Poll::Ready(()),
        }
    }
}

/// A `basic_publish` whose first poll runs under the channel's publish-order lock.
///
/// lapin's `basic_publish` takes the next delivery tag and queues the frames in its
/// first poll, without holding any lock between the two. Two tasks publishing on one
/// channel from two threads can interleave: one takes tag 5, the other takes tag 6
/// and queues its frames first, so the broker's message 5 is lapin's tag 6 and every
/// ack and return after it lands on the wrong confirm. Holding a lock across that
/// first poll (a few microseconds, no I/O) makes the tag order the wire order.
struct OrderedPublish {
    inner: PublishFuture,
    order: Arc<Mutex<()>>,
    started: bool,
}

impl Future for OrderedPublish {
    type Output = lapin::Result<PublisherConfirm>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.started {
            return this.inner.as_mut().poll(cx);
        }
        this.started = true;
        let _order = lock(&this.order);
        this.inner.as_mut().poll(cx)
    }
}

/// The outcome of one tracked publish.
pub(crate) struct Tracked {
    tracker: Arc<ConfirmTracker>,
    seq: u64,
    tracking: Arc<TrackingWaker>,
    publish: Option<OrderedPublish>,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked").field("seq", &self.seq).finish()
    }
}

impl Tracked {
    /// Drives the publish to the end of its `basic_publish` (delivery tag taken, frames
    /// queued to lapin's I/O loop) without waiting for the confirm: a message written
    /// this way is ahead of every message whose publish starts afterwards on the
    /// channel (the ordered path).
    pub(crate) async fn written(&mut self) {
        std::future::poll_fn(|cx| {
            if let Some(publish) = self.publish.as_mut() {
                let result = std::task::ready!(Pin::new(publish).poll(cx));
                self.publish = None;
                self.tracker.handoff(self.seq, result);
            }
            Poll::Ready(())
        })
        .await;
    }
}

impl Future for Tracked {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = &mut *self;
        if let Some(publish) = this.publish.as_mut() {
            let result = std::task::ready!(Pin::new(publish).poll(cx));
            this.publish = None;
            this.tracker.handoff(this.seq, result);
        }
        this.tracking.owner.register(cx.waker());
        if let Some(outcome) = this.tracking.take_outcome() {
            return Poll::Ready(outcome);
        }
        // Woken by a completion on this channel: process it here rather than waiting
        // for the settler task to be scheduled.
        if this.tracker.has_woken() {
            this.tracker.process_now();
        }
        match this.tracking.take_outcome() {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // From now on completions wake the settler; one that already chose this task
        // is handed to the settler too.
        drop(self.tracking.owner.take());
        if self.tracker.has_woken() {
            self.tracker.settler.wake();
        }
        if let Some(publish) = self.publish.take() {
            if !publish.started {
                // Nothing was sent: there is no confirm to track.
                self.tracker.withdraw(self.seq);
                return;
            }
            // Finish the publish so the confirm is tracked: other events' returns may
            // be attached to it.
            let tracker = self.tracker.clone();
            let seq = self.seq;
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let result = publish.await;
                    tracker.handoff(seq, result);
                });
            } else {
                tracker.abandon(seq);
            }
        }
    }
}
