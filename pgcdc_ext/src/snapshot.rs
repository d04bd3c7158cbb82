//! Snapshots: the rows that exist before (or beside) the stream, read in primary-key chunks
//! between watermarks. The algorithm and its proof are in `pgcdc_core::snapshot`; this module
//! is the extension's side of it.
//!
//! ```text
//!  pgcdc.snapshot / create_feed(snapshot.mode initial)  -> a pgcdc.snapshot row (pending)
//!  feed worker, each step (not at the queue cap, no chunk in flight):
//!      low watermark -> read the next chunk as the feed owner -> high watermark (flushed)
//!  feed worker, stream: changes between the watermarks supersede chunk rows (Window);
//!      at the high watermark the rest are staged at (H - 1, 1..n) with the cursor moved and
//!      a pgcdc.snapshot_chunk row, in the staging transaction
//!  feed worker, acknowledgements: chunk rows acknowledged -> their pgcdc.snapshot_chunk row
//!      is deleted
//!  feed worker start: chunk rows neither acknowledged nor in the queue (a crash emptied the
//!      UNLOGGED queue) -> the cursor goes back to the first such chunk
//! ```
//!
//! Both catalog tables are logged: the cursor survives crashes, and it never passes rows that
//! are neither acknowledged nor staged.
//!
//! Chunks are read as the feed's owner (`SetUserIdAndSecContext`, security-restricted) with
//! `row_security = off`, so a table the owner may not read, or reads through row-level
//! security policies, fails the snapshot with PostgreSQL's own error instead of being read
//! with the worker's superuser rights. A failed read (table dropped, privileges, no primary
//! key any more) ends the snapshot in state `failed` (a dropped table is skipped) and the feed
//! streams on.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgcdc_core::debezium::{Encoder, Event, SnapshotRead};
use pgcdc_core::pgoutput::{ColumnData, Message, Relation, RelationColumn, ReplicaIdentity, TupleData};
use pgcdc_core::snapshot::{row_position, Cell, ChunkToken, Marker, Unseen, Watermark, Window, WATERMARK_PREFIX};
use pgcdc_core::{Lsn, Xid};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::access;
use crate::catalog::SpiCatalog;
use crate::datum::PgLsn;
use crate::error::{raise, required, spi_ok};
use crate::feed;
use crate::position::Position;

/// Rows per chunk unless `snapshot.fetch.size` says otherwise.
pub const DEFAULT_FETCH_SIZE: u32 = 10_240;
/// Largest `snapshot.fetch.size` (a chunk is held in memory until its high watermark).
pub const MAX_FETCH_SIZE: u32 = 1_000_000;

/// How often an idle worker looks for a new snapshot request.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// `snapshot.mode` (Debezium's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Existing rows first, then the stream.
    Initial,
    /// The stream only.
    NoData,
    /// Existing rows, then the feed is paused.
    InitialOnly,
    /// A snapshot when there is no offset: for a new feed, like `Initial`.
    WhenNeeded,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "initial" => Some(Mode::Initial),
            "no_data" | "never" => Some(Mode::NoData),
            "initial_only" => Some(Mode::InitialOnly),
            "when_needed" => Some(Mode::WhenNeeded),
            _ => None,
        }
    }

    pub fn snapshots_at_creation(self) -> bool {
        self != Mode::NoData
    }
}

/// A table a snapshot may read: published by the feed's publication, with a primary key.
#[derive(Debug, Clone)]
struct Candidate {
    oid: pg_sys::Oid,
    name: String,
    has_key: bool,
    readable: bool,
    estimate: i64,
}

/// The tables `publication` publishes (pgcdc's own excepted), by schema and name.
fn published(publication: &str, owner: pg_sys::Oid) -> Vec<Candidate> {
    spi_ok(Spi::connect(|c| {
        let args = [publication.into(), owner.into()];
        let mut out = Vec::new();
        for row in c.select(
            "SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid \
                            AND i.indisprimary), \
                    pg_catalog.has_table_privilege($2::pg_catalog.oid, c.oid, 'SELECT'), \
                    GREATEST(c.reltuples, 0::pg_catalog.float4)::pg_catalog.int8 \
             FROM pg_catalog.pg_publication_tables pt \
             JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) pt.schemaname \
             JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid \
                  AND c.relname OPERATOR(pg_catalog.=) pt.tablename \
             WHERE pt.pubname OPERATOR(pg_catalog.=) $1 AND n.nspname OPERATOR(pg_catalog.<>) 'pgcdc' \
             ORDER BY n.nspname, c.relname",
            None,
            &args,
        )? {
            out.push(Candidate {
                oid: row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                name: row.get::<String>(2)?.unwrap_or_default(),
                has_key: row.get::<bool>(3)?.unwrap_or(false),
                readable: row.get::<bool>(4)?.unwrap_or(false),
                estimate: row.get::<i64>(5)?.unwrap_or(0),
            });
        }
        Ok(out)
    }))
}

