//! The transactional outbox on PostgreSQL (feature `outbox-postgres`): an event is
//! written in the same database transaction as the data it describes, and a relay
//! publishes it once that transaction has committed — so an event exists if and only
//! if its transaction commits, and a committed event is never lost, whatever dies when.
//! The guide's page [Never lose an event: the outbox](crate::guide::outbox) says when
//! to use it instead of `publish`/`spawn`, what it guarantees and how to operate it.
//!
//! ```no_run
//! use fitviz_events::{Event, EventPublisher, PublisherConfig, events::WorkoutCreated};
//! use fitviz_events::outbox::{Outbox, OutboxConfig};
//! use fitviz_events::testing::Example;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let publisher = EventPublisher::connect(PublisherConfig::from_env()?).await?;
//! let outbox = Outbox::new(OutboxConfig::from_env()?, publisher.clone())?;
//! outbox.migrate().await?;
//! let relay = outbox.start_relay(); // or `fitviz-events outbox relay`, elsewhere
//!
//! let (mut client, connection) =
//!     tokio_postgres::connect("postgres://app@127.0.0.1/app", tokio_postgres::NoTls).await?;
//! tokio::spawn(connection);
//! let tx = client.transaction().await?;
//! tx.execute("INSERT INTO workouts (id) VALUES (42)", &[]).await?;
//! let event_id = outbox
//!     .enqueue(&tx, Event::new(WorkoutCreated::example()).with_organization("org-42"))
//!     .await?;
//! outbox.commit(tx).await?; // commits, then wakes the relay at once
//! # relay.stop().await;
//! # Ok(()) }
//! ```
//!
//! Inside, each file has one job: `config` reads the settings, `migrations` creates and
//! changes the tables, `relay` owns partitions and publishes their rows, `rows` is the
//! SQL of the table, `status` counts and lists rows for operators.

mod config;
mod error;
mod migrations;
mod relay;
mod rows;
mod status;

pub use self::{
    config::{OUTBOX_ENV_PREFIX, OutboxConfig},
    error::OutboxError,
    migrations::{MIGRATIONS, Migration, MigrationReport, SCHEMA_VERSION},
    relay::{RelayHandle, lock_connection_name},
    status::{DeadRow, OutboxStatus},
};

