"""Run a planned patch wave on real hosts: batch after batch, hosts of a batch in parallel, go/no-go between.

This is the acting half of ``patch_wave__<fleet>``, callable without Airflow (the runbook, the CLI and
the benchmark all call :func:`run_wave`). It takes a plan made elsewhere (batches of hosts, the snapshot
of exact ``package=version`` pins per host) and for each host runs: pre-flight (dpkg sound, lock free),
pre hook, install of exactly the pins, reboot when the policy and the host say so (boot id must change,
stability window), health gate with soak, post hook. After each batch it decides go or halt and says
why; a failed canary whose health broke has its bad update rolled back and held. Before each batch it
checks the window's cutoff: no new batch starts past it. With ``cutoff_behaviour`` ``stop_now`` the
cutoff also stops a running batch: each of its hosts stops at its next step boundary (before
pre-flight, pre hook, install, reboot, health gate or post hook; a step already running finishes, and
a canary's rollback is never interrupted: it restores health) and is reported ``stopped``, with the
step it stopped before.

Every host's outcome is recorded whether it finished or not: ``changed`` says packages were touched
and ``compliance`` (by :func:`cloudops.patching.compliance.package_state`, the one rule) what state
each package was left in, so a host that failed or stopped half-way is always in the report as such,
never silently half-configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudops.patching.apt_host import (
    SUDO,
    AptHost,
    HealthGate,
    Hook,
    HostActionError,
    RebootBounds,
    StepLog,
    ssh_runner,
)
from cloudops.patching.compliance import (
    PackageFacts,
    assess_packages,
    reboot_attribution,
    states_of,
)
from cloudops.patching.model import NON_COMPLIANT, ComplianceState, PackagePin
from cloudops.patching.recovery import UNTOUCHED, FoundHost, HostRecovery

log = logging.getLogger(__name__)

REBOOT_IF_NEEDED = "if_needed"
REBOOT_NEVER = "never"
REBOOT_ALWAYS = "always"
FINISH_BATCH = "finish_batch"  # at the cutoff the running batch finishes (SSM CONTINUE_TASK)
STOP_NOW = "stop_now"  # at the cutoff the running batch's hosts stop at their next step (SSM CANCEL_TASK)
MAX_PARALLEL_HOSTS = 32

# Host outcomes.
DONE = "done"  # every pin installed (or held, reported), healthy
FAILED = "failed"  # a step failed: `step` and `error` say which and why
SKIPPED = "skipped"  # done by the run this one resumes
STOPPED = "stopped"  # stop_now: the cutoff passed; `step` is the step it stopped before
NOT_STARTED = "not_started"  # the wave halted or stopped before this host's batch


@dataclass(frozen=True)
class WaveHost:
    """A host of the wave: its catalog name and its SSH connection."""

    name: str
    ssh_conn_id: str


@dataclass(frozen=True)
class WaveSettings:
    """How the wave acts, from the fleet's patching policy.

    :param max_failures_per_batch: failed hosts a batch may have; one more halts the wave.
    :param failure_budget: failed hosts the whole wave may have; one more halts it.
    :param canary_batches: how many first batches are canaries: their bad updates are rolled back.
    :param cutoff: no batch starts at or after this moment (the window's end minus its cutoff).
    :param cutoff_behaviour: ``finish_batch`` (a running batch finishes) or ``stop_now`` (its hosts
        stop at their next step boundary once the cutoff passes).
    """

    privilege: str = SUDO
    reboot: str = REBOOT_IF_NEEDED
    reboot_bounds: RebootBounds = field(default_factory=RebootBounds)
    health: HealthGate = field(default_factory=HealthGate)
    pre_hook: tuple[Hook, ...] = ()
    post_hook: tuple[Hook, ...] = ()
    lock_timeout: int = 60
    max_failures_per_batch: int = 0
    failure_budget: int = 0
    canary_batches: int = 1
    rollback: bool = True
    cutoff: datetime | None = None
    cutoff_behaviour: str = FINISH_BATCH

    def __post_init__(self) -> None:
        if self.cutoff_behaviour not in (FINISH_BATCH, STOP_NOW):
            raise ValueError(
                f"cutoff_behaviour {self.cutoff_behaviour!r} is neither {FINISH_BATCH!r} nor {STOP_NOW!r}"
            )


class _Stopped(Exception):
    """The cutoff passed (stop_now): the host stops before ``before``."""

    def __init__(self, before: str, why: str) -> None:
        super().__init__(f"stopped before {before}: {why}")
        self.before = before
        self.why = why


@dataclass
class HostOutcome:
    """What the wave did on one host: the ledger's ``patch.host`` fact, and the benchmark's timings."""

    host: str
    batch: int
    status: str = NOT_STARTED
    step: str = ""
    error: str = ""
    changed: bool = False
    rebooted: bool = False
    boot_id_before: str = ""
    boot_id_after: str = ""
    running_kernel: str = ""
    installed_kernel: str = ""
    versions_before: dict[str, str] = field(default_factory=dict)
    versions_after: dict[str, str] = field(default_factory=dict)
    compliance: dict[str, str] = field(default_factory=dict)
    compliance_reasons: dict[str, str] = field(default_factory=dict)
    pre_hook_ran: bool = False
    post_hook_ran: bool = False
    held: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    healthy_after_rollback: bool = False
    health_output: str = ""
    health_reason: str = ""
    apt_log: str = ""
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def left_in(self) -> str:
        """The state the host was left in: changed or not, each package's state, hooks not run."""
        if not self.changed:
            left = "nothing changed"
        else:
            states = ", ".join(f"{p} {s}" for p, s in sorted(self.compliance.items())) or "unknown"
            left = f"packages changed: {states}"
        if self.pre_hook_ran and not self.post_hook_ran:
            left += "; its pre hook ran and its post hook did not"
        return left

    def summary(self) -> str:
        """One line for people: what happened on the host and the state it was left in."""
        if self.status == FAILED:
            return f"{self.host}: FAILED at {self.step}: {self.error} ({self.left_in()})"
        if self.status == STOPPED:
            return f"{self.host}: STOPPED before {self.step} ({self.left_in()})"
        if self.status == NOT_STARTED:
            return f"{self.host}: not started (untouched)"
        if self.status == DONE and any(s in NON_COMPLIANT for s in self.compliance.values()):
            states = ", ".join(f"{p} {s}" for p, s in sorted(self.compliance.items()))
            return f"{self.host}: done ({states})"
        return f"{self.host}: {self.status}"


@dataclass
class BatchOutcome:
    """One batch: its hosts, its wall time and the go/no-go decision taken after it, with the reason."""

    index: int
    hosts: list[str]
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)
    decision: str = ""  # go | halt | stop (cutoff) | skipped (resume)
    reason: str = ""


