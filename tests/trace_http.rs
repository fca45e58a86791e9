//! The trace context travels HTTP → message on the real broker: a request carrying a W3C
//! `traceparent` is served by an axum app set up as `examples/axum_app.rs` is (the same
//! `TraceLayer` and request span, from `examples/common`), its handler publishes, and the
//! message in the queue carries a `traceparent` of the same trace whose parent is the
//! producer span — a child of the request span, itself a child of the caller's span.
//!
//! The tracing subscriber and the propagator are process-wide: this binary holds this
//! one test only.
#![cfg(feature = "opentelemetry")]

mod support;

#[path = "../examples/common/mod.rs"]
mod common;

use std::sync::OnceLock;

use axum::{Router, body::Body, extract::Request, http::StatusCode, routing::post};
use fitviz_events::testing::Example;
use fitviz_events::{
    EventPublisher, PublishError,
    events::BookingConfirmed,
    http::{EventPublishLayer, Publisher},
};
use http_body_util::BodyExt;
use lapin::{BasicProperties, types::AMQPValue};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::ServiceExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

/// The spans the process ended, kept in memory.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        common::init_tracing_with(provider);
        exporter
    })
}

async fn confirm_booking(publisher: Publisher) -> Result<StatusCode, PublishError> {
    publisher.publish(BookingConfirmed::example()).await?;
    Ok(StatusCode::CREATED)
}

fn app(publisher: EventPublisher) -> Router {
    Router::new()
        .route("/bookings", post(confirm_booking))
        .layer(EventPublishLayer::new(publisher).organization_header("x-organization-id"))
        .layer(common::http_trace_layer())
}

/// `traceparent`'s trace id and parent (span) id.
fn traceparent(properties: &BasicProperties) -> (TraceId, SpanId) {
    let headers = properties.headers().as_ref().expect("message headers");
    let Some(AMQPValue::LongString(value)) = headers.inner().get("traceparent") else {
        panic!("no traceparent header: {headers:?}");
    };
    let value = std::str::from_utf8(value.as_bytes()).unwrap();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value}");
    assert_eq!(parts[0], "00", "traceparent version: {value}");
    assert_eq!(parts[3], "01", "the incoming sampled flag is kept: {value}");
    (
        TraceId::from_hex(parts[1]).unwrap(),
        SpanId::from_hex(parts[2]).unwrap(),
    )
}

fn span_with_id(spans: &[SpanData], id: SpanId) -> &SpanData {
    spans
        .iter()
        .find(|span| span.span_context.span_id() == id)
        .unwrap_or_else(|| panic!("no span {id} among {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_id_of_the_request_reaches_the_message() {
    let exporter = exporter();
    fitviz_events::telemetry::check_trace_propagation()
        .expect("the example's set-up propagates the trace context");
    require_broker!();
    let fx = support::Fixture::new("trace_http", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let app = app(publisher.clone());

    let request = Request::post("/bookings")
        .header("x-organization-id", "org-1")
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, StatusCode::CREATED, "{body:?}");

    // Without a traceparent, the request starts a trace of its own, which the
    // message carries too.
    let request = Request::post("/bookings")
        .header("x-organization-id", "org-1")
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.into_body().collect().await.unwrap();

    let messages = fx.drain().await;
    assert_eq!(messages.len(), 2, "both events are in the queue");
    let (trace_id, parent_id) = traceparent(&messages[0].1);
    let caller = SpanId::from_hex(CALLER_SPAN_ID).unwrap();
    assert_eq!(trace_id, TraceId::from_hex(TRACE_ID).unwrap());
    assert_ne!(
        parent_id, caller,
        "the message's parent is the producer span"
    );
    let (fresh_trace_id, _) = traceparent(&messages[1].1);
    assert_ne!(fresh_trace_id, trace_id, "a request without traceparent");
    assert_ne!(fresh_trace_id, TraceId::INVALID);

    // The chain, from the ended spans: message → producer span → request span → caller.
    let spans = exporter.get_finished_spans().unwrap();
    let producer = span_with_id(&spans, parent_id);
    assert_eq!(producer.span_kind, SpanKind::Producer);
    assert_eq!(
        producer.name,
        format!("publish {}:booking.confirmed", fx.exchange)
    );
    assert_eq!(producer.span_context.trace_id(), trace_id);
    let request_span = span_with_id(&spans, producer.parent_span_id);
    assert_eq!(request_span.span_kind, SpanKind::Server);
    assert_eq!(request_span.name, "POST /bookings");
    assert_eq!(request_span.parent_span_id, caller);
    assert!(request_span.parent_span_is_remote);

    publisher.close().await;
    fx.cleanup().await;
}