/// The tables a snapshot will read, checked: every table of the publication, or `tables` in
/// the order given. Raises the SQL errors of `pgcdc.snapshot` (and of `create_feed`).
pub fn plan(
    publication: &str,
    owner: pg_sys::Oid,
    tables: Option<&[pg_sys::Oid]>,
    initial: bool,
) -> Vec<(pg_sys::Oid, String, i64)> {
    let all = published(publication, owner);
    let chosen: Vec<Candidate> = match tables {
        None => all,
        Some(oids) => {
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for &oid in oids {
                if !seen.insert(oid) {
                    continue;
                }
                match all.iter().find(|c| c.oid == oid) {
                    Some(c) => out.push(c.clone()),
                    None => raise(
                        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                        format!("table {} is not published by publication \"{publication}\"", relation_name(oid)),
                        Some(
                            "A feed snapshots only the tables its publication publishes (pg_publication_tables)."
                                .into(),
                        ),
                    ),
                }
            }
            out
        }
    };
    let keyless: Vec<&str> = chosen.iter().filter(|c| !c.has_key).map(|c| c.name.as_str()).collect();
    if !keyless.is_empty() {
        let leave_out = if initial {
            "or create the feed with options => '{\"snapshot.mode\": \"no_data\"}' and snapshot the other tables \
             with pgcdc.snapshot(feed, tables => ...)"
        } else {
            "or leave it out (tables => ...)"
        };
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot snapshot table(s) without a primary key: {}", keyless.join(", ")),
            Some(format!(
                "A snapshot reads a table in primary-key order and matches concurrent changes to its rows by \
                 key. Add a primary key, {leave_out}."
            )),
        );
    }
    let unreadable: Vec<&str> = chosen.iter().filter(|c| !c.readable).map(|c| c.name.as_str()).collect();
    if !unreadable.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("the feed's owner {} cannot SELECT {}", access::role_name(owner), unreadable.join(", ")),
            Some("A snapshot reads as the feed's owner: GRANT SELECT on the table(s) to it.".into()),
        );
    }
    chosen.into_iter().map(|c| (c.oid, c.name, c.estimate)).collect()
}

/// Whether `oid` has no row a snapshot would read now, read as `owner`. A table that is gone
/// has none; one the owner cannot read counts as not empty (its chunk read reports why).
fn is_empty_now(oid: pg_sys::Oid, publication: &str, owner: pg_sys::Oid) -> bool {
    match describe(oid, publication) {
        None => true,
        Some(table) => read_as(owner, || table.read(None, 1)).is_ok_and(|(rows, _)| rows.is_empty()),
    }
}

/// The tables of an initial snapshot (from [`plan`]) that have rows now, once the feed's slot
/// exists. An empty one needs no snapshot: every row committed before the slot's consistent
/// point is visible now (the slot waited for the transactions running when it was created),
/// so none existed, and every later one is in the stream. Reading it anyway would deliver
/// rows written meanwhile twice (as their change, then as a read).
pub fn with_rows(
    planned: Vec<(pg_sys::Oid, String, i64)>,
    publication: &str,
    owner: pg_sys::Oid,
) -> Vec<(pg_sys::Oid, String, i64)> {
    planned.into_iter().filter(|t| !is_empty_now(t.0, publication, owner)).collect()
}

/// Inserts a pending snapshot of `tables` (from [`plan`]; none: done at once); returns its id.
pub fn queue(feed_id: i32, initial: bool, tables: &[(pg_sys::Oid, String, i64)]) -> i64 {
    let oids: Vec<pg_sys::Oid> = tables.iter().map(|t| t.0).collect();
    let names: Vec<String> = tables.iter().map(|t| t.1.clone()).collect();
    let estimate: i64 = tables.iter().map(|t| t.2).sum();
    spi_ok(Spi::connect_mut(|c| {
        let args = [
            feed_id.into(),
            (if initial { "initial" } else { "incremental" }).into(),
            oids.into(),
            names.into(),
            estimate.into(),
        ];
        c.update(
            "WITH t AS (SELECT pg_catalog.cardinality($3::pg_catalog.oid[]) = 0 AS nothing) \
             INSERT INTO pgcdc.snapshot (feed_id, kind, tables, table_names, rows_estimated, state, started_at, \
             finished_at) SELECT $1, $2, $3, $4, $5, CASE WHEN nothing THEN 'done' ELSE 'pending' END, \
             CASE WHEN nothing THEN pg_catalog.now() END, CASE WHEN nothing THEN pg_catalog.now() END FROM t \
             RETURNING id",
            None,
            &args,
        )?
        .first()
        .get_one::<i64>()
    }))
    .unwrap_or(0)
}

fn relation_name(oid: pg_sys::Oid) -> String {
    spi_ok(Spi::connect(|c| {
        let args = [oid.into()];
        c.select("SELECT pg_catalog.format('%s', $1::pg_catalog.regclass)", None, &args)?.first().get_one::<String>()
    }))
    .unwrap_or_else(|| format!("with OID {}", oid.to_u32()))
}

/// `pgcdc.snapshot_by_oid(feed, tables)`: the body of `pgcdc.snapshot(feed, tables regclass[])`
/// (sql/pgcdc_finalize.sql), which resolves table names in the caller's session.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn snapshot_by_oid(feed: Option<&str>, tables: default!(Option<Vec<pg_sys::Oid>>, "NULL")) -> i64 {
    let name = required(feed, "feed");
    let id = feed::authorize(name, "snapshot");
    let Some(f) = access::as_extension_owner(|| feed::load_by_id(id)) else {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("feed \"{name}\" does not exist"), None)
    };
    if !feed::snapshots_supported() {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("pgcdc.snapshot {}", feed::SNAPSHOTS_NEED),
            Some("On this server a feed streams the changes committed after its creation.".into()),
        );
    }
    if tables.as_ref().is_some_and(Vec::is_empty) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "tables is empty".into(),
            Some("Name at least one table, or pass NULL for every table of the publication.".into()),
        );
    }
    let planned = plan(&f.publication, f.owner, tables.as_deref(), false);
    if planned.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("publication \"{}\" publishes no table to snapshot", f.publication),
            None,
        );
    }
    access::as_extension_owner(|| {
        let snapshot_id = queue(id, false, &planned);
        feed::wake_at_commit(false, Some(id));
        snapshot_id
    })
}

