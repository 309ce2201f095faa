"""RDS restore drills without a cloud: scratch instance names, the guard, the choice of the snapshot, the
checks of the restored instance, the bounded wait, and the RDS part of the drill record."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloudops.clouds.aws.rds import (
    TAG_DRILL,
    choose_rds_snapshot,
    is_rds_drill_instance_of,
    pending_backup_snapshot,
    rds_drill_checks,
    rds_drill_instance_name,
    refuse_unless_rds_drill_instance,
    snapshot_facts,
    wait_for_instance,
)
from cloudops.errors import CloudOpsError, RestoreRefused
from cloudops.restore.record import Check, DrillRecord, ObjectChecksum, RdsDrill

pytestmark = pytest.mark.unit

# RDS instance identifiers: 1-63 letters, digits, hyphens; a letter first; no "--"; no hyphen last.
VALID_INSTANCE_IDENTIFIER = re.compile(r"^[a-z](?!.*--)[a-z0-9-]{0,62}(?<!-)$")
T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
BACKUP = "20261123T021500Z-1a2b3c"


@pytest.mark.parametrize(
    "database", ["orders_pg", "a", "x__y", "db9", "a" * 63, "orders_" + "long_" * 11 + "name"]
)
@pytest.mark.parametrize("run_id", ["scheduled__2026-11-23T02:15:00+00:00", "manual__ü é/#", "r"])
def test_scratch_instance_name_is_a_valid_identifier_of_its_database(database: str, run_id: str) -> None:
    name = rds_drill_instance_name(database, run_id)

    assert VALID_INSTANCE_IDENTIFIER.match(name), name
    assert name.startswith("cloudops-drill-")
    assert is_rds_drill_instance_of(name, database)
    assert rds_drill_instance_name(database, run_id) == name, "a retry of the run finds its own"


def test_scratch_instance_names_differ_per_run_and_per_database() -> None:
    assert rds_drill_instance_name("orders_pg", "run-1") != rds_drill_instance_name("orders_pg", "run-2")
    long_a, long_b = "orders_" + "x" * 50 + "_a", "orders_" + "x" * 50 + "_b"
    assert rds_drill_instance_name(long_a, "r") != rds_drill_instance_name(long_b, "r")
    assert rds_drill_instance_name("orders_pg", "run-1").startswith("cloudops-drill-orders-pg-")


def test_scratch_instance_name_needs_a_run_id() -> None:
    with pytest.raises(ValueError, match="run_id"):
        rds_drill_instance_name("orders_pg", "")


def test_ownership_by_name_is_exact() -> None:
    name = rds_drill_instance_name("orders_pg", "run-1")

    assert not is_rds_drill_instance_of(name, "orders")
    assert not is_rds_drill_instance_of("orders-pg", "orders_pg")
    assert not is_rds_drill_instance_of(name + "0", "orders_pg")
    assert not is_rds_drill_instance_of("cloudops-drill-orders-pg-not-a-hash", "orders_pg")


def test_guard_names_every_reason_to_refuse() -> None:
    name = rds_drill_instance_name("orders_pg", "run-1")
    tags = {TAG_DRILL: "orders_pg", "cloudops:estate": "prod"}
    refuse_unless_rds_drill_instance(name, tags, database="orders_pg", estate="prod", action="delete")

    with pytest.raises(RestoreRefused, match=r"refusing to delete RDS instance 'orders-pg': its name is not"):
        refuse_unless_rds_drill_instance(
            "orders-pg", tags, database="orders_pg", estate="prod", action="delete"
        )
    with pytest.raises(RestoreRefused, match=r"cloudops:drill is None, not 'orders_pg'"):
        refuse_unless_rds_drill_instance(name, {}, database="orders_pg", estate="prod", action="delete")
    with pytest.raises(RestoreRefused, match=r"cloudops:estate is 'prod', not 'staging'"):
        refuse_unless_rds_drill_instance(name, tags, database="orders_pg", estate="staging", action="delete")


def snapshot(
    identifier: str,
    *,
    hours: int,
    status: str = "available",
    backup_id: str | None = None,
    database: str = "orders_pg",
    instance: str = "orders-pg",
    kind: str = "manual",
) -> dict[str, Any]:
    tags = {"cloudops:backup-id": backup_id, "cloudops:database": database} if backup_id else {}
    return {
        "DBSnapshotIdentifier": identifier,
        "DBInstanceIdentifier": instance,
        "Status": status,
        "SnapshotType": kind,
        "SnapshotCreateTime": T0 + timedelta(hours=hours),
        "Engine": "postgres",
        "EngineVersion": "15.7",
        "AllocatedStorage": 20,
        "TagList": [{"Key": k, "Value": v} for k, v in tags.items()],
    }


def choose(snapshots: list[dict[str, Any]], backup_id: str = BACKUP) -> Any:
    return choose_rds_snapshot(snapshots, instance_id="orders-pg", database="orders_pg", backup_id=backup_id)


def test_the_backups_own_snapshot_is_chosen_over_newer_ones() -> None:
    chosen = choose(
        [
            snapshot("mine", hours=1, backup_id=BACKUP),
            snapshot("newer", hours=5, backup_id="20261124T021500Z-000000"),
            snapshot("rds:orders-pg-auto", hours=6, kind="automated"),
        ]
    )

    assert chosen.snapshot_id == "mine"
    assert chosen.of_backup
    assert chosen.reason == f"snapshot mine is the one of backup {BACKUP} (tagged cloudops:backup-id)"


@pytest.mark.parametrize(
    ("snapshots", "why"),
    [
        (
            [snapshot("auto", hours=2, kind="automated"), snapshot("older", hours=1)],
            f"no snapshot of orders-pg is tagged with backup {BACKUP}",
        ),
        (
            [snapshot("mine", hours=3, status="creating", backup_id=BACKUP), snapshot("auto", hours=2)],
            f"the snapshot of backup {BACKUP} (mine) is 'creating'",
        ),
        (
            # tagged with the backup, but of another database or another instance: not the backup's own
            [
                snapshot("other-db", hours=4, backup_id=BACKUP, database="billing"),
                snapshot("other-instance", hours=5, backup_id=BACKUP, instance="billing-pg"),
                snapshot("auto", hours=2),
            ],
            f"no snapshot of orders-pg is tagged with backup {BACKUP}",
        ),
    ],
)
def test_otherwise_the_newest_available_snapshot_of_the_instance_is_chosen_and_said(
    snapshots: list[dict[str, Any]], why: str
) -> None:
    chosen = choose(snapshots)

    assert not chosen.of_backup
    assert chosen.reason.startswith(f"{why}: drilling the newest available snapshot of orders-pg instead, ")
    assert chosen.snapshot_id in chosen.reason
    assert chosen.snapshot_id != "other-instance"
    assert chosen.snapshot["DBInstanceIdentifier"] == "orders-pg"


def test_a_backup_snapshot_still_being_created_is_found_to_wait_for() -> None:
    creating = snapshot("mine", hours=3, status="creating", backup_id=BACKUP)

    pending = pending_backup_snapshot(
        [creating, snapshot("auto", hours=2)], instance_id="orders-pg", database="orders_pg", backup_id=BACKUP
    )

    assert pending is not None
    assert (pending.snapshot_id, pending.status) == ("mine", "creating")
    for done in ("available", "failed"):
        finished = snapshot("mine", hours=3, status=done, backup_id=BACKUP)
        assert (
            pending_backup_snapshot(
                [finished], instance_id="orders-pg", database="orders_pg", backup_id=BACKUP
            )
            is None
        )


def test_no_available_snapshot_at_all_is_an_error_that_says_why() -> None:
    with pytest.raises(
        CloudOpsError, match=r"is 'creating', and RDS instance 'orders-pg' has no other available"
    ):
        choose([snapshot("mine", hours=1, status="creating", backup_id=BACKUP)])
    with pytest.raises(CloudOpsError, match="nothing to drill"):
        choose([])


def restored_instance(**changes: Any) -> dict[str, Any]:
    return {
        "DBInstanceIdentifier": "cloudops-drill-orders-pg-0123456789",
        "DBInstanceStatus": "available",
        "Engine": "postgres",
        "EngineVersion": "15.7",
        "AllocatedStorage": 20,
        "Endpoint": {"Address": "x.eu-west-1.rds.amazonaws.com", "Port": 5432},
        **changes,
    }


FACTS = snapshot_facts(snapshot("mine", hours=1, backup_id=BACKUP))


def test_a_faithful_restore_passes_every_check() -> None:
    checks = rds_drill_checks(restored_instance(AllocatedStorage=30), FACTS)

    assert [c.name for c in checks] == [
        "rds status",
        "rds engine",
        "rds engine version",
        "rds endpoint",
        "rds allocated storage",
    ]
    assert all(c.passed for c in checks)
    assert checks[3].observed == "x.eu-west-1.rds.amazonaws.com:5432"


@pytest.mark.parametrize(
    ("changes", "failing"),
    [
        ({"DBInstanceStatus": "storage-full"}, "rds status"),
        ({"Engine": "mysql"}, "rds engine"),
        ({"EngineVersion": "16.1"}, "rds engine version"),
        ({"Endpoint": None}, "rds endpoint"),
        ({"Endpoint": {"Address": "x"}}, "rds endpoint"),
        ({"AllocatedStorage": 10}, "rds allocated storage"),
        ({"AllocatedStorage": None}, "rds allocated storage"),
    ],
)
def test_each_difference_fails_its_own_check(changes: Mapping[str, Any], failing: str) -> None:
    checks = rds_drill_checks(restored_instance(**changes), FACTS)

    assert [c.name for c in checks if not c.passed] == [failing]


def test_a_missing_instance_is_one_failed_check() -> None:
    (check,) = rds_drill_checks(None, FACTS)

    assert check.name == "rds instance exists"
    assert not check.passed


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def wait(statuses: list[str | None], timeout: timedelta = timedelta(minutes=5)) -> tuple[Any, FakeClock]:
    clock, answers = FakeClock(), iter(statuses)

    def describe() -> dict[str, Any] | None:
        status = next(answers)
        return None if status is None else restored_instance(DBInstanceStatus=status)

    result = wait_for_instance(
        describe,
        "cloudops-drill-orders-pg-0123456789",
        timeout=timeout,
        poll_interval=timedelta(seconds=30),
        clock=clock,
        sleep=clock.sleep,
    )
    return result, clock


def test_wait_returns_once_available() -> None:
    result, clock = wait(["creating", "backing-up", "available"])

    assert result["DBInstanceStatus"] == "available"
    assert clock.sleeps == [30, 30]


def test_wait_is_bounded_and_names_the_instance() -> None:
    clock = FakeClock()
    with pytest.raises(
        CloudOpsError,
        match=r"^gave up waiting for scratch RDS instance 'cloudops-drill-orders-pg-0123456789' after "
        r"1m10s \(4 polls\): it is still 'creating'\. teardown_rds deletes it",
    ):
        wait_for_instance(
            lambda: restored_instance(DBInstanceStatus="creating"),
            "cloudops-drill-orders-pg-0123456789",
            timeout=timedelta(seconds=70),
            poll_interval=timedelta(seconds=30),
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.sleeps == [30, 30, 10], "no sleep reaches past the deadline"


@pytest.mark.parametrize(
    ("statuses", "message"),
    [
        (["creating", "incompatible-restore"], "is 'incompatible-restore': the restore failed"),
        (["creating", None], "disappeared while being restored"),
    ],
)
def test_wait_stops_on_a_failed_or_vanished_instance(statuses: list[str | None], message: str) -> None:
    with pytest.raises(CloudOpsError, match=message):
        wait(statuses)


def drill_record(**changes: Any) -> DrillRecord:
    fields: dict[str, Any] = {
        "estate": "sandbox",
        "database": "orders_pg",
        "engine": "postgres",
        "backup_id": BACKUP,
        "backup_time": T0,
        "run_id": "scheduled__2026-11-23T02:15:00+00:00",
        "scratch_target": "drill_orders_pg_1a2b3c4d5e",
        "checksums": [ObjectChecksum(object="orders.pgdump.zst", sha256="ab" * 32, ok=True)],
        "checks": [Check(name="rows public.orders", passed=True, expected=3, observed=3)],
        "restore_seconds": 40.0,
        "validation_seconds": 5.0,
        "started_at": T0 + timedelta(hours=1),
        "finished_at": T0 + timedelta(hours=2),
    }
    return DrillRecord(**{**fields, **changes})


def rds_part(**changes: Any) -> RdsDrill:
    fields: dict[str, Any] = {
        "instance_id": "orders-pg",
        "snapshot_id": "cloudops-orders-pg-20261123t021500z-1a2b3c",
        "snapshot_choice": "the backup's own",
        "scratch_instance": "cloudops-drill-orders-pg-0123456789",
        "checks": rds_drill_checks(restored_instance(), FACTS),
        "restore_seconds": 600.0,
    }
    return RdsDrill(**{**fields, **changes})


def test_a_version_1_record_without_rds_still_loads() -> None:
    stored = json.loads(drill_record().to_json())
    stored["record_version"] = 1
    del stored["rds"]

    loaded = DrillRecord.from_json(json.dumps(stored))

    assert loaded.rds is None
    assert loaded.passed
    assert loaded.record_version == 1


def test_the_rds_part_round_trips_and_decides_the_verdict() -> None:
    passing = drill_record(rds=rds_part())
    assert passing.passed
    assert DrillRecord.from_json(passing.to_json()) == passing
    table = passing.to_table()
    assert "RDS scratch     cloudops-drill-orders-pg-0123456789, available after 10m: PASSED" in table
    assert (
        "RDS snapshot    cloudops-orders-pg-20261123t021500z-1a2b3c of orders-pg: the backup's own" in table
    )
    assert "rds engine version" in table

    failed_check = drill_record(
        rds=rds_part(checks=rds_drill_checks(restored_instance(EngineVersion="16.1"), FACTS))
    )
    assert not failed_check.passed
    assert [c.name for c in failed_check.failed_checks] == ["rds engine version"]

    stopped = drill_record(rds=rds_part(snapshot_id=None, checks=[], error="step(s) restore_rds failed"))
    assert not stopped.passed
    assert "RDS error       step(s) restore_rds failed" in stopped.to_table()
    assert "(no RDS check ran)" in stopped.to_table()


def test_a_cleanup_failure_is_shown_but_does_not_judge_the_backup() -> None:
    drill = drill_record(rds=rds_part(cleanup_error="teardown_rds failed: delete it"))

    assert drill.passed
    assert "RDS cleanup     teardown_rds failed: delete it" in drill.to_table()
