"""Which ledger backend a deployment writes, as chosen by its environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudops.errors import InvalidInputError
from cloudops.evidence.backend import EvidenceLedger, configured_backend, db_conn_id, open_ledger
from cloudops.evidence.ledger import Ledger, LedgerError
from cloudops.evidence.pg_ledger import PgLedger

pytestmark = pytest.mark.unit


def test_the_file_ledger_is_the_default() -> None:
    assert configured_backend({}) == "file"
    assert configured_backend({"CLOUDOPS_EVIDENCE_BACKEND": " Postgres "}) == "postgres"
    assert db_conn_id({}) == "cloudops_evidence_db"
    assert db_conn_id({"CLOUDOPS_EVIDENCE_DB_CONN_ID": "ledger_db"}) == "ledger_db"


def test_an_unknown_backend_is_named_with_the_choices() -> None:
    with pytest.raises(InvalidInputError, match=r"CLOUDOPS_EVIDENCE_BACKEND='sqlite'.*file, postgres"):
        configured_backend({"CLOUDOPS_EVIDENCE_BACKEND": "sqlite"})


def test_a_folder_given_is_always_a_file_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_BACKEND", "postgres")

    ledger = open_ledger(tmp_path / "ledger")

    assert isinstance(ledger, Ledger)
    assert isinstance(ledger, EvidenceLedger)
    assert ledger.where == str(tmp_path / "ledger")


def test_the_postgres_backend_takes_its_connection_and_schema_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_BACKEND", "postgres")
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DB_CONN_ID", "ledger_db")
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DB_SCHEMA", "estate_a")

    ledger = open_ledger()  # nothing connects until the first read or append

    assert isinstance(ledger, PgLedger)
    assert isinstance(ledger, EvidenceLedger)
    assert ledger.where == "PostgreSQL ledger estate_a (connection ledger_db)"


def test_a_schema_name_that_is_not_plain_sql_is_refused() -> None:
    with pytest.raises(LedgerError, match="not a plain lower-case SQL name"):
        PgLedger("cloudops_evidence_db", schema="x; DROP TABLE y")
