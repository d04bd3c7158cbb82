-- pgcdc: views, comments and grants. Runs last in CREATE EXTENSION pgcdc (after the
-- functions generated from pgcdc_ext/src/feed/sql_api.rs).

-- Feeds the current role may use (owner, pgcdc_admin members, superusers).
CREATE VIEW pgcdc.feeds WITH (security_barrier) AS
SELECT f.name,
       f.publication,
       f.sink,
       f.state,
       f.owner,
       f.slot_name,
       'pgcdc_' || f.name AS channel,
       f.options,
       f.created_at
FROM pgcdc.feed f
WHERE pg_catalog.pg_has_role(f.owner, 'USAGE') OR pg_catalog.pg_has_role('pgcdc_admin', 'USAGE');
COMMENT ON VIEW pgcdc.feeds IS
    'Feeds you may use: publication, sink, state, owner, replication slot, LISTEN channel and options.';

-- Live state of each feed: worker, slot, queue, acknowledged position, lag, last error.
-- staged_events/staged_bytes are the counters the worker and pgcdc.ack keep (no scan of the
-- queue); lag_seconds reads one row of the queue through its primary key.
CREATE VIEW pgcdc.feed_status WITH (security_barrier) AS
SELECT f.name,
       f.state,
       a.pid AS worker_pid,
       CASE WHEN f.state <> 'running' THEN f.state
            WHEN a.pid IS NULL THEN 'starting'
            ELSE r.phase END AS phase,
       f.slot_name,
       s.active AS slot_active,
       s.wal_status AS slot_wal_status,
       coalesce(r.queued_events, 0) AS staged_events,
       coalesce(r.queued_bytes, 0) AS staged_bytes,
       f.acked_lsn,
       f.acked_ordinal,
       f.acked_at,
       s.confirmed_flush_lsn,
       s.restart_lsn,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint
           AS lag_bytes,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)::bigint
           AS retained_bytes,
       extract(epoch FROM pg_catalog.now() - q.oldest_staged_at)::float8 AS lag_seconds,
       CASE WHEN a.pid IS NOT NULL THEN r.received_lsn END AS received_lsn,
       CASE WHEN a.pid IS NOT NULL THEN r.staged_lsn END AS staged_lsn,
       CASE WHEN a.pid IS NOT NULL THEN r.staged_ordinal END AS staged_ordinal,
       CASE WHEN a.pid IS NOT NULL THEN r.complete_lsn END AS complete_lsn,
       CASE WHEN a.pid IS NOT NULL THEN r.confirmed_lsn END AS confirmed_lsn,
       CASE WHEN a.pid IS NOT NULL THEN r.staged_total END AS staged_total,
       coalesce(r.failures, 0) AS failures,
       f.last_error,
       f.last_error_at,
       sn.state AS snapshot_state,
       sn.table_names[sn.table_index + 1] AS snapshot_table,
       sn.rows_staged AS snapshot_rows,
       GREATEST(sn.rows_estimated, sn.rows_staged) AS snapshot_rows_estimated,
       (sn.rows_staged / nullif(extract(epoch FROM pg_catalog.now() - sn.started_at), 0))::float8
           AS snapshot_rows_per_second
FROM pgcdc.feed f
LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = f.slot_name
LEFT JOIN pgcdc.feed_runtime r ON r.feed_id = f.id
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = r.pid AND a.backend_type = 'pgcdc feed'
LEFT JOIN LATERAL (
    SELECT e.staged_at AS oldest_staged_at
    FROM pgcdc.event e
    WHERE e.feed_id = f.id AND e.commit_lsn < 'FFFFFFFF/0'  -- not a streamed transaction's
    ORDER BY e.commit_lsn, e.ordinal
    LIMIT 1) q ON true
LEFT JOIN LATERAL (
    SELECT * FROM pgcdc.snapshot x
    WHERE x.feed_id = f.id AND x.state IN ('pending', 'running')
    ORDER BY x.id
    LIMIT 1) sn ON true
