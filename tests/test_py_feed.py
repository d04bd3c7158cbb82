"""The feed client (`pgcdc.connect`), the feed helpers and `python -m pgcdc`, against a
cluster running the pgcdc extension. Skipped when the extension is not installed."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from decimal import Decimal

import pytest

try:
    import pgcdc
except ImportError as e:  # make test builds it first; never skip
    raise ImportError("the Python package pgcdc is not built (run: make py-develop)") from e
from ext_support import requires_extension, start_cluster
from pyhelpers import TYPEMATRIX_ROW1, await_for, nothing_within, prepend_hba, run, take, wait_for

pytestmark = [requires_extension, pytest.mark.timeout(300)]

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "debezium")


@pytest.fixture(scope="module")
def pg():
    c = start_cluster("pgcdc-pyfeed")
    try:
        c.execute("CREATE ROLE feed_scram LOGIN PASSWORD 'right-password'")
        prepend_hba(c, ["host all feed_scram 127.0.0.1/32 scram-sha-256"])
        yield c
    finally:
        c.stop()


_n = 0


def new_feed(pg, *, sink: str = "table", options: dict | None = None) -> str:
    """A table `<name>` (id, v), its publication and a feed `<name>`; returns the name."""
    global _n
    _n += 1
    name = f"f{os.getpid() % 1000}_{_n}"
    pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text, amount numeric(10,2))")
    pg.execute(f"CREATE PUBLICATION {name} FOR TABLE {name}")
    run(pgcdc.create_feed(pg.dsn(), name, name, sink=sink, options=options or {}))
    return name


def insert(pg, table: str, *ids: int) -> None:
    pg.execute(f"INSERT INTO {table} SELECT g, 'v' || g, g * 1.5 FROM unnest(%s::int[]) g", params=[list(ids)])


def acked(pg, feed: str) -> tuple[str, int]:
    return tuple(pg.execute("SELECT acked_lsn::text, acked_ordinal FROM pgcdc.feed WHERE name = %s", params=[feed])[0])


def test_stream_acknowledge_and_resume(pg) -> None:
    f = new_feed(pg)
    insert(pg, f, 1)
    insert(pg, f, 2)
    insert(pg, f, 3)

    async def first() -> None:
        async with await pgcdc.connect(pg.dsn(), feed=f) as s:
            e1, e2 = await take(s, 2)
            assert (e1.op, e1.after) == ("c", {"id": 1, "v": "v1", "amount": Decimal("1.50")})
            assert e1.key == {"id": 1} and e1.table == f"public.{f}" and e1.topic == f"{f}.public.{f}"
            assert e1.source["table"] == f and isinstance(e1.source["lsn"], int)
            assert e1.position < e2.position and e1.ts_ms > 0
            assert json.loads(e1.json())["after"]["id"] == 1 and pgcdc.message_to_dict(e1)["op"] == "c"
            assert pgcdc.message_to_debezium_json(e1, indent=None) == e1.json()
            await s.ack(e1)  # e2 delivered, not acknowledged
        return e1

    e1 = run(first())
    assert acked(pg, f) == (e1.commit_lsn, 1)  # flushed on close

    async def second() -> None:
        async with await pgcdc.connect(pg.dsn(), feed=f, auto_acknowledge=True) as s:
            evs = await take(s, 2)
            assert [e.after["id"] for e in evs] == [2, 3]  # resumes after the acknowledged one
            assert await nothing_within(s, 0.3)  # asking again acknowledged #3
            await await_for(lambda: acked(pg, f)[0] == evs[1].commit_lsn, what="auto acknowledgement")

    run(second())
    assert pg.execute("SELECT count(*) FROM pgcdc.event e JOIN pgcdc.feed f ON f.id = e.feed_id WHERE f.name = %s",
                      params=[f]) == [(0,)]


def test_wakes_on_notify_without_polling(pg) -> None:
    f = new_feed(pg)

    async def main() -> None:
        async with await pgcdc.connect(pg.dsn(), feed=f) as s:
            assert await nothing_within(s, 1.5)
            (q,) = pg.execute("SELECT extract(epoch FROM now() - query_start) FROM pg_stat_activity WHERE pid = %s",
                              params=[s.backend_pid])[0]
            assert q > 1.0, "the client queried while idle (polling)"
            t0 = time.monotonic()
            insert(pg, f, 7)
            (e,) = await take(s, 1, timeout=5)
            assert e.after["id"] == 7 and time.monotonic() - t0 < 2

    run(main())


def test_batches_and_many_events(pg) -> None:
    f = new_feed(pg)
    pg.execute(f"INSERT INTO {f} SELECT g, 'x', g FROM generate_series(1, 5000) g")

    async def main() -> None:
        async with await pgcdc.connect(pg.dsn(), feed=f, batch_size=700, auto_acknowledge=True) as s:
            evs = await take(s, 5000, timeout=60)
            assert [e.after["id"] for e in evs] == list(range(1, 5001))
            assert len({e.position for e in evs}) == 5000

    run(main())


def test_reconnects_after_terminate_backend(pg) -> None:
    f = new_feed(pg)
    insert(pg, f, 1)

    async def main() -> None:
        async with await pgcdc.connect(pg.dsn(), feed=f) as s:
            (e1,) = await take(s, 1)
            pid = s.backend_pid
            pg.execute("SELECT pg_terminate_backend(%s)", params=[pid])
            insert(pg, f, 2)
            (e2,) = await take(s, 1, timeout=20)
            assert e2.after["id"] == 2  # no duplicate of the delivered, unacknowledged #1
            assert s.sessions == 2 and s.backend_pid != pid
            await s.ack()

    run(main())
    assert acked(pg, f)[1] >= 1


def test_reconnects_after_server_restart() -> None:
    c = start_cluster("pgcdc-pyfeed-restart")
    try:
        c.execute("CREATE TABLE r (id int PRIMARY KEY)")
        c.execute("CREATE PUBLICATION r FOR TABLE r")
        run(pgcdc.create_feed(c.dsn(), "r", "r"))
        c.execute("INSERT INTO r VALUES (1)")

        async def main() -> None:
            async with await pgcdc.connect(c.dsn(), feed="r") as s:
                (e1,) = await take(s, 1)
                await s.ack(e1)
                await asyncio.sleep(0.2)
                await asyncio.get_running_loop().run_in_executor(None, c.restart)
                c.execute("INSERT INTO r VALUES (2)")
                (e2,) = await take(s, 1, timeout=60)
                assert e2.after == {"id": 2} and s.sessions >= 2
                await s.ack(e2)

        run(main(), timeout=120)
        assert c.execute("SELECT acked_ordinal FROM pgcdc.feed WHERE name = 'r'") == [(1,)]
    finally:
        c.stop()


def test_errors_are_typed_and_quick(pg) -> None:
    async def main() -> None:
        with pytest.raises(pgcdc.ProgrammingError) as ei:
            await pgcdc.connect(pg.dsn(), feed="no_such_feed")
        assert ei.value.sqlstate == "42704" and ei.value.hint
        with pytest.raises(pgcdc.AuthenticationError) as ei:
            await pgcdc.connect(pg.dsn(user="feed_scram", password="wrong"), feed="x")
        assert ei.value.sqlstate == "28P01"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(pgcdc.ConnectionError):
            await pgcdc.connect(f"host=127.0.0.1 port={port} user=x dbname=x connect_timeout=2", feed="x")
        assert time.monotonic() - t0 < 5
        with pytest.raises(pgcdc.ProgrammingError):
            await pgcdc.drop_feed(pg.dsn(), "no_such_feed")
        assert await pgcdc.drop_feed(pg.dsn(), "no_such_feed", if_exists=True) is False

    run(main())


def test_notify_sink(pg) -> None:
    f = new_feed(pg, sink="notify")
    wait_for(lambda: pg.execute("SELECT worker_pid FROM pgcdc.feed_status WHERE name = %s", params=[f])[0][0],
             what="the feed's worker")

    async def main() -> None:
        async with await pgcdc.connect(pg.dsn(), feed=f) as s:
            assert s.sink == "notify"
            pg.execute(f"INSERT INTO {f} VALUES (1, 'small', 1), (2, repeat('x', 10000), 2)")
            small, big = await take(s, 2)
            assert small.after == {"id": 1, "v": "small", "amount": Decimal("1.00")}
            assert big.after["id"] == 2 and len(big.after["v"]) == 10000  # staged, fetched
            await s.ack(big)

    run(main())
    wait_for(lambda: pg.execute("SELECT count(*) FROM pgcdc.event e JOIN pgcdc.feed f ON f.id = e.feed_id "
                                "WHERE f.name = %s", params=[f]) == [(0,)], what="the staged event to be removed")


TYPEMATRIX_OPTIONS = {
    "tm_default": {},
    "tm_strings": {"decimal.handling.mode": "string", "interval.handling.mode": "string",
                   "binary.handling.mode": "hex", "hstore.handling.mode": "map"},
}


def test_typematrix_values() -> None:
    """Every type of typematrix.sql through two feeds with different Debezium options."""
    import datetime as dt

    c = start_cluster("pgcdc-pyfeed-types")
    try:
        with open(os.path.join(SHARED, "typematrix.sql")) as fh:
            c.psql("-f", "-", input=fh.read())
        for name, options in TYPEMATRIX_OPTIONS.items():
            run(pgcdc.create_feed(c.dsn(), name, "tm_pub", options=options))
        with open(os.path.join(SHARED, "typematrix_dml.sql")) as fh:
            c.psql("-f", "-", input=fh.read())
        for name, options in TYPEMATRIX_OPTIONS.items():

            async def main() -> list:
                async with await pgcdc.connect(c.dsn(), feed=name) as s:
                    return await take(s, 3, timeout=60)

            evs = run(main())
            row = evs[0].after
            expected = dict(TYPEMATRIX_ROW1)
            # What Debezium's JSON cannot carry: timetz is sent in UTC; numeric-mode intervals
            # count months as 30.4375 days.
            expected["c_timetz"] = dt.time(8, 15, 59, tzinfo=dt.timezone.utc)
            if "interval.handling.mode" not in options:
                expected["c_interval"] = pgcdc.Interval(0, 0, 14 * 2_629_800_000_000 + 3 * 86_400_000_000 + 14_706_789_000)
            assert row == expected, name
            for k, v in expected.items():
                assert type(row[k]) is type(v), (name, k)
            assert evs[1].after["c_text"] is None
            edge = evs[2].after
            assert edge["c_numeric_any"].is_nan() and edge["c_date"] == "infinity" and edge["c_ts"] == "-infinity", name
    finally:
        c.stop()


def test_cli(pg) -> None:
    env = {**os.environ, "PGCDC_DSN": pg.dsn()}
    pg.execute("CREATE TABLE cli_t (id int PRIMARY KEY, v text)")
    pg.execute("CREATE PUBLICATION cli_p FOR TABLE cli_t")

    def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgcdc", *args], capture_output=True, text=True, env=env,
                              timeout=timeout)

    r = cli("create", "clif", "--publication", "cli_p", "-o", "decimal.handling.mode=string")
    assert r.returncode == 0 and "created feed clif" in r.stdout, r.stderr
    r = cli("list", "--json")
    assert any(f["name"] == "clif" and f["options"] == {"decimal.handling.mode": "string"} for f in json.loads(r.stdout))
    pg.execute("INSERT INTO cli_t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    r = cli("tail", "clif", "--limit", "2", "--progress")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and [json.loads(x)["after"]["id"] for x in lines] == [1, 2], r.stderr
    assert "2 events" in r.stderr
    # pipeable: the consumer closing the pipe early is not an error
    p = subprocess.run(f"{sys.executable} -m pgcdc tail clif --idle-exit 2 | head -n 1", shell=True, capture_output=True,
                       text=True, env=env, timeout=60)
    assert json.loads(p.stdout)["after"]["id"] == 3 and "Traceback" not in p.stderr
    r = cli("status", "clif")
    assert json.loads(r.stdout)["name"] == "clif"
    r = cli("tail", "nope", "--idle-exit", "1")
    assert r.returncode == 1 and "ProgrammingError" in r.stderr and "nope" in r.stderr
    r = cli("drop", "clif")
    assert r.returncode == 0 and "dropped" in r.stdout
