//! Connecting against the machine's broker: a list of addresses with dead entries, the
//! connection name, and the background reconnect. The cluster, blocked connections and
//! TLS are tested against nodes of their own (`tests/cluster.rs`, `tests/tls.rs`).

mod support;

use std::time::{Duration, Instant};

use fitviz_events::testing::Example;
use fitviz_events::{ErrorKind, Event, EventPublisher, PublisherConfig, events::WorkoutCreated};
use support::Fixture;

fn event() -> Event {
    Event::new(WorkoutCreated::example()).with_organization("org-1")
}

/// An address on loopback where nothing listens (connections are refused at once).
fn dead_url(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// A port nothing listens on: bound, then released.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_address_in_the_list_is_skipped() {
    require_broker!();
    let fx = Fixture::new("deadaddr", "#").await;
    let dead = free_port();
    let config = PublisherConfig {
        url: format!("{},{}", dead_url(dead), support::broker_url())
            .parse()
            .unwrap(),
        connection_timeout: Duration::from_secs(2),
        ..fx.config()
    };
    // The order is shuffled per connection: several publishers, each must find the broker.
    for _ in 0..6 {
        let publisher = EventPublisher::connect(config.clone()).await.unwrap();
        publisher.publish(event()).await.unwrap();
        let state = publisher.connection_state().expect("own transport");
        assert!(state.connected, "{state:?}");
        assert_eq!(state.node.as_deref(), Some(support::broker_addr().as_str()));
        assert_eq!(state.blocked, None);
        publisher.close().await;
    }
    assert_eq!(fx.queue_len().await, 6);
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_down_is_one_error_naming_each_without_the_password() {
    let (a, b) = (free_port(), free_port());
    let config = PublisherConfig {
        url: format!("amqp://app:s3cretpw@127.0.0.1:{a}/%2f,amqp://app:s3cretpw@127.0.0.1:{b}/%2f")
            .parse()
            .unwrap(),
        connection_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let started = Instant::now();
    let err = EventPublisher::connect(config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.kind(), ErrorKind::Connection);
    let text = err.to_string();
    assert!(
        text.starts_with("could not connect to any of the 2 broker addresses"),
        "{text}"
    );
    for port in [a, b] {
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    }
    assert!(!text.contains("s3cretpw") && !format!("{err:?}").contains("s3cretpw"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_is_named_after_the_source_and_replaced_in_the_background() {
    require_broker!();
    let fx = Fixture::new("reconnect", "#").await;
    let source = format!("{}.source", fx.name);
    let publisher = EventPublisher::connect(PublisherConfig {
        source: source.clone(),
        connection_name: None,
        ..fx.config()
    })
    .await
    .unwrap();
    publisher.publish(event()).await.unwrap();
    let before = publisher.connection_state().unwrap();
    assert!(
        before.connected && before.connections_lost == 0,
        "{before:?}"
    );

    // The broker lists the connection under the configured source; close it from there.
    assert!(support::close_connections_named(&source).await > 0);

    // Without any publish, a new connection (a new generation) is opened.
    let started = Instant::now();
    let after = loop {
        let state = publisher.connection_state().unwrap();
        if state.connected && state.generation > before.generation {
            break state;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no new connection in the background: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "MEASURED background reconnect: new connection {:?} after the broker closed the old one",
        started.elapsed()
    );
    assert!(after.connections_lost >= 1, "{after:?}");
    let last_error = after.last_error.clone().unwrap_or_default();
    assert!(last_error.contains("connection to 127.0.0.1"), "{after:?}");
    assert!(!last_error.contains("guest:guest"), "{last_error}");
    publisher.publish(event()).await.unwrap();
    assert_eq!(fx.queue_len().await, 2);
    publisher.close().await;
    fx.cleanup().await;
}
