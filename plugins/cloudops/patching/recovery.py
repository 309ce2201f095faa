"""After a wave task was killed mid-batch: what each host of that batch was left in, and what to do (pure).

A SIGKILLed task (a lost worker, the OOM killer) runs no cleanup: its running batch has no
``patch.host`` records, and on the hosts the apt it started over SSH goes on by itself (sshd gives a
session without a terminal no hangup: the orphaned apt finishes its maintainer scripts, or dies with
the host half-way). So every wave records ``patch.batch_started`` before a batch's hosts start and
``patch.batch_finished`` once their outcomes are recorded. The retry (the same task, a later try)
finds the batch started and never finished, reads each of its hosts again (the apt left running
waited for within a bound, then dpkg's versions and unfinished packages, the reboot flag, the
kernels) and decides here, from those facts only:

- **finish** the batch: each host is patched again *from the state it was found in* (untouched: the
  whole patch; half-done: pre-flight repairs an interrupted dpkg, the rest of the pins, the reboot it
  is owed, the health gate; patched: the reboot when one is pending, the health gate and the post
  hook again, since the killed try may have died before them). A canary whose health gate then fails
  is rolled back as in any wave: the health verdict, not the kill, decides a rollback. Nothing the
  killed try installed is rolled back blindly: those are the approved snapshot's versions.
- **halt** (the task fails for good, and the failure alert pages on-call) naming every host and its
  state, when acting would be a guess: a host that cannot be read, a dpkg lock still held once the
  wait is over (the killed try's apt may still be working), a pinned package at a version neither the
  snapshot's nor the one it replaces (someone else changed the host), or a batch already interrupted
  twice (something keeps killing the task in that batch: a third try would only repeat it).

:func:`retry_state` reads the run's own ``patch.batch_started`` and ``patch.batch_finished`` records
(which batches a retry skips, which one it recovers); :func:`decide_recovery` makes the decision and
says why. The acting half is :meth:`cloudops.patching.apt_host.AptHost.found_after_kill` and the runbook.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloudops.patching.compliance import reached
from cloudops.patching.model import PackagePin

# A host's state as the retry finds it.
UNTOUCHED = "untouched"  # no pin at its new version, dpkg sound: the killed try changed nothing
PATCHED = "patched"  # every pin at its new version, dpkg sound, no reboot pending
HALF_DONE = "half-done"  # part of the pins, dpkg interrupted, or a reboot still pending
BUSY = "busy"  # dpkg's lock still held after the wait: the killed try's apt may still be working
FOREIGN = "changed elsewhere"  # a pinned package below the snapshot's version and not the one it replaced
UNKNOWN = "unknown"  # the host could not be read

FINISH = "finish"
HALT = "halt"
MAX_INTERRUPTIONS = 2  # tries that may start a batch without finishing it before the wave halts there
HALTING = (BUSY, FOREIGN, UNKNOWN)


@dataclass(frozen=True)
class FoundHost:
    """What the retry read on one host of the interrupted batch (``error``: it could not be read).

    :param lock_holders: processes still holding dpkg's lock once the wait was over (``pid 63 (apt-get)``).
    :param waited_for: processes that held it when the retry arrived, and ``waited_seconds`` for them.
    """

    host: str
    error: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)
    unfinished: frozenset[str] = frozenset()
    reboot_required: bool = False
    reboot_packages: frozenset[str] = frozenset()
    running_kernel: str = ""
    installed_kernel: str = ""
    lock_holders: tuple[str, ...] = ()
    waited_for: tuple[str, ...] = ()
    waited_seconds: float = 0.0


@dataclass(frozen=True)
class HostRecovery:
    """One host's state as found, and in words what that state is."""

    host: str
    state: str
    detail: str

    def describe(self) -> str:
        return f"{self.host}: {self.state} ({self.detail})"


@dataclass(frozen=True)
class RecoveryDecision:
    """What the retry does with the interrupted batch (``finish`` or ``halt``), why, and each host's state."""

    batch: int
    action: str
    reason: str
    hosts: tuple[HostRecovery, ...]
    started_by: tuple[int, ...]

    def as_record(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "action": self.action,
            "reason": self.reason,
            "started_by": list(self.started_by),
            "hosts": {h.host: {"state": h.state, "detail": h.detail} for h in self.hosts},
        }


