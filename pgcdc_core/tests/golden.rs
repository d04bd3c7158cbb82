//! Golden test: real pgoutput bytes of the type-matrix workload (`tests/fixtures/debezium/typematrix*.sql`,
//! captured from PostgreSQL 15 by `tests/capture_golden.py`) encode to the records real
//! Debezium 3.6.3 produced for the same workload, byte for byte.
//!
//! Only run-dependent fields are normalised (timestamps, LSNs, txIds, `sequence`), plus the
//! intentional differences listed in `INTENTIONAL_DIFFERENCES`, each checked to be present in
//! our output with the correct value before it is mapped to Debezium's.
//!
//! Fixtures: `pgcdc_core/tests/fixtures/` or `$PGCDC_GOLDEN_DIR` (a fresh capture).
//! Debezium's files: `tests/fixtures/debezium/` (copied from Debezium 3.6.3's output; see its README).

mod common;

use common::{encode_fixture, load_fixture, shared_dir};
use pgcdc_core::debezium::Event;
use regex::Regex;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct GoldenLine<'a> {
    #[serde(borrow)]
    key: &'a RawValue,
    #[serde(borrow)]
    value: &'a RawValue,
    topic: String,
    #[serde(default)]
    headers: Headers,
}

/// A record's headers in their order, each value as its verbatim JSON text.
#[derive(Debug, Default, PartialEq)]
struct Headers(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> serde::de::Visitor<'de> for InOrder {
            type Value = Headers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of headers")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut headers = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    headers.push((name, value.get().to_owned()));
                }
                Ok(Headers(headers))
            }
        }
        d.deserialize_map(InOrder)
    }
}

