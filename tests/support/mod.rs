//! Shared helpers for the broker tests: broker discovery, unique topology per test,
//! and a consumer to read back what was published.
#![allow(dead_code)]

pub mod harness;
pub mod postgres;
pub mod proxy;

use std::{collections::HashSet, time::Duration};

use fitviz_events::PublisherConfig;
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicConsumeOptions, BasicGetOptions, BasicQosOptions, ExchangeDeclareOptions,
        ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn broker_url() -> String {
    std::env::var("FITVIZ_EVENTS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Host and port of the broker, for the fault proxy.
pub fn broker_addr() -> String {
    let url = url::Url::parse(&broker_url()).expect("broker url");
    format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5672)
    )
}

/// Whether the broker answers. In CI (`CI` set) a missing broker fails the test;
/// elsewhere the test is skipped with a loud message.
pub async fn broker_available() -> bool {
    let reachable = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(broker_addr()),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if reachable {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "CI is set but RabbitMQ is not reachable at {}: broker tests must run in CI",
            broker_addr()
        );
    }
    eprintln!(
        "\n\n************************************************************\n\
         SKIPPING broker test: RabbitMQ is not reachable at {}.\n\
         Start it (rabbitmq-server -detached) to run this test.\n\
         ************************************************************\n",
        broker_addr()
    );
    false
}

/// Returns from the test when there is no broker (outside CI).
#[macro_export]
macro_rules! require_broker {
    () => {
        if !$crate::support::broker_available().await {
            return;
        }
    };
}

/// Closes, from the broker side, every connection whose client-provided name is
/// `name` (with `rabbitmqctl`, scoped so that parallel tests are not disturbed).
/// Returns how many were closed.
pub async fn close_connections_named(name: &str) -> usize {
    let mut closed = 0;
    for _ in 0..50 {
        let out = tokio::process::Command::new("rabbitmqctl")
            .args(["list_connections", "--silent", "pid", "client_properties"])
            .output()
            .await
            .expect("run rabbitmqctl");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            let Some((pid, properties)) = line.split_once('\t') else {
                continue;
            };
            if properties.contains(&format!("{{\"connection_name\",\"{name}\"}}")) {
                let status = tokio::process::Command::new("rabbitmqctl")
                    .args([
                        "close_connection",
                        pid.trim(),
                        "fitviz-events test: broker-side kill",
                    ])
                    .status()
                    .await
                    .expect("run rabbitmqctl");
                if status.success() {
                    closed += 1;
                }
            }
        }
        if closed > 0 {
            return closed;
        }
        // The broker lists a new connection after a short delay.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    closed
}

/// Declares `exchange` as the publisher does (a durable topic exchange) and `queue`
/// (with `args`) bound to it with `binding`.
pub async fn declare_bound_queue(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    binding: &str,
    durable_queue: bool,
    args: FieldTable,
) {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: durable_queue,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declare queue");
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind queue");
}

/// Reads `queue` (auto-ack) until every id of `expected` was seen (or nothing came for
/// 5 s); returns the ids seen and the number of messages read.
pub async fn consume_ids(
    channel: &Channel,
    queue: &str,
    expected: &HashSet<String>,
) -> (HashSet<String>, usize) {
    read_ids(channel, queue, expected, None).await
}

/// Like [`consume_ids`], then reads on until the queue has been quiet for a second:
/// every message, duplicates included, is counted.
pub async fn drain_ids(
    channel: &Channel,
    queue: &str,
    expected: &HashSet<String>,
) -> (HashSet<String>, usize) {
    read_ids(channel, queue, expected, Some(Duration::from_secs(1))).await
}

