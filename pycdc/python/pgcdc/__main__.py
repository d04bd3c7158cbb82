"""``python -m pgcdc``: manage feeds and tail one as JSON lines.

    python -m pgcdc [--dsn DSN] create NAME --publication PUB [--sink table|notify] [-o KEY=VALUE ...]
                                [--snapshot initial|no_data|initial_only|when_needed]
    python -m pgcdc [--dsn DSN] list [--json]
    python -m pgcdc [--dsn DSN] status [NAME]
    python -m pgcdc [--dsn DSN] drop NAME [--if-exists]
    python -m pgcdc [--dsn DSN] pause|resume|reset NAME
    python -m pgcdc [--dsn DSN] tail NAME [--ack | --no-ack] [--limit N] [--idle-exit SECONDS] [--indent N] [--progress]
    python -m pgcdc [--dsn DSN] snapshot NAME [--table SCHEMA.TABLE ...] [--no-wait]
    python -m pgcdc [--dsn DSN] snapshots [NAME] [--json]
    python -m pgcdc [--dsn DSN] cancel-snapshot NAME

The connection string defaults to $PGCDC_DSN, else libpq's environment (PGHOST, PGUSER...).
``tail`` prints one Debezium event per line on stdout (pipe it into jq or a file), progress
on stderr, and stops cleanly on Ctrl-C, at --limit events, or after --idle-exit seconds
without events.

Snapshots: ``create --snapshot MODE`` sets the feed's ``snapshot.mode`` (the extension's
default, ``initial``, emits the published tables' existing rows as ``op="r"`` events first).
``snapshot NAME`` queues an ad hoc snapshot (of the tables given with ``--table``,
schema-qualified, in that order; default every published table) and prints its id; unless
``--no-wait``, it then draws a progress line on stderr (rows done / estimated, percent,
rows/s, ETA, current table; redrawn in place on a terminal, else a line every few seconds)
until the snapshot is over: exit 0 when done, 1 with the error when it failed or was
cancelled. Ctrl-C stops waiting, not the snapshot
(``cancel-snapshot NAME`` cancels the feed's pending and running snapshots). ``tail
--progress`` draws the same line on stderr while a snapshot of the feed runs (stdout keeps
only JSON lines). ``status`` shows the ``snapshot_*`` columns of ``pgcdc.feed_status``.

Acknowledgement (what the feed may forget): an event is acknowledged only after its line has
been written and flushed to stdout, and by default only when stdout is a terminal. Into a
pipe or a file, ``tail`` does not acknowledge unless ``--ack`` is given: what is written to
a pipe may never be read (``tail f | head -n1`` reads one line and closes the pipe; the
lines still in the pipe are lost), so acknowledging it would lose events. Use ``--ack``
when the reader of the pipe is known to consume everything, and acknowledge from the
consumer (``pgcdc.ack`` or the Python client) otherwise.

Exit status: 0 on success, 1 on an error (a message on stderr, never a traceback), 130 on
Ctrl-C before the stream opened, and 141 (128 + SIGPIPE, as other Unix tools) when the
reader of stdout went away early, e.g. ``... | head``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any, Optional

from . import _feed
from ._progress import ProgressLine
from .errors import Error

#: Exit status when stdout's reader closed the pipe (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141


class _FeedMissing(Exception):
    """``status NAME`` of a feed that does not exist (or that you may not use)."""


def _dsn(args: argparse.Namespace) -> str:
    return args.dsn or os.environ.get("PGCDC_DSN") or ""


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"pgcdc: option {p!r} is not KEY=VALUE")
        k, v = p.split("=", 1)
        out[k] = v
    return out


def _should_ack(args: argparse.Namespace) -> bool:
    if args.ack is not None:
        return bool(args.ack)
    return sys.stdout.isatty()


#: Seconds between polls of ``pgcdc.snapshots`` by ``tail --progress``.
TAIL_SNAPSHOT_POLL = 1.0

_ACTIVE_SNAPSHOT_SQL = (
    "SELECT * FROM pgcdc.snapshots WHERE feed OPERATOR(pg_catalog.=) $1::pg_catalog.text "
    "AND state OPERATOR(pg_catalog.=) ANY ('{running,pending}'::pg_catalog.text[]) ORDER BY id LIMIT 1"
)


async def _watch_snapshots(dsn: str, feed: str, line: ProgressLine) -> None:
    """``tail --progress``: the progress line of the feed's running (or pending) snapshot,
    polled every second, and its final state when it is over. Quietly gives up when the
    server has no ``pgcdc.snapshots`` (an older extension) or the feed is gone."""
    current: Optional[int] = None
    while True:
        try:
            rows = await _feed._query(dsn, _ACTIVE_SNAPSHOT_SQL, feed)
            if current is not None and (not rows or rows[0]["id"] != current):
                final = await _feed._query(
                    dsn,
                    "SELECT * FROM pgcdc.snapshots WHERE feed OPERATOR(pg_catalog.=) $1::pg_catalog.text "
                    "AND id OPERATOR(pg_catalog.=) $2::pg_catalog.text::pg_catalog.int8",
                    feed,
                    str(current),
                )
                line.finish(final[0] if final else None)
                current = None
        except Error as e:
            if e.sqlstate is not None and e.sqlstate.startswith("42"):
                return  # no such view (older extension) or feed
            rows = []  # a connection hiccup: the stream itself reconnects and reports
        if rows:
            current = int(rows[0]["id"])
            line.update(rows[0])
        await asyncio.sleep(TAIL_SNAPSHOT_POLL)


async def _snapshot(args: argparse.Namespace) -> int:
    dsn = _dsn(args)
    sid = await _feed.snapshot(dsn, args.name, tables=args.table or None)
    print(f"snapshot {sid} of feed {args.name} queued", flush=True)
    if not args.wait:
        return 0
    line = ProgressLine(sys.stderr)
    last: dict[str, Any] = {}

    def progress(row: dict[str, Any]) -> None:
        last.clear()
        last.update(row)
        if row.get("state") in ("done", "failed", "cancelled"):
            line.finish(row)
        else:
            line.update(row)

    try:
        await _feed.wait_snapshot(dsn, args.name, sid, progress=progress)
    except BaseException as e:
        line.finish()
        if isinstance(e, (KeyboardInterrupt, asyncio.CancelledError)):
            print(
                f"pgcdc: stopped waiting; snapshot {sid} goes on (to cancel it: cancel-snapshot {args.name})",
                file=sys.stderr,
            )
        raise
    print(f"snapshot {sid} of feed {args.name} done: {int(last.get('rows') or 0):,} rows")
    return 0


async def _tail(args: argparse.Namespace) -> int:
    out = sys.stdout
    n = 0
    ack = _should_ack(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    status = 0
    stopped = asyncio.ensure_future(stop.wait())
    line = ProgressLine(sys.stderr)
    watcher: Optional[asyncio.Future[None]] = None
    # The line is erased before each event written to the same terminal (and drawn again
    # at the next poll), so that it never ends up in the middle of the JSON.
    shared_tty = line.tty and out.isatty()
    try:
        async with await _feed.connect(_dsn(args), feed=args.name, batch_size=args.batch_size) as stream:
            if args.progress:
                watcher = asyncio.ensure_future(_watch_snapshots(_dsn(args), args.name, line))
            it = stream.__aiter__()
            while not stop.is_set():
                nxt = asyncio.ensure_future(it.__anext__())
                done, _ = await asyncio.wait(
                    {nxt, stopped}, timeout=args.idle_exit, return_when=asyncio.FIRST_COMPLETED
                )
                if nxt not in done:
                    nxt.cancel()
                    break  # interrupted or idle
                try:
                    event = nxt.result()
                except StopAsyncIteration:
                    break
                if shared_tty:
                    line.clear()
                try:
                    out.write(event.json(indent=args.indent) + "\n")
                    out.flush()
                except BrokenPipeError:
                    # The reader of the pipe went away: nothing more is consumed (and nothing
                    # it may not have read is acknowledged).
                    status = EXIT_BROKEN_PIPE
                    break
                n += 1
                if ack:
                    await stream.ack(event)
                if args.progress and n % 1000 == 0:
                    line.clear()
                    print(f"pgcdc: {n} events", file=sys.stderr)
                if args.limit and n >= args.limit:
                    break
    finally:
        stopped.cancel()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            line.finish()
    if args.progress:
        how = "acknowledged" if ack else "not acknowledged"
        print(f"pgcdc: {n} events from feed {args.name} ({how})", file=sys.stderr)
    return status


async def _main(args: argparse.Namespace) -> int:
    dsn = _dsn(args)
    if args.cmd == "create":
        try:
            lsn = await _feed.create_feed(
                dsn, args.name, args.publication, sink=args.sink, options=_options(args.option), snapshot=args.snapshot
            )
        except ValueError as e:
            raise SystemExit(f"pgcdc: {e}") from None
        print(f"created feed {args.name} at {lsn}")
    elif args.cmd == "drop":
        dropped = await _feed.drop_feed(dsn, args.name, if_exists=args.if_exists)
        print(f"dropped feed {args.name}" if dropped else f"feed {args.name} does not exist")
    elif args.cmd == "pause":
        await _feed.pause_feed(dsn, args.name)
    elif args.cmd == "resume":
        await _feed.resume_feed(dsn, args.name)
    elif args.cmd == "reset":
        lsn = await _feed.reset_feed(dsn, args.name)
        print(f"reset feed {args.name}: acknowledged up to {lsn}")
    elif args.cmd == "snapshot":
        return await _snapshot(args)
    elif args.cmd == "cancel-snapshot":
        n = await _feed.cancel_snapshot(dsn, args.name)
        print(f"cancelled {n} snapshot{'' if n == 1 else 's'} of feed {args.name}")
    elif args.cmd == "snapshots":
        rows = await _feed.snapshots(dsn, args.name)
        if args.json:
            print(json.dumps(rows, default=str))
        else:
            print(f"{'feed':<20} {'id':>6} {'kind':<11} {'state':<9} {'rows':>12} {'estimated':>12} tables")
            for r in rows:
                print(
                    f"{r['feed']:<20} {r['id']:>6} {r['kind']:<11} {r['state']:<9} {r['rows'] or 0:>12} "
                    f"{r['rows_estimated'] if r['rows_estimated'] is not None else '-':>12} "
                    f"{','.join(r['tables'] or [])}"
                )
    elif args.cmd == "list":
        rows = await _feed.feeds(dsn)
        if args.json:
            print(json.dumps(rows, default=str))
        else:
            print(f"{'name':<20} {'publication':<20} {'sink':<7} {'state':<8} channel")
            for r in rows:
                print(f"{r['name']:<20} {r['publication']:<20} {r['sink']:<7} {r['state']:<8} {r['channel']}")
    elif args.cmd == "status":
        rows = await _feed.feed_status(dsn, args.name)
        if args.name is not None and not rows:
            raise _FeedMissing(f'feed "{args.name}" does not exist (or you may not use it; see: python -m pgcdc list)')
        print(json.dumps(rows if args.name is None else rows[0], default=str, indent=2))
    elif args.cmd == "tail":
        return await _tail(args)
    return 0


def _silence_stdout() -> None:
    """Points fd 1 at /dev/null so that the interpreter's final flush of what is still
    buffered for a closed pipe does not print an ``Exception ignored`` traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pgcdc", description="Manage pgcdc feeds and tail their events.")
    ap.add_argument("--dsn", help="connection string (default: $PGCDC_DSN, else libpq environment)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="create a feed")
    c.add_argument("name")
    c.add_argument("--publication", "-p", required=True)
    c.add_argument("--sink", choices=["table", "notify"], default="table")
    c.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="feed or Debezium option, e.g. decimal.handling.mode=string",
    )
    c.add_argument(
        "--snapshot",
        choices=list(_feed.SNAPSHOT_MODES),
        default=None,
        help="snapshot.mode (extension default: initial, the existing rows first)",
    )
    d = sub.add_parser("drop", help="drop a feed")
    d.add_argument("name")
    d.add_argument("--if-exists", action="store_true")
    for name in ("pause", "resume"):
        sub.add_parser(name, help=f"{name} a feed").add_argument("name")
    sub.add_parser("reset", help="discard the feed's backlog (acknowledge everything up to now)").add_argument("name")
    sn = sub.add_parser("snapshot", help="snapshot tables into the feed (op r events), with a progress bar")
    sn.add_argument("name")
    sn.add_argument(
        "--table",
        "-t",
        action="append",
        default=[],
        metavar="SCHEMA.TABLE",
        help="a published table (repeatable; default every table of the publication)",
    )
    sn.add_argument("--no-wait", dest="wait", action="store_false", help="queue it and exit at once")
    sub.add_parser("cancel-snapshot", help="cancel the feed's pending and running snapshots").add_argument("name")
    sl = sub.add_parser("snapshots", help="list snapshots (of one feed)")
    sl.add_argument("name", nargs="?")
    sl.add_argument("--json", action="store_true")
    lp = sub.add_parser("list", help="list the feeds you may use")
    lp.add_argument("--json", action="store_true")
    st = sub.add_parser("status", help="live status (lag, worker, errors)")
    st.add_argument("name", nargs="?")
    t = sub.add_parser("tail", help="print events as JSON lines")
    t.add_argument("name")
    acking = t.add_mutually_exclusive_group()
    acking.add_argument(
        "--ack",
        dest="ack",
        action="store_true",
        default=None,
        help="acknowledge each event once its line is flushed (default only when stdout is a terminal)",
    )
    acking.add_argument("--no-ack", dest="ack", action="store_false", help="never acknowledge")
    t.add_argument("--limit", type=int, default=0, help="stop after N events")
    t.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS", help="stop after SECONDS without events")
    t.add_argument("--indent", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=1000)
    t.add_argument(
        "--progress", action="store_true", help="progress (also of a running snapshot) and a summary on stderr"
    )
    args = ap.parse_args(argv)
    try:
        code = asyncio.run(_main(args))
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at exit
    except BrokenPipeError:
        code = EXIT_BROKEN_PIPE
    except (Error, _FeedMissing) as e:
        print(f"pgcdc: {type(e).__name__ if isinstance(e, Error) else 'error'}: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    if code == EXIT_BROKEN_PIPE:
        _silence_stdout()
    return code


if __name__ == "__main__":
    sys.exit(main())