@dataclass
class WaveResult:
    """The whole wave: per batch and per host, the verdict and its reason, and the wall time."""

    batches: list[BatchOutcome]
    hosts: dict[str, HostOutcome]
    halted: bool
    reason: str
    seconds: float
    started_at: str
    finished_at: str

    @property
    def succeeded(self) -> bool:
        return not self.halted and all(h.status in (DONE, SKIPPED) for h in self.hosts.values())

    @property
    def ideal_seconds(self) -> float:
        """The wave with no orchestration overhead: per batch, its slowest host's own time, summed."""
        total = 0.0
        for batch in self.batches:
            times = [self.hosts[name].seconds for name in batch.hosts if name in self.hosts]
            total += max(times, default=0.0)
        return round(total, 3)

    def left_behind(self) -> list[str]:
        """One line per host the wave did not finish (failed, stopped, not started), batch by batch."""
        return [
            o.summary()
            for o in sorted(self.hosts.values(), key=lambda o: (o.batch, o.host))
            if o.status in (FAILED, STOPPED, NOT_STARTED)
        ]

    def as_record(self) -> dict[str, Any]:
        return {
            "ideal_seconds": self.ideal_seconds,
            "halted": self.halted,
            "succeeded": self.succeeded,
            "reason": self.reason,
            "seconds": self.seconds,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "batches": [asdict(b) for b in self.batches],
            "hosts": {name: asdict(h) for name, h in self.hosts.items()},
        }


