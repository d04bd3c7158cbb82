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

from pgcluster import Cluster, pg_bindir  # noqa: E402

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
