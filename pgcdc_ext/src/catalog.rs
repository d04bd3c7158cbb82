//! The encoder's catalog lookups, answered with SPI from the worker's main thread, inside the
//! current staging transaction. The queries are the repository's `sql/type_info.sql` and
//! `sql/table_info.sql` (shared with the golden-fixture capture).
//!
//! A lookup answers for the relation version the Relation message describes, or a later one,
//! never an earlier one. The staging transaction's snapshot (taken when it began) can be older
//! than the DDL that produced the message (the stream thread keeps receiving while a batch is
//! staged), and the backend's catalog caches may not have processed that DDL's invalidations
//! yet. So each lookup first waits until the decoded transaction itself is no longer running
//! (DDL in the same transaction as the change: its WAL can arrive before its commit is
//! visible), then processes pending invalidations and runs under the latest snapshot.
//!
//! The catalog is read as it is now, not as it was when the change was written: a table
//! altered again since (say its primary key changed) is described as it is now (Debezium does
//! the same).

use pgcdc_core::catalog::{TableInfo, TypeRow};
use pgcdc_core::debezium::CatalogSource;
use pgcdc_core::Oid;
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::prelude::*;

const TYPE_INFO_SQL: &str = include_str!("../../sql/type_info.sql");
const TABLE_INFO_SQL: &str = include_str!("../../sql/table_info.sql");

/// How long a lookup waits for the decoded transaction to become visible (it normally takes
/// microseconds: its commit record is written just before; a commit waiting for a synchronous
/// standby takes longer, and the lookup must not wait for it forever).
const VISIBILITY_WAIT: Duration = Duration::from_secs(10);

/// Catalog source backed by SPI; use only inside a transaction on the main thread.
#[derive(Debug, Default)]
pub struct SpiCatalog {
    /// The transaction being decoded (between its Begin and Commit).
    xid: Option<u32>,
}

impl SpiCatalog {
    /// The transaction whose messages follow (None: outside a transaction).
    pub fn set_transaction(&mut self, xid: Option<u32>) {
        self.xid = xid;
    }

    /// Runs `f` (SPI) against the catalog as it is now: see the module docs.
    fn current<R>(&self, f: impl FnOnce() -> R) -> R {
        if let Some(xid) = self.xid {
            let since = Instant::now();
            // SAFETY: a shared-memory check of a transaction id of this server.
            while unsafe { pg_sys::TransactionIdIsInProgress(xid.into()) } && since.elapsed() < VISIBILITY_WAIT {
                std::thread::sleep(Duration::from_millis(1));
                pgrx::check_for_interrupts!();
            }
        }
        // SAFETY: on the main thread inside a transaction; the snapshot pushed here is popped
        // below, or by the transaction's abort on ERROR. Read-only SPI statements run under the
        // active snapshot, the others take a new one each (READ COMMITTED).
        unsafe {
            pg_sys::AcceptInvalidationMessages();
            pg_sys::InvalidateCatalogSnapshot();
            pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
        }
        let result = f();
        // SAFETY: pops the snapshot pushed above.
        unsafe { pg_sys::PopActiveSnapshot() };
        result
    }
}

fn first_char(s: Option<String>) -> char {
    s.and_then(|s| s.chars().next()).unwrap_or(' ')
}

impl CatalogSource for SpiCatalog {
    fn type_rows(&mut self, oids: &[Oid]) -> Result<Vec<TypeRow>, String> {
        let oids: Vec<pg_sys::Oid> = oids.iter().map(|o| pg_sys::Oid::from(*o)).collect();
        // The file's name columns are of type `name`: read them as text.
        let sql = format!(
            "SELECT oid, namespace::text, name::text, typtype, category, element, base_type, \
             base_typmod, enum_labels, attribute_names, attribute_types, attribute_typmods \
             FROM ({}) AS t ORDER BY oid",
            TYPE_INFO_SQL.trim().trim_end_matches(';')
        );
        self.current(|| {
            Spi::connect(|c| {
                let args = [oids.into()];
                let mut rows = Vec::new();
                for row in c.select(&sql, None, &args)? {
                    let oid = |i: usize| -> Result<Oid, pgrx::spi::Error> {
                        Ok(row.get::<pg_sys::Oid>(i)?.map(u32::from).unwrap_or(0))
                    };
                    rows.push(TypeRow {
                        oid: oid(1)?,
                        namespace: row.get::<String>(2)?.unwrap_or_default(),
                        name: row.get::<String>(3)?.unwrap_or_default(),
                        typtype: first_char(row.get::<String>(4)?),
                        category: first_char(row.get::<String>(5)?),
                        element: oid(6)?,
                        base_type: oid(7)?,
                        base_typmod: row.get::<i32>(8)?.unwrap_or(-1),
                        enum_labels: row.get::<Vec<String>>(9)?.unwrap_or_default(),
                        attribute_names: row.get::<Vec<String>>(10)?.unwrap_or_default(),
                        attribute_types: row
                            .get::<Vec<pg_sys::Oid>>(11)?
                            .unwrap_or_default()
                            .into_iter()
                            .map(u32::from)
                            .collect(),
                        attribute_typmods: row.get::<Vec<i32>>(12)?.unwrap_or_default(),
                    });
                }
                Ok(rows)
            })
        })
        .map_err(|e: pgrx::spi::Error| format!("type_info.sql: {e}"))
    }

    fn table_info(&mut self, relation_id: Oid) -> Result<TableInfo, String> {
        self.current(|| {
            Spi::connect(|c| {
                let args = [pg_sys::Oid::from(relation_id).into()];
                let table = c.select(TABLE_INFO_SQL.trim().trim_end_matches(';'), Some(1), &args)?;
                let row = table.first();
                let list = |name: &str| -> Result<Vec<String>, pgrx::spi::Error> {
                    Ok(row.get_by_name::<Vec<String>, _>(name)?.unwrap_or_default())
                };
                Ok(TableInfo::from_row(
                    list("primary_key")?,
                    list("default_columns")?,
                    list("default_exprs")?,
                    list("not_null_columns")?,
                ))
            })
        })
        .map_err(|e: pgrx::spi::Error| format!("table_info.sql: {e}"))
    }
}
