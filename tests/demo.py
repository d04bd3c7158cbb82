#!/usr/bin/env python3
"""`make demo`: a throwaway PostgreSQL (15, or `make demo PG_MAJOR=N`'s) with pgcdc preloaded,
a small shop, a feed, live changes, and their Debezium events streamed to the terminal by the
Python client.

    .venv/bin/python tests/demo.py            # stream the demo's changes, then stop (exit 0)
    .venv/bin/python tests/demo.py --follow   # keep streaming until Ctrl-C (psql command shown)

Needs the extension installed (`make ext-install`) and the Python package (`make py-develop`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgcluster import Cluster, pg_major  # noqa: E402

import pgcdc  # noqa: E402

SCHEMA = """
CREATE SCHEMA shop;
CREATE TABLE shop.customers (
    id      serial PRIMARY KEY,
    name    text NOT NULL,
    email   text UNIQUE,
    vip     boolean NOT NULL DEFAULT false
);
CREATE TABLE shop.products (
    id      serial PRIMARY KEY,
    name    text NOT NULL,
    price   numeric(10,2) NOT NULL,
    tags    text[] NOT NULL DEFAULT '{}'
);
CREATE TABLE shop.orders (
    id          serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES shop.customers,
    items       jsonb NOT NULL,
    total       numeric(12,2) NOT NULL,
    placed_at   timestamptz NOT NULL DEFAULT now(),
    status      text NOT NULL DEFAULT 'new'
);
CREATE PUBLICATION shop_pub FOR TABLE shop.customers, shop.products, shop.orders;
"""

CHANGES = [
    "INSERT INTO shop.customers (name, email) VALUES ('Ada', 'ada@example.com'), ('Linus', 'linus@example.com')",
    "INSERT INTO shop.products (name, price, tags) VALUES ('Keyboard', 49.90, '{hardware}'), ('Coffee', 12.50, '{food,daily}')",
    """BEGIN;
       INSERT INTO shop.orders (customer_id, items, total) VALUES (1, '[{"product": 1, "qty": 1}, {"product": 2, "qty": 2}]', 74.90);
       UPDATE shop.customers SET vip = true WHERE id = 1;
       COMMIT""",
    "UPDATE shop.products SET price = 11.99 WHERE name = 'Coffee'",
    "UPDATE shop.orders SET status = 'shipped' WHERE id = 1",
    "INSERT INTO shop.orders (customer_id, items, total) VALUES (2, '[{\"product\": 2, \"qty\": 1}]', 11.99)",
    "DELETE FROM shop.orders WHERE id = 2",
]

COLORS = {"c": "32", "u": "33", "d": "31", "t": "35", "m": "36"}


def paint(text: str, color: str) -> str:
    return f"\033[{color}m{text}\033[0m" if sys.stdout.isatty() else text


def show(event: pgcdc.Event) -> str:
    op = paint(f"{pgcdc.format_operation(event.op):<6}", COLORS.get(event.op, "0"))
    row = event.after if event.after is not None else event.before
    shown = json.dumps(row, default=str, ensure_ascii=False)
    return f"{op} {event.table:<16} {event.commit_lsn:>11}#{event.ordinal:<2} {shown}"


async def make_changes(cluster: Cluster) -> None:
    for sql in CHANGES:
        await asyncio.sleep(0.3)
        await asyncio.get_running_loop().run_in_executor(None, cluster.psql, "-c", sql)


async def stream(cluster: Cluster, follow: bool) -> Counter:
    dsn = cluster.dsn()
    counts: Counter = Counter()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    expected = 10  # events the scripted changes produce
    t0 = time.monotonic()
    # One waiter for Ctrl-C for the whole loop (not one per event), cancelled at the end.
    stopped = asyncio.ensure_future(stop.wait())
    async with await pgcdc.connect(dsn, feed="shop") as events:
        writer = asyncio.create_task(make_changes(cluster))
        it = events.__aiter__()
        try:
            while not stop.is_set():
                nxt = asyncio.ensure_future(it.__anext__())
                done, _ = await asyncio.wait({nxt, stopped}, timeout=None if follow else 20,
                                             return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    break
                try:
                    event = nxt.result()
                except StopAsyncIteration:  # the stream ended
                    break
                counts[event.op] += 1
                print(show(event), flush=True)
                await events.ack(event)
                if not follow and sum(counts.values()) >= expected:
                    break
        finally:
            stopped.cancel()
            if stop.is_set():
                writer.cancel()
        try:
            await writer
        except asyncio.CancelledError:
            pass
        elapsed = time.monotonic() - t0
    summary = ", ".join(f"{pgcdc.format_operation(k).lower()} {v}" for k, v in sorted(counts.items()))
    acked = events.acknowledged
    print(paint(f"── {sum(counts.values())} events ({summary}) in {elapsed:.1f} s; acknowledged up to "
                f"{acked[0]}#{acked[1]}" if acked else "── no events", "1"), flush=True)
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description="pgcdc demo")
    ap.add_argument("--follow", action="store_true", help="keep streaming until Ctrl-C")
    args = ap.parse_args()
    settings = {"shared_preload_libraries": "pgcdc", "pgcdc.status_interval": 200, "max_worker_processes": 16}
    print(f"pgcdc demo: starting a throwaway PostgreSQL {pg_major()} with pgcdc preloaded ...", flush=True)
    with Cluster(settings, name="pgcdc-demo") as cluster:
        cluster.execute("CREATE EXTENSION pgcdc")
        cluster.psql("-c", SCHEMA)
        asyncio.run(pgcdc.create_feed(cluster.dsn(), "shop", "shop_pub",
                                      options={"decimal.handling.mode": "string", "tombstones.on.delete": "false"}))
        print(f"feed 'shop' on publication shop_pub (shop.customers, shop.products, shop.orders); "
              f"server on port {cluster.port}", flush=True)
        if args.follow:
            print(f"make changes with: psql '{cluster.dsn()}'   (Ctrl-C to stop)", flush=True)
        counts = asyncio.run(stream(cluster, args.follow))
    print("pgcdc demo: cluster stopped.", flush=True)
    return 0 if (args.follow or sum(counts.values()) >= 10) else 1


if __name__ == "__main__":
    sys.exit(main())
