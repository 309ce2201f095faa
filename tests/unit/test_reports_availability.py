"""SLA arithmetic on fixture months whose every figure was worked out by hand (comments show how)."""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from cloudops.catalog.models import Slo, StandingWindow
from cloudops.errors import InvalidInputError
from cloudops.reports.availability import TargetSamples, samples_grid, slo_month
from cloudops.reports.maintenance import MaintenanceWork, standing_occurrences
from cloudops.reports.period import MonthPeriod, month_period, previous_month

pytestmark = pytest.mark.unit

PARIS = "Europe/Paris"
NOW = datetime(2027, 3, 15, tzinfo=UTC)
TIERS = [
    {"below": 99.9, "credit_pct": 10},
    {"below": 99.0, "credit_pct": 25},
    {"below": 95.0, "credit_pct": 100},
]


def paris(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=zoneinfo.ZoneInfo(PARIS))  # type: ignore[misc]


def slo(targets: Sequence[str], policy: str = "excluded", **extra: Any) -> Slo:
    spec: dict[str, Any] = {
        "name": "shop",
        "targets": [{"kind": key.split(":")[0], "name": key.split(":")[1]} for key in targets],
        "objectives": [
            {"role": "internal", "target_percent": 99.95},
            {"role": "sla", "target_percent": 99.9},
        ],
        "no_data_policy": policy,
        "credit_tiers": TIERS,
        "monthly_fee": "1000.00",
    }
    spec.update(extra)
    return Slo.model_validate(spec)


def samples(
    period: MonthPeriod,
    keys: Sequence[str],
    bad: Sequence[tuple[str, datetime, datetime]] = (),
    missing: Sequence[tuple[str, datetime, datetime]] = (),
    margin: int = 0,
) -> Iterator[tuple[str, datetime, bool]]:
    """One sample a minute (17 s in) per target; ``bad`` spans fail, ``missing`` spans have none."""
    for index in range(-margin, period.minutes + margin):
        at = period.slice_start(index) + timedelta(seconds=17)
        for key in keys:
            if any(k == key and s <= at < e for k, s, e in missing):
                continue
            yield key, at, not any(k == key and s <= at < e for k, s, e in bad)


def test_periods_in_the_estate_time_zone() -> None:
    october = month_period("2026-10", PARIS, now=NOW)  # summer time ends on the 25th: one hour more
    assert october.minutes == 31 * 1440 + 60 == 44700
    assert october.start == datetime(2026, 9, 30, 22, tzinfo=UTC)
    assert october.end == datetime(2026, 10, 31, 23, tzinfo=UTC)
    assert month_period("2026-03", PARIS, now=NOW).minutes == 31 * 1440 - 60 == 44580
    assert month_period("2026-02", PARIS, now=NOW).minutes == 28 * 1440 == 40320
    assert month_period("2024-02", PARIS, now=NOW).minutes == 29 * 1440
    assert month_period("2026-11", PARIS, now=NOW).minutes == 30 * 1440
    assert month_period("2026-12", "UTC", now=NOW).end == datetime(2027, 1, 1, tzinfo=UTC)
    days = {day: stop - first for day, first, stop in october.day_bounds()}
    assert len(days) == 31
    assert days[date(2026, 10, 25)] == 1500
    assert sum(days.values()) == 44700
    assert previous_month(datetime(2027, 1, 1, 0, 30, tzinfo=zoneinfo.ZoneInfo(PARIS)), PARIS) == "2026-12"
    # 23:30 UTC on 31 December is already 1 January in Paris: the month before is December.
    assert previous_month(datetime(2026, 12, 31, 23, 30, tzinfo=UTC), PARIS) == "2026-12"


