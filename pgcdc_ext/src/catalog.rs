//! The encoder's catalog lookups, answered with SPI from the worker's main thread, inside the
//! current staging transaction. The queries are the repository's `sql/type_info.sql` and
//! `sql/table_info.sql` (shared with the golden-fixture capture).
//!
//! They read the catalog as it is now, not as it was when the change was written: a table
//! whose primary key changed after the change was written is keyed by its new primary key
//! (Debezium does the same).

use pgcdc_core::catalog::{TableInfo, TypeRow};
use pgcdc_core::debezium::CatalogSource;
use pgcdc_core::Oid;
use pgrx::pg_sys;
use pgrx::prelude::*;

const TYPE_INFO_SQL: &str = include_str!("../../sql/type_info.sql");
const TABLE_INFO_SQL: &str = include_str!("../../sql/table_info.sql");

/// Catalog source backed by SPI; use only inside a transaction on the main thread.
pub struct SpiCatalog;

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
        .map_err(|e: pgrx::spi::Error| format!("type_info.sql: {e}"))
    }

    fn table_info(&mut self, relation_id: Oid) -> Result<TableInfo, String> {
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
        .map_err(|e: pgrx::spi::Error| format!("table_info.sql: {e}"))
    }
}
