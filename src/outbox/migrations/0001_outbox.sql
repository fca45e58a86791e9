-- The outbox: one row per event enqueued in a committed transaction, until a relay
-- has published it with a broker confirm (then the row is deleted). `{schema}` is the
-- configured schema.
CREATE TABLE {schema}.outbox_settings (
    partitions integer NOT NULL CHECK (partitions BETWEEN 1 AND 1024)
);

CREATE TABLE {schema}.outbox (
    -- The order rows of one ordering key are published in.
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,
    event_type      text NOT NULL,
    -- Order is kept per ordering key (by default the organization id).
    ordering_key    text NOT NULL,
    partition       integer NOT NULL,
    -- The encoded message, sent byte for byte by every (re-)publish.
    exchange        text NOT NULL,
    routing_key     text NOT NULL,
    properties      bytea NOT NULL,
    body            bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Refusals so far (a nack, unroutable, refused, too large), the last one's error,
    -- and when the row may be tried again.
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- 0: pending; 1: dead (refused max_attempts times; retried only by hand).
    state           smallint NOT NULL DEFAULT 0
);

-- A relay reads a partition's pending rows in order.
CREATE INDEX outbox_pending ON {schema}.outbox (partition, seq) WHERE state = 0;
