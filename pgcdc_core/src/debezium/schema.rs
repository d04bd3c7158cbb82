//! Kafka Connect schemas for the `{"schema":…,"payload":…}` form (`schemas.enable`).
//!
//! Schemas depend only on the relation and the options, so each is rendered once per
//! Relation message and reused. Key order inside a schema object follows JsonConverter:
//! `type, fields|items|keys/values, optional, name, version, doc, parameters, default, field`.

use std::cell::RefCell;
use std::collections::HashMap;

use super::options::{BinaryMode, DecimalMode, EncoderOptions, HstoreMode, IntervalMode, TimePrecisionMode};
use crate::catalog::TypeKind;
use crate::json;
use crate::relation::{ColumnSchema, TableSchema};
use crate::Oid;

pub const TX_KEY_SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"id"}],"optional":false,"name":"io.debezium.connector.common.TransactionMetadataKey","version":1}"#;
pub const TX_VALUE_SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"status"},{"type":"string","optional":false,"field":"id"},{"type":"int64","optional":true,"field":"event_count"},{"type":"array","items":{"type":"struct","fields":[{"type":"string","optional":false,"field":"data_collection"},{"type":"int64","optional":false,"field":"event_count"}],"optional":true,"name":"event.collection","version":1},"optional":true,"field":"data_collections"},{"type":"int64","optional":false,"field":"ts_ms"}],"optional":false,"name":"io.debezium.connector.common.TransactionMetadataValue","version":1}"#;
pub const MESSAGE_KEY_SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"string","optional":true,"field":"prefix"}],"optional":false,"name":"io.debezium.connector.postgresql.MessageKey","version":1}"#;

const SOURCE_SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"version"},{"type":"string","optional":false,"field":"connector"},{"type":"string","optional":false,"field":"name"},{"type":"int64","optional":false,"field":"ts_ms"},{"type":"string","optional":true,"name":"io.debezium.data.Enum","version":1,"parameters":{"allowed":"true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},"default":"false","field":"snapshot"},{"type":"string","optional":false,"field":"db"},{"type":"string","optional":true,"field":"sequence"},{"type":"int64","optional":true,"field":"ts_us"},{"type":"int64","optional":true,"field":"ts_ns"},{"type":"string","optional":false,"field":"schema"},{"type":"string","optional":false,"field":"table"},{"type":"int64","optional":true,"field":"txId"},{"type":"int64","optional":true,"field":"lsn"},{"type":"int64","optional":true,"field":"xmin"},{"type":"string","optional":true,"field":"origin"},{"type":"int64","optional":true,"field":"origin_lsn"}],"optional":false,"name":"io.debezium.connector.postgresql.Source","version":1,"field":"source"}"#;
const TRANSACTION_BLOCK_SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"id"},{"type":"int64","optional":false,"field":"total_order"},{"type":"int64","optional":false,"field":"data_collection_order"}],"optional":true,"name":"event.block","version":1,"field":"transaction"}"#;
const ENVELOPE_TAIL: &str = r#"{"type":"string","optional":false,"field":"op"},{"type":"int64","optional":true,"field":"ts_ms"},{"type":"int64","optional":true,"field":"ts_us"},{"type":"int64","optional":true,"field":"ts_ns"}"#;
/// The schema of a context header's value (Connect's `STRING_SCHEMA`).
pub const HEADER_STRING_SCHEMA: &str = r#"{"type":"string","optional":false}"#;
const UNCHANGED_COLUMNS_SCHEMA: &str =
    r#"{"type":"array","items":{"type":"string","optional":false},"optional":true,"field":"unchanged_columns"}"#;

/// `{"schema":S,"payload":P}`.
pub fn wrap(schema: &str, payload: &str) -> String {
    let mut out = String::with_capacity(schema.len() + payload.len() + 24);
    out.push_str("{\"schema\":");
    out.push_str(schema);
    out.push_str(",\"payload\":");
    out.push_str(payload);
    out.push('}');
    out
}

/// The schema-wrapped value of a message event.
pub fn message_value(opts: &EncoderOptions, value: &str) -> String {
    let content = bytes_or_string(opts);
    let schema = format!(
        r#"{{"type":"struct","fields":[{{"type":"string","optional":false,"field":"op"}},{{"type":"int64","optional":true,"field":"ts_ms"}},{src},{tx},{{"type":"struct","fields":[{{"type":"string","optional":true,"field":"prefix"}},{{"type":"{content}","optional":true,"field":"content"}}],"optional":false,"name":"io.debezium.connector.postgresql.Message","version":1,"field":"message"}}],"optional":false,"name":"io.debezium.connector.postgresql.MessageValue","version":1}}"#,
        src = SOURCE_SCHEMA,
        tx = TRANSACTION_BLOCK_SCHEMA,
    );
    wrap(&schema, value)
}

/// Rendered key and value schemas per relation definition.
#[derive(Debug, Default)]
pub struct SchemaCache {
    keys: RefCell<HashMap<(Oid, u64), String>>,
    values: RefCell<HashMap<(Oid, u64, bool), String>>,
}

