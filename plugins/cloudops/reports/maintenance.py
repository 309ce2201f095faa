"""Which minutes maintenance excludes from an SLO's month, and why each exclusion was (not) granted.

Three sources, one rule each:

- A **one-off window** (``maintenance_windows``) announced at least ``maintenance_notice`` before its
  start is excluded in full, for every target of the SLO. Announced too late, it is not excluded.
- A **standing window** (``standing_windows``, e.g. the weekly patch night) is excluded only while the
  ledger shows maintenance work (a patch wave, a failover drill) running inside it, and only for the
  targets that work touched. An idle standing window counts like any other time.
- **Work outside every granted window** (an overrun past the window's end, an unannounced wave) is
  not excluded: its failed minutes are downtime. The report lists the overrun minutes per run.

A slice is excluded when the excluded interval overlaps it at all (work that starts at 02:00:37 takes
the 02:00 slice). Standing windows open at their local start time and last ``duration`` of elapsed time,
like patch windows (:mod:`cloudops.patching.window`).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cloudops.catalog.models import WEEKDAYS, Slo, StandingWindow, render_duration
from cloudops.reports.period import MonthPeriod

Interval = tuple[datetime, datetime]


@dataclass(frozen=True)
class MaintenanceWork:
    """Maintenance the ledger recorded: a patch wave or failover drill, with the targets it touched.

    ``targets`` holds SLO target keys (``host:web-1``, ``database:orders_pg``); empty means every target.
    """

    kind: str
    run_id: str
    start: datetime
    end: datetime
    targets: frozenset[str] = frozenset()


@dataclass(frozen=True)
class WindowUse:
    """A one-off window: whether it was excluded, the notice given, and the minutes it took."""

    change_id: str
    start: datetime
    end: datetime
    notice: timedelta
    excluded: bool
    excluded_minutes: int
    reason: str


@dataclass(frozen=True)
class WorkUse:
    """One run of maintenance work: minutes inside a granted window, and minutes outside (overrun)."""

    kind: str
    run_id: str
    start: datetime
    end: datetime
    targets: tuple[str, ...]
    inside_minutes: int
    overrun_minutes: int
    reason: str


@dataclass(frozen=True)
class Exclusions:
    """Per target key, the set of excluded slice indexes; plus the account of every window and run."""

    slices: dict[str, set[int]]
    windows: tuple[WindowUse, ...]
    work: tuple[WorkUse, ...]


def standing_occurrences(window: StandingWindow, period: MonthPeriod) -> list[Interval]:
    """Every opening of ``window`` that overlaps the month (one opening the day before may reach in)."""
    zone = zoneinfo.ZoneInfo(period.time_zone)
    hour, minute = (int(part) for part in window.start.split(":"))
    day = period.start.astimezone(zone).date() - timedelta(days=1)
    last = period.end.astimezone(zone).date()
    found = []
    while day <= last:
        if WEEKDAYS[day.weekday()] in window.days:
            opens = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone).astimezone(UTC)
            closes = opens + window.duration
            if opens < period.end and closes > period.start:
                found.append((opens, closes))
        day += timedelta(days=1)
    return found


def _intersect(a: Interval, b: Interval) -> Interval | None:
    start, end = max(a[0], b[0]), min(a[1], b[1])
    return (start, end) if start < end else None


def _slices(period: MonthPeriod, intervals: Sequence[Interval]) -> set[int]:
    found: set[int] = set()
    for start, end in intervals:
        found.update(period.slices_overlapping(start, end))
    return found


def exclusions(slo: Slo, period: MonthPeriod, work: Sequence[MaintenanceWork]) -> Exclusions:
    """Decide, for ``slo`` over ``period``, which slices of which targets maintenance excludes."""
    keys = [target.key for target in slo.targets]
    excluded: dict[str, set[int]] = {key: set() for key in keys}
    granted: list[Interval] = []
    windows = []
    for window in slo.maintenance_windows:
        start, end = window.start.astimezone(UTC), window.end.astimezone(UTC)
        if end <= period.start or start >= period.end:
            continue
        notice = window.start - window.announced_at
        if notice >= slo.maintenance_notice:
            slices = _slices(period, [(start, end)])
            for key in keys:
                excluded[key] |= slices
            granted.append((start, end))
            asked = render_duration(slo.maintenance_notice)
            reason = f"excluded: announced {render_duration(notice)} ahead (at least {asked})"
            windows.append(WindowUse(window.change_id, start, end, notice, True, len(slices), reason))
        else:
            shown = (
                f"{render_duration(notice)} ahead"
                if notice >= timedelta(0)
                else f"{render_duration(-notice)} after it began"
            )
            reason = (
                f"not excluded: announced {shown}, less than the {render_duration(slo.maintenance_notice)} "
                "notice the contract asks; its failed minutes are downtime"
            )
            windows.append(WindowUse(window.change_id, start, end, notice, False, 0, reason))

    standing = [span for window in slo.standing_windows for span in standing_occurrences(window, period)]
    uses = []
    for run in sorted(work, key=lambda item: (item.start, item.run_id)):
        span = (run.start.astimezone(UTC), run.end.astimezone(UTC))
        if span[1] <= period.start or span[0] >= period.end:
            continue
        touched = [key for key in keys if not run.targets or key in run.targets]
        if not touched:
            continue
        inside = [part for window in standing if (part := _intersect(span, window))]
        inside_slices = _slices(period, inside)
        for key in touched:
            excluded[key] |= inside_slices
        covered = inside_slices | _slices(period, [part for w in granted if (part := _intersect(span, w))])
        run_slices = set(period.slices_overlapping(*span))
        overrun = len(run_slices - covered)
        if not covered:
            reason = "outside every announced window: not excluded, its failed minutes are downtime"
        elif overrun:
            reason = f"overran its window by {overrun} minute(s): those are not excluded"
        else:
            reason = "inside an announced window: excluded"
        uses.append(
            WorkUse(
                run.kind,
                run.run_id,
                span[0],
                span[1],
                tuple(touched),
                len(run_slices & covered),
                overrun,
                reason,
            )
        )
    return Exclusions(excluded, tuple(windows), tuple(uses))


__all__ = [
    "Exclusions",
    "MaintenanceWork",
    "WindowUse",
    "WorkUse",
    "exclusions",
    "standing_occurrences",
]
