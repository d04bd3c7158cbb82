//! The launcher: one static background worker (`pgcdc launcher`) connected to
//! `pgcdc.database`. Every `pgcdc.launcher_interval`, and whenever a SQL call that changes a
//! feed commits (it sets our latch) or a feed worker starts or stops (SIGUSR1), it reconciles:
//!
//! * every `running` feed has a worker: if not, it registers a dynamic one (`pgcdc feed
//!   <name>`, restarted by the postmaster 1 s after an exit with code 1). Feeds survive server
//!   restarts because their rows do; the launcher starts their workers again.
//! * workers of paused, errored or dropped feeds are stopped.
//! * replication slots that pgcdc created ([`crate::slot`] keeps the record) in this
//!   database, inactive, that no feed owns are dropped: left by `drop_feed`, by a
//!   `create_feed` that rolled back, or by `DROP EXTENSION`. Slots pgcdc did not create are
//!   never touched, whatever their name. A `create_feed` in progress holds a transaction
//!   advisory lock on its slot name; the launcher takes the same lock (session level) before
//!   it looks, so it never drops a slot whose feed is about to commit.
//! * rows of `pgcdc.event` and `pgcdc.feed_runtime` whose feed is gone are deleted (the
//!   feed-row locks of `drop_feed` and the worker prevent them; this is the safety net).
//!
//! The launcher starts only once recovery has finished (`BgWorkerStart_RecoveryFinished`),
//! so a hot standby runs no pgcdc process; should it ever find itself in recovery it waits
//! for the promotion instead of touching tables. It pins `search_path` right after it
//! connects, like the feed workers.

use std::collections::HashMap;
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;

use crate::access;
use crate::error::spi_ok;
use crate::feed::LOCK_CLASS_SLOT;
use crate::gucs;
use crate::slot;
use crate::worker::WORKER_TYPE;

/// `bgw_type` of the launcher.
pub const LAUNCHER_TYPE: &str = "pgcdc launcher";

