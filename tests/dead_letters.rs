//! Dead letters on the real broker: a rejected message lands in the DLQ (also when the
//! DLQ was missing at the time), listing it keeps it there, and replay moves it back to
//! its queue exactly once, reporting what it moved also when it stops on an error.
mod support;

use std::time::{Duration, Instant};

use fitviz_events::topology::{
    ConsumerQueue, DeadLetterStrategy, Topology, TopologyErrorKind,
    dead_letters::{self, ReplayTo},
};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicRejectOptions,
        ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use support::{Leftovers, broker_url, publish_and_reject, queue_len, replay_publisher, unique};

/// The queue's length once it is `expected`, or after 2 s.
async fn eventually(connection: &Connection, queue: &str, expected: u32) -> u32 {
    let mut n = 0;
    for _ in 0..40 {
        n = queue_len(connection, queue)
            .await
            .expect("the queue exists");
        if n == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n
}

#[tokio::test]
async fn a_rejected_message_lands_in_the_dlq_and_replay_moves_it_back_exactly_once() {
    require_broker!();
    let name = unique("dead_letters");
    let exchange = format!("{name}.x");
    let queue = ConsumerQueue::new(format!("{name}.q"))
        .bind("workout.*")
        .expires(Duration::from_secs(300));
    let _leftovers = Leftovers {
        exchanges: vec![
            exchange.clone(),
            queue.dlx_name(),
            format!("{exchange}.unrouted"),
        ],
        queues: vec![
            queue.name().to_owned(),
            queue.dlq_name(),
            format!("{exchange}.unrouted"),
        ],
    };
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .unwrap();
    Topology::new(&exchange)
        .consumer_queue(queue.clone())
        .declare(&connection)
        .await
        .expect("declare");

    // Publish an event, a consumer rejects it (requeue = false): dead-lettered.
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            exchange.as_str().into(),
            "workout.created".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            br#"{"event_type":"workout.created"}"#,
            BasicProperties::default()
                .with_message_id("evt-1".into())
                .with_type("workout.created".into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let got = channel
        .basic_get(queue.name().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the event");
    got.delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dlq = queue.dlq_name();
    assert_eq!(
        eventually(&connection, &dlq, 1).await,
        1,
        "the rejected message is in the DLQ"
    );

    // Listing shows why and where from, and leaves it there.
    let admin = connection.create_channel().await.unwrap();
    let letters = dead_letters::list(&admin, &dlq, 10).await.expect("list");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message_id.as_deref(), Some("evt-1"));
    assert_eq!(letters[0].event_type.as_deref(), Some("workout.created"));
    let death = &letters[0].deaths[0];
    assert_eq!(death.queue, queue.name());
    assert_eq!(death.reason, "rejected");
    assert_eq!(death.count, 1);
    assert_eq!(death.exchange, exchange);
    assert_eq!(death.routing_keys, vec!["workout.created".to_owned()]);
    // (A requeued message is ready again a moment after the nack.)
    assert_eq!(eventually(&connection, &dlq, 1).await, 1, "listing kept it");
    // Twice: the same.
    assert_eq!(dead_letters::list(&admin, &dlq, 10).await.unwrap().len(), 1);

    // Replay: back to its queue, once, same message_id; the DLQ is empty.
    let publisher = replay_publisher(&name, &exchange).await;
    let report = dead_letters::replay(&admin, &publisher, &dlq, ReplayTo::Queue, None)
        .await
        .expect("replay");
    assert_eq!(report.replayed.len(), 1);
    assert_eq!(report.replayed[0].routing_key, queue.name());
    assert_eq!(report.replayed[0].exchange, "");
    assert_eq!(queue_len(&connection, &dlq).await, Some(0));
    let again = dead_letters::replay(&admin, &publisher, &dlq, ReplayTo::Queue, None)
        .await
        .unwrap();
    assert!(again.replayed.is_empty());

    let mut consumer = channel
        .basic_consume(
            queue.name().into(),
            "dead-letters-test".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
    {
        seen.push(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string()),
        );
    }
    assert_eq!(seen, vec![Some("evt-1".to_owned())], "seen exactly once");

    publisher.close().await;
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn replay_to_the_exchange_reaches_every_bound_queue() {
    require_broker!();
    let name = unique("dead_letters_exchange");
    let exchange = format!("{name}.x");
    let queue = ConsumerQueue::new(format!("{name}.q"))
        .bind("workout.*")
        .expires(Duration::from_secs(300));
    let other = ConsumerQueue::new(format!("{name}.other"))
        .bind("workout.created")
        .expires(Duration::from_secs(300));
    let _leftovers = Leftovers {
        exchanges: vec![
            exchange.clone(),
            queue.dlx_name(),
            other.dlx_name(),
            format!("{exchange}.unrouted"),
        ],
        queues: vec![
            queue.name().to_owned(),
            queue.dlq_name(),
            other.name().to_owned(),
            other.dlq_name(),
            format!("{exchange}.unrouted"),
        ],
    };
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .unwrap();
    Topology::new(&exchange)
        .without_unrouted()
        .consumer_queue(queue.clone())
        .consumer_queue(other.clone())
        .declare(&connection)
        .await
        .expect("declare");
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            exchange.as_str().into(),
            "workout.created".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_message_id("evt-x".into()),
        )
        .await
        .unwrap();
    assert_eq!(eventually(&connection, queue.name(), 1).await, 1);
    assert_eq!(eventually(&connection, other.name(), 1).await, 1);
    let got = channel
        .basic_get(queue.name().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the event");
    got.delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    assert_eq!(eventually(&connection, &queue.dlq_name(), 1).await, 1);

    let admin = connection.create_channel().await.unwrap();
    let publisher = replay_publisher(&name, &exchange).await;
    let report = dead_letters::replay(
        &admin,
        &publisher,
        &queue.dlq_name(),
        ReplayTo::Exchange,
        None,
    )
    .await
    .expect("replay");
    assert_eq!(report.replayed.len(), 1);
    assert_eq!(report.replayed[0].exchange, exchange);
    assert_eq!(report.replayed[0].routing_key, "workout.created");
    // Both bound queues get it: `other` now holds two copies.
    assert_eq!(eventually(&connection, queue.name(), 1).await, 1);
    assert_eq!(eventually(&connection, other.name(), 2).await, 2);
    assert_eq!(eventually(&connection, &queue.dlq_name(), 0).await, 0);
    publisher.close().await;
    let _ = connection.close(200, "done".into()).await;
}

/// A queue replayed into itself is not replayed forever (issue 19): after a replay from
/// the DLQ back into the queue, the message's `x-death` names that queue. Replaying the
/// queue itself to that queue leaves the message in place; replaying it to the exchange
/// the queue is bound to moves it once (the copy lands back in the queue) and stops.
#[tokio::test]
async fn a_queue_replayed_into_itself_is_replayed_at_most_once() {
    require_broker!();
    let name = unique("dead_letters_self");
    let exchange = format!("{name}.x");
    let queue = ConsumerQueue::new(format!("{name}.q"))
        .bind("workout.*")
        .expires(Duration::from_secs(300));
    let _leftovers = Leftovers {
        exchanges: vec![
            exchange.clone(),
            queue.dlx_name(),
            format!("{exchange}.unrouted"),
        ],
        queues: vec![
            queue.name().to_owned(),
            queue.dlq_name(),
            format!("{exchange}.unrouted"),
        ],
    };
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .unwrap();
    Topology::new(&exchange)
        .consumer_queue(queue.clone())
        .declare(&connection)
        .await
        .expect("declare");
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            exchange.as_str().into(),
            "workout.created".into(),
            BasicPublishOptions::default(),
            br#"{"event_type":"workout.created"}"#,
            BasicProperties::default()
                .with_message_id("evt-self".into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let got = channel
        .basic_get(queue.name().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the event");
    got.delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dlq = queue.dlq_name();
    assert_eq!(eventually(&connection, &dlq, 1).await, 1);
    let admin = connection.create_channel().await.unwrap();
    let publisher = replay_publisher(&name, &exchange).await;
    let back = dead_letters::replay(&admin, &publisher, &dlq, ReplayTo::Queue, None)
        .await
        .unwrap();
    assert_eq!(back.replayed.len(), 1);
    assert_eq!(eventually(&connection, queue.name(), 1).await, 1);

    // Its x-death names the queue: replaying the queue to "its queue" would loop.
    let bounded = Duration::from_secs(10);
    let report = tokio::time::timeout(
        bounded,
        dead_letters::replay(&admin, &publisher, queue.name(), ReplayTo::Queue, Some(200)),
    )
    .await
    .expect("the replay ends")
    .unwrap();
    assert!(report.replayed.is_empty(), "{report:?}");
    assert_eq!(report.into_itself, vec![Some("evt-self".to_owned())]);
    assert_eq!(eventually(&connection, queue.name(), 1).await, 1);

    // To the exchange the queue is bound to: moved once, the copy is not moved again.
    let report = tokio::time::timeout(
        bounded,
        dead_letters::replay(&admin, &publisher, queue.name(), ReplayTo::Exchange, None),
    )
    .await
    .expect("the replay ends")
    .unwrap();
    assert_eq!(report.replayed.len(), 1, "{report:?}");
    assert_eq!(
        eventually(&connection, queue.name(), 1).await,
        1,
        "one copy"
    );
    publisher.close().await;
    let _ = connection.close(200, "done".into()).await;
}

/// Dead letters are not lost on the way to the DLQ (issue 19): a message rejected from
/// a consumer queue while its dead-letter exchange and queue are gone waits in the queue
/// and reaches the DLQ once they exist again — the broker retries on a timer
/// (`dead_letter_worker_publisher_confirm_timeout`, 180 s on RabbitMQ 3.10: measured
/// here at 180.0 s after the rejection, the DLQ having been declared again after ~2 s).
/// The same with `AtMostOnce` (how queues were declared before) loses it. This test
/// waits for the broker's timer: about three minutes.
#[tokio::test]
async fn a_message_rejected_while_its_dlq_is_missing_reaches_it_once_the_dlq_exists() {
    require_broker!();
    let name = unique("dead_letters_alo");
    let exchange = format!("{name}.x");
    let idle = Duration::from_secs(900);
    let safe = ConsumerQueue::new(format!("{name}.q"))
        .bind("workout.*")
        .expires(idle);
    let lossy = ConsumerQueue::new(format!("{name}.amo"))
        .bind("workout.*")
        .dead_letter_strategy(DeadLetterStrategy::AtMostOnce)
        .expires(idle);
    let mut exchanges = vec![exchange.clone(), format!("{exchange}.unrouted")];
    let mut queues = vec![format!("{exchange}.unrouted")];
    for q in [&safe, &lossy] {
        exchanges.push(q.dlx_name());
        queues.extend([q.name().to_owned(), q.dlq_name()]);
    }
    let _leftovers = Leftovers { exchanges, queues };
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let topology = Topology::new(&exchange)
        .without_unrouted()
        .consumer_queue(safe.clone())
        .consumer_queue(lossy.clone());
    topology.declare(&connection).await.expect("declare");

    // The dead-letter target goes missing: the DLQ and its exchange are deleted.
    let channel = connection.create_channel().await.unwrap();
    for q in [&safe, &lossy] {
        channel
            .queue_delete(q.dlq_name().as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        let _ = channel
            .exchange_delete(
                q.dlx_name().as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let channel = connection.create_channel().await.unwrap();
    publish_and_reject(&channel, safe.name(), "evt-safe").await;
    let rejected = Instant::now();
    publish_and_reject(&channel, lossy.name(), "evt-lossy").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(queue_len(&connection, &safe.dlq_name()).await, None);

    // The target is back (declaring the topology again), empty at first.
    topology.declare(&connection).await.expect("declare again");
    let redeclared = rejected.elapsed();
    assert_eq!(queue_len(&connection, &safe.dlq_name()).await, Some(0));
    let mut arrived = None;
    while rejected.elapsed() < Duration::from_secs(240) {
        if queue_len(&connection, &safe.dlq_name()).await == Some(1) {
            arrived = Some(rejected.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "target declared again {redeclared:?} after the rejection; arrived after {arrived:?}"
    );
    let arrived = arrived.expect("the dead letter never reached the DLQ: it was dropped");
    assert!(arrived > redeclared, "{arrived:?}");

    // It is the rejected message, with its x-death.
    let admin = connection.create_channel().await.unwrap();
    let letters = dead_letters::list(&admin, &safe.dlq_name(), 10)
        .await
        .expect("list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].message_id.as_deref(), Some("evt-safe"));
    assert_eq!(letters[0].deaths[0].queue, safe.name());
    assert_eq!(letters[0].deaths[0].reason, "rejected");
    // At most once, the same rejection was dropped for good.
    assert_eq!(queue_len(&connection, &lossy.dlq_name()).await, Some(0));
    assert_eq!(queue_len(&connection, lossy.name()).await, Some(0));
    let _ = connection.close(200, "done".into()).await;
}

/// A replay interrupted by an error still reports what it moved (issue 19): the DLQ
/// holds a dead letter of its own queue, then one of a queue deleted since (its copy is
/// returned: no queue), then another; the replay moves the first, fails on the second,
/// and its error carries the report naming the first.
#[tokio::test]
async fn a_replay_stopped_by_an_error_reports_what_it_moved() {
    require_broker!();
    let name = unique("dead_letters_partial");
    let exchange = format!("{name}.x");
    let queue = ConsumerQueue::new(format!("{name}.q"))
        .bind("workout.*")
        .expires(Duration::from_secs(300));
    let gone = format!("{name}.gone");
    let _leftovers = Leftovers {
        exchanges: vec![exchange.clone(), queue.dlx_name()],
        queues: vec![queue.name().to_owned(), queue.dlq_name(), gone.clone()],
    };
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .unwrap();
    Topology::new(&exchange)
        .without_unrouted()
        .consumer_queue(queue.clone())
        .declare(&connection)
        .await
        .expect("declare");
    let dlq = queue.dlq_name();
    let channel = connection.create_channel().await.unwrap();
    dead_letter_three(&connection, &channel, &queue, &gone).await;

    let admin = connection.create_channel().await.unwrap();
    let publisher = replay_publisher(&name, &exchange).await;
    let error = dead_letters::replay(&admin, &publisher, &dlq, ReplayTo::Queue, None)
        .await
        .expect_err("the second target is gone");
    assert_eq!(error.kind(), TopologyErrorKind::Refused, "{error}");
    assert!(error.to_string().contains(&format!("`{gone}`")), "{error}");
    assert!(
        error
            .to_string()
            .contains("1 dead letter(s) had been replayed"),
        "{error}"
    );
    let report = error.replay_report().expect("the partial report");
    let moved: Vec<_> = report
        .replayed
        .iter()
        .map(|r| r.message_id.clone())
        .collect();
    assert_eq!(moved, vec![Some("evt-1".to_owned())]);
    assert_eq!(report.replayed[0].routing_key, queue.name());
    // What it reports is what happened: the first moved, the other two still there.
    assert_eq!(eventually(&connection, queue.name(), 1).await, 1);
    assert_eq!(eventually(&connection, &dlq, 2).await, 2);
    // The publisher's policy keeps unroutable events in `<exchange>.unrouted` (the
    // default); a replayed copy is never kept there: the exchange was not even declared.
    assert_eq!(
        queue_len(&connection, &format!("{exchange}.unrouted")).await,
        None
    );
    publisher.close().await;
    let _ = connection.close(200, "done".into()).await;
}

/// The replay goes through the publisher's delivery stack (issue 21): a broker that
/// takes the copy and never answers (a black-holed connection behind the fault proxy)
/// ends the replay within the publish deadline with a connection error — it does not
/// hang — and the dead letter stays; once the broker answers again, the same replay
/// moves it.
#[tokio::test]
async fn a_replay_through_a_silent_broker_ends_within_the_publish_deadline() {
    require_broker!();
    let name = unique("dead_letters_deadline");
    let exchange = format!("{name}.x");
    let queue = ConsumerQueue::new(format!("{name}.q"))
        .bind("workout.*")
        .expires(Duration::from_secs(300));
    let _leftovers = Leftovers {
        exchanges: vec![exchange.clone(), queue.dlx_name()],
        queues: vec![queue.name().to_owned(), queue.dlq_name()],
    };
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .unwrap();
    Topology::new(&exchange)
        .without_unrouted()
        .consumer_queue(queue.clone())
        .declare(&connection)
        .await
        .expect("declare");
    let channel = connection.create_channel().await.unwrap();
    publish_and_reject(&channel, queue.name(), "evt-silent").await;
    let dlq = queue.dlq_name();
    assert_eq!(eventually(&connection, &dlq, 1).await, 1);

    let proxy = support::proxy::FaultProxy::start(&support::broker_addr()).await;
    let deadline = Duration::from_secs(2);
    let publisher = fitviz_events::EventPublisher::connect(fitviz_events::PublisherConfig {
        url: proxy.amqp_url().parse().unwrap(),
        exchange: exchange.clone(),
        connection_name: Some(format!("{name}.replay")),
        publish_timeout: deadline,
        confirm_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .await
    .expect("connect through the proxy");
    let admin = connection.create_channel().await.unwrap();
    proxy.black_hole();
    let started = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(20),
        dead_letters::replay(&admin, &publisher, &dlq, ReplayTo::Queue, None),
    )
    .await
    .expect("the replay ends")
    .expect_err("nothing is confirmed");
    let took = started.elapsed();
    eprintln!("replay into a black hole ended after {took:?}: {error}");
    assert_eq!(error.kind(), TopologyErrorKind::Connection, "{error}");
    assert!(
        error.to_string().contains("the dead letter stays"),
        "{error}"
    );
    assert!(
        std::error::Error::source(&error).is_some(),
        "the publish error is the source"
    );
    assert!(took < deadline + Duration::from_secs(2), "{took:?}");
    let report = error.replay_report().expect("a report");
    assert!(report.replayed.is_empty(), "{report:?}");
    assert_eq!(eventually(&connection, &dlq, 1).await, 1, "it stays");

    // The broker answers again: the same replay moves it.
    proxy.heal();
    let mut moved = None;
    for _ in 0..20 {
        match dead_letters::replay(&admin, &publisher, &dlq, ReplayTo::Queue, None).await {
            Ok(report) => {
                moved = Some(report);
                break;
            }
            Err(error) => {
                eprintln!("not yet: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let moved = moved.expect("replayed once the broker answers");
    assert_eq!(moved.replayed.len(), 1, "{moved:?}");
    assert_eq!(eventually(&connection, &dlq, 0).await, 0);
    assert_eq!(eventually(&connection, queue.name(), 1).await, 1);
    publisher.close().await;
    let _ = connection.close(200, "done".into()).await;
}

/// Fills `queue`'s DLQ with `evt-1` (from `queue`), `evt-2` (from `gone`, a queue that
/// dead-letters into the same exchange, deleted afterwards) and `evt-3` (from `queue`).
async fn dead_letter_three(
    connection: &Connection,
    channel: &lapin::Channel,
    queue: &ConsumerQueue,
    gone: &str,
) {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(queue.dlx_name().as_str().into()),
    );
    args.insert("x-expires".into(), AMQPValue::LongLongInt(300_000));
    channel
        .queue_declare(
            gone.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let dlq = queue.dlq_name();
    publish_and_reject(channel, queue.name(), "evt-1").await;
    assert_eq!(eventually(connection, &dlq, 1).await, 1);
    publish_and_reject(channel, gone, "evt-2").await;
    assert_eq!(eventually(connection, &dlq, 2).await, 2);
    publish_and_reject(channel, queue.name(), "evt-3").await;
    assert_eq!(eventually(connection, &dlq, 3).await, 3);
    channel
        .queue_delete(gone.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}
