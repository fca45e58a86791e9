//! Publish FitViz domain events (`workout.created`, `booking.confirmed`, `payment.failed`,
//! …) to RabbitMQ from any Tower-based Rust web service, as Tower middleware. An event
//! reported as published has been **confirmed by the broker and stored**; a sick broker
//! never hangs or crashes a request; bad input gets an error naming the field and never
//! reaches the broker; credentials never appear in logs.
//!
//! ```no_run
//! use fitviz_events::{Event, EventPublisher, PublisherConfig, events::WorkoutCreated};
//! # use fitviz_events::testing::Example;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let publisher = EventPublisher::connect(PublisherConfig::from_env()?).await?;
//! let receipt = publisher
//!     .publish(Event::new(WorkoutCreated::example()).with_organization("org-42"))
//!     .await?; // confirmed by the broker
//! publisher.close().await;
//! # Ok(()) }
//! ```
//!
//! In axum, `.layer(`[`http::EventPublishLayer`]`::new(publisher))` and a
//! [`http::Publisher`] argument in the handlers (the repository's README has both quick
//! starts; `examples/` has a whole service).
//!
//! # Contents
//!
//! - [`stack`]: the map of the publish stack, layer by layer.
//! - Topic pages ([`guide`]): [the wire contract](guide::wire_contract),
//!   [configuration](guide::configuration) (the settings table is on [`PublisherConfig`]),
//!   [errors and failure behaviour](guide::errors) (the kinds are on [`ErrorKind`]),
//!   [web services](guide::web_services), [clusters and TLS](guide::clusters_and_tls),
//!   [consuming](guide::consuming), [observability](guide::observability),
//!   [the command-line tool](guide::cli), [migrating from the Python library](guide::migration),
//!   [performance](guide::performance).
//!
//! # Modules
//!
//! The twelve headline types are at the crate root ([`EventPublisher`],
//! [`EventPublisherBuilder`], [`PublishService`], [`PublisherConfig`], [`Event`],
//! [`Receipt`], [`Routing`], [`OrganizationId`], [`PublishError`], [`ErrorKind`],
//! [`DomainEvent`], [`SchemaRegistry`]); everything else is in the module of its concern,
//! one module per middleware:
//!
//! | module | what it holds |
//! |---|---|
//! | [`publisher`] | [`EventPublisher`], its builder, [`publisher::CloseReport`], [`publisher::NotReady`] |
//! | [`config`] | [`PublisherConfig`], [`config::BrokerUrl`], [`config::ConfigError`], [`config::UnroutablePolicy`] |
//! | [`event`] | [`Event`], [`Receipt`], [`OrganizationId`] and the checks of ids |
//! | [`header`] | custom headers ([`header::HeaderValue`]), the reserved names and the library's own header names |
//! | [`error`] | [`PublishError`], [`ErrorKind`] (the table of kinds), [`error::Delivery`] |
//! | [`schema`] | [`DomainEvent`], [`SchemaRegistry`], [`schema::ValidationError`]; [`schema::export`] writes the JSON Schemas |
//! | [`events`] | the eleven built-in FitViz events |
//! | [`guide`] | the topic pages |
//! | [`stack`] | the map: every layer of the publish stack in order, and what each needs from the ones outside it |
//! | [`validate`], [`organization`], [`envelope`] | the front of the stack: one Tower middleware each |
//! | [`timeout`], [`fairness`], [`retry`], [`circuit_breaker`] | the delivery stack: one Tower middleware each |
//! | [`transport`] | [`AmqpPublish`](transport::AmqpPublish): the confirmed publish on a pool of channels |
//! | [`http`] | [`http::EventPublishLayer`] and the request-scoped [`http::Publisher`] |
//! | `axum` | the `Publisher` extractor and `IntoResponse` for [`PublishError`] (feature `axum`) |
//! | [`topology`] | [`topology::Topology`]: the exchange, the unrouted queue, consumers' queues and dead letters |
//! | [`telemetry`] | metrics, the producer span, trace context in the headers |
//! | [`prepare`], [`future`] | the one service and the response future the front's layers share ([`prepare::PrepareEvent`]: a front layer of your own) |
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
pub mod config;
pub mod envelope;
pub mod error;
pub mod event;
pub mod events;
pub mod fairness;
pub mod future;
pub mod guide;
pub mod header;
pub mod http;
mod ident;
mod log_limit;
pub mod organization;
#[cfg(feature = "outbox-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox-postgres")))]
pub mod outbox;
pub mod prepare;
pub mod publisher;
pub mod replay;
pub mod retry;
pub mod schema;
mod serde_fields;
pub mod stack;
pub mod telemetry;
pub mod testing;
pub mod timeout;
pub mod topology;
pub mod transport;
pub mod validate;

// The headline types, at the root; everything else under the module of its concern.
pub use config::PublisherConfig;
pub use error::{ErrorKind, PublishError};
pub use event::{EncodedEvent, Event, OrganizationId, Receipt, Routing};
pub use publisher::{EventPublisher, EventPublisherBuilder, PublishService};
pub use schema::{DomainEvent, SchemaRegistry};

/// The README's code, compiled and run as doctests (the README is not the crate page).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
