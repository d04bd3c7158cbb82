//! Streamed transactions in the queue.
//!
//! With pgoutput streaming, a transaction bigger than `logical_decoding_work_mem` arrives in
//! stream blocks before it commits. The worker stages every block as it arrives, in
//! `pgcdc.event`, under the **provisional commit LSN** `FFFFFFFF/<xid>` ([`provisional`]):
//! beyond any real WAL position (16 EiB), so `pgcdc.read`, which stops there, never returns
//! them, and the queue's fast path, counters, guard and cleanup all apply unchanged. The values
//! hold placeholders for what only the commit tells (`pgcdc_core::debezium::streamed`).
//!
//! ```text
//!   Stream Start x ... changes ... Stream Stop        staged at (FFFFFFFF/x, ordinal)
//!   Stream Abort x, sub                               DELETE from sub's first ordinal on
//!   Stream Abort x, x                                 DELETE all of x
//!   Stream Commit x (commit C)                        one row in pgcdc.stream_commit:
//!                                                     readable as (C, ordinal), bound
//! ```
//!
//! At its commit the transaction becomes readable at once, however big: one row in
//! `pgcdc.stream_commit` maps the provisional LSN to the commit's, with its commit time and
//! the end of the commit before it. `pgcdc.read` merges those transactions into the queue's
//! order and fills the placeholders in; `pgcdc.ack` removes their events like any others.
//!
//! Crashes: the queue and `pgcdc.stream_commit` are UNLOGGED and lost together; the slot has
//! not been confirmed past an unacknowledged transaction, so it sends everything again. A
//! worker that starts deletes the events of transactions that had not committed (the
//! walsender streams them again from their start) and skips the blocks of those it finds
//! committed here (their events are staged).

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;

use pgcdc_core::debezium::StreamedCommit;
use pgcdc_core::{Lsn, Oid, Xid};
use pgrx::prelude::*;

use crate::datum::PgLsn;
use crate::position::Position;
use crate::queue;

/// The lowest provisional commit LSN: `FFFFFFFF/00000000`.
pub const PROVISIONAL: Lsn = Lsn(0xFFFF_FFFF_0000_0000);

/// Where the events of streamed transaction `xid` wait for its commit.
pub fn provisional(xid: Xid) -> Lsn {
    Lsn(PROVISIONAL.0 | u64::from(xid))
}

/// A committed streamed transaction whose events are in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub commit_lsn: Lsn,
    pub xid: Xid,
    pub commit: StreamedCommit,
    /// The ordinal of its last staged event.
    pub last_ordinal: u32,
}

impl Committed {
    /// Its last event's position.
    pub fn last(&self) -> Position {
        Position::new(self.commit_lsn, self.last_ordinal)
    }
}

/// The feed's committed streamed transactions with a commit LSN at or after `from`, in commit
/// order.
pub fn committed(feed_id: i32, from: Lsn) -> Result<Vec<Committed>, pgrx::spi::Error> {
    Spi::connect(|c| {
        let args = [feed_id.into(), PgLsn(from).into()];
        let mut out = Vec::new();
        for row in crate::plans::select(
            c,
            "SELECT commit_lsn, xid, commit_micros, last_commit_end, last_ordinal FROM pgcdc.stream_commit \
             WHERE feed_id = $1 AND commit_lsn >= $2 ORDER BY commit_lsn",
            None,
            &args,
        )? {
            out.push(Committed {
                commit_lsn: row.get::<PgLsn>(1)?.unwrap_or_default().0,
                xid: row.get::<i64>(2)?.unwrap_or_default() as Xid,
                commit: StreamedCommit {
                    commit_micros: row.get::<i64>(3)?.unwrap_or_default(),
                    last_commit_end: row.get::<PgLsn>(4)?.map(|l| l.0),
                },
                last_ordinal: row.get::<i32>(5)?.unwrap_or_default().max(0) as u32,
            });
        }
        Ok(out)
    })
}

/// Records that streamed transaction `t` committed: its staged events become readable.
pub fn record(feed_id: i32, t: &Committed) -> Result<(), pgrx::spi::Error> {
    Spi::connect_mut(|c| {
        let args = [
            feed_id.into(),
            PgLsn(t.commit_lsn).into(),
            i64::from(t.xid).into(),
            t.commit.commit_micros.into(),
            t.commit.last_commit_end.map(PgLsn).into(),
            (t.last_ordinal as i32).into(),
        ];
        crate::plans::update(
            c,
            "INSERT INTO pgcdc.stream_commit (feed_id, commit_lsn, xid, commit_micros, last_commit_end, last_ordinal) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            None,
            &args,
        )?;
        Ok(())
    })
}

