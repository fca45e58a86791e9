//! The transactional outbox on the machine's PostgreSQL and RabbitMQ, three numbers, each
//! next to its baseline measured in the same run:
//!
//! 1. **enqueue cost**: transactions inserting a business row alone, then the same
//!    transactions also enqueueing its event, alternating rounds; the median
//!    per-transaction time of each side and the difference of the medians (target:
//!    ≤ 0.5 ms over the bare insert);
//! 2. **drain rate**: 100,000 rows over 16 organizations, pre-inserted, drained by one
//!    relay, against `publish_batch` of the same events (in batches of 10,000); the
//!    ratio (target ≥ 0.5×, aim 0.8×);
//! 3. **commit-to-confirm latency**: one event committed every millisecond (1,000/s)
//!    with `notify`, a consumer timing each from its commit call to its delivery; p50 and p99
//!    (target p99 ≤ 100 ms). Delivery comes after the confirm, so it bounds it.
//!
//! ```sh
//! cargo bench --features outbox-postgres --bench outbox
//! ```
//!
//! `FITVIZ_EVENTS_URL` and `FITVIZ_EVENTS_OUTBOX_TEST_URL` (default: the machine's
//! broker and `postgres://postgres@127.0.0.1:5432/test`); `OUTBOX_BENCH_ROWS` changes
//! the 100,000.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fitviz_events::{
    Event, EventPublisher, PublisherConfig,
    outbox::{Outbox, OutboxConfig},
};
use futures_util::StreamExt;
use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
    },
    types::FieldTable,
};
use uuid::Uuid;

