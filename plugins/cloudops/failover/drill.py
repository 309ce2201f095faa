"""A planned failover drill from start to record: the one function the drill task calls, owning the
write probe and the actions for the whole window (the probe must not move between workers).

1. Read the topology; the candidate is the named replica or the first healthy one.
2. Preflight: every guard of :mod:`cloudops.failover.guards`; a refusal moves nothing
   (:class:`DrillRefused` carries the record with each reason).
3. Start the probe through the application's connection string; wait for a healthy baseline.
4. Read the candidate's lag again, within a second of the action (the lag at injection, recorded).
5. Switch over (the manager's way); verify the new primary is the candidate, that one writer exists
   (two writers: fence the old one and stop) and that probe writes land on it; read back the ids.
6. Fail back the same way, unless the policy keeps the new primary, the switchover aborted or
   degraded, or the write downtime was over twice its target (page: a person decides).
7. Stop the probe, read back again, judge (:mod:`cloudops.failover.analysis`), and return the
   :class:`~cloudops.failover.record.DrillRecord`.

Every wait is bounded; every decision is logged with its reason and lands in the record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cloudops.engines.replication import (
    RejoinFailed,
    ReplicationLag,
    Step,
    SwitchoverAborted,
    SwitchoverResult,
    Topology,
)
from cloudops.errors import CloudOpsError, ReplicationError, first_line
from cloudops.failover.analysis import analyse, verdicts
from cloudops.failover.guards import (
    GuardDecision,
    Preflight,
    activity_guard,
    catalog_topology_guard,
    lag_guard,
    preflight,
    probe_guard,
)
from cloudops.failover.managers import SwitchoverManager
from cloudops.failover.policy import DrillGuards, DrillTargets
from cloudops.failover.probe import ProbeEndpoint, ProbeError, WriteProbe, probe_target
from cloudops.failover.record import DrillRecord, PreState

log = logging.getLogger(__name__)

# Over this many times its target, the downtime is an incident, not a drill: no automatic fail-back.
DOWNTIME_PAGE_FACTOR = 2.0
# The candidate's lag is read again at most this long before the action (orchestrator #1482).
LAG_RECHECK_WITHIN_S = 1.0


class DrillRefused(CloudOpsError):
    """Preflight refused the drill: nothing was moved. ``record`` holds every guard's decision."""

    def __init__(self, message: str, record: DrillRecord) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class DrillOptions:
    """How one drill runs (the catalog's drill policy maps onto it).

    :param fail_back: switch back to the original primary after the drill (``always``), or keep the
        new primary (``accept-new-primary``).
    :param baseline_acks: probe writes acknowledged before the action (a healthy probe first).
    :param settle_s: time between switchover and fail-back, so the two windows stay apart.
    :param stall_threshold_s: an acknowledged write slower than this counts as downtime.
    """

    fail_back: bool = True
    baseline_acks: int = 30
    settle_s: float = 1.0
    verify_acks: int = 10
    verify_within_s: float = 30.0
    stall_threshold_s: float = 0.25
    probe_interval_s: float = 0.015


def _choose_candidate(topology: Topology, candidate: str | None) -> str:
    if candidate:
        return candidate
    streaming = [m.name for m in topology.members if m.reachable and m.role == "replica" and m.streaming]
    return streaming[0] if streaming else (topology.replicas[0] if topology.replicas else "")


def _pre_state(topology: Topology, candidate: str, lag: ReplicationLag) -> PreState:
    primary = topology.member(topology.primary) if topology.primary else None
    return PreState(
        primary=topology.primary or "",
        replicas=topology.replicas,
        candidate=candidate,
        lag_bytes=lag.bytes,
        lag_seconds=lag.seconds,
        lag_how=lag.how,
        timelines={m.name: m.timeline for m in topology.members},
        positions={m.name: m.position for m in topology.members},
        sync_states={d.name: d.sync_state for d in (primary.downstream if primary else ())},
        summary=topology.summary,
        read_at=time.time(),
    )


