#!/usr/bin/env python3
"""pgcdc snapshot benchmark: rows/s of an initial snapshot, staged and delivered to Python,
against `COPY (SELECT * FROM t) TO STDOUT` of the same table in the same run.

    .venv/bin/python bench/snapshot_bench.py [--rows 2000000] [--repeat 3] [--quick]
           [--fetch-size N] [--no-python] [--json results.json]

Needs the extension installed (release build for meaningful numbers: pgcdc_ext/install.sh)
and, for the Python figure, the release Python package (`make py-develop PY_RELEASE=1`).
Runs in a throwaway cluster (tests/pgcluster.py). One table of the W1 shape (id bigint
primary key, name text, qty int, price numeric(10,2), created timestamptz), loaded with
generate_series, then VACUUM ANALYZE and CHECKPOINT; a second table with a quarter of the
rows shows whether the feed worker's memory grows with the table.

1. COPY, the ceiling: `psql -c "COPY (SELECT * FROM t) TO STDOUT" > /dev/null` over TCP, one
   warm-up, then `--repeat` timed runs before the snapshots and `--repeat` after them
   (median of all reported, the spread too).
2. Staging: after one warm-up snapshot of the quarter table (not reported: it maps the shared
   buffers, which a fresh server pays page faults for, as ext_staging.py's warm-up does), a fresh feed with {"snapshot.mode": "initial", "max_staged_rows": 0,
   "max_staged_bytes": 0} (no queue cap: the rate is the snapshot's, not a consumer's),
   timed from create_feed's commit until pgcdc.snapshots says 'done' (polled every 50 ms),
   with rows == the table's. Every poll also samples the feed worker
   (pgcdc.feed_status.worker_pid): /proc/<pid>/status VmRSS, VmHWM and RssAnon. VmRSS counts
   the shared buffers the worker touched (RssShmem: it grows with the table up to
   shared_buffers whatever the worker does), so "flat in table size" is judged on RssAnon,
   the worker's private memory: its peak on the full table against its peak on the quarter
   table (another fresh feed and worker), and its value at 25% and at 100% of the full one.
3. Python delivery: a fresh feed with {"snapshot.mode": "initial"} and the default queue caps,
   consumed by `pgcdc.connect(feed=..., auto_acknowledge=True)` in an `async for` loop that
   converts every row (`event.after`), timed from create_feed until the last 'r' event of the
   table is in the loop.

Between runs the feed is dropped, pgcdc.event vacuumed and a CHECKPOINT taken, so each run
starts from the same state. Rates are rows/s; ratios are against the median COPY rate. The
machine is shared and noisy: the ratios, measured in one run, are the figures to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from ext_staging import SETTINGS as STAGING_SETTINGS  # noqa: E402
from ext_staging import cpu_s  # noqa: E402
from pgcluster import Cluster, pg_bindir  # noqa: E402

# The staging benchmark's server, without the walsender timeout: a long snapshot on a loaded
# machine must not be cut off by it.
SETTINGS = {**STAGING_SETTINGS, "wal_sender_timeout": "0"}

TABLE = "CREATE TABLE {name} (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2), created timestamptz)"
ROW = "g, 'item ' || g, (g % 100)::int, (g % 100000) / 100.0, '2024-01-01 00:00+00'::timestamptz + g * interval '1 second'"

TARGET_STAGING = 0.5  # x COPY
TARGET_PYTHON = 0.3  # x COPY
# "Flat in table size": the worker's peak private memory on the full table at most this much
# above its peak on the quarter table (relative, plus a little absolute slack for the
# allocator's granularity).
RSS_FLAT_REL = 0.10
RSS_FLAT_ABS_KB = 4096

POLL_S = 0.05


def mem_kb(pid: int) -> dict[str, int] | None:
    """VmRSS, VmHWM, RssAnon, RssShmem of a process in kB (None once it is gone)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssShmem", "RssFile"):
                out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return out


