"""The drill record: derived verdicts, the task log table and the JSON that is kept as evidence."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from cloudops.restore.record import Check, DrillRecord, ObjectChecksum

pytestmark = pytest.mark.unit

BACKUP_TIME = datetime(2026, 11, 23, 2, 15, tzinfo=UTC)
STARTED = BACKUP_TIME + timedelta(hours=3)
SHA = "ab" * 32


def record(**changes: Any) -> DrillRecord:
    fields: dict[str, Any] = {
        "estate": "sandbox",
        "database": "orders_pg",
        "engine": "postgres",
        "backup_id": "20261123T021500Z-1a2b3c",
        "backup_time": BACKUP_TIME,
        "run_id": "scheduled__2026-11-23T02:15:00+00:00",
        "scratch_target": "drill_orders_pg_1a2b3c4d5e",
        "checksums": [ObjectChecksum(object="orders.pgdump.zst", sha256=SHA, ok=True)],
        "checks": [
            Check(name="schema fingerprint", passed=True, expected="f" * 64, observed="f" * 64),
            Check(name="rows public.orders", passed=True, expected=300000, observed=300000),
            Check(
                name="public.orders: column_values_to_be_unique(order_id)",
                passed=True,
                expected="every row",
                observed=0,
                detail="0 of 300000 row(s) unexpected",
            ),
        ],
        "restore_seconds": 42.5,
        "validation_seconds": 7.5,
        "rto_target_seconds": 3600,
        "rpo_target_seconds": 86400,
        "started_at": STARTED,
        "finished_at": STARTED + timedelta(seconds=55),
    }
    return DrillRecord(**{**fields, **changes})


def test_verdicts_are_derived() -> None:
    drill = record()
    assert drill.rto_seconds == 50.0
    assert drill.rpo_seconds == 3 * 3600
    assert drill.passed
    assert drill.targets_met


def test_a_failed_check_or_checksum_fails_the_drill() -> None:
    failed = Check(name="rows public.orders", passed=False, expected=300000, observed=299999)
    assert not record(checks=[failed]).passed
    assert record(checks=[failed]).failed_checks == [failed]
    assert not record(checksums=[ObjectChecksum(object="orders.pgdump.zst", sha256=SHA, ok=False)]).passed
    assert not record(checks=[]).passed, "a drill that checked nothing did not pass"
    assert not record(error="object 'orders.pgdump.zst' is missing").passed


def test_targets_missed_are_reported_apart_from_the_checks() -> None:
    slow = record(restore_seconds=4000.0)
    assert slow.passed
    assert not slow.targets_met
    stale = record(
        started_at=BACKUP_TIME + timedelta(days=2), finished_at=BACKUP_TIME + timedelta(days=2, hours=1)
    )
    assert not stale.targets_met
    assert record(rto_target_seconds=None, rpo_target_seconds=None).targets_met
    # A drill that stopped before validating has no RTO: a target cannot be met then.
    assert not record(validation_seconds=None, error="restore failed").targets_met


def test_the_table_shows_everything_an_auditor_asks_for() -> None:
    table = record(restore_seconds=4000.0).to_table()
    lines = table.splitlines()
    assert lines[0] == "Restore drill of sandbox/orders_pg (postgres): PASSED, TARGETS MISSED"
    assert "20261123T021500Z-1a2b3c, taken 2026-11-23T02:15:00Z" in table
    assert "drill_orders_pg_1a2b3c4d5e" in table
    assert "target 1h: MISSED" in table
    assert "3h (backup age at drill time); target 1d: met" in table
    assert f"orders.pgdump.zst  {SHA}  yes" in table
    check_line = next(line for line in lines if line.startswith("public.orders: column_values_to_be_unique"))
    assert check_line.split()[2:4] == ["pass", "every"]
    assert "0 of 300000 row(s) unexpected" in check_line
    # Long values are cut in the table (the JSON keeps them whole); columns stay aligned.
    assert "f" * 64 not in table
    header = next(line for line in lines if line.startswith("check "))
    assert header.index("result") == check_line.index("pass")


def test_an_early_failure_still_renders() -> None:
    drill = record(
        checksums=[ObjectChecksum(object="orders.pgdump.zst", sha256="cd" * 32, ok=False)],
        checks=[],
        restore_seconds=None,
        validation_seconds=None,
        error="object 'orders.pgdump.zst' has SHA-256 cdcd..., the manifest says abab...",
    )
    table = drill.to_table()
    assert "FAILED" in table.splitlines()[0]
    assert "not measured" in table
    assert "(no check ran)" in table
    assert "error           object 'orders.pgdump.zst'" in table


def test_json_round_trip_recomputes_the_verdicts() -> None:
    drill = record()
    data = json.loads(drill.to_json())
    assert data["passed"] is True
    assert data["rto_seconds"] == 50.0
    assert data["backup_time"] == "2026-11-23T02:15:00Z"
    assert DrillRecord.from_json(drill.to_json()) == drill
    # A record edited to claim success is judged again from its contents.
    data["checks"][0]["passed"] = False
    assert DrillRecord.from_json(json.dumps(data)).passed is False


def test_times_must_be_aware_and_in_order() -> None:
    with pytest.raises(ValidationError):
        record(backup_time=datetime(2026, 11, 23, 2, 15))  # noqa: DTZ001
    with pytest.raises(ValidationError, match="finished_at is before started_at"):
        record(finished_at=STARTED - timedelta(seconds=1))
