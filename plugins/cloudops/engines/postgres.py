"""PostgreSQL: replication state, backup sources (pg_dump, pg_basebackup) with their manifest facts, and
restores of logical dumps into new (scratch) databases.

Later runbooks add promote and rewind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
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
    import psycopg
    from airflow.sdk import Connection

log = logging.getLogger(__name__)

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


# -- backups -------------------------------------------------------------------------------------------

CLIENT_PACKAGE = "postgresql-client"
FINGERPRINT_VERSION = 1  # part of what is hashed: a change of the algorithm changes every fingerprint

# Schemas starting with pg_ are reserved (catalog, toast, temp); extension members come with
# CREATE EXTENSION on a restore, so they are the extension's, not the database's own tables.
_USER_TABLES = """
SELECT c.oid, n.nspname, c.relname, c.relkind
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend AS d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
  )
ORDER BY n.nspname, c.relname
"""
_TABLE_OPTIONS = """
SELECT c.oid, c.relpersistence,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
       CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END
FROM pg_class AS c WHERE c.oid = ANY(%s::oid[])
"""
_COLUMNS = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated
FROM pg_attribute AS a
LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY(%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
_CONSTRAINTS = """
SELECT conrelid, conname, contype, pg_get_constraintdef(oid)
FROM pg_constraint WHERE conrelid = ANY(%s::oid[])
"""
_INDEXES = "SELECT indrelid, pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = ANY(%s::oid[])"
# pg_current_wal_lsn() fails on a standby: there, the position is how far replay has come.
_WAL_POSITION = """
SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_walfile_name(pg_current_wal_lsn()) END
"""


def table_row_counts(session: psycopg.Connection[Any]) -> dict[str, int]:
    """Count the rows of every user table exactly, keyed ``schema.table``, in the session's snapshot.

    Partitioned parents are left out: their rows are their partitions' rows, which are counted.
    Run it inside a REPEATABLE READ transaction so that all the counts come from one snapshot.
    """
    from psycopg import sql

    counts: dict[str, int] = {}
    for _oid, schema, table, kind in session.execute(_USER_TABLES).fetchall():
        if kind != "r":
            continue
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        row = session.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def schema_fingerprint(session: psycopg.Connection[Any]) -> str:
    """Return a SHA-256 of the user tables' definitions that a restored copy of the database reproduces.

    What is hashed: per table (sorted by schema and name), its kind, persistence and partitioning, its
    columns in order (name, type, NOT NULL, default, identity, generated), its constraints (primary key,
    unique, check, foreign key, exclusion) and its indexes. Nothing a restore changes is in it: no OIDs,
    no database name, no owners, no tablespaces, no statistics. Definitions are rendered with a search
    path of pg_catalog only, so every user name is schema-qualified whatever the session's settings.
    """
    with _qualified_names(session):
        tables = session.execute(_USER_TABLES).fetchall()
        oids = [oid for oid, *_ in tables]
        described: dict[int, dict[str, Any]] = {
            oid: {
                "schema": schema,
                "table": table,
                "kind": kind,
                "columns": [],
                "constraints": [],
                "indexes": [],
            }
            for oid, schema, table, kind in tables
        }
        for oid, persistence, partition_key, partition_bound in session.execute(
            _TABLE_OPTIONS, [oids]
        ).fetchall():
            described[oid].update(
                persistence=persistence, partition_key=partition_key, partition_bound=partition_bound
            )
        for oid, *column in session.execute(_COLUMNS, [oids]).fetchall():
            described[oid]["columns"].append(column)
        for oid, *constraint in session.execute(_CONSTRAINTS, [oids]).fetchall():
            described[oid]["constraints"].append(constraint)
        for oid, definition in session.execute(_INDEXES, [oids]).fetchall():
            described[oid]["indexes"].append(definition)
    for table in described.values():
        table["constraints"].sort()
        table["indexes"].sort()
    document = {
        "fingerprint": f"cloudops-postgres-{FINGERPRINT_VERSION}",
        "tables": sorted(described.values(), key=lambda t: (t["schema"], t["table"])),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@contextmanager
def _qualified_names(session: psycopg.Connection[Any]) -> Iterator[None]:
    """Render names schema-qualified for the duration, then give the session its search path back."""
    from psycopg import pq

    row = session.execute("SELECT current_setting('search_path')").fetchone()
    saved = row[0] if row else ""
    session.execute("SELECT set_config('search_path', 'pg_catalog', false)")
    try:
        yield
    finally:
        # In a failed transaction the SET is undone by the rollback anyway; do not mask the error.
        if session.info.transaction_status != pq.TransactionStatus.INERROR:
            session.execute("SELECT set_config('search_path', %s, false)", [saved])


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
def logical_backup_source(
    conn_id: str,
    database: str,
    *,
    used_by: str,
    workdir: Path,
    pg_dump: str = "pg_dump",
    connect_timeout_seconds: int = 10,
    query_timeout_seconds: int = 3600,
    lock_wait_timeout_seconds: int = 300,
) -> Iterator[BackupSource]:
    """Prepare a ``pg_dump -Fc`` of ``database`` whose manifest facts come from the dump's own snapshot.

    A REPEATABLE READ transaction exports its snapshot; ``pg_dump --snapshot`` imports it, so the dump sees
    exactly the data that the row counts and the schema fingerprint were taken from. The transaction
    must stay open until pg_dump has imported the snapshot, hence a context manager: keep it open while
    the dump runs. The password reaches pg_dump through a 0600 pgpass file in ``workdir``, removed on exit.

    :param used_by: what is backed up (``database 'orders_pg'``), named in errors.
    :param pg_dump: the program to run (name on PATH or path).
    :param lock_wait_timeout_seconds: how long pg_dump may wait for a table lock before failing, rather
        than queueing forever behind a DDL statement.
    :raises ConnectionMissingError: when the Airflow connection does not exist.
    :raises ToolMissingError, ToolVersionError: when pg_dump is missing or older than the server.
    :raises DatabaseUnavailableError: when the server cannot be reached; nothing was started.
    """
    tool, tool_version, major = _client(pg_dump)
    conn = get_connection(conn_id, used_by)
    with _backup_session(
        conn,
        database,
        used_by=used_by,
        connect_timeout_seconds=connect_timeout_seconds,
        query_timeout_seconds=query_timeout_seconds,
    ) as session:
        with _prepared(session, conn, used_by):
            server_version, server_num = _server_version(session)
            _refuse_older_client("pg_dump", tool_version, major, server_version, server_num, used_by)
            # Read just before the snapshot: what the dump lacks was all written after it (a lower bound).
            wal = session.execute(_WAL_POSITION).fetchone()
            assert wal is not None
            session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = session.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            snapshot = str(row[0])
            facts: dict[str, Any] = {
                "engine": "postgres",
                "engine_version": server_version,
                "tool_versions": {"pg_dump": tool_version},
                "database": database,
                "row_counts": table_row_counts(session),
                "schema_fingerprint": schema_fingerprint(session),
                "position": {"lsn_start": wal[0]},
            }
        with _credentials(conn, workdir) as env:
            command = DumpCommand(
                argv=[
                    tool,
                    "-Fc",
                    "-Z0",  # the pipeline compresses with zstd
                    f"--snapshot={snapshot}",
                    f"--lock-wait-timeout={lock_wait_timeout_seconds}s",
                    "--no-password",
                    *_target_args(conn),
                    "-d",
                    database,
                ],
                env=env,
                object_name=f"{database}.pgdump.zst",
                format="pg_dump-custom",
                description=(
                    f"pg_dump {tool_version} (custom format) of database {database!r} on {_address(conn)} "
                    f"as {conn.login}, snapshot {snapshot}"
                ),
            )
            log.info("backup source for %s: %s", used_by, command.description)
            yield BackupSource(command=command, facts=facts)


@contextmanager
def physical_backup_source(
    conn_id: str,
    *,
    used_by: str,
    workdir: Path,
    pg_basebackup: str = "pg_basebackup",
    connect_timeout_seconds: int = 10,
    query_timeout_seconds: int = 300,
) -> Iterator[BackupSource]:
    """Prepare a ``pg_basebackup`` of the whole cluster as one tar stream, with the WAL it needs inside.

    ``-D - -Ft`` writes one tar to stdout; that works only without extra tablespaces and with
    ``-X fetch`` (``-X stream`` needs a directory), so WAL is fetched at the end of the backup: the
    server must keep it meanwhile (``wal_keep_size`` or archiving). ``lsn_start`` is read before the
    backup starts and ``finish()`` reads ``lsn_end`` after it ended, so together they bracket the WAL the
    backup needs. The schema fingerprint of the connection's database is recorded (it is cheap); row counts
    are not, since no snapshot matches a physical copy that is only consistent at its end.

    :raises ConnectionMissingError, ToolMissingError, ToolVersionError, DatabaseUnavailableError: as for
        :func:`logical_backup_source`.
    :raises BackupSourceError: when the role lacks REPLICATION, the server has no WAL senders, or the
        cluster has tablespaces that a tar on stdout cannot hold.
    """
    tool, tool_version, major = _client(pg_basebackup)
    conn = get_connection(conn_id, used_by)
    database = fingerprinted_database(conn)

    def session() -> AbstractContextManager[psycopg.Connection[Any]]:
        return _backup_session(
            conn,
            database,
            used_by=used_by,
            connect_timeout_seconds=connect_timeout_seconds,
            query_timeout_seconds=query_timeout_seconds,
        )

    with session() as check, _prepared(check, conn, used_by):
        server_version, server_num = _server_version(check)
        _refuse_older_client("pg_basebackup", tool_version, major, server_version, server_num, used_by)
        _check_physical_preconditions(check, conn, used_by)
        fingerprint = schema_fingerprint(check)
        wal = check.execute(_WAL_POSITION).fetchone()
        assert wal is not None
    facts: dict[str, Any] = {
        "engine": "postgres",
        "engine_version": server_version,
        "tool_versions": {"pg_basebackup": tool_version},
        "database": None,  # the whole cluster
        "schema_fingerprint": fingerprint,
        "fingerprint_database": database,
        "position": {"lsn_start": wal[0], **({"wal_file_start": wal[1]} if wal[1] else {})},
    }

    def finish() -> dict[str, Any]:
        """The whole position, start and end, so that merging it over ``facts`` keeps both."""
        with session() as after, _prepared(after, conn, used_by):
            end = after.execute(_WAL_POSITION).fetchone()
        assert end is not None
        ended = {"lsn_end": end[0], **({"wal_file_end": end[1]} if end[1] else {})}
        return {"position": {**facts["position"], **ended}}

    with _credentials(conn, workdir) as env:
        command = DumpCommand(
            argv=[
                tool,
                "-D",
                "-",
                "-Ft",
                "-X",
                "fetch",
                "--checkpoint=fast",
                "--no-password",
                "--label=cloudops",
                *_target_args(conn),
            ],
            env=env,
            object_name="base.tar.zst",
            format="pg_basebackup-tar",
            description=(
                f"pg_basebackup {tool_version} (tar on stdout, WAL fetched) of the cluster on "
                f"{_address(conn)} as {conn.login}"
            ),
        )
        log.info("backup source for %s: %s", used_by, command.description)
        yield BackupSource(command=command, facts=facts, on_finish=finish)


def fingerprinted_database(conn: Connection) -> str:
    """The database whose schema fingerprint a physical backup of ``conn``'s cluster records."""
    return conn.schema or "postgres"


