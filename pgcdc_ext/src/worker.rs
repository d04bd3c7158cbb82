//! The feed worker: one dynamic background worker per running feed
//! (`pgcdc feed <name>` in `pg_stat_activity.backend_type`/`application_name`).
//!
//! ```text
//!  start:  search_path pinned; in recovery (hot standby): exit 0
//!          feed row (exit 0 unless running) -> advisory lock (one worker per feed)
//!          -> slot/publication checks (missing or invalidated: error state, exit 0)
//!          -> dedupe floor = max(acked, last staged)
//!          -> queue counters from a count taken under the feed row lock ack takes
//!          -> stream thread
//!  loop:   wait (latch | pipe | 1 s) -> one transaction:
//!            re-read the feed row (paused/dropped: exit 0; options changed: exit 1 = restart)
//!            queue at its cap? stop draining (WAL is retained) until acks make room
//!            drain <= batch_size items and <= BATCH_BYTES of JSON: decode, encode,
//!              skip positions <= floor
//!            lock the feed row FOR KEY SHARE (dropped meanwhile: stage nothing, exit 0)
//!            INSERT the batch, NOTIFY, update pgcdc.feed_runtime (+ queue counters)
//!          commit -> acks moved? XLogFlush up to the end of the WAL inserted when the new
//!                    ack was seen (the ack is durable before the slot moves)
//!                 -> confirm to the walsender what is fully acknowledged (position.rs)
//! ```
//!
//! The worker's records never include pgcdc's own tables (`Encoder::exclude_schema`): a
//! `FOR ALL TABLES` publication would otherwise feed every acknowledgement (an UPDATE of
//! `pgcdc.feed`) back into the stream.
//!
//! Poison events: an event whose JSON (key + value + headers) exceeds
//! `pgcdc.max_event_size` (at most 1 GB, PostgreSQL's limit for one value), or whose headers
//! are not valid JSON, cannot be staged: the feed goes to the `error` state with a
//! `last_error` naming the event and how to go on, instead of a restart loop.
//!
//! Exit codes: 0 = done for good (feed paused, dropped or in error, or another worker owns
//! the feed); 1 = restart me (the postmaster restarts dynamic workers after 1 s): a lost
//! replication connection, SIGTERM from `pg_terminate_backend`, changed options. Repeated
//! failures back off up to 30 s (`feed_runtime.failures`). Permanent failures (slot dropped
//! or invalidated, publication dropped, undecodable change) put the feed in the `error` state
//! with the reason in `last_error`, instead of a crash loop.

use std::time::{Duration, Instant};

use pgcdc_core::debezium::{Encoder, Event};
use pgcdc_core::pgoutput::{Decoder, Message};
use pgcdc_core::snapshot::WATERMARK_PREFIX;
use pgcdc_core::Lsn;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::access;
use crate::catalog::SpiCatalog;
use crate::datum::PgLsn;
use crate::error::spi_ok;
use crate::feed::{self, Feed, FeedOptions, FeedState, Sink};
use crate::gucs;
use crate::position::{dedupe_floor, Confirmer, Position, STANDALONE_ORDINAL};
use crate::queue::{self, Row, Stager};
use crate::snapshot::{Mode, Snapshotter};
use crate::stream::{Connection, Item, Stream};
use crate::streamed::{self, InProgress};
use pgcdc_wire::{ConnParams, Pgoutput, WireError};

/// Runs `f` in a transaction of its own (state captured by `f` stays consistent on error
/// because the worker exits).
pub fn in_transaction<R>(f: impl FnOnce() -> R) -> R {
    BackgroundWorker::transaction(std::panic::AssertUnwindSafe(f))
}

/// The extension's schema (pgcdc.control): its tables are never staged.
const EXTENSION_SCHEMA: &str = "pgcdc";

/// A batch stops growing once its events' JSON reaches this many bytes (memory bound of one
/// staging transaction; one event is always taken).
pub const BATCH_BYTES: i64 = 64 << 20;

/// While at the queue cap, the tracked queue counters are checked against the queue itself
/// this often (they can drift only if someone disables the queue's triggers and deletes rows).
const CAP_RECOUNT: Duration = Duration::from_secs(60);

/// `bgw_type` of feed workers.
pub const WORKER_TYPE: &str = "pgcdc feed";

/// What to do after a step.
enum Next {
    Continue,
    /// Exit with this code (0: stay stopped, 1: restart).
    Exit(i32),
}

/// Dynamic worker entry point; `arg` is the feed id.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgcdc_feed_worker_main(arg: pg_sys::Datum) {
    let feed_id = arg.value() as i32;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    // Database/role settings (ALTER DATABASE ... SET search_path) applied at connection
    // must not change what this superuser process's SQL means.
    access::pin_settings_for_process();
    // SAFETY: a read of shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        // A hot standby (or a server still recovering): feeds run on the primary only.
        // Exit 0: no restart loop; the launcher starts feeds again after promotion.
        log!("pgcdc feed {feed_id}: the server is in recovery; not starting");
        // SAFETY: ends this worker process without restart.
        unsafe { pg_sys::proc_exit(0) }
    }

    let code = PgTryBuilder::new(|| run(feed_id))
        .catch_others(|err| {
            let message = match &err {
                pg_sys::panic::CaughtError::PostgresError(e)
                | pg_sys::panic::CaughtError::ErrorReport(e)
                | pg_sys::panic::CaughtError::RustPanic { ereport: e, .. } => e.message().to_owned(),
            };
            // SAFETY: leaves the failed transaction (if any) so a new one can record the error.
            unsafe {
                if pg_sys::IsTransactionState() || pg_sys::IsAbortedTransactionBlockState() {
                    pg_sys::AbortCurrentTransaction();
                }
            }
            log!("pgcdc feed {feed_id}: {message}; restarting");
            record_failure(feed_id, &message);
            1
        })
        .execute();
    // SAFETY: ends this worker process; 0 = do not restart, 1 = restart after bgw_restart_time.
    unsafe { pg_sys::proc_exit(code) }
}

