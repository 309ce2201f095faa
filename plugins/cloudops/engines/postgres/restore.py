"""PostgreSQL restores: a logical dump into a new (scratch) database as a restore role of its own, the
rename into place (a new name, or over an existing database keeping the old one), and the drops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.connections import get_connection
from cloudops.engines import RestoreResult
from cloudops.engines.client_tools import run_restore_tool
from cloudops.engines.lifecycle import (
    DEFAULT_RESTORE_TIMEOUT,
    check_rename,
    check_swap,
    check_target_name,
)
from cloudops.engines.postgres.session import (
    MAINTENANCE_DATABASE,
    _address,
    _admin_session,
    _admin_step,
    _backup_session,
    _client,
    _credentials,
    _refuse_older_client,
    _server_version,
    _target_args,
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
)

if TYPE_CHECKING:
    import psycopg
    from airflow.sdk import Connection

log = logging.getLogger(__name__)


def _database_exists(session: psycopg.Connection[Any], name: str) -> bool:
    return session.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def _drop(session: psycopg.Connection[Any], name: str) -> None:
    from psycopg import sql

    check_scratch(name, action="drop")  # the last word, right before the statement
    # FORCE ends sessions still connected (a killed drill's validation); PostgreSQL 13 and later.
    session.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- the restore role ------------------------------------------------------------------------------
# A dump is untrusted input (whoever can write to the bucket writes it): pg_restore runs whatever SQL
# it carries (COPY ... TO PROGRAM, functions in untrusted languages, ALTER SYSTEM) with the privileges
# of the role it connects as. So it connects as a role of its own, named after the scratch database
# (so that its teardown and the next drill's leftover cleanup find it), that owns that database and
# may do nothing else: no superuser, no CREATEDB/CREATEROLE/REPLICATION/BYPASSRLS, member of no role
# (pg_read_server_files, pg_execute_server_program, ...). The checks of the restored copy connect as
# it too, so that nothing the dump defined (an operator of a type, a policy, a search_path) runs with
# more than it. Its password is made here, sent to the server already SCRAM-hashed (never in a
# statement a server log could keep), and expires: a role left behind cannot log in.
_RESTORE_ROLE_MARKER = "cloudops restore role of scratch database {name}"
_RESTORE_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
RESTORE_ROLE_VALIDITY = timedelta(hours=12)


def restore_role_name(database: str) -> str:
    """The role a restore into scratch database ``database`` runs as: the database's own name.

    :raises RestoreRefused: ``database`` is not a scratch name.
    """
    check_scratch(database, action="make a restore role for")
    return database


def _restore_role_state(session: psycopg.Connection[Any], role: str) -> str | None:
    """None (no such role), "ours" (made by a restore: marker and attributes), or why it is not ours."""
    row = session.execute(
        """
        SELECT r.rolsuper OR r.rolcreatedb OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls,
               shobj_description(r.oid, 'pg_authid'),
               EXISTS (SELECT 1 FROM pg_auth_members AS m WHERE m.member = r.oid)
        FROM pg_roles AS r WHERE r.rolname = %s
        """,
        [role],
    ).fetchone()
    if row is None:
        return None
    privileged, comment, member = row
    if comment != _RESTORE_ROLE_MARKER.format(name=role):
        return f"role {role!r} exists and was not made by a cloudops restore (no marker)"
    if privileged or member:
        return f"role {role!r} carries privileges or memberships a restore role never has"
    return "ours"


def _encrypted_password(session: psycopg.Connection[Any], role: str) -> tuple[str, str]:
    """A fresh random password and its SCRAM (or md5, as the server wants) verifier, made client-side."""
    import secrets as random_secrets

    password = random_secrets.token_urlsafe(32)
    verifier = session.pgconn.encrypt_password(password.encode(), role.encode())
    return password, verifier.decode()


def _set_restore_password(session: psycopg.Connection[Any], role: str) -> str:
    """Give the restore role a fresh password valid for :data:`RESTORE_ROLE_VALIDITY`; return it."""
    from psycopg import sql

    password, verifier = _encrypted_password(session, role)
    until = (datetime.now(UTC) + RESTORE_ROLE_VALIDITY).isoformat(timespec="seconds")
    session.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {} VALID UNTIL {}").format(
            sql.Identifier(role), sql.Literal(verifier), sql.Literal(until)
        )
    )
    return password


def _create_restore_role(admin: psycopg.Connection[Any], role: str, *, used_by: str, where: str) -> str:
    """Create the restore role (a leftover of an earlier try of the same run is dropped first).

    :return: its password.
    :raises RestoreRefused: a role of that name exists and is not a restore role.
    """
    from psycopg import sql

    state = _restore_role_state(admin, role)
    if state not in (None, "ours"):
        raise RestoreRefused(f"{used_by}: refusing to restore as {role!r} on {where}: {state}")
    if state == "ours":
        log.warning("restore role %r on %s exists, left by an earlier try: dropping it first", role, where)
        _drop_restore_role(admin, role)
    log.info(
        "creating restore role %r on %s: %s, owns only its scratch database",
        role,
        where,
        _RESTORE_ROLE_ATTRIBUTES,
    )
    admin.execute(sql.SQL(f"CREATE ROLE {{}} {_RESTORE_ROLE_ATTRIBUTES}").format(sql.Identifier(role)))
    admin.execute(
        sql.SQL("COMMENT ON ROLE {} IS {}").format(
            sql.Identifier(role), sql.Literal(_RESTORE_ROLE_MARKER.format(name=role))
        )
    )
    row = admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if not (row and row[0]):
        # A CREATEROLE (not superuser) login may make a database owned by a role only as its member.
        admin.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role)))
    return _set_restore_password(admin, role)


def _drop_restore_role(admin: psycopg.Connection[Any], role: str) -> bool:
    """Drop the restore role if it is one (marker checked right before); whether it existed."""
    from psycopg import sql

    check_scratch(role, action="drop the restore role")
    state = _restore_role_state(admin, role)
    if state is None:
        return False
    if state != "ours":
        raise RestoreRefused(f"refusing to drop {role!r}: {state}")
    admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    return True


def restored_database_connection(
    conn_id: str | Connection,
    database: str,
    *,
    used_by: str,
    maintenance_database: str = MAINTENANCE_DATABASE,
    connect_timeout_seconds: int = 10,
) -> Connection:
    """A connection to restored scratch database ``database`` as its restore role, for its checks.

    Whatever the dump defined (functions behind operators, row security policies, per-database
    settings) then runs with that role's privileges, never with the scratch server's login. The role
    gets a fresh password here (the one of the restore is gone with its task); the connection is built
    at run time, never stored. A database restored as the login itself (``restore_as_superuser``) has
    no restore role: then the login's own connection is returned.

    :raises RestoreRefused: ``database`` is not a scratch name.
    :raises DatabaseUnavailableError, RestoreError: the server cannot be reached, the password not set.
    """
    role = restore_role_name(database)
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn,
        maintenance_database,
        used_by=used_by,
        what=f"cannot give restore role {role!r} a password",
        connect_timeout_seconds=connect_timeout_seconds,
        query_timeout_seconds=60,
    ) as admin:
        state = _restore_role_state(admin, role)
        if state is None:
            log.info(
                "%r has no restore role (restored as %s): checking it as %s", database, conn.login, conn.login
            )
            return conn
        if state != "ours":
            raise RestoreRefused(f"{used_by}: refusing to check {database!r} as {role!r}: {state}")
        password = _set_restore_password(admin, role)
    return _as_role(conn, role, password, database=database)


def _as_role(conn: Connection, role: str, password: str, *, database: str | None = None) -> Connection:
    """``conn`` with another login and password (built at run time, never stored)."""
    from airflow.sdk import Connection

    return Connection(
        conn_id=f"restore_role_{role}",
        conn_type="postgres",
        host=conn.host,
        port=conn.port,
        login=role,
        password=password,
        schema=database or conn.schema,
        extra=conn.extra,
    )


class _ScratchOnPostgres:
    """The scratch lifecycle's view of one admin session (:class:`cloudops.engines.scratch.ScratchServer`):
    the ownership marker is the database's comment."""

    def __init__(self, session: psycopg.Connection[Any], conn: Connection) -> None:
        self.session, self.where = session, _address(conn)

    def exists(self, name: str) -> bool:
        return _database_exists(self.session, name)

    def marker(self, name: str) -> str | None:
        row = self.session.execute(
            "SELECT left(shobj_description(oid, 'pg_database'), %s) FROM pg_database WHERE datname = %s",
            [MARKER_MAX_LENGTH + 1, name],
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def create(self, name: str, marker: str) -> None:
        from psycopg import sql

        self.session.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        # CREATE DATABASE takes no comment: a crash in between leaves an unmarked database, never dropped.
        self.session.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(marker))
        )

    def drop(self, name: str) -> None:
        _drop(self.session, name)

    def names_like(self, pattern: str) -> list[str]:
        rows = self.session.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [pattern])
        return [str(name) for (name,) in rows.fetchall()]


