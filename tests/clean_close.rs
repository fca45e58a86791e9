//! A clean close logs nothing above DEBUG — neither this crate nor lapin — so that
//! every deploy does not page someone. Its own binary: it installs a global
//! subscriber, which sees lapin's I/O thread too.

mod support;

use std::time::Duration;

use fitviz_events::{Event, EventPublisher, events::WorkoutCreated, testing::Example};
use support::{Captured, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_logs_nothing_above_debug() {
    if !support::broker_available().await {
        return;
    }
    let captured = Captured::default();
    tracing::subscriber::set_global_default(captured.subscriber(tracing::Level::INFO)).unwrap();
    tracing::warn!("capture check");

    let fx = Fixture::new("clean_close", "#").await;
    let publisher = EventPublisher::connect(fitviz_events::PublisherConfig {
        pool_size: 4,
        ..fx.config()
    })
    .await
    .unwrap();
    let outcomes = publisher
        .publish_batch(
            (0..200).map(|_| Event::new(WorkoutCreated::example()).with_organization("org-1")),
        )
        .await;
    assert!(outcomes.iter().all(Result::is_ok));
    for _ in 0..20 {
        publisher
            .spawn(Event::new(WorkoutCreated::example()).with_organization("org-1"))
            .await
            .unwrap();
    }
    let report = publisher.close().await;
    assert_eq!(report.published, 20);
    assert!(report.unsent.is_empty());
    // lapin's internal tasks run after `close` returns; give them time to log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fx.queue_len().await, 220);
    fx.cleanup().await;

    let logs = captured.text();
    assert!(logs.contains("capture check"), "the capture works: {logs}");
    // With the `opentelemetry` feature and a subscriber without a tracing-opentelemetry
    // layer (this one), the trace context cannot be injected: said once, not per event.
    const NO_TRACE: &str = "events are published without trace context";
    let expected = usize::from(cfg!(feature = "opentelemetry"));
    assert_eq!(logs.matches(NO_TRACE).count(), expected, "{logs}");
    let loud: Vec<&str> = logs
        .lines()
        .filter(|line| !line.contains("capture check") && !line.contains(NO_TRACE))
        .filter(|line| line.contains(" WARN ") || line.contains("ERROR"))
        .collect();
    assert!(
        loud.is_empty(),
        "a clean close logged:\n{}",
        loud.join("\n")
    );
}
