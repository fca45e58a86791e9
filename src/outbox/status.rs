//! What operators look at: counts, the lag, dead rows, and putting dead rows back.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;
use uuid::Uuid;

use super::{OutboxError, rows::Sql};

fn failed(context: &'static str, sql: &Sql) -> impl FnOnce(tokio_postgres::Error) -> OutboxError {
    OutboxError::database_in(context, &sql.schema)
}

/// The outbox at a glance ([`Outbox::status`](super::Outbox::status), `fitviz-events
/// outbox status`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Rows not yet published (committed, waiting for a relay or for their next attempt).
    pub pending: u64,
    /// Rows refused `max_attempts` times: published only after `outbox dead retry`.
    pub dead: u64,
    /// Seconds since the oldest pending row was enqueued (0 with none pending): the
    /// relay's lag.
    pub oldest_pending_age_secs: f64,
}

/// A row that went dead ([`Outbox::dead_rows`](super::Outbox::dead_rows), `fitviz-events
/// outbox dead list`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DeadRow {
    /// The event's id (its `message_id`).
    pub event_id: Uuid,
    /// Its type (routing key).
    pub event_type: String,
    /// Its ordering key.
    pub ordering_key: String,
    /// How many times the broker refused it.
    pub attempts: u32,
    /// The last refusal.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it went dead.
    pub dead_at: Option<DateTime<Utc>>,
}

pub(super) async fn status(client: &Client, sql: &Sql) -> Result<OutboxStatus, OutboxError> {
    let row = client
        .query_one(&sql.status, &[])
        .await
        .map_err(failed("could not count the outbox's rows", sql))?;
    let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok(OutboxStatus {
        pending: count(0),
        dead: count(1),
        oldest_pending_age_secs: row.get(2),
    })
}

pub(super) async fn dead_rows(
    client: &Client,
    sql: &Sql,
    limit: u32,
) -> Result<Vec<DeadRow>, OutboxError> {
    let rows = client
        .query(&sql.dead_rows, &[&i64::from(limit)])
        .await
        .map_err(failed("could not list the dead rows", sql))?;
    Ok(rows
        .iter()
        .map(|row| DeadRow {
            event_id: row.get(0),
            event_type: row.get(1),
            ordering_key: row.get(2),
            attempts: u32::try_from(row.get::<_, i32>(3)).unwrap_or(0),
            last_error: row.get(4),
            created_at: row.get(5),
            dead_at: row.get(6),
        })
        .collect())
}

pub(super) async fn retry_dead(
    client: &Client,
    sql: &Sql,
    event_ids: Option<&[Uuid]>,
) -> Result<u64, OutboxError> {
    let result = match event_ids {
        Some(ids) => client.execute(&sql.retry_dead, &[&ids]).await,
        None => client.execute(&sql.retry_all_dead, &[]).await,
    };
    result.map_err(failed("could not retry the dead rows", sql))
}
