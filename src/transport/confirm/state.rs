//! The tracker's bookkeeping as plain data: the live events by sequence number and
//! the stage of each, the returns seen, the witnesses, and the acked events waiting
//! for one (see the [module docs](super) for the argument).
//!
//! It knows nothing of lapin's futures or of wakers: it is generic over the pending
//! confirm `P` (kept here only so that the tracker can poll it) and over the reply
//! handle `R` that carries an outcome to its caller. The tracker polls a confirm,
//! ranks its completion and hands it over as a [`Completion`]; everything else is
//! decided here.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use uuid::Uuid;

/// What the broker said about one event.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Confirmed and routed to at least one queue.
    Routed,
    /// Confirmed, but returned: no queue is bound for its routing key.
    Unroutable { reply_code: u16, reply_text: String },
    /// Negatively acknowledged.
    Nacked,
    /// The channel failed after the event was written, before its confirm arrived
    /// (with lapin's error, when it gave one): the broker may have stored it.
    Failed(Option<lapin::Error>),
    /// `basic_publish` itself failed (the channel was already closed): the event was
    /// not written (with lapin's error, when it gave one).
    NotSent(Option<lapin::Error>),
    /// The channel failed after the broker acked the event but before it was known
    /// whether the event was routed.
    Unknown,
}

/// Carries a settled outcome to the caller waiting for it (who may have gone).
pub(super) trait Reply {
    fn deliver(&self, outcome: Outcome);
}

/// A `basic.return` that lapin attached to a completed confirm: not necessarily the
/// return of that confirm's event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Returned {
    /// The returned message's `message_id`, when it is an event id.
    pub(super) event_id: Option<Uuid>,
    pub(super) reply_code: u16,
    pub(super) reply_text: String,
}

/// How a confirm completed.
#[derive(Debug)]
pub(super) enum Completion {
    Ack(Option<Returned>),
    Nack(Option<Returned>),
    /// The channel is not in confirm mode.
    NotRequested,
    Failed(Option<lapin::Error>),
}

/// When a completion happened, relative to the others on the channel.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rank {
    /// Taken by the tracking waker when lapin completed the confirm: completions
    /// are ranked in the order lapin resolved them.
    Exact(u64),
    /// The confirm had completed before it was tracked, and was ranked when its
    /// completion was observed, later than the true completion: safe for its own
    /// settlement, so it never serves as a witness for others.
    Observed(u64),
}

#[derive(Debug)]
enum Stage<P> {
    /// Reserved; `basic_publish` is running and the confirm is not tracked yet.
    Untracked,
    /// The confirm is being polled by the tracker.
    Pending(P),
    /// The confirm completed.
    Done,
}

#[derive(Debug)]
struct Entry<P, R> {
    id: Uuid,
    stage: Stage<P>,
    reply: R,
    replied: bool,
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
#[derive(Debug)]
struct Entries<E> {
    first: u64,
    slots: VecDeque<Option<E>>,
    live: usize,
}

impl<E> Entries<E> {
    fn new() -> Self {
        Self {
            first: 0,
            slots: VecDeque::new(),
            live: 0,
        }
    }

