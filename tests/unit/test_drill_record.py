"""The drill record: derived verdicts, the task log table and the JSON that is kept as evidence."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from cloudops.restore.record import Check, DrillRecord, ObjectChecksum, largest_backup_gap

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
        # Daily backups for the last 30 days.
        "largest_backup_gap_seconds": 86400.0,
        "complete_backups_in_window": 30,
        "started_at": STARTED,
        "finished_at": STARTED + timedelta(seconds=55),
    }
    return DrillRecord(**{**fields, **changes})


def test_verdicts_are_derived() -> None:
    drill = record()
    assert drill.rto_seconds == 50.0
    assert drill.backup_age_seconds == 3 * 3600
    assert drill.rpo_seconds == 86400, "the exposure is the larger of the age and the largest gap"
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
    assert (
        "1d (larger of backup age 3h and largest gap 1d between 30 complete backup(s) in 30 days); " in table
    )
    assert "target 1d: met" in table
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


HOUR = 3600.0


def test_daily_backups_miss_a_one_hour_rpo_even_right_after_a_backup() -> None:
    just_after = record(
        rpo_target_seconds=HOUR,
        started_at=BACKUP_TIME + timedelta(minutes=5),
        finished_at=BACKUP_TIME + timedelta(minutes=6),
    )
    assert just_after.backup_age_seconds == 300
    assert just_after.rpo_seconds == 24 * HOUR
    assert not just_after.targets_met
    assert "target 1h: MISSED" in just_after.to_table()
    assert record(rpo_target_seconds=HOUR, largest_backup_gap_seconds=HOUR / 2).targets_met is False, (
        "an old backup (3 h) still misses the target when the gaps are small"
    )
    assert record(
        rpo_target_seconds=HOUR,
        largest_backup_gap_seconds=HOUR / 2,
        started_at=BACKUP_TIME + timedelta(minutes=20),
        finished_at=BACKUP_TIME + timedelta(minutes=21),
    ).targets_met


def test_an_unread_listing_does_not_prove_the_rpo() -> None:
    unread = record(largest_backup_gap_seconds=None, complete_backups_in_window=None)
    assert not unread.targets_met
    assert "backup gap not measured" in unread.to_table()
    # One backup only: no gap to measure, the age is the exposure.
    single = record(largest_backup_gap_seconds=None, complete_backups_in_window=1)
    assert single.targets_met
    assert single.rpo_seconds == 3 * HOUR
    assert "no gap measured: 1 complete backup(s) in 30 days" in single.to_table()


def test_a_version_2_record_still_loads_with_the_age_as_its_exposure() -> None:
    data = json.loads(record().to_json())
    for key in ("largest_backup_gap_seconds", "complete_backups_in_window", "backup_gap_window_days"):
        del data[key]
    data["record_version"] = 2
    old = DrillRecord.from_json(json.dumps(data))
    assert old.rpo_seconds == 3 * HOUR
    assert old.targets_met


UNTIL = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_the_largest_gap_between_consecutive_backups() -> None:
    times = [UNTIL - timedelta(hours=h) for h in (1, 25, 26, 74, 98)]
    gap = largest_backup_gap(reversed(times), until=UNTIL)
    assert gap.seconds == 48 * HOUR
    assert gap.backups == 5
    assert gap.between == (UNTIL - timedelta(hours=74), UNTIL - timedelta(hours=26))


def test_the_gap_reaches_back_to_the_last_backup_before_the_window() -> None:
    times = [UNTIL - timedelta(days=40), UNTIL - timedelta(days=2), UNTIL - timedelta(days=1)]
    gap = largest_backup_gap(times, until=UNTIL)
    assert gap.seconds == 38 * 24 * HOUR
    assert gap.backups == 2
    # Older backups than that one do not matter.
    assert largest_backup_gap([UNTIL - timedelta(days=50), *times], until=UNTIL) == gap


def test_no_gap_without_two_backups_and_later_backups_are_ignored() -> None:
    assert largest_backup_gap([], until=UNTIL).seconds is None
    only = largest_backup_gap([UNTIL - timedelta(hours=3), UNTIL + timedelta(hours=1)], until=UNTIL)
    assert only.seconds is None
    assert only.backups == 1
    same = largest_backup_gap([UNTIL - timedelta(hours=3)] * 2, until=UNTIL)
    assert same.seconds is None, "the same backup listed twice is one backup"
