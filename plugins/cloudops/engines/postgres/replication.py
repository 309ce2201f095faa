"""PostgreSQL replication: the role and replication state a server reports about itself (the health
check's probe, a cluster member's state) and a replica's lag behind its primary, in bytes and seconds.

Everything is read from the servers: ``pg_is_in_recovery()`` says who is a replica,
``pg_stat_wal_receiver`` whom it follows, ``pg_stat_replication`` whom a primary serves, the WAL file
name of the current LSN the primary's timeline. Reading ``pg_stat_replication`` and
``pg_stat_wal_receiver`` in full needs superuser or ``pg_monitor``; without it the addresses read NULL
and the upstream is unknown (never a problem by itself).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cloudops.connections import get_connection
from cloudops.engines import DatabaseState
from cloudops.engines.replication import (
    Downstream,
    MemberState,
    ReplicationLag,
    Topology,
    discover_topology,
)
from cloudops.errors import ReplicationError, first_line

if TYPE_CHECKING:
    import psycopg
    from airflow.sdk import Connection

log = logging.getLogger(__name__)

_PRIMARY_QUERY = """
SELECT current_setting('server_version'),
       (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')
"""
# A replica with nothing left to replay is caught up, however long ago the last commit was:
# measuring "now - last replayed commit" alone would report an idle primary as lag.
_REPLICA_QUERY = """
SELECT current_setting('server_version'),
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)
       END,
       EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')
"""


def probe(conn_id: str, database: str, *, used_by: str, timeout_seconds: int = 5) -> DatabaseState:
    """Connect and report role, version and replication state; never raises for a down server.

    :raises ConnectionMissingError: when the Airflow connection does not exist.
    """
    import psycopg

    conn = get_connection(conn_id, used_by)
    try:
        with psycopg.connect(
            host=conn.host,
            port=conn.port or 5432,
            user=conn.login,
            password=conn.password,
            dbname=conn.schema or database,
            connect_timeout=timeout_seconds,
            application_name="cloudops",
            options=f"-c statement_timeout={timeout_seconds * 1000}",
        ) as session:
            (in_recovery,) = session.execute("SELECT pg_is_in_recovery()").fetchone() or (False,)
            if in_recovery:
                version, lag, streaming = session.execute(_REPLICA_QUERY).fetchone() or (None, None, False)
                return DatabaseState(
                    True, "replica", version, replication_lag_seconds=float(lag), streaming=bool(streaming)
                )
            version, replicas = session.execute(_PRIMARY_QUERY).fetchone() or (None, 0)
            return DatabaseState(True, "primary", version, replicas_connected=int(replicas))
    except psycopg.Error as error:
        return DatabaseState(False, error=first_line(error))


def _address(conn: Connection) -> str:
    return f"{conn.host or 'local socket'}:{conn.port or 5432}"


@contextmanager
def _replication_session(conn: Connection, timeout_seconds: float) -> Iterator[psycopg.Connection[Any]]:
    """A short autocommit session on the connection's database (``postgres`` when it names none)."""
    import psycopg

    with psycopg.connect(
        host=conn.host,
        port=conn.port or 5432,
        user=conn.login,
        password=conn.password,
        dbname=conn.schema or "postgres",
        connect_timeout=max(1, int(timeout_seconds)),
        application_name="cloudops-replication",
        autocommit=True,
        options=f"-c statement_timeout={int(timeout_seconds * 1000)}",
    ) as session:
        yield session


def lsn_bytes(lsn: str) -> int:
    """The byte position of a ``pg_lsn`` in its text form (``0/3000148`` → 50331976).

    :raises ValueError: not an LSN.
    """
    high, slash, low = lsn.partition("/")
    if not slash:
        raise ValueError(f"not a PostgreSQL LSN: {lsn!r}")
    return (int(high, 16) << 32) + int(low, 16)


def timeline_of(wal_file: str) -> int:
    """The timeline id in a WAL file name (its first 8 hex digits: ``000000020000000000000003`` → 2)."""
    return int(wal_file[:8], 16)


_MEMBER_QUERY = "SELECT pg_is_in_recovery(), current_setting('server_version')"
_PRIMARY_MEMBER = """
SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())
"""
_DOWNSTREAM = """
SELECT application_name, client_addr::text, state, sync_state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint
FROM pg_stat_replication ORDER BY application_name, client_addr
"""
# received_tli: the timeline the replica streams on; its last checkpoint's when the receiver is down.
_REPLICA_MEMBER = """
SELECT pg_last_wal_replay_lsn()::text,
       COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                (SELECT timeline_id FROM pg_control_checkpoint())),
       (SELECT status FROM pg_stat_wal_receiver),
       (SELECT sender_host FROM pg_stat_wal_receiver),
       (SELECT sender_port FROM pg_stat_wal_receiver)
"""