/// The run id differs per run: it must be a UUIDv7 string, then compares by place only.
fn normalise_headers(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    let uuid_v7 = Regex::new(r#"^"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"$"#).unwrap();
    headers
        .into_iter()
        .map(|(name, value)| {
            if name != RUN_ID_HEADER {
                return (name, value);
            }
            assert!(uuid_v7.is_match(&value), "run id {value} is not a UUIDv7 string");
            (name, "\"<run id>\"".to_owned())
        })
        .collect()
}

const RUN_ID_HEADER: &str = "__debezium.context.runId";

/// One record as text, for comparison.
#[derive(Debug, PartialEq)]
struct Record {
    topic: String,
    key: String,
    value: String,
    /// Every header, in order.
    headers: Vec<(String, String)>,
}

/// (what our output says, what Debezium says, why ours differs). Each must occur in our
/// output exactly `count` times.
const INTENTIONAL_DIFFERENCES: &[(&str, &str, usize, &str)] = &[
    (
        r#""c_2d_arr":[[1,2],[3,4]],"#,
        r#""c_2d_arr":[null,null],"#,
        2, // insert of row 1 and its update (D:1, D:4)
        "Debezium writes one null per outer element of a multi-dimensional array; pgcdc nests arrays",
    ),
    (
        r#""c_composite":{"street":"Main St","zip":12345},"#,
        "",
        2,
        "Debezium drops composite-type columns (no converter); pgcdc writes the fields as an object",
    ),
    (
        r#""c_composite":null,"#,
        "",
        3, // the all-NULL row 2 (insert and delete) and the edge-value row 3
        "Debezium drops composite-type columns, even when NULL",
    ),
    (
        r#""c_date":2147483647,"#,
        r#""c_date":-2147472692,"#,
        1,
        "date 'infinity': pgcdc writes i32::MAX days (PostgreSQL's own sentinel); Debezium writes garbage",
    ),
];

/// Same, for decimal.handling.mode=string, where numeric NaN is a string in both.
const INTENTIONAL_DIFFERENCES_PRECISE_ONLY: &[(&str, &str, usize, &str)] = &[(
    r#""c_numeric_any":"NaN","#,
    r#""c_numeric_any":null,"#,
    1,
    "numeric NaN in precise mode: Debezium writes null and loses the value; pgcdc writes \"NaN\"",
)];

fn normalise(text: &str) -> String {
    let numbers = Regex::new(r#""(ts_ms|ts_us|ts_ns|txId|lsn)":-?\d+"#).unwrap();
    let sequence = Regex::new(r#""sequence":"(?:[^"\\]|\\.)*""#).unwrap();
    let text = numbers.replace_all(text, "\"$1\":0");
    sequence.replace_all(&text, "\"sequence\":\"[…]\"").into_owned()
}

fn our_records(events: &[Event], differences: &[(&str, &str, usize, &str)]) -> Vec<Record> {
    let mut records: Vec<Record> = events
        .iter()
        .map(|e| Record {
            topic: e.topic.to_string(),
            key: e.key.clone().unwrap_or_else(|| "null".into()),
            value: normalise(e.value.as_deref().unwrap_or("null")),
            headers: normalise_headers(e.headers.to_vec()),
        })
        .collect();
    for (ours, theirs, count, why) in differences {
        let found: usize = records.iter().map(|r| r.value.matches(ours).count()).sum();
        assert_eq!(found, *count, "intentional difference not found as expected ({why}): {ours}");
        for r in &mut records {
            r.value = r.value.replace(ours, theirs);
        }
    }
    records
}

fn golden_records(file: &str) -> Vec<Record> {
    let path = shared_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let g: GoldenLine = serde_json::from_str(line).unwrap();
            Record {
                topic: g.topic,
                key: g.key.get().to_owned(),
                value: normalise(g.value.get()),
                headers: normalise_headers(g.headers.0),
            }
        })
        .collect()
}

fn assert_matches_golden(fixture_file: &str, golden_file: &str, options: &[(&str, &str)], precise: bool) {
    let fixture = load_fixture(fixture_file);
    let events = encode_fixture(&fixture, options);
    let mut differences: Vec<_> = INTENTIONAL_DIFFERENCES.to_vec();
    if precise {
        differences.extend_from_slice(INTENTIONAL_DIFFERENCES_PRECISE_ONLY);
    }
    let ours = our_records(&events, &differences);
    let theirs = golden_records(golden_file);
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(o.topic, t.topic, "record {} topic", i + 1);
        assert_eq!(o.key, t.key, "record {} key", i + 1);
        assert_eq!(o.headers, t.headers, "record {} headers", i + 1);
        if o.value != t.value {
            let at = o.value.bytes().zip(t.value.bytes()).position(|(a, b)| a != b).unwrap_or(0);
            let from = at.saturating_sub(80);
            panic!(
                "record {} value differs at byte {at}:\n ours:     …{}\n debezium: …{}",
                i + 1,
                &o.value[from..(at + 80).min(o.value.len())],
                &t.value[from..(at + 80).min(t.value.len())]
            );
        }
    }
    assert_eq!(ours.len(), theirs.len(), "record count");
}

const DEFAULT: &[(&str, &str)] = &[("topic.prefix", "tm")];
const STRING_CONNECT: &[(&str, &str)] =
    &[("topic.prefix", "tm"), ("decimal.handling.mode", "string"), ("time.precision.mode", "connect")];

#[test]
fn proto1_default_matches_debezium() {
    assert_matches_golden("typematrix_proto1.json", "default_noschema.jsonl", DEFAULT, true);
}

#[test]
fn proto2_default_matches_debezium() {
    assert_matches_golden("typematrix_proto2.json", "default_noschema.jsonl", DEFAULT, true);
}

#[test]
fn proto1_string_connect_matches_debezium() {
    assert_matches_golden("typematrix_proto1.json", "string_connect_noschema.jsonl", STRING_CONNECT, false);
}

#[test]
fn proto2_string_connect_matches_debezium() {
    assert_matches_golden("typematrix_proto2.json", "string_connect_noschema.jsonl", STRING_CONNECT, false);
}
