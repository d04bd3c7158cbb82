//! The replication thread: a tokio current-thread runtime that streams the feed's slot with
//! `pgcdc_wire` and hands the walsender's messages, undecoded, to the worker's main thread.
//!
//! ```text
//!   walsender ==unix socket==> [stream thread: tokio, pgcdc_wire::Session]
//!                                 |  Item (crossbeam, bounded)   ^ confirm: AtomicU64
//!                                 |  + 1 byte on a pipe if the   | (flush LSN the main
//!                                 v    main thread sleeps        |  thread computed)
//!                              [worker main thread: WaitLatchOrSocket(latch, pipe)]
//! ```
//!
//! Nothing here calls PostgreSQL (P4): no logging, no palloc, no GUC reads. All signals are
//! blocked in the thread, so PostgreSQL's handlers run on the main thread. When the channel
//! is full (the worker is at its queue cap, or slower than the walsender) the thread stops
//! reading the stream but keeps sending status updates, so the walsender waits instead of
//! timing out; WAL is retained. It is woken as soon as the main thread has drained half the
//! channel, not by polling (a reader asleep in a back-off left the main thread idle while
//! the walsender was blocked).
//!
//! Memory: the channel is bounded by items ([`CHANNEL_CAPACITY`]) **and by bytes**
//! ([`CHANNEL_BYTES`] of pgoutput payload; one item is always let through, however big), and
//! the socket is read only while there is room. A stream of huge (TOASTed) rows therefore
//! holds a few of them in memory, not gigabytes.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use pgcdc_core::Lsn;
use pgcdc_wire::{ConnParams, Pgoutput, ReplConn, Session, Wal, WireError};

/// How many items may wait between the threads.
const CHANNEL_CAPACITY: usize = 16 * 1024;

/// How many payload bytes may wait between the threads (one item always passes).
pub const CHANNEL_BYTES: usize = 64 << 20;

/// What the stream thread passes to the main thread, in stream order.
#[derive(Debug)]
pub enum Item {
    /// One pgoutput message; `wal_start` is the LSN it was sent at.
    Data {
        wal_start: Lsn,
        data: Bytes,
    },
    KeepAlive {
        wal_end: Lsn,
    },
}

impl Item {
    /// Bytes this item holds (for the channel's byte bound).
    fn size(&self) -> usize {
        match self {
            Item::Data { data, .. } => data.len(),
            Item::KeepAlive { .. } => 0,
        }
    }
}

/// Where and how the worker streams its slot.
#[derive(Debug, Clone)]
pub struct Connection {
    pub params: ConnParams,
    pub slot: String,
    pub pgoutput: Pgoutput,
    /// How often the walsender hears the flush position when it does not move.
    pub status_interval: Duration,
}

struct Shared {
    stop: AtomicBool,
    /// Flush LSN for the walsender (monotonic; 0 = nothing yet).
    confirm: AtomicU64,
    /// The main thread is (about to be) waiting: write to the pipe to wake it.
    sleeping: AtomicBool,
    /// Payload bytes of the items in the channel.
    queued_bytes: AtomicUsize,
    /// The stream thread waits for room in the channel: tell it once there is some.
    wants_room: AtomicBool,
    room: tokio::sync::Notify,
    wake_wr: RawFd,
    end: Mutex<Option<WireError>>,
}

impl Shared {
    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.write_pipe();
        }
    }

    fn write_pipe(&self) {
        let b = [1u8];
        // SAFETY: writing one byte from a valid buffer to our own non-blocking pipe. A full
        // pipe (EAGAIN) already guarantees a wake-up.
        unsafe { libc::write(self.wake_wr, b.as_ptr().cast(), 1) };
    }
}

/// The main thread's handle on the stream thread.
pub struct Stream {
    rx: Receiver<Item>,
    shared: Arc<Shared>,
    wake_rd: RawFd,
    thread: Option<JoinHandle<()>>,
}

