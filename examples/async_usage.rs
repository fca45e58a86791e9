//! Detached publishing (the original library's `async_publish`): `spawn` validates the
//! event at once and returns; a background worker publishes it, retrying while the
//! broker is unavailable; `close()` flushes what is pending and reports the rest.
//!
//! ```sh
//! cargo run --example async_usage
//! ```

use std::time::{Duration, Instant};

use fitviz_events::testing::Example;
use fitviz_events::{Event, EventPublisher, PublisherConfig, events::*};
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = PublisherConfig {
        // A small queue that makes `spawn` wait up to 100 ms for room when it is full.
        detached_capacity: 1_000,
        detached_overflow_wait: Duration::from_millis(100),
        ..PublisherConfig::from_env()?
    };
    let publisher = EventPublisher::connect(config.clone()).await?;

    // A demo queue so the events are routable (the notification service binds its own).
    let demo_queue = DemoQueue::declare("fitviz.events.async_usage", "booking.#", &config).await?;

    let started = Instant::now();
    for i in 0..500 {
        let mut booking = BookingConfirmed::example();
        booking.booking_id = format!("bk-{i}");
        publisher
            .spawn(Event::new(booking).with_organization("org-42"))
            .await?;
    }
    println!(
        "queued 500 events in {:?} (the caller never waited for the broker)",
        started.elapsed()
    );

    // A bad event is still reported to the caller, synchronously.
    let mut bad = BookingConfirmed::example();
    bad.member_id.clear();
    let error = publisher
        .spawn(Event::new(bad).with_organization("org-42"))
        .await
        .unwrap_err();
    println!("rejected at once: {error}");

    let report = publisher.close().await;
    println!(
        "closed after {:?}: {} published, {} refused, {} unsent",
        started.elapsed(),
        report.published,
        report.failed,
        report.unsent.len()
    );
    let queue = demo_queue.name;
    let message_count = demo_queue.delete().await?;
    println!("{message_count} events had arrived in {queue} (now deleted)");
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
