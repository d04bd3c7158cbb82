"""``python -m pgcdc``: manage feeds and tail one as JSON lines.

    python -m pgcdc [--dsn DSN] create NAME --publication PUB [--sink table|notify] [-o KEY=VALUE ...]
    python -m pgcdc [--dsn DSN] list [--json]
    python -m pgcdc [--dsn DSN] status [NAME]
    python -m pgcdc [--dsn DSN] drop NAME [--if-exists]
    python -m pgcdc [--dsn DSN] pause|resume NAME
    python -m pgcdc [--dsn DSN] tail NAME [--ack | --no-ack] [--limit N] [--idle-exit SECONDS] [--indent N]

The connection string defaults to $PGCDC_DSN, else libpq's environment (PGHOST, PGUSER...).
``tail`` prints one Debezium event per line on stdout (pipe it into jq or a file), progress
on stderr, and stops cleanly on Ctrl-C, at --limit events, or after --idle-exit seconds
without events.

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
import json
import os
import signal
import sys
from typing import Any, Optional

from . import _feed
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


async def _tail(args: argparse.Namespace) -> int:
    out = sys.stdout
    n = 0
    ack = _should_ack(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    status = 0
    stopped = asyncio.ensure_future(stop.wait())
    try:
        async with await _feed.connect(_dsn(args), feed=args.name, batch_size=args.batch_size) as stream:
            it = stream.__aiter__()
            while not stop.is_set():
                nxt = asyncio.ensure_future(it.__anext__())
                done, _ = await asyncio.wait({nxt, stopped}, timeout=args.idle_exit, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    break  # interrupted or idle
                try:
                    event = nxt.result()
                except StopAsyncIteration:
                    break
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
                    print(f"pgcdc: {n} events", file=sys.stderr)
                if args.limit and n >= args.limit:
                    break
    finally:
        stopped.cancel()
    if args.progress:
        how = "acknowledged" if ack else "not acknowledged"
        print(f"pgcdc: {n} events from feed {args.name} ({how})", file=sys.stderr)
    return status


async def _main(args: argparse.Namespace) -> int:
    dsn = _dsn(args)
    if args.cmd == "create":
        lsn = await _feed.create_feed(dsn, args.name, args.publication, sink=args.sink, options=_options(args.option))
        print(f"created feed {args.name} at {lsn}")
    elif args.cmd == "drop":
        dropped = await _feed.drop_feed(dsn, args.name, if_exists=args.if_exists)
        print(f"dropped feed {args.name}" if dropped else f"feed {args.name} does not exist")
    elif args.cmd == "pause":
        await _feed.pause_feed(dsn, args.name)
    elif args.cmd == "resume":
        await _feed.resume_feed(dsn, args.name)
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
    c.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="feed or Debezium option, e.g. decimal.handling.mode=string")
    d = sub.add_parser("drop", help="drop a feed")
    d.add_argument("name")
    d.add_argument("--if-exists", action="store_true")
    for name in ("pause", "resume"):
        sub.add_parser(name, help=f"{name} a feed").add_argument("name")
    lp = sub.add_parser("list", help="list the feeds you may use")
    lp.add_argument("--json", action="store_true")
    st = sub.add_parser("status", help="live status (lag, worker, errors)")
    st.add_argument("name", nargs="?")
    t = sub.add_parser("tail", help="print events as JSON lines")
    t.add_argument("name")
    acking = t.add_mutually_exclusive_group()
    acking.add_argument("--ack", dest="ack", action="store_true", default=None,
                        help="acknowledge each event once its line is flushed (default only when stdout is a terminal)")
    acking.add_argument("--no-ack", dest="ack", action="store_false", help="never acknowledge")
    t.add_argument("--limit", type=int, default=0, help="stop after N events")
    t.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS", help="stop after SECONDS without events")
    t.add_argument("--indent", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=1000)
    t.add_argument("--progress", action="store_true", help="progress and a summary on stderr")
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