def member_state(conn_id: str, *, name: str, used_by: str, timeout_seconds: int = 5) -> MemberState:
    """What the server says about itself: primary (its LSN, timeline and the replicas it serves) or
    replica (its replayed LSN, timeline, the server it follows and whether it streams).

    Never raises for a down server: ``reachable`` is False and ``error`` says why.

    :raises ConnectionMissingError: the Airflow connection does not exist.
    """
    import psycopg

    conn = get_connection(conn_id, used_by)
    address = _address(conn)
    try:
        with _replication_session(conn, timeout_seconds) as session:
            in_recovery, version = session.execute(_MEMBER_QUERY).fetchone() or (False, None)
            if not in_recovery:
                lsn, wal_file = session.execute(_PRIMARY_MEMBER).fetchone() or (None, None)
                downstream = tuple(
                    Downstream(
                        name=str(app),
                        address=client,
                        state=str(state),
                        sync_state=str(sync),
                        replay_lag_bytes=None if behind is None else int(behind),
                    )
                    for app, client, state, sync, behind in session.execute(_DOWNSTREAM).fetchall()
                )
                return MemberState(
                    name,
                    address,
                    True,
                    "primary",
                    position=lsn,
                    timeline=timeline_of(wal_file) if wal_file else None,
                    read_only=False,
                    downstream=downstream,
                    version=version,
                )
            lsn, timeline, status, sender_host, sender_port = session.execute(_REPLICA_MEMBER).fetchone() or (
                None,
                None,
                None,
                None,
                None,
            )
    except psycopg.Error as error:
        return MemberState(name, address, False, error=first_line(error))
    return MemberState(
        name,
        address,
        True,
        "replica",
        upstream=_upstream(conn, sender_host, sender_port),
        streaming=status == "streaming",
        position=lsn,
        timeline=int(timeline) if timeline is not None else None,
        read_only=True,
        version=version,
    )


def _upstream(conn: Connection, sender_host: str | None, sender_port: int | None) -> str | None:
    """The server a replica streams from as ``host:port``; a Unix socket folder (``/run/...``) is a
    server on the replica's own machine, named by the host the replica was reached at."""
    if not sender_host:
        return None
    host = (conn.host or "localhost") if sender_host.startswith("/") else sender_host
    return f"{host}:{sender_port}"


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


# The seconds as the probe measures them (see _REPLICA_QUERY).
_REPLICA_LAG = """
SELECT pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)
       END,
       EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')
"""
_PRIMARY_LSN = "SELECT pg_is_in_recovery(), pg_current_wal_lsn()::text"


def lag(
    primary_conn_id: str, replica_conn_id: str, *, used_by: str, timeout_seconds: int = 5
) -> ReplicationLag:
    """How far the replica is behind the primary: bytes of WAL the replica has not replayed (the
    primary's current LSN minus the replica's replay LSN, the replica read first so the figure errs
    high) and seconds (the replica's own measure: 0 when it has replayed all it received, else the age
    of the newest transaction it replayed; bytes cover what it has not received yet).

    :raises ReplicationError: the replica is not in recovery, the primary is, or either cannot be reached.
    """
    import psycopg

    replica_conn = get_connection(replica_conn_id, used_by)
    primary_conn = get_connection(primary_conn_id, used_by)
    try:
        with _replication_session(replica_conn, timeout_seconds) as session:
            row = session.execute(_REPLICA_LAG).fetchone()
    except psycopg.Error as error:
        raise ReplicationError(
            f"{used_by}: cannot read the lag of {replica_conn_id} ({_address(replica_conn)}): "
            f"{first_line(error)}"
        ) from error
    assert row is not None
    in_recovery, replayed, seconds, streaming = row
    if not in_recovery:
        raise ReplicationError(
            f"{used_by}: {replica_conn_id} ({_address(replica_conn)}) is not a replica (not in recovery): "
            "it has no lag to read; is it the primary now?"
        )
    try:
        with _replication_session(primary_conn, timeout_seconds) as session:
            primary_in_recovery, current = session.execute(_PRIMARY_LSN).fetchone() or (None, None)
    except psycopg.Error as error:
        raise ReplicationError(
            f"{used_by}: cannot read the WAL position of {primary_conn_id} ({_address(primary_conn)}): "
            f"{first_line(error)}"
        ) from error
    if primary_in_recovery:
        raise ReplicationError(
            f"{used_by}: {primary_conn_id} ({_address(primary_conn)}) is in recovery, not a primary: the lag "
            f"of {replica_conn_id} is measured against the server that takes writes"
        )
    behind = None if replayed is None else max(0, lsn_bytes(str(current)) - lsn_bytes(str(replayed)))
    return ReplicationLag(
        primary=primary_conn_id,
        replica=replica_conn_id,
        bytes=behind,
        seconds=float(seconds),
        streaming=bool(streaming),
        primary_position=str(current),
        replica_position=str(replayed),
        how="pg_current_wal_lsn() on the primary minus pg_last_wal_replay_lsn() on the replica, read first",
    )


