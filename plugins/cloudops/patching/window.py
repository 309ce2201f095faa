"""Maintenance windows in the estate's time zone: is one open, when is its cutoff, does a batch still fit.

A window opens on each listed day at ``start`` local time and stays open ``duration`` of elapsed time
(so across a DST change a 3h window is still 3 hours long; a start that falls in the hour clocks skip is
read as the same wall time after the jump, as zoneinfo does). No new batch starts after ``end - cutoff``.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from cloudops.catalog.models import WEEKDAYS, PatchWindow, render_duration
from cloudops.patching.waves import Decision


@dataclass(frozen=True)
class WindowCheck:
    """Whether batches may start now (``open``), the window's bounds in UTC, and why."""

    open: bool
    reason: str
    opens: datetime | None = None
    cutoff_at: datetime | None = None
    closes: datetime | None = None


def _occurrence(window: PatchWindow, zone: zoneinfo.ZoneInfo, day: datetime) -> tuple[datetime, datetime]:
    hour, minute = (int(part) for part in window.start.split(":"))
    local = datetime.combine(day.date(), time(hour, minute), tzinfo=zone)
    opens = local.astimezone(UTC)
    # a wall time that does not exist (spring forward): normalise through UTC, as a clock would show it
    opens = opens.astimezone(zone).astimezone(UTC)
    return opens, opens + window.duration


def check_window(window: PatchWindow | None, timezone: str, now: datetime) -> WindowCheck:
    """Check ``now`` (aware) against ``window`` in the estate's ``timezone``; no window means always open."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if window is None:
        return WindowCheck(True, "no maintenance window: batches may start at any time")
    zone = zoneinfo.ZoneInfo(timezone)
    local_now = now.astimezone(zone)
    upcoming: datetime | None = None
    for offset in (-1, 0, 1, 2, 3, 4, 5, 6, 7):
        day = local_now + timedelta(days=offset)
        if WEEKDAYS[day.weekday()] not in window.days:
            continue
        opens, closes = _occurrence(window, zone, day)
        cutoff_at = closes - window.cutoff
        if opens <= now < cutoff_at:
            return WindowCheck(
                True,
                f"inside the window opened {_local(opens, zone)}; "
                f"no new batch after {_local(cutoff_at, zone)}",
                opens,
                cutoff_at,
                closes,
            )
        if cutoff_at <= now < closes:
            return WindowCheck(
                False,
                f"the window opened {_local(opens, zone)} is past its cutoff {_local(cutoff_at, zone)} "
                f"(cutoff {render_duration(window.cutoff)} before it closes {_local(closes, zone)}): "
                "no batch "
                "may start; run the wave in the next window",
                opens,
                cutoff_at,
                closes,
            )
        if opens > now and (upcoming is None or opens < upcoming):
            upcoming = opens
    when = _local(upcoming, zone) if upcoming else "never"
    return WindowCheck(False, f"outside the maintenance window; the next opens {when}", upcoming)


def _local(moment: datetime, zone: zoneinfo.ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%a %Y-%m-%d %H:%M %Z")


def forecast_batch(canary_duration: timedelta | None, measured: list[timedelta]) -> timedelta | None:
    """How long the next batch will take: the slowest measured batch so far, else the canary's time."""
    if measured:
        return max(measured)
    return canary_duration


def next_batch_fits(check: WindowCheck, now: datetime, forecast: timedelta | None) -> Decision:
    """Start the next batch only if the window is open and the forecast ends before the cutoff."""
    if not check.open:
        return Decision(False, f"stop starting batches: {check.reason}")
    if check.cutoff_at is None:
        return Decision(True, check.reason)
    if now >= check.cutoff_at:
        return Decision(False, f"stop starting batches: the cutoff {check.cutoff_at.isoformat()} has passed")
    if forecast is not None and now + forecast > check.cutoff_at:
        return Decision(
            False,
            f"stop starting batches: the next batch is forecast to take {render_duration(forecast)} and "
            f"would end at {(now + forecast).isoformat()}, past the cutoff {check.cutoff_at.isoformat()}",
        )
    ahead = "no forecast yet" if forecast is None else f"forecast {render_duration(forecast)}"
    return Decision(True, f"the next batch fits before the cutoff {check.cutoff_at.isoformat()} ({ahead})")


__all__ = ["WindowCheck", "check_window", "forecast_batch", "next_batch_fits"]