@pytest.mark.parametrize(
    ("month", "expected"),
    [
        ("2027-04", "month 2027-04: it is in the future (it starts 2027-04-01T00:00:00+02:00"),
        ("2027-03", "month 2027-03: it has not ended yet (it ends 2027-04-01T00:00:00+02:00)"),
        ("2026-13", "month '2026-13': expected YYYY-MM"),
        ("Nov 2026", "month 'Nov 2026': expected YYYY-MM"),
    ],
)
def test_a_month_not_over_or_malformed_is_refused(month: str, expected: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        month_period(month, PARIS, now=NOW)
    assert str(caught.value).startswith(expected)


def test_a_31_day_month_with_one_outage() -> None:
    period = month_period("2026-07", PARIS, now=NOW)  # 31 days, no DST change: 44,640 minutes
    shop = slo(["database:shop"])
    outage = ("database:shop", paris(2026, 7, 10, 10, 0), paris(2026, 7, 10, 10, 30))
    grid = samples_grid(period, ["database:shop"], samples(period, ["database:shop"], [outage]))
    month = slo_month(shop, period, grid)
    assert (month.minutes, month.downtime_minutes, month.good_minutes) == (44640, 30, 44610)
    assert (month.maintenance_minutes, month.unknown_minutes, month.valid_minutes) == (0, 0, 44640)
    assert month.availability_percent == Fraction(100 * 44610, 44640)  # 99.9328 %
    assert month.coverage_percent == 100
    # Budget at 99.9 %: 44,640 x 0.1 % = 44.64 minutes, 14.64 left (32.8 %).
    assert month.sla.met is True
    assert month.sla.budget_minutes == Fraction("44.64")
    assert month.sla.budget_left_minutes == Fraction("14.64")
    assert month.sla.budget_left_percent == Fraction(1464, 4464) * 100
    # At 99.95 %: 22.32 minutes, overspent by 7.68.
    assert month.internal.met is False
    assert month.internal.budget_left_minutes == Fraction("-7.68")
    # Worst hour: 30 failed of 60 = 50 % errors over a 0.05 % budget: burn 1000, first from 09:30 local.
    assert month.worst_burn_rate == 1000
    assert month.worst_burn_start == paris(2026, 7, 10, 9, 30)
    assert month.credit.tier is None
    assert month.credit.owed == Decimal("0.00")
    (incident,) = month.incidents
    assert (incident.start, incident.end, incident.minutes) == (outage[1], outage[2], 30)
    assert incident.targets == ("database:shop",)
    assert not incident.began_before_period
    assert not incident.continues_after_period
    day = next(d for d in month.days if d.day == date(2026, 7, 10))
    assert (day.good_minutes, day.valid_minutes) == (1410, 1440)


def test_a_dst_month_counts_the_repeated_hour() -> None:
    period = month_period("2026-10", PARIS, now=NOW)
    shop = slo(["database:shop"])
    # 02:15 CEST (00:15 UTC) until 02:45 CET (01:45 UTC): 90 minutes, though the wall clock moved 30.
    start, end = datetime(2026, 10, 25, 0, 15, tzinfo=UTC), datetime(2026, 10, 25, 1, 45, tzinfo=UTC)
    grid = samples_grid(
        period, ["database:shop"], samples(period, ["database:shop"], [("database:shop", start, end)])
    )
    month = slo_month(shop, period, grid)
    assert (month.minutes, month.downtime_minutes) == (44700, 90)
    assert month.availability_percent == Fraction(100 * 44610, 44700)  # 99.7987 %: between 99.0 and 99.9
    assert month.credit.tier == 0
    assert month.credit.credit_pct == 10
    assert month.credit.owed == Decimal("100.00")
    assert month.incidents[0].minutes == 90
    day = next(d for d in month.days if d.day == date(2026, 10, 25))
    assert (day.good_minutes, day.valid_minutes) == (1410, 1500)


@pytest.mark.parametrize(
    ("policy", "downtime", "valid", "good"),
    [
        # 28 days = 40,320 minutes; 40 minutes without a sample, 20 minutes failed.
        ("good", 20, 40320, 40300),  # missing counted up: 99.9504 %
        ("bad", 60, 40320, 40260),  # missing counted down: 99.8512 %
        ("excluded", 20, 40280, 40260),  # missing left out: 99.9503 %
    ],
)
def test_missing_samples_under_each_no_data_policy(policy: str, downtime: int, valid: int, good: int) -> None:
    period = month_period("2026-02", PARIS, now=NOW)
    key = "endpoint:store"
    gap = (key, paris(2026, 2, 3, 12, 0), paris(2026, 2, 3, 12, 40))
    failed = (key, paris(2026, 2, 5, 8, 0), paris(2026, 2, 5, 8, 20))
    grid = samples_grid(period, [key], samples(period, [key], [failed], [gap]))
    month = slo_month(slo([key], policy), period, grid)
    assert month.minutes == 40320
    assert (month.downtime_minutes, month.valid_minutes, month.good_minutes) == (downtime, valid, good)
    assert month.unknown_minutes == 40
    assert month.coverage_percent == Fraction(100 * 40280, 40320)
    assert month.availability_percent == Fraction(100 * good, valid)
    expected_owed = Decimal("100.00") if policy == "bad" else Decimal("0.00")
    assert month.credit.owed == expected_owed
    assert len(month.incidents) == (2 if policy == "bad" else 1)


def test_maintenance_across_midnight_late_notice_standing_window_and_overrun() -> None:
    period = month_period("2026-11", PARIS, now=NOW)  # 30 days: 43,200 minutes
    web1, web2 = "host:web-1", "host:web-2"
    shop = slo(
        [web1, web2],
        maintenance_notice="5d",
        maintenance_windows=[
            # Across midnight, announced 6 days ahead: all 120 minutes excluded.
            {
                "change_id": "CHG-1",
                "start": paris(2026, 11, 7, 23),
                "end": paris(2026, 11, 8, 1),
                "announced_at": paris(2026, 11, 1, 23),
            },
            # Announced 2 days ahead, 5 asked: not excluded.
            {
                "change_id": "CHG-2",
                "start": paris(2026, 11, 20, 22),
                "end": paris(2026, 11, 20, 23),
                "announced_at": paris(2026, 11, 18, 22),
            },
        ],
        standing_windows=[{"days": ["sun"], "start": "02:00", "duration": "3h"}],
    )
    bad = [
        (web1, paris(2026, 11, 7, 23, 30), paris(2026, 11, 8, 0, 30)),  # inside CHG-1: excluded
        (web2, paris(2026, 11, 7, 23, 30), paris(2026, 11, 8, 0, 30)),
        (web1, paris(2026, 11, 20, 22, 0), paris(2026, 11, 20, 22, 10)),  # CHG-2 too late: 10 down
        (web1, paris(2026, 11, 15, 4, 40), paris(2026, 11, 15, 5, 20)),  # wave: 20 in window, 20 overrun
        (web2, paris(2026, 11, 22, 3, 0), paris(2026, 11, 22, 3, 5)),  # idle standing window: 5 down
        (web2, paris(2026, 11, 25, 10, 0), paris(2026, 11, 25, 10, 15)),  # unannounced wave: 15 down
    ]
    work = [
        MaintenanceWork(
            "patch_wave", "run-1", paris(2026, 11, 15, 2), paris(2026, 11, 15, 5, 20), frozenset({web1})
        ),
        MaintenanceWork(
            "patch_wave", "run-2", paris(2026, 11, 25, 10), paris(2026, 11, 25, 10, 30), frozenset({web2})
        ),
        MaintenanceWork(
            "failover_drill",
            "run-3",
            paris(2026, 11, 15, 2),
            paris(2026, 11, 15, 3),
            frozenset({"database:x"}),
        ),
    ]
    grid = samples_grid(period, [web1, web2], samples(period, [web1, web2], bad))
    month = slo_month(shop, period, grid, work)
    assert month.maintenance_minutes == 120  # only CHG-1 leaves no target counted
    assert month.valid_minutes == 43200 - 120
    assert month.downtime_minutes == 10 + 20 + 5 + 15
    assert month.availability_percent == Fraction(100 * 43030, 43080)  # 99.8839 %
    assert month.credit.tier == 0
    assert month.credit.owed == Decimal("100.00")
    assert [(w.change_id, w.excluded, w.excluded_minutes) for w in month.windows] == [
        ("CHG-1", True, 120),
        ("CHG-2", False, 0),
    ]
    assert month.windows[0].notice == timedelta(days=6)
    assert "announced 2d ahead, less than the 5d notice" in month.windows[1].reason
    assert [(w.run_id, w.inside_minutes, w.overrun_minutes) for w in month.work] == [
        ("run-1", 180, 20),
        ("run-2", 0, 30),
    ]
    assert "overran its window by 20 minute(s)" in month.work[0].reason
    assert "outside every announced window" in month.work[1].reason
    assert [(i.start, i.minutes, i.targets) for i in month.incidents] == [
        (paris(2026, 11, 15, 5, 0), 20, (web1,)),
        (paris(2026, 11, 20, 22, 0), 10, (web1,)),
        (paris(2026, 11, 22, 3, 0), 5, (web2,)),
        (paris(2026, 11, 25, 10, 0), 15, (web2,)),
    ]
    # Worst hour: the 20 overrun minutes among 60 valid ones, from 04:20 local: 1/3 over 0.05 %.
    assert month.worst_burn_rate == Fraction(2000, 3)
    assert month.worst_burn_start == paris(2026, 11, 15, 4, 20)


def test_standing_window_across_midnight_reaches_into_the_month() -> None:
    period = month_period("2026-11", PARIS, now=NOW)
    window = StandingWindow(days=["sat"], start="23:00", duration=timedelta(hours=3))
    found = standing_occurrences(window, period)
    # Saturday 31 October 23:00 until Sunday 1 November 02:00 overlaps November; then 4 Saturdays.
    assert found[0] == (paris(2026, 10, 31, 23), paris(2026, 11, 1, 2))
    assert [opens.astimezone(zoneinfo.ZoneInfo(PARIS)).day for opens, _ in found] == [31, 7, 14, 21, 28]


def test_an_outage_across_the_month_boundary_is_clipped_to_each_month() -> None:
    key = "database:shop"
    outage = (key, paris(2026, 11, 30, 23, 50), paris(2026, 12, 1, 0, 20))
    november = month_period("2026-11", PARIS, now=NOW)
    december = month_period("2026-12", PARIS, now=NOW)
    nov = slo_month(
        slo([key]), november, samples_grid(november, [key], samples(november, [key], [outage], margin=1))
    )
    dec = slo_month(
        slo([key]), december, samples_grid(december, [key], samples(december, [key], [outage], margin=1))
    )
    assert (nov.downtime_minutes, dec.downtime_minutes) == (10, 20)
    (last,) = nov.incidents
    assert (last.start, last.end, last.minutes) == (outage[1], paris(2026, 12, 1), 10)
    assert last.continues_after_period
    assert not last.began_before_period
    (first,) = dec.incidents
    assert (first.start, first.end, first.minutes) == (paris(2026, 12, 1), outage[2], 20)
    assert first.began_before_period
    assert not first.continues_after_period
    assert dec.minutes == 44640
    assert dec.availability_percent == Fraction(100 * 44620, 44640)


@pytest.mark.parametrize(("failed", "tier", "owed"), [(20, None, "0.00"), (21, 0, "150.00")])
def test_the_credit_boundary_at_exactly_99_95(failed: int, tier: int | None, owed: str) -> None:
    period = month_period("2026-02", PARIS, now=NOW)  # 40,320 minutes, 320 without data: 40,000 valid
    key = "endpoint:store"
    gap = (key, paris(2026, 2, 1, 0, 0), paris(2026, 2, 1, 5, 20))
    failure = (key, paris(2026, 2, 10, 0, 0), paris(2026, 2, 10, 0, failed))
    strict = slo(
        [key],
        objectives=[{"role": "internal", "target_percent": 99.99}, {"role": "sla", "target_percent": 99.95}],
        credit_tiers=[{"below": 99.95, "credit_pct": 10}, {"below": 99.0, "credit_pct": 25}],
        monthly_fee="1500.00",
    )
    month = slo_month(strict, period, samples_grid(period, [key], samples(period, [key], [failure], [gap])))
    assert month.valid_minutes == 40000
    assert month.availability_percent == Fraction(100 * (40000 - failed), 40000)  # 99.95 or 99.9475
    assert month.sla.met is (failed == 20)
    assert month.credit.tier == tier
    assert month.credit.owed == Decimal(owed)


def test_a_slice_target_below_one_tolerates_one_host_of_three() -> None:
    period = month_period("2026-11", PARIS, now=NOW)
    keys = ["host:web-1", "host:web-2", "host:web-3"]
    fleet = slo(
        keys,
        "excluded",
        objectives=[
            {"role": "internal", "target_percent": 99.95, "time_slice_target": 0.66},
            {"role": "sla", "target_percent": 99.9, "time_slice_target": 0.66},
        ],
    )
    bad = [
        ("host:web-1", paris(2026, 11, 3, 9), paris(2026, 11, 3, 10)),  # one of three: still good
        ("host:web-2", paris(2026, 11, 3, 9, 50), paris(2026, 11, 3, 10, 5)),  # two of three from 9:50
    ]
    month = slo_month(fleet, period, samples_grid(period, keys, samples(period, keys, bad)))
    assert month.downtime_minutes == 10
    (incident,) = month.incidents
    assert incident.targets == ("host:web-1", "host:web-2")


def test_a_grid_without_a_target_row_is_refused() -> None:
    period = month_period("2026-11", PARIS, now=NOW)
    with pytest.raises(InvalidInputError, match="slo shop: no samples row for target database:shop"):
        slo_month(slo(["database:shop"]), period, {})
    with pytest.raises(InvalidInputError, match="has 10 slices, the month 43200"):
        slo_month(slo(["database:shop"]), period, {"database:shop": TargetSamples(bytes(10))})
