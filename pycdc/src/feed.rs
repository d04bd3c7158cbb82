//! The feed client behind `pgcdc.connect(dsn, feed=...)`: streams a pgcdc feed's events over
//! an ordinary SQL session (no REPLICATION privilege; works through poolers in session mode).
//!
//! ```text
//!  [session task, tokio]  LISTEN pgcdc_<feed>
//!      table sink:  loop { SELECT ... FROM pgcdc.read(feed, batch, after = last fetched) ;
//!                          nothing? wait for a NOTIFY (or 30 s) }
//!      notify sink: each NOTIFY payload is an event (or a reference to a staged one)
//!      acks:        SELECT pgcdc.ack(feed, lsn, ordinal), batched (<= 50 ms) and on stop;
//!                   an acknowledgement never causes a read (only NOTIFYs and the 30 s poll do)
//!         | events (JSON text + column types), bounded queue, no GIL
//!         v
//!  [Python] next_ready() / wait(), exactly like LogicalReplicationReader
//! ```
//!
//! Delivery: at-least-once. The server keeps every staged event until it is acknowledged; a
//! reconnect (with exponential backoff, 0.1 s to 30 s) resumes after the last event this
//! process delivered, and a new process resumes after the last acknowledged one. A NOTIFY
//! feed delivers what is sent while connected (PostgreSQL does not queue notifications for
//! absent listeners); acknowledging one only removes events staged because they were too big
//! for a payload. Positions are compared, never counted: ordinals increase within a
//! transaction but need not be consecutive.
//!
//! Acknowledgements after a server crash: the queue is UNLOGGED, so after a crash it is empty
//! until the feed's worker has staged the unacknowledged events again from the slot. Until
//! then `pgcdc.ack` refuses a position this process saw before the crash (22023, "cannot
//! acknowledge ..."). That refusal is not an error of the stream: the acknowledgement stays
//! pending and is retried (every second, and as soon as a read returns rows) until the
//! worker has caught up.
//!
//! Closing: `close()` flushes pending acknowledgements within its timeout (5 s by default;
//! a connection attempt is abandoned at once when there is nothing to flush) and raises
//! `OperationalError` when some could not be flushed; `ack()` after `close()` raises
//! `InterfaceError`. Liveness: TCP keepalives are on, and every query has a deadline
//! ([`QUERY_TIMEOUT`]), so a half-open connection ends in a reconnect, not a hang.
//!
//! Feed identity: an event carries its feed ([`FeedIdentity`]: name and creation time), and
//! `ack(event)` refuses one of another feed, whose position would acknowledge events of this
//! one never delivered. A feed dropped and created again under the stream's name is another
//! feed: a session that finds it (at a reconnect, or in a read) ends the stream.
//!
//! Names: every session pins `search_path` first ([`crate::sql::pin_search_path`]) and every
//! statement is schema-qualified, so nothing planted on the user's `search_path` runs.
//!
//! Values: the event JSON is turned into Python with the column types from the catalog and
//! the feed's Debezium options (see [`typed`]), so numeric is a `Decimal`, bytea `bytes`,
//! timestamps `datetime`... Where Debezium's format itself loses information the result says
//! what the JSON says: `interval` in numeric mode is microseconds with 30.4375-day months,
//! `timetz` is in UTC, a `varbit`'s leading zeros are gone (`B'0001'` is `"1"`; `B'000'` and
//! `B''` are both `""`). Malformed binary values (invalid base64 or hex) are a `DataError`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use futures_util::StreamExt;
use pgcdc_core::catalog::{Catalog, TypeKind, TypeRow};
use pgcdc_core::debezium::{BinaryMode, DecimalMode, EncoderOptions, HstoreMode, IntervalMode, TimePrecisionMode};
use pgcdc_core::value::{Infinite, Value};
use pgcdc_core::Lsn;
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, Notify};

use crate::errors::PgError;
use crate::signal::{Op, Signal, Stop};
use crate::values;
use pgcdc_wire::ConnParams;

type Pos = (Lsn, u32);

/// Acknowledgements are sent at most this often (the newest one wins).
const ACK_INTERVAL: Duration = Duration::from_millis(50);
/// A refused acknowledgement (not staged again yet after a crash) is retried this often.
const ACK_RETRY: Duration = Duration::from_secs(1);
/// Bound on any one query: beyond it the connection counts as lost (and is reopened).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `close()` may spend flushing acknowledgements unless told otherwise.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct FeedConfig {
    pub conn: ConnParams,
    pub feed: String,
    pub batch_size: i32,
    pub auto_ack: bool,
    pub reconnect: bool,
    pub reconnect_timeout: Option<Duration>,
    pub max_buffered: usize,
    /// Fallback poll when no NOTIFY arrives (a missed wake-up costs at most this).
    pub idle_poll: Duration,
}

/// Column types of one table, in column order.
#[derive(Debug, Default)]
pub struct Columns {
    pub kinds: Vec<(String, TypeKind)>,
}

impl Columns {
    fn get(&self, name: &str) -> Option<&TypeKind> {
        self.kinds.iter().find(|(n, _)| n == name).map(|(_, k)| k)
    }
}

/// Which feed an event belongs to. A feed dropped and created again under the same name is
/// another feed (its positions name other events), told apart by when it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedIdentity {
    pub name: String,
    pub created_at: SystemTime,
}

/// One event as read from the feed, before any Python object is made.
#[derive(Debug, Clone)]
pub struct FeedRow {
    pub feed: Arc<FeedIdentity>,
    pub commit_lsn: Lsn,
    pub ordinal: u32,
    pub lsn: Lsn,
    pub xid: Option<i64>,
    pub op: String,
    pub schema: String,
    pub table: String,
    pub topic: String,
    pub key: Option<String>,
    pub value: Option<String>,
    /// The Kafka headers as a JSON object (`__debezium.newkey`...), None without any.
    pub headers: Option<String>,
    /// Staged in pgcdc.event (always for table feeds; for NOTIFY feeds only big events).
    pub staged: bool,
    pub columns: Option<Arc<Columns>>,
    pub options: Arc<EncoderOptions>,
}

impl FeedRow {
    fn position(&self) -> Pos {
        (self.commit_lsn, self.ordinal)
    }
}

#[derive(Default)]
struct State {
    /// The feed this stream reads, as its first session found it.
    feed: Option<Arc<FeedIdentity>>,
    queue: VecDeque<Box<FeedRow>>,
    last_delivered: Option<Pos>,
    /// Highest position acknowledged by the consumer / sent to the server.
    ack_wanted: Option<Pos>,
    ack_sent: Option<Pos>,
    error: Option<PgError>,
    finished: bool,
    stopping: bool,
    started: bool,
    backend_pid: i32,
    sessions: u64,
    sink_notify: bool,
    armed: bool,
    /// NOTIFY feeds: positions of queued/delivered events that were staged (too big for a
    /// payload); only those need `pgcdc.ack`. Removed once an acknowledgement covering them
    /// succeeded.
    staged_notify: VecDeque<Pos>,
    /// Why the last acknowledgement (or connection) attempt failed, for the close report.
    ack_failure: Option<PgError>,
    /// Set when the task ended with acknowledgements it could not flush; raised by close().
    unflushed: Option<PgError>,
}

/// What flushing acknowledgements has to do.
enum AckTarget {
    /// Nothing new.
    Nothing,
    /// Send `pgcdc.ack` up to this position.
    Send(Pos),
}

