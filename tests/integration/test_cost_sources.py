"""Cost from the sandbox's moto: Cost Explorer answers and the FOCUS export that `sandbox up` seeded.

moto answers each new Cost Explorer request body with the next queued result and ignores GroupBy,
Filter and Metrics, so this checks the requests' order, botocore's validation of each, paging and the
arithmetic, not AWS's grouping (the unit tests check the parameters with botocore's Stubber).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from cloudops.catalog import load_catalog_file
from cloudops.clouds.aws.cost_explorer import CostSourceError, explorer_cost_month, focus_cost_month
from cloudops.reports.cost import UNTAGGED, month_bounds, previous_billing_month
from cloudops.sandbox.billing import sandbox_bill, seeded_month

pytestmark = pytest.mark.integration

AWS_CONN_ID = "sandbox_aws"


def test_the_seeded_month_from_both_sources_equals_the_bill(
    sandbox_env: dict[str, str], project_root: Path
) -> None:
    catalog = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    assert catalog.cost is not None
    month = seeded_month(datetime.now(UTC))
    lines = sandbox_bill(month)
    seeded = sum((line.billed for line in lines), Decimal(0))
    explorer = explorer_cost_month(AWS_CONN_ID, catalog.cost, month)
    focus = focus_cost_month(AWS_CONN_ID, catalog.cost, month)
    assert explorer.total == focus.total == seeded
    assert explorer.total.quantize(Decimal("0.01")) == seeded.quantize(Decimal("0.01"))
    untagged = sum((line.billed for line in lines if "customer" not in line.tags), Decimal(0))
    assert explorer.by_tag["customer"][UNTAGGED] == focus.by_tag["customer"][UNTAGGED] == untagged
    assert explorer.by_service == focus.by_service
    assert explorer.daily == focus.daily
    assert explorer.discrepancies == []
    change = explorer.month_over_month()
    assert change is not None
    before = sum((line.billed for line in sandbox_bill(previous_billing_month(month))), Decimal(0))
    assert (change.total, change.previous_total, change.change) == (seeded, before, seeded - before)
    # The same requests again get the same answers: moto keeps each body's result.
    assert explorer_cost_month(AWS_CONN_ID, catalog.cost, month).total == seeded


def test_a_month_without_a_focus_export_file_is_named(
    sandbox_env: dict[str, str], project_root: Path
) -> None:
    catalog = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    assert catalog.cost is not None
    with pytest.raises(
        CostSourceError,
        match=r"no FOCUS parquet data file under s3://cloudops-sandbox-billing/"
        r"focus/sandbox-focus/data/BILLING_PERIOD=1999-01/",
    ):
        focus_cost_month(AWS_CONN_ID, catalog.cost, "1999-01")


def test_without_moto_s_forecast_the_report_states_a_linear_projection_and_why(
    sandbox_env: dict[str, str], project_root: Path
) -> None:
    """moto does not implement GetCostForecast (it answers 500): botocore validated the request, the
    refusal is the stated reason, and the report's projection is the linear one saying so."""
    from cloudops.reports.monthly import linear_projection
    from cloudops.runbooks.monthly_report import read_forecast

    catalog = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    assert catalog.cost is not None
    month = seeded_month(datetime.now(UTC))
    cost = explorer_cost_month(AWS_CONN_ID, catalog.cost, month)
    _, following = month_bounds(month)  # the first day of the month after
    first_of_next = datetime(following.year, following.month, 1, 6, tzinfo=UTC)

    forecast, why = read_forecast(catalog, month, cost, first_of_next)
    later, later_why = read_forecast(catalog, month, cost, first_of_next.replace(day=3))

    assert forecast is None
    assert why.startswith("Cost Explorer refused the forecast: 500")
    assert later is None
    assert "has begun (Cost Explorer forecasts only from today" in later_why
    projection = linear_projection(cost, why=why)
    assert projection is not None
    assert projection.method.endswith(f"({why})")
