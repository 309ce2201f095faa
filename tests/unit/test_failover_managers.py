"""The managers' pure parts: the registry covers every catalog manager, RDS failover events are judged
from AWS's documented messages, a Patroni node's ``/patroni`` answer becomes a member state, and the
MariaDB probe's target is read from the application's connection."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudops.catalog.loader import load_catalog_file
from cloudops.catalog.models import CLUSTER_MANAGERS
from cloudops.errors import InvalidInputError
from cloudops.failover.managers import MANAGERS, ManagerSite, NativePostgresManager, manager_for
from cloudops.failover.patroni import ApiAnswer, member_from_patroni
from cloudops.failover.probe_mariadb import mariadb_probe_target
from cloudops.failover.rds import RdsEvent, judge_failover_events

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)


def event(seconds: float, message: str, categories: tuple[str, ...] = ("failover",)) -> RdsEvent:
    return RdsEvent(T0 + timedelta(seconds=seconds), message, categories, "orders-1")


def test_every_catalog_manager_has_a_builder() -> None:
    assert set(MANAGERS) == set(CLUSTER_MANAGERS)


def test_instance_failover_events_started_then_completed() -> None:
    progress = judge_failover_events(
        [
            event(0, "DB instance created", ("creation",)),
            event(2, "Multi-AZ instance failover started."),
            event(40, "Multi-AZ instance failover completed."),
        ]
    )
    assert progress.progress == "completed"
    assert progress.finished
    assert [e.message for e in progress.events] == [
        "Multi-AZ instance failover started.",
        "Multi-AZ instance failover completed.",
    ]


def test_events_are_judged_in_date_order_whatever_order_they_come_in() -> None:
    progress = judge_failover_events(
        [event(30, "Completed failover to DB instance: orders-2"), event(1, "Started same AZ failover")]
    )
    assert progress.progress == "completed"
    assert progress.reason == "Completed failover to DB instance: orders-2"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Multi-AZ instance failover started.", "started"),
        ("Started cross AZ failover to DB instance: orders-2", "started"),
        ("Failover failed.", "failed"),
        ("Promoting previous primary again.", "failed"),
        (
            "Abandoning user requested failover since a failover recently occurred on the database instance.",
            "abandoned",
        ),
        ("Finished DB instance backup", "not_started"),
    ],
)
def test_each_documented_message_means_what_aws_says(message: str, expected: str) -> None:
    categories = ("backup",) if expected == "not_started" else ("failover",)
    assert judge_failover_events([event(0, message, categories)]).progress == expected


def test_a_failure_after_a_start_is_a_failure_and_stops_the_wait() -> None:
    progress = judge_failover_events([event(0, "Started cross AZ failover"), event(9, "Failover failed.")])
    assert (progress.progress, progress.finished) == ("failed", True)


def test_no_event_is_not_started() -> None:
    progress = judge_failover_events([])
    assert (progress.progress, progress.finished, progress.reason) == (
        "not_started",
        False,
        "no failover event yet",
    )


LEADER = {
    "state": "running",
    "role": "primary",
    "server_version": 150020,
    "xlog": {"location": 55004272},
    "timeline": 3,
    "replication": [
        {
            "application_name": "patroni_b",
            "client_addr": "127.0.0.1",
            "state": "streaming",
            "sync_state": "async",
        }
    ],
}
REPLICA = {
    "state": "running",
    "role": "replica",
    "server_version": 150020,
    "xlog": {"received_location": 55004272, "replayed_location": 55004000, "paused": False},
    "timeline": 3,
    "replication_state": "streaming",
}


def test_a_leader_s_own_answer_is_a_primary_with_its_replicas() -> None:
    state = member_from_patroni("patroni_a", "127.0.0.1:5432", ApiAnswer(200, LEADER))
    assert (state.role, state.timeline, state.version, state.position) == ("primary", 3, "15.20", "0/3474C70")
    assert [(d.name, d.state) for d in state.downstream] == [("patroni_b", "streaming")]


def test_a_replica_s_own_answer_streams_from_its_replayed_position() -> None:
    state = member_from_patroni("patroni_b", "127.0.0.1:5433", ApiAnswer(200, REPLICA))
    assert (state.role, state.streaming, state.position) == ("replica", True, "0/3474B60")


def test_a_stopped_node_or_a_garbled_answer_is_unreachable_with_the_reason() -> None:
    stopped = member_from_patroni("patroni_a", "h:1", ApiAnswer(503, {**LEADER, "state": "stopped"}))
    assert (stopped.reachable, stopped.error) == (False, "Patroni says primary, PostgreSQL stopped")
    garbled = member_from_patroni("patroni_a", "h:1", ApiAnswer(502, "<html>bad gateway</html>"))
    assert garbled.reachable is False
    assert garbled.error == "GET /patroni answered 502: <html>bad gateway</html>"
    rebuilding = member_from_patroni(
        "patroni_b", "h:2", ApiAnswer(503, {**REPLICA, "state": "creating replica"})
    )
    assert (rebuilding.role, rebuilding.streaming) == ("replica", False)


def test_the_mariadb_probe_target_reads_the_host_and_port_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_UNIT_MARIADB_PROBE",
        json.dumps(
            {
                "conn_type": "mysql",
                "host": "10.0.0.1,10.0.0.2",
                "login": "probe",
                "password": "s3cret-probe",
                "schema": "inventory",
                "extra": {"port": "3306,3307", "connect_timeout": 3},
            }
        ),
    )
    target = mariadb_probe_target("unit_mariadb_probe", used_by="unit")
    assert (target.hosts, target.ports, target.connect_timeout_s) == (
        ("10.0.0.1", "10.0.0.2"),
        (3306, 3307),
        3,
    )
    assert "s3cret-probe" not in repr(target)
    assert "s3cret-probe" not in json.dumps(target.describe())


def test_a_mariadb_probe_target_with_mismatched_lists_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_UNIT_BAD_PROBE",
        json.dumps(
            {"conn_type": "mysql", "host": "a,b,c", "login": "p", "schema": "db", "extra": {"port": "1,2"}}
        ),
    )
    with pytest.raises(InvalidInputError, match="'unit_bad_probe' names 3 hosts but 2 ports"):
        mariadb_probe_target("unit_bad_probe", used_by="unit")


NATIVE = """\
estate: acme
owner: oncall
databases:
  - {name: shop, engine: postgres, conn_id: acme_shop, database: shop, cluster: shop_pg}
  - {name: shop_replica, engine: postgres, conn_id: acme_shop_replica, database: shop, role: replica,
     cluster: shop_pg}
