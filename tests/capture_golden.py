#!/usr/bin/env python3
"""Capture real pgoutput bytes from PostgreSQL as golden fixtures for pgcdc_core's decoder.

    python tests/capture_golden.py OUTDIR        # or: make golden-capture

Starts a throwaway cluster (tests/pgcluster.py, TimeZone=UTC), runs each workload against a
logical slot created just before its DML, and writes what
``pg_logical_slot_peek_binary_changes(slot, NULL, NULL, <options>)`` returns, one JSON file
per fixture:

=========================  ============================================================
typematrix_proto1.json     tests/fixtures/debezium/typematrix{,_dml}.sql, proto_version 1
typematrix_proto2.json     same WAL, proto_version 2 + streaming on (nothing is big enough
                           to be streamed: same messages as proto 1)
streaming_proto2.json      logical_decoding_work_mem=64kB: a streamed commit, a streamed
                           rollback, a streamed commit with a rolled-back savepoint, a small
                           normal transaction
twophase_proto3.json       two_phase slot: PREPARE + COMMIT PREPARED, PREPARE + ROLLBACK
                           PREPARED, one normal transaction
=========================  ============================================================

Fixture format (pretty-printed, keys sorted)::

    {"server_version": "15.20 (...)", "database": "tmdb", "publication": "tm_pub",
     "slot": "tm_proto1", "two_phase": false, "protocol_version": 1,
     "options": {"proto_version": "1", "publication_names": "tm_pub", "messages": "true"},
     "settings": {},                      # per-database GUCs in force while decoding
     "changes": [{"lsn": "0/2CAFCE8", "xid": 902, "data": "<lowercase hex>"}, ...],
     "types": [<one row of sql/type_info.sql per type, keys = its column names>],
     "tables": {"<relation oid>": <the row of sql/table_info.sql for it>},
     "workload": "<the SQL that produced the changes>"}

``types`` covers every column type of every table in the publication (plus, recursively,
element/base/attribute types); ``tables`` has one entry per published table (a partitioned
table published via its root appears once, under the root's oid).

The workload is ``tests/fixtures/debezium/typematrix{,_dml}.sql`` (``workload.py``).

Importable: :func:`capture_all` writes the fixtures, :func:`structure` reduces a fixture to
what must be identical run to run (message tags, relations, columns, tuple shapes) and leaves
out LSNs, xids, timestamps and oids of user objects.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from pgcluster import Cluster, pg_major  # noqa: E402
from workload import TYPEMATRIX_DML_SQL, TYPEMATRIX_SQL  # noqa: E402

FIXTURES = ("typematrix_proto1", "typematrix_proto2", "streaming_proto2", "twophase_proto3")


def fixtures_for(major: int) -> tuple[str, ...]:
    """The fixtures a server of this major version can send: protocol 2 (streaming) is 14+,
    protocol 3 (two_phase) 15+; 13 sends typematrix_proto1 without its logical messages (the
    `messages` option is 14+)."""
    if major >= 15:
        return FIXTURES
    if major == 14:
        return FIXTURES[:3]
    return FIXTURES[:1]

FIRST_USER_OID = 16384




# ------------------------------------------------------------------ workloads
def _row(lo: int, hi: int) -> str:
    # ~200-byte distinct payloads (6 x md5 + 8 digits), far below the TOAST threshold
    return (
        "INSERT INTO big SELECT g, repeat(md5(g::text), 6) || lpad(g::text, 8, '0')\n"
        f"  FROM generate_series({lo}, {hi}) AS g;\n"
    )


STREAMING_SETUP = """\
CREATE TABLE big (id int PRIMARY KEY, payload text);
CREATE PUBLICATION big_pub FOR TABLE big;
"""

STREAMING_DML = (
    "-- 1: 2000 rows x ~200 bytes in one transaction: streamed, then Stream Commit\n"
    "BEGIN;\n" + _row(1, 2000) + "COMMIT;\n"
    "-- 2: streamed, then rolled back: Stream Abort of the top-level xid\n"
    "BEGIN;\n" + _row(10001, 10500) + "ROLLBACK;\n"
    "-- 3: a savepoint rolled back inside a streamed transaction: Stream Abort of the\n"
    "--    subxid, then Stream Commit of the rest\n"
    "BEGIN;\n" + _row(20001, 20300) + "SAVEPOINT s1;\n" + _row(20301, 20800)
    + "ROLLBACK TO SAVEPOINT s1;\n" + _row(20801, 20900) + "COMMIT;\n"
    "-- 4: a small transaction: plain Begin/Insert/Commit\n"
    "INSERT INTO big VALUES (30001, 'small');\n"
)

TWOPHASE_SETUP = """\
CREATE TABLE tp (id int PRIMARY KEY, v text);
CREATE PUBLICATION tp_pub FOR TABLE tp;
"""

TWOPHASE_DML = """\
-- 1: prepared, then committed: Begin Prepare .. Prepare, then Commit Prepared
BEGIN;
INSERT INTO tp VALUES (1, 'one'), (2, 'two');
PREPARE TRANSACTION 'g1';
COMMIT PREPARED 'g1';
-- 2: prepared, then rolled back: Begin Prepare .. Prepare, then Rollback Prepared
BEGIN;
UPDATE tp SET v = 'uno' WHERE id = 1;
DELETE FROM tp WHERE id = 2;
PREPARE TRANSACTION 'g2';
ROLLBACK PREPARED 'g2';
-- 3: an ordinary transaction on the same slot
INSERT INTO tp VALUES (3, 'three');
"""

SLOT_MARKER = "-- ==== pgcdc capture: logical slot(s) created here: {} ====\n"


# ------------------------------------------------------------------ catalog
def _raw_cursor(conn):
    import psycopg

    # RawCursor takes PostgreSQL's own $1 placeholders, so the sql/*.sql files run unchanged.
    return psycopg.RawCursor(conn)


def _rows_as_dicts(cur) -> list[dict[str, Any]]:
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    return v


def catalog(conn, publication: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(types, tables) for every table of ``publication`` via sql/type_info.sql, table_info.sql."""
    type_sql = (REPO / "sql" / "type_info.sql").read_text()
    table_sql = (REPO / "sql" / "table_info.sql").read_text()
    rel_oids = [
        r[0]
        for r in conn.execute(
            "SELECT (quote_ident(schemaname) || '.' || quote_ident(tablename))::regclass::oid "
            "FROM pg_publication_tables WHERE pubname = %s ORDER BY 1",
            [publication],
        ).fetchall()
    ]
    typ_oids = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT atttypid FROM pg_attribute "
            "WHERE attrelid = ANY(%s::oid[]) AND attnum > 0 AND NOT attisdropped ORDER BY 1",
            ["{" + ",".join(map(str, rel_oids)) + "}"],
        ).fetchall()
    ]
    cur = _raw_cursor(conn)
    cur.execute(type_sql, ["{" + ",".join(map(str, typ_oids)) + "}"])
    types = [{k: _jsonable(v) for k, v in row.items()} for row in _rows_as_dicts(cur)]
    tables: dict[str, dict[str, Any]] = {}
    for oid in rel_oids:
        cur.execute(table_sql, [str(oid)])
        rows = _rows_as_dicts(cur)
        assert len(rows) == 1, f"table_info.sql returned {len(rows)} rows for {oid}"
        tables[str(oid)] = {k: _jsonable(v) for k, v in rows[0].items()}
    return types, tables


