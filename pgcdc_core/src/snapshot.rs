//! Snapshots beside the stream: existing rows read in primary-key chunks between two
//! watermarks, merged into the change stream so that applying the events in order ends with
//! exactly the table's rows (DBLog's algorithm, as Debezium's incremental snapshots use it).
//!
//! ## One chunk
//!
//! ```text
//!  1. write the low watermark L      (non-transactional logical message, flushed)
//!  2. take snapshot S, read the chunk: the next N rows by primary key after the cursor
//!  3. write the high watermark H     (non-transactional logical message, flushed)
//!  4. stream on; for every change between L and H, and for every change of a transaction
//!     S could not see (its xid in S's in-progress list or past its xmax), drop the chunk
//!     row with that key
//!     (a TRUNCATE of the table drops them all)
//!  5. at H, emit the chunk rows that are left, at positions between the stream's events
//!     before H and after it
//! ```
//!
//! The stream delivers transactions in commit-record order, and a non-transactional message
//! between the transactions whose commit records surround it. Take any key `k` of the chunk
//! and let `r` be its row in S:
//!
//! * A transaction `T` that S sees has written its commit record before S was taken, so
//!   before H: its change of `k` is in the stream before H, and `r` already reflects it.
//! * A transaction `T` that S does not see either commits after L, so it is in the window
//!   (step 4 drops `r`), or commits before L yet was still in progress when S was taken (its
//!   commit record was written, it was not yet visible: a commit waiting for a synchronous
//!   standby, or the moment between WAL and ProcArray). Then its xid is in S's in-progress
//!   list or at or after S's xmax ([`Unseen`]), and step 4 drops `r` too when the stream delivers `T` after the chunk was read. If
//!   the stream delivered `T` before the chunk was read, the reader must not use the chunk:
//!   the extension remembers the xids of recently streamed transactions and reads again when
//!   one of them is in S's in-progress list ([`Window::conflicts`]).
//!
//! So `r` is emitted only when no change of `k` after S precedes H in the stream; then `r`
//! is `k`'s state as of H, every later change of `k` comes after `r`, and every earlier one
//! before it. A dropped `r` is never needed: the change that dropped it carries `k`'s newer
//! state (or its deletion), and changes after it follow in order. A row inserted after S is
//! not in the chunk, and its insert is in the stream. By induction over the chunks, applying
//! the events in order (c/u/r upsert by key, d delete, t clear) yields the table.
//!
//! Changes are matched to chunk rows by the text of their primary-key columns, as pgoutput
//! and the chunk query both produce it with the type's output function in the same session
//! settings. A change whose key cannot be read that way (an unchanged TOASTed key column, a
//! binary column, a key column the stream's relation lacks) makes the window unusable
//! ([`Window::is_usable`]): the chunk is read again.
//!
//! Positions: a chunk's rows take the position `(H - 1, 1..=n)`, where `H` is the LSN the
//! stream reports for the high watermark (the end of its WAL record). Every transaction the
//! stream delivered before H committed before the watermark's record started, at least one
//! byte before `H - 1`; every later one commits at or after `H`. So the chunk sorts strictly
//! between them, and no transaction can share its commit LSN (a transaction whose commit
//! record starts right at `H` would share `(H, ordinal)` with rows placed at `H`).

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::pgoutput::{ColumnData, Message, OldTuple, TupleData};
use crate::relation::TableSchema;
use crate::{Lsn, Oid, Xid};

/// Prefix of pgcdc's watermark messages. Never becomes an event of any feed.
pub const WATERMARK_PREFIX: &str = "pgcdc.watermark";

/// Debezium's `source.snapshot` of a read row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// The first row of an initial snapshot.
    First,
    /// The first row of a table, other than the snapshot's first.
    FirstInDataCollection,
    /// Any other row of an initial snapshot.
    True,
    /// The last row of a table, other than the snapshot's last.
    LastInDataCollection,
    /// The last row of an initial snapshot.
    Last,
    /// A row of an ad hoc snapshot.
    Incremental,
}

