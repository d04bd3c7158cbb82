//! The Python class `Event`: one event of a feed. Each envelope field becomes a Python object
//! on its first access, alone (a loop that reads `.after` pays for `after` only); column
//! values by [`super::debezium_values`].

use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

use pgcdc_core::debezium::EncoderOptions;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};
use serde_json::value::RawValue;

use super::debezium_values::{decode_binary, preview, typed_json};
use super::{Columns, FeedRow};
use crate::errors::PgError;
use crate::values;

/// One event of a feed: Debezium's envelope plus its position.
#[pyclass(frozen, module = "pgcdc._pgcdc", name = "Event")]
pub(super) struct FeedEvent {
    pub(super) row: FeedRow,
    /// Where the envelope's fields are in `row.value`, found on the first access of any.
    spans: OnceLock<Result<Spans, String>>,
    /// Each field as a Python object, converted on its first access.
    converted: [PyOnceLock<Py<PyAny>>; FIELDS],
}

/// The envelope's JSON fields, indexes into [`Spans::fields`] and [`FeedEvent::converted`].
#[derive(Clone, Copy)]
pub(super) enum Field {
    Before,
    After,
    Source,
    Transaction,
    Message,
    UnchangedColumns,
}
const FIELDS: usize = 6;

/// Byte ranges of the envelope's fields in the event JSON, and its times. Found by the
/// session thread (which scans the event anyway), so Python's thread does not scan it again.
#[derive(Debug, Clone)]
pub(super) struct Spans {
    fields: [Option<Range<usize>>; FIELDS],
    ts_ms: i64,
    ts_us: i64,
    ts_ns: i64,
}

impl Spans {
    pub(super) fn find(value: &str) -> Result<Spans, String> {
        #[derive(serde::Deserialize)]
        struct Env<'a> {
            /// A schema+payload envelope carries the event in "payload".
            #[serde(borrow)]
            payload: Option<&'a RawValue>,
            #[serde(borrow)]
            before: Option<&'a RawValue>,
            #[serde(borrow)]
            after: Option<&'a RawValue>,
            #[serde(borrow)]
            source: Option<&'a RawValue>,
            #[serde(borrow)]
            transaction: Option<&'a RawValue>,
            #[serde(borrow)]
            message: Option<&'a RawValue>,
            #[serde(borrow)]
            unchanged_columns: Option<&'a RawValue>,
            ts_ms: Option<i64>,
            ts_us: Option<i64>,
            ts_ns: Option<i64>,
        }
        let parse = |text| serde_json::from_str::<Env<'_>>(text).map_err(|e| format!("event JSON: {e}"));
        let mut env = parse(value)?;
        let unwrapped = [env.before, env.after, env.source, env.transaction, env.message].iter().all(Option::is_none);
        if let Some(payload) = env.payload.filter(|_| unwrapped) {
            env = parse(payload.get())?;
        }
        // Every RawValue borrows from `value`: its offset there is its place.
        let fields =
            [env.before, env.after, env.source, env.transaction, env.message, env.unchanged_columns].map(|r| {
                r.map(|r| {
                    let start = r.get().as_ptr() as usize - value.as_ptr() as usize;
                    start..start + r.get().len()
                })
            });
        let ts_ms = env.ts_ms.unwrap_or(0);
        Ok(Spans {
            fields,
            ts_ms,
            ts_us: env.ts_us.unwrap_or(ts_ms * 1000),
            ts_ns: env.ts_ns.unwrap_or(ts_ms * 1_000_000),
        })
    }
}

impl Spans {
    /// The JSON text of one envelope field of `value` (the event these spans were found in).
    pub(super) fn raw<'v>(&self, value: &'v str, field: Field) -> Option<&'v str> {
        self.fields[field as usize].clone().and_then(|r| value.get(r))
    }
}

