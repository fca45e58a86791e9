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
//! It declares a durable queue `loadgen.<exchange>.<pid>` bound to `loadgen.#` (so the
//! events are routable), holding at most 1,000 events (`x-max-length`), and deletes it
//! afterwards; should loadgen be killed, the broker removes it a minute later
//! (`x-expires`, renewed during the run). Its connections are named `fitviz-loadgen-<pid>`
//! (the publisher's) and `fitviz-loadgen-<pid> set-up` (queue set-up and clean-up, one
//! short connection each) in `rabbitmqctl list_connections name client_properties`.
//!
//! Once the run has started, the JSON summary is always printed, also when the broker
//! closed loadgen's connections during the run, and on SIGTERM or Ctrl-C (which stop
//! sending, flush with `close()` and clean up). Latencies go into a fixed-size
//! histogram, so memory is bounded by the concurrency, not by N.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use fitviz_events::{Event, EventPublisher, PublisherConfig};
use hdrhistogram::Histogram;
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
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

/// loadgen's own queue. Each operation opens a short connection of its own: closing
/// loadgen's connections during the run (what a resilience test does) cannot break the
/// set-up or the clean-up, which are not what is measured.
struct LoadQueue {
    name: String,
    url: String,
    exchange: String,
    connection_name: String,
}

impl LoadQueue {
    /// How often [`declare`](Self::declare) runs again to renew the `x-expires` lease
    /// (publishing to a queue does not count as using it).
    const RENEW_EVERY: Duration = Duration::from_secs(20);
    /// Bound on each set-up or clean-up operation.
    const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

    async fn on_channel<T>(
        &self,
        op: impl AsyncFnOnce(&Channel) -> Result<T, lapin::Error>,
    ) -> Result<T, Box<dyn std::error::Error>> {
        let run = async {
            let properties = ConnectionProperties::default()
                .with_connection_name(self.connection_name.as_str().into());
            let connection = Connection::connect(&self.url, properties).await?;
            let result = match connection.create_channel().await {
                Ok(channel) => {
                    let result = op(&channel).await;
                    let _ = channel.close(200, "done".into()).await;
                    result
                }
                Err(e) => Err(e),
            };
            let _ = connection.close(200, "done".into()).await;
            result
        };
        Ok(tokio::time::timeout(Self::OPERATION_TIMEOUT, run).await??)
    }

    /// Declares the queue and binds it to `loadgen.#`; run again, renews its lease.
    async fn declare(&self) -> Result<(), Box<dyn std::error::Error>> {
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(1_000));
        args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.on_channel(async |channel| {
            channel
                .queue_declare(self.name.as_str().into(), options, args)
                .await?;
            channel
                .queue_bind(
                    self.name.as_str().into(),
                    self.exchange.as_str().into(),
                    "loadgen.#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })
        .await
    }

    /// Deletes the queue, trying twice; on failure, says so on stderr (the broker
    /// removes the queue a minute later anyway).
    async fn delete(&self) {
        let mut last_error = None;
        for _ in 0..2 {
            let result = self
                .on_channel(async |channel| {
                    channel
                        .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
                        .await
                })
                .await;
            match result {
                Ok(_) => return,
                Err(error) => last_error = Some(error),
            }
        }
        if let Some(error) = last_error {
            eprintln!(
                "loadgen: could not delete queue {}: {error}; the broker removes it within a minute (x-expires)",
                self.name
            );
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let connection_name = format!("fitviz-loadgen-{}", std::process::id());
    let mut config = PublisherConfig {
        allow_unregistered: true,
        connection_name: Some(connection_name.clone()),
        detached_capacity: args.concurrency.max(1) * 4,
        detached_concurrency: args.concurrency.max(1),
        detached_overflow_wait: Duration::from_secs(30),
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
    let publisher = EventPublisher::connect(config.clone()).await?;

    let queue = Arc::new(LoadQueue {
        name: format!("loadgen.{}.{}", config.exchange, std::process::id()),
        url: config.url.expose_secret().to_owned(),
        exchange: config.exchange.clone(),
        connection_name: format!("{connection_name} set-up"),
    });
    if let Err(error) = queue.declare().await {
        publisher.close().await;
        queue.delete().await;
        return Err(error);
    }
    let renew = tokio::spawn({
        let queue = queue.clone();
        async move {
            loop {
                tokio::time::sleep(LoadQueue::RENEW_EVERY).await;
                if let Err(error) = queue.declare().await {
                    eprintln!("loadgen: could not renew queue {}: {error}", queue.name);
                }
            }
        }
    });
    // SIGTERM or Ctrl-C: stop sending; what was sent is flushed and reported.
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            stop.store(true, Ordering::Relaxed);
        }
    });

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
        let (publisher, next, confirmed, failed, progress, payload, stop) = (
            publisher.clone(),
            next.clone(),
            confirmed.clone(),
            failed.clone(),
            progress.clone(),
            payload.clone(),
            stop.clone(),
        );
        let (events, batch, detached) = (args.events, args.batch, args.detached);
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
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
        match worker.await {
            Ok(worker_hist) => hist.add(worker_hist)?,
            Err(error) => eprintln!("loadgen: a worker failed: {error}"),
        }
    }
    let report = publisher.close().await;
    let secs = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    stopper.abort();
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

    renew.abort();
    queue.delete().await;

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
