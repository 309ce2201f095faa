"""The monthly report of one estate, as data: every figure the HTML and PDF show, computed here (pure).

Inputs are what the runbook read: the month (:class:`~cloudops.reports.period.MonthPeriod`), each SLO
target's slice grid (from the probe sample store), the runs the evidence ledger folds
(:func:`cloudops.evidence.runs.fold_runs`, up to the month's end: the backup before the month counts
for the first gap), and the month's cost (:class:`~cloudops.reports.cost.CostMonth`, or the reason it
is missing). :func:`build_monthly_report` turns them into a :class:`MonthlyReport`; nothing here reads
a file, a bucket or a clock.

Sections and their rules:

- **availability** per SLO: :func:`cloudops.reports.availability.slo_month`, with the patch waves and
  failover drills of the ledger as maintenance work (a wave's targets: the hosts it acted on; a
  failover drill's: the databases of its cluster);
- **incidents**: each merged run of failed minutes, with the runbook runs that overlap it or started
  up to :data:`AROUND` before or after it (what was done about it, or what caused it);
- **backups** per database: backup runs and their success rate, and the largest gap between
  consecutive backups (from the last backup before the month, or the month's start, to the month's
  end) against the database's RPO;
- **restore drills**: RTO and RPO measured against their targets (the drill records);
- **patch compliance** per host: after the fleet's latest planned wave up to the month's end, the
  security updates still not installed (left out of the snapshot, or not installed by the wave), and
  the oldest advisory among them;
- **failover drills**: write downtime measured against its target, from the ``failover.drill`` facts
  the drill runbook records; none recorded says so;
- **cost**: the month's bill, month over month, and the next month projected.
"""

from __future__ import annotations

import heapq
import re
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

from cloudops.catalog.models import Catalog
from cloudops.evidence.report import DrillRow, drill_rows
from cloudops.evidence.runs import BACKUP_TAKEN, FAILOVER_DRILL, PATCH_HOST, PATCH_PLANNED, PATCH_WAVE, Run
from cloudops.reports.availability import Incident, SloMonth, TargetSamples, slo_month
from cloudops.reports.cost import CENT, CostMonth, month_bounds
from cloudops.reports.maintenance import MaintenanceWork
from cloudops.reports.period import MonthPeriod

