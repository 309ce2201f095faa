"""Resume a halted wave with the same snapshot: skip the hosts that are done, keep the batch order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cloudops.errors import InvalidInputError
from cloudops.patching.snapshot import Snapshot
from cloudops.patching.waves import Batch


class ResumeRefused(InvalidInputError):
    """The earlier run cannot be resumed with this snapshot."""


@dataclass(frozen=True)
class HostOutcome:
    """How one host ended in an earlier run: ``done`` (installed, rebooted as needed, healthy) or not."""

    host: str
    done: bool
    reason: str = ""


@dataclass(frozen=True)
class ResumePlan:
    done: tuple[str, ...]
    batches: tuple[Batch, ...]
    reason: str


def plan_resume(
    snapshot: Snapshot,
    earlier_snapshot_id: str,
    outcomes: Mapping[str, HostOutcome],
    batches: Sequence[Batch],
) -> ResumePlan:
    """The batches still to run: the same batches minus done hosts (empty batches dropped, renumbered).

    A host that failed (the canary, say) is not done: it is tried again first, in its own batch.

    :raises ResumeRefused: when the earlier run used another snapshot.
    """
    if earlier_snapshot_id != snapshot.snapshot_id:
        raise ResumeRefused(
            f"the earlier run used snapshot {earlier_snapshot_id}, this plan is {snapshot.snapshot_id}: "
            "a resume installs the same versions; start a new wave instead"
        )
    done = tuple(sorted(h for h, outcome in outcomes.items() if outcome.done))
    remaining: list[Batch] = []
    for batch in batches:
        hosts = tuple(h for h in batch.hosts if h not in done)
        if hosts:
            remaining.append(Batch(len(remaining), hosts, batch.canary))
    failed = sorted(h for h, outcome in outcomes.items() if not outcome.done)
    reason = (
        f"resume with snapshot {snapshot.snapshot_id}: {len(done)} host(s) done and skipped "
        f"({', '.join(done) or 'none'}); again: {', '.join(failed) or 'none'}; "
        f"{len(remaining)} batch(es) remain"
    )
    return ResumePlan(done, tuple(remaining), reason)


__all__ = ["HostOutcome", "ResumePlan", "ResumeRefused", "plan_resume"]