def build_info() -> dict:
    """Which pgcdc.so and Python module the numbers come from (release or debug?)."""
    info: dict = {}
    pg_config = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
    try:
        lib = subprocess.run([pg_config, "--pkglibdir"], check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        lib = "/usr/lib/postgresql/15/lib"

    def describe(path: Path) -> dict:
        st = path.stat()
        d: dict = {"path": str(path), "bytes": st.st_size, "mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))}
        try:
            d["file"] = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
        # Debug builds keep DWARF; the release profiles here strip or at least do not emit it.
        d["debug_info"] = "debug_info" in d.get("file", "")
        return d

    so = Path(lib, "pgcdc.so")
    info["extension"] = describe(so) if so.exists() else {"path": str(so), "missing": True}
    try:
        import pgcdc._pgcdc as native  # noqa: PLC0415

        info["python"] = describe(Path(native.__file__))
    except Exception as e:  # noqa: BLE001
        info["python"] = {"error": repr(e)}
    return info


def time_copy(c: Cluster, table: str) -> float:
    """Seconds for psql to drain COPY (SELECT * FROM table) TO STDOUT into /dev/null."""
    argv = [str(pg_bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", c.dsn(),
            "-c", f"COPY (SELECT * FROM {table}) TO STDOUT"]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
    return time.perf_counter() - t0


def clean_after(c: Cluster, feed: str) -> None:
    c.execute("SELECT pgcdc.drop_feed(%s, if_exists => true)", params=[feed])
    c.execute("VACUUM pgcdc.event")
    c.execute("CHECKPOINT")


STATUS_SQL = """
SELECT fs.worker_pid, s.state, s.rows, s.rows_estimated, s.chunks, s.chunks_read,
       s.rows_per_second, extract(epoch FROM s.finished_at - s.started_at)::float8, s.error
FROM pgcdc.feed_status fs
LEFT JOIN LATERAL (
    SELECT * FROM pgcdc.snapshots sn WHERE sn.feed = fs.name ORDER BY sn.id DESC LIMIT 1) s ON true
WHERE fs.name = %s
"""


def staging_run(c: Cluster, feed: str, publication: str, rows: int, fetch_size: int | None,
                timeout: float) -> dict:
    """One fresh feed with snapshot.mode initial and no queue cap, timed until 'done'."""
    options: dict = {"snapshot.mode": "initial", "max_staged_rows": 0, "max_staged_bytes": 0}
    if fetch_size:
        options["snapshot.fetch.size"] = fetch_size
    t_create = time.perf_counter()
    c.execute("SELECT pgcdc.create_feed(%s, %s, options => %s::jsonb)",
              params=[feed, publication, json.dumps(options)])
    t0 = time.perf_counter()  # create_feed has committed (autocommit)
    pids: list[int] = []
    samples: list[tuple[float, int, dict[str, int]]] = []  # (s since t0, rows staged, memory)
    last = None
    with c.connect() as conn:
        deadline = t0 + timeout
        while True:
            r = conn.execute(STATUS_SQL, [feed]).fetchone()
            now = time.perf_counter()
            if r is None:
                raise SystemExit(f"feed {feed} vanished")
            pid, state, staged = r[0], r[1], r[2] or 0
            if pid is not None:
                if pid not in pids:
                    pids.append(pid)
                m = mem_kb(pid)
                if m:
                    samples.append((now - t0, staged, m))
            if state in ("failed", "cancelled"):
                raise SystemExit(f"snapshot of {feed} ended {state}: {r[8]}\n{c.log_tail(30)}")
            if state == "done":
                wall = now - t0
                last = r
                break
            if now > deadline:
                raise SystemExit(f"timed out waiting for the snapshot of {feed} (last: {r})\n{c.log_tail(30)}")
            time.sleep(POLL_S)
    pid = last[0] or (pids[-1] if pids else None)
    worker_cpu = cpu_s(pid) if pid else None
    final_mem = mem_kb(pid) if pid else None
    staged_rows = last[2]
    queued = c.execute(
        "SELECT count(*) FROM pgcdc.event e JOIN pgcdc.feed f ON f.id = e.feed_id WHERE f.name = %s", params=[feed]
    )[0][0]
    ops = c.execute(
        "SELECT e.op, count(*) FROM pgcdc.event e JOIN pgcdc.feed f ON f.id = e.feed_id "
        "WHERE f.name = %s GROUP BY 1 ORDER BY 1", params=[feed]
    )

    def at_fraction(frac: float) -> dict[str, int] | None:
        """The first memory sample taken once `frac` of the rows were staged."""
        for _, n, m in samples:
            if n >= frac * rows:
                return m
        return None

    peak_anon = max((m.get("RssAnon", 0) for _, _, m in samples), default=0)
    peak_rss = max((m.get("VmRSS", 0) for _, _, m in samples), default=0)
    hwm = (final_mem or (samples[-1][2] if samples else {})).get("VmHWM", 0)
    return {
        "feed": feed,
        "rows": rows,
        "rows_staged": staged_rows,
        "events_queued": queued,
        "ops": {op: n for op, n in ops},
        "create_feed_s": round(t0 - t_create, 3),
        "seconds": round(wall, 3),
        "rows_per_s": round(rows / wall),
        "server_seconds": round(last[7], 3) if last[7] is not None else None,
        "server_rows_per_s": round(last[6]) if last[6] is not None else None,
        "chunks": last[4],
        "chunks_read": last[5],
        "worker_pids": pids,
        "worker_cpu_s": round(worker_cpu, 3) if worker_cpu is not None else None,
        "samples": len(samples),
        "rss_peak_kb": peak_rss,
        "rss_hwm_kb": hwm,
        "anon_peak_kb": peak_anon,
        "mem_at_25pct": at_fraction(0.25),
        "mem_at_100pct": at_fraction(1.0) or final_mem,
        "mem_first": samples[0][2] if samples else None,
    }


async def python_run(c: Cluster, feed: str, publication: str, rows: int, fetch_size: int | None) -> dict:
    """A fresh feed (snapshot initial, default caps) drained by the Python feed client."""
    import pgcdc  # noqa: PLC0415

    options: dict = {"snapshot.mode": "initial"}
    if fetch_size:
        options["snapshot.fetch.size"] = fetch_size
    n = other = 0
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await pgcdc.create_feed(c.dsn(), feed, publication, options=options)
    t_created = time.perf_counter()
    async with await pgcdc.connect(c.dsn(), feed=feed, auto_acknowledge=True) as stream:
        t_connected = time.perf_counter()
        t_first = None
        async for ev in stream:
            if ev.op == "r":
                ev.after  # noqa: B018 - converts the row to Python values
                n += 1
                if t_first is None:
                    t_first = time.perf_counter()
                if n >= rows:
                    break
            else:
                other += 1
        wall = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    return {
        "feed": feed,
        "rows": rows,
        "r_events": n,
        "other_events": other,
        "seconds": round(wall, 3),
        "rows_per_s": round(rows / wall),
        "create_feed_s": round(t_created - t0, 3),
        "connect_s": round(t_connected - t_created, 3),
        "first_event_s": round(t_first - t0, 3) if t_first else None,
        "client_cpu_us_per_row": round(cpu / rows * 1e6, 2),
    }


def load_table(c: Cluster, name: str, publication: str, rows: int) -> float:
    c.execute(f"DROP PUBLICATION IF EXISTS {publication}")
    c.execute(f"DROP TABLE IF EXISTS {name}")
    c.execute(TABLE.format(name=name))
    t0 = time.monotonic()
    c.execute(f"INSERT INTO {name} SELECT {ROW} FROM generate_series(1, {rows}) g")
    c.execute(f"VACUUM ANALYZE {name}")
    c.execute(f"CREATE PUBLICATION {publication} FOR TABLE {name}")
    return time.monotonic() - t0


def kb_mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=None, help="rows of the table (default 2,000,000; --quick 200,000)")
    ap.add_argument("--repeat", type=int, default=None, help="timed COPY runs before and after the snapshots (default 3; --quick 2)")
    ap.add_argument("--quick", action="store_true", help="200k rows, fewer COPY runs")
    ap.add_argument("--fetch-size", type=int, default=None, help="snapshot.fetch.size (default: the extension's)")
    ap.add_argument("--no-python", action="store_true", help="skip the Python delivery run")
    ap.add_argument("--no-quarter", action="store_true", help="skip the quarter-table staging run")
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up snapshot (of the quarter table)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per snapshot")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    rows = args.rows or (200_000 if args.quick else 2_000_000)
    repeat = args.repeat or (2 if args.quick else 3)
    quarter = max(1, rows // 4)

    results: dict = {
        "rows": rows,
        "quarter_rows": quarter,
        "fetch_size": args.fetch_size,
        "build": build_info(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
    }
    ext = results["build"]["extension"]
    print(f"extension: {ext.get('path')} {ext.get('bytes', 0) / 1e6:.1f} MB, {ext.get('mtime')}, "
          f"debug_info={ext.get('debug_info')}", flush=True)
    py = results["build"]["python"]
    if "bytes" in py:
        print(f"python module: {py['path']} {py['bytes'] / 1e6:.1f} MB, debug_info={py.get('debug_info')}", flush=True)

    with Cluster(SETTINGS, name="pgcdc-bench") as c:
        c.execute("CREATE EXTENSION pgcdc")
        results["load_s"] = round(load_table(c, "snap_t", "snap_p", rows), 3)
        load_table(c, "snap_q", "snap_q_p", quarter)
        c.execute("CHECKPOINT")
        size = c.execute("SELECT pg_total_relation_size('snap_t'), pg_relation_size('snap_t')")[0]
        results["table_bytes"] = {"total": size[0], "heap": size[1]}
        print(f"loaded {rows} rows in {results['load_s']} s (heap {size[1] / 1e6:.0f} MB)", flush=True)

        time_copy(c, "snap_t")  # warm-up: the table in the OS cache, psql's first start
        copy_s = [time_copy(c, "snap_t") for _ in range(repeat)]
        print(f"  COPY before: {[round(s, 3) for s in copy_s]} s", flush=True)

        if not args.no_warmup:
            # Warm-up (not reported), as in ext_staging.py: a fresh server pays a page fault
            # the first time each shared buffer is used; a long-running one has them mapped.
            w = staging_run(c, "snap_warmup", "snap_q_p", quarter, args.fetch_size, args.timeout)
            print(f"  warm-up staging {quarter}: {w['seconds']} s, {w['rows_per_s']} rows/s (not reported)", flush=True)
            clean_after(c, "snap_warmup")
            results["warmup"] = {k: w[k] for k in ("rows", "seconds", "rows_per_s", "anon_peak_kb", "rss_peak_kb")}

        full = staging_run(c, "snap_full", "snap_p", rows, args.fetch_size, args.timeout)
        print(f"  staging {rows}: {full['seconds']} s, {full['rows_per_s']} rows/s, "
              f"RssAnon peak {kb_mb(full['anon_peak_kb'])} MB", flush=True)
        if full["rows_staged"] != rows or full["events_queued"] != rows:
            print(f"  WARNING: staged {full['rows_staged']} rows, {full['events_queued']} events queued, "
                  f"expected {rows} (ops {full['ops']})", flush=True)
        clean_after(c, "snap_full")
        results["staging"] = full

        if not args.no_quarter:
            q = staging_run(c, "snap_quarter", "snap_q_p", quarter, args.fetch_size, args.timeout)
            print(f"  staging {quarter}: {q['seconds']} s, {q['rows_per_s']} rows/s, "
                  f"RssAnon peak {kb_mb(q['anon_peak_kb'])} MB", flush=True)
            clean_after(c, "snap_quarter")
            results["staging_quarter"] = q

        if not args.no_python:
            p = asyncio.run(python_run(c, "snap_py", "snap_p", rows, args.fetch_size))
            print(f"  python {rows}: {p['seconds']} s, {p['rows_per_s']} rows/s", flush=True)
            clean_after(c, "snap_py")
            results["python"] = p

        after = [time_copy(c, "snap_t") for _ in range(repeat)]
        print(f"  COPY after: {[round(s, 3) for s in after]} s", flush=True)
        copy_s += after

    copy_rate = rows / statistics.median(copy_s)
    results["copy"] = {
        "seconds": [round(s, 3) for s in copy_s],
        "rows_per_s": round(copy_rate),
        "best_rows_per_s": round(rows / min(copy_s)),
        "worst_rows_per_s": round(rows / max(copy_s)),
    }
    full = results["staging"]
    full["ratio"] = round(full["rows_per_s"] / copy_rate, 3)
    full["ok"] = full["ratio"] >= TARGET_STAGING
    if "python" in results:
        p = results["python"]
        p["ratio"] = round(p["rows_per_s"] / copy_rate, 3)
        p["ok"] = p["ratio"] >= TARGET_PYTHON
    rss: dict = {
        "anon_at_25pct_kb": (full["mem_at_25pct"] or {}).get("RssAnon"),
        "anon_at_100pct_kb": (full["mem_at_100pct"] or {}).get("RssAnon"),
        "anon_peak_full_kb": full["anon_peak_kb"],
        "rss_peak_full_kb": full["rss_peak_kb"],
        "hwm_full_kb": full["rss_hwm_kb"],
    }
    if "staging_quarter" in results:
        q = results["staging_quarter"]
        rss.update(anon_peak_quarter_kb=q["anon_peak_kb"], rss_peak_quarter_kb=q["rss_peak_kb"], hwm_quarter_kb=q["rss_hwm_kb"])
        base = q["anon_peak_kb"]
    else:
        base = rss["anon_at_25pct_kb"]
    if base:
        rss["anon_growth_kb"] = full["anon_peak_kb"] - base
        rss["anon_growth_pct"] = round(100.0 * (full["anon_peak_kb"] - base) / base, 1)
        rss["ok"] = full["anon_peak_kb"] <= base * (1 + RSS_FLAT_REL) + RSS_FLAT_ABS_KB
    results["rss"] = rss
    results["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]

    print(f"\nsnapshot of {rows} rows (COPY: median of {len(copy_s)}, runs {results['copy']['seconds']} s)")
    print(f"{'what':<28}{'seconds':>9}{'rows/s':>12}{'x COPY':>8}{'target':>9}")
    print(f"{'COPY TO STDOUT (psql)':<28}{statistics.median(copy_s):>9.2f}{round(copy_rate):>12}{1.0:>8.2f}{'':>9}")
    print(f"{'staging (no queue cap)':<28}{full['seconds']:>9.2f}{full['rows_per_s']:>12}{full['ratio']:>8.2f}"
          f"{'>= ' + str(TARGET_STAGING):>9}  {'ok' if full['ok'] else 'BELOW'}")
    if "python" in results:
        p = results["python"]
        print(f"{'python feed client':<28}{p['seconds']:>9.2f}{p['rows_per_s']:>12}{p['ratio']:>8.2f}"
              f"{'>= ' + str(TARGET_PYTHON):>9}  {'ok' if p['ok'] else 'BELOW'}"
              f"  (first event {p['first_event_s']} s, {p['client_cpu_us_per_row']} µs CPU/row)")
    print(f"staging server-side: {full['server_seconds']} s ({full['server_rows_per_s']} rows/s by pgcdc.snapshots), "
          f"{full['chunks']} chunks, {full['chunks_read']} chunk reads, worker CPU {full['worker_cpu_s']} s")
    print("feed worker memory, MB (RssAnon = private; VmRSS includes the shared buffers it touched):")
    print(f"  full table:    RssAnon at 25% {kb_mb(rss['anon_at_25pct_kb'])}, at 100% {kb_mb(rss['anon_at_100pct_kb'])}, "
          f"peak {kb_mb(rss['anon_peak_full_kb'])}; VmRSS peak {kb_mb(rss['rss_peak_full_kb'])}, VmHWM {kb_mb(rss['hwm_full_kb'])}")
    if "anon_peak_quarter_kb" in rss:
        print(f"  quarter table: RssAnon peak {kb_mb(rss['anon_peak_quarter_kb'])}; VmRSS peak "
              f"{kb_mb(rss['rss_peak_quarter_kb'])}, VmHWM {kb_mb(rss['hwm_quarter_kb'])}")
    if "ok" in rss:
        print(f"  private memory growth {'quarter -> full' if 'anon_peak_quarter_kb' in rss else '25% -> peak'}: "
              f"{rss['anon_growth_kb'] / 1024:+.1f} MB ({rss['anon_growth_pct']:+.1f}%)  {'ok (flat)' if rss['ok'] else 'GROWS'}")
    print(f"load average before {results['loadavg_before']}, after {results['loadavg_after']}")
    summary = {
        "rows": rows,
        "copy_rows_per_s": results["copy"]["rows_per_s"],
        "staging_rows_per_s": full["rows_per_s"],
        "staging_ratio": full["ratio"],
        "python_rows_per_s": results.get("python", {}).get("rows_per_s"),
        "python_ratio": results.get("python", {}).get("ratio"),
        "worker_anon_peak_kb": full["anon_peak_kb"],
        "worker_anon_peak_quarter_kb": rss.get("anon_peak_quarter_kb"),
        "worker_anon_growth_pct": rss.get("anon_growth_pct"),
        "extension_debug_info": ext.get("debug_info"),
        "extension_bytes": ext.get("bytes"),
    }
    results["summary"] = summary
    print("\nsummary " + json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
