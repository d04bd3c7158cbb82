//! Staging: events into the UNLOGGED queue `pgcdc.event`, wake-ups and NOTIFY payloads.
//!
//! One batch = one pass of the table AM's `multi_insert` plus index insertion (the fast path,
//! re-validated against the table under the batch's lock every time, see [`Stager`]), or one
//! `INSERT .. SELECT FROM unnest(arrays)` through a plan prepared once per worker, inside the
//! batch's transaction. Events and their headers are stored as JSON **text** (not jsonb:
//! about 3x cheaper to stage, and nothing to format when read), uncompressed (see the
//! table's storage in sql/pgcdc_schema.sql); `pgcdc.read` returns them as `json` without
//! re-parsing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pgcdc_core::debezium::{self, Event, Op};
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{PgMemoryContexts, PgTupleDesc};

use crate::datum::{PgLsn, PG_LSN_OID};
use crate::position::Position;

/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
pub const NOTIFY_PAYLOAD_LIMIT: usize = 7999;

/// One event ready to stage.
#[derive(Debug, Clone)]
pub struct Row {
    pub position: Position,
    pub lsn: pgcdc_core::Lsn,
    pub xid: Option<i64>,
    pub op: &'static str,
    /// Shared with the encoder's relation cache: no copy per event.
    pub schema: Arc<str>,
    pub table: Arc<str>,
    /// The relation the event comes from (None for messages and transaction records): `read`
    /// checks privileges on this relation, never on whatever carries its name later.
    pub relid: Option<pg_sys::Oid>,
    pub topic: Arc<str>,
    pub key: Option<String>,
    pub value: Option<String>,
    /// JSON object text, or None when the event has no headers (shared by rows with the same).
    pub headers: Option<Arc<str>>,
}

/// The `op` column: Debezium's code, or `tombstone` / `begin` / `end`.
pub fn op_name(op: Op) -> &'static str {
    op.code().unwrap_or(match op {
        Op::Tombstone => "tombstone",
        Op::TxBegin => "begin",
        Op::TxEnd => "end",
        _ => "?",
    })
}

/// The last event's headers, as pairs, as JSON text and whether that text was found valid:
/// events repeat the same (context) headers one after another, so they are rendered and
/// checked once and the rows share one string (which staging also binds once).
#[derive(Default)]
pub struct Headers {
    /// The last pairs rendered, and their JSON.
    rendered: Option<(debezium::Headers, Arc<str>)>,
    valid: Option<Arc<str>>,
}

impl Headers {
    /// The JSON object of `pairs` (None when there are none).
    fn render(&mut self, pairs: debezium::Headers) -> Option<Arc<str>> {
        if pairs.is_empty() {
            return None;
        }
        if let Some((last, json)) = &self.rendered {
            // Mostly the very same (the encoder shares its context headers).
            if Arc::ptr_eq(last, &pairs) || *last == pairs {
                return Some(Arc::clone(json));
            }
        }
        let mut s = String::from("{");
        for (i, (name, value)) in pairs.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            pgcdc_core::json::write_str(&mut s, name);
            s.push(':');
            s.push_str(value);
        }
        s.push('}');
        let json: Arc<str> = s.into();
        self.rendered = Some((pairs, Arc::clone(&json)));
        Some(json)
    }

    /// Whether `json` parses (headers values come from the encoder as JSON text).
    fn check(&mut self, json: &Arc<str>) -> Result<(), serde_json::Error> {
        if self.valid.as_ref().is_some_and(|v| Arc::ptr_eq(v, json) || **v == **json) {
            return Ok(());
        }
        serde_json::from_str::<&serde_json::value::RawValue>(json)?;
        self.valid = Some(Arc::clone(json));
        Ok(())
    }
}

impl Row {
    pub fn from_event(ev: Event, headers: &mut Headers) -> Row {
        Row {
            position: Position::new(ev.commit_lsn, ev.ordinal),
            lsn: ev.lsn,
            xid: ev.xid.map(i64::from),
            op: op_name(ev.op),
            schema: ev.schema,
            table: ev.table,
            relid: ev.relation_id.map(pg_sys::Oid::from),
            topic: ev.topic,
            key: ev.key,
            value: ev.value,
            headers: headers.render(ev.headers),
        }
    }

    /// Bytes this row adds to the queue (for the byte cap): key and value JSON.
    pub fn size(&self) -> i64 {
        (self.value.as_ref().map_or(0, String::len) + self.key.as_ref().map_or(0, String::len)) as i64
    }

    /// Whether the row can be staged: its JSON (key + value + headers) is at most
    /// `max_bytes` and its headers are valid JSON (stored as json, unchecked by the fast path). Err: why not.
    pub fn check(&self, max_bytes: usize, headers: &mut Headers) -> Result<(), String> {
        let total = self.size() as usize + self.headers.as_ref().map_or(0, |h| h.len());
        if total > max_bytes {
            return Err(format!("its JSON is {total} bytes, more than pgcdc.max_event_size ({max_bytes} bytes)"));
        }
        if let Some(h) = &self.headers {
            headers.check(h).map_err(|e| format!("its headers are not valid JSON ({e})"))?;
        }
        Ok(())
    }

