"""MariaDB: replication state, the backup source (mariadb-dump) with its manifest facts, and restores of
its SQL dumps into new (scratch) databases."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.connections import get_connection
from cloudops.engines import BackupSource, DatabaseState, DumpCommand, RestoreResult
from cloudops.engines.client_tools import locate_tool, private_file, run_restore_tool, version_output
from cloudops.engines.scratch import (
    MARKER_MAX_LENGTH,
    check_scratch,
    create_scratch,
    drop_scratch,
    is_scratch_name,
    leftover_scratch,
)
from cloudops.errors import (
    BackupSourceError,
    DatabaseUnavailableError,
    RestoreError,
    RestoreRefused,
    ToolMissingError,
    ToolVersionError,
    first_line,
)

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


# -- backups -------------------------------------------------------------------------------------------

CLIENT_PACKAGE = "mariadb-client"
FINGERPRINT_VERSION = 1  # part of what is hashed: a change of the algorithm changes every fingerprint
# Client errors that mean the server went away rather than refused something.
_CONNECTION_LOST = {2003, 2006, 2013}

_TABLES = """
SELECT TABLE_NAME, ENGINE, TABLE_COLLATION FROM information_schema.TABLES
WHERE TABLE_SCHEMA = %s AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')
ORDER BY TABLE_NAME
"""
_COLUMNS = """
SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA, GENERATION_EXPRESSION,
       CHARACTER_SET_NAME, COLLATION_NAME
FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, ORDINAL_POSITION
"""
_INDEXES = """
SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME, SUB_PART, INDEX_TYPE, COLLATION
FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX
"""
_CONSTRAINTS = """
SELECT TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE FROM information_schema.TABLE_CONSTRAINTS
WHERE CONSTRAINT_SCHEMA = %s
"""
_KEY_COLUMNS = """
SELECT TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, ORDINAL_POSITION,
       REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME
FROM information_schema.KEY_COLUMN_USAGE WHERE CONSTRAINT_SCHEMA = %s
ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION
"""
_REFERENTIAL_RULES = """
SELECT TABLE_NAME, CONSTRAINT_NAME, UPDATE_RULE, DELETE_RULE FROM information_schema.REFERENTIAL_CONSTRAINTS
WHERE CONSTRAINT_SCHEMA = %s
"""
_CHECKS = """
SELECT TABLE_NAME, CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS
WHERE CONSTRAINT_SCHEMA = %s
"""


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _rows(session: pymysql.Connection[Any], query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` with a tuple cursor, whatever cursor class the caller's session defaults to."""
    import pymysql

    with session.cursor(pymysql.cursors.Cursor) as cursor:
        cursor.execute(query, args or None)
        return list(cursor.fetchall())


def _current_database(session: pymysql.Connection[Any]) -> str:
    (row,) = _rows(session, "SELECT DATABASE()")
    if not row[0]:
        raise ValueError("the session has no current database: connect with database=... or run USE")
    return str(row[0])


def table_row_counts(session: pymysql.Connection[Any]) -> dict[str, int]:
    """Count the rows of every base table of the session's current database exactly.

    Keys are bare table names: in MariaDB the database is the schema, and a restore drill loads the
    dump into a database of another name. Run it inside ``START TRANSACTION WITH CONSISTENT SNAPSHOT``
    so that all the counts come from one snapshot.
    """
    database = _current_database(session)
    counts: dict[str, int] = {}
    for table, _engine, _collation in _rows(session, _TABLES, database):
        (row,) = _rows(session, f"SELECT COUNT(*) FROM {_quote(table)}")
        counts[str(table)] = int(row[0])
    return counts


