//! pgcdc: change-data-capture feeds that live inside PostgreSQL.
//!
//! `CREATE EXTENSION pgcdc` (library preloaded) gives SQL functions to manage **feeds**. A
//! feed is one publication + one pgoutput logical replication slot + one background worker +
//! one staging target (the UNLOGGED queue table `pgcdc.event`, or NOTIFY).
//!
//! ```text
//!  _PG_init (postmaster)        registers GUCs and the static launcher
//!  launcher (pgcdc.database)    reconciles pgcdc.feed with running feed workers,
//!                               drops replication slots (pgcdc's own) whose feed is gone
//!  feed worker (one per feed)   slot --walsender--> stream thread --channel--> main thread:
//!                               decode, encode Debezium JSON, stage one batch per transaction,
//!                               NOTIFY, report flush = acknowledged position to the walsender;
//!                               snapshot chunks read between watermarks, staged at the high one
//!  SQL API (any backend)        create/drop/pause/resume/alter feeds, read, ack, feed_status
//! ```
//!
//! Module map: [`gucs`] settings, [`datum`] the `pg_lsn` and `json` datums, [`access`] who may do what,
//! [`feed`] the catalog and the SQL API, [`error`] errors with a SQLSTATE and a hint,
//! [`position`] the acknowledgement arithmetic (pure),
//! [`plans`] SPI statements planned once per backend, [`launcher`] and [`worker`] the background workers, [`stream`] the replication thread,
//! [`queue`] staging, [`slot`] the registry of replication slots pgcdc created, [`snapshot`]
//! the existing rows read in chunks beside the stream, [`catalog`] type/table lookups for the
//! encoder.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

pub mod access;
pub mod catalog;
pub mod datum;
pub mod error;
pub mod feed;
pub mod gucs;
pub mod launcher;
pub mod plans;
pub mod position;
pub mod queue;
pub mod slot;
pub mod snapshot;
pub mod stream;
pub mod streamed;
pub mod worker;

::pgrx::pg_module_magic!(name, version);

// The hand-written schema (tables, views, role) runs before the generated functions; the
// comments and grants on those functions run last.
extension_sql_file!("../../sql/pgcdc_schema.sql", name = "pgcdc_schema", bootstrap);
extension_sql_file!("../../sql/pgcdc_finalize.sql", name = "pgcdc_finalize", finalize);

/// Library entry point: in the postmaster (shared_preload_libraries) register the GUCs and the
/// launcher; anywhere else refuse, because feeds need the launcher and its workers.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a plain read of a PostgreSQL global, on the main thread during library load.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if !preloading {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pgcdc must be loaded via shared_preload_libraries",
            "_PG_init",
        )
        .set_hint(
            "Add pgcdc to shared_preload_libraries in postgresql.conf (and set wal_level = logical), \
             then restart the server.",
        )
        .report(PgLogLevel::ERROR);
        return;
    }
    gucs::init();
    launcher::register();
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`: the test cluster preloads the library like production does.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'pgcdc'",
            "wal_level = logical",
            "max_replication_slots = 10",
            "max_wal_senders = 10",
            "pgcdc.database = 'pgrx_tests'",
        ]
    }
}
