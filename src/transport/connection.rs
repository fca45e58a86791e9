//! Connections to the broker: a deadpool [`Manager`] over lapin of our own.
//!
//! `deadpool-lapin`'s manager takes one URL and does nothing after connecting; this
//! one also declares the [`Exchange`] on every new connection and names the broker's
//! address (redacted) in its errors. It is the place where several addresses and
//! TLS settings will go.

use std::{
    fmt,
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use lapin::{Connection, ConnectionProperties};

use super::{
    exchange::Exchange,
    tls::{self, Tls},
};
use crate::error::{ErrorKind, PublishError};

/// What a connection is opened with.
pub(crate) struct ConnectionSettings {
    /// The full URI, with credentials and query parameters (heartbeat, timeout).
    pub(crate) uri: String,
    /// The same, with the password replaced: the only form that is ever shown.
    pub(crate) redacted: Arc<str>,
    /// The connection name shown in the broker's management UI.
    pub(crate) name: Option<String>,
    /// TCP connect, AMQP handshake and the exchange declaration, together.
    pub(crate) timeout: Duration,
    /// TLS for an `amqps://` URL.
    pub(crate) tls: Option<Tls>,
}

/// The next connection's generation: unique within the process, never 0.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// An open connection and its generation, a number unique within the process that
/// the errors of publishes on it carry, so that the circuit breaker counts one lost
/// connection once however many publishes were in flight on it.
pub(crate) struct Generation {
    connection: Connection,
    generation: u64,
}

impl Generation {
    pub(crate) fn generation(&self) -> u64 {
        self.generation
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
}

impl fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("url", &self.settings.redacted)
            .field("exchange", &self.exchange.name())
            .finish()
    }
}

impl ConnectionManager {
    pub(crate) fn new(settings: ConnectionSettings, exchange: Arc<Exchange>) -> Self {
        Self { settings, exchange }
    }

    async fn connect(&self) -> Result<Connection, PublishError> {
        let mut properties = ConnectionProperties::default();
        if let Some(name) = &self.settings.name {
            properties = properties.with_connection_name(name.as_str().into());
        }
        let connection = tls::open(&self.settings.uri, properties, self.settings.tls.as_ref())
            .await
            .map_err(|e| PublishError::connect(&self.settings.redacted, e))?;
        if let Err(error) = self.exchange.declare(&connection).await {
            close(&connection, "exchange declaration failed").await;
            return Err(error);
        }
        tracing::debug!(url = %self.settings.redacted, "connected to the broker");
        Ok(connection)
    }
}

impl managed::Manager for ConnectionManager {
    type Type = Generation;
    type Error = PublishError;

    async fn create(&self) -> Result<Generation, PublishError> {
        let timeout = self.settings.timeout;
        tokio::time::timeout(timeout, self.connect())
            .await
            .map(|connected| {
                connected.map(|connection| Generation {
                    connection,
                    generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
                })
            })
            .unwrap_or_else(|_| {
                Err(PublishError::new(
                    ErrorKind::Connection,
                    format!(
                        "timed out after {} ms connecting to the broker at {}",
                        timeout.as_millis(),
                        self.settings.redacted
                    ),
                ))
            })
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
