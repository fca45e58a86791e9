//! Shared by the examples (not an example itself: cargo builds only `examples/*.rs`):
//! a bounded, expiring demo queue and a shutdown signal.

#![allow(dead_code, reason = "each example uses part of it")]

use std::{sync::Arc, time::Duration};

use fitviz_events::PublisherConfig;
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A demo queue, so that an example's events are routable: bound to the example's event
/// types, holding at most 1,000 events (`x-max-length`), deleted on exit, and removed by
/// the broker a minute after last use (`x-expires`) should the example stop early — a
/// leftover queue bound to the shared exchange would slow every later run. Each operation
/// uses a short connection of its own, so closing the publisher's connections (what a
/// resilience test does) cannot break the set-up or the clean-up.
pub struct DemoQueue {
    name: String,
    binding: String,
    /// The broker's URLs (a cluster's nodes): each operation uses the first that answers.
    urls: Vec<String>,
    exchange: String,
    connection_name: String,
    max_length: i32,
    quorum: bool,
}

impl DemoQueue {
    /// How often a long-running example declares the queue again to renew its
    /// `x-expires` lease (publishing to a queue does not count as using it).
    pub const RENEW_EVERY: Duration = Duration::from_secs(20);
    /// Bound on each operation.
    const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

    /// A queue `name` bound to `binding` (a topic pattern) on `config`'s exchange; nothing
    /// is declared yet.
    pub fn new(name: impl Into<String>, binding: &str, config: &PublisherConfig) -> Self {
        let name = name.into();
        Self {
            connection_name: format!("fitviz-events example {name} (demo queue)"),
            name,
            binding: binding.to_owned(),
            urls: config.amqp_uris(),
            exchange: config.exchange.clone(),
            max_length: 1_000,
            quorum: false,
        }
    }

    /// Holds at most `max_length` events (1,000 unless set).
    pub fn with_max_length(mut self, max_length: i32) -> Self {
        self.max_length = max_length;
        self
    }

    /// A quorum queue (`x-queue-type=quorum`: replicated on every node of a cluster)
    /// instead of a classic one.
    pub fn quorum(mut self, quorum: bool) -> Self {
        self.quorum = quorum;
        self
    }

    /// Names the connections its operations open.
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// [`new`](Self::new), then [`declare`](Self::declare).
    pub async fn declare_new(
        name: impl Into<String>,
        binding: &str,
        config: &PublisherConfig,
    ) -> Result<Self, Error> {
        let queue = Self::new(name, binding, config);
        queue.declare().await?;
        Ok(queue)
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declares the queue and binds it; run again, renews its lease.
    pub async fn declare(&self) -> Result<(), Error> {
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(self.max_length));
        if self.quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.on_channel(async |channel| {
            channel
                .queue_declare(self.name.as_str().into(), options, args)
                .await?;
            channel
                .queue_bind(
                    self.name.as_str().into(),
                    self.exchange.as_str().into(),
                    self.binding.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })
        .await
    }

    /// Declares the queue again every [`RENEW_EVERY`](Self::RENEW_EVERY), until aborted.
    pub fn renew_in_background(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let queue = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Self::RENEW_EVERY).await;
                if let Err(error) = queue.declare().await {
                    eprintln!("could not renew demo queue {}: {error}", queue.name);
                }
            }
        })
    }

    /// Deletes the queue, trying twice; returns how many events it held.
    pub async fn delete(&self) -> Result<u32, Error> {
        let mut result = Ok(0);
        for _ in 0..2 {
            result = self
                .on_channel(async |channel| {
                    channel
                        .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
                        .await
                })
                .await;
            if result.is_ok() {
                break;
            }
        }
        result
    }

    async fn on_channel<T>(
        &self,
        op: impl AsyncFnOnce(&Channel) -> Result<T, lapin::Error>,
    ) -> Result<T, Error> {
        let run = async {
            let properties = ConnectionProperties::default()
                .with_connection_name(self.connection_name.as_str().into());
            let mut connected = None;
            for url in &self.urls {
                match Connection::connect(url, properties.clone()).await {
                    Ok(connection) => {
                        connected = Some(Ok(connection));
                        break;
                    }
                    Err(e) => connected = Some(Err(e)),
                }
            }
            let connection = connected.expect("at least one broker URL")?;
            let result = match connection.create_channel().await {
                Ok(channel) => {
                    let result = op(&channel).await;
                    // Closed before the connection: a channel still closing when the
                    // connection closes makes lapin log an error.
                    let _ = channel.close(200, "done".into()).await;
                    result
                }
                Err(e) => Err(e),
            };
            let _ = connection.close(200, "done".into()).await;
            result
        };
        Ok(tokio::time::timeout(Self::OPERATION_TIMEOUT, run).await??)
    }
}

/// Resolves on SIGTERM (how containers and systemd stop a service) or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
