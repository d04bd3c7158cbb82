"""Helpers for the extension's end-to-end tests (tests/test_ext_*.py).

They need the extension installed into the server's directories (``make ext-install`` or
``pgcdc_ext/install.sh``; ``make test`` does it first); without it every test_ext test fails
and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgcluster import Cluster, pg_bindir, pg_major  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")

#: Settings of a cluster that runs pgcdc. Short intervals keep the tests fast.
EXT_SETTINGS: dict[str, Any] = {
    "shared_preload_libraries": "pgcdc",
    "pgcdc.status_interval": 200,
    "pgcdc.launcher_interval": 500,
    "max_worker_processes": 24,
    "wal_sender_timeout": "30s",
    "log_min_messages": "log",
}


def extension_installed() -> bool:
    pg_config = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
    try:
        share = subprocess.run([pg_config, "--sharedir"], check=True, capture_output=True, text=True).stdout.strip()
        lib = subprocess.run([pg_config, "--pkglibdir"], check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        share, lib = "/usr/share/postgresql/15", "/usr/lib/postgresql/15/lib"
    return Path(share, "extension", "pgcdc.control").exists() and Path(lib, "pgcdc.so").exists()


#: Marks a test that needs the installed extension: it fails, never skips, without it
#: (the fixture lives in conftest.py).
requires_extension = pytest.mark.usefixtures("_extension_installed")

# What PostgreSQL 13 lacks (pgoutput protocol 1: no `messages` option, no streaming); what 13
# does instead is tested where the feature is refused or held until COMMIT.
NO_MESSAGES_ON_13 = "pgoutput sends logical decoding messages from 14 on"
NO_STREAMING_ON_13 = "pgoutput streams in-progress transactions from 14 on (13 holds them until COMMIT)"
SNAPSHOTS_NEED_MESSAGES = (
    "snapshot watermarks are logical decoding messages (on 13 snapshots are refused: "
    "test_ext_feed.py::test_snapshots_are_refused_where_the_server_cannot_take_them)"
)


def since_pg(major: int, why: str) -> pytest.MarkDecorator:
    """A test of what PostgreSQL has from `major` on: reported as skipped, with `why`, on an
    older server."""
    return pytest.mark.skipif(pg_major() < major, reason=f"needs PostgreSQL {major}+: {why}")


def start_cluster(name: str, **settings: Any) -> Cluster:
    """A started cluster preloading pgcdc, with the extension created in database postgres."""
    c = Cluster({**EXT_SETTINGS, **settings}, name=name)
    try:
        c.start()
        c.execute("CREATE EXTENSION pgcdc")
    except BaseException:
        c.stop()
        raise
    return c


def wait_until(fn: Callable[[], T], timeout: float = 30.0, what: str = "condition", interval: float = 0.05) -> T:
    """Poll fn until it returns something truthy; return it. AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def status(c: Cluster, feed: str) -> dict[str, Any]:
    with c.connect() as conn:
        cur = conn.execute("SELECT * FROM pgcdc.feed_status WHERE name = %s", [feed])
        row = cur.fetchone()
        assert row is not None, f"feed {feed} not in feed_status"
        return dict(zip([d.name for d in cur.description], row))


def slot(c: Cluster, slot_name: str) -> dict[str, Any] | None:
    with c.connect() as conn:
        cur = conn.execute("SELECT * FROM pg_replication_slots WHERE slot_name = %s", [slot_name])
        row = cur.fetchone()
        return dict(zip([d.name for d in cur.description], row)) if row else None


