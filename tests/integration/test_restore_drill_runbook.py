"""restore_drill__<database>'s steps against the sandbox: a drill that passes, one that must fail on a
damaged backup before restoring anything, and the cleanup of a drill killed half-way."""

from __future__ import annotations

import json
import uuid
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
    # Two backups: the record measures the gap between them from the repository listing.
    take_backup(estate["file"], estate["estate"], "inventory_mariadb")
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
    newer, older = open_repository(catalog, catalog.database("inventory_mariadb")).list_backups(
        "inventory_mariadb"
    )
    assert newer.complete, "the drill record must not make a backup look incomplete"
    assert older.complete
    assert record["complete_backups_in_window"] == 2
    assert record["largest_backup_gap_seconds"] == round((newer.time - older.time).total_seconds(), 3)
    assert record["rpo_seconds"] == max(record["backup_age_seconds"], record["largest_backup_gap_seconds"])


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


def test_on_demand_restore_into_a_new_database(estate: dict[str, Any]) -> None:
    from cloudops.catalog import load_catalogs
    from cloudops.runbooks.restore_request import check_request, restore_backup, verify_restore

    backup_id = take_backup(estate["file"], estate["estate"], "inventory_mariadb")["backup_id"]
    target = f"restored_{uuid.uuid4().hex[:6]}"
    request = check_request(load_catalogs([estate["file"]]), database="inventory_mariadb", target=target)
    try:
        restored = restore_backup(request)
        assert restored["backup_id"] == backup_id
        assert verify_restore(request, backup_id)["checks"] >= 3
        with pytest.raises(CloudOpsError, match="exists"):
            restore_backup(request)  # never over an existing database
    finally:
        session = _maria_admin()
        session.cursor().execute(f"DROP DATABASE IF EXISTS `{target}`")
        session.close()


def _maria_admin() -> Any:
    import os

    import pymysql

    conn = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_MARIADB"])
    return pymysql.connect(
        host=conn["host"], port=conn["port"], user=conn["login"], password=conn["password"], autocommit=True
    )


def test_an_approved_overwrite_stages_checks_then_swaps_and_keeps_the_old_database(
    estate: dict[str, Any],
) -> None:
    from cloudops.catalog import load_catalogs
    from cloudops.runbooks.restore_request import (
        check_request,
        drop_staging,
        put_in_place,
        restore_backup,
        verify_restore,
    )

    backup_id = take_backup(estate["file"], estate["estate"], "inventory_mariadb")["backup_id"]
    target = f"existing_{uuid.uuid4().hex[:6]}"
    admin = _maria_admin()
    cursor = admin.cursor()
    cursor.execute(f"CREATE DATABASE `{target}`")
    cursor.execute(f"CREATE TABLE `{target}`.`old_only` (id INT PRIMARY KEY)")
    cursor.execute(f"INSERT INTO `{target}`.`old_only` VALUES (1), (2)")
    kept = None
    try:
        request = check_request(
            load_catalogs([estate["file"]]),
            database="inventory_mariadb",
            target=target,
            confirm_overwrite=True,
        )
        assert request.overwrite
        restored = restore_backup(request, run_id="manual__overwrite")
        staging = restored["restored_into"]
        assert staging != target
        assert staging.startswith("drill_restore_inventory_mariadb_")
        cursor.execute(f"SELECT COUNT(*) FROM `{target}`.`old_only`")
        assert cursor.fetchone()[0] == 2  # nothing touched before the approval
        assert verify_restore(request, backup_id, restored=staging)["checks"] >= 3
        placed = put_in_place(request, restored, approved_by="bob")
        kept = placed["kept_as"]
        assert placed["replaced"]
        assert kept.startswith(f"{target}_before_")
        cursor.execute(f"SELECT COUNT(*) FROM `{kept}`.`old_only`")
        assert cursor.fetchone()[0] == 2  # the old data is kept, not dropped
        assert verify_restore(request, backup_id)["checks"] >= 3  # the target now holds the backup
        cursor.execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", [staging])
        assert cursor.fetchone()[0] == 0
        assert drop_staging(request, "manual__overwrite") is False  # nothing left to drop
    finally:
        for name in (target, kept):
            if name:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def test_a_rejected_overwrite_leaves_the_target_and_drops_the_staging_copy(estate: dict[str, Any]) -> None:
    from cloudops.catalog import load_catalogs
    from cloudops.runbooks.restore_request import check_request, drop_staging, restore_backup

    take_backup(estate["file"], estate["estate"], "inventory_mariadb")
    target = f"existing_{uuid.uuid4().hex[:6]}"
    admin = _maria_admin()
    cursor = admin.cursor()
    cursor.execute(f"CREATE DATABASE `{target}`")
    try:
        request = check_request(
            load_catalogs([estate["file"]]),
            database="inventory_mariadb",
            target=target,
            confirm_overwrite=True,
        )
        staging = restore_backup(request, run_id="manual__rejected")["restored_into"]
        assert drop_staging(request, "manual__rejected") is True
        cursor.execute(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN (%s, %s)",
            [staging, target],
        )
        assert [row[0] for row in cursor.fetchall()] == [target]
    finally:
        cursor.execute(f"DROP DATABASE IF EXISTS `{target}`")
        admin.close()
