#!/usr/bin/env python3
"""`make bench`: every benchmark of the project, then one table of ratios and targets.

    .venv/bin/python bench/report.py [--quick]

1. pgcdc_core (criterion): decode+encode events/s per core for a W1 row and a wide row.
2. The extension (bench/ext_staging.py): feed staging rate against pg_recvlogical on the same
   WAL, and commit -> queue latency at 500 tx/s.
3. The Python package (bench/py_client_bench.py): events/s delivered to an `async for` loop,
   feed client and LogicalReplicationReader, against pg_recvlogical on the same WAL; and the
   feed client live at 500 commits/s, commit -> event in Python; the private memory of both
   clients after a quarter of a 1M-event stream and at its end.
4. Snapshots (bench/snapshot_bench.py): an initial snapshot of a 2M-row table, rows/s staged
   and delivered to the Python feed client, against psql draining COPY of the same table;
   the feed worker's private memory on that table against a quarter of it.
5. Streaming (bench/stream_bench.py): one transaction of 5M rows (1M with --quick), COMMIT ->
   every event staged with streaming off and on; spilled bytes and the worker's memory; the
   same ratio for pg_recvlogical (COMMIT -> its walsender sent the commit), which no consumer
   can beat.

The machine is shared and noisy: compare ratios measured in one run, not absolute rates.
Needs the release extension installed and the release Python package (make bench does both).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(cmd: list[str]) -> None:
    print("==> " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def criterion_rate(group: str, bench: str) -> float:
    """Events/s from criterion's mean estimate (one event per iteration)."""
    path = REPO / "target" / "criterion" / group / bench / "new" / "estimates.json"
    ns = json.loads(path.read_text())["mean"]["point_estimate"]
    return 1e9 / ns


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one round each and shorter measurements")
    args = ap.parse_args()
    repeat = "1" if args.quick else "3"
    rows: list[tuple[str, str, str, str, str]] = []

    measure = ["--warm-up-time", "1", "--measurement-time", "2" if args.quick else "5"]
    run(["cargo", "bench", "-p", "pgcdc_core", "--bench", "encode", "--", *measure, r"decode\+encode"])
    for bench, target in (("w1_row", 1_000_000), ("wide_row_2kb_text_jsonb", None)):
        rate = criterion_rate("decode+encode", bench)
        goal = f">= {target:,}/s" if target else "-"
        rows.append(("core decode+encode", bench, f"{rate:,.0f} events/s per core", goal,
                     ("ok" if rate >= target else "BELOW") if target else ""))

    with tempfile.TemporaryDirectory() as tmp:
        ext_json, py_json, snap_json = Path(tmp, "ext.json"), Path(tmp, "py.json"), Path(tmp, "snap.json")
        run([PY, "bench/ext_staging.py", "--repeat", repeat, "--json", str(ext_json)])
        ext = json.loads(ext_json.read_text())
        for r in ext["staging"]:
            goal = 0.8 if r["workload"] == "wide_rows" else 0.7
            rows.append(("extension staging", r["workload"], f"{r['ratio']:.2f} x pg_recvlogical",
                         f">= {goal:.2f}", "ok" if r["ratio"] >= goal else "BELOW"))
        lat = ext["latency"]
        rows.append(("extension latency", f"{lat['achieved_tx_per_s']} tx/s, commit -> staged",
                     f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms", "p99 < 2 ms",
                     "ok" if lat["p99_ms"] < 2 else "ABOVE"))

        run([PY, "bench/py_client_bench.py", "--repeat", repeat, "--json", str(py_json)])
        py = json.loads(py_json.read_text())
        for r in py:
            if r["consumer"] == "pg_recvlogical":
                continue
            if r["workload"] == "memory":
                rows.append((f"python {r['consumer']} memory", f"{r['events']:,} events",
                             f"private {r['quarter_kb'] / 1024:.1f} -> {r['full_kb'] / 1024:.1f} MB "
                             f"({r['growth_pct']:+.1f}%) from 25% to 100% of the stream",
                             "flat (<= +10% + 4 MB)", "ok" if r["ok"] else "GROWS"))
                continue
            if r["workload"] == "live":
                rows.append(("python feed live", f"{r['rate']} tx/s, commit -> Python event",
                             f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms", "p99 < 3 ms",
                             "ok" if r["p99_ms"] < 3 else "ABOVE"))
                continue
            # Issue 12: the feed client as users run it (touching .after) >= 0.8 everywhere, the
            # reader >= 1.0 on the big transaction; the rest is for scale.
            goal = {"feed+values": 0.8, "reader+values": 1.0 if r["workload"] == "big" else 0.6}.get(r["consumer"], 0.5)
            rows.append((f"python {r['consumer']}", r["workload"],
                         f"{r['ratio']:.2f} x pg_recvlogical, {r['cpu_us_per_event']} µs CPU/event",
                         f">= {goal:.2f}", "ok" if r["ratio"] >= goal else "BELOW"))
        # Issue 12: the server's CPU for the feed path (worker + walsender + the client's read/ack
        # session) per event, against pg_recvlogical's walsender, on the big transaction.
        server = {r["consumer"]: r.get("server_cpu_us_per_event") for r in py if r["workload"] == "big"}
        if server.get("pg_recvlogical") and server.get("feed+values"):
            times = server["feed+values"] / server["pg_recvlogical"]
            rows.append(("server CPU, feed path", "big",
                         f"{server['feed+values']} µs/event = {times:.1f} x pg_recvlogical's walsender "
                         f"({server['pg_recvlogical']} µs)", "<= 2.0 x", "ok" if times <= 2 else "ABOVE"))

        snap_cmd = [PY, "bench/snapshot_bench.py", "--json", str(snap_json)]
        run(snap_cmd + (["--quick"] if args.quick else []))
        snap = json.loads(snap_json.read_text())
        copy_rate = snap["copy"]["rows_per_s"]
        label = f"{snap['rows']:,} rows"
        st = snap["staging"]
        rows.append(("snapshot staging", label,
                     f"{st['ratio']:.2f} x COPY ({st['rows_per_s']:,} vs {copy_rate:,} rows/s)",
                     ">= 0.50", "ok" if st["ok"] else "BELOW"))
        if "python" in snap:
            p = snap["python"]
            rows.append(("snapshot python feed", label,
                         f"{p['ratio']:.2f} x COPY ({p['rows_per_s']:,} rows/s, {p['client_cpu_us_per_row']} µs CPU/row)",
                         ">= 0.30", "ok" if p["ok"] else "BELOW"))
        rss = snap["rss"]
        if "ok" in rss:
            quarter = "anon_peak_quarter_kb" in rss
            base = f"{snap['quarter_rows']:,} -> {label}" if quarter else f"25% -> 100% of {label}"
            before = rss["anon_peak_quarter_kb"] if quarter else rss["anon_at_25pct_kb"]
            rows.append(("snapshot worker RSS", base,
                         f"private {before / 1024:.1f} -> {rss['anon_peak_full_kb'] / 1024:.1f} MB "
                         f"({rss['anon_growth_pct']:+.1f}%)", "flat (<= +10% + 4 MB)", "ok" if rss["ok"] else "GROWS"))

        stream_json = Path(tmp) / "stream.json"
        run([PY, "bench/stream_bench.py", "--rows", "1000000" if args.quick else "5000000", "--json", str(stream_json)])
        stream = json.loads(stream_json.read_text())
        off, on = stream["results"]
        ratio = stream["ratio"]
        rows.append(("streamed big transaction", f"{on['rows']:,} rows in one transaction",
                     f"COMMIT->staged {ratio:.2f} x streaming off ({on['commit_to_staged_s']} vs {off['commit_to_staged_s']} s)",
                     "<= 0.20", "ok" if ratio <= 0.2 else "ABOVE"))
        recv_off, recv_on = stream["walsender"]
        rows.append(("streamed big transaction", "the same, to pg_recvlogical",
                     f"COMMIT->sent {stream['walsender_ratio']:.2f} x streaming off ({recv_on['commit_to_sent_s']} vs "
                     f"{recv_off['commit_to_sent_s']} s): the walsender's own floor", "", ""))
        rows.append(("streamed big transaction", "spill, worker memory",
                     f"spilled {on['spill_bytes'] / 1e6:.0f} MB (off: {off['spill_bytes'] / 1e6:.0f}), worker private "
                     f"{on.get('worker_RssAnon', 0)} MiB", "0, < 200 MB",
                     "ok" if on["spill_bytes"] == 0 and on.get("worker_RssAnon", 0) < 200 else "ABOVE"))

    widths = [max(len(r[i]) for r in rows + [("component", "workload", "measured", "target", "")]) for i in range(5)]
    header = ("component", "workload", "measured", "target", "")
    print()
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
