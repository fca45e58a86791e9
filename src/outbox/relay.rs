//! The relay: publishes the rows of committed transactions, in order per ordering key,
//! and deletes each row once the broker has confirmed it.
//!
//! **Ownership.** The outbox is split into partitions (a row's partition is a hash of
//! its ordering key). A relay owns a partition while it holds the PostgreSQL advisory
//! lock `(class of the schema, partition)` on its own *lock connection* — a dedicated
//! connection, not a pooled one, named `fitviz-events relay <schema>` — so no two
//! relays, in any processes, ever publish a partition at once, and a relay that dies
//! (`kill -9`, a lost connection) releases its partitions with its connection. Every
//! second each relay counts the lock connections of its schema in `pg_stat_activity`
//! and holds `ceil(partitions / relays)` partitions: a relay that starts gets its share
//! as the others release theirs (each after its batch in flight).
//!
//! **Publishing.** One task per owned partition reads the partition's pending rows in
//! `seq` order, a batch at a time (no high-water mark: a row that commits late is read
//! on the next round), publishes them as one ordered sequence
//! ([`EventPublisher::publish_encoded_in_order`](crate::EventPublisher::publish_encoded_in_order):
//! one channel, in order, confirms pipelined), deletes the confirmed rows, and looks
//! again. No database transaction is open while it waits for the broker.
//!
//! **Failures.** A broker that is unavailable (connection, timeout, circuit open,
//! blocked) costs the rows nothing: the partition backs off (100 ms doubling to 5 s) and
//! tries again from its first pending row. A refusal of one row (a nack, unroutable
//! with the `error` policy, 403/404/406, too large) counts an attempt on that row and
//! delays its next one (`retry_base_delay`, doubling, up to `retry_max_delay`); the
//! later rows of its key wait behind it, the other keys flow; after `max_attempts` it
//! goes dead, with its last error, until `fitviz-events outbox dead retry`. A row whose
//! stored message does not even parse goes dead at once.
//!
//! **At least once.** A row is deleted only after its confirm, so a relay that dies
//! between the confirm and the delete publishes its last batch again when it (or
//! another) takes the partition: duplicates are bounded by the batch size and carry
//! the same `message_id` and bytes.
//!
//! **Housekeeping**, by the owner of partition 0: dead rows older than `dead_retention`
//! are deleted, 1,000 per statement, once a minute; the outbox gauges (pending, dead,
//! oldest pending age) are set every five seconds.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use metrics::SharedString;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tokio_postgres::{Client, NoTls};

use super::{Outbox, OutboxError, lock_class, migrations, pg_config, status};
use crate::{
    error::{ErrorKind, PublishError},
    event::EncodedEvent,
    log_limit::LogLimiter,
    telemetry::{OUTBOX_DEAD, OUTBOX_OLDEST_PENDING_AGE, OUTBOX_PENDING, OUTBOX_RELAYED},
};

/// How often a relay counts the relays and rebalances its partitions.
const REBALANCE_EVERY: Duration = Duration::from_secs(1);
/// The longest back-off of a partition whose broker is unavailable, and of the relay
/// when its database is.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the owner of partition 0 deletes old dead rows.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);
/// How often the owner of partition 0 sets the outbox gauges.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

/// A relay running in this process ([`Outbox::start_relay`]). Stop it with
/// [`stop`](Self::stop); dropping the handle stops it too, without waiting.
#[derive(Debug)]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    state: Arc<RelayState>,
}

#[derive(Debug, Default)]
struct RelayState {
    owned: Mutex<BTreeSet<u32>>,
    relayed: AtomicU64,
}

impl RelayHandle {
    /// The partitions this relay owns now.
    pub fn partitions(&self) -> Vec<u32> {
        lock(&self.state.owned).iter().copied().collect()
    }

    /// Rows this relay has published (confirmed) and deleted.
    pub fn relayed(&self) -> u64 {
        self.state.relayed.load(Ordering::Relaxed)
    }

