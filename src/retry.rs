//! Middleware that retries failed publishes of the same event, with jittered exponential backoff.
//!
//! In the [publish stack](crate::stack) it is stage 7: it needs the overall deadline
//! outside it (stage 5), so backoff never outlives the publish.
//!
//! [`RetryLayer`] is [`tower::retry::Retry`] with a [`RetryPolicy`] made for events:
//! - only errors that [may succeed on another try](PublishError::is_retryable) are
//!   retried (connection, timeout, pool exhausted, blocked, nack); validation, missing
//!   organization, unroutable, an open circuit and shutdown come back at once;
//! - at most `max_retries` retries follow the first call, then the last error is
//!   returned;
//! - a nack is retried: in a cluster it is what a quorum queue answers while it elects
//!   a new leader (and what channels that used the old leader keep answering: the
//!   transport replaces them), and the retry succeeds on the new leader; a queue full
//!   with `x-overflow: reject-publish` answers [`Nacked`](crate::ErrorKind::Nacked)
//!   again, and the last one ends the publish;
//! - **outcome unknown:** once an attempt [may have reached the
//!   broker](PublishError::maybe_delivered) (it timed out, or its connection was lost
//!   after the event was written), the final error — whatever ends the retries: an
//!   open circuit, a timeout, a connection error, a nack — is marked
//!   `maybe_delivered`, keeps the event id and says `outcome unknown` instead of
//!   "not sent", so that a caller publishes it again only with the same id;
//! - the very same [`Event`] — same id — is sent again, so consumers de-duplicate on
//!   `event_id` (delivery is at-least-once);
//! - before retry `n` it waits [`backoff_delay`]: a random delay between half and all
//!   of `base × 2^(n−1)`, capped at `max` ("equal jitter"), so a burst of failed
//!   events does not come back in lockstep and every retry waits at least a little;
//! - each retry is logged with `tracing::warn!` (`event_id`, `event_type`, `attempt`
//!   — the attempt that failed, 1 for the first call — `delay_ms` and `error`); a burst
//!   of identical ones (same error kind and event type) is one line, then at most one
//!   every five seconds with the number left out since (`suppressed`).
//!
//! Put it outside the [circuit breaker](crate::circuit_breaker) and the per-attempt
//! [timeout](crate::timeout): see the recommended order there.
//!
//! # Why not tower's `ExponentialBackoff`
//! [`tower::retry::backoff::ExponentialBackoffMaker`] hands every request a clone of
//! one random generator, so all requests draw the same jitter sequence and retry in
//! step; its jitter is added on top of the exponential delay rather than drawn under
//! it; and it refuses a zero maximum. Here the jitter comes from a hash of the event
//! id and the attempt number (no shared generator, no lock), and any durations work,
//! zero and [`Duration::MAX`] included.
//!
//! # Example
//! ```
//! use std::{sync::{Arc, atomic::{AtomicU32, Ordering}}, time::Duration};
//! use fitviz_events::{Event, PublishError, Receipt, retry::RetryLayer, timeout::TimeoutLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // A broker that hangs on the first two attempts, then confirms.
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! let flaky = service_fn(move |event: Event| {
//!     let attempt = counter.fetch_add(1, Ordering::SeqCst) + 1;
//!     async move {
//!         if attempt <= 2 {
//!             std::future::pending::<()>().await;
//!         }
//!         Ok::<_, PublishError>(Receipt::new(event.id(), Duration::ZERO))
//!     }
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(3, Duration::from_millis(100), Duration::from_secs(2)))
//!     .layer(TimeoutLayer::attempt(Duration::from_secs(1)))
//!     .service(flaky);
//! let event = Event::from_json("workout.created", serde_json::json!({}));
//! let id = event.id();
//! let receipt = svc.oneshot(event).await.unwrap();
//! assert_eq!(receipt.event_id, id);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # }
//! ```

use std::{sync::Arc, time::Duration};

use tokio::time::Sleep;
use tower::retry::Policy;
use tower_layer::Layer;
use uuid::Uuid;

use crate::{error::PublishError, event::Event, event::Receipt, log_limit::LogLimiter};

/// Retries retryable failures; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

impl RetryLayer {
    /// Up to `max_retries` retries after the first call (so at most `max_retries + 1`
    /// calls), waiting [`backoff_delay`]`(base, max, n, …)` before retry `n`.
    ///
    /// Any durations are accepted: a zero `base` retries at once, a `base` above `max`
    /// waits about `max` every time.
    pub fn new(max_retries: u32, base: Duration, max: Duration) -> Self {
        Self {
            policy: RetryPolicy::new(max_retries, base, max),
        }
    }

    /// The policy this layer installs.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        tower::retry::Retry::new(self.policy.clone(), inner)
    }
}

