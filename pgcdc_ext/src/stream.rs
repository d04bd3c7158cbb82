//! The replication thread: a tokio current-thread runtime that streams the feed's slot with
//! pgwire-replication and hands plain Rust data to the worker's main thread.
//!
//! ```text
//!   walsender ==unix socket==> [stream thread: tokio, pgwire-replication]
//!                                 |  Item (crossbeam, bounded)   ^ confirm: AtomicU64
//!                                 |  + 1 byte on a pipe if the   | (flush LSN the main
//!                                 v    main thread sleeps        |  thread computed)
//!                              [worker main thread: WaitLatchOrSocket(latch, pipe)]
//! ```
//!
//! Nothing here calls PostgreSQL (P4): no logging, no palloc, no GUC reads. All signals are
//! blocked in the thread, so PostgreSQL's handlers run on the main thread. When the channel
//! is full (the worker is at its queue cap, or slower than the walsender) the thread stops
//! reading the stream and pgwire-replication keeps sending status updates, so the walsender
//! waits instead of timing out; WAL is retained.
//!
//! Memory: the channel is bounded by items ([`CHANNEL_CAPACITY`]) **and by bytes**
//! ([`CHANNEL_BYTES`] of pgoutput payload; one item is always let through, however big), and
//! pgwire-replication's own buffer holds at most [`PGWIRE_BUFFER_EVENTS`] messages. A stream
//! of huge (TOASTed) rows therefore holds a few of them in memory, not gigabytes.

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use pgcdc_core::Lsn;
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};

/// How many items may wait between the threads.
const CHANNEL_CAPACITY: usize = 16 * 1024;

/// How many payload bytes may wait between the threads (one item always passes).
pub const CHANNEL_BYTES: usize = 64 << 20;

/// pgwire-replication's buffer between its socket reader and our thread, in messages.
const PGWIRE_BUFFER_EVENTS: usize = 64;

/// Settings that change how values are rendered as text, pinned to PostgreSQL's defaults
/// (what the decoder expects) whatever `ALTER DATABASE` or `ALTER ROLE ... SET` says: for the
/// walsender session (`walsender_options`) and for snapshot chunks (`snapshot.rs`), so a row's
/// key has the same text in both. Values contain no spaces (they go into `-c name=value`).
pub const TEXT_OUTPUT_SETTINGS: &[(&CStr, &CStr)] = &[
    (c"datestyle", c"ISO,MDY"),
    (c"intervalstyle", c"postgres"),
    (c"extra_float_digits", c"1"),
    (c"bytea_output", c"hex"),
    (c"TimeZone", c"UTC"),
];

/// The walsender session's `options` startup parameter: [`TEXT_OUTPUT_SETTINGS`].
fn walsender_options() -> String {
    TEXT_OUTPUT_SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {}={}", name.to_string_lossy(), value.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the stream thread passes to the main thread, in stream order.
#[derive(Debug)]
pub enum Item {
    Begin {
        final_lsn: Lsn,
        xid: u32,
        commit_time: i64,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    /// Any other pgoutput message, undecoded; `wal_start` is the LSN it was sent at.
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
            Item::Message { prefix, content, .. } => prefix.len() + content.len(),
            _ => 0,
        }
    }
}

