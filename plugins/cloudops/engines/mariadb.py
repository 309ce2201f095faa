"""MariaDB: replication state, the backup source (mariadb-dump) with its manifest facts, and restores of
its SQL dumps into new (scratch) databases."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from cloudops.connections import get_connection
from cloudops.engines import BackupSource, DatabaseState, DumpCommand, RestoreResult
from cloudops.engines.client_tools import (
    VERSION_TIMEOUT_SECONDS,
    locate_tool,
    private_file,
    run_restore_tool,
    version_output,
)
from cloudops.engines.scratch import check_scratch, is_scratch_name, is_scratch_of, like_pattern
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
_SCAN_CHUNK = 4 * 1024 * 1024
# No statement can be longer than the server's largest max_allowed_packet (1 GiB).
_LONGEST_LINE = 1024 * 1024 * 1024

# The dump scan reads the dump the way the mariadb client does, without being as slow as a parser in
# Python. Nearly all of a dump is runs of rows, INSERT INTO `t` VALUES followed by its rows; a regular
# expression passes them whole (_ROWS). Between its strings a row holds only numbers, NULL, hex literals
# and commas: no space, quote, backslash, semicolon or comment, so nothing in it can end the statement,
# start a client command or name a database. Everything else goes the exact way: quoted strings ('...',
# "..."), quoted names (`...`) and /* */ comments are blanked (they may span lines), as are -- and #
# comments; the executable comments /*! */ and /*M! */ are SQL, so only their markers are blanked; what
# is left, what the client and the server act on, is searched (_FINDINGS). Blanking keeps offsets and
# newlines, so a finding maps back to its line and text.
_STRING = rb"'[^'\\\n]*(?:\\.[^'\\\n]*)*'"
_VALUES = rb"[0-9a-fA-FxXNUL.,+\-]"
# A row a line since mariadb-dump 10.11, all rows on one line before. Possessive quantifiers: a line that
# is not a row fails in linear time.
_ROW = rb"\((?:" + _VALUES + rb"++|" + _STRING + rb")*+\)"
_ROWS = re.compile(
    rb"^INSERT INTO `(?:[^`\n]|``)+` VALUES(?:\n"
    + _ROW
    + rb",)*+(?:\n| )"
    + _ROW
    + rb"(?:,"
    + _ROW
    + rb")*+;\n",
    re.MULTILINE,
)
_QUOTED = re.compile(
    rb"(?P<string>'[^'\\]*(?:\\.[^'\\]*)*'|\"[^\"\\]*(?:\\.[^\"\\]*)*\")"
    rb"|(?P<name>`[^`]*`)"
    rb"|/\*(?!M?!)[^*]*\*+(?:[^/*][^*]*\*+)*/"
    rb"|(?:--[ \t]|#)[^\n]*",
    re.DOTALL,
)
_EXECUTABLE_MARKER = re.compile(rb"/\*M?!\d*|\*/")
_STILL_OPEN = re.compile(rb"['\"`]|/\*")
_NAME = rb"[A-Za-z0-9_$]+"  # a blanked `name` reads I, a blanked 'string' 0
_OTHER = _NAME + rb"\s*\.\s*" + _NAME  # db.table: a name qualified by a database
_OPTIONS = rb"(?:\s+(?:LOW_PRIORITY|DELAYED|HIGH_PRIORITY|IGNORE|QUICK))*"
_FINDINGS: list[tuple[str, re.Pattern[bytes]]] = [
    (what, re.compile(pattern, re.IGNORECASE | re.MULTILINE))
    for what, pattern in [
        ("a client command", rb"\\(?!-)"),  # \- is the client's sandbox command, which dumps start with
        (
            "a client command",
            rb"(?:^|;)[ \t]*(?:system|source|tee|notee|pager|nopager|connect|use|charset|edit|exit|quit)"
            rb"(?=[\s;]|$)",
        ),
        ("a delimiter other than ; and ;;", rb"^[ \t]*DELIMITER[ \t]+(?!;;?[ \t]*$)"),
        ("a statement on another database", rb"\b(?:CREATE|DROP|ALTER)\s+(?:DATABASE|SCHEMA)\b"),
        ("a name in another database", rb"\b(?:INSERT|REPLACE)" + _OPTIONS + rb"(?:\s+INTO)?\s+" + _OTHER),
        ("a name in another database", rb"\bUPDATE" + _OPTIONS + rb"\s+" + _OTHER),
        ("a name in another database", rb"\bDELETE" + _OPTIONS + rb"(?:\s+FROM)?\s+" + _OTHER),
        (
            "a name in another database",
            rb"\b(?:CREATE|ALTER|DROP)\b[^;]*?\b(?:TABLE|VIEW|TRIGGER|PROCEDURE|FUNCTION|EVENT|SEQUENCE|"
            rb"INDEX|PACKAGE(?:\s+BODY)?)(?:\s+IF(?:\s+NOT)?\s+EXISTS)?\s+" + _OTHER,
        ),
        ("a name in another database", rb"\bDROP(?:\s+TEMPORARY)?\s+TABLES?\b[^;]*?" + _OTHER),
        ("a name in another database", rb"\b(?:RENAME|LOCK)\s+TABLES?\b[^;]*?" + _OTHER),
        ("a name in another database", rb"\bTRUNCATE(?:\s+TABLE)?\s+" + _OTHER),
        ("a name in another database", rb"\b(?:CALL|JOIN)\s+" + _OTHER),
        ("a name in another database", rb"\bTRIGGER\b[^;]*?\bON\s+" + _OTHER),
        ("a privilege statement", rb"\b(?:GRANT|REVOKE)\b"),
        (
            "an account or server statement",
            rb"\b(?:CREATE|ALTER|DROP|RENAME)(?:\s+OR\s+REPLACE)?\s+(?:USER|ROLE|SERVER)\b",
        ),
        ("a server-wide setting", rb"\bSET\s+(?:GLOBAL|PERSIST|PASSWORD|ROLE|DEFAULT\s+ROLE)\b|@@GLOBAL\b"),
        ("a file access", rb"\bINTO\s+(?:OUTFILE|DUMPFILE)\b|\bLOAD\s+(?:DATA|XML)\b|\bLOAD_FILE\s*\("),
        ("a plugin", rb"\b(?:UN)?INSTALL\s+(?:PLUGIN|SONAME)\b|\bSONAME\b"),
        (
            "a replication or server command",
            rb"\bBINLOG\b|\bCHANGE\s+(?:MASTER|REPLICATION)\b|\b(?:START|STOP|RESET)\s+(?:SLAVE|REPLICA|MASTER)\b"
            rb"|\b(?:PURGE|SHUTDOWN|KILL|FLUSH)\b",
        ),
        (
            "a table stored outside the database",
            rb"\bENGINE\s*=\s*(?:CONNECT|FEDERATED|FEDERATEDX|SPIDER)\b|\b(?:DATA|INDEX)\s+DIRECTORY\b",
        ),
        ("dynamic SQL", rb"\b(?:PREPARE|EXECUTE)\b"),
        # The scan reads backslashes as escapes and " as a string: modes that change either are refused.
        (
            "an SQL mode that is not one string",
            rb"\bSQL_MODE\s*:?=\s*+(?!0[ \t]*(?:[,;]|$)|@OLD_SQL_MODE\b|@saved_sql_mode\b|@@SQL_MODE\b)",
        ),
        ("a saved SQL mode set by hand", rb"@(?:OLD_SQL_MODE|saved_sql_mode)\s*:?=\s*+(?!@@SQL_MODE\b)"),
        (
            "a character set that is not one name",
            rb"\bcharacter_set_client\s*:?=\s*+"
            rb"(?![A-Za-z0-9_]+[ \t]*(?:[,;]|$)|@saved_cs_client\b|@OLD_CHARACTER_SET_CLIENT\b)"
            rb"|@(?:saved_cs_client|OLD_CHARACTER_SET_CLIENT)\s*:?=\s*+(?!@@character_set_client\b)",
        ),
    ]
]
# Raw text (strings included): SQL modes and character sets under which the scan would read the dump
# otherwise than the client and the server do.
_RAW_FINDINGS: list[tuple[str, re.Pattern[bytes]]] = [
    (
        "an SQL mode that changes how strings are read",
        re.compile(
            rb"\b(?:NO_BACKSLASH_ESCAPES|ANSI_QUOTES|ANSI|DB2|MAXDB|MSSQL|ORACLE|POSTGRESQL)\b", re.IGNORECASE
        ),
    ),
    (
        "a character set whose characters may hold a backslash",
        re.compile(rb"\b(?:big5|cp932|gbk|sjis)\b", re.I),
    ),
]


def _blanked(statements: bytes) -> bytes:
    """``statements`` with strings, names and comments blanked, offsets and newlines kept."""

    def blank(match: re.Match[bytes]) -> bytes:
        text = match.group()
        head = b"0" if match.lastgroup == "string" else b"I" if match.lastgroup == "name" else b" "
        return head + bytes(c if c == 10 else 32 for c in text[1:])

    text = _QUOTED.sub(blank, statements)
    return _EXECUTABLE_MARKER.sub(lambda marker: b" " * len(marker.group()), text)


class _DumpScan:
    """One scan: the statements that are not rows wait in ``pending`` until they can be checked whole."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.first_line = 1  # of what is pending

    def text(self, first_line: int, text: bytes) -> None:
        """Take ``text``, whole lines starting at line ``first_line``: runs of rows pass at once."""
        at, line = 0, first_line
        for rows in _ROWS.finditer(text):
            self.statements(line, text[at : rows.start()])
            line += text.count(b"\n", at, rows.start())
            # Nothing may be open before rows: the client would read them inside a string or comment.
            self.check(before_rows=True)
            at = rows.end()
            line += text.count(b"\n", rows.start(), at)
            self.first_line = line
        self.statements(line, text[at:])

    def statements(self, first_line: int, text: bytes) -> None:
        if not text:
            return
        if not self.pending:
            self.first_line = first_line
        self.pending.append(text)
        self.pending_bytes += len(text)
        # A long run of statements is checked at a statement's end (no finding spans a semicolon), unless
        # that semicolon is inside a string or comment that goes on.
        if self.pending_bytes > _SCAN_CHUNK and text.rstrip().endswith(b";"):
            self.check(before_rows=False)
        if self.pending_bytes > _LONGEST_LINE:
            self.refuse(b"".join(self.pending), 0, 1, f"more than {_LONGEST_LINE >> 20} MiB in one statement")

    def end(self) -> None:
        """Check what is left at the end of the file."""
        self.check(before_rows=True)

    def check(self, *, before_rows: bool) -> None:
        """Search the pending statements; keep them if something in them is still open (unless
        ``before_rows`` or at the end, where that is refused).

        :raises RestoreRefused: on a finding.
        """
        if not self.pending:
            return
        raw = b"".join(self.pending)
        text = _blanked(raw)
        findings = [
            (found.start(), found.end(), what)
            for what, pattern in _FINDINGS
            if (found := pattern.search(text))
        ]
        findings += [
            (found.start(), found.end(), what)
            for what, pattern in _RAW_FINDINGS
            if (found := pattern.search(raw))
        ]
        if findings:
            self.refuse(raw, *min(findings))
        if (left_open := _STILL_OPEN.search(text)) is not None:
            if not before_rows:
                return
            self.refuse(
                raw, left_open.start(), left_open.end(), "a string, name or comment that is not closed"
            )
        self.pending, self.pending_bytes = [], 0

    def refuse(self, raw: bytes, at: int, end: int, what: str) -> NoReturn:
        """Refuse, showing the text from what was found to the end of its line (at most 80 bytes)."""
        line = self.first_line + raw.count(b"\n", 0, at)
        line_end = raw.find(b"\n", at)
        found = raw[at : min(at + 80, len(raw) if line_end < 0 else line_end)].lstrip(b"; \t").rstrip()
        raise RestoreRefused(
            f"{self.name} line {line}: {what}: {found.decode('utf-8', 'replace')!r}: a dump of one database "
            "never holds it, so it is not loaded (it could run a command on this host or write outside the "
            "target database)"
        )


