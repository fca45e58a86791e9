//! Consumers' offsets in PostgreSQL next to their work (issue 22): a consumer reads the
//! archive, records each event it handles and its offset in one transaction, "crashes"
//! half-way (a transaction rolled back: neither the work nor the offset moves), and a
//! new instance resumes after the stored offset — every event handled exactly once.
#![cfg(feature = "outbox-postgres")]

mod support;

use std::time::Duration;

use fitviz_events::{
    Event, EventPublisher,
    config::ArchivePatterns,
    events::WorkoutCreated,
    replay::{OffsetStore, PostgresOffsets, Replay, ReplayFrom},
    testing::Example,
    topology::{ArchiveStream, archive_name},
};
use support::{Leftovers, postgres, unique};

#[tokio::test]
async fn a_consumer_resumes_after_its_stored_offset_and_handles_each_event_once() {
    require_broker!();
    require_postgres!();
    let name = unique("replay_offsets");
    let exchange = format!("{name}.x");
    let _leftovers = Leftovers {
        exchanges: vec![exchange.clone()],
        queues: vec![archive_name(&exchange)],
    };
    let connection = support::declare_archive(
        &exchange,
        ArchiveStream::default()
            .max_bytes(10_000_000)
            .segment_bytes(1_000_000),
    )
    .await;
    let config = support::archive_config(&name, &exchange, ArchivePatterns::all());
    let publisher = EventPublisher::connect(config.clone()).await.unwrap();
    let events: Vec<Event> = (0..200)
        .map(|_| Event::new(WorkoutCreated::example()).with_organization("org-offsets"))
        .collect();
    for result in publisher.publish_batch(events).await {
        result.unwrap();
    }
    publisher.close().await;

    let schema = postgres::unique_schema("replay_offsets");
    let pool = deadpool_postgres::Config {
        url: Some(postgres::pg_url()),
        ..Default::default()
    }
    .create_pool(
        Some(deadpool_postgres::Runtime::Tokio1),
        tokio_postgres::NoTls,
    )
    .unwrap();
    let offsets = PostgresOffsets::new(pool.clone(), &schema).unwrap();
    offsets.migrate().await.unwrap();
    offsets.migrate().await.expect("idempotent");
    let mut db = postgres::client().await;
    db.batch_execute(&format!(
        "CREATE TABLE {schema}.handled (event_id uuid PRIMARY KEY, \"offset\" bigint NOT NULL)"
    ))
    .await
    .unwrap();
    assert!(PostgresOffsets::new(pool.clone(), "Bad-Schema").is_err());

    // First instance: handles 120 events, each in a transaction with its offset; the
    // 121st transaction rolls back (the process "dies" before its commit).
    let consumer = "search-indexer";
    assert_eq!(offsets.load(consumer).await.unwrap(), None);
    let mut stream = Replay::new(&exchange)
        .from(ReplayFrom::after(offsets.load(consumer).await.unwrap()))
        .open(&config)
        .await
        .unwrap();
    for n in 0..121 {
        let event = stream.next().await.unwrap().unwrap();
        let tx = db.transaction().await.unwrap();
        tx.execute(
            &format!("INSERT INTO {schema}.handled VALUES ($1, $2)"),
            &[&event.event_id, &(event.offset as i64)],
        )
        .await
        .unwrap();
        offsets.save_in(&tx, consumer, event.offset).await.unwrap();
        if n < 120 {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
    }
    stream.close().await;
    assert_eq!(offsets.load(consumer).await.unwrap(), Some(119));

    // Second instance: resumes after the stored offset, to the head.
    let from = ReplayFrom::after(offsets.load(consumer).await.unwrap());
    assert_eq!(from, ReplayFrom::Offset(120));
    let mut stream = Replay::new(&exchange)
        .from(from)
        .open(&config)
        .await
        .unwrap();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the replay ends")
    {
        let event = event.unwrap();
        let tx = db.transaction().await.unwrap();
        tx.execute(
            &format!("INSERT INTO {schema}.handled VALUES ($1, $2)"),
            &[&event.event_id, &(event.offset as i64)],
        )
        .await
        .expect("never handled twice (primary key)");
        offsets.save_in(&tx, consumer, event.offset).await.unwrap();
        tx.commit().await.unwrap();
    }
    let handled: i64 = db
        .query_one(&format!("SELECT count(*) FROM {schema}.handled"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(handled, 200, "each event handled once");
    assert_eq!(offsets.load(consumer).await.unwrap(), Some(199));
    offsets.save(consumer, 5).await.unwrap();
    assert_eq!(
        offsets.load(consumer).await.unwrap(),
        Some(5),
        "save outside a transaction"
    );
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}
