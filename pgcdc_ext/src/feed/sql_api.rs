//! The SQL functions of feeds (`#[pg_extern]`, schema `pgcdc`), and the checks of their
//! arguments.
//!
//! Every function validates everything before it changes anything, and reports problems as
//! errors with a real SQLSTATE and a hint (a NULL argument is 22004, never an internal
//! error). The only non-transactional step is the creation of the replication slot in
//! `create_feed` (it must exist when the function returns, so that every change committed
//! afterwards is captured); if that transaction does not commit, the launcher drops the
//! orphaned slot, which [`crate::slot`] recorded (see [`crate::launcher`]). `drop_feed` is
//! transactional: it deletes the feed and its staged events, and at commit wakes the launcher,
//! which stops the worker and drops the slot.
//!
//! Every function runs with `search_path = pg_catalog, pg_temp` (sql/pgcdc_finalize.sql) and
//! finds the feed and checks the caller's rights on it before anything runs as the extension
//! owner ([`authorize`], [`crate::access`]). A role that may not use a feed cannot tell it
//! from a feed that does not exist.
//!
//! Only pgcdc removes rows from `pgcdc.event` (`ack`, `reset_feed`, `drop_feed`, the
//! launcher's clean-up of dropped feeds; [`crate::queue::removing`]): a trigger refuses any
//! other DELETE or TRUNCATE.

use std::collections::BTreeMap;
use std::ffi::CStr;

use pgcdc_core::Lsn;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::Value;

use super::model::{all_option_keys, slot_name, Feed, FeedOptions, Sink, MAX_NAME_LEN};
use super::store::{
    acknowledge, authorize, find_feed, load_by_id, lock_by_id, missing_feed, read_rows, wake_at_commit, ReadSink,
    RowLock, LOCK_CLASS_CREATE, LOCK_CLASS_SLOT, READ_COLUMNS,
};
use crate::access;
use crate::datum::PgLsn;
use crate::error::{quote_for_message, raise, required, spi_ok};
use crate::gucs;
use crate::position::{AckError, AckTarget, Delivered, Position};
use crate::queue;
use crate::slot;
use crate::snapshot;

fn validate_name(name: &str) {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("invalid feed name {}", quote_for_message(name)),
            Some(format!(
                "A feed name starts with a lowercase letter and has only lowercase letters, digits \
                 and underscores, at most {MAX_NAME_LEN} characters (it names the replication slot \
                 and the NOTIFY channel)."
            )),
        );
    }
}

fn parse_options(feed: &str, options: &Value) -> FeedOptions {
    FeedOptions::parse(feed, options).unwrap_or_else(|msg| {
        let hint = if msg.starts_with("unknown option") || msg.starts_with("options must be") {
            format!("Known options: {}.", all_option_keys())
        } else {
            "Use one of the values the message lists; pgcdc.alter_feed(feed, '{\"<option>\": null}') removes an option."
                .to_owned()
        };
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("invalid feed options: {msg}"), Some(hint))
    })
}

/// Runs `f` with a new snapshot (READ COMMITTED: it sees what committed since the statement
/// started). Needed after waiting for a lock, in transactions that must stay read-only for
/// PostgreSQL (pgrx runs read-only SPI with the statement's snapshot).
fn with_fresh_snapshot<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: pushes a snapshot on the active-snapshot stack, popped below or by abort.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let r = f();
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    r
}

