"""The feed client (`pgcdc.connect`), the feed helpers and `python -m pgcdc`, against a
cluster running the pgcdc extension. Skipped when the extension is not installed."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
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
from pyhelpers import (
    TYPEMATRIX_ROW1,
    await_for,
    log_lines,
    nothing_within,
    plant_search_path_traps,
    prepend_hba,
    run,
    search_path_traps_fired,
    take,
    trapped_superuser,
    wait_for,
)
from workload import TYPEMATRIX_DML_SQL, TYPEMATRIX_SQL

pytestmark = [requires_extension, pytest.mark.timeout(300)]



@pytest.fixture(scope="module")
def pg():
    c = start_cluster("pgcdc-pyfeed")
    try:
        # (13 still hashes passwords with md5 by default)
        c.execute("SET password_encryption = 'scram-sha-256'; CREATE ROLE feed_scram LOGIN PASSWORD 'right-password'")
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
    run(pgcdc.create_feed(pg.dsn(), name, name, sink=sink, options=options or {}, snapshot="no_data"))
    return name


def insert(pg, table: str, *ids: int) -> None:
    pg.execute(f"INSERT INTO {table} SELECT g, 'v' || g, g * 1.5 FROM unnest(%s::int[]) g", params=[list(ids)])


def acked(pg, feed: str) -> tuple[str, int]:
    return tuple(pg.execute("SELECT acked_lsn::text, acked_ordinal FROM pgcdc.feed WHERE name = %s", params=[feed])[0])


@pytest.mark.smoke
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
    assert acked(pg, f) == e1.position  # flushed on close

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
        run(pgcdc.create_feed(c.dsn(), "r", "r", snapshot="no_data"))
        c.execute("INSERT INTO r VALUES (1)")

        async def main() -> None:
            async with await pgcdc.connect(c.dsn(), feed="r") as s:
                (e1,) = await take(s, 1)
                await s.ack(e1)
                await await_for(lambda: acked(c, "r") == e1.position, what="the acknowledgement to be flushed")
                await asyncio.get_running_loop().run_in_executor(None, c.restart)
                c.execute("INSERT INTO r VALUES (2)")
                (e2,) = await take(s, 1, timeout=60)
                assert e2.after == {"id": 2} and s.sessions >= 2
                await s.ack(e2)
                return e2

        e2 = run(main(), timeout=120)
        assert acked(c, "r") == e2.position
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


@pytest.mark.smoke
def test_typematrix_values() -> None:
    """Every type of typematrix.sql through two feeds with different Debezium options."""
    import datetime as dt

    c = start_cluster("pgcdc-pyfeed-types")
    try:
        with open(TYPEMATRIX_SQL) as fh:
            c.psql("-f", "-", input=fh.read())
        for name, options in TYPEMATRIX_OPTIONS.items():
            run(pgcdc.create_feed(c.dsn(), name, "tm_pub", options=options, snapshot="no_data"))
        with open(TYPEMATRIX_DML_SQL) as fh:
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
    # stdout is a pipe here: nothing is acknowledged unless --ack
    r = cli("tail", "clif", "--limit", "2", "--progress")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and [json.loads(x)["after"]["id"] for x in lines] == [1, 2], r.stderr
    assert "2 events" in r.stderr and "not acknowledged" in r.stderr
    r = cli("tail", "clif", "--limit", "2", "--ack")
    assert r.returncode == 0 and [json.loads(x)["after"]["id"] for x in r.stdout.splitlines()] == [1, 2], r.stderr
    r = cli("tail", "clif", "--limit", "1", "--no-ack")
    assert [json.loads(x)["after"]["id"] for x in r.stdout.splitlines()] == [3]
    r = cli("status", "clif")
    assert json.loads(r.stdout)["name"] == "clif"
    r = cli("status", "missing_feed")
    assert r.returncode == 1 and 'feed "missing_feed" does not exist' in r.stderr and "Traceback" not in r.stderr
    r = cli("tail", "nope", "--idle-exit", "1")
    assert r.returncode == 1 and "ProgrammingError" in r.stderr and "nope" in r.stderr
    # a reader that goes away at once: no traceback, the SIGPIPE status
    for cmd in ("list", "list --json", "status"):
        p = subprocess.run(["bash", "-c", f'{sys.executable} -m pgcdc {cmd} | true; echo "rc=${{PIPESTATUS[0]}}" >&2'],
                           capture_output=True, text=True, env=env, timeout=60)
        assert "rc=141" in p.stderr and "Traceback" not in p.stderr and "Exception" not in p.stderr, (cmd, p.stderr)
    r = cli("drop", "clif")
    assert r.returncode == 0 and "dropped" in r.stdout


def test_cli_tail_into_a_pipe_loses_nothing(pg, tmp_path) -> None:
    """`tail | head -n1` reads one event of many: the rest must not be acknowledged (they were
    written into a pipe nobody read), and the broken pipe is a quiet exit 141."""
    f = new_feed(pg)
    pg.execute(f"INSERT INTO {f} SELECT g, repeat('x', 2000), g FROM generate_series(1, 100) g")
    env = {**os.environ, "PGCDC_DSN": pg.dsn()}
    before = acked(pg, f)
    p = subprocess.run(["bash", "-c", f'{sys.executable} -m pgcdc tail {f} --idle-exit 3 | head -n 1; '
                                      'echo "rc=${PIPESTATUS[0]}" >&2'],
                       capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(p.stdout)["after"]["id"] == 1
    assert "rc=141" in p.stderr and "Traceback" not in p.stderr and "Exception" not in p.stderr, p.stderr
    assert acked(pg, f) == before
    staged = "SELECT count(*) FROM pgcdc.event e JOIN pgcdc.feed f ON f.id = e.feed_id WHERE f.name = %s"
    assert pg.execute(staged, params=[f]) == [(100,)]
    # with --ack into a file everything written is acknowledged
    out = tmp_path / "events.jsonl"
    p = subprocess.run(["bash", "-c", f"{sys.executable} -m pgcdc tail {f} --ack --limit 100 > {out}"],
                       capture_output=True, text=True, env=env, timeout=60)
    ids = [json.loads(x)["after"]["id"] for x in out.read_text().splitlines()]
    assert p.returncode == 0 and ids == list(range(1, 101)), p.stderr
    wait_for(lambda: pg.execute(staged, params=[f]) == [(0,)], what="the acknowledged events to be removed")


# ----------------------------------------------------------------------------- faults


def feed_worker_pid(c, feed: str):
    return c.execute("SELECT worker_pid FROM pgcdc.feed_status WHERE name = %s", params=[feed])[0][0]


def test_acknowledgements_survive_a_server_crash() -> None:
    """kill -9 of the postmaster while a consumer streams: an acknowledgement sent before
    the worker staged the events again is refused (22023) and retried, not fatal; events
    acknowledged before the crash never return, unacknowledged ones do."""
    c = start_cluster("pgcdc-pyfeed-crash", log_min_messages="warning")  # ERRORs in the log
    try:
        c.execute("CREATE TABLE k (id int PRIMARY KEY)")
        c.execute("CREATE PUBLICATION k FOR TABLE k")
        run(pgcdc.create_feed(c.dsn(), "k", "k", snapshot="no_data"))
        for i in range(1, 11):
            c.execute("INSERT INTO k VALUES (%s)", params=[i])

        async def main() -> None:
            loop = asyncio.get_running_loop()
            async with await pgcdc.connect(c.dsn(), feed="k") as s:
                evs = await take(s, 10)
                await s.ack(evs[3])  # 1..4 acknowledged before the crash
                await await_for(lambda: acked(c, "k") == evs[3].position, what="the first acknowledgement")
                # Paused, the worker does not stage the queue again after the crash, so the
                # acknowledgement below certainly reaches an empty queue first.
                c.execute("SELECT pgcdc.pause_feed('k')")
                await await_for(lambda: feed_worker_pid(c, "k") is None, what="the worker to stop")
                c.kill9_postmaster()
                await s.ack(evs[6])  # 5..7: pending while the server is down
                await loop.run_in_executor(None, c.restart)
                await await_for(lambda: s.sessions >= 2, timeout=60, what="the stream to reconnect")
                await await_for(lambda: log_lines(c, s.backend_pid or 0, "cannot acknowledge") > 0, timeout=30,
                                what="the acknowledgement to be refused (queue not staged yet)")
                assert acked(c, "k") == evs[3].position
                c.execute("SELECT pgcdc.resume_feed('k')")
                await await_for(lambda: acked(c, "k") == evs[6].position, timeout=60,
                                what="the refused acknowledgement to go through once staged again")
                c.execute("INSERT INTO k VALUES (11)")
                (e11,) = await take(s, 1, timeout=30)  # the stream survived, no duplicates
                assert e11.after == {"id": 11}
                # close() reports what it could not flush; ack() after close is an error
                c.kill9_postmaster()
                await s.ack(e11)
                t0 = time.monotonic()
                with pytest.raises(pgcdc.OperationalError, match="could not be flushed"):
                    await s.close(timeout=1)
                assert time.monotonic() - t0 < 5
                with pytest.raises(pgcdc.InterfaceError, match="closed"):
                    await s.ack(e11)
            await loop.run_in_executor(None, c.restart)

        run(main(), timeout=240)

        async def again() -> list:
            async with await pgcdc.connect(c.dsn(), feed="k") as s:
                return await take(s, 4, timeout=60)

        assert [e.after["id"] for e in run(again(), timeout=90)] == [8, 9, 10, 11]
    finally:
        c.stop()


def test_acknowledgements_do_not_cause_reads(pg) -> None:
    f = new_feed(pg)
    insert(pg, f, *range(1, 21))  # one transaction, 20 events
    # A role whose statements are all logged: the server's log counts the client's reads.
    pg.execute("DROP ROLE IF EXISTS reads_probe")
    pg.execute("CREATE ROLE reads_probe LOGIN SUPERUSER")
    pg.execute("ALTER ROLE reads_probe SET log_statement = 'all'")
    dsn = pg.dsn(user="reads_probe")

    async def main() -> None:
        async with await pgcdc.connect(dsn, feed=f) as s:
            evs = await take(s, 20)
            pid = s.backend_pid

            def reads() -> int:
                return log_lines(pg, pid, "pgcdc.read(")

            await await_for(lambda: reads() >= 1, what="the read to be logged")
            before = reads()
            for e in evs:
                await s.ack(e)
                await await_for(lambda: s.acknowledged == e.position, what="each acknowledgement")
            assert acked(pg, f) == evs[-1].position
            assert log_lines(pg, pid, "pgcdc.ack(") >= 20
            assert reads() == before, "acknowledging made the client read"

    run(main())


def test_cancelling_connect_is_prompt() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)

    async def main() -> None:
        dsn = f"host=127.0.0.1 port={silent.getsockname()[1]} user=x dbname=x connect_timeout=30"
        t0 = time.monotonic()
        task = asyncio.ensure_future(pgcdc.connect(dsn, feed="x"))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 2

    try:
        run(main(), timeout=20)
    finally:
        silent.close()


# ----------------------------------------------------------------------------- values


def test_varbit_and_big_json_numbers(pg) -> None:
    global _n
    _n += 1
    name = f"vals{os.getpid() % 1000}_{_n}"
    pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, b varbit, j jsonb)")
    pg.execute(f"CREATE PUBLICATION {name} FOR TABLE {name}")
    run(pgcdc.create_feed(pg.dsn(), name, name, snapshot="no_data"))
    pg.execute(f"""INSERT INTO {name} VALUES (1, B'', NULL), (2, B'000', NULL), (3, B'0001', NULL), (4, B'110', NULL),
                   (5, NULL, '{{"n": 123456789012345678901234567890, "neg": -98765432109876543210,
                               "f": 12345.678901234567, "e": 1e3, "small": 7}}')""")

    async def main() -> list:
        async with await pgcdc.connect(pg.dsn(), feed=name) as s:
            return await take(s, 5)

    evs = run(main())
    # Debezium's BitSet drops leading zeros: B'0001' is "1", B'000' and B'' are ""
    assert [e.after["b"] for e in evs[:4]] == ["", "", "1", "110"]
    j = evs[4].after["j"]
    assert j == {"n": 123456789012345678901234567890, "neg": -98765432109876543210, "f": 12345.678901234567,
                 "e": 1000, "small": 7}  # jsonb stores 1e3 as 1000
    assert [type(j[k]) for k in ("n", "neg", "f", "small")] == [int, int, float, int]
    (text,) = pg.execute(f"SELECT j::text FROM {name} WHERE id = 5")[0]
    assert repr(j) == repr(json.loads(text))  # exactly what json.loads makes of it


