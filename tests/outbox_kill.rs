//! The outbox's relay survives `kill -9`: 8 writers commit 2,500 transactions each (a
//! business row and an outbox row; every 10th rolled back) while a relay *process*
//! (`fitviz-events outbox relay`) is killed with SIGKILL five times at random moments
//! and restarted, cut off from PostgreSQL once (`pg_terminate_backend` of its own
//! connections) and from the broker once (the fault proxy closes its connection). After
//! draining: every committed event is in the queue at least once, no rolled-back one
//! ever, duplicates are byte-identical and bounded by the batches in flight, order per
//! key holds (first occurrences), no row is pending.
//!
//! Ignored by default: it kills processes and takes the machine for a minute, so it runs
//! alone — `scripts/test.sh` runs it serially:
//! `cargo test --all-features --test outbox_kill -- --ignored --test-threads=1`.
#![cfg(feature = "outbox-postgres")]

mod support;

use std::{
    collections::{HashMap, HashSet},
    process::Stdio,
    time::{Duration, Instant},
};

use fitviz_events::{
    Event, EventPublisher, PublisherConfig,
    outbox::{Outbox, OutboxConfig, lock_connection_name, pool_application_name},
    testing::MemorySink,
};
use support::{
    Fixture, broker_addr,
    postgres::{client, drop_schema, pg_url, terminate_backends, unique_schema},
    proxy::FaultProxy,
};
use tokio::process::{Child, Command};
use uuid::Uuid;

const WRITERS: u32 = 8;
const TRANSACTIONS: u32 = 2_500;
const BATCH: usize = 100;
const PARTITIONS: u32 = 16;

fn spawn_relay(fixture: &Fixture, proxy: &FaultProxy, schema: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fitviz-events"))
        .args(["outbox", "relay"])
        .env("FITVIZ_EVENTS_URL", proxy.amqp_url())
        .env("FITVIZ_EVENTS_EXCHANGE", &fixture.exchange)
        .env(
            "FITVIZ_EVENTS_CONNECTION_NAME",
            format!("{}.relay", fixture.name),
        )
        .env("FITVIZ_EVENTS_UNROUTABLE", "error")
        .env("FITVIZ_EVENTS_OUTBOX_URL", pg_url())
        .env("FITVIZ_EVENTS_OUTBOX_SCHEMA", schema)
        .env("FITVIZ_EVENTS_OUTBOX_BATCH_SIZE", BATCH.to_string())
        .env("FITVIZ_EVENTS_OUTBOX_POLL_INTERVAL_MS", "20")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the relay process")
}