use std::{str::FromStr, sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{Notify, OnceCell};
use tokio_postgres::{NoTls, Transaction, types::Type};
use uuid::Uuid;

use crate::{event::Event, publisher::EventPublisher};

use self::rows::Sql;

/// The application name the outbox's pooled connections carry in `pg_stat_activity`:
/// `fitviz-events outbox <schema's lock class, hex> <schema>`, cut to the 63 bytes
/// PostgreSQL keeps (a relay's lock connection: [`lock_connection_name`]).
pub fn pool_application_name(schema: &str) -> String {
    application_name("outbox", schema)
}

/// `fitviz-events <role> <lock class> <schema>`, at most 63 bytes (PostgreSQL cuts
/// longer names): the lock class keeps names of different schemas apart.
fn application_name(role: &str, schema: &str) -> String {
    let mut name = format!("fitviz-events {role} {:08x} {schema}", lock_class(schema));
    name.truncate(63); // ASCII: schema names are [a-z0-9_]
    name
}

/// An outbox: enqueues events inside the application's transactions, and runs relays
/// that publish them through an [`EventPublisher`]. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    config: OutboxConfig,
    publisher: EventPublisher,
    pool: Pool,
    sql: Sql,
    /// The table's partitions and version, checked once (by the first enqueue).
    partitions: OnceCell<u32>,
    /// Woken by [`Outbox::notify`]: the relays of this process look for rows at once.
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An outbox on `config`'s database, encoding with `publisher` (which its relays
    /// also publish through). Opens no connection yet. Must be called inside a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`OutboxError::Config`] when `config` is invalid.
    pub fn new(config: OutboxConfig, publisher: EventPublisher) -> Result<Self, OutboxError> {
        config.validate()?;
        let pool = pool(
            &config,
            &pool_application_name(&config.schema),
            config.pool_size,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                sql: Sql::new(&config.schema),
                config,
                publisher,
                pool,
                partitions: OnceCell::new(),
                wake: Arc::new(Notify::new()),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &OutboxConfig {
        &self.inner.config
    }

    /// The publisher events are encoded with and relayed through.
    pub fn publisher(&self) -> &EventPublisher {
        &self.inner.publisher
    }

    /// Creates the outbox's tables, or brings them to this version (see [`MIGRATIONS`]):
    /// idempotent, safe to run from several processes at once.
    ///
    /// # Errors
    /// [`OutboxError::Database`] when the database fails; [`OutboxError::Schema`] when
    /// the tables are newer than this version.
    pub async fn migrate(&self) -> Result<MigrationReport, OutboxError> {
        self.migrate_to(SCHEMA_VERSION).await
    }

    /// [`migrate`](Self::migrate), stopping at `version` (to test an upgrade from an
    /// earlier version).
    ///
    /// # Errors
    /// As [`migrate`](Self::migrate).
    pub async fn migrate_to(&self, version: u32) -> Result<MigrationReport, OutboxError> {
        let mut client = self
            .client("could not connect to migrate the outbox")
            .await?;
        let client: &mut tokio_postgres::Client = &mut client;
        migrations::migrate(
            client,
            &self.inner.config.schema,
            self.inner.config.partitions,
            version,
        )
        .await
    }

    /// Enqueues `event` inside the caller's transaction `tx` and returns its id: the
    /// event will be published if and only if `tx` commits. Runs the same front as
    /// [`publish`](EventPublisher::publish) first (validation, organization, envelope,
    /// size limits, encoding: [`EventPublisher::encode`]) — bad input fails here with the
    /// same error, before anything is written — then inserts the encoded message. Its
    /// ordering key is its organization id (events without one share the key `""`).
    ///
    /// Call [`notify`](Self::notify) after the commit (or commit with
    /// [`commit`](Self::commit)) so that the relays of this process publish it at once;
    /// otherwise it goes within the [poll interval](OutboxConfig::poll_interval).
    ///
    /// A `deadpool_postgres::Transaction` is passed as `&*tx`.
    ///
    /// # Errors
    /// [`OutboxError::Event`] for an event `publish` would refuse;
    /// [`OutboxError::Database`] when the insert fails (the transaction is then aborted,
    /// as PostgreSQL does after any failed statement); [`OutboxError::Schema`] when the
    /// outbox is not migrated.
    pub async fn enqueue(
        &self,
        tx: &Transaction<'_>,
        event: impl Into<Event>,
    ) -> Result<Uuid, OutboxError> {
        let event = event.into();
        let key = ordering_key(&event);
        self.enqueue_with_key(tx, event, &key).await
    }

    /// [`enqueue`](Self::enqueue) with an ordering key of your own: events of one key
    /// are published in the order they were enqueued (their rows' order), events of
    /// different keys in parallel.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_with_key(
        &self,
        tx: &Transaction<'_>,
        event: impl Into<Event>,
        ordering_key: &str,
    ) -> Result<Uuid, OutboxError> {
        let encoded = self.inner.publisher.encode(event).await?;
        let partitions = *self
            .inner
            .partitions
            .get_or_try_init(|| migrations::check(tx, &self.inner.config.schema))
            .await?;
        let partition = partition_of(ordering_key, partitions);
        let id = encoded.id();
        tx.execute_typed(
            &self.inner.sql.insert,
            &[
                (&id, Type::UUID),
                (&encoded.routing_key(), Type::TEXT),
                (&ordering_key, Type::TEXT),
                (&partition, Type::INT4),
                (&encoded.exchange(), Type::TEXT),
                (&encoded.routing_key(), Type::TEXT),
                (&encoded.properties_bytes(), Type::BYTEA),
                (&encoded.body(), Type::BYTEA),
            ],
        )
        .await
        .map_err(OutboxError::database(
            "could not insert the event into the outbox",
        ))?;
        Ok(id)
    }

    /// [`enqueue`](Self::enqueue) inside a sqlx transaction (feature `sqlx`, sqlx 0.8):
    /// pass `&mut *tx` for a `sqlx::Transaction<'_, Postgres>`. The same front, the same
    /// row, the same guarantees; call [`notify`](Self::notify) after the commit.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue); a failed statement is [`OutboxError::Sqlx`].
    #[cfg(feature = "sqlx")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
    pub async fn enqueue_sqlx(
        &self,
        tx: &mut sqlx::PgConnection,
        event: impl Into<Event>,
    ) -> Result<Uuid, OutboxError> {
        let event = event.into();
        let key = ordering_key(&event);
        let encoded = self.inner.publisher.encode(event).await?;
        let schema = &self.inner.config.schema;
        let partitions = match self.inner.partitions.get() {
            Some(partitions) => *partitions,
            None => {
                let (version, partitions): (Option<i32>, Option<i32>) =
                    sqlx::query_as(&migrations::settings_query(schema))
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(|error| match &error {
                            sqlx::Error::Database(db)
                                if matches!(db.code().as_deref(), Some("42P01" | "3F000")) =>
                            {
                                OutboxError::not_migrated(schema)
                            }
                            _ => OutboxError::sqlx("could not read the outbox's version")(error),
                        })?;
                let partitions = migrations::checked(schema, version, partitions)?;
                let _ = self.inner.partitions.set(partitions);
                partitions
            }
        };
        let id = encoded.id();
        sqlx::query(&self.inner.sql.insert)
            .bind(id)
            .bind(encoded.routing_key())
            .bind(&key)
            .bind(partition_of(&key, partitions))
            .bind(encoded.exchange())
            .bind(encoded.routing_key())
            .bind(encoded.properties_bytes())
            .bind(encoded.body())
            .execute(&mut *tx)
            .await
            .map_err(OutboxError::sqlx(
                "could not insert the event into the outbox",
            ))?;
        Ok(id)
    }

    /// Commits `tx`, then [notifies](Self::notify) the relays of this process.
    ///
    /// # Errors
    /// The commit's error.
    pub async fn commit(&self, tx: Transaction<'_>) -> Result<(), tokio_postgres::Error> {
        tx.commit().await?;
        self.notify();
        Ok(())
    }

    /// Wakes the relays of this process: call it after committing a transaction that
    /// enqueued events, so that they are published within milliseconds instead of the
    /// poll interval. Cheap; harmless when nothing was enqueued. (Relays in other
    /// processes find the rows by polling; `LISTEN/NOTIFY` is not used: its commit-time
    /// lock would serialize the application's writers.)
    pub fn notify(&self) {
        self.inner.wake.notify_waiters();
    }

    /// Makes the publisher spill its detached events here: [`spawn`](EventPublisher::spawn)
    /// writes an event to the outbox (in a transaction of its own) instead of queueing it
    /// when the publisher's broker connection is down or its circuit breaker open, and
    /// instead of refusing it with `QueueFull` when the queue is full; `close` writes what
    /// it could not send in time ([`CloseReport::spilled`](crate::publisher::CloseReport::spilled)).
    /// A relay publishes them like enqueued events — so an event `spawn` accepted
    /// survives an outage and a deploy. Returns `false` when the publisher already spills
    /// elsewhere.
    pub fn spill_detached(&self) -> bool {
        self.inner.publisher.spill_to(Arc::new(OutboxSpill {
            outbox: Arc::downgrade(&self.inner),
        }))
    }

    /// Starts a relay in this process (see [`RelayHandle`]): it takes its share of the
    /// partitions and publishes their rows until [stopped](RelayHandle::stop).
    pub fn start_relay(&self) -> RelayHandle {
        relay::start(self.clone())
    }

    /// Pending and dead rows, and the age of the oldest pending one.
    ///
    /// # Errors
    /// [`OutboxError::Database`] when the database fails.
    pub async fn status(&self) -> Result<OutboxStatus, OutboxError> {
        let client = self.client("could not connect to read the outbox").await?;
        status::status(&client, &self.inner.sql).await
    }

    /// Up to `limit` dead rows, oldest first.
    ///
    /// # Errors
    /// [`OutboxError::Database`] when the database fails.
    pub async fn dead_rows(&self, limit: u32) -> Result<Vec<DeadRow>, OutboxError> {
        let client = self.client("could not connect to read the outbox").await?;
        status::dead_rows(&client, &self.inner.sql, limit).await
    }

    /// Makes dead rows pending again, with their attempts reset: those of `event_ids`,
    /// or all of them with `None`. Returns how many. The relays publish them in their
    /// order among their key's pending rows.
    ///
    /// # Errors
    /// [`OutboxError::Database`] when the database fails.
    pub async fn retry_dead(&self, event_ids: Option<&[Uuid]>) -> Result<u64, OutboxError> {
        let client = self
            .client("could not connect to update the outbox")
            .await?;
        let retried = status::retry_dead(&client, &self.inner.sql, event_ids).await?;
        self.notify();
        Ok(retried)
    }

    async fn client(
        &self,
        context: &'static str,
    ) -> Result<deadpool_postgres::Object, OutboxError> {
        (self.inner.pool.get())
            .await
            .map_err(|error| OutboxError::pool(context, error))
    }
}

/// The publisher's spill into this outbox (weak: the outbox holds the publisher).
struct OutboxSpill {
    outbox: std::sync::Weak<Inner>,
}

impl OutboxSpill {
    async fn store(&self, events: Vec<Event>) -> Result<usize, OutboxError> {
        let inner = (self.outbox.upgrade())
            .ok_or_else(|| OutboxError::Unavailable("the outbox was dropped".to_owned()))?;
        let outbox = Outbox { inner };
        let mut client = outbox
            .client("could not connect to spill detached events")
            .await?;
        let tx = (client.transaction())
            .await
            .map_err(OutboxError::database("could not begin the spill"))?;
        let count = events.len();
        for event in events {
            outbox.enqueue(&tx, event).await?;
        }
        tx.commit()
            .await
            .map_err(OutboxError::database("could not commit the spill"))?;
        outbox.notify();
        Ok(count)
    }
}

impl crate::publisher::Spill for OutboxSpill {
    fn spill(
        &self,
        events: Vec<Event>,
    ) -> crate::publisher::SpillFuture<'_, Result<usize, String>> {
        Box::pin(async move { self.store(events).await.map_err(|e| e.to_string()) })
    }

    fn spill_one(
        &self,
        event: Event,
    ) -> crate::publisher::SpillFuture<'_, Result<(), crate::error::PublishError>> {
        Box::pin(async move {
            let id = event.id();
            match self.store(vec![event]).await {
                Ok(_) => Ok(()),
                Err(OutboxError::Event(error)) => Err(error),
                Err(error) => Err(crate::error::PublishError::new(
                    crate::error::ErrorKind::QueueFull,
                    format!("the event could not be queued nor written to the outbox: {error}"),
                )
                .for_event(id)),
            }
        })
    }
}