impl Marker {
    pub fn as_str(self) -> &'static str {
        match self {
            Marker::First => "first",
            Marker::FirstInDataCollection => "first_in_data_collection",
            Marker::True => "true",
            Marker::LastInDataCollection => "last_in_data_collection",
            Marker::Last => "last",
            Marker::Incremental => "incremental",
        }
    }

    /// The marker of a row of an initial snapshot. A row that is both first and last of
    /// something is marked by the snapshot-wide role first, then by the first role.
    pub fn initial(first_of_snapshot: bool, last_of_snapshot: bool, first_of_table: bool, last_of_table: bool) -> Self {
        if first_of_snapshot {
            Marker::First
        } else if last_of_snapshot {
            Marker::Last
        } else if first_of_table {
            Marker::FirstInDataCollection
        } else if last_of_table {
            Marker::LastInDataCollection
        } else {
            Marker::True
        }
    }
}

/// Names one attempt at reading one chunk; the content of its watermark messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkToken {
    pub feed_id: i32,
    pub snapshot_id: i64,
    /// The chunk's number within its snapshot.
    pub chunk: u32,
    /// Distinguishes reads of the same chunk (after a retry or a restart).
    pub attempt: u64,
}

/// Which watermark a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    Low(ChunkToken),
    High(ChunkToken),
}

impl ChunkToken {
    /// The content of this chunk's low (`high = false`) or high watermark.
    pub fn watermark(&self, high: bool) -> String {
        format!(
            "{} {}/{}/{}/{}",
            if high { "high" } else { "low" },
            self.feed_id,
            self.snapshot_id,
            self.chunk,
            self.attempt
        )
    }
}

impl fmt::Display for ChunkToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snapshot {} chunk {} (attempt {})", self.snapshot_id, self.chunk, self.attempt)
    }
}

impl Watermark {
    /// Parses a watermark message's content; None for anything else.
    pub fn parse(content: &[u8]) -> Option<Watermark> {
        let text = std::str::from_utf8(content).ok()?;
        let (kind, rest) = text.split_once(' ')?;
        let mut parts = rest.split('/');
        let token = ChunkToken {
            feed_id: parts.next()?.parse().ok()?,
            snapshot_id: parts.next()?.parse().ok()?,
            chunk: parts.next()?.parse().ok()?,
            attempt: parts.next()?.parse().ok()?,
        };
        if parts.next().is_some() {
            return None;
        }
        match kind {
            "low" => Some(Watermark::Low(token)),
            "high" => Some(Watermark::High(token)),
            _ => None,
        }
    }
}

/// The transactions a snapshot does not see as committed: those in progress when it was
/// taken (`xip`) and every xid from its `xmax` on. A transaction whose commit record is
/// written but which is not yet visible may have the newest xid: it is then not in `xip`
/// but at or past `xmax` (PostgreSQL leaves such xids out of `xip`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unseen {
    pub xmax: Xid,
    pub xip: HashSet<Xid>,
}

impl Unseen {
    pub fn new(xmax: Xid, xip: impl IntoIterator<Item = Xid>) -> Self {
        Unseen { xmax, xip: xip.into_iter().collect() }
    }

    /// Whether the snapshot did not see `xid` (committed or not): in `xip`, or at or after
    /// `xmax` in PostgreSQL's circular xid order.
    pub fn contains(&self, xid: Xid) -> bool {
        self.xip.contains(&xid) || (xid.wrapping_sub(self.xmax) as i32) >= 0
    }
}

/// One column value of a chunk row: its text (the type's output function), or NULL.
pub type Cell = Option<Vec<u8>>;

/// The primary-key columns' text of one row, as one comparable value.
type KeyText = Vec<u8>;

