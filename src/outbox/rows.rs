//! The SQL of the outbox table, for one schema (written once, when the outbox is made).

/// The outbox's statements, with the schema in them.
pub(super) struct Sql {
    /// The schema the statements are in.
    pub(super) schema: String,
    /// `$1` event id, `$2` event type, `$3` ordering key, `$4` partition, `$5`
    /// exchange, `$6` routing key, `$7` properties, `$8` body.
    pub(super) insert: String,
    /// A partition's next pending rows in order (`$1` partition, `$2` limit), but none
    /// of a key whose earlier row waits for its next attempt: order per key holds while
    /// a refused row backs off, and the other keys keep flowing.
    pub(super) pending: String,
    /// Deletes published rows (`$1` their seqs).
    pub(super) delete: String,
    /// Records a refusal of a row (`$1` seq, `$2` error, `$3` max attempts, `$4` base
    /// delay ms, `$5` max delay ms): one more attempt, the next one after the backoff,
    /// dead at `max_attempts`.
    pub(super) refused: String,
    /// Marks a row dead at once (`$1` seq, `$2` error): it can never be sent.
    pub(super) dead: String,
    /// Deletes up to 1,000 dead rows older than `$1` seconds.
    pub(super) cleanup: String,
    /// Pending rows, dead rows, the oldest pending row's age in seconds.
    pub(super) status: String,
    /// Dead rows, oldest first (`$1` limit).
    pub(super) dead_rows: String,
    /// Makes dead rows pending again (`$1` event ids).
    pub(super) retry_dead: String,
    /// Makes every dead row pending again.
    pub(super) retry_all_dead: String,
}

impl Sql {
    pub(super) fn new(schema: &str) -> Self {
        let t = format!("{schema}.outbox");
        Self {
            schema: schema.to_owned(),
            insert: format!(
                "INSERT INTO {t} (event_id, event_type, ordering_key, partition, exchange, \
                 routing_key, properties, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            pending: format!(
                "SELECT seq, ordering_key, exchange, routing_key, properties, body, attempts \
                 FROM {t} WHERE partition = $1 AND state = 0 AND ordering_key <> ALL(ARRAY( \
                   SELECT ordering_key FROM {t} \
                   WHERE partition = $1 AND state = 0 AND attempts > 0 \
                   AND next_attempt_at > now())) \
                 ORDER BY seq LIMIT $2"
            ),
            delete: format!("DELETE FROM {t} WHERE seq = ANY($1)"),
            refused: format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = $2, \
                   state = CASE WHEN attempts + 1 >= $3 THEN 1 ELSE 0 END, \
                   dead_at = CASE WHEN attempts + 1 >= $3 THEN now() END, \
                   next_attempt_at = now() + least($5::bigint, \
                     $4::bigint * (2::bigint ^ least(attempts, 40))::bigint) * interval '1 millisecond' \
                 WHERE seq = $1 RETURNING state"
            ),
            dead: format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = $2, state = 1, \
                 dead_at = now() WHERE seq = $1"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE state = 1 \
                 AND dead_at < now() - $1::bigint * interval '1 second' LIMIT 1000)"
            ),
            status: format!(
                "SELECT count(*) FILTER (WHERE state = 0), count(*) FILTER (WHERE state = 1), \
                 coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 0)), 0)::float8 \
                 FROM {t}"
            ),
            dead_rows: format!(
                "SELECT event_id, event_type, ordering_key, attempts, last_error, created_at, dead_at \
                 FROM {t} WHERE state = 1 ORDER BY seq LIMIT $1"
            ),
            retry_dead: format!(
                "UPDATE {t} SET state = 0, attempts = 0, dead_at = NULL, next_attempt_at = now() \
                 WHERE state = 1 AND event_id = ANY($1)"
            ),
            retry_all_dead: format!(
                "UPDATE {t} SET state = 0, attempts = 0, dead_at = NULL, next_attempt_at = now() \
                 WHERE state = 1"
            ),
        }
    }
}