/// Keeps freed memory mapped in this process: every staging transaction allocates and frees
/// megabytes (PostgreSQL's transaction context blocks, the batch's Rust strings). With glibc's
/// defaults those come from fresh mmap()s and are returned at once, so each batch pays page
/// faults and page zeroing again (seen as ~10% of the worker's time in perf).
fn tune_malloc() {
    // SAFETY: mallopt only changes this process's allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

fn run(feed_id: i32) -> i32 {
    tune_malloc();
    let mut worker = match in_transaction(|| Worker::start(feed_id)) {
        Ok(w) => w,
        Err(code) => return code,
    };
    worker.backoff();
    if let Err(e) = worker.connect() {
        worker.stream_failed(e);
        return 1;
    }
    worker.main_loop()
}

struct Worker {
    feed: Feed,
    options: FeedOptions,
    conn: Connection,
    stream: Option<Stream>,
    decoder: Decoder,
    encoder: Encoder,
    /// The encoder's catalog lookups (see `catalog.rs`: never older than the DDL).
    catalog: SpiCatalog,
    confirmer: Confirmer,
    stager: Stager,
    /// The feed's snapshots (chunks read between watermarks, see snapshot.rs).
    snapshots: Snapshotter,
    /// Streamed transactions in progress (see streamed.rs).
    streams: InProgress,
    /// The feed was dropped while a step wrote to the queue: exit.
    dropped: bool,
    acked: Position,
    /// Events at or below this position are downstream already (dedupe after restarts).
    floor: Position,
    last_staged: Option<Position>,
    /// Highest ordinal of the open transaction's records (counting skipped duplicates:
    /// they are downstream already). Ordinals have gaps (pgcdc_core): this is a position,
    /// not a count.
    tx_last_ordinal: u32,
    complete_lsn: Lsn,
    received_lsn: Lsn,
    /// The feed's events and their bytes in the queue: pgcdc.feed_runtime.queued_* as last
    /// read, plus what this worker put in the queue since (acks since then not subtracted:
    /// an over-estimate, refreshed when it reaches the cap).
    staged_rows: i64,
    staged_bytes: i64,
    /// Staged but not yet added to pgcdc.feed_runtime.queued_* (written with the batch).
    unwritten_rows: i64,
    unwritten_bytes: i64,
    /// When the counters were last checked against the queue.
    counted_at: Instant,
    /// The WAL insert position when a new acknowledged position was read: flushed before
    /// the walsender hears of it.
    ack_seen_at: Option<pg_sys::XLogRecPtr>,
    /// Events this worker process has staged.
    staged_total: i64,
    /// The last event's headers, rendered and checked (see queue::Headers).
    headers: queue::Headers,
    at_cap: bool,
    failures: i32,
    healthy_since: Option<Instant>,
    /// Notify sink: the last event sent as a NOTIFY (treated as acknowledged).
    notified: Position,
    /// What `write_runtime` last wrote, and when.
    runtime_written: Option<(RuntimeKey, (Lsn, Lsn), Instant)>,
    /// When the publication was last found to exist (PostgreSQL 18+, see `step`).
    publication_seen_at: Instant,
}

/// The parts of `pgcdc.feed_runtime` that are always written when they change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RuntimeKey {
    phase: &'static str,
    staged: Position,
    complete_lsn: Lsn,
    failures: i32,
    staged_total: i64,
}

impl Worker {
    /// Checks everything in one transaction; Err(exit code) when the worker must not run.
    fn start(feed_id: i32) -> Result<Worker, i32> {
        let installed = spi_ok(Spi::connect(|c| {
            Ok(c.select("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgcdc'", None, &[])?.len() == 1)
        }));
        if !installed {
            return Err(0);
        }
        let Some(feed) = feed::load_by_id(feed_id) else { return Err(0) };
        if feed.state != FeedState::Running {
            return Err(0);
        }
        set_application_name(&format!("{WORKER_TYPE} {}", feed.name));
        // One worker per feed: a session-level lock held until this process exits.
        let locked: bool = spi_ok(Spi::connect(|c| {
            let args = [feed::LOCK_CLASS_WORKER.into(), feed_id.into()];
            c.select("SELECT pg_catalog.pg_try_advisory_lock($1, $2)", None, &args)?.first().get_one::<bool>()
        }))
        .unwrap_or(false);
        if !locked {
            log!("pgcdc feed \"{}\": another worker runs it; exiting", feed.name);
            return Err(0);
        }
        let options = match feed.options() {
            Ok(o) => o,
            Err(e) => {
                set_error(feed_id, &format!("invalid options: {e}"));
                return Err(0);
            }
        };

        // The slot must exist and be usable; a WAL sender left from our previous life is
        // ended (one worker per feed holds the lock above).
        let slot: Option<(Option<i32>, Option<String>, Option<String>)> = spi_ok(Spi::connect(|c| {
            let args = [feed.slot_name.as_str().into()];
            c.select(
                "SELECT active_pid, wal_status, database::text FROM pg_catalog.pg_replication_slots \
                     WHERE slot_name = $1",
                None,
                &args,
            )?
            .next()
            .map(|r| Ok((r.get::<i32>(1)?, r.get::<String>(2)?, r.get::<String>(3)?)))
            .transpose()
        }));
        let Some((active_pid, wal_status, _db)) = slot else {
            set_error(
                feed_id,
                &format!(
                    "replication slot \"{}\" does not exist (dropped outside pgcdc?); \
                     drop and re-create the feed",
                    feed.slot_name
                ),
            );
            return Err(0);
        };
        if wal_status.as_deref() == Some("lost") {
            set_error(
                feed_id,
                &format!(
                    "replication slot \"{}\" was invalidated (max_slot_wal_keep_size exceeded); \
                     changes were lost: drop and re-create the feed",
                    feed.slot_name
                ),
            );
            return Err(0);
        }
        if !publication_exists(&feed.publication) {
            set_error(
                feed_id,
                &format!(
                    "publication \"{}\" does not exist; re-create it and call pgcdc.resume_feed('{}')",
                    feed.publication, feed.name
                ),
            );
            return Err(0);
        }
        if let Some(pid) = active_pid {
            terminate_and_wait(pid, &feed.slot_name);
        }

        // Streamed transactions that had not committed are sent again from their start.
        spi_ok(streamed::discard_uncommitted(feed_id));
        let streams = spi_ok(InProgress::load(feed_id));
        let last_staged = spi_ok(queue::last_staged(feed_id));
        // One count at start (the queue may hold events of an earlier worker), while no ack
        // can commit; from then on the counters in pgcdc.feed_runtime are kept up to date
        // incrementally. Before write_runtime: that locks the runtime row, which ack updates.
        let Some((staged_rows, staged_bytes)) = spi_ok(queue::count_locked(feed_id, true)) else {
            return Err(0); // dropped meanwhile
        };
        let failures: i32 = spi_ok(Spi::connect(|c| {
            let args = [feed_id.into()];
            c.select("SELECT failures FROM pgcdc.feed_runtime WHERE feed_id = $1", None, &args)?
                .next()
                .map(|r| r.get::<i32>(1))
                .transpose()
                .map(|v| v.flatten().unwrap_or(0))
        }));
        let dbname = current_database();
        let conn = connection_for(&feed, &options, &dbname).map_err(|e| {
            set_error(feed_id, &e);
            0
        })?;
        let snapshots = Snapshotter::load(
            &feed,
            options.fetch_size,
            options.snapshot_mode == Mode::InitialOnly,
            feed.acked,
            last_staged,
        );
        let mut encoder = Encoder::new(options.encoder.clone(), &dbname);
        encoder.exclude_schema(EXTENSION_SCHEMA);
        if conn.pgoutput.streaming {
            encoder.stage_streams().expect("streaming is only asked for when the encoder can stage it");
        }
        // `__debezium.context.runId`: one UUIDv7 per worker start, as Debezium per engine run.
        encoder.set_run_id(&uuid::Uuid::now_v7().to_string());
        let worker = Worker {
            acked: feed.acked,
            floor: dedupe_floor(feed.acked, last_staged),
            last_staged,
            feed,
            options,
            conn,
            stream: None,
            decoder: Decoder::new(proto_version()),
            encoder,
            catalog: SpiCatalog::default(),
            confirmer: Confirmer::new(),
            stager: Stager::default(),
            snapshots,
            streams,
            dropped: false,
            tx_last_ordinal: 0,
            complete_lsn: Lsn::ZERO,
            received_lsn: Lsn::ZERO,
            staged_rows,
            staged_bytes,
            unwritten_rows: 0,
            unwritten_bytes: 0,
            counted_at: Instant::now(),
            ack_seen_at: None,
            staged_total: 0,
            headers: queue::Headers::default(),
            at_cap: false,
            failures,
            healthy_since: None,
            runtime_written: None,
            notified: Position::ZERO,
            publication_seen_at: Instant::now(),
        };
        let mut worker = worker;
        if !worker.write_runtime("starting") {
            return Err(0); // dropped meanwhile
        }
        // Absolute counters once: exact, no ack commits between the count and this update.
        spi_ok(Spi::connect_mut(|c| {
            let args = [feed_id.into(), staged_rows.into(), staged_bytes.into()];
            c.update(
                "UPDATE pgcdc.feed_runtime SET queued_events = $2, queued_bytes = $3 WHERE feed_id = $1",
                None,
                &args,
            )?;
            Ok(())
        }));
        Ok(worker)
    }

