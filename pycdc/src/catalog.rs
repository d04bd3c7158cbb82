//! Catalog lookups for the encoder over an ordinary SQL session: user-defined types
//! (`sql/type_info.sql`) and primary keys, defaults and NOT NULL (`sql/table_info.sql`).
//!
//! The encoder asks through the synchronous `CatalogSource` trait while it handles a Relation
//! message, so the reader fetches the answers first (asynchronously) and hands them over in a
//! [`Prefetched`].

use pgcdc_core::catalog::{TableInfo, TypeRow};
use pgcdc_core::debezium::CatalogSource;
use pgcdc_core::pgoutput::Relation;
use pgcdc_core::Oid;

use crate::errors::PgError;
use pgcdc_wire::ConnParams;

const TYPE_INFO_SQL: &str = include_str!("../../sql/type_info.sql");
const TABLE_INFO_SQL: &str = include_str!("../../sql/table_info.sql");

/// A lazily opened SQL session for catalog queries.
pub struct CatalogConn {
    params: ConnParams,
    client: Option<tokio_postgres::Client>,
    type_stmt: Option<tokio_postgres::Statement>,
    table_stmt: Option<tokio_postgres::Statement>,
}

impl CatalogConn {
    pub fn new(params: ConnParams) -> Self {
        let mut params = params;
        params.application_name = format!("{} catalog", params.application_name);
        CatalogConn { params, client: None, type_stmt: None, table_stmt: None }
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client, PgError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let (client, conn) = crate::sql::connect_sql(&self.params).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let err = |e| PgError::from_tokio_postgres(e, &self.params);
            crate::sql::pin_search_path(&client).await.map_err(err)?;
            self.type_stmt = Some(client.prepare(TYPE_INFO_SQL).await.map_err(err)?);
            self.table_stmt = Some(client.prepare(TABLE_INFO_SQL).await.map_err(err)?);
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("client was just set"))
    }

    /// Everything the encoder asks about `rel` at its Relation message.
    pub async fn prefetch(&mut self, rel: &Relation) -> Result<Prefetched, PgError> {
        let oids = pgcdc_core::debezium::user_types(rel);
        let params = self.params.clone();
        let err = |e| PgError::from_tokio_postgres(e, &params);
        self.client().await?;
        let client = self.client.as_ref().expect("connected");
        let mut types = Vec::new();
        if !oids.is_empty() {
            let stmt = self.type_stmt.as_ref().expect("prepared");
            for row in client.query(stmt, &[&oids]).await.map_err(err)? {
                types.push(TypeRow {
                    oid: row.try_get(0).map_err(err)?,
                    namespace: row.try_get(1).map_err(err)?,
                    name: row.try_get(2).map_err(err)?,
                    typtype: row.try_get::<_, String>(3).map_err(err)?.chars().next().unwrap_or('b'),
                    category: row.try_get::<_, String>(4).map_err(err)?.chars().next().unwrap_or('U'),
                    element: row.try_get(5).map_err(err)?,
                    base_type: row.try_get(6).map_err(err)?,
                    base_typmod: row.try_get(7).map_err(err)?,
                    enum_labels: row.try_get(8).map_err(err)?,
                    attribute_names: row.try_get(9).map_err(err)?,
                    attribute_types: row.try_get(10).map_err(err)?,
                    attribute_typmods: row.try_get(11).map_err(err)?,
                });
            }
        }
        let stmt = self.table_stmt.as_ref().expect("prepared");
        let table = match client.query_opt(stmt, &[&rel.id]).await.map_err(err)? {
            Some(row) => Some(TableInfo::from_row(
                row.try_get(0).map_err(err)?,
                row.try_get(1).map_err(err)?,
                row.try_get(2).map_err(err)?,
                row.try_get(3).map_err(err)?,
            )),
            None => None,
        };
        Ok(Prefetched { types, table })
    }
}

/// Catalog answers fetched before the encoder needs them.
#[derive(Default)]
pub struct Prefetched {
    pub types: Vec<TypeRow>,
    pub table: Option<TableInfo>,
}

impl CatalogSource for Prefetched {
    fn type_rows(&mut self, _oids: &[Oid]) -> Result<Vec<TypeRow>, String> {
        Ok(std::mem::take(&mut self.types))
    }

    fn table_info(&mut self, relation_id: Oid) -> Result<TableInfo, String> {
        self.table.clone().ok_or_else(|| format!("relation {relation_id} not found in the catalog"))
    }
}
