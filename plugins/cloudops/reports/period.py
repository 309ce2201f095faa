"""The calendar month of a report, in the estate's time zone, cut into one-minute slices.

Slice ``i`` covers ``[start + i minutes, start + (i + 1) minutes)`` of elapsed time, so a month that
leaves summer time has one hour of slices more (Europe/Paris, October 2026: 44,700) and a month that
enters it one hour less (March 2026: 44,580). Arithmetic between instants is done in UTC: Python
subtracts two datetimes of the same zone by their wall clocks, which would hide the DST hour.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from cloudops.errors import InvalidInputError

SLICE = timedelta(minutes=1)
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True)
class MonthPeriod:
    """One calendar month: ``start`` inclusive, ``end`` exclusive, both in UTC; ``time_zone`` its zone."""

    month: str
    time_zone: str
    start: datetime
    end: datetime

    @property
    def minutes(self) -> int:
        """Number of one-minute slices (elapsed minutes) in the month."""
        return int((self.end - self.start).total_seconds()) // 60

    def slice_start(self, index: int) -> datetime:
        """The UTC instant slice ``index`` starts at (``minutes`` gives the period's end)."""
        return self.start + index * SLICE

    def slice_of(self, moment: datetime) -> int:
        """The index of the slice holding ``moment`` (negative before the month, ``>= minutes`` after)."""
        return int((moment.astimezone(UTC) - self.start).total_seconds() // 60)

    def slices_overlapping(self, start: datetime, end: datetime) -> range:
        """The slices that overlap ``[start, end)``, clipped to the month (empty when outside it)."""
        first = max(0, self.slice_of(start))
        seconds = (end.astimezone(UTC) - self.start).total_seconds()
        last = min(self.minutes, -int(-seconds // 60))  # ceiling: a slice touched at all is in
        return range(first, max(first, last))

    def local(self, moment: datetime) -> datetime:
        """``moment`` in the period's time zone."""
        return moment.astimezone(zoneinfo.ZoneInfo(self.time_zone))

    def day_bounds(self) -> list[tuple[date, int, int]]:
        """Each local day of the month with its first slice and the slice after its last."""
        zone = zoneinfo.ZoneInfo(self.time_zone)
        first = self.start.astimezone(zone).date()
        days = []
        day = first
        while True:
            begin = datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)
            if begin >= self.end:
                break
            following = day + timedelta(days=1)
            stop = min(self.end, datetime(following.year, following.month, following.day, tzinfo=zone))
            days.append((day, self.slice_of(begin), self.slice_of(stop.astimezone(UTC))))
            day = following
        return days


def month_period(month: str, time_zone: str, *, now: datetime) -> MonthPeriod:
    """The month ``YYYY-MM`` in ``time_zone``; refused unless it has ended by ``now``.

    :raises InvalidInputError: a malformed month, an unknown zone, or a month not over yet (its figures
        would change: the report is made once the month is complete).
    """
    match = _MONTH.match(month.strip())
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise InvalidInputError(f"month {month!r}: expected YYYY-MM, e.g. 2026-11")
    try:
        zone = zoneinfo.ZoneInfo(time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidInputError(f"time zone {time_zone!r} is unknown (use an IANA name)") from None
    if now.tzinfo is None:
        raise InvalidInputError("now must carry a time zone")
    year, number = int(match.group(1)), int(match.group(2))
    start = datetime(year, number, 1, tzinfo=zone)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=zone)
    period = MonthPeriod(f"{year:04d}-{number:02d}", time_zone, start.astimezone(UTC), end.astimezone(UTC))
    if period.start > now:
        raise InvalidInputError(
            f"month {period.month}: it is in the future (it starts {start.isoformat()}, now is "
            f"{now.astimezone(zone).isoformat()})"
        )
    if period.end > now:
        raise InvalidInputError(
            f"month {period.month}: it has not ended yet (it ends {end.isoformat()}); a report covers a "
            "whole month"
        )
    return period


def previous_month(now: datetime, time_zone: str) -> str:
    """The month before the one ``now`` falls in, in ``time_zone`` (what the run on the 1st reports)."""
    local = now.astimezone(zoneinfo.ZoneInfo(time_zone))
    year, number = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
    return f"{year:04d}-{number:02d}"


__all__ = ["SLICE", "MonthPeriod", "month_period", "previous_month"]
