//! Fault injection against the real broker, through the TCP proxy of the test support
//! code: black hole, cut connections, latency, a broker-side kill, a long outage.

mod support;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use fitviz_events::testing::Example;
use fitviz_events::{
    ErrorKind, Event, EventPublisher, PublisherConfig, circuit_breaker::BreakerState,
    events::WorkoutCreated,
};
use support::{Fixture, proxy::FaultProxy};

fn event() -> Event {
    Event::new(WorkoutCreated::example()).with_organization("org-1")
}

/// A publisher through `proxy` with short, test-friendly deadlines.
fn config(fx: &Fixture, proxy: &FaultProxy) -> PublisherConfig {
    PublisherConfig {
        url: proxy.amqp_url().parse().unwrap(),
        confirm_timeout: Duration::from_millis(300),
        publish_timeout: Duration::from_millis(1500),
        retry_attempts: 2,
        retry_base_delay: Duration::from_millis(20),
        retry_max_delay: Duration::from_millis(100),
        connection_timeout: Duration::from_millis(500),
        pool_wait_timeout: Duration::from_millis(200),
        breaker_failure_threshold: 3,
        breaker_open_duration: Duration::from_secs(1),
        ..fx.config()
    }
}

async fn publish_until_ok(publisher: &EventPublisher, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if publisher.publish(event()).await.is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "publishing did not recover within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_bounded_breaker_opens_fails_fast_then_recovers() {
    require_broker!();
    let fx = Fixture::new("blackhole", "#").await;
    let proxy = FaultProxy::start(&support::broker_addr()).await;
    let publisher = EventPublisher::connect(config(&fx, &proxy)).await.unwrap();
    publisher.publish(event()).await.unwrap();
    assert_eq!(publisher.breaker_state(), Some(BreakerState::Closed));

    proxy.black_hole();
    let deadline = Duration::from_millis(1500);
    let mut kinds = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let err = publisher.publish(event()).await.unwrap_err();
        let took = started.elapsed();
        assert!(
            took <= deadline + Duration::from_millis(300),
            "took {took:?}"
        );
        kinds.push(err.kind());
        if err.kind() == ErrorKind::CircuitOpen {
            break;
        }
    }
    assert!(kinds.contains(&ErrorKind::Timeout), "{kinds:?}");
    assert_eq!(
        publisher.breaker_state(),
        Some(BreakerState::Open),
        "{kinds:?}"
    );
    // Open: fails fast without touching the broker.
    for _ in 0..100 {
        let started = Instant::now();
        let err = publisher.publish(event()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CircuitOpen);
        assert!(
            started.elapsed() < Duration::from_millis(20),
            "{:?}",
            started.elapsed()
        );
    }
    // try_publish degrades to false, quickly.
    assert!(!publisher.try_publish(event()).await);

    proxy.heal();
    let took = publish_until_ok(&publisher, Duration::from_secs(15)).await;
    eprintln!("recovered {took:?} after heal");
    assert_eq!(publisher.breaker_state(), Some(BreakerState::Closed));
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_during_10k_concurrent_publishes_loses_nothing_reported_published() {
    require_broker!();
    let fx = Fixture::new("cut", "#").await;
    let proxy = FaultProxy::start(&support::broker_addr()).await;
    let cfg = PublisherConfig {
        confirm_timeout: Duration::from_secs(2),
        publish_timeout: Duration::from_secs(10),
        retry_attempts: 5,
        breaker_failure_threshold: 1_000_000,
        ..config(&fx, &proxy)
    };
    let publisher = EventPublisher::connect(cfg).await.unwrap();
    publisher.publish(event()).await.unwrap();
    fx.drain().await;

    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10_000 {
        let (publisher, done) = (publisher.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let event = event();
            let id = event.id();
            let result = publisher.publish(event).await;
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (id, result)
        }));
    }
    // Cut in the middle: once some publishes are confirmed and most are not.
    let waiting = Instant::now();
    while done.load(std::sync::atomic::Ordering::SeqCst) < 500 {
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "publishing never started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    proxy.cut_all();
    let done_at_cut = done.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("cut after {done_at_cut} of 10000 publishes resolved");
    assert!(done_at_cut < 9_000, "the cut came too late to matter");

    let mut confirmed = HashSet::new();
    let mut failed = 0;
    let mut kinds = std::collections::HashMap::new();
    let all = async {
        for task in tasks {
            let (id, result) = task.await.unwrap();
            match result {
                Ok(receipt) => {
                    assert_eq!(receipt.event_id, id);
                    confirmed.insert(id.to_string());
                }
                Err(e) => {
                    failed += 1;
                    *kinds.entry(format!("{:?}", e.kind())).or_insert(0) += 1;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every publish resolves");
    eprintln!("confirmed {}, failed {failed}: {kinds:?}", confirmed.len());
    assert!(!confirmed.is_empty());

    let messages = fx.drain().await;
    let in_queue: HashSet<String> = messages
        .iter()
        .map(|(_, props)| props.message_id().as_ref().unwrap().to_string())
        .collect();
    eprintln!(
        "{} messages in the queue, {} distinct (duplicates come from retried lost confirms)",
        messages.len(),
        in_queue.len()
    );
    let lost: Vec<_> = confirmed.difference(&in_queue).collect();
    assert!(
        lost.is_empty(),
        "{} confirmed events are not in the queue",
        lost.len()
    );
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_above_the_confirm_timeout_times_out_and_retries() {
    require_broker!();
    let fx = Fixture::new("latency", "#").await;
    let proxy = FaultProxy::start(&support::broker_addr()).await;
    let cfg = PublisherConfig {
        confirm_timeout: Duration::from_millis(200),
        publish_timeout: Duration::from_secs(3),
        retry_attempts: 2,
        breaker_failure_threshold: 100,
        ..config(&fx, &proxy)
    };
    let publisher = EventPublisher::connect(cfg).await.unwrap();
    publisher.publish(event()).await.unwrap();
    // Every lane has its channel (the pool fills them in the background after
    // `connect`): a channel opened through the slow proxy would take longer than the
    // pool's wait, and the attempt would end as PoolTimeout instead.
    tokio::time::sleep(Duration::from_millis(500)).await;

    proxy.set_latency(Duration::from_millis(400));
    let started = Instant::now();
    let err = publisher.publish(event()).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // A round trip takes 800 ms: each attempt waits 200 ms for its confirm, then up to
    // 200 ms for the connection to answer, and fails. Three attempts, plus backoff,
    // within the overall deadline.
    assert!(
        err.to_string().contains("did not answer a round trip"),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(1200),
        "only {took:?}: not retried"
    );
    assert!(took < Duration::from_millis(3300), "{took:?}");

    proxy.heal();
    publish_until_ok(&publisher, Duration::from_secs(10)).await;
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_side_kill_of_our_connection_recovers_without_restart() {
    require_broker!();
    let fx = Fixture::new("kill", "#").await;
    let name = format!("{}.publisher", fx.name);
    let cfg = PublisherConfig {
        breaker_failure_threshold: 100,
        ..fx.config()
    };
    let publisher = EventPublisher::connect(cfg).await.unwrap();
    publisher.publish(event()).await.unwrap();

    let killed = support::close_connections_named(&name).await;
    assert!(killed >= 1, "no broker connection named {name}");
    let took = publish_until_ok(&publisher, Duration::from_secs(15)).await;
    eprintln!("recovered {took:?} after the broker closed our connection");
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_queue_stays_bounded_through_an_outage_and_delivers_after() {
    require_broker!();
    let fx = Fixture::new("detached", "#").await;
    let proxy = FaultProxy::start(&support::broker_addr()).await;
    let (capacity, concurrency) = (50, 4);
    let publisher = EventPublisher::connect(PublisherConfig {
        detached_capacity: capacity,
        detached_concurrency: concurrency,
        detached_overflow_wait: Duration::ZERO,
        detached_redelivery_base_delay: Duration::from_millis(50),
        detached_redelivery_max_delay: Duration::from_millis(200),
        ..config(&fx, &proxy)
    })
    .await
    .unwrap();
    // Queued before the outage.
    let mut accepted = HashSet::new();
    proxy.black_hole();
    let (mut full, mut other) = (0, 0);
    for _ in 0..200 {
        let event = event();
        let id = event.id().to_string();
        match publisher.spawn(event).await {
            Ok(()) => {
                accepted.insert(id);
            }
            Err(e) if e.kind() == ErrorKind::QueueFull => full += 1,
            Err(e) => {
                other += 1;
                eprintln!("unexpected: {e}");
            }
        }
        assert!(publisher.queued() <= capacity);
    }
    assert_eq!(other, 0);
    assert!(full > 0, "overflow never happened");
    assert!(
        accepted.len() <= capacity + concurrency,
        "{} accepted, bound is {}",
        accepted.len(),
        capacity + concurrency
    );
    assert_eq!(
        accepted.len() + full,
        200,
        "every event is accepted or rejected"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    proxy.heal();
    let report = publisher.close_within(Duration::from_secs(30)).await;
    assert!(report.unsent.is_empty(), "{} unsent", report.unsent.len());
    assert_eq!(report.failed, 0);
    let in_queue: HashSet<String> = fx
        .drain()
        .await
        .into_iter()
        .map(|(_, props)| props.message_id().as_ref().unwrap().to_string())
        .collect();
    let missing = accepted.difference(&in_queue).count();
    assert_eq!(
        missing, 0,
        "accepted detached events missing after the outage"
    );
    assert!(report.published as usize >= accepted.len());
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reports_detached_events_it_could_not_send() {
    require_broker!();
    let fx = Fixture::new("unsent", "#").await;
    let proxy = FaultProxy::start(&support::broker_addr()).await;
    let publisher = EventPublisher::connect(config(&fx, &proxy)).await.unwrap();
    proxy.black_hole();
    let mut accepted = HashSet::new();
    for _ in 0..20 {
        let event = event();
        accepted.insert(event.id());
        publisher.spawn(event).await.unwrap();
    }
    let started = Instant::now();
    let report = publisher.close_within(Duration::from_millis(500)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let unsent: HashSet<_> = report.unsent.iter().map(|e| e.id()).collect();
    assert_eq!(unsent, accepted, "every unsent event is reported");
    assert!(publisher.spawn(event()).await.unwrap_err().kind() == ErrorKind::Shutdown);
    drop(proxy);
    fx.cleanup().await;
}

#[allow(dead_code)]
fn _config_type_check(c: PublisherConfig) -> PublisherConfig {
    c
}
