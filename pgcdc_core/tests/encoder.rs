//! Encoder behaviour beyond the golden files: streamed and prepared transactions, positions,
//! transaction metadata, truncate, schemas, unchanged TOAST and bad input.

mod common;

use std::collections::HashSet;

use common::{encode_fixture, load_fixture};
use pgcdc_core::debezium::{EncodeError, Encoder, EncoderOptions, Event, NoCatalog, Op};
use pgcdc_core::pgoutput::{
    Begin, ColumnData, Commit, Insert, Message, OldTuple, Relation, RelationColumn, ReplicaIdentity, TupleData, Update,
};
use pgcdc_core::Lsn;
use serde_json::Value as Json;

fn json(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("invalid JSON {e}: {text}"))
}

fn after_id(e: &Event) -> i64 {
    json(e.value.as_deref().unwrap())["after"]["id"].as_i64().unwrap()
}

#[test]
fn streamed_transactions_emit_only_committed_changes() {
    let fixture = load_fixture("streaming_proto2.json");
    let events = encode_fixture(&fixture, &[]);
    assert!(events.iter().all(|e| e.op == Op::Create));
    let ids: Vec<i64> = events.iter().map(after_id).collect();
    let expected: Vec<i64> = (1..=2000).chain(20001..=20300).chain(20801..=20900).chain([30001]).collect();
    assert_eq!(ids, expected, "rolled-back transaction and savepoint must not appear");
    // Records of one transaction share its commit LSN; the i-th change has ordinal 3i+1.
    let first_tx: Vec<&Event> = events.iter().take(2000).collect();
    assert!(first_tx.iter().all(|e| e.commit_lsn == first_tx[0].commit_lsn && e.xid == first_tx[0].xid));
    assert_eq!(
        first_tx.iter().map(|e| e.ordinal).collect::<Vec<_>>(),
        (1..=2000).map(|i| 3 * i + 1).collect::<Vec<u32>>()
    );
    let v = json(events[0].value.as_deref().unwrap());
    assert_eq!(v["source"]["txId"].as_u64(), events[0].xid.map(u64::from));
    assert!(v["source"]["ts_ms"].as_i64().unwrap() > 1_700_000_000_000, "commit time from Stream Commit");
}

/// What the extension does with staged streams, in memory: records of a stream block wait
/// under their transaction's xid, a rolled-back savepoint's are deleted and the numbering
/// rewound, and at the commit they are bound and given its commit LSN.
fn encode_fixture_staged(fixture: &common::Fixture) -> (Vec<Event>, usize) {
    use pgcdc_core::pgoutput::Decoder;
    use std::collections::HashMap;
    let mut encoder = Encoder::new(EncoderOptions::default(), &fixture.database);
    encoder.set_clock(|| common::FIXED_CLOCK_NANOS);
    encoder.set_run_id(common::FIXED_RUN_ID);
    encoder.stage_streams().unwrap();
    let mut catalog = common::FixtureCatalog::new(fixture);
    let mut decoder = Decoder::new(fixture.protocol_version);
    let mut staged: HashMap<u32, Vec<Event>> = HashMap::new();
    // Per streamed transaction: its savepoints' xids and the number of their first change.
    let mut savepoints: HashMap<u32, Vec<(u32, u32)>> = HashMap::new();
    let mut block: Option<u32> = None;
    let mut out = Vec::new();
    let mut undone = 0;
    for change in &fixture.changes {
        let bytes = common::unhex(&change.data);
        let msg = decoder.decode(&bytes).unwrap();
        let lsn: Lsn = change.lsn.parse().unwrap();
        let mut events = Vec::new();
        match &msg {
            Message::StreamStart(s) => block = Some(s.xid),
            Message::StreamStop => block = None,
            Message::StreamCommit(c) => {
                let commit = encoder.streamed_commit(c);
                for mut e in staged.remove(&c.xid).unwrap_or_default() {
                    e.commit_lsn = c.commit_lsn;
                    e.value = e.value.as_deref().map(|v| commit.bind(v));
                    out.push(e);
                }
                savepoints.remove(&c.xid);
            }
            Message::StreamAbort(a) if a.xid == a.subxid => {
                staged.remove(&a.xid);
                savepoints.remove(&a.xid);
            }
            Message::StreamAbort(a) => {
                let list = savepoints.entry(a.xid).or_default();
                if let Some(&(_, first)) = list.iter().find(|(sub, _)| *sub == a.subxid) {
                    let events = staged.entry(a.xid).or_default();
                    let before = events.len();
                    events.retain(|e| e.ordinal < 3 * first + 1);
                    undone += before - events.len();
                    list.retain(|(_, f)| *f < first);
                    encoder.rewind_stream(a.xid, first - 1);
                }
            }
            _ => {}
        }
        if let (Some(top), Some(sub)) = (block, msg.xid()) {
            let list = savepoints.entry(top).or_default();
            if sub != top && !list.iter().any(|(s, _)| *s == sub) {
                list.push((sub, encoder.stream_changes().unwrap() + 1));
            }
        }
        encoder.handle(lsn, &msg, &mut catalog, &mut events).unwrap();
        match block {
            Some(top) => staged.entry(top).or_default().extend(events),
            None => out.extend(events),
        }
    }
    assert!(staged.values().all(Vec::is_empty), "nothing staged is left over");
    (out, undone)
}

