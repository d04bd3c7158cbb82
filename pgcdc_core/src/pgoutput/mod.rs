//! pgoutput logical replication messages (protocol versions 1 to 4, PostgreSQL 15+).
//!
//! Parsing one message is separate from the walsender framing around it ([`frame`]): a
//! pgoutput message is the payload of one XLogData. The parser never panics: truncated input,
//! unknown tags and impossible lengths are [`DecodeError`]s naming the byte offset. Tuple data,
//! logical-message prefixes and contents borrow from the input buffer; only relation, type,
//! origin and GID names are copied.
//!
//! # Protocol versions
//!
//! The consumer picks `proto_version` in `START_REPLICATION`; the decoder must be told the same.
//!
//! | version | server | adds                                                                 |
//! |---------|--------|----------------------------------------------------------------------|
//! | 1       | 10+    | `B C O R Y I U D T M` (Truncate since 11, Message since 14)          |
//! | 2       | 14+    | streaming: `S E c A`, and the xid prefix on data messages in a block |
//! | 3       | 15+    | two-phase: `b P K r`, and `p` (Stream Prepare)                       |
//! | 4       | 16+    | parallel streaming: abort LSN and time in Stream Abort               |
//!
//! A tag from a later version than the decoder's is [`DecodeErrorKind::NotInProtocol`]; a
//! version outside [`MIN_PROTOCOL_VERSION`]`..=`[`MAX_PROTOCOL_VERSION`] rejects every tag the
//! same way, because the server would have refused it.
//!
//! # Streamed transactions (protocol >= 2)
//!
//! ```text
//!   S xid first ─ [O] ─ R Y I U D T M, each with an Int32 xid after the tag ─ E
//!   ... more S..E blocks of this and other transactions ...
//!   c | A | p   (Stream Commit / Abort / Prepare, always outside a block)
//! ```
//!
//! Between Stream Start and Stream Stop, Relation, Type, Insert, Update, Delete, Truncate and
//! Message start with the xid of the (sub)transaction they belong to; it fills their `xid`
//! field, which is `None` outside a block. Origin never carries one. [`Decoder`] tracks the
//! block; [`decode_message`] takes it as an argument. Because reading the xid depends on that
//! state, block boundaries are checked: Stream Start inside a block, Stream Stop outside one,
//! and Begin, Commit, Stream Commit, Stream Abort or any two-phase message inside one are
//! [`DecodeErrorKind::OutOfSequence`], so a lost Stream Stop shows up at the next message
//! instead of as misread xids. Nothing else about message order is checked here.
//!
//! # Stream Abort in protocol 4
//!
//! Its abort LSN and time are sent only when the subscriber asked for `streaming = parallel`,
//! which the bytes do not say. [`Decoder::new`] and [`decode_message`] therefore decide by
//! length: in protocol 4 a Stream Abort with 16 bytes after the subtransaction xid has them, one
//! with none has not, anything else is an error. A consumer that knows its options can make this
//! strict with [`Decoder::with_parallel_streaming`]. Below protocol 4 they never appear.
//!
//! # Errors
//!
//! [`DecodeError::offset`] counts bytes from the start of the message (the tag is byte 0) to the
//! first byte of the field that could not be decoded: the tag for `Empty`, `UnknownTag`,
//! `NotInProtocol` and `OutOfSequence`; the length or count field for `InvalidLength`; the
//! column kind byte for `UnknownColumnKind`; the first byte of the string for
//! `UnterminatedString` and `InvalidUtf8`; the first unread byte for `Truncated` and
//! `TrailingBytes`. It is therefore never past the end of the input. A failed decode leaves the
//! [`Decoder`] unchanged.

pub mod frame;
mod reader;
#[cfg(test)]
mod tests;

use crate::{Lsn, Oid, Xid};
use reader::{error, Reader};

// IMPLEMENTATION NOTE: message structs below are the public contract used by the encoder.

/// Microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch), as pgoutput sends times.
pub type PgTimestamp = i64;