def schema_fingerprint(session: pymysql.Connection[Any]) -> str:
    """Return a SHA-256 of the current database's table definitions that a restored copy reproduces.

    What is hashed: per base table (sorted by name), its engine and collation, its columns in order
    (name, type, nullability, default, extra, generation expression, character set, collation), its
    indexes, its constraints (primary key, unique, foreign key with rules, check). Nothing a restore
    changes is in it: no database name (a reference into the same database is recorded as such), no
    AUTO_INCREMENT counter, no sizes or statistics.
    """
    database = _current_database(session)
    tables: dict[str, dict[str, Any]] = {
        str(name): {
            "table": name,
            "engine": engine,
            "collation": collation,
            "columns": [],
            "indexes": [],
            "constraints": {},
        }
        for name, engine, collation in _rows(session, _TABLES, database)
    }

    def of(table: Any) -> dict[str, Any] | None:
        return tables.get(str(table))  # None for views, whose columns and keys are listed too

    for table, *column in _rows(session, _COLUMNS, database):
        if (described := of(table)) is not None:
            described["columns"].append(column)
    for table, *index_column in _rows(session, _INDEXES, database):
        if (described := of(table)) is not None:
            described["indexes"].append(index_column)
    for table, name, kind in _rows(session, _CONSTRAINTS, database):
        if (described := of(table)) is not None:
            described["constraints"][name] = {"type": kind, "columns": []}
    for table, name, column, position, ref_schema, ref_table, ref_column in _rows(
        session, _KEY_COLUMNS, database
    ):
        described = of(table)
        if described is not None and name in described["constraints"]:
            same_database = ref_schema is None or ref_schema == database
            described["constraints"][name]["columns"].append(
                [column, position, None if same_database else ref_schema, ref_table, ref_column]
            )
    for table, name, on_update, on_delete in _rows(session, _REFERENTIAL_RULES, database):
        described = of(table)
        if described is not None and name in described["constraints"]:
            described["constraints"][name].update(on_update=on_update, on_delete=on_delete)
    for table, name, clause in _rows(session, _CHECKS, database):
        described = of(table)
        if described is not None and name in described["constraints"]:
            described["constraints"][name]["check"] = clause
    document = {
        "fingerprint": f"cloudops-mariadb-{FINGERPRINT_VERSION}",
        "tables": [tables[name] for name in sorted(tables)],
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


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


_DUMP_READING_ROWS = """
SELECT ID FROM information_schema.PROCESSLIST
WHERE ID > %s AND USER = %s AND DB = %s AND INFO LIKE 'SELECT /*!40001 SQL\\_NO\\_CACHE */ %%'
"""


class _GlobalReadLock:
    """``FLUSH TABLES WITH READ LOCK`` in a session of its own, held until the dump's snapshot exists.

    While it is held nothing commits, so every consistent snapshot taken meanwhile sees the same data at
    the same binlog position. A watcher thread polls the process list and releases the lock as soon as it
    sees the dump reading rows: a connection opened after the source was prepared, with the backup's
    account and database, running mariadb-dump's data query (``SELECT /*!40001 SQL_NO_CACHE */``), which
    mariadb-dump only sends after ``START TRANSACTION WITH CONSISTENT SNAPSHOT``. The query text matters:
    an application connecting with the same account is not taken for the dump. A dump too quick to be
    seen ran entirely under the lock, which :meth:`dump_finished` then confirms; if neither happens within
    the bound, the lock is released anyway and the facts are not vouched for. Each successful query of the
    watcher also proves that the lock session, hence the lock, is still alive.
    """

    def __init__(
        self,
        session: pymysql.Connection[Any],
        *,
        login: str,
        database: str,
        dump_start_timeout_seconds: float,
        join_timeout_seconds: float,
        poll_seconds: float = 0.02,
    ) -> None:
        self.session = session
        self.join_timeout_seconds = join_timeout_seconds
        self.login, self.database = login, database
        self.dump_start_timeout_seconds = dump_start_timeout_seconds
        self.poll_seconds = poll_seconds
        self.confirmed = False
        self.problem: str | None = None
        self.held_seconds: float | None = None
        self._acquired_at = 0.0
        self._dump_exited = False
        self._abandoned = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, lock_wait_timeout_seconds: int) -> None:
        """Take the lock, waiting at most ``lock_wait_timeout_seconds`` for running writes to end.

        While FLUSH TABLES WITH READ LOCK waits, new writes queue behind it: the bound keeps a long
        running write from stalling the server for longer than that.
        """
        _rows(self.session, f"SET SESSION lock_wait_timeout = {int(lock_wait_timeout_seconds)}")
        _rows(self.session, "FLUSH TABLES WITH READ LOCK")
        self._acquired_at = time.monotonic()

    def watch_for_dump(self, after_connection_id: int) -> None:
        """Release the lock once a connection newer than ``after_connection_id`` reads rows for the dump."""
        self._thread = threading.Thread(
            target=self._watch, args=(after_connection_id,), name="cloudops-ftwrl-watch", daemon=True
        )
        self._thread.start()

    def dump_finished(self) -> bool:
        """Report that the dump exited 0; return whether its snapshot was taken under the lock."""
        self._dump_exited = True
        self._stop()
        return self.confirmed

    def release(self) -> None:
        """Release the lock now, whatever the dump is doing (the context is closing)."""
        self._abandoned = True
        self._stop()
        if self._thread is None:
            self._unlock()

    def _stop(self) -> None:
        self._wake.set()
        if self._thread is not None:
            # One poll query, bounded by the session's read timeout, is all the watcher can be busy with.
            self._thread.join(timeout=self.join_timeout_seconds)

    def _watch(self, after_connection_id: int) -> None:
        import pymysql

        deadline = time.monotonic() + self.dump_start_timeout_seconds
        try:
            while True:
                # Any query that succeeds on this session proves the lock was held until now.
                dumping = _rows(
                    self.session, _DUMP_READING_ROWS, after_connection_id, self.login, self.database
                )
                if dumping:
                    self.confirmed = True
                    log.info("mariadb-dump (connection %s) has its snapshot", dumping[0][0])
                    return
                if self._dump_exited:
                    self.confirmed = True  # it started, snapshotted and ended while the lock was held
                    return
                if self._abandoned:
                    self.problem = "the backup ended before the dump was seen"
                    return
                if time.monotonic() >= deadline:
                    self.problem = (
                        f"mariadb-dump was not seen reading {self.database!r} as {self.login!r} within "
                        f"{self.dump_start_timeout_seconds:g} s, so the global read lock was released "
                        "without knowing whether the dump's snapshot was taken under it"
                    )
                    return
                self._wake.wait(self.poll_seconds)
        except pymysql.MySQLError as error:
            self.problem = f"the session holding the global read lock failed: {first_line(error)}"
        finally:
            self._unlock()

    def _unlock(self) -> None:
        import pymysql

        if self.held_seconds is not None:
            return
        self.held_seconds = time.monotonic() - self._acquired_at if self._acquired_at else 0.0
        # A broken session holds no lock: the server released it with the session.
        with suppress(pymysql.MySQLError):
            _rows(self.session, "UNLOCK TABLES")
        log.info("global read lock released after %.3f s", self.held_seconds)


