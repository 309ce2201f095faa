"""The catalog's clusters: what loads, and every kind of bad input refused with the field that is wrong."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from cloudops.catalog import CatalogError, load_catalog_file, load_catalogs

pytestmark = pytest.mark.unit

BASE = """\
estate: acme
owner: acme-oncall
clouds:
  - {name: acme_aws, provider: aws, aws_conn_id: acme_aws, region: eu-west-1}
databases:
  - {name: shop, engine: postgres, conn_id: acme_shop, database: shop, cluster: shop_pg}
  - {name: shop_replica, engine: postgres, conn_id: acme_shop_replica, database: shop, role: replica,
     cluster: shop_pg}
  - {name: stock, engine: mariadb, conn_id: acme_stock, database: stock}
  - {name: stock_replica, engine: mariadb, conn_id: acme_stock_replica, database: stock}
  - {name: orders, engine: postgres, conn_id: acme_orders, database: orders, rds_instance_id: orders-1}
fleets:
  - name: db
    os_family: debian
    hosts:
      - {name: db-1, ssh_conn_id: acme_db_1}
clusters:
"""

NATIVE = """\
  - name: shop_pg
    manager: native-pg
    members:
      - {database: shop, host: db-1}
      - {database: shop_replica}
    probe: {conn_id: acme_shop_probe, routing: libpq-multihost}
    drill:
      schedule: "0 4 * * sun"
      modes: [planned, crash]
      targets: {max_write_downtime_seconds: 1, max_acknowledged_writes_lost: 0, max_drill_seconds: 60}
      guards:
        max_lag_bytes: 65536
        max_lag_seconds: 2
        min_healthy_replicas: 1
        min_interval: 24h
        window: {days: [sun], start: "04:00", duration: 2h}
      failback: auto
"""


def write(tmp_path: Path, clusters: str, name: str = "acme.yaml", base: str = BASE) -> Path:
    path = tmp_path / name
    path.write_text(base + textwrap.dedent(clusters))
    return path


def issues(path: Path) -> list[tuple[str, str]]:
    """(field, message with hint) of every issue the file has."""
    with pytest.raises(CatalogError) as caught:
        load_catalog_file(path)
    return [(issue.field, f"{issue.message} {issue.hint or ''}") for issue in caught.value.issues]


def by_field(path: Path) -> dict[str, str]:
    """The issues' messages by field (several at one field joined)."""
    found: dict[str, str] = {}
    for field, message in issues(path):
        found[field] = f"{found[field]} | {message}" if field in found else message
    return found


def only_issue(path: Path) -> tuple[str, str]:
    found = issues(path)
    assert len(found) == 1, found
    return found[0]


def test_sandbox_catalog_has_one_cluster_of_each_sandbox_manager(project_root: Path) -> None:
    catalog = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    managers = {cluster.name: cluster.manager for cluster in catalog.clusters}
    assert sorted(managers.values()) == ["mariadb-gtid", "native-pg", "patroni"]
    patroni = next(c for c in catalog.clusters if c.manager == "patroni")
    assert all(member.patroni_api_conn_id for member in patroni.members)
    assert {c.probe.routing for c in catalog.clusters} == {"libpq-multihost", "first-writable"}


def test_native_cluster_loads_typed_with_defaults(tmp_path: Path) -> None:
    catalog = load_catalog_file(write(tmp_path, NATIVE))
    cluster = catalog.cluster("shop_pg")
    assert [m.member_name for m in cluster.members] == ["shop", "shop_replica"]
    assert cluster.member("shop").host == "db-1"
    assert cluster.drill is not None
    assert cluster.drill.modes == ["planned", "crash"]
    assert cluster.drill.guards.min_interval == timedelta(hours=24)
    assert cluster.drill.guards.window is not None
    assert cluster.drill.guards.window.duration == timedelta(hours=2)
    assert cluster.drill.targets.max_write_downtime_seconds == 1.0
    assert cluster.production is False


def test_minimal_cluster_takes_planned_only_and_default_targets(tmp_path: Path) -> None:
    catalog = load_catalog_file(
        write(
            tmp_path,
            """\
            - name: shop_pg
              manager: native-pg
              members: [{database: shop}, {database: shop_replica}]
              probe: {conn_id: acme_shop_probe, routing: libpq-multihost}
              drill: {}
            """,
        )
    )
    drill = catalog.cluster("shop_pg").drill
    assert drill is not None
    assert drill.modes == ["planned"]
    assert drill.failback == "auto"
    assert drill.targets.max_acknowledged_writes_lost == 0
    assert drill.guards.min_healthy_replicas == 1


