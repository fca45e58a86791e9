#![doc = include_str!("../README.md")]
//! # Modules
//!
//! | module | what it holds |
//! |---|---|
//! | [`events`] | the eleven built-in FitViz events |
//! | [`schema`] | [`DomainEvent`], [`SchemaRegistry`], validation errors |
//! | [`config`] | [`PublisherConfig`]: settings in code, from the environment or config files |
//! | [`validate`], [`organization`], [`timeout`], [`retry`], [`circuit_breaker`] | one Tower middleware each |
//! | [`transport`] | [`AmqpPublish`], the confirmed publish on a [`ChannelPool`] |
//! | [`detached`] | the bounded background queue behind [`EventPublisher::spawn`] |
//! | [`http`] | [`http::EventPublishLayer`] and the request-scoped [`http::Publisher`] |
//! | `axum` | the `Publisher` extractor and `IntoResponse` for [`PublishError`] (feature `axum`) |
//! | [`testing`] | an in-memory transport for your own tests |
//!
//! # Feature flags
//!
//! - `axum` (default): the axum extractor and error responses, through `axum-core`.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

#[cfg(feature = "axum")]
pub mod axum;
pub mod circuit_breaker;
pub mod config;
pub mod detached;
mod error;
mod event;
pub mod events;
pub mod http;
pub mod organization;
mod pool;
mod publisher;
pub mod retry;
pub mod schema;
pub mod testing;
pub mod timeout;
pub mod transport;
pub mod validate;

pub use config::{BrokerUrl, ConfigError, PublisherConfig};
pub use detached::{CloseReport, DetachedConfig, Overflow};
pub use error::{BoxError, ErrorKind, PublishError};
pub use event::{Event, OrganizationId, Receipt, check_event_type};
pub use pool::{ChannelManager, ChannelPool, PooledChannel};
pub use publisher::{EventPublisher, EventPublisherBuilder, PublishService};
pub use schema::{DomainEvent, SchemaRegistry, ValidationError, Violation};
pub use transport::AmqpPublish;
