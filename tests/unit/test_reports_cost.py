"""Cost: Cost Explorer requests (checked by botocore's Stubber), the figures to the cent, FOCUS files."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from cloudops.catalog.models import CostSettings
from cloudops.clouds.aws.cost_explorer import CostSourceError, send_cost_requests
from cloudops.errors import InvalidInputError
from cloudops.reports.cost import (
    UNTAGGED,
    CostRequest,
    cost_explorer_requests,
    cost_month_from_explorer,
    cost_month_from_focus,
    focus_rows,
    forecast_amount,
    forecast_request,
)
from cloudops.sandbox.billing import explorer_answers, focus_parquet, sandbox_bill

pytestmark = pytest.mark.unit

SETTINGS = CostSettings(cloud="acme_aws", tag_keys=["customer", "requested_by"])
METRIC = "NetUnblendedCost"


def group(keys: list[str], amount: str) -> dict[str, Any]:
    return {"Keys": keys, "Metrics": {METRIC: {"Amount": amount, "Unit": "USD"}}}


def answer(start: str, end: str, groups: list[dict[str, Any]], token: str | None = None) -> dict[str, Any]:
    page: dict[str, Any] = {
        "ResultsByTime": [
            {"TimePeriod": {"Start": start, "End": end}, "Total": {}, "Groups": groups, "Estimated": False}
        ]
    }
    if token:
        page["NextPageToken"] = token
    return page


@pytest.fixture
def ce() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "ce", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def test_the_planned_requests_in_order() -> None:
    requests = cost_explorer_requests(SETTINGS, "2026-12")
    assert [r.purpose for r in requests] == [
        "service_account",
        "tag:customer",
        "tag:requested_by",
        "daily_service",
        "previous_service",
    ]
    assert requests[0].params["TimePeriod"] == {"Start": "2026-12-01", "End": "2027-01-01"}  # End exclusive
    assert requests[-1].params["TimePeriod"] == {"Start": "2026-11-01", "End": "2026-12-01"}
    assert requests[1].params["GroupBy"] == [{"Type": "TAG", "Key": "customer"}]
    assert "Filter" not in requests[0].params
    only = CostSettings(cloud="x", linked_accounts=["111111111111"])
    assert cost_explorer_requests(only, "2026-12")[0].params["Filter"] == {
        "Dimensions": {"Key": "LINKED_ACCOUNT", "Values": ["111111111111"]}
    }


def test_a_month_from_cost_explorer_to_the_cent(ce: tuple[Any, Stubber]) -> None:
    client, stubber = ce
    requests = cost_explorer_requests(SETTINGS, "2026-11")
    month = ("2026-11-01", "2026-12-01")
    pages = {
        "service_account": [
            answer(*month, [group(["Amazon RDS", "111111111111"], "100.1234567890")], token="page-2"),
            answer(
                *month,
                [
                    group(["Amazon RDS", "222222222222"], "0.0050000001"),
                    group(["Amazon EC2", "111111111111"], "20"),
                ],
            ),
        ],
        "tag:customer": [
            answer(*month, [group(["customer$acme"], "100.1284567891"), group(["customer$"], "20")])
        ],
        "tag:requested_by": [answer(*month, [group(["requested_by$alice"], "120.1284567891")])],
        "daily_service": [
            {
                "ResultsByTime": [
                    answer("2026-11-01", "2026-11-02", [group(["Amazon RDS"], "50.0642283946")])[
                        "ResultsByTime"
                    ][0],
                    answer(
                        "2026-11-02",
                        "2026-11-03",
                        [group(["Amazon RDS"], "50.0642283945"), group(["Amazon EC2"], "20")],
                    )["ResultsByTime"][0],
                ]
            }
        ],
        "previous_service": [
            answer("2026-10-01", "2026-11-01", [group(["Amazon RDS"], "90"), group(["Amazon EC2"], "25")])
        ],
    }
    for request in requests:
        for number, page in enumerate(pages[request.purpose]):
            expected = dict(request.params, **({"NextPageToken": "page-2"} if number else {}))
            stubber.add_response("get_cost_and_usage", page, expected_params=expected)
    cost = cost_month_from_explorer(SETTINGS, "2026-11", send_cost_requests(client, requests))
    # 100.1234567890 + 0.0050000001 + 20 = 120.1284567891, shown as 120.13
    assert cost.total == Decimal("120.1284567891")
    assert cost.total.quantize(Decimal("0.01")) == Decimal("120.13")
    assert cost.by_service == {"Amazon RDS": Decimal("100.1284567891"), "Amazon EC2": Decimal(20)}
    assert cost.by_account == {
        "111111111111": Decimal("120.1234567890"),
        "222222222222": Decimal("0.0050000001"),
    }
    assert cost.by_tag["customer"] == {"acme": Decimal("100.1284567891"), UNTAGGED: Decimal(20)}
    assert cost.by_tag["requested_by"] == {"alice": Decimal("120.1284567891")}
    assert cost.daily[date(2026, 11, 2)] == {
        "Amazon RDS": Decimal("50.0642283945"),
        "Amazon EC2": Decimal(20),
    }
    assert cost.discrepancies == []
    change = cost.month_over_month()
    assert change is not None
    assert (change.previous_total, change.change) == (Decimal(115), Decimal("5.1284567891"))
    assert change.change_percent == Decimal("4.46")  # 5.1284567891 / 115
    assert change.by_service[0] == (
        "Amazon RDS",
        Decimal("100.1284567891"),
        Decimal(90),
        Decimal("10.1284567891"),
    )


def test_a_breakdown_that_loses_spend_says_so() -> None:
    month = ("2026-11-01", "2026-12-01")
    answers = {
        "service_account": [answer(*month, [group(["Amazon EC2", "111111111111"], "20.50")])],
        "tag:customer": [answer(*month, [group(["customer$acme"], "20.00")])],
    }
    cost = cost_month_from_explorer(CostSettings(cloud="x", tag_keys=["customer"]), "2026-11", answers)
    assert cost.discrepancies == [
        "by tag 'customer' the month adds up to 20.00, by service to 20.50: 0.50 is in neither a value "
        "nor (untagged)"
    ]


def test_botocore_refuses_an_invalid_request_before_it_is_sent() -> None:
    client = boto3.client(
        "ce", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    stubber = Stubber(client)
    stubber.add_response("get_cost_and_usage", {})  # let the call through to botocore's own validation
    stubber.activate()
    bad = CostRequest(
        "daily_service",
        "2026-11",
        {
            "TimePeriod": {"Start": "2026-11-01", "End": "2026-12-01"},
            "Granularity": "DAILY",
            "Metrics": [METRIC],
            "GroupBy": "SERVICE",
        },
    )
    with pytest.raises(
        CostSourceError,
        match=r"(?s)refused the daily_service request of 2026-11: Parameter validation.*GroupBy",
    ):
        send_cost_requests(client, [bad])


def test_the_sandbox_bill_gives_the_same_month_from_both_sources(ce: tuple[Any, Stubber]) -> None:
    client, stubber = ce
    lines, previous = sandbox_bill("2026-11"), sandbox_bill("2026-10")
    requests = cost_explorer_requests(SETTINGS, "2026-11")
    for request, response in zip(
        requests, explorer_answers(SETTINGS, "2026-11", lines, previous), strict=True
    ):
        stubber.add_response(
            "get_cost_and_usage", response, expected_params=request.params
        )  # shape-checked too
    explorer = cost_month_from_explorer(SETTINGS, "2026-11", send_cost_requests(client, requests))
    focus = cost_month_from_focus(
        SETTINGS, "2026-11", focus_rows(focus_parquet(lines), "nov.parquet", "parquet")
    )
    seeded = sum((line.billed for line in lines), Decimal(0))
    assert explorer.total == focus.total == seeded
    assert explorer.by_service == focus.by_service
    assert explorer.by_account == focus.by_account
    assert explorer.by_tag == focus.by_tag
    assert explorer.daily == focus.daily
    assert len(explorer.daily) == 30
    untagged = sum((line.billed for line in lines if "customer" not in line.tags), Decimal(0))
    assert untagged > 0
    assert explorer.by_tag["customer"][UNTAGGED] == untagged
    assert explorer.discrepancies == focus.discrepancies == []
    assert explorer.previous_total == sum((line.billed for line in previous), Decimal(0))
    assert len(focus.by_resource) == 12


FOCUS_CSV = "\n".join(
    [
        "ChargePeriodStart,ServiceName,SubAccountId,BillingCurrency,BilledCost,EffectiveCost,ResourceId,Tags",
        "2026-11-01T00:00:00Z,Amazon RDS,111111111111,EUR,10.005,9.50,db-1,"
        '"{""customer"": ""acme"", ""requested_by"": ""runbook:backup""}"',
        "2026-11-30T00:00:00Z,Amazon S3,111111111111,EUR,0.004,0.004,bucket-1,",
        "2026-12-01T00:00:00Z,Amazon S3,111111111111,EUR,99,99,bucket-1,",
        '2026-11-15T00:00:00Z,Amazon EC2,222222222222,EUR,1.1,1.0,i-1,"{""customer"": """"}"',
        "",
    ]
)


