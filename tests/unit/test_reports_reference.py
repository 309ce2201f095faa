"""The report's array and index code against the rules written out one minute and one run at a time.

``slo_month`` judges every slice at once (numpy) and ``incident_rows`` finds the runs near an incident
by sorted start times; both were once these literal loops. Random short periods (every no-data
policy, slice targets below one, maintenance, runs that start long before an incident) must give the
same figures, minute for minute and run for run.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest

from cloudops.catalog.models import Slo
from cloudops.evidence.runs import Run
from cloudops.reports.availability import BAD, GOOD, MISSING, Incident, TargetSamples, slo_month
from cloudops.reports.maintenance import MaintenanceWork, exclusions
from cloudops.reports.monthly import AROUND, incident_rows
from cloudops.reports.period import MonthPeriod

pytestmark = pytest.mark.unit

START = datetime(2026, 11, 1, tzinfo=UTC)


def reference_month(
    slo: Slo, period: MonthPeriod, grid: dict[str, TargetSamples], work: Any
) -> dict[str, Any]:
    """The per-minute rules of cloudops.reports.availability, one slice and one target at a time."""
    keys = [target.key for target in slo.targets]
    skip = exclusions(slo, period, work).slices
    share = Fraction(repr(slo.objective("sla").time_slice_target))
    states, failed, unknown, present = [], [], 0, 0
    for index in range(period.minutes):
        good = counted = 0
        has_data = any_counted = False
        failing = []
        for position, key in enumerate(keys):
            code = grid[key].codes[index]
            present += code != MISSING
            if index in skip[key]:
                continue
            any_counted = True
            if code == GOOD or (code == MISSING and slo.no_data_policy == "good"):
                good, counted = good + 1, counted + 1
            elif code == BAD or (code == MISSING and slo.no_data_policy == "bad"):
                counted += 1
                failing.append(position)
            has_data = has_data or code != MISSING
        if not any_counted:
            states.append("maintenance")
            continue
        unknown += not has_data
        if not counted:
            states.append("dropped")
        elif good * share.denominator >= share.numerator * counted:
            states.append("good")
        else:
            states.append("bad")
            failed.append((index, failing))
    incidents: list[tuple[int, int, tuple[str, ...]]] = []
    for index, failing in failed:
        names = {keys[position] for position in failing}
        if incidents and incidents[-1][1] == index:
            start, _, before = incidents[-1]
            incidents[-1] = (start, index + 1, tuple(sorted(set(before) | names, key=keys.index)))
        else:
            incidents.append((index, index + 1, tuple(sorted(names, key=keys.index))))
    return {
        "good": states.count("good"),
        "bad": states.count("bad"),
        "maintenance": states.count("maintenance"),
        "unknown": unknown,
        "coverage": Fraction(100 * present, period.minutes * len(keys)),
        "incidents": incidents,
        "burn": reference_burn(
            states, 60, (100 - Fraction(repr(slo.objective("internal").target_percent))) / 100
        ),
    }


def reference_burn(states: list[str], window: int, budget: Fraction) -> tuple[Fraction | None, int | None]:
    """The first window with the highest bad ÷ valid share, compared as exact fractions."""
    best: tuple[Fraction, int] | None = None
    for start in range(max(1, len(states) - window + 1)):
        part = states[start : start + window]
        valid = part.count("good") + part.count("bad")
        if valid and (best is None or Fraction(part.count("bad"), valid) > best[0]):
            best = (Fraction(part.count("bad"), valid), start)
    return (None, None) if best is None else (best[0] / budget, best[1])


def random_case(
    rng: random.Random,
) -> tuple[Slo, MonthPeriod, dict[str, TargetSamples], list[MaintenanceWork]]:
    minutes = rng.choice([45, 61, 300, 1440])
    period = MonthPeriod("2026-11", "UTC", START, START + timedelta(minutes=minutes))
    names = [f"web-{number}" for number in range(rng.randint(1, 5))]
    share = rng.choice([1.0, 0.66, 0.5, 0.2])
    spec: dict[str, Any] = {
        "name": "shop",
        "targets": [{"kind": "host", "name": name} for name in names],
        "objectives": [
            {"role": "internal", "target_percent": 99.95, "time_slice_target": share},
            {"role": "sla", "target_percent": 99.9, "time_slice_target": share},
        ],
        "no_data_policy": rng.choice(["good", "bad", "excluded"]),
    }
    if rng.random() < 0.5:
        every_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        spec["standing_windows"] = [{"days": every_day, "start": "00:20", "duration": "30m"}]
    if rng.random() < 0.3:
        opens = START + timedelta(minutes=rng.randint(-30, minutes))
        spec["maintenance_windows"] = [
            {
                "change_id": "CHG-1",
                "start": opens.isoformat(),
                "end": (opens + timedelta(minutes=rng.randint(1, 90))).isoformat(),
                "announced_at": (opens - timedelta(days=rng.choice([0, 10]))).isoformat(),
            }
        ]
    weights = rng.choice([(90, 5, 5), (50, 30, 20), (0, 50, 50), (100, 0, 0)])
    grid = {
        f"host:{name}": TargetSamples(
            bytes(rng.choices([GOOD, BAD, MISSING], weights=weights, k=minutes)),
            rng.choice([MISSING, GOOD, BAD]),
            rng.choice([MISSING, GOOD, BAD]),
        )
        for name in names
    }
    work = []
    for number in range(rng.randint(0, 3)):
        begins = START + timedelta(minutes=rng.randint(-20, minutes), seconds=rng.randint(0, 59))
        touched = frozenset(rng.sample(sorted(grid), rng.randint(0, len(grid))))
        ends = begins + timedelta(minutes=rng.randint(0, 120))
        work.append(MaintenanceWork("patch_wave", f"wave-{number}", begins, ends, touched))
    return Slo.model_validate(spec), period, grid, work


@pytest.mark.parametrize("seed", range(8))
def test_the_month_at_once_equals_the_month_minute_by_minute(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(6):
        slo, period, grid, work = random_case(rng)
        month = slo_month(slo, period, grid, work)
        expected = reference_month(slo, period, grid, work)
        assert (month.good_minutes, month.downtime_minutes) == (expected["good"], expected["bad"])
        assert (month.maintenance_minutes, month.unknown_minutes) == (
            expected["maintenance"],
            expected["unknown"],
        )
        assert month.coverage_percent == expected["coverage"]
        assert [
            (period.slice_of(incident.start), period.slice_of(incident.end), incident.targets)
            for incident in month.incidents
        ] == expected["incidents"]
        burn, at = expected["burn"]
        assert month.worst_burn_rate == burn
        assert month.worst_burn_start == (None if at is None else period.slice_start(at))
        assert sum(day.good_minutes for day in month.days) == month.good_minutes


def reference_nearby(incident: Incident, runs: list[Run]) -> list[tuple[str, str]]:
    """Every run against one incident, in the runs' order, then by start (a stable sort)."""
    found = []
    for run in runs:
        if run.started_at is None or run.finished_at is None:
            continue
        start, end = datetime.fromisoformat(run.started_at), datetime.fromisoformat(run.finished_at)
        end = max(start, end)
        if start < incident.end and end > incident.start:
            found.append((run.started_at, run.run_id, "during"))
        elif incident.start - AROUND <= start < incident.start:
            found.append((run.started_at, run.run_id, "before"))
        elif incident.end <= start <= incident.end + AROUND:
            found.append((run.started_at, run.run_id, "after"))
    found.sort(key=lambda item: item[0])
    return [(run_id, relation) for _, run_id, relation in found]


@pytest.mark.parametrize("seed", range(4))
def test_runs_near_incidents_found_by_start_time_equal_a_pass_over_every_run(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        runs = []
        for number in range(rng.randint(0, 60)):
            start = START + timedelta(minutes=rng.randint(-200, 3000), seconds=rng.choice([0, 30]))
            end = start + timedelta(minutes=rng.choice([0, 1, 30, 60, 61, 300, 2000]))
            runs.append(
                Run(
                    "backup__shop",
                    f"r{number}",
                    "backup",
                    "shop",
                    start.isoformat(),
                    end.isoformat() if rng.random() < 0.9 else start.isoformat(),
                    "success",
                )
            )
        incidents, at = [], rng.randint(0, 60)
        while at < 2900:
            length = rng.randint(1, 90)
            begins = START + timedelta(minutes=at)
            incidents.append(Incident(begins, begins + timedelta(minutes=length), length, (), False, False))
            at += length + rng.randint(1, 200)
        rng.shuffle(incidents)  # any order in, the same order out
        rows = incident_rows("shop", incidents, runs)
        assert [row.incident for row in rows] == incidents
        for row in rows:
            assert [(run.run_id, run.relation) for run in row.runs] == reference_nearby(row.incident, runs)