/// `pgcdc.cancel_snapshot(feed)`: see sql/pgcdc_finalize.sql.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn cancel_snapshot(feed: Option<&str>) -> i32 {
    let name = required(feed, "feed");
    let id = feed::authorize(name, "cancel a snapshot of");
    access::as_extension_owner(|| {
        spi_ok(Spi::connect_mut(|c| {
            let args = [id.into()];
            let n = c
                .update(
                    "WITH cancelled AS (UPDATE pgcdc.snapshot SET state = 'cancelled', finished_at = pg_catalog.now() \
                     WHERE feed_id OPERATOR(pg_catalog.=) $1 AND state IN ('pending', 'running') RETURNING id), \
                     gone AS (DELETE FROM pgcdc.snapshot_chunk WHERE snapshot_id IN (SELECT id FROM cancelled)) \
                     SELECT pg_catalog.count(*)::pg_catalog.int4 FROM cancelled",
                    None,
                    &args,
                )?
                .first()
                .get_one::<i32>()?;
            Ok(n.unwrap_or(0))
        }))
    })
}

/// The snapshot a worker runs.
#[derive(Debug)]
struct Active {
    id: i64,
    initial: bool,
    tables: Vec<pg_sys::Oid>,
    names: Vec<String>,
    table_index: usize,
    /// Primary-key text of the last row read of the current table (None: from its start).
    last_key: Option<Vec<String>>,
    rows_staged: i64,
    chunks: i32,
    /// When it started (source.ts_* of its rows), microseconds since the Unix epoch.
    started_micros: i64,
    /// Pause the feed when done (`initial_only`, first completion).
    pause_when_done: bool,
}

/// A snapshot's chunks a crash lost: (snapshot id, table index and key to read again from,
/// their rows, their number).
type LostChunks = (i64, i32, Option<Vec<String>>, i64, i32);

/// A chunk read, waiting for its high watermark in the stream.
/// The chunk starts at the active snapshot's cursor (which moves only at its high watermark).
struct InFlight {
    window: Window,
    /// The cursor after this chunk in its table; None: the chunk ends the table.
    next_key: Option<Vec<String>>,
    /// Nothing is left to read after this chunk (the tables after it are empty).
    last_of_snapshot: bool,
}

/// A feed worker's snapshots.
pub struct Snapshotter {
    feed_id: i32,
    owner: pg_sys::Oid,
    publication: String,
    fetch: u32,
    initial_only: bool,
    active: Option<Active>,
    in_flight: Option<InFlight>,
    /// Xids of transactions streamed recently that a chunk's snapshot may not have seen
    /// (see `Window::conflicts`); pruned at each chunk read.
    streamed: HashSet<Xid>,
    attempt: u64,
    polled: Option<Instant>,
    /// pgcdc.snapshot_chunk rows of this feed may exist (not all acknowledged).
    outstanding: bool,
}

