//! The transactional outbox on the machine's PostgreSQL and RabbitMQ: committed events
//! are relayed and rolled-back ones never, byte for byte; migrations from nothing and
//! from the previous version; a refused row goes dead while other keys flow; two relays
//! share the partitions without duplicates and keep order per key.
#![cfg(feature = "outbox-postgres")]

mod support;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use fitviz_events::{
    ErrorKind, Event, EventPublisher, PublisherConfig,
    events::WorkoutCreated,
    outbox::{Outbox, OutboxConfig, OutboxError, SCHEMA_VERSION},
    testing::Example,
};
use lapin::{
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};
use support::{
    Fixture,
    postgres::{client, drop_schema, pg_url, unique_schema},
};
use uuid::Uuid;

fn outbox_config(schema: &str) -> OutboxConfig {
    let mut config = OutboxConfig::new(pg_url());
    config.schema = schema.to_owned();
    config.poll_interval = Duration::from_millis(50);
    config
}

fn publisher_config(fixture: &Fixture) -> PublisherConfig {
    PublisherConfig {
        allow_unregistered: true,
        ..fixture.config()
    }
}

/// Waits until `done` holds, for at most `limit`.
async fn eventually(limit: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message_id(properties: &lapin::BasicProperties) -> Uuid {
    Uuid::parse_str(
        properties
            .message_id()
            .as_ref()
            .expect("message_id")
            .as_str(),
    )
    .unwrap()
}

#[tokio::test]
async fn committed_events_are_relayed_byte_for_byte_and_rolled_back_ones_never() {
    require_broker!();
    require_postgres!();
    let fixture = Fixture::new("outbox_commit", "#").await;
    let schema = unique_schema("commit");
    let publisher = EventPublisher::connect(publisher_config(&fixture))
        .await
        .unwrap();
    let outbox = Outbox::new(outbox_config(&schema), publisher.clone()).unwrap();
    let report = outbox.migrate().await.unwrap();
    assert_eq!(
        (report.from, report.to, report.applied),
        (0, SCHEMA_VERSION, vec![1, 2])
    );

    let mut db = client().await;
    db.batch_execute(&format!(
        "CREATE TABLE {schema}.workouts (id bigint PRIMARY KEY)"
    ))
    .await
    .unwrap();
    let mut committed = HashSet::new();
    let mut rolled_back = HashSet::new();
    for i in 0..24i64 {
        let tx = db.transaction().await.unwrap();
        tx.execute(
            &format!("INSERT INTO {schema}.workouts (id) VALUES ($1)"),
            &[&i],
        )
        .await
        .unwrap();
        let event =
            Event::new(WorkoutCreated::example()).with_organization(format!("org-{}", i % 3));
        let id = outbox.enqueue(&tx, event).await.unwrap();
        if i % 4 == 0 {
            tx.rollback().await.unwrap();
            rolled_back.insert(id);
        } else {
            outbox.commit(tx).await.unwrap();
            committed.insert(id);
        }
    }

    // Bad input fails before the insert, with publish's own error.
    let bad = Event::new(WorkoutCreated::example()).with_organization("o".repeat(300));
    let tx = db.transaction().await.unwrap();
    let error = outbox.enqueue(&tx, bad.clone()).await.unwrap_err();
    let OutboxError::Event(error) = error else {
        panic!("expected the event's error, got {error:?}");
    };
    let published = publisher.publish(bad.clone()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Validation);
    assert_eq!(error.to_string(), published.to_string());
    tx.commit().await.unwrap();

    // What is stored before the relay runs: the relay must send exactly these bytes.
    let stored: HashMap<Uuid, Vec<u8>> = db
        .query(&format!("SELECT event_id, body FROM {schema}.outbox"), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(stored.keys().copied().collect::<HashSet<_>>(), committed);

    let relay = outbox.start_relay();
    eventually(
        Duration::from_secs(30),
        "the committed events",
        async || fixture.queue_len().await as usize >= committed.len(),
    )
    .await;
    eventually(Duration::from_secs(10), "no pending rows", async || {
        outbox.status().await.unwrap().pending == 0
    })
    .await;
    let messages = fixture.drain().await;
    let received: HashSet<Uuid> = messages.iter().map(|(_, p)| message_id(p)).collect();
    assert_eq!(received, committed, "exactly the committed events");
    assert!(received.is_disjoint(&rolled_back));
    assert_eq!(
        messages.len(),
        committed.len(),
        "no duplicates without failures"
    );
    for (body, properties) in &messages {
        assert_eq!(
            body,
            &stored[&message_id(properties)],
            "the stored bytes, unchanged"
        );
        assert_eq!(
            properties.kind().as_ref().unwrap().as_str(),
            "workout.created"
        );
    }
    assert!(relay.relayed() >= committed.len() as u64);
    relay.stop().await;

    publisher.close().await;
    drop_schema(&schema).await;
    fixture.cleanup().await;
}

#[tokio::test]
async fn migrations_run_from_nothing_and_from_the_previous_version() {
    require_broker!();
    require_postgres!();
    let fixture = Fixture::new("outbox_migrate", "#").await;
    let publisher = EventPublisher::connect(publisher_config(&fixture))
        .await
        .unwrap();

    // From nothing, by two migrators at once: one applies, the other finds it done.
    let fresh = unique_schema("migrate_fresh");
    let a = Outbox::new(outbox_config(&fresh), publisher.clone()).unwrap();
    let b = Outbox::new(outbox_config(&fresh), publisher.clone()).unwrap();
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut applied = [ra.applied.clone(), rb.applied.clone()];
    applied.sort();
    assert_eq!(applied, [vec![], vec![1, 2]]);
    assert_eq!(
        a.migrate().await.unwrap().applied,
        Vec::<u32>::new(),
        "idempotent"
    );

    // From version 1: enqueue refuses until migrated; rows written at version 1 survive.
    let old = unique_schema("migrate_v1");
    let outbox = Outbox::new(outbox_config(&old), publisher.clone()).unwrap();
    let report = outbox.migrate_to(1).await.unwrap();
    assert_eq!((report.from, report.to), (0, 1));
    let mut db = client().await;
    let tx = db.transaction().await.unwrap();
    let event = Event::new(WorkoutCreated::example()).with_organization("org-1");
    let error = outbox.enqueue(&tx, event.clone()).await.unwrap_err();
    assert!(matches!(error, OutboxError::Schema(_)), "{error:?}");
    assert!(error.to_string().contains("outbox migrate"), "{error}");
    drop(tx);
    // A pending and a dead row, as version 1 wrote them.
    let encoded = publisher.encode(event).await.unwrap();
    let dead = publisher
        .encode(Event::new(WorkoutCreated::example()).with_organization("org-2"))
        .await
        .unwrap();
    for (row, state) in [(&encoded, 0i16), (&dead, 1)] {
        db.execute(
            &format!(
                "INSERT INTO {old}.outbox (event_id, event_type, ordering_key, partition, exchange, \
                 routing_key, properties, body, state) VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8)"
            ),
            &[
                &row.id(),
                &row.routing_key(),
                &"org",
                &row.exchange(),
                &row.routing_key(),
                &row.properties_bytes(),
                &row.body(),
                &state,
            ],
        )
        .await
        .unwrap();
    }
    let report = outbox.migrate().await.unwrap();
    assert_eq!((report.from, report.to, report.applied), (1, 2, vec![2]));
    let dead_rows = outbox.dead_rows(10).await.unwrap();
    assert_eq!(dead_rows.len(), 1);
    assert_eq!(dead_rows[0].event_id, dead.id());
    assert!(
        dead_rows[0].dead_at.is_some(),
        "migration 2 dates the dead rows"
    );
    let relay = outbox.start_relay();
    eventually(Duration::from_secs(20), "the version-1 row", async || {
        fixture.queue_len().await >= 1
    })
    .await;
    let messages = fixture.drain().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(message_id(&messages[0].1), encoded.id());
    assert_eq!(messages[0].0, encoded.body());
    relay.stop().await;

    publisher.close().await;
    drop_schema(&fresh).await;
    drop_schema(&old).await;
    fixture.cleanup().await;
}

/// An event of `org` carrying its place `n` in that organization's sequence.
fn numbered(event_type: &str, org: &str, n: u32) -> Event {
    Event::from_json(
        event_type.to_owned(),
        serde_json::json!({ "org": org, "n": n }),
    )
    .with_organization(org)
}

fn org_and_n(body: &[u8]) -> (String, u64) {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    (
        value["data"]["org"].as_str().unwrap().to_owned(),
        value["data"]["n"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn a_refused_row_goes_dead_after_max_attempts_while_other_keys_flow() {
    require_broker!();
    require_postgres!();
    let fixture = Fixture::new("outbox_poison", "outbox.#").await;
    // A queue that refuses everything routed to it: its messages are nacked.
    let full = format!("{}.full", fixture.name);
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args.insert("x-expires".into(), AMQPValue::LongInt(300_000));
    fixture
        .channel
        .queue_declare(full.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    fixture
        .channel
        .queue_bind(
            full.as_str().into(),
            fixture.exchange.as_str().into(),
            "poison.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let schema = unique_schema("poison");
    let publisher = EventPublisher::connect(publisher_config(&fixture))
        .await
        .unwrap();
    let mut config = outbox_config(&schema);
    config.max_attempts = 3;
    config.retry_base_delay = Duration::from_millis(1000);
    config.retry_max_delay = Duration::from_secs(10);
    let outbox = Outbox::new(config, publisher.clone()).unwrap();
    outbox.migrate().await.unwrap();
    let mut db = client().await;
    let tx = db.transaction().await.unwrap();
    outbox
        .enqueue(&tx, numbered("outbox.test", "org-a", 0))
        .await
        .unwrap();
    let poison = outbox
        .enqueue(&tx, numbered("poison.test", "org-a", 1))
        .await
        .unwrap();
    for n in 0..8 {
        outbox
            .enqueue(&tx, numbered("outbox.test", "org-b", n))
            .await
            .unwrap();
    }
    outbox.commit(tx).await.unwrap();

    let started = Instant::now();
    let relay = outbox.start_relay();
    // org-b and org-a's first event flow while the refused row backs off.
    eventually(
        Duration::from_secs(20),
        "the other key's events",
        async || fixture.queue_len().await >= 9,
    )
    .await;
    // An event of org-a enqueued now waits behind the refused row; org-b's still flow.
    let tx = db.transaction().await.unwrap();
    outbox
        .enqueue(&tx, numbered("outbox.test", "org-a", 2))
        .await
        .unwrap();
    outbox
        .enqueue(&tx, numbered("outbox.test", "org-b", 8))
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    eventually(
        Duration::from_secs(20),
        "the other key's later event",
        async || fixture.queue_len().await >= 10,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = outbox.status().await.unwrap();
    assert_eq!(status.dead, 0, "not dead yet: {status:?}");
    assert_eq!(
        status.pending, 2,
        "the refused row and the one behind it: {status:?}"
    );
    let early = fixture.drain().await;
    assert_eq!(early.len(), 10);
    assert!(
        early
            .iter()
            .all(|(body, _)| org_and_n(body) != ("org-a".to_owned(), 2))
    );

    eventually(Duration::from_secs(30), "the dead row", async || {
        outbox.status().await.unwrap().dead == 1
    })
    .await;
    // Three attempts, 1 s then 2 s apart: dead no sooner than 3 s after the start.
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    let dead = outbox.dead_rows(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, poison);
    assert_eq!(dead[0].attempts, 3);
    let last_error = dead[0].last_error.as_deref().unwrap();
    assert!(last_error.contains("nack"), "{last_error}");
    // The row behind it goes once it is dead.
    eventually(
        Duration::from_secs(10),
        "the row behind the dead one",
        async || fixture.queue_len().await >= 1,
    )
    .await;
    let late = fixture.drain().await;
    assert_eq!(late.len(), 1);
    assert_eq!(org_and_n(&late[0].0), ("org-a".to_owned(), 2));

    // Retried by hand, it is pending again (and refused again).
    assert_eq!(outbox.retry_dead(Some(&[poison])).await.unwrap(), 1);
    let status = outbox.status().await.unwrap();
    assert_eq!((status.pending, status.dead), (1, 0));
    relay.stop().await;

    publisher.close().await;
    drop_schema(&schema).await;
    let _ = fixture
        .channel
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await;
    fixture.cleanup().await;
}

#[tokio::test]
async fn two_relays_share_the_partitions_without_duplicates_and_keep_order_per_key() {
    require_broker!();
    require_postgres!();
    let fixture = Fixture::new("outbox_two", "#").await;
    let schema = unique_schema("two");
    let publisher = EventPublisher::connect(publisher_config(&fixture))
        .await
        .unwrap();
    let outbox = Outbox::new(outbox_config(&schema), publisher.clone()).unwrap();
    outbox.migrate().await.unwrap();
    let first = outbox.start_relay();
    let second = outbox.start_relay();

    const ORGS: u32 = 8;
    const PER_ORG: u32 = 250;
    let mut db = client().await;
    for batch in 0..PER_ORG / 10 {
        let tx = db.transaction().await.unwrap();
        for n in batch * 10..batch * 10 + 10 {
            for org in 0..ORGS {
                let event = numbered("outbox.test", &format!("org-{org}"), n);
                outbox.enqueue(&tx, event).await.unwrap();
            }
        }
        outbox.commit(tx).await.unwrap();
    }
    let total = (ORGS * PER_ORG) as usize;
    eventually(Duration::from_secs(60), "every event", async || {
        fixture.queue_len().await as usize >= total
    })
    .await;
    eventually(Duration::from_secs(10), "the relays to share", async || {
        !first.partitions().is_empty() && !second.partitions().is_empty()
    })
    .await;
    let (a, b) = (first.partitions(), second.partitions());
    assert!(a.iter().all(|p| !b.contains(p)), "disjoint: {a:?} {b:?}");
    assert_eq!(first.relayed() + second.relayed(), total as u64);

    let messages = fixture.drain().await;
    assert_eq!(messages.len(), total, "no duplicates");
    let mut last: HashMap<String, u64> = HashMap::new();
    for (body, _) in &messages {
        let (org, n) = org_and_n(body);
        if let Some(previous) = last.insert(org.clone(), n) {
            assert!(n > previous, "{org}: {n} after {previous}");
        }
    }
    assert_eq!(last.len(), ORGS as usize);
    first.stop().await;
    second.stop().await;
    assert_eq!(outbox.status().await.unwrap().pending, 0);

    publisher.close().await;
    drop_schema(&schema).await;
    fixture.cleanup().await;
}

#[tokio::test]
async fn detached_events_spill_to_the_outbox_when_the_queue_is_full_and_at_close() {
    require_broker!();
    require_postgres!();
    let fixture = Fixture::new("outbox_spill", "#").await;
    let schema = unique_schema("spill");
    let proxy = support::proxy::FaultProxy::start(&support::broker_addr()).await;
    // A publisher through the proxy, with a queue of 10 detached events.
    let publisher = EventPublisher::connect(PublisherConfig {
        url: proxy.amqp_url().parse().unwrap(),
        detached_capacity: 10,
        detached_overflow_wait: Duration::from_millis(10),
        confirm_timeout: Duration::from_secs(1),
        publish_timeout: Duration::from_secs(2),
        ..publisher_config(&fixture)
    })
    .await
    .unwrap();
    let outbox = Outbox::new(outbox_config(&schema), publisher.clone()).unwrap();
    outbox.migrate().await.unwrap();
    assert!(outbox.spill_detached());
    assert!(!outbox.spill_detached(), "one spill per publisher");

    // The broker goes silent (a black hole): detached events pile up in the queue, and
    // those it cannot hold go to the outbox instead of failing with QueueFull.
    proxy.black_hole();
    let mut ids = Vec::new();
    for n in 0..60 {
        let event = numbered("outbox.test", "org-s", n);
        ids.push(event.id());
        publisher
            .spawn(event)
            .await
            .expect("accepted: queued or spilled");
    }
    let spilled_at_once = outbox.status().await.unwrap().pending;
    assert!(spilled_at_once >= 40, "{spilled_at_once} spilled of 60");
    // Bad input is still refused, not spilled.
    let bad = Event::new(WorkoutCreated::example()).with_organization("o".repeat(300));
    assert_eq!(
        publisher.spawn(bad).await.unwrap_err().kind(),
        ErrorKind::Validation
    );

    // Closing with the broker still silent: what the queue held goes to the outbox too.
    let report = publisher.close_within(Duration::from_millis(500)).await;
    assert!(report.unsent.is_empty(), "{} unsent", report.unsent.len());
    assert_eq!(
        spilled_at_once + report.spilled + report.published,
        60,
        "{report:?}"
    );

    // The broker is back: a relay (with a publisher of its own) publishes them all.
    proxy.heal();
    let relay_publisher = EventPublisher::connect(publisher_config(&fixture))
        .await
        .unwrap();
    let relay_outbox = Outbox::new(outbox_config(&schema), relay_publisher.clone()).unwrap();
    let relay = relay_outbox.start_relay();
    eventually(Duration::from_secs(30), "every spawned event", async || {
        relay_outbox.status().await.unwrap().pending == 0
    })
    .await;
    relay.stop().await;
    let received: HashSet<Uuid> = fixture
        .drain()
        .await
        .iter()
        .map(|(_, p)| message_id(p))
        .collect();
    let missing: Vec<_> = ids.iter().filter(|id| !received.contains(id)).collect();
    assert!(missing.is_empty(), "{} of 60 lost", missing.len());

    relay_publisher.close().await;
    drop_schema(&schema).await;
    fixture.cleanup().await;
}

/// sqlx 0.8 transactions enqueue the same rows: relayed when committed, never when rolled
/// back.
#[cfg(feature = "sqlx")]
#[tokio::test]
async fn a_sqlx_transaction_enqueues_the_same_way() {
    require_broker!();
    require_postgres!();
    let fixture = Fixture::new("outbox_sqlx", "#").await;
    let schema = unique_schema("sqlx");
    let publisher = EventPublisher::connect(publisher_config(&fixture))
        .await
        .unwrap();
    let outbox = Outbox::new(outbox_config(&schema), publisher.clone()).unwrap();
    outbox.migrate().await.unwrap();
    let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let committed = outbox
        .enqueue_sqlx(&mut tx, numbered("outbox.test", "org-x", 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    outbox.notify();
    let mut tx = pool.begin().await.unwrap();
    let rolled_back = outbox
        .enqueue_sqlx(&mut tx, numbered("outbox.test", "org-x", 2))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // Bad input: publish's own error, before anything is written.
    let mut tx = pool.begin().await.unwrap();
    let bad = Event::new(WorkoutCreated::example()).with_organization("o".repeat(300));
    let error = outbox.enqueue_sqlx(&mut tx, bad).await.unwrap_err();
    assert!(
        matches!(&error, OutboxError::Event(e) if e.kind() == ErrorKind::Validation),
        "{error:?}"
    );
    tx.commit().await.unwrap();

    let relay = outbox.start_relay();
    eventually(Duration::from_secs(20), "the committed event", async || {
        outbox.status().await.unwrap().pending == 0 && fixture.queue_len().await >= 1
    })
    .await;
    relay.stop().await;
    let ids: Vec<Uuid> = fixture
        .drain()
        .await
        .iter()
        .map(|(_, p)| message_id(p))
        .collect();
    assert_eq!(ids, vec![committed]);
    assert_ne!(committed, rolled_back);

    pool.close().await;
    publisher.close().await;
    drop_schema(&schema).await;
    fixture.cleanup().await;
}