/// `pgcdc.create_feed(name, publication, sink, options, owner)`: see sql/pgcdc_finalize.sql.
/// EXECUTE is granted to `pgcdc_admin` only.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn create_feed(
    name: Option<&str>,
    publication: Option<&str>,
    sink: default!(Option<&str>, "'table'"),
    options: default!(Option<JsonB>, "'{}'"),
    owner: default!(Option<&str>, "NULL"),
) -> PgLsn {
    let name = required(name, "name");
    let publication = required(publication, "publication");
    let sink = required(sink, "sink");
    let options = required(options, "options");
    let caller = access::current_role();
    validate_name(name);
    let sink = Sink::parse(sink).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid sink {}", quote_for_message(sink)),
            Some("sink is 'table' (stage events in pgcdc.event) or 'notify' (NOTIFY each event).".into()),
        )
    });
    let parsed = parse_options(name, &options.0);
    access::require_admin(caller, "create a feed");
    if sink == Sink::Notify {
        access::require_superuser_for_notify(caller);
    }

    // The feed runs in pgcdc.database only.
    let here = current_database();
    let home = gucs::database();
    if here != home {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("feeds run in database \"{home}\" (pgcdc.database), not in \"{here}\""),
            Some(format!("Create the feed in \"{home}\", or set pgcdc.database = '{here}' and restart the server.")),
        );
    }
    // SAFETY: reads the database encoding (a backend-local constant).
    if unsafe { pg_sys::GetDatabaseEncoding() } != pg_sys::pg_enc::PG_UTF8 as i32 {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("feeds need a UTF8 database; \"{here}\" is encoded in {}", database_encoding()),
            Some(
                "Debezium events are UTF-8 JSON and pgoutput sends text in the database encoding: \
                 create the database with ENCODING 'UTF8' and point pgcdc.database at it."
                    .into(),
            ),
        );
    }
    if setting("wal_level").as_deref() != Some("logical") {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "feeds need wal_level = logical".into(),
            Some("Set wal_level = logical in postgresql.conf and restart the server.".into()),
        );
    }
    let owner_oid = match owner {
        None => caller,
        Some(r) => access::role_oid(r).unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("role {} does not exist", quote_for_message(r)),
                Some("Create the role first, or leave owner out: the caller then owns the feed.".into()),
            )
        }),
    };

    // Publication, and the owner's right to read every table it publishes.
    let (exists, unreadable): (bool, Vec<String>) = spi_ok(Spi::connect(|c| {
        let args = [publication.into()];
        let exists = c.select("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1", Some(1), &args)?.len() == 1;
        let args = [publication.into(), owner_oid.into()];
        let mut unreadable = Vec::new();
        for row in c.select(
            "SELECT pg_catalog.format('%I.%I', schemaname, tablename) FROM pg_catalog.pg_publication_tables \
             WHERE pubname = $1 AND NOT pg_catalog.has_table_privilege($2::oid, \
             pg_catalog.format('%I.%I', schemaname, tablename), 'SELECT') ORDER BY 1",
            None,
            &args,
        )? {
            unreadable.push(row.get::<String>(1)?.unwrap_or_default());
        }
        Ok((exists, unreadable))
    }));
    if !exists {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("publication {} does not exist", quote_for_message(publication)),
            Some("Create it first, e.g. CREATE PUBLICATION shop FOR TABLE orders, customers;".into()),
        );
    }
    if !unreadable.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("role {} cannot SELECT published table(s) {}", access::role_name(owner_oid), unreadable.join(", ")),
            Some("A feed's owner must be able to read every table its publication publishes.".into()),
        );
    }

    // The initial snapshot's tables, checked before the slot exists (clear errors, no orphan).
    let initial =
        parsed.snapshot_mode.snapshots_at_creation().then(|| snapshot::plan(publication, owner_oid, None, true));

    let slot = slot_name(name);
    let options_text = options.0.to_string();
    // SAFETY: MyDatabaseId is set in any backend connected to a database.
    let database = unsafe { pg_sys::MyDatabaseId };
    access::as_extension_owner(|| {
        let max_feeds = i64::from(gucs::MAX_FEEDS.get());
        // One create_feed at a time (the count and the name check below must see every
        // committed feed); the slot lock serialises with the launcher's orphan-slot
        // collection (see launcher.rs). Neither assigns a transaction id.
        spi_ok(Spi::connect(|c| {
            let args = [LOCK_CLASS_CREATE.into(), 0i32.into()];
            c.select("SELECT pg_catalog.pg_advisory_xact_lock($1, $2)", None, &args)?;
            let args = [LOCK_CLASS_SLOT.into(), slot.as_str().into()];
            c.select("SELECT pg_catalog.pg_advisory_xact_lock($1, pg_catalog.hashtext($2))", None, &args)?;
            Ok(())
        }));
        let (duplicate, count, slot_active): (bool, i64, Option<bool>) = with_fresh_snapshot(|| {
            spi_ok(Spi::connect(|c| {
                let args = [name.into()];
                let duplicate = c.select("SELECT 1 FROM pgcdc.feed WHERE name = $1", Some(1), &args)?.len() == 1;
                let count =
                    c.select("SELECT count(*) FROM pgcdc.feed", None, &[])?.first().get_one::<i64>()?.unwrap_or(0);
                let args = [slot.as_str().into()];
                let slot_active = c
                    .select("SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1", None, &args)?
                    .first()
                    .get_one::<bool>()
                    .ok()
                    .flatten();
                Ok((duplicate, count, slot_active))
            }))
        });
        if duplicate {
            raise(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!("feed \"{name}\" already exists"),
                Some("Choose another name, or pgcdc.drop_feed it first.".into()),
            );
        }
        if count >= max_feeds {
            raise(
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                format!("too many feeds: pgcdc.max_feeds is {max_feeds}"),
                Some("Drop a feed or raise pgcdc.max_feeds (each feed also needs a worker, a WAL sender and a replication slot).".into()),
            );
        }
        // SAFETY: reads the transaction's xid without assigning one.
        if unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId {
            raise(
                PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
                "pgcdc.create_feed must run before any write in its transaction".into(),
                Some("It creates a replication slot, which PostgreSQL refuses after writes; call it first or in its own transaction.".into()),
            );
        }
        if slot_active.is_some() {
            if !slot::is_recorded(&slot, database) {
                raise(
                    PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                    format!("replication slot \"{slot}\" already exists and was not created by pgcdc"),
                    Some(format!(
                        "pgcdc never drops slots it did not create. Choose another feed name, or drop the \
                         slot yourself if it is unused: SELECT pg_drop_replication_slot('{slot}');"
                    )),
                );
            }
            // No feed owns it (checked above under the lock): left over by a dropped feed or an
            // aborted create_feed. Wait for a stopping worker to let go, then drop it.
            drop_orphan_slot(&slot);
        }
        if let Err(e) = slot::record(&slot, database) {
            raise(PgSqlErrorCode::ERRCODE_IO_ERROR, e, None);
        }
        let consistent: PgLsn = spi_ok(Spi::connect(|c| {
            let args = [slot.as_str().into()];
            // (name, plugin, temporary, two-phase, failover): the failover argument is 17+.
            let create = if parsed.slot_failover {
                "SELECT lsn FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
            } else {
                "SELECT lsn FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')"
            };
            c.select(create, None, &args)?.first().get_one::<PgLsn>()
        }))
        .unwrap_or_default();
        let feed_id: i32 = spi_ok(Spi::connect_mut(|c| {
            let args = [
                name.into(),
                publication.into(),
                slot.as_str().into(),
                (if sink == Sink::Table { "table" } else { "notify" }).into(),
                options_text.as_str().into(),
                owner_oid.into(),
            ];
            c.update(
                "INSERT INTO pgcdc.feed (name, publication, slot_name, sink, options, owner) \
                 VALUES ($1, $2, $3, $4, $5::jsonb, $6::oid::regrole) RETURNING id",
                None,
                &args,
            )?
            .first()
            .get_one::<i32>()
        }))
        .unwrap_or(0);
        if let Some(planned) = initial {
            let tables = snapshot::with_rows(planned, publication, owner_oid);
            snapshot::queue(feed_id, true, &tables);
        }
        wake_at_commit(true, None);
        consistent
    })
}

