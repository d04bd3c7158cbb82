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

from pgcluster import pg_major
from ext_support import (
    Standby,
    collect,
    event_json,
    install_trap,
    lsn_int,
    read_events,
    requires_extension,
    start_cluster,
    status,
    wait_until,
)

pytestmark = [requires_extension, pytest.mark.timeout(600)]


def ids_of(events) -> list[int]:
    return [event_json(e)["after"]["id"] for e in events if e["op"] == "c"]


def make_feed(c, name: str) -> None:
    c.execute(f"CREATE TABLE {name}_t (id int PRIMARY KEY, v text)")
    c.execute(f"CREATE PUBLICATION {name}_p FOR TABLE {name}_t")
    # Streaming only: these tests count exactly the events of the rows they write.
    c.execute(f"SELECT pgcdc.create_feed('{name}', publication => '{name}_p', options => '{{\"snapshot.mode\": \"no_data\"}}')")


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


@pytest.mark.smoke
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
            writer_busy_at_kill = t.is_alive() and not stop.is_set()
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
        # The postmaster's orphaned backends may keep serving the writer until restart()
        # reaps them, so the writer need not see an error: check it was mid-stream instead.
        assert writer_busy_at_kill and written[0] < 1_000_000, "the writer had stopped before the kill"
        print(f"crash: {n} rows committed ({staged_at_kill} acknowledged to the writer, writer errors: {errors}), {acked_id} acked")
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


def test_changed_options_and_a_crash_bring_back_exactly_the_unacked_events():
    """Positions depend on the WAL only: after alter_feed (tombstones on <-> off) and a crash
    that empties the queue, exactly the unacknowledged events are staged again."""
    c = start_cluster("pgcdc-ordinals")
    try:
        make_feed(c, "ordf")
        insert(c, "ordf_t", 1, 6, per_tx=6)
        evs = collect(c, "ordf", 6)
        c.execute("SELECT pgcdc.ack('ordf', %s)", params=[evs[-1]["commit_lsn"]])
        c.execute("DELETE FROM ordf_t")  # one transaction: 6 deletes, each with its tombstone
        evs = collect(c, "ordf", 12)
        assert [e["op"] for e in evs] == ["d", "tombstone"] * 6
        commit = evs[0]["commit_lsn"]
        assert {e["commit_lsn"] for e in evs} == {commit}

        def deleted(events):
            return [(e["op"], event_json(e)["before"]["id"] if e["op"] == "d" else None, e["ordinal"]) for e in events]

        # Acknowledge up to the third delete (not its tombstone).
        third = evs[4]
        assert third["op"] == "d"
        c.execute("SELECT pgcdc.ack('ordf', %s, %s)", params=[commit, third["ordinal"]])
        unacked = evs[5:]

        def crash_and_collect(want: int):
            c.kill9_postmaster()
            c.restart()
            got = collect(c, "ordf", want, timeout=90)
            time.sleep(1.0)
            return read_events(c, "ordf")

        # Tombstones off, then the queue is lost: the three later deletes come back, nothing
        # acknowledged, no tombstone.
        c.execute("SELECT pgcdc.alter_feed('ordf', '{\"tombstones.on.delete\": false}')")
        wait_until(lambda: status(c, "ordf")["worker_pid"], 20, "the worker to restart")
        back = crash_and_collect(3)
        want = [e for e in unacked if e["op"] == "d"]
        assert deleted(back) == deleted(want)

        # Acknowledge the fifth delete; tombstones on again; crash: its tombstone and the
        # sixth delete with its tombstone come back.
        fifth = back[1]
        assert event_json(fifth)["before"]["id"] == 5
        c.execute("SELECT pgcdc.ack('ordf', %s, %s)", params=[commit, fifth["ordinal"]])
        c.execute("SELECT pgcdc.alter_feed('ordf', '{\"tombstones.on.delete\": null}')")
        wait_until(lambda: status(c, "ordf")["worker_pid"], 20, "the worker to restart")
        back = crash_and_collect(3)
        assert [(e["op"], e["ordinal"]) for e in back] == [
            ("tombstone", fifth["ordinal"] + 1),
            ("d", fifth["ordinal"] + 3),
            ("tombstone", fifth["ordinal"] + 4),
        ]
        assert [(e["op"], e["ordinal"]) for e in back] == [(e["op"], e["ordinal"]) for e in evs[9:]]
    finally:
        c.stop()


