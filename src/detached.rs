//! Detached publishing: hand an event to a bounded in-memory queue and return at once.
//!
//! This is the original library's `async_publish`, with its memory kept bounded: a
//! background worker drains the queue through the same middleware stack (retry,
//! circuit breaker, timeouts) and keeps retrying an event while the broker is
//! unavailable, so events queued before an outage are delivered after it. The queue
//! holds at most [`DetachedConfig::capacity`] events plus the
//! [`concurrency`](DetachedConfig::concurrency) being published; when it is full, the
//! [`Overflow`] policy decides: reject the new event with
//! [`crate::ErrorKind::QueueFull`], or wait up to a deadline for room.
//!
//! Nothing is dropped silently: an event the broker refuses for good (unroutable,
//! invalid) is logged at error level and counted, and
//! [`EventPublisher::close`](crate::EventPublisher::close) flushes the queue and reports
//! what could not be sent in its [`CloseReport`].

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, Semaphore, mpsc},
    task::JoinSet,
};
use tower::ServiceExt;
use uuid::Uuid;

use crate::{Event, PublishError, error::ErrorKind, publisher::PublishService};

/// What [`EventPublisher::spawn`](crate::EventPublisher::spawn) does when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Reject the new event at once with [`ErrorKind::QueueFull`].
    Reject,
    /// Wait up to this long for room, then reject with [`ErrorKind::QueueFull`].
    Wait(Duration),
}

/// Settings of the detached-publish queue.
#[derive(Clone, Debug)]
#[must_use]
pub struct DetachedConfig {
    capacity: usize,
    concurrency: usize,
    overflow: Overflow,
    retry_base: Duration,
    retry_max: Duration,
}

impl Default for DetachedConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            concurrency: 64,
            overflow: Overflow::Reject,
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(5),
        }
    }
}

impl DetachedConfig {
    /// Events waiting in the queue at most (default 10,000; at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Events the worker publishes at once (default 64; at least 1).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// What happens when the queue is full (default [`Overflow::Reject`]).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Delay between redelivery rounds of an event the stack gave up on while the
    /// broker is unavailable: doubling from `base` up to `max` (defaults 200 ms, 5 s).
    pub fn redelivery_delay(mut self, base: Duration, max: Duration) -> Self {
        self.retry_base = base.max(Duration::from_millis(1));
        self.retry_max = max.max(self.retry_base);
        self
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
    /// Detached events still queued or in progress when the flush deadline passed.
    pub unsent: Vec<Event>,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    failed: AtomicU64,
    in_progress: Mutex<HashMap<Uuid, Event>>,
}

/// The queue and its worker.
pub(crate) struct DetachedQueue {
    tx: mpsc::Sender<Event>,
    overflow: Overflow,
    counters: Arc<Counters>,
    close: Arc<Notify>,
    abort: Arc<Notify>,
    worker: Mutex<Option<tokio::task::JoinHandle<mpsc::Receiver<Event>>>>,
}

impl fmt::Debug for DetachedQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetachedQueue")
            .field("queued", &(self.tx.max_capacity() - self.tx.capacity()))
            .field("overflow", &self.overflow)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DetachedQueue {
    /// Starts the worker on the current tokio runtime.
    pub(crate) fn start(service: PublishService, config: DetachedConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.capacity);
        let counters = Arc::new(Counters::default());
        let close = Arc::new(Notify::new());
        let abort = Arc::new(Notify::new());
        let worker = tokio::spawn(worker(
            rx,
            service,
            config.clone(),
            counters.clone(),
            close.clone(),
            abort.clone(),
        ));
        Self {
            tx,
            overflow: config.overflow,
            counters,
            close,
            abort,
            worker: Mutex::new(Some(worker)),
        }
    }

    /// Enqueues `event` (already validated and stamped).
    pub(crate) async fn enqueue(&self, event: Event) -> Result<(), PublishError> {
        let id = event.id();
        let full = || {
            PublishError::new(
                ErrorKind::QueueFull,
                "the detached-publish queue is full; the event was not queued",
            )
            .for_event(id)
        };
        match self.overflow {
            Overflow::Reject => self.tx.try_send(event).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => full(),
                mpsc::error::TrySendError::Closed(_) => PublishError::shutdown().for_event(id),
            }),
            Overflow::Wait(deadline) => {
                self.tx
                    .send_timeout(event, deadline)
                    .await
                    .map_err(|e| match e {
                        mpsc::error::SendTimeoutError::Timeout(_) => full(),
                        mpsc::error::SendTimeoutError::Closed(_) => {
                            PublishError::shutdown().for_event(id)
                        }
                    })
            }
        }
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
            while let Ok(event) = rx.try_recv() {
                unsent.push(event);
            }
        }
        if !unsent.is_empty() {
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
        }
    }
}

async fn worker(
    mut rx: mpsc::Receiver<Event>,
    service: PublishService,
    config: DetachedConfig,
    counters: Arc<Counters>,
    close: Arc<Notify>,
    abort: Arc<Notify>,
) -> mpsc::Receiver<Event> {
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut tasks = JoinSet::new();
    let mut closing = false;
    // Watches abort and close while waiting for `$wait`; aborting returns the queue.
    macro_rules! wait_for {
        ($wait:expr) => {
            loop {
                tokio::select! {
                    biased;
                    () = abort.notified() => {
                        tasks.abort_all();
                        while tasks.join_next().await.is_some() {}
                        return rx;
                    }
                    () = close.notified(), if !closing => {
                        closing = true;
                        rx.close();
                    }
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    value = $wait => break value,
                }
            }
        };
    }
    loop {
        let Ok(permit) = wait_for!(permits.clone().acquire_owned()) else {
            return rx;
        };
        let Some(event) = wait_for!(rx.recv()) else {
            // Closed and drained: finish what is in progress.
            drop(permit);
            loop {
                tokio::select! {
                    biased;
                    () = abort.notified() => {
                        tasks.abort_all();
                        while tasks.join_next().await.is_some() {}
                        return rx;
                    }
                    next = tasks.join_next() => if next.is_none() { return rx },
                }
            }
        };
        lock(&counters.in_progress).insert(event.id(), event.clone());
        let service = service.clone();
        let counters = counters.clone();
        let config = config.clone();
        tasks.spawn(async move {
            deliver(service, event, &config, &counters).await;
            drop(permit);
        });
    }
}

/// Publishes one detached event, waiting and trying again while the broker is unavailable.
async fn deliver(
    service: PublishService,
    event: Event,
    config: &DetachedConfig,
    counters: &Counters,
) {
    let id = event.id();
    let mut delay = config.retry_base;
    let mut round = 0u32;
    loop {
        round += 1;
        match service.clone().oneshot(event.clone()).await {
            Ok(_) => {
                counters.published.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(error) if error.is_retryable() || error.kind() == ErrorKind::CircuitOpen => {
                tracing::warn!(event_id = %id, event_type = event.event_type(), round, delay_ms = delay.as_millis() as u64, %error, "detached event not published yet; will try again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(config.retry_max);
            }
            Err(error) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(event_id = %id, event_type = event.event_type(), kind = ?error.kind(), %error, "detached event refused for good");
                break;
            }
        }
    }
    lock(&counters.in_progress).remove(&id);
}
