//! The broker's refusals, on the real broker: a publish it refuses with 403, 404 or 406
//! is reported at once with its own kind, is not retried, is not "outcome unknown", does
//! not open the circuit breaker, and makes the CLI exit 5 ("refused"), not 6
//! ("unavailable").

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use fitviz_events::{
    ErrorKind, Event, EventPublisher, PublishError, PublisherConfig, circuit_breaker::BreakerState,
    error::Delivery, events::WorkoutCreated, testing::Example,
};
use lapin::{
    ExchangeKind,
    options::{ExchangeDeclareOptions, ExchangeDeleteOptions},
    types::FieldTable,
};
use support::Fixture;

/// A config whose retries, if a refusal were retried, would show: each retry waits at
/// least a second, and two failures counted by the breaker would open it.
fn no_second_chances(config: PublisherConfig) -> PublisherConfig {
    PublisherConfig {
        retry_attempts: 5,
        retry_base_delay: Duration::from_secs(1),
        retry_max_delay: Duration::from_secs(2),
        breaker_failure_threshold: 2,
        declare_exchange: false,
        ..config
    }
}

fn workout() -> WorkoutCreated {
    WorkoutCreated::example()
}

/// Publishes `n` events one after the other; each must fail with `kind` within a
/// fraction of the first retry delay (so: not retried), say "refused", not "unknown".
async fn assert_refused(publisher: &EventPublisher, n: usize, kind: ErrorKind, reply: &str) {
    for i in 0..n {
        let started = Instant::now();
        let error: PublishError = publisher
            .publish(Event::new(workout()).with_organization("org-refusals"))
            .await
            .expect_err("the broker refuses this publish");
        let took = started.elapsed();
        assert_eq!(error.kind(), kind, "publish {i}: {error}");
        assert!(
            !error.maybe_delivered() && error.delivery() == Delivery::Refused,
            "publish {i}: {error:?}"
        );
        assert!(
            !error.is_retryable() && !error.is_broker_failure(),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains(reply) && !text.contains("outcome unknown"),
            "publish {i}: {text}"
        );
        // A retry would have waited at least 1 s (the base delay, minus jitter of at
        // most half of it).
        assert!(
            took < Duration::from_millis(450),
            "publish {i} took {took:?}: retried?"
        );
    }
    assert_eq!(
        publisher.breaker_state(),
        Some(BreakerState::Closed),
        "refusals must not open the breaker (threshold 2, {n} refusals)"
    );
}

/// Declares `<fixture>.internal`, an `internal` exchange: it exists (so the publisher's
/// passive check passes) and the broker refuses every publish to it with 403.
async fn declare_internal(fx: &Fixture) -> String {
    let internal = format!("{}.internal", fx.name);
    fx.channel
        .exchange_declare(
            internal.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                internal: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the internal exchange");
    internal
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_an_internal_exchange_is_access_refused_once_and_not_counted() {
    require_broker!();
    let fx = Fixture::new("refusals.internal", "#").await;
    let internal = declare_internal(&fx).await;
    let publisher = EventPublisher::connect(no_second_chances(PublisherConfig {
        exchange: internal.clone(),
        ..fx.config()
    }))
    .await
    .expect("connect: the exchange exists");
    assert_refused(&publisher, 6, ErrorKind::AccessRefused, "403").await;
    // The pool replaced the channels the broker closed: the same publisher works again
    // once it publishes somewhere it may.
    publisher.close().await;
    let _ = fx
        .channel
        .exchange_delete(internal.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_after_the_exchange_was_deleted_is_not_found_and_connect_says_so_too() {
    require_broker!();
    let fx = Fixture::new("refusals.deleted", "#").await;
    let config = no_second_chances(fx.config());
    let publisher = EventPublisher::connect(config.clone())
        .await
        .expect("connect: the exchange exists");
    publisher
        .publish(Event::new(workout()).with_organization("org-refusals"))
        .await
        .expect("published while the exchange exists");
    fx.channel
        .exchange_delete(
            fx.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .expect("delete the exchange");
    assert_refused(&publisher, 6, ErrorKind::NotFound, "404").await;
    publisher.close().await;

    // Connecting (declare_exchange = false) to an exchange that does not exist.
    let error = EventPublisher::connect(config)
        .await
        .expect_err("the exchange does not exist");
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    assert!(
        error.to_string().contains(&fx.exchange) && error.to_string().contains("404"),
        "{error}"
    );
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_of_another_type_is_a_precondition_failed_at_connect() {
    require_broker!();
    let fx = Fixture::new("refusals.othertype", "#").await;
    // The same name as a fanout exchange: declaring it as the events' topic exchange
    // is answered with 406.
    let fanout = format!("{}.fanout", fx.name);
    fx.channel
        .exchange_declare(
            fanout.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the fanout exchange");
    let started = Instant::now();
    let error = EventPublisher::connect(PublisherConfig {
        exchange: fanout.clone(),
        declare_exchange: true,
        ..no_second_chances(fx.config())
    })
    .await
    .expect_err("the exchange exists with another type");
    assert_eq!(error.kind(), ErrorKind::PreconditionFailed, "{error}");
    assert!(
        error.to_string().contains(&fanout) && error.to_string().contains("406"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
    let _ = fx
        .channel
        .exchange_delete(fanout.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    fx.cleanup().await;
}

/// The CLI: a refusal exits 5 and names its kind; before, these exited 6 ("broker
/// unavailable") with `circuit_open` or `connection`.
#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_5_naming_the_refusal() {
    require_broker!();
    let fx = Fixture::new("refusals.cli", "#").await;
    let internal = declare_internal(&fx).await;
    let missing = format!("{}.missing", fx.name);
    let data = serde_json::to_string(&workout()).unwrap();
    for (exchange, kind) in [
        (internal.as_str(), "access_refused"),
        (missing.as_str(), "not_found"),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fitviz-events"));
        for (key, _) in std::env::vars() {
            if key.starts_with("FITVIZ_EVENTS_") {
                command.env_remove(key);
            }
        }
        let output = command
            .env("FITVIZ_EVENTS_URL", support::broker_url())
            .env("FITVIZ_EVENTS_EXCHANGE", exchange)
            .env("FITVIZ_EVENTS_DECLARE_EXCHANGE", "false")
            .env("FITVIZ_EVENTS_CONNECTION_NAME", fx.name.as_str())
            .args([
                "--json",
                "publish",
                "workout.created",
                &data,
                "--org",
                "org-refusals",
            ])
            .output()
            .expect("run fitviz-events");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(5), "{exchange}: {stdout}");
        let line: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
        assert_eq!(line["error"], kind, "{stdout}");
    }
    let _ = fx
        .channel
        .exchange_delete(internal.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    fx.cleanup().await;
}
