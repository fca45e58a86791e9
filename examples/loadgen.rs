//! Load generator: publishes N confirmed events against the real broker and prints
//! throughput and latency; its last line is one JSON object.
//!
//! ```sh
//! cargo run --release --example loadgen -- --events 100000 --concurrency 256
//! cargo run --release --example loadgen -- --events 100000 --batch 1000
//! cargo run --release --example loadgen -- --events 100000 --detached
//! # options: --events N --concurrency C [--batch B] [--detached] [--payload-bytes P]
//! #          [--url U] [--exchange X] [--pool-size S] [--max-in-flight M]
//! ```
//!
//! It declares a durable queue bound to the exchange (so events are routable) and
//! purges and deletes it afterwards. Latencies go into a fixed-size histogram, so
//! memory is bounded by the concurrency, not by N.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use fitviz_events::{DetachedConfig, Event, EventPublisher, Overflow, PublisherConfig};
use hdrhistogram::Histogram;
use lapin::{
    Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions},
    types::FieldTable,
};

struct Args {
    events: u64,
    concurrency: usize,
    batch: Option<usize>,
    detached: bool,
    payload_bytes: usize,
    url: Option<String>,
    exchange: Option<String>,
    pool_size: Option<usize>,
    max_in_flight: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        events: 100_000,
        concurrency: 256,
        batch: None,
        detached: false,
        payload_bytes: 200,
        url: None,
        exchange: None,
        pool_size: None,
        max_in_flight: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--events" => args.events = num(value()?)?,
            "--concurrency" => args.concurrency = num(value()?)?.max(1) as usize,
            "--batch" => args.batch = Some(num(value()?)?.max(1) as usize),
            "--detached" => args.detached = true,
            "--payload-bytes" => args.payload_bytes = num(value()?)? as usize,
            "--url" => args.url = Some(value()?),
            "--exchange" => args.exchange = Some(value()?),
            "--pool-size" => args.pool_size = Some(num(value()?)? as usize),
            "--max-in-flight" => args.max_in_flight = Some(num(value()?)? as usize),
            "--help" | "-h" => return Err("see the header of examples/loadgen.rs".into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn event(payload: &str) -> Event {
    Event::from_json(
        "loadgen.event",
        serde_json::json!({ "member_id": "mem-42", "note": payload }),
    )
    .with_organization("org-load")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let mut config = PublisherConfig {
        allow_unregistered: true,
        ..Default::default()
    };
    if let Some(url) = &args.url {
        config.url = url.parse()?;
    } else if let Ok(url) = std::env::var("FITVIZ_EVENTS_URL") {
        config.url = url.parse()?;
    }
    if let Some(exchange) = &args.exchange {
        config.exchange = exchange.clone();
    }
    if let Some(size) = args.pool_size {
        config.pool_size = size;
    }
    if let Some(m) = args.max_in_flight {
        config.max_in_flight = m;
    }
    config.validate()?;
    let publisher = EventPublisher::builder(config.clone())
        .detached(
            DetachedConfig::default()
                .capacity(args.concurrency.max(1) * 4)
                .concurrency(args.concurrency)
                .overflow(Overflow::Wait(Duration::from_secs(30))),
        )
        .connect()
        .await?;

    let connection =
        Connection::connect(config.url.expose_secret(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = format!("loadgen.{}", config.exchange.as_str());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            config.exchange.as_str().into(),
            "loadgen.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let payload = "x".repeat(args.payload_bytes);
    let progress = indicatif::ProgressBar::new(args.events);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let next = Arc::new(AtomicU64::new(0));
    let confirmed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();

    let mut workers = Vec::new();
    let workers_n = if args.batch.is_some() {
        1
    } else {
        args.concurrency
    };
    for _ in 0..workers_n {
        let (publisher, next, confirmed, failed, progress, payload) = (
            publisher.clone(),
            next.clone(),
            confirmed.clone(),
            failed.clone(),
            progress.clone(),
            payload.clone(),
        );
        let (events, batch, detached) = (args.events, args.batch, args.detached);
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            loop {
                let size = batch.unwrap_or(1) as u64;
                let from = next.fetch_add(size, Ordering::Relaxed);
                if from >= events {
                    break;
                }
                let n = size.min(events - from);
                let t = Instant::now();
                if batch.is_some() {
                    let results = publisher
                        .publish_batch((0..n).map(|_| event(&payload)))
                        .await;
                    let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
                    confirmed.fetch_add(ok, Ordering::Relaxed);
                    failed.fetch_add(n - ok, Ordering::Relaxed);
                } else if detached {
                    match publisher.spawn(event(&payload)).await {
                        Ok(()) => confirmed.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                } else {
                    match publisher.publish(event(&payload)).await {
                        Ok(_) => confirmed.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
                let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                progress.inc(n);
            }
            hist
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        hist.add(worker.await?)?;
    }
    let report = publisher.close().await;
    let secs = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let (confirmed, failed) = if args.detached {
        (
            report.published,
            failed.load(Ordering::Relaxed) + report.failed + report.unsent.len() as u64,
        )
    } else {
        (
            confirmed.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        )
    };

    channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await?;
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    connection.close(200, "loadgen done".into()).await?;

    println!(
        "{}",
        serde_json::json!({
            "events": args.events,
            "confirmed": confirmed,
            "failed": failed,
            "secs": (secs * 1000.0).round() / 1000.0,
            "events_per_s": (confirmed as f64 / secs).round(),
            "p50_us": hist.value_at_quantile(0.50),
            "p99_us": hist.value_at_quantile(0.99),
            "max_us": hist.max(),
        })
    );
    Ok(())
}
