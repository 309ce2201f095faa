"""Probe coverage: how many samples each target should have had in a period, and how many it has."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

from cloudops.errors import InvalidInputError
from cloudops.probes.store import SampleStore

SAMPLES_ENV = "CLOUDOPS_PROBE_SAMPLES"


def samples_root(root: str | Path | None = None) -> Path:
    """Where the probe process keeps its samples: ``root``, else ``$CLOUDOPS_PROBE_SAMPLES``.

    :raises InvalidInputError: when neither is set.
    """
    value = root if root is not None else os.environ.get(SAMPLES_ENV)
    if not value:
        raise InvalidInputError(f"no sample directory: pass --samples or set {SAMPLES_ENV}")
    return Path(value)


def estate_store(estate: str, root: str | Path | None = None) -> SampleStore:
    """The sample store of one estate: ``<samples root>/<estate>/`` (estates never share targets' keys)."""
    return SampleStore(samples_root(root) / estate)


@dataclass(frozen=True)
class TargetCoverage:
    """One target over a period: minutes it should have a sample for, and minutes that have one."""

    target: str
    expected: int
    recorded: int
    failed: int

    @property
    def percent(self) -> Fraction:
        return Fraction(100 * self.recorded, self.expected) if self.expected else Fraction(0)


def coverage(
    store: SampleStore, targets: Sequence[str], start: datetime, end: datetime
) -> list[TargetCoverage]:
    """Per target: whole minutes in ``[start, end)``, minutes with at least one sample, failed minutes.

    ``start`` and ``end`` must be aware and on whole minutes (a report's month, or up to now).

    :raises InvalidInputError: a naive or unaligned bound, or an end before the start.
    """
    for name, value in (("start", start), ("end", end)):
        if value.tzinfo is None:
            raise InvalidInputError(f"coverage {name} {value} has no time zone")
        if value.second or value.microsecond:
            raise InvalidInputError(f"coverage {name} {value.isoformat()} is not on a whole minute")
    if end < start:
        raise InvalidInputError(f"coverage end {end.isoformat()} is before its start {start.isoformat()}")
    import pyarrow as pa
    import pyarrow.compute as pc

    expected = int((end - start).total_seconds() // 60)
    table = store.read(start, end, targets)
    found: dict[str, tuple[int, int]] = {}
    if table.num_rows:
        minute = pc.divide(table.column("at").cast(pa.int64()), 60)
        grouped = (
            pa.table(
                {
                    "target": table.column("target").cast(pa.string()),
                    "minute": minute,
                    "bad": pc.invert(table.column("ok")),
                }
            )
            .group_by(["target", "minute"])
            .aggregate([("bad", "any")])
        )
        per_target = grouped.group_by("target").aggregate([("minute", "count"), ("bad_any", "sum")])
        for name, count, bad in zip(
            per_target.column("target").to_pylist(),
            per_target.column("minute_count").to_pylist(),
            per_target.column("bad_any_sum").to_pylist(),
            strict=True,
        ):
            found[name] = (int(count), int(bad or 0))
    return [TargetCoverage(key, expected, *found.get(key, (0, 0))) for key in dict.fromkeys(targets)]


def minute_floor(moment: datetime) -> datetime:
    """``moment`` (aware) down to its whole UTC minute."""
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


__all__ = ["SAMPLES_ENV", "TargetCoverage", "coverage", "estate_store", "minute_floor", "samples_root"]