/// Drops an inactive slot no feed owns (one pgcdc recorded), waiting up to 10 s for a
/// stopping worker's WAL sender.
fn drop_orphan_slot(slot: &str) {
    for _ in 0..100 {
        let active: Option<bool> = with_fresh_snapshot(|| {
            spi_ok(Spi::connect(|c| {
                let args = [slot.into()];
                c.select("SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1", None, &args)?
                    .first()
                    .get_one::<bool>()
            }))
        });
        match active {
            None => return,
            Some(false) => {
                spi_ok(Spi::connect(|c| {
                    let args = [slot.into()];
                    c.select("SELECT pg_catalog.pg_drop_replication_slot($1)", None, &args)?;
                    Ok(())
                }));
                return;
            }
            Some(true) => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                pgrx::check_for_interrupts!();
            }
        }
    }
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
        format!("replication slot \"{slot}\" of a dropped feed is still in use"),
        Some("Its worker is stopping; retry in a few seconds.".into()),
    )
}

/// `pgcdc.drop_feed(name, if_exists)`: deletes the feed and its staged events. At commit the
/// launcher stops the worker and drops the replication slot (within a second).
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn drop_feed(name: Option<&str>, if_exists: default!(Option<bool>, false)) -> bool {
    let name = required(name, "name");
    let if_exists = required(if_exists, "if_exists");
    let caller = access::current_role();
    let usable = find_feed(name).filter(|(_, owner)| access::may_use_feed(caller, *owner));
    let Some((id, _)) = usable else {
        let admin = access::is_admin(caller);
        if if_exists {
            // Roles that are not admins cannot tell a missing feed from one they may not use.
            let message = if admin {
                format!("feed {} does not exist, skipping", quote_for_message(name))
            } else {
                format!("feed {} does not exist or you may not use it, skipping", quote_for_message(name))
            };
            ErrorReport::new(PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION, message, "pgcdc")
                .report(PgLogLevel::NOTICE);
            return false;
        }
        if admin {
            missing_feed(name)
        }
        access::deny_feed_access(caller, name, "drop")
    };
    access::as_extension_owner(|| {
        // FOR UPDATE: waits for a staging step of the worker (FOR KEY SHARE) to commit, so
        // the deletes below see everything it staged.
        let Some(feed) = lock_by_id(id, RowLock::Update) else {
            if if_exists {
                return false;
            }
            missing_feed(name)
        };
        wake_at_commit(true, Some(feed.id));
        spi_ok(Spi::connect_mut(|c| {
            let args = [feed.id.into()];
            queue::removing(|| c.update("DELETE FROM pgcdc.event WHERE feed_id = $1", None, &args))?;
            c.update("DELETE FROM pgcdc.stream_commit WHERE feed_id = $1", None, &args)?;
            c.update("DELETE FROM pgcdc.feed_runtime WHERE feed_id = $1", None, &args)?;
            c.update("DELETE FROM pgcdc.feed WHERE id = $1", None, &args)?;
            Ok(())
        }));
        true
    })
}

