//! The feed client behind `pgcdc.connect(dsn, feed=...)`: streams a pgcdc feed's events over
//! an ordinary SQL session (no REPLICATION privilege; works through poolers in session mode).
//!
//! ```text
//!  [session task, tokio]  LISTEN pgcdc_<feed>
//!      table sink:  loop { SELECT ... FROM pgcdc.read(feed, batch, after = last fetched) ;
//!                          nothing? wait for a NOTIFY (or 30 s) }
//!      notify sink: each NOTIFY payload is an event (or a reference to a staged one)
//!      acks:        SELECT pgcdc.ack(feed, lsn, ordinal), batched (<= 50 ms) and on stop;
//!                   an acknowledgement never causes a read (only NOTIFYs and the 30 s poll do)
//!         | events (JSON text + column types), bounded queue, no GIL
//!         v
//!  [Python] next_ready() / wait(), exactly like LogicalReplicationReader
//! ```
//!
//! Delivery: at-least-once. The server keeps every staged event until it is acknowledged; a
//! reconnect (with exponential backoff, 0.1 s to 30 s) resumes after the last event this
//! process delivered, and a new process resumes after the last acknowledged one. A NOTIFY
//! feed delivers what is sent while connected (PostgreSQL does not queue notifications for
//! absent listeners); acknowledging one only removes events staged because they were too big
//! for a payload. Positions are compared, never counted: ordinals increase within a
//! transaction but need not be consecutive.
//!
//! Feed identity: an event carries its feed ([`FeedIdentity`]: name and creation time), and
//! `ack(event)` refuses one of another feed, whose position would acknowledge events of this
//! one never delivered. A feed dropped and created again under the stream's name is another
//! feed: a session that finds it (at a reconnect, or in a read) ends the stream.
//!
//! Files: [`api`] the Python class `_Feed` (open, next, ack, close), [`session`] the tokio
//! task and its SQL, [`event`] the `Event` class, [`debezium_values`] Debezium's JSON values as
//! Python objects, [`query_json`] one-off statements for the Python feed management helpers.
//! The state they share is here.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use pgcdc_core::catalog::TypeKind;
use pgcdc_core::debezium::EncoderOptions;
use pgcdc_core::Lsn;
use pyo3::prelude::*;
use tokio::sync::Notify;

use crate::errors::PgError;
use crate::signal::{Signal, Stop};
use pgcdc_wire::ConnParams;

mod api;
mod debezium_values;
mod event;
mod query_json;
mod session;

type Pos = (Lsn, u32);

/// How long `close()` may spend flushing acknowledgements unless told otherwise.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct FeedConfig {
    conn: ConnParams,
    feed: String,
    batch_size: i32,
    auto_ack: bool,
    reconnect: bool,
    reconnect_timeout: Option<Duration>,
    max_buffered: usize,
    /// Fallback poll when no NOTIFY arrives (a missed wake-up costs at most this).
    idle_poll: Duration,
}

/// Column types of one table, in column order.
#[derive(Debug, Default)]
struct Columns {
    kinds: Vec<(String, TypeKind)>,
}

impl Columns {
    /// The kind of column `name`, looked for first at `position`: rows list their columns in
    /// the table's order, so a wide row costs one comparison per column, not a search.
    fn get(&self, position: usize, name: &str) -> Option<&TypeKind> {
        match self.kinds.get(position) {
            Some((n, kind)) if n == name => Some(kind),
            _ => self.kinds.iter().find(|(n, _)| n == name).map(|(_, k)| k),
        }
    }
}

/// Which feed an event belongs to. A feed dropped and created again under the same name is
/// another feed (its positions name other events), told apart by when it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FeedIdentity {
    name: String,
    created_at: SystemTime,
}

/// One event as read from the feed, before any Python object is made.
#[derive(Debug, Clone)]
struct FeedRow {
    feed: Arc<FeedIdentity>,
    commit_lsn: Lsn,
    ordinal: u32,
    lsn: Lsn,
    xid: Option<i64>,
    op: String,
    schema: String,
    table: String,
    topic: String,
    key: Option<String>,
    value: Option<String>,
    /// The Kafka headers as a JSON object (`__debezium.newkey`...), None without any.
    headers: Option<String>,
    /// Staged in pgcdc.event (always for table feeds; for NOTIFY feeds only big events).
    staged: bool,
    columns: Option<Arc<Columns>>,
    /// The envelope's layout in `value`, found by the session (see [`event::Spans`]).
    spans: Option<Result<event::Spans, String>>,
    options: Arc<EncoderOptions>,
}

