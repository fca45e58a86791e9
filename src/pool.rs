//! A deadpool-managed pool of confirm-mode lapin channels.
//!
//! `deadpool-lapin` pools *connections*; publishing needs *channels* in confirm
//! mode, and opening one per publish costs two round trips. [`ChannelManager`] is a
//! deadpool [`Manager`](deadpool::managed::Manager) whose objects are open,
//! confirm-mode channels taken from connections of a `deadpool-lapin` pool.
//! `recycle` discards a channel whose channel or connection is closed, or on which
//! a confirm failed, so the pool heals itself after a broker restart or a cut
//! connection: the next `get` opens a new channel on a new connection.
//!
//! Publishes share channels: [`ChannelPool`] keeps `pool_size` lanes, each holding
//! one pooled channel for as long as it is healthy, and publishes take turns over
//! them, so many confirms are in flight on each channel (up to
//! [`PublisherConfig::max_in_flight`]). Taking a healthy lane's channel is a read
//! lock and an `Arc` clone; only replacing a dead one waits.

use std::{
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult, Timeouts};
use lapin::{
    ConnectionProperties, ExchangeKind,
    options::{ConfirmSelectOptions, ExchangeDeclareOptions},
    types::FieldTable,
};
use tokio::sync::{Mutex as AsyncMutex, Semaphore};

use crate::{PublishError, PublisherConfig, error::ErrorKind, transport::ConfirmTracker};

/// How long `close` waits for the broker to acknowledge a channel or connection close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One pooled channel: an open lapin channel in confirm mode, its confirm tracker,
/// and the permits for publishes in flight on it.
pub struct PooledChannel {
    pub(crate) channel: lapin::Channel,
    pub(crate) tracker: Arc<ConfirmTracker>,
    pub(crate) in_flight: Arc<Semaphore>,
    /// The number of permits `in_flight` started with.
    pub(crate) max_in_flight: usize,
}

impl fmt::Debug for PooledChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledChannel")
            .field("id", &self.channel.id())
            .field("connected", &self.channel.status().connected())
            .finish()
    }
}

impl PooledChannel {
    /// How many publishes hold a permit on this channel (being written or awaiting
    /// their confirm).
    pub(crate) fn in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.in_flight.available_permits())
    }

    /// Open, and no confirm failed on it.
    pub(crate) fn is_healthy(&self) -> bool {
        self.channel.status().connected() && !self.tracker.has_failed()
    }
}

impl Drop for PooledChannel {
    fn drop(&mut self) {
        self.tracker.close();
        if self.channel.status().connected() {
            let channel = self.channel.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = tokio::time::timeout(
                        CLOSE_TIMEOUT,
                        channel.close(200, "pooled channel discarded".into()),
                    )
                    .await;
                });
            }
        }
    }
}

/// The deadpool manager that opens confirm-mode channels.
pub struct ChannelManager {
    connections: deadpool_lapin::Pool,
    max_in_flight: usize,
}

impl fmt::Debug for ChannelManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the connection pool: its manager's Debug shows the URL.
        f.debug_struct("ChannelManager")
            .field("connections", &self.connections.status())
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl managed::Manager for ChannelManager {
    type Type = PooledChannel;
    type Error = PublishError;

    async fn create(&self) -> Result<PooledChannel, PublishError> {
        let connection = self.connections.get().await.map_err(connection_error)?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| PublishError::connection("could not open a channel", e))?;
        drop(connection);
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| PublishError::connection("could not enable publisher confirms", e))?;
        tracing::debug!(channel = channel.id(), "opened confirm-mode channel");
        Ok(PooledChannel {
            channel,
            tracker: ConfirmTracker::spawn(),
            in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
            max_in_flight: self.max_in_flight,
        })
    }

    async fn recycle(
        &self,
        pooled: &mut PooledChannel,
        _: &Metrics,
    ) -> RecycleResult<PublishError> {
        if pooled.is_healthy() {
            Ok(())
        } else {
            Err(RecycleError::message(
                "channel is closed or a confirm failed on it",
            ))
        }
    }
}

