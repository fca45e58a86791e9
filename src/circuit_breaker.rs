//! Middleware that stops sending events to a broker that keeps failing (a circuit breaker).
//!
//! After `failure_threshold` consecutive broker failures the breaker **opens**: for
//! `open_for`, every call fails at once with [`ErrorKind::CircuitOpen`] ("circuit
//! breaker is open: the broker has been failing; event not sent") without reaching
//! the inner service, like tower's `LoadShed`. After `open_for` it is **half-open**: exactly one
//! call goes through as a probe while the others still get `CircuitOpen`. If the probe
//! succeeds the breaker **closes**; if it fails it opens again for `open_for`.
//!
//! What counts:
//! - a failure is an error for which [`PublishError::is_broker_failure`] holds
//!   (connection, timeout, nack, pool exhausted) — **or a probe whose future is dropped
//!   before it finishes** (an outer timeout, a cancelled request): otherwise a
//!   cancelled probe would leave the breaker waiting for an answer that never comes.
//!   Any other dropped call is not recorded: a client that disconnects says nothing
//!   about the broker (slowness is caught by the per-attempt timeout inside the breaker);
//! - a success is a confirm, or [`Unroutable`](crate::ErrorKind::Unroutable): the
//!   broker answered, it is healthy;
//! - any other error (validation, missing organization, shutdown, …) says nothing
//!   about the broker and is not recorded; a probe that ends so is simply released,
//!   and the next call becomes the probe.
//!
//! All services built from one [`CircuitBreakerLayer`], and all their clones, share
//! one breaker. [`CircuitBreakerLayer::handle`] returns a [`BreakerHandle`] whose
//! [`state`](BreakerHandle::state) a health check can report.
//!
//! # Where it goes
//! The recommended order, outermost first:
//!
//! ```text
//! Validation → Organization → Timeout(overall) → Retry → CircuitBreaker → Timeout(attempt) → transport
//! ```
//!
//! - Validation and organization first: a bad event is rejected before it costs a
//!   retry or counts against the broker.
//! - The breaker inside the retry sees every attempt, so three failed attempts of one
//!   event are three failures. Once it opens, the retry's next attempt gets
//!   `CircuitOpen`, which is not [retryable](PublishError::is_retryable): the retry
//!   stops at once instead of sleeping through its backoff against a dead broker.
//! - The per-attempt timeout inside the breaker turns a hung broker into `Timeout`
//!   errors, which the breaker counts (and the retry retries).
//! - The overall timeout outside the retry bounds what a caller waits in total; when
//!   it fires mid-attempt, the dropped attempt counts as a failure here.
//!
//! # Built on failsafe
//! The state machine is [`failsafe::StateMachine`] with
//! [`consecutive_failures`](failsafe::failure_policy::consecutive_failures) and a
//! [`constant`](failsafe::backoff::constant) backoff of `open_for`, driven through its
//! low-level API (`is_call_permitted`, `on_success`, `on_error`) rather than its
//! future wrapper, so this layer decides what counts and records a dropped call. On
//! top of failsafe, which lets *every* call through while half-open, this layer admits
//! a single probe at a time. Failsafe moves from open to half-open lazily, when the
//! first call after `open_for` asks to go through: until then [`BreakerHandle::state`]
//! still says open. The constant backoff accepts any `open_for`, sub-second included
//! (failsafe's exponential and jittered backoffs panic under one second); `open_for`
//! is capped at one day because failsafe adds it to an `Instant`. Failsafe measures it
//! with `std::time::Instant`, so paused tokio time does not shorten it.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use fitviz_events::{Event, ErrorKind, PublishError, Receipt};
//! use fitviz_events::circuit_breaker::{BreakerState, CircuitBreakerLayer};
//! use fitviz_events::{retry::RetryLayer, timeout::TimeoutLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // A broker that never confirms.
//! let stuck = service_fn(|_: Event| std::future::pending::<Result<Receipt, PublishError>>());
//! let breaker = CircuitBreakerLayer::new(2, Duration::from_secs(30));
//! let health = breaker.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(5, Duration::from_millis(100), Duration::from_secs(1)))
//!     .layer(breaker)
//!     .layer(TimeoutLayer::attempt(Duration::from_secs(1)))
//!     .service(stuck);
//! assert_eq!(health.state(), BreakerState::Closed);
//!
//! let err = svc.oneshot(Event::from_json("workout.created", serde_json::json!({})))
//!     .await
//!     .unwrap_err();
//! // Two attempts timed out, the breaker opened, and the retry stopped there.
//! assert_eq!(err.kind(), ErrorKind::CircuitOpen);
//! assert_eq!(health.state(), BreakerState::Open);
//! assert_eq!(health.state().as_str(), "open");
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use failsafe::{
    Instrument, StateMachine,
    backoff::{self, Constant},
    failure_policy::{self, ConsecutiveFailures},
};
use futures_util::future::{Either, Ready, ready};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{ErrorKind, Event, PublishError, Receipt};