    /// The NOTIFY payload of this event (notify sink): position, topic, key and value, or a
    /// reference to the staged row when that would exceed the payload limit.
    pub fn notify_payload(&self) -> Option<String> {
        let head = format!(
            "{{\"commit_lsn\":\"{}\",\"ordinal\":{},\"lsn\":\"{}\",\"op\":\"{}\",\"topic\":{}",
            self.position.commit_lsn,
            self.position.ordinal,
            self.lsn,
            self.op,
            serde_json::to_string(&*self.topic).unwrap_or_else(|_| "\"\"".into())
        );
        let full = format!(
            "{head},\"key\":{},\"value\":{}}}",
            self.key.as_deref().unwrap_or("null"),
            self.value.as_deref().unwrap_or("null")
        );
        (full.len() <= NOTIFY_PAYLOAD_LIMIT).then_some(full)
    }

    /// The payload that points at a staged row (notify sink, event too big).
    pub fn reference_payload(&self) -> String {
        format!(
            "{{\"commit_lsn\":\"{}\",\"ordinal\":{},\"lsn\":\"{}\",\"op\":\"{}\",\"staged\":true}}",
            self.position.commit_lsn, self.position.ordinal, self.lsn, self.op
        )
    }
}

const INSERT_SQL: &str = "INSERT INTO pgcdc.event \
     (feed_id, commit_lsn, ordinal, lsn, xid, op, schema_name, table_name, relid, topic, key, value, headers) \
     SELECT $1, unnest($2::pg_lsn[]), unnest($3::int4[]), unnest($4::pg_lsn[]), unnest($5::int8[]), \
            unnest($6::text[]), unnest($7::text[]), unnest($8::text[]), unnest($9::oid[]), unnest($10::text[]), \
            unnest($11::text[]), unnest($12::text[]), unnest($13::text[])::json";

/// The columns of `pgcdc.event`, in order, that the direct path fills, with their types
/// and whether they may be NULL.
const EVENT_COLUMNS: &[(&str, pg_sys::Oid, bool)] = &[
    ("feed_id", pg_sys::INT4OID, false),
    ("commit_lsn", PG_LSN_OID, false),
    ("ordinal", pg_sys::INT4OID, false),
    ("lsn", PG_LSN_OID, false),
    ("xid", pg_sys::INT8OID, true),
    ("op", pg_sys::TEXTOID, false),
    ("schema_name", pg_sys::TEXTOID, false),
    ("table_name", pg_sys::TEXTOID, false),
    ("relid", pg_sys::OIDOID, true),
    ("topic", pg_sys::TEXTOID, false),
    ("key", pg_sys::TEXTOID, true),
    ("value", pg_sys::TEXTOID, true),
    ("headers", pg_sys::JSONOID, true),
    ("staged_at", pg_sys::TIMESTAMPTZOID, false),
];

/// Rows per `multi_insert` call.
const CHUNK: usize = 1000;

/// Stages batches of events. The fast path writes heap tuples straight through the table
/// access method's `multi_insert` (as COPY does) and inserts their index entries. It trusts
/// nothing it saw earlier: **every batch**, under the batch's RowExclusiveLock (taking the
/// lock processes pending invalidations, so the relcache entry is current and no ALTER
/// TABLE can run until commit), it re-checks from the relcache that `pgcdc.event` has
/// exactly the columns above (names, types, no dropped or generated ones, no NOT NULL or
/// CHECK constraint the rows could violate, no triggers or rules) and that every index is a
/// plain, immediate column index ([`open_direct`]). Otherwise (someone altered the table,
/// added an expression or partial index, ...) that batch goes through an SPI `INSERT ..
/// SELECT unnest(..)` (plan prepared once per worker), which PostgreSQL checks fully.
/// Either way the rows are in the current transaction and visible at its commit.
#[derive(Default)]
pub struct Stager {
    insert: Option<OwnedPreparedStatement>,
    /// Whether the last batch took the fast path (for tests).
    last_direct: bool,
}

