#!/usr/bin/env python3
"""pgcdc streaming benchmark: one big transaction, staged after its commit (streaming off,
the server holds or spills it) or as the server streams it (streaming on).

    .venv/bin/python bench/stream_bench.py [--rows 5000000] [--work-mem 64MB] [--python] [--json out.json]

Needs the extension installed (release build: pgcdc_ext/install.sh); --python needs the
release Python package (`make py-develop PY_RELEASE=1`). Runs in a throwaway cluster.

For each mode, a fresh feed (`{"streaming": false|true}`, no queue cap) on a W1-shaped table;
one transaction inserts --rows rows (INSERT ... SELECT generate_series) and commits. Reported:
- COMMIT -> staged: from the COMMIT's return until the feed's complete_lsn (feed_runtime)
  passes the transaction's commit: every event readable with pgcdc.read;
- with --python, COMMIT -> last event in Python (`pgcdc.connect`, auto-ack), and the same
  for a `LogicalReplicationReader` running during the transaction (its own slot; streaming=False:
  the server spills, streaming=True: the reader holds the transaction, in memory up to
  stream_memory, then in a temporary file), with its peak private memory and bytes spilled;
- peak RSS (VmHWM) and peak private memory (RssAnon) of the feed worker and of its walsender;
- spill_bytes / stream_bytes of the feed's slot (pg_stat_replication_slots), and the ratio
  streaming / off of COMMIT -> staged (target <= 0.2);
- the same transaction sent to `pg_recvlogical -f /dev/null` (its own slot, proto 1 vs proto 2
  with streaming=on), timed from COMMIT until its walsender has sent the commit
  (pg_stat_replication.sent_lsn): the ratio the walsender itself allows. Streaming can only
  hide the part of decoding that keeps pace with the transaction's WAL: when the server
  decodes slower than the backend writes, no consumer's ratio falls below this one.
The machine is shared and noisy: compare the ratio of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from ext_staging import SETTINGS as STAGING_SETTINGS  # noqa: E402
from ext_staging import TABLE, vacuum_queue  # noqa: E402
from pgcluster import Cluster, pg_bindir  # noqa: E402

TARGET = 0.2


def lsn_int(lsn: str) -> int:
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def mem_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "RssAnon"):
                out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


class Sampler(threading.Thread):
    """Peak memory of the feed worker and its walsender, sampled every 50 ms."""

    def __init__(self, c: Cluster, feed: str) -> None:
        super().__init__(daemon=True)
        self.c, self.feed = c, feed
        self.peak: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        # One connection for all samples: a new backend per sample would load the machine.
        with self.c.connect() as conn:
            while not self.stop.is_set():
                rows = conn.execute(
                    "SELECT r.pid, (SELECT pid FROM pg_stat_replication WHERE application_name = %s) "
                    "FROM pgcdc.feed_runtime r JOIN pgcdc.feed f ON f.id = r.feed_id WHERE f.name = %s",
                    [f"pgcdc feed {self.feed}", self.feed],
                ).fetchall()
                for who, pid in zip(("worker", "walsender"), rows[0] if rows else ()):
                    if pid:
                        for k, v in mem_kb(pid).items():
                            key = f"{who}_{k}"
                            self.peak[key] = max(self.peak.get(key, 0), v)
                time.sleep(0.05)


def slot_stats(c: Cluster, slot: str) -> tuple[int, int]:
    rows = c.execute("SELECT spill_bytes, stream_bytes FROM pg_stat_replication_slots WHERE slot_name = %s",
                     params=[slot])
    return rows[0] if rows else (0, 0)


async def python_last(c: Cluster, feed: str, rows: int, t_commit: float) -> float:
    import pgcdc

    n = 0
    async with await pgcdc.connect(c.dsn(), feed=feed, auto_acknowledge=True) as stream:
        async for _ev in stream:
            n += 1
            if n >= rows:
                return time.monotonic() - t_commit
    raise AssertionError("stream ended early")


def drop_slot(c: Cluster, slot: str, before: tuple[int, int]) -> dict:
    """Drops a consumer's own slot and empties the table for the next mode; returns the bytes
    the server spilled and streamed for that slot since `before` (its slot_stats then)."""
    spill, stream = slot_stats(c, slot)
    c.execute("SELECT pg_drop_replication_slot(%s)", params=[slot])
    c.execute("TRUNCATE bench_t")
    c.execute("CHECKPOINT")
    return {"spill_bytes": spill - before[0], "stream_bytes": stream - before[1]}


def streaming_ratio(modes: list[dict], seconds: str) -> float | None:
    """`seconds` with streaming / without, of the (off, on) pair of results."""
    off, on = modes
    return on[seconds] / off[seconds] if off[seconds] else None


def self_anon_kb() -> int:
    return mem_kb(os.getpid()).get("RssAnon", 0)


def insert_rows(c: Cluster, rows: int) -> tuple[float, float, str]:
    """One transaction of `rows` W1-shaped rows: (generate seconds, commit time, LSN before COMMIT)."""
    with c.connect(autocommit=False) as conn:
        t0 = time.monotonic()
        conn.execute(
            "INSERT INTO bench_t SELECT g, 'item ' || g, (g %% 100)::int, (g %% 1000) / 10.0, now() "
            "FROM generate_series(1, %s) g",
            [rows],
        )
        before_commit = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
        conn.commit()
        t_commit = time.monotonic()
    return t_commit - t0, t_commit, before_commit


def run_reader_mode(c: Cluster, streaming: bool, rows: int) -> dict:
    """The reader consuming while the transaction runs: COMMIT -> its last event."""
    import pgcdc

    slot = "sb_reader_on" if streaming else "sb_reader_off"
    c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", params=[slot])
    before = slot_stats(c, slot)
    connected = threading.Event()
    done: dict[str, float] = {}
    peak = {"anon": self_anon_kb()}
    base = peak["anon"]

    async def consume() -> None:
        r = pgcdc.LogicalReplicationReader("bench_p", slot, host="127.0.0.1", database="postgres", port=c.port,
                                           sslmode="disable", streaming=streaming)
        n = 0
        it = r.__aiter__()
        first = asyncio.ensure_future(it.__anext__())
        while r.backend_pid is None:
            await asyncio.sleep(0.01)
        connected.set()
        await first
        n = 1
        async for _m in r:
            n += 1
            if n >= rows:
                break
        done["t"] = time.monotonic()
        done["spilled"] = r.stream_spilled_bytes
        await r.stop()

    def sample() -> None:
        while "t" not in done:
            peak["anon"] = max(peak["anon"], self_anon_kb())
            time.sleep(0.05)

    t = threading.Thread(target=lambda: asyncio.run(consume()), daemon=True)
    t.start()
    assert connected.wait(30), "the reader did not connect"
    s = threading.Thread(target=sample, daemon=True)
    s.start()
    generate_s, t_commit, _ = insert_rows(c, rows)
    t.join()
    s.join()
    return {
        "mode": "reader streaming" if streaming else "reader off",
        "rows": rows,
        "generate_s": round(generate_s, 2),
        "commit_to_python_s": round(done["t"] - t_commit, 2),
        **drop_slot(c, slot, before),
        "reader_spilled_bytes": int(done["spilled"]),
        "reader_anon_growth": round((peak["anon"] - base) / 1024, 1),
    }


def run_recvlogical_mode(c: Cluster, streaming: bool, rows: int) -> dict:
    """pg_recvlogical consuming while the transaction runs: COMMIT -> its walsender sent the commit."""
    slot = "sb_recv_on" if streaming else "sb_recv_off"
    c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", params=[slot])
    before = slot_stats(c, slot)
    options = ["-o", "proto_version=2", "-o", "streaming=on"] if streaming else ["-o", "proto_version=1"]
    argv = [
        str(pg_bindir() / "pg_recvlogical"), "-h", str(c.sockdir), "-p", str(c.port), "-U", "postgres",
        "-d", "postgres", "--slot", slot, "--start", "-F", "0", "-f", "/dev/null",
        "-o", "publication_names=bench_p", *options,
    ]
    recv = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with c.connect() as poll:
            deadline = time.monotonic() + 30
            while not poll.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone()[0]:
                assert recv.poll() is None, recv.stderr.read() if recv.stderr else "pg_recvlogical exited"
                assert time.monotonic() < deadline, "pg_recvlogical did not start streaming"
                time.sleep(0.05)
            generate_s, t_commit, before_commit = insert_rows(c, rows)
            # The walsender's sent position passes the LSN before COMMIT once it has processed
            # the commit record, i.e. sent the whole transaction (its last bytes at most in the
            # socket's buffer: pg_recvlogical reads to /dev/null at once).
            while True:
                r = poll.execute("SELECT sent_lsn::text FROM pg_stat_replication WHERE application_name = "
                                 "'pg_recvlogical'").fetchone()
                if r and r[0] and lsn_int(r[0]) > lsn_int(before_commit):
                    break
                assert recv.poll() is None, recv.stderr.read() if recv.stderr else "pg_recvlogical exited"
                time.sleep(0.01)
            sent_s = time.monotonic() - t_commit
    finally:
        recv.terminate()
        recv.wait(30)
    return {
        "mode": "pg_recvlogical streaming" if streaming else "pg_recvlogical off",
        "rows": rows,
        "generate_s": round(generate_s, 2),
        "commit_to_sent_s": round(sent_s, 2),
        **drop_slot(c, slot, before),
    }


def run_mode(c: Cluster, streaming: bool, rows: int, python: bool) -> dict:
    feed = "sb_on" if streaming else "sb_off"
    opts = {"snapshot.mode": "no_data", "streaming": streaming, "max_staged_rows": 0, "max_staged_bytes": 0}
    c.execute("SELECT pgcdc.create_feed(%s, publication => 'bench_p', options => %s)", params=[feed, json.dumps(opts)])
    deadline = time.monotonic() + 30
    while not c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", params=[f"pgcdc_{feed}"])[0][0]:
        assert time.monotonic() < deadline, "the feed's worker did not start streaming"
        time.sleep(0.05)
    spill0, stream0 = slot_stats(c, f"pgcdc_{feed}")
    sampler = Sampler(c, feed)
    sampler.start()
    generate_s, t_commit, before_commit = insert_rows(c, rows)
    # The Python consumer runs alongside, so COMMIT -> staged is timed on its own clock.
    py_result: list[float] = []
    consumer = threading.Thread(target=lambda: py_result.append(asyncio.run(python_last(c, feed, rows, t_commit))))
    if python:
        consumer.start()
    with c.connect() as poll:  # one connection: a new backend every 10 ms would take CPU from the feed
        while True:
            r = poll.execute("SELECT complete_lsn::text FROM pgcdc.feed_status WHERE name = %s", [feed]).fetchone()[0]
            if r and lsn_int(r) >= lsn_int(before_commit):
                break
            time.sleep(0.01)
    staged_s = time.monotonic() - t_commit
    py_s = None
    if python:
        consumer.join()
        assert py_result, "the Python consumer failed (see above)"
        py_s = py_result[0]
    time.sleep(0.2)
    sampler.stop.set()
    sampler.join()
    spill1, stream1 = slot_stats(c, f"pgcdc_{feed}")
    if not python:  # (the Python consumer acknowledged what it read)
        readable = c.execute("SELECT count(*) FROM pgcdc.read(%s, 1000)", params=[feed])[0][0]
        assert readable == min(rows, 1000), readable
    c.execute("SELECT pgcdc.drop_feed(%s)", params=[feed])
    c.execute("TRUNCATE bench_t")
    vacuum_queue(c)
    c.execute("CHECKPOINT")
    return {
        "mode": "streaming" if streaming else "off",
        "rows": rows,
        "generate_s": round(generate_s, 2),
        "commit_to_staged_s": round(staged_s, 2),
        "commit_to_python_s": round(py_s, 2) if py_s is not None else None,
        "spill_bytes": spill1 - spill0,
        "stream_bytes": stream1 - stream0,
        **{k: round(v / 1024, 1) for k, v in sorted(sampler.peak.items())},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--work-mem", default="64MB")
    ap.add_argument("--python", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    settings = {**STAGING_SETTINGS, "wal_sender_timeout": "0", "logical_decoding_work_mem": args.work_mem,
                "max_wal_size": "16GB"}
    c = Cluster(settings, name="pgcdc-streambench")
    results: list[dict] = []
    readers: list[dict] = []
    walsender: list[dict] = []
    try:
        c.start()
        c.execute("CREATE EXTENSION pgcdc")
        c.execute(TABLE)
        c.execute("CREATE PUBLICATION bench_p FOR TABLE bench_t")
        for streaming in (False, True):
            r = run_mode(c, streaming, args.rows, args.python)
            print(f"  {r}", flush=True)
            results.append(r)
        for streaming in (False, True):
            r = run_recvlogical_mode(c, streaming, args.rows)
            print(f"  {r}", flush=True)
            walsender.append(r)
        if args.python:
            for streaming in (False, True):
                r = run_reader_mode(c, streaming, args.rows)
                print(f"  {r}", flush=True)
                readers.append(r)
    finally:
        c.stop()
    ratio = streaming_ratio(results, "commit_to_staged_s")
    print(f"\none transaction of {args.rows} rows, logical_decoding_work_mem={args.work_mem} (memory: peaks in MiB)")
    print(f"{'mode':10} {'generate s':>10} {'COMMIT->staged s':>17} {'->Python s':>11} {'spill MB':>9} "
          f"{'stream MB':>10} {'worker HWM':>11} {'worker anon':>12} {'walsender HWM':>14}")
    for r in results:
        print(f"{r['mode']:10} {r['generate_s']:>10} {r['commit_to_staged_s']:>17} {str(r['commit_to_python_s']):>11} "
              f"{r['spill_bytes'] / 1e6:>9.1f} {r['stream_bytes'] / 1e6:>10.1f} {r.get('worker_VmHWM', 0):>11} "
              f"{r.get('worker_RssAnon', 0):>12} {r.get('walsender_VmHWM', 0):>14}")
    ceiling = streaming_ratio(walsender, "commit_to_sent_s")
    print("\npg_recvlogical during the transaction: COMMIT -> its walsender sent the commit")
    print(f"{'mode':26} {'generate s':>10} {'COMMIT->sent s':>15} {'spill MB':>9} {'stream MB':>10}")
    for r in walsender:
        print(f"{r['mode']:26} {r['generate_s']:>10} {r['commit_to_sent_s']:>15} {r['spill_bytes'] / 1e6:>9.1f} "
              f"{r['stream_bytes'] / 1e6:>10.1f}")
    if readers:
        print("\nLogicalReplicationReader during the transaction (memory: growth of private memory, MiB)")
        print(f"{'mode':18} {'COMMIT->last s':>15} {'server spill MB':>16} {'reader spill MB':>16} {'reader anon':>12}")
        for r in readers:
            print(f"{r['mode']:18} {r['commit_to_python_s']:>15} {r['spill_bytes'] / 1e6:>16.1f} "
                  f"{r['reader_spilled_bytes'] / 1e6:>16.1f} {r['reader_anon_growth']:>12}")
    if ratio is not None:
        verdict = "met" if ratio <= TARGET else "missed"
        print(f"COMMIT->staged, streaming / off: {ratio:.2f} (target <= {TARGET}: {verdict})")
    if ceiling is not None:
        print(f"pg_recvlogical's COMMIT->sent, streaming / off: {ceiling:.2f} (the walsender's own ratio)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "readers": readers, "walsender": walsender,
                                               "ratio": ratio, "walsender_ratio": ceiling}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
