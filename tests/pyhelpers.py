"""Helpers for the Python-package tests (tests/test_py_*.py): running coroutines with a
deadline, collecting events, waiting for conditions, and clusters with password auth/TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from pgcluster import Cluster

utc = dt.timezone.utc


def _interval(months: int, days: int, micros: int):
    import pgcdc

    return pgcdc.Interval(months, days, micros)


#: Row 1 of tests/fixtures/debezium/typematrix_dml.sql as Python values (exact types).
TYPEMATRIX_ROW1 = {
    "id": 1,
    "c_bool": True,
    "c_int2": 32767,
    "c_int4": -2147483648,
    "c_int8": 9223372036854775807,
    "c_float4": 3.14,
    "c_float8": 2.718281828459045,
    "c_numeric": Decimal("12345678.1234"),
    "c_numeric_any": Decimal("0.000000000000000000001"),
    "c_money": Decimal("12.34"),
    "c_text": 'héllo "wörld" 😀',
    "c_varchar": "varchar",
    "c_char": "ab   ",
    "c_bytea": b"\xde\xad\xbe\xef\x00",
    "c_json": {"a": [1, 2, {"b": None}]},
    "c_jsonb": {"k": "v", "n": 1.5},
    "c_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "c_date": dt.date(2024, 2, 29),
    "c_time": dt.time(13, 45, 59, 123456),
    "c_timetz": dt.time(13, 45, 59, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    "c_ts": dt.datetime(2024, 1, 15, 10, 30, 0, 1),
    "c_tstz": dt.datetime(2024, 1, 15, 10, 30, tzinfo=utc),
    "c_interval": _interval(14, 3, ((4 * 60 + 5) * 60 + 6) * 1_000_000 + 789_000),
    "c_int_arr": [1, None, 3],
    "c_text_arr": ["a", "b c", None, '"q"'],
    "c_2d_arr": [[1, 2], [3, 4]],
    "c_enum": "happy",
    "c_composite": {"street": "Main St", "zip": 12345},
    "c_inet": "192.168.0.1/24",
    "c_cidr": "10.0.0.0/8",
    "c_macaddr": "08:00:2b:01:02:03",
    "c_point": (1.5, 2.5),
    "c_int4range": "[1,10)",
    "c_tstzrange": '["2024-01-01 00:00:00+00","2024-12-31 00:00:00+00")',
    "c_bit": "1010",
    "c_varbit": "110",
    "c_xml": "<a>x</a>",
    "c_hstore": {"a": "1", "b": None},
    "c_oid": 42,
}

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    """Runs a coroutine on a fresh event loop, failing the test after `timeout` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def take(stream: Any, n: int, timeout: float = 15) -> list[Any]:
    """The next `n` events of an async iterator (fails after `timeout`)."""
    out: list[Any] = []

    async def go() -> None:
        async for ev in stream:
            out.append(ev)
            if len(out) >= n:
                return

    await asyncio.wait_for(go(), timeout)
    return out


async def nothing_within(stream: Any, seconds: float) -> bool:
    """True when the iterator yields nothing for `seconds`."""
    it = stream.__aiter__()
    try:
        ev = await asyncio.wait_for(it.__anext__(), seconds)
    except asyncio.TimeoutError:
        return True
    raise AssertionError(f"unexpected event {ev!r}")


