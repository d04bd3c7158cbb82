//! Streamed transactions held by the reader until their commit, within a memory budget.
//!
//! With pgoutput streaming, a transaction bigger than the server's
//! `logical_decoding_work_mem` arrives in stream blocks before it commits, so the server
//! never spills it to disk. The reader may yield only committed changes, so it keeps each
//! block's frames as they came, in memory while all open transactions fit in the budget and
//! in an anonymous temporary file (gone with the process) for the transaction whose frame
//! would overflow it. At the commit the frames are replayed, in order, as one ordinary
//! transaction; an abort drops them, and a rolled-back savepoint's changes are skipped at
//! the replay (its schema messages stay: pgoutput will not send them again for this stream).
//!
//! Record layout, in memory and on disk: `wal_start u64 | xid u32 | len u32 | frame`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

use bytes::Bytes;
use pgcdc_core::{Lsn, Xid};

const HEADER: usize = 16;

/// Frames of one streamed transaction.
#[derive(Default)]
struct Held {
    memory: Vec<u8>,
    file: Option<BufWriter<File>>,
    frames: u64,
    /// Subtransactions rolled back: their changes are not replayed.
    aborted: HashSet<Xid>,
}

/// Every open streamed transaction of a session, by top-level xid.
pub struct Spool {
    held: HashMap<Xid, Held>,
    /// Bytes of frames held in memory, all transactions together.
    in_memory: usize,
    budget: usize,
    /// Bytes written to temporary files so far (for the reader's statistics).
    pub spilled_bytes: u64,
}

impl Spool {
    pub fn new(budget: usize) -> Spool {
        Spool { held: HashMap::new(), in_memory: 0, budget, spilled_bytes: 0 }
    }

    /// Keeps one frame of transaction `top` (sent by subtransaction `sub`, if known).
    pub fn push(&mut self, top: Xid, sub: Option<Xid>, wal_start: Lsn, frame: &[u8]) -> io::Result<()> {
        let held = self.held.entry(top).or_default();
        let len = u32::try_from(frame.len()).map_err(|_| io::Error::other("pgoutput frame over 4 GiB"))?;
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(&wal_start.0.to_le_bytes());
        header[8..12].copy_from_slice(&sub.unwrap_or(0).to_le_bytes());
        header[12..].copy_from_slice(&len.to_le_bytes());
        held.frames += 1;
        let size = HEADER + frame.len();
        if held.file.is_none() && self.in_memory + size > self.budget {
            // This transaction overflows the budget: it moves to disk, memory and all.
            let mut file = BufWriter::with_capacity(1 << 16, tempfile::tempfile()?);
            file.write_all(&held.memory)?;
            self.spilled_bytes += held.memory.len() as u64;
            self.in_memory -= held.memory.len();
            held.memory = Vec::new();
            held.file = Some(file);
        }
        match held.file.as_mut() {
            Some(file) => {
                file.write_all(&header)?;
                file.write_all(frame)?;
                self.spilled_bytes += size as u64;
            }
            None => {
                held.memory.extend_from_slice(&header);
                held.memory.extend_from_slice(frame);
                self.in_memory += size;
            }
        }
        Ok(())
    }

    /// Stream Abort: the whole transaction (`sub == top`) or one of its subtransactions.
    pub fn abort(&mut self, top: Xid, sub: Xid) {
        if top == sub {
            self.forget(top);
        } else if let Some(held) = self.held.get_mut(&top) {
            held.aborted.insert(sub);
        }
    }

    /// Stream Commit: the transaction's frames in order, for replay.
    pub fn take(&mut self, top: Xid) -> io::Result<Replay> {
        let Some(mut held) = self.held.remove(&top) else {
            return Ok(Replay { source: Source::Memory(Bytes::new()), offset: 0, left: 0, aborted: HashSet::new() });
        };
        self.in_memory -= held.memory.len();
        let source = match held.file.take() {
            Some(file) => {
                let mut file = file.into_inner().map_err(|e| e.into_error())?;
                file.rewind()?;
                Source::File(BufReader::with_capacity(1 << 16, file))
            }
            None => Source::Memory(Bytes::from(std::mem::take(&mut held.memory))),
        };
        Ok(Replay { source, offset: 0, left: held.frames, aborted: held.aborted })
    }