def _check_physical_preconditions(session: psycopg.Connection[Any], conn: Connection, used_by: str) -> None:
    """Refuse before starting what pg_basebackup would refuse after a checkpoint and a partial stream."""
    row = session.execute(
        """
        SELECT (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
               current_setting('max_wal_senders')::int,
               (SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global'))
        """
    ).fetchone()
    assert row is not None
    may_replicate, wal_senders, tablespaces = row
    if not may_replicate:
        raise BackupSourceError(
            f"{used_by}: role {conn.login!r} cannot take a base backup: grant it REPLICATION "
            f"(ALTER ROLE {conn.login} REPLICATION)"
        )
    if wal_senders < 1:
        raise BackupSourceError(f"{used_by}: max_wal_senders is 0, so the server accepts no base backup")
    if tablespaces:
        raise BackupSourceError(
            f"{used_by}: the cluster has {tablespaces} tablespace(s) besides pg_default, and a base backup "
            "written as one tar on stdout cannot hold them"
        )


# -- restores ------------------------------------------------------------------------------------------

# Where CREATE and DROP DATABASE run from: a session cannot drop the database it is connected to.
MAINTENANCE_DATABASE = "postgres"
DEFAULT_RESTORE_TIMEOUT = timedelta(hours=6)
# A new database's name: the catalog's database names, without a leading "-" that argv could misread.
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_$-]{0,62}$")  # never a leading - or $