#[test]
fn staged_streams_bind_to_exactly_what_held_streams_produce() {
    let fixture = load_fixture("streaming_proto2.json");
    let held = encode_fixture(&fixture, &[]);
    let (staged, undone) = encode_fixture_staged(&fixture);
    assert!(undone > 0, "the fixture rolls a streamed savepoint back");
    assert_eq!(staged.len(), held.len());
    for (s, h) in staged.iter().zip(&held) {
        assert_eq!(s, h, "a staged, bound record is byte-identical to the held one");
    }
    assert!(held.iter().all(|e| !pgcdc_core::debezium::streamed::has_placeholders(e.value.as_deref().unwrap())));
}

#[test]
fn staged_streams_are_refused_with_transaction_metadata() {
    let opts = EncoderOptions::from_pairs([("provide.transaction.metadata", "true")]).unwrap();
    assert!(Encoder::new(opts, "db").stage_streams().is_err());
}

#[test]
fn prepared_transactions_emit_only_when_committed() {
    let fixture = load_fixture("twophase_proto3.json");
    let events = encode_fixture(&fixture, &[]);
    let summary: Vec<(Op, i64)> = events.iter().map(|e| (e.op, after_id(e))).collect();
    assert_eq!(summary, vec![(Op::Create, 1), (Op::Create, 2), (Op::Create, 3)]);
}

#[test]
fn positions_are_unique_and_stable() {
    let fixture = load_fixture("typematrix_proto1.json");
    let options = [("skipped.operations", "none"), ("provide.transaction.metadata", "true")];
    let a = encode_fixture(&fixture, &options);
    let b = encode_fixture(&fixture, &options);
    assert_eq!(a, b, "re-decoding the same WAL gives the same records");
    let positions: HashSet<(Lsn, u32)> = a.iter().map(|e| (e.commit_lsn, e.ordinal)).collect();
    assert_eq!(positions.len(), a.len(), "(commit_lsn, ordinal) identifies a record");
}

/// A feed whose options change must still recognise what it staged: the same change keeps
/// its position whatever the options emit for it.
#[test]
fn positions_do_not_depend_on_options() {
    use std::collections::HashMap;
    let fixture = load_fixture("typematrix_proto1.json");
    let variants: [&[(&str, &str)]; 4] = [
        &[],
        &[("tombstones.on.delete", "false")],
        &[("provide.transaction.metadata", "true"), ("skipped.operations", "none")],
        &[("skipped.operations", "c,u"), ("schemas.enable", "true")],
    ];
    let mut seen: HashMap<(Lsn, u32), (Op, Lsn)> = HashMap::new();
    let mut total = 0;
    for options in variants {
        for e in encode_fixture(&fixture, options) {
            total += 1;
            let entry = seen.entry((e.commit_lsn, e.ordinal)).or_insert((e.op, e.lsn));
            assert_eq!(*entry, (e.op, e.lsn), "position {} #{} names different records", e.commit_lsn, e.ordinal);
        }
    }
    assert!(total > seen.len(), "the variants share records");
    // A key change: d, tombstone, c at 3i+1, 3i+2, 3i+3.
    let events = encode_fixture(&fixture, &[]);
    let key_change: Vec<&Event> = events.iter().filter(|e| e.headers.iter().any(|(k, _)| k.ends_with("key"))).collect();
    assert_eq!(key_change.iter().map(|e| e.op).collect::<Vec<_>>(), [Op::Delete, Op::Tombstone, Op::Create]);
    let base = key_change[0].ordinal;
    assert_eq!(base % 3, 1);
    assert_eq!(key_change.iter().map(|e| e.ordinal).collect::<Vec<_>>(), [base, base + 1, base + 2]);
}