    /// After repeated failures, wait 2^n seconds (at most 30) before connecting again.
    fn backoff(&mut self) {
        if self.failures <= 0 {
            return;
        }
        let secs = 1u64 << (self.failures.min(5) as u64);
        let secs = secs.min(30);
        in_transaction(|| self.write_runtime("backoff"));
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if !BackgroundWorker::wait_latch(Some(Duration::from_millis(500))) {
                // SAFETY: SIGTERM during the back-off: exit and be restarted later.
                unsafe { pg_sys::proc_exit(1) };
            }
        }
    }

    fn connect(&mut self) -> Result<(), WireError> {
        let stream = Stream::start(self.conn.clone())
            .map_err(|e| WireError::Interface(format!("cannot start the replication thread: {e}")))?;
        self.stream = Some(stream);
        log!(
            "pgcdc feed \"{}\": streaming slot \"{}\" (publication \"{}\", acknowledged up to {}, \
             skipping re-sent events up to {})",
            self.feed.name,
            self.feed.slot_name,
            self.feed.publication,
            self.acked,
            self.floor
        );
        Ok(())
    }

    fn main_loop(&mut self) -> i32 {
        loop {
            // Wait unless there is work queued already.
            let busy = {
                let stream = self.stream.as_ref().expect("connected");
                !self.at_cap && (stream.pending() > 0 || self.snapshots.ready_to_read())
            };
            if !busy {
                let stream = self.stream.as_ref().expect("connected");
                if stream.prepare_to_sleep() || self.at_cap {
                    let timeout_ms = if self.at_cap { 250 } else { 1000 };
                    // SAFETY: waits on our latch and our own pipe on the main thread.
                    unsafe {
                        pg_sys::WaitLatchOrSocket(
                            pg_sys::MyLatch,
                            (pg_sys::WL_LATCH_SET
                                | pg_sys::WL_SOCKET_READABLE
                                | pg_sys::WL_TIMEOUT
                                | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                            stream.wake_fd(),
                            timeout_ms,
                            pg_sys::PG_WAIT_EXTENSION,
                        );
                        pg_sys::ResetLatch(pg_sys::MyLatch);
                    }
                }
                stream.woke_up();
            }
            pgrx::check_for_interrupts!();
            if BackgroundWorker::sigterm_received() {
                log!("pgcdc feed \"{}\": terminating on request", self.feed.name);
                self.stop_stream();
                return 1;
            }
            if BackgroundWorker::sighup_received() {
                // SAFETY: re-reads postgresql.conf on the main thread, as backends do.
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            }

            let next = in_transaction(|| self.step());
            if let Next::Exit(code) = next {
                self.stop_stream();
                return code;
            }
            // Only now is the batch durable (as durable as the queue is): tell the walsender
            // what is fully acknowledged. An acknowledgement committed asynchronously
            // (synchronous_commit = off) may not be on disk yet: flush the WAL up to where it
            // was read first, or a crash could lose the ack after the slot moved past it.
            if let Some(upto) = self.ack_seen_at.take() {
                // SAFETY: flushes WAL written so far (a no-op when already flushed).
                unsafe { pg_sys::XLogFlush(upto) };
            }
            let confirm = self.confirmer.confirmable();
            let stream = self.stream.as_mut().expect("connected");
            stream.confirm(confirm);

            if self.failures > 0 && self.healthy_since.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
                self.failures = 0;
            }
            if let Some(err) = self.stream.as_mut().expect("connected").ended() {
                self.stream_failed(err);
                self.stop_stream();
                return if self.feed_in_error() { 0 } else { 1 };
            }
        }
    }

    fn stop_stream(&mut self) {
        if let Some(mut s) = self.stream.take() {
            s.stop(Duration::from_secs(1));
        }
    }

    fn feed_in_error(&self) -> bool {
        in_transaction(|| feed::load_by_id(self.feed.id).is_none_or(|f| f.state == FeedState::Error))
    }

    /// Records a stream failure: permanent ones put the feed in the error state.
    fn stream_failed(&mut self, err: WireError) {
        let id = self.feed.id;
        let name = self.feed.name.clone();
        let mut message = format!("replication: {err}");
        if let WireError::Server(e) = &err {
            for extra in [&e.detail, &e.hint].into_iter().flatten() {
                message.push_str(&format!(" ({extra})"));
            }
        }
        if is_permanent(&err) {
            if err.sqlstate() == Some("42704") && in_transaction(|| slot_exists(&self.feed.slot_name)) {
                // The slot is there, so the missing object is the publication as of a change:
                // PostgreSQL decodes each change with the catalog of its time, and a change
                // written while the publication did not exist can never be decoded.
                message.push_str(&format!(
                    "; changes written while publication \"{}\" did not exist cannot be decoded: \
                     re-create it, then skip them with SELECT pg_replication_slot_advance('{}', <LSN \
                     after the re-creation>) and SELECT pgcdc.resume_feed('{}'), or drop and \
                     re-create the feed",
                    self.feed.publication, self.feed.slot_name, self.feed.name
                ));
            }
            log!("pgcdc feed \"{name}\": {message}; the feed is stopped (state error)");
            in_transaction(|| set_error(id, &message));
        } else {
            log!("pgcdc feed \"{name}\": {message}; restarting");
            let failures = self.failures + 1;
            in_transaction(|| {
                record_failure_in_tx(id, &message, failures);
            });
        }
    }

    /// One transaction of work.
    fn step(&mut self) -> Next {
        let Some(current) = feed::load_by_id(self.feed.id) else {
            log!("pgcdc feed \"{}\": dropped; exiting", self.feed.name);
            return Next::Exit(0);
        };
        if current.state != FeedState::Running {
            log!("pgcdc feed \"{}\": {:?}; exiting", self.feed.name, current.state);
            return Next::Exit(0);
        }
        if current.options_text != self.feed.options_text {
            log!("pgcdc feed \"{}\": options changed; restarting to apply them", self.feed.name);
            return Next::Exit(1);
        }
        // Up to 17 the walsender fails at the first change decoded without the publication;
        // 18 only warns and publishes nothing, so the feed would go silent. Look ourselves.
        if pg_sys::PG_VERSION_NUM >= 180000 && self.publication_seen_at.elapsed() >= PUBLICATION_CHECK {
            if !publication_exists(&self.feed.publication) {
                let message = format!(
                    "publication \"{}\" does not exist (dropped while the feed ran); PostgreSQL skips the \
                     changes made until it exists again: re-create it and call SELECT pgcdc.resume_feed('{}'), \
                     or drop and re-create the feed",
                    self.feed.publication, self.feed.name
                );
                log!("pgcdc feed \"{}\": {message}; the feed is stopped (state error)", self.feed.name);
                set_error(self.feed.id, &message);
                return Next::Exit(0);
            }
            self.publication_seen_at = Instant::now();
        }
        if current.acked != self.acked {
            self.acked = current.acked;
            self.floor = self.floor.max(self.acked);
            self.confirmer.acknowledged(self.effective_acked());
            // The ack's commit record ends at or before the end of the WAL inserted so far.
            self.ack_seen_at = Some(inserted_wal_end());
            if self.snapshots.has_outstanding() {
                self.snapshots.acknowledged(self.acked);
            }
        }

        // The queue cap: stop reading the stream (the walsender waits; WAL is retained).
        if self.over_cap() {
            // Rarely: the counters against the queue itself, unless an ack is in progress
            // (then next time; the counters are exact anyway unless someone bypassed the
            // queue's triggers).
            let recounted = if self.counted_at.elapsed() >= CAP_RECOUNT {
                self.counted_at = Instant::now();
                spi_ok(queue::count_locked(self.feed.id, false))
            } else {
                None
            };
            let (rows, bytes) = match recounted {
                Some(counted) => {
                    if counted != queue::queued_counters(self.feed.id) && feed::lock_for_worker(self.feed.id) {
                        spi_ok(Spi::connect_mut(|c| {
                            let args = [self.feed.id.into(), counted.0.into(), counted.1.into()];
                            c.update(
                                "UPDATE pgcdc.feed_runtime SET queued_events = $2, queued_bytes = $3 \
                                 WHERE feed_id = $1",
                                None,
                                &args,
                            )?;
                            Ok(())
                        }));
                    }
                    counted
                }
                None => queue::queued_counters(self.feed.id),
            };
            self.staged_rows = rows + self.unwritten_rows;
            self.staged_bytes = bytes + self.unwritten_bytes;
            if self.over_cap() {
                if !self.at_cap {
                    log!(
                        "pgcdc feed \"{}\": queue full ({} events, {} bytes); pausing the stream until events are acknowledged",
                        self.feed.name, rows, bytes
                    );
                }
                self.at_cap = true;
                self.write_runtime("at_cap");
                return Next::Continue;
            }
        }
        self.at_cap = false;
        // The next snapshot chunk, if one is due: its rows come with its high watermark.
        self.snapshots.step(&mut self.encoder, &mut self.catalog);

        let batch = self.options.batch_size();
        let mut rows: Vec<Row> = Vec::new();
        let mut events: Vec<Event> = Vec::new();
        let mut taken = 0usize;
        let mut batch_bytes = 0i64;
        while taken < batch && rows.len() < batch && batch_bytes < BATCH_BYTES {
            let Some(item) = self.stream.as_ref().expect("connected").try_recv() else { break };
            taken += 1;
            let before = rows.len();
            if let Err(message) = self.handle(item, &mut events, &mut rows) {
                log!("pgcdc feed \"{}\": {message}; the feed is stopped (state error)", self.feed.name);
                // The batch so far is kept (it is consistent); the feed stops here.
                if !self.flush(rows) {
                    return Next::Exit(0);
                }
                set_error(self.feed.id, &message);
                return Next::Exit(0);
            }
            if self.dropped {
                log!("pgcdc feed \"{}\": dropped; exiting", self.feed.name);
                return Next::Exit(0);
            }
            batch_bytes += rows[before.min(rows.len())..].iter().map(Row::size).sum::<i64>();
            if self.over_cap_with(rows.len() as i64, batch_bytes) {
                break;
            }
        }
        if taken > 0 && self.healthy_since.is_none() {
            self.healthy_since = Some(Instant::now());
        }
        if !self.flush(rows) {
            log!("pgcdc feed \"{}\": dropped; exiting", self.feed.name);
            return Next::Exit(0);
        }
        Next::Continue
    }

    /// Stages `rows`, wakes listeners and records progress, in the current transaction.
    /// False when the feed was dropped meanwhile (nothing was written).
    fn flush(&mut self, rows: Vec<Row>) -> bool {
        let channel = self.feed.channel();
        // FOR KEY SHARE: a concurrent drop_feed waits for this transaction, then deletes
        // what it staged; after a drop_feed committed, nothing is staged.
        if !rows.is_empty() && !feed::lock_for_worker(self.feed.id) {
            return false;
        }
        if !rows.is_empty() {
            match self.feed.sink {
                Sink::Table => {
                    spi_ok(self.stager.stage(self.feed.id, &rows));
                    self.queued(&rows);
                    self.wake_readers(rows.last().expect("not empty").position);
                }
                Sink::Notify => {
                    let mut payloads = Vec::with_capacity(rows.len());
                    let mut big = Vec::new();
                    for r in rows {
                        match r.notify_payload() {
                            Some(p) => payloads.push(p),
                            None => {
                                payloads.push(r.reference_payload());
                                big.push(r);
                            }
                        }
                    }
                    let notified = self.last_staged.unwrap_or_default();
                    spi_ok(self.stager.stage(self.feed.id, &big));
                    self.queued(&big);
                    spi_ok(queue::notify(&channel, payloads));
                    // At-most-once: a notified event is done once this transaction commits
                    // (the confirmed LSN reaches the walsender only after the commit).
                    self.notified = self.notified.max(notified);
                    self.confirmer.acknowledged(self.effective_acked());
                }
            }
        }
        let phase = if self.at_cap { "at_cap" } else { "streaming" };
        self.write_runtime(phase)
    }

    /// Counts `rows` as added to the queue (written to pgcdc.feed_runtime with the batch).
    fn queued(&mut self, rows: &[Row]) {
        let bytes: i64 = rows.iter().map(Row::size).sum();
        self.staged_rows += rows.len() as i64;
        self.staged_bytes += bytes;
        self.unwritten_rows += rows.len() as i64;
        self.unwritten_bytes += bytes;
    }

    /// What the walsender may be confirmed up to: acknowledged events, and for the notify
    /// sink also every event already sent as a NOTIFY. (Big events staged in the queue by the
    /// notify sink are before or at that position: delivery is at-most-once there as well.)
    fn effective_acked(&self) -> Position {
        match self.feed.sink {
            Sink::Table => self.acked,
            Sink::Notify => self.acked.max(self.notified),
        }
    }

    fn over_cap(&self) -> bool {
        self.over_cap_with(0, 0)
    }

    /// Would the queue be at its cap with `rows` more events of `bytes`?
    /// (Events of streamed transactions that have not committed do not count: nobody can
    /// read, so nobody can acknowledge them yet.)
    fn over_cap_with(&self, rows: i64, bytes: i64) -> bool {
        let (max_rows, max_bytes) = (self.options.max_rows(), self.options.max_bytes());
        let (streaming_rows, streaming_bytes) = self.streams.uncommitted();
        (max_rows > 0 && self.staged_rows - streaming_rows + rows >= max_rows)
            || (max_bytes > 0 && self.staged_bytes - streaming_bytes + bytes >= max_bytes)
    }

    /// Handles one item from the stream; Err = a permanent problem (the feed stops).
    fn handle(&mut self, item: Item, events: &mut Vec<Event>, rows: &mut Vec<Row>) -> Result<(), String> {
        events.clear();
        let (wal_start, data) = match item {
            Item::KeepAlive { wal_end } => {
                self.received_lsn = self.received_lsn.max(wal_end);
                self.confirmer.keepalive(wal_end);
                return Ok(());
            }
            Item::Data { wal_start, data } => (wal_start, data),
        };
        self.received_lsn = self.received_lsn.max(wal_start);
        let msg = self.decoder.decode(&data).map_err(|e| format!("cannot decode the change at {wal_start}: {e}"))?;
        match &msg {
            Message::Begin(b) => {
                self.catalog.set_transaction(Some(b.xid));
                self.snapshots.begin(b.xid);
                self.confirmer.begin();
                self.tx_last_ordinal = 0;
                self.encode(b.final_lsn, &msg, events)?;
            }
            Message::Commit(c) => {
                self.catalog.set_transaction(None);
                self.received_lsn = self.received_lsn.max(c.end_lsn);
                self.encode(c.commit_lsn, &msg, events)?;
                self.take(events, rows)?;
                self.confirmer.commit(c.commit_lsn, c.end_lsn, self.tx_last_ordinal, self.effective_acked());
                self.complete_lsn = c.commit_lsn;
                return Ok(());
            }
            Message::StreamStart(st) => {
                if self.streams.start_block(st.xid, st.first_segment) {
                    // The walsender starts the transaction over: what it sent before goes.
                    self.stage_now(rows)?;
                    self.discard_stream(st.xid, 1..=u32::MAX);
                }
                // Catalog lookups do not wait for this transaction: it is still running (DDL
                // in it is not seen by them until it commits).
                self.catalog.set_transaction(None);
                self.encode(wal_start, &msg, events)?;
                return Ok(());
            }
            Message::StreamStop => {
                self.streams.stop_block();
                self.encode(wal_start, &msg, events)?;
                return Ok(());
            }
            Message::StreamAbort(a) => {
                self.stage_now(rows)?;
                if a.xid == a.subxid {
                    if self.streams.end(a.xid).is_some_and(|t| !t.skip) {
                        self.discard_stream(a.xid, 1..=u32::MAX);
                    }
                } else if let Some(rolled_back) = self.streams.roll_back(a.xid, a.subxid) {
                    let removed = self.discard_stream(a.xid, rolled_back.first_ordinal..=u32::MAX);
                    self.streams.removed(a.xid, removed);
                    self.encoder.rewind_stream(a.xid, rolled_back.first_change - 1);
                }
                self.encode(wal_start, &msg, events)?;
                return Ok(());
            }
            Message::StreamCommit(c) => {
                let commit = self.encoder.streamed_commit(c);
                self.encode(c.commit_lsn, &msg, events)?;
                self.received_lsn = self.received_lsn.max(c.end_lsn);
                let t = self.streams.end(c.xid).unwrap_or_default();
                self.stage_now(rows)?;
                self.commit_stream(c.xid, c.commit_lsn, commit, &t);
                self.confirmer.commit(c.commit_lsn, c.end_lsn, t.last_ordinal, self.effective_acked());
                self.complete_lsn = c.commit_lsn;
                self.snapshots.stream_committed(c.xid, &t.relations);
                return Ok(());
            }
            _ if self.streams.open.is_some() => {
                // A change (or schema message) of the open stream block's transaction.
                let changes = self.encoder.stream_changes().unwrap_or(0);
                let relations: &[pgcdc_core::Oid] = match &msg {
                    Message::Insert(i) => &[i.relation_id],
                    Message::Update(u) => &[u.relation_id],
                    Message::Delete(d) => &[d.relation_id],
                    Message::Truncate(t) => &t.relation_ids,
                    _ => &[],
                };
                if !relations.is_empty() || matches!(msg, Message::Message(_)) {
                    self.streams.change(msg.xid(), relations, changes);
                }
                self.encode(wal_start, &msg, events)?;
                return self.take_streamed(events, rows);
            }
            Message::Message(m) if !m.transactional && !self.confirmer.in_transaction() => {
                let lsn = m.lsn;
                self.received_lsn = self.received_lsn.max(lsn);
                if m.prefix == WATERMARK_PREFIX {
                    // A snapshot chunk's rows, at its high watermark: staged like a standalone
                    // message's records, at positions just below the watermark's LSN.
                    events.extend(self.snapshots.watermark(m.content, lsn, &mut self.encoder)?);
                    // A chunk is complete once staged (unlike a message's LSN, H - 1 is no
                    // transaction's commit LSN: see pgcdc_core::snapshot).
                    if let Some(last) = self.take_standalone(lsn, events, rows)? {
                        self.complete_lsn = self.complete_lsn.max(last.commit_lsn);
                    }
                    return Ok(());
                }
                self.encode(lsn, &msg, events)?;
                // The core gives records outside a transaction ordinal 0 (STANDALONE_ORDINAL).
                debug_assert!(events.iter().all(|ev| ev.ordinal == STANDALONE_ORDINAL));
                self.take_standalone(lsn, events, rows)?;
                return Ok(());
            }
            _ => {
                self.encode(wal_start, &msg, events)?;
                self.snapshots.observe(&msg, &self.encoder);
            }
        }
        self.take(events, rows)
    }

    /// Moves the records of the open stream block's transaction into `rows`, at its
    /// provisional position (see streamed.rs), unless they were staged before this worker.
    fn take_streamed(&mut self, events: &mut Vec<Event>, rows: &mut Vec<Row>) -> Result<(), String> {
        let max_event = gucs::max_event_size();
        let Some((xid, t)) = self.streams.current() else { return Ok(()) };
        for ev in events.drain(..) {
            t.last_ordinal = t.last_ordinal.max(ev.ordinal);
            if t.skip {
                continue;
            }
            let mut row = Row::from_event(ev, &mut self.headers);
            row.position = Position::new(streamed::provisional(xid), row.position.ordinal);
            if let Err(problem) = row.check(max_event, &mut self.headers) {
                return Err(poison_message(&self.feed, &row, &problem));
            }
            t.rows += 1;
            t.bytes += row.size();
            self.staged_total += 1;
            rows.push(row);
        }
        Ok(())
    }

    /// Stages `rows` now, in this step's transaction (before a stream's rows are deleted or
    /// committed).
    fn stage_now(&mut self, rows: &mut Vec<Row>) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        if !feed::lock_for_worker(self.feed.id) {
            self.dropped = true;
            rows.clear();
            return Ok(());
        }
        spi_ok(self.stager.stage(self.feed.id, rows));
        self.queued(rows);
        rows.clear();
        Ok(())
    }

    /// Deletes the staged events of streamed transaction `xid` in `ordinals` (under the feed
    /// row lock, as staging) and takes them off the counters; returns them (events, bytes).
    fn discard_stream(&mut self, xid: pgcdc_core::Xid, ordinals: std::ops::RangeInclusive<u32>) -> (i64, i64) {
        if !feed::lock_for_worker(self.feed.id) {
            self.dropped = true;
            return (0, 0);
        }
        let removed = spi_ok(streamed::discard(self.feed.id, xid, ordinals));
        self.uncount(removed);
        removed
    }

    /// NOTIFY the feed's channel at commit: events up to `last` are readable.
    fn wake_readers(&self, last: Position) {
        let payload = format!("{{\"commit_lsn\":\"{}\",\"ordinal\":{}}}", last.commit_lsn, last.ordinal);
        spi_ok(queue::notify(&self.feed.channel(), vec![payload]));
    }

    /// Takes `(events, bytes)` removed from the queue off the counters.
    fn uncount(&mut self, (rows, bytes): (i64, i64)) {
        self.staged_rows -= rows;
        self.staged_bytes -= bytes;
        self.unwritten_rows -= rows;
        self.unwritten_bytes -= bytes;
    }

    /// Streamed transaction `xid` committed at `commit_lsn`: its staged events become
    /// readable, except those already downstream (acknowledged, or staged by an earlier
    /// worker), which go.
    fn commit_stream(
        &mut self,
        xid: pgcdc_core::Xid,
        commit_lsn: Lsn,
        commit: pgcdc_core::debezium::StreamedCommit,
        t: &streamed::Streaming,
    ) {
        if t.last_ordinal == 0 {
            return;
        }
        let last = Position::new(commit_lsn, t.last_ordinal);
        if t.skip || last <= self.floor {
            // Everything is downstream already.
            if !t.skip && t.rows > 0 {
                self.discard_stream(xid, 1..=u32::MAX);
            }
            self.floor = self.floor.max(last);
            return;
        }
        if !feed::lock_for_worker(self.feed.id) {
            self.dropped = true;
            return;
        }
        if self.floor.commit_lsn == commit_lsn {
            // Partly acknowledged before a crash emptied the queue.
            self.discard_stream(xid, 1..=self.floor.ordinal);
        }
        let committed = streamed::Committed { commit_lsn, xid, commit, last_ordinal: t.last_ordinal };
        spi_ok(streamed::record(self.feed.id, &committed));
        self.floor = last;
        self.last_staged = Some(self.last_staged.map_or(last, |s| s.max(last)));
        self.wake_readers(last);
    }

    /// Takes the records of something outside any transaction at `lsn` (a non-transactional
    /// message, a snapshot chunk at its high watermark) and tells the confirmer; returns the
    /// position of the last one.
    fn take_standalone(
        &mut self,
        lsn: Lsn,
        events: &mut Vec<Event>,
        rows: &mut Vec<Row>,
    ) -> Result<Option<Position>, String> {
        let last = events.last().map(|ev| Position::new(ev.commit_lsn, ev.ordinal));
        // Their ordinals are not the open transaction's (there is none).
        let saved = self.tx_last_ordinal;
        self.take(events, rows)?;
        self.tx_last_ordinal = saved;
        self.confirmer.standalone(lsn, last, self.effective_acked());
        Ok(last)
    }

    fn encode(&mut self, wal_start: Lsn, msg: &Message<'_>, events: &mut Vec<Event>) -> Result<(), String> {
        self.encoder
            .handle(wal_start, msg, &mut self.catalog, events)
            .map_err(|e| format!("cannot encode the change at {wal_start}: {e}"))
    }

    /// Moves new events into `rows`, skipping those already downstream. Err: an event that
    /// can never be staged (too big, invalid headers): the feed must stop.
    fn take(&mut self, events: &mut Vec<Event>, rows: &mut Vec<Row>) -> Result<(), String> {
        let max_event = gucs::max_event_size();
        for ev in events.drain(..) {
            let pos = Position::new(ev.commit_lsn, ev.ordinal);
            self.tx_last_ordinal = self.tx_last_ordinal.max(ev.ordinal);
            if pos <= self.floor {
                continue;
            }
            let row = Row::from_event(ev, &mut self.headers);
            if let Err(problem) = row.check(max_event, &mut self.headers) {
                return Err(poison_message(&self.feed, &row, &problem));
            }
            self.floor = pos;
            self.last_staged = Some(pos);
            self.staged_total += 1;
            rows.push(row);
        }
        Ok(())
    }

    /// Updates `pgcdc.feed_runtime` when something a reader cares about changed. Received and
    /// confirmed positions alone move with every keepalive, also because of this very update's
    /// commit record: they are written only after moving 1 MB and 5 s, so an idle feed writes
    /// no WAL of its own (pgcdc.feed_status also shows the slot's own confirmed_flush_lsn).
    ///
    /// Returns false when the feed was dropped meanwhile (nothing written).
    fn write_runtime(&mut self, phase: &'static str) -> bool {
        let staged = self.last_staged.unwrap_or_default();
        let key = RuntimeKey {
            phase,
            staged,
            complete_lsn: self.complete_lsn,
            failures: self.failures,
            staged_total: self.staged_total,
        };
        let moved = (self.received_lsn, self.confirmer.confirmable());
        match &self.runtime_written {
            Some((k, m, at))
                if *k == key
                    && self.unwritten_rows == 0
                    && self.unwritten_bytes == 0
                    && (moved.0 .0.saturating_sub(m.0 .0) < 1 << 20 && moved.1 .0.saturating_sub(m.1 .0) < 1 << 20
                        || at.elapsed() < Duration::from_secs(5)) =>
            {
                return true
            }
            _ => {}
        }
        // FOR KEY SHARE on the feed row: never write a runtime row for a dropped feed.
        if !feed::lock_for_worker(self.feed.id) {
            return false;
        }
        self.runtime_written = Some((key, moved, Instant::now()));
        spi_ok(Spi::connect_mut(|c| {
            let args = [
                self.feed.id.into(),
                // SAFETY: MyProcPid is this process's pid.
                unsafe { pg_sys::MyProcPid }.into(),
                phase.into(),
                PgLsn(self.received_lsn).into(),
                PgLsn(staged.commit_lsn).into(),
                (staged.ordinal as i32).into(),
                PgLsn(self.complete_lsn).into(),
                PgLsn(self.confirmer.confirmable()).into(),
                self.failures.into(),
                self.staged_total.into(),
                self.unwritten_rows.into(),
                self.unwritten_bytes.into(),
            ];
            // queued_*: this worker adds what it staged; pgcdc.ack subtracts what it removes.
            crate::plans::update(
                c,
                "INSERT INTO pgcdc.feed_runtime AS r (feed_id, pid, phase, started_at, received_lsn, \
                 staged_lsn, staged_ordinal, complete_lsn, confirmed_lsn, failures, staged_total, \
                 queued_events, queued_bytes, updated_at) \
                 VALUES ($1, $2, $3, now(), $4, $5, $6, $7, $8, $9, $10, $11, $12, now()) \
                 ON CONFLICT (feed_id) DO UPDATE SET pid = $2, phase = $3, \
                 started_at = CASE WHEN r.pid = $2 THEN r.started_at ELSE now() END, \
                 received_lsn = $4, staged_lsn = $5, staged_ordinal = $6, complete_lsn = $7, \
                 confirmed_lsn = $8, failures = $9, staged_total = $10, \
                 queued_events = r.queued_events + $11, queued_bytes = r.queued_bytes + $12, updated_at = now()",
                None,
                &args,
            )?;
            Ok(())
        }));
        self.unwritten_rows = 0;
        self.unwritten_bytes = 0;
        true
    }
}