    /// Stops the relay: each partition finishes the batch it is publishing (bounded by
    /// the publish timeout), then the partitions are released.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub(super) fn start(outbox: Outbox) -> RelayHandle {
    let (stop, stopped) = watch::channel(false);
    let state = Arc::new(RelayState::default());
    let task = tokio::spawn(run(outbox, state.clone(), stopped));
    RelayHandle {
        stop,
        task: Some(task),
        state,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sleeps `duration`, or less when the relay is stopped; returns whether it was.
async fn sleep_or_stop(duration: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    if *stopped.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(duration) => *stopped.borrow(),
        _ = stopped.changed() => true,
    }
}

fn double(backoff: Duration) -> Duration {
    (backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF)
}

/// The application name of a relay's lock connection in `pg_stat_activity` (the relays
/// count each other by it): `fitviz-events relay <schema's lock class> <schema>`, cut to
/// the 63 bytes PostgreSQL keeps.
pub fn lock_connection_name(schema: &str) -> String {
    super::application_name("relay", schema)
}

async fn run(outbox: Outbox, state: Arc<RelayState>, mut stopped: watch::Receiver<bool>) {
    let schema = outbox.inner.config.schema.clone();
    let name = lock_connection_name(&schema);
    let log = LogLimiter::default();
    let mut backoff = Duration::ZERO;
    loop {
        if *stopped.borrow() {
            return;
        }
        let connected = match pg_config(&outbox.inner.config, &name) {
            Ok(config) => config.connect(NoTls).await.map_err(OutboxError::database(
                "the relay could not open its lock connection",
            )),
            Err(error) => Err(error),
        };
        let error = match connected {
            Ok((client, connection)) => {
                let driver = tokio::spawn(connection);
                let result = own_partitions(&outbox, &client, &name, &state, &mut stopped).await;
                drop(client);
                driver.abort();
                match result {
                    Ok(()) => return,
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        backoff = double(backoff);
        if log.admit("relay").is_some() {
            tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "outbox relay: lost its database; trying again");
        }
        if sleep_or_stop(backoff, &mut stopped).await {
            return;
        }
    }
}

/// One partition's task, and how to stop it.
struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Holds the relay's share of the partitions on `client` (the lock connection) until
/// the relay is stopped (`Ok`) or the connection fails (`Err`: the partitions were
/// released with it, so their tasks are aborted at once).
async fn own_partitions(
    outbox: &Outbox,
    client: &Client,
    name: &str,
    state: &Arc<RelayState>,
    stopped: &mut watch::Receiver<bool>,
) -> Result<(), OutboxError> {
    let schema = &outbox.inner.config.schema;
    let partitions = migrations::check(client, schema).await?;
    let class = lock_class(schema);
    let mut workers: BTreeMap<u32, Worker> = BTreeMap::new();
    let mut tick = tokio::time::interval(REBALANCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => break Ok(()),
        }
        if *stopped.borrow() {
            break Ok(());
        }
        if let Err(error) =
            rebalance(outbox, client, name, class, partitions, state, &mut workers).await
        {
            break Err(error);
        }
    };
    let graceful = result.is_ok();
    for (partition, worker) in std::mem::take(&mut workers) {
        if graceful {
            let _ = worker.stop.send(true);
            let _ = worker.task.await;
            let _ = client
                .execute(
                    "SELECT pg_advisory_unlock($1, $2)",
                    &[&class, &(partition as i32)],
                )
                .await;
        } else {
            worker.task.abort();
        }
        lock(&state.owned).remove(&partition);
    }
    result
}

/// Takes or releases partitions so that this relay holds its share.
async fn rebalance(
    outbox: &Outbox,
    client: &Client,
    name: &str,
    class: i32,
    partitions: u32,
    state: &Arc<RelayState>,
    workers: &mut BTreeMap<u32, Worker>,
) -> Result<(), OutboxError> {
    let relays: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .map_err(OutboxError::database(
            "the relay could not count the relays",
        ))?
        .get(0);
    let relays = u32::try_from(relays).unwrap_or(1).max(1);
    let share = partitions.div_ceil(relays) as usize;
    // A task ends only when stopped, or when it panicked: its partition is released.
    let ended: Vec<u32> = (workers.iter())
        .filter(|(_, worker)| worker.task.is_finished())
        .map(|(partition, _)| *partition)
        .collect();
    for partition in ended {
        workers.remove(&partition);
        release(client, class, partition, state).await?;
    }
    while workers.len() > share {
        let Some((partition, worker)) = workers.pop_last() else {
            break;
        };
        let _ = worker.stop.send(true);
        let _ = worker.task.await;
        release(client, class, partition, state).await?;
    }
    if workers.len() < share {
        let start = fastrand::u32(..partitions);
        for offset in 0..partitions {
            let partition = (start + offset) % partitions;
            if workers.len() >= share {
                break;
            }
            if workers.contains_key(&partition) {
                continue;
            }
            let locked: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&class, &(partition as i32)],
                )
                .await
                .map_err(OutboxError::database(
                    "the relay could not lock a partition",
                ))?
                .get(0);
            if locked {
                lock(&state.owned).insert(partition);
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(work(outbox.clone(), partition, state.clone(), stopped));
                workers.insert(partition, Worker { stop, task });
                tracing::debug!(partition, "outbox relay: took a partition");
            }
        }
    }
    Ok(())
}

