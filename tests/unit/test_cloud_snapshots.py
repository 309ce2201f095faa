"""Cloud snapshots without a cloud: RDS snapshot names, the model, retention per database and volume."""

from __future__ import annotations

import random
import re
import string
from datetime import UTC, datetime, timedelta

import pytest

from cloudops.catalog.models import RetentionPolicy
from cloudops.clouds.aws.snapshots import (
    CloudRetentionRefused,
    CloudSnapshot,
    as_retention_records,
    plan_cloud_snapshot_retention,
    rds_snapshot_identifier,
)
from cloudops.repository.retention import NEWEST_COMPLETE, RetentionInputError, RetentionRefused

pytestmark = pytest.mark.unit

# RDS: 1-255 ASCII letters, digits, hyphens; a letter first; no "--"; no hyphen last. Stored lower-case.
VALID_RDS_IDENTIFIER = re.compile(r"^[a-z](?!.*--)[a-z0-9-]{0,254}(?<!-)$")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("database", "backup_id", "expected"),
    [
        ("orders_pg", "20261123T021500Z-1a2b3c", "cloudops-orders-pg-20261123t021500z-1a2b3c"),
        ("inventory_mariadb", "nightly", "cloudops-inventory-mariadb-nightly"),
        ("a__b", "x--y", "cloudops-a-b-x-y"),
        ("db", "-run-", "cloudops-db-run"),
        ("9db", "2026.11.23 run #1", "cloudops-9db-2026-11-23-run-1"),
        ("Orders", "Über_Backup", "cloudops-orders-ber-backup"),
    ],
)
def test_rds_identifier(database: str, backup_id: str, expected: str) -> None:
    assert rds_snapshot_identifier(database, backup_id) == expected
    assert VALID_RDS_IDENTIFIER.match(expected)


@pytest.mark.parametrize(("database", "backup_id"), [("orders_pg", "---"), ("__", "20261123T021500Z-1a2b3c")])
def test_rds_identifier_needs_letters_or_digits(database: str, backup_id: str) -> None:
    with pytest.raises(ValueError, match="no letter or digit"):
        rds_snapshot_identifier(database, backup_id)


def test_long_rds_identifiers_are_cut_and_stay_distinct() -> None:
    database = "d" * 63
    first = rds_snapshot_identifier(database, "b" * 300 + "1")
    second = rds_snapshot_identifier(database, "b" * 300 + "2")
    assert len(first) == len(second) == 255
    assert first != second
    assert VALID_RDS_IDENTIFIER.match(first)
    assert VALID_RDS_IDENTIFIER.match(second)
    # Hyphens at the cut do not make a "--" or a trailing hyphen.
    cut = rds_snapshot_identifier(database, "-b" * 200)
    assert VALID_RDS_IDENTIFIER.match(cut), cut


def test_any_input_with_a_letter_or_digit_gives_a_valid_identifier() -> None:
    rng = random.Random(20261123)
    alphabet = string.ascii_letters + string.digits + "-_. :/+@" + "éß€"
    for _ in range(2000):
        database = "".join(rng.choices(alphabet, k=rng.randint(1, 80))) + "x"
        backup_id = rng.choice("abc123") + "".join(rng.choices(alphabet, k=rng.randint(0, 300)))
        identifier = rds_snapshot_identifier(database, backup_id)
        assert VALID_RDS_IDENTIFIER.match(identifier), (database, backup_id, identifier)


def snapshot(
    backup_id: str,
    age: timedelta,
    *,
    kind: str = "rds",
    target: str = "orders_pg",
    volume_id: str | None = None,
    status: str | None = None,
) -> CloudSnapshot:
    return CloudSnapshot(
        kind=kind,  # type: ignore[arg-type]
        snapshot_id=f"{kind}-{target}-{volume_id}-{backup_id}",
        backup_id=backup_id,
        created_at=NOW - age,
        status=status or ("available" if kind == "rds" else "completed"),
        target=target,
        instance_id="orders-pg" if kind == "rds" else None,
        volume_id=volume_id,
    )


def test_snapshot_times_are_aware_and_utc() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CloudSnapshot(
            kind="rds",
            snapshot_id="s",
            backup_id="b",
            created_at=datetime(2026, 11, 23),  # noqa: DTZ001 - the point of the test
            status="available",
            target="orders_pg",
        )
    with pytest.raises(ValueError, match="kind"):
        snapshot("b", timedelta(0), kind="gcs")


def test_retention_records_use_the_backup_id_the_time_and_the_status() -> None:
    records = as_retention_records(
        [snapshot("b1", timedelta(hours=1)), snapshot("b2", timedelta(0), status="creating")]
    )
    assert [(r.id, r.time, r.complete) for r in records] == [
        ("b1", NOW - timedelta(hours=1), True),
        ("b2", NOW, False),
    ]


