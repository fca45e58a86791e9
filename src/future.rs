//! The future shared by the front layers ([`validate`](crate::validate),
//! [`organization`](crate::organization), [`envelope`](crate::envelope)): each either
//! rejects an event before calling its inner service, or returns the inner future.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;

use crate::error::PublishError;

pin_project! {
    /// The response future of the front layers: an error decided before the inner
    /// service was called, or the inner service's future. A rejection spends a unit of
    /// tokio's cooperative budget (see `tokio::task::coop`), so a caller looping on
    /// rejected events cannot starve the runtime.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Rejected { error: Option<PublishError> },
        Inner { #[pin] future: F },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn rejected(error: PublishError) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }

    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, PublishError>>,
{
    type Output = Result<T, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { error } => {
                // No I/O happened: spend cooperative budget so a loop of rejected events
                // yields to the scheduler now and then.
                std::task::ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
            KindProj::Inner { future } => future.poll(cx),
        }
    }
}