impl FeedRow {
    fn position(&self) -> Pos {
        (self.commit_lsn, self.ordinal)
    }
}

#[derive(Default)]
struct State {
    /// The feed this stream reads, as its first session found it.
    feed: Option<Arc<FeedIdentity>>,
    queue: VecDeque<Box<FeedRow>>,
    last_delivered: Option<Pos>,
    /// Highest position acknowledged by the consumer / sent to the server.
    ack_wanted: Option<Pos>,
    ack_sent: Option<Pos>,
    error: Option<PgError>,
    finished: bool,
    stopping: bool,
    started: bool,
    backend_pid: i32,
    sessions: u64,
    sink_notify: bool,
    armed: bool,
    /// NOTIFY feeds: positions of queued/delivered events that were staged (too big for a
    /// payload); only those need `pgcdc.ack`. Removed once an acknowledgement covering them
    /// succeeded.
    staged_notify: VecDeque<Pos>,
    /// Why the last acknowledgement (or connection) attempt failed, for the close report.
    ack_failure: Option<PgError>,
    /// Set when the task ended with acknowledgements it could not flush; raised by close().
    unflushed: Option<PgError>,
}

/// What flushing acknowledgements has to do.
enum AckTarget {
    /// Nothing new.
    Nothing,
    /// Send `pgcdc.ack` up to this position.
    Send(Pos),
}

impl State {
    /// The position to read after: the newest delivered or queued event.
    fn last_fetched(&self) -> Option<Pos> {
        self.queue.back().map(|r| r.position()).max(self.last_delivered)
    }

    /// What to acknowledge on the server now. NOTIFY feeds only acknowledge staged events,
    /// so an acknowledgement covering none of them is complete without a query.
    fn ack_target(&mut self) -> AckTarget {
        let Some(wanted) = self.ack_wanted else { return AckTarget::Nothing };
        if Some(wanted) <= self.ack_sent {
            return AckTarget::Nothing;
        }
        if !self.sink_notify {
            return AckTarget::Send(wanted);
        }
        match self.staged_notify.iter().take_while(|p| **p <= wanted).last() {
            Some(p) => AckTarget::Send(*p),
            None => {
                self.ack_sent = Some(wanted);
                AckTarget::Nothing
            }
        }
    }

    /// `pgcdc.ack` up to `pos` succeeded.
    fn acked(&mut self, pos: Pos) {
        while self.staged_notify.front().is_some_and(|p| *p <= pos) {
            self.staged_notify.pop_front();
        }
        let complete = self.sink_notify && self.staged_notify.front().is_none_or(|p| Some(*p) > self.ack_wanted);
        self.ack_sent = if complete { self.ack_wanted.max(Some(pos)) } else { Some(pos).max(self.ack_sent) };
        self.ack_failure = None;
    }

    fn acks_pending(&self) -> bool {
        self.ack_wanted > self.ack_sent
    }
}

struct Shared {
    state: Mutex<State>,
    signal: Signal,
    /// The queue has room again.
    space: Notify,
    /// The consumer acknowledged something: flush it (never a reason to read).
    ack_wake: Notify,
    stop: Stop,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acks_pending(&self) -> bool {
        self.lock().acks_pending()
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<api::PyFeed>()?;
    m.add_class::<event::FeedEvent>()?;
    m.add_function(wrap_pyfunction!(query_json::_query_json, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_acks_only_staged_events_and_keep_them_until_acked() {
        let p = |o| (Lsn(100), o);
        let mut st = State { sink_notify: true, ..State::default() };
        st.staged_notify.extend([p(4), p(10)]);
        st.ack_wanted = Some(p(7));
        assert!(matches!(st.ack_target(), AckTarget::Send(x) if x == p(4)));
        assert_eq!(st.staged_notify.len(), 2, "nothing is forgotten before the ack succeeds");
        st.acked(p(4));
        assert_eq!(st.ack_sent, Some(p(7)));
        assert!(!st.acks_pending());
        st.ack_wanted = Some(p(12));
        assert!(matches!(st.ack_target(), AckTarget::Send(x) if x == p(10)));
        st.ack_wanted = Some(p(13));
        assert!(matches!(st.ack_target(), AckTarget::Send(x) if x == p(10)), "a failed ack is sent again");
        st.acked(p(10));
        assert!(st.staged_notify.is_empty() && st.ack_sent == Some(p(13)));
    }
}
