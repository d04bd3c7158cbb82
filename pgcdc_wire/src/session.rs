//! A logical replication session with pgoutput: the settings it runs with, the protocol it
//! negotiates, and the walsender conversation (status updates, keepalives, liveness) shared by
//! the extension's stream thread and `LogicalReplicationReader`.
//!
//! ```text
//!   Session::start ── START_REPLICATION SLOT s LOGICAL lsn (proto_version 'N', ...)
//!      │
//!      ├─ next_wal()      the next CopyData, decoded: Wal::Data (one pgoutput message) or
//!      │                  Wal::Keepalive; None = read more (fill(), cancel-safe)
//!      ├─ send_status()   standby status update: written / flushed (= what the slot may
//!      │                  confirm: acknowledged only) / applied
//!      ├─ status_due()    every STATUS_MIN_INTERVAL while the flush position moves, at
//!      │                  least every `max_interval` otherwise
//!      └─ silence_due()   nothing heard for wal_sender_timeout / 2: ask for a reply; for
//!                         wal_sender_timeout x 2: the connection is lost (half-open TCP)
//! ```
//!
//! What the flush position is, is the caller's (see `pgcdc_core::position::Confirmer`).

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pgcdc_core::pgoutput::frame::{self, ServerMessage, StandbyStatusUpdate};
use pgcdc_core::Lsn;

use crate::conn::{tag, ReplConn};
use crate::error::{ServerError, WireError};
use crate::{quote_ident, quote_literal};

/// Settings that change how values are rendered as text, pinned to what the value parsers of
/// `pgcdc_core::value` expect whatever `ALTER DATABASE` or `ALTER ROLE ... SET` says. Sent as
/// startup parameters of every replication session, and set by the extension around its
/// snapshot reads, so a row's key has the same text in both.
pub const TEXT_OUTPUT_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("TimeZone", "UTC"),
];

/// The newest pgoutput protocol a server speaks: 4 on PostgreSQL 16+, 3 on 15, 2 on 14, 1
/// before. (`server_version` 0 = unknown: taken as the newest.)
pub fn proto_version(server_version: u32) -> u32 {
    match server_version {
        0 => 4,
        v if v >= 160000 => 4,
        v if v >= 150000 => 3,
        v if v >= 140000 => 2,
        _ => 1,
    }
}

/// pgoutput's `messages` option (logical decoding messages) exists from PostgreSQL 14.
pub fn supports_messages(server_version: u32) -> bool {
    server_version == 0 || server_version >= 140000
}

/// What to ask pgoutput for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pgoutput {
    pub publications: Vec<String>,
    /// Logical decoding messages (`pg_logical_emit_message`).
    pub messages: bool,
    /// In-progress transactions sent in stream blocks before they commit (protocol 2+);
    /// off where the server cannot.
    pub streaming: bool,
}

impl Pgoutput {
    /// The protocol version this session uses with a server of `server_version`.
    pub fn proto_version(&self, server_version: u32) -> u32 {
        proto_version(server_version)
    }

    /// Whether streaming is on with that server (asked for, and protocol 2+).
    pub fn streams(&self, server_version: u32) -> bool {
        self.streaming && proto_version(server_version) >= 2
    }

    /// `START_REPLICATION SLOT ... LOGICAL ... (...)` for a server of `server_version`. Err:
    /// `messages` asked of a server before PostgreSQL 14 (0A000).
    pub fn start_command(&self, slot: &str, start: Lsn, server_version: u32) -> Result<String, WireError> {
        if self.messages && !supports_messages(server_version) {
            return Err(WireError::server(
                "0A000",
                "logical decoding messages need PostgreSQL 14 or later (pgoutput's messages option)",
                Some("Leave messages out with this server.".into()),
            ));
        }
        // publication_names is split like an identifier list: always double-quoted, so case,
        // commas and spaces survive.
        let publications = self.publications.iter().map(|p| quote_ident(p)).collect::<Vec<_>>().join(",");
        let mut options = format!(
            "proto_version '{}', publication_names {}",
            self.proto_version(server_version),
            quote_literal(&publications)
        );
        if self.messages {
            options.push_str(", messages 'true'");
        }
        if self.streams(server_version) {
            options.push_str(", streaming 'on'");
        }
        Ok(format!("START_REPLICATION SLOT {} LOGICAL {start} ({options})", quote_ident(slot)))
    }
}

