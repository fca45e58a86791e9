//! Composing the layers by hand around the transport, for users who want their own
//! order or extra layers — here a `tower::limit::ConcurrencyLimitLayer` in front of the
//! transport and no retry.
//!
//! ```sh
//! cargo run --example custom_stack
//! ```

use std::time::Duration;

use fitviz_events::{
    AmqpPublish, ChannelPool, Event, EventPublisher, OrganizationId, PublisherConfig,
    SchemaRegistry, circuit_breaker::CircuitBreakerLayer, events::WorkoutCreated,
    organization::OrganizationLayer, timeout::TimeoutLayer, validate::ValidationLayer,
};
use lapin::{
    Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use tower::{ServiceBuilder, util::BoxCloneSyncService};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = PublisherConfig::from_env()?;
    let pool = ChannelPool::new(&config)?;
    pool.declare_exchange(&config).await?;
    let transport = AmqpPublish::new(pool, config.exchange.as_str(), "custom-stack-example");

    let breaker = CircuitBreakerLayer::new(3, Duration::from_secs(2));
    let health = breaker.handle();
    let stack = ServiceBuilder::new()
        .layer(ValidationLayer::new(SchemaRegistry::builtin()))
        .layer(OrganizationLayer::new(|| {
            Some(OrganizationId::from("org-custom"))
        }))
        .layer(TimeoutLayer::overall(Duration::from_secs(2)))
        .layer(breaker)
        .layer(TimeoutLayer::attempt(Duration::from_secs(1)))
        .layer(tower::limit::ConcurrencyLimitLayer::new(64))
        .service(transport);
    let publisher =
        EventPublisher::builder(config.clone()).build_with_service(BoxCloneSyncService::new(stack));

    // A demo queue so the events are routable.
    let connection =
        Connection::connect(config.url.expose_secret(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = "fitviz.events.custom_stack";
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            config.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let receipts = publisher
        .publish_batch((0..10).map(|_| Event::new(WorkoutCreated::example())))
        .await;
    for receipt in &receipts {
        match receipt {
            Ok(r) => println!("confirmed {} in {:?}", r.event_id, r.elapsed),
            Err(e) => println!("failed: {e}"),
        }
    }
    println!("breaker: {}", health.state());
    publisher.close().await;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    connection.close(200, "done".into()).await?;
    Ok(())
}
