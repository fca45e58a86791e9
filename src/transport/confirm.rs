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
//! always identifies the unroutable event, whichever confirm carried it. What is
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

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::task::AtomicWaker;
use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::Notify;
use uuid::Uuid;

static REATTRIBUTED_RETURNS: AtomicU64 = AtomicU64::new(0);

/// How many returned messages lapin attached to another event's confirm, and the
/// tracker gave back to their own event (process-wide, for tests and metrics).
pub fn reattributed_returns() -> u64 {
    REATTRIBUTED_RETURNS.load(Ordering::Relaxed)
}

/// What the broker said about one event.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Confirmed and routed to at least one queue.
    Routed,
    /// Confirmed, but returned: no queue is bound for its routing key.
    Unroutable { reply_code: u16, reply_text: String },
    /// Negatively acknowledged.
    Nacked,
    /// The channel failed before the outcome was known (with lapin's error, when it gave one).
    Failed(Option<lapin::Error>),
    /// The channel failed after the broker acked the event but before it was known
    /// whether the event was routed.
    Unknown,
}

pub(crate) type PublishFuture =
    Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

#[derive(Debug)]
enum Stage {
    /// Reserved; `basic_publish` is running and the confirm is not tracked yet.
    Untracked,
    /// The confirm is being polled with the tracking waker.
    Pending(PublisherConfirm),
    /// The confirm completed.
    Done,
}

#[derive(Debug)]
struct Entry {
    id: Uuid,
    stage: Stage,
    /// The tracking waker, which also carries the outcome to the caller.
    tracking: Arc<TrackingWaker>,
    waker: Waker,
    replied: bool,
}

/// Where a completion's rank comes from.
enum Rank<'a> {
    /// Taken by the tracking waker when lapin completed the confirm.
    Exact(u64),
    /// The confirm had completed before it was tracked: rank it when observed,
    /// which is later than its true completion (safe for its own settlement, so it
    /// never serves as a witness for others).
    AfterCompletion(&'a AtomicU64),
}

#[derive(Debug, Clone, Copy)]
struct Witness {
    rank: u64,
    barrier: u64,
}

#[derive(Debug, Clone, Copy)]
struct Awaiting {
    rank: u64,
    /// Set when the event's own confirm completed with no return attached: its own witness.
    own_barrier: Option<u64>,
}

/// The live entries by sequence number. Numbers are handed out in order, so they
/// live in a deque starting at the oldest live one (no hashing on the hot path).
#[derive(Debug, Default)]
struct Entries {
    first: u64,
    slots: VecDeque<Option<Entry>>,
    live: usize,
}

impl Entries {
    /// Adds the entry of `seq`, the next sequence number.
    fn push(&mut self, seq: u64, entry: Entry) {
        if self.slots.is_empty() {
            self.first = seq;
        }
        debug_assert_eq!(seq, self.first + self.slots.len() as u64);
        self.slots.push_back(Some(entry));
        self.live += 1;
    }

    fn index(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.first)?).ok()
    }

    fn get(&self, seq: u64) -> Option<&Entry> {
        self.slots.get(self.index(seq)?)?.as_ref()
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let index = self.index(seq)?;
        self.slots.get_mut(index)?.as_mut()
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let index = self.index(seq)?;
        let entry = self.slots.get_mut(index)?.take();
        if entry.is_some() {
            self.live -= 1;
        }
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first += 1;
        }
        entry
    }

    fn is_empty(&self) -> bool {
        self.live == 0
    }
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    entries: Entries,
    /// The live entries by event id. An id is live at most once per channel (see
    /// [`ConfirmTracker::track`]), so a return names exactly one entry.
    by_id: HashMap<Uuid, u64>,
    /// Ids that a publish is waiting for, to publish the same event again.
    contested: HashSet<Uuid>,
    /// Set when a contested id was released; [`ConfirmTracker::released`] is notified.
    released: bool,
    untracked: BTreeSet<u64>,
    handoffs: Vec<(u64, Option<lapin::Result<PublisherConfirm>>)>,
    returned: HashMap<Uuid, (u16, String)>,
    witnesses: VecDeque<Witness>,
    awaiting: HashMap<u64, Awaiting>,
    /// A spare buffer for the events settled in one round.
    settled: Vec<u64>,
    /// A spare buffer swapped with [`ConfirmTracker::woken`] on each round.
    woken: Vec<(u64, u64)>,
    failed: bool,
    closed: bool,
}

