//! `_query_json`: the feed management helpers of the Python package (`pgcdc.create_feed`...)
//! run their statements through it.

use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::PgError;
use crate::signal::Op;
use pgcdc_wire::ConnParams;

/// Runs one statement on a short-lived session; returns the rows as JSON text of a list of
/// objects (the feed management helpers build on it).
#[pyfunction]
#[pyo3(signature = (dsn, sql, params, connect_timeout=None))]
pub(super) fn _query_json(
    dsn: &str,
    sql: String,
    params: Vec<Option<String>>,
    connect_timeout: Option<f64>,
) -> PyResult<Op> {
    let mut conn = ConnParams::from_dsn(dsn).map_err(PgError::Interface)?;
    if let Some(t) = connect_timeout {
        conn.connect_timeout = crate::seconds("connect_timeout", t)?.max(Duration::from_millis(1));
    }
    Ok(Op::spawn(async move {
        let (client, connection) = crate::sql::connect_sql(&conn).await?;
        let driver = tokio::spawn(connection);
        let wrapped =
            format!("SELECT coalesce(pg_catalog.json_agg(q), '[]'::pg_catalog.json)::pg_catalog.text FROM ({sql}) q");
        let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let r = match crate::sql::pin_search_path(&client).await {
            Ok(()) => client.query_one(&wrapped, &p).await,
            Err(e) => Err(e),
        }
        .map_err(|e| PgError::from_tokio_postgres(e, &conn));
        drop(client);
        let _ = driver.await;
        Ok(r?.get::<_, String>(0))
    }))
}