fn set_state(name: Option<&str>, action: &str, to: &str) {
    let name = required(name, "name");
    let id = authorize(name, action);
    access::as_extension_owner(|| {
        let feed = lock_by_id(id, RowLock::NoKeyUpdate).unwrap_or_else(|| missing_feed(name));
        spi_ok(Spi::connect_mut(|c| {
            let args = [feed.id.into(), to.into()];
            // Resuming clears the error that stopped the feed.
            c.update(
                "UPDATE pgcdc.feed SET state = $2, \
                 last_error = CASE WHEN $2 = 'running' THEN NULL ELSE last_error END \
                 WHERE id = $1",
                None,
                &args,
            )?;
            Ok(())
        }));
        wake_at_commit(true, Some(feed.id));
    });
}

/// `pgcdc.pause_feed(name)`: the worker stops at commit; the slot keeps the changes.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn pause_feed(name: Option<&str>) {
    set_state(name, "pause", "paused");
}

/// `pgcdc.resume_feed(name)`: restarts a paused feed, or one stopped by an error.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn resume_feed(name: Option<&str>) {
    set_state(name, "resume", "running");
}

/// `pgcdc.alter_feed(name, options)`: merges `options` into the feed's options (a JSON null
/// removes a key). The worker restarts to apply them; events already staged keep their form.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn alter_feed(name: Option<&str>, options: Option<JsonB>) -> JsonB {
    let name = required(name, "name");
    let options = required(options, "options");
    let id = authorize(name, "alter");
    let Some(changes) = options.0.as_object() else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid feed options: options must be a JSON object, not {}", options.0),
            Some(format!("Known options: {}.", all_option_keys())),
        )
    };
    let feed =
        access::as_extension_owner(|| lock_by_id(id, RowLock::NoKeyUpdate)).unwrap_or_else(|| missing_feed(name));
    let current: Value = serde_json::from_str(&feed.options_text).unwrap_or(Value::Null);
    let mut merged: BTreeMap<String, Value> =
        current.as_object().map(|m| m.clone().into_iter().collect()).unwrap_or_default();
    for (k, v) in changes {
        if v.is_null() {
            merged.remove(k);
        } else {
            merged.insert(k.clone(), v.clone());
        }
    }
    let merged = Value::Object(merged.into_iter().collect());
    let was_failover = feed.options().is_ok_and(|o| o.slot_failover);
    if parse_options(&feed.name, &merged).slot_failover != was_failover {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "slot.failover is fixed when the feed is created".into(),
            Some("Drop and re-create the feed with the option you want.".into()),
        );
    }
    let text = merged.to_string();
    access::as_extension_owner(|| {
        spi_ok(Spi::connect_mut(|c| {
            let args = [feed.id.into(), text.as_str().into()];
            c.update("UPDATE pgcdc.feed SET options = $2::jsonb WHERE id = $1", None, &args)?;
            Ok(())
        }));
        wake_at_commit(false, Some(feed.id));
    });
    JsonB(merged)
}

