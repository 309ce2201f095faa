"""Plan a wave's batches (canary group first, then Ansible ``serial`` sizes) and decide go/no-go after each.

Batch sizes: each entry of ``waves.batches`` is a count or a percentage of the hosts in the wave
(canaries included, excluded hosts not), rounded down and never below 1 host; the last entry repeats
until every host has a batch. Failure limits are EXCEEDED-not-equalled: with ``max_failed_per_batch: 1``
one failed host is tolerated and two halt the wave; 0 means any failure halts. The percentage form of the
batch limit is of that batch's size, of the budget of the wave's hosts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cloudops.catalog.models import Fleet, PatchWaves


@dataclass(frozen=True)
class Batch:
    """One batch of hosts run in parallel; ``canary`` for the canary batch."""

    index: int
    hosts: tuple[str, ...]
    canary: bool = False


@dataclass(frozen=True)
class Decision:
    """A go/no-go with the reason the caller logs."""

    go: bool
    reason: str


def batch_size(entry: int | str, total: int) -> int:
    """Hosts in a batch of ``entry`` (a count or "N%") for a wave of ``total`` hosts: at least 1."""
    if isinstance(entry, int):
        return max(1, entry)
    return max(1, int(total * int(entry.rstrip("%")) / 100))


def plan_batches(fleet: Fleet, waves: PatchWaves, excluded: Sequence[str] = ()) -> list[Batch]:
    """Order the fleet's hosts (catalog order) into batches, canaries first; ``excluded`` hosts are left out.

    An empty list means every host is excluded: there is nothing to patch.
    """
    skip = set(excluded)
    hosts = [host for host in fleet.hosts if host.name not in skip]
    canaries = [h.name for h in hosts if waves.canary_group and waves.canary_group in h.groups]
    rest = [h.name for h in hosts if h.name not in canaries]
    batches: list[Batch] = []
    if canaries:
        batches.append(Batch(0, tuple(canaries), canary=True))
    total = len(hosts)
    position = 0
    for step in range(len(rest)):
        if position >= len(rest):
            break
        entry = waves.batches[min(step, len(waves.batches) - 1)]
        size = batch_size(entry, total)
        batches.append(Batch(len(batches), tuple(rest[position : position + size])))
        position += size
    return batches


def _allowed(limit: int | str, of: int) -> float:
    return float(limit) if isinstance(limit, int) else of * int(limit.rstrip("%")) / 100


def _limit_text(limit: int | str, of: int, what: str) -> str:
    return f"{limit}" if isinstance(limit, int) else f"{limit} of {of} {what} = {_allowed(limit, of):g}"


def decide_after_batch(
    waves: PatchWaves,
    batch: Batch,
    failed_in_batch: Sequence[str],
    failed_in_wave: int,
    hosts_in_wave: int,
    batches_left: int,
) -> Decision:
    """Go on to the next batch, or halt: the batch limit, then the wave's budget (exceeded, not equalled).

    :param failed_in_wave: failed hosts so far, this batch included.
    """
    label = "canary batch" if batch.canary else f"batch {batch.index}"
    failed = len(failed_in_batch)
    names = f" ({', '.join(failed_in_batch)})" if failed else ""
    allowed = _allowed(waves.max_failed_per_batch, len(batch.hosts))
    if failed > allowed:
        limit = _limit_text(waves.max_failed_per_batch, len(batch.hosts), "hosts")
        return Decision(
            False,
            f"halt: {failed} of {len(batch.hosts)} host(s) of the {label} failed{names}, more than "
            f"max_failed_per_batch {limit}",
        )
    budget = _allowed(waves.failure_budget, hosts_in_wave)
    if failed_in_wave > budget:
        limit = _limit_text(waves.failure_budget, hosts_in_wave, "hosts in the wave")
        return Decision(
            False,
            f"halt: {failed_in_wave} host(s) failed in the wave so far, more than failure_budget {limit}",
        )
    if batches_left == 0:
        return Decision(False, f"done: the {label} was the last; {failed_in_wave} host(s) failed in the wave")
    return Decision(
        True,
        f"go: {failed} of {len(batch.hosts)} host(s) of the {label} failed{names} (limit "
        f"{_limit_text(waves.max_failed_per_batch, len(batch.hosts), 'hosts')}), "
        f"{failed_in_wave} in the wave "
        f"(budget {_limit_text(waves.failure_budget, hosts_in_wave, 'hosts in the wave')}); "
        f"{batches_left} batch(es) to go",
    )


__all__ = ["Batch", "Decision", "batch_size", "decide_after_batch", "plan_batches"]
