"""The feed client: ``await pgcdc.connect(dsn, feed=...)`` and the feed management helpers.

A *feed* is created with ``pgcdc.create_feed`` (the extension): the server decodes its
publication into Debezium events and stages them; this client reads them over an ordinary
SQL connection (no REPLICATION privilege) and acknowledges them by position.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from . import _pgcdc
from ._aio import Waker, run_op
from ._pgcdc import Event
from .errors import ConnectionError as PgConnectionError
from .errors import Error, OperationalError, ProgrammingError, SnapshotFailed

__all__ = [
    "SNAPSHOT_MODES",
    "FeedStream",
    "ack",
    "alter_feed",
    "cancel_snapshot",
    "connect",
    "create_feed",
    "drop_feed",
    "feed_status",
    "feeds",
    "pause_feed",
    "reset_feed",
    "resume_feed",
    "snapshot",
    "snapshots",
    "wait_snapshot",
]

#: The values of the ``snapshot.mode`` feed option (``create_feed(..., snapshot=...)``).
SNAPSHOT_MODES = ("initial", "no_data", "initial_only", "when_needed")


class FeedStream:
    """An open feed: ``async for event in stream``, ``await stream.ack(event)``.

    Reads in batches of ``batch_size``; when the queue is empty it sleeps until the feed's
    NOTIFY wakes it (no polling; a safety read every 30 s). Acknowledgements are batched
    (at most every 50 ms, never causing a read) and flushed when the stream closes. After a
    lost connection or a server restart (or crash) it reconnects with exponential backoff and
    resumes after the last event it delivered; a new stream resumes after the last
    acknowledged event. Delivery is at-least-once: only unacknowledged events can come twice.
    Events are ordered by ``position`` (``(commit_lsn, ordinal)``); ordinals increase within
    a transaction but are not consecutive. A stream whose feed is dropped and created again
    under its name ends with ``ProgrammingError`` (the new feed's events are not its own).

    ``auto_acknowledge=True`` acknowledges an event when the loop asks for the next one.
    """

    def __init__(self, core: _pgcdc._Feed, feed: str) -> None:
        self._core = core
        self._waker = Waker(core)
        self.feed = feed

    def __aiter__(self) -> FeedStream:
        return self

    async def __anext__(self) -> Event:
        event: Event = await self._waker.next()
        return event

    async def ack(self, event: Optional[Event] = None) -> None:
        """Acknowledges ``event`` and everything before it (default: all delivered so far).

        Sent to the server in batches (at most every 50 ms) and flushed by ``close()``;
        raises ``InterfaceError`` once the stream is closed, and for an event of another
        feed (``event.feed``) or of a feed of this name that was dropped and created again
        (its position would acknowledge events of this feed never delivered).
        """
        self._core.ack(event)

    acknowledge = ack

    async def close(self, timeout: float = 5.0) -> None:
        """Flushes acknowledgements (for at most ``timeout`` seconds) and closes the
        connection; iteration then ends.

        Raises ``OperationalError`` when acknowledgements could not be flushed (the server
        was unreachable, or had not staged the events again yet after a crash): those events
        will be delivered again. A connection attempt still under way is abandoned at once
        when there is nothing to flush.
        """
        core = self._core
        core.request_stop(timeout)
        while not core.finished():
            await self._waker.wait()
        core.check_closed()

    stop = close

    async def __aenter__(self) -> FeedStream:
        return self

    async def __aexit__(self, exc_type: Optional[type[BaseException]], *exc: object) -> None:
        try:
            await self.close()
        except Error:
            if exc_type is None:
                raise
            # An exception is already on its way out: it is the one to see. (The unflushed
            # acknowledgements only mean that those events come again.)

    @property
    def acknowledged(self) -> Optional[tuple[str, int]]:
        """The last position acknowledged to the server, ``(commit_lsn, ordinal)``."""
        return self._core.acknowledged

    @property
    def backend_pid(self) -> Optional[int]:
        return self._core.backend_pid

    @property
    def sessions(self) -> int:
        """Sessions opened so far (each reconnect adds one)."""
        return self._core.sessions

    @property
    def sink(self) -> str:
        """``"table"`` or ``"notify"``."""
        return self._core.sink

    def __repr__(self) -> str:
        return f"FeedStream(feed={self.feed!r}, acknowledged={self.acknowledged!r})"


async def connect(
    dsn: str,
    *,
    feed: str,
    batch_size: int = 1000,
    auto_acknowledge: bool = False,
    reconnect: bool = True,
    reconnect_timeout: Optional[float] = None,
    max_buffered: int = 16384,
    connect_timeout: Optional[float] = None,
) -> FeedStream:
    """Opens a stream of the feed ``feed`` (raises at once if it cannot: wrong password,
    missing feed, unreachable server within ``connect_timeout``)."""
    core = _pgcdc._Feed(
        dsn,
        feed,
        batch_size=batch_size,
        auto_acknowledge=auto_acknowledge,
        reconnect=reconnect,
        reconnect_timeout=reconnect_timeout,
        max_buffered=max_buffered,
        connect_timeout=connect_timeout,
    )
    stream = FeedStream(core, feed)
    try:
        while not core.opened():
            await stream._waker.wait()
    except BaseException:
        await stream.close()
        raise
    return stream


async def _query(
    dsn: str, sql: str, *params: Optional[str], connect_timeout: Optional[float] = None
) -> list[dict[str, Any]]:
    """Runs ``sql`` with ``search_path`` pinned to pg_catalog; every name in it is qualified
    (``pg_catalog.text``, ``OPERATOR(pg_catalog.=)``, ``pgcdc.*``) all the same."""
    text = await run_op(_pgcdc._query_json(dsn, sql, list(params), connect_timeout))
    return _pgcdc._json_loads(text)  # type: ignore[no-any-return]


def _opt(v: Any) -> Optional[str]:
    return None if v is None else str(v)


async def create_feed(
    dsn: str,
    name: str,
    publication: str,
    *,
    sink: str = "table",
    options: Optional[Mapping[str, Any]] = None,
    owner: Optional[str] = None,
    snapshot: Optional[str] = None,
) -> str:
    """``pgcdc.create_feed``: returns the slot's consistent point (LSN ``X/Y``).

    ``snapshot`` sets the ``snapshot.mode`` option (one of :data:`SNAPSHOT_MODES`; the
    extension's default is ``"initial"``: the published tables' existing rows as ``op="r"``
    events, then the stream). ``ValueError`` when ``options`` holds another ``snapshot.mode``.
    """
    opts = dict(options or {})
    if snapshot is not None:
        have = opts.get("snapshot.mode")
        if have is not None and have != snapshot:
            raise ValueError(f"snapshot={snapshot!r} conflicts with options['snapshot.mode']={have!r}")
        opts["snapshot.mode"] = snapshot
    rows = await _query(
        dsn,
        "SELECT pgcdc.create_feed($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.text, "
        "$4::pg_catalog.text::pg_catalog.jsonb, $5::pg_catalog.text)::pg_catalog.text AS lsn",
        name,
        publication,
        sink,
        json.dumps(opts),
        owner,
    )
    return str(rows[0]["lsn"])


async def drop_feed(dsn: str, name: str, *, if_exists: bool = False) -> bool:
    """``pgcdc.drop_feed``: drops the feed, its slot and its staged events."""
    rows = await _query(
        dsn,
        "SELECT pgcdc.drop_feed($1::pg_catalog.text, $2::pg_catalog.text::pg_catalog.bool) AS dropped",
        name,
        str(bool(if_exists)).lower(),
    )
    return bool(rows[0]["dropped"])


async def pause_feed(dsn: str, name: str) -> None:
    await _query(dsn, "SELECT pgcdc.pause_feed($1::pg_catalog.text)::pg_catalog.text AS r", name)


async def resume_feed(dsn: str, name: str) -> None:
    await _query(dsn, "SELECT pgcdc.resume_feed($1::pg_catalog.text)::pg_catalog.text AS r", name)


async def alter_feed(dsn: str, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``pgcdc.alter_feed``: merges ``options`` (a None value removes one); returns them all."""
    rows = await _query(
        dsn,
        "SELECT pgcdc.alter_feed($1::pg_catalog.text, $2::pg_catalog.text::pg_catalog.jsonb) AS options",
        name,
        json.dumps(dict(options)),
    )
    return dict(rows[0]["options"])


async def feeds(dsn: str) -> list[dict[str, Any]]:
    """The feeds you may use (the ``pgcdc.feeds`` view)."""
    return await _query(dsn, "SELECT * FROM pgcdc.feeds ORDER BY name")


async def feed_status(dsn: str, name: Optional[str] = None) -> list[dict[str, Any]]:
    """Live state of the feeds (the ``pgcdc.feed_status`` view): worker, lag, last error."""
    if name is None:
        return await _query(dsn, "SELECT * FROM pgcdc.feed_status ORDER BY name")
    return await _query(
        dsn, "SELECT * FROM pgcdc.feed_status WHERE name OPERATOR(pg_catalog.=) $1::pg_catalog.text", name
    )


async def ack(dsn: str, name: str, lsn: str, ordinal: Optional[int] = None) -> int:
    """``pgcdc.ack`` on a short-lived connection; returns how many staged events it removed."""
    rows = await _query(
        dsn,
        "SELECT pgcdc.ack($1::pg_catalog.text, $2::pg_catalog.text::pg_catalog.pg_lsn, "
        "$3::pg_catalog.text::pg_catalog.int4) AS n",
        name,
        lsn,
        _opt(ordinal),
    )
    return int(rows[0]["n"])


async def reset_feed(dsn: str, name: str) -> str:
    """``pgcdc.reset_feed``: discards the feed's backlog (every change committed up to now is
    acknowledged); returns the new acknowledged LSN (``X/Y``)."""
    rows = await _query(dsn, "SELECT pgcdc.reset_feed($1::pg_catalog.text)::pg_catalog.text AS lsn", name)
    return str(rows[0]["lsn"])


def _regclass_array(tables: Optional[Sequence[str]]) -> Optional[str]:
    """``tables`` as the text of a Postgres array literal (each element quoted), or None."""
    if tables is None:
        return None
    if isinstance(tables, (str, bytes)):
        raise TypeError("tables must be a sequence of table names, not a single string")
    items = []
    for t in tables:
        if not isinstance(t, str):
            raise TypeError(f"a table name must be a str, not {type(t).__name__}")
        items.append('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(items) + "}"


async def snapshot(
    dsn: str,
    feed: str,
    *,
    tables: Optional[Sequence[str]] = None,
    wait: bool = False,
    progress: Optional[Callable[[dict[str, Any]], None]] = None,
    poll_interval: float = 0.5,
) -> int:
    """``pgcdc.snapshot``: queues an ad hoc ("incremental") snapshot of ``tables`` (default:
    every table the feed's publication publishes) and returns its id. The rows come as
    ``op="r"`` events with ``source["snapshot"] == "incremental"``, in order with the stream.

    Table names are read as ``regclass`` with ``search_path = pg_catalog``: qualify them
    (``"public.orders"``, ``'"My Schema"."Orders"'``). A table without a primary key is
    refused (``OperationalError``, SQLSTATE 55000), one the publication does not publish
    too (``DataError``, 22023).

    ``wait=True`` returns only once the snapshot is done (see :func:`wait_snapshot`: polls
    every ``poll_interval`` seconds, calls ``progress(row)`` with each ``pgcdc.snapshots``
    row and raises ``SnapshotFailed`` when it fails or is cancelled).
    """
    literal = _regclass_array(tables)
    try:
        rows = await _query(
            dsn,
            "SELECT pgcdc.snapshot($1::pg_catalog.text, $2::pg_catalog.text::pg_catalog.regclass[]) AS id",
            feed,
            literal,
        )
    except ProgrammingError as e:
        if e.sqlstate == "42P01" and tables and any("." not in t for t in tables) and not e.hint:
            raise ProgrammingError(
                str(e.args[0]) if e.args else "",
                sqlstate=e.sqlstate,
                detail=e.detail,
                hint="table names are read with search_path = pg_catalog: qualify them, e.g. public.orders",
                severity=e.severity,
            ) from e
        raise
    sid = int(rows[0]["id"])
    if wait:
        await wait_snapshot(dsn, feed, sid, progress=progress, poll_interval=poll_interval)
    return sid


async def wait_snapshot(
    dsn: str,
    feed: str,
    id: int,  # noqa: A002 - public keyword, the snapshot's id as pgcdc.snapshots names it
    *,
    progress: Optional[Callable[[dict[str, Any]], None]] = None,
    poll_interval: float = 0.5,
    reconnect_timeout: float = 60.0,
) -> dict[str, Any]:
    """Polls ``pgcdc.snapshots`` until snapshot ``id`` of ``feed`` is over; returns its last
    row when it is ``done``. Calls ``progress(row)`` at each poll (the last call has the
    final row). Raises ``SnapshotFailed`` when it ended ``failed`` or ``cancelled`` or is
    gone (its feed dropped). A server that cannot be reached (restarting) is polled again
    for up to ``reconnect_timeout`` seconds: the snapshot resumes after a restart.
    """
    sql = (
        "SELECT * FROM pgcdc.snapshots WHERE feed OPERATOR(pg_catalog.=) $1::pg_catalog.text "
        "AND id OPERATOR(pg_catalog.=) $2::pg_catalog.text::pg_catalog.int8"
    )
    failing_since: Optional[float] = None
    while True:
        try:
            rows = await _query(dsn, sql, feed, str(int(id)))
        except OperationalError as e:
            transient = isinstance(e, PgConnectionError) or (e.sqlstate or "").startswith("57P")
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
            if not transient or now - failing_since > reconnect_timeout:
                raise
            await asyncio.sleep(max(poll_interval, 1.0))
            continue
        failing_since = None
        if not rows:
            raise SnapshotFailed(
                f"snapshot {id} of feed {feed} no longer exists (was the feed dropped?)", snapshot_id=int(id)
            )
        row = rows[0]
        if progress is not None:
            progress(row)
        state = row.get("state")
        if state == "done":
            return row
        if state in ("failed", "cancelled"):
            why = f": {row['error']}" if row.get("error") else ""
            word = "failed" if state == "failed" else "was cancelled"
            raise SnapshotFailed(
                f"snapshot {id} of feed {feed} {word}{why}", state=str(state), snapshot_id=int(id), snapshot=row
            )
        await asyncio.sleep(poll_interval)


async def cancel_snapshot(dsn: str, feed: str) -> int:
    """``pgcdc.cancel_snapshot``: cancels the feed's pending and running snapshots (rows
    already staged stay); returns how many."""
    rows = await _query(dsn, "SELECT pgcdc.cancel_snapshot($1::pg_catalog.text) AS n", feed)
    return int(rows[0]["n"])


async def snapshots(dsn: str, feed: Optional[str] = None) -> list[dict[str, Any]]:
    """The snapshots you may see (the ``pgcdc.snapshots`` view), of ``feed`` or of every
    feed, oldest first: ``state``, ``rows``/``rows_estimated``, ``current_table``, ETA..."""
    if feed is None:
        return await _query(dsn, "SELECT * FROM pgcdc.snapshots ORDER BY feed, id")
    return await _query(
        dsn,
        "SELECT * FROM pgcdc.snapshots WHERE feed OPERATOR(pg_catalog.=) $1::pg_catalog.text ORDER BY id",
        feed,
    )
