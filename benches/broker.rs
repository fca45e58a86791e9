//! Confirmed-publish throughput against the real broker, each case next to a raw
//! lapin baseline measured in the same run: same envelope (the raw loop builds and
//! encodes each event and its properties by hand, as a hand-written loop must), same
//! exchange and durable queue, same channels and number of confirms in flight.
//! At the end it prints, for every case, raw lapin and the stack measured in
//! alternating rounds: the medians of each side, the median of the per-round ratios,
//! and the CPU time the process spent per event on each side.
//!
//! ```sh
//! cargo bench --bench broker
//! ```

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput};
use fitviz_events::{Event, EventPublisher, PublisherConfig};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::*,
    types::{AMQPValue, FieldTable, LongString},
};

fn url() -> String {
    std::env::var("FITVIZ_EVENTS_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}
const CHANNELS: usize = 4;

fn event() -> Event {
    Event::from_json(
        "bench.event",
        serde_json::json!({"member_id": "mem-42", "workout_id": "wo-1001", "note": "x".repeat(160)}),
    )
    .with_organization("org-42")
    .with_source("bench")
}

/// A new event's body and properties, built by hand as the transport builds them:
/// what a hand-written lapin loop does for every message it publishes.
fn raw_message() -> (Vec<u8>, BasicProperties) {
    let event = event();
    let mut headers = FieldTable::default();
    headers.insert(
        "organization_id".into(),
        AMQPValue::LongString(LongString::from("org-42")),
    );
    headers.insert("schema_version".into(), AMQPValue::LongLongInt(1));
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.id().to_string().into())
        .with_timestamp(event.timestamp().timestamp() as u64)
        .with_type("bench.event".into())
        .with_app_id("bench".into())
        .with_headers(headers);
    (event.to_json_bytes().unwrap(), props)
}

struct Bench {
    exchange: String,
    queue: String,
    admin: Channel,
    _connection: Connection,
    raw_channels: Vec<Channel>,
    publisher: EventPublisher,
}

impl Bench {
    async fn new() -> Self {
        let exchange = format!("fitviz.bench.{}", std::process::id());
        let queue = format!("{exchange}.q");
        let connection = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .unwrap();
        let admin = connection.create_channel().await.unwrap();
        admin
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
        admin
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
        admin
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut raw_channels = Vec::new();
        for _ in 0..CHANNELS {
            let ch = connection.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            raw_channels.push(ch);
        }
        let config = PublisherConfig {
            url: url().parse().unwrap(),
            exchange: exchange.clone(),
            pool_size: CHANNELS,
            allow_unregistered: true,
            ..Default::default()
        };
        let publisher = EventPublisher::connect(config).await.unwrap();
        Self {
            exchange,
            queue,
            admin,
            _connection: connection,
            raw_channels,
            publisher,
        }
    }

    async fn purge(&self) {
        self.admin
            .queue_purge(self.queue.as_str().into(), QueuePurgeOptions::default())
            .await
            .unwrap();
    }

    /// Raw lapin: `concurrency` tasks, each publishing and awaiting its confirm in turn.
    async fn raw(&self, events: u64, concurrency: usize) -> Duration {
        let started = Instant::now();
        let per_task = events.div_ceil(concurrency as u64);
        let mut tasks = Vec::new();
        for t in 0..concurrency {
            let ch = self.raw_channels[t % CHANNELS].clone();
            let exchange = self.exchange.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_task {
                    let (body, props) = raw_message();
                    let confirm = ch
                        .basic_publish(
                            exchange.as_str().into(),
                            "bench.event".into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &body,
                            props,
                        )
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                    assert!(matches!(confirm, Confirmation::Ack(None)));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        started.elapsed()
    }

    async fn stack(&self, events: u64, concurrency: usize) -> Duration {
        let started = Instant::now();
        let per_task = events.div_ceil(concurrency as u64);
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let publisher = self.publisher.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_task {
                    publisher.publish(event()).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        started.elapsed()
    }

    async fn raw_batch(&self, size: usize) -> Duration {
        let started = Instant::now();
        let futures = (0..size).map(|i| {
            let ch = &self.raw_channels[i % CHANNELS];
            async move {
                let (body, props) = raw_message();
                ch.basic_publish(
                    self.exchange.as_str().into(),
                    "bench.event".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap()
            }
        });
        let results = futures_util::future::join_all(futures).await;
        assert!(results.iter().all(|c| matches!(c, Confirmation::Ack(None))));
        started.elapsed()
    }

    async fn stack_batch(&self, size: usize) -> Duration {
        let started = Instant::now();
        let results = self
            .publisher
            .publish_batch((0..size).map(|_| event()))
            .await;
        assert!(results.iter().all(Result::is_ok));
        started.elapsed()
    }

    async fn cleanup(&self) {
        self.publisher.close().await;
        let _ = self
            .admin
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .admin
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// CPU time used so far by every thread of this process (lapin's I/O threads
/// included), from `/proc/self/task/*/schedstat`; `None` where that does not exist.
fn process_cpu() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// The medians of one side: wall seconds and process CPU seconds per unit.
#[derive(Clone, Copy)]
struct Side {
    wall: f64,
    cpu: Option<f64>,
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// One case of the summary: the medians of each side, and the median of the ratios
/// of the rounds (each round measures raw lapin, then the stack, back to back, so a
/// ratio compares two runs that saw the same machine and broker state).
struct Summary {
    case: String,
    rounds: usize,
    raw: Side,
    stack: Side,
    paired_ratio: f64,
}

/// Runs `measure` (which returns the units it measured and their wall time) for raw
/// lapin and for the stack in turn, `rounds` times each.
async fn alternating<F, Fut>(bench: &Arc<Bench>, case: String, rounds: usize, measure: F) -> Summary
where
    F: Fn(Arc<Bench>, bool) -> Fut,
    Fut: std::future::Future<Output = (u64, Duration)>,
{
    let mut wall = [Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, stack) in [false, true].into_iter().enumerate() {
            let cpu_before = process_cpu();
            let (units, took) = measure(bench.clone(), stack).await;
            if let (Some(before), Some(after)) = (cpu_before, process_cpu()) {
                cpu[i].push((after - before).as_secs_f64() / units as f64);
            }
            wall[i].push(took.as_secs_f64() / units as f64);
        }
    }
    let paired_ratio = median(wall[0].iter().zip(&wall[1]).map(|(r, s)| r / s).collect());
    let mut side = |i: usize| Side {
        wall: median(std::mem::take(&mut wall[i])),
        cpu: (cpu[i].len() == rounds).then(|| median(std::mem::take(&mut cpu[i]))),
    };
    Summary {
        case,
        rounds,
        raw: side(0),
        stack: side(1),
        paired_ratio,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let bench = Arc::new(rt.block_on(Bench::new()));
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));

    let mut summaries = Vec::new();
    for concurrency in [1usize, 16, 256] {
        let mut group = c.benchmark_group(format!("confirmed_publish/c{concurrency}"));
        group.throughput(Throughput::Elements(1));
        for (stack, name) in [(false, "raw_lapin"), (true, "fitviz_stack")] {
            let b2 = bench.clone();
            group.bench_function(BenchmarkId::new(name, concurrency), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let bench = b2.clone();
                    async move {
                        let events = iters.max(concurrency as u64);
                        let took = if stack {
                            bench.stack(events, concurrency).await
                        } else {
                            bench.raw(events, concurrency).await
                        };
                        bench.purge().await;
                        took.mul_f64(iters as f64 / events as f64)
                    }
                });
            });
        }
        group.finish();
        // The summary: raw and stack alternate, five rounds each, median per side.
        let events = (1_000 * concurrency as u64).clamp(2_000, 40_000);
        let case = format!("concurrency {concurrency}");
        let summary = rt.block_on(alternating(&bench, case, 5, |bench, stack| async move {
            let took = if stack {
                bench.stack(events, concurrency).await
            } else {
                bench.raw(events, concurrency).await
            };
            bench.purge().await;
            (events, took)
        }));
        summaries.push(summary);
    }

    let size = 1000;
    let mut group = c.benchmark_group("publish_batch");
    group.throughput(Throughput::Elements(size as u64));
    for (stack, name) in [(false, "raw_lapin"), (true, "fitviz_stack")] {
        let b2 = bench.clone();
        group.bench_function(BenchmarkId::new(name, size), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let bench = b2.clone();
                async move {
                    let mut took = Duration::ZERO;
                    for _ in 0..iters {
                        took += if stack {
                            bench.stack_batch(size).await
                        } else {
                            bench.raw_batch(size).await
                        };
                        // Untimed: every batch starts on an empty queue.
                        bench.purge().await;
                    }
                    took
                }
            });
        });
    }
    group.finish();
    let case = format!("batch of {size}");
    let summary = rt.block_on(alternating(&bench, case, 15, |bench, stack| async move {
        let mut took = Duration::ZERO;
        for _ in 0..3 {
            took += if stack {
                bench.stack_batch(size).await
            } else {
                bench.raw_batch(size).await
            };
            bench.purge().await;
        }
        (3 * size as u64, took)
    }));
    summaries.push(summary);

    println!(
        "\nraw lapin and the stack alternate, round by round; medians per side, and the median \
         of the per-round ratios (CPU: all threads of this process, per event)\n\
         {:<18} {:>6} {:>13} {:>14} {:>10} {:>12} {:>11} {:>12}",
        "case",
        "rounds",
        "raw events/s",
        "stack events/s",
        "stack/raw",
        "paired ratio",
        "raw CPU µs",
        "stack CPU µs"
    );
    let micros = |cpu: Option<f64>| cpu.map_or("-".to_owned(), |c| format!("{:.1}", c * 1e6));
    for s in summaries {
        println!(
            "{:<18} {:>6} {:>13.0} {:>14.0} {:>10.3} {:>12.3} {:>11} {:>12}",
            s.case,
            s.rounds,
            1.0 / s.raw.wall,
            1.0 / s.stack.wall,
            s.raw.wall / s.stack.wall,
            s.paired_ratio,
            micros(s.raw.cpu),
            micros(s.stack.cpu),
        );
    }
    rt.block_on(bench.cleanup());
}
