//! Feed rows in `pgcdc.feed` (read, found by name for the caller, locked, acknowledged) and
//! the staged events `pgcdc.read` returns, all through SPI; waking the launcher and workers
//! at commit.
//!
//! Locks on a feed row: `ack`, `alter_feed`, `pause_feed` and `resume_feed` take
//! `FOR NO KEY UPDATE` (they serialise with each other), `drop_feed` takes `FOR UPDATE`, and
//! the feed's worker takes `FOR KEY SHARE` in every transaction that stages events or writes
//! `pgcdc.feed_runtime`: so `drop_feed` waits for a staging step to commit and then deletes
//! what it staged, and the worker's next step finds the feed gone (no orphan rows). The worker
//! takes `FOR NO KEY UPDATE` too, first thing, in a transaction that counts the queue
//! ([`crate::queue::count_locked`]): no ack commits between its count and its counters.

use std::collections::BTreeMap;
use std::ffi::CStr;

use pgcdc_core::Lsn;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgXactCallbackEvent};

use super::model::{Feed, FeedState, Sink};
use crate::access;
use crate::datum::PgLsn;
use crate::error::{quote_for_message, raise, spi_ok};
use crate::position::Position;
use crate::queue;

/// Advisory-lock class of feed-slot creation/GC (with hashtext(slot name)), of a feed's
/// worker (with the feed id) and of `create_feed` itself (with 0: serialises the
/// `pgcdc.max_feeds` count and the name check): "pgcd", "pgcw", "pgcf".
pub const LOCK_CLASS_SLOT: i32 = 0x7067_6364;
pub const LOCK_CLASS_WORKER: i32 = 0x7067_6377;
pub(super) const LOCK_CLASS_CREATE: i32 = 0x7067_6366;

/// `pgcdc.read` stops adding rows once their key, event and headers JSON reach this many
/// bytes (it always returns at least one row): a result is at most this plus one event.
pub(super) const READ_BYTE_BUDGET: usize = 64 << 20;

const FEED_COLUMNS: &str = "id, name, publication, slot_name, sink, options::text, owner::oid, \
                            state, acked_lsn, acked_ordinal";

fn feed_from_row(row: &pgrx::spi::SpiHeapTupleData<'_>) -> Result<Feed, pgrx::spi::Error> {
    let text = |i: usize| -> Result<String, pgrx::spi::Error> { Ok(row.get::<String>(i)?.unwrap_or_default()) };
    Ok(Feed {
        id: row.get::<i32>(1)?.unwrap_or_default(),
        name: text(2)?,
        publication: text(3)?,
        slot_name: text(4)?,
        sink: Sink::parse(&text(5)?).unwrap_or(Sink::Table),
        options_text: text(6)?,
        owner: row.get::<pg_sys::Oid>(7)?.unwrap_or(pg_sys::InvalidOid),
        state: FeedState::parse(&text(8)?),
        acked: Position::new(
            row.get::<PgLsn>(9)?.map(|l| l.0).unwrap_or_default(),
            row.get::<i32>(10)?.unwrap_or_default().max(0) as u32,
        ),
    })
}

/// The feed row by id (no lock): the worker's view of its feed. Callers hold whatever
/// identity can read `pgcdc.feed`.
pub fn load_by_id(id: i32) -> Option<Feed> {
    spi_ok(Spi::connect(|c| {
        let args = [id.into()];
        let table =
            crate::plans::select(c, &format!("SELECT {FEED_COLUMNS} FROM pgcdc.feed WHERE id = $1"), Some(1), &args)?;
        table.into_iter().next().map(|row| feed_from_row(&row)).transpose()
    }))
}

/// How a SQL function locks the feed row it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RowLock {
    /// `ack`, `alter_feed`, `pause_feed`, `resume_feed`: serialise with each other, not with
    /// the worker's `FOR KEY SHARE`.
    NoKeyUpdate,
    /// `drop_feed`: waits for the worker's staging step to commit.
    Update,
}

/// Locks the feed row and returns it (None: it was dropped meanwhile).
pub(super) fn lock_by_id(id: i32, lock: RowLock) -> Option<Feed> {
    let clause = match lock {
        RowLock::NoKeyUpdate => "FOR NO KEY UPDATE",
        RowLock::Update => "FOR UPDATE",
    };
    spi_ok(Spi::connect_mut(|c| {
        let args = [id.into()];
        let table = crate::plans::update(
            c,
            &format!("SELECT {FEED_COLUMNS} FROM pgcdc.feed WHERE id = $1 {clause}"),
            Some(1),
            &args,
        )?;
        table.into_iter().next().map(|row| feed_from_row(&row)).transpose()
    }))
}

