//! Feeds: the `pgcdc.feed` catalog, feed options, and the SQL API.
//!
//! Every function validates everything before it changes anything, and reports problems as
//! errors with a real SQLSTATE and a hint. The only non-transactional step is the creation of
//! the replication slot in `create_feed` (it must exist when the function returns, so that
//! every change committed afterwards is captured); if that transaction does not commit, the
//! launcher drops the orphaned slot (see [`crate::launcher`]). `drop_feed` is transactional:
//! it deletes the feed and its staged events, and at commit wakes the launcher, which stops
//! the worker and drops the slot.

use std::collections::BTreeMap;

use pgcdc_core::debezium::{EncoderOptions, OptionError};
use pgcdc_core::Lsn;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB, PgXactCallbackEvent};
use serde_json::Value;

use crate::access;
use crate::datum::{JsonText, PgLsn};
use crate::gucs;
use crate::position::{AckError, AckTarget, Delivered, Position};

/// Longest feed name: the slot name `pgcdc_<name>` must fit in NAMEDATALEN.
pub const MAX_NAME_LEN: usize = 40;

/// Advisory-lock class of feed-slot creation/GC (with hashtext(slot name)) and of a feed's
/// worker (with the feed id): "pgcd".
pub const LOCK_CLASS_SLOT: i32 = 0x7067_6364;
pub const LOCK_CLASS_WORKER: i32 = 0x7067_6377;

/// Feed-level option keys (the rest are the Debezium encoder's, see [`EncoderOptions`]).
pub const FEED_KEYS: &[&str] = &["max_staged_rows", "max_staged_bytes", "batch_size"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Stage events in `pgcdc.event`; NOTIFY `pgcdc_<feed>` once per batch as a wake-up.
    Table,
    /// Send each event as a NOTIFY payload on `pgcdc_<feed>`; events over the payload limit
    /// are staged in `pgcdc.event` and the payload references them.
    Notify,
}