def restore_logical(
    conn_id: str,
    target_database: str,
    dump_file: Path,
    *,
    used_by: str,
    run_id: str | None = None,
    jobs: int = 2,
    pg_restore: str = "pg_restore",
    workdir: Path | None = None,
    maintenance_database: str = MAINTENANCE_DATABASE,
    connect_timeout_seconds: int = 10,
    timeout: timedelta = DEFAULT_RESTORE_TIMEOUT,
    as_superuser: bool = False,
) -> RestoreResult:
    """Create ``target_database`` and restore a ``pg_dump -Fc`` file into it with ``pg_restore -j``.

    The restore only ever goes into a new database: an existing one is refused, unless it is a scratch
    database (:mod:`cloudops.engines.scratch`), which is then the leftover of an earlier try of the same
    run and is dropped first. The database is created from ``template0`` (so nothing an administrator
    added to ``template1`` clashes with the dump), and restored with ``--no-owner --no-privileges`` (the
    dump's roles need not exist here), ``--no-subscriptions --no-publications`` (a subscription would
    connect to the source's publisher) and ``--exit-on-error``. pg_restore connects as the database's
    restore role (:func:`restore_role_name`), made here: it owns the new database and can do nothing
    else, so SQL the dump carries (``COPY ... TO PROGRAM``, untrusted languages, ``ALTER SYSTEM``) fails
    instead of running with the server login's privileges. A failed restore leaves the database (and
    its role) for the caller's teardown (:func:`drop_database`) or for inspection. The password reaches
    pg_restore through a 0600 pgpass file in ``workdir`` (default: the dump's folder), removed on exit.

    :param target_database: the database to create.
    :param dump_file: a local custom-format dump (pg_restore -j needs a seekable file).
    :param used_by: what is restored (``restore drill of 'orders_pg'``), named in errors.
    :param run_id: the run a scratch ``target_database`` is named after (required for one): it is
        created with its ownership marker, and an existing one is dropped only when cloudops created it.
    :param jobs: parallel pg_restore jobs.
    :param timeout: the longest pg_restore may run; it is killed after it.
    :param as_superuser: run pg_restore as the connection's own login instead (the catalog's
        ``drill.restore_as_superuser``, for dumps with extensions only a superuser may create).
    :raises RestoreRefused: the target exists and is not a scratch database cloudops created, or its
        name is unusable (a scratch name of another run), or a role of the target's name exists that
        no restore made.
    :raises ToolMissingError, ToolVersionError: pg_restore is missing or older than the server.
    :raises DatabaseUnavailableError: the server cannot be reached.
    :raises RestoreError: the database could not be created, or pg_restore failed (its first lines).
    """
    check_target_name(target_database)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if not dump_file.is_file():
        raise RestoreError(f"{used_by}: the dump {dump_file} does not exist or is not a file")
    tool, tool_version, major = _client(pg_restore)
    conn = get_connection(conn_id, used_by)
    started = time.monotonic()
    with _backup_session(
        conn,
        maintenance_database,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        query_timeout_seconds=600,
        application_name="cloudops-restore",
    ) as admin:
        with _admin_step(admin, conn, used_by, "cannot read the server's version"):
            server_version, server_num = _server_version(admin)
        _refuse_older_client("pg_restore", tool_version, major, server_version, server_num, used_by)
        replaced = False
        with _admin_step(admin, conn, used_by, f"cannot create database {target_database!r}"):
            if not is_scratch_name(target_database):
                exists = _database_exists(admin, target_database)
                raise RestoreRefused(
                    f"{used_by}: refusing to restore into database {target_database!r} on "
                    f"{_address(conn)}: "
                    + (
                        "it exists and is not a scratch database (a restore only creates a new database)"
                        if exists
                        else "restores land in a scratch database (drill_...) first, renamed once checked"
                    )
                )
            from psycopg import sql

            role = restore_role_name(target_database)
            squatted = _restore_role_state(admin, role)
            if not as_superuser and squatted not in (None, "ours"):
                raise RestoreRefused(
                    f"{used_by}: refusing to restore as {role!r} on {_address(conn)}: {squatted}"
                )
            # The database first (with its ownership marker; a marked leftover of an earlier try of
            # this run is dropped, and with it what its restore role owned), then the restore role.
            replaced = create_scratch(
                _ScratchOnPostgres(admin, conn), target_database, run_id=run_id, used_by=used_by
            )
            loader = conn
            if as_superuser:
                log.warning(
                    "%s: restoring as %s itself (the catalog's restore_as_superuser): the dump's SQL runs "
                    "with that login's privileges",
                    used_by,
                    conn.login,
                )
            else:
                loader = _as_role(
                    conn, role, _create_restore_role(admin, role, used_by=used_by, where=_address(conn))
                )
                log.info("giving %r to its restore role %r", target_database, role)
                admin.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        sql.Identifier(target_database), sql.Identifier(role)
                    )
                )
    with _credentials(loader, workdir or dump_file.parent, application_name="cloudops-restore") as env:
        description = (
            f"pg_restore {tool_version} -j {jobs} of {dump_file.name} into database {target_database!r} "
            f"on {_address(conn)} as {loader.login} ({used_by})"
        )
        log.info("running %s", description)
        run_restore_tool(
            [
                tool,
                f"--jobs={jobs}",
                "--no-owner",
                "--no-privileges",
                "--no-subscriptions",
                "--no-publications",
                "--exit-on-error",
                "--no-password",
                *_target_args(loader),
                f"--dbname={target_database}",
                str(dump_file),
            ],
            env=env,
            timeout_seconds=timeout.total_seconds(),
            description=description,
            secrets=[conn.password or "", loader.password or ""],
        )
    seconds = time.monotonic() - started
    log.info("restored %s into %r on %s in %.1f s", dump_file.name, target_database, _address(conn), seconds)
    return RestoreResult(
        database=target_database,
        seconds=seconds,
        tool=f"pg_restore {tool_version}",
        replaced_leftover=replaced,
    )