/// The worker's lock for a transaction that stages events or writes its runtime row
/// (`FOR KEY SHARE`); false when the feed was dropped (then nothing may be written for it).
pub fn lock_for_worker(id: i32) -> bool {
    spi_ok(Spi::connect_mut(|c| {
        let args = [id.into()];
        Ok(crate::plans::update(c, "SELECT 1 FROM pgcdc.feed WHERE id = $1 FOR KEY SHARE", Some(1), &args)?.len() == 1)
    }))
}

/// `(id, owner)` of the feed named `name`, found with a heap scan of `pgcdc.feed`: no SQL
/// is parsed or run and the identity is the caller's, so nothing the caller controls
/// (search_path, operators) takes part, and nothing runs as the owner before the caller's
/// rights are known.
pub(super) fn find_feed(name: &str) -> Option<(i32, pg_sys::Oid)> {
    // SAFETY: catalog lookups, then a heap scan of pgcdc.feed under AccessShareLock with a
    // registered MVCC snapshot on the main thread in a transaction; the scan and the
    // relation are closed before returning (or by transaction abort on ERROR). The datums
    // read are by-value (int4, oid).
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"pgcdc".as_ptr(), true);
        let relid = if nsp == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            pg_sys::get_relname_relid(c"feed".as_ptr(), nsp)
        };
        if relid == pg_sys::InvalidOid {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "extension pgcdc is not installed in this database".into(),
                Some("CREATE EXTENSION pgcdc;".into()),
            );
        }
        let attnum = |column: &CStr| i32::from(pg_sys::get_attnum(relid, column.as_ptr()));
        let (a_id, a_name, a_owner) = (attnum(c"id"), attnum(c"name"), attnum(c"owner"));
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        let text = pg_sys::cstring_to_text_with_len(name.as_ptr().cast(), name.len() as i32);
        pg_sys::ScanKeyInit(
            &mut key,
            a_name as pg_sys::AttrNumber,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::Oid::from(pg_sys::F_TEXTEQ),
            pg_sys::Datum::from(text),
        );
        let snapshot =
            if pg_sys::ActiveSnapshotSet() { pg_sys::GetActiveSnapshot() } else { pg_sys::GetTransactionSnapshot() };
        let snapshot = pg_sys::RegisterSnapshot(snapshot);
        let scan = pg_sys::systable_beginscan(rel, pg_sys::InvalidOid, false, snapshot, 1, &mut key);
        let tuple = pg_sys::systable_getnext(scan);
        let found = (!tuple.is_null()).then(|| {
            let desc = (*rel).rd_att;
            let mut null = false;
            let id = pg_sys::heap_getattr(tuple, a_id, desc, &mut null).value() as i32;
            let owner = pg_sys::Oid::from(pg_sys::heap_getattr(tuple, a_owner, desc, &mut null).value() as u32);
            (id, owner)
        });
        pg_sys::systable_endscan(scan);
        pg_sys::UnregisterSnapshot(snapshot);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        found
    }
}

/// The id of the feed `name` if the caller may `action` it. A missing feed is 42704 for
/// admins; for everyone else a missing feed and a feed they may not use are the same 42501.
pub(crate) fn authorize(name: &str, action: &str) -> i32 {
    let caller = access::current_role();
    match find_feed(name) {
        Some((id, owner)) if access::may_use_feed(caller, owner) => id,
        None if access::is_admin(caller) => missing_feed(name),
        _ => access::deny_feed_access(caller, name, action),
    }
}

pub(super) fn missing_feed(name: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("feed {} does not exist", quote_for_message(name)),
        Some("SELECT name FROM pgcdc.feeds; lists the feeds you may use.".into()),
    )
}

