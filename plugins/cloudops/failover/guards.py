"""The preflight guards of a failover drill: pure functions over facts already read, each returning
a :class:`GuardDecision` (passed or not, and the sentence saying why, naming cluster and node).

They are run at preflight and the lag guard once more within a second of the action (orchestrator
#1482 shows what a single early check misses). :func:`preflight` runs them all and keeps every
decision, so the record shows what was checked even when the first guard already refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cloudops.engines.replication import MemberState, ReplicationLag, Topology, same_server
from cloudops.failover.policy import DrillGuards


@dataclass(frozen=True)
class GuardDecision:
    """One guard's answer: ``passed`` and the reason (logged, recorded and asserted in tests)."""

    guard: str
    passed: bool
    reason: str


@dataclass(frozen=True)
class Preflight:
    """Every guard's decision; the drill may act only when all passed."""

    cluster: str
    decisions: tuple[GuardDecision, ...]

    @property
    def passed(self) -> bool:
        """All guards passed."""
        return all(d.passed for d in self.decisions)

    @property
    def refusals(self) -> tuple[GuardDecision, ...]:
        """The guards that refused."""
        return tuple(d for d in self.decisions if not d.passed)

    def explain(self) -> str:
        """One line: why the drill may go ahead, or every reason it may not."""
        if self.passed:
            return f"{self.cluster}: preflight passed ({len(self.decisions)} guards)"
        return f"{self.cluster}: drill refused: " + "; ".join(d.reason for d in self.refusals)


def lag_guard(cluster: str, lag: ReplicationLag, guards: DrillGuards) -> GuardDecision:
    """The candidate's replay lag within both bounds (bytes and seconds); unknown is not within."""
    within, why = lag.within(max_bytes=guards.max_lag_bytes, max_seconds=guards.max_lag_s)
    return GuardDecision("lag", within, f"{cluster}: {why}")


def _healthy_replica(member: MemberState, primary: MemberState) -> bool:
    return (
        member.reachable
        and member.role == "replica"
        and bool(member.streaming)
        and (member.upstream is None or same_server(member.upstream, primary.address))
        and (primary.timeline is None or member.timeline is None or member.timeline == primary.timeline)
    )


def healthy_replicas_guard(topology: Topology, guards: DrillGuards) -> GuardDecision:
    """At least ``min_healthy_replicas`` replicas streaming from the one primary on its timeline."""
    cluster = topology.cluster
    if topology.primary is None:
        return GuardDecision(
            "healthy_replicas",
            False,
            f"{cluster}: no single primary ({topology.summary}): " + "; ".join(topology.problems),
        )
    primary = topology.member(topology.primary)
    healthy = [m.name for m in topology.members if _healthy_replica(m, primary)]
    need = guards.min_healthy_replicas
    if len(healthy) < need:
        others = [m for m in topology.members if m.name != primary.name and m.name not in healthy]
        why = ", ".join(
            f"{m.name} {'unreachable' if not m.reachable else 'not streaming from the primary'}"
            for m in others
        )
        return GuardDecision(
            "healthy_replicas",
            False,
            f"{cluster}: {len(healthy)} healthy replica(s) of primary {primary.name}, {need} required"
            + (f" ({why})" if why else ""),
        )
    return GuardDecision(
        "healthy_replicas",
        True,
        f"{cluster}: {len(healthy)} healthy replica(s) of primary {primary.name} ({', '.join(healthy)}); "
        f"{need} required",
    )


def candidate_guard(topology: Topology, candidate: str) -> GuardDecision:
    """The candidate is a member, up, a replica streaming from the primary on its timeline."""
    cluster = topology.cluster
    try:
        member = topology.member(candidate)
    except KeyError:
        names = ", ".join(m.name for m in topology.members)
        return GuardDecision("candidate", False, f"{cluster}: {candidate} is no member (members: {names})")
    if not member.reachable:
        return GuardDecision(
            "candidate", False, f"{cluster}: candidate {candidate} ({member.address}) is down: {member.error}"
        )
    if member.role != "replica":
        return GuardDecision(
            "candidate",
            False,
            f"{cluster}: candidate {candidate} ({member.address}) is "
            f"{member.role or 'neither primary nor replica'}, not a replica",
        )
    if topology.primary is None:
        return GuardDecision(
            "candidate", False, f"{cluster}: no single primary for {candidate} to take over from"
        )
    primary = topology.member(topology.primary)
    if not _healthy_replica(member, primary):
        return GuardDecision(
            "candidate",
            False,
            f"{cluster}: candidate {candidate} ({member.address}) does not stream from the primary "
            f"{primary.name} on its timeline (streaming {member.streaming}, upstream {member.upstream}, "
            f"timeline {member.timeline} vs {primary.timeline})",
        )
    return GuardDecision(
        "candidate",
        True,
        f"{cluster}: candidate {candidate} ({member.address}) streams from {primary.name} on timeline "
        f"{member.timeline}",
    )


