"""Health assessment: what counts as down or degraded, and how the summary names it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloudops.catalog.models import Catalog
from cloudops.engines import DatabaseState
from cloudops.fleet.health import HostState, host_state, parse_df, parse_uptime
from cloudops.fleet.ssh import CommandResult
from cloudops.health import (
    DEGRADED,
    DOWN,
    ERROR,
    OK,
    WARNING,
    Finding,
    HealthReport,
    RunbookExpectation,
    RunbookState,
    assess_database,
    assess_host,
    assess_runbook,
    expected_runbooks,
    runbook_state_unknown,
)

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


def test_parse_typed_df_keeps_an_overlay_root_and_drops_container_layers() -> None:
    # HEALTH_COMMAND's columns: a sandbox host (or a container) whose / is an overlay, plus a docker layer.
    df = (
        "Filesystem     Type    1K-blocks     Used Use% Mounted on\n"
        "overlay        overlay 264212084 29896900  29% /\n"
        "/dev/vda       ext4    264212084 29896900  29% /run/sandbox-ctl\n"
        "overlay        overlay 264212084 29896900  29% /var/lib/docker/overlay2/abc/merged\n"
    )
    assert parse_df(df) == {"/": 29, "/run/sandbox-ctl": 29}


def test_duration_round_trip() -> None:
    assert REPLICA.max_replication_lag == timedelta(minutes=1)
    assert REPLICA.model_dump(mode="json")["max_replication_lag"] == "1m"


# -- runbook DAGs: missing, paused, stale -----------------------------------------------------------
NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
BACKUP = RunbookExpectation("backup__shop", "database shop", "0 2 * * *", "Europe/Paris", timedelta(hours=2))
DRILL = RunbookExpectation(
    "restore_drill__shop",
    "database shop",
    None,
    "Europe/Paris",
    timedelta(hours=8),
    follows="backup__shop",
)


def active(dag_id: str, last_success: datetime | None, **changes: Any) -> RunbookState:
    return RunbookState(dag_id, exists=True, last_success=last_success, runs=True, **changes)


def test_the_catalog_names_every_scheduled_runbook() -> None:
    catalog = Catalog.model_validate(
        {
            "estate": "acme",
            "owner": "ops",
            "timezone": "Europe/Paris",
            "clouds": [{"name": "aws", "provider": "aws", "aws_conn_id": "aws", "region": "eu-west-1"}],
            "repositories": [{"name": "r", "cloud": "aws", "bucket": "acme-backups", "region": "eu-west-1"}],
            "databases": [
                {
                    "name": "shop",
                    "engine": "postgres",
                    "conn_id": "a",
                    "database": "s",
                    "backup": {"repository": "r", "retention": {"keep_last": 3}, "deadline": "3h"},
                    "drill": {"schedule": "on_backup", "paused": True},
                },
                {"name": "logs", "engine": "mariadb", "conn_id": "b", "database": "l"},
            ],
            "fleets": [
                {
                    "name": "web",
                    "os_family": "debian",
                    "hosts": [{"name": "web-1", "ssh_conn_id": "w"}],
                    "snapshots": {"cloud": "aws", "schedule": "@weekly", "retention": {"keep_last": 2}},
                }
            ],
        }
    )
    assert expected_runbooks(catalog) == [
        RunbookExpectation("backup__shop", "database shop", "@daily", "Europe/Paris", timedelta(hours=3)),
        RunbookExpectation(
            "restore_drill__shop",
            "database shop",
            None,
            "Europe/Paris",
            timedelta(hours=8),
            follows="backup__shop",
            paused_by_catalog=True,
        ),
        RunbookExpectation("ebs_snapshot__web", "fleet web", "@weekly", "Europe/Paris", timedelta(hours=3)),
    ]


def test_a_missing_runbook_is_down() -> None:
    finding = assess_runbook(BACKUP, RunbookState("backup__shop", exists=False), {}, now=NOW)
    assert finding.status == DOWN
    assert finding.problem is not None
    assert finding.problem.startswith("Airflow has no DAG backup__shop for database shop: nothing of it runs")


def test_a_paused_backup_is_an_outage_of_the_backup() -> None:
    state = active("backup__shop", NOW - timedelta(hours=8), is_paused=True)
    finding = assess_runbook(BACKUP, state, {}, now=NOW)
    assert finding.status == DEGRADED
    assert finding.detail == "paused"
    assert "paused in Airflow: it does not run for database shop" in (finding.problem or "")


def test_a_runbook_the_catalog_pauses_is_a_warning_either_way() -> None:
    paused = RunbookExpectation(**{**BACKUP.__dict__, "paused_by_catalog": True})
    assert assess_runbook(paused, active("backup__shop", None, is_paused=True), {}, now=NOW).status == WARNING
    still_active = assess_runbook(paused, active("backup__shop", None), {}, now=NOW)
    assert still_active.status == WARNING
    assert "pause it in the UI" in (still_active.problem or "")


def test_a_backup_is_stale_once_its_scheduled_run_is_past_the_deadline() -> None:
    # 02:00 Paris is 01:00 UTC in winter; with a 2 h deadline, at 10:00 UTC today's run is due.
    stale = assess_runbook(
        BACKUP, active("backup__shop", datetime(2026, 11, 29, 1, 40, tzinfo=UTC)), {}, now=NOW
    )
    assert stale.status == DEGRADED
    assert stale.problem == (
        "last success 2026-11-29T01:40Z, but a run was due at 2026-11-30T01:00Z "
        "(schedule '0 2 * * *' Europe/Paris, within 2h): find out why it did not run or failed"
    )
    fresh = active("backup__shop", datetime(2026, 11, 30, 1, 40, tzinfo=UTC))
    assert assess_runbook(BACKUP, fresh, {}, now=NOW).status == OK
    # At 02:30 UTC today's run may still be going: yesterday's success is enough.
    early = datetime(2026, 11, 30, 2, 30, tzinfo=UTC)
    yesterday = active("backup__shop", datetime(2026, 11, 29, 1, 40, tzinfo=UTC))
    assert assess_runbook(BACKUP, yesterday, {}, now=early).status == OK


def test_a_new_runbook_with_no_run_yet_is_not_stale() -> None:
    new = RunbookState("backup__shop", exists=True, next_run=datetime(2026, 11, 30, 1, 0, tzinfo=UTC))
    finding = assess_runbook(BACKUP, new, {}, now=NOW)
    assert finding.status == OK
    assert finding.detail == "active, no run yet (next due 2026-11-30T01:00Z)"
    # Its first run, still going within the deadline, is not late either; past it, it is.
    going = RunbookState("backup__shop", exists=True, runs=True, running_since=NOW - timedelta(minutes=5))
    assert assess_runbook(BACKUP, going, {}, now=NOW).status == OK
    stuck = RunbookState("backup__shop", exists=True, runs=True, running_since=NOW - timedelta(hours=3))
    assert assess_runbook(BACKUP, stuck, {}, now=NOW).status == DEGRADED
    # Runs that all failed: never succeeded, and late.
    failed = RunbookState("backup__shop", exists=True, runs=True)
    assert assess_runbook(BACKUP, failed, {}, now=NOW).detail == "active, never succeeded"


def test_an_on_backup_drill_must_follow_the_backups_last_success() -> None:
    backup_done = NOW - timedelta(hours=9)
    others = {"backup__shop": active("backup__shop", backup_done)}
    behind = assess_runbook(
        DRILL, active("restore_drill__shop", backup_done - timedelta(days=1)), others, now=NOW
    )
    assert behind.status == DEGRADED
    assert "after backup__shop succeeded, within 8h" in (behind.problem or "")
    after = active("restore_drill__shop", backup_done + timedelta(minutes=20))
    assert assess_runbook(DRILL, after, others, now=NOW).status == OK
    recent = {"backup__shop": active("backup__shop", NOW - timedelta(hours=1))}
    assert assess_runbook(DRILL, active("restore_drill__shop", None), recent, now=NOW).status == OK


def test_warnings_are_listed_but_do_not_fail_the_report() -> None:
    report = HealthReport(
        "acme",
        [
            Finding("database shop", OK, "primary"),
            runbook_state_unknown("acme", "connection 'cloudops_airflow_api' does not exist"),
        ],
    )
    assert report.healthy
    assert report.summary() == (
        "estate acme: all 1 targets healthy\n1 warning(s):\n"
        "- runbooks of estate acme: runbook state unknown: connection 'cloudops_airflow_api' does not exist"
    )
