//! The `pgoutput-decoder` library's event shape, the reader's default (`format="seed"`).
//!
//! That library (0.1.0) renders values natively: `message_to_debezium_json(m)` is
//! `{"op","before","after","source","ts_ms","ts_us","ts_ns"}` with numbers as JSON numbers and
//! json/jsonb nested, and `message_to_dict(m)` is the same as a dict. Its README documents
//! the value types (bool, int, float, numeric as float, text, bytea as bytes, json/jsonb as
//! dict/list, uuid and date/time/timestamp/timestamptz as ISO 8601 `str`, arrays, composites);
//! other types come as their text. This module keeps that shape and those types where they
//! lose nothing, and is exact where the library was not:
//!
//! - numeric/money: `decimal.Decimal`; in JSON the exact digits (`12345678.1234`, never
//!   through a float); in the dict view a [`JsonNumber`](json_number) (a Decimal equal to the
//!   float a JSON parser reads from those digits, so the view equals `json.loads` of the text);
//! - dates and times: PostgreSQL's ISO text (`2024-01-15 10:30:00+00`), which also spells
//!   what `datetime` cannot (`infinity`, BC years, `24:00:00`);
//! - bytea: `bytes`; base64 in JSON and in the dict view (the library wrote `null`);
//! - NaN and infinities: the strings `"NaN"`, `"Infinity"`, `"-Infinity"` in JSON and in the
//!   dict view (JSON has no such numbers; the library wrote `null`);
//! - arrays of every dimension and type, hstore as an object (the library split text on commas).
//!
//! Three renderings of one row share [`py_value`]/[`write_value`]: Python values
//! (`message.after`), the dict view (`message_to_dict`) and the JSON text, so that for every
//! message `json.loads(message_to_debezium_json(m)) == message_to_dict(m)`.

use base64::Engine as _;
use pgcdc_core::catalog::TypeKind;
use pgcdc_core::json::{write_i64, write_str};
use pgcdc_core::value::{parse_text, Numeric, Value};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyList, PyString};

use crate::errors::PgError;
use crate::message::RowMsg;
use crate::pgtext;
use crate::values::{self, numeric_text, Col};

/// Which Python values `before`/`after` hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Types {
    /// The seed library's table (this module).
    Seed,
    /// `datetime`, `Interval`, ... ([`crate::values`]).
    Rich,
}

/// What `message.json()` and `message_to_debezium_json()` give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The seed library's event (this module).
    Seed,
    /// Debezium's encoding, byte for byte the feed's (`pgcdc_core::debezium::Encoder`).
    Debezium,
}

/// Python values for the application, or the dict view that equals the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Python,
    Json,
}

/// Parses one column; None for an unchanged TOAST value (left out).
pub fn parse_col<'a>(kind: &TypeKind, col: &'a Col, table: &str, name: &str) -> Result<Option<Parsed<'a>>, PgError> {
    Ok(Some(match col {
        Col::Null => Parsed { value: Value::Null, text: None },
        Col::Unchanged => return Ok(None),
        Col::Binary(b) => Parsed { value: Value::Bytes(b.to_vec()), text: None },
        Col::Text(b) => {
            let text = std::str::from_utf8(b)
                .map_err(|_| PgError::Data(format!("column {table}.{name}: text is not valid UTF-8")))?;
            let value = parse_text(kind, text).map_err(|e| PgError::Data(format!("column {table}.{name}: {e}")))?;
            Parsed { value, text: Some(text) }
        }
    }))
}

/// A column's value and, for a top-level column, the server's own text of it.
pub struct Parsed<'a> {
    pub value: Value<'a>,
    pub text: Option<&'a str>,
}

/// Text for the kinds this table gives as `str`; None for the others.
fn as_text(v: &Value<'_>, text: Option<&str>) -> Option<String> {
    let own = |f: &dyn Fn() -> String| Some(text.map_or_else(f, str::to_owned));
    match v {
        Value::Date(d) => own(&|| pgtext::date_days(*d)),
        Value::Time(t) => own(&|| pgtext::time(*t)),
        Value::TimeTz { micros, offset_seconds } => own(&|| pgtext::timetz(*micros, *offset_seconds)),
        Value::Timestamp(t) => own(&|| pgtext::timestamp_infinite(*t, false)),
        Value::TimestampTz(t) => own(&|| pgtext::timestamp_infinite(*t, true)),
        Value::Interval { months, days, micros } => own(&|| pgtext::interval(*months, *days, *micros)),
        Value::Point { x, y } => own(&|| pgtext::point(*x, *y)),
        Value::Bits { length, bytes } => Some(values::bits(*length, bytes)),
        _ => None,
    }
}