# ------------------------------------------------------------------ capture
def _peek(conn, slot: str, options: dict[str, str]) -> list[dict[str, Any]]:
    flat = [x for kv in options.items() for x in kv]
    rows = conn.execute(
        "SELECT lsn::text, xid::text::bigint, data "
        "FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, VARIADIC %s::text[])",
        [slot, flat],
    ).fetchall()
    return [{"lsn": lsn, "xid": xid, "data": bytes(data).hex()} for lsn, xid, data in rows]


def _fixture(cluster: Cluster, *, db: str, publication: str, slot: str, two_phase: bool,
             options: dict[str, str], settings: dict[str, str], workload: str) -> dict[str, Any]:
    with cluster.connect(db) as conn:
        for k, v in settings.items():
            conn.execute("SELECT set_config(%s, %s, false)", [k, v])
        server_version = conn.execute("SHOW server_version").fetchone()[0]
        changes = _peek(conn, slot, options)
        types, tables = catalog(conn, publication)
    return {
        "server_version": server_version,
        "database": db,
        "publication": publication,
        "slot": slot,
        "two_phase": two_phase,
        "protocol_version": int(options["proto_version"]),
        "options": options,
        "settings": settings,
        "changes": changes,
        "types": types,
        "tables": tables,
        "workload": workload,
    }


