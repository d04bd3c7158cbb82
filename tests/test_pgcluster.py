"""The throwaway-cluster fixture itself: settings, replication access, restart, crash, cleanup."""

from __future__ import annotations

import os
import time

import psycopg
import pytest

import pgcluster
from pgcluster import Cluster


def test_settings(cluster: Cluster) -> None:
    rows = dict(cluster.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('wal_level','max_replication_slots','max_wal_senders','max_prepared_transactions',"
        "'TimeZone','listen_addresses','port')"))
    assert rows["wal_level"] == "logical"
    assert rows["max_replication_slots"] == "20"
    assert rows["max_wal_senders"] == "20"
    assert rows["max_prepared_transactions"] == "10"
    assert rows["TimeZone"] == "UTC"
    assert rows["listen_addresses"] == "127.0.0.1"
    assert int(rows["port"]) == cluster.port


def test_fresh_db_is_empty_and_unique(cluster: Cluster, fresh_db: str) -> None:
    assert cluster.execute("SELECT current_database()", fresh_db) == [(fresh_db,)]
    assert cluster.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
                           fresh_db) == [(0,)]
    cluster.execute("CREATE EXTENSION hstore", fresh_db)  # contrib is installed


def test_replication_connection_over_tcp(cluster: Cluster, fresh_db: str) -> None:
    # pg_hba must allow "host replication all 127.0.0.1/32"
    with psycopg.connect(cluster.dsn(fresh_db, replication="database"), autocommit=True) as conn:
        row = conn.execute("IDENTIFY_SYSTEM").fetchone()
        assert row[3] == fresh_db


def test_restart_and_kill9_then_cleanup() -> None:
    c = Cluster(name="pgcdc-lifecycle")
    with c:
        base = c.base
        c.execute("CREATE TABLE t (x int)")
        c.execute("INSERT INTO t VALUES (1)")
        c.restart()
        assert c.execute("SELECT x FROM t") == [(1,)]
        with c.connect() as held:  # a backend that outlives its postmaster
            pid = c.kill9_postmaster()
            assert not c.is_running()
            assert not pgcluster._alive(pid)
            del held
        c.restart()  # crash recovery
        assert c.execute("SELECT x FROM t") == [(1,)]
        assert "database system was interrupted" in c.log_tail(100) or "recovery" in c.log_tail(100)
    assert c.base is None
    assert base is not None and not base.exists()


def test_stop_is_idempotent_and_leaves_no_server() -> None:
    c = Cluster(name="pgcdc-stop").start()
    pid = c.postmaster_pid()
    assert pid is not None
    c.stop()
    c.stop()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("postmaster still running after stop()")
