"""The ``pgcdc.Error`` hierarchy (DB-API style, like psycopg and asyncpg).

::

    Error
     ├── InterfaceError          misuse: bad arguments, closed stream, ack after close
     │    └── NoPendingLSNError  acknowledge() with auto_acknowledge=True (also a
     │                           RuntimeError: the pgoutput-decoder library raised that)
     └── DatabaseError           the server (or the data) said no; sqlstate/detail/hint
          ├── OperationalError   server-side trouble: shutdown, slot in use, resources
          │    ├── ConnectionError        cannot reach, TLS, connection lost (also a
          │    │    │                     builtins.ConnectionError)
          │    │    └── AuthenticationError   wrong password, no pg_hba entry (SQLSTATE 28xxx)
          │    └── SnapshotFailed     a snapshot waited for ended failed or cancelled
          ├── ProgrammingError   missing slot/publication/feed, bad names (SQLSTATE 42xxx)
          ├── DataError          a value or message that cannot be decoded (22xxx)
          ├── IntegrityError     (23xxx)
          ├── NotSupportedError  (0Axxx)
          └── InternalError      (XXxxx); a server message this client cannot parse; a bug
                                 in pgcdc itself (a panic in its native code)

Every error has ``sqlstate``, ``detail``, ``hint`` and ``severity`` (None when not from the
server). Errors caused by the network keep an ``OSError`` as ``__cause__``.
"""

from __future__ import annotations

import builtins
from typing import Any, Optional

__all__ = [
    "AuthenticationError",
    "ConnectionError",
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NoPendingLSNError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "SnapshotFailed",
]


class Error(Exception):
    """Base class of every pgcdc error."""

    sqlstate: Optional[str]
    detail: Optional[str]
    hint: Optional[str]
    severity: Optional[str]

    def __init__(
        self,
        message: str = "",
        *,
        sqlstate: Optional[str] = None,
        detail: Optional[str] = None,
        hint: Optional[str] = None,
        severity: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint
        self.severity = severity

    def __str__(self) -> str:
        text = super().__str__()
        if self.detail:
            text += f"\nDETAIL:  {self.detail}"
        if self.hint:
            text += f"\nHINT:  {self.hint}"
        return text


class InterfaceError(Error):
    """The API was misused, or the stream is closed."""


class NoPendingLSNError(InterfaceError, RuntimeError):
    """``acknowledge()`` on a reader that acknowledges by itself (``auto_acknowledge=True``).

    Also a ``RuntimeError``, so code written for ``pgoutput-decoder`` (which raised
    ``RuntimeError("No pending LSN to acknowledge")``) keeps catching it.
    """


class DatabaseError(Error):
    """An error reported by (or about) the database."""


class OperationalError(DatabaseError):
    """Server-side trouble that is not the caller's fault: shutdown, slot busy, resources."""


class ConnectionError(OperationalError, builtins.ConnectionError):  # noqa: A001 - DB-API name
    """The server cannot be reached, the handshake failed, or the connection was lost."""


class AuthenticationError(ConnectionError):
    """The server refused the credentials (SQLSTATE class 28)."""


class SnapshotFailed(OperationalError):
    """A snapshot waited for (``pgcdc.snapshot(..., wait=True)``) ended ``failed`` or
    ``cancelled``, or disappeared (its feed was dropped).

    ``state`` is its last state (None when it disappeared), ``snapshot_id`` its id and
    ``snapshot`` its last ``pgcdc.snapshots`` row (None when it disappeared); the message
    holds the server's ``error`` text of a failed one. ``sqlstate`` is None: the error
    happened in the feed's worker, not in a statement of this client. (Errors raised when
    the snapshot is requested, e.g. SQLSTATE 55000 for a table without a primary key, are
    the server's error of that statement: ``OperationalError``, ``ProgrammingError``...)
    """

    state: Optional[str]
    snapshot_id: Optional[int]
    snapshot: Optional[dict[str, Any]]

    def __init__(
        self,
        message: str = "",
        *,
        state: Optional[str] = None,
        snapshot_id: Optional[int] = None,
        snapshot: Optional[dict[str, Any]] = None,
        **kwargs: Optional[str],
    ) -> None:
        super().__init__(message, **kwargs)
        self.state = state
        self.snapshot_id = snapshot_id
        self.snapshot = snapshot


class ProgrammingError(DatabaseError):
    """Missing slot, publication or feed, invalid names (SQLSTATE class 42)."""


class DataError(DatabaseError):
    """A value or message that cannot be decoded (SQLSTATE class 22)."""


class IntegrityError(DatabaseError):
    """SQLSTATE class 23."""


class NotSupportedError(DatabaseError):
    """SQLSTATE class 0A."""


class InternalError(DatabaseError):
    """SQLSTATE class XX; a server message this client cannot parse; a panic in pgcdc's
    native code (a bug: please report it)."""
