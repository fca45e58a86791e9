//! Isolation and broker health against the real broker: a full queue refuses its own
//! events only, a routine connection close fails no caller, and a lost confirm is
//! reported as an unknown outcome even when the breaker opens afterwards.

mod support;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use fitviz_events::testing::Example;
use fitviz_events::{
    ErrorKind, Event, EventPublisher, PublisherConfig,
    circuit_breaker::BreakerState,
    events::{WorkoutCreated, WorkoutDeleted},
};
use lapin::{
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};
use support::{Fixture, proxy::FaultProxy};

fn created() -> Event {
    Event::new(WorkoutCreated::example()).with_organization("org-1")
}

fn deleted() -> Event {
    Event::new(WorkoutDeleted::example()).with_organization("org-1")
}

/// Watches the publisher's breaker every few milliseconds until `stop`; returns
/// whether it was ever seen open (or half-open).
fn watch_breaker(
    publisher: &EventPublisher,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<bool> {
    let publisher = publisher.clone();
    tokio::spawn(async move {
        let mut opened = false;
        while !stop.load(Ordering::SeqCst) {
            opened |= publisher.breaker_state() != Some(BreakerState::Closed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        opened | (publisher.breaker_state() != Some(BreakerState::Closed))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_nacks_its_own_events_and_other_routing_keys_keep_flowing() {
    require_broker!();
    const FULL: usize = 5_000;
    const MAX_LENGTH: i32 = 1_000;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(MAX_LENGTH));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    // The full queue takes `workout.deleted`; a healthy one takes `workout.created`.
    let fx = Fixture::with_queue_args("fullq", "workout.deleted", args).await;
    let healthy_queue = format!("{}.healthy.q", fx.name);
    let mut healthy_args = FieldTable::default();
    healthy_args.insert("x-expires".into(), AMQPValue::LongInt(300_000));
    fx.channel
        .queue_declare(
            healthy_queue.as_str().into(),
            QueueDeclareOptions::default(),
            healthy_args,
        )
        .await
        .unwrap();
    fx.channel
        .queue_bind(
            healthy_queue.as_str().into(),
            fx.exchange.as_str().into(),
            "workout.created".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // 3 retries, as before the default became 5 (issue 18): 5,000 concurrent publishes
    // of one organization into a full queue, each nacked 6 times with up to 3.1 s of
    // backoff while holding its organization's share, outlast the 15 s deadline (2,667
    // ended `Timeout`, and 32 of the same organization's healthy publishes with them).
    // The failure table (docs/errors.md) says so.
    let publisher = EventPublisher::connect(PublisherConfig {
        retry_attempts: 3,
        ..fx.config()
    })
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_breaker(&publisher, stop.clone());

    // Healthy traffic for the whole run, on the same publisher.
    let healthy_stop = Arc::new(AtomicBool::new(false));
    let (healthy_ok, healthy_err) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut healthy = Vec::new();
    for _ in 0..32 {
        let (publisher, stop) = (publisher.clone(), healthy_stop.clone());
        let (ok, err) = (healthy_ok.clone(), healthy_err.clone());
        healthy.push(tokio::spawn(async move {
            let mut kinds = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match publisher.publish(created()).await {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        kinds.push(e.kind());
                        // A refusal is immediate: let the other tasks run.
                        tokio::task::yield_now().await;
                        err.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
            kinds
        }));
    }

    let started = Instant::now();
    let full: Vec<_> = (0..FULL)
        .map(|_| {
            let publisher = publisher.clone();
            tokio::spawn(async move { publisher.publish(deleted()).await })
        })
        .collect();
    let (mut confirmed, mut nacked, mut other) = (0, 0, Vec::new());
    for task in full {
        match task.await.unwrap() {
            Ok(_) => confirmed += 1,
            Err(e) if e.kind() == ErrorKind::Nacked => {
                assert!(!e.maybe_delivered(), "{e}");
                nacked += 1
            }
            Err(e) => other.push(e.kind()),
        }
    }
    let full_took = started.elapsed();
    // Keep the healthy traffic going a little longer, with the queue still full.
    let extra = Instant::now();
    while extra.elapsed() < Duration::from_secs(2) {
        publisher.publish(deleted()).await.unwrap_err();
        tokio::task::yield_now().await;
    }
    healthy_stop.store(true, Ordering::SeqCst);
    let mut healthy_kinds = Vec::new();
    for task in healthy {
        healthy_kinds.extend(task.await.unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    let opened = watcher.await.unwrap();
    let (ok, err) = (
        healthy_ok.load(Ordering::SeqCst),
        healthy_err.load(Ordering::SeqCst),
    );
    eprintln!(
        "full queue: {confirmed} confirmed, {nacked} nacked, {} other in {full_took:?}; \
         healthy routing key: {ok} confirmed, {err} failed over {:?}",
        other.len(),
        started.elapsed()
    );
    assert!(
        other.is_empty(),
        "{} full-queue callers got other errors, e.g. {:?}",
        other.len(),
        &other[..other.len().min(5)]
    );
    assert_eq!(confirmed, MAX_LENGTH as usize);
    assert_eq!(nacked, FULL - MAX_LENGTH as usize);
    assert_eq!(
        err,
        0,
        "healthy callers failed, e.g. {:?}",
        &healthy_kinds[..healthy_kinds.len().min(5)]
    );
    assert!(ok > 1_000, "the healthy routing key barely flowed: {ok}");
    assert!(!opened, "the breaker opened");
    assert_eq!(fx.queue_len().await, MAX_LENGTH as u32);

    publisher.close().await;
    let _ = fx
        .channel
        .queue_delete(healthy_queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_twice_under_128_concurrent_publishes_fail_no_caller() {
    require_broker!();
    const TOTAL: usize = 20_000;
    const WORKERS: usize = 128;
    let fx = Fixture::new("close2", "#").await;
    let config = fx.config();
    let name = config.connection_name.clone().unwrap();
    let publisher = EventPublisher::connect(config).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_breaker(&publisher, stop.clone());

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (publisher, next, done) = (publisher.clone(), next.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let (mut confirmed, mut failed) = (Vec::new(), Vec::new());
            while next.fetch_add(1, Ordering::SeqCst) < TOTAL {
                let event = created();
                let id = event.id();
                match publisher.publish(event).await {
                    Ok(receipt) => confirmed.push(receipt.event_id.to_string()),
                    Err(e) => failed.push((id, e.to_string())),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            (confirmed, failed)
        }));
    }
    let mut closed = Vec::new();
    for at in [TOTAL / 5, TOTAL / 2] {
        let waiting = Instant::now();
        while done.load(Ordering::SeqCst) < at {
            assert!(waiting.elapsed() < Duration::from_secs(60), "stuck");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        closed.push(support::close_connections_named(&name).await);
    }
    let (mut confirmed, mut failed) = (HashSet::new(), Vec::new());
    for worker in workers {
        let (ok, err) = worker.await.unwrap();
        confirmed.extend(ok);
        failed.extend(err);
    }
    stop.store(true, Ordering::SeqCst);
    let opened = watcher.await.unwrap();
    eprintln!(
        "closed {closed:?} connections; {} confirmed, {} failed",
        confirmed.len(),
        failed.len()
    );
    assert!(closed.iter().all(|&n| n >= 1), "closed {closed:?}");
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(confirmed.len(), TOTAL);
    assert!(!opened, "the breaker opened");
    let in_queue: HashSet<String> = fx
        .drain()
        .await
        .into_iter()
        .map(|(_, props)| props.message_id().as_ref().unwrap().to_string())
        .collect();
    let missing = confirmed.difference(&in_queue).count();
    assert_eq!(missing, 0, "confirmed events missing from the queue");
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_confirm_then_an_open_breaker_reports_an_unknown_outcome_with_the_event_id() {
    require_broker!();
    let fx = Fixture::new("unknown", "#").await;
    let proxy = FaultProxy::start(&support::broker_addr()).await;
    let config = PublisherConfig {
        url: proxy.amqp_url().parse().unwrap(),
        confirm_timeout: Duration::from_millis(300),
        publish_timeout: Duration::from_secs(5),
        retry_attempts: 5,
        retry_base_delay: Duration::from_millis(20),
        retry_max_delay: Duration::from_millis(50),
        connection_timeout: Duration::from_millis(500),
        pool_wait_timeout: Duration::from_millis(200),
        breaker_failure_threshold: 2,
        breaker_open_duration: Duration::from_secs(30),
        ..fx.config()
    };
    let lanes = config.pool_size;
    let publisher = EventPublisher::connect(config).await.unwrap();
    // One publish per lane of the pool (they go round the lanes), so that every lane's
    // channel is open before the black hole: a lane whose channel was still being opened
    // in the background would fail its attempts `PoolTimeout` before anything was
    // written — truthfully "not sent", not the lost confirm this test is about (seen
    // under CPU load: 1 run in 6 with three busy loops beside it).
    for _ in 0..lanes {
        publisher.publish(created()).await.unwrap();
    }

    // Written, never confirmed: attempts time out, the breaker opens, and the retry
    // ends with CircuitOpen.
    proxy.black_hole();
    let event = created();
    let id = event.id();
    let err = publisher.publish(event).await.unwrap_err();
    eprintln!("{err}");
    assert_eq!(err.kind(), ErrorKind::CircuitOpen, "{err}");
    assert_eq!(publisher.breaker_state(), Some(BreakerState::Open));
    assert!(err.maybe_delivered(), "{err}");
    assert_eq!(err.event_id(), Some(id));
    let text = err.to_string();
    assert!(text.contains("outcome unknown"), "{text}");
    assert!(!text.contains("event not sent"), "{text}");

    // A publish that never got near the broker (refused by the open breaker) is still
    // a plain "not sent".
    let err = publisher.publish(created()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert!(!err.maybe_delivered(), "{err}");

    proxy.heal();
    publisher.close().await;
    fx.cleanup().await;
}
