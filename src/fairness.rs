//! Middleware that keeps one organization from taking more than its share of the
//! publishes in flight, so a tenant flooding events slows itself, not the others.
//!
//! [`FairShareLayer`] counts the publishes in flight per organization (the tenant of
//! the event; events without one count together as one tenant). A publish of an
//! organization that already has `limit` in flight waits, in order, until one of them
//! finishes; the deadline outside it (the overall publish timeout in the default
//! stack) bounds that wait, so a flooding tenant's surplus fails with
//! [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) while the other tenants' publishes
//! go straight through. A publish below its share pays one short, sharded lock and a
//! `try_acquire`: no await, no allocation.
//!
//! The default stack puts it inside the overall deadline, outside the retry, so a
//! publish holds its share across retries and backoff:
//! overall deadline → **fair share** → retry → circuit breaker → attempt deadline →
//! transport. Its limit is `max_in_flight_per_organization_percent` of the transport's
//! in-flight capacity (`pool_size × max_in_flight`). Detached events are delivered
//! through the same stack, so they share their organization's limit; the detached
//! queue has a share of its own (`detached_share_per_organization_percent`).
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use fitviz_events::{Event, PublishError, Receipt, fairness::FairShareLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = FairShareLayer::new(2);
//! let svc = ServiceBuilder::new().layer(layer.clone()).service(service_fn(|e: Event| async move {
//!     Ok::<_, PublishError>(Receipt::new(e.id(), Duration::ZERO))
//! }));
//! let event = Event::from_json("workout.created", serde_json::json!({})).with_organization("org-1");
//! svc.oneshot(event).await.unwrap();
//! assert_eq!(layer.in_flight(Some("org-1")), 0);
//! # }
//! ```

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    hash::{BuildHasher, RandomState},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    error::PublishError,
    event::{Event, Receipt},
};

const SHARDS: usize = 16;

/// Per-organization counters of a bounded resource: a semaphore of `limit` permits per
/// organization, created on first use and dropped when the organization is idle.
pub(crate) struct Shares {
    limit: usize,
    hasher: RandomState,
    shards: [Mutex<HashMap<Arc<str>, Arc<Semaphore>>>; SHARDS],
}

impl fmt::Debug for Shares {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shares")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// An organization's name in [`Shares`]: events without one share the empty name.
pub(crate) fn tenant(event: &Event) -> &str {
    event.organization_id().map_or("", |org| org.as_str())
}

impl Shares {
    /// At most `limit` (at least 1) per organization.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        })
    }

    /// The most one organization may hold.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    fn shard(&self, org: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Semaphore>>> {
        let index = (self.hasher.hash_one(org) as usize) % SHARDS;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many `org` holds now.
    pub(crate) fn held(&self, org: &str) -> usize {
        self.shard(org)
            .get(org)
            .map_or(0, |sem| self.limit - sem.available_permits())
    }

    /// A unit of `org`'s share if it has one free; otherwise what to wait on.
    pub(crate) fn try_acquire(
        self: &Arc<Self>,
        org: &str,
    ) -> Result<ShareGuard, (Arc<str>, Arc<Semaphore>)> {
        let (key, sem) = {
            let mut map = self.shard(org);
            match map.get_key_value(org) {
                Some((key, sem)) => (key.clone(), sem.clone()),
                None => {
                    let (key, sem) = (Arc::<str>::from(org), Arc::new(Semaphore::new(self.limit)));
                    map.insert(key.clone(), sem.clone());
                    (key, sem)
                }
            }
        };
        match sem.clone().try_acquire_owned() {
            Ok(permit) => Ok(self.guard(key, permit)),
            Err(_) => Err((key, sem)),
        }
    }

    /// Waits for a unit of `org`'s share.
    pub(crate) async fn acquire(self: Arc<Self>, key: Arc<str>, sem: Arc<Semaphore>) -> ShareGuard {
        let permit = sem
            .acquire_owned()
            .await
            .expect("the semaphores of Shares are never closed");
        self.guard(key, permit)
    }

    fn guard(self: &Arc<Self>, key: Arc<str>, permit: OwnedSemaphorePermit) -> ShareGuard {
        ShareGuard {
            shares: self.clone(),
            key,
            permit: Some(permit),
        }
    }
}

/// A unit of an organization's share, given back when dropped.
pub(crate) struct ShareGuard {
    shares: Arc<Shares>,
    key: Arc<str>,
    permit: Option<OwnedSemaphorePermit>,
}

impl fmt::Debug for ShareGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ShareGuard").field(&self.key).finish()
    }
}

impl Drop for ShareGuard {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut map = self.shares.shard(&self.key);
        // Only the map holds the semaphore: nobody holds or waits for a permit, and
        // nobody can get it without this lock. Drop the idle organization.
        if map
            .get(&*self.key)
            .is_some_and(|sem| Arc::strong_count(sem) == 1)
        {
            map.remove(&*self.key);
        }
    }
}

/// Limits the publishes in flight per organization; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct FairShareLayer {
    shares: Arc<Shares>,
}

impl FairShareLayer {
    /// At most `limit` publishes in flight per organization (a `limit` of 0 counts as 1).
    pub fn new(limit: usize) -> Self {
        Self {
            shares: Shares::new(limit),
        }
    }

    /// The most publishes one organization may have in flight.
    pub fn limit(&self) -> usize {
        self.shares.limit()
    }

