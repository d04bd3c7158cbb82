#!/usr/bin/env python3
"""Events/s delivered to an asyncio `async for` loop by pgcdc's Python clients, against
`pg_recvlogical` draining an identical slot (the raw ceiling of the walsender path).

Workloads (same table and WAL for every consumer; each consumer has its own slot created
before the load, so they all decode the very same changes):

    big    200k rows inserted in one transaction
    small  20k single-row transactions
    wide   20k rows of 2 KB TOASTed text + a jsonb, in one transaction

Consumers:

    pg_recvlogical        -f /dev/null --endpos, proto_version 1 (the ceiling)
    reader                pgcdc.LogicalReplicationReader, loop body touches nothing
    reader+values         ... and converts every row (`event.after`) to Python values
    feed                  pgcdc.connect(feed=...) (only when the extension is installed);
                          the queue is vacuumed before each feed run, as autovacuum keeps
                          it on a running server (ext_staging.vacuum_queue)

Reported per consumer: wall seconds, events/s, ratio to pg_recvlogical, and CPU per event of
the consumer process (user+sys from getrusage; the walsender's CPU is not included); for
pg_recvlogical and the feed also the server's CPU per event: pg_recvlogical's walsender, and
the feed's worker + its walsender + the client's read/ack session.

Live (with the extension; --live-seconds, 0 skips it): single-row transactions committed at
--live-rate per second while a feed client waits for them (`auto_acknowledge=True`, touching
`.after`): p50/p99 of commit (the event's source.ts_us) -> the event in Python.

    .venv/bin/python bench/py_client_bench.py [--rows-big 200000] [--txns-small 20000]
           [--repeat 3] [--json results.json]

Memory (--memory-events, 0 skips it): the reader and the feed client, each in a fresh
process, consume a stream of that many W1 events (transactions of 100k) converting every row,
with a read-ahead buffer of 1024 events; their private memory (RssAnon) after a quarter of the
stream and at its end must not grow by more than 10% + 4 MB. On top of that a client holds at
most its buffer (`max_buffered`, 16384 events by default: up to about 50 MB of these W1 events measured
here, reached whenever Python falls behind).

Needs the Python package built (`make py-develop`, preferably `PY_PROFILE=bench`) and PostgreSQL
15 binaries. It starts and stops its own throwaway cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ext_staging import CpuWatch, cpu_s, vacuum_queue  # noqa: E402
from pgcluster import Cluster  # noqa: E402

import pgcdc  # noqa: E402

TABLE = """CREATE TABLE bench (
    id bigserial PRIMARY KEY,
    s  text,
    n  numeric,
    ts timestamptz,
    j  jsonb
)"""
COLUMNS = "md5(g::text), g * 1.25, '2024-01-01 00:00+00'::timestamptz + g * interval '1 second', jsonb_build_object('g', g, 'tag', 'x')"
# wide: 2 KB of text that does not compress (so it is moved out of line) + a jsonb
WIDE_TABLE = "CREATE TABLE bench (id bigserial PRIMARY KEY, doc text, attrs jsonb)"
WIDE_COLUMNS = (
    "(SELECT string_agg(md5((g * 64 + k)::text), '') FROM generate_series(1, 64) k), "
    "(SELECT jsonb_object_agg('attr_' || k, md5((g + k)::text)) FROM generate_series(1, 12) k)"
)


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def load(c: Cluster, workload: str, rows_big: int, txns_small: int, rows_wide: int) -> int:
    """Runs the workload; returns the number of row events it produces."""
    if workload == "big":
        c.execute(f"INSERT INTO bench (s, n, ts, j) SELECT {COLUMNS} FROM generate_series(1, {rows_big}) g")
        return rows_big
    if workload == "wide":
        c.execute(f"INSERT INTO bench (doc, attrs) SELECT {WIDE_COLUMNS} FROM generate_series(1, {rows_wide}) g")
        return rows_wide
    # many single-row transactions, from one psql session (fast, and each is its own commit)
    sql = "\n".join(
        f"INSERT INTO bench (s, n, ts, j) SELECT {COLUMNS} FROM (SELECT {i} AS g) x;" for i in range(1, txns_small + 1)
    )
    c.psql("-f", "-", input=sql)
    return txns_small


def run_recvlogical(c: Cluster, slot: str, endpos: str) -> tuple[float, float, float]:
    """(wall s, pg_recvlogical's CPU s, its walsender's CPU s)."""
    argv = [
        c.bin("pg_recvlogical"), "-d", c.dsn(), "--slot", slot, "--start", "-f", "/dev/null",
        "-o", "proto_version=1", "-o", "publication_names=bench_pub", "--endpos", endpos, "--no-loop",
    ]
    watch = CpuWatch(c, "pg_recvlogical")
    c0, t0 = cpu_children(), time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0, cpu_children() - c0, watch.done()


async def run_reader(c: Cluster, slot: str, expected: int, touch_values: bool) -> tuple[float, float, None]:
    r = pgcdc.LogicalReplicationReader("bench_pub", slot, host="127.0.0.1", database="postgres", port=c.port)
    n = 0
    c0, t0 = cpu_self(), time.perf_counter()
    async for ev in r:
        if touch_values:
            ev.after  # noqa: B018 - converts the row to Python values
        n += 1
        if n >= expected:
            break
    wall, cpu = time.perf_counter() - t0, cpu_self() - c0
    await r.stop()
    return wall, cpu, None


async def run_feed(c: Cluster, feed: str, expected: int, touch_values: bool) -> tuple[float, float, float]:
    """(wall s, this process's CPU s, the server's CPU s for the feed: its worker and walsender,
    both started by the resume, and the client's read/ack session)."""
    n = 0
    c0, t0 = cpu_self(), time.perf_counter()
    await pgcdc.resume_feed(c.dsn(), feed)
    async with await pgcdc.connect(c.dsn(), feed=feed, auto_acknowledge=True) as stream:
        async for ev in stream:
            if touch_values:
                ev.after  # noqa: B018
            n += 1
            if n >= expected:
                break
        wall, cpu = time.perf_counter() - t0, cpu_self() - c0
        worker, walsender = c.execute(
            "SELECT r.pid, (SELECT pid FROM pg_stat_replication WHERE application_name = 'pgcdc feed ' || f.name) "
            "FROM pgcdc.feed_runtime r JOIN pgcdc.feed f ON f.id = r.feed_id WHERE f.name = %s",
            params=[feed],
        )[0]
        parts = {who: cpu_s(pid) or 0.0 for who, pid in
                 (("worker", worker), ("walsender", walsender), ("session", stream.backend_pid)) if pid}
    print(f"    {feed}: server CPU s {parts}", flush=True)
    return wall, cpu, sum(parts.values())


async def live_feed(c: Cluster, feed: str, rate: int, seconds: float) -> list[float]:
    """Milliseconds from each commit to its event in Python, `rate` single-row commits/s."""
    n = int(rate * seconds)
    insert = f"INSERT INTO bench (s, n, ts, j) SELECT {COLUMNS} FROM (SELECT %s AS g) x"

    def write() -> None:
        with c.connect() as w:
            start = time.monotonic()
            for i in range(n):
                ahead = start + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                w.execute(insert, [i + 1])

    lat: list[float] = []
    async with await pgcdc.connect(c.dsn(), feed=feed, auto_acknowledge=True) as stream:
        writer = threading.Thread(target=write)
        writer.start()
        async for ev in stream:
            now_us = time.time() * 1e6
            ev.after  # noqa: B018
            lat.append((now_us - ev.source["ts_us"]) / 1000)
            if len(lat) >= n:
                break
        writer.join()
    return sorted(lat)


def rss_anon_kb() -> int:
    """This process's private resident memory (kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


# A consumer's memory is flat in the stream's length when its private memory at the end is at
# most this much above what it was after a quarter of the stream (the snapshot benchmark's rule).
MEMORY_GROWTH_PCT, MEMORY_GROWTH_KB = 10, 4096
MEMORY_BUFFERED = 1024


async def memory_child(kind: str, dsn: str, port: int, expected: int) -> dict:
    """Run in a process of its own: consumes `expected` events converting every row, and
    reports its private memory after a quarter of them and at the end."""
    quarter = 0
    n = 0
    # A small read-ahead buffer: the default (16384 events) fills whenever Python lags, and its
    # high-water mark would hide whether memory grows with the stream (what is measured here).
    if kind == "reader":
        stream = pgcdc.LogicalReplicationReader("bench_pub", "bench_mem", host="127.0.0.1", database="postgres",
                                                port=port, max_buffered=MEMORY_BUFFERED)
    else:
        await pgcdc.resume_feed(dsn, "bench_mem")
        stream = await pgcdc.connect(dsn, feed="bench_mem", auto_acknowledge=True, max_buffered=MEMORY_BUFFERED)
    async for ev in stream:
        ev.after  # noqa: B018
        n += 1
        if n == expected // 4:
            quarter = rss_anon_kb()
        if n >= expected:
            break
    full = rss_anon_kb()
    await (stream.stop() if kind == "reader" else stream.close())
    return {"quarter_kb": quarter, "full_kb": full}


def memory_runs(c: Cluster, events: int, with_feed: bool) -> list[dict]:
    """Reader and feed client private memory over a stream of `events` W1 rows (transactions
    of 100k), each consumer in a fresh process."""
    c.execute("DROP TABLE IF EXISTS bench CASCADE")
    c.execute("DROP PUBLICATION IF EXISTS bench_pub")
    c.execute(TABLE)
    c.execute("CREATE PUBLICATION bench_pub FOR TABLE bench")
    c.execute("SELECT pg_create_logical_replication_slot('bench_mem', 'pgoutput')")
    kinds = ["reader"]
    if with_feed:
        kinds.append("feed")
        c.execute("SELECT pgcdc.create_feed('bench_mem', 'bench_pub', options => '{\"snapshot.mode\": \"no_data\"}')")
        c.execute("SELECT pgcdc.pause_feed('bench_mem')")
    for done in range(0, events, 100_000):
        last = min(events, done + 100_000)
        c.execute(f"INSERT INTO bench (s, n, ts, j) SELECT {COLUMNS} FROM generate_series({done + 1}, {last}) g")
    out = []
    for kind in kinds:
        if kind == "feed":
            vacuum_queue(c)
        child = subprocess.run(
            [sys.executable, __file__, "--memory-child", kind, "--memory-dsn", c.dsn(), "--memory-port", str(c.port),
             "--memory-events", str(events)],
            check=True, capture_output=True, text=True, timeout=900,
        )
        r = json.loads(child.stdout.strip().splitlines()[-1])
        growth = r["full_kb"] - r["quarter_kb"]
        ok = growth <= r["quarter_kb"] * MEMORY_GROWTH_PCT / 100 + MEMORY_GROWTH_KB
        pct = 100 * growth / max(r["quarter_kb"], 1)
        print(f"memory {kind}: private {r['quarter_kb']} kB after {events // 4} events -> {r['full_kb']} kB after "
              f"{events} ({pct:+.1f}%) {'flat' if ok else 'GROWS'}", flush=True)
        out.append({"workload": "memory", "consumer": kind, "events": events, **r, "growth_pct": round(pct, 1), "ok": ok})
    c.execute("SELECT pg_drop_replication_slot('bench_mem')")
    if with_feed:
        c.execute("SELECT pgcdc.drop_feed('bench_mem')")
    return out


def extension_available() -> bool:
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from ext_support import extension_installed  # type: ignore

        return bool(extension_installed()) and hasattr(pgcdc, "connect")
    except Exception:  # noqa: BLE001
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows-big", type=int, default=200_000)
    ap.add_argument("--txns-small", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=1, help="best of N runs per consumer")
    ap.add_argument("--rows-wide", type=int, default=20_000)
    ap.add_argument("--workloads", default="big,small,wide")
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument("--no-feed", action="store_true", help="skip the feed client even if the extension is there")
    ap.add_argument("--live-rate", type=int, default=500, help="commits/s of the live run")
    ap.add_argument("--live-seconds", type=float, default=5.0, help="length of the live run (0: none)")
    ap.add_argument("--memory-events", type=int, default=1_000_000,
                    help="events of the memory run: reader and feed client RSS after 25%% and 100%% (0: none)")
    ap.add_argument("--memory-child", choices=["reader", "feed"], help=argparse.SUPPRESS)
    ap.add_argument("--memory-dsn", help=argparse.SUPPRESS)
    ap.add_argument("--memory-port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        print(json.dumps(asyncio.run(memory_child(args.memory_child, args.memory_dsn, args.memory_port, args.memory_events))))
        return 0

    with_feed = not args.no_feed and extension_available()
    settings = {"shared_buffers": "512MB", "max_wal_size": "4GB", "wal_sender_timeout": "0"}
    if with_feed:
        settings["shared_preload_libraries"] = "pgcdc"
    results = []
    live: dict | None = None
    with Cluster(settings, name="pgcdc-bench") as c:
        if with_feed:
            c.execute("CREATE EXTENSION pgcdc")
        for workload in args.workloads.split(","):
            best: dict[str, tuple[float, float]] = {}
            for rep in range(args.repeat):
                c.execute("DROP TABLE IF EXISTS bench CASCADE")
                c.execute("DROP PUBLICATION IF EXISTS bench_pub")
                for (s,) in c.execute("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'bench_%'"):
                    c.execute("SELECT pg_drop_replication_slot(%s)", params=[s])
                c.execute(WIDE_TABLE if workload == "wide" else TABLE)
                c.execute("CREATE PUBLICATION bench_pub FOR TABLE bench")
                slots = ["bench_recv", "bench_reader", "bench_reader_values"]
                for s in slots:
                    c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", params=[s])
                if with_feed:
                    for f in ("bench_feed", "bench_feed_values"):
                        c.execute("SELECT pgcdc.drop_feed(%s, if_exists => true)", params=[f])
                        c.execute("SELECT pgcdc.create_feed(%s, 'bench_pub', options => '{\"tombstones.on.delete\": \"false\", \"snapshot.mode\": \"no_data\"}')", params=[f])
                        # paused during the load: the measurement covers decoding, staging and reading
                        c.execute("SELECT pgcdc.pause_feed(%s)", params=[f])
                expected = load(c, workload, args.rows_big, args.txns_small, args.rows_wide)
                (endpos,) = c.execute("SELECT pg_current_wal_lsn()::text")[0]
                c.execute("CHECKPOINT")
                runs = {
                    "pg_recvlogical": lambda: run_recvlogical(c, "bench_recv", endpos),
                    "reader": lambda: asyncio.run(run_reader(c, "bench_reader", expected, False)),
                    "reader+values": lambda: asyncio.run(run_reader(c, "bench_reader_values", expected, True)),
                }
                if with_feed:
                    runs["feed"] = lambda: asyncio.run(run_feed(c, "bench_feed", expected, False))
                    runs["feed+values"] = lambda: asyncio.run(run_feed(c, "bench_feed_values", expected, True))
                for name, fn in runs.items():
                    if name.startswith("feed"):
                        vacuum_queue(c)
                    wall, cpu, server = fn()
                    if name not in best or wall < best[name][0]:
                        best[name] = (wall, cpu, server)
                if with_feed:
                    for f in ("bench_feed", "bench_feed_values"):
                        c.execute("SELECT pgcdc.drop_feed(%s, if_exists => true)", params=[f])
            base = expected / best["pg_recvlogical"][0]
            for name, (wall, cpu, server) in best.items():
                rate = expected / wall
                results.append({
                    "workload": workload,
                    "consumer": name,
                    "events": expected,
                    "seconds": round(wall, 3),
                    "events_per_s": round(rate),
                    "ratio": round(rate / base, 3),
                    "cpu_us_per_event": round(cpu / expected * 1e6, 2),
                    # pg_recvlogical: its walsender; the feed: worker + walsender + read/ack session
                    "server_cpu_us_per_event": None if server is None else round(server / expected * 1e6, 2),
                })
        if with_feed and args.live_seconds > 0:
            c.execute("DROP TABLE IF EXISTS bench CASCADE")
            c.execute("DROP PUBLICATION IF EXISTS bench_pub")
            c.execute(TABLE)
            c.execute("CREATE PUBLICATION bench_pub FOR TABLE bench")
            c.execute("SELECT pgcdc.create_feed('bench_live', 'bench_pub', options => '{\"snapshot.mode\": \"no_data\"}')")
            deadline = time.monotonic() + 30
            while c.execute("SELECT phase FROM pgcdc.feed_status WHERE name = 'bench_live'")[0][0] != "streaming":
                assert time.monotonic() < deadline, "the live feed did not start streaming"
                time.sleep(0.05)
            lat = asyncio.run(live_feed(c, "bench_live", args.live_rate, args.live_seconds))
            live = {"workload": "live", "consumer": "feed+values", "rate": args.live_rate, "events": len(lat),
                    "p50_ms": round(lat[len(lat) // 2], 2), "p99_ms": round(lat[int(len(lat) * 0.99)], 2),
                    "max_ms": round(lat[-1], 2)}
        memory = memory_runs(c, args.memory_events, with_feed) if args.memory_events > 0 else []
    print(f"{'workload':<8} {'consumer':<16} {'events':>8} {'seconds':>8} {'events/s':>10} {'ratio':>6} {'cpu µs/ev':>10}")
    for r in results:
        print(f"{r['workload']:<8} {r['consumer']:<16} {r['events']:>8} {r['seconds']:>8.2f} {r['events_per_s']:>10} "
              f"{r['ratio']:>6.2f} {r['cpu_us_per_event']:>10.2f}")
    if live:
        print(f"live: {live['rate']} commits/s, commit -> feed client event in Python ({live['events']} events): "
              f"p50 {live['p50_ms']} ms, p99 {live['p99_ms']} ms, max {live['max_ms']} ms")
        results.append(live)
    results.extend(memory)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
