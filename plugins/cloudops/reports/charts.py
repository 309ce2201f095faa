"""The report's charts as inline SVG text: no script, no font or image fetched, the same in HTML and PDF.

Each function returns one ``<svg>`` element sized by its ``viewBox`` (CSS gives it the page's width), with
a ``<title>`` and axis labels, so that a reader sees at a glance what it shows. Every label passes
through :func:`html.escape`: service names come from the bill.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from fractions import Fraction
from html import escape

WIDTH, HEIGHT = 760, 250
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 44
# Colour-blind-safe (Okabe-Ito), in the order services are stacked.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999")
GOOD, BAD, INK, GRID = "#009E73", "#D55E00", "#222222", "#d9d9d9"


def _svg(title: str, body: list[str], height: int = HEIGHT) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'class="chart" font-family="DejaVu Sans, sans-serif" font-size="12">'
        f"<title>{escape(title)}</title>"
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold" fill="{INK}">{escape(title)}</text>'
        + "".join(body)
        + "</svg>"
    )


def _y_axis(low: float, high: float, ticks: Sequence[float], label: str, fmt: str) -> list[str]:
    plot_h = HEIGHT - TOP - BOTTOM
    parts = []
    for tick in ticks:
        y = TOP + plot_h * (1 - (tick - low) / (high - low)) if high > low else TOP + plot_h
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{INK}">{fmt.format(tick)}</text>'
        )
    parts.append(
        f'<text x="14" y="{TOP + plot_h / 2:.1f}" transform="rotate(-90 14 {TOP + plot_h / 2:.1f})" '
        f'text-anchor="middle" fill="{INK}">{escape(label)}</text>'
    )
    return parts


def _x_days(days: Sequence[date], step: float) -> list[str]:
    parts = []
    for index, day in enumerate(days):
        if index % 5 == 0 or index == len(days) - 1:
            x = LEFT + step * (index + 0.5)
            parts.append(
                f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
                f'fill="{INK}">{day.day}</text>'
            )
    parts.append(
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle" '
        f'fill="{INK}">day of the month</text>'
    )
    return parts


def _nice_ticks(high: float, count: int = 4) -> list[float]:
    if high <= 0:
        return [0.0]
    raw = high / count
    magnitude = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1.0
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * magnitude
        if step >= raw:
            break
    ticks, value = [], 0.0
    while value <= high * 1.0001 + step:
        ticks.append(value)
        if value >= high:
            break
        value += step
    return ticks


# Tick steps of a percent axis and the decimals each needs.
_PERCENT_STEPS = (
    (0.01, 2),
    (0.02, 2),
    (0.05, 2),
    (0.1, 1),
    (0.2, 1),
    (0.5, 1),
    (1, 0),
    (2, 0),
    (5, 0),
    (10, 0),
)


def _percent_ticks(low: float, high: float) -> tuple[list[float], int]:
    """Round ticks (0.1, 0.2, 0.5 ... apart, at most six) from ``low`` to ``high``, and their decimals."""
    step, places = next(
        ((step, places) for step, places in _PERCENT_STEPS if (high - low) / step <= 5.0001), (20, 0)
    )
    first = -(-round(low / step, 6) // 1) * step  # the first multiple of step at or above low
    ticks = []
    value = first
    while value <= high + step / 1000:
        ticks.append(round(value, places))
        value += step
    return ticks, places


def availability_chart(
    days: Sequence[tuple[date, Fraction | None]], objective: Fraction, sla: Fraction, title: str
) -> str:
    """Daily availability bars against the internal objective and the SLA target (dashed lines).

    The axis starts a little below the worst day or the SLA target, whichever is lower, so a day at
    99.5 % is visibly short of a 99.9 % line; a day under the SLA is red, a day without data grey.
    """
    values = [float(value) for _, value in days if value is not None]
    low = min([float(sla), *values]) if values else float(sla)
    low = max(0.0, min(low - (100 - low) * 0.25, float(sla) - 0.1))
    low = float(int(low * 10)) / 10
    high = 100.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(days))
    span, places = _percent_ticks(low, high)
    body = _y_axis(low, high, span, "availability %", f"{{:.{places}f}}")

    def y_of(value: float) -> float:
        return TOP + plot_h * (1 - (value - low) / (high - low))

    for index, (day, value) in enumerate(days):
        x = LEFT + step * index + step * 0.15
        if value is None:
            body.append(
                f'<rect x="{x:.1f}" y="{TOP}" width="{step * 0.7:.1f}" height="{plot_h}" fill="#eeeeee">'
                f"<title>{day}: no data</title></rect>"
            )
            continue
        shown = max(float(value), low)
        colour = GOOD if value >= sla else BAD
        body.append(
            f'<rect x="{x:.1f}" y="{y_of(shown):.1f}" width="{step * 0.7:.1f}" '
            f'height="{TOP + plot_h - y_of(shown):.1f}" '
            f'fill="{colour}"><title>{day}: {float(value):.3f} %</title></rect>'
        )
    for target, dash in ((objective, "6 3"), (sla, "2 2")):
        y = y_of(float(target))
        body.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{INK}" '
            f'stroke-width="1.5" stroke-dasharray="{dash}"/>'
        )
    # The two lines are often a few pixels apart: their key goes above the plot, not on the lines.
    key_x = WIDTH - RIGHT - 330
    for offset, (target, name, dash) in enumerate(
        ((objective, "objective", "6 3"), (sla, "SLA target", "2 2"))
    ):
        x = key_x + offset * 170
        body.append(
            f'<line x1="{x}" x2="{x + 28}" y1="12" y2="12" stroke="{INK}" stroke-width="1.5" '
            f'stroke-dasharray="{dash}"/>'
            f'<text x="{x + 34}" y="16" fill="{INK}">{name} {float(target):g} %</text>'
        )
    body += _x_days([day for day, _ in days], step)
    return _svg(title, body)


def burn_down_chart(days: Sequence[tuple[date, float]], budget: float, title: str) -> str:
    """Error budget left (minutes) at the end of each day, against an even spend over the month."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    lowest = min([0.0, *(left for _, left in days)])
    high = max(budget, 1.0)
    ticks = [lowest, *(t for t in _nice_ticks(high) if t > lowest)]
    body = _y_axis(lowest, ticks[-1], ticks, "budget left (min)", "{:.0f}")
    top = ticks[-1]
    step = plot_w / max(1, len(days))

    def y_of(value: float) -> float:
        return TOP + plot_h * (1 - (value - lowest) / (top - lowest)) if top > lowest else TOP

    zero = y_of(0)
    body.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="{INK}"/>')
    body.append(
        f'<line x1="{LEFT}" y1="{y_of(budget):.1f}" x2="{WIDTH - RIGHT}" y2="{zero:.1f}" stroke="#888888" '
        f'stroke-dasharray="6 3"/>'
        f'<text x="{LEFT + 6}" y="{y_of(budget) - 5:.1f}" fill="#555555">even spend</text>'
    )
    points = [f"{LEFT:.1f},{y_of(budget):.1f}"]
    points += [f"{LEFT + step * (index + 1):.1f},{y_of(left):.1f}" for index, (_, left) in enumerate(days)]
    colour = BAD if days and days[-1][1] < 0 else PALETTE[0]
    body.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="2.5"/>')
    if days:
        last = days[-1][1]
        body.append(
            f'<text x="{WIDTH - RIGHT - 4}" y="{min(y_of(last) - 6, TOP + plot_h - 4):.1f}" '
            f'text-anchor="end" '
            f'fill="{colour}" font-weight="bold">{last:.1f} min left</text>'
        )
    body += _x_days([day for day, _ in days], step)
    return _svg(title, body)