HostFactory = Callable[[WaveHost, str], AptHost]


def ssh_host(host: WaveHost, privilege: str) -> AptHost:
    """The default ``HostFactory``: the host over SSH through its Airflow connection."""
    return AptHost(
        host.name, ssh_runner(host.ssh_conn_id, used_by=f"host {host.name!r}"), privilege=privilege
    )


def judge_batch(
    index: int, outcomes: Sequence[HostOutcome], failures_so_far: int, settings: WaveSettings
) -> tuple[str, str]:
    """Go or halt after a batch, and why (pure). Limits are exceeded, not reached: 0 means none may fail."""
    failed = [o for o in outcomes if o.status == FAILED]
    if len(failed) > settings.max_failures_per_batch:
        named = "; ".join(o.summary() for o in failed)
        return "halt", (
            f"batch {index}: {len(failed)} of {len(outcomes)} host(s) failed, more than the batch limit of "
            f"{settings.max_failures_per_batch}: {named}"
        )
    if failures_so_far > settings.failure_budget:
        return "halt", (
            f"batch {index}: {failures_so_far} host(s) failed in this wave, more than its budget of "
            f"{settings.failure_budget}"
        )
    if failed:
        return "go", (
            f"batch {index}: {len(failed)} failed host(s) within the batch limit of "
            f"{settings.max_failures_per_batch} and the budget of {settings.failure_budget}"
        )
    return "go", f"batch {index}: all {len(outcomes)} host(s) done and healthy"