def test_retention_is_planned_per_database_and_per_host_volume() -> None:
    snapshots = [
        *(snapshot(f"b{day}", timedelta(days=day)) for day in range(3)),
        *(snapshot(f"b{day}", timedelta(days=day), target="inventory_mariadb") for day in range(2)),
        *(
            snapshot(f"b{day}", timedelta(days=day), kind="ebs", target="web-1", volume_id="vol-1")
            for day in range(3)
        ),
        *(
            snapshot(f"b{day}", timedelta(days=day), kind="ebs", target="web-1", volume_id="vol-2")
            for day in range(2)
        ),
    ]
    plans = plan_cloud_snapshot_retention(
        snapshots, RetentionPolicy(keep_last=1), now=NOW, max_delete_share=1.0
    )
    by_group = {plan.group: plan for plan in plans}
    assert list(by_group) == [
        "ebs snapshots of host web-1 volume vol-1",
        "ebs snapshots of host web-1 volume vol-2",
        "rds snapshots of database inventory_mariadb",
        "rds snapshots of database orders_pg",
    ]
    orders = by_group["rds snapshots of database orders_pg"]
    assert orders.plan.keep == ["b0"]
    assert orders.plan.delete == ["b1", "b2"]
    assert [s.snapshot_id for s in orders.to_delete] == ["rds-orders_pg-None-b1", "rds-orders_pg-None-b2"]
    assert by_group["ebs snapshots of host web-1 volume vol-2"].plan.delete == ["b1"]
    assert all(s.volume_id == "vol-1" for s in by_group["ebs snapshots of host web-1 volume vol-1"].to_delete)


def test_the_backups_safety_rules_apply() -> None:
    # The policy keeps nothing here: the newest complete snapshot is held anyway, and so is an incomplete
    # one younger than the grace period.
    snapshots = [
        snapshot("old", timedelta(days=3)),
        snapshot("newer", timedelta(days=2)),
        snapshot("running", timedelta(hours=1), status="creating"),
    ]
    [result] = plan_cloud_snapshot_retention(
        snapshots, RetentionPolicy(keep_tags=[["gold"]]), now=NOW, max_delete_share=1.0
    )
    assert result.plan.keep == ["running", "newer"]
    assert result.plan.reasons["newer"] == [NEWEST_COMPLETE]
    assert result.plan.delete == ["old"]


def test_a_refused_plan_names_its_group() -> None:
    snapshots = [
        snapshot(f"b{day}", timedelta(days=day), kind="ebs", target="app-2", volume_id="vol-9")
        for day in range(4)
    ]
    with pytest.raises(
        CloudRetentionRefused, match=r"^ebs snapshots of host app-2 volume vol-9: refusing"
    ) as raised:
        plan_cloud_snapshot_retention(snapshots, RetentionPolicy(keep_last=1), now=NOW)
    assert isinstance(raised.value, RetentionRefused)
    assert raised.value.would_delete == 3
    assert raised.value.limit == 2
    assert raised.value.plan.delete == ["b1", "b2", "b3"]
    plans = plan_cloud_snapshot_retention(
        snapshots, RetentionPolicy(keep_last=1), now=NOW, allow_large_delete=True
    )
    assert plans[0].plan.delete == ["b1", "b2", "b3"]


def test_two_snapshots_of_one_backup_in_one_group_are_refused() -> None:
    twins = [snapshot("b1", timedelta(days=1)), snapshot("b1", timedelta(days=2))]
    with pytest.raises(RetentionInputError, match="b1"):
        plan_cloud_snapshot_retention(twins, RetentionPolicy(keep_last=5), now=NOW)


def test_cost_tags_name_the_runbook_the_run_and_who_asked_in_values_aws_accepts() -> None:
    from cloudops.clouds.aws.snapshots import cost_tags, current_cost_tags

    assert cost_tags(
        dag_id="backup__orders_pg", run_id="scheduled__2026-12-01T02:15:00+00:00", requested_by=None
    ) == {
        "runbook": "backup",
        "run_id": "scheduled__2026-12-01T02:15:00+00:00",
        "requested_by": "schedule",
    }
    odd = cost_tags(
        dag_id="restore_request__orders_pg", run_id="manual__x", requested_by='ana "<b>" ' + "x" * 300
    )
    assert odd["requested_by"].startswith("ana __b__ x")
    assert len(odd["requested_by"]) == 256
    assert current_cost_tags() == {}  # outside a running task: no cost tags, the cloudops tags only
