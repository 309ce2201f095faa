"""The catalog's SLOs, endpoints, cost and report settings: what loads, and how bad input is named."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from cloudops.catalog import CatalogError, load_catalog_file

pytestmark = pytest.mark.unit

ESTATE = """\
estate: acme
owner: acme-oncall
timezone: Europe/Paris
clouds:
  - {name: acme_aws, provider: aws, aws_conn_id: acme_aws, region: eu-west-1}
databases:
  - {name: shop, engine: postgres, conn_id: acme_shop, database: shop}
fleets:
  - name: web
    os_family: debian
    hosts:
      - {name: web-1, ssh_conn_id: acme_web_1}
endpoints:
  - {name: storefront, url: "https://shop.example/health", expect_status: [200, 204], expect_body: OK}
  - {name: api, http_conn_id: acme_api, path: /ping, method: HEAD, timeout: 5s}
notifications:
  - {name: mail, kind: smtp, smtp_conn_id: acme_smtp, to: [ops@acme.example]}
slos:
  - name: shop_availability
    targets:
      - {kind: database, name: shop}
      - {kind: host, name: web-1}
      - {kind: endpoint, name: storefront}
    objectives:
      - {role: internal, target_percent: 99.95}
      - {role: sla, target_percent: 99.9}
    no_data_policy: excluded
    credit_tiers:
      - {below: 99.9, credit_pct: 10}
      - {below: 99.0, credit_pct: 25}
      - {below: 95.0, credit_pct: 100}
    monthly_fee: 1500.00
    maintenance_notice: 5d
    maintenance_windows:
      - change_id: CHG-1
        start: "2026-11-08T23:00:00+01:00"
        end: "2026-11-09T01:00:00+01:00"
        announced_at: "2026-11-01T09:00:00+01:00"
    standing_windows:
      - {days: [sun], start: "02:00", duration: 3h}
cost:
  cloud: acme_aws
  tag_keys: [customer, requested_by]
  focus_export: {cloud: acme_aws, bucket: acme-billing, prefix: focus/acme}
reports:
  recipients: [cfo@acme.example]
  smtp_notification: mail
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "acme.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def messages(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        load_catalog_file(write(tmp_path, text))
    return [str(issue) for issue in caught.value.issues]


def test_an_slo_loads_with_its_objectives_windows_and_tiers(tmp_path: Path) -> None:
    catalog = load_catalog_file(write(tmp_path, ESTATE))
    (slo,) = catalog.slos
    assert [target.key for target in slo.targets] == ["database:shop", "host:web-1", "endpoint:storefront"]
    assert slo.budgeting_method == "Timeslices"
    assert slo.time_window.duration == "1M"
    assert slo.time_window.calendar.time_zone is None  # the estate's
    assert slo.objective("internal").target_percent == 99.95
    assert slo.objective("sla").target_percent == 99.9
    assert slo.objective("sla").time_slice_window == "1m"
    assert [(tier.below, tier.credit_pct) for tier in slo.credit_tiers] == [
        (99.9, 10),
        (99.0, 25),
        (95.0, 100),
    ]
    assert slo.monthly_fee == Decimal("1500.00")
    assert slo.maintenance_notice == timedelta(days=5)
    (window,) = slo.maintenance_windows
    assert window.start == datetime(2026, 11, 8, 22, 0, tzinfo=UTC)
    assert window.end == datetime(2026, 11, 9, 0, 0, tzinfo=UTC)
    assert slo.standing_windows[0].duration == timedelta(hours=3)
    assert catalog.endpoints[0].expect_status == [200, 204]
    assert catalog.endpoints[1].http_conn_id == "acme_api"
    assert catalog.cost is not None
    assert catalog.cost.metric == "NetUnblendedCost"
    assert catalog.cost.tag_keys == ["customer", "requested_by"]
    assert catalog.reports is not None
    assert catalog.reports.recipients == ["cfo@acme.example"]


def test_sandbox_slos_load(project_root: Path) -> None:
    catalog = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    assert {slo.name for slo in catalog.slos} == {
        "orders_availability",
        "web_availability",
        "web_health_availability",
    }


def test_an_slo_naming_an_unknown_target_is_refused_at_the_name(tmp_path: Path) -> None:
    (message,) = messages(
        tmp_path, ESTATE.replace("{kind: endpoint, name: storefront}", "{kind: endpoint, name: storefrnt}")
    )
    assert "acme.yaml:" in message
    assert "slos[0].targets[2].name: unknown endpoint 'storefrnt' (did you mean 'storefront'?)" in message


def test_an_slo_naming_a_host_that_no_fleet_has_is_refused(tmp_path: Path) -> None:
    (message,) = messages(tmp_path, ESTATE.replace("{kind: host, name: web-1}", "{kind: host, name: db-9}"))
    assert "slos[0].targets[1].name: unknown host 'db-9'" in message


