"""The month's cloud cost: which Cost Explorer requests to make, and the figures from their answers.

Pure: no client here. :mod:`cloudops.clouds.aws.cost_explorer` sends the requests planned by
:func:`cost_explorer_requests` (in that order: moto's sandbox Cost Explorer answers each new request
body with the next queued result) and hands the answers to :func:`cost_month_from_explorer`; a FOCUS
billing export goes through :func:`cost_month_from_focus`. Both give a :class:`CostMonth`.

Billing months are UTC calendar months (as AWS bills), whatever the estate's time zone. Amounts are
Decimal sums of the strings the bill gives; rounding to cents happens only when shown. Spend without a
cost tag is kept under ``UNTAGGED``: Cost Explorer groups it under the tag's empty value
(``customer$``), FOCUS leaves the key out of ``Tags``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from cloudops.catalog.models import CostSettings
from cloudops.errors import InvalidInputError

UNTAGGED = "(untagged)"
CENT = Decimal("0.01")
_FOCUS_COST = {
    "NetUnblendedCost": "BilledCost",
    "UnblendedCost": "BilledCost",
    "BlendedCost": "BilledCost",
    "NetAmortizedCost": "EffectiveCost",
    "AmortizedCost": "EffectiveCost",
}
FOCUS_COLUMNS = ("ChargePeriodStart", "ServiceName", "SubAccountId", "BillingCurrency")


def month_bounds(month: str) -> tuple[date, date]:
    """First day of ``YYYY-MM`` and first day of the next month (Cost Explorer's End is exclusive)."""
    try:
        year, number = (int(part) for part in month.split("-"))
        first = date(year, number, 1)
    except ValueError:
        raise InvalidInputError(f"month {month!r}: expected YYYY-MM, e.g. 2026-11") from None
    return first, date(year + number // 12, number % 12 + 1, 1)


def previous_billing_month(month: str) -> str:
    """The month before ``YYYY-MM``."""
    first, _ = month_bounds(month)
    before = first - timedelta(days=1)
    return f"{before.year:04d}-{before.month:02d}"


@dataclass(frozen=True)
class CostRequest:
    """One planned GetCostAndUsage request: what it is for, and its parameters."""

    purpose: str
    month: str
    params: dict[str, Any]


# GetCostForecast names the metrics in another spelling than GetCostAndUsage.
FORECAST_METRICS = {
    "NetUnblendedCost": "NET_UNBLENDED_COST",
    "UnblendedCost": "UNBLENDED_COST",
    "BlendedCost": "BLENDED_COST",
    "AmortizedCost": "AMORTIZED_COST",
    "NetAmortizedCost": "NET_AMORTIZED_COST",
}


def forecast_request(settings: CostSettings, month: str, today: date) -> tuple[dict[str, Any] | None, str]:
    """The GetCostForecast request for the month after ``month``, or None and why it cannot be asked.

    Cost Explorer forecasts only from today on: the whole next month can be forecast on its first day
    (when the scheduled report runs) or before; later in that month the report states a linear
    projection instead, rather than a forecast of part of it.
    """
    _, following = month_bounds(month)
    after, end = month_bounds(f"{following:%Y-%m}")
    metric = FORECAST_METRICS.get(settings.metric)
    if metric is None:
        return None, f"Cost Explorer cannot forecast the metric {settings.metric}"
    if today > after:
        return None, f"{after:%Y-%m} has begun (Cost Explorer forecasts only from today, {today.isoformat()})"
    params: dict[str, Any] = {
        "TimePeriod": {"Start": after.isoformat(), "End": end.isoformat()},
        "Metric": metric,
        "Granularity": "MONTHLY",
    }
    if settings.linked_accounts:
        params["Filter"] = {"Dimensions": {"Key": "LINKED_ACCOUNT", "Values": list(settings.linked_accounts)}}
    return params, f"Cost Explorer's forecast of {after:%Y-%m}"


def forecast_amount(answer: Mapping[str, Any], currency: str) -> Decimal:
    """The forecast total from a GetCostForecast answer (untrusted: checked, in the bill's currency)."""
    total = answer.get("Total")
    if not isinstance(total, Mapping):
        raise InvalidInputError("Cost Explorer's forecast has no Total")
    amount, unit = _amount({"forecast": total}, "forecast", "the forecast")
    if not amount.is_finite() or amount < 0:
        raise InvalidInputError(f"Cost Explorer's forecast total {amount} is not an amount")
    if unit != currency:
        raise InvalidInputError(f"Cost Explorer's forecast is in {unit}, the bill in {currency}")
    return amount


def cost_explorer_requests(settings: CostSettings, month: str) -> list[CostRequest]:
    """The requests a month's cost takes, in the order they are sent.

    1. the month by SERVICE and LINKED_ACCOUNT (Cost Explorer allows two groupings per request);
    2. the month by each cost tag key, one request each;
    3. the month by day and SERVICE (the daily chart);
    4. the month before by SERVICE (month over month).
    """
    first, end = month_bounds(month)
    previous = previous_billing_month(month)
    previous_first, _ = month_bounds(previous)
    common: dict[str, Any] = {"Metrics": [settings.metric]}
    if settings.linked_accounts:
        common["Filter"] = {"Dimensions": {"Key": "LINKED_ACCOUNT", "Values": list(settings.linked_accounts)}}

    def period(start: date, stop: date) -> dict[str, str]:
        return {"Start": start.isoformat(), "End": stop.isoformat()}

    def dimension(key: str) -> dict[str, str]:
        return {"Type": "DIMENSION", "Key": key}

    requests = [
        CostRequest(
            "service_account",
            month,
            {
                "TimePeriod": period(first, end),
                "Granularity": "MONTHLY",
                "GroupBy": [dimension("SERVICE"), dimension("LINKED_ACCOUNT")],
                **common,
            },
        )
    ]
    requests += [
        CostRequest(
            f"tag:{key}",
            month,
            {
                "TimePeriod": period(first, end),
                "Granularity": "MONTHLY",
                "GroupBy": [{"Type": "TAG", "Key": key}],
                **common,
            },
        )
        for key in settings.tag_keys
    ]
    requests.append(
        CostRequest(
            "daily_service",
            month,
            {
                "TimePeriod": period(first, end),
                "Granularity": "DAILY",
                "GroupBy": [dimension("SERVICE")],
                **common,
            },
        )
    )
    requests.append(
        CostRequest(
            "previous_service",
            previous,
            {
                "TimePeriod": period(previous_first, first),
                "Granularity": "MONTHLY",
                "GroupBy": [dimension("SERVICE")],
                **common,
            },
        )
    )
    return requests


@dataclass
class CostMonth:
    """One month's cost, broken down. ``by_tag[key]`` keeps untagged spend under ``UNTAGGED``."""

    month: str
    source: str
    currency: str
    total: Decimal = Decimal(0)
    estimated: bool = False
    by_service: dict[str, Decimal] = field(default_factory=dict)
    by_account: dict[str, Decimal] = field(default_factory=dict)
    by_service_account: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    by_tag: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    daily: dict[date, dict[str, Decimal]] = field(default_factory=dict)
    by_resource: dict[str, Decimal] = field(default_factory=dict)
    previous_by_service: dict[str, Decimal] | None = None
    discrepancies: list[str] = field(default_factory=list)

    @property
    def previous_total(self) -> Decimal | None:
        return (
            sum(self.previous_by_service.values(), Decimal(0))
            if self.previous_by_service is not None
            else None
        )

    def month_over_month(self) -> MonthOverMonth | None:
        """The change against the month before, in total and per service (None without that month)."""
        if self.previous_by_service is None:
            return None
        return month_over_month(self.by_service, self.previous_by_service)


@dataclass(frozen=True)
class MonthOverMonth:
    """Totals of two months, the change, and the change per service (largest rise first)."""

    total: Decimal
    previous_total: Decimal
    change: Decimal
    change_percent: Decimal | None
    by_service: tuple[tuple[str, Decimal, Decimal, Decimal], ...]


def month_over_month(current: Mapping[str, Decimal], previous: Mapping[str, Decimal]) -> MonthOverMonth:
    """Compare two months' cost per service; a service in only one month counts 0 in the other."""
    total = sum(current.values(), Decimal(0))
    before = sum(previous.values(), Decimal(0))
    rows = [
        (name, current.get(name, Decimal(0)), previous.get(name, Decimal(0)))
        for name in sorted(set(current) | set(previous))
    ]
    changes = sorted(
        ((name, now, then, now - then) for name, now, then in rows), key=lambda row: (-row[3], row[0])
    )
    percent = ((total - before) * 100 / before).quantize(CENT) if before else None
    return MonthOverMonth(total, before, total - before, percent, tuple(changes))


def _amount(metrics: Mapping[str, Any], metric: str, where: str) -> tuple[Decimal, str]:
    try:
        value = metrics[metric]
        return Decimal(str(value["Amount"])), str(value.get("Unit", "USD"))
    except (KeyError, TypeError, InvalidOperation):
        raise InvalidInputError(f"Cost Explorer answer {where}: no valid {metric} amount") from None


def _groups(
    pages: Sequence[Mapping[str, Any]], metric: str, purpose: str
) -> Iterable[tuple[str, list[str], Decimal, str, bool]]:
    for page_number, page in enumerate(pages):
        for result in page.get("ResultsByTime", []):
            start = str(result.get("TimePeriod", {}).get("Start", ""))
            for group_number, group in enumerate(result.get("Groups", [])):
                where = f"{purpose} page {page_number + 1}, {start}, group {group_number + 1}"
                amount, unit = _amount(group.get("Metrics", {}), metric, where)
                yield (
                    start,
                    [str(key) for key in group.get("Keys", [])],
                    amount,
                    unit,
                    bool(result.get("Estimated")),
                )


def _add(table: dict[Any, Decimal], key: Any, amount: Decimal) -> None:
    table[key] = table.get(key, Decimal(0)) + amount


def cost_month_from_explorer(
    settings: CostSettings, month: str, answers: Mapping[str, Sequence[Mapping[str, Any]]]
) -> CostMonth:
    """Build the month from the pages answered per request purpose (see :func:`cost_explorer_requests`).

    The month's total is the SERVICE x LINKED_ACCOUNT sum; every other breakdown must add up to it, or
    the difference is listed in ``discrepancies`` (never silently dropped).
    """
    metric = settings.metric
    result = CostMonth(month=month, source="cost_explorer", currency="USD")
    units: set[str] = set()
    for _start, keys, amount, unit, estimated in _groups(
        answers.get("service_account", []), metric, "service_account"
    ):
        service, account = [*keys, "", ""][:2]
        _add(result.by_service, service, amount)
        _add(result.by_account, account, amount)
        _add(result.by_service_account, (service, account), amount)
        result.total += amount
        result.estimated |= estimated
        units.add(unit)
    for key in settings.tag_keys:
        purpose = f"tag:{key}"
        values: dict[str, Decimal] = {}
        for _start, keys, amount, unit, _estimated in _groups(answers.get(purpose, []), metric, purpose):
            raw = keys[0] if keys else ""
            value = raw.split("$", 1)[1] if "$" in raw else raw
            _add(values, value or UNTAGGED, amount)
            units.add(unit)
        result.by_tag[key] = values
    for start, keys, amount, unit, _estimated in _groups(
        answers.get("daily_service", []), metric, "daily_service"
    ):
        day = date.fromisoformat(start)
        _add(result.daily.setdefault(day, {}), keys[0] if keys else "", amount)
        units.add(unit)
    if "previous_service" in answers:
        result.previous_by_service = {}
        for _start, keys, amount, unit, _estimated in _groups(
            answers["previous_service"], metric, "previous_service"
        ):
            _add(result.previous_by_service, keys[0] if keys else "", amount)
            units.add(unit)
    if len(units) > 1:
        raise InvalidInputError(f"Cost Explorer answered in several currencies: {', '.join(sorted(units))}")
    result.currency = units.pop() if units else "USD"
    _check_totals(result)
    return result


def _check_totals(result: CostMonth) -> None:
    for key, values in result.by_tag.items():
        tagged = sum(values.values(), Decimal(0))
        if tagged != result.total:
            result.discrepancies.append(
                f"by tag {key!r} the month adds up to {tagged}, by service to {result.total}: "
                f"{result.total - tagged} is in neither a value nor {UNTAGGED}"
            )
    if result.daily:
        daily = sum((sum(day.values(), Decimal(0)) for day in result.daily.values()), Decimal(0))
        if daily != result.total:
            result.discrepancies.append(f"the daily series adds up to {daily}, the month to {result.total}")


# -- FOCUS ---------------------------------------------------------------------------------------
def _tags(raw: Any, where: str) -> dict[str, str]:
    """FOCUS ``Tags``: a JSON object (CSV), a map or a list of pairs (Parquet), or nothing."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise InvalidInputError(f"FOCUS {where}: Tags is not a JSON object") from None
    if isinstance(raw, list):
        raw = dict(raw)
    if not isinstance(raw, dict):
        raise InvalidInputError(f"FOCUS {where}: Tags is not a key-value map")
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def cost_month_from_focus(
    settings: CostSettings, month: str, rows: Iterable[Mapping[str, Any]], *, source: str = "focus"
) -> CostMonth:
    """Build the month from FOCUS 1.x rows (dicts of column to value), charges of that month only.

    The cost column follows the catalog's metric: BilledCost for the unblended or blended metrics,
    EffectiveCost for the amortized ones. Rows charged outside the month are left out.
    """
    first, end = month_bounds(month)
    column = _FOCUS_COST[settings.metric]
    result = CostMonth(month=month, source=source, currency="")
    currencies: set[str] = set()
    by_tag: dict[str, dict[str, Decimal]] = {key: {} for key in settings.tag_keys}
    daily: dict[date, dict[str, Decimal]] = defaultdict(dict)
    for number, row in enumerate(rows, start=1):
        where = f"{source} row {number}"
        missing = [name for name in (*FOCUS_COLUMNS, column) if name not in row]
        if missing:
            raise InvalidInputError(f"FOCUS {where}: missing column(s) {', '.join(missing)}")
        started = row["ChargePeriodStart"]
        day = started.date() if hasattr(started, "date") else date.fromisoformat(str(started)[:10])
        if not first <= day < end:
            continue
        try:
            amount = Decimal(str(row[column]))
        except InvalidOperation:
            raise InvalidInputError(f"FOCUS {where}: {column} {row[column]!r} is not a number") from None
        service, account = str(row["ServiceName"] or ""), str(row["SubAccountId"] or "")
        currencies.add(str(row["BillingCurrency"]))
        result.total += amount
        _add(result.by_service, service, amount)
        _add(result.by_account, account, amount)
        _add(result.by_service_account, (service, account), amount)
        _add(daily[day], service, amount)
        if row.get("ResourceId"):
            _add(result.by_resource, str(row["ResourceId"]), amount)
        tags = _tags(row.get("Tags"), where)
        for key in settings.tag_keys:
            _add(by_tag[key], tags.get(key) or UNTAGGED, amount)
    if len(currencies) > 1:
        raise InvalidInputError(
            f"FOCUS {source}: several billing currencies: {', '.join(sorted(currencies))}"
        )
    result.currency = currencies.pop() if currencies else "USD"
    result.by_tag = by_tag
    result.daily = dict(sorted(daily.items()))
    _check_totals(result)
    return result


def focus_rows(data: bytes, name: str, file_format: str) -> list[dict[str, Any]]:
    """Parse one FOCUS data file (Parquet, or CSV, gzip or not) into rows of column to value.

    Cost columns of a CSV are read as text, so that amounts keep every digit the bill wrote.
    :raises InvalidInputError: the file is not of its format, or lacks a FOCUS column the report needs.
    """
    import io

    import pyarrow as pa

    try:
        if file_format == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
        else:
            import pyarrow.csv as pacsv

            text_columns = {
                column: pa.string() for column in ("BilledCost", "EffectiveCost", "ListCost", "Tags")
            }
            compression = "gzip" if name.endswith(".gz") else None
            stream = pa.input_stream(pa.py_buffer(data), compression=compression)
            table = pacsv.read_csv(stream, convert_options=pacsv.ConvertOptions(column_types=text_columns))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as error:
        raise InvalidInputError(f"FOCUS file {name} is not valid {file_format}: {error}") from None
    missing = [column for column in FOCUS_COLUMNS if column not in table.column_names]
    if missing:
        raise InvalidInputError(f"FOCUS file {name}: missing column(s) {', '.join(missing)}")
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


__all__ = [
    "CENT",
    "FOCUS_COLUMNS",
    "UNTAGGED",
    "CostMonth",
    "CostRequest",
    "MonthOverMonth",
    "cost_explorer_requests",
    "cost_month_from_explorer",
    "cost_month_from_focus",
    "focus_rows",
    "month_bounds",
    "month_over_month",
    "previous_billing_month",
]