def test_workers_ignore_a_database_search_path():
    """ALTER DATABASE ... SET search_path reaches every new session, the launcher and feed
    workers included; they pin their own, so a planted operator never runs in them."""
    c = start_cluster("pgcdc-searchpath")
    try:
        c.execute("CREATE ROLE trapper LOGIN")
        c.execute("GRANT CREATE ON DATABASE postgres TO trapper")
        with psycopg.connect(c.dsn(user="trapper"), autocommit=True) as conn:
            install_trap(conn.execute, "trap")
        c.execute("ALTER DATABASE postgres SET search_path = trap, pg_catalog, public")
        c.restart()  # the launcher starts again with the database's settings
        c.execute("SELECT 1 WHERE 'a'::text = 'a'::text")  # the trap works in new sessions
        assert c.execute("SELECT count(*) FROM trap.fired WHERE backend = 'client backend'")[0][0] > 0
        make_feed(c, "spf")
        insert(c, "spf_t", 1, 20, per_tx=10)
        evs = collect(c, "spf", 20)
        c.execute("SELECT pgcdc.ack('spf', %s)", params=[evs[-1]["commit_lsn"]])
        insert(c, "spf_t", 21, 30, per_tx=10)
        collect(c, "spf", 10)
        fired = c.execute("SELECT backend, count(*) FROM trap.fired WHERE backend <> 'client backend' GROUP BY 1")
        assert fired == [], fired
    finally:
        c.stop()


def test_a_hot_standby_runs_no_pgcdc_process_and_feeds_resume_safely_after_promotion():
    c = start_cluster("pgcdc-primary")
    standby = Standby(c, "pgcdc-standby")
    try:
        make_feed(c, "hsf")
        insert(c, "hsf_t", 1, 10, per_tx=10)
        collect(c, "hsf", 10)
        c.execute("CHECKPOINT")
        standby.start()
        wait_until(
            lambda: standby.execute("SELECT count(*) FROM pgcdc.feed WHERE name = 'hsf'") == [(1,)],
            30,
            "the feed row on the standby",
        )
        time.sleep(3.0)
        assert standby.execute("SELECT pg_is_in_recovery()") == [(True,)]
        assert standby.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('pgcdc launcher', 'pgcdc feed')"
        ) == [(0,)]
        log = standby.log_tail(10000)
        for bad in ("exited with exit code", "pgcdc launcher", "pgcdc feed", "terminated by signal"):
            assert bad not in log, log
        # Promotion: the launcher starts; the feed's slot does not exist on this server, so
        # the feed stops with a clear error instead of crash-looping.
        standby.execute("SELECT pg_promote()")
        st = wait_until(
            lambda: (lambda s: s if s["state"] == "error" else None)(status(standby, "hsf")), 30, "error state"
        )
        assert "does not exist" in st["last_error"], st
        time.sleep(2.0)
        assert status(standby, "hsf")["state"] == "error", "no restart loop"
        # The slot record copied by the base backup is forgotten once the feed is dropped
        # (there is no such slot on this server).
        record = standby.datadir / "pgcdc" / "slots" / "pgcdc_hsf"
        assert record.exists()
        standby.execute("SELECT pgcdc.drop_feed('hsf')")
        wait_until(lambda: not record.exists(), 15, "the record forgotten")
        # The primary is unaffected.
        insert(c, "hsf_t", 11, 12, per_tx=2)
        assert ids_of(collect(c, "hsf", 12))[-2:] == [11, 12]
    finally:
        standby.stop()
        c.stop()


