"""Judge database and host states against the catalog: pure functions, no I/O.

Each finding says what was checked, what was seen and, when it is not healthy, why, in the words the
on-call engineer reads in the task log and the failure message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cloudops.catalog.models import Catalog, Database, Fleet, Host, render_duration
from cloudops.clusters import cluster_of
from cloudops.engines import DatabaseState
from cloudops.engines.replication import Topology
from cloudops.fleet.health import HostState

OK, DEGRADED, DOWN, ERROR, WARNING = "ok", "degraded", "down", "error", "warning"
# How long after its scheduled time a run may still be going (its dagrun_timeout; the DAG policy test
# checks they agree). A backup's grace is its catalog deadline instead: that is the promise.
RUNBOOK_GRACE = {"restore_drill": timedelta(hours=8), "ebs_snapshot": timedelta(hours=3)}
_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
}


@dataclass(frozen=True)
class Finding:
    """The health of one target.

    :param target: ``database orders_pg`` or ``host web-1``.
    :param status: ``ok``, ``degraded`` (up but outside policy), ``down``, ``error`` (could not be
        checked, e.g. its Airflow connection is missing) or ``warning`` (shown, but does not fail the
        check: e.g. the runbooks' state could not be read, or the catalog pauses a runbook).
    :param detail: what was seen, for the table.
    :param problem: why it is not ok, for the failure message; None when ok.
    """

    target: str
    status: str
    detail: str
    problem: str | None = None


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value < 120 else f"{value / 60:.0f}m"


def assess_database(database: Database, state: DatabaseState, catalog: Catalog) -> Finding:
    """Compare one database's state with its catalog role and replication policy.

    A member of one of the catalog's clusters is judged as what it is now: which member is the primary
    is the cluster's finding (:func:`assess_cluster`), so a failover is no role mismatch here.
    """
    target = f"database {database.name}"
    if not state.reachable:
        return Finding(target, DOWN, "unreachable", f"unreachable: {state.error}")
    detail = f"{state.role}, {database.engine} {state.version}"
    cluster = cluster_of(catalog, database.name)
    if cluster is not None and state.role != database.role:
        detail += f" (catalog: {database.role}; see cluster {cluster.name})"
    if cluster is None and state.role != database.role:
        return Finding(
            target,
            DEGRADED,
            detail,
            f"the catalog says {database.role} but the server is a {state.role}: a failover may "
            "have happened; check the cluster and update the catalog or fail back",
        )
    if state.role == "replica":
        lag = state.replication_lag_seconds
        limit = database.max_replication_lag.total_seconds()
        detail += f", lag {_seconds(lag)}" if lag is not None else ", lag unknown"
        if not state.streaming:
            return Finding(target, DEGRADED, detail, "replica is not streaming from its primary")
        if lag is None or lag > limit:
            seen = "unknown" if lag is None else _seconds(lag)
            return Finding(target, DEGRADED, detail, f"replication lag {seen} exceeds {_seconds(limit)}")
        return Finding(target, OK, detail)
    if cluster is not None:
        expected_replicas = [m.member_name for m in cluster.members if m.member_name != database.name]
    else:
        expected_replicas = [
            other.name
            for other in catalog.databases
            if other.cluster and other.cluster == database.cluster and other.role == "replica"
        ]
    if state.replicas_connected is not None:
        detail += f", {state.replicas_connected} replica(s) streaming"
        if expected_replicas and state.replicas_connected == 0:
            return Finding(
                target,
                DEGRADED,
                detail,
                f"no replica is streaming (expected {', '.join(expected_replicas)})",
            )
    return Finding(target, OK, detail)


# A ledger fact is input: its free text is bounded before it reaches a finding.
_FACT_TEXT_MAX = 200


@dataclass(frozen=True)
class FailoverMove:
    """The newest ``failover.drill`` fact of a cluster: which drill run left which member primary.

    :param failed_back: the drill put the original primary back.
    :param at: when it was recorded (ISO 8601), for the message.
    """

    cluster: str
    run_id: str | None
    new_primary: str | None
    failed_back: bool
    at: str | None = None

    @classmethod
    def from_fact(cls, data: Mapping[str, object], at: str | None = None) -> FailoverMove:
        """Read a fact's ``data`` (``cluster``, ``run_id``, ``new_primary``, ``failed_back``); a field of
        the wrong type reads as unknown (None, or not failed back)."""

        def text(name: str) -> str | None:
            value = data.get(name)
            return value[:_FACT_TEXT_MAX] if isinstance(value, str) and value else None

        return cls(
            cluster=text("cluster") or "",
            run_id=text("run_id"),
            new_primary=text("new_primary"),
            failed_back=data.get("failed_back") is True,
            at=at,
        )


def assess_cluster(
    cluster: str,
    topology: Topology,
    *,
    catalog_primary: str | None,
    last_move: FailoverMove | None = None,
    history_problem: str | None = None,
) -> list[Finding]:
    """Judge a cluster from its members' answers: one primary, wherever it is.

    Pure. No member, or two members, taking writes is *down* (and fails the check); a member down or a
    replica not streaming is *degraded*; a primary that is not the catalog's is a *warning* naming what
    moved it: the newest failover drill whose ``new_primary`` is the primary now and that did not fail
    back, or "not recorded: investigate" (a real failover, or a move nobody recorded).

    :param catalog_primary: the member the catalog says is primary (None: it states no expectation).
    :param last_move: the cluster's newest ``failover.drill`` fact, when one was read.
    :param history_problem: why the ledger could not be read, for the warning.
    """
    target = f"cluster {cluster}"
    problems = "; ".join(topology.problems)
    if topology.primary is None:
        writers = [s for s in topology.members if s.reachable and s.role == "primary"]
        if len(writers) > 1:
            return [
                Finding(
                    target,
                    DOWN,
                    f"{len(writers)} primaries: " + ", ".join(s.name for s in writers),
                    f"{len(writers)} members claim to be the primary: two writers (a split brain); fence all "
                    f"but one before anything else ({problems})",
                )
            ]
        return [Finding(target, DOWN, "no primary", f"no member claims to be the primary ({problems})")]
    findings = []
    if topology.problems:
        findings.append(Finding(target, DEGRADED, topology.summary, problems))
    primary = topology.primary
    if catalog_primary is not None and primary != catalog_primary:
        if last_move is not None and last_move.new_primary == primary and not last_move.failed_back:
            how = f"moved by drill run {last_move.run_id or '(no run id)'}"
            if last_move.at:
                how += f", recorded {last_move.at}"
        else:
            how = "not recorded: investigate"
            if last_move is not None:
                ended = (
                    f"failed back to {catalog_primary}"
                    if last_move.failed_back
                    else f"left {last_move.new_primary} primary"
                )
                how += f"; the last drill, run {last_move.run_id or '(no run id)'}, {ended}"
            if history_problem:
                how += f"; {history_problem}"
        findings.append(
            Finding(
                target,
                WARNING,
                f"primary {primary} (catalog: {catalog_primary})",
                f"the primary of cluster {cluster} is now {primary} ({how}); backups read it; fail back to "
                f"{catalog_primary}, or make {primary} the catalog's primary",
            )
        )
    if not findings:
        findings.append(Finding(target, OK, topology.summary))
    return findings


def assess_host(fleet: Fleet, host: Host, state: HostState) -> Finding:
    """Compare one host's state with its fleet's disk limit."""
    target = f"host {host.name}"
    if not state.reachable:
        return Finding(target, DOWN, "unreachable", f"unreachable over SSH: {state.error}")
    uptime = state.uptime_seconds or 0.0
    fullest = max(state.disk_used_percent.items(), key=lambda item: item[1], default=None)
    detail = f"up {uptime / 86400:.1f}d"
    if fullest:
        detail += f", fullest disk {fullest[0]} {fullest[1]}%"
    if state.disk_error:
        # Up, but its disks cannot be judged: never healthy by default (a full disk would not show).
        return Finding(
            target, DEGRADED, detail + ", disk use unknown", f"disk use unknown: {state.disk_error}"
        )
    over = {
        mount: used for mount, used in state.disk_used_percent.items() if used > fleet.disk_used_max_percent
    }
    if over:
        listed = ", ".join(f"{mount} {used}%" for mount, used in sorted(over.items()))
        return Finding(target, DEGRADED, detail, f"disk use over {fleet.disk_used_max_percent}%: {listed}")
    return Finding(target, OK, detail)


@dataclass(frozen=True)
class RunbookExpectation:
    """A runbook DAG the catalog calls for, and how recent its last success must be.

    :param dag_id: e.g. ``backup__orders_pg``.
    :param target: what it acts on, e.g. ``database orders_pg``.
    :param schedule: its cron (or preset) in ``timezone``; None when it runs after ``follows``.
    :param follows: the DAG whose success starts it (a drill on the backup's Asset), else None.
    :param grace: how long after its scheduled time (or ``follows``' success) a run may take.
    :param paused_by_catalog: the catalog pauses it (``paused: true``).
    """

    dag_id: str
    target: str
    schedule: str | None
    timezone: str
    grace: timedelta
    follows: str | None = None
    paused_by_catalog: bool = False


@dataclass(frozen=True)
class RunbookState:
    """What Airflow knows of one runbook DAG.

    :param exists: Airflow has the DAG (parsed, not stale).
    :param last_success: when its newest successful run ended.
    :param runs: whether it has any run at all.
    :param next_run: when the scheduler will create its next run.
    :param running_since: when its newest run started (or was queued), while it is still going.
    """

    dag_id: str
    exists: bool
    is_paused: bool = False
    last_success: datetime | None = None
    runs: bool = False
    next_run: datetime | None = None
    running_since: datetime | None = None


def expected_runbooks(catalog: Catalog) -> list[RunbookExpectation]:
    """Every scheduled runbook DAG the estate's targets call for (the health check itself aside)."""
    expected = []
    for database in catalog.databases:
        if database.backup is None:
            continue
        backup_dag = f"backup__{database.name}"
        target = f"database {database.name}"
        expected.append(
            RunbookExpectation(
                backup_dag,
                target,
                database.backup.schedule,
                catalog.timezone,
                database.backup.deadline,
                paused_by_catalog=database.backup.paused,
            )
        )
        if database.drill:
            on_backup = database.drill.schedule == "on_backup"
            expected.append(
                RunbookExpectation(
                    f"restore_drill__{database.name}",
                    target,
                    None if on_backup else database.drill.schedule,
                    catalog.timezone,
                    RUNBOOK_GRACE["restore_drill"],
                    follows=backup_dag if on_backup else None,
                    paused_by_catalog=database.drill.paused,
                )
            )
    for fleet in catalog.fleets:
        if fleet.snapshots:
            expected.append(
                RunbookExpectation(
                    f"ebs_snapshot__{fleet.name}",
                    f"fleet {fleet.name}",
                    fleet.snapshots.schedule,
                    catalog.timezone,
                    RUNBOOK_GRACE["ebs_snapshot"],
                    paused_by_catalog=fleet.snapshots.paused,
                )
            )
    return expected


def last_due(schedule: str, timezone: str, *, now: datetime, grace: timedelta) -> datetime | None:
    """The latest scheduled time whose run should have finished by ``now`` (None: no fixed times)."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    cron = _PRESETS.get(schedule, schedule)
    if cron.startswith("@"):  # @once, @continuous: nothing is due at fixed times
        return None
    start = (now - grace).astimezone(ZoneInfo(timezone))
    due: datetime = croniter(cron, start).get_prev(datetime)
    return due


def assess_runbook(
    expected: RunbookExpectation, state: RunbookState, others: Mapping[str, RunbookState], *, now: datetime
) -> Finding:
    """Judge one runbook DAG: missing, paused or stale is an outage of what it does."""
    target = f"runbook {expected.dag_id}"
    if not state.exists:
        return Finding(
            target,
            DOWN,
            "missing",
            f"Airflow has no DAG {expected.dag_id} for {expected.target}: nothing of it runs; read the "
            "DAG import errors (a catalog file or DAG file that fails to load)",
        )
    if expected.paused_by_catalog:
        if state.is_paused:
            return Finding(
                target,
                WARNING,
                "paused by the catalog",
                f"the catalog pauses it: {expected.target} gets none",
            )
        return Finding(
            target,
            WARNING,
            "active, the catalog pauses it",
            "the catalog says paused but the DAG is active in Airflow (paused: true only applies when the "
            "DAG is created): pause it in the UI, or remove paused from the catalog",
        )
    if state.is_paused:
        return Finding(
            target,
            DEGRADED,
            "paused",
            f"paused in Airflow: it does not run for {expected.target} (an outage of what it does); unpause "
            "it, or set paused: true in the catalog if that is intended",
        )
    last = f"last success {_iso(state.last_success)}" if state.last_success else "never succeeded"
    due, why = _due(expected, others, now=now)
    if due is None or (state.last_success is not None and state.last_success >= due):
        return Finding(target, OK, f"active, {last}")
    if not state.runs and expected.follows is None:
        # A DAG just created (after its due time) gets its first run from the scheduler's next loop; a
        # scheduler that creates no runs at all would not run this health check either.
        return Finding(target, OK, f"active, no run yet (next due {_iso(state.next_run)})")
    if state.running_since is not None and state.running_since + expected.grace > now:
        # The run that catches up is still within its time (a DAG created after its last due time
        # starts with one at once).
        return Finding(target, OK, f"active, {last}, a run in progress since {_iso(state.running_since)}")
    return Finding(
        target,
        DEGRADED,
        f"active, {last}",
        f"{last}, but a run was due at {_iso(due)} ({why}): find out why it did not run or failed",
    )


def _due(
    expected: RunbookExpectation, others: Mapping[str, RunbookState], *, now: datetime
) -> tuple[datetime | None, str]:
    grace = render_duration(expected.grace)
    if expected.follows is not None:
        upstream = others.get(expected.follows)
        if upstream is None or upstream.last_success is None or upstream.last_success + expected.grace > now:
            return None, ""
        return upstream.last_success, f"after {expected.follows} succeeded, within {grace}"
    if expected.schedule is None:
        return None, ""
    due = last_due(expected.schedule, expected.timezone, now=now, grace=expected.grace)
    return due, f"schedule {expected.schedule!r} {expected.timezone}, within {grace}"


def _iso(value: datetime | None) -> str:
    from datetime import UTC

    return value.astimezone(UTC).isoformat(timespec="minutes").replace("+00:00", "Z") if value else "-"


def runbook_state_unknown(estate: str, reason: str) -> Finding:
    """The finding when Airflow's view of the runbooks cannot be read (e.g. under `airflow dags test`)."""
    return Finding(f"runbooks of estate {estate}", WARNING, "not checked", f"runbook state unknown: {reason}")


@dataclass(frozen=True)
class HealthReport:
    """The verdict on a whole estate."""

    estate: str
    findings: list[Finding]

    @property
    def unhealthy(self) -> list[Finding]:
        """Findings that are neither ok nor warnings, in check order."""
        return [finding for finding in self.findings if finding.status not in (OK, WARNING)]

    @property
    def warnings(self) -> list[Finding]:
        """Findings shown to on-call that do not fail the check."""
        return [finding for finding in self.findings if finding.status == WARNING]

    @property
    def healthy(self) -> bool:
        """True when every target is ok."""
        return not self.unhealthy

    def summary(self) -> str:
        """One paragraph naming every unhealthy target and why."""
        bad, warnings = self.unhealthy, self.warnings
        total = len(self.findings) - len(warnings)
        if not bad:
            lines = [f"estate {self.estate}: all {total} targets healthy"]
        else:
            lines = [f"estate {self.estate}: {len(bad)} of {total} targets unhealthy"]
        lines += [f"- {finding.target} is {finding.status}: {finding.problem}" for finding in bad]
        if warnings:
            lines += [f"{len(warnings)} warning(s):"]
            lines += [f"- {finding.target}: {finding.problem}" for finding in warnings]
        return "\n".join(lines)

    def table(self) -> str:
        """A fixed-width table of every finding, for the task log."""
        return render_table(
            ["target", "status", "detail"], [[f.target, f.status, f.detail] for f in self.findings]
        )


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render rows as a plain-text table with aligned columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=False)).rstrip()

    return "\n".join([line(header), line(["-" * width for width in widths]), *(line(row) for row in rows)])


__all__ = [
    "DEGRADED",
    "DOWN",
    "ERROR",
    "OK",
    "RUNBOOK_GRACE",
    "WARNING",
    "FailoverMove",
    "Finding",
    "HealthReport",
    "RunbookExpectation",
    "RunbookState",
    "assess_cluster",
    "assess_database",
    "assess_host",
    "assess_runbook",
    "expected_runbooks",
    "last_due",
    "render_table",
    "runbook_state_unknown",
]