/// Wakes processes at commit: the launcher and/or a feed worker (their latches).
pub(crate) fn wake_at_commit(launcher: bool, worker_of: Option<i32>) {
    let pids: Vec<i32> = spi_ok(Spi::connect(|c| {
        let mut pids = Vec::new();
        if launcher {
            for row in c.select(
                "SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'pgcdc launcher'",
                None,
                &[],
            )? {
                if let Some(pid) = row.get::<i32>(1)? {
                    pids.push(pid);
                }
            }
        }
        if let Some(id) = worker_of {
            let args = [id.into()];
            for row in crate::plans::select(c, "SELECT pid FROM pgcdc.feed_runtime WHERE feed_id = $1", None, &args)? {
                if let Some(pid) = row.get::<i32>(1)? {
                    pids.push(pid);
                }
            }
        }
        Ok(pids)
    }));
    // Resolve the PGPROCs now (takes ProcArrayLock); only SetLatch runs at commit. A PGPROC
    // reused by another process by then just gets a spurious wake-up.
    let procs: Vec<usize> = pids
        .into_iter()
        // SAFETY: BackendPidGetProc returns NULL or a pointer into the shared PGPROC array.
        .map(|pid| unsafe { pg_sys::BackendPidGetProc(pid) } as usize)
        .filter(|p| *p != 0)
        .collect();
    if procs.is_empty() {
        return;
    }
    pgrx::register_xact_callback(PgXactCallbackEvent::Commit, move || {
        for p in procs {
            let proc_ = p as *mut pg_sys::PGPROC;
            // SAFETY: PGPROC entries live in shared memory for the life of the server.
            unsafe { pg_sys::SetLatch(&raw mut (*proc_).procLatch) };
        }
    });
}

/// Moves the (locked) feed's acknowledged position to `new_acked`, removes the events at or
/// below it and lowers the queue counters; wakes the worker at commit. Returns how many events
/// it removed.
pub(super) fn acknowledge(f: &Feed, new_acked: Position) -> i64 {
    let (streamed, streamed_bytes) = spi_ok(crate::streamed::remove_acknowledged(f.id, f.acked, new_acked));
    // Everything at or below the previous acknowledged position is gone already: the lower
    // bound keeps the index scan to the newly acknowledged range.
    let (in_queue, in_queue_bytes) = spi_ok(queue::remove(f.id, f.acked, new_acked));
    let removed = spi_ok(Spi::connect_mut(|c| {
        let args = [f.id.into(), PgLsn(new_acked.commit_lsn).into(), (new_acked.ordinal as i32).into()];
        let removed = in_queue + streamed;
        let bytes = in_queue_bytes + streamed_bytes;
        crate::plans::update(
            c,
            "UPDATE pgcdc.feed SET acked_lsn = $2, acked_ordinal = $3, acked_at = now() WHERE id = $1",
            None,
            &args,
        )?;
        if removed > 0 {
            // The worker's queue counters (see pgcdc.feed_runtime).
            let args = [f.id.into(), removed.into(), bytes.into()];
            crate::plans::update(
                c,
                "UPDATE pgcdc.feed_runtime SET queued_events = greatest(queued_events - $2, 0), \
                 queued_bytes = greatest(queued_bytes - $3, 0) WHERE feed_id = $1",
                None,
                &args,
            )?;
        }
        Ok(removed)
    }));
    wake_at_commit(false, Some(f.id));
    removed
}

/// Result columns of `pgcdc.read`: commit_lsn, ordinal, lsn, xid, op, schema_name,
/// table_name, topic, key, event, headers.
pub(super) const READ_COLUMNS: usize = 11;

/// Where `pgcdc.read`'s events go, one at a time, as datums of its result columns (valid
/// for the call only: the receiver copies them).
pub(super) type ReadSink<'a> = dyn FnMut(&mut [pg_sys::Datum; READ_COLUMNS], &mut [bool; READ_COLUMNS]) + 'a;

/// The tables the events read come from, by OID (None: an event of a table without one),
/// with their names.
pub(super) type ReadTables = BTreeMap<Option<u32>, (String, String)>;

