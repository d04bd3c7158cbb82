"""pgcdc.LogicalReplicationReader against real PostgreSQL 15 clusters: event kinds, every
type of tests/fixtures/debezium/typematrix.sql, acknowledgement, reconnects, shutdown, errors, auth,
TLS, and the seed library's API (`import pgcdc as pgoutput_decoder`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

try:
    import pgcdc
except ImportError as e:  # make test builds it first; never skip
    raise ImportError("the Python package pgcdc is not built (run: make py-develop)") from e
from pgcluster import Cluster, pg_major
from pyhelpers import (
    TYPEMATRIX_ROW1,
    FakeServer,
    FreezableProxy,
    auth_request,
    await_for,
    confirmed_flush,
    lsn_int,
    make_server_cert,
    nothing_within,
    pg_message,
    plant_search_path_traps,
    prepend_hba,
    run,
    search_path_traps_fired,
    take,
    trapped_superuser,
    wait_for,
)
from workload import TYPEMATRIX_DML_SQL, TYPEMATRIX_SQL



_open: list[pgcdc.LogicalReplicationReader] = []


def _stop_all() -> None:
    while _open:
        run(_open.pop().stop(), timeout=20)


@pytest.fixture(autouse=True)
def _stop_readers():
    """A failing test must not leave a reader running."""
    yield
    _stop_all()


@pytest.fixture
def fresh_db(fresh_db: str):
    """conftest's database, with this test's readers stopped before it is dropped (an active
    slot pins the database)."""
    yield fresh_db
    _stop_all()


def reader(cluster: Cluster, db: str, pub: str = "pub", slot: str = "slot", **kw) -> pgcdc.LogicalReplicationReader:
    kw.setdefault("connect_timeout", 5)
    r = pgcdc.LogicalReplicationReader(pub, slot, host="127.0.0.1", database=db, port=cluster.port, **kw)
    _open.append(r)
    return r


def setup_simple(cluster: Cluster, db: str, identity_full: bool = False) -> None:
    cluster.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)", db)
    if identity_full:
        cluster.execute("ALTER TABLE items REPLICA IDENTITY FULL", db)
    cluster.execute("CREATE PUBLICATION pub FOR TABLE items", db)
    cluster.execute("SELECT pg_create_logical_replication_slot('slot', 'pgoutput')", db)


# ----------------------------------------------------------------- event kinds


@pytest.mark.smoke
def test_every_event_kind(cluster: Cluster, fresh_db: str) -> None:
    setup_simple(cluster, fresh_db)
    cluster.execute("INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)", fresh_db)
    cluster.execute("UPDATE items SET qty = 10 WHERE id = 1", fresh_db)
    cluster.execute("UPDATE items SET id = 3 WHERE id = 2", fresh_db)  # key change: d + c
    cluster.execute("DELETE FROM items WHERE id = 1", fresh_db)
    cluster.execute("TRUNCATE items", fresh_db)
    cluster.execute("SELECT pg_logical_emit_message(true, 'outbox', 'hello')", fresh_db)
    cluster.execute("SELECT pg_logical_emit_message(false, 'nontx', '\\x00ff'::bytea)", fresh_db)
    cluster.execute("INSERT INTO items VALUES (9, 'z', 9)", fresh_db)

    async def main() -> None:
        if pg_major() < 14:
            # pgoutput sends logical decoding messages from 14 on: asking is a clear error.
            r = reader(cluster, fresh_db, include_messages=True, reconnect=False)
            with pytest.raises(pgcdc.NotSupportedError, match="PostgreSQL 14 or later"):
                await take(r, 1)
            await r.stop()
            r = reader(cluster, fresh_db, include_truncate=True, auto_acknowledge=False)
            evs = await take(r, 8)
            assert [e.op for e in evs] == ["c", "c", "u", "d", "c", "d", "t", "c"]
            evs[7:7] = [None, None]  # where the messages would be
        else:
            r = reader(cluster, fresh_db, include_truncate=True, include_messages=True, auto_acknowledge=False)
            evs = await take(r, 10)
            ops = [e.op for e in evs]
            assert ops == ["c", "c", "u", "d", "c", "d", "t", "m", "m", "c"], ops
        ins, _, upd, kd, kc, dele, trunc, msg, nontx, last = evs
        assert ins.before is None and ins.after == {"id": 1, "name": "a", "qty": 1}
        assert upd.after == {"id": 1, "name": "a", "qty": 10} and upd.before is None  # default identity
        assert kd.before == {"id": 2, "name": None, "qty": None} and kd.after is None
        assert kc.after == {"id": 3, "name": "b", "qty": 2}
        assert dele.before == {"id": 1, "name": None, "qty": None}
        assert trunc.before is None and trunc.after is None and trunc.table == "public.items"
        if msg is not None:
            assert msg.message == {"prefix": "outbox", "content": b"hello", "transactional": True}
            assert nontx.message == {"prefix": "nontx", "content": b"\x00\xff", "transactional": False}
        assert last.after["id"] == 9
        # Debezium envelope
        assert ins.source["table"] == "items" and ins.source["schema"] == "public"
        assert ins.source["db"] == fresh_db and isinstance(ins.source["lsn"], int)
        assert ins.source["connector"] == "postgresql"
        assert ins.ts_ms // 1000 == ins.ts_us // 1_000_000 and ins.ts_ns // 1000 == ins.ts_us
        assert pgcdc.get_table_name(ins) == "public.items"
        assert pgcdc.format_operation(ins.op) == "INSERT"
        d = pgcdc.message_to_dict(upd)
        assert d["op"] == "u" and d["after"]["qty"] == 10 and d["source"]["table"] == "items"
        # exactly the keys pgoutput-decoder's message_to_dict had
        assert list(d) == ["op", "before", "after", "source", "ts_ms", "ts_us", "ts_ns"]
        import json

        j = json.loads(pgcdc.message_to_debezium_json(ins))
        assert j["after"] == {"id": 1, "name": "a", "qty": 1} and j["op"] == "c"
        assert pgcdc.message_to_debezium_json(ins, indent=None) == ins.json()
        assert json.loads(ins.json(indent=4)) == json.loads(ins.json())
        # positions: ordered within a transaction, not necessarily consecutive
        assert ins.commit_lsn == evs[1].commit_lsn and 0 < ins.ordinal < evs[1].ordinal
        assert lsn_int(last.commit_lsn) > lsn_int(ins.commit_lsn)
        await r.stop()

    run(main())


def _streamed_workload(cluster: Cluster, db: str) -> list[int]:
    """Transactions bigger than the 64kB logical_decoding_work_mem (streamed while they run),
    with rolled-back savepoints (nested too), an aborted one, and a small transaction that
    commits while a big one is open. Returns the committed ids in commit order."""
    cluster.execute(f'ALTER DATABASE "{db}" SET logical_decoding_work_mem = \'64kB\'')
    cluster.execute("CREATE TABLE big (id int PRIMARY KEY, v text)", db)
    cluster.execute("CREATE PUBLICATION pub FOR TABLE big", db)
    for slot in ("s_mem", "s_disk", "s_off"):
        cluster.execute(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')", db)

    def ins(conn: psycopg.Connection, lo: int, hi: int) -> None:
        conn.execute("INSERT INTO big SELECT g, repeat('v', 40) || g FROM generate_series(%s::int, %s::int) g", [lo, hi])

    with cluster.connect(db, autocommit=False) as conn, cluster.connect(db) as other:
        ins(conn, 1, 10)
        conn.commit()
        ins(conn, 11, 5010)
        conn.execute("SAVEPOINT a")
        ins(conn, 100001, 103000)
        conn.execute("SAVEPOINT b")
        ins(conn, 103001, 104000)
        conn.execute("RELEASE SAVEPOINT b")
        conn.execute("ROLLBACK TO SAVEPOINT a")
        conn.execute("SAVEPOINT c")
        ins(conn, 5011, 6000)
        conn.execute("RELEASE SAVEPOINT c")
        ins(other, 9001, 9005)  # commits first
        conn.execute("UPDATE big SET v = 'updated' WHERE id BETWEEN 11 AND 20")
        conn.execute("DELETE FROM big WHERE id BETWEEN 21 AND 30")
        ins(conn, 6001, 8000)
        conn.commit()
        ins(conn, 200001, 230000)
        conn.rollback()
        ins(conn, 8001, 8010)
        conn.commit()
    return list(range(1, 11)) + list(range(9001, 9006)) + list(range(11, 8001)) + list(range(8001, 8011))


@pytest.mark.smoke
def test_streamed_transactions_are_held_until_their_commit(cluster: Cluster, fresh_db: str) -> None:
    committed = _streamed_workload(cluster, fresh_db)

    async def read(slot: str, **kw) -> tuple[list[dict], int]:
        r = reader(cluster, fresh_db, slot=slot, format="debezium", **kw)
        out: list[dict] = []
        import json

        # every insert, 10 updates and 10 deletes of the big transaction
        async for m in r:
            out.append(json.loads(m.json()))
            if len(out) == len(committed) + 20:
                break
        assert await nothing_within(r, 1.0), "nothing after the last committed transaction"
        spilled = r.stream_spilled_bytes
        await r.stop()
        for e in out:
            for k in ("ts_ms", "ts_us", "ts_ns"):
                e.pop(k)
        return out, spilled

    in_memory, mem_spilled = run(read("s_mem"))
    on_disk, disk_spilled = run(read("s_disk", stream_memory=16 * 1024))
    server, _ = run(read("s_off", streaming=False))
    assert [e["after"]["id"] for e in in_memory if e["op"] == "c"] == committed
    assert in_memory == on_disk == server, "streamed or not, in memory or on disk: the same records"
    assert mem_spilled == 0, mem_spilled
    if pg_major() < 14:
        assert disk_spilled == 0, "nothing streamed, nothing held"
        return  # no streaming (protocol 1) and no pg_stat_replication_slots before 14
    assert disk_spilled > 64 * 1024, disk_spilled
    want_streamed = 2 if pg_major() < 18 else 1
    # The big committed one; the aborted one too up to 17 (18 skips decoding it: it is known
    # aborted by the time the walsender reaches it). 14 reports slot statistics through the
    # stats collector, a moment later: poll.

    def stats() -> dict:
        rows = cluster.execute("SELECT slot_name, stream_txns, spill_bytes FROM pg_stat_replication_slots", fresh_db)
        return {r[0]: r[1:] for r in rows}

    def reported() -> bool:
        st = stats()
        return all(st.get(k, (0, 0))[0] >= want_streamed for k in ("s_mem", "s_disk")) and st.get("s_off", (0, 0))[1] > 0

    wait_for(reported, 15, what="slot statistics")
    st = stats()
    for slot in ("s_mem", "s_disk"):
        stream_txns, spill_bytes = st[slot]
        assert stream_txns >= want_streamed and spill_bytes == 0, (slot, st[slot])
    assert st["s_off"][0] == 0 and st["s_off"][1] > 0, st["s_off"]


def test_only_row_changes_by_default(cluster: Cluster, fresh_db: str) -> None:
    setup_simple(cluster, fresh_db)
    cluster.execute("INSERT INTO items VALUES (1, 'a', 1)", fresh_db)
    cluster.execute("TRUNCATE items", fresh_db)
    cluster.execute("SELECT pg_logical_emit_message(true, 'outbox', 'x')", fresh_db)
    cluster.execute("INSERT INTO items VALUES (2, 'b', 2)", fresh_db)

    async def main() -> None:
        r = reader(cluster, fresh_db)
        evs = await take(r, 2)
        assert [(e.op, e.after["id"]) for e in evs] == [("c", 1), ("c", 2)]
        await r.stop()

    run(main())


def test_replica_identity_full_and_unchanged_toast(cluster: Cluster, fresh_db: str) -> None:
    cluster.execute("CREATE TABLE big (id int PRIMARY KEY, doc text, n int)", fresh_db)
    cluster.execute("CREATE TABLE bigfull (id int PRIMARY KEY, doc text, n int)", fresh_db)
    cluster.execute("ALTER TABLE bigfull REPLICA IDENTITY FULL", fresh_db)
    for t in ("big", "bigfull"):  # stored out of line even though it would compress
        cluster.execute(f"ALTER TABLE {t} ALTER COLUMN doc SET STORAGE EXTERNAL", fresh_db)
    cluster.execute("CREATE PUBLICATION pub FOR TABLE big, bigfull", fresh_db)
    cluster.execute("SELECT pg_create_logical_replication_slot('slot', 'pgoutput')", fresh_db)
    cluster.execute("INSERT INTO big VALUES (1, repeat(md5('x'), 4000), 1)", fresh_db)
    cluster.execute("INSERT INTO bigfull VALUES (1, repeat(md5('y'), 4000), 1)", fresh_db)
    cluster.execute("UPDATE big SET n = 2", fresh_db)
    cluster.execute("UPDATE bigfull SET n = 2", fresh_db)

    async def main() -> None:
        r = reader(cluster, fresh_db)
        _, _, upd, updfull = await take(r, 4)
        # never a fake value: left out, and named
        assert upd.after == {"id": 1, "n": 2}
        assert upd.unchanged_columns == ("doc",)
        assert '"unchanged_columns":["doc"]' in upd.json()
        assert upd.to_dict()["unchanged_columns"] == ("doc",)
        # REPLICA IDENTITY FULL: the old row supplies the value
        assert updfull.after["doc"] == updfull.before["doc"] and len(updfull.after["doc"]) == 128000
        assert updfull.unchanged_columns == ()
        assert updfull.before["n"] == 1 and updfull.after["n"] == 2
        await r.stop()

    run(main())


# ----------------------------------------------------------------- types


def _typematrix(cluster: Cluster, db: str) -> None:
    setup, dml = TYPEMATRIX_SQL.read_text(), TYPEMATRIX_DML_SQL.read_text()
    cluster.psql("-f", "-", dbname=db, input=setup)
    cluster.execute("SELECT pg_create_logical_replication_slot('tm_slot', 'pgoutput')", db)
    cluster.psql("-f", "-", dbname=db, input=dml)


@pytest.mark.smoke
def test_typematrix_values_round_trip(cluster: Cluster, fresh_db: str) -> None:
    _typematrix(cluster, fresh_db)

    async def main() -> None:
        messages = pg_major() >= 14  # pgoutput sends logical decoding messages from 14 on
        r = reader(cluster, fresh_db, pub="tm_pub", slot="tm_slot", include_truncate=True, include_messages=messages,
                   rich_types=True)
        evs = await take(r, 29 if messages else 28, timeout=30)
        assert await nothing_within(r, 0.5)
        await r.stop()
        return evs

    evs = run(main())
    tm = [e for e in evs if e.table == "public.tm_types"]
    row1, row2, row3 = (e.after for e in tm[:3])
    expected1 = TYPEMATRIX_ROW1
    assert row1 == expected1
    for k, v in expected1.items():  # same types, not just equal values
        assert type(row1[k]) is type(v), k
    assert str(row1["c_numeric"]) == "12345678.1234"  # scale kept
    assert row2 == {k: (2 if k == "id" else None) for k in expected1}
    assert row3["c_float4"] != row3["c_float4"]  # NaN
    assert row3["c_float8"] == float("-inf")
    assert row3["c_numeric_any"].is_nan()
    assert row3["c_date"] == "infinity" and row3["c_ts"] == "-infinity"
    assert row3["c_tstz"] == "0044-03-15 12:00:00+00 BC"
    assert row3["c_text"] == "" and row3["c_int_arr"] == [] and row3["c_text_arr"] == [] and row3["c_jsonb"] == []
    assert pgcdc.Interval(14, 3, 14706789000).to_timedelta() == dt.timedelta(days=14 * 30 + 3, microseconds=14706789000)
    # the rest of the DML: TOAST, generated column, partition root, schema change, message
    by_table = {}
    for e in evs:
        by_table.setdefault(e.table, []).append(e)
    toast = by_table["public.tm_toast"]  # compressible: stored inline, so sent again
    assert toast[1].op == "u" and len(toast[1].after["big"]) == 128000
    assert by_table["public.tm_gen"][0].after == {"id": 1, "a": 21}  # PG15 does not publish generated columns
    assert {e.after["region"] for e in by_table["public.tm_part"] if e.after} >= {"eu", "us"}
    assert by_table["public.tm_default"][-1].after == {"id": 20, "name": "after alter", "qty": 5, "note": "n/a"}
    assert [e.op for e in by_table["public.tm_nopk"]] == ["c", "u", "d", "t"]
    assert [e.message["prefix"] for e in evs if e.op == "m"] == (["outbox"] if pg_major() >= 14 else [])
    assert all(e.after["id"] != 11 for e in by_table["public.tm_default"] if e.after)  # rolled back


def test_typematrix_seed_json_equals_its_dict_for_every_message(cluster: Cluster, fresh_db: str) -> None:
    """Every type, TOAST, truncate and messages: the seed JSON and message_to_dict agree."""
    import json

    _typematrix(cluster, fresh_db)
    messages = pg_major() >= 14  # pgoutput sends logical decoding messages from 14 on

    async def main() -> list:
        r = reader(cluster, fresh_db, pub="tm_pub", slot="tm_slot", include_truncate=True, include_messages=messages)
        evs = await take(r, 29 if messages else 28, timeout=30)
        await r.stop()
        return evs

    evs = run(main())
    for m in evs:
        assert json.loads(m.json()) == pgcdc.message_to_dict(m), m
        assert list(json.loads(m.json()))[:7] == SEED_ENVELOPE
    row1 = evs[0].after
    assert evs[0].table == "public.tm_types"
    assert {k: row1[k] for k in ("c_date", "c_ts", "c_tstz", "c_timetz", "c_uuid", "c_numeric")} == {
        "c_date": "2024-02-29", "c_ts": "2024-01-15 10:30:00.000001", "c_tstz": "2024-01-15 10:30:00+00",
        "c_timetz": "13:45:59+05:30", "c_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "c_numeric": Decimal("12345678.1234")}
    assert [pgcdc.message_to_dict(m)["message"]["prefix"] for m in evs if m.op == "m"] == (
        ["outbox"] if messages else [])


def test_debezium_format_is_debeziums_own_encoding(cluster: Cluster, fresh_db: str) -> None:
    """format="debezium": the first type-matrix row's value as real Debezium 3.6.3 wrote it
    (tests/fixtures/debezium/default_noschema.jsonl), key for key and in its order, apart from
    the two documented differences (README "Differences from Debezium")."""
    import json

    from workload import DEBEZIUM_DIR

    _typematrix(cluster, fresh_db)
    golden = json.loads((DEBEZIUM_DIR / "default_noschema.jsonl").read_text().splitlines()[0])["value"]

    async def main() -> list:
        r = reader(cluster, fresh_db, pub="tm_pub", slot="tm_slot", format="debezium")
        (e,) = await take(r, 1, timeout=30)
        await r.stop()
        return e

    e = run(main())
    ours = json.loads(e.json())
    assert list(ours) == list(golden) and list(ours["source"]) == list(golden["source"])
    differ = {"c_2d_arr", "c_composite"}  # Debezium: [null,null] and the column dropped
    assert [(k, v) for k, v in ours["after"].items() if k not in differ] == [
        (k, v) for k, v in golden["after"].items() if k not in differ]
    assert "c_composite" not in golden["after"]
    assert ours["after"]["c_2d_arr"] == [[1, 2], [3, 4]] and golden["after"]["c_2d_arr"] == [None, None]


def test_debezium_options_change_the_json(cluster: Cluster, fresh_db: str) -> None:
    cluster.execute("CREATE TABLE m (id int PRIMARY KEY, price numeric(10,2))", fresh_db)
    cluster.execute("CREATE PUBLICATION pub FOR TABLE m", fresh_db)
    cluster.execute("SELECT pg_create_logical_replication_slot('slot', 'pgoutput')", fresh_db)
    cluster.execute("INSERT INTO m VALUES (1, 12.50)", fresh_db)

    async def main() -> None:
        r = reader(cluster, fresh_db, debezium_options={"decimal.handling.mode": "string", "topic.prefix": "shop"})
        (e,) = await take(r, 1)
        assert '"price":"12.50"' in e.json() and e.source["name"] == "shop"
        assert e.after["price"] == Decimal("12.50")
        await r.stop()
        with pytest.raises(pgcdc.InterfaceError, match="unknown option"):
            reader(cluster, fresh_db, debezium_options={"no.such.option": "1"})

    run(main())


def test_message_prefix_lists_choose_the_logical_messages(cluster: Cluster, fresh_db: str) -> None:
    """Logical messages carry no identity (any role that can connect may emit them): Debezium's
    message.prefix.include.list / exclude.list decide which become events. A filtered message
    leaves the others' positions as they are without the filter."""
    setup_simple(cluster, fresh_db)
    for s in ("slot_inc", "slot_exc"):
        cluster.execute(f"SELECT pg_create_logical_replication_slot('{s}', 'pgoutput')", fresh_db)
    cluster.psql(
        dbname=fresh_db,
        input="""
        BEGIN;
        INSERT INTO items VALUES (1, 'a', 1);
        SELECT pg_logical_emit_message(true, 'evil', 'injected');
        SELECT pg_logical_emit_message(true, 'Outbox', 'kept: prefixes match case-insensitively');
        INSERT INTO items VALUES (2, 'b', 2);
        COMMIT;
        SELECT pg_logical_emit_message(false, 'outbox.audit', 'not in a transaction');
        SELECT pg_logical_emit_message(false, 'outboxes', 'a prefix must match whole');
        INSERT INTO items VALUES (3, 'c', 3);
        """,
    )

    def summary(evs: list) -> list:
        return [e.message["prefix"] if e.op == "m" else e.after["id"] for e in evs]

    async def main() -> None:
        everything = await take(reader(cluster, fresh_db, include_messages=True), 7)
        assert summary(everything) == [1, "evil", "Outbox", 2, "outbox.audit", "outboxes", 3]
        include = {"message.prefix.include.list": r"outbox, outbox\.audit"}
        inc_reader = reader(cluster, fresh_db, slot="slot_inc", include_messages=True, debezium_options=include)
        included = await take(inc_reader, 5)
        assert summary(included) == [1, "Outbox", 2, "outbox.audit", 3]
        assert await nothing_within(inc_reader, 1)
        exclude = {"message.prefix.exclude.list": "evil,outbox.+"}
        excluded = await take(reader(cluster, fresh_db, slot="slot_exc", include_messages=True, debezium_options=exclude), 4)
        assert summary(excluded) == [1, "Outbox", 2, 3]
        positions = {(e.commit_lsn, e.ordinal): summary([e]) for e in everything}
        for e in included + excluded:
            assert positions[(e.commit_lsn, e.ordinal)] == summary([e]), "same position as unfiltered"
        both = {**include, **exclude}
        with pytest.raises(pgcdc.InterfaceError, match="cannot both be set"):
            reader(cluster, fresh_db, slot="slot_inc", include_messages=True, debezium_options=both)
        with pytest.raises(pgcdc.InterfaceError, match="invalid regular expression"):
            reader(cluster, fresh_db, slot="slot_inc", debezium_options={"message.prefix.include.list": "(x"})


