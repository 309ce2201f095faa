"""The monthly report as one self-contained HTML page (Jinja2, inline SVG charts) and as a PDF of it.

The template is ``templates/monthly_report.html.j2`` beside this module, autoescaped: names, errors
and service names come from records and the bill. The PDF is WeasyPrint's rendering of the same HTML
with a URL fetcher that refuses every URL, so neither form ever reaches the network, and what the
PDF shows is what the HTML shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from cloudops.errors import CloudOpsError
from cloudops.reports import charts
from cloudops.reports.availability import SloMonth
from cloudops.reports.cost import CENT, UNTAGGED
from cloudops.reports.monthly import IncidentRow, MonthlyReport, NearbyRun

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "monthly_report.html.j2"
TOP_RESOURCES = 10
NO_FIGURE = "\u2013"
# What a person reads of a month with a thousand one-minute incidents and ten thousand runs: the
# longest incidents, and per incident the runs around it grouped by runbook and outcome. The model
# (and every figure) keeps them all; the report says what it left out.
INCIDENTS_SHOWN = 25
RUN_LINES_SHOWN = 5
_RELATIONS = ("during", "before", "after")


class NetworkRefused(CloudOpsError):
    """The report asked for something by URL while rendering: nothing is fetched."""


def percent(value: Fraction | float | None, digits: int = 3) -> str:
    """99.9537 -> ``99.954 %``; None -> an en dash (no figure)."""
    if value is None:
        return NO_FIGURE
    return f"{float(value):.{digits}f} %"


def minutes(value: Fraction | int | float) -> str:
    """Minutes as ``1 h 05 min`` past an hour, else ``12.5 min``."""
    number = float(value)
    sign = "-" if number < 0 else ""
    number = abs(number)
    if number >= 60:
        hours, rest = divmod(round(number), 60)
        return f"{sign}{hours} h {rest:02d} min"
    return f"{sign}{number:.1f} min" if number % 1 else f"{sign}{int(number)} min"


def duration(value: timedelta | float | None) -> str:
    """A duration (or seconds) as ``2 d 3 h``, ``3 h 12 min``, ``4 min 10 s`` or ``12.3 s``."""
    if value is None:
        return NO_FIGURE
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds >= 86400:
        days, rest = divmod(int(seconds), 86400)
        return f"{days} d {rest // 3600} h"
    if seconds >= 3600:
        return f"{int(seconds) // 3600} h {int(seconds) % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{int(seconds) // 60} min {int(seconds) % 60:02d} s"
    return f"{seconds:.1f} s"


def money(value: Decimal | None, currency: str = "") -> str:
    """Cents, thousands separated: ``12,345.68 USD``."""
    if value is None:
        return NO_FIGURE
    return f"{value.quantize(CENT):,}" + (f" {currency}" if currency else "")


def local(report: MonthlyReport, moment: datetime | str | None) -> str:
    """An instant in the estate's time zone, ``2026-11-08 01:00 CET``."""
    if moment is None:
        return NO_FIGURE
    if isinstance(moment, str):
        try:
            parsed = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return moment
        return report.period.local(parsed).strftime("%Y-%m-%d %H:%M %Z")
    return report.period.local(moment).strftime("%Y-%m-%d %H:%M %Z")


def _burn_down(month: SloMonth) -> list[tuple[date, float]]:
    budget = float(month.internal.budget_minutes)
    left, points = budget, []
    for day in month.days:
        left -= day.valid_minutes - day.good_minutes
        points.append((day.day, left))
    return points


