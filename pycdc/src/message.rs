//! `ReplicationMessage`: one Debezium change event as a Python object.
//!
//! The Rust side fills in everything while the GIL is free: the Debezium JSON (from
//! `pgcdc_core::debezium::Encoder`), the event's position, and the row columns as the bytes
//! pgoutput sent. Python objects are made on first access and cached: `before`/`after` from
//! the columns with exact types (see [`crate::values`]), `source`/`transaction` from the JSON.
//!
//! Unchanged TOAST columns (an UPDATE that did not touch a large value, without REPLICA
//! IDENTITY FULL) are never faked: they are absent from `after` and named in
//! `unchanged_columns`, exactly as in the JSON.

use std::sync::Arc;

use bytes::Bytes;
use pgcdc_core::debezium::Op;
use pgcdc_core::relation::TableSchema;
use pgcdc_core::Lsn;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};

use crate::errors::PgError;
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
    before: PyOnceLock<Py<PyAny>>,
    after: PyOnceLock<Py<PyAny>>,
    source: PyOnceLock<Py<PyAny>>,
    transaction: PyOnceLock<Py<PyAny>>,
    unchanged: PyOnceLock<Py<PyAny>>,
}

impl ReplicationMessage {
    pub fn new(inner: RowMsg) -> Self {
        ReplicationMessage {
            inner,
            before: PyOnceLock::new(),
            after: PyOnceLock::new(),
            source: PyOnceLock::new(),
            transaction: PyOnceLock::new(),
            unchanged: PyOnceLock::new(),
        }
    }

    fn row(&self, py: Python<'_>, cols: Option<&Vec<Col>>, fallback: Option<&Vec<Col>>) -> PyResult<Py<PyAny>> {
        let (Some(cols), Some(table)) = (cols, self.inner.table.as_ref()) else {
            return Ok(py.None());
        };
        let d = PyDict::new(py);
        for (i, (col, schema)) in cols.iter().zip(&table.columns).enumerate() {
            let col = match (col, fallback.and_then(|f| f.get(i))) {
                (Col::Unchanged, Some(f @ (Col::Text(_) | Col::Binary(_) | Col::Null))) => f,
                _ => col,
            };
            if let Some(v) = values::column(py, &schema.kind, col, &table.data_collection, &schema.name)? {
                d.set_item(PyString::intern(py, &schema.name), v)?;
            }
        }
        Ok(d.into_any().unbind())
    }

    fn envelope_field(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        #[derive(serde::Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow)]
            source: Option<&'a serde_json::value::RawValue>,
            #[serde(borrow)]
            transaction: Option<&'a serde_json::value::RawValue>,
        }
        let env: Envelope<'_> =
            serde_json::from_str(&self.inner.json).map_err(|e| PgError::Data(format!("event JSON: {e}")))?;
        let raw = match name {
            "source" => env.source,
            _ => env.transaction,
        };
        match raw {
            Some(r) => Ok(values::json(py, r.get())?.unbind()),
            None => Ok(py.None()),
        }
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
        self.before.get_or_try_init(py, || self.row(py, self.inner.before.as_ref(), None)).map(|v| v.clone_ref(py))
    }

    /// The new row; unchanged TOAST columns are left out (see `unchanged_columns`).
    #[getter]
    fn after(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.after
            .get_or_try_init(py, || self.row(py, self.inner.after.as_ref(), self.inner.fallback.as_ref()))
            .map(|v| v.clone_ref(py))
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
                let mut names = Vec::new();
                if let (Some(cols), Some(table)) = (&self.inner.after, &self.inner.table) {
                    for (i, c) in cols.iter().enumerate() {
                        let from_fallback = self
                            .inner
                            .fallback
                            .as_ref()
                            .and_then(|f| f.get(i))
                            .is_some_and(|f| !matches!(f, Col::Unchanged));
                        if matches!(c, Col::Unchanged) && !from_fallback {
                            names.push(table.columns[i].name.clone());
                        }
                    }
                }
                Ok::<_, PyErr>(pyo3::types::PyTuple::new(py, names)?.into_any().unbind())
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

    /// The Debezium event as JSON text (compact when `indent` is None), exactly as the
    /// encoder wrote it: same key order, same numbers.
    #[pyo3(signature = (indent=None))]
    fn json(&self, indent: Option<usize>) -> String {
        match indent {
            None => self.inner.json.clone(),
            Some(n) => values::indent_json(&self.inner.json, n),
        }
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