def _check_target_name(name: str) -> None:
    if not _TARGET_NAME.match(name):
        raise RestoreRefused(
            f"{name!r} is not a database name a restore may create "
            "(letters, digits, _ $ -, at most 63, not starting with - or $)"
        )


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
    _check_target_name(target_database)
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
    _check_target_name(target)
    _check_target_name(keep_as)
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
        if not _database_exists(admin, staging):
            raise RestoreRefused(
                f"{used_by}: the restored database {staging!r} does not exist on {_address(conn)}"
            )
        if _database_exists(admin, keep_as):
            raise RestoreRefused(
                f"{used_by}: database {keep_as!r} exists on {_address(conn)}: refusing to overwrite it"
            )
        existed = _database_exists(admin, target)
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
    _check_target_name(target)
    conn = get_connection(conn_id, used_by)
    with _admin_session(
        conn,
        maintenance_database,
        used_by=used_by,
        what=f"cannot rename {staging!r} to {target!r}",
        connect_timeout_seconds=connect_timeout_seconds,
    ) as admin:
        if not _database_exists(admin, staging):
            raise RestoreRefused(
                f"{used_by}: the restored database {staging!r} does not exist on {_address(conn)}"
            )
        if _database_exists(admin, target):
            raise RestoreRefused(
                f"{used_by}: database {target!r} exists on {_address(conn)}: a restore into a new database "
                f"never replaces one (the restored copy stays {staging!r} until the teardown drops it)"
            )
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


def newest_timestamp(session: psycopg.Connection[Any], table: str, column: str) -> datetime | None:
    """Return the greatest value of a date or time column as an aware datetime (None: no rows).

    ``table`` is ``schema.table`` or a bare name (schema ``public``). A column without a time zone is
    read in the session's time zone.
    """
    from psycopg import sql

    schema, _, name = table.rpartition(".")
    query = sql.SQL("SELECT max({})::timestamptz FROM {}.{}").format(
        sql.Identifier(column), sql.Identifier(schema or "public"), sql.Identifier(name)
    )
    row = session.execute(query).fetchone()
    value = row[0] if row else None
    return value.astimezone(UTC) if isinstance(value, datetime) else None


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


__all__ = [
    "DEFAULT_RESTORE_TIMEOUT",
    "MAINTENANCE_DATABASE",
    "database_exists",
    "drop_database",
    "fingerprinted_database",
    "leftover_scratch_databases",
    "logical_backup_source",
    "newest_timestamp",
    "physical_backup_source",
    "probe",
    "rename_into_new",
    "restore_logical",
    "schema_fingerprint",
    "snapshot_session",
    "table_row_counts",
]
