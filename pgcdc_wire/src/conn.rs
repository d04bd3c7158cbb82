//! A replication-mode connection (`replication=database`) on tokio: startup, TLS, password
//! authentication (cleartext, md5, SCRAM-SHA-256), simple queries, and the CopyBoth stream of
//! `START_REPLICATION ... LOGICAL`.
//!
//! Authentication is strict about downgrades: once SCRAM has started, only its own next
//! step is accepted (an AuthenticationOk before the server proved it knows the password, or a
//! switch to cleartext/md5, ends the connection). A cleartext password is only sent over TLS
//! or a unix socket, unless `allow_cleartext_password` says otherwise.
//!
//! The walsender framing inside CopyData is `pgcdc_core::pgoutput::frame`; this module only
//! splits the PostgreSQL protocol messages around it. Frames are cut out of one large read
//! buffer without copying, so a pgoutput message borrowed from a frame can be kept as `Bytes`.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::conninfo::{ChannelBindingMode, ConnParams, SslMode};
use crate::error::{ServerError, WireError};

/// The transport under the protocol.
pub enum Stream {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl Stream {
    async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_buf(buf).await,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read_buf(buf).await,
            Stream::Unix(s) => s.read_buf(buf).await,
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(data).await,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Stream::Unix(s) => s.write_all(data).await,
        }
    }

    fn is_encrypted(&self) -> bool {
        match self {
            #[cfg(feature = "tls")]
            Stream::Tls(_) => true,
            _ => false,
        }
    }

    /// `tls-server-end-point` data (RFC 5929) of a TLS connection.
    fn tls_end_point(&self) -> Option<Vec<u8>> {
        match self {
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.get_ref().1.peer_certificates()?.first().map(|c| crate::tls::end_point_hash(c)),
            _ => None,
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown().await,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.shutdown().await,
            Stream::Unix(s) => s.shutdown().await,
        };
    }
}

/// One backend message: its tag and body (without the length).
pub struct BackendMessage {
    pub tag: u8,
    pub body: Bytes,
}

/// Backend message tags used here.
pub mod tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const DATA_ROW: u8 = b'D';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
}

/// Rows of a simple query, text format; None is SQL NULL.
pub type Rows = Vec<Vec<Option<String>>>;

/// A replication connection, before or after START_REPLICATION.
pub struct ReplConn {
    stream: Stream,
    read: BytesMut,
    write: BytesMut,
    endpoint: String,
    /// Backend process id (for pg_terminate_backend in tests and diagnostics).
    pub backend_pid: i32,
    /// `server_version_num` (from the server_version ParameterStatus), e.g. 150004.
    pub server_version: u32,
    encrypted: bool,
    /// `tls-server-end-point` channel binding data: the hash of the server's certificate.
    tls_end_point: Option<Vec<u8>>,
}

const READ_CHUNK: usize = 256 * 1024;

impl ReplConn {
    /// Connects, authenticates and waits for ReadyForQuery, within `params.connect_timeout`.
    pub async fn connect(params: &ConnParams) -> Result<ReplConn, WireError> {
        match tokio::time::timeout(params.connect_timeout, Self::connect_inner(params)).await {
            Ok(r) => r,
            Err(_) => Err(WireError::Connect(format!(
                "connection to {} timed out after {:.1} s (connect_timeout)",
                params.endpoint(),
                params.connect_timeout.as_secs_f64()
            ))),
        }
    }

    async fn connect_inner(params: &ConnParams) -> Result<ReplConn, WireError> {
        let endpoint = params.endpoint();
        let stream = open_stream(params).await?;
        let mut conn = ReplConn {
            read: BytesMut::with_capacity(READ_CHUNK),
            write: BytesMut::with_capacity(1024),
            endpoint,
            backend_pid: 0,
            server_version: 0,
            encrypted: stream.is_encrypted(),
            tls_end_point: stream.tls_end_point(),
            stream,
        };
        conn.startup(params).await?;
        Ok(conn)
    }

