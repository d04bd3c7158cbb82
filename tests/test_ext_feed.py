"""End to end: the pgcdc extension in a throwaway cluster (feeds, workers, acks, faults).

Each test uses its own feed, tables and publication in one cluster per module; the tests
that restart or crash the server have their own clusters (test_ext_crash.py).
"""

from __future__ import annotations

import json
import os
import re
import select
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from ext_support import (
    REPO,
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


def shared_dir() -> Path:
    env = os.environ.get("PGCDC_SHARED_DIR")
    return Path(env) if env else REPO.parent / "shared" / "debezium"


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


def test_typematrix_every_table_and_operation_is_delivered(pg):
    sd = shared_dir()
    assert (sd / "typematrix.sql").exists(), f"shared workload not found in {sd} (set PGCDC_SHARED_DIR)"
    # The feed runs in pgcdc.database (postgres): use a schema of its own there.
    db = "postgres"
    pg.execute("DROP PUBLICATION IF EXISTS tm_pub")
    pg.psql("-f", str(sd / "typematrix.sql"), dbname=db)
    pg.execute(
        "SELECT pgcdc.create_feed('tm', publication => 'tm_pub', "
        "options => '{\"skipped.operations\": \"none\"}')"
    )
    pg.execute("SELECT pg_create_logical_replication_slot('tm_reference', 'test_decoding')")
    try:
        pg.psql("-f", str(sd / "typematrix_dml.sql"), dbname=db)
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


def test_ack_advances_confirmed_flush_lsn_only_past_fully_acked_transactions(pg):
    pub = setup_table(pg, "ack_t")
    pg.execute(f"SELECT pgcdc.create_feed('ackf', publication => '{pub}')")
    insert_rows(pg, "ack_t", range(1, 4), per_tx=3)  # T1: 3 events
    insert_rows(pg, "ack_t", range(4, 6), per_tx=2)  # T2: 2 events
    events = collect(pg, "ackf", 5)
    t1, t2 = events[0]["commit_lsn"], events[3]["commit_lsn"]
    assert [e["commit_lsn"] for e in events] == [t1] * 3 + [t2] * 2
    start = slot(pg, "pgcdc_ackf")["confirmed_flush_lsn"]
    assert lsn_int(start) <= lsn_int(t1), "nothing acknowledged, nothing confirmed past T1"

    # Part of T1: the slot must not move past T1.
    assert pg.execute("SELECT pgcdc.ack('ackf', %s, 2)", params=[t1]) == [(2,)]
    time.sleep(1.0)
    assert lsn_int(slot(pg, "pgcdc_ackf")["confirmed_flush_lsn"]) <= lsn_int(t1)
    assert [e["ordinal"] for e in read_events(pg, "ackf")] == [3, 1, 2]

    # All of T1 (whole-transaction form): the slot moves past T1's commit, not past T2's.
    assert pg.execute("SELECT pgcdc.ack('ackf', %s)", params=[t1]) == [(1,)]
    wait_until(
        lambda: lsn_int(slot(pg, "pgcdc_ackf")["confirmed_flush_lsn"]) > lsn_int(t1),
        10,
        "confirmed_flush_lsn past T1",
    )
    assert lsn_int(slot(pg, "pgcdc_ackf")["confirmed_flush_lsn"]) <= lsn_int(t2)

    # Everything: confirmed past T2.
    pg.execute("SELECT pgcdc.ack('ackf', %s, 2)", params=[t2])
    wait_until(
        lambda: lsn_int(slot(pg, "pgcdc_ackf")["confirmed_flush_lsn"]) > lsn_int(t2),
        10,
        "confirmed_flush_lsn past T2",
    )
    st = status(pg, "ackf")
    assert st["acked_lsn"] == t2 and st["acked_ordinal"] == 2 and st["staged_events"] == 0
    # Acknowledging again is a no-op; beyond what was delivered is an error.
    assert pg.execute("SELECT pgcdc.ack('ackf', %s, 2)", params=[t2]) == [(0,)]
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        pg.execute("SELECT pgcdc.ack('ackf', 'FF/0', 1)")
    assert "delivered" in str(e.value) and e.value.diag.message_hint
    pg.execute("SELECT pgcdc.drop_feed('ackf')")


def test_idle_published_table_does_not_pin_wal(pg):
    pub = setup_table(pg, "idle_t")
    pg.execute("CREATE TABLE busy_t (id serial PRIMARY KEY, pad text)")
    pg.execute(f"SELECT pgcdc.create_feed('idlef', publication => '{pub}')")
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
    pg.execute(f"SELECT pgcdc.create_feed('wrf', publication => '{pub}')")
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
    st = wait_until(
        lambda: (lambda s: s if s["state"] == "error" else None)(status(pg, "errf")), 30, "error state"
    )
    assert "publication" in st["last_error"] and st["worker_pid"] is None, st
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
    pg.execute("SELECT pgcdc.pause_feed('slotf')")
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
        notes = list(listener.notifies(timeout=10, stop_after=1))
    assert notes, "no wake-up"
    payload = json.loads(notes[0].payload)
    evs = read_events(pg, "wakef")
    assert payload == {"commit_lsn": evs[-1]["commit_lsn"], "ordinal": evs[-1]["ordinal"]}
    pg.execute("SELECT pgcdc.drop_feed('wakef')")


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
    pg.execute("SELECT pgcdc.create_feed('optf', publication => 'opt_t')")
    pg.execute("INSERT INTO opt_t VALUES (1, 12.34)")
    first = collect(pg, "optf", 1)[0]
    assert event_json(first)["after"]["amount"] != "12.34", "precise mode is not a string"
    assert first["topic"] == "optf.public.opt_t", "topic.prefix defaults to the feed name"
    opts = pg.execute(
        "SELECT pgcdc.alter_feed('optf', '{\"decimal.handling.mode\": \"string\", \"topic.prefix\": \"shop\"}')"
    )[0][0]
    assert opts == {"decimal.handling.mode": "string", "topic.prefix": "shop"}
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
        "decimal.handling.mode": "string"
    }
    pg.execute("SELECT pgcdc.drop_feed('optf')")


# ------------------------------------------------------------------- privileges


def test_only_owner_and_admins_use_a_feed(pg):
    pub = setup_table(pg, "priv_t")
    pg.execute("CREATE ROLE app_owner LOGIN")
    pg.execute("CREATE ROLE app_other LOGIN")
    pg.execute("CREATE ROLE app_admin LOGIN IN ROLE pgcdc_admin")
    pg.execute("GRANT SELECT ON priv_t TO app_owner, app_admin")
    # Non-admins cannot create feeds.
    with psycopg.connect(pg.dsn(user="app_owner"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            conn.execute(f"SELECT pgcdc.create_feed('privf', publication => '{pub}')")
        assert "pgcdc_admin" in e.value.diag.message_hint
    # The owner must be able to read the published tables.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        pg.execute(f"SELECT pgcdc.create_feed('privf', publication => '{pub}', owner => 'app_other')")
    with psycopg.connect(pg.dsn(user="app_admin"), autocommit=True) as conn:
        conn.execute(f"SELECT pgcdc.create_feed('privf', publication => '{pub}', owner => 'app_owner')")
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