impl Sink {
    pub fn parse(s: &str) -> Option<Sink> {
        match s {
            "table" => Some(Sink::Table),
            "notify" => Some(Sink::Notify),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedState {
    Running,
    Paused,
    Error,
}

impl FeedState {
    pub fn parse(s: &str) -> FeedState {
        match s {
            "paused" => FeedState::Paused,
            "error" => FeedState::Error,
            _ => FeedState::Running,
        }
    }
}

/// Validated feed options: the encoder's, plus queue limits and batch size.
#[derive(Clone, Debug)]
pub struct FeedOptions {
    pub encoder: EncoderOptions,
    pub max_staged_rows: Option<i64>,
    pub max_staged_bytes: Option<i64>,
    pub batch_size: Option<i32>,
}

impl FeedOptions {
    /// Parses a feed's options object. `topic.prefix` defaults to the feed name.
    pub fn parse(feed_name: &str, options: &Value) -> Result<FeedOptions, String> {
        let map = options.as_object().ok_or_else(|| format!("options must be a JSON object, not {options}"))?;
        let mut encoder = EncoderOptions::default();
        if !map.contains_key("topic.prefix") {
            encoder.set("topic.prefix", feed_name).map_err(|e| e.to_string())?;
        }
        let mut out = FeedOptions { encoder, max_staged_rows: None, max_staged_bytes: None, batch_size: None };
        for (key, value) in map {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => return Err(format!("option \"{key}\" must be a string, number or boolean, not {other}")),
            };
            let count = |max: i64| -> Result<i64, String> {
                text.trim().parse::<i64>().ok().filter(|v| (0..=max).contains(v)).ok_or_else(|| {
                    format!("invalid value {text:?} for option \"{key}\"; expected an integer from 0 to {max}")
                })
            };
            match key.as_str() {
                "max_staged_rows" => out.max_staged_rows = Some(count(i64::MAX)?),
                "max_staged_bytes" => out.max_staged_bytes = Some(count(i64::MAX)?),
                "batch_size" => {
                    let v = count(1_000_000)?;
                    if v == 0 {
                        return Err("option \"batch_size\" must be at least 1".into());
                    }
                    out.batch_size = Some(v as i32);
                }
                _ => out.encoder.set(key, &text).map_err(|e| match e {
                    OptionError::UnknownKey(k) => format!("unknown option \"{k}\""),
                    other => other.to_string(),
                })?,
            }
        }
        Ok(out)
    }

    /// Queue cap in rows (0 = none): the feed's option, else `pgcdc.max_staged_rows`.
    pub fn max_rows(&self) -> i64 {
        self.max_staged_rows.unwrap_or_else(|| i64::from(gucs::MAX_STAGED_ROWS.get()))
    }

    /// Queue cap in bytes (0 = none): the feed's option, else `pgcdc.max_staged_bytes`.
    pub fn max_bytes(&self) -> i64 {
        self.max_staged_bytes.unwrap_or_else(|| i64::from(gucs::MAX_STAGED_BYTES_KB.get()) * 1024)
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or_else(|| gucs::BATCH_SIZE.get()).max(1) as usize
    }
}

fn all_option_keys() -> String {
    let mut keys: Vec<&str> = EncoderOptions::KNOWN_KEYS.to_vec();
    keys.extend_from_slice(FEED_KEYS);
    keys.join(", ")
}

/// One row of `pgcdc.feed`.
#[derive(Clone, Debug)]
pub struct Feed {
    pub id: i32,
    pub name: String,
    pub publication: String,
    pub slot_name: String,
    pub sink: Sink,
    /// The options as stored (jsonb text), to notice changes.
    pub options_text: String,
    pub owner: pg_sys::Oid,
    pub state: FeedState,
    pub acked: Position,
}

impl Feed {
    pub fn options(&self) -> Result<FeedOptions, String> {
        let value: Value = serde_json::from_str(&self.options_text).map_err(|e| e.to_string())?;
        FeedOptions::parse(&self.name, &value)
    }

    /// NOTIFY channel of the feed (feed names need no quoting).
    pub fn channel(&self) -> String {
        channel_name(&self.name)
    }
}

pub fn channel_name(feed: &str) -> String {
    format!("pgcdc_{feed}")
}

pub fn slot_name(feed: &str) -> String {
    format!("pgcdc_{feed}")
}

const FEED_COLUMNS: &str = "id, name, publication, slot_name, sink, options::text, owner::oid, \
                            state, acked_lsn, acked_ordinal";

fn feed_from_row(row: &pgrx::spi::SpiHeapTupleData<'_>) -> Result<Feed, pgrx::spi::Error> {
    let text = |i: usize| -> Result<String, pgrx::spi::Error> { Ok(row.get::<String>(i)?.unwrap_or_default()) };
    Ok(Feed {
        id: row.get::<i32>(1)?.unwrap_or_default(),
        name: text(2)?,
        publication: text(3)?,
        slot_name: text(4)?,
        sink: Sink::parse(&text(5)?).unwrap_or(Sink::Table),
        options_text: text(6)?,
        owner: row.get::<pg_sys::Oid>(7)?.unwrap_or(pg_sys::InvalidOid),
        state: FeedState::parse(&text(8)?),
        acked: Position::new(
            row.get::<PgLsn>(9)?.map(|l| l.0).unwrap_or_default(),
            row.get::<i32>(10)?.unwrap_or_default().max(0) as u32,
        ),
    })
}

/// The feed row by name (no lock). Callers hold whatever identity can read `pgcdc.feed`.
pub fn load_by_name(name: &str) -> Option<Feed> {
    spi_ok(Spi::connect(|c| {
        let args = [name.into()];
        let table = c.select(&format!("SELECT {FEED_COLUMNS} FROM pgcdc.feed WHERE name = $1"), Some(1), &args)?;
        table.into_iter().next().map(|row| feed_from_row(&row)).transpose()
    }))
}

/// The feed row by id (no lock): the worker's view of its feed.
pub fn load_by_id(id: i32) -> Option<Feed> {
    spi_ok(Spi::connect(|c| {
        let args = [id.into()];
        let table = c.select(&format!("SELECT {FEED_COLUMNS} FROM pgcdc.feed WHERE id = $1"), Some(1), &args)?;
        table.into_iter().next().map(|row| feed_from_row(&row)).transpose()
    }))
}

/// Locks the feed row (FOR UPDATE) and returns it; serialises changes and acknowledgements.
fn lock_by_name(name: &str) -> Option<Feed> {
    spi_ok(Spi::connect_mut(|c| {
        let args = [name.into()];
        let table =
            c.update(&format!("SELECT {FEED_COLUMNS} FROM pgcdc.feed WHERE name = $1 FOR UPDATE"), Some(1), &args)?;
        table.into_iter().next().map(|row| feed_from_row(&row)).transpose()
    }))
}

/// Unwraps a pgrx SPI result; SQL errors themselves already raised a PostgreSQL ERROR.
pub fn spi_ok<T>(r: Result<T, pgrx::spi::Error>) -> T {
    r.unwrap_or_else(|e| {
        ErrorReport::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("pgcdc: SPI: {e}"), "pgcdc")
            .report(PgLogLevel::ERROR);
        unreachable!()
    })
}

fn raise(code: PgSqlErrorCode, message: String, hint: Option<String>) -> ! {
    let mut report = ErrorReport::new(code, message, "pgcdc");
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!()
}

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

/// Quotes user input for a message, escaping control characters.
fn quote_for_message(s: &str) -> String {
    format!("{:?}", s)
}

fn missing_feed(name: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("feed {} does not exist", quote_for_message(name)),
        Some("SELECT name FROM pgcdc.feeds; lists the feeds you may use.".into()),
    )
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

/// Wakes processes at commit: the launcher and/or a feed worker (their latches).
fn wake_at_commit(launcher: bool, worker_of: Option<i32>) {
    let pids: Vec<i32> = spi_ok(Spi::connect(|c| {
        let mut pids = Vec::new();
        if launcher {
            for row in c.select(
                "SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'pgcdc launcher'",
                None,
                &[],
            )? {
                if let Some(pid) = row.get::<i32>(1)? {
                    pids.push(pid);
                }
            }
        }
        if let Some(id) = worker_of {
            let args = [id.into()];
            for row in c.select("SELECT pid FROM pgcdc.feed_runtime WHERE feed_id = $1", None, &args)? {
                if let Some(pid) = row.get::<i32>(1)? {
                    pids.push(pid);
                }
            }
        }
        Ok(pids)
    }));
    // Resolve the PGPROCs now (takes ProcArrayLock); only SetLatch runs at commit. A PGPROC
    // reused by another process by then just gets a spurious wake-up.
    let procs: Vec<usize> = pids
        .into_iter()
        // SAFETY: BackendPidGetProc returns NULL or a pointer into the shared PGPROC array.
        .map(|pid| unsafe { pg_sys::BackendPidGetProc(pid) } as usize)
        .filter(|p| *p != 0)
        .collect();
    if procs.is_empty() {
        return;
    }
    pgrx::register_xact_callback(PgXactCallbackEvent::Commit, move || {
        for p in procs {
            let proc_ = p as *mut pg_sys::PGPROC;
            // SAFETY: PGPROC entries live in shared memory for the life of the server.
            unsafe { pg_sys::SetLatch(&raw mut (*proc_).procLatch) };
        }
    });
}

// ------------------------------------------------------------------------------ SQL API

/// `pgcdc.create_feed(name, publication, sink, options, owner)`: see sql/pgcdc_finalize.sql.
#[pg_extern(volatile)]
fn create_feed(
    name: &str,
    publication: &str,
    sink: default!(&str, "'table'"),
    options: default!(JsonB, "'{}'"),
    owner: default!(Option<&str>, "NULL"),
) -> PgLsn {
    let caller = access::current_role();
    validate_name(name);
    let sink = Sink::parse(sink).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid sink {}", quote_for_message(sink)),
            Some("sink is 'table' (stage events in pgcdc.event) or 'notify' (NOTIFY each event).".into()),
        )
    });
    parse_options(name, &options.0);
    access::require_admin(caller, "create a feed");

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
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_catalog.pg_publication_tables \
             WHERE pubname = $1 AND NOT pg_catalog.has_table_privilege($2::oid, \
             format('%I.%I', schemaname, tablename), 'SELECT') ORDER BY 1",
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

    let slot = slot_name(name);
    let options_text = options.0.to_string();
    access::as_extension_owner(|| {
        let max_feeds = i64::from(gucs::MAX_FEEDS.get());
        let (duplicate, count, slot_active): (bool, i64, Option<bool>) = spi_ok(Spi::connect(|c| {
            // Serialises with the launcher's orphan-slot collection (see launcher.rs).
            let args = [LOCK_CLASS_SLOT.into(), slot.as_str().into()];
            c.select("SELECT pg_catalog.pg_advisory_xact_lock($1, hashtext($2))", None, &args)?;
            let args = [name.into()];
            let duplicate = c.select("SELECT 1 FROM pgcdc.feed WHERE name = $1", Some(1), &args)?.len() == 1;
            let count = c.select("SELECT count(*) FROM pgcdc.feed", None, &[])?.first().get_one::<i64>()?.unwrap_or(0);
            let args = [slot.as_str().into()];
            let slot_active = c
                .select("SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1", None, &args)?
                .first()
                .get_one::<bool>()
                .ok()
                .flatten();
            Ok((duplicate, count, slot_active))
        }));
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
            // No feed owns it (checked above under the lock): left over by a dropped feed or an
            // aborted create_feed. Wait for a stopping worker to let go, then drop it.
            drop_orphan_slot(&slot);
        }
        let consistent: PgLsn = spi_ok(Spi::connect(|c| {
            let args = [slot.as_str().into()];
            c.select("SELECT lsn FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')", None, &args)?
                .first()
                .get_one::<PgLsn>()
        }))
        .unwrap_or_default();
        spi_ok(Spi::connect_mut(|c| {
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
                 VALUES ($1, $2, $3, $4, $5::jsonb, $6::oid::regrole)",
                None,
                &args,
            )?;
            Ok(())
        }));
        wake_at_commit(true, None);
        consistent
    })
}