/// Why the stream ended.
#[derive(Debug, Clone)]
pub struct StreamError {
    pub message: String,
    pub sqlstate: Option<String>,
    /// Retrying cannot help (slot or publication missing, slot invalidated, auth refused):
    /// the feed goes to the error state instead of restarting.
    pub permanent: bool,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl StreamError {
    fn transient(message: impl Into<String>) -> Self {
        StreamError { message: message.into(), sqlstate: None, permanent: false }
    }

    fn from_pgwire(e: PgWireError) -> Self {
        match e {
            PgWireError::Server(msg) => {
                let sqlstate =
                    msg.rsplit_once("(SQLSTATE ").and_then(|(_, rest)| rest.strip_suffix(')')).map(str::to_owned);
                let permanent = match sqlstate.as_deref() {
                    // undefined object (slot/publication), privileges, auth, database missing
                    Some("42704" | "42501" | "28000" | "28P01" | "3D000") => true,
                    // invalidated slot ("cannot read from logical replication slot")
                    Some("55000") => {
                        msg.contains("cannot read from logical replication slot")
                            || msg.contains("invalidated")
                            || msg.contains("can no longer get changes")
                    }
                    _ => false,
                };
                StreamError { message: format!("replication: {msg}"), sqlstate, permanent }
            }
            PgWireError::Auth(msg) => StreamError {
                message: format!("replication authentication failed: {msg}"),
                sqlstate: Some("28000".into()),
                permanent: true,
            },
            other => StreamError::transient(format!("replication: {other}")),
        }
    }
}

/// Where and as whom the worker connects for replication.
#[derive(Debug, Clone)]
pub struct Connection {
    /// A directory (unix socket) or a host name.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    pub slot: String,
    pub publication: String,
    pub application_name: String,
    pub status_interval: Duration,
}

impl Connection {
    /// Applies `key=value` pairs of `pgcdc.replication_conninfo` (host, port, user, password).
    pub fn apply_conninfo(&mut self, conninfo: &str) -> Result<(), String> {
        for pair in conninfo.split_whitespace() {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("pgcdc.replication_conninfo: expected key=value, got {pair:?}"))?;
            let v = v.trim_matches('\'');
            match k {
                "host" => self.host = v.to_owned(),
                "port" => {
                    self.port = v.parse().map_err(|_| format!("pgcdc.replication_conninfo: invalid port {v:?}"))?
                }
                "user" => self.user = v.to_owned(),
                "password" => self.password = v.to_owned(),
                other => {
                    return Err(format!(
                        "pgcdc.replication_conninfo: unsupported key {other:?} (host, port, user, password)"
                    ))
                }
            }
        }
        Ok(())
    }

    /// The publication as an identifier for `publication_names` (which the walsender
    /// splits like an identifier list): always double-quoted, so case, commas and spaces
    /// survive. pgwire-replication escapes the single quotes of the option's string literal.
    fn quoted_publication(&self) -> String {
        format!("\"{}\"", self.publication.replace('"', "\"\""))
    }

    fn config(&self) -> ReplicationConfig {
        let cfg = if self.host.starts_with('/') {
            ReplicationConfig::unix(
                self.host.clone(),
                self.port,
                self.user.clone(),
                self.password.clone(),
                self.database.clone(),
                self.slot.clone(),
                self.quoted_publication(),
            )
        } else {
            ReplicationConfig::new(
                self.host.clone(),
                self.user.clone(),
                self.password.clone(),
                self.database.clone(),
                self.slot.clone(),
                self.quoted_publication(),
            )
            .with_port(self.port)
        };
        cfg.with_status_interval(self.status_interval)
            .with_wakeup_interval(self.status_interval)
            .with_application_name(self.application_name.clone())
            .with_buffer_size(PGWIRE_BUFFER_EVENTS)
            .with_options(walsender_options())
    }
}

struct Shared {
    stop: AtomicBool,
    /// Flush LSN for the walsender (monotonic; 0 = nothing yet).
    confirm: AtomicU64,
    /// The main thread is (about to be) waiting: write to the pipe to wake it.
    sleeping: AtomicBool,
    /// Payload bytes of the items in the channel.
    queued_bytes: AtomicUsize,
    wake_wr: RawFd,
    end: Mutex<Option<StreamError>>,
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
        self.shared.queued_bytes.fetch_sub(item.size(), Ordering::SeqCst);
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
    pub fn ended(&mut self) -> Option<StreamError> {
        if !self.is_finished() || !self.rx.is_empty() {
            return None;
        }
        let panicked = match self.thread.take() {
            Some(t) => t.join().is_err(),
            None => false,
        };
        let end = self.shared.end.lock().ok().and_then(|mut e| e.take());
        Some(end.unwrap_or_else(|| {
            StreamError::transient(if panicked { "replication thread panicked" } else { "replication thread ended" })
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
        Err(e) => Some(StreamError::transient(format!("cannot start the tokio runtime: {e}"))),
    };
    if let Ok(mut end) = shared.end.lock() {
        *end = outcome;
    }
    shared.write_pipe();
}

/// Streams until stopped (None) or until the stream fails (Some).
async fn stream_loop(conn: Connection, shared: &Shared, tx: Sender<Item>) -> Option<StreamError> {
    let mut client = match ReplicationClient::connect(conn.config()).await {
        Ok(c) => c,
        Err(e) => return Some(StreamError::from_pgwire(e)),
    };
    let mut reported = 0u64;
    let report = |client: &ReplicationClient, reported: &mut u64| {
        let c = shared.confirm.load(Ordering::SeqCst);
        if c > *reported {
            client.update_applied_lsn(pgwire_replication::Lsn(c));
            *reported = c;
        }
    };
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
            return None;
        }
        report(&client, &mut reported);
        let event = match tokio::time::timeout(Duration::from_millis(100), client.recv()).await {
            Err(_elapsed) => continue,
            Ok(Ok(Some(ev))) => ev,
            Ok(Ok(None)) => return Some(StreamError::transient("replication stream ended")),
            Ok(Err(e)) => return Some(StreamError::from_pgwire(e)),
        };
        let Some(mut item) = convert(event) else { continue };
        let size = item.size();
        // Forward, waiting (while pgwire keeps the session alive) when the channel is full:
        // CHANNEL_CAPACITY items, or CHANNEL_BYTES unless it is empty.
        let mut backoff = Duration::from_millis(1);
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
                    shared.wake();
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    report(&client, &mut reported);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
                Err(TrySendError::Disconnected(_)) => return None,
            }
        }
    }
}

