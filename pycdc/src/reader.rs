//! `LogicalReplicationReader`: a direct pgoutput client over the streaming replication
//! protocol (no extension needed), with the API of the pgoutput-decoder library.
//!
//! ```text
//!  walsender --CopyData--> [stream task, tokio]  decode (pgcdc_core Decoder), encode
//!                              |                 (pgcdc_core Encoder), slice row columns
//!                              | events into a bounded queue (no GIL); ends of
//!                              | transactions to the Confirmer (pgcdc_core::position)
//!                              v
//!                 [Python thread] next_ready() pops one item per event; wait() parks
//!                              |  the coroutine (GIL released) until the queue has more
//!                              v
//!        acknowledgements -> Confirmer -> standby status update 'flushed' -> the slot's
//!                                                        confirmed_flush_lsn advances
//! ```
//!
//! # Positions and acknowledgement
//!
//! Every event has a position `(commit_lsn, ordinal)`. The slot can only resume at a
//! transaction boundary, so what is reported to the server (`flushed`) is the end LSN of the
//! last transaction that is completely delivered *and* acknowledged:
//!
//! - `auto_acknowledge=True`: an event counts as processed when the loop asks for the next
//!   one; a transaction is confirmed once all its events are processed. The last event yielded
//!   before leaving the loop is therefore not confirmed (at-least-once).
//! - `auto_acknowledge=False`: `acknowledge()` marks everything delivered so far processed.
//!
//! Confirmations are sent at most every 100 ms, on `stop()`, and when the server asks.
//! When nothing is delivered-but-unacknowledged and no transaction is open, a keepalive's WAL
//! end is confirmed too, so an idle or unpublished-only stream never pins WAL, and a server
//! shutting down is not kept waiting.
//!
//! # Failures
//!
//! The first connection's errors are raised (wrong password, missing slot or publication,
//! unreachable host within `connect_timeout`). Once streaming, a lost connection or a server
//! restart reconnects with exponential backoff (0.1 s doubling to 30 s) and resumes from the
//! confirmed position; events already delivered in this process are skipped by position, so
//! the consumer sees each event once per process. A new process gets again what was not
//! confirmed, and, after a server restart, also what the slot forgot it had confirmed (up to
//! PostgreSQL 16 the slot's position reaches disk only when its restart_lsn moves): with an
//! offset store ([`crate::offsets`]) the acknowledged position is kept in a file and
//! everything at or below it is skipped, so nothing acknowledged comes back. A server that waits for a confirmation we cannot give (fast shutdown
//! with unacknowledged events) gets the connection closed instead of a hang.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pgcdc_core::debezium::{Encoder, EncoderOptions, Event, Op};
use pgcdc_core::pgoutput::{
    decode_message, Begin, ColumnData, Commit, Decoder, Message, OldTuple, StreamCommit, TupleData,
};
use pgcdc_core::position::{Confirmer, Position, STANDALONE_ORDINAL};
use pgcdc_core::relation::TableSchema;
use pgcdc_core::{Lsn, Oid};
use pgcdc_wire::{quote_ident, quote_literal, ConnParams, Pgoutput, ReplConn, Session, Wal};
use tokio::sync::Notify;

use crate::catalog::CatalogConn;
use crate::errors::PgError;
use crate::message::{LogicalMessage, RowMsg};
use crate::offsets::{Offset, OffsetStore, Pos};
use crate::signal::{Signal, Stop};
use crate::spool::Spool;
use crate::values::Col;

/// What the reader was asked to do.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub conn: ConnParams,
    pub publications: Vec<String>,
    pub slot: String,
    pub start_lsn: Option<Lsn>,
    pub auto_ack: bool,
    pub include_truncate: bool,
    pub include_messages: bool,
    pub create_slot: bool,
    pub encoder: EncoderOptions,
    pub reconnect: bool,
    /// Give up reconnecting after this long without a working connection (None: never).
    pub reconnect_timeout: Option<Duration>,
    pub max_buffered: usize,
    /// Where the acknowledged position is kept across processes and server restarts.
    pub offsets: Option<OffsetStore>,
    /// Ask for in-progress transactions in stream blocks (protocol 2+, PostgreSQL 14+).
    pub streaming: bool,
    /// Bytes of streamed, uncommitted transactions held in memory (more spill to disk).
    pub stream_memory: usize,
}

/// Acknowledgement bookkeeping, shared by the Python thread and the stream task.
#[derive(Debug, Default)]
struct Acks {
    /// Which end of a transaction the slot may confirm (the rule the extension uses too).
    confirmer: Confirmer,
    /// Confirmed regardless of the confirmer: the start position, the offset store's, and
    /// `acknowledge(lsn)`.
    floor: Lsn,
    last_delivered: Option<Pos>,
    acked: Option<Pos>,
}

