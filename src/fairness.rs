//! Middleware that keeps one organization from taking more than its share of the
//! publishes in flight, so a tenant flooding events slows itself, not the others.
//!
//! In the [publish stack](crate::stack) it is stage 6: it needs the organization id
//! (stage 3) and the overall deadline outside it.
//!
//! [`FairShareLayer`] counts the publishes in flight per organization (the tenant of
//! the event; events without one count together as one tenant). A publish of an
//! organization that already has `limit` in flight waits, in order, until one of them
//! finishes; the deadline outside it (the overall publish timeout in the default
//! stack) bounds that wait, so a flooding tenant's surplus fails with
//! [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) while the other tenants' publishes
//! go straight through. A publish below its share pays one short, sharded lock and a
//! `try_acquire`: no await, no allocation (an organization's counter is created on its
//! first publish and kept; idle ones are dropped when a shard has many).
//!
//! The default stack ([the map](crate::stack)) puts it inside the overall deadline,
//! outside the retry, so a publish holds its share across retries and backoff. Its limit is `max_in_flight_per_organization_percent` of the transport's
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
/// Organizations a shard keeps before a new one makes it drop the idle ones.
const SWEEP_AT: usize = 64;

/// Per-organization counters of a bounded resource: a semaphore of `limit` permits per
/// organization, created on first use and kept, so a steady tenant allocates nothing;
/// a shard that holds [`SWEEP_AT`] organizations drops its idle ones before it takes a
/// new one, so memory stays bounded by the organizations active at once.
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

    /// A unit of `org`'s share if it has one free; otherwise the semaphore to wait on.
    pub(crate) fn try_acquire(&self, org: &str) -> Result<ShareGuard, Arc<Semaphore>> {
        let sem = {
            let mut map = self.shard(org);
            match map.get(org) {
                Some(sem) => sem.clone(),
                None => {
                    if map.len() >= SWEEP_AT {
                        // Only the map holds an idle organization's semaphore: nobody holds
                        // or waits for its permits, and nobody can get it without this lock.
                        map.retain(|_, sem| Arc::strong_count(sem) > 1);
                    }
                    let sem = Arc::new(Semaphore::new(self.limit));
                    map.insert(Arc::from(org), sem.clone());
                    sem
                }
            }
        };
        match sem.clone().try_acquire_owned() {
            Ok(permit) => Ok(ShareGuard(permit)),
            Err(_) => Err(sem),
        }
    }

    /// Waits for a unit of the share `sem` counts.
    pub(crate) async fn acquire(sem: Arc<Semaphore>) -> ShareGuard {
        let permit = sem
            .acquire_owned()
            .await
            .expect("the semaphores of Shares are never closed");
        ShareGuard(permit)
    }

    /// Organizations tracked now, for tests.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

/// A unit of an organization's share, given back when dropped.
#[derive(Debug)]
pub(crate) struct ShareGuard(#[allow(dead_code)] OwnedSemaphorePermit);

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
            Err(sem) => {
                // Keep the service that was made ready for this call.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    kind: Kind::Waiting {
                        wait: Box::pin(Shares::acquire(sem)),
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
    }

    #[test]
    fn idle_organizations_are_dropped_when_a_shard_is_full() {
        let shares = Shares::new(1);
        let busy = shares.try_acquire("busy").unwrap();
        for i in 0..10_000 {
            drop(shares.try_acquire(&format!("org-{i}")).unwrap());
        }
        assert!(
            shares.tracked() <= SHARDS * SWEEP_AT,
            "{}",
            shares.tracked()
        );
        // The busy one was kept: its permit is still taken.
        assert!(shares.try_acquire("busy").is_err());
        drop(busy);
        assert!(shares.try_acquire("busy").is_ok());
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
