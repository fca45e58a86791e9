//! Replaying the archive on the real broker (issue 22): 10,000 events of several types
//! and organizations in two batches 1.5 s apart, read back from the first event, from
//! an offset, from a time between the batches, until that time, from the head, by type
//! and organization; a read whose connection is closed half-way resumes without gaps or
//! duplicates; republished copies reach a fresh queue once each, and copies sent back
//! to the exchange are skipped by later replays; retention with small segments drops
//! the oldest while replay still works.
mod support;

use std::{
    collections::{BTreeSet, HashSet},
    time::Duration,
};

use chrono::Utc;
use fitviz_events::{
    Event, EventPublisher, PublisherConfig, Routing,
    config::ArchivePatterns,
    events::{BookingConfirmed, PaymentFailed, WorkoutCreated},
    header::HEADER_REPLAYED_FROM,
    replay::{ArchivedEvent, Replay, ReplayFrom, ReplayStream, ReplayTarget, ReplayUntil},
    testing::Example,
    topology::{ArchiveStream, archive_name},
};
use lapin::{
    options::{BasicGetOptions, QueueDeclareOptions},
    types::FieldTable,
};
use support::{Leftovers, queue_len, unique};
use uuid::Uuid;

const ORGS: [&str; 4] = ["org-1", "org-2", "org-3", "org-4"];

/// What a published event looked like, to compute what each replay must give.
#[derive(Clone, Debug)]
struct Sent {
    id: Uuid,
    event_type: &'static str,
    organization: &'static str,
    batch: u8,
}

fn config(name: &str, exchange: &str) -> PublisherConfig {
    support::archive_config(name, exchange, ArchivePatterns::all())
}

/// Publishes `n` events (types and organizations in turn), 1,000 at a time.
async fn publish(publisher: &EventPublisher, n: usize, batch: u8) -> Vec<Sent> {
    let mut sent = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(1000) {
        let mut events = Vec::new();
        for i in chunk * 1000..((chunk + 1) * 1000).min(n) {
            let organization = ORGS[i % ORGS.len()];
            let (event, event_type) = match i % 3 {
                0 => (Event::new(WorkoutCreated::example()), "workout.created"),
                1 => (Event::new(BookingConfirmed::example()), "booking.confirmed"),
                _ => (Event::new(PaymentFailed::example()), "payment.failed"),
            };
            let event = event.with_organization(organization);
            sent.push(Sent {
                id: event.id(),
                event_type,
                organization,
                batch,
            });
            events.push(event);
        }
        for result in publisher.publish_batch(events).await {
            let receipt = result.expect("published");
            assert_eq!(receipt.routing, Routing::Archived);
        }
    }
    sent
}

/// Every event a replay yields, checking that offsets only grow.
async fn read_all(mut stream: ReplayStream) -> Vec<ArchivedEvent> {
    let mut events: Vec<ArchivedEvent> = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.expect("a replayed event");
        if let Some(previous) = events.last() {
            assert!(event.offset > previous.offset, "offsets in log order");
        }
        events.push(event);
    }
    events
}

fn ids(events: &[ArchivedEvent]) -> HashSet<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

