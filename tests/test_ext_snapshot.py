"""End to end: snapshots (issue #9) — initial and ad hoc ("incremental") snapshots of
published tables, read in chunks between the stream's events.

The invariant every test here checks in some form: applying all events of a feed in position
order (c/u/r upsert by key, d delete by key, t clear the table) ends with exactly the rows of
the table (ext_support.replay_events against ext_support.table_rows). Own tables use int,
bigint and text columns only, so `after` equals the row's JSON form exactly.
"""

from __future__ import annotations

import json
import random
import threading
import time

import psycopg
import pytest

from ext_support import (
    SNAPSHOTS_NEED_MESSAGES,
    since_pg,
    Consumer,
    canon_key,
    diff_states,
    event_key,
    event_value,
    position,
    read_all,
    read_events,
    replay_events,
    requires_extension,
    start_cluster,
    status,
    table_rows,
    wait_until,
)
from workload import TYPEMATRIX_DML_SQL, TYPEMATRIX_SQL

pytestmark = [requires_extension, pytest.mark.timeout(300), since_pg(14, SNAPSHOTS_NEED_MESSAGES)]

MARK = "snap_mark"  # a published table whose inserts mark a point in a feed's stream


@pytest.fixture(scope="module")
def pg():
    c = start_cluster("pgcdc-snapshot")
    try:
        c.execute(f"CREATE TABLE {MARK} (id bigint PRIMARY KEY, note text)")
        yield c
    finally:
        c.stop()


_marker_ids = iter(range(1, 1_000_000))


def mark(c) -> int:
    """Insert a marker row (committed now) and return its id."""
    m = next(_marker_ids)
    c.execute(f"INSERT INTO {MARK} VALUES (%s, 'marker')", params=[m])
    return m


def create_feed(c, name: str, pub: str, options: dict, owner: str | None = None) -> None:
    c.execute(
        "SELECT pgcdc.create_feed(%s, publication => %s, options => %s::jsonb, owner => %s)",
        params=[name, pub, json.dumps(options), owner],
    )


def make_table(c, name: str, rows: int, dbname: str = "postgres") -> None:
    c.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v text, n int)", dbname=dbname)
    if rows:
        c.execute(
            f"INSERT INTO {name} SELECT g, 'v' || g, (g %% 1000)::int FROM generate_series(1, %s) g",
            dbname=dbname,
            params=[rows],
        )


def snapshots(c, feed: str) -> list[dict]:
    with c.connect() as conn:
        cur = conn.execute("SELECT * FROM pgcdc.snapshots WHERE feed = %s ORDER BY id", [feed])
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def snapshot_row(c, feed: str, sid: int | None = None) -> dict | None:
    rows = snapshots(c, feed)
    if sid is not None:
        rows = [r for r in rows if r["id"] == sid]
    return rows[-1] if rows else None


def wait_snapshot(c, feed: str, states=("done",), sid: int | None = None, timeout: float = 120.0) -> dict:
    """Wait until the feed's (latest, or `sid`) snapshot is in one of `states`; a snapshot
    that ends in another final state fails at once with its error."""
    final = {"done", "cancelled", "failed"}

    def ready():
        s = snapshot_row(c, feed, sid)
        if s is None:
            return None
        if s["state"] in states:
            return s
        if s["state"] in final:
            raise AssertionError(f"snapshot of {feed} ended {s['state']} (wanted {states}): {s}")
        return None

    try:
        return wait_until(ready, timeout, f"snapshot of {feed} to be {states}", interval=0.1)
    except AssertionError as e:
        if "timed out" in str(e):
            raise AssertionError(f"{e}\nstatus {status(c, feed)}\n{c.log_tail(20)}") from None
        raise


def r_events(events) -> list[dict]:
    return [e for e in events if e["op"] == "r"]


def assert_positions_increase(events) -> None:
    pos = [position(e) for e in events]
    dups = [p for p, q in zip(pos, pos[1:]) if q <= p]
    assert not dups, f"positions not strictly increasing (duplicate or reordered delivery) at {dups[:5]}"


def drain(c, feed: str, consumer: Consumer, timeout: float = 120.0) -> list[dict]:
    """Mark the stream, wait for the consumer to read the marker and the queue to be empty,
    stop the consumer; return everything it read."""
    m = mark(c)
    consumer.wait_marker(m, timeout)
    wait_until(lambda: status(c, feed)["staged_events"] == 0, 30, f"{feed}'s queue to drain")
    return consumer.stop()


def own_table_state(events, table: str) -> dict:
    return replay_events(events).get(("public", table), {})


def assert_replays_to_table(c, events, table: str) -> None:
    """Applying `events` in order ends with exactly the rows of public.`table`."""
    want = table_rows(c, table, ["id"])
    got = own_table_state(events, table)
    assert got == want, "replay differs from the table:\n" + diff_states(
        want, got, [e for e in events if e["table_name"] == table]
    )


# ----------------------------------------------------------------------------- 1. typematrix

PK_TABLES = ("tm_types", "tm_default", "tm_full", "tm_toast", "tm_gen", "tm_part")

# After the shared DML: tm_default gained a column after rows 3 and 10 were streamed, so their
# last streamed events lack it; an update of every row brings the stream up to date (the
# initial snapshot reads the table as it is now).
REFRESH_SQL = "UPDATE tm_default SET qty = qty;"


