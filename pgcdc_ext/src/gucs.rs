//! Server settings `pgcdc.<name>`. All are read on the worker's main thread only (P4).
//!
//! | setting | default | context | meaning |
//! |---|---|---|---|
//! | `pgcdc.database` | `postgres` | postmaster | the database whose `pgcdc.feed` the launcher serves |
//! | `pgcdc.max_feeds` | 16 | sighup | how many feeds `create_feed` allows |
//! | `pgcdc.batch_size` | 10000 | sighup | most pgoutput messages staged in one transaction |
//! | `pgcdc.max_staged_rows` | 1000000 | sighup | queue cap in events per feed (0 = none) |
//! | `pgcdc.max_staged_bytes` | 1GB | sighup | queue cap in event bytes per feed (0 = none) |
//! | `pgcdc.status_interval` | 1s | sighup | how often the walsender hears the acknowledged LSN |
//! | `pgcdc.launcher_interval` | 5s | sighup | launcher reconcile period (it is also woken by SQL calls) |
//! | `pgcdc.max_event_size` | 1GB - 1kB | sighup | an event whose JSON (key + value + headers) is larger stops its feed with an error instead of being staged (PostgreSQL cannot store a value of 1 GB or more) |
//! | `pgcdc.replication_conninfo` | empty | sighup | the workers' replication connection, a libpq connection string (`host=127.0.0.1 user=repl password='a b'` or `postgresql://repl@localhost`); what it leaves out is this server's first unix socket, port, the bootstrap superuser and the feed's database; a password may also come from the password file |
//!
//! Per feed, `max_staged_rows`, `max_staged_bytes` and `batch_size` can be overridden in the
//! feed's options (see [`crate::feed`]).

use std::ffi::CStr;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

pub static DATABASE: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(Some(c"postgres"));
pub static MAX_FEEDS: GucSetting<i32> = GucSetting::<i32>::new(16);
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static MAX_STAGED_ROWS: GucSetting<i32> = GucSetting::<i32>::new(1_000_000);
/// In kB (GUC_UNIT_KB), so `1GB` in postgresql.conf works.
pub static MAX_STAGED_BYTES_KB: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
/// In kB; at most 1 GB - 1 kB, which keeps every staged value below PostgreSQL's 1 GB limit.
pub static MAX_EVENT_SIZE_KB: GucSetting<i32> = GucSetting::<i32>::new(MAX_EVENT_SIZE_LIMIT_KB);
pub const MAX_EVENT_SIZE_LIMIT_KB: i32 = 1024 * 1024 - 1;
pub static STATUS_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static LAUNCHER_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(5000);
pub static REPLICATION_CONNINFO: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

pub fn init() {
    GucRegistry::define_string_guc(
        c"pgcdc.database",
        c"Database whose feeds the pgcdc launcher runs.",
        c"pgcdc.create_feed only works in this database. Changing it needs a restart.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgcdc.max_feeds",
        c"Maximum number of pgcdc feeds.",
        c"Each feed uses a background worker, a WAL sender and a replication slot.",
        &MAX_FEEDS,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgcdc.batch_size",
        c"Maximum pgoutput messages a feed worker stages in one transaction.",
        c"",
        &BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgcdc.max_staged_rows",
        c"Per-feed cap on staged, unacknowledged events (0 = no cap).",
        c"At the cap the feed worker stops reading its slot; WAL is retained instead.",
        &MAX_STAGED_ROWS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgcdc.max_staged_bytes",
        c"Per-feed cap on the bytes of staged, unacknowledged events (0 = no cap).",
        c"At the cap the feed worker stops reading its slot; WAL is retained instead.",
        &MAX_STAGED_BYTES_KB,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"pgcdc.max_event_size",
        c"Largest event (key + value + headers JSON) a feed stages; a larger one stops the feed with an error.",
        c"At most 1GB - 1kB: PostgreSQL cannot store a value of 1 GB or more.",
        &MAX_EVENT_SIZE_KB,
        1,
        MAX_EVENT_SIZE_LIMIT_KB,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"pgcdc.status_interval",
        c"How often a feed worker reports its acknowledged position to the WAL sender.",
        c"",
        &STATUS_INTERVAL_MS,
        100,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pgcdc.launcher_interval",
        c"How often the pgcdc launcher reconciles feeds with running workers.",
        c"SQL calls that change feeds also wake it at commit.",
        &LAUNCHER_INTERVAL_MS,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"pgcdc.replication_conninfo",
        c"Replication connection of feed workers: a libpq connection string (key=value or URL).",
        c"What it leaves out: this server's first unix socket directory and port, as the bootstrap superuser.",
        &REPLICATION_CONNINFO,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
}

/// `pgcdc.max_event_size` in bytes.
pub fn max_event_size() -> usize {
    MAX_EVENT_SIZE_KB.get().clamp(1, MAX_EVENT_SIZE_LIMIT_KB) as usize * 1024
}

/// `pgcdc.database` as a Rust string.
pub fn database() -> String {
    string(&DATABASE).unwrap_or_else(|| "postgres".to_owned())
}

/// `pgcdc.replication_conninfo`, or None when empty.
pub fn replication_conninfo() -> Option<String> {
    string(&REPLICATION_CONNINFO).filter(|s| !s.trim().is_empty())
}

fn string(setting: &GucSetting<Option<std::ffi::CString>>) -> Option<String> {
    setting.get().map(|c: std::ffi::CString| CStr::to_string_lossy(&c).into_owned())
}