fn sent_ids<'a>(sent: impl IntoIterator<Item = &'a Sent>) -> HashSet<Uuid> {
    sent.into_iter().map(|s| s.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_replays_by_offset_time_type_and_organization_and_resumes_after_a_loss() {
    require_broker!();
    let name = unique("replay");
    let exchange = format!("{name}.x");
    let fresh = format!("{name}.fresh");
    let _leftovers = Leftovers {
        exchanges: vec![exchange.clone()],
        queues: vec![archive_name(&exchange), fresh.clone()],
    };
    let connection = support::declare_archive(
        &exchange,
        ArchiveStream::default()
            .max_age(Duration::from_secs(600))
            .max_bytes(200_000_000)
            .segment_bytes(10_000_000),
    )
    .await;
    let config = config(&name, &exchange);
    let publisher = EventPublisher::connect(config.clone()).await.unwrap();

    let mut sent = publish(&publisher, 5_000, 1).await;
    tokio::time::sleep(Duration::from_millis(750)).await;
    let between = Utc::now();
    tokio::time::sleep(Duration::from_millis(750)).await;
    sent.extend(publish(&publisher, 5_000, 2).await);
    let all = sent_ids(&sent);
    assert_eq!(all.len(), 10_000);

    // From the first event: all 10,000, contiguous offsets from 0, the original ids.
    let started = std::time::Instant::now();
    let stream = Replay::new(&exchange).open(&config).await.expect("open");
    let everything = read_all(stream).await;
    eprintln!("MEASURED replay of 10,000 events: {:?}", started.elapsed());
    assert_eq!(everything.len(), 10_000);
    let offsets: Vec<u64> = everything.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, (0..10_000).collect::<Vec<u64>>(), "contiguous");
    assert_eq!(ids(&everything), all);
    let first = &everything[0];
    assert_eq!(first.envelope["event_id"], first.event_id.to_string());
    assert!(
        everything
            .iter()
            .all(|e| matches!(e.validation, Some(Ok(())))),
        "validated against their schemas"
    );

    // From offset k: 10,000 - k, starting at k.
    let k = 1_234;
    let stream = Replay::new(&exchange)
        .from(ReplayFrom::Offset(k))
        .open(&config)
        .await
        .unwrap();
    let tail = read_all(stream).await;
    assert_eq!(tail.len(), 10_000 - k as usize);
    assert_eq!(tail[0].offset, k);

    // From a time between the batches: exactly the second; until it: exactly the first.
    let batch = |b: u8| sent_ids(sent.iter().filter(|s| s.batch == b));
    let stream = Replay::new(&exchange)
        .from(ReplayFrom::Time(between))
        .open(&config)
        .await
        .unwrap();
    assert_eq!(ids(&read_all(stream).await), batch(2));
    let stream = Replay::new(&exchange)
        .until(ReplayUntil::Time(between))
        .open(&config)
        .await
        .unwrap();
    assert_eq!(ids(&read_all(stream).await), batch(1));

    // The head: one event, the newest.
    let stream = Replay::new(&exchange)
        .from(ReplayFrom::Last)
        .open(&config)
        .await
        .unwrap();
    let last = read_all(stream).await;
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].offset, 9_999);

    // By type and organization: exactly the matching ones.
    let stream = Replay::new(&exchange)
        .event_type("payment.*")
        .organization("org-2")
        .organization("org-3")
        .open(&config)
        .await
        .unwrap();
    let filtered = read_all(stream).await;
    let expected = sent_ids(sent.iter().filter(|s| {
        s.event_type == "payment.failed" && ["org-2", "org-3"].contains(&s.organization)
    }));
    assert!(!expected.is_empty());
    assert_eq!(ids(&filtered), expected);

    // A connection closed half-way: the read resumes where it was, no gap, no duplicate.
    let replay_connection = format!("{name}.publisher.replay");
    let mut stream = Replay::new(&exchange)
        .prefetch(50)
        .open(&config)
        .await
        .unwrap();
    let mut resumed = Vec::new();
    while resumed.len() < 3_000 {
        resumed.push(stream.next().await.expect("more").expect("an event"));
    }
    let closed = support::close_connections_named(&replay_connection).await;
    assert!(closed >= 1, "the replay's connection was closed");
    while let Some(event) = stream.next().await {
        resumed.push(event.expect("an event after the loss"));
    }
    let progress = stream.progress();
    eprintln!("MEASURED replay with its connection closed at 3,000: {progress:?}");
    assert!(progress.reconnects >= 1, "{progress:?}");
    let offsets: Vec<u64> = resumed.iter().map(|e| e.offset).collect();
    assert_eq!(
        offsets,
        (0..10_000).collect::<Vec<u64>>(),
        "no gap, no duplicate"
    );

    // Republished to a fresh queue: each matching event once, same message_id, marked.
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            fresh.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let to = ReplayTarget::Queue(fresh.clone());
    for event in &filtered {
        let receipt = event.republish(&publisher, &to).await.expect("republished");
        assert_eq!(receipt.routing, Routing::Routed);
    }
    assert_eq!(
        queue_len(&connection, &fresh).await,
        Some(u32::try_from(filtered.len()).unwrap())
    );
    let mut got = BTreeSet::new();
    while let Some(message) = channel
        .basic_get(fresh.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let properties = &message.delivery.properties;
        let id = properties.message_id().as_ref().unwrap().to_string();
        assert!(
            properties
                .headers()
                .as_ref()
                .is_some_and(|h| h.inner().contains_key(HEADER_REPLAYED_FROM)),
            "marked"
        );
        assert!(got.insert(id), "delivered once");
    }
    let expected_ids: BTreeSet<String> = expected.iter().map(Uuid::to_string).collect();
    assert_eq!(got, expected_ids);

    // Sent back to the exchange: archived again, marked, skipped by the next replay.
    for event in &filtered {
        let receipt = event
            .republish(&publisher, &ReplayTarget::Exchange)
            .await
            .unwrap();
        assert_eq!(receipt.routing, Routing::Archived);
    }
    let mut stream = Replay::new(&exchange).open(&config).await.unwrap();
    let mut again = 0;
    while let Some(event) = stream.next().await {
        assert!(!event.unwrap().replayed);
        again += 1;
    }
    assert_eq!(again, 10_000);
    assert_eq!(stream.progress().skipped_replayed, filtered.len() as u64);
    let stream = Replay::new(&exchange)
        .include_replayed(true)
        .open(&config)
        .await
        .unwrap();
    assert_eq!(read_all(stream).await.len(), 10_000 + filtered.len());

    publisher.close().await;
    let _ = connection.close(200, "done".into()).await;
}