def test_initial_snapshot_of_the_typematrix_equals_the_streamed_encoding(pg):
    pg.psql("-f", str(TYPEMATRIX_SQL))
    pg.execute("CREATE TABLE tm_mark (id bigint PRIMARY KEY)")
    pg.execute(
        f"CREATE PUBLICATION tm_pk_pub FOR TABLE {', '.join(PK_TABLES)}, tm_mark "
        "WITH (publish_via_partition_root = true)"
    )
    # S streams the rows as they are written: 'c' and 'u' events.
    create_feed(pg, "tms", "tm_pk_pub", {"snapshot.mode": "no_data"})
    assert snapshots(pg, "tms") == [], "no_data: no snapshot"
    pg.psql("-f", str(TYPEMATRIX_DML_SQL))
    pg.psql("-c", REFRESH_SQL)
    pg.execute("INSERT INTO tm_mark VALUES (1)")
    streamed = wait_until(
        lambda: (lambda evs: evs if any(e["table_name"] == "tm_mark" for e in evs) else None)(read_all(pg, "tms")),
        60,
        "S to stream the DML",
        interval=0.2,
    )
    assert not r_events(streamed), "a no_data feed never reads rows"
    s_state = replay_events(streamed)

    # I reads the same rows from the tables.
    create_feed(pg, "tmi", "tm_pk_pub", {"snapshot.mode": "initial"})
    snap = wait_snapshot(pg, "tmi", timeout=60)
    assert snap["kind"] == "initial" and snap["error"] is None, snap
    events = read_all(pg, "tmi")
    assert_positions_increase(events)
    reads = r_events(events)
    assert reads, "the initial snapshot staged no rows"
    assert snap["rows"] == len(reads), (snap, len(reads))

    # source.snapshot markers: first on the very first row, last on the very last.
    marks = [event_value(e)["source"]["snapshot"] for e in reads]
    assert marks.count("first") == 1 and marks[0] == "first", marks
    assert marks.count("last") == 1 and marks[-1] == "last", marks
    assert set(marks[1:-1]) <= {"true", "first_in_data_collection", "last_in_data_collection"}, marks
    for e in reads:
        v = event_value(e)
        assert v["op"] == "r" and v["before"] is None, v

    generated = {
        (t, a)
        for t, a in pg.execute(
            "SELECT c.relname::text, a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE a.attgenerated <> '' AND c.relnamespace = 'public'::regnamespace"
        )
    }
    i_state: dict = {}
    for e in reads:
        i_state.setdefault(e["table_name"], {})
        k = event_key(e)
        assert k not in i_state[e["table_name"]], f"{e['table_name']} {k} read twice"
        i_state[e["table_name"]][k] = event_value(e)["after"]
    assert set(i_state) == set(PK_TABLES) | {"tm_mark"}, (
        f"the snapshot's tables {sorted(i_state)} are not the published ones"
    )
    mismatches = []
    for table in sorted(i_state):
        want_keys = set(s_state.get(("public", table), {}))
        count = pg.execute(f"SELECT count(*) FROM {table}")[0][0]
        assert len(i_state[table]) == count, (table, len(i_state[table]), count)
        assert set(i_state[table]) == want_keys, (table, sorted(i_state[table]), sorted(want_keys))
        for k, after in i_state[table].items():
            s_after = dict(s_state[("public", table)][k])
            r_after = dict(after)
            for t, col in generated:
                if t == table:
                    # pgoutput (PG15) does not send generated columns; Debezium's snapshot has
                    # them. Either way a value present must be the table's.
                    s_after.pop(col, None)
                    got = r_after.pop(col, None)
                    if got is not None:
                        key = json.loads(k)
                        cond = " AND ".join(f"{c} = %s" for c in key)
                        (real,) = pg.execute(f"SELECT {col} FROM {table} WHERE {cond}", params=list(key.values()))[0]
                        assert got == real, (table, k, col, got, real)
            if r_after != s_after:
                diff = {c: (s_after.get(c, "<absent>"), r_after.get(c, "<absent>"))
                        for c in set(s_after) | set(r_after) if s_after.get(c, "<absent>") != r_after.get(c, "<absent>")}
                mismatches.append(f"{table} {k}: column: (streamed, snapshot) {diff}")
    assert not mismatches, "snapshot encoding differs from the streamed one:\n" + "\n".join(mismatches)
    for f in ("tms", "tmi"):
        pg.execute("SELECT pgcdc.drop_feed(%s)", params=[f])


def test_initial_snapshot_refuses_a_publication_with_a_keyless_table(pg):
    pg.execute("CREATE TABLE kl_pk (id int PRIMARY KEY)")
    pg.execute("CREATE TABLE kl_nopk (a int, b text)")
    pg.execute("CREATE PUBLICATION kl_pub FOR TABLE kl_pk, kl_nopk")
    for options in ({}, {"snapshot.mode": "initial"}):
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            create_feed(pg, "klf", "kl_pub", options)
        assert e.value.sqlstate == "55000"
        assert "kl_nopk" in str(e.value), str(e.value)
        assert e.value.diag.message_hint, "a hint says what to do"
        assert pg.execute("SELECT count(*) FROM pgcdc.feed WHERE name = 'klf'") == [(0,)]
    # Streaming alone needs no key.
    create_feed(pg, "klf", "kl_pub", {"snapshot.mode": "no_data"})
    assert snapshots(pg, "klf") == []
    pg.execute("SELECT pgcdc.drop_feed('klf')")


# ----------------------------------------------------------------------------- 2. ad hoc + writers


