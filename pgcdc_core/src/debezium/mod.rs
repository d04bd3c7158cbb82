//! Debezium envelope encoder: pgoutput messages in, Debezium JSON records out.
//!
//! Feed it every message of a pgoutput stream in order with [`Encoder::handle`]. For each
//! change it appends [`Event`]s whose `key`, `value`, `topic` and headers are what Debezium's
//! PostgreSQL connector (3.6, see `tests/fixtures/debezium/FORMAT.md`) and Kafka's `JsonConverter`
//! would produce, byte for byte apart from run-dependent fields, except where Debezium loses
//! data (see `values` and the README). The caller supplies the run id of the context headers
//! ([`Encoder::set_run_id`]); the encoder itself draws no random numbers.
//!
//! Logical messages are unauthenticated (any role may emit one); `message.prefix.include.list`
//! and `message.prefix.exclude.list` ([`MessagePrefixFilter`]) choose which become records.
//!
//! Positions: every record of a transaction carries the transaction's commit LSN and an
//! ordinal that depends on the WAL only, never on the options, so a feed whose options
//! change still recognises what it already staged:
//!
//! ```text
//!   BEGIN record                      1
//!   i-th change of the transaction    3i+1  the record (or a key change's `d`)
//!   (i = 1, 2, ...; every change      3i+2  its tombstone
//!    counts, skipped or not; each     3i+3  a key change's `c`
//!    relation of a TRUNCATE is one)
//!   END record                        i32::MAX - 1
//! ```
//!
//! Ordinals therefore have gaps. A non-transactional logical message carries its own LSN and
//! ordinal 0: its LSN can equal the commit LSN of the transaction decoded right after it.
//!
//! Streamed (protocol >= 2) and prepared (two-phase) transactions are buffered until their
//! commit and dropped on abort/rollback, so records only ever describe committed changes.
//! A caller that can stage records before they are visible (the extension) asks for streamed
//! transactions as they arrive instead ([`Encoder::stage_streams`], see [`streamed`]).

mod options;
mod schema;
pub mod streamed;
mod values;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use streamed::StreamedCommit;

pub use options::{
    BinaryMode, DecimalMode, EncoderOptions, HstoreMode, IntervalMode, MessagePrefixFilter, OptionError,
    PrefixPatterns, SkippedOperations, TimePrecisionMode, UnchangedToastMode,
};

use crate::catalog::{Catalog, TableInfo, TypeRow};
use crate::json;
use crate::pgoutput::{
    ColumnData, Delete, Insert, LogicalMessage, Message, OldTuple, Relation, StreamCommit, Truncate, TupleData,
    TypeMessage, Update, PG_EPOCH_OFFSET_MICROS,
};
use crate::relation::{RelationCache, TableSchema};
use crate::snapshot::Marker;
use crate::value::{self, ValueError};
use crate::{Lsn, Oid, Xid};

/// The Debezium release whose event format pgcdc reproduces, written in `source.version`.
pub const DEBEZIUM_COMPAT_VERSION: &str = "3.6.3.Final";

/// Catalog lookups the encoder needs on Relation messages; the caller runs the queries
/// in `sql/type_info.sql` and `sql/table_info.sql`.
pub trait CatalogSource {
    /// Rows of `sql/type_info.sql` for these type OIDs.
    fn type_rows(&mut self, oids: &[Oid]) -> Result<Vec<TypeRow>, String>;
    /// The row of `sql/table_info.sql` for this relation.
    fn table_info(&mut self, relation_id: Oid) -> Result<TableInfo, String>;
}

/// A catalog source that knows nothing: built-in types only, keys from the replica identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCatalog;

impl CatalogSource for NoCatalog {
    fn type_rows(&mut self, _oids: &[Oid]) -> Result<Vec<TypeRow>, String> {
        Ok(Vec::new())
    }
    fn table_info(&mut self, relation_id: Oid) -> Result<TableInfo, String> {
        Err(format!("no catalog for relation {relation_id}"))
    }
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Update,
    Delete,
    Truncate,
    Message,
    /// The null-valued record after a delete (Kafka log compaction).
    Tombstone,
    /// Transaction metadata BEGIN/END (`provide.transaction.metadata`).
    TxBegin,
    TxEnd,
    /// A row read by a snapshot (see [`crate::snapshot`]).
    Read,
}

impl Op {
    /// Debezium's `op` code; None for tombstones and transaction records.
    pub fn code(self) -> Option<&'static str> {
        match self {
            Op::Create => Some("c"),
            Op::Update => Some("u"),
            Op::Delete => Some("d"),
            Op::Truncate => Some("t"),
            Op::Message => Some("m"),
            Op::Read => Some("r"),
            Op::Tombstone | Op::TxBegin | Op::TxEnd => None,
        }
    }
}

/// One Debezium record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub op: Op,
    /// Commit LSN of the transaction (a non-transactional message: its own LSN).
    pub commit_lsn: Lsn,
    /// Position within its transaction (see the module docs: fixed by the WAL, with gaps);
    /// 0 for a record outside any transaction (a non-transactional message).
    pub ordinal: u32,
    /// LSN of the change (for END records: the commit's end LSN).
    pub lsn: Lsn,
    pub xid: Option<Xid>,
    /// `""` for messages and transaction records.
    pub schema: Arc<str>,
    pub table: Arc<str>,
    /// The relation of a table record, as its Relation message named it (None for messages
    /// and transaction records).
    pub relation_id: Option<Oid>,
    pub topic: Arc<str>,
    /// JSON text of the key; None is a JSON null key.
    pub key: Option<String>,
    /// JSON text of the value; None is a tombstone.
    pub value: Option<String>,
    /// Kafka headers as Debezium adds them, in order, each value as JSON text:
    /// `__debezium.newkey`/`__debezium.oldkey` on key changes, then (on c/u/d/t records and
    /// tombstones, unless `extended.headers.enabled=false`) the context headers
    /// [`CONTEXT_HEADERS`]. With header schemas on, each value is `{"schema":…,"payload":…}`.
    /// Events with the same headers share them (most carry exactly the context headers).
    pub headers: Headers,
}

/// An event's Kafka headers: (name, JSON value) in order, shared between events.
pub type Headers = Arc<[(String, String)]>;

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("change for relation {0} arrived before its Relation message")]
    UnknownRelation(Oid),
    #[error("tuple of {table} has {found} columns, its Relation message declared {expected}")]
    ColumnCount { table: String, expected: usize, found: usize },
    #[error("column {table}.{column}: {source}")]
    Value {
        table: String,
        column: String,
        #[source]
        source: ValueError,
    },
    #[error("column {table}.{column}: text is not valid UTF-8")]
    InvalidUtf8 { table: String, column: String },
    #[error("catalog lookup for relation {relation}: {reason}")]
    Catalog { relation: Oid, reason: String },
    #[error("{0}")]
    OutOfSequence(&'static str),
    #[error("transaction {xid:?} has more than {max} changes; positions cannot number them")]
    TransactionTooLarge { xid: Option<Xid>, max: u32 },
}