def test_a_window_ending_before_it_starts_is_refused_at_its_end(tmp_path: Path) -> None:
    text = ESTATE.replace('end: "2026-11-09T01:00:00+01:00"', 'end: "2026-11-08T22:00:00+01:00"')
    (message,) = messages(tmp_path, text)
    assert "slos[0].maintenance_windows[0].end: end 2026-11-08T22:00:00+01:00 is not after start" in message


def test_a_window_without_utc_offset_is_refused(tmp_path: Path) -> None:
    text = ESTATE.replace('start: "2026-11-08T23:00:00+01:00"', 'start: "2026-11-08T23:00:00"')
    (message,) = messages(tmp_path, text)
    assert "slos[0].maintenance_windows[0].start:" in message
    assert "timezone" in message


@pytest.mark.parametrize(
    ("tiers", "expected"),
    [
        (
            "[{below: 99.9, credit_pct: 10}, {below: 99.9, credit_pct: 25}]",
            "credit_tiers[1] (below 99.9) overlaps credit_tiers[0] (below 99.9)",
        ),
        (
            "[{below: 99.9, at_least: 98.0, credit_pct: 10}, {below: 99.0, credit_pct: 25}]",
            "credit_tiers[0] (from 98.0 below 99.9) overlaps credit_tiers[1] (below 99.0)",
        ),
        (
            "[{below: 99.0, credit_pct: 25}, {below: 99.9, credit_pct: 10}]",
            "credit_tiers[1] (below 99.9) overlaps credit_tiers[0] (below 99.0)",
        ),
        (
            "[{below: 99.9, at_least: 99.5, credit_pct: 10}, {below: 99.0, credit_pct: 25}]",
            "availability in between would earn no credit",
        ),
        ("[{below: 99.9, credit_pct: 25}, {below: 99.0, credit_pct: 10}]", "gives 10.0% for a worse month"),
        ("[{below: 99.99, credit_pct: 10}]", "above the SLA target 99.9"),
    ],
)
def test_bad_credit_tiers_are_refused_naming_the_field(tmp_path: Path, tiers: str, expected: str) -> None:
    start = ESTATE.index("    credit_tiers:")
    end = ESTATE.index("    monthly_fee:")
    text = ESTATE[:start] + f"    credit_tiers: {tiers}\n" + ESTATE[end:]
    (message,) = messages(tmp_path, text)
    assert "slos[0].credit_tiers:" in message
    assert expected in message


def test_objectives_need_internal_and_sla_with_internal_not_below(tmp_path: Path) -> None:
    (message,) = messages(
        tmp_path,
        ESTATE.replace("{role: internal, target_percent: 99.95}", "{role: sla, target_percent: 99.95}"),
    )
    assert "slos[0].objectives: needs one objective of role internal and one of role sla" in message
    (message,) = messages(
        tmp_path,
        ESTATE.replace("{role: internal, target_percent: 99.95}", "{role: internal, target_percent: 99.5}"),
    )
    assert "the internal objective 99.5 is below the SLA target 99.9" in message


def test_no_data_policy_is_required_and_spelt_out(tmp_path: Path) -> None:
    (message,) = messages(tmp_path, ESTATE.replace("no_data_policy: excluded", "no_data_policy: exclude"))
    assert "slos[0].no_data_policy:" in message
    assert "did you mean 'excluded'?" in message
    (message,) = messages(tmp_path, ESTATE.replace("    no_data_policy: excluded\n", ""))
    assert "slos[0].no_data_policy: required field is missing" in message


def test_endpoint_url_with_credentials_or_both_sources_is_refused(tmp_path: Path) -> None:
    (message,) = messages(
        tmp_path, ESTATE.replace("https://shop.example/health", "https://me@shop.example/health")
    )
    assert "endpoints[0].url:" in message
    (message,) = messages(
        tmp_path,
        ESTATE.replace(
            "{name: api, http_conn_id: acme_api,", "{name: api, url: 'http://x', http_conn_id: acme_api,"
        ),
    )
    assert "endpoints[1]: set exactly one of url and http_conn_id" in message


def test_cost_and_report_references_are_checked(tmp_path: Path) -> None:
    text = ESTATE.replace("  cloud: acme_aws\n  tag_keys", "  cloud: acme_awz\n  tag_keys").replace(
        "smtp_notification: mail", "smtp_notification: mial"
    )
    found = messages(tmp_path, text)
    assert any("cost.cloud: unknown cloud 'acme_awz' (did you mean 'acme_aws'?)" in m for m in found)
    assert any(
        "reports.smtp_notification: unknown notification 'mial' (did you mean 'mail'?)" in m for m in found
    )


def test_an_slo_listing_a_target_twice_is_refused(tmp_path: Path) -> None:
    text = ESTATE.replace("      - {kind: host, name: web-1}\n", "      - {kind: host, name: web-1}\n" * 2)
    (message,) = messages(tmp_path, text)
    assert "slos[0].targets[2]: target host:web-1 is listed twice" in message
