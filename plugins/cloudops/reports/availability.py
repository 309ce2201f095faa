"""An SLO's month from one-minute probe samples: availability, budget, burn, incidents and credit owed.

The month is cut in one-minute slices (:mod:`cloudops.reports.period`). Each target has one cell per
slice: ``GOOD``, ``BAD`` or ``MISSING`` (no sample: the probe did not run or its answer was lost), and
a cell maintenance excludes (:mod:`cloudops.reports.maintenance`) is left out. A slice:

- is **maintenance** when every target's cell is excluded;
- has **no data** when none of its counted cells has a sample; the no-data policy then decides:
  ``good`` and ``bad`` count each missing cell so, ``excluded`` drops missing cells, and a slice left
  with none is removed from the month (``unknown`` minutes are reported under every policy);
- is **good** when its good cells are at least ``time_slice_target`` of its counted cells, else **bad**.

Availability is good ÷ valid slices (valid: not maintenance, not dropped). Every figure is an exact
fraction, so that a month at exactly 99.95 % is at 99.95 %, not 99.94999.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from cloudops.catalog.models import Slo
from cloudops.errors import InvalidInputError
from cloudops.reports.maintenance import Exclusions, MaintenanceWork, WindowUse, WorkUse, exclusions
from cloudops.reports.period import MonthPeriod

MISSING, GOOD, BAD = 0, 1, 2
_SLICE_GOOD, _SLICE_BAD, _SLICE_MAINTENANCE, _SLICE_DROPPED = 1, 2, 3, 4


@dataclass(frozen=True)
class TargetSamples:
    """One target's month: one code per slice (``codes``), and the minutes just before and after it."""

    codes: bytes
    before: int = MISSING
    after: int = MISSING


def samples_grid(
    period: MonthPeriod, targets: Iterable[str], samples: Iterable[tuple[str, datetime, bool]]
) -> dict[str, TargetSamples]:
    """Lay ``(target, at, ok)`` samples on the month's slices; a failed sample wins its minute.

    Samples of other targets, or outside the month and the minute on either side, are ignored.
    """
    size = period.minutes
    cells = {key: bytearray(size) for key in targets}
    edges: dict[str, list[int]] = {key: [MISSING, MISSING] for key in cells}
    for key, at, ok in samples:
        row = cells.get(key)
        if row is None:
            continue
        index = period.slice_of(at)
        code = GOOD if ok else BAD
        if 0 <= index < size:
            row[index] = max(row[index], code)
        elif index == -1 or index == size:
            side = 0 if index == -1 else 1
            edges[key][side] = max(edges[key][side], code)
    return {key: TargetSamples(bytes(row), *edges[key]) for key, row in cells.items()}


@dataclass(frozen=True)
class Incident:
    """Consecutive failed slices: when (clipped to the month), how long, which targets failed in it."""

    start: datetime
    end: datetime
    minutes: int
    targets: tuple[str, ...]
    began_before_period: bool
    continues_after_period: bool


@dataclass(frozen=True)
class ObjectiveResult:
    """The month against one objective: met or not, the error budget and what is left of it."""

    role: str
    target_percent: Fraction
    met: bool | None
    budget_minutes: Fraction
    budget_left_minutes: Fraction
    budget_left_percent: Fraction | None


@dataclass(frozen=True)
class Credit:
    """The credit tier the month reached (None: none) and the credit owed, with the reason."""

    tier: int | None
    credit_pct: Fraction
    owed: Decimal | None
    currency: str
    reason: str


@dataclass(frozen=True)
class DayResult:
    """One local day: good and valid slices, for the daily chart."""

    day: date
    good_minutes: int
    valid_minutes: int

    @property
    def availability_percent(self) -> Fraction | None:
        return Fraction(100 * self.good_minutes, self.valid_minutes) if self.valid_minutes else None


@dataclass(frozen=True)
class SloMonth:
    """Everything the report says about one SLO's month."""

    slo: str
    period: MonthPeriod
    minutes: int
    good_minutes: int
    downtime_minutes: int
    maintenance_minutes: int
    unknown_minutes: int
    valid_minutes: int
    availability_percent: Fraction | None
    coverage_percent: Fraction
    internal: ObjectiveResult
    sla: ObjectiveResult
    worst_burn_rate: Fraction | None
    worst_burn_start: datetime | None
    credit: Credit
    incidents: tuple[Incident, ...]
    windows: tuple[WindowUse, ...]
    work: tuple[WorkUse, ...]
    days: tuple[DayResult, ...]


def _exact(value: float) -> Fraction:
    """A catalog percentage as written (99.95 is 9995/100, not the binary float's value)."""
    return Fraction(repr(value))