def test_unknown_member_is_named_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, NATIVE.replace("{database: shop_replica}", "{database: shop_replika}"))
    found = by_field(path)
    message = found["clusters[0].members[1].database"]
    assert "unknown database 'shop_replika'" in message
    assert "did you mean 'shop_replica'?" in message
    # and the database that was meant says it is left out of its cluster
    assert "is not among its members" in found["databases[1].cluster"]


def test_crash_on_a_manager_that_cannot_be_crashed_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        - name: orders_rds
          manager: rds-multi-az-instance
          members: [{database: orders}]
          probe: {conn_id: acme_orders_probe, routing: endpoint}
          rds: {cloud: acme_aws, db_instance_identifier: orders-1}
          drill: {modes: [planned, crash]}
        """,
    )
    field, message = only_issue(path)
    assert field == "clusters[0].drill.modes[1]"
    assert "rds-multi-az-instance cannot be crashed" in message


def test_a_negative_target_is_refused_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, NATIVE.replace("max_write_downtime_seconds: 1", "max_write_downtime_seconds: -1"))
    field, message = only_issue(path)
    assert field == "clusters[0].drill.targets.max_write_downtime_seconds"
    assert "greater than or equal to 0" in message


def test_a_cluster_of_one_member_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        - name: stock_cluster
          manager: mariadb-gtid
          members: [{database: stock}]
          probe: {conn_id: acme_stock_probe, routing: first-writable}
        """,
    )
    field, message = only_issue(path)
    assert field == "clusters[0].members"
    assert "has 1 member; manager mariadb-gtid needs at least 2" in message


def test_a_replica_whose_database_names_the_cluster_but_is_left_out_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        NATIVE.replace("{database: shop_replica}", "{name: other, conn_id: acme_other}"),
    )
    field, message = only_issue(path)
    assert field == "databases[1].cluster"
    assert "'shop_replica' names cluster 'shop_pg', but is not among its members" in message


def test_crash_on_production_needs_the_acknowledgement(tmp_path: Path) -> None:
    production = NATIVE.replace("    drill:\n", "    production: true\n    drill:\n")
    field, message = only_issue(write(tmp_path, production))
    assert field == "clusters[0].drill.modes[1]"
    assert "crash_in_production: true" in message
    acknowledged = production.replace(
        "      failback: auto", "      failback: auto\n      crash_in_production: true"
    )
    assert load_catalog_file(write(tmp_path, acknowledged, "ok.yaml")).cluster("shop_pg").production


def test_patroni_members_need_their_rest_api_and_others_refuse_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        - name: ledger
          manager: patroni
          members:
            - {name: node_a, conn_id: acme_node_a, patroni_api_conn_id: acme_node_a_api}
            - {name: node_b, conn_id: acme_node_b}
          probe: {conn_id: acme_ledger_probe, routing: libpq-multihost}
        - name: stock_cluster
          manager: mariadb-gtid
          members:
            - {database: stock, patroni_api_conn_id: acme_stock_api}
            - {database: stock_replica}
          probe: {conn_id: acme_stock_probe, routing: first-writable}
        """,
    )
    found = by_field(path)
    assert "needs patroni_api_conn_id" in found["clusters[0].members[1].patroni_api_conn_id"]
    assert "only a patroni cluster has a REST API" in found["clusters[1].members[0].patroni_api_conn_id"]
    assert len(found) == 2


def test_probe_must_connect_the_way_the_managers_clients_do(tmp_path: Path) -> None:
    path = write(tmp_path, NATIVE.replace("routing: libpq-multihost", "routing: first-writable"))
    field, message = only_issue(path)
    assert field == "clusters[0].probe.routing"
    assert "endpoint, libpq-multihost" in message


def test_engine_of_members_must_be_the_managers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        - name: stock_cluster
          manager: mariadb-gtid
          members: [{database: stock}, {database: shop}]
          probe: {conn_id: acme_stock_probe, routing: first-writable}
        """,
    )
    found = by_field(path)
    assert (
        "database 'shop' is postgres, but manager mariadb-gtid runs mariadb"
        in found["clusters[0].members[1].database"]
    )


