"""PostgreSQL backup sources: ``pg_dump -Fc`` from an exported snapshot, and ``pg_basebackup`` of the
whole cluster as one tar stream; each with the manifest facts of what it dumps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.connections import get_connection
from cloudops.engines import BackupSource, DumpCommand
from cloudops.engines.postgres.facts import (
    _WAL_POSITION,
    fingerprinted_database,
    schema_fingerprint,
    table_row_counts,
)
from cloudops.engines.postgres.session import (
    _address,
    _backup_session,
    _client,
    _credentials,
    _prepared,
    _refuse_older_client,
    _server_version,
    _target_args,
)
from cloudops.errors import (
    BackupSourceError,
)

if TYPE_CHECKING:
    import psycopg
    from airflow.sdk import Connection

log = logging.getLogger(__name__)


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


__all__ = ["logical_backup_source", "physical_backup_source"]