def wait_for(cond: Callable[[], Any], timeout: float = 15, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def await_for(cond: Callable[[], Any], timeout: float = 15, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def confirmed_flush(cluster: Cluster, slot: str, db: str = "postgres") -> str:
    rows = cluster.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", db, [slot])
    return rows[0][0]


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def prepend_hba(cluster: Cluster, lines: list[str]) -> None:
    """Puts `lines` first in pg_hba.conf (first match wins) and reloads."""
    hba = cluster.datadir / "pg_hba.conf"
    hba.write_text("\n".join(lines) + "\n" + hba.read_text())
    cluster.execute("SELECT pg_reload_conf()")


def make_server_cert(cluster: Cluster) -> Path:
    """A server certificate for 127.0.0.1 (server.crt/server.key in the data directory) signed
    by a throwaway CA; returns the CA certificate's path (for sslrootcert)."""
    assert shutil.which("openssl"), "openssl is needed for the TLS tests"
    crt = cluster.datadir / "server.crt"
    key = cluster.datadir / "server.key"
    ca_key, ca_crt = cluster.base / "ca.key", cluster.base / "root.crt"
    ext = cluster.base / "leaf.ext"
    ext.write_text("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nkeyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pgcdc test CA",
            "-keyout", str(ca_key), "-out", str(ca_crt))
    csr = cluster.base / "server.csr"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", str(crt))
    key.chmod(0o600)
    if os.geteuid() == 0:
        for p in (crt, key):
            shutil.chown(p, "postgres", "postgres")
    return ca_crt


def log_lines(cluster: Cluster, pid: int, needle: str) -> int:
    """How many server log lines of backend `pid` contain `needle` (log_line_prefix has [%p])."""
    tag = f"[{pid}]"
    return sum(1 for ln in cluster.logfile.read_text(errors="replace").splitlines() if tag in ln and needle in ln)


class FreezableProxy:
    """A TCP proxy to 127.0.0.1:`port` whose existing connections can be frozen: bytes stop
    flowing both ways while the sockets stay open (a half-open connection, as when a host
    vanishes). Connections opened after `freeze()` flow normally."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self._target = port
        self._frozen: list[threading.Event] = []
        self._socks: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            frozen = threading.Event()
            self._frozen.append(frozen)
            self._socks += [client, upstream]
            self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, frozen), daemon=True).start()

    @staticmethod
    def _pump(src: Any, dst: Any, frozen: Any) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if frozen.is_set():
                    continue  # swallowed: the other side hears nothing, and no FIN either
                dst.sendall(data)
        except OSError:
            return
        if not frozen.is_set():
            try:
                dst.shutdown(1)
            except OSError:
                pass

    def freeze(self) -> None:
        for f in self._frozen:
            f.set()

    def close(self) -> None:
        self._closed = True
        for s in [self._listener, *self._socks]:
            try:
                s.close()
            except OSError:
                pass


class FakeServer:
    """A fake PostgreSQL server on 127.0.0.1 for protocol-level tests: `script(server,
    reader, writer)` plays the server's side after the startup packet (an SSLRequest is
    answered with `ssl_answer`); `server.read_message` reads one client message and records
    its tag in `server.seen`."""

    def __init__(self, script: Callable[..., Awaitable[None]], ssl_answer: bytes = b"N") -> None:
        self.script = script
        self.ssl_answer = ssl_answer
        self.seen: list[bytes] = []
        self.port = 0
        self._server: Any = None

    async def __aenter__(self) -> "FakeServer":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                n = int.from_bytes(await reader.readexactly(4), "big")
                body = await reader.readexactly(n - 4)
                if body[:4] == (80877103).to_bytes(4, "big"):  # SSLRequest
                    writer.write(self.ssl_answer)
                    await writer.drain()
                    if self.ssl_answer != b"N":
                        return
                    continue
                break
            await self.script(self, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def read_message(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        tag = await reader.readexactly(1)
        n = int.from_bytes(await reader.readexactly(4), "big")
        body = await reader.readexactly(n - 4)
        self.seen.append(tag)
        return tag, body


def pg_message(tag: bytes, body: bytes) -> bytes:
    return tag + (len(body) + 4).to_bytes(4, "big") + body


def auth_request(code: int, extra: bytes = b"") -> bytes:
    return pg_message(b"R", code.to_bytes(4, "big") + extra)


# ----------------------------------------------------------------------------- search_path traps

#: Objects an unprivileged role can create in a schema on someone's search_path, each beating
#: or shadowing a built-in that SQL sent by pgcdc could use. Those in WINS_AFTER_PG_CATALOG
#: win even with pg_catalog implicitly first in the path (an exact argument-type match beats
#: pg_catalog's polymorphic or cross-type candidates); the others win only where pg_catalog
#: is listed after the schema. Each one records itself in <schema>.fired, then does what the
#: built-in does, so a client that runs one still works and the test sees that it ran.
WINS_AFTER_PG_CATALOG = (
    "unnest(oid[])",
    "unnest(int2[])",
    "array_agg(text)",
    "array_agg(oid)",
    "array_agg(integer)",
    "json_agg(record)",
    "oid <> integer",
)


def plant_search_path_traps(cluster: Cluster, schema: str = "mallory", dbname: str = "postgres") -> None:
    """Creates the role and schema `schema` (not a superuser) and, as that role, the traps."""
    note = f"{schema}.note"
    fn = "LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp"
    body = lambda what, ret: f"$$ BEGIN PERFORM {note}('{what}'); {ret}; END $$"  # noqa: E731
    statements = [
        "SET search_path = pg_catalog, pg_temp",  # this session must not trap itself
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{schema}') "
        f"THEN CREATE ROLE {schema} NOLOGIN; END IF; END $$",
        f"CREATE SCHEMA {schema} AUTHORIZATION {schema}",
        f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC",
        f"SET ROLE {schema}",
        f"CREATE TABLE {schema}.fired (what text, who text, backend text, application text)",
        f"GRANT INSERT ON {schema}.fired TO PUBLIC",
        f"""CREATE FUNCTION {note}(what pg_catalog.text) RETURNS void LANGUAGE sql
            SET search_path = pg_catalog, pg_temp AS $$
            INSERT INTO {schema}.fired SELECT what, current_user, backend_type, application_name
            FROM pg_catalog.pg_stat_activity WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() $$""",
        # exact matches that beat pg_catalog's polymorphic ones
        f"CREATE FUNCTION {schema}.unnest(a pg_catalog.oid[]) RETURNS SETOF pg_catalog.oid {fn} AS "
        + body("unnest(oid[])", "RETURN QUERY SELECT pg_catalog.unnest(a)"),
        f"CREATE FUNCTION {schema}.unnest(a pg_catalog.int2[]) RETURNS SETOF pg_catalog.int2 {fn} AS "
        + body("unnest(int2[])", "RETURN QUERY SELECT pg_catalog.unnest(a)"),
        f"CREATE FUNCTION {schema}.json_step(s pg_catalog.text, r record) RETURNS pg_catalog.text {fn} AS "
        + body("json_agg(record)", "RETURN pg_catalog.concat_ws(',', s, pg_catalog.row_to_json(r)::pg_catalog.text)"),
        f"CREATE FUNCTION {schema}.json_final(s pg_catalog.text) RETURNS pg_catalog.json LANGUAGE sql AS "
        "$$ SELECT pg_catalog.concat('[', s, ']')::pg_catalog.json $$",
        f"CREATE AGGREGATE {schema}.json_agg(record) (SFUNC = {schema}.json_step, STYPE = pg_catalog.text, "
        f"FINALFUNC = {schema}.json_final)",
        # an exact match for `oid <> 0` (pg_catalog only has oid <> oid)
        f"CREATE FUNCTION {schema}.oid_ne_int(a pg_catalog.oid, b pg_catalog.int4) RETURNS boolean {fn} AS "
        + body("oid <> integer", "RETURN a OPERATOR(pg_catalog.<>) b::pg_catalog.oid"),
        f"CREATE OPERATOR {schema}.<> (LEFTARG = pg_catalog.oid, RIGHTARG = pg_catalog.int4, "
        f"FUNCTION = {schema}.oid_ne_int)",
        # same signatures as pg_catalog's: they win where pg_catalog comes later in the path
        f"CREATE FUNCTION {schema}.pg_backend_pid() RETURNS pg_catalog.int4 {fn} AS "
        + body("pg_backend_pid()", "RETURN pg_catalog.pg_backend_pid()"),
        f"CREATE FUNCTION {schema}.pg_get_expr(e pg_catalog.pg_node_tree, r pg_catalog.oid) RETURNS pg_catalog.text "
        f"{fn} AS " + body("pg_get_expr()", "RETURN pg_catalog.pg_get_expr(e, r)"),
        f"CREATE FUNCTION {schema}.format_type(t pg_catalog.oid, m pg_catalog.int4) RETURNS pg_catalog.text "
        f"{fn} AS " + body("format_type()", "RETURN pg_catalog.format_type(t, m)"),
    ]
    for typ, builtin in (("text", "text"), ("oid", "oid"), ("integer", "int4"), ("int2", "int2")):
        statements += [
            f"CREATE FUNCTION {schema}.array_step(s pg_catalog.{builtin}[], v pg_catalog.{builtin}) "
            f"RETURNS pg_catalog.{builtin}[] {fn} AS "
            + body(f"array_agg({typ})", "RETURN pg_catalog.array_append(s, v)"),
            f"CREATE AGGREGATE {schema}.array_agg(pg_catalog.{builtin}) (SFUNC = {schema}.array_step, "
            f"STYPE = pg_catalog.{builtin}[])",
        ]
    for typ in ("text", "oid", "int4", "int2", "name"):
        statements += [
            f"CREATE FUNCTION {schema}.eq(a pg_catalog.{typ}, b pg_catalog.{typ}) RETURNS boolean {fn} AS "
            + body(f"{typ} = {typ}", "RETURN a OPERATOR(pg_catalog.=) b"),
            f"CREATE OPERATOR {schema}.= (LEFTARG = pg_catalog.{typ}, RIGHTARG = pg_catalog.{typ}, "
            f"FUNCTION = {schema}.eq)",
        ]
    # a type named like a built-in one, for casts such as `x::text`
    statements += [
        f"CREATE FUNCTION {schema}.noted(what pg_catalog.text) RETURNS boolean {fn} AS "
        f"$$ BEGIN PERFORM {note}(what); RETURN true; END $$",
        f"CREATE DOMAIN {schema}.text AS pg_catalog.text CHECK ({schema}.noted('::text'))",
        "RESET ROLE",
    ]
    with cluster.connect(dbname) as conn:
        for s in statements:
            conn.execute(s)


def search_path_traps_fired(cluster: Cluster, schema: str = "mallory", dbname: str = "postgres") -> list[tuple]:
    """What ran of the traps: (trap, role, backend type, application name) per call."""
    return cluster.execute(f"SELECT DISTINCT what, who, backend, application FROM {schema}.fired ORDER BY 1", dbname)


def trapped_superuser(cluster: Cluster, role: str, search_path: str, dbname: str = "postgres") -> str:
    """A superuser whose sessions have `search_path`; returns its DSN."""
    cluster.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
    cluster.execute(f"ALTER ROLE {role} SET search_path = {search_path}")
    return cluster.dsn(dbname, user=role)
