//! Middleware that stops sending events to a broker that keeps failing (a circuit breaker).
//!
//! In the [publish stack](crate::stack) it is stage 8: it needs the retry outside it
//! (stage 7), which stops at once on `CircuitOpen`.
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
//!   (connection, timeout, pool exhausted) — **or a probe whose future is dropped
//!   before it finishes** (an outer timeout, a cancelled request): otherwise a
//!   cancelled probe would leave the breaker waiting for an answer that never comes.
//!   Any other dropped call is not recorded: a client that disconnects says nothing
//!   about the broker (slowness is caught by the per-attempt timeout inside the breaker);
//! - **a lost connection is one failure, not N.** A connection error that happened on
//!   an open connection carries that connection's
//!   [generation](PublishError::connection_generation) (a number the transport gives
//!   each connection it opens); while closed, the breaker counts the first error of
//!   each generation and ignores the rest. When a connection with 128 publishes in
//!   flight closes, those 128 errors are one failure; the retry sends the publishes
//!   again on a fresh connection, and their confirms (successes) reset the count. So
//!   a routine close, or a broker restart that reconnects heal, never opens the
//!   breaker; connections that keep being lost (each a new generation, with no
//!   confirm between them), failed connection attempts (no generation: each counts)
//!   and timeouts do;
//! - **a late confirm from a broker that answers is no failure at all.** With quorum
//!   queues a confirm comes once a majority has the message, and while a queue elects a
//!   new leader (its node stopped or died) RabbitMQ holds confirms for up to ~10 s. The
//!   [`AmqpPublish`](crate::transport::AmqpPublish) transport tells that apart from a
//!   dead connection itself: after `confirm_timeout` without a confirm it sends one round
//!   trip on the connection (shared by every publish waiting on it); if the broker
//!   answers, the publishes keep waiting for the confirms they already have in flight,
//!   within their publish deadline, and nothing reaches this breaker. Only when the broker
//!   does not answer within `min(confirm_timeout, 2 s)` do the attempts fail with
//!   `Timeout`, and then each counts: a black-holed connection with `failure_threshold`
//!   publishes in flight opens the breaker `confirm_timeout + min(confirm_timeout, 2 s)`
//!   after they were written (7 s with the defaults), one publish at a time after that
//!   many attempts. So a leader election — the most routine event of a cluster — never
//!   opens the breaker, and a black hole still does. (Counting a stall once, as a lost
//!   connection is counted once, would have kept a black hole from opening the breaker
//!   for `failure_threshold` rounds of attempts: tens of seconds.)
//! - a success is a confirm, or a refusal of one message: [`Unroutable`](ErrorKind::Unroutable)
//!   or [`Nacked`](ErrorKind::Nacked) (a queue full with `x-overflow: reject-publish`)
//!   — the broker answered, it is healthy. A full queue is that event's outcome, not
//!   the bus's: it must not refuse the events of every other routing key. The broker's
//!   refusals ([`AccessRefused`](ErrorKind::AccessRefused),
//!   [`NotFound`](ErrorKind::NotFound), [`PreconditionFailed`](ErrorKind::PreconditionFailed))
//!   are answers too: a configuration problem that waiting would not cure;
//! - any other error (validation, missing organization, shutdown, …) says nothing
//!   about the broker and is not recorded; a probe that ends so is simply released,
//!   and the next call becomes the probe;
//! - once the breaker is open, only the probe moves it: a call let through while it
//!   was closed that finishes later is not recorded.
//!
//! Why per connection generation, not a failure rate over a sliding window
//! (Resilience4j): a window needs a minimum call count and a rate threshold tuned to
//! the traffic, and a close under high concurrency can still fill a small window with
//! failures of one cause. The generation says exactly which failures share a cause,
//! and keeps failsafe's consecutive-failures policy (and the configured threshold)
//! meaningful: `failure_threshold` distinct broker failures with no success between.
//!
//! All services built from one [`CircuitBreakerLayer`], and all their clones, share
//! one breaker. [`CircuitBreakerLayer::handle`] returns a [`BreakerHandle`] whose
//! [`state`](BreakerHandle::state) a health check can report; it says half-open as
//! soon as the open period is over, before a probe arrives.
//!
//! # Where it goes
//! Where the default stack puts it: inside the retry, outside the attempt deadline
//! (see [the map](crate::stack) for the whole order). Why:
//!
//! - Validation and organization first: a bad event is rejected before it costs a
//!   retry or counts against the broker.
//! - The breaker inside the retry sees every attempt, so three failed attempts of one
//!   event are three failures. Once it opens, the retry's next attempt gets
//!   `CircuitOpen`, which is not [retryable](PublishError::is_retryable): the retry
//!   stops at once instead of sleeping through its backoff against a dead broker.
//! - The per-attempt timeout inside the breaker turns a hung broker into `Timeout`
//!   errors, which the breaker counts (and the retry retries). Over the
//!   [`AmqpPublish`](crate::transport::AmqpPublish) transport, which bounds its own
//!   waits and asks the connection before it gives up on a late confirm (above), the
//!   [`EventPublisher`](crate::EventPublisher) sets it to the publish deadline, as a
//!   backstop only.
//! - The overall timeout outside the retry bounds what a caller waits in total; when
//!   it fires mid-attempt, the dropped attempt counts as a failure here.
//!
//! # How it works
//! The state — closed, open until an instant, or half-open with or without a probe in
//! flight — is kept in one place, behind a mutex shared by the layer, its services,
//! their futures and handles; [`BreakerHandle::state`] reads it, nothing mirrors it.
//! Each admitted call holds a permit that records the call's outcome exactly once,
//! when its future completes or is dropped. Time is tokio's
//! ([`tokio::time::Instant`]), as in the [timeout](crate::timeout) and
//! [retry](crate::retry) layers: on paused time (`tokio::time::advance`) the open
//! period passes like any deadline; outside a runtime it is the system clock.
//!
//! [`failsafe`] supplies the failure policy through its
//! [`FailurePolicy`](failsafe::failure_policy::FailurePolicy) trait:
//! [`consecutive_failures`](failsafe::failure_policy::consecutive_failures) with a
//! [`constant`](failsafe::backoff::constant) backoff of `open_for` counts the run of
//! failures (a success resets it), decides when it opens the breaker and for how
//! long, and forgets it when a probe succeeds. Failsafe's own state machine is not used: it measures time with
//! `std::time::Instant`, has no state getter and lets every call through while
//! half-open.
//!
//! Any `open_for` works: zero turns half-open at once; sub-second periods are fine
//! (failsafe's exponential and jittered backoffs panic under one second, the constant
//! one does not); and a period whose end lies beyond what the clock can represent,
//! such as [`Duration::MAX`](std::time::Duration::MAX), keeps the breaker open for
//! good — it never lets a probe through.
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
//! // The timed-out attempts may have reached the broker: the outcome is unknown.
//! assert!(err.maybe_delivered());
//! assert_eq!(health.state(), BreakerState::Open);
//! assert_eq!(health.state().as_str(), "open");
//! # }
//! ```

