-- Dead rows are kept for the retention period, then deleted in bounded batches; rows
-- waiting for their next attempt (only refused rows: attempts > 0) hold back the later
-- rows of their ordering key. New rows (attempts = 0) are in neither index: an enqueue
-- maintains no more than it must.
ALTER TABLE {schema}.outbox ADD COLUMN dead_at timestamptz;

UPDATE {schema}.outbox SET dead_at = now() WHERE state = 1 AND dead_at IS NULL;

CREATE INDEX outbox_dead ON {schema}.outbox (dead_at) WHERE state = 1;

CREATE INDEX outbox_waiting ON {schema}.outbox (partition, next_attempt_at)
    WHERE state = 0 AND attempts > 0;
