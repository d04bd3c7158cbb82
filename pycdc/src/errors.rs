//! One error type for everything that can fail below Python, mapped once to the
//! `pgcdc.Error` hierarchy (defined in `pgcdc/errors.py`).
//!
//! ```text
//!  PgError::Interface   -> InterfaceError       misuse, bad arguments, closed stream
//!  PgError::NoPendingLsn-> NoPendingLSNError    acknowledge() in auto mode (also a RuntimeError,
//!                                               as the seed library raised)
//!  PgError::Connect     -> ConnectionError      cannot reach/handshake with the server
//!  PgError::Io          -> ConnectionError      connection lost while streaming
//!  PgError::Protocol    -> InternalError        the server said something we do not understand
//!                                               (not the caller's misuse, so not InterfaceError)
//!  PgError::Internal    -> InternalError        a bug: a panic in a stream task
//!  PgError::Operational -> OperationalError     e.g. acknowledgements that could not be flushed
//!  PgError::Data        -> DataError            a value or pgoutput message we cannot decode
//!  PgError::Server      -> by SQLSTATE class    28 AuthenticationError, 08 ConnectionError,
//!                                               42 ProgrammingError, 22 DataError, 23
//!                                               IntegrityError, 0A NotSupportedError, 53/55/57/58
//!                                               OperationalError, XX InternalError, else
//!                                               DatabaseError
//! ```

use std::fmt;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

pub use pgcdc_wire::ServerError;
use pgcdc_wire::{ConnParams, WireError};

#[derive(Debug, Clone)]
pub enum PgError {
    Interface(String),
    NoPendingLsn(String),
    Connect(String),
    Io(String),
    Protocol(String),
    Internal(String),
    Operational(String),
    Data(String),
    Server(ServerError),
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Interface(m)
            | PgError::NoPendingLsn(m)
            | PgError::Connect(m)
            | PgError::Io(m)
            | PgError::Protocol(m)
            | PgError::Internal(m)
            | PgError::Operational(m)
            | PgError::Data(m) => f.write_str(m),
            PgError::Server(e) => f.write_str(&e.message),
        }
    }
}

impl PgError {
    pub fn server(code: &str, message: impl Into<String>, hint: Option<String>) -> PgError {
        PgError::Server(ServerError::new(code, message, hint))
    }

    /// The server refused an acknowledgement because the position is beyond what the feed
    /// has staged (22023 "cannot acknowledge ..."). After a server crash the queue is rebuilt
    /// from the slot, so an event this process saw may not be staged again yet: worth retrying.
    pub fn is_ack_not_staged_yet(&self) -> bool {
        matches!(self, PgError::Server(e) if e.code == "22023" && e.message.starts_with("cannot acknowledge"))
    }

    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// Worth reconnecting for: the connection broke or the server is (re)starting, as opposed
    /// to a wrong password, a missing slot or a bug.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Io(_) | PgError::Connect(_) => true,
            PgError::Server(e) => pgcdc_wire::error::sqlstate_is_transient(&e.code),
            _ => false,
        }
    }

    /// Maps an error of a tokio-postgres session against `params`.
    pub fn from_tokio_postgres(e: tokio_postgres::Error, params: &ConnParams) -> PgError {
        if let Some(db) = e.as_db_error() {
            return PgError::Server(ServerError {
                severity: db.severity().to_owned(),
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
                detail: db.detail().map(str::to_owned),
                hint: db.hint().map(str::to_owned),
            });
        }
        let chain = std::iter::successors(Some(&e as &dyn std::error::Error), |s| s.source());
        if chain.map(|s| s.to_string()).any(|m| m.contains("password missing")) {
            // The server asked for a password and none was given: the same error as the
            // replication connection's (and libpq's) — an authentication failure.
            return PgError::server(
                "28P01",
                format!("the server asks for a password for user \"{}\" and none was given", params.user),
                Some(
                    "pass password=... (or set PGPASSWORD, or use a password file: ~/.pgpass or PGPASSFILE, mode 0600)"
                        .into(),
                ),
            );
        }
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_closed() {
            PgError::Io(format!("connection to {} lost: {msg}", params.endpoint()))
        } else {
            PgError::Connect(format!("cannot connect to {}: {msg}", params.endpoint()))
        }
    }

    fn class_name(&self) -> &'static str {
        match self {
            PgError::Interface(_) => "InterfaceError",
            PgError::NoPendingLsn(_) => "NoPendingLSNError",
            PgError::Protocol(_) | PgError::Internal(_) => "InternalError",
            PgError::Operational(_) => "OperationalError",
            PgError::Connect(_) | PgError::Io(_) => "ConnectionError",
            PgError::Data(_) => "DataError",
            PgError::Server(e) => match e.code.get(..2).unwrap_or("") {
                "28" => "AuthenticationError",
                "08" => "ConnectionError",
                "42" => "ProgrammingError",
                "22" => "DataError",
                "23" => "IntegrityError",
                "0A" => "NotSupportedError",
                "53" | "55" | "57" | "58" => "OperationalError",
                "XX" => "InternalError",
                _ => "DatabaseError",
            },
        }
    }

    /// The Python exception: an instance of `pgcdc.errors.<class>` with `sqlstate`, `detail`,
    /// `hint` and `severity`; connection failures carry an `OSError` as their `__cause__`.
    pub fn to_py(&self, py: Python<'_>) -> PyErr {
        match self.build(py) {
            Ok(e) => e,
            Err(e) => e,
        }
    }

    fn build(&self, py: Python<'_>) -> PyResult<PyErr> {
        static MODULE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let module = MODULE.get_or_try_init(py, || py.import("pgcdc.errors").map(|m| m.into_any().unbind()))?;
        let cls = module.bind(py).getattr(self.class_name())?.cast_into::<PyType>()?;
        let kwargs = PyDict::new(py);
        if let PgError::Server(e) = self {
            kwargs.set_item("sqlstate", &e.code)?;
            kwargs.set_item("detail", &e.detail)?;
            kwargs.set_item("hint", &e.hint)?;
            kwargs.set_item("severity", &e.severity)?;
        }
        let value = cls.call((self.to_string(),), Some(&kwargs))?;
        let err = PyErr::from_value(value);
        if let PgError::Connect(m) | PgError::Io(m) = self {
            err.set_cause(py, Some(pyo3::exceptions::PyOSError::new_err(m.clone())));
        }
        Ok(err)
    }
}

impl From<WireError> for PgError {
    fn from(e: WireError) -> PgError {
        match e {
            WireError::Interface(m) => PgError::Interface(m),
            WireError::Connect(m) => PgError::Connect(m),
            WireError::Io(m) => PgError::Io(m),
            WireError::Protocol(m) => PgError::Protocol(m),
            WireError::Server(e) => PgError::Server(e),
        }
    }
}

impl From<PgError> for PyErr {
    fn from(e: PgError) -> PyErr {
        Python::attach(|py| e.to_py(py))
    }
}
