//! A deadpool-managed pool of [`ConfirmChannel`]s, shared through lanes.
//!
//! Opening a channel and enabling confirms per publish costs two round trips, so
//! confirm-mode channels are pooled: [`ChannelManager`] is a deadpool manager whose
//! objects are open [`ConfirmChannel`]s on connections from the
//! [`ConnectionManager`]'s pool; `recycle` discards a channel that closed or on which
//! a confirm failed, so the pool heals itself after a broker restart or a cut
//! connection: the next `get` opens a new channel on a new connection. The reconnect
//! task (`reconnect.rs`) calls [`ChannelPool::fill`] to do that in the background.
//!
//! Publishes share channels: [`ChannelPool`] keeps `pool_size` lanes, each holding
//! one pooled channel for as long as it is healthy, and publishes take turns over
//! them, so many confirms are in flight on each channel (up to `max_in_flight`).
//! Taking a healthy lane's channel is a read lock and an `Arc` clone; only replacing
//! a dead one waits.

use std::{
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult, Timeouts};
use futures_util::future::join_all;
use tokio::sync::Mutex as AsyncMutex;

use super::{
    channel::{ConfirmChannel, OpenOn},
    connection::{self, ConnectionManager},
};
use crate::error::{ErrorKind, PublishError};

/// Connections per pool: channels are multiplexed on them.
const CONNECTIONS: usize = 2;

/// How the pool is sized and how long it waits.
pub(crate) struct PoolSettings {
    pub(crate) pool_size: usize,
    pub(crate) max_in_flight: usize,
    /// How long a confirm may be late before its connection is checked.
    pub(crate) confirm_timeout: Duration,
    pub(crate) connection_timeout: Duration,
    pub(crate) wait_timeout: Duration,
    /// Set to the negotiated `frame_max` of each channel opened.
    pub(crate) frame_max: Arc<AtomicUsize>,
}

/// Opens confirm-mode channels on pooled connections.
pub(crate) struct ChannelManager {
    connections: managed::Pool<ConnectionManager>,
    max_in_flight: usize,
    confirm_timeout: Duration,
    frame_max: Arc<AtomicUsize>,
}

impl fmt::Debug for ChannelManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelManager")
            .field("connections", &self.connections.status())
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl managed::Manager for ChannelManager {
    type Type = ConfirmChannel;
    type Error = PublishError;

    async fn create(&self) -> Result<ConfirmChannel, PublishError> {
        let connection = self.connections.get().await.map_err(pool_error)?;
        let on = OpenOn {
            generation: connection.generation(),
            blocked: connection.blocked_flag(),
            node: connection.node(),
            liveness: connection.liveness(),
        };
        let channel =
            ConfirmChannel::open(&connection, on, self.max_in_flight, self.confirm_timeout).await?;
        self.frame_max.store(channel.frame_max(), Ordering::Relaxed);
        Ok(channel)
    }

    async fn recycle(
        &self,
        channel: &mut ConfirmChannel,
        _: &Metrics,
    ) -> RecycleResult<PublishError> {
        if channel.is_healthy() {
            Ok(())
        } else {
            Err(RecycleError::message(
                "channel is closed or a confirm failed on it",
            ))
        }
    }
}

fn pool_error(error: managed::PoolError<PublishError>) -> PublishError {
    match error {
        managed::PoolError::Timeout(_) => PublishError::new(
            ErrorKind::PoolTimeout,
            "no channel to the broker became available in time",
        ),
        managed::PoolError::Backend(e) => e,
        managed::PoolError::Closed => PublishError::shutdown(),
        other => PublishError::connection("could not get a channel", other.to_string()),
    }
}

/// A channel taken from the pool; it goes back when the last clone is dropped.
pub(crate) type PooledChannel = Arc<managed::Object<ChannelManager>>;

/// A cheap-to-clone pool of confirm-mode channels to one broker; see the [module docs](self).
#[derive(Clone)]
pub(crate) struct ChannelPool {
    channels: managed::Pool<ChannelManager>,
    connections: managed::Pool<ConnectionManager>,
    lanes: Arc<[Lane]>,
    next_lane: Arc<AtomicUsize>,
}

impl fmt::Debug for ChannelPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelPool")
            .field("connections", &self.connections.manager())
            .field("channels", &self.channels.status())
            .finish()
    }
}

/// One lane: the channel publishes share, and a lock that lets one task replace it.
///
/// The healthy case only takes the read lock for an `Arc` clone: it never awaits, so
/// a task starting many publishes (a batch) does not spend tokio's cooperative budget
/// on it and hands all of them to lapin in one go.
#[derive(Default)]
struct Lane {
    current: RwLock<Option<PooledChannel>>,
    replacing: AsyncMutex<()>,
}

impl Lane {
    fn healthy(&self) -> Option<PooledChannel> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().filter(|c| c.is_healthy()).cloned()
    }

    fn replace(&self, channel: Option<PooledChannel>) -> Option<PooledChannel> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *current, channel)
    }
}

