"""A month of made-up bill for the sandbox: one set of line items, served two ways.

The same line items become the FOCUS 1.x export (a Parquet file put in moto's S3) and the Cost
Explorer answers (queued in moto, in the order :func:`cloudops.reports.cost.cost_explorer_requests`
sends them), so both sources must give the same totals, to the cent. Amounts have up to 10 decimals,
as AWS's do; a share of the spend carries no cost tag, as in real accounts.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from cloudops.catalog.models import CostSettings
from cloudops.errors import SandboxError
from cloudops.reports.cost import cost_explorer_requests, month_bounds

ACCOUNTS = ("123456789012", "210987654321")
SERVICES = {
    "Amazon Relational Database Service": ("db", Decimal("18.5")),
    "Amazon Elastic Compute Cloud - Compute": ("i", Decimal("9.25")),
    "Amazon Simple Storage Service": ("bucket", Decimal("1.75")),
    "AWS Key Management Service": ("key", Decimal("0.12")),
}
REQUESTERS = ("alice", "bob", "runbook:backup", "")


@dataclass(frozen=True)
class BillLine:
    """One day's charge of one resource."""

    day: date
    service: str
    account: str
    resource: str
    billed: Decimal
    effective: Decimal
    tags: dict[str, str] = field(default_factory=dict)


def sandbox_bill(month: str, *, seed: str = "sandbox") -> list[BillLine]:
    """The line items of ``month``: every resource charged every day, deterministic for a seed."""
    first, end = month_bounds(month)
    chance = random.Random(f"{seed}:{month}")
    resources = []
    for service, (kind, base) in SERVICES.items():
        for number in range(3):
            account = ACCOUNTS[number % 2]
            tags = {"customer": "sandbox"} if number < 2 else {}
            requester = REQUESTERS[number % len(REQUESTERS)]
            if requester and tags:
                tags["requested_by"] = requester
            resources.append((service, account, f"{kind}-{number}", base * (number + 1), tags))
    lines = []
    day = first
    while day < end:
        for service, account, resource, base, tags in resources:
            amount = (
                base * Decimal(chance.randint(800, 1200)) / 1000 + Decimal(chance.randint(0, 10**6)) / 10**10
            )
            billed = amount.quantize(Decimal("0.0000000001"))
            lines.append(BillLine(day, service, account, resource, billed, billed, dict(tags)))
        day += timedelta(days=1)
    return lines


def _metric(amount: Decimal, metric: str) -> dict[str, dict[str, str]]:
    return {metric: {"Amount": format(amount, "f"), "Unit": "USD"}}


def _result(start: date, stop: date, groups: dict[tuple[str, ...], Decimal], metric: str) -> dict[str, Any]:
    return {
        "TimePeriod": {"Start": start.isoformat(), "End": stop.isoformat()},
        "Total": {},
        "Groups": [
            {"Keys": list(keys), "Metrics": _metric(amount, metric)}
            for keys, amount in sorted(groups.items())
        ],
        "Estimated": False,
    }


def explorer_answers(
    settings: CostSettings, month: str, lines: Sequence[BillLine], previous: Sequence[BillLine]
) -> list[dict[str, Any]]:
    """The GetCostAndUsage answers for the month's requests, in the order they are sent."""
    metric = settings.metric
    answers = []
    for request in cost_explorer_requests(settings, month):
        first, end = month_bounds(request.month)
        source = previous if request.purpose == "previous_service" else lines
        if request.purpose == "daily_service":
            results = []
            day = first
            while day < end:
                groups: dict[tuple[str, ...], Decimal] = {}
                for line in source:
                    if line.day == day:
                        groups[(line.service,)] = groups.get((line.service,), Decimal(0)) + line.billed
                results.append(_result(day, day + timedelta(days=1), groups, metric))
                day += timedelta(days=1)
        else:
            groups = {}
            for line in source:
                if request.purpose == "service_account":
                    keys: tuple[str, ...] = (line.service, line.account)
                elif request.purpose.startswith("tag:"):
                    key = request.purpose.removeprefix("tag:")
                    keys = (f"{key}${line.tags.get(key, '')}",)
                else:
                    keys = (line.service,)
                groups[keys] = groups.get(keys, Decimal(0)) + line.billed
            results = [_result(first, end, groups, metric)]
        answers.append(
            {
                "ResultsByTime": results,
                "DimensionValueAttributes": [],
                "GroupDefinitions": request.params["GroupBy"],
            }
        )
    return answers