#[test]
fn excluded_schemas_produce_nothing_but_keep_positions() {
    let fixture = load_fixture("typematrix_proto1.json");
    let all = encode_fixture(&fixture, &[]);
    let opts = EncoderOptions::from_pairs([("provide.transaction.metadata", "true")]).unwrap();
    let mut encoder = Encoder::new(opts, &fixture.database);
    encoder.exclude_schema("public");
    let mut catalog = common::FixtureCatalog::new(&fixture);
    let mut decoder = pgcdc_core::pgoutput::Decoder::new(1);
    let mut out = Vec::new();
    for change in &fixture.changes {
        let bytes = common::unhex(&change.data);
        let msg = decoder.decode(&bytes).unwrap();
        encoder.handle(change.lsn.parse().unwrap(), &msg, &mut catalog, &mut out).unwrap();
    }
    // Only the logical message (not a table change) survives, with its BEGIN/END, and at
    // the position it has without the exclusion.
    let ops: Vec<Op> = out.iter().map(|e| e.op).collect();
    assert_eq!(ops, [Op::TxBegin, Op::Message, Op::TxEnd]);
    let message = all.iter().find(|e| e.op == Op::Message).unwrap();
    assert_eq!((out[1].commit_lsn, out[1].ordinal), (message.commit_lsn, message.ordinal));
}

#[test]
fn transaction_metadata_brackets_every_transaction() {
    let fixture = load_fixture("typematrix_proto1.json");
    let events = encode_fixture(&fixture, &[("topic.prefix", "tm"), ("provide.transaction.metadata", "true")]);
    // FORMAT.md §0: txmeta_noschema.jsonl has 82 records for this workload.
    assert_eq!(events.len(), 82);
    assert_eq!(events[0].op, Op::TxBegin);
    assert_eq!(&*events[0].topic, "tm.transaction");
    let begin = json(events[0].value.as_deref().unwrap());
    let change = json(events[1].value.as_deref().unwrap());
    let end = json(events[2].value.as_deref().unwrap());
    let xid = events[1].xid.unwrap();
    // BEGIN's id uses the first change's LSN, END's the commit end LSN.
    assert_eq!(begin["id"], format!("{xid}:{}", change["source"]["lsn"]));
    assert_eq!(change["transaction"]["id"], begin["id"]);
    assert_eq!(change["transaction"]["total_order"], 1);
    assert_eq!(end["status"], "END");
    assert_eq!(end["event_count"], 1);
    assert_eq!(end["data_collections"], json(r#"[{"data_collection":"public.tm_types","event_count":1}]"#));
    assert_eq!(end["ts_ms"], change["source"]["ts_ms"]);
    // The TRUNCATE-only transaction (skipped by default) still has BEGIN and an empty END.
    let empty_end = events
        .iter()
        .filter(|e| e.op == Op::TxEnd)
        .map(|e| json(e.value.as_deref().unwrap()))
        .find(|v| v["event_count"] == 0)
        .expect("END of the truncate transaction");
    assert_eq!(empty_end["data_collections"], json("[]"));
    // Tombstones are not counted.
    let tx_with_delete = events.iter().position(|e| e.op == Op::Tombstone).unwrap();
    let end_after = events[tx_with_delete..].iter().find(|e| e.op == Op::TxEnd).unwrap();
    assert_eq!(json(end_after.value.as_deref().unwrap())["event_count"], 1);
}

#[test]
fn truncate_events_when_not_skipped() {
    let fixture = load_fixture("typematrix_proto1.json");
    let events = encode_fixture(&fixture, &[("topic.prefix", "tm"), ("skipped.operations", "none")]);
    assert_eq!(events.len(), 35, "FORMAT.md: allops_noschema.jsonl has 35 records");
    let t: Vec<&Event> = events.iter().filter(|e| e.op == Op::Truncate).collect();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].key, None);
    assert_eq!(&*t[0].topic, "tm.public.tm_nopk");
    let v = json(t[0].value.as_deref().unwrap());
    assert_eq!(v["op"], "t");
    assert!(v["before"].is_null() && v["after"].is_null());
    assert_eq!(v["source"]["table"], "tm_nopk");
}

