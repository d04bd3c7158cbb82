//! Hand-built pgoutput messages shared by the `decoder_*` tests (`mod decoder_fixtures;`).
//!
//! The bytes are written field by field from the PostgreSQL docs ("Logical Replication Message
//! Formats"), independently of the decoder, each next to the [`Message`] it must decode to.
//! Compiled on its own (as every file in `tests/` is) it has no tests.

#![allow(dead_code)]

use pgcdc_core::pgoutput::*;
use pgcdc_core::Lsn;

/// Big-endian byte builder for one message.
#[derive(Debug, Clone, Default)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn tag(tag: u8) -> Self {
        Bytes(vec![tag])
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn lsn(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    pub fn cstr(self, s: &str) -> Self {
        self.raw(s.as_bytes()).u8(0)
    }
    /// The Int32 xid that data messages carry inside a stream block.
    pub fn stream_xid(self, xid: Option<u32>) -> Self {
        match xid {
            Some(x) => self.u32(x),
            None => self,
        }
    }
    /// TupleData from column specs.
    pub fn tuple(mut self, cols: &[Col]) -> Self {
        self = self.i16(cols.len() as i16);
        for c in cols {
            self = match *c {
                Col::Null => self.u8(b'n'),
                Col::Toast => self.u8(b'u'),
                Col::Text(v) => self.u8(b't').i32(v.len() as i32).raw(v),
                Col::Binary(v) => self.u8(b'b').i32(v.len() as i32).raw(v),
            };
        }
        self
    }
    pub fn build(self) -> Vec<u8> {
        self.0
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Col {
    Null,
    Toast,
    Text(&'static [u8]),
    Binary(&'static [u8]),
}

pub fn tuple_data(cols: &[Col]) -> TupleData<'static> {
    TupleData {
        columns: cols
            .iter()
            .map(|c| match *c {
                Col::Null => ColumnData::Null,
                Col::Toast => ColumnData::UnchangedToast,
                Col::Text(v) => ColumnData::Text(v),
                Col::Binary(v) => ColumnData::Binary(v),
            })
            .collect(),
    }
}

/// One valid message and what it decodes to, under the given decoder settings.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub version: u32,
    pub in_stream: bool,
    /// `Some` for a Stream Abort that needs `with_parallel_streaming`.
    pub parallel: Option<bool>,
    pub bytes: Vec<u8>,
    pub expected: Message<'static>,
}

impl Case {
    /// A decoder in the state this case needs.
    pub fn decoder(&self) -> Decoder {
        let mut d = Decoder::new(self.version);
        if let Some(p) = self.parallel {
            d = d.with_parallel_streaming(p);
        }
        if self.in_stream {
            d.decode(&[b'S', 0, 0, 0, 99, 1]).expect("stream start");
        }
        d
    }
}

pub const ROW: &[Col] = &[Col::Text(b"42"), Col::Null, Col::Toast, Col::Text(b""), Col::Binary(&[0, 1, 0xff])];
pub const KEY: &[Col] = &[Col::Text(b"42"), Col::Null, Col::Null, Col::Null, Col::Null];

pub const FINAL_LSN: u64 = 0x16_B374_D848;
pub const END_LSN: u64 = 0x16_B374_D900;
pub const TIME: i64 = 0x0002_9A3F_1234_5678;
pub const TIME2: i64 = TIME + 1_000_000;
pub const XID: u32 = 0xDEAD_BEEF;
pub const SUBXID: u32 = 0x0000_1234;
pub const REL: u32 = 16_384;

/// Every message kind valid in `version` outside a stream block, then (protocol >= 2) the data
/// messages again inside one with their leading xid.
pub fn cases(version: u32) -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |name, in_stream, parallel, bytes: Bytes, expected| {
        out.push(Case { name, version, in_stream, parallel, bytes: bytes.build(), expected })
    };

    add(
        "begin",
        false,
        None,
        Bytes::tag(b'B').lsn(FINAL_LSN).i64(TIME).u32(XID),
        Message::Begin(Begin { final_lsn: Lsn(FINAL_LSN), commit_time: TIME, xid: XID }),
    );
    add(
        "commit",
        false,
        None,
        Bytes::tag(b'C').u8(0).lsn(FINAL_LSN).lsn(END_LSN).i64(TIME),
        Message::Commit(Commit { flags: 0, commit_lsn: Lsn(FINAL_LSN), end_lsn: Lsn(END_LSN), commit_time: TIME }),
    );
    add(
        "origin",
        false,
        None,
        Bytes::tag(b'O').lsn(FINAL_LSN).cstr("pg_16385"),
        Message::Origin(Origin { commit_lsn: Lsn(FINAL_LSN), name: "pg_16385".into() }),
    );

    let streams: &[Option<u32>] = if version >= 2 { &[None, Some(SUBXID)] } else { &[None] };
    for &sx in streams {
        let s = sx.is_some();
        add(
            "relation",
            s,
            None,
            Bytes::tag(b'R')
                .stream_xid(sx)
                .u32(REL)
                .cstr("public")
                .cstr("örders")
                .u8(b'f')
                .i16(3)
                .u8(1)
                .cstr("id")
                .u32(23)
                .i32(-1)
                .u8(0)
                .cstr("price")
                .u32(1700)
                .i32(655_366)
                .u8(0)
                .cstr("")
                .u32(u32::MAX)
                .i32(i32::MIN),
            Message::Relation(Relation {
                xid: sx,
                id: REL,
                namespace: "public".into(),
                name: "örders".into(),
                replica_identity: ReplicaIdentity::Full,
                columns: vec![
                    RelationColumn { is_key: true, name: "id".into(), type_oid: 23, type_modifier: -1 },
                    RelationColumn { is_key: false, name: "price".into(), type_oid: 1700, type_modifier: 655_366 },
                    RelationColumn { is_key: false, name: String::new(), type_oid: u32::MAX, type_modifier: i32::MIN },
                ],
            }),
        );
        for (ri, byte) in
            [(ReplicaIdentity::Default, b'd'), (ReplicaIdentity::Nothing, b'n'), (ReplicaIdentity::Index, b'i')]
        {
            add(
                "relation without columns",
                s,
                None,
                Bytes::tag(b'R').stream_xid(sx).u32(1).cstr("").cstr("t").u8(byte).i16(0),
                Message::Relation(Relation {
                    xid: sx,
                    id: 1,
                    namespace: String::new(),
                    name: "t".into(),
                    replica_identity: ri,
                    columns: vec![],
                }),
            );
        }
        add(
            "type",
            s,
            None,
            Bytes::tag(b'Y').stream_xid(sx).u32(16_390).cstr("public").cstr("mood"),
            Message::Type(TypeMessage { xid: sx, id: 16_390, namespace: "public".into(), name: "mood".into() }),
        );
        add(
            "insert",
            s,
            None,
            Bytes::tag(b'I').stream_xid(sx).u32(REL).u8(b'N').tuple(ROW),
            Message::Insert(Insert { xid: sx, relation_id: REL, new: tuple_data(ROW) }),
        );
        add(
            "insert of an empty tuple",
            s,
            None,
            Bytes::tag(b'I').stream_xid(sx).u32(REL).u8(b'N').tuple(&[]),
            Message::Insert(Insert { xid: sx, relation_id: REL, new: tuple_data(&[]) }),
        );
        add(
            "update",
            s,
            None,
            Bytes::tag(b'U').stream_xid(sx).u32(REL).u8(b'N').tuple(ROW),
            Message::Update(Update { xid: sx, relation_id: REL, old: None, new: tuple_data(ROW) }),
        );
        add(
            "update with key",
            s,
            None,
            Bytes::tag(b'U').stream_xid(sx).u32(REL).u8(b'K').tuple(KEY).u8(b'N').tuple(ROW),
            Message::Update(Update {
                xid: sx,
                relation_id: REL,
                old: Some(OldTuple::Key(tuple_data(KEY))),
                new: tuple_data(ROW),
            }),
        );
        add(
            "update with old row",
            s,
            None,
            Bytes::tag(b'U').stream_xid(sx).u32(REL).u8(b'O').tuple(ROW).u8(b'N').tuple(KEY),
            Message::Update(Update {
                xid: sx,
                relation_id: REL,
                old: Some(OldTuple::Full(tuple_data(ROW))),
                new: tuple_data(KEY),
            }),
        );
        add(
            "delete with key",
            s,
            None,
            Bytes::tag(b'D').stream_xid(sx).u32(REL).u8(b'K').tuple(KEY),
            Message::Delete(Delete { xid: sx, relation_id: REL, old: OldTuple::Key(tuple_data(KEY)) }),
        );
        add(
            "delete with old row",
            s,
            None,
            Bytes::tag(b'D').stream_xid(sx).u32(REL).u8(b'O').tuple(ROW),
            Message::Delete(Delete { xid: sx, relation_id: REL, old: OldTuple::Full(tuple_data(ROW)) }),
        );
        for (options, cascade, restart_identity) in
            [(0, false, false), (1, true, false), (2, false, true), (3, true, true)]
        {
            add(
                "truncate",
                s,
                None,
                Bytes::tag(b'T').stream_xid(sx).i32(2).u8(options).u32(REL).u32(REL + 1),
                Message::Truncate(Truncate { xid: sx, cascade, restart_identity, relation_ids: vec![REL, REL + 1] }),
            );
        }
        add(
            "truncate of nothing",
            s,
            None,
            Bytes::tag(b'T').stream_xid(sx).i32(0).u8(0),
            Message::Truncate(Truncate { xid: sx, cascade: false, restart_identity: false, relation_ids: vec![] }),
        );
        for (flags, transactional) in [(0, false), (1, true)] {
            add(
                "message",
                s,
                None,
                Bytes::tag(b'M').stream_xid(sx).u8(flags).lsn(FINAL_LSN).cstr("pgcdc/test").i32(5).raw(b"h\0llo"),
                Message::Message(LogicalMessage {
                    xid: sx,
                    transactional,
                    lsn: Lsn(FINAL_LSN),
                    prefix: "pgcdc/test",
                    content: b"h\0llo",
                }),
            );
        }
    }

    if version >= 2 {
        for (flag, first_segment) in [(1, true), (0, false)] {
            add(
                "stream start",
                false,
                None,
                Bytes::tag(b'S').u32(XID).u8(flag),
                Message::StreamStart(StreamStart { xid: XID, first_segment }),
            );
        }
        add("stream stop", true, None, Bytes::tag(b'E'), Message::StreamStop);
        add(
            "stream commit",
            false,
            None,
            Bytes::tag(b'c').u32(XID).u8(0).lsn(FINAL_LSN).lsn(END_LSN).i64(TIME),
            Message::StreamCommit(StreamCommit {
                xid: XID,
                flags: 0,
                commit_lsn: Lsn(FINAL_LSN),
                end_lsn: Lsn(END_LSN),
                commit_time: TIME,
            }),
        );
        let no_info = Message::StreamAbort(StreamAbort { xid: XID, subxid: SUBXID, abort_lsn: None, abort_time: None });
        add("stream abort", false, None, Bytes::tag(b'A').u32(XID).u32(SUBXID), no_info.clone());
        if version >= 4 {
            add("stream abort, streaming = on", false, Some(false), Bytes::tag(b'A').u32(XID).u32(SUBXID), no_info);
            let with_info = Message::StreamAbort(StreamAbort {
                xid: XID,
                subxid: SUBXID,
                abort_lsn: Some(Lsn(END_LSN)),
                abort_time: Some(TIME),
            });
            let bytes = Bytes::tag(b'A').u32(XID).u32(SUBXID).lsn(END_LSN).i64(TIME);
            add("stream abort with abort info", false, None, bytes.clone(), with_info.clone());
            add("stream abort, streaming = parallel", false, Some(true), bytes, with_info);
        }
    }

    if version >= 3 {
        let info = |flags| PrepareInfo {
            flags,
            prepare_lsn: Lsn(FINAL_LSN),
            end_lsn: Lsn(END_LSN),
            prepare_time: TIME,
            xid: XID,
            gid: "pgcdc-gid-1".into(),
        };
        add(
            "begin prepare",
            false,
            None,
            Bytes::tag(b'b').lsn(FINAL_LSN).lsn(END_LSN).i64(TIME).u32(XID).cstr("pgcdc-gid-1"),
            Message::BeginPrepare(info(0)),
        );
        add(
            "prepare",
            false,
            None,
            Bytes::tag(b'P').u8(0).lsn(FINAL_LSN).lsn(END_LSN).i64(TIME).u32(XID).cstr("pgcdc-gid-1"),
            Message::Prepare(info(0)),
        );
        add(
            "stream prepare",
            false,
            None,
            Bytes::tag(b'p').u8(7).lsn(FINAL_LSN).lsn(END_LSN).i64(TIME).u32(XID).cstr("pgcdc-gid-1"),
            Message::StreamPrepare(info(7)),
        );
        add(
            "commit prepared",
            false,
            None,
            Bytes::tag(b'K').u8(0).lsn(FINAL_LSN).lsn(END_LSN).i64(TIME).u32(XID).cstr(""),
            Message::CommitPrepared(CommitPrepared {
                flags: 0,
                commit_lsn: Lsn(FINAL_LSN),
                end_lsn: Lsn(END_LSN),
                commit_time: TIME,
                xid: XID,
                gid: String::new(),
            }),
        );
        add(
            "rollback prepared",
            false,
            None,
            Bytes::tag(b'r').u8(0).lsn(FINAL_LSN).lsn(END_LSN).i64(TIME).i64(TIME2).u32(XID).cstr("pgcdc-gid-1"),
            Message::RollbackPrepared(RollbackPrepared {
                flags: 0,
                prepare_end_lsn: Lsn(FINAL_LSN),
                rollback_end_lsn: Lsn(END_LSN),
                prepare_time: TIME,
                rollback_time: TIME2,
                xid: XID,
                gid: "pgcdc-gid-1".into(),
            }),
        );
    }
    out
}

/// Every case of every protocol version.
pub fn all_cases() -> Vec<Case> {
    (MIN_PROTOCOL_VERSION..=MAX_PROTOCOL_VERSION).flat_map(cases).collect()
}

/// The 19 tags pgoutput sends.
pub const TAGS: &[u8] = b"BCORYIUDTMSEcAbPKrp";
