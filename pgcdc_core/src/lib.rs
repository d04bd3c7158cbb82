//! Pure core of pgcdc: LSNs, the pgoutput decoder, value conversion and the Debezium encoder.
//!
//! Nothing here talks to a database: the extension worker and the Python reader feed bytes in
//! and take JSON (or typed values) out.
//!
//! ```text
//!  pgoutput bytes --pgoutput::Decoder--> Message --relation::RelationCache--> rows of
//!  ColumnData --value::parse_text--> Value --debezium::Encoder--> Debezium JSON event
//! ```

pub mod catalog;
pub mod debezium;
pub mod json;
pub mod lsn;
pub mod pgoutput;
pub mod position;
pub mod relation;
pub mod snapshot;
pub mod value;

pub use lsn::Lsn;

/// PostgreSQL object identifier.
pub type Oid = u32;
/// PostgreSQL transaction id (32-bit, as pgoutput sends it).
pub type Xid = u32;