class Writer(threading.Thread):
    """Random inserts, updates, deletes and primary-key changes on the ids it owns (id % 2 ==
    wid, so two writers never wait for each other's rows); writer 0 also truncates the table
    (once `truncate_now` is set) and re-inserts rows. Conflicts (a key change onto a key that
    exists) roll back and go on: the table is the truth, not what a writer believes."""

    def __init__(self, c, table: str, wid: int, seed: int, duration: float, live: set[int]) -> None:
        super().__init__(name=f"writer-{wid}", daemon=True)
        self.c, self.table, self.wid, self.duration = c, table, wid, duration
        self.rng = random.Random(seed)
        self.seed = seed
        self.live = set(live)
        self.next_id = 5_000_000 + wid
        self.truncate_now = threading.Event()
        self.reinserted = threading.Event()
        self.counts = {"insert": 0, "update": 0, "delete": 0, "key": 0, "multi": 0, "truncate": 0, "conflict": 0, "tx": 0}
        self.error: BaseException | None = None

    def fresh(self) -> int:
        self.next_id += 2
        return self.next_id

    def run(self) -> None:
        t = self.table
        end = time.monotonic() + self.duration
        pool: tuple[int, ...] = tuple(self.live)
        try:
            with self.c.connect(autocommit=False) as conn:
                while time.monotonic() < end:
                    if self.wid == 0 and self.truncate_now.is_set() and not self.counts["truncate"]:
                        conn.execute(f"TRUNCATE {t}")
                        conn.commit()
                        self.counts["truncate"] += 1
                        self.live.clear()
                        for _ in range(8):  # re-inserts, in several transactions
                            ids = [self.fresh() for _ in range(500)]
                            conn.execute(
                                f"INSERT INTO {t} SELECT g, 're' || g, 1 FROM unnest(%s::bigint[]) g", [ids]
                            )
                            conn.commit()
                            self.live.update(ids)
                        pool = tuple(self.live)
                        self.reinserted.set()
                        continue
                    if self.rng.random() < 0.02:
                        pool = tuple(self.live)
                    live = set(self.live)  # this transaction's view
                    try:
                        for _ in range(self.rng.randint(1, 4)):
                            op = self.rng.random()
                            x = self.rng.choice(pool) if pool else None
                            if x is None or x not in live or op < 0.3:
                                i = self.fresh()
                                conn.execute(
                                    f"INSERT INTO {t} VALUES (%s, %s, %s)", [i, f"w{self.wid}-{i}", self.rng.randint(0, 999)]
                                )
                                live.add(i)
                                self.counts["insert"] += 1
                            elif op < 0.6:
                                conn.execute(f"UPDATE {t} SET v = %s, n = n + 1 WHERE id = %s", [f"u{self.rng.random():.6f}", x])
                                self.counts["update"] += 1
                            elif op < 0.75:
                                conn.execute(f"DELETE FROM {t} WHERE id = %s", [x])
                                live.discard(x)
                                self.counts["delete"] += 1
                            elif op < 0.92:
                                conn.execute(f"UPDATE {t} SET id = id + 1000000 WHERE id = %s", [x])
                                live.discard(x)
                                live.add(x + 1_000_000)
                                self.counts["key"] += 1
                            else:
                                conn.execute(
                                    f"UPDATE {t} SET n = n + 1, v = v || '+' WHERE id BETWEEN %s AND %s AND id %% 2 = %s",
                                    [x, x + 60, self.wid],
                                )
                                self.counts["multi"] += 1
                        conn.commit()
                        self.counts["tx"] += 1
                        self.live = live
                    except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected):
                        conn.rollback()
                        self.counts["conflict"] += 1
                    time.sleep(0.004)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def test_ad_hoc_snapshot_with_concurrent_writers_replays_to_the_table(pg):
    rows = 20_000
    make_table(pg, "ah_t", rows)
    pg.execute(f"CREATE PUBLICATION ah_p FOR TABLE ah_t, {MARK}")
    create_feed(pg, "ahf", "ah_p", {"snapshot.mode": "no_data", "snapshot.fetch.size": 500, "skipped.operations": "none"})
    wait_until(lambda: status(pg, "ahf")["worker_pid"], 20, "a worker")
    consumer = Consumer(pg, "ahf", batch=5000, marker_table=MARK).start()
    ids = set(range(1, rows + 1))
    writers = [
        Writer(pg, "ah_t", w, seed=1000 + w, duration=16.0, live={i for i in ids if i % 2 == w}) for w in (0, 1)
    ]
    for w in writers:
        w.start()
    overlap = {}
    try:
        time.sleep(1.0)  # let the writers get going before the snapshot starts (not an assertion)
        sid1 = pg.execute("SELECT pgcdc.snapshot('ahf')")[0][0]
        # Truncate while the snapshot is under way (or, if it is fast, right after it).
        s = wait_until(
            lambda: (lambda s: s if s and (s["chunks"] >= 8 or s["state"] in ("done", "failed", "cancelled")) else None)(
                snapshot_row(pg, "ahf", sid1)
            ),
            60,
            "the snapshot to read a few chunks",
        )
        overlap["at_truncate"] = (s["state"], s["chunks"])
        writers[0].truncate_now.set()
        wait_until(lambda: writers[0].reinserted.is_set() or writers[0].error, 60, "truncate and re-inserts")
        assert writers[0].error is None, writers[0].error
        sid2 = pg.execute("SELECT pgcdc.snapshot('ahf', '{ah_t}')")[0][0]
        assert sid2 != sid1
        for w in writers:
            w.join(60)
            assert not w.is_alive(), f"{w.name} did not stop"
            assert w.error is None, f"{w.name} (seed {w.seed}) failed: {w.error!r}"
        consumer.check()
        s1 = wait_snapshot(pg, "ahf", sid=sid1, timeout=120)
        s2 = wait_snapshot(pg, "ahf", sid=sid2, timeout=120)
        events = drain(pg, "ahf", consumer)
    finally:
        for w in writers:
            w.duration = 0
        consumer._stop.set()
    print(f"ad hoc: writers {[w.counts for w in writers]}, truncate at snapshot {overlap}, "
          f"snapshots {[(s['id'], s['rows'], s['chunks'], s['chunks_read']) for s in (s1, s2)]}, {len(events)} events")
    assert writers[0].counts["truncate"] == 1 and all(w.counts["key"] > 0 and w.counts["delete"] > 0 for w in writers)
    for s in (s1, s2):
        assert s["kind"] == "incremental" and s["error"] is None, s
        assert s["chunks"] >= 2, f"fetch size 500: many chunks, got {s}"
        assert s["tables"] == ["public.ah_t"] or s["id"] == sid1, s
    assert "public.ah_t" in s1["tables"], s1
    assert_positions_increase(events)
    reads = r_events(events)
    assert reads, "no rows read"
    assert {event_value(e)["source"]["snapshot"] for e in reads} == {"incremental"}
    assert all(event_value(e)["before"] is None for e in reads)
    assert any(e["op"] == "t" and e["table_name"] == "ah_t" for e in events), "the TRUNCATE was streamed"
    assert_replays_to_table(pg, events, "ah_t")
    pg.execute("SELECT pgcdc.drop_feed('ahf')")