/// Reads `queue` until every id of `expected` was seen, then, with `quiet`, on until
/// nothing came for that long.
async fn read_ids(
    channel: &Channel,
    queue: &str,
    expected: &HashSet<String>,
    quiet: Option<Duration>,
) -> (HashSet<String>, usize) {
    channel
        .basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "fitviz-test-consumer".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume the queue");
    let (mut seen, mut messages) = (HashSet::new(), 0);
    loop {
        let idle = match (expected.is_subset(&seen), quiet) {
            (false, _) => Duration::from_secs(5),
            (true, Some(quiet)) => quiet,
            (true, None) => break,
        };
        match tokio::time::timeout(idle, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                messages += 1;
                if let Some(id) = delivery.properties.message_id() {
                    seen.insert(id.to_string());
                }
            }
            Ok(Some(Err(e))) => panic!("consumer: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    (seen, messages)
}

/// A name unique to this test run.
pub fn unique(test: &str) -> String {
    format!("fvtest.{test}.{}", uuid::Uuid::now_v7().simple())
}

/// A test's own exchange, queue and connection name, deleted by [`Fixture::cleanup`].
pub struct Fixture {
    cleaned: bool,
    pub name: String,
    pub exchange: String,
    pub queue: String,
    pub connection: Connection,
    pub channel: Channel,
}

impl Fixture {
    /// Declares a durable topic exchange and a queue bound to it with `binding`.
    pub async fn new(test: &str, binding: &str) -> Self {
        Self::with_queue_args(test, binding, FieldTable::default()).await
    }

    pub async fn with_queue_args(test: &str, binding: &str, mut args: FieldTable) -> Self {
        let name = unique(test);
        let connection = Connection::connect(
            &broker_url(),
            ConnectionProperties::default().with_connection_name(format!("{name}.fixture").into()),
        )
        .await
        .expect("connect to the broker");
        let channel = connection.create_channel().await.expect("channel");
        let exchange = format!("{name}.x");
        let queue = format!("{name}.q");
        // Safety net: the queue disappears 5 minutes after a crashed test.
        args.insert("x-expires".into(), AMQPValue::LongInt(300_000));
        let durable = std::env::var_os("FV_TRANSIENT").is_none();
        declare_bound_queue(&channel, &exchange, &queue, binding, durable, args).await;
        Self {
            cleaned: false,
            name,
            exchange,
            queue,
            connection,
            channel,
        }
    }

    /// A publisher configuration for this fixture's exchange and a unique connection name.
    pub fn config(&self) -> PublisherConfig {
        PublisherConfig {
            url: broker_url()
                .parse()
                .expect("FITVIZ_EVENTS_URL is a broker url"),
            exchange: self.exchange.clone(),
            connection_name: Some(format!("{}.publisher", self.name)),
            // These tests were written for unroutable events as errors; the default
            // (kept in `<exchange>.unrouted`) is tested in tests/unroutable.rs.
            unroutable: fitviz_events::config::UnroutablePolicy::Error,
            ..Default::default()
        }
    }

    /// Messages waiting in the queue.
    pub async fn queue_len(&self) -> u32 {
        self.channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
    }

    /// Takes every message from the queue (acking them).
    pub async fn drain(&self) -> Vec<(Vec<u8>, BasicProperties)> {
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            out.push((
                message.delivery.data.clone(),
                message.delivery.properties.clone(),
            ));
        }
        out
    }

    /// Deletes the queue and exchange and closes the connection.
    pub async fn cleanup(mut self) {
        delete_topology(&self.channel, &self.queue, &self.exchange).await;
        let _ = self.connection.close(200, "test done".into()).await;
        self.cleaned = true;
    }
}

async fn delete_topology(channel: &Channel, queue: &str, exchange: &str) {
    let unrouted = format!("{exchange}.unrouted");
    for queue in [queue, unrouted.as_str()] {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(unrouted.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}

impl Drop for Fixture {
    /// A test that failed before `cleanup` still leaves the broker clean: the
    /// topology is deleted over a fresh connection from a thread of its own.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (queue, exchange) = (self.queue.clone(), self.exchange.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let url = broker_url();
                let connect = Connection::connect(&url, ConnectionProperties::default());
                if let Ok(Ok(connection)) =
                    tokio::time::timeout(Duration::from_secs(5), connect).await
                {
                    if let Ok(channel) = connection.create_channel().await {
                        delete_topology(&channel, &queue, &exchange).await;
                    }
                    let _ = connection.close(200, "test cleanup".into()).await;
                }
            });
        })
        .join();
    }
}