def _create_slot(cluster: Cluster, db: str, slot: str, two_phase: bool = False) -> str:
    sql = f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput', false, {str(two_phase).lower()})"
    if pg_major() < 14:
        sql = _slot_sql_on_13(sql)  # no two_phase argument before 14
    cluster.execute(sql, db)
    return sql + ";\n"


def capture_typematrix(cluster: Cluster) -> dict[str, dict[str, Any]]:
    setup = TYPEMATRIX_SQL.read_text()
    dml = TYPEMATRIX_DML_SQL.read_text()
    db = "tmdb"
    cluster.execute(f"CREATE DATABASE {db}")
    cluster.psql("-f", str(TYPEMATRIX_SQL), dbname=db)
    slot_sql = "".join(_create_slot(cluster, db, f"tm_proto{v}") for v in (1, 2))
    cluster.psql("-f", str(TYPEMATRIX_DML_SQL), dbname=db)
    workload = setup + SLOT_MARKER.format("tm_proto1, tm_proto2") + slot_sql + dml
    common = {"publication_names": "tm_pub", "messages": "true"}
    if pg_major() < 14:
        del common["messages"]
    out = {
        "typematrix_proto1": _fixture(
            cluster, db=db, publication="tm_pub", slot="tm_proto1", two_phase=False,
            options={"proto_version": "1", **common}, settings={}, workload=workload),
    }
    if "typematrix_proto2" in fixtures_for(pg_major()):
        out["typematrix_proto2"] = _fixture(
            cluster, db=db, publication="tm_pub", slot="tm_proto2", two_phase=False,
            options={"proto_version": "2", **common, "streaming": "on"}, settings={}, workload=workload)
    return out


def capture_streaming(cluster: Cluster) -> dict[str, dict[str, Any]]:
    db, slot = "streamdb", "big_proto2"
    settings = {"logical_decoding_work_mem": "64kB"}
    cluster.execute(f"CREATE DATABASE {db}")
    # Decoding through the SQL functions happens in the calling backend, so a per-database
    # setting is enough and leaves the typematrix capture unstreamed.
    cluster.execute(f"ALTER DATABASE {db} SET logical_decoding_work_mem = '64kB'")
    cluster.psql(input=STREAMING_SETUP, dbname=db)
    slot_sql = _create_slot(cluster, db, slot)
    cluster.psql(input=STREAMING_DML, dbname=db)
    workload = (f"ALTER DATABASE {db} SET logical_decoding_work_mem = '64kB';\n" + STREAMING_SETUP
                + SLOT_MARKER.format(slot) + slot_sql + STREAMING_DML)
    options = {"proto_version": "2", "publication_names": "big_pub", "messages": "true", "streaming": "on"}
    return {"streaming_proto2": _fixture(
        cluster, db=db, publication="big_pub", slot=slot, two_phase=False,
        options=options, settings=settings, workload=workload)}