def _objective(
    role: str, target: Fraction, valid: int, bad: int, availability: Fraction | None
) -> ObjectiveResult:
    budget = valid * (100 - target) / 100
    left = budget - bad
    return ObjectiveResult(
        role=role,
        target_percent=target,
        met=None if availability is None else availability >= target,
        budget_minutes=budget,
        budget_left_minutes=left,
        budget_left_percent=100 * left / budget if budget else None,
    )


def credit_for(slo: Slo, availability: Fraction | None) -> Credit:
    """The tier ``availability`` falls in (at_least <= A < below) and the credit owed on the fee."""
    if availability is None:
        return Credit(
            None, Fraction(0), None, slo.currency, "no valid minute in the month: no figure to judge"
        )
    for index, tier in enumerate(slo.credit_tiers):
        lower = tier.at_least
        if lower is None:
            lower = slo.credit_tiers[index + 1].below if index + 1 < len(slo.credit_tiers) else 0.0
        if _exact(lower) <= availability < _exact(tier.below):
            pct = _exact(tier.credit_pct)
            owed = None
            if slo.monthly_fee is not None:
                raw = slo.monthly_fee * Decimal(pct.numerator) / Decimal(pct.denominator) / 100
                owed = raw.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
            fee = f" of the monthly fee {slo.monthly_fee} {slo.currency}" if owed is not None else ""
            return Credit(
                index,
                pct,
                owed,
                slo.currency,
                f"below {tier.below} % (tier {index + 1}): {tier.credit_pct} %{fee}",
            )
    if slo.credit_tiers:
        reason = f"at or above {slo.credit_tiers[0].below} %: no credit"
    else:
        reason = "the SLO has no credit tiers"
    return Credit(
        None, Fraction(0), Decimal("0.00") if slo.monthly_fee is not None else None, slo.currency, reason
    )


def _worst_burn(states: Any, window: int, budget: Fraction) -> tuple[Fraction | None, int | None]:
    """The highest bad ÷ valid share over any ``window`` consecutive slices, divided by the budget.

    The first window with the highest share wins. Shares are compared as floats: two different
    fractions of at most a month's minutes differ by more than 1/44,640², far above a float's error,
    so the float order is the exact order; the figure returned is the exact fraction.
    """
    import numpy as np

    size = len(states)
    bad_sum = np.concatenate(([0], np.cumsum(states == _SLICE_BAD, dtype=np.int64)))
    valid_sum = np.concatenate(
        ([0], np.cumsum((states == _SLICE_GOOD) | (states == _SLICE_BAD), dtype=np.int64))
    )
    starts = np.arange(max(1, size - window + 1))
    stops = np.minimum(size, starts + window)
    bad, valid = bad_sum[stops] - bad_sum[starts], valid_sum[stops] - valid_sum[starts]
    if not valid.any() or not budget:
        return None, None
    share = np.where(valid > 0, bad / np.maximum(valid, 1), -1.0)
    best = int(np.argmax(share))
    return Fraction(int(bad[best]), int(valid[best])) / budget, best


