//! Fail-fast paths are fair: callers looping on `CircuitOpen`, `Shutdown`, `QueueFull` or
//! a validation error yield to the scheduler now and then, so on a current-thread runtime
//! a 100 ms timer keeps ticking, the half-open probe gets through and `close()` returns.
//!
//! No broker: the transport is an in-memory mock that hangs until it is made healthy.
//! Each test runs its runtime on a thread of its own and fails (instead of hanging) when
//! the runtime does not finish in time.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use fitviz_events::{
    Event, EventPublisher, PublishError, PublisherConfig, Receipt, circuit_breaker::BreakerState,
    events::WorkoutCreated, testing::Example,
};
use tower::service_fn;

mod support;

/// Calls made by all loopers, for the failure message.
static CALLS: AtomicUsize = AtomicUsize::new(0);

/// Looping callers, as in the issue.
const LOOPERS: usize = 16;
const TICK: Duration = Duration::from_millis(100);

/// Runs `test` on a fresh current-thread runtime; panics if it takes longer than `limit`
/// (a starved runtime never finishes, and the test must not hang).
fn bounded<F>(limit: Duration, test: impl FnOnce() -> F + Send + 'static)
where
    F: Future<Output = ()>,
{
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(test());
        let _ = done.send(());
    });
    if finished.recv_timeout(limit).is_err() {
        panic!(
            "the runtime was starved: the test did not finish in {limit:?} ({} looping calls)",
            CALLS.load(Ordering::Relaxed)
        );
    }
}