def run_wave(
    batches: Sequence[Sequence[WaveHost]],
    snapshot: Mapping[str, Sequence[PackagePin]],
    settings: WaveSettings,
    *,
    done_hosts: Collection[str] = (),
    host_factory: HostFactory = ssh_host,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    on_batch: Callable[[BatchOutcome, Sequence[HostOutcome]], None] | None = None,
    judge: Callable[[int, Sequence[HostOutcome], int], tuple[str, str]] | None = None,
    before_batch: Callable[[int, Sequence[WaveHost]], None] | None = None,
    earlier: Mapping[int, tuple[BatchOutcome, Sequence[HostOutcome]]] | None = None,
    host_notes: Mapping[str, Sequence[str]] | None = None,
) -> WaveResult:
    """Run the batches in order; return every host's outcome and every batch's decision.

    :param snapshot: by host name, the exact pins to install (a host with none gets pre-flight,
        reboot if its policy says so, and health only).
    :param done_hosts: hosts a resumed wave skips (done in the run it resumes).
    :param on_batch: called after each batch (the runbook records evidence there).
    :param judge: go/no-go after a batch: (batch index, its outcomes, failures so far) -> (decision,
        reason); default :func:`judge_batch` with the settings' limits.
    :param before_batch: called just before a batch's hosts start (the runbook records
        ``patch.batch_started`` there, so a task killed mid-batch leaves a trace its retry finds).
    :param earlier: batches an earlier try of the same run finished (a retry): their outcomes are
        taken as recorded, never run again, and their failures count against the budget.
    :param host_notes: notes put first in a host's outcome (a retry's finding on an interrupted batch).
    """
    wall = time.monotonic()
    started_at = now().isoformat()
    stop = _stop_check(settings, now)
    hosts: dict[str, HostOutcome] = {}
    for index, batch in enumerate(batches):
        for host in batch:
            hosts[host.name] = HostOutcome(host.name, index)
    outcomes: list[BatchOutcome] = []
    halted = False
    reason = ""
    failures = 0
    for name, notes in (host_notes or {}).items():
        if name in hosts:
            hosts[name].notes.extend(notes)
    for index, batch in enumerate(batches):
        if earlier and index in earlier:
            record, recorded = earlier[index]
            for outcome in recorded:
                hosts[outcome.host] = outcome
            failures += len(record.failed)
            outcomes.append(record)
            log.info(
                "batch %s: finished by an earlier try of this run (%s): not run again", index, record.reason
            )
            if record.decision in ("halt", "stop"):
                halted, reason = True, record.reason
                break
            continue
        todo = [h for h in batch if h.name not in done_hosts]
        record = BatchOutcome(index, [h.name for h in batch])
        for host in batch:
            if host.name in done_hosts:
                hosts[host.name].status = SKIPPED
                hosts[host.name].notes.append("done in the run this one resumes: skipped")
        if not todo:
            record.decision, record.reason = "skipped", f"batch {index}: every host done in the resumed run"
            outcomes.append(record)
            log.info(record.reason)
            continue
        moment = now()
        if settings.cutoff is not None and moment >= settings.cutoff:
            record.decision = "stop"
            record.reason = (
                f"batch {index} not started: it is {moment.isoformat()}, past the window's cutoff "
                f"{settings.cutoff.isoformat()}; {len(todo)} host(s) left for the next window"
            )
            outcomes.append(record)
            halted, reason = True, record.reason
            log.warning(record.reason)
            break
        if before_batch is not None:
            before_batch(index, todo)
        batch_started = time.monotonic()
        canary = index < settings.canary_batches
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_HOSTS, len(todo))) as pool:
            done = list(
                pool.map(
                    lambda h, canary=canary: _patch_and_close(  # type: ignore[misc]
                        host_factory(h, settings.privilege),
                        snapshot.get(h.name, ()),
                        settings,
                        hosts[h.name],
                        canary=canary,
                        stop=stop,
                    ),
                    todo,
                )
            )
        record.seconds = round(time.monotonic() - batch_started, 3)
        record.failed = [o.host for o in done if o.status == FAILED]
        failures += len(record.failed)
        if judge is None:
            record.decision, record.reason = judge_batch(index, done, failures, settings)
        else:
            record.decision, record.reason = judge(index, done, failures)
        stopped = [o for o in done if o.status == STOPPED]
        if stopped:
            later = sum(len(b) for b in batches[index + 1 :])
            cutoff = settings.cutoff.isoformat() if settings.cutoff else "?"
            cut = (
                f"batch {index}: the window's cutoff {cutoff} "
                f"passed while it ran (cutoff_behaviour stop_now): "
                + "; ".join(o.summary() for o in stopped)
                + (f"; {later} host(s) of later batches not started" if later else "")
                + "; resume in the next window (resume_run_id)"
            )
            if record.decision == "halt":
                record.reason = f"{record.reason}; and {cut}"
            else:
                record.decision, record.reason = "stop", cut
        outcomes.append(record)
        log.info("%s (%.1fs)", record.reason, record.seconds)
        if on_batch is not None:
            on_batch(record, done)
        if record.decision in ("halt", "stop"):
            halted, reason = True, record.reason
            break
    if not halted:
        reason = f"all {len(outcomes)} batch(es) done"
    for outcome in hosts.values():
        if outcome.status == NOT_STARTED:
            # Untouched: its packages are as the plan's scan found them (the pin's previous version).
            pins = snapshot.get(outcome.host, ())
            _set_compliance(outcome, pins, {pin.package: PackageFacts(found=pin.previous) for pin in pins})
            outcome.notes.append(f"not started: {reason}")
    return WaveResult(
        outcomes,
        hosts,
        halted,
        reason,
        round(time.monotonic() - wall, 3),
        started_at,
        now().isoformat(),
    )


def _patch_and_close(
    host: AptHost,
    pins: Sequence[PackagePin],
    settings: WaveSettings,
    outcome: HostOutcome,
    *,
    canary: bool,
    stop: Callable[[], str | None],
) -> HostOutcome:
    """:func:`patch_host`, then close the host's SSH session (the wave is done with that host)."""
    with host:
        return patch_host(host, pins, settings, outcome, canary=canary, stop=stop)