@contextmanager
def logical_backup_source(
    conn_id: str,
    database: str,
    *,
    used_by: str,
    workdir: Path,
    mariadb_dump: str = "mariadb-dump",
    connect_timeout_seconds: int = 10,
    query_timeout_seconds: int = 3600,
    lock_wait_timeout_seconds: int = 10,
    dump_start_timeout_seconds: float = 60,
) -> Iterator[BackupSource]:
    """Prepare a ``mariadb-dump --single-transaction`` of ``database`` and the facts of its snapshot.

    MariaDB cannot share a snapshot between sessions, so the counts and the dump each take their own,
    and the design makes the two see the same data:

    1. ``FLUSH TABLES WITH READ LOCK`` in a lock session: from now on nothing commits (and no DDL runs).
    2. ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` in a second session; read ``binlog_snapshot_file``
       and ``binlog_snapshot_position`` (and ``gtid_binlog_pos``), count rows and fingerprint the schema.
    3. Yield; the pipeline starts mariadb-dump, which opens its own consistent snapshot: with the lock
       still held, that snapshot is at the same binlog position as ours, over the same data (its
       ``CHANGE MASTER`` comment shows the same file and position).
    4. A watcher releases the lock as soon as it sees the dump's connection reading rows, which
       mariadb-dump does only after starting its snapshot (see :class:`_GlobalReadLock`); a dump too
       quick to be seen ran wholly under the lock, and ``finish()`` releases it.

    Writes are blocked from step 1 until the dump has started: for the time the counts take plus the
    pipeline's start-up. Both are bounded (``lock_wait_timeout_seconds`` to get the lock,
    ``dump_start_timeout_seconds`` for the dump to appear). ``finish()`` raises if the dump's snapshot
    could not be confirmed to be under the lock. Only InnoDB (transactional) tables are consistent this
    way, as with any ``--single-transaction`` dump; and no other mariadb-dump of ``database`` with the
    same account should start while the lock waits for this one (it would be taken for this one).

    Needs the RELOAD privilege (for the lock) and the binary log (for the position). The password
    reaches mariadb-dump through a 0600 option file in ``workdir``, removed on exit.

    :param used_by: what is backed up (``database 'inventory_mariadb'``), named in errors.
    :param mariadb_dump: the program to run (name on PATH or path).
    :raises ConnectionMissingError: when the Airflow connection does not exist.
    :raises ToolMissingError, ToolVersionError: when mariadb-dump is missing or older than the server.
    :raises DatabaseUnavailableError: when the server cannot be reached; nothing was started.
    :raises BackupSourceError: when the binary log is off, or the lock cannot be taken in time.
    """
    tool, release = _client(mariadb_dump)
    conn = get_connection(conn_id, used_by)
    login = conn.login or ""
    snapshot = _backup_session(
        conn,
        database,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        read_timeout_seconds=query_timeout_seconds,
    )
    try:
        lock_session = _backup_session(
            conn,
            None,
            used_by=used_by,
            connect_timeout_seconds=connect_timeout_seconds,
            read_timeout_seconds=lock_wait_timeout_seconds + 30,
        )
    except BaseException:
        _close(snapshot)
        raise
    lock = _GlobalReadLock(
        lock_session,
        login=login,
        database=database,
        dump_start_timeout_seconds=dump_start_timeout_seconds,
        join_timeout_seconds=lock_wait_timeout_seconds + 60,
    )
    try:
        with _step(conn, used_by, "cannot read the server's version and settings"):
            ((version, log_bin),) = _rows(snapshot, "SELECT VERSION(), @@GLOBAL.log_bin")
        server = server_release(str(version))
        if release[:2] < server[:2]:
            raise ToolVersionError(
                "mariadb-dump",
                _dotted(release),
                f"MariaDB {_dotted(server)}",
                used_by,
                f"{CLIENT_PACKAGE} ({server[0]}.{server[1]} or newer)",
            )
        if not int(log_bin):
            raise BackupSourceError(
                f"{used_by}: the binary log is off (log_bin), so the backup cannot record a binlog position"
            )
        with _step(conn, used_by, "cannot take the global read lock (FLUSH TABLES WITH READ LOCK)"):
            lock.acquire(lock_wait_timeout_seconds)
        with _step(conn, used_by, "cannot read the snapshot's facts"):
            _rows(snapshot, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            _rows(snapshot, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            status = dict(_rows(snapshot, "SHOW STATUS LIKE 'binlog_snapshot_%'"))
            ((gtid,),) = _rows(snapshot, "SELECT @@GLOBAL.gtid_binlog_pos")  # nothing commits: it matches
            facts: dict[str, Any] = {
                "engine": "mariadb",
                "engine_version": _dotted(server),
                "tool_versions": {"mariadb-dump": _dotted(release)},
                "database": database,
                "row_counts": table_row_counts(snapshot),
                "schema_fingerprint": schema_fingerprint(snapshot),
                "position": {
                    "binlog_file": str(status["Binlog_snapshot_file"]),
                    "binlog_position": int(status["Binlog_snapshot_position"]),
                    "gtid_binlog_pos": str(gtid or ""),
                },
            }
            _rows(snapshot, "ROLLBACK")
            ((newest,),) = _rows(lock_session, "SELECT MAX(ID) FROM information_schema.PROCESSLIST")
        _close(snapshot)  # its snapshot has served; the dump takes its own

        def finish() -> dict[str, Any]:
            if not lock.dump_finished():
                raise BackupSourceError(
                    f"{used_by}: the row counts and the schema fingerprint cannot be vouched for: "
                    f"{lock.problem}; run the backup again"
                )
            return {"global_read_lock_seconds": round(lock.held_seconds or 0.0, 3)}

        with private_file(workdir, ".cloudops-my-", _option_file(conn)) as option_file:
            command = DumpCommand(
                argv=[
                    tool,
                    f"--defaults-extra-file={option_file}",  # must come first
                    "--protocol=TCP",
                    f"--host={conn.host or 'localhost'}",
                    f"--port={conn.port or 3306}",
                    f"--user={login}",
                    f"--default-character-set={conn.extra_dejson.get('charset', 'utf8mb4')}",
                    "--single-transaction",
                    "--master-data=2",  # MariaDB 10.11's name (MySQL 8.0.26+ calls it --source-data)
                    "--routines",
                    "--triggers",
                    "--events",
                    "--hex-blob",
                    database,
                ],
                env={},
                object_name=f"{database}.sql.zst",
                format="mariadb-dump-sql",
                description=(
                    f"mariadb-dump {_dotted(release)} (single transaction, binlog position as a comment) of "
                    f"database {database!r} on {_address(conn)} as {login}"
                ),
            )
            lock.watch_for_dump(int(newest))
            log.info("backup source for %s: %s", used_by, command.description)
            yield BackupSource(command=command, facts=facts, on_finish=finish)
    finally:
        lock.release()
        _close(snapshot)
        _close(lock_session)  # ends the lock too, should UNLOCK TABLES have failed


def _close(session: pymysql.Connection[Any]) -> None:
    if session.open:
        session.close()


# -- restores ------------------------------------------------------------------------------------------

DEFAULT_RESTORE_TIMEOUT = timedelta(hours=6)
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_$-]{0,62}$")
# Statements and client commands that would move the load out of the target database. A dump of one
# database (mariadb-dump without --databases) has none: each line starts with a statement, a comment
# or a row of an INSERT, whose strings never hold a raw newline (mariadb-dump escapes it).
_SWITCHES_DATABASE = re.compile(
    rb"^[ \t]*(?:/\*!\d*[ \t]*)?"
    rb"(?:USE\b|CONNECT\b|\\[ur]\b|(?:CREATE|DROP|ALTER)[ \t]+(?:DATABASE|SCHEMA)\b)",
    re.IGNORECASE | re.MULTILINE,
)
_SCAN_CHUNK = 4 * 1024 * 1024


def check_single_database_dump(sql_file: Path) -> None:
    """Refuse a SQL dump that could write outside the database it is loaded into.

    Reads the file once, in chunks, looking for ``USE``, ``CONNECT`` (``\\u``, ``\\r``) and ``CREATE``,
    ``DROP`` or ``ALTER DATABASE`` at the start of a line: loaded into a scratch database, such a dump
    could write into (or drop) the real one.

    :raises RestoreRefused: naming the line and what it starts with.
    """
    line = 1
    carry = b""
    with sql_file.open("rb") as handle:
        while True:
            chunk = handle.read(_SCAN_CHUNK)
            text = carry + chunk
            end = len(text) if not chunk else text.rfind(b"\n") + 1
            whole, carry = text[:end], text[end:]
            found = _SWITCHES_DATABASE.search(whole)
            if found is not None:
                at = line + whole.count(b"\n", 0, found.start())
                statement = found.group(0).strip().decode("ascii", errors="replace")
                raise RestoreRefused(
                    f"{sql_file.name} line {at} starts with {statement!r}: a dump of one database never "
                    "switches or creates databases, so it is not loaded (it could write outside the target)"
                )
            line += whole.count(b"\n")
            if not chunk:
                return


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


def _database_exists(session: pymysql.Connection[Any], name: str) -> bool:
    return bool(_rows(session, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", name))


def _drop(session: pymysql.Connection[Any], name: str) -> None:
    check_scratch(name, action="drop")  # the last word, right before the statement
    _rows(session, f"DROP DATABASE IF EXISTS {_quote(name)}")


class _ScratchOnMariadb:
    """The scratch lifecycle's view of one admin session (:class:`cloudops.engines.scratch.ScratchServer`):
    the ownership marker is the database's comment (MariaDB 10.5 and later)."""

    def __init__(self, session: pymysql.Connection[Any], conn: Connection) -> None:
        self.session, self.where = session, _address(conn)

    def exists(self, name: str) -> bool:
        return _database_exists(self.session, name)

    def marker(self, name: str) -> str | None:
        rows = _rows(
            self.session,
            "SELECT LEFT(SCHEMA_COMMENT, %s) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
            MARKER_MAX_LENGTH + 1,
            name,
        )
        return str(rows[0][0]) if rows and rows[0][0] else None

    def create(self, name: str, marker: str) -> None:
        # One statement: the database never exists without its marker.
        _rows(self.session, f"CREATE DATABASE {_quote(name)} COMMENT %s", marker)

    def drop(self, name: str) -> None:
        _drop(self.session, name)

    def names_like(self, pattern: str) -> list[str]:
        rows = _rows(
            self.session,
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s",
            pattern,
        )
        return [str(name) for (name,) in rows]


def restore_logical(
    conn_id: str,
    target_database: str,
    sql_file: Path,
    *,
    used_by: str,
    run_id: str | None = None,
    mariadb: str = "mariadb",
    workdir: Path | None = None,
    connect_timeout_seconds: int = 10,
    timeout: timedelta = DEFAULT_RESTORE_TIMEOUT,
) -> RestoreResult:
    """Create ``target_database`` and load a ``mariadb-dump`` SQL file of one database into it.

    A dump of one database (as :func:`logical_backup_source` takes it) holds no ``CREATE DATABASE`` and
    no ``USE``: its tables land in whatever database the client is in. The file is checked for such
    statements first (:func:`check_single_database_dump`) and the client runs with ``--one-database``
    as well, so that nothing is written outside the target. The restore only ever goes into a new
    database: an existing one is refused unless it is a scratch database, the leftover of an earlier
    try, which is dropped first. The client stops at the first error. The password reaches it through a
    0600 option file in ``workdir`` (default: the dump's folder), removed on exit.

    :param sql_file: the local, decompressed SQL dump.
    :param used_by: what is restored (``restore drill of 'inventory_mariadb'``), named in errors.
    :param run_id: the run a scratch ``target_database`` is named after (required for one): it is
        created with its ownership marker, and an existing one is dropped only when cloudops created it.
    :param timeout: the longest the load may run; the client is killed after it.
    :raises RestoreRefused: the target exists and is not a scratch database, its name is unusable, or the
        dump would switch databases.
    :raises ToolMissingError, ToolVersionError: the mariadb client is missing or older than the server.
    :raises DatabaseUnavailableError: the server cannot be reached.
    :raises RestoreError: the database could not be created, or the load failed (the client's first lines).
    """
    if not _TARGET_NAME.match(target_database):
        raise RestoreRefused(
            f"{target_database!r} is not a database name a restore may create "
            "(letters, digits, _ $ -, at most 63)"
        )
    if not sql_file.is_file():
        raise RestoreError(f"{used_by}: the dump {sql_file} does not exist or is not a file")
    check_single_database_dump(sql_file)
    tool, release = _client(mariadb)
    conn = get_connection(conn_id, used_by)
    login = conn.login or ""
    started = time.monotonic()
    replaced = False
    with _admin_session(
        conn,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        what=f"cannot create database {target_database!r}",
    ) as admin:
        ((version,),) = _rows(admin, "SELECT VERSION()")
        server = server_release(str(version))
        if release[:2] < server[:2]:
            raise ToolVersionError(
                "mariadb",
                _dotted(release),
                f"MariaDB {_dotted(server)}",
                used_by,
                f"{CLIENT_PACKAGE} ({server[0]}.{server[1]} or newer)",
            )
        if is_scratch_name(target_database):
            replaced = create_scratch(
                _ScratchOnMariadb(admin, conn), target_database, run_id=run_id, used_by=used_by
            )
        elif _database_exists(admin, target_database):
            raise RestoreRefused(
                f"{used_by}: refusing to restore into database {target_database!r} on {_address(conn)}: "
                "it exists and is not a scratch database (a restore only creates a new database)"
            )
        else:
            log.info("creating database %r on %s for %s", target_database, _address(conn), used_by)
            _rows(admin, f"CREATE DATABASE {_quote(target_database)}")
    with private_file(workdir or sql_file.parent, ".cloudops-my-", _option_file(conn)) as option_file:
        description = (
            f"mariadb {_dotted(release)} loading {sql_file.name} into database {target_database!r} on "
            f"{_address(conn)} as {login} ({used_by})"
        )
        log.info("running %s", description)
        run_restore_tool(
            [
                tool,
                f"--defaults-extra-file={option_file}",  # must come first
                "--protocol=TCP",
                f"--host={conn.host or 'localhost'}",
                f"--port={conn.port or 3306}",
                f"--user={login}",
                f"--default-character-set={conn.extra_dejson.get('charset', 'utf8mb4')}",
                f"--connect-timeout={connect_timeout_seconds}",
                "--batch",
                # Applies to the database named as the last argument: with --database=, it skips everything.
                "--one-database",
                target_database,
            ],
            env={},
            stdin=sql_file,
            timeout_seconds=timeout.total_seconds(),
            description=description,
            secrets=[conn.password or ""],
        )
    seconds = time.monotonic() - started
    log.info("restored %s into %r on %s in %.1f s", sql_file.name, target_database, _address(conn), seconds)
    return RestoreResult(
        database=target_database,
        seconds=seconds,
        tool=f"mariadb {_dotted(release)}",
        replaced_leftover=replaced,
    )


def drop_database(conn_id: str, name: str, *, used_by: str, connect_timeout_seconds: int = 10) -> bool:
    """Drop scratch database ``name`` if cloudops created it (:func:`cloudops.engines.scratch.drop_scratch`);
    safe to repeat.

    :return: whether it existed.
    :raises RestoreRefused: ``name`` is not a scratch database name (nothing was done, nothing
        connected), or the database carries no valid cloudops marker (it is left, the reason logged).
    :raises DatabaseUnavailableError: the server cannot be reached.
    :raises RestoreError: the drop failed.
    """
    check_scratch(name, action="drop")
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        what=f"cannot drop scratch database {name!r}",
    ) as admin:
        return drop_scratch(_ScratchOnMariadb(admin, conn), name, used_by=used_by)


def replace_database(
    conn_id: str, staging: str, target: str, *, keep_as: str, used_by: str, connect_timeout_seconds: int = 10
) -> bool:
    """Put restored scratch database ``staging`` in the place of ``target``, keeping the old tables.

    MariaDB cannot rename a database: the tables move instead, each set in one atomic ``RENAME
    TABLE``. ``target``'s tables move into the new database ``keep_as`` (drop it once the restore is
    accepted), then ``staging``'s tables move into ``target`` and the empty ``staging`` is dropped.
    A target holding views, routines, triggers or events is refused before anything moves: they
    would not follow their tables.

    :return: whether a previous ``target`` existed (and its tables are now in ``keep_as``).
    :raises RestoreRefused: ``staging`` is not a scratch database or does not exist, ``keep_as``
        exists, or the target holds objects that RENAME TABLE cannot move.
    """
    check_scratch(staging, action="rename into place")
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        what=f"cannot put {staging!r} in the place of {target!r}",
    ) as admin:
        if not _database_exists(admin, staging):
            raise RestoreRefused(
                f"{used_by}: the restored database {staging!r} does not exist on {_address(conn)}"
            )
        if _database_exists(admin, keep_as):
            raise RestoreRefused(
                f"{used_by}: database {keep_as!r} exists on {_address(conn)}: refusing to overwrite it"
            )
        existed = _database_exists(admin, target)
        for schema in (target, staging) if existed else (staging,):
            others = _rows(
                admin,
                "SELECT 'view', TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s "
                "UNION ALL SELECT 'routine', ROUTINE_NAME FROM information_schema.ROUTINES "
                "WHERE ROUTINE_SCHEMA = %s "
                "UNION ALL SELECT 'trigger', TRIGGER_NAME FROM information_schema.TRIGGERS "
                "WHERE TRIGGER_SCHEMA = %s "
                "UNION ALL SELECT 'event', EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s",
                schema,
                schema,
                schema,
                schema,
            )
            if others:
                listed = ", ".join(f"{kind} {name}" for kind, name in others[:5])
                raise RestoreRefused(
                    f"{used_by}: database {schema!r} holds objects RENAME TABLE cannot move ({listed}): "
                    "restore into a new database and switch the application over instead"
                )

        def tables(schema: str) -> list[str]:
            return [
                row[0]
                for row in _rows(
                    admin,
                    "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                    "AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                    schema,
                )
            ]

        old, new = (tables(target) if existed else []), tables(staging)
        log.info(
            "plan on %s: move %d table(s) of %r into new database %r, then %d restored table(s) "
            "of %r into %r",
            _address(conn),
            len(old),
            target,
            keep_as,
            len(new),
            staging,
            target,
        )
        if existed:
            _rows(admin, f"CREATE DATABASE {_quote(keep_as)}")
            if old:
                _rows(admin, "RENAME TABLE " + _moves(target, keep_as, old))
        else:
            _rows(admin, f"CREATE DATABASE {_quote(target)}")
        if new:
            _rows(admin, "RENAME TABLE " + _moves(staging, target, new))
        _drop(admin, staging)
    log.info(
        "%r now holds the restored tables%s",
        target,
        f"; the previous ones are kept in {keep_as!r}" if existed else "",
    )
    return existed


def _moves(source: str, destination: str, tables: list[str]) -> str:
    """The clauses of one atomic RENAME TABLE moving ``tables`` between databases."""
    return ", ".join(f"{_quote(source)}.{_quote(t)} TO {_quote(destination)}.{_quote(t)}" for t in tables)


def database_exists(conn_id: str, name: str, *, used_by: str, connect_timeout_seconds: int = 10) -> bool:
    """Whether database ``name`` exists on the server (read only)."""
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        what=f"cannot look for database {name!r}",
    ) as admin:
        return _database_exists(admin, name)


