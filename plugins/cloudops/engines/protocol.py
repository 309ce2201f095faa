"""The one interface runbooks, restores, validation and the health check use for a database engine.

``engine(database.engine)`` returns the engine of a catalog database (``postgres`` or ``mariadb``); every
caller goes through it, so "go to definition" on a verb lists both implementations
(:class:`cloudops.engines.postgres.PostgresEngine`, :class:`cloudops.engines.mariadb.MariadbEngine`). Each
engine is a package with the same modules: ``session`` (connecting, error translation, client programs),
``facts`` (row counts, schema fingerprint, newest timestamp), ``backup`` (backup sources), ``restore``
(restore, drop, rename, swap; the scratch lifecycle itself is :mod:`cloudops.engines.scratch` and
:mod:`cloudops.engines.lifecycle`, written once) and ``replication`` (probe, member state, lag).

Nothing here imports a database driver: the engines import psycopg or pymysql inside their verbs, so
DAG files that name this module still parse fast.

Replication verbs, for the failover drill built on them:

- :meth:`Engine.member_state` asks one server what it is (never raises for a down server), and
  :meth:`Engine.topology` asks every member of a cluster and judges the answers
  (:func:`cloudops.engines.replication.assemble_topology`): the primary is the member that takes
  writes, whatever the catalog says; two writers, a replica following another server or not streaming,
  an unreachable member are each a problem naming the member. A standalone server is a cluster of one
  whose summary says "no replicas".
- :meth:`Engine.lag` reads a replica and then its primary: bytes of WAL (PostgreSQL) or binlog
  (MariaDB, same file only) not yet replayed, and seconds (0 when nothing is left to replay).
  ``ReplicationLag.within(max_bytes=, max_seconds=)`` is the guard a drill checks twice.
- Promote is :func:`cloudops.engines.postgres.promote` for now (it joins the protocol with MariaDB's).
- Switching over without a manager (planned switchover, fence, rejoin) acts on a node's server
  programs, not only its SQL: :class:`SwitchoverEngine` holds those verbs, taking the engine's own
  node type (PostgreSQL: :class:`cloudops.engines.postgres.switchover.PostgresNode`, a data directory
  on a host). PostgreSQL implements it, and MariaDB with the same names
  (:class:`cloudops.engines.mariadb.switchover.MariadbNode`: read_only + ``MASTER_GTID_WAIT``, promote,
  ``CHANGE MASTER ... MASTER_USE_GTID=slave_pos``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from cloudops.engines import BackupSource, DatabaseState, RestoreResult
    from cloudops.engines.replication import MemberState, ReplicationLag, SwitchoverResult, Topology

EngineName = Literal["postgres", "mariadb"]
ENGINE_NAMES: tuple[str, ...] = get_args(EngineName)


class Engine(Protocol):
    """The verbs every database engine offers, with the same names and parameters.

    ``conn_id`` is always an Airflow connection id (or, where said, a connection built at run time);
    ``used_by`` names what is being done in every error and log line (``database 'orders_pg'``).
    """

    @property
    def name(self) -> EngineName:
        """The catalog's name of the engine (``database.engine``)."""
        ...

    default_port: int
    # Whether the engine takes physical backups (PostgreSQL: pg_basebackup), drilled in scratch clusters.
    physical_backups: bool
    # Whether the schema is the database (MariaDB): tables are then named without a schema.
    schema_is_database: bool
    # The SQLAlchemy dialect+driver that reads a database of this engine (Great Expectations' checks).
    sqlalchemy_driver: str

    # -- probing and facts ---------------------------------------------------------------------------

    def probe(self, conn_id: str, database: str, *, used_by: str, timeout_seconds: int = 5) -> DatabaseState:
        """Report role, version and replication state; never raises for a down server.

        :raises ConnectionMissingError: the Airflow connection does not exist.
        """
        ...

    def snapshot_session(
        self, conn_id: str | Connection, database: str, *, used_by: str
    ) -> AbstractContextManager[Any]:
        """A read-only session on ``database`` in which every query sees one snapshot."""
        ...

    def schema_fingerprint(self, session: Any) -> str:
        """The SHA-256 of the session's database's table definitions, which a restored copy reproduces."""
        ...

    def table_row_counts(self, session: Any) -> dict[str, int]:
        """Exact row counts of every user table, in the session's snapshot."""
        ...

    def newest_timestamp(self, session: Any, table: str, column: str) -> datetime | None:
        """The greatest value of a date or time column, as an aware datetime (None: no rows)."""
        ...

    # -- backups -------------------------------------------------------------------------------------

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
        """What to run to dump ``database`` with ``method`` (``logical``, ``physical``), and the facts its
        manifest records, from the same snapshot as the dump.

        :param max_lock_wait_seconds: the longest writes may be blocked for the dump's snapshot (MariaDB's
            global read lock; PostgreSQL's snapshots need none).
        :raises BackupSourceError: the engine cannot take a backup with ``method``.
        """
        ...

    # -- restores and the scratch lifecycle ----------------------------------------------------------

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
        """Create ``target_database`` (a scratch database of ``run_id``) and load a logical dump into it.

        :param as_superuser: PostgreSQL: run pg_restore as the connection's login rather than a restore
            role owning only the new database (the catalog's ``restore_as_superuser``). MariaDB loads
            always run as the login, in the client's ``--sandbox`` mode.
        """
        ...

    def checking_connection(self, conn_id: str, database: str, *, used_by: str) -> str | Connection:
        """What the checks of restored scratch database ``database`` connect as: PostgreSQL its restore
        role (nothing the dump defined runs with the login's privileges), MariaDB the connection itself."""
        ...

    def scratch_server_problem(self, conn_id: str, *, used_by: str) -> str | None:
        """Why the server must not receive a drill's scratch copies (MariaDB: its event scheduler
        runs), or None."""
        ...

    def database_exists(self, conn_id: str, name: str, *, used_by: str) -> bool:
        """Whether database ``name`` exists on the server (read only)."""
        ...

    def drop_database(self, conn_id: str, name: str, *, used_by: str) -> bool:
        """Drop scratch database ``name`` if cloudops created it (name and marker); whether it existed.

        :raises RestoreRefused: it is not a scratch database cloudops created; it is left as it is.
        """
        ...

    def leftover_scratch_databases(
        self, conn_id: str, database: str, *, used_by: str | None = None
    ) -> list[str]:
        """The scratch databases of catalog database ``database`` that cloudops created, sorted."""
        ...

    def rename_into_new(self, conn_id: str, staging: str, target: str, *, used_by: str) -> None:
        """Give restored scratch database ``staging`` the new name ``target`` (which must not exist)."""
        ...

    def replace_database(
        self, conn_id: str, staging: str, target: str, *, keep_as: str, used_by: str
    ) -> bool:
        """Put ``staging`` in the place of ``target``, keeping the old one as ``keep_as``; whether
        ``target`` existed."""
        ...

    # -- replication ---------------------------------------------------------------------------------

    def member_state(self, conn_id: str, *, name: str, used_by: str, timeout_seconds: int = 5) -> MemberState:
        """What the server says about itself: role, upstream, position, timeline or GTIDs, replicas it
        serves. Never raises for a down server (``reachable`` is False and ``error`` says why).

        :param name: the member's name in the result (the catalog database, or the connection id).
        :raises ConnectionMissingError: the Airflow connection does not exist.
        """
        ...

    def topology(
        self, cluster: str, members: Mapping[str, str], *, used_by: str, timeout_seconds: int = 5
    ) -> Topology:
        """Ask every member (name → connection id) what it is, and judge the cluster they make."""
        ...

    def lag(
        self, primary_conn_id: str, replica_conn_id: str, *, used_by: str, timeout_seconds: int = 5
    ) -> ReplicationLag:
        """How far the replica is behind the primary, in bytes and seconds, read from both.

        :raises ReplicationError: the replica is not a replica, or a server cannot be reached.
        """
        ...


