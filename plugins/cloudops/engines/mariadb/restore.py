"""MariaDB restores: a checked SQL dump into a new (scratch) database with the client in ``--sandbox``
mode, the rename into place and the swap (one atomic ``RENAME TABLE``), and the drops.
"""

from __future__ import annotations

import logging
import re
import time
from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.connections import get_connection
from cloudops.engines import RestoreResult
from cloudops.engines.client_tools import (
    private_file,
    run_restore_tool,
)
from cloudops.engines.lifecycle import (
    DEFAULT_RESTORE_TIMEOUT,
    check_swap,
    check_target_name,
)
from cloudops.engines.mariadb.dump_scan import check_single_database_dump
from cloudops.engines.mariadb.session import (
    CLIENT_PACKAGE,
    LOCK_WAIT_TIMEOUT,
    _address,
    _admin_session,
    _client,
    _dotted,
    _option_file,
    _quote,
    _require_sandbox,
    _rows,
    server_release,
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
    RestoreError,
    RestoreRefused,
    ToolVersionError,
    first_line,
)

if TYPE_CHECKING:
    import pymysql
    from airflow.sdk import Connection

log = logging.getLogger(__name__)


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
    check_target_name(target_database)
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
    check_target_name(target)
    check_target_name(keep_as)
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        what=f"cannot put {staging!r} in the place of {target!r}",
    ) as admin:
        existed = check_swap(
            _ScratchOnMariadb(admin, conn), staging, target, keep_as=keep_as, used_by=used_by
        )
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
                busy = error.args[0] == LOCK_WAIT_TIMEOUT
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
    check_target_name(target)
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


__all__ = [
    "RENAME_LOCK_WAIT_SECONDS",
    "database_exists",
    "drop_database",
    "leftover_scratch_databases",
    "load_command",
    "rename_into_new",
    "replace_database",
    "restore_logical",
    "scratch_server_problem",
]
