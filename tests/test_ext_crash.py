"""End to end: pgcdc feeds across server restarts and a kill -9 of the postmaster.

The invariant (DESIGN.md §3): the slot is the source of truth, the UNLOGGED queue a cache.
After a crash every event not acknowledged is staged again, nothing acknowledged returns,
nothing is lost. A single writer inserts ascending ids in order, so the feed's stream is
exactly the ids in order and the accounting can be exact.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from ext_support import collect, event_json, lsn_int, read_events, requires_extension, start_cluster, status, wait_until

pytestmark = [requires_extension, pytest.mark.timeout(600)]


def ids_of(events) -> list[int]:
    return [event_json(e)["after"]["id"] for e in events if e["op"] == "c"]


def make_feed(c, name: str) -> None:
    c.execute(f"CREATE TABLE {name}_t (id int PRIMARY KEY, v text)")
    c.execute(f"CREATE PUBLICATION {name}_p FOR TABLE {name}_t")
    c.execute(f"SELECT pgcdc.create_feed('{name}', publication => '{name}_p')")


def insert(c, table: str, lo: int, hi: int, per_tx: int) -> None:
    with c.connect(autocommit=False) as conn:
        for i in range(lo, hi + 1, per_tx):
            conn.execute(
                f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(%s::int, %s::int) g",
                [i, min(i + per_tx - 1, hi)],
            )
            conn.commit()


def ack_event(c, feed: str, ev) -> int:
    c.execute("SELECT pgcdc.ack(%s, %s, %s)", params=[feed, ev["commit_lsn"], ev["ordinal"]])
    return event_json(ev)["after"]["id"]


def test_kill9_postmaster_mid_stream_loses_nothing_and_returns_nothing_acked():
    c = start_cluster("pgcdc-crash")
    try:
        make_feed(c, "crashf")
        # Phase 1: 2000 rows in 100 transactions, all staged; acknowledge a prefix that ends
        # inside a transaction (ordinal 10 of 20).
        insert(c, "crashf_t", 1, 2000, per_tx=20)
        evs = collect(c, "crashf", 2000)
        acked_id = ack_event(c, "crashf", evs[1009])
        assert acked_id == 1010
        acked = c.execute("SELECT acked_lsn::text, acked_ordinal FROM pgcdc.feed WHERE name = 'crashf'")[0]

        # Phase 2: a writer streams more rows; kill -9 the postmaster while the worker stages.
        stop = threading.Event()
        errors: list[str] = []
        written = [2000]

        def writer():
            try:
                with c.connect(autocommit=False) as conn:
                    i = 2001
                    while not stop.is_set() and i <= 1_000_000:
                        conn.execute(
                            "INSERT INTO crashf_t SELECT g, 'v' || g FROM generate_series(%s::int, %s::int) g",
                            [i, i + 49],
                        )
                        conn.commit()
                        written[0] = i + 49
                        i += 50
                        time.sleep(0.002)
            except psycopg.Error as e:  # the crash
                errors.append(str(e))

        t = threading.Thread(target=writer)
        t.start()
        try:
            wait_until(
                lambda: written[0] > 8000 and c.execute("SELECT count(*) FROM pgcdc.event")[0][0] > 3000,
                60,
                "the writer to be busy and the worker to stage part of the stream",
            )
            c.kill9_postmaster()
            staged_at_kill = written[0]
        finally:
            stop.set()
            t.join(30)
        assert not t.is_alive()

        c.restart()
        # The table is the truth: every committed row, ids 1..n without gaps.
        ids = [r[0] for r in c.execute("SELECT id FROM crashf_t ORDER BY id")]
        n = len(ids)
        assert ids == list(range(1, n + 1)) and n > 3000, n
        assert errors, "the writer was still writing when the postmaster died"
        print(f"crash: {n} rows committed ({staged_at_kill} acknowledged to the writer), {acked_id} acked")
        # The acknowledged position survived (logged catalog).
        assert c.execute("SELECT acked_lsn::text, acked_ordinal FROM pgcdc.feed WHERE name = 'crashf'")[0] == acked
        # Every unacknowledged event is staged again, exactly once; nothing acknowledged.
        want = list(range(acked_id + 1, n + 1))
        collect(c, "crashf", len(want), timeout=180)
        time.sleep(1.0)
        evs = read_events(c, "crashf")
        assert ids_of(evs) == want
        positions = [(lsn_int(e["commit_lsn"]), e["ordinal"]) for e in evs]
        assert positions == sorted(set(positions))
        assert positions[0] > (lsn_int(acked[0]), acked[1])
        # And the feed keeps working.
        insert(c, "crashf_t", n + 1, n + 10, per_tx=10)
        assert ids_of(collect(c, "crashf", len(want) + 10))[-10:] == list(range(n + 1, n + 11))
    finally:
        c.stop()


def test_feeds_survive_a_clean_restart_without_duplicates():
    c = start_cluster("pgcdc-restart")
    try:
        make_feed(c, "rsf")
        insert(c, "rsf_t", 1, 500, per_tx=50)
        evs = collect(c, "rsf", 500)
        ack_event(c, "rsf", evs[99])
        old_pid = status(c, "rsf")["worker_pid"]
        c.restart()
        st = wait_until(lambda: (lambda s: s if s["worker_pid"] else None)(status(c, "rsf")), 30, "a worker")
        assert st["worker_pid"] != old_pid and st["state"] == "running"
        insert(c, "rsf_t", 501, 600, per_tx=50)
        collect(c, "rsf", 500)
        time.sleep(1.0)
        # The queue survived the clean shutdown; re-sent events were not staged again.
        assert ids_of(read_events(c, "rsf")) == list(range(101, 601))
    finally:
        c.stop()


def test_invalidated_slot_puts_the_feed_in_error_state():
    """max_slot_wal_keep_size exceeded: the slot is invalidated; the feed says so and stops."""
    c = start_cluster("pgcdc-invalid", max_slot_wal_keep_size="1MB", max_wal_size="32MB", min_wal_size="32MB")
    try:
        make_feed(c, "invf")
        c.execute("SELECT pgcdc.pause_feed('invf')")
        wait_until(
            lambda: not c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'pgcdc_invf'")[0][0],
            15,
            "the slot to be released",
        )
        c.execute("CREATE TABLE filler (pad text)")
        for _ in range(4):
            c.execute("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 5000)")
            c.execute("SELECT pg_switch_wal()")
            c.execute("CHECKPOINT")
        assert c.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pgcdc_invf'") == [("lost",)]
        c.execute("SELECT pgcdc.resume_feed('invf')")
        st = wait_until(lambda: (lambda s: s if s["state"] == "error" else None)(status(c, "invf")), 30, "error state")
        assert "invalidated" in st["last_error"] and st["worker_pid"] is None, st
        time.sleep(1.5)
        assert status(c, "invf")["state"] == "error", "no crash loop"
        # Recovery: drop and re-create.
        c.execute("SELECT pgcdc.drop_feed('invf')")
        c.execute("SELECT pgcdc.create_feed('invf', publication => 'invf_p')")
        insert(c, "invf_t", 1, 5, per_tx=5)
        assert ids_of(collect(c, "invf", 5)) == [1, 2, 3, 4, 5]
    finally:
        c.stop()


def test_drop_extension_stops_workers_and_drops_slots():
    c = start_cluster("pgcdc-dropext")
    try:
        make_feed(c, "dxf")
        insert(c, "dxf_t", 1, 10, per_tx=10)
        collect(c, "dxf", 10)
        c.execute("DROP EXTENSION pgcdc")
        wait_until(
            lambda: c.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgcdc feed'")[0][0] == 0,
            20,
            "the feed worker to exit",
        )
        wait_until(
            lambda: c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgcdc_dxf'")[0][0] == 0,
            20,
            "the launcher to drop the slot",
        )
        # No crash loop afterwards, and the extension can come back.
        time.sleep(2.0)
        assert c.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgcdc feed'") == [(0,)]
        c.execute("CREATE EXTENSION pgcdc")
        c.execute("SELECT pgcdc.create_feed('dxf', publication => 'dxf_p')")
        insert(c, "dxf_t", 11, 12, per_tx=2)
        assert ids_of(collect(c, "dxf", 2)) == [11, 12]
    finally:
        c.stop()