async fn release(
    client: &Client,
    class: i32,
    partition: u32,
    state: &RelayState,
) -> Result<(), OutboxError> {
    lock(&state.owned).remove(&partition);
    client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&class, &(partition as i32)],
        )
        .await
        .map_err(OutboxError::database(
            "the relay could not release a partition",
        ))?;
    tracing::debug!(partition, "outbox relay: released a partition");
    Ok(())
}

/// Whether a failure is the row's (the broker refused this message: count an attempt)
/// rather than the broker's (unavailable: back off, the row is not at fault).
fn refused(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Nacked
            | ErrorKind::Unroutable
            | ErrorKind::AccessRefused
            | ErrorKind::NotFound
            | ErrorKind::PreconditionFailed
            | ErrorKind::TooLarge
            | ErrorKind::Validation
    )
}

/// One pending row, as read.
struct Row {
    seq: i64,
    ordering_key: String,
    /// Refusals so far: a refused row is tried again with none of its key behind it.
    attempts: i32,
    event: Result<EncodedEvent, PublishError>,
}

/// Publishes one partition's rows until stopped.
async fn work(
    outbox: Outbox,
    partition: u32,
    state: Arc<RelayState>,
    mut stopped: watch::Receiver<bool>,
) {
    let inner = &outbox.inner;
    let config = &inner.config;
    let schema = SharedString::from(config.schema.clone());
    let relayed = metrics::counter!(OUTBOX_RELAYED, "schema" => schema.clone());
    let wake: Arc<Notify> = inner.wake.clone();
    let log = LogLimiter::default();
    let mut unavailable = Duration::ZERO;
    let mut housekeeping = (partition == 0).then(|| Housekeeping {
        cleaned: None,
        gauges: None,
        schema: schema.clone(),
    });
    loop {
        if *stopped.borrow() {
            return;
        }
        if let Some(housekeeping) = &mut housekeeping {
            housekeeping.run(&outbox).await;
        }
        // Listening before reading: a notify during the read is not missed.
        let notified = wake.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        let rows = match read(&outbox, partition).await {
            Ok(rows) => rows,
            Err(error) => {
                unavailable = double(unavailable);
                if log.admit("read").is_some() {
                    tracing::warn!(partition, %error, "outbox relay: could not read the partition");
                }
                if sleep_or_stop(unavailable, &mut stopped).await {
                    return;
                }
                continue;
            }
        };
        // A row refused before is tried again with no row of its key behind it: should
        // it be refused again, nothing of its key got ahead of it.
        let mut held = std::collections::HashSet::new();
        let rows: Vec<Row> = (rows.into_iter())
            .filter(|row| {
                if held.contains(&row.ordering_key) {
                    return false;
                }
                if row.attempts > 0 {
                    held.insert(row.ordering_key.clone());
                }
                true
            })
            .collect();
        if rows.is_empty() {
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(config.poll_interval) => {}
                _ = stopped.changed() => return,
            }
            continue;
        }
        // The first row that does not parse ends the batch there, and goes dead.
        let parsed = rows.iter().take_while(|row| row.event.is_ok()).count();
        let events: Vec<EncodedEvent> = (rows[..parsed].iter())
            .filter_map(|row| row.event.as_ref().ok().cloned())
            .collect();
        let results = inner
            .publisher
            .publish_encoded_in_order(u64::from(partition), &events)
            .await;
        let mut confirmed = Vec::with_capacity(results.len());
        let mut first_failure = None;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(_) => confirmed.push(row.seq),
                Err(error) if first_failure.is_none() => first_failure = Some((row.seq, error)),
                Err(_) => {}
            }
        }
        let mut database_failed = false;
        if !confirmed.is_empty() {
            match delete(&outbox, &confirmed).await {
                Ok(()) => {
                    relayed.increment(confirmed.len() as u64);
                    state
                        .relayed
                        .fetch_add(confirmed.len() as u64, Ordering::Relaxed);
                }
                // Published but not deleted: they go again (duplicates, same bytes).
                Err(error) => {
                    database_failed = true;
                    if log.admit("delete").is_some() {
                        tracing::warn!(partition, %error, "outbox relay: could not delete published rows");
                    }
                }
            }
        }
        if parsed < rows.len() && first_failure.is_none() {
            let row = &rows[parsed];
            if let Err(error) = &row.event {
                let message = format!("the stored message does not parse: {error}");
                if let Err(error) = mark_dead(&outbox, row.seq, &message).await {
                    database_failed = true;
                    tracing::warn!(partition, %error, "outbox relay: could not mark a row dead");
                } else {
                    tracing::error!(
                        partition,
                        seq = row.seq,
                        "outbox relay: {message}; the row is dead"
                    );
                }
            }
        }
        match first_failure {
            None if !database_failed => unavailable = Duration::ZERO,
            None => {
                unavailable = double(unavailable);
                if sleep_or_stop(unavailable, &mut stopped).await {
                    return;
                }
            }
            Some((seq, error)) if refused(error.kind()) => {
                unavailable = Duration::ZERO;
                match record_refusal(&outbox, seq, &error).await {
                    Ok(true) => {
                        tracing::error!(partition, seq, event_id = ?error.event_id(), %error, "outbox relay: refused {} times; the row is dead", config.max_attempts)
                    }
                    Ok(false) => {
                        tracing::warn!(partition, seq, event_id = ?error.event_id(), %error, "outbox relay: the broker refused a row; it will be tried again")
                    }
                    Err(db) => {
                        tracing::warn!(partition, error = %db, "outbox relay: could not record a refusal");
                        if sleep_or_stop(MAX_BACKOFF, &mut stopped).await {
                            return;
                        }
                    }
                }
            }
            Some((_, error)) => {
                unavailable = double(unavailable);
                if log.admit(error.kind()).is_some() {
                    tracing::warn!(partition, %error, retry_in_ms = unavailable.as_millis() as u64, "outbox relay: the broker is unavailable");
                }
                if sleep_or_stop(unavailable, &mut stopped).await {
                    return;
                }
            }
        }
    }
}

