//! What a publisher tells the outside: metrics through the [`metrics`] facade, one
//! producer span per publish through [`tracing`], and (feature `opentelemetry`) the
//! W3C trace context in every message's headers.
//!
//! In the [publish stack](crate::stack) it is stage 1, outermost: it needs nothing from
//! outside and writes the event's metric type and span for the layers inside.
//!
//! # Metrics
//!
//! Recorded through the [`metrics`] facade: nothing is exported until the application
//! installs a recorder (for example `metrics-exporter-prometheus`, as
//! `examples/axum_app.rs` does). **Install it before the first publish**: the
//! per-event instruments are registered on first use and kept, so a recorder
//! installed later does not see them.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | [`messaging.client.operation.duration`](PUBLISH_DURATION) | histogram, seconds | common, `outcome` | one per [`publish`](crate::EventPublisher::publish) — validation, every attempt and the waits between them — and, for a detached event, one per delivery round of the worker (a round ends in success, a final error, or a wait before the next round) |
//! | [`messaging.client.sent.messages`](SENT_MESSAGES) | counter | common, `outcome` | messages actually written to the broker: one per attempt that reached the wire |
//! | [`fitviz.events.publish.retries`](RETRIES) | counter | `event_type`, `error.type` | attempts that failed and were tried again |
//! | [`fitviz.events.confirms.in_flight`](CONFIRMS_IN_FLIGHT) | gauge | `messaging.destination.name` | attempts written and awaiting their confirm (an attempt whose deadline passed leaves it, though its confirm may still come) |
//! | [`fitviz.events.breaker.transitions`](BREAKER_TRANSITIONS) | counter | `state` | the circuit breaker entering `open`, `half_open` or `closed` |
//! | [`fitviz.events.breaker.state`](BREAKER_STATE) | gauge | | 0 closed, 1 half-open, 2 open |
//! | [`fitviz.events.detached.queued`](DETACHED_QUEUED) | gauge | | detached events waiting in the queue |
//! | [`fitviz.events.detached.dropped`](DETACHED_DROPPED) | counter | `reason` | detached events given up: `refused` (a final error) or `shutdown` (not sent before `close` ended) |
//! | [`fitviz.events.channels.replaced`](CHANNELS_REPLACED) | counter | | dead confirm channels replaced by the pool |
//! | [`fitviz.events.connections.opened`](CONNECTIONS_OPENED) | counter | `server.address` | connections opened |
//! | [`fitviz.events.connections.lost`](CONNECTIONS_LOST) | counter | `server.address` | connections lost (not closed by the publisher) |
//! | [`fitviz.events.connections.blocked`](CONNECTIONS_BLOCKED) | counter | `server.address` | `connection.blocked` received from the broker |
//! | [`fitviz.events.returns.reattributed`](RETURNS_REATTRIBUTED) | counter | | returned messages lapin attached to another event's confirm, given back to their own |
//!
//! The breaker and detached-queue metrics carry no publisher label: with several
//! publishers in one process they add up (the depth) or show the last change (the
//! breaker state).
//!
//! The *common* labels, after the OpenTelemetry messaging conventions: `messaging.system`
//! (`rabbitmq`), `messaging.operation.name` (`publish`), `messaging.destination.name`
//! (the exchange) and `event_type`. `outcome` is `ok` or the [`ErrorKind`]'s
//! [name](ErrorKind::as_str) (`unroutable`, `nacked`, `timeout`, `circuit_open`, …); a
//! failure also carries `error.type` with the same value, as the conventions ask.
//!
//! Label values are bounded: `event_type` is a type of the publisher's
//! [registry](crate::SchemaRegistry) or [`OTHER_EVENT_TYPE`] for every unregistered
//! one, the exchange is the configured one, the outcomes are the fourteen error kinds,
//! and addresses come from the configuration — a caller cannot make new series.
//!
//! **Retries.** `operation.duration` counts a publish once, whatever its attempts;
//! `sent.messages` counts every attempt that was written to the broker, with that
//! attempt's outcome — a publish whose first attempt timed out and whose second was
//! confirmed adds `outcome="timeout"` once and `outcome="ok"` once. Attempts refused
//! before anything was written (an open circuit, a blocked connection, a closed
//! channel, an event too large for the frame) are not sent messages. An attempt whose
//! deadline passed after it was written counts as sent, with `outcome="timeout"`.
//!
//! # Spans
//!
//! Every publish runs in one producer span, named and attributed after the
//! OpenTelemetry semantic conventions for messaging spans, RabbitMQ page, version
//! [`SEMCONV_VERSION`] (status: Development): the `tracing` span is `publish` at INFO,
//! with `otel.name = "publish {exchange}:{event type}"` and `otel.kind = "producer"` for
//! `tracing-opentelemetry`, and the attributes
//!
//! | attribute | value |
//! |---|---|
//! | `messaging.system` | `rabbitmq` |
//! | `messaging.operation.name` | `publish` |
//! | `messaging.operation.type` | `send` |
//! | `messaging.destination.name` | `{exchange}:{routing key}` |
//! | `messaging.rabbitmq.destination.routing_key` | the event type |
//! | `messaging.message.id` | the event id |
//! | `messaging.message.conversation_id` | the correlation id, when there is one |
//! | `messaging.message.body.size` | the encoded body, in bytes |
//! | `server.address`, `server.port` | the broker node the message was written to |
//! | `error.type` | the [`ErrorKind`] name, on failure (and `otel.status_code = "ERROR"`) |
//!
//! Each attempt is a DEBUG child span `publish_attempt` (with `attempt`, and the
//! error of a failed one). A healthy service logs nothing at INFO: the span is for
//! trace exporters; retries are WARN events, final failures are left to the caller
//! (or logged by [`try_publish`](crate::EventPublisher::try_publish)).
//!
//! # Trace context across the broker
//!
//! With the `opentelemetry` feature, every message carries the producer span's W3C
//! `traceparent` (and `tracestate`) headers, written by the global text-map
//! propagator of `opentelemetry` 0.33 from the span's context as
//! `tracing-opentelemetry` 0.34 sees it. An application on other versions of those
//! crates has another global propagator and another layer, and injection would do
//! nothing: [`check_trace_propagation`] says so at start-up, and the first publish
//! that cannot inject logs a warning once.