impl Snapshotter {
    /// Loads the feed's snapshots at worker start and rewinds those whose staged chunks a
    /// crash lost (neither acknowledged nor in the queue any more).
    pub fn load(
        feed: &feed::Feed,
        fetch: u32,
        initial_only: bool,
        acked: Position,
        last_staged: Option<Position>,
    ) -> Snapshotter {
        let mut s = Snapshotter {
            feed_id: feed.id,
            owner: feed.owner,
            publication: feed.publication.clone(),
            fetch,
            initial_only,
            active: None,
            in_flight: None,
            streamed: HashSet::new(),
            // Distinct per worker start: watermarks of an earlier process never match.
            attempt: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64),
            polled: None,
            outstanding: false,
        };
        if feed::lock_for_worker(feed.id) {
            s.rewind_lost(acked, last_staged);
            s.acknowledged(acked);
        }
        s
    }

    fn rewind_lost(&mut self, acked: Position, last_staged: Option<Position>) {
        let staged = last_staged.unwrap_or(acked).max(acked);
        // The first chunk of each snapshot that is neither acknowledged nor staged.
        let lost: Vec<LostChunks> = spi_ok(Spi::connect(|c| {
            let args = [self.feed_id.into(), PgLsn(staged.commit_lsn).into(), (staged.ordinal as i32).into()];
            let mut out = Vec::new();
            for row in c.select(
                "SELECT DISTINCT ON (k.snapshot_id) k.snapshot_id, k.table_index, k.from_key, \
                        sum(k.rows) OVER w, count(*) OVER w \
                 FROM pgcdc.snapshot_chunk k JOIN pgcdc.snapshot s ON s.id OPERATOR(pg_catalog.=) k.snapshot_id \
                 WHERE s.feed_id OPERATOR(pg_catalog.=) $1 \
                   AND (k.commit_lsn, k.last_ordinal) > ($2::pg_catalog.pg_lsn, $3::pg_catalog.int4) \
                 WINDOW w AS (PARTITION BY k.snapshot_id) \
                 ORDER BY k.snapshot_id, k.chunk",
                None,
                &args,
            )? {
                out.push((
                    row.get::<i64>(1)?.unwrap_or(0),
                    row.get::<i32>(2)?.unwrap_or(0),
                    row.get::<Vec<String>>(3)?,
                    row.get::<i64>(4)?.unwrap_or(0),
                    row.get::<i64>(5)?.unwrap_or(0) as i32,
                ));
            }
            Ok(out)
        }));
        for (snapshot_id, table_index, from_key, rows, chunks) in lost {
            log!(
                "pgcdc feed {}: snapshot {snapshot_id}: {chunks} staged chunk(s) ({rows} rows) were lost with the \
                 queue; reading again from there",
                self.feed_id
            );
            spi_ok(Spi::connect_mut(|c| {
                let args = [
                    snapshot_id.into(),
                    table_index.into(),
                    from_key.clone().into(),
                    rows.into(),
                    chunks.into(),
                    PgLsn(staged.commit_lsn).into(),
                    (staged.ordinal as i32).into(),
                ];
                c.update(
                    "UPDATE pgcdc.snapshot SET state = 'running', table_index = $2, last_key = $3, \
                     rows_staged = rows_staged - $4, chunks = chunks - $5 \
                     WHERE id = $1 AND state IN ('running', 'done')",
                    None,
                    &args,
                )?;
                c.update(
                    "DELETE FROM pgcdc.snapshot_chunk WHERE snapshot_id = $1 \
                     AND (commit_lsn, last_ordinal) > ($6::pg_catalog.pg_lsn, $7::pg_catalog.int4)",
                    None,
                    &args,
                )?;
                Ok(())
            }));
        }
    }

    /// The acknowledged position moved: forget chunks whose rows are all acknowledged.
    pub fn acknowledged(&mut self, acked: Position) {
        if !feed::lock_for_worker(self.feed_id) {
            return;
        }
        let remaining: i64 = spi_ok(Spi::connect_mut(|c| {
            let args = [self.feed_id.into(), PgLsn(acked.commit_lsn).into(), (acked.ordinal as i32).into()];
            c.update(
                "DELETE FROM pgcdc.snapshot_chunk k USING pgcdc.snapshot s \
                 WHERE s.id = k.snapshot_id AND s.feed_id = $1 \
                   AND (k.commit_lsn, k.last_ordinal) <= ($2::pg_catalog.pg_lsn, $3::pg_catalog.int4)",
                None,
                &args,
            )?;
            c.select(
                "SELECT count(*) FROM pgcdc.snapshot_chunk k JOIN pgcdc.snapshot s ON s.id = k.snapshot_id \
                 WHERE s.feed_id = $1",
                None,
                &args[..1],
            )?
            .first()
            .get_one::<i64>()
            .map(|n| n.unwrap_or(0))
        }));
        self.outstanding = remaining > 0;
    }

    /// Whether chunk records may wait for acknowledgements (worth calling `acknowledged`).
    pub fn has_outstanding(&self) -> bool {
        self.outstanding
    }

    /// Whether the next chunk can be read now (a snapshot runs and no chunk is in flight):
    /// the worker then does not sleep.
    pub fn ready_to_read(&self) -> bool {
        self.active.is_some() && self.in_flight.is_none()
    }

    /// A transaction starts in the stream.
    pub fn begin(&mut self, xid: Xid) {
        if self.streamed.len() < 1 << 20 {
            self.streamed.insert(xid);
        }
        if let Some(f) = self.in_flight.as_mut() {
            f.window.begin(xid);
        }
    }

    /// A streamed transaction committed; its changes, staged as they arrived, touched
    /// `relations`. Like a transaction delivered at its commit: if the chunk in flight must
    /// see its changes and it changed the chunk's table, the chunk is read again (its changes
    /// went by before the window).
    pub fn stream_committed(&mut self, xid: Xid, relations: &std::collections::HashSet<pgcdc_core::Oid>) {
        self.begin(xid);
        if let Some(f) = self.in_flight.as_mut() {
            f.window.committed_elsewhere(relations.contains(&f.window.relation_id()));
        }
    }

    /// A change in the stream (after its relation, if new, was defined in `encoder`).
    pub fn observe(&mut self, msg: &Message<'_>, encoder: &Encoder) {
        let Some(f) = self.in_flight.as_mut() else { return };
        let relation_id = match msg {
            Message::Insert(i) => i.relation_id,
            Message::Update(u) => u.relation_id,
            Message::Delete(d) => d.relation_id,
            Message::Truncate(_) => f.window.relation_id(),
            _ => return,
        };
        f.window.observe(msg, encoder.relation(relation_id));
    }

    /// One step of the worker, in its transaction, below the queue cap: when no chunk is in
    /// flight, find the snapshot to run and read its next chunk. Never raises for problems of
    /// the table read (those end the snapshot).
    pub fn step(&mut self, encoder: &mut Encoder, catalog: &mut SpiCatalog) {
        if self.in_flight.is_some() {
            return;
        }
        if self.active.is_none() && self.polled.is_some_and(|t| t.elapsed() < POLL_INTERVAL) {
            return;
        }
        // Like every write of the worker, under the feed row's FOR KEY SHARE lock taken first:
        // drop_feed deletes the feed row and then (cascading) its snapshots, so taking the
        // locks in the other order could deadlock with it.
        if !feed::lock_for_worker(self.feed_id) {
            return;
        }
        if self.active.is_none() {
            if self.polled.is_some_and(|t| t.elapsed() < POLL_INTERVAL) {
                return;
            }
            self.polled = Some(Instant::now());
            self.active = self.next_snapshot();
            if self.active.is_none() {
                self.prune_streamed();
                return;
            }
        }
        self.read_chunk(encoder, catalog);
    }

    /// Keeps the streamed-xid set small while no snapshot runs: only transactions still
    /// in progress for a snapshot taken now can matter to a later chunk.
    fn prune_streamed(&mut self) {
        if self.streamed.len() < 4096 {
            return;
        }
        let unseen = unseen_now();
        self.streamed.retain(|&x| unseen.contains(x));
    }

    fn next_snapshot(&mut self) -> Option<Active> {
        let row = spi_ok(Spi::connect(|c| {
            let args = [self.feed_id.into()];
            c.select(
                "SELECT id, kind, tables, table_names, table_index, last_key, rows_staged, chunks, \
                        (extract(epoch FROM coalesce(started_at, pg_catalog.now())) * 1000000)::pg_catalog.int8, \
                        finished_at IS NULL \
                 FROM pgcdc.snapshot WHERE feed_id = $1 AND state IN ('pending', 'running') ORDER BY id LIMIT 1",
                None,
                &args,
            )?
            .next()
            .map(|r| {
                Ok::<_, pgrx::spi::Error>(Active {
                    id: r.get::<i64>(1)?.unwrap_or(0),
                    initial: r.get::<String>(2)?.as_deref() == Some("initial"),
                    tables: r.get::<Vec<pg_sys::Oid>>(3)?.unwrap_or_default(),
                    names: r.get::<Vec<String>>(4)?.unwrap_or_default(),
                    table_index: r.get::<i32>(5)?.unwrap_or(0).max(0) as usize,
                    last_key: r.get::<Vec<String>>(6)?,
                    rows_staged: r.get::<i64>(7)?.unwrap_or(0),
                    chunks: r.get::<i32>(8)?.unwrap_or(0),
                    started_micros: r.get::<i64>(9)?.unwrap_or(0),
                    pause_when_done: r.get::<bool>(10)?.unwrap_or(false),
                })
            })
            .transpose()
        }))?;
        spi_ok(Spi::connect_mut(|c| {
            let args = [row.id.into()];
            c.update(
                "UPDATE pgcdc.snapshot SET state = 'running', started_at = coalesce(started_at, pg_catalog.now()) \
                 WHERE id = $1 AND state IN ('pending', 'running')",
                None,
                &args,
            )?;
            Ok(())
        }));
        let mut row = row;
        row.pause_when_done &= row.initial && self.initial_only;
        log!(
            "pgcdc feed {}: snapshot {} of {} table(s), from table {} ({} rows staged so far)",
            self.feed_id,
            row.id,
            row.tables.len(),
            row.table_index + 1,
            row.rows_staged
        );
        Some(row)
    }

    /// Ends the active snapshot with `state`, and `error`.
    fn finish(&mut self, state: &str, error: Option<String>) {
        let Some(active) = self.active.take() else { return };
        self.in_flight = None;
        let pause = state == "done" && active.pause_when_done;
        spi_ok(Spi::connect_mut(|c| {
            let args = [active.id.into(), state.into(), error.clone().into(), self.feed_id.into()];
            c.update(
                "UPDATE pgcdc.snapshot SET state = $2, error = $3, finished_at = pg_catalog.now() \
                 WHERE id = $1 AND state = 'running'",
                None,
                &args[..3],
            )?;
            if pause {
                c.update("UPDATE pgcdc.feed SET state = 'paused' WHERE id = $4 AND state = 'running'", None, &args)?;
            }
            Ok(())
        }));
        match &error {
            Some(e) => log!("pgcdc feed {}: snapshot {} {state}: {e}", self.feed_id, active.id),
            None => log!("pgcdc feed {}: snapshot {} {state} ({} rows)", self.feed_id, active.id, active.rows_staged),
        }
        if pause {
            log!("pgcdc feed {}: snapshot.mode initial_only: the snapshot is done, pausing the feed", self.feed_id);
        }
    }

    /// Moves the cursor to the next table (the current one is done or gone).
    fn next_table(&mut self, skipped: Option<&str>) {
        let Some(active) = self.active.as_mut() else { return };
        active.table_index += 1;
        active.last_key = None;
        spi_ok(Spi::connect_mut(|c| {
            let args = [active.id.into(), (active.table_index as i32).into(), skipped.into()];
            c.update(
                "UPDATE pgcdc.snapshot SET table_index = $2, last_key = NULL, \
                 tables_skipped = CASE WHEN $3::pg_catalog.text IS NULL THEN tables_skipped \
                                       ELSE pg_catalog.array_append(tables_skipped, $3::pg_catalog.text) END \
                 WHERE id = $1",
                None,
                &args,
            )?;
            Ok(())
        }));
    }

    fn read_chunk(&mut self, encoder: &mut Encoder, catalog: &mut SpiCatalog) {
        let Some(active) = self.active.as_ref() else { return };
        if active.table_index >= active.tables.len() {
            self.finish("done", None);
            return;
        }
        let oid = active.tables[active.table_index];
        let name = active.names.get(active.table_index).cloned().unwrap_or_default();
        let Some(table) = describe(oid, &self.publication) else {
            log!("pgcdc feed {}: snapshot {}: table {name} is gone; skipping it", self.feed_id, active.id);
            self.next_table(Some(&name));
            return;
        };
        if table.key.is_empty() {
            let message = format!("table {name} has no primary key any more; the snapshot stops");
            self.finish("failed", Some(message));
            return;
        }
        let chunk = active.chunks as u32 + 1;
        self.attempt += 1;
        let token = ChunkToken { feed_id: self.feed_id, snapshot_id: active.id, chunk, attempt: self.attempt };
        if !claim_read(active.id) {
            log!("pgcdc feed {}: snapshot {} was cancelled", self.feed_id, active.id);
            self.active = None;
            return;
        }
        emit_watermark(&token.watermark(false));
        let read = read_as(self.owner, || table.read(active.last_key.as_deref(), self.fetch + 1));
        let (rows, unseen) = match read {
            Ok(r) => r,
            Err(message) => {
                emit_watermark(&token.watermark(true));
                if describe(oid, &self.publication).is_none() {
                    log!("pgcdc feed {}: snapshot {}: table {name} was dropped; skipping it", self.feed_id, active.id);
                    self.next_table(Some(&name));
                } else {
                    self.finish("failed", Some(format!("cannot read {name}: {message}")));
                }
                return;
            }
        };
        emit_watermark(&token.watermark(true));
        if Window::conflicts(&unseen, &self.streamed) {
            // A transaction the stream already delivered was not visible to the chunk.
            self.streamed.retain(|&x| unseen.contains(x));
            return;
        }
        self.streamed.retain(|&x| unseen.contains(x));
        if let Err(e) = encoder.define_snapshot_relation(&table.relation, catalog) {
            self.finish("failed", Some(format!("cannot describe {name}: {e}")));
            return;
        }
        let mut rows = rows;
        let last_of_table = rows.len() <= self.fetch as usize;
        rows.truncate(self.fetch as usize);
        let next_key = if last_of_table {
            None
        } else {
            rows.last().map(|r| {
                table
                    .key_positions
                    .iter()
                    .map(|&k| String::from_utf8_lossy(r[k].as_deref().unwrap_or(b"")).into_owned())
                    .collect()
            })
        };
        let window = Window::new(token, oid.to_u32(), &table.key_positions, table.key.clone(), rows, unseen);
        // The snapshot's last row is in this chunk if every table after this one is empty.
        let last_of_snapshot = last_of_table && self.rest_is_empty(active.table_index + 1);
        self.in_flight = Some(InFlight { window, next_key, last_of_snapshot });
    }

    /// Whether the active snapshot's tables from `from` on have no row to read now (a table
    /// dropped meanwhile has none).
    fn rest_is_empty(&self, from: usize) -> bool {
        let Some(active) = self.active.as_ref() else { return true };
        active.tables.iter().skip(from).all(|&oid| is_empty_now(oid, &self.publication, self.owner))
    }

    /// A watermark message at `lsn` in the stream: at the in-flight chunk's high watermark,
    /// its remaining rows as events (positions from [`row_position`]), with the cursor moved
    /// in the current transaction. Anything else (another chunk's, an earlier process's,
    /// another feed's) is nothing.
    pub fn watermark(&mut self, content: &[u8], lsn: Lsn, encoder: &mut Encoder) -> Result<Vec<Event>, String> {
        let mut out = Vec::new();
        let Some(mark) = Watermark::parse(content) else { return Ok(out) };
        let Some(f) = self.in_flight.as_mut() else { return Ok(out) };
        match mark {
            Watermark::Low(t) if t == f.window.token() => {
                f.window.low_watermark();
                return Ok(out);
            }
            Watermark::High(t) if t == f.window.token() => {}
            _ => return Ok(out),
        }
        if !feed::lock_for_worker(self.feed_id) {
            self.in_flight = None;
            return Ok(out); // dropped meanwhile: nothing is staged either
        }
        let f = self.in_flight.take().expect("in flight");
        let Some(active) = self.active.as_mut() else { return Ok(out) };
        if !f.window.is_usable() {
            // A change could not be matched to the chunk's keys: read it again.
            return Ok(out);
        }
        let relation_id = f.window.relation_id();
        let superseded = f.window.superseded();
        let rows = f.window.into_rows();
        let n = rows.len();
        let first_of_table = active.last_key.is_none();
        let ends_table = f.next_key.is_none();
        for (i, row) in rows.iter().enumerate() {
            let marker = if active.initial {
                let first = active.rows_staged == 0 && i == 0;
                let last_of_table = ends_table && i + 1 == n;
                Marker::initial(first, last_of_table && f.last_of_snapshot, first_of_table && i == 0, last_of_table)
            } else {
                Marker::Incremental
            };
            let tuple = TupleData {
                columns: row.iter().map(|c| c.as_deref().map_or(ColumnData::Null, ColumnData::Text)).collect(),
            };
            let read = SnapshotRead {
                marker,
                lsn,
                position: row_position(lsn, i as u32 + 1),
                ts_micros: active.started_micros,
            };
            encoder.read(relation_id, &tuple, &read, &mut out).map_err(|e| {
                format!("cannot encode a row of snapshot {} ({}): {e}", active.id, active.names[active.table_index])
            })?;
        }
        active.rows_staged += n as i64;
        active.chunks += 1;
        let (position_lsn, last_ordinal) = row_position(lsn, n as u32);
        let (from_index, from_key) = (active.table_index, active.last_key.take());
        active.table_index += usize::from(ends_table);
        active.last_key = f.next_key;
        spi_ok(Spi::connect_mut(|c| {
            let args = [
                active.id.into(),
                (active.table_index as i32).into(),
                active.last_key.clone().into(),
                (n as i64).into(),
                active.chunks.into(),
                (from_index as i32).into(),
                from_key.into(),
                PgLsn(position_lsn).into(),
                (last_ordinal as i32).into(),
            ];
            c.update(
                "UPDATE pgcdc.snapshot SET table_index = $2, last_key = $3, rows_staged = rows_staged + $4, \
                 chunks = $5 WHERE id = $1",
                None,
                &args[..5],
            )?;
            if n > 0 {
                c.update(
                    "INSERT INTO pgcdc.snapshot_chunk (snapshot_id, chunk, table_index, from_key, commit_lsn, \
                     last_ordinal, rows) VALUES ($1, $5, $6, $7, $8, $9, $4::pg_catalog.int4)",
                    None,
                    &args,
                )?;
            }
            Ok(())
        }));
        if n > 0 {
            self.outstanding = true;
        }
        if superseded > 0 {
            debug1!("pgcdc feed {}: {superseded} chunk row(s) superseded by the stream", self.feed_id);
        }
        if active.table_index >= active.tables.len() {
            self.finish("done", None);
        }
        Ok(out)
    }
}