def test_initial_snapshot_taken_while_writers_run_replays_to_the_table(pg):
    """The same invariant for snapshot.mode initial: the feed (slot and snapshot) is created
    while two writers change the table, and one of them truncates it mid-snapshot."""
    rows = 20_000
    make_table(pg, "iw_t", rows)
    pg.execute(f"CREATE PUBLICATION iw_p FOR TABLE iw_t, {MARK}")
    writers = [
        Writer(pg, "iw_t", w, seed=2000 + w, duration=12.0, live={i for i in range(1, rows + 1) if i % 2 == w})
        for w in (0, 1)
    ]
    for w in writers:
        w.start()
    consumer = None
    try:
        time.sleep(1.0)  # the writers are busy when the feed is created (not an assertion)
        mark(pg)  # the marker table (read last) is not empty: see the test of an empty last table
        create_feed(pg, "iwf", "iw_p", {"snapshot.mode": "initial", "snapshot.fetch.size": 500, "skipped.operations": "none"})
        consumer = Consumer(pg, "iwf", batch=5000, marker_table=MARK).start()
        s = wait_until(
            lambda: (lambda s: s if s and (s["chunks"] >= 8 or s["state"] in ("done", "failed", "cancelled")) else None)(
                snapshot_row(pg, "iwf")
            ),
            60,
            "the snapshot to read a few chunks",
        )
        at_truncate = (s["state"], s["chunks"])
        writers[0].truncate_now.set()
        for w in writers:
            w.join(60)
            assert not w.is_alive(), f"{w.name} did not stop"
            assert w.error is None, f"{w.name} (seed {w.seed}) failed: {w.error!r}"
        s = wait_snapshot(pg, "iwf", timeout=120)
        events = drain(pg, "iwf", consumer)
    finally:
        if consumer is not None:
            consumer._stop.set()
    print(f"initial+writers: {[w.counts for w in writers]}, truncate at {at_truncate}, "
          f"snapshot {dict((k, s[k]) for k in ('rows', 'chunks', 'chunks_read'))}, {len(events)} events")
    assert writers[0].counts["truncate"] == 1
    assert s["kind"] == "initial" and s["error"] is None and s["chunks"] >= 2, s
    assert_positions_increase(events)
    reads = r_events(events)
    marks = [event_value(e)["source"]["snapshot"] for e in reads]
    assert marks and marks[0] == "first" and marks[-1] == "last" and marks.count("first") == marks.count("last") == 1, (
        marks[:3], marks[-3:])
    assert_replays_to_table(pg, events, "iw_t")
    pg.execute("SELECT pgcdc.drop_feed('iwf')")


def test_initial_only_reads_the_rows_then_pauses_and_resume_streams_on(pg):
    make_table(pg, "io_t", 3000)
    pg.execute("CREATE PUBLICATION io_p FOR TABLE io_t")
    create_feed(pg, "iof", "io_p", {"snapshot.mode": "initial_only", "snapshot.fetch.size": 1000})
    s = wait_snapshot(pg, "iof", timeout=60)
    assert s["kind"] == "initial" and s["rows"] == 3000, s
    wait_until(lambda: status(pg, "iof")["state"] == "paused", 30, "the feed to pause after its snapshot")
    # Changes while paused are kept by the slot and streamed after resume_feed.
    pg.execute("UPDATE io_t SET v = 'changed' WHERE id <= 10")
    pg.execute("DELETE FROM io_t WHERE id > 2990")
    pg.execute("INSERT INTO io_t VALUES (5000, 'new', 1)")
    assert len(read_all(pg, "iof")) == 3000, "paused: only the snapshot's rows are staged"
    pg.execute("SELECT pgcdc.resume_feed('iof')")
    events = wait_until(
        lambda: (lambda evs: evs if any(e["op"] == "c" for e in evs) else None)(read_all(pg, "iof")),
        30,
        "the changes made while paused",
    )
    assert_positions_increase(events)
    assert len(r_events(events)) == 3000
    assert all(position(e) > position(r_events(events)[-1]) for e in events if e["op"] != "r")
    got = own_table_state(events, "io_t")
    want = table_rows(pg, "io_t", ["id"])
    assert got == want, diff_states(want, got)
    pg.execute("SELECT pgcdc.drop_feed('iof')")