def capture_twophase(cluster: Cluster) -> dict[str, dict[str, Any]]:
    db, slot = "tpdb", "tp_proto3"
    cluster.execute(f"CREATE DATABASE {db}")
    cluster.psql(input=TWOPHASE_SETUP, dbname=db)
    slot_sql = _create_slot(cluster, db, slot, two_phase=True)
    cluster.psql(input=TWOPHASE_DML, dbname=db)
    workload = TWOPHASE_SETUP + SLOT_MARKER.format(slot) + slot_sql + TWOPHASE_DML
    options = {"proto_version": "3", "publication_names": "tp_pub", "messages": "true", "two_phase": "on"}
    return {"twophase_proto3": _fixture(
        cluster, db=db, publication="tp_pub", slot=slot, two_phase=True,
        options=options, settings={}, workload=workload)}


def capture_all(outdir: str | os.PathLike[str], cluster: Cluster | None = None) -> dict[str, Path]:
    """Capture every fixture into outdir; returns {fixture name: path}."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    own = cluster is None
    c = cluster or Cluster(name="pgcdc-golden")
    try:
        if own:
            c.start()
        fixtures: dict[str, dict[str, Any]] = {}
        fixtures.update(capture_typematrix(c))
        if "streaming_proto2" in fixtures_for(pg_major()):
            fixtures.update(capture_streaming(c))
        if "twophase_proto3" in fixtures_for(pg_major()):
            fixtures.update(capture_twophase(c))
    finally:
        if own:
            c.stop()
    paths = {}
    for name, fx in fixtures.items():
        p = out / f"{name}.json"
        p.write_text(json.dumps(fx, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        paths[name] = p
    return paths


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------ structure
class _Reader:
    """Minimal big-endian reader for the pgoutput messages (structure only)."""

    def __init__(self, data: bytes) -> None:
        self.d, self.i = data, 0

    def take(self, n: int) -> bytes:
        if self.i + n > len(self.d):
            raise ValueError(f"truncated at {self.i} (+{n}) of {len(self.d)}")
        b = self.d[self.i:self.i + n]
        self.i += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def i16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def i64(self) -> int:
        return struct.unpack(">q", self.take(8))[0]

    def cstr(self) -> str:
        end = self.d.index(b"\0", self.i)
        s = self.d[self.i:end].decode()
        self.i = end + 1
        return s

    def tuple_kinds(self) -> str:
        kinds = []
        for _ in range(self.i16()):
            k = chr(self.u8())
            if k in "tb":
                self.take(self.i32())
            kinds.append(k)
        return "".join(kinds)


def structure(fixture: dict[str, Any]) -> list[tuple]:
    """The run-independent shape of a fixture's changes, one tuple per message.

    Keeps tags, relation and type names, columns (flags, name, type name, typmod), tuple
    shapes (n/u/t/b per column), messages, GIDs and stream flags; drops LSNs, xids,
    timestamps and user oids.
    """
    type_names = {t["oid"]: f'{t["namespace"]}.{t["name"]}' for t in fixture.get("types", [])}

    def tname(oid: int) -> str:
        return type_names.get(oid) or (str(oid) if oid < FIRST_USER_OID else "user-type")

    relnames: dict[int, str] = {}
    in_stream = False
    top_xid = None
    out: list[tuple] = []
    for ch in fixture["changes"]:
        r = _Reader(bytes.fromhex(ch["data"]))
        tag = chr(r.u8())
        if tag in "RYIUDTM" and in_stream:
            xid = r.u32()  # streamed messages carry the (sub)transaction's xid
            sub = xid != top_xid
        else:
            sub = False
        if tag == "B":
            out.append(("B",))
        elif tag == "C":
            out.append(("C", r.u8()))
        elif tag == "R":
            oid = r.u32()
            nsp, name, ident, ncols = r.cstr(), r.cstr(), chr(r.u8()), r.i16()
            cols = []
            for _ in range(ncols):
                flags, col, typ, typmod = r.u8(), r.cstr(), r.u32(), r.i32()
                cols.append((flags, col, tname(typ), typmod))
            relnames[oid] = f"{nsp}.{name}"
            out.append(("R", f"{nsp}.{name}", ident, tuple(cols)))
        elif tag == "Y":
            r.u32()
            out.append(("Y", f"{r.cstr()}.{r.cstr()}"))
        elif tag in "IUD":
            rel = relnames.get(r.u32(), "?")
            parts = []
            while r.i < len(r.d):
                kind = chr(r.u8())
                parts.append(kind + ":" + r.tuple_kinds())
            out.append((tag, rel, tuple(parts)) + (("sub",) if sub else ()))
        elif tag == "T":
            n = r.i32()
            opts = r.u8()
            rels = tuple(relnames.get(r.u32(), "?") for _ in range(n))
            out.append(("T", opts, rels))
        elif tag == "M":
            flags, _lsn, prefix = r.u8(), r.i64(), r.cstr()
            content = r.take(r.i32())
            out.append(("M", flags, prefix, content.decode(errors="replace")))
        elif tag == "S":
            top_xid = r.u32()
            in_stream = True
            out.append(("S", r.u8()))
        elif tag == "E":
            in_stream = False
            out.append(("E",))
        elif tag == "c":
            r.u32()
            out.append(("c", r.u8()))
        elif tag == "A":
            xid, subxid = r.u32(), r.u32()
            out.append(("A", "top" if xid == subxid else "sub"))
        elif tag in "bPKrp":
            if tag == "b":
                r.i64(), r.i64(), r.i64(), r.u32()
            elif tag == "r":
                r.u8(), r.i64(), r.i64(), r.i64(), r.i64(), r.u32()
            else:
                r.u8(), r.i64(), r.i64(), r.i64(), r.u32()
            out.append((tag, r.cstr()))
        else:
            out.append((tag, "unknown"))
    return out


def _slot_sql_on_13(sql: str) -> str:
    return sql.replace("'pgoutput', false, false)", "'pgoutput', false)")


def as_sent_by(fixture: dict[str, Any], major: int) -> dict[str, Any]:
    """The fixture as a server of `major` sends the same WAL: before 15 pgoutput also sends
    transactions with nothing published (Begin and Commit alone); before 14 no logical
    messages (and slots are created without the two_phase argument). Applied to the committed
    fixture and a fresh one alike, so either's quirks go."""
    out = dict(fixture)
    changes = [ch for ch in fixture["changes"] if major >= 14 or not ch["data"].startswith("4d")]
    if major < 15:
        kept: list[dict[str, Any]] = []
        for ch in changes:
            if ch["data"].startswith("43") and kept and kept[-1]["data"].startswith("42"):
                kept.pop()  # an empty transaction
            else:
                kept.append(ch)
        changes = kept
    out["changes"] = changes
    if major < 14:
        out["options"] = {k: v for k, v in fixture["options"].items() if k != "messages"}
        out["workload"] = _slot_sql_on_13(fixture["workload"])
    return out


