"""Snapshots from Python and the CLI: ``create_feed(snapshot=...)``, ``pgcdc.snapshot`` (with
``wait``/``progress``), ``cancel_snapshot``, ``snapshots``, ``reset_feed``, and
``python -m pgcdc snapshot|cancel-snapshot|tail --progress``, against a cluster running the
pgcdc extension (the contract: /work/notes/SNAPSHOT-API.md, issue #9). The progress line's
rendering is tested without a cluster. Never skipped: without the extension the cluster
tests fail and say so."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

try:
    import pgcdc
except ImportError as e:  # make test builds it first; never skip
    raise ImportError("the Python package pgcdc is not built (run: make py-develop)") from e
from pgcdc._progress import ProgressLine, format_progress

from ext_support import SNAPSHOTS_NEED_MESSAGES, requires_extension, since_pg, start_cluster, wait_until
from pyhelpers import run, take

pytestmark = [pytest.mark.timeout(300), since_pg(14, SNAPSHOTS_NEED_MESSAGES)]

SNAPSHOT_MARKERS = {"first", "first_in_data_collection", "true", "last_in_data_collection", "last"}


# ----------------------------------------------------------------------------- no cluster


def test_format_progress_running_with_estimate() -> None:
    row = {
        "id": 3, "state": "running", "rows": 2500, "rows_estimated": 10000, "rows_per_second": 1234.4,
        "eta_seconds": 6.2, "current_table": "public.t", "tables": ["public.t", "public.u"], "tables_done": 0,
    }
    line = format_progress(row, bar_width=20)
    assert line.startswith("snapshot 3 running")
    assert "[#####---------------]" in line
    for part in ("2,500/10,000 rows", "25.0%", "1,234 rows/s", "ETA 0:06", "public.t (1/2)"):
        assert part in line, (part, line)
    assert "\n" not in line and "\r" not in line


def test_format_progress_edge_cases() -> None:
    # no estimate (yet): no bar, no percent; the ETA computed from the rate when the server has none
    line = format_progress({"id": 1, "state": "pending", "rows": 0, "rows_estimated": None})
    assert line == "snapshot 1 pending  0 rows"
    line = format_progress({"id": 1, "state": "running", "rows": 100, "rows_estimated": 1100,
                            "rows_per_second": 10.0, "eta_seconds": None})
    assert "ETA 1:40" in line and "100/1,100 rows" in line
    # more rows than the planner estimated: the bar is full, never past 100%
    line = format_progress({"id": 2, "state": "running", "rows": 1500, "rows_estimated": 1000})
    assert "1,500/1,500 rows" in line and "100.0%" in line
    # long ETAs have hours; non-finite numbers from the view's JSON are left out
    line = format_progress({"id": 2, "state": "running", "rows": 1, "rows_estimated": 10**9,
                            "rows_per_second": "NaN", "eta_seconds": 3723})
    assert "ETA 1:02:03" in line and "rows/s" not in line
    # done: 100% even when the estimate was too high; no rate/ETA/table
    line = format_progress({"id": 9, "state": "done", "rows": 900, "rows_estimated": 1000,
                            "rows_per_second": 50.0, "eta_seconds": 0, "current_table": "public.t"})
    assert "100.0%" in line and "[" + "#" * 20 + "]" in line and "ETA" not in line and "public.t" not in line
    line = format_progress({"id": 4, "state": "failed", "rows": 10, "error": "boom"})
    assert line.startswith("snapshot 4 failed") and "error: boom" in line


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_line_terminal_and_pipe() -> None:
    row = {"id": 1, "state": "running", "rows": 5, "rows_estimated": 10}
    tty = _Stream(True)
    line = ProgressLine(tty)
    line.update(row)
    line.update({**row, "rows": 6})
    line.clear()
    line.update({**row, "rows": 7})
    line.finish({**row, "state": "done", "rows": 10})
    out = tty.getvalue()
    assert out.count("\r") == 5 and out.endswith("\n") and out.count("\n") == 1
    assert "\x1b[K" in out and "10/10 rows" in out

    now = [0.0]
    pipe = _Stream(False)
    line = ProgressLine(pipe, interval=5.0, clock=lambda: now[0])
    line.update(row)  # shown
    now[0] = 1.0
    line.update({**row, "rows": 6})  # too soon
    now[0] = 6.0
    line.update({**row, "rows": 7})  # shown
    now[0] = 6.5
    line.finish({**row, "state": "done", "rows": 10})  # always shown
    lines = pipe.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in pipe.getvalue(), lines
    assert "5/10" in lines[0] and "7/10" in lines[1] and "done" in lines[2]


def test_create_feed_snapshot_conflicts_with_options() -> None:
    with pytest.raises(ValueError, match="snapshot.mode"):
        run(pgcdc.create_feed("host=127.0.0.1 port=1", "f", "p", snapshot="initial",
                              options={"snapshot.mode": "no_data"}))
    with pytest.raises(TypeError):
        run(pgcdc.snapshot("host=127.0.0.1 port=1", "f", tables="public.t"))  # type: ignore[arg-type]
    assert set(pgcdc.SNAPSHOT_MODES) == {"initial", "no_data", "initial_only", "when_needed"}
    assert issubclass(pgcdc.SnapshotFailed, pgcdc.OperationalError)
    for name in ("snapshot", "wait_snapshot", "cancel_snapshot", "snapshots", "reset_feed", "SnapshotFailed"):
        assert name in pgcdc.__all__


class _FakeServer:
    """Stands in for ``pgcdc._feed._query``: answers pgcdc.snapshot / the snapshots view from
    a script of states (each poll takes the next row), recording the statements."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def __call__(self, dsn: str, sql: str, *params: Any, **kw: Any) -> list[dict[str, Any]]:
        self.calls.append((sql, params))
        if "pgcdc.snapshot(" in sql:
            return [{"id": 7}]
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, BaseException):
            raise step
        return [] if step is None else [{"id": 7, "feed": "f", "tables": ["public.t"], **step}]


