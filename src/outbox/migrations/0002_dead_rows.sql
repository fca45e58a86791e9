-- Dead rows are kept for the retention period, then deleted in bounded batches; rows
-- waiting for their next attempt hold back the later rows of their ordering key.
ALTER TABLE {schema}.outbox ADD COLUMN dead_at timestamptz;

UPDATE {schema}.outbox SET dead_at = now() WHERE state = 1 AND dead_at IS NULL;

CREATE INDEX outbox_dead ON {schema}.outbox (dead_at) WHERE state = 1;

CREATE INDEX outbox_waiting ON {schema}.outbox (partition, next_attempt_at) WHERE state = 0;
