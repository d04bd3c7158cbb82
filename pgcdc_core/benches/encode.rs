//! Decode + encode throughput per core: pgoutput Insert bytes in, Debezium JSON out.
//!
//! Rows: W1 (`id bigint, name text, qty int, price numeric(10,2), created timestamptz`) and
//! a wide row (2 KB text + jsonb). Run with `cargo bench -p pgcdc_core --bench encode`;
//! criterion reports time per event and events/s (`thrpt`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgcdc_core::debezium::{Encoder, EncoderOptions, Event, NoCatalog};
use pgcdc_core::pgoutput::Decoder;
use pgcdc_core::Lsn;

/// Minimal pgoutput message writer for the benchmark's inputs.
struct Msg(Vec<u8>);

impl Msg {
    fn new(tag: u8) -> Self {
        Msg(vec![tag])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn cstr(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn text(self, s: &str) -> Self {
        let mut m = self.u8(b't').i32(s.len() as i32);
        m.0.extend_from_slice(s.as_bytes());
        m
    }
}

const REL: i32 = 16384;

fn relation(columns: &[(&str, i32, i32)]) -> Vec<u8> {
    let mut m = Msg::new(b'R').i32(REL).cstr("public").cstr("w1").u8(b'd').i16(columns.len() as i16);
    for (i, (name, oid, typmod)) in columns.iter().enumerate() {
        m = m.u8((i == 0) as u8).cstr(name).i32(*oid).i32(*typmod);
    }
    m.0
}

fn insert(values: &[&str]) -> Vec<u8> {
    let mut m = Msg::new(b'I').i32(REL).u8(b'N').i16(values.len() as i16);
    for v in values {
        m = m.text(v);
    }
    m.0
}

fn bench_row(c: &mut Criterion, name: &str, columns: &[(&str, i32, i32)], values: &[&str]) {
    let relation = relation(columns);
    let begin = Msg::new(b'B').i64(0x3000_0000).i64(800_000_000_000_000).i32(1234).0;
    let insert = insert(values);
    let mut encoder = Encoder::new(EncoderOptions::default(), "shop");
    encoder.set_run_id("019ade2c-5b30-7a4e-9c1d-2f6e8b7a4c31"); // the four context headers, as a feed
    let mut decoder = Decoder::new(1);
    let mut events: Vec<Event> = Vec::with_capacity(1);
    for bytes in [&begin, &relation] {
        let msg = decoder.decode(bytes).unwrap();
        encoder.handle(Lsn(0x2000_0000), &msg, &mut NoCatalog, &mut events).unwrap();
    }
    let mut group = c.benchmark_group("decode+encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        let mut lsn = 0x2000_0000u64;
        b.iter(|| {
            events.clear();
            lsn += 64;
            let msg = decoder.decode(black_box(&insert)).unwrap();
            encoder.handle(Lsn(lsn), &msg, &mut NoCatalog, &mut events).unwrap();
            black_box(&events);
        })
    });
    group.finish();
}

/// Text-form parsing alone, for the hot column types.
fn bench_values(c: &mut Criterion) {
    use pgcdc_core::catalog::TypeKind;
    use pgcdc_core::value::parse_text;
    let mut group = c.benchmark_group("parse_text");
    group.throughput(Throughput::Elements(1));
    let cases: [(&str, TypeKind, &str); 5] = [
        ("text", TypeKind::Text, "widget-42"),
        ("int4", TypeKind::Int4, "-2147483648"),
        ("numeric_10_2", TypeKind::Numeric { precision: Some(10), scale: Some(2) }, "12345678.99"),
        ("timestamptz", TypeKind::TimestampTz { precision: None }, "2026-11-24 10:30:00.123456+00"),
        ("int4_array", TypeKind::Array(Box::new(TypeKind::Int4)), "{1,NULL,3,42,-7}"),
    ];
    for (name, kind, text) in &cases {
        group.bench_function(*name, |b| b.iter(|| black_box(parse_text(kind, black_box(text)).unwrap())));
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_values(c);
    let numeric_10_2 = ((10 << 16) | 2) + 4;
    bench_row(
        c,
        "w1_row",
        &[("id", 20, -1), ("name", 25, -1), ("qty", 23, -1), ("price", 1700, numeric_10_2), ("created", 1184, -1)],
        &["1234567", "widget-42", "3", "19.99", "2026-11-24 10:30:00.123456+00"],
    );
    let big_text = "x".repeat(2048);
    let jsonb = r#"{"sku": "A-1", "tags": ["red", "blue"], "dims": {"w": 10, "h": 20}, "note": "fragile"}"#;
    bench_row(
        c,
        "wide_row_2kb_text_jsonb",
        &[("id", 20, -1), ("body", 25, -1), ("attrs", 3802, -1)],
        &["1", &big_text, jsonb],
    );
}

criterion_group!(encode, benches);
criterion_main!(encode);