impl State {
    /// The position to read after: the newest delivered or queued event.
    fn last_fetched(&self) -> Option<Pos> {
        self.queue.back().map(|r| r.position()).max(self.last_delivered)
    }

    /// What to acknowledge on the server now. NOTIFY feeds only acknowledge staged events,
    /// so an acknowledgement covering none of them is complete without a query.
    fn ack_target(&mut self) -> AckTarget {
        let Some(wanted) = self.ack_wanted else { return AckTarget::Nothing };
        if Some(wanted) <= self.ack_sent {
            return AckTarget::Nothing;
        }
        if !self.sink_notify {
            return AckTarget::Send(wanted);
        }
        match self.staged_notify.iter().take_while(|p| **p <= wanted).last() {
            Some(p) => AckTarget::Send(*p),
            None => {
                self.ack_sent = Some(wanted);
                AckTarget::Nothing
            }
        }
    }

    /// `pgcdc.ack` up to `pos` succeeded.
    fn acked(&mut self, pos: Pos) {
        while self.staged_notify.front().is_some_and(|p| *p <= pos) {
            self.staged_notify.pop_front();
        }
        let complete = self.sink_notify && self.staged_notify.front().is_none_or(|p| Some(*p) > self.ack_wanted);
        self.ack_sent = if complete { self.ack_wanted.max(Some(pos)) } else { Some(pos).max(self.ack_sent) };
        self.ack_failure = None;
    }

    fn acks_pending(&self) -> bool {
        self.ack_wanted > self.ack_sent
    }
}

pub struct Shared {
    state: Mutex<State>,
    signal: Signal,
    /// The queue has room again.
    space: Notify,
    /// The consumer acknowledged something: flush it (never a reason to read).
    ack_wake: Notify,
    stop: Stop,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acks_pending(&self) -> bool {
        self.lock().acks_pending()
    }
}

// ----------------------------------------------------------------------------- Python API

/// The native stream. `pgcdc.FeedStream` wraps it (see `pgcdc/_feed.py`).
#[pyclass(module = "pgcdc._pgcdc", name = "_Feed")]
pub struct PyFeed {
    config: FeedConfig,
    shared: Arc<Shared>,
    /// The process that opened it (see `crate::check_process`).
    pid: u32,
}

impl Drop for PyFeed {
    fn drop(&mut self) {
        self.request_stop(STOP_GRACE);
    }
}

impl PyFeed {
    fn ensure_started(&self) {
        let mut st = self.shared.lock();
        if st.started || st.stopping {
            return;
        }
        st.started = true;
        drop(st);
        let on_panic = self.shared.clone();
        crate::spawn_supervised(run(self.shared.clone(), self.config.clone()), move |e| {
            let mut st = on_panic.lock();
            st.error = Some(e);
            st.finished = true;
            drop(st);
            on_panic.signal.notify();
        });
    }

    fn request_stop(&self, grace: Duration) {
        if crate::check_process(self.pid).is_err() {
            return; // the parent's stream: its locks may be held by threads that do not exist here
        }
        let mut st = self.shared.lock();
        st.stopping = true;
        let running = st.started && !st.finished;
        if !running {
            let never_started = !st.started && !st.finished;
            st.finished = true;
            if never_started && st.acks_pending() {
                st.unflushed = Some(PgError::Operational(
                    "acknowledgements were made but the stream never connected: nothing was flushed".into(),
                ));
            }
        }
        drop(st);
        self.shared.stop.request(grace);
        self.shared.space.notify_one();
        self.shared.signal.notify();
    }

    fn check_process(&self, py: Python<'_>) -> PyResult<()> {
        crate::check_process(self.pid).map_err(|e| e.to_py(py))
    }
}

#[pymethods]
impl PyFeed {
    #[new]
    #[pyo3(signature = (dsn, feed, *, batch_size, auto_acknowledge, reconnect, reconnect_timeout, max_buffered, connect_timeout))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        dsn: &str,
        feed: String,
        batch_size: i32,
        auto_acknowledge: bool,
        reconnect: bool,
        reconnect_timeout: Option<f64>,
        max_buffered: usize,
        connect_timeout: Option<f64>,
    ) -> PyResult<Self> {
        let mut conn = ConnParams::from_dsn(dsn).map_err(PgError::Interface)?;
        if let Some(t) = connect_timeout {
            conn.connect_timeout = crate::seconds("connect_timeout", t)?.max(Duration::from_millis(1));
        }
        if !(1..=1_000_000).contains(&batch_size) {
            return Err(
                PgError::Interface(format!("batch_size must be between 1 and 1000000, not {batch_size}")).into()
            );
        }
        Ok(PyFeed {
            config: FeedConfig {
                conn,
                feed,
                batch_size,
                auto_ack: auto_acknowledge,
                reconnect,
                reconnect_timeout: reconnect_timeout.map(|s| crate::seconds("reconnect_timeout", s)).transpose()?,
                max_buffered: max_buffered.max(16),
                idle_poll: Duration::from_secs(30),
            },
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                signal: Signal::new(),
                space: Notify::new(),
                ack_wake: Notify::new(),
                stop: Stop::default(),
            }),
            pid: std::process::id(),
        })
    }

    /// True once the first session streams; raises its error; else arms the signal.
    fn opened(&self, py: Python<'_>) -> PyResult<bool> {
        self.check_process(py)?;
        self.ensure_started();
        let mut st = self.shared.lock();
        if let Some(e) = st.error.clone() {
            drop(st);
            return Err(e.to_py(py));
        }
        if st.sessions > 0 || st.finished {
            return Ok(true);
        }
        st.armed = true;
        Ok(false)
    }

    fn fileno(&self) -> i32 {
        self.shared.signal.fileno()
    }

    fn drain(&self) {
        self.shared.signal.drain();
    }

    fn next_ready(&self, py: Python<'_>) -> PyResult<Option<Py<FeedEvent>>> {
        self.check_process(py)?;
        self.ensure_started();
        let mut st = self.shared.lock();
        if self.config.auto_ack && !st.stopping {
            if let Some(p) = st.last_delivered {
                if st.ack_wanted < Some(p) {
                    st.ack_wanted = Some(p);
                    self.shared.ack_wake.notify_one();
                }
            }
        }
        let before = st.queue.len();
        if let Some(row) = st.queue.pop_front() {
            st.last_delivered = Some(row.position());
            let room = before >= self.config.max_buffered / 2 && st.queue.len() < self.config.max_buffered / 2;
            drop(st);
            if room {
                self.shared.space.notify_one();
            }
            return Ok(Some(Py::new(py, FeedEvent::new(*row))?));
        }
        if let Some(e) = st.error.clone() {
            drop(st);
            return Err(e.to_py(py));
        }
        if st.finished || st.stopping {
            return Err(PyStopAsyncIteration::new_err(()));
        }
        st.armed = true;
        Ok(None)
    }

    /// Acknowledges every event up to and including `event` (an Event, or None for
    /// everything delivered so far). Sent to the server in batches.
    #[pyo3(signature = (event=None))]
    fn ack(&self, py: Python<'_>, event: Option<Bound<'_, FeedEvent>>) -> PyResult<()> {
        self.check_process(py)?;
        let mut st = self.shared.lock();
        if st.stopping {
            drop(st);
            return Err(PgError::Interface(
                "the stream is closed: an acknowledgement now would never reach the server".into(),
            )
            .to_py(py));
        }
        let pos = match &event {
            Some(e) => {
                let row = &e.get().row;
                if let Some(why) = foreign_event(&self.config.feed, st.feed.as_deref(), &row.feed) {
                    drop(st);
                    return Err(PgError::Interface(why).to_py(py));
                }
                Some(row.position())
            }
            None => st.last_delivered,
        };
        if let Some(p) = pos {
            if st.ack_wanted < Some(p) {
                st.ack_wanted = Some(p);
            }
        }
        drop(st);
        self.shared.ack_wake.notify_one();
        Ok(())
    }

    /// Asks the stream to flush acknowledgements (within `timeout` seconds) and close (see
    /// `finished`, then `check_closed`).
    #[pyo3(name = "request_stop", signature = (timeout=None))]
    fn py_request_stop(&self, timeout: Option<f64>) -> PyResult<()> {
        let grace = timeout.map(|t| crate::seconds("timeout", t)).transpose()?.unwrap_or(STOP_GRACE);
        self.request_stop(grace);
        Ok(())
    }

    /// True once closed; otherwise arms the signal for the end.
    fn finished(&self) -> bool {
        let mut st = self.shared.lock();
        if !st.finished {
            st.armed = true;
        }
        st.finished
    }

    /// After the end: raises `OperationalError` when acknowledgements could not be flushed.
    fn check_closed(&self, py: Python<'_>) -> PyResult<()> {
        let unflushed = self.shared.lock().unflushed.take();
        match unflushed {
            Some(e) => Err(e.to_py(py)),
            None => Ok(()),
        }
    }

    /// Position of the last acknowledgement sent to the server, `(commit_lsn, ordinal)`.
    #[getter]
    fn acknowledged(&self) -> Option<(String, u32)> {
        self.shared.lock().ack_sent.map(|(l, o)| (l.to_string(), o))
    }

    #[getter]
    fn backend_pid(&self) -> Option<i32> {
        Some(self.shared.lock().backend_pid).filter(|&p| p != 0)
    }

    #[getter]
    fn sessions(&self) -> u64 {
        self.shared.lock().sessions
    }

    #[getter]
    fn sink(&self) -> &'static str {
        if self.shared.lock().sink_notify {
            "notify"
        } else {
            "table"
        }
    }
}

