//! The breaker's state machine: one [`State`] behind a mutex, timed on tokio's clock,
//! with failsafe's failure policy deciding when to open and for how long.
//!
//! Nothing here knows about tower or about publish errors: calls come in through
//! [`Breaker::admit`] and leave through [`Permit::settle`] with a [`Verdict`].
//!
//! The invariant that keeps one probe at a time: a probe [`Permit`] exists exactly
//! while the state is `HalfOpen { probe_in_flight: true }`, and only that permit
//! leaves this state (settled, or dropped).

use std::{
    collections::VecDeque,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use failsafe::{
    backoff::{self, Constant},
    failure_policy::{self, ConsecutiveFailures, FailurePolicy},
};
use tokio::time::Instant;

use crate::telemetry::BreakerGauge;

/// The state of a circuit breaker, as [`BreakerHandle::state`] reports it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Events go through; failures are being counted.
    Closed,
    /// The broker has been failing: events are refused with `CircuitOpen`.
    Open,
    /// The open period is over: one probe event is let through to test the broker.
    HalfOpen,
}

impl BreakerState {
    /// `"closed"`, `"open"` or `"half_open"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A read-only view of a breaker, for health checks and metrics.
#[derive(Clone, Debug)]
pub struct BreakerHandle {
    breaker: Arc<Breaker>,
}

impl BreakerHandle {
    pub(super) fn new(breaker: Arc<Breaker>) -> Self {
        Self { breaker }
    }

    /// The current state. An open breaker whose open period has passed reports
    /// [`HalfOpen`](BreakerState::HalfOpen) at once, before a call arrives to probe.
    pub fn state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The number of consecutive broker failures that opens the breaker.
    pub fn failure_threshold(&self) -> u32 {
        self.breaker.failure_threshold
    }

    /// How long the breaker stays open before it lets a probe through.
    pub fn open_for(&self) -> Duration {
        self.breaker.open_for
    }

    /// Ends the open period now, when the breaker is open: the next call is the
    /// probe. For a signal that the backend is back — the
    /// [`EventPublisher`](crate::EventPublisher) calls it when its transport has opened a
    /// new connection or the broker unblocked one — so that publishing resumes with
    /// the broker, not when a timer runs out. A closed or half-open breaker is left as
    /// it is, and the probe still decides: if it fails, the breaker opens again.
    pub fn probe_now(&self) {
        let mut machine = self.breaker.lock();
        if let State::Open { .. } = machine.state {
            machine.state = State::HalfOpen {
                probe_in_flight: false,
            };
            drop(machine);
            crate::telemetry::breaker_entered(BreakerGauge::HalfOpen);
            tracing::info!("circuit breaker half-open: the broker is reachable again");
        }
    }
}

/// What one finished call says about the broker (decided by `verdict` in the
/// module root).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The broker answered: it is healthy.
    Success,
    /// The broker is failing.
    Failure,
    /// The connection of this generation was lost: one failure, however many calls
    /// report it.
    ConnectionLost(u64),
    /// Nothing about the broker: not recorded.
    Ignore,
}

/// failsafe's policy: `failure_threshold` consecutive failures open the breaker, for
/// `open_for` each time.
type Policy = ConsecutiveFailures<Constant>;

/// The one source of truth.
#[derive(Debug)]
enum State {
    /// Calls go through; the policy counts their outcomes.
    Closed,
    /// Calls are refused until `until`. `None`: the end of the open period lies
    /// beyond what the clock can represent, so the breaker never turns half-open.
    Open { until: Option<Instant> },
    /// The open period is over: the next call is the probe, and only one at a time.
    HalfOpen { probe_in_flight: bool },
}

/// How many recently lost connection generations are remembered, so that late
/// errors from one of them are not counted again. Far more than a pool has
/// connections; the oldest is forgotten first.
const REMEMBERED_GENERATIONS: usize = 64;

#[derive(Debug)]
struct Machine {
    state: State,
    policy: Policy,
    /// The lost connection generations already counted, oldest first.
    counted: VecDeque<u64>,
}

impl Machine {
    /// Whether the loss of connection `generation` is new (and remembers it).
    fn first_loss_of(&mut self, generation: u64) -> bool {
        if self.counted.contains(&generation) {
            return false;
        }
        if self.counted.len() == REMEMBERED_GENERATIONS {
            self.counted.pop_front();
        }
        self.counted.push_back(generation);
        true
    }
}