    async fn startup(&mut self, params: &ConnParams) -> Result<(), WireError> {
        let mut startup = vec![
            ("user", params.user.as_str()),
            ("database", params.database.as_str()),
            ("replication", "database"),
            ("application_name", params.application_name.as_str()),
        ];
        // The value parsers assume these output formats (pgcdc_core::value).
        startup.push(("client_encoding", "UTF8"));
        startup.extend(crate::session::TEXT_OUTPUT_SETTINGS.iter().copied());
        if let Some(o) = &params.options {
            startup.push(("options", o.as_str()));
        }
        frontend::startup_message(startup.iter().copied(), &mut self.write).map_err(io_err)?;
        self.flush().await?;
        let mut scram: Option<sasl::ScramSha256> = None;
        // SCRAM: started (initial response sent) / finished (server signature verified).
        let mut scram_done = false;
        let endpoint = self.endpoint.clone();
        let downgrade = move |what: &str| {
            WireError::Connect(format!(
                "the server at {endpoint} answered {what} in the middle of SCRAM authentication; refusing (a man in the middle could be downgrading the authentication)"
            ))
        };
        let require_binding = params.channel_binding == ChannelBindingMode::Require;
        let endpoint = self.endpoint.clone();
        let unbound = move |what: &str| {
            WireError::Connect(format!(
                "channel binding required (channel_binding=require), but the server at {endpoint} {what}"
            ))
        };
        loop {
            let msg = self.next_message().await?;
            match msg.tag {
                tag::AUTHENTICATION => {
                    let mut body = msg.body.clone();
                    if body.len() < 4 {
                        return Err(WireError::Protocol("short authentication message".into()));
                    }
                    let code = body.get_i32();
                    if scram.is_some() && !scram_done && !matches!(code, 11 | 12) {
                        return Err(downgrade(&format!("authentication request {code}")));
                    }
                    match code {
                        0 if require_binding && !scram_done => {
                            return Err(unbound("authenticated this client without channel binding"));
                        }
                        0 => {}
                        3 | 5 if require_binding => {
                            return Err(unbound("asks for a password without SCRAM, which cannot bind the channel"));
                        }
                        3 => {
                            if scram.is_some() {
                                return Err(downgrade("a cleartext password request"));
                            }
                            if !(self.encrypted || params.is_unix_socket() || params.allow_cleartext_password) {
                                return Err(WireError::Connect(format!(
                                    "the server at {} asks for the password in cleartext over an unencrypted connection; refusing to send it (use TLS: sslmode=require or stronger, or allow_cleartext_password=True if the network is trusted)",
                                    self.endpoint
                                )));
                            }
                            let pw = password(params)?;
                            frontend::password_message(pw.as_bytes(), &mut self.write).map_err(io_err)?;
                            self.flush().await?;
                        }
                        5 => {
                            if scram.is_some() {
                                return Err(downgrade("an md5 password request"));
                            }
                            let pw = password(params)?;
                            let salt: [u8; 4] = body
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| WireError::Protocol("short md5 salt".into()))?;
                            let hash = md5_hash(params.user.as_bytes(), pw.as_bytes(), salt);
                            frontend::password_message(hash.as_bytes(), &mut self.write).map_err(io_err)?;
                            self.flush().await?;
                        }
                        10 => {
                            if scram.is_some() {
                                return Err(downgrade("a second SASL request"));
                            }
                            let mechanisms: Vec<&[u8]> = body.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                            let offers = |m: &str| mechanisms.contains(&m.as_bytes());
                            let (mechanism, binding) = choose_scram(
                                params.channel_binding,
                                self.tls_end_point.as_deref(),
                                offers(sasl::SCRAM_SHA_256_PLUS),
                            )
                            .map_err(&unbound)?;
                            if !offers(mechanism) {
                                return Err(WireError::Connect(format!(
                                    "the server at {} asks for SASL mechanisms this client lacks",
                                    self.endpoint
                                )));
                            }
                            let pw = password(params)?;
                            let s = sasl::ScramSha256::new(pw.as_bytes(), binding);
                            frontend::sasl_initial_response(mechanism, s.message(), &mut self.write)
                                .map_err(io_err)?;
                            self.flush().await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s =
                                scram.as_mut().ok_or_else(|| WireError::Protocol("unexpected SASL continue".into()))?;
                            s.update(&body).map_err(|e| WireError::Protocol(format!("SCRAM: {e}")))?;
                            frontend::sasl_response(s.message(), &mut self.write).map_err(io_err)?;
                            self.flush().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| WireError::Protocol("unexpected SASL final".into()))?;
                            s.finish(&body).map_err(|e| {
                                WireError::Connect(format!(
                                    "SCRAM: the server at {} did not prove it knows the password: {e}",
                                    self.endpoint
                                ))
                            })?;
                            scram_done = true;
                        }
                        other => {
                            return Err(WireError::Connect(format!(
                                "the server at {} asks for authentication method {other}, which this client does not support (use password, md5 or scram-sha-256)",
                                self.endpoint
                            )))
                        }
                    }
                }
                b'K' => {
                    let mut b = msg.body.clone();
                    if b.len() >= 4 {
                        self.backend_pid = b.get_i32();
                    }
                }
                b'S' => {
                    // ParameterStatus: name\0value\0
                    let mut parts = msg.body.split(|&b| b == 0);
                    if parts.next() == Some(b"server_version".as_slice()) {
                        let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                        self.server_version = parse_server_version(&v);
                    }
                }
                tag::READY_FOR_QUERY => {
                    if scram.is_some() && !scram_done {
                        return Err(downgrade("ReadyForQuery"));
                    }
                    return Ok(());
                }
                tag::ERROR_RESPONSE => return Err(WireError::Server(ServerError::parse(&msg.body))),
                _ => {} // notices
            }
        }
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        let data = self.write.split();
        self.stream.write_all(&data).await.map_err(|e| self.lost(e))
    }

    fn lost(&self, e: std::io::Error) -> WireError {
        WireError::Io(format!("connection to {} lost: {e}", self.endpoint))
    }

    /// Cuts the next complete message out of the read buffer, without I/O.
    pub fn try_message(&mut self) -> Result<Option<BackendMessage>, WireError> {
        if self.read.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]) as usize;
        if !(4..=0x4000_0000 + 64).contains(&len) {
            return Err(WireError::Protocol(format!("invalid message length {len}")));
        }
        if self.read.len() < len + 1 {
            self.read.reserve(len + 1 - self.read.len());
            return Ok(None);
        }
        let mut frame = self.read.split_to(len + 1);
        let tag = frame[0];
        frame.advance(5);
        Ok(Some(BackendMessage { tag, body: frame.freeze() }))
    }

    /// Reads more bytes from the server into the buffer. Cancel-safe.
    pub async fn fill(&mut self) -> Result<(), WireError> {
        if self.read.capacity() - self.read.len() < 16 * 1024 {
            self.read.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.read).await {
            Ok(0) => Err(WireError::Io(format!("connection to {} closed by the server", self.endpoint))),
            Ok(_) => Ok(()),
            Err(e) => Err(self.lost(e)),
        }
    }

    pub async fn next_message(&mut self) -> Result<BackendMessage, WireError> {
        loop {
            if let Some(m) = self.try_message()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Runs one simple query (SQL or a replication command) and returns its rows.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Rows, WireError> {
        frontend::query(sql, &mut self.write).map_err(io_err)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let msg = self.next_message().await?;
            match msg.tag {
                tag::DATA_ROW => rows.push(parse_data_row(&msg.body)?),
                tag::ERROR_RESPONSE => error = Some(ServerError::parse(&msg.body)),
                tag::READY_FOR_QUERY => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(WireError::Server(e)),
            None => Ok(rows),
        }
    }

    /// Sends START_REPLICATION and waits for CopyBothResponse.
    pub async fn start_replication(&mut self, command: &str) -> Result<(), WireError> {
        frontend::query(command, &mut self.write).map_err(io_err)?;
        self.flush().await?;
        loop {
            let msg = self.next_message().await?;
            match msg.tag {
                tag::COPY_BOTH_RESPONSE => return Ok(()),
                tag::ERROR_RESPONSE => {
                    let e = ServerError::parse(&msg.body);
                    // Drain to ReadyForQuery so the error is the whole story.
                    let _ = tokio::time::timeout(Duration::from_millis(200), async {
                        while let Ok(m) = self.next_message().await {
                            if m.tag == tag::READY_FOR_QUERY {
                                break;
                            }
                        }
                    })
                    .await;
                    return Err(WireError::Server(e));
                }
                _ => {}
            }
        }
    }

    /// Sends one CopyData message (a standby status update).
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), WireError> {
        self.write.extend_from_slice(b"d");
        self.write.extend_from_slice(&((payload.len() + 4) as u32).to_be_bytes());
        self.write.extend_from_slice(payload);
        self.flush().await
    }

    /// Ends the stream politely: CopyDone, wait (briefly) for the server's end of the command,
    /// Terminate, close.
    pub async fn close(mut self, wait: Duration) {
        frontend::copy_done(&mut self.write);
        if self.flush().await.is_ok() {
            let _ = tokio::time::timeout(wait, async {
                while let Ok(m) = self.next_message().await {
                    if m.tag == tag::READY_FOR_QUERY || m.tag == tag::ERROR_RESPONSE {
                        break;
                    }
                }
            })
            .await;
        }
        frontend::terminate(&mut self.write);
        let _ = self.flush().await;
        self.stream.shutdown().await;
    }
}

