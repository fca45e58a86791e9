//! Connections to the broker: a deadpool [`Manager`] over lapin of our own.
//!
//! It connects to one of several broker addresses (the nodes of a cluster), tried in
//! an order shuffled for every connection so that publishers spread over the nodes and
//! skip one that is down; declares the [`Exchange`] on every new connection; records
//! each connection in the transport's [`Health`]; and names the broker's address
//! (redacted) in its errors. [`open_connection`] opens a plain one for administration
//! (the topology, dead letters), to the first node that answers.

use std::{
    fmt,
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use lapin::{Connection, ConnectionProperties};

use super::{
    exchange::Exchange,
    health::Health,
    liveness::Liveness,
    tls::{self, Tls},
};
use crate::{
    config::PublisherConfig,
    error::{ErrorKind, PublishError},
};

/// One broker address.
pub(crate) struct NodeSettings {
    /// The full URI, with credentials and query parameters (heartbeat, timeout).
    pub(crate) uri: String,
    /// The same, with the password replaced: the only form that is ever shown.
    pub(crate) redacted: String,
    /// `host:port`.
    pub(crate) address: String,
}

/// What a connection is opened with.
pub(crate) struct ConnectionSettings {
    /// The broker's addresses: one, or the nodes of a cluster.
    pub(crate) nodes: Vec<NodeSettings>,
    /// The connection name shown in the broker's management UI.
    pub(crate) name: String,
    /// TCP connect, AMQP handshake and the exchange declaration, together, per address.
    pub(crate) timeout: Duration,
    /// TLS for an `amqps://` URL.
    pub(crate) tls: Option<Tls>,
}

impl ConnectionSettings {
    /// The redacted addresses, for `Debug`.
    fn redacted(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.redacted.as_str()).collect()
    }
}

/// The next connection's generation: unique within the process, never 0.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// An open connection and its generation, a number unique within the process that
/// the errors of publishes on it carry, so that the circuit breaker counts one lost
/// connection once however many publishes were in flight on it.
pub(crate) struct Generation {
    connection: Arc<Connection>,
    /// Round trips that tell a broker holding confirms from a dead connection.
    liveness: Arc<Liveness>,
    generation: u64,
    blocked: Arc<AtomicBool>,
    /// The node's `host:port`.
    node: Arc<str>,
}

impl Generation {
    /// The `host:port` of the node the connection is to.
    pub(crate) fn node(&self) -> Arc<str> {
        self.node.clone()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The connection's liveness checks, for its channels' late confirms.
    pub(crate) fn liveness(&self) -> Arc<Liveness> {
        self.liveness.clone()
    }

    /// Whether the broker blocks this connection (`connection.blocked`).
    pub(crate) fn blocked_flag(&self) -> Arc<AtomicBool> {
        self.blocked.clone()
    }
}

impl Deref for Generation {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
    }
}

/// Opens connections and declares the exchange on each.
pub(crate) struct ConnectionManager {
    settings: ConnectionSettings,
    exchange: Arc<Exchange>,
    health: Health,
}

impl fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("urls", &self.settings.redacted())
            .field("exchange", &self.exchange.name())
            .finish()
    }
}

impl ConnectionManager {
    pub(crate) fn new(
        settings: ConnectionSettings,
        exchange: Arc<Exchange>,
        health: Health,
    ) -> Self {
        Self {
            settings,
            exchange,
            health,
        }
    }

    /// Records that the publisher itself closes the connection of `generation`: not a
    /// loss.
    pub(crate) fn closing(&self, generation: u64) {
        self.health.closing(generation);
    }

