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


def table_row_counts(session: pymysql.Connection[Any], *, savepoint: bool = False) -> dict[str, int]:
    """Count the rows of every base table of the session's current database exactly.

    Keys are bare table names: in MariaDB the database is the schema, and a restore drill loads the
    dump into a database of another name. Run it inside ``START TRANSACTION WITH CONSISTENT SNAPSHOT``
    so that all the counts come from one snapshot.

    :param savepoint: roll back to a savepoint after each table, which gives back its metadata lock
        (the snapshot stays): DDL on a counted table then waits for one count, not for all of them.
    """
    database = _current_database(session)
    counts: dict[str, int] = {}
    if savepoint:
        _rows(session, "SAVEPOINT cloudops_count")
    for table, _engine, _collation in _rows(session, _TABLES, database):
        (row,) = _rows(session, f"SELECT COUNT(*) FROM {_quote(table)}")
        counts[str(table)] = int(row[0])
        if savepoint:
            _rows(session, "ROLLBACK TO SAVEPOINT cloudops_count")
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


# mariadb-dump --master-data=2 writes this comment right after it opened its snapshot (and read the
# snapshot's binlog position), before any row.
_DUMP_POSITION = re.compile(
    rb"^-- CHANGE MASTER TO MASTER_LOG_FILE='([^'\n]+)', MASTER_LOG_POS=(\d+);$", re.M
)
_DUMP_HEAD_LIMIT = 1024 * 1024  # the comment comes within the dump's first few KiB
_LOCK_WAIT_TIMEOUT = 1205