def patch_host(
    host: AptHost,
    pins: Sequence[PackagePin],
    settings: WaveSettings,
    outcome: HostOutcome,
    *,
    canary: bool = False,
    stop: Callable[[], str | None] = lambda: None,
) -> HostOutcome:
    """Patch one host; never raises: a failed step is recorded in ``outcome`` (step, error, changed).

    :param stop: asked at each step boundary; a reason (the cutoff passed, stop_now) stops the host
        there: status ``stopped``, ``step`` the step it stopped before.
    """
    started = time.monotonic()
    steps = StepLog(outcome.notes, outcome.timings)
    step = "start"
    wanted = {pin.package: pin for pin in pins}
    known: dict[str, str] = {}  # the latest versions known, should the host stop answering
    held: frozenset[str] = frozenset()
    todo: list[PackagePin] = list(pins)
    flag, reboot_pkgs = False, frozenset[str]()
    since_boot: set[str] = set()  # installed by this run after the host's current boot

    def boundary(before: str) -> None:
        why = stop()
        if why:
            raise _Stopped(before, why)

    try:
        step = "read state"
        outcome.boot_id_before = host.boot_id()
        before = host.installed_versions()
        known = dict(before)
        held = host.holds()
        outcome.versions_before = {name: before.get(name, "") for name in wanted}
        outcome.held = sorted(name for name in wanted if name in held)
        for name in outcome.held:
            steps.note(f"{name} is held on this host (apt-mark hold): not installed, reported HELD")
        todo = [p for p in pins if p.package not in held and before.get(p.package) != p.version]
        already = [p.package for p in pins if p.package not in held and before.get(p.package) == p.version]
        if already:
            steps.note(f"already at the snapshot's version: {', '.join(already)}")
        boundary("pre-flight")
        step = "pre-flight"
        timed(steps, "preflight", lambda: host.preflight(steps, lock_timeout=settings.lock_timeout))
        boundary("pre hook")
        step = "pre hook"
        outcome.pre_hook_ran = bool(settings.pre_hook)
        timed(steps, "pre_hook", lambda: host.run_hook("pre", settings.pre_hook, steps))
        boundary("install")
        step = "install"
        if todo:
            outcome.changed = True  # from here on, a failure leaves packages touched
        outcome.apt_log = host.install(todo, steps, lock_timeout=settings.lock_timeout)
        known.update({p.package: p.version for p in todo})
        since_boot.update(p.package for p in todo)
        step = "reboot"
        flag, reboot_pkgs = host.reboot_flag()
        stale_kernel = ""
        if settings.reboot == REBOOT_IF_NEEDED and not flag:
            running, newest = host.kernels()
            if newest and running and running != newest:
                stale_kernel = f"kernel {newest} is installed but {running} is running"
        needed = bool(flag or stale_kernel)
        must = settings.reboot == REBOOT_ALWAYS or (settings.reboot == REBOOT_IF_NEEDED and needed)
        if must:
            if settings.reboot == REBOOT_ALWAYS:
                why = "the policy always reboots"
            elif flag:
                why = (
                    f"/run/reboot-required is set (by {', '.join(sorted(reboot_pkgs)) or 'no package named'})"
                )
            else:
                why = stale_kernel
            boundary("reboot")
            steps.note(f"reboot: {why}")
            rebooted = host.reboot(steps, settings.reboot_bounds)
            outcome.rebooted = True
            outcome.boot_id_after = rebooted.after
            flag, reboot_pkgs = False, frozenset()  # a new boot: /run is empty again
            since_boot.clear()
        else:
            outcome.boot_id_after = outcome.boot_id_before
            if flag:
                steps.note(
                    f"reboot: needed by {', '.join(sorted(reboot_pkgs)) or 'the host'} but the policy never "
                    "reboots: reported INSTALLED_PENDING_REBOOT"
                )
            else:
                steps.note("reboot: not needed (no /run/reboot-required)")
        boundary("health gate")
        step = "health gate"
        verdict = host.health(settings.health, steps)
        outcome.health_output, outcome.health_reason = verdict.output, verdict.reason
        if not verdict.healthy:
            if canary and settings.rollback and todo:
                step = "rollback"
                rolled = host.roll_back_bad_update(
                    todo, settings.health, steps, lock_timeout=settings.lock_timeout
                )
                outcome.rolled_back = [p.package for p in rolled]
                known.update({p.package: p.previous for p in rolled})
                if rolled:
                    outcome.healthy_after_rollback = host.health(
                        HealthGate(settings.health.checks, 0.0), StepLog()
                    ).healthy
                    again = "healthy again" if outcome.healthy_after_rollback else "still unhealthy"
                    raise HostActionError(
                        host.name,
                        "health gate",
                        f"{verdict.reason}; rolled back and held {', '.join(outcome.rolled_back)}: {again}",
                    )
            raise HostActionError(host.name, "health gate", verdict.reason)
        boundary("post hook")
        step = "post hook"
        timed(steps, "post_hook", lambda: host.run_hook("post", settings.post_hook, steps))
        outcome.post_hook_ran = bool(settings.post_hook)
        outcome.status = DONE
    except _Stopped as stopped:
        outcome.status, outcome.step = STOPPED, stopped.before
        outcome.error = f"stopped before {stopped.before}: {stopped.why}"
        if not outcome.boot_id_after:
            outcome.boot_id_after = outcome.boot_id_before
        steps.note(outcome.error)
        log.warning("host %s: %s", host.name, outcome.error)
    except HostActionError as error:
        outcome.status, outcome.step, outcome.error = FAILED, error.step or step, error.cause
        if error.step == "install (simulate)":
            outcome.changed = False  # refused before apt touched anything
        log.error("host %s failed at %s: %s", host.name, error.step or step, error.cause)
    except Exception as error:  # a bug or an error nobody foresaw: this host fails, the batch is recorded
        outcome.status, outcome.step = FAILED, step
        outcome.error = f"unexpected {type(error).__name__}: {str(error)[:300]}"
        log.exception("host %s failed at %s with an unexpected error", host.name, step)
    failure = f"{outcome.step}: {outcome.error}" if outcome.status == FAILED else None
    unfinished: frozenset[str] = frozenset()
    try:
        dpkg = host.package_states("read versions after the wave")
        after, unfinished = dpkg.versions, dpkg.unfinished
        held = held | dpkg.held  # a rollback cut short may have held a package
        outcome.versions_after = {name: after.get(name, "") for name in wanted}
        outcome.running_kernel, outcome.installed_kernel = host.kernels()
    except Exception:  # unreachable now (or answering nonsense): report what is known
        after = known
        outcome.versions_after = {name: known.get(name, "") for name in wanted}
        steps.note(
            "could not read the versions after the wave: the host is unreachable; "
            "the last versions known are reported"
        )
    for name in sorted(unfinished & set(wanted)):
        steps.note(f"{name} is left unpacked or half-configured: dpkg --configure -a is due")
    pending = reboot_attribution(
        list(wanted),
        flag=flag,
        flagged=reboot_pkgs,
        installed_since_boot=since_boot,
        running_kernel=outcome.running_kernel,
        installed_kernel=outcome.installed_kernel,
    )
    tried = {p.package for p in todo}
    facts = {
        name: PackageFacts(
            found=after.get(name, ""),
            held=name in held,
            rolled_back=name in outcome.rolled_back,
            failure=failure if name in tried else None,
            pending_reboot=pending.get(name),
            unfinished=name in unfinished,
        )
        for name in wanted
    }
    _set_compliance(outcome, pins, facts)
    outcome.seconds = round(time.monotonic() - started, 3)
    return outcome


