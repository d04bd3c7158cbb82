//! `pgcdc._pgcdc`: the native half of the Python package `pgcdc`.
//!
//! One tokio runtime per process ([`runtime`]). Network I/O, pgoutput decoding and Debezium
//! JSON run on its threads and never take the GIL; they wake asyncio through a socket the
//! event loop watches ([`signal`]), and Python objects are made on the Python thread, lazily
//! (see [`message`]). Errors are mapped to the `pgcdc.Error` hierarchy once ([`errors`]).
//!
//! Modules: [`conninfo`] (parameters), [`tls`], [`wire`] (replication protocol),
//! [`catalog`] (type and table lookups), [`reader`] (LogicalReplicationReader), [`offsets`]
//! (its durable offsets), [`message`] (ReplicationMessage), [`seed`] (the reader's default
//! values and JSON, the `pgoutput-decoder` library's), [`values`] (PostgreSQL values as
//! Python objects), [`pgtext`] (PostgreSQL's text forms), [`feed`] (the feed client),
//! [`errors`] (the exception mapping).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::FutureExt;

use pgcdc_core::debezium::EncoderOptions;
use pgcdc_core::Lsn;
use pyo3::exceptions::{PyStopAsyncIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

mod catalog;
mod errors;
mod feed;
mod message;
mod offsets;
mod pgtext;
mod reader;
mod seed;
mod signal;
mod spool;
mod sql;
mod values;

// The session threads build what Python frees (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use errors::PgError;
use message::{Interval, Mode, ReplicationMessage};
use pgcdc_wire::{ChannelBindingMode, ConnParams, SslMode};
use reader::{NextError, Reader, ReaderConfig};
use signal::Op;

/// The process-wide tokio runtime (two worker threads: the machines this targets are small,
/// and each stream is one task).
///
/// Fork safety: `fork()` copies only the calling thread, so in a child the parent's runtime
/// has no worker threads and anything spawned on it would never run. The runtime is therefore
/// kept with the pid that built it, and a forked child (multiprocessing's "fork" start method,
/// gunicorn/celery pre-fork workers) builds its own on first use. The parent's runtime is
/// leaked in the child (dropping it would wait for threads that do not exist there). Streams
/// opened before the fork belong to the parent: see [`check_process`].
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    // Only Python threads holding the GIL get here (never a runtime thread), so no other
    // thread can hold this lock while Python forks.
    static RT: Mutex<Option<(u32, &'static tokio::runtime::Runtime)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut rt = RT.lock().unwrap_or_else(|p| p.into_inner());
    match *rt {
        Some((owner, r)) if owner == pid => r,
        _ => {
            let r: &'static tokio::runtime::Runtime = Box::leak(Box::new(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("pgcdc")
                    .enable_all()
                    .build()
                    .expect("cannot start the tokio runtime"),
            ));
            *rt = Some((pid, r));
            r
        }
    }
}

/// Refuses to use, in a forked child, a stream opened by the parent: its task runs (or ran)
/// in the parent, and its socket and state are shared with it.
pub(crate) fn check_process(owner: u32) -> Result<(), PgError> {
    if owner == std::process::id() {
        Ok(())
    } else {
        Err(PgError::Interface(format!(
            "this stream was opened in process {owner} and cannot be used after fork() in process {}: open a new one in the child",
            std::process::id()
        )))
    }
}

/// Spawns `fut` on the runtime so that a panic inside it is reported through `on_panic` (as
/// an `InternalError`) instead of silently ending the task and leaving Python waiting forever.
pub(crate) fn spawn_supervised<F, P>(fut: F, on_panic: P)
where
    F: Future<Output = ()> + Send + 'static,
    P: FnOnce(PgError) + Send + 'static,
{
    runtime().spawn(async move {
        if let Err(panic) = AssertUnwindSafe(fut).catch_unwind().await {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            on_panic(PgError::Internal(format!("internal error in pgcdc (a bug, please report it): {what}")));
        }
    });
}

/// Seconds given by Python as a `Duration`: a ValueError (not a panic) for negative, NaN,
/// infinite or absurdly large values.
pub(crate) fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyValueError::new_err(format!("{name} must be a finite number of seconds >= 0, not {value}")))
}

/// Parses an LSN given as `X/Y` text or as an integer (Debezium's form).
pub(crate) fn lsn_arg(v: &Bound<'_, PyAny>) -> PyResult<Lsn> {
    if let Ok(i) = v.extract::<u64>() {
        return Ok(Lsn(i));
    }
    let s: String = v.extract()?;
    if let Ok(i) = s.parse::<u64>() {
        return Ok(Lsn(i));
    }
    s.parse::<Lsn>().map_err(|e| PyValueError::new_err(e.to_string()))
}

pub(crate) fn encoder_options(options: Option<&Bound<'_, PyDict>>) -> PyResult<EncoderOptions> {
    let mut o = EncoderOptions::default();
    if let Some(options) = options {
        for (k, v) in options.iter() {
            let key: String = k.extract()?;
            let value: String = if let Ok(b) = v.extract::<bool>() { b.to_string() } else { v.str()?.to_string() };
            o.set(&key, &value).map_err(|e| PgError::Interface(e.to_string()))?;
        }
    }
    Ok(o)
}