impl Stager {
    /// Inserts `rows` for `feed_id`. Call inside a transaction.
    pub fn stage(&mut self, feed_id: i32, rows: &[Row]) -> Result<(), pgrx::spi::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        // SAFETY: in a transaction on the main thread; open_direct validates the table.
        let target = unsafe { open_direct() };
        self.last_direct = target.is_some();
        match target {
            Some(t) => {
                // SAFETY: `t` was validated under the lock it holds.
                unsafe { t.insert(feed_id, rows) };
                Ok(())
            }
            None => self.stage_spi(feed_id, rows),
        }
    }

    /// Whether the last batch took the fast path (for tests).
    pub fn is_direct(&self) -> bool {
        self.last_direct
    }

    fn stage_spi(&mut self, feed_id: i32, rows: &[Row]) -> Result<(), pgrx::spi::Error> {
        let n = rows.len();
        let mut commit = Vec::with_capacity(n);
        let mut ordinal = Vec::with_capacity(n);
        let mut lsn = Vec::with_capacity(n);
        let mut xid = Vec::with_capacity(n);
        let mut op = Vec::with_capacity(n);
        let mut schema = Vec::with_capacity(n);
        let mut table = Vec::with_capacity(n);
        let mut relid = Vec::with_capacity(n);
        let mut topic = Vec::with_capacity(n);
        let mut key = Vec::with_capacity(n);
        let mut value = Vec::with_capacity(n);
        let mut headers = Vec::with_capacity(n);
        for r in rows {
            commit.push(PgLsn(r.position.commit_lsn));
            ordinal.push(r.position.ordinal as i32);
            lsn.push(PgLsn(r.lsn));
            xid.push(r.xid);
            op.push(r.op);
            schema.push(&*r.schema);
            table.push(&*r.table);
            relid.push(r.relid);
            topic.push(&*r.topic);
            key.push(r.key.as_deref());
            value.push(r.value.as_deref());
            headers.push(r.headers.as_deref());
        }
        Spi::connect_mut(|c| {
            if self.insert.is_none() {
                let text = PgOid::from(pg_sys::TEXTARRAYOID);
                let types = [
                    PgOid::from(pg_sys::INT4OID),
                    PgOid::from(pg_sys::PG_LSNARRAYOID),
                    PgOid::from(pg_sys::INT4ARRAYOID),
                    PgOid::from(pg_sys::PG_LSNARRAYOID),
                    PgOid::from(pg_sys::INT8ARRAYOID),
                    text,
                    text,
                    text,
                    PgOid::from(pg_sys::OIDARRAYOID),
                    text,
                    text,
                    text,
                    text,
                ];
                self.insert = Some(c.prepare_mut(INSERT_SQL, &types)?.keep());
            }
            let args = [
                feed_id.into(),
                commit.into(),
                ordinal.into(),
                lsn.into(),
                xid.into(),
                op.into(),
                schema.into(),
                table.into(),
                relid.into(),
                topic.into(),
                key.into(),
                value.into(),
                headers.into(),
            ];
            let stmt = self.insert.as_ref().expect("prepared above");
            c.update(stmt, None, &args)?;
            Ok(())
        })
    }
}

/// `pgcdc.event` opened for the fast path, with its indexes (all locked until commit).
struct Direct {
    rel: pg_sys::Relation,
    /// Index, its IndexInfo, and whether it enforces uniqueness.
    indexes: Vec<(pg_sys::Relation, *mut pg_sys::IndexInfo, bool)>,
}

/// The oid of `pgcdc.event` now (InvalidOid if it does not exist).
fn event_relid() -> pg_sys::Oid {
    // SAFETY: syscache lookups with NUL-terminated names; missing_ok = true.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"pgcdc".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return pg_sys::InvalidOid;
        }
        pg_sys::get_relname_relid(c"event".as_ptr(), nsp)
    }
}

/// Whether the (locked) relation has exactly the shape the fast path writes.
///
/// # Safety
/// `rel` is open and locked, on the main thread.
unsafe fn shape_ok(rel: pg_sys::Relation) -> bool {
    // SAFETY: reads of the open relation's relcache entry.
    unsafe {
        let form = &*(*rel).rd_rel;
        if form.relhasrules || !(*rel).rd_rules.is_null() || fires_on_insert((*rel).trigdesc) {
            return false;
        }
        let constr = (*(*rel).rd_att).constr;
        if !constr.is_null() && ((*constr).num_check > 0 || (*constr).has_generated_stored) {
            return false;
        }
        // The fast path writes NULLs only where the table allows them.
        columns_are_events(rel, |a, nullable| !(nullable && a.attnotnull))
    }
}

/// Whether the open relation is a plain table with exactly [`EVENT_COLUMNS`] (names, types,
/// none dropped or generated), each also passing `also(attribute, may_be_null)`.
///
/// # Safety
/// `rel` is open and locked, on the main thread.
unsafe fn columns_are_events(
    rel: pg_sys::Relation,
    also: impl Fn(&pg_sys::FormData_pg_attribute, bool) -> bool,
) -> bool {
    // SAFETY: reads of the open relation's relcache entry.
    unsafe {
        let desc = (*rel).rd_att;
        if (*(*rel).rd_rel).relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char
            || (*desc).natts as usize != EVENT_COLUMNS.len()
        {
            return false;
        }
        // Borrowed from the relcache (not released); pgrx knows where each version keeps
        // the attributes (PostgreSQL 18 moved them behind its compact attributes).
        let attrs = PgTupleDesc::from_pg_unchecked(desc);
        attrs.iter().zip(EVENT_COLUMNS).all(|(a, &(name, typ, nullable))| {
            let attname = std::ffi::CStr::from_ptr(a.attname.data.as_ptr());
            !a.attisdropped
                && a.attgenerated == 0
                && a.atttypid == typ
                && attname.to_bytes() == name.as_bytes()
                && also(a, nullable)
        })
    }
}