def found_outcome(
    pins: Sequence[PackagePin], found: FoundHost, recovery: HostRecovery, *, batch: int, step: str
) -> HostOutcome:
    """The outcome of a host a retry found after a killed try and did not act on (its batch halts).

    Untouched: not started. Any other state: failed at ``step``, the state and its detail as the
    error, packages counted as changed unless it was untouched (an unreadable host may have been).
    """
    untouched = recovery.state == UNTOUCHED
    outcome = HostOutcome(
        found.host,
        batch,
        status=NOT_STARTED if untouched else FAILED,
        step="" if untouched else step,
        error="" if untouched else f"{recovery.state}: {recovery.detail}",
        changed=not untouched,
        running_kernel=found.running_kernel,
        installed_kernel=found.installed_kernel,
        versions_after={p.package: found.versions.get(p.package, "") for p in pins},
        notes=[f"found after a killed try: {recovery.describe()}"],
    )
    pending = reboot_attribution(
        [p.package for p in pins],
        flag=found.reboot_required,
        flagged=found.reboot_packages,
        running_kernel=found.running_kernel,
        installed_kernel=found.installed_kernel,
    )
    facts = {
        p.package: PackageFacts(
            found=found.versions.get(p.package, "") if not found.error else p.previous,
            pending_reboot=pending.get(p.package),
            unfinished=p.package in found.unfinished,
            failure=None if untouched else outcome.error,
        )
        for p in pins
    }
    _set_compliance(outcome, pins, facts)
    return outcome


