"""The Engine protocol: both engines offer every verb with the protocol's parameters, ``engine(name)``
finds them without importing a driver, and the pure replication judgements say why."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import pytest

from cloudops.engines import ENGINE_NAMES, Engine, engine, engine_of
from cloudops.engines.mariadb import lag_from_status
from cloudops.engines.postgres import lsn_bytes, timeline_of
from cloudops.engines.replication import MemberState, ReplicationLag, assemble_topology, same_server

pytestmark = pytest.mark.unit


def _protocol_verbs() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(Engine).items()
        if callable(member) and not name.startswith("_")
    }


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_each_engine_offers_every_verb_with_the_protocols_parameters(name: str) -> None:
    implementation = engine(name)
    assert implementation.name == name
    verbs = _protocol_verbs()
    assert {"probe", "backup_source", "restore_logical", "topology", "lag", "member_state"} <= set(verbs)
    for verb, expected in verbs.items():
        found = inspect.signature(getattr(type(implementation), verb))
        assert list(found.parameters) == list(expected.parameters), f"{name}.{verb}"
        for parameter in expected.parameters.values():
            assert found.parameters[parameter.name].kind == parameter.kind, f"{name}.{verb}({parameter.name})"
            assert found.parameters[parameter.name].default == parameter.default, f"{name}.{verb}"
    for attribute in ("default_port", "physical_backups", "schema_is_database", "sqlalchemy_driver"):
        assert hasattr(implementation, attribute), f"{name} lacks {attribute}"


def test_engine_attributes_say_what_the_callers_used_to_test_the_name_for() -> None:
    postgres, mariadb = engine("postgres"), engine("mariadb")
    assert (postgres.default_port, mariadb.default_port) == (5432, 3306)
    assert postgres.physical_backups
    assert not mariadb.physical_backups
    assert mariadb.schema_is_database
    assert not postgres.schema_is_database


def test_an_unknown_engine_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"engine 'oracle' is not one of postgres, mariadb"):
        engine("oracle")


def test_engine_of_reads_the_catalog_databases_engine() -> None:
    class Database:
        engine = "mariadb"

    assert engine_of(Database()).name == "mariadb"


def test_finding_an_engine_imports_no_driver() -> None:
    code = textwrap.dedent(
        """
        import sys
        from cloudops.engines import engine
        engine("postgres"); engine("mariadb")
        print(sorted(m for m in ("psycopg", "pymysql") if m in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


# -- topology ----------------------------------------------------------------------------------------


def primary(name: str = "a", address: str = "127.0.0.1:5432") -> MemberState:
    return MemberState(name, address, True, "primary", position="0/3000000", timeline=1, read_only=False)


def replica(name: str = "b", upstream: str | None = "localhost:5432", streaming: bool = True) -> MemberState:
    return MemberState(name, "127.0.0.1:5433", True, "replica", upstream=upstream, streaming=streaming)


def test_a_primary_and_its_streaming_replica_are_a_whole_cluster() -> None:
    found = assemble_topology("orders", [primary(), replica()])
    assert found.healthy
    assert (found.primary, found.replicas, found.problems) == ("a", ("b",), ())
    assert found.summary == "primary a (127.0.0.1:5432); replicas: b (streaming)"


def test_a_standalone_server_is_a_cluster_of_one_with_no_replicas() -> None:
    found = assemble_topology("inventory", [primary("m", "127.0.0.1:3306")])
    assert found.healthy
    assert found.summary == "primary m (127.0.0.1:3306); no replicas"


def test_two_writers_leave_no_primary_and_say_fence() -> None:
    found = assemble_topology("orders", [primary("a"), primary("b", "127.0.0.1:5433")])
    assert found.primary is None
    assert not found.healthy
    assert found.problems == (
        "orders: 2 members take writes: a (127.0.0.1:5432), b (127.0.0.1:5433): two writers; fence all "
        "but one before anything else",
    )
    assert found.summary.startswith("no single primary (a, b take writes)")


def test_a_replica_of_another_server_or_not_streaming_is_named() -> None:
    found = assemble_topology(
        "orders", [primary(), replica("b", upstream="10.0.0.9:5432"), replica("c", streaming=False)]
    )
    assert found.primary == "a"
    assert found.problems == (
        "orders: replica b replicates from 10.0.0.9:5432, not from the primary a (127.0.0.1:5432)",
        "orders: replica c (127.0.0.1:5433) is not streaming",
    )


def test_an_unreachable_member_and_a_fenced_one_are_problems_not_primaries() -> None:
    down = MemberState("a", "127.0.0.1:5432", False, error="connection refused")
    fenced = MemberState("m2", "127.0.0.1:3307", True, None, read_only=True)
    found = assemble_topology("c", [down, fenced, replica("b", upstream=None)])
    assert found.primary is None
    assert found.problems == (
        "c: a (127.0.0.1:5432) cannot be reached: connection refused",
        "c: no member takes writes (asked a, m2, b)",
        "c: m2 (127.0.0.1:3307) takes no writes (read_only) and replicates from nothing: a fenced or "
        "half-switched server",
    )
    assert found.member("b").upstream is None
    with pytest.raises(KeyError, match="no member 'z'"):
        found.member("z")


def test_loopback_names_are_one_host() -> None:
    assert same_server("localhost:5432", "127.0.0.1:5432")
    assert not same_server("localhost:5432", "127.0.0.1:5433")
    assert not same_server(None, "127.0.0.1:5432")


# -- lag ---------------------------------------------------------------------------------------------


def test_lsn_text_is_a_byte_position_and_a_wal_file_names_its_timeline() -> None:
    assert lsn_bytes("0/3000148") == 0x3000148
    assert lsn_bytes("1/0") - lsn_bytes("0/FFFFFFFF") == 1
    assert timeline_of("000000020000000000000003") == 2
    with pytest.raises(ValueError, match="not a PostgreSQL LSN"):
        lsn_bytes("3000148")


def lag(bytes_: int | None = 100, seconds: float | None = 0.5, streaming: bool = True) -> ReplicationLag:
    return ReplicationLag("p", "r", bytes_, seconds, streaming, "0/10", "0/0", "test")


@pytest.mark.parametrize(
    ("measured", "within", "reason"),
    [
        (lag(), True, "r is 100 bytes and 0.500 s behind p"),
        (lag(bytes_=2000), False, "r is 2000 bytes behind p (bound 1024)"),
        (lag(seconds=6.0), False, "r is 6.000 s behind p (bound 5 s)"),
        (lag(bytes_=None), False, "r's lag in bytes is unknown (test)"),
        (lag(seconds=None), False, "r's lag in seconds is unknown (test)"),
        (lag(streaming=False), False, "r is not streaming from p"),
    ],
)
def test_lag_within_bounds_says_why(measured: ReplicationLag, within: bool, reason: str) -> None:
    assert measured.within(max_bytes=1024, max_seconds=5) == (within, reason)


STATUS = {
    "Slave_IO_Running": "Yes",
    "Slave_SQL_Running": "Yes",
    "Relay_Master_Log_File": "bin.000003",
    "Exec_Master_Log_Pos": 1000,
    "Seconds_Behind_Master": 2,
}


def test_mariadb_equal_gtids_mean_no_lag_whatever_the_files() -> None:
    found = lag_from_status(
        "r",
        "p",
        source={**STATUS, "Relay_Master_Log_File": "bin.000002"},
        replica_gtid="0-1-42",
        primary_gtid="0-1-42",
        primary_file="bin.000003",
        primary_offset=5000,
    )
    assert (found.bytes, found.seconds, found.how) == (0, 0.0, "GTID positions equal")


def test_mariadb_lag_in_the_same_binlog_file_is_the_offset_difference() -> None:
    found = lag_from_status(
        "r",
        "p",
        source=STATUS,
        replica_gtid="0-1-40",
        primary_gtid="0-1-42",
        primary_file="bin.000003",
        primary_offset=5000,
    )
    assert (found.bytes, found.seconds, found.streaming) == (4000, 2.0, True)
    assert found.primary_position == "gtid 0-1-42 at bin.000003:5000"
    assert found.replica_position == "gtid 0-1-40 at bin.000003:1000"


def test_mariadb_lag_across_a_rotation_is_unknown_and_a_stopped_sql_thread_has_no_seconds() -> None:
    found = lag_from_status(
        "r",
        "p",
        source={**STATUS, "Slave_SQL_Running": "No", "Seconds_Behind_Master": None},
        replica_gtid="0-1-40",
        primary_gtid="0-1-42",
        primary_file="bin.000004",
        primary_offset=5000,
    )
    assert (found.bytes, found.seconds, found.streaming) == (None, None, False)
    assert found.within(max_bytes=10**9, max_seconds=60) == (False, "r is not streaming from p")


def test_postgres_offers_the_switchover_verbs_with_the_protocols_parameters() -> None:
    from cloudops.engines.protocol import SwitchoverEngine

    implementation = engine("postgres")
    for verb, member in vars(SwitchoverEngine).items():
        if not callable(member) or verb.startswith("_"):
            continue
        expected = inspect.signature(member)
        found = inspect.signature(getattr(type(implementation), verb))
        assert list(found.parameters) == list(expected.parameters), f"postgres.{verb}"
        for parameter in expected.parameters.values():
            assert found.parameters[parameter.name].default == parameter.default, f"postgres.{verb}"


def test_an_unknown_postgres_fence_is_refused_by_name() -> None:
    from cloudops.engines.postgres.switchover import PostgresNode
    from cloudops.errors import ReplicationError

    node = PostgresNode("n1", "conn", "/nonexistent")
    with pytest.raises(
        ReplicationError, match=r"^t: a PostgreSQL fence is 'stop' or 'read-only', not 'kill'"
    ):
        engine("postgres").fence(node, used_by="t", how="kill")  # type: ignore[attr-defined]