    /// Adds the entry of `seq`, the next sequence number.
    fn push(&mut self, seq: u64, entry: E) {
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

    fn get(&self, seq: u64) -> Option<&E> {
        self.slots.get(self.index(seq)?)?.as_ref()
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut E> {
        let index = self.index(seq)?;
        self.slots.get_mut(index)?.as_mut()
    }

    fn remove(&mut self, seq: u64) -> Option<E> {
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

/// The bookkeeping of one channel's confirms.
///
/// An event's life: [`reserve`](Self::reserve) (untracked: `basic_publish` is
/// running), then [`track`](Self::track) with its confirm,
/// [`publish_failed`](Self::publish_failed), or [`withdraw`](Self::withdraw) when
/// nothing was sent; then [`complete`](Self::complete) once the confirm resolved.
/// Its outcome is delivered once, as soon as it is known (possibly before its own
/// confirm completes, when another confirm carried its return), and the entry is
/// forgotten once it is both settled and complete. After each round of
/// completions, [`settle_awaiting`](Self::settle_awaiting) declares routed the acked
/// events that a witness proves were not returned.
#[derive(Debug)]
pub(super) struct State<P, R> {
    next_seq: u64,
    entries: Entries<Entry<P, R>>,
    /// The live entries by event id. An id is live at most once per channel (see
    /// [`ConfirmTracker::track`](super::ConfirmTracker::track)), so a return names
    /// exactly one entry.
    by_id: HashMap<Uuid, u64>,
    /// Ids that a publish is waiting for, to publish the same event again.
    contested: HashSet<Uuid>,
    /// Set when a contested id was released; see [`take_released`](Self::take_released).
    released: bool,
    untracked: BTreeSet<u64>,
    returned: HashMap<Uuid, (u16, String)>,
    witnesses: VecDeque<Witness>,
    awaiting: HashMap<u64, Awaiting>,
    /// A spare buffer for the events settled in one round.
    settled: Vec<u64>,
    failed: bool,
    /// Returns attached to another event's confirm, on this channel.
    reattributed: u64,
}

impl<P, R: Reply> State<P, R> {
    pub(super) fn new() -> Self {
        Self {
            next_seq: 0,
            entries: Entries::new(),
            by_id: HashMap::new(),
            contested: HashSet::new(),
            released: false,
            untracked: BTreeSet::new(),
            returned: HashMap::new(),
            witnesses: VecDeque::new(),
            awaiting: HashMap::new(),
            settled: Vec::new(),
            failed: false,
            reattributed: 0,
        }
    }

    /// Whether a confirm or a publish failed: the channel is dead.
    pub(super) fn has_failed(&self) -> bool {
        self.failed
    }

    /// Whether no event is live.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether an id that a publish waits for was released since the last call.
    pub(super) fn take_released(&mut self) -> bool {
        std::mem::take(&mut self.released)
    }

    /// Registers event `id` as untracked under the next sequence number, with the
    /// reply handle `reply(seq)`. `None` when `id` is live already (a return could
    /// not tell the two apart): the id is then marked contested, and
    /// [`take_released`](Self::take_released) reports when it is free.
    pub(super) fn reserve(&mut self, id: Uuid, reply: impl FnOnce(u64) -> R) -> Option<(u64, &R)> {
        if self.by_id.contains_key(&id) {
            self.contested.insert(id);
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push(
            seq,
            Entry {
                id,
                stage: Stage::Untracked,
                reply: reply(seq),
                replied: false,
            },
        );
        self.by_id.insert(id, seq);
        self.untracked.insert(seq);
        self.entries.get(seq).map(|entry| (seq, &entry.reply))
    }

    /// `basic_publish` of `seq` gave its confirm: it is pending until
    /// [`complete`](Self::complete).
    pub(super) fn track(&mut self, seq: u64, confirm: P) {
        self.untracked.remove(&seq);
        if let Some(entry) = self.entries.get_mut(seq) {
            entry.stage = Stage::Pending(confirm);
        }
    }

    /// The pending confirm of `seq` and its reply handle, for the tracker to poll.
    pub(super) fn pending(&mut self, seq: u64) -> Option<(&mut P, &R)> {
        let entry = self.entries.get_mut(seq)?;
        match &mut entry.stage {
            Stage::Pending(confirm) => Some((confirm, &entry.reply)),
            Stage::Untracked | Stage::Done => None,
        }
    }

    /// `basic_publish` of `seq` failed (`None`: its publish was abandoned, and the
    /// confirm cannot be tracked): the channel can no longer prove anything.
    pub(super) fn publish_failed(&mut self, seq: u64, error: Option<lapin::Error>) {
        self.untracked.remove(&seq);
        let Some(entry) = self.entries.get_mut(seq) else {
            return;
        };
        entry.stage = Stage::Done;
        self.failed = true;
        self.settle(seq, Outcome::NotSent(error));
    }

    /// The publish of `seq` was dropped before its first poll: nothing was sent and
    /// no delivery tag taken, so there is nothing to track; forget it. Settlements it
    /// held back may be possible at the next [`settle_awaiting`](Self::settle_awaiting).
    pub(super) fn withdraw(&mut self, seq: u64) {
        self.untracked.remove(&seq);
        self.forget(seq);
    }

    /// The pending confirm of `seq` completed, as the `rank`-th completion.
    pub(super) fn complete(&mut self, seq: u64, rank: Rank, completion: Completion) {
        let Some(entry) = self.entries.get_mut(seq) else {
            return;
        };
        if !matches!(entry.stage, Stage::Pending(_)) {
            return;
        }
        entry.stage = Stage::Done;
        let carrier = entry.id;
        let (rank, exact) = match rank {
            Rank::Exact(rank) => (rank, true),
            Rank::Observed(rank) => (rank, false),
        };
        let barrier = self.next_seq;
        match completion {
            Completion::Ack(returned) => {
                let is_witness = returned.is_none();
                if let Some(returned) = returned {
                    if returned.event_id != Some(carrier) {
                        self.reattributed += 1;
                        crate::telemetry::return_reattributed();
                    }
                    self.record_return(returned);
                }
                if is_witness && exact {
                    self.witnesses.push_back(Witness { rank, barrier });
                }
                // Its own return (if it carried it) has settled and forgotten it.
                if self.entries.get(seq).is_some() && !self.settle_if_returned(seq) {
                    self.awaiting.insert(
                        seq,
                        Awaiting {
                            rank,
                            own_barrier: is_witness.then_some(barrier),
                        },
                    );
                }
            }
            Completion::Nack(returned) => {
                let is_witness = returned.is_none();
                if let Some(returned) = returned {
                    self.record_return(returned);
                }
                if is_witness && exact {
                    self.witnesses.push_back(Witness { rank, barrier });
                }
                if !self.settle_if_returned(seq) {
                    self.settle(seq, Outcome::Nacked);
                }
            }
            Completion::NotRequested => {
                self.failed = true;
                self.settle(seq, Outcome::Failed(None));
            }
            Completion::Failed(error) => {
                self.failed = true;
                self.settle(seq, Outcome::Failed(error));
            }
        }
    }

    /// Records a return under its event and settles that event as unroutable.
    fn record_return(&mut self, returned: Returned) {
        let Returned {
            event_id,
            reply_code,
            reply_text,
        } = returned;
        let Some(id) = event_id else {
            tracing::warn!(reply_code, %reply_text, "broker returned a message without an event id");
            return;
        };
        let Some(&seq) = self.by_id.get(&id) else {
            return;
        };
        self.returned.insert(id, (reply_code, reply_text));
        self.settle_if_returned(seq);
    }

    /// Settles `seq` as unroutable if its return has been seen.
    fn settle_if_returned(&mut self, seq: u64) -> bool {
        let Some(entry) = self.entries.get(seq) else {
            return false;
        };
        let Some((reply_code, reply_text)) = self.returned.get(&entry.id).cloned() else {
            return false;
        };
        self.awaiting.remove(&seq);
        self.settle(
            seq,
            Outcome::Unroutable {
                reply_code,
                reply_text,
            },
        );
        true
    }

    /// Settles the acked events whose return, if any, must have been seen by now:
    /// routed. Call it after every round of completions, once all of them have been
    /// handed over (a settlement is only sound once every completion ranked before
    /// its witness has been recorded).
    pub(super) fn settle_awaiting(&mut self) {
        if self.awaiting.is_empty() {
            self.witnesses.clear();
            return;
        }
        let oldest_untracked = self.untracked.first().copied().unwrap_or(u64::MAX);
        let mut settled = std::mem::take(&mut self.settled);
        if self.failed && self.untracked.is_empty() {
            // Returns may be lost with the channel: the broker acked these events but
            // whether they were routed cannot be known any more.
            settled.extend(self.awaiting.drain().map(|(seq, _)| seq));
            for &seq in &settled {
                self.settle(seq, Outcome::Unknown);
            }
            settled.clear();
            self.settled = settled;
            return;
        }
        settled.extend(
            self.awaiting
                .iter()
                .filter(|(_, awaiting)| {
                    if awaiting.own_barrier.is_some_and(|b| b <= oldest_untracked) {
                        return true;
                    }
                    // The first witness that completed after this event.
                    let first = self.witnesses.partition_point(|w| w.rank <= awaiting.rank);
                    self.witnesses
                        .get(first)
                        .is_some_and(|w| w.barrier <= oldest_untracked)
                })
                .map(|(&seq, _)| seq),
        );
        for &seq in &settled {
            self.awaiting.remove(&seq);
            self.settle(seq, Outcome::Routed);
        }
        settled.clear();
        self.settled = settled;
        // Witnesses older than every awaiting event are no longer needed.
        let min_rank = self.awaiting.values().map(|a| a.rank).min();
        match min_rank {
            None => self.witnesses.clear(),
            Some(min) => {
                let keep_from = self.witnesses.partition_point(|w| w.rank <= min);
                self.witnesses.drain(..keep_from);
            }
        }
    }

    /// Sends the outcome of `seq` (once) and forgets it when its confirm is done.
    fn settle(&mut self, seq: u64, outcome: Outcome) {
        let Some(entry) = self.entries.get_mut(seq) else {
            return;
        };
        if !entry.replied {
            entry.replied = true;
            // The caller may have gone (timeout); the outcome then only matters for others.
            entry.reply.deliver(outcome);
        }
        if matches!(entry.stage, Stage::Done) {
            self.forget(seq);
        }
    }

    /// Forgets a settled entry.
    fn forget(&mut self, seq: u64) {
        if let Some(entry) = self.entries.remove(seq) {
            self.by_id.remove(&entry.id);
            if !self.returned.is_empty() {
                self.returned.remove(&entry.id);
            }
            if !self.contested.is_empty() && self.contested.remove(&entry.id) {
                self.released = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The argument of the module docs, case by case, with plain data: confirms are
    //! `()`, completions are handed over as the tracker would after polling them, and
    //! every event records the outcomes delivered to it.

    use std::{cell::RefCell, rc::Rc};

    use super::*;

    /// An outcome, comparable.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Routed,
        Unroutable(u16, String),
        Nacked,
        Failed { with_error: bool },
        Unknown,
    }

    #[derive(Debug, Clone, Default)]
    struct Inbox(Rc<RefCell<Vec<Got>>>);

    impl Reply for Inbox {
        fn deliver(&self, outcome: Outcome) {
            self.0.borrow_mut().push(match outcome {
                Outcome::Routed => Got::Routed,
                Outcome::Unroutable {
                    reply_code,
                    reply_text,
                } => Got::Unroutable(reply_code, reply_text),
                Outcome::Nacked => Got::Nacked,
                Outcome::Failed(error) | Outcome::NotSent(error) => Got::Failed {
                    with_error: error.is_some(),
                },
                Outcome::Unknown => Got::Unknown,
            });
        }
    }

    #[derive(Debug, Clone)]
    struct Ev {
        id: Uuid,
        seq: u64,
        inbox: Inbox,
    }

    impl Ev {
        /// Every outcome delivered so far, in order.
        fn got(&self) -> Vec<Got> {
            self.inbox.0.borrow().clone()
        }
    }

    fn unroutable() -> Got {
        Got::Unroutable(312, "NO_ROUTE".into())
    }

    /// The return of the event with id `id` (312 NO_ROUTE).
    fn return_of(id: Uuid) -> Option<Returned> {
        Some(Returned {
            event_id: Some(id),
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        })
    }

    fn ack() -> Completion {
        Completion::Ack(None)
    }

    fn ack_with_return_of(ev: &Ev) -> Completion {
        Completion::Ack(return_of(ev.id))
    }

    /// One channel's state, with the ranks lapin's completions would get.
    struct Channel {
        state: State<(), Inbox>,
        next_id: u128,
        next_rank: u64,
    }

    impl Channel {
        fn new() -> Self {
            Self {
                state: State::new(),
                next_id: 1,
                next_rank: 0,
            }
        }

        /// A new event whose `basic_publish` is running (untracked).
        fn publish(&mut self) -> Ev {
            let id = Uuid::from_u128(self.next_id);
            self.next_id += 1;
            self.publish_id(id).expect("a fresh id is free")
        }

        fn publish_id(&mut self, id: Uuid) -> Option<Ev> {
            let inbox = Inbox::default();
            let (seq, _) = self.state.reserve(id, |_| inbox.clone())?;
            Some(Ev { id, seq, inbox })
        }

        /// `basic_publish` returned the confirm of `ev`.
        fn hand_off(&mut self, ev: &Ev) {
            self.state.track(ev.seq, ());
        }

        /// A new event, handed off at once.
        fn tracked(&mut self) -> Ev {
            let ev = self.publish();
            self.hand_off(&ev);
            ev
        }

        /// lapin completed the confirm of `ev` (exactly ranked, after every earlier one).
        fn complete(&mut self, ev: &Ev, completion: Completion) {
            let rank = self.next_rank;
            self.next_rank += 1;
            self.state.complete(ev.seq, Rank::Exact(rank), completion);
        }

        /// The confirm of `ev` was found complete on its first poll (ranked late).
        fn complete_observed(&mut self, ev: &Ev, completion: Completion) {
            let rank = self.next_rank;
            self.next_rank += 1;
            self.state
                .complete(ev.seq, Rank::Observed(rank), completion);
        }

        /// The end of the tracker's round.
        fn settle(&mut self) {
            self.state.settle_awaiting();
        }
    }

    #[test]
    fn a_lone_ack_is_routed_and_forgotten() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        assert_eq!(a.got(), []);
        ch.complete(&a, ack());
        ch.settle();
        assert_eq!(a.got(), [Got::Routed]);
        assert!(ch.state.is_empty());
        assert!(!ch.state.has_failed());
        assert_eq!(ch.state.reattributed, 0);
    }

    #[test]
    fn an_ack_observed_on_the_first_poll_is_its_own_witness() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        ch.complete_observed(&a, ack());
        ch.settle();
        assert_eq!(a.got(), [Got::Routed]);
        assert!(ch.state.is_empty());
    }

    #[test]
    fn an_ack_carrying_another_events_return_settles_that_event_and_waits_for_a_witness() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        let b = ch.tracked();
        ch.complete(&a, ack_with_return_of(&b));
        ch.settle();
        assert_eq!(
            b.got(),
            [unroutable()],
            "settled from the other event's confirm"
        );
        assert_eq!(a.got(), [], "the carrier is not proved routed yet");
        assert_eq!(ch.state.reattributed, 1);

        // B's own confirm completes with no return: B is not settled twice, and it
        // witnesses that A's return (if any) was seen before.
        ch.complete(&b, ack());
        ch.settle();
        assert_eq!(b.got(), [unroutable()]);
        assert_eq!(a.got(), [Got::Routed]);
        assert!(ch.state.is_empty());
        assert_eq!(ch.state.reattributed, 1);
    }

    #[test]
    fn an_ack_carrying_its_own_return_is_unroutable_and_not_reattributed() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        ch.complete(&a, ack_with_return_of(&a));
        ch.settle();
        assert_eq!(a.got(), [unroutable()]);
        assert!(ch.state.is_empty());
        assert_eq!(ch.state.reattributed, 0);
    }

    #[test]
    fn a_return_seen_before_the_events_own_ack_wins_over_it() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        let b = ch.tracked();
        let c = ch.tracked();
        ch.complete(&a, ack_with_return_of(&c));
        ch.complete(&c, ack());
        ch.complete(&b, ack());
        ch.settle();
        assert_eq!(c.got(), [unroutable()]);
        assert_eq!(a.got(), [Got::Routed]);
        assert_eq!(b.got(), [Got::Routed]);
        assert!(ch.state.is_empty());
    }

    #[test]
    fn an_event_settled_by_an_earlier_return_is_forgotten_at_its_own_ack() {
        let mut ch = Channel::new();
        let a = ch.publish();
        let b = ch.tracked();
        let c = ch.tracked();
        ch.complete(&b, ack_with_return_of(&c));
        ch.complete(&c, ack());
        ch.settle();
        assert_eq!(c.got(), [unroutable()]);
        assert_eq!(b.got(), [], "A is still publishing");
        assert!(
            ch.publish_id(c.id).is_some(),
            "C is settled and complete: not left waiting behind A"
        );
        ch.hand_off(&a);
        ch.settle();
        assert_eq!(b.got(), [Got::Routed]);
        assert_eq!(a.got(), []);
    }

    #[test]
    fn a_witness_completing_after_an_event_settles_it_routed() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        let b = ch.tracked();
        // A carries the return of an event that is no longer live: A is no witness.
        ch.complete(&a, Completion::Ack(return_of(Uuid::from_u128(999))));
        ch.settle();
        assert_eq!(a.got(), []);
        ch.complete(&b, ack());
        ch.settle();
        assert_eq!(a.got(), [Got::Routed]);
        assert_eq!(b.got(), [Got::Routed]);
        assert!(ch.state.is_empty());
    }

    #[test]
    fn a_witness_completing_before_an_event_does_not_settle_it() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        let b = ch.tracked();
        let c = ch.tracked();
        let gone = Uuid::from_u128(999);
        ch.complete(&b, ack());
        ch.complete(&a, Completion::Ack(return_of(gone)));
        ch.settle();
        assert_eq!(b.got(), [Got::Routed]);
        assert_eq!(a.got(), [], "B's witness is older than A's completion");
        ch.complete(&c, ack());
        ch.settle();
        assert_eq!(a.got(), [Got::Routed]);
        assert_eq!(c.got(), [Got::Routed]);
        assert!(ch.state.is_empty());
    }