def test_wait_snapshot_polls_until_over(monkeypatch) -> None:
    from pgcdc import _feed

    fake = _FakeServer([{"state": "pending", "rows": 0},
                        pgcdc.ConnectionError("lost"),  # a restart: polled again
                        {"state": "running", "rows": 5, "rows_estimated": 10},
                        {"state": "done", "rows": 10, "rows_estimated": 10}])
    monkeypatch.setattr(_feed, "_query", fake)
    seen: list[dict[str, Any]] = []
    sid = run(pgcdc.snapshot("dsn", "f", tables=["public.t", 'public."A ""b"""'], wait=True,
                             progress=seen.append, poll_interval=0.01))
    assert sid == 7 and [r["state"] for r in seen] == ["pending", "running", "done"]
    sql, params = fake.calls[0]
    assert "$2::pg_catalog.text::pg_catalog.regclass[]" in sql and params == ("f", '{"public.t","public.\\"A \\"\\"b\\"\\"\\""}')
    assert all("pgcdc.snapshots" in q and "OPERATOR(pg_catalog.=)" in q for q, _ in fake.calls[1:])
    assert run(pgcdc.snapshot("dsn", "f")) == 7 and fake.calls[-1][1] == ("f", None)

    for final, word in (({"state": "failed", "rows": 1, "error": "relation vanished"}, "failed: relation vanished"),
                        ({"state": "cancelled", "rows": 1}, "was cancelled")):
        monkeypatch.setattr(_feed, "_query", _FakeServer([{"state": "running", "rows": 0}, final]))
        with pytest.raises(pgcdc.SnapshotFailed) as ei:
            run(pgcdc.wait_snapshot("dsn", "f", 7, poll_interval=0.01))
        assert ei.value.state == final["state"] and ei.value.snapshot_id == 7 and word in str(ei.value)
        assert ei.value.snapshot is not None and ei.value.sqlstate is None
    monkeypatch.setattr(_feed, "_query", _FakeServer([None]))
    with pytest.raises(pgcdc.SnapshotFailed, match="no longer exists"):
        run(pgcdc.wait_snapshot("dsn", "f", 7))
    monkeypatch.setattr(_feed, "_query", _FakeServer([pgcdc.OperationalError("x", sqlstate="53100")]))
    with pytest.raises(pgcdc.OperationalError) as ei2:  # not transient: raised at once
        run(pgcdc.wait_snapshot("dsn", "f", 7))
    assert not isinstance(ei2.value, pgcdc.SnapshotFailed)


