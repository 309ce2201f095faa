"""A small ledger of runbook runs of several kinds, written through the real Ledger, for the evidence views.

Three days (2026-11-20 to 2026-11-22), three runbook kinds, three targets:

- ``backup__orders_pg`` scheduled on the 20th: succeeded, took backup ``BACKUP_ID`` (two objects);
- ``backup__billing_maria`` scheduled on the 21st: failed on its second try, with an error carrying
  HTML (``HOSTILE``) that every page must escape;
- ``restore_drill__orders_pg`` triggered by ``TRIGGERER`` on the 22nd: passed, RTO/RPO and checks,
  an approval by ``APPROVER``;
- ``health_check__estate`` scheduled on the 22nd: succeeded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cloudops.evidence.ledger import Ledger

BACKUP_ID = "orders_pg-20261120T021500Z-7f3a"
CHECKSUMS = (
    "3f1e9b4c2d7a8e6f5b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6",
    "9a8b7c6d5e4f30211203f4e5d6c7b8a9f0e1d2c3b4a5968778695a4b3c2d1e0f",
)
TRIGGERER = "carol.ops"
APPROVER = "dave.lead"
HOSTILE = '<img src=x onerror="alert(1)">'
DRILL_RUN_ID = "manual__2026-11-22T09:30:00+00:00"


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def _run(dag_id: str, run_id: str) -> dict[str, object]:
    runbook, _, target = dag_id.partition("__")
    return {"dag_id": dag_id, "run_id": run_id, "runbook": runbook, "target": target}


def _step(
    ledger: Ledger,
    run: dict[str, object],
    task_id: str,
    day: int,
    hour: int,
    *,
    state: str = "success",
    **extra: object,
) -> None:
    try_number = extra.pop("try_number", 1)
    ledger.append(
        "step.try",
        at=_at(day, hour, 5),
        task_id=task_id,
        map_index=-1,
        try_number=try_number,
        **run,
        data={
            "state": state,
            "error": extra.get("error"),
            "started_at": _at(day, hour, 1).isoformat(),
            "finished_at": _at(day, hour, 5).isoformat(),
            "duration_seconds": 240.0,
            "hostname": "worker-1",
        },
    )


def _started(ledger: Ledger, run: dict[str, object], day: int, hour: int, **who: object) -> None:
    data = {"run_type": "scheduled", "triggered_by": "timetable", "triggered_by_user": None, "conf": {}}
    ledger.append("run.started", at=_at(day, hour), **run, data={**data, **who})


def _finished(ledger: Ledger, run: dict[str, object], day: int, hour: int, state: str) -> None:
    ledger.append(
        "run.finished",
        at=_at(day, hour, 10),
        **run,
        data={
            "state": state,
            "started_at": _at(day, hour).isoformat(),
            "finished_at": _at(day, hour, 10).isoformat(),
        },
    )


def write_sample_ledger(directory: Path) -> Ledger:
    """Write the sample runs into a new ledger in ``directory``; return it."""
    ledger = Ledger(directory, fsync=False)

    backup = _run("backup__orders_pg", "scheduled__2026-11-20T02:15:00+00:00")
    _started(ledger, backup, 20, 2)
    _step(ledger, backup, "take_backup", 20, 2)
    ledger.append(
        "backup.taken",
        at=_at(20, 2, 6),
        task_id="take_backup",
        **backup,
        data={
            "estate": "sandbox",
            "database": "orders_pg",
            "engine": "postgres",
            "method": "pg_dump",
            "backup_id": BACKUP_ID,
            "bucket": "cloudops-backups",
            "manifest_key": f"orders_pg/{BACKUP_ID}/manifest.json",
            "size_bytes": 1048576,
            "objects": [
                {"name": "orders.dump.zst", "size": 1040000, "sha256": CHECKSUMS[0]},
                {"name": "globals.sql.zst", "size": 8576, "sha256": CHECKSUMS[1]},
            ],
            "locked_until": "2026-12-20T02:15:00Z",
        },
    )
    _finished(ledger, backup, 20, 2, "success")

    failed = _run("backup__billing_maria", "scheduled__2026-11-21T02:15:00+00:00")
    _started(ledger, failed, 21, 2)
    _step(ledger, failed, "take_backup", 21, 2, state="failed", error=f"dump failed: {HOSTILE}")
    _step(ledger, failed, "take_backup", 21, 3, state="failed", error="dump failed again", try_number=2)
    _finished(ledger, failed, 21, 3, "failed")

    drill = _run("restore_drill__orders_pg", DRILL_RUN_ID)
    _started(
        ledger,
        drill,
        22,
        9,
        run_type="manual",
        triggered_by="ui",
        triggered_by_user=TRIGGERER,
        conf={"backup_id": BACKUP_ID, "reason": "quarterly drill"},
    )
    ledger.append(
        "approval",
        at=_at(22, 9, 2),
        task_id="approve_drill",
        **drill,
        data={
            "subject": "Restore drill of orders_pg",
            "decision": "Approve",
            "approver": APPROVER,
            "requested_by": TRIGGERER,
            "responded_at": "2026-11-22T09:02:00Z",
            "accepted": True,
        },
    )
    _step(ledger, drill, "restore_scratch", 22, 9)
    ledger.append(
        "drill.recorded",
        at=_at(22, 9, 8),
        task_id="record_drill",
        **drill,
        data={
            "estate": "sandbox",
            "database": "orders_pg",
            "backup_id": BACKUP_ID,
            "passed": True,
            "rto_seconds": 312,
            "rpo_seconds": 25200,
            "rto_target_seconds": 1800,
            "rpo_target_seconds": 86400,
            "targets_met": True,
            "checksums_verified": True,
            "checks": [
                {"name": "row_count_orders", "passed": True, "expected": 1200, "observed": 1200},
                {"name": "latest_order_age", "passed": True, "expected": "< 1 day", "observed": "7 h"},
            ],
            "record_uri": "s3://cloudops-drills/orders_pg/2026-11-22.json",
        },
    )
    _finished(ledger, drill, 22, 9, "success")

    health = _run("health_check__estate", "scheduled__2026-11-22T12:00:00+00:00")
    _started(ledger, health, 22, 12)
    _step(ledger, health, "check_estate", 22, 12)
    _finished(ledger, health, 22, 12, "success")
    return ledger


__all__ = [
    "APPROVER",
    "BACKUP_ID",
    "CHECKSUMS",
    "DRILL_RUN_ID",
    "HOSTILE",
    "TRIGGERER",
    "write_sample_ledger",
]