/// The service built by [`RetryLayer`]: tower's retry with a [`RetryPolicy`].
///
/// Like any [`tower::retry::Retry`], it clones the inner service for each request, so
/// the inner service must be `Clone` (and should be cheap to clone).
pub type Retry<S> = tower::retry::Retry<RetryPolicy, S>;

/// The [`tower::retry::Policy`] of [`RetryLayer`]; see the [module docs](self).
///
/// Tower clones it for each request, so the attempt count is per event.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    max_retries: u32,
    base: Duration,
    max: Duration,
    /// Attempts of the current event that have failed so far.
    failed: u32,
    /// Whether one of them may have reached the broker.
    maybe_delivered: bool,
    /// Shared by the policy's clones: limits the retry warnings.
    log: Arc<LogLimiter>,
}

impl RetryPolicy {
    /// See [`RetryLayer::new`].
    pub fn new(max_retries: u32, base: Duration, max: Duration) -> Self {
        Self {
            max_retries,
            base,
            max,
            failed: 0,
            maybe_delivered: false,
            log: Arc::default(),
        }
    }

    /// How many retries may follow the first call.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The delay bound of the first retry.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest delay.
    pub fn max(&self) -> Duration {
        self.max
    }
}

impl Policy<Event, Receipt, PublishError> for RetryPolicy {
    type Future = Sleep;

