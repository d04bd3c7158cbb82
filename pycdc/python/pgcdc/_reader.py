"""``LogicalReplicationReader``: the direct pgoutput reader (no extension needed).

API-compatible with the ``pgoutput-decoder`` 0.1.0 library, so code written for it runs with
``import pgcdc as pgoutput_decoder``; its defects are fixed rather than copied (see
``README``/the class docstring).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from . import _pgcdc
from ._aio import Waker
from ._pgcdc import ReplicationMessage
from .errors import Error

__all__ = ["LogicalReplicationReader"]


class LogicalReplicationReader:
    """Streams Debezium-style change events from a logical replication slot (pgoutput).

    ::

        reader = LogicalReplicationReader("shop_pub", "shop_slot", host="db", database="shop",
                                          user="cdc", password="...")
        async for message in reader:      # ReplicationMessage: op, before, after, source, ...
            handle(message)
        await reader.stop()

    The slot must exist (``SELECT pg_create_logical_replication_slot('shop_slot',
    'pgoutput')``) unless ``create_slot=True``; the publication must exist. The user needs the
    REPLICATION attribute (and SELECT on the published tables for catalog lookups).

    Values and JSON (both tables in README.md, "The reader's values and JSON"):

    * default: the ``pgoutput-decoder`` library's. ``message.after`` holds its types (dates,
      times, timestamps, uuid and intervals as PostgreSQL's ISO text, json/jsonb as
      ``dict``/``list``, bytea as ``bytes``), except that numeric and money are exact
      ``Decimal`` s, never floats. ``message.json()``/``message_to_debezium_json`` give its
      event: ``{"op", "before", "after", "source", "ts_ms", "ts_us", "ts_ns"}`` with numbers as
      exact JSON numbers and json/jsonb nested, and ``message_to_dict(message)`` equals
      ``json.loads`` of it for every message.
    * ``rich_types=True``: ``datetime``, ``date``, ``time``, :class:`Interval`, ``(x, y)``
      points, hstore ``dict`` (the feed client's table); the JSON does not change.
    * ``format="debezium"`` (implied by ``debezium_options``): the JSON is Debezium's, byte
      for byte what a pgcdc feed stages with the same options.

    Acknowledgement (what the slot's ``confirmed_flush_lsn`` advances to):

    * ``auto_acknowledge=True`` (default): an event counts as processed once the loop asks for
      the next one; a transaction is confirmed when all its events are processed. Leaving the
      loop after an event leaves that event unconfirmed (at-least-once).
    * ``auto_acknowledge=False``: ``await reader.acknowledge()`` marks everything delivered so
      far processed. The slot resumes at transaction boundaries, so a partly acknowledged
      transaction is sent again to a new process (minus, with an offset store, what was
      acknowledged of it).

    What a new reader process gets again (delivery is at-least-once; ``(commit_lsn,
    ordinal)`` identifies an event for deduplication):

    * without ``offset_store``: what was not confirmed to the server, and, after a **server
      restart**, also confirmed events the slot forgot. PostgreSQL up to 16 writes a logical
      slot's ``confirmed_flush_lsn`` to disk only when the slot's ``restart_lsn``/``xmin``
      moves, so even ``pg_ctl restart -m fast`` can resend everything acknowledged since
      (measured on 15: 1,004 of 1,004 acknowledged events). PostgreSQL 17 also writes it at a
      clean shutdown; a crash (or ``-m immediate``) can resend on every version.
    * with ``offset_store="path/to/slot.offset"``: nothing acknowledged comes back. The
      reader writes the acknowledged position to that file (atomically: temporary file, fsync,
      rename) before each confirmation it sends and on ``stop()``, and skips what the server
      sends again at or below it. Only a reader killed within the ~100 ms between an
      acknowledgement and its confirmation gets those events again. The file is bound to the
      slot, database and cluster (system identifier); a file of another one is refused.

    Confirmations are batched (≤ 100 ms) and flushed by ``stop()``. Only row changes (``c``,
    ``u``, ``d``) are yielded unless ``include_truncate``/``include_messages`` ask for ``t``
    and ``m`` events. Leaving an ``async for`` and iterating again continues the stream.
    Logical messages carry no identity (any role that can connect may emit one): admit the
    prefixes you expect with ``debezium_options={"message.prefix.include.list": "outbox"}``.

    After the first successful connection, a lost connection, a silent one (nothing heard for
    twice the server's ``wal_sender_timeout``) or a server restart is retried
    with exponential backoff (0.1 s to 30 s; ``reconnect=False`` raises instead,
    ``reconnect_timeout`` bounds the total time without a connection), resuming after the
    last event delivered. The first connection's errors are raised: ``AuthenticationError``,
    ``ProgrammingError`` for a missing slot or publication, ``ConnectionError`` for an
    unreachable server (within ``connect_timeout`` seconds).

    Passwords: ``password``, else ``PGPASSWORD``, else the password file (``PGPASSFILE`` or
    ``~/.pgpass``). A server asking for a cleartext password gets it only over TLS or a unix
    socket unless ``allow_cleartext_password=True``; SCRAM cannot be downgraded mid-way.
    ``sslmode`` is libpq's; ``verify-ca``/``verify-full`` need ``sslrootcert`` (or
    ``~/.postgresql/root.crt``); ``sslrootcert="system"`` trusts the usual web authorities.
    ``channel_binding`` is libpq's too (``disable``, ``prefer`` (default, or
    ``PGCHANNELBINDING``), ``require``): over TLS, SCRAM binds the authentication to the
    server's certificate (``SCRAM-SHA-256-PLUS``), so a man in the middle cannot relay it.

    Big transactions: with ``streaming=True`` (default; PostgreSQL 14+) the server sends a
    transaction bigger than its ``logical_decoding_work_mem`` while it is still running,
    instead of spilling it to its own disk and sending it after the commit. The reader still
    yields only committed changes: it holds such transactions until their commit, in memory up
    to ``stream_memory`` bytes (64 MiB; all open transactions together) and beyond that in a
    temporary file (``TMPDIR``, deleted with the process); aborted transactions and rolled-back
    savepoints are dropped. ``streaming=False`` leaves big transactions to the server.

    Servers: PostgreSQL 10 and later (``include_messages`` needs 14).
    """

    def __init__(
        self,
        publication_name: Union[str, Sequence[str]],
        slot_name: str,
        host: str,
        database: str,
        port: int = 5432,
        user: str = "postgres",
        password: str = "",
        start_lsn: Optional[Union[str, int]] = None,
        auto_acknowledge: bool = True,
        *,
        sslmode: Optional[str] = None,
        sslrootcert: Optional[Union[str, os.PathLike[str]]] = None,
        connect_timeout: float = 10.0,
        application_name: str = "pgcdc",
        include_truncate: bool = False,
        include_messages: bool = False,
        create_slot: bool = False,
        debezium_options: Optional[Mapping[str, Any]] = None,
        reconnect: bool = True,
        reconnect_timeout: Optional[float] = None,
        max_buffered: int = 16384,
        allow_cleartext_password: bool = False,
        offset_store: Optional[Union[str, os.PathLike[str]]] = None,
        format: Optional[str] = None,  # noqa: A002 - the pgoutput-decoder library's keyword
        rich_types: bool = False,
        channel_binding: Optional[str] = None,
        streaming: bool = True,
        stream_memory: int = 64 * 1024 * 1024,
    ) -> None:
        publications = [publication_name] if isinstance(publication_name, str) else list(publication_name)
        self._core = _pgcdc._Reader(
            publications,
            slot_name,
            host,
            database,
            int(port),
            user,
            password or None,
            start_lsn,
            bool(auto_acknowledge),
            sslmode=sslmode,
            sslrootcert=os.fspath(sslrootcert) if sslrootcert is not None else None,
            connect_timeout=float(connect_timeout),
            application_name=application_name,
            include_truncate=include_truncate,
            include_messages=include_messages,
            create_slot=create_slot,
            debezium_options=dict(debezium_options) if debezium_options else None,
            reconnect=reconnect,
            reconnect_timeout=reconnect_timeout,
            max_buffered=max_buffered,
            allow_cleartext_password=allow_cleartext_password,
            offset_store=os.fspath(offset_store) if offset_store is not None else None,
            format=format,
            rich_types=bool(rich_types),
            channel_binding=channel_binding,
            streaming=bool(streaming),
            stream_memory=int(stream_memory),
        )
        self._waker = Waker(self._core)
        self.auto_acknowledge = bool(auto_acknowledge)
        self.publication_name = publication_name
        self.slot_name = slot_name

    def __aiter__(self) -> LogicalReplicationReader:
        return self

    async def __anext__(self) -> ReplicationMessage:
        message: ReplicationMessage = await self._waker.next()
        return message

    async def acknowledge(self, lsn: Optional[Union[str, int]] = None) -> None:
        """Marks every message delivered so far as processed (manual mode).

        With ``lsn`` (``'X/Y'`` or an integer), confirms up to that WAL position instead.
        Raises ``NoPendingLSNError("No pending LSN ...")`` (an ``InterfaceError`` and, as in
        ``pgoutput-decoder``, a ``RuntimeError``) with ``auto_acknowledge=True``, and
        ``InterfaceError`` after ``stop()``.
        """
        self._core.acknowledge(lsn)

    async def stop(self, timeout: float = 5.0) -> None:
        """Confirms what is acknowledged (for at most ``timeout`` seconds), closes the
        connection; iteration then ends.

        Raises ``OperationalError`` when the confirmation could not be sent (the server was
        unreachable): those events will be delivered again. A connection attempt still under
        way is abandoned at once when there is nothing to confirm.
        """
        core = self._core
        core.request_stop(timeout)
        while not core.finished():
            await self._waker.wait()
        core.check_stopped()

    async def __aenter__(self) -> LogicalReplicationReader:
        return self

    async def __aexit__(self, exc_type: Optional[type[BaseException]], *exc: object) -> None:
        try:
            await self.stop()
        except Error:
            if exc_type is None:
                raise

    @property
    def confirmed_lsn(self) -> str:
        """The position confirmed (or about to be confirmed) to the server, ``X/Y``."""
        return self._core.confirmed_lsn

    @property
    def backend_pid(self) -> Optional[int]:
        """Pid of the walsender serving this reader (None while disconnected)."""
        return self._core.backend_pid

    @property
    def stream_spilled_bytes(self) -> int:
        """Bytes of streamed transactions this reader held in temporary files (``stream_memory``)."""
        return self._core.stream_spilled_bytes

    @property
    def sessions(self) -> int:
        """Replication sessions started so far (each reconnect adds one)."""
        return self._core.sessions

    def __repr__(self) -> str:
        return (
            f"LogicalReplicationReader(publication_name={self.publication_name!r}, "
            f"slot_name={self.slot_name!r}, confirmed_lsn={self.confirmed_lsn!r})"
        )