class _SnapshotLock:
    """``FLUSH TABLES WITH READ LOCK``, held only until mariadb-dump has opened its snapshot, and the row
    counts taken afterwards in the facts session's snapshot, which saw the same data.

    While the lock is held nothing commits, so the facts session's snapshot and the dump's, both opened
    under it, see the same data at the same binlog position. Right after opening its snapshot the dump
    asks the server for the GTID of that snapshot's position (``SELECT BINLOG_GTID_POS(file, pos)``,
    which the thread sees in the process list, with our file and position), then writes ``-- CHANGE
    MASTER TO ... MASTER_LOG_POS=n;``, which :meth:`observe` (the command's ``observe_output``) sees in
    its first output; at the first of the two the thread releases the lock. The comment's position must
    equal ours, or ``finish()`` refuses the counts.
    The lock is never held longer than ``max_lock_wait_seconds`` from the moment it was asked for: past
    that it is released anyway and the backup fails. Once released, the thread counts the rows of every
    table in the facts session's snapshot, while the dump runs; ``SAVEPOINT``/``ROLLBACK TO`` after each
    table give its metadata lock back, as mariadb-dump does, so DDL is not held up for the whole count.
    """

    def __init__(
        self,
        lock_session: pymysql.Connection[Any],
        snapshot: pymysql.Connection[Any],
        *,
        used_by: str,
        max_lock_wait_seconds: int,
    ) -> None:
        self.lock_session, self.snapshot = lock_session, snapshot
        self.used_by = used_by
        self.max_lock_wait_seconds = max_lock_wait_seconds
        self.position: tuple[str, int] | None = None  # the facts session's snapshot
        self.dump_position: tuple[str, int] | None = None
        self.problem: str | None = None
        self.held_seconds: float | None = None
        self.row_counts: dict[str, int] | None = None
        self._asked_at = 0.0
        self._head = b""
        self._abandoned = False
        self._seen = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock, waiting at most ``max_lock_wait_seconds`` for running writes to end.

        While FLUSH TABLES WITH READ LOCK waits, new writes queue behind it: the wait counts in the bound.

        :raises BackupSourceError: when the lock could not be had in time (nothing was started).
        """
        import pymysql

        _rows(self.lock_session, f"SET SESSION lock_wait_timeout = {int(self.max_lock_wait_seconds)}")
        self._asked_at = time.monotonic()
        try:
            _rows(self.lock_session, "FLUSH TABLES WITH READ LOCK")
        except pymysql.OperationalError as error:
            if error.args[0] != _LOCK_WAIT_TIMEOUT:
                raise
            raise BackupSourceError(
                f"{self.used_by}: the global read lock (FLUSH TABLES WITH READ LOCK) could not be taken "
                f"within backup.max_lock_wait ({self.max_lock_wait_seconds} s): a long write or DDL is "
                "running; writes were held back for that long only, nothing was dumped; run the backup again"
            ) from error

    def start(self, position: tuple[str, int]) -> None:
        """Start the thread that releases the lock, given the facts session's snapshot position."""
        self.position = position
        self._thread = threading.Thread(target=self._run, name="cloudops-snapshot-lock", daemon=True)
        self._thread.start()

    def observe(self, chunk: bytes) -> None:
        """Look for the dump's position comment in its first output (called with each piece read).

        :raises BackupSourceError: when the dump's snapshot came too late (the lock was released without
            it), or its output holds no position comment: the backup fails at once.
        """
        if self.dump_position is not None:
            return
        self._head = (self._head + chunk)[:_DUMP_HEAD_LIMIT]
        found = _DUMP_POSITION.search(self._head)
        if found is not None:
            self.dump_position = (found.group(1).decode("utf-8", "replace"), int(found.group(2)))
            self._head = b""
            self._seen.set()
            if self.problem is not None:
                raise BackupSourceError(f"{self.used_by}: {self.problem}; run the backup again")
        elif len(self._head) >= _DUMP_HEAD_LIMIT:
            self.problem = "mariadb-dump wrote no binlog position (CHANGE MASTER comment) in its first MiB"
            self._seen.set()
            raise BackupSourceError(f"{self.used_by}: {self.problem}")

    def finish(self, join_timeout_seconds: float) -> dict[str, int]:
        """Wait for the row counts (the dump exited 0); return them.

        :raises BackupSourceError: when the dump's snapshot was not taken under the lock, or counting failed.
        """
        if self._thread is None:
            self.problem = "the dump was started without its before_start (the lock and the snapshot)"
        elif self.dump_position is None and self.problem is None:
            self.problem = "mariadb-dump's output held no binlog position (CHANGE MASTER comment)"
            self._seen.set()
        if self._thread is not None:
            self._thread.join(timeout=join_timeout_seconds)
            if self._thread.is_alive():
                self.problem = f"the row counts took longer than {join_timeout_seconds:g} s after the dump"
        if self.problem is None and self.dump_position != self.position:
            dump, ours = self.dump_position or ("?", 0), self.position or ("?", 0)
            self.problem = (
                f"the dump's snapshot is at binlog {dump[0]}:{dump[1]}, the counts' at {ours[0]}:{ours[1]}"
            )
        if self.problem is not None or self.row_counts is None:
            raise BackupSourceError(
                f"{self.used_by}: the row counts cannot be vouched for: {self.problem}; run the backup again"
            )
        return self.row_counts

    def abandon(self) -> None:
        """Release the lock now, whatever the dump is doing, and stop counting (the context is closing)."""
        self._abandoned = True
        self._seen.set()
        if self._thread is None:
            self._unlock()

    @property
    def counting(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout_seconds: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout_seconds)

    def _run(self) -> None:
        import pymysql

        deadline = self._asked_at + self.max_lock_wait_seconds
        # True only when the dump's snapshot was seen before the bound: then it is under the lock.
        seen_in_time = False
        try:
            seen_in_time = self._wait_for_dump(deadline)
        except pymysql.MySQLError as error:
            self.problem = f"the session holding the global read lock failed: {first_line(error)}"
        self._unlock()
        if self.problem is not None or self._abandoned:
            return
        if not seen_in_time:
            self.problem = (
                f"mariadb-dump had not opened its snapshot within backup.max_lock_wait "
                f"({self.max_lock_wait_seconds} s) of asking for the global read lock, which was released "
                "then so as not to block writes any longer"
            )
            return
        if self.dump_position is not None and self.dump_position != self.position:
            dump, ours = self.dump_position, self.position or ("?", 0)
            self.problem = (
                f"the dump's snapshot is at binlog {dump[0]}:{dump[1]}, the counts' at {ours[0]}:{ours[1]}"
            )
            return
        try:
            self.row_counts = table_row_counts(self.snapshot, savepoint=True)
            _rows(self.snapshot, "ROLLBACK")
        except pymysql.MySQLError as error:
            self.problem = f"counting rows in the snapshot failed: {first_line(error)}"

    def _wait_for_dump(self, deadline: float) -> bool:
        """Wait until the dump's position comment is read, or the dump is seen asking the server for the
        GTID of our snapshot's position, or the deadline.

        mariadb-dump asks ``SELECT BINLOG_GTID_POS(file, position)`` with the position its snapshot read,
        right after opening it and before writing its comment; the server answers by reading the binary
        log from its start, which takes a while on a large binlog file. A connection asking it for our
        exact position has a snapshot at our position: the lock can go at once. (Any other connection
        that did would be caught when the dump's own comment shows another position.)
        """
        assert self.position is not None
        asking = f"SELECT BINLOG_GTID_POS('{self.position[0]}', '{self.position[1]}')"
        while not self._seen.wait(min(0.01, max(0.0, deadline - time.monotonic()))):
            if _rows(
                self.lock_session, "SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO = %s", asking
            ):
                log.info(
                    "mariadb-dump has its snapshot (it asks for the GTID of binlog position %s)",
                    self.position,
                )
                return True
            if time.monotonic() >= deadline:
                return False
        return True

    def _unlock(self) -> None:
        import pymysql

        if self.held_seconds is not None:
            return
        self.held_seconds = time.monotonic() - self._asked_at if self._asked_at else 0.0
        try:
            _rows(self.lock_session, "UNLOCK TABLES")
        except pymysql.MySQLError as error:
            # A broken session holds no lock (the server released it with the session), but then the lock
            # may have gone before the dump's snapshot: its counts cannot be vouched for.
            self.problem = (
                self.problem or f"the session holding the global read lock failed: {first_line(error)}"
            )
        log.info("global read lock released after %.3f s (writes were blocked that long)", self.held_seconds)


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
    max_lock_wait_seconds: int = 2,
) -> Iterator[BackupSource]:
    """Prepare a ``mariadb-dump --single-transaction`` of ``database`` and the facts of its snapshot.

    MariaDB cannot share a snapshot between sessions, so the counts and the dump each take their own,
    and a brief global read lock makes the two see the same data:

    1. The schema fingerprint, without any lock; yield. Steps 2 and 3 are the command's
       ``before_start``, which the pipeline calls right before it starts mariadb-dump (after creating
       the upload), so that nothing else it does is under the lock.
    2. ``FLUSH TABLES WITH READ LOCK`` in a lock session: from now on nothing commits (and no DDL runs).
    3. ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` in the facts session; read its
       ``binlog_snapshot_file`` and ``binlog_snapshot_position`` (and ``gtid_binlog_pos``) into the facts.
    4. mariadb-dump starts and opens its own consistent snapshot (with ``--single-transaction
       --master-data`` on MariaDB it reads ``binlog_snapshot_*`` and takes no lock of its own) and writes
       that snapshot's position as a ``CHANGE MASTER`` comment, before any row. The lock is released as
       soon as the dump is seen asking for that position's GTID in the process list, or the command's
       ``observe_output`` sees the comment (see :class:`_SnapshotLock`). Both snapshots were opened
       under the lock: the same data, and the same position, which is checked.
    5. The rows of every table are counted in the facts session's snapshot, without any lock, while the
       dump runs; ``finish()`` waits for the counts and returns them (``row_counts``), and checks that the
       schema fingerprint is still the one of step 1 (no DDL during the backup).

    Writes are blocked from step 2 until the dump has its snapshot: the time to take the lock, open the
    facts snapshot, start mariadb-dump and for it to connect and open its own, a fraction of a second.
    That time, the wait for the lock included, is bounded by ``max_lock_wait_seconds`` (the catalog's
    ``backup.max_lock_wait``): past it the lock is released and the backup fails rather than block
    writes any longer. Nothing else runs under the lock:
    neither the counts nor the fingerprint. ``finish()`` reports ``global_read_lock_seconds``. Only
    InnoDB (transactional) tables are consistent this way, as with any ``--single-transaction`` dump.

    Needs the RELOAD privilege (for the lock) and the binary log (for the position). The password
    reaches mariadb-dump through a 0600 option file in ``workdir``, removed on exit.

    :param used_by: what is backed up (``database 'inventory_mariadb'``), named in errors.
    :param mariadb_dump: the program to run (name on PATH or path).
    :param max_lock_wait_seconds: the longest writes may be blocked, from asking for the lock to its release.
    :raises ConnectionMissingError: when the Airflow connection does not exist.
    :raises ToolMissingError, ToolVersionError: when mariadb-dump is missing or older than the server.
    :raises DatabaseUnavailableError: when the server cannot be reached; nothing was started.
    :raises BackupSourceError: when the binary log is off; from ``before_start``, when the lock cannot be
        had in time; from ``observe_output`` or ``finish()``, when the dump's snapshot came too late.
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
            read_timeout_seconds=max_lock_wait_seconds + 30,
        )
    except BaseException:
        _close(snapshot)
        raise
    lock = _SnapshotLock(lock_session, snapshot, used_by=used_by, max_lock_wait_seconds=max_lock_wait_seconds)
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
        with _step(conn, used_by, "cannot read the schema"):
            fingerprint = schema_fingerprint(snapshot)
            # A count waiting behind DDL's metadata lock waits this long, then fails the backup.
            _rows(snapshot, "SET SESSION lock_wait_timeout = 60")
        facts: dict[str, Any] = {
            "engine": "mariadb",
            "engine_version": _dotted(server),
            "tool_versions": {"mariadb-dump": _dotted(release)},
            "database": database,
            "schema_fingerprint": fingerprint,
        }

        def open_snapshot() -> None:
            """Right before the dump starts: the lock, the facts session's snapshot and its position."""
            with _step(conn, used_by, "cannot take the global read lock (FLUSH TABLES WITH READ LOCK)"):
                lock.acquire()
            with _step(conn, used_by, "cannot open the snapshot"):
                _rows(snapshot, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                _rows(snapshot, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                status = dict(_rows(snapshot, "SHOW STATUS LIKE 'binlog_snapshot_%'"))
                ((gtid,),) = _rows(snapshot, "SELECT @@GLOBAL.gtid_binlog_pos")  # nothing commits: it matches
            position = (str(status["Binlog_snapshot_file"]), int(status["Binlog_snapshot_position"]))
            facts["position"] = {
                "binlog_file": position[0],
                "binlog_position": position[1],
                "gtid_binlog_pos": str(gtid or ""),
            }
            lock.start(position)

        def finish() -> dict[str, Any]:
            counts = lock.finish(join_timeout_seconds=query_timeout_seconds)
            with _step(conn, used_by, "cannot read the schema after the dump"):
                after = schema_fingerprint(snapshot)
            if after != fingerprint:
                raise BackupSourceError(
                    f"{used_by}: the schema changed during the backup (DDL ran): its fingerprint was "
                    f"{fingerprint[:12]}… before and is {after[:12]}… now; run the backup again"
                )
            return {"row_counts": counts, "global_read_lock_seconds": round(lock.held_seconds or 0.0, 3)}

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
                    "--",  # a name starting with - is still a name
                    database,
                ],
                env={},
                object_name=f"{database}.sql.zst",
                format="mariadb-dump-sql",
                description=(
                    f"mariadb-dump {_dotted(release)} (single transaction, binlog position as a comment) of "
                    f"database {database!r} on {_address(conn)} as {login}"
                ),
                before_start=open_snapshot,
                observe_output=lock.observe,
            )
            log.info("backup source for %s: %s", used_by, command.description)
            yield BackupSource(command=command, facts=facts, on_finish=finish)
    finally:
        lock.abandon()
        if lock.counting:
            _stop_query(conn, snapshot, used_by=used_by, connect_timeout_seconds=connect_timeout_seconds)
            lock.join(timeout_seconds=30)
        _close(snapshot)
        _close(lock_session)  # ends the lock too, should UNLOCK TABLES have failed