def test_a_server_is_in_one_cluster_only(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        - name: stock_cluster
          manager: mariadb-gtid
          members: [{database: stock}, {database: stock_replica}]
          probe: {conn_id: acme_stock_probe, routing: first-writable}
        - name: stock_again
          manager: mariadb-gtid
          members: [{database: stock_replica}, {name: stock_c, conn_id: acme_stock_c}]
          probe: {conn_id: acme_stock_probe, routing: first-writable}
        """,
    )
    field, message = only_issue(path)
    assert field == "clusters[1].members[0]"
    assert "already a member of cluster 'stock_cluster'" in message


def test_guards_that_can_never_hold_and_targets_that_cannot_fit_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        NATIVE.replace("min_healthy_replicas: 1", "min_healthy_replicas: 2")
        .replace("max_drill_seconds: 60", "max_drill_seconds: 9000")
        .replace("max_write_downtime_seconds: 1", "max_write_downtime_seconds: 10000"),
    )
    found = by_field(path)
    assert "asks for 2 healthy replicas" in found["clusters[0].drill.guards.min_healthy_replicas"]
    assert "does not fit in the drill window (2h)" in found["clusters[0].drill.targets.max_drill_seconds"]
    assert "longer than the whole drill" in found["clusters[0].drill.targets.max_write_downtime_seconds"]


def test_rds_cluster_needs_its_resource_in_a_known_cloud(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        - name: orders_aurora
          manager: aurora
          members: [{database: orders}, {name: orders_b, conn_id: acme_orders_b}]
          probe: {conn_id: acme_orders_probe, routing: endpoint}
          rds: {cloud: acme_awz, db_instance_identifier: orders-1}
        """,
    )
    found = by_field(path)
    assert "did you mean 'acme_aws'?" in found["clusters[0].rds.cloud"]
    assert "aurora fails over a DB cluster" in found["clusters[0].rds.db_cluster_identifier"]
    assert "its instances are the members" in found["clusters[0].rds.db_instance_identifier"]
    assert "needs an RDS instance id" in found["clusters[0].members[1].rds_instance_id"]


def test_a_member_is_a_database_or_a_named_server_not_both(tmp_path: Path) -> None:
    path = write(tmp_path, NATIVE.replace("{database: shop_replica}", "{database: shop_replica, name: x}"))
    field, message = only_issue(path)
    assert field == "clusters[0].members[1]"
    assert "either a catalog database" in message


def test_unknown_manager_and_mode_get_a_hint(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        NATIVE.replace("manager: native-pg", "manager: patrony").replace("[planned, crash]", "[planed]"),
    )
    found = by_field(path)
    assert "did you mean 'patroni'?" in found["clusters[0].manager"]
    assert "did you mean 'planned'?" in found["clusters[0].drill.modes[0]"]


def test_a_password_in_the_probe_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path, NATIVE.replace("routing: libpq-multihost}", "routing: libpq-multihost, password: hunter2}")
    )
    field, message = only_issue(path)
    assert field == "clusters[0].probe.password"
    assert "secrets are not allowed in the catalog" in message


def test_a_cluster_name_is_claimed_once_across_files(tmp_path: Path) -> None:
    write(tmp_path, NATIVE, "a.yaml")
    other = BASE.replace("estate: acme", "estate: acme_eu")
    for name in ("shop", "shop_replica", "stock", "stock_replica", "orders"):
        other = other.replace(f"{{name: {name},", f"{{name: eu_{name},")
    other = other.replace("cluster: shop_pg}", "cluster: shop_pg_x}").replace("cluster: shop_pg}", "}")
    other = other.replace("\n     cluster: shop_pg}", "\n     cluster: shop_pg_x}").replace(
        "name: db\n", "name: eu_db\n"
    )
    other = other.replace("name: db-1", "name: eu-db-1")
    write(
        tmp_path,
        """\
        - name: shop_pg
          manager: mariadb-gtid
          members: [{database: eu_stock}, {database: eu_stock_replica}]
          probe: {conn_id: eu_probe, routing: first-writable}
        """,
        "b.yaml",
        base=other,
    )
    result = load_catalogs([tmp_path])
    assert [loaded.path.name for loaded in result.catalogs] == ["a.yaml"]
    (issue,) = result.issues
    assert issue.field == "clusters[0].name"
    assert "cluster name 'shop_pg' is already defined in" in issue.message


def test_replication_conn_id_belongs_to_mariadb_gtid_members_only(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        NATIVE.replace("{database: shop_replica}", "{database: shop_replica, replication_conn_id: x}"),
    )
    field, message = only_issue(path)
    assert field == "clusters[0].members[1].replication_conn_id"
    assert "only a mariadb-gtid cluster repoints replicas with CHANGE MASTER, not native-pg" in message
    good = write(
        tmp_path,
        """\
        - name: stock_cluster
          manager: mariadb-gtid
          members:
            - {database: stock, replication_conn_id: acme_stock_repl}
            - {database: stock_replica, replication_conn_id: acme_stock_replica_repl}
          probe: {conn_id: acme_stock_probe, routing: first-writable}
        """,
        name="good.yaml",
    )
    cluster = load_catalog_file(good).cluster("stock_cluster")
    assert [m.replication_conn_id for m in cluster.members] == ["acme_stock_repl", "acme_stock_replica_repl"]
