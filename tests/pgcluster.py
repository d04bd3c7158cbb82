"""Throwaway PostgreSQL clusters for the end-to-end tests and the golden capture.

A :class:`Cluster` is a private ``initdb`` in a temporary directory, listening on a free TCP
port of 127.0.0.1 and on a unix socket inside that directory. It is configured for logical
replication (``wal_level = logical``) with trust authentication, so tests connect as the
bootstrap superuser ``postgres`` without a password.

PostgreSQL refuses to run as root. When this process is root, ``initdb``, ``pg_ctl`` and the
server run as the ``postgres`` OS user (through ``runuser``, else ``sudo``) and every directory
the server writes is handed to that user; otherwise everything runs as the current user.

Lifetime: a cluster is stopped and its directory removed by :meth:`Cluster.stop`, which is also
called by the context manager, by an ``atexit`` hook and by the pytest fixture finalizer, so a
failing test never leaves a server behind. Set ``PGCDC_KEEP_CLUSTER=1`` to keep the directory
(the server is still stopped) for a post-mortem.

Environment:
    PG_CONFIG            pg_config to locate the server binaries (default: Debian's PG15)
    PGCDC_PG_BINDIR      the server's bin directory (overrides PG_CONFIG)
    PGCDC_TMPDIR         where the temporary base directories go (default: the system tmp)
    PGCDC_KEEP_CLUSTER   1 = keep the directory after stop()

Only the standard library is needed to run a cluster; :meth:`Cluster.execute` and
:meth:`Cluster.connect` import psycopg (3.x) lazily.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping

DEFAULT_PG_CONFIG = "/usr/lib/postgresql/15/bin/pg_config"

#: Settings every cluster gets (the caller's ``settings`` are appended and win).
BASE_SETTINGS: dict[str, str | int] = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "logical",
    "max_replication_slots": 20,
    "max_wal_senders": 20,
    "max_prepared_transactions": 10,
    "timezone": "UTC",
    "log_timezone": "UTC",
    # fsync off is safe for throwaway data. Not synchronous_commit=off: the SQL decoding
    # functions only read WAL up to the flush position, so async commits could be missed.
    "fsync": "off",
    "full_page_writes": "off",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}

_live: "weakref.WeakSet[Cluster]" = weakref.WeakSet()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        clusters = list(_live)
    for c in clusters:
        try:
            c.stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


atexit.register(_stop_all_at_exit)


class ClusterError(RuntimeError):
    """initdb/pg_ctl failed; the message carries the command output and the log tail."""


def pg_bindir() -> Path:
    """The directory holding initdb, pg_ctl, postgres and psql."""
    env = os.environ.get("PGCDC_PG_BINDIR")
    if env:
        return Path(env)
    pg_config = os.environ.get("PG_CONFIG", DEFAULT_PG_CONFIG)
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], check=True, capture_output=True, text=True
        ).stdout.strip()
        return Path(out)
    except (OSError, subprocess.CalledProcessError):
        return Path(DEFAULT_PG_CONFIG).parent


@functools.lru_cache(maxsize=None)
def pg_major() -> int:
    """Major version of the server binaries the tests run (pg_bindir's postgres)."""
    out = subprocess.run(
        [str(pg_bindir() / "postgres"), "--version"], check=True, capture_output=True, text=True
    ).stdout
    # "postgres (PostgreSQL) 18.6"
    return int(out.split()[-1].split(".")[0])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


class Cluster:
    """One throwaway PostgreSQL cluster. Use as a context manager or call start()/stop().

    ``settings`` are extra postgresql.conf settings (e.g. ``{"shared_preload_libraries":
    "pgcdc"}``); strings are quoted for you, ints and bools are written bare.
    """

    superuser = "postgres"

    def __init__(
        self,
        settings: Mapping[str, Any] | None = None,
        *,
        name: str = "pgcdc",
        bindir: str | os.PathLike[str] | None = None,
        start_attempts: int = 5,
    ) -> None:
        self.bindir = Path(bindir) if bindir else pg_bindir()
        self.settings: dict[str, Any] = dict(settings or {})
        self.name = name
        self.start_attempts = start_attempts
        self.as_root = os.geteuid() == 0
        self.base: Path | None = None
        self.port: int | None = None
        self._running = False
        self._orphans: list[int] = []

    # ----------------------------------------------------------------- paths
    @property
    def datadir(self) -> Path:
        assert self.base is not None, "cluster not initialised"
        return self.base / "data"

    @property
    def sockdir(self) -> Path:
        assert self.base is not None, "cluster not initialised"
        return self.base / "sock"

    @property
    def logfile(self) -> Path:
        assert self.base is not None, "cluster not initialised"
        return self.base / "log" / "server.log"

    def bin(self, tool: str) -> str:
        return str(self.bindir / tool)

    # ------------------------------------------------------------- processes
    def _as_server_user(self, argv: list[str]) -> list[str]:
        """Prefix argv so it runs as the postgres OS user when we are root."""
        if not self.as_root:
            return argv
        if shutil.which("runuser"):
            return ["runuser", "-u", "postgres", "--", *argv]
        if shutil.which("sudo"):
            return ["sudo", "-n", "-u", "postgres", "--", *argv]
        raise ClusterError("running as root needs runuser or sudo to drop to the postgres user")

    def _run(self, argv: list[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # cwd = base dir: the server user may not be able to read the caller's cwd (/root).
        proc = subprocess.run(
            self._as_server_user(argv),
            cwd=str(self.base),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
                f"\n--- server log tail ---\n{self.log_tail()}"
            )
        return proc

    def _chown(self, *paths: Path) -> None:
        if not self.as_root:
            return
        for p in paths:
            shutil.chown(p, "postgres", "postgres")

    # ------------------------------------------------------------- lifecycle
    def init(self) -> "Cluster":
        """Create the base directory and run initdb (no server yet)."""
        if self.base is not None:
            return self
        tmproot = os.environ.get("PGCDC_TMPDIR") or None
        self.base = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=tmproot))
        with _live_lock:
            _live.add(self)
        self.base.chmod(0o755)
        for d in (self.sockdir, self.logfile.parent):
            d.mkdir(mode=0o755)
        self.datadir.mkdir(mode=0o700)
        self.logfile.touch()
        self._chown(self.base, self.datadir, self.sockdir, self.logfile.parent, self.logfile)
        self._run(
            [
                self.bin("initdb"),
                "-D", str(self.datadir),
                "-U", self.superuser,
                "-A", "trust",
                "--locale=C.UTF-8",
                "-E", "UTF8",
                "--no-sync",
            ]
        )
        self._ensure_replication_hba()
        return self

    def _ensure_replication_hba(self) -> None:
        # initdb's default pg_hba.conf already has "host replication all 127.0.0.1/32 trust"
        # (PG 10+); keep a guard in case a packager's template drops it.
        hba = self.datadir / "pg_hba.conf"
        lines = [ln.split() for ln in hba.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not any(ln[:4] == ["host", "replication", "all", "127.0.0.1/32"] for ln in lines):
            with hba.open("a") as f:
                f.write("host    replication     all             127.0.0.1/32            trust\n")

    def _write_conf(self) -> None:
        conf = self.datadir / "postgresql.conf"
        text = conf.read_text()
        marker = "\n# ---- pgcdc test cluster ----\n"
        text = text.split(marker)[0]
        settings: dict[str, Any] = dict(BASE_SETTINGS)
        settings["port"] = self.port
        settings["unix_socket_directories"] = str(self.sockdir)
        settings.update(self.settings)
        body = "".join(f"{k} = {_conf_value(v)}\n" for k, v in settings.items())
        conf.write_text(text + marker + body)

    def start(self) -> "Cluster":
        """initdb if needed, pick a free port and start the server (pg_ctl -w)."""
        self.init()
        if self._running:
            return self
        last: Exception | None = None
        for _ in range(self.start_attempts):
            if self.port is None:
                self.port = free_port()
            self._write_conf()
            try:
                self._pg_ctl_start()
                return self
            except ClusterError as e:
                last = e
                # Most likely someone took the port between free_port() and the bind: retry.
                self.port = None
        raise ClusterError(f"could not start cluster after {self.start_attempts} attempts: {last}")

    def _pg_ctl_start(self) -> None:
        self._run(
            [self.bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start"]
        )
        self._running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast, then immediate) and remove the directory.

        Safe to call more than once. PGCDC_KEEP_CLUSTER=1 keeps the directory.
        """
        if self.base is None:
            return
        if self.datadir.exists():
            self._stop_server(mode)
        self._reap_orphans()
        with _live_lock:
            _live.discard(self)
        if os.environ.get("PGCDC_KEEP_CLUSTER") == "1":
            print(f"PGCDC_KEEP_CLUSTER=1: kept {self.base}")
        else:
            shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def _stop_server(self, mode: str = "fast") -> None:
        pg_ctl = [self.bin("pg_ctl"), "-D", str(self.datadir)]
        if self.is_running():
            proc = self._run([*pg_ctl, "-m", mode, "-w", "-t", "30", "stop"], check=False, timeout=60)
            if proc.returncode != 0 and self.is_running():
                self._run([*pg_ctl, "-m", "immediate", "-w", "-t", "30", "stop"], check=False, timeout=60)
            if self.is_running():
                pid = self.postmaster_pid()
                if pid:
                    self._kill(pid, signal.SIGKILL)
        self._running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port and data directory (after a crash too)."""
        self._stop_server(mode)
        self._reap_orphans()
        pid = self.postmaster_pid()
        if pid is not None and not _alive(pid):
            # A dead postmaster that its parent has not reaped yet still answers kill(pid, 0),
            # which makes the new postmaster refuse the stale lock file.
            _wait_gone(pid, 10, zombie_ok=False)
            if _exists(pid):
                (self.datadir / "postmaster.pid").unlink(missing_ok=True)
        self._write_conf()
        self._pg_ctl_start()

    def is_running(self) -> bool:
        if self.base is None or not self.datadir.exists():
            return False
        pid = self.postmaster_pid()
        if pid is None or not _alive(pid):
            return False  # also covers a killed postmaster that is a zombie (pg_ctl says "running")
        proc = self._run([self.bin("pg_ctl"), "-D", str(self.datadir), "status"], check=False)
        return proc.returncode == 0

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().splitlines()[0]
            return int(first)
        except (OSError, IndexError, ValueError):
            return None

    def child_pids(self) -> list[int]:
        """Pids of the postmaster's children (backends, walsenders, workers)."""
        parent = self.postmaster_pid()
        if parent is None:
            return []
        kids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # field 4 (ppid) follows the parenthesised command name, which may contain spaces
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent:
                kids.append(int(entry))
        return kids

    def kill9_postmaster(self) -> int:
        """SIGKILL the postmaster (a crash). Children are remembered and reaped by stop().

        Returns the killed pid. The server is down afterwards; call restart() (which reaps
        the orphaned children first) to run crash recovery.
        """
        pid = self.postmaster_pid()
        if pid is None:
            raise ClusterError("no postmaster.pid: server not running")
        self._orphans.extend(self.child_pids())
        self._kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10)
        self._running = False
        return pid

    def _kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            self._run(["kill", f"-{int(sig)}", str(pid)], check=False)

    def _reap_orphans(self) -> None:
        """Kill children left behind by kill9_postmaster (only if still postgres processes)."""
        for pid in self._orphans:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"postgres"):
                self._kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10)
        self._orphans.clear()

    # ------------------------------------------------------------ clients
    def dsn(self, dbname: str = "postgres", user: str | None = None, **extra: Any) -> str:
        """libpq conninfo over TCP 127.0.0.1 (what psycopg and psql take)."""
        assert self.port is not None, "cluster not started"
        parts = {"host": "127.0.0.1", "port": self.port, "dbname": dbname, "user": user or self.superuser}
        parts.update(extra)
        return " ".join(f"{k}={_conninfo_quote(str(v))}" for k, v in parts.items())

    def connect(self, dbname: str = "postgres", user: str | None = None, autocommit: bool = True, **kw: Any):
        import psycopg

        return psycopg.connect(self.dsn(dbname, user), autocommit=autocommit, **kw)

    def execute(self, sql: str, dbname: str = "postgres", params: Iterable[Any] | None = None) -> list[tuple]:
        """Run one statement in autocommit mode; return its rows ([] when it returns none)."""
        with self.connect(dbname) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def psql(self, *args: str, dbname: str = "postgres", input: str | None = None) -> str:
        """Run psql (ON_ERROR_STOP) against the cluster; return stdout, raise on error."""
        argv = [self.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(dbname), *args]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise ClusterError(f"psql {' '.join(args)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def log_tail(self, lines: int = 50) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return ""

    # ------------------------------------------------------ context manager
    def __enter__(self) -> "Cluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Cluster(base={self.base}, port={self.port}, running={self._running})"


def _conninfo_quote(v: str) -> str:
    if v and not any(c in v for c in " '\\"):
        return v
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _state(pid: int) -> str | None:
    """The /proc state letter of pid (None when there is no such process)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _exists(pid: int) -> bool:
    return _state(pid) is not None


def _alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    st = _state(pid)
    return st is not None and st not in ("Z", "X")


def _wait_gone(pid: int, timeout: float, zombie_ok: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (_alive(pid) if zombie_ok else _exists(pid)):
            return
        time.sleep(0.05)