/// One message of the walsender, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wal {
    /// One pgoutput message; `wal_start` is the LSN it was sent at.
    Data { wal_start: Lsn, data: Bytes },
    /// The server's WAL end; answer at once when `reply_requested`.
    Keepalive { wal_end: Lsn, reply_requested: bool },
    /// The server ended the stream (CopyDone): connect again to go on.
    Ended,
}

/// Status updates at most this often while the flush position moves...
pub const STATUS_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// ...and at least this often otherwise, unless the session says otherwise.
pub const STATUS_MAX_INTERVAL: Duration = Duration::from_secs(10);

/// When a silent server counts as gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Ask for a reply after this much silence.
    pub ping_after: Duration,
    /// Give the connection up after this much silence.
    pub lost_after: Duration,
}

impl Liveness {
    /// From the server's `wal_sender_timeout` (it sends keepalives at half of it); 0 or
    /// unknown: 30 s / 120 s.
    pub fn for_timeout(wal_sender_timeout: Option<Duration>) -> Liveness {
        match wal_sender_timeout.filter(|t| !t.is_zero()) {
            Some(t) => Liveness {
                ping_after: (t / 2).max(Duration::from_millis(500)),
                lost_after: (t * 2).max(Duration::from_secs(2)),
            },
            None => Liveness { ping_after: Duration::from_secs(30), lost_after: Duration::from_secs(120) },
        }
    }

    async fn query(conn: &mut ReplConn) -> Result<Liveness, WireError> {
        let rows = conn.simple_query("SHOW wal_sender_timeout").await?;
        let text = rows.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();
        Ok(Liveness::for_timeout(parse_pg_duration(&text)))
    }
}