@pytest.mark.smoke
def test_a_failover_slot_feed_survives_promotion_of_a_standby_that_synced_it():
    """`slot.failover` (PostgreSQL 17+): the standby synchronizes the feed's slot; after its
    promotion the feed goes on there with exactly the events not acknowledged."""
    c = start_cluster("pgcdc-fo-primary")
    standby = None
    try:
        c.execute("CREATE TABLE fo_t (id int PRIMARY KEY, v text)")
        c.execute("CREATE PUBLICATION fo_p FOR TABLE fo_t")
        create = (
            "SELECT pgcdc.create_feed('fo', publication => 'fo_p', "
            "options => '{\"snapshot.mode\": \"no_data\", \"slot.failover\": true}')"
        )
        if pg_major() < 17:
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="PostgreSQL 17 or later"):
                c.execute(create)
            return
        c.execute("SELECT pg_create_physical_replication_slot('fo_standby')")
        # The feed never gets ahead of the standby: what it has, the standby has.
        c.execute("ALTER SYSTEM SET synchronized_standby_slots = 'fo_standby'")
        c.execute("SELECT pg_reload_conf()")
        c.execute(create)
        assert c.execute("SELECT failover FROM pg_replication_slots WHERE slot_name = 'pgcdc_fo'") == [(True,)]
        standby = Standby(c, "pgcdc-fo-standby", sync_replication_slots=True, hot_standby_feedback=True,
                          primary_slot_name="fo_standby")
        standby.init()
        # Slot synchronization connects to a database: pg_basebackup -R wrote none.
        with (standby.datadir / "postgresql.auto.conf").open("a") as f:
            f.write(f"primary_conninfo = 'host=127.0.0.1 port={c.port} user={c.superuser} dbname=postgres'\n")
        standby.start()
        insert(c, "fo_t", 1, 5, per_tx=1)
        evs = collect(c, "fo", 5)
        assert ids_of(evs) == list(range(1, 6))
        assert ack_event(c, "fo", evs[4]) == 5

        def confirmed(server) -> int:
            rows = server.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                  "WHERE slot_name = 'pgcdc_fo'")
            return lsn_int(rows[0][0]) if rows and rows[0][0] else 0

        wait_until(lambda: confirmed(c) > lsn_int(evs[4]["commit_lsn"]), 30,
                   "the primary's slot to move past the acknowledged events")

        def synced() -> bool:
            # The standby takes the slot over only once the slot needs no older catalog rows
            # than the standby has: a running-xacts record lets an idle slot move on.
            c.execute("SELECT pg_log_standby_snapshot()")
            rows = standby.execute("SELECT synced FROM pg_replication_slots WHERE slot_name = 'pgcdc_fo'")
            return bool(rows) and rows[0][0] and confirmed(standby) > lsn_int(evs[4]["commit_lsn"])

        wait_until(synced, 120, "the standby to synchronize the feed's slot", interval=1.0)
        insert(c, "fo_t", 6, 15, per_tx=1)
        assert ids_of(collect(c, "fo", 10)) == list(range(6, 16))
        end = c.execute("SELECT pg_current_wal_lsn()::text")[0][0]
        wait_until(lambda: lsn_int(standby.execute("SELECT pg_last_wal_replay_lsn()::text")[0][0]) >= lsn_int(end),
                   30, "the standby to replay everything")
        c.stop("immediate")  # the primary is gone
        standby.execute("SELECT pg_promote()")
        # The base backup copied the old primary's synchronized_standby_slots: the new one has
        # no standby yet, and would hold logical changes back waiting for it.
        standby.execute("ALTER SYSTEM RESET synchronized_standby_slots")
        standby.execute("SELECT pg_reload_conf()")
        got = collect(standby, "fo", 10, timeout=90)
        assert ids_of(got) == list(range(6, 16)), "exactly the unacknowledged events, none acknowledged"
        time.sleep(1.0)
        assert len(read_events(standby, "fo")) == 10
        assert status(standby, "fo")["state"] == "running"
        insert(standby, "fo_t", 16, 16, per_tx=1)
        assert ids_of(collect(standby, "fo", 11))[-1] == 16
    finally:
        if standby is not None:
            standby.stop()
        c.stop()