/// Retention with small segments drops the oldest events (the first offset still held
/// is above 0) while a replay from the first event still reads what is left.
#[tokio::test]
async fn retention_drops_the_oldest_segments_and_replay_still_works() {
    require_broker!();
    let name = unique("replay_retention");
    let exchange = format!("{name}.x");
    let _leftovers = Leftovers {
        exchanges: vec![exchange.clone()],
        queues: vec![archive_name(&exchange)],
    };
    let connection = support::declare_archive(
        &exchange,
        ArchiveStream::default()
            .max_age(Duration::from_secs(600))
            .max_bytes(400_000)
            .segment_bytes(50_000),
    )
    .await;
    let config = config(&name, &exchange);
    let publisher = EventPublisher::connect(config.clone()).await.unwrap();
    let sent = publish(&publisher, 3_000, 1).await;
    publisher.close().await;

    let stream = Replay::new(&exchange).open(&config).await.unwrap();
    let left = read_all(stream).await;
    eprintln!(
        "MEASURED retention: {} of {} events left, first offset {:?}",
        left.len(),
        sent.len(),
        left.first().map(|e| e.offset)
    );
    let first = left.first().expect("something is left").offset;
    assert!(first > 0, "the oldest segments were dropped");
    assert!(left.len() < sent.len(), "the oldest events are gone");
    // Offsets only grow (read_all checks it); each new segment takes one offset for the
    // broker's own bookkeeping, so 3,000 events end above offset 2,999.
    assert!(left.last().unwrap().offset >= 2_999, "up to the head");
    let all = sent_ids(&sent);
    assert!(
        left.iter().all(|e| all.contains(&e.event_id)),
        "the events sent"
    );
    assert_eq!(ids(&left).len(), left.len(), "each once");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn an_empty_or_missing_archive_is_said_so_and_an_invalid_event_keeps_its_error() {
    require_broker!();
    let name = unique("replay_empty");
    let exchange = format!("{name}.x");
    let _leftovers = Leftovers {
        exchanges: vec![exchange.clone()],
        queues: vec![archive_name(&exchange)],
    };
    let config = config(&name, &exchange);
    let error = Replay::new(&exchange)
        .open(&config)
        .await
        .expect_err("no archive");
    assert_eq!(
        error.kind(),
        fitviz_events::topology::TopologyErrorKind::NotFound,
        "{error}"
    );
    let error = Replay::new(&exchange)
        .event_type("payment..failed")
        .open(&config)
        .await
        .expect_err("a bad pattern");
    assert_eq!(
        error.kind(),
        fitviz_events::topology::TopologyErrorKind::Config,
        "{error}"
    );
    let connection = support::declare_archive(
        &exchange,
        ArchiveStream::default()
            .max_bytes(1_000_000)
            .segment_bytes(100_000),
    )
    .await;
    let mut stream = Replay::new(&exchange).open(&config).await.unwrap();
    assert!(stream.next().await.is_none());
    assert_eq!(stream.progress().head, None);

    // An event published without validation is replayed with its validation error.
    let publisher = EventPublisher::connect(PublisherConfig {
        validation: false,
        ..config.clone()
    })
    .await
    .unwrap();
    let invalid = Event::from_json("workout.created", serde_json::json!({"title": 42}))
        .with_organization("org-1");
    publisher
        .publish(invalid)
        .await
        .expect("published unvalidated");
    publisher.close().await;
    let replayed = read_all(Replay::new(&exchange).open(&config).await.unwrap()).await;
    assert_eq!(replayed.len(), 1);
    let error = match &replayed[0].validation {
        Some(Err(error)) => error.to_string(),
        other => panic!("expected a validation error, got {other:?}"),
    };
    assert!(
        error.contains("`workout.created`") && error.contains("expected a string"),
        "{error}"
    );
    let _ = connection.close(200, "done".into()).await;
}
