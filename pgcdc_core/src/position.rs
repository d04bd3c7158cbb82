//! Event positions, and which LSN a replication client may confirm to the walsender. Used by
//! the extension's feed worker and by `LogicalReplicationReader`: one rule for both.
//!
//! Every event has a **position** `(commit_lsn, ordinal)`: the commit LSN of its transaction
//! and its ordinal within that transaction; a non-transactional logical message has its own
//! LSN and ordinal 0 ([`STANDALONE_ORDINAL`]). Ordinals are fixed by the WAL alone, never by
//! options (the encoder: BEGIN = 1, the i-th change owns 3i+1, 3i+2 (its tombstone) and 3i+3
//! (a key change's create), END = i32::MAX - 1), so they have gaps, and a consumer whose
//! options changed still recognises what it was given. Positions grow strictly in stream
//! order and identify events across restarts and crashes.
//!
//! ## What the walsender hears (the slot's `confirmed_flush_lsn`)
//!
//! ```text
//!   WAL:  ..T1 commit..T2 commit..............T3 commit.....keepalive(wal_end W)
//!   acked:   T1 all    T2 events 1..3 of 5     -
//!   flush:   end(T1)   (T2 not fully acked: flush stays at end(T1))
//! ```
//!
//! [`Confirmer`] reports only the **end LSN of fully acknowledged transactions**, in stream
//! order. A partly acknowledged transaction holds the flush position before it; after a
//! restart it is re-sent whole and its acknowledged prefix is skipped by position. When every
//! transaction seen so far is acknowledged and none is open, a keepalive's `wal_end` is
//! confirmed too, so a slot whose tables are idle does not pin WAL written by other tables.
//!
//! A non-transactional message is confirmed at **its own LSN** (the end of its record), not
//! one past it: the walsender skips a record that starts before the confirmed position, and
//! the next record may start exactly there.

use std::collections::VecDeque;
use std::fmt;

use crate::Lsn;

/// The ordinal stored for "the whole transaction" (SQL `int4` maximum).
pub const WHOLE_TRANSACTION: u32 = i32::MAX as u32;

/// The ordinal of a non-transactional logical message. Its LSN (the end of its WAL record)
/// can equal the commit LSN of the transaction decoded right after it, whose first record
/// has ordinal 1: ordinal 0 keeps the two positions distinct and in stream order.
pub const STANDALONE_ORDINAL: u32 = 0;

/// Where an event sits in a feed's stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub ordinal: u32,
}

impl Position {
    pub const ZERO: Position = Position { commit_lsn: Lsn::ZERO, ordinal: 0 };

    pub fn new(commit_lsn: Lsn, ordinal: u32) -> Self {
        Position { commit_lsn, ordinal }
    }

    /// The position after every event of the transaction committed at `commit_lsn`.
    pub fn whole(commit_lsn: Lsn) -> Self {
        Position { commit_lsn, ordinal: WHOLE_TRANSACTION }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ordinal == WHOLE_TRANSACTION {
            write!(f, "{} (whole transaction)", self.commit_lsn)
        } else {
            write!(f, "{} #{}", self.commit_lsn, self.ordinal)
        }
    }
}

/// Events at or below this position are already downstream (staged or acknowledged) and
/// must not be staged again.
pub fn dedupe_floor(acked: Position, last_staged: Option<Position>) -> Position {
    last_staged.map_or(acked, |s| s.max(acked))
}

/// A transaction (or non-transactional message) whose end the worker has processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    /// What the walsender may hear once this is acknowledged: the commit's end LSN.
    end_lsn: Lsn,
    /// Position of its last event; None when it produced none.
    last: Option<Position>,
}

/// Computes the flush LSN reported to the walsender: see the module docs.
///
/// `pending` holds the transactions not yet fully acknowledged, in stream order. A
/// transaction with no event (all its changes skipped, or in pgcdc's own tables) never waits
/// for anything: it is released as soon as everything before it is, and consecutive ones are
/// merged into one entry, so `pending` is at most about twice the number of transactions
/// with unacknowledged events (bounded by the queue cap), however many empty ones stream by.
#[derive(Debug, Default)]
pub struct Confirmer {
    pending: VecDeque<Seen>,
    confirmable: Lsn,
    in_transaction: bool,
}

