"""PostgreSQL sessions: connecting (a server that cannot be reached is a clear error), turning driver
errors into errors that name the database and the step, the client programs and their versions, and the
credentials they get (a 0600 pgpass file, never argv).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.connections import get_connection
from cloudops.engines.client_tools import locate_tool, private_file, version_output
from cloudops.errors import (
    BackupSourceError,
    DatabaseUnavailableError,
    RestoreError,
    ToolMissingError,
    ToolVersionError,
    first_line,
)

if TYPE_CHECKING:
    import psycopg
    from airflow.sdk import Connection

log = logging.getLogger(__name__)


CLIENT_PACKAGE = "postgresql-client"
# Where CREATE and DROP DATABASE run from: a session cannot drop the database it is connected to.
MAINTENANCE_DATABASE = "postgres"


def client_major(version_text: str) -> tuple[int, ...]:
    """The major version in ``pg_dump --version`` output: ``(15,)``, or ``(9, 6)`` before PostgreSQL 10.

    :raises ValueError: when the text holds no PostgreSQL version.
    """
    found = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", version_text)
    if not found:
        raise ValueError(f"not a PostgreSQL client version: {version_text!r}")
    major, minor = int(found.group(1)), int(found.group(2) or 0)
    return (major,) if major >= 10 else (major, minor)


def server_major(version_num: int) -> tuple[int, ...]:
    """The major version of ``server_version_num`` (150020 → ``(15,)``, 90624 → ``(9, 6)``)."""
    major = version_num // 10000
    return (major,) if major >= 10 else (major, version_num // 100 % 100)


def _client(tool: str) -> tuple[str, str, tuple[int, ...]]:
    """Locate a PostgreSQL client program and read its version: ``(path, "15.20", (15,))``."""
    path = locate_tool(tool, CLIENT_PACKAGE)
    text = version_output(path, CLIENT_PACKAGE)
    found = re.search(r"\(PostgreSQL\)\s+(\S+)", text)
    try:
        major = client_major(text)
    except ValueError:
        raise ToolMissingError(
            path, CLIENT_PACKAGE, f"is not a PostgreSQL client (its --version said {text[:80]!r})"
        ) from None
    return path, found.group(1) if found else text, major


def _refuse_older_client(
    name: str, version: str, major: tuple[int, ...], server_version: str, server_num: int, used_by: str
) -> None:
    """pg_dump and pg_basebackup cannot be trusted with a newer server's catalogs or protocol."""
    if major < server_major(server_num):
        wanted = ".".join(str(part) for part in server_major(server_num))
        raise ToolVersionError(
            name, version, f"PostgreSQL {server_version}", used_by, f"{CLIENT_PACKAGE}-{wanted} (or newer)"
        )


def _address(conn: Connection) -> str:
    return f"{conn.host or 'local socket'}:{conn.port or 5432}"


@contextmanager
def _backup_session(
    conn: Connection,
    database: str,
    *,
    used_by: str,
    connect_timeout_seconds: int,
    query_timeout_seconds: int,
    application_name: str = "cloudops-backup",
) -> Iterator[psycopg.Connection[Any]]:
    """A session to prepare a backup (or a restore) from; a server that cannot be reached is a clear error.

    ``idle_in_transaction_session_timeout`` is off for this session because it stays idle in its
    snapshot transaction while the dump runs; ``statement_timeout`` bounds each of its own queries.
    """
    import psycopg

    try:
        session = psycopg.connect(
            host=conn.host,
            port=conn.port or 5432,
            user=conn.login,
            password=conn.password,
            dbname=database,
            connect_timeout=connect_timeout_seconds,
            application_name=application_name,
            autocommit=True,
            options=(
                f"-c statement_timeout={query_timeout_seconds * 1000} "
                "-c idle_in_transaction_session_timeout=0"
                # A connection built at run time may carry startup options of its own (a physical
                # drill's scratch cluster: over the restored cluster's per-role settings).
                + (f" {conn.extra_dejson['options']}" if conn.extra_dejson.get("options") else "")
            ),
        )
    except psycopg.Error as error:
        raise DatabaseUnavailableError(used_by, _address(conn), first_line(error)) from error
    try:
        yield session
    finally:
        session.close()