#: What pgoutput-decoder 0.1.0 gives (its PyPI sdist, read for these facts: README "Message
#: Format" and "Supported PostgreSQL Types", python/pgoutput_decoder/__init__.py
#: message_to_dict, tests/test_json_serialization.py): these envelope keys in this order, no
#: "transaction"; numbers as JSON numbers, json/jsonb nested, dates, times, timestamps and uuid
#: as ISO 8601 text, and message_to_dict(m) == json.loads(message_to_debezium_json(m)).
SEED_ENVELOPE = ["op", "before", "after", "source", "ts_ms", "ts_us", "ts_ns"]


def _seed_table(cluster: Cluster, db: str) -> None:
    cluster.execute(
        "CREATE TABLE acct (id int PRIMARY KEY, name varchar(100), balance numeric(10,2), big numeric(30,10),"
        " small numeric, score float8, ratio real, active bool, metadata jsonb, doc json, tags text[],"
        " created_at timestamp, seen timestamptz, day date, at time, uid uuid, blob bytea, span interval,"
        " nums numeric[], days date[])", db)
    cluster.execute("ALTER TABLE acct REPLICA IDENTITY FULL", db)
    cluster.execute("CREATE PUBLICATION pub FOR TABLE acct", db)
    cluster.execute("SELECT pg_create_logical_replication_slot('slot', 'pgoutput')", db)
    cluster.execute(
        "INSERT INTO acct VALUES (1, 'Diana', 750.00, 12345678901234567890.1234567890, 0.1, 0.1, 3.14, true,"
        """ '{"role": "admin", "count": 42, "n": [1, 2.5, {"x": null}]}', '{"a": [1, 2], "s": "x y"}', '{a,"b c",NULL}',"""
        " '2024-01-15 10:30:00.5', '2024-01-15 10:30:00+00', '2024-02-29', '13:45:59',"
        " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\xdeadbeef00', '1 year 2 mons 3 days 04:05:06.789',"
        " '{1.10,NaN}', '{2024-02-29,infinity}')", db)
    cluster.execute("UPDATE acct SET balance = 800.00, score = 'Infinity', small = 'NaN' WHERE id = 1", db)
    cluster.execute("DELETE FROM acct WHERE id = 1", db)


