//! A delivery stack of your own, for users who want another order or extra layers —
//! here a `tower::limit::ConcurrencyLimitLayer` in front of the transport and no retry.
//! The publisher still runs its front (validation, organization, envelope) first.
//!
//! ```sh
//! cargo run --example custom_stack
//! ```

mod common;

use common::DemoQueue;
use std::time::Duration;

use fitviz_events::{
    Event, EventPublisher, OrganizationId, PublisherConfig, circuit_breaker::CircuitBreakerLayer,
    events::WorkoutCreated, testing::Example, timeout::TimeoutLayer, transport::AmqpPublish,
};
use tower::{ServiceBuilder, util::BoxCloneSyncService};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
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
        .organization_source(|| OrganizationId::parse("org-custom").ok())
        .build_with_delivery(BoxCloneSyncService::new(delivery));

    // A demo queue so the events are routable.
    let demo_queue =
        DemoQueue::declare_new("fitviz.events.custom_stack", "workout.#", &config).await?;

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