def _slice_states(codes: Any, skip: Any, policy: str, slice_target: Fraction) -> tuple[Any, Any, int, int]:
    """Judge every slice at once from the targets' ``codes`` and the ``skip`` mask (both targets x slices).

    :return: the state of each slice, which targets count as failed in each slice, the unknown
        minutes, and the samples present (maintenance or not).
    """
    import numpy as np

    counted = ~skip
    missing = codes == MISSING
    answered = counted & ~missing
    good_cells = counted & (codes == GOOD)
    failing = counted & (codes == BAD)
    counted_cells = answered
    if policy == "good":
        good_cells = good_cells | (counted & missing)
        counted_cells = counted
    elif policy == "bad":
        failing = failing | (counted & missing)
        counted_cells = counted
    good = good_cells.sum(axis=0, dtype=np.int64)
    total = counted_cells.sum(axis=0, dtype=np.int64)
    any_counted = counted.any(axis=0)
    has_data = answered.any(axis=0)
    # The share test in exact integers, once per distinct (good, counted) pair of the month.
    width = codes.shape[0] + 1
    pairs, where = np.unique(good * width + total, return_inverse=True)
    meets = np.array(
        [
            (pair // width) * slice_target.denominator >= slice_target.numerator * (pair % width)
            for pair in pairs.tolist()
        ],
        dtype=bool,
    )[where.reshape(-1)]
    states = np.where(meets, _SLICE_GOOD, _SLICE_BAD).astype(np.uint8)
    states[total == 0] = _SLICE_DROPPED
    states[~any_counted] = _SLICE_MAINTENANCE
    unknown = int(np.count_nonzero(any_counted & ~has_data))
    return states, failing, unknown, int(np.count_nonzero(~missing))


def slo_month(
    slo: Slo,
    period: MonthPeriod,
    grid: Mapping[str, TargetSamples],
    work: Sequence[MaintenanceWork] = (),
    *,
    burn_window: timedelta = timedelta(hours=1),
) -> SloMonth:
    """Compute ``slo``'s month from the samples ``grid`` (from :func:`samples_grid`) and ledger ``work``.

    The slices are judged all at once (numpy arrays of targets x slices), by the rules of this
    module's docstring; only the share test runs in Python, exactly, once per distinct figure pair.

    :raises InvalidInputError: a target of the SLO has no row in the grid, or a row of the wrong length.
    """
    import numpy as np

    keys = [target.key for target in slo.targets]
    for key in keys:
        if key not in grid:
            raise InvalidInputError(f"slo {slo.name}: no samples row for target {key}")
        if len(grid[key].codes) != period.minutes:
            raise InvalidInputError(
                f"slo {slo.name}: target {key} has {len(grid[key].codes)} slices, the month {period.minutes}"
            )
    excluded: Exclusions = exclusions(slo, period, work)
    codes = np.zeros((len(keys), period.minutes), dtype=np.uint8)
    skip = np.zeros((len(keys), period.minutes), dtype=bool)
    for position, key in enumerate(keys):
        codes[position] = np.frombuffer(grid[key].codes, dtype=np.uint8)
        if excluded.slices[key]:
            skip[position, np.fromiter(excluded.slices[key], dtype=np.int64)] = True
    slice_target = _exact(slo.objective("sla").time_slice_target)
    states, failing, unknown, present = _slice_states(codes, skip, slo.no_data_policy, slice_target)

    tally = np.bincount(states, minlength=_SLICE_DROPPED + 1)
    good_minutes, bad_minutes = int(tally[_SLICE_GOOD]), int(tally[_SLICE_BAD])
    maintenance = int(tally[_SLICE_MAINTENANCE])
    valid = good_minutes + bad_minutes
    availability = Fraction(100 * good_minutes, valid) if valid else None
    internal_target = _exact(slo.objective("internal").target_percent)
    sla_target = _exact(slo.objective("sla").target_percent)
    window = max(1, int(burn_window.total_seconds() // 60))
    burn, burn_at = _worst_burn(states, window, (100 - internal_target) / 100)
    good_sum = np.concatenate(([0], np.cumsum(states == _SLICE_GOOD, dtype=np.int64)))
    bad_sum = np.concatenate(([0], np.cumsum(states == _SLICE_BAD, dtype=np.int64)))
    return SloMonth(
        slo=slo.name,
        period=period,
        minutes=period.minutes,
        good_minutes=good_minutes,
        downtime_minutes=bad_minutes,
        maintenance_minutes=maintenance,
        unknown_minutes=unknown,
        valid_minutes=valid,
        availability_percent=availability,
        coverage_percent=Fraction(100 * present, period.minutes * len(keys)),
        internal=_objective("internal", internal_target, valid, bad_minutes, availability),
        sla=_objective("sla", sla_target, valid, bad_minutes, availability),
        worst_burn_rate=burn,
        worst_burn_start=period.slice_start(burn_at) if burn_at is not None else None,
        credit=credit_for(slo, availability),
        incidents=_incidents(period, states, failing, keys, grid),
        windows=excluded.windows,
        work=excluded.work,
        days=tuple(
            DayResult(
                day,
                int(good_sum[stop] - good_sum[first]),
                int(good_sum[stop] - good_sum[first] + bad_sum[stop] - bad_sum[first]),
            )
            for day, first, stop in period.day_bounds()
        ),
    )


def _incidents(
    period: MonthPeriod,
    states: Any,
    failing: Any,
    keys: list[str],
    grid: Mapping[str, TargetSamples],
) -> tuple[Incident, ...]:
    """Merge runs of failed slices into incidents; one touching a month edge says if it goes beyond.

    ``failing`` (targets x slices) marks the targets that counted as failed in each slice; an
    incident names every target failed in any of its slices.
    """
    import numpy as np

    size = len(states)
    edges = np.diff(np.concatenate(([0], (states == _SLICE_BAD).astype(np.int8), [0])))
    found = []
    runs = zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    for start, stop in runs:
        failed = np.flatnonzero(failing[:, start:stop].any(axis=1))
        names = tuple(keys[int(position)] for position in failed)
        found.append(
            Incident(
                start=period.slice_start(start),
                end=period.slice_start(stop),
                minutes=stop - start,
                targets=names,
                began_before_period=start == 0 and any(grid[key].before == BAD for key in names),
                continues_after_period=stop == size and any(grid[key].after == BAD for key in names),
            )
        )
    return tuple(found)


__all__ = [
    "BAD",
    "GOOD",
    "MISSING",
    "Credit",
    "DayResult",
    "Incident",
    "ObjectiveResult",
    "SloMonth",
    "TargetSamples",
    "credit_for",
    "samples_grid",
    "slo_month",
]