def test_seed_format_is_the_libraries_json_and_exact(cluster: Cluster, fresh_db: str) -> None:
    import json

    _seed_table(cluster, fresh_db)

    async def main() -> list:
        r = reader(cluster, fresh_db)
        evs = await take(r, 3)
        await r.stop()
        return evs

    ins, upd, dele = run(main())
    for m in (ins, upd, dele):
        text = pgcdc.message_to_debezium_json(m)
        assert json.loads(text) == pgcdc.message_to_dict(m)  # plain json, every message
        for indent in (None, 0, 2, 4):
            assert json.loads(pgcdc.message_to_debezium_json(m, indent=indent)) == pgcdc.message_to_dict(m)
        assert list(json.loads(text)) == SEED_ENVELOPE and list(pgcdc.message_to_dict(m)) == SEED_ENVELOPE
        assert pgcdc.message_to_debezium_json(m, indent=None) == m.json()
    event = json.loads(pgcdc.message_to_debezium_json(upd))
    assert event["before"]["balance"] == 750.0 and event["after"]["balance"] == 800.0
    # numerics are the exact digits, never through a float
    assert '"big":12345678901234567890.1234567890' in ins.json() and '"balance":750.00' in ins.json()
    exact = json.loads(ins.json(), parse_float=Decimal)["after"]
    assert str(exact["big"]) == "12345678901234567890.1234567890" and exact["small"] == Decimal("0.1")
    assert ins.after["big"] == Decimal("12345678901234567890.1234567890") and type(ins.after["big"]) is Decimal
    view = pgcdc.message_to_dict(ins)["after"]
    assert isinstance(view["big"], Decimal) and str(view["big"]) == "12345678901234567890.1234567890"
    # json/jsonb nested (whitespace gone: one compact line), arrays as lists
    assert '"doc":{"a":[1,2],"s":"x y"}' in ins.json() and "\n" not in ins.json()
    assert event["after"]["metadata"] == {"role": "admin", "count": 42, "n": [1, 2.5, {"x": None}]}
    # the library's Python types (README table), exact where it lost data
    a = ins.after
    expected = {
        "id": 1, "name": "Diana", "balance": Decimal("750.00"), "big": Decimal("12345678901234567890.1234567890"),
        "small": Decimal("0.1"), "score": 0.1, "ratio": 3.14, "active": True,
        "metadata": {"role": "admin", "count": 42, "n": [1, 2.5, {"x": None}]}, "doc": {"a": [1, 2], "s": "x y"},
        "tags": ["a", "b c", None], "created_at": "2024-01-15 10:30:00.5", "seen": "2024-01-15 10:30:00+00",
        "day": "2024-02-29", "at": "13:45:59", "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "blob": b"\xde\xad\xbe\xef\x00", "span": "1 year 2 mons 3 days 04:05:06.789",
        "days": ["2024-02-29", "infinity"],
    }
    assert {k: v for k, v in a.items() if k != "nums"} == expected
    for k, v in expected.items():
        assert type(a[k]) is type(v), k
    assert a["nums"][0] == Decimal("1.10") and a["nums"][1].is_nan()
    # what JSON cannot hold: bytea as base64, NaN and infinities as strings, in the JSON and the dict
    assert view["blob"] == "3q2+7wA=" and view["nums"] == [Decimal("1.10"), "NaN"]
    assert upd.after["score"] == float("inf") and pgcdc.message_to_dict(upd)["after"]["score"] == "Infinity"
    assert upd.after["small"].is_nan() and json.loads(upd.json())["after"]["small"] == "NaN"
    assert dele.before["name"] == "Diana" and dele.after is None
    assert "transaction" not in json.loads(dele.json())