def rename_into_new(
    conn_id: str, staging: str, target: str, *, used_by: str, connect_timeout_seconds: int = 10
) -> None:
    """Give restored scratch database ``staging`` the name ``target``, which must not exist.

    MariaDB cannot rename a database: ``target`` is created (with ``staging``'s character set and
    collation; CREATE DATABASE fails when it exists, so two restores racing for one name cannot mix),
    every table moves in one atomic ``RENAME TABLE``, and the empty ``staging`` is dropped. A staging
    copy holding views, routines, triggers or events is refused before anything is created: they would
    not follow their tables. If the move fails, the just-created ``target`` is empty and is removed.

    :raises RestoreRefused: ``staging`` is not a scratch database or does not exist, ``target`` exists,
        or ``staging`` holds objects RENAME TABLE cannot move.
    """
    import pymysql

    check_scratch(staging, action="rename into place")
    if not _TARGET_NAME.match(target):
        raise RestoreRefused(f"{target!r} is not a database name a restore may create")
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        what=f"cannot rename {staging!r} to {target!r}",
    ) as admin:
        found = _rows(
            admin,
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
            "WHERE SCHEMA_NAME = %s",
            staging,
        )
        if not found:
            raise RestoreRefused(
                f"{used_by}: the restored database {staging!r} does not exist on {_address(conn)}"
            )
        if _database_exists(admin, target):
            raise RestoreRefused(
                f"{used_by}: database {target!r} exists on {_address(conn)}: a restore into a new database "
                f"never replaces one (the restored copy stays {staging!r} until the teardown drops it)"
            )
        others = _rows(
            admin,
            "SELECT 'view', TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s "
            "UNION ALL SELECT 'routine', ROUTINE_NAME FROM information_schema.ROUTINES "
            "WHERE ROUTINE_SCHEMA = %s "
            "UNION ALL SELECT 'trigger', TRIGGER_NAME FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = %s "
            "UNION ALL SELECT 'event', EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s "
            "UNION ALL SELECT LOWER(TABLE_TYPE), TABLE_NAME FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s AND TABLE_TYPE NOT IN ('BASE TABLE', 'VIEW')",
            staging,
            staging,
            staging,
            staging,
            staging,
        )
        if others:
            listed = ", ".join(f"{kind} {name}" for kind, name in others[:5])
            raise RestoreRefused(
                f"{used_by}: the restored database {staging!r} holds objects RENAME TABLE cannot move "
                f"({listed}): MariaDB cannot give it the name {target!r}"
            )
        tables = [
            row[0]
            for row in _rows(
                admin,
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                "ORDER BY TABLE_NAME",
                staging,
            )
        ]
        (charset, collation), *_ = found
        if not all(re.fullmatch(r"[A-Za-z0-9_]{1,64}", str(name)) for name in (charset, collation)):
            raise RestoreRefused(f"{used_by}: unexpected character set {charset!r} / collation {collation!r}")
        log.info(
            "plan on %s: create %r, move the %d table(s) of %r into it in one RENAME TABLE, drop %r",
            _address(conn),
            target,
            len(tables),
            staging,
            staging,
        )
        _rows(
            admin,
            f"CREATE DATABASE {_quote(target)} CHARACTER SET {charset} COLLATE {collation}",
        )
        if tables:
            try:
                _rows(admin, "RENAME TABLE " + _moves(staging, target, tables))
            except pymysql.MySQLError:
                # One RENAME TABLE moves all tables or none: the database created above is still
                # empty. Remove it (only if so), or a retry would find the final name taken.
                if not _rows(
                    admin, "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", target
                ):
                    _rows(admin, f"DROP DATABASE {_quote(target)}")
                raise
        _drop(admin, staging)
    log.info("%r now holds the restored tables on %s", target, _address(conn))


