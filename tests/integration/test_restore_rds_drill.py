"""restore_drill__<database>'s RDS branch against the sandbox's moto: the backup's RDS snapshot restored into
a scratch instance named after the run, checked, deleted; leftovers of a killed drill deleted by the next
prepare; instances that are not a drill's scratch instance refused by the teardown guard.

The catalog is the sandbox's MariaDB (a quick logical backup) standing for a database on RDS, whose
instance is the sandbox's ``orders-pg``: only snapshots of it are taken and restored, it is never changed.
Everything this module creates carries an estate of its own (``rdsdrill_<random>``) and run ids of its own;
a finalizer deletes the scratch instances and snapshots tagged with that estate, whatever the tests left.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudops.clouds.aws.rds import TAG_DRILL, rds_drill_instance_name
from cloudops.errors import CloudOpsError, RestoreRefused
from cloudops.runbooks.backup import snapshot_rds, take_backup
from cloudops.runbooks.restore_drill import (
    check_rds,
    prepare,
    record_drill,
    restore,
    restore_rds,
    teardown,
    teardown_rds,
    validate,
)
from tests.integration.estates import admin_client, private_estate

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
INSTANCE = "orders-pg"
DATABASE = "inventory_mariadb"


def tags_of(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in items or []}


def instance(identifier: str) -> dict[str, Any] | None:
    rds = admin_client("rds")
    try:
        return rds.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"][0]
    except rds.exceptions.DBInstanceNotFoundFault:
        return None


def run_id() -> str:
    return f"manual__rds-drill-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, sandbox_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A catalog with rds_instance_id, one backup of it and that backup's RDS snapshot."""
    tmp = tmp_path_factory.mktemp("rds-drill")
    database = {
        "name": DATABASE,
        "engine": "mariadb",
        "conn_id": "sandbox_mariadb",
        "database": "inventory",
        "rds_instance_id": INSTANCE,
        "rpo": "1d",
        "rto": "1h",
        "backup": {"repository": "r", "retention": {"keep_last": 3}},
        "drill": {"schedule": "on_backup", "scratch_conn_id": "sandbox_mariadb_scratch"},
    }
    with private_estate(tmp, "rdsdrill", [database]) as made, pytest.MonkeyPatch.context() as patch:
        name, file = made.estate, made.file
        # The backup.taken record goes into this module's ledger; each test starts from a copy of it.
        patch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp / "evidence"))
        backup_id = take_backup(file, name, DATABASE)["backup_id"]
        snapshot = snapshot_rds(file, name, DATABASE, backup_id=backup_id)
        yield {
            "file": file,
            "estate": name,
            "bucket": made.bucket,
            "backup_id": backup_id,
            "snapshot_id": snapshot["snapshot_id"],
            "evidence": tmp / "evidence",
        }
        rds = admin_client("rds")
        for page in rds.get_paginator("describe_db_instances").paginate():
            for item in page["DBInstances"]:
                if tags_of(item.get("TagList")).get("cloudops:estate") == name:
                    rds.delete_db_instance(
                        DBInstanceIdentifier=item["DBInstanceIdentifier"], SkipFinalSnapshot=True
                    )
        for page in rds.get_paginator("describe_db_snapshots").paginate(SnapshotType="manual"):
            for item in page["DBSnapshots"]:
                if tags_of(item.get("TagList")).get("cloudops:estate") == name:
                    rds.delete_db_snapshot(DBSnapshotIdentifier=item["DBSnapshotIdentifier"])


