//! Errors raised to the SQL caller: a real SQLSTATE, a message and, where it helps, a hint
//! (never an internal error for a mistake of the caller).

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Unwraps a pgrx SPI result; SQL errors themselves already raised a PostgreSQL ERROR.
pub fn spi_ok<T>(r: Result<T, pgrx::spi::Error>) -> T {
    r.unwrap_or_else(|e| {
        ErrorReport::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("pgcdc: SPI: {e}"), "pgcdc")
            .report(PgLogLevel::ERROR);
        unreachable!()
    })
}

pub(crate) fn raise(code: PgSqlErrorCode, message: String, hint: Option<String>) -> ! {
    let mut report = ErrorReport::new(code, message, "pgcdc");
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!()
}

/// The value of a required argument: NULL is 22004.
pub(crate) fn required<T>(value: Option<T>, argument: &str) -> T {
    value.unwrap_or_else(|| {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{argument} must not be null"), None)
    })
}

/// Quotes user input for a message, escaping control characters.
pub(crate) fn quote_for_message(s: &str) -> String {
    format!("{:?}", s)
}