impl Acks {
    /// Position to report as flushed (the slot's confirmed_flush_lsn follows it).
    fn flush(&self) -> Lsn {
        self.floor.max(self.confirmer.confirmable())
    }

    fn acked_position(&self) -> Position {
        self.acked.map_or(Position::ZERO, |(lsn, ordinal)| Position::new(lsn, ordinal))
    }

    /// Everything delivered so far is processed.
    fn acknowledge_delivered(&mut self) {
        self.acked = self.last_delivered;
        let acked = self.acked_position();
        self.confirmer.acknowledged(acked);
    }

    /// A new session resends everything after the flush position: start the confirmer over.
    fn restart(&mut self) {
        self.floor = self.flush();
        self.confirmer = Confirmer::new();
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Box<RowMsg>>,
    acks: Acks,
    /// Terminal error, raised by every later `next_ready`.
    error: Option<PgError>,
    /// The stream task has ended (after stop() or an error).
    finished: bool,
    stopping: bool,
    started: bool,
    /// Backend pid of the current replication connection (0 when disconnected).
    backend_pid: i32,
    /// Sessions started so far (1 = the first connection).
    sessions: u64,
    /// Bytes of streamed transactions held in temporary files, all sessions together.
    stream_spilled_bytes: u64,
    /// The Python side found nothing and sleeps on the signal (see `crate::signal`).
    armed: bool,
    /// The flush position last sent to the server.
    reported: Lsn,
    /// Why the last attempt to reach the server failed (for the stop report).
    last_failure: Option<PgError>,
    /// Set when the task ends with a confirmation it could not send; raised by `stop()`.
    unconfirmed: Option<PgError>,
    /// What the offset store holds (with an offset store).
    saved: Option<Offset>,
}

/// What the Python object and the stream task share.
pub struct Shared {
    state: Mutex<State>,
    /// Wakes the Python side: the queue got items, an error, or the end.
    pub signal: Signal,
    /// The queue has room again.
    space: Notify,
    /// Acknowledgements: the stream task should send a status update.
    wake: Notify,
    stop: Stop,
    /// `__debezium.context.runId` of this reader's records: one UUIDv7 per reader.
    run_id: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The native reader behind `pgcdc.LogicalReplicationReader`.
pub struct Reader {
    pub config: ReaderConfig,
    pub shared: Arc<Shared>,
    /// The process that made it (see `crate::check_process`).
    pid: u32,
}

impl Reader {
    /// Fails when the offset store cannot be read or belongs to another slot.
    pub fn new(config: ReaderConfig) -> Result<Reader, PgError> {
        let saved = config.offsets.as_ref().map(OffsetStore::load).transpose()?.flatten();
        let mut state = State::default();
        state.acks.floor = config.start_lsn.unwrap_or(Lsn::ZERO);
        if let Some(saved) = &saved {
            // Everything at or below the stored position counts as delivered and acknowledged:
            // the first session resumes after it (see `session`).
            state.acks.floor = state.acks.floor.max(saved.flushed);
            state.acks.acked = saved.acknowledged;
            state.acks.last_delivered = saved.acknowledged;
        }
        if config.offsets.is_some() {
            state.saved = Some(saved.unwrap_or_default());
        }
        state.reported = state.acks.flush();
        Ok(Reader {
            config,
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                signal: Signal::new(),
                space: Notify::new(),
                wake: Notify::new(),
                stop: Stop::default(),
                run_id: uuid::Uuid::now_v7().to_string(),
            }),
            pid: std::process::id(),
        })
    }

    pub fn check_process(&self) -> Result<(), PgError> {
        crate::check_process(self.pid)
    }

    /// Starts the stream task (once).
    pub fn ensure_started(&self) {
        let mut st = self.shared.lock();
        if st.started || st.stopping {
            return;
        }
        st.started = true;
        drop(st);
        let shared = self.shared.clone();
        let config = self.config.clone();
        let on_panic = self.shared.clone();
        crate::spawn_supervised(run(shared, config), move |e| {
            let mut st = on_panic.lock();
            st.error = Some(e);
            st.finished = true;
            drop(st);
            on_panic.signal.notify();
        });
    }

