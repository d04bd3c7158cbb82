"""End to end: the pgcdc extension in a throwaway cluster (feeds, workers, acks, faults).

Each test uses its own feed, tables and publication in one cluster per module; the tests
that restart or crash the server have their own clusters (test_ext_crash.py).
"""

from __future__ import annotations

import json
import re
import select
import threading
import time
import urllib.parse
from collections import Counter

import psycopg
import pytest

from ext_support import (
    NO_MESSAGES_ON_13,
    since_pg,
    install_trap,
    collect,
    event_json,
    lsn_int,
    read_events,
    requires_extension,
    slot,
    start_cluster,
    status,
    wait_until,
)
from workload import TYPEMATRIX_DML_SQL, TYPEMATRIX_SQL
from pgcluster import pg_major

pytestmark = [requires_extension, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def pg():
    c = start_cluster("pgcdc-ext")
    try:
        yield c
    finally:
        c.stop()


def setup_table(pg, name: str, pub: str | None = None) -> str:
    pub = pub or name
    pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    pg.execute(f"CREATE PUBLICATION {pub} FOR TABLE {name}")
    return pub


def insert_rows(pg, table: str, ids, per_tx: int = 1) -> None:
    ids = list(ids)
    with pg.connect(autocommit=False) as conn:
        for i in range(0, len(ids), per_tx):
            chunk = ids[i : i + per_tx]
            conn.execute(
                f"INSERT INTO {table} SELECT g, 'v' || g FROM unnest(%s::int[]) g", [chunk]
            )
            conn.commit()


def ids_of(events) -> list[int]:
    out = []
    for e in events:
        if e["op"] == "c":
            out.append(event_json(e)["after"]["id"])
    return out


# ----------------------------------------------------------------------------- typematrix




_TD_LINE = re.compile(r"^table (\S+?)\.(\S+?): (INSERT|UPDATE|DELETE|TRUNCATE): ?(.*)$")


def _pk_values(tuple_text: str, pk: list[str]) -> tuple:
    vals = []
    for col in pk:
        m = re.search(rf"\b{col}\[[^\]]+\]:('(?:[^']|'')*'|\S+)", tuple_text)
        vals.append(m.group(1) if m else None)
    return tuple(vals)


def expected_from_test_decoding(pg, db: str, lines: list[str]) -> Counter:
    """(table, op) counts Debezium semantics give for the changes test_decoding printed."""
    roots = dict(
        pg.execute(
            "SELECT c.relname, r.relname FROM pg_class c "
            "JOIN pg_class r ON r.oid = pg_partition_root(c.oid) WHERE c.relkind = 'r' "
            "AND c.relnamespace = 'public'::regnamespace",
            dbname=db,
        )
    )
    pks = {}
    for t, cols in pg.execute(
        "SELECT c.relname, array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indrelid "
        "CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indisprimary GROUP BY c.relname",
        dbname=db,
    ):
        pks[t] = cols
    want: Counter = Counter()
    for line in lines:
        if line.startswith("message:"):
            want[("", "m")] += 1
            continue
        if line.startswith("table ") and ": TRUNCATE:" in line:
            # One line for all relations truncated together; partitions count as their root.
            names = line[len("table ") : line.index(": TRUNCATE:")].split(", ")
            for table in {roots.get(n.split(".", 1)[1], n.split(".", 1)[1]) for n in names}:
                want[(table, "t")] += 1
            continue
        m = _TD_LINE.match(line)
        if not m:
            continue
        _schema, table, op, rest = m.groups()
        table = roots.get(table, table)
        if op == "INSERT":
            want[(table, "c")] += 1
        elif op == "DELETE":
            want[(table, "d")] += 1
        elif op == "TRUNCATE":
            want[(table, "t")] += 1
        else:
            pk = pks.get(table, [])
            if "old-key:" in rest and pk:
                old, new = rest.split("new-tuple:", 1)
                if _pk_values(old, pk) != _pk_values(new, pk):
                    # A key change: Debezium emits a delete (+ tombstone) and a create.
                    want[(table, "d")] += 1
                    want[(table, "c")] += 1
                    continue
            want[(table, "u")] += 1
    return want


# After the shared DML: an update and a delete on every table, one TRUNCATE of all of them,
# and a non-transactional message, so every table has c, u, d and t events.
EXTRA_DML = """
INSERT INTO tm_nopk VALUES (2, 'z');
INSERT INTO tm_part VALUES (3, 'eu');
UPDATE tm_types SET c_int4 = coalesce(c_int4, 0) + 1 WHERE id = 3;
UPDATE tm_default SET qty = qty + 1 WHERE id = 10;
UPDATE tm_full SET qty = qty + 1 WHERE id = 10;
UPDATE tm_nopk SET b = 'w';
UPDATE tm_toast SET small = 3;
UPDATE tm_gen SET a = 22;
UPDATE tm_part SET id = id WHERE id = 3;
DELETE FROM tm_types WHERE id = 3;
DELETE FROM tm_default WHERE id = 10;
DELETE FROM tm_full WHERE id = 10;
DELETE FROM tm_nopk;
DELETE FROM tm_toast;
DELETE FROM tm_gen;
DELETE FROM tm_part WHERE id = 3;
TRUNCATE tm_types, tm_default, tm_full, tm_nopk, tm_toast, tm_gen, tm_part;
SELECT pg_logical_emit_message(false, 'heartbeat', 'not in a transaction');
"""


@pytest.mark.smoke
def test_typematrix_every_table_and_operation_is_delivered(pg):
    # The feed runs in pgcdc.database (postgres): use a schema of its own there.
    db = "postgres"
    pg.execute("DROP PUBLICATION IF EXISTS tm_pub")
    pg.psql("-f", str(TYPEMATRIX_SQL), dbname=db)
    pg.execute(
        "SELECT pgcdc.create_feed('tm', publication => 'tm_pub', "
        "options => '{\"skipped.operations\": \"none\", \"snapshot.mode\": \"no_data\"}')"
    )
    pg.execute("SELECT pg_create_logical_replication_slot('tm_reference', 'test_decoding')")
    try:
        pg.psql("-f", str(TYPEMATRIX_DML_SQL), dbname=db)
        pg.psql("-c", EXTRA_DML, dbname=db)
        lines = [
            r[0]
            for r in pg.execute(
                "SELECT data FROM pg_logical_slot_get_changes('tm_reference', NULL, NULL, 'include-xids', '0')"
            )
        ]
    finally:
        pg.execute("SELECT pg_drop_replication_slot('tm_reference')")
    want = expected_from_test_decoding(pg, db, lines)
    for table in ("tm_types", "tm_default", "tm_full", "tm_nopk", "tm_toast", "tm_gen", "tm_part"):
        for op in "cudt":
            assert want[(table, op)] >= 1, (table, op, want)
    assert want[("", "m")] == 2, want
    if pg_major() < 14:
        del want[("", "m")]  # pgoutput sends logical decoding messages from 14 on
    total = sum(want.values()) + want_tombstones(want)
    try:
        events = collect(pg, "tm", total, timeout=30)
    except AssertionError:
        got = Counter((e["table_name"], e["op"]) for e in read_events(pg, "tm") if e["op"] != "tombstone")
        raise AssertionError(f"missing {want - got}, unexpected {got - want}") from None
    got = Counter((e["table_name"], e["op"]) for e in events if e["op"] != "tombstone")
    assert got == want, f"missing {want - got}, unexpected {got - want}"
    # Every published table of the workload produced its events.
    tables = {r[0] for r in pg.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = 'tm_pub' AND schemaname = 'public'")}
    tables = {t for t in tables if not t.startswith("tm_part_")}
    assert tables <= {t for t, _ in got}, tables - {t for t, _ in got}
    # Positions are strictly increasing; values are JSON with the right op and table.
    positions = [(lsn_int(e["commit_lsn"]), e["ordinal"]) for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    for e in events:
        if e["op"] in ("c", "u", "d", "t"):
            v = event_json(e)
            assert v["op"] == e["op"]
            assert v["source"]["table"] == e["table_name"]
            assert v["source"]["lsn"] == lsn_int(e["lsn"])
        if e["op"] == "m":
            assert event_json(e)["message"]["prefix"] in ("outbox", "heartbeat")
    assert sum(1 for e in events if e["op"] == "tombstone") == want_tombstones(want)
    # Acknowledge everything; the slot follows.
    last = events[-1]
    pg.execute("SELECT pgcdc.ack('tm', %s, %s)", params=[last["commit_lsn"], last["ordinal"]])
    assert read_events(pg, "tm") == []
    pg.execute("SELECT pgcdc.drop_feed('tm')")


def want_tombstones(want: Counter) -> int:
    return sum(n for (t, op), n in want.items() if op == "d")


# ------------------------------------------------------------------- ack and confirmed flush


@pytest.mark.smoke
def test_ack_advances_confirmed_flush_lsn_only_past_fully_acked_transactions(pg):
    pub = setup_table(pg, "ack_t")
    pg.execute(f"SELECT pgcdc.create_feed('ackf', publication => '{pub}', options => '{{\"snapshot.mode\": \"no_data\"}}')")
    insert_rows(pg, "ack_t", range(1, 4), per_tx=3)  # T1: 3 events
    insert_rows(pg, "ack_t", range(4, 6), per_tx=2)  # T2: 2 events
    events = collect(pg, "ackf", 5)
    t1, t2 = events[0]["commit_lsn"], events[3]["commit_lsn"]
    assert [e["commit_lsn"] for e in events] == [t1] * 3 + [t2] * 2
    start = slot(pg, "pgcdc_ackf")["confirmed_flush_lsn"]
    assert lsn_int(start) <= lsn_int(t1), "nothing acknowledged, nothing confirmed past T1"

    # Ordinals are fixed by the WAL (the i-th change owns 3i+1..3i+3): they have gaps.
    assert [e["ordinal"] for e in events] == [4, 7, 10, 4, 7]

    # Part of T1: the slot must not move past T1.
    assert pg.execute("SELECT pgcdc.ack('ackf', %s, %s)", params=[t1, events[1]["ordinal"]]) == [(2,)]
    time.sleep(1.0)
    assert lsn_int(slot(pg, "pgcdc_ackf")["confirmed_flush_lsn"]) <= lsn_int(t1)
    assert [e["ordinal"] for e in read_events(pg, "ackf")] == [10, 4, 7]

    # All of T1 (whole-transaction form): the slot moves past T1's commit, not past T2's.
    assert pg.execute("SELECT pgcdc.ack('ackf', %s)", params=[t1]) == [(1,)]
    wait_until(
        lambda: lsn_int(slot(pg, "pgcdc_ackf")["confirmed_flush_lsn"]) > lsn_int(t1),
        10,
        "confirmed_flush_lsn past T1",
    )
    assert lsn_int(slot(pg, "pgcdc_ackf")["confirmed_flush_lsn"]) <= lsn_int(t2)

    # Everything: confirmed past T2.
    pg.execute("SELECT pgcdc.ack('ackf', %s, %s)", params=[t2, events[4]["ordinal"]])
    wait_until(
        lambda: lsn_int(slot(pg, "pgcdc_ackf")["confirmed_flush_lsn"]) > lsn_int(t2),
        10,
        "confirmed_flush_lsn past T2",
    )
    st = status(pg, "ackf")
    assert st["acked_lsn"] == t2 and st["acked_ordinal"] == 7 and st["staged_events"] == 0
    assert st["staged_bytes"] == 0
    # Acknowledging again is a no-op; beyond what was delivered is an error.
    assert pg.execute("SELECT pgcdc.ack('ackf', %s, 7)", params=[t2]) == [(0,)]
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        pg.execute("SELECT pgcdc.ack('ackf', 'FF/0', 1)")
    assert "delivered" in str(e.value) and e.value.diag.message_hint
    pg.execute("SELECT pgcdc.drop_feed('ackf')")


def test_idle_published_table_does_not_pin_wal(pg):
    pub = setup_table(pg, "idle_t")
    pg.execute("CREATE TABLE busy_t (id serial PRIMARY KEY, pad text)")
    pg.execute(f"SELECT pgcdc.create_feed('idlef', publication => '{pub}', options => '{{\"snapshot.mode\": \"no_data\"}}')")
    insert_rows(pg, "idle_t", [1])
    events = collect(pg, "idlef", 1)
    pg.execute("SELECT pgcdc.ack('idlef', %s)", params=[events[0]["commit_lsn"]])
    # Unpublished churn: the slot must keep up although its own tables are idle.
    for _ in range(20):
        pg.execute("INSERT INTO busy_t (pad) SELECT repeat('x', 500) FROM generate_series(1, 200)")
    target = lsn_int(pg.execute("SELECT pg_current_wal_lsn()")[0][0])
    wait_until(
        lambda: lsn_int(slot(pg, "pgcdc_idlef")["confirmed_flush_lsn"]) >= target,
        20,
        "confirmed_flush_lsn to follow unpublished churn",
    )
    wait_until(
        lambda: lsn_int(slot(pg, "pgcdc_idlef")["restart_lsn"]) > lsn_int(events[0]["commit_lsn"]),
        20,
        "restart_lsn to move on",
    )
    pg.execute("SELECT pgcdc.drop_feed('idlef')")


# --------------------------------------------------------------------- lifecycle


def test_pause_resume_and_drop(pg):
    pub = setup_table(pg, "life_t")
    pg.execute(f"SELECT pgcdc.create_feed('lifef', publication => '{pub}')")
    wait_until(lambda: status(pg, "lifef")["worker_pid"], 20, "a worker")
    pid = status(pg, "lifef")["worker_pid"]
    names = pg.execute("SELECT backend_type, application_name FROM pg_stat_activity WHERE pid = %s", params=[pid])
    assert names == [("pgcdc feed", "pgcdc feed lifef")]

    pg.execute("SELECT pgcdc.pause_feed('lifef')")
    wait_until(lambda: status(pg, "lifef")["worker_pid"] is None, 10, "the worker to stop")
    assert status(pg, "lifef")["state"] == "paused"
    insert_rows(pg, "life_t", range(1, 11))
    time.sleep(0.5)
    assert read_events(pg, "lifef") == [], "paused: nothing staged"
    pg.execute("SELECT pgcdc.pause_feed('lifef')")  # idempotent

    pg.execute("SELECT pgcdc.resume_feed('lifef')")
    events = collect(pg, "lifef", 10)
    assert ids_of(events) == list(range(1, 11)), "changes made while paused are kept by the slot"

    pg.execute("SELECT pgcdc.drop_feed('lifef')")
    wait_until(lambda: slot(pg, "pgcdc_lifef") is None, 15, "the slot to be dropped")
    assert pg.execute("SELECT count(*) FROM pgcdc.event e JOIN pgcdc.feed f ON f.id = e.feed_id WHERE f.name = 'lifef'") == [(0,)]
    assert pg.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgcdc feed lifef'") == [(0,)]
    with pytest.raises(psycopg.errors.UndefinedObject):
        pg.execute("SELECT pgcdc.drop_feed('lifef')")
    assert pg.execute("SELECT pgcdc.drop_feed('lifef', if_exists => true)") == [(False,)]
    # The name is free again at once.
    pg.execute(f"SELECT pgcdc.create_feed('lifef', publication => '{pub}')")
    pg.execute("SELECT pgcdc.drop_feed('lifef')")


def test_rolled_back_create_feed_leaves_nothing(pg):
    pub = setup_table(pg, "rb_t")
    with pg.connect(autocommit=False) as conn:
        conn.execute(f"SELECT pgcdc.create_feed('rbf', publication => '{pub}')")
        conn.rollback()
    assert pg.execute("SELECT count(*) FROM pgcdc.feed WHERE name = 'rbf'") == [(0,)]
    wait_until(lambda: slot(pg, "pgcdc_rbf") is None, 15, "the launcher to drop the orphaned slot")


def test_worker_restart_stages_nothing_twice(pg):
    """Terminate the worker and its walsender mid-stream: no event twice, none lost."""
    pub = setup_table(pg, "wr_t")
    pg.execute(f"SELECT pgcdc.create_feed('wrf', publication => '{pub}', options => '{{\"snapshot.mode\": \"no_data\"}}')")
    total = 3000
    done = threading.Event()

    def writer():
        insert_rows(pg, "wr_t", range(1, total + 1), per_tx=25)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    acked_id = 0
    try:
        for round_ in range(3):
            collect(pg, "wrf", 100, timeout=60)
            pid = wait_until(lambda: status(pg, "wrf")["worker_pid"], 20, "a worker")
            pg.execute("SELECT pg_terminate_backend(%s)", params=[pid])
            wait_until(lambda: status(pg, "wrf")["worker_pid"] not in (None, pid), 20, "a new worker")
            if round_ == 1:
                # The walsender too: the worker reconnects and skips what it staged already.
                for (wpid,) in pg.execute(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'pgcdc_wrf'"
                ):
                    if wpid:
                        pg.execute("SELECT pg_terminate_backend(%s)", params=[wpid])
            # Acknowledge a prefix that ends inside a transaction.
            evs = read_events(pg, "wrf", limit=60)
            last = evs[-1]
            pg.execute("SELECT pgcdc.ack('wrf', %s, %s)", params=[last["commit_lsn"], last["ordinal"]])
            acked_id = event_json(last)["after"]["id"]
    finally:
        t.join()
    assert done.is_set()
    # Single writer, ascending ids: the stream is ids 1..total in order; the acknowledged
    # prefix is 1..acked_id, so exactly acked_id+1..total must be staged, once each.
    want = list(range(acked_id + 1, total + 1))
    evs = collect(pg, "wrf", len(want), timeout=90)
    time.sleep(1.0)  # anything staged twice would show up now
    evs = read_events(pg, "wrf")
    assert ids_of(evs) == want
    pg.execute("SELECT pgcdc.drop_feed('wrf')")


# ------------------------------------------------------------------- backpressure


def test_bounded_queue_stops_reading_and_retains_wal(pg):
    pub = setup_table(pg, "cap_t")
    pg.execute(
        f"SELECT pgcdc.create_feed('capf', publication => '{pub}', "
        "options => '{\"max_staged_rows\": 100, \"batch_size\": 50}')"
    )
    insert_rows(pg, "cap_t", range(1, 1001), per_tx=10)
    wait_until(lambda: status(pg, "capf")["phase"] == "at_cap", 30, "the feed to reach its cap")
    st = status(pg, "capf")
    assert 100 <= st["staged_events"] < 200, st
    time.sleep(1.0)
    assert status(pg, "capf")["staged_events"] == st["staged_events"], "no growth at the cap"
    assert st["retained_bytes"] > 0 and st["lag_bytes"] > 0
    # Consume everything, acknowledging as we go: the feed resumes and delivers all of it.
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while len(seen) < 1000 and time.monotonic() < deadline:
        evs = read_events(pg, "capf", limit=500)
        if not evs:
            time.sleep(0.05)
            continue
        seen += ids_of(evs)
        pg.execute("SELECT pgcdc.ack('capf', %s, %s)", params=[evs[-1]["commit_lsn"], evs[-1]["ordinal"]])
    assert seen == list(range(1, 1001))
    wait_until(lambda: status(pg, "capf")["phase"] == "streaming", 10, "the feed to leave the cap")
    pg.execute("SELECT pgcdc.drop_feed('capf')")


# ------------------------------------------------------------------- errors in a feed


def test_dropped_publication_puts_the_feed_in_error_state(pg):
    pub = setup_table(pg, "err_t")
    pg.execute(f"SELECT pgcdc.create_feed('errf', publication => '{pub}')")
    insert_rows(pg, "err_t", [1])
    collect(pg, "errf", 1)
    pg.execute(f"DROP PUBLICATION {pub}")
    insert_rows(pg, "err_t", [2])
    # (the worker records the error, then exits: wait for both)
    st = wait_until(
        lambda: (lambda s: s if s["state"] == "error" and s["worker_pid"] is None else None)(status(pg, "errf")),
        30,
        "error state and the worker gone",
    )
    assert "publication" in st["last_error"], st
    if pg_major() >= 18:
        # 18's walsender skips what it cannot decode; the worker notices the drop itself.
        assert "skips the changes" in st["last_error"] and "resume_feed" in st["last_error"], st
    else:
        assert "pg_replication_slot_advance" in st["last_error"], "the error says how to recover"
    # No crash loop: it stays stopped.
    time.sleep(2.0)
    st2 = status(pg, "errf")
    assert st2["state"] == "error" and st2["worker_pid"] is None
    # The documented recovery: re-create the publication, skip the WAL written without it
    # (PostgreSQL cannot decode it), resume. Changes after that are delivered.
    pg.execute(f"CREATE PUBLICATION {pub} FOR TABLE err_t")
    skip_to = pg.execute("SELECT pg_current_wal_lsn()::text")[0][0]
    pg.execute("SELECT pg_replication_slot_advance('pgcdc_errf', %s)", params=[skip_to])
    pg.execute("SELECT pgcdc.resume_feed('errf')")
    st3 = wait_until(lambda: (lambda s: s if s["worker_pid"] else None)(status(pg, "errf")), 30, "a worker")
    assert st3["state"] == "running" and st3["last_error"] is None
    insert_rows(pg, "err_t", [3])
    assert ids_of(collect(pg, "errf", 2)) == [1, 3]
    pg.execute("SELECT pgcdc.drop_feed('errf')")


def test_dropped_slot_puts_the_feed_in_error_state(pg):
    pub = setup_table(pg, "slot_t")
    pg.execute(f"SELECT pgcdc.create_feed('slotf', publication => '{pub}')")
    # Pause a running worker: pausing before it started could let it take the slot
    # between the pause and the drop.
    wait_until(lambda: slot(pg, "pgcdc_slotf")["active"], 30, "the worker to take the slot")
    pg.execute("SELECT pgcdc.pause_feed('slotf')")
    wait_until(lambda: status(pg, "slotf")["worker_pid"] is None, 15, "the worker to exit")
    wait_until(lambda: not slot(pg, "pgcdc_slotf")["active"], 15, "the slot to be released")
    pg.execute("SELECT pg_drop_replication_slot('pgcdc_slotf')")
    pg.execute("SELECT pgcdc.resume_feed('slotf')")
    st = wait_until(
        lambda: (lambda s: s if s["state"] == "error" else None)(status(pg, "slotf")), 30, "error state"
    )
    assert "does not exist" in st["last_error"], st
    pg.execute("SELECT pgcdc.drop_feed('slotf')")


# ------------------------------------------------------------------- sinks and wake-ups


def test_table_sink_wakes_listeners(pg):
    pub = setup_table(pg, "wake_t")
    pg.execute(f"SELECT pgcdc.create_feed('wakef', publication => '{pub}')")
    channel = pg.execute("SELECT channel FROM pgcdc.feeds WHERE name = 'wakef'")[0][0]
    assert channel == "pgcdc_wakef"
    with pg.connect() as listener:
        listener.execute(f"LISTEN {channel}")
        insert_rows(pg, "wake_t", [1, 2], per_tx=2)
        wait_until(lambda: len(read_events(pg, "wakef")) == 2, 15, "both events staged")
        # One wake-up per staged batch; a transaction may span batches (its changes arrive
        # apart), so every payload names a staged event, in order, the last one the last event.
        payloads = [json.loads(n.payload) for n in listener.notifies(timeout=2)]
    assert payloads, "no wake-up"
    staged = [{"commit_lsn": e["commit_lsn"], "ordinal": e["ordinal"]} for e in read_events(pg, "wakef")]
    assert all(p in staged for p in payloads), (payloads, staged)
    assert payloads == sorted(payloads, key=staged.index), payloads
    assert payloads[-1] == staged[-1], (payloads, staged)
    pg.execute("SELECT pgcdc.drop_feed('wakef')")


def test_the_queue_stores_events_uncompressed_and_big_ones_out_of_line(pg):
    """Events live for moments: pglz on JSON cost the worker most of its time with wide rows.
    An event up to a page stays whole in its row; a bigger one moves out of line as is."""
    pg.execute("CREATE TABLE wide_t (id int PRIMARY KEY, doc text)")
    pg.execute("CREATE PUBLICATION wide_t FOR TABLE wide_t")
    pg.execute("SELECT pgcdc.create_feed('widef', publication => 'wide_t', options => '{\"snapshot.mode\": \"no_data\"}')")
    pg.execute("INSERT INTO wide_t VALUES (1, repeat('a', 3000)), (2, repeat('b', 50000))")
    collect(pg, "widef", 2)
    sizes = pg.execute(
        "SELECT octet_length(e.value), pg_column_size(e.value) FROM pgcdc.event e JOIN pgcdc.feed f "
        "ON f.id = e.feed_id WHERE f.name = 'widef' ORDER BY e.ordinal"
    )
    # Very compressible values, yet stored at full size: inline with its 4-byte header, and
    # out of line as is (pg_column_size is then the stored size).
    assert [stored - length for length, stored in sizes] == [4, 0], sizes
    pg.execute("SELECT pgcdc.drop_feed('widef')")


def test_notify_sink_sends_events_and_stages_big_ones(pg):
    pub = setup_table(pg, "nt_t")
    pg.execute(f"SELECT pgcdc.create_feed('ntf', publication => '{pub}', sink => 'notify')")
    wait_until(lambda: status(pg, "ntf")["worker_pid"], 20, "a worker")
    with pg.connect() as listener:
        listener.execute("LISTEN pgcdc_ntf")
        pg.execute("INSERT INTO nt_t VALUES (1, 'small'), (2, repeat('x', 10000))")
        notes = list(listener.notifies(timeout=10, stop_after=2))
    assert len(notes) == 2
    small, big = (json.loads(n.payload) for n in notes)
    assert small["value"]["after"] == {"id": 1, "v": "small"} and small["op"] == "c"
    assert big["staged"] is True and "value" not in big
    staged = read_events(pg, "ntf")
    assert [(e["commit_lsn"], e["ordinal"]) for e in staged] == [(big["commit_lsn"], big["ordinal"])]
    assert len(event_json(staged[0])["after"]["v"]) == 10000
    # At-most-once: the slot moves on once the NOTIFYs are committed, without acks.
    wait_until(
        lambda: lsn_int(slot(pg, "pgcdc_ntf")["confirmed_flush_lsn"]) > lsn_int(big["commit_lsn"]),
        10,
        "the notify feed's slot to advance",
    )
    pg.execute("SELECT pgcdc.ack('ntf', %s, %s)", params=[big["commit_lsn"], big["ordinal"]])
    pg.execute("SELECT pgcdc.drop_feed('ntf')")


# ------------------------------------------------------------------- options


def test_alter_feed_options_apply_to_new_events(pg):
    pg.execute("CREATE TABLE opt_t (id int PRIMARY KEY, amount numeric(10,2))")
    pg.execute("CREATE PUBLICATION opt_t FOR TABLE opt_t")
    pg.execute("SELECT pgcdc.create_feed('optf', publication => 'opt_t', options => '{\"snapshot.mode\": \"no_data\"}')")
    pg.execute("INSERT INTO opt_t VALUES (1, 12.34)")
    first = collect(pg, "optf", 1)[0]
    assert event_json(first)["after"]["amount"] != "12.34", "precise mode is not a string"
    assert first["topic"] == "optf.public.opt_t", "topic.prefix defaults to the feed name"
    opts = pg.execute(
        "SELECT pgcdc.alter_feed('optf', '{\"decimal.handling.mode\": \"string\", \"topic.prefix\": \"shop\"}')"
    )[0][0]
    assert opts == {"decimal.handling.mode": "string", "topic.prefix": "shop", "snapshot.mode": "no_data"}
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        pg.execute("SELECT pgcdc.alter_feed('optf', '{\"decimal.handling.mode\": \"fancy\"}')")
    assert "precise" in str(e.value) and e.value.diag.message_hint
    time.sleep(1.5)  # the worker restarts to apply the options
    pg.execute("INSERT INTO opt_t VALUES (2, 56.78)")
    second = collect(pg, "optf", 2)[1]
    assert event_json(second)["after"]["amount"] == "56.78"
    assert second["topic"] == "shop.public.opt_t"
    # A JSON null removes an option.
    assert pg.execute("SELECT pgcdc.alter_feed('optf', '{\"topic.prefix\": null}')")[0][0] == {
        "decimal.handling.mode": "string",
        "snapshot.mode": "no_data",
    }
    pg.execute("SELECT pgcdc.drop_feed('optf')")


@pytest.mark.smoke
def test_snapshots_are_refused_where_the_server_cannot_take_them(pg):
    """Snapshot watermarks are logical decoding messages (pgoutput 14+). On 13 a feed starts
    at its creation (snapshot.mode defaults to no_data), and asking for a snapshot is a clear
    error; from 14 on the rows that were there come first, and pgcdc.snapshot takes another."""
    pub = setup_table(pg, "snapv_t")
    insert_rows(pg, "snapv_t", [1, 2, 3], per_tx=3)
    pg.execute(f"SELECT pgcdc.create_feed('snapv', publication => '{pub}')")
    if pg_major() < 14:
        insert_rows(pg, "snapv_t", [4])
        evs = collect(pg, "snapv", 1)
        assert [(e["op"], event_json(e)["after"]["id"]) for e in evs] == [("c", 4)]
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="needs PostgreSQL 14 or later"):
            pg.execute("SELECT pgcdc.snapshot('snapv')")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match='"initial" needs PostgreSQL 14 or later'):
            pg.execute(
                f"SELECT pgcdc.create_feed('snapv2', publication => '{pub}', options => '{{\"snapshot.mode\": \"initial\"}}')"
            )
    else:
        evs = collect(pg, "snapv", 3)
        assert [(e["op"], event_json(e)["after"]["id"]) for e in evs] == [("r", 1), ("r", 2), ("r", 3)]
        insert_rows(pg, "snapv_t", [4])
        pg.execute("SELECT pgcdc.snapshot('snapv')")
        evs = collect(pg, "snapv", 8)
        assert [(e["op"], event_json(e)["after"]["id"]) for e in evs[3:]] == [("c", 4), ("r", 1), ("r", 2), ("r", 3), ("r", 4)]
    pg.execute("SELECT pgcdc.drop_feed('snapv')")


@since_pg(14, NO_MESSAGES_ON_13)
def test_message_prefix_lists_decide_which_logical_messages_a_feed_stages(pg):
    """Logical messages carry no identity: any role that can connect may emit one into every
    feed. A feed's message.prefix.include.list / exclude.list (Debezium's options) keeps only
    the prefixes it expects; a filtered message is never staged."""
    pub = setup_table(pg, "msg_t")
    include = {"message.prefix.include.list": r"outbox,outbox\.audit"}
    pg.execute(
        "SELECT pgcdc.create_feed('msgf', publication => %s, options => %s::jsonb)",
        params=[pub, json.dumps(include)],
    )
    pg.execute("CREATE ROLE msg_intruder")
    with pg.connect() as conn:
        conn.execute("SET ROLE msg_intruder")  # no privilege needed to emit a message
        conn.execute("SELECT pg_logical_emit_message(true, 'evil', 'injected')")
        conn.execute("SELECT pg_logical_emit_message(false, 'outboxes', 'a prefix must match whole')")
    pg.execute("SELECT pg_logical_emit_message(true, 'Outbox', 'kept: prefixes match case-insensitively')")
    pg.execute("SELECT pg_logical_emit_message(false, 'outbox.audit', 'kept, not in a transaction')")
    pg.execute("INSERT INTO msg_t VALUES (1, 'last')")
    evs = collect(pg, "msgf", 3)
    summary = [(e["op"], event_json(e)["message"]["prefix"] if e["op"] == "m" else e["table_name"]) for e in evs]
    assert summary == [("m", "Outbox"), ("m", "outbox.audit"), ("c", "msg_t")], summary
    # Debezium's context headers on the change (a UUIDv7 run id per worker start), none on messages.
    assert [e["headers"] for e in evs[:2]] == [None, None]
    headers = evs[2]["headers"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", headers.pop("__debezium.context.runId"))
    assert headers == {
        "__debezium.context.connectorLogicalName": "msgf",
        "__debezium.context.taskId": "0",
        "__debezium.context.connectorName": "postgresql",
    }
    # Both lists at once is refused with a hint, and the feed keeps its options.
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        pg.execute(
            "SELECT pgcdc.alter_feed('msgf', %s::jsonb)", params=[json.dumps({"message.prefix.exclude.list": "evil"})]
        )
    assert "cannot both be set" in str(e.value) and e.value.diag.message_hint
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        pg.execute(
            "SELECT pgcdc.alter_feed('msgf', %s::jsonb)", params=[json.dumps({"message.prefix.include.list": "(x"})]
        )
    assert "invalid regular expression" in str(e.value)
    assert pg.execute("SELECT options FROM pgcdc.feeds WHERE name = 'msgf'")[0][0] == include
    pg.execute("SELECT pgcdc.drop_feed('msgf')")
    pg.execute("DROP ROLE msg_intruder")


# ------------------------------------------------------------------- privileges


def test_only_owner_and_admins_use_a_feed(pg):
    pub = setup_table(pg, "priv_t")
    pg.execute("CREATE ROLE app_owner LOGIN")
    pg.execute("CREATE ROLE app_other LOGIN")
    pg.execute("CREATE ROLE app_admin LOGIN IN ROLE pgcdc_admin")
    pg.execute("GRANT SELECT ON priv_t TO app_owner, app_admin")
    # Non-admins cannot create feeds (EXECUTE is granted to pgcdc_admin only).
    with psycopg.connect(pg.dsn(user="app_owner"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            conn.execute(f"SELECT pgcdc.create_feed('privf', publication => '{pub}')")
        assert "create_feed" in str(e.value)
    # The owner must be able to read the published tables.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        pg.execute(f"SELECT pgcdc.create_feed('privf', publication => '{pub}', owner => 'app_other', options => '{{\"snapshot.mode\": \"no_data\"}}')")
    with psycopg.connect(pg.dsn(user="app_admin"), autocommit=True) as conn:
        conn.execute(f"SELECT pgcdc.create_feed('privf', publication => '{pub}', owner => 'app_owner', options => '{{\"snapshot.mode\": \"no_data\"}}')")
    insert_rows(pg, "priv_t", [1])
    collect(pg, "privf", 1)
    with psycopg.connect(pg.dsn(user="app_owner"), autocommit=True) as conn:
        evs = conn.execute("SELECT commit_lsn, ordinal FROM pgcdc.read('privf')").fetchall()
        assert len(evs) == 1
        assert conn.execute("SELECT count(*) FROM pgcdc.feed_status").fetchone() == (1,)
    with psycopg.connect(pg.dsn(user="app_other"), autocommit=True) as conn:
        for sql in (
            "SELECT * FROM pgcdc.read('privf')",
            "SELECT pgcdc.ack('privf', '0/1')",
            "SELECT pgcdc.drop_feed('privf')",
            "SELECT pgcdc.pause_feed('privf')",
            "SELECT * FROM pgcdc.event",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
        assert conn.execute("SELECT count(*) FROM pgcdc.feed_status").fetchone() == (0,)
    # Revoking SELECT on a published table revokes reading.
    pg.execute("REVOKE SELECT ON priv_t FROM app_owner")
    with psycopg.connect(pg.dsn(user="app_owner"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM pgcdc.read('privf')")
        conn.execute("SELECT pgcdc.ack('privf', %s, %s)", evs[0])
        conn.execute("SELECT pgcdc.drop_feed('privf')")


def test_only_superusers_create_notify_feeds(pg):
    """NOTIFY payloads carry rows and LISTEN checks no privilege: pgcdc_admin is not enough."""
    pub = setup_table(pg, "ns_t")
    pg.execute("CREATE ROLE ns_admin LOGIN IN ROLE pgcdc_admin")
    pg.execute("GRANT SELECT ON ns_t TO ns_admin")
    with psycopg.connect(pg.dsn(user="ns_admin"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            conn.execute(f"SELECT pgcdc.create_feed('nsf', publication => '{pub}', sink => 'notify')")
        assert "LISTEN" in e.value.diag.message_detail
        assert "sink => 'table'" in e.value.diag.message_hint
        # The table sink is fine for administrators.
        conn.execute(f"SELECT pgcdc.create_feed('nsf', publication => '{pub}')")
        conn.execute("SELECT pgcdc.drop_feed('nsf')")
    assert pg.execute("SELECT count(*) FROM pgcdc.feed WHERE name = 'nsf'") == [(0,)]


# ------------------------------------------------------------------- security


def test_a_shadowing_operator_never_runs_with_pgcdc_privileges(pg):
    """Any role can put an operator in its search_path; pgcdc's functions (which run SQL as
    the superuser owning the extension) must never use it."""
    pub = setup_table(pg, "mal_t")
    other = setup_table(pg, "mal_other_t")
    pg.execute("CREATE ROLE mallory LOGIN")
    pg.execute("GRANT SELECT ON mal_t TO mallory")
    pg.execute("GRANT CREATE ON DATABASE postgres TO mallory")
    pg.execute(f"SELECT pgcdc.create_feed('malf', publication => '{pub}', owner => 'mallory')")
    pg.execute(f"SELECT pgcdc.create_feed('mal_otherf', publication => '{other}')")
    insert_rows(pg, "mal_t", [1, 2], per_tx=2)
    evs = collect(pg, "malf", 2)
    with psycopg.connect(pg.dsn(user="mallory"), autocommit=True) as conn:
        install_trap(conn.execute, "evil")
        conn.execute("SET search_path = evil, pg_catalog, public")
        conn.execute("SELECT 'a'::text = 'a'::text")  # the trap works for mallory's own SQL
        assert len(conn.execute("SELECT * FROM pgcdc.read('malf')").fetchall()) == 2
        conn.execute("SELECT pgcdc.ack('malf', %s, %s)", [evs[0]["commit_lsn"], evs[0]["ordinal"]])
        conn.execute("SELECT pgcdc.alter_feed('malf', '{\"batch_size\": 100}')")
        conn.execute("SELECT pgcdc.pause_feed('malf')")
        conn.execute("SELECT pgcdc.resume_feed('malf')")
        conn.execute("SELECT count(*) FROM pgcdc.feed_status").fetchone()
        for sql in ("SELECT * FROM pgcdc.read('mal_otherf')", "SELECT pgcdc.drop_feed('mal_otherf')",
                    "SELECT pgcdc.ack('mal_otherf', '0/1')", "SELECT * FROM pgcdc.read('no_such_feed')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
        conn.execute("SELECT pgcdc.drop_feed('no_such_feed', if_exists => true)")
        conn.execute("SELECT pgcdc.drop_feed('malf')")
    fired = pg.execute("SELECT who, backend, count(*) FROM evil.fired GROUP BY 1, 2 ORDER BY 1, 2")
    assert fired == [("mallory", "client backend", 1)], "only mallory's own comparison used the trap"
    pg.execute("SELECT pgcdc.drop_feed('mal_otherf')")
    pg.execute("DROP SCHEMA evil CASCADE")


def test_read_needs_select_on_every_returned_table_and_no_row_security(pg):
    pg.execute("CREATE TABLE rd_a (id int PRIMARY KEY, v text)")
    pg.execute("CREATE TABLE rd_b (id int PRIMARY KEY, v text)")
    pg.execute("CREATE PUBLICATION rd_p FOR TABLE rd_a, rd_b")
    pg.execute("CREATE ROLE rd_reader LOGIN")
    pg.execute("GRANT SELECT ON rd_a, rd_b TO rd_reader")
    pg.execute("SELECT pgcdc.create_feed('rdf', publication => 'rd_p', owner => 'rd_reader', options => '{\"snapshot.mode\": \"no_data\"}')")
    insert_rows(pg, "rd_b", [1])
    collect(pg, "rdf", 1)

    def reader_read():
        with psycopg.connect(pg.dsn(user="rd_reader"), autocommit=True) as conn:
            return conn.execute("SELECT * FROM pgcdc.read('rdf')").fetchall()

    assert len(reader_read()) == 1
    # rd_b leaves the publication and the reader loses SELECT on it: its staged event must
    # stay hidden although every table the publication publishes now is readable.
    pg.execute("ALTER PUBLICATION rd_p DROP TABLE rd_b")
    pg.execute("REVOKE SELECT ON rd_b FROM rd_reader")
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
        reader_read()
    assert "rd_b" in str(e.value)
    pg.execute("GRANT SELECT ON rd_b TO rd_reader")
    assert len(reader_read()) == 1

    # Row-level security on a published table: events cannot be filtered by policies.
    pg.execute("ALTER TABLE rd_a ENABLE ROW LEVEL SECURITY")
    pg.execute("CREATE POLICY rd_a_none ON rd_a USING (id < 0)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
        reader_read()
    assert "row-level security" in str(e.value) and "rd_a" in str(e.value)
    assert "BYPASSRLS" in e.value.diag.message_hint
    pg.execute("ALTER ROLE rd_reader BYPASSRLS")
    assert len(reader_read()) == 1
    assert len(read_events(pg, "rdf")) == 1, "superusers read anyway"
    pg.execute("SELECT pgcdc.drop_feed('rdf')")


def test_user_slots_named_like_feed_slots_are_never_dropped(pg):
    """Only slots pgcdc created are garbage-collected, whatever the name."""
    pub = setup_table(pg, "us_t")
    pg.execute("SELECT pg_create_logical_replication_slot('pgcdc_userslot', 'pgoutput')")
    try:
        time.sleep(2.0)  # four launcher intervals
        assert slot(pg, "pgcdc_userslot") is not None
        with pytest.raises(psycopg.errors.DuplicateObject) as e:
            pg.execute(f"SELECT pgcdc.create_feed('userslot', publication => '{pub}')")
        assert "not created by pgcdc" in str(e.value)
        assert slot(pg, "pgcdc_userslot") is not None
    finally:
        pg.execute("SELECT pg_drop_replication_slot('pgcdc_userslot')")
    # The feed's own slot is still collected after drop_feed.
    pg.execute(f"SELECT pgcdc.create_feed('userslot', publication => '{pub}')")
    pg.execute("SELECT pgcdc.drop_feed('userslot')")
    wait_until(lambda: slot(pg, "pgcdc_userslot") is None, 15, "the launcher to drop the feed's slot")


# ------------------------------------------------------------------- robustness


def test_publication_names_keep_their_case(pg):
    pg.execute("CREATE TABLE mixed_t (id int PRIMARY KEY, v text)")
    pg.execute('CREATE PUBLICATION "Mixed Case" FOR TABLE mixed_t')
    pg.execute("SELECT pgcdc.create_feed('mixedf', publication => 'Mixed Case')")
    insert_rows(pg, "mixed_t", [1, 2], per_tx=2)
    assert ids_of(collect(pg, "mixedf", 2)) == [1, 2]
    pg.execute("SELECT pgcdc.drop_feed('mixedf')")


def test_acks_seen_through_a_for_all_tables_publication_do_not_pin_the_slot(pg):
    """Every ack updates pgcdc.feed, which FOR ALL TABLES publishes: those transactions carry
    no event and must not hold the slot back."""
    pg.execute("CREATE TABLE fat_t (id int PRIMARY KEY, v text)")
    pg.execute("CREATE PUBLICATION fat_p FOR ALL TABLES")
    try:
        pg.execute("SELECT pgcdc.create_feed('fatf', publication => 'fat_p', options => '{\"snapshot.mode\": \"no_data\"}')")
        for round_ in range(3):
            insert_rows(pg, "fat_t", [round_])
            evs = collect(pg, "fatf", 1)
            assert {(e["schema_name"], e["table_name"]) for e in evs} == {("public", "fat_t")}, evs
            pg.execute("SELECT pgcdc.ack('fatf', %s)", params=[evs[-1]["commit_lsn"]])
            target = lsn_int(pg.execute("SELECT pg_current_wal_lsn()")[0][0])
            wait_until(
                lambda: lsn_int(slot(pg, "pgcdc_fatf")["confirmed_flush_lsn"]) >= target,
                15,
                "confirmed_flush_lsn past the acknowledgement",
            )
            assert read_events(pg, "fatf") == [], "pgcdc's own tables are never staged"
        pg.execute("SELECT pgcdc.drop_feed('fatf')")
    finally:
        pg.execute("DROP PUBLICATION fat_p")


def test_transactions_whose_changes_are_all_skipped_do_not_pin_the_slot(pg):
    pub = setup_table(pg, "skip_t")
    pg.execute(
        f"SELECT pgcdc.create_feed('skipf', publication => '{pub}', options => '{{\"skipped.operations\": \"c\"}}')"
    )
    wait_until(lambda: status(pg, "skipf")["worker_pid"], 20, "a worker")
    insert_rows(pg, "skip_t", range(1, 51), per_tx=5)
    target = lsn_int(pg.execute("SELECT pg_current_wal_lsn()")[0][0])
    wait_until(
        lambda: lsn_int(slot(pg, "pgcdc_skipf")["confirmed_flush_lsn"]) >= target,
        15,
        "confirmed_flush_lsn past the skipped transactions",
    )
    pg.execute("UPDATE skip_t SET v = 'u' WHERE id = 1")
    evs = collect(pg, "skipf", 1)
    assert [e["op"] for e in evs] == ["u"]
    pg.execute("SELECT pgcdc.drop_feed('skipf')")


def test_an_event_too_big_to_stage_stops_the_feed_with_a_clear_error(pg):
    pub = setup_table(pg, "big_t")
    pg.execute("ALTER SYSTEM SET pgcdc.max_event_size = '64kB'")
    pg.execute("SELECT pg_reload_conf()")
    try:
        pg.execute(f"SELECT pgcdc.create_feed('bigf', publication => '{pub}', options => '{{\"snapshot.mode\": \"no_data\"}}')")
        insert_rows(pg, "big_t", [1])
        collect(pg, "bigf", 1)
        pg.execute("INSERT INTO big_t VALUES (2, repeat('x', 100000))")
        st = wait_until(lambda: (lambda s: s if s["state"] == "error" else None)(status(pg, "bigf")), 30, "error")
        err = st["last_error"]
        assert "pgcdc.max_event_size" in err and "public.big_t" in err, err
        # No restart loop: the feed stays stopped.
        time.sleep(2.0)
        st = status(pg, "bigf")
        assert st["state"] == "error" and st["worker_pid"] is None
        # The way on the message gives: skip that transaction, resume.
        m = re.search(r"pg_replication_slot_advance\('pgcdc_bigf', '([0-9A-F]+/[0-9A-F]+)'\)", err)
        assert m, err
        wait_until(lambda: not slot(pg, "pgcdc_bigf")["active"], 15, "the slot to be released")
        pg.execute("SELECT pg_replication_slot_advance('pgcdc_bigf', %s)", params=[m.group(1)])
        pg.execute("SELECT pgcdc.resume_feed('bigf')")
        insert_rows(pg, "big_t", [3])
        assert ids_of(collect(pg, "bigf", 2)) == [1, 3]
        pg.execute("SELECT pgcdc.drop_feed('bigf')")
    finally:
        pg.execute("ALTER SYSTEM RESET pgcdc.max_event_size")
        pg.execute("SELECT pg_reload_conf()")


def test_read_returns_at_most_a_byte_budget_but_always_one_event(pg):
    pub = setup_table(pg, "budget_t")
    pg.execute(f"SELECT pgcdc.create_feed('budgetf', publication => '{pub}')")
    size = 17 << 20  # four events pass the 64 MB budget
    for i in range(1, 6):
        pg.execute("INSERT INTO budget_t VALUES (%s, repeat('x', %s))", params=[i, size])
    wait_until(lambda: status(pg, "budgetf")["staged_events"] == 5, 120, "five big events staged")
    with pg.connect() as conn:
        first = conn.execute("SELECT commit_lsn::text, ordinal FROM pgcdc.read('budgetf', 100)").fetchall()
        assert len(first) == 4, "the read stops once 64 MB are reached"
        rest = conn.execute(
            "SELECT commit_lsn::text, ordinal FROM pgcdc.read('budgetf', 100, %s, %s)", first[-1]
        ).fetchall()
        assert len(rest) == 1
    pg.execute("SELECT pgcdc.drop_feed('budgetf')")


def test_dropping_a_feed_while_its_worker_stages_leaves_no_rows(pg):
    pub = setup_table(pg, "race_t")
    stop = threading.Event()

    def writer():
        i = 0
        with pg.connect(autocommit=False) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO race_t SELECT g, 'v' FROM generate_series(%s::int, %s::int) g", [i, i + 19])
                conn.commit()
                i += 20

    t = threading.Thread(target=writer)
    t.start()
    try:
        ids = []
        for round_ in range(5):
            pg.execute(f"SELECT pgcdc.create_feed('racef', publication => '{pub}', options => '{{\"batch_size\": 50}}')")
            ids.append(pg.execute("SELECT id FROM pgcdc.feed WHERE name = 'racef'")[0][0])
            wait_until(lambda: status(pg, "racef")["staged_events"] > 100, 30, "the worker to stage")
            pg.execute("SELECT pgcdc.drop_feed('racef')")
            wait_until(lambda: slot(pg, "pgcdc_racef") is None, 15, "the slot to be dropped")
    finally:
        stop.set()
        t.join()
    time.sleep(1.0)
    left = pg.execute(
        "SELECT (SELECT count(*) FROM pgcdc.event WHERE feed_id = ANY(%s)),"
        " (SELECT count(*) FROM pgcdc.feed_runtime WHERE feed_id = ANY(%s))",
        params=[ids, ids],
    )
    assert left == [(0, 0)]


def test_replication_with_a_scram_password():
    """pgcdc.replication_conninfo with a password: SCRAM works, a wrong password is a clear,
    permanent feed error."""
    c = start_cluster("pgcdc-scram", password_encryption="scram-sha-256")
    try:
        c.execute("CREATE ROLE repl LOGIN REPLICATION PASSWORD 'secret'")
        hba = c.datadir / "pg_hba.conf"
        # A logical replication connection names a database: "replication" does not match it.
        hba.write_text("host all repl 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        c.execute(f"ALTER SYSTEM SET pgcdc.replication_conninfo = 'host=127.0.0.1 port={c.port} user=repl password=secret'")
        c.execute("SELECT pg_reload_conf()")
        c.execute("CREATE TABLE pw_t (id int PRIMARY KEY, v text)")
        c.execute("CREATE PUBLICATION pw_p FOR TABLE pw_t")
        c.execute("SELECT pgcdc.create_feed('pwf', publication => 'pw_p')")
        insert_rows(c, "pw_t", [1, 2], per_tx=2)
        assert ids_of(collect(c, "pwf", 2)) == [1, 2]
        assert c.execute("SELECT usename FROM pg_stat_replication WHERE application_name = 'pgcdc feed pwf'") == [
            ("repl",)
        ]
        c.execute(f"ALTER SYSTEM SET pgcdc.replication_conninfo = 'host=127.0.0.1 port={c.port} user=repl password=wrong'")
        c.execute("SELECT pg_reload_conf()")
        c.execute("SELECT pgcdc.pause_feed('pwf')")
        wait_until(lambda: status(c, "pwf")["worker_pid"] is None, 15, "the worker to stop")
        c.execute("SELECT pgcdc.resume_feed('pwf')")
        st = wait_until(lambda: (lambda s: s if s["state"] == "error" else None)(status(c, "pwf")), 30, "error")
        assert "password" in st["last_error"], st
    finally:
        c.stop()


def test_replication_conninfo_is_a_libpq_connection_string():
    """pgcdc.replication_conninfo is parsed as libpq does: quoted values with spaces, escaped
    quotes and backslashes, the URL form; one it cannot parse is a clear feed error."""
    c = start_cluster("pgcdc-conninfo", password_encryption="scram-sha-256")
    password = "a b'c\\d"  # a b'c\d
    try:
        def formatted(template: str, *args: str) -> None:
            # Utility statements take no parameters: let the server quote the values.
            c.execute(c.execute(f"SELECT pg_catalog.format(%s{', %s::text' * len(args)})", params=[template, *args])[0][0])

        formatted("CREATE ROLE %I LOGIN REPLICATION PASSWORD %L", "repl user", password)
        hba = c.datadir / "pg_hba.conf"
        hba.write_text('host all "repl user" 127.0.0.1/32 scram-sha-256\n' + hba.read_text())
        c.execute("SELECT pg_reload_conf()")
        c.execute("CREATE TABLE ci_t (id int PRIMARY KEY, v text)")
        c.execute("CREATE PUBLICATION ci_p FOR TABLE ci_t")
        c.execute("GRANT SELECT ON ci_t TO \"repl user\"")
        escaped = password.replace("\\", "\\\\").replace("'", "\\'")
        keyword_form = f"host=127.0.0.1 port={c.port} user='repl user' password='{escaped}'"
        url_form = f"postgresql://repl%20user:{urllib.parse.quote(password, safe='')}@127.0.0.1:{c.port}"

        def use(conninfo: str) -> None:
            formatted("ALTER SYSTEM SET pgcdc.replication_conninfo = %L", conninfo)
            c.execute("SELECT pg_reload_conf()")

        use(keyword_form)
        c.execute("SELECT pgcdc.create_feed('cif', publication => 'ci_p', options => '{\"snapshot.mode\": \"no_data\"}')")
        insert_rows(c, "ci_t", [1, 2], per_tx=2)
        assert ids_of(collect(c, "cif", 2)) == [1, 2]
        assert c.execute("SELECT usename FROM pg_stat_replication WHERE application_name = 'pgcdc feed cif'") == [
            ("repl user",)
        ]

        def restart_feed() -> None:
            c.execute("SELECT pgcdc.pause_feed('cif')")
            wait_until(lambda: status(c, "cif")["worker_pid"] is None, 15, "the worker to stop")
            c.execute("SELECT pgcdc.resume_feed('cif')")

        use(url_form)
        restart_feed()
        insert_rows(c, "ci_t", [3], per_tx=1)
        assert 3 in ids_of(collect(c, "cif", 3))

        use(f"host=127.0.0.1 port={c.port} password='unterminated")
        restart_feed()
        st = wait_until(lambda: (lambda s: s if s["state"] == "error" else None)(status(c, "cif")), 30, "error")
        assert "pgcdc.replication_conninfo" in st["last_error"], st
    finally:
        c.stop()


def test_altering_the_queue_table_while_a_feed_runs_keeps_events_and_indexes_right():
    """The direct staging path re-checks pgcdc.event before every batch: added columns,
    indexes (plain or not) and changed column types never crash or corrupt anything."""
    c = start_cluster("pgcdc-alterq")
    try:
        c.execute("CREATE EXTENSION amcheck")
        c.execute("CREATE TABLE aq_t (id int PRIMARY KEY, v text)")
        c.execute("CREATE PUBLICATION aq_p FOR TABLE aq_t")
        c.execute("SELECT pgcdc.create_feed('aqf', publication => 'aq_p')")
        postmaster = c.postmaster_pid()
        steps = [
            None,
            "CREATE INDEX event_by_feed ON pgcdc.event (feed_id)",
            "ALTER TABLE pgcdc.event ADD COLUMN note text",
            "CREATE INDEX event_expr ON pgcdc.event ((length(value)))",
            "ALTER TABLE pgcdc.event ALTER COLUMN topic TYPE varchar(200)",
            "DROP INDEX pgcdc.event_expr",
        ]
        for i, ddl in enumerate(steps):
            if ddl:
                c.execute(ddl)
            insert_rows(c, "aq_t", range(i * 100 + 1, i * 100 + 101), per_tx=10)
            evs = collect(c, "aqf", (i + 1) * 100)
            assert ids_of(evs) == list(range(1, (i + 1) * 100 + 1)), ddl
        # Every index holds every row (heapallindexed), and nothing crashed.
        for (index,) in c.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'pgcdc.event'::regclass"
        ):
            c.execute("SELECT bt_index_check(%s::regclass, true)", params=[index])
        assert c.postmaster_pid() == postmaster
        assert "terminated by signal" not in c.log_tail(10000)
    finally:
        c.stop()


def test_feeds_need_a_utf8_database():
    c = start_cluster("pgcdc-latin1", **{"pgcdc.database": "latin"})
    try:
        c.execute("CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        with c.connect(dbname="latin") as conn:
            conn.execute("CREATE EXTENSION pgcdc")
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            conn.execute("CREATE PUBLICATION p FOR TABLE t")
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                conn.execute("SELECT pgcdc.create_feed('latinf', 'p')")
            assert "UTF8" in str(e.value) and "LATIN1" in str(e.value)
            assert "ENCODING 'UTF8'" in e.value.diag.message_hint
            assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
    finally:
        c.stop()


# ------------------------------------------------------------------- misuse and catalog versions


def test_events_of_a_dropped_table_stay_hidden_from_a_new_table_of_its_name(pg):
    """read checks privileges by relation OID: a table created later under the same name
    (and SELECT granted on it) grants nothing on the dropped table's events."""
    pg.execute("CREATE TABLE dd_t (id int PRIMARY KEY, secret text)")
    pg.execute("CREATE PUBLICATION dd_p FOR TABLE dd_t")
    pg.execute("CREATE ROLE dd_reader LOGIN IN ROLE pgcdc_admin")
    pg.execute("GRANT SELECT ON dd_t TO dd_reader")
    pg.execute("SELECT pgcdc.create_feed('ddf', publication => 'dd_p', options => '{\"snapshot.mode\": \"no_data\"}')")
    insert_rows(pg, "dd_t", [1])
    old = collect(pg, "ddf", 1)

    def reader(sql: str, *params):
        with psycopg.connect(pg.dsn(user="dd_reader"), autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    assert len(reader("SELECT * FROM pgcdc.read('ddf')")) == 1
    pg.execute("DROP TABLE dd_t")
    pg.execute("CREATE TABLE dd_t (id int PRIMARY KEY, secret text)")
    pg.execute("GRANT SELECT ON dd_t TO dd_reader")
    pg.execute("ALTER PUBLICATION dd_p ADD TABLE dd_t")
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
        reader("SELECT * FROM pgcdc.read('ddf')")
    assert "public.dd_t" in str(e.value) and "dropped" in str(e.value)
    assert "superuser" in e.value.diag.message_hint
    assert len(read_events(pg, "ddf")) == 1, "a superuser still reads them"
    # The reader can acknowledge past them, then reads the new table's events.
    reader("SELECT pgcdc.ack('ddf', %s, %s)", old[0]["commit_lsn"], old[0]["ordinal"])
    insert_rows(pg, "dd_t", [2])
    collect(pg, "ddf", 1)
    assert [json.loads(r[0])["after"]["id"] for r in reader("SELECT event::text FROM pgcdc.read('ddf')")] == [2]
    # A renamed table is the same table: its events stay readable to those who may read it.
    pg.execute("ALTER TABLE dd_t RENAME TO dd_renamed")
    assert len(reader("SELECT * FROM pgcdc.read('ddf')")) == 1
    pg.execute("SELECT pgcdc.drop_feed('ddf')")


def test_ack_refuses_positions_this_feed_never_staged(pg):
    """An event of another feed (or a computed position) would acknowledge events nobody read."""
    for t in ("as_a", "as_b"):
        setup_table(pg, t)
        pg.execute(f"SELECT pgcdc.create_feed('{t}f', publication => '{t}', options => '{{\"snapshot.mode\": \"no_data\"}}')")
    insert_rows(pg, "as_a", [1])
    insert_rows(pg, "as_b", [1])
    insert_rows(pg, "as_a", [2])
    a = collect(pg, "as_af", 2)
    (b,) = collect(pg, "as_bf", 1)
    assert lsn_int(a[0]["commit_lsn"]) < lsn_int(b["commit_lsn"]) < lsn_int(a[1]["commit_lsn"])
    wait_until(lambda: status(pg, "as_af")["complete_lsn"] == a[1]["commit_lsn"], 10, "a[1] complete")
    refused = [
        ("SELECT pgcdc.ack('as_af', %s, %s)", [b["commit_lsn"], b["ordinal"]]),  # the other feed's event
        ("SELECT pgcdc.ack('as_af', %s)", [b["commit_lsn"]]),  # the other feed's transaction
        ("SELECT pgcdc.ack('as_af', %s, %s)", [a[0]["commit_lsn"], a[0]["ordinal"] + 1]),  # computed
        ("SELECT pgcdc.ack('as_af', %s, %s)", [a[1]["commit_lsn"], a[1]["ordinal"] + 3]),  # computed, complete tx
    ]
    for sql, params in refused:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            pg.execute(sql, params=params)
        assert "this feed" in e.value.diag.message_hint, (sql, params, e.value)
    assert [(e["commit_lsn"], e["ordinal"]) for e in read_events(pg, "as_af")] == [
        (e["commit_lsn"], e["ordinal"]) for e in a
    ], "nothing was removed"
    assert status(pg, "as_af")["acked_lsn"] == "0/0"
    # Its own positions are fine, by position and by transaction.
    assert pg.execute("SELECT pgcdc.ack('as_af', %s, %s)", params=[a[0]["commit_lsn"], a[0]["ordinal"]]) == [(1,)]
    assert pg.execute("SELECT pgcdc.ack('as_af', %s)", params=[a[1]["commit_lsn"]]) == [(1,)]
    assert pg.execute("SELECT pgcdc.ack('as_af', %s)", params=[a[0]["commit_lsn"]]) == [(0,)], "below: a no-op"
    for t in ("as_a", "as_b"):
        pg.execute(f"SELECT pgcdc.drop_feed('{t}f')")


def test_the_queue_refuses_truncate_and_delete_and_reset_feed_discards_the_backlog(pg):
    pub = setup_table(pg, "tq_t")
    pg.execute(f"SELECT pgcdc.create_feed('tqf', publication => '{pub}')")
    insert_rows(pg, "tq_t", [1, 2, 3])
    collect(pg, "tqf", 3)
    for sql in ("TRUNCATE pgcdc.event", "DELETE FROM pgcdc.event",
                "DELETE FROM pgcdc.event WHERE feed_id = (SELECT id FROM pgcdc.feed WHERE name = 'tqf')"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            pg.execute(sql)
        assert "only pgcdc removes staged events" in str(e.value)
        assert "pgcdc.ack" in e.value.diag.message_hint and "pgcdc.reset_feed" in e.value.diag.message_hint
    with pg.connect() as conn:  # triggers set to ENABLE ALWAYS fire in replica mode too
        conn.execute("SET session_replication_role = replica")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("TRUNCATE pgcdc.event")
    # Nothing was lost, also across a worker restart after a new change.
    insert_rows(pg, "tq_t", [4])
    assert ids_of(collect(pg, "tqf", 4)) == [1, 2, 3, 4]
    pid = status(pg, "tqf")["worker_pid"]
    pg.execute("SELECT pg_terminate_backend(%s)", params=[pid])
    wait_until(lambda: status(pg, "tqf")["worker_pid"] not in (None, pid), 20, "a new worker")
    insert_rows(pg, "tq_t", [5])
    assert ids_of(collect(pg, "tqf", 5)) == [1, 2, 3, 4, 5]
    # reset_feed: the supported way to discard a backlog, staged or not yet staged.
    pg.execute("SELECT pgcdc.pause_feed('tqf')")
    wait_until(lambda: status(pg, "tqf")["worker_pid"] is None, 10, "the worker to stop")
    insert_rows(pg, "tq_t", [6, 7])
    written = lsn_int(pg.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0])
    (reset_to,) = pg.execute("SELECT pgcdc.reset_feed('tqf')::text")[0]
    assert lsn_int(reset_to) >= written
    st = status(pg, "tqf")
    assert read_events(pg, "tqf") == [] and st["staged_events"] == 0 and st["staged_bytes"] == 0, st
    pg.execute("SELECT pgcdc.resume_feed('tqf')")
    insert_rows(pg, "tq_t", [8])
    assert ids_of(collect(pg, "tqf", 1)) == [8]
    time.sleep(1.0)
    assert ids_of(read_events(pg, "tqf")) == [8], "6 and 7 were discarded"
    pg.execute("SELECT pgcdc.drop_feed('tqf')")


def _field(schema: dict, name: str) -> dict:
    return next(f for f in schema["fields"] if f["field"] == name)


def test_catalog_facts_come_from_the_changed_relation_version_not_an_older_snapshot(pg):
    """The worker's staging transaction can begin before a DDL whose Relation message it then
    handles: defaults, new types and the new primary key must still be the DDL's."""
    pg.execute("CREATE TYPE cv_tone AS ENUM ('low', 'high')")
    pg.execute("CREATE TABLE cv_t (id int PRIMARY KEY, v text, tone cv_tone)")
    pg.execute("CREATE PUBLICATION cv_p FOR TABLE cv_t")
    pg.execute("SELECT pgcdc.create_feed('cvf', publication => 'cv_p', options => '{\"schemas.enable\": true, \"snapshot.mode\": \"no_data\"}')")
    pg.execute("INSERT INTO cv_t VALUES (1, 'a', 'low')")
    first = collect(pg, "cvf", 1)[0]
    assert _field(_field(event_json(first)["schema"], "after"), "tone")["parameters"]["allowed"] == "low,high"
    pid = status(pg, "cvf")["worker_pid"]
    with pg.connect(autocommit=False) as locker:
        # The worker's next staging transaction takes its snapshot, then waits for this lock.
        locker.execute("LOCK TABLE pgcdc.feed IN ACCESS EXCLUSIVE MODE")
        wait_until(
            lambda: pg.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", params=[pid])[0][0],
            10,
            "the worker to wait inside a staging transaction",
        )
        pg.execute("CREATE TYPE cv_mood AS ENUM ('happy', 'sad')")
        pg.execute("ALTER TABLE cv_t ADD COLUMN note text DEFAULT 'n/a', ADD COLUMN mood cv_mood, "
                   "ADD COLUMN code int NOT NULL DEFAULT 7")
        pg.execute("ALTER TABLE cv_t DROP CONSTRAINT cv_t_pkey, ADD PRIMARY KEY (code, id)")
        pg.execute("INSERT INTO cv_t (id, v, tone, mood) VALUES (2, 'b', 'high', 'sad')")
        target = lsn_int(pg.execute("SELECT pg_current_wal_lsn()::text")[0][0])
        wait_until(
            lambda: any(
                lsn_int(r[0]) >= target
                for r in pg.execute(
                    "SELECT sent_lsn::text FROM pg_stat_replication WHERE application_name = 'pgcdc feed cvf'"
                )
            ),
            10,
            "the walsender to send the insert",
        )
        time.sleep(0.5)  # the replication thread hands it to the waiting worker
        locker.rollback()
    ev = collect(pg, "cvf", 2)[1]
    after = _field(event_json(ev)["schema"], "after")
    assert _field(after, "note").get("default") == "n/a", _field(after, "note")
    assert _field(after, "mood")["name"] == "io.debezium.data.Enum", _field(after, "mood")
    assert _field(after, "mood")["parameters"]["allowed"] == "happy,sad"
    assert event_json(ev)["payload"]["after"]["mood"] == "sad"
    key = json.loads(ev["key"]) if isinstance(ev["key"], str) else ev["key"]
    assert key["payload"] == {"code": 7, "id": 2}, key
    # A type keeps its OID through ALTER TYPE ... ADD VALUE: the next version of the table
    # must not use the labels read for the previous one.
    pg.execute("ALTER TYPE cv_tone ADD VALUE 'mid'")
    pg.execute("ALTER TABLE cv_t ADD COLUMN extra int")
    pg.execute("INSERT INTO cv_t (id, v, tone) VALUES (3, 'c', 'mid')")
    ev = collect(pg, "cvf", 3)[2]
    assert _field(_field(event_json(ev)["schema"], "after"), "tone")["parameters"]["allowed"] == "low,high,mid"
    pg.execute("SELECT pgcdc.drop_feed('cvf')")


def test_publication_features_of_each_version_shape_the_events(pg):
    """What the publication publishes is what the feed stages: a partitioned table through
    its root (13+), row filters and column lists (15+), stored generated columns (18+, with
    publish_generated_columns; before 18 they are never sent)."""
    major = pg_major()
    pg.execute("CREATE TABLE pv_parent (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)")
    pg.execute("CREATE TABLE pv_low PARTITION OF pv_parent FOR VALUES FROM (0) TO (100)")
    pg.execute("CREATE TABLE pv_high PARTITION OF pv_parent FOR VALUES FROM (100) TO (1000)")
    pg.execute("CREATE PUBLICATION pv_p FOR TABLE pv_parent WITH (publish_via_partition_root = true)")
    pg.execute("CREATE TABLE pv_gen (id int PRIMARY KEY, v int, doubled int GENERATED ALWAYS AS (v * 2) STORED)")
    if major >= 18:
        pg.execute("CREATE PUBLICATION pv_gen_p FOR TABLE pv_gen WITH (publish_generated_columns = stored)")
    else:
        pg.execute("CREATE PUBLICATION pv_gen_p FOR TABLE pv_gen")
    feeds = ["pvroot", "pvgen"]
    for feed, pub in (("pvroot", "pv_p"), ("pvgen", "pv_gen_p")):
        pg.execute("SELECT pgcdc.create_feed(%s, publication => %s, options => '{\"snapshot.mode\": \"no_data\"}')",
                   params=[feed, pub])
    if major >= 15:
        pg.execute("CREATE TABLE pv_filtered (id int PRIMARY KEY, a text, secret text)")
        pg.execute("CREATE PUBLICATION pv_filtered_p FOR TABLE pv_filtered (id, a) WHERE (id > 10)")
        pg.execute("SELECT pgcdc.create_feed('pvfilter', publication => 'pv_filtered_p', "
                   "options => '{\"snapshot.mode\": \"no_data\"}')")
        feeds.append("pvfilter")
        pg.execute("INSERT INTO pv_filtered VALUES (5, 'no', 's5'), (11, 'yes', 's11'), (12, 'yes', 's12')")
    pg.execute("INSERT INTO pv_parent VALUES (1, 'low'), (150, 'high')")
    pg.execute("INSERT INTO pv_gen (id, v) VALUES (1, 21)")

    root = [event_json(e) for e in collect(pg, "pvroot", 2)]
    assert [(e["source"]["table"], e["after"]["id"]) for e in root] == [("pv_parent", 1), ("pv_parent", 150)]
    gen = event_json(collect(pg, "pvgen", 1)[0])
    if major >= 18:
        assert gen["after"] == {"id": 1, "v": 21, "doubled": 42}, gen
    else:
        assert gen["after"] == {"id": 1, "v": 21}, gen
    if major >= 15:
        filtered = [event_json(e)["after"] for e in collect(pg, "pvfilter", 2)]
        assert filtered == [{"id": 11, "a": "yes"}, {"id": 12, "a": "yes"}], filtered
    for feed in feeds:
        pg.execute("SELECT pgcdc.drop_feed(%s)", params=[feed])