def check_single_database_dump(sql_file: Path) -> None:
    """Refuse a SQL dump that could run a client command or write outside the database it is loaded into.

    Reads the file once, in chunks (see the comment above :data:`_STRING` for how), and refuses, outside
    strings and comments: client commands (``\\!``, ``\\.``, ``\\T``, ``\\u``, ``\\r``, any backslash
    command but the sandbox's own ``\\-``, and ``system``, ``source``, ``tee``, ``pager``, ``connect``,
    ``use``... at a statement's start); statements on another database (``CREATE``, ``DROP`` or ``ALTER
    DATABASE``) or on a name qualified by a database (``other.t`` after ``INSERT``, ``UPDATE``,
    ``DELETE``, ``REPLACE``, ``CREATE``, ``ALTER``, ``DROP``, ``RENAME``, ``TRUNCATE``, ``LOCK``,
    ``CALL``, ``JOIN``, a trigger's ``ON``); server-wide statements (``GRANT``, ``REVOKE``, accounts,
    ``SET GLOBAL``, plugins, replication, ``FLUSH``, ``KILL``); file access (``INTO OUTFILE`` or
    ``DUMPFILE``, ``LOAD DATA`` or ``XML``, ``LOAD_FILE``); tables kept outside the database (CONNECT,
    FEDERATED, SPIDER, ``DATA DIRECTORY``); dynamic SQL (``PREPARE``, ``EXECUTE``); and SQL modes or
    character sets under which the client would read the text otherwise than this scan does. The
    client's ``--sandbox`` and ``--binary-mode`` stop client commands again while loading; this scan
    also stops the SQL, which they cannot.

    :raises RestoreRefused: naming the file, the line and what was found there.
    """
    scan = _DumpScan(sql_file.name)
    line = 1
    carry = b""
    with sql_file.open("rb") as handle:
        while chunk := handle.read(_SCAN_CHUNK):
            text = carry + chunk
            # Cut after the last whole INSERT, so that runs of rows are not split, or else after the last
            # line once a statement grows past what one chunk holds.
            cut = text.rfind(b");\n") + 3  # 2: not found
            if cut == 2 and len(text) > 2 * _SCAN_CHUNK:
                cut = text.rfind(b"\n") + 1
                if cut == 0 and len(text) > _LONGEST_LINE:
                    scan.first_line = line
                    scan.refuse(text, 0, 1, f"a line longer than {_LONGEST_LINE >> 20} MiB")
            elif cut == 2:
                cut = 0  # carry it all into the next chunk
            whole, carry = text[:cut], text[cut:]
            scan.text(line, whole)
            line += whole.count(b"\n")
    scan.text(line, carry)
    scan.end()


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


