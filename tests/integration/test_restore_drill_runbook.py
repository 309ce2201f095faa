"""restore_drill__<database>'s steps against the sandbox: a drill that passes, one that must fail on a
damaged backup before restoring anything, and the cleanup of a drill killed half-way (restore_request's
steps are in test_restore_request.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudops.errors import CloudOpsError
from cloudops.runbooks.backup import open_repository, take_backup
from cloudops.runbooks.restore_drill import prepare, record_drill, restore, teardown, validate
from tests.integration.estates import private_estate, sandbox_s3

pytestmark = pytest.mark.integration


@pytest.fixture
def estate(
    tmp_path: Path, sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """inventory_mariadb backed up into a bucket of this test's own, without Object Lock (tests alter it)."""
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path / "evidence"))
    database = {
        "name": "inventory_mariadb",
        "engine": "mariadb",
        "conn_id": "sandbox_mariadb",
        "database": "inventory",
        "rpo": "1d",
        "rto": "1h",
        "backup": {"repository": "r", "retention": {"keep_last": 3}},
        "drill": {"schedule": "on_backup"},
    }
    with private_estate(tmp_path, "dr", [database]) as made:
        yield {
            "file": made.file,
            "estate": made.estate,
            "bucket": made.bucket,
            "evidence": tmp_path / "evidence",
        }


def run_drill(estate: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The DAG's steps in its order, with its trigger rules: teardown and record always run."""
    args = (estate["file"], estate["estate"], "inventory_mariadb")
    prepared = prepare(*args, run_id=run_id, backup_id="latest")
    restored = validated = None
    try:
        restored = restore(*args, backup_id=prepared["backup_id"], scratch=prepared["scratch"])
        validated = validate(*args, backup_id=prepared["backup_id"], scratch=prepared["scratch"])
    except CloudOpsError as error:
        failure = str(error)
    else:
        failure = None
    finally:
        teardown(*args, scratch=prepared["scratch"])
    try:
        return {
            "result": record_drill(
                *args, run_id=run_id, prepared=prepared, restored=restored, validated=validated
            ),
            "failure": failure,
        }
    except CloudOpsError as error:
        return {"result": None, "failure": failure, "verdict": str(error)}


def scratch_databases() -> list[str]:
    from cloudops.engines import mariadb

    return mariadb.leftover_scratch_databases("sandbox_mariadb", "inventory_mariadb")


def test_drill_passes_and_records_evidence(estate: dict[str, Any]) -> None:
    backup_id = take_backup(estate["file"], estate["estate"], "inventory_mariadb")["backup_id"]

    outcome = run_drill(estate, "manual__drill-pass")

    assert outcome["failure"] is None
    assert outcome["result"]["passed"]
    (local,) = (estate["evidence"] / "drills").rglob("*.json")
    record = json.loads(local.read_text())
    assert record["backup_id"] == backup_id
    assert record["checks"]
    assert all(check["passed"] for check in record["checks"])
    key = outcome["result"]["record"].removeprefix(f"s3://{estate['bucket']}/")
    assert json.loads(sandbox_s3().get_object(Bucket=estate["bucket"], Key=key)["Body"].read()) == record
    assert scratch_databases() == []
    from cloudops.evidence.ledger import Ledger, verify_ledger

    ledger = Ledger(estate["evidence"] / "ledger")
    assert verify_ledger(ledger).ok
    (fact,) = [r for r in ledger.records() if r.kind == "drill.recorded"]
    assert fact.fields["run_id"] == "manual__drill-pass"
    assert fact.fields["data"]["backup_id"] == backup_id
    assert fact.fields["data"]["passed"] is True
    assert fact.fields["data"]["checksums_verified"] is True
    assert fact.fields["data"]["record_uri"] == outcome["result"]["record"]
    from cloudops.catalog import load_catalog_file

    catalog = load_catalog_file(estate["file"])
    (listed,) = open_repository(catalog, catalog.database("inventory_mariadb")).list_backups(
        "inventory_mariadb"
    )
    assert listed.complete, "the drill record must not make the backup look incomplete"


def test_flipped_byte_fails_before_any_restore_and_teardown_still_runs(estate: dict[str, Any]) -> None:
    manifest = take_backup(estate["file"], estate["estate"], "inventory_mariadb")
    key = manifest["objects"][0]["key"]
    data = bytearray(sandbox_s3().get_object(Bucket=estate["bucket"], Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    sandbox_s3().put_object(Bucket=estate["bucket"], Key=key, Body=bytes(data))

    outcome = run_drill(estate, "manual__drill-flip")

    assert manifest["objects"][0]["name"] in outcome["failure"]
    assert "sha256" in outcome["failure"].lower() or "SHA-256" in outcome["failure"]
    assert "failed" in outcome["verdict"]
    assert scratch_databases() == [], "nothing was restored, and nothing is left"


def test_next_drill_drops_what_a_killed_drill_left(estate: dict[str, Any]) -> None:
    take_backup(estate["file"], estate["estate"], "inventory_mariadb")
    args = (estate["file"], estate["estate"], "inventory_mariadb")
    killed = prepare(*args, run_id="manual__killed", backup_id="latest")
    restore(*args, backup_id=killed["backup_id"], scratch=killed["scratch"])
    assert scratch_databases() == [killed["scratch"]]

    outcome = run_drill(estate, "manual__after-kill")

    assert outcome["result"]["passed"]
    assert scratch_databases() == []
