"""A wave's time against its ideal: per batch the slowest host's own time, and the overhead by phase."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class HostTiming:
    """Seconds one host spent in each phase (preflight, pre_hook, install, reboot, health, post_hook...)."""

    host: str
    phases: Mapping[str, float]

    @property
    def total(self) -> float:
        return sum(self.phases.values())


@dataclass(frozen=True)
class WaveTiming:
    ideal: float
    actual: float
    per_batch: tuple[tuple[float, float], ...]  # (ideal, actual) per batch
    by_phase: Mapping[str, float]  # the slowest hosts' phases, summed over batches

    @property
    def overhead(self) -> float:
        return self.actual - self.ideal

    @property
    def ratio(self) -> float:
        return self.actual / self.ideal if self.ideal else 1.0

    def summary(self) -> str:
        phases = ", ".join(f"{phase} {seconds:.2f}s" for phase, seconds in self.by_phase.items())
        return (
            f"wave took {self.actual:.2f}s, ideal {self.ideal:.2f}s ({self.ratio:.2f}x, overhead "
            f"{self.overhead:.2f}s); slowest hosts' phases: {phases or 'none'}"
        )


def wave_timing(batches: Sequence[Sequence[HostTiming]], batch_walls: Sequence[float]) -> WaveTiming:
    """Compare each batch's wall time with its slowest host's own time (hosts of a batch run in parallel)."""
    if len(batches) != len(batch_walls):
        raise ValueError(f"{len(batches)} batches but {len(batch_walls)} wall times")
    per_batch = []
    by_phase: dict[str, float] = {}
    for hosts, wall in zip(batches, batch_walls, strict=True):
        slowest = max(hosts, key=lambda h: h.total, default=None)
        ideal = slowest.total if slowest else 0.0
        per_batch.append((ideal, wall))
        for phase, seconds in (slowest.phases if slowest else {}).items():
            by_phase[phase] = by_phase.get(phase, 0.0) + seconds
    return WaveTiming(sum(i for i, _ in per_batch), sum(batch_walls), tuple(per_batch), by_phase)


__all__ = ["HostTiming", "WaveTiming", "wave_timing"]