/// What a chunk reads of one table.
struct TableRead {
    relation: Relation,
    /// Primary-key column names in key order, and their positions in `relation.columns`.
    key: Vec<String>,
    key_positions: Vec<usize>,
    /// `SELECT <columns> FROM <table> WHERE <filter> [AND (<key>) > (<$n::type>)] ORDER BY <key> LIMIT $m`,
    /// first from the start, then after a key.
    from_start: String,
    after_key: String,
}

/// The publication's row filter and column list of the table (`pg_publication_tables` has
/// them from PostgreSQL 15; before, a publication publishes whole tables).
#[cfg(any(feature = "pg13", feature = "pg14"))]
const PUBLISHED_SUBSET: &str = "NULL::pg_catalog.text, NULL::pg_catalog.text[]";
#[cfg(not(any(feature = "pg13", feature = "pg14")))]
const PUBLISHED_SUBSET: &str = "pt.rowfilter, pt.attnames::pg_catalog.text[]";

/// The table as the stream would describe it now (columns pgoutput sends: not dropped, not
/// generated, in the publication's column list), with its key and the chunk queries. None
/// when it no longer exists.
fn describe(oid: pg_sys::Oid, publication: &str) -> Option<TableRead> {
    struct Column {
        name: String,
        type_oid: pg_sys::Oid,
        typmod: i32,
        identity: bool,
        key_order: Option<i32>,
        type_sql: String,
    }
    let head = spi_ok(Spi::connect(|c| {
        let args = [oid.into(), publication.into()];
        c.select(
            &format!(
                "SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text, c.relreplident::pg_catalog.text, \
                    c.relkind::pg_catalog.text, {PUBLISHED_SUBSET} \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             LEFT JOIN pg_catalog.pg_publication_tables pt ON pt.pubname OPERATOR(pg_catalog.=) $2 \
                  AND pt.schemaname OPERATOR(pg_catalog.=) n.nspname AND pt.tablename OPERATOR(pg_catalog.=) c.relname \
             WHERE c.oid OPERATOR(pg_catalog.=) $1"
            ),
            None,
            &args,
        )?
        .next()
        .map(|r| {
            Ok::<_, pgrx::spi::Error>((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?.unwrap_or_default(),
                r.get::<String>(5)?,
                r.get::<Vec<String>>(6)?,
            ))
        })
        .transpose()
    }))?;
    let (schema, name, replident, relkind, rowfilter, attnames) = head;
    let columns: Vec<Column> = spi_ok(Spi::connect(|c| {
        let args = [oid.into()];
        let mut out = Vec::new();
        for r in c.select(
            "SELECT a.attname::pg_catalog.text, a.atttypid, a.atttypmod, \
                    (c.relreplident OPERATOR(pg_catalog.=) 'f' \
                     OR a.attnum OPERATOR(pg_catalog.=) ANY ((SELECT i.indkey::pg_catalog.int2[] FROM pg_catalog.pg_index i \
                        WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND \
                        CASE WHEN c.relreplident OPERATOR(pg_catalog.=) 'i' THEN i.indisreplident ELSE i.indisprimary END \
                        LIMIT 1)::pg_catalog.int2[])), \
                    (SELECT k.ord::pg_catalog.int4 FROM pg_catalog.pg_index i, \
                        pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord) \
                        WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisprimary \
                          AND k.attnum OPERATOR(pg_catalog.=) a.attnum), \
                    pg_catalog.format_type(a.atttypid, a.atttypmod) \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
             WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 \
               AND NOT a.attisdropped AND a.attgenerated OPERATOR(pg_catalog.=) '' \
             ORDER BY a.attnum",
            None,
            &args,
        )? {
            out.push(Column {
                name: r.get::<String>(1)?.unwrap_or_default(),
                type_oid: r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                typmod: r.get::<i32>(3)?.unwrap_or(-1),
                identity: r.get::<bool>(4)?.unwrap_or(false),
                key_order: r.get::<i32>(5)?,
                type_sql: r.get::<String>(6)?.unwrap_or_default(),
            });
        }
        Ok(out)
    }));
    let columns: Vec<Column> =
        columns.into_iter().filter(|c| attnames.as_ref().is_none_or(|names| names.contains(&c.name))).collect();
    let mut keyed: Vec<(i32, usize)> =
        columns.iter().enumerate().filter_map(|(i, c)| c.key_order.map(|o| (o, i))).collect();
    keyed.sort_unstable();
    let key_positions: Vec<usize> = keyed.iter().map(|&(_, i)| i).collect();
    let key: Vec<String> = key_positions.iter().map(|&i| columns[i].name.clone()).collect();
    let relation = Relation {
        xid: None,
        id: oid.to_u32(),
        namespace: if schema == "pg_catalog" { String::new() } else { schema.clone() },
        name: name.clone(),
        replica_identity: match replident.as_str() {
            "n" => ReplicaIdentity::Nothing,
            "f" => ReplicaIdentity::Full,
            "i" => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Default,
        },
        columns: columns
            .iter()
            .map(|c| RelationColumn {
                is_key: c.identity,
                name: c.name.clone(),
                type_oid: c.type_oid.to_u32(),
                type_modifier: c.typmod,
            })
            .collect(),
    };
    let list: Vec<String> = columns.iter().map(|c| feed::quote_ident(&c.name)).collect();
    let keys: Vec<String> = key.iter().map(|k| feed::quote_ident(k)).collect();
    let only = if relkind == "p" { "" } else { "ONLY " };
    let filter = rowfilter.map(|f| format!("({f})")).unwrap_or_else(|| "true".into());
    let select = format!(
        "SELECT {} FROM {only}{}.{} WHERE {filter}",
        if list.is_empty() { "NULL".to_owned() } else { list.join(", ") },
        feed::quote_ident(&schema),
        feed::quote_ident(&name)
    );
    let order = format!("ORDER BY {}", keys.join(", "));
    let bounds: Vec<String> = key_positions
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("CAST(${} AS {})", n + 1, columns[i].type_sql))
        .collect();
    let limit = format!("LIMIT CAST(${} AS pg_catalog.int8)", key.len() + 1);
    Some(TableRead {
        from_start: format!("{select} {order} LIMIT CAST($1 AS pg_catalog.int8)"),
        after_key: format!("{select} AND ({}) > ({}) {order} {limit}", keys.join(", "), bounds.join(", ")),
        relation,
        key,
        key_positions,
    })
}