    fn retry(
        &mut self,
        event: &mut Event,
        result: &mut Result<Receipt, PublishError>,
    ) -> Option<Sleep> {
        let error = result.as_mut().err()?;
        self.failed = self.failed.saturating_add(1);
        self.maybe_delivered |= error.maybe_delivered();
        let last = !error.is_retryable() || self.failed > self.max_retries;
        if last {
            if self.maybe_delivered {
                // Whatever ends the retries (an open circuit, a nack, the last
                // timeout), an earlier attempt may have been stored.
                error.set_outcome_unknown();
            }
            if error.is_retryable() {
                tracing::debug!(
                    event_id = %event.id(),
                    event_type = event.event_type(),
                    attempts = self.failed,
                    %error,
                    "publish failed; no retries left"
                );
            }
            return None;
        }
        let error = &*error;
        crate::telemetry::retried(event.context().metric_type(), error.kind());
        let delay = backoff_delay(
            self.base,
            self.max,
            self.failed,
            jitter(event.id(), self.failed),
        );
        if let Some(suppressed) = self.log.admit((error.kind(), event.event_type())) {
            tracing::warn!(
                event_id = %event.id(),
                event_type = event.event_type(),
                attempt = self.failed,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                %error,
                suppressed,
                "publish attempt failed; retrying"
            );
        }
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, event: &Event) -> Option<Event> {
        // Without retries there is nothing to keep the event for.
        (self.max_retries > 0).then(|| event.clone())
    }
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The upper bound of the delay before retry number `retry` (1 for the first
/// retry): `base × 2^(retry−1)`, capped at `max`. Retry 0 is treated as 1.
///
/// Non-decreasing in `retry`, never above `max`, and never panics: the maths is
/// done in saturating `u128` nanoseconds.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use fitviz_events::retry::backoff_ceiling;
///
/// let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
/// let ceilings: Vec<_> = (1..=6).map(|n| backoff_ceiling(base, max, n).as_millis()).collect();
/// assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
/// ```
pub fn backoff_ceiling(base: Duration, max: Duration, retry: u32) -> Duration {
    let base = base.as_nanos();
    let ceiling = match 1_u128.checked_shl(retry.saturating_sub(1)) {
        Some(factor) => base.saturating_mul(factor),
        None if base == 0 => 0,
        None => u128::MAX,
    };
    from_nanos(ceiling.min(max.as_nanos()))
}

/// The delay before retry number `retry` (1 for the first retry), with "equal
/// jitter": with `ceiling` = [`backoff_ceiling`]`(base, max, retry)` and
/// `half = ceiling / 2` in nanoseconds, the delay is
/// `ceiling − half + random mod (half + 1)`. So it lies between half the ceiling and
/// the ceiling, and never exceeds `max`.
///
/// `random` is any random `u64`; the layer derives it from the event id and the
/// attempt number. Never panics.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use fitviz_events::retry::{backoff_ceiling, backoff_delay};
///
/// let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
/// for random in [0, 7, u64::MAX] {
///     let delay = backoff_delay(base, max, 3, random);
///     assert!(Duration::from_millis(200) <= delay && delay <= Duration::from_millis(400));
/// }
/// assert_eq!(backoff_delay(Duration::ZERO, Duration::MAX, 9, 42), Duration::ZERO);
/// ```
pub fn backoff_delay(base: Duration, max: Duration, retry: u32, random: u64) -> Duration {
    let ceiling = backoff_ceiling(base, max, retry).as_nanos();
    let half = ceiling / 2;
    from_nanos(ceiling - half + u128::from(random) % (half + 1))
}

/// A duration from nanoseconds that came from a `Duration` (so it fits).
fn from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // Less than 10^9: fits a u32.
    let subsec = (nanos % NANOS_PER_SEC) as u32;
    Duration::new(secs, subsec)
}

/// A well-mixed random value from the event id and the attempt: different events
/// back off differently without a shared generator, and tests can predict it.
fn jitter(event_id: Uuid, attempt: u32) -> u64 {
    let id = event_id.as_u128();
    let seed = (id as u64)
        ^ ((id >> 64) as u64).rotate_left(32)
        ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    splitmix64(seed)
}

/// The SplitMix64 finaliser.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;
    use tokio::time::Instant;
    use tower::{ServiceExt, service_fn};
    use tower_service::Service;

    use super::*;
    use crate::error::ErrorKind;

    fn event() -> Event {
        Event::from_json("workout.created", serde_json::json!({}))
    }

    /// What the fake transport saw: the id and the (virtual) time of each call.
    type Calls = Arc<Mutex<Vec<(Uuid, Instant)>>>;

