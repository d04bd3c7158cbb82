"""The snapshot progress line of ``python -m pgcdc snapshot`` and ``tail --progress``.

:func:`format_progress` renders one ``pgcdc.snapshots`` row; :class:`ProgressLine` draws it on
a stream: redrawn in place (``\\r``) on a terminal, else one line every few seconds.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional, TextIO

__all__ = ["ProgressLine", "format_progress"]

BAR_WIDTH = 20


def _num(v: Any) -> Optional[float]:
    """A finite number, else None (the view's JSON gives "NaN"/"Infinity" as strings)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _duration(seconds: float) -> str:
    """``0:07``, ``12:34``, ``1:02:03`` (like tqdm)."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_progress(row: Mapping[str, Any], *, bar_width: int = BAR_WIDTH) -> str:
    """One line for a ``pgcdc.snapshots`` row: state, a bar, rows done / estimated, percent,
    rows/s, ETA and the table being read (``n/m`` of the snapshot's tables)::

        snapshot 3 running [#####---------------]  2,500/10,000 rows  25.0%  1,234 rows/s  ETA 0:06  public.t (1/2)

    Missing values are left out (no estimate: no bar and no percent). An estimate is the
    planner's (``reltuples``): when more rows than estimated were read, the estimate shown is
    the rows read, and a snapshot that is done shows 100%.
    """
    sid = row.get("id")
    state = str(row.get("state") or "?")
    rows = int(_num(row.get("rows")) or 0)
    est = _num(row.get("rows_estimated"))
    parts = [f"snapshot {sid} {state}" if sid is not None else f"snapshot {state}"]
    total: Optional[int] = None
    if est is not None and est > 0:
        total = max(int(est), rows)
    elif state == "done":
        total = rows
    if total:
        frac = 1.0 if state == "done" else min(rows / total, 1.0)
        filled = int(frac * bar_width)
        parts.append("[" + "#" * filled + "-" * (bar_width - filled) + "]")
        parts.append(f"{rows:,}/{total:,} rows")
        parts.append(f"{frac * 100:.1f}%")
    else:
        parts.append(f"{rows:,} rows")
    if state in ("running", "pending"):
        rate = _num(row.get("rows_per_second"))
        if rate is not None:
            parts.append(f"{rate:,.0f} rows/s")
        eta = _num(row.get("eta_seconds"))
        if eta is None and rate and total:
            eta = (total - rows) / rate
        if eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        table = row.get("current_table")
        if table:
            tables = row.get("tables")
            n = len(tables) if isinstance(tables, list) else 0
            done = int(_num(row.get("tables_done")) or 0)
            parts.append(f"{table} ({min(done + 1, n)}/{n})" if n else str(table))
    elif state == "failed" and row.get("error"):
        parts.append(f"error: {row['error']}")
    return "  ".join(parts)


class ProgressLine:
    """Draws :func:`format_progress` lines on ``stream`` (stderr): on a terminal redrawn in
    place with ``\\r`` (cut to the terminal's width, so that it never wraps), else one line
    at most every ``interval`` seconds, and at every change of state."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: Optional[bool] = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval
        self._clock = clock
        self._last: Optional[float] = None
        self._last_state: Optional[str] = None
        self._drawn = False

    def update(self, row: Mapping[str, Any]) -> None:
        line = format_progress(row)
        state = row.get("state")
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r" + line[: max(width, 20)] + "\x1b[K")
            self._drawn = True
        else:
            now = self._clock()
            if self._last is not None and state == self._last_state and now - self._last < self.interval:
                return
            self._last = now
            self.stream.write(line + "\n")
        self._last_state = str(state) if state is not None else None
        self.stream.flush()

    def finish(self, row: Optional[Mapping[str, Any]] = None) -> None:
        """Draws ``row`` (the final state) and ends the line."""
        if row is not None:
            self._last = None  # always shown
            self.update(row)
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False
        self._last_state = None

    def clear(self) -> None:
        """Erases the line on a terminal (before other output on it); the next update
        draws it again."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