impl TableRead {
    /// Reads up to `limit` rows after `after` (None: from the start) under a new snapshot;
    /// returns them (each column's text) and the transactions the snapshot did not see.
    fn read(&self, after: Option<&[String]>, limit: u32) -> (Vec<Vec<Cell>>, Unseen) {
        let (sql, key): (&str, &[String]) = match after {
            None => (&self.from_start, &[]),
            Some(key) => (&self.after_key, key),
        };
        let sql = CString::new(sql).expect("no NUL in generated SQL");
        let params: Vec<CString> =
            key.iter().cloned().chain([limit.to_string()]).map(|p| CString::new(p).unwrap_or_default()).collect();
        // Row-level security off: a policy that applies to the owner is an error, never a
        // silently partial read.
        access::with_settings(&[(c"row_security", c"off")], || {
            access::with_str_settings(pgcdc_wire::session::TEXT_OUTPUT_SETTINGS, || {
                // SAFETY: SPI is connected for the call.
                Spi::connect(|_| unsafe { select_text(&sql, &params, self.relation.columns.len()) })
            })
        })
    }
}

/// Runs a read-only `sql` with text `params` under a new snapshot and returns its rows as the
/// text of their first `width` columns, with the transactions the snapshot did not see.
///
/// # Safety
/// SPI must be connected; on the main thread inside a transaction.
unsafe fn select_text(sql: &CStr, params: &[CString], width: usize) -> (Vec<Vec<Cell>>, Unseen) {
    // SAFETY: the snapshot pushed here is the one the read-only statement runs under and is
    // popped below (or by the abort of the enclosing subtransaction); tuples are read before
    // SPI_finish frees them.
    unsafe {
        let snapshot = pg_sys::GetTransactionSnapshot();
        let unseen = unseen_by(snapshot);
        pg_sys::PushActiveSnapshot(snapshot);
        let mut types = vec![pg_sys::TEXTOID; params.len()];
        let mut values: Vec<pg_sys::Datum> =
            params.iter().map(|p| pg_sys::Datum::from(pg_sys::cstring_to_text(p.as_ptr()))).collect();
        let nulls = vec![b' ' as std::ffi::c_char; params.len()];
        let n = params.len() as i32;
        let rc = pg_sys::SPI_execute_with_args(
            sql.as_ptr(),
            n,
            types.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_ptr(),
            true,
            0,
        );
        pg_sys::PopActiveSnapshot();
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            return (Vec::new(), unseen);
        }
        let table = pg_sys::SPI_tuptable;
        let rows = (0..pg_sys::SPI_processed as usize)
            .map(|r| {
                let tuple = *(*table).vals.add(r);
                (1..=width as i32)
                    .map(|col| {
                        let text = pg_sys::SPI_getvalue(tuple, (*table).tupdesc, col);
                        (!text.is_null()).then(|| {
                            let bytes = CStr::from_ptr(text).to_bytes().to_vec();
                            pg_sys::pfree(text.cast());
                            bytes
                        })
                    })
                    .collect()
            })
            .collect();
        (rows, unseen)
    }
}

