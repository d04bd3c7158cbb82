#!/usr/bin/env python3
"""pgcdc extension benchmark: feed staging rate vs pg_recvlogical, and commit->queue latency.

    .venv/bin/python bench/ext_staging.py [--rows 200000] [--txs 20000] [--rate 500] [--seconds 10]

Needs the extension installed (release build for meaningful numbers: pgcdc_ext/install.sh).
Runs in a throwaway cluster (tests/pgcluster.py).

1. Staging rate, same run, same WAL. Two slots on one publication, created before the
   workload: the feed's (its worker paused) and a plain pgoutput slot. The workload runs
   (200k rows in one transaction, 20k single-row transactions, or 20k wide rows of 2 KB
   TOASTed text + a jsonb in one transaction); then, one after the other:
   pg_recvlogical drains its slot to /dev/null up to the workload's end LSN (the raw
   ceiling: walsender decoding + the unix socket, the transport the feed's worker uses), and
   the feed is resumed and timed until its last event is in the queue. Reported: rows/s for both and the ratio feed/pg_recvlogical.
   Then pgcdc.read of the first 1000 events is timed at once (the queue has no statistics
   yet: the read must not depend on them).
   Between rounds the queue is vacuumed, as autovacuum keeps it on a running server (rounds
   run back to back: each would otherwise stage into the dead events of all before it).
2. Latency: the feed running live, single-row transactions committed at a fixed rate; for
   every event, (time the LISTENing client got the feed's wake-up NOTIFY for it) - (commit
   time in the event's source.ts_us). Reported: p50, p99, max.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from pgcluster import Cluster, pg_bindir  # noqa: E402

SETTINGS = {
    "shared_preload_libraries": "pgcdc",
    "pgcdc.status_interval": 200,
    "pgcdc.launcher_interval": 200,
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "shared_buffers": "512MB",
}

TABLE = "CREATE TABLE bench_t (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2), at timestamptz)"
ROW = "g, 'item ' || g, (g % 100)::int, (g % 1000) / 10.0, now()"
# W3: wide rows, 2 KB of text that does not compress (moved out of line: TOASTed) + a jsonb.
WIDE_TABLE = "CREATE TABLE bench_t (id bigint PRIMARY KEY, doc text, attrs jsonb)"
WIDE_ROW = (
    "g, (SELECT string_agg(md5((g * 64 + k)::text), '') FROM generate_series(1, 64) k), "
    "(SELECT jsonb_object_agg('attr_' || k, md5((g + k)::text)) FROM generate_series(1, 12) k)"
)


def lsn_int(lsn: str) -> int:
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def wait(fn, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


class CpuWatch:
    """Samples the CPU time of the walsender serving `application_name` until it exits."""

    def __init__(self, c: Cluster, application_name: str):
        self.c, self.app, self.last, self.pid = c, application_name, 0.0, None
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self) -> None:
        with self.c.connect() as conn:
            while not self.stop.is_set():
                if self.pid is None:
                    r = conn.execute(
                        "SELECT pid FROM pg_stat_replication WHERE application_name = %s", [self.app]
                    ).fetchall()
                    if r:
                        self.pid = r[0][0]
                if self.pid is not None:
                    v = cpu_s(self.pid)
                    if v is None:
                        return
                    self.last = v
                time.sleep(0.005)

    def done(self) -> float:
        self.stop.set()
        self.t.join()
        return self.last


def vacuum_queue(c: Cluster) -> None:
    """The queue's dead events (dropped feeds', acknowledged ones), vacuumed as autovacuum would
    on a running server: runs back to back would each stage into every earlier run's."""
    c.execute("VACUUM pgcdc.event")