def _started(run: NearbyRun) -> float:
    """A run's start as a POSIX time (infinite when unknown: listed last)."""
    try:
        return datetime.fromisoformat((run.started_at or "").replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")


def nearby_lines(
    runs: Sequence[NearbyRun], show: Callable[[str | None], str], *, limit: int = RUN_LINES_SHOWN
) -> list[str]:
    """The runs around one incident as at most ``limit`` lines: during it first, then before, then after.

    Runs of the same DAG, relation and outcome share one line (``before: backup__orders_pg success
    x6, nearest 2026-10-16 20:58 CEST``) naming the one nearest the incident: the last to start of
    those before it, the first of the others. A last line counts the runs not shown.
    """
    groups: dict[tuple[str, str, str], list[NearbyRun]] = {}
    for run in runs:
        groups.setdefault((run.relation, run.dag_id, run.state), []).append(run)
    lines = []
    for (relation, dag_id, state), members in groups.items():
        before = relation == "before"
        near = max(members, key=_started) if before else min(members, key=_started)
        rank = _RELATIONS.index(relation) if relation in _RELATIONS else len(_RELATIONS)
        distance = -_started(near) if before else _started(near)
        if len(members) == 1:
            text = f"{relation}: {dag_id} {state} ({show(near.started_at)})"
        else:
            text = f"{relation}: {dag_id} {state} \u00d7{len(members)}, nearest {show(near.started_at)}"
        lines.append(((rank, distance, dag_id), len(members), text))
    lines.sort(key=lambda line: line[0])
    shown = lines[:limit]
    left = len(runs) - sum(count for _, count, _ in shown)
    return [text for _, _, text in shown] + ([f"and {left} more run(s)"] if left else [])


def incidents_view(
    incidents: Sequence[IncidentRow], show: Callable[[str | None], str], *, limit: int = INCIDENTS_SHOWN
) -> dict[str, Any]:
    """The incidents a person reads: the ``limit`` longest (the earliest first among equals), each
    with its :func:`nearby_lines`; and what was left out, counted (incidents, minutes, the longest)."""
    longest = sorted(incidents, key=lambda row: (-row.incident.minutes, row.incident.start, row.slo))[:limit]
    chosen = {id(row) for row in longest}
    left_out = [row.incident.minutes for row in incidents if id(row) not in chosen]
    per_slo: dict[str, tuple[int, int]] = {}
    for row in incidents:
        count, minutes_so_far = per_slo.get(row.slo, (0, 0))
        per_slo[row.slo] = (count + 1, minutes_so_far + row.incident.minutes)
    return {
        "rows": [(row, nearby_lines(row.runs, show)) for row in longest],
        "total": len(incidents),
        "left_out": len(left_out),
        "left_out_minutes": sum(left_out),
        "left_out_longest": max(left_out, default=0),
        "per_slo": per_slo,
    }


def _slo_view(report: MonthlyReport, month: SloMonth) -> dict[str, Any]:
    internal, sla = month.internal, month.sla
    status = "no data" if sla.met is None else ("met" if sla.met else "BREACHED")
    return {
        "month": month,
        "status": status,
        "status_class": "na" if sla.met is None else ("ok" if sla.met else "bad"),
        "objective_met": internal.met,
        "availability_chart": charts.availability_chart(
            [(day.day, day.availability_percent) for day in month.days],
            internal.target_percent,
            sla.target_percent,
            f"{month.slo}: availability per day",
        ),
        "burn_chart": charts.burn_down_chart(
            _burn_down(month),
            float(internal.budget_minutes),
            f"{month.slo}: error budget left (objective {float(internal.target_percent):g} %)",
        ),
    }


def _cost_view(report: MonthlyReport) -> dict[str, Any] | None:
    cost = report.cost
    if cost is None:
        return None
    services = sorted(cost.by_service, key=lambda name: (-cost.by_service[name], name))
    change = cost.month_over_month()
    previous = "the month before"
    if change is not None:
        from cloudops.reports.cost import previous_billing_month

        previous = previous_billing_month(cost.month)
    comparison = (
        charts.cost_comparison_chart(
            [(name, now, then) for name, now, then, _ in sorted(change.by_service, key=lambda row: -row[1])],
            cost.month,
            previous,
            cost.currency,
            "Cost per service: this month against the month before",
        )
        if change is not None
        else None
    )
    tags = {
        key: sorted(values.items(), key=lambda item: (item[0] == UNTAGGED, -item[1], item[0]))
        for key, values in cost.by_tag.items()
    }
    return {
        "cost": cost,
        "services": [(name, cost.by_service[name]) for name in services],
        "accounts": sorted(cost.by_account.items(), key=lambda item: -item[1]),
        "tags": tags,
        "change": change,
        "previous": previous,
        "resources": sorted(cost.by_resource.items(), key=lambda item: -item[1])[:TOP_RESOURCES],
        "daily_chart": charts.cost_daily_chart(
            cost.daily, services, cost.currency, f"Cost per day by service ({cost.currency})"
        ),
        "comparison_chart": comparison,
        "share": lambda amount: (
            f"{(amount * 100 / cost.total).quantize(Decimal('0.1'))} %" if cost.total else NO_FIGURE
        ),
    }


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(percent=percent, minutes=minutes, duration=duration, money=money)
    return env


def render_html(report: MonthlyReport) -> str:
    """The report as one HTML page: no script, no link or image outside the page."""
    from markupsafe import Markup

    slos = [_slo_view(report, month) for month in report.slos]
    for view in slos:
        view["availability_chart"] = Markup(view["availability_chart"])
        view["burn_chart"] = Markup(view["burn_chart"])
    cost = _cost_view(report)
    if cost is not None:
        cost["daily_chart"] = Markup(cost["daily_chart"])
        if cost["comparison_chart"]:
            cost["comparison_chart"] = Markup(cost["comparison_chart"])
    period = report.period
    return str(
        _environment()
        .get_template(TEMPLATE)
        .render(
            report=report,
            slos=slos,
            cost=cost,
            first=period.local(period.start),
            last=period.local(period.end - timedelta(seconds=1)),
            local=lambda moment: local(report, moment),
            gaps_breached=[row for row in report.backups if row.gap_met is False],
            drills_missed=[row for row in report.drills if row.targets_met is False or not row.passed],
            hosts_pending=[row for row in report.patches if row.pending],
            incidents=incidents_view(report.incidents, lambda moment: local(report, moment)),
            credit=report.credit_owed,
        )
    )


def _refuse(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    raise NetworkRefused(f"the report asked to fetch {url[:200]!r}: nothing is fetched while rendering")


def render_pdf(html: str) -> bytes:
    """The PDF of ``html`` (WeasyPrint), every URL refused; A4 pages with the page number in the footer."""
    import logging

    import weasyprint

    # fontTools and WeasyPrint log every subset table and layout step at INFO: noise in a task log.
    for name in ("fontTools", "weasyprint", "weasyprint.progress"):
        logging.getLogger(name).setLevel(logging.WARNING)
    pdf: bytes = weasyprint.HTML(string=html, url_fetcher=_refuse, base_url=None).write_pdf()
    return pdf


def report_names(month: str, estate: str) -> dict[str, str]:
    """The file names of a month's report: ``monthly-report-<estate>-<month>.html`` / ``.pdf``."""
    stem = f"monthly-report-{estate}-{month}"
    return {"html": f"{stem}.html", "pdf": f"{stem}.pdf"}


__all__ = [
    "INCIDENTS_SHOWN",
    "RUN_LINES_SHOWN",
    "NetworkRefused",
    "duration",
    "incidents_view",
    "minutes",
    "money",
    "nearby_lines",
    "percent",
    "render_html",
    "render_pdf",
    "report_names",
]
