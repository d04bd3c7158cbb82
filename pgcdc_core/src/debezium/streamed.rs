//! Streamed transactions staged as they arrive (see [`super::Encoder::stage_streams`]).
//!
//! A transaction bigger than `logical_decoding_work_mem` reaches a protocol-2+ client in
//! stream blocks before it commits. Held in memory until the commit (the default), a
//! 10-million-row transaction costs gigabytes; staged instead, each change is encoded when it
//! arrives, with what only the commit can tell left as one-byte placeholders in the JSON:
//!
//! | placeholder | becomes | field |
//! |---|---|---|
//! | `\u{1}` | commit time, ms | `source.ts_ms` |
//! | `\u{2}` | commit time, µs | `source.ts_us` |
//! | `\u{3}` | commit time, ns | `source.ts_ns` |
//! | `\u{4}` | `\"<end LSN of the previous commit>\"` or `null` | first element of `source.sequence` |
//!
//! The encoder writes control characters in strings as `\u00XX` escapes, so these bytes occur
//! nowhere else in its output. [`StreamedCommit::bind`] fills them in: the result is
//! byte-identical to the same transaction decoded after its commit.
//!
//! Positions: the staged changes take ordinals as they arrive. A rolled-back savepoint's
//! changes are always the latest ones of the transaction (subtransactions nest in time: every
//! change after a savepoint, until it is rolled back, is its own or a child's), so the caller
//! deletes the events from the savepoint's first change on and rewinds the transaction's change
//! counter there ([`super::Encoder::rewind_stream`]): the survivors are numbered exactly as
//! if the transaction had been decoded after its commit, whatever was streamed before.

use crate::json;
use crate::pgoutput::{StreamCommit, PG_EPOCH_OFFSET_MICROS};
use crate::relation::TableSchema;
use crate::{Lsn, Oid};

use super::TxState;

pub(super) const TS_MS: char = '\u{1}';
pub(super) const TS_US: char = '\u{2}';
pub(super) const TS_NS: char = '\u{3}';
pub(super) const LAST_COMMIT: char = '\u{4}';

/// A streamed transaction between its stream blocks.
#[derive(Debug, Clone)]
pub(super) struct Staged {
    pub tx: TxState,
    /// Relations as this transaction's Relation messages defined them: in force inside its
    /// blocks, for everyone from its commit, forgotten at its abort.
    pub relations: Vec<(Oid, TableSchema)>,
}

/// What a streamed transaction's staged events learn at its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamedCommit {
    /// Commit time, microseconds since the Unix epoch.
    pub commit_micros: i64,
    /// End LSN of the commit before it in the stream: `source.sequence[0]`.
    pub last_commit_end: Option<Lsn>,
}

impl StreamedCommit {
    pub(super) fn new(c: &StreamCommit, last_commit_end: Option<Lsn>) -> Self {
        StreamedCommit { commit_micros: c.commit_time.saturating_add(PG_EPOCH_OFFSET_MICROS), last_commit_end }
    }

    /// The staged JSON with its placeholders filled in.
    pub fn bind(&self, staged: &str) -> String {
        let mut out = String::with_capacity(staged.len() + 48);
        let mut rest = staged;
        while let Some(i) = rest.find([TS_MS, TS_US, TS_NS, LAST_COMMIT]) {
            out.push_str(&rest[..i]);
            let placeholder = rest[i..].chars().next().expect("found above");
            match placeholder {
                TS_MS => json::write_i64(&mut out, self.commit_micros.div_euclid(1000)),
                TS_US => json::write_i64(&mut out, self.commit_micros),
                TS_NS => json::write_i64(&mut out, self.commit_micros.saturating_mul(1000)),
                _ => match self.last_commit_end {
                    Some(l) => {
                        out.push_str("\\\"");
                        json::write_u64(&mut out, l.0);
                        out.push_str("\\\"");
                    }
                    None => out.push_str("null"),
                },
            }
            rest = &rest[i + placeholder.len_utf8()..];
        }
        out.push_str(rest);
        out
    }
}

/// Whether staged JSON still has placeholders (a value staged for a streamed transaction).
pub fn has_placeholders(text: &str) -> bool {
    text.contains([TS_MS, TS_US, TS_NS, LAST_COMMIT])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_the_commits_facts() {
        let c = StreamedCommit { commit_micros: 1_700_000_000_123_456, last_commit_end: Some(Lsn(0x16B3748)) };
        let staged = "{\"ts_ms\":\u{1},\"sequence\":\"[\u{4},\\\"99\\\"]\",\"ts_us\":\u{2},\"ts_ns\":\u{3}}";
        assert_eq!(
            c.bind(staged),
            "{\"ts_ms\":1700000000123,\"sequence\":\"[\\\"23803720\\\",\\\"99\\\"]\",\"ts_us\":1700000000123456,\"ts_ns\":1700000000123456000}"
        );
        let first = StreamedCommit { last_commit_end: None, ..c };
        assert_eq!(first.bind("[\u{4}]"), "[null]");
        assert_eq!(c.bind("no placeholders, ünïcode"), "no placeholders, ünïcode");
        assert!(has_placeholders(staged) && !has_placeholders("{}"));
    }
}