    /// The next event, None when none is buffered. Errors: the stream's terminal error;
    /// `Ok(Err(()))` when the stream has ended.
    pub fn next_ready(&self) -> Result<Option<Box<RowMsg>>, NextError> {
        self.check_process().map_err(NextError::Failed)?;
        let mut st = self.shared.lock();
        let flush_before = st.acks.flush();
        if self.config.auto_ack {
            // Asking for the next event means the previous one is processed, and with it
            // every transaction completed so far.
            st.acks.acknowledge_delivered();
        }
        let before = st.queue.len();
        let out = st.queue.pop_front();
        if let Some(m) = &out {
            st.acks.last_delivered = Some(m.position());
        }
        let room = before >= self.config.max_buffered / 2 && st.queue.len() < self.config.max_buffered / 2;
        let flush_moved = st.acks.flush() != flush_before;
        drop(st);
        if room {
            self.shared.space.notify_one();
        }
        if flush_moved {
            self.shared.wake.notify_one();
        }
        match out {
            Some(m) => Ok(Some(m)),
            None => {
                let mut st = self.shared.lock();
                if let Some(e) = &st.error {
                    Err(NextError::Failed(e.clone()))
                } else if st.finished || st.stopping {
                    Err(NextError::Ended)
                } else if !st.queue.is_empty() {
                    // Filled while we looked: try again at once.
                    drop(st);
                    self.shared.signal.notify();
                    Ok(None)
                } else {
                    st.armed = true;
                    Ok(None)
                }
            }
        }
    }