/// The SCRAM mechanism and channel binding, as libpq chooses them: bind when asked (or by
/// default) and possible; the `y` flag when this client could bind but the server over TLS did
/// not offer it (so a downgrade by a man in the middle is detected). Err: why
/// `channel_binding=require` cannot be met.
fn choose_scram(
    mode: ChannelBindingMode,
    tls_end_point: Option<&[u8]>,
    plus_offered: bool,
) -> Result<(&'static str, sasl::ChannelBinding), &'static str> {
    Ok(match (mode, tls_end_point) {
        (ChannelBindingMode::Disable, _) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
        (_, Some(hash)) if plus_offered => {
            (sasl::SCRAM_SHA_256_PLUS, sasl::ChannelBinding::tls_server_end_point(hash.to_vec()))
        }
        (ChannelBindingMode::Require, None) => return Err("is reached without TLS, so there is no channel to bind"),
        (ChannelBindingMode::Require, Some(_)) => return Err("does not offer SCRAM-SHA-256-PLUS"),
        (ChannelBindingMode::Prefer, Some(_)) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
        (ChannelBindingMode::Prefer, None) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
    })
}

fn password(params: &ConnParams) -> Result<&str, WireError> {
    params.password.as_deref().filter(|p| !p.is_empty()).ok_or_else(|| {
        WireError::server(
            "28P01",
            format!("the server asks for a password for user \"{}\" and none was given", params.user),
            Some(
                "pass password=... (or set PGPASSWORD, or use a password file: ~/.pgpass or PGPASSFILE, mode 0600)"
                    .into(),
            ),
        )
    })
}

/// `15.4 (Debian 15.4-1)` -> 150004; `9.6.24` -> 90624; 0 when unknown.
fn parse_server_version(v: &str) -> u32 {
    let nums: Vec<u32> = v
        .split(|c: char| !c.is_ascii_digit())
        .take_while(|s| !s.is_empty())
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums.as_slice() {
        [major, minor, ..] if *major >= 10 => major * 10000 + minor,
        [major] if *major >= 10 => major * 10000,
        [major, minor, patch] => major * 10000 + minor * 100 + patch,
        _ => 0,
    }
}

fn io_err(e: std::io::Error) -> WireError {
    WireError::Interface(e.to_string())
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, WireError> {
    let bad = || WireError::Protocol("malformed DataRow".into());
    let mut b = body;
    if b.len() < 2 {
        return Err(bad());
    }
    let n = b.get_i16();
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if b.len() < 4 {
            return Err(bad());
        }
        let len = b.get_i32();
        if len < 0 {
            row.push(None);
        } else {
            let len = len as usize;
            if b.len() < len {
                return Err(bad());
            }
            row.push(Some(String::from_utf8_lossy(&b[..len]).into_owned()));
            b.advance(len);
        }
    }
    Ok(row)
}

/// TCP (+ optional TLS) or a unix socket.
async fn open_stream(params: &ConnParams) -> Result<Stream, WireError> {
    let endpoint = params.endpoint();
    let refused = |e: std::io::Error| WireError::Connect(format!("cannot connect to {endpoint}: {e}"));
    if params.is_unix_socket() {
        let s = UnixStream::connect(&endpoint).await.map_err(refused)?;
        return Ok(Stream::Unix(s));
    }
    let tcp = TcpStream::connect((params.host.as_str(), params.port)).await.map_err(refused)?;
    let _ = tcp.set_nodelay(true);
    set_liveness(&tcp, params)
        .map_err(|e| WireError::Connect(format!("cannot set TCP keepalives on {endpoint}: {e}")))?;
    start_tls(tcp, params).await
}

/// SSLRequest and the TLS handshake, as `sslmode` asks.
#[cfg(feature = "tls")]
async fn start_tls(mut tcp: TcpStream, params: &ConnParams) -> Result<Stream, WireError> {
    let endpoint = params.endpoint();
    let refused = |e: std::io::Error| WireError::Connect(format!("cannot connect to {endpoint}: {e}"));
    let Some(tls) = crate::tls::client_config(params).map_err(WireError::Interface)? else {
        return Ok(Stream::Tcp(tcp));
    };
    // SSLRequest: the server answers one byte, 'S' (go ahead) or 'N'.
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    tcp.write_all(&req).await.map_err(refused)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(refused)?;
    match answer[0] {
        b'S' => {
            let name = crate::tls::server_name(&params.host).map_err(WireError::Interface)?;
            let s = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| WireError::Connect(format!("TLS handshake with {endpoint} failed: {e}")))?;
            Ok(Stream::Tls(Box::new(s)))
        }
        // The server does not do TLS: carry on in the clear on the same connection, as libpq.
        b'N' if params.sslmode == SslMode::Prefer => Ok(Stream::Tcp(tcp)),
        b'N' => Err(WireError::Connect(format!(
            "the server at {endpoint} does not support TLS, and sslmode={} requires it",
            params.sslmode.name()
        ))),
        other => Err(WireError::Protocol(format!("unexpected answer {other:#x} to SSLRequest"))),
    }
}

