//! [`ResponseFuture`]: the admitted call, which records its verdict, or the refusal.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use uuid::Uuid;

use super::{state::Permit, verdict};
use crate::{error::PublishError, event::Receipt};

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker): the inner
    /// service's future for an admitted call, which records the outcome when it
    /// completes (and a failure if a probe is dropped before), or an immediate
    /// `CircuitOpen` error when the breaker refused the call. The refusal spends a unit
    /// of tokio's cooperative budget, so a caller looping on it cannot starve the runtime.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Called {
            // Declared first so it is dropped (cancelled) before the permit records.
            #[pin]
            inner: F,
            // `None` once settled.
            permit: Option<Permit>,
        },
        Refused {
            event_id: Uuid,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn called(inner: F, permit: Permit) -> Self {
        Self {
            kind: Kind::Called {
                inner,
                permit: Some(permit),
            },
        }
    }

    pub(super) fn refused(event_id: Uuid) -> Self {
        Self {
            kind: Kind::Refused { event_id },
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Receipt, PublishError>>,
{
    type Output = Result<Receipt, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { inner, permit } => {
                let result = std::task::ready!(inner.poll(cx));
                if let Some(permit) = permit.take() {
                    permit.settle(verdict(&result));
                }
                Poll::Ready(result)
            }
            KindProj::Refused { event_id } => {
                // A refusal does no I/O: spend a unit of tokio's cooperative budget so a
                // caller looping on it yields now and then (timers, the half-open probe
                // and `close` get their turn).
                std::task::ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
                Poll::Ready(Err(PublishError::circuit_open().for_event(*event_id)))
            }
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

    #[tokio::test(start_paused = true)]
    async fn dropping_a_probe_counts_as_a_failure_and_releases_it() {
        let (mut svc, backend, handle) = opened_then_waited().await;
        backend.reply(Reply::Never);
        let mut probe = start(&mut svc);
        assert!(probe.poll_unpin(&mut noop_cx()).is_pending());
        assert_eq!(handle.state(), BreakerState::HalfOpen);
        drop(probe);
        assert_eq!(handle.state(), BreakerState::Open);
        assert_refused(publish(&mut svc));

        advance(OPEN_FOR).await;
        publish(&mut svc).unwrap();
        assert_eq!(handle.state(), BreakerState::Closed);
        assert_eq!(backend.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_probe_that_was_never_polled_counts_too() {
        let (mut svc, backend, handle) = opened_then_waited().await;
        drop(start(&mut svc));
        assert_eq!(handle.state(), BreakerState::Open);
        assert_eq!(backend.calls(), 2);
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
    fn a_refused_call_fails_at_once_with_the_event_id() {
        let (mut svc, backend, _handle) = breaker(1);
        backend.then_fail(ErrorKind::Connection, 1);
        publish(&mut svc).unwrap_err();
        let mut refused = start(&mut svc);
        let result = match refused.poll_unpin(&mut noop_cx()) {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => panic!("a refusal is immediate"),
        };
        assert_refused(result);
        assert_eq!(backend.calls(), 1);
    }
}