/// Where and how a snapshot row is encoded (see [`Encoder::read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRead {
    /// `source.snapshot`.
    pub marker: Marker,
    /// `source.lsn`: the chunk's high watermark.
    pub lsn: Lsn,
    /// The event's position (commit LSN, ordinal): see [`crate::snapshot`].
    pub position: (Lsn, u32),
    /// `source.ts_*`: when the snapshot started, in microseconds since the Unix epoch.
    pub ts_micros: i64,
}

/// Names of the context headers, in Debezium's order: logical name (`topic.prefix`), task id
/// (`"0"`: one task), connector name (`"postgresql"`), run id (see [`Encoder::set_run_id`]).
pub const CONTEXT_HEADERS: [&str; 4] = [
    "__debezium.context.connectorLogicalName",
    "__debezium.context.taskId",
    "__debezium.context.connectorName",
    "__debezium.context.runId",
];

/// Ordinal of a transaction's BEGIN record.
pub const BEGIN_ORDINAL: u32 = 1;
/// Ordinal of a transaction's END record: after every change, within SQL's `int4`.
pub const END_ORDINAL: u32 = i32::MAX as u32 - 1;
/// Ordinals reserved per change: the record, its tombstone, a key change's create.
const ORDINALS_PER_CHANGE: u32 = 3;
/// Most changes a transaction can have: the last one's ordinals stay below END_ORDINAL.
const MAX_CHANGES: u32 = (END_ORDINAL - 1) / ORDINALS_PER_CHANGE - 1;

/// A change held until its streamed or prepared transaction commits, with its LSN and the
/// (sub)transaction xid it was sent under.
#[derive(Debug, Clone)]
struct Held {
    lsn: Lsn,
    xid: Option<Xid>,
    message: HeldMessage,
}

#[derive(Debug, Clone)]
enum HeldMessage {
    Relation(Relation),
    Type(TypeMessage),
    Insert { relation_id: Oid, new: OwnedTuple },
    Update { relation_id: Oid, old: Option<(bool, OwnedTuple)>, new: OwnedTuple },
    Delete { relation_id: Oid, full: bool, old: OwnedTuple },
    Truncate(Truncate),
    Message { transactional: bool, lsn: Lsn, prefix: String, content: Vec<u8> },
}

#[derive(Debug, Clone)]
enum OwnedColumn {
    Null,
    Unchanged,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

#[derive(Debug, Clone)]
struct OwnedTuple(Vec<OwnedColumn>);

impl OwnedTuple {
    fn from(t: &TupleData<'_>) -> Self {
        OwnedTuple(
            t.columns
                .iter()
                .map(|c| match c {
                    ColumnData::Null => OwnedColumn::Null,
                    ColumnData::UnchangedToast => OwnedColumn::Unchanged,
                    ColumnData::Text(b) => OwnedColumn::Text(b.to_vec()),
                    ColumnData::Binary(b) => OwnedColumn::Binary(b.to_vec()),
                })
                .collect(),
        )
    }

    fn borrow(&self) -> TupleData<'_> {
        TupleData {
            columns: self
                .0
                .iter()
                .map(|c| match c {
                    OwnedColumn::Null => ColumnData::Null,
                    OwnedColumn::Unchanged => ColumnData::UnchangedToast,
                    OwnedColumn::Text(b) => ColumnData::Text(b),
                    OwnedColumn::Binary(b) => ColumnData::Binary(b),
                })
                .collect(),
        }
    }
}

/// One c/u/d/t record to write.
struct Change<'t, 'a> {
    op: Op,
    ordinal: u32,
    lsn: Lsn,
    relation_id: Oid,
    before: Option<&'t TupleData<'a>>,
    after: Option<&'t TupleData<'a>>,
    /// The complete old row, where unchanged TOAST columns of `after` can be taken from.
    fallback: Option<&'t TupleData<'a>>,
    headers: Vec<(String, String)>,
}

impl<'t, 'a> Change<'t, 'a> {
    fn new(op: Op, ordinal: u32, lsn: Lsn, relation_id: Oid) -> Self {
        Change { op, ordinal, lsn, relation_id, before: None, after: None, fallback: None, headers: Vec::new() }
    }
}

/// The open transaction.
#[derive(Debug, Clone)]
struct TxState {
    xid: Option<Xid>,
    commit_lsn: Lsn,
    /// Commit time in microseconds since the Unix epoch.
    commit_micros: i64,
    /// Change messages seen so far (skipped and excluded ones too).
    changes: u32,
    /// Records counted by transaction metadata (tombstones excluded).
    total_order: u64,
    /// Per data collection: name and count, in first-seen order.
    collections: Vec<(String, u64)>,
    begin_emitted: bool,
    origin: Option<(String, Lsn)>,
    /// A streamed transaction staged before its commit: commit time and `sequence[0]` are
    /// placeholders (see [`streamed`]).
    deferred: bool,
}

/// Turns a pgoutput message stream into Debezium records.
pub struct Encoder {
    options: EncoderOptions,
    database: String,
    relations: RelationCache,
    catalog: Catalog,
    tx: Option<TxState>,
    /// End LSN of the last commit seen: `sequence[0]` of the next records.
    last_commit_end: Option<Lsn>,
    /// Streamed transactions by top-level xid, and the xid of the open stream block.
    streams: HashMap<Xid, Vec<Held>>,
    open_stream: Option<Xid>,
    /// Streamed transactions staged as they arrive instead (see [`Encoder::stage_streams`]),
    /// between their blocks; and, inside a block, the relations its Relation messages
    /// displaced (restored at the block's end).
    staged: Option<HashMap<Xid, streamed::Staged>>,
    displaced: Vec<(Oid, Option<TableSchema>)>,
    /// Prepared transactions by gid, and the one being decoded.
    prepared: HashMap<String, Vec<Held>>,
    preparing: Option<(Xid, Vec<Held>)>,
    clock: fn() -> i64,
    schemas: schema::SchemaCache,
    excluded_schemas: Vec<String>,
    run_id: Option<String>,
    /// The context headers every change record carries, rendered once.
    context_headers: Headers,
    /// No headers (transaction records and messages).
    no_headers: Headers,
}

fn system_clock_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

impl Encoder {
    pub fn new(options: EncoderOptions, database: &str) -> Self {
        Encoder {
            database: database.to_owned(),
            relations: RelationCache::new(),
            catalog: Catalog::new(),
            tx: None,
            last_commit_end: None,
            streams: HashMap::new(),
            open_stream: None,
            staged: None,
            displaced: Vec::new(),
            prepared: HashMap::new(),
            preparing: None,
            clock: system_clock_nanos,
            schemas: schema::SchemaCache::default(),
            excluded_schemas: Vec::new(),
            context_headers: context_headers(&options, None),
            no_headers: Arc::from([]),
            run_id: None,
            options,
        }
    }

    /// Sets the `__debezium.context.runId` header: an id of this run of the stream (the
    /// callers use a UUIDv7 per start, as Debezium does per engine run). Without one the
    /// header is left out.
    pub fn set_run_id(&mut self, run_id: &str) {
        self.run_id = Some(run_id.to_owned());
        self.context_headers = context_headers(&self.options, self.run_id.as_deref());
    }

    pub fn options(&self) -> &EncoderOptions {
        &self.options
    }

