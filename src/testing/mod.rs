//! Test helpers for users' own tests: an in-memory transport and valid example events.
//!
//! [`MemorySink`] stands where [`AmqpPublish`](crate::transport::AmqpPublish) stands, encodes each
//! event exactly as the transport would (body and AMQP properties) and keeps it, so
//! handler tests can assert on what would have been published without a broker.
//!
//! # Example
//! ```
//! use fitviz_events::{EventPublisher, PublisherConfig, events::WorkoutCreated};
//! use fitviz_events::testing::{Example, MemorySink};
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

mod examples;
mod sink;

pub use examples::{Example, examples, versioned_examples};
pub use sink::MemorySink;