async fn read(outbox: &Outbox, partition: u32) -> Result<Vec<Row>, OutboxError> {
    let inner = &outbox.inner;
    let client = outbox.client("the relay could not connect").await?;
    let rows = client
        .query(
            &inner.sql.pending,
            &[&(partition as i32), &(inner.config.batch_size as i64)],
        )
        .await
        .map_err(OutboxError::database(
            "the relay could not read pending rows",
        ))?;
    Ok(rows
        .iter()
        .map(|row| {
            let exchange: &str = row.get(2);
            let routing_key: &str = row.get(3);
            let properties: &[u8] = row.get(4);
            let body: Vec<u8> = row.get(5);
            Row {
                seq: row.get(0),
                ordering_key: row.get(1),
                attempts: row.get(6),
                event: EncodedEvent::from_stored(exchange, routing_key, properties, body),
            }
        })
        .collect())
}

async fn delete(outbox: &Outbox, seqs: &[i64]) -> Result<(), OutboxError> {
    let client = outbox.client("the relay could not connect").await?;
    client
        .execute(&outbox.inner.sql.delete, &[&seqs])
        .await
        .map_err(OutboxError::database(
            "the relay could not delete published rows",
        ))?;
    Ok(())
}

async fn mark_dead(outbox: &Outbox, seq: i64, error: &str) -> Result<(), OutboxError> {
    let client = outbox.client("the relay could not connect").await?;
    client
        .execute(&outbox.inner.sql.dead, &[&seq, &error])
        .await
        .map_err(OutboxError::database("the relay could not mark a row dead"))?;
    Ok(())
}

