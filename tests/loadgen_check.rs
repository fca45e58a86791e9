//! The consumer side of `scripts/cluster-loadgen-check.sh`: reads loadgen's kept quorum
//! queue through a node that stayed up and checks that every id loadgen reported
//! confirmed (`--confirmed-ids`) is in it; then deletes the queue and the exchange.
//! Run only by that script, which sets `FITVIZ_CHECK_URL`, `FITVIZ_CHECK_QUEUE`,
//! `FITVIZ_CHECK_EXCHANGE` and `FITVIZ_CHECK_IDS`.

mod support;

use std::collections::HashSet;

use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: this test is run by scripts/cluster-loadgen-check.sh")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by scripts/cluster-loadgen-check.sh (under the cluster harness)"]
async fn loadgen_confirmed_ids_are_in_the_queue() {
    let (url, queue, exchange) = (
        var("FITVIZ_CHECK_URL"),
        var("FITVIZ_CHECK_QUEUE"),
        var("FITVIZ_CHECK_EXCHANGE"),
    );
    let confirmed: HashSet<String> = std::fs::read_to_string(var("FITVIZ_CHECK_IDS"))
        .expect("read the confirmed ids")
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(!confirmed.is_empty(), "loadgen confirmed nothing");
    let connection = Connection::connect(
        &url,
        ConnectionProperties::default().with_connection_name("fitviz loadgen check".into()),
    )
    .await
    .expect("connect to a node that stayed up");
    let channel = connection.create_channel().await.unwrap();
    let (seen, messages) = support::consume_ids(&channel, &queue, &confirmed).await;
    let missing = confirmed.difference(&seen).count();
    eprintln!(
        "MEASURED loadgen check: {} confirmed ids, {messages} messages read, {missing} missing",
        confirmed.len()
    );
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    assert_eq!(missing, 0, "confirmed events missing from the queue");
}