    /// Connects to the first node that answers, in a shuffled order.
    async fn connect_any(&self) -> Result<(Connection, &NodeSettings), PublishError> {
        let mut order: Vec<&NodeSettings> = self.settings.nodes.iter().collect();
        fastrand::shuffle(&mut order);
        let mut failures = Vec::with_capacity(order.len());
        for node in order {
            match self.connect_to(node).await {
                Ok(connection) => return Ok((connection, node)),
                Err(error) => {
                    tracing::debug!(node = %node.address, %error, "could not connect to a broker node");
                    failures.push((node, error));
                }
            }
        }
        // A node that answered with a refusal (no such exchange, no permission) said
        // more than the ones that could not be reached: report it, with its kind.
        if let Some(at) = (failures.iter()).position(|(_, error)| is_refusal(error.kind())) {
            return Err(failures.swap_remove(at).1);
        }
        let error = match failures.len() {
            1 => failures.pop().map(|(_, error)| error),
            n => {
                let each: Vec<String> = (failures.iter())
                    .map(|(_, error)| error.to_string())
                    .collect();
                Some(PublishError::new(
                    ErrorKind::Connection,
                    format!(
                        "could not connect to any of the {n} broker addresses ({})",
                        each.join("; ")
                    ),
                ))
            }
        };
        Err(error.unwrap_or_else(|| PublishError::config("no broker address")))
    }

    async fn connect_to(&self, node: &NodeSettings) -> Result<Connection, PublishError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.settings.name.as_str().into());
        let timeout = self.settings.timeout;
        let connect = async {
            let connection = tls::open(&node.uri, properties, self.settings.tls.as_ref())
                .await
                .map_err(|e| PublishError::connect(&node.redacted, e))?;
            if let Err(error) = self.exchange.declare(&connection).await {
                close(&connection, "exchange declaration failed").await;
                return Err(error);
            }
            Ok(connection)
        };
        tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::new(
                    ErrorKind::Connection,
                    format!(
                        "timed out after {} ms connecting to the broker at {}",
                        timeout.as_millis(),
                        node.redacted
                    ),
                ))
            })
    }
}

impl managed::Manager for ConnectionManager {
    type Type = Generation;
    type Error = PublishError;

    async fn create(&self) -> Result<Generation, PublishError> {
        match self.connect_any().await {
            Ok((connection, node)) => {
                let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
                let blocked = self.health.opened(&connection, generation, &node.address);
                tracing::debug!(node = %node.address, generation, "connected to the broker");
                let connection = Arc::new(connection);
                let node: Arc<str> = Arc::from(node.address.as_str());
                Ok(Generation {
                    liveness: Arc::new(Liveness::new(&connection, node.clone())),
                    connection,
                    generation,
                    blocked,
                    node,
                })
            }
            Err(error) => {
                self.health.connect_failed(&error.to_string());
                Err(error)
            }
        }
    }

    async fn recycle(
        &self,
        connection: &mut Generation,
        _: &Metrics,
    ) -> RecycleResult<PublishError> {
        if connection.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("the connection is closed"))
        }
    }
}

/// How long `close` waits for the broker's close-ok (a silent broker never sends it).
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Closes `connection` if it is open, without waiting long for the broker.
pub(crate) async fn close(connection: &Connection, reason: &str) {
    if connection.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await;
    }
}

/// Whether `kind` is one of the broker's refusals (see `refusal.rs`).
fn is_refusal(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::AccessRefused | ErrorKind::NotFound | ErrorKind::PreconditionFailed
    )
}

/// Opens one connection for administration (declaring the topology, dead letters) to
/// the first of `config`'s nodes that answers, in the configured order, over TLS as
/// configured, named `name` in the broker.
pub(crate) async fn open_connection(
    config: &PublisherConfig,
    name: &str,
) -> Result<lapin::Connection, PublishError> {
    let tls = config.validated_tls()?.map(Tls::new);
    let mut last = None;
    for (node, uri) in config.url.nodes().iter().zip(config.amqp_uris()) {
        let properties = lapin::ConnectionProperties::default().with_connection_name(name.into());
        let open = tls::open(&uri, properties, tls.as_ref());
        match tokio::time::timeout(config.connection_timeout, open).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(e)) => last = Some(PublishError::connect(node.redacted(), e)),
            Err(_) => {
                last = Some(PublishError::new(
                    ErrorKind::Connection,
                    format!(
                        "timed out after {} ms connecting to the broker at {}",
                        config.connection_timeout.as_millis(),
                        node.redacted()
                    ),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| PublishError::config("no broker address")))
}