@pytest.mark.parametrize("compressed", [False, True])
def test_a_focus_csv_read_exactly(compressed: bool) -> None:
    data = gzip.compress(FOCUS_CSV.encode()) if compressed else FOCUS_CSV.encode()
    rows = focus_rows(data, "x.csv.gz" if compressed else "x.csv", "csv")
    cost = cost_month_from_focus(SETTINGS, "2026-11", rows)
    assert cost.currency == "EUR"
    assert cost.total == Decimal("11.109")  # 10.005 + 0.004 + 1.1; the December row left out
    assert cost.by_tag["customer"] == {"acme": Decimal("10.005"), UNTAGGED: Decimal("1.104")}
    assert cost.by_tag["requested_by"] == {"runbook:backup": Decimal("10.005"), UNTAGGED: Decimal("1.104")}
    assert cost.by_resource == {
        "db-1": Decimal("10.005"),
        "bucket-1": Decimal("0.004"),
        "i-1": Decimal("1.1"),
    }
    amortized = cost_month_from_focus(CostSettings(cloud="x", metric="NetAmortizedCost"), "2026-11", rows)
    assert amortized.total == Decimal("10.504")


def test_a_focus_file_without_its_columns_is_refused_by_name() -> None:
    with pytest.raises(InvalidInputError, match=r"FOCUS file s3://b/k\.csv: missing column\(s\) ServiceName"):
        focus_rows(
            b"ChargePeriodStart,SubAccountId,BillingCurrency,BilledCost\n2026-11-01,1,USD,1\n",
            "s3://b/k.csv",
            "csv",
        )
    with pytest.raises(InvalidInputError, match=r"FOCUS file k\.parquet is not valid parquet"):
        focus_rows(b"not parquet", "k.parquet", "parquet")