    /// Manual acknowledgement of everything delivered so far (or explicitly up to `lsn`).
    pub fn acknowledge(&self, lsn: Option<Lsn>) -> Result<(), PgError> {
        self.check_process()?;
        let mut st = self.shared.lock();
        if st.stopping {
            return Err(PgError::Interface(
                "the reader is stopped: an acknowledgement now would never reach the server".into(),
            ));
        }
        let before = st.queue.len();
        if let Some(lsn) = lsn {
            st.acks.floor = st.acks.floor.max(lsn);
        } else {
            if self.config.auto_ack {
                return Err(PgError::NoPendingLsn(
                    "No pending LSN to acknowledge: this reader has auto_acknowledge=True and confirms transactions by itself".into(),
                ));
            }
            st.acks.acknowledge_delivered();
        }
        let room = before >= self.config.max_buffered / 2 && st.queue.len() < self.config.max_buffered / 2;
        drop(st);
        if room {
            self.shared.space.notify_one();
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Asks the stream task to confirm what is acknowledged (within `grace`), close, and end.
    pub fn request_stop(&self, grace: Duration) {
        if self.check_process().is_err() {
            return; // the parent's stream: leave it alone (its locks may be held by threads that do not exist here)
        }
        let mut st = self.shared.lock();
        st.stopping = true;
        let running = st.started && !st.finished;
        if !running {
            st.finished = true;
        }
        drop(st);
        self.shared.stop.request(grace);
        self.shared.wake.notify_one();
        self.shared.space.notify_one();
        self.shared.signal.notify();
    }

    /// True once the stream task has ended; otherwise arms the signal for the end.
    pub fn finished(&self) -> bool {
        let mut st = self.shared.lock();
        if !st.finished {
            st.armed = true;
        }
        st.finished
    }

    /// After the end: a confirmation that could not be sent to the server (stop() raises it).
    pub fn unconfirmed(&self) -> Option<PgError> {
        self.shared.lock().unconfirmed.take()
    }

    pub fn confirmed_lsn(&self) -> Lsn {
        self.shared.lock().acks.flush()
    }

    pub fn backend_pid(&self) -> i32 {
        self.shared.lock().backend_pid
    }

    pub fn stream_spilled_bytes(&self) -> u64 {
        self.shared.lock().stream_spilled_bytes
    }

    pub fn sessions(&self) -> u64 {
        self.shared.lock().sessions
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.request_stop(STOP_GRACE);
    }
}

/// How long a stop may spend confirming what is acknowledged, unless `stop(timeout=)` says.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

pub enum NextError {
    Failed(PgError),
    Ended,
}

// ------------------------------------------------------------------------- stream task

enum SessionEnd {
    Stopped,
    /// The server ended the stream or wants us gone (shutdown): reconnect.
    Reconnect(String),
}

async fn run(shared: Arc<Shared>, config: ReaderConfig) {
    let mut backoff = Duration::from_millis(100);
    let mut streamed_once = false;
    let mut down_since: Option<Instant> = None;
    let first_attempt = Instant::now();
    loop {
        if shared.lock().stopping && (!streamed_once || !unreported(&shared) || past_stop_deadline(&shared)) {
            break;
        }
        let sessions_before = shared.lock().sessions;
        let result = session(&shared, &config, &mut streamed_once).await;
        if shared.lock().sessions > sessions_before {
            // That session streamed: start the backoff over.
            backoff = Duration::from_millis(100);
            down_since = None;
        }
        {
            let mut st = shared.lock();
            st.backend_pid = 0;
            // Undelivered events will be sent again from the confirmed position.
            st.queue.clear();
            st.acks.restart();
        }
        shared.space.notify_one();
        match result {
            Ok(SessionEnd::Stopped) => break,
            Ok(SessionEnd::Reconnect(why)) if !config.reconnect => {
                shared.lock().error = Some(PgError::Io(format!(
                    "{why} ({}); not reconnecting (reconnect=False)",
                    config.conn.endpoint()
                )));
                shared.signal.notify();
                break;
            }
            Ok(SessionEnd::Reconnect(why)) => shared.lock().last_failure = Some(PgError::Io(why)),
            Err(e) => {
                // The slot is still held by the walsender of a connection that just ended.
                let slot_busy = e.sqlstate() == Some("55006") && first_attempt.elapsed() < Duration::from_secs(10);
                let retry = slot_busy || (streamed_once && config.reconnect && e.is_transient());
                let expired =
                    down_since.zip(config.reconnect_timeout).is_some_and(|(since, limit)| since.elapsed() > limit);
                let stopping = shared.lock().stopping;
                if stopping {
                    shared.lock().last_failure = Some(e);
                } else if !retry || expired {
                    shared.lock().error = Some(e);
                    shared.signal.notify();
                    break;
                } else {
                    shared.lock().last_failure = Some(e);
                }
            }
        }
        if down_since.is_none() {
            down_since = Some(Instant::now());
        }
        shared.stop.backoff(&mut backoff).await;
    }
    if let Err(e) = persist(&shared, &config) {
        let mut st = shared.lock();
        if st.error.is_none() {
            st.unconfirmed = Some(e);
        }
    }
    let mut st = shared.lock();
    if st.error.is_none() && st.acks.flush() > st.reported && streamed_once && st.unconfirmed.is_none() {
        let why = st.last_failure.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
        st.unconfirmed = Some(PgError::Operational(format!(
            "the confirmation of {} (what was acknowledged) could not be sent to the server before the reader stopped{why}; the slot stays at {} and those events will be delivered again",
            st.acks.flush(), st.reported
        )));
    }
    st.finished = true;
    drop(st);
    shared.signal.notify();
}

/// Writes the acknowledged position to the offset store when it moved since the last write.
fn persist(shared: &Shared, config: &ReaderConfig) -> Result<(), PgError> {
    let Some(store) = &config.offsets else { return Ok(()) };
    let (offset, changed) = {
        let st = shared.lock();
        let saved = st.saved.clone().unwrap_or_default();
        let offset = Offset { flushed: st.acks.flush(), acknowledged: st.acks.acked, ..saved.clone() };
        let changed = offset != saved;
        (offset, changed)
    };
    if !changed {
        return Ok(());
    }
    tokio::task::block_in_place(|| store.save(&offset))?;
    shared.lock().saved = Some(offset);
    Ok(())
}

/// The offset store must belong to the server's cluster (its positions would skip unrelated
/// events otherwise); a store without one is bound to this cluster.
async fn check_system_identifier(conn: &mut ReplConn, shared: &Shared, config: &ReaderConfig) -> Result<(), PgError> {
    let Some(store) = &config.offsets else { return Ok(()) };
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    let server = rows.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();
    let mut st = shared.lock();
    let saved = st.saved.get_or_insert_with(Offset::default);
    match &saved.system_identifier {
        Some(id) if *id != server => Err(PgError::server(
            "55000",
            format!(
                "offset store {} belongs to the cluster with system identifier {id}, not to this server ({server})",
                store.path().display()
            ),
            Some(
                "Use the store of this server's slot, or remove the file to start from the slot's own position.".into(),
            ),
        )),
        Some(_) => Ok(()),
        None => {
            // Bound at the next write (with the first acknowledgement).
            saved.system_identifier = Some(server);
            Ok(())
        }
    }
}

/// Something is acknowledged that the server has not heard yet.
fn unreported(shared: &Shared) -> bool {
    let st = shared.lock();
    st.acks.flush() > st.reported
}

fn past_stop_deadline(shared: &Shared) -> bool {
    shared.stop.deadline().is_some_and(|d| Instant::now() >= d)
}

/// Checks the slot and publications on the replication connection, creating the slot when
/// asked, so that a missing one is a clear error instead of a late stream failure.
async fn check_slot(conn: &mut ReplConn, config: &ReaderConfig) -> Result<(), PgError> {
    let rows = conn
        .simple_query(&format!(
            "SELECT plugin, database FROM pg_catalog.pg_replication_slots WHERE slot_name OPERATOR(pg_catalog.=) {}",
            quote_literal(&config.slot)
        ))
        .await?;
    match rows.first() {
        None if config.create_slot => {
            // PostgreSQL 15 has the option-list syntax; before it, NOEXPORT_SNAPSHOT.
            let snapshot = if conn.server_version == 0 || conn.server_version >= 150000 {
                "(SNAPSHOT 'nothing')"
            } else {
                "NOEXPORT_SNAPSHOT"
            };
            conn.simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {snapshot}",
                quote_ident(&config.slot)
            ))
            .await?;
        }
        None => {
            return Err(PgError::server(
                "42704",
                format!("replication slot \"{}\" does not exist", config.slot),
                Some(format!(
                "Create it with SELECT pg_create_logical_replication_slot({}, 'pgoutput'), or pass create_slot=True.",
                quote_literal(&config.slot)
            )),
            ))
        }
        Some(row) => {
            let plugin = row.first().cloned().flatten().unwrap_or_default();
            let database = row.get(1).cloned().flatten().unwrap_or_default();
            if plugin != "pgoutput" {
                return Err(PgError::server(
                    "55000",
                    format!("replication slot \"{}\" uses output plugin \"{plugin}\", not pgoutput", config.slot),
                    Some("Use a slot created with the pgoutput plugin.".into()),
                ));
            }
            if database != config.conn.database {
                return Err(PgError::server(
                    "55000",
                    format!(
                        "replication slot \"{}\" belongs to database \"{database}\", not \"{}\"",
                        config.slot, config.conn.database
                    ),
                    None,
                ));
            }
        }
    }
    for publication in &config.publications {
        let rows = conn
            .simple_query(&format!(
                "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname OPERATOR(pg_catalog.=) {}",
                quote_literal(publication)
            ))
            .await?;
        if rows.is_empty() {
            return Err(PgError::server(
                "42704",
                format!("publication \"{publication}\" does not exist"),
                Some(format!(
                    "Create it with CREATE PUBLICATION {} FOR TABLE ... (or FOR ALL TABLES).",
                    quote_ident(publication)
                )),
            ));
        }
    }
    Ok(())
}

