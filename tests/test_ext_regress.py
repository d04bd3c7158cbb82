"""SQL regression test of the extension's SQL surface (pg_regress, tests/ext_regress/), and
the refusal to load without shared_preload_libraries."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from ext_support import requires_extension, start_cluster
from pgcluster import Cluster, pg_bindir

pytestmark = [requires_extension, pytest.mark.timeout(300)]

HERE = Path(__file__).resolve().parent


def pg_regress() -> Path:
    pgxs = subprocess.run(
        [str(pg_bindir() / "pg_config"), "--pgxs"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Path(pgxs).parent.parent / "test" / "regress" / "pg_regress"


def test_sql_surface_regression(tmp_path):
    tool = pg_regress()
    assert tool.exists(), f"{tool} not found (make deps-os installs postgresql-server-dev)"
    c = start_cluster("pgcdc-regress")
    try:
        proc = subprocess.run(
            [
                str(tool),
                "--use-existing",
                "--host=127.0.0.1",
                f"--port={c.port}",
                "--user=postgres",
                "--dbname=postgres",
                f"--bindir={pg_bindir()}",
                f"--inputdir={HERE / 'ext_regress'}",
                f"--outputdir={tmp_path}",
                "pgcdc_api",
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        diffs = tmp_path / "regression.diffs"
        detail = diffs.read_text() if diffs.exists() else ""
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{detail}\n{c.log_tail(20)}"
    finally:
        c.stop()


def test_refuses_to_load_without_shared_preload_libraries():
    with Cluster(name="pgcdc-nopreload") as c:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            c.execute("CREATE EXTENSION pgcdc")
        assert "shared_preload_libraries" in str(e.value)
        assert "shared_preload_libraries" in e.value.diag.message_hint
        assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pgcdc'") == [(0,)]
