//! Middleware that puts a deadline on a publish, failing with a typed [`PublishError`].
//!
//! In the [publish stack](crate::stack) it is stages 5 (the whole publish) and 9 (one
//! attempt): it needs a complete event from the front.
//!
//! When the inner service has not answered within the deadline, the call resolves
//! with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout), a message such as
//! `publish attempt timed out after 5000 ms`, and the event's id. The inner future is
//! dropped, which cancels it.
//!
//! The outcome of a timed-out call is **unknown**: the event may have been written and
//! its confirm be late or lost, so the error is
//! [`maybe_delivered`](PublishError::maybe_delivered) — publish it again only with the
//! same event id. (The layer cannot tell whether the inner call had written the event
//! yet; it errs on the side of "maybe".)
//!
//! The stack uses it twice (see [`circuit_breaker`](crate::circuit_breaker) for the
//! whole order):
//! - [`TimeoutLayer::attempt`] inside the retry and the circuit breaker bounds one
//!   try at the broker; its error is retryable and counts as a broker failure. (The
//!   [`EventPublisher`](crate::EventPublisher) over the AMQP transport sets it to the
//!   publish deadline, as a backstop: that transport handles a late confirm itself, see
//!   [`circuit_breaker`](crate::circuit_breaker).)
//! - [`TimeoutLayer::overall`] outside the retry bounds the whole publish, backoff
//!   included, so a caller never waits longer than that.
//!
//! # Differences from `tower::timeout`
//! [`tower::timeout::Timeout`] fails with a `BoxError` holding
//! [`Elapsed`](tower::timeout::error::Elapsed): every layer above it must then use
//! `BoxError` and callers must downcast. This layer keeps the crate's one error type,
//! so [`PublishError::kind`], [`PublishError::is_retryable`] and
//! [`PublishError::is_broker_failure`] work on a timeout like on any other failure,
//! and the error names the event and whether one attempt or the whole publish ran out.
//! The deadline starts when [`Service::call`] is called, as in tower.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use fitviz_events::{Event, ErrorKind, PublishError, Receipt, timeout::TimeoutLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // A broker that never confirms.
//! let stuck = service_fn(|_: Event| std::future::pending::<Result<Receipt, PublishError>>());
//! let svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::attempt(Duration::from_secs(5)))
//!     .service(stuck);
//! let event = Event::from_json("workout.created", serde_json::json!({}));
//! let id = event.id();
//! let err = svc.oneshot(event).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Timeout);
//! assert_eq!(err.event_id(), Some(id));
//! assert!(err.to_string().starts_with("publish attempt timed out after 5000 ms"));
//! # }
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;
use uuid::Uuid;

use crate::{error::PublishError, event::Event, event::Receipt};

/// Puts a deadline on each call; see the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    after: Duration,
    what: &'static str,
}

impl TimeoutLayer {
    /// A deadline of `after` on the whole publish; the same as [`overall`](Self::overall).
    pub fn new(after: Duration) -> Self {
        Self::overall(after)
    }

    /// A deadline of `after` on the whole publish, retries and backoff included:
    /// the error says `publish timed out after … ms`.
    pub fn overall(after: Duration) -> Self {
        Self {
            after,
            what: "publish",
        }
    }

    /// A deadline of `after` on one attempt at the broker (inside the retry):
    /// the error says `publish attempt timed out after … ms`.
    pub fn attempt(after: Duration) -> Self {
        Self {
            after,
            what: "publish attempt",
        }
    }

    /// The deadline.
    pub fn duration(&self) -> Duration {
        self.after
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            layer: *self,
        }
    }
}

/// The service built by [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    layer: TimeoutLayer,
}

impl<S> Service<Event> for Timeout<S>
where
    S: Service<Event, Response = Receipt, Error = PublishError>,
{
    type Response = Receipt;
    type Error = PublishError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.inner.poll_ready(cx)
    }

    /// Calls the inner service and starts the deadline.
    ///
    /// # Panics
    /// Outside a tokio runtime with the time driver enabled, like [`tokio::time::sleep`].
    fn call(&mut self, event: Event) -> Self::Future {
        let event_id = event.id();
        ResponseFuture {
            inner: self.inner.call(event),
            // `sleep` caps absurd durations at about 30 years instead of overflowing.
            sleep: tokio::time::sleep(self.layer.after),
            event_id,
            layer: self.layer,
        }
    }
}

