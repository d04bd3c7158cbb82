//! Event positions, acknowledgements, and which LSN the walsender may hear. Pure Rust.
//!
//! Every staged event has a **position** `(commit_lsn, ordinal)`: the commit LSN of its
//! transaction and its ordinal within that transaction; a non-transactional logical message
//! has its own LSN and ordinal 0 ([`STANDALONE_ORDINAL`]). Ordinals are fixed by the WAL
//! alone, never by the feed's options (pgcdc_core: BEGIN = 1, the i-th change owns 3i+1,
//! 3i+2 (its tombstone) and 3i+3 (a key change's create), END = i32::MAX - 1), so they have
//! gaps, and a feed whose options changed (tombstones, transaction metadata, skipped
//! operations) still recognises what it staged or was acknowledged. Positions grow strictly
//! in stream order and identify events across worker restarts and crashes.
//!
//! ## What `pgcdc.ack` means
//!
//! * `ack(feed, lsn, ordinal)`: every event at a position `<= (lsn, ordinal)` is consumed. The
//!   position must be at or below the acknowledged one (a no-op) or **an event staged for this
//!   feed now**, i.e. one `read` can return: a computed position, or one of another feed,
//!   would acknowledge events nobody read, so it is refused.
//! * `ack(feed, lsn)`: every event of every transaction whose commit LSN is `<= lsn` is
//!   consumed. `lsn` must be the commit LSN of events staged for this feed now (or of the
//!   acknowledged position): an LSN cannot say which feed it came from, but one this feed
//!   never staged events at is certainly not one its reader read (nor `pg_current_wal_lsn()`;
//!   `pgcdc.reset_feed` is the way to skip everything). Those transactions must be completely
//!   staged; acknowledging a transaction that is still being staged is refused, because the
//!   caller cannot have read its end yet. A consumer that read a transaction only partly (a
//!   `read` limit cut it) acknowledges by position instead. (Two feeds publishing the same
//!   table stage its changes at the same positions: such a position means the same change in
//!   both, which the server cannot tell apart.)
//!
//! The acknowledged position is durable (logged catalog `pgcdc.feed`). Acknowledged events
//! are deleted from the queue and never staged again: after any restart the worker skips
//! every re-sent event at a position `<=` max(acknowledged, last staged) ([`dedupe_floor`]).
//!
//! What the walsender may confirm is `pgcdc_core::position` ([`Confirmer`]): only the end
//! LSN of fully acknowledged transactions, never what is merely staged.
//!
//! Crash at any step: the queue (UNLOGGED) may be emptied, but the slot was never confirmed
//! past an unacknowledged event, so the walsender re-sends all of them; acknowledged ones are
//! skipped by position. Nothing acknowledged returns, nothing unacknowledged is lost.

use std::fmt;

pub use pgcdc_core::position::{dedupe_floor, Confirmer, Position, STANDALONE_ORDINAL, WHOLE_TRANSACTION};
use pgcdc_core::Lsn;

/// What a consumer acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckTarget {
    /// Every event at a position `<=` this one.
    UpTo(Position),
    /// Every event of transactions committed at or before this LSN.
    Transactions(Lsn),
}

impl AckTarget {
    pub fn position(self) -> Position {
        match self {
            AckTarget::UpTo(p) => p,
            AckTarget::Transactions(l) => Position::whole(l),
        }
    }
}

/// Why an acknowledgement is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckError {
    /// Nothing at that position has been delivered yet.
    BeyondDelivered { requested: Position, delivered: Position },
    /// Below what was delivered, but not an event staged for this feed.
    NotStaged { requested: Position },
    /// The transaction is still being staged; acknowledge by position.
    TransactionIncomplete { commit_lsn: Lsn, delivered: Position },
}

impl fmt::Display for AckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AckError::BeyondDelivered { requested, delivered } if *delivered == Position::ZERO => {
                write!(f, "cannot acknowledge {requested}: nothing has been delivered yet")
            }
            AckError::BeyondDelivered { requested, delivered } => {
                write!(f, "cannot acknowledge {requested}: events have been delivered only up to {delivered}")
            }
            AckError::NotStaged { requested } if requested.ordinal == WHOLE_TRANSACTION => write!(
                f,
                "cannot acknowledge the transactions committed up to {}: no event of this feed committed \
                 at that LSN is staged",
                requested.commit_lsn
            ),
            AckError::NotStaged { requested } => {
                write!(f, "cannot acknowledge {requested}: it is not the position of an event staged for this feed")
            }
            AckError::TransactionIncomplete { commit_lsn, delivered } => write!(
                f,
                "cannot acknowledge the whole transaction committed at {commit_lsn}: \
                 it is still being staged (delivered up to {delivered})"
            ),
        }
    }
}