/// Counts a refusal of the row; returns whether it is dead now.
async fn record_refusal(
    outbox: &Outbox,
    seq: i64,
    error: &PublishError,
) -> Result<bool, OutboxError> {
    let config = &outbox.inner.config;
    let client = outbox.client("the relay could not connect").await?;
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let row = client
        .query_one(
            &outbox.inner.sql.refused,
            &[
                &seq,
                &error.to_string(),
                &i32::try_from(config.max_attempts).unwrap_or(i32::MAX),
                &ms(config.retry_base_delay),
                &ms(config.retry_max_delay),
            ],
        )
        .await
        .map_err(OutboxError::database(
            "the relay could not record a refusal",
        ))?;
    Ok(row.get::<_, i16>(0) == 1)
}

/// What the owner of partition 0 does besides publishing.
struct Housekeeping {
    cleaned: Option<Instant>,
    gauges: Option<Instant>,
    schema: SharedString,
}

impl Housekeeping {
    async fn run(&mut self, outbox: &Outbox) {
        let due =
            |last: Option<Instant>, every: Duration| last.is_none_or(|at| at.elapsed() >= every);
        if due(self.gauges, GAUGES_EVERY) {
            self.gauges = Some(Instant::now());
            if let Ok(client) = outbox.client("the relay could not connect").await
                && let Ok(status) = status::status(&client, &outbox.inner.sql).await
            {
                let schema = self.schema.clone();
                metrics::gauge!(OUTBOX_PENDING, "schema" => schema.clone())
                    .set(status.pending as f64);
                metrics::gauge!(OUTBOX_DEAD, "schema" => schema.clone()).set(status.dead as f64);
                metrics::gauge!(OUTBOX_OLDEST_PENDING_AGE, "schema" => schema)
                    .set(status.oldest_pending_age_secs);
            }
        }
        if due(self.cleaned, CLEANUP_EVERY) {
            self.cleaned = Some(Instant::now());
            let retention =
                i64::try_from(outbox.inner.config.dead_retention.as_secs()).unwrap_or(i64::MAX);
            if let Ok(client) = outbox.client("the relay could not connect").await {
                // Bounded: at most 10 statements of 1,000 rows a minute.
                for _ in 0..10 {
                    match client
                        .execute(&outbox.inner.sql.cleanup, &[&retention])
                        .await
                    {
                        Ok(1000) => continue,
                        Ok(_) => break,
                        Err(error) => {
                            tracing::warn!(%error, "outbox relay: could not delete old dead rows");
                            break;
                        }
                    }
                }
            }
        }
    }
}
