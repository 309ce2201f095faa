"""MariaDB replication: the role and replication state a server reports about itself (the health
check's probe, a cluster member's state) and a replica's lag behind its primary.

Everything is read from the servers: a replica is a server with a replication source configured
(``SHOW SLAVE STATUS`` has a row; its ``Master_Host:Master_Port`` is the upstream), positions are GTIDs
(``@@gtid_binlog_pos`` on a primary, ``@@gtid_slave_pos`` on a replica) with the binlog file and offset
beside them. A primary does not list its replicas unless they set ``report_host``, so ``downstream``
stays empty: the topology is assembled from the replicas' side. ``SHOW SLAVE STATUS`` and ``SHOW MASTER
STATUS`` need the ``SLAVE MONITOR`` / ``BINLOG MONITOR`` privileges (``REPLICATION CLIENT`` before 10.5).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cloudops.connections import get_connection
from cloudops.engines import DatabaseState
from cloudops.engines.replication import MemberState, ReplicationLag, Topology, discover_topology
from cloudops.errors import ReplicationError, first_line

if TYPE_CHECKING:
    import pymysql
    from airflow.sdk import Connection

log = logging.getLogger(__name__)


def probe(conn_id: str, database: str, *, used_by: str, timeout_seconds: int = 5) -> DatabaseState:
    """Connect and report role, version and replication state; never raises for a down server.

    A server with a configured replication source is a replica; ``Seconds_Behind_Master`` is its lag.

    :raises ConnectionMissingError: when the Airflow connection does not exist.
    """
    import pymysql

    conn = get_connection(conn_id, used_by)
    try:
        session = pymysql.connect(
            host=conn.host,
            port=conn.port or 3306,
            user=conn.login,
            password=conn.password or "",
            database=conn.schema or database,
            connect_timeout=timeout_seconds,
            read_timeout=timeout_seconds,
            cursorclass=pymysql.cursors.DictCursor,
        )
    except pymysql.MySQLError as error:
        return DatabaseState(False, error=first_line(error))
    try:
        with session.cursor() as cursor:
            cursor.execute("SELECT VERSION() AS version")
            version = (cursor.fetchone() or {}).get("version")
            cursor.execute("SHOW SLAVE STATUS")
            source = cursor.fetchone()
    except pymysql.MySQLError as error:
        return DatabaseState(False, error=first_line(error))
    finally:
        session.close()
    if not source:
        return DatabaseState(True, "primary", version, replicas_connected=None)
    streaming = source.get("Slave_IO_Running") == "Yes" and source.get("Slave_SQL_Running") == "Yes"
    lag = source.get("Seconds_Behind_Master")
    return DatabaseState(
        True,
        "replica",
        version,
        replication_lag_seconds=float(lag) if lag is not None else None,
        streaming=streaming,
    )


def _address(conn: Connection) -> str:
    return f"{conn.host or 'localhost'}:{conn.port or 3306}"


@contextmanager
def _replication_session(conn: Connection, timeout_seconds: int) -> Iterator[pymysql.Connection[Any]]:
    """A short session without a current database, whose rows come back as dicts."""
    import pymysql

    session = pymysql.connect(
        host=conn.host or "localhost",
        port=conn.port or 3306,
        user=conn.login,
        password=conn.password or "",
        connect_timeout=timeout_seconds,
        read_timeout=timeout_seconds,
        write_timeout=timeout_seconds,
        cursorclass=pymysql.cursors.DictCursor,
        autocommit=True,
    )
    try:
        yield session
    finally:
        session.close()


def _one(session: pymysql.Connection[Any], query: str) -> dict[str, Any] | None:
    with session.cursor() as cursor:
        cursor.execute(query)
        row = cursor.fetchone()
    return dict(row) if row else None


_MEMBER_QUERY = (
    "SELECT VERSION() AS version, @@GLOBAL.read_only AS read_only, @@GLOBAL.gtid_binlog_pos AS binlog_pos, "
    "@@GLOBAL.gtid_slave_pos AS slave_pos"
)


def member_state(conn_id: str, *, name: str, used_by: str, timeout_seconds: int = 5) -> MemberState:
    """What the server says about itself: a replica (a replication source is configured: its upstream,
    whether IO and SQL threads run, ``@@gtid_slave_pos``) or a primary (``read_only`` off,
    ``@@gtid_binlog_pos``). A server with ``read_only`` on and no source takes no writes and follows
    nothing: its role is None (a fenced or half-switched server), which the topology reports.

    Never raises for a down server: ``reachable`` is False and ``error`` says why.

    :raises ConnectionMissingError: the Airflow connection does not exist.
    """
    import pymysql

    conn = get_connection(conn_id, used_by)
    address = _address(conn)
    try:
        with _replication_session(conn, timeout_seconds) as session:
            server = _one(session, _MEMBER_QUERY) or {}
            source = _one(session, "SHOW SLAVE STATUS")
    except pymysql.MySQLError as error:
        return MemberState(name, address, False, error=first_line(error))
    read_only = bool(int(server.get("read_only") or 0))
    version = server.get("version")
    if source:
        return MemberState(
            name,
            address,
            True,
            "replica",
            upstream=f"{source.get('Master_Host')}:{source.get('Master_Port')}",
            streaming=source.get("Slave_IO_Running") == "Yes" and source.get("Slave_SQL_Running") == "Yes",
            position=str(server.get("slave_pos") or ""),
            read_only=read_only,
            version=version,
        )
    return MemberState(
        name,
        address,
        True,
        None if read_only else "primary",
        position=str(server.get("binlog_pos") or ""),
        read_only=read_only,
        version=version,
    )


def topology(cluster: str, members: Mapping[str, str], *, used_by: str, timeout_seconds: int = 5) -> Topology:
    """Ask every member (name → connection id) what it is; judge the cluster (see
    :func:`cloudops.engines.replication.assemble_topology`)."""
    found = discover_topology(
        cluster,
        members,
        lambda name, conn_id: member_state(
            conn_id, name=name, used_by=used_by, timeout_seconds=timeout_seconds
        ),
    )
    log.info("%s (%s): %s", cluster, used_by, found.summary)
    for problem in found.problems:
        log.warning("%s", problem)
    return found


def lag_from_status(
    replica: str,
    primary: str,
    *,
    source: dict[str, Any],
    replica_gtid: str,
    primary_gtid: str,
    primary_file: str,
    primary_offset: int,
) -> ReplicationLag:
    """The lag from what the two servers said (pure): ``SHOW SLAVE STATUS`` and ``@@gtid_slave_pos`` of
    the replica, ``@@gtid_binlog_pos`` and ``SHOW MASTER STATUS`` of the primary.

    Equal GTID positions mean nothing is left to apply: 0 bytes, 0 seconds. Otherwise bytes are the
    primary's binlog offset minus the replica's executed offset when both are in the same binlog file,
    None (unknown) across a rotation; seconds are ``Seconds_Behind_Master`` (None while the SQL thread
    is stopped).
    """
    streaming = source.get("Slave_IO_Running") == "Yes" and source.get("Slave_SQL_Running") == "Yes"
    executed_file = str(source.get("Relay_Master_Log_File") or "")
    executed = int(source.get("Exec_Master_Log_Pos") or 0)
    behind_seconds = source.get("Seconds_Behind_Master")
    caught_up = bool(primary_gtid) and replica_gtid == primary_gtid
    if caught_up:
        behind_bytes: int | None = 0
        seconds: float | None = 0.0
    else:
        behind_bytes = max(0, primary_offset - executed) if executed_file == primary_file else None
        seconds = None if behind_seconds is None else float(behind_seconds)
    return ReplicationLag(
        primary=primary,
        replica=replica,
        bytes=behind_bytes,
        seconds=seconds,
        streaming=streaming,
        primary_position=f"gtid {primary_gtid or '-'} at {primary_file}:{primary_offset}",
        replica_position=f"gtid {replica_gtid or '-'} at {executed_file}:{executed}",
        how=(
            "GTID positions equal"
            if caught_up
            else "binlog offsets in the same file and Seconds_Behind_Master"
            if behind_bytes is not None
            else "the replica executes an older binlog file than the primary writes: bytes unknown"
        ),
    )


def lag(
    primary_conn_id: str, replica_conn_id: str, *, used_by: str, timeout_seconds: int = 5
) -> ReplicationLag:
    """How far the replica is behind the primary, read from the replica first, then from the primary
    (see :func:`lag_from_status`).

    :raises ReplicationError: the replica has no replication source, the primary has one or no binlog,
        or either cannot be reached.
    """
    import pymysql

    replica_conn = get_connection(replica_conn_id, used_by)
    primary_conn = get_connection(primary_conn_id, used_by)
    try:
        with _replication_session(replica_conn, timeout_seconds) as session:
            source = _one(session, "SHOW SLAVE STATUS")
            replica_server = _one(session, _MEMBER_QUERY) or {}
    except pymysql.MySQLError as error:
        raise ReplicationError(
            f"{used_by}: cannot read the lag of {replica_conn_id} ({_address(replica_conn)}): "
            f"{first_line(error)}"
        ) from error
    if not source:
        raise ReplicationError(
            f"{used_by}: {replica_conn_id} ({_address(replica_conn)}) is not a replica (SHOW SLAVE STATUS is "
            "empty: no replication source is configured): it has no lag to read"
        )
    try:
        with _replication_session(primary_conn, timeout_seconds) as session:
            primary_source = _one(session, "SHOW SLAVE STATUS")
            primary_server = _one(session, _MEMBER_QUERY) or {}
            binlog = _one(session, "SHOW MASTER STATUS")
    except pymysql.MySQLError as error:
        raise ReplicationError(
            f"{used_by}: cannot read the binlog position of {primary_conn_id} ({_address(primary_conn)}): "
            f"{first_line(error)}"
        ) from error
    if primary_source:
        raise ReplicationError(
            f"{used_by}: {primary_conn_id} ({_address(primary_conn)}) replicates from "
            f"{primary_source.get('Master_Host')}:{primary_source.get('Master_Port')}: the lag of "
            f"{replica_conn_id} is measured against the server that takes writes"
        )
    if not binlog:
        raise ReplicationError(
            f"{used_by}: {primary_conn_id} ({_address(primary_conn)}) writes no binary log (log_bin is off): "
            "nothing replicates from it"
        )
    return lag_from_status(
        replica_conn_id,
        primary_conn_id,
        source=source,
        replica_gtid=str(replica_server.get("slave_pos") or ""),
        primary_gtid=str(primary_server.get("binlog_pos") or ""),
        primary_file=str(binlog.get("File") or ""),
        primary_offset=int(binlog.get("Position") or 0),
    )


__all__ = ["lag", "lag_from_status", "member_state", "probe", "topology"]