/// A duration setting as `SHOW` prints it (`60s`, `1min`, `500ms`, `0`); None when unreadable.
pub fn parse_pg_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..split].parse().ok()?;
    let ms = match t[split..].trim() {
        "" | "ms" => n,
        "s" => n * 1000,
        "min" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// A replication connection in CopyBoth mode.
pub struct Session {
    conn: ReplConn,
    /// Highest WAL position received.
    received: Lsn,
    /// The flush position last sent, and when.
    reported: Option<Lsn>,
    last_status: Instant,
    max_interval: Duration,
    liveness: Liveness,
    /// When the server was last heard from (or the caller last started listening again).
    last_heard: Instant,
    /// A reply was requested in the current silence.
    pinged: bool,
}

impl Session {
    /// Starts streaming `slot` from `start` on a connection opened with [`ReplConn::connect`].
    pub async fn start(
        mut conn: ReplConn,
        slot: &str,
        start: Lsn,
        pgoutput: &Pgoutput,
        max_interval: Duration,
    ) -> Result<Session, WireError> {
        let command = pgoutput.start_command(slot, start, conn.server_version)?;
        let liveness = Liveness::query(&mut conn).await?;
        conn.start_replication(&command).await?;
        Ok(Session {
            conn,
            received: start,
            reported: None,
            last_status: Instant::now(),
            max_interval: max_interval.clamp(STATUS_MIN_INTERVAL, STATUS_MAX_INTERVAL),
            liveness,
            last_heard: Instant::now(),
            pinged: false,
        })
    }

    pub fn server_version(&self) -> u32 {
        self.conn.server_version
    }

    pub fn backend_pid(&self) -> i32 {
        self.conn.backend_pid
    }

    /// Highest WAL position received so far.
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// The next walsender message already read, without I/O. None: call [`Session::fill`].
    pub fn next_wal(&mut self) -> Result<Option<Wal>, WireError> {
        while let Some(msg) = self.conn.try_message()? {
            match msg.tag {
                tag::COPY_DATA => {
                    let wal = match frame::decode(&msg.body)
                        .map_err(|e| WireError::Protocol(format!("walsender message: {e}")))?
                    {
                        ServerMessage::XLogData(x) => {
                            self.received = self.received.max(x.wal_start);
                            Wal::Data { wal_start: x.wal_start, data: msg.body.slice_ref(x.data) }
                        }
                        ServerMessage::Keepalive(k) => {
                            self.received = self.received.max(k.wal_end);
                            Wal::Keepalive { wal_end: k.wal_end, reply_requested: k.reply_requested }
                        }
                    };
                    return Ok(Some(wal));
                }
                tag::ERROR_RESPONSE => return Err(WireError::Server(ServerError::parse(&msg.body))),
                tag::COPY_DONE => return Ok(Some(Wal::Ended)),
                _ => {} // notices, ParameterStatus
            }
        }
        Ok(None)
    }

    /// Reads more from the server. Cancel-safe.
    pub async fn fill(&mut self) -> Result<(), WireError> {
        self.conn.fill().await?;
        self.last_heard = Instant::now();
        self.pinged = false;
        Ok(())
    }

    /// The caller stopped reading for a while (its consumer was behind): that silence was
    /// not the server's.
    pub fn listening_again(&mut self) {
        self.last_heard = Instant::now();
        self.pinged = false;
    }

    /// Sends a standby status update with `flush` as flushed and applied.
    pub async fn send_status(&mut self, flush: Lsn, reply_requested: bool) -> Result<(), WireError> {
        let update = StandbyStatusUpdate {
            written: self.received.max(flush),
            flushed: flush,
            applied: flush,
            client_time: frame::pg_timestamp(SystemTime::now()),
            reply_requested,
        };
        self.conn.send_copy_data(&update.encode()).await?;
        self.reported = Some(flush);
        self.last_status = Instant::now();
        Ok(())
    }

    /// When the next status update is due for this flush position.
    pub fn status_due(&self, flush: Lsn) -> Instant {
        if self.reported != Some(flush) {
            self.last_status + STATUS_MIN_INTERVAL
        } else {
            self.last_status + self.max_interval
        }
    }

    /// Sends a status update if one is due; true if it did.
    pub async fn maybe_send_status(&mut self, flush: Lsn) -> Result<bool, WireError> {
        if Instant::now() < self.status_due(flush) {
            return Ok(false);
        }
        self.send_status(flush, false).await?;
        Ok(true)
    }

    /// When the current silence needs attention ([`Session::silence`]).
    pub fn silence_due(&self) -> Instant {
        self.last_heard + if self.pinged { self.liveness.lost_after } else { self.liveness.ping_after }
    }

    /// Nothing heard from the server for a while: ask it for a reply, and give the connection
    /// up when even that gets no answer (a half-open TCP connection looks exactly like this).
    pub async fn silence(&mut self, flush: Lsn) -> Result<(), WireError> {
        let quiet = self.last_heard.elapsed();
        if quiet >= self.liveness.lost_after {
            return Err(WireError::Io(format!(
                "nothing heard from the server for {:.0} s (wal_sender_timeout x 2): the connection is considered lost",
                quiet.as_secs_f64()
            )));
        }
        if !self.pinged && quiet >= self.liveness.ping_after {
            self.pinged = true;
            self.send_status(flush, true).await?;
        }
        Ok(())
    }

    /// Ends the stream politely (CopyDone, Terminate), waiting at most `wait` for the server.
    pub async fn close(self, wait: Duration) {
        self.conn.close(wait).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_follows_the_server_version() {
        assert_eq!(proto_version(130012), 1);
        assert_eq!(proto_version(140009), 2);
        assert_eq!(proto_version(150004), 3);
        assert_eq!(proto_version(160000), 4);
        assert_eq!(proto_version(180001), 4);
        assert!(!supports_messages(130012) && supports_messages(140000));
    }

    #[test]
    fn start_commands_quote_and_negotiate() {
        let p = Pgoutput { publications: vec!["Shop".into(), "we\"ird, 'x'".into()], messages: true, streaming: true };
        assert_eq!(
            p.start_command("slot A", Lsn(0x16B3748), 150004).unwrap(),
            "START_REPLICATION SLOT \"slot A\" LOGICAL 0/16B3748 (proto_version '3', publication_names \
             '\"Shop\",\"we\"\"ird, ''x''\"', messages 'true', streaming 'on')"
        );
        let plain = Pgoutput { publications: vec!["p".into()], messages: false, streaming: true };
        assert_eq!(
            plain.start_command("s", Lsn(0), 130000).unwrap(),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (proto_version '1', publication_names '\"p\"')",
            "no streaming before protocol 2"
        );
        let e = p.start_command("s", Lsn(0), 130000).unwrap_err();
        assert_eq!(e.sqlstate(), Some("0A000"));
    }

    #[test]
    fn liveness_follows_wal_sender_timeout() {
        assert_eq!(parse_pg_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_pg_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_pg_duration("soon"), None);
        let l = Liveness::for_timeout(Some(Duration::from_secs(60)));
        assert_eq!((l.ping_after, l.lost_after), (Duration::from_secs(30), Duration::from_secs(120)));
        let off = Liveness::for_timeout(Some(Duration::ZERO));
        assert_eq!(off.lost_after, Duration::from_secs(120));
    }
}
