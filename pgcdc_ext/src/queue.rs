//! Staging: events into the UNLOGGED queue `pgcdc.event`, wake-ups and NOTIFY payloads.
//!
//! One batch = one `INSERT .. SELECT FROM unnest(arrays)` through a plan prepared once per
//! worker, inside the batch's transaction. Events are stored as JSON **text** (not jsonb:
//! about 3x cheaper to stage); `pgcdc.read` returns them as `json` without re-parsing.

use std::sync::Arc;

use pgcdc_core::debezium::{Event, Op};
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgMemoryContexts;

use crate::datum::PgLsn;
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
    pub topic: Arc<str>,
    pub key: Option<String>,
    pub value: Option<String>,
    /// JSON object text, or None when the event has no headers.
    pub headers: Option<String>,
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

impl Row {
    pub fn from_event(ev: Event) -> Row {
        let headers = (!ev.headers.is_empty()).then(|| {
            let mut s = String::from("{");
            for (i, (name, value)) in ev.headers.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&serde_json::to_string(name).unwrap_or_else(|_| "\"?\"".into()));
                s.push(':');
                s.push_str(value);
            }
            s.push('}');
            s
        });
        Row {
            position: Position::new(ev.commit_lsn, ev.ordinal),
            lsn: ev.lsn,
            xid: ev.xid.map(i64::from),
            op: op_name(ev.op),
            schema: ev.schema,
            table: ev.table,
            topic: ev.topic,
            key: ev.key,
            value: ev.value,
            headers,
        }
    }

    /// Bytes this row adds to the queue (for the byte cap).
    pub fn size(&self) -> i64 {
        (self.value.as_ref().map_or(0, String::len) + self.key.as_ref().map_or(0, String::len)) as i64
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
     (feed_id, commit_lsn, ordinal, lsn, xid, op, schema_name, table_name, topic, key, value, headers) \
     SELECT $1, unnest($2::pg_lsn[]), unnest($3::int4[]), unnest($4::pg_lsn[]), unnest($5::int8[]), \
            unnest($6::text[]), unnest($7::text[]), unnest($8::text[]), unnest($9::text[]), \
            unnest($10::text[]), unnest($11::text[]), unnest($12::text[])::jsonb";

/// The columns of `pgcdc.event`, in order, that the direct path fills.
const EVENT_COLUMNS: &[&str] = &[
    "feed_id",
    "commit_lsn",
    "ordinal",
    "lsn",
    "xid",
    "op",
    "schema_name",
    "table_name",
    "topic",
    "key",
    "value",
    "headers",
    "staged_at",
];

/// Rows per `multi_insert` call.
const CHUNK: usize = 1000;

/// Stages batches of events. The fast path writes heap tuples straight through the table
/// access method's `multi_insert` (as COPY does) and inserts their index entries; it is
/// used when `pgcdc.event` has exactly the columns above and only plain column indexes.
/// Otherwise (someone altered the table) it falls back to an SPI `INSERT .. SELECT
/// unnest(..)` through a plan prepared once per worker. Either way the rows are in the
/// current transaction and visible at its commit.
#[derive(Default)]
pub struct Stager {
    probed: bool,
    direct: Option<Direct>,
    insert: Option<OwnedPreparedStatement>,
}

/// What the fast path needs: the table and its indexes.
struct Direct {
    relid: pg_sys::Oid,
    indexes: Vec<pg_sys::Oid>,
}

impl Stager {
    /// Inserts `rows` for `feed_id`. Call inside a transaction.
    pub fn stage(&mut self, feed_id: i32, rows: &[Row]) -> Result<(), pgrx::spi::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        if !self.probed {
            self.direct = probe_direct()?;
            self.probed = true;
        }
        match &self.direct {
            // SAFETY: probe_direct checked the table's shape; we are in a transaction on the
            // main thread.
            Some(d) => {
                unsafe { d.insert(feed_id, rows) };
                Ok(())
            }
            None => self.stage_spi(feed_id, rows),
        }
    }

    /// Whether the fast path is in use (for tests).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
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

/// The fast path applies if `pgcdc.event` has exactly [`EVENT_COLUMNS`] (no dropped ones)
/// and its indexes are plain column indexes.
fn probe_direct() -> Result<Option<Direct>, pgrx::spi::Error> {
    Spi::connect(|c| {
        let row = c
            .select(
                "SELECT 'pgcdc.event'::regclass::oid, \
                 (SELECT array_agg(CASE WHEN attisdropped THEN '' ELSE attname::text END ORDER BY attnum) \
                  FROM pg_catalog.pg_attribute WHERE attrelid = 'pgcdc.event'::regclass AND attnum > 0), \
                 (SELECT array_agg(indexrelid) FROM pg_catalog.pg_index \
                  WHERE indrelid = 'pgcdc.event'::regclass AND indexprs IS NULL AND indpred IS NULL), \
                 (SELECT count(*) FROM pg_catalog.pg_index WHERE indrelid = 'pgcdc.event'::regclass), \
                 (SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = 'pgcdc.event'::regclass)",
                None,
                &[],
            )?
            .first();
        let relid = row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid);
        let columns = row.get::<Vec<String>>(2)?.unwrap_or_default();
        let indexes = row.get::<Vec<pg_sys::Oid>>(3)?.unwrap_or_default();
        let all_indexes = row.get::<i64>(4)?.unwrap_or(0);
        let triggers = row.get::<i64>(5)?.unwrap_or(0);
        let shape_ok = columns.iter().map(String::as_str).eq(EVENT_COLUMNS.iter().copied());
        Ok((shape_ok && indexes.len() as i64 == all_indexes && triggers == 0).then_some(Direct { relid, indexes }))
    })
}

