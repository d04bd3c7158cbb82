"""pgcdc: PostgreSQL change-data-capture for asyncio, decoded in Rust.

* :func:`connect` streams a pgcdc *feed* (the extension) over an ordinary SQL connection.
  Feeds are managed with :func:`create_feed` (``snapshot="initial"``, the default, emits the
  tables' existing rows first as ``op="r"`` events), :func:`alter_feed`, :func:`pause_feed`,
  :func:`resume_feed`, :func:`reset_feed`, :func:`drop_feed`, :func:`feeds`,
  :func:`feed_status`; ad hoc snapshots with :func:`snapshot` (``wait=True, progress=cb``
  polls until done and raises :class:`SnapshotFailed` when it fails or is cancelled),
  :func:`wait_snapshot`, :func:`cancel_snapshot` and :func:`snapshots`.
  ``python -m pgcdc`` does the same from a shell (``snapshot FEED`` with a progress bar).
* :class:`LogicalReplicationReader` reads a pgoutput replication slot directly (no extension)
  with the API of the ``pgoutput-decoder`` library: ``import pgcdc as pgoutput_decoder``.

Events follow Debezium's envelope (``op``, ``before``, ``after``, ``source``, ``ts_ms``...).
Feed events hold exact Python types (``Decimal`` for numeric, ``bytes`` for bytea,
``datetime`` for dates and times, ``dict``/``list`` for JSON); the reader follows the
``pgoutput-decoder`` library's types and JSON by default (see ``LogicalReplicationReader``).
"""

from __future__ import annotations

import os
from typing import Any, Optional

# The native module's allocator (mimalloc) reads its options when the module loads. Freed memory
# goes back to the OS after a second instead of 10 ms: otherwise every batch faults in and zeroes
# fresh pages again (feed client on wide rows: 17 -> 11 µs of CPU per event). Set it yourself to
# override.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "1000")

from . import _pgcdc
from ._feed import (
    SNAPSHOT_MODES,
    FeedStream,
    ack,
    alter_feed,
    cancel_snapshot,
    connect,
    create_feed,
    drop_feed,
    feed_status,
    feeds,
    pause_feed,
    reset_feed,
    resume_feed,
    snapshot,
    snapshots,
    wait_snapshot,
)
from ._jsonview import JsonNumber
from ._pgcdc import DEBEZIUM_VERSION, Event, Interval, ReplicationMessage
from ._reader import LogicalReplicationReader
from .errors import (
    AuthenticationError,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NoPendingLSNError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    SnapshotFailed,
)
from .errors import ConnectionError as ConnectionError  # noqa: A004 - not in __all__: do not shadow the builtin

__version__ = "0.1.0"

__all__ = [
    "DEBEZIUM_VERSION",
    "SNAPSHOT_MODES",
    "AuthenticationError",
    "DataError",
    "DatabaseError",
    "Error",
    "Event",
    "FeedStream",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "Interval",
    "JsonNumber",
    "LogicalReplicationReader",
    "NoPendingLSNError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "ReplicationMessage",
    "SnapshotFailed",
    "ack",
    "alter_feed",
    "cancel_snapshot",
    "connect",
    "create_feed",
    "drop_feed",
    "feed_status",
    "feeds",
    "format_operation",
    "get_table_name",
    "message_to_debezium_json",
    "message_to_dict",
    "pause_feed",
    "reset_feed",
    "resume_feed",
    "snapshot",
    "snapshots",
    "wait_snapshot",
]

_OPERATIONS = {
    "c": "INSERT",
    "u": "UPDATE",
    "d": "DELETE",
    "t": "TRUNCATE",
    "m": "MESSAGE",
    "r": "READ",
    "tombstone": "TOMBSTONE",
    "begin": "BEGIN",
    "end": "END",
}


def message_to_debezium_json(message: Any, indent: Optional[int] = 2) -> str:
    """The message as JSON text (``indent=None``: compact), made in Rust.

    A reader's message in its ``format``: by default the ``pgoutput-decoder`` library's event
    (``op``, ``before``, ``after``, ``source``, ``ts_ms``, ``ts_us``, ``ts_ns``; numbers as
    exact JSON numbers, json/jsonb nested), with ``format="debezium"`` Debezium's encoding,
    byte for byte the feed's. A feed event: its Debezium JSON.
    """
    return _pgcdc.message_to_debezium_json(message, indent)


def message_to_dict(message: Any) -> dict[str, Any]:
    """The message as a dict with exactly the keys ``pgoutput-decoder`` gave: ``op``,
    ``before``, ``after``, ``source``, ``ts_ms``, ``ts_us``, ``ts_ns`` (and, when they apply,
    ``unchanged_columns`` and ``message``).

    For a reader's message it is the library's JSON as a dict, equal to
    ``json.loads(message_to_debezium_json(message))`` (default format) for every message:
    values as the JSON holds them (bytea as base64, NaN/infinities as strings, numeric as an
    exact :class:`JsonNumber`). ``message.to_dict()`` has the Python values and
    ``transaction``.
    """
    if isinstance(message, ReplicationMessage):
        return _pgcdc.message_to_dict(message)
    source = message.source
    result: dict[str, Any] = {
        "op": message.op,
        "before": message.before,
        "after": message.after,
        "source": dict(source) if source is not None else None,
        "ts_ms": message.ts_ms,
    }
    if message.ts_us is not None:
        result["ts_us"] = message.ts_us
    if message.ts_ns is not None:
        result["ts_ns"] = message.ts_ns
    return result


def format_operation(op: str) -> str:
    """``"c"`` -> ``"INSERT"``, ``"u"`` -> ``"UPDATE"``, ``"d"`` -> ``"DELETE"``, also t, m, r."""
    return _OPERATIONS.get(op, f"UNKNOWN({op})")


def get_table_name(message: Any) -> str:
    """``schema.table`` of the message's source."""
    source = message.source or {}
    return f"{source.get('schema', 'public')}.{source.get('table', 'unknown')}"