/// Hands the staged events after `after` to `sink` in position order: at most `max_events`,
/// and no more once their JSON reaches [`READ_BYTE_BUDGET`]. Committed streamed transactions
/// (see [`crate::streamed`]) are merged in at their commit LSNs, their placeholders filled in.
/// Returns the tables of the events.
pub(super) fn read_rows(
    feed_id: i32,
    after: Position,
    max_events: usize,
    sink: &mut ReadSink<'_>,
) -> Result<ReadTables, pgrx::spi::Error> {
    let streams = crate::streamed::committed(feed_id, after.commit_lsn)?;
    let mut read = Read { max_events, count: 0, bytes: 0, tables: BTreeMap::new() };
    let mut from = after;
    for stream in streams.iter().map(Some).chain([None]) {
        // Events at their own positions, up to the next streamed transaction's commit.
        let before = stream.map_or(crate::streamed::PROVISIONAL, |t| t.commit_lsn);
        fetch_events(feed_id, (from, before), None, &mut read, sink)?;
        let Some(t) = stream else { break };
        if read.full() {
            break;
        }
        // Then the streamed transaction's, shown at its commit.
        let ordinal = if from.commit_lsn == t.commit_lsn { from.ordinal } else { 0 };
        let at = Position::new(crate::streamed::provisional(t.xid), ordinal);
        let until = Lsn(crate::streamed::provisional(t.xid).0 + 1);
        fetch_events(feed_id, (at, until), Some(t), &mut read, sink)?;
        if read.full() {
            break;
        }
        from = Position::whole(t.commit_lsn);
    }
    Ok(read.tables)
}

/// A read's progress.
struct Read {
    max_events: usize,
    count: usize,
    bytes: usize,
    tables: ReadTables,
}

impl Read {
    fn full(&self) -> bool {
        self.count >= self.max_events || self.bytes >= READ_BYTE_BUDGET
    }
}

/// Hands the events in `(after, before)` (after a position, below a commit LSN) to `sink`,
/// until the read is full. `streamed`: they are that streamed transaction's, shown at its
/// commit. The queue's datums go to the sink as they are (detoasted), without copies.
///
/// They are read straight through the queue's primary key ([`queue::scan_events`]) when the
/// table is as pgcdc created it, else through SQL. The direct scan sees the statement's
/// snapshot, never a newer one than the SQL that found the committed streamed transactions:
/// a newer one could show events committed after a streamed transaction it does not list.
fn fetch_events(
    feed_id: i32,
    (after, before): (Position, Lsn),
    streamed: Option<&crate::streamed::Committed>,
    read: &mut Read,
    sink: &mut ReadSink<'_>,
) -> Result<(), pgrx::spi::Error> {
    if read.full() {
        return Ok(());
    }
    let mut row_cx = pgrx::PgMemoryContexts::new("pgcdc.read row");
    // The queue's columns in the order of the query below.
    const QUERY_ORDER: [usize; EVENT_QUERY_COLUMNS] = [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 8];
    // SAFETY: in the read's transaction on the main thread; each row's datums are valid while
    // the callback runs, and put_event's allocations go to row_cx, reset once the sink copied them.
    let direct = unsafe {
        queue::scan_events(feed_id, after, before, |values, nulls| {
            let datums = QUERY_ORDER.map(|c| values[c]);
            let isnull = QUERY_ORDER.map(|c| nulls[c]);
            if row_cx.switch_to(|_| put_event(&datums, &isnull, streamed, read, sink)) {
                row_cx.reset();
            }
            !read.full()
        })
    };
    LAST_READ_DIRECT.set(direct);
    if direct {
        return Ok(());
    }
    let want = read.max_events.saturating_sub(read.count);
    // The primary key (feed_id, commit_lsn, ordinal) answers this in order whatever the
    // statistics say: without ANALYZE the planner may otherwise sort the whole queue.
    access::with_settings(
        &[(c"enable_seqscan", c"off"), (c"enable_bitmapscan", c"off"), (c"enable_sort", c"off")],
        || {
            Spi::connect(|c| {
                let args = [
                    feed_id.into(),
                    PgLsn(after.commit_lsn).into(),
                    (after.ordinal as i32).into(),
                    PgLsn(before).into(),
                    (want as i64).into(),
                ];
                let result = crate::plans::select(
                    c,
                    "SELECT commit_lsn, ordinal, lsn, xid, op, schema_name, table_name, topic, key, value, \
                     headers, relid FROM pgcdc.event \
                     WHERE feed_id = $1 AND (commit_lsn, ordinal) > ($2, $3) AND commit_lsn < $4 \
                     ORDER BY commit_lsn, ordinal LIMIT $5",
                    None,
                    &args,
                )?;
                // SAFETY: the result just selected (deformed below into arrays of this width).
                if !result.is_empty()
                    && unsafe { (*(*pg_sys::SPI_tuptable).tupdesc).natts } as usize != EVENT_QUERY_COLUMNS
                {
                    return Err(pgrx::spi::SpiErrorCodes::NoAttribute.into());
                }
                for i in 0..result.len() {
                    let mut datums = [pg_sys::Datum::from(0usize); EVENT_QUERY_COLUMNS];
                    let mut isnull = [false; EVENT_QUERY_COLUMNS];
                    // SAFETY: row i of the result just selected in this SPI connection (it
                    // lives until the connection ends), deformed with its own descriptor; the
                    // row's own allocations are in row_cx, reset once the sink has copied it.
                    unsafe {
                        let table = pg_sys::SPI_tuptable;
                        let tuple = *(*table).vals.add(i);
                        pg_sys::heap_deform_tuple(tuple, (*table).tupdesc, datums.as_mut_ptr(), isnull.as_mut_ptr());
                        if row_cx.switch_to(|_| put_event(&datums, &isnull, streamed, read, sink)) {
                            row_cx.reset();
                        }
                    }
                    if read.full() {
                        break;
                    }
                }
                Ok(())
            })
        },
    )
}

