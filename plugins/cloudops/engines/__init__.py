"""Database engines: one package per engine (``postgres``, ``mariadb``) behind one protocol.

Callers ask ``engine(database.engine)`` for an :class:`Engine` (see :mod:`cloudops.engines.protocol`) and
call its verbs: probe, facts, backup source, restore, the scratch lifecycle, replication (member state,
topology, lag). This module holds the records those verbs return; importing it imports no driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloudops.engines.protocol import ENGINE_NAMES, Engine, EngineName, engine, engine_of


@dataclass(frozen=True)
class DatabaseState:
    """What a database server says about itself right now.

    :param reachable: a connection and a query succeeded.
    :param role: ``primary`` or ``replica`` as the server reports it (not as the catalog says).
    :param replication_lag_seconds: for a replica, how far replay is behind (0 when caught up).
    :param streaming: for a replica, whether it receives changes from its primary.
    :param replicas_connected: for a primary, how many replicas stream from it.
    :param error: why the server could not be reached or queried.
    """

    reachable: bool
    role: str | None = None
    version: str | None = None
    replication_lag_seconds: float | None = None
    streaming: bool | None = None
    replicas_connected: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class DumpCommand:
    """A dump to run, as the backup pipeline needs it: the pipeline streams its stdout to storage.

    :param argv: the program and its arguments; never holds a password (credentials are in files that
        ``env`` points at, so they do not show in ``ps`` or in logs).
    :param env: extra environment, merged over ``os.environ`` by the runner.
    :param object_name: the name of the stored object (``orders.pgdump.zst``): the pipeline compresses.
    :param format: ``pg_dump-custom``, ``pg_basebackup-tar`` or ``mariadb-dump-sql``, which says how to
        restore it.
    :param description: what is being run, safe to log.
    :param before_start: called by the runner right before it starts the program (the MariaDB source
        takes its brief global read lock there, so that nothing else the runner does is under it); what
        it raises fails the backup before the program starts.
    :param observe_output: called by the runner with each piece of stdout as it is read, before it is
        compressed (the MariaDB source learns from it when the dump has its snapshot); what it raises fails
        the backup.
    """

    argv: list[str]
    env: dict[str, str]
    object_name: str
    format: str
    description: str
    before_start: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    observe_output: Callable[[bytes], None] | None = field(default=None, repr=False, compare=False)


@dataclass
class BackupSource:
    """A dump command and the facts its manifest records, taken from the same snapshot as the dump.

    :param facts: JSON-serialisable: ``engine``, ``engine_version``, ``tool_versions``, ``database``,
        ``row_counts`` (``schema.table``, or the bare table name for MariaDB), ``schema_fingerprint`` and
        ``position`` (``lsn_start``, or ``binlog_file`` and ``binlog_position``). MariaDB's row counts are
        only known once the dump has its snapshot: :meth:`finish` returns them.
    :param on_finish: what :meth:`finish` runs; each engine supplies its own.
    """

    command: DumpCommand
    facts: dict[str, Any]
    on_finish: Callable[[], dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def finish(self) -> dict[str, Any]:
        """Return the facts only knowable once the dump has exited 0 (an end LSN); may be ``{}``.

        Call it only after a successful dump, while the source's context is still open.

        :raises BackupSourceError: when the engine cannot vouch that the facts match the dump.
        """
        return self.on_finish() if self.on_finish else {}


@dataclass(frozen=True)
class RestoreResult:
    """What one restore of a dump into a database did.

    :param database: the database the dump was restored into.
    :param seconds: wall time of the restore (creating the database included).
    :param tool: the client program and its version (``pg_restore 15.20``).
    :param replaced_leftover: a scratch database of the same name, left by an earlier try, was dropped first.
    """

    database: str
    seconds: float
    tool: str
    replaced_leftover: bool = False


__all__ = [
    "ENGINE_NAMES",
    "BackupSource",
    "DatabaseState",
    "DumpCommand",
    "Engine",
    "EngineName",
    "RestoreResult",
    "engine",
    "engine_of",
]