def drop_database(
    conn_id: str,
    name: str,
    *,
    used_by: str,
    maintenance_database: str = MAINTENANCE_DATABASE,
    connect_timeout_seconds: int = 10,
) -> bool:
    """Drop scratch database ``name`` (sessions still connected to it are ended) if cloudops created
    it (:func:`cloudops.engines.scratch.drop_scratch`), and its restore role; safe to repeat.

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
        maintenance_database,
        used_by=used_by,
        what=f"cannot drop scratch database {name!r}",
        connect_timeout_seconds=connect_timeout_seconds,
    ) as admin:
        existed = drop_scratch(_ScratchOnPostgres(admin, conn), name, used_by=used_by)
        # The role goes with its database, or alone when a restore left it without one.
        if _drop_restore_role(admin, restore_role_name(name)):
            log.info("dropped restore role %r of scratch database %r on %s", name, name, _address(conn))
    return existed


def replace_database(
    conn_id: str,
    staging: str,
    target: str,
    *,
    keep_as: str,
    used_by: str,
    maintenance_database: str = MAINTENANCE_DATABASE,
    connect_timeout_seconds: int = 10,
    lock_timeout_seconds: float = 30,
) -> bool:
    """Put restored scratch database ``staging`` in the place of ``target``, keeping the old one.

    The approved end of a restore over an existing database: nothing is dropped. First the staging
    copy is handed from its restore role to the server's login (which owned databases restored before
    restore roles existed) and the role is dropped. Then new connections to ``target`` and ``staging``
    are refused (``ALLOW_CONNECTIONS false``, committed, so that a pool reconnecting at once cannot
    slip in between), the sessions connected to them are ended, and ``target`` is renamed ``keep_as``
    (drop it once the restore is accepted) and ``staging`` renamed ``target``, in one transaction:
    either both renames happen or neither. Connections are allowed again on every path: to the new
    ``target`` and ``keep_as`` after the swap, to ``target`` and ``staging`` as they were when it failed.

    :param lock_timeout_seconds: how long a rename may wait for a lock (another session altering one
        of the databases) before the swap fails, rather than keeping the target closed.
    :return: whether a previous ``target`` existed (and is now ``keep_as``).
    :raises RestoreRefused: ``staging`` is not a scratch database, it does not exist, or ``keep_as``
        exists already.
    :raises RestoreError: the swap failed; ``target`` is in place and accepts connections again.
    """
    from psycopg import sql

    check_scratch(staging, action="rename into place")
    check_target_name(target)
    check_target_name(keep_as)
    conn = get_connection(conn_id, used_by)
    what = f"cannot put {staging!r} in the place of {target!r}"

    def admin_session() -> AbstractContextManager[psycopg.Connection[Any]]:
        return _admin_session(
            conn,
            maintenance_database,
            used_by=used_by,
            what=what,
            connect_timeout_seconds=connect_timeout_seconds,
        )

    with admin_session() as admin:
        existed = check_swap(
            _ScratchOnPostgres(admin, conn), staging, target, keep_as=keep_as, used_by=used_by
        )
    _retire_restore_role(
        conn,
        staging,
        maintenance_database,
        used_by=used_by,
        what=what,
        connect_timeout_seconds=connect_timeout_seconds,
    )
    closed = [target, staging] if existed else [staging]
    log.info(
        "plan on %s: refuse new connections to %s, end their sessions, %srename %r to %r, then allow "
        "connections again",
        _address(conn),
        " and ".join(repr(name) for name in closed),
        f"rename {target!r} to {keep_as!r}, " if existed else "",
        staging,
        target,
    )
    reopen = closed
    with admin_session() as admin:
        try:
            _allow_connections(admin, closed, allowed=False)
            admin.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{lock_timeout_seconds:g}s")))
            with admin.transaction():
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
                    [closed],
                )
                if existed:
                    admin.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(target), sql.Identifier(keep_as)
                        )
                    )
                admin.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(staging), sql.Identifier(target)
                    )
                )
                # The scratch marker does not belong on a database in use (its seal no longer matches).
                admin.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(target)))
            reopen = [target, keep_as] if existed else [target]
        finally:
            _reopen(admin, reopen, admin_session)
    log.info(
        "%r is now the restored database%s",
        target,
        f"; the previous one is kept as {keep_as!r}" if existed else "",
    )
    return existed


def _allow_connections(session: psycopg.Connection[Any], names: list[str], *, allowed: bool) -> None:
    from psycopg import sql

    for name in names:
        session.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("true" if allowed else "false")
            )
        )


def _reopen(
    session: psycopg.Connection[Any],
    names: list[str],
    admin_session: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
) -> None:
    """Allow connections to ``names`` again, on a new session when the swap's own was lost."""
    import psycopg

    try:
        _allow_connections(session, names, allowed=True)
    except psycopg.Error:
        if not session.closed:
            raise
        with admin_session() as again:
            _allow_connections(again, names, allowed=True)
    log.info("connections allowed again to %s", ", ".join(repr(name) for name in names))