class SwitchoverEngine(Protocol):
    """The verbs of an engine that moves the primary itself (no Patroni, no MaxScale).

    ``node`` is the engine's node type: a member's connection plus where its server runs. Each verb
    reads the servers first, logs its plan before acting, and returns (or raises) with the reason.
    """

    def switchover(
        self, old: Any, new: Any, *, cluster: str, used_by: str, catch_up_timeout_s: float = 30
    ) -> SwitchoverResult:
        """Planned switchover from primary ``old`` to replica ``new``, ``old`` rejoined as a replica.

        :raises SwitchoverAborted: the candidate did not catch up; ``old`` is primary again.
        :raises RejoinFailed: ``new`` is primary; ``old`` could not rejoin (degraded redundancy).
        """
        ...

    def fence(self, node: Any, *, used_by: str, how: str = "stop") -> str:
        """Stop ``node`` taking writes (``stop`` it, or make it ``read-only``); return what was done."""
        ...

    def rejoin(self, node: Any, *, new_primary: Any, used_by: str) -> str:
        """Bring the stopped old primary back as a replica of ``new_primary``; return the evidence
        (pg_rewind's message).

        :raises RejoinFailed: it cannot rejoin; fail-back is left to a person.
        """
        ...


def engine(name: str) -> Engine:
    """The engine of a catalog database (``database.engine``): ``postgres`` or ``mariadb``.

    Its driver is imported only when a verb runs.

    :raises ValueError: ``name`` is no engine (the catalog refuses such a database before this).
    """
    if name == "postgres":
        from cloudops.engines.postgres import ENGINE as postgres

        return postgres
    if name == "mariadb":
        from cloudops.engines.mariadb import ENGINE as mariadb

        return mariadb
    raise ValueError(f"engine {name!r} is not one of {', '.join(ENGINE_NAMES)}")


class _HasEngine(Protocol):
    @property
    def engine(self) -> str: ...


def engine_of(database: _HasEngine) -> Engine:
    """The engine of a catalog database (anything with an ``engine`` name, such as a ``Database``)."""
    return engine(database.engine)


__all__ = ["ENGINE_NAMES", "Engine", "EngineName", "SwitchoverEngine", "engine", "engine_of"]
