"""The bill from AWS: Cost Explorer through the amazon provider's AwsBaseHook, a FOCUS export from S3.

There is no Cost Explorer hook in the provider: ``AwsBaseHook(client_type="ce")`` gives the client, and
the connection's ``endpoint_url`` points it at moto in the sandbox. Cost Explorer is a global service
signed for us-east-1, whatever region the connection names. Each request costs USD 0.01 on AWS, and
boto3 has no paginator for GetCostAndUsage: pages are followed by hand, at most ``MAX_PAGES`` each.

moto serves injected results only: it answers each new request body with the next queued result and
ignores GroupBy, Filter and Metrics, so the sandbox checks the arithmetic and the request order, not
AWS's grouping; botocore still validates every request against the service model before it is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from cloudops.catalog.models import CostSettings, FocusExport
from cloudops.clouds.aws.snapshots import client_config
from cloudops.errors import CloudOpsError, InvalidInputError
from cloudops.reports.cost import (
    CostMonth,
    CostRequest,
    cost_explorer_requests,
    cost_month_from_explorer,
    cost_month_from_focus,
    focus_rows,
    forecast_amount,
    forecast_request,
)

MAX_PAGES = 50
FOCUS_MAX_FILES = 200
FOCUS_MAX_BYTES = 2 * 1024**3


class CostSourceError(CloudOpsError):
    """The bill could not be read: Cost Explorer refused, or the FOCUS export is missing or too large."""


def _ce_client(aws_conn_id: str) -> Any:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="ce", region_name="us-east-1")
    return AwsBaseHook(
        aws_conn_id=aws_conn_id, client_type="ce", region_name="us-east-1", config=client_config(hook.config)
    ).conn


def send_cost_requests(client: Any, requests: Sequence[CostRequest]) -> dict[str, list[Mapping[str, Any]]]:
    """Send each request in order, following NextPageToken; return the pages per request purpose."""
    from botocore.exceptions import BotoCoreError, ClientError

    answers: dict[str, list[Mapping[str, Any]]] = {}
    for request in requests:
        pages: list[Mapping[str, Any]] = []
        token = None
        for _ in range(MAX_PAGES):
            params = dict(request.params, **({"NextPageToken": token} if token else {}))
            try:
                page = client.get_cost_and_usage(**params)
            except (BotoCoreError, ClientError) as error:
                raise CostSourceError(
                    f"Cost Explorer refused the {request.purpose} request of {request.month}: {error}"
                ) from error
            pages.append(page)
            token = page.get("NextPageToken")
            if not token:
                break
        else:
            raise CostSourceError(
                f"Cost Explorer's {request.purpose} answer of {request.month} ran past {MAX_PAGES} pages"
            )
        answers[request.purpose] = pages
    return answers


def explorer_cost_month(aws_conn_id: str, settings: CostSettings, month: str) -> CostMonth:
    """The month ``YYYY-MM`` from Cost Explorer: by service and account, by tag, daily, month over month."""
    requests = cost_explorer_requests(settings, month)
    return cost_month_from_explorer(settings, month, send_cost_requests(_ce_client(aws_conn_id), requests))


def explorer_forecast(
    aws_conn_id: str, settings: CostSettings, month: str, today: date, currency: str
) -> tuple[Decimal | None, str]:
    """Cost Explorer's forecast of the month after ``month``, or None and why (the report then states a
    linear projection and this reason). moto does not implement GetCostForecast: in the sandbox the
    reason is moto's refusal; botocore has validated the request against the service model first."""
    from botocore.exceptions import BotoCoreError, ClientError

    params, what = forecast_request(settings, month, today)
    if params is None:
        return None, what
    try:
        answer = _ce_client(aws_conn_id).get_cost_forecast(**params)
    except (BotoCoreError, ClientError) as error:
        return None, f"Cost Explorer refused the forecast: {_short(error)}"
    try:
        return forecast_amount(answer, currency), what
    except InvalidInputError as error:
        return None, str(error)


def _short(error: Exception) -> str:
    """An error for a report line: its code and the start of its message, without markup."""
    import re

    response = getattr(error, "response", None)
    if isinstance(response, Mapping) and isinstance(response.get("Error"), Mapping):
        code = response["Error"].get("Code", "")
        text = f"{code} {response['Error'].get('Message', '')}"
    else:
        text = str(error)
    text = " ".join(re.sub(r"<[^>]*>", " ", text).split())
    return text[:160] + ("..." if len(text) > 160 else "")


def focus_prefix(export: FocusExport, month: str) -> str:
    """Where a month's data files are: ``<prefix>/data/BILLING_PERIOD=YYYY-MM/`` (AWS Data Exports layout)."""
    base = export.prefix.strip("/")
    return f"{base}/data/BILLING_PERIOD={month}/" if base else f"data/BILLING_PERIOD={month}/"


def focus_cost_month(aws_conn_id: str, settings: CostSettings, month: str) -> CostMonth:
    """The month from the FOCUS export's data files in S3 (bounded in count and bytes)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    export = settings.focus_export
    if export is None:
        raise CostSourceError("the estate's cost settings name no focus_export")
    client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
    prefix = focus_prefix(export, month)
    suffixes = (".parquet",) if export.format == "parquet" else (".csv", ".csv.gz")
    keys: list[tuple[str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=export.bucket, Prefix=prefix):
        keys += [
            (item["Key"], int(item["Size"]))
            for item in page.get("Contents", [])
            if item["Key"].endswith(suffixes)
        ]
        if len(keys) > FOCUS_MAX_FILES:
            raise CostSourceError(
                f"s3://{export.bucket}/{prefix} holds more than {FOCUS_MAX_FILES} data files"
            )
    if not keys:
        raise CostSourceError(f"no FOCUS {export.format} data file under s3://{export.bucket}/{prefix}")
    total = sum(size for _, size in keys)
    if total > FOCUS_MAX_BYTES:
        raise CostSourceError(f"s3://{export.bucket}/{prefix} holds {total} bytes, over {FOCUS_MAX_BYTES}")
    rows: list[dict[str, Any]] = []
    for key, size in sorted(keys):
        body = client.get_object(Bucket=export.bucket, Key=key)["Body"].read(size + 1)
        if len(body) != size:
            raise CostSourceError(
                f"s3://{export.bucket}/{key} changed while read ({len(body)} bytes, listed {size})"
            )
        rows += focus_rows(body, f"s3://{export.bucket}/{key}", export.format)
    return cost_month_from_focus(settings, month, rows, source=f"focus s3://{export.bucket}/{prefix}")


__all__ = [
    "MAX_PAGES",
    "CostSourceError",
    "explorer_cost_month",
    "focus_cost_month",
    "focus_prefix",
    "send_cost_requests",
]