    /// Replaces the wall clock used for the envelope's `ts_ms/ts_us/ts_ns` (nanoseconds since
    /// the Unix epoch). For reproducible tests.
    pub fn set_clock(&mut self, clock: fn() -> i64) {
        self.clock = clock;
    }

    /// Never produce records for tables in `schema` (their changes still take their
    /// ordinals, so positions do not move). The extension excludes its own schema, which a
    /// `FOR ALL TABLES` publication would otherwise feed back into the stream.
    pub fn exclude_schema(&mut self, schema: &str) {
        if !self.excluded_schemas.iter().any(|s| s == schema) {
            self.excluded_schemas.push(schema.to_owned());
        }
    }

    /// The catalog facts registered so far (built-ins need none).
    pub fn catalog_mut(&mut self) -> &mut Catalog {
        &mut self.catalog
    }

    /// The relation as of its latest Relation message.
    pub fn relation(&self, id: Oid) -> Option<&TableSchema> {
        self.relations.get(id)
    }

    /// Sets `sequence[0]` for the next records: the end LSN of the last commit before the
    /// stream started (Debezium writes null until it has seen a commit).
    pub fn set_last_commit_end(&mut self, lsn: Option<Lsn>) {
        self.last_commit_end = lsn;
    }

    /// True between Begin and Commit of a transaction (and inside a staged stream block).
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Encode streamed transactions as their blocks arrive, instead of holding them until
    /// their commit: their records come with commit LSN 0 and placeholders for what the commit
    /// tells ([`streamed`]), bound with [`Encoder::streamed_commit`] by the caller, who also
    /// undoes rolled-back savepoints ([`Encoder::rewind_stream`]). Err with transaction
    /// metadata on: its BEGIN record and counts need the transaction's end.
    pub fn stage_streams(&mut self) -> Result<(), &'static str> {
        if self.options.provide_transaction_metadata {
            return Err("provide.transaction.metadata needs whole transactions: streamed ones are held instead");
        }
        self.staged.get_or_insert_with(HashMap::new);
        Ok(())
    }

    /// Whether streamed transactions are staged as they arrive.
    pub fn stages_streams(&self) -> bool {
        self.staged.is_some()
    }

    /// Changes of the open staged stream block's transaction so far (skipped ones too): the
    /// next change is number `stream_changes() + 1`, with ordinals from `3 * that + 1`.
    pub fn stream_changes(&self) -> Option<u32> {
        self.open_stream.and(self.tx.as_ref()).map(|t| t.changes)
    }

    /// A savepoint of staged transaction `xid` was rolled back: it had made changes from
    /// number `changes + 1` on, which the caller deleted. Numbering goes on from there.
    pub fn rewind_stream(&mut self, xid: Xid, changes: u32) {
        if let Some(st) = self.staged.as_mut().and_then(|s| s.get_mut(&xid)) {
            st.tx.changes = st.tx.changes.min(changes);
        }
    }

    /// What the records staged for the streamed transaction `c` commits learn from it. Call
    /// before handing `c` to [`Encoder::handle`] (which moves `sequence[0]` on).
    pub fn streamed_commit(&self, c: &StreamCommit) -> StreamedCommit {
        StreamedCommit::new(c, self.last_commit_end)
    }

    /// Handles one pgoutput message. `wal_start` is the LSN the walsender sent it at (the
    /// change's LSN; `lsn` column of `pg_logical_slot_peek_binary_changes`).
    pub fn handle(
        &mut self,
        wal_start: Lsn,
        msg: &Message<'_>,
        catalog: &mut dyn CatalogSource,
        out: &mut Vec<Event>,
    ) -> Result<(), EncodeError> {
        // Inside a stream block or a prepared transaction, changes wait for the commit.
        if let Some(held) = self.hold(msg)? {
            let target = match (self.open_stream, self.preparing.as_mut()) {
                (Some(xid), _) => self.streams.entry(xid).or_default(),
                (None, Some((_, buf))) => buf,
                (None, None) => return Err(EncodeError::OutOfSequence("held change outside a stream")),
            };
            target.push(Held { lsn: wal_start, xid: message_xid(msg), message: held });
            return Ok(());
        }
        match msg {
            Message::Begin(b) => self.begin(Some(b.xid), b.final_lsn, b.commit_time),
            Message::Commit(c) => self.commit(c.end_lsn, out),
            Message::Origin(o) => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.origin = Some((o.name.clone(), o.commit_lsn));
                }
            }
            Message::Relation(r) => {
                if self.open_stream.is_some() && !self.displaced.iter().any(|(id, _)| *id == r.id) {
                    // Inside a staged block: the global definition comes back at its end.
                    let global = self.relations.get(r.id).cloned();
                    self.displaced.push((r.id, global));
                }
                self.define_relation(r, catalog)?
            }
            Message::Type(t) => self.relations.note_type(t),
            Message::Insert(i) => self.insert(wal_start, i.relation_id, &i.new, out)?,
            Message::Update(u) => self.update(wal_start, u.relation_id, u.old.as_ref(), &u.new, out)?,
            Message::Delete(d) => self.delete(wal_start, d.relation_id, &d.old, out)?,
            Message::Truncate(t) => self.truncate(wal_start, t, out)?,
            Message::Message(m) => self.message(m.transactional, m.lsn.max(wal_start), m.prefix, m.content, out)?,
            Message::StreamStart(s) if self.staged.is_some() => self.open_staged(s.xid),
            Message::StreamStop if self.staged.is_some() => self.close_staged(),
            Message::StreamCommit(c) if self.staged.is_some() => {
                if let Some(st) = self.staged.as_mut().and_then(|m| m.remove(&c.xid)) {
                    for (id, table) in st.relations {
                        self.relations.swap(id, Some(table));
                    }
                }
                self.last_commit_end = Some(c.end_lsn);
            }
            Message::StreamAbort(a) if self.staged.is_some() => {
                if a.xid == a.subxid {
                    self.staged.as_mut().and_then(|m| m.remove(&a.xid));
                }
                // A savepoint's: the caller rewinds (`rewind_stream`); its schema messages
                // stay, pgoutput will not resend them for this stream.
            }
            Message::StreamStart(s) => self.open_stream = Some(s.xid),
            Message::StreamStop => self.open_stream = None,
            Message::StreamCommit(c) => {
                let held = self.streams.remove(&c.xid).unwrap_or_default();
                self.begin(Some(c.xid), c.commit_lsn, c.commit_time);
                self.replay(held, catalog, out)?;
                self.commit(c.end_lsn, out);
            }
            Message::StreamAbort(a) => {
                if a.xid == a.subxid {
                    self.streams.remove(&a.xid);
                } else if let Some(held) = self.streams.get_mut(&a.xid) {
                    // Only the subtransaction's changes (sent under its own xid) are undone;
                    // schema messages stay, pgoutput will not resend them for this stream.
                    held.retain(|h| {
                        h.xid != Some(a.subxid) || matches!(h.message, HeldMessage::Relation(_) | HeldMessage::Type(_))
                    });
                }
            }
            Message::BeginPrepare(p) => self.preparing = Some((p.xid, Vec::new())),
            Message::Prepare(p) | Message::StreamPrepare(p) => {
                let mut held = match self.preparing.take() {
                    Some((_, held)) => held,
                    None => Vec::new(),
                };
                if matches!(msg, Message::StreamPrepare(_)) {
                    held.extend(self.streams.remove(&p.xid).unwrap_or_default());
                }
                self.prepared.insert(p.gid.clone(), held);
            }
            Message::CommitPrepared(c) => {
                let held = self.prepared.remove(&c.gid).unwrap_or_default();
                self.begin(Some(c.xid), c.commit_lsn, c.commit_time);
                self.replay(held, catalog, out)?;
                self.commit(c.end_lsn, out);
            }
            Message::RollbackPrepared(r) => {
                self.prepared.remove(&r.gid);
            }
        }
        Ok(())
    }

    /// Copies a change that must wait for its transaction's commit, if one must.
    fn hold(&self, msg: &Message<'_>) -> Result<Option<HeldMessage>, EncodeError> {
        let holding_stream = self.open_stream.is_some() && self.staged.is_none();
        if !holding_stream && self.preparing.is_none() {
            return Ok(None);
        }
        Ok(Some(match msg {
            Message::Relation(r) => HeldMessage::Relation(r.clone()),
            Message::Type(t) => HeldMessage::Type(t.clone()),
            Message::Insert(i) => HeldMessage::Insert { relation_id: i.relation_id, new: OwnedTuple::from(&i.new) },
            Message::Update(u) => HeldMessage::Update {
                relation_id: u.relation_id,
                old: u.old.as_ref().map(|o| match o {
                    OldTuple::Key(t) => (false, OwnedTuple::from(t)),
                    OldTuple::Full(t) => (true, OwnedTuple::from(t)),
                }),
                new: OwnedTuple::from(&u.new),
            },
            Message::Delete(d) => match &d.old {
                OldTuple::Key(t) => {
                    HeldMessage::Delete { relation_id: d.relation_id, full: false, old: OwnedTuple::from(t) }
                }
                OldTuple::Full(t) => {
                    HeldMessage::Delete { relation_id: d.relation_id, full: true, old: OwnedTuple::from(t) }
                }
            },
            Message::Truncate(t) => HeldMessage::Truncate(t.clone()),
            // Non-transactional messages are sent outside any stream block; transactional
            // ones inside it belong to the transaction.
            Message::Message(m) if m.transactional => HeldMessage::Message {
                transactional: true,
                lsn: m.lsn,
                prefix: m.prefix.to_owned(),
                content: m.content.to_vec(),
            },
            _ => return Ok(None),
        }))
    }

    fn replay(
        &mut self,
        held: Vec<Held>,
        catalog: &mut dyn CatalogSource,
        out: &mut Vec<Event>,
    ) -> Result<(), EncodeError> {
        for Held { lsn, message, .. } in held {
            match message {
                HeldMessage::Relation(r) => self.define_relation(&r, catalog)?,
                HeldMessage::Type(t) => self.relations.note_type(&t),
                HeldMessage::Insert { relation_id, new } => {
                    let msg = Message::Insert(Insert { xid: None, relation_id, new: new.borrow() });
                    self.dispatch(lsn, &msg, out)?
                }
                HeldMessage::Update { relation_id, old, new } => {
                    let old =
                        old.as_ref().map(
                            |(full, t)| if *full { OldTuple::Full(t.borrow()) } else { OldTuple::Key(t.borrow()) },
                        );
                    let msg = Message::Update(Update { xid: None, relation_id, old, new: new.borrow() });
                    self.dispatch(lsn, &msg, out)?
                }
                HeldMessage::Delete { relation_id, full, old } => {
                    let old = if full { OldTuple::Full(old.borrow()) } else { OldTuple::Key(old.borrow()) };
                    self.dispatch(lsn, &Message::Delete(Delete { xid: None, relation_id, old }), out)?
                }
                HeldMessage::Truncate(t) => self.truncate(lsn, &t, out)?,
                HeldMessage::Message { transactional, lsn: mlsn, prefix, content } => {
                    let m = LogicalMessage { xid: None, transactional, lsn: mlsn, prefix: &prefix, content: &content };
                    self.message(m.transactional, m.lsn, m.prefix, m.content, out)?
                }
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, lsn: Lsn, msg: &Message<'_>, out: &mut Vec<Event>) -> Result<(), EncodeError> {
        match msg {
            Message::Insert(i) => self.insert(lsn, i.relation_id, &i.new, out),
            Message::Update(u) => self.update(lsn, u.relation_id, u.old.as_ref(), &u.new, out),
            Message::Delete(d) => self.delete(lsn, d.relation_id, &d.old, out),
            _ => Ok(()),
        }
    }

    /// Reads the facts of `r`'s user-defined types again. Type and table facts are re-read on
    /// every Relation message, which follows every schema change: a type keeps its OID through
    /// `ALTER TYPE .. ADD VALUE/ATTRIBUTE`, so facts kept from an earlier version of the
    /// relation would be stale.
    fn register_user_types(&mut self, r: &Relation, catalog: &mut dyn CatalogSource) -> Result<(), EncodeError> {
        let user_types = user_types(r);
        if !user_types.is_empty() {
            let rows =
                catalog.type_rows(&user_types).map_err(|reason| EncodeError::Catalog { relation: r.id, reason })?;
            self.catalog.register_type_rows(rows);
        }
        Ok(())
    }

    fn define_relation(&mut self, r: &Relation, catalog: &mut dyn CatalogSource) -> Result<(), EncodeError> {
        self.register_user_types(r, catalog)?;
        let info = catalog.table_info(r.id).ok();
        if let Some(info) = &info {
            self.catalog.register_table(r.id, info.clone());
        }
        let info = info.or_else(|| self.catalog.table(r.id).cloned());
        self.relations.define(r, &self.catalog, info.as_ref(), &self.options.topic_prefix);
        Ok(())
    }

    fn begin(&mut self, xid: Option<Xid>, commit_lsn: Lsn, commit_time: i64) {
        self.tx = Some(TxState {
            xid,
            commit_lsn,
            commit_micros: commit_time.saturating_add(PG_EPOCH_OFFSET_MICROS),
            changes: 0,
            total_order: 0,
            collections: Vec::new(),
            begin_emitted: false,
            origin: None,
            deferred: false,
        });
    }

    /// A staged stream block of `xid` starts: its transaction state and relations are in
    /// force until the block ends.
    fn open_staged(&mut self, xid: Xid) {
        let staged = self.staged.as_mut().and_then(|m| m.remove(&xid));
        let (mut tx, relations) = match staged {
            Some(st) => (st.tx, st.relations),
            None => {
                self.begin(Some(xid), Lsn::ZERO, 0);
                (self.tx.take().expect("just begun"), Vec::new())
            }
        };
        tx.deferred = true;
        for (id, table) in relations {
            let global = self.relations.swap(id, Some(table));
            self.displaced.push((id, global));
        }
        self.tx = Some(tx);
        self.open_stream = Some(xid);
    }

    /// The staged block ends: its relations go back to the transaction, the global ones
    /// return.
    fn close_staged(&mut self) {
        let (Some(xid), Some(tx)) = (self.open_stream.take(), self.tx.take()) else { return };
        let mut relations = Vec::with_capacity(self.displaced.len());
        for (id, global) in std::mem::take(&mut self.displaced) {
            if let Some(table) = self.relations.swap(id, global) {
                relations.push((id, table));
            }
        }
        if let Some(m) = self.staged.as_mut() {
            m.insert(xid, streamed::Staged { tx, relations });
        }
    }

    fn commit(&mut self, end_lsn: Lsn, out: &mut Vec<Event>) {
        if let Some(mut tx) = self.tx.take() {
            if self.options.provide_transaction_metadata && tx.begin_emitted {
                let event = self.tx_end(&mut tx, end_lsn);
                out.push(event);
            }
        }
        self.last_commit_end = Some(end_lsn);
    }

    /// Counts a change message and returns the first ordinal reserved for its records
    /// (0 outside a transaction).
    fn begin_change(&mut self) -> Result<u32, EncodeError> {
        let Some(tx) = self.tx.as_mut() else { return Ok(0) };
        if tx.changes >= MAX_CHANGES {
            return Err(EncodeError::TransactionTooLarge { xid: tx.xid, max: MAX_CHANGES });
        }
        tx.changes += 1;
        Ok(tx.changes * ORDINALS_PER_CHANGE + 1)
    }

    /// Starts a change of a table: its first ordinal, or None when the table is excluded
    /// (which still uses up the ordinals). Emits the transaction's BEGIN record first if due.
    fn open_change(&mut self, lsn: Lsn, relation_id: Oid, out: &mut Vec<Event>) -> Result<Option<u32>, EncodeError> {
        let ordinal = self.begin_change()?;
        if self.is_excluded(relation_id)? {
            return Ok(None);
        }
        self.ensure_tx_begin(lsn, out);
        Ok(Some(ordinal))
    }

    /// True when the relation's schema was excluded with [`Encoder::exclude_schema`].
    fn is_excluded(&self, relation_id: Oid) -> Result<bool, EncodeError> {
        if self.excluded_schemas.is_empty() {
            return Ok(false);
        }
        let schema = &self.table(relation_id)?.schema;
        Ok(self.excluded_schemas.iter().any(|s| **s == **schema))
    }

    /// Emits the transaction's BEGIN record before its first record, if asked for.
    fn ensure_tx_begin(&mut self, lsn: Lsn, out: &mut Vec<Event>) {
        if !self.options.provide_transaction_metadata {
            return;
        }
        let Some(tx) = self.tx.as_mut() else { return };
        if tx.begin_emitted {
            return;
        }
        tx.begin_emitted = true;
        let (xid, ordinal, commit_lsn, commit_micros) = (tx.xid, BEGIN_ORDINAL, tx.commit_lsn, tx.commit_micros);
        let id = format!("{}:{}", xid.unwrap_or(0), lsn.0);
        let mut value = String::with_capacity(160);
        value.push_str("{\"status\":\"BEGIN\",\"id\":");
        json::write_str(&mut value, &id);
        value.push_str(",\"event_count\":null,\"data_collections\":null,\"ts_ms\":");
        json::write_i64(&mut value, commit_micros.div_euclid(1000));
        value.push('}');
        out.push(self.tx_record(Op::TxBegin, commit_lsn, ordinal, lsn, xid, &id, value));
    }

    fn tx_end(&self, tx: &mut TxState, end_lsn: Lsn) -> Event {
        let id = format!("{}:{}", tx.xid.unwrap_or(0), end_lsn.0);
        let mut value = String::with_capacity(200);
        value.push_str("{\"status\":\"END\",\"id\":");
        json::write_str(&mut value, &id);
        value.push_str(",\"event_count\":");
        json::write_u64(&mut value, tx.total_order);
        value.push_str(",\"data_collections\":[");
        for (i, (name, count)) in tx.collections.iter().enumerate() {
            if i > 0 {
                value.push(',');
            }
            value.push_str("{\"data_collection\":");
            json::write_str(&mut value, name);
            value.push_str(",\"event_count\":");
            json::write_u64(&mut value, *count);
            value.push('}');
        }
        value.push_str("],\"ts_ms\":");
        json::write_i64(&mut value, tx.commit_micros.div_euclid(1000));
        value.push('}');
        self.tx_record(Op::TxEnd, tx.commit_lsn, END_ORDINAL, end_lsn, tx.xid, &id, value)
    }

    #[allow(clippy::too_many_arguments)]
    fn tx_record(
        &self,
        op: Op,
        commit_lsn: Lsn,
        ordinal: u32,
        lsn: Lsn,
        xid: Option<Xid>,
        id: &str,
        value: String,
    ) -> Event {
        let mut key = String::with_capacity(id.len() + 10);
        key.push_str("{\"id\":");
        json::write_str(&mut key, id);
        key.push('}');
        let (key, value) = if self.options.value_schemas || self.options.key_schemas {
            (
                if self.options.key_schemas { schema::wrap(schema::TX_KEY_SCHEMA, &key) } else { key },
                if self.options.value_schemas { schema::wrap(schema::TX_VALUE_SCHEMA, &value) } else { value },
            )
        } else {
            (key, value)
        };
        Event {
            op,
            commit_lsn,
            ordinal,
            lsn,
            xid,
            schema: "".into(),
            table: "".into(),
            relation_id: None,
            topic: format!("{}.transaction", self.options.topic_prefix).into(),
            key: Some(key),
            value: Some(value),
            headers: Arc::clone(&self.no_headers),
        }
    }

    /// Counts a record for transaction metadata; returns the `transaction` block's JSON.
    fn count_in_tx(&mut self, collection: &str, lsn: Lsn) -> Option<String> {
        if !self.options.provide_transaction_metadata {
            return None;
        }
        let tx = self.tx.as_mut()?;
        tx.total_order += 1;
        let collection_order = match tx.collections.iter_mut().find(|(n, _)| n == collection) {
            Some((_, count)) => {
                *count += 1;
                *count
            }
            None => {
                tx.collections.push((collection.to_owned(), 1));
                1
            }
        };
        let mut block = String::with_capacity(80);
        block.push_str("{\"id\":");
        json::write_str(&mut block, &format!("{}:{}", tx.xid.unwrap_or(0), lsn.0));
        block.push_str(",\"total_order\":");
        json::write_u64(&mut block, tx.total_order);
        block.push_str(",\"data_collection_order\":");
        json::write_u64(&mut block, collection_order);
        block.push('}');
        Some(block)
    }

    fn table(&self, relation_id: Oid) -> Result<&TableSchema, EncodeError> {
        self.relations.get(relation_id).ok_or(EncodeError::UnknownRelation(relation_id))
    }

    fn insert(
        &mut self,
        lsn: Lsn,
        relation_id: Oid,
        new: &TupleData<'_>,
        out: &mut Vec<Event>,
    ) -> Result<(), EncodeError> {
        let Some(ordinal) = self.open_change(lsn, relation_id, out)? else { return Ok(()) };
        if self.options.skipped.create {
            return Ok(());
        }
        self.change(Change { after: Some(new), ..Change::new(Op::Create, ordinal, lsn, relation_id) }, out)
    }

    fn update(
        &mut self,
        lsn: Lsn,
        relation_id: Oid,
        old: Option<&OldTuple<'_>>,
        new: &TupleData<'_>,
        out: &mut Vec<Event>,
    ) -> Result<(), EncodeError> {
        let Some(ordinal) = self.open_change(lsn, relation_id, out)? else { return Ok(()) };
        let table = self.table(relation_id)?;
        let old_tuple = old.map(OldTuple::tuple);
        let full_old = match old {
            Some(OldTuple::Full(t)) => Some(t),
            _ => None,
        };
        // A changed primary key is a delete of the old key and a create of the new one.
        if let Some(old_tuple) = old_tuple {
            if !table.key_columns.is_empty() && key_changed(table, old_tuple, new) {
                let new_key = self.render_key(relation_id, new)?;
                let old_key = self.render_key(relation_id, old_tuple)?;
                let headers_delete =
                    vec![("__debezium.newkey".to_owned(), new_key.clone().unwrap_or_else(|| "null".into()))];
                let headers_create =
                    vec![("__debezium.oldkey".to_owned(), old_key.clone().unwrap_or_else(|| "null".into()))];
                if !self.options.skipped.delete {
                    let delete = Change {
                        before: Some(old_tuple),
                        headers: headers_delete.clone(),
                        ..Change::new(Op::Delete, ordinal, lsn, relation_id)
                    };
                    self.change(delete, out)?;
                    if self.options.tombstones_on_delete {
                        self.tombstone(ordinal + 1, lsn, relation_id, old_key, headers_delete, out)?;
                    }
                }
                if !self.options.skipped.create {
                    let create = Change {
                        after: Some(new),
                        fallback: full_old,
                        headers: headers_create,
                        ..Change::new(Op::Create, ordinal + 2, lsn, relation_id)
                    };
                    self.change(create, out)?;
                }
                return Ok(());
            }
        }
        if self.options.skipped.update {
            return Ok(());
        }
        let update = Change {
            before: old_tuple,
            after: Some(new),
            fallback: full_old,
            ..Change::new(Op::Update, ordinal, lsn, relation_id)
        };
        self.change(update, out)
    }

    fn delete(
        &mut self,
        lsn: Lsn,
        relation_id: Oid,
        old: &OldTuple<'_>,
        out: &mut Vec<Event>,
    ) -> Result<(), EncodeError> {
        let Some(ordinal) = self.open_change(lsn, relation_id, out)? else { return Ok(()) };
        if self.options.skipped.delete {
            return Ok(());
        }
        let old = old.tuple();
        self.change(Change { before: Some(old), ..Change::new(Op::Delete, ordinal, lsn, relation_id) }, out)?;
        if self.options.tombstones_on_delete {
            let key = self.render_key(relation_id, old)?;
            self.tombstone(ordinal + 1, lsn, relation_id, key, Vec::new(), out)?;
        }
        Ok(())
    }

    fn tombstone(
        &mut self,
        ordinal: u32,
        lsn: Lsn,
        relation_id: Oid,
        key: Option<String>,
        headers: Vec<(String, String)>,
        out: &mut Vec<Event>,
    ) -> Result<(), EncodeError> {
        let table = self.table(relation_id)?;
        let key = key.map(|k| self.schemas.key(&self.options, table, k));
        let headers = self.record_headers(table, headers);
        out.push(Event {
            op: Op::Tombstone,
            commit_lsn: self.tx.as_ref().map_or(lsn, |t| t.commit_lsn),
            ordinal,
            lsn,
            xid: self.tx.as_ref().and_then(|t| t.xid),
            schema: table.schema.clone(),
            table: table.table.clone(),
            relation_id: Some(table.id),
            topic: table.topic.clone(),
            key,
            value: None,
            headers,
        });
        Ok(())
    }

    /// One change per truncated relation.
    fn truncate(&mut self, lsn: Lsn, t: &Truncate, out: &mut Vec<Event>) -> Result<(), EncodeError> {
        for &relation_id in &t.relation_ids {
            let Some(ordinal) = self.open_change(lsn, relation_id, out)? else { continue };
            if !self.options.skipped.truncate {
                self.change(Change::new(Op::Truncate, ordinal, lsn, relation_id), out)?;
            }
        }
        Ok(())
    }

    /// A change record's headers: its key headers (schema-wrapped with header schemas on),
    /// then the context headers.
    fn record_headers(&self, table: &TableSchema, key_headers: Vec<(String, String)>) -> Headers {
        if key_headers.is_empty() {
            return Arc::clone(&self.context_headers);
        }
        let mut headers = Vec::with_capacity(key_headers.len() + self.context_headers.len());
        for (name, key) in key_headers {
            let value =
                if self.options.header_schemas() { self.schemas.wrap_key(&self.options, table, &key) } else { key };
            headers.push((name, value));
        }
        headers.extend(self.context_headers.iter().cloned());
        headers.into()
    }

    fn render_key(&self, relation_id: Oid, tuple: &TupleData<'_>) -> Result<Option<String>, EncodeError> {
        self.render_key_of(self.table(relation_id)?, tuple)
    }

    fn render_key_of(&self, table: &TableSchema, tuple: &TupleData<'_>) -> Result<Option<String>, EncodeError> {
        if table.key_columns.is_empty() {
            return Ok(None);
        }
        let mut key = String::with_capacity(16 * table.key_columns.len());
        key.push('{');
        for (n, &i) in table.key_columns.iter().enumerate() {
            if n > 0 {
                key.push(',');
            }
            let column = &table.columns[i];
            key.push_str(&column.json_key);
            match tuple.columns.get(i) {
                Some(data) => self.write_column(&mut key, table, i, data)?,
                None => key.push_str("null"),
            }
        }
        key.push('}');
        Ok(Some(key))
    }

    fn write_column(
        &self,
        out: &mut String,
        table: &TableSchema,
        i: usize,
        data: &ColumnData<'_>,
    ) -> Result<(), EncodeError> {
        let column = &table.columns[i];
        match data {
            // JsonConverter's replace.null.with.default: the schema's default stands in.
            ColumnData::Null => match column.schema_default.as_deref() {
                Some(default) if self.options.replace_null_with_default => out.push_str(default),
                _ => out.push_str("null"),
            },
            ColumnData::UnchangedToast => self.write_placeholder(out, &column.kind),
            ColumnData::Binary(b) => values::write_bytes(out, b, self.options.binary),
            ColumnData::Text(bytes) if self.as_unknown_bytes(&column.kind) => {
                values::write_bytes(out, bytes, self.options.binary)
            }
            ColumnData::Text(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|_| EncodeError::InvalidUtf8 {
                    table: table.data_collection.clone(),
                    column: column.name.clone(),
                })?;
                let v = value::parse_text(&column.kind, text).map_err(|source| EncodeError::Value {
                    table: table.data_collection.clone(),
                    column: column.name.clone(),
                    source,
                })?;
                values::write_value(out, &column.kind, &v, &self.options);
            }
        }
        Ok(())
    }

    /// Whether a column of this type goes out as the bytes of its text
    /// (`include.unknown.datatypes`).
    fn as_unknown_bytes(&self, kind: &crate::catalog::TypeKind) -> bool {
        self.options.include_unknown_datatypes && schema::has_no_converter(kind)
    }

    /// Debezium's `unavailable.value.placeholder`, shaped like the column's type.
    fn write_placeholder(&self, out: &mut String, kind: &crate::catalog::TypeKind) {
        use crate::catalog::TypeKind;
        let p = &self.options.unavailable_value_placeholder;
        match kind {
            TypeKind::Bytea => values::write_bytes(out, p.as_bytes(), self.options.binary),
            _ if self.as_unknown_bytes(kind) => values::write_bytes(out, p.as_bytes(), self.options.binary),
            TypeKind::Array(_) => {
                out.push('[');
                json::write_str(out, p);
                out.push(']');
            }
            _ => json::write_str(out, p),
        }
    }

    /// Writes one row object. Unchanged TOAST columns come from `fallback` (the full old
    /// row) when there is one, else per `unchanged.toast.handling.mode`.
    fn write_row(
        &self,
        out: &mut String,
        table: &TableSchema,
        tuple: &TupleData<'_>,
        fallback: Option<&TupleData<'_>>,
        unchanged: &mut Vec<usize>,
    ) -> Result<(), EncodeError> {
        if tuple.columns.len() != table.columns.len() {
            return Err(EncodeError::ColumnCount {
                table: table.data_collection.clone(),
                expected: table.columns.len(),
                found: tuple.columns.len(),
            });
        }
        out.push('{');
        let mut first = true;
        for (i, data) in tuple.columns.iter().enumerate() {
            let data = match data {
                ColumnData::UnchangedToast => match fallback.and_then(|f| f.columns.get(i)) {
                    Some(d @ (ColumnData::Text(_) | ColumnData::Binary(_) | ColumnData::Null)) => d,
                    _ if self.options.unchanged_toast == UnchangedToastMode::Explicit => {
                        unchanged.push(i);
                        continue;
                    }
                    _ => data,
                },
                _ => data,
            };
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&table.columns[i].json_key);
            self.write_column(out, table, i, data)?;
        }
        out.push('}');
        Ok(())
    }

    /// Writes the `source` block. A snapshot read (`snapshot`: its marker) has no
    /// transaction and, as in Debezium's snapshots, no last commit in `sequence`.
    #[allow(clippy::too_many_arguments)]
    fn write_source(
        &self,
        out: &mut String,
        schema: &str,
        table: &str,
        lsn: Lsn,
        commit_micros: i64,
        in_tx: bool,
        snapshot: Option<&str>,
    ) {
        let tx = self.tx.as_ref().filter(|_| in_tx);
        // A staged streamed transaction's commit is not known yet (see `streamed`).
        let deferred = tx.is_some_and(|t| t.deferred);
        let last_commit_end = if snapshot.is_some() { None } else { self.last_commit_end };
        let commit_time = |out: &mut String, placeholder: char, value: i64| {
            if deferred {
                out.push(placeholder);
            } else {
                json::write_i64(out, value);
            }
        };
        out.push_str("{\"version\":\"");
        out.push_str(DEBEZIUM_COMPAT_VERSION);
        out.push_str("\",\"connector\":\"postgresql\",\"name\":");
        json::write_str(out, &self.options.topic_prefix);
        out.push_str(",\"ts_ms\":");
        commit_time(out, streamed::TS_MS, commit_micros.div_euclid(1000));
        out.push_str(",\"snapshot\":\"");
        out.push_str(snapshot.unwrap_or("false"));
        out.push_str("\",\"db\":");
        json::write_str(out, &self.database);
        out.push_str(",\"sequence\":\"[");
        match last_commit_end {
            _ if deferred => out.push(streamed::LAST_COMMIT),
            Some(l) => {
                out.push_str("\\\"");
                json::write_u64(out, l.0);
                out.push_str("\\\"");
            }
            None => out.push_str("null"),
        }
        out.push_str(",\\\"");
        json::write_u64(out, lsn.0);
        out.push_str("\\\"]\",\"ts_us\":");
        commit_time(out, streamed::TS_US, commit_micros);
        out.push_str(",\"ts_ns\":");
        commit_time(out, streamed::TS_NS, commit_micros.saturating_mul(1000));
        out.push_str(",\"schema\":");
        json::write_str(out, schema);
        out.push_str(",\"table\":");
        json::write_str(out, table);
        out.push_str(",\"txId\":");
        match tx.and_then(|t| t.xid) {
            Some(x) => json::write_u64(out, x as u64),
            None => out.push_str("null"),
        }
        out.push_str(",\"lsn\":");
        json::write_u64(out, lsn.0);
        out.push_str(",\"xmin\":null,\"origin\":");
        match tx.and_then(|t| t.origin.as_ref()) {
            Some((name, origin_lsn)) => {
                json::write_str(out, name);
                out.push_str(",\"origin_lsn\":");
                json::write_u64(out, origin_lsn.0);
                out.push('}');
            }
            None => out.push_str("null,\"origin_lsn\":null}"),
        }
    }

    fn write_envelope_times(&self, out: &mut String) {
        let nanos = (self.clock)();
        out.push_str("\"ts_ms\":");
        json::write_i64(out, nanos.div_euclid(1_000_000));
        out.push_str(",\"ts_us\":");
        json::write_i64(out, nanos.div_euclid(1000));
        out.push_str(",\"ts_ns\":");
        json::write_i64(out, nanos);
    }

    /// Emits one c/u/d/t record.
    fn change(&mut self, change: Change<'_, '_>, out: &mut Vec<Event>) -> Result<(), EncodeError> {
        let Change { op, ordinal, lsn, relation_id, before, after, fallback, headers } = change;
        let tx_block = if self.options.provide_transaction_metadata {
            let collection = self.table(relation_id)?.data_collection.clone();
            self.count_in_tx(&collection, lsn)
        } else {
            None
        };
        let table = self.table(relation_id)?;
        let commit_micros = self.tx.as_ref().map_or(0, |t| t.commit_micros);

        let mut value = String::with_capacity(256 + 24 * table.columns.len());
        let mut unchanged = Vec::new();
        value.push_str("{\"before\":");
        // pgoutput sends an update's old row only under REPLICA IDENTITY FULL or when the
        // identity columns changed; Debezium shows exactly what was sent (else null).
        match before {
            Some(t) => self.write_row(&mut value, table, t, None, &mut Vec::new())?,
            None => value.push_str("null"),
        }
        value.push_str(",\"after\":");
        match after {
            Some(t) => self.write_row(&mut value, table, t, fallback, &mut unchanged)?,
            None => value.push_str("null"),
        }
        value.push_str(",\"source\":");
        self.write_source(&mut value, &table.schema, &table.table, lsn, commit_micros, true, None);
        value.push_str(",\"transaction\":");
        value.push_str(tx_block.as_deref().unwrap_or("null"));
        value.push_str(",\"op\":\"");
        value.push_str(op.code().unwrap_or("c"));
        value.push_str("\",");
        self.write_envelope_times(&mut value);
        if !unchanged.is_empty() {
            value.push_str(",\"unchanged_columns\":[");
            for (n, &i) in unchanged.iter().enumerate() {
                if n > 0 {
                    value.push(',');
                }
                json::write_str(&mut value, &table.columns[i].name);
            }
            value.push(']');
        }
        value.push('}');

        let key = match op {
            Op::Truncate => None,
            Op::Delete => before.map(|t| self.render_key(relation_id, t)).transpose()?.flatten(),
            _ => after.map(|t| self.render_key(relation_id, t)).transpose()?.flatten(),
        };
        let table = self.table(relation_id)?;
        let key = key.map(|k| self.schemas.key(&self.options, table, k));
        let value = self.schemas.value(&self.options, table, value, !unchanged.is_empty());
        let headers = self.record_headers(table, headers);
        out.push(Event {
            op,
            commit_lsn: self.tx.as_ref().map_or(lsn, |t| t.commit_lsn),
            ordinal,
            lsn,
            xid: self.tx.as_ref().and_then(|t| t.xid),
            schema: table.schema.clone(),
            table: table.table.clone(),
            relation_id: Some(table.id),
            topic: table.topic.clone(),
            key,
            value: Some(value),
            headers,
        });
        Ok(())
    }

    /// Defines the relation a snapshot chunk reads (built from the catalog as a Relation
    /// message would describe the table now); [`Encoder::read`] encodes its rows.
    pub fn define_snapshot_relation(
        &mut self,
        r: &Relation,
        catalog: &mut dyn CatalogSource,
    ) -> Result<(), EncodeError> {
        self.register_user_types(r, catalog)?;
        let info = catalog.table_info(r.id).map_err(|reason| EncodeError::Catalog { relation: r.id, reason })?;
        self.relations.define_snapshot(r, &self.catalog, Some(&info), &self.options.topic_prefix);
        Ok(())
    }

    /// Encodes one row a snapshot read (`op: "r"`, `before` null), at `read`'s position.
    pub fn read(
        &mut self,
        relation_id: Oid,
        row: &TupleData<'_>,
        read: &SnapshotRead,
        out: &mut Vec<Event>,
    ) -> Result<(), EncodeError> {
        let table = self.relations.snapshot_table(relation_id).ok_or(EncodeError::UnknownRelation(relation_id))?;
        let mut value = String::with_capacity(256 + 24 * table.columns.len());
        value.push_str("{\"before\":null,\"after\":");
        self.write_row(&mut value, table, row, None, &mut Vec::new())?;
        value.push_str(",\"source\":");
        let marker = Some(read.marker.as_str());
        self.write_source(&mut value, &table.schema, &table.table, read.lsn, read.ts_micros, false, marker);
        value.push_str(",\"transaction\":null,\"op\":\"r\",");
        self.write_envelope_times(&mut value);
        value.push('}');
        let key = self.render_key_of(table, row)?.map(|k| self.schemas.key(&self.options, table, k));
        let value = self.schemas.value(&self.options, table, value, false);
        let headers = self.record_headers(table, Vec::new());
        out.push(Event {
            op: Op::Read,
            commit_lsn: read.position.0,
            ordinal: read.position.1,
            lsn: read.lsn,
            xid: None,
            schema: table.schema.clone(),
            table: table.table.clone(),
            relation_id: Some(table.id),
            topic: table.topic.clone(),
            key,
            value: Some(value),
            headers,
        });
        Ok(())
    }

    fn message(
        &mut self,
        transactional: bool,
        lsn: Lsn,
        prefix: &str,
        content: &[u8],
        out: &mut Vec<Event>,
    ) -> Result<(), EncodeError> {
        let in_tx = transactional && self.tx.is_some();
        let ordinal = if in_tx { self.begin_change()? } else { 0 };
        // A filtered message still took its ordinal: positions depend on the WAL only.
        // pgcdc's snapshot watermarks are never records.
        if prefix == crate::snapshot::WATERMARK_PREFIX || !self.options.message_prefixes.admits(prefix) {
            return Ok(());
        }
        if in_tx {
            self.ensure_tx_begin(lsn, out);
        }
        let tx_block = if in_tx { self.count_in_tx("message", lsn) } else { None };
        let (commit_micros, xid, commit_lsn) = match (&self.tx, in_tx) {
            (Some(tx), true) => (tx.commit_micros, tx.xid, tx.commit_lsn),
            // A non-transactional message has no commit: it is stamped when it is decoded.
            _ => ((self.clock)().div_euclid(1000), None, lsn),
        };
        let mut value = String::with_capacity(400 + content.len() * 4 / 3);
        value.push_str("{\"op\":\"m\",");
        let nanos = (self.clock)();
        value.push_str("\"ts_ms\":");
        json::write_i64(&mut value, nanos.div_euclid(1_000_000));
        value.push_str(",\"source\":");
        self.write_source(&mut value, "", "", lsn, commit_micros, in_tx, None);
        value.push_str(",\"transaction\":");
        value.push_str(tx_block.as_deref().unwrap_or("null"));
        value.push_str(",\"message\":{\"prefix\":");
        json::write_str(&mut value, prefix);
        value.push_str(",\"content\":");
        values::write_bytes(&mut value, content, self.options.binary);
        value.push_str("}}");
        let mut key = String::with_capacity(prefix.len() + 16);
        key.push_str("{\"prefix\":");
        json::write_str(&mut key, prefix);
        key.push('}');
        out.push(Event {
            op: Op::Message,
            commit_lsn,
            ordinal,
            lsn,
            xid,
            schema: "".into(),
            table: "".into(),
            relation_id: None,
            topic: format!("{}.message", self.options.topic_prefix).into(),
            key: Some(if self.options.key_schemas { schema::wrap(schema::MESSAGE_KEY_SCHEMA, &key) } else { key }),
            value: Some(if self.options.value_schemas { schema::message_value(&self.options, &value) } else { value }),
            headers: Arc::clone(&self.no_headers),
        });
        Ok(())
    }
}

