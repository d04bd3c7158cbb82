//! Shared by the integration tests: captured fixtures and a catalog that serves them.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use pgcdc_core::catalog::{TableInfo, TypeRow};
use pgcdc_core::debezium::{CatalogSource, Encoder, EncoderOptions, Event};
use pgcdc_core::pgoutput::Decoder;
use pgcdc_core::{Lsn, Oid};
use serde::Deserialize;

/// One fixture file written by `tests/capture_golden.py`.
#[derive(Deserialize)]
pub struct Fixture {
    pub database: String,
    pub protocol_version: u32,
    pub changes: Vec<Change>,
    pub types: Vec<TypeRow>,
    pub tables: HashMap<String, TableRow>,
}

#[derive(Deserialize)]
pub struct Change {
    pub lsn: String,
    pub xid: Option<u32>,
    pub data: String,
}

#[derive(Deserialize, Clone)]
pub struct TableRow {
    pub primary_key: Vec<String>,
    pub default_columns: Vec<String>,
    pub default_exprs: Vec<String>,
    pub not_null_columns: Vec<String>,
}

/// Serves the catalog rows captured with the fixture.
pub struct FixtureCatalog {
    types: Vec<TypeRow>,
    tables: HashMap<Oid, TableRow>,
}

impl FixtureCatalog {
    pub fn new(fixture: &Fixture) -> Self {
        FixtureCatalog {
            types: fixture.types.clone(),
            tables: fixture.tables.iter().map(|(k, v)| (k.parse().unwrap(), v.clone())).collect(),
        }
    }
}

impl CatalogSource for FixtureCatalog {
    fn type_rows(&mut self, oids: &[Oid]) -> Result<Vec<TypeRow>, String> {
        Ok(self.types.iter().filter(|t| oids.contains(&t.oid)).cloned().collect())
    }
    fn table_info(&mut self, relation_id: Oid) -> Result<TableInfo, String> {
        let t = self.tables.get(&relation_id).ok_or_else(|| format!("no table {relation_id}"))?.clone();
        Ok(TableInfo::from_row(t.primary_key, t.default_columns, t.default_exprs, t.not_null_columns))
    }
}

pub fn fixture_dir() -> PathBuf {
    std::env::var_os("PGCDC_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

/// Debezium's records for the type-matrix workload (`tests/fixtures/debezium/`, in the repository).
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/debezium")
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("fixture hex")).collect()
}

pub fn load_fixture(name: &str) -> Fixture {
    let path = fixture_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixed envelope time, so two encodings of the same WAL are identical.
pub const FIXED_CLOCK_NANOS: i64 = 1_795_490_437_040_218_150;

/// Decodes and encodes a whole fixture with the given options.
pub fn encode_fixture(fixture: &Fixture, options: &[(&str, &str)]) -> Vec<Event> {
    let opts = EncoderOptions::from_pairs(options.iter().copied()).unwrap();
    let mut encoder = Encoder::new(opts, &fixture.database);
    encoder.set_clock(|| FIXED_CLOCK_NANOS);
    let mut catalog = FixtureCatalog::new(fixture);
    let mut decoder = Decoder::new(fixture.protocol_version);
    let mut events = Vec::new();
    for change in &fixture.changes {
        let bytes = unhex(&change.data);
        let msg = decoder.decode(&bytes).unwrap_or_else(|e| panic!("decode {}: {e}", change.lsn));
        let lsn: Lsn = change.lsn.parse().unwrap();
        encoder.handle(lsn, &msg, &mut catalog, &mut events).unwrap_or_else(|e| panic!("encode {}: {e}", change.lsn));
    }
    events
}