/// One row's key text, from its key cells in key order.
fn key_text<'a>(cells: impl Iterator<Item = Option<&'a [u8]>>) -> KeyText {
    let mut out = Vec::with_capacity(16);
    for cell in cells {
        match cell {
            None => out.push(0),
            Some(b) => {
                out.push(1);
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    out
}

/// A chunk between its watermarks: the rows read, minus those the stream superseded.
#[derive(Debug)]
pub struct Window {
    token: ChunkToken,
    relation_id: Oid,
    key_names: Vec<String>,
    rows: Vec<Option<Vec<Cell>>>,
    by_key: HashMap<KeyText, usize>,
    /// The transactions S did not see: their changes are not in the chunk.
    unseen: Unseen,
    low_seen: bool,
    /// The open transaction's changes supersede chunk rows.
    tx_supersedes: bool,
    /// The stream relation's key column positions, for the relation version seen last.
    stream_keys: Option<(u64, Option<Vec<usize>>)>,
    usable: bool,
    superseded: usize,
}

impl Window {
    /// A chunk read under a snapshot with these in-progress xids. `key_columns` are the
    /// positions of the primary-key columns in each row, `key_names` their names.
    pub fn new(
        token: ChunkToken,
        relation_id: Oid,
        key_columns: &[usize],
        key_names: Vec<String>,
        rows: Vec<Vec<Cell>>,
        unseen: Unseen,
    ) -> Window {
        let mut by_key = HashMap::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            by_key.insert(key_text(key_columns.iter().map(|&k| row.get(k).and_then(|c| c.as_deref()))), i);
        }
        Window {
            token,
            relation_id,
            key_names,
            rows: rows.into_iter().map(Some).collect(),
            by_key,
            unseen,
            low_seen: false,
            tx_supersedes: false,
            stream_keys: None,
            usable: true,
            superseded: 0,
        }
    }

    pub fn token(&self) -> ChunkToken {
        self.token
    }

    pub fn relation_id(&self) -> Oid {
        self.relation_id
    }

    /// Whether a transaction streamed before the chunk was read is one S did not see: the
    /// chunk misses its changes, and they are gone by: read the chunk again.
    pub fn conflicts(unseen: &Unseen, streamed: &HashSet<Xid>) -> bool {
        streamed.iter().any(|&x| unseen.contains(x))
    }

    /// The stream reached the low watermark: every change from here on supersedes.
    pub fn low_watermark(&mut self) {
        self.low_seen = true;
    }

    /// A transaction starts in the stream.
    pub fn begin(&mut self, xid: Xid) {
        self.tx_supersedes = self.low_seen || self.unseen.contains(xid);
    }

    /// The transaction begun last (see [`Window::begin`]) committed with changes the window
    /// did not observe (a streamed transaction's, staged as they arrived): if they must
    /// supersede and `touched_table` (they changed the chunk's table), the window is unusable.
    pub fn committed_elsewhere(&mut self, touched_table: bool) {
        if self.tx_supersedes && touched_table {
            self.usable = false;
        }
    }

    /// A change in the stream; `stream_table` is the stream's relation of the change.
    pub fn observe(&mut self, msg: &Message<'_>, stream_table: Option<&TableSchema>) {
        if !self.tx_supersedes {
            return;
        }
        match msg {
            Message::Insert(i) if i.relation_id == self.relation_id => self.supersede(&i.new, stream_table),
            Message::Update(u) if u.relation_id == self.relation_id => {
                if let Some(old) = &u.old {
                    self.supersede(OldTuple::tuple(old), stream_table);
                }
                self.supersede(&u.new, stream_table);
            }
            Message::Delete(d) if d.relation_id == self.relation_id => {
                self.supersede(OldTuple::tuple(&d.old), stream_table)
            }
            Message::Truncate(t) if t.relation_ids.contains(&self.relation_id) => {
                for row in &mut self.rows {
                    if row.take().is_some() {
                        self.superseded += 1;
                    }
                }
                self.by_key.clear();
            }
            _ => {}
        }
    }

    fn supersede(&mut self, tuple: &TupleData<'_>, stream_table: Option<&TableSchema>) {
        let Some(positions) = self.stream_key_positions(stream_table) else {
            self.usable = false;
            return;
        };
        let mut cells = Vec::with_capacity(positions.len());
        for &p in &positions {
            match tuple.columns.get(p) {
                Some(ColumnData::Null) => cells.push(None),
                Some(ColumnData::Text(b)) => cells.push(Some(*b)),
                // A key we cannot read as text cannot be matched: the chunk is unusable.
                _ => {
                    self.usable = false;
                    return;
                }
            }
        }
        if let Some(i) = self.by_key.remove(&key_text(cells.into_iter())) {
            if self.rows[i].take().is_some() {
                self.superseded += 1;
            }
        }
    }

    fn stream_key_positions(&mut self, stream_table: Option<&TableSchema>) -> Option<Vec<usize>> {
        let table = stream_table?;
        if let Some((version, positions)) = &self.stream_keys {
            if *version == table.version {
                return positions.clone();
            }
        }
        let positions: Option<Vec<usize>> =
            self.key_names.iter().map(|name| table.columns.iter().position(|c| c.name == *name)).collect();
        self.stream_keys = Some((table.version, positions.clone()));
        positions
    }

    /// False when a change could not be matched to the chunk's keys: read the chunk again.
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    /// Rows the stream superseded so far.
    pub fn superseded(&self) -> usize {
        self.superseded
    }

    /// The rows to emit at the high watermark, in key order.
    pub fn into_rows(self) -> Vec<Vec<Cell>> {
        self.rows.into_iter().flatten().collect()
    }
}

/// The position of a chunk's `i`-th emitted row (from 1), for a high watermark reported
/// at `high`: see the module docs.
pub fn row_position(high: Lsn, i: u32) -> (Lsn, u32) {
    (Lsn(high.0.saturating_sub(1)), i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::pgoutput::{Delete, Insert, Relation, RelationColumn, ReplicaIdentity, Truncate, Update};
    use crate::relation::RelationCache;

    const REL: Oid = 16384;

    fn token() -> ChunkToken {
        ChunkToken { feed_id: 3, snapshot_id: 7, chunk: 2, attempt: 9 }
    }

    /// `public.t` with these (column, type oid) pairs; `id` is the key.
    fn relation(columns: &[(&str, Oid)]) -> Relation {
        Relation {
            xid: None,
            id: REL,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|&(n, t)| RelationColumn { is_key: n == "id", name: n.into(), type_oid: t, type_modifier: -1 })
                .collect(),
        }
    }

    fn stream_table(columns: &[&str]) -> TableSchema {
        let rel = relation(&columns.iter().map(|&n| (n, 23)).collect::<Vec<_>>());
        let info = crate::catalog::TableInfo { primary_key: vec!["id".into()], ..Default::default() };
        RelationCache::new().define(&rel, &Catalog::new(), Some(&info), "p").clone()
    }

    fn row(id: &str, v: &str) -> Vec<Cell> {
        vec![Some(id.as_bytes().to_vec()), Some(v.as_bytes().to_vec())]
    }

    fn window(ids: &[&str], in_progress: &[Xid]) -> Window {
        let rows = ids.iter().map(|id| row(id, "x")).collect();
        Window::new(token(), REL, &[0], vec!["id".into()], rows, Unseen::new(1000, in_progress.iter().copied()))
    }

    fn tuple<'a>(cells: &'a [&'a str]) -> TupleData<'a> {
        TupleData { columns: cells.iter().map(|c| ColumnData::Text(c.as_bytes())).collect() }
    }

    fn ids(w: Window) -> Vec<String> {
        w.into_rows().into_iter().map(|r| String::from_utf8(r[0].clone().unwrap()).unwrap()).collect()
    }

    #[test]
    fn watermarks_round_trip_and_nothing_else_parses() {
        let t = token();
        assert_eq!(Watermark::parse(t.watermark(false).as_bytes()), Some(Watermark::Low(t)));
        assert_eq!(Watermark::parse(t.watermark(true).as_bytes()), Some(Watermark::High(t)));
        for bad in ["", "low", "low 1/2/3", "mid 1/2/3/4", "high 1/2/3/4/5", "high a/2/3/4", "\u{ff}"] {
            assert_eq!(Watermark::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn changes_before_the_low_watermark_of_visible_transactions_keep_the_row() {
        let st = stream_table(&["id", "v"]);
        let mut w = window(&["1", "2"], &[50]);
        w.begin(40); // seen by S, committed before L
        w.observe(&Message::Insert(Insert { xid: None, relation_id: REL, new: tuple(&["1", "y"]) }), Some(&st));
        assert_eq!(ids(w), ["1", "2"]);
    }

    #[test]
    fn changes_inside_the_window_or_of_unseen_transactions_supersede_the_row() {
        let st = stream_table(&["id", "v"]);
        let mut w = window(&["1", "2", "3", "4"], &[50]);
        w.begin(50); // committed before L but invisible to S
        w.observe(
            &Message::Delete(Delete { xid: None, relation_id: REL, old: OldTuple::Key(tuple(&["1", ""])) }),
            Some(&st),
        );
        w.low_watermark();
        w.begin(60);
        // A key change supersedes the old key and the new one.
        let old = OldTuple::Key(tuple(&["2", ""]));
        let upd = Update { xid: None, relation_id: REL, old: Some(old), new: tuple(&["4", "z"]) };
        w.observe(&Message::Update(upd), Some(&st));
        // Other tables never supersede.
        w.observe(&Message::Insert(Insert { xid: None, relation_id: REL + 1, new: tuple(&["3", "q"]) }), Some(&st));
        assert_eq!(w.superseded(), 3);
        assert_eq!(ids(w), ["3"]);
    }

    #[test]
    fn a_truncate_in_the_window_supersedes_every_row() {
        let mut w = window(&["1", "2"], &[]);
        w.low_watermark();
        w.begin(70);
        w.observe(
            &Message::Truncate(Truncate {
                xid: None,
                cascade: false,
                restart_identity: false,
                relation_ids: vec![REL],
            }),
            None,
        );
        assert!(w.is_usable());
        assert!(ids(w).is_empty());
    }

    #[test]
    fn keys_match_by_column_name_whatever_the_stream_column_order() {
        let st = stream_table(&["v", "id"]);
        let mut w = window(&["1", "2"], &[]);
        w.low_watermark();
        w.begin(70);
        w.observe(&Message::Insert(Insert { xid: None, relation_id: REL, new: tuple(&["y", "2"]) }), Some(&st));
        assert_eq!(ids(w), ["1"]);
    }

    #[test]
    fn an_unreadable_key_makes_the_window_unusable() {
        let st = stream_table(&["id", "v"]);
        let mut w = window(&["1"], &[]);
        w.low_watermark();
        w.begin(70);
        let new = TupleData { columns: vec![ColumnData::UnchangedToast, ColumnData::Text(b"v")] };
        w.observe(&Message::Update(Update { xid: None, relation_id: REL, old: None, new }), Some(&st));
        assert!(!w.is_usable());
        let mut w = window(&["1"], &[]);
        w.low_watermark();
        w.begin(70);
        w.observe(&Message::Insert(Insert { xid: None, relation_id: REL, new: tuple(&["1", "v"]) }), None);
        assert!(!w.is_usable(), "no stream relation: cannot tell the key");
    }

    #[test]
    fn null_and_empty_key_texts_differ() {
        let rows = vec![vec![None, Some(b"x".to_vec())], vec![Some(Vec::new()), Some(b"x".to_vec())]];
        let st = stream_table(&["id", "v"]);
        let mut w = Window::new(token(), REL, &[0], vec!["id".into()], rows, Unseen::new(1000, []));
        w.low_watermark();
        w.begin(1);
        let new = TupleData { columns: vec![ColumnData::Text(b""), ColumnData::Text(b"y")] };
        w.observe(&Message::Insert(Insert { xid: None, relation_id: REL, new }), Some(&st));
        let left = w.into_rows();
        assert_eq!(left, vec![vec![None, Some(b"x".to_vec())]]);
    }

    #[test]
    fn streamed_unseen_transactions_conflict() {
        let unseen = Unseen::new(20, [5, 9]);
        assert!(Window::conflicts(&unseen, &[9].into()));
        assert!(!Window::conflicts(&unseen, &[4, 10].into()));
        // The newest xid can be committed in WAL yet past the snapshot's xmax, not in xip.
        assert!(Window::conflicts(&unseen, &[20].into()));
        assert!(Window::conflicts(&unseen, &[25].into()));
    }

    #[test]
    fn xids_at_or_past_xmax_are_unseen_across_wraparound() {
        let unseen = Unseen::new(u32::MAX - 1, []);
        assert!(unseen.contains(u32::MAX - 1) && unseen.contains(u32::MAX) && unseen.contains(3));
        assert!(!unseen.contains(u32::MAX - 2) && !unseen.contains(u32::MAX - 1000));
        let mut w = window(&["1"], &[]);
        w.begin(1000); // the xmax of `window`'s snapshot: not seen, so it supersedes
        let st = stream_table(&["id", "v"]);
        w.observe(&Message::Insert(Insert { xid: None, relation_id: REL, new: tuple(&["1", "y"]) }), Some(&st));
        assert!(ids(w).is_empty());
    }

    #[test]
    fn markers_of_an_initial_snapshot() {
        assert_eq!(Marker::initial(true, true, true, true), Marker::First);
        assert_eq!(Marker::initial(false, true, true, true), Marker::Last);
        assert_eq!(Marker::initial(false, false, true, true), Marker::FirstInDataCollection);
        assert_eq!(Marker::initial(false, false, false, true), Marker::LastInDataCollection);
        assert_eq!(Marker::initial(false, false, false, false), Marker::True);
        assert_eq!(Marker::Incremental.as_str(), "incremental");
    }

    struct Facts;
    impl crate::debezium::CatalogSource for Facts {
        fn type_rows(&mut self, _oids: &[Oid]) -> Result<Vec<crate::catalog::TypeRow>, String> {
            Ok(Vec::new())
        }
        fn table_info(&mut self, _relation_id: Oid) -> Result<crate::catalog::TableInfo, String> {
            Ok(crate::catalog::TableInfo { primary_key: vec!["id".into()], ..Default::default() })
        }
    }

    #[test]
    fn a_read_row_is_encoded_like_a_streamed_row_with_the_snapshot_source() {
        use crate::debezium::{Encoder, EncoderOptions, Op, SnapshotRead};
        let mut encoder = Encoder::new(EncoderOptions::default(), "db");
        encoder.set_clock(|| 1_700_000_000_000_000_000);
        let rel = relation(&[("id", 23), ("v", 25)]);
        encoder.define_snapshot_relation(&rel, &mut Facts).unwrap();
        assert!(encoder.relation(REL).is_none(), "the stream's relations are not touched");
        let read = SnapshotRead {
            marker: Marker::First,
            lsn: Lsn(1000),
            position: row_position(Lsn(1000), 1),
            ts_micros: 1_600_000_000_000_000,
        };
        let mut out = Vec::new();
        encoder.read(REL, &tuple(&["7", "x"]), &read, &mut out).unwrap();
        let ev = &out[0];
        assert_eq!((ev.op, ev.commit_lsn, ev.ordinal, ev.relation_id), (Op::Read, Lsn(999), 1, Some(REL)));
        assert_eq!(ev.key.as_deref(), Some(r#"{"id":7}"#));
        let value = ev.value.as_deref().unwrap();
        assert!(value.starts_with(r#"{"before":null,"after":{"id":7,"v":"x"},"source":{"version":"#), "{value}");
        assert!(
            value.contains(r#""ts_ms":1600000000000,"snapshot":"first","db":"db","sequence":"[null,\"1000\"]""#),
            "{value}"
        );
        assert!(value.contains(r#""table":"t","txId":null,"lsn":1000,"#), "{value}");
        assert!(value.ends_with(r#""transaction":null,"op":"r","ts_ms":1700000000000,"ts_us":1700000000000000,"ts_ns":1700000000000000000}"#), "{value}");
        assert!(ev.topic.ends_with(".public.t"), "{}", ev.topic);
    }

    #[test]
    fn chunk_rows_sort_between_the_transactions_around_the_high_watermark() {
        assert_eq!(row_position(Lsn(1000), 1), (Lsn(999), 1));
        // A transaction whose commit record starts right at the watermark's end sorts after.
        assert!((Lsn(999), u32::MAX - 1) < (Lsn(1000), 1));
    }
}
