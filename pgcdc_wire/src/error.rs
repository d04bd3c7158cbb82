//! One error type for the client: what failed, as data. Server errors keep their SQLSTATE,
//! detail and hint; callers decide by kind and SQLSTATE, never by message text.

use std::fmt;

/// An ErrorResponse from the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    /// Parses the fields of an ErrorResponse/NoticeResponse body.
    pub fn parse(body: &[u8]) -> ServerError {
        let mut e = ServerError::default();
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match kind {
                b'V' => e.severity = value,
                b'S' if e.severity.is_empty() => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or(&[]);
        }
        e
    }

    /// An error this client raises on the server's behalf (e.g. a missing password, 28P01).
    pub fn new(code: &str, message: impl Into<String>, hint: Option<String>) -> ServerError {
        ServerError { severity: "ERROR".into(), code: code.into(), message: message.into(), detail: None, hint }
    }
}

/// Why a connection or a replication session failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Bad parameters or a setup this client cannot do (the caller's to fix).
    Interface(String),
    /// The server could not be reached, or the handshake failed.
    Connect(String),
    /// The connection was lost after it was established.
    Io(String),
    /// The server sent something this client does not understand.
    Protocol(String),
    /// The server reported an error.
    Server(ServerError),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Interface(m) | WireError::Connect(m) | WireError::Io(m) | WireError::Protocol(m) => {
                f.write_str(m)
            }
            WireError::Server(e) => f.write_str(&e.message),
        }
    }
}

impl std::error::Error for WireError {}

impl WireError {
    pub fn server(code: &str, message: impl Into<String>, hint: Option<String>) -> WireError {
        WireError::Server(ServerError::new(code, message, hint))
    }

    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            WireError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// Worth connecting again for: the connection broke or the server is (re)starting or
    /// busy, as opposed to a wrong password, a missing slot or a bug.
    pub fn is_transient(&self) -> bool {
        match self {
            WireError::Io(_) | WireError::Connect(_) => true,
            WireError::Server(e) => sqlstate_is_transient(&e.code),
            WireError::Interface(_) | WireError::Protocol(_) => false,
        }
    }
}

/// SQLSTATEs after which the same request may succeed later: connection exceptions (08),
/// operator intervention (57P: shutdown, crash recovery, cannot connect now),
/// too_many_connections, and object_in_use (a slot still held by the walsender of a
/// connection that just ended).
pub fn sqlstate_is_transient(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || code == "53300" || code == "55006"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_fields() {
        let body = b"SERROR\0VERROR\0C28P01\0Mpassword authentication failed for user \"x\"\0Hcheck it\0\0";
        let e = ServerError::parse(body);
        assert_eq!(e.code, "28P01");
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.hint.as_deref(), Some("check it"));
        assert!(e.message.starts_with("password authentication failed"));
    }

    #[test]
    fn transient_errors_are_told_by_kind_and_sqlstate() {
        assert!(WireError::Io("lost".into()).is_transient());
        assert!(WireError::server("57P01", "terminating connection due to administrator command", None).is_transient());
        assert!(WireError::server("55006", "replication slot \"s\" is active for PID 7", None).is_transient());
        assert!(!WireError::server("42704", "replication slot \"s\" does not exist", None).is_transient());
        assert!(!WireError::server("28P01", "password authentication failed", None).is_transient());
        assert!(!WireError::Protocol("bad".into()).is_transient());
    }
}
