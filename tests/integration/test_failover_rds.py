"""The RDS managers against the sandbox's moto, with the scripted stand-in in front of it
(``tests/integration/rds_standin.py``): moto takes the calls (``reboot_db_instance(ForceFailover=True)``,
``failover_db_cluster``) but emulates no failover, so the stand-in scripts what AWS does afterwards
(events, status, the zone or writer that moves) and the managers are shown to wait on it, bounded,
and to read completion, failure, abandonment and silence. The managers are built from a catalog through
the registry, as the runbook builds them.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudops.catalog.loader import load_catalog_file
from cloudops.engines.replication import SwitchoverAborted
from cloudops.errors import ReplicationError
from cloudops.failover.managers import ManagerSite, manager_for
from cloudops.failover.rds import RdsClusterManager, RdsMultiAzInstanceManager
from tests.integration.estates import admin_client
from tests.integration.rds_standin import (
    CLUSTER_COMPLETED,
    CLUSTER_FAILED,
    CLUSTER_STARTED,
    INSTANCE_ABANDONED,
    INSTANCE_COMPLETED,
    INSTANCE_STARTED,
    Script,
    ScriptedRds,
)

pytestmark = pytest.mark.integration

USED_BY = "rds failover test"


@pytest.fixture
def rds(sandbox_env: dict[str, str]) -> Iterator[tuple[Any, str, str]]:
    """A Multi-AZ instance and an Aurora cluster of two instances in moto, deleted afterwards."""
    client = admin_client("rds")
    suffix = uuid.uuid4().hex[:8]
    instance, cluster = f"fo-inst-{suffix}", f"fo-aurora-{suffix}"
    client.create_db_instance(
        DBInstanceIdentifier=instance,
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        MasterUsername="drill",
        MasterUserPassword="not-a-secret-1",
        AllocatedStorage=20,
        MultiAZ=True,
    )
    client.create_db_cluster(
        DBClusterIdentifier=cluster,
        Engine="aurora-postgresql",
        MasterUsername="drill",
        MasterUserPassword="x" * 12,
    )
    for member in ("a", "b"):
        client.create_db_instance(
            DBInstanceIdentifier=f"{cluster}-{member}",
            DBInstanceClass="db.r5.large",
            Engine="aurora-postgresql",
            DBClusterIdentifier=cluster,
        )
    try:
        yield client, instance, cluster
    finally:
        for member in ("a", "b"):
            client.delete_db_instance(DBInstanceIdentifier=f"{cluster}-{member}", SkipFinalSnapshot=True)
        client.delete_db_cluster(DBClusterIdentifier=cluster, SkipFinalSnapshot=True)
        client.delete_db_instance(DBInstanceIdentifier=instance, SkipFinalSnapshot=True)


def _catalog(tmp_path: Path, instance: str, cluster: str) -> Any:
    path = tmp_path / "rds.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            estate: rdsdrill
            owner: oncall
            clouds:
              - {{name: aws, provider: aws, aws_conn_id: sandbox_aws, region: eu-west-1}}
            databases:
              - {{name: orders, engine: postgres, conn_id: rds_orders, database: orders,
                 rds_instance_id: {instance}}}
            clusters:
              - name: orders_multi_az
                manager: rds-multi-az-instance
                members: [{{database: orders}}]
                probe: {{conn_id: rds_orders_probe, routing: endpoint}}
                rds: {{cloud: aws, db_instance_identifier: {instance}}}
              - name: ledger_aurora
                manager: aurora
                members:
                  - {{name: writer_a, conn_id: rds_a, rds_instance_id: {cluster}-a}}
                  - {{name: reader_b, conn_id: rds_b, rds_instance_id: {cluster}-b}}
                probe: {{conn_id: rds_ledger_probe, routing: endpoint}}
                rds: {{cloud: aws, db_cluster_identifier: {cluster}}}
            """
        )
    )
    return load_catalog_file(path)


def _instance_manager(tmp_path: Path, rds: tuple[Any, str, str], script: Script) -> RdsMultiAzInstanceManager:
    client, instance, cluster = rds
    catalog = _catalog(tmp_path, instance, cluster)
    found = manager_for(
        catalog,
        catalog.cluster("orders_multi_az"),
        used_by=USED_BY,
        site=ManagerSite(rds_api=ScriptedRds(client, script)),
    )
    assert isinstance(found, RdsMultiAzInstanceManager)
    return RdsMultiAzInstanceManager(
        found.cluster, found.instance_id, found.api, USED_BY, wait_timeout_s=5, poll_s=0.05
    )


def _cluster_manager(tmp_path: Path, rds: tuple[Any, str, str], script: Script) -> RdsClusterManager:
    client, instance, cluster = rds
    catalog = _catalog(tmp_path, instance, cluster)
    found = manager_for(
        catalog,
        catalog.cluster("ledger_aurora"),
        used_by=USED_BY,
        site=ManagerSite(rds_api=ScriptedRds(client, script), rds_lag_seconds=lambda _: 0.02),
    )
    assert isinstance(found, RdsClusterManager)
    return RdsClusterManager(
        found.cluster,
        found.cluster_id,
        found.members,
        found.api,
        USED_BY,
        kind="aurora",
        lag_seconds=found.lag_seconds,
        wait_timeout_s=5,
        poll_s=0.05,
    )