def staging_round(c: Cluster, label: str, table: str, workload: str, rows: int, recv_first: bool) -> dict:
    feed = f"b_{label}"
    c.execute("DROP TABLE IF EXISTS bench_t")
    c.execute("DROP PUBLICATION IF EXISTS bench_p")
    c.execute(table)
    c.execute("CREATE PUBLICATION bench_p FOR TABLE bench_t")
    c.execute(f"SELECT pgcdc.create_feed('{feed}', publication => 'bench_p', options => '{{\"snapshot.mode\": \"no_data\"}}')")
    c.execute(f"SELECT pgcdc.pause_feed('{feed}')")
    wait(
        lambda: c.execute("SELECT NOT active FROM pg_replication_slots WHERE slot_name = %s", params=[f"pgcdc_{feed}"])[0][0],
        30,
        "the paused feed to release its slot",
    )
    c.execute("SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
    t0 = time.monotonic()
    c.psql("-c", workload)
    gen_s = time.monotonic() - t0
    end_lsn = c.execute("SELECT pg_current_wal_lsn()::text")[0][0]
    c.execute("CHECKPOINT")

    cpu: dict[str, float] = {}

    def run_recvlogical() -> float:
        # pg_recvlogical: drain the identical slot to /dev/null up to the workload's end.
        watch = CpuWatch(c, "pg_recvlogical")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True, timeout=600)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu["pg_recvlogical_client_cpu_s"] = round(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3
        )
        cpu["pg_recvlogical_walsender_cpu_s"] = round(watch.done(), 3)
        return wall

    def run_feed() -> float:
        # The feed: resume, time until the worker has staged every row.
        watch = CpuWatch(c, f"pgcdc feed {feed}")
        t0 = time.monotonic()
        c.execute(f"SELECT pgcdc.resume_feed('{feed}')")
        wait(done, 900, "the feed to stage the workload", interval=0.005)
        wall = time.monotonic() - t0
        pid = c.execute(
            "SELECT r.pid FROM pgcdc.feed_runtime r JOIN pgcdc.feed f ON f.id = r.feed_id WHERE f.name = %s",
            params=[feed],
        )[0][0]
        cpu["feed_worker_cpu_s"] = round(cpu_s(pid) or 0.0, 3)
        watch.stop.set()
        watch.t.join()
        cpu["feed_walsender_cpu_s"] = round(watch.last, 3)
        return wall

    # Polled over one connection: a new backend every 5 ms would take a core from the feed.
    poll = c.connect()

    def done():
        r = poll.execute(
            "SELECT r.staged_total FROM pgcdc.feed_runtime r JOIN pgcdc.feed f ON f.id = r.feed_id "
            "WHERE f.name = %s",
            [feed],
        ).fetchall()
        return r and r[0][0] >= rows

    argv = [
        str(pg_bindir() / "pg_recvlogical"),
        # Over the unix socket, as the feed's worker streams its slot.
        "-h", str(c.sockdir), "-p", str(c.port), "-U", "postgres", "-d", "postgres",
        "--slot", "bench_recv", "--start", "-E", end_lsn, "-F", "0", "-f", "/dev/null",
        "-o", "proto_version=1", "-o", "publication_names=bench_p", "--no-loop",
    ]
    if recv_first:
        recv_s = run_recvlogical()
        feed_s = run_feed()
    else:
        feed_s = run_feed()
        recv_s = run_recvlogical()
    # pgcdc.read right after staging, before autovacuum analyzes the queue: the first page of
    # 1000 events (it must not depend on statistics).
    read_ms = []
    for _ in range(5):
        t0 = time.perf_counter()
        got = c.execute(f"SELECT count(*) FROM pgcdc.read('{feed}', 1000)")[0][0]
        read_ms.append((time.perf_counter() - t0) * 1000)
        assert got == min(rows, 1000)
    staged = c.execute(
        "SELECT count(*) FROM pgcdc.event e JOIN pgcdc.feed f ON f.id = e.feed_id WHERE f.name = %s", params=[feed]
    )[0][0]
    assert staged == rows, f"staged {staged} of {rows}"
    poll.close()
    c.execute(f"SELECT pgcdc.drop_feed('{feed}')")
    vacuum_queue(c)
    c.execute("SELECT pg_drop_replication_slot('bench_recv')")
    return {
        "workload": label,
        "rows": rows,
        "generate_s": round(gen_s, 3),
        "pg_recvlogical_s": round(recv_s, 3),
        "feed_s": round(feed_s, 3),
        "pg_recvlogical_rows_per_s": round(rows / recv_s),
        "feed_rows_per_s": round(rows / feed_s),
        "ratio": round(recv_s / feed_s, 3),
        "first": "pg_recvlogical" if recv_first else "feed",
        "read_1000_ms": round(statistics.median(read_ms), 1),
        **cpu,
    }


