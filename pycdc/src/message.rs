//! `ReplicationMessage`: one Debezium change event as a Python object.
//!
//! The Rust side fills in everything while the GIL is free: the Debezium JSON (from
//! `pgcdc_core::debezium::Encoder`), the event's position, and the row columns as the bytes
//! pgoutput sent. Python objects are made on first access and cached: `before`/`after` from
//! the columns (the seed library's types, [`crate::seed`], or with `rich_types` those of
//! [`crate::values`]), `source`/`transaction` from the Debezium JSON. `json()` is the seed
//! library's event made from the columns on demand, or (`format="debezium"`) the encoder's.
//!
//! Unchanged TOAST columns (an UPDATE that did not touch a large value, without REPLICA
//! IDENTITY FULL) are never faked: they are absent from `after` and named in
//! `unchanged_columns`, exactly as in the JSON.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use pgcdc_core::debezium::Op;
use pgcdc_core::relation::{ColumnSchema, TableSchema};
use pgcdc_core::Lsn;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString};

use crate::errors::PgError;
use crate::seed::{self, Format, Types, View};
use crate::values::{self, Col};

/// A logical decoding message (`pg_logical_emit_message`).
#[derive(Debug, Clone)]
pub struct LogicalMessage {
    pub prefix: String,
    pub content: Bytes,
    pub transactional: bool,
}

/// Everything about one event, built without the GIL.
#[derive(Debug, Clone)]
pub struct RowMsg {
    pub op: Op,
    pub table: Option<Arc<TableSchema>>,
    pub before: Option<Vec<Col>>,
    pub after: Option<Vec<Col>>,
    /// The full old row (REPLICA IDENTITY FULL): source of unchanged TOAST values in `after`.
    pub fallback: Option<Vec<Col>>,
    /// The Debezium event value, compact JSON.
    pub json: String,
    pub commit_lsn: Lsn,
    pub ordinal: u32,
    pub lsn: Lsn,
    pub xid: Option<u32>,
    /// Envelope time (when the event was built), nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    pub message: Option<LogicalMessage>,
}

impl RowMsg {
    /// Position for acknowledgement and deduplication: (commit LSN, ordinal).
    pub fn position(&self) -> (Lsn, u32) {
        (self.commit_lsn, self.ordinal)
    }

    /// A row's columns with their schema; an unchanged TOAST column takes the full old row's
    /// value when there is one (REPLICA IDENTITY FULL). None without a row.
    pub fn columns(&self, after: bool) -> Option<Vec<(&ColumnSchema, &Col)>> {
        let table = self.table.as_ref()?;
        let (cols, fallback) =
            if after { (self.after.as_ref()?, self.fallback.as_ref()) } else { (self.before.as_ref()?, None) };
        Some(
            cols.iter()
                .zip(&table.columns)
                .enumerate()
                .map(|(i, (col, schema))| match (col, fallback.and_then(|f| f.get(i))) {
                    (Col::Unchanged, Some(f @ (Col::Text(_) | Col::Binary(_) | Col::Null))) => (schema, f),
                    _ => (schema, col),
                })
                .collect(),
        )
    }

    /// Columns of `after` whose TOASTed value did not change and was not sent.
    pub fn unchanged_columns(&self) -> Vec<&str> {
        self.columns(true)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, c)| matches!(c, Col::Unchanged))
            .map(|(s, _)| s.name.as_str())
            .collect()
    }

    /// The `source` (or `transaction`) block of the Debezium event, as JSON text.
    pub fn envelope_raw(&self, name: &str) -> Result<Option<&str>, PgError> {
        #[derive(serde::Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow)]
            source: Option<&'a serde_json::value::RawValue>,
            #[serde(borrow)]
            transaction: Option<&'a serde_json::value::RawValue>,
        }
        let env: Envelope<'_> =
            serde_json::from_str(&self.json).map_err(|e| PgError::Data(format!("event JSON: {e}")))?;
        let raw = if name == "source" { env.source } else { env.transaction };
        Ok(raw.map(|r| r.get()).filter(|r| *r != "null"))
    }
}

/// A PostgreSQL `interval`: months, days and microseconds kept apart, as PostgreSQL keeps
/// them (a month is not a fixed number of days).
#[pyclass(frozen, eq, hash, module = "pgcdc._pgcdc")]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Interval {
    #[pyo3(get)]
    pub months: i32,
    #[pyo3(get)]
    pub days: i32,
    #[pyo3(get)]
    pub microseconds: i64,
}

#[pymethods]
impl Interval {
    #[new]
    #[pyo3(signature = (months=0, days=0, microseconds=0))]
    fn new(months: i32, days: i32, microseconds: i64) -> Self {
        Interval { months, days, microseconds }
    }

