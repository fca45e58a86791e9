//! Custom AMQP headers (`Event::with_header`) against the real broker: they arrive with
//! their types next to the library's own; reserved names are refused before any I/O,
//! from `publish` and `spawn`; a header too big for the negotiated frame is `TooLarge`
//! before anything is sent, and the connection stays open.

mod support;

use std::time::{Duration, Instant};

use fitviz_events::{
    ErrorKind, Event, EventPublisher, PublisherConfig, circuit_breaker::BreakerState,
    events::WorkoutCreated, testing::Example,
};
use lapin::types::AMQPValue;

fn header_table(
    props: &lapin::BasicProperties,
) -> &std::collections::BTreeMap<lapin::types::ShortString, AMQPValue> {
    props.headers().as_ref().expect("headers").inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_headers_arrive_with_their_types_next_to_the_library_headers() {
    require_broker!();
    let fx = support::Fixture::new("hdr_types", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let event = Event::new(WorkoutCreated::example())
        .with_organization("org-42")
        .with_header("tenant-tier", "gold")
        .with_header("utf8.name", "żółw 🐢")
        .with_header("attempt", 42)
        .with_header("big-int", i64::MIN)
        .with_header("replay", true)
        .with_header("dry_run", false)
        .with_header("ratio", 0.25)
        .with_header("tenant-tier", "platinum"); // replaces "gold"
    let id = event.id();
    publisher.publish(event).await.unwrap();
    publisher.close().await;

    let messages = fx.drain().await;
    assert_eq!(messages.len(), 1);
    let (_, props) = &messages[0];
    assert_eq!(
        props.message_id().as_ref().unwrap().as_str(),
        id.to_string()
    );
    let headers = header_table(props);
    let long = |s: &str| Some(AMQPValue::LongString(s.into()));
    assert_eq!(headers.get("tenant-tier").cloned(), long("platinum"));
    assert_eq!(headers.get("utf8.name").cloned(), long("żółw 🐢"));
    assert_eq!(headers.get("attempt"), Some(&AMQPValue::LongLongInt(42)));
    assert_eq!(
        headers.get("big-int"),
        Some(&AMQPValue::LongLongInt(i64::MIN))
    );
    assert_eq!(headers.get("replay"), Some(&AMQPValue::Boolean(true)));
    assert_eq!(headers.get("dry_run"), Some(&AMQPValue::Boolean(false)));
    assert_eq!(headers.get("ratio"), Some(&AMQPValue::Double(0.25)));
    // The library's own, untouched.
    assert_eq!(headers.get("organization_id").cloned(), long("org-42"));
    assert_eq!(
        headers.get("schema_version"),
        Some(&AMQPValue::LongLongInt(1))
    );
    assert_eq!(headers.len(), 9, "{headers:?}");
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_header_names_are_refused_before_any_io() {
    require_broker!();
    let fx = support::Fixture::new("hdr_reserved", "#").await;
    let config = PublisherConfig {
        breaker_failure_threshold: 1,
        ..fx.config()
    };
    let publisher = EventPublisher::connect(config).await.unwrap();
    for name in [
        "organization_id",
        "Schema_Version",
        "X-Death",
        "x-delay",
        "traceparent",
        "baggage",
        "fitviz-trace",
        "CC",
        "bcc",
        "bad name",
    ] {
        let event = || {
            Event::new(WorkoutCreated::example())
                .with_organization("org-1")
                .with_header("tier", "gold")
                .with_header(name, "sneaky")
        };
        let started = Instant::now();
        let err = publisher.publish(event()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{name}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{name}: not retried"
        );
        let violations = err.validation_error().unwrap().violations();
        assert_eq!(violations.len(), 1, "{name}: {err}");
        let expected = if name == "bad name" {
            r#"headers."bad name""#.to_owned()
        } else {
            format!("headers.{name}")
        };
        assert_eq!(violations[0].field, expected, "{err}");
        assert!(
            violations[0].message.starts_with("is reserved by")
                || violations[0].message.starts_with("may only contain"),
            "{err}"
        );

        // Detached events are refused at once too, before they are queued.
        let err = publisher.spawn(event()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{name}: {err}");
        assert_eq!(
            err.validation_error().unwrap().violations()[0].field,
            expected
        );
    }
    assert_eq!(publisher.breaker_state(), Some(BreakerState::Closed));
    let report = publisher.close().await;
    assert_eq!((report.published, report.failed), (0, 0));
    assert!(report.unsent.is_empty());
    assert_eq!(fx.queue_len().await, 0, "nothing reached the broker");
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_over_the_negotiated_frame_max_is_too_large_and_the_connection_stays_open() {
    require_broker!();
    let fx = support::Fixture::new("hdr_frame", "#").await;
    let config = PublisherConfig {
        pool_size: 1, // the next publishes share the channel and connection
        breaker_failure_threshold: 1,
        ..fx.config()
    };
    let publisher = EventPublisher::connect(config).await.unwrap();

    // RabbitMQ's default frame_max is 131072 bytes: a 140 kB header cannot fit.
    let huge = Event::new(WorkoutCreated::example())
        .with_organization("org-1")
        .with_header("blob", "x".repeat(140_000));
    let started = Instant::now();
    let err = publisher.publish(huge.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert!(!err.is_retryable() && !err.is_broker_failure());
    assert_eq!(err.event_id(), Some(huge.id()));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not retried: {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(text.contains("content header frame"), "{text}");
    assert!(
        !text.contains("xxxxxxxx"),
        "the value is not echoed: {text}"
    );
    assert_eq!(publisher.breaker_state(), Some(BreakerState::Closed));

    // Spread over many headers, the same.
    let mut many = Event::new(WorkoutCreated::example()).with_organization("org-1");
    for i in 0..40 {
        many = many.with_header(format!("part-{i}"), "y".repeat(4_000));
    }
    let err = publisher.publish(many).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert_eq!(fx.queue_len().await, 0, "nothing reached the broker");

    // The same channel and connection keep working, and a large header that fits arrives.
    let fits = Event::new(WorkoutCreated::example())
        .with_organization("org-1")
        .with_header("blob", "z".repeat(100_000));
    publisher
        .publish(fits)
        .await
        .expect("the connection is still open");
    publisher
        .publish(Event::new(WorkoutCreated::example()).with_organization("org-2"))
        .await
        .expect("the connection is still open");
    let messages = fx.drain().await;
    assert_eq!(messages.len(), 2);
    assert_eq!(
        header_table(&messages[0].1).get("blob"),
        Some(&AMQPValue::LongString("z".repeat(100_000).into()))
    );

    // A detached event: `spawn` checks it against the frame size the connection
    // negotiated, and refuses it before queueing.
    let err = publisher.spawn(huge).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    let report = publisher.close().await;
    assert_eq!((report.published, report.failed), (0, 0));
    assert_eq!(fx.queue_len().await, 0);
    fx.cleanup().await;
}