def _stop_query(
    conn: Connection, session: pymysql.Connection[Any], *, used_by: str, connect_timeout_seconds: int
) -> None:
    """``KILL QUERY`` what ``session`` runs, from a session of its own (best effort: it is closed next)."""
    import pymysql

    try:
        killer = _backup_session(
            conn,
            None,
            used_by=used_by,
            connect_timeout_seconds=connect_timeout_seconds,
            read_timeout_seconds=30,
        )
    except DatabaseUnavailableError:
        return
    try:
        with suppress(pymysql.MySQLError):
            _rows(killer, f"KILL QUERY {int(session.thread_id())}")
    finally:
        _close(killer)


def _close(session: pymysql.Connection[Any]) -> None:
    if session.open:
        session.close()


# -- restores ------------------------------------------------------------------------------------------

DEFAULT_RESTORE_TIMEOUT = timedelta(hours=6)
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_$-]{0,62}$")  # never a leading - or $
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
_CREATE_EVENT = re.compile(rb"\bCREATE\b[^;]*?\bEVENT\s+(?:IF\s+NOT\s+EXISTS\s+)?([A-Za-z0-9_$]+)", re.I)
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
        self.events: list[str] = []  # the events the dump defines
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
        for event in _CREATE_EVENT.finditer(text):
            start = event.start(1)
            end = raw.find(b"`", start + 1) + 1 if raw[start : start + 1] == b"`" else event.end(1)
            self.events.append(raw[start:end].strip(b"`").decode("utf-8", "replace"))
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


