//! The metrics each publish outcome records, read through a debugging recorder on
//! the real broker. The recorder is process-wide, so this file is a test binary of
//! its own; its tests run in parallel, each on its own exchange (a label of the
//! per-event series) and event type (the label of the retries counter).

mod support;

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use fitviz_events::{
    ErrorKind, Event, EventPublisher, PublisherConfig,
    events::{ClassCancelled, MembershipExpired, PaymentFailed, WorkoutCreated, WorkoutDeleted},
    telemetry::{self, OTHER_EVENT_TYPE},
    testing::Example,
};
use lapin::types::{AMQPValue, FieldTable};
use metrics_util::{
    CompositeKey, MetricKind,
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
};
use support::{Fixture, proxy::FaultProxy};

/// What a series has recorded since the recorder was installed. The debugging
/// recorder's snapshot resets what it reads, and parallel tests snapshot too, so
/// every snapshot is added here and tests read the sums.
#[derive(Clone, Debug, Default, PartialEq)]
struct Sum {
    /// Counter total, or gauge net change.
    value: f64,
    /// Histogram values.
    samples: Vec<f64>,
}

/// A metric's labels, sorted.
type Labels = Vec<(String, String)>;

struct Recorded {
    snapshotter: Snapshotter,
    sums: Mutex<HashMap<(MetricKind, String, Labels), Sum>>,
}

fn recorded() -> &'static Recorded {
    static RECORDED: OnceLock<Recorded> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        Recorded {
            snapshotter,
            sums: Mutex::default(),
        }
    })
}

fn labels_of(key: &CompositeKey) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = (key.key().labels())
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    labels
}

/// Every series of `name` whose labels include `label = value`, as
/// `labels → sum`, after taking a snapshot.
fn series(name: &str, label: &str, value: &str) -> HashMap<Vec<(String, String)>, Sum> {
    let recorded = recorded();
    let mut sums = recorded.sums.lock().unwrap();
    for (key, _, _, v) in recorded.snapshotter.snapshot().into_vec() {
        let sum = sums
            .entry((key.kind(), key.key().name().to_owned(), labels_of(&key)))
            .or_default();
        match v {
            DebugValue::Counter(n) => sum.value += n as f64,
            DebugValue::Gauge(g) => sum.value += g.into_inner(),
            DebugValue::Histogram(xs) => sum.samples.extend(xs.into_iter().map(|x| x.into_inner())),
        }
    }
    sums.iter()
        .filter(|((_, n, labels), _)| {
            n == name && labels.iter().any(|(k, v)| k == label && v == value)
        })
        .map(|((_, _, labels), sum)| (labels.clone(), sum.clone()))
        .collect()
}

/// The labels of a per-event series: common ones, `event_type`, `outcome`.
fn per_event(exchange: &str, event_type: &str, outcome: &str) -> Vec<(String, String)> {
    let mut labels = vec![
        ("event_type".to_owned(), event_type.to_owned()),
        ("messaging.destination.name".to_owned(), exchange.to_owned()),
        ("messaging.operation.name".to_owned(), "publish".to_owned()),
        ("messaging.system".to_owned(), "rabbitmq".to_owned()),
        ("outcome".to_owned(), outcome.to_owned()),
    ];
    if outcome != "ok" {
        labels.push(("error.type".to_owned(), outcome.to_owned()));
    }
    labels.sort();
    labels
}

/// The publish-duration series of `exchange`: labels → number of samples.
fn durations(exchange: &str) -> HashMap<Vec<(String, String)>, usize> {
    series(
        telemetry::PUBLISH_DURATION,
        "messaging.destination.name",
        exchange,
    )
    .into_iter()
    .map(|(labels, sum)| (labels, sum.samples.len()))
    .collect()
}

/// The sent-messages series of `exchange`: labels → count.
fn sent(exchange: &str) -> HashMap<Vec<(String, String)>, u64> {
    series(
        telemetry::SENT_MESSAGES,
        "messaging.destination.name",
        exchange,
    )
    .into_iter()
    .map(|(labels, sum)| (labels, sum.value as u64))
    .filter(|(_, n)| *n > 0)
    .collect()
}

fn in_flight(exchange: &str) -> f64 {
    series(
        telemetry::CONFIRMS_IN_FLIGHT,
        "messaging.destination.name",
        exchange,
    )
    .values()
    .map(|s| s.value)
    .sum()
}

fn retries(event_type: &str) -> HashMap<Vec<(String, String)>, u64> {
    series(telemetry::RETRIES, "event_type", event_type)
        .into_iter()
        .map(|(labels, sum)| (labels, sum.value as u64))
        .collect()
}