/// The end of the WAL inserted so far: every record already written (an ack's commit record)
/// ends at or before it. `GetXLogInsertRecPtr` is where the next record will start, which on
/// a page boundary is past the next page's header: WAL that does not exist yet, and
/// `XLogFlush` to it raises "xlog flush request ... is not satisfied".
fn inserted_wal_end() -> pg_sys::XLogRecPtr {
    // SAFETY: reads the WAL insert position and the segment size on the main thread.
    let (next, segment) = unsafe { (pg_sys::GetXLogInsertRecPtr(), pg_sys::wal_segment_size as u64) };
    wal_end_before(next, u64::from(pg_sys::XLOG_BLCKSZ), segment)
}

/// Size of a WAL page header as written (MAXALIGNed), short and long (segment start) form.
const SHORT_PAGE_HEADER: u64 = maxalign(std::mem::size_of::<pg_sys::XLogPageHeaderData>());
const LONG_PAGE_HEADER: u64 = maxalign(std::mem::size_of::<pg_sys::XLogLongPageHeaderData>());

const fn maxalign(n: usize) -> u64 {
    let align = pg_sys::MAXIMUM_ALIGNOF as usize;
    (n.div_ceil(align) * align) as u64
}

/// The end of the WAL before `next`, the position the next record starts at: `next` minus
/// the page header when nothing has been written on its page yet (`next` sits right after
/// the header), else `next`.
fn wal_end_before(next: u64, page: u64, segment: u64) -> u64 {
    if next % segment == LONG_PAGE_HEADER {
        next - LONG_PAGE_HEADER
    } else if next % page == SHORT_PAGE_HEADER {
        next - SHORT_PAGE_HEADER
    } else {
        next
    }
}

