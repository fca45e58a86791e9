//! Detached publishing: hand an event to a bounded in-memory queue and return at once.
//!
//! This is the original library's `async_publish`, with its memory kept bounded: a
//! background worker drains the queue through the delivery stack (retry, circuit
//! breaker, timeouts) and keeps retrying an event while the broker is unavailable,
//! so events queued before an outage are delivered after it. The queue holds at most
//! `detached_capacity` events plus the `detached_concurrency` being published; when
//! it is full, a new event waits up to `detached_overflow_wait` for room (by default
//! not at all) and is then rejected with [`ErrorKind::QueueFull`].
//!
//! Nothing is dropped silently: an event the broker refuses for good (unroutable,
//! invalid) is logged at error level and counted, and
//! [`EventPublisher::close`](crate::EventPublisher::close) flushes the queue and reports
//! what could not be sent in its [`CloseReport`].

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
};
use tower::{ServiceExt, util::BoxCloneSyncService};
use tower_service::Service;
use uuid::Uuid;

use crate::{
    config::PublisherConfig,
    error::{ErrorKind, PublishError},
    event::{Event, Receipt},
    fairness::{ShareGuard, Shares, tenant},
    log_limit::LogLimiter,
    telemetry,
    transport::{HeaderCheck, check_body_size},
};

/// The delivery stack the worker publishes through.
type Delivery = BoxCloneSyncService<Event, Receipt, PublishError>;

/// The queue's settings, from the `detached_*` fields of [`PublisherConfig`].
#[derive(Clone, Debug)]
pub(crate) struct DetachedSettings {
    capacity: usize,
    /// How many of the queue's events one organization may have.
    share: usize,
    concurrency: usize,
    /// How long a new event waits for room in a full queue; zero rejects at once.
    overflow_wait: Duration,
    redelivery_base: Duration,
    redelivery_max: Duration,
    /// [`PublisherConfig::max_body_bytes`]: an event over it is refused before it is
    /// queued, so that `spawn`'s caller hears of it.
    max_body_bytes: usize,
    /// The transport's check of the content header against the negotiated frame size,
    /// when the publisher owns an AMQP transport.
    pub(super) header_check: Option<HeaderCheck>,
}

impl DetachedSettings {
    pub(crate) fn from_config(config: &PublisherConfig) -> Self {
        Self {
            capacity: config.detached_capacity,
            share: config.detached_share_per_organization(),
            concurrency: config.detached_concurrency,
            overflow_wait: config.detached_overflow_wait,
            redelivery_base: config.detached_redelivery_base_delay,
            redelivery_max: config.detached_redelivery_max_delay,
            max_body_bytes: config.max_body_bytes,
            header_check: None,
        }
    }
}

/// What [`EventPublisher::close`](crate::EventPublisher::close) reports about detached events.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct CloseReport {
    /// Detached events confirmed by the broker over the publisher's life.
    pub published: u64,
    /// Detached events the broker refused for good (logged when it happened).
    pub failed: u64,
    /// Detached events still queued or in progress when the flush deadline passed, and
    /// not persisted elsewhere.
    pub unsent: Vec<Event>,
    /// Of those, the events written to the outbox instead (a publisher that
    /// [spills](crate::outbox::Outbox::spill_detached) to one; feature `outbox-postgres`):
    /// its relays publish them.
    pub spilled: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    failed: AtomicU64,
    in_progress: Mutex<HashMap<Uuid, Event>>,
}

/// The queue and its worker.
pub(crate) struct DetachedQueue {
    tx: mpsc::Sender<Queued>,
    /// Each organization's part of the queue (queued or being published).
    shares: Arc<Shares>,
    overflow_wait: Duration,
    max_body_bytes: usize,
    header_check: Option<HeaderCheck>,
    counters: Arc<Counters>,
    close: Arc<Notify>,
    abort: Arc<Notify>,
    worker: Mutex<Option<tokio::task::JoinHandle<mpsc::Receiver<Queued>>>>,
}

/// A queued event and its unit of its organization's share of the queue.
type Queued = (Event, ShareGuard);

