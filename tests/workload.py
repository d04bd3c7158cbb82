"""The shared type-matrix workload and Debezium's output for it, kept in the repository.

``tests/fixtures/debezium/`` holds the workload (``typematrix.sql``, ``typematrix_dml.sql``),
the records real Debezium 3.6.3 produced for it (``*_noschema.jsonl``) and the format notes
(``FORMAT.md``); its README says where they come from. Tests read them only from here.
"""

from __future__ import annotations

from pathlib import Path

DEBEZIUM_DIR = Path(__file__).resolve().parent / "fixtures" / "debezium"
TYPEMATRIX_SQL = DEBEZIUM_DIR / "typematrix.sql"
TYPEMATRIX_DML_SQL = DEBEZIUM_DIR / "typematrix_dml.sql"