fn connection_error(error: deadpool_lapin::PoolError) -> PublishError {
    match error {
        deadpool_lapin::PoolError::Timeout(_) => {
            PublishError::new(ErrorKind::Connection, "timed out connecting to the broker")
        }
        deadpool_lapin::PoolError::Backend(e) => {
            PublishError::connection("could not connect to the broker", e)
        }
        deadpool_lapin::PoolError::Closed => PublishError::shutdown(),
        other => PublishError::connection("could not connect to the broker", other.to_string()),
    }
}

/// A cheap-to-clone pool of confirm-mode channels to one broker.
///
/// # Example
/// ```no_run
/// # async fn demo() -> Result<(), fitviz_events::PublishError> {
/// use fitviz_events::{ChannelPool, PublisherConfig};
///
/// let config = PublisherConfig::from_env()?;
/// let pool = ChannelPool::new(&config)?;
/// pool.declare_exchange(&config).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ChannelPool {
    channels: managed::Pool<ChannelManager>,
    lanes: Arc<[Lane]>,
    next_lane: Arc<AtomicUsize>,
    connections: deadpool_lapin::Pool,
    redacted_url: Arc<str>,
}

impl fmt::Debug for ChannelPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelPool")
            .field("url", &self.redacted_url)
            .field("channels", &self.channels.status())
            .finish()
    }
}

/// A channel taken from the pool; it goes back when dropped.
pub(crate) type PooledObject = managed::Object<ChannelManager>;

/// One lane: the channel publishes share, and a lock that lets one task replace it.
///
/// The healthy case only takes the read lock for an `Arc` clone: it never awaits, so
/// a task starting many publishes (a batch) does not spend tokio's cooperative budget
/// on it and hands all of them to lapin in one go.
#[derive(Default)]
struct Lane {
    current: RwLock<Option<Arc<PooledObject>>>,
    replacing: AsyncMutex<()>,
}

impl Lane {
    fn healthy(&self) -> Option<Arc<PooledObject>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().filter(|c| c.is_healthy()).cloned()
    }

    fn replace(&self, channel: Option<Arc<PooledObject>>) -> Option<Arc<PooledObject>> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *current, channel)
    }
}

impl ChannelPool {
    /// Builds the pool; connections and channels are opened lazily, on first use.
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when the pool cannot be built (no tokio runtime).
    pub fn new(config: &PublisherConfig) -> Result<Self, PublishError> {
        let name = config.connection_name.clone();
        let connection_properties = move || {
            let props = ConnectionProperties::default();
            match &name {
                Some(name) => props.with_connection_name(name.as_str().into()),
                None => props,
            }
        };
        let connection_timeouts = Timeouts {
            wait: Some(config.connection_timeout + config.pool_wait_timeout),
            create: Some(config.connection_timeout),
            recycle: Some(Duration::from_secs(1)),
        };
        let connections = deadpool_lapin::Config {
            url: Some(config.amqp_uri()),
            pool: Some(deadpool_lapin::PoolConfig {
                max_size: 2,
                timeouts: connection_timeouts,
                ..Default::default()
            }),
        }
        .create_pool(connection_properties, deadpool_lapin::Runtime::Tokio1)
        .map_err(|e| {
            PublishError::new(ErrorKind::Config, "could not build the connection pool")
                .with_source(e.to_string())
        })?;
        let manager = ChannelManager {
            connections: connections.clone(),
            max_in_flight: config.max_in_flight,
        };
        let channels = managed::Pool::builder(manager)
            // Room for replacements while publishes still hold a dead channel.
            .max_size(config.pool_size * 2)
            .wait_timeout(Some(config.pool_wait_timeout))
            .create_timeout(Some(config.connection_timeout * 2))
            .recycle_timeout(Some(Duration::from_secs(1)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| {
                PublishError::new(ErrorKind::Config, "could not build the channel pool")
                    .with_source(e.to_string())
            })?;
        Ok(Self {
            channels,
            lanes: (0..config.pool_size).map(|_| Lane::default()).collect(),
            next_lane: Arc::new(AtomicUsize::new(0)),
            connections,
            redacted_url: config.redacted_url().into(),
        })
    }

    /// The broker URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// A healthy channel to publish on. Channels are shared: publishes take turns
    /// over `pool_size` lanes, each holding one pooled channel for as long as it is
    /// healthy. A lane whose channel died gets a fresh one from the pool; the dead
    /// one goes back to deadpool, whose `recycle` discards it.
    pub(crate) async fn channel(&self) -> Result<Arc<PooledObject>, PublishError> {
        let index = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
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
        }
        // Rare path, boxed: deadpool's `get` future is several kilobytes, and it would
        // otherwise be part of every publish's future.
        let channel = Arc::new(Box::pin(self.get()).await?);
        lane.replace(Some(channel.clone()));
        Ok(channel)
    }

