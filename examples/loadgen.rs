//! Load generator: publishes N confirmed events against the real broker and prints
//! throughput and latency; its last line is one JSON object.
//!
//! ```sh
//! cargo run --release --example loadgen -- --events 100000 --concurrency 256
//! cargo run --release --example loadgen -- --events 100000 --batch 1000
//! cargo run --release --example loadgen -- --events 100000 --detached
//! # options: --events N --concurrency C [--batch B] [--detached] [--payload-bytes P]
//! #          [--url U] [--exchange X] [--pool-size S] [--max-in-flight M]
//! #          [--queue-type classic|quorum] [--max-length L] [--keep-queue]
//! #          [--confirmed-ids FILE]
//! ```
//!
//! For cluster checks (`scripts/cluster-loadgen-check.sh`): `--queue-type quorum` makes
//! the demo queue a quorum queue, `--max-length` changes its bound (1,000 events),
//! `--keep-queue` leaves it for an independent consumer (it still expires a minute
//! after its last use) and prints its name as `"queue"` in the summary, and
//! `--confirmed-ids FILE` writes the id of every confirmed event, one per line
//! (not with `--detached`).
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

mod common;

use common::{DemoQueue, shutdown_signal};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use fitviz_events::{Event, EventPublisher, PublisherConfig};
use hdrhistogram::Histogram;

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
    quorum: bool,
    max_length: i32,
    keep_queue: bool,
    confirmed_ids: Option<std::path::PathBuf>,
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
        quorum: false,
        max_length: 1_000,
        keep_queue: false,
        confirmed_ids: None,
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
            "--queue-type" => match value()?.as_str() {
                "quorum" => args.quorum = true,
                "classic" => args.quorum = false,
                other => return Err(format!("--queue-type: classic or quorum, got {other}")),
            },
            "--max-length" => {
                args.max_length =
                    i32::try_from(num(value()?)?).map_err(|e| format!("{flag}: {e}"))?
            }
            "--keep-queue" => args.keep_queue = true,
            "--confirmed-ids" => args.confirmed_ids = Some(value()?.into()),
            "--help" | "-h" => return Err("see the header of examples/loadgen.rs".into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.detached && args.confirmed_ids.is_some() {
        return Err("--confirmed-ids does not work with --detached".into());
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
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
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

    // loadgen's own queue, bound to `loadgen.#`; set up and cleaned up over short
    // connections of its own, so closing loadgen's connections during the run (what a
    // resilience test does) cannot break either.
    let queue = Arc::new(
        DemoQueue::new(
            format!("loadgen.{}.{}", config.exchange, std::process::id()),
            "loadgen.#",
            &config,
        )
        .with_connection_name(format!("{connection_name} set-up"))
        .with_max_length(args.max_length)
        .quorum(args.quorum),
    );
    if let Err(error) = queue.declare().await {
        publisher.close().await;
        let _ = queue.delete().await;
        return Err(error);
    }
    let renew = queue.renew_in_background();
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
    // Confirmed ids go to a writer task (memory stays bounded by the concurrency).
    let (ids_tx, ids_writer) = match &args.confirmed_ids {
        Some(path) => {
            let file = std::fs::File::create(path)?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<uuid::Uuid>();
            let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write;
                let mut out = std::io::BufWriter::new(file);
                while let Some(id) = rx.blocking_recv() {
                    writeln!(out, "{id}")?;
                }
                out.flush()
            });
            (Some(tx), Some(writer))
        }
        None => (None, None),
    };
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
        let ids = ids_tx.clone();
        let record = move |id: uuid::Uuid| {
            if let Some(ids) = &ids {
                let _ = ids.send(id);
            }
        };
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
                    results.iter().flatten().for_each(|r| record(r.event_id));
                    confirmed.fetch_add(ok, Ordering::Relaxed);
                    failed.fetch_add(n - ok, Ordering::Relaxed);
                } else if detached {
                    match publisher.spawn(event(&payload)).await {
                        Ok(()) => confirmed.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                } else {
                    match publisher.publish(event(&payload)).await {
                        Ok(receipt) => {
                            record(receipt.event_id);
                            confirmed.fetch_add(1, Ordering::Relaxed)
                        }
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
    drop(ids_tx);
    if let Some(writer) = ids_writer {
        writer.await??;
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
    if args.keep_queue {
        // Left for a consumer: renewed now, it expires a minute after its last use.
        let _ = queue.declare().await;
    } else if let Err(error) = queue.delete().await {
        eprintln!(
            "loadgen: could not delete queue {}: {error}; the broker removes it within a minute (x-expires)",
            queue.name()
        );
    }

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
            "queue": args.keep_queue.then(|| queue.name().to_owned()),
        })
    );
    Ok(())
}
