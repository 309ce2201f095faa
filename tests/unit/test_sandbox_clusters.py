"""The sandbox's clusters, pure parts: what the plan takes from the catalog, the probe connections written
from the members' connections, the Patroni nodes' settings, and what `up` refuses before starting."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudops.catalog import load_catalog_file
from cloudops.catalog.models import Catalog
from cloudops.errors import SandboxError
from cloudops.sandbox.credentials import CredentialStore
from cloudops.sandbox.estate import cluster_connections
from cloudops.sandbox.layout import BASE_PORTS, EPHEMERAL_PORTS_START, SandboxLayout
from cloudops.sandbox.patroni import VENV_REMEDY, EtcdServer, PatroniCluster
from cloudops.sandbox.plan import plan_from_catalog

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def catalog(project_root: Path) -> Catalog:
    return load_catalog_file(project_root / "runbooks" / "sandbox.yaml")


def layout_at(tmp_path: Path, offset: int = 2000) -> SandboxLayout:
    return SandboxLayout.from_environment(
        {
            "CLOUDOPS_SANDBOX_DIR": str(tmp_path / "sandbox"),
            "CLOUDOPS_SANDBOX_PORT_OFFSET": str(offset),
            "CLOUDOPS_SANDBOX_PATRONI_VENV": str(tmp_path / "no-venv"),
        }
    )


def test_the_plan_has_the_three_clusters_and_the_mariadb_replica(catalog: Catalog) -> None:
    plan = plan_from_catalog(catalog)
    assert [(c.name, c.manager) for c in plan.clusters] == [
        ("orders_pg_cluster", "native-pg"),
        ("inventory_mariadb_cluster", "mariadb-gtid"),
        ("ledger_patroni", "patroni"),
    ]
    assert plan.mariadb.role == "primary"
    assert plan.mariadb_replica is not None
    assert plan.mariadb_replica.conn_id == "sandbox_mariadb_replica"
    assert plan.patroni is not None
    assert [m.api_conn_id for m in plan.patroni.members] == ["sandbox_patroni_a_api", "sandbox_patroni_b_api"]


def test_the_new_ports_stay_below_the_ephemeral_range_and_apart(tmp_path: Path) -> None:
    layout = layout_at(tmp_path, offset=9000)
    ports = [layout.port(service) for service in BASE_PORTS]
    assert max(ports) < EPHEMERAL_PORTS_START
    assert len(set(ports)) == len(ports)


def test_probe_connections_list_every_member_as_the_application_connects(
    tmp_path: Path, catalog: Catalog
) -> None:
    plan = plan_from_catalog(catalog)
    store = CredentialStore(tmp_path / "credentials.json")

    def server(port: int, schema: str, login: str = "cloudops") -> dict[str, object]:
        return {
            "conn_type": "x",
            "host": "127.0.0.1",
            "port": port,
            "login": login,
            "password": "pw",
            "schema": schema,
        }

    members = {
        "sandbox_pg_primary": server(17432, "orders"),
        "sandbox_pg_replica": server(17433, "orders"),
        "sandbox_mariadb": server(15306, "inventory"),
        "sandbox_mariadb_replica": server(15308, "inventory"),
        "sandbox_patroni_a": server(17442, "ledger"),
        "sandbox_patroni_b": server(17443, "ledger"),
    }
    found = cluster_connections(plan, members, store)
    orders = found["sandbox_orders_pg_probe"]
    assert orders["host"] == "127.0.0.1,127.0.0.1"
    assert orders["extra"] == {
        "port": "17432,17433",
        "target_session_attrs": "read-write",
        "connect_timeout": "2",
    }
    assert orders["schema"] == "orders"
    assert "port" not in orders  # one port field cannot hold the list: libpq reads it from extra
    ledger = found["sandbox_ledger_patroni_probe"]
    assert ledger["extra"]["port"] == "17442,17443"
    inventory = found["sandbox_inventory_mariadb_probe"]
    assert inventory["conn_type"] == "mysql"
    assert inventory["login"] == "cloudops_probe"  # an account read_only refuses, not the admin one
    assert inventory["extra"]["routing"] == "first-writable"
    assert inventory["password"] == store.password("mariadb_probe")
    del members["sandbox_patroni_b"]
    with pytest.raises(SandboxError, match="ledger_patroni: the sandbox starts no server for connection"):
        cluster_connections(plan, members, store)


def test_patroni_nodes_get_ports_of_their_own_and_a_settings_file_patroni_accepts(
    tmp_path: Path, catalog: Catalog
) -> None:
    layout = layout_at(tmp_path)
    plan = plan_from_catalog(catalog)
    assert plan.patroni is not None
    cluster = PatroniCluster(layout, plan.patroni, CredentialStore(tmp_path / "c.json"), EtcdServer(layout))
    a, b = cluster.nodes
    assert (a.pg_port, a.api_port, b.pg_port, b.api_port) == (17442, 20008, 17443, 20009)
    settings = a._settings()
    dcs = settings["bootstrap"]["dcs"]
    # Patroni's own rule: loop_wait + 2 x retry_timeout <= ttl.
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
    assert dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs["postgresql"]["parameters"]["wal_log_hints"] == "on"
    assert settings["etcd3"]["hosts"] == ["127.0.0.1:14379"]
    assert settings["restapi"]["authentication"]["username"] == "cloudops"
    assert settings["postgresql"]["listen"] == "127.0.0.1:17442"
    assert settings["scope"] == "ledger_patroni"
    # A node that led last starts first.
    assert [n.member.name for n in cluster.start_order()] == ["patroni_a", "patroni_b"]
    layout.run_dir.mkdir(parents=True)
    (layout.run_dir / "patroni-leader").write_text("patroni_b\n")
    again = PatroniCluster(layout, plan.patroni, CredentialStore(tmp_path / "c.json"), EtcdServer(layout))
    assert [n.member.name for n in again.start_order()] == ["patroni_b", "patroni_a"]


def test_a_missing_patroni_venv_names_the_make_target(tmp_path: Path, catalog: Catalog) -> None:
    layout = layout_at(tmp_path)
    plan = plan_from_catalog(catalog)
    assert plan.patroni is not None
    cluster = PatroniCluster(layout, plan.patroni, CredentialStore(tmp_path / "c.json"), EtcdServer(layout))
    problems = [binary.problem() for binary in cluster.nodes[0].binaries()]
    assert f"patroni not found at {tmp_path / 'no-venv' / 'bin' / 'patroni'}: {VENV_REMEDY}" in problems
    assert "make sandbox" in VENV_REMEDY


def test_an_rds_cluster_is_not_one_the_sandbox_can_run(tmp_path: Path, catalog: Catalog) -> None:
    rds = catalog.model_copy(
        update={
            "clusters": [
                catalog.clusters[0].model_copy(update={"manager": "aurora"}),
            ]
        }
    )
    with pytest.raises(
        SandboxError, match="the sandbox runs native-pg, patroni and mariadb-gtid clusters, not aurora"
    ):
        plan_from_catalog(rds)
