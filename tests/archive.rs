//! The archive stream on the real broker (issue 22): declared idempotently with its
//! retention, bound for every event or for patterns; what the receipt says in each mode
//! (archive on and bound, on for other patterns, configured but missing, off); what was
//! confirmed is in the stream.
mod support;

use std::time::Duration;

use fitviz_events::{
    ErrorKind, Event, EventPublisher, PublisherConfig, Routing,
    config::{ArchivePatterns, UnroutablePolicy},
    events::{BookingConfirmed, PaymentFailed, WorkoutCreated},
    testing::Example,
    topology::{ArchiveStream, Topology, TopologyErrorKind, archive_name},
};
use futures_util::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use support::{Leftovers, broker_url, queue_len, unique};

const ORG: &str = "org-archive";

use support::archive_config as config;

/// A small archive: retention applies within the test's few kilobytes.
fn small(patterns: ArchivePatterns) -> ArchiveStream {
    ArchiveStream::default()
        .patterns(patterns)
        .max_age(Duration::from_secs(600))
        .max_bytes(1_000_000)
        .segment_bytes(100_000)
}

/// The `message_id`s in the stream `name`, read from its first offset (a consumer with
/// `x-stream-offset: first`, prefetch and manual acks: what a stream requires), until
/// `expected` were read or 5 s passed.
async fn stream_ids(connection: &Connection, name: &str, expected: usize) -> Vec<String> {
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = channel
        .basic_consume(
            name.into(),
            "archive-test".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    while ids.len() < expected {
        match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                ids.push(
                    (delivery.properties.message_id().as_ref())
                        .map(|id| id.to_string())
                        .unwrap_or_default(),
                );
                delivery.ack(BasicAckOptions::default()).await.unwrap();
            }
            _ => break,
        }
    }
    let _ = channel.close(200, "read".into()).await;
    ids
}

#[tokio::test]
async fn the_archive_is_declared_idempotently_and_a_different_retention_is_a_conflict() {
    require_broker!();
    let name = unique("archive_declare");
    let exchange = format!("{name}.x");
    let _leftovers = Leftovers {
        exchanges: vec![exchange.clone(), format!("{exchange}.unrouted")],
        queues: vec![archive_name(&exchange), format!("{exchange}.unrouted")],
    };
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let topology = Topology::new(&exchange).archive(small(ArchivePatterns::all()));
    let first = topology.declare(&connection).await.expect("declare");
    assert_eq!(
        first.archive.as_deref(),
        Some(archive_name(&exchange).as_str())
    );
    let names: Vec<_> = first.declared.iter().map(|d| d.name.clone()).collect();
    assert!(
        names.contains(&format!("{} <- #", archive_name(&exchange))),
        "{names:?}"
    );
    let again = topology.declare(&connection).await.expect("declare again");
    assert_eq!(again, first, "declaring twice changes nothing");
    assert_eq!(
        queue_len(&connection, &archive_name(&exchange)).await,
        Some(0)
    );

    let other =
        Topology::new(&exchange).archive(small(ArchivePatterns::all()).max_bytes(2_000_000));
    let error = other
        .declare(&connection)
        .await
        .expect_err("frozen arguments");
    assert_eq!(error.kind(), TopologyErrorKind::Conflict, "{error}");
    assert!(error.to_string().contains("archive"), "{error}");

    let bad =
        Topology::new(&exchange).archive(small(ArchivePatterns::all()).segment_bytes(2_000_000));
    let error = bad.check().expect_err("a segment larger than the stream");
    assert_eq!(error.kind(), TopologyErrorKind::Config, "{error}");
    assert!(error.to_string().contains("segment"), "{error}");
    let _ = connection.close(200, "done".into()).await;
}

/// The receipt with the archive on for every event: `Archived`, whether a consumer
/// queue takes the event or not — never returned, never kept in `<exchange>.unrouted`,
/// never an `Unroutable` error (also with the `error` policy), never `Dropped` (with
/// `ignore`) — and every confirmed
/// event is in the stream.
#[tokio::test]
async fn with_the_archive_on_every_receipt_says_archived_and_every_event_is_in_the_stream() {
    require_broker!();
    let name = unique("archive_on");
    let exchange = format!("{name}.x");
    let queue = format!("{name}.q");
    let _leftovers = Leftovers {
        exchanges: vec![exchange.clone(), format!("{exchange}.unrouted")],
        queues: vec![
            archive_name(&exchange),
            queue.clone(),
            format!("{exchange}.unrouted"),
        ],
    };
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .unwrap();
    Topology::new(&exchange)
        .without_unrouted()
        .archive(small(ArchivePatterns::all()))
        .consumer_queue(
            fitviz_events::topology::ConsumerQueue::new(&queue)
                .bind("booking.*")
                .expires(Duration::from_secs(300)),
        )
        .declare(&connection)
        .await
        .expect("declare");

    let mut ids = Vec::new();
    for policy in [
        UnroutablePolicy::AlternateExchange,
        UnroutablePolicy::Error,
        UnroutablePolicy::Ignore,
    ] {
        let publisher = EventPublisher::connect(PublisherConfig {
            unroutable: policy,
            ..config(&name, &exchange, ArchivePatterns::all())
        })
        .await
        .unwrap();
        // No consumer queue for workout.created: only the archive takes it.
        let unbound = publisher
            .publish(Event::new(WorkoutCreated::example()).with_organization(ORG))
            .await
            .expect("archived, not unroutable");
        assert_eq!(unbound.routing, Routing::Archived, "{policy}");
        // A consumer queue for booking.confirmed: the broker does not say it, so archived.
        let bound = publisher
            .publish(Event::new(BookingConfirmed::example()).with_organization(ORG))
            .await
            .unwrap();
        assert_eq!(bound.routing, Routing::Archived, "{policy}");
        ids.extend([unbound.event_id.to_string(), bound.event_id.to_string()]);
        publisher.close().await;
    }
    assert_eq!(
        queue_len(&connection, &format!("{exchange}.unrouted")).await,
        None,
        "nothing was kept"
    );
    assert_eq!(
        queue_len(&connection, &queue).await,
        Some(3),
        "the bookings"
    );
    assert_eq!(
        stream_ids(&connection, &archive_name(&exchange), 6).await,
        ids,
        "every confirmed event, in order"
    );
    let _ = connection.close(200, "done".into()).await;
}