def test_rich_types_and_debezium_format_are_opt_ins(cluster: Cluster, fresh_db: str) -> None:
    import base64
    import json

    _seed_table(cluster, fresh_db)

    async def main() -> None:
        r = reader(cluster, fresh_db, rich_types=True)
        (ins,) = await take(r, 1)
        await r.stop()
        assert ins.after["created_at"] == dt.datetime(2024, 1, 15, 10, 30, 0, 500000)
        assert ins.after["seen"] == dt.datetime(2024, 1, 15, 10, 30, tzinfo=dt.timezone.utc)
        assert ins.after["day"] == dt.date(2024, 2, 29) and ins.after["at"] == dt.time(13, 45, 59)
        assert isinstance(ins.after["span"], pgcdc.Interval)
        assert json.loads(ins.json()) == pgcdc.message_to_dict(ins)  # the JSON does not change
        cluster.execute("SELECT pg_drop_replication_slot('slot')", fresh_db)
        cluster.execute("SELECT pg_create_logical_replication_slot('slot', 'pgoutput')", fresh_db)
        cluster.execute("INSERT INTO acct (id, balance, metadata) VALUES (2, 750.00, '{\"a\": 1}')", fresh_db)
        r = reader(cluster, fresh_db, format="debezium")
        (dbz,) = await take(r, 1)
        await r.stop()
        # Debezium's encoding: precise decimals as Connect Decimal bytes, jsonb as a string
        env = json.loads(dbz.json())
        assert list(env)[:5] == ["before", "after", "source", "transaction", "op"] and env["transaction"] is None
        assert env["after"]["balance"] == base64.b64encode((75000).to_bytes(3, "big", signed=True)).decode()
        assert env["after"]["metadata"] == '{"a": 1}'
        assert pgcdc.message_to_debezium_json(dbz, indent=None) == dbz.json()
        assert dbz.after["balance"] == Decimal("750.00")
        with pytest.raises(pgcdc.InterfaceError, match="format"):
            reader(cluster, fresh_db, format="avro")
        with pytest.raises(pgcdc.InterfaceError, match="debezium_options"):
            reader(cluster, fresh_db, format="seed", debezium_options={"topic.prefix": "x"})

    run(main())


# ----------------------------------------------------------------- acknowledgement


def test_auto_ack_confirms_processed_transactions(cluster: Cluster, fresh_db: str) -> None:
    setup_simple(cluster, fresh_db)
    start = confirmed_flush(cluster, "slot", fresh_db)
    for i in range(3):
        cluster.execute("INSERT INTO items VALUES (%s, 'x', 1)", fresh_db, [i])

    async def main() -> None:
        r = reader(cluster, fresh_db)
        evs = await take(r, 2)
        # the 2nd event is delivered but not processed yet (the loop did not come back)
        await r.stop()
        return evs

    evs = run(main())
    flushed = confirmed_flush(cluster, "slot", fresh_db)
    assert lsn_int(flushed) > lsn_int(start)
    assert lsn_int(flushed) < lsn_int(evs[1].commit_lsn)  # tx 2 not confirmed

    async def again() -> None:
        r = reader(cluster, fresh_db)
        evs = await take(r, 2)  # at-least-once: the unprocessed one comes again
        assert [e.after["id"] for e in evs] == [1, 2]
        with pytest.raises(pgcdc.InterfaceError, match="No pending LSN"):
            await r.acknowledge()
        with pytest.raises(RuntimeError, match="No pending LSN"):  # what pgoutput-decoder raised
            await r.acknowledge()
        assert await nothing_within(r, 0.5)
        await r.stop()
        with pytest.raises(pgcdc.InterfaceError, match="stopped"):
            await r.acknowledge("0/1")

    run(again())
    assert lsn_int(confirmed_flush(cluster, "slot", fresh_db)) >= lsn_int(evs[1].commit_lsn)