def host_state(pins: Sequence[PackagePin], found: FoundHost) -> HostRecovery:
    """The state one host of an interrupted batch was left in, from what the retry read on it."""
    if found.error:
        return HostRecovery(found.host, UNKNOWN, f"could not be read: {found.error}")
    waited = (
        f"waited {found.waited_seconds:.1f}s for {', '.join(found.waited_for)} to finish; "
        if found.waited_for and not found.lock_holders
        else ""
    )
    if found.lock_holders:
        return HostRecovery(
            found.host,
            BUSY,
            f"dpkg's lock still held after {found.waited_seconds:.0f}s by {', '.join(found.lock_holders)}",
        )
    foreign = [
        f"{p.package} at {found.versions.get(p.package) or 'none'} "
        f"(snapshot {p.version}, was {p.previous or 'none'})"
        for p in pins
        if not reached(found.versions.get(p.package, ""), p.version)
        and found.versions.get(p.package, "") != p.previous
    ]
    if foreign:
        return HostRecovery(found.host, FOREIGN, waited + "; ".join(foreign))
    installed = [p.package for p in pins if reached(found.versions.get(p.package, ""), p.version)]
    missing = [p.package for p in pins if p.package not in installed]
    kernel_stale = bool(
        found.installed_kernel and found.running_kernel and found.installed_kernel != found.running_kernel
    )
    reboot = ""
    if found.reboot_required:
        by = ", ".join(sorted(found.reboot_packages)) or "no package named"
        reboot = f"reboot pending (/run/reboot-required, by {by})"
    elif kernel_stale:
        reboot = f"reboot pending (kernel {found.installed_kernel} installed, {found.running_kernel} running)"
    parts = []
    if found.unfinished:
        parts.append(f"dpkg interrupted: {', '.join(sorted(found.unfinished))} unpacked or half-configured")
    if installed:
        parts.append(f"at the snapshot's version: {', '.join(installed)}")
    if missing:
        parts.append(f"not yet: {', '.join(missing)}")
    if reboot:
        parts.append(reboot)
    detail = waited + ("; ".join(parts) or "nothing to install")
    if found.unfinished:
        return HostRecovery(found.host, HALF_DONE, detail)
    if not installed:
        return HostRecovery(found.host, UNTOUCHED, detail)
    if missing or (reboot and installed):
        return HostRecovery(found.host, HALF_DONE, detail)
    return HostRecovery(found.host, PATCHED, detail)


def decide_recovery(
    batch: int,
    found: Sequence[FoundHost],
    pins: Mapping[str, Sequence[PackagePin]],
    *,
    started_by: Sequence[int],
    try_number: int,
) -> RecoveryDecision:
    """Finish the interrupted batch from each host's real state, or halt naming every host; and why.

    :param started_by: the tries that recorded ``patch.batch_started`` for this batch, none finished.
    :param try_number: this try (the one deciding).
    """
    states = tuple(host_state(pins.get(f.host, ()), f) for f in found)
    tries = tuple(sorted(set(started_by)))
    named = "; ".join(s.describe() for s in states)
    which = f"batch {batch}, started by try {', '.join(map(str, tries))} and never finished"
    if len(tries) >= MAX_INTERRUPTIONS:
        return RecoveryDecision(
            batch,
            HALT,
            f"{which}: tries were killed {len(tries)} times in this batch, so try {try_number} does not "
            f"start it again; fix what kills the task, then resume (resume_run_id). Hosts: {named}",
            states,
            tries,
        )
    stuck = [s for s in states if s.state in HALTING]
    if stuck:
        why = {
            UNKNOWN: "their state is unknown",
            BUSY: "the killed try's apt may still be working",
            FOREIGN: "something other than this wave changed them",
        }
        causes = "; ".join(
            f"{', '.join(s.host for s in stuck if s.state == state)} {state}: {why[state]}"
            for state in HALTING
            if any(s.state == state for s in stuck)
        )
        return RecoveryDecision(
            batch,
            HALT,
            f"{which}: try {try_number} does not act on it: {causes}. Look at those hosts, then resume "
            f"(resume_run_id). Hosts: {named}",
            states,
            tries,
        )
    return RecoveryDecision(
        batch,
        FINISH,
        f"{which} (the task was killed): try {try_number} finishes it, each host from the state it was "
        f"found in: {named}",
        states,
        tries,
    )


@dataclass(frozen=True)
class RetryState:
    """What earlier tries of this run did, from their ``patch.batch_started``/``patch.batch_finished``.

    :param finished: batch index -> its ``patch.batch_finished`` data (decision, reason, host statuses).
    :param interrupted: the batch started and never finished (None: none), and the tries that started it.
    :param halted: the reason of a batch an earlier try halted or stopped at (the wave must not go on).
    """

    finished: Mapping[int, Mapping[str, Any]]
    interrupted: int | None
    started_by: tuple[int, ...]
    halted: str | None


def retry_state(started: Iterable[Mapping[str, Any]], finished: Iterable[Mapping[str, Any]]) -> RetryState:
    """Which batches a retry skips (finished), recovers (started, never finished) or halts at (pure)."""
    done: dict[int, Mapping[str, Any]] = {}
    for record in finished:
        done[int(record["batch"])] = record
    begun: dict[int, set[int]] = {}
    for record in started:
        begun.setdefault(int(record["batch"]), set()).add(int(record.get("try_number") or 0))
    halted = next(
        (
            str(done[i].get("reason") or f"batch {i} halted")
            for i in sorted(done)
            if done[i].get("decision") in ("halt", "stop")
        ),
        None,
    )
    open_batches = sorted(set(begun) - set(done))
    interrupted = open_batches[0] if open_batches else None
    tries = tuple(sorted(begun[interrupted])) if interrupted is not None else ()
    return RetryState(done, interrupted, tries, halted)


__all__ = [
    "BUSY",
    "FINISH",
    "FOREIGN",
    "HALF_DONE",
    "HALT",
    "MAX_INTERRUPTIONS",
    "PATCHED",
    "UNKNOWN",
    "UNTOUCHED",
    "FoundHost",
    "HostRecovery",
    "RecoveryDecision",
    "RetryState",
    "decide_recovery",
    "host_state",
    "retry_state",
]