def latency_round(c: Cluster, rate: int, seconds: float) -> dict:
    feed = "b_latency"
    c.execute("DROP TABLE IF EXISTS bench_t")
    c.execute("DROP PUBLICATION IF EXISTS bench_p")
    c.execute(TABLE)
    c.execute("CREATE PUBLICATION bench_p FOR TABLE bench_t")
    c.execute(f"SELECT pgcdc.create_feed('{feed}', publication => 'bench_p', options => '{{\"snapshot.mode\": \"no_data\"}}')")
    wait(
        lambda: c.execute(f"SELECT phase = 'streaming' FROM pgcdc.feed_status WHERE name = '{feed}'")[0][0],
        30,
        "the feed to stream",
    )
    wakeups: list[tuple[int, int, float]] = []  # (commit_lsn, ordinal, unix time received)
    stop = threading.Event()
    listener = c.connect()
    listener.execute(f"LISTEN pgcdc_{feed}")

    def listen():
        while not stop.is_set():
            for n in listener.notifies(timeout=0.2):
                now = time.time()
                p = json.loads(n.payload)
                wakeups.append((lsn_int(p["commit_lsn"]), p["ordinal"], now))
                if stop.is_set():
                    break

    t = threading.Thread(target=listen)
    t.start()
    n = int(rate * seconds)
    insert_one = "INSERT INTO bench_t SELECT " + ROW.replace("%", "%%") + " FROM (SELECT %s::bigint AS g) s"
    with c.connect() as w:
        start = time.monotonic()
        for i in range(n):
            due = start + i / rate
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            w.execute(insert_one, [i + 1])
        achieved = n / (time.monotonic() - start)
    wait(lambda: len(wakeups) and wakeups[-1][0] and c.execute(
        f"SELECT count(*) FROM pgcdc.read('{feed}', 1000000)")[0][0] >= n, 60, "all events")
    time.sleep(0.5)
    stop.set()
    t.join()
    listener.close()
    events = c.execute(
        f"SELECT commit_lsn::text, ordinal, (event->'source'->>'ts_us')::bigint FROM pgcdc.read('{feed}', 1000000)"
    )
    wk = sorted(wakeups)
    lat_ms = []
    j = 0
    for commit_lsn, ordinal, ts_us in sorted((lsn_int(a), b, c_) for a, b, c_ in events):
        while j < len(wk) and (wk[j][0], wk[j][1]) < (commit_lsn, ordinal):
            j += 1
        if j == len(wk):
            break
        lat_ms.append((wk[j][2] * 1e6 - ts_us) / 1000.0)
    lat_ms.sort()
    c.execute(f"SELECT pgcdc.drop_feed('{feed}')")

    def pct(p: float) -> float:
        return round(lat_ms[min(len(lat_ms) - 1, int(p * len(lat_ms)))], 2)

    return {
        "target_tx_per_s": rate,
        "achieved_tx_per_s": round(achieved),
        "events": len(lat_ms),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat_ms[-1], 2),
        "mean_ms": round(statistics.fmean(lat_ms), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the one-transaction workload")
    ap.add_argument("--txs", type=int, default=20_000, help="single-row transactions")
    ap.add_argument("--wide-rows", type=int, default=20_000, help="rows of 2 KB TOASTed text + jsonb, one transaction")
    ap.add_argument("--rate", type=int, default=500, help="tx/s for the latency run")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    ap.add_argument("--repeat", type=int, default=3, help="staging rounds per workload (median reported)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    results: dict = {"staging": [], "runs": [], "latency": None, "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    with Cluster(SETTINGS, name="pgcdc-bench") as c:
        c.execute("CREATE EXTENSION pgcdc")
        big = f"INSERT INTO bench_t SELECT {ROW} FROM generate_series(1, {args.rows}) g"
        small = (
            f"DO $$ BEGIN FOR i IN 1..{args.txs} LOOP "
            f"INSERT INTO bench_t SELECT {ROW} FROM (SELECT i::bigint AS g) s; COMMIT; END LOOP; END $$"
        )
        # Warm-up (not reported): a long-running server has its shared buffers mapped; a
        # fresh one pays a page fault the first time each buffer is used.
        wide = f"INSERT INTO bench_t SELECT {WIDE_ROW} FROM generate_series(1, {args.wide_rows}) g"
        workloads = (
            ("one_tx", TABLE, big, args.rows),
            ("single_row_txs", TABLE, small, args.txs),
            ("wide_rows", WIDE_TABLE, wide, args.wide_rows),
        )
        warm = staging_round(c, "warmup", TABLE, big, args.rows, recv_first=True)
        # The warm-up's queue never had statistics: its read shows whether pgcdc.read
        # depends on them (a plan that sorts the whole queue takes 10x longer).
        results["read_1000_ms_never_analyzed"] = warm["read_1000_ms"]
        for i in range(args.repeat):
            for label, table, sql, n in workloads:
                r = staging_round(c, label, table, sql, n, recv_first=(i % 2 == 0))
                results["runs"].append(r)
                print(f"  {label} run {i + 1}: {r}", flush=True)
        for label, *_ in workloads:
            runs = [r for r in results["runs"] if r["workload"] == label]
            recv = statistics.median(r["pg_recvlogical_rows_per_s"] for r in runs)
            feedr = statistics.median(r["feed_rows_per_s"] for r in runs)
            results["staging"].append(
                {
                    "workload": label,
                    "rows": runs[0]["rows"],
                    "pg_recvlogical_rows_per_s": round(recv),
                    "feed_rows_per_s": round(feedr),
                    "ratio": round(feedr / recv, 3),
                    "ratios": [r["ratio"] for r in runs],
                    "read_1000_ms": statistics.median(r["read_1000_ms"] for r in runs),
                    "cpu_s_median": {
                        k: statistics.median(r[k] for r in runs)
                        for k in (
                            "pg_recvlogical_walsender_cpu_s",
                            "pg_recvlogical_client_cpu_s",
                            "feed_walsender_cpu_s",
                            "feed_worker_cpu_s",
                        )
                    },
                }
            )
        results["latency"] = latency_round(c, args.rate, args.seconds)

    results["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nstaging rate (same WAL per round, drained one after the other; median of {args.repeat})")
    print(f"{'workload':<16}{'rows':>9}{'pg_recvlogical':>16}{'feed':>14}{'ratio':>8}  per-round ratios")
    for r in results["staging"]:
        print(
            f"{r['workload']:<16}{r['rows']:>9}{r['pg_recvlogical_rows_per_s']:>12} r/s"
            f"{r['feed_rows_per_s']:>10} r/s{r['ratio']:>8.2f}  {r['ratios']}"
        )
        print(f"{'':<16}pgcdc.read of 1000 events right after staging (no ANALYZE yet): {r['read_1000_ms']} ms")
        cm = r["cpu_s_median"]
        print(
            f"{'':<16}CPU s: pg_recvlogical {cm['pg_recvlogical_client_cpu_s']} + its walsender "
            f"{cm['pg_recvlogical_walsender_cpu_s']}; feed worker {cm['feed_worker_cpu_s']} + its walsender "
            f"{cm['feed_walsender_cpu_s']}"
        )
    print(
        f"pgcdc.read of 1000 of {args.rows} events on a queue never analyzed (warm-up round): "
        f"{results['read_1000_ms_never_analyzed']} ms"
    )
    lat = results["latency"]
    print(
        f"\ncommit -> queue latency at {lat['achieved_tx_per_s']} tx/s ({lat['events']} events): "
        f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms"
    )
    print(f"load average before {results['loadavg_before']}, after {results['loadavg_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