def _verify_primary(
    manager: SwitchoverManager, expected: str, probe: WriteProbe, options: DrillOptions, record: DrillRecord
) -> str | None:
    """Check the expected member is the one writer and probe writes land; None, or what is wrong."""
    started = time.time()
    found = manager.topology()
    writers = [m.name for m in found.members if m.reachable and m.role == "primary"]
    if len(writers) > 1:
        others = [w for w in writers if w != expected]
        fenced = [manager.fence(w) for w in others]
        problem = f"two writers after the switchover ({', '.join(writers)}): fenced {', '.join(others)}"
        record.phases.append(
            Step("verify", started, time.time(), f"{problem}: {'; '.join(fenced)}", ok=False)
        )
        return problem
    if found.primary != expected:
        problem = f"expected {expected} to be primary, found: {found.summary}"
        record.phases.append(Step("verify", started, time.time(), problem, ok=False))
        return problem
    landed = probe.wait_for_acks(options.verify_acks, within_s=options.verify_within_s)
    detail = f"{found.summary}; probe writes {'acknowledged' if landed else 'NOT acknowledged'}"
    record.phases.append(Step("verify", started, time.time(), detail, ok=landed))
    return None if landed else f"probe writes are not acknowledged within {options.verify_within_s:g} s"


def _switch(
    manager: SwitchoverManager,
    primary: str,
    candidate: str,
    guards: DrillGuards,
    record: DrillRecord,
    label: str,
) -> SwitchoverResult | None:
    """Run one switchover, its steps into the record; None when it aborted or degraded (recorded)."""
    try:
        result = manager.switchover(primary, candidate, catch_up_timeout_s=guards.catch_up_timeout_s)
    except SwitchoverAborted as error:
        record.phases.extend(_prefixed(label, error.result.steps))
        record.aborted = f"{label}: {error.result.aborted}"
        log.warning("%s", error)
        return None
    except RejoinFailed as error:
        record.phases.extend(_prefixed(label, error.steps))
        record.degraded_redundancy = f"{label}: {first_line(error)}"
        log.error("%s", error)
        return None
    except ReplicationError as error:
        # Neither rolled back nor half done by design (a precondition that no longer held, a stop that
        # did not end, a promotion in an unknown state): kept in the record, and a person reads the servers.
        record.aborted = f"{label} failed: {first_line(error)}"
        record.server_evidence[f"{label}.error"] = first_line(error)
        log.error("%s", error)
        return None
    record.phases.extend(_prefixed(label, result.steps))
    record.server_evidence[f"{label}.switch_position"] = result.switch_position or ""
    record.server_evidence[f"{label}.replayed_position"] = result.replayed_position or ""
    record.server_evidence[f"{label}.timeline"] = str(result.timeline)
    record.server_evidence[f"{label}.rejoin"] = result.rejoin or ""
    return result


def crash_driver_guard(manager: SwitchoverManager) -> GuardDecision:
    """Whether ``manager`` can crash its primary here: it has a crash driver (native-pg, Patroni) and
    says nothing is missing for it (Patroni: a node control; native-pg: every data directory)."""
    crash = getattr(manager, "crash", None)
    if crash is None:
        return GuardDecision(
            "driver",
            False,
            f"{manager.cluster}: mode 'crash' is allowed, but no crash driver is built for manager "
            f"{manager.name} yet: run a planned drill",
        )
    unavailable = getattr(manager, "crash_unavailable", lambda: None)()
    if unavailable:
        return GuardDecision(
            "driver", False, f"{manager.cluster}: mode 'crash' cannot run on {manager.name}: {unavailable}"
        )
    return GuardDecision("driver", True, f"{manager.cluster}: {manager.name} crashes its primary itself")


def _crash(
    manager: SwitchoverManager,
    primary: str,
    candidate: str,
    guards: DrillGuards,
    record: DrillRecord,
) -> SwitchoverResult | None:
    """Crash the primary and fail over to ``candidate`` (the manager's crash driver), its steps into the
    record under ``crash.``; None when the new primary serves alone or the failover failed (recorded)."""
    crash = getattr(manager, "crash", None)
    if crash is None:  # the preflight's driver guard refuses this before anything moves
        record.aborted = f"{manager.name} has no crash driver"
        return None
    try:
        result: SwitchoverResult = crash(primary, candidate, detect_timeout_s=guards.crash_detect_timeout_s)
    except RejoinFailed as error:
        record.phases.extend(_prefixed("crash", error.steps))
        record.degraded_redundancy = f"crash: {first_line(error)}"
        log.error("%s", error)
        return None
    except ReplicationError as error:
        record.aborted = f"crash failed: {first_line(error)}"
        record.server_evidence["crash.error"] = first_line(error)
        log.error("%s", error)
        return None
    record.phases.extend(_prefixed("crash", result.steps))
    record.server_evidence["crash.old_primary_position"] = result.switch_position or ""
    record.server_evidence["crash.candidate_replayed"] = result.replayed_position or ""
    record.server_evidence["crash.timeline"] = str(result.timeline)
    record.server_evidence["crash.rejoin"] = result.rejoin or ""
    return result