/// Bytes of streamed, uncommitted transactions a reader holds in memory by default.
const DEFAULT_STREAM_MEMORY: usize = 64 << 20;

/// The native reader. `pgcdc.LogicalReplicationReader` wraps it (see `pgcdc/_reader.py`).
#[pyclass(module = "pgcdc._pgcdc", name = "_Reader")]
struct PyReader {
    reader: Reader,
    mode: Mode,
}

#[pymethods]
impl PyReader {
    #[new]
    #[pyo3(signature = (
        publications, slot_name, host, database, port, user, password, start_lsn, auto_acknowledge,
        *, sslmode, sslrootcert, connect_timeout, application_name, include_truncate, include_messages,
        create_slot, debezium_options, reconnect, reconnect_timeout, max_buffered, allow_cleartext_password=false,
        offset_store=None, format=None, rich_types=false, channel_binding=None, streaming=true,
        stream_memory=DEFAULT_STREAM_MEMORY
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        publications: Vec<String>,
        slot_name: String,
        host: String,
        database: String,
        port: u16,
        user: String,
        password: Option<String>,
        start_lsn: Option<Bound<'_, PyAny>>,
        auto_acknowledge: bool,
        sslmode: Option<String>,
        sslrootcert: Option<PathBuf>,
        connect_timeout: f64,
        application_name: String,
        include_truncate: bool,
        include_messages: bool,
        create_slot: bool,
        debezium_options: Option<Bound<'_, PyDict>>,
        reconnect: bool,
        reconnect_timeout: Option<f64>,
        max_buffered: usize,
        allow_cleartext_password: bool,
        offset_store: Option<PathBuf>,
        format: Option<String>,
        rich_types: bool,
        channel_binding: Option<String>,
        streaming: bool,
        stream_memory: usize,
    ) -> PyResult<Self> {
        if publications.is_empty() {
            return Err(PgError::Interface("publication_name is required".into()).into());
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let sslrootcert = sslrootcert.or_else(|| env("PGSSLROOTCERT").map(PathBuf::from));
        let sslmode = SslMode::resolve(sslmode.or_else(|| env("PGSSLMODE")).as_deref(), sslrootcert.as_deref())
            .map_err(PgError::Interface)?;
        let channel_binding = match channel_binding.or_else(|| env("PGCHANNELBINDING")) {
            Some(v) => ChannelBindingMode::parse(&v).map_err(PgError::Interface)?,
            None => ChannelBindingMode::Prefer,
        };
        let start_lsn = start_lsn.as_ref().map(lsn_arg).transpose()?;
        let mut conn = ConnParams {
            host,
            port,
            user,
            password: password.filter(|p| !p.is_empty()).or_else(|| env("PGPASSWORD")),
            database,
            sslmode,
            sslrootcert,
            channel_binding,
            connect_timeout: seconds("connect_timeout", connect_timeout)?.max(Duration::from_millis(1)),
            application_name,
            allow_cleartext_password,
            ..ConnParams::default()
        };
        conn.fill_password_from_passfile();
        let mut encoder = encoder_options(debezium_options.as_ref())?;
        // The reader decides what to yield; the encoder must produce every kind.
        encoder.skipped.truncate = false;
        let mode = Mode {
            format: output_format(format.as_deref(), debezium_options.is_some())?,
            types: if rich_types { seed::Types::Rich } else { seed::Types::Seed },
        };
        let offsets = offset_store.map(|p| offsets::OffsetStore::new(p, &slot_name, &conn.database));
        Ok(PyReader {
            reader: Reader::new(ReaderConfig {
                conn,
                publications,
                slot: slot_name,
                start_lsn,
                auto_ack: auto_acknowledge,
                include_truncate,
                include_messages,
                create_slot,
                encoder,
                reconnect,
                reconnect_timeout: reconnect_timeout.map(|s| seconds("reconnect_timeout", s)).transpose()?,
                max_buffered: max_buffered.max(16),
                offsets,
                streaming,
                stream_memory,
            })?,
            mode,
        })
    }

    /// The next buffered message, None when none is buffered (then await `wait()`).
    /// Raises StopAsyncIteration after `stop()`, or the stream's error.
    fn next_ready(&self, py: Python<'_>) -> PyResult<Option<Py<ReplicationMessage>>> {
        self.reader.ensure_started();
        match self.reader.next_ready() {
            Ok(Some(m)) => Ok(Some(Py::new(py, ReplicationMessage::new(*m, self.mode))?)),
            Ok(None) => Ok(None),
            Err(NextError::Ended) => Err(PyStopAsyncIteration::new_err(())),
            Err(NextError::Failed(e)) => Err(e.to_py(py)),
        }
    }

    /// The socket to watch (readable: call `next_ready()` again), see `signal.rs`.
    fn fileno(&self) -> i32 {
        self.reader.ensure_started();
        self.reader.shared.signal.fileno()
    }

    fn drain(&self) {
        self.reader.shared.signal.drain();
    }

    #[pyo3(signature = (lsn=None))]
    fn acknowledge(&self, py: Python<'_>, lsn: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let lsn = lsn.as_ref().map(lsn_arg).transpose()?;
        self.reader.acknowledge(lsn).map_err(|e| e.to_py(py))
    }

    /// Asks the stream to confirm what is acknowledged (within `timeout` seconds) and close
    /// (see `finished`).
    #[pyo3(signature = (timeout=None))]
    fn request_stop(&self, timeout: Option<f64>) -> PyResult<()> {
        let grace = timeout.map(|t| seconds("timeout", t)).transpose()?.unwrap_or(reader::STOP_GRACE);
        self.reader.request_stop(grace);
        Ok(())
    }

    /// True once closed; otherwise the socket wakes when it is.
    fn finished(&self) -> bool {
        self.reader.finished()
    }

    /// After the end: raises `OperationalError` when a confirmation could not be sent.
    fn check_stopped(&self, py: Python<'_>) -> PyResult<()> {
        match self.reader.unconfirmed() {
            Some(e) => Err(e.to_py(py)),
            None => Ok(()),
        }
    }

    /// The position confirmed (or to be confirmed) to the server, `X/Y`.
    #[getter]
    fn confirmed_lsn(&self) -> String {
        self.reader.confirmed_lsn().to_string()
    }

    /// Backend pid of the current replication connection (None when not connected).
    #[getter]
    fn backend_pid(&self) -> Option<i32> {
        Some(self.reader.backend_pid()).filter(|&p| p != 0)
    }

    /// Bytes of streamed transactions written to temporary files so far (see `crate::spool`).
    #[getter]
    fn stream_spilled_bytes(&self) -> u64 {
        self.reader.stream_spilled_bytes()
    }

    /// How many replication sessions were started (reconnects add one each).
    #[getter]
    fn sessions(&self) -> u64 {
        self.reader.sessions()
    }
}