/// Runs `f` as `role` (security-restricted, as maintenance commands run a table owner's code)
/// in a subtransaction: Err(message) when it raised an ERROR, which is rolled back.
fn read_as<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> Result<R, String> {
    // SAFETY: subtransaction and user switch on the main thread inside a transaction; both
    // are undone below, on success and on ERROR (subtransaction abort restores the user).
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        let (mut saved_user, mut saved_sec) = (pg_sys::InvalidOid, 0i32);
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_sec);
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
            pg_sys::SetUserIdAndSecContext(
                role,
                saved_sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
            );
            let value = f();
            pg_sys::SetUserIdAndSecContext(saved_user, saved_sec);
            Ok(value)
        }))
        .catch_others(|e| {
            let message = match &e {
                pg_sys::panic::CaughtError::PostgresError(r)
                | pg_sys::panic::CaughtError::ErrorReport(r)
                | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r.message().to_owned(),
            };
            Err(message)
        })
        .execute();
        match &result {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        pg_sys::SetUserIdAndSecContext(saved_user, saved_sec);
        result
    }
}

/// Writes a watermark (a non-transactional logical message) and flushes it, so the
/// walsender sends it now rather than when the WAL writer next flushes.
fn emit_watermark(content: &str) {
    let end: PgLsn = spi_ok(Spi::connect(|c| {
        let args = [WATERMARK_PREFIX.into(), content.into()];
        c.select(
            "SELECT pg_catalog.pg_logical_emit_message(false, $1::pg_catalog.text, $2::pg_catalog.text)",
            None,
            &args,
        )?
        .first()
        .get_one::<PgLsn>()
    }))
    .unwrap_or_default();
    // SAFETY: flushes WAL that was written (the message's record ends at `end`).
    unsafe { pg_sys::XLogFlush(end.0 .0) };
}

/// Counts a chunk read of a running snapshot; false when it is no longer running (cancelled).
fn claim_read(snapshot_id: i64) -> bool {
    spi_ok(Spi::connect_mut(|c| {
        let args = [snapshot_id.into()];
        Ok(c.update(
            "UPDATE pgcdc.snapshot SET chunks_read = chunks_read + 1 WHERE id = $1 AND state = 'running' RETURNING 1",
            None,
            &args,
        )?
        .len()
            == 1)
    }))
}

/// What a snapshot taken now does not see.
fn unseen_now() -> Unseen {
    // SAFETY: a new snapshot in the current transaction, read at once.
    unsafe { unseen_by(pg_sys::GetTransactionSnapshot()) }
}

/// The transactions `snapshot` does not see (its xmax and in-progress list).
///
/// # Safety
/// `snapshot` must be a valid MVCC snapshot.
unsafe fn unseen_by(snapshot: pg_sys::Snapshot) -> Unseen {
    // SAFETY: per the contract, xip holds xcnt xids.
    unsafe {
        let xip = (0..(*snapshot).xcnt as usize).map(|i| (*(*snapshot).xip.add(i)).into_inner());
        Unseen::new((*snapshot).xmax.into_inner(), xip)
    }
}