#[test]
fn schema_form_wraps_the_same_payload() {
    let fixture = load_fixture("typematrix_proto1.json");
    let plain = encode_fixture(&fixture, &[("topic.prefix", "tm")]);
    let wrapped = encode_fixture(&fixture, &[("topic.prefix", "tm"), ("schemas.enable", "true")]);
    assert_eq!(plain.len(), wrapped.len());
    for (p, w) in plain.iter().zip(&wrapped) {
        match (&p.value, &w.value) {
            (Some(pv), Some(wv)) => {
                let wv = json(wv);
                assert_eq!(wv["payload"], json(pv));
                let schema = &wv["schema"];
                assert_eq!(schema["type"], "struct");
                // Every payload field is described by the schema, in order.
                if p.op != Op::Message {
                    let names: Vec<&str> =
                        schema["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
                    assert_eq!(names, ["before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"]);
                    let after_fields = schema["fields"][1]["fields"].as_array().unwrap();
                    let after = &wv["payload"]["after"];
                    if let Some(obj) = after.as_object() {
                        let mut described: Vec<&str> =
                            after_fields.iter().map(|f| f["field"].as_str().unwrap()).collect();
                        described.sort_unstable();
                        let present: Vec<&str> = obj.keys().map(String::as_str).collect(); // sorted map
                        assert_eq!(described, present);
                    }
                }
            }
            (None, None) => assert_eq!(p.op, Op::Tombstone),
            other => panic!("value presence differs: {other:?}"),
        }
        if let (Some(pk), Some(wk)) = (&p.key, &w.key) {
            assert_eq!(json(wk)["payload"], json(pk));
        }
    }
    // FORMAT.md §1: the serial key's schema.
    assert_eq!(
        json(wrapped[0].key.as_deref().unwrap())["schema"],
        json(
            r#"{"type":"struct","fields":[{"type":"int32","optional":false,"default":0,"field":"id"}],"optional":false,"name":"tm.public.tm_types.Key"}"#
        )
    );
}

// ---- hand-built streams --------------------------------------------------------------

const REL: u32 = 16400;

fn relation(identity: ReplicaIdentity) -> Message<'static> {
    let col =
        |name: &str, oid, key| RelationColumn { is_key: key, name: name.into(), type_oid: oid, type_modifier: -1 };
    Message::Relation(Relation {
        xid: None,
        id: REL,
        namespace: "public".into(),
        name: "docs".into(),
        replica_identity: identity,
        columns: vec![col("id", 23, true), col("body", 25, false), col("tags", 1009, false), col("n", 23, false)],
    })
}

fn tuple<'a>(cols: &[ColumnData<'a>]) -> TupleData<'a> {
    TupleData { columns: cols.to_vec() }
}

fn run(options: &[(&str, &str)], identity: ReplicaIdentity, change: Message<'_>) -> Result<Vec<Event>, EncodeError> {
    let mut enc = Encoder::new(EncoderOptions::from_pairs(options.iter().copied()).unwrap(), "db");
    let mut out = Vec::new();
    let begin = Message::Begin(Begin { final_lsn: Lsn(0x500), commit_time: 0, xid: 77 });
    let commit = Message::Commit(Commit { flags: 0, commit_lsn: Lsn(0x500), end_lsn: Lsn(0x530), commit_time: 0 });
    for (lsn, m) in [(0x100, &relation(identity)), (0x100, &begin), (0x200, &change), (0x500, &commit)] {
        enc.handle(Lsn(lsn), m, &mut NoCatalog, &mut out)?;
    }
    Ok(out)
}