/// `format=`: the seed library's event (default) or Debezium's; Debezium options mean the
/// latter, and make no sense with the former.
fn output_format(format: Option<&str>, debezium_options: bool) -> Result<seed::Format, PgError> {
    match (format, debezium_options) {
        (Some("debezium"), _) | (None, true) => Ok(seed::Format::Debezium),
        (Some("seed") | None, false) => Ok(seed::Format::Seed),
        (Some("seed"), true) => Err(PgError::Interface(
            "debezium_options apply to format=\"debezium\" only: the seed format has no encoding options".into(),
        )),
        (Some(other), _) => Err(PgError::Interface(format!("format must be \"seed\" or \"debezium\", not {other:?}"))),
    }
}

/// The message as JSON: a reader's message in its format (`indent=None`: compact).
#[pyfunction]
#[pyo3(signature = (message, indent=2))]
fn message_to_debezium_json(message: &Bound<'_, PyAny>, indent: Option<usize>) -> PyResult<String> {
    if let Ok(m) = message.cast::<ReplicationMessage>() {
        let json = m.get().event_json()?;
        return Ok(match indent {
            None => json.into_owned(),
            Some(n) => values::indent_json(&json, n),
        });
    }
    // Feed events and anything else with .json(indent=...)
    message.call_method1("json", (indent,))?.extract()
}

/// A reader's message as the seed library's dict, equal to `json.loads` of its seed JSON.
#[pyfunction]
fn message_to_dict<'py>(message: &Bound<'py, ReplicationMessage>) -> PyResult<Bound<'py, PyDict>> {
    message.get().seed_dict(message.py())
}

/// For the test suite: a task that panics must end as an `InternalError`, never a hang.
#[pyfunction]
fn _selftest_panic() -> signal::Op {
    signal::Op::spawn(async {
        panic!("deliberate panic (pgcdc._pgcdc._selftest_panic)");
    })
}

/// Parses JSON text into Python objects with key order kept (like json.loads), in Rust.
#[pyfunction]
fn _json_loads(py: Python<'_>, text: &str) -> PyResult<Py<PyAny>> {
    Ok(values::json(py, text)?.unbind())
}

#[pymodule]
fn _pgcdc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyReader>()?;
    m.add_class::<ReplicationMessage>()?;
    m.add_class::<Interval>()?;
    m.add_class::<Op>()?;
    m.add_function(wrap_pyfunction!(message_to_debezium_json, m)?)?;
    m.add_function(wrap_pyfunction!(message_to_dict, m)?)?;
    m.add_function(wrap_pyfunction!(_json_loads, m)?)?;
    m.add_function(wrap_pyfunction!(_selftest_panic, m)?)?;
    feed::register(m)?;
    m.add("DEBEZIUM_VERSION", pgcdc_core::debezium::DEBEZIUM_COMPAT_VERSION)?;
    Ok(())
}
