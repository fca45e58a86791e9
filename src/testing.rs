//! Test helpers for users' own tests: an in-memory transport.
//!
//! [`MemorySink`] stands where [`AmqpPublish`](crate::AmqpPublish) stands, encodes each
//! event exactly as the transport would (body and AMQP properties) and keeps it, so
//! handler tests can assert on what would have been published without a broker.
//!
//! # Example
//! ```
//! use fitviz_events::{EventPublisher, PublisherConfig, events::WorkoutCreated, testing::MemorySink};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let sink = MemorySink::new();
//! let publisher = EventPublisher::builder(PublisherConfig::default())
//!     .build_with_transport(sink.clone());
//! publisher
//!     .publish(fitviz_events::Event::new(WorkoutCreated::example()).with_organization("org-1"))
//!     .await
//!     .unwrap();
//! assert_eq!(sink.published()[0].event_type(), "workout.created");
//! # }
//! ```

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

use crate::{Event, PublishError, Receipt, transport::encode};

/// An in-memory transport that records events instead of sending them.
#[derive(Clone, Debug, Default)]
pub struct MemorySink {
    events: Option<Arc<Mutex<Vec<Event>>>>,
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
        let result = encode(&event).map(|(body, _properties)| {
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