impl SchemaCache {
    /// The key as it goes out: wrapped with its schema when key schemas are on.
    pub fn key(&self, opts: &EncoderOptions, table: &TableSchema, key: String) -> String {
        if !opts.key_schemas {
            return key;
        }
        self.wrap_key(opts, table, &key)
    }

    /// The key wrapped with its schema, whatever the options (the `__debezium.newkey` and
    /// `__debezium.oldkey` headers with header schemas on).
    pub fn wrap_key(&self, opts: &EncoderOptions, table: &TableSchema, key: &str) -> String {
        let mut keys = self.keys.borrow_mut();
        let schema = keys.entry((table.id, table.version)).or_insert_with(|| {
            let fields: Vec<String> =
                table.key_columns.iter().map(|&i| column_schema(opts, &table.columns[i], true)).collect();
            format!(
                r#"{{"type":"struct","fields":[{}],"optional":false,"name":{}}}"#,
                fields.join(","),
                quoted(&format!("{}.{}.{}.Key", opts.topic_prefix, table.schema, table.table))
            )
        });
        wrap(schema, key)
    }

    /// The value as it goes out: wrapped with the envelope schema when value schemas are on.
    pub fn value(&self, opts: &EncoderOptions, table: &TableSchema, value: String, has_unchanged: bool) -> String {
        if !opts.value_schemas {
            return value;
        }
        let mut values = self.values.borrow_mut();
        let schema = values.entry((table.id, table.version, has_unchanged)).or_insert_with(|| {
            let name = format!("{}.{}.{}", opts.topic_prefix, table.schema, table.table);
            let fields: Vec<String> = table.columns.iter().map(|c| column_schema(opts, c, false)).collect();
            let row = |field: &str| {
                format!(
                    r#"{{"type":"struct","fields":[{}],"optional":true,"name":{},"field":"{field}"}}"#,
                    fields.join(","),
                    quoted(&format!("{name}.Value"))
                )
            };
            format!(
                r#"{{"type":"struct","fields":[{},{},{},{},{}{}],"optional":false,"name":{},"version":2}}"#,
                row("before"),
                row("after"),
                SOURCE_SCHEMA,
                TRANSACTION_BLOCK_SCHEMA,
                ENVELOPE_TAIL,
                if has_unchanged { format!(",{UNCHANGED_COLUMNS_SCHEMA}") } else { String::new() },
                quoted(&format!("{name}.Envelope"))
            )
        });
        wrap(schema, &value)
    }
}

fn quoted(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    json::write_str(&mut o, s);
    o
}

/// One column's field schema. Key columns are never optional.
fn column_schema(opts: &EncoderOptions, column: &ColumnSchema, in_key: bool) -> String {
    let optional = !(in_key || column.not_null);
    let mut s = if opts.include_unknown_datatypes && has_no_converter(&column.kind) {
        format!(r#"{{"type":"{}","optional":{optional}}}"#, bytes_or_string(opts))
    } else {
        type_schema(opts, &column.kind, optional)
    };
    s.pop(); // reopen the object to add default and field
    if let Some(default) = &column.schema_default {
        s.push_str(",\"default\":");
        s.push_str(default);
    }
    s.push_str(",\"field\":");
    json::write_str(&mut s, &column.name);
    s.push('}');
    s
}

/// Types Debezium has no converter for: it leaves such columns out unless
/// `include.unknown.datatypes`, which sends the bytes of their text.
pub fn has_no_converter(kind: &TypeKind) -> bool {
    matches!(kind, TypeKind::Unknown { .. } | TypeKind::Composite { .. })
}

/// Connect `bytes`, or a string when `binary.handling.mode` renders bytes as text.
fn bytes_or_string(opts: &EncoderOptions) -> &'static str {
    if opts.binary == BinaryMode::Bytes {
        "bytes"
    } else {
        "string"
    }
}