// `pgcdc.read` is declared by hand (its C entry point is `pgcdc_read`): it returns its rows
// in one call, as a tuplestore. pgrx's set-returning functions return a row per call, and
// every call of a function with `SET search_path` sets and restores the setting: that was
// half of a read.
extension_sql!(
    r#"
CREATE FUNCTION pgcdc.read(
    feed text,
    max_events int DEFAULT 100,
    after_lsn pg_lsn DEFAULT NULL,
    after_ordinal int DEFAULT NULL
) RETURNS TABLE (
    commit_lsn pg_lsn, ordinal int, lsn pg_lsn, xid bigint, op text, schema_name text,
    table_name text, topic text, key json, event json, headers json
)
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'pgcdc_read';
"#,
    name = "pgcdc_read",
);

/// The C entry point of `pgcdc.read` (materialize mode).
///
/// # Safety
/// Called by PostgreSQL's function manager with the four arguments declared above.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn pgcdc_read(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: fcinfo is this call's, with the declared argument types: text, int, pg_lsn, int.
    unsafe {
        let (store, desc) = result_store(fcinfo);
        read(
            pgrx::fcinfo::pg_getarg::<&str>(fcinfo, 0),
            pgrx::fcinfo::pg_getarg::<i32>(fcinfo, 1),
            pgrx::fcinfo::pg_getarg::<PgLsn>(fcinfo, 2),
            pgrx::fcinfo::pg_getarg::<i32>(fcinfo, 3),
            // Copies the row into the tuplestore's own memory.
            &mut |values, nulls| pg_sys::tuplestore_putvalues(store, desc, values.as_mut_ptr(), nulls.as_mut_ptr()),
        );
    }
    pg_sys::Datum::from(0usize)
}