def test_idle_stream_confirms_the_wal_end_of_unpublished_churn(cluster: Cluster, fresh_db: str) -> None:
    """Nothing published happens while another table is busy: the keepalives' WAL end is
    confirmed, so the slot does not pin WAL (this cannot come from a commit confirmation)."""
    setup_simple(cluster, fresh_db)
    cluster.execute("CREATE TABLE other (id int, pad text)", fresh_db)

    async def main() -> None:
        r = reader(cluster, fresh_db)
        assert await nothing_within(r, 0.3)
        for _ in range(5):
            cluster.execute("INSERT INTO other SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g", fresh_db)
        (end,) = cluster.execute("SELECT pg_current_wal_lsn()::text", fresh_db)[0]
        await await_for(lambda: lsn_int(confirmed_flush(cluster, "slot", fresh_db)) >= lsn_int(end), timeout=30,
                        what="the slot to confirm the WAL end of unpublished changes")
        assert r.sessions == 1
        await r.stop()

    run(main())


def test_manual_ack(cluster: Cluster, fresh_db: str) -> None:
    setup_simple(cluster, fresh_db)
    cluster.execute("INSERT INTO items VALUES (1, 'a', 1)", fresh_db)
    cluster.execute("INSERT INTO items VALUES (2, 'b', 1), (3, 'c', 1), (4, 'd', 1)", fresh_db)

    async def first() -> None:
        r = reader(cluster, fresh_db, auto_acknowledge=False)
        evs = await take(r, 2)  # C1, then the first of the 3-row transaction
        await r.acknowledge()
        await r.stop()
        return evs

    evs = run(first())
    flushed = confirmed_flush(cluster, "slot", fresh_db)
    # tx 1 complete and acknowledged; tx 2 only partly: not confirmed
    assert lsn_int(evs[0].commit_lsn) < lsn_int(flushed) <= lsn_int(evs[1].commit_lsn)

    async def second() -> None:
        r = reader(cluster, fresh_db, auto_acknowledge=False)
        evs = await take(r, 3)
        assert [e.after["id"] for e in evs] == [2, 3, 4]  # the partly acked tx comes whole
        before = confirmed_flush(cluster, "slot", fresh_db)
        await asyncio.sleep(0.3)
        assert confirmed_flush(cluster, "slot", fresh_db) == before  # nothing acked yet
        await r.acknowledge()
        await await_for(lambda: lsn_int(confirmed_flush(cluster, "slot", fresh_db)) > lsn_int(evs[0].commit_lsn),
                        what="confirmed_flush_lsn to move after acknowledge()")
        await r.acknowledge()  # nothing new: a no-op in manual mode
        await r.stop()

    run(second())


def test_leaving_the_loop_and_iterating_again_continues(cluster: Cluster, fresh_db: str) -> None:
    setup_simple(cluster, fresh_db)
    cluster.execute("INSERT INTO items SELECT g, 'x', g FROM generate_series(1, 5) g", fresh_db)

    async def main() -> None:
        r = reader(cluster, fresh_db)
        seen = []
        async for e in r:
            seen.append(e.after["id"])
            if len(seen) == 2:
                break
        async for e in r:
            seen.append(e.after["id"])
            if len(seen) == 5:
                break
        assert seen == [1, 2, 3, 4, 5]
        await r.stop()
        with pytest.raises(StopAsyncIteration):
            await r.__anext__()

    run(main())


def test_seed_library_api(cluster: Cluster, fresh_db: str) -> None:
    import pgcdc as pgoutput_decoder

    setup_simple(cluster, fresh_db, identity_full=True)
    cluster.execute("INSERT INTO items VALUES (1, 'Alice', 5000)", fresh_db)

    async def main() -> None:
        r = pgoutput_decoder.LogicalReplicationReader(
            publication_name="pub",
            slot_name="slot",
            host="127.0.0.1",
            database=fresh_db,
            port=cluster.port,
            user="postgres",
            password="",
            auto_acknowledge=False,
        )
        messages = []
        async for message in r:
            if message is not None and message.op == "c":
                messages.append(message)
                await r.acknowledge()
                break
        await r.stop()
        assert messages[0].after["name"] == "Alice"
        assert messages[0].source["lsn"] > 0 and messages[0].ts_us is not None

    run(main())


# ----------------------------------------------------------------- failures and recovery


def test_reconnects_after_walsender_is_terminated(cluster: Cluster, fresh_db: str) -> None:
    setup_simple(cluster, fresh_db)
    cluster.execute("INSERT INTO items VALUES (1, 'a', 1)", fresh_db)

    async def main() -> None:
        r = reader(cluster, fresh_db, auto_acknowledge=False)
        (e1,) = await take(r, 1)
        pid = r.backend_pid
        assert pid
        cluster.execute("SELECT pg_terminate_backend(%s)", fresh_db, [pid])
        cluster.execute("INSERT INTO items VALUES (2, 'b', 1)", fresh_db)
        (e2,) = await take(r, 1)  # no duplicate of e1 in this process
        assert e2.after["id"] == 2
        assert r.sessions == 2 and r.backend_pid != pid
        await r.acknowledge()
        await r.stop()

    run(main())


def test_reconnects_after_server_restart_and_fast_shutdown_does_not_hang() -> None:
    c = Cluster(name="pgcdc-restart")
    with c:
        setup_simple(c, "postgres")
        c.execute("INSERT INTO items VALUES (1, 'a', 1)")

        async def main() -> None:
            r = reader(c, "postgres", auto_acknowledge=False)
            (e1,) = await take(r, 1)
            # connected, one event delivered and NOT acknowledged: a fast shutdown must not
            # wait for a confirmation the reader cannot give
            t0 = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, lambda: c.restart(mode="fast"))
            assert time.monotonic() - t0 < 20
            c.execute("INSERT INTO items VALUES (2, 'b', 1)")
            (e2,) = await take(r, 1, timeout=30)
            assert e2.after["id"] == 2
            assert r.sessions >= 2
            await r.acknowledge()
            await r.stop()
            # stop() flushed the acknowledgement
            assert lsn_int(confirmed_flush(c, "slot")) >= lsn_int(e2.commit_lsn)

        run(main(), timeout=90)
        # pg_ctl stop with an idle, fully acknowledged reader connected
        async def idle() -> None:
            r = reader(c, "postgres")
            assert await nothing_within(r, 0.5)
            t0 = time.monotonic()
            proc = await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: c._run([c.bin("pg_ctl"), "-D", str(c.datadir), "-m", "fast", "-w", "-t", "20", "stop"], check=False),
            )
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert time.monotonic() - t0 < 10
            await r.stop()

        run(idle(), timeout=60)


_READ_IN_A_NEW_PROCESS = """
import asyncio, json, sys
import pgcdc

async def main():
    port, store, quiet = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    r = pgcdc.LogicalReplicationReader("pub", "slot", host="127.0.0.1", database="postgres", port=port,
                                       auto_acknowledge=False, offset_store=store or None)
    ids = []
    it = r.__aiter__()
    while True:
        try:
            e = await asyncio.wait_for(it.__anext__(), quiet)
        except asyncio.TimeoutError:
            break
        ids.append(e.after["id"])
    await r.acknowledge()
    await r.stop()
    print(json.dumps(ids))

asyncio.run(main())
"""