def _legend(names: Sequence[str], y: int) -> list[str]:
    parts, x = [], LEFT
    for index, name in enumerate(names):
        label = name if len(name) <= 38 else name[:36] + "…"
        parts.append(
            f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{PALETTE[index % len(PALETTE)]}"/>'
        )
        parts.append(f'<text x="{x + 16}" y="{y}" fill="{INK}">{escape(label)}</text>')
        x += 28 + int(len(label) * 6.6)
        if x > WIDTH - 200:
            y += 18
            x = LEFT
    return parts


def cost_daily_chart(
    daily: Mapping[date, Mapping[str, Decimal]], services: Sequence[str], currency: str, title: str
) -> str:
    """Cost per day, stacked by service (the largest at the bottom), with a legend under the axis."""
    days = sorted(daily)
    totals = [float(sum(daily[day].values(), Decimal(0))) for day in days]
    ticks = _nice_ticks(max(totals, default=0.0))
    top = ticks[-1] if ticks[-1] > 0 else 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(days))
    body = _y_axis(0.0, top, ticks, f"cost ({currency})", "{:,.0f}")
    for index, day in enumerate(days):
        base = 0.0
        x = LEFT + step * index + step * 0.15
        for position, service in enumerate(services):
            amount = float(daily[day].get(service, Decimal(0)))
            if amount <= 0:
                continue
            height = plot_h * amount / top
            y = TOP + plot_h * (1 - (base + amount) / top)
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * 0.7:.1f}" height="{height:.1f}" '
                f'fill="{PALETTE[position % len(PALETTE)]}">'
                f"<title>{day} {escape(service)}: {amount:,.2f}</title></rect>"
            )
            base += amount
    body += _x_days(days, step)
    rows = 1 + len(services) // 3
    return _svg(title, [*body, *_legend(services, HEIGHT + 14)], height=HEIGHT + 14 + 18 * rows)


def cost_comparison_chart(
    rows: Sequence[tuple[str, Decimal, Decimal]], month: str, previous: str, currency: str, title: str
) -> str:
    """Per service, this month's cost (dark) beside the month before's (light), as horizontal bars."""
    height = TOP + 30 + 34 * len(rows) + 30
    label_w = 250
    plot_w = WIDTH - label_w - RIGHT - 90
    top = max([float(max(now, then)) for _, now, then in rows] or [1.0]) or 1.0
    body = []
    for index, (name, now, then) in enumerate(rows):
        y = TOP + 20 + 34 * index
        label = name if len(name) <= 36 else name[:34] + "…"
        body.append(
            f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end" fill="{INK}">{escape(label)}</text>'
        )
        for offset, amount, colour in ((0, now, PALETTE[0]), (14, then, "#a6cbe3")):
            width = plot_w * float(amount) / top
            body.append(
                f'<rect x="{label_w}" y="{y + offset}" width="{width:.1f}" height="12" fill="{colour}"/>'
                f'<text x="{label_w + width + 4:.1f}" y="{y + offset + 10}" fill="{INK}" font-size="11">'
                f"{float(amount):,.2f}</text>"
            )
    legend_y = height - 12
    body.append(
        f'<rect x="{label_w}" y="{legend_y - 10}" width="12" height="12" fill="{PALETTE[0]}"/>'
        f'<text x="{label_w + 16}" y="{legend_y}" fill="{INK}">{escape(month)} ({escape(currency)})</text>'
        f'<rect x="{label_w + 160}" y="{legend_y - 10}" width="12" height="12" fill="#a6cbe3"/>'
        f'<text x="{label_w + 176}" y="{legend_y}" fill="{INK}">{escape(previous)}</text>'
    )
    return _svg(title, body, height=height)


__all__ = ["availability_chart", "burn_down_chart", "cost_comparison_chart", "cost_daily_chart"]