#[no_mangle]
pub extern "C" fn pg_finfo_pgcdc_read() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The call's result set: a tuplestore handed to the executor (as PostgreSQL's own
/// materializing set functions do), and its row descriptor.
///
/// # Safety
/// `fcinfo` is the current call of a set-returning function whose result columns are
/// `pgcdc.read`'s.
unsafe fn result_store(fcinfo: pg_sys::FunctionCallInfo) -> (*mut pg_sys::Tuplestorestate, pg_sys::TupleDesc) {
    use pg_sys::SetFunctionReturnMode::{SFRM_Materialize, SFRM_Materialize_Random};
    // SAFETY: (whole body) resultinfo checked before use; the tuplestore and descriptor live
    // in the query's memory.
    unsafe {
        let rsinfo = (*fcinfo).resultinfo.cast::<pg_sys::ReturnSetInfo>();
        if rsinfo.is_null()
            || (*rsinfo).type_ != pg_sys::NodeTag::T_ReturnSetInfo
            || (*rsinfo).allowedModes & SFRM_Materialize as i32 == 0
        {
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "pgcdc.read returns a set: call it in FROM".to_string(),
                Some("SELECT * FROM pgcdc.read(feed, max_events)".into()),
            );
        }
        let before = pg_sys::MemoryContextSwitchTo((*(*rsinfo).econtext).ecxt_per_query_memory);
        let mut desc: pg_sys::TupleDesc = std::ptr::null_mut();
        if pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut desc)
            != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
            || (*desc).natts as usize != READ_COLUMNS
        {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "pgcdc.read: the function's declared result is not its row type".to_string(),
                None,
            );
        }
        let random = (*rsinfo).allowedModes & SFRM_Materialize_Random as i32 != 0;
        let store = pg_sys::tuplestore_begin_heap(random, false, pg_sys::work_mem);
        (*rsinfo).returnMode = SFRM_Materialize;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = desc;
        pg_sys::MemoryContextSwitchTo(before);
        (store, desc)
    }
}

/// `pgcdc.read`: checks the arguments and the caller's rights, and hands the events to `sink`.
/// The rights on the events' tables are checked after the rows are read (an ERROR then
/// discards what the sink got).
fn read(
    feed: Option<&str>,
    max_events: Option<i32>,
    after_lsn: Option<PgLsn>,
    after_ordinal: Option<i32>,
    sink: &mut ReadSink<'_>,
) {
    let feed = required(feed, "feed");
    let max_events = required(max_events, "max_events");
    if !(1..=1_000_000).contains(&max_events) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_events must be between 1 and 1000000, not {max_events}"),
            None,
        );
    }
    let caller = access::current_role();
    let id = authorize(feed, "read");
    let f = access::as_extension_owner(|| load_by_id(id)).unwrap_or_else(|| missing_feed(feed));
    require_readable(caller, &f, || publication_tables(&f.publication));
    if after_lsn.is_some_and(|l| l.0 >= crate::streamed::PROVISIONAL) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "after_lsn must be a position pgcdc.read returned, below FFFFFFFF/0".to_string(),
            None,
        );
    }
    let after = match (after_lsn, after_ordinal) {
        (None, _) => f.acked,
        (Some(l), o) => {
            Position::new(l.0, o.map_or(crate::position::WHOLE_TRANSACTION, |o| o.max(0) as u32)).max(f.acked)
        }
    };
    let tables = access::as_extension_owner(|| spi_ok(read_rows(f.id, after, max_events as usize, sink)));
    // The relations the returned events come from, by OID (they may have left the
    // publication since, been renamed, or been dropped: a table created later under the same
    // name is another table and grants nothing on these events).
    require_readable(caller, &f, || {
        tables
            .into_iter()
            .map(|(relid, (schema, table))| {
                (
                    relid.map(pg_sys::Oid::from).filter(|&oid| relation_exists(oid)),
                    format!("{}.{}", quote_ident(&schema), quote_ident(&table)),
                )
            })
            .collect()
    });
}

/// The tables `publication` publishes now: (oid, display name).
fn publication_tables(publication: &str) -> Vec<(Option<pg_sys::Oid>, String)> {
    spi_ok(Spi::connect(|c| {
        let args = [publication.into()];
        let mut out = Vec::new();
        for row in c.select(
            "SELECT c.oid, pg_catalog.format('%I.%I', pt.schemaname, pt.tablename) \
             FROM pg_catalog.pg_publication_tables pt \
             JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = $1 ORDER BY 2",
            None,
            &args,
        )? {
            out.push((row.get::<pg_sys::Oid>(1)?, row.get::<String>(2)?.unwrap_or_default()));
        }
        Ok(out)
    }))
}

