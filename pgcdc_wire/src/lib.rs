//! pgcdc's PostgreSQL client for logical replication, used by the extension's feed worker and
//! by the Python package's `LogicalReplicationReader`:
//!
//! | module | what |
//! |---|---|
//! | [`conninfo`] | libpq connection strings (both forms), environment defaults, password file |
//! | [`conn`] | a `replication=database` connection: startup, TLS, password/md5/SCRAM (with channel binding), simple queries |
//! | [`tls`] | rustls configuration per `sslmode`, `tls-server-end-point` (feature `tls`) |
//! | [`session`] | pgoutput negotiation, `START_REPLICATION`, status updates, keepalives, liveness |
//! | [`error`] | [`WireError`]: errors as data (kind, SQLSTATE, detail, hint), `is_transient()` |
//!
//! No PostgreSQL server code and no Python here: the extension runs this on its own thread
//! (which must never call into PostgreSQL), the Python package on its tokio runtime. pgoutput
//! decoding and positions are `pgcdc_core`'s.

pub mod conn;
pub mod conninfo;
pub mod error;
pub mod session;
#[cfg(feature = "tls")]
pub mod tls;

pub use conn::ReplConn;
pub use conninfo::{ChannelBindingMode, ConnParams, SslMode};
pub use error::{ServerError, WireError};
pub use session::{Pgoutput, Session, Wal};

/// Quotes an identifier for a replication command or SQL (always double-quoted).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal (standard_conforming_strings is on in every supported server).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