/// Called from `_PG_init` in the postmaster.
pub fn register() {
    BackgroundWorkerBuilder::new(LAUNCHER_TYPE)
        .set_type(LAUNCHER_TYPE)
        .set_library("pgcdc")
        .set_function("pgcdc_launcher_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[derive(Debug)]
struct FeedRow {
    id: i32,
    name: String,
    running: bool,
}

#[derive(Debug, Default)]
struct Snapshot {
    installed: bool,
    feeds: Vec<FeedRow>,
    /// feed id -> pid of a live feed worker (possibly started by an earlier launcher).
    live: HashMap<i32, i32>,
    orphan_slots: Vec<String>,
    /// Feed ids that have rows in pgcdc.feed_runtime but no feed.
    stale_ids: Vec<i32>,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgcdc_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    access::pin_settings_for_process();
    // SAFETY: reports a NUL-terminated string to pg_stat_activity on the main thread.
    unsafe { pg_sys::pgstat_report_appname(c"pgcdc launcher".as_ptr()) };
    log!("pgcdc launcher started in database \"{}\"", gucs::database());

    let mut workers: HashMap<i32, DynamicBackgroundWorker> = HashMap::new();
    let mut failed_to_start: HashMap<i32, bool> = HashMap::new();
    let mut known_ids: Vec<i32> = Vec::new();
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: re-reads postgresql.conf on the main thread.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let interval = Duration::from_millis(gucs::LAUNCHER_INTERVAL_MS.get().max(100) as u64);
        // SAFETY: a read of shared recovery state.
        if unsafe { pg_sys::RecoveryInProgress() } {
            // Unlogged tables cannot be read during recovery: wait for the promotion.
            if !BackgroundWorker::wait_latch(Some(interval)) {
                // SAFETY: see below.
                unsafe { pg_sys::proc_exit(1) };
            }
            continue;
        }
        let snapshot = crate::worker::in_transaction(take_snapshot);
        if snapshot.installed {
            reconcile(&snapshot, &mut workers, &mut failed_to_start);
            // Feeds that vanished since the last look, and runtime rows without a feed.
            let mut gone: Vec<i32> =
                known_ids.iter().copied().filter(|id| !snapshot.feeds.iter().any(|f| f.id == *id)).collect();
            gone.extend(snapshot.stale_ids.iter().copied());
            gone.sort_unstable();
            gone.dedup();
            if !gone.is_empty() {
                crate::worker::in_transaction(|| collect_rows_of_dropped_feeds(&gone));
            }
            known_ids = snapshot.feeds.iter().map(|f| f.id).collect();
        } else {
            known_ids.clear();
        }
        for slot in &snapshot.orphan_slots {
            collect_orphan_slot(slot);
        }
        if !BackgroundWorker::wait_latch(Some(interval)) {
            log!("pgcdc launcher stopping");
            // SAFETY: exit 1 so that a pg_terminate_backend'ed launcher comes back; at server
            // shutdown the postmaster does not restart it.
            unsafe { pg_sys::proc_exit(1) };
        }
    }
}

fn take_snapshot() -> Snapshot {
    spi_ok(Spi::connect(|c| {
        let installed =
            c.select("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgcdc'", None, &[])?.len() == 1;
        let mut snap = Snapshot { installed, ..Default::default() };
        let owned_slots = if installed {
            for row in c.select("SELECT id, name, state FROM pgcdc.feed ORDER BY id", None, &[])? {
                snap.feeds.push(FeedRow {
                    id: row.get::<i32>(1)?.unwrap_or_default(),
                    name: row.get::<String>(2)?.unwrap_or_default(),
                    running: row.get::<String>(3)?.as_deref() == Some("running"),
                });
            }
            let args = [WORKER_TYPE.into()];
            for row in c.select(
                "SELECT r.feed_id, r.pid FROM pgcdc.feed_runtime r \
                 JOIN pg_catalog.pg_stat_activity a ON a.pid = r.pid AND a.backend_type = $1",
                None,
                &args,
            )? {
                if let (Some(id), Some(pid)) = (row.get::<i32>(1)?, row.get::<i32>(2)?) {
                    snap.live.insert(id, pid);
                }
            }
            for row in c.select(
                "SELECT r.feed_id FROM pgcdc.feed_runtime r \
                 WHERE NOT EXISTS (SELECT 1 FROM pgcdc.feed f WHERE f.id = r.feed_id)",
                None,
                &[],
            )? {
                if let Some(id) = row.get::<i32>(1)? {
                    snap.stale_ids.push(id);
                }
            }
            let mut owned = Vec::new();
            for row in c.select("SELECT slot_name FROM pgcdc.feed", None, &[])? {
                owned.extend(row.get::<String>(1)?);
            }
            owned
        } else {
            Vec::new()
        };
        // SAFETY: MyDatabaseId is set once connected.
        let database = unsafe { pg_sys::MyDatabaseId };
        snap.orphan_slots = slot::recorded(database).into_iter().filter(|s| !owned_slots.contains(s)).collect();
        Ok(snap)
    }))
}

/// Deletes the queue and runtime rows of feeds that no longer exist.
fn collect_rows_of_dropped_feeds(ids: &[i32]) {
    let removed: i64 = spi_ok(Spi::connect_mut(|c| {
        let args = [ids.to_vec().into()];
        let mut removed = 0;
        for row in crate::queue::removing(|| {
            c.update(
                "WITH gone AS (SELECT unnest($1::int4[]) AS id EXCEPT SELECT id FROM pgcdc.feed), \
             e AS (DELETE FROM pgcdc.event WHERE feed_id IN (SELECT id FROM gone) RETURNING 1), \
             s AS (DELETE FROM pgcdc.stream_commit WHERE feed_id IN (SELECT id FROM gone)), \
             r AS (DELETE FROM pgcdc.feed_runtime WHERE feed_id IN (SELECT id FROM gone) RETURNING 1) \
             SELECT (SELECT count(*) FROM e) + (SELECT count(*) FROM r)",
                None,
                &args,
            )
        })? {
            removed += row.get::<i64>(1)?.unwrap_or(0);
        }
        Ok(removed)
    }));
    if removed > 0 {
        log!("pgcdc launcher: removed {removed} queue/runtime rows of dropped feeds {ids:?}");
    }
}

fn reconcile(
    snap: &Snapshot,
    workers: &mut HashMap<i32, DynamicBackgroundWorker>,
    failed_to_start: &mut HashMap<i32, bool>,
) {
    for f in &snap.feeds {
        let alive = match workers.get(&f.id).map(|h| h.pid()) {
            Some(Ok(_)) | Some(Err(BackgroundWorkerStatus::NotYetStarted)) => true,
            Some(Err(_)) => {
                workers.remove(&f.id);
                false
            }
            None => false,
        };
        if !f.running {
            if let Some(h) = workers.remove(&f.id) {
                let _ = h.terminate();
            } else if let Some(pid) = snap.live.get(&f.id) {
                // A worker from an earlier launcher: it exits by itself when it sees the state;
                // this only makes it prompt.
                // SAFETY: sends SIGTERM to a PostgreSQL backend we looked up in pg_stat_activity.
                unsafe { libc::kill(*pid, libc::SIGTERM) };
            }
            continue;
        }
        if alive || snap.live.contains_key(&f.id) {
            continue;
        }
        match start_worker(f) {
            Some(h) => {
                failed_to_start.remove(&f.id);
                workers.insert(f.id, h);
            }
            None => {
                if failed_to_start.insert(f.id, true).is_none() {
                    warning!(
                        "pgcdc: cannot start a worker for feed \"{}\": no free background worker slot \
                         (raise max_worker_processes); retrying",
                        f.name
                    );
                }
            }
        }
    }
    // Workers whose feed is gone (dropped): the worker exits by itself; make it prompt.
    let ids: Vec<i32> = workers.keys().copied().collect();
    for id in ids {
        if !snap.feeds.iter().any(|f| f.id == id) {
            if let Some(h) = workers.remove(&id) {
                let _ = h.terminate();
            }
        }
    }
}

fn start_worker(f: &FeedRow) -> Option<DynamicBackgroundWorker> {
    let builder = BackgroundWorkerBuilder::new(&format!("{WORKER_TYPE} {}", f.name))
        .set_type(WORKER_TYPE)
        .set_library("pgcdc")
        .set_function("pgcdc_feed_worker_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(1)))
        .set_argument(f.id.into_datum())
        // SAFETY: plain read of our pid.
        .set_notify_pid(unsafe { pg_sys::MyProcPid });
    // The handle is palloc'd in CurrentMemoryContext: keep it for the launcher's life.
    // SAFETY: TopMemoryContext outlives the handle; nothing else is allocated meanwhile.
    unsafe { PgMemoryContexts::TopMemoryContext.switch_to(|_| builder.load_dynamic()) }.ok()
}

/// Drops `slot` (one pgcdc recorded) if, under its advisory lock and with a fresh snapshot,
/// no feed owns it and nobody uses it; forgets the record once the slot is gone.
fn collect_orphan_slot(slot: &str) {
    let locked: bool = crate::worker::in_transaction(|| {
        spi_ok(Spi::connect(|c| {
            let args = [LOCK_CLASS_SLOT.into(), slot.into()];
            c.select("SELECT pg_catalog.pg_try_advisory_lock($1, pg_catalog.hashtext($2))", None, &args)?
                .first()
                .get_one::<bool>()
        }))
        .unwrap_or(false)
    });
    if !locked {
        return;
    }
    crate::worker::in_transaction(|| {
        // SAFETY: MyDatabaseId is set once connected.
        let database = unsafe { pg_sys::MyDatabaseId };
        // Checked again under the lock: a create_feed may have recorded it meanwhile.
        let (owned, state): (bool, Option<bool>) = spi_ok(Spi::connect(|c| {
            let args = [slot.into()];
            let installed =
                c.select("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgcdc'", None, &[])?.len() == 1;
            let owned = installed && c.select("SELECT 1 FROM pgcdc.feed WHERE slot_name = $1", None, &args)?.len() == 1;
            let active = c
                .select(
                    "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 \
                     AND database = pg_catalog.current_database()",
                    None,
                    &args,
                )?
                .first()
                .get_one::<bool>()
                .ok()
                .flatten();
            Ok((owned, active))
        }));
        let recorded = slot::is_recorded(slot, database);
        match state {
            _ if owned || !recorded => {}
            None => {
                if let Err(e) = slot::forget(slot) {
                    warning!("pgcdc launcher: {e}");
                }
            }
            Some(true) => {} // in use: a stopping worker; next time
            Some(false) => {
                spi_ok(Spi::connect(|c| {
                    let args = [slot.into()];
                    c.select("SELECT pg_catalog.pg_drop_replication_slot($1)", None, &args)?;
                    Ok(())
                }));
                if let Err(e) = slot::forget(slot) {
                    warning!("pgcdc launcher: {e}");
                }
                log!("pgcdc launcher: dropped replication slot \"{slot}\" (its feed is gone)");
            }
        }
        spi_ok(Spi::connect(|c| {
            let args = [LOCK_CLASS_SLOT.into(), slot.into()];
            c.select("SELECT pg_catalog.pg_advisory_unlock($1, pg_catalog.hashtext($2))", None, &args)?;
            Ok(())
        }));
    });
}