/// Built without TLS: plain TCP where `sslmode` allows it.
#[cfg(not(feature = "tls"))]
async fn start_tls(tcp: TcpStream, params: &ConnParams) -> Result<Stream, WireError> {
    match params.sslmode {
        SslMode::Disable | SslMode::Prefer => Ok(Stream::Tcp(tcp)),
        mode => Err(WireError::Interface(format!(
            "sslmode={} needs TLS, which this build of pgcdc leaves out (connect over a unix socket or loopback, with sslmode=disable or prefer)",
            mode.name()
        ))),
    }
}

/// TCP keepalives (and `tcp_user_timeout`) as `params` asks, so a half-open connection (the
/// server's host vanished) is noticed by the kernel even while the stream is idle.
fn set_liveness(tcp: &TcpStream, params: &ConnParams) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    match params.keepalive {
        Some(k) => sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new().with_time(k.idle).with_interval(k.interval).with_retries(k.count),
        )?,
        None => sock.set_keepalive(false)?,
    }
    if let Some(t) = params.tcp_user_timeout {
        sock.set_tcp_user_timeout(Some(t))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_binds_the_channel_as_libpq_does() {
        use ChannelBindingMode::*;
        let hash: &[u8] = &[7; 32];
        let pick = |mode, tls, plus| choose_scram(mode, tls, plus).map(|(m, _)| m);
        assert_eq!(pick(Prefer, Some(hash), true), Ok(sasl::SCRAM_SHA_256_PLUS));
        assert_eq!(pick(Require, Some(hash), true), Ok(sasl::SCRAM_SHA_256_PLUS));
        assert_eq!(pick(Disable, Some(hash), true), Ok(sasl::SCRAM_SHA_256));
        assert_eq!(pick(Prefer, Some(hash), false), Ok(sasl::SCRAM_SHA_256), "TLS, no PLUS offered: flag y");
        assert_eq!(pick(Prefer, None, false), Ok(sasl::SCRAM_SHA_256));
        assert!(pick(Require, None, false).unwrap_err().contains("without TLS"));
        assert!(pick(Require, Some(hash), false).unwrap_err().contains("SCRAM-SHA-256-PLUS"));
        // The gs2 header of the client-first message says which: p=, y or n.
        let first = |mode, tls, plus| {
            let (_, binding) = choose_scram(mode, tls, plus).unwrap();
            String::from_utf8(sasl::ScramSha256::new(b"pw", binding).message().to_vec()).unwrap()
        };
        assert!(first(Prefer, Some(hash), true).starts_with("p=tls-server-end-point,,"));
        assert!(first(Prefer, Some(hash), false).starts_with("y,,"));
        assert!(first(Prefer, None, false).starts_with("n,,"));
        assert!(first(Disable, Some(hash), true).starts_with("n,,"));
    }

    #[test]
    fn server_versions() {
        assert_eq!(parse_server_version("15.4 (Debian 15.4-1.pgdg120+1)"), 150004);
        assert_eq!(parse_server_version("13.12"), 130012);
        assert_eq!(parse_server_version("17devel"), 170000);
        assert_eq!(parse_server_version("9.6.24"), 90624);
        assert_eq!(parse_server_version("garbage"), 0);
    }
}