# ----------------------------------------------------------------------------- 3. kill -9


def test_kill9_mid_snapshot_resumes_from_a_chunk_and_loses_nothing():
    c = start_cluster("pgcdc-snapcrash")
    try:
        rows, fetch, cap = 50_000, 1000, 5000
        total_chunks = rows // fetch
        make_table(c, "kc_t", rows)
        c.execute("CREATE PUBLICATION kc_p FOR TABLE kc_t")
        create_feed(c, "kcf", "kc_p", {"snapshot.mode": "initial", "snapshot.fetch.size": fetch, "max_staged_rows": cap})
        wait_until(lambda: status(c, "kcf")["staged_events"] >= cap, 60, "the snapshot to fill the queue")
        # Consume and acknowledge a part (ending inside a chunk), in steps.
        acked: list[dict] = []
        target = 15_500
        deadline = time.monotonic() + 90
        while len(acked) < target:
            assert time.monotonic() < deadline, f"only {len(acked)} events consumed; {snapshot_row(c, 'kcf')}"
            evs = read_events(c, "kcf", limit=min(1000, target - len(acked)))
            if not evs:
                time.sleep(0.02)
                continue
            c.execute("SELECT pgcdc.ack('kcf', %s, %s)", params=[evs[-1]["commit_lsn"], evs[-1]["ordinal"]])
            acked += evs
        acked_pos = position(acked[-1])
        # The snapshot refills the queue up to the cap, then waits: kill -9 then.
        before = wait_until(
            lambda: (lambda s: s if s["state"] == "running" and s["chunks"] >= target // fetch + 3
                     and status(c, "kcf")["staged_events"] >= cap - fetch else None)(snapshot_row(c, "kcf")),
            60,
            "the snapshot to stage more chunks",
        )
        assert before["chunks"] >= 10 and before["state"] == "running", before
        c.kill9_postmaster()
        c.restart()
        assert c.execute("SELECT acked_lsn::text, acked_ordinal FROM pgcdc.feed WHERE name = 'kcf'")[0] == (
            acked[-1]["commit_lsn"], acked[-1]["ordinal"]), "the acknowledged position survived"
        consumer = Consumer(c, "kcf", batch=5000, marker_table="kc_t").start()
        after = wait_snapshot(c, "kcf", timeout=120)
        m = 10_000_000
        c.execute("INSERT INTO kc_t VALUES (%s, 'after crash', 0)", params=[m])
        consumer.wait_marker(m, 60)
        wait_until(lambda: status(c, "kcf")["staged_events"] == 0, 30, "the queue to drain")
        later = consumer.stop()
        print(f"kill9: before {dict((k, before[k]) for k in ('chunks', 'chunks_read', 'rows'))}, "
              f"after {dict((k, after[k]) for k in ('chunks', 'chunks_read', 'rows'))}, "
              f"{len(acked)} acked, {len(later)} read after restart")
        # Nothing acknowledged comes back.
        assert later and position(later[0]) > acked_pos, (acked_pos, position(later[0]))
        assert all(position(e) > acked_pos for e in later)
        assert_positions_increase(acked + later)
        # Resumed, not restarted: fewer re-reads than a new start would need.
        assert after["chunks_read"] > before["chunks_read"], (before, after)
        assert after["chunks_read"] >= total_chunks, after
        assert after["chunks_read"] < 2 * total_chunks, after
        assert after["chunks_read"] < before["chunks_read"] + total_chunks, (
            f"the snapshot started again from zero: {before['chunks_read']} chunk reads before the crash, "
            f"{after['chunks_read']} in all for {total_chunks} chunks"
        )
        # Every row delivered (acknowledged before the crash, or read after it).
        assert_replays_to_table(c, acked + later, "kc_t")
        again = {event_key(e) for e in r_events(later)} & {event_key(e) for e in r_events(acked)}
        print(f"kill9: {len(again)} rows acknowledged before the crash were read again after it")
        assert len(again) <= 2 * fetch, f"{len(again)} acknowledged rows read again: more than the chunk re-read"
    finally:
        c.stop()


# ----------------------------------------------------------------------------- 4. no primary key


def test_ad_hoc_snapshot_of_a_table_without_a_primary_key_is_refused(pg):
    pg.execute("CREATE TABLE t_nopk (a int, b text)")
    pg.execute("ALTER TABLE t_nopk REPLICA IDENTITY FULL")
    pg.execute("INSERT INTO t_nopk VALUES (1, 'x')")
    make_table(pg, "np_pk", 10)
    make_table(pg, "np_unpublished", 1)
    pg.execute("CREATE PUBLICATION np_p FOR TABLE t_nopk, np_pk")
    create_feed(pg, "npf", "np_p", {"snapshot.mode": "no_data"})
    for call in ("SELECT pgcdc.snapshot('npf', '{t_nopk}')", "SELECT pgcdc.snapshot('npf')",
                 "SELECT pgcdc.snapshot('npf', '{np_pk,t_nopk}')"):
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            pg.execute(call)
        assert e.value.sqlstate == "55000"
        assert "t_nopk" in str(e.value), (call, str(e.value))
        assert e.value.diag.message_hint, f"{call}: no hint"
    # Other refusals of the contract.
    with pytest.raises(psycopg.errors.UndefinedObject):
        pg.execute("SELECT pgcdc.snapshot('no_such_feed')")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        pg.execute("SELECT pgcdc.snapshot('npf', '{np_unpublished}')")
    assert "np_unpublished" in str(e.value)
    assert snapshots(pg, "npf") == [], "a refused call queues nothing"
    # The tables with a key can be snapshotted.
    sid = pg.execute("SELECT pgcdc.snapshot('npf', '{np_pk}')")[0][0]
    wait_snapshot(pg, "npf", sid=sid, timeout=60)
    assert sorted(json.loads(event_key(e))["id"] for e in r_events(read_all(pg, "npf"))) == list(range(1, 11))
    pg.execute("SELECT pgcdc.drop_feed('npf')")