async fn connect(config: PublisherConfig) -> EventPublisher {
    recorded(); // before the publisher registers anything
    EventPublisher::connect(config).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_publish_is_one_ok_duration_and_one_sent_message() {
    require_broker!();
    let fx = Fixture::new("metrics_ok", "#").await;
    let publisher = connect(fx.config()).await;
    for _ in 0..3 {
        publisher
            .publish(Event::new(WorkoutCreated::example()).with_organization("org-1"))
            .await
            .unwrap();
    }
    // An unregistered type (allowed here) shares the `other` label.
    let config = PublisherConfig {
        allow_unregistered: true,
        ..fx.config()
    };
    let other = connect(config).await;
    other
        .publish(
            Event::from_json("custom.thing", serde_json::json!({"a": 1}))
                .with_organization("org-1"),
        )
        .await
        .unwrap();
    let ok = per_event(&fx.exchange, "workout.created", "ok");
    let ok_other = per_event(&fx.exchange, OTHER_EVENT_TYPE, "ok");
    assert_eq!(
        durations(&fx.exchange),
        HashMap::from([(ok.clone(), 3), (ok_other.clone(), 1)])
    );
    assert_eq!(sent(&fx.exchange), HashMap::from([(ok, 3), (ok_other, 1)]));
    assert_eq!(in_flight(&fx.exchange), 0.0, "every confirm arrived");
    assert_eq!(fx.queue_len().await, 4);
    publisher.close().await;
    other.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_sent_once_and_not_retried() {
    require_broker!();
    let fx = Fixture::new("metrics_unroutable", "nothing.binds.this").await;
    let publisher = connect(fx.config()).await;
    let err = publisher
        .publish(Event::new(ClassCancelled::example()).with_organization("org-1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unroutable);
    let labels = per_event(&fx.exchange, "class.cancelled", "unroutable");
    assert_eq!(
        durations(&fx.exchange),
        HashMap::from([(labels.clone(), 1)])
    );
    assert_eq!(sent(&fx.exchange), HashMap::from([(labels, 1)]));
    assert!(retries("class.cancelled").is_empty());
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_publish_counts_every_attempt_sent_and_each_retry() {
    require_broker!();
    // A queue that holds one message and refuses more: the broker nacks.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let fx = Fixture::with_queue_args("metrics_nack", "#", args).await;
    let config = PublisherConfig {
        retry_attempts: 2,
        retry_base_delay: Duration::from_millis(10),
        ..fx.config()
    };
    let publisher = connect(config).await;
    let event = || Event::new(PaymentFailed::example()).with_organization("org-1");
    publisher.publish(event()).await.unwrap();
    let err = publisher.publish(event()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Nacked);
    assert_eq!(
        durations(&fx.exchange),
        HashMap::from([
            (per_event(&fx.exchange, "payment.failed", "ok"), 1),
            (per_event(&fx.exchange, "payment.failed", "nacked"), 1),
        ])
    );
    // The nacked publish was written three times: the first attempt and two retries.
    assert_eq!(
        sent(&fx.exchange),
        HashMap::from([
            (per_event(&fx.exchange, "payment.failed", "ok"), 1),
            (per_event(&fx.exchange, "payment.failed", "nacked"), 3),
        ])
    );
    let retry_labels = vec![
        ("error.type".to_owned(), "nacked".to_owned()),
        ("event_type".to_owned(), "payment.failed".to_owned()),
    ];
    assert_eq!(
        retries("payment.failed"),
        HashMap::from([(retry_labels, 2)])
    );
    assert_eq!(in_flight(&fx.exchange), 0.0);
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_counts_as_sent_and_the_open_circuit_sends_nothing() {
    require_broker!();
    let fx = Fixture::new("metrics_timeout", "#").await;
    let proxy = FaultProxy::start(&support::broker_addr()).await;
    let config = PublisherConfig {
        url: proxy.amqp_url().parse().unwrap(),
        retry_attempts: 0,
        confirm_timeout: Duration::from_millis(300),
        publish_timeout: Duration::from_secs(2),
        breaker_failure_threshold: 1,
        breaker_open_duration: Duration::from_secs(30),
        pool_size: 1,
        ..fx.config()
    };
    let publisher = connect(config).await;
    let event = || Event::new(MembershipExpired::example()).with_organization("org-1");
    publisher.publish(event()).await.unwrap();
    assert_eq!(publisher.readiness(), Ok(()));
    // Silence: the next event is written into the proxy and never confirmed.
    proxy.black_hole();
    let err = publisher.publish(event()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // One timeout opens the breaker: the next publish is refused before any I/O.
    let err = publisher.publish(event()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen, "{err}");
    let not_ready = publisher.readiness().unwrap_err();
    assert!(
        not_ready
            .reasons
            .iter()
            .any(|r| r.starts_with("circuit breaker open")),
        "{not_ready}"
    );
    let ty = "membership.expired";
    assert_eq!(
        durations(&fx.exchange),
        HashMap::from([
            (per_event(&fx.exchange, ty, "ok"), 1),
            (per_event(&fx.exchange, ty, "timeout"), 1),
            (per_event(&fx.exchange, ty, "circuit_open"), 1),
        ])
    );
    assert_eq!(
        sent(&fx.exchange),
        HashMap::from([
            (per_event(&fx.exchange, ty, "ok"), 1),
            (per_event(&fx.exchange, ty, "timeout"), 1),
        ]),
        "the open circuit sent nothing"
    );
    assert_eq!(
        in_flight(&fx.exchange),
        0.0,
        "the timed-out attempt left the gauge"
    );
    let transitions = series(telemetry::BREAKER_TRANSITIONS, "state", "open");
    assert!(
        transitions.values().any(|s| s.value >= 1.0),
        "the breaker's opening was counted: {transitions:?}"
    );
    drop(proxy);
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_event_is_a_validation_duration_and_never_sent() {
    require_broker!();
    let fx = Fixture::new("metrics_validation", "#").await;
    let publisher = connect(fx.config()).await;
    let err = publisher
        .publish(
            Event::from_json("workout.deleted", serde_json::json!({"workout_id": ""}))
                .with_organization("org-1"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    // And a good one of the same type, so the exchange has something sent.
    publisher
        .publish(Event::new(WorkoutDeleted::example()).with_organization("org-1"))
        .await
        .unwrap();
    assert_eq!(
        durations(&fx.exchange),
        HashMap::from([
            (per_event(&fx.exchange, "workout.deleted", "validation"), 1),
            (per_event(&fx.exchange, "workout.deleted", "ok"), 1),
        ])
    );
    assert_eq!(
        sent(&fx.exchange),
        HashMap::from([(per_event(&fx.exchange, "workout.deleted", "ok"), 1)])
    );
    assert_eq!(fx.queue_len().await, 1);
    publisher.close().await;
    fx.cleanup().await;
}