@pytest.fixture
def evidence(estate: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's own evidence folder, whose ledger holds the module backup's backup.taken record."""
    import shutil

    shutil.copytree(estate["evidence"] / "ledger", tmp_path / "evidence" / "ledger")
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path / "evidence"))
    return tmp_path / "evidence"


@pytest.fixture
def decoy(estate: dict[str, Any]) -> Iterator[list[str]]:
    """Instances a test creates by hand (not through the drill); deleted afterwards."""
    created: list[str] = []
    yield created
    rds = admin_client("rds")
    for identifier in created:
        if instance(identifier) is not None:
            rds.delete_db_instance(DBInstanceIdentifier=identifier, SkipFinalSnapshot=True)


def create_instance(identifier: str, tags: dict[str, str]) -> None:
    admin_client("rds").create_db_instance(
        DBInstanceIdentifier=identifier,
        Engine="postgres",
        DBInstanceClass="db.t3.micro",
        AllocatedStorage=20,
        MasterUsername="decoy",
        MasterUserPassword="decoy-password-1",
        Tags=[{"Key": key, "Value": value} for key, value in tags.items()],
    )


def test_drill_restores_the_backups_snapshot_checks_and_deletes_the_scratch_instance(
    estate: dict[str, Any], evidence: Path
) -> None:
    args = (estate["file"], estate["estate"], DATABASE)
    run = run_id()
    prepared = prepare(*args, run_id=run, backup_id="latest")
    assert prepared["backup_id"] == estate["backup_id"]
    restored = restore(*args, backup_id=prepared["backup_id"], scratch=prepared["scratch"], run_id=run)
    validated = validate(*args, backup_id=prepared["backup_id"], scratch=prepared["scratch"])
    teardown(*args, scratch=prepared["scratch"])

    rds_restored = restore_rds(*args, backup_id=prepared["backup_id"], run_id=run)

    scratch = rds_restored["scratch_instance"]
    assert scratch == rds_drill_instance_name(DATABASE, run)
    assert rds_restored["snapshot_id"] == estate["snapshot_id"]
    assert "is the one of backup" in rds_restored["snapshot_choice"]
    restored_instance = instance(scratch)
    assert restored_instance is not None, "the scratch instance existed"
    tags = tags_of(restored_instance["TagList"])
    assert tags[TAG_DRILL] == DATABASE
    assert tags["cloudops:estate"] == estate["estate"]
    assert tags["cloudops:run-id"] == run

    rds_checked = check_rds(*args, restored=rds_restored)
    names = [check["name"] for check in rds_checked["checks"]]
    assert names == [
        "rds status",
        "rds engine",
        "rds engine version",
        "rds endpoint",
        "rds allocated storage",
    ]
    assert all(check["passed"] for check in rds_checked["checks"]), rds_checked

    torn_down = teardown_rds(*args, run_id=run)
    assert torn_down == {"scratch_instance": scratch, "deleted": True}
    assert instance(scratch) is None, "the scratch instance is deleted after teardown"
    assert teardown_rds(*args, run_id=run)["deleted"] is False, "a second teardown is a no-op"

    result = record_drill(
        *args,
        run_id=run,
        prepared=prepared,
        restored=restored,
        validated=validated,
        rds_restored=rds_restored,
        rds_checked=rds_checked,
        rds_torn_down=torn_down,
    )
    assert result["passed"]
    (local,) = (evidence / "drills").rglob("*.json")
    record = json.loads(local.read_text())
    assert record["record_version"] == 3
    assert record["rds"]["snapshot_id"] == estate["snapshot_id"]
    assert record["rds"]["scratch_instance"] == scratch
    assert record["rds"]["restore_seconds"] >= 0
    assert len(record["rds"]["checks"]) == 5


def test_without_the_backups_snapshot_the_newest_one_is_drilled_and_said(
    estate: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    args = (estate["file"], estate["estate"], DATABASE)
    run = run_id()
    try:
        with caplog.at_level(logging.WARNING, logger="cloudops.clouds.aws.rds"):
            restored = restore_rds(*args, backup_id="20200101T000000Z-000000", run_id=run)
        assert "no snapshot of orders-pg is tagged with backup 20200101T000000Z-000000" in caplog.text
        assert "drilling the newest available snapshot" in restored["snapshot_choice"]
        assert instance(restored["scratch_instance"]) is not None
    finally:
        teardown_rds(*args, run_id=run)


def test_next_prepare_deletes_the_scratch_instance_a_killed_drill_left(estate: dict[str, Any]) -> None:
    args = (estate["file"], estate["estate"], DATABASE)
    killed = run_id()
    left = restore_rds(*args, backup_id=estate["backup_id"], run_id=killed)["scratch_instance"]
    assert instance(left) is not None

    prepare(*args, run_id=run_id(), backup_id="latest")

    assert instance(left) is None, "the next drill's prepare deleted the leftover"


def test_teardown_guard_refuses_what_is_not_this_drills_scratch_instance(
    estate: dict[str, Any], decoy: list[str]
) -> None:
    from cloudops.clouds.aws.rds import delete_rds_drill_instance

    args = (estate["file"], estate["estate"], DATABASE)
    untagged_run, other_estate_run = run_id(), run_id()
    untagged = rds_drill_instance_name(DATABASE, untagged_run)  # a scratch name, but no drill tags
    other_estate = rds_drill_instance_name(DATABASE, other_estate_run)  # another estate's drill
    create_instance(untagged, {"Owner": "someone"})
    create_instance(other_estate, {TAG_DRILL: DATABASE, "cloudops:estate": "another_estate"})
    decoy += [untagged, other_estate]

    with pytest.raises(RestoreRefused, match=rf"refusing to delete RDS instance '{untagged}'.*{TAG_DRILL}"):
        teardown_rds(*args, run_id=untagged_run)
    with pytest.raises(RestoreRefused, match="another_estate"):
        teardown_rds(*args, run_id=other_estate_run)
    with pytest.raises(RestoreRefused, match="its name is not cloudops-drill-inventory-mariadb-<run hash>"):
        delete_rds_drill_instance("sandbox_aws", INSTANCE, database=DATABASE, estate=estate["estate"])
    prepare(*args, run_id=run_id(), backup_id="latest")  # the leftover cleanup leaves them alone too

    assert instance(untagged) is not None
    assert instance(other_estate) is not None
    assert instance(INSTANCE)["DBInstanceStatus"] == "available"  # type: ignore[index]


def test_a_failed_rds_restore_fails_the_drill_and_is_recorded(
    estate: dict[str, Any], evidence: Path, tmp_path: Path
) -> None:
    document = yaml.safe_load(Path(estate["file"]).read_text())
    document["databases"][0]["rds_instance_id"] = "no-such-instance"
    path = tmp_path / "estate.yaml"
    path.write_text(yaml.safe_dump(document))
    args = (str(path), estate["estate"], DATABASE)
    run = run_id()
    prepared = prepare(*args, run_id=run, backup_id="latest")
    restored = restore(*args, backup_id=prepared["backup_id"], scratch=prepared["scratch"], run_id=run)
    validated = validate(*args, backup_id=prepared["backup_id"], scratch=prepared["scratch"])
    teardown(*args, scratch=prepared["scratch"])
    with pytest.raises(CloudOpsError, match="no-such-instance"):
        restore_rds(*args, backup_id=prepared["backup_id"], run_id=run)
    torn_down = teardown_rds(*args, run_id=run)  # all_done: runs anyway, nothing to delete
    assert torn_down["deleted"] is False

    with pytest.raises(CloudOpsError, match=r"RDS: step\(s\) restore_rds, check_rds failed"):
        record_drill(
            *args,
            run_id=run,
            prepared=prepared,
            restored=restored,
            validated=validated,
            rds_restored=None,
            rds_checked=None,
            rds_torn_down=torn_down,
        )
    (local,) = (evidence / "drills").rglob("*.json")
    record = json.loads(local.read_text())
    assert record["passed"] is False
    assert record["rds"]["instance_id"] == "no-such-instance"
    assert record["rds"]["snapshot_id"] is None
