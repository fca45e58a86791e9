//! Consumers' offsets: where a consumer of the archive got to, stored by consumer name,
//! so that it resumes there after a restart.
//!
//! A consumer reads the archive with a [`Replay`](super::Replay), handles each event,
//! and stores the offset of the last one it handled; after a restart it loads that
//! offset and replays [`ReplayFrom::after`](super::ReplayFrom::after) it. Stored *after*
//! handling (at-least-once: a crash in between handles that event again — de-duplicate
//! by `event_id`), or, with [`PostgresOffsets::save_in`], in the very transaction that
//! records the handling's own writes: then the offset moves if and only if the work
//! commits (exactly once for what the database holds).
//!
//! ```
//! use fitviz_events::replay::{MemoryOffsets, OffsetStore, ReplayFrom};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let offsets = MemoryOffsets::default();
//! assert_eq!(offsets.load("search-indexer").await?, None);
//! offsets.save("search-indexer", 41).await?;
//! let from = ReplayFrom::after(offsets.load("search-indexer").await?);
//! assert_eq!(from, ReplayFrom::Offset(42));
//! # Ok::<(), fitviz_events::replay::OffsetStoreError>(()) }).unwrap();
//! ```

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

/// Storing a consumer's offset failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct OffsetStoreError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl OffsetStoreError {
    /// An error saying `message`, caused by `source`.
    pub fn new(
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            message: message.into(),
            source,
        }
    }
}

/// Where consumers keep their offsets, by consumer name.
pub trait OffsetStore: Send + Sync {
    /// The offset `consumer` stored last, `None` before its first save.
    fn load(
        &self,
        consumer: &str,
    ) -> impl Future<Output = Result<Option<u64>, OffsetStoreError>> + Send;

    /// Stores `offset` as the last one `consumer` handled.
    fn save(
        &self,
        consumer: &str,
        offset: u64,
    ) -> impl Future<Output = Result<(), OffsetStoreError>> + Send;
}

/// Offsets in memory, for tests and for consumers whose history is cheap to read again
/// (a restart reads from wherever the caller says). Cloning shares the offsets.
#[derive(Clone, Debug, Default)]
pub struct MemoryOffsets {
    offsets: Arc<Mutex<HashMap<String, u64>>>,
}

impl OffsetStore for MemoryOffsets {
    async fn load(&self, consumer: &str) -> Result<Option<u64>, OffsetStoreError> {
        let offsets = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        Ok(offsets.get(consumer).copied())
    }

    async fn save(&self, consumer: &str, offset: u64) -> Result<(), OffsetStoreError> {
        let mut offsets = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        offsets.insert(consumer.to_owned(), offset);
        Ok(())
    }
}

#[cfg(feature = "outbox-postgres")]
pub use self::postgres::PostgresOffsets;

#[cfg(feature = "outbox-postgres")]
mod postgres {
    use deadpool_postgres::Pool;
    use tokio_postgres::Transaction;

    use super::{OffsetStore, OffsetStoreError};

    /// Offsets in PostgreSQL (feature `outbox-postgres`), in the table
    /// `<schema>.consumer_offsets (consumer text primary key, "offset" bigint,
    /// updated_at timestamptz)` — next to the consumer's own data, so that
    /// [`save_in`](Self::save_in) stores the offset in the transaction of its work.
    #[derive(Clone, Debug)]
    pub struct PostgresOffsets {
        pool: Pool,
        table: String,
    }

    fn database(what: &str, error: tokio_postgres::Error) -> OffsetStoreError {
        OffsetStoreError::new(format!("{what}: {error}"), Some(Box::new(error)))
    }

    impl PostgresOffsets {
        /// Offsets in `schema`'s table, over `pool`'s connections.
        ///
        /// # Errors
        /// A schema name that is not 1 to 63 lowercase letters, digits and `_`,
        /// starting with a letter or `_` (it is written into SQL).
        pub fn new(pool: Pool, schema: &str) -> Result<Self, OffsetStoreError> {
            let valid = (1..=63).contains(&schema.len())
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !schema.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(OffsetStoreError::new(
                    format!(
                        "schema: expected 1 to 63 lowercase letters, digits or `_`, not starting with a digit, got `{schema}`"
                    ),
                    None,
                ));
            }
            Ok(Self {
                pool,
                table: format!("{schema}.consumer_offsets"),
            })
        }

        /// Creates the schema and table if they do not exist.
        ///
        /// # Errors
        /// The database's error.
        pub async fn migrate(&self) -> Result<(), OffsetStoreError> {
            let client = self.client().await?;
            let schema = self.table.split('.').next().unwrap_or_default();
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema};
                     CREATE TABLE IF NOT EXISTS {table} (
                         consumer text PRIMARY KEY,
                         \"offset\" bigint NOT NULL CHECK (\"offset\" >= 0),
                         updated_at timestamptz NOT NULL DEFAULT now()
                     );",
                    table = self.table
                ))
                .await
                .map_err(|e| database("creating the consumer offsets table", e))
        }

        /// Stores `offset` for `consumer` inside `tx`, the transaction of the consumer's
        /// own work: it is stored if and only if `tx` commits.
        ///
        /// # Errors
        /// The database's error.
        pub async fn save_in(
            &self,
            tx: &Transaction<'_>,
            consumer: &str,
            offset: u64,
        ) -> Result<(), OffsetStoreError> {
            tx.execute(&self.upsert(), &[&consumer, &as_i64(offset)?])
                .await
                .map(drop)
                .map_err(|e| database("storing the consumer's offset", e))
        }

        fn upsert(&self) -> String {
            format!(
                "INSERT INTO {} (consumer, \"offset\") VALUES ($1, $2)
                 ON CONFLICT (consumer) DO UPDATE SET \"offset\" = EXCLUDED.\"offset\", updated_at = now()",
                self.table
            )
        }

        async fn client(&self) -> Result<deadpool_postgres::Object, OffsetStoreError> {
            self.pool.get().await.map_err(|e| {
                OffsetStoreError::new(
                    format!("no database connection for the consumer offsets: {e}"),
                    Some(Box::new(e)),
                )
            })
        }
    }

    fn as_i64(offset: u64) -> Result<i64, OffsetStoreError> {
        i64::try_from(offset)
            .map_err(|_| OffsetStoreError::new(format!("offset {offset} is too large"), None))
    }

    impl OffsetStore for PostgresOffsets {
        async fn load(&self, consumer: &str) -> Result<Option<u64>, OffsetStoreError> {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &format!("SELECT \"offset\" FROM {} WHERE consumer = $1", self.table),
                    &[&consumer],
                )
                .await
                .map_err(|e| database("loading the consumer's offset", e))?;
            Ok(row
                .map(|row| row.get::<_, i64>(0))
                .and_then(|offset| u64::try_from(offset).ok()))
        }

        async fn save(&self, consumer: &str, offset: u64) -> Result<(), OffsetStoreError> {
            let client = self.client().await?;
            client
                .execute(&self.upsert(), &[&consumer, &as_i64(offset)?])
                .await
                .map(drop)
                .map_err(|e| database("storing the consumer's offset", e))
        }
    }
}
