"""The MariaDB GTID manager on the sandbox's ``inventory_mariadb_cluster`` (MariaDB 10.11, GTID
``slave_pos`` replication): a planned drill with fail-back under the first-writable probe, the abort
when the candidate cannot catch up (the old primary takes writes again), and an old primary that
cannot rejoin (error 1236, degraded redundancy), repaired with the same verbs. Every test leaves the
cluster as the catalog has it: ``inventory_mariadb`` takes writes, the replica replicates from it.

Figures are printed for the report and compared with the note's MariaDB switchover (0.22 / 0.51 /
0.78 s of write downtime, ``../shared/notes/failover.md``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from cloudops.catalog.loader import load_catalog_file
from cloudops.engines.mariadb.switchover import MariadbNode, rejoin, switchover, unfence
from cloudops.engines.replication import RejoinFailed, SwitchoverAborted
from cloudops.errors import ReplicationError
from cloudops.failover.drill import DrillOptions, run_planned_drill
from cloudops.failover.managers import manager_for
from cloudops.failover.mariadb_gtid import MariadbGtidManager
from cloudops.failover.policy import DrillGuards, DrillTargets
from cloudops.failover.probe_mariadb import mariadb_probe_target
from tests.conftest import SANDBOX_CATALOG

pytestmark = pytest.mark.integration

USED_BY = "mariadb drill test"
CLUSTER = "inventory_mariadb_cluster"
PRIMARY, REPLICA = "inventory_mariadb", "inventory_mariadb_replica"


def _sql(conn_id: str, *statements: str) -> list[Any]:
    import pymysql

    conn = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])
    session = pymysql.connect(
        host=conn["host"], port=conn["port"], user=conn["login"], password=conn["password"], autocommit=True
    )
    rows: list[Any] = []
    try:
        with session.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
                rows = list(cursor.fetchall() or [])
    finally:
        session.close()
    return rows


@pytest.fixture
def manager(sandbox_env: dict[str, str]) -> Iterator[MariadbGtidManager]:
    catalog = load_catalog_file(SANDBOX_CATALOG)
    found = manager_for(catalog, catalog.cluster(CLUSTER), used_by=USED_BY)
    assert isinstance(found, MariadbGtidManager)
    topology = found.topology()
    assert topology.primary == PRIMARY, (
        f"the sandbox's MariaDB cluster is not as the catalog has it: {topology}"
    )
    assert topology.healthy, topology.problems
    yield found
    after = found.topology()
    assert after.primary == PRIMARY, f"the test left {after.summary}"
    assert after.healthy, after.problems


def test_a_planned_drill_switches_over_and_back_losing_no_acknowledged_write(
    manager: MariadbGtidManager,
) -> None:
    catalog = load_catalog_file(SANDBOX_CATALOG)
    cluster = catalog.cluster(CLUSTER)
    assert cluster.drill is not None
    targets = cluster.drill.targets
    record = run_planned_drill(
        manager,
        run_id="it-mariadb-1",
        probe_dsn=mariadb_probe_target(
            cluster.probe.conn_id, used_by=USED_BY, database=cluster.probe.database
        ),
        targets=DrillTargets(
            max_write_downtime_s=targets.max_write_downtime_seconds,
            max_acked_writes_lost=targets.max_acknowledged_writes_lost,
            max_drill_s=targets.max_drill_seconds,
        ),
        guards=DrillGuards(min_interval=timedelta(0), catch_up_timeout_s=30),
        options=DrillOptions(baseline_acks=30, settle_s=1.0),
    )
    analysis = record.analysis
    assert analysis is not None
    print(
        f"\nMariaDB planned drill: windows {[round(w.seconds, 3) for w in analysis.windows]} s, "
        f"max ack gap {analysis.max_ack_gap_s:.3f} s, acked {analysis.acked}, "
        f"lost {analysis.acked_writes_lost}, in doubt {analysis.in_doubt}, errors {analysis.error_classes}, "
        f"drill {record.drill_seconds:.2f} s, verdicts {[(v.target, v.status) for v in record.verdicts]}"
    )
    assert record.aborted is None, record.aborted
    assert record.degraded_redundancy is None
    assert analysis.acked_writes_lost == 0
    assert {v.target: v.status for v in record.verdicts}["acked_writes_lost"] == "PASS"
    assert all(w.closed for w in analysis.windows)
    # The read_only refusal is what the application sees, then no writable server until the promotion.
    assert "read_only (1290)" in analysis.error_classes
    assert analysis.write_downtime_s < 5
    assert set(analysis.servers) == {
        f"127.0.0.1:{json.loads(os.environ['AIRFLOW_CONN_SANDBOX_MARIADB'])['port']}",
        f"127.0.0.1:{json.loads(os.environ['AIRFLOW_CONN_SANDBOX_MARIADB_REPLICA'])['port']}",
    }
    names = [p.name for p in record.phases]
    for step in ("read_only", "catch_up", "promote", "repoint", "replicating"):
        assert f"switchover.{step}" in names
        assert f"fail_back.{step}" in names
    assert record.server_evidence["switchover.switch_position"].startswith("0-1-")
    assert record.server_evidence["fail_back.switch_position"].startswith("0-3-")
    probe_password = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_INVENTORY_MARIADB_PROBE"])["password"]
    replication_password = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_MARIADB_REPLICATION"])["password"]
    text = record.to_json()
    assert probe_password not in text
    assert replication_password not in text


def _admin(conn_id: str) -> Any:
    import pymysql

    conn = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])
    return pymysql.connect(
        host=conn["host"], port=conn["port"], user=conn["login"], password=conn["password"], autocommit=True
    )


def test_a_candidate_that_cannot_catch_up_aborts_and_the_old_primary_takes_writes_again(
    manager: MariadbGtidManager,
) -> None:
    _sql(
        "sandbox_mariadb",
        "CREATE TABLE IF NOT EXISTS inventory.cloudops_switchover_test (id int PRIMARY KEY, v int)",
        "REPLACE INTO inventory.cloudops_switchover_test VALUES (1, 0)",
    )
    position = str(_sql("sandbox_mariadb", "SELECT @@GLOBAL.gtid_binlog_pos")[0][0])
    _sql("sandbox_mariadb_replica", f"SELECT MASTER_GTID_WAIT('{position}', 10)")
    # A session on the replica holds the row: the replica's SQL thread blocks applying the next update,
    # while both threads run (a slow replica, not a broken one).
    holder = _admin("sandbox_mariadb_replica")
    try:
        with holder.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT * FROM inventory.cloudops_switchover_test WHERE id = 1 FOR UPDATE")
        _sql("sandbox_mariadb", "UPDATE inventory.cloudops_switchover_test SET v = 1 WHERE id = 1")
        with pytest.raises(SwitchoverAborted, match=r"did not apply .* within 1 s") as raised:
            switchover(
                manager.nodes[PRIMARY],
                manager.nodes[REPLICA],
                cluster=CLUSTER,
                used_by=USED_BY,
                catch_up_timeout_s=1,
            )
        assert raised.value.result.new_primary == PRIMARY
        assert [s.name for s in raised.value.result.steps] == ["read_only", "catch_up", "abort_restore_old"]
        assert _sql("sandbox_mariadb", "SELECT @@GLOBAL.read_only") == [(0,)]
        assert _sql("sandbox_mariadb_replica", "SELECT @@GLOBAL.read_only") == [(1,)]
    finally:
        holder.rollback()
        holder.close()
        _sql("sandbox_mariadb", "DROP TABLE IF EXISTS inventory.cloudops_switchover_test")
        position = str(_sql("sandbox_mariadb", "SELECT @@GLOBAL.gtid_binlog_pos")[0][0])
        _sql("sandbox_mariadb_replica", f"SELECT MASTER_GTID_WAIT('{position}', 30)")


def test_an_old_primary_with_transactions_the_new_one_lacks_cannot_rejoin(
    manager: MariadbGtidManager,
) -> None:
    old, new = manager.nodes[PRIMARY], manager.nodes[REPLICA]
    # The replica stops receiving; the primary commits one more transaction; the replica is promoted by
    # hand (as after a crash): the old primary now holds a GTID the new one never had.
    _sql("sandbox_mariadb_replica", "STOP SLAVE")
    _sql(
        "sandbox_mariadb",
        "CREATE TABLE IF NOT EXISTS inventory.cloudops_switchover_test (id int PRIMARY KEY)",
    )
    diverged = str(_sql("sandbox_mariadb", "SELECT @@GLOBAL.gtid_binlog_pos")[0][0])
    _sql("sandbox_mariadb_replica", "RESET SLAVE ALL", "SET GLOBAL read_only = 0")
    _sql("sandbox_mariadb", "SET GLOBAL read_only = 1")
    try:
        with pytest.raises(RejoinFailed, match="error 1236") as raised:
            rejoin(old, new_primary=new, used_by=USED_BY, timeout_s=20)
        message = str(raised.value)
        assert diverged in message
        assert "degraded redundancy" in message
        assert [s.name for s in raised.value.steps] == ["repoint", "replicating"]
        assert raised.value.steps[-1].ok is False
    finally:
        # Repair with the same verbs: the replica (which has nothing of its own) follows the old primary.
        _sql("sandbox_mariadb", "STOP SLAVE", "RESET SLAVE ALL")
        unfence(old, used_by=USED_BY)
        _sql("sandbox_mariadb_replica", "SET GLOBAL read_only = 1")
        rejoin(new, new_primary=old, used_by=USED_BY, timeout_s=30)
        _sql("sandbox_mariadb", "DROP TABLE IF EXISTS inventory.cloudops_switchover_test")


def test_a_node_without_a_replication_account_is_refused_before_anything_moves(
    manager: MariadbGtidManager,
) -> None:
    bare = MariadbNode(REPLICA, manager.nodes[REPLICA].conn_id, replication_conn_id=None)
    with pytest.raises(ReplicationError, match=f"{REPLICA} has no replication_conn_id"):
        switchover(manager.nodes[PRIMARY], bare, cluster=CLUSTER, used_by=USED_BY)
    assert _sql("sandbox_mariadb", "SELECT @@GLOBAL.read_only") == [(0,)]


def test_fence_makes_the_server_read_only_and_ends_its_client_sessions(manager: MariadbGtidManager) -> None:
    target = mariadb_probe_target("sandbox_inventory_mariadb_probe", used_by=USED_BY, database="inventory")
    import pymysql

    client = pymysql.connect(
        host=target.hosts[0],
        port=target.ports[0],
        user=target.user,
        password=target.password,
        autocommit=True,
    )
    try:
        decision = manager.fence(PRIMARY)
        assert decision.startswith(f"fenced {PRIMARY}: read_only=1")
        with pytest.raises(pymysql.MySQLError), client.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        client.close()
        unfence(manager.nodes[PRIMARY], used_by=USED_BY)
    with pytest.raises(ReplicationError, match="it replicates from another server"):
        unfence(manager.nodes[REPLICA], used_by=USED_BY)