def focus_parquet(lines: Sequence[BillLine]) -> bytes:
    """The line items as a FOCUS 1.2 Parquet file (cost columns as decimal128(38, 10), Tags as JSON)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def at(day: date) -> datetime:
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    cost = pa.decimal128(38, 10)
    table = pa.table(
        {
            "BillingPeriodStart": pa.array(
                [at(line.day.replace(day=1)) for line in lines], pa.timestamp("s", tz="UTC")
            ),
            "ChargePeriodStart": pa.array([at(line.day) for line in lines], pa.timestamp("s", tz="UTC")),
            "ChargePeriodEnd": pa.array(
                [at(line.day + timedelta(days=1)) for line in lines], pa.timestamp("s", tz="UTC")
            ),
            "BillingAccountId": [ACCOUNTS[0]] * len(lines),
            "SubAccountId": [line.account for line in lines],
            "ServiceName": [line.service for line in lines],
            "ChargeCategory": ["Usage"] * len(lines),
            "ResourceId": [line.resource for line in lines],
            "BilledCost": pa.array([line.billed for line in lines], cost),
            "EffectiveCost": pa.array([line.effective for line in lines], cost),
            "BillingCurrency": ["USD"] * len(lines),
            "Tags": [json.dumps(line.tags, sort_keys=True) for line in lines],
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def seeded_month(now: datetime) -> str:
    """The billing month the sandbox seeds: the last complete UTC month before ``now``."""
    first = now.astimezone(UTC).date().replace(day=1) - timedelta(days=1)
    return f"{first.year:04d}-{first.month:02d}"


def seed_billing(settings: CostSettings, endpoint: str, region: str, *, now: datetime) -> list[str]:
    """Put the last complete month's bill in moto: its FOCUS file in S3 and its Cost Explorer answers.

    Idempotent: the FOCUS file marks the month as seeded (moto loses both on restart). The answers are
    queued only with the file, since moto hands queued answers to whichever new request comes next; an
    estate without a focus_export is not seeded (nothing would mark it).
    """
    import urllib.request

    import boto3
    from botocore.exceptions import ClientError

    from cloudops.clouds.aws.cost_explorer import focus_prefix

    month = seeded_month(now)
    previous = f"{(month_bounds(month)[0] - timedelta(days=1)):%Y-%m}"
    done: list[str] = []
    export = settings.focus_export
    if export is None:
        return done
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    key = f"{focus_prefix(export, month)}sandbox-focus-00001.parquet"
    try:
        s3.head_bucket(Bucket=export.bucket)
    except ClientError:
        s3.create_bucket(Bucket=export.bucket, CreateBucketConfiguration={"LocationConstraint": region})
        done.append(f"bucket {export.bucket} (FOCUS billing export)")
    try:
        s3.head_object(Bucket=export.bucket, Key=key)
        return done
    except ClientError:
        pass
    lines, before = sandbox_bill(month), sandbox_bill(previous)
    body = json.dumps({"results": explorer_answers(settings, month, lines, before)}).encode()
    request = urllib.request.Request(
        f"{endpoint}/moto-api/static/ce/cost-and-usage-results",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 201:
            raise SandboxError(f"moto refused the Cost Explorer results: HTTP {response.status}")
    done.append(
        f"Cost Explorer answers for {month} ({len(cost_explorer_requests(settings, month))} requests)"
    )
    s3.put_object(Bucket=export.bucket, Key=key, Body=focus_parquet(lines))
    done.append(f"FOCUS export s3://{export.bucket}/{key} ({len(lines)} line items)")
    return done


__all__ = ["BillLine", "explorer_answers", "focus_parquet", "sandbox_bill", "seed_billing", "seeded_month"]