    /// The publishes of `organization` (`None`: events without one) in flight now,
    /// counted by this layer and every service it built.
    pub fn in_flight(&self, organization: Option<&str>) -> usize {
        self.shares.held(organization.unwrap_or(""))
    }
}

impl<S: Clone> Layer<S> for FairShareLayer {
    type Service = FairShare<S>;

    fn layer(&self, inner: S) -> FairShare<S> {
        FairShare {
            inner,
            shares: self.shares.clone(),
        }
    }
}

/// The service built by [`FairShareLayer`].
#[derive(Clone, Debug)]
pub struct FairShare<S> {
    inner: S,
    shares: Arc<Shares>,
}

impl<S> Service<Event> for FairShare<S>
where
    S: Service<Event, Response = Receipt, Error = PublishError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Receipt;
    type Error = PublishError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, event: Event) -> Self::Future {
        match self.shares.try_acquire(tenant(&event)) {
            Ok(guard) => ResponseFuture {
                kind: Kind::Called {
                    inner: self.inner.call(event),
                    guard: Some(guard),
                },
            },
            Err((key, sem)) => {
                // Keep the service that was made ready for this call.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    kind: Kind::Waiting {
                        wait: Box::pin(self.shares.clone().acquire(key, sem)),
                        call: Some((inner, event)),
                    },
                }
            }
        }
    }
}

type Wait = Pin<Box<dyn Future<Output = ShareGuard> + Send>>;

pin_project! {
    /// The response future of [`FairShare`]: waits for the organization's share if
    /// it has none free, then the inner service's future.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ResponseFuture<S: Service<Event>> {
        #[pin]
        kind: Kind<S>,
    }
}

pin_project! {
    #[project = KindProj]
    #[project_replace = KindReplace]
    enum Kind<S: Service<Event>> {
        Waiting { wait: Wait, call: Option<(S, Event)> },
        Called {
            #[pin]
            inner: S::Future,
            // Held until the inner future ends (or is dropped).
            guard: Option<ShareGuard>,
        },
    }
}

impl<S: Service<Event>> fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Event, Response = Receipt, Error = PublishError>,
{
    type Output = Result<Receipt, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            match kind.as_mut().project() {
                KindProj::Waiting { wait, call } => {
                    let guard = std::task::ready!(wait.as_mut().poll(cx));
                    let (mut inner, event) = call.take().expect("polled after completion");
                    let inner = inner.call(event);
                    kind.as_mut().project_replace(Kind::Called {
                        inner,
                        guard: Some(guard),
                    });
                }
                KindProj::Called { inner, guard } => {
                    let result = std::task::ready!(inner.poll(cx));
                    drop(guard.take());
                    return Poll::Ready(result);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;
    use tokio::sync::oneshot;
    use tower::ServiceExt;

    use super::*;

    fn event(org: &str) -> Event {
        Event::from_json("workout.created", serde_json::json!({})).with_organization(org)
    }

    #[test]
    fn a_tenant_waits_above_its_share_and_others_go_through() {
        let layer = FairShareLayer::new(2);
        let (tx, rx) = std::sync::mpsc::channel::<oneshot::Sender<()>>();
        let svc = layer.layer(tower::service_fn(move |e: Event| {
            let (done, wait) = oneshot::channel();
            tx.send(done).unwrap();
            async move {
                let _ = wait.await;
                Ok::<_, PublishError>(Receipt::new(e.id(), Duration::ZERO))
            }
        }));
        let mut a1 = svc.clone().oneshot(event("a")).boxed();
        let mut a2 = svc.clone().oneshot(event("a")).boxed();
        let mut a3 = svc.clone().oneshot(event("a")).boxed();
        let mut b1 = svc.clone().oneshot(event("b")).boxed();
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        for f in [&mut a1, &mut a2, &mut a3, &mut b1] {
            assert!(f.poll_unpin(cx).is_pending());
        }
        assert_eq!(layer.in_flight(Some("a")), 2);
        assert_eq!(layer.in_flight(Some("b")), 1);
        // a3 waits: the transport saw a1, a2 and b1 only.
        let calls: Vec<_> = rx.try_iter().collect();
        assert_eq!(calls.len(), 3);
        // a1 finishes: a3 gets its place.
        calls.into_iter().next().unwrap().send(()).unwrap();
        assert!(a1.poll_unpin(cx).is_ready());
        assert!(a3.poll_unpin(cx).is_pending());
        assert_eq!(rx.try_iter().count(), 1);
        assert_eq!(layer.in_flight(Some("a")), 2);
        drop((a2, a3, b1));
        assert_eq!(layer.in_flight(Some("a")), 0);
        assert_eq!(layer.in_flight(Some("b")), 0);
        // Idle organizations are forgotten.
        assert!(
            layer
                .shares
                .shards
                .iter()
                .all(|s| s.lock().unwrap().is_empty())
        );
    }

    #[test]
    fn events_without_an_organization_count_together() {
        let shares = Shares::new(1);
        let none = Event::from_json("workout.created", serde_json::json!({}));
        let held = shares.try_acquire(tenant(&none)).unwrap();
        assert!(shares.try_acquire(tenant(&none)).is_err());
        assert!(shares.try_acquire("org").is_ok());
        drop(held);
        assert!(shares.try_acquire("").is_ok());
    }
}