    #[test]
    fn a_completion_observed_late_is_no_witness_for_others() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        let b = ch.tracked();
        let c = ch.tracked();
        ch.complete(&a, Completion::Ack(return_of(Uuid::from_u128(999))));
        // B's rank is later than its true completion, which may precede A's.
        ch.complete_observed(&b, ack());
        ch.settle();
        assert_eq!(b.got(), [Got::Routed]);
        assert_eq!(a.got(), []);
        ch.complete(&c, ack());
        ch.settle();
        assert_eq!(a.got(), [Got::Routed]);
        assert_eq!(c.got(), [Got::Routed]);
    }

    #[test]
    fn an_untracked_earlier_publish_blocks_the_conclusion_until_handed_off() {
        let mut ch = Channel::new();
        let a = ch.publish();
        let b = ch.tracked();
        ch.complete(&b, ack());
        ch.settle();
        assert_eq!(b.got(), [], "A's confirm may have carried B's return");
        // A later witness does not help while A is untracked.
        let c = ch.tracked();
        ch.complete(&c, ack());
        ch.settle();
        assert_eq!(b.got(), []);
        assert_eq!(c.got(), []);

        ch.hand_off(&a);
        ch.settle();
        assert_eq!(b.got(), [Got::Routed]);
        assert_eq!(c.got(), [Got::Routed]);
        assert_eq!(a.got(), []);
        ch.complete(&a, ack());
        ch.settle();
        assert_eq!(a.got(), [Got::Routed]);
        assert!(ch.state.is_empty());
    }