fn toast_update(old: Option<OldTuple<'static>>) -> Message<'static> {
    use ColumnData::*;
    Message::Update(Update {
        xid: None,
        relation_id: REL,
        old,
        new: tuple(&[Text(b"1"), UnchangedToast, UnchangedToast, Text(b"2")]),
    })
}

#[test]
fn unchanged_toast_is_listed_not_faked() {
    let events = run(&[], ReplicaIdentity::Default, toast_update(None)).unwrap();
    let v = json(events[0].value.as_deref().unwrap());
    assert_eq!(v["after"], json(r#"{"id":1,"n":2}"#));
    assert_eq!(v["unchanged_columns"], json(r#"["body","tags"]"#));
    assert_eq!(events[0].key.as_deref(), Some(r#"{"id":1}"#), "replica identity key without catalog");
}

#[test]
fn unchanged_toast_placeholder_mode_matches_debezium() {
    let opts = [("unchanged.toast.handling.mode", "placeholder")];
    let events = run(&opts, ReplicaIdentity::Default, toast_update(None)).unwrap();
    let v = json(events[0].value.as_deref().unwrap());
    assert_eq!(
        v["after"],
        json(r#"{"id":1,"body":"__debezium_unavailable_value","tags":["__debezium_unavailable_value"],"n":2}"#)
    );
    assert!(v.get("unchanged_columns").is_none());
}

#[test]
fn unchanged_toast_is_filled_from_the_full_old_row() {
    use ColumnData::*;
    let old = OldTuple::Full(tuple(&[Text(b"1"), Text(b"long text"), Text(b"{a,b}"), Text(b"1")]));
    let events = run(&[], ReplicaIdentity::Full, toast_update(Some(old))).unwrap();
    let v = json(events[0].value.as_deref().unwrap());
    assert_eq!(v["before"], json(r#"{"id":1,"body":"long text","tags":["a","b"],"n":1}"#));
    assert_eq!(v["after"], json(r#"{"id":1,"body":"long text","tags":["a","b"],"n":2}"#));
    assert!(v.get("unchanged_columns").is_none());
    assert_eq!(events[0].key, None, "REPLICA IDENTITY FULL without catalog: no key");
}

#[test]
fn bad_input_is_an_error_naming_the_column() {
    use ColumnData::*;
    let insert = |cols| Message::Insert(Insert { xid: None, relation_id: REL, new: tuple(cols) });
    let e = run(&[], ReplicaIdentity::Default, insert(&[Text(b"x1"), Null, Null, Null])).unwrap_err();
    assert!(e.to_string().starts_with("column public.docs.id: cannot convert \"x1\""), "{e}");
    let e = run(&[], ReplicaIdentity::Default, insert(&[Text(b"1"), Text(b"\xff"), Null, Null])).unwrap_err();
    assert_eq!(e.to_string(), "column public.docs.body: text is not valid UTF-8");
    let e = run(&[], ReplicaIdentity::Default, insert(&[Text(b"1")])).unwrap_err();
    assert_eq!(e.to_string(), "tuple of public.docs has 1 columns, its Relation message declared 4");
    let unknown = Message::Insert(Insert { xid: None, relation_id: 999, new: tuple(&[]) });
    let e = run(&[], ReplicaIdentity::Default, unknown).unwrap_err();
    assert_eq!(e, EncodeError::UnknownRelation(999));
}

#[test]
fn non_transactional_message_has_no_txid() {
    use pgcdc_core::pgoutput::LogicalMessage;
    let mut enc = Encoder::new(EncoderOptions::default(), "db");
    let mut out = Vec::new();
    let m = Message::Message(LogicalMessage {
        xid: None,
        transactional: false,
        lsn: Lsn(0x900),
        prefix: "audit",
        content: b"\x00\x01",
    });
    enc.handle(Lsn(0x900), &m, &mut NoCatalog, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].commit_lsn, out[0].ordinal, out[0].xid), (Lsn(0x900), 0, None));
    let v = json(out[0].value.as_deref().unwrap());
    assert!(v["source"]["txId"].is_null());
    assert_eq!(v["message"], json(r#"{"prefix":"audit","content":"AAE="}"#));
    assert_eq!(out[0].key.as_deref(), Some(r#"{"prefix":"audit"}"#));
}

/// `double_json_noschema.jsonl` is not shipped; FORMAT.md §6 gives its values for row 1.
#[test]
fn double_json_interval_string_values_match_format_md() {
    let fixture = load_fixture("typematrix_proto1.json");
    let events = encode_fixture(
        &fixture,
        &[("decimal.handling.mode", "double"), ("hstore.handling.mode", "json"), ("interval.handling.mode", "string")],
    );
    let text = events[0].value.as_deref().unwrap();
    for expected in [
        r#""c_numeric":1.23456781234E7,"#,
        r#""c_numeric_any":1.0E-21,"#,
        r#""c_money":12.34,"#,
        r#""c_interval":"P1Y2M3DT4H5M6.789S","#,
        r#""c_hstore":"{\"a\":\"1\",\"b\":null}","#,
    ] {
        assert!(text.contains(expected), "{expected} not in {text}");
    }
    let edge = events[2].value.as_deref().unwrap();
    assert!(edge.contains(r#""c_numeric_any":"NaN","#), "{edge}");
}

/// FORMAT.md §6: `hstore.handling.mode=map` and `binary.handling.mode=hex` (map_unknown_hex).
#[test]
fn map_and_hex_modes_match_format_md() {
    let fixture = load_fixture("typematrix_proto1.json");
    let events = encode_fixture(&fixture, &[("hstore.handling.mode", "map"), ("binary.handling.mode", "hex")]);
    let text = events[0].value.as_deref().unwrap();
    assert!(text.contains(r#""c_hstore":{"a":"1","b":null},"#), "{text}");
    assert!(text.contains(r#""c_bytea":"deadbeef00","#), "{text}");
}

// ---- headers (FORMAT.md §2) ----------------------------------------------------------

const CONTEXT: [&str; 4] = [
    "__debezium.context.connectorLogicalName",
    "__debezium.context.taskId",
    "__debezium.context.connectorName",
    "__debezium.context.runId",
];

fn header_names(e: &Event) -> Vec<&str> {
    e.headers.iter().map(|(n, _)| n.as_str()).collect()
}

fn header<'e>(e: &'e Event, name: &str) -> &'e str {
    e.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn context_headers_on_change_records_and_tombstones_only() {
    let fixture = load_fixture("typematrix_proto1.json");
    let opts = [("topic.prefix", "tm"), ("provide.transaction.metadata", "true"), ("skipped.operations", "none")];
    let events = encode_fixture(&fixture, &opts);
    assert!(events.iter().any(|e| e.op == Op::Truncate) && events.iter().any(|e| e.op == Op::Tombstone));
    for e in &events {
        let names = header_names(e);
        match e.op {
            Op::Message | Op::TxBegin | Op::TxEnd => assert!(names.is_empty(), "{:?} has headers {names:?}", e.op),
            _ => {
                // Key-change headers first, then the context headers in Debezium's order.
                assert_eq!(names[names.len() - 4..], CONTEXT, "{:?}", e.op);
                assert_eq!(header(e, CONTEXT[0]), "\"tm\"");
                assert_eq!(header(e, CONTEXT[1]), "\"0\"");
                assert_eq!(header(e, CONTEXT[2]), "\"postgresql\"");
                assert_eq!(header(e, CONTEXT[3]), format!("\"{}\"", common::FIXED_RUN_ID));
            }
        }
    }
}

#[test]
fn extended_headers_can_be_left_out() {
    let fixture = load_fixture("typematrix_proto1.json");
    let events = encode_fixture(&fixture, &[("extended.headers.enabled", "false")]);
    let with_headers: Vec<Vec<&str>> = events.iter().map(header_names).filter(|h| !h.is_empty()).collect();
    // Only the key change keeps its headers (d, tombstone: newkey; c: oldkey).
    assert_eq!(with_headers, [vec!["__debezium.newkey"], vec!["__debezium.newkey"], vec!["__debezium.oldkey"]]);
}

#[test]
fn without_a_run_id_the_run_id_header_is_left_out() {
    let mut enc = Encoder::new(EncoderOptions::default(), "db");
    let mut out = Vec::new();
    let insert = Message::Insert(Insert {
        xid: None,
        relation_id: REL,
        new: tuple(&[ColumnData::Text(b"1"), ColumnData::Null, ColumnData::Null, ColumnData::Null]),
    });
    for (lsn, m) in [(0x100, &relation(ReplicaIdentity::Default)), (0x200, &insert)] {
        enc.handle(Lsn(lsn), m, &mut NoCatalog, &mut out).unwrap();
    }
    assert_eq!(header_names(&out[0]), CONTEXT[..3]);
    assert_eq!(header(&out[0], CONTEXT[0]), "\"pgcdc\"", "the default topic.prefix");
}

/// With schemas on, every header value is `{"schema":…,"payload":…}` (default.jsonl D:1, D:10).
#[test]
fn header_schemas_wrap_every_header() {
    let fixture = load_fixture("typematrix_proto1.json");
    let events = encode_fixture(&fixture, &[("topic.prefix", "tm"), ("schemas.enable", "true")]);
    let string_schema = r#"{"schema":{"type":"string","optional":false},"payload":"#;
    assert_eq!(header(&events[0], CONTEXT[0]), format!("{string_schema}\"tm\"}}"));
    assert_eq!(header(&events[0], CONTEXT[3]), format!("{string_schema}\"{}\"}}", common::FIXED_RUN_ID));
    let delete = events.iter().find(|e| e.headers.iter().any(|(n, _)| n == "__debezium.newkey")).unwrap();
    let create = events.iter().find(|e| e.headers.iter().any(|(n, _)| n == "__debezium.oldkey")).unwrap();
    let key_schema = json(create.key.as_deref().unwrap())["schema"].clone();
    let newkey = json(header(delete, "__debezium.newkey"));
    assert_eq!(newkey["schema"], key_schema, "the key's own schema");
    assert_eq!(newkey["payload"], json(r#"{"id":3}"#));
    assert_eq!(json(header(create, "__debezium.oldkey"))["payload"], json(r#"{"id":2}"#));

    // header.converter.schemas.enable decides on its own, whatever the order.
    for opts in [
        [("header.converter.schemas.enable", "false"), ("schemas.enable", "true")],
        [("schemas.enable", "true"), ("header.converter.schemas.enable", "false")],
    ] {
        let events = encode_fixture(&fixture, &opts);
        assert_eq!(header(&events[0], CONTEXT[2]), "\"postgresql\"");
        assert!(json(events[0].value.as_deref().unwrap()).get("schema").is_some());
    }
    let events = encode_fixture(&fixture, &[("header.converter.schemas.enable", "true")]);
    assert_eq!(header(&events[0], CONTEXT[2]), format!("{string_schema}\"postgresql\"}}"));
    let delete = events.iter().find(|e| e.headers.iter().any(|(n, _)| n == "__debezium.newkey")).unwrap();
    assert_eq!(json(header(delete, "__debezium.newkey"))["payload"], json(r#"{"id":3}"#));
    assert_eq!(delete.key.as_deref(), Some(r#"{"id":2}"#), "keys stay bare");
}

/// FORMAT.md §4/§5: the message and transaction key schemas carry a version, and a data
/// collection item of transaction metadata is optional.
#[test]
fn message_and_transaction_schemas_match_debezium() {
    let fixture = load_fixture("typematrix_proto1.json");
    let events = encode_fixture(&fixture, &[("provide.transaction.metadata", "true"), ("schemas.enable", "true")]);
    let begin = events.iter().find(|e| e.op == Op::TxBegin).unwrap();
    assert_eq!(
        json(begin.key.as_deref().unwrap())["schema"],
        json(
            r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"id"}],"optional":false,"name":"io.debezium.connector.common.TransactionMetadataKey","version":1}"#
        )
    );
    let end = json(events.iter().find(|e| e.op == Op::TxEnd).unwrap().value.as_deref().unwrap());
    let collections = &end["schema"]["fields"][3];
    assert_eq!(collections["field"], "data_collections");
    assert_eq!(collections["items"]["name"], "event.collection");
    assert_eq!(collections["items"]["optional"], true);
    let message = events.iter().find(|e| e.op == Op::Message).unwrap();
    assert_eq!(
        json(message.key.as_deref().unwrap())["schema"],
        json(
            r#"{"type":"struct","fields":[{"type":"string","optional":true,"field":"prefix"}],"optional":false,"name":"io.debezium.connector.postgresql.MessageKey","version":1}"#
        )
    );
}

/// FORMAT.md §6 (map_unknown_hex): hex mode leaves bit/varbit as Bits bytes, and
/// `include.unknown.datatypes` sends a composite as the bytes of its text.
#[test]
fn hex_mode_keeps_bits_and_unknown_types_are_their_text_bytes() {
    let fixture = load_fixture("typematrix_proto1.json");
    let opts = [
        ("schemas.enable", "true"),
        ("hstore.handling.mode", "map"),
        ("include.unknown.datatypes", "true"),
        ("binary.handling.mode", "hex"),
        ("skipped.operations", "none"),
    ];
    let events = encode_fixture(&fixture, &opts);
    let v = json(events[0].value.as_deref().unwrap());
    let after = &v["payload"]["after"];
    assert_eq!(after["c_bit"], "Cg==");
    assert_eq!(after["c_varbit"], "Bg==");
    assert_eq!(after["c_composite"], "28224d61696e205374222c313233343529");
    let fields = v["schema"]["fields"][1]["fields"].as_array().unwrap();
    let field = |name: &str| fields.iter().find(|f| f["field"] == name).unwrap().clone();
    assert_eq!(
        field("c_bit"),
        json(
            r#"{"type":"bytes","optional":true,"name":"io.debezium.data.Bits","version":1,"parameters":{"length":"4"},"field":"c_bit"}"#
        )
    );
    assert_eq!(field("c_varbit")["type"], "bytes");
    assert_eq!(field("c_composite"), json(r#"{"type":"string","optional":true,"field":"c_composite"}"#));
    // Without include.unknown.datatypes pgcdc keeps the composite as an object.
    let events = encode_fixture(&fixture, &[("binary.handling.mode", "hex")]);
    let after = &json(events[0].value.as_deref().unwrap())["after"];
    assert_eq!(after["c_composite"], json(r#"{"street":"Main St","zip":12345}"#));
    assert_eq!(after["c_bit"], "Cg==");
}

// ---- NULL and column defaults (FORMAT.md §6, supplement X:5, X:7) ---------------------

/// `docs` with defaults: `body text DEFAULT 'dflt'`, `n int DEFAULT 7`.
struct DefaultsCatalog;

impl pgcdc_core::debezium::CatalogSource for DefaultsCatalog {
    fn type_rows(&mut self, _oids: &[u32]) -> Result<Vec<pgcdc_core::catalog::TypeRow>, String> {
        Ok(Vec::new())
    }
    fn table_info(&mut self, _relation_id: u32) -> Result<pgcdc_core::catalog::TableInfo, String> {
        Ok(pgcdc_core::catalog::TableInfo::from_row(
            vec!["id".into()],
            vec!["body".into(), "n".into()],
            vec!["'dflt'::text".into(), "7".into()],
            vec!["id".into()],
        ))
    }
}

fn rows_with_nulls(options: &[(&str, &str)]) -> (Json, Json) {
    use ColumnData::*;
    let mut enc = Encoder::new(EncoderOptions::from_pairs(options.iter().copied()).unwrap(), "db");
    let mut out = Vec::new();
    let begin = Message::Begin(Begin { final_lsn: Lsn(0x500), commit_time: 0, xid: 77 });
    let insert = Message::Insert(Insert { xid: None, relation_id: REL, new: tuple(&[Text(b"1"), Null, Null, Null]) });
    let delete = Message::Delete(pgcdc_core::pgoutput::Delete {
        xid: None,
        relation_id: REL,
        old: OldTuple::Key(tuple(&[Text(b"1"), Null, Null, Null])),
    });
    let commit = Message::Commit(Commit { flags: 0, commit_lsn: Lsn(0x500), end_lsn: Lsn(0x530), commit_time: 0 });
    for (lsn, m) in [
        (0x100, &relation(ReplicaIdentity::Default)),
        (0x100, &begin),
        (0x200, &insert),
        (0x300, &delete),
        (0x500, &commit),
    ] {
        enc.handle(Lsn(lsn), m, &mut DefaultsCatalog, &mut out).unwrap();
    }
    let value = |e: &Event| {
        let v = json(e.value.as_deref().unwrap());
        v.get("payload").cloned().unwrap_or(v)
    };
    (value(&out[0])["after"].clone(), value(&out[1])["before"].clone())
}

#[test]
fn nulls_stay_nulls_unless_replace_null_with_default() {
    let (after, before) = rows_with_nulls(&[]);
    assert_eq!(after, json(r#"{"id":1,"body":null,"tags":null,"n":null}"#));
    assert_eq!(before, json(r#"{"id":1,"body":null,"tags":null,"n":null}"#));
    for schemas in ["false", "true"] {
        let opts = [("value.converter.replace.null.with.default", "true"), ("schemas.enable", schemas)];
        let (after, before) = rows_with_nulls(&opts);
        // As JsonConverter: the schema's default stands in for NULL; no default, no change.
        assert_eq!(after, json(r#"{"id":1,"body":"dflt","tags":null,"n":7}"#), "schemas {schemas}");
        assert_eq!(before, json(r#"{"id":1,"body":"dflt","tags":null,"n":7}"#), "schemas {schemas}");
    }
}

// ---- message.prefix.include.list / exclude.list (issue 7.5) ----------------------------

fn messages(options: &[(&str, &str)], prefixes: &[(&str, bool)]) -> Vec<Event> {
    use pgcdc_core::pgoutput::LogicalMessage;
    let mut enc = Encoder::new(EncoderOptions::from_pairs(options.iter().copied()).unwrap(), "db");
    let mut out = Vec::new();
    let begin = Message::Begin(Begin { final_lsn: Lsn(0x5000), commit_time: 0, xid: 77 });
    enc.handle(Lsn(0x100), &begin, &mut NoCatalog, &mut out).unwrap();
    for (i, (prefix, transactional)) in prefixes.iter().enumerate() {
        let lsn = Lsn(0x200 + i as u64 * 0x10);
        let m =
            Message::Message(LogicalMessage { xid: None, transactional: *transactional, lsn, prefix, content: b"x" });
        enc.handle(lsn, &m, &mut NoCatalog, &mut out).unwrap();
    }
    let commit = Message::Commit(Commit { flags: 0, commit_lsn: Lsn(0x5000), end_lsn: Lsn(0x5030), commit_time: 0 });
    enc.handle(Lsn(0x5000), &commit, &mut NoCatalog, &mut out).unwrap();
    out
}

fn prefixes_of(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.op == Op::Message)
        .map(|e| json(e.key.as_deref().unwrap())["prefix"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn message_prefix_lists_filter_messages_and_keep_positions() {
    let sent =
        [("outbox", true), ("evil", true), ("outbox.v2", false), ("OUTBOX", true), ("x,y", true), ("outboxes", true)];
    let all = messages(&[], &sent);
    assert_eq!(prefixes_of(&all), ["outbox", "evil", "outbox.v2", "OUTBOX", "x,y", "outboxes"]);
    // Whole-prefix, case-insensitive regular expressions; `\,` is a comma.
    let included = messages(&[("message.prefix.include.list", r"outbox, outbox\.v\d+ ,x\,y")], &sent);
    assert_eq!(prefixes_of(&included), ["outbox", "outbox.v2", "OUTBOX", "x,y"]);
    let excluded = messages(&[("message.prefix.exclude.list", "evil,outbox.*")], &sent);
    assert_eq!(prefixes_of(&excluded), ["x,y"]);
    // A kept message has the position it has without the filter.
    for kept in included.iter().chain(&excluded) {
        let same = all.iter().find(|e| e.lsn == kept.lsn).unwrap();
        assert_eq!((kept.commit_lsn, kept.ordinal), (same.commit_lsn, same.ordinal));
    }
    // A filtered transactional message brings no BEGIN/END of its own.
    let opts = [("provide.transaction.metadata", "true"), ("message.prefix.include.list", "nothing")];
    assert!(messages(&opts, &sent).is_empty());
    // An empty list is "not set".
    assert_eq!(prefixes_of(&messages(&[("message.prefix.exclude.list", " ")], &sent)).len(), 6);
}

#[test]
fn message_prefix_list_errors_are_explained() {
    let both = EncoderOptions::from_pairs([
        ("message.prefix.include.list", "outbox"),
        ("message.prefix.exclude.list", "evil"),
    ])
    .unwrap_err();
    assert_eq!(
        both.to_string(),
        "options \"message.prefix.exclude.list\" and \"message.prefix.include.list\" cannot both be set; use one of them"
    );
    let bad = EncoderOptions::from_pairs([("message.prefix.include.list", "ok,(unclosed")]).unwrap_err();
    assert!(
        bad.to_string()
            .starts_with("invalid regular expression \"(unclosed\" in option \"message.prefix.include.list\""),
        "{bad}"
    );
}