/// `last_error` for an event that cannot be staged: which one, why, and how to go on.
fn poison_message(feed: &Feed, row: &Row, problem: &str) -> String {
    let skip_to = Lsn(row.position.commit_lsn.0 + 1);
    format!(
        "cannot stage the event at position {} ({} on {}.{}, change LSN {}): {problem}; \
         raise pgcdc.max_event_size (at most 1GB) and SELECT pgcdc.resume_feed('{}'), or skip its \
         whole transaction: SELECT pg_replication_slot_advance('{}', '{skip_to}'); then \
         SELECT pgcdc.resume_feed('{}')",
        row.position, row.op, row.schema, row.table, row.lsn, feed.name, feed.slot_name, feed.name
    )
}

/// Puts a feed in the error state with its reason (the launcher will not restart it).
fn set_error(feed_id: i32, message: &str) {
    spi_ok(Spi::connect_mut(|c| {
        let args = [feed_id.into(), message.into()];
        c.update(
            "UPDATE pgcdc.feed SET state = 'error', last_error = $2, last_error_at = now() \
             WHERE id = $1 AND state = 'running'",
            None,
            &args,
        )?;
        Ok(())
    }));
}

fn record_failure_in_tx(feed_id: i32, message: &str, failures: i32) {
    spi_ok(Spi::connect_mut(|c| {
        let args = [feed_id.into(), message.into(), failures.into()];
        c.update("UPDATE pgcdc.feed SET last_error = $2, last_error_at = now() WHERE id = $1", None, &args[..2])?;
        c.update("UPDATE pgcdc.feed_runtime SET failures = $3 WHERE feed_id = $1", None, &args)?;
        Ok(())
    }));
}