/// Microseconds between the Unix epoch and PostgreSQL's epoch.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMessage),
    Insert(Insert<'a>),
    Update(Update<'a>),
    Delete(Delete<'a>),
    Truncate(Truncate),
    Message(LogicalMessage<'a>),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
    BeginPrepare(PrepareInfo),
    Prepare(PrepareInfo),
    CommitPrepared(CommitPrepared),
    RollbackPrepared(RollbackPrepared),
    StreamPrepare(PrepareInfo),
}

impl Message<'_> {
    /// The (sub)transaction that made a change or schema message inside a stream block
    /// (protocol 2+); None outside blocks and for other messages.
    pub fn xid(&self) -> Option<Xid> {
        match self {
            Message::Relation(r) => r.xid,
            Message::Type(t) => t.xid,
            Message::Insert(i) => i.xid,
            Message::Update(u) => u.xid,
            Message::Delete(d) => d.xid,
            Message::Truncate(t) => t.xid,
            Message::Message(m) => m.xid,
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record (the transaction's final LSN).
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: Xid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// End of the commit record: the position a consumer confirms once it has the transaction.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// Replica identity of a relation: what the old tuple of an UPDATE/DELETE contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key columns.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: every column.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Set when the message is part of a streamed transaction.
    pub xid: Option<Xid>,
    pub id: Oid,
    /// Empty for `pg_catalog`, as pgoutput sends it.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key (every column under REPLICA IDENTITY FULL).
    pub is_key: bool,
    pub name: String,
    pub type_oid: Oid,
    /// `atttypmod`: -1 when none (e.g. `numeric` without precision).
    pub type_modifier: i32,
}

/// Sent before a Relation that uses a non-built-in type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    pub xid: Option<Xid>,
    pub id: Oid,
    pub namespace: String,
    pub name: String,
}

/// One column of a tuple as pgoutput sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnData<'a> {
    Null,
    /// A TOASTed value that did not change: pgoutput does not resend it.
    UnchangedToast,
    /// Text output form of the type (`typoutput`), UTF-8 in a UTF-8 database.
    Text(&'a [u8]),
    /// Binary send form (`typsend`), only with the `binary` option.
    Binary(&'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData<'a> {
    pub columns: Vec<ColumnData<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert<'a> {
    pub xid: Option<Xid>,
    pub relation_id: Oid,
    pub new: TupleData<'a>,
}

/// The old row of an UPDATE/DELETE: key columns only (`K`) or the whole row (`O`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple<'a> {
    Key(TupleData<'a>),
    Full(TupleData<'a>),
}

impl<'a> OldTuple<'a> {
    /// The tuple, whichever form it came in.
    pub fn tuple(&self) -> &TupleData<'a> {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update<'a> {
    pub xid: Option<Xid>,
    pub relation_id: Oid,
    /// Absent when the replica identity did not change and is not FULL.
    pub old: Option<OldTuple<'a>>,
    pub new: TupleData<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete<'a> {
    pub xid: Option<Xid>,
    pub relation_id: Oid,
    pub old: OldTuple<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub xid: Option<Xid>,
    pub cascade: bool,
    pub restart_identity: bool,
    pub relation_ids: Vec<Oid>,
}

/// `pg_logical_emit_message` (needs the `messages` option).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage<'a> {
    pub xid: Option<Xid>,
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: &'a str,
    pub content: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: Xid,
    pub first_segment: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: Xid,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: Xid,
    pub subxid: Xid,
    /// Protocol 4 with parallel streaming only.
    pub abort_lsn: Option<Lsn>,
    pub abort_time: Option<PgTimestamp>,
}

/// Begin Prepare, Prepare and Stream Prepare share one layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareInfo {
    pub flags: u8,
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub xid: Xid,
    pub gid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: Xid,
    pub gid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    pub flags: u8,
    pub prepare_end_lsn: Lsn,
    pub rollback_end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub rollback_time: PgTimestamp,
    pub xid: Xid,
    pub gid: String,
}

/// What went wrong, and at which byte of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message at byte {offset}: {kind}")]
pub struct DecodeError {
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    #[error("message is empty")]
    Empty,
    #[error("truncated: needed {needed} more bytes for {field}")]
    Truncated { field: &'static str, needed: usize },
    #[error("unknown message tag {0:?}")]
    UnknownTag(char),
    #[error("unknown tuple column kind {0:?}")]
    UnknownColumnKind(char),
    #[error("unexpected byte {found:?} where {expected} was expected")]
    Unexpected { expected: &'static str, found: char },
    #[error("invalid length {0}")]
    InvalidLength(i64),
    #[error("string is not NUL-terminated")]
    UnterminatedString,
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("message {0:?} is not valid in protocol version {1}")]
    NotInProtocol(char, u32),
    #[error("{0}")]
    OutOfSequence(&'static str),
}

/// Oldest pgoutput protocol version the decoder understands.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Newest pgoutput protocol version the decoder understands (PostgreSQL 16+).
pub const MAX_PROTOCOL_VERSION: u32 = 4;

const BEGIN: u8 = b'B';
const COMMIT: u8 = b'C';
const ORIGIN: u8 = b'O';
const RELATION: u8 = b'R';
const TYPE: u8 = b'Y';
const INSERT: u8 = b'I';
const UPDATE: u8 = b'U';
const DELETE: u8 = b'D';
const TRUNCATE: u8 = b'T';
const MESSAGE: u8 = b'M';
const STREAM_START: u8 = b'S';
const STREAM_STOP: u8 = b'E';
const STREAM_COMMIT: u8 = b'c';
const STREAM_ABORT: u8 = b'A';
const BEGIN_PREPARE: u8 = b'b';
const PREPARE: u8 = b'P';
const COMMIT_PREPARED: u8 = b'K';
const ROLLBACK_PREPARED: u8 = b'r';
const STREAM_PREPARE: u8 = b'p';

// Submessage markers in Insert/Update/Delete.
const TUPLE_NEW: u8 = b'N';
const TUPLE_KEY: u8 = b'K';
const TUPLE_OLD: u8 = b'O';

// Tuple column kinds.
const COLUMN_NULL: u8 = b'n';
const COLUMN_UNCHANGED_TOAST: u8 = b'u';
const COLUMN_TEXT: u8 = b't';
const COLUMN_BINARY: u8 = b'b';

/// First protocol version that can carry `tag`; `None` for a tag pgoutput never sends.
fn min_protocol_version(tag: u8) -> Option<u32> {
    match tag {
        BEGIN | COMMIT | ORIGIN | RELATION | TYPE | INSERT | UPDATE | DELETE | TRUNCATE | MESSAGE => Some(1),
        STREAM_START | STREAM_STOP | STREAM_COMMIT | STREAM_ABORT => Some(2),
        BEGIN_PREPARE | PREPARE | COMMIT_PREPARED | ROLLBACK_PREPARED | STREAM_PREPARE => Some(3),
        _ => None,
    }
}

/// Whether Stream Abort carries abort LSN and time (protocol 4 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AbortInfo {
    /// Decide by the message length (see the module docs).
    Detect,
    /// `streaming = parallel`: required.
    Always,
    /// `streaming = on`: must be absent.
    Never,
}

/// Stateful pgoutput decoder for one replication connection: knows the protocol version and
/// whether it is inside a Stream Start..Stream Stop block.
///
/// ```
/// use pgcdc_core::pgoutput::{Decoder, Message};
///
/// let mut decoder = Decoder::new(2);
/// let stream_start = [b'S', 0, 0, 2, 0, 1];
/// assert!(matches!(decoder.decode(&stream_start), Ok(Message::StreamStart(_))));
/// assert_eq!(decoder.in_stream(), Some(512));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    protocol_version: u32,
    in_stream: Option<Xid>,
    abort_info: AbortInfo,
}

impl Decoder {
    /// A decoder for the `proto_version` given to `START_REPLICATION`, outside any stream
    /// block. An unsupported version is not refused here: every decode then fails with
    /// `NotInProtocol`.
    pub fn new(protocol_version: u32) -> Self {
        Decoder { protocol_version, in_stream: None, abort_info: AbortInfo::Detect }
    }

    /// Declares whether replication was started with `streaming = parallel` (protocol 4), so
    /// that Stream Abort must (or must not) carry the abort LSN and time instead of the
    /// decoder deciding by length. No effect below protocol 4.
    pub fn with_parallel_streaming(mut self, parallel: bool) -> Self {
        self.abort_info = if parallel { AbortInfo::Always } else { AbortInfo::Never };
        self
    }

    pub fn protocol_version(&self) -> u32 {
        self.protocol_version
    }

    /// The xid from the Stream Start of the block being decoded, if any.
    pub fn in_stream(&self) -> Option<Xid> {
        self.in_stream
    }

    /// Decodes one pgoutput message (one XLogData payload) and follows Stream Start/Stop.
    /// On error the state is unchanged.
    #[inline]
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let msg = decode_with(buf, self.protocol_version, self.in_stream.is_some(), self.abort_info)?;
        match msg {
            Message::StreamStart(StreamStart { xid, .. }) => self.in_stream = Some(xid),
            Message::StreamStop => self.in_stream = None,
            _ => {}
        }
        Ok(msg)
    }
}

/// Decodes one pgoutput message without keeping state: `in_stream` says whether it comes
/// between Stream Start and Stream Stop (which needs protocol >= 2). Stream Abort's protocol 4
/// fields are detected by length.
pub fn decode_message(buf: &[u8], protocol_version: u32, in_stream: bool) -> Result<Message<'_>, DecodeError> {
    decode_with(buf, protocol_version, in_stream, AbortInfo::Detect)
}

#[inline]
fn decode_with(buf: &[u8], version: u32, in_stream: bool, abort_info: AbortInfo) -> Result<Message<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let Ok(tag) = r.read_u8("message tag") else {
        return Err(error(0, DecodeErrorKind::Empty));
    };
    check_tag(tag, version, in_stream)?;
    // Per-row messages inline, the rarer ones out of line to keep the hot path compact.
    let msg = match tag {
        BEGIN => Message::Begin(Begin {
            final_lsn: r.read_lsn("final LSN")?,
            commit_time: r.read_i64("commit time")?,
            xid: r.read_u32("xid")?,
        }),
        COMMIT => Message::Commit(Commit {
            flags: r.read_u8("flags")?,
            commit_lsn: r.read_lsn("commit LSN")?,
            end_lsn: r.read_lsn("end LSN")?,
            commit_time: r.read_i64("commit time")?,
        }),
        INSERT => {
            let xid = read_stream_xid(&mut r, in_stream)?;
            let relation_id = r.read_u32("relation OID")?;
            expect(&mut r, TUPLE_NEW, "'N' (new tuple)")?;
            Message::Insert(Insert { xid, relation_id, new: read_tuple(&mut r)? })
        }
        UPDATE => {
            let xid = read_stream_xid(&mut r, in_stream)?;
            let relation_id = r.read_u32("relation OID")?;
            let at = r.offset();
            let old = match r.read_u8("tuple marker")? {
                TUPLE_NEW => None,
                TUPLE_KEY => Some(OldTuple::Key(read_tuple(&mut r)?)),
                TUPLE_OLD => Some(OldTuple::Full(read_tuple(&mut r)?)),
                found => return Err(unexpected(at, "'K', 'O' or 'N' (tuple)", found)),
            };
            if old.is_some() {
                expect(&mut r, TUPLE_NEW, "'N' (new tuple)")?;
            }
            Message::Update(Update { xid, relation_id, old, new: read_tuple(&mut r)? })
        }
        DELETE => {
            let xid = read_stream_xid(&mut r, in_stream)?;
            let relation_id = r.read_u32("relation OID")?;
            let at = r.offset();
            let old = match r.read_u8("tuple marker")? {
                TUPLE_KEY => OldTuple::Key(read_tuple(&mut r)?),
                TUPLE_OLD => OldTuple::Full(read_tuple(&mut r)?),
                found => return Err(unexpected(at, "'K' or 'O' (old tuple)", found)),
            };
            Message::Delete(Delete { xid, relation_id, old })
        }
        _ => read_other(&mut r, tag, version, in_stream, abort_info)?,
    };
    r.finish()?;
    Ok(msg)
}

#[inline(never)]
fn read_other<'a>(
    r: &mut Reader<'a>,
    tag: u8,
    version: u32,
    in_stream: bool,
    abort_info: AbortInfo,
) -> Result<Message<'a>, DecodeError> {
    Ok(match tag {
        ORIGIN => {
            Message::Origin(Origin { commit_lsn: r.read_lsn("origin commit LSN")?, name: r.read_cstr()?.to_owned() })
        }
        RELATION => Message::Relation(read_relation(r, in_stream)?),
        TYPE => Message::Type(TypeMessage {
            xid: read_stream_xid(r, in_stream)?,
            id: r.read_u32("type OID")?,
            namespace: r.read_cstr()?.to_owned(),
            name: r.read_cstr()?.to_owned(),
        }),
        TRUNCATE => {
            let xid = read_stream_xid(r, in_stream)?;
            let count = r.read_count32("relation count")?;
            let options = r.read_u8("truncate options")?;
            let mut relation_ids = Vec::with_capacity(r.capacity_for(count, 4));
            for _ in 0..count {
                relation_ids.push(r.read_u32("relation OID")?);
            }
            Message::Truncate(Truncate {
                xid,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relation_ids,
            })
        }
        MESSAGE => Message::Message(LogicalMessage {
            xid: read_stream_xid(r, in_stream)?,
            transactional: r.read_u8("flags")? & 1 != 0,
            lsn: r.read_lsn("message LSN")?,
            prefix: r.read_cstr()?,
            content: r.read_len_bytes("message content")?,
        }),
        STREAM_START => Message::StreamStart(StreamStart {
            xid: r.read_u32("xid")?,
            first_segment: r.read_u8("first segment flag")? != 0,
        }),
        STREAM_STOP => Message::StreamStop,
        STREAM_COMMIT => Message::StreamCommit(StreamCommit {
            xid: r.read_u32("xid")?,
            flags: r.read_u8("flags")?,
            commit_lsn: r.read_lsn("commit LSN")?,
            end_lsn: r.read_lsn("end LSN")?,
            commit_time: r.read_i64("commit time")?,
        }),
        STREAM_ABORT => {
            let xid = r.read_u32("xid")?;
            let subxid = r.read_u32("subtransaction xid")?;
            let with_info = version >= 4
                && match abort_info {
                    AbortInfo::Detect => r.remaining() != 0,
                    AbortInfo::Always => true,
                    AbortInfo::Never => false,
                };
            let (abort_lsn, abort_time) = if with_info {
                (Some(r.read_lsn("abort LSN")?), Some(r.read_i64("abort time")?))
            } else {
                (None, None)
            };
            Message::StreamAbort(StreamAbort { xid, subxid, abort_lsn, abort_time })
        }
        // Unlike Prepare, Begin Prepare has no flags byte.
        BEGIN_PREPARE => Message::BeginPrepare(read_prepare(r, 0)?),
        PREPARE => {
            let flags = r.read_u8("flags")?;
            Message::Prepare(read_prepare(r, flags)?)
        }
        STREAM_PREPARE => {
            let flags = r.read_u8("flags")?;
            Message::StreamPrepare(read_prepare(r, flags)?)
        }
        COMMIT_PREPARED => Message::CommitPrepared(CommitPrepared {
            flags: r.read_u8("flags")?,
            commit_lsn: r.read_lsn("commit LSN")?,
            end_lsn: r.read_lsn("end LSN")?,
            commit_time: r.read_i64("commit time")?,
            xid: r.read_u32("xid")?,
            gid: r.read_cstr()?.to_owned(),
        }),
        ROLLBACK_PREPARED => Message::RollbackPrepared(RollbackPrepared {
            flags: r.read_u8("flags")?,
            prepare_end_lsn: r.read_lsn("prepare end LSN")?,
            rollback_end_lsn: r.read_lsn("rollback end LSN")?,
            prepare_time: r.read_i64("prepare time")?,
            rollback_time: r.read_i64("rollback time")?,
            xid: r.read_u32("xid")?,
            gid: r.read_cstr()?.to_owned(),
        }),
        // `check_tag` accepted only the tags above and those of `decode_with`.
        _ => return Err(error(0, DecodeErrorKind::UnknownTag(char::from(tag)))),
    })
}

/// Rejects tags that are unknown, not in `version`, or not allowed at this point of a stream.
#[inline]
fn check_tag(tag: u8, version: u32, in_stream: bool) -> Result<(), DecodeError> {
    let Some(min_version) = min_protocol_version(tag) else {
        return Err(error(0, DecodeErrorKind::UnknownTag(char::from(tag))));
    };
    // A stream block cannot exist in protocol 1, so `in_stream` there is a caller error too.
    if version < min_version || version > MAX_PROTOCOL_VERSION || (in_stream && version < 2) {
        return Err(error(0, DecodeErrorKind::NotInProtocol(char::from(tag), version)));
    }
    let sequence_error = match (tag, in_stream) {
        (STREAM_START, true) => Some("Stream Start inside a streamed block"),
        (STREAM_STOP, false) => Some("Stream Stop outside a streamed block"),
        (
            BEGIN | COMMIT | STREAM_COMMIT | STREAM_ABORT | BEGIN_PREPARE | PREPARE | COMMIT_PREPARED
            | ROLLBACK_PREPARED | STREAM_PREPARE,
            true,
        ) => Some("transaction boundary inside a streamed block (missing Stream Stop?)"),
        _ => None,
    };
    match sequence_error {
        Some(why) => Err(error(0, DecodeErrorKind::OutOfSequence(why))),
        None => Ok(()),
    }
}

#[inline]
fn read_stream_xid(r: &mut Reader<'_>, in_stream: bool) -> Result<Option<Xid>, DecodeError> {
    if in_stream {
        r.read_u32("xid").map(Some)
    } else {
        Ok(None)
    }
}

#[inline]
fn expect(r: &mut Reader<'_>, want: u8, expected: &'static str) -> Result<(), DecodeError> {
    let at = r.offset();
    match r.read_u8("tuple marker")? {
        found if found == want => Ok(()),
        found => Err(unexpected(at, expected, found)),
    }
}

#[cold]
#[inline(never)]
fn unexpected(offset: usize, expected: &'static str, found: u8) -> DecodeError {
    error(offset, DecodeErrorKind::Unexpected { expected, found: char::from(found) })
}

/// TupleData: Int16 column count, then per column a kind byte and, for text and binary, an
/// Int32 length and the value.
#[inline]
fn read_tuple<'a>(r: &mut Reader<'a>) -> Result<TupleData<'a>, DecodeError> {
    let count = r.read_count16("column count")?;
    // Every column takes at least its kind byte.
    let mut columns = Vec::with_capacity(r.capacity_for(count, 1));
    for _ in 0..count {
        let at = r.offset();
        columns.push(match r.read_u8("column kind")? {
            COLUMN_TEXT => ColumnData::Text(r.read_len_bytes("column value")?),
            COLUMN_NULL => ColumnData::Null,
            COLUMN_UNCHANGED_TOAST => ColumnData::UnchangedToast,
            COLUMN_BINARY => ColumnData::Binary(r.read_len_bytes("column value")?),
            kind => return Err(error(at, DecodeErrorKind::UnknownColumnKind(char::from(kind)))),
        });
    }
    Ok(TupleData { columns })
}