    fn forget(&mut self, top: Xid) {
        if let Some(held) = self.held.remove(&top) {
            self.in_memory -= held.memory.len();
        }
    }
}

enum Source {
    Memory(Bytes),
    File(BufReader<File>),
}

/// One committed streamed transaction's frames, read back in order.
pub struct Replay {
    source: Source,
    offset: usize,
    left: u64,
    aborted: HashSet<Xid>,
}

/// A frame read back: where it was sent, and by which subtransaction.
pub struct Frame {
    pub wal_start: Lsn,
    pub data: Bytes,
    /// Sent by a subtransaction that was rolled back: replay only its schema messages.
    pub rolled_back: bool,
}

impl Replay {
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let mut header = [0u8; HEADER];
        let data = match &mut self.source {
            Source::Memory(buf) => {
                let end = self.offset + HEADER;
                header.copy_from_slice(buf.get(self.offset..end).ok_or_else(truncated)?);
                let len = frame_len(&header);
                let data = buf.get(end..end + len).ok_or_else(truncated)?;
                let data = buf.slice_ref(data);
                self.offset = end + len;
                data
            }
            Source::File(file) => {
                file.read_exact(&mut header)?;
                let mut data = vec![0u8; frame_len(&header)];
                file.read_exact(&mut data)?;
                Bytes::from(data)
            }
        };
        let wal_start = Lsn(u64::from_le_bytes(header[..8].try_into().expect("8 bytes")));
        let sub = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        Ok(Some(Frame { wal_start, data, rolled_back: self.aborted.contains(&sub) }))
    }
}

fn frame_len(header: &[u8; HEADER]) -> usize {
    u32::from_le_bytes(header[12..].try_into().expect("4 bytes")) as usize
}

fn truncated() -> io::Error {
    io::Error::other("spooled stream truncated")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replayed(r: &mut Replay) -> Vec<(u64, Vec<u8>, bool)> {
        let mut out = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            out.push((f.wal_start.0, f.data.to_vec(), f.rolled_back));
        }
        out
    }

    #[test]
    fn frames_come_back_in_order_from_memory_and_from_disk() {
        // Budget for about two frames: transaction 7 stays in memory, 8 overflows to disk.
        let mut spool = Spool::new(2 * (HEADER + 3));
        spool.push(7, Some(7), Lsn(1), b"a-1").unwrap();
        spool.push(8, Some(8), Lsn(2), b"b-1").unwrap();
        spool.push(8, Some(9), Lsn(3), b"b-2").unwrap();
        spool.push(8, Some(8), Lsn(4), b"b-3").unwrap();
        assert_eq!(spool.in_memory, HEADER + 3, "only 7's frame is in memory");
        assert_eq!(spool.spilled_bytes, 3 * (HEADER + 3) as u64);
        spool.abort(8, 9);
        let b = replayed(&mut spool.take(8).unwrap());
        assert_eq!(b, vec![(2, b"b-1".to_vec(), false), (3, b"b-2".to_vec(), true), (4, b"b-3".to_vec(), false)]);
        assert_eq!(replayed(&mut spool.take(7).unwrap()), vec![(1, b"a-1".to_vec(), false)]);
        assert_eq!(spool.in_memory, 0);
    }

    #[test]
    fn an_aborted_transaction_frees_its_memory_and_an_unknown_one_replays_nothing() {
        let mut spool = Spool::new(1 << 20);
        spool.push(5, None, Lsn(1), b"x").unwrap();
        spool.abort(5, 5);
        assert_eq!(spool.in_memory, 0);
        assert!(replayed(&mut spool.take(5).unwrap()).is_empty());
    }
}