    async fn get(&self) -> Result<PooledObject, PublishError> {
        self.channels.get().await.map_err(|error| match error {
            managed::PoolError::Timeout(_) => PublishError::new(
                ErrorKind::PoolTimeout,
                "no channel to the broker became available in time",
            ),
            managed::PoolError::Backend(e) => e,
            managed::PoolError::Closed => PublishError::shutdown(),
            other => PublishError::connection("could not get a channel", other.to_string()),
        })
    }

    /// Declares the configured exchange (durable topic), or only checks that it
    /// exists when [`PublisherConfig::declare_exchange`] is false.
    ///
    /// # Errors
    /// [`ErrorKind::Connection`] when the broker cannot be reached or the exchange
    /// does not exist (passive) or exists with other settings.
    pub async fn declare_exchange(&self, config: &PublisherConfig) -> Result<(), PublishError> {
        let deadline = config.connection_timeout * 2;
        tokio::time::timeout(deadline, self.declare_exchange_now(config))
            .await
            .unwrap_or_else(|_| Err(PublishError::timeout("declaring the exchange", deadline)))
    }

    async fn declare_exchange_now(&self, config: &PublisherConfig) -> Result<(), PublishError> {
        let connection = self.connections.get().await.map_err(connection_error)?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| PublishError::connection("could not open a channel", e))?;
        drop(connection);
        let options = ExchangeDeclareOptions {
            durable: true,
            passive: !config.declare_exchange,
            ..Default::default()
        };
        let result = channel
            .exchange_declare(
                config.exchange.as_str().into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await;
        if channel.status().connected() {
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                channel.close(200, "exchange declared".into()),
            )
            .await;
        }
        result.map_err(|e| {
            PublishError::connection(
                if options.passive {
                    "the exchange does not exist"
                } else {
                    "could not declare the exchange"
                },
                e,
            )
        })
    }

    /// Closes the pool: idle channels and connections are closed; later `get`s fail
    /// with [`ErrorKind::Shutdown`].
    pub async fn close(&self) {
        for lane in self.lanes.iter() {
            // A replacement in progress would put a fresh channel back after this.
            let _replacing = lane.replacing.lock().await;
            let taken = lane.replace(None);
            if let Some(pooled) = taken {
                if pooled.channel.status().connected() {
                    // A silent broker never answers close-ok: do not wait for it.
                    let _ = tokio::time::timeout(
                        CLOSE_TIMEOUT,
                        pooled.channel.close(200, "publisher closed".into()),
                    )
                    .await;
                }
            }
        }
        self.channels.close();
        let idle = self.connections.status().available;
        let no_wait = Timeouts {
            wait: Some(Duration::ZERO),
            create: Some(Duration::ZERO),
            recycle: Some(Duration::from_millis(100)),
        };
        for _ in 0..idle {
            match self.connections.timeout_get(&no_wait).await {
                Ok(connection) => {
                    if connection.status().connected() {
                        let _ = tokio::time::timeout(
                            CLOSE_TIMEOUT,
                            connection.close(200, "publisher closed".into()),
                        )
                        .await;
                    }
                    let _ = deadpool_lapin::Object::take(connection);
                }
                Err(_) => break,
            }
        }
        self.connections.close();
    }
}