def tags(fixture: dict[str, Any]) -> str:
    return "".join(chr(bytes.fromhex(ch["data"][:2])[0]) for ch in fixture["changes"])


def collapse(seq: list[tuple]) -> list[tuple]:
    """Run-length encode consecutive identical items: [(item, count), ...]."""
    out: list[tuple] = []
    for item in seq:
        if out and out[-1][0] == item:
            out[-1] = (item, out[-1][1] + 1)
        else:
            out.append((item, 1))
    return out


# ------------------------------------------------------------------ shape checks
def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(f"fixture shape: {what}")


def check_typematrix(fx: dict[str, Any]) -> None:
    s = structure(fx)
    t = tags(fx)
    _expect(t[0] == "B" and t[-1] == "C", "starts with Begin, ends with Commit")
    _expect(t.count("B") == t.count("C"), "every Begin has a Commit")
    _expect("S" not in t, "nothing streamed")
    rels = [x for x in s if x[0] == "R"]
    names = [x[1] for x in rels]
    for n in ("tm_types", "tm_default", "tm_full", "tm_nopk", "tm_toast", "tm_gen", "tm_part"):
        _expect(f"public.{n}" in names, f"Relation for {n}")
    # PG15 pgoutput sends the partition's own Relation after the root's (maybe_send_schema),
    # but the changes reference the root.
    _expect(not any(x[0] in "IUD" and "tm_part_" in x[1] for x in s), "partition changes via root")
    tdef = [x for x in rels if x[1] == "public.tm_default"]
    _expect(len(tdef) == 2 and [c[1] for c in tdef[-1][3]][-1] == "note",
            "tm_default re-sent after ALTER TABLE with the new column")
    _expect({"public.mood", "public.address", "public.hstore"} <= {x[1] for x in s if x[0] == "Y"},
            "Type messages for mood, address, hstore")
    _expect(any(x[0] == "T" and "public.tm_nopk" in x[2] for x in s), "TRUNCATE tm_nopk")
    _expect(major(fx) < 14 or any(x[0] == "M" and x[2] == "outbox" for x in s), "logical message 'outbox'")
    inserts = [x for x in s if x[0] == "I"]
    _expect(len([x for x in inserts if x[1] == "public.tm_types"]) == 3, "3 inserts into tm_types")
    # tm_toast.big compresses to ~1.5 kB inline, so the update carries it in full (FORMAT.md
    # §6): the shared workload has no unchanged-TOAST ('u') column.
    _expect(("U", "public.tm_toast", ("N:ttt",)) in s, "tm_toast update carries the full value")