impl Stream {
    /// Spawns the stream thread (with every signal blocked).
    pub fn start(conn: Connection) -> std::io::Result<Stream> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (wake_rd, wake_wr) = (fds[0], fds[1]);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            confirm: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            queued_bytes: AtomicUsize::new(0),
            wants_room: AtomicBool::new(false),
            room: tokio::sync::Notify::new(),
            wake_wr,
            end: Mutex::new(None),
        });
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
        let thread_shared = Arc::clone(&shared);

        // The thread inherits the signal mask: block everything while spawning.
        // SAFETY: sigset_t is plain data; pthread_sigmask only changes this thread's mask,
        // restored right after the spawn.
        let spawned = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            let spawned =
                std::thread::Builder::new().name("pgcdc-stream".into()).spawn(move || run(conn, thread_shared, tx));
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            spawned
        };
        let thread = spawned.inspect_err(|_| {
            // SAFETY: closing the two descriptors created above.
            unsafe {
                libc::close(wake_rd);
                libc::close(wake_wr);
            }
        })?;
        Ok(Stream { rx, shared, wake_rd, thread: Some(thread) })
    }

    /// The descriptor to wait on (readable when items arrived while the main thread slept).
    pub fn wake_fd(&self) -> RawFd {
        self.wake_rd
    }

    /// Call before waiting; returns false when there is something to do right away.
    pub fn prepare_to_sleep(&self) -> bool {
        self.shared.sleeping.store(true, Ordering::SeqCst);
        if !self.rx.is_empty() || self.is_finished() {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Call after waiting.
    pub fn woke_up(&self) {
        self.shared.sleeping.store(false, Ordering::SeqCst);
        let mut buf = [0u8; 64];
        // SAFETY: reading into a local buffer from our non-blocking pipe until it is empty.
        while unsafe { libc::read(self.wake_rd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }

    pub fn try_recv(&self) -> Option<Item> {
        let item = self.rx.try_recv().ok()?;
        let left = self.shared.queued_bytes.fetch_sub(item.size(), Ordering::SeqCst) - item.size();
        // Half empty: the stream thread, if it waits, reads on while this thread drains.
        if self.shared.wants_room.load(Ordering::SeqCst)
            && self.rx.len() <= CHANNEL_CAPACITY / 2
            && left <= CHANNEL_BYTES / 2
            && self.shared.wants_room.swap(false, Ordering::SeqCst)
        {
            self.shared.room.notify_one();
        }
        Some(item)
    }

    pub fn pending(&self) -> usize {
        self.rx.len()
    }

    /// Raise the flush LSN reported to the walsender (never lowers it).
    pub fn confirm(&self, lsn: Lsn) {
        self.shared.confirm.fetch_max(lsn.0, Ordering::SeqCst);
    }

    fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Once the thread has ended and every item it sent was taken: why it ended.
    pub fn ended(&mut self) -> Option<WireError> {
        if !self.is_finished() || !self.rx.is_empty() {
            return None;
        }
        let panicked = match self.thread.take() {
            Some(t) => t.join().is_err(),
            None => false,
        };
        let end = self.shared.end.lock().ok().and_then(|mut e| e.take());
        Some(end.unwrap_or_else(|| {
            WireError::Io(if panicked { "replication thread panicked" } else { "replication thread ended" }.into())
        }))
    }

    /// Asks the thread to end the stream cleanly (CopyDone) and waits up to `wait` for it.
    pub fn stop(&mut self, wait: Duration) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + wait;
        while !self.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // SAFETY: closing our read end; the write end stays open while the thread may use
        // it and is released with the process.
        unsafe { libc::close(self.wake_rd) };
    }
}

fn run(conn: Connection, shared: Arc<Shared>, tx: Sender<Item>) {
    let outcome = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(stream_loop(conn, &shared, tx)),
        Err(e) => Some(WireError::Io(format!("cannot start the tokio runtime: {e}"))),
    };
    if let Ok(mut end) = shared.end.lock() {
        *end = outcome;
    }
    shared.write_pipe();
}

/// Streams until stopped (None) or until the stream fails (Some).
async fn stream_loop(conn: Connection, shared: &Shared, tx: Sender<Item>) -> Option<WireError> {
    let mut session = match start(&conn).await {
        Ok(s) => s,
        Err(e) => return Some(e),
    };
    let flush = || Lsn(shared.confirm.load(Ordering::SeqCst));
    let outcome = loop {
        if shared.stop.load(Ordering::SeqCst) {
            break None;
        }
        if let Err(e) = forward(&mut session, shared, &tx, &flush).await {
            break e;
        }
        if let Err(e) = session.maybe_send_status(flush()).await {
            break Some(e);
        }
        let wake_at = session.status_due(flush()).min(session.silence_due()).min(Instant::now() + POLL);
        tokio::select! {
            biased;
            r = session.fill() => if let Err(e) = r { break Some(e) },
            _ = tokio::time::sleep_until(wake_at.into()) => {
                if Instant::now() >= session.silence_due() {
                    if let Err(e) = session.silence(flush()).await {
                        break Some(e);
                    }
                }
            }
        }
    };
    if outcome.is_none() {
        // Stopped: the last confirmation, then a polite goodbye.
        let _ = tokio::time::timeout(Duration::from_secs(1), session.send_status(flush(), false)).await;
        session.close(Duration::from_millis(500)).await;
    }
    outcome
}

/// How often the loop looks at the stop flag and the flush position while the server is quiet.
const POLL: Duration = Duration::from_millis(100);

/// How often a stream thread waiting for room in the channel looks at the stop flag and the
/// status cadence (the main thread wakes it as soon as there is room).
const ROOM_POLL: Duration = Duration::from_millis(50);

async fn start(conn: &Connection) -> Result<Session, WireError> {
    let repl = ReplConn::connect(&conn.params).await?;
    // From 0/0 the walsender starts at the slot's confirmed_flush_lsn.
    Session::start(repl, &conn.slot, Lsn::ZERO, &conn.pgoutput, conn.status_interval).await
}

/// Passes every message already read to the main thread, waiting (while the session stays
/// alive) when the channel is full: CHANNEL_CAPACITY items, or CHANNEL_BYTES unless it is
/// empty. Ok(()) when nothing is left to read without I/O; Err(None) when stopped.
async fn forward(
    session: &mut Session,
    shared: &Shared,
    tx: &Sender<Item>,
    flush: &impl Fn() -> Lsn,
) -> Result<(), Option<WireError>> {
    while let Some(wal) = session.next_wal().map_err(Some)? {
        let reply = matches!(wal, Wal::Keepalive { reply_requested: true, .. });
        let mut item = match wal {
            Wal::Data { wal_start, data } => Item::Data { wal_start, data },
            Wal::Keepalive { wal_end, .. } => Item::KeepAlive { wal_end },
            Wal::Ended => return Err(Some(WireError::Io("the server ended the replication stream".into()))),
        };
        let size = item.size();
        let mut waited = false;
        loop {
            let over_bytes =
                !tx.is_empty() && shared.queued_bytes.load(Ordering::SeqCst).saturating_add(size) > CHANNEL_BYTES;
            let sent = if over_bytes {
                Err(TrySendError::Full(item))
            } else {
                // Counted before the send, so the receiver never subtracts first.
                shared.queued_bytes.fetch_add(size, Ordering::SeqCst);
                tx.try_send(item).inspect_err(|_| {
                    shared.queued_bytes.fetch_sub(size, Ordering::SeqCst);
                })
            };
            match sent {
                Ok(()) => {
                    shared.wake();
                    break;
                }
                Err(TrySendError::Full(back)) => {
                    item = back;
                    waited = true;
                    shared.wake();
                    if !shared.wants_room.swap(true, Ordering::SeqCst) {
                        // Just asked to be told: try once more before waiting, the main thread
                        // may have drained the channel before it saw the request.
                        continue;
                    }
                    if shared.stop.load(Ordering::SeqCst) {
                        return Err(None);
                    }
                    session.maybe_send_status(flush()).await.map_err(Some)?;
                    // Woken by the main thread once the channel is half empty; the timeout
                    // keeps status updates going and looks at the stop flag.
                    let _ = tokio::time::timeout(ROOM_POLL, shared.room.notified()).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(None),
            }
        }
        if waited {
            // We were not reading meanwhile: the silence is ours, not the server's.
            session.listening_again();
        }
        if reply {
            // The walsender asks for our position now (e.g. before wal_sender_timeout).
            session.send_status(flush(), false).await.map_err(Some)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_sizes_count_payload_bytes() {
        let data = Item::Data { wal_start: Lsn(1), data: Bytes::from(vec![0u8; 1000]) };
        assert_eq!(data.size(), 1000);
        assert_eq!(Item::KeepAlive { wal_end: Lsn(1) }.size(), 0);
    }
}