def _retire_restore_role(
    conn: Connection,
    staging: str,
    maintenance_database: str,
    *,
    used_by: str,
    what: str,
    connect_timeout_seconds: int,
) -> None:
    """Hand the staging copy and everything in it from its restore role to the login; drop the role.

    A database that goes into production must not be owned by a role that is dropped with the restore,
    nor keep a login whose password the restore made.
    """
    from psycopg import sql

    role = restore_role_name(staging)
    with _admin_session(
        conn,
        maintenance_database,
        used_by=used_by,
        what=what,
        connect_timeout_seconds=connect_timeout_seconds,
    ) as admin:
        state = _restore_role_state(admin, role)
        if state is None:
            return
        if state != "ours":
            raise RestoreRefused(f"{used_by}: refusing to hand {staging!r} over from {role!r}: {state}")
    log.info("handing %r over from restore role %r to %s, then dropping the role", staging, role, conn.login)
    with _admin_session(
        conn, staging, used_by=used_by, what=what, connect_timeout_seconds=connect_timeout_seconds
    ) as inside:
        # In the database itself: REASSIGN OWNED reaches its objects only from there (and the database).
        inside.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
        inside.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with _admin_session(
        conn,
        maintenance_database,
        used_by=used_by,
        what=what,
        connect_timeout_seconds=connect_timeout_seconds,
    ) as admin:
        _drop_restore_role(admin, role)


