//! Waking asyncio from tokio threads without touching the GIL.
//!
//! Each stream (and each one-shot operation) owns a socket pair. The Python side registers
//! the read end with `loop.add_reader` and sleeps in the event loop (GIL released); a tokio
//! thread that has news writes one byte to the other end. Nothing on the tokio side ever
//! takes the GIL, so there is no cross-thread GIL traffic per batch and no race with
//! interpreter shutdown (a tokio thread completing an asyncio future at exit can crash
//! CPython 3.11 while it finalizes).
//!
//! To keep syscalls rare, a producer writes only when the consumer is *armed*: the Python
//! side arms (under the stream's state mutex) exactly when it found nothing to take and is
//! about to sleep; the producer disarms and writes under the same mutex. The socket is
//! level-triggered, so a byte written before `add_reader` still wakes the loop.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use pyo3::prelude::*;

use crate::errors::PgError;

pub struct Signal {
    rx: UnixStream,
    tx: UnixStream,
}

impl Signal {
    pub fn new() -> Signal {
        let (rx, tx) = UnixStream::pair().expect("socketpair");
        rx.set_nonblocking(true).expect("nonblocking");
        tx.set_nonblocking(true).expect("nonblocking");
        Signal { rx, tx }
    }

    /// Wakes the Python side (a full buffer already means "wake up").
    pub fn notify(&self) {
        let _ = (&self.tx).write(&[1]);
    }

    pub fn fileno(&self) -> i32 {
        self.rx.as_raw_fd()
    }

    /// Empties the socket after a wake-up.
    pub fn drain(&self) {
        let mut buf = [0u8; 256];
        while let Ok(n) = (&self.rx).read(&mut buf) {
            if n < buf.len() {
                break;
            }
        }
    }
}

impl Default for Signal {
    fn default() -> Self {
        Signal::new()
    }
}

/// A stop request that the stream task can wait for (in a `select!` next to connecting, a
/// query or a backoff sleep), with a deadline for the work a stop still allows (flushing
/// acknowledgements): cancelling a connect or a stop is prompt, and never unbounded.
#[derive(Default)]
pub struct Stop {
    requested: AtomicBool,
    deadline: Mutex<Option<Instant>>,
    notify: Notify,
}

impl Stop {
    /// Requests the stop; `grace` bounds the remaining work (the first request's bound wins).
    pub fn request(&self, grace: Duration) {
        {
            let mut d = self.deadline.lock().unwrap_or_else(|p| p.into_inner());
            if d.is_none() {
                *d = Some(Instant::now() + grace);
            }
        }
        self.requested.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// When the work allowed after a stop must be abandoned (None before a stop).
    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once a stop is requested.
    pub async fn requested(&self) {
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_requested() {
                return;
            }
            n.await;
        }
    }

    /// Resolves once a stop is requested and, if `work_left()` says there is still something
    /// to do (acknowledgements to flush), once its deadline has passed too.
    /// Sleeps `backoff` before the next reconnect attempt, then doubles it (at most 30 s).
    /// A stop request cuts the sleep short; once stopping, attempts come at most every
    /// 200 ms until the stop deadline, so the last acknowledgements still get a chance.
    pub async fn backoff(&self, backoff: &mut Duration) {
        match self.deadline() {
            Some(deadline) => {
                let soon = Instant::now() + (*backoff).min(Duration::from_millis(200));
                tokio::time::sleep_until(soon.min(deadline).into()).await;
            }
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(*backoff) => {}
                    _ = self.requested() => {}
                }
            }
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(30));
    }

    pub async fn abandon(&self, work_left: impl Fn() -> bool) {
        self.requested().await;
        if work_left() {
            if let Some(d) = self.deadline() {
                tokio::time::sleep_until(d.into()).await;
            }
        }
    }
}

/// A one-shot operation running on the runtime (the SQL helpers): Python waits on
/// `fileno()` and then takes `result()`.
#[pyclass(module = "pgcdc._pgcdc", name = "_Op")]
pub struct Op {
    shared: Arc<OpShared>,
    pid: u32,
}

struct OpShared {
    result: Mutex<Option<Result<String, PgError>>>,
    signal: Signal,
}

impl Op {
    pub fn spawn<F>(fut: F) -> Op
    where
        F: std::future::Future<Output = Result<String, PgError>> + Send + 'static,
    {
        let shared = Arc::new(OpShared { result: Mutex::new(None), signal: Signal::new() });
        let s = shared.clone();
        let on_panic = shared.clone();
        crate::spawn_supervised(
            async move {
                let r = fut.await;
                *s.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                s.signal.notify();
            },
            move |e| {
                *on_panic.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(e));
                on_panic.signal.notify();
            },
        );
        Op { shared, pid: std::process::id() }
    }
}

#[pymethods]
impl Op {
    fn fileno(&self) -> i32 {
        self.shared.signal.fileno()
    }

    fn drain(&self) {
        self.shared.signal.drain();
    }

    /// The result once done (None before); raises the operation's error.
    fn result(&self, py: Python<'_>) -> PyResult<Option<String>> {
        crate::check_process(self.pid).map_err(|e| e.to_py(py))?;
        let taken = self.shared.result.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            None => Ok(None),
            Some(Ok(s)) => Ok(Some(s)),
            Some(Err(e)) => Err(e.to_py(py)),
        }
    }
}