/// The service that queues an event: the end of the front, for `spawn`.
#[derive(Clone)]
pub(crate) struct Enqueue(Arc<DetachedQueue>);

impl Enqueue {
    pub(crate) fn new(queue: Arc<DetachedQueue>) -> Self {
        Self(queue)
    }
}

impl Service<Event> for Enqueue {
    type Response = ();
    type Error = PublishError;
    type Future = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, event: Event) -> Self::Future {
        let queue = self.0.clone();
        Box::pin(async move { queue.enqueue(event).await })
    }
}

impl fmt::Debug for DetachedQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetachedQueue")
            .field("queued", &(self.tx.max_capacity() - self.tx.capacity()))
            .field("overflow_wait", &self.overflow_wait)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DetachedQueue {
    /// Starts the worker on the current tokio runtime.
    pub(crate) fn start(delivery: Delivery, settings: DetachedSettings) -> Self {
        let (tx, rx) = mpsc::channel(settings.capacity);
        let shares = Shares::new(settings.share);
        let counters = Arc::new(Counters::default());
        let close = Arc::new(Notify::new());
        let abort = Arc::new(Notify::new());
        let worker = tokio::spawn(worker(
            rx,
            delivery,
            settings.clone(),
            counters.clone(),
            close.clone(),
            abort.clone(),
        ));
        Self {
            tx,
            shares,
            overflow_wait: settings.overflow_wait,
            max_body_bytes: settings.max_body_bytes,
            header_check: settings.header_check.clone(),
            counters,
            close,
            abort,
            worker: Mutex::new(Some(worker)),
        }
    }

    /// Enqueues `event` (already validated and stamped).
    pub(crate) async fn enqueue(&self, event: Event) -> Result<(), PublishError> {
        let id = event.id();
        check_body_size(&event, self.max_body_bytes)?;
        if let Some(check) = &self.header_check {
            check.check(&event)?;
        }
        let full = || {
            PublishError::new(
                ErrorKind::QueueFull,
                "the detached-publish queue is full; the event was not queued",
            )
            .for_event(id)
        };
        let event = match self.shares.try_acquire(tenant(&event)) {
            Ok(guard) => (event, guard),
            Err(_) => {
                tokio::task::coop::consume_budget().await;
                let org = tenant(&event).to_owned();
                let limit = self.shares.limit();
                return Err(PublishError::new(
                    ErrorKind::QueueFull,
                    format!("organization `{org}` has its share of the detached-publish queue ({limit} events); the event was not queued"),
                )
                .for_event(id));
            }
        };
        let result = if self.overflow_wait.is_zero() {
            self.tx.try_send(event).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => full(),
                mpsc::error::TrySendError::Closed(_) => PublishError::shutdown().for_event(id),
            })
        } else {
            self.tx
                .send_timeout(event, self.overflow_wait)
                .await
                .map_err(|e| match e {
                    mpsc::error::SendTimeoutError::Timeout(_) => full(),
                    mpsc::error::SendTimeoutError::Closed(_) => {
                        PublishError::shutdown().for_event(id)
                    }
                })
        };
        if result.is_ok() {
            telemetry::detached_queued(1.0);
        } else {
            // Refused without waiting: spend cooperative budget so a caller looping on
            // `QueueFull` yields to the scheduler now and then (the worker, timers).
            tokio::task::coop::consume_budget().await;
        }
        result
    }

    /// Detached events of `org` queued or being published.
    pub(crate) fn queued_of(&self, org: &str) -> usize {
        self.shares.held(org)
    }

    /// Events waiting in the queue (not counting those being published).
    pub(crate) fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Stops accepting, publishes what is queued until `deadline`, then reports
    /// what is left.
    pub(crate) async fn flush(&self, deadline: Duration) -> CloseReport {
        self.close.notify_one();
        let Some(mut worker) = lock(&self.worker).take() else {
            return self.report(Vec::new());
        };
        let rx = match tokio::time::timeout(deadline, &mut worker).await {
            Ok(joined) => joined.ok(),
            Err(_) => {
                self.abort.notify_one();
                worker.await.ok()
            }
        };
        let mut unsent: Vec<Event> = lock(&self.counters.in_progress)
            .drain()
            .map(|(_, e)| e)
            .collect();
        if let Some(mut rx) = rx {
            while let Ok((event, _share)) = rx.try_recv() {
                telemetry::detached_queued(-1.0);
                unsent.push(event);
            }
        }
        if !unsent.is_empty() {
            telemetry::detached_dropped("shutdown", unsent.len());
            tracing::error!(
                unsent = unsent.len(),
                "detached events not sent before shutdown"
            );
        }
        self.report(unsent)
    }

    fn report(&self, unsent: Vec<Event>) -> CloseReport {
        CloseReport {
            published: self.counters.published.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            unsent,
            spilled: 0,
        }
    }
}