# ----------------------------------------------------------------------------- 5. cancel


def test_cancel_snapshot_stops_reading_and_the_feed_streams_on(pg):
    rows = 100_000
    make_table(pg, "cn_t", rows)
    pg.execute("CREATE PUBLICATION cn_p FOR TABLE cn_t")
    create_feed(pg, "cnf", "cn_p", {"snapshot.mode": "no_data", "snapshot.fetch.size": 100})
    sid = pg.execute("SELECT pgcdc.snapshot('cnf')")[0][0]
    s = wait_until(
        lambda: (lambda s: s if s and (s["chunks"] >= 3 or s["state"] != "running" and s["state"] != "pending") else None)(
            snapshot_row(pg, "cnf", sid)
        ),
        60,
        "the snapshot to read a few chunks",
    )
    assert s["state"] == "running", f"the snapshot was to be running when cancelled: {s}"
    assert pg.execute("SELECT pgcdc.cancel_snapshot('cnf')")[0][0] >= 1
    s = wait_snapshot(pg, "cnf", states=("cancelled",), sid=sid, timeout=30)
    assert s["finished_at"] is not None, s

    def r_count() -> int:
        return len(r_events(read_all(pg, "cnf")))

    n = r_count()
    # Nothing more is read: the count stays put over several worker intervals.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert r_count() == n, "rows were still staged after the snapshot was cancelled"
        time.sleep(0.2)
    assert 0 < n < rows, n
    s = snapshot_row(pg, "cnf", sid)
    assert s["state"] == "cancelled" and s["rows"] == n, f"rows staged {n}, the view says {s}"
    assert pg.execute("SELECT pgcdc.cancel_snapshot('cnf')")[0][0] == 0, "nothing left to cancel"
    # The feed streams on.
    pg.execute("INSERT INTO cn_t VALUES (-1, 'after cancel', 0)")
    evs = wait_until(
        lambda: (lambda evs: evs if any(e["op"] == "c" for e in evs) else None)(read_all(pg, "cnf")),
        30,
        "the insert after the cancel",
    )
    (c_ev,) = [e for e in evs if e["op"] == "c"]
    assert event_value(c_ev)["after"] == {"id": -1, "v": "after cancel", "n": 0}
    assert position(c_ev) == max(position(e) for e in evs)
    pg.execute("SELECT pgcdc.drop_feed('cnf')")


# ----------------------------------------------------------------------------- 6. queue cap


def test_snapshot_respects_the_queue_cap_and_finishes_once_consumed(pg):
    rows, cap, fetch = 20_000, 2000, 500
    make_table(pg, "qc_t", rows)
    pg.execute("CREATE PUBLICATION qc_p FOR TABLE qc_t")
    create_feed(pg, "qcf", "qc_p", {"snapshot.mode": "initial", "snapshot.fetch.size": fetch, "max_staged_rows": cap})
    wait_until(lambda: status(pg, "qcf")["staged_events"] >= cap, 60, "the snapshot to reach the cap")
    # Watch it for a while: it stays within the cap plus one chunk and does not finish.
    deadline = time.monotonic() + 3.0
    peak = 0
    while time.monotonic() < deadline:
        st, s = status(pg, "qcf"), snapshot_row(pg, "qcf")
        peak = max(peak, st["staged_events"])
        assert st["staged_events"] <= cap + fetch, f"queue {st['staged_events']} > cap {cap} + one chunk {fetch}"
        assert s["state"] == "running", f"the snapshot went on past the cap: {s}"
        time.sleep(0.1)
    assert s["rows"] <= cap + fetch, s
    # feed_status shows the running snapshot.
    assert (st["snapshot_state"], st["snapshot_table"]) == ("running", "public.qc_t"), st
    assert st["snapshot_rows"] is not None and 0 < st["snapshot_rows"] <= cap + fetch, st
    consumer = Consumer(pg, "qcf", batch=700).start()
    s = wait_snapshot(pg, "qcf", timeout=120)
    wait_until(lambda: consumer.count() >= rows, 60, "all rows consumed")
    wait_until(lambda: status(pg, "qcf")["staged_events"] == 0, 30, "the queue to drain")
    events = consumer.stop()
    print(f"cap: peak {peak} staged, snapshot {dict((k, s[k]) for k in ('rows', 'chunks', 'chunks_read'))}")
    assert_positions_increase(events)
    reads = r_events(events)
    assert len(reads) == rows and s["rows"] == rows, (len(reads), s)
    assert own_table_state(events, "qc_t") == table_rows(pg, "qc_t", ["id"])
    assert s["chunks_read"] == s["chunks"] and s["chunks"] >= rows // fetch, s
    st = status(pg, "qcf")
    assert st["snapshot_state"] is None and st["snapshot_table"] is None, f"no snapshot runs any more: {st}"
    pg.execute("SELECT pgcdc.drop_feed('qcf')")


# ----------------------------------------------------------------------------- 7. dropped table


