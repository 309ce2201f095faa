"""RDS and EBS snapshots against the sandbox's moto, over HTTP: take, tag, list, plan retention, delete.

Each test tags its snapshots with an estate of its own (``itest_<random>``), so listings see only them
even while others use the shared moto, and a finalizer deletes every snapshot carrying that estate,
whatever the test left. The snapshots are of the sandbox's own RDS instance ``orders-pg`` and its hosts'
data volumes, which are never changed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from cloudops.catalog.models import RetentionPolicy
from cloudops.clouds.aws import (
    CloudRetentionRefused,
    CloudSnapshot,
    CloudSnapshotError,
    SnapshotTargetNotFound,
    as_retention_records,
    delete_cloud_snapshot,
    list_cloud_snapshots,
    plan_cloud_snapshot_retention,
    snapshot_ebs_volumes,
    snapshot_rds_instance,
)
from cloudops.repository.layout import new_backup_id
from tests.integration.estates import admin_client

pytestmark = pytest.mark.integration

AWS_CONN_ID = "sandbox_aws"
REGION = "eu-west-1"
INSTANCE = "orders-pg"
DATABASE = "orders_pg"
FLEET = "web"


def tags_of(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in items or []}


def backup_ids(count: int) -> list[str]:
    """Backup ids an hour apart, oldest first, as the backups runbook makes them."""
    start = datetime.now(UTC) - timedelta(hours=count)
    return [new_backup_id(start + timedelta(hours=index)) for index in range(count)]


@pytest.fixture
def estate(sandbox_env: dict[str, str]) -> Iterator[str]:
    """An estate name of this test's own; every snapshot tagged with it is deleted afterwards."""
    name = f"itest_{secrets.token_hex(4)}"
    yield name
    rds, ec2 = admin_client("rds"), admin_client("ec2")
    for page in rds.get_paginator("describe_db_snapshots").paginate(SnapshotType="manual"):
        for item in page["DBSnapshots"]:
            if tags_of(item.get("TagList")).get("cloudops:estate") == name:
                rds.delete_db_snapshot(DBSnapshotIdentifier=item["DBSnapshotIdentifier"])
    left = ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:cloudops:estate", "Values": [name]}]
    )["Snapshots"]
    for item in left:
        ec2.delete_snapshot(SnapshotId=item["SnapshotId"])


@pytest.fixture(scope="module")
def web_volumes() -> list[tuple[str, str]]:
    """``(host, volume id)`` of the sandbox hosts web-1 and web-2's data volumes, found by their tags."""
    volumes = admin_client("ec2").describe_volumes(
        Filters=[
            {"Name": "tag:Estate", "Values": ["sandbox"]},
            {"Name": "tag:Name", "Values": ["web-1-data", "web-2-data"]},
        ]
    )["Volumes"]
    found = sorted((tags_of(v["Tags"])["Name"].removesuffix("-data"), v["VolumeId"]) for v in volumes)
    assert [host for host, _ in found] == ["web-1", "web-2"], f"sandbox volumes not found: {found}"
    return found


def rds_snapshot_count(estate: str) -> int:
    pages = admin_client("rds").get_paginator("describe_db_snapshots").paginate(SnapshotType="manual")
    return sum(
        tags_of(item.get("TagList")).get("cloudops:estate") == estate
        for page in pages
        for item in page["DBSnapshots"]
    )