def test_schemas_envelope_and_a_column_added_mid_stream_are_typed(pg) -> None:
    """With schemas.enable the event sits in "payload"; a column added while streaming gets
    its type (the session looks the table up again when `after` names a new column)."""
    f = new_feed(pg, options={"schemas.enable": True})
    insert(pg, f, 1)

    async def main() -> list:
        async with await pgcdc.connect(pg.dsn(), feed=f, auto_acknowledge=True) as s:
            (e1,) = await take(s, 1)
            pg.execute(f"ALTER TABLE {f} ADD COLUMN price numeric(8,3), ADD COLUMN at timestamptz")
            pg.execute(f"INSERT INTO {f} VALUES (2, 'b', 2.25, 9.125, '2024-05-06 07:08:09.5+00')")
            (e2,) = await take(s, 1)
            return [e1, e2]

    e1, e2 = run(main())
    assert "schema" in json.loads(e1.json()) and e1.source["table"] == f and e1.ts_ms > 0
    assert e1.after == {"id": 1, "v": "v1", "amount": Decimal("1.50")}
    assert e2.after["price"] == Decimal("9.125") and isinstance(e2.after["price"], Decimal)
    assert e2.after["at"].isoformat() == "2024-05-06T07:08:09.500000+00:00"
    assert e2.before is None and e2.op == "c"


