#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

#[cfg(feature = "axum")]
pub mod axum;
pub mod config;
pub mod detached;
mod error;
mod event;
pub mod events;
pub mod http;
pub mod schema;

pub use config::{ConfigError, PublisherConfig, PublisherConfigBuilder};
pub use detached::{CloseReport, DetachedConfig, Overflow};
pub use error::{BoxError, ErrorKind, PublishError};
pub use event::{Event, OrganizationId, Receipt, check_event_type};
pub use schema::{DomainEvent, SchemaRegistry, ValidationError, Violation};
pub mod circuit_breaker;
pub mod organization;
mod pool;
pub mod retry;
pub mod timeout;
pub mod transport;
pub mod validate;

pub use pool::{ChannelManager, ChannelPool, PooledChannel};
pub use transport::AmqpPublish;
mod publisher;
pub use publisher::{EventPublisher, EventPublisherBuilder, PublishService};
pub mod testing;