def test_rds_snapshot_is_tagged_listed_planned_and_deleted(
    estate: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    ids = backup_ids(3)
    snapshots = [
        snapshot_rds_instance(
            AWS_CONN_ID,
            INSTANCE,
            backup_id=backup_id,
            estate=estate,
            database=DATABASE,
            wait_timeout=timedelta(minutes=2),
            poll_interval=timedelta(seconds=1),
        )
        for backup_id in ids
    ]
    first = snapshots[0]
    assert first.kind == "rds"
    assert first.snapshot_id == f"cloudops-orders-pg-{ids[0].lower()}"
    assert first.backup_id == ids[0]
    assert first.status == "available"
    assert first.complete
    assert first.instance_id == INSTANCE
    assert first.target == DATABASE
    assert first.created_at.tzinfo == UTC
    described = admin_client("rds").describe_db_snapshots(DBSnapshotIdentifier=first.snapshot_id)
    assert tags_of(described["DBSnapshots"][0]["TagList"]) == {
        "cloudops:backup-id": ids[0],
        "cloudops:estate": estate,
        "cloudops:database": DATABASE,
        "cloudops:kind": "rds",
    }

    # A re-run of the same backup takes no second snapshot.
    again = snapshot_rds_instance(AWS_CONN_ID, INSTANCE, backup_id=ids[0], estate=estate, database=DATABASE)
    assert again.snapshot_id == first.snapshot_id
    assert rds_snapshot_count(estate) == 3

    listed = list_cloud_snapshots(AWS_CONN_ID, estate=estate, kind="rds", database=DATABASE)
    assert [s.snapshot_id for s in listed] == [s.snapshot_id for s in snapshots]
    assert [s.backup_id for s in listed] == ids
    assert list_cloud_snapshots(AWS_CONN_ID, estate=estate, kind="rds", database="inventory_mariadb") == []
    assert [r.id for r in as_retention_records(listed)] == ids
    assert all(record.complete for record in as_retention_records(listed))

    policy = RetentionPolicy(keep_last=1)
    with pytest.raises(CloudRetentionRefused, match=f"rds snapshots of database {DATABASE}: refusing"):
        plan_cloud_snapshot_retention(listed, policy)
    [retention] = plan_cloud_snapshot_retention(listed, policy, max_delete_share=1.0)
    assert retention.plan.keep == [ids[2]]
    assert retention.plan.delete == [ids[1], ids[0]]
    assert len(retention.to_delete) == 2

    # Once Airflow has configured logging (structlog) the lines go to stdout, before that to the
    # logging handlers: read both, so the test does not depend on which tests ran first.
    caplog.set_level("INFO")

    def logged() -> str:
        text = capsys.readouterr().out + caplog.text
        caplog.clear()
        return text

    logged()
    for snapshot in retention.to_delete:
        delete_cloud_snapshot(AWS_CONN_ID, snapshot, dry_run=True)
    assert rds_snapshot_count(estate) == 3
    out = logged()
    assert f"dry run: would delete rds snapshot {retention.to_delete[0].snapshot_id}" in out

    for snapshot in retention.to_delete:
        delete_cloud_snapshot(AWS_CONN_ID, snapshot, dry_run=False)
    out = logged()
    assert out.index(f"deleting rds snapshot {retention.to_delete[0].snapshot_id}") < out.index(
        f"deleted rds snapshot {retention.to_delete[0].snapshot_id}"
    )
    remaining = list_cloud_snapshots(AWS_CONN_ID, estate=estate, kind="rds")
    assert [s.backup_id for s in remaining] == [ids[2]]
    # Deleting again is a no-op that says so.
    delete_cloud_snapshot(AWS_CONN_ID, retention.to_delete[0], dry_run=False)
    assert "already gone, nothing to delete" in logged()

    delete_cloud_snapshot(AWS_CONN_ID, remaining[0], dry_run=False)
    assert list_cloud_snapshots(AWS_CONN_ID, estate=estate, kind="rds") == []


def test_rds_snapshot_name_is_sanitized_and_accepted_by_rds(estate: str) -> None:
    backup_id = "Nightly_2026.11.23--Run-"
    snapshot = snapshot_rds_instance(
        AWS_CONN_ID, INSTANCE, backup_id=backup_id, estate=estate, database=DATABASE, wait=False
    )
    assert snapshot.snapshot_id == "cloudops-orders-pg-nightly-2026-11-23-run"
    [listed] = list_cloud_snapshots(AWS_CONN_ID, estate=estate, kind="rds")
    assert listed.backup_id == backup_id  # from the tag: the identifier lost its case


def test_missing_rds_instance_is_named(estate: str) -> None:
    with pytest.raises(
        SnapshotTargetNotFound, match=r"RDS instance 'no-such-db' \(database orders_pg of estate"
    ):
        snapshot_rds_instance(
            AWS_CONN_ID, "no-such-db", backup_id=backup_ids(1)[0], estate=estate, database=DATABASE
        )
    assert rds_snapshot_count(estate) == 0


def test_delete_refuses_a_snapshot_whose_tags_changed(estate: str) -> None:
    snapshot = snapshot_rds_instance(
        AWS_CONN_ID, INSTANCE, backup_id=backup_ids(1)[0], estate=estate, database=DATABASE
    )
    stale = CloudSnapshot(
        kind="rds",
        snapshot_id=snapshot.snapshot_id,
        backup_id="20200101T000000Z-000000",
        created_at=snapshot.created_at,
        status=snapshot.status,
        target=DATABASE,
        instance_id=INSTANCE,
    )
    with pytest.raises(CloudSnapshotError, match="refusing to delete"):
        delete_cloud_snapshot(AWS_CONN_ID, stale, dry_run=False)
    assert rds_snapshot_count(estate) == 1


def test_ebs_snapshots_per_volume_are_tagged_listed_and_deleted(
    estate: str, web_volumes: list[tuple[str, str]]
) -> None:
    backup_id = backup_ids(1)[0]
    taken = snapshot_ebs_volumes(
        AWS_CONN_ID,
        web_volumes,
        backup_id=backup_id,
        estate=estate,
        fleet=FLEET,
        wait_timeout=timedelta(minutes=2),
        poll_interval=timedelta(seconds=1),
    )
    assert [(s.target, s.volume_id) for s in taken] == web_volumes
    assert all(s.kind == "ebs" and s.status == "completed" and s.complete for s in taken)
    described = admin_client("ec2").describe_snapshots(SnapshotIds=[s.snapshot_id for s in taken])[
        "Snapshots"
    ]
    by_id = {item["SnapshotId"]: item for item in described}
    for snapshot in taken:
        item = by_id[snapshot.snapshot_id]
        assert item["VolumeId"] == snapshot.volume_id
        assert backup_id in item["Description"]
        assert snapshot.target in item["Description"]
        assert tags_of(item["Tags"]) == {
            "cloudops:backup-id": backup_id,
            "cloudops:estate": estate,
            "cloudops:fleet": FLEET,
            "cloudops:host": snapshot.target,
            "cloudops:kind": "ebs",
        }

    # A re-run of the same backup takes no second snapshot of any volume.
    again = snapshot_ebs_volumes(AWS_CONN_ID, web_volumes, backup_id=backup_id, estate=estate, fleet=FLEET)
    assert [s.snapshot_id for s in again] == [s.snapshot_id for s in taken]

    listed = list_cloud_snapshots(AWS_CONN_ID, estate=estate, kind="ebs", fleet=FLEET)
    assert sorted(s.snapshot_id for s in listed) == sorted(s.snapshot_id for s in taken)
    assert list_cloud_snapshots(AWS_CONN_ID, estate=estate, kind="ebs", fleet="app") == []
    plans = plan_cloud_snapshot_retention(listed, RetentionPolicy(keep_last=1))
    assert [plan.group for plan in plans] == [f"ebs snapshots of host {h} volume {v}" for h, v in web_volumes]
    assert all(plan.plan.keep == [backup_id] and plan.plan.delete == [] for plan in plans)

    delete_cloud_snapshot(AWS_CONN_ID, listed[0], dry_run=True)
    assert len(list_cloud_snapshots(AWS_CONN_ID, estate=estate, kind="ebs")) == 2
    for snapshot in listed:
        delete_cloud_snapshot(AWS_CONN_ID, snapshot, dry_run=False)
    assert list_cloud_snapshots(AWS_CONN_ID, estate=estate, kind="ebs") == []


def test_missing_volume_is_named_and_the_other_snapshots_are_reported(
    estate: str, web_volumes: list[tuple[str, str]]
) -> None:
    host, volume_id = web_volumes[0]
    with pytest.raises(SnapshotTargetNotFound) as raised:
        snapshot_ebs_volumes(
            AWS_CONN_ID,
            [("ghost-1", "vol-0123456789abcdef0"), (host, volume_id)],
            backup_id=backup_ids(1)[0],
            estate=estate,
            fleet=FLEET,
            poll_interval=timedelta(seconds=1),
        )
    message = str(raised.value)
    assert "EBS volume vol-0123456789abcdef0 of host ghost-1" in message
    [taken] = raised.value.snapshots
    assert taken.target == host
    assert taken.volume_id == volume_id
    assert taken.status == "completed"
    assert taken.snapshot_id in message
    [listed] = list_cloud_snapshots(AWS_CONN_ID, estate=estate, kind="ebs")
    assert listed.snapshot_id == taken.snapshot_id


def test_listing_refuses_a_selector_of_the_other_kind(sandbox_env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="fleet selects EBS"):
        list_cloud_snapshots(AWS_CONN_ID, estate="sandbox", kind="rds", fleet=FLEET)
    with pytest.raises(ValueError, match="database selects RDS"):
        list_cloud_snapshots(AWS_CONN_ID, estate="sandbox", kind="ebs", database=DATABASE)
