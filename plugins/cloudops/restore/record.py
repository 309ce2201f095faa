"""The record of a restore drill: what was restored, what was checked, how long it took, and the verdict.

A drill's record is its evidence: printed as a table in the task log, stored as JSON next to the backup
and collected for audits. The verdicts are derived, never set: ``passed`` (every object's SHA-256 matched
and every check passed, the RDS part's included), ``targets_met`` (RTO and RPO within the catalog's
targets), ``rto_seconds`` (restore plus validation) and ``rpo_seconds``: the data loss exposure, the
larger of the backup's age when the drill started (``backup_age_seconds``) and the largest gap between
consecutive complete backups over the last 30 days (``largest_backup_gap_seconds``, measured from the
repository listing by :func:`largest_backup_gap`). An ``on_backup`` drill runs minutes after its
backup, so the age alone would let daily backups meet a 1 h RPO; the gap does not. Pure: no I/O.

Version 2 added the optional ``rds`` part (the restore of the backup's RDS snapshot into a scratch
instance); version 3 the backup gap. Older records, without them, still load (their exposure is the age).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    computed_field,
    field_validator,
    model_validator,
)

from cloudops.catalog.models import render_duration
from cloudops.health import render_table

RECORD_VERSION = 3
# How far back the gap between consecutive complete backups is measured.
BACKUP_GAP_WINDOW = timedelta(days=30)
_CELL = 48  # the widest a value may be in the table; JSON keeps it whole
_COMPUTED = ("rto_seconds", "rpo_seconds", "backup_age_seconds", "targets_met", "passed")


class _RecordModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Check(_RecordModel):
    """One comparison of the restored database with what it should be.

    :param name: what was checked (``rows public.orders``,
        ``public.orders: column_values_to_be_unique(order_id)``).
    :param expected: the value or rule it should meet (JSON).
    :param observed: what the restored database showed (JSON); None when it could not be measured.
    :param detail: why it failed, or how it was measured; never holds a password.
    """

    name: Annotated[str, StringConstraints(min_length=1)]
    passed: bool
    expected: JsonValue = None
    observed: JsonValue = None
    detail: str = ""


class ObjectChecksum(_RecordModel):
    """One backup object whose SHA-256 was recomputed while it was downloaded."""

    object: Annotated[str, StringConstraints(min_length=1)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    ok: bool


class RdsDrill(_RecordModel):
    """The restore of the backup's RDS snapshot into a scratch instance, checked through the RDS API.

    :param instance_id: the RDS instance the snapshot is of (the catalog's ``rds_instance_id``).
    :param snapshot_id: the DB snapshot restored; None when none was chosen.
    :param snapshot_choice: why that snapshot: the backup's own, or the newest one as a fallback.
    :param scratch_instance: the instance it was restored into (named after the run).
    :param checks: status, engine and version, endpoint, allocated storage.
    :param restore_seconds: from choosing the snapshot until the scratch instance was available.
    :param error: why the RDS part stopped before its checks ran.
    :param cleanup_error: the scratch instance could not be deleted; the backup's verdict stands, but the
        run fails so that someone deletes it.
    """

    instance_id: Annotated[str, StringConstraints(min_length=1)]
    snapshot_id: str | None = None
    snapshot_choice: str = ""
    scratch_instance: Annotated[str, StringConstraints(min_length=1)]
    checks: list[Check] = Field(default_factory=list)
    restore_seconds: Annotated[float, Field(ge=0)] | None = None
    error: str | None = None
    cleanup_error: str | None = None

    @property
    def passed(self) -> bool:
        """The snapshot restored and every check ran and passed."""
        return self.error is None and bool(self.checks) and all(check.passed for check in self.checks)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


@dataclass(frozen=True)
class BackupGap:
    """The largest gap between consecutive complete backups over a window.

    :param seconds: the largest gap; None when fewer than two backups bound a gap.
    :param backups: the complete backups taken in the window.
    :param since: the window's start.
    :param between: the backups (times) that bound the largest gap.
    """

    seconds: float | None
    backups: int
    since: datetime
    between: tuple[datetime, datetime] | None = None


def largest_backup_gap(
    backup_times: Iterable[datetime], *, until: datetime, window: timedelta = BACKUP_GAP_WINDOW
) -> BackupGap:
    """Measure the largest gap between consecutive complete backups taken in ``(until - window, until]``.

    The newest backup before the window counts too, as the start of the window's first gap: a month
    without backups after a backup 31 days ago is a 31-day gap, not "no gap". The time since the
    newest backup is the backup's age, measured apart (:attr:`DrillRecord.backup_age_seconds`).

    :param backup_times: when each complete backup was taken (its snapshot time), in any order.
    """
    since = until - window
    times = sorted({_utc(t) for t in backup_times if _utc(t) <= until})
    inside = [t for t in times if t > since]
    before = [t for t in times if t <= since]
    bounds = before[-1:] + inside
    if len(bounds) < 2:
        return BackupGap(None, len(inside), since)
    gap, between = max(
        ((later - earlier).total_seconds(), (earlier, later)) for earlier, later in pairwise(bounds)
    )
    return BackupGap(round(gap, 3), len(inside), since, between)


class DrillRecord(_RecordModel):
    """What one restore drill did and found.

    :param backup_time: when the backup's snapshot was taken (its manifest's ``started_at``).
    :param scratch_target: the database the backup was restored into.
    :param checksums: the objects verified against the manifest (the first failing one ends the list).
    :param checks: schema, row counts and the expectation suite, in that order.
    :param restore_seconds: download, verification and restore; None when the drill stopped before.
    :param validation_seconds: comparing with the manifest and running the suite.
    :param rto_target_seconds: the catalog's RTO (None: no target).
    :param rpo_target_seconds: the catalog's RPO (None: no target).
    :param error: why the drill stopped before its checks could all run (a bad object, a failed restore).
    :param rds: the restore of the backup's RDS snapshot, for a database on RDS (None: not drilled).
    :param cleanup_error: the scratch target could not be removed; the backup's verdict stands, but the
        run fails so that someone removes it.
    :param largest_backup_gap_seconds: the largest gap between consecutive complete backups over
        ``backup_gap_window_days`` before the drill (None: fewer than two backups, or an older record).
    :param complete_backups_in_window: how many complete backups the repository listed in that window.
    :param started_at: when the drill started; the backup's age is measured then.
    """

    record_version: Literal[1, 2, 3] = 3  # RECORD_VERSION
    estate: Annotated[str, StringConstraints(min_length=1)]
    database: Annotated[str, StringConstraints(min_length=1)]
    engine: str = ""
    backup_id: Annotated[str, StringConstraints(min_length=1)]
    backup_time: AwareDatetime
    run_id: Annotated[str, StringConstraints(min_length=1)]
    scratch_target: Annotated[str, StringConstraints(min_length=1)]
    checksums: list[ObjectChecksum] = Field(default_factory=list)
    checks: list[Check] = Field(default_factory=list)
    restore_seconds: Annotated[float, Field(ge=0)] | None = None
    validation_seconds: Annotated[float, Field(ge=0)] | None = None
    rto_target_seconds: Annotated[float, Field(gt=0)] | None = None
    rpo_target_seconds: Annotated[float, Field(gt=0)] | None = None
    largest_backup_gap_seconds: Annotated[float, Field(ge=0)] | None = None
    backup_gap_window_days: Annotated[int, Field(ge=1)] = BACKUP_GAP_WINDOW.days
    complete_backups_in_window: Annotated[int, Field(ge=0)] | None = None
    error: str | None = None
    rds: RdsDrill | None = None
    cleanup_error: str | None = None
    started_at: AwareDatetime
    finished_at: AwareDatetime

    _times_in_utc = field_validator("backup_time", "started_at", "finished_at")(_utc)

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        """A record read back from JSON carries its derived fields: they are computed again, not trusted."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if key not in _COMPUTED}
        return data

    @model_validator(mode="after")
    def _in_order(self) -> DrillRecord:
        if self.finished_at < self.started_at:
            raise ValueError("finished_at is before started_at")
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rto_seconds(self) -> float | None:
        """Recovery time measured: restore plus validation (None when the drill did not get that far)."""
        if self.restore_seconds is None or self.validation_seconds is None:
            return None
        return round(self.restore_seconds + self.validation_seconds, 3)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def backup_age_seconds(self) -> float:
        """The backup's age when the drill started: what a restore of it would lose right now."""
        return round(max((self.started_at - self.backup_time).total_seconds(), 0.0), 3)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rpo_seconds(self) -> float:
        """The data loss exposure: the larger of the backup's age and the largest backup gap."""
        return max(self.backup_age_seconds, self.largest_backup_gap_seconds or 0.0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def targets_met(self) -> bool:
        """RTO and RPO within the catalog's targets (a missing target is met; an unmeasured RTO is not)."""
        return self._rto_met() and self._rpo_met()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        """The backup restored and checked out: every object matched, every check ran and passed."""
        return (
            self.error is None
            and bool(self.checksums)
            and all(item.ok for item in self.checksums)
            and bool(self.checks)
            and all(check.passed for check in self.checks)
            and (self.rds is None or self.rds.passed)
        )

    def _rto_met(self) -> bool:
        if self.rto_target_seconds is None:
            return True
        return self.rto_seconds is not None and self.rto_seconds <= self.rto_target_seconds

    def _rpo_met(self) -> bool:
        if self.rpo_target_seconds is None:
            return True
        if self.record_version >= 3 and self.complete_backups_in_window is None:
            return False  # the listing could not be read: the exposure is not proven within the target
        return self.rpo_seconds <= self.rpo_target_seconds

    def _gap_text(self) -> str:
        window = f"{self.backup_gap_window_days} days"
        if self.largest_backup_gap_seconds is None:
            if self.complete_backups_in_window is None:
                return "backup gap not measured"
            return f"no gap measured: {self.complete_backups_in_window} complete backup(s) in {window}"
        return (
            f"largest gap {_seconds(self.largest_backup_gap_seconds)} between "
            f"{self.complete_backups_in_window} complete backup(s) in {window}"
        )

    @property
    def failed_checks(self) -> list[Check]:
        """The checks that did not pass, the RDS part's included."""
        rds_checks = self.rds.checks if self.rds else []
        return [check for check in [*self.checks, *rds_checks] if not check.passed]

    def to_json(self) -> str:
        """Return the record as canonical JSON (sorted keys, UTC times, derived verdicts included)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, data: str | bytes) -> DrillRecord:
        """Read a record written by :meth:`to_json`; its verdicts are computed again."""
        return cls.model_validate_json(data)

    def to_table(self) -> str:
        """Render the record as plain fixed-width text for the task log."""
        verdict = "PASSED" if self.passed else "FAILED"
        targets = "targets met" if self.targets_met else "TARGETS MISSED"
        rto = (
            f"{_seconds(self.rto_seconds)} (restore {_seconds(self.restore_seconds)} + validation "
            f"{_seconds(self.validation_seconds)})"
            if self.rto_seconds is not None
            else "not measured (the drill stopped before validating)"
        )
        summary = [
            ["backup", f"{self.backup_id}, taken {_iso(self.backup_time)}"],
            ["run", self.run_id],
            ["scratch target", self.scratch_target],
            ["RTO", f"{rto}; {_target(self.rto_target_seconds, self._rto_met())}"],
            [
                "RPO",
                f"{_seconds(self.rpo_seconds)} (larger of backup age {_seconds(self.backup_age_seconds)} "
                f"and {self._gap_text()}); {_target(self.rpo_target_seconds, self._rpo_met())}",
            ],
            ["drill", f"{_iso(self.started_at)} to {_iso(self.finished_at)}"],
        ]
        if self.error:
            summary.append(["error", self.error])
        if self.cleanup_error:
            summary.append(["cleanup", self.cleanup_error])
        if self.rds:
            rds = self.rds
            summary += [
                [
                    "RDS snapshot",
                    f"{rds.snapshot_id or '-'} of {rds.instance_id}: {rds.snapshot_choice or '-'}",
                ],
                [
                    "RDS scratch",
                    f"{rds.scratch_instance}, available after {_seconds(rds.restore_seconds)}: "
                    f"{'PASSED' if rds.passed else 'FAILED'}",
                ],
            ]
            if rds.error:
                summary.append(["RDS error", rds.error])
            if rds.cleanup_error:
                summary.append(["RDS cleanup", rds.cleanup_error])
        engine = f" ({self.engine})" if self.engine else ""
        parts = [
            f"Restore drill of {self.estate}/{self.database}{engine}: {verdict}, {targets}",
            "\n".join(f"{label:<15} {value}" for label, value in summary),
            render_table(
                ["object", "sha256", "ok"],
                [[item.object, item.sha256, "yes" if item.ok else "NO"] for item in self.checksums],
            )
            if self.checksums
            else "(no object verified)",
            _checks_table(self.checks) if self.checks else "(no check ran)",
        ]
        if self.rds:
            parts.append(_checks_table(self.rds.checks) if self.rds.checks else "(no RDS check ran)")
        return "\n\n".join(parts)


def _checks_table(checks: list[Check]) -> str:
    return render_table(
        ["check", "result", "expected", "observed", "detail"],
        [
            [
                check.name,
                "pass" if check.passed else "FAIL",
                _cell(check.expected),
                _cell(check.observed),
                _cell(check.detail),
            ]
            for check in checks
        ],
    )


def _cell(value: JsonValue) -> str:
    text = "" if value is None else value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    text = " ".join(text.split())
    return text if len(text) <= _CELL else text[: _CELL - 3] + "..."


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 90:
        return f"{value:.1f} s"
    return render_duration(timedelta(seconds=round(value)))


def _target(target: float | None, met: bool) -> str:
    if target is None:
        return "no target"
    return f"target {_seconds(target)}: {'met' if met else 'MISSED'}"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


__all__ = [
    "BACKUP_GAP_WINDOW",
    "RECORD_VERSION",
    "BackupGap",
    "Check",
    "DrillRecord",
    "ObjectChecksum",
    "RdsDrill",
    "largest_backup_gap",
]
