"""What a person reads of a month with many incidents: the longest listed, the runs around each grouped,
and the report saying what it left out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cloudops.reports.availability import Incident
from cloudops.reports.monthly import IncidentRow, MonthlyReport, NearbyRun
from cloudops.reports.period import month_period
from cloudops.reports.render import INCIDENTS_SHOWN, incidents_view, nearby_lines, render_html

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 3, 8, tzinfo=UTC)
START = datetime(2026, 11, 10, 12, tzinfo=UTC)


def run(dag_id: str, relation: str, minutes: int, state: str = "success") -> NearbyRun:
    at = (START + timedelta(minutes=minutes)).isoformat()
    return NearbyRun(dag_id, f"r{minutes}", dag_id.partition("__")[0], None, at, at, state, relation)


def shown(moment: str | None) -> str:
    return "?" if moment is None else moment[11:16]


def test_runs_of_one_dag_and_outcome_share_a_line_naming_the_nearest() -> None:
    runs = [
        run("backup__orders_pg", "before", -50),
        run("backup__orders_pg", "before", -10),  # the nearest of the three before
        run("backup__orders_pg", "before", -30),
        run("backup__shop", "before", -20, "failed"),
        run("restore_request__orders_pg", "during", 1),
        run("backup__orders_pg", "after", 40),
        run("backup__orders_pg", "after", 25),  # the nearest after
    ]
    assert nearby_lines(runs, shown) == [
        "during: restore_request__orders_pg success (12:01)",
        "before: backup__orders_pg success \u00d73, nearest 11:50",
        "before: backup__shop failed (11:40)",
        "after: backup__orders_pg success \u00d72, nearest 12:25",
    ]
    lines = nearby_lines(runs, shown, limit=2)
    assert lines[-1] == "and 3 more run(s)"  # one line for each group shown, the rest counted
    assert len(lines) == 3
    assert nearby_lines([], shown) == []


def test_the_longest_incidents_are_listed_and_the_rest_counted() -> None:
    rows = []
    for number in range(INCIDENTS_SHOWN + 15):
        begins = START + timedelta(hours=number)
        length = 30 if number in (7, 31) else 1
        incident = Incident(begins, begins + timedelta(minutes=length), length, ("host:web-1",), False, False)
        rows.append(IncidentRow("web" if number % 2 else "orders", incident, ()))
    view = incidents_view(rows, shown)
    assert [row.incident.minutes for row, _ in view["rows"][:3]] == [30, 30, 1]
    assert view["rows"][0][0] is rows[7]  # among equals, the earliest first
    assert len(view["rows"]) == INCIDENTS_SHOWN
    assert (view["total"], view["left_out"], view["left_out_minutes"], view["left_out_longest"]) == (
        40,
        15,
        15,
        1,
    )
    assert view["per_slo"] == {"orders": (20, 20), "web": (20, 18 + 2 * 30)}

    period = month_period("2026-11", "Europe/Paris", now=NOW)
    report = MonthlyReport("shop", "test estate", period, NOW, incidents=rows)
    html = render_html(report)
    assert "40 incidents in the month (orders: 20, 20 min; web: 20, 1 h 18 min)" in html
    assert (
        f"The {INCIDENTS_SHOWN} longest are listed; the other 15 (15 min in all, none longer than 1 min)"
        in html
    )
    incidents_table = html.split("<h2>Incidents</h2>")[1].split("<h2>")[0]
    assert incidents_table.count("<tr><td>") == INCIDENTS_SHOWN


def test_a_month_with_few_incidents_lists_every_one_without_a_note() -> None:
    begins = START
    incident = Incident(begins, begins + timedelta(minutes=3), 3, ("host:web-1",), False, False)
    period = month_period("2026-11", "Europe/Paris", now=NOW)
    report = MonthlyReport("shop", "test estate", period, NOW, incidents=[IncidentRow("web", incident, ())])
    html = render_html(report)
    assert "incidents in the month" not in html
    assert "none within an hour" in html