def test_a_forced_instance_failover_is_done_when_its_events_say_so_and_the_zone_moved(
    tmp_path: Path, rds: tuple[Any, str, str]
) -> None:
    manager = _instance_manager(
        tmp_path, rds, Script([(0.1, INSTANCE_STARTED), (0.4, INSTANCE_COMPLETED)], 0.4)
    )
    topology = manager.topology()
    _, instance, _ = rds
    assert topology.primary == f"{instance}@eu-west-1a"
    assert topology.replicas == (f"{instance}@eu-west-1b",)
    lag = manager.lag(topology.primary, topology.replicas[0])
    assert (lag.bytes, lag.seconds) == (0, 0.0)
    assert "synchronous" in lag.how
    result = manager.switchover(topology.primary, topology.replicas[0], catch_up_timeout_s=30)
    assert result.new_primary == f"{instance}@eu-west-1b"
    assert [s.name for s in result.steps] == ["request", "failover_events", "verify"]
    events = result.steps[1]
    assert events.detail == f"{INSTANCE_STARTED}; {INSTANCE_COMPLETED}"
    assert events.seconds >= 0.4  # it waited for the completion, not for the call
    assert manager.topology().primary == f"{instance}@eu-west-1b"
    assert manager.api.calls == [  # type: ignore[attr-defined]
        f"reboot_db_instance({{'DBInstanceIdentifier': '{instance}', 'ForceFailover': True}})"
    ]


def test_an_abandoned_failover_rds_event_0034_is_an_abort(tmp_path: Path, rds: tuple[Any, str, str]) -> None:
    manager = _instance_manager(tmp_path, rds, Script([(0.1, INSTANCE_ABANDONED)], None))
    topology = manager.topology()
    assert topology.primary is not None
    with pytest.raises(SwitchoverAborted, match="abandoned: Abandoning user requested failover") as raised:
        manager.switchover(topology.primary, topology.replicas[0], catch_up_timeout_s=30)
    assert raised.value.result.new_primary == topology.primary


def test_silence_is_an_abort_once_the_bound_is_reached(tmp_path: Path, rds: tuple[Any, str, str]) -> None:
    manager = _instance_manager(tmp_path, rds, Script([], None))
    manager = RdsMultiAzInstanceManager(manager.cluster, manager.instance_id, manager.api, USED_BY, 0.5, 0.05)
    topology = manager.topology()
    assert topology.primary is not None
    with pytest.raises(SwitchoverAborted, match="did not finish: no failover event yet"):
        manager.switchover(topology.primary, topology.replicas[0], catch_up_timeout_s=30)


def test_a_wrong_primary_is_refused_before_any_call(tmp_path: Path, rds: tuple[Any, str, str]) -> None:
    manager = _instance_manager(tmp_path, rds, Script([], None))
    with pytest.raises(ReplicationError, match="nothing was done"):
        manager.switchover("orders@eu-west-1c", "orders@eu-west-1a", catch_up_timeout_s=30)
    assert manager.api.calls == []  # type: ignore[attr-defined]


def test_an_aurora_failover_moves_the_writer_flag_after_rds_event_0071(
    tmp_path: Path, rds: tuple[Any, str, str]
) -> None:
    manager = _cluster_manager(tmp_path, rds, Script([(0.1, CLUSTER_STARTED), (0.5, CLUSTER_COMPLETED)], 0.5))
    topology = manager.topology()
    assert (topology.primary, topology.replicas) == ("writer_a", ("reader_b",))
    lag = manager.lag("writer_a", "reader_b")
    assert lag.seconds == 0.02
    assert "AuroraReplicaLag" in lag.how
    result = manager.switchover("writer_a", "reader_b", catch_up_timeout_s=30)
    _, _, cluster = rds
    assert result.steps[1].detail == (
        f"Started cross AZ failover to DB instance: {cluster}-b; "
        f"Completed failover to DB instance: {cluster}-b"
    )
    assert result.new_primary == "reader_b"
    after = manager.topology()
    assert (after.primary, after.replicas) == ("reader_b", ("writer_a",))
    assert after.healthy


def test_a_failed_aurora_failover_rds_event_0069_keeps_the_writer(
    tmp_path: Path, rds: tuple[Any, str, str]
) -> None:
    manager = _cluster_manager(tmp_path, rds, Script([(0.1, CLUSTER_STARTED), (0.3, CLUSTER_FAILED)], None))
    with pytest.raises(SwitchoverAborted, match="failed: Failover failed") as raised:
        manager.switchover("writer_a", "reader_b", catch_up_timeout_s=30)
    assert raised.value.result.new_primary == "writer_a"
    assert manager.topology().primary == "writer_a"