/// After an unexpected ERROR: remember it (best effort) for feed_status and the back-off.
fn record_failure(feed_id: i32, message: &str) {
    let message = message.to_owned();
    let _ = PgTryBuilder::new(|| {
        in_transaction(|| {
            let failures: i32 = spi_ok(Spi::connect(|c| {
                let args = [feed_id.into()];
                c.select("SELECT failures FROM pgcdc.feed_runtime WHERE feed_id = $1", None, &args)?
                    .next()
                    .map(|r| r.get::<i32>(1))
                    .transpose()
                    .map(|v| v.flatten().unwrap_or(0))
            }));
            record_failure_in_tx(feed_id, &message, failures + 1);
        });
        true
    })
    .catch_others(|_| false)
    .execute();
}

/// Ends the WAL sender still holding our slot (left from this feed's previous worker) and
/// waits up to 10 s for the slot to be released.
fn terminate_and_wait(pid: i32, slot: &str) {
    spi_ok(Spi::connect(|c| {
        let args = [pid.into()];
        c.select("SELECT pg_catalog.pg_terminate_backend($1, 5000)", None, &args)?;
        Ok(())
    }));
    for _ in 0..100 {
        let active = spi_ok(Spi::connect(|c| {
            let args = [slot.into()];
            c.select("SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1", None, &args)?
                .first()
                .get_one::<i32>()
        }));
        if active.is_none() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
        pgrx::check_for_interrupts!();
    }
}

