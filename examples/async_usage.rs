//! Detached publishing (the original library's `async_publish`): `spawn` validates the
//! event at once and returns; a background worker publishes it, retrying while the
//! broker is unavailable; `close()` flushes what is pending and reports the rest.
//!
//! ```sh
//! cargo run --example async_usage
//! ```

mod common;

use common::DemoQueue;
use std::time::{Duration, Instant};

use fitviz_events::testing::Example;
use fitviz_events::{Event, EventPublisher, PublisherConfig, events::*};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let config = PublisherConfig {
        // A small queue that makes `spawn` wait up to 100 ms for room when it is full.
        detached_capacity: 1_000,
        detached_overflow_wait: Duration::from_millis(100),
        ..PublisherConfig::from_env()?
    };
    let publisher = EventPublisher::connect(config.clone()).await?;

    // A demo queue so the events are routable (the notification service binds its own).
    let demo_queue =
        DemoQueue::declare_new("fitviz.events.async_usage", "booking.#", &config).await?;

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
    let message_count = demo_queue.delete().await?;
    println!(
        "{message_count} events had arrived in {} (now deleted)",
        demo_queue.name()
    );
    Ok(())
}
