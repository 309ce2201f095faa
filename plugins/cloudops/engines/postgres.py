"""PostgreSQL: replication state (and, in later runbooks, dump, restore, promote, rewind)."""

from __future__ import annotations

from cloudops.connections import get_connection
from cloudops.engines import DatabaseState, first_line

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


__all__ = ["probe"]
