//! [`CircuitBreaker`]: admits or refuses each call.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tower_service::Service;

use super::{
    future::ResponseFuture,
    state::{Breaker, BreakerHandle},
};
use crate::{
    error::PublishError,
    event::{Event, Receipt},
};

/// The service built by [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    breaker: Arc<Breaker>,
}

impl<S> CircuitBreaker<S> {
    pub(super) fn new(inner: S, breaker: Arc<Breaker>) -> Self {
        Self { inner, breaker }
    }

    /// A handle on the breaker this service shares.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.breaker.clone())
    }
}

impl<S> Service<Event> for CircuitBreaker<S>
where
    S: Service<Event, Response = Receipt, Error = PublishError>,
{
    type Response = Receipt;
    type Error = PublishError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.inner.poll_ready(cx)
    }

    /// Calls the inner service if the breaker admits the call; otherwise the future
    /// fails at once with `CircuitOpen`, without touching the inner service.
    fn call(&mut self, event: Event) -> Self::Future {
        match self.breaker.admit() {
            Some(permit) => ResponseFuture::called(self.inner.call(event), permit),
            None => ResponseFuture::refused(event.id()),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use tokio::time::advance;

    use crate::{
        circuit_breaker::{
            state::BreakerState,
            test_support::{
                OPEN_FOR, Reply, assert_refused, breaker, noop_cx, opened_then_waited, publish,
                start,
            },
        },
        error::ErrorKind,
    };

    #[test]
    fn opens_after_threshold_consecutive_broker_failures() {
        let (mut svc, backend, handle) = breaker(3);
        assert_eq!(handle.state(), BreakerState::Closed);
        backend
            .then_fail(ErrorKind::Timeout, 1)
            .then_fail(ErrorKind::PoolTimeout, 1)
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

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through_and_its_success_closes() {
        let (mut svc, backend, handle) = opened_then_waited().await;
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
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_it() {
        let (mut svc, backend, handle) = opened_then_waited().await;
        backend.then_fail(ErrorKind::Timeout, 1);
        assert_eq!(publish(&mut svc).unwrap_err().kind(), ErrorKind::Timeout);
        assert_eq!(handle.state(), BreakerState::Open);
        assert_refused(publish(&mut svc));
        assert_eq!(backend.calls(), 2);

        // The next open period ends the same way: one probe, which now succeeds.
        advance(OPEN_FOR).await;
        publish(&mut svc).unwrap();
        assert_eq!(handle.state(), BreakerState::Closed);
        assert_eq!(backend.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unroutable_probe_closes_it() {
        let (mut svc, backend, handle) = opened_then_waited().await;
        backend.then_fail(ErrorKind::Unroutable, 1);
        assert_eq!(publish(&mut svc).unwrap_err().kind(), ErrorKind::Unroutable);
        assert_eq!(handle.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_says_nothing_about_the_broker_is_released() {
        let (mut svc, backend, handle) = opened_then_waited().await;
        backend.then_fail(ErrorKind::Validation, 1);
        assert_eq!(publish(&mut svc).unwrap_err().kind(), ErrorKind::Validation);
        assert_eq!(handle.state(), BreakerState::HalfOpen);
        // The next call is the new probe.
        publish(&mut svc).unwrap();
        assert_eq!(handle.state(), BreakerState::Closed);
    }
}