def major(fx: dict[str, Any]) -> int:
    """Major version of the server a fixture was captured from."""
    return int(fx["server_version"].split(".")[0])


def check_streaming(fx: dict[str, Any]) -> None:
    s = structure(fx)
    t = tags(fx)
    _expect("S" in t and "E" in t, "streamed chunks")
    _expect(t.count("c") == 2, "two Stream Commits")
    aborts = [x for x in s if x[0] == "A"]
    _expect(("A", "sub") in aborts, "subxact Stream Abort")
    # PostgreSQL 18 no longer streams a transaction it already knows is aborted when it
    # decodes it (this capture decodes after the workload): no top-level abort there.
    _expect(("A", "top") in aborts or major(fx) >= 18, "top-level Stream Abort")
    _expect(sum(1 for x in s if x[0] == "I") >= 2000 + 100, "all committed inserts present")
    _expect(t.endswith("BRIC") or t.endswith("BIC"), "small transaction last, not streamed")


def check_twophase(fx: dict[str, Any]) -> None:
    s = structure(fx)
    kinds = [x for x in s if x[0] in "bPKr"]
    _expect(kinds == [("b", "g1"), ("P", "g1"), ("K", "g1"), ("b", "g2"), ("P", "g2"), ("r", "g2")],
            f"Begin Prepare/Prepare/Commit Prepared g1 then .../Rollback Prepared g2, got {kinds}")
    _expect(tags(fx).endswith("BIC"), "ordinary transaction last")


#: Fixtures whose message sequence depends on the server version: compared message by message
#: with a fresh capture only from the version they were captured from (their checks and the
#: Rust golden tests still run on every version's fresh bytes).
VERSION_DEPENDENT = {"streaming_proto2"}

CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "typematrix_proto1": check_typematrix,
    "typematrix_proto2": check_typematrix,
    "streaming_proto2": check_streaming,
    "twophase_proto3": check_twophase,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTDIR", file=sys.stderr)
        return 2
    # Turn SIGTERM/SIGHUP into SystemExit so the cluster is stopped on the way out.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    paths = capture_all(argv[1])
    for name, p in paths.items():
        fx = load(p)
        CHECKS[name](fx)
        print(f"{p}: {len(fx['changes'])} messages, {p.stat().st_size} bytes, tags {_tag_summary(fx)}")
    return 0


def _tag_summary(fx: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for c in tags(fx):
        counts[c] = counts.get(c, 0) + 1
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
