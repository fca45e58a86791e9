//! [`MemorySink`]: an in-memory transport that records events instead of sending them.

use std::{
    future::{Ready, ready},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tower_service::Service;

use crate::{
    config::DEFAULT_MAX_BODY_BYTES,
    error::PublishError,
    event::{Event, Receipt},
    transport::encode,
};

/// An in-memory transport that records events instead of sending them.
#[derive(Clone, Debug, Default)]
pub struct MemorySink {
    events: Option<Arc<Mutex<Vec<Event>>>>,
    /// `None`: the default, [`DEFAULT_MAX_BODY_BYTES`].
    max_body_bytes: Option<usize>,
    count: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl MemorySink {
    /// A sink that keeps every event.
    pub fn new() -> Self {
        Self {
            events: Some(Arc::default()),
            ..Default::default()
        }
    }

    /// A sink that encodes and counts events but keeps none (for benchmarks).
    pub fn counting() -> Self {
        Self::default()
    }

    /// Refuses bodies longer than `max_body_bytes` with
    /// [`ErrorKind::TooLarge`](crate::ErrorKind::TooLarge), like the AMQP transport with
    /// [`PublisherConfig::max_body_bytes`](crate::PublisherConfig::max_body_bytes);
    /// by default the config's default, 1 MiB.
    #[must_use]
    pub fn with_max_body_bytes(mut self, max_body_bytes: usize) -> Self {
        self.max_body_bytes = Some(max_body_bytes);
        self
    }

    /// The events published so far, in order.
    pub fn published(&self) -> Vec<Event> {
        self.events
            .as_ref()
            .map(|events| events.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// How many events were published.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Total size of the encoded bodies.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Service<Event> for MemorySink {
    type Response = Receipt;
    type Error = PublishError;
    type Future = Ready<Result<Receipt, PublishError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, event: Event) -> Self::Future {
        let started = Instant::now();
        let max = self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let result = encode(&event, max).map(|(body, _properties)| {
            self.count.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            let id = event.id();
            if let Some(events) = &self.events {
                events.lock().unwrap_or_else(|e| e.into_inner()).push(event);
            }
            Receipt::new(id, started.elapsed().max(Duration::from_nanos(1)))
        });
        ready(result)
    }
}

/// The defaults: no metrics or frame check of its own, and an attempt deadline of
/// `confirm_timeout` (see [`PublishTransport`](crate::transport::PublishTransport)).
impl crate::transport::PublishTransport for MemorySink {}