def lsn_int(lsn: str) -> int:
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def read_events(c: Cluster, feed: str, after: tuple[str, int] | None = None, limit: int = 100000) -> list[dict[str, Any]]:
    """Every staged event after `after` (default: the acknowledged position), as dicts."""
    with c.connect() as conn:
        if after is None:
            cur = conn.execute("SELECT * FROM pgcdc.read(%s, %s)", [feed, limit])
        else:
            cur = conn.execute("SELECT * FROM pgcdc.read(%s, %s, %s, %s)", [feed, limit, after[0], after[1]])
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def collect(c: Cluster, feed: str, want: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Wait until at least `want` unacknowledged events are staged; return all of them."""
    got: list[dict[str, Any]] = []

    def enough() -> bool:
        nonlocal got
        got = read_events(c, feed)
        if len(got) < want and status(c, feed)["state"] == "error":
            raise AssertionError(f"feed {feed} is in error: {status(c, feed)['last_error']}")
        return len(got) >= want

    try:
        wait_until(enough, timeout, f"{want} events in feed {feed}", interval=0.1)
    except AssertionError:
        raise AssertionError(
            f"feed {feed}: {len(got)} of {want} events staged; status {status(c, feed)}\n{c.log_tail(30)}"
        ) from None
    return got


def event_json(ev: dict[str, Any]) -> Any:
    v = ev["event"]
    return json.loads(v) if isinstance(v, str) else v


def install_trap(conn_execute, schema: str) -> None:
    """Operators `schema.=` for text, integer, oid and name that record who evaluated them
    (role and backend type) in `schema.fired`, then compare as the built-in would."""
    conn_execute(f"CREATE SCHEMA {schema}")
    conn_execute(f"CREATE TABLE {schema}.fired (who text, backend text)")
    conn_execute(f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC")
    conn_execute(f"GRANT INSERT ON {schema}.fired TO PUBLIC")
    for typ, builtin in (("text", "texteq"), ("integer", "int4eq"), ("oid", "oideq"), ("name", "nameeq")):
        conn_execute(
            f"""CREATE FUNCTION {schema}.eq(a {typ}, b {typ}) RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {schema}.fired SELECT current_user, coalesce((SELECT backend_type
                    FROM pg_catalog.pg_stat_activity
                    WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()), '?');
                RETURN pg_catalog.{builtin}(a, b);
            END $$"""
        )
        conn_execute(f"CREATE OPERATOR {schema}.= (LEFTARG = {typ}, RIGHTARG = {typ}, FUNCTION = {schema}.eq)")


def pg_tool(name: str) -> str:
    return str(pg_bindir() / name)


class Standby(Cluster):
    """A hot standby of `primary` (pg_basebackup -R, streaming) that preloads pgcdc too."""

    def __init__(self, primary: Cluster, name: str, **settings: Any) -> None:
        super().__init__({**EXT_SETTINGS, "hot_standby": True, **settings}, name=name)
        self.primary = primary

    def init(self) -> "Standby":
        if self.base is not None:
            return self
        import tempfile

        tmproot = os.environ.get("PGCDC_TMPDIR") or None
        self.base = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=tmproot))
        import pgcluster

        with pgcluster._live_lock:  # stopped at exit like any other cluster
            pgcluster._live.add(self)
        self.base.chmod(0o755)
        for d in (self.sockdir, self.logfile.parent):
            d.mkdir(mode=0o755)
        self.logfile.touch()
        self._chown(self.base, self.sockdir, self.logfile.parent, self.logfile)
        assert self.primary.port is not None
        self._run(
            [
                self.bin("pg_basebackup"),
                "-D", str(self.datadir),
                "-h", "127.0.0.1",
                "-p", str(self.primary.port),
                "-U", self.superuser,
                "-R",
                "-X", "stream",
                "--no-sync",
            ]
        )
        return self


# ----------------------------------------------------------------- replaying a feed (snapshots)


def position(ev: dict[str, Any]) -> tuple[int, int]:
    """The event's position (commit_lsn, ordinal) as a sortable tuple."""
    return (lsn_int(ev["commit_lsn"]), ev["ordinal"])


def _unwrap(v: Any) -> Any:
    """The payload of a value or key, with or without schemas.enable ({"schema", "payload"})."""
    if isinstance(v, str):
        v = json.loads(v)
    if isinstance(v, dict) and set(v) == {"schema", "payload"}:
        return v["payload"]
    return v


def canon_key(key: Any) -> str:
    """A hashable, order-independent form of a key (a dict of the primary key's columns)."""
    return json.dumps(_unwrap(key), sort_keys=True, separators=(",", ":"))


def event_key(ev: dict[str, Any]) -> str:
    return canon_key(ev["key"])


def event_value(ev: dict[str, Any]) -> Any:
    """The event's value payload (None for tombstones)."""
    return None if ev["event"] is None else _unwrap(ev["event"])


def replay_events(
    events: list[dict[str, Any]], state: dict[tuple[str, str], dict[str, Any]] | None = None
) -> dict[tuple[str, str], dict[str, Any]]:
    """Apply events in position order to {(schema, table): {key: after}}: c/u/r upsert the
    `after` by key, d deletes the key, t clears the table; tombstones, messages and anything
    else are ignored. The events must be in position order (read order); that is checked."""
    state = {} if state is None else state
    last: tuple[int, int] | None = None
    for ev in events:
        pos = position(ev)
        assert last is None or pos > last, f"events out of order or repeated: {last} then {pos}"
        last = pos
        op = ev["op"]
        if op not in ("c", "u", "r", "d", "t"):
            continue
        value = event_value(ev)
        if value is None:
            continue  # a tombstone staged under the op of its delete: nothing to apply
        table = state.setdefault((ev["schema_name"], ev["table_name"]), {})
        if op == "t":
            table.clear()
        elif op == "d":
            table.pop(event_key(ev), None)
        else:
            table[event_key(ev)] = value["after"]
    return state


def table_rows(c: Cluster, table: str, key_cols: list[str], dbname: str = "postgres") -> dict[str, Any]:
    """{canon_key: row as a JSON object} of `table` (to compare with replay_events: works for
    columns whose Debezium encoding is their JSON form, e.g. int, bigint, text, boolean)."""
    out: dict[str, Any] = {}
    for (row,) in c.execute(f"SELECT to_jsonb(x) FROM {table} x", dbname=dbname):
        row = json.loads(row) if isinstance(row, str) else row
        out[canon_key({k: row[k] for k in key_cols})] = row
    return out


def read_all(c: Cluster, feed: str, page: int = 20000) -> list[dict[str, Any]]:
    """Every staged, unacknowledged event of the feed (paging through pgcdc.read), without
    acknowledging anything."""
    out: list[dict[str, Any]] = read_events(c, feed, limit=page)
    while out:
        more = read_events(c, feed, after=(out[-1]["commit_lsn"], out[-1]["ordinal"]), limit=page)
        if not more:
            break
        out += more
    return out


def diff_states(want: dict[str, Any], got: dict[str, Any], events: list[dict[str, Any]] | None = None,
                limit: int = 8) -> str:
    """A readable account of how two {key: row} maps differ, with the events that touched the
    first few differing keys (op, position, after) when `events` are given."""
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    changed = [k for k in want if k in got and want[k] != got[k]]
    lines = [f"{len(missing)} missing, {len(extra)} extra, {len(changed)} different (of {len(want)} rows)"]
    for label, keys in (("missing", missing), ("extra", extra), ("different", changed)):
        for k in keys[:limit]:
            lines.append(f"  {label} {k}: table {want.get(k)!r} replay {got.get(k)!r}")
            if events is not None:
                for ev in events:
                    if ev["op"] in ("c", "u", "r", "d") and ev["key"] is not None and event_key(ev) == k:
                        v = event_value(ev)
                        lines.append(
                            f"      {ev['op']} at {ev['commit_lsn']}/{ev['ordinal']} "
                            f"after={None if v is None else v.get('after')!r}"
                        )
    return "\n".join(lines)


class Consumer:
    """A thread that reads a feed with pgcdc.read and acknowledges each batch with pgcdc.ack,
    keeping every event it read (in order) in `events`."""

    def __init__(self, c: Cluster, feed: str, batch: int = 5000, marker_table: str | None = None) -> None:
        import threading

        self.c, self.feed, self.batch, self.marker_table = c, feed, batch, marker_table
        self.events: list[dict[str, Any]] = []
        self.markers: set[Any] = set()
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"consumer-{feed}", daemon=True)

    def start(self) -> "Consumer":
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            with self.c.connect() as conn:
                while not self._stop.is_set():
                    cur = conn.execute("SELECT * FROM pgcdc.read(%s, %s)", [self.feed, self.batch])
                    names = [d.name for d in cur.description]
                    rows = [dict(zip(names, r)) for r in cur.fetchall()]
                    if not rows:
                        time.sleep(0.02)
                        continue
                    with self.lock:
                        self.events.extend(rows)
                        if self.marker_table:
                            for ev in rows:
                                if ev["table_name"] == self.marker_table and ev["op"] == "c":
                                    self.markers.add(event_value(ev)["after"]["id"])
                    last = rows[-1]
                    conn.execute("SELECT pgcdc.ack(%s, %s, %s)", [self.feed, last["commit_lsn"], last["ordinal"]])
        except BaseException as e:  # noqa: BLE001 - reported by check()
            self.error = e

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"consumer of {self.feed} failed: {self.error!r}") from self.error
        assert self.thread.is_alive() or self._stop.is_set(), f"consumer of {self.feed} stopped"

    def count(self) -> int:
        with self.lock:
            return len(self.events)

    def wait_marker(self, marker: Any, timeout: float = 60.0) -> None:
        def seen() -> bool:
            self.check()
            with self.lock:
                return marker in self.markers

        wait_until(seen, timeout, f"marker {marker} in feed {self.feed}", interval=0.05)

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), f"consumer of {self.feed} did not stop"
        if self.error is not None:
            raise AssertionError(f"consumer of {self.feed} failed: {self.error!r}") from self.error
        return self.events