@contextmanager
def _prepared(session: psycopg.Connection[Any], conn: Connection, used_by: str) -> Iterator[None]:
    """Turn driver errors while preparing a backup into errors that name the database.

    A lost connection means the server is unavailable; anything else (a timeout, a missing privilege)
    is the backup that cannot be prepared.
    """
    import psycopg

    try:
        yield
    except psycopg.Error as error:
        if session.closed:
            raise DatabaseUnavailableError(used_by, _address(conn), first_line(error)) from error
        raise BackupSourceError(f"{used_by}: cannot prepare the backup: {first_line(error)}") from error


def _server_version(session: psycopg.Connection[Any]) -> tuple[str, int]:
    row = session.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int"
    ).fetchone()
    assert row is not None
    return str(row[0]).split()[0], int(row[1])


def _pgpass_line(conn: Connection) -> str:
    """One pgpass line for the connection's role; ``*`` for host, port and database: the file serves one
    command, which names its server in argv, and ``*`` also matches pg_basebackup's replication
    connections."""

    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    return f"*:*:*:{escape(conn.login or '')}:{escape(conn.password or '')}\n"


@contextmanager
def _credentials(
    conn: Connection, workdir: Path, *, application_name: str = "cloudops-backup"
) -> Iterator[dict[str, str]]:
    """The environment that gives libpq the password (through a 0600 pgpass file) and bounds its connect."""
    env = {"PGCONNECT_TIMEOUT": "30", "PGAPPNAME": application_name}
    sslmode = conn.extra_dejson.get("sslmode")
    if sslmode:
        env["PGSSLMODE"] = str(sslmode)
    if not conn.password:
        yield env
        return
    with private_file(workdir, ".cloudops-pgpass-", _pgpass_line(conn)) as pgpass:
        yield {**env, "PGPASSFILE": str(pgpass)}


def _target_args(conn: Connection) -> list[str]:
    args = ["-h", conn.host] if conn.host else []
    return [*args, "-p", str(conn.port or 5432), *(["-U", conn.login] if conn.login else [])]


@contextmanager
def _admin_step(
    session: psycopg.Connection[Any], conn: Connection, used_by: str, what: str
) -> Iterator[None]:
    """Turn driver errors into errors naming the database and the step; a lost server is unavailable."""
    import psycopg

    try:
        yield
    except psycopg.Error as error:
        if session.closed:
            raise DatabaseUnavailableError(used_by, _address(conn), first_line(error)) from error
        raise RestoreError(f"{used_by}: {what} on {_address(conn)}: {first_line(error)}") from error


@contextmanager
def _admin_session(
    conn: Connection,
    maintenance_database: str,
    *,
    used_by: str,
    what: str,
    connect_timeout_seconds: int,
    query_timeout_seconds: int = 600,
) -> Iterator[psycopg.Connection[Any]]:
    """A session on the maintenance database for CREATE, DROP or RENAME DATABASE; errors name ``what``."""
    with (
        _backup_session(
            conn,
            maintenance_database,
            used_by=used_by,
            connect_timeout_seconds=connect_timeout_seconds,
            query_timeout_seconds=query_timeout_seconds,
            application_name="cloudops-restore",
        ) as admin,
        _admin_step(admin, conn, used_by, what),
    ):
        yield admin


@contextmanager
def snapshot_session(
    conn_id: str | Connection,
    database: str,
    *,
    used_by: str,
    connect_timeout_seconds: int = 10,
    query_timeout_seconds: int = 3600,
) -> Iterator[psycopg.Connection[Any]]:
    """A session on ``database`` inside a REPEATABLE READ, READ ONLY transaction: every query sees one
    snapshot (for counting a restored copy and checking it).

    :raises ConnectionMissingError, DatabaseUnavailableError: as for the backup sources.
    """
    conn = get_connection(conn_id, used_by)
    with _backup_session(
        conn,
        database,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        query_timeout_seconds=query_timeout_seconds,
        application_name="cloudops-validate",
    ) as session:
        with _admin_step(session, conn, used_by, f"cannot open a snapshot of {database!r}"):
            session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield session


__all__ = ["CLIENT_PACKAGE", "MAINTENANCE_DATABASE", "client_major", "server_major", "snapshot_session"]