thread_local! {
    static LAST_READ_DIRECT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the last read of the queue went straight through its primary key (for tests).
pub fn last_read_was_direct() -> bool {
    LAST_READ_DIRECT.get()
}

/// Columns of [`fetch_events`]'s query.
const EVENT_QUERY_COLUMNS: usize = 12;

/// Hands one queued event to `sink`: its columns in the order of [`fetch_events`]'s query.
/// True when it allocated in the current memory context (a detoasted or bound value).
///
/// # Safety
/// The datums are valid values of those columns' types.
unsafe fn put_event(
    datums: &[pg_sys::Datum; EVENT_QUERY_COLUMNS],
    isnull: &[bool; EVENT_QUERY_COLUMNS],
    streamed: Option<&crate::streamed::Committed>,
    read: &mut Read,
    sink: &mut ReadSink<'_>,
) -> bool {
    // SAFETY: (whole body) varlenas are detoasted (into the current context) before their
    // length or text is read.
    unsafe {
        let mut allocated = false;
        let column = |n: usize| (!isnull[n]).then_some(datums[n]);
        let mut varlena = |n: usize| {
            column(n).map(|d| {
                let v = d.cast_mut_ptr::<pg_sys::varlena>();
                if pgrx::varlena::varatt_is_1b_e(v) || pgrx::varlena::varatt_is_4b_c(v) {
                    allocated = true;
                    pg_sys::Datum::from(pg_sys::pg_detoast_datum_packed(v))
                } else {
                    d
                }
            })
        };
        let (schema, table_name, topic, op) = (varlena(5), varlena(6), varlena(7), varlena(4));
        let (key, mut value, headers) = (varlena(8), varlena(9), varlena(10));
        let text = |d: pg_sys::Datum| pgrx::varlena::text_to_rust_str_unchecked(d.cast_mut_ptr());
        let len = |d: Option<pg_sys::Datum>| d.map_or(0, |d| pgrx::varlena::varsize_any_exhdr(d.cast_mut_ptr()));
        let mut commit_lsn = column(0);
        if let Some(t) = streamed {
            commit_lsn = PgLsn(t.commit_lsn).into_datum();
            value = value.map(|v| {
                allocated = true;
                let bound = t.commit.bind(text(v));
                pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(bound.as_ptr().cast(), bound.len() as i32))
            });
        }
        read.count += 1;
        read.bytes += len(key) + len(value) + len(headers);
        if let (Some(schema), Some(name)) = (schema, table_name) {
            let relid = column(11).map(|d| d.value() as u32);
            if !read.tables.contains_key(&relid) && !text(name).is_empty() {
                read.tables.insert(relid, (text(schema).to_owned(), text(name).to_owned()));
            }
        }
        let cols = [commit_lsn, column(1), column(2), column(3), op, schema, table_name, topic, key, value, headers];
        let mut values = [pg_sys::Datum::from(0usize); READ_COLUMNS];
        let mut nulls = [false; READ_COLUMNS];
        for (n, d) in cols.into_iter().enumerate() {
            match d {
                Some(d) => values[n] = d,
                None => nulls[n] = true,
            }
        }
        sink(&mut values, &mut nulls);
        allocated
    }
}