/// Why `event_feed`'s event must not be acknowledged on a stream of `feed` (`stream`: its
/// identity, once known): its position would remove events of this feed never delivered.
fn foreign_event(feed: &str, stream: Option<&FeedIdentity>, event_feed: &FeedIdentity) -> Option<String> {
    if event_feed.name != feed {
        Some(format!(
            "this event belongs to feed \"{}\", not to this stream's feed \"{feed}\": acknowledge it on a stream of its own feed",
            event_feed.name
        ))
    } else if stream.is_some_and(|s| s != event_feed) {
        Some(format!(
            "this event belongs to another feed named \"{feed}\" (dropped and created again since): its position means nothing to this one"
        ))
    } else {
        None
    }
}

// ----------------------------------------------------------------------------- the event

/// One event of a feed: Debezium's envelope plus its position.
#[pyclass(frozen, module = "pgcdc._pgcdc", name = "Event")]
pub struct FeedEvent {
    row: FeedRow,
    parsed: PyOnceLock<Py<PyDict>>,
}

impl FeedEvent {
    fn new(row: FeedRow) -> Self {
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

/// Decodes a Debezium binary value (`binary.handling.mode`); malformed text is a DataError
/// (never silently the text's own bytes).
fn decode_binary(s: &str, mode: BinaryMode) -> Result<Vec<u8>, PgError> {
    let r = match mode {
        BinaryMode::Bytes | BinaryMode::Base64 => base64::engine::general_purpose::STANDARD.decode(s),
        BinaryMode::Base64UrlSafe => base64::engine::general_purpose::URL_SAFE.decode(s),
        BinaryMode::Hex => {
            return s
                .len()
                .is_multiple_of(2)
                .then(|| (0..s.len() / 2).map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect())
                .flatten()
                .ok_or_else(|| PgError::Data(format!("invalid hex binary value {:?}", preview(s))));
        }
    };
    r.map_err(|e| PgError::Data(format!("invalid base64 binary value {:?}: {e}", preview(s))))
}

fn preview(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Length of a varbit from Debezium's BitSet bytes (little-endian, bit 0 = last bit): up to
/// the highest set bit, since leading zeros are not in the JSON. All zeros (or no bytes) is 0.
fn varbit_len(bytes: &[u8]) -> u32 {
    match bytes.iter().rposition(|&b| b != 0) {
        Some(i) => i as u32 * 8 + (8 - bytes[i].leading_zeros()),
        None => 0,
    }
}

/// Big-endian two's complement bytes as decimal digits text.
fn twos_complement_to_text(bytes: &[u8], scale: u32) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    // magnitude in base 1e9 limbs
    let mut mag: Vec<u8> = bytes.to_vec();
    if negative {
        // two's complement negate
        for b in mag.iter_mut() {
            *b = !*b;
        }
        for b in mag.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    let mut digits = Vec::new(); // little-endian decimal digits
    let mut num: Vec<u32> = mag.iter().map(|&b| b as u32).collect();
    while num.iter().any(|&x| x != 0) {
        let mut rem = 0u32;
        for x in num.iter_mut() {
            let cur = (rem << 8) | *x;
            *x = cur / 10;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    let digits = String::from_utf8(digits).unwrap_or_default();
    values::numeric_text(negative && digits != "0", &digits, scale)
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// One column value from its Debezium JSON form, by column type and feed options.
fn typed<'py>(
    py: Python<'py>,
    kind: &TypeKind,
    v: &serde_json::Value,
    raw: &str,
    o: &EncoderOptions,
) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value as J;
    if v.is_null() {
        return Ok(py.None().into_bound(py));
    }
    let plain = || values::json(py, raw);
    Ok(match kind {
        TypeKind::Float4 | TypeKind::Float8 => match v {
            J::String(s) => pyo3::types::PyFloat::new(py, s.parse::<f64>().unwrap_or(f64::NAN)).into_any(),
            _ => plain()?,
        },
        TypeKind::Numeric { .. } | TypeKind::Money => {
            let scale = match kind {
                TypeKind::Numeric { scale, .. } => *scale,
                _ => Some(2),
            };
            let text = match (v, o.decimal) {
                (J::String(s), DecimalMode::Precise) if !matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => {
                    twos_complement_to_text(&decode_binary(s, BinaryMode::Bytes)?, scale.unwrap_or(0))
                }
                (J::Object(m), _) => {
                    let sc = m.get("scale").and_then(J::as_u64).unwrap_or(0) as u32;
                    let bytes = m
                        .get("value")
                        .and_then(J::as_str)
                        .map(|s| decode_binary(s, BinaryMode::Bytes))
                        .transpose()?
                        .unwrap_or_default();
                    twos_complement_to_text(&bytes, sc)
                }
                (J::String(s), _) => match s.as_str() {
                    "NAN" => "NaN".into(),
                    "POSITIVE_INFINITY" => "Infinity".into(),
                    "NEGATIVE_INFINITY" => "-Infinity".into(),
                    other => other.to_owned(),
                },
                (J::Number(_), _) => raw.trim().to_owned(),
                _ => return plain(),
            };
            decimal(py, &text)?
        }
        TypeKind::Bytea => match v {
            J::String(s) => pyo3::types::PyBytes::new(py, &decode_binary(s, o.binary)?).into_any(),
            _ => plain()?,
        },
        TypeKind::Json | TypeKind::Jsonb => match v {
            J::String(s) => values::json(py, s)?,
            _ => plain()?,
        },
        TypeKind::Hstore => match (v, o.hstore) {
            (J::String(s), HstoreMode::Json) => values::json(py, s)?,
            _ => plain()?,
        },
        TypeKind::Date => match v.as_i64() {
            Some(d) if d == i64::from(i32::MAX) => PyString::new(py, "infinity").into_any(),
            Some(d) if d == i64::from(i32::MIN) => PyString::new(py, "-infinity").into_any(),
            Some(d) => values::value(py, &Value::Date(Infinite::Finite(d as i32)), None)?,
            None => plain()?,
        },
        TypeKind::Time { precision } => match v.as_i64() {
            Some(t) => {
                let millis = match o.time_precision {
                    TimePrecisionMode::Connect => true,
                    TimePrecisionMode::Adaptive => precision.is_some_and(|p| p <= 3),
                    TimePrecisionMode::AdaptiveTimeMicroseconds => false,
                };
                values::value(py, &Value::Time(if millis { t * 1000 } else { t }), None)?
            }
            None => plain()?,
        },
        TypeKind::Timestamp { precision } => match v.as_i64() {
            Some(t) => {
                let millis = o.time_precision == TimePrecisionMode::Connect || precision.is_some_and(|p| p <= 3);
                let micros = if millis { t.saturating_mul(1000) } else { t };
                if micros >= 9_223_372_036_825_200_000 {
                    PyString::new(py, "infinity").into_any()
                } else if micros <= -9_223_372_036_832_400_000 {
                    PyString::new(py, "-infinity").into_any()
                } else {
                    values::value(py, &Value::Timestamp(Infinite::Finite(micros)), None)?
                }
            }
            None => plain()?,
        },
        TypeKind::TimestampTz { .. } => match v {
            J::String(s) => match parse_iso_timestamp(s) {
                Some(micros) => values::value(py, &Value::TimestampTz(Infinite::Finite(micros)), Some(s))?,
                None => PyString::new(py, s).into_any(),
            },
            _ => plain()?,
        },
        TypeKind::TimeTz { .. } => match v {
            J::String(s) => match parse_clock(s.trim_end_matches('Z')) {
                Some(micros) => values::value(py, &Value::TimeTz { micros, offset_seconds: 0 }, Some(s))?,
                None => PyString::new(py, s).into_any(),
            },
            _ => plain()?,
        },
        TypeKind::Interval => match (v, o.interval) {
            (J::Number(_), IntervalMode::Numeric) => {
                let micros = v.as_i64().unwrap_or(0);
                Bound::new(py, crate::message::Interval { months: 0, days: 0, microseconds: micros })?.into_any()
            }
            (J::String(s), _) => match parse_iso_interval(s) {
                Some((months, days, micros)) => {
                    Bound::new(py, crate::message::Interval { months, days, microseconds: micros })?.into_any()
                }
                None => PyString::new(py, s).into_any(),
            },
            _ => plain()?,
        },
        TypeKind::Bit { length } => match v {
            J::Bool(b) => PyString::new(py, if *b { "1" } else { "0" }).into_any(),
            J::String(s) => {
                // Bits stay Connect bytes (base64) whatever binary.handling.mode says, as in Debezium.
                let bytes = decode_binary(s, BinaryMode::Bytes)?;
                let len = match length {
                    Some(n) => *n,
                    None => varbit_len(&bytes),
                };
                values::value(py, &Value::Bits { length: len, bytes }, None)?
            }
            _ => plain()?,
        },
        TypeKind::Point => match v {
            J::Object(m) => {
                let x = m.get("x").and_then(J::as_f64).unwrap_or(f64::NAN);
                let y = m.get("y").and_then(J::as_f64).unwrap_or(f64::NAN);
                pyo3::types::PyTuple::new(py, [x, y])?.into_any()
            }
            _ => plain()?,
        },
        TypeKind::Composite { fields } => match v {
            J::Object(m) => {
                let d = PyDict::new(py);
                for (name, fk) in fields {
                    if let Some(fv) = m.get(name) {
                        let raw = fv.to_string();
                        d.set_item(name, typed(py, fk, fv, &raw, o)?)?;
                    }
                }
                d.into_any()
            }
            _ => plain()?,
        },
        TypeKind::Array(elem) => match v {
            J::Array(items) => {
                let l = pyo3::types::PyList::empty(py);
                for it in items {
                    let raw = it.to_string();
                    l.append(typed(py, elem, it, &raw, o)?)?;
                }
                l.into_any()
            }
            _ => plain()?,
        },
        _ => plain()?,
    })
}

fn decimal<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    static DECIMAL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let d = DECIMAL.get_or_try_init(py, || py.import("decimal")?.getattr("Decimal").map(|d| d.unbind()))?;
    d.bind(py).call1((text,))
}

/// `HH:MM:SS[.ffffff]` to microseconds.
fn parse_clock(s: &str) -> Option<i64> {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut it = hms.split(':');
    let h: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let sec: i64 = it.next()?.parse().ok()?;
    let mut us = 0i64;
    if !frac.is_empty() {
        let f = format!("{:0<6}", &frac[..frac.len().min(6)]);
        us = f.parse().ok()?;
    }
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + us)
}

/// `YYYY-MM-DDTHH:MM:SS[.f]Z` (years 1..9999) to microseconds since the Unix epoch.
fn parse_iso_timestamp(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut it = date.split('-');
    let y: i32 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if !(1..=9999).contains(&y) {
        return None;
    }
    let days = pgcdc_core::value::days_from_civil(y, m, d);
    Some(days * MICROS_PER_DAY + parse_clock(time)?)
}

/// Debezium's ISO 8601 interval `P1Y2M3DT4H5M6.789S` to (months, days, microseconds).
fn parse_iso_interval(s: &str) -> Option<(i32, i32, i64)> {
    let s = s.strip_prefix('P')?;
    let (date, time) = s.split_once('T').unwrap_or((s, ""));
    let mut months = 0i64;
    let mut days = 0i64;
    let mut micros = 0i64;
    let mut num = String::new();
    for c in date.chars() {
        match c {
            'Y' => months += num.parse::<i64>().ok()? * 12,
            'M' => months += num.parse::<i64>().ok()?,
            'D' => days += num.parse::<i64>().ok()?,
            'W' => days += num.parse::<i64>().ok()? * 7,
            _ => {
                num.push(c);
                continue;
            }
        }
        num.clear();
    }
    for c in time.chars() {
        match c {
            'H' => micros += num.parse::<i64>().ok()? * 3_600_000_000,
            'M' => micros += num.parse::<i64>().ok()? * 60_000_000,
            'S' => {
                let neg = num.starts_with('-');
                let (whole, frac) = num
                    .trim_start_matches('-')
                    .split_once('.')
                    .map_or((num.trim_start_matches('-').to_owned(), String::new()), |(a, b)| {
                        (a.to_owned(), b.to_owned())
                    });
                let f: i64 =
                    if frac.is_empty() { 0 } else { format!("{:0<6}", &frac[..frac.len().min(6)]).parse().ok()? };
                let v = whole.parse::<i64>().ok()? * 1_000_000 + f;
                micros += if neg { -v } else { v };
            }
            _ => {
                num.push(c);
                continue;
            }
        }
        num.clear();
    }
    Some((i32::try_from(months).ok()?, i32::try_from(days).ok()?, micros))
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

// ----------------------------------------------------------------------------- session task

async fn run(shared: Arc<Shared>, config: FeedConfig) {
    let mut backoff = Duration::from_millis(100);
    let mut down_since: Option<Instant> = None;
    loop {
        if shared.stop.is_requested()
            && (!shared.acks_pending() || shared.stop.deadline().is_some_and(|d| Instant::now() >= d))
        {
            break;
        }
        let sessions_before = shared.lock().sessions;
        let result = session(&shared, &config).await;
        let streamed = shared.lock().sessions > sessions_before;
        if streamed {
            backoff = Duration::from_millis(100);
            down_since = None;
        }
        {
            let mut st = shared.lock();
            st.backend_pid = 0;
            st.queue.clear();
        }
        shared.space.notify_one();
        match result {
            Ok(()) => break,
            Err(e) if shared.stop.is_requested() => shared.lock().ack_failure = Some(e),
            Err(e) => {
                let ever = shared.lock().sessions > 0;
                let expired = down_since.zip(config.reconnect_timeout).is_some_and(|(s, l)| s.elapsed() > l);
                if !(ever && config.reconnect && e.is_transient()) || expired {
                    shared.lock().error = Some(e);
                    shared.signal.notify();
                    break;
                }
                shared.lock().ack_failure = Some(e);
            }
        }
        if down_since.is_none() {
            down_since = Some(Instant::now());
        }
        shared.stop.backoff(&mut backoff).await;
    }
    let mut st = shared.lock();
    if st.acks_pending() {
        let (l, o) = st.ack_wanted.unwrap_or_default();
        let why = st.ack_failure.as_ref().or(st.error.as_ref()).map(|e| format!(": {e}")).unwrap_or_default();
        st.unflushed = Some(PgError::Operational(format!(
            "the acknowledgement of ({l}, {o}) could not be flushed before the stream closed{why}; the server keeps those events and will deliver them again"
        )));
    }
    st.finished = true;
    drop(st);
    shared.signal.notify();
}

struct Session<'a> {
    shared: &'a Shared,
    config: &'a FeedConfig,
    client: tokio_postgres::Client,
    feed: Arc<FeedIdentity>,
    options: Arc<EncoderOptions>,
    tables: HashMap<(String, String), Arc<Columns>>,
    last_ack: Instant,
    /// A refused acknowledgement (events not staged again yet) waits until then.
    ack_retry_at: Option<Instant>,
}

/// A query with a deadline: no answer within [`QUERY_TIMEOUT`] means the connection is lost.
async fn bounded<T>(
    params: &ConnParams,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, PgError> {
    match tokio::time::timeout(QUERY_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| PgError::from_tokio_postgres(e, params)),
        Err(_) => Err(PgError::Io(format!(
            "no answer from {} to {what} within {} s: the connection is considered lost",
            params.endpoint(),
            QUERY_TIMEOUT.as_secs()
        ))),
    }
}

async fn session(shared: &Arc<Shared>, config: &FeedConfig) -> Result<(), PgError> {
    // Setting up is abandoned at once by close() when there is nothing to flush, and at the
    // close deadline otherwise.
    let setup = async {
        let (client, mut connection) = crate::sql::connect_sql(&config.conn).await?;
        let (notes_tx, notes) = mpsc::unbounded_channel::<Result<String, PgError>>();
        let params = config.conn.clone();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        let _ = notes_tx.send(Ok(n.payload().to_owned()));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = notes_tx.send(Err(PgError::from_tokio_postgres(e, &params)));
                        return;
                    }
                }
            }
            let _ = notes_tx.send(Err(PgError::Io(format!("connection to {} closed", params.endpoint()))));
        });
        let opened = async {
            bounded(&config.conn, "SET search_path", crate::sql::pin_search_path(&client)).await?;
            let row = bounded(&config.conn, "the feed lookup", client.query_opt(FEED_SQL, &[&config.feed]))
                .await
            .map_err(|e| match e {
                PgError::Server(s) if s.code == "3F000" || s.code == "42P01" => PgError::server(
                    "42704",
                    format!("the pgcdc extension is not installed in database \"{}\"", config.conn.database),
                    Some("CREATE EXTENSION pgcdc (with pgcdc in shared_preload_libraries).".into()),
                ),
                other => other,
            })?;
            let Some(row) = row else {
                return Err(PgError::server(
                    "42704",
                    format!("feed \"{}\" does not exist", config.feed),
                    Some("Create it with SELECT pgcdc.create_feed(name, publication), or check that you may use it (pgcdc.feeds lists the feeds you may use).".into()),
                ));
            };
            let channel: String = row.get(1);
            bounded(&config.conn, "LISTEN", client.batch_execute(&format!("LISTEN {}", pgcdc_wire::quote_ident(&channel))))
                .await?;
            Ok::<_, PgError>(row)
        }
        .await;
        match opened {
            Ok(row) => Ok((client, driver, notes, row)),
            Err(e) => {
                driver.abort();
                Err(e)
            }
        }
    };
    let (client, driver, mut notes, row) = tokio::select! {
        r = setup => r?,
        _ = shared.stop.abandon(|| shared.acks_pending()) => return Ok(()),
    };
    let sink: String = row.get(0);
    let options_text: String = row.get(2);
    let pid: i32 = row.get(3);
    let feed = Arc::new(FeedIdentity { name: config.feed.clone(), created_at: row.get(4) });
    let options = Arc::new(encoder_options_of(&config.feed, &options_text));
    {
        let mut st = shared.lock();
        match &st.feed {
            Some(known) if **known != *feed => {
                drop(st);
                driver.abort();
                return Err(recreated(&config.feed));
            }
            Some(_) => {}
            None => st.feed = Some(feed.clone()),
        }
        st.sessions += 1;
        st.backend_pid = pid;
        st.sink_notify = sink == "notify";
    }
    shared.signal.notify();
    let mut s = Session {
        shared,
        config,
        client,
        feed,
        options,
        tables: HashMap::new(),
        last_ack: Instant::now() - ACK_INTERVAL,
        ack_retry_at: None,
    };
    let result = if sink == "notify" { s.notify_loop(&mut notes).await } else { s.table_loop(&mut notes).await };
    let result = match result {
        Ok(()) => s.finish().await,
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

/// The stream's feed is gone; one of the same name took its place (whose positions name other
/// events, so nothing read from it may pass for this stream's).
fn recreated(feed: &str) -> PgError {
    PgError::server(
        "42704",
        format!("feed \"{feed}\" was dropped and created again while this stream was open"),
        Some(
            "Open a new stream: the events this one delivered belong to the dropped feed and cannot be acknowledged."
                .into(),
        ),
    )
}

/// The feed's encoder options from its `options` (the feed-only keys are skipped).
fn encoder_options_of(feed: &str, text: &str) -> EncoderOptions {
    let mut o = EncoderOptions::default();
    let _ = o.set("topic.prefix", feed);
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(text) {
        for (k, v) in m {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            let _ = o.set(&k, &v);
        }
    }
    o
}

// Every name schema-qualified (the session's search_path is pinned too, see crate::tls).
const FEED_SQL: &str = "SELECT sink, channel, options::pg_catalog.text, pg_catalog.pg_backend_pid(), created_at \
     FROM pgcdc.feeds WHERE name OPERATOR(pg_catalog.=) $1::pg_catalog.text";

/// The last column tells which feed of that name the rows belong to (see [`Session::check_feed`]).
const READ_SQL: &str = "SELECT commit_lsn::pg_catalog.text, ordinal, lsn::pg_catalog.text, xid, op, schema_name, \
     table_name, topic, key::pg_catalog.text, event::pg_catalog.text, headers::pg_catalog.text, \
     (SELECT f.created_at FROM pgcdc.feeds f WHERE f.name OPERATOR(pg_catalog.=) $1::pg_catalog.text) \
     FROM pgcdc.read($1::pg_catalog.text, $2::pg_catalog.int4, $3::pg_catalog.text::pg_catalog.pg_lsn, \
     $4::pg_catalog.int4)";

const ACK_SQL: &str =
    "SELECT pgcdc.ack($1::pg_catalog.text, $2::pg_catalog.text::pg_catalog.pg_lsn, $3::pg_catalog.int4)";

/// A read that returned this much JSON may have been cut short by `pgcdc.read`'s 64 MB cap
/// (half of it, so a change of the cap's exact value does not matter): read again at once.
const READ_CAP_HINT: usize = 32 << 20;

/// What woke a session waiting for events.
enum Woken {
    /// New events may be there: read.
    Data,
    Stop,
}

impl Session<'_> {
    /// Waits for a reason to read (a NOTIFY, or the idle poll) or a stop, flushing
    /// acknowledgements meanwhile without reading.
    async fn wait_for_data(
        &mut self,
        notes: &mut mpsc::UnboundedReceiver<Result<String, PgError>>,
        idle_until: Option<Instant>,
    ) -> Result<(Woken, Option<String>), PgError> {
        loop {
            self.flush_acks(false).await?;
            let far = Instant::now() + Duration::from_secs(3600);
            let due = self.ack_due().unwrap_or(far);
            tokio::select! {
                biased;
                _ = self.shared.stop.requested() => return Ok((Woken::Stop, None)),
                n = notes.recv() => {
                    let payload = n.unwrap_or_else(|| Err(PgError::Io("connection closed".into())))?;
                    return Ok((Woken::Data, Some(payload)));
                }
                _ = self.shared.ack_wake.notified() => {}
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = tokio::time::sleep_until(idle_until.unwrap_or(far).into()) => return Ok((Woken::Data, None)),
            }
        }
    }

    async fn table_loop(
        &mut self,
        notes: &mut mpsc::UnboundedReceiver<Result<String, PgError>>,
    ) -> Result<(), PgError> {
        let stmt = bounded(&self.config.conn, "PREPARE", self.client.prepare(READ_SQL)).await?;
        loop {
            self.flush_acks(false).await?;
            if self.shared.stop.is_requested() {
                return Ok(());
            }
            // Wake-ups already received are answered by the read below; one that arrives
            // after this point wakes the wait after it.
            while let Ok(n) = notes.try_recv() {
                n?;
            }
            let after = self.shared.lock().last_fetched();
            let (lsn, ord) = match after {
                Some((l, o)) => (Some(l.to_string()), Some(o as i32)),
                None => (None, None),
            };
            let args: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&self.config.feed, &self.config.batch_size, &lsn, &ord];
            let read = bounded(&self.config.conn, "pgcdc.read", self.client.query(&stmt, &args));
            let rows = tokio::select! {
                r = read => r?,
                _ = self.shared.stop.requested() => return Ok(()),
            };
            self.check_feed(&rows)?;
            let got = rows.len();
            let bytes: usize = rows
                .iter()
                .map(|r| {
                    r.get::<_, Option<&str>>(8).map_or(0, str::len) + r.get::<_, Option<&str>>(9).map_or(0, str::len)
                })
                .sum();
            let mut batch = Vec::with_capacity(got);
            for r in rows {
                batch.push(self.row(
                    r.get::<_, String>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, String>(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    r.get(7),
                    r.get(8),
                    r.get(9),
                    r.get(10),
                    true,
                ));
            }
            if got > 0 {
                // Rows are staged: a refused acknowledgement may well pass now.
                self.ack_retry_at = None;
            }
            let batch = self.with_columns(batch).await?;
            if !batch.is_empty() && self.push(batch).await? {
                return Ok(());
            }
            // More to read: a full batch, or one cut short by read's size cap (64 MB of JSON,
            // see pgcdc_ext/README.md: "a short result does not mean the queue is drained").
            if got as i32 >= self.config.batch_size || bytes >= READ_CAP_HINT {
                continue;
            }
            let idle_until = Instant::now() + self.config.idle_poll;
            if let (Woken::Stop, _) = self.wait_for_data(notes, Some(idle_until)).await? {
                return Ok(());
            }
        }
    }

    async fn notify_loop(
        &mut self,
        notes: &mut mpsc::UnboundedReceiver<Result<String, PgError>>,
    ) -> Result<(), PgError> {
        loop {
            let payload = match self.wait_for_data(notes, None).await? {
                (Woken::Stop, _) => return Ok(()),
                (Woken::Data, None) => continue,
                (Woken::Data, Some(p)) => p,
            };
            let mut batch = vec![self.notify_row(&payload).await?];
            while let Ok(n) = notes.try_recv() {
                batch.push(self.notify_row(&n?).await?);
            }
            let batch: Vec<FeedRow> = batch.into_iter().flatten().collect();
            let batch = self.with_columns(batch).await?;
            if self.push(batch).await? {
                return Ok(());
            }
        }
    }

    /// One NOTIFY payload: the event itself, or (too big for a payload, or a payload that
    /// carries only the position) a reference to read from the queue with the reader's
    /// privileges.
    async fn notify_row(&mut self, payload: &str) -> Result<Option<FeedRow>, PgError> {
        let bad = |e: String| PgError::Data(format!("NOTIFY payload on the feed's channel: {e}"));
        let fields: HashMap<&str, &RawValue> = serde_json::from_str(payload).map_err(|e| bad(e.to_string()))?;
        let text = |k: &str| -> Result<Option<String>, PgError> {
            fields
                .get(k)
                .map(|v| serde_json::from_str::<String>(v.get()).map_err(|e| bad(format!("{k}: {e}"))))
                .transpose()
        };
        let commit_text = text("commit_lsn")?.ok_or_else(|| bad("no commit_lsn".into()))?;
        let commit: Lsn = commit_text.parse().map_err(|e| bad(format!("commit_lsn: {e}")))?;
        let ordinal: u32 = match fields.get("ordinal") {
            Some(v) => serde_json::from_str(v.get()).map_err(|e| bad(format!("ordinal: {e}")))?,
            None => return Err(bad("no ordinal".into())),
        };
        let staged = fields.get("staged").is_some_and(|v| v.get() == "true");
        if staged || !fields.contains_key("value") {
            // Read it from the queue: the next staged event after the one just before it.
            let (after_lsn, after_ord) =
                if ordinal > 0 { (commit, ordinal - 1) } else { (Lsn(commit.0.saturating_sub(1)), i32::MAX as u32) };
            let rows = bounded(
                &self.config.conn,
                "pgcdc.read",
                self.client.query(
                    READ_SQL,
                    &[&self.config.feed, &1i32, &Some(after_lsn.to_string()), &Some(after_ord as i32)],
                ),
            )
            .await?;
            self.check_feed(&rows)?;
            for r in rows {
                let row = self.row(
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    r.get(7),
                    r.get(8),
                    r.get(9),
                    r.get(10),
                    true,
                );
                if row.position() == (commit, ordinal) {
                    return Ok(Some(row));
                }
            }
            return Ok(None); // acknowledged (by another consumer) since
        }
        let raw = |k: &str| fields.get(k).map(|v| v.get().to_owned()).filter(|v| v != "null");
        let value = raw("value");
        // schema and table from the event's source block
        #[derive(serde::Deserialize, Default)]
        struct Src {
            #[serde(default)]
            schema: String,
            #[serde(default)]
            table: String,
        }
        #[derive(serde::Deserialize)]
        struct Env {
            #[serde(default)]
            source: Option<Src>,
        }
        let src = value
            .as_deref()
            .and_then(|v| serde_json::from_str::<Env>(v).ok())
            .and_then(|e| e.source)
            .unwrap_or_default();
        Ok(Some(self.row(
            commit_text,
            ordinal as i32,
            text("lsn")?.unwrap_or_default(),
            None,
            text("op")?.unwrap_or_default(),
            src.schema,
            src.table,
            text("topic")?.unwrap_or_default(),
            raw("key"),
            value,
            raw("headers"),
            false,
        )))
    }

    /// Rows of `READ_SQL` come from this session's feed, not from one created under its name
    /// since (`pgcdc.read` finds feeds by name).
    fn check_feed(&self, rows: &[tokio_postgres::Row]) -> Result<(), PgError> {
        match rows.first().map(|r| r.get::<_, Option<SystemTime>>(11)) {
            Some(created_at) if created_at != Some(self.feed.created_at) => Err(recreated(&self.feed.name)),
            _ => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        commit_lsn: String,
        ordinal: i32,
        lsn: String,
        xid: Option<i64>,
        op: String,
        schema: String,
        table: String,
        topic: String,
        key: Option<String>,
        value: Option<String>,
        headers: Option<String>,
        staged: bool,
    ) -> FeedRow {
        FeedRow {
            feed: self.feed.clone(),
            commit_lsn: commit_lsn.parse().unwrap_or_default(),
            ordinal: ordinal.max(0) as u32,
            lsn: lsn.parse().unwrap_or_default(),
            xid,
            op,
            schema,
            table,
            topic,
            key,
            value,
            headers,
            staged,
            columns: None,
            options: self.options.clone(),
        }
    }

    /// Attaches column types (looked up once per table, again when a column is new).
    async fn with_columns(&mut self, mut batch: Vec<FeedRow>) -> Result<Vec<FeedRow>, PgError> {
        for row in batch.iter_mut() {
            if row.table.is_empty() || row.value.is_none() {
                continue;
            }
            let key = (row.schema.clone(), row.table.clone());
            let cached = self.tables.get(&key).cloned();
            let cols = match cached {
                Some(c) if !has_new_column(row.value.as_deref().unwrap_or(""), &c) => c,
                _ => {
                    let c = Arc::new(self.lookup_columns(&row.schema, &row.table).await?);
                    self.tables.insert(key, c.clone());
                    c
                }
            };
            row.columns = Some(cols);
        }
        Ok(batch)
    }

    async fn lookup_columns(&self, schema: &str, table: &str) -> Result<Columns, PgError> {
        let rows = bounded(
            &self.config.conn,
            "a catalog lookup",
            self.client.query(
                "SELECT a.attname::pg_catalog.text, a.atttypid, a.atttypmod FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                 WHERE n.nspname OPERATOR(pg_catalog.=) $1::pg_catalog.name \
                   AND c.relname OPERATOR(pg_catalog.=) $2::pg_catalog.name \
                   AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&schema, &table],
            ),
        )
        .await?;
        let cols: Vec<(String, u32, i32)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        let unknown: Vec<u32> = cols.iter().map(|c| c.1).filter(|&o| TypeKind::builtin(o, -1).is_none()).collect();
        let mut catalog = Catalog::new();
        if !unknown.is_empty() {
            let sql = include_str!("../../sql/type_info.sql");
            let mut types = Vec::new();
            for row in bounded(&self.config.conn, "a catalog lookup", self.client.query(sql, &[&unknown])).await? {
                types.push(TypeRow {
                    oid: row.get(0),
                    namespace: row.get(1),
                    name: row.get(2),
                    typtype: row.get::<_, String>(3).chars().next().unwrap_or('b'),
                    category: row.get::<_, String>(4).chars().next().unwrap_or('U'),
                    element: row.get(5),
                    base_type: row.get(6),
                    base_typmod: row.get(7),
                    enum_labels: row.get(8),
                    attribute_names: row.get(9),
                    attribute_types: row.get(10),
                    attribute_typmods: row.get(11),
                });
            }
            catalog.register_type_rows(types);
        }
        Ok(Columns { kinds: cols.into_iter().map(|(n, oid, m)| (n, catalog.resolve(oid, m, None))).collect() })
    }

    /// Queues a batch (waiting while the consumer is behind). True when stopping.
    async fn push(&mut self, batch: Vec<FeedRow>) -> Result<bool, PgError> {
        let mut batch: VecDeque<Box<FeedRow>> = batch.into_iter().map(Box::new).collect();
        loop {
            let space = self.shared.space.notified();
            {
                let mut st = self.shared.lock();
                if st.stopping {
                    return Ok(true);
                }
                // Skip what this process already delivered (after a reconnect).
                let floor = st.last_fetched();
                batch.retain(|r| floor.is_none_or(|f| r.position() > f));
                if st.queue.len() < self.config.max_buffered {
                    if st.sink_notify {
                        let staged: Vec<Pos> = batch.iter().filter(|r| r.staged).map(|r| r.position()).collect();
                        st.staged_notify.extend(staged);
                    }
                    st.queue.extend(batch.drain(..));
                    let armed = !st.queue.is_empty() && std::mem::replace(&mut st.armed, false);
                    drop(st);
                    if armed {
                        self.shared.signal.notify();
                    }
                    return Ok(false);
                }
            }
            let far = Instant::now() + Duration::from_secs(3600);
            let due = self.ack_due().unwrap_or(far);
            tokio::select! {
                _ = space => {}
                _ = self.shared.stop.requested() => return Ok(true),
                _ = self.shared.ack_wake.notified() => self.flush_acks(false).await?,
                _ = tokio::time::sleep_until(due.into()) => self.flush_acks(false).await?,
            }
        }
    }

    /// When the next acknowledgement is due (None: nothing to send).
    fn ack_due(&self) -> Option<Instant> {
        if !self.shared.acks_pending() {
            return None;
        }
        let due = self.last_ack + ACK_INTERVAL;
        Some(match self.ack_retry_at {
            Some(t) => t.max(due),
            None => due,
        })
    }

    /// Sends the newest acknowledgement (rate-limited to one per [`ACK_INTERVAL`] unless
    /// `now`). A refusal because the events are not staged again yet (after a server crash)
    /// keeps it pending for a retry; other failures end the session.
    async fn flush_acks(&mut self, now: bool) -> Result<(), PgError> {
        let due = self.ack_due();
        let Some(due) = due else { return Ok(()) };
        if !now && Instant::now() < due {
            return Ok(());
        }
        let pos = match self.shared.lock().ack_target() {
            AckTarget::Nothing => return Ok(()),
            AckTarget::Send(p) => p,
        };
        let sent = bounded(
            &self.config.conn,
            "pgcdc.ack",
            self.client.query_one(ACK_SQL, &[&self.config.feed, &pos.0.to_string(), &(pos.1 as i32)]),
        )
        .await;
        self.last_ack = Instant::now();
        match sent {
            Ok(_) => {
                self.ack_retry_at = None;
                self.shared.lock().acked(pos);
                Ok(())
            }
            Err(e) if e.is_ack_not_staged_yet() => {
                self.ack_retry_at = Some(Instant::now() + ACK_RETRY);
                self.shared.lock().ack_failure = Some(e);
                Ok(())
            }
            Err(e) => {
                self.shared.lock().ack_failure = Some(e.clone());
                Err(e)
            }
        }
    }

    /// On close: flushes what is acknowledged, retrying refusals, until its deadline.
    async fn finish(&mut self) -> Result<(), PgError> {
        let deadline = self.shared.stop.deadline().unwrap_or_else(|| Instant::now() + STOP_GRACE);
        while self.shared.acks_pending() && Instant::now() < deadline {
            match tokio::time::timeout_at(deadline.into(), self.flush_acks(true)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
            if let Some(retry) = self.ack_retry_at.filter(|_| self.shared.acks_pending()) {
                tokio::time::sleep_until(retry.min(deadline).into()).await;
            }
        }
        Ok(())
    }
}

/// True when the event's `after` names a column the cached types do not know.
fn has_new_column(value: &str, cols: &Columns) -> bool {
    #[derive(serde::Deserialize)]
    struct Env<'a> {
        #[serde(borrow)]
        after: Option<HashMap<&'a str, &'a RawValue>>,
    }
    match serde_json::from_str::<Env<'_>>(value) {
        Ok(Env { after: Some(a) }) => a.keys().any(|k| cols.get(k).is_none()),
        _ => false,
    }
}