def _prefixed(label: str, steps: tuple[Step, ...]) -> list[Step]:
    return [Step(f"{label}.{s.name}", s.started, s.ended, s.detail, s.ok) for s in steps]


@dataclass(frozen=True)
class PlannedDrill:
    """What the preflight read and decided: the record so far (every guard's decision), the primary
    and the candidate. A dry run ends here; :func:`run_planned_drill` goes on from it."""

    record: DrillRecord
    checked: Preflight
    topology: Topology
    primary: str | None
    candidate: str
    lag: ReplicationLag | None

    @property
    def passed(self) -> bool:
        """Every guard passed."""
        return self.checked.passed and self.primary is not None

    def plan(self) -> str:
        """The plan in one line, for the log of a dry run and of the drill itself."""
        return (
            f"{self.record.cluster} ({self.record.manager}): "
            f"{'crash of' if self.record.mode == 'crash' else 'planned switchover'} {self.primary or '?'} -> "
            f"{self.candidate or '?'}, then fail-back (planned); {self.topology.summary}"
        )


def preflight_drill(
    manager: SwitchoverManager,
    *,
    run_id: str,
    probe_dsn: str | ProbeEndpoint,
    guards: DrillGuards,
    mode: str = "planned",
    candidate: str | None = None,
    last_drill_at: datetime | None = None,
    now: datetime | None = None,
    expected_members: Mapping[str, str | None] | None = None,
    long_transaction_s: float = 60.0,
) -> PlannedDrill:
    """Read the cluster and run every guard; move nothing (a dry run is this alone).

    Beside :func:`cloudops.failover.guards.preflight`: the topology against the catalog
    (``expected_members``), no backup or long transaction on the primary (managers that report it),
    the probe's connection reaching the primary, and a driver for the mode.

    :param probe_dsn: the application's libpq connection string (PostgreSQL), or a probe target built
        from its connection (:func:`cloudops.failover.probe_mariadb.mariadb_probe_target`).
    :raises InvalidInputError: the probe's connection string is not usable.
    """
    used_by = f"failover drill {run_id} of {manager.cluster}"
    target = probe_target(probe_dsn, used_by=used_by) if isinstance(probe_dsn, str) else probe_dsn
    record = DrillRecord(
        run_id=run_id,
        cluster=manager.cluster,
        manager=manager.name,
        mode=mode,
        started=time.time(),
        probe_target=target.describe(),
    )
    topology = manager.topology()
    chosen = _choose_candidate(topology, candidate)
    primary = topology.primary
    lag: ReplicationLag | None = None
    lag_error = None
    if primary and chosen:
        try:
            lag = manager.lag(primary, chosen)
        except ReplicationError as error:
            lag_error = first_line(error)
    checked: Preflight = preflight(
        topology,
        candidate=chosen or "(none)",
        mode=mode,
        lag=lag,
        last_drill_at=last_drill_at,
        now=now or datetime.now(tz=UTC),
        guards=guards,
        lag_error=lag_error or "no primary or no candidate",
    )
    extra: list[GuardDecision] = []
    if mode == "crash" and mode in guards.modes_allowed:
        extra.append(crash_driver_guard(manager))
    if expected_members is not None:
        extra.append(catalog_topology_guard(topology, expected_members))
    if primary:
        reader = getattr(manager, "running_work", None)
        found: list[str] | None = None
        error_text = None
        if reader is not None:
            try:
                found = list(reader(primary, longer_than_s=long_transaction_s))
            except ReplicationError as error:
                error_text = first_line(error)
        extra.append(
            activity_guard(
                manager.cluster, primary, found, longer_than_s=long_transaction_s, error=error_text
            )
        )
    probe = target.writer(run_id=run_id, used_by=used_by)
    try:
        reached: str | None = probe.reach()
        reach_error = None
    except ProbeError as error:
        reached, reach_error = None, first_line(error)
    extra.append(
        probe_guard(manager.cluster, topology.member(primary) if primary else None, reached, reach_error)
    )
    checked = Preflight(checked.cluster, (*checked.decisions, *extra))
    record.preflight = checked.decisions
    for decision in checked.decisions:
        log.info("%s: %s: %s", used_by, "pass" if decision.passed else "REFUSED", decision.reason)
    if primary is not None:
        record.engine_version = topology.member(primary).version
    if primary and chosen and lag is not None:
        record.pre_state = _pre_state(topology, chosen, lag)
    return PlannedDrill(record, checked, topology, primary, chosen, lag)


