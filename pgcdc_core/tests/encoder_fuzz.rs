//! The encoder never panics: any relation shape, any column text, any option set, any
//! message order gives records or an error.

use pgcdc_core::debezium::{Encoder, EncoderOptions, NoCatalog};
use pgcdc_core::pgoutput::{
    Begin, ColumnData, Commit, Delete, Insert, LogicalMessage, Message, OldTuple, Relation, RelationColumn,
    ReplicaIdentity, Truncate, TupleData, Update,
};
use pgcdc_core::Lsn;
use proptest::prelude::*;

/// Built-in types and arrays of them, with typmods that matter.
const TYPES: &[(u32, i32)] = &[
    (16, -1),
    (20, -1),
    (21, -1),
    (23, -1),
    (26, -1),
    (700, -1),
    (701, -1),
    (1700, -1),
    (1700, (12 << 16 | 4) + 4),
    (790, -1),
    (25, -1),
    (17, -1),
    (114, -1),
    (3802, -1),
    (2950, -1),
    (1082, -1),
    (1083, 3),
    (1266, -1),
    (1114, -1),
    (1184, 3),
    (1186, -1),
    (1560, 4),
    (1562, -1),
    (600, -1),
    (3904, -1),
    (1007, -1),
    (1009, -1),
    (1231, -1),
    (1115, -1),
    (99999, -1),
];

fn column_data() -> impl Strategy<Value = (u8, String)> {
    let text = prop_oneof![
        any::<String>(),
        "[-0-9.eE+]{0,24}",
        "\\{[0-9,{}NUL\" ]{0,20}\\}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}( [0-9:.+-]{0,20})?( BC)?",
        "-?[0-9]{1,3} (years?|mons?|days?) [0-9:.-]{0,12}",
        Just("infinity".to_owned()),
        Just("NaN".to_owned()),
        "\\\\x[0-9a-f]{0,12}",
        "\\([0-9.,e-]{0,12}\\)",
    ];
    (0u8..4, text)
}

fn options() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    prop::sample::subsequence(
        vec![
            ("decimal.handling.mode", "string"),
            ("decimal.handling.mode", "double"),
            ("time.precision.mode", "connect"),
            ("binary.handling.mode", "hex"),
            ("hstore.handling.mode", "map"),
            ("interval.handling.mode", "string"),
            ("skipped.operations", "none"),
            ("provide.transaction.metadata", "true"),
            ("schemas.enable", "true"),
            ("unchanged.toast.handling.mode", "placeholder"),
        ],
        0..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn encoder_never_panics(
        types in prop::collection::vec((0..TYPES.len(), any::<bool>()), 1..6),
        rows in prop::collection::vec(prop::collection::vec(column_data(), 0..7), 1..5),
        identity in 0u8..4,
        opts in options(),
        order in prop::collection::vec(0u8..8, 1..12),
    ) {
        let relation = Relation {
            xid: None,
            id: 7,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: [ReplicaIdentity::Default, ReplicaIdentity::Full, ReplicaIdentity::Index, ReplicaIdentity::Nothing][identity as usize],
            columns: types.iter().enumerate().map(|(i, &(t, key))| RelationColumn {
                is_key: key,
                name: format!("c{i}"),
                type_oid: TYPES[t].0,
                type_modifier: TYPES[t].1,
            }).collect(),
        };
        let tuples: Vec<TupleData<'_>> = rows.iter().map(|row| TupleData {
            columns: row.iter().map(|(kind, text)| match kind {
                0 => ColumnData::Null,
                1 => ColumnData::UnchangedToast,
                2 => ColumnData::Binary(text.as_bytes()),
                _ => ColumnData::Text(text.as_bytes()),
            }).collect(),
        }).collect();
        let mut enc = Encoder::new(EncoderOptions::from_pairs(opts).unwrap(), "db");
        let mut out = Vec::new();
        let _ = enc.handle(Lsn(1), &Message::Relation(relation), &mut NoCatalog, &mut out);
        for (n, step) in order.iter().enumerate() {
            let t = &tuples[n % tuples.len()];
            let lsn = Lsn(100 + n as u64);
            let msg = match step {
                0 => Message::Begin(Begin { final_lsn: Lsn(1000), commit_time: n as i64, xid: 5 }),
                1 => Message::Commit(Commit { flags: 0, commit_lsn: Lsn(1000), end_lsn: Lsn(1010), commit_time: 0 }),
                2 => Message::Insert(Insert { xid: None, relation_id: 7, new: t.clone() }),
                3 => Message::Update(Update { xid: None, relation_id: 7, old: Some(OldTuple::Full(tuples[0].clone())), new: t.clone() }),
                4 => Message::Update(Update { xid: None, relation_id: 7, old: Some(OldTuple::Key(t.clone())), new: tuples[0].clone() }),
                5 => Message::Delete(Delete { xid: None, relation_id: 7, old: OldTuple::Key(t.clone()) }),
                6 => Message::Truncate(Truncate { xid: None, cascade: false, restart_identity: false, relation_ids: vec![7, 8] }),
                _ => Message::Message(LogicalMessage { xid: None, transactional: n % 2 == 0, lsn, prefix: "p", content: b"x" }),
            };
            let _ = enc.handle(lsn, &msg, &mut NoCatalog, &mut out);
        }
        for e in &out {
            if let Some(v) = &e.value {
                prop_assert!(serde_json::from_str::<serde_json::Value>(v).is_ok(), "invalid JSON: {}", v);
            }
            if let Some(k) = &e.key {
                prop_assert!(serde_json::from_str::<serde_json::Value>(k).is_ok(), "invalid key JSON: {}", k);
            }
        }
    }
}