// ----------------------------------------------------------------------------- SQL helper

/// Runs one statement on a short-lived session; returns the rows as JSON text of a list of
/// objects (the feed management helpers build on it).
#[pyfunction]
#[pyo3(signature = (dsn, sql, params, connect_timeout=None))]
fn _query_json(dsn: &str, sql: String, params: Vec<Option<String>>, connect_timeout: Option<f64>) -> PyResult<Op> {
    let mut conn = ConnParams::from_dsn(dsn).map_err(PgError::Interface)?;
    if let Some(t) = connect_timeout {
        conn.connect_timeout = crate::seconds("connect_timeout", t)?.max(Duration::from_millis(1));
    }
    Ok(Op::spawn(async move {
        let (client, connection) = crate::sql::connect_sql(&conn).await?;
        let driver = tokio::spawn(connection);
        let wrapped =
            format!("SELECT coalesce(pg_catalog.json_agg(q), '[]'::pg_catalog.json)::pg_catalog.text FROM ({sql}) q");
        let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let r = match crate::sql::pin_search_path(&client).await {
            Ok(()) => client.query_one(&wrapped, &p).await,
            Err(e) => Err(e),
        }
        .map_err(|e| PgError::from_tokio_postgres(e, &conn));
        drop(client);
        let _ = driver.await;
        Ok(r?.get::<_, String>(0))
    }))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFeed>()?;
    m.add_class::<FeedEvent>()?;
    m.add_function(wrap_pyfunction!(_query_json, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twos_complement_decimals() {
        assert_eq!(twos_complement_to_text(&[0x04, 0xE2], 2), "12.50");
        assert_eq!(twos_complement_to_text(&[0xFF], 0), "-1");
        assert_eq!(twos_complement_to_text(&[0xFB, 0x1E], 2), "-12.50");
        assert_eq!(twos_complement_to_text(&[], 0), "0");
        assert_eq!(twos_complement_to_text(&[0x01], 21), "0.000000000000000000001");
    }

    #[test]
    fn varbit_lengths_never_underflow() {
        assert_eq!(varbit_len(&[]), 0); // B''
        assert_eq!(varbit_len(&[0]), 0); // B'000': all leading zeros
        assert_eq!(varbit_len(&[0x01]), 1); // B'0001' -> "1"
        assert_eq!(varbit_len(&[0x06]), 3); // B'110'
        assert_eq!(varbit_len(&[0x00, 0x01]), 9);
        assert_eq!(varbit_len(&[0xFF, 0x00]), 8); // trailing zero bytes (not trimmed)
    }

    #[test]
    fn malformed_binary_is_an_error() {
        assert_eq!(decode_binary("3q2+7w==", BinaryMode::Bytes).unwrap(), vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(decode_binary("DEADbeef", BinaryMode::Hex).unwrap(), vec![0xde, 0xad, 0xbe, 0xef]);
        assert!(matches!(decode_binary("not base64!", BinaryMode::Base64), Err(PgError::Data(_))));
        assert!(matches!(decode_binary("abc", BinaryMode::Hex), Err(PgError::Data(_))));
        assert!(matches!(decode_binary("zz", BinaryMode::Hex), Err(PgError::Data(_))));
        assert!(matches!(decode_binary("+/8=", BinaryMode::Base64UrlSafe), Err(PgError::Data(_))));
    }

    #[test]
    fn notify_acks_only_staged_events_and_keep_them_until_acked() {
        let p = |o| (Lsn(100), o);
        let mut st = State { sink_notify: true, ..State::default() };
        st.staged_notify.extend([p(4), p(10)]);
        st.ack_wanted = Some(p(7));
        assert!(matches!(st.ack_target(), AckTarget::Send(x) if x == p(4)));
        assert_eq!(st.staged_notify.len(), 2, "nothing is forgotten before the ack succeeds");
        st.acked(p(4));
        assert_eq!(st.ack_sent, Some(p(7)));
        assert!(!st.acks_pending());
        st.ack_wanted = Some(p(12));
        assert!(matches!(st.ack_target(), AckTarget::Send(x) if x == p(10)));
        st.ack_wanted = Some(p(13));
        assert!(matches!(st.ack_target(), AckTarget::Send(x) if x == p(10)), "a failed ack is sent again");
        st.acked(p(10));
        assert!(st.staged_notify.is_empty() && st.ack_sent == Some(p(13)));
    }

    #[test]
    fn acks_of_another_feed_are_refused() {
        let at = |s| FeedIdentity { name: "a".into(), created_at: SystemTime::UNIX_EPOCH + Duration::from_secs(s) };
        let b = FeedIdentity { name: "b".into(), ..at(1) };
        assert_eq!(foreign_event("a", Some(&at(1)), &at(1)), None);
        assert_eq!(foreign_event("a", None, &at(1)), None, "before the first session: by name");
        assert!(foreign_event("a", Some(&at(1)), &b).unwrap().contains("feed \"b\", not to this stream's feed \"a\""));
        assert!(foreign_event("a", None, &b).is_some());
        assert!(foreign_event("a", Some(&at(1)), &at(2)).unwrap().contains("dropped and created again"));
    }

    #[test]
    fn iso_forms() {
        assert_eq!(parse_iso_interval("P1Y2M3DT4H5M6.789S"), Some((14, 3, 14_706_789_000)));
        assert_eq!(parse_clock("13:45:59.123456"), Some(49_559_123_456));
        assert_eq!(parse_iso_timestamp("1970-01-02T00:00:00.000001Z"), Some(86_400_000_001));
    }
}