def restore_logical(
    conn_id: str,
    target_database: str,
    sql_file: Path,
    *,
    used_by: str,
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
    _require_sandbox(tool, release)
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
        if _database_exists(admin, target_database):
            if not is_scratch_name(target_database):
                raise RestoreRefused(
                    f"{used_by}: refusing to restore into database {target_database!r} on {_address(conn)}: "
                    "it exists and is not a scratch database (a restore only creates a new database)"
                )
            log.warning(
                "scratch database %r on %s exists, left by an earlier try: dropping it before restoring",
                target_database,
                _address(conn),
            )
            _drop(admin, target_database)
            replaced = True
        log.info("creating database %r on %s for %s", target_database, _address(conn), used_by)
        _rows(admin, f"CREATE DATABASE {_quote(target_database)}")
    with private_file(workdir or sql_file.parent, ".cloudops-my-", _option_file(conn)) as option_file:
        description = (
            f"mariadb {_dotted(release)} loading {sql_file.name} into database {target_database!r} on "
            f"{_address(conn)} as {login} ({used_by})"
        )
        log.info("running %s", description)
        run_restore_tool(
            load_command(tool, option_file, conn, target_database, connect_timeout_seconds),
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


def load_command(
    tool: str, option_file: Path, conn: Connection, target_database: str, connect_timeout_seconds: int
) -> list[str]:
    """The mariadb client's argv that loads a dump (its stdin) into ``target_database``, and nothing else.

    ``--sandbox`` refuses the client commands that touch files or run programs (``\\!``, ``\\.``, ``\\T``,
    ``pager``...) and ``--binary-mode`` stops it reading any client command but ``DELIMITER`` and
    ``\\C``: what :func:`check_single_database_dump` refuses is refused a second time, by the client's own
    parser. ``--one-database`` skips statements after a ``USE`` of another database.
    """
    return [
        tool,
        f"--defaults-extra-file={option_file}",  # must come first
        "--protocol=TCP",
        f"--host={conn.host or 'localhost'}",
        f"--port={conn.port or 3306}",
        f"--user={conn.login or ''}",
        f"--default-character-set={conn.extra_dejson.get('charset', 'utf8mb4')}",
        f"--connect-timeout={connect_timeout_seconds}",
        "--batch",
        "--sandbox",
        "--binary-mode",
        # Applies to the database named as the last argument: with --database=, it skips everything.
        "--one-database",
        "--",  # a name starting with - is still a name
        target_database,
    ]


def drop_database(conn_id: str, name: str, *, used_by: str, connect_timeout_seconds: int = 10) -> bool:
    """Drop scratch database ``name``; safe to repeat.

    :return: whether it existed.
    :raises RestoreRefused: ``name`` is not a scratch database name; nothing was done, nothing connected.
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
        if not _database_exists(admin, name):
            log.info("scratch database %r does not exist on %s: nothing to drop", name, _address(conn))
            return False
        log.info("dropping scratch database %r on %s (%s)", name, _address(conn), used_by)
        _drop(admin, name)
    return True


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


def leftover_scratch_databases(
    conn_id: str, database: str, *, used_by: str | None = None, connect_timeout_seconds: int = 10
) -> list[str]:
    """List the scratch databases of catalog database ``database`` on the server, sorted.

    What a drill killed half-way leaves behind; the next drill drops them (:func:`drop_database`).
    """
    used_by = used_by or f"scratch databases of {database!r}"
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn, used_by=used_by, connect_timeout_seconds=connect_timeout_seconds, what="cannot list databases"
    ) as admin:
        rows = _rows(
            admin,
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s",
            like_pattern(database),
        )
    return sorted(str(name) for (name,) in rows if is_scratch_of(str(name), database))


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
    "drop_database",
    "leftover_scratch_databases",
    "logical_backup_source",
    "newest_timestamp",
    "probe",
    "restore_logical",
    "schema_fingerprint",
    "snapshot_session",
    "table_row_counts",
]