def database_exists(
    conn_id: str,
    name: str,
    *,
    used_by: str,
    maintenance_database: str = MAINTENANCE_DATABASE,
    connect_timeout_seconds: int = 10,
) -> bool:
    """Whether database ``name`` exists on the server (read only)."""
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn,
        maintenance_database,
        used_by=used_by,
        what=f"cannot look for database {name!r}",
        connect_timeout_seconds=connect_timeout_seconds,
        query_timeout_seconds=60,
    ) as admin:
        return _database_exists(admin, name)


def rename_into_new(
    conn_id: str,
    staging: str,
    target: str,
    *,
    used_by: str,
    maintenance_database: str = MAINTENANCE_DATABASE,
    connect_timeout_seconds: int = 10,
) -> None:
    """Give restored scratch database ``staging`` the name ``target``, which must not exist.

    The end of a restore into a new database: until it, nothing carries the final name, so a failed
    restore leaves nothing that looks real. One ``ALTER DATABASE ... RENAME``: PostgreSQL refuses it
    when ``target`` exists, so two restores racing for one name cannot overwrite each other.

    :raises RestoreRefused: ``staging`` is not a scratch database or does not exist, or ``target`` exists.
    """
    from psycopg import sql

    check_scratch(staging, action="rename into place")
    check_target_name(target)
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn,
        maintenance_database,
        used_by=used_by,
        what=f"cannot rename {staging!r} to {target!r}",
        connect_timeout_seconds=connect_timeout_seconds,
    ) as admin:
        check_rename(_ScratchOnPostgres(admin, conn), staging, target, used_by=used_by)
        log.info("plan on %s: rename %r to %r (a new database)", _address(conn), staging, target)
    # The copy goes into use: it must not stay owned by the restore's own role (dropped with it).
    _retire_restore_role(
        conn,
        staging,
        maintenance_database,
        used_by=used_by,
        what=f"cannot rename {staging!r} to {target!r}",
        connect_timeout_seconds=connect_timeout_seconds,
    )
    with _admin_session(
        conn,
        maintenance_database,
        used_by=used_by,
        what=f"cannot rename {staging!r} to {target!r}",
        connect_timeout_seconds=connect_timeout_seconds,
    ) as admin:
        # PostgreSQL refuses the rename when the target appeared meanwhile: nothing is overwritten.
        admin.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(staging), sql.Identifier(target))
        )
        # The scratch marker does not belong on a database in use (its seal no longer matches).
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(target)))
    log.info("%r is now the restored database on %s", target, _address(conn))


def leftover_scratch_databases(
    conn_id: str,
    database: str,
    *,
    used_by: str | None = None,
    maintenance_database: str = MAINTENANCE_DATABASE,
    connect_timeout_seconds: int = 10,
) -> list[str]:
    """List the scratch databases of catalog database ``database`` that cloudops created, sorted.

    What a drill killed half-way leaves behind; the next drill drops them (:func:`drop_database`). A
    scratch-shaped name without a valid marker is left out, with its reason logged.
    """
    used_by = used_by or f"scratch databases of {database!r}"
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn,
        maintenance_database,
        used_by=used_by,
        what="cannot list databases",
        connect_timeout_seconds=connect_timeout_seconds,
        query_timeout_seconds=60,
    ) as admin:
        return leftover_scratch(_ScratchOnPostgres(admin, conn), database)


__all__ = [
    "RESTORE_ROLE_VALIDITY",
    "database_exists",
    "drop_database",
    "leftover_scratch_databases",
    "rename_into_new",
    "replace_database",
    "restore_logical",
    "restore_role_name",
    "restored_database_connection",
]