def test_json_loads_matches_python() -> None:
    import pgcdc._pgcdc as native

    for text in ['{"a": [1, 2.5, -0.0, 1e400, -1E-5, 123456789012345678901234567890]}', '"\\u00e9\\ud83d\\ude00\\n\\/"',
                 "[true, false, null, {}, []]", '{"dup": 1, "dup": 2}', " 42 ", "-9223372036854775809"]:
        got, want = native._json_loads(text), json.loads(text)
        assert got == want and repr(got) == repr(want), text
    for bad in ["{", "[1,]", "01", '"\\ud800"', "1.", '{"a" 1}', "tru", "1 2", '"a\nb"']:
        with pytest.raises(pgcdc.DataError):
            native._json_loads(bad)


# ----------------------------------------------------------------------------- process and API


def _child_streams(dsn: str, feed: str, parent_stream: "pgcdc.FeedStream", q) -> None:
    try:
        try:
            parent_stream._core.next_ready()
            q.put(("parent stream usable in the child", None))
            return
        except pgcdc.InterfaceError:
            pass

        async def go() -> int:
            async with await pgcdc.connect(dsn, feed=feed) as s:
                (e,) = await take(s, 1, timeout=20)
                return e.after["id"]

        q.put(("ok", run(go(), timeout=30)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        q.put(("error", repr(e)))


def test_fork_safety(pg) -> None:
    """A forked child (multiprocessing's "fork") gets its own runtime: streams work there;
    the parent's stream refuses to be used in the child."""
    f = new_feed(pg)
    insert(pg, f, 1)

    async def main() -> None:
        async with await pgcdc.connect(pg.dsn(), feed=f) as s:  # the runtime runs in the parent
            (e,) = await take(s, 1)
            ctx = multiprocessing.get_context("fork")
            q = ctx.Queue()
            p = ctx.Process(target=_child_streams, args=(pg.dsn(), f, s, q))
            p.start()
            await asyncio.get_running_loop().run_in_executor(None, p.join, 60)
            if p.is_alive():
                p.kill()
                raise AssertionError("the forked child hung")
            assert q.get(timeout=5) == ("ok", 1)
            assert e.after["id"] == 1

    run(main(), timeout=90)


def test_bad_arguments_are_value_errors_not_panics() -> None:
    async def main() -> None:
        for kw in ({"connect_timeout": float("inf")}, {"reconnect_timeout": float("nan")}, {"connect_timeout": -1.0}):
            with pytest.raises(ValueError):
                await pgcdc.connect("host=127.0.0.1 port=1", feed="x", **kw)
        with pytest.raises(ValueError):
            pgcdc.LogicalReplicationReader("p", "s", "h", "d", connect_timeout=1e300)

    run(main())


def test_a_panic_in_a_task_is_an_internal_error() -> None:
    import pgcdc._pgcdc as native
    from pgcdc._aio import run_op

    with pytest.raises(pgcdc.InternalError, match="deliberate panic"):
        run(run_op(native._selftest_panic()), timeout=10)


def test_connection_strings(pg, tmp_path) -> None:
    f = new_feed(pg)

    async def main() -> None:
        with pytest.raises(pgcdc.InterfaceError, match="hostaddr.*sslcert|sslcert.*hostaddr") as ei:
            await pgcdc.connect(pg.dsn(hostaddr="127.0.0.1", sslcert="/x"), feed="x")
        assert "target_session_attrs" not in str(ei.value)
        with pytest.raises(pgcdc.InterfaceError, match="several hosts"):
            await pgcdc.connect("host=a,b dbname=x", feed="x")
        with pytest.raises(pgcdc.InterfaceError, match="target_session_attrs=read-write"):
            await pgcdc.connect(pg.dsn(target_session_attrs="read-write"), feed="x")
        # options reach the server (test_acknowledgements_do_not_cause_reads relies on them too)
        async with await pgcdc.connect(pg.dsn(options="-c statement_timeout=4321"), feed=f) as s:
            assert await nothing_within(s, 0.1)
            assert s.sessions == 1
        with pytest.raises(pgcdc.DataError, match="statement_timeout"):
            await pgcdc.connect(pg.dsn(options="-c statement_timeout=nonsense"), feed=f)
        # the password file (libpq's format and rules)
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"127.0.0.1:{pg.port}:postgres:feed_scram:right-password\n")
        passfile.chmod(0o600)
        with pytest.raises(pgcdc.ProgrammingError, match="no_such_feed"):  # authenticated, then the feed is missing
            await pgcdc.connect(pg.dsn(user="feed_scram", passfile=str(passfile)), feed="no_such_feed")
        passfile.chmod(0o644)  # readable by others: ignored, as libpq does
        with pytest.raises(pgcdc.AuthenticationError):
            await pgcdc.connect(pg.dsn(user="feed_scram", passfile=str(passfile)), feed="no_such_feed")

    run(main())


# ----------------------------------------------------------------------------- search_path


def test_planted_objects_never_run_as_the_consumer(pg, tmp_path) -> None:
    """An unprivileged role plants functions, aggregates, operators and a type named like the
    built-ins that the client's SQL uses, in a schema on a superuser consumer's search_path
    (after pg_catalog's implicit place, and before an explicit pg_catalog). Streaming a table
    of user-defined types, every helper and the CLI must never run any of them."""
    plant_search_path_traps(pg, "mallory")
    pg.execute("CREATE TYPE sp_mood AS ENUM ('sad', 'ok')")
    pg.execute("CREATE DOMAIN sp_posint AS int CHECK (VALUE > 0)")
    pg.execute("CREATE TYPE sp_pair AS (a int, b text)")
    dsns = {
        "pg_catalog implicitly first": trapped_superuser(pg, "victim_implicit", '"$user", mallory, public'),
        "pg_catalog listed late": trapped_superuser(pg, "victim_late", "mallory, pg_catalog, public"),
    }
    for n, (case, dsn) in enumerate(dsns.items()):
        t = f"sp_t{n}"
        pg.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, m sp_mood, p sp_posint, pair sp_pair, ms sp_mood[])")
        pg.execute(f"CREATE PUBLICATION {t} FOR TABLE {t}")

        async def helpers() -> None:
            await pgcdc.create_feed(dsn, t, t, snapshot="no_data")
            assert [f["name"] for f in await pgcdc.feeds(dsn) if f["name"] == t] == [t]
            assert (await pgcdc.feed_status(dsn, t))[0]["name"] == t
            assert any(s["name"] == t for s in await pgcdc.feed_status(dsn))
            assert await pgcdc.alter_feed(dsn, t, {"decimal.handling.mode": "string"}) == {
                "decimal.handling.mode": "string", "snapshot.mode": "no_data"}
            await pgcdc.pause_feed(dsn, t)
            await pgcdc.resume_feed(dsn, t)

        run(helpers())
        pg.execute(f"INSERT INTO {t} VALUES (1, 'ok', 7, ROW(1, 'x'), '{{sad,ok}}'), (2, 'sad', 8, NULL, NULL)")

        async def stream() -> None:
            async with await pgcdc.connect(dsn, feed=t) as s:
                e1, e2 = await take(s, 2, timeout=30)
                assert e1.after == {"id": 1, "m": "ok", "p": 7, "pair": {"a": 1, "b": "x"}, "ms": ["sad", "ok"]}, case
                assert e2.after["m"] == "sad", case
                await s.ack(e1)
            await pgcdc.ack(dsn, t, e2.commit_lsn, e2.ordinal)

        run(stream())
        env = {**os.environ, "PGCDC_DSN": dsn}
        pg.execute(f"INSERT INTO {t} VALUES (3, 'ok', 9, NULL, NULL)")
        for args in (["list", "--json"], ["status"], ["status", t], ["tail", t, "--limit", "1", "--ack"]):
            r = subprocess.run([sys.executable, "-m", "pgcdc", *args], capture_output=True, text=True, env=env,
                               timeout=60)
            assert r.returncode == 0, (case, args, r.stderr)
        assert json.loads(r.stdout)["after"]["id"] == 3
        assert run(pgcdc.drop_feed(dsn, t)) is True
        assert search_path_traps_fired(pg, "mallory") == [], case


