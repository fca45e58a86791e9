//! The producer span crosses the broker: with the `opentelemetry` feature, a message
//! carries the `traceparent` of its producer span, which is a child of the caller's
//! span — and a propagator set through another `opentelemetry` version is reported,
//! not silently ignored. Global state (subscriber, propagator): one test in this
//! binary, its steps in order.
#![cfg(feature = "opentelemetry")]

mod support;

use fitviz_events::{
    Event, EventPublisher,
    events::WorkoutCreated,
    telemetry::{TracePropagationError, check_trace_propagation},
    testing::Example,
};
use lapin::{BasicProperties, types::AMQPValue};
use opentelemetry::trace::{SpanKind, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{InMemorySpanExporter, SdkTracerProvider},
};
use support::{Captured, Fixture};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Registry, layer::SubscriberExt};

/// A propagator of opentelemetry 0.31, as an application on that version would set:
/// it would write a `traceparent` if it were ever asked.
#[derive(Debug)]
struct OtherVersionPropagator;

impl opentelemetry_0_31::propagation::TextMapPropagator for OtherVersionPropagator {
    fn inject_context(
        &self,
        _: &opentelemetry_0_31::Context,
        injector: &mut dyn opentelemetry_0_31::propagation::Injector,
    ) {
        injector.set(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        );
    }

    fn extract_with_context(
        &self,
        cx: &opentelemetry_0_31::Context,
        _: &dyn opentelemetry_0_31::propagation::Extractor,
    ) -> opentelemetry_0_31::Context {
        cx.clone()
    }

    fn fields(&self) -> opentelemetry_0_31::propagation::text_map_propagator::FieldIter<'_> {
        opentelemetry_0_31::propagation::text_map_propagator::FieldIter::new(&[])
    }
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a str> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        other => panic!("{name} is not a long string: {other:?}"),
    }
}

/// `00-{trace id}-{parent span id}-{flags}` → (trace id, parent span id).
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_carries_the_producer_spans_trace_context() {
    require_broker!();
    let fx = Fixture::new("trace_propagation", "#").await;
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = Registry::default()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("trace-test")))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false),
        );
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let publish_in_request = |name: &'static str| {
        let request = tracing::info_span!("request", name);
        let trace_id = request.context().span().span_context().trace_id();
        let publisher = publisher.clone();
        async move {
            publisher
                .publish(Event::new(WorkoutCreated::example()).with_organization("org-1"))
                .instrument(request)
                .await
                .unwrap();
            trace_id.to_string()
        }
    };

    // 1. Only a propagator of another opentelemetry version is set: the check says
    //    so, the message carries no traceparent, and a warning says why.
    opentelemetry_0_31::global::set_text_map_propagator(OtherVersionPropagator);
    assert_eq!(
        check_trace_propagation(),
        Err(TracePropagationError::NoPropagator)
    );
    publish_in_request("other-version").await;
    let (_, properties) = fx.drain().await.pop().expect("the event is in the queue");
    assert_eq!(header(&properties, "traceparent"), None);
    assert!(
        logs.text()
            .contains("events are published without trace context"),
        "{}",
        logs.text()
    );

    // A subscriber without a tracing-opentelemetry layer is reported too.
    tracing::subscriber::with_default(tracing_subscriber::fmt().finish(), || {
        assert_eq!(
            check_trace_propagation(),
            Err(TracePropagationError::NoOpenTelemetryLayer)
        );
    });

    // 2. The propagator of the supported version: the trace continues in the message.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    assert_eq!(check_trace_propagation(), Ok(()));
    let request_trace = publish_in_request("supported").await;
    let (_, properties) = fx.drain().await.pop().expect("the event is in the queue");
    let traceparent = header(&properties, "traceparent").expect("a traceparent header");
    let (trace_id, parent_id) = parse_traceparent(traceparent);
    assert_eq!(
        trace_id, request_trace,
        "the message continues the request's trace"
    );

    // Its parent is the producer span, a child of the request span, named and
    // attributed after the messaging conventions.
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let producer = spans
        .iter()
        .find(|s| s.span_context.span_id().to_string() == parent_id)
        .unwrap_or_else(|| panic!("no exported span has the id {parent_id}: {spans:#?}"));
    assert_eq!(producer.span_kind, SpanKind::Producer);
    assert_eq!(
        producer.name,
        format!("publish {}:workout.created", fx.exchange)
    );
    let request = spans
        .iter()
        .find(|s| s.span_context.span_id() == producer.parent_span_id)
        .expect("the producer span's parent was exported");
    assert_eq!(request.name, "request");
    assert_eq!(request.span_context.trace_id().to_string(), request_trace);
    let attribute = |key: &str| {
        producer
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
            .unwrap_or_else(|| panic!("no {key} in {:?}", producer.attributes))
    };
    assert_eq!(attribute("messaging.system"), "rabbitmq");
    assert_eq!(attribute("messaging.operation.name"), "publish");
    assert_eq!(attribute("messaging.operation.type"), "send");
    assert_eq!(
        attribute("messaging.destination.name"),
        format!("{}:workout.created", fx.exchange)
    );
    assert_eq!(
        attribute("messaging.rabbitmq.destination.routing_key"),
        "workout.created"
    );
    assert_eq!(
        attribute("messaging.message.id"),
        properties.message_id().as_ref().unwrap().as_str()
    );
    assert_eq!(attribute("server.address"), "127.0.0.1");
    assert_eq!(attribute("server.port"), "5672");
    let body_size: usize = attribute("messaging.message.body.size").parse().unwrap();
    assert!(body_size > 100, "{body_size}");

    // 3. A detached event keeps the trace of the request that spawned it.
    let request = tracing::info_span!("spawning request");
    let spawn_trace = request
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string();
    publisher
        .spawn(Event::new(WorkoutCreated::example()).with_organization("org-1"))
        .instrument(request)
        .await
        .unwrap();
    let report = publisher.close().await;
    assert_eq!(report.published, 1);
    let (_, properties) = fx.drain().await.pop().expect("the detached event");
    let (trace_id, _) = parse_traceparent(header(&properties, "traceparent").unwrap());
    assert_eq!(trace_id, spawn_trace);
    fx.cleanup().await;
}