fn set_application_name(name: &str) {
    let Ok(c) = std::ffi::CString::new(name) else { return };
    // SAFETY: reports a NUL-terminated string to pg_stat_activity on the main thread.
    unsafe { pg_sys::pgstat_report_appname(c.as_ptr()) };
}

fn current_database() -> String {
    // SAFETY: the worker is connected to a database.
    let p = unsafe { pg_sys::get_database_name(pg_sys::MyDatabaseId) };
    if p.is_null() {
        return gucs::database();
    }
    // SAFETY: NUL-terminated palloc'd string.
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The pgoutput protocol of this server (the walsender is this server's).
fn proto_version() -> u32 {
    pgcdc_wire::session::proto_version(pg_sys::PG_VERSION_NUM)
}

/// Whether a stream failure is for good: retrying cannot help (slot or publication missing,
/// privileges, authentication, database missing, a slot that cannot be read any more, a
/// connection setting this worker cannot honour). Decided by kind and SQLSTATE only.
fn is_permanent(err: &WireError) -> bool {
    match err {
        WireError::Interface(_) => true,
        WireError::Server(e) => matches!(e.code.as_str(), "42704" | "42501" | "28000" | "28P01" | "3D000" | "55000"),
        WireError::Connect(_) | WireError::Io(_) | WireError::Protocol(_) => false,
    }
}

/// How often a worker on PostgreSQL 18+ checks that its publication still exists.
const PUBLICATION_CHECK: Duration = Duration::from_secs(1);

fn publication_exists(publication: &str) -> bool {
    spi_ok(Spi::connect(|c| {
        let args = [publication.into()];
        Ok(c.select("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1", None, &args)?.len() == 1)
    }))
}

fn slot_exists(slot: &str) -> bool {
    spi_ok(Spi::connect(|c| {
        let args = [slot.into()];
        Ok(c.select("SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1", None, &args)?.len() == 1)
    }))
}

/// The replication connection: this server's first unix socket directory and port, as the
/// bootstrap superuser (the worker's own user), unless `pgcdc.replication_conninfo` says
/// otherwise (a libpq connection string: quoted values, escapes, URL form, password file).
fn connection_for(feed: &Feed, options: &FeedOptions, dbname: &str) -> Result<Connection, String> {
    let (user, sockdirs, port): (String, String, String) = spi_ok(Spi::connect(|c| {
        let row = c
            .select(
                "SELECT current_user::text, current_setting('unix_socket_directories'), \
                 current_setting('port')",
                None,
                &[],
            )?
            .first();
        Ok((
            row.get::<String>(1)?.unwrap_or_default(),
            row.get::<String>(2)?.unwrap_or_default(),
            row.get::<String>(3)?.unwrap_or_default(),
        ))
    }));
    let first_dir = sockdirs.split(',').map(str::trim).find(|d| d.starts_with('/')).unwrap_or("127.0.0.1").to_owned();
    let conninfo = gucs::replication_conninfo().unwrap_or_default();
    let mut params = replication_params(&conninfo, &first_dir, &port, &user, dbname)?;
    params.application_name = format!("{WORKER_TYPE} {}", feed.name);
    let version = pg_sys::PG_VERSION_NUM;
    Ok(Connection {
        params,
        slot: feed.slot_name.clone(),
        pgoutput: Pgoutput {
            publications: vec![feed.publication.clone()],
            // Snapshot watermarks and the feed's message events.
            messages: pgcdc_wire::session::supports_messages(version),
            // Big transactions staged as they arrive (streamed.rs), unless the feed says
            // `streaming: false`, where their events can wait in the queue: not for NOTIFY
            // feeds, nor with transaction metadata (its records need the whole transaction).
            streaming: options.streaming && feed.sink == Sink::Table && !options.encoder.provide_transaction_metadata,
        },
        status_interval: Duration::from_millis(gucs::STATUS_INTERVAL_MS.get().max(100) as u64),
    })
}

/// `pgcdc.replication_conninfo` over this server's defaults: what it leaves out is this
/// server's socket, port, the worker's user and the feed's database, never the postmaster's
/// environment (only `HOME` and `PGPASSFILE`, for the password file, as libpq). It may not
/// name another database: the slot is this one's.
fn replication_params(
    conninfo: &str,
    socket_dir: &str,
    port: &str,
    user: &str,
    dbname: &str,
) -> Result<ConnParams, String> {
    let defaults = |key: &str| -> Option<String> {
        match key {
            "PGHOST" => Some(socket_dir.to_owned()),
            "PGPORT" => Some(port.to_owned()),
            "PGUSER" => Some(user.to_owned()),
            "PGDATABASE" => Some(dbname.to_owned()),
            "HOME" | "PGPASSFILE" => std::env::var(key).ok(),
            _ => None,
        }
    };
    let params =
        ConnParams::from_dsn_with(conninfo, &defaults).map_err(|e| format!("pgcdc.replication_conninfo: {e}"))?;
    if params.database != dbname {
        return Err(format!(
            "pgcdc.replication_conninfo: dbname={} is not this feed's database \"{dbname}\" (leave dbname out)",
            params.database
        ));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 8192;
    const SEGMENT: u64 = 16 << 20;

    #[test]
    fn replication_conninfo_is_a_libpq_connection_string_over_this_servers_defaults() {
        let p = replication_params("", "/run/pg", "5433", "postgres", "app").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.user.as_str(), p.database.as_str()),
            ("/run/pg", 5433, "postgres", "app")
        );
        assert_eq!(p.password, None);
        let p = replication_params(
            r"host=127.0.0.1 port=5434 user='repl user' password='a b\'c\\d'",
            "/run/pg",
            "5433",
            "postgres",
            "app",
        )
        .unwrap();
        assert_eq!((p.host.as_str(), p.port, p.user.as_str()), ("127.0.0.1", 5434, "repl user"));
        assert_eq!(p.password.as_deref(), Some(r"a b'c\d"));
        let p = replication_params("postgresql://repl:p%40ss@localhost:5435", "/run/pg", "5433", "postgres", "app")
            .unwrap();
        assert_eq!((p.user.as_str(), p.password.as_deref(), p.port), ("repl", Some("p@ss"), 5435));
        assert!(replication_params("dbname=other", "/run/pg", "5433", "postgres", "app")
            .unwrap_err()
            .contains("dbname"));
        assert!(replication_params("password='unterminated", "/d", "1", "u", "app").is_err());
        assert!(replication_params("hostaddr=1.2.3.4", "/d", "1", "u", "app").unwrap_err().contains("hostaddr"));
    }

    #[test]
    fn stream_failures_are_permanent_by_sqlstate() {
        assert!(is_permanent(&WireError::server("42704", "replication slot \"x\" does not exist", None)));
        assert!(is_permanent(&WireError::server("55000", "cannot read from logical replication slot \"x\"", None)));
        assert!(!is_permanent(&WireError::server("55006", "replication slot \"x\" is active for PID 7", None)));
        assert!(!is_permanent(&WireError::Io("lost".into())));
        assert!(is_permanent(&WireError::Interface("sslmode=require needs TLS".into())));
    }

    #[test]
    fn the_end_of_wal_before_a_page_boundary_is_the_boundary() {
        assert_eq!((SHORT_PAGE_HEADER, LONG_PAGE_HEADER), (24, 40), "MAXALIGNed XLog page headers");
        // The next record starts after the header of a page nothing was written on yet.
        assert_eq!(wal_end_before(5 * PAGE + 24, PAGE, SEGMENT), 5 * PAGE);
        assert_eq!(wal_end_before(3 * SEGMENT + 40, PAGE, SEGMENT), 3 * SEGMENT);
        // Anywhere else the next record starts where the last one ended.
        assert_eq!(wal_end_before(5 * PAGE + 64, PAGE, SEGMENT), 5 * PAGE + 64);
        assert_eq!(wal_end_before(5 * PAGE + 40, PAGE, SEGMENT), 5 * PAGE + 40);
        assert_eq!(wal_end_before(3 * SEGMENT + 24 + PAGE, PAGE, SEGMENT), 3 * SEGMENT + PAGE);
    }
}