fn amqp_url() -> String {
    std::env::var("FITVIZ_EVENTS_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn pg_url() -> String {
    std::env::var("FITVIZ_EVENTS_OUTBOX_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn event(org: u32, n: u64) -> Event {
    Event::from_json(
        "bench.outbox",
        serde_json::json!({"member_id": "mem-42", "n": n, "note": "x".repeat(160)}),
    )
    .with_organization(format!("org-{org}"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 * p) as usize).min(values.len() - 1)]
}

async fn pg() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is read.
    let rows: u64 = std::env::var("OUTBOX_BENCH_ROWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let name = format!("bench.outbox.{}", Uuid::now_v7().simple());
    let schema = format!("bench_outbox_{}", Uuid::now_v7().simple());
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect to the broker");
    let channel = connection.create_channel().await.unwrap();
    let exchange = format!("{name}.x");
    let queue = format!("{name}.q");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publisher = EventPublisher::connect(PublisherConfig {
        url: amqp_url().parse().unwrap(),
        exchange: exchange.clone(),
        allow_unregistered: true,
        connection_name: Some(format!("{name}.publisher")),
        ..Default::default()
    })
    .await
    .expect("connect the publisher");
    let mut config = OutboxConfig::new(pg_url());
    config.schema = schema.clone();
    let outbox = Outbox::new(config, publisher.clone()).unwrap();
    outbox.migrate().await.unwrap();
    let mut db = pg().await;
    db.batch_execute(&format!(
        "CREATE TABLE {schema}.workouts (id bigint PRIMARY KEY, note text)"
    ))
    .await
    .unwrap();

    // 1. The enqueue's cost inside a transaction, alternating rounds.
    let insert = format!("INSERT INTO {schema}.workouts (id, note) VALUES ($1, $2)");
    let (mut bare, mut with_event) = (Vec::new(), Vec::new());
    let mut id = 0i64;
    for round in 0..10 {
        for side in [round % 2 == 0, round % 2 != 0] {
            for _ in 0..200 {
                id += 1;
                let started = Instant::now();
                let tx = db.transaction().await.unwrap();
                tx.execute(&insert, &[&id, &"a workout"]).await.unwrap();
                if side {
                    outbox.enqueue(&tx, event(1, id as u64)).await.unwrap();
                }
                tx.commit().await.unwrap();
                let ms = started.elapsed().as_secs_f64() * 1e3;
                if side {
                    with_event.push(ms)
                } else {
                    bare.push(ms)
                }
            }
        }
    }
    let (bare_p50, with_p50) = (median(bare), median(with_event));
    println!(
        "outbox enqueue: transaction p50 {bare_p50:.3} ms bare, {with_p50:.3} ms with the enqueue: +{:.3} ms (target <= 0.5 ms)",
        with_p50 - bare_p50
    );
    db.batch_execute(&format!("DELETE FROM {schema}.outbox"))
        .await
        .unwrap();

    // 2. Drain rate: pre-inserted rows relayed, against publish_batch of the same events.
    let orgs = 16u32;
    let mut n = 0u64;
    while n < rows {
        let tx = db.transaction().await.unwrap();
        for _ in 0..1000.min(rows - n) {
            outbox
                .enqueue(&tx, event((n % u64::from(orgs)) as u32, n))
                .await
                .unwrap();
            n += 1;
        }
        tx.commit().await.unwrap();
    }
    let started = Instant::now();
    let relay = outbox.start_relay();
    loop {
        if outbox.status().await.unwrap().pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relay_secs = started.elapsed().as_secs_f64();
    relay.stop().await;
    channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    let events: Vec<Event> = (0..rows)
        .map(|n| event((n % u64::from(orgs)) as u32, n))
        .collect();
    let started = Instant::now();
    let mut failed = 0;
    for chunk in events.chunks(10_000) {
        failed += (publisher.publish_batch(chunk.iter().cloned()).await)
            .iter()
            .filter(|r| r.is_err())
            .count();
    }
    let batch_secs = started.elapsed().as_secs_f64();
    assert_eq!(failed, 0);
    channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    let (relay_rate, batch_rate) = (rows as f64 / relay_secs, rows as f64 / batch_secs);
    println!(
        "outbox drain: {rows} rows over {orgs} organizations in {relay_secs:.2} s = {relay_rate:.0}/s; \
         publish_batch of the same events {batch_rate:.0}/s: {:.2}x (target >= 0.5x)",
        relay_rate / batch_rate
    );

    // 3a. The baseline: `publish` at 1,000 events/s, from the call to the confirm.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..5_000u64 {
        tick.tick().await;
        let publisher = publisher.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            publisher.publish(event((n % 16) as u32, n)).await.unwrap();
            started.elapsed().as_secs_f64() * 1e3
        });
    }
    let mut direct: Vec<f64> = tasks.join_all().await;
    println!(
        "publish at 1,000/s (baseline): {} events, confirm p50 {:.2} ms, p99 {:.2} ms",
        direct.len(),
        percentile(&mut direct, 0.5),
        percentile(&mut direct, 0.99)
    );
    channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();

    // 3. Commit-to-confirm latency at 1,000 events/s, with notify, measured at delivery.
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let consumer_channel = connection.create_channel().await.unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let total = 5_000usize;
    let reader = {
        let committed = committed.clone();
        let latencies = latencies.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .unwrap()
                    .to_string();
                let at = committed.lock().unwrap().remove(&id);
                if let Some(at) = at {
                    let mut latencies = latencies.lock().unwrap();
                    latencies.push(at.elapsed().as_secs_f64() * 1e3);
                    if latencies.len() == total {
                        return;
                    }
                }
            }
        })
    };
    // The drain left 100,000 dead tuples behind: cleaned as autovacuum would.
    db.batch_execute(&format!("VACUUM {schema}.outbox"))
        .await
        .unwrap();
    let relay = outbox.start_relay();
    tokio::time::sleep(Duration::from_secs(2)).await; // owns its partitions
    // Eight writers, each committing one event every 8 ms: 1,000 events/s together. A
    // writer whose commit took longer catches up (burst), so the rate is the target's
    // unless the database cannot keep it.
    const WRITERS: usize = 8;
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let outbox = outbox.clone();
            let committed = committed.clone();
            tokio::spawn(async move {
                let mut db = pg().await;
                let mut tick = tokio::time::interval(Duration::from_millis(8));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for n in (writer..total).step_by(WRITERS) {
                    tick.tick().await;
                    let tx = db.transaction().await.unwrap();
                    let event = event((n % 16) as u32, n as u64);
                    let id = event.id().to_string();
                    outbox.enqueue(&tx, event).await.unwrap();
                    // Timed from the commit call: the relay may deliver it before the call returns.
                    committed.lock().unwrap().insert(id, Instant::now());
                    tx.commit().await.unwrap();
                    outbox.notify();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let _ = tokio::time::timeout(Duration::from_secs(60), reader).await;
    relay.stop().await;
    let mut latencies = latencies.lock().unwrap().clone();
    println!(
        "outbox commit-to-delivery at {rate:.0}/s ({WRITERS} writers, 8 ms apart each): {} events, p50 {:.2} ms, p99 {:.2} ms (target p99 <= 100 ms)",
        latencies.len(),
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99)
    );

    publisher.close().await;
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
}