/// Waits until a backend named `name` is connected.
async fn connected(name: &str) {
    let db = client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let count: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        if count > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no connection named {name:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn numbered(writer: u32, n: u32) -> Event {
    Event::from_json(
        "outbox.kill".to_owned(),
        serde_json::json!({ "writer": writer, "n": n }),
    )
    .with_organization(format!("writer-{writer}"))
}

#[tokio::test]
#[ignore = "kills processes: run alone (scripts/test.sh)"]
async fn a_relay_killed_again_and_again_loses_nothing_and_keeps_order() {
    require_broker!();
    require_postgres!();
    let fixture = Fixture::new("outbox_kill", "#").await;
    let schema = unique_schema("kill");
    // The writers' side: encodes only (the relay process publishes).
    let encoder = EventPublisher::builder(PublisherConfig {
        allow_unregistered: true,
        ..fixture.config()
    })
    .build_with_transport(MemorySink::new());
    let mut config = OutboxConfig::new(pg_url());
    config.schema = schema.clone();
    config.partitions = PARTITIONS;
    let outbox = Outbox::new(config, encoder).unwrap();
    outbox.migrate().await.unwrap();
    client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {schema}.workouts (writer integer, n integer, PRIMARY KEY (writer, n))"
        ))
        .await
        .unwrap();

    let proxy = FaultProxy::start(&broker_addr()).await;
    let mut relay = spawn_relay(&fixture, &proxy, &schema);
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let outbox = outbox.clone();
            let schema = schema.clone();
            tokio::spawn(async move {
                let mut db = client().await;
                let insert = format!("INSERT INTO {schema}.workouts (writer, n) VALUES ($1, $2)");
                let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
                for n in 0..TRANSACTIONS {
                    let tx = db.transaction().await.unwrap();
                    tx.execute(&insert, &[&(writer as i32), &(n as i32)])
                        .await
                        .unwrap();
                    let id = outbox.enqueue(&tx, numbered(writer, n)).await.unwrap();
                    if n % 10 == 9 {
                        tx.rollback().await.unwrap();
                        rolled_back.push(id);
                    } else {
                        tx.commit().await.unwrap();
                        committed.push(id);
                    }
                }
                (committed, rolled_back)
            })
        })
        .collect();

    // Five kills at random moments while the writers write, each followed by a restart.
    for kill in 0..5 {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1500))).await;
        relay.start_kill().expect("SIGKILL the relay");
        let status = relay.wait().await.unwrap();
        assert!(!status.success(), "kill {kill}: {status:?}");
        relay = spawn_relay(&fixture, &proxy, &schema);
    }
    // Cut off from PostgreSQL: its lock connection and its pool, by their names, once
    // the last one started has them.
    tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1000))).await;
    connected(&lock_connection_name(&schema)).await;
    let cut = terminate_backends(&lock_connection_name(&schema)).await
        + terminate_backends(&pool_application_name(&schema)).await;
    assert!(cut >= 1, "the relay had database connections to cut");
    // Cut off from the broker.
    tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1000))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.connections() == 0 {
        assert!(
            Instant::now() < deadline,
            "the relay never reconnected to the broker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.cut_all();

    let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
    for writer in writers {
        let (c, r) = writer.await.unwrap();
        committed.extend(c);
        rolled_back.extend(r);
    }
    let wrote = started.elapsed();
    assert_eq!(committed.len(), (WRITERS * TRANSACTIONS * 9 / 10) as usize);

    // Drained: no row pending.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let status = outbox.status().await.unwrap();
        if status.pending == 0 {
            assert_eq!(status.dead, 0, "{status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still pending after 180 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained = started.elapsed();
    // A clean stop (SIGTERM) after the drain.
    let pid = relay.id().expect("relay pid");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(30), relay.wait()).await;

    let messages = fixture.drain().await;
    let mut bodies: HashMap<Uuid, Vec<u8>> = HashMap::new();
    let mut duplicates = 0usize;
    let mut next: HashMap<u64, u64> = HashMap::new();
    for (body, properties) in &messages {
        let id = Uuid::parse_str(properties.message_id().as_ref().unwrap().as_str()).unwrap();
        match bodies.get(&id) {
            Some(first) => {
                duplicates += 1;
                assert_eq!(first, body, "a duplicate is byte-identical");
                continue;
            }
            None => {
                bodies.insert(id, body.clone());
            }
        }
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        let (writer, n) = (
            value["data"]["writer"].as_u64().unwrap(),
            value["data"]["n"].as_u64().unwrap(),
        );
        // First occurrences of a key come in its order.
        let last = next.entry(writer).or_insert(0);
        assert!(n >= *last, "writer {writer}: {n} after {}", *last);
        *last = n + 1;
    }
    let received: HashSet<Uuid> = bodies.keys().copied().collect();
    let missing = committed.iter().filter(|id| !received.contains(id)).count();
    assert_eq!(missing, 0, "committed events missing");
    let ghosts = rolled_back
        .iter()
        .filter(|id| received.contains(id))
        .count();
    assert_eq!(ghosts, 0, "events of rolled-back transactions published");
    assert_eq!(received.len(), committed.len());
    // Each interruption (5 kills, the database cut, the broker cut) can repeat at most
    // the batches in flight: one per partition.
    let bound = 7 * PARTITIONS as usize * BATCH;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than {bound}"
    );
    eprintln!(
        "outbox kill -9: {} committed, {} rolled back, {} messages ({duplicates} duplicates); \
         written in {wrote:?}, drained after {drained:?}",
        committed.len(),
        rolled_back.len(),
        messages.len(),
    );

    drop_schema(&schema).await;
    fixture.cleanup().await;
}