/// Drops an inactive slot no feed owns, waiting up to 10 s for a stopping worker's WAL sender.
fn drop_orphan_slot(slot: &str) {
    for _ in 0..100 {
        let active: Option<bool> = spi_ok(Spi::connect(|c| {
            let args = [slot.into()];
            c.select("SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1", None, &args)?
                .first()
                .get_one::<bool>()
        }));
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
fn drop_feed(name: &str, if_exists: default!(bool, false)) -> bool {
    let caller = access::current_role();
    let feed = access::as_extension_owner(|| lock_by_name(name));
    let Some(feed) = feed else {
        if if_exists {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                format!("feed {} does not exist, skipping", quote_for_message(name)),
                "pgcdc",
            )
            .report(PgLogLevel::NOTICE);
            return false;
        }
        missing_feed(name)
    };
    access::require_feed_access(caller, feed.owner, &feed.name, "drop");
    access::as_extension_owner(|| {
        wake_at_commit(true, Some(feed.id));
        spi_ok(Spi::connect_mut(|c| {
            let args = [feed.id.into()];
            c.update("DELETE FROM pgcdc.event WHERE feed_id = $1", None, &args)?;
            c.update("DELETE FROM pgcdc.feed_runtime WHERE feed_id = $1", None, &args)?;
            c.update("DELETE FROM pgcdc.feed WHERE id = $1", None, &args)?;
            Ok(())
        }));
    });
    true
}

fn set_state(name: &str, action: &str, to: &str) {
    let caller = access::current_role();
    let feed = access::as_extension_owner(|| lock_by_name(name)).unwrap_or_else(|| missing_feed(name));
    access::require_feed_access(caller, feed.owner, &feed.name, action);
    access::as_extension_owner(|| {
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
fn pause_feed(name: &str) {
    set_state(name, "pause", "paused");
}

/// `pgcdc.resume_feed(name)`: restarts a paused feed, or one stopped by an error.
#[pg_extern(volatile)]
fn resume_feed(name: &str) {
    set_state(name, "resume", "running");
}

/// `pgcdc.alter_feed(name, options)`: merges `options` into the feed's options (a JSON null
/// removes a key). The worker restarts to apply them; events already staged keep their form.
#[pg_extern(volatile)]
fn alter_feed(name: &str, options: JsonB) -> JsonB {
    let caller = access::current_role();
    let feed = access::as_extension_owner(|| lock_by_name(name)).unwrap_or_else(|| missing_feed(name));
    access::require_feed_access(caller, feed.owner, &feed.name, "alter");
    let Some(changes) = options.0.as_object() else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid feed options: options must be a JSON object, not {}", options.0),
            Some(format!("Known options: {}.", all_option_keys())),
        )
    };
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
    parse_options(&feed.name, &merged);
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

/// `pgcdc.read(feed, max_events, after_lsn, after_ordinal)`: the next staged events after the
/// acknowledged position (or after the given position), in position order. Reading does not
/// consume; `pgcdc.ack` does.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile)]
fn read(
    feed: &str,
    max_events: default!(i32, 100),
    after_lsn: default!(Option<PgLsn>, "NULL"),
    after_ordinal: default!(Option<i32>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(commit_lsn, PgLsn),
        name!(ordinal, i32),
        name!(lsn, PgLsn),
        name!(xid, Option<i64>),
        name!(op, String),
        name!(schema_name, String),
        name!(table_name, String),
        name!(topic, String),
        name!(key, Option<JsonText>),
        name!(event, Option<JsonText>),
        name!(headers, Option<JsonText>),
    ),
> {
    let caller = access::current_role();
    if !(1..=1_000_000).contains(&max_events) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_events must be between 1 and 1000000, not {max_events}"),
            None,
        );
    }
    let f = access::as_extension_owner(|| load_by_name(feed)).unwrap_or_else(|| missing_feed(feed));
    access::require_feed_access(caller, f.owner, &f.name, "read");
    require_select_on_publication(caller, &f);
    let after = match (after_lsn, after_ordinal) {
        (None, _) => f.acked,
        (Some(l), o) => {
            Position::new(l.0, o.map_or(crate::position::WHOLE_TRANSACTION, |o| o.max(0) as u32)).max(f.acked)
        }
    };
    let rows = access::as_extension_owner(|| {
        spi_ok(Spi::connect(|c| {
            let args = [
                f.id.into(),
                PgLsn(after.commit_lsn).into(),
                (after.ordinal as i32).into(),
                i64::from(max_events).into(),
            ];
            let mut rows = Vec::new();
            for row in c.select(
                "SELECT commit_lsn, ordinal, lsn, xid, op, schema_name, table_name, topic, key, value, \
                 headers::text FROM pgcdc.event \
                 WHERE feed_id = $1 AND (commit_lsn, ordinal) > ($2, $3) \
                 ORDER BY commit_lsn, ordinal LIMIT $4",
                None,
                &args,
            )? {
                rows.push((
                    row.get::<PgLsn>(1)?.unwrap_or_default(),
                    row.get::<i32>(2)?.unwrap_or_default(),
                    row.get::<PgLsn>(3)?.unwrap_or_default(),
                    row.get::<i64>(4)?,
                    row.get::<String>(5)?.unwrap_or_default(),
                    row.get::<String>(6)?.unwrap_or_default(),
                    row.get::<String>(7)?.unwrap_or_default(),
                    row.get::<String>(8)?.unwrap_or_default(),
                    row.get::<String>(9)?.map(JsonText),
                    row.get::<String>(10)?.map(JsonText),
                    row.get::<String>(11)?.map(JsonText),
                ));
            }
            Ok(rows)
        }))
    });
    TableIterator::new(rows)
}

/// 42501 unless `role` can SELECT every table the feed's publication publishes now.
fn require_select_on_publication(role: pg_sys::Oid, feed: &Feed) {
    let unreadable: Vec<String> = spi_ok(Spi::connect(|c| {
        let args = [feed.publication.as_str().into(), role.into()];
        let mut out = Vec::new();
        for row in c.select(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_catalog.pg_publication_tables \
             WHERE pubname = $1 AND NOT pg_catalog.has_table_privilege($2::oid, \
             format('%I.%I', schemaname, tablename), 'SELECT') ORDER BY 1",
            None,
            &args,
        )? {
            out.push(row.get::<String>(1)?.unwrap_or_default());
        }
        Ok(out)
    }));
    if !unreadable.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to read feed \"{}\": role {} cannot SELECT {}",
                feed.name,
                access::role_name(role),
                unreadable.join(", ")
            ),
            Some("Reading a feed requires SELECT on every table its publication publishes.".into()),
        );
    }
}

