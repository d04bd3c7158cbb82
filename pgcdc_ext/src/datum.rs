//! The SQL type pgrx has no Rust type for: `pg_lsn` ([`PgLsn`]).

use pgcdc_core::Lsn;
use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::{FromDatum, IntoDatum};

/// A `pg_lsn` value (pass-by-value 64-bit datum).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgLsn(pub Lsn);

impl From<Lsn> for PgLsn {
    fn from(l: Lsn) -> Self {
        PgLsn(l)
    }
}

/// `pg_lsn`'s type OID (named `LSNOID` in PostgreSQL 13's headers).
#[cfg(feature = "pg13")]
pub const PG_LSN_OID: pg_sys::Oid = pg_sys::LSNOID;
#[cfg(not(feature = "pg13"))]
pub const PG_LSN_OID: pg_sys::Oid = pg_sys::PG_LSNOID;

impl IntoDatum for PgLsn {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0 .0))
    }
    fn type_oid() -> pg_sys::Oid {
        PG_LSN_OID
    }
}

impl FromDatum for PgLsn {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _typoid: pg_sys::Oid) -> Option<Self> {
        (!is_null).then(|| PgLsn(Lsn(datum.value() as u64)))
    }
}

// SAFETY: pg_lsn is a by-value 8-byte datum; FromDatum above reads exactly that.
unsafe impl<'fcx> ArgAbi<'fcx> for PgLsn {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: the caller guarantees the argument is a pg_lsn.
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: as above; a NULL becomes Nullable::Null.
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

// SAFETY: the datum returned is a by-value pg_lsn, as the SQL signature declares.
unsafe impl BoxRet for PgLsn {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        match self.into_datum() {
            // SAFETY: a by-value datum needs no memory context.
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

pgrx::impl_sql_translatable!(PgLsn, "pg_lsn");