    /// As `datetime.timedelta`, counting a month as `days_per_month` days (PostgreSQL's
    /// `justify_days` uses 30).
    #[pyo3(signature = (days_per_month=30))]
    fn to_timedelta<'py>(&self, py: Python<'py>, days_per_month: i64) -> PyResult<Bound<'py, PyAny>> {
        let days = i64::from(self.months) * days_per_month + i64::from(self.days);
        let td = py.import("datetime")?.getattr("timedelta")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("days", days)?;
        kwargs.set_item("microseconds", self.microseconds)?;
        td.call((), Some(&kwargs))
    }

    fn __repr__(&self) -> String {
        format!("Interval(months={}, days={}, microseconds={})", self.months, self.days, self.microseconds)
    }
}

/// One change event. Attribute names follow Debezium's envelope (and the pgoutput-decoder
/// library's `ReplicationMessage`).
#[pyclass(frozen, module = "pgcdc._pgcdc")]
pub struct ReplicationMessage {
    pub inner: RowMsg,
    pub mode: Mode,
    before: PyOnceLock<Py<PyAny>>,
    after: PyOnceLock<Py<PyAny>>,
    source: PyOnceLock<Py<PyAny>>,
    transaction: PyOnceLock<Py<PyAny>>,
    unchanged: PyOnceLock<Py<PyAny>>,
}

/// How a reader renders its messages (`format=`, `rich_types=`).
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    pub format: Format,
    pub types: Types,
}

impl ReplicationMessage {
    pub fn new(inner: RowMsg, mode: Mode) -> Self {
        ReplicationMessage {
            inner,
            mode,
            before: PyOnceLock::new(),
            after: PyOnceLock::new(),
            source: PyOnceLock::new(),
            transaction: PyOnceLock::new(),
            unchanged: PyOnceLock::new(),
        }
    }

    /// A row as a dict of Python values (`view`: as the seed JSON holds them).
    fn row(&self, py: Python<'_>, after: bool, view: View) -> PyResult<Py<PyAny>> {
        let Some(columns) = self.inner.columns(after) else { return Ok(py.None()) };
        let table = self.table();
        let d = PyDict::new(py);
        for (schema, col) in columns {
            let v = match (view, self.mode.types) {
                (View::Python, Types::Rich) => values::column(py, &schema.kind, col, &table, &schema.name)?,
                _ => match seed::parse_col(&schema.kind, col, &table, &schema.name)? {
                    Some(p) => Some(seed::py_value(py, &p.value, p.text, view)?),
                    None => None,
                },
            };
            if let Some(v) = v {
                d.set_item(PyString::intern(py, &schema.name), v)?;
            }
        }
        Ok(d.into_any().unbind())
    }

    fn envelope_field(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        match self.inner.envelope_raw(name)? {
            Some(raw) => Ok(values::json(py, raw)?.unbind()),
            None => Ok(py.None()),
        }
    }

    /// The event as `message.json()` gives it: the seed shape or Debezium's (compact).
    pub fn event_json(&self) -> Result<std::borrow::Cow<'_, str>, PgError> {
        match self.mode.format {
            Format::Debezium => Ok(self.inner.json.as_str().into()),
            Format::Seed => seed::event_json(&self.inner).map(Into::into),
        }
    }

    /// `message_to_dict(message)`: the seed event as a dict, equal to `json.loads` of its JSON.
    pub fn seed_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("op", self.op(py))?;
        d.set_item("before", self.row(py, false, View::Json)?)?;
        d.set_item("after", self.row(py, true, View::Json)?)?;
        d.set_item("source", self.source(py)?)?;
        d.set_item("ts_ms", self.ts_ms())?;
        d.set_item("ts_us", self.ts_us())?;
        d.set_item("ts_ns", self.ts_ns())?;
        let unchanged = self.inner.unchanged_columns();
        if !unchanged.is_empty() {
            d.set_item("unchanged_columns", PyList::new(py, unchanged)?)?;
        }
        if let Some(m) = &self.inner.message {
            let md = PyDict::new(py);
            md.set_item("prefix", &m.prefix)?;
            md.set_item("content", base64::engine::general_purpose::STANDARD.encode(&m.content))?;
            md.set_item("transactional", m.transactional)?;
            d.set_item("message", md)?;
        }
        Ok(d)
    }

    pub fn op_code(&self) -> &'static str {
        self.inner.op.code().unwrap_or("?")
    }
}