def test_queue_counters_stay_exact_when_an_ack_commits_while_the_worker_starts():
    """The worker counts the queue when it starts; an ack committed meanwhile (here: inside the
    consumer's own transaction, committed while the new worker starts) must not be lost."""
    c = start_cluster("pgcdc-counters")
    try:
        make_feed(c, "cntf")
        insert(c, "cntf_t", 1, 100, per_tx=10)
        evs = collect(c, "cntf", 100)
        pid = wait_until(lambda: status(c, "cntf")["worker_pid"], 20, "a worker")
        with c.connect(autocommit=False) as consumer:
            assert consumer.execute(
                "SELECT pgcdc.ack('cntf', %s, %s)", [evs[29]["commit_lsn"], evs[29]["ordinal"]]
            ).fetchone() == (30,)
            c.execute("SELECT pg_terminate_backend(%s)", params=[pid])
            # The new worker starts while the ack is not committed yet, and waits for it.
            wait_until(
                lambda: c.execute(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgcdc feed' "
                    "AND pid <> %s AND wait_event_type = 'Lock'",
                    params=[pid],
                ),
                20,
                "the new worker to wait for the consumer's transaction",
            )
            consumer.commit()
        wait_until(lambda: status(c, "cntf")["phase"] == "streaming", 20, "the new worker to stream")
        assert c.execute("SELECT count(*) FROM pgcdc.event") == [(70,)]
        st = status(c, "cntf")
        real_bytes = c.execute(
            "SELECT sum(coalesce(octet_length(value), 0) + coalesce(octet_length(key), 0)) FROM pgcdc.event"
        )[0][0]
        assert (st["staged_events"], st["staged_bytes"]) == (70, real_bytes), st
        # And they stay exact as the feed goes on.
        insert(c, "cntf_t", 101, 110, per_tx=10)
        collect(c, "cntf", 80)
        assert status(c, "cntf")["staged_events"] == 80
    finally:
        c.stop()


PAGE = 8192


def test_acks_ending_on_a_wal_page_boundary_do_not_restart_the_worker():
    """After an ack the worker flushes the WAL up to it. When the ack's commit record ends
    exactly on a WAL page boundary, the next insert position lies past the next page's header:
    flushing to it fails ("xlog flush request ... is not satisfied") and the worker restarted.
    Each round pads the acknowledging transaction so that it ends exactly on a boundary."""
    c = start_cluster("pgcdc-walpage", autovacuum="off")
    try:
        make_feed(c, "wpf")
        c.execute("CREATE TABLE wp_pad (v text)")  # not published: WAL only
        pid = wait_until(lambda: status(c, "wpf")["worker_pid"], 20, "a worker")
        with c.connect() as meter, c.connect(autocommit=False) as consumer:

            def insert_lsn() -> int:
                return lsn_int(meter.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])

            def pad(n: int) -> None:
                consumer.execute("INSERT INTO wp_pad VALUES (repeat('x', %s))", [n])

            base = None  # WAL bytes of an acknowledging transaction beyond its pad's length
            hits = rounds = 0
            next_id = 1
            while hits < 5 and rounds < 200:
                rounds += 1
                insert(c, "wpf_t", next_id, next_id, per_tx=1)
                (ev,) = collect(c, "wpf", 1)
                assert event_json(ev)["after"]["id"] == next_id
                next_id += 1
                time.sleep(0.05)
                for _ in range(20):  # move the insert position until the pad fits the room left
                    p0 = insert_lsn()
                    room = PAGE - p0 % PAGE
                    n = 200 if base is None else room - base
                    if 127 < n < 1800:  # one-byte varlena headers below 127, TOAST above ~2000
                        break
                    pad(1800 if n <= 127 else min(1800, n - 900))
                    consumer.commit()
                pad(n)
                consumer.execute("SELECT pgcdc.ack('wpf', %s, %s)", [ev["commit_lsn"], ev["ordinal"]])
                consumer.commit()
                p1 = insert_lsn()
                crossed = (p1 - 1) // PAGE - p0 // PAGE  # page headers inserted in between
                base = (p1 - p0 - 24 * crossed) - n
                if p1 % PAGE == 24:
                    hits += 1
                    time.sleep(0.3)  # the worker sees the ack and flushes
        assert hits == 5, f"only {hits} of {rounds} acknowledgements ended on a page boundary"
        time.sleep(1.0)
        log = c.log_tail(100000)
        assert "is not satisfied" not in log, log[-3000:]
        assert status(c, "wpf")["worker_pid"] == pid, "the worker restarted"
        print(f"walpage: {hits} acks ended on a page boundary in {rounds} rounds")
    finally:
        c.stop()
