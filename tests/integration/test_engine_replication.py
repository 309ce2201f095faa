"""Replication verbs against the real sandbox: the PostgreSQL primary and its streaming replica
(sandbox_pg_primary, sandbox_pg_replica) and the standalone MariaDB server (sandbox_mariadb).

Nothing is promoted or stopped: the tests read, and write only into a table of their own on the
primary (dropped at the end) to see the replica's replay position move.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cloudops.engines import engine
from cloudops.errors import ReplicationError

pytestmark = pytest.mark.integration

PG_PRIMARY, PG_REPLICA, MARIA = "sandbox_pg_primary", "sandbox_pg_replica", "sandbox_mariadb"
USED_BY = "replication test"


@pytest.fixture(autouse=True)
def _sandbox(sandbox_env: dict[str, str]) -> None:
    """Every test here needs the sandbox's connections."""


def address(env: dict[str, str], conn_id: str) -> str:
    fields: dict[str, Any] = json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"])
    return f"{fields['host']}:{fields['port']}"


@pytest.fixture
def primary_session(sandbox_env: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    fields = json.loads(sandbox_env[f"AIRFLOW_CONN_{PG_PRIMARY.upper()}"])
    with psycopg.connect(
        host=fields["host"],
        port=fields["port"],
        user=fields["login"],
        password=fields["password"],
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    ) as session:
        yield session


def test_postgres_topology_finds_the_primary_and_its_streaming_replica_from_the_servers(
    sandbox_env: dict[str, str],
) -> None:
    # Listed replica first, with the catalog's names: the order and the names decide nothing.
    found = engine("postgres").topology(
        "orders_pg_cluster",
        {"orders_pg_replica": PG_REPLICA, "orders_pg": PG_PRIMARY},
        used_by=USED_BY,
    )
    assert found.problems == ()
    assert found.healthy
    assert (found.primary, found.replicas) == ("orders_pg", ("orders_pg_replica",))
    assert found.summary == (
        f"primary orders_pg ({address(sandbox_env, PG_PRIMARY)}); replicas: orders_pg_replica (streaming)"
    )
    primary, replica = found.member("orders_pg"), found.member("orders_pg_replica")
    assert primary.timeline == replica.timeline
    assert primary.timeline is not None
    assert primary.read_only is False
    assert replica.read_only is True
    # The replica names the primary it streams from; the primary lists it among its own.
    assert replica.upstream is not None
    assert replica.upstream.rpartition(":")[2] == address(sandbox_env, PG_PRIMARY).rpartition(":")[2]
    assert [d.state for d in primary.downstream] == ["streaming"]


def test_postgres_lag_is_measured_in_bytes_and_seconds_and_is_within_a_small_bound_once_replayed(
    primary_session: psycopg.Connection[Any],
) -> None:
    table = sql.Identifier(f"cloudops_test_lag_{secrets.token_hex(4)}")
    primary_session.execute(sql.SQL("CREATE TABLE {} (id int)").format(table))
    try:
        primary_session.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 20000)").format(table))
        postgres = engine("postgres")
        measured = postgres.lag(PG_PRIMARY, PG_REPLICA, used_by=USED_BY)
        assert measured.streaming
        assert measured.bytes is not None
        assert measured.bytes >= 0
        assert measured.seconds is not None
        assert measured.seconds >= 0
        assert measured.how.startswith("pg_current_wal_lsn() on the primary")
        # Replay catches up within a bounded wait (delay x attempts), then the guard passes.
        for _attempt in range(100):
            measured = postgres.lag(PG_PRIMARY, PG_REPLICA, used_by=USED_BY)
            if measured.within(max_bytes=1024 * 1024, max_seconds=5)[0]:
                break
            time.sleep(0.1)
        within, reason = measured.within(max_bytes=1024 * 1024, max_seconds=5)
        assert within, reason
        assert reason.startswith(f"{PG_REPLICA} is ")
    finally:
        primary_session.execute(sql.SQL("DROP TABLE {}").format(table))


def test_postgres_lag_with_the_roles_swapped_names_the_server_that_is_not_a_replica() -> None:
    with pytest.raises(ReplicationError, match=rf"{PG_PRIMARY} \(.*\) is not a replica \(not in recovery\)"):
        engine("postgres").lag(PG_REPLICA, PG_PRIMARY, used_by=USED_BY)


def test_mariadb_standalone_topology_says_no_replicas(sandbox_env: dict[str, str]) -> None:
    found = engine("mariadb").topology("inventory", {"inventory_mariadb": MARIA}, used_by=USED_BY)
    assert found.healthy, found.problems
    assert found.summary == f"primary inventory_mariadb ({address(sandbox_env, MARIA)}); no replicas"
    state = found.member("inventory_mariadb")
    assert state.read_only is False
    assert state.timeline is None
    assert state.version is not None
    assert "MariaDB" in state.version


def test_mariadb_lag_of_a_server_without_a_source_is_refused_by_name() -> None:
    with pytest.raises(
        ReplicationError, match=rf"{MARIA} \(.*\) is not a replica \(SHOW SLAVE STATUS is empty"
    ):
        engine("mariadb").lag(MARIA, MARIA, used_by=USED_BY)


def test_an_unreachable_member_is_reported_not_raised(sandbox_env: dict[str, str], monkeypatch: Any) -> None:
    fields = json.loads(sandbox_env[f"AIRFLOW_CONN_{PG_PRIMARY.upper()}"])
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDOPS_TEST_DOWN", json.dumps({**fields, "port": 1}))
    found = engine("postgres").topology(
        "orders_pg_cluster", {"orders_pg": PG_PRIMARY, "gone": "cloudops_test_down"}, used_by=USED_BY
    )
    assert found.primary == "orders_pg"
    assert not found.healthy
    assert len(found.problems) == 1
    assert found.problems[0].startswith(f"orders_pg_cluster: gone ({fields['host']}:1) cannot be reached: ")
