//! Confirmed publishing against the real broker: contract, outcomes, exactness.

mod support;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::pin,
    task::Poll,
    time::Duration,
};

use fitviz_events::testing::Example;
use fitviz_events::{
    ErrorKind, Event, EventPublisher, OrganizationId, PublishError, PublisherConfig, Receipt,
    events::*,
};
use lapin::types::AMQPValue;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_receives_the_exact_body_and_properties() {
    require_broker!();
    let fx = support::Fixture::new("contract", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let data = WorkoutCreated::example();
    let event = Event::new(data.clone())
        .with_organization("org-42")
        .with_correlation_id("req-123")
        .with_source("workouts-api");
    let (id, ts) = (event.id(), event.timestamp());
    let receipt = publisher.publish(event).await.unwrap();
    assert_eq!(receipt.event_id, id);

    let messages = fx.drain().await;
    assert_eq!(messages.len(), 1);
    let (body, props) = &messages[0];
    let body: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(body["event_id"], id.to_string());
    assert_eq!(body["event_type"], "workout.created");
    assert_eq!(body["organization_id"], "org-42");
    assert_eq!(body["version"], 1);
    assert_eq!(body["source"], "workouts-api");
    assert_eq!(body["correlation_id"], "req-123");
    assert_eq!(body["data"], serde_json::to_value(&data).unwrap());
    let sent_ts =
        chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(sent_ts.timestamp_millis(), ts.timestamp_millis());
    assert_eq!(
        body.as_object().unwrap().len(),
        8,
        "no extra envelope fields: {body}"
    );

    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(
        props.message_id().as_ref().unwrap().as_str(),
        id.to_string()
    );
    assert_eq!(*props.timestamp(), Some(ts.timestamp() as u64));
    assert_eq!(props.kind().as_ref().unwrap().as_str(), "workout.created");
    assert_eq!(props.app_id().as_ref().unwrap().as_str(), "workouts-api");
    assert_eq!(props.correlation_id().as_ref().unwrap().as_str(), "req-123");
    let headers = props.headers().as_ref().unwrap().inner();
    match headers.get("organization_id") {
        Some(AMQPValue::LongString(s)) => assert_eq!(s.to_string(), "org-42"),
        other => panic!("organization_id header: {other:?}"),
    }
    assert_eq!(
        headers.get("schema_version"),
        Some(&AMQPValue::LongLongInt(1))
    );

    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_builtin_event_publishes_and_arrives() {
    require_broker!();
    let fx = support::Fixture::new("builtin", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let org = OrganizationId::parse("org-7").unwrap();
    let events = fitviz_events::testing::examples();
    let mut expected = HashSet::new();
    for event in events {
        let event = event.with_organization(org.clone());
        expected.insert((event.event_type().to_owned(), event.id().to_string()));
        publisher.publish(event).await.unwrap();
    }
    // And the same eleven types through the dynamic JSON path.
    for event_type in BUILTIN_EVENT_TYPES {
        let data = example_json(event_type);
        let receipt = publisher
            .publish_json(event_type, data, Some(org.clone()))
            .await
            .unwrap_or_else(|e| panic!("{event_type}: {e}"));
        expected.insert((event_type.to_owned(), receipt.event_id.to_string()));
    }
    let got: HashSet<_> = fx
        .drain()
        .await
        .into_iter()
        .map(|(body, _)| {
            let body: Value = serde_json::from_slice(&body).unwrap();
            (
                body["event_type"].as_str().unwrap().to_owned(),
                body["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 22);
    publisher.close().await;
    fx.cleanup().await;
}

fn example_json(event_type: &str) -> Value {
    let value = match event_type {
        "workout.created" => serde_json::to_value(WorkoutCreated::example()),
        "workout.updated" => serde_json::to_value(WorkoutUpdated::example()),
        "workout.deleted" => serde_json::to_value(WorkoutDeleted::example()),
        "booking.confirmed" => serde_json::to_value(BookingConfirmed::example()),
        "booking.cancelled" => serde_json::to_value(BookingCancelled::example()),
        "membership.created" => serde_json::to_value(MembershipCreated::example()),
        "membership.expired" => serde_json::to_value(MembershipExpired::example()),
        "payment.completed" => serde_json::to_value(PaymentCompleted::example()),
        "payment.failed" => serde_json::to_value(PaymentFailed::example()),
        "class.scheduled" => serde_json::to_value(ClassScheduled::example()),
        "class.cancelled" => serde_json::to_value(ClassCancelled::example()),
        other => panic!("unknown {other}"),
    };
    value.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_rejected_and_never_reach_the_broker() {
    require_broker!();
    let fx = support::Fixture::new("invalid", "#").await;
    // With the `reject` unknown-field policy, so that the unknown field below is refused
    // (the default, `forward`, is tested in `python_calls.rs`).
    let config = PublisherConfig {
        unknown_fields: fitviz_events::schema::UnknownFields::Reject,
        ..fx.config()
    };
    let publisher = EventPublisher::connect(config).await.unwrap();
    let org = Some(OrganizationId::parse("org-1").unwrap());

    // One broken rule per built-in event, each through the JSON path, with the field named.
    let cases: Vec<(&str, Value, &str)> = BUILTIN_EVENT_TYPES
        .iter()
        .map(|t| (*t, json!({}), "data"))
        .chain([
            (
                "workout.created",
                patch("workout.created", "duration_minutes", json!(0)),
                "duration_minutes",
            ),
            (
                "workout.created",
                patch("workout.created", "workout_id", json!("")),
                "workout_id",
            ),
            (
                "class.scheduled",
                patch("class.scheduled", "capacity", json!(0)),
                "capacity",
            ),
            (
                "payment.failed",
                patch("payment.failed", "amount_minor", json!(-5)),
                "amount_minor",
            ),
            (
                "payment.completed",
                patch("payment.completed", "currency", json!("XYZ")),
                "currency",
            ),
            (
                "membership.created",
                patch(
                    "membership.created",
                    "expires_at",
                    json!("2000-01-01T00:00:00Z"),
                ),
                "expires_at",
            ),
            (
                "workout.created",
                patch("workout.created", "unexpected", json!(1)),
                "data",
            ),
            ("Workout.Created", json!({}), "event_type"),
            ("not.registered", json!({}), "event_type"),
        ])
        .collect();
    for (event_type, data, field) in cases {
        let err = publisher
            .publish_json(event_type, data.clone(), org.clone())
            .await
            .expect_err(event_type);
        assert_eq!(err.kind(), ErrorKind::Validation, "{event_type}: {err}");
        let validation = err.validation_error().expect("validation details");
        assert!(
            validation.violations().iter().any(|v| v.field == field),
            "{event_type} {data}: expected field {field}, got {validation}"
        );
    }
    // A typed event breaking a rule.
    let mut bad = ClassScheduled::example();
    bad.ends_at = bad.starts_at;
    let err = publisher
        .publish(Event::new(bad).with_organization("org-1"))
        .await
        .unwrap_err();
    assert_eq!(
        err.validation_error().unwrap().violations()[0].field,
        "ends_at"
    );
    // Missing organization.
    let err = publisher
        .publish(Event::new(WorkoutDeleted::example()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingOrganization);

    assert_eq!(
        fx.queue_len().await,
        0,
        "an invalid event reached the broker"
    );
    publisher.close().await;
    fx.cleanup().await;
}

fn patch(event_type: &str, field: &str, value: Value) -> Value {
    let mut data = example_json(event_type);
    data[field] = value;
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_get_their_own_exact_outcome() {
    require_broker!();
    let fx = support::Fixture::new("exact", "routed.#").await;
    let publisher = one_channel_publisher(&fx).await;
    let mut tasks = Vec::new();
    for i in 0..3000u32 {
        let publisher = publisher.clone();
        let routed = i % 3 != 0;
        let event = numbered_event(routed, i);
        let id = event.id();
        tasks.push(tokio::spawn(async move {
            (routed, id, publisher.publish(event).await)
        }));
    }
    let mut routed_ids = HashSet::new();
    let (mut ok, mut unroutable) = (0, 0);
    for task in tasks {
        let (routed, id, result) = task.await.unwrap();
        assert_exact(routed, id, result);
        if routed {
            routed_ids.insert(id.to_string());
            ok += 1;
        } else {
            unroutable += 1;
        }
    }
    assert_eq!((ok, unroutable), (2000, 1000));
    let in_queue: HashSet<String> = fx
        .drain()
        .await
        .into_iter()
        .map(|(_, props)| props.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        in_queue, routed_ids,
        "the queue holds exactly the events reported routed"
    );
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_surfaces_as_a_nack_error() {
    require_broker!();
    let mut args = lapin::types::FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let fx = support::Fixture::with_queue_args("nack", "#", args).await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let event = || Event::new(WorkoutDeleted::example()).with_organization("org-1");
    publisher.publish(event()).await.unwrap();
    let err = publisher.publish(event()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Nacked, "{err}");
    // Retried within the deadline (a quorum queue electing a new leader nacks for a
    // while: tests/cluster.rs); a full queue is still full after the retries.
    assert!(err.is_retryable());
    assert!(!err.maybe_delivered());
    // A channel open for a second or more is also replaced on a nack (one that used a
    // quorum queue's lost leader keeps nacking); a full queue nacks on the new one too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = publisher.publish(event()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Nacked, "{err}");
    assert!(!err.maybe_delivered());
    assert_eq!(fx.queue_len().await, 1);
    publisher.close().await;
    fx.cleanup().await;
}

/// An event numbered `i`, of a type the fixture binds (`routed.event`) or not.
fn numbered_event(routed: bool, i: u32) -> Event {
    let event_type = if routed {
        "routed.event"
    } else {
        "unrouted.event"
    };
    Event::from_json(event_type, json!({ "i": i })).with_organization("org-1")
}

/// A routed event must be confirmed, an unroutable one reported `Unroutable`, both
/// under their own id.
fn assert_exact(routed: bool, id: Uuid, result: Result<Receipt, PublishError>) {
    if routed {
        let receipt = result.unwrap_or_else(|e| panic!("routed event {id} failed: {e}"));
        assert_eq!(receipt.event_id, id);
    } else {
        let err = result.expect_err("unroutable event reported published");
        assert_eq!(err.kind(), ErrorKind::Unroutable, "{err}");
        assert_eq!(err.event_id(), Some(id));
    }
}

/// A publisher on a single channel, accepting unregistered event types.
async fn one_channel_publisher(fx: &support::Fixture) -> EventPublisher {
    let config = fitviz_events::PublisherConfig {
        allow_unregistered: true,
        pool_size: 1,
        ..fx.config()
    };
    EventPublisher::connect(config).await.unwrap()
}

fn message_ids(messages: Vec<(Vec<u8>, lapin::BasicProperties)>) -> Vec<String> {
    messages
        .into_iter()
        .map(|(_, props)| props.message_id().as_ref().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_dropped_before_it_is_written_is_never_sent() {
    require_broker!();
    let fx = support::Fixture::new("withdrawn", "#").await;
    let proxy = support::proxy::FaultProxy::start(&support::broker_addr()).await;
    let config = fitviz_events::PublisherConfig {
        url: proxy.amqp_url().parse().unwrap(),
        allow_unregistered: true,
        pool_size: 1,
        ..fx.config()
    };
    let publisher = EventPublisher::connect(config).await.unwrap();
    let event = |event_type: &'static str| {
        Event::from_json(event_type, json!({})).with_organization("org-1")
    };
    // The lane now holds an open channel: the next publishes need no I/O to get ready.
    let warm_up = event("test.warm_up");
    let mut expected = HashSet::from([warm_up.id().to_string()]);
    publisher.publish(warm_up).await.unwrap();

    // A busy channel: 40 confirms in flight, slowed down by the proxy. A publish that
    // is ready then yields once before it is written (to be written with the others).
    proxy.set_latency(Duration::from_millis(300));
    let mut busy = Vec::new();
    for _ in 0..40 {
        let event = event("test.busy");
        expected.insert(event.id().to_string());
        let publisher = publisher.clone();
        busy.push(tokio::spawn(async move { publisher.publish(event).await }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let dropped = event("test.dropped");
    let dropped_id = dropped.id().to_string();
    {
        let mut publish = pin!(publisher.publish(dropped));
        // One poll prepares it (encoded, channel, permit and confirm slot taken) and
        // stops at that yield, before anything is written.
        let first = std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await;
        assert!(
            first.is_pending(),
            "the first poll already finished: {first:?}"
        );
    }
    for task in busy {
        task.await.unwrap().unwrap();
    }
    proxy.heal();

    // The withdrawn slot holds nothing up: later publishes on the channel settle.
    for _ in 0..20 {
        let event = event("test.after");
        expected.insert(event.id().to_string());
        tokio::time::timeout(Duration::from_secs(10), publisher.publish(event))
            .await
            .expect("a publish after the dropped one hung")
            .unwrap();
    }
    let in_queue: HashSet<String> = message_ids(fx.drain().await).into_iter().collect();
    assert!(
        !in_queue.contains(&dropped_id),
        "the dropped publish reached the broker"
    );
    assert_eq!(in_queue, expected);
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_publishes_leave_the_other_outcomes_exact() {
    require_broker!();
    let fx = support::Fixture::new("cancelled", "routed.#").await;
    let publisher = one_channel_publisher(&fx).await;
    // Every other publish is cancelled after 0 to 3 ms: before it is written, while it
    // is written, or while its confirm is in flight. The others must get their exact
    // outcome, and only events that were reported routed or cancelled may be queued.
    let mut tasks = Vec::new();
    for i in 0..3000u32 {
        let publisher = publisher.clone();
        let routed = i % 3 != 0;
        let event = numbered_event(routed, i);
        let id = event.id();
        let cancel_after = (i % 2 == 1).then(|| Duration::from_micros(u64::from(i * 7919 % 3000)));
        tasks.push(tokio::spawn(async move {
            let result = match cancel_after {
                None => Some(publisher.publish(event).await),
                Some(after) => tokio::time::timeout(after, publisher.publish(event))
                    .await
                    .ok(),
            };
            (routed, id, result)
        }));
    }
    let (mut routed_ids, mut cancelled_routed) = (HashSet::new(), HashSet::new());
    let mut cancelled = 0;
    for task in tasks {
        let (routed, id, result) = task.await.unwrap();
        match result {
            None => {
                cancelled += 1;
                if routed {
                    cancelled_routed.insert(id.to_string());
                }
            }
            Some(result) => {
                assert_exact(routed, id, result);
                if routed {
                    routed_ids.insert(id.to_string());
                }
            }
        }
    }
    assert!(
        cancelled > 0,
        "no publish was cancelled: the test proves nothing"
    );
    eprintln!("cancelled {cancelled} of 3000");
    // The channel still works and proves outcomes.
    let last = Event::from_json("routed.last", json!({})).with_organization("org-1");
    routed_ids.insert(last.id().to_string());
    publisher.publish(last).await.unwrap();
    let unknown = Event::from_json("unrouted.last", json!({})).with_organization("org-1");
    let err = publisher.publish(unknown).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unroutable, "{err}");

    let in_queue: HashSet<String> = message_ids(fx.drain().await).into_iter().collect();
    let missing: Vec<_> = routed_ids.difference(&in_queue).collect();
    assert!(
        missing.is_empty(),
        "events reported routed are not queued: {missing:?}"
    );
    let unexpected: Vec<_> = in_queue
        .difference(&routed_ids)
        .filter(|id| !cancelled_routed.contains(*id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "queued events nobody published: {unexpected:?}"
    );
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_in_flight_twice_gets_two_exact_outcomes() {
    require_broker!();
    let fx = support::Fixture::new("duplicate", "routed.#").await;
    let publisher = one_channel_publisher(&fx).await;
    // Every event is published twice at once on one channel, as a retry does after an
    // attempt timed out with its confirm still due. Returns are matched by event id:
    // both copies of an unroutable event must be reported unroutable, both copies of a
    // routed one confirmed and queued.
    let mut tasks = Vec::new();
    for i in 0..600u32 {
        let routed = i % 2 == 0;
        let event = numbered_event(routed, i);
        for copy in [event.clone(), event] {
            let publisher = publisher.clone();
            tasks.push(tokio::spawn(async move {
                (routed, copy.id(), publisher.publish(copy).await)
            }));
        }
    }
    for task in tasks {
        let (routed, id, result) = task.await.unwrap();
        assert_exact(routed, id, result);
    }
    let mut copies: HashMap<String, usize> = HashMap::new();
    for id in message_ids(fx.drain().await) {
        *copies.entry(id).or_default() += 1;
    }
    assert_eq!(copies.len(), 300, "routed events in the queue");
    assert!(copies.values().all(|&n| n == 2), "each routed event twice");
    publisher.close().await;
    fx.cleanup().await;
}

/// An ordered sequence longer than the channel's `max_in_flight` is written in order,
/// its confirms coming back while the rest is written; a pre-encoded event is sent as
/// stored; the whole sequence reaches the queue in its order.
#[tokio::test]
async fn an_ordered_sequence_longer_than_max_in_flight_arrives_in_order() {
    require_broker!();
    let fx = support::Fixture::new("in_order", "#").await;
    let publisher = fitviz_events::EventPublisher::connect(fitviz_events::PublisherConfig {
        pool_size: 1,
        max_in_flight: 16,
        allow_unregistered: true,
        ..fx.config()
    })
    .await
    .unwrap();
    let mut encoded = Vec::new();
    for n in 0..200u32 {
        let event = fitviz_events::Event::from_json("sequence.test", json!({ "n": n }))
            .with_organization("org-1");
        encoded.push(publisher.encode(event).await.unwrap());
    }
    let results = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        publisher.publish_encoded_in_order(7, &encoded),
    )
    .await
    .expect("no deadlock on the channel's permits");
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    // One more through the delivery stack: the stored bytes, unchanged.
    let receipt = publisher.publish_encoded(encoded[0].clone()).await.unwrap();
    assert_eq!(receipt.event_id, encoded[0].id());
    let messages = fx.drain().await;
    assert_eq!(messages.len(), 201);
    for (i, (body, properties)) in messages.iter().enumerate() {
        let expected = &encoded[i % 200];
        assert_eq!(
            body.as_slice(),
            expected.body(),
            "message {i} out of order or changed"
        );
        assert_eq!(
            properties.message_id().as_ref().unwrap().as_str(),
            expected.id().to_string()
        );
    }
    publisher.close().await;
    fx.cleanup().await;
}
