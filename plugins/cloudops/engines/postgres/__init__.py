"""PostgreSQL behind the :class:`~cloudops.engines.protocol.Engine` protocol: ``ENGINE``, reached through
``cloudops.engines.engine("postgres")``.

The modules: :mod:`.session` (connecting, error translation, client programs, pgpass),
:mod:`.facts` (row counts, schema fingerprint, newest timestamp), :mod:`.backup` (``pg_dump`` and
``pg_basebackup`` sources), :mod:`.restore` (restore roles, restore, drop, rename, swap) and
:mod:`.replication` (probe, member state, lag). The module-level functions stay importable from here for
the callers (and tests) that need an engine-specific option the protocol does not carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cloudops.engines.lifecycle import DEFAULT_RESTORE_TIMEOUT
from cloudops.engines.postgres.backup import logical_backup_source, physical_backup_source
from cloudops.engines.postgres.facts import (
    FINGERPRINT_VERSION,
    fingerprinted_database,
    newest_timestamp,
    schema_fingerprint,
    table_row_counts,
)
from cloudops.engines.postgres.replication import (
    lag,
    lsn_bytes,
    member_state,
    probe,
    promote,
    timeline_of,
    topology,
)
from cloudops.engines.postgres.restore import (
    RESTORE_ROLE_VALIDITY,
    database_exists,
    drop_database,
    leftover_scratch_databases,
    rename_into_new,
    replace_database,
    restore_logical,
    restore_role_name,
    restored_database_connection,
)
from cloudops.engines.postgres.session import (
    CLIENT_PACKAGE,
    MAINTENANCE_DATABASE,
    client_major,
    server_major,
    snapshot_session,
)
from cloudops.errors import BackupSourceError, ReplicationError

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from cloudops.engines import BackupSource, DatabaseState, RestoreResult
    from cloudops.engines.replication import MemberState, ReplicationLag, SwitchoverResult, Topology


class PostgresEngine:
    """PostgreSQL (15 and later tested): logical and physical backups, restores as a restore role,
    streaming replication read from ``pg_stat_replication`` / ``pg_stat_wal_receiver``, and planned
    switchover, fence and rejoin (:mod:`.switchover`, the :class:`SwitchoverEngine` verbs)."""

    name: Literal["postgres"] = "postgres"
    default_port = 5432
    physical_backups = True
    schema_is_database = False
    sqlalchemy_driver = "postgresql+psycopg"

    def probe(self, conn_id: str, database: str, *, used_by: str, timeout_seconds: int = 5) -> DatabaseState:
        return probe(conn_id, database, used_by=used_by, timeout_seconds=timeout_seconds)

    def snapshot_session(
        self, conn_id: str | Connection, database: str, *, used_by: str
    ) -> AbstractContextManager[Any]:
        return snapshot_session(conn_id, database, used_by=used_by)

    def schema_fingerprint(self, session: Any) -> str:
        return schema_fingerprint(session)

    def table_row_counts(self, session: Any) -> dict[str, int]:
        return table_row_counts(session)

    def newest_timestamp(self, session: Any, table: str, column: str) -> datetime | None:
        return newest_timestamp(session, table, column)

    def backup_source(
        self,
        conn_id: str,
        database: str,
        *,
        method: str,
        used_by: str,
        workdir: Path,
        max_lock_wait_seconds: int,
    ) -> AbstractContextManager[BackupSource]:
        # A snapshot exported to pg_dump blocks no writes: there is no lock to bound.
        if method == "physical":
            return physical_backup_source(conn_id, used_by=used_by, workdir=workdir)
        if method == "logical":
            return logical_backup_source(conn_id, database, used_by=used_by, workdir=workdir)
        raise BackupSourceError(f"{used_by}: PostgreSQL backups are logical or physical, not {method!r}")

    def restore_logical(
        self,
        conn_id: str,
        target_database: str,
        dump_file: Path,
        *,
        used_by: str,
        run_id: str | None = None,
        as_superuser: bool = False,
    ) -> RestoreResult:
        return restore_logical(
            conn_id, target_database, dump_file, used_by=used_by, run_id=run_id, as_superuser=as_superuser
        )

    def checking_connection(self, conn_id: str, database: str, *, used_by: str) -> str | Connection:
        return restored_database_connection(conn_id, database, used_by=used_by)

    def scratch_server_problem(self, conn_id: str, *, used_by: str) -> str | None:
        # Restored objects run nothing on their own on PostgreSQL (no event scheduler): any server will do.
        return None

    def database_exists(self, conn_id: str, name: str, *, used_by: str) -> bool:
        return database_exists(conn_id, name, used_by=used_by)

    def drop_database(self, conn_id: str, name: str, *, used_by: str) -> bool:
        return drop_database(conn_id, name, used_by=used_by)

    def leftover_scratch_databases(
        self, conn_id: str, database: str, *, used_by: str | None = None
    ) -> list[str]:
        return leftover_scratch_databases(conn_id, database, used_by=used_by)

    def rename_into_new(self, conn_id: str, staging: str, target: str, *, used_by: str) -> None:
        rename_into_new(conn_id, staging, target, used_by=used_by)

    def replace_database(
        self, conn_id: str, staging: str, target: str, *, keep_as: str, used_by: str
    ) -> bool:
        return replace_database(conn_id, staging, target, keep_as=keep_as, used_by=used_by)

    def member_state(self, conn_id: str, *, name: str, used_by: str, timeout_seconds: int = 5) -> MemberState:
        return member_state(conn_id, name=name, used_by=used_by, timeout_seconds=timeout_seconds)

    def topology(
        self, cluster: str, members: Mapping[str, str], *, used_by: str, timeout_seconds: int = 5
    ) -> Topology:
        return topology(cluster, members, used_by=used_by, timeout_seconds=timeout_seconds)

    def lag(
        self, primary_conn_id: str, replica_conn_id: str, *, used_by: str, timeout_seconds: int = 5
    ) -> ReplicationLag:
        return lag(primary_conn_id, replica_conn_id, used_by=used_by, timeout_seconds=timeout_seconds)

    # -- switching over without a manager (SwitchoverEngine) -----------------------------------------

    def switchover(
        self, old: Any, new: Any, *, cluster: str, used_by: str, catch_up_timeout_s: float = 30
    ) -> SwitchoverResult:
        from cloudops.engines.postgres.switchover import switchover

        return switchover(old, new, cluster=cluster, used_by=used_by, catch_up_timeout_s=catch_up_timeout_s)

    def fence(self, node: Any, *, used_by: str, how: str = "stop") -> str:
        from cloudops.engines.postgres.switchover import fence

        if how not in ("stop", "read-only"):
            raise ReplicationError(f"{used_by}: a PostgreSQL fence is 'stop' or 'read-only', not {how!r}")
        return fence(node, used_by=used_by, how=how)  # type: ignore[arg-type]

    def rejoin(self, node: Any, *, new_primary: Any, used_by: str) -> str:
        from cloudops.engines.postgres.switchover import rejoin

        return rejoin(node, new_primary=new_primary, used_by=used_by)[1]


ENGINE = PostgresEngine()

__all__ = [
    "CLIENT_PACKAGE",
    "DEFAULT_RESTORE_TIMEOUT",
    "ENGINE",
    "FINGERPRINT_VERSION",
    "MAINTENANCE_DATABASE",
    "RESTORE_ROLE_VALIDITY",
    "PostgresEngine",
    "client_major",
    "database_exists",
    "drop_database",
    "fingerprinted_database",
    "lag",
    "leftover_scratch_databases",
    "logical_backup_source",
    "lsn_bytes",
    "member_state",
    "newest_timestamp",
    "physical_backup_source",
    "probe",
    "promote",
    "rename_into_new",
    "replace_database",
    "restore_logical",
    "restore_role_name",
    "restored_database_connection",
    "schema_fingerprint",
    "server_major",
    "snapshot_session",
    "table_row_counts",
    "timeline_of",
    "topology",
]