/// A palloc'd `text` datum.
unsafe fn text_datum(s: &str) -> pg_sys::Datum {
    // SAFETY: copies `s.len()` bytes into a new varlena in CurrentMemoryContext.
    pg_sys::Datum::from(unsafe { pg_sys::cstring_to_text_with_len(s.as_ptr().cast(), s.len() as i32) })
}

/// A `jsonb` datum parsed from JSON text (headers only: rare).
unsafe fn jsonb_datum(s: &str) -> pg_sys::Datum {
    let c = std::ffi::CString::new(s).unwrap_or_default();
    // SAFETY: jsonb_in takes a NUL-terminated C string (it does not keep it); raises ERROR
    // on invalid JSON.
    unsafe {
        pg_sys::OidInputFunctionCall(pg_sys::Oid::from(pg_sys::F_JSONB_IN), c.as_ptr().cast_mut(), pg_sys::JSONBOID, -1)
    }
}

impl Direct {
    /// # Safety
    /// In a transaction, on the main thread, with `self` from [`probe_direct`].
    unsafe fn insert<'r>(&self, feed_id: i32, rows: &'r [Row]) {
        // SAFETY: (whole body) standard table-AM insertion as COPY FROM does it: open with
        // RowExclusiveLock, multi_insert virtual slots, then one index entry per tuple and
        // index; everything is released below or by transaction abort on ERROR.
        unsafe {
            let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
            let rel = pg_sys::table_open(self.relid, lock);
            let indexes: Vec<(pg_sys::Relation, *mut pg_sys::IndexInfo)> = self
                .indexes
                .iter()
                .map(|&oid| {
                    let irel = pg_sys::index_open(oid, lock);
                    (irel, pg_sys::BuildIndexInfo(irel))
                })
                .collect();
            let multi_insert = (*(*rel).rd_tableam).multi_insert.expect("table AM without multi_insert");
            let bistate = pg_sys::GetBulkInsertState();
            let cid = pg_sys::GetCurrentCommandId(true);
            let now = pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp());
            let nslots = rows.len().min(CHUNK);
            let mut slots: Vec<*mut pg_sys::TupleTableSlot> =
                (0..nslots).map(|_| pg_sys::table_slot_create(rel, std::ptr::null_mut())).collect();
            // Datums of one chunk live in a context reset after the chunk.
            let mut chunk_cx = PgMemoryContexts::new("pgcdc staging");
            for chunk in rows.chunks(CHUNK) {
                chunk_cx.switch_to(|_| {
                    // op, schema, table and topic repeat from row to row: one text datum each
                    // until they change (heap_form_tuple copies the bytes anyway).
                    let mut repeated: [Option<(&'r str, pg_sys::Datum)>; 4] = [None; 4];
                    let mut text_of = |i: usize, v: &'r str| -> pg_sys::Datum {
                        match repeated[i] {
                            Some((prev, d)) if std::ptr::eq(prev, v) || prev == v => d,
                            _ => {
                                let d = text_datum(v);
                                repeated[i] = Some((v, d));
                                d
                            }
                        }
                    };
                    for (&slot, r) in slots.iter().zip(chunk) {
                        pg_sys::ExecClearTuple(slot);
                        let values = std::slice::from_raw_parts_mut((*slot).tts_values, EVENT_COLUMNS.len());
                        let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, EVENT_COLUMNS.len());
                        let opt = |s: Option<&str>, f: unsafe fn(&str) -> pg_sys::Datum| match s {
                            Some(s) => (f(s), false),
                            None => (pg_sys::Datum::from(0usize), true),
                        };
                        let cols: [(pg_sys::Datum, bool); 13] = [
                            (pg_sys::Datum::from(feed_id), false),
                            (pg_sys::Datum::from(r.position.commit_lsn.0), false),
                            (pg_sys::Datum::from(r.position.ordinal as i32), false),
                            (pg_sys::Datum::from(r.lsn.0), false),
                            match r.xid {
                                Some(x) => (pg_sys::Datum::from(x), false),
                                None => (pg_sys::Datum::from(0usize), true),
                            },
                            (text_of(0, r.op), false),
                            (text_of(1, &r.schema), false),
                            (text_of(2, &r.table), false),
                            (text_of(3, &r.topic), false),
                            opt(r.key.as_deref(), text_datum),
                            opt(r.value.as_deref(), text_datum),
                            opt(r.headers.as_deref(), jsonb_datum),
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
                        for &(irel, info) in &indexes {
                            pg_sys::FormIndexDatum(
                                info,
                                slot,
                                std::ptr::null_mut(),
                                ivalues.as_mut_ptr(),
                                inulls.as_mut_ptr(),
                            );
                            pg_sys::index_insert(
                                irel,
                                ivalues.as_mut_ptr(),
                                inulls.as_mut_ptr(),
                                &mut (*slot).tts_tid,
                                rel,
                                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES,
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
            pg_sys::FreeBulkInsertState(bistate);
            for (irel, _) in indexes {
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
        c.update(
            "SELECT pg_catalog.pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS u(p, n) ORDER BY n",
            None,
            &args,
        )?;
        Ok(())
    })
}

/// Highest staged position of a feed, if any.
pub fn last_staged(feed_id: i32) -> Result<Option<Position>, pgrx::spi::Error> {
    Spi::connect(|c| {
        let args = [feed_id.into()];
        let mut out = None;
        for row in c.select(
            "SELECT commit_lsn, ordinal FROM pgcdc.event WHERE feed_id = $1 \
             ORDER BY commit_lsn DESC, ordinal DESC LIMIT 1",
            None,
            &args,
        )? {
            out = Some(Position::new(
                row.get::<PgLsn>(1)?.unwrap_or_default().0,
                row.get::<i32>(2)?.unwrap_or_default().max(0) as u32,
            ));
        }
        Ok(out)
    })
}

/// Staged events and their bytes (key + value) for a feed.
pub fn staged_totals(feed_id: i32) -> Result<(i64, i64), pgrx::spi::Error> {
    Spi::connect(|c| {
        let args = [feed_id.into()];
        let row = c
            .select(
                "SELECT count(*), coalesce(sum(coalesce(octet_length(value), 0) \
                 + coalesce(octet_length(key), 0)), 0)::int8 FROM pgcdc.event WHERE feed_id = $1",
                None,
                &args,
            )?
            .first();
        Ok((row.get::<i64>(1)?.unwrap_or(0), row.get::<i64>(2)?.unwrap_or(0)))
    })
}