/// Whether any trigger of the relation fires on INSERT (the fast path fires none). pgcdc's own
/// triggers on the queue fire on DELETE and TRUNCATE only (sql/pgcdc_finalize.sql).
///
/// # Safety
/// `trigdesc` is the open relation's trigger descriptor (or NULL).
unsafe fn fires_on_insert(trigdesc: *const pg_sys::TriggerDesc) -> bool {
    // SAFETY: a read of the relcache entry's trigger flags.
    unsafe {
        let Some(t) = trigdesc.as_ref() else { return false };
        t.trig_insert_before_row
            || t.trig_insert_after_row
            || t.trig_insert_instead_row
            || t.trig_insert_before_statement
            || t.trig_insert_after_statement
            || t.trig_insert_new_table
    }
}

/// Opens `pgcdc.event` and its indexes for the fast path, or None when the fast path does
/// not apply to the table as it is now (the caller then uses SQL).
///
/// # Safety
/// In a transaction, on the main thread.
unsafe fn open_direct() -> Option<Direct> {
    let relid = event_relid();
    if relid == pg_sys::InvalidOid {
        return None;
    }
    let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    // SAFETY: standard relation opening; the lock is kept until commit (NoLock closes), so
    // nothing validated below can change before the batch is written.
    unsafe {
        let rel = pg_sys::table_open(relid, lock);
        if !shape_ok(rel) {
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            return None;
        }
        let list = pg_sys::RelationGetIndexList(rel);
        let mut indexes = Vec::new();
        let mut ok = true;
        for i in 0..pg_sys::list_length(list) {
            let irel = pg_sys::index_open(pg_sys::list_nth_oid(list, i), lock);
            let info = pg_sys::BuildIndexInfo(irel);
            let index = &*(*irel).rd_index;
            let plain = (*info).ii_Expressions.is_null()
                && (*info).ii_Predicate.is_null()
                && (*info).ii_ExclusionOps.is_null()
                && (!index.indisunique || index.indimmediate);
            if !plain {
                ok = false;
            }
            // An index being built concurrently takes no entries yet (as in the executor).
            if (*info).ii_ReadyForInserts {
                indexes.push((irel, info, index.indisunique));
            } else {
                pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
            }
        }
        pg_sys::list_free(list);
        if !ok {
            for (irel, _, _) in indexes {
                pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
            }
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            return None;
        }
        Some(Direct { rel, indexes })
    }
}

/// Width of a `pgcdc.event` row ([`scan_events`] hands rows of this many columns).
pub const EVENT_WIDTH: usize = 14;
const _: () = assert!(EVENT_COLUMNS.len() == EVENT_WIDTH);

