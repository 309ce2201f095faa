"""The sandbox's clusters as the catalog describes them, read from the running servers: the topology the
engines' replication verbs discover, Patroni's own view through its REST API, the probe connections, and
what failing over and back needs (pg_rewind's prerequisites, GTID replication that catches up).

Nothing is promoted or stopped here: the tests read, and write only into tables of their own (dropped at
the end). The drills that move primaries are tested with the failover library.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from cloudops.catalog import load_catalog_file
from cloudops.catalog.models import MANAGER_ENGINES, Catalog, Cluster
from cloudops.engines import engine

pytestmark = pytest.mark.integration

USED_BY = "sandbox cluster test"


@pytest.fixture(scope="module")
def catalog(project_root: Path) -> Catalog:
    return load_catalog_file(project_root / "runbooks" / "sandbox.yaml")


def fields(env: dict[str, str], conn_id: str) -> dict[str, Any]:
    return dict(json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"]))


def member_conn_ids(catalog: Catalog, cluster: Cluster) -> dict[str, str]:
    """Member name → connection id, as a drill resolves them from the catalog."""
    return {
        m.member_name: catalog.database(m.database).conn_id if m.database else str(m.conn_id)
        for m in cluster.members
    }


def cluster_engine(catalog: Catalog, cluster: Cluster) -> str:
    return MANAGER_ENGINES[cluster.manager] or catalog.database(str(cluster.members[0].database)).engine


def patroni_get(env: dict[str, str], api_conn_id: str, path: str) -> tuple[int, Any]:
    api = fields(env, api_conn_id)
    try:
        with urllib.request.urlopen(f"http://{api['host']}:{api['port']}{path}", timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@pytest.mark.parametrize("name", ["orders_pg_cluster", "inventory_mariadb_cluster", "ledger_patroni"])
def test_discovered_topology_matches_the_catalog(
    sandbox_env: dict[str, str], catalog: Catalog, name: str
) -> None:
    cluster = catalog.cluster(name)
    members = member_conn_ids(catalog, cluster)
    found = engine(cluster_engine(catalog, cluster)).topology(name, members, used_by=USED_BY)
    assert found.healthy, found.problems
    assert {state.name for state in found.members} == set(members)
    assert found.primary is not None
    assert sorted([found.primary, *found.replicas]) == sorted(members)
    primary = found.member(found.primary)
    for replica in found.replicas:
        state = found.member(replica)
        assert state.streaming is True, found.summary
        assert state.read_only is True
        assert state.upstream is not None
        port = state.upstream.rpartition(":")[2]
        assert int(port) == fields(sandbox_env, members[found.primary])["port"], found.summary
    # Where the catalog declares a role (its databases), the servers agree with it.
    declared = {m.database: catalog.database(m.database).role for m in cluster.members if m.database}
    for database, role in declared.items():
        assert (found.primary == database) == (role == "primary"), (database, role, found.summary)
    if cluster_engine(catalog, cluster) == "postgres":
        # The primary sees each replica streaming under the member's own name (its application_name).
        assert primary.timeline is not None
        assert {d.name for d in primary.downstream if d.state == "streaming"} == set(found.replicas)


def test_patroni_rest_api_reports_a_leader_and_a_streaming_replica(
    sandbox_env: dict[str, str], catalog: Catalog
) -> None:
    cluster = catalog.cluster("ledger_patroni")
    apis = {m.member_name: str(m.patroni_api_conn_id) for m in cluster.members}
    answers = [patroni_get(sandbox_env, api, "/cluster") for api in apis.values()]
    assert [status for status, _ in answers] == [200, 200]
    roles = {m["name"]: (m["role"], m["state"]) for m in answers[0][1]["members"]}
    assert sorted(roles.values()) == [("leader", "running"), ("replica", "streaming")]
    # Both nodes tell the same story.
    assert {m["name"]: m["role"] for m in answers[1][1]["members"]} == {n: r for n, (r, _) in roles.items()}
    leader = next(name for name, (role, _) in roles.items() if role == "leader")
    replica = next(name for name in roles if name != leader)
    # Patroni's health endpoints say the same from each node, as a drill's guards read them.
    assert patroni_get(sandbox_env, apis[leader], "/primary")[0] == 200
    assert patroni_get(sandbox_env, apis[replica], "/primary")[0] == 503
    assert patroni_get(sandbox_env, apis[replica], "/replica?lag=1MB")[0] == 200
    # And Patroni's leader is the primary the engine discovers.
    topology = engine("postgres").topology(cluster.name, member_conn_ids(catalog, cluster), used_by=USED_BY)
    assert topology.primary == leader
    status, body = patroni_get(sandbox_env, apis[leader], "/patroni")
    assert status == 200
    assert body["replication"][0]["application_name"] == replica
    assert body["replication"][0]["state"] == "streaming"


def test_patroni_unsafe_endpoints_need_the_api_login(sandbox_env: dict[str, str], catalog: Catalog) -> None:
    api_conn_id = str(catalog.cluster("ledger_patroni").members[0].patroni_api_conn_id)
    api = fields(sandbox_env, api_conn_id)
    url = f"http://{api['host']}:{api['port']}/switchover"
    # An empty body names no leader: even with the login Patroni would refuse it, so nothing can move.
    anonymous = urllib.request.Request(url, data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(anonymous, timeout=5)
    assert refused.value.code == 401
    token = base64.b64encode(f"{api['login']}:{api['password']}".encode()).decode()
    signed = urllib.request.Request(
        url, data=b"{}", method="POST", headers={"Authorization": f"Basic {token}"}
    )
    with pytest.raises(urllib.error.HTTPError) as invalid:
        urllib.request.urlopen(signed, timeout=5)
    assert invalid.value.code == 400


@pytest.mark.parametrize("name", ["orders_pg_cluster", "ledger_patroni"])
def test_postgres_probe_connection_lands_on_the_primary_through_libpq(
    sandbox_env: dict[str, str], catalog: Catalog, name: str
) -> None:
    cluster = catalog.cluster(name)
    probe = fields(sandbox_env, cluster.probe.conn_id)
    assert probe["extra"]["target_session_attrs"] == "read-write"
    assert "password" not in json.dumps(probe["extra"])
    members = member_conn_ids(catalog, cluster)
    assert probe["host"].count(",") == len(members) - 1
    topology = engine("postgres").topology(name, members, used_by=USED_BY)
    assert topology.primary is not None
    with psycopg.connect(
        host=probe["host"],
        port=probe["extra"]["port"],
        user=probe["login"],
        password=probe["password"],
        dbname=probe["schema"],
        target_session_attrs=probe["extra"]["target_session_attrs"],
        connect_timeout=int(probe["extra"]["connect_timeout"]),
    ) as session:
        in_recovery, port, database = session.execute(
            "SELECT pg_is_in_recovery(), current_setting('port')::int, current_database()"
        ).fetchone() or (None, None, None)
    assert in_recovery is False
    assert port == fields(sandbox_env, members[topology.primary])["port"]
    assert database == cluster.probe.database


def test_mariadb_probe_account_is_refused_by_the_read_only_replica(
    sandbox_env: dict[str, str], catalog: Catalog
) -> None:
    cluster = catalog.cluster("inventory_mariadb_cluster")
    probe = fields(sandbox_env, cluster.probe.conn_id)
    assert probe["extra"]["routing"] == "first-writable"
    members = list(zip(probe["host"].split(","), probe["extra"]["port"].split(","), strict=True))
    read_only = []
    for host, port in members:
        with (
            pymysql.connect(
                host=host,
                port=int(port),
                user=probe["login"],
                password=probe["password"],
                database=probe["schema"],
            ) as session,
            session.cursor() as cursor,
        ):
            cursor.execute("SELECT @@GLOBAL.read_only")
            (flag,) = cursor.fetchone() or (None,)
            read_only.append(int(flag))
            if flag:
                with pytest.raises(pymysql.err.OperationalError) as refused:
                    cursor.execute("CREATE TABLE cloudops_probe_refused (id INT PRIMARY KEY)")
                assert refused.value.args[0] == 1290  # ER_OPTION_PREVENTS_STATEMENT: --read-only
    assert sorted(read_only) == [0, 1]
    assert read_only[0] == 0, "the first writable server of the list is the primary, listed first"


def test_pg_rewind_prerequisites_hold_on_every_postgres_member(
    sandbox_env: dict[str, str], catalog: Catalog
) -> None:
    for name in ("orders_pg_cluster", "ledger_patroni"):
        for conn_id in member_conn_ids(catalog, catalog.cluster(name)).values():
            conn = fields(sandbox_env, conn_id)
            with psycopg.connect(
                host=conn["host"],
                port=conn["port"],
                user=conn["login"],
                password=conn["password"],
                dbname="postgres",
            ) as session:
                (hints,) = session.execute("SHOW wal_log_hints").fetchone() or (None,)
            assert hints == "on", conn_id
    # The native pair's rewind role reads what pg_rewind reads from its source, on either server.
    for member in catalog.cluster("orders_pg_cluster").members:
        rewind = fields(sandbox_env, str(member.rewind_conn_id))
        with psycopg.connect(
            host=rewind["host"],
            port=rewind["port"],
            user=rewind["login"],
            password=rewind["password"],
            dbname=rewind["schema"],
        ) as session:
            superuser, listing, control = session.execute(
                "SELECT rolsuper, (SELECT count(*) FROM pg_ls_dir('global', true, false)), "
                "length(pg_read_binary_file('global/pg_control', 0, 16, true)) "
                "FROM pg_roles WHERE rolname = current_user"
            ).fetchone() or (None, None, None)
        assert superuser is False
        assert listing is not None
        assert listing > 0
        assert control == 16


def test_mariadb_replica_follows_by_gtid_and_catches_up(sandbox_env: dict[str, str]) -> None:
    table = f"cloudops_gtid_{secrets.token_hex(4)}"
    primary, replica = fields(sandbox_env, "sandbox_mariadb"), fields(sandbox_env, "sandbox_mariadb_replica")

    def connect(conn: dict[str, Any]) -> pymysql.Connection[Any]:
        return pymysql.connect(
            host=conn["host"],
            port=conn["port"],
            user=conn["login"],
            password=conn["password"],
            database=conn["schema"],
            autocommit=True,
            cursorclass=pymysql.cursors.DictCursor,
        )

    with connect(replica) as session, session.cursor() as cursor:
        cursor.execute("SHOW SLAVE STATUS")
        status = cursor.fetchone() or {}
        cursor.execute("SELECT @@GLOBAL.gtid_strict_mode AS strict, @@GLOBAL.log_slave_updates AS chained")
        settings = cursor.fetchone() or {}
    assert status["Using_Gtid"] == "Slave_Pos"
    assert settings == {"strict": 1, "chained": 1}
    with connect(primary) as session, session.cursor() as cursor:
        cursor.execute(f"CREATE TABLE `{table}` (id INT PRIMARY KEY)")
        try:
            cursor.execute(f"INSERT INTO `{table}` VALUES (1), (2), (3)")
            deadline = time.monotonic() + 30
            while True:
                lag = engine("mariadb").lag("sandbox_mariadb", "sandbox_mariadb_replica", used_by=USED_BY)
                if lag.bytes == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert lag.within(max_bytes=0, max_seconds=0)[0], lag
            with connect(replica) as other, other.cursor() as reader:
                reader.execute(f"SELECT COUNT(*) AS n FROM `{table}`")
                assert (reader.fetchone() or {}).get("n") == 3
        finally:
            cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