/// `pgcdc.ack(feed, lsn, ordinal)`: see [`crate::position`] for the exact meaning. Returns
/// how many staged events it removed.
#[pg_extern(volatile)]
fn ack(feed: &str, lsn: PgLsn, ordinal: default!(Option<i32>, "NULL")) -> i64 {
    let caller = access::current_role();
    if let Some(o) = ordinal {
        if o < 0 {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("ordinal must not be negative, not {o}"),
                None,
            );
        }
    }
    let f = access::as_extension_owner(|| lock_by_name(feed)).unwrap_or_else(|| missing_feed(feed));
    access::require_feed_access(caller, f.owner, &f.name, "acknowledge");
    let target = match ordinal {
        Some(o) => AckTarget::UpTo(Position::new(lsn.0, o as u32)),
        None => AckTarget::Transactions(lsn.0),
    };
    access::as_extension_owner(|| {
        let (last_staged, complete_lsn): (Option<Position>, Lsn) = spi_ok(Spi::connect(|c| {
            let args = [f.id.into()];
            let mut last = None;
            for row in c.select(
                "SELECT commit_lsn, ordinal FROM pgcdc.event WHERE feed_id = $1 \
                 ORDER BY commit_lsn DESC, ordinal DESC LIMIT 1",
                None,
                &args,
            )? {
                last = Some(Position::new(
                    row.get::<PgLsn>(1)?.unwrap_or_default().0,
                    row.get::<i32>(2)?.unwrap_or_default().max(0) as u32,
                ));
            }
            let complete = c
                .select("SELECT complete_lsn FROM pgcdc.feed_runtime WHERE feed_id = $1", None, &args)?
                .next()
                .map(|row| row.get::<PgLsn>(1))
                .transpose()?
                .flatten()
                .map(|l| l.0)
                .unwrap_or_default();
            Ok((last, complete))
        }));
        let delivered = Delivered { acked: f.acked, last_staged, complete_lsn };
        let new_acked = match delivered.resolve(target) {
            Ok(None) => return 0,
            Ok(Some(p)) => p,
            Err(e) => {
                let hint = match e {
                    AckError::BeyondDelivered { .. } => {
                        "Acknowledge a position pgcdc.read returned: its commit_lsn and ordinal, or a commit_lsn alone once the whole transaction was read."
                    }
                    AckError::TransactionIncomplete { .. } => {
                        "Acknowledge by position: pgcdc.ack(feed, commit_lsn, ordinal) of the last event you read."
                    }
                };
                raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e.to_string(), Some(hint.into()))
            }
        };
        let removed = spi_ok(Spi::connect_mut(|c| {
            let args = [f.id.into(), PgLsn(new_acked.commit_lsn).into(), (new_acked.ordinal as i32).into()];
            let removed = c
                .update(
                    "WITH gone AS (DELETE FROM pgcdc.event WHERE feed_id = $1 \
                     AND (commit_lsn, ordinal) <= ($2, $3) RETURNING 1) SELECT count(*) FROM gone",
                    None,
                    &args,
                )?
                .first()
                .get_one::<i64>()?
                .unwrap_or(0);
            c.update(
                "UPDATE pgcdc.feed SET acked_lsn = $2, acked_ordinal = $3, acked_at = now() WHERE id = $1",
                None,
                &args,
            )?;
            Ok(removed)
        }));
        wake_at_commit(false, Some(f.id));
        removed
    })
}

fn current_database() -> String {
    // SAFETY: MyDatabaseId is set in any backend connected to a database.
    let p = unsafe { pg_sys::get_database_name(pg_sys::MyDatabaseId) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: NUL-terminated palloc'd string.
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn setting(name: &str) -> Option<String> {
    spi_ok(Spi::connect(|c| {
        let args: [DatumWithOid; 1] = [name.into()];
        c.select("SELECT pg_catalog.current_setting($1, true)", None, &args)?.first().get_one::<String>()
    }))
}