/// Hands one feed's staged events to `each` in position order, read straight through the
/// primary key (no SQL): those after `after` with a commit LSN below `before`, as the
/// table's datums and nulls (valid until `each` returns), until `each` returns false. Rows
/// are those the statement's active snapshot sees. Returns false, having read nothing, when
/// this does not apply to the table as it is now (not the shape pgcdc created, row
/// security, another primary key, no SELECT right) or to the server (in recovery): the caller
/// then reads through SQL.
///
/// # Safety
/// In a transaction, on the main thread.
pub unsafe fn scan_events(
    feed_id: i32,
    after: Position,
    before: pgcdc_core::Lsn,
    mut each: impl FnMut(&[pg_sys::Datum], &[bool]) -> bool,
) -> bool {
    let relid = event_relid();
    // SAFETY: (whole body) standard relation and index opening and an index scan as the
    // executor runs one; the locks stay until the transaction ends, like a query's; the slot
    // keeps the current row's buffer pinned while `each` looks at its datums.
    unsafe {
        // During recovery an unlogged table has no data to read: SQL says so clearly.
        if relid == pg_sys::InvalidOid
            || pg_sys::RecoveryInProgress()
            || !pg_sys::ActiveSnapshotSet()
            || pg_sys::pg_class_aclcheck(relid, pg_sys::GetUserId(), pg_sys::ACL_SELECT as pg_sys::AclMode)
                != pg_sys::AclResult::ACLCHECK_OK
        {
            return false;
        }
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let rel = pg_sys::table_open(relid, lock);
        let index = if (*(*rel).rd_rel).relrowsecurity || !columns_are_events(rel, |_, _| true) {
            None
        } else {
            position_index(rel, lock)
        };
        let Some(index) = index else {
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            return false;
        };
        // feed_id = $1 AND (commit_lsn, ordinal) > after AND commit_lsn < before, as the
        // executor would build them: the row comparison positions the scan right after
        // `after` (in a big transaction, past everything already read and acknowledged). Its
        // members compare with the btree's 3-way order functions, not the operators.
        let mut row: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        let members = [
            (2, PG_LSN_OID, pg_sys::F_PG_LSN_CMP, pg_sys::Datum::from(after.commit_lsn.0), 0),
            (3, pg_sys::INT4OID, pg_sys::F_BTINT4CMP, pg_sys::Datum::from(after.ordinal as i32), pg_sys::SK_ROW_END),
        ];
        for (key, (column, typ, procedure, argument, end)) in row.iter_mut().zip(members) {
            let flags = (pg_sys::SK_ROW_MEMBER | end) as i32;
            let strategy = pg_sys::BTGreaterStrategyNumber as pg_sys::StrategyNumber;
            pg_sys::ScanKeyEntryInitialize(
                key,
                flags,
                column,
                strategy,
                typ,
                pg_sys::InvalidOid,
                procedure.into(),
                argument,
            );
        }
        let mut keys: [pg_sys::ScanKeyData; 3] = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut keys[0],
            1,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::F_INT4EQ.into(),
            pg_sys::Datum::from(feed_id),
        );
        // A row comparison's header has no function: its members do the comparing.
        keys[1].sk_flags = pg_sys::SK_ROW_HEADER as i32;
        keys[1].sk_attno = 2;
        keys[1].sk_strategy = pg_sys::BTGreaterStrategyNumber as pg_sys::StrategyNumber;
        keys[1].sk_argument = pg_sys::Datum::from(row.as_mut_ptr());
        pg_sys::ScanKeyInit(
            &mut keys[2],
            2,
            pg_sys::BTLessStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::F_PG_LSN_LT.into(),
            pg_sys::Datum::from(before.0),
        );
        let snapshot = pg_sys::GetActiveSnapshot();
        #[cfg(not(feature = "pg18"))]
        let scan = pg_sys::index_beginscan(rel, index, snapshot, keys.len() as i32, 0);
        #[cfg(feature = "pg18")]
        let scan = pg_sys::index_beginscan(rel, index, snapshot, std::ptr::null_mut(), keys.len() as i32, 0);
        pg_sys::index_rescan(scan, keys.as_mut_ptr(), keys.len() as i32, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            // A read may return up to a million events: cancel and statement_timeout apply.
            pgrx::check_for_interrupts!();
            pg_sys::slot_getallattrs(slot);
            let values = std::slice::from_raw_parts((*slot).tts_values, EVENT_WIDTH);
            let nulls = std::slice::from_raw_parts((*slot).tts_isnull, EVENT_WIDTH);
            if !each(values, nulls) {
                break;
            }
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        true
    }
}

/// A btree operator family's 3-way comparison support function (nbtree.h).
const BTORDER_PROC: i16 = 1;

/// The table's primary key opened, if it is a valid btree on (feed_id, commit_lsn, ordinal)
/// in ascending order with the standard operators: the index [`scan_events`] reads.
///
/// # Safety
/// `rel` is `pgcdc.event`, open and locked, on the main thread.
unsafe fn position_index(rel: pg_sys::Relation, lock: pg_sys::LOCKMODE) -> Option<pg_sys::Relation> {
    // SAFETY: (whole body) relcache and syscache reads of the open relation and its index.
    unsafe {
        pg_sys::list_free(pg_sys::RelationGetIndexList(rel)); // fills rd_pkindex
        let pk = (*rel).rd_pkindex;
        if pk == pg_sys::InvalidOid {
            return None;
        }
        let index = pg_sys::index_open(pk, lock);
        let form = &*(*index).rd_index;
        let columns = form.indkey.values.as_slice(form.indnkeyatts.max(0) as usize);
        // (key column, operand type, strategy, the operator's procedure it must be)
        let operators = [
            (0, pg_sys::INT4OID, pg_sys::BTEqualStrategyNumber, pg_sys::F_INT4EQ),
            (1, PG_LSN_OID, pg_sys::BTLessStrategyNumber, pg_sys::F_PG_LSN_LT),
        ];
        // (key column, type, the order function it must be): what orders the positions.
        let orders = [(1, PG_LSN_OID, pg_sys::F_PG_LSN_CMP), (2, pg_sys::INT4OID, pg_sys::F_BTINT4CMP)];
        let usable = (*(*index).rd_rel).relam == pg_sys::BTREE_AM_OID
            && form.indisvalid
            && columns == [1, 2, 3]
            && (0..3).all(|k| *(*index).rd_indoption.add(k) == 0)
            && operators.iter().all(|&(k, typ, strategy, procedure)| {
                let family = *(*index).rd_opfamily.add(k);
                let op = pg_sys::get_opfamily_member(family, typ, typ, strategy as i16);
                op != pg_sys::InvalidOid && pg_sys::get_opcode(op) == procedure.into()
            })
            && orders.iter().all(|&(k, typ, procedure)| {
                let family = *(*index).rd_opfamily.add(k);
                pg_sys::get_opfamily_proc(family, typ, typ, BTORDER_PROC) == procedure.into()
            });
        if usable {
            Some(index)
        } else {
            pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
            None
        }
    }
}

