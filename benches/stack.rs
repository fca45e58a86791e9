//! What a publish costs on top of the broker: the full middleware stack over an
//! in-memory sink versus the bare sink, with validation on and off, the JSON
//! encoding of each built-in event, and last the validated stack with a Prometheus
//! metrics recorder installed. No broker needed.
//!
//! ```sh
//! cargo bench --bench stack
//! ```

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fitviz_events::{
    Event, EventPublisher, OrganizationId, PublisherConfig,
    events::*,
    telemetry,
    testing::{Example, MemorySink, examples},
};
use tower::Service;

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let org = OrganizationId::parse("org-42").expect("valid id");
    let mut group = c.benchmark_group("stack_overhead");
    group.throughput(Throughput::Elements(1));

    let sink = MemorySink::counting();
    group.bench_function("bare_sink", |b| {
        b.to_async(&rt).iter(|| {
            let mut sink = sink.clone();
            let event = Event::new(WorkoutCreated::example()).with_organization(org.clone());
            async move { sink.call(event).await.unwrap() }
        })
    });
    for validation in [true, false] {
        let publisher = rt.block_on(async {
            let config = PublisherConfig {
                validation,
                ..Default::default()
            };
            EventPublisher::builder(config).build_with_transport(MemorySink::counting())
        });
        let name = if validation {
            "full_stack_validated"
        } else {
            "full_stack_no_validation"
        };
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let publisher = publisher.clone();
                let event = Event::new(WorkoutCreated::example()).with_organization(org.clone());
                async move { publisher.publish(event).await.unwrap() }
            })
        });
        let json = serde_json::to_value(WorkoutCreated::example()).unwrap();
        group.bench_function(format!("{name}_json"), |b| {
            b.to_async(&rt).iter(|| {
                let publisher = publisher.clone();
                let event = Event::from_json("workout.created", json.clone())
                    .with_organization(org.clone());
                async move { publisher.publish(event).await.unwrap() }
            })
        });
    }
    group.finish();
    encode(c, &org);
    // Last: the recorder is process-wide and cannot be removed.
    with_prometheus_recorder(c, &rt, &org);
}

/// The validated stack again, with a Prometheus recorder installed (the cost of the
/// metrics when they are exported); the publisher is built after the install, as an
/// application does.
fn with_prometheus_recorder(c: &mut Criterion, rt: &tokio::runtime::Runtime, org: &OrganizationId) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(telemetry::PUBLISH_DURATION.to_owned()),
            telemetry::DURATION_BUCKETS,
        )
        .expect("valid buckets")
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder");
    let publisher = rt.block_on(async {
        EventPublisher::builder(PublisherConfig::default())
            .build_with_transport(MemorySink::counting())
    });
    let mut group = c.benchmark_group("stack_overhead");
    group.throughput(Throughput::Elements(1));
    group.bench_function("full_stack_validated_prometheus", |b| {
        b.to_async(rt).iter(|| {
            let publisher = publisher.clone();
            let event = Event::new(WorkoutCreated::example()).with_organization(org.clone());
            async move { publisher.publish(event).await.unwrap() }
        })
    });
    group.finish();
    assert!(
        handle
            .render()
            .contains("messaging_client_operation_duration_bucket"),
        "the recorder saw the publishes"
    );
}

fn encode(c: &mut Criterion, org: &OrganizationId) {
    let mut group = c.benchmark_group("encode_json");
    for event in examples() {
        let event = event.with_organization(org.clone()).with_source("bench");
        group.bench_with_input(
            BenchmarkId::from_parameter(event.event_type().to_owned()),
            &event,
            |b, e| b.iter(|| e.to_json_bytes().unwrap()),
        );
    }
    group.finish();
}

criterion_group!(benches, stack);
criterion_main!(benches);