fn non_finite(nan: bool, positive: bool) -> &'static str {
    match (nan, positive) {
        (true, _) => "NaN",
        (false, true) => "Infinity",
        (false, false) => "-Infinity",
    }
}

/// The float a float4 stands for: its shortest decimal, as PostgreSQL prints it (3.14).
fn float4(f: f32) -> f64 {
    format!("{f}").parse().unwrap_or(f64::from(f))
}

/// One value as a Python object of the seed table (`view`: as the JSON holds it).
pub fn py_value<'py>(py: Python<'py>, v: &Value<'_>, text: Option<&str>, view: View) -> PyResult<Bound<'py, PyAny>> {
    if let Some(s) = as_text(v, text) {
        return Ok(PyString::new(py, &s).into_any());
    }
    let json = view == View::Json;
    Ok(match v {
        Value::Float4(f) => py_float(py, float4(*f), view),
        Value::Float8(f) => py_float(py, *f, view),
        Value::Numeric(n) | Value::Money(n) => match (view, n) {
            (View::Python, _) => values::decimal(py, n)?,
            (View::Json, Numeric::Finite { negative, digits, scale }) => {
                json_number(py)?.bind(py).call1((numeric_text(*negative, digits, *scale),))?
            }
            (View::Json, n) => PyString::new(py, non_finite(*n == Numeric::NaN, *n == Numeric::PosInfinity)).into_any(),
        },
        Value::Bytes(b) if json => PyString::new(py, &base64::engine::general_purpose::STANDARD.encode(b)).into_any(),
        Value::Bytes(b) => PyBytes::new(py, b).into_any(),
        Value::Composite(fields) => {
            let d = PyDict::new(py);
            for (k, f) in fields {
                d.set_item(k, py_value(py, f, None, view)?)?;
            }
            d.into_any()
        }
        Value::Array(items) => {
            let l = PyList::empty(py);
            for it in items {
                l.append(py_value(py, it, None, view)?)?;
            }
            l.into_any()
        }
        // The same objects as the rich table: None, bool, int, str, dict/list from JSON, hstore.
        other => values::value(py, other, text)?,
    })
}

fn py_float(py: Python<'_>, f: f64, view: View) -> Bound<'_, PyAny> {
    if view == View::Json && !f.is_finite() {
        PyString::new(py, non_finite(f.is_nan(), f > 0.0)).into_any()
    } else {
        PyFloat::new(py, f).into_any()
    }
}

/// `pgcdc.JsonNumber`, the dict view's exact number.
fn json_number(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    static CLS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CLS.get_or_try_init(py, || Ok(py.import("pgcdc._jsonview")?.getattr("JsonNumber")?.unbind()))
}

/// One value as JSON text, the way `py_value(.., View::Json)` reads back from it.
pub fn write_value(out: &mut String, v: &Value<'_>, text: Option<&str>) {
    if let Some(s) = as_text(v, text) {
        write_str(out, &s);
        return;
    }
    let write_float = |out: &mut String, f: f64| {
        if f.is_finite() {
            // Shortest digits that read back as this double (1.5, 1e+30 as 1e30).
            out.push_str(ryu::Buffer::new().format_finite(f));
        } else {
            write_str(out, non_finite(f.is_nan(), f > 0.0));
        }
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => write_i64(out, *i),
        Value::Float4(f) => write_float(out, float4(*f)),
        Value::Float8(f) => write_float(out, *f),
        Value::Numeric(n) | Value::Money(n) => match n {
            Numeric::Finite { negative, digits, scale } => out.push_str(&numeric_text(*negative, digits, *scale)),
            n => write_str(out, non_finite(*n == Numeric::NaN, *n == Numeric::PosInfinity)),
        },
        Value::Text(s) | Value::Xml(s) | Value::Uuid(s) | Value::Range(s) | Value::Enum(s) | Value::Unknown(s) => {
            write_str(out, s)
        }
        Value::Bytes(b) => write_str(out, &base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Json(s) => compact_json(out, s),
        Value::Hstore(pairs) => write_seq(out, ('{', '}'), pairs, |out, (k, v)| {
            write_str(out, k);
            out.push(':');
            match v {
                Some(v) => write_str(out, v),
                None => out.push_str("null"),
            }
        }),
        Value::Composite(fields) => write_seq(out, ('{', '}'), fields, |out, (k, f)| {
            write_str(out, k);
            out.push(':');
            write_value(out, f, None);
        }),
        Value::Array(items) => write_seq(out, ('[', ']'), items, |out, it| write_value(out, it, None)),
        // Spelled by `as_text` above.
        Value::Date(_)
        | Value::Time(_)
        | Value::TimeTz { .. }
        | Value::Timestamp(_)
        | Value::TimestampTz(_)
        | Value::Interval { .. }
        | Value::Point { .. }
        | Value::Bits { .. } => out.push_str("null"),
    }
}

/// The event as the seed library's JSON: `{"op","before","after","source","ts_ms","ts_us",
/// "ts_ns"}`, then `unchanged_columns` and `message` when they apply (the library had
/// neither: it did not say which TOAST values were missing, nor yield messages).
pub fn event_json(m: &RowMsg) -> Result<String, PgError> {
    let mut out = String::with_capacity(m.json.len());
    out.push_str("{\"op\":");
    write_str(&mut out, m.op.code().unwrap_or("?"));
    for (key, after) in [("before", false), ("after", true)] {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        write_row(&mut out, m, after)?;
    }
    out.push_str(",\"source\":");
    out.push_str(m.envelope_raw("source")?.unwrap_or("null"));
    for (key, v) in [("ts_ms", m.ts_ns.div_euclid(1_000_000)), ("ts_us", m.ts_ns.div_euclid(1_000)), ("ts_ns", m.ts_ns)]
    {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        write_i64(&mut out, v);
    }
    let unchanged = m.unchanged_columns();
    if !unchanged.is_empty() {
        out.push_str(",\"unchanged_columns\":[");
        for (i, name) in unchanged.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_str(&mut out, name);
        }
        out.push(']');
    }
    if let Some(msg) = &m.message {
        out.push_str(",\"message\":{\"prefix\":");
        write_str(&mut out, &msg.prefix);
        out.push_str(",\"content\":");
        write_str(&mut out, &base64::engine::general_purpose::STANDARD.encode(&msg.content));
        out.push_str(",\"transactional\":");
        out.push_str(if msg.transactional { "true" } else { "false" });
        out.push('}');
    }
    out.push('}');
    Ok(out)
}

fn write_row(out: &mut String, m: &RowMsg, after: bool) -> Result<(), PgError> {
    let Some(columns) = m.columns(after) else {
        out.push_str("null");
        return Ok(());
    };
    let table = m.table.as_ref().map(|t| t.data_collection.as_str()).unwrap_or_default();
    out.push('{');
    let mut first = true;
    for (schema, col) in columns {
        let Some(p) = parse_col(&schema.kind, col, table, &schema.name)? else { continue };
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&schema.json_key);
        write_value(out, &p.value, p.text);
    }
    out.push('}');
    Ok(())
}