def promote(
    conn_id: str,
    *,
    used_by: str,
    old_primary_conn_id: str | None = None,
    wait_seconds: int = 60,
    timeout_seconds: int = 5,
) -> str:
    """Promote the replica ``conn_id`` to primary (``pg_promote(wait => true)``); return what was done
    and why.

    Guards, read from the servers right before acting: a server that is not in recovery is already a
    primary (nothing is done, and the answer says so); when ``old_primary_conn_id`` is given and that
    server still takes writes, the promotion is refused, because it would make two writers (fence or
    stop it first); an unreachable candidate is refused. The plan is logged before the call.

    :param old_primary_conn_id: the primary this replica follows, checked to be down or fenced.
    :param wait_seconds: how long ``pg_promote`` waits for the promotion to finish.
    :return: the decision and its reason (``promoted ... now a primary on timeline 2 ...``, or
        ``no action: ... is already a primary ...``).
    :raises ReplicationError: a guard refused, or the promotion did not finish within ``wait_seconds``.
    """
    import psycopg

    candidate = member_state(conn_id, name=conn_id, used_by=used_by, timeout_seconds=timeout_seconds)
    if not candidate.reachable:
        raise ReplicationError(
            f"{used_by}: cannot promote {conn_id} ({candidate.address}): it cannot be reached: "
            f"{candidate.error}"
        )
    if candidate.role == "primary":
        decision = (
            f"no action: {conn_id} ({candidate.address}) is already a primary (not in recovery, timeline "
            f"{candidate.timeline})"
        )
        log.info("%s: %s", used_by, decision)
        return decision
    if old_primary_conn_id is not None:
        old = member_state(
            old_primary_conn_id, name=old_primary_conn_id, used_by=used_by, timeout_seconds=timeout_seconds
        )
        if old.reachable and old.role == "primary":
            raise ReplicationError(
                f"{used_by}: refusing to promote {conn_id} ({candidate.address}): {old_primary_conn_id} "
                f"({old.address}) still takes writes, and a promotion now would make two writers; stop or "
                "fence it first"
            )
    log.info(
        "%s: plan: promote %s (%s), a replica on timeline %s replayed up to %s, waiting at most %d s",
        used_by,
        conn_id,
        candidate.address,
        candidate.timeline,
        candidate.position,
        wait_seconds,
    )
    conn = get_connection(conn_id, used_by)
    try:
        with _replication_session(conn, wait_seconds + timeout_seconds) as session:
            row = session.execute("SELECT pg_promote(true, %s)", [wait_seconds]).fetchone()
    except psycopg.Error as error:
        raise ReplicationError(
            f"{used_by}: promoting {conn_id} ({candidate.address}) failed: {first_line(error)}"
        ) from error
    if not (row and row[0]):
        raise ReplicationError(
            f"{used_by}: {conn_id} ({candidate.address}) did not finish its promotion within "
            f"{wait_seconds} s: it may still finish; read its state before acting again"
        )
    after = member_state(conn_id, name=conn_id, used_by=used_by, timeout_seconds=timeout_seconds)
    decision = (
        f"promoted {conn_id} ({candidate.address}): now a primary on timeline {after.timeline} (was a "
        f"replica on timeline {candidate.timeline}, replayed up to {candidate.position})"
    )
    log.info("%s: %s", used_by, decision)
    return decision


__all__ = ["lag", "lsn_bytes", "member_state", "probe", "promote", "timeline_of", "topology"]
