//! The archive stream on the machine's RabbitMQ, each number next to its baseline from
//! the same run:
//!
//! 1. **publishing with the archive on vs off**: two exchanges, each with one consumer
//!    quorum queue bound for every event, one of them also with `<exchange>.archive`;
//!    `publish_batch` of 10,000 events to each, alternating, five rounds (queues purged
//!    between rounds); the median rate of each side and their ratio (aim ≥ 0.7×);
//! 2. **replay read rate**: everything the archive holds (50,000 events), read from the
//!    first event with [`Replay`], against the rate it was published at;
//! 3. **republish rate**: 10,000 archived events republished to a queue, one at a time
//!    (each awaited, as `fitviz-events archive replay` does) and 64 at a time.
//!
//! ```sh
//! cargo bench --bench archive
//! ```

use std::time::{Duration, Instant};

use fitviz_events::{
    Event, EventPublisher, PublisherConfig,
    config::ArchivePatterns,
    replay::{Replay, ReplayTarget},
    topology::{ArchiveStream, ConsumerQueue, Topology, archive_name},
};
use futures_util::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions},
    types::FieldTable,
};

const BATCH: usize = 10_000;
const ROUNDS: usize = 5;

fn amqp_url() -> String {
    std::env::var("FITVIZ_EVENTS_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn event(n: usize) -> Event {
    Event::from_json(
        "bench.archive",
        serde_json::json!({"member_id": "mem-42", "n": n, "note": "x".repeat(160)}),
    )
    .with_organization(format!("org-{}", n % 16))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn config(exchange: &str, archive: ArchivePatterns) -> PublisherConfig {
    PublisherConfig {
        url: amqp_url().parse().expect("FITVIZ_EVENTS_URL"),
        exchange: exchange.to_owned(),
        connection_name: Some(format!("{exchange}.bench")),
        allow_unregistered: true,
        archive,
        ..Default::default()
    }
}

/// Events per second publishing `BATCH` events with `publish_batch`.
async fn publish_rate(publisher: &EventPublisher) -> f64 {
    let started = Instant::now();
    for chunk in 0..BATCH / 1000 {
        let events: Vec<Event> = (chunk * 1000..(chunk + 1) * 1000).map(event).collect();
        for result in publisher.publish_batch(events).await {
            result.expect("published");
        }
    }
    BATCH as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let off = format!("fvbench.archive.off.{run}");
    let on = format!("fvbench.archive.on.{run}");
    let fresh = format!("fvbench.archive.fresh.{run}");
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("the broker");
    let channel = connection.create_channel().await.unwrap();
    for (exchange, archive) in [(&off, false), (&on, true)] {
        let mut topology = Topology::new(exchange.as_str())
            .without_unrouted()
            .consumer_queue(ConsumerQueue::new(format!("{exchange}.q")).bind("#"));
        if archive {
            topology = topology.archive(
                ArchiveStream::default()
                    .max_bytes(2_000_000_000)
                    .segment_bytes(50_000_000),
            );
        }
        topology.declare(&connection).await.expect("declare");
    }
    let publisher_off = EventPublisher::connect(config(&off, ArchivePatterns::off()))
        .await
        .unwrap();
    let config_on = config(&on, ArchivePatterns::all());
    let publisher_on = EventPublisher::connect(config_on.clone()).await.unwrap();

    // 1. Archive on vs off, alternating rounds.
    let (mut rates_off, mut rates_on) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (first, second) = match round % 2 {
            0 => (&publisher_off, &publisher_on),
            _ => (&publisher_on, &publisher_off),
        };
        let a = publish_rate(first).await;
        let b = publish_rate(second).await;
        let (off_rate, on_rate) = if round % 2 == 0 { (a, b) } else { (b, a) };
        rates_off.push(off_rate);
        rates_on.push(on_rate);
        for exchange in [&off, &on] {
            channel
                .queue_purge(
                    format!("{exchange}.q").as_str().into(),
                    QueuePurgeOptions::default(),
                )
                .await
                .unwrap();
        }
        println!("round {round}: archive off {off_rate:.0}/s, on {on_rate:.0}/s");
    }
    let (m_off, m_on) = (median(rates_off), median(rates_on));
    println!(
        "archive: publishing with the archive on {m_on:.0}/s vs off {m_off:.0}/s (medians of {ROUNDS}): {:.2}x (aim >= 0.7x)",
        m_on / m_off
    );
    publisher_off.close().await;

    // 2. Read rate: the whole archive (ROUNDS x BATCH events).
    let started = Instant::now();
    let mut stream = Replay::new(&on).open(&config_on).await.unwrap();
    let mut read = 0usize;
    let mut kept = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        if kept.len() < BATCH {
            kept.push(event);
        }
        read += 1;
    }
    let read_secs = started.elapsed().as_secs_f64();
    println!(
        "archive: replay read {read} events in {read_secs:.2} s = {:.0}/s, finding the head included (publishing ran at {m_on:.0}/s)",
        read as f64 / read_secs
    );

    // 3. Republish rate, to a queue.
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
    let half = kept.len() / 2;
    let started = Instant::now();
    for event in &kept[..half] {
        event.republish(&publisher_on, &to).await.unwrap();
    }
    let one_at_a_time = half as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let results: Vec<_> = futures_util::stream::iter(&kept[half..])
        .map(|event| event.republish(&publisher_on, &to))
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok));
    let concurrent = (kept.len() - half) as f64 / started.elapsed().as_secs_f64();
    println!(
        "archive: republish to a queue, one at a time {one_at_a_time:.0}/s, 64 at a time {concurrent:.0}/s"
    );
    publisher_on.close().await;

    for queue in [
        format!("{off}.q"),
        format!("{off}.q.dlq"),
        format!("{on}.q"),
        format!("{on}.q.dlq"),
        archive_name(&on),
        fresh,
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [
        off.clone(),
        format!("{off}.q.dlx"),
        on.clone(),
        format!("{on}.q.dlx"),
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ =
        tokio::time::timeout(Duration::from_secs(2), connection.close(200, "done".into())).await;
}