/// The longest `open_for`: failsafe adds it to an `Instant`, which panics on overflow.
const MAX_OPEN_FOR: Duration = Duration::from_secs(24 * 60 * 60);

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

    fn from_u8(value: u8) -> Self {
        match value {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Opens the circuit on a failing broker; see the [module docs](self).
///
/// Cloning the layer, or building several services from it, shares one breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer {
    breaker: Arc<Breaker>,
}

impl CircuitBreakerLayer {
    /// A breaker that opens after `failure_threshold` consecutive broker failures
    /// (0 is treated as 1) and stays open for `open_for` (at most one day; longer
    /// values are clamped) before letting a probe through.
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        let failure_threshold = failure_threshold.max(1);
        let open_for = open_for.min(MAX_OPEN_FOR);
        let state = Arc::new(AtomicU8::new(CLOSED));
        let observer = Observer {
            state: state.clone(),
            failure_threshold,
            open_for,
        };
        let policy =
            failure_policy::consecutive_failures(failure_threshold, backoff::constant(open_for));
        Self {
            breaker: Arc::new(Breaker {
                machine: StateMachine::new(policy, observer),
                state,
                probe_in_flight: AtomicBool::new(false),
                failure_threshold,
                open_for,
            }),
        }
    }

    /// A handle on this layer's breaker, to report its state.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            breaker: self.breaker.clone(),
        }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// A read-only view of a breaker, for health checks and metrics.
#[derive(Clone, Debug)]
pub struct BreakerHandle {
    breaker: Arc<Breaker>,
}

impl BreakerHandle {
    /// The current state (open turns half-open when the first call after the open
    /// period arrives).
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
}

/// The service built by [`CircuitBreakerLayer`].
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    breaker: Arc<Breaker>,
}

impl<S> CircuitBreaker<S> {
    /// A handle on the breaker this service shares.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            breaker: self.breaker.clone(),
        }
    }
}

impl<S> Service<Event> for CircuitBreaker<S>
where
    S: Service<Event, Response = Receipt, Error = PublishError>,
{
    type Response = Receipt;
    type Error = PublishError;
    type Future = Either<Ready<Result<Receipt, PublishError>>, ResponseFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, event: Event) -> Self::Future {
        match Breaker::admit(&self.breaker) {
            Some(permit) => Either::Right(ResponseFuture {
                inner: self.inner.call(event),
                permit,
            }),
            None => Either::Left(ready(Err(
                PublishError::circuit_open().for_event(event.id())
            ))),
        }
    }
}

pin_project! {
    /// The response future of [`CircuitBreaker`] for an admitted call: records the
    /// outcome when it completes, and a failure if it is dropped before.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ResponseFuture<F> {
        // Declared first so it is dropped (cancelled) before the permit records.
        #[pin]
        inner: F,
        permit: Permit,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Receipt, PublishError>>,
{
    type Output = Result<Receipt, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        this.permit.settle(match &result {
            Ok(_) => Outcome::Success,
            Err(e) if e.is_broker_failure() => Outcome::Failure,
            Err(e) if e.kind() == ErrorKind::Unroutable => Outcome::Success,
            Err(_) => Outcome::Neutral,
        });
        Poll::Ready(result)
    }
}

type Machine = StateMachine<ConsecutiveFailures<Constant>, Observer>;