def test_a_table_dropped_mid_snapshot_gives_a_clear_state_and_the_feed_streams_on(pg):
    make_table(pg, "dr_a", 20_000)
    make_table(pg, "dr_b", 100)
    pg.execute("CREATE PUBLICATION dr_p FOR TABLE dr_a, dr_b")
    create_feed(pg, "drf", "dr_p", {"snapshot.mode": "no_data", "snapshot.fetch.size": 200, "max_staged_rows": 1000})
    worker = wait_until(lambda: status(pg, "drf")["worker_pid"], 20, "a worker")
    postmaster = pg.postmaster_pid()
    sid = pg.execute("SELECT pgcdc.snapshot('drf', '{dr_a,dr_b}')")[0][0]
    s = wait_until(
        lambda: (lambda s: s if s["state"] == "running" and s["chunks"] >= 2 else None)(snapshot_row(pg, "drf", sid)),
        60,
        "the snapshot to be reading dr_a",
    )
    assert s["current_table"] == "public.dr_a", s
    with pg.connect() as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute("DROP TABLE dr_a")
    consumer = Consumer(pg, "drf", batch=1000, marker_table="dr_b").start()
    s = wait_snapshot(pg, "drf", states=("done", "failed"), sid=sid, timeout=120)
    print(f"dropped table: snapshot ended {s}")
    if s["state"] == "failed":
        assert s["error"] and "dr_a" in s["error"], f"a failed snapshot names the dropped table: {s}"
    else:
        # done: either with an error naming the table, or with the table listed as skipped
        assert (s["error"] is not None and "dr_a" in s["error"]) or "public.dr_a" in (s.get("tables_skipped") or []), (
            f"a finished snapshot says what happened to the dropped table: {s}"
        )
    # The feed streams on, and the server did not crash.
    pg.execute("INSERT INTO dr_b VALUES (1000, 'after drop', 0)")
    consumer.wait_marker(1000, 60)
    events = consumer.stop()
    assert_positions_increase(events)
    if s["state"] == "done":
        # dr_a was skipped (or finished): dr_b was read in full.
        got = own_table_state(events, "dr_b")
        assert got == table_rows(pg, "dr_b", ["id"]), diff_states(table_rows(pg, "dr_b", ["id"]), got)
    assert pg.postmaster_pid() == postmaster
    assert pg.execute("SELECT 1") == [(1,)]
    st = status(pg, "drf")
    assert st["state"] == "running" and st["worker_pid"], st
    assert "terminated by signal" not in pg.log_tail(100000) and "PANIC" not in pg.log_tail(100000)
    print(f"dropped table: worker {worker} -> {st['worker_pid']}")
    pg.execute("SELECT pgcdc.drop_feed('drf')")


# ----------------------------------------------------------------------------- 8. privileges


def _snapshot_refused_or_failed(pg, feed: str, call, what: str) -> str:
    """Run `call` (which queues a snapshot of `feed`); it must raise a clear row-level-security
    error or the snapshot must fail with one; no row may be staged. Returns the error text."""
    try:
        sid = call()
    except psycopg.Error as e:
        text = f"{e} {e.diag.message_hint or ''}"
        assert "row-level security" in text.lower() or "row level security" in text.lower(), f"{what}: {text}"
        assert "rls_t" in text, f"{what}: {text}"
        err = text
    else:
        s = wait_snapshot(pg, feed, states=("failed",), sid=sid, timeout=60)
        err = s["error"] or ""
        assert "row-level security" in err.lower() or "row level security" in err.lower(), f"{what}: {s}"
        assert "rls_t" in err, f"{what}: {s}"
    reads = r_events(read_all(pg, feed))
    assert reads == [], f"{what}: {len(reads)} rows read despite the policy (read as a superuser?)"
    return err


def test_a_feed_owned_by_a_role_snapshots_only_as_that_role(pg):
    make_table(pg, "rls_t", 100)
    pg.execute("CREATE PUBLICATION rls_p FOR TABLE rls_t")
    pg.execute("CREATE ROLE snap_owner LOGIN")
    pg.execute("CREATE ROLE snap_other LOGIN")
    pg.execute("GRANT SELECT ON rls_t TO snap_owner, snap_other")
    create_feed(pg, "rlsf", "rls_p", {"snapshot.mode": "no_data"}, owner="snap_owner")
    pg.execute("ALTER TABLE rls_t ENABLE ROW LEVEL SECURITY")
    pg.execute("CREATE POLICY rls_hide ON rls_t USING (id < 0)")  # hides every row from the owner

    def as_role(role: str, sql: str):
        with psycopg.connect(pg.dsn(user=role), autocommit=True) as conn:
            return conn.execute(sql).fetchone()[0]

    # Whoever calls pgcdc.snapshot (here a superuser), the rows are read as the owner.
    errors = [
        _snapshot_refused_or_failed(pg, "rlsf", lambda: pg.execute("SELECT pgcdc.snapshot('rlsf')")[0][0], "superuser caller"),
    ]
    # Someone else may not snapshot the feed at all.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role("snap_other", "SELECT pgcdc.snapshot('rlsf')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role("snap_other", "SELECT pgcdc.cancel_snapshot('rlsf')")
    assert as_role("snap_other", "SELECT count(*) FROM pgcdc.snapshots") == 0, "snapshots of others' feeds are hidden"
    # An initial snapshot for that owner is refused too (at create_feed or by the snapshot).
    try:
        create_feed(pg, "rlsi", "rls_p", {"snapshot.mode": "initial"}, owner="snap_owner")
    except psycopg.Error as e:
        assert "row-level security" in str(e).lower() or "row level security" in str(e).lower(), str(e)
    else:
        s = wait_snapshot(pg, "rlsi", states=("failed",), timeout=60)
        assert "rls_t" in (s["error"] or ""), s
        assert r_events(read_all(pg, "rlsi")) == []
        pg.execute("SELECT pgcdc.drop_feed('rlsi')")
    # The owner itself may call pgcdc.snapshot (the contract's 42501 is for callers that are
    # neither owner nor admin): the policy fails it the same way.
    errors.append(
        _snapshot_refused_or_failed(pg, "rlsf", lambda: as_role("snap_owner", "SELECT pgcdc.snapshot('rlsf')"), "owner"),
    )
    print(f"rls: {errors}")
    # The control: with BYPASSRLS the owner's snapshot reads every row.
    pg.execute("ALTER ROLE snap_owner BYPASSRLS")
    sid = as_role("snap_owner", "SELECT pgcdc.snapshot('rlsf')")
    s = wait_snapshot(pg, "rlsf", sid=sid, timeout=60)
    reads = r_events(read_all(pg, "rlsf"))
    assert sorted(json.loads(event_key(e))["id"] for e in reads) == list(range(1, 101)), s
    assert as_role("snap_owner", "SELECT count(*) FROM pgcdc.snapshots WHERE feed = 'rlsf'") >= 1
    # An administrator (pgcdc_admin) may snapshot the feed too; it still reads as the owner.
    pg.execute("CREATE ROLE snap_admin LOGIN IN ROLE pgcdc_admin")
    sid = as_role("snap_admin", "SELECT pgcdc.snapshot('rlsf')")
    wait_snapshot(pg, "rlsf", sid=sid, timeout=60)
    assert len(r_events(read_all(pg, "rlsf"))) == 200
    pg.execute("SELECT pgcdc.drop_feed('rlsf')")


