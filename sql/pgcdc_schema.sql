-- pgcdc schema: catalog, queue, runtime status. Runs first in CREATE EXTENSION pgcdc
-- (before the generated functions); sql/pgcdc_finalize.sql runs last.
-- The extension's schema is `pgcdc` (pgcdc.control); @extschema@ is not needed.

-- Role whose members administer every feed (create, and use any feed). Roles are
-- cluster-wide, so it may already exist from another database.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgcdc_admin') THEN
        CREATE ROLE pgcdc_admin NOLOGIN;
    END IF;
END
$$;

-- One row per feed. Logged: the acknowledged position must survive crashes.
CREATE TABLE pgcdc.feed (
    id            integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text        NOT NULL UNIQUE
                  CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    publication   text        NOT NULL,
    slot_name     text        NOT NULL UNIQUE,
    sink          text        NOT NULL CHECK (sink IN ('table', 'notify')),
    options       jsonb       NOT NULL DEFAULT '{}',
    owner         regrole     NOT NULL,
    state         text        NOT NULL DEFAULT 'running'
                  CHECK (state IN ('running', 'paused', 'error')),
    last_error    text,
    last_error_at timestamptz,
    acked_lsn     pg_lsn      NOT NULL DEFAULT '0/0',
    acked_ordinal integer     NOT NULL DEFAULT 0,
    acked_at      timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgcdc.feed IS
    'pgcdc feeds: publication, replication slot, sink, options, state and acknowledged position. Managed by the pgcdc.*_feed functions.';
COMMENT ON COLUMN pgcdc.feed.acked_lsn IS
    'Commit LSN of the acknowledged position: every event at (acked_lsn, acked_ordinal) or before is consumed.';
COMMENT ON COLUMN pgcdc.feed.acked_ordinal IS
    'Ordinal of the acknowledged position within its transaction; 2147483647 = the whole transaction.';

-- The staging queue: a cache of the slot (DESIGN.md §3). UNLOGGED, so a crash empties it and
-- the worker stages every unacknowledged event again from the slot.
CREATE UNLOGGED TABLE pgcdc.event (
    feed_id     integer     NOT NULL,
    commit_lsn  pg_lsn      NOT NULL,
    ordinal     integer     NOT NULL,
    lsn         pg_lsn      NOT NULL,
    xid         bigint,
    op          text        NOT NULL,
    schema_name text        NOT NULL,
    table_name  text        NOT NULL,
    relid       oid,
    topic       text        NOT NULL,
    key         text,
    value       text,
    headers     json,
    staged_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (feed_id, commit_lsn, ordinal)
) WITH (
    -- A queue: rows come and go by the hundred thousand. Keep statistics and the visibility
    -- map current (pgcdc.read does not depend on statistics, but everything else does).
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000,
    -- Events live for moments: compressing them costs more than the space they take. Rows
    -- up to a page stay whole and inline (TOAST starts past 8160 bytes, not 2 kB) ...
    toast_tuple_target = 8160
);
-- ... and bigger ones move out of line uncompressed.
ALTER TABLE pgcdc.event ALTER COLUMN key SET STORAGE EXTERNAL, ALTER COLUMN value SET STORAGE EXTERNAL;
COMMENT ON TABLE pgcdc.event IS
    'Staged Debezium events, one row per event, in position order (commit_lsn, ordinal). Read with pgcdc.read, remove with pgcdc.ack (DELETE and TRUNCATE by hand are refused: see pgcdc.event_guard).';
COMMENT ON COLUMN pgcdc.event.relid IS
    'OID of the table the event comes from (NULL for messages and transaction records): pgcdc.read checks the reader''s privileges on this relation, so a table created later under the same name grants nothing on these events.';

-- Streamed transactions (pgoutput streaming: a transaction bigger than
-- logical_decoding_work_mem arrives in blocks before it commits). The worker stages each block
-- in pgcdc.event as it arrives, under the provisional commit_lsn 'FFFFFFFF/<xid>' (beyond any
-- real WAL position, so pgcdc.read never reaches it); at the commit one row here makes them
-- readable at (commit_lsn, ordinal), with what the commit tells (pgcdc_core's
-- debezium::streamed). UNLOGGED like the queue it describes.
CREATE UNLOGGED TABLE pgcdc.stream_commit (
    feed_id         integer NOT NULL,
    commit_lsn      pg_lsn  NOT NULL,
    xid             bigint  NOT NULL,
    commit_micros   bigint  NOT NULL,
    last_commit_end pg_lsn,
    last_ordinal    integer NOT NULL,
    PRIMARY KEY (feed_id, commit_lsn),
    UNIQUE (feed_id, xid)
);
COMMENT ON TABLE pgcdc.stream_commit IS
    'Committed streamed transactions whose events are in pgcdc.event under commit_lsn ''FFFFFFFF/<xid>'': their commit LSN, commit time (microseconds since 1970) and the end of the commit before them, which pgcdc.read fills into their events. Removed when every event is acknowledged.';

-- What each feed worker is doing now. UNLOGGED: it describes running processes only.
CREATE UNLOGGED TABLE pgcdc.feed_runtime (
    feed_id        integer     PRIMARY KEY,
    pid            integer     NOT NULL,
    phase          text        NOT NULL,
    started_at     timestamptz NOT NULL,
    received_lsn   pg_lsn,
    staged_lsn     pg_lsn,
    staged_ordinal integer,
    complete_lsn   pg_lsn,
    confirmed_lsn  pg_lsn,
    staged_total   bigint      NOT NULL DEFAULT 0,
    queued_events  bigint      NOT NULL DEFAULT 0,
    queued_bytes   bigint      NOT NULL DEFAULT 0,
    failures       integer     NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL
);
COMMENT ON TABLE pgcdc.feed_runtime IS
    'Written by feed workers: pid, phase (starting, streaming, at_cap, backoff), last received/staged/confirmed positions, events staged by this worker (staged_total), and the feed''s events and bytes in pgcdc.event (queued_*: raised by the worker as it stages, lowered by pgcdc.ack; UNLOGGED like the queue, so a crash empties both).';

-- Snapshots of a feed's tables (pgcdc.snapshot, create_feed with snapshot.mode initial).
-- Logged: the cursor must survive crashes (pgcdc_ext/src/snapshot.rs).
CREATE TABLE pgcdc.snapshot (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    feed_id        integer     NOT NULL REFERENCES pgcdc.feed (id) ON DELETE CASCADE,
    kind           text        NOT NULL CHECK (kind IN ('initial', 'incremental')),
    state          text        NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'running', 'done', 'cancelled', 'failed')),
    tables         oid[]       NOT NULL,
    table_names    text[]      NOT NULL,
    table_index    integer     NOT NULL DEFAULT 0,
    last_key       text[],
    rows_staged    bigint      NOT NULL DEFAULT 0,
    rows_estimated bigint      NOT NULL DEFAULT 0,
    chunks         integer     NOT NULL DEFAULT 0,
    chunks_read    integer     NOT NULL DEFAULT 0,
    tables_skipped text[]      NOT NULL DEFAULT '{}',
    requested_at   timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    error          text
);
CREATE INDEX ON pgcdc.snapshot (feed_id, id);
COMMENT ON TABLE pgcdc.snapshot IS
    'Snapshots of feeds: the tables to read, the cursor (table_index, last_key = primary-key text of the last row read), progress and outcome. Managed by pgcdc.snapshot, pgcdc.cancel_snapshot, create_feed and the feed workers; see the view pgcdc.snapshots.';

-- Chunks staged but not yet acknowledged: where to go back to if a crash empties the queue.
CREATE TABLE pgcdc.snapshot_chunk (
    snapshot_id  bigint  NOT NULL REFERENCES pgcdc.snapshot (id) ON DELETE CASCADE,
    chunk        integer NOT NULL,
    table_index  integer NOT NULL,
    from_key     text[],
    commit_lsn   pg_lsn  NOT NULL,
    last_ordinal integer NOT NULL,
    rows         integer NOT NULL,
    PRIMARY KEY (snapshot_id, chunk)
);
COMMENT ON TABLE pgcdc.snapshot_chunk IS
    'Snapshot chunks staged and not yet fully acknowledged: their cursor (table_index, from_key) and the position of their last row. A worker that finds one neither acknowledged nor in the queue (a crash emptied it) reads again from there.';

REVOKE ALL ON pgcdc.feed, pgcdc.event, pgcdc.stream_commit, pgcdc.feed_runtime, pgcdc.snapshot, pgcdc.snapshot_chunk
    FROM PUBLIC;
GRANT USAGE ON SCHEMA pgcdc TO PUBLIC;
