#![doc = include_str!("../README.md")]
//! # Modules
//!
//! The headline types are at the crate root; each middleware has its own module.
//!
//! | module | what it holds |
//! |---|---|
//! | crate root | [`EventPublisher`], [`PublisherConfig`], [`Event`], [`PublishError`], [`SchemaRegistry`], … |
//! | [`events`] | the eleven built-in FitViz events |
//! | [`stack`] | the map: every layer of the publish stack in order, and what each needs from the ones outside it |
//! | [`validate`], [`organization`], [`envelope`] | the front of the stack: one Tower middleware each |
//! | [`timeout`], [`fairness`], [`retry`], [`circuit_breaker`] | the delivery stack: one Tower middleware each |
//! | [`transport`] | [`AmqpPublish`](transport::AmqpPublish): the confirmed publish on a pool of channels |
//! | [`http`] | [`http::EventPublishLayer`] and the request-scoped [`http::Publisher`] |
//! | `axum` | the `Publisher` extractor and `IntoResponse` for [`PublishError`] (feature `axum`) |
//! | [`topology`] | [`topology::Topology`]: the exchange, the unrouted queue, consumers' queues and dead letters |
//! | [`telemetry`] | metrics, the producer span, trace context in the headers |
//! | [`testing`] | an in-memory transport and example events for your own tests |
//!
//! # Feature flags
//!
//! - `axum` (default): the axum extractor and error responses, through `axum-core`.
//! - `cli`: the `fitviz-events` command-line tool (`publish`, `schemas`), with `clap`.
//! - `opentelemetry`: the W3C trace context (`traceparent`, `tracestate`) of the
//!   producer span in every message, through `opentelemetry` 0.33 and
//!   `tracing-opentelemetry` 0.34 (see [`telemetry`]).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

#[cfg(feature = "axum")]
pub mod axum;
pub mod circuit_breaker;
mod config;
pub mod envelope;
mod error;
mod event;
pub mod events;
pub mod fairness;
pub mod future;
mod header;
pub mod http;
mod ident;
mod log_limit;
pub mod organization;
mod publisher;
pub mod retry;
mod schema;
pub mod stack;
pub mod telemetry;
pub mod testing;
pub mod timeout;
pub mod topology;
pub mod transport;
pub mod validate;

pub use config::{BrokerUrl, ConfigError, ENV_PREFIX, PublisherConfig, UnroutablePolicy};
pub use error::{Delivery, ErrorKind, PublishError};
pub use event::{
    Event, InvalidId, MAX_CORRELATION_ID_BYTES, MAX_ORGANIZATION_ID_BYTES, OrganizationId, Receipt,
    Routing, check_correlation_id, check_event_type,
};
pub use header::{
    HeaderValue, MAX_CUSTOM_HEADERS, MAX_HEADER_NAME_BYTES, RESERVED_HEADER_PREFIXES,
    RESERVED_HEADERS, check_header_name,
};
pub use publisher::{CloseReport, EventPublisher, EventPublisherBuilder, NotReady, PublishService};
pub use schema::export::{
    ENVELOPE_FILE_NAME, JSON_SCHEMA_DIALECT, SCHEMA_ID_PREFIX, envelope_schema, export_schemas,
    schema_file_name, schema_id,
};
pub use schema::{DomainEvent, SchemaRegistry, UnknownFields, ValidationError, Violation};