WHERE pg_catalog.pg_has_role(f.owner, 'USAGE') OR pg_catalog.pg_has_role('pgcdc_admin', 'USAGE');
COMMENT ON VIEW pgcdc.feed_status IS
    'Per feed: state, worker pid and phase (starting, streaming, at_cap, backoff), slot, staged events/bytes, acknowledged position, confirmed_flush_lsn, lag_bytes (WAL not yet acknowledged), retained_bytes (WAL the slot pins), lag_seconds (age of the oldest unacknowledged staged event), last error, and the running snapshot (state, current table, rows staged, estimated, rows per second; NULL when none).';

-- Snapshots of the feeds the current role may use, with progress.
CREATE VIEW pgcdc.snapshots WITH (security_barrier) AS
SELECT f.name AS feed,
       s.id,
       s.kind,
       s.state,
       s.table_names AS tables,
       CASE WHEN s.state IN ('pending', 'running') THEN s.table_names[s.table_index + 1] END AS current_table,
       LEAST(s.table_index, pg_catalog.cardinality(s.tables)) AS tables_done,
       s.tables_skipped,
       s.rows_staged AS rows,
       GREATEST(s.rows_estimated, s.rows_staged) AS rows_estimated,
       s.chunks,
       s.chunks_read,
       (s.rows_staged / nullif(extract(epoch FROM coalesce(s.finished_at, pg_catalog.now()) - s.started_at), 0))::float8
           AS rows_per_second,
       CASE WHEN s.state = 'running' AND s.rows_staged > 0 AND s.rows_estimated > s.rows_staged THEN
           ((s.rows_estimated - s.rows_staged)
            * extract(epoch FROM pg_catalog.now() - s.started_at) / s.rows_staged)::float8 END AS eta_seconds,
       s.requested_at,
       s.started_at,
       s.finished_at,
       s.error
FROM pgcdc.snapshot s JOIN pgcdc.feed f ON f.id = s.feed_id
WHERE pg_catalog.pg_has_role(f.owner, 'USAGE') OR pg_catalog.pg_has_role('pgcdc_admin', 'USAGE');
COMMENT ON VIEW pgcdc.snapshots IS
    'Snapshots of the feeds you may use: kind (initial, incremental), state (pending, running, done, cancelled, failed), tables, current table, tables done and skipped (dropped meanwhile), rows staged and estimated, chunks staged and read (re-reads after a crash or a retry count), rows per second, ETA, times, error.';

-- pgcdc.snapshot(feed, tables): table names resolve in the caller's session (regclass).
CREATE FUNCTION pgcdc.snapshot(feed text, tables regclass[] DEFAULT NULL) RETURNS bigint
    LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
    AS 'SELECT pgcdc.snapshot_by_oid(feed, tables::pg_catalog.oid[])';
COMMENT ON FUNCTION pgcdc.snapshot(text, regclass[]) IS
    'snapshot(feed, tables => NULL): queues a snapshot of the given tables (default: every table the publication publishes) beside the stream; returns its id. Rows arrive as op "r" events (source.snapshot "incremental") in position order with the stream; see pgcdc.snapshots for progress. Tables need a primary key; the feed''s owner must be able to SELECT them.';
COMMENT ON FUNCTION pgcdc.snapshot_by_oid(text, oid[]) IS
    'The body of pgcdc.snapshot(feed, tables regclass[]).';
COMMENT ON FUNCTION pgcdc.cancel_snapshot(text) IS
    'cancel_snapshot(feed): cancels the feed''s pending and running snapshots; returns how many. Rows already staged stay.';

GRANT SELECT ON pgcdc.feeds, pgcdc.feed_status, pgcdc.snapshots TO PUBLIC;