fn convert(ev: ReplicationEvent) -> Option<Item> {
    Some(match ev {
        ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
            Item::Begin { final_lsn: Lsn(final_lsn.0), xid, commit_time: commit_time_micros }
        }
        ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros } => {
            Item::Commit { commit_lsn: Lsn(lsn.0), end_lsn: Lsn(end_lsn.0), commit_time: commit_time_micros }
        }
        ReplicationEvent::Message { transactional, lsn, prefix, content } => {
            Item::Message { transactional, lsn: Lsn(lsn.0), prefix, content }
        }
        ReplicationEvent::XLogData { wal_start, data, .. } => Item::Data { wal_start: Lsn(wal_start.0), data },
        ReplicationEvent::KeepAlive { wal_end, .. } => Item::KeepAlive { wal_end: Lsn(wal_end.0) },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_classified_by_sqlstate() {
        let e = StreamError::from_pgwire(PgWireError::Server(
            "replication slot \"pgcdc_x\" does not exist (SQLSTATE 42704)".into(),
        ));
        assert!(e.permanent);
        assert_eq!(e.sqlstate.as_deref(), Some("42704"));
        let e = StreamError::from_pgwire(PgWireError::Server(
            "replication slot \"pgcdc_x\" is active for PID 7 (SQLSTATE 55006)".into(),
        ));
        assert!(!e.permanent);
        let e = StreamError::from_pgwire(PgWireError::Server(
            "cannot read from logical replication slot \"pgcdc_x\" (SQLSTATE 55000)".into(),
        ));
        assert!(e.permanent);
    }

    #[test]
    fn conninfo_overrides_connection_fields() {
        let mut c = Connection {
            host: "/tmp".into(),
            port: 5432,
            user: "postgres".into(),
            password: String::new(),
            database: "db".into(),
            slot: "s".into(),
            publication: "p".into(),
            application_name: "a".into(),
            status_interval: Duration::from_secs(1),
        };
        c.apply_conninfo("host=127.0.0.1 port=5433 user=repl password='pw'").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.user.as_str(), c.password.as_str()), ("127.0.0.1", 5433, "repl", "pw"));
        assert!(c.apply_conninfo("sslmode=require").is_err());
    }

    #[test]
    fn publication_names_are_quoted_identifiers() {
        let mut c = Connection {
            host: "/tmp".into(),
            port: 5432,
            user: "postgres".into(),
            password: String::new(),
            database: "db".into(),
            slot: "s".into(),
            publication: "Shop".into(),
            application_name: "a".into(),
            status_interval: Duration::from_secs(1),
        };
        assert_eq!(c.quoted_publication(), "\"Shop\"");
        c.publication = "we\"ird, 'name'".into();
        assert_eq!(c.quoted_publication(), "\"we\"\"ird, 'name'\"");
    }

    #[test]
    fn item_sizes_count_payload_bytes() {
        let data = Item::Data { wal_start: Lsn(1), data: Bytes::from(vec![0u8; 1000]) };
        assert_eq!(data.size(), 1000);
        let msg =
            Item::Message { transactional: true, lsn: Lsn(1), prefix: "p".into(), content: Bytes::from_static(b"abc") };
        assert_eq!(msg.size(), 4);
        assert_eq!(Item::KeepAlive { wal_end: Lsn(1) }.size(), 0);
    }

    #[test]
    fn the_walsender_gets_the_text_output_settings_as_startup_options() {
        assert_eq!(
            walsender_options(),
            "-c datestyle=ISO,MDY -c intervalstyle=postgres -c extra_float_digits=1 -c bytea_output=hex -c TimeZone=UTC"
        );
        for (name, value) in TEXT_OUTPUT_SETTINGS {
            assert!(!value.to_bytes().contains(&b' ') && !name.to_bytes().contains(&b' '));
        }
    }
}