pin_project! {
    /// The response future of [`Timeout`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        event_id: Uuid,
        layer: TimeoutLayer,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Receipt, PublishError>>,
{
    type Output = Result<Receipt, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The inner result wins a tie: it is already there.
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(PublishError::timeout(
                this.layer.what,
                this.layer.after,
            )
            .for_event(*this.event_id)
            .mark_maybe_delivered())),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::error::ErrorKind;

    fn event() -> Event {
        Event::from_json("workout.created", serde_json::json!({}))
    }

    /// A transport that answers with `result` after `delay` (virtual time).
    fn answers_after(
        delay: Duration,
        result: Result<(), ErrorKind>,
    ) -> impl Service<
        Event,
        Response = Receipt,
        Error = PublishError,
        Future = impl Future<Output = Result<Receipt, PublishError>>,
    > + Clone {
        service_fn(move |e: Event| async move {
            tokio::time::sleep(delay).await;
            result
                .map(|()| Receipt::new(e.id(), delay))
                .map_err(|kind| PublishError::new(kind, "inner failed").for_event(e.id()))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn expires_exactly_at_the_deadline() {
        let svc = TimeoutLayer::attempt(Duration::from_secs(5))
            .layer(answers_after(Duration::from_secs(3600), Ok(())));
        let event = event();
        let id = event.id();
        let start = Instant::now();
        let err = svc.oneshot(event).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.maybe_delivered(), "{err}");
        assert!(err.is_retryable() && err.is_broker_failure());
        assert_eq!(err.event_id(), Some(id));
        assert_eq!(
            err.to_string(),
            format!(
                "publish attempt timed out after 5000 ms (event {id}) [outcome unknown: the event \
                 may have reached the broker; publish it again only with the same event_id]"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_inner_result_passes_through_before_the_deadline() {
        let deadline = Duration::from_secs(5);
        let just_before = deadline - Duration::from_millis(1);

        let svc = TimeoutLayer::attempt(deadline).layer(answers_after(just_before, Ok(())));
        let start = Instant::now();
        let receipt = svc.oneshot(event()).await.unwrap();
        assert_eq!(start.elapsed(), just_before);
        assert_eq!(receipt.elapsed, just_before);

        let svc = TimeoutLayer::attempt(deadline)
            .layer(answers_after(just_before, Err(ErrorKind::Unroutable)));
        let err = svc.oneshot(event()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unroutable);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_at_the_deadline_wins() {
        let deadline = Duration::from_secs(5);
        let svc = TimeoutLayer::attempt(deadline).layer(answers_after(deadline, Ok(())));
        svc.oneshot(event()).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn overall_names_the_whole_publish() {
        let layer = TimeoutLayer::overall(Duration::from_millis(1500));
        assert_eq!(layer.duration(), Duration::from_millis(1500));
        let svc = layer.layer(answers_after(Duration::from_secs(2), Ok(())));
        let err = svc.oneshot(event()).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("publish timed out after 1500 ms (event "),
            "{err}"
        );
        assert_eq!(
            TimeoutLayer::new(Duration::from_secs(1)).what,
            TimeoutLayer::overall(Duration::from_secs(1)).what
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_and_huge_deadlines_do_not_panic() {
        let svc = TimeoutLayer::attempt(Duration::MAX).layer(answers_after(Duration::ZERO, Ok(())));
        svc.oneshot(event()).await.unwrap();

        let svc = TimeoutLayer::attempt(Duration::ZERO)
            .layer(answers_after(Duration::from_secs(1), Ok(())));
        let start = Instant::now();
        let err = svc.oneshot(event()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(start.elapsed() <= Duration::from_millis(1));
    }
}
