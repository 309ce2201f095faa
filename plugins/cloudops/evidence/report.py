"""The evidence report: per-control summaries of folded runs, and their HTML rendering.

The summaries are pure functions of ``cloudops.evidence.runs.Run`` objects, shared by evidence
packs (``cloudops.evidence.export``) and the auditor view:

- backups (SOC 2 A1.2, ISO/IEC 27001 A.8.13): ``backup_summaries`` (per target: runs, successes,
  success rate = successful backup runs / backup runs), ``failed_backups``, ``backups_taken``;
- recovery tests (SOC 2 A1.3, ISO/IEC 27001 A.8.13, A.5.30): ``drill_rows`` (RTO and RPO against
  their targets, the checks passed and failed; a drill run that recorded no drill is a failed row);
- changes and recovery actions (SOC 2 CC8.1, CC7.5): ``change_rows`` (manual runs, restores, patch
  waves, failovers, approved runs: who started them, when, with which parameters, who approved);
- failover drills (SOC 2 A1.2, A1.3 availability; ISO/IEC 27001 A.5.30): ``failover_rows`` (per drill:
  client-observed write downtime, acknowledged writes lost, whole drill time against their targets,
  the abort path taken, refusals, the record's S3 key and SHA-256).

``render_report(runs, *, since, until, generated_at, anchors=None, notes=()) -> str`` renders one
self-contained page (no scripts, no external assets, readable printed). Every value taken from a
record is HTML-escaped: records carry untrusted input (run parameters, error messages, user names).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from html import escape
from typing import Any

from cloudops.evidence.ledger import Record
from cloudops.evidence.runs import (
    BACKUP_TAKEN,
    DRILL_RECORDED,
    FAILOVER_DRILL,
    PATCH_HOST,
    PATCH_PLANNED,
    PATCH_WAVE,
    RESTORE_PERFORMED,
    Run,
)

BACKUP_RUNBOOKS = ("backup", "ebs_snapshot")
DRILL_RUNBOOKS = ("restore_drill",)
# Runbooks whose every run is a change or a recovery action, whoever started it.
CHANGE_RUNBOOKS = ("restore_request", "patch_wave", "failover", "failover_drill")


@dataclass(frozen=True)
class ChainAnchors:
    """Where a set of records sits in the ledger's chain.

    ``first_prev`` is the hash the first record follows; with no records, ``last_seq`` is
    ``first_seq - 1`` and ``last_hash`` is ``first_prev`` (the chain's position at the period).
    """

    first_seq: int
    first_prev: str
    last_seq: int
    last_hash: str
    records: int
    first_day: str | None = None
    last_day: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "first_seq": self.first_seq,
            "first_prev": self.first_prev,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "records": self.records,
            "first_day": self.first_day,
            "last_day": self.last_day,
        }


# -- the per-control summaries (pure) -----------------------------------------------------------


@dataclass(frozen=True)
class BackupSummary:
    """The backup runs of one target in the period, and their success rate."""

    target: str
    runbook: str
    estate: str
    runs: int
    succeeded: int
    failed: int
    unfinished: int
    backups_recorded: int
    bytes_recorded: int
    last_success: str | None

    @property
    def success_rate(self) -> float | None:
        """Successful backup runs / backup runs (None when there were none)."""
        return self.succeeded / self.runs if self.runs else None


@dataclass(frozen=True)
class BackupTaken:
    target: str
    at: str
    backup_id: str
    method: str
    size_bytes: int | None
    objects: int
    locked_until: str | None


@dataclass(frozen=True)
class FailedRun:
    target: str
    runbook: str
    run_id: str
    started_at: str | None
    state: str
    step: str
    error: str


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    expected: Any
    observed: Any


@dataclass(frozen=True)
class DrillRow:
    """One restore drill: measured RTO and RPO against their targets, and the checks it ran."""

    target: str
    run_id: str
    started_at: str | None
    backup_id: str
    passed: bool
    run_state: str
    rto_seconds: float | None
    rto_target_seconds: float | None
    rpo_seconds: float | None
    rpo_target_seconds: float | None
    targets_met: bool | None
    checksums_verified: bool | None
    checks: tuple[CheckResult, ...]
    problem: str = ""

    @property
    def checks_passed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.passed]

    @property
    def checks_failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]


@dataclass(frozen=True)
class Approval:
    approver: str
    decision: str
    at: str | None
    accepted: bool


@dataclass(frozen=True)
class ChangeRow:
    """A change or recovery action: who started it, when, with which parameters, who approved it."""

    at: str | None
    dag_id: str
    run_id: str
    runbook: str
    target: str | None
    why: str
    triggered_by: str | None
    triggered_by_user: str | None
    parameters: dict[str, Any]
    approvals: tuple[Approval, ...]
    requested_by: str | None
    details: str
    state: str

    @property
    def approved(self) -> bool:
        return any(a.accepted and a.decision.lower().startswith("approve") for a in self.approvals)


def _data(record: Record) -> dict[str, Any]:
    data = record.fields.get("data")
    return data if isinstance(data, dict) else {}


def _first_error(run: Run) -> tuple[str, str]:
    failed = [s for s in run.steps if _data(s).get("state") == "failed"]
    if not failed:
        return "", ""
    step = failed[-1]
    return str(step.fields.get("task_id") or ""), str(_data(step).get("error") or "")


def backup_summaries(runs: Iterable[Run]) -> list[BackupSummary]:
    """Per target (database or fleet), the backup runs and their success rate, by target name."""
    grouped: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if run.runbook in BACKUP_RUNBOOKS:
            grouped.setdefault((run.target or run.dag_id, run.runbook), []).append(run)
    summaries = []
    for (target, runbook), group in sorted(grouped.items()):
        taken = [fact for run in group for fact in run.facts_of(BACKUP_TAKEN)]
        successes = [run for run in group if run.state == "success"]
        estates = sorted({str(_data(f).get("estate")) for f in taken if _data(f).get("estate")})
        summaries.append(
            BackupSummary(
                target=target,
                runbook=runbook,
                estate=", ".join(estates),
                runs=len(group),
                succeeded=len(successes),
                failed=sum(run.state == "failed" for run in group),
                unfinished=sum(run.state not in ("success", "failed") for run in group),
                backups_recorded=len(taken),
                bytes_recorded=sum(int(_data(f).get("size_bytes") or 0) for f in taken),
                last_success=max((r.finished_at or r.started_at or "" for r in successes), default=None),
            )
        )
    return summaries


def backups_taken(runs: Iterable[Run]) -> list[BackupTaken]:
    """Every backup.taken fact of the runs, by target and time."""
    rows = []
    for run in runs:
        for fact in run.facts_of(BACKUP_TAKEN):
            data = _data(fact)
            size = data.get("size_bytes")
            rows.append(
                BackupTaken(
                    target=str(data.get("database") or run.target or run.dag_id),
                    at=fact.at,
                    backup_id=str(data.get("backup_id") or ""),
                    method=str(data.get("method") or ""),
                    size_bytes=size if isinstance(size, int) else None,
                    objects=len(data.get("objects") or []),
                    locked_until=data.get("locked_until"),
                )
            )
    return sorted(rows, key=lambda row: (row.target, row.at))


def failed_backups(runs: Iterable[Run]) -> list[FailedRun]:
    """The backup runs that did not succeed, with the step that failed and its error."""
    rows = []
    for run in runs:
        if run.runbook in BACKUP_RUNBOOKS and run.state != "success":
            step, error = _first_error(run)
            rows.append(
                FailedRun(
                    run.target or run.dag_id, run.runbook, run.run_id, run.started_at, run.state, step, error
                )
            )
    return sorted(rows, key=lambda row: (row.target, row.started_at or ""))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def drill_rows(runs: Iterable[Run]) -> list[DrillRow]:
    """Every restore drill: one row per drill record, and one per drill run that recorded none."""
    rows = []
    for run in runs:
        facts = run.facts_of(DRILL_RECORDED)
        if not facts and run.runbook in DRILL_RUNBOOKS:
            step, error = _first_error(run)
            problem = f"no drill record: failed at {step}: {error}" if step else "no drill record"
            if run.state not in ("success", "failed"):
                problem = "no drill record yet: the run had not finished"
            rows.append(
                DrillRow(
                    run.target or run.dag_id,
                    run.run_id,
                    run.started_at,
                    "",
                    False,
                    run.state,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    (),
                    problem,
                )
            )
        for fact in facts:
            data = _data(fact)
            checks = tuple(
                CheckResult(
                    str(c.get("name", "")), c.get("passed") is True, c.get("expected"), c.get("observed")
                )
                for c in data.get("checks") or []
                if isinstance(c, dict)
            )
            rows.append(
                DrillRow(
                    target=str(data.get("database") or run.target or run.dag_id),
                    run_id=run.run_id,
                    started_at=run.started_at,
                    backup_id=str(data.get("backup_id") or ""),
                    passed=data.get("passed") is True and run.state != "failed",
                    run_state=run.state,
                    rto_seconds=_number(data.get("rto_seconds")),
                    rto_target_seconds=_number(data.get("rto_target_seconds")),
                    rpo_seconds=_number(data.get("rpo_seconds")),
                    rpo_target_seconds=_number(data.get("rpo_target_seconds")),
                    targets_met=_flag(data.get("targets_met")),
                    checksums_verified=_flag(data.get("checksums_verified")),
                    checks=checks,
                )
            )
    return sorted(rows, key=lambda row: (row.target, row.started_at or ""))


def _approvals(run: Run) -> tuple[Approval, ...]:
    approvals = [
        Approval(
            approver=str(_data(f).get("approver") or ""),
            decision=str(_data(f).get("decision") or ""),
            at=_data(f).get("responded_at") or f.at,
            accepted=_data(f).get("accepted") is not False,
        )
        for f in run.approvals
    ]
    known = {a.approver for a in approvals}
    for fact in run.facts_of(RESTORE_PERFORMED):
        approver = _data(fact).get("approved_by")
        if approver and approver not in known:
            approvals.append(Approval(str(approver), "Approve", fact.at, True))
            known.add(approver)
    return tuple(approvals)


def change_rows(runs: Iterable[Run]) -> list[ChangeRow]:
    """The changes and recovery actions: manual runs, restores, change runbooks, approved runs."""
    rows = []
    for run in runs:
        reasons = []
        if run.manual:
            reasons.append("manual run")
        if run.runbook in CHANGE_RUNBOOKS:
            reasons.append(run.runbook.replace("_", " "))
        restores = run.facts_of(RESTORE_PERFORMED)
        if restores and "restore request" not in reasons:
            reasons.append("restore")
        if run.approvals and not reasons:
            reasons.append("approval recorded")
        if not reasons:
            continue
        details = []
        requested_by = None
        for fact in restores:
            data = _data(fact)
            requested_by = requested_by or data.get("requested_by")
            details.append(
                f"restored {data.get('database')} backup {data.get('backup_id')} into "
                f"{data.get('target_database')}" + (" (overwrite)" if data.get("overwrite") else "")
            )
        details.extend(_patch_change_text(run))
        details.extend(_failover_change_text(run))
        for fact in run.approvals:
            requested_by = requested_by or _data(fact).get("requested_by")
        rows.append(
            ChangeRow(
                at=run.started_at,
                dag_id=run.dag_id,
                run_id=run.run_id,
                runbook=run.runbook,
                target=run.target,
                why=", ".join(reasons),
                triggered_by=run.triggered_by,
                triggered_by_user=run.triggered_by_user,
                parameters=run.conf,
                approvals=_approvals(run),
                requested_by=requested_by,
                details="; ".join(details),
                state=run.state,
            )
        )
    return sorted(rows, key=lambda row: row.at or "")


# -- patch waves (CC8.1 changes, CC7.1 vulnerability management) ---------------------------------


@dataclass(frozen=True)
class PatchRow:
    """One patch wave: its snapshot, how it ended, and compliance per state and per host."""

    at: str | None
    dag_id: str
    run_id: str
    fleet: str
    snapshot_id: str
    versions: tuple[str, ...]
    outcome: str
    reason: str
    compliance: dict[str, int]
    failed_hosts: tuple[str, ...]
    unreachable: tuple[str, ...]


def _patch_change_text(run: Run) -> list[str]:
    texts = []
    for fact in run.facts_of(PATCH_WAVE):
        data = _data(fact)
        verdict = "completed" if data.get("succeeded") else "halted"
        texts.append(f"patch wave of {data.get('fleet')} {verdict} (snapshot {data.get('snapshot_id')})")
    return texts


def patch_rows(runs: Iterable[Run]) -> list[PatchRow]:
    """Every patch wave run with a planned snapshot; a wave that planned but never acted is 'not run'."""
    rows = []
    for run in runs:
        planned = run.facts_of(PATCH_PLANNED)
        if not planned:
            continue
        plan = _data(planned[-1])
        pins = (plan.get("snapshot") or {}).get("pins") or {}
        versions = sorted(
            {
                f"{p.get('package')}={p.get('version')}"
                for items in pins.values()
                if isinstance(items, list)
                for p in items
                if isinstance(p, dict)
            }
        )
        waves = run.facts_of(PATCH_WAVE)
        hosts = [_data(f) for f in run.facts_of(PATCH_HOST)]
        wave = _data(waves[-1]) if waves else {}
        if plan.get("dry_run"):
            outcome = "dry run"
        elif not waves:
            outcome = "not run" if run.state != "running" else "running"
        else:
            outcome = "completed" if wave.get("succeeded") else "halted"
        found = wave.get("compliance")
        counts: dict[str, Any] = found if isinstance(found, dict) else {}
        rows.append(
            PatchRow(
                at=run.started_at,
                dag_id=run.dag_id,
                run_id=run.run_id,
                fleet=str(plan.get("fleet") or run.target or ""),
                snapshot_id=str(plan.get("snapshot_id") or ""),
                versions=tuple(versions),
                outcome=outcome,
                reason=str(wave.get("reason") or ""),
                compliance={str(k): int(v) for k, v in counts.items() if isinstance(v, int)},
                failed_hosts=tuple(
                    f"{h.get('host')}: {h.get('step')}: {h.get('error')}"
                    for h in hosts
                    if h.get("status") in ("failed", "stopped")  # stopped: stop_now at the cutoff
                ),
                unreachable=tuple(str(v) for v in (plan.get("unreachable") or {}).values()),
            )
        )
    return sorted(rows, key=lambda row: row.at or "")


def _patches_section(runs: Sequence[Run]) -> str:
    rows = patch_rows(runs)
    parts = [
        '<h2 id="patches">Patch waves</h2>',
        '<p class="controls">SOC 2 CC7.1 (vulnerability management) · CC8.1 (change management): the '
        "snapshot each wave installed, how it ended, and compliance per package state afterwards "
        "(NOT_APPLICABLE never counts as non-compliant)</p>",
    ]
    if not rows:
        parts.append(_none("no patch wave in the period"))
        return "".join(parts)
    parts.append(
        _table(
            ["When", "Fleet / run", "Snapshot", "Outcome", "Compliance", "Failed or unreachable hosts"],
            (
                [
                    _time(r.at),
                    f"{_e(r.fleet)}<br><code>{_e(r.run_id)}</code>",
                    f"<code>{_e(r.snapshot_id)}</code><br>{_e(', '.join(r.versions) or 'nothing')}",
                    (
                        _e(r.outcome)
                        if r.outcome in ("completed", "dry run")
                        else f'<span class="bad">{_e(r.outcome)}</span>'
                    )
                    + (f"<br>{_e(r.reason)}" if r.reason else ""),
                    _e(", ".join(f"{k} {v}" for k, v in sorted(r.compliance.items())) or "—"),
                    "<br>".join(_e(h) for h in (*r.failed_hosts, *r.unreachable)) or "—",
                ]
                for r in rows
            ),
        )
    )
    return "".join(parts)


# -- failover drills (A1.2 / A1.3 availability, ISO A.5.30) ----------------------------------------


@dataclass(frozen=True)
class FailoverRow:
    """One failover drill: its figures against its targets, how it ended, and where its record is."""

    at: str | None
    dag_id: str
    run_id: str
    cluster: str
    manager: str
    verdict: str
    abort_path: str | None
    targets: tuple[dict[str, Any], ...]
    refusals: tuple[str, ...]
    original_primary: str | None
    new_primary: str | None
    lag_bytes: int | None
    record_key: str | None
    record_sha256: str | None

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"


def _failover_change_text(run: Run) -> list[str]:
    texts = []
    for fact in run.facts_of(FAILOVER_DRILL):
        data = _data(fact)
        if data.get("moved"):
            texts.append(
                f"failover drill of {data.get('cluster')}: {data.get('original_primary')} -> "
                f"{data.get('new_primary')} at the end ({data.get('verdict')})"
            )
    return texts


def failover_rows(runs: Iterable[Run]) -> list[FailoverRow]:
    """Every failover drill the ledger recorded (refused ones included); a drill run that recorded no
    drill is left to the failed-runs tables."""
    rows = []
    for run in runs:
        for fact in run.facts_of(FAILOVER_DRILL):
            data = _data(fact)
            targets = data.get("targets")
            rows.append(
                FailoverRow(
                    at=run.started_at or fact.at,
                    dag_id=run.dag_id,
                    run_id=run.run_id,
                    cluster=str(data.get("cluster") or run.target or ""),
                    manager=str(data.get("manager") or ""),
                    verdict=str(data.get("verdict") or "unknown"),
                    abort_path=data.get("abort_path") or None,
                    targets=tuple(t for t in targets if isinstance(t, dict))
                    if isinstance(targets, list)
                    else (),
                    refusals=tuple(str(r) for r in data.get("refusals") or () if r),
                    original_primary=data.get("original_primary"),
                    new_primary=data.get("new_primary"),
                    lag_bytes=data.get("lag_bytes_at_injection")
                    if isinstance(data.get("lag_bytes_at_injection"), int)
                    else None,
                    record_key=data.get("record_key"),
                    record_sha256=data.get("record_sha256"),
                )
            )
    return sorted(rows, key=lambda row: row.at or "")


def _target_text(target: dict[str, Any]) -> str:
    status = str(target.get("status") or "?")
    shown = _e(status) if status == "PASS" else f'<span class="bad">{_e(status)}</span>'
    measured, limit = target.get("measured"), target.get("limit")
    figure = (
        "" if measured is None else f" {_e(round(measured, 3) if isinstance(measured, float) else measured)}"
    )
    bound = "" if limit is None else f" / {_e(limit)}"
    return f"{_e(target.get('target'))}: {shown}{figure}{bound}"


def _failovers_section(runs: Sequence[Run]) -> str:
    rows = failover_rows(runs)
    parts = [
        '<h2 id="failovers">Recovery tests: failover drills</h2>',
        '<p class="controls">SOC 2 A1.2 (availability: recovery infrastructure) · A1.3 (recovery plan '
        "testing) · ISO/IEC 27001:2022 A.5.30 (ICT readiness for business continuity): client-observed "
        "write downtime, acknowledged writes lost and the whole drill against each cluster's targets</p>",
    ]
    if not rows:
        parts.append(_none("no failover drill in the period"))
        return "".join(parts)
    passed = sum(r.passed for r in rows)
    parts.append(f"<p>{len(rows)} failover drills, {passed} passed.</p>")
    body = []
    for r in rows:
        verdict = (
            '<span class="good">PASS</span>' if r.passed else f'<span class="bad">{_e(r.verdict)}</span>'
        ) + (f"<br>abort path: {_e(r.abort_path)}" if r.abort_path else "")
        details = (
            "<br>".join(_target_text(t) for t in r.targets) or "<br>".join(_e(x) for x in r.refusals) or "—"
        )
        body.append(
            [
                f"{_e(r.cluster)}<br><code>{_e(r.run_id)}</code>",
                _time(r.at),
                _e(r.manager),
                verdict,
                details,
                f"{_e(r.original_primary or '—')} → {_e(r.new_primary or '—')}"
                + ("" if r.lag_bytes is None else f"<br>lag at injection {_e(r.lag_bytes)} B"),
                f"<code>{_e(r.record_key or 'ledger only')}</code>"
                f"<br><code>{_e(r.record_sha256 or '')}</code>",
            ]
        )
    parts.append(
        _table(
            [
                "Cluster / run",
                "Started",
                "Manager",
                "Verdict",
                "Targets (measured / limit)",
                "Primary",
                "Record",
            ],
            body,
        )
    )
    return "".join(parts)


def control_counts(runs: Sequence[Run]) -> dict[str, int]:
    """The figures of the report's summary (and the pack's manifest)."""
    backups = [r for r in runs if r.runbook in BACKUP_RUNBOOKS]
    drills = drill_rows(runs)
    changes = change_rows(runs)
    return {
        "runs": len(runs),
        "backup_runs": len(backups),
        "backup_runs_succeeded": sum(r.state == "success" for r in backups),
        "drills": len(drills),
        "drills_passed": sum(d.passed for d in drills),
        "changes": len(changes),
        "changes_approved": sum(c.approved for c in changes),
        "failover_drills": len(failover_rows(runs)),
        "failover_drills_passed": sum(r.passed for r in failover_rows(runs)),
    }


# -- the report ----------------------------------------------------------------------------------

_CSS = """
body{font:13px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#111;margin:2em auto;
max-width:75em;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.3em;margin-top:2em;border-bottom:2px solid #333}
h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;width:100%;margin:.5em 0 1em}
th,td{border:1px solid #999;padding:.25em .45em;text-align:left;vertical-align:top;
overflow-wrap:break-word}
th{background:#eee}td.n{text-align:right;white-space:nowrap}
.bad{color:#a00;font-weight:bold}.good{color:#060}.none{font-style:italic;color:#444}
.controls{color:#444;margin-top:0}code{font:12px/1.3 Menlo,Consolas,monospace}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em}dt{font-weight:bold}dd{margin:0}
@media print{body{margin:0;max-width:none;font-size:10pt}h2{break-before:page}
tr{break-inside:avoid}thead{display:table-header-group}a{color:inherit;text-decoration:none}}
"""


def _e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute (records hold untrusted input)."""
    return escape("" if value is None else str(value), quote=True)


def _time(stamp: str | None) -> str:
    if not stamp:
        return "—"
    return _e(stamp[:19].replace("T", " ") + (" UTC" if len(stamp) > 10 else ""))


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    text = f"{value:,.1f}".removesuffix(".0") + " s"
    if value >= 120:
        minutes, seconds = divmod(round(value), 60)
        hours, minutes = divmod(minutes, 60)
        text += f" ({hours} h {minutes:02d} min)" if hours else f" ({minutes} min {seconds:02d} s)"
    return text


def _size(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{value} B"


def _rate(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f} %"


def _met(measured: float | None, target: float | None) -> str:
    if measured is None:
        return '<span class="none">not measured</span>'
    if target is None:
        return f"{_seconds(measured)} (no target)"
    verdict = '<span class="good">met</span>' if measured <= target else '<span class="bad">missed</span>'
    return f"{_seconds(measured)} / target {_seconds(target)}: {verdict}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """A table of already-escaped cells."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = [
        "<tr>"
        + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    ]
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _none(what: str) -> str:
    return f'<p class="none">No evidence in this period: {_e(what)}.</p>'


def _json_text(value: Any) -> str:
    return _e(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str))


def _check_text(check: CheckResult) -> str:
    if check.passed:
        return _e(check.name)
    return (
        f"{_e(check.name)} (expected <code>{_json_text(check.expected)}</code>, "
        f"observed <code>{_json_text(check.observed)}</code>)"
    )


def _backups_section(runs: Sequence[Run]) -> str:
    summaries = backup_summaries(runs)
    parts = [
        '<h2 id="backups">Backups taken</h2>',
        '<p class="controls">SOC 2 A1.2 · ISO/IEC 27001:2022 A.8.13 (information backup)</p>',
    ]
    if not summaries:
        parts.append(_none("no backup run started in the period"))
        return "".join(parts)
    total = sum(s.runs for s in summaries)
    succeeded = sum(s.succeeded for s in summaries)
    parts.append(
        f"<p>{total} backup runs, {succeeded} successful: success rate {_rate(succeeded / total)} "
        "(successful backup runs / backup runs; a run not finished at the export counts as not "
        "successful).</p>"
    )
    parts.append(
        _table(
            [
                "Target",
                "Runbook",
                "Estate",
                "Runs",
                "Successful",
                "Failed",
                "Not finished",
                "Success rate",
                "Backups recorded",
                "Size recorded",
                "Last success",
            ],
            (
                [
                    _e(s.target),
                    _e(s.runbook),
                    _e(s.estate),
                    str(s.runs),
                    str(s.succeeded),
                    f'<span class="bad">{s.failed}</span>' if s.failed else "0",
                    str(s.unfinished),
                    _rate(s.success_rate),
                    str(s.backups_recorded),
                    _size(s.bytes_recorded),
                    _time(s.last_success),
                ]
                for s in summaries
            ),
            numeric=(3, 4, 5, 6, 7, 8, 9),
        )
    )
    failed = failed_backups(runs)
    parts.append("<h3>Backup runs that did not succeed</h3>")
    if failed:
        parts.append(
            _table(
                ["Target", "Started", "Run", "State", "Failed step", "Error"],
                (
                    [
                        _e(f.target),
                        _time(f.started_at),
                        f"<code>{_e(f.run_id)}</code>",
                        f'<span class="bad">{_e(f.state)}</span>',
                        _e(f.step or "—"),
                        _e(f.error or "—"),
                    ]
                    for f in failed
                ),
            )
        )
    else:
        parts.append('<p class="good">None: every backup run of the period succeeded.</p>')
    taken = backups_taken(runs)
    parts.append("<h3>Backups recorded</h3>")
    if taken:
        parts.append(
            _table(
                ["Target", "Taken", "Backup id", "Method", "Size", "Objects", "Locked until"],
                (
                    [
                        _e(t.target),
                        _time(t.at),
                        f"<code>{_e(t.backup_id)}</code>",
                        _e(t.method),
                        _size(t.size_bytes),
                        str(t.objects),
                        _time(t.locked_until),
                    ]
                    for t in taken
                ),
                numeric=(4, 5),
            )
        )
    else:
        parts.append(_none("no backup.taken record"))
    return "".join(parts)


def _drills_section(runs: Sequence[Run]) -> str:
    rows = drill_rows(runs)
    parts = [
        '<h2 id="drills">Recovery tests: restore drills</h2>',
        '<p class="controls">SOC 2 A1.3 · ISO/IEC 27001:2022 A.8.13 (information backup), '
        "A.5.30 (ICT readiness for business continuity)</p>",
    ]
    if not rows:
        parts.append(_none("no restore drill ran in the period"))
        return "".join(parts)
    passed = sum(r.passed for r in rows)
    parts.append(f"<p>{len(rows)} drills, {passed} passed, {len(rows) - passed} failed.</p>")
    body = []
    for r in rows:
        verdict = '<span class="good">passed</span>' if r.passed else '<span class="bad">failed</span>'
        if r.problem:
            checks = _e(r.problem)
        else:
            checks = f"{len(r.checks_passed)} of {len(r.checks)} passed"
            if r.checks_passed:
                checks += "<br>passed: " + ", ".join(_check_text(c) for c in r.checks_passed)
            if r.checks_failed:
                checks += '<br><span class="bad">failed</span>: ' + "; ".join(
                    _check_text(c) for c in r.checks_failed
                )
        checksums = {True: "verified", False: '<span class="bad">not verified</span>', None: "—"}[
            r.checksums_verified
        ]
        body.append(
            [
                _e(r.target),
                _time(r.started_at),
                f"<code>{_e(r.backup_id or '—')}</code>",
                verdict,
                _met(r.rto_seconds, r.rto_target_seconds),
                _met(r.rpo_seconds, r.rpo_target_seconds),
                checksums,
                checks,
            ]
        )
    parts.append(
        _table(
            [
                "Database",
                "Started",
                "Backup",
                "Verdict",
                "RTO (measured / target)",
                "RPO (measured / target)",
                "Checksums",
                "Checks",
            ],
            body,
        )
    )
    return "".join(parts)


def _who(row: ChangeRow) -> str:
    if row.triggered_by_user:
        return f'{_e(row.triggered_by_user)} <span class="none">({_e(row.triggered_by or "manual")})</span>'
    return f'<span class="none">no person ({_e(row.triggered_by or "unknown")})</span>'


def _approval_text(row: ChangeRow) -> str:
    if not row.approvals:
        return '<span class="bad">none recorded</span>'
    texts = []
    for a in row.approvals:
        text = f"{_e(a.approver)}: {_e(a.decision)}, {_time(a.at)}"
        if not a.accepted:
            text += ' <span class="bad">(not accepted: the approver was the requester)</span>'
        texts.append(text)
    return "<br>".join(texts)


def _changes_section(runs: Sequence[Run]) -> str:
    rows = change_rows(runs)
    parts = [
        '<h2 id="changes">Changes and recovery actions</h2>',
        '<p class="controls">SOC 2 CC8.1 (change management) · CC7.5 (recovery from incidents): manual '
        "runs, restores, patch waves and failovers; parameters as recorded (secrets masked when "
        "recorded)</p>",
    ]
    if not rows:
        parts.append(_none("no manual run, restore, patch wave or failover in the period"))
        return "".join(parts)
    approved = sum(r.approved for r in rows)
    parts.append(f"<p>{len(rows)} changes or recovery actions, {approved} with an accepted approval.</p>")
    parts.append(
        _table(
            [
                "When",
                "What",
                "Runbook / target",
                "Triggered by",
                "Requested by",
                "Parameters",
                "Approved by",
                "Outcome",
            ],
            (
                [
                    _time(r.at),
                    _e(r.why) + (f"<br>{_e(r.details)}" if r.details else ""),
                    f"{_e(r.runbook)} / {_e(r.target or '—')}<br><code>{_e(r.run_id)}</code>",
                    _who(r),
                    _e(r.requested_by or "—"),
                    f"<code>{_json_text(r.parameters)}</code>" if r.parameters else "—",
                    _approval_text(r),
                    _e(r.state) if r.state == "success" else f'<span class="bad">{_e(r.state)}</span>',
                ]
                for r in rows
            ),
        )
    )
    return "".join(parts)


def render_report(
    runs: Sequence[Run],
    *,
    since: date,
    until: date,
    generated_at: str,
    anchors: ChainAnchors | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The evidence report of ``runs`` (already selected for the period) as one self-contained page."""
    counts = control_counts(runs)
    summary = [
        ("Period", f"{_e(since.isoformat())} to {_e(until.isoformat())} (UTC days, by run start)"),
        ("Generated at", _time(generated_at)),
    ]
    if anchors is not None:
        if anchors.records:
            summary.append(
                (
                    "Ledger chain",
                    f"{anchors.records} records, seq {anchors.first_seq} to {anchors.last_seq} "
                    f"({_e(anchors.first_day)} to {_e(anchors.last_day)}); verified",
                )
            )
            summary.append(("First record follows", f"<code>{_e(anchors.first_prev)}</code>"))
            summary.append((f"Last record (seq {anchors.last_seq})", f"<code>{_e(anchors.last_hash)}</code>"))
        else:
            summary.append(
                (
                    "Ledger chain",
                    f"no record in the period; the chain was at seq {anchors.last_seq}, "
                    f"<code>{_e(anchors.last_hash)}</code>",
                )
            )
    backup_rate = counts["backup_runs_succeeded"] / counts["backup_runs"] if counts["backup_runs"] else None
    summary += [
        ("Runs started", str(counts["runs"])),
        (
            "Backup runs",
            f"{counts['backup_runs']} ({counts['backup_runs_succeeded']} successful, {_rate(backup_rate)})",
        ),
        ("Restore drills", f"{counts['drills']} ({counts['drills_passed']} passed)"),
        ("Changes and recovery actions", f"{counts['changes']} ({counts['changes_approved']} approved)"),
        ("Failover drills", f"{counts['failover_drills']} ({counts['failover_drills_passed']} passed)"),
    ]
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>Evidence {_e(since.isoformat())} to {_e(until.isoformat())}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Operational evidence, {_e(since.isoformat())} to {_e(until.isoformat())}</h1>",
        "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in summary) + "</dl>",
        "".join(f'<p class="none">{_e(note)}</p>' for note in notes),
        "<p>Every figure below is computed from the ledger records in <code>records.jsonl</code> "
        "(each line re-hashes to its own <code>hash</code> and chains to the one before through "
        "<code>prev</code>); <code>manifest.json</code> holds every file's SHA-256. Check both with "
        "<code>cloudops evidence verify --pack DIR</code>.</p>",
        _backups_section(runs),
        _drills_section(runs),
        _failovers_section(runs),
        _changes_section(runs),
        _patches_section(runs),
        "</body></html>\n",
    ]
    return "".join(parts)


__all__ = [
    "BACKUP_RUNBOOKS",
    "CHANGE_RUNBOOKS",
    "DRILL_RUNBOOKS",
    "Approval",
    "BackupSummary",
    "BackupTaken",
    "ChainAnchors",
    "ChangeRow",
    "CheckResult",
    "DrillRow",
    "FailedRun",
    "FailoverRow",
    "PatchRow",
    "backup_summaries",
    "backups_taken",
    "change_rows",
    "control_counts",
    "drill_rows",
    "failed_backups",
    "failover_rows",
    "patch_rows",
    "render_report",
]