/// Whether a relation with this OID exists now.
fn relation_exists(oid: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup; NULL when there is no such relation.
    !unsafe { pg_sys::get_rel_name(oid) }.is_null()
}

/// An identifier quoted as PostgreSQL's `quote_ident` quotes it (keywords too): for SQL
/// pgcdc builds and for names in messages.
pub(crate) fn quote_ident(name: &str) -> String {
    let Ok(c) = std::ffi::CString::new(name) else { return format!("\"{}\"", name.replace('"', "\"\"")) };
    // SAFETY: quote_identifier returns its argument or a palloc'd quoted copy.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::quote_identifier(c.as_ptr())) }.to_string_lossy().into_owned()
}

/// 42501 unless `role` may see every row of every table in `tables` (oid, display name):
/// SELECT on the table, and row-level security does not apply to it (pgcdc cannot apply
/// policies to change events). A table that no longer exists (None) can be read by superusers
/// only.
fn require_readable(role: pg_sys::Oid, feed: &Feed, tables: impl FnOnce() -> Vec<(Option<pg_sys::Oid>, String)>) {
    // Superusers read everything: the tables are not even looked up.
    if access::is_superuser(role) {
        return;
    }
    let mut unreadable = Vec::new();
    let mut row_security = Vec::new();
    let mut gone = Vec::new();
    for (oid, display) in tables() {
        let Some(oid) = oid else {
            gone.push(display);
            continue;
        };
        // SAFETY: ACL and RLS lookups in the syscache on the main thread; noError = true.
        let (select, rls) = unsafe {
            (
                pg_sys::pg_class_aclcheck(oid, role, pg_sys::ACL_SELECT as pg_sys::AclMode),
                pg_sys::check_enable_rls(oid, role, true),
            )
        };
        if select != pg_sys::AclResult::ACLCHECK_OK {
            unreadable.push(display);
        } else if rls == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 {
            row_security.push(display);
        }
    }
    let who = access::role_name(role);
    if !unreadable.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to read feed \"{}\": role {who} cannot SELECT {}", feed.name, unreadable.join(", ")),
            Some("Reading a feed requires SELECT on every table its publication publishes and on every table its events come from.".into()),
        );
    }
    if !row_security.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to read feed \"{}\": row-level security applies to role {who} on {}",
                feed.name,
                row_security.join(", ")
            ),
            Some("pgcdc cannot apply row security policies to change events: reading needs a role that bypasses them (BYPASSRLS, the table owner without FORCE ROW LEVEL SECURITY, or a superuser).".into()),
        );
    }
    if !gone.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to read feed \"{}\": its events come from {}, dropped since",
                feed.name,
                gone.join(", ")
            ),
            Some("Only a superuser can read events of dropped tables (a table created later under the same name is another table); acknowledge past them with pgcdc.ack(feed, commit_lsn, ordinal) to skip them.".into()),
        );
    }
}

