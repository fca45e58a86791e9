//! `Topology` on the real broker: idempotent declares, a conflicting declare reported
//! as 406, and the unrouted queue keeping what no queue is bound for.
mod support;

use std::time::Duration;

use fitviz_events::topology::{
    ConsumerQueue, DeadLetterStrategy, DeadLettering, Topology, TopologyErrorKind,
    alternate_exchange_policy, unrouted_name,
};
use lapin::{BasicProperties, Connection, ConnectionProperties, options::BasicPublishOptions};
use support::{Leftovers, broker_url, unique};

async fn connect() -> Connection {
    Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .expect("connect")
}

/// Deletes, when dropped (also after a panic), `exchange`, its unrouted exchange and
/// queue, and each queue with its DLQ, DLX and retry queue.
fn leftovers(exchange: &str, queues: &[&ConsumerQueue]) -> Leftovers {
    let unrouted = unrouted_name(exchange);
    let mut names = vec![unrouted.clone()];
    for q in queues {
        names.push(q.name().to_owned());
        names.push(q.dlq_name());
        names.extend(q.retry_queue_name());
    }
    let mut exchanges = vec![exchange.to_owned(), unrouted];
    exchanges.extend(queues.iter().map(|q| q.dlx_name()));
    Leftovers {
        exchanges,
        queues: names,
    }
}

