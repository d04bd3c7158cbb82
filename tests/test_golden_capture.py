"""The committed golden fixtures (pgcdc_core/tests/fixtures/) match a fresh capture.

Re-captures every fixture from a throwaway cluster (tests/capture_golden.py) and checks that
the run-independent structure is unchanged: message tags in order, relations and their columns,
tuple shapes, messages, GIDs, stream flags. LSNs, xids, timestamps and user oids differ from
run to run and are not compared. Then the Rust golden test decodes the fresh capture.

If this fails after an intended change to a workload or to PostgreSQL: `make golden-capture`
and commit the new fixtures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import capture_golden as golden
from pgcluster import pg_major

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "pgcdc_core" / "tests" / "fixtures"
GOLDEN_RS = REPO / "pgcdc_core" / "tests" / "golden.rs"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("golden")
    golden.capture_all(out)
    return out


def _first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"message #{i}: committed {x!r}\n            fresh     {y!r}"
    return f"lengths differ: committed {len(a)}, fresh {len(b)}"


def _type_names(fx: dict) -> list[str]:
    return sorted(f'{t["namespace"]}.{t["name"]}' for t in fx["types"])


def _tables(fx: dict) -> list[dict]:
    return sorted(fx["tables"].values(), key=lambda t: repr(sorted(t.items())))


@pytest.mark.parametrize("name", golden.FIXTURES)
def test_committed_fixture_shape(name: str) -> None:
    fx = golden.load(COMMITTED / f"{name}.json")
    golden.CHECKS[name](fx)
    assert fx["protocol_version"] == int(fx["options"]["proto_version"])
    assert all(c["data"] == c["data"].lower() for c in fx["changes"])


# What this server can send (the committed fixtures come from 15: see README's version table).
@pytest.mark.parametrize("name", golden.fixtures_for(pg_major()))
def test_fresh_capture_matches_committed(name: str, fresh: Path) -> None:
    new = golden.load(fresh / f"{name}.json")
    golden.CHECKS[name](new)
    old = golden.as_sent_by(golden.load(COMMITTED / f"{name}.json"), golden.major(new))
    new = golden.as_sent_by(new, golden.major(new))
    for key in ("database", "publication", "slot", "two_phase", "protocol_version", "options",
                "settings", "workload"):
        assert old[key] == new[key], f"{key} differs: rerun `make golden-capture`"
    if name in golden.VERSION_DEPENDENT and golden.major(old) != golden.major(new):
        return
    assert golden.tags(old) == golden.tags(new), "message tag sequence differs"
    s_old, s_new = golden.structure(old), golden.structure(new)
    assert s_old == s_new, "structure differs at " + _first_difference(s_old, s_new)
    assert _type_names(old) == _type_names(new)
    assert _tables(old) == _tables(new)


def test_rust_golden_on_fresh_capture(fresh: Path, tmp_path: Path) -> None:
    """pgcdc_core's golden and encoder tests pass on freshly captured bytes (PGCDC_GOLDEN_DIR),
    so the committed fixtures cannot drift from what PostgreSQL really sends. A fixture this
    server cannot send (two_phase before 15) is the committed one; 13 sends no logical
    messages, which Debezium's records of the workload have, so there the comparison with
    Debezium runs on the committed fixtures."""
    assert GOLDEN_RS.exists(), "pgcdc_core/tests/golden.rs is missing"
    for name in golden.FIXTURES:
        source = fresh if pg_major() >= 14 and (fresh / f"{name}.json").exists() else COMMITTED
        shutil.copy(source / f"{name}.json", tmp_path / f"{name}.json")
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    proc = subprocess.run(
        [cargo, "test", "-p", "pgcdc_core", "--test", "golden", "--test", "encoder"],
        cwd=REPO,
        env={**os.environ, "PGCDC_GOLDEN_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    print(proc.stdout[-5000:])
    assert proc.returncode == 0, f"cargo test --test golden failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    assert "test result: ok. 4 passed" in proc.stdout, "the golden tests did not run"
