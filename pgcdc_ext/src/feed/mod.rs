//! Feeds: the `pgcdc.feed` catalog, feed options, and the SQL API.
//!
//! [`model`] what a feed is (its row, sink, state and options), [`store`] its rows in
//! `pgcdc.feed` and the staged events read for it (SPI, row locks, finding a feed for the
//! caller), [`sql_api`] the SQL functions (`pgcdc.create_feed`, `pgcdc.read`, `pgcdc.ack`...).

mod model;
mod sql_api;
mod store;

pub use model::{snapshots_supported, Feed, FeedOptions, FeedState, Sink, SNAPSHOTS_NEED};
pub(crate) use sql_api::quote_ident;
pub(crate) use store::{authorize, wake_at_commit};
pub use store::{last_read_was_direct, load_by_id, lock_for_worker, LOCK_CLASS_SLOT, LOCK_CLASS_WORKER};