/// A transport that hangs until `healthy` is set, then confirms after one yield (as
/// real I/O would), counting calls.
#[derive(Clone, Default)]
struct Mock {
    healthy: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Mock {
    fn publisher(&self, config: PublisherConfig) -> EventPublisher {
        let mock = self.clone();
        let transport = service_fn(move |event: Event| {
            mock.calls.fetch_add(1, Ordering::Relaxed);
            let healthy = mock.healthy.clone();
            async move {
                if !healthy.load(Ordering::Acquire) {
                    std::future::pending::<()>().await;
                }
                tokio::task::yield_now().await;
                Ok::<_, PublishError>(Receipt::new(event.id(), Duration::ZERO))
            }
        });
        EventPublisher::builder(config).build_with_transport(transport)
    }
}

fn config() -> PublisherConfig {
    PublisherConfig {
        confirm_timeout: Duration::from_millis(20),
        publish_timeout: Duration::from_millis(100),
        retry_attempts: 0,
        breaker_failure_threshold: 1,
        breaker_open_duration: Duration::from_secs(1),
        ..Default::default()
    }
}

fn event() -> Event {
    Event::new(WorkoutCreated::example()).with_organization("org-loop")
}

/// Counts the ticks of a 100 ms interval.
fn ticker() -> Arc<AtomicUsize> {
    let ticks = Arc::new(AtomicUsize::new(0));
    let counter = ticks.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    ticks
}

/// Starts `LOOPERS` tasks running `call` until `stop` is set; returns the call count.
fn loop_on<F, Fut>(stop: &Arc<AtomicBool>, call: F) -> Arc<AtomicUsize>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..LOOPERS {
        let (stop, calls, call) = (stop.clone(), calls.clone(), call.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                call().await;
                calls.fetch_add(1, Ordering::Relaxed);
                CALLS.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    calls
}

/// Sleeps `period` of real time with the loopers running and checks the ticker advanced
/// by at least a quarter of the ticks it would have without them: a starved runtime ticks
/// 0 times, and this shared, noisy machine ticked 7 of 10 in a second with 32 loopers in
/// a debug build, so a quarter leaves room for load without letting starvation pass.
async fn assert_ticks_during(ticks: &AtomicUsize, period: Duration) {
    let before = ticks.load(Ordering::Relaxed);
    tokio::time::sleep(period).await;
    let ticked = ticks.load(Ordering::Relaxed) - before;
    let expected = (period.as_millis() / TICK.as_millis()) as usize;
    assert!(
        ticked >= (expected / 4).max(2),
        "the 100 ms timer ticked {ticked} times in {period:?} (expected about {expected})"
    );
}

#[test]
fn looping_on_an_open_breaker_lets_timers_and_the_probe_run() {
    bounded(Duration::from_secs(15), || async {
        {
            {
                let mock = Mock::default();
                let publisher = mock.publisher(config());
                // The stuck transport times out once: the breaker opens.
                assert!(!publisher.try_publish(event()).await);
                assert_eq!(publisher.breaker_state(), Some(BreakerState::Open));

                let ticks = ticker();
                let stop = Arc::new(AtomicBool::new(false));
                let p = publisher.clone();
                let calls = loop_on(&stop, move || {
                    let p = p.clone();
                    async move {
                        p.try_publish(event()).await;
                    }
                });
                // The broker recovers; the probe after the open period must get through.
                mock.healthy.store(true, Ordering::Release);
                assert_ticks_during(&ticks, Duration::from_millis(1500)).await;
                assert_eq!(
                    publisher.breaker_state(),
                    Some(BreakerState::Closed),
                    "the half-open probe was not let through"
                );
                assert!(mock.calls.load(Ordering::Relaxed) > 1);
                stop.store(true, Ordering::Relaxed);
                assert!(calls.load(Ordering::Relaxed) > LOOPERS);
                publisher.close().await;
            }
        }
    });
}

#[test]
fn looping_after_close_lets_close_return_and_timers_run() {
    bounded(Duration::from_secs(15), || async {
        {
            {
                let mock = Mock::default();
                mock.healthy.store(true, Ordering::Release);
                let publisher = mock.publisher(config());
                let ticks = ticker();
                let stop = Arc::new(AtomicBool::new(false));
                let (p, q) = (publisher.clone(), publisher.clone());
                let published = loop_on(&stop, move || {
                    let p = p.clone();
                    async move {
                        p.try_publish(event()).await;
                    }
                });
                let spawned = loop_on(&stop, move || {
                    let q = q.clone();
                    async move {
                        let _ = q.spawn(event()).await;
                    }
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
                // `close` returns although 32 tasks keep publishing.
                publisher.close().await;
                let before = (
                    published.load(Ordering::Relaxed),
                    spawned.load(Ordering::Relaxed),
                );
                assert_ticks_during(&ticks, Duration::from_millis(1000)).await;
                assert!(published.load(Ordering::Relaxed) > before.0, "loopers ran");
                assert!(spawned.load(Ordering::Relaxed) > before.1, "loopers ran");
                let err = publisher.publish(event()).await.unwrap_err();
                assert_eq!(err.kind(), fitviz_events::ErrorKind::Shutdown);
                stop.store(true, Ordering::Relaxed);
            }
        }
    });
}

#[test]
fn looping_on_invalid_events_or_a_full_queue_lets_timers_run() {
    bounded(Duration::from_secs(15), || async {
        {
            {
                let mock = Mock::default(); // stuck: detached events stay queued
                let publisher = mock.publisher(PublisherConfig {
                    detached_capacity: 1,
                    detached_concurrency: 1,
                    ..config()
                });
                let ticks = ticker();
                let stop = Arc::new(AtomicBool::new(false));
                let (p, q) = (publisher.clone(), publisher.clone());
                let invalid = loop_on(&stop, move || {
                    let p = p.clone();
                    async move {
                        let bad = Event::from_json("workout.created", serde_json::json!({}));
                        let err = p.publish(bad.with_organization("o")).await.unwrap_err();
                        assert_eq!(err.kind(), fitviz_events::ErrorKind::Validation);
                    }
                });
                let full = loop_on(&stop, move || {
                    let q = q.clone();
                    async move {
                        let _ = q.spawn(event()).await;
                    }
                });
                assert_ticks_during(&ticks, Duration::from_millis(1000)).await;
                assert!(invalid.load(Ordering::Relaxed) > LOOPERS);
                assert!(full.load(Ordering::Relaxed) > LOOPERS);
                stop.store(true, Ordering::Relaxed);
                publisher.close_within(Duration::from_millis(10)).await;
            }
        }
    });
}

#[test]
fn a_burst_of_identical_failures_is_logged_once_with_a_count() {
    let captured = support::Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber(tracing::Level::WARN));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(async {
            let publisher = Mock::default().publisher(config());
            assert!(!publisher.try_publish(event()).await); // a timeout: the breaker opens
            for _ in 0..10_000 {
                assert!(!publisher.try_publish(event()).await); // CircuitOpen
            }
            tokio::time::advance(Duration::from_secs(5)).await;
            let err = publisher.publish(event()).await.unwrap_err(); // the probe times out
            assert_eq!(err.kind(), fitviz_events::ErrorKind::Timeout);
            assert!(!publisher.try_publish(event()).await); // CircuitOpen again
            publisher.close().await;
        });
    let logs = captured.text();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("event not published"))
        .collect();
    assert_eq!(lines.len(), 3, "{logs}");
    assert!(lines[0].contains("Timeout") && lines[0].contains("suppressed=0"));
    assert!(lines[1].contains("CircuitOpen") && lines[1].contains("suppressed=0"));
    assert!(lines[2].contains("CircuitOpen") && lines[2].contains("suppressed=9999"));
}

#[tokio::test]
async fn a_tenant_cannot_fill_more_than_its_share_of_the_detached_queue() {
    let publisher = Mock::default().publisher(PublisherConfig {
        detached_capacity: 4,
        detached_share_per_organization_percent: 50,
        ..config()
    });
    let of = |org: &str| Event::new(WorkoutCreated::example()).with_organization(org);
    publisher.spawn(of("flood")).await.unwrap();
    publisher.spawn(of("flood")).await.unwrap();
    let err = publisher.spawn(of("flood")).await.unwrap_err();
    assert_eq!(err.kind(), fitviz_events::ErrorKind::QueueFull);
    assert!(err.to_string().contains("`flood` has its share"), "{err}");
    assert_eq!(publisher.queued_of(Some("flood")), 2);
    // The other tenants still have room.
    publisher.spawn(of("calm")).await.unwrap();
    publisher.spawn(of("quiet")).await.unwrap();
    assert_eq!(publisher.queued_of(Some("calm")), 1);
    let report = publisher.close_within(Duration::from_millis(10)).await;
    assert_eq!(report.unsent.len(), 4);
    assert_eq!(
        publisher.queued_of(Some("flood")),
        0,
        "shares are given back"
    );
}

#[test]
fn the_retry_layer_logs_a_burst_of_identical_retries_once() {
    let captured = support::Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber(tracing::Level::WARN));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(async {
            use tower::{ServiceBuilder, ServiceExt};
            // A broker that never answers: every attempt times out and is retried once.
            let svc = ServiceBuilder::new()
                .layer(fitviz_events::retry::RetryLayer::new(
                    1,
                    Duration::from_millis(10),
                    Duration::from_millis(10),
                ))
                .layer(fitviz_events::timeout::TimeoutLayer::attempt(
                    Duration::from_millis(5),
                ))
                .service(service_fn(|_: Event| {
                    std::future::pending::<Result<Receipt, PublishError>>()
                }));
            for _ in 0..50 {
                let err = svc.clone().oneshot(event()).await.unwrap_err();
                assert_eq!(err.kind(), fitviz_events::ErrorKind::Timeout);
            }
        });
    let logs = captured.text();
    let retries = logs.matches("publish attempt failed; retrying").count();
    assert_eq!(retries, 1, "50 identical retries, one line:\n{logs}");
    assert!(logs.contains("suppressed=0"), "{logs}");
}