# ----------------------------------------------------------------------------- feed identity


def staged(pg, feed: str) -> int:
    return pg.execute("SELECT count(*) FROM pgcdc.event e JOIN pgcdc.feed f ON f.id = e.feed_id WHERE f.name = %s",
                      params=[feed])[0][0]


def test_ack_refuses_an_event_of_another_feed(pg) -> None:
    """`stream.ack(event)` with an event of another feed would acknowledge this feed up to
    that position (deleting events never delivered): it is an InterfaceError, nothing lost."""
    a, b = new_feed(pg), new_feed(pg)
    insert(pg, a, 1)
    insert(pg, a, 2)
    insert(pg, b, 1)  # its position: after a's #2, before a's #3 (both staged, unacknowledged)
    insert(pg, a, 3)

    async def main() -> None:
        async with await pgcdc.connect(pg.dsn(), feed=a) as sa, await pgcdc.connect(pg.dsn(), feed=b) as sb:
            (a1,) = await take(sa, 1)
            (b1,) = await take(sb, 1)
            assert b1.position > a1.position
            with pytest.raises(pgcdc.InterfaceError, match=f'feed "{b}".*"{a}"'):
                await sa.ack(b1)
            assert (a1.feed, b1.feed) == (a, b)
            await sa.ack(a1)  # the stream goes on
            await await_for(lambda: sa.acknowledged == a1.position, what="the acknowledgement of a1")
            assert [e.after["id"] for e in await take(sa, 2)] == [2, 3]

    run(main())
    assert acked(pg, a) != acked(pg, b) and staged(pg, a) == 2

    async def again() -> list:
        async with await pgcdc.connect(pg.dsn(), feed=a) as s:
            return await take(s, 2)

    assert [e.after["id"] for e in run(again())] == [2, 3]