#[pymethods]
impl ReplicationMessage {
    /// `c` insert, `u` update, `d` delete, `t` truncate, `m` logical message.
    #[getter]
    fn op<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        PyString::intern(py, self.op_code())
    }

    /// The old row: the replica identity (primary key by default, the whole row under
    /// REPLICA IDENTITY FULL) for updates and deletes; None for inserts.
    #[getter]
    fn before(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.before.get_or_try_init(py, || self.row(py, false, View::Python)).map(|v| v.clone_ref(py))
    }

    /// The new row; unchanged TOAST columns are left out (see `unchanged_columns`).
    #[getter]
    fn after(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.after.get_or_try_init(py, || self.row(py, true, View::Python)).map(|v| v.clone_ref(py))
    }

    /// Debezium's `source` block: version, connector, name, ts_ms, snapshot, db, sequence,
    /// ts_us, ts_ns, schema, table, txId, lsn (an integer), xmin, ...
    #[getter]
    fn source(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.source.get_or_try_init(py, || self.envelope_field(py, "source")).map(|v| v.clone_ref(py))
    }

    /// Debezium's `transaction` block (None unless `provide.transaction.metadata`).
    #[getter]
    fn transaction(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.transaction.get_or_try_init(py, || self.envelope_field(py, "transaction")).map(|v| v.clone_ref(py))
    }

    /// Columns of `after` whose TOASTed value did not change and was not sent.
    #[getter]
    fn unchanged_columns(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.unchanged
            .get_or_try_init(py, || {
                Ok::<_, PyErr>(pyo3::types::PyTuple::new(py, self.inner.unchanged_columns())?.into_any().unbind())
            })
            .map(|v| v.clone_ref(py))
    }

    /// Envelope time in milliseconds since the Unix epoch (when pgcdc built the event).
    #[getter]
    fn ts_ms(&self) -> i64 {
        self.inner.ts_ns.div_euclid(1_000_000)
    }

    #[getter]
    fn ts_us(&self) -> i64 {
        self.inner.ts_ns.div_euclid(1_000)
    }

    #[getter]
    fn ts_ns(&self) -> i64 {
        self.inner.ts_ns
    }

    /// LSN of the change, as `X/Y`.
    #[getter]
    fn lsn(&self) -> String {
        self.inner.lsn.to_string()
    }

    /// Commit LSN of the change's transaction, as `X/Y`; with `ordinal` a stable position.
    #[getter]
    fn commit_lsn(&self) -> String {
        self.inner.commit_lsn.to_string()
    }

    /// 1-based position of the event in its transaction.
    #[getter]
    fn ordinal(&self) -> u32 {
        self.inner.ordinal
    }

    #[getter]
    fn xid(&self) -> Option<u32> {
        self.inner.xid
    }

    /// `schema.table` (empty for logical messages).
    #[getter]
    fn table(&self) -> String {
        self.inner.table.as_ref().map(|t| t.data_collection.clone()).unwrap_or_default()
    }

    /// For `op == "m"`: `{"prefix": str, "content": bytes, "transactional": bool}`.
    #[getter]
    fn message<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(m) = &self.inner.message else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("prefix", &m.prefix)?;
        d.set_item("content", pyo3::types::PyBytes::new(py, &m.content))?;
        d.set_item("transactional", m.transactional)?;
        Ok(Some(d))
    }

    /// The event as JSON text (compact when `indent` is None): the seed library's shape, or
    /// with `format="debezium"` Debezium's exactly as the encoder wrote it.
    #[pyo3(signature = (indent=None))]
    fn json(&self, indent: Option<usize>) -> PyResult<String> {
        let json = self.event_json()?;
        Ok(match indent {
            None => json.into_owned(),
            Some(n) => values::indent_json(&json, n),
        })
    }

    /// op, before, after, source, transaction, ts_ms, ts_us, ts_ns (and unchanged_columns,
    /// message when they apply) as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("op", self.op(py))?;
        d.set_item("before", self.before(py)?)?;
        d.set_item("after", self.after(py)?)?;
        d.set_item("source", self.source(py)?)?;
        d.set_item("transaction", self.transaction(py)?)?;
        d.set_item("ts_ms", self.ts_ms())?;
        d.set_item("ts_us", self.ts_us())?;
        d.set_item("ts_ns", self.ts_ns())?;
        let unchanged = self.unchanged_columns(py)?;
        if unchanged.bind(py).len()? > 0 {
            d.set_item("unchanged_columns", unchanged)?;
        }
        if let Some(m) = self.message(py)? {
            d.set_item("message", m)?;
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "ReplicationMessage(op={:?}, table={:?}, commit_lsn='{}', ordinal={})",
            self.op_code(),
            self.table(),
            self.inner.commit_lsn,
            self.inner.ordinal
        )
    }
}
