"""Health assessment: what counts as down or degraded, and how the summary names it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cloudops.catalog.models import Catalog
from cloudops.engines import DatabaseState
from cloudops.fleet.health import HostState, host_state, parse_df, parse_uptime
from cloudops.fleet.ssh import CommandResult
from cloudops.health import DEGRADED, DOWN, ERROR, OK, Finding, HealthReport, assess_database, assess_host

pytestmark = pytest.mark.unit

CATALOG = Catalog.model_validate(
    {
        "estate": "acme",
        "owner": "ops",
        "databases": [
            {"name": "shop", "engine": "postgres", "conn_id": "a", "database": "s", "cluster": "c"},
            {
                "name": "shop_replica",
                "engine": "postgres",
                "conn_id": "b",
                "database": "s",
                "cluster": "c",
                "role": "replica",
                "max_replication_lag": "1m",
            },
        ],
        "fleets": [{"name": "web", "os_family": "debian", "hosts": [{"name": "web-1", "ssh_conn_id": "w"}]}],
    }
)
PRIMARY, REPLICA = CATALOG.databases
FLEET = CATALOG.fleets[0]
HOST = FLEET.hosts[0]


def test_healthy_primary_with_streaming_replica() -> None:
    finding = assess_database(PRIMARY, DatabaseState(True, "primary", "15.1", replicas_connected=1), CATALOG)
    assert finding == Finding("database shop", OK, "primary, postgres 15.1, 1 replica(s) streaming")


def test_unreachable_database_is_down_with_the_driver_error() -> None:
    finding = assess_database(PRIMARY, DatabaseState(False, error="connection refused"), CATALOG)
    assert (finding.status, finding.problem) == (DOWN, "unreachable: connection refused")


def test_primary_without_its_replica_is_degraded() -> None:
    finding = assess_database(PRIMARY, DatabaseState(True, "primary", "15", replicas_connected=0), CATALOG)
    assert finding.status == DEGRADED
    assert finding.problem == "no replica is streaming (expected shop_replica)"


def test_role_mismatch_points_at_a_failover() -> None:
    finding = assess_database(PRIMARY, DatabaseState(True, "replica", "15", 0.0, True), CATALOG)
    assert finding.status == DEGRADED
    assert "the catalog says primary but the server is a replica" in (finding.problem or "")


@pytest.mark.parametrize(
    ("lag", "streaming", "status", "problem"),
    [
        (0.0, True, OK, None),
        (59.0, True, OK, None),
        (61.0, True, DEGRADED, "replication lag 61s exceeds 60s"),
        (0.0, False, DEGRADED, "replica is not streaming from its primary"),
        (None, True, DEGRADED, "replication lag unknown exceeds 60s"),
    ],
)
def test_replica_lag_against_policy(
    lag: float | None, streaming: bool, status: str, problem: str | None
) -> None:
    finding = assess_database(REPLICA, DatabaseState(True, "replica", "15", lag, streaming), CATALOG)
    assert (finding.status, finding.problem) == (status, problem)


def test_host_disk_over_limit_is_degraded() -> None:
    state = HostState(True, 86400.0 * 3, {"/": 95, "/boot": 20})
    finding = assess_host(FLEET, HOST, state)
    assert finding.status == DEGRADED
    assert finding.problem == "disk use over 90%: / 95%"
    assert finding.detail == "up 3.0d, fullest disk / 95%"


def test_unreachable_host_is_down() -> None:
    finding = assess_host(FLEET, HOST, HostState(False, error="host key does not match"))
    assert (finding.status, finding.problem) == (DOWN, "unreachable over SSH: host key does not match")


DF = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/vda 264212084 37215216 69175696 35% /\n"


def test_a_host_whose_df_failed_is_degraded_not_healthy() -> None:
    # What a host printed when df found no filesystem to report (seen on a sandbox host).
    state = host_state(CommandResult(1, "978.28 457.20\n", "df: no file systems processed\n"))
    assert state.reachable
    assert state.uptime_seconds == 978.28
    finding = assess_host(FLEET, HOST, state)
    assert finding.status == DEGRADED
    assert finding.problem == "disk use unknown: df exited 1: df: no file systems processed"


def test_a_host_listing_no_filesystem_is_degraded() -> None:
    finding = assess_host(FLEET, HOST, host_state(CommandResult(0, "978.28 457.20\n", "")))
    assert finding.status == DEGRADED
    assert finding.problem == "disk use unknown: df listed no filesystem"


def test_partial_df_output_with_an_error_is_still_degraded() -> None:
    state = host_state(CommandResult(1, "978.28 457.20\n" + DF, "df: /data: Input/output error\n"))
    assert state.disk_used_percent == {"/": 35}
    finding = assess_host(FLEET, HOST, state)
    assert finding.status == DEGRADED
    assert "df exited 1: df: /data: Input/output error" in (finding.problem or "")


def test_a_healthy_host_state_from_the_command() -> None:
    finding = assess_host(FLEET, HOST, host_state(CommandResult(0, "978.28 457.20\n" + DF, "")))
    assert finding.status == OK
    assert finding.detail == "up 0.0d, fullest disk / 35%"


def test_no_uptime_means_the_command_failed() -> None:
    state = host_state(CommandResult(127, "", "cat: /proc/uptime: No such file or directory\n"))
    assert not state.reachable
    assert state.error == "health command exited 127: cat: /proc/uptime: No such file or directory"


def test_report_summary_names_every_unhealthy_target() -> None:
    report = HealthReport(
        "acme",
        [
            Finding("database shop", OK, "primary"),
            Finding("host web-1", DOWN, "unreachable", "unreachable over SSH: timed out"),
            Finding("database x", ERROR, "not checked", "connection 'x' does not exist"),
        ],
    )
    assert not report.healthy
    assert report.summary() == (
        "estate acme: 2 of 3 targets unhealthy\n"
        "- host web-1 is down: unreachable over SSH: timed out\n"
        "- database x is error: connection 'x' does not exist"
    )
    assert report.table().splitlines()[0].split() == ["target", "status", "detail"]


def test_parse_uptime_and_df() -> None:
    assert parse_uptime("350735.47 234388.90\n") == 350735.47
    df = (
        "Filesystem     1024-blocks      Used Available Capacity Mounted on\n"
        "/dev/vda        263174212  24000000 239174212      10% /\n"
        "/dev/vdb           1000       930        70      93% /var/lib/my data\n"
    )
    assert parse_df(df) == {"/": 10, "/var/lib/my data": 93}


def test_duration_round_trip() -> None:
    assert REPLICA.max_replication_lag == timedelta(minutes=1)
    assert REPLICA.model_dump(mode="json")["max_replication_lag"] == "1m"