fn logical(ty: &str, optional: bool, name: &str, extra: &str) -> String {
    format!(r#"{{"type":"{ty}","optional":{optional},"name":"{name}","version":1{extra}}}"#)
}

/// The schema object of a type (without `field`).
fn type_schema(opts: &EncoderOptions, kind: &TypeKind, optional: bool) -> String {
    let plain = |ty: &str| format!(r#"{{"type":"{ty}","optional":{optional}}}"#);
    let bytes_or_string = bytes_or_string(opts);
    let connect = opts.time_precision == TimePrecisionMode::Connect;
    match kind {
        TypeKind::Bool => plain("boolean"),
        TypeKind::Int2 => plain("int16"),
        TypeKind::Int4 => plain("int32"),
        TypeKind::Int8 | TypeKind::Oid => plain("int64"),
        TypeKind::Float4 => plain("float"),
        TypeKind::Float8 => plain("double"),
        TypeKind::Numeric { .. } | TypeKind::Money => match opts.decimal {
            DecimalMode::Double => plain("double"),
            DecimalMode::String => plain("string"),
            DecimalMode::Precise => {
                let (precision, scale) = match kind {
                    TypeKind::Numeric { precision, scale } => (*precision, *scale),
                    _ => (None, Some(2)),
                };
                match scale {
                    Some(scale) => {
                        let params = match precision {
                            Some(p) => {
                                format!(r#","parameters":{{"scale":"{scale}","connect.decimal.precision":"{p}"}}"#)
                            }
                            None => format!(r#","parameters":{{"scale":"{scale}"}}"#),
                        };
                        logical("bytes", optional, "org.apache.kafka.connect.data.Decimal", &params)
                    }
                    None => format!(
                        r#"{{"type":"struct","fields":[{{"type":"int32","optional":false,"field":"scale"}},{{"type":"bytes","optional":false,"field":"value"}}],"optional":{optional},"name":"io.debezium.data.VariableScaleDecimal","version":1,"doc":"Variable scaled decimal"}}"#
                    ),
                }
            }
        },
        TypeKind::Text | TypeKind::Range | TypeKind::Unknown { .. } => plain("string"),
        TypeKind::Bytea => plain(bytes_or_string),
        TypeKind::Json | TypeKind::Jsonb => logical("string", optional, "io.debezium.data.Json", ""),
        TypeKind::Xml => logical("string", optional, "io.debezium.data.Xml", ""),
        TypeKind::Uuid => logical("string", optional, "io.debezium.data.Uuid", ""),
        TypeKind::Enum { labels } => {
            let mut allowed = String::new();
            json::write_str(&mut allowed, &labels.join(","));
            logical("string", optional, "io.debezium.data.Enum", &format!(r#","parameters":{{"allowed":{allowed}}}"#))
        }
        TypeKind::Date if connect => logical("int32", optional, "org.apache.kafka.connect.data.Date", ""),
        TypeKind::Date => logical("int32", optional, "io.debezium.time.Date", ""),
        TypeKind::Time { precision } => match opts.time_precision {
            TimePrecisionMode::Connect => logical("int32", optional, "org.apache.kafka.connect.data.Time", ""),
            TimePrecisionMode::Adaptive if precision.is_some_and(|p| p <= 3) => {
                logical("int32", optional, "io.debezium.time.Time", "")
            }
            _ => logical("int64", optional, "io.debezium.time.MicroTime", ""),
        },
        TypeKind::TimeTz { .. } => logical("string", optional, "io.debezium.time.ZonedTime", ""),
        TypeKind::Timestamp { precision } => match opts.time_precision {
            TimePrecisionMode::Connect => logical("int64", optional, "org.apache.kafka.connect.data.Timestamp", ""),
            _ if precision.is_some_and(|p| p <= 3) => logical("int64", optional, "io.debezium.time.Timestamp", ""),
            _ => logical("int64", optional, "io.debezium.time.MicroTimestamp", ""),
        },
        TypeKind::TimestampTz { .. } => logical("string", optional, "io.debezium.time.ZonedTimestamp", ""),
        TypeKind::Interval => match opts.interval {
            IntervalMode::Numeric => logical("int64", optional, "io.debezium.time.MicroDuration", ""),
            IntervalMode::String => logical("string", optional, "io.debezium.time.Interval", ""),
        },
        TypeKind::Bit { length: Some(1) } => plain("boolean"),
        TypeKind::Bit { length } => {
            let len = length.unwrap_or(i32::MAX as u32);
            // Bits stay bytes whatever binary.handling.mode says, as in Debezium.
            logical("bytes", optional, "io.debezium.data.Bits", &format!(r#","parameters":{{"length":"{len}"}}"#))
        }
        TypeKind::Point => format!(
            r#"{{"type":"struct","fields":[{{"type":"double","optional":false,"field":"x"}},{{"type":"double","optional":false,"field":"y"}},{{"type":"bytes","optional":true,"field":"wkb"}},{{"type":"int32","optional":true,"field":"srid"}}],"optional":{optional},"name":"io.debezium.data.geometry.Point","version":1,"doc":"Geometry (POINT)"}}"#
        ),
        TypeKind::Hstore => match opts.hstore {
            HstoreMode::Json => logical("string", optional, "io.debezium.data.Json", ""),
            HstoreMode::Map => format!(
                r#"{{"type":"map","keys":{{"type":"string","optional":false}},"values":{{"type":"string","optional":true}},"optional":{optional}}}"#
            ),
        },
        TypeKind::Array(element) => {
            format!(r#"{{"type":"array","items":{},"optional":{optional}}}"#, type_schema(opts, element, true))
        }
        TypeKind::Composite { fields } => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(name, k)| {
                    let mut s = type_schema(opts, k, true);
                    s.pop();
                    s.push_str(",\"field\":");
                    json::write_str(&mut s, name);
                    s.push('}');
                    s
                })
                .collect();
            format!(r#"{{"type":"struct","fields":[{}],"optional":{optional}}}"#, fields.join(","))
        }
    }
}