/// A palloc'd `text` datum.
unsafe fn text_datum(s: &str) -> pg_sys::Datum {
    // SAFETY: copies `s.len()` bytes into a new varlena in CurrentMemoryContext.
    pg_sys::Datum::from(unsafe { pg_sys::cstring_to_text_with_len(s.as_ptr().cast(), s.len() as i32) })
}

impl Direct {
    /// # Safety
    /// In a transaction, on the main thread, with `self` from [`open_direct`] (this
    /// transaction, lock held).
    unsafe fn insert<'r>(self, feed_id: i32, rows: &'r [Row]) {
        // SAFETY: (whole body) standard table-AM insertion as COPY FROM does it:
        // multi_insert virtual slots, then one index entry per tuple and index; everything
        // is released below or by transaction abort on ERROR. The locks stay until commit.
        unsafe {
            let rel = self.rel;
            let natts = EVENT_COLUMNS.len();
            let multi_insert = (*(*rel).rd_tableam).multi_insert.expect("table AM without multi_insert");
            let bistate = pg_sys::GetBulkInsertState();
            let cid = pg_sys::GetCurrentCommandId(true);
            let now = pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp());
            let nslots = rows.len().min(CHUNK);
            // Slots over an unpinned copy of the descriptor: over the relcache's own, each
            // slot of the chunk would be remembered by the transaction's resource owner.
            let desc = pg_sys::CreateTupleDescCopy((*rel).rd_att);
            let ops = pg_sys::table_slot_callbacks(rel);
            let mut slots: Vec<*mut pg_sys::TupleTableSlot> =
                (0..nslots).map(|_| pg_sys::MakeSingleTupleTableSlot(desc, ops)).collect();
            // Datums of one chunk live in a context reset after the chunk.
            let mut chunk_cx = PgMemoryContexts::new("pgcdc staging");
            for chunk in rows.chunks(CHUNK) {
                chunk_cx.switch_to(|_| {
                    // op, schema, table, topic and the headers (Debezium's context headers are
                    // the same on every event) repeat from row to row: one datum each until
                    // they change (heap_form_tuple copies the bytes anyway). A json datum is
                    // its text (Row::check validated it).
                    let mut repeated: [Option<(&'r str, pg_sys::Datum)>; 5] = [None; 5];
                    let mut datum_of = |i: usize, v: &'r str| match repeated[i] {
                        Some((prev, d)) if std::ptr::eq(prev, v) || prev == v => d,
                        _ => {
                            let d = text_datum(v);
                            repeated[i] = Some((v, d));
                            d
                        }
                    };
                    for (&slot, r) in slots.iter().zip(chunk) {
                        pg_sys::ExecClearTuple(slot);
                        let values = std::slice::from_raw_parts_mut((*slot).tts_values, natts);
                        let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, natts);
                        let opt = |s: Option<&str>| match s {
                            Some(s) => (text_datum(s), false),
                            None => (pg_sys::Datum::from(0usize), true),
                        };
                        let headers = match r.headers.as_deref() {
                            Some(h) => (datum_of(4, h), false),
                            None => (pg_sys::Datum::from(0usize), true),
                        };
                        let cols: [(pg_sys::Datum, bool); 14] = [
                            (pg_sys::Datum::from(feed_id), false),
                            (pg_sys::Datum::from(r.position.commit_lsn.0), false),
                            (pg_sys::Datum::from(r.position.ordinal as i32), false),
                            (pg_sys::Datum::from(r.lsn.0), false),
                            match r.xid {
                                Some(x) => (pg_sys::Datum::from(x), false),
                                None => (pg_sys::Datum::from(0usize), true),
                            },
                            (datum_of(0, r.op), false),
                            (datum_of(1, &r.schema), false),
                            (datum_of(2, &r.table), false),
                            match r.relid {
                                Some(oid) => (pg_sys::Datum::from(oid), false),
                                None => (pg_sys::Datum::from(0usize), true),
                            },
                            (datum_of(3, &r.topic), false),
                            opt(r.key.as_deref()),
                            opt(r.value.as_deref()),
                            headers,
                            (now, false),
                        ];
                        for (i, (d, n)) in cols.into_iter().enumerate() {
                            values[i] = d;
                            nulls[i] = n;
                        }
                        pg_sys::ExecStoreVirtualTuple(slot);
                    }
                    multi_insert(rel, slots.as_mut_ptr(), chunk.len() as i32, cid, 0, bistate);
                    let mut ivalues = [pg_sys::Datum::from(0usize); pg_sys::INDEX_MAX_KEYS as usize];
                    let mut inulls = [false; pg_sys::INDEX_MAX_KEYS as usize];
                    for &slot in &slots[..chunk.len()] {
                        for &(irel, info, unique) in &self.indexes {
                            pg_sys::FormIndexDatum(
                                info,
                                slot,
                                std::ptr::null_mut(),
                                ivalues.as_mut_ptr(),
                                inulls.as_mut_ptr(),
                            );
                            // As the executor does: only unique indexes check uniqueness.
                            let check = if unique {
                                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
                            } else {
                                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
                            };
                            // 14 added `indexUnchanged` (a hint for bottom-up deletion): false,
                            // these are new rows.
                            #[cfg(feature = "pg13")]
                            pg_sys::index_insert(
                                irel,
                                ivalues.as_mut_ptr(),
                                inulls.as_mut_ptr(),
                                &mut (*slot).tts_tid,
                                rel,
                                check,
                                info,
                            );
                            #[cfg(not(feature = "pg13"))]
                            pg_sys::index_insert(
                                irel,
                                ivalues.as_mut_ptr(),
                                inulls.as_mut_ptr(),
                                &mut (*slot).tts_tid,
                                rel,
                                check,
                                false,
                                info,
                            );
                        }
                    }
                });
                chunk_cx.reset();
            }
            for slot in slots.drain(..) {
                pg_sys::ExecDropSingleTupleTableSlot(slot);
            }
            pg_sys::FreeTupleDesc(desc);
            pg_sys::FreeBulkInsertState(bistate);
            for (irel, _, _) in self.indexes {
                pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
            }
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}