/// With the archive bound for `payment.#` only, other types keep the unroutable
/// policy's meaning (`Kept` by default, `Routed` when a queue takes them); and an
/// archive that is configured but was never declared makes no receipt say `Archived`.
#[tokio::test]
async fn other_types_keep_their_meaning_and_a_missing_archive_is_never_claimed() {
    require_broker!();
    let name = unique("archive_patterns");
    let exchange = format!("{name}.x");
    let queue = format!("{name}.q");
    let _leftovers = Leftovers {
        exchanges: vec![exchange.clone(), format!("{exchange}.unrouted")],
        queues: vec![
            archive_name(&exchange),
            queue.clone(),
            format!("{exchange}.unrouted"),
        ],
    };
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let payments = ArchivePatterns::new(["payment.#"]).unwrap();
    let bookings = fitviz_events::topology::ConsumerQueue::new(&queue)
        .bind("booking.*")
        .expires(Duration::from_secs(300));

    // Configured, not declared: no receipt claims the archive.
    Topology::new(&exchange)
        .consumer_queue(bookings.clone())
        .declare(&connection)
        .await
        .expect("declare without the archive");
    let publisher = EventPublisher::connect(config(&name, &exchange, payments.clone()))
        .await
        .unwrap();
    let missing = publisher
        .publish(Event::new(PaymentFailed::example()).with_organization(ORG))
        .await
        .expect("kept");
    assert_eq!(
        missing.routing,
        Routing::Kept,
        "no archive: the policy applies"
    );
    publisher.close().await;

    // Declared for payment.#: payments archived, the rest as without an archive.
    Topology::new(&exchange)
        .archive(small(payments.clone()))
        .consumer_queue(bookings)
        .declare(&connection)
        .await
        .expect("declare with the archive");
    let publisher = EventPublisher::connect(config(&name, &exchange, payments.clone()))
        .await
        .unwrap();
    let payment = publisher
        .publish(Event::new(PaymentFailed::example()).with_organization(ORG))
        .await
        .unwrap();
    assert_eq!(payment.routing, Routing::Archived);
    let workout = publisher
        .publish(Event::new(WorkoutCreated::example()).with_organization(ORG))
        .await
        .unwrap();
    assert_eq!(
        workout.routing,
        Routing::Kept,
        "not archived: kept by the policy"
    );
    let booking = publisher
        .publish(Event::new(BookingConfirmed::example()).with_organization(ORG))
        .await
        .unwrap();
    assert_eq!(booking.routing, Routing::Routed);
    publisher.close().await;

    // The error policy still fails a type the archive does not take.
    let publisher = EventPublisher::connect(PublisherConfig {
        unroutable: UnroutablePolicy::Error,
        ..config(&name, &exchange, payments)
    })
    .await
    .unwrap();
    let error = publisher
        .publish(Event::new(WorkoutCreated::example()).with_organization(ORG))
        .await
        .expect_err("unroutable");
    assert_eq!(error.kind(), ErrorKind::Unroutable, "{error}");
    publisher.close().await;

    assert_eq!(
        stream_ids(&connection, &archive_name(&exchange), 1).await,
        vec![payment.event_id.to_string()],
        "only the payment is archived (the first one was published before the archive existed)"
    );
    let _ = connection.close(200, "done".into()).await;
}

#[test]
fn the_setting_is_read_from_the_environment_and_named_when_wrong() {
    let config = PublisherConfig::from_vars([("FITVIZ_EVENTS_ARCHIVE", "workout.*, payment.#")])
        .expect("patterns");
    assert_eq!(config.archive.patterns(), ["workout.*", "payment.#"]);
    assert_eq!(
        Topology::from_config(&config)
            .archive_stream()
            .map(|a| a.bindings().clone()),
        Some(config.archive.clone())
    );
    let on = PublisherConfig::from_vars([("FITVIZ_EVENTS_ARCHIVE", "on")]).unwrap();
    assert_eq!(on.archive, ArchivePatterns::all());
    assert!(
        Topology::from_config(&PublisherConfig::default())
            .archive_stream()
            .is_none()
    );

    let err =
        PublisherConfig::from_vars([("FITVIZ_EVENTS_ARCHIVE", "workout..created")]).unwrap_err();
    assert_eq!(err.field(), "FITVIZ_EVENTS_ARCHIVE", "{err}");
    assert!(err.to_string().contains("`workout..created`"), "{err}");

    let long = "x".repeat(250);
    let err = PublisherConfig::from_vars([
        ("FITVIZ_EVENTS_ARCHIVE", "on"),
        ("FITVIZ_EVENTS_EXCHANGE", long.as_str()),
        ("FITVIZ_EVENTS_UNROUTABLE", "ignore"),
    ])
    .unwrap_err();
    assert_eq!(err.field(), "FITVIZ_EVENTS_EXCHANGE", "{err}");
    assert!(
        err.to_string().contains("FITVIZ_EVENTS_ARCHIVE is on"),
        "{err}"
    );
}
