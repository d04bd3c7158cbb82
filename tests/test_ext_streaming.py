"""End to end: transactions bigger than logical_decoding_work_mem, streamed by the walsender
before they commit (pgoutput streaming, protocol 2+).

The feed stages each stream block as it arrives, invisible to pgcdc.read until the commit
(pgcdc_ext/src/streamed.rs); a rolled-back savepoint or transaction takes its staged events
away; a crash or a worker restart in the middle stages the transaction again, once. The
accounting is exact: one writer, ascending ids.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pgcdc
import psycopg
import pytest
from pgcluster import pg_major
from ext_support import (
    NO_STREAMING_ON_13,
    since_pg,
    Consumer,
    collect,
    diff_states,
    event_json,
    lsn_int,
    read_events,
    replay_events,
    requires_extension,
    start_cluster,
    status,
    table_rows,
    wait_until,
)

pytestmark = [requires_extension, pytest.mark.timeout(600)]

#: The smallest work_mem for decoding: a few hundred rows make a transaction stream.
STREAMING = {"logical_decoding_work_mem": "64kB"}
PROVISIONAL = "'FFFFFFFF/0'::pg_lsn"


def ids_of(events) -> list[int]:
    return [event_json(e)["after"]["id"] for e in events if e["op"] == "c"]


def make_feed(c, name: str, options: str = "{}") -> None:
    c.execute(f"CREATE TABLE {name}_t (id int PRIMARY KEY, v text)")
    c.execute(f"CREATE PUBLICATION {name}_p FOR TABLE {name}_t")
    opts = json.loads(options)
    opts.setdefault("snapshot.mode", "no_data")
    c.execute("SELECT pgcdc.create_feed(%s, publication => %s, options => %s)",
              params=[name, f"{name}_p", json.dumps(opts)])


def provisional(c, feed: str) -> int:
    """Events staged for streamed transactions that have not committed (or not been read yet)."""
    return c.execute(
        f"SELECT count(*) FROM pgcdc.event e JOIN pgcdc.feed f ON f.id = e.feed_id "
        f"WHERE f.name = %s AND e.commit_lsn >= {PROVISIONAL}",
        params=[feed],
    )[0][0]


def streamed_txns(c, feed: str) -> int:
    rows = c.execute("SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = %s", params=[f"pgcdc_{feed}"])
    return rows[0][0] if rows else 0


def insert(conn, table: str, lo: int, hi: int) -> None:
    conn.execute(f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(%s::int, %s::int) g", [lo, hi])


def read_all(c, feed: str) -> list[dict]:
    out: list[dict] = []
    while True:
        after = (out[-1]["commit_lsn"], out[-1]["ordinal"]) if out else None
        page = read_events(c, feed, after=after, limit=5000)
        if not page:
            return out
        out += page


@pytest.mark.smoke
def test_a_streamed_transaction_is_staged_before_its_commit_and_readable_at_it():
    c = start_cluster("pgcdc-stream", **STREAMING)
    try:
        make_feed(c, "sf")
        c.execute("SELECT pg_create_logical_replication_slot('sf_ref', 'pgoutput')")
        # Before 15 pgoutput also sends transactions with nothing published, and
        # `source.sequence` names the commit before an event: one that both slots decode (a
        # catalog change) makes the first events comparable.
        c.execute("CREATE TABLE sf_unpublished (i int)")
        with c.connect(autocommit=False) as conn:
            insert(conn, "sf_t", 1, 10)
            conn.commit()
            for lo in range(11, 20011, 1000):
                insert(conn, "sf_t", lo, lo + 999)
            if pg_major() >= 14:
                # Still open: the feed staged (part of) it already, and shows none of it.
                wait_until(lambda: provisional(c, "sf") > 5000, 60, "the open transaction to be staged")
            else:
                # PostgreSQL 13 has no streaming (protocol 1): the server holds it until COMMIT.
                time.sleep(1.0)
                assert provisional(c, "sf") == 0
            assert ids_of(read_events(c, "sf")) == list(range(1, 11))
            conn.commit()
        if pg_major() >= 14:
            # (14 reports slot statistics through the stats collector, a moment later)
            wait_until(lambda: streamed_txns(c, "sf") >= 1, 15, "the walsender to report it streamed it")
        evs = collect(c, "sf", 20010)
        assert ids_of(evs) == list(range(1, 20011))
        big = evs[10:]
        assert len({e["commit_lsn"] for e in big}) == 1 and big[0]["commit_lsn"] != evs[0]["commit_lsn"]
        assert [e["ordinal"] for e in big] == [3 * i + 1 for i in range(1, 20001)], "numbered as if decoded at its commit"
        # Byte for byte what a client decoding it after its commit makes (the reader without
        # streaming, for which the server held it until then): apart from the envelope's
        # processing times and the run id, the same records.
        ref = asyncio.run(reference(c, "sf_p", "sf_ref", 20010))
        for e, r in zip(evs, ref):
            ours, theirs = event_json(e), json.loads(r)
            for v in (ours, theirs):
                for k in ("ts_ms", "ts_us", "ts_ns"):
                    v.pop(k)
            assert ours == theirs
        streamed = 20000 if pg_major() >= 14 else 0
        assert provisional(c, "sf") == streamed, "they wait where they were staged until acknowledged"
        # Acknowledging by position inside it, then the rest by its commit LSN.
        c.execute("SELECT pgcdc.ack('sf', %s, %s)", params=[big[9999]["commit_lsn"], big[9999]["ordinal"]])
        assert ids_of(read_events(c, "sf", limit=3)) == [10011, 10012, 10013]
        assert provisional(c, "sf") == streamed // 2
        c.execute("SELECT pgcdc.ack('sf', %s)", params=[big[0]["commit_lsn"]])
        assert read_events(c, "sf") == [] and provisional(c, "sf") == 0
        assert c.execute("SELECT count(*) FROM pgcdc.stream_commit")[0][0] == 0
        assert status(c, "sf")["staged_events"] == 0
        wait_until(lambda: lsn_int(status(c, "sf")["confirmed_flush_lsn"]) > lsn_int(big[0]["commit_lsn"]), 15,
                   "the slot to move past the acknowledged transaction")
    finally:
        c.stop()


async def reference(c, publication: str, slot: str, n: int) -> list[str]:
    r = pgcdc.LogicalReplicationReader(publication, slot, host="127.0.0.1", database="postgres", port=c.port,
                                       sslmode="disable", format="debezium", streaming=False,
                                       debezium_options={"topic.prefix": publication.removesuffix("_p")})
    out = []
    async for m in r:
        out.append(m.json())
        if len(out) == n:
            break
    await r.stop()
    return out


@since_pg(14, NO_STREAMING_ON_13)
def test_rolled_back_savepoints_and_transactions_take_their_staged_events_away():
    c = start_cluster("pgcdc-stream-abort", **STREAMING)
    try:
        make_feed(c, "rb")
        with c.connect(autocommit=False) as conn:
            insert(conn, "rb_t", 1, 5000)
            conn.execute("SAVEPOINT s")
            insert(conn, "rb_t", 100001, 105000)
            wait_until(lambda: provisional(c, "rb") > 6000, 60, "the savepoint's changes to be staged")
            conn.execute("ROLLBACK TO SAVEPOINT s")
            insert(conn, "rb_t", 5001, 8000)
            conn.commit()
        evs = collect(c, "rb", 8000)
        time.sleep(0.5)
        evs = read_all(c, "rb")
        assert ids_of(evs) == list(range(1, 8001))
        assert [e["ordinal"] for e in evs] == [3 * i + 1 for i in range(1, 8001)], "the numbering went back"
        with c.connect(autocommit=False) as conn:
            insert(conn, "rb_t", 200001, 220000)
            wait_until(lambda: provisional(c, "rb") > 8000 + 5000, 60, "the doomed transaction to be staged")
            conn.rollback()
        wait_until(lambda: provisional(c, "rb") == 8000, 30, "its events to go")
        assert ids_of(read_all(c, "rb")) == list(range(1, 8001))
        st = status(c, "rb")
        assert st["staged_events"] == 8000, st
    finally:
        c.stop()


@since_pg(14, NO_STREAMING_ON_13)
def test_kill9_mid_stream_loses_nothing_and_returns_nothing_acked():
    c = start_cluster("pgcdc-stream-crash", **STREAMING)
    try:
        make_feed(c, "kf")
        # A committed streamed transaction, acknowledged inside.
        with c.connect(autocommit=False) as conn:
            insert(conn, "kf_t", 1, 20000)
            conn.commit()
        evs = collect(c, "kf", 20000)
        c.execute("SELECT pgcdc.ack('kf', %s, %s)", params=[evs[6999]["commit_lsn"], evs[6999]["ordinal"]])
        acked = c.execute("SELECT acked_lsn::text, acked_ordinal FROM pgcdc.feed WHERE name = 'kf'")[0]
        # Another one in the middle of being streamed: kill -9.
        errors: list[str] = []
        started = threading.Event()

        def writer() -> None:
            try:
                with c.connect(autocommit=False) as conn:
                    for lo in range(20001, 2_000_001, 2000):
                        insert(conn, "kf_t", lo, lo + 1999)
                        started.set()
                    conn.commit()
            except psycopg.Error as e:
                errors.append(str(e))

        t = threading.Thread(target=writer)
        t.start()
        try:
            started.wait(30)
            wait_until(lambda: provisional(c, "kf") > 13000 + 5000, 60, "the open transaction to be staged")
            c.kill9_postmaster()
        finally:
            t.join(60)
        c.restart()
        assert c.execute("SELECT count(*) FROM kf_t")[0][0] == 20000, "the open transaction died with the server"
        assert c.execute("SELECT acked_lsn::text, acked_ordinal FROM pgcdc.feed WHERE name = 'kf'")[0] == acked
        collect(c, "kf", 13000, timeout=120)
        time.sleep(1.0)
        evs = read_all(c, "kf")
        assert ids_of(evs) == list(range(7001, 20001)), "exactly the unacknowledged events, once"
        # The dead transaction may be streamed again after the restart; it never commits, and
        # once a running-xacts record shows it gone (a checkpoint writes one) the walsender
        # aborts it: its events go.
        def dead_one_gone() -> bool:
            c.execute("CHECKPOINT")
            return provisional(c, "kf") == 13000

        wait_until(dead_one_gone, 60, "the dead transaction's events to go", interval=1.0)
        assert ids_of(read_all(c, "kf")) == list(range(7001, 20001))
        # And it goes on.
        with c.connect(autocommit=False) as conn:
            insert(conn, "kf_t", 20001, 25000)
            conn.commit()
        collect(c, "kf", 18000)
        time.sleep(0.5)
        assert ids_of(read_all(c, "kf")) == list(range(7001, 25001))
    finally:
        c.stop()


@since_pg(14, NO_STREAMING_ON_13)
def test_a_worker_restart_mid_stream_stages_the_transaction_once():
    c = start_cluster("pgcdc-stream-restart", **STREAMING)
    try:
        make_feed(c, "wr")
        with c.connect(autocommit=False) as conn:
            insert(conn, "wr_t", 1, 10000)
            conn.commit()
            collect(c, "wr", 10000)
            insert(conn, "wr_t", 10001, 30000)
            wait_until(lambda: provisional(c, "wr") > 10000 + 5000, 60, "the open transaction to be staged")
            # The worker goes (its committed streamed transaction stays in the queue), then
            # the open one commits.
            pid = status(c, "wr")["worker_pid"]
            c.execute("SELECT pg_terminate_backend(%s)", params=[pid])
            wait_until(lambda: status(c, "wr")["worker_pid"] not in (None, pid), 30, "a new worker")
            insert(conn, "wr_t", 30001, 31000)
            conn.commit()
        collect(c, "wr", 31000, timeout=120)
        time.sleep(1.0)
        evs = read_all(c, "wr")
        assert ids_of(evs) == list(range(1, 31001)), "each event once"
        positions = [(lsn_int(e["commit_lsn"]), e["ordinal"]) for e in evs]
        assert positions == sorted(set(positions))
    finally:
        c.stop()


@since_pg(14, NO_STREAMING_ON_13)
@pytest.mark.parametrize("case", ["metadata", "notify", "off"])
def test_feeds_that_need_whole_transactions_or_say_so_do_not_stream(case: str):
    """Transaction metadata (BEGIN/END records with counts) and NOTIFY payloads need the whole
    transaction, and `streaming: false` asks for it: those feeds leave streaming off, and the
    server holds big transactions until they commit."""
    c = start_cluster("pgcdc-stream-off", **STREAMING)
    try:
        sink_notify = case == "notify"
        c.execute("CREATE TABLE off_t (id int PRIMARY KEY, v text)")
        c.execute("CREATE PUBLICATION off_p FOR TABLE off_t")
        opts = {"snapshot.mode": "no_data", **{"metadata": {"provide.transaction.metadata": "true"},
                                                "off": {"streaming": False}}.get(case, {})}
        c.execute("SELECT pgcdc.create_feed('off', publication => 'off_p', options => %s, sink => %s)",
                  params=[json.dumps(opts), "notify" if sink_notify else "table"])
        with c.connect(autocommit=False) as conn:
            insert(conn, "off_t", 1, 5000)
            conn.commit()
        wait_until(lambda: status(c, "off")["confirmed_flush_lsn"] is not None, 30, "the worker")
        if case == "metadata":
            evs = collect(c, "off", 5002)
            assert ids_of(evs) == list(range(1, 5001))
            assert evs[0]["op"] == "begin" and evs[-1]["op"] == "end"
        elif case == "off":
            assert ids_of(collect(c, "off", 5000)) == list(range(1, 5001))
        else:
            wait_until(lambda: status(c, "off")["staged_total"] >= 5000, 60, "the worker to notify")
        assert streamed_txns(c, "off") == 0, "nothing was streamed"
        assert provisional(c, "off") == 0
    finally:
        c.stop()


@since_pg(14, NO_STREAMING_ON_13)
def test_a_snapshot_with_big_transactions_streaming_through_its_windows_replays_to_the_table():
    """Streamed transactions that commit while a chunk is between its watermarks changed rows
    the window never saw as changes: the chunk is read again, and the replay of the feed still
    ends exactly with the table."""
    c = start_cluster("pgcdc-stream-snap", **STREAMING)
    try:
        c.execute("CREATE TABLE ss_t (id bigint PRIMARY KEY, v text, n int)")
        c.execute("INSERT INTO ss_t SELECT g, 'v' || g, 0 FROM generate_series(1, 30000) g")
        c.execute("CREATE TABLE ss_mark (id int PRIMARY KEY)")
        c.execute("CREATE PUBLICATION ss_p FOR TABLE ss_t, ss_mark")
        opts = {"snapshot.mode": "no_data", "snapshot.fetch.size": 2000, "skipped.operations": "none"}
        c.execute("SELECT pgcdc.create_feed('ssf', publication => 'ss_p', options => %s)", params=[json.dumps(opts)])
        wait_until(lambda: status(c, "ssf")["worker_pid"], 20, "a worker")
        consumer = Consumer(c, "ssf", batch=5000, marker_table="ss_mark").start()
        stop = threading.Event()
        errors: list[BaseException] = []
        done = [0]

        def writer() -> None:
            try:
                with c.connect(autocommit=False) as conn:
                    x, fresh = 1, 100_001
                    while not stop.is_set():
                        # ~3000 rows changed in one transaction: streamed.
                        conn.execute("UPDATE ss_t SET n = n + 1, v = v || '.' WHERE id BETWEEN %s AND %s", [x, x + 2999])
                        conn.execute("DELETE FROM ss_t WHERE id BETWEEN %s AND %s", [x + 3000, x + 3100])
                        conn.execute("INSERT INTO ss_t SELECT g, 'new' || g, 0 FROM generate_series(%s::int, %s::int) g",
                                     [fresh, fresh + 499])
                        conn.commit()
                        done[0] += 1
                        x = (x + 3217) % 27000 + 1
                        fresh += 500
                        time.sleep(0.01)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=writer)
        t.start()
        try:
            time.sleep(0.5)
            sid = c.execute("SELECT pgcdc.snapshot('ssf')")[0][0]

            def finished():
                rows = c.execute("SELECT state, rows, chunks, chunks_read FROM pgcdc.snapshots WHERE id = %s",
                                 params=[sid])
                return rows[0] if rows and rows[0][0] in ("done", "failed", "cancelled") else None

            snap = wait_until(finished, 180, "the snapshot to finish")
            time.sleep(1.0)
        finally:
            stop.set()
            t.join(60)
        assert not errors, errors
        assert snap[0] == "done", snap
        c.execute("INSERT INTO ss_mark VALUES (1)")
        consumer.wait_marker(1, 120)
        wait_until(lambda: status(c, "ssf")["staged_events"] == 0, 60, "the queue to drain")
        events = consumer.stop()
        assert streamed_txns(c, "ssf") > 0, "the writer's transactions were streamed"
        print(f"snapshot {snap}, writer transactions {done[0]}, {len(events)} events")
        want = table_rows(c, "ss_t", ["id"])
        got = replay_events(events).get(("public", "ss_t"), {})
        assert got == want, "replay differs from the table:\n" + diff_states(
            want, got, [e for e in events if e["table_name"] == "ss_t"]
        )
    finally:
        c.stop()