use crate::error::ErrorKind;

mod instruments;
mod layer;
#[cfg(feature = "opentelemetry")]
mod propagation;

pub(crate) use instruments::{Instruments, MetricType, SentGuard, TypeLabels};
pub use layer::{Telemetry, TelemetryLayer};
#[cfg(feature = "opentelemetry")]
pub(crate) use propagation::inject;
#[cfg(feature = "opentelemetry")]
pub use propagation::{TracePropagationError, check_trace_propagation};

/// The version of the OpenTelemetry semantic conventions the span and metric names
/// follow.
pub const SEMCONV_VERSION: &str = "1.37.0";

/// Histogram (seconds): how long each publish took, retries included.
pub const PUBLISH_DURATION: &str = "messaging.client.operation.duration";
/// Counter: messages written to the broker, one per attempt that reached the wire.
pub const SENT_MESSAGES: &str = "messaging.client.sent.messages";
/// Counter: failed attempts that were tried again.
pub const RETRIES: &str = "fitviz.events.publish.retries";
/// Gauge: messages written whose confirm has not arrived yet.
pub const CONFIRMS_IN_FLIGHT: &str = "fitviz.events.confirms.in_flight";
/// Counter: circuit breaker transitions, by the `state` entered.
pub const BREAKER_TRANSITIONS: &str = "fitviz.events.breaker.transitions";
/// Gauge: the circuit breaker's state: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "fitviz.events.breaker.state";
/// Gauge: detached events waiting in the queue.
pub const DETACHED_QUEUED: &str = "fitviz.events.detached.queued";
/// Counter: detached events given up, by `reason`.
pub const DETACHED_DROPPED: &str = "fitviz.events.detached.dropped";
/// Counter: dead confirm channels the pool replaced.
pub const CHANNELS_REPLACED: &str = "fitviz.events.channels.replaced";
/// Counter: connections opened, by `server.address`.
pub const CONNECTIONS_OPENED: &str = "fitviz.events.connections.opened";
/// Counter: connections lost, by `server.address`.
pub const CONNECTIONS_LOST: &str = "fitviz.events.connections.lost";
/// Counter: `connection.blocked` notifications, by `server.address`.
pub const CONNECTIONS_BLOCKED: &str = "fitviz.events.connections.blocked";
/// Counter: returned messages given back to their own event.
pub const RETURNS_REATTRIBUTED: &str = "fitviz.events.returns.reattributed";

/// Counter: outbox rows a relay published (confirmed), by `schema` (feature
/// `outbox-postgres`).
pub const OUTBOX_RELAYED: &str = "fitviz.events.outbox.relayed";
/// Gauge: outbox rows not yet published, by `schema`.
pub const OUTBOX_PENDING: &str = "fitviz.events.outbox.pending";
/// Gauge: dead outbox rows, by `schema`.
pub const OUTBOX_DEAD: &str = "fitviz.events.outbox.dead";
/// Gauge (seconds): the age of the oldest pending outbox row — the relay's lag — by
/// `schema`.
pub const OUTBOX_OLDEST_PENDING_AGE: &str = "fitviz.events.outbox.oldest_pending_age";