def leftover_scratch_databases(
    conn_id: str, database: str, *, used_by: str | None = None, connect_timeout_seconds: int = 10
) -> list[str]:
    """List the scratch databases of catalog database ``database`` that cloudops created, sorted.

    What a drill killed half-way leaves behind; the next drill drops them (:func:`drop_database`). A
    scratch-shaped name without a valid marker is left out, with its reason logged.
    """
    used_by = used_by or f"scratch databases of {database!r}"
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn, used_by=used_by, connect_timeout_seconds=connect_timeout_seconds, what="cannot list databases"
    ) as admin:
        return leftover_scratch(_ScratchOnMariadb(admin, conn), database)


def scratch_server_problem(conn_id: str, *, used_by: str, connect_timeout_seconds: int = 10) -> str | None:
    """Say why server ``conn_id`` must not receive a drill's scratch copies, or None.

    Its event scheduler must not run: a dump brings its events back with their ENABLE status, and
    on a server with ``event_scheduler=ON`` they would fire on schedule, against the copy or, by
    qualified names, against other databases there.

    :raises DatabaseUnavailableError: the server cannot be reached.
    """
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        what="cannot read the event scheduler's state",
    ) as admin:
        ((state,),) = _rows(admin, "SELECT @@GLOBAL.event_scheduler")
    if str(state).upper() == "ON":
        return (
            f"{used_by}: event_scheduler is ON on {_address(conn)}: events restored with the dump would run "
            "there on schedule; set event_scheduler=OFF on the scratch server"
        )
    return None


def newest_timestamp(session: pymysql.Connection[Any], table: str, column: str) -> datetime | None:
    """Return the greatest value of a date or time column of the current database as an aware datetime
    (None: no rows).

    DATETIME values carry no time zone: they are read in the session's time zone, the one the server
    used when ``CURRENT_TIMESTAMP`` wrote them.
    """
    ((value,),) = _rows(session, f"SELECT UNIX_TIMESTAMP(MAX({_quote(column)})) FROM {_quote(table)}")
    return None if value is None else datetime.fromtimestamp(float(value), UTC)


@contextmanager
def snapshot_session(
    conn_id: str,
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


__all__ = [
    "DEFAULT_RESTORE_TIMEOUT",
    "check_single_database_dump",
    "database_exists",
    "drop_database",
    "leftover_scratch_databases",
    "logical_backup_source",
    "newest_timestamp",
    "probe",
    "rename_into_new",
    "restore_logical",
    "schema_fingerprint",
    "scratch_server_problem",
    "snapshot_session",
    "table_row_counts",
]