def test_cli_snapshot_without_server(monkeypatch, capsys) -> None:
    from pgcdc import __main__ as cli
    from pgcdc import _feed

    monkeypatch.setattr(_feed, "_query", _FakeServer([{"state": "running", "rows": 5, "rows_estimated": 10},
                                                      {"state": "done", "rows": 10, "rows_estimated": 10}]))
    assert cli.main(["--dsn", "x", "snapshot", "f", "--table", "public.t"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["snapshot 7 of feed f queued", "snapshot 7 of feed f done: 10 rows"]
    assert err.splitlines()[0].startswith("snapshot 7 running") and "10/10 rows" in err.splitlines()[-1], err
    monkeypatch.setattr(_feed, "_query", _FakeServer([{"state": "cancelled", "rows": 5}]))
    assert cli.main(["--dsn", "x", "snapshot", "f"]) == 1
    out, err = capsys.readouterr()
    assert "SnapshotFailed" in err and "was cancelled" in err and "Traceback" not in err
    assert cli.main(["--dsn", "x", "snapshot", "f", "--no-wait"]) == 0
    out, err = capsys.readouterr()
    assert out == "snapshot 7 of feed f queued\n" and err == ""


# ----------------------------------------------------------------------------- cluster


@pytest.fixture(scope="module")
def pg():
    c = start_cluster("pgcdc-pysnap")
    try:
        yield c
    finally:
        c.stop()


_n = 0


def table(pg, rows: int, *, pk: bool = True) -> str:
    """A table `<name>` (id, v) with ids 1..rows and its publication `<name>`."""
    global _n
    _n += 1
    name = f"s{os.getpid() % 1000}_{_n}"
    pg.execute(f"CREATE TABLE {name} (id int {'PRIMARY KEY' if pk else ''}, v text)")
    pg.execute(f"INSERT INTO {name} SELECT g, 'v' || g FROM generate_series(1, {rows}) g")
    pg.execute(f"CREATE PUBLICATION {name} FOR TABLE {name}")
    return name


def table_rows(pg, name: str) -> dict[int, str]:
    return dict(pg.execute(f"SELECT id, v FROM {name}"))


async def drain(stream: Any, idle: float = 3.0) -> list[Any]:
    """Every event until none comes for `idle` seconds."""
    out: list[Any] = []
    it = stream.__aiter__()
    while True:
        try:
            out.append(await asyncio.wait_for(it.__anext__(), idle))
        except asyncio.TimeoutError:
            return out


def apply(events: list[Any]) -> dict[int, str]:
    """The contract's rule: c/u/r upsert by key, d delete by key, t clear."""
    state: dict[int, str] = {}
    for e in events:
        if e.op in ("c", "u", "r"):
            state[e.after["id"]] = e.after["v"]
        elif e.op == "d":
            state.pop(e.before["id"] if e.before else e.key["id"], None)
        elif e.op == "t":
            state.clear()
    return state


@requires_extension
def test_initial_snapshot_then_stream(pg) -> None:
    t = table(pg, 500)
    run(pgcdc.create_feed(pg.dsn(), t, t, snapshot="initial", options={"snapshot.fetch.size": 64}))
    (feed,) = [f for f in run(pgcdc.feeds(pg.dsn())) if f["name"] == t]
    assert feed["options"]["snapshot.mode"] == "initial", feed

    async def main() -> None:
        async with await pgcdc.connect(pg.dsn(), feed=t) as s:
            evs = await take(s, 500, timeout=90)
            assert {e.op for e in evs} == {"r"}, {e.op for e in evs}
            assert sorted(e.after["id"] for e in evs) == list(range(1, 501))
            assert all(e.before is None and e.key == {"id": e.after["id"]} and e.after["v"] == f"v{e.after['id']}"
                       for e in evs)
            marks = [e.source["snapshot"] for e in evs]
            assert set(marks) <= SNAPSHOT_MARKERS, set(marks)
            assert marks[0] == "first" and marks[-1] == "last", (marks[0], marks[-1])
            assert all(a.position < b.position for a, b in zip(evs, evs[1:]))
            await s.ack()
            pg.execute(f"INSERT INTO {t} VALUES (501, 'new')")
            pg.execute(f"UPDATE {t} SET v = 'changed' WHERE id = 1")
            c, u = await take(s, 2, timeout=30)
            assert (c.op, c.after) == ("c", {"id": 501, "v": "new"})
            assert (u.op, u.after) == ("u", {"id": 1, "v": "changed"})
            assert c.source["snapshot"] == "false" and c.position > evs[-1].position
            await s.ack()

    run(main(), timeout=150)
    snaps = run(pgcdc.snapshots(pg.dsn(), t))
    assert len(snaps) == 1 and snaps[0]["kind"] == "initial", snaps
    wait_until(lambda: run(pgcdc.snapshots(pg.dsn(), t))[0]["state"] == "done", 30, "the initial snapshot done")
    done = run(pgcdc.snapshots(pg.dsn(), t))[0]
    assert done["rows"] == 500 and done["tables"] == [f"public.{t}"] and done["feed"] == t, done
    assert any(r["id"] == done["id"] for r in run(pgcdc.snapshots(pg.dsn())))


@requires_extension
def test_adhoc_snapshot_wait_with_progress(pg) -> None:
    t = table(pg, 2000)
    run(pgcdc.create_feed(pg.dsn(), t, t, snapshot="no_data", options={"snapshot.fetch.size": 200}))
    seen: list[dict[str, Any]] = []

    sid = run(pgcdc.snapshot(pg.dsn(), t, tables=[f"public.{t}"], wait=True, progress=seen.append,
                             poll_interval=0.05), timeout=120)
    assert isinstance(sid, int)
    assert seen and all(r["id"] == sid and r["feed"] == t for r in seen)
    assert seen[-1]["state"] == "done" and seen[-1]["rows"] == 2000, seen[-1]
    assert all(r["state"] in ("pending", "running", "done") for r in seen)
    rows = [r["rows"] for r in seen]
    assert rows == sorted(rows)  # never goes back
    (snap,) = [r for r in run(pgcdc.snapshots(pg.dsn(), t)) if r["id"] == sid]
    assert snap["kind"] == "incremental" and snap["state"] == "done" and snap["tables"] == [f"public.{t}"], snap
    assert snap["tables_done"] == 1 and snap["chunks"] >= 10 and snap["finished_at"] is not None, snap
    assert run(pgcdc.wait_snapshot(pg.dsn(), t, sid))["state"] == "done"  # already over: returns at once

    async def main() -> None:
        async with await pgcdc.connect(pg.dsn(), feed=t, auto_acknowledge=True) as s:
            evs = await take(s, 2000, timeout=60)
            assert {e.op for e in evs} == {"r"}
            assert {e.source["snapshot"] for e in evs} == {"incremental"}
            assert sorted(e.after["id"] for e in evs) == list(range(1, 2001))

    run(main(), timeout=90)


@requires_extension
def test_adhoc_snapshot_with_concurrent_writes_converges(pg) -> None:
    t = table(pg, 3000)
    run(pgcdc.create_feed(pg.dsn(), t, t, snapshot="no_data", options={"snapshot.fetch.size": 100}))

    async def main() -> None:
        sid = await pgcdc.snapshot(pg.dsn(), t)  # default: every published table
        for i in range(30):
            pg.execute(f"UPDATE {t} SET v = 'u{i}' WHERE id % 97 = {i}")
            pg.execute(f"DELETE FROM {t} WHERE id = {100 * i + 7}")
            pg.execute(f"INSERT INTO {t} VALUES ({5000 + i}, 'n{i}')")
        await pgcdc.wait_snapshot(pg.dsn(), t, sid, poll_interval=0.1)
        async with await pgcdc.connect(pg.dsn(), feed=t, auto_acknowledge=True) as s:
            evs = await drain(s)
        assert any(e.op == "r" for e in evs)
        assert apply(evs) == table_rows(pg, t)

    run(main(), timeout=150)


@requires_extension
def test_cancel_snapshot(pg) -> None:
    t = table(pg, 5000)
    # at the queue cap no chunk is read: the snapshot stays running until it is cancelled
    run(pgcdc.create_feed(pg.dsn(), t, t, snapshot="no_data",
                          options={"snapshot.fetch.size": 100, "max_staged_rows": 300}))

    async def main() -> None:
        seen: list[dict[str, Any]] = []
        waiting = asyncio.ensure_future(
            pgcdc.snapshot(pg.dsn(), t, tables=[f"public.{t}"], wait=True, progress=seen.append, poll_interval=0.1)
        )
        deadline = time.monotonic() + 30
        while not (seen and seen[-1]["state"] == "running" and seen[-1]["rows"] > 0):
            assert time.monotonic() < deadline, f"snapshot never ran: {seen[-1:]}"
            assert not waiting.done(), waiting
            await asyncio.sleep(0.1)
        assert await pgcdc.cancel_snapshot(pg.dsn(), t) == 1
        with pytest.raises(pgcdc.SnapshotFailed) as ei:
            await asyncio.wait_for(waiting, 30)
        err = ei.value
        assert err.state == "cancelled" and err.snapshot_id == seen[-1]["id"] and "cancelled" in str(err)
        assert err.snapshot is not None and err.snapshot["state"] == "cancelled"
        (snap,) = await pgcdc.snapshots(pg.dsn(), t)
        assert snap["state"] == "cancelled" and snap["finished_at"] is not None, snap
        assert 0 < snap["rows"] < 5000, snap
        assert await pgcdc.cancel_snapshot(pg.dsn(), t) == 0  # nothing left to cancel
        with pytest.raises(pgcdc.SnapshotFailed):
            await pgcdc.wait_snapshot(pg.dsn(), t, snap["id"])
        # the rows already staged stay
        staged = pg.execute("SELECT count(*) FROM pgcdc.event e JOIN pgcdc.feed f ON f.id = e.feed_id "
                            "WHERE f.name = %s", params=[t])[0][0]
        assert staged > 0
        lsn = await pgcdc.reset_feed(pg.dsn(), t)
        assert "/" in lsn
        wait_until(lambda: pg.execute("SELECT count(*) FROM pgcdc.event e JOIN pgcdc.feed f ON f.id = e.feed_id "
                                      "WHERE f.name = %s", params=[t])[0][0] == 0, 30, "reset_feed to empty the queue")

    run(main(), timeout=120)


@requires_extension
def test_snapshot_errors_are_typed(pg) -> None:
    t = table(pg, 10)
    pg.execute(f"CREATE TABLE {t}_nopk (id int, v text)")
    pg.execute(f"INSERT INTO {t}_nopk VALUES (1, 'a')")
    pg.execute(f"ALTER PUBLICATION {t} ADD TABLE {t}_nopk")
    pg.execute(f"CREATE TABLE {t}_other (id int PRIMARY KEY)")
    run(pgcdc.create_feed(pg.dsn(), t, t, snapshot="no_data"))

    async def main() -> None:
        with pytest.raises(pgcdc.OperationalError) as ei:
            await pgcdc.snapshot(pg.dsn(), t, tables=[f"public.{t}_nopk"])
        assert ei.value.sqlstate == "55000" and ei.value.hint, (ei.value.sqlstate, str(ei.value))
        assert not isinstance(ei.value, pgcdc.SnapshotFailed)
        with pytest.raises(pgcdc.DataError) as ei:
            await pgcdc.snapshot(pg.dsn(), t, tables=[f"public.{t}_other"])
        assert ei.value.sqlstate == "22023"
        with pytest.raises(pgcdc.ProgrammingError) as ei:
            await pgcdc.snapshot(pg.dsn(), "no_such_feed")
        assert ei.value.sqlstate == "42704"
        with pytest.raises(pgcdc.ProgrammingError) as ei:
            await pgcdc.snapshot(pg.dsn(), t, tables=[t])  # unqualified: search_path is pg_catalog
        assert ei.value.sqlstate == "42P01" and "qualify" in (ei.value.hint or "")
        assert await pgcdc.snapshots(pg.dsn(), "no_such_feed") == []
        # a quoted name is passed through intact
        pg.execute(f'CREATE TABLE "{t} Odd""Name" (id int PRIMARY KEY)')
        pg.execute(f'INSERT INTO "{t} Odd""Name" VALUES (1), (2)')
        pg.execute(f'ALTER PUBLICATION {t} ADD TABLE "{t} Odd""Name"')
        sid = await pgcdc.snapshot(pg.dsn(), t, tables=[f'public."{t} Odd""Name"'], wait=True, poll_interval=0.1)
        (snap,) = [r for r in await pgcdc.snapshots(pg.dsn(), t) if r["id"] == sid]
        assert snap["state"] == "done" and snap["rows"] == 2, snap

    run(main(), timeout=90)


def _cli(pg, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgcdc", "--dsn", pg.dsn(), *args], capture_output=True, text=True,
                          timeout=timeout)


@requires_extension
def test_cli_snapshot(pg) -> None:
    t = table(pg, 3000)
    r = _cli(pg, "create", t, "--publication", t, "--snapshot", "no_data", "-o", "snapshot.fetch.size=100")
    assert r.returncode == 0 and f"created feed {t}" in r.stdout, r.stderr
    (feed,) = [f for f in run(pgcdc.feeds(pg.dsn())) if f["name"] == t]
    assert feed["options"]["snapshot.mode"] == "no_data", feed
    r = _cli(pg, "create", "x", "--publication", t, "--snapshot", "initial", "-o", "snapshot.mode=no_data")
    assert r.returncode == 1 and "conflicts" in r.stderr and "Traceback" not in r.stderr, r.stderr

    r = _cli(pg, "snapshot", t)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "\r" not in r.stderr  # stderr is a pipe: whole lines
    sid = int(r.stdout.split()[1])
    assert f"snapshot {sid} of feed {t} queued" in r.stdout and f"snapshot {sid} of feed {t} done" in r.stdout, r.stdout
    progress = r.stderr.splitlines()
    assert progress and all(line.startswith(f"snapshot {sid} ") for line in progress), progress
    assert "done" in progress[-1] and "3,000/3,000 rows" in progress[-1] and "100.0%" in progress[-1], progress
    (snap,) = [s for s in run(pgcdc.snapshots(pg.dsn(), t)) if s["id"] == sid]
    assert snap["state"] == "done" and snap["kind"] == "incremental"

    r = _cli(pg, "snapshot", t, "--table", f"public.{t}", "--no-wait")
    assert r.returncode == 0 and "queued" in r.stdout and r.stderr == "", r.stderr
    r = _cli(pg, "snapshots", t, "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 2
    r = _cli(pg, "status", t)
    assert r.returncode == 0 and "snapshot_state" in json.loads(r.stdout), r.stdout
    r = _cli(pg, "cancel-snapshot", t)
    assert r.returncode == 0 and "cancelled" in r.stdout and f"of feed {t}" in r.stdout, r.stderr

    # a refused table: exit 1, the typed error, no traceback
    pg.execute(f"CREATE TABLE {t}_nopk (id int)")
    pg.execute(f"ALTER PUBLICATION {t} ADD TABLE {t}_nopk")
    r = _cli(pg, "snapshot", t, "--table", f"public.{t}_nopk")
    assert r.returncode == 1 and "OperationalError" in r.stderr and "Traceback" not in r.stderr, r.stderr


@requires_extension
def test_cli_snapshot_cancelled_and_tail_progress(pg) -> None:
    t = table(pg, 5000)
    run(pgcdc.create_feed(pg.dsn(), t, t, snapshot="no_data",
                          options={"snapshot.fetch.size": 100, "max_staged_rows": 300}))
    waiter = subprocess.Popen([sys.executable, "-m", "pgcdc", "--dsn", pg.dsn(), "snapshot", t],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(s["state"] == "running" and s["rows"] > 0 for s in run(pgcdc.snapshots(pg.dsn(), t))),
                   30, "the snapshot to run", interval=0.2)
        # tail --progress: stdout only JSON lines, the snapshot's progress on stderr
        r = _cli(pg, "tail", t, "--progress", "--idle-exit", "3", "--no-ack")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines and all(json.loads(x)["op"] == "r" for x in lines)
        assert any(line.startswith("snapshot ") and "running" in line and "rows" in line
                   for line in r.stderr.splitlines()), r.stderr
        assert run(pgcdc.cancel_snapshot(pg.dsn(), t)) == 1
        out, err = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 1 and "SnapshotFailed" in err and "cancelled" in err and "Traceback" not in err, err
    assert "queued" in out