# -- next month's forecast -------------------------------------------------------------------------------
def test_the_forecast_of_next_month_is_asked_on_its_first_day_and_is_a_valid_request() -> None:
    settings = CostSettings(cloud="acme_aws", tag_keys=["customer"], linked_accounts=["111122223333"])
    params, what = forecast_request(settings, "2026-11", date(2026, 12, 1))

    assert params == {
        "TimePeriod": {"Start": "2026-12-01", "End": "2027-01-01"},
        "Metric": "NET_UNBLENDED_COST",
        "Granularity": "MONTHLY",
        "Filter": {"Dimensions": {"Key": "LINKED_ACCOUNT", "Values": ["111122223333"]}},
    }
    assert what == "Cost Explorer's forecast of 2026-12"
    # botocore's Stubber checks the request and the answer against the service model.
    client = boto3.client("ce", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(client) as stub:
        stub.add_response(
            "get_cost_forecast",
            {"Total": {"Amount": "1234.5678", "Unit": "USD"}, "ForecastResultsByTime": []},
            expected_params=params,
        )
        assert forecast_amount(client.get_cost_forecast(**params), "USD") == Decimal("1234.5678")


def test_no_forecast_is_asked_once_next_month_has_begun_and_the_reason_is_stated() -> None:
    params, why = forecast_request(SETTINGS, "2026-11", date(2026, 12, 2))

    assert params is None
    assert why == "2026-12 has begun (Cost Explorer forecasts only from today, 2026-12-02)"
    assert forecast_request(SETTINGS, "2026-10", date(2026, 10, 20))[0] is not None  # before it begins


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({}, "has no Total"),
        ({"Total": {"Amount": "NaN", "Unit": "USD"}}, "is not an amount"),
        ({"Total": {"Amount": "-5", "Unit": "USD"}}, "is not an amount"),
        ({"Total": {"Amount": "12", "Unit": "EUR"}}, "is in EUR, the bill in USD"),
        ({"Total": {"Amount": "twelve", "Unit": "USD"}}, "no valid forecast amount"),
    ],
)
def test_a_forecast_answer_that_is_not_an_amount_in_the_bill_s_currency_is_refused(
    answer: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        forecast_amount(answer, "USD")