/// Per-session decoding state.
struct Stream<'a> {
    shared: &'a Shared,
    config: &'a ReaderConfig,
    decoder: Decoder,
    encoder: Encoder,
    catalog: CatalogConn,
    relations: HashMap<Oid, (u64, Arc<TableSchema>)>,
    events: Vec<Event>,
    /// Decoded events not yet in the shared queue (boxed: they move on to the queue and to
    /// Python without copying).
    #[allow(clippy::vec_box)]
    pending: Vec<Box<RowMsg>>,
    /// Streamed transactions until their commit (see `crate::spool`).
    spool: Spool,
    /// Highest ordinal of the open transaction's events (counting those skipped as delivered
    /// before a reconnect): what the confirmer waits for at its commit.
    tx_last_ordinal: u32,
    /// Skip events at or before this position: delivered before a reconnect.
    resume_after: Option<Pos>,
    /// A keepalive asked for a reply we could not fully satisfy (for shutdown detection).
    unsatisfied_ping: Option<Instant>,
}

thread_local! {
    static NOW_NANOS: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

fn encoder_clock() -> i64 {
    NOW_NANOS.with(|c| c.get())
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

async fn session(shared: &Arc<Shared>, config: &ReaderConfig, streamed_once: &mut bool) -> Result<SessionEnd, PgError> {
    // Setting up is abandoned at once by stop() when there is nothing to confirm, and at the
    // stop deadline otherwise.
    let setup = async {
        let mut conn = ReplConn::connect(&config.conn).await?;
        check_slot(&mut conn, config).await?;
        check_system_identifier(&mut conn, shared, config).await?;
        let (start, resume_after) = {
            let st = shared.lock();
            (st.acks.flush(), st.acks.last_delivered)
        };
        let pgoutput = Pgoutput {
            publications: config.publications.clone(),
            messages: config.include_messages,
            streaming: config.streaming,
        };
        let session = Session::start(conn, &config.slot, start, &pgoutput, STATUS_MAX_INTERVAL).await?;
        Ok::<_, PgError>((session, resume_after))
    };
    let (mut conn, resume_after) = tokio::select! {
        r = setup => r?,
        _ = shared.stop.abandon(|| unreported(shared)) => return Ok(SessionEnd::Stopped),
    };
    *streamed_once = true;
    {
        let mut st = shared.lock();
        st.backend_pid = conn.backend_pid();
        st.sessions += 1;
        st.last_failure = None;
    }
    let mut encoder = Encoder::new(config.encoder.clone(), &config.conn.database);
    encoder.set_clock(encoder_clock);
    encoder.set_run_id(&shared.run_id);
    let mut s = Stream {
        shared,
        config,
        decoder: Decoder::new(pgcdc_wire::session::proto_version(conn.server_version())),
        encoder,
        catalog: CatalogConn::new(config.conn.clone()),
        relations: HashMap::new(),
        events: Vec::new(),
        pending: Vec::new(),
        spool: Spool::new(config.stream_memory),
        tx_last_ordinal: 0,
        resume_after,
        unsatisfied_ping: None,
    };
    let result = s.run(&mut conn).await;
    match result {
        Ok(SessionEnd::Stopped) => {
            // The final confirmation and a polite goodbye, within the stop's deadline.
            let deadline = shared.stop.deadline().unwrap_or_else(|| Instant::now() + STOP_GRACE);
            match tokio::time::timeout_at(deadline.into(), s.send_status(&mut conn, false)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => shared.lock().last_failure = Some(e),
                Err(_) => {
                    shared.lock().last_failure = Some(PgError::Io("timed out sending the final confirmation".into()))
                }
            }
            let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(2));
            let _ = tokio::time::timeout(wait + Duration::from_millis(100), conn.close(wait)).await;
            Ok(SessionEnd::Stopped)
        }
        Ok(SessionEnd::Reconnect(why)) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(Duration::from_millis(500))).await;
            Ok(SessionEnd::Reconnect(why))
        }
        Err(e) => Err(e),
    }
}

