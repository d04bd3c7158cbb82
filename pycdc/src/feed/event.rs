//! The Python class `Event`: one event of a feed, its envelope's fields made into Python
//! objects once, on first access (column values by [`super::debezium_values`]).

use pgcdc_core::debezium::EncoderOptions;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};
use serde_json::value::RawValue;

use super::debezium_values::{decode_binary, preview, typed};
use super::{Columns, FeedRow};
use crate::errors::PgError;
use crate::values;

/// One event of a feed: Debezium's envelope plus its position.
#[pyclass(frozen, module = "pgcdc._pgcdc", name = "Event")]
pub(super) struct FeedEvent {
    pub(super) row: FeedRow,
    parsed: PyOnceLock<Py<PyDict>>,
}

impl FeedEvent {
    pub(super) fn new(row: FeedRow) -> Self {
        FeedEvent { row, parsed: PyOnceLock::new() }
    }

    /// The envelope's fields as Python objects, converted once.
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyDict>> {
        self.parsed
            .get_or_try_init(py, || {
                let d = PyDict::new(py);
                if let Some(v) = &self.row.value {
                    #[derive(serde::Deserialize)]
                    struct Env<'a> {
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
                    // A schema+payload envelope carries the event in "payload".
                    #[derive(serde::Deserialize)]
                    struct Wrapped<'a> {
                        #[serde(borrow)]
                        payload: Option<&'a RawValue>,
                    }
                    let text = match serde_json::from_str::<Wrapped<'_>>(v) {
                        Ok(Wrapped { payload: Some(p) }) => p.get(),
                        _ => v.as_str(),
                    };
                    let env: Env<'_> =
                        serde_json::from_str(text).map_err(|e| PgError::Data(format!("event JSON: {e}")))?;
                    let o = &self.row.options;
                    let cols = self.row.columns.as_deref();
                    d.set_item("before", row_py(py, env.before, cols, o)?)?;
                    d.set_item("after", row_py(py, env.after, cols, o)?)?;
                    d.set_item("source", raw_py(py, env.source)?)?;
                    d.set_item("transaction", raw_py(py, env.transaction)?)?;
                    d.set_item("unchanged_columns", raw_py(py, env.unchanged_columns)?)?;
                    let message = match env.message {
                        Some(m) => {
                            let md = values::json(py, m.get())?.cast_into::<PyDict>()?;
                            if let Some(c) = md.get_item("content")? {
                                if let Ok(s) = c.extract::<String>() {
                                    md.set_item(
                                        "content",
                                        pyo3::types::PyBytes::new(py, &decode_binary(&s, o.binary)?),
                                    )?;
                                }
                            }
                            md.into_any().unbind()
                        }
                        None => py.None(),
                    };
                    d.set_item("message", message)?;
                    let ts_ms = env.ts_ms.unwrap_or(0);
                    d.set_item("ts_ms", ts_ms)?;
                    d.set_item("ts_us", env.ts_us.unwrap_or(ts_ms * 1000))?;
                    d.set_item("ts_ns", env.ts_ns.unwrap_or(ts_ms * 1_000_000))?;
                }
                Ok::<_, PyErr>(d.unbind())
            })
            .map(|d| d.bind(py))
    }

    fn field(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        Ok(match self.fields(py)?.get_item(name)? {
            Some(v) => v.unbind(),
            None => py.None(),
        })
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
        self.field(py, "before")
    }
    #[getter]
    fn after(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.field(py, "after")
    }
    #[getter]
    fn source(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.field(py, "source")
    }
    #[getter]
    fn transaction(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.field(py, "transaction")
    }
    #[getter]
    fn message(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.field(py, "message")
    }
    /// Columns of `after` whose TOASTed value did not change (not sent, left out).
    #[getter]
    fn unchanged_columns(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let v = self.field(py, "unchanged_columns")?;
        if v.is_none(py) {
            return Ok(pyo3::types::PyTuple::empty(py).into_any().unbind());
        }
        Ok(pyo3::types::PyTuple::new(py, v.bind(py).try_iter()?.collect::<PyResult<Vec<_>>>()?)?.into_any().unbind())
    }
    #[getter]
    fn ts_ms(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.field(py, "ts_ms")
    }
    #[getter]
    fn ts_us(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.field(py, "ts_us")
    }
    #[getter]
    fn ts_ns(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.field(py, "ts_ns")
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
        for k in ["before", "after", "source", "transaction", "ts_ms", "ts_us", "ts_ns"] {
            d.set_item(k, self.field(py, k)?)?;
        }
        let unchanged = self.field(py, "unchanged_columns")?;
        if !unchanged.is_none(py) {
            d.set_item("unchanged_columns", unchanged)?;
        }
        let message = self.field(py, "message")?;
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

fn raw_py(py: Python<'_>, raw: Option<&RawValue>) -> PyResult<Py<PyAny>> {
    match raw {
        Some(r) => Ok(values::json(py, r.get())?.unbind()),
        None => Ok(py.None()),
    }
}

fn row_py(py: Python<'_>, raw: Option<&RawValue>, cols: Option<&Columns>, o: &EncoderOptions) -> PyResult<Py<PyAny>> {
    let Some(raw) = raw else { return Ok(py.None()) };
    if raw.get() == "null" {
        return Ok(py.None());
    }
    let Some(cols) = cols else { return Ok(values::json(py, raw.get())?.unbind()) };
    let map: Vec<(String, &RawValue)> = {
        // Keep the JSON's key order.
        struct Ordered<'a>(Vec<(String, &'a RawValue)>);
        impl<'de> serde::Deserialize<'de> for Ordered<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Ordered<'de>;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a row object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                        let mut out = Vec::new();
                        while let Some((k, v)) = m.next_entry::<String, &'de RawValue>()? {
                            out.push((k, v));
                        }
                        Ok(Ordered(out))
                    }
                }
                d.deserialize_map(V)
            }
        }
        let o: Ordered<'_> = serde_json::from_str(raw.get()).map_err(|e| PgError::Data(format!("row JSON: {e}")))?;
        o.0
    };
    let d = PyDict::new(py);
    for (k, v) in map {
        let value = match cols.get(&k) {
            Some(kind) => {
                let json: serde_json::Value =
                    serde_json::from_str(v.get()).map_err(|e| PgError::Data(format!("column {k}: {e}")))?;
                typed(py, kind, &json, v.get(), o)?
            }
            None => values::json(py, v.get())?,
        };
        d.set_item(PyString::intern(py, &k), value)?;
    }
    Ok(d.into_any().unbind())
}