impl Confirmer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest LSN the walsender may hear as flushed.
    pub fn confirmable(&self) -> Lsn {
        self.confirmable
    }

    /// Transactions processed but not yet fully acknowledged.
    pub fn unconfirmed(&self) -> usize {
        self.pending.len() + usize::from(self.in_transaction)
    }

    pub fn begin(&mut self) {
        self.in_transaction = true;
    }

    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// A transaction ended; `last_ordinal` is the highest ordinal it produced (0 for none),
    /// counting events skipped as duplicates.
    pub fn commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn, last_ordinal: u32, acked: Position) {
        self.in_transaction = false;
        let last = (last_ordinal > 0).then(|| Position::new(commit_lsn, last_ordinal));
        self.push(Seen { end_lsn, last });
        self.acknowledged(acked);
    }

    fn push(&mut self, seen: Seen) {
        if seen.last.is_none() {
            if let Some(back) = self.pending.back_mut().filter(|b| b.last.is_none()) {
                back.end_lsn = back.end_lsn.max(seen.end_lsn);
                return;
            }
        }
        self.pending.push_back(seen);
    }

    /// A non-transactional logical message at `lsn` (the end of its WAL record), staged at
    /// `last` (None: it produced no event). Confirming `lsn` skips it after a restart only
    /// once it is acknowledged.
    pub fn standalone(&mut self, lsn: Lsn, last: Option<Position>, acked: Position) {
        self.push(Seen { end_lsn: lsn, last });
        self.acknowledged(acked);
    }

    /// The acknowledged position moved (or may have): release what is now fully consumed.
    pub fn acknowledged(&mut self, acked: Position) {
        while let Some(front) = self.pending.front() {
            let done = front.last.is_none_or(|last| last <= acked);
            if !done {
                break;
            }
            self.confirmable = self.confirmable.max(front.end_lsn);
            self.pending.pop_front();
        }
    }

    /// A keepalive, processed in stream order: with nothing open or unacknowledged, everything
    /// before `wal_end` is consumed or was never published.
    pub fn keepalive(&mut self, wal_end: Lsn) {
        if !self.in_transaction && self.pending.is_empty() {
            self.confirmable = self.confirmable.max(wal_end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: u64) -> Lsn {
        Lsn(v)
    }

    #[test]
    fn flush_moves_only_over_fully_acknowledged_transactions() {
        let mut c = Confirmer::new();
        let mut acked = Position::ZERO;
        c.begin();
        c.commit(l(100), l(108), 3, acked);
        c.begin();
        c.commit(l(200), l(208), 5, acked);
        assert_eq!(c.confirmable(), Lsn::ZERO, "nothing acknowledged, nothing confirmed");

        acked = Position::new(l(100), 2);
        c.acknowledged(acked);
        assert_eq!(c.confirmable(), Lsn::ZERO, "T1 partly acknowledged");

        acked = Position::new(l(200), 4);
        c.acknowledged(acked);
        assert_eq!(c.confirmable(), l(108), "T1 done, T2 partly");

        acked = Position::whole(l(200));
        c.acknowledged(acked);
        assert_eq!(c.confirmable(), l(208));
        assert_eq!(c.unconfirmed(), 0);
    }

    #[test]
    fn keepalive_confirms_idle_wal_only_when_everything_is_acknowledged() {
        let mut c = Confirmer::new();
        c.keepalive(l(50));
        assert_eq!(c.confirmable(), l(50), "idle slot follows the WAL");

        c.begin();
        c.keepalive(l(60));
        assert_eq!(c.confirmable(), l(50), "open transaction");
        c.commit(l(100), l(108), 1, Position::ZERO);
        c.keepalive(l(300));
        assert_eq!(c.confirmable(), l(50), "unacknowledged event");

        c.acknowledged(Position::new(l(100), 1));
        assert_eq!(c.confirmable(), l(108));
        c.keepalive(l(300));
        assert_eq!(c.confirmable(), l(300));
        c.keepalive(l(200));
        assert_eq!(c.confirmable(), l(300), "never moves back");
    }

    #[test]
    fn empty_transactions_follow_their_predecessors() {
        let mut c = Confirmer::new();
        c.commit(l(100), l(108), 2, Position::ZERO);
        c.commit(l(150), l(158), 0, Position::ZERO);
        assert_eq!(c.confirmable(), Lsn::ZERO);
        c.acknowledged(Position::whole(l(100)));
        assert_eq!(c.confirmable(), l(158));
    }

    #[test]
    fn empty_transactions_never_block_and_are_merged() {
        let mut c = Confirmer::new();
        // T1 has an unacknowledged event; a million empty transactions follow (e.g. acks
        // seen through a FOR ALL TABLES publication, or changes all skipped).
        c.commit(l(100), l(108), 4, Position::ZERO);
        for i in 0..1_000_000u64 {
            c.begin();
            c.commit(l(200 + 10 * i), l(208 + 10 * i), 0, Position::ZERO);
        }
        assert_eq!(c.pending.len(), 2, "the empty transactions are one entry");
        c.acknowledged(Position::new(l(100), 4));
        assert_eq!(c.confirmable(), l(208 + 10 * 999_999), "T1 done: everything after it too");
        assert_eq!(c.unconfirmed(), 0);
        // With nothing pending, an empty transaction is confirmed at once.
        c.commit(l(20_000_000), l(20_000_008), 0, Position::new(l(100), 4));
        assert_eq!(c.confirmable(), l(20_000_008));
        // Empty transactions between two with events stay between them.
        c.commit(l(30_000_000), l(30_000_008), 1, Position::ZERO);
        c.commit(l(30_000_100), l(30_000_108), 0, Position::ZERO);
        c.commit(l(30_000_200), l(30_000_208), 4, Position::ZERO);
        c.commit(l(30_000_300), l(30_000_308), 0, Position::ZERO);
        c.acknowledged(Position::new(l(30_000_000), 1));
        assert_eq!(c.confirmable(), l(30_000_108));
        c.acknowledged(Position::new(l(30_000_200), 4));
        assert_eq!(c.confirmable(), l(30_000_308));
    }

    #[test]
    fn ordinals_with_gaps_release_a_transaction_at_its_last_record() {
        // A transaction of two deletes without tombstones: records at 4 and 7 (pgcdc_core).
        let mut c = Confirmer::new();
        c.begin();
        c.commit(l(100), l(108), 7, Position::ZERO);
        c.acknowledged(Position::new(l(100), 4));
        assert_eq!(c.confirmable(), Lsn::ZERO);
        c.acknowledged(Position::new(l(100), 7));
        assert_eq!(c.confirmable(), l(108));
    }

    #[test]
    fn standalone_message_is_confirmed_at_its_own_lsn() {
        let mut c = Confirmer::new();
        c.standalone(l(70), Some(Position::new(l(70), STANDALONE_ORDINAL)), Position::ZERO);
        assert_eq!(c.confirmable(), Lsn::ZERO);
        c.acknowledged(Position::new(l(70), STANDALONE_ORDINAL));
        assert_eq!(c.confirmable(), l(70));
    }

    #[test]
    fn a_standalone_message_sorts_before_a_transaction_committed_at_its_end() {
        // pg_logical_emit_message(false, ..) as the last statement of a transaction: the
        // message's LSN (end of its record) is the commit LSN of that transaction.
        let message = Position::new(l(0x15AB920), STANDALONE_ORDINAL);
        let first_change = Position::new(l(0x15AB920), 1);
        assert!(message < first_change);
    }

    #[test]
    fn dedupe_floor_is_the_higher_of_acked_and_staged() {
        let acked = Position::new(l(100), 2);
        assert_eq!(dedupe_floor(acked, None), acked);
        assert_eq!(dedupe_floor(acked, Some(Position::new(l(90), 9))), acked);
        assert_eq!(dedupe_floor(acked, Some(Position::new(l(200), 1))), Position::new(l(200), 1));
    }
}
