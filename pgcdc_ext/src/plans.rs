//! SPI statements planned once per backend: the ones `pgcdc.read`, `pgcdc.ack` and each
//! staging step run every time go through [`select`] / [`update`], which keep one plan per
//! statement text (and argument types) for the backend's lifetime. Parsing and planning them
//! on every call was about 45% of the time of a `pgcdc.read` of one event.
//!
//! PostgreSQL's plan cache revalidates kept plans: after DDL on what they use (even a dropped
//! and re-created extension) they are analysed and planned again, under the search_path they
//! were prepared with; every statement here is schema-qualified anyway. Permissions are
//! checked when a plan runs, as the user running it. Kept plans are never freed: they live as
//! long as the backend (nothing of SPI runs while the process exits).

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult, SpiTupleTable};

/// A kept plan and what it was prepared for.
struct Kept {
    types: Vec<pg_sys::Oid>,
    mutating: bool,
    plan: &'static OwnedPreparedStatement,
}

thread_local! {
    /// By statement text (the backend is single-threaded: one cache per backend).
    static KEPT: RefCell<HashMap<Box<str>, Vec<Kept>>> = RefCell::new(HashMap::new());
}

/// Runs a read-only statement (like [`SpiClient::select`]) through its kept plan.
pub fn select<'c>(
    c: &SpiClient<'c>,
    sql: &str,
    limit: Option<libc::c_long>,
    args: &[DatumWithOid<'_>],
) -> SpiResult<SpiTupleTable<'c>> {
    c.select(kept(c, sql, args, false)?, limit, args)
}

/// Runs a statement that writes or locks (like [`SpiClient::update`]) through its kept plan.
pub fn update<'c>(
    c: &mut SpiClient<'c>,
    sql: &str,
    limit: Option<libc::c_long>,
    args: &[DatumWithOid<'_>],
) -> SpiResult<SpiTupleTable<'c>> {
    let plan = kept(c, sql, args, true)?;
    c.update(plan, limit, args)
}

/// The kept plan of `sql` for these argument types, prepared now if there is none.
fn kept(
    c: &SpiClient<'_>,
    sql: &str,
    args: &[DatumWithOid<'_>],
    mutating: bool,
) -> SpiResult<&'static OwnedPreparedStatement> {
    let types: Vec<pg_sys::Oid> = args.iter().map(DatumWithOid::oid).collect();
    let found = KEPT
        .with_borrow(|kept| kept.get(sql)?.iter().find(|k| k.types == types && k.mutating == mutating).map(|k| k.plan));
    if let Some(plan) = found {
        return Ok(plan);
    }
    let oids: Vec<PgOid> = types.iter().map(|&t| PgOid::from(t)).collect();
    let prepared = if mutating { c.prepare_mut(sql, &oids)? } else { c.prepare(sql, &oids)? };
    let plan: &'static OwnedPreparedStatement = Box::leak(Box::new(prepared.keep()));
    KEPT.with_borrow_mut(|kept| kept.entry(sql.into()).or_default().push(Kept { types, mutating, plan }));
    Ok(plan)
}