    /// A transport whose `n`th call (from 1) answers `answer(n)`.
    fn transport(
        answer: impl Fn(usize) -> Result<(), ErrorKind> + Clone + Send + 'static,
    ) -> (
        impl Service<
            Event,
            Response = Receipt,
            Error = PublishError,
            Future = impl Future<Output = Result<Receipt, PublishError>>,
        > + Clone,
        Calls,
    ) {
        let calls = Calls::default();
        let seen = calls.clone();
        let svc = service_fn(move |e: Event| {
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.push((e.id(), Instant::now()));
                seen.len()
            };
            let result = answer(n).map(|()| Receipt::new(e.id(), Duration::ZERO));
            async move {
                result.map_err(|kind| {
                    PublishError::new(kind, format!("attempt {n} failed")).for_event(e.id())
                })
            }
        });
        (svc, calls)
    }

    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn retries_up_to_the_limit_then_returns_the_last_error() {
        let (inner, calls) = transport(|_| Err(ErrorKind::Timeout));
        let svc = RetryLayer::new(3, BASE, MAX).layer(inner);
        let event = event();
        let id = event.id();
        let err = svc.oneshot(event).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert_eq!(err.to_string(), format!("attempt 4 failed (event {id})"));
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 4);
        assert!(
            calls.iter().all(|(seen, _)| *seen == id),
            "the same event is retried"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn succeeds_after_transient_failures() {
        let (inner, calls) = transport(|n| match n {
            1 => Err(ErrorKind::Connection),
            2 => Err(ErrorKind::Timeout),
            3 => Err(ErrorKind::PoolTimeout),
            _ => Ok(()),
        });
        let svc = RetryLayer::new(5, BASE, MAX).layer(inner);
        let event = event();
        let id = event.id();
        let receipt = svc.oneshot(event).await.unwrap();
        assert_eq!(receipt.event_id, id);
        assert_eq!(calls.lock().unwrap().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn never_retries_what_cannot_succeed() {
        for kind in [
            ErrorKind::Validation,
            ErrorKind::Unroutable,
            ErrorKind::CircuitOpen,
            ErrorKind::MissingOrganization,
            ErrorKind::OrganizationMismatch,
            ErrorKind::Shutdown,
            ErrorKind::QueueFull,
            ErrorKind::Config,
        ] {
            let (inner, calls) = transport(move |_| Err(kind));
            let svc = RetryLayer::new(5, BASE, MAX).layer(inner);
            let start = Instant::now();
            let err = svc.oneshot(event()).await.unwrap_err();
            assert_eq!(err.kind(), kind);
            assert_eq!(calls.lock().unwrap().len(), 1, "{kind:?} was retried");
            assert_eq!(start.elapsed(), Duration::ZERO);
        }
    }

    /// A transport whose `n`th call fails with `fail(n)`, an error for the event.
    fn failing(
        fail: impl Fn(usize) -> PublishError + Clone + Send + 'static,
    ) -> impl Service<
        Event,
        Response = Receipt,
        Error = PublishError,
        Future = impl Future<Output = Result<Receipt, PublishError>>,
    > + Clone {
        let calls = Arc::new(Mutex::new(0));
        service_fn(move |e: Event| {
            let n = {
                let mut calls = calls.lock().unwrap();
                *calls += 1;
                *calls
            };
            let error = fail(n).for_event(e.id());
            async move { Err::<Receipt, _>(error) }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_may_have_been_stored_makes_the_outcome_unknown() {
        // A lost confirm (written, then the connection closed), then an open breaker:
        // the final `CircuitOpen` must not say "not sent".
        let inner = failing(|n| match n {
            1 => PublishError::new(ErrorKind::Connection, "confirm lost").mark_maybe_delivered(),
            2 => PublishError::new(ErrorKind::Timeout, "attempt timed out"),
            _ => PublishError::circuit_open(),
        });
        let svc = RetryLayer::new(5, BASE, MAX).layer(inner);
        let published = event();
        let id = published.id();
        let err = svc.oneshot(published).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CircuitOpen);
        assert!(err.maybe_delivered());
        assert_eq!(err.event_id(), Some(id));
        let text = err.to_string();
        assert!(text.contains("outcome unknown"), "{text}");
        assert!(text.contains("same event_id"), "{text}");
        assert!(!text.contains("event not sent"), "{text}");

        // The same when the retries run out on a connection error or a nack.
        for last in [ErrorKind::Connection, ErrorKind::Nacked] {
            let inner = failing(move |n| match n {
                1 => PublishError::new(ErrorKind::Timeout, "x").mark_maybe_delivered(),
                _ => PublishError::new(last, "x"),
            });
            let err = RetryLayer::new(2, BASE, MAX)
                .layer(inner)
                .oneshot(event())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), last);
            assert!(err.maybe_delivered(), "{last:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_that_were_never_written_leave_the_outcome_known() {
        let inner = failing(|n| match n {
            1 => PublishError::new(ErrorKind::Connection, "channel closed, not sent"),
            2 => PublishError::new(ErrorKind::PoolTimeout, "no channel"),
            _ => PublishError::circuit_open(),
        });
        let err = RetryLayer::new(5, BASE, MAX)
            .layer(inner)
            .oneshot(event())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CircuitOpen);
        assert!(!err.maybe_delivered());
        assert!(err.to_string().contains("event not sent"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_retries_means_one_call() {
        let (inner, calls) = transport(|_| Err(ErrorKind::Timeout));
        let svc = RetryLayer::new(0, BASE, MAX).layer(inner);
        svc.oneshot(event()).await.unwrap_err();
        assert_eq!(calls.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_follow_the_backoff() {
        let (inner, calls) = transport(|_| Err(ErrorKind::Connection));
        let retries = 6;
        let svc = RetryLayer::new(retries, BASE, MAX).layer(inner);
        let event = event();
        let id = event.id();
        svc.oneshot(event).await.unwrap_err();

        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), retries as usize + 1);
        for (n, pair) in (1..).zip(calls.windows(2)) {
            let waited = pair[1].1 - pair[0].1;
            let ceiling = backoff_ceiling(BASE, MAX, n);
            let expected = backoff_delay(BASE, MAX, n, jitter(id, n));
            // tokio's timer has millisecond resolution and rounds up.
            assert!(
                expected <= waited && waited <= expected + Duration::from_millis(1),
                "retry {n}: waited {waited:?}, expected {expected:?}"
            );
            assert!(
                ceiling / 2 <= waited && waited <= ceiling + Duration::from_millis(1),
                "retry {n}: waited {waited:?}, ceiling {ceiling:?}"
            );
        }
        // 100, 200, 400, 800, then capped at 1000 ms.
        assert_eq!(backoff_ceiling(BASE, MAX, 4), Duration::from_millis(800));
        assert_eq!(backoff_ceiling(BASE, MAX, 5), MAX);
    }

    #[test]
    fn jitter_differs_between_events_and_attempts() {
        let (a, b) = (event().id(), event().id());
        assert_ne!(jitter(a, 1), jitter(b, 1));
        assert_ne!(jitter(a, 1), jitter(a, 2));
        assert_eq!(jitter(a, 3), jitter(a, 3));
    }

    #[test]
    fn extreme_durations() {
        assert_eq!(
            backoff_ceiling(Duration::MAX, Duration::MAX, 1),
            Duration::MAX
        );
        assert_eq!(
            backoff_ceiling(Duration::MAX, Duration::MAX, u32::MAX),
            Duration::MAX
        );
        assert_eq!(
            backoff_ceiling(Duration::from_nanos(1), Duration::MAX, 200),
            Duration::MAX
        );
        assert_eq!(
            backoff_ceiling(Duration::ZERO, Duration::MAX, 200),
            Duration::ZERO
        );
        assert_eq!(backoff_ceiling(BASE, Duration::ZERO, 3), Duration::ZERO);
        assert_eq!(backoff_ceiling(MAX, BASE, 1), BASE, "base above max");
        assert_eq!(backoff_ceiling(BASE, MAX, 0), BASE, "retry 0 is retry 1");
        assert!(backoff_delay(Duration::MAX, Duration::MAX, u32::MAX, u64::MAX) <= Duration::MAX);
    }

    fn any_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0_u64..10_000_000_000).prop_map(Duration::from_nanos),
            (any::<u64>(), 0_u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            Just(Duration::ZERO),
            Just(Duration::MAX),
        ]
    }

    proptest! {
        #[test]
        fn delay_stays_within_its_bounds(
            base in any_duration(),
            max in any_duration(),
            retry in any::<u32>(),
            random in any::<u64>(),
        ) {
            let ceiling = backoff_ceiling(base, max, retry);
            let delay = backoff_delay(base, max, retry, random);
            prop_assert!(ceiling <= max);
            prop_assert!(delay <= ceiling);
            prop_assert!(delay >= ceiling / 2);
        }

        #[test]
        fn ceiling_never_decreases(
            base in any_duration(),
            max in any_duration(),
            retry in 0_u32..200,
        ) {
            prop_assert!(backoff_ceiling(base, max, retry) <= backoff_ceiling(base, max, retry + 1));
        }

        #[test]
        fn first_ceiling_is_base_capped(base in any_duration(), max in any_duration()) {
            prop_assert_eq!(backoff_ceiling(base, max, 1), base.min(max));
        }
    }
}