/// The breaker shared by a layer, its services, their futures and handles.
pub(super) struct Breaker {
    machine: Mutex<Machine>,
    failure_threshold: u32,
    open_for: Duration,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("failure_threshold", &self.failure_threshold)
            .field("open_for", &self.open_for)
            .finish_non_exhaustive()
    }
}

impl Breaker {
    /// A closed breaker; a `failure_threshold` of 0 is treated as 1.
    pub(super) fn new(failure_threshold: u32, open_for: Duration) -> Self {
        let failure_threshold = failure_threshold.max(1);
        let policy =
            failure_policy::consecutive_failures(failure_threshold, backoff::constant(open_for));
        Self {
            machine: Mutex::new(Machine {
                state: State::Closed,
                policy,
                counted: VecDeque::new(),
            }),
            failure_threshold,
            open_for,
        }
    }

    /// The state lock. The sections under it cannot leave the state half-changed, so
    /// a panic elsewhere while it was held (poisoning) is no reason to stop working.
    fn lock(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn state(&self) -> BreakerState {
        match self.lock().state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if is_over(until) => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Lets a call through, or not (`None`: refuse it). When closed: one uncontended
    /// lock and an `Arc` clone.
    pub(super) fn admit(self: &Arc<Self>) -> Option<Permit> {
        let mut machine = self.lock();
        let (probe, period_over) = match machine.state {
            State::Closed => (false, false),
            State::Open { until } if is_over(until) => (true, true),
            State::HalfOpen {
                probe_in_flight: false,
            } => (true, false),
            State::Open { .. }
            | State::HalfOpen {
                probe_in_flight: true,
            } => return None,
        };
        if probe {
            machine.state = State::HalfOpen {
                probe_in_flight: true,
            };
        }
        drop(machine);
        if period_over {
            Transition::HalfOpened.log(self);
        }
        Some(Permit {
            breaker: self.clone(),
            probe,
            settled: false,
        })
    }

    fn record(&self, probe: bool, verdict: Verdict) {
        let mut machine = self.lock();
        let transition = if probe {
            machine.settle_probe(verdict, self.open_for)
        } else if matches!(machine.state, State::Closed) {
            machine.record_closed(verdict)
        } else {
            // A call let through while closed that finishes after the breaker opened:
            // a failure cannot open it further, and only the probe decides whether
            // it closes.
            None
        };
        drop(machine);
        if let Some(transition) = transition {
            transition.log(self);
        }
    }
}

impl Machine {
    /// A verdict while closed: the policy counts it and may open the breaker.
    fn record_closed(&mut self, verdict: Verdict) -> Option<Transition> {
        match verdict {
            Verdict::Success => {
                self.policy.record_success();
                None
            }
            Verdict::ConnectionLost(generation) if !self.first_loss_of(generation) => None,
            Verdict::Failure | Verdict::ConnectionLost(_) => {
                let open_for = self.policy.mark_dead_on_failure()?;
                self.state = open_until(open_for);
                Some(Transition::Opened { open_for })
            }
            Verdict::Ignore => None,
        }
    }

    /// The probe's verdict: it closes the breaker, opens it again, or lets the next
    /// call be the probe.
    fn settle_probe(&mut self, verdict: Verdict, open_for: Duration) -> Option<Transition> {
        debug_assert!(
            matches!(
                self.state,
                State::HalfOpen {
                    probe_in_flight: true
                }
            ),
            "a probe settled while {:?}",
            self.state
        );
        match verdict {
            Verdict::Success => {
                self.policy.revived();
                self.state = State::Closed;
                Some(Transition::Closed)
            }
            Verdict::Failure | Verdict::ConnectionLost(_) => {
                if let Verdict::ConnectionLost(generation) = verdict {
                    self.first_loss_of(generation);
                }
                // failsafe's rule for a failed probe: the policy's next backoff, or the
                // last period again if the policy does not ask for one.
                let open_for = self.policy.mark_dead_on_failure().unwrap_or(open_for);
                self.state = open_until(open_for);
                Some(Transition::Reopened { open_for })
            }
            Verdict::Ignore => {
                self.state = State::HalfOpen {
                    probe_in_flight: false,
                };
                None
            }
        }
    }
}

/// A change of state worth a log line (logged after the lock is released).
enum Transition {
    Opened { open_for: Duration },
    HalfOpened,
    Reopened { open_for: Duration },
    Closed,
}

impl Transition {
    fn log(self, breaker: &Breaker) {
        crate::telemetry::breaker_entered(match self {
            Transition::Opened { .. } | Transition::Reopened { .. } => BreakerGauge::Open,
            Transition::HalfOpened => BreakerGauge::HalfOpen,
            Transition::Closed => BreakerGauge::Closed,
        });
        match self {
            Transition::Opened { open_for } => tracing::warn!(
                failure_threshold = breaker.failure_threshold,
                open_for_ms = millis(open_for),
                "circuit breaker opened: the broker has been failing; events are refused"
            ),
            Transition::HalfOpened => {
                tracing::info!("circuit breaker half-open: letting one probe event through")
            }
            Transition::Reopened { open_for } => tracing::warn!(
                open_for_ms = millis(open_for),
                "circuit breaker re-opened: a call failed while half-open; events are refused"
            ),
            Transition::Closed => {
                tracing::info!("circuit breaker closed: the broker answered the probe")
            }
        }
    }
}

/// Whether an open period ending at `until` is over.
fn is_over(until: Option<Instant>) -> bool {
    until.is_some_and(|until| Instant::now() >= until)
}

fn open_until(open_for: Duration) -> State {
    State::Open {
        until: Instant::now().checked_add(open_for),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An admitted call; records its verdict exactly once, when settled or when dropped.
#[derive(Debug)]
pub(super) struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

impl Permit {
    /// Records what the call said about the broker.
    pub(super) fn settle(mut self, verdict: Verdict) {
        self.settled = true;
        self.breaker.record(self.probe, verdict);
    }
}

impl Drop for Permit {
    /// A call dropped before it finished (an outer timeout, a cancelled request) says
    /// nothing about the broker, except for the probe: left unrecorded, it would keep
    /// the breaker waiting for an answer that never comes, so it counts as a failure.
    fn drop(&mut self) {
        if !self.settled {
            tracing::debug!(
                probe = self.probe,
                "publish dropped before the broker answered"
            );
            let verdict = if self.probe {
                Verdict::Failure
            } else {
                Verdict::Ignore
            };
            self.breaker.record(self.probe, verdict);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::advance;

    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(10);
    const TICK: Duration = Duration::from_millis(1);

    fn breaker(failure_threshold: u32, open_for: Duration) -> (Arc<Breaker>, BreakerHandle) {
        let breaker = Arc::new(Breaker::new(failure_threshold, open_for));
        (breaker.clone(), BreakerHandle::new(breaker))
    }

    fn call(breaker: &Arc<Breaker>, verdict: Verdict) {
        breaker.admit().expect("admitted").settle(verdict);
    }

    /// A threshold-1 breaker, opened, whose open period has just ended.
    async fn opened_then_waited() -> (Arc<Breaker>, BreakerHandle) {
        let (breaker, handle) = breaker(1, OPEN_FOR);
        call(&breaker, Verdict::Failure);
        assert_eq!(handle.state(), BreakerState::Open);
        advance(OPEN_FOR - TICK).await;
        assert!(breaker.admit().is_none());
        assert_eq!(handle.state(), BreakerState::Open);
        advance(TICK).await;
        (breaker, handle)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures() {
        let (breaker, handle) = breaker(3, OPEN_FOR);
        for _ in 0..2 {
            call(&breaker, Verdict::Failure);
            assert_eq!(handle.state(), BreakerState::Closed);
        }
        call(&breaker, Verdict::Failure);
        assert_eq!(handle.state(), BreakerState::Open);
        assert!(breaker.admit().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_and_ignored_calls_do_not() {
        let (breaker, handle) = breaker(3, OPEN_FOR);
        for verdict in [
            Verdict::Failure,
            Verdict::Failure,
            Verdict::Success,
            Verdict::Failure,
            Verdict::Failure,
            Verdict::Ignore,
            Verdict::Ignore,
        ] {
            call(&breaker, verdict);
        }
        assert_eq!(handle.state(), BreakerState::Closed);
        call(&breaker, Verdict::Failure);
        assert_eq!(handle.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_counts_once_however_many_calls_it_failed() {
        let (breaker, handle) = breaker(2, OPEN_FOR);
        // 128 publishes in flight on connection 1 fail together.
        let in_flight: Vec<_> = (0..128).map(|_| breaker.admit().unwrap()).collect();
        for permit in in_flight {
            permit.settle(Verdict::ConnectionLost(1));
            advance(TICK).await;
        }
        assert_eq!(handle.state(), BreakerState::Closed, "one failure, not 128");
        // Their retries on a fresh connection succeed: the count starts again.
        call(&breaker, Verdict::Success);
        // The fresh connection is closed too (a second routine close), then a third:
        // each is one failure, and confirms between them heal it.
        for generation in [2, 3] {
            for _ in 0..64 {
                call(&breaker, Verdict::ConnectionLost(generation));
            }
            assert_eq!(handle.state(), BreakerState::Closed);
            call(&breaker, Verdict::Success);
        }
        // A late error from an already counted connection is still not counted again.
        call(&breaker, Verdict::ConnectionLost(1));
        call(&breaker, Verdict::Failure);
        assert_eq!(handle.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_lost_again_and_again_without_a_confirm_open_it() {
        let (breaker, handle) = breaker(3, OPEN_FOR);
        // Each reconnect is lost before anything is confirmed: reconnects do not heal.
        for generation in 10..12 {
            for _ in 0..5 {
                call(&breaker, Verdict::ConnectionLost(generation));
            }
            advance(Duration::from_millis(200)).await;
            assert_eq!(handle.state(), BreakerState::Closed);
        }
        call(&breaker, Verdict::ConnectionLost(12));
        assert_eq!(handle.state(), BreakerState::Open);
        advance(OPEN_FOR).await;
        // A probe on a connection lost before (a stale channel) reopens it.
        breaker.admit().unwrap().settle(Verdict::ConnectionLost(12));
        assert_eq!(handle.state(), BreakerState::Open);
        advance(OPEN_FOR).await;
        call(&breaker, Verdict::Success);
        assert_eq!(handle.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_connection_attempts_and_timeouts_each_count() {
        let (breaker, handle) = breaker(3, OPEN_FOR);
        call(&breaker, Verdict::Failure); // connect refused: no generation
        call(&breaker, Verdict::ConnectionLost(20));
        assert_eq!(handle.state(), BreakerState::Closed);
        call(&breaker, Verdict::Failure); // an attempt timed out
        assert_eq!(handle.state(), BreakerState::Open);
    }

    #[test]
    fn only_the_latest_generations_are_remembered() {
        let (breaker, handle) = breaker(u32::MAX, OPEN_FOR);
        for generation in 0..(REMEMBERED_GENERATIONS as u64 + 1) {
            call(&breaker, Verdict::ConnectionLost(generation));
        }
        let machine = breaker.lock();
        assert_eq!(machine.counted.len(), REMEMBERED_GENERATIONS);
        assert_eq!(machine.counted.front(), Some(&1));
        drop(machine);
        assert_eq!(handle.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn reports_half_open_once_the_period_is_over_without_a_call() {
        let (_breaker, handle) = opened_then_waited().await;
        assert_eq!(handle.state(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_one_probe_at_a_time() {
        let (breaker, handle) = opened_then_waited().await;
        let probe = breaker.admit().expect("the probe");
        assert!(probe.probe);
        for _ in 0..10 {
            assert!(breaker.admit().is_none());
        }
        assert_eq!(handle.state(), BreakerState::HalfOpen);
        probe.settle(Verdict::Success);
        assert_eq!(handle.state(), BreakerState::Closed);
        let next = breaker.admit().expect("closed");
        assert!(!next.probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_open_for_again() {
        let (breaker, handle) = opened_then_waited().await;
        breaker.admit().unwrap().settle(Verdict::Failure);
        assert_eq!(handle.state(), BreakerState::Open);
        advance(OPEN_FOR - TICK).await;
        assert!(breaker.admit().is_none());
        advance(TICK).await;
        call(&breaker, Verdict::Success);
        assert_eq!(handle.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ignored_probe_is_released_for_the_next_call() {
        let (breaker, handle) = opened_then_waited().await;
        breaker.admit().unwrap().settle(Verdict::Ignore);
        assert_eq!(handle.state(), BreakerState::HalfOpen);
        let probe = breaker.admit().expect("the next probe");
        assert!(probe.probe);
        assert!(breaker.admit().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_is_a_failure() {
        let (breaker, handle) = opened_then_waited().await;
        drop(breaker.admit().unwrap());
        assert_eq!(handle.state(), BreakerState::Open);
        assert!(breaker.admit().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_call_that_is_not_a_probe_records_nothing() {
        let (breaker, handle) = breaker(1, OPEN_FOR);
        for _ in 0..3 {
            drop(breaker.admit().unwrap());
        }
        assert_eq!(handle.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reclosed_breaker_counts_from_zero() {
        let (breaker, handle) = breaker(2, OPEN_FOR);
        call(&breaker, Verdict::Failure);
        call(&breaker, Verdict::Failure);
        advance(OPEN_FOR).await;
        call(&breaker, Verdict::Success);
        assert_eq!(handle.state(), BreakerState::Closed);
        call(&breaker, Verdict::Failure);
        assert_eq!(handle.state(), BreakerState::Closed);
        call(&breaker, Verdict::Failure);
        assert_eq!(handle.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_admitted_while_closed_that_finish_later_do_not_move_it() {
        let (breaker, handle) = breaker(1, OPEN_FOR);
        let (late_success, late_failure) = (breaker.admit().unwrap(), breaker.admit().unwrap());
        let (later_success, later_failure) = (breaker.admit().unwrap(), breaker.admit().unwrap());
        call(&breaker, Verdict::Failure);

        // While open.
        late_success.settle(Verdict::Success);
        late_failure.settle(Verdict::Failure);
        assert_eq!(handle.state(), BreakerState::Open);
        advance(OPEN_FOR - TICK).await;
        assert!(breaker.admit().is_none(), "the open period did not restart");

        // While a probe is in flight.
        advance(TICK).await;
        let probe = breaker.admit().unwrap();
        later_success.settle(Verdict::Success);
        later_failure.settle(Verdict::Failure);
        assert_eq!(handle.state(), BreakerState::HalfOpen);
        assert!(breaker.admit().is_none());
        probe.settle(Verdict::Success);
        assert_eq!(handle.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_open_for_is_half_open_at_once() {
        let (breaker, handle) = breaker(1, Duration::ZERO);
        call(&breaker, Verdict::Failure);
        assert_eq!(handle.state(), BreakerState::HalfOpen);
        assert!(breaker.admit().unwrap().probe);
    }

    #[tokio::test(start_paused = true)]
    async fn any_open_for_is_kept_and_one_past_the_clock_never_probes() {
        let two_days = Duration::from_secs(2 * 24 * 60 * 60);
        let (breaker, handle) = breaker(1, two_days);
        assert_eq!(handle.open_for(), two_days);
        call(&breaker, Verdict::Failure);
        advance(two_days - TICK).await;
        assert_eq!(handle.state(), BreakerState::Open);
        advance(TICK).await;
        assert_eq!(handle.state(), BreakerState::HalfOpen);

        // `now + Duration::MAX` does not exist: open for good, no panic.
        let (breaker, handle) = self::breaker(1, Duration::MAX);
        assert_eq!(handle.open_for(), Duration::MAX);
        call(&breaker, Verdict::Failure);
        advance(Duration::from_secs(1000 * 24 * 60 * 60)).await;
        assert_eq!(handle.state(), BreakerState::Open);
        assert!(breaker.admit().is_none());
    }

    #[test]
    fn a_zero_threshold_is_one() {
        let (breaker, handle) = breaker(0, OPEN_FOR);
        assert_eq!(handle.failure_threshold(), 1);
        call(&breaker, Verdict::Failure);
        // Outside a runtime tokio's clock is the system's: still open.
        assert_eq!(handle.state(), BreakerState::Open);
        assert!(format!("{handle:?}").contains("Open"), "{handle:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn probe_now_ends_the_open_period_and_the_probe_still_decides() {
        let (breaker, handle) = breaker(1, Duration::from_secs(3600));
        handle.probe_now(); // Closed: nothing changes.
        assert_eq!(handle.state(), BreakerState::Closed);
        call(&breaker, Verdict::Failure);
        assert_eq!(handle.state(), BreakerState::Open);
        assert!(breaker.admit().is_none());
        handle.probe_now();
        assert_eq!(handle.state(), BreakerState::HalfOpen);
        let probe = breaker.admit().expect("the probe is let through");
        assert!(breaker.admit().is_none(), "one probe at a time");
        probe.settle(Verdict::Failure);
        assert_eq!(handle.state(), BreakerState::Open);
        handle.probe_now();
        breaker.admit().expect("probe").settle(Verdict::Success);
        assert_eq!(handle.state(), BreakerState::Closed);
    }

    #[test]
    fn state_names() {
        for (state, name) in [
            (BreakerState::Closed, "closed"),
            (BreakerState::Open, "open"),
            (BreakerState::HalfOpen, "half_open"),
        ] {
            assert_eq!(state.as_str(), name);
            assert_eq!(state.to_string(), name);
        }
    }
}