-- Only administrators create feeds (the function checks it too). The other functions check
-- the caller's rights on the feed itself, so feed owners who are not admins can use them.
-- Every pgcdc function runs with search_path = pg_catalog, pg_temp (see access.rs).
REVOKE EXECUTE ON FUNCTION pgcdc.create_feed(text, text, text, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgcdc.create_feed(text, text, text, jsonb, text) TO pgcdc_admin;

COMMENT ON FUNCTION pgcdc.create_feed(text, text, text, jsonb, text) IS
    'create_feed(name, publication, sink => ''table''|''notify'', options => jsonb, owner => role): creates the replication slot pgcdc_<name> now (every change committed after this call is captured) and starts a worker at commit. Returns the slot''s consistent LSN. Needs pgcdc_admin (sink ''notify'': a superuser, because NOTIFY payloads reach every role that can LISTEN); the owner must be able to SELECT every published table; the database must be UTF8. Options: Debezium encoder options (decimal.handling.mode, ...), snapshot.mode (initial: the default, existing rows first as op "r" events; no_data: changes only; initial_only: existing rows, then the feed pauses; when_needed: as initial for a new feed), snapshot.fetch.size (rows per snapshot chunk, default 10240), and max_staged_rows, max_staged_bytes, batch_size.';
COMMENT ON FUNCTION pgcdc.drop_feed(text, boolean) IS
    'drop_feed(name, if_exists => false): deletes the feed and its staged events; at commit its worker stops and its replication slot is dropped.';
COMMENT ON FUNCTION pgcdc.pause_feed(text) IS
    'pause_feed(name): stops the feed''s worker at commit; the slot keeps every change (and retains WAL) until resume_feed.';
COMMENT ON FUNCTION pgcdc.resume_feed(text) IS
    'resume_feed(name): restarts a paused feed, or a feed stopped by an error (clears last_error).';
COMMENT ON FUNCTION pgcdc.alter_feed(text, jsonb) IS
    'alter_feed(name, options): merges options into the feed''s (a JSON null removes a key) and restarts its worker to apply them. Returns the resulting options.';
COMMENT ON FUNCTION pgcdc.read(text, integer, pg_lsn, integer) IS
    'read(feed, max_events => 100, after_lsn, after_ordinal): the next staged events after the acknowledged position (or after the given one), in position order (commit_lsn, ordinal). event is the Debezium value JSON, key the Debezium key. Does not consume: acknowledge with pgcdc.ack. LISTEN pgcdc_<feed> to be woken when events are staged. Returns no more rows once their JSON reaches 64 MB (at least one row): fewer rows than max_events do not mean the queue is drained. Needs SELECT on every table the publication publishes and every table of the returned events, without row-level security applying.';
COMMENT ON FUNCTION pgcdc.ack(text, pg_lsn, integer) IS
    'ack(feed, lsn, ordinal => NULL): with ordinal, every event at position <= (lsn, ordinal) is consumed (the position must be an event staged for this feed, as pgcdc.read returned it); without, every event of the transactions committed at or before lsn (lsn must be the commit_lsn of events staged for this feed, and those transactions completely staged). Removes those events; the slot advances past fully acknowledged transactions. Returns the number of events removed. Idempotent.';
COMMENT ON FUNCTION pgcdc.reset_feed(text) IS
    'reset_feed(name): discards the feed''s backlog: every change committed up to now, staged or not, is acknowledged (staged events are removed, the worker skips the rest). Returns the new acknowledged LSN. The supported way to empty a feed''s queue (DELETE and TRUNCATE of pgcdc.event are refused).';

-- Only pgcdc removes staged events (pgcdc.ack, pgcdc.reset_feed, pgcdc.drop_feed): rows
-- removed by hand would be lost, the workers have moved past them. ALWAYS: also with
-- session_replication_role = replica.
CREATE TRIGGER event_guard BEFORE DELETE OR TRUNCATE ON pgcdc.event
    FOR EACH STATEMENT EXECUTE FUNCTION pgcdc.event_guard();
ALTER TABLE pgcdc.event ENABLE ALWAYS TRIGGER event_guard;
ALTER FUNCTION pgcdc.event_guard() SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION pgcdc.event_guard() FROM PUBLIC;
COMMENT ON FUNCTION pgcdc.event_guard() IS
    'Trigger on pgcdc.event: refuses DELETE and TRUNCATE except by pgcdc itself (pgcdc.ack, pgcdc.reset_feed, pgcdc.drop_feed), because staged events removed by hand are never staged again.';