/// At least this often the server hears the flush position, moving or not.
const STATUS_MAX_INTERVAL: Duration = pgcdc_wire::session::STATUS_MAX_INTERVAL;

impl Stream<'_> {
    fn flush(&self) -> Lsn {
        self.shared.lock().acks.flush()
    }

    async fn run(&mut self, conn: &mut Session) -> Result<SessionEnd, PgError> {
        loop {
            // Everything already buffered, without waiting.
            while let Some(wal) = conn.next_wal()? {
                if let Some(end) = self.wal(conn, wal).await? {
                    return Ok(end);
                }
                if self.pending.len() >= 1024 {
                    if let Some(end) = self.push_pending(conn).await? {
                        return Ok(end);
                    }
                }
            }
            if let Some(end) = self.push_pending(conn).await? {
                return Ok(end);
            }
            if self.shared.lock().stopping {
                return Ok(SessionEnd::Stopped);
            }
            self.maybe_send_status(conn).await?;
            let due = conn.status_due(self.flush());
            let silence = conn.silence_due();
            let wake = self.shared.wake.notified();
            tokio::select! {
                biased;
                r = conn.fill() => r?,
                _ = wake => {}
                _ = self.shared.stop.requested() => {}
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = tokio::time::sleep_until(silence.into()) => conn.silence(self.flush()).await?,
            }
        }
    }

    async fn maybe_send_status(&mut self, conn: &mut Session) -> Result<(), PgError> {
        if Instant::now() >= conn.status_due(self.flush()) {
            self.send_status(conn, false).await?;
        }
        Ok(())
    }

    async fn send_status(&mut self, conn: &mut Session, reply: bool) -> Result<(), PgError> {
        // The offset store first: the server may forget what it is told (see `crate::offsets`).
        persist(self.shared, self.config)?;
        let flush = self.flush();
        conn.send_status(flush, reply).await?;
        let mut st = self.shared.lock();
        st.reported = st.reported.max(flush);
        Ok(())
    }

    /// Moves decoded events to the shared queue, waiting for room (while still reporting
    /// status) when the consumer is behind.
    async fn push_pending(&mut self, conn: &mut Session) -> Result<Option<SessionEnd>, PgError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        loop {
            let space = self.shared.space.notified();
            {
                let mut st = self.shared.lock();
                if st.stopping {
                    return Ok(Some(SessionEnd::Stopped));
                }
                if st.queue.len() < self.config.max_buffered {
                    st.queue.extend(self.pending.drain(..));
                    let armed = std::mem::replace(&mut st.armed, false);
                    drop(st);
                    if armed {
                        self.shared.signal.notify();
                    }
                    return Ok(None);
                }
            }
            let due = conn.status_due(self.flush());
            tokio::select! {
                _ = space => {}
                _ = self.shared.stop.requested() => {}
                _ = tokio::time::sleep_until(due.into()) => self.maybe_send_status(conn).await?,
            }
            // We were not reading meanwhile: the silence is ours, not the server's.
            conn.listening_again();
        }
    }

    async fn wal(&mut self, conn: &mut Session, wal: Wal) -> Result<Option<SessionEnd>, PgError> {
        match wal {
            Wal::Keepalive { wal_end, reply_requested } => {
                // Everything before this keepalive is queued; confirm the WAL end when nothing
                // is open or unacknowledged.
                if let Some(end) = self.push_pending(conn).await? {
                    return Ok(Some(end));
                }
                let satisfied = {
                    let mut st = self.shared.lock();
                    if !self.encoder.in_transaction() {
                        st.acks.confirmer.keepalive(wal_end);
                    }
                    st.acks.flush() >= wal_end
                };
                if reply_requested {
                    self.send_status(conn, false).await?;
                    if !satisfied {
                        // A second ping right after our answer: the server is shutting down and
                        // waits for a confirmation we must not give. Leave instead of hanging it.
                        if self.unsatisfied_ping.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
                            return Ok(Some(SessionEnd::Reconnect("the server is shutting down".into())));
                        }
                        self.unsatisfied_ping = Some(Instant::now());
                    }
                } else {
                    self.maybe_send_status(conn).await?;
                }
                Ok(None)
            }
            Wal::Data { wal_start, data } => self.pgoutput(conn, wal_start, data).await,
            Wal::Ended => Ok(Some(SessionEnd::Reconnect("the server ended the stream".into()))),
        }
    }

    async fn pgoutput(
        &mut self,
        conn: &mut Session,
        wal_start: Lsn,
        data: Bytes,
    ) -> Result<Option<SessionEnd>, PgError> {
        let in_stream = self.decoder.in_stream();
        let msg =
            self.decoder.decode(&data).map_err(|e| PgError::Data(format!("pgoutput message at {wal_start}: {e}")))?;
        match (&msg, in_stream) {
            (Message::StreamStart(_) | Message::StreamStop, _) => Ok(None),
            // Sent when it happens, inside a block or not: nothing commits it.
            (Message::Message(m), _) if !m.transactional => self.change(wal_start, &data, &msg).await.map(|()| None),
            (_, Some(top)) => {
                let spilled = self.spool.spilled_bytes;
                self.spool.push(top, msg.xid(), wal_start, &data).map_err(spool_error)?;
                if self.spool.spilled_bytes != spilled {
                    self.shared.lock().stream_spilled_bytes += self.spool.spilled_bytes - spilled;
                }
                Ok(None)
            }
            (Message::StreamAbort(a), None) => {
                self.spool.abort(a.xid, a.subxid);
                Ok(None)
            }
            (Message::StreamCommit(c), None) => {
                let c = *c;
                self.replay(conn, &c).await
            }
            _ => self.change(wal_start, &data, &msg).await.map(|()| None),
        }
    }

    /// A streamed transaction's commit: its held frames, decoded as one ordinary transaction.
    async fn replay(&mut self, conn: &mut Session, c: &StreamCommit) -> Result<Option<SessionEnd>, PgError> {
        let mut frames = self.spool.take(c.xid).map_err(spool_error)?;
        let begin = Message::Begin(Begin { final_lsn: c.commit_lsn, commit_time: c.commit_time, xid: c.xid });
        self.change(c.commit_lsn, &Bytes::new(), &begin).await?;
        let proto = self.decoder.protocol_version();
        let mut replayed = 0u64;
        while let Some(frame) = frames.next_frame().map_err(spool_error)? {
            let msg = decode_message(&frame.data, proto, true)
                .map_err(|e| PgError::Data(format!("streamed pgoutput message at {}: {e}", frame.wal_start)))?;
            if frame.rolled_back && !matches!(msg, Message::Relation(_) | Message::Type(_)) {
                continue;
            }
            self.change(frame.wal_start, &frame.data, &msg).await?;
            replayed += 1;
            if replayed.is_multiple_of(1024) {
                // A big transaction: hand over what is decoded (bounded memory) and keep the
                // server hearing from us.
                if let Some(end) = self.push_pending(conn).await? {
                    return Ok(Some(end));
                }
                self.maybe_send_status(conn).await?;
            }
        }
        let commit = Message::Commit(Commit {
            flags: 0,
            commit_lsn: c.commit_lsn,
            end_lsn: c.end_lsn,
            commit_time: c.commit_time,
        });
        self.change(c.end_lsn, &Bytes::new(), &commit).await?;
        Ok(None)
    }

    /// One message of a transaction (or a standalone one): encoded, queued as events.
    async fn change(&mut self, wal_start: Lsn, data: &Bytes, msg: &Message<'_>) -> Result<(), PgError> {
        let mut catalog = crate::catalog::Prefetched::default();
        if let Message::Relation(rel) = msg {
            catalog = self.catalog.prefetch(rel).await?;
        }
        NOW_NANOS.with(|c| c.set(now_nanos()));
        self.events.clear();
        let mut events = std::mem::take(&mut self.events);
        self.encoder
            .handle(wal_start, msg, &mut catalog, &mut events)
            .map_err(|e| PgError::Data(format!("change at {wal_start}: {e}")))?;
        if let Message::Begin(_) = msg {
            self.tx_last_ordinal = 0;
            self.shared.lock().acks.confirmer.begin();
        }
        let mut truncated = 0usize;
        for ev in events.drain(..) {
            let (before, after, fallback, message) = match (msg, ev.op) {
                (_, Op::Tombstone | Op::TxBegin | Op::TxEnd) => continue,
                (_, Op::Truncate) if !self.config.include_truncate => continue,
                (_, Op::Message) if !self.config.include_messages => continue,
                (Message::Insert(i), _) => (None, Some(cols(data, &i.new)), None, None),
                (Message::Update(u), op) => {
                    let old = u.old.as_ref().map(|o| cols(data, o.tuple()));
                    let full = match &u.old {
                        Some(OldTuple::Full(t)) => Some(cols(data, t)),
                        _ => None,
                    };
                    match op {
                        Op::Delete => (old, None, None, None),
                        Op::Create => (None, Some(cols(data, &u.new)), full, None),
                        _ => (old, Some(cols(data, &u.new)), full, None),
                    }
                }
                (Message::Delete(d), _) => (Some(cols(data, d.old.tuple())), None, None, None),
                (Message::Message(m), _) => (
                    None,
                    None,
                    None,
                    Some(LogicalMessage {
                        prefix: m.prefix.to_owned(),
                        content: data.slice_ref(m.content),
                        transactional: m.transactional,
                    }),
                ),
                _ => (None, None, None, None),
            };
            let non_tx_message = matches!(msg, Message::Message(m) if !m.transactional);
            // A non-transactional message has no transaction: ordinal 0 keeps its position
            // apart from a transaction committed at the same LSN (as the extension does).
            let ordinal = if non_tx_message { 0 } else { ev.ordinal };
            let pos = (ev.commit_lsn, ordinal);
            if !non_tx_message {
                self.tx_last_ordinal = self.tx_last_ordinal.max(ordinal);
            }
            if self.resume_after.is_some_and(|r| pos <= r) {
                continue;
            }
            let table = match (msg, ev.op) {
                (_, Op::Message) => None,
                (Message::Truncate(t), _) => {
                    let id = t.relation_ids.get(truncated).copied();
                    truncated += 1;
                    id.and_then(|id| self.table(id))
                }
                (Message::Insert(i), _) => self.table(i.relation_id),
                (Message::Update(u), _) => self.table(u.relation_id),
                (Message::Delete(d), _) => self.table(d.relation_id),
                _ => None,
            };
            self.pending.push(Box::new(RowMsg {
                op: ev.op,
                table,
                before,
                after,
                fallback,
                json: ev.value.unwrap_or_default(),
                commit_lsn: ev.commit_lsn,
                ordinal,
                lsn: ev.lsn,
                xid: ev.xid,
                ts_ns: NOW_NANOS.with(|c| c.get()),
                message,
            }));
            if non_tx_message {
                // Nothing commits it: confirmable at its own LSN once acknowledged.
                let mut st = self.shared.lock();
                let acked = st.acks.acked_position();
                st.acks.confirmer.standalone(ev.lsn, Some(Position::new(ev.lsn, STANDALONE_ORDINAL)), acked);
            }
        }
        self.events = events;
        if let Message::Commit(c) = msg {
            let mut st = self.shared.lock();
            let acked = st.acks.acked_position();
            st.acks.confirmer.commit(c.commit_lsn, c.end_lsn, self.tx_last_ordinal, acked);
        }
        Ok(())
    }

    fn table(&mut self, id: Oid) -> Option<Arc<TableSchema>> {
        let schema = self.encoder.relation(id)?;
        match self.relations.get(&id) {
            Some((v, arc)) if *v == schema.version => Some(arc.clone()),
            _ => {
                let arc = Arc::new(schema.clone());
                self.relations.insert(id, (schema.version, arc.clone()));
                Some(arc)
            }
        }
    }
}