fn read_relation(r: &mut Reader<'_>, in_stream: bool) -> Result<Relation, DecodeError> {
    let xid = read_stream_xid(r, in_stream)?;
    let id = r.read_u32("relation OID")?;
    let namespace = r.read_cstr()?.to_owned();
    let name = r.read_cstr()?.to_owned();
    let at = r.offset();
    let replica_identity = match r.read_u8("replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        found => return Err(unexpected(at, "replica identity 'd', 'n', 'f' or 'i'", found)),
    };
    let count = r.read_count16("column count")?;
    // Flags, empty name with its NUL, type OID and modifier: at least 10 bytes per column.
    let mut columns = Vec::with_capacity(r.capacity_for(count, 10));
    for _ in 0..count {
        columns.push(RelationColumn {
            // Bit 1 marks a key column; other bits are not defined and are ignored.
            is_key: r.read_u8("column flags")? & 1 != 0,
            name: r.read_cstr()?.to_owned(),
            type_oid: r.read_u32("column type OID")?,
            type_modifier: r.read_i32("column type modifier")?,
        });
    }
    Ok(Relation { xid, id, namespace, name, replica_identity, columns })
}

/// The part Begin Prepare, Prepare and Stream Prepare share after the flags.
fn read_prepare(r: &mut Reader<'_>, flags: u8) -> Result<PrepareInfo, DecodeError> {
    Ok(PrepareInfo {
        flags,
        prepare_lsn: r.read_lsn("prepare LSN")?,
        end_lsn: r.read_lsn("end LSN")?,
        prepare_time: r.read_i64("prepare time")?,
        xid: r.read_u32("xid")?,
        gid: r.read_cstr()?.to_owned(),
    })
}