/// The state shared by a layer, its services, their futures and handles.
struct Breaker {
    machine: Machine,
    /// Mirrors failsafe's state, written by [`Observer`].
    state: Arc<AtomicU8>,
    probe_in_flight: AtomicBool,
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
    fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Lets a call through, or not. When closed: one uncontended lock in failsafe,
    /// an atomic load and an `Arc` clone.
    fn admit(this: &Arc<Self>) -> Option<Permit> {
        if !this.machine.is_call_permitted() {
            return None;
        }
        // Permitted but not closed: failsafe is half-open (the transition is recorded
        // by the observer before `is_call_permitted` returns on the thread that made
        // it; another thread may briefly still read "open"). One probe at a time.
        let probe = this.state.load(Ordering::Acquire) != CLOSED;
        if probe
            && this
                .probe_in_flight
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return None;
        }
        Some(Permit {
            breaker: this.clone(),
            probe,
            settled: false,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    Neutral,
}

/// An admitted call; records its outcome exactly once, on completion or on drop.
#[derive(Debug)]
struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

impl Permit {
    fn settle(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let breaker = &*self.breaker;
        match outcome {
            Outcome::Success => breaker.machine.on_success(),
            Outcome::Failure => breaker.machine.on_error(),
            Outcome::Neutral => {}
        }
        // After recording, so a successful probe has closed the breaker before
        // anyone else can become a probe.
        if self.probe {
            breaker.probe_in_flight.store(false, Ordering::Release);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            // A cancelled request says nothing about the broker, except for the probe:
            // left unrecorded, it would keep the breaker waiting for an answer that
            // never comes.
            let outcome = if self.probe {
                Outcome::Failure
            } else {
                Outcome::Neutral
            };
            tracing::debug!(
                probe = self.probe,
                "publish dropped before the broker answered"
            );
            self.settle(outcome);
        }
    }
}

/// Mirrors failsafe's transitions into an atomic and logs them.
///
/// Failsafe calls the instrument after releasing its lock, so under a rare race the
/// mirror can lag failsafe by one transition until the next one. Admission does not
/// depend on it for open versus closed (failsafe decides that); it only uses it to
/// pick the probe, and the thread whose call turns failsafe half-open has always
/// stored `HALF_OPEN` before it reads the mirror.
struct Observer {
    state: Arc<AtomicU8>,
    failure_threshold: u32,
    open_for: Duration,
}

impl Instrument for Observer {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        let open_for_ms = u64::try_from(self.open_for.as_millis()).unwrap_or(u64::MAX);
        match self.state.swap(OPEN, Ordering::AcqRel) {
            HALF_OPEN => tracing::warn!(
                open_for_ms,
                "circuit breaker re-opened: a call failed while half-open; events are refused"
            ),
            OPEN => {}
            _ => tracing::warn!(
                failure_threshold = self.failure_threshold,
                open_for_ms,
                "circuit breaker opened: the broker has been failing; events are refused"
            ),
        }
    }

    fn on_half_open(&self) {
        if self.state.swap(HALF_OPEN, Ordering::AcqRel) != HALF_OPEN {
            tracing::info!("circuit breaker half-open: letting one probe event through");
        }
    }

    fn on_closed(&self) {
        // failsafe also calls this once at construction: only log a real transition.
        if self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            tracing::info!("circuit breaker closed: the broker answered the probe");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::{
            Mutex,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use failsafe::clock::MockClock;
    use futures_util::FutureExt;
    use tokio::sync::oneshot;
    use tower::ServiceExt;

    use super::*;
    use crate::{retry::RetryLayer, timeout::TimeoutLayer};

    const OPEN_FOR: Duration = Duration::from_secs(10);
    const TICK: Duration = Duration::from_millis(1);

    fn event() -> Event {
        Event::from_json("workout.created", serde_json::json!({}))
    }

    enum Reply {
        Now(Result<(), ErrorKind>),
        Later(oneshot::Receiver<Result<(), ErrorKind>>),
        Never,
    }

    /// A fake transport answering each call with the next scripted reply (default:
    /// a confirm), counting calls.
    #[derive(Clone, Default)]
    struct Backend {
        calls: Arc<AtomicUsize>,
        script: Arc<Mutex<VecDeque<Reply>>>,
    }

    impl Backend {
        fn reply(&self, reply: Reply) -> &Self {
            self.script.lock().unwrap().push_back(reply);
            self
        }

        fn then_fail(&self, kind: ErrorKind, times: usize) -> &Self {
            for _ in 0..times {
                self.reply(Reply::Now(Err(kind)));
            }
            self
        }

        /// A reply that comes when the test sends it.
        fn then_later(&self) -> oneshot::Sender<Result<(), ErrorKind>> {
            let (tx, rx) = oneshot::channel();
            self.reply(Reply::Later(rx));
            tx
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Service<Event> for Backend {
        type Response = Receipt;
        type Error = PublishError;
        type Future = Pin<Box<dyn Future<Output = Result<Receipt, PublishError>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, event: Event) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let id = event.id();
            let answer = move |r: Result<(), ErrorKind>| {
                r.map(|()| Receipt::new(id, Duration::ZERO))
                    .map_err(|kind| PublishError::new(kind, "backend failed").for_event(id))
            };
            match self.script.lock().unwrap().pop_front() {
                None => Box::pin(std::future::ready(answer(Ok(())))),
                Some(Reply::Now(r)) => Box::pin(std::future::ready(answer(r))),
                Some(Reply::Later(rx)) => {
                    Box::pin(async move { answer(rx.await.unwrap_or(Err(ErrorKind::Connection))) })
                }
                Some(Reply::Never) => Box::pin(std::future::pending()),
            }
        }
    }

    type Fut = <CircuitBreaker<Backend> as Service<Event>>::Future;

    fn breaker(threshold: u32) -> (CircuitBreaker<Backend>, Backend, BreakerHandle) {
        let backend = Backend::default();
        let layer = CircuitBreakerLayer::new(threshold, OPEN_FOR);
        let handle = layer.handle();
        (layer.layer(backend.clone()), backend, handle)
    }

    /// Admission happens in `call`; the returned future records the outcome.
    fn start(svc: &mut CircuitBreaker<Backend>) -> Fut {
        svc.ready().now_or_never().unwrap().unwrap();
        svc.call(event())
    }

    /// Calls and resolves a call whose reply is immediate.
    fn publish(svc: &mut CircuitBreaker<Backend>) -> Result<Receipt, PublishError> {
        start(svc).now_or_never().expect("the reply is immediate")
    }

    fn assert_refused(result: Result<Receipt, PublishError>) {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CircuitOpen);
        assert!(!err.is_retryable());
        assert!(err.event_id().is_some());
        assert!(
            err.to_string().starts_with(
                "circuit breaker is open: the broker has been failing; event not sent (event "
            ),
            "{err}"
        );
    }

    /// Runs `test` with failsafe's clock frozen (it reads `std::time::Instant`, which
    /// paused tokio time does not move; its `clock::freeze` mock is thread-local, so
    /// these tests stay on one thread and poll futures by hand).
    fn with_frozen_clock(test: impl FnOnce(&mut MockClock)) {
        failsafe::clock::freeze(test);
    }

    /// Opens a threshold-1 breaker, then lets the open period pass.
    fn opened_then_waited(
        clock: &mut MockClock,
    ) -> (CircuitBreaker<Backend>, Backend, BreakerHandle) {
        let (mut svc, backend, handle) = breaker(1);
        backend.then_fail(ErrorKind::Connection, 1);
        publish(&mut svc).unwrap_err();
        assert_eq!(handle.state(), BreakerState::Open);
        clock.advance(OPEN_FOR);
        assert_refused(publish(&mut svc));
        clock.advance(TICK);
        // Failsafe turns half-open lazily, on the next call.
        assert_eq!(handle.state(), BreakerState::Open);
        (svc, backend, handle)
    }

    #[test]
    fn opens_after_threshold_consecutive_broker_failures() {
        let (mut svc, backend, handle) = breaker(3);
        assert_eq!(handle.state(), BreakerState::Closed);
        backend
            .then_fail(ErrorKind::Timeout, 1)
            .then_fail(ErrorKind::Nacked, 1)
            .then_fail(ErrorKind::Connection, 1);
        for _ in 0..2 {
            publish(&mut svc).unwrap_err();
            assert_eq!(handle.state(), BreakerState::Closed);
        }
        let err = publish(&mut svc).unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Connection,
            "the failure itself passes through"
        );
        assert_eq!(handle.state(), BreakerState::Open);
        assert_eq!(handle.state().as_str(), "open");
        assert_eq!(backend.calls(), 3);

        for _ in 0..100 {
            assert_refused(publish(&mut svc));
        }
        assert_eq!(
            backend.calls(),
            3,
            "an open breaker does not call the inner service"
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let (mut svc, backend, handle) = breaker(3);
        backend
            .then_fail(ErrorKind::Timeout, 2)
            .reply(Reply::Now(Ok(())))
            .then_fail(ErrorKind::Timeout, 2)
            .reply(Reply::Now(Err(ErrorKind::Unroutable)))
            .then_fail(ErrorKind::Timeout, 2);
        for _ in 0..8 {
            let _ = publish(&mut svc);
        }
        assert_eq!(handle.state(), BreakerState::Closed);
        assert_eq!(backend.calls(), 8);
    }

    #[test]
    fn errors_that_are_not_the_brokers_fault_do_not_open_it() {
        let (mut svc, backend, handle) = breaker(1);
        for kind in [
            ErrorKind::Validation,
            ErrorKind::MissingOrganization,
            ErrorKind::OrganizationMismatch,
            ErrorKind::Unroutable,
            ErrorKind::CircuitOpen,
            ErrorKind::QueueFull,
            ErrorKind::Shutdown,
            ErrorKind::Config,
        ] {
            backend.then_fail(kind, 3);
            for _ in 0..3 {
                assert_eq!(publish(&mut svc).unwrap_err().kind(), kind);
            }
            assert_eq!(handle.state(), BreakerState::Closed, "{kind:?} opened it");
        }
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_success_closes() {
        with_frozen_clock(|clock| {
            let (mut svc, backend, handle) = opened_then_waited(clock);
            let answer = backend.then_later();
            let mut probe = start(&mut svc);
            assert_eq!(handle.state(), BreakerState::HalfOpen);
            assert_eq!(handle.state().as_str(), "half_open");
            assert!(probe.poll_unpin(&mut noop_cx()).is_pending());
            assert_eq!(backend.calls(), 2);

            // While the probe is in flight, everyone else is refused, also through clones.
            let mut other = svc.clone();
            for _ in 0..10 {
                assert_refused(publish(&mut svc));
                assert_refused(publish(&mut other));
            }
            assert_eq!(backend.calls(), 2);

            answer.send(Ok(())).unwrap();
            probe.now_or_never().unwrap().unwrap();
            assert_eq!(handle.state(), BreakerState::Closed);
            assert_eq!(handle.state().as_str(), "closed");
            for _ in 0..3 {
                publish(&mut svc).unwrap();
                publish(&mut other).unwrap();
            }
            assert_eq!(backend.calls(), 8);
        });
    }

    #[test]
    fn a_failed_probe_reopens_it() {
        with_frozen_clock(|clock| {
            let (mut svc, backend, handle) = opened_then_waited(clock);
            backend.then_fail(ErrorKind::Timeout, 1);
            assert_eq!(publish(&mut svc).unwrap_err().kind(), ErrorKind::Timeout);
            assert_eq!(handle.state(), BreakerState::Open);
            assert_refused(publish(&mut svc));
            assert_eq!(backend.calls(), 2);

            // The next open period ends the same way: one probe, which now succeeds.
            clock.advance(OPEN_FOR + TICK);
            publish(&mut svc).unwrap();
            assert_eq!(handle.state(), BreakerState::Closed);
            assert_eq!(backend.calls(), 3);
        });
    }

    #[test]
    fn an_unroutable_probe_closes_it() {
        with_frozen_clock(|clock| {
            let (mut svc, backend, handle) = opened_then_waited(clock);
            backend.then_fail(ErrorKind::Unroutable, 1);
            assert_eq!(publish(&mut svc).unwrap_err().kind(), ErrorKind::Unroutable);
            assert_eq!(handle.state(), BreakerState::Closed);
        });
    }

    #[test]
    fn a_probe_that_says_nothing_about_the_broker_is_released() {
        with_frozen_clock(|clock| {
            let (mut svc, backend, handle) = opened_then_waited(clock);
            backend.then_fail(ErrorKind::Validation, 1);
            assert_eq!(publish(&mut svc).unwrap_err().kind(), ErrorKind::Validation);
            assert_eq!(handle.state(), BreakerState::HalfOpen);
            // The next call is the new probe.
            publish(&mut svc).unwrap();
            assert_eq!(handle.state(), BreakerState::Closed);
        });
    }

    #[test]
    fn dropping_a_probe_counts_as_a_failure_and_releases_it() {
        with_frozen_clock(|clock| {
            let (mut svc, backend, handle) = opened_then_waited(clock);
            backend.reply(Reply::Never);
            let mut probe = start(&mut svc);
            assert!(probe.poll_unpin(&mut noop_cx()).is_pending());
            assert_eq!(handle.state(), BreakerState::HalfOpen);
            drop(probe);
            assert_eq!(handle.state(), BreakerState::Open);
            assert_refused(publish(&mut svc));

            clock.advance(OPEN_FOR + TICK);
            publish(&mut svc).unwrap();
            assert_eq!(handle.state(), BreakerState::Closed);
            assert_eq!(backend.calls(), 3);
        });
    }

    #[test]
    fn dropping_a_call_that_is_not_a_probe_records_nothing() {
        let (mut svc, backend, handle) = breaker(2);
        backend
            .reply(Reply::Never)
            .reply(Reply::Never)
            .reply(Reply::Never);
        drop(start(&mut svc));
        drop(start(&mut svc));
        drop(start(&mut svc));
        assert_eq!(handle.state(), BreakerState::Closed);
        assert_eq!(backend.calls(), 3);
    }

    #[test]
    fn every_service_from_one_layer_shares_the_breaker() {
        let layer = CircuitBreakerLayer::new(2, OPEN_FOR);
        let (a, b) = (Backend::default(), Backend::default());
        a.then_fail(ErrorKind::Connection, 2);
        let mut svc_a = layer.layer(a.clone());
        let mut svc_b = layer.clone().layer(b.clone());
        publish(&mut svc_a).unwrap_err();
        publish(&mut svc_a).unwrap_err();
        assert_refused(publish(&mut svc_b));
        assert_eq!(b.calls(), 0);
        assert_eq!(svc_b.handle().state(), BreakerState::Open);
        assert_eq!(layer.handle().state(), BreakerState::Open);
    }

    #[test]
    fn arguments_are_clamped() {
        let handle = CircuitBreakerLayer::new(0, Duration::MAX).handle();
        assert_eq!(handle.failure_threshold(), 1);
        assert_eq!(handle.open_for(), MAX_OPEN_FOR);
        let (mut svc, backend) = {
            let backend = Backend::default();
            let layer = CircuitBreakerLayer::new(0, Duration::MAX);
            (layer.layer(backend.clone()), backend)
        };
        backend.then_fail(ErrorKind::Timeout, 1);
        publish(&mut svc).unwrap_err();
        assert_eq!(svc.handle().state(), BreakerState::Open);
        assert!(format!("{:?}", svc.handle()).contains("Open"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_stops_the_retry_at_once() {
        let backend = Backend::default();
        backend.then_fail(ErrorKind::Timeout, 100);
        let breaker = CircuitBreakerLayer::new(2, OPEN_FOR);
        let handle = breaker.handle();
        let svc = tower::ServiceBuilder::new()
            .layer(RetryLayer::new(
                5,
                Duration::from_millis(10),
                Duration::from_secs(1),
            ))
            .layer(breaker)
            .service(backend.clone());
        let err = svc.oneshot(event()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CircuitOpen);
        assert_eq!(backend.calls(), 2);
        assert_eq!(handle.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn attempt_timeouts_inside_count_but_calls_dropped_by_an_outer_timeout_do_not() {
        let backend = Backend::default();
        backend
            .reply(Reply::Never)
            .reply(Reply::Never)
            .reply(Reply::Never);
        let breaker = CircuitBreakerLayer::new(2, OPEN_FOR);
        let handle = breaker.handle();

        // The overall deadline fires before the attempt's: the dropped call (not a
        // probe) is not recorded.
        let svc = tower::ServiceBuilder::new()
            .layer(TimeoutLayer::overall(Duration::from_secs(1)))
            .layer(breaker.clone())
            .layer(TimeoutLayer::attempt(Duration::from_secs(5)))
            .service(backend.clone());
        let err = svc.oneshot(event()).await.unwrap_err();
        assert!(err.to_string().starts_with("publish timed out"), "{err}");
        assert_eq!(handle.state(), BreakerState::Closed);

        // Attempt timeouts inside the breaker are broker failures.
        let svc = tower::ServiceBuilder::new()
            .layer(breaker)
            .layer(TimeoutLayer::attempt(Duration::from_millis(500)))
            .service(backend.clone());
        for _ in 0..2 {
            let err = svc.clone().oneshot(event()).await.unwrap_err();
            assert!(
                err.to_string().starts_with("publish attempt timed out"),
                "{err}"
            );
        }
        assert_eq!(handle.state(), BreakerState::Open);
    }

    fn noop_cx() -> Context<'static> {
        Context::from_waker(std::task::Waker::noop())
    }
}