/// The context headers as JSON values (schema-wrapped with header schemas on), or none when
/// `extended.headers.enabled=false`.
fn context_headers(options: &EncoderOptions, run_id: Option<&str>) -> Headers {
    if !options.extended_headers {
        return Arc::from([]);
    }
    let values = [Some(options.topic_prefix.as_str()), Some("0"), Some("postgresql"), run_id];
    CONTEXT_HEADERS
        .iter()
        .zip(values)
        .filter_map(|(name, value)| {
            let mut text = String::with_capacity(value?.len() + 2);
            json::write_str(&mut text, value?);
            if options.header_schemas() {
                text = schema::wrap(schema::HEADER_STRING_SCHEMA, &text);
            }
            Some(((*name).to_owned(), text))
        })
        .collect()
}

/// The relation's column types that are not built in (sorted, once each): what
/// [`CatalogSource::type_rows`] is asked for at its Relation message.
pub fn user_types(r: &Relation) -> Vec<Oid> {
    let mut oids: Vec<Oid> =
        r.columns.iter().map(|c| c.type_oid).filter(|&o| crate::catalog::TypeKind::builtin(o, -1).is_none()).collect();
    oids.sort_unstable();
    oids.dedup();
    oids
}

fn message_xid(msg: &Message<'_>) -> Option<Xid> {
    msg.xid()
}

/// Whether any primary-key column differs between the old and new tuple.
fn key_changed(table: &TableSchema, old: &TupleData<'_>, new: &TupleData<'_>) -> bool {
    table.key_columns.iter().any(|&i| match (old.columns.get(i), new.columns.get(i)) {
        (Some(ColumnData::UnchangedToast), _) | (_, Some(ColumnData::UnchangedToast)) => false,
        (Some(a), Some(b)) => a != b,
        _ => false,
    })
}