/// `pg_notify(channel, payload)` for each payload, in order, in the current transaction.
pub fn notify(channel: &str, payloads: Vec<String>) -> Result<(), pgrx::spi::Error> {
    if payloads.is_empty() {
        return Ok(());
    }
    Spi::connect_mut(|c| {
        let args = [channel.into(), payloads.into()];
        crate::plans::update(
            c,
            "SELECT pg_catalog.pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS u(p, n) ORDER BY n",
            None,
            &args,
        )?;
        Ok(())
    })
}

/// Highest staged position of a feed, if any: of the events in the queue at their own
/// positions, and of the committed streamed transactions (see [`crate::streamed`]).
pub fn last_staged(feed_id: i32) -> Result<Option<Position>, pgrx::spi::Error> {
    let in_queue = Spi::connect(|c| {
        let args = [feed_id.into(), PgLsn(crate::streamed::PROVISIONAL).into()];
        let mut out = None;
        for row in crate::plans::select(
            c,
            "SELECT commit_lsn, ordinal FROM pgcdc.event WHERE feed_id = $1 AND commit_lsn < $2 \
             ORDER BY commit_lsn DESC, ordinal DESC LIMIT 1",
            None,
            &args,
        )? {
            out = Some(Position::new(
                row.get::<PgLsn>(1)?.unwrap_or_default().0,
                row.get::<i32>(2)?.unwrap_or_default().max(0) as u32,
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })?;
    Ok(in_queue.max(crate::streamed::last_staged(feed_id)?))
}

/// Deletes the feed's events at positions in `(after, upto]` (under [`removing`]). Returns the
/// events and bytes (key + value) removed, for the queue counters.
pub fn remove(feed_id: i32, after: Position, upto: Position) -> Result<(i64, i64), pgrx::spi::Error> {
    let int4 = |o: u32| o.min(i32::MAX as u32) as i32;
    Spi::connect_mut(|c| {
        let args = [
            feed_id.into(),
            PgLsn(after.commit_lsn).into(),
            int4(after.ordinal).into(),
            PgLsn(upto.commit_lsn).into(),
            int4(upto.ordinal).into(),
        ];
        let row = removing(|| {
            // Two ranges, each with bounds the index scan stops at: btree stops a scan at a
            // failed row comparison only where its first column decides, so a single
            // `(commit_lsn, ordinal) <= ($4, $5)` would read every later event of a big
            // transaction on every acknowledgement (quadratic in its size).
            crate::plans::update(
                c,
                "WITH earlier AS (DELETE FROM pgcdc.event WHERE feed_id = $1 \
                 AND (commit_lsn, ordinal) > ($2, $3) AND commit_lsn < $4 \
                 RETURNING coalesce(octet_length(value), 0) + coalesce(octet_length(key), 0) AS bytes), \
                 last AS (DELETE FROM pgcdc.event WHERE feed_id = $1 AND commit_lsn = $4 \
                 AND ordinal > (CASE WHEN $2 = $4 THEN $3 ELSE -1 END) AND ordinal <= $5 \
                 RETURNING coalesce(octet_length(value), 0) + coalesce(octet_length(key), 0) AS bytes), \
                 gone AS (SELECT bytes FROM earlier UNION ALL SELECT bytes FROM last) \
                 SELECT count(*), coalesce(sum(bytes), 0)::int8 FROM gone",
                None,
                &args,
            )
        })?
        .first();
        Ok((row.get::<i64>(1)?.unwrap_or(0), row.get::<i64>(2)?.unwrap_or(0)))
    })
}

/// The feed's queue counters (`pgcdc.feed_runtime.queued_*`): events and bytes.
pub fn queued_counters(feed_id: i32) -> (i64, i64) {
    crate::error::spi_ok(Spi::connect(|c| {
        let args = [feed_id.into()];
        let mut out = (0, 0);
        for row in crate::plans::select(
            c,
            "SELECT queued_events, queued_bytes FROM pgcdc.feed_runtime WHERE feed_id = $1",
            None,
            &args,
        )? {
            out = (row.get::<i64>(1)?.unwrap_or(0), row.get::<i64>(2)?.unwrap_or(0));
        }
        Ok(out)
    }))
}

/// Staged events and their bytes (key + value) for a feed, counted in the queue while no
/// acknowledgement can commit: the feed row is locked `FOR NO KEY UPDATE` first (as `ack`
/// locks it), and the count runs under a snapshot taken after the lock (the lock assigns a
/// transaction id, so SPI takes a new snapshot per statement; the worker runs READ COMMITTED).
/// An ack committed before is in the count, a later one waits for this transaction: counters
/// written from this count in the same transaction lose no decrement.
///
/// `wait = false`: None instead of waiting when an ack holds the lock (or the feed is gone).
/// Take it before anything else in the transaction that `ack` also locks
/// (`pgcdc.feed_runtime`), or the two deadlock.
pub fn count_locked(feed_id: i32, wait: bool) -> Result<Option<(i64, i64)>, pgrx::spi::Error> {
    Spi::connect_mut(|c| {
        let args = [feed_id.into()];
        let lock = if wait {
            "SELECT 1 FROM pgcdc.feed WHERE id = $1 FOR NO KEY UPDATE"
        } else {
            "SELECT 1 FROM pgcdc.feed WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED"
        };
        if c.update(lock, Some(1), &args)?.is_empty() {
            return Ok(None);
        }
        let row = c
            .update(
                "SELECT count(*), coalesce(sum(coalesce(octet_length(value), 0) \
                 + coalesce(octet_length(key), 0)), 0)::int8 FROM pgcdc.event WHERE feed_id = $1",
                None,
                &args,
            )?
            .first();
        Ok(Some((row.get::<i64>(1)?.unwrap_or(0), row.get::<i64>(2)?.unwrap_or(0))))
    })
}

/// Set while pgcdc itself removes rows from the queue ([`removing`]).
static REMOVING: AtomicBool = AtomicBool::new(false);

/// Runs `f`, in which pgcdc removes rows from `pgcdc.event` (`ack`, `drop_feed`, `reset_feed`):
/// [`event_guard`] lets them through.
pub fn removing<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the flag, also when `f` raises an ERROR (it unwinds through here).
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REMOVING.store(self.0, Ordering::Relaxed);
        }
    }
    let _restore = Restore(REMOVING.swap(true, Ordering::Relaxed));
    f()
}

