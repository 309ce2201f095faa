"""Run a planned patch wave on real hosts: batch after batch, hosts of a batch in parallel, go/no-go between.

This is the acting half of ``patch_wave__<fleet>``, callable without Airflow (the runbook, the CLI and
the benchmark all call :func:`run_wave`). It takes a plan made elsewhere (batches of hosts, the snapshot
of exact ``package=version`` pins per host) and for each host runs: pre-flight (dpkg sound, lock free),
pre hook, install of exactly the pins, reboot when the policy and the host say so (boot id must change,
stability window), health gate with soak, post hook. After each batch it decides go or halt and says
why; a failed canary whose health broke has its bad update rolled back and held. Before each batch it
checks the window's cutoff: no new batch starts past it.

Every host's outcome is recorded whether it finished or not: ``changed`` says packages were touched,
so a host that failed half-way is always in the report as such, never silently half-configured.
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
from cloudops.patching.model import ComplianceState, PackagePin

log = logging.getLogger(__name__)

REBOOT_IF_NEEDED = "if_needed"
REBOOT_NEVER = "never"
REBOOT_ALWAYS = "always"
MAX_PARALLEL_HOSTS = 32

# Host outcomes.
DONE = "done"  # every pin installed (or held, reported), healthy
FAILED = "failed"  # a step failed: `step` and `error` say which and why
SKIPPED = "skipped"  # done by the run this one resumes
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
    held: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    healthy_after_rollback: bool = False
    health_output: str = ""
    health_reason: str = ""
    apt_log: str = ""
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        if self.status == FAILED:
            state = " (packages changed: see versions_after)" if self.changed else " (nothing changed)"
            return f"{self.host}: FAILED at {self.step}: {self.error}{state}"
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
) -> WaveResult:
    """Run the batches in order; return every host's outcome and every batch's decision.

    :param snapshot: by host name, the exact pins to install (a host with none gets pre-flight,
        reboot if its policy says so, and health only).
    :param done_hosts: hosts a resumed wave skips (done in the run it resumes).
    :param on_batch: called after each batch (the runbook records evidence there).
    :param judge: go/no-go after a batch: (batch index, its outcomes, failures so far) -> (decision,
        reason); default :func:`judge_batch` with the settings' limits.
    """
    wall = time.monotonic()
    started_at = now().isoformat()
    hosts: dict[str, HostOutcome] = {}
    for index, batch in enumerate(batches):
        for host in batch:
            hosts[host.name] = HostOutcome(host.name, index)
    outcomes: list[BatchOutcome] = []
    halted = False
    reason = ""
    failures = 0
    for index, batch in enumerate(batches):
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
        batch_started = time.monotonic()
        canary = index < settings.canary_batches
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_HOSTS, len(todo))) as pool:
            done = list(
                pool.map(
                    lambda h, canary=canary: patch_host(  # type: ignore[misc]
                        host_factory(h, settings.privilege),
                        snapshot.get(h.name, ()),
                        settings,
                        hosts[h.name],
                        canary=canary,
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
        outcomes.append(record)
        log.info("%s (%.1fs)", record.reason, record.seconds)
        if on_batch is not None:
            on_batch(record, done)
        if record.decision == "halt":
            halted, reason = True, record.reason
            break
    if not halted:
        reason = f"all {len(outcomes)} batch(es) done"
    for outcome in hosts.values():
        if outcome.status == NOT_STARTED:
            pins = snapshot.get(outcome.host, ())
            outcome.compliance = {pin.package: ComplianceState.MISSING.value for pin in pins}
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


def patch_host(
    host: AptHost,
    pins: Sequence[PackagePin],
    settings: WaveSettings,
    outcome: HostOutcome,
    *,
    canary: bool = False,
) -> HostOutcome:
    """Patch one host; never raises: a failed step is recorded in ``outcome`` (step, error, changed)."""
    started = time.monotonic()
    steps = StepLog(outcome.notes, outcome.timings)
    step = "start"
    wanted = {pin.package: pin for pin in pins}
    try:
        step = "read state"
        outcome.boot_id_before = host.boot_id()
        before = host.installed_versions()
        held = host.holds()
        outcome.versions_before = {name: before.get(name, "") for name in wanted}
        outcome.held = sorted(name for name in wanted if name in held)
        for name in outcome.held:
            steps.note(f"{name} is held on this host (apt-mark hold): not installed, reported HELD")
        todo = [p for p in pins if p.package not in held and before.get(p.package) != p.version]
        already = [p.package for p in pins if p.package not in held and before.get(p.package) == p.version]
        if already:
            steps.note(f"already at the snapshot's version: {', '.join(already)}")
        step = "pre-flight"
        timed(steps, "preflight", lambda: host.preflight(steps, lock_timeout=settings.lock_timeout))
        step = "pre hook"
        timed(steps, "pre_hook", lambda: host.run_hook("pre", settings.pre_hook, steps))
        step = "install"
        if todo:
            outcome.changed = True  # from here on, a failure leaves packages touched
        outcome.apt_log = host.install(todo, steps, lock_timeout=settings.lock_timeout)
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
            steps.note(f"reboot: {why}")
            rebooted = host.reboot(steps, settings.reboot_bounds)
            outcome.rebooted = True
            outcome.boot_id_after = rebooted.after
            reboot_pkgs = frozenset()
        else:
            outcome.boot_id_after = outcome.boot_id_before
            if flag:
                steps.note(
                    f"reboot: needed by {', '.join(sorted(reboot_pkgs)) or 'the host'} but the policy never "
                    "reboots: reported INSTALLED_PENDING_REBOOT"
                )
            else:
                steps.note("reboot: not needed (no /run/reboot-required)")
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
        step = "post hook"
        timed(steps, "post_hook", lambda: host.run_hook("post", settings.post_hook, steps))
        outcome.status = DONE
        step = "read state"
        after = host.installed_versions()
        outcome.versions_after = {name: after.get(name, "") for name in wanted}
        outcome.running_kernel, outcome.installed_kernel = host.kernels()
        outcome.compliance = package_compliance(pins, after, held, reboot_pkgs, rolled_back=())
    except HostActionError as error:
        outcome.status, outcome.step, outcome.error = FAILED, error.step or step, error.cause
        if error.step == "install (simulate)":
            outcome.changed = False  # refused before apt touched anything
        log.error("host %s failed at %s: %s", host.name, error.step or step, error.cause)
        try:
            after = host.installed_versions("read versions after the failure")
            outcome.versions_after = {name: after.get(name, "") for name in wanted}
        except HostActionError:
            after = {}
            steps.note("could not read the versions after the failure: the host is unreachable")
        outcome.compliance = package_compliance(
            pins,
            after,
            frozenset(outcome.held) | frozenset(outcome.rolled_back),
            frozenset(),
            rolled_back=outcome.rolled_back,
            failed=True,
        )
    outcome.seconds = round(time.monotonic() - started, 3)
    return outcome


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


def package_compliance(
    pins: Sequence[PackagePin],
    installed: Mapping[str, str],
    held: Collection[str],
    pending_reboot: Collection[str],
    *,
    rolled_back: Collection[str] = (),
    failed: bool = False,
) -> dict[str, str]:
    """The compliance state of each pinned package on a host after the wave (pure).

    HELD: held on the host, or rolled back and held by the wave. INSTALLED_PENDING_REBOOT: at the
    snapshot's version, but the package itself asked for a reboot that has not happened. FAILED: the
    host failed and the package is not at its version. MISSING: not at its version otherwise.
    """
    states = {}
    for pin in pins:
        version = installed.get(pin.package, "")
        if pin.package in rolled_back or (pin.package in held and version != pin.version):
            state = ComplianceState.HELD
        elif version == pin.version:
            state = (
                ComplianceState.INSTALLED_PENDING_REBOOT
                if pin.package in pending_reboot
                else ComplianceState.INSTALLED
            )
        elif failed:
            state = ComplianceState.FAILED
        else:
            state = ComplianceState.MISSING
        states[pin.package] = state.value
    return states


__all__ = [
    "DONE",
    "FAILED",
    "NOT_STARTED",
    "REBOOT_ALWAYS",
    "REBOOT_IF_NEEDED",
    "REBOOT_NEVER",
    "SKIPPED",
    "BatchOutcome",
    "HostOutcome",
    "WaveHost",
    "WaveResult",
    "WaveSettings",
    "judge_batch",
    "package_compliance",
    "patch_host",
    "resumable_done_hosts",
    "run_wave",
    "ssh_host",
]
