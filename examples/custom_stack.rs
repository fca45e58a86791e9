//! A delivery stack of your own, for users who want another order or extra layers —
//! here a `tower::limit::ConcurrencyLimitLayer` in front of the transport and no retry.
//! The publisher still runs its front (validation, organization, envelope) first.
//!
//! ```sh
//! cargo run --example custom_stack
//! ```

use std::time::Duration;

use fitviz_events::{
    Event, EventPublisher, OrganizationId, PublisherConfig, circuit_breaker::CircuitBreakerLayer,
    events::WorkoutCreated, testing::Example, timeout::TimeoutLayer, transport::AmqpPublish,
};
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};
use tower::{ServiceBuilder, util::BoxCloneSyncService};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = PublisherConfig::from_env()?;
    let transport = AmqpPublish::connect(&config).await?;

    let breaker = CircuitBreakerLayer::new(3, Duration::from_secs(2));
    let health = breaker.handle();
    // The delivery part only: the publisher puts its front (validation, organization,
    // envelope) in front of it, configured by the builder.
    let delivery = ServiceBuilder::new()
        .layer(TimeoutLayer::overall(Duration::from_secs(2)))
        .layer(breaker)
        .layer(TimeoutLayer::attempt(Duration::from_secs(1)))
        .layer(tower::limit::ConcurrencyLimitLayer::new(64))
        .service(transport);
    let publisher = EventPublisher::builder(config.clone())
        .organization_source(|| Some(OrganizationId::from("org-custom")))
        .build_with_delivery(BoxCloneSyncService::new(delivery));

    // A demo queue so the events are routable.
    let demo_queue = DemoQueue::declare("fitviz.events.custom_stack", "workout.#", &config).await?;

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
    demo_queue.delete().await?;
    Ok(())
}

/// The demo queue: bound to the example's event types so its events are routable, holding at
/// most 1,000 events (`x-max-length`), deleted on exit, and removed by the broker a
/// minute after last use (`x-expires`) should the example stop early. Each operation
/// uses a short connection of its own.
struct DemoQueue {
    name: &'static str,
    url: String,
    exchange: String,
}

impl DemoQueue {
    /// Declares the queue and binds it to `routing_key` (a topic pattern).
    async fn declare(
        name: &'static str,
        routing_key: &str,
        config: &PublisherConfig,
    ) -> Result<Self, lapin::Error> {
        let queue = Self {
            name,
            url: config.url.expose_secret().to_owned(),
            exchange: config.exchange.clone(),
        };
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(1_000));
        args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
        queue
            .on_channel(async |channel| {
                channel
                    .queue_declare(name.into(), QueueDeclareOptions::default(), args)
                    .await?;
                channel
                    .queue_bind(
                        name.into(),
                        queue.exchange.as_str().into(),
                        routing_key.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            })
            .await?;
        Ok(queue)
    }

    /// Deletes the queue; returns how many events it held.
    async fn delete(self) -> Result<u32, lapin::Error> {
        self.on_channel(async |channel| {
            channel
                .queue_delete(self.name.into(), QueueDeleteOptions::default())
                .await
        })
        .await
    }

    async fn on_channel<T>(
        &self,
        op: impl AsyncFnOnce(&Channel) -> Result<T, lapin::Error>,
    ) -> Result<T, lapin::Error> {
        let properties = ConnectionProperties::default().with_connection_name(
            format!("fitviz-events example {} (demo queue)", self.name).into(),
        );
        let connection = Connection::connect(&self.url, properties).await?;
        let result = match connection.create_channel().await {
            Ok(channel) => {
                let result = op(&channel).await;
                let _ = channel.close(200, "done".into()).await;
                result
            }
            Err(e) => Err(e),
        };
        let _ = connection.close(200, "done".into()).await;
        result
    }
}