/// A pool of connections to `config`'s database, named `application_name`.
fn pool(config: &OutboxConfig, application_name: &str, size: usize) -> Result<Pool, OutboxError> {
    let pg = pg_config(config, application_name)?;
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|error| OutboxError::Unavailable(format!("could not make the pool: {error}")))
}

/// The driver's settings for `config`'s URL, with `application_name` and a connect
/// timeout (unless the URL sets them).
fn pg_config(
    config: &OutboxConfig,
    application_name: &str,
) -> Result<tokio_postgres::Config, OutboxError> {
    let mut pg = tokio_postgres::Config::from_str(&config.url).map_err(|error| {
        OutboxError::Config(crate::config::ConfigError::invalid(
            "url",
            format!("is not a valid PostgreSQL URL ({error})"),
            &config.redacted_url(),
        ))
    })?;
    if pg.get_application_name().is_none() {
        pg.application_name(application_name);
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    Ok(pg)
}

/// An event's default ordering key: its organization id (`""` without one).
fn ordering_key(event: &Event) -> String {
    (event.organization_id())
        .map(|org| org.as_str().to_owned())
        .unwrap_or_default()
}

/// FNV-1a, 64 bits: a hash that never changes between versions, platforms or
/// processes (the partition of a key is stored in its rows).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The partition of an ordering key.
fn partition_of(key: &str, partitions: u32) -> i32 {
    let partition = fnv1a(key.as_bytes()) % u64::from(partitions.max(1));
    i32::try_from(partition).unwrap_or(0)
}

/// The advisory-lock class of the outbox in `schema` (the first key of the two-key
/// `pg_advisory_lock`; the second is the partition, or -1 for migrations).
fn lock_class(schema: &str) -> i32 {
    let hash = fnv1a(format!("fitviz_events.outbox:{schema}").as_bytes());
    (hash as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Stored in rows: these values must never change.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(partition_of("org-42", 16), partition_of("org-42", 16));
        let mut seen = std::collections::HashSet::new();
        for org in 0..64 {
            let p = partition_of(&format!("org-{org}"), 16);
            assert!((0..16).contains(&p));
            seen.insert(p);
        }
        assert!(seen.len() >= 12, "{seen:?}");
    }
}
