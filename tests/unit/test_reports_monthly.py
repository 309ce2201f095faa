"""The monthly report model on a hand-made November 2026 (Europe/Paris): every figure worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cloudops.catalog import load_catalog_file
from cloudops.errors import InvalidInputError
from cloudops.evidence.ledger import Record
from cloudops.evidence.runs import fold_runs
from cloudops.reports.availability import samples_grid
from cloudops.reports.cost import cost_explorer_requests, cost_month_from_explorer
from cloudops.reports.monthly import build_monthly_report, linear_projection
from cloudops.reports.period import month_period
from cloudops.reports.render import render_html, render_pdf
from cloudops.runbooks.monthly_report import report_month
from cloudops.sandbox.billing import explorer_answers, sandbox_bill

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 3, 8, tzinfo=UTC)
# November 2026 in Paris: 2026-10-31T23:00Z to 2026-11-30T23:00Z, 43,200 minutes (no DST change).
START = datetime(2026, 10, 31, 23, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalog(project_root: Path) -> Any:
    return load_catalog_file(project_root / "runbooks" / "sandbox.yaml")


def _records(
    *runs: tuple[str, str, datetime, datetime, str, list[tuple[str, dict[str, Any]]]],
) -> list[Record]:
    records, seq = [], 0
    for dag_id, run_id, start, end, state, facts in runs:
        kind_target = dag_id.partition("__")
        base = {"dag_id": dag_id, "run_id": run_id, "runbook": kind_target[0], "target": kind_target[2]}
        rows = [("run.started", start, {})]
        rows += [(kind, end - timedelta(seconds=1), data) for kind, data in facts]
        rows.append(("run.finished", end, {"state": state}))
        for kind, at, data in rows:
            seq += 1
            stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            records.append(Record(seq, stamp, kind, f"k{seq}", "", "", {**base, "data": data}, "", seq))
    return records


def _samples(period: Any, keys: list[str]) -> Any:
    """Every target up every minute, except: orders_pg down 30 min from minute 5000 (Nov 4, 11:20 CET);
    all three web hosts down 20 min from minute 30000 (Nov 21, 20:00 CET); web-3 silent 200 min."""
    for index in range(period.minutes):
        at = period.slice_start(index) + timedelta(seconds=10)
        for key in keys:
            if key == "host:web-3" and 40000 <= index < 40200:
                continue
            down = (key == "database:orders_pg" and 5000 <= index < 5030) or (
                key.startswith("host:web") and 30000 <= index < 30020
            )
            yield key, at, not down


def _report(catalog: Any, records: list[Record], **extra: Any) -> Any:
    period = month_period("2026-11", catalog.timezone, now=NOW)
    keys = sorted({target.key for slo in catalog.slos for target in slo.targets})
    grid = samples_grid(period, keys, _samples(period, keys))
    return build_monthly_report(catalog, period, grid, fold_runs(records), generated_at=NOW, **extra)


def test_availability_incidents_and_the_runs_around_them(catalog: Any) -> None:
    at = START + timedelta(minutes=5000)  # the orders outage
    records = _records(
        (
            "restore_request",
            "manual__1",
            at + timedelta(minutes=10),
            at + timedelta(minutes=40),
            "success",
            [],
        ),
        ("backup__orders_pg", "b1", at - timedelta(minutes=50), at - timedelta(minutes=45), "success", []),
        ("backup__orders_pg", "b-far", at - timedelta(hours=3), at - timedelta(hours=2), "success", []),
    )
    report = _report(catalog, records)
    by_name = {slo.slo: slo for slo in report.slos}
    orders, web = by_name["orders_availability"], by_name["web_availability"]
    # orders: 43,200 minutes - 120 minutes of CHG-1001 (announced 10 days ahead, 5 d asked) = 43,080
    # valid; 30 bad -> 43,050 / 43,080 = 99.93036 %; SLA 99.9 met, internal 99.95 missed.
    assert (orders.valid_minutes, orders.downtime_minutes, orders.maintenance_minutes) == (43080, 30, 120)
    assert round(float(orders.availability_percent), 5) == 99.93036
    assert orders.sla.met is True
    assert orders.internal.met is False
    assert orders.credit.tier is None
    assert orders.credit.owed == Decimal("0.00")
    # web: policy good, slice good at 2 of 3 (0.66): only the 20 minutes all three failed are bad.
    assert (web.downtime_minutes, web.unknown_minutes) == (20, 0)
    assert web.coverage_percent * 3 * 43200 == 100 * (3 * 43200 - 200)
    incidents = {row.slo: row for row in report.incidents}
    assert incidents["orders_availability"].incident.minutes == 30
    nearby = [(run.run_id, run.relation) for run in incidents["orders_availability"].runs]
    assert nearby == [("b1", "before"), ("manual__1", "during")]  # b-far is 2 h before: not listed
    assert incidents["web_availability"].incident.targets == ("host:web-1", "host:web-2", "host:web-3")


def test_backup_gap_against_rpo_and_a_patch_wave_as_maintenance(catalog: Any) -> None:
    def backup(run: str, finished: datetime) -> tuple[Any, ...]:
        data = {"database": "orders_pg", "finished_at": finished.isoformat()}
        return (
            "backup__orders_pg",
            run,
            finished - timedelta(minutes=5),
            finished,
            "success",
            [("backup.taken", data)],
        )

    # One backup the day before the month (Oct 31, 02:00Z), then Nov 1 01:00Z and Nov 3 01:00Z: the
    # largest gap is Nov 1 -> Nov 3 (48 h) > RPO 24 h; from Nov 3 to the month's end is longer still:
    # 2026-11-03T01:00Z to 2026-11-30T23:00Z = 27 d 22 h.
    first = datetime(2026, 10, 31, 2, tzinfo=UTC)
    wave_start = datetime(2026, 11, 8, 1, 0, tzinfo=UTC)  # Sunday 02:00 Paris: the standing window
    wave = (
        "patch_wave__web",
        "w1",
        wave_start,
        wave_start + timedelta(hours=3, minutes=10),  # 10 minutes past the 3 h window
        "success",
        [
            ("patch.planned", {"fleet": "web", "snapshot_id": "snap-1", "snapshot": _snapshot()}),
            ("patch.host", {"host": "web-1", "compliance": {"openssl": "INSTALLED"}}),
            ("patch.host", {"host": "web-2", "compliance": {"openssl": "FAILED"}}),
            ("patch.wave", {"fleet": "web", "succeeded": False}),
        ],
    )
    records = _records(
        backup("b0", first),
        backup("b1", datetime(2026, 11, 1, 1, tzinfo=UTC)),
        backup("b2", datetime(2026, 11, 3, 1, tzinfo=UTC)),
        wave,
    )
    report = _report(catalog, records)
    orders = next(row for row in report.backups if row.database == "orders_pg")
    assert (orders.runs, orders.succeeded, orders.backups) == (2, 2, 2)
    assert orders.largest_gap == timedelta(days=27, hours=22)
    assert orders.gap_met is False
    mariadb = next(row for row in report.backups if row.database == "inventory_mariadb")
    assert mariadb.runs == 0
    assert mariadb.largest_gap == timedelta(minutes=43200)
    web = next(slo for slo in report.slos if slo.slo == "web_availability")
    (work,) = web.work
    # 190 minutes of wave: 180 inside the Sunday window (web-1 and web-2 excluded), 10 overrun.
    assert (work.inside_minutes, work.overrun_minutes) == (180, 10)
    assert work.targets == ("host:web-1", "host:web-2")
    hosts = {row.host: row for row in report.patches}
    assert hosts["web-1"].pending == ()
    assert hosts["web-2"].pending == ("openssl 3.0.15 (FAILED)",)
    assert hosts["web-3"].pending == ("libssh 0.10 (not_yet_approved)",)
    assert (hosts["web-3"].oldest_advisory, str(hosts["web-3"].oldest_published)) == (
        "DSA-5800-1",
        "2026-11-20",
    )
    assert report.failovers == []


def _snapshot() -> dict[str, Any]:
    pin = {"package": "openssl", "version": "3.0.15", "previous": "3.0.14", "classification": "security"}
    return {
        "pins": {"web-1": [pin], "web-2": [pin], "web-3": []},
        "left_out": [
            {
                "host": "web-3",
                "package": "libssh",
                "version": "0.10",
                "kind": "not_yet_approved",
                "classification": "security",
                "reason": "not approved yet: 3 day(s) to go (advisory DSA-5800-1 published 2026-11-20, ...)",
            },
            {
                "host": "web-3",
                "package": "demo-web",
                "version": "2.1",
                "kind": "classification",
                "classification": "other",
                "reason": "not security",
            },
        ],
    }


def test_failover_drills_and_cost_with_a_linear_projection(catalog: Any) -> None:
    at = datetime(2026, 11, 12, 10, tzinfo=UTC)
    records = _records(
        (
            "failover_drill__orders_pg_cluster",
            "f1",
            at,
            at + timedelta(minutes=5),
            "success",
            [
                (
                    "failover.drill",
                    {
                        # As failover_drill records it (runbooks/failover_drill.py: fact_of).
                        "cluster": "orders_pg_cluster",
                        "figures": {"write_downtime_s": 4.2, "acked_writes_lost": 0},
                        "targets": [
                            {"target": "write_downtime_s", "status": "PASS", "measured": 4.2, "limit": 30.0},
                            {"target": "drill_s", "status": "PASS", "measured": 9.0, "limit": 60.0},
                        ],
                    },
                )
            ],
        ),
    )
    lines, previous = sandbox_bill("2026-11"), sandbox_bill("2026-10")
    answers = explorer_answers(catalog.cost, "2026-11", lines, previous)
    requests = cost_explorer_requests(catalog.cost, "2026-11")
    cost = cost_month_from_explorer(
        catalog.cost, "2026-11", {r.purpose: [a] for r, a in zip(requests, answers, strict=True)}
    )
    report = _report(catalog, records, cost=cost)
    (drill,) = report.failovers
    assert (drill.target, drill.downtime_seconds, drill.met) == ("orders_pg_cluster", 4.2, True)
    assert cost.total == sum((line.billed for line in lines), Decimal(0))
    last7 = sorted(cost.daily)[-7:]
    mean = sum((sum(cost.daily[day].values(), Decimal(0)) for day in last7), Decimal(0)) / 7
    assert report.projection == linear_projection(cost)
    assert report.projection.month == "2026-12"
    assert report.projection.amount == (mean * 31).quantize(Decimal("0.01"))
    assert "linear projection" in report.projection.method


def test_rendered_html_has_no_script_or_url_and_the_pdf_says_the_same(catalog: Any) -> None:
    from io import BytesIO

    from pypdf import PdfReader

    report = _report(catalog, [])
    html = render_html(report)
    assert "<script" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html
    # Two charts per SLO (daily availability, budget burn-down); no cost, so no cost charts.
    assert html.count("<svg") == 2 * len(report.slos)
    assert "99.930 %" in html
    assert "No cost figures" in html
    text = "".join(page.extract_text() for page in PdfReader(BytesIO(render_pdf(html))).pages)
    assert "99.930 %" in text
    assert "No failover drill recorded" in text


@pytest.mark.parametrize(
    ("month", "field"),
    [("2026-12", "has not ended yet"), ("2027-01", "it is in the future"), ("2026-13", "expected YYYY-MM")],
)
def test_a_month_not_over_is_refused_naming_the_form_field(catalog: Any, month: str, field: str) -> None:
    with pytest.raises(InvalidInputError, match=f"form field month: month .*{field}"):
        report_month(month, catalog, NOW)
    assert report_month(None, catalog, NOW) == "2026-11"


@pytest.mark.parametrize(
    ("low", "ticks"),
    [
        (99.5, [99.5, 99.6, 99.7, 99.8, 99.9, 100.0]),
        (99.8, [99.8, 99.85, 99.9, 99.95, 100.0]),
        (98.7, [99.0, 99.5, 100.0]),
        (0.0, [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]),
    ],
)
def test_the_availability_axis_has_round_ticks_a_reader_can_place(low: float, ticks: list[float]) -> None:
    from cloudops.reports.charts import _percent_ticks

    assert _percent_ticks(low, 100.0)[0] == ticks