/// An object key of JSON text, borrowed unless it has escapes.
pub(super) struct JsonKey<'a>(pub(super) Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for JsonKey<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JsonKey<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(JsonKey(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(JsonKey(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A row object's (`before`/`after`) columns in the JSON's order, each as its JSON text.
pub(super) struct RowEntries<'a>(pub(super) Vec<(JsonKey<'a>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for RowEntries<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RowEntries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a row object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some(entry) = m.next_entry()? {
                    out.push(entry);
                }
                Ok(RowEntries(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl FeedEvent {
    pub(super) fn new(mut row: FeedRow) -> Self {
        let spans = match row.spans.take() {
            Some(found) => OnceLock::from(found),
            None => OnceLock::new(),
        };
        FeedEvent { row, spans, converted: std::array::from_fn(|_| PyOnceLock::new()) }
    }

    /// The envelope's layout; None for an event without a value (a tombstone).
    fn spans(&self) -> PyResult<Option<(&str, &Spans)>> {
        let Some(value) = self.row.value.as_deref() else { return Ok(None) };
        match self.spans.get_or_init(|| Spans::find(value)) {
            Ok(s) => Ok(Some((value, s))),
            Err(e) => Err(PgError::Data(e.clone()).into()),
        }
    }

    /// The JSON text of one envelope field (None when absent).
    fn raw(&self, field: Field) -> PyResult<Option<&str>> {
        Ok(self.spans()?.and_then(|(value, s)| s.raw(value, field)))
    }

    /// An envelope time; None for an event without a value.
    fn time(&self, pick: fn(&Spans) -> i64) -> PyResult<Option<i64>> {
        Ok(self.spans()?.map(|(_, s)| pick(s)))
    }

    /// A field as a Python object, converted once (by its kind: row, message or plain JSON).
    fn field(&self, py: Python<'_>, field: Field) -> PyResult<Py<PyAny>> {
        self.converted[field as usize]
            .get_or_try_init(py, || {
                let raw = self.raw(field)?;
                match field {
                    Field::Before | Field::After => row_py(py, raw, self.row.columns.as_deref(), &self.row.options),
                    Field::Message => message_py(py, raw, &self.row.options),
                    Field::Source | Field::Transaction | Field::UnchangedColumns => raw_py(py, raw),
                }
            })
            .map(|v| v.clone_ref(py))
    }
}

#[pymethods]
impl FeedEvent {
    #[getter]
    fn op(&self) -> &str {
        &self.row.op
    }
    #[getter]
    fn before(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.field(py, Field::Before)
    }
    #[getter]
    fn after(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.field(py, Field::After)
    }
    #[getter]
    fn source(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.field(py, Field::Source)
    }
    #[getter]
    fn transaction(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.field(py, Field::Transaction)
    }
    #[getter]
    fn message(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.field(py, Field::Message)
    }
    /// Columns of `after` whose TOASTed value did not change (not sent, left out).
    #[getter]
    fn unchanged_columns(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let v = self.field(py, Field::UnchangedColumns)?;
        if v.is_none(py) {
            return Ok(pyo3::types::PyTuple::empty(py).into_any().unbind());
        }
        Ok(pyo3::types::PyTuple::new(py, v.bind(py).try_iter()?.collect::<PyResult<Vec<_>>>()?)?.into_any().unbind())
    }
    #[getter]
    fn ts_ms(&self) -> PyResult<Option<i64>> {
        self.time(|s| s.ts_ms)
    }
    #[getter]
    fn ts_us(&self) -> PyResult<Option<i64>> {
        self.time(|s| s.ts_us)
    }
    #[getter]
    fn ts_ns(&self) -> PyResult<Option<i64>> {
        self.time(|s| s.ts_ns)
    }
    /// LSN of the change, `X/Y`.
    #[getter]
    fn lsn(&self) -> String {
        self.row.lsn.to_string()
    }
    #[getter]
    fn commit_lsn(&self) -> String {
        self.row.commit_lsn.to_string()
    }
    #[getter]
    fn ordinal(&self) -> u32 {
        self.row.ordinal
    }
    /// `(commit_lsn, ordinal)`: unique, ordered, stable across restarts (for deduplication).
    #[getter]
    fn position(&self) -> (String, u32) {
        (self.row.commit_lsn.to_string(), self.row.ordinal)
    }
    #[getter]
    fn xid(&self) -> Option<i64> {
        self.row.xid
    }
    #[getter]
    fn topic(&self) -> &str {
        &self.row.topic
    }
    /// Name of the feed the event belongs to (`stream.ack` refuses events of another feed).
    #[getter]
    fn feed(&self) -> &str {
        &self.row.feed.name
    }
    /// The Kafka headers (`__debezium.newkey`/`__debezium.oldkey` on a primary-key change...)
    /// as a read-only mapping of header name to its JSON value; empty without any.
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        static PROXY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let proxy =
            PROXY.get_or_try_init(py, || py.import("types")?.getattr("MappingProxyType").map(|p| p.unbind()))?;
        let d = match &self.row.headers {
            Some(h) => values::json(py, h)?
                .cast_into::<PyDict>()
                .map_err(|_| PgError::Data(format!("event headers are not a JSON object: {}", preview(h))))?,
            None => PyDict::new(py),
        };
        proxy.bind(py).call1((d,))
    }
    /// `schema.table` (empty for messages and transaction records).
    #[getter]
    fn table(&self) -> String {
        if self.row.table.is_empty() {
            String::new()
        } else {
            format!("{}.{}", self.row.schema, self.row.table)
        }
    }
    /// The Kafka key (the primary key columns) as a dict, None when the table has none.
    #[getter]
    fn key(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &self.row.key {
            Some(k) => Ok(values::json(py, k)?.unbind()),
            None => Ok(py.None()),
        }
    }
    /// The Debezium event as JSON text, exactly as staged (`indent` re-indents it).
    #[pyo3(signature = (indent=None))]
    fn json(&self, indent: Option<usize>) -> String {
        let v = self.row.value.as_deref().unwrap_or("null");
        match indent {
            None => v.to_owned(),
            Some(n) => values::indent_json(v, n),
        }
    }
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("op", &self.row.op)?;
        d.set_item("before", self.before(py)?)?;
        d.set_item("after", self.after(py)?)?;
        d.set_item("source", self.source(py)?)?;
        d.set_item("transaction", self.transaction(py)?)?;
        d.set_item("ts_ms", self.ts_ms()?)?;
        d.set_item("ts_us", self.ts_us()?)?;
        d.set_item("ts_ns", self.ts_ns()?)?;
        let unchanged = self.field(py, Field::UnchangedColumns)?;
        if !unchanged.is_none(py) {
            d.set_item("unchanged_columns", unchanged)?;
        }
        let message = self.field(py, Field::Message)?;
        if !message.is_none(py) {
            d.set_item("message", message)?;
        }
        Ok(d)
    }
    fn __repr__(&self) -> String {
        format!(
            "Event(feed={:?}, op={:?}, table={:?}, position=('{}', {}))",
            self.row.feed.name,
            self.row.op,
            self.table(),
            self.row.commit_lsn,
            self.row.ordinal
        )
    }
}