def interval_guard(
    cluster: str, last_drill_at: datetime | None, now: datetime, guards: DrillGuards
) -> GuardDecision:
    """At least ``min_interval`` since the cluster's last drill (from the evidence ledger)."""
    if last_drill_at is None:
        return GuardDecision("interval", True, f"{cluster}: no earlier drill recorded")
    since = now - last_drill_at
    if since < guards.min_interval:
        wait = guards.min_interval - since
        return GuardDecision(
            "interval",
            False,
            f"{cluster}: the last drill was at {last_drill_at.isoformat()}, {_duration(since)} ago; "
            f"the minimum interval is {_duration(guards.min_interval)} (next in {_duration(wait)})",
        )
    return GuardDecision(
        "interval",
        True,
        f"{cluster}: the last drill was {_duration(since)} ago (minimum {_duration(guards.min_interval)})",
    )


def window_guard(cluster: str, now: datetime, guards: DrillGuards) -> GuardDecision:
    """``now`` lies in the drill window (no window: any time)."""
    if guards.window is None:
        return GuardDecision("window", True, f"{cluster}: no drill window set: any time")
    inside = guards.window.contains(now)
    where = "inside" if inside else "outside"
    return GuardDecision(
        "window",
        inside,
        f"{cluster}: {now.isoformat()} is {where} the drill window {guards.window.describe()}",
    )


def mode_guard(cluster: str, mode: str, guards: DrillGuards) -> GuardDecision:
    """The drill's mode is one the catalog allows for the cluster (``crash`` only where allowed)."""
    allowed = ", ".join(sorted(guards.modes_allowed))
    if mode not in guards.modes_allowed:
        return GuardDecision(
            "mode", False, f"{cluster}: mode {mode!r} is not allowed for this cluster (allowed: {allowed})"
        )
    return GuardDecision("mode", True, f"{cluster}: mode {mode!r} is allowed ({allowed})")


_SYNC_CAPABLE = {"sync", "quorum", "potential"}


def sync_standby_guard(topology: Topology, mode: str, candidate: str) -> GuardDecision:
    """Never crash a primary whose writes wait for synchronous standbys when only one can take that
    part: the new primary would have none and writes would block (strict) or lose their guarantee.

    A planned switchover with one synchronous standby passes (nothing is crashed; the new primary's
    ``synchronous_standby_names`` decides, and the reason says so).
    """
    cluster = topology.cluster
    if topology.primary is None:
        return GuardDecision("sync_standby", False, f"{cluster}: no single primary to read the sync state of")
    primary = topology.member(topology.primary)
    sync = [d for d in primary.downstream if d.sync_state in {"sync", "quorum"}]
    if not sync:
        return GuardDecision(
            "sync_standby", True, f"{cluster}: replication from {primary.name} is asynchronous"
        )
    capable = [d for d in primary.downstream if d.sync_state in _SYNC_CAPABLE and d.state == "streaming"]
    names = ", ".join(d.name for d in capable)
    if mode == "crash" and len(capable) < 2:
        return GuardDecision(
            "sync_standby",
            False,
            f"{cluster}: {primary.name} replicates synchronously to {names or 'no streaming standby'} only; "
            f"a crash drill needs at least 2 sync-capable standbys, or writes block once {candidate} is "
            "promoted",
        )
    return GuardDecision(
        "sync_standby",
        True,
        f"{cluster}: {len(capable)} sync-capable standby(s) of {primary.name} ({names}); mode {mode!r}",
    )


