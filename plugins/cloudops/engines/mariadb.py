"""MariaDB: replication state (and, in later runbooks, dump and restore)."""

from __future__ import annotations

from cloudops.connections import get_connection
from cloudops.engines import DatabaseState, first_line


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


__all__ = ["probe"]