impl ChannelPool {
    /// Builds the pool; connections and channels are opened on first use, or by
    /// [`fill`](Self::fill).
    pub(crate) fn new(
        connections: ConnectionManager,
        settings: &PoolSettings,
    ) -> Result<Self, PublishError> {
        let build_error = |what: &'static str| {
            move |e: managed::BuildError| {
                PublishError::config(format!("could not build the {what} pool: {e}"))
            }
        };
        let connections = managed::Pool::builder(connections)
            .max_size(CONNECTIONS)
            .timeouts(Timeouts {
                wait: Some(settings.connection_timeout + settings.wait_timeout),
                create: Some(settings.connection_timeout),
                recycle: Some(Duration::from_secs(1)),
            })
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(build_error("connection"))?;
        let manager = ChannelManager {
            connections: connections.clone(),
            max_in_flight: settings.max_in_flight,
            confirm_timeout: settings.confirm_timeout,
            frame_max: settings.frame_max.clone(),
        };
        let channels = managed::Pool::builder(manager)
            // Room for replacements while publishes still hold a dead channel.
            .max_size(settings.pool_size * 2)
            .wait_timeout(Some(settings.wait_timeout))
            .create_timeout(Some(settings.connection_timeout * 2))
            .recycle_timeout(Some(Duration::from_secs(1)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(build_error("channel"))?;
        Ok(Self {
            channels,
            connections,
            lanes: (0..settings.pool_size).map(|_| Lane::default()).collect(),
            next_lane: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Opens a connection now (declaring the exchange), to fail at start-up rather
    /// than on the first publish.
    pub(crate) async fn connect(&self) -> Result<(), PublishError> {
        self.connections.get().await.map(drop).map_err(pool_error)
    }

    /// A healthy channel to publish on. Channels are shared: publishes take turns
    /// over `pool_size` lanes, each holding one pooled channel for as long as it is
    /// healthy. A lane whose channel died gets a fresh one from the pool; the dead
    /// one goes back to deadpool, whose `recycle` discards it.
    pub(crate) async fn channel(&self) -> Result<PooledChannel, PublishError> {
        let index = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.channel_at(index).await
    }

    /// Gives every lane a healthy channel, opening connections and channels as needed:
    /// the reconnect task calls it, so that publishes find channels ready after a loss.
    pub(crate) async fn fill(&self) -> Result<(), PublishError> {
        for index in 0..self.lanes.len() {
            self.channel_at(index).await?;
        }
        Ok(())
    }

    /// Runs `f` on a short-lived channel of a pooled connection (a refused declare closes
    /// that channel, not the publishing ones); gives the connection's generation too.
    pub(crate) async fn with_admin_channel<T>(
        &self,
        f: impl AsyncFnOnce(&lapin::Channel) -> T,
    ) -> Result<(T, u64), PublishError> {
        let connection = Box::pin(self.connections.get()).await.map_err(pool_error)?;
        let generation = connection.generation();
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| PublishError::connection("could not open a channel", e))?;
        let result = f(&channel).await;
        if channel.status().connected() {
            let _ = tokio::time::timeout(Duration::from_secs(1), channel.close(200, "done".into()))
                .await;
        }
        Ok((result, generation))
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.channels.is_closed()
    }

    /// How many lanes publishes take turns over.
    pub(crate) fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The channel of lane `index` (less than [`lanes`](Self::lanes)), replaced first
    /// when it died.
    pub(crate) async fn channel_at(&self, index: usize) -> Result<PooledChannel, PublishError> {
        let lane = &self.lanes[index];
        if let Some(channel) = lane.healthy() {
            return Ok(channel);
        }
        let _replacing = lane.replacing.lock().await;
        // Another task may have replaced it while this one waited.
        if let Some(channel) = lane.healthy() {
            return Ok(channel);
        }
        if lane.replace(None).is_some() {
            tracing::info!(lane = index, "replacing a dead channel");
            crate::telemetry::channel_replaced();
        }
        // Rare path, boxed: deadpool's `get` future is several kilobytes, and it would
        // otherwise be part of every publish's future.
        let channel = Arc::new(Box::pin(self.channels.get()).await.map_err(pool_error)?);
        lane.replace(Some(channel.clone()));
        Ok(channel)
    }

    /// Closes the pool: idle channels and connections are closed; later `get`s fail
    /// with [`ErrorKind::Shutdown`].
    pub(crate) async fn close(&self) {
        // Concurrently: against a silent broker each close waits out its timeout.
        join_all(self.lanes.iter().map(|lane| async move {
            // A replacement in progress would put a fresh channel back after this.
            let _replacing = lane.replacing.lock().await;
            if let Some(channel) = lane.replace(None) {
                channel.close("publisher closed").await;
            }
        }))
        .await;
        self.channels.close();
        let no_wait = Timeouts {
            wait: Some(Duration::ZERO),
            create: Some(Duration::ZERO),
            recycle: Some(Duration::from_millis(100)),
        };
        let mut idle = Vec::new();
        for _ in 0..self.connections.status().available {
            match self.connections.timeout_get(&no_wait).await {
                Ok(pooled) => idle.push(pooled),
                Err(_) => break,
            }
        }
        join_all(idle.into_iter().map(|pooled| async move {
            self.connections.manager().closing(pooled.generation());
            connection::close(&pooled, "publisher closed").await;
            let _ = managed::Object::take(pooled);
        }))
        .await;
        self.connections.close();
    }
}
