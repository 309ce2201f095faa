"""What a failover drill must achieve (:class:`DrillTargets`) and what must hold before it may move a
primary (:class:`DrillGuards`), as plain frozen records.

They carry no catalog types on purpose: the catalog's ``clusters:`` section maps onto them (one field
each), and tests and the CLI build them directly. Every field is checked where it is made, so a bad
value is refused with its name before a drill starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cloudops.errors import InvalidInputError

DrillMode = Literal["planned", "crash"]
DRILL_MODES: tuple[str, ...] = get_args(DrillMode)

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^\s*(?P<days>daily|[A-Za-z]{3}(?:\s*[-,]\s*[A-Za-z]{3})*)\s+"
    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)


@dataclass(frozen=True)
class DrillTargets:
    """The promises a drill checks, each turned into a PASS/FAIL/ABORTED verdict.

    :param max_write_downtime_s: the longest the probe may see writes failing or stalled in one window
        (first failed or stalled write to the first acknowledged one after it).
    :param max_acked_writes_lost: acknowledged writes that may be missing afterwards (0 for RPO 0).
    :param max_drill_s: the whole drill, switchover and fail-back and their verifications included.
    """

    max_write_downtime_s: float = 30.0
    max_acked_writes_lost: int = 0
    max_drill_s: float = 600.0

    def __post_init__(self) -> None:
        _positive("targets.max_write_downtime_s", self.max_write_downtime_s)
        _positive("targets.max_drill_s", self.max_drill_s)
        if self.max_acked_writes_lost < 0:
            raise InvalidInputError(
                f"targets.max_acked_writes_lost must be 0 or more, not {self.max_acked_writes_lost}"
            )


@dataclass(frozen=True)
class DrillWindow:
    """When drills may start: some days of the week, from ``start`` to ``end`` in ``timezone``.

    A window whose end is before its start runs past midnight and belongs to the day it starts on.
    Made from the catalog's text with :meth:`parse` (``"Sun 02:00-04:00"``, ``"Sat,Sun 01:00-05:00"``,
    ``"Mon-Fri 22:00-02:00"``, ``"daily 02:00-03:00"``).
    """

    days: frozenset[int]  # 0 = Monday, as datetime.weekday()
    start: time
    end: time
    timezone: str = "UTC"
    text: str = ""

    @classmethod
    def parse(cls, text: str, *, timezone: str = "UTC", where: str = "guards.window") -> DrillWindow:
        """Read a window such as ``"Sun 02:00-04:00"``.

        :raises InvalidInputError: naming ``where`` and what is wrong.
        """
        match = _WINDOW.match(text)
        if not match:
            raise InvalidInputError(
                f"{where}: {text!r} is no window; write days and hours like 'Sun 02:00-04:00', "
                "'Sat,Sun 01:00-05:00', 'Mon-Fri 22:00-02:00' or 'daily 02:00-03:00'"
            )
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInputError(f"{where}: unknown time zone {timezone!r}") from None
        days: set[int] = set()
        spec = match["days"].lower()
        if spec == "daily":
            days = set(range(7))
        else:
            for part in re.split(r"\s*,\s*", spec):
                ends = [_day(name.strip(), where, text) for name in part.split("-")]
                if len(ends) == 1:
                    days.add(ends[0])
                else:
                    first, last = ends
                    days.update((first + step) % 7 for step in range((last - first) % 7 + 1))
        start, end = _clock(match["start"], where, text), _clock(match["end"], where, text)
        if start == end:
            raise InvalidInputError(f"{where}: {text!r} starts and ends at the same time")
        return cls(frozenset(days), start, end, timezone, text.strip())

    def contains(self, moment: datetime) -> bool:
        """Whether ``moment`` (an aware datetime) lies inside the window."""
        if moment.tzinfo is None:
            raise InvalidInputError("a drill window is checked against an aware datetime, not a naive one")
        local = moment.astimezone(ZoneInfo(self.timezone))
        clock = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return local.weekday() in self.days and self.start <= clock < self.end
        # Past midnight: the evening part on a window day, the morning part on the day after one.
        if clock >= self.start:
            return local.weekday() in self.days
        return clock < self.end and (local.weekday() - 1) % 7 in self.days

    def describe(self) -> str:
        """The window as written (or rebuilt), with its time zone."""
        text = self.text or (
            ",".join(_DAYS[d].title() for d in sorted(self.days)) + f" {self.start:%H:%M}-{self.end:%H:%M}"
        )
        return f"{text} {self.timezone}"


@dataclass(frozen=True)
class DrillGuards:
    """What must hold before a drill moves the primary, each checked by a guard in
    :mod:`cloudops.failover.guards` (lag twice: at preflight and within a second of the action).

    :param max_lag_bytes: the candidate's replay lag in bytes, at most.
    :param max_lag_s: the candidate's replay lag in seconds, at most.
    :param min_healthy_replicas: replicas streaming from the primary, at least (the candidate counts).
    :param min_interval: the time since the cluster's last drill, at least.
    :param window: when a drill may start; None: at any time.
    :param modes_allowed: ``planned`` everywhere; ``crash`` only where the catalog allows it.
    :param catch_up_timeout_s: how long a planned switchover waits for the candidate to replay the old
        primary's shutdown checkpoint before it aborts and restarts the old primary.
    :param crash_detect_timeout_s: how long a crash drill waits for the failover to be seen (Patroni:
        the candidate leading, after the leader key's ttl; native-pg: the crashed server gone).
    """

    max_lag_bytes: int = 1_048_576
    max_lag_s: float = 5.0
    min_healthy_replicas: int = 1
    min_interval: timedelta = timedelta(hours=24)
    window: DrillWindow | None = None
    modes_allowed: frozenset[str] = field(default=frozenset({"planned"}))
    catch_up_timeout_s: float = 30.0
    crash_detect_timeout_s: float = 90.0

    def __post_init__(self) -> None:
        if self.max_lag_bytes < 0:
            raise InvalidInputError(f"guards.max_lag_bytes must be 0 or more, not {self.max_lag_bytes}")
        if self.max_lag_s < 0:
            raise InvalidInputError(f"guards.max_lag_s must be 0 or more, not {self.max_lag_s}")
        if self.min_healthy_replicas < 1:
            raise InvalidInputError(
                "guards.min_healthy_replicas must be at least 1 (the candidate), "
                f"not {self.min_healthy_replicas}"
            )
        if self.min_interval < timedelta(0):
            raise InvalidInputError(f"guards.min_interval must not be negative, not {self.min_interval}")
        _positive("guards.catch_up_timeout_s", self.catch_up_timeout_s)
        _positive("guards.crash_detect_timeout_s", self.crash_detect_timeout_s)
        unknown = set(self.modes_allowed) - set(DRILL_MODES)
        if unknown:
            raise InvalidInputError(
                f"guards.modes_allowed: unknown mode(s) {', '.join(sorted(unknown))}; "
                f"the modes are {', '.join(DRILL_MODES)}"
            )


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise InvalidInputError(f"{name} must be more than 0, not {value}")


def _day(name: str, where: str, text: str) -> int:
    try:
        return _DAYS.index(name[:3].lower())
    except ValueError:
        raise InvalidInputError(
            f"{where}: {text!r}: {name!r} is no day; use Mon, Tue, Wed, Thu, Fri, Sat, Sun or daily"
        ) from None


def _clock(value: str, where: str, text: str) -> time:
    hours, minutes = (int(part) for part in value.split(":"))
    if hours > 23 or minutes > 59:
        raise InvalidInputError(f"{where}: {text!r}: {value} is no time of day")
    return time(hours, minutes)


__all__ = ["DRILL_MODES", "DrillGuards", "DrillMode", "DrillTargets", "DrillWindow"]