def run_planned_drill(
    manager: SwitchoverManager,
    *,
    run_id: str,
    probe_dsn: str | ProbeEndpoint,
    targets: DrillTargets,
    guards: DrillGuards,
    candidate: str | None = None,
    last_drill_at: datetime | None = None,
    now: datetime | None = None,
    options: DrillOptions | None = None,
    expected_members: Mapping[str, str | None] | None = None,
    long_transaction_s: float = 60.0,
    mode: str = "planned",
) -> DrillRecord:
    """Run a drill (and the fail-back) under the write probe; return its record.

    ``mode="planned"``: the manager's switchover. ``mode="crash"`` (where the guards allow it): the
    manager's crash driver kills the primary (Patroni: Patroni and PostgreSQL of the leader together;
    native-pg: SIGKILL of the postmaster, the drill then acts as the detector), waits for the candidate
    to lead and the crashed node to rejoin; the fail-back is always a planned switchover. Either way
    the acknowledged writes lost are read back from the new primary, never assumed.

    :param probe_dsn: the application's libpq connection string (PostgreSQL), or a probe target built
        from its connection (:func:`cloudops.failover.probe_mariadb.mariadb_probe_target`).
    :raises DrillRefused: a guard refused; nothing was moved.
    :raises InvalidInputError: the probe's connection string is not usable.
    :raises ProbeError: the probe cannot write before the drill (nothing was moved).
    """
    options = options or DrillOptions()
    used_by = f"failover drill {run_id} of {manager.cluster}"
    started_mono = time.monotonic()
    planned = preflight_drill(
        manager,
        run_id=run_id,
        probe_dsn=probe_dsn,
        guards=guards,
        mode=mode,
        candidate=candidate,
        last_drill_at=last_drill_at,
        now=now,
        expected_members=expected_members,
        long_transaction_s=long_transaction_s,
    )
    record, primary, chosen = planned.record, planned.primary, planned.candidate
    target = probe_target(probe_dsn, used_by=used_by) if isinstance(probe_dsn, str) else probe_dsn
    if not planned.passed or primary is None:
        record.finished = time.time()
        raise DrillRefused(planned.checked.explain(), record)
    log.info("%s: plan: %s", used_by, planned.plan())

    probe = target.writer(
        run_id=run_id,
        used_by=used_by,
        interval_s=options.probe_interval_s,
        max_seconds=targets.max_drill_s + 120,
    )
    probe.prepare()
    present_switched: set[int] | None = None
    acked_before_switched_read: set[int] = set()
    with probe:
        began = time.time()
        healthy = probe.wait_for_acks(options.baseline_acks, within_s=30)
        record.phases.append(
            Step(
                "probe_baseline",
                began,
                time.time(),
                f"{options.baseline_acks} writes acknowledged: {healthy}",
                ok=healthy,
            )
        )
        if not healthy:
            probe.stop()
            record.finished = time.time()
            raise ProbeError(f"{used_by}: the probe is not healthy before the drill; nothing was moved")
        # The topology first, the lag last: the re-check is what the action follows at once.
        before = manager.topology()
        began = time.time()
        try:
            injection = manager.lag(primary, chosen)
            second = lag_guard(manager.cluster, injection, guards)
        except ReplicationError as error:
            injection, second = None, None
            record.aborted = f"lag re-check before the action failed: {first_line(error)}"
        checked_at = time.monotonic()
        if second is not None:
            record.phases.append(Step("lag_recheck", began, time.time(), second.reason, ok=second.passed))
            record.preflight = (*record.preflight, second)
        if injection is not None:
            record.pre_state = _pre_state(before, chosen, injection)
        if second is not None and not second.passed:
            record.aborted = f"lag re-check before the action: {second.reason}"

        switched = None
        if record.aborted is None:
            gap = time.monotonic() - checked_at
            record.server_evidence["lag_recheck_to_action_s"] = f"{gap:.3f}"
            if gap > LAG_RECHECK_WITHIN_S:
                record.aborted = (
                    f"the lag re-check is {gap:.2f} s old, over {LAG_RECHECK_WITHIN_S:g} s: not acting on it"
                )
            elif mode == "crash":
                switched = _crash(manager, primary, chosen, guards, record)
            else:
                switched = _switch(manager, primary, chosen, guards, record, "switchover")
        if switched is not None:
            problem = _verify_primary(manager, chosen, probe, options, record)
            if problem:
                record.aborted = f"after the switchover: {problem}"
            else:
                acked_before_switched_read = {a.id for a in probe.attempts() if a.outcome == "acked"}
                try:
                    present_switched, server = probe.read_back()
                    label = "crash" if mode == "crash" else "switchover"
                    record.server_evidence[f"{label}.read_back_from"] = server
                except ProbeError as error:
                    record.aborted = f"reading back from the new primary: {first_line(error)}"
        interim = analyse(probe.attempts(), present_ids=None, stall_threshold_s=options.stall_threshold_s)
        over = interim.write_downtime_s > targets.max_write_downtime_s * DOWNTIME_PAGE_FACTOR
        if switched is not None and over:
            record.server_evidence["fail_back"] = (
                f"skipped: write downtime {interim.write_downtime_s:.3f} s is over {DOWNTIME_PAGE_FACTOR:g}x "
                f"the target {targets.max_write_downtime_s:g} s; page: a person decides"
            )
        elif switched is not None and record.aborted is None and options.fail_back:
            time.sleep(min(options.settle_s, 10))  # keep the two windows apart in the record
            back = _switch(manager, chosen, primary, guards, record, "fail_back")
            if back is not None:
                problem = _verify_primary(manager, primary, probe, options, record)
                if problem:
                    record.aborted = f"after the fail-back: {problem}"
            record.server_evidence.setdefault("fail_back", "done" if back is not None else "did not complete")
        elif switched is not None:
            record.server_evidence["fail_back"] = "not done: policy keeps the new primary"
        attempts = probe.stop()
    try:
        present_final, server = probe.read_back()
        record.server_evidence["read_back_from"] = server
        present: set[int] | None = set(present_final)
        if present_switched is not None and present is not None:
            # An id acknowledged before the switched read and missing from it was lost at the switchover.
            present -= acked_before_switched_read - present_switched
    except ProbeError as error:
        present = None
        record.server_evidence["read_back"] = f"failed: {first_line(error)}"
    analysis = analyse(attempts, present_ids=present, stall_threshold_s=options.stall_threshold_s)
    record.analysis = analysis
    record.bad_attempts = tuple(
        a for a in attempts if a.outcome != "acked" or a.seconds > options.stall_threshold_s
    )
    record.finished = time.time()
    seconds = time.monotonic() - started_mono
    record.verdicts = verdicts(
        analysis,
        targets,
        drill_seconds=None if record.degraded_redundancy else seconds,
        aborted=record.aborted,
    )
    for verdict in record.verdicts:
        log.info("%s: %s %s: %s", used_by, verdict.target, verdict.status, verdict.reason)
    return record


__all__ = [
    "DOWNTIME_PAGE_FACTOR",
    "LAG_RECHECK_WITHIN_S",
    "DrillOptions",
    "DrillRefused",
    "PlannedDrill",
    "crash_driver_guard",
    "preflight_drill",
    "run_drill",
    "run_planned_drill",
]

# The same drill for every mode: the name the crash mode reads better under.
run_drill = run_planned_drill
