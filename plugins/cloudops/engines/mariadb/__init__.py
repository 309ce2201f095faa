"""MariaDB behind the :class:`~cloudops.engines.protocol.Engine` protocol: ``ENGINE``, reached through
``cloudops.engines.engine("mariadb")``.

The modules: :mod:`.session` (connecting, error translation, client programs and ``--sandbox``),
:mod:`.facts` (row counts, schema fingerprint, newest timestamp), :mod:`.backup` (the ``mariadb-dump``
source and its brief read lock), :mod:`.dump_scan` (the check of a dump before it is loaded),
:mod:`.restore` (restore, drop, rename, swap), :mod:`.replication` (probe, member state, lag) and
:mod:`.switchover` (GTID switchover, rejoin, fence: the :class:`SwitchoverEngine` verbs). The
module-level functions stay importable from here for callers (and tests) that need an option the
protocol does not carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cloudops.engines.lifecycle import DEFAULT_RESTORE_TIMEOUT
from cloudops.engines.mariadb.backup import logical_backup_source
from cloudops.engines.mariadb.dump_scan import check_single_database_dump
from cloudops.engines.mariadb.facts import (
    FINGERPRINT_VERSION,
    newest_timestamp,
    schema_fingerprint,
    table_row_counts,
)
from cloudops.engines.mariadb.replication import lag, lag_from_status, member_state, probe, topology
from cloudops.engines.mariadb.restore import (
    RENAME_LOCK_WAIT_SECONDS,
    database_exists,
    drop_database,
    leftover_scratch_databases,
    load_command,
    rename_into_new,
    replace_database,
    restore_logical,
    scratch_server_problem,
)
from cloudops.engines.mariadb.session import (
    CLIENT_PACKAGE,
    SANDBOX_RELEASES,
    client_release,
    server_release,
    snapshot_session,
)
from cloudops.errors import BackupSourceError

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from cloudops.engines import BackupSource, DatabaseState, RestoreResult
    from cloudops.engines.replication import MemberState, ReplicationLag, SwitchoverResult, Topology


class MariadbEngine:
    """MariaDB (10.5 and later; 10.11 tested): logical backups only, loads in the client's ``--sandbox``
    mode, GTID replication read from ``SHOW SLAVE STATUS`` and the GTID positions."""

    name: Literal["mariadb"] = "mariadb"
    default_port = 3306
    physical_backups = False
    schema_is_database = True
    sqlalchemy_driver = "mysql+pymysql"

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
        if method != "logical":
            raise BackupSourceError(f"{used_by}: MariaDB backups are logical only")
        return logical_backup_source(
            conn_id, database, used_by=used_by, workdir=workdir, max_lock_wait_seconds=max_lock_wait_seconds
        )

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
        # MariaDB has no restore roles: every load runs as the login, with the client in --sandbox mode
        # and the dump scanned first, so as_superuser changes nothing here.
        return restore_logical(conn_id, target_database, dump_file, used_by=used_by, run_id=run_id)

    def checking_connection(self, conn_id: str, database: str, *, used_by: str) -> str | Connection:
        return conn_id

    def scratch_server_problem(self, conn_id: str, *, used_by: str) -> str | None:
        return scratch_server_problem(conn_id, used_by=used_by)

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
        from cloudops.engines.mariadb.switchover import switchover

        return switchover(old, new, cluster=cluster, used_by=used_by, catch_up_timeout_s=catch_up_timeout_s)

    def fence(self, node: Any, *, used_by: str, how: str = "read-only") -> str:
        from cloudops.engines.mariadb.switchover import fence

        return fence(node, used_by=used_by, how=how)

    def rejoin(self, node: Any, *, new_primary: Any, used_by: str) -> str:
        from cloudops.engines.mariadb.switchover import rejoin

        return rejoin(node, new_primary=new_primary, used_by=used_by)[1]


ENGINE = MariadbEngine()

__all__ = [
    "CLIENT_PACKAGE",
    "DEFAULT_RESTORE_TIMEOUT",
    "ENGINE",
    "FINGERPRINT_VERSION",
    "RENAME_LOCK_WAIT_SECONDS",
    "SANDBOX_RELEASES",
    "MariadbEngine",
    "check_single_database_dump",
    "client_release",
    "database_exists",
    "drop_database",
    "lag",
    "lag_from_status",
    "leftover_scratch_databases",
    "load_command",
    "logical_backup_source",
    "member_state",
    "newest_timestamp",
    "probe",
    "rename_into_new",
    "replace_database",
    "restore_logical",
    "scratch_server_problem",
    "server_release",
    "snapshot_session",
    "table_row_counts",
    "topology",
]