/// Tracks the confirms of one confirm-mode channel; see the module docs.
#[derive(Debug)]
pub(crate) struct ConfirmTracker {
    state: Mutex<State>,
    /// Held while a publish takes its delivery tag and queues its frames; see
    /// [`OrderedPublish`].
    publish_order: Arc<Mutex<()>>,
    woken: Mutex<Vec<(u64, u64)>>,
    /// Whether `woken` is non-empty, readable without its lock (a hint: the task
    /// woken by a completion always looks again).
    any_woken: AtomicBool,
    /// Mirrors `State::failed`, so that the pool's health check takes no lock.
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
    fn deliver(&self, outcome: Outcome) {
        *lock(&self.outcome) = Some(outcome);
        self.owner.wake();
    }

    fn take_outcome(&self) -> Option<Outcome> {
        lock(&self.outcome).take()
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConfirmTracker {
    /// A tracker with its settler task spawned on the current tokio runtime.
    pub(crate) fn spawn() -> Arc<Self> {
        let tracker = Arc::new(Self {
            state: Mutex::new(State::default()),
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
            let mut st = lock(&self.state);
            if st.by_id.contains_key(&id) {
                st.contested.insert(id);
                return Err(publish);
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            let tracking = Arc::new(TrackingWaker {
                tracker: Arc::downgrade(self),
                seq,
                owner: AtomicWaker::new(),
                outcome: Mutex::new(None),
            });
            let waker = Waker::from(tracking.clone());
            st.entries.push(
                seq,
                Entry {
                    id,
                    stage: Stage::Untracked,
                    tracking: tracking.clone(),
                    waker,
                    replied: false,
                },
            );
            st.by_id.insert(id, seq);
            st.untracked.insert(seq);
            (seq, tracking)
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

    /// Forgets a settled entry.
    fn forget(st: &mut State, seq: u64) {
        if let Some(entry) = st.entries.remove(seq) {
            st.by_id.remove(&entry.id);
            if !st.returned.is_empty() {
                st.returned.remove(&entry.id);
            }
            if !st.contested.is_empty() && st.contested.remove(&entry.id) {
                st.released = true;
            }
        }
    }

    /// Wakes the publishes waiting for an id that was released.
    fn notify_released(&self, st: &mut State) {
        if std::mem::take(&mut st.released) {
            self.released.notify_waiters();
        }
    }

    fn has_woken(&self) -> bool {
        self.any_woken.load(Ordering::Acquire)
    }

    fn process_now(&self) {
        let mut st = lock(&self.state);
        self.process(&mut st);
        if st.closed && st.entries.is_empty() {
            self.settler.wake();
        }
    }

    /// Tracks the confirm of `seq` right away, in the caller's task: no settler
    /// wake-up is needed unless lapin already completed it.
    fn handoff(&self, seq: u64, result: lapin::Result<PublisherConfirm>) {
        let mut st = lock(&self.state);
        st.handoffs.push((seq, Some(result)));
        self.process(&mut st);
        if st.closed && st.entries.is_empty() {
            self.settler.wake();
        }
    }

    /// The publish of `seq` was dropped before its first poll: nothing was sent and
    /// no delivery tag taken, so there is nothing to track; forget it.
    fn withdraw(&self, seq: u64) {
        let mut st = lock(&self.state);
        st.untracked.remove(&seq);
        Self::forget(&mut st, seq);
        // Settlements it held back may be possible now.
        self.process(&mut st);
        if st.closed && st.entries.is_empty() {
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
        let mut st = lock(&self.state);
        self.process(&mut st);
        if st.closed && st.entries.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Takes hand-offs, then completions in the order lapin resolved them, then
    /// settles what can be settled. Always all three, in this order: a settlement is
    /// only sound once every completion ranked before it has been processed.
    fn process(&self, st: &mut State) {
        // Newly handed-off confirms: poll once with their tracking waker. One that is
        // already complete gets a rank now, later than its true completion.
        for (seq, result) in std::mem::take(&mut st.handoffs) {
            st.untracked.remove(&seq);
            let Some(entry) = st.entries.get_mut(seq) else {
                continue;
            };
            match result {
                None => {
                    entry.stage = Stage::Done;
                    st.failed = true;
                    Self::settle(st, seq, Outcome::Failed(None));
                }
                Some(Err(error)) => {
                    entry.stage = Stage::Done;
                    st.failed = true;
                    Self::settle(st, seq, Outcome::Failed(Some(error)));
                }
                Some(Ok(confirm)) => {
                    entry.stage = Stage::Pending(confirm);
                    Self::poll_entry(st, seq, Rank::AfterCompletion(&self.rank));
                }
            }
        }

        // Completions in the order lapin resolved them.
        let mut woken = std::mem::take(&mut st.woken);
        {
            let mut shared = lock(&self.woken);
            std::mem::swap(&mut *shared, &mut woken);
            self.any_woken.store(false, Ordering::Release);
        }
        for &(seq, rank) in &woken {
            Self::poll_entry(st, seq, Rank::Exact(rank));
        }
        // Keep the buffer's capacity for the next round.
        woken.clear();
        st.woken = woken;

        Self::settle_awaiting(st);
        if st.failed {
            self.failed.store(true, Ordering::Release);
        }
        self.notify_released(st);
    }

    fn poll_entry(st: &mut State, seq: u64, rank: Rank<'_>) {
        let Some(entry) = st.entries.get_mut(seq) else {
            return;
        };
        let Stage::Pending(confirm) = &mut entry.stage else {
            return;
        };
        let waker = entry.waker.clone();
        let result = match Pin::new(confirm).poll(&mut Context::from_waker(&waker)) {
            Poll::Pending => return,
            Poll::Ready(result) => result,
        };
        entry.stage = Stage::Done;
        // A confirm found complete on its first poll is ranked only now, after its
        // completion was observed: a rank taken before the poll could be older than
        // a completion that happened during it.
        let (rank, exact) = match rank {
            Rank::Exact(rank) => (rank, true),
            Rank::AfterCompletion(counter) => (counter.fetch_add(1, Ordering::SeqCst), false),
        };
        let barrier = st.next_seq;
        match result {
            Ok(Confirmation::Ack(returned)) => {
                let is_witness = returned.is_none();
                if let Some(message) = returned {
                    let parts = *message_parts(&message);
                    if parts.0 != st.entries.get(seq).map(|e| e.id) {
                        REATTRIBUTED_RETURNS.fetch_add(1, Ordering::Relaxed);
                    }
                    Self::record_return(st, parts);
                }
                if is_witness && exact {
                    st.witnesses.push_back(Witness { rank, barrier });
                }
                // Its own return (if it carried it) has settled and forgotten it.
                if st.entries.get(seq).is_some() && !Self::settle_if_returned(st, seq) {
                    st.awaiting.insert(
                        seq,
                        Awaiting {
                            rank,
                            own_barrier: is_witness.then_some(barrier),
                        },
                    );
                }
            }
            Ok(Confirmation::Nack(returned)) => {
                let is_witness = returned.is_none();
                if let Some(message) = returned {
                    Self::record_return(st, *message_parts(&message));
                }
                if is_witness && exact {
                    st.witnesses.push_back(Witness { rank, barrier });
                }
                if !Self::settle_if_returned(st, seq) {
                    Self::settle(st, seq, Outcome::Nacked);
                }
            }
            Ok(Confirmation::NotRequested) => {
                st.failed = true;
                Self::settle(st, seq, Outcome::Failed(None));
            }
            Err(error) => {
                st.failed = true;
                Self::settle(st, seq, Outcome::Failed(Some(error)));
            }
        }
    }

    fn record_return(st: &mut State, (id, reply_code, reply_text): (Option<Uuid>, u16, String)) {
        let Some(id) = id else {
            tracing::warn!(reply_code, %reply_text, "broker returned a message without an event id");
            return;
        };
        let Some(&seq) = st.by_id.get(&id) else {
            return;
        };
        st.returned.insert(id, (reply_code, reply_text));
        Self::settle_if_returned(st, seq);
    }

    /// Settles `seq` as unroutable if its return has been seen.
    fn settle_if_returned(st: &mut State, seq: u64) -> bool {
        let Some(entry) = st.entries.get(seq) else {
            return false;
        };
        let Some((reply_code, reply_text)) = st.returned.get(&entry.id).cloned() else {
            return false;
        };
        st.awaiting.remove(&seq);
        Self::settle(
            st,
            seq,
            Outcome::Unroutable {
                reply_code,
                reply_text,
            },
        );
        true
    }

    fn settle_awaiting(st: &mut State) {
        if st.awaiting.is_empty() {
            st.witnesses.clear();
            return;
        }
        let oldest_untracked = st.untracked.first().copied().unwrap_or(u64::MAX);
        if st.failed && st.untracked.is_empty() {
            // Returns may be lost with the channel: the broker acked these events but
            // whether they were routed cannot be known any more.
            for seq in st.awaiting.drain().map(|(seq, _)| seq).collect::<Vec<_>>() {
                Self::settle(st, seq, Outcome::Unknown);
            }
            return;
        }
        let mut settled = std::mem::take(&mut st.settled);
        settled.extend(
            st.awaiting
                .iter()
                .filter(|(_, awaiting)| {
                    if awaiting.own_barrier.is_some_and(|b| b <= oldest_untracked) {
                        return true;
                    }
                    // The first witness that completed after this event.
                    let first = st.witnesses.partition_point(|w| w.rank <= awaiting.rank);
                    st.witnesses
                        .get(first)
                        .is_some_and(|w| w.barrier <= oldest_untracked)
                })
                .map(|(&seq, _)| seq),
        );
        for &seq in &settled {
            st.awaiting.remove(&seq);
            Self::settle(st, seq, Outcome::Routed);
        }
        settled.clear();
        st.settled = settled;
        // Witnesses older than every awaiting event are no longer needed.
        let min_rank = st.awaiting.values().map(|a| a.rank).min();
        match min_rank {
            None => st.witnesses.clear(),
            Some(min) => {
                let keep_from = st.witnesses.partition_point(|w| w.rank <= min);
                st.witnesses.drain(..keep_from);
            }
        }
    }

    /// Sends the outcome of `seq` (once) and forgets it when its confirm is done.
    fn settle(st: &mut State, seq: u64, outcome: Outcome) {
        let Some(entry) = st.entries.get_mut(seq) else {
            return;
        };
        if !entry.replied {
            entry.replied = true;
            // The caller may have gone (timeout); the outcome then only matters for others.
            entry.tracking.deliver(outcome);
        }
        if matches!(entry.stage, Stage::Done) {
            Self::forget(st, seq);
        }
    }
}

fn message_parts(message: &lapin::message::BasicReturnMessage) -> Box<(Option<Uuid>, u16, String)> {
    let id = message
        .delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::parse_str(id.as_str()).ok());
    Box::new((id, message.reply_code, message.reply_text.to_string()))
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