def catalog_topology_guard(topology: Topology, expected: Mapping[str, str | None]) -> GuardDecision:
    """The servers are what the catalog says: every catalog member answers, at its catalog address
    when the catalog gives one, and exactly one of them takes writes.

    :param expected: the catalog's members, each with its ``host:port`` or None when not given.
    """
    cluster = topology.cluster
    problems: list[str] = []
    found = {m.name: m for m in topology.members}
    for name, address in expected.items():
        member = found.get(name)
        if member is None:
            problems.append(f"{name} is in the catalog but was not asked")
        elif not member.reachable:
            problems.append(f"{name} ({member.address}) is down: {member.error}")
        elif address and not same_server(member.address, address):
            problems.append(f"{name} answers at {member.address}, the catalog says {address}")
    extra = sorted(set(found) - set(expected))
    if extra:
        problems.append(f"{', '.join(extra)} answered but are not catalog members")
    writers = [m.name for m in topology.members if m.reachable and m.role == "primary"]
    if len(writers) != 1:
        problems.append(
            f"{len(writers)} members take writes ({', '.join(writers) or 'none'}); exactly one must"
        )
    if problems:
        return GuardDecision(
            "catalog_topology",
            False,
            f"{cluster}: topology does not match the catalog: " + "; ".join(problems),
        )
    return GuardDecision(
        "catalog_topology",
        True,
        f"{cluster}: the {len(expected)} catalog members answer; {topology.summary}",
    )


def activity_guard(
    cluster: str, member: str, found: Sequence[str] | None, *, longer_than_s: float, error: str | None = None
) -> GuardDecision:
    """No backup, base backup or transaction older than ``longer_than_s`` runs on the primary: a fast
    stop would cut it short (and a dump would fail half-way).

    :param found: what runs (one sentence each); None: the manager cannot tell (``error`` says why, or
        the manager does not report it), which passes with that said.
    """
    if found is None:
        return GuardDecision(
            "running_work",
            error is None,
            f"{cluster}: running work on {member} "
            + (f"could not be read: {error}" if error else "is not reported by this manager: not checked"),
        )
    if found:
        return GuardDecision(
            "running_work",
            False,
            f"{cluster}: {member} is busy: "
            + "; ".join(found)
            + f" (bound {longer_than_s:g} s for transactions)",
        )
    return GuardDecision(
        "running_work",
        True,
        f"{cluster}: no backup and no transaction older than {longer_than_s:g} s on {member}",
    )


def probe_guard(
    cluster: str, primary: MemberState | None, reached: str | None, error: str | None
) -> GuardDecision:
    """The probe's connection (the application's) reaches the primary now."""
    if reached is None:
        return GuardDecision("probe", False, f"{cluster}: the probe's connection reaches no writer: {error}")
    if primary is None:
        return GuardDecision(
            "probe", False, f"{cluster}: the probe reaches {reached}, but there is no single primary"
        )
    if not same_server(reached, primary.address):
        return GuardDecision(
            "probe",
            False,
            f"{cluster}: the probe's connection reaches {reached}, not the primary {primary.name} "
            f"({primary.address}): it would not measure this cluster",
        )
    return GuardDecision(
        "probe", True, f"{cluster}: the probe's connection reaches the primary {primary.name} ({reached})"
    )


def preflight(
    topology: Topology,
    *,
    candidate: str,
    mode: str,
    lag: ReplicationLag | None,
    last_drill_at: datetime | None,
    now: datetime,
    guards: DrillGuards,
    lag_error: str | None = None,
) -> Preflight:
    """Run every guard and keep each decision.

    :param lag: the candidate's lag read just now; None when it could not be read (``lag_error`` says
        why), which refuses the drill.
    """
    cluster = topology.cluster
    decisions: list[GuardDecision] = [
        mode_guard(cluster, mode, guards),
        window_guard(cluster, now, guards),
        interval_guard(cluster, last_drill_at, now, guards),
        candidate_guard(topology, candidate),
        healthy_replicas_guard(topology, guards),
        sync_standby_guard(topology, mode, candidate),
    ]
    if lag is not None:
        decisions.append(lag_guard(cluster, lag, guards))
    else:
        decisions.append(
            GuardDecision("lag", False, f"{cluster}: the lag of {candidate} could not be read: {lag_error}")
        )
    return Preflight(cluster, tuple(decisions))


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    hours, rest = divmod(max(0, seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


__all__ = [
    "GuardDecision",
    "Preflight",
    "activity_guard",
    "candidate_guard",
    "catalog_topology_guard",
    "healthy_replicas_guard",
    "interval_guard",
    "lag_guard",
    "mode_guard",
    "preflight",
    "probe_guard",
    "sync_standby_guard",
    "window_guard",
]