async fn worker(
    mut rx: mpsc::Receiver<Queued>,
    delivery: Delivery,
    settings: DetachedSettings,
    counters: Arc<Counters>,
    close: Arc<Notify>,
    abort: Arc<Notify>,
) -> mpsc::Receiver<Queued> {
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let log = Arc::new(LogLimiter::default());
    let mut tasks = JoinSet::new();
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            () = abort.notified() => {
                abort_all(&mut tasks).await;
                return rx;
            }
            () = close.notified(), if !closing => {
                closing = true;
                rx.close();
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            next = next_event(&mut rx, &permits) => {
                let Some((permit, (event, share))) = next else { break };
                lock(&counters.in_progress).insert(event.id(), event.clone());
                let delivery = delivery.clone();
                let counters = counters.clone();
                let settings = settings.clone();
                let log = log.clone();
                tasks.spawn(async move {
                    deliver(delivery, event, &settings, &counters, &log).await;
                    drop((permit, share));
                });
            }
        }
    }
    // Closed and drained: finish what is in progress, unless aborted.
    tokio::select! {
        biased;
        () = abort.notified() => abort_all(&mut tasks).await,
        () = async { while tasks.join_next().await.is_some() {} } => {}
    }
    rx
}

/// Aborts the deliveries in progress and waits until they are gone.
async fn abort_all(tasks: &mut JoinSet<()>) {
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// The next event to publish, once one of the `concurrency` permits is free;
/// `None` when the queue is closed and drained.
async fn next_event(
    rx: &mut mpsc::Receiver<Queued>,
    permits: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, Queued)> {
    let permit = permits.clone().acquire_owned().await.ok()?;
    let event = rx.recv().await?;
    telemetry::detached_queued(-1.0);
    Some((permit, event))
}

/// Publishes one detached event, waiting and trying again while the broker is unavailable.
/// Its warnings and errors go through `log`: a burst of identical ones is one line with
/// a `suppressed` count.
async fn deliver(
    delivery: Delivery,
    event: Event,
    settings: &DetachedSettings,
    counters: &Counters,
    log: &LogLimiter,
) {
    let id = event.id();
    let mut delay = settings.redelivery_base;
    let mut round = 0u32;
    loop {
        round += 1;
        match delivery.clone().oneshot(event.clone()).await {
            Ok(_) => {
                counters.published.fetch_add(1, Ordering::Relaxed);
                break;
            }
            // A nack the delivery stack gave up on (a full queue) is tried again later,
            // when the queue may have drained.
            Err(error)
                if error.is_retryable()
                    || matches!(error.kind(), ErrorKind::CircuitOpen | ErrorKind::Nacked) =>
            {
                if let Some(suppressed) = log.admit(("retry", error.kind(), event.event_type())) {
                    tracing::warn!(event_id = %id, event_type = event.event_type(), round, delay_ms = delay.as_millis() as u64, %error, suppressed, "detached event not published yet; will try again");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(settings.redelivery_max);
            }
            Err(error) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                telemetry::detached_dropped("refused", 1);
                if let Some(suppressed) = log.admit(("refused", error.kind(), event.event_type())) {
                    tracing::error!(event_id = %id, event_type = event.event_type(), kind = ?error.kind(), %error, suppressed, "detached event refused for good");
                }
                break;
            }
        }
    }
    lock(&counters.in_progress).remove(&id);
}