/// Deletes the staged events of streamed transaction `xid` with ordinals in `ordinals`.
/// Returns the events and bytes removed (for the queue counters).
pub fn discard(feed_id: i32, xid: Xid, ordinals: RangeInclusive<u32>) -> Result<(i64, i64), pgrx::spi::Error> {
    // (A stream's records are never at ordinal 0: that is a standalone message's.)
    let at = provisional(xid);
    queue::remove(feed_id, Position::new(at, ordinals.start().saturating_sub(1)), Position::new(at, *ordinals.end()))
}

/// Deletes the events of streamed transactions that have not committed (a worker starting:
/// the walsender sends them again from their start).
pub fn discard_uncommitted(feed_id: i32) -> Result<(), pgrx::spi::Error> {
    Spi::connect_mut(|c| {
        let args = [feed_id.into(), PgLsn(PROVISIONAL).into()];
        queue::removing(|| {
            c.update(
                "DELETE FROM pgcdc.event e WHERE e.feed_id = $1 AND e.commit_lsn >= $2 \
                 AND NOT EXISTS (SELECT 1 FROM pgcdc.stream_commit s WHERE s.feed_id = e.feed_id AND s.xid = e.xid)",
                None,
                &args,
            )
        })?;
        Ok(())
    })
}

/// Removes the events of committed streamed transactions that `acked` now covers (after
/// `before`), and the transactions fully acknowledged. Returns the events and bytes removed.
pub fn remove_acknowledged(feed_id: i32, before: Position, acked: Position) -> Result<(i64, i64), pgrx::spi::Error> {
    let mut removed = (0, 0);
    for t in committed(feed_id, before.commit_lsn)? {
        if t.commit_lsn > acked.commit_lsn {
            break;
        }
        let upto = if t.commit_lsn < acked.commit_lsn { u32::MAX } else { acked.ordinal };
        let after = if t.commit_lsn == before.commit_lsn { before.ordinal } else { 0 };
        if upto > after {
            let (events, bytes) = discard(feed_id, t.xid, after + 1..=upto)?;
            removed = (removed.0 + events, removed.1 + bytes);
        }
        if upto >= t.last_ordinal {
            Spi::connect_mut(|c| {
                let args = [feed_id.into(), PgLsn(t.commit_lsn).into()];
                crate::plans::update(
                    c,
                    "DELETE FROM pgcdc.stream_commit WHERE feed_id = $1 AND commit_lsn = $2",
                    None,
                    &args,
                )?;
                Ok::<_, pgrx::spi::Error>(())
            })?;
        }
    }
    Ok(removed)
}

/// Whether `position` is an event of a committed streamed transaction of the feed staged now
/// (`ordinal` None: any event of the transaction committed at that LSN).
pub fn is_staged(feed_id: i32, commit_lsn: Lsn, ordinal: Option<u32>) -> Result<bool, pgrx::spi::Error> {
    let Some(t) = committed(feed_id, commit_lsn)?.into_iter().next().filter(|t| t.commit_lsn == commit_lsn) else {
        return Ok(false);
    };
    Spi::connect(|c| {
        let args =
            [feed_id.into(), PgLsn(provisional(t.xid)).into(), ordinal.map(|o| o.min(i32::MAX as u32) as i32).into()];
        Ok(!crate::plans::select(
            c,
            "SELECT 1 FROM pgcdc.event WHERE feed_id = $1 AND commit_lsn = $2 \
             AND ($3::int4 IS NULL OR ordinal = $3) LIMIT 1",
            Some(1),
            &args,
        )?
        .is_empty())
    })
}

/// The highest position among the feed's committed streamed transactions in the queue.
pub fn last_staged(feed_id: i32) -> Result<Option<Position>, pgrx::spi::Error> {
    Ok(committed(feed_id, Lsn::ZERO)?.last().map(Committed::last))
}

/// A streamed transaction in progress, as the worker sees it.
#[derive(Debug, Default)]
pub struct Streaming {
    /// Its savepoints (subtransactions that made changes), in order: xid, the number of
    /// their first change, and the transaction's last ordinal before it.
    savepoints: Vec<(Xid, u32, u32)>,
    /// Events and bytes staged for it (outside the queue cap until it commits).
    pub rows: i64,
    pub bytes: i64,
    /// The ordinal of its last event (0: none).
    pub last_ordinal: u32,
    /// The tables it changed (a snapshot chunk of one of them is read again if it commits
    /// in the chunk's window).
    pub relations: HashSet<Oid>,
    /// Staged and committed before this worker started: its blocks, sent again, are skipped.
    pub skip: bool,
}

/// The rolled-back part of a streamed transaction: events from `first_ordinal` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolledBack {
    /// The savepoint's first change was the transaction's change number `first_change`.
    pub first_change: u32,
    pub first_ordinal: u32,
}

/// The worker's streamed transactions in progress.
#[derive(Debug, Default)]
pub struct InProgress {
    /// The transaction of the open stream block.
    pub open: Option<Xid>,
    txs: HashMap<Xid, Streaming>,
    /// Committed streamed transactions staged before this worker started.
    staged_before: HashSet<Xid>,
}

