"""The MariaDB backup source: ``mariadb-dump --single-transaction`` under a global read lock held only
until the dump has opened its snapshot (see docs/design.md, "Backup sources"), with its manifest facts.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.connections import get_connection
from cloudops.engines import BackupSource, DumpCommand
from cloudops.engines.client_tools import (
    private_file,
)
from cloudops.engines.mariadb.facts import schema_fingerprint, table_row_counts
from cloudops.engines.mariadb.session import (
    CLIENT_PACKAGE,
    LOCK_WAIT_TIMEOUT,
    _address,
    _backup_session,
    _client,
    _close,
    _dotted,
    _option_file,
    _rows,
    _step,
    server_release,
)
from cloudops.errors import (
    BackupSourceError,
    DatabaseUnavailableError,
    ToolVersionError,
    first_line,
)

if TYPE_CHECKING:
    import pymysql
    from airflow.sdk import Connection

log = logging.getLogger(__name__)


# mariadb-dump --master-data=2 writes this comment right after it opened its snapshot (and read the
# snapshot's binlog position), before any row.
_DUMP_POSITION = re.compile(
    rb"^-- CHANGE MASTER TO MASTER_LOG_FILE='([^'\n]+)', MASTER_LOG_POS=(\d+);$", re.M
)
_DUMP_HEAD_LIMIT = 1024 * 1024  # the comment comes within the dump's first few KiB


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
            if error.args[0] != LOCK_WAIT_TIMEOUT:
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


__all__ = ["logical_backup_source"]
