//! What the transport knows of its connections: which are open and to which node,
//! whether the broker has blocked one, the last connection error. The connection
//! manager writes it, a watcher per connection follows lapin's connection events, and
//! [`ConnectionState`] is the snapshot a health check reads.

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{Connection, ConnectionStatus};
use tokio::sync::{Notify, futures::Notified};

use crate::telemetry;

/// How often a connection's watcher looks at its status, in case a loss came without
/// an event.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// A snapshot of the transport's connections to the broker, for `/health`-style checks;
/// see [`AmqpPublish::state`](super::AmqpPublish::state).
///
/// A readiness check can answer "not ready" when `!connected || blocked.is_some()`;
/// a liveness check should not look at it (a broker outage must not restart the
/// service's instances).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionState {
    /// Whether at least one connection to the broker is open.
    pub connected: bool,
    /// `host:port` of the most recently opened connection that is still open.
    pub node: Option<String>,
    /// That connection's generation: a number unique within the process, new for every
    /// connection, that connection errors carry too.
    pub generation: Option<u64>,
    /// The broker's reason, while it blocks a connection (its memory or disk alarm):
    /// publishes on it are refused as [`Blocked`](crate::ErrorKind::Blocked) until it
    /// unblocks, which needs no reconnect.
    pub blocked: Option<String>,
    /// The last failure to connect or the last connection lost (URL redacted), kept
    /// after a recovery.
    pub last_error: Option<String>,
    /// Connection attempts that failed since the last one that succeeded.
    pub failed_attempts: u32,
    /// Connections lost (closed by the broker or the network, not by the publisher)
    /// since the transport was made.
    pub connections_lost: u64,
}

/// One open connection.
struct Live {
    generation: u64,
    node: String,
    status: ConnectionStatus,
    blocked: Option<String>,
    /// Whether the broker blocks it, for the publish path to read without a lock.
    blocked_flag: Arc<AtomicBool>,
}

#[derive(Default)]
struct Inner {
    live: Vec<Live>,
    last_error: Option<String>,
    failed_attempts: u32,
    connections_lost: u64,
}

/// The shared record; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Health {
    inner: Arc<Mutex<Inner>>,
    /// Woken when a connection is lost or a connection attempt fails.
    lost: Arc<Notify>,
    /// Called when a connection opens or unblocks.
    on_restored: Arc<Mutex<Vec<Restored>>>,
}

type Restored = Box<dyn Fn() + Send + Sync>;

impl Health {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn state(&self) -> ConnectionState {
        let inner = self.lock();
        let open = || inner.live.iter().filter(|l| l.status.connected());
        let latest = open().max_by_key(|l| l.generation);
        ConnectionState {
            connected: latest.is_some(),
            node: latest.map(|l| l.node.clone()),
            generation: latest.map(|l| l.generation),
            blocked: open().find_map(|l| {
                (l.blocked.clone()).or_else(|| l.status.blocked().then(|| "blocked".to_owned()))
            }),
            last_error: inner.last_error.clone(),
            failed_attempts: inner.failed_attempts,
            connections_lost: inner.connections_lost,
        }
    }

    /// The broker's reason for blocking the connection of `generation`, if it does.
    pub(crate) fn blocked_reason(&self, generation: u64) -> Option<String> {
        let inner = self.lock();
        let live = inner.live.iter().find(|l| l.generation == generation)?;
        (live.blocked.clone()).or_else(|| live.status.blocked().then(|| "blocked".to_owned()))
    }

    /// Resolves when a connection is lost or an attempt fails (after this call).
    pub(crate) fn lost(&self) -> Notified<'_> {
        self.lost.notified()
    }

    /// Calls `f` whenever a connection opens or the broker unblocks one.
    pub(crate) fn on_restored(&self, f: impl Fn() + Send + Sync + 'static) {
        (self.on_restored.lock().unwrap_or_else(|e| e.into_inner())).push(Box::new(f));
    }

    fn restored(&self) {
        for f in self
            .on_restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            f();
        }
    }

    pub(crate) fn connect_failed(&self, error: &str) {
        let mut inner = self.lock();
        inner.failed_attempts = inner.failed_attempts.saturating_add(1);
        inner.last_error = Some(error.to_owned());
        drop(inner);
        self.lost.notify_waiters();
    }

    /// Records an open connection and follows its events until it closes. Returns the
    /// flag that says whether the broker blocks it.
    pub(crate) fn opened(
        &self,
        connection: &Connection,
        generation: u64,
        node: &str,
    ) -> Arc<AtomicBool> {
        let blocked_flag = Arc::new(AtomicBool::new(false));
        let status = connection.status().clone();
        let mut inner = self.lock();
        inner.failed_attempts = 0;
        inner.live.retain(|l| l.status.connected());
        inner.live.push(Live {
            generation,
            node: node.to_owned(),
            status: status.clone(),
            blocked: None,
            blocked_flag: blocked_flag.clone(),
        });
        drop(inner);
        telemetry::connection_event(telemetry::CONNECTIONS_OPENED, node);
        self.restored();
        let events = connection.events_listener();
        let health = self.clone();
        let node = node.to_owned();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(lapin::Event::ConnectionBlocked(reason)) => {
                            tracing::warn!(%node, generation, %reason, "the broker blocked the connection: publishes on it are refused until it unblocks");
                            telemetry::connection_event(telemetry::CONNECTIONS_BLOCKED, &node);
                            health.set_blocked(generation, Some(reason));
                        }
                        Some(lapin::Event::ConnectionUnblocked) => {
                            tracing::info!(%node, generation, "the broker unblocked the connection");
                            health.set_blocked(generation, None);
                            health.restored();
                        }
                        Some(lapin::Event::Error(error)) => {
                            health.closed(generation, Some(&error.to_string()));
                            break;
                        }
                        Some(_) => {}
                        None => {
                            health.closed(generation, None);
                            break;
                        }
                    },
                    _ = tick.tick() => {
                        if !status.connected() && !status.connecting() {
                            health.closed(generation, None);
                            break;
                        }
                    }
                }
            }
        });
        blocked_flag
    }

    fn set_blocked(&self, generation: u64, reason: Option<String>) {
        let mut inner = self.lock();
        if let Some(live) = inner.live.iter_mut().find(|l| l.generation == generation) {
            live.blocked_flag.store(reason.is_some(), Ordering::Relaxed);
            live.blocked = reason;
        }
    }

    /// Records that the publisher itself closes the connection of `generation`.
    pub(crate) fn closing(&self, generation: u64) {
        self.lock().live.retain(|l| l.generation != generation);
    }

    /// The connection of `generation` is gone; `error` says why, when lapin said.
    fn closed(&self, generation: u64, error: Option<&str>) {
        let mut inner = self.lock();
        let Some(index) = inner.live.iter().position(|l| l.generation == generation) else {
            return; // Closed by the publisher.
        };
        let live = inner.live.remove(index);
        inner.connections_lost += 1;
        let reason = error.unwrap_or("closed");
        inner.last_error = Some(format!("connection to {} lost: {reason}", live.node));
        drop(inner);
        tracing::warn!(node = %live.node, generation, %reason, "connection to the broker lost");
        telemetry::connection_event(telemetry::CONNECTIONS_LOST, &live.node);
        self.lost.notify_waiters();
    }
}
