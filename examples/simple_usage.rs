//! Quick start: connect, publish each of the eleven built-in FitViz events, print the
//! broker's receipts, then show a validation error and a JSON publish.
//!
//! Run against a local RabbitMQ (default `amqp://guest:guest@127.0.0.1:5672/%2f`,
//! override with `FITVIZ_EVENTS_URL`):
//!
//! ```sh
//! cargo run --example simple_usage
//! ```
//!
//! Events are published with `mandatory`, so an event no queue is bound for is
//! reported as unroutable. In production the notification service binds its queue;
//! here the example binds a short-lived demo queue itself.

use fitviz_events::{Event, EventPublisher, OrganizationId, PublisherConfig, events::*};
use lapin::{
    Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions},
    types::{AMQPValue, FieldTable},
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let config = PublisherConfig::from_env()?;
    println!(
        "publishing to {} on exchange `{}`",
        config.redacted_url(),
        config.exchange.as_str()
    );
    let publisher = EventPublisher::connect(config.clone()).await?;
    let demo_queue = bind_demo_queue(&config).await?;

    let org = OrganizationId::from("org-42");
    let events = fitviz_events::events::examples();
    for event in events {
        let event_type = event.event_type().to_owned();
        let receipt = publisher
            .publish(event.with_organization(org.clone()))
            .await?;
        println!(
            "confirmed {event_type:<20} id={} in {:.2} ms",
            receipt.event_id,
            receipt.elapsed.as_secs_f64() * 1e3
        );
    }

    // The original library's call: publish(event_type, data, organization_id).
    let receipt = publisher
        .publish_json(
            "payment.failed",
            serde_json::json!({
                "payment_id": "pay-9", "member_id": "mem-1", "amount_minor": 4999,
                "currency": "EUR", "failure_code": "card_declined",
                "failure_message": null, "retryable": true
            }),
            Some(org.clone()),
        )
        .await?;
    println!("confirmed payment.failed (json) id={}", receipt.event_id);

    // Bad input never reaches the broker and says what is wrong.
    let mut bad = ClassScheduled::example();
    bad.capacity = 0;
    let error = publisher
        .publish(Event::new(bad).with_organization(org.clone()))
        .await
        .unwrap_err();
    println!("rejected as expected: {error}");

    // Graceful mode: false instead of an error.
    let ok = publisher
        .try_publish(Event::new(WorkoutDeleted::example()))
        .await;
    println!("try_publish without an organization id returned {ok}");

    publisher.close().await;
    demo_queue.purge().await;
    Ok(())
}

struct DemoQueue {
    connection: Connection,
    name: &'static str,
}

impl DemoQueue {
    async fn purge(self) {
        if let Ok(channel) = self.connection.create_channel().await {
            let _ = channel
                .queue_purge(self.name.into(), QueuePurgeOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "done".into()).await;
    }
}

async fn bind_demo_queue(config: &PublisherConfig) -> Result<DemoQueue, lapin::Error> {
    let connection =
        Connection::connect(config.url.expose_secret(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let name = "fitviz.events.simple_usage";
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    channel
        .queue_declare(name.into(), QueueDeclareOptions::default(), args)
        .await?;
    channel
        .queue_bind(
            name.into(),
            config.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(DemoQueue { connection, name })
}