mod future;
mod layer;
mod service;
mod state;
#[cfg(test)]
mod test_support;

use self::state::Verdict;
pub use self::{
    future::ResponseFuture,
    layer::CircuitBreakerLayer,
    service::CircuitBreaker,
    state::{BreakerHandle, BreakerState},
};
use crate::{
    error::{ErrorKind, PublishError},
    event::Receipt,
};

/// What a finished call says about the broker: the one place that decides what the
/// breaker counts (see "What counts" above).
///
/// - a confirm, `Unroutable`, `Nacked` or a refusal (403, 404, 406): success — the
///   broker answered, it is healthy;
/// - a connection error tagged with its connection's generation: a failure counted
///   once per generation;
/// - any other error for which [`PublishError::is_broker_failure`] holds (connection,
///   timeout, pool exhausted): failure;
/// - any other error: ignored — it says nothing about the broker.
///
/// A call dropped before it finishes never gets here: the permit records a dropped
/// probe as a failure and any other dropped call not at all (`state::Permit`).
fn verdict(result: &Result<Receipt, PublishError>) -> Verdict {
    match result {
        Ok(_) => Verdict::Success,
        Err(e) if e.is_broker_failure() => match e.connection_generation() {
            Some(generation) if e.kind() == ErrorKind::Connection => {
                Verdict::ConnectionLost(generation)
            }
            _ => Verdict::Failure,
        },
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::Unroutable
                    | ErrorKind::Nacked
                    | ErrorKind::AccessRefused
                    | ErrorKind::NotFound
                    | ErrorKind::PreconditionFailed
            ) =>
        {
            Verdict::Success
        }
        Err(_) => Verdict::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::ServiceExt;
    use uuid::Uuid;

    use super::{
        test_support::{Backend, OPEN_FOR, Reply, event},
        *,
    };
    use crate::{retry::RetryLayer, timeout::TimeoutLayer};

    #[test]
    fn verdicts() {
        assert_eq!(
            verdict(&Ok(Receipt::new(Uuid::nil(), Duration::ZERO))),
            Verdict::Success
        );
        for (kind, expected) in [
            (ErrorKind::Validation, Verdict::Ignore),
            (ErrorKind::MissingOrganization, Verdict::Ignore),
            (ErrorKind::OrganizationMismatch, Verdict::Ignore),
            (ErrorKind::Nacked, Verdict::Success),
            (ErrorKind::Unroutable, Verdict::Success),
            (ErrorKind::AccessRefused, Verdict::Success),
            (ErrorKind::NotFound, Verdict::Success),
            (ErrorKind::PreconditionFailed, Verdict::Success),
            (ErrorKind::Timeout, Verdict::Failure),
            (ErrorKind::CircuitOpen, Verdict::Ignore),
            (ErrorKind::Connection, Verdict::Failure),
            (ErrorKind::PoolTimeout, Verdict::Failure),
            (ErrorKind::Blocked, Verdict::Failure),
            (ErrorKind::QueueFull, Verdict::Ignore),
            (ErrorKind::Shutdown, Verdict::Ignore),
            (ErrorKind::Config, Verdict::Ignore),
        ] {
            let result = Err(PublishError::new(kind, "x"));
            assert_eq!(verdict(&result), expected, "{kind:?}");
        }
        let lost = Err(PublishError::new(ErrorKind::Connection, "x").on_connection(7));
        assert_eq!(verdict(&lost), Verdict::ConnectionLost(7));
        let timeout = Err(PublishError::new(ErrorKind::Timeout, "x").on_connection(7));
        assert_eq!(verdict(&timeout), Verdict::Failure);
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

    #[tokio::test(start_paused = true)]
    async fn the_open_period_runs_on_tokio_time_and_ends_in_a_probe() {
        let backend = Backend::default();
        backend.then_fail(ErrorKind::Connection, 1);
        let breaker = CircuitBreakerLayer::new(1, OPEN_FOR);
        let handle = breaker.handle();
        let svc = tower::ServiceBuilder::new()
            .layer(breaker)
            .service(backend.clone());
        svc.clone().oneshot(event()).await.unwrap_err();
        assert_eq!(handle.state(), BreakerState::Open);
        tokio::time::sleep(OPEN_FOR).await;
        assert_eq!(handle.state(), BreakerState::HalfOpen);
        svc.oneshot(event()).await.unwrap();
        assert_eq!(handle.state(), BreakerState::Closed);
        assert_eq!(backend.calls(), 2);
    }
}