def test_a_feed_dropped_and_created_again_is_another_feed(pg) -> None:
    """Same name, another feed: its stream refuses events of the dropped one, and a stream
    of the dropped one ends with a ProgrammingError instead of delivering the new feed's
    events as its own."""
    f = new_feed(pg)
    insert(pg, f, 1)

    async def main() -> None:
        async with await pgcdc.connect(pg.dsn(), feed=f) as old:
            (e_old,) = await take(old, 1)
            await pgcdc.drop_feed(pg.dsn(), f)
            await pgcdc.create_feed(pg.dsn(), f, f, snapshot="no_data")
            insert(pg, f, 2, 3)
            with pytest.raises(pgcdc.ProgrammingError, match="dropped and created again"):
                await take(old, 1, timeout=45)  # woken by the new feed's NOTIFY (or the 30 s poll)
        async with await pgcdc.connect(pg.dsn(), feed=f) as new:
            assert e_old.feed == f
            with pytest.raises(pgcdc.InterfaceError, match="another feed named"):
                await new.ack(e_old)
            e2, e3 = await take(new, 2)
            assert (e2.after["id"], e3.after["id"]) == (2, 3)

    run(main(), timeout=90)
    assert staged(pg, f) == 2


def test_headers_on_a_primary_key_change(pg) -> None:
    """Event.headers: the `headers` pgcdc.read returns (`__debezium.newkey` on the delete,
    `__debezium.oldkey` on the create of a key change), read-only."""
    f = new_feed(pg)
    insert(pg, f, 1)
    pg.execute(f"UPDATE {f} SET id = 10 WHERE id = 1")
    wait_for(lambda: staged(pg, f) == 4, what="the insert and the key change (d, tombstone, c) to be staged")
    rows = pg.execute("SELECT op, headers::text FROM pgcdc.read(%s, 100)", params=[f])

    async def main() -> list:
        async with await pgcdc.connect(pg.dsn(), feed=f) as s:
            return await take(s, len(rows))

    evs = run(main())
    assert [e.op for e in evs] == [op for op, _ in rows]
    for e, (_, headers) in zip(evs, rows):
        assert dict(e.headers) == (json.loads(headers) if headers else {})
    ins, create = [e for e in evs if e.op == "c"]
    (delete,) = [e for e in evs if e.op == "d"]
    assert delete.headers["__debezium.newkey"] == {"id": 10} and "__debezium.oldkey" not in delete.headers
    assert create.headers["__debezium.oldkey"] == {"id": 1} and "__debezium.newkey" not in create.headers
    assert not {"__debezium.newkey", "__debezium.oldkey"} & set(ins.headers)
    with pytest.raises(TypeError):
        delete.headers["x"] = 1  # type: ignore[index]