clusters:
  - name: shop_pg
    manager: native-pg
    members: [{database: shop}, {database: shop_replica}]
    probe: {conn_id: acme_shop_probe, routing: libpq-multihost}
"""


def test_native_pg_needs_the_data_directories_and_names_the_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(textwrap.dedent(NATIVE))
    catalog = load_catalog_file(path)
    cluster = catalog.cluster("shop_pg")
    with pytest.raises(InvalidInputError, match="the data directory of shop_replica is unknown"):
        manager_for(catalog, cluster, used_by="unit", site=ManagerSite(data_dirs={"shop": "/srv/pg/shop"}))
    built = manager_for(
        catalog,
        cluster,
        used_by="unit",
        site=ManagerSite(data_dirs={"shop": "/srv/pg/shop", "shop_replica": "/srv/pg/replica"}),
    )
    assert isinstance(built, NativePostgresManager)
    assert built.nodes["shop_replica"].conn_id == "acme_shop_replica"
    assert built.nodes["shop_replica"].data_dir == "/srv/pg/replica"


def test_mariadb_write_errors_are_failed_or_in_doubt_as_the_server_could_have_committed() -> None:
    import pymysql

    from cloudops.failover.probe_mariadb import MariadbProbeTarget, MariadbWriteProbe, NoWritableServer

    probe = MariadbWriteProbe(
        MariadbProbeTarget(("h",), (3306,), "p", "pw", "db"), run_id="unit", used_by="unit", max_seconds=1
    )
    read_only = pymysql.err.OperationalError(
        1290, "The MariaDB server is running with the --read-only option"
    )
    assert probe._write_error(read_only) == ("failed", "read_only (1290)")
    lost = pymysql.err.OperationalError(2013, "Lost connection to server during query")
    assert probe._write_error(lost) == ("in_doubt", "connection lost (2013)")
    duplicate = pymysql.err.IntegrityError(1062, "Duplicate entry")
    assert probe._write_error(duplicate) == ("failed", "IntegrityError 1062")
    assert probe._write_error(pymysql.err.InterfaceError(0, "")) == (
        "in_doubt",
        "connection lost (InterfaceError)",
    )
    assert probe._connect_error(NoWritableServer("no server with read_only off: h:3306 read_only")) == (
        "connect: no read-write server"
    )
    assert probe._connect_error(pymysql.err.OperationalError(2003, "Can't connect")) == "connect: refused"