    #[test]
    fn an_untracked_later_publish_does_not_block_an_earlier_witness() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        ch.complete(&a, ack());
        let b = ch.publish();
        ch.settle();
        assert_eq!(a.got(), [Got::Routed]);
        assert_eq!(b.got(), []);
    }

    #[test]
    fn a_return_for_an_untracked_event_settles_it_and_keeps_it_live_until_its_confirm_completes() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        let b = ch.publish();
        ch.complete(&a, ack_with_return_of(&b));
        ch.settle();
        assert_eq!(b.got(), [unroutable()]);
        assert!(
            ch.publish_id(b.id).is_none(),
            "live until its own confirm completes"
        );
        ch.hand_off(&b);
        ch.complete(&b, ack());
        ch.settle();
        assert_eq!(b.got(), [unroutable()]);
        assert_eq!(a.got(), [Got::Routed]);
        assert!(ch.state.is_empty());
    }

    #[test]
    fn withdrawing_an_unstarted_publish_forgets_it_and_unblocks_others() {
        let mut ch = Channel::new();
        let a = ch.publish();
        let b = ch.tracked();
        ch.complete(&b, ack());
        ch.settle();
        assert_eq!(b.got(), []);
        ch.state.withdraw(a.seq);
        ch.settle();
        assert_eq!(b.got(), [Got::Routed]);
        assert_eq!(a.got(), [], "nothing was sent: no outcome");
        assert!(ch.state.is_empty());
        assert!(ch.publish_id(a.id).is_some(), "its id is free again");
    }

    #[test]
    fn a_nack_is_nacked_and_a_witness() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        let b = ch.tracked();
        ch.complete(&a, Completion::Ack(return_of(Uuid::from_u128(999))));
        ch.complete(&b, Completion::Nack(None));
        ch.settle();
        assert_eq!(b.got(), [Got::Nacked]);
        assert_eq!(a.got(), [Got::Routed]);
        assert!(ch.state.is_empty());
        assert!(!ch.state.has_failed());
    }

    #[test]
    fn a_nack_carrying_another_events_return_settles_both() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        let b = ch.tracked();
        ch.complete(&a, Completion::Nack(return_of(b.id)));
        ch.settle();
        assert_eq!(a.got(), [Got::Nacked]);
        assert_eq!(b.got(), [unroutable()]);
        ch.complete(&b, ack());
        ch.settle();
        assert_eq!(b.got(), [unroutable()]);
        assert!(ch.state.is_empty());
    }

    #[test]
    fn a_nacked_event_whose_return_was_seen_is_unroutable() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        ch.complete(&a, Completion::Nack(return_of(a.id)));
        ch.settle();
        assert_eq!(a.got(), [unroutable()]);
        assert!(ch.state.is_empty());
    }

    #[test]
    fn channel_failure_settles_awaiting_events_unknown_once_nothing_is_untracked() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        let b = ch.tracked();
        let c = ch.publish();
        ch.complete(&a, Completion::Ack(return_of(Uuid::from_u128(999))));
        ch.settle();
        assert_eq!(a.got(), []);

        // The channel dies: lapin fails the pending confirm.
        let error = lapin::Error::from(lapin::ErrorKind::MissingHeartbeatError);
        ch.complete(&b, Completion::Failed(Some(error)));
        ch.settle();
        assert!(ch.state.has_failed());
        assert_eq!(b.got(), [Got::Failed { with_error: true }]);
        assert_eq!(a.got(), [], "C is still publishing");

        ch.state.publish_failed(c.seq, None);
        ch.settle();
        assert_eq!(c.got(), [Got::Failed { with_error: false }]);
        assert_eq!(a.got(), [Got::Unknown]);
        assert!(ch.state.is_empty());
    }

    #[test]
    fn after_a_failure_an_ack_without_witness_is_unknown_and_a_return_still_counts() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        let b = ch.tracked();
        let c = ch.tracked();
        ch.complete(&a, Completion::NotRequested);
        assert_eq!(a.got(), [Got::Failed { with_error: false }]);
        ch.complete(&b, ack_with_return_of(&c));
        ch.settle();
        assert_eq!(c.got(), [unroutable()]);
        assert_eq!(b.got(), [Got::Unknown]);
        ch.complete(&c, Completion::Failed(None));
        ch.settle();
        assert_eq!(c.got(), [unroutable()]);
        assert!(ch.state.is_empty());
    }

    #[test]
    fn a_publish_that_fails_marks_the_channel_failed() {
        let mut ch = Channel::new();
        let a = ch.publish();
        let error = lapin::Error::from(lapin::ErrorKind::MissingHeartbeatError);
        ch.state.publish_failed(a.seq, Some(error));
        ch.settle();
        assert_eq!(a.got(), [Got::Failed { with_error: true }]);
        assert!(ch.state.has_failed());
        assert!(ch.state.is_empty());
    }

    #[test]
    fn an_id_is_live_once_and_released_when_forgotten() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        assert!(ch.publish_id(a.id).is_none(), "still publishing");
        ch.complete(&a, Completion::Ack(return_of(Uuid::from_u128(999))));
        ch.settle();
        assert!(ch.publish_id(a.id).is_none(), "acked, awaiting a witness");
        assert!(!ch.state.take_released());

        let b = ch.tracked();
        ch.complete(&b, ack());
        ch.settle();
        assert_eq!(a.got(), [Got::Routed]);
        assert!(ch.state.take_released(), "a publish waits for A's id");
        assert!(!ch.state.take_released(), "reported once");
        let again = ch.publish_id(a.id).expect("free again");
        assert_eq!(again.seq, 2);
    }

    #[test]
    fn forgetting_an_uncontested_id_notifies_no_one() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        ch.complete(&a, ack());
        ch.settle();
        assert_eq!(a.got(), [Got::Routed]);
        assert!(!ch.state.take_released());
    }

    #[test]
    fn a_return_without_a_known_event_id_is_ignored() {
        let mut ch = Channel::new();
        let a = ch.tracked();
        let b = ch.tracked();
        let c = ch.tracked();
        ch.complete(
            &a,
            Completion::Ack(Some(Returned {
                event_id: None,
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
            })),
        );
        ch.complete(&b, Completion::Ack(return_of(Uuid::from_u128(999))));
        ch.settle();
        assert_eq!(a.got(), [], "a return makes no witness, whoever it names");
        assert_eq!(b.got(), []);
        assert_eq!(c.got(), []);
        assert_eq!(ch.state.reattributed, 2);
        ch.complete(&c, ack());
        ch.settle();
        assert_eq!(a.got(), [Got::Routed]);
        assert_eq!(b.got(), [Got::Routed]);
        assert_eq!(c.got(), [Got::Routed]);
        assert!(ch.state.is_empty());
    }

    #[test]
    fn entries_are_forgotten_out_of_order() {
        let mut ch = Channel::new();
        let evs: Vec<Ev> = (0..4).map(|_| ch.tracked()).collect();
        for i in [2, 0, 3, 1] {
            ch.complete(&evs[i], ack());
            ch.settle();
            assert_eq!(evs[i].got(), [Got::Routed]);
        }
        assert!(ch.state.is_empty());
        assert!(ch.state.entries.slots.is_empty());
        assert_eq!(ch.tracked().seq, 4);
    }
}
