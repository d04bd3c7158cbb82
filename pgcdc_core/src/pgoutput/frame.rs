//! Walsender framing: the CopyData payloads of `START_REPLICATION ... LOGICAL`.
//!
//! ```text
//!  server -> client   'w' XLogData:  Int64 wal_start, Int64 wal_end, Int64 send_time, message
//!                     'k' keepalive: Int64 wal_end, Int64 send_time, Int8 reply_requested
//!  client -> server   'r' standby status update: Int64 written, Int64 flushed,
//!                     Int64 applied, Int64 client_time, Int8 reply_requested
//! ```
//!
//! The XLogData payload is one pgoutput message, decoded by [`super::Decoder`]; its error
//! offsets count from the payload, [`XLogData::HEADER_LEN`] bytes into the CopyData.
//! [`decode`] follows the same rules as the message decoder: no panics, errors with offsets.

use std::time::SystemTime;

use super::reader::{error, Reader};
use super::{DecodeError, DecodeErrorKind, PgTimestamp, PG_EPOCH_OFFSET_MICROS};
use crate::Lsn;

const XLOG_DATA: u8 = b'w';
const PRIMARY_KEEPALIVE: u8 = b'k';
const STANDBY_STATUS_UPDATE: u8 = b'r';

/// A CopyData message the walsender sends during logical replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    XLogData(XLogData<'a>),
    Keepalive(PrimaryKeepalive),
}

/// WAL data: for logical replication, exactly one pgoutput message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XLogData<'a> {
    /// WAL position the walsender attached to the message (the record being decoded). Not a
    /// resume point: confirm a transaction by its Commit's `end_lsn`.
    pub wal_start: Lsn,
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    pub send_time: PgTimestamp,
    /// The pgoutput message, borrowed from the CopyData payload.
    pub data: &'a [u8],
}

impl XLogData<'_> {
    /// Bytes before `data` in the CopyData payload: tag and three Int64s.
    pub const HEADER_LEN: usize = 25;
}

/// Primary keepalive: the server is alive and has WAL up to `wal_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    pub wal_end: Lsn,
    pub send_time: PgTimestamp,
    /// The server wants a standby status update soon, or it will time the client out.
    pub reply_requested: bool,
}

/// Decodes one CopyData payload from the walsender.
pub fn decode(buf: &[u8]) -> Result<ServerMessage<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let Ok(tag) = r.read_u8("message tag") else {
        return Err(error(0, DecodeErrorKind::Empty));
    };
    match tag {
        XLOG_DATA => {
            let wal_start = r.read_lsn("WAL start")?;
            let wal_end = r.read_lsn("WAL end")?;
            let send_time = r.read_i64("send time")?;
            let data = r.read_bytes(r.remaining(), "WAL data")?;
            Ok(ServerMessage::XLogData(XLogData { wal_start, wal_end, send_time, data }))
        }
        PRIMARY_KEEPALIVE => {
            let msg = PrimaryKeepalive {
                wal_end: r.read_lsn("WAL end")?,
                send_time: r.read_i64("send time")?,
                reply_requested: r.read_u8("reply requested flag")? != 0,
            };
            r.finish()?;
            Ok(ServerMessage::Keepalive(msg))
        }
        _ => Err(error(0, DecodeErrorKind::UnknownTag(char::from(tag)))),
    }
}

/// The client's progress report. `flushed` is what the slot's `confirmed_flush_lsn` advances
/// to, so it must only cover changes the consumer has made durable (acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last WAL byte + 1 received and written.
    pub written: Lsn,
    /// Last WAL byte + 1 durably processed: the slot may release WAL before it.
    pub flushed: Lsn,
    /// Last WAL byte + 1 applied.
    pub applied: Lsn,
    /// The client's clock, see [`pg_timestamp`].
    pub client_time: PgTimestamp,
    /// Ask the server to answer immediately (with a keepalive).
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Size of the encoded CopyData payload.
    pub const ENCODED_LEN: usize = 34;

    /// Appends the CopyData payload to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(Self::ENCODED_LEN);
        out.push(STANDBY_STATUS_UPDATE);
        out.extend_from_slice(&self.written.0.to_be_bytes());
        out.extend_from_slice(&self.flushed.0.to_be_bytes());
        out.extend_from_slice(&self.applied.0.to_be_bytes());
        out.extend_from_slice(&self.client_time.to_be_bytes());
        out.push(u8::from(self.reply_requested));
    }

    /// The CopyData payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::ENCODED_LEN);
        self.encode_into(&mut out);
        out
    }
}

/// `t` in PostgreSQL's timestamp form (microseconds since 2000-01-01 UTC), saturating at the
/// ends of `i64`.
pub fn pg_timestamp(t: SystemTime) -> PgTimestamp {
    let unix_micros = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |m| -m),
    };
    unix_micros.saturating_sub(PG_EPOCH_OFFSET_MICROS)
}
