"""pytest fixtures: one throwaway cluster per session, a fresh database per test."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ext_support import extension_installed  # noqa: E402
from pgcluster import Cluster  # noqa: E402

_db_counter = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "smoke: the short suite run on every PostgreSQL version (make test-smoke PG_MAJOR=N)",
    )


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest):
    """A running throwaway cluster (wal_level=logical), stopped when the session ends."""
    c = Cluster(name="pgcdc-test")
    request.addfinalizer(c.stop)  # registered before start: a failed start still cleans up
    c.start()
    return c


@pytest.fixture
def fresh_db(cluster: Cluster, request: pytest.FixtureRequest):
    """Name of a new, empty database in the session cluster; dropped after the test."""
    name = f"t{os.getpid()}_{next(_db_counter)}_{_slug(request.node.name)}"[:63]
    cluster.execute(f'CREATE DATABASE "{name}"')
    yield name
    if cluster.is_running():
        # slots pin the database: drop them first, then the database (kicking clients out)
        cluster.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE database = %s AND NOT active",
            params=[name],
        )
        cluster.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def _extension_installed() -> None:
    """Used by ext_support.requires_extension: fails (never skips) without the extension."""
    assert extension_installed(), "pgcdc extension not installed into PostgreSQL (run: make ext-install)"


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s.lower())