/// What the queue knows when an acknowledgement arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// The acknowledged position so far.
    pub acked: Position,
    /// The highest staged position still in the queue.
    pub last_staged: Option<Position>,
    /// Commit LSN of the last transaction the worker has staged completely (0 if unknown).
    pub complete_lsn: Lsn,
    /// Whether the target is staged: the event at an `UpTo` position, or any event committed
    /// at a `Transactions` LSN.
    pub target_staged: bool,
}

impl Delivered {
    fn high_water(&self) -> Position {
        dedupe_floor(self.acked, self.last_staged)
    }

    /// A transaction is completely staged if a later one has events staged, or the worker
    /// reported its commit as staged.
    fn is_complete(&self, commit_lsn: Lsn) -> bool {
        commit_lsn <= self.acked.commit_lsn && self.acked.ordinal == WHOLE_TRANSACTION
            || self.last_staged.is_some_and(|s| commit_lsn < s.commit_lsn)
            || commit_lsn <= self.complete_lsn
    }

    /// The new acknowledged position, or None when `target` acknowledges nothing new
    /// (acknowledging twice is harmless).
    pub fn resolve(&self, target: AckTarget) -> Result<Option<Position>, AckError> {
        let wanted = target.position();
        if wanted <= self.acked {
            return Ok(None);
        }
        let delivered = self.high_water();
        let commit_lsn = wanted.commit_lsn;
        // The rest of a partly acknowledged transaction may have no staged event left.
        let known =
            self.target_staged || matches!(target, AckTarget::Transactions(_)) && commit_lsn == self.acked.commit_lsn;
        if !known {
            return Err(if wanted > delivered {
                AckError::BeyondDelivered { requested: wanted, delivered }
            } else {
                AckError::NotStaged { requested: wanted }
            });
        }
        match target {
            AckTarget::UpTo(_) => Ok(Some(wanted)),
            AckTarget::Transactions(_) if self.is_complete(commit_lsn) => Ok(Some(wanted)),
            AckTarget::Transactions(_) => Err(AckError::TransactionIncomplete { commit_lsn, delivered }),
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
    fn ack_by_position_must_be_a_staged_event() {
        let d = |target_staged| Delivered {
            acked: Position::new(l(100), 1),
            last_staged: Some(Position::new(l(200), 3)),
            complete_lsn: l(100),
            target_staged,
        };
        assert_eq!(d(false).resolve(AckTarget::UpTo(Position::new(l(100), 1))), Ok(None), "repeat");
        assert_eq!(d(false).resolve(AckTarget::UpTo(Position::new(l(50), 9))), Ok(None), "older");
        assert_eq!(d(true).resolve(AckTarget::UpTo(Position::new(l(200), 2))), Ok(Some(Position::new(l(200), 2))));
        assert_eq!(d(true).resolve(AckTarget::UpTo(Position::new(l(200), 3))), Ok(Some(Position::new(l(200), 3))));
        // Below the last staged event but not one of this feed's (another feed's, or computed).
        assert_eq!(
            d(false).resolve(AckTarget::UpTo(Position::new(l(150), 4))),
            Err(AckError::NotStaged { requested: Position::new(l(150), 4) })
        );
        assert!(matches!(
            d(false).resolve(AckTarget::UpTo(Position::new(l(200), 4))),
            Err(AckError::BeyondDelivered { .. })
        ));
        assert!(matches!(
            d(false).resolve(AckTarget::UpTo(Position::new(l(300), 1))),
            Err(AckError::BeyondDelivered { .. })
        ));
    }

    #[test]
    fn ack_of_whole_transactions_needs_them_staged_and_complete() {
        let d = |target_staged, complete_lsn| Delivered {
            acked: Position::ZERO,
            last_staged: Some(Position::new(l(200), 3)),
            complete_lsn: l(complete_lsn),
            target_staged,
        };
        assert_eq!(
            d(true, 100).resolve(AckTarget::Transactions(l(150))),
            Ok(Some(Position::whole(l(150)))),
            "everything before the last staged transaction is complete"
        );
        assert_eq!(
            d(false, 100).resolve(AckTarget::Transactions(l(150))),
            Err(AckError::NotStaged { requested: Position::whole(l(150)) }),
            "no event of this feed committed at that LSN"
        );
        assert!(matches!(
            d(true, 100).resolve(AckTarget::Transactions(l(200))),
            Err(AckError::TransactionIncomplete { .. })
        ));
        assert!(matches!(
            d(false, 100).resolve(AckTarget::Transactions(l(250))),
            Err(AckError::BeyondDelivered { .. })
        ));
        assert_eq!(d(true, 200).resolve(AckTarget::Transactions(l(200))), Ok(Some(Position::whole(l(200)))));
        // The rest of a partly acknowledged transaction, nothing of it staged any more.
        let partly = Delivered {
            acked: Position::new(l(200), 3),
            last_staged: None,
            complete_lsn: l(200),
            target_staged: false,
        };
        assert_eq!(partly.resolve(AckTarget::Transactions(l(200))), Ok(Some(Position::whole(l(200)))));
    }
}
