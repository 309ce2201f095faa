"""The failover drill runbook's pure parts: the catalog mapped onto the library's targets and guards,
the new preflight guards (catalog topology, running work, the probe's reach), the abort paths named
from a record, the fact, the S3 key, the estate lease (a drill started twice), the pools, and the
manager lookup refusing a manager that is not available yet."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudops.catalog import load_catalog_file
from cloudops.engines.replication import Downstream, MemberState, assemble_topology
from cloudops.failover import lease
from cloudops.failover.guards import activity_guard, catalog_topology_guard, probe_guard
from cloudops.failover.registry import MANAGER_BUILDERS, ManagerNotAvailable, manager_available, manager_for
from cloudops.runbooks import failover_drill as runbook

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def catalog(project_root: Path) -> Any:
    return load_catalog_file(project_root / "runbooks" / "sandbox.yaml")


def _primary(name: str = "a", address: str = "127.0.0.1:15432") -> MemberState:
    return MemberState(
        name,
        address,
        True,
        "primary",
        timeline=1,
        downstream=(Downstream("b", "127.0.0.1", "streaming", "async", 0),),
    )


def _replica(name: str = "b", address: str = "127.0.0.1:15433", *, reachable: bool = True) -> MemberState:
    if not reachable:
        return MemberState(name, address, False, error="connection refused")
    return MemberState(name, address, True, "replica", upstream="127.0.0.1:15432", streaming=True, timeline=1)


# -- the catalog mapped onto the library -------------------------------------------------------------


def test_sandbox_cluster_maps_onto_targets_guards_and_options(catalog: Any) -> None:
    cluster = runbook.cluster_of(catalog, "orders_pg_cluster")
    settings = runbook.settings_of(catalog, cluster)
    assert settings.targets.max_write_downtime_s == 1
    assert settings.targets.max_acked_writes_lost == 0
    assert settings.targets.max_drill_s == 60
    assert settings.guards.max_lag_bytes == 1048576
    assert settings.guards.max_lag_s == 5
    assert settings.guards.min_interval == timedelta(minutes=1)
    assert settings.guards.modes_allowed == frozenset({"planned", "crash"})
    assert settings.guards.window is None
    assert settings.options.fail_back is True
    assert settings.options.probe_interval_s == pytest.approx(0.015)
    assert settings.expected_members == {"orders_pg": None, "orders_pg_replica": None}


def _with_window(cluster: Any, window: dict[str, Any]) -> Any:
    body = cluster.model_dump()
    body["drill"]["guards"]["window"] = window
    return type(cluster).model_validate(body)


def test_a_window_maps_to_days_start_and_end_in_the_estate_time_zone(catalog: Any) -> None:
    cluster = runbook.cluster_of(catalog, "orders_pg_cluster")
    windowed = _with_window(cluster, {"days": ["sun"], "start": "23:00", "duration": "2h"})
    window = runbook.policy_window(windowed, "Europe/Paris")
    assert window.days == frozenset({6})
    assert (window.start, window.end) == (time(23, 0), time(1, 0))
    assert window.timezone == "Europe/Paris"
    # Sunday 23:30 in Paris is inside; Monday 00:30 too (past midnight); Monday 01:30 is not.
    paris = datetime(2026, 12, 6, 22, 30, tzinfo=UTC)  # Sun 23:30 CET
    assert window.contains(paris)
    assert window.contains(paris + timedelta(hours=1))
    assert not window.contains(paris + timedelta(hours=2))


def test_a_whole_day_every_day_is_no_window(catalog: Any) -> None:
    cluster = runbook.cluster_of(catalog, "orders_pg_cluster")
    every_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    assert (
        runbook.policy_window(
            _with_window(cluster, {"days": every_day, "start": "00:00", "duration": "24h"}), "UTC"
        )
        is None
    )


def test_unknown_cluster_and_cluster_without_policy_are_refused_by_name(catalog: Any) -> None:
    with pytest.raises(Exception, match=r"estate sandbox has no cluster 'orders_pg_clustr' \(did you mean"):
        runbook.cluster_of(catalog, "orders_pg_clustr")
    bare = catalog.model_copy(
        update={"clusters": [catalog.clusters[0].model_copy(update={"drill": None}), *catalog.clusters[1:]]}
    )
    with pytest.raises(Exception, match="cluster 'orders_pg_cluster' has no drill policy"):
        runbook.cluster_of(bare, "orders_pg_cluster")


def test_record_goes_beside_the_member_databases_backups(catalog: Any) -> None:
    cluster = runbook.cluster_of(catalog, "orders_pg_cluster")
    where = runbook.record_location(catalog, cluster)
    assert where is not None
    repository, aws_conn_id = where
    assert (repository.name, aws_conn_id) == ("sandbox_backups", "sandbox_aws")
    key = runbook.record_key(repository, "sandbox", cluster.name, "manual__2026-12-03T07:03:31+00:00")
    assert key == "backups/sandbox/_failover_drills/orders_pg_cluster/manual__2026-12-03T07_03_31+00_00.json"
    # Patroni's members are no catalog databases: the estate's only repository holds its record.
    patroni = runbook.cluster_of(catalog, "ledger_patroni")
    assert runbook.record_location(catalog, patroni) == where


def test_pools_one_slot_per_estate_with_drills(catalog: Any, project_root: Path) -> None:
    from cloudops.catalog import load_catalogs

    pools = runbook.required_pools(load_catalogs([project_root / "runbooks"]).catalogs)
    assert pools == {
        "failover_drills__sandbox": {
            "slots": 1,
            "description": "one failover drill at a time in estate sandbox",
            "include_deferred": False,
        }
    }


# -- guards ------------------------------------------------------------------------------------------


def test_catalog_topology_guard_names_down_moved_and_unexpected_members() -> None:
    whole = assemble_topology("orders", [_primary(), _replica()])
    assert catalog_topology_guard(whole, {"a": "127.0.0.1:15432", "b": None}).passed
    down = assemble_topology("orders", [_primary(), _replica(reachable=False)])
    decision = catalog_topology_guard(down, {"a": None, "b": None})
    assert not decision.passed
    assert "orders: topology does not match the catalog: b (127.0.0.1:15433) is down: connection refused" in (
        decision.reason
    )
    moved = catalog_topology_guard(whole, {"a": "10.0.0.1:5432", "b": None, "c": None})
    assert not moved.passed
    assert "a answers at 127.0.0.1:15432, the catalog says 10.0.0.1:5432" in moved.reason
    assert "c is in the catalog but was not asked" in moved.reason
    two = assemble_topology("orders", [_primary(), _primary("b", "127.0.0.1:15433")])
    assert (
        "2 members take writes (a, b); exactly one must"
        in catalog_topology_guard(two, {"a": None, "b": None}).reason
    )


def test_running_work_guard_refuses_a_backup_and_says_when_not_checked() -> None:
    busy = activity_guard(
        "orders", "a", ["a: pid 42 pg_dump (client backend) as cloudops running for 12 s"], longer_than_s=60
    )
    assert not busy.passed
    assert busy.reason == (
        "orders: a is busy: a: pid 42 pg_dump (client backend) as cloudops running for 12 s "
        "(bound 60 s for transactions)"
    )
    assert activity_guard("orders", "a", [], longer_than_s=60).passed
    unknown = activity_guard("orders", "a", None, longer_than_s=60)
    assert unknown.passed
    assert "not reported by this manager: not checked" in unknown.reason
    failed = activity_guard("orders", "a", None, longer_than_s=60, error="permission denied")
    assert not failed.passed
    assert failed.reason == "orders: running work on a could not be read: permission denied"


def test_probe_guard_refuses_a_connection_that_misses_the_primary() -> None:
    primary = _primary()
    assert probe_guard("orders", primary, "127.0.0.1:15432", None).passed
    wrong = probe_guard("orders", primary, "127.0.0.1:15433", None)
    assert not wrong.passed
    assert "reaches 127.0.0.1:15433, not the primary a (127.0.0.1:15432)" in wrong.reason
    none = probe_guard("orders", primary, None, "connection refused")
    assert none.reason == "orders: the probe's connection reaches no writer: connection refused"


# -- abort paths and the fact ------------------------------------------------------------------------


def _record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cluster": "orders",
        "run_id": "r1",
        "manager": "native-pg",
        "mode": "planned",
        "verdict": "PASS",
        "aborted": None,
        "degraded_redundancy": None,
        "server_evidence": {"fail_back": "done"},
        "analysis": {"write_downtime_s": 0.2, "acked_writes_lost": 0, "in_doubt": 1, "acked": 300},
        "drill_seconds": 4.1,
        "pre_state": {"primary": "a", "lag_bytes": 0, "lag_seconds": 0.0},
        "verdicts": [
            {"target": "write_downtime_s", "status": "PASS", "measured": 0.2, "limit": 1.0, "reason": "x"}
        ],
        "refused": False,
        "moved": True,
        "final_primary": "a",
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("changes", "path", "page"),
    [
        ({}, None, False),
        (
            {"aborted": "switchover: b did not replay past a's shutdown checkpoint", "verdict": "ABORTED"},
            "catch-up timeout",
            False,
        ),
        (
            {"aborted": "after the switchover: two writers after the switchover (a, b): fenced a"},
            "two writers",
            True,
        ),
        (
            {
                "server_evidence": {
                    "fail_back": "skipped: write downtime 9.000 s is over 2x the target 1 s; page"
                }
            },
            "downtime over budget",
            True,
        ),
        ({"degraded_redundancy": "switchover: pg_rewind of a from b failed"}, "rejoin impossible", True),
        (
            {"aborted": "lag re-check before the action: orders: b is 5 MB behind"},
            "lag at the re-check",
            False,
        ),
        (
            {"aborted": "switchover failed: promoting b failed and it is now unknown; a is stopped"},
            "switchover failed",
            True,
        ),
    ],
)
def test_abort_paths_are_named_and_the_ones_needing_a_person_page(
    changes: dict[str, Any], path: str | None, page: bool
) -> None:
    judged = runbook.judge(_record(**changes))
    assert judged["abort_path"] == path
    assert judged["page"] is page
    if path:
        assert f"abort path: {path}" in judged["summary"]


def test_judgement_of_a_refusal_and_a_dry_run() -> None:
    refused = runbook.judge(_record(refused=True, refusal="orders: drill refused: orders: b is down"))
    assert refused["verdict"] == "REFUSED"
    assert (
        refused["summary"] == "orders: refused, nothing was moved: orders: drill refused: orders: b is down"
    )
    assert runbook.judge({"cluster": "orders"}, dry_run=True)["verdict"] == "DRY RUN"
    # A dry run whose guards refused ends the run failed, saying what a drill would meet.
    would = runbook.judge(
        {"cluster": "orders", "refused": True, "refusal": "orders: b is down"}, dry_run=True
    )
    assert would["verdict"] == "REFUSED"
    assert would["summary"] == "orders: dry run: a drill would be refused: orders: b is down"
    assert runbook.record_is_dry_run(would)


def test_fact_says_where_the_primary_ended_and_holds_the_figures() -> None:
    record = _record(
        final_primary="b", server_evidence={"fail_back": "not done: policy keeps the new primary"}
    )
    fact = runbook.fact_of(
        record, runbook.judge(record), dry_run=False, stored={"key": "s3://b/k", "sha256": "ab"}
    )
    assert (fact["original_primary"], fact["new_primary"], fact["failed_back"]) == ("a", "b", False)
    assert fact["figures"]["write_downtime_s"] == 0.2
    assert fact["figures"]["acked_writes_lost"] == 0
    assert fact["figures"]["drill_seconds"] == 4.1
    assert (fact["record_key"], fact["record_sha256"]) == ("s3://b/k", "ab")
    assert (
        runbook.fact_of(_record(), runbook.judge(_record()), dry_run=False, stored={})["failed_back"] is True
    )


def test_alert_pages_on_two_writers_and_masks_secrets() -> None:
    record = _record(aborted="after the switchover: two writers (a, b): fenced a password=hunter22")
    alert = runbook.alert_of("sandbox", runbook.judge(record), "r1", {"key": None, "sha256": "ab"})
    assert alert.subject == "[cloudops][sandbox] PAGE failover drill PASS (orders)"
    assert "A person must act now (two writers)" in alert.body
    assert "hunter22" not in alert.body


# -- the lease (a drill started twice) -----------------------------------------------------------------


def test_second_drill_of_an_estate_is_refused_naming_cluster_and_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(lease.STATE_DIR_ENV, str(tmp_path))
    lease.acquire("sandbox", "orders_pg_cluster", "run-1")
    lease.acquire("sandbox", "orders_pg_cluster", "run-1")  # the same run again: a retried task
    with pytest.raises(lease.DrillAlreadyRunning) as refused:
        lease.acquire("sandbox", "ledger_patroni", "run-2")
    message = str(refused.value)
    assert message.startswith(
        "cluster ledger_patroni: refused, nothing was moved: a failover drill of estate "
    )
    assert "already running on cluster orders_pg_cluster (run run-1, since 20" in message
    assert str(tmp_path / "sandbox.lease") in message
    assert not lease.release("sandbox", "run-2")
    assert lease.release("sandbox", "run-1")
    lease.acquire("sandbox", "ledger_patroni", "run-2")
    assert lease.holder("sandbox") == {
        "cluster": "ledger_patroni",
        "run_id": "run-2",
        "since": lease.holder("sandbox")["since"],
    }  # type: ignore[index]


# -- the manager lookup ------------------------------------------------------------------------------


def test_every_catalog_manager_has_an_entry_and_native_pg_is_available() -> None:
    from cloudops.catalog.models import CLUSTER_MANAGERS

    assert set(MANAGER_BUILDERS) == set(CLUSTER_MANAGERS)
    assert manager_available("native-pg") == (
        True,
        "'native-pg' is driven by cloudops.failover.native_pg:build_manager",
    )


def test_a_manager_not_available_is_refused_naming_cluster_and_manager(
    catalog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(MANAGER_BUILDERS, "patroni", None)
    with pytest.raises(ManagerNotAvailable) as refused:
        manager_for(runbook.cluster_of(catalog, "ledger_patroni"), catalog, used_by="test")
    assert str(refused.value).startswith(
        "cluster ledger_patroni: manager 'patroni' is not available: no switchover manager for 'patroni' is "
        "registered in cloudops.failover.registry yet (available: native-pg"
    )
    assert str(refused.value).endswith("; nothing was read or moved")
    monkeypatch.setitem(MANAGER_BUILDERS, "patroni", "cloudops.failover.not_written_yet:build_manager")
    assert manager_available("patroni") == (
        False,
        "the switchover manager for 'patroni' (cloudops.failover.not_written_yet) is not installed yet",
    )


# -- approval for production clusters ----------------------------------------------------------------


class _Ti:
    """The task instance's one call the approval makes: the preflight's result."""

    def __init__(self, planned: dict[str, Any]) -> None:
        self.planned = planned

    def xcom_pull(self, task_ids: str) -> dict[str, Any]:
        assert task_ids == "preflight"
        return self.planned


def test_a_production_cluster_waits_for_a_second_person_and_a_dry_run_does_not(
    tmp_path: Path, project_root: Path
) -> None:
    import yaml

    document = yaml.safe_load((project_root / "runbooks" / "sandbox.yaml").read_text())
    for cluster in document["clusters"]:
        if cluster["name"] == "orders_pg_cluster":
            cluster["production"] = True
            cluster["drill"]["modes"] = ["planned"]  # crash in production needs crash_in_production
    path = tmp_path / "sandbox.yaml"
    path.write_text(yaml.safe_dump(document))
    params = {"_catalog_file": str(path), "_estate": "sandbox", "_cluster": "orders_pg_cluster"}
    planned = {"dry_run": False, "plan": "orders_pg_cluster (native-pg): planned switchover orders_pg -> b"}
    body = runbook._approval_body({"params": params, "ti": _Ti(planned), "run_id": "manual__1"})
    assert body is not None
    assert body.startswith(
        "Failover drill of production cluster `orders_pg_cluster` (estate sandbox, manager native-pg)"
    )
    assert "planned switchover orders_pg -> b" in body
    dry = {"params": params, "ti": _Ti({**planned, "dry_run": True}), "run_id": "manual__2"}
    assert runbook._approval_body(dry) is None
    sandbox = {**params, "_catalog_file": str(project_root / "runbooks" / "sandbox.yaml")}
    assert runbook._approval_body({"params": sandbox, "ti": _Ti(planned), "run_id": "manual__3"}) is None