def _set_compliance(outcome: HostOutcome, pins: Sequence[PackagePin], facts: dict[str, PackageFacts]) -> None:
    packages = assess_packages(pins, facts)
    outcome.compliance = states_of(packages)
    outcome.compliance_reasons = {p.package: p.reason for p in packages}


def _stop_check(settings: WaveSettings, now: Callable[[], datetime]) -> Callable[[], str | None]:
    """What hosts ask at each step boundary: with stop_now, whether the cutoff has passed and why."""
    cutoff = settings.cutoff
    if cutoff is None or settings.cutoff_behaviour != STOP_NOW:
        return lambda: None

    def check() -> str | None:
        moment = now()
        if moment < cutoff:
            return None
        return (
            f"the window's cutoff {cutoff.isoformat()} passed (it is {moment.isoformat()}; "
            "cutoff_behaviour stop_now)"
        )

    return check


def resumable_done_hosts(previous: Mapping[str, Any], rejected: Collection[str] = ()) -> frozenset[str]:
    """Hosts a resumed wave skips, from the halted run's ``patch.wave`` record (pure).

    Done: hosts that finished. Also a canary whose bad update was rolled back (and held) and which is
    healthy again, when every rolled-back package is now rejected and every other pin is INSTALLED:
    nothing is left to do on it.
    """
    done = set()
    for name, host in (previous.get("hosts") or {}).items():
        if host.get("status") in (DONE, SKIPPED):
            done.add(name)
            continue
        rolled = set(host.get("rolled_back") or ())
        others = {pkg: state for pkg, state in (host.get("compliance") or {}).items() if pkg not in rolled}
        if (
            rolled
            and host.get("healthy_after_rollback")
            and rolled <= set(rejected)
            and all(state == ComplianceState.INSTALLED.value for state in others.values())
        ):
            done.add(name)
    return frozenset(done)


def timed(steps: StepLog, name: str, action: Callable[[], None]) -> None:
    started = time.monotonic()
    action()
    steps.timings[name] = round(time.monotonic() - started, 3)


__all__ = [
    "DONE",
    "FAILED",
    "FINISH_BATCH",
    "NOT_STARTED",
    "REBOOT_ALWAYS",
    "REBOOT_IF_NEEDED",
    "REBOOT_NEVER",
    "SKIPPED",
    "STOPPED",
    "STOP_NOW",
    "BatchOutcome",
    "HostOutcome",
    "WaveHost",
    "WaveResult",
    "WaveSettings",
    "found_outcome",
    "judge_batch",
    "patch_host",
    "resumable_done_hosts",
    "run_wave",
    "ssh_host",
]