def check_single_database_dump(sql_file: Path) -> list[str]:
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

    :return: the names of the events the dump defines (see :func:`restore_logical`).
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
    return scan.events


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
    no ``USE``: its tables land in whatever database the client is in. The file is checked first
    (:func:`check_single_database_dump`: no client command, nothing naming another database, nothing
    server-wide), then the client loads it with ``--sandbox --binary-mode --one-database`` (see
    :func:`load_command`), so that nothing runs on this host and nothing is written outside the target.

    Events: mariadb-dump writes each event with its ``ENABLE`` status, and an event created on a server
    whose event scheduler runs starts running at once (one whose start is past runs right away), before
    anything could disable it; the dump's text is not rewritten to change that. So a dump that defines
    events is refused unless the server's ``event_scheduler`` is ``OFF`` or ``DISABLED``, as a scratch
    server's is; a dump without events loads anywhere. The restore only ever goes into a new
    database: an existing one is refused unless it is a scratch database, the leftover of an earlier
    try, which is dropped first. The client stops at the first error. The password reaches it through a
    0600 option file in ``workdir`` (default: the dump's folder), removed on exit.

    :param sql_file: the local, decompressed SQL dump.
    :param used_by: what is restored (``restore drill of 'inventory_mariadb'``), named in errors.
    :param run_id: the run a scratch ``target_database`` is named after (required for one): it is
        created with its ownership marker, and an existing one is dropped only when cloudops created it.
    :param timeout: the longest the load may run; the client is killed after it.
    :raises RestoreRefused: the target exists and is not a scratch database, its name is unusable, the
        dump holds what the scan refuses, or it defines events and the server's event scheduler runs.
    :raises ToolMissingError, ToolVersionError: the mariadb client is missing, has no ``--sandbox``, or
        is older than the server.
    :raises DatabaseUnavailableError: the server cannot be reached.
    :raises RestoreError: the database could not be created, or the load failed (the client's first lines).
    """
    if not _TARGET_NAME.match(target_database):
        raise RestoreRefused(
            f"{target_database!r} is not a database name a restore may create "
            "(letters, digits, _ $ -, at most 63, starting with a letter, digit or _)"
        )
    if not sql_file.is_file():
        raise RestoreError(f"{used_by}: the dump {sql_file} does not exist or is not a file")
    events = check_single_database_dump(sql_file)
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
        ((version, scheduler),) = _rows(admin, "SELECT VERSION(), @@GLOBAL.event_scheduler")
        server = server_release(str(version))
        if events and str(scheduler).upper() not in ("OFF", "DISABLED"):
            listed = ", ".join(events[:5]) + (f" and {len(events) - 5} more" if len(events) > 5 else "")
            raise RestoreRefused(
                f"{used_by}: {sql_file.name} defines {len(events)} event(s) ({listed}) and the event "
                f"scheduler of {_address(conn)} is {scheduler}: loaded there, they would run on their "
                "schedule (and could act on other databases of that server) until the copy is dropped; "
                "restore onto a server whose event_scheduler is OFF (a scratch server)"
            )
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


def _left_behind_by_rename(admin: Any, schema: str) -> list[tuple[Any, ...]]:
    """What ``RENAME TABLE`` of every base table of ``schema`` would leave behind, as (kind, name):
    views, routines, triggers, events and tables of other types (SEQUENCE, SYSTEM VERSIONED...)."""
    return _rows(
        admin,
        "SELECT 'view', TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s "
        "UNION ALL SELECT 'routine', ROUTINE_NAME FROM information_schema.ROUTINES "
        "WHERE ROUTINE_SCHEMA = %s "
        "UNION ALL SELECT 'trigger', TRIGGER_NAME FROM information_schema.TRIGGERS "
        "WHERE TRIGGER_SCHEMA = %s "
        "UNION ALL SELECT 'event', EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s "
        "UNION ALL SELECT LOWER(TABLE_TYPE), TABLE_NAME FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = %s AND TABLE_TYPE NOT IN ('BASE TABLE', 'VIEW')",
        schema,
        schema,
        schema,
        schema,
        schema,
    )


# How long a RENAME TABLE of a swap or a rename into place waits for the tables' metadata locks.
RENAME_LOCK_WAIT_SECONDS = 10


def replace_database(
    conn_id: str,
    staging: str,
    target: str,
    *,
    keep_as: str,
    used_by: str,
    connect_timeout_seconds: int = 10,
    rename_lock_wait_seconds: int = RENAME_LOCK_WAIT_SECONDS,
) -> bool:
    """Put restored scratch database ``staging`` in the place of ``target``, keeping the old tables.

    MariaDB cannot rename a database: the tables move instead, all in ONE ``RENAME TABLE`` statement,
    which MariaDB applies atomically (all of it or nothing): ``target``'s tables into the new database
    ``keep_as`` (drop it once the restore is accepted) and ``staging``'s tables into ``target``. If the
    statement fails, no table has moved: the target is as it was, the staging copy still holds the
    restore, and the empty database made for the move is dropped again. The empty ``staging`` is
    dropped after a successful move.

    Refused before anything moves: a ``staging`` or ``target`` holding what ``RENAME TABLE`` would not
    move with the tables (views, routines, triggers, events) or could not move as plain tables
    (``SEQUENCE`` and ``SYSTEM VERSIONED`` tables), named in the message.

    The statement waits at most ``rename_lock_wait_seconds`` for the metadata locks of transactions
    open on those tables (and while it waits, new queries on them queue behind it): past that it fails,
    having moved nothing.

    :return: whether a previous ``target`` existed (and its tables are now in ``keep_as``).
    :raises RestoreRefused: ``staging`` is not a scratch database or does not exist, ``keep_as``
        exists, or a database holds objects the move cannot take.
    :raises RestoreError: the move failed (nothing moved); the message says what to do.
    """
    import pymysql

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
            others = _left_behind_by_rename(admin, schema)
            if others:
                listed = ", ".join(f"{kind} {name}" for kind, name in others[:5])
                more = f" and {len(others) - 5} more" if len(others) > 5 else ""
                raise RestoreRefused(
                    f"{used_by}: database {schema!r} holds objects a move of its tables would not take "
                    f"({listed}{more}): nothing was moved; restore into a new database and switch the "
                    "application over instead"
                )

        old, new = (_base_tables(admin, target) if existed else []), _base_tables(admin, staging)
        made = keep_as if existed else target
        log.info(
            "plan on %s: create database %r, then one RENAME TABLE moving %d table(s) of %r into %r and "
            "%d restored table(s) of %r into %r; then drop the empty %r",
            _address(conn),
            made,
            len(old),
            target,
            keep_as,
            len(new),
            staging,
            target,
            staging,
        )
        _rows(admin, f"CREATE DATABASE {_quote(made)}")
        moves = [_moves(target, keep_as, old)] if old else []
        moves += [_moves(staging, target, new)] if new else []
        if moves:
            try:
                _rename_atomically(admin, made, moves, lock_wait_seconds=rename_lock_wait_seconds)
            except pymysql.MySQLError as error:
                busy = error.args[0] == _LOCK_WAIT_TIMEOUT
                raise RestoreError(
                    f"{used_by}: the move of the tables on {_address(conn)} failed and moved nothing "
                    f"({first_line(error)}): {target!r} is as it was, {staging!r} still holds the restore; "
                    + (
                        f"transactions kept its tables busy for more than {rename_lock_wait_seconds} s: "
                        "end them (or stop the application) and put the restore in place again"
                        if busy
                        else "fix the cause and put the restore in place again"
                    )
                ) from error
        _drop(admin, staging)
    log.info(
        "%r now holds the restored tables%s",
        target,
        f"; the previous ones are kept in {keep_as!r}" if existed else "",
    )
    return existed


def _base_tables(admin: Any, schema: str) -> list[str]:
    """The base tables of ``schema``, sorted: what one RENAME TABLE moves."""
    return [
        row[0]
        for row in _rows(
            admin,
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
            "AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
            schema,
        )
    ]


def _rename_atomically(admin: Any, made: str, moves: list[str], *, lock_wait_seconds: int) -> None:
    """Run one ``RENAME TABLE`` of ``moves``, waiting at most ``lock_wait_seconds`` for table locks.

    MariaDB applies it whole or not at all: when it fails, nothing moved, so the database ``made`` for
    the move is still empty and is dropped again (only if so) before the error is raised.
    """
    import pymysql

    _rows(admin, f"SET SESSION lock_wait_timeout = {int(lock_wait_seconds)}")
    try:
        _rows(admin, "RENAME TABLE " + ", ".join(moves))
    except pymysql.MySQLError:
        with suppress(pymysql.MySQLError):  # the rename's own error is the one to report
            if not _rows(admin, "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", made):
                _rows(admin, f"DROP DATABASE {_quote(made)}")
        raise


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
        others = _left_behind_by_rename(admin, staging)
        if others:
            listed = ", ".join(f"{kind} {name}" for kind, name in others[:5])
            raise RestoreRefused(
                f"{used_by}: the restored database {staging!r} holds objects RENAME TABLE cannot move "
                f"({listed}): MariaDB cannot give it the name {target!r}"
            )
        tables = _base_tables(admin, staging)  # nothing else is left: refused above
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
            # A failed move leaves the just-created target empty and removes it: a retry finds the
            # final name free.
            _rename_atomically(
                admin, target, [_moves(staging, target, tables)], lock_wait_seconds=RENAME_LOCK_WAIT_SECONDS
            )
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

    Read in UTC whatever the session's or the server's time zone: TIMESTAMP values are stored in UTC and
    come out exact; DATETIME values carry no time zone and are taken as UTC (what mariadb-dump's
    ``TIME_ZONE='+00:00'`` and applications that store UTC agree on), not shifted by the scratch server's
    zone. The session's time zone is set back afterwards.
    """
    ((zone,),) = _rows(session, "SELECT @@SESSION.time_zone")
    _rows(session, "SET SESSION time_zone = '+00:00'")
    try:
        ((value,),) = _rows(session, f"SELECT UNIX_TIMESTAMP(MAX({_quote(column)})) FROM {_quote(table)}")
    finally:
        _rows(session, "SET SESSION time_zone = %s", zone)
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