#[tokio::test]
async fn declaring_twice_is_no_error_and_a_conflicting_declare_is_reported_as_406() {
    require_broker!();
    let name = unique("topology_twice");
    let exchange = format!("{name}.x");
    let queue = ConsumerQueue::new(format!("{name}.q"))
        .bind("workout.*")
        .bind("booking.*")
        .delivery_limit(3)
        .retry_delay(Duration::from_secs(5))
        .expires(Duration::from_secs(300));
    let _leftovers = leftovers(&exchange, &[&queue]);
    let topology = Topology::new(&exchange).consumer_queue(queue.clone());
    let connection = connect().await;
    let first = topology.declare(&connection).await.expect("first declare");
    let second = topology.declare(&connection).await.expect("second declare");
    assert_eq!(first, second);
    assert!(first.declared.iter().any(|d| d.name == queue.dlq_name()));
    assert_eq!(first.unrouted, Some(unrouted_name(&exchange)));

    // The same queue with another delivery limit: frozen, 406, said clearly.
    let conflicting = Topology::new(&exchange).consumer_queue(queue.clone().delivery_limit(10));
    let err = conflicting
        .declare(&connection)
        .await
        .expect_err("conflicting declare");
    assert_eq!(err.kind(), TopologyErrorKind::Conflict, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("queue `{}`", queue.name())),
        "{text}"
    );
    assert!(text.contains("406"), "{text}");
    assert!(text.contains("x-delivery-limit"), "{text}");
    assert!(text.contains("policy"), "{text}");
    // The connection survives the refused declare.
    topology
        .declare(&connection)
        .await
        .expect("declare again after the conflict");

    // Policy mode needs the queue declared without those arguments: another 406.
    let policy_mode = Topology::new(&exchange)
        .consumer_queue(queue.clone().dead_lettering(DeadLettering::Policy));
    let err = policy_mode
        .declare(&connection)
        .await
        .expect_err("arguments differ");
    assert!(err.is_conflict(), "{err}");

    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn the_alternate_exchange_keeps_an_unroutable_event_in_the_unrouted_queue() {
    require_broker!();
    let name = unique("topology_ae");
    let exchange = format!("{name}.x");
    let _leftovers = leftovers(&exchange, &[]);
    let topology = Topology::new(&exchange);
    let connection = connect().await;
    topology.declare(&connection).await.expect("declare");

    // The broker-side alternate exchange, by the policy Topology gives (scoped to this
    // test's exchange name, cleared below).
    let policy = alternate_exchange_policy(&exchange);
    assert_eq!(topology.policies(), vec![policy.clone()]);
    let status = std::process::Command::new("rabbitmqctl")
        .args(policy.set_args("/"))
        .output()
        .expect("rabbitmqctl");
    assert!(status.status.success(), "{status:?}");

    let channel = connection.create_channel().await.unwrap();
    let unrouted = unrouted_name(&exchange);
    let mut kept = 0;
    for _ in 0..50 {
        channel
            .basic_publish(
                exchange.as_str().into(),
                "nobody.listens".into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default().with_message_id("m-1".into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        kept = support::queue_len(&connection, &unrouted)
            .await
            .expect("the unrouted queue exists");
        if kept > 0 {
            break;
        }
        // The policy reaches the exchange shortly after it is set.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::process::Command::new("rabbitmqctl")
        .args(policy.clear_args("/"))
        .output();
    assert!(
        kept >= 1,
        "the unroutable message was not kept in `{unrouted}`"
    );

    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_message_sent_to_the_retry_queue_comes_back_to_the_queue_after_the_delay() {
    require_broker!();
    let name = unique("topology_retry");
    let exchange = format!("{name}.x");
    let queue = ConsumerQueue::new(format!("{name}.q"))
        .bind("workout.*")
        .retry_delay(Duration::from_millis(300))
        .expires(Duration::from_secs(300));
    let _leftovers = leftovers(&exchange, &[&queue]);
    let connection = connect().await;
    Topology::new(&exchange)
        .consumer_queue(queue.clone())
        .declare(&connection)
        .await
        .expect("declare");
    let retry = queue.retry_queue_name().expect("a retry queue");
    // What a consumer does to retry a message later: publish it to `<queue>.retry`
    // through the default exchange (and ack the original).
    let channel = connection.create_channel().await.unwrap();
    let started = std::time::Instant::now();
    channel
        .basic_publish(
            "".into(),
            retry.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_message_id("retry-me".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    while support::queue_len(&connection, queue.name())
        .await
        .expect("the queue exists")
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the retried message never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "back after {:?}, before the delay",
        started.elapsed()
    );
    assert_eq!(
        support::queue_len(&connection, &retry)
            .await
            .expect("the retry queue exists"),
        0
    );
    let back = channel
        .basic_get(
            queue.name().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the message");
    assert_eq!(
        back.delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "retry-me"
    );
    let _ = connection.close(200, "done".into()).await;
}

/// A consumer queue declared before dead-lettering became at least once (issue 19) has
/// frozen arguments without `x-dead-letter-strategy`: declaring it with the new default
/// fails with 406 naming it; `AtLeastOnceByPolicy` declares it with the arguments it has
/// and prints the policy that applies the strategy, which the broker accepts and applies.
#[tokio::test]
async fn a_queue_declared_before_gets_at_least_once_dead_lettering_from_its_policy() {
    require_broker!();
    let name = unique("topology_strategy");
    let exchange = format!("{name}.x");
    let before = ConsumerQueue::new(format!("{name}.q"))
        .bind("workout.*")
        .dead_letter_strategy(DeadLetterStrategy::AtMostOnce)
        .expires(Duration::from_secs(300));
    let _leftovers = leftovers(&exchange, &[&before]);
    let connection = connect().await;
    let with = |queue: &ConsumerQueue| {
        Topology::new(&exchange)
            .without_unrouted()
            .consumer_queue(queue.clone())
    };
    with(&before).declare(&connection).await.expect("as before");

    let err = with(
        &before
            .clone()
            .dead_letter_strategy(DeadLetterStrategy::AtLeastOnce),
    )
    .declare(&connection)
    .await
    .expect_err("the arguments are frozen");
    assert!(err.is_conflict(), "{err}");
    assert!(err.to_string().contains("x-dead-letter-strategy"), "{err}");

    let migrated = before
        .clone()
        .dead_letter_strategy(DeadLetterStrategy::AtLeastOnceByPolicy);
    let report = with(&migrated)
        .declare(&connection)
        .await
        .expect("declared");
    let policy = migrated.policy().expect("the strategy's policy");
    assert_eq!(report.policies, vec![policy.command_line("/")]);
    assert_eq!(policy.definition["dead-letter-strategy"], "at-least-once");
    assert_eq!(policy.definition["overflow"], "reject-publish");
    let set = std::process::Command::new("rabbitmqctl")
        .args(policy.set_args("/"))
        .output()
        .expect("rabbitmqctl");
    assert!(set.status.success(), "{set:?}");
    let mut applied = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("rabbitmqctl")
            .args(["list_queues", "--silent", "name", "policy"])
            .output()
            .expect("rabbitmqctl");
        applied = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{}\t", migrated.name())))
            .unwrap_or_default()
            .to_owned();
        if applied == policy.name {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::process::Command::new("rabbitmqctl")
        .args(policy.clear_args("/"))
        .output();
    assert_eq!(applied, policy.name, "the policy applies to the queue");
    // Declaring it again is no error.
    with(&migrated).declare(&connection).await.expect("again");
    let _ = connection.close(200, "done".into()).await;
}