def _read_in_a_new_process(c: Cluster, store: Path, quiet: float = 3.0) -> list[int]:
    import json

    p = subprocess.run([sys.executable, "-c", _READ_IN_A_NEW_PROCESS, str(c.port), str(store), str(quiet)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_offset_store_keeps_acknowledged_events_acknowledged_across_a_server_restart(tmp_path: Path) -> None:
    """PostgreSQL 15 writes a logical slot's confirmed_flush_lsn to disk only when its
    restart_lsn or xmin moves, so after `pg_ctl restart -m fast` the slot resends what was
    acknowledged. With offset_store the reader persists the acknowledged position itself and
    skips what the server resends at or below it: nothing acknowledged comes back, nothing
    unacknowledged is lost (also within a partly acknowledged transaction)."""
    store = tmp_path / "offsets" / "slot.json"
    store.parent.mkdir()
    c = Cluster(name="pgcdc-offsets")
    with c:
        setup_simple(c, "postgres")
        for t in range(100):  # 1,000 events in 100 transactions
            c.execute("INSERT INTO items SELECT g, 'acked', g FROM generate_series(%s::int, %s::int) g", params=[t * 10 + 1, t * 10 + 10])
        c.execute("INSERT INTO items SELECT g, 'partly', g FROM generate_series(1001, 1010) g")

        async def first() -> None:
            r = reader(c, "postgres", auto_acknowledge=False, offset_store=store)
            evs = await take(r, 1004, timeout=60)
            await r.acknowledge()  # 1,000 events and 4 of the last transaction's 10
            assert [e.after["id"] for e in evs] == list(range(1, 1005))
            more = await take(r, 2)  # delivered, never acknowledged
            assert [e.after["id"] for e in more] == [1005, 1006]
            await r.stop()

        run(first(), timeout=120)
        assert store.exists() and not list(store.parent.glob("*.tmp"))
        c.restart(mode="fast")
        c.execute("INSERT INTO items VALUES (2000, 'after restart', 1)")
        assert _read_in_a_new_process(c, store) == list(range(1005, 1011)) + [2000]
        # ... and that was acknowledged too: a third process gets nothing, even after another restart
        c.restart(mode="fast")
        assert _read_in_a_new_process(c, store, quiet=1.5) == []


def test_offset_store_of_another_slot_or_cluster_is_refused(cluster: Cluster, fresh_db: str, tmp_path: Path) -> None:
    """Skipping by somebody else's positions would lose events: a store of another slot,
    database or cluster is an error, and so is a file that is not an offset store."""
    import json

    setup_simple(cluster, fresh_db)
    store = tmp_path / "o.json"
    store.write_text(json.dumps({"slot": "slot", "database": fresh_db, "system_identifier": "1", "flushed": "0/1"}))

    async def main() -> None:
        with pytest.raises(pgcdc.OperationalError, match="system identifier 1") as ei:
            await take(reader(cluster, fresh_db, offset_store=store), 1)
        assert ei.value.sqlstate == "55000" and ei.value.hint
        with pytest.raises(pgcdc.InterfaceError, match='belongs to slot "slot"'):
            reader(cluster, fresh_db, slot="other", offset_store=store)
        store.write_text("not json")
        with pytest.raises(pgcdc.OperationalError, match="not an offset file"):
            reader(cluster, fresh_db, offset_store=store)
        # a new store is bound to this cluster with the first acknowledgement
        store.unlink()
        cluster.execute("INSERT INTO items VALUES (1, 'a', 1)", fresh_db)
        r = reader(cluster, fresh_db, offset_store=store, auto_acknowledge=False)
        (e,) = await take(r, 1)
        await r.acknowledge()
        await r.stop()
        saved = json.loads(store.read_text())
        (sysid,) = cluster.execute("SELECT system_identifier::text FROM pg_control_system()")[0]
        assert saved["system_identifier"] == sysid and saved["acknowledged"] == [e.commit_lsn, e.ordinal]

    run(main())


def test_reconnect_false_raises_when_the_server_ends_the_stream() -> None:
    """A server that ends the stream (CopyDone) while the next connection would work:
    reconnect=False raises instead of reconnecting."""
    connections = []

    def row(*values: str) -> bytes:
        body = len(values).to_bytes(2, "big")
        for v in values:
            body += len(v.encode()).to_bytes(4, "big") + v.encode()
        return pg_message(b"D", body)

    async def script(server: FakeServer, reader, writer) -> None:
        connections.append(1)
        writer.write(auth_request(0) + pg_message(b"S", b"server_version\x0015.4\x00") + pg_message(b"Z", b"I"))
        await writer.drain()
        while True:
            tag, body = await server.read_message(reader)
            if tag != b"Q":
                continue
            sql = body.rstrip(b"\0").decode()
            if sql.startswith("START_REPLICATION"):
                writer.write(pg_message(b"W", b"\x00\x00\x00") + pg_message(b"c", b""))  # CopyBoth, then CopyDone
            elif "pg_replication_slots" in sql:
                writer.write(row("pgoutput", "db") + pg_message(b"C", b"SELECT 1\0") + pg_message(b"Z", b"I"))
            elif "pg_publication" in sql:
                writer.write(row("1") + pg_message(b"C", b"SELECT 1\0") + pg_message(b"Z", b"I"))
            elif sql.startswith("SHOW"):
                writer.write(row("60s") + pg_message(b"C", b"SHOW\0") + pg_message(b"Z", b"I"))
            await writer.drain()

    async def main() -> None:
        async with FakeServer(script) as srv:
            r = pgcdc.LogicalReplicationReader("p", "s", "127.0.0.1", "db", port=srv.port, connect_timeout=5,
                                               sslmode="disable", reconnect=False)
            with pytest.raises(pgcdc.ConnectionError, match="reconnect=False"):
                await take(r, 1, timeout=10)
            assert len(connections) == 1 and r.sessions == 1
            await r.stop()

    run(main(), timeout=30)


def test_a_silent_connection_is_given_up_and_reopened() -> None:
    """Half-open TCP (the server's host vanished): nothing arrives, nothing fails. The reader
    asks for a reply after wal_sender_timeout/2 and reconnects after 2 x wal_sender_timeout."""
    c = Cluster(name="pgcdc-silent", settings={"wal_sender_timeout": "2s"})
    with c:
        setup_simple(c, "postgres")
        proxy = FreezableProxy(c.port)
        try:

            async def main() -> None:
                r = pgcdc.LogicalReplicationReader("pub", "slot", host="127.0.0.1", database="postgres",
                                                   port=proxy.port, connect_timeout=5)
                _open.append(r)
                c.execute("INSERT INTO items VALUES (1, 'a', 1)")
                (e1,) = await take(r, 1)
                proxy.freeze()
                t0 = time.monotonic()
                c.execute("INSERT INTO items VALUES (2, 'b', 1)")
                (e2,) = await take(r, 1, timeout=30)  # through a new connection
                assert e2.after["id"] == 2 and r.sessions == 2
                assert 3 < time.monotonic() - t0 < 20
                await r.stop()

            run(main(), timeout=60)
        finally:
            proxy.close()


def test_stop_while_connecting_is_prompt() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)

    async def main() -> None:
        r = pgcdc.LogicalReplicationReader("p", "s", "127.0.0.1", "db", port=silent.getsockname()[1], connect_timeout=30)
        waiting = asyncio.ensure_future(take(r, 1, timeout=60))
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        await r.stop()
        assert time.monotonic() - t0 < 2
        assert await waiting == []  # the iteration ended, without an event

    try:
        run(main(), timeout=20)
    finally:
        silent.close()


# ----------------------------------------------------------------- protocol-level checks (a fake server)


def _fake_reader(port: int, **kw) -> pgcdc.LogicalReplicationReader:
    kw.setdefault("sslmode", "disable")
    return pgcdc.LogicalReplicationReader("p", "s", "127.0.0.1", "db", port=port, user="u", password="secret",
                                          connect_timeout=5, **kw)


def test_scram_cannot_be_cut_short() -> None:
    """A server (or a man in the middle) that says AuthenticationOk right after the client's
    first SCRAM message has not proved it knows the password: refused."""

    async def script(server: FakeServer, reader, writer) -> None:
        writer.write(auth_request(10, b"SCRAM-SHA-256\0\0"))
        await writer.drain()
        await server.read_message(reader)  # SASLInitialResponse
        writer.write(auth_request(0) + pg_message(b"Z", b"I"))
        await writer.drain()
        await reader.read()  # until the client hangs up

    async def main() -> None:
        async with FakeServer(script) as srv:
            t0 = time.monotonic()
            with pytest.raises(pgcdc.ConnectionError, match="SCRAM"):
                await take(_fake_reader(srv.port), 1)
            assert time.monotonic() - t0 < 5

    run(main(), timeout=30)


def test_cleartext_password_only_over_tls_or_when_allowed() -> None:
    async def script(server: FakeServer, reader, writer) -> None:
        writer.write(auth_request(3))
        await writer.drain()
        try:
            await server.read_message(reader)  # the password, if the client sends it
        except asyncio.IncompleteReadError:
            return
        writer.write(pg_message(b"E", b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"))
        await writer.drain()

    async def main() -> None:
        async with FakeServer(script) as srv:
            with pytest.raises(pgcdc.ConnectionError, match="cleartext"):
                await take(_fake_reader(srv.port), 1)
            assert b"p" not in srv.seen, "the password was sent in the clear"
            with pytest.raises(pgcdc.AuthenticationError):
                await take(_fake_reader(srv.port, allow_cleartext_password=True), 1)
            assert b"p" in srv.seen

    run(main(), timeout=30)


def test_a_protocol_violation_is_an_internal_error() -> None:
    async def script(server: FakeServer, reader, writer) -> None:
        pass

    async def main() -> None:
        async with FakeServer(script, ssl_answer=b"X") as srv:
            with pytest.raises(pgcdc.InternalError, match="SSLRequest"):
                await take(_fake_reader(srv.port, sslmode="prefer"), 1)

    run(main(), timeout=30)


def test_missing_slot_publication_and_wrong_plugin(cluster: Cluster, fresh_db: str) -> None:
    cluster.execute("CREATE TABLE items (id int PRIMARY KEY)", fresh_db)
    cluster.execute("CREATE PUBLICATION pub FOR TABLE items", fresh_db)

    async def main() -> None:
        with pytest.raises(pgcdc.ProgrammingError) as ei:
            await take(reader(cluster, fresh_db, slot="nope"), 1)
        assert ei.value.sqlstate == "42704" and "nope" in str(ei.value) and ei.value.hint
        cluster.execute("SELECT pg_create_logical_replication_slot('slot', 'pgoutput')", fresh_db)
        with pytest.raises(pgcdc.ProgrammingError) as ei:
            await take(reader(cluster, fresh_db, pub="nopub"), 1)
        assert ei.value.sqlstate == "42704" and "nopub" in str(ei.value)
        cluster.execute("SELECT pg_create_logical_replication_slot('td', 'test_decoding')", fresh_db)
        with pytest.raises(pgcdc.OperationalError, match="test_decoding"):
            await take(reader(cluster, fresh_db, slot="td"), 1)
        # create_slot=True creates what is missing, then streams
        r = reader(cluster, fresh_db, slot="made", create_slot=True)
        assert await nothing_within(r, 0.3)
        cluster.execute("INSERT INTO items VALUES (1)", fresh_db)
        (e,) = await take(r, 1)
        assert e.after == {"id": 1}
        await r.stop()
        assert cluster.execute("SELECT plugin FROM pg_replication_slots WHERE slot_name = 'made'") == [("pgoutput",)]

    run(main())


def test_unreachable_server_fails_fast_with_a_typed_error() -> None:
    async def main() -> None:
        # nothing listens: refused at once
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(pgcdc.ConnectionError) as ei:
            await take(pgcdc.LogicalReplicationReader("p", "s", "127.0.0.1", "db", port=port), 1)
        assert time.monotonic() - t0 < 5
        assert isinstance(ei.value, ConnectionError) and isinstance(ei.value.__cause__, OSError)
        # something accepts and never answers: bounded by connect_timeout
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        try:
            t0 = time.monotonic()
            with pytest.raises(pgcdc.ConnectionError, match="timed out"):
                r = pgcdc.LogicalReplicationReader("p", "s", "127.0.0.1", "db", port=silent.getsockname()[1],
                                                   connect_timeout=1)
                await take(r, 1)
            assert time.monotonic() - t0 < 4
        finally:
            silent.close()

    run(main())


# ----------------------------------------------------------------- authentication and TLS


@pytest.fixture(scope="module")
def secure_cluster():
    """A cluster with SCRAM and md5 users, and TLS."""
    c = Cluster(name="pgcdc-auth", settings={"ssl": True, "password_encryption": "scram-sha-256"})
    try:
        c.init()
        root = make_server_cert(c)
        c.start()
        c.execute("CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram-secret'")
        c.execute("SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-secret'")
        prepend_hba(c, [
            # tls_only gets in over TLS only (the default trust lines below would let a
            # plaintext connection in, and a test could not tell)
            "hostnossl all tls_only 127.0.0.1/32 reject",
            "hostnossl replication tls_only 127.0.0.1/32 reject",
            "hostssl all tls_only 127.0.0.1/32 trust",
            "hostssl replication tls_only 127.0.0.1/32 trust",
            "host all scram_user 127.0.0.1/32 scram-sha-256",
            "host replication scram_user 127.0.0.1/32 scram-sha-256",
            "host all md5_user 127.0.0.1/32 md5",
            "host replication md5_user 127.0.0.1/32 md5",
        ])
        c.execute("CREATE ROLE tls_only LOGIN REPLICATION")
        c.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
        c.execute("GRANT SELECT ON items TO scram_user, md5_user, tls_only")
        c.execute("CREATE PUBLICATION pub FOR TABLE items")
        c.root_cert = root  # type: ignore[attr-defined]
        yield c
    finally:
        c.stop()


@pytest.mark.parametrize("user,password", [("scram_user", "scram-secret"), ("md5_user", "md5-secret")])
def test_password_auth(secure_cluster: Cluster, user: str, password: str) -> None:
    c = secure_cluster
    slot = f"slot_{user}"
    c.execute(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")

    async def main() -> None:
        with pytest.raises(pgcdc.AuthenticationError) as ei:
            await take(reader(c, "postgres", slot=slot, user=user, password="wrong", sslmode="disable"), 1)
        assert ei.value.sqlstate == "28P01"
        with pytest.raises(pgcdc.AuthenticationError):
            await take(reader(c, "postgres", slot=slot, user=user, password="", sslmode="disable"), 1)
        r = reader(c, "postgres", slot=slot, user=user, password=password, sslmode="disable")
        c.execute("INSERT INTO items VALUES (%s, %s, 1)", params=[len(user), user])
        (e,) = await take(r, 1)
        assert e.after["name"] == user  # catalog session authenticated too
        await r.stop()
        c.execute(f"SELECT pg_drop_replication_slot('{slot}')")

    run(main())


CHANNEL_BINDING_CASES = [
    # user, password, sslmode, channel_binding
    ("scram_user", "scram-secret", "require", "require"),
    ("scram_user", "scram-secret", "require", "prefer"),
    ("scram_user", "scram-secret", "require", "disable"),
    ("scram_user", "scram-secret", "disable", "require"),  # no TLS: nothing to bind to
    ("scram_user", "scram-secret", "disable", "prefer"),
    ("md5_user", "md5-secret", "require", "require"),  # md5 cannot bind
    ("tls_only", "", "require", "require"),  # trust: authenticated without SCRAM
    ("tls_only", "", "require", "prefer"),
]


@pytest.mark.parametrize("user,password,sslmode,channel_binding", CHANNEL_BINDING_CASES)
def test_channel_binding_is_accepted_and_refused_as_libpq_does(
    secure_cluster: Cluster, user: str, password: str, sslmode: str, channel_binding: str
) -> None:
    """SCRAM channel binding (SCRAM-SHA-256-PLUS, tls-server-end-point): the reader connects
    exactly when libpq (psycopg) does with the same settings, and says why when it does not."""
    c = secure_cluster
    try:
        psycopg.connect(
            host="127.0.0.1", port=c.port, dbname="postgres", user=user, password=password,
            sslmode=sslmode, channel_binding=channel_binding, connect_timeout=5,
        ).close()
        libpq_connects = True
    except psycopg.OperationalError:
        libpq_connects = False
    slot = f"cb_{user}_{sslmode}_{channel_binding}"
    c.execute(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")

    async def main() -> None:
        r = reader(c, "postgres", slot=slot, user=user, password=password, sslmode=sslmode,
                   channel_binding=channel_binding, sslrootcert=c.root_cert, reconnect=False)
        if libpq_connects:
            key = 500 + CHANNEL_BINDING_CASES.index((user, password, sslmode, channel_binding))
            c.execute("INSERT INTO items VALUES (%s, 'bound', 1)", params=[key])
            (e,) = await take(r, 1)
            assert e.after["id"] == key
            await r.stop()
        else:
            with pytest.raises(pgcdc.ConnectionError, match="channel binding required"):
                await take(r, 1)

    try:
        run(main())
    finally:
        c.execute(f"SELECT pg_drop_replication_slot('{slot}')")
    # What libpq does with these settings is what the test expects of itself, too.
    assert libpq_connects == (channel_binding != "require" or (user == "scram_user" and sslmode == "require"))


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full"])
def test_tls(secure_cluster: Cluster, sslmode: str) -> None:
    c = secure_cluster
    slot = "slot_" + sslmode.replace("-", "_")
    c.execute(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")

    async def main() -> None:
        r = reader(c, "postgres", slot=slot, user="tls_only", sslmode=sslmode, sslrootcert=c.root_cert)
        c.execute("INSERT INTO items VALUES (%s, 'tls', 1)", params=[100 + len(sslmode)])
        (e,) = await take(r, 1)
        assert e.after["name"] == "tls"
        # seen from the server, while connected: the replication session is encrypted
        assert c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = %s", params=[r.backend_pid]) == [(True,)]
        await r.stop()
        c.execute(f"SELECT pg_drop_replication_slot('{slot}')")

    run(main())


def test_tls_verify_full_checks_the_host_name(secure_cluster: Cluster) -> None:
    """The certificate names 127.0.0.1 only: through "localhost" verify-ca passes (the chain
    is good) and verify-full refuses."""
    c = secure_cluster
    c.execute("SELECT pg_create_logical_replication_slot('slot_name_check', 'pgoutput')")

    def by_name(sslmode: str) -> pgcdc.LogicalReplicationReader:
        r = pgcdc.LogicalReplicationReader("pub", "slot_name_check", host="localhost", database="postgres",
                                           port=c.port, user="tls_only", sslmode=sslmode, sslrootcert=c.root_cert,
                                           connect_timeout=5)
        _open.append(r)
        return r

    async def main() -> None:
        with pytest.raises(pgcdc.ConnectionError, match="TLS"):
            await take(by_name("verify-full"), 1)
        r = by_name("verify-ca")
        c.execute("INSERT INTO items VALUES (300, 'by name', 1)")
        (e,) = await take(r, 1)
        assert e.after["name"] == "by name"
        await r.stop()
        c.execute("SELECT pg_drop_replication_slot('slot_name_check')")

    run(main())


def test_tls_verification_needs_a_root_certificate(secure_cluster: Cluster, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """verify-ca/verify-full never fall back to the web's authorities: without sslrootcert
    (or ~/.postgresql/root.crt) they refuse; sslrootcert=system means the web's roots, which
    did not sign this server's certificate."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)

    async def main() -> None:
        for mode in ("verify-ca", "verify-full"):
            with pytest.raises(pgcdc.InterfaceError, match="sslrootcert"):
                await take(reader(secure_cluster, "postgres", user="tls_only", sslmode=mode), 1)
        with pytest.raises(pgcdc.ConnectionError, match="TLS"):
            await take(reader(secure_cluster, "postgres", user="tls_only", sslrootcert="system"), 1)
        with pytest.raises(pgcdc.InterfaceError, match="weak sslmode"):
            reader(secure_cluster, "postgres", user="tls_only", sslmode="verify-ca", sslrootcert="system")
        # libpq's default root certificate file
        (tmp_path / ".postgresql").mkdir()
        (tmp_path / ".postgresql" / "root.crt").write_bytes(Path(secure_cluster.root_cert).read_bytes())
        secure_cluster.execute("SELECT pg_create_logical_replication_slot('slot_default_root', 'pgoutput')")
        r = reader(secure_cluster, "postgres", slot="slot_default_root", user="tls_only", sslmode="verify-full")
        assert await nothing_within(r, 0.5)
        assert r.sessions == 1
        await r.stop()
        secure_cluster.execute("SELECT pg_drop_replication_slot('slot_default_root')")

    run(main())


def test_tls_refuses_a_wrong_root(secure_cluster: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "other.crt"
    import subprocess

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x",
                    "-keyout", str(tmp_path / "k"), "-out", str(other)], check=True, capture_output=True)

    async def main() -> None:
        with pytest.raises(pgcdc.ConnectionError, match="TLS"):
            await take(reader(secure_cluster, "postgres", user="tls_only", sslmode="verify-full", sslrootcert=other), 1)

    run(main())


# ----------------------------------------------------------------- typing


def test_stub_matches_the_native_module() -> None:
    import importlib
    import inspect

    import pgcdc._pgcdc as native

    stub = Path(pgcdc.__file__).with_name("_pgcdc.pyi")
    assert stub.exists() and Path(pgcdc.__file__).with_name("py.typed").exists()
    import ast

    tree = ast.parse(stub.read_text())
    declared = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))}
    declared |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    public = {n for n in dir(native) if not n.startswith("__")}
    assert declared == public
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        members = {m.name for m in cls.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))} - {"__init__", "__eq__", "__hash__"}
        runtime = getattr(native, cls.name)
        for m in members:
            assert hasattr(runtime, m), f"{cls.name}.{m} is in the stub but not in the module"
        real = {n for n, _ in inspect.getmembers(runtime) if not n.startswith("_")}
        assert real <= members, f"{cls.name}: not in the stub: {real - members}"
    # the package re-exports what __all__ says
    pkg = importlib.import_module("pgcdc")
    assert all(hasattr(pkg, n) for n in pkg.__all__)


def test_stubtest() -> None:
    import mypy.stubtest as stubtest
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = stubtest.test_stubs(stubtest.parse_options(["pgcdc._pgcdc", "--ignore-missing-stub"]))
    assert code == 0, out.getvalue()


def test_planted_objects_never_run_as_the_reader(cluster: Cluster, fresh_db: str) -> None:
    """Functions, aggregates, operators and a type planted by an unprivileged role in a schema
    on a superuser reader's search_path (after pg_catalog's implicit place, and before an
    explicit pg_catalog) never run in the reader's sessions (replication and catalog)."""
    plant_search_path_traps(cluster, "mallory", fresh_db)
    cluster.execute("CREATE TYPE mood AS ENUM ('sad', 'ok')", fresh_db)
    cluster.execute("CREATE TYPE pair AS (a int, b text)", fresh_db)
    cluster.execute("CREATE TABLE items (id int PRIMARY KEY, m mood, pair pair, n text DEFAULT 'n/a')", fresh_db)
    cluster.execute("CREATE PUBLICATION pub FOR TABLE items", fresh_db)
    paths = {"implicit": '"$user", mallory, public', "late": "mallory, pg_catalog, public"}
    for case, path in paths.items():
        role = f"reader_{case}_{fresh_db[-12:]}"
        trapped_superuser(cluster, role, path, fresh_db)
        cluster.execute(f"ALTER ROLE {role} REPLICATION")
        slot = f"slot_{case}"
        cluster.execute(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')", fresh_db)
        cluster.execute(f"INSERT INTO items VALUES (1, 'ok', ROW(1, 'x')), (2, 'sad', NULL)", fresh_db)
        cluster.execute("DELETE FROM items", fresh_db)

        async def main() -> None:
            r = reader(cluster, fresh_db, slot=slot, user=role, auto_acknowledge=True)
            e1, e2, _, _ = await take(r, 4)
            assert e1.after == {"id": 1, "m": "ok", "pair": {"a": 1, "b": "x"}, "n": "n/a"}, case
            assert e2.after["m"] == "sad", case
            await r.stop()

        run(main())
        assert search_path_traps_fired(cluster, "mallory", fresh_db) == [], case


def test_the_module_first_imported_off_the_main_thread_works_in_every_thread() -> None:
    """Applications import pgcdc inside a worker thread and use it from others (one asyncio
    loop per thread). The native module's allocator once crashed there: the first allocation of
    every later thread dereferenced state only an import on the main thread had set up. A fresh
    interpreter, since this one imported pgcdc long ago."""
    script = (
        "import threading\n"
        "def use():\n"
        "    import pgcdc\n"
        "    pgcdc.LogicalReplicationReader('p', 's', host='127.0.0.1', database='postgres', port=1)\n"
        "for _ in range(3):\n"
        "    t = threading.Thread(target=use); t.start(); t.join()\n"
        "print('used in 3 threads')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip() == "used in 3 threads"