impl InProgress {
    /// At worker start: the committed streamed transactions already in the queue.
    pub fn load(feed_id: i32) -> Result<InProgress, pgrx::spi::Error> {
        let staged_before = committed(feed_id, Lsn::ZERO)?.into_iter().map(|t| t.xid).collect();
        Ok(InProgress { open: None, txs: HashMap::new(), staged_before })
    }

    /// A stream block of `xid` starts. `first_segment`: the walsender starts the transaction
    /// over; true when events staged for it before must go (not expected: a worker that
    /// reconnects starts over).
    pub fn start_block(&mut self, xid: Xid, first_segment: bool) -> bool {
        self.open = Some(xid);
        let earlier = if first_segment { self.txs.remove(&xid) } else { None };
        let skip = self.staged_before.contains(&xid);
        self.txs.entry(xid).or_insert_with(|| Streaming { skip, ..Streaming::default() });
        earlier.is_some_and(|t| !t.skip && t.rows > 0)
    }

    pub fn stop_block(&mut self) {
        self.open = None;
    }

    /// The open block's transaction.
    pub fn current(&mut self) -> Option<(Xid, &mut Streaming)> {
        let xid = self.open?;
        self.txs.get_mut(&xid).map(|t| (xid, t))
    }

    /// A change of subtransaction `subxid` of the open block's transaction, before it is
    /// encoded; `changes` is how many changes the transaction had so far.
    pub fn change(&mut self, subxid: Option<Xid>, relations: &[Oid], changes: u32) {
        let Some((xid, t)) = self.current() else { return };
        if let Some(sub) = subxid.filter(|&s| s != xid) {
            if !t.savepoints.iter().any(|(s, _, _)| *s == sub) {
                t.savepoints.push((sub, changes + 1, t.last_ordinal));
            }
        }
        t.relations.extend(relations.iter().copied());
    }

    /// A savepoint of `xid` was rolled back: what to delete, if it made changes.
    pub fn roll_back(&mut self, xid: Xid, subxid: Xid) -> Option<RolledBack> {
        let t = self.txs.get_mut(&xid)?;
        let i = t.savepoints.iter().position(|(s, _, _)| *s == subxid)?;
        let (_, first_change, last_before) = t.savepoints[i];
        // Everything from its first change on is its own or a later savepoint's.
        t.savepoints.truncate(i);
        t.last_ordinal = last_before;
        Some(RolledBack { first_change, first_ordinal: 3 * first_change + 1 })
    }

    /// Events and bytes of `xid` were deleted (a savepoint rolled back).
    pub fn removed(&mut self, xid: Xid, (rows, bytes): (i64, i64)) {
        if let Some(t) = self.txs.get_mut(&xid) {
            t.rows -= rows;
            t.bytes -= bytes;
        }
    }

    /// The transaction ended (committed or aborted): its bookkeeping.
    pub fn end(&mut self, xid: Xid) -> Option<Streaming> {
        self.staged_before.remove(&xid);
        self.txs.remove(&xid)
    }

    /// Events and bytes staged for transactions that have not committed.
    pub fn uncommitted(&self) -> (i64, i64) {
        self.txs.values().fold((0, 0), |(r, b), t| (r + t.rows, b + t.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rolled_back_savepoint_takes_everything_after_its_first_change() {
        let mut p = InProgress::default();
        assert!(!p.start_block(700, true));
        p.change(Some(700), &[1], 0);
        p.current().unwrap().1.last_ordinal = 4;
        p.change(Some(701), &[1], 1); // SAVEPOINT a: change 2
        p.current().unwrap().1.last_ordinal = 7;
        p.change(Some(702), &[2], 2); // SAVEPOINT b inside a: change 3
        p.current().unwrap().1.last_ordinal = 10;
        p.stop_block();
        assert_eq!(p.roll_back(700, 702), Some(RolledBack { first_change: 3, first_ordinal: 10 }));
        assert_eq!(p.txs[&700].last_ordinal, 7);
        assert_eq!(p.roll_back(700, 701), Some(RolledBack { first_change: 2, first_ordinal: 7 }));
        assert_eq!(p.txs[&700].last_ordinal, 4);
        assert_eq!(p.roll_back(700, 702), None, "gone with its parent");
        assert_eq!(p.end(700).unwrap().relations, HashSet::from([1, 2]));
    }

    #[test]
    fn provisional_positions_lie_beyond_any_wal_and_keep_the_xid() {
        assert_eq!(provisional(0).to_string(), "FFFFFFFF/0");
        assert_eq!(provisional(0xDEAD_BEEF).to_string(), "FFFFFFFF/DEADBEEF");
        assert!(provisional(3) > Lsn(0xFFFF_FFFE_FFFF_FFFF));
        assert_eq!(provisional(u32::MAX).0 & 0xFFFF_FFFF, u64::from(u32::MAX));
    }
}