/// A logical message's block, its `content` as bytes.
fn message_py(py: Python<'_>, raw: Option<&str>, o: &EncoderOptions) -> PyResult<Py<PyAny>> {
    let Some(m) = raw else { return Ok(py.None()) };
    let md = values::json(py, m)?.cast_into::<PyDict>()?;
    if let Some(c) = md.get_item("content")? {
        if let Ok(s) = c.extract::<String>() {
            md.set_item("content", pyo3::types::PyBytes::new(py, &decode_binary(&s, o.binary)?))?;
        }
    }
    Ok(md.into_any().unbind())
}

fn raw_py(py: Python<'_>, raw: Option<&str>) -> PyResult<Py<PyAny>> {
    match raw {
        Some(r) => Ok(values::json(py, r)?.unbind()),
        None => Ok(py.None()),
    }
}

fn row_py(py: Python<'_>, raw: Option<&str>, cols: Option<&Columns>, o: &EncoderOptions) -> PyResult<Py<PyAny>> {
    let Some(raw) = raw else { return Ok(py.None()) };
    if raw == "null" {
        return Ok(py.None());
    }
    let Some(cols) = cols else { return Ok(values::json(py, raw)?.unbind()) };
    let row: RowEntries<'_> = serde_json::from_str(raw).map_err(|e| PgError::Data(format!("row JSON: {e}")))?;
    let d = PyDict::new(py);
    for (position, (JsonKey(k), v)) in row.0.into_iter().enumerate() {
        let value = match cols.get(position, &k) {
            Some(kind) => typed_json(py, &k, kind, v.get(), o)?,
            None => values::json(py, v.get())?,
        };
        d.set_item(PyString::intern(py, &k), value)?;
    }
    Ok(d.into_any().unbind())
}