/// A `tracing` writer that keeps what is logged, for tests that read the logs.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// A subscriber writing events up to `level`, without colours, into this capture.
    pub fn subscriber(&self, level: tracing::Level) -> impl tracing::Subscriber + Send + Sync {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Exchanges and queues a test deletes when dropped, also after a panic: for tests that
/// declare their topology through `fitviz_events::topology` rather than a [`Fixture`].
pub struct Leftovers {
    pub exchanges: Vec<String>,
    pub queues: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let (exchanges, queues) = (self.exchanges.clone(), self.queues.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let url = broker_url();
                let connect = Connection::connect(&url, ConnectionProperties::default());
                let Ok(Ok(connection)) =
                    tokio::time::timeout(Duration::from_secs(5), connect).await
                else {
                    return;
                };
                if let Ok(channel) = connection.create_channel().await {
                    for queue in &queues {
                        let _ = channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                    for exchange in &exchanges {
                        let _ = channel
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                }
                let _ = connection.close(200, "test cleanup".into()).await;
            });
        })
        .join();
    }
}

/// Publishes a message with `message_id` `id` straight to `queue` (default exchange,
/// with a confirm), takes it and rejects it without requeue: the broker dead-letters
/// it as the queue's arguments say.
pub async fn publish_and_reject(channel: &Channel, queue: &str, id: &str) {
    use lapin::options::{BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions};
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"{}",
            BasicProperties::default()
                .with_message_id(id.into())
                .with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(
        matches!(confirm, lapin::Confirmation::Ack(None)),
        "{id} not routed to {queue}: {confirm:?}"
    );
    let got = loop {
        if let Some(got) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get")
        {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some(id)
    );
    got.delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
}

/// The number of messages in `queue` (a passive declare on a channel of its own), or
/// `None` when it does not exist.
pub async fn queue_len(connection: &Connection, queue: &str) -> Option<u32> {
    let channel = connection.create_channel().await.expect("channel");
    let n = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()
        .map(|ok| ok.message_count());
    if channel.status().connected() {
        let _ = channel.close(200, "".into()).await;
    }
    n
}

/// A publisher for replaying dead letters in test `name`: its exchange, a connection of
/// its own (`<name>.replay`), every other setting at its default — the unroutable policy
/// too, which a replay does not follow (a copy no queue takes is an error).
pub async fn replay_publisher(name: &str, exchange: &str) -> fitviz_events::EventPublisher {
    fitviz_events::EventPublisher::connect(PublisherConfig {
        url: broker_url()
            .parse()
            .expect("FITVIZ_EVENTS_URL is a broker url"),
        exchange: exchange.to_owned(),
        connection_name: Some(format!("{name}.replay")),
        ..Default::default()
    })
    .await
    .expect("a publisher for the replay")
}

/// The archive tests' set-up: a connection of the test's own, and the topology of
/// `exchange` declared on it with the archive stream `archive` (no unrouted queue).
pub async fn declare_archive(
    exchange: &str,
    archive: fitviz_events::topology::ArchiveStream,
) -> Connection {
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .expect("connect to the broker");
    fitviz_events::topology::Topology::new(exchange)
        .without_unrouted()
        .archive(archive)
        .declare(&connection)
        .await
        .expect("declare the archive");
    connection
}

/// A publisher configuration for test `name`'s `exchange` (connection
/// `<name>.publisher`) whose receipts know the archive takes `archive`.
pub fn archive_config(
    name: &str,
    exchange: &str,
    archive: fitviz_events::config::ArchivePatterns,
) -> PublisherConfig {
    PublisherConfig {
        url: broker_url().parse().expect("a broker url"),
        exchange: exchange.to_owned(),
        connection_name: Some(format!("{name}.publisher")),
        archive,
        ..Default::default()
    }
}
