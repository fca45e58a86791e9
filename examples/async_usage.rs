//! Detached publishing (the original library's `async_publish`): `spawn` validates the
//! event at once and returns; a background worker publishes it, retrying while the
//! broker is unavailable; `close()` flushes what is pending and reports the rest.
//!
//! ```sh
//! cargo run --example async_usage
//! ```

use std::time::{Duration, Instant};

use fitviz_events::{DetachedConfig, Event, EventPublisher, Overflow, PublisherConfig, events::*};
use lapin::{
    Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = PublisherConfig::from_env()?;
    let publisher = EventPublisher::builder(config.clone())
        .detached(
            DetachedConfig::default()
                .capacity(1_000)
                .overflow(Overflow::Wait(Duration::from_millis(100))),
        )
        .connect()
        .await?;

    // A demo queue so the events are routable (the notification service binds its own).
    let connection =
        Connection::connect(config.url.expose_secret(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = "fitviz.events.async_usage";
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
    let message_count = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    println!("{message_count} events waiting in {queue}");
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    connection.close(200, "done".into()).await?;
    Ok(())
}
