//! The Python class `_Feed` (wrapped by `pgcdc.FeedStream`, see `pgcdc/_feed.py`): starts the
//! session task, hands out queued events, records acknowledgements and asks for the close.
//!
//! Closing: `close()` flushes pending acknowledgements within its timeout (5 s by default;
//! a connection attempt is abandoned at once when there is nothing to flush) and raises
//! `OperationalError` when some could not be flushed; `ack()` after `close()` raises
//! `InterfaceError`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use tokio::sync::Notify;

use super::event::FeedEvent;
use super::session::run;
use super::{FeedConfig, FeedIdentity, Shared, State, STOP_GRACE};
use crate::errors::PgError;
use crate::signal::{Signal, Stop};
use pgcdc_wire::ConnParams;

/// The native stream. `pgcdc.FeedStream` wraps it (see `pgcdc/_feed.py`).
#[pyclass(module = "pgcdc._pgcdc", name = "_Feed")]
pub(super) struct PyFeed {
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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

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
}