# ----------------------------------------------------------------------------- snapshot markers


def test_initial_snapshot_marks_first_and_last_when_the_last_table_is_empty(pg):
    """source.snapshot: exactly one "first" (the first row read) and one "last" (the last row
    read), also when the publication's last table has no rows."""
    make_table(pg, "el_a", 5)
    make_table(pg, "el_z", 0)
    pg.execute("CREATE PUBLICATION el_p FOR TABLE el_a, el_z")
    create_feed(pg, "elf", "el_p", {"snapshot.mode": "initial"})
    s = wait_snapshot(pg, "elf", timeout=60)
    # A table empty when the slot was created is not read: its rows are all in the stream.
    assert s["rows"] == 5 and s["tables"] == ["public.el_a"], s
    reads = r_events(read_all(pg, "elf"))
    marks = [event_value(e)["source"]["snapshot"] for e in reads]
    pg.execute("SELECT pgcdc.drop_feed('elf')")
    assert len(reads) == 5
    assert marks[0] == "first" and marks.count("first") == 1, marks
    assert marks[-1] == "last" and marks.count("last") == 1, f"no row is marked last: {marks}"


def test_the_last_marker_moves_to_the_last_table_with_rows_when_a_later_one_empties(pg):
    """A table with rows when the feed was created but emptied before its turn: the "last"
    row is the last of the table before it. The queue cap holds the snapshot after its first
    chunk while the later table is emptied."""
    make_table(pg, "em_a", 5)
    make_table(pg, "em_z", 1)
    pg.execute("CREATE PUBLICATION em_p FOR TABLE em_a, em_z")
    create_feed(pg, "emf", "em_p", {"snapshot.mode": "initial", "snapshot.fetch.size": 2, "max_staged_rows": 2})
    wait_until(lambda: (snapshot_row(pg, "emf") or {}).get("chunks") == 1, 30, "the first chunk")
    pg.execute("DELETE FROM em_z")
    events: list[dict] = []
    deadline = time.monotonic() + 60
    while True:  # consume (and acknowledge, to stay below the cap) until the snapshot is done
        s = snapshot_row(pg, "emf")
        batch = read_all(pg, "emf")
        if not batch and s["state"] == "done":
            break
        assert time.monotonic() < deadline, s
        if batch:
            events += batch
            pg.execute("SELECT pgcdc.ack('emf', %s, %s)", params=[batch[-1]["commit_lsn"], batch[-1]["ordinal"]])
        time.sleep(0.05)
    pg.execute("SELECT pgcdc.drop_feed('emf')")
    assert s["tables"] == ["public.em_a", "public.em_z"] and s["rows"] == 5, s
    reads = r_events(events)
    marks = [event_value(e)["source"]["snapshot"] for e in reads]
    assert [event_key(e) for e in reads] == [canon_key({"id": i}) for i in range(1, 6)], marks
    assert marks == ["first", "true", "true", "true", "last"], marks


def test_a_table_empty_at_create_feed_is_not_read_so_its_rows_come_once(pg):
    """The default initial snapshot of a table that is empty when the feed is created: rows
    written right after come as their changes only, never again as reads."""
    make_table(pg, "once_t", 0)
    pg.execute("CREATE PUBLICATION once_p FOR TABLE once_t")
    create_feed(pg, "oncef", "once_p", {})
    pg.execute("INSERT INTO once_t SELECT g, 'v', 1 FROM generate_series(1, 100) g")
    s = wait_snapshot(pg, "oncef", timeout=30)
    assert s["kind"] == "initial" and s["tables"] == [] and s["rows"] == 0, s
    pg.execute("INSERT INTO once_t VALUES (101, 'last', 1)")
    events = wait_until(
        lambda: (lambda evs: evs if any(event_key(e) == canon_key({"id": 101}) for e in evs) else None)(
            read_all(pg, "oncef")
        ),
        30,
        "the last insert",
    )
    pg.execute("SELECT pgcdc.drop_feed('oncef')")
    assert [e["op"] for e in events] == ["c"] * 101, [e["op"] for e in events if e["op"] != "c"]
