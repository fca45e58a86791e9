//! A scripted fake transport and helpers for the breaker's unit tests.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::FutureExt;
use tokio::sync::oneshot;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use super::{BreakerHandle, BreakerState, CircuitBreaker, CircuitBreakerLayer};
use crate::{
    error::{ErrorKind, PublishError},
    event::{Event, Receipt},
};

pub(super) const OPEN_FOR: Duration = Duration::from_secs(10);
pub(super) const TICK: Duration = Duration::from_millis(1);

pub(super) fn event() -> Event {
    Event::from_json("workout.created", serde_json::json!({}))
}

pub(super) enum Reply {
    Now(Result<(), ErrorKind>),
    Later(oneshot::Receiver<Result<(), ErrorKind>>),
    Never,
}

/// A fake transport answering each call with the next scripted reply (default:
/// a confirm), counting calls.
#[derive(Clone, Default)]
pub(super) struct Backend {
    calls: Arc<AtomicUsize>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

impl Backend {
    pub(super) fn reply(&self, reply: Reply) -> &Self {
        self.script.lock().unwrap().push_back(reply);
        self
    }

    pub(super) fn then_fail(&self, kind: ErrorKind, times: usize) -> &Self {
        for _ in 0..times {
            self.reply(Reply::Now(Err(kind)));
        }
        self
    }

    /// A reply that comes when the test sends it.
    pub(super) fn then_later(&self) -> oneshot::Sender<Result<(), ErrorKind>> {
        let (tx, rx) = oneshot::channel();
        self.reply(Reply::Later(rx));
        tx
    }

    pub(super) fn calls(&self) -> usize {
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

pub(super) type Fut = <CircuitBreaker<Backend> as Service<Event>>::Future;

pub(super) fn breaker(threshold: u32) -> (CircuitBreaker<Backend>, Backend, BreakerHandle) {
    let backend = Backend::default();
    let layer = CircuitBreakerLayer::new(threshold, OPEN_FOR);
    let handle = layer.handle();
    (layer.layer(backend.clone()), backend, handle)
}

/// Opens a threshold-1 breaker, then lets the open period pass (paused tokio time).
pub(super) async fn opened_then_waited() -> (CircuitBreaker<Backend>, Backend, BreakerHandle) {
    let (mut svc, backend, handle) = breaker(1);
    backend.then_fail(ErrorKind::Connection, 1);
    publish(&mut svc).unwrap_err();
    assert_eq!(handle.state(), BreakerState::Open);
    tokio::time::advance(OPEN_FOR - TICK).await;
    assert_refused(publish(&mut svc));
    assert_eq!(handle.state(), BreakerState::Open);
    tokio::time::advance(TICK).await;
    // The open period is over: the handle says so before any call arrives.
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    (svc, backend, handle)
}

/// Admission happens in `call`; the returned future records the outcome.
pub(super) fn start(svc: &mut CircuitBreaker<Backend>) -> Fut {
    svc.ready().now_or_never().unwrap().unwrap();
    svc.call(event())
}

/// Calls and resolves a call whose reply is immediate.
pub(super) fn publish(svc: &mut CircuitBreaker<Backend>) -> Result<Receipt, PublishError> {
    start(svc).now_or_never().expect("the reply is immediate")
}

pub(super) fn assert_refused(result: Result<Receipt, PublishError>) {
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

pub(super) fn noop_cx() -> Context<'static> {
    Context::from_waker(std::task::Waker::noop())
}
