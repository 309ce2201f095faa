"""MariaDB sessions: connecting (a server that cannot be reached is a clear error), turning driver errors
into errors that name the database and the step, the client programs, their releases and their
``--sandbox``, and the option file that hands them the password (never argv).
"""

from __future__ import annotations

import functools
import logging
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.connections import get_connection
from cloudops.engines.client_tools import (
    VERSION_TIMEOUT_SECONDS,
    locate_tool,
    version_output,
)
from cloudops.errors import (
    BackupSourceError,
    DatabaseUnavailableError,
    RestoreError,
    ToolMissingError,
    first_line,
)

if TYPE_CHECKING:
    import pymysql
    from airflow.sdk import Connection

log = logging.getLogger(__name__)


CLIENT_PACKAGE = "mariadb-client"
# Client errors that mean the server went away rather than refused something.
_CONNECTION_LOST = {2003, 2006, 2013}
# ER_LOCK_WAIT_TIMEOUT: a lock (a metadata lock too) was not granted within lock_wait_timeout.
LOCK_WAIT_TIMEOUT = 1205


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _rows(session: pymysql.Connection[Any], query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` with a tuple cursor, whatever cursor class the caller's session defaults to."""
    import pymysql

    with session.cursor(pymysql.cursors.Cursor) as cursor:
        cursor.execute(query, args or None)
        return list(cursor.fetchall())


def client_release(version_text: str) -> tuple[int, int, int]:
    """The MariaDB release of ``mariadb-dump --version`` output (``Distrib 10.11.19-MariaDB`` in 10.x,
    ``from 11.4.2-MariaDB`` in 11.x): ``(10, 11, 19)``.

    :raises ValueError: when the text holds no MariaDB release.
    """
    found = re.search(r"(?:Distrib|from)\s+(\d+)\.(\d+)(?:\.(\d+))?", version_text)
    if not found:
        raise ValueError(f"not a MariaDB client version: {version_text!r}")
    return int(found.group(1)), int(found.group(2)), int(found.group(3) or 0)


def server_release(version: str) -> tuple[int, int, int]:
    """The release in ``VERSION()`` (``10.11.19-MariaDB-0+deb12u1-log`` → ``(10, 11, 19)``)."""
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not found:
        raise ValueError(f"not a MariaDB server version: {version!r}")
    return int(found.group(1)), int(found.group(2)), int(found.group(3) or 0)


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in release)


def _client(tool: str) -> tuple[str, tuple[int, int, int]]:
    path = locate_tool(tool, CLIENT_PACKAGE)
    text = version_output(path, CLIENT_PACKAGE)
    try:
        return path, client_release(text)
    except ValueError:
        raise ToolMissingError(
            path, CLIENT_PACKAGE, f"is not a MariaDB client (its --version said {text[:80]!r})"
        ) from None


# The client's --sandbox (refuse client commands that touch files or run programs) came with these releases.
SANDBOX_RELEASES = ((10, 5, 25), (10, 6, 18), (10, 11, 8))


@functools.lru_cache(maxsize=8)
def _has_sandbox(path: str, modified: float) -> bool:
    """Whether the client at ``path`` (as modified then) lists ``--sandbox`` in its ``--help``."""
    try:
        done = subprocess.run(
            [path, "--help"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ToolMissingError(path, CLIENT_PACKAGE, f"cannot run ({error})") from None
    return re.search(r"^\s*--sandbox\b", done.stdout, re.MULTILINE) is not None


def _require_sandbox(path: str, release: tuple[int, int, int]) -> None:
    """Refuse a mariadb client that cannot run in sandbox mode: a dump could then run client commands.

    :raises ToolMissingError: naming the client, its release and the releases that have the option.
    """
    if not _has_sandbox(path, Path(path).stat().st_mtime):
        wanted = ", ".join(_dotted(minimum) for minimum in SANDBOX_RELEASES)
        raise ToolMissingError(
            path,
            CLIENT_PACKAGE,
            f"(MariaDB {_dotted(release)}) has no --sandbox option, without which a dump could run commands "
            f"on this host, so no dump is loaded with it (the option came with {wanted}, 11.0.6 and later)",
        )


def _address(conn: Connection) -> str:
    return f"{conn.host or 'localhost'}:{conn.port or 3306}"


def _backup_session(
    conn: Connection,
    database: str | None,
    *,
    used_by: str,
    connect_timeout_seconds: int,
    read_timeout_seconds: int,
) -> pymysql.Connection[Any]:
    """A session to prepare a backup from; a server that cannot be reached is a clear error."""
    import pymysql

    try:
        return pymysql.connect(
            host=conn.host or "localhost",
            port=conn.port or 3306,
            user=conn.login,
            password=conn.password or "",
            database=database,
            charset=str(conn.extra_dejson.get("charset", "utf8mb4")),
            connect_timeout=connect_timeout_seconds,
            read_timeout=read_timeout_seconds,
            write_timeout=read_timeout_seconds,
            autocommit=True,
        )
    except pymysql.MySQLError as error:
        raise DatabaseUnavailableError(used_by, _address(conn), first_line(error)) from error


@contextmanager
def _step(conn: Connection, used_by: str, what: str) -> Iterator[None]:
    """Turn driver errors into errors that name the database and the step that failed."""
    import pymysql

    try:
        yield
    except pymysql.MySQLError as error:
        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        if code in _CONNECTION_LOST:
            raise DatabaseUnavailableError(used_by, _address(conn), first_line(error)) from error
        raise BackupSourceError(f"{used_by}: {what}: {first_line(error)}") from error


def _option_file(conn: Connection) -> str:
    """A ``[client]`` option file holding only the password, quoted so that any character survives."""
    password = (conn.password or "").replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'# cloudops: the password of one mariadb-dump run\n[client]\npassword="{password}"\n'


def _close(session: pymysql.Connection[Any]) -> None:
    if session.open:
        session.close()


@contextmanager
def _admin_session(
    conn: Connection, *, used_by: str, connect_timeout_seconds: int, what: str
) -> Iterator[pymysql.Connection[Any]]:
    """A session without a current database, for CREATE and DROP DATABASE; driver errors name the step."""
    session = _backup_session(
        conn,
        None,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        read_timeout_seconds=600,
    )
    try:
        with _restore_step(conn, used_by, what):
            # A DROP waits for metadata locks of open transactions on the database: bound that wait.
            _rows(session, "SET SESSION lock_wait_timeout = 60")
            yield session
    finally:
        _close(session)


@contextmanager
def _restore_step(conn: Connection, used_by: str, what: str) -> Iterator[None]:
    import pymysql

    try:
        yield
    except pymysql.MySQLError as error:
        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        if code in _CONNECTION_LOST:
            raise DatabaseUnavailableError(used_by, _address(conn), first_line(error)) from error
        raise RestoreError(f"{used_by}: {what} on {_address(conn)}: {first_line(error)}") from error


@contextmanager
def snapshot_session(
    conn_id: str | Connection,
    database: str,
    *,
    used_by: str,
    connect_timeout_seconds: int = 10,
    query_timeout_seconds: int = 3600,
) -> Iterator[pymysql.Connection[Any]]:
    """A session on ``database`` inside ``START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY``: every
    query sees one snapshot (for counting a restored copy and checking it).

    :raises ConnectionMissingError, DatabaseUnavailableError: as for the backup source.
    """
    conn = get_connection(conn_id, used_by)
    session = _backup_session(
        conn,
        database,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        read_timeout_seconds=query_timeout_seconds,
    )
    try:
        with _restore_step(conn, used_by, f"cannot open a snapshot of {database!r}"):
            _rows(session, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            _rows(session, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        yield session
    finally:
        _close(session)


__all__ = ["CLIENT_PACKAGE", "SANDBOX_RELEASES", "client_release", "server_release", "snapshot_session"]