AROUND = timedelta(hours=1)
MAINTENANCE_RUNBOOKS = ("patch_wave", "failover_drill")
BACKUP_RUNBOOK = "backup"
PROJECTION_DAYS = 7
_SECURITY = "security"
_NOT_INSTALLED = frozenset({"MISSING", "FAILED", "HELD"})
_ADVISORY = re.compile(r"advisory (\S+) published (\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class NearbyRun:
    """A runbook run near an incident: ``during`` it, or started ``before``/``after`` it."""

    dag_id: str
    run_id: str
    runbook: str
    target: str | None
    started_at: str | None
    finished_at: str | None
    state: str
    relation: str


@dataclass(frozen=True)
class IncidentRow:
    """One incident of one SLO, with the runs around it."""

    slo: str
    incident: Incident
    runs: tuple[NearbyRun, ...]


@dataclass(frozen=True)
class BackupRow:
    """One database's backups in the month: runs, success rate, and the largest gap against its RPO."""

    database: str
    runs: int
    succeeded: int
    backups: int
    success_rate: float | None
    largest_gap: timedelta
    gap_from: datetime
    gap_to: datetime
    rpo: timedelta | None

    @property
    def gap_met(self) -> bool | None:
        return None if self.rpo is None else self.largest_gap <= self.rpo


@dataclass(frozen=True)
class PatchHostRow:
    """One host after its fleet's latest wave: security updates still pending, the oldest advisory."""

    fleet: str
    host: str
    snapshot_id: str
    as_of: str | None
    pending: tuple[str, ...]
    oldest_advisory: str | None
    oldest_published: date | None


@dataclass(frozen=True)
class FailoverRow:
    """One failover drill: the downtime it caused against the target."""

    target: str
    run_id: str
    at: str | None
    downtime_seconds: float | None
    target_seconds: float | None
    state: str

    @property
    def met(self) -> bool | None:
        if self.downtime_seconds is None or self.target_seconds is None:
            return None
        return self.downtime_seconds <= self.target_seconds


@dataclass(frozen=True)
class CostProjection:
    """The next month's cost: Cost Explorer's forecast, or a linear projection, with how it was made."""

    month: str
    amount: Decimal
    method: str


@dataclass
class MonthlyReport:
    """Everything one estate's monthly report says."""

    estate: str
    description: str
    period: MonthPeriod
    generated_at: datetime
    slos: list[SloMonth] = field(default_factory=list)
    incidents: list[IncidentRow] = field(default_factory=list)
    backups: list[BackupRow] = field(default_factory=list)
    drills: list[DrillRow] = field(default_factory=list)
    patches: list[PatchHostRow] = field(default_factory=list)
    patch_runs: int = 0
    failovers: list[FailoverRow] = field(default_factory=list)
    cost: CostMonth | None = None
    cost_problem: str | None = None
    projection: CostProjection | None = None
    runs_in_month: int = 0
    ledger_anchor: dict[str, Any] = field(default_factory=dict)

    @property
    def credit_owed(self) -> dict[str, Decimal]:
        """Credit owed per currency over every SLO."""
        owed: dict[str, Decimal] = {}
        for month in self.slos:
            if month.credit.owed:
                owed[month.credit.currency] = owed.get(month.credit.currency, Decimal(0)) + month.credit.owed
        return owed


def _moment(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _data(record: Any) -> dict[str, Any]:
    data = record.fields.get("data")
    return data if isinstance(data, dict) else {}


def _run_span(run: Run) -> tuple[datetime, datetime] | None:
    start = _moment(run.started_at) or _moment(run.records[0].at if run.records else None)
    end = _moment(run.finished_at) or _moment(run.records[-1].at if run.records else None)
    if start is None or end is None:
        return None
    return start, max(start, end)


def maintenance_work(catalog: Catalog, runs: Sequence[Run]) -> list[MaintenanceWork]:
    """Patch waves and failover drills of the ledger as maintenance work, with the targets they touched."""
    work = []
    for run in runs:
        if run.runbook not in MAINTENANCE_RUNBOOKS:
            continue
        span = _run_span(run)
        if span is None:
            continue
        if run.runbook == "patch_wave":
            if not run.facts_of(PATCH_WAVE):
                continue  # planned or dry run only: no host was touched
            touched = frozenset(
                f"host:{_data(fact).get('host')}"
                for fact in run.facts_of(PATCH_HOST)
                if _data(fact).get("host")
            )
        else:
            touched = frozenset(
                f"database:{database.name}"
                for database in catalog.databases
                if database.cluster == run.target
            )
        if not touched:
            continue  # an empty set would mean "every target": a wave that touched no host excludes none
        work.append(MaintenanceWork(run.runbook, run.run_id, span[0], span[1], touched))
    return work


def incident_rows(slo: str, incidents: Sequence[Incident], runs: Sequence[Run]) -> list[IncidentRow]:
    """Each incident with the runs that overlap it or started within :data:`AROUND` of it.

    A run is ``during`` an incident it overlaps, else ``before`` when it started in the hour before
    it, else ``after`` when it started in the hour after it ended. The runs are found by the start
    times (sorted once) and a heap of the runs that started earlier and are still going, so a month
    of a thousand incidents and ten thousand runs is not a thousand passes over every run.
    """
    return _incident_rows(slo, incidents, _sorted_spans(runs))


_Span = tuple[datetime, datetime, int, Run]


def _sorted_spans(runs: Sequence[Run]) -> list[_Span]:
    """(start, end, position, run) of every run with a span, by start (ties in any order: the runs'
    own order comes back from their positions)."""
    return sorted(
        (span[0], span[1], position, run) for position, run in enumerate(runs) if (span := _run_span(run))
    )


def _incident_rows(slo: str, incidents: Sequence[Incident], spans: list[_Span]) -> list[IncidentRow]:
    starts = [item[0] for item in spans]
    going: list[tuple[datetime, int, Run]] = []  # (end, position, run) of runs started before the hour
    pushed = 0
    found: dict[int, IncidentRow] = {}
    for number, incident in sorted(enumerate(incidents), key=lambda item: item[1].start):
        opens = incident.start - AROUND
        while pushed < len(spans) and spans[pushed][0] < opens:
            heapq.heappush(going, (spans[pushed][1], spans[pushed][2], spans[pushed][3]))
            pushed += 1
        while going and going[0][0] <= incident.start:
            heapq.heappop(going)  # ended before this incident, so before every later one too
        # Started more than an hour before: only "during" can hold, and it does for every run left.
        matches = [(position, run, "during") for _end, position, run in going]
        for begin, end, position, run in spans[
            bisect_left(starts, opens) : bisect_right(starts, incident.end + AROUND)
        ]:
            if begin < incident.end and end > incident.start:
                matches.append((position, run, "during"))
            elif opens <= begin < incident.start:
                matches.append((position, run, "before"))
            elif incident.end <= begin <= incident.end + AROUND:
                matches.append((position, run, "after"))
        matches.sort(key=lambda item: item[0])  # the runs' own order, then by start as before
        nearby = [
            NearbyRun(
                run.dag_id,
                run.run_id,
                run.runbook,
                run.target,
                run.started_at,
                run.finished_at,
                run.state,
                relation,
            )
            for _position, run, relation in matches
        ]
        nearby.sort(key=lambda item: item.started_at or "")
        found[number] = IncidentRow(slo, incident, tuple(nearby))
    return [found[number] for number in range(len(incidents))]


def backup_rows(catalog: Catalog, period: MonthPeriod, runs: Sequence[Run]) -> list[BackupRow]:
    """Per database with a backup policy: the month's backup runs, and the largest gap vs its RPO."""
    rows = []
    for database in catalog.databases:
        if database.backup is None:
            continue
        mine = [run for run in runs if run.runbook == BACKUP_RUNBOOK and run.target == database.name]
        in_month = [
            run
            for run in mine
            if (span := _run_span(run)) is not None and period.start <= span[0] < period.end
        ]
        taken = sorted(
            moment
            for run in mine
            for fact in run.facts_of(BACKUP_TAKEN)
            if (moment := _moment(_data(fact).get("finished_at")) or _moment(fact.at)) is not None
            and moment < period.end
        )
        before = [moment for moment in taken if moment < period.start]
        points = [before[-1] if before else period.start]
        points += [moment for moment in taken if moment >= period.start]
        points.append(period.end)
        gap, gap_from, gap_to = timedelta(0), points[0], points[0]
        for first, second in pairwise(points):
            if second - first > gap:
                gap, gap_from, gap_to = second - first, first, second
        succeeded = sum(run.state == "success" for run in in_month)
        rows.append(
            BackupRow(
                database=database.name,
                runs=len(in_month),
                succeeded=succeeded,
                backups=sum(1 for moment in taken if moment >= period.start),
                success_rate=succeeded / len(in_month) if in_month else None,
                largest_gap=gap,
                gap_from=gap_from,
                gap_to=gap_to,
                rpo=database.rpo,
            )
        )
    return rows


def _advisory_date(reason: str) -> tuple[str, date] | None:
    match = _ADVISORY.search(reason)
    if not match:
        return None
    try:
        return match.group(1).rstrip(), date.fromisoformat(match.group(2))
    except ValueError:
        return None


def patch_host_rows(runs: Sequence[Run]) -> tuple[list[PatchHostRow], int]:
    """Per host of each fleet's latest planned (not dry) wave: security updates still pending.

    An update is pending when the snapshot left it out (held, not yet approved, rejected, no advisory,
    host unreachable or excluded) or the wave did not install it (MISSING, FAILED, HELD). The oldest
    advisory is read from the snapshot's reasons (``advisory DSA-... published YYYY-MM-DD``).
    :return: the rows, and how many wave runs the ledger holds.
    """
    latest: dict[str, Run] = {}
    count = 0
    for run in runs:
        planned = run.facts_of(PATCH_PLANNED)
        if not planned or _data(planned[-1]).get("dry_run"):
            continue
        count += 1
        fleet = str(_data(planned[-1]).get("fleet") or run.target or "")
        if fleet not in latest or (run.started_at or "") >= (latest[fleet].started_at or ""):
            latest[fleet] = run
    rows = []
    for fleet, run in sorted(latest.items()):
        plan = _data(run.facts_of(PATCH_PLANNED)[-1])
        snapshot = plan.get("snapshot") or {}
        pins = snapshot.get("pins") or {}
        results = {str(_data(f).get("host")): _data(f) for f in run.facts_of(PATCH_HOST)}
        pending: dict[str, list[str]] = {}
        dated: dict[str, list[tuple[str, date]]] = {}
        hosts = set(pins) | set(results)
        for left in snapshot.get("left_out") or []:
            if not isinstance(left, dict) or left.get("classification") != _SECURITY:
                continue
            host = str(left.get("host"))
            hosts.add(host)
            pending.setdefault(host, []).append(
                f"{left.get('package')} {left.get('version') or ''} ({left.get('kind')})".replace("  ", " ")
            )
            if found := _advisory_date(str(left.get("reason") or "")):
                dated.setdefault(host, []).append(found)
        for host, items in pins.items():
            states = (results.get(host) or {}).get("compliance") or {}
            for pin in items if isinstance(items, list) else []:
                if not isinstance(pin, dict) or pin.get("classification") != _SECURITY:
                    continue
                state = str(states.get(pin.get("package"), "MISSING"))
                if state in _NOT_INSTALLED:
                    pending.setdefault(host, []).append(
                        f"{pin.get('package')} {pin.get('version')} ({state})"
                    )
        for host in sorted(hosts):
            oldest = min(dated.get(host, []), key=lambda item: item[1], default=None)
            rows.append(
                PatchHostRow(
                    fleet=fleet,
                    host=host,
                    snapshot_id=str(plan.get("snapshot_id") or ""),
                    as_of=run.finished_at or run.started_at,
                    pending=tuple(sorted(pending.get(host, []))),
                    oldest_advisory=oldest[0] if oldest else None,
                    oldest_published=oldest[1] if oldest else None,
                )
            )
    return rows, count


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _drill_downtime(data: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(measured write downtime, its target) of a ``failover.drill`` fact, as the drill records them:
    ``figures.write_downtime_s`` and the ``write_downtime_s`` entry of ``targets`` (its ``limit``)."""
    raw = data.get("figures")
    figures: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    measured = _number(figures.get("write_downtime_s"))
    limit = None
    for verdict in data.get("targets") or ():
        if isinstance(verdict, Mapping) and verdict.get("target") == "write_downtime_s":
            limit = _number(verdict.get("limit"))
            if measured is None:
                measured = _number(verdict.get("measured"))
    return measured, limit


def failover_rows(runs: Sequence[Run]) -> list[FailoverRow]:
    """Failover drills with the write downtime they measured against its target (``failover.drill``
    facts: ``figures.write_downtime_s`` and the target's ``limit``). A drill run with no fact is
    listed with its state and unknown figures, never dropped."""
    rows = []
    for run in runs:
        facts = [record for record in run.records if record.kind == FAILOVER_DRILL]
        if not facts and run.runbook != "failover_drill":
            continue
        data = _data(facts[-1]) if facts else {}
        measured, target = _drill_downtime(data)
        rows.append(
            FailoverRow(
                target=str(data.get("cluster") or run.target or run.dag_id),
                run_id=run.run_id,
                at=run.started_at,
                downtime_seconds=measured,
                target_seconds=target,
                state=run.state,
            )
        )
    return sorted(rows, key=lambda row: (row.target, row.at or ""))


def linear_projection(
    cost: CostMonth, *, days: int = PROJECTION_DAYS, why: str = "Cost Explorer's forecast was not available"
) -> CostProjection | None:
    """The month after ``cost.month``: the mean of its last ``days`` days, times that month's days;
    ``why`` says why it is not Cost Explorer's forecast."""
    if not cost.daily:
        return None
    last = sorted(cost.daily)[-days:]
    mean = sum((sum(cost.daily[day].values(), Decimal(0)) for day in last), Decimal(0)) / len(last)
    _, following = month_bounds(cost.month)
    after, end = month_bounds(f"{following:%Y-%m}")
    length = (end - after).days
    return CostProjection(
        f"{following:%Y-%m}",
        (mean * length).quantize(CENT),
        f"linear projection: mean of the last {len(last)} days ({mean.quantize(CENT)} {cost.currency}/day) "
        f"x {length} days ({why})",
    )


def build_monthly_report(
    catalog: Catalog,
    period: MonthPeriod,
    grids: Mapping[str, TargetSamples],
    runs: Sequence[Run],
    *,
    generated_at: datetime,
    cost: CostMonth | None = None,
    cost_problem: str | None = None,
    forecast: CostProjection | None = None,
    no_forecast: str = "Cost Explorer's forecast was not available",
    ledger_anchor: Mapping[str, Any] | None = None,
) -> MonthlyReport:
    """Compute every section of ``catalog``'s report for ``period``.

    :param grids: slice grid per SLO target key (every target of every SLO).
    :param runs: the ledger's runs up to the month's end (earlier ones only count for backup gaps).
    :param forecast: Cost Explorer's forecast of the next month; without it a linear projection
        that states ``no_forecast``, why there is none.
    """
    in_month = [
        run
        for run in runs
        if (span := _run_span(run)) is not None and span[0] < period.end and span[1] >= period.start
    ]
    work = maintenance_work(catalog, in_month)
    report = MonthlyReport(
        estate=catalog.estate,
        description=catalog.description,
        period=period,
        generated_at=generated_at,
        cost=cost,
        cost_problem=cost_problem,
        runs_in_month=len(in_month),
        ledger_anchor=dict(ledger_anchor or {}),
    )
    spans = _sorted_spans(in_month)  # once for every SLO's incidents
    for slo in catalog.slos:
        month = slo_month(slo, period, grids, work)
        report.slos.append(month)
        report.incidents += _incident_rows(slo.name, month.incidents, spans)
    report.backups = backup_rows(catalog, period, runs)
    report.drills = drill_rows(in_month)
    report.patches, report.patch_runs = patch_host_rows([run for run in runs if _before(run, period)])
    report.failovers = failover_rows(in_month)
    if cost is not None:
        report.projection = forecast or linear_projection(cost, why=no_forecast)
    return report


def _before(run: Run, period: MonthPeriod) -> bool:
    span = _run_span(run)
    return span is not None and span[0] < period.end


__all__ = [
    "AROUND",
    "BackupRow",
    "CostProjection",
    "FailoverRow",
    "IncidentRow",
    "MonthlyReport",
    "NearbyRun",
    "PatchHostRow",
    "backup_rows",
    "build_monthly_report",
    "failover_rows",
    "incident_rows",
    "linear_projection",
    "maintenance_work",
    "patch_host_rows",
]
