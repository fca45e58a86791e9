//! The outbox's tables, created and changed by numbered migrations shipped with the
//! crate (`src/outbox/migrations/*.sql`), applied in order by
//! [`Outbox::migrate`](super::Outbox::migrate) or `fitviz-events outbox migrate`, each
//! once, recorded in `<schema>.outbox_migrations`. A change to the tables is always a new
//! migration: an applied one is never edited.

use tokio_postgres::Client;

use super::{OutboxError, lock_class};

/// One change to the outbox's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its number: migrations are applied in this order, each once.
    pub version: u32,
    /// What it does, in a few words.
    pub name: &'static str,
    /// Its SQL, with `{schema}` for the configured schema.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "outbox",
        sql: include_str!("migrations/0001_outbox.sql"),
    },
    Migration {
        version: 2,
        name: "dead rows",
        sql: include_str!("migrations/0002_dead_rows.sql"),
    },
];

/// The version of the tables this crate reads and writes: the last migration's.
pub const SCHEMA_VERSION: u32 = 2;

/// What [`Outbox::migrate`](super::Outbox::migrate) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The version before (0: no outbox tables).
    pub from: u32,
    /// The version after.
    pub to: u32,
    /// The migrations applied now, in order.
    pub applied: Vec<u32>,
}

/// Applies the migrations after the database's version up to `up_to`, in one
/// transaction, under a lock that serializes concurrent migrators of the same schema.
pub(crate) async fn migrate(
    client: &mut Client,
    schema: &str,
    partitions: u32,
    up_to: u32,
) -> Result<MigrationReport, OutboxError> {
    let tx = (client.transaction())
        .await
        .map_err(OutboxError::database("could not begin the migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, -1)",
        &[&lock_class(schema)],
    )
    .await
    .map_err(OutboxError::database(
        "could not lock the outbox for migrating",
    ))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.outbox_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(OutboxError::database(
        "could not create the migrations table",
    ))?;
    let from: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.outbox_migrations"),
            &[],
        )
        .await
        .map_err(OutboxError::database("could not read the outbox's version"))?
        .get(0);
    let from = u32::try_from(from).unwrap_or(0);
    if from > SCHEMA_VERSION {
        return Err(newer(schema, from));
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS
        .iter()
        .filter(|m| m.version > from && m.version <= up_to)
    {
        tx.batch_execute(&migration.sql.replace("{schema}", schema))
            .await
            .map_err(OutboxError::database(format!(
                "migration {} ({}) failed",
                migration.version, migration.name
            )))?;
        if migration.version == 1 {
            tx.execute(
                &format!("INSERT INTO {schema}.outbox_settings (partitions) VALUES ($1)"),
                &[&i32::try_from(partitions).unwrap_or(16)],
            )
            .await
            .map_err(OutboxError::database("could not record the partitions"))?;
        }
        tx.execute(
            &format!("INSERT INTO {schema}.outbox_migrations (version, name) VALUES ($1, $2)"),
            &[
                &i32::try_from(migration.version).unwrap_or(i32::MAX),
                &migration.name,
            ],
        )
        .await
        .map_err(OutboxError::database("could not record the migration"))?;
        applied.push(migration.version);
    }
    tx.commit()
        .await
        .map_err(OutboxError::database("could not commit the migration"))?;
    Ok(MigrationReport {
        from,
        to: applied.last().copied().unwrap_or(from),
        applied,
    })
}

/// The error for tables of a newer version than this crate's.
fn newer(schema: &str, version: u32) -> OutboxError {
    OutboxError::Schema(format!(
        "the outbox in schema `{schema}` is at version {version}, newer than this version of \
         fitviz-events knows ({SCHEMA_VERSION}): upgrade fitviz-events"
    ))
}

/// The query of the outbox's version and partitions, read by [`check`] and by the sqlx
/// enqueue, which both judge its answer with [`checked`].
pub(crate) fn settings_query(schema: &str) -> String {
    format!(
        "SELECT (SELECT max(version) FROM {schema}.outbox_migrations), \
                (SELECT partitions FROM {schema}.outbox_settings LIMIT 1)"
    )
}

/// The outbox's partitions, when its version is this crate's.
pub(crate) fn checked(
    schema: &str,
    version: Option<i32>,
    partitions: Option<i32>,
) -> Result<u32, OutboxError> {
    let version = version.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(newer(schema, version));
    }
    if version < SCHEMA_VERSION {
        return Err(OutboxError::not_migrated(schema));
    }
    partitions
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p >= 1)
        .ok_or_else(|| OutboxError::not_migrated(schema))
}

/// The outbox's version and partitions, checked against this crate's.
pub(crate) async fn check(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
) -> Result<u32, OutboxError> {
    let row = client
        .query_opt(&settings_query(schema), &[])
        .await
        .map_err(OutboxError::database_in(
            "could not read the outbox's version",
            schema,
        ))?
        .ok_or_else(|| OutboxError::not_migrated(schema))?;
    checked(schema, row.get(0), row.get(1))
}