/// `tracing` filter directives that keep lapin's frame dumps out of the logs while
/// keeping its debug lines, warnings and errors. At `TRACE`, lapin logs every frame it
/// writes and reads, and the `connection.start-ok` frame carries the SASL PLAIN response
/// `\0user\0password` (as a list of byte values); `connection.update-secret` would carry
/// a refreshed secret. Add them to your filter **after** `RUST_LOG`, as the examples do:
/// a directive for the same target replaces the one from the environment, so even
/// `RUST_LOG=trace` or `RUST_LOG=lapin=trace` then shows no credential.
///
/// ```
/// use tracing_subscriber::EnvFilter;
///
/// let mut filter = EnvFilter::new("trace");
/// for directive in fitviz_events::telemetry::LAPIN_FRAME_LOGS_OFF {
///     filter = filter.add_directive(directive.parse().expect("a valid directive"));
/// }
/// assert!(filter.to_string().contains("lapin::io_loop=debug"));
/// ```
pub const LAPIN_FRAME_LOGS_OFF: [&str; 4] = [
    "lapin::io_loop=debug",
    "lapin::internal_rpc=debug",
    "lapin::frames=debug",
    "lapin::channels=debug",
];

/// The `event_type` label of every event type the publisher's registry does not know.
pub const OTHER_EVENT_TYPE: &str = "other";

/// The histogram boundaries the OpenTelemetry conventions advise for
/// `messaging.client.operation.duration`, in seconds: the `metrics` facade carries no
/// buckets, so configure your exporter with these (the demo does).
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Describes every metric (unit and help text) to the installed recorder. Optional:
/// exporters show the descriptions (Prometheus `# HELP`); call it once after
/// installing the recorder.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        PUBLISH_DURATION,
        Unit::Seconds,
        "Duration of each publish, retries included"
    );
    describe_counter!(
        SENT_MESSAGES,
        "Messages written to the broker (one per attempt), by outcome"
    );
    describe_counter!(RETRIES, "Failed publish attempts that were tried again");
    describe_gauge!(
        CONFIRMS_IN_FLIGHT,
        "Messages written whose confirm has not arrived"
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        "Circuit breaker transitions, by state entered"
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open"
    );
    describe_gauge!(DETACHED_QUEUED, "Detached events waiting in the queue");
    describe_counter!(DETACHED_DROPPED, "Detached events given up, by reason");
    describe_counter!(CHANNELS_REPLACED, "Dead confirm channels replaced");
    describe_counter!(CONNECTIONS_OPENED, "Connections to the broker opened");
    describe_counter!(CONNECTIONS_LOST, "Connections to the broker lost");
    describe_counter!(
        CONNECTIONS_BLOCKED,
        "connection.blocked notifications from the broker"
    );
    describe_counter!(
        RETURNS_REATTRIBUTED,
        "Returned messages lapin attached to another event's confirm"
    );
    describe_counter!(OUTBOX_RELAYED, "Outbox rows published with a confirm");
    describe_gauge!(OUTBOX_PENDING, "Outbox rows not yet published");
    describe_gauge!(OUTBOX_DEAD, "Outbox rows refused max_attempts times");
    describe_gauge!(
        OUTBOX_OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest pending outbox row"
    );
}

/// Counts a failed attempt that the retry layer tries again.
pub(crate) fn retried(event_type: MetricType, kind: ErrorKind) {
    metrics::counter!(
        RETRIES,
        "event_type" => event_type.name,
        "error.type" => kind.as_str(),
    )
    .increment(1);
}

/// The circuit breaker states, as the gauge and the transition label show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BreakerGauge {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

/// Records the circuit breaker entering `state`.
pub(crate) fn breaker_entered(state: BreakerGauge) {
    let label = match state {
        BreakerGauge::Closed => "closed",
        BreakerGauge::HalfOpen => "half_open",
        BreakerGauge::Open => "open",
    };
    metrics::counter!(BREAKER_TRANSITIONS, "state" => label).increment(1);
    metrics::gauge!(BREAKER_STATE).set(f64::from(state as u8));
}

/// Counts a connection event (`CONNECTIONS_OPENED`, `_LOST` or `_BLOCKED`) at `node`.
pub(crate) fn connection_event(name: &'static str, node: &str) {
    metrics::counter!(name, "server.address" => node.to_owned()).increment(1);
}

/// Counts a replaced channel.
pub(crate) fn channel_replaced() {
    metrics::counter!(CHANNELS_REPLACED).increment(1);
}

/// Counts a return given back to its own event.
pub(crate) fn return_reattributed() {
    metrics::counter!(RETURNS_REATTRIBUTED).increment(1);
}

/// Moves the detached queue's depth by `change` (+1 queued, −1 taken out).
pub(crate) fn detached_queued(change: f64) {
    metrics::gauge!(DETACHED_QUEUED).increment(change);
}

/// Counts detached events given up, for `reason` (`refused` or `shutdown`).
pub(crate) fn detached_dropped(reason: &'static str, count: usize) {
    metrics::counter!(DETACHED_DROPPED, "reason" => reason).increment(count as u64);
}