/// `BEFORE DELETE OR TRUNCATE` statement trigger on `pgcdc.event` (sql/pgcdc_finalize.sql,
/// `ENABLE ALWAYS`): the queue is a cache of the slots that only pgcdc may shrink. Rows removed
/// by hand would be lost for good: the worker has moved past them and never stages them again,
/// while acknowledged positions, counters and the slot's confirmed position all assume they
/// are still there. Only acknowledging (or `reset_feed`/`drop_feed`) removes events.
#[pg_trigger]
fn event_guard<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::heap_tuple::PgHeapTupleError> {
    if !REMOVING.load(Ordering::Relaxed) {
        let what = match trigger.op() {
            Ok(pgrx::PgTriggerOperation::Truncate) => "TRUNCATE",
            _ => "DELETE FROM",
        };
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("cannot {what} pgcdc.event: only pgcdc removes staged events"),
            "pgcdc",
        )
        .set_detail(
            "pgcdc.event caches what the feeds' replication slots hold: the feed workers have moved past \
             staged events and would never stage them again, so removing them by hand would lose them.",
        )
        .set_hint(
            "Acknowledge events to remove them: SELECT pgcdc.ack(feed, commit_lsn, ordinal). To discard a \
             feed's whole backlog: SELECT pgcdc.reset_feed(feed). To start over: pgcdc.drop_feed and \
             pgcdc.create_feed.",
        )
        .report(PgLogLevel::ERROR);
    }
    Ok(None)
}
