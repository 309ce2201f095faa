"""Judge database and host states against the catalog: pure functions, no I/O.

Each finding says what was checked, what was seen and, when it is not healthy, why, in the words the
on-call engineer reads in the task log and the failure message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cloudops.catalog.models import Catalog, Database, Fleet, Host
from cloudops.engines import DatabaseState
from cloudops.fleet.health import HostState

OK, DEGRADED, DOWN, ERROR = "ok", "degraded", "down", "error"


@dataclass(frozen=True)
class Finding:
    """The health of one target.

    :param target: ``database orders_pg`` or ``host web-1``.
    :param status: ``ok``, ``degraded`` (up but outside policy), ``down`` or ``error`` (could not be
        checked, e.g. its Airflow connection is missing).
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
    """Compare one database's state with its catalog role and replication policy."""
    target = f"database {database.name}"
    if not state.reachable:
        return Finding(target, DOWN, "unreachable", f"unreachable: {state.error}")
    detail = f"{state.role}, {database.engine} {state.version}"
    if state.role != database.role:
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
class HealthReport:
    """The verdict on a whole estate."""

    estate: str
    findings: list[Finding]

    @property
    def unhealthy(self) -> list[Finding]:
        """Findings that are not ok, in check order."""
        return [finding for finding in self.findings if finding.status != OK]

    @property
    def healthy(self) -> bool:
        """True when every target is ok."""
        return not self.unhealthy

    def summary(self) -> str:
        """One paragraph naming every unhealthy target and why."""
        total, bad = len(self.findings), self.unhealthy
        if not bad:
            return f"estate {self.estate}: all {total} targets healthy"
        lines = [f"estate {self.estate}: {len(bad)} of {total} targets unhealthy"]
        lines += [f"- {finding.target} is {finding.status}: {finding.problem}" for finding in bad]
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
    "Finding",
    "HealthReport",
    "assess_database",
    "assess_host",
    "render_table",
]