/// `pgcdc.ack(feed, lsn, ordinal)`: see [`crate::position`] for the exact meaning. Returns
/// how many staged events it removed.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn ack(feed: Option<&str>, lsn: Option<PgLsn>, ordinal: default!(Option<i32>, "NULL")) -> i64 {
    let feed = required(feed, "feed");
    let lsn = required(lsn, "lsn");
    if let Some(o) = ordinal {
        if o < 0 {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("ordinal must not be negative, not {o}"),
                None,
            );
        }
    }
    if lsn.0 >= crate::streamed::PROVISIONAL {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("cannot acknowledge {}: no event is staged at a position beyond FFFFFFFF/0", lsn.0),
            Some("Acknowledge a position pgcdc.read returned for this feed.".into()),
        );
    }
    let id = authorize(feed, "acknowledge");
    let target = match ordinal {
        Some(o) => AckTarget::UpTo(Position::new(lsn.0, o as u32)),
        None => AckTarget::Transactions(lsn.0),
    };
    access::as_extension_owner(|| {
        let f = lock_by_id(id, RowLock::NoKeyUpdate).unwrap_or_else(|| missing_feed(feed));
        let last_staged = spi_ok(queue::last_staged(f.id));
        let (complete_lsn, target_staged): (Lsn, bool) = spi_ok(Spi::connect(|c| {
            let args = [f.id.into()];
            let complete =
                crate::plans::select(c, "SELECT complete_lsn FROM pgcdc.feed_runtime WHERE feed_id = $1", None, &args)?
                    .next()
                    .map(|row| row.get::<PgLsn>(1))
                    .transpose()?
                    .flatten()
                    .map(|l| l.0)
                    .unwrap_or_default();
            // Is the target itself staged for this feed: that event, or (whole transactions)
            // an event of that transaction?
            let wanted = target.position();
            let args = [f.id.into(), PgLsn(wanted.commit_lsn).into(), (wanted.ordinal as i32).into()];
            let staged = match target {
                AckTarget::UpTo(_) => crate::plans::select(
                    c,
                    "SELECT 1 FROM pgcdc.event WHERE feed_id = $1 AND commit_lsn = $2 AND ordinal = $3",
                    Some(1),
                    &args,
                )?,
                AckTarget::Transactions(_) => crate::plans::select(
                    c,
                    "SELECT 1 FROM pgcdc.event WHERE feed_id = $1 AND commit_lsn = $2 LIMIT 1",
                    Some(1),
                    &args[..2],
                )?,
            };
            Ok((complete, !staged.is_empty()))
        }));
        let target_staged = target_staged
            || spi_ok(crate::streamed::is_staged(
                f.id,
                target.position().commit_lsn,
                matches!(target, AckTarget::UpTo(_)).then_some(target.position().ordinal),
            ));
        let delivered = Delivered { acked: f.acked, last_staged, complete_lsn, target_staged };
        let new_acked = match delivered.resolve(target) {
            Ok(None) => return 0,
            Ok(Some(p)) => p,
            Err(e) => {
                let hint = match e {
                    AckError::BeyondDelivered { .. } | AckError::NotStaged { .. } => {
                        "Acknowledge a position pgcdc.read returned for this feed: its commit_lsn and ordinal, or a commit_lsn alone once the whole transaction was read."
                    }
                    AckError::TransactionIncomplete { .. } => {
                        "Acknowledge by position: pgcdc.ack(feed, commit_lsn, ordinal) of the last event you read."
                    }
                };
                raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e.to_string(), Some(hint.into()))
            }
        };
        acknowledge(&f, new_acked)
    })
}

/// `pgcdc.reset_feed(name)`: discards the feed's backlog. Every change committed up to now,
/// staged or not yet, is acknowledged: its staged events are removed and the worker skips the
/// rest as the slot sends it. Returns the new acknowledged LSN.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn reset_feed(name: Option<&str>) -> PgLsn {
    let name = required(name, "name");
    let id = authorize(name, "reset");
    access::as_extension_owner(|| {
        let f = lock_by_id(id, RowLock::NoKeyUpdate).unwrap_or_else(|| missing_feed(name));
        // Every transaction committed so far has its commit record before the insert position
        // (also those committed asynchronously, not yet written).
        // SAFETY: reads the WAL insert position.
        let now = Lsn(unsafe { pg_sys::GetXLogInsertRecPtr() });
        let to = Position::whole(now).max(f.acked);
        acknowledge(&f, to);
        PgLsn(to.commit_lsn)
    })
}

fn current_database() -> String {
    // SAFETY: MyDatabaseId is set in any backend connected to a database.
    let p = unsafe { pg_sys::get_database_name(pg_sys::MyDatabaseId) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: NUL-terminated palloc'd string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn database_encoding() -> String {
    // SAFETY: returns a pointer to a static encoding name.
    unsafe { CStr::from_ptr(pg_sys::GetDatabaseEncodingName()) }.to_string_lossy().into_owned()
}

fn setting(name: &str) -> Option<String> {
    spi_ok(Spi::connect(|c| {
        let args: [DatumWithOid; 1] = [name.into()];
        c.select("SELECT pg_catalog.current_setting($1, true)", None, &args)?.first().get_one::<String>()
    }))
}
