//! The unroutable policy on the real broker: an event no queue is bound for is kept in
//! `<exchange>.unrouted` (the default) and the receipt says so; `error` still fails;
//! `ignore` succeeds without storing it.
mod support;

use fitviz_events::{
    ErrorKind, Event, EventPublisher, PublisherConfig, Routing,
    config::UnroutablePolicy,
    events::{BookingConfirmed, WorkoutCreated},
    testing::Example,
};
use lapin::types::FieldTable;
use support::Fixture;

fn event() -> Event {
    Event::new(WorkoutCreated::example()).with_organization("org-unroutable")
}

#[tokio::test]
async fn an_event_no_queue_is_bound_for_is_kept_by_default_and_the_receipt_says_so() {
    require_broker!();
    // The fixture's queue is bound for something else: workout.created is unroutable.
    let fx = Fixture::new("unroutable_kept", "nothing.binds.this").await;
    // Another type, bound: routed as before.
    fx.channel
        .queue_bind(
            fx.queue.as_str().into(),
            fx.exchange.as_str().into(),
            "booking.confirmed".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let config = PublisherConfig {
        unroutable: PublisherConfig::default().unroutable,
        ..fx.config()
    };
    assert_eq!(config.unroutable, UnroutablePolicy::AlternateExchange);
    let publisher = EventPublisher::connect(config).await.unwrap();
    let first = publisher
        .publish(event())
        .await
        .expect("kept, not an error");
    assert_eq!(first.routing, Routing::Kept);
    let second = publisher.publish(event()).await.expect("kept again");
    assert_eq!(second.routing, Routing::Kept);
    assert_eq!(
        support::queue_len(&fx.connection, &format!("{}.unrouted", fx.exchange)).await,
        Some(2)
    );
    let routed = publisher
        .publish(Event::new(BookingConfirmed::example()).with_organization("org-unroutable"))
        .await
        .expect("routed");
    assert_eq!(routed.routing, Routing::Routed);
    assert_eq!(fx.queue_len().await, 1);
    // The kept message is the event, with its id.
    let channel = fx.connection.create_channel().await.unwrap();
    let got = channel
        .basic_get(
            format!("{}.unrouted", fx.exchange).as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("a kept message");
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string()),
        Some(first.event_id.to_string())
    );
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test]
async fn the_error_policy_still_fails_and_ignore_drops() {
    require_broker!();
    let fx = Fixture::new("unroutable_error", "nothing.binds.this").await;
    let publisher = EventPublisher::connect(PublisherConfig {
        unroutable: UnroutablePolicy::Error,
        ..fx.config()
    })
    .await
    .unwrap();
    let err = publisher.publish(event()).await.expect_err("unroutable");
    assert_eq!(err.kind(), ErrorKind::Unroutable, "{err}");
    publisher.close().await;

    let publisher = EventPublisher::connect(PublisherConfig {
        unroutable: UnroutablePolicy::Ignore,
        ..fx.config()
    })
    .await
    .unwrap();
    let receipt = publisher.publish(event()).await.expect("ignored");
    assert_eq!(receipt.routing, Routing::Dropped);
    publisher.close().await;
    // Neither declared nor filled the unrouted queue.
    assert_eq!(
        support::queue_len(&fx.connection, &format!("{}.unrouted", fx.exchange)).await,
        None
    );
    fx.cleanup().await;
}