fn spool_error(e: std::io::Error) -> PgError {
    PgError::Operational(format!(
        "could not hold a streamed transaction in a temporary file (TMPDIR): {e}; \
         free space there, or pass streaming=False to let the server spill it instead"
    ))
}

fn cols(frame: &Bytes, t: &TupleData<'_>) -> Vec<Col> {
    t.columns
        .iter()
        .map(|c| match c {
            ColumnData::Null => Col::Null,
            ColumnData::UnchangedToast => Col::Unchanged,
            ColumnData::Text(b) => Col::Text(frame.slice_ref(b)),
            ColumnData::Binary(b) => Col::Binary(frame.slice_ref(b)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_arriving_after_acknowledge_is_confirmed() {
        // Manual mode: the transaction's only event was taken and acknowledged before its
        // COMMIT was decoded.
        let mut acks = Acks { last_delivered: Some((Lsn(0x200), 4)), ..Acks::default() };
        acks.acknowledge_delivered();
        let acked = acks.acked_position();
        acks.confirmer.commit(Lsn(0x200), Lsn(0x210), 4, acked);
        assert_eq!(acks.flush(), Lsn(0x210));
        // Not acknowledged yet: confirmed by the acknowledgement.
        acks.confirmer.commit(Lsn(0x300), Lsn(0x310), 4, acked);
        assert_eq!(acks.flush(), Lsn(0x210));
        acks.last_delivered = Some((Lsn(0x300), 4));
        acks.acknowledge_delivered();
        assert_eq!(acks.flush(), Lsn(0x310));
        // A new session starts the confirmer over at the flush position.
        acks.restart();
        assert_eq!(acks.flush(), Lsn(0x310));
    }
}