/// `items` between `open` and `close`, separated by commas.
fn write_seq<T>(out: &mut String, (open, close): (char, char), items: &[T], mut write: impl FnMut(&mut String, &T)) {
    out.push(open);
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write(out, it);
    }
    out.push(close);
}

/// Copies JSON text (a json/jsonb value, valid as the server checked it) without the
/// whitespace between tokens, so the event stays one compact line.
fn compact_json(out: &mut String, text: &str) {
    let mut in_str = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
            in_str = c == '"';
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgcdc_core::value::Infinite;

    fn json(v: &Value<'_>, text: Option<&str>) -> String {
        let mut o = String::new();
        write_value(&mut o, v, text);
        o
    }

    #[test]
    #[allow(clippy::approx_constant)] // a real value, not an approximation of pi
    fn numbers_are_exact_json_numbers() {
        let n = Value::Numeric(Numeric::Finite {
            negative: true,
            digits: "123456789012345678901234567890".into(),
            scale: 10,
        });
        assert_eq!(json(&n, None), "-12345678901234567890.1234567890");
        assert_eq!(json(&Value::Numeric(Numeric::NaN), None), "\"NaN\"");
        assert_eq!(json(&Value::Float8(1e30), None), "1e30");
        assert_eq!(json(&Value::Float8(1.0), None), "1.0");
        assert_eq!(json(&Value::Float4(3.14), None), "3.14");
        assert_eq!(json(&Value::Float8(f64::NEG_INFINITY), None), "\"-Infinity\"");
    }

    #[test]
    fn json_columns_are_nested_and_compact() {
        assert_eq!(json(&Value::Json(r#"{"a": [1, 2], "s": "x y\" z"}"#.into()), None), r#"{"a":[1,2],"s":"x y\" z"}"#);
    }

    #[test]
    fn dates_in_arrays_are_postgres_text() {
        let a =
            Value::Array(vec![Value::Date(Infinite::Finite(19782)), Value::Date(Infinite::PosInfinity), Value::Null]);
        assert_eq!(json(&a, None), r#"["2024-02-29","infinity",null]"#);
        assert_eq!(json(&Value::Bytes(vec![0xde, 0xad]), None), "\"3q0=\"");
    }
}
