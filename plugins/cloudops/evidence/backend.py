"""Which ledger a deployment writes: the file ledger of one machine, or the PostgreSQL ledger of many.

Both hold the same hash chain of the same records, in the same day segments byte for byte (see
``ledger.py``), so that verify, export, shipping and the auditor view read either the same way, through
:class:`EvidenceLedger`. The choice is the deployment's, from the environment of the scheduler, the
workers and the API server (like the file ledger's folder, ``$CLOUDOPS_EVIDENCE_DIR``):

- ``CLOUDOPS_EVIDENCE_BACKEND``: ``file`` (the default: one machine, LocalExecutor) or ``postgres``
  (several workers: CeleryExecutor).
- ``CLOUDOPS_EVIDENCE_DB_CONN_ID``: the Airflow connection of the PostgreSQL ledger's database
  (default ``cloudops_evidence_db``), only read with ``postgres``.
- ``CLOUDOPS_EVIDENCE_DB_SCHEMA``: the schema of its tables (default ``cloudops_ledger``): one chain
  per schema, so deployments can share a database.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cloudops.errors import InvalidInputError
from cloudops.evidence.ledger import Ledger, Record, Verdict

BACKEND_ENV = "CLOUDOPS_EVIDENCE_BACKEND"
DB_CONN_ENV = "CLOUDOPS_EVIDENCE_DB_CONN_ID"
DB_SCHEMA_ENV = "CLOUDOPS_EVIDENCE_DB_SCHEMA"
DEFAULT_DB_CONN_ID = "cloudops_evidence_db"
BACKENDS = ("file", "postgres")


@runtime_checkable
class EvidenceLedger(Protocol):
    """What every ledger backend offers its readers and writers."""

    @property
    def where(self) -> str:
        """The ledger as messages name it (a folder, or a database and schema)."""
        ...

    def segment_where(self, name: str) -> str:
        """Where the day segment ``name`` (``YYYY-MM-DD.jsonl``) is, as messages name it."""
        ...

    def clock(self) -> datetime:
        """Now, by the clock the ledger stamps records with (shipping decides closed days by it)."""
        ...

    def append(
        self, kind: str, *, key: str | None = None, at: datetime | None = None, **fields: Any
    ) -> Record | None:
        """Append one record; None when its key is already recorded."""
        ...

    def append_many(
        self, entries: Iterable[tuple[str, str | None, datetime | None, Mapping[str, Any]]]
    ) -> list[Record]:
        """Append ``(kind, key, at, fields)`` records in order, at once; return those written."""
        ...

    def records(self, *, since: date | None = None, until: date | None = None) -> Iterator[Record]:
        """Every record of the days in [since, until], in chain order (not verified)."""
        ...

    def read_segments(self, *, since: date | None = None) -> list[tuple[str, bytes]]:
        """Every day segment's ``(name, bytes)`` from ``since`` on, as one consistent reading."""
        ...

    def verify(self) -> Verdict:
        """Check the whole chain; the verdict names the first problem."""
        ...

    def confirm(self, verdict: Verdict, records: Iterable[Record]) -> Verdict:
        """``verdict`` (of segments just read by read_segments) with the backend's own further checks."""
        ...

    def head(self) -> tuple[Any, ...]:
        """A cheap value that changes whenever the ledger's content does (for verdict caches)."""
        ...


def configured_backend(environ: Mapping[str, str] | None = None) -> str:
    """The backend the environment chooses (``file`` when unset).

    :raises InvalidInputError: ``CLOUDOPS_EVIDENCE_BACKEND`` names no backend.
    """
    env = os.environ if environ is None else environ
    backend = (env.get(BACKEND_ENV) or "file").strip().lower()
    if backend not in BACKENDS:
        raise InvalidInputError(
            f"{BACKEND_ENV}={env.get(BACKEND_ENV)!r}: not an evidence ledger backend (one of "
            f"{', '.join(BACKENDS)})"
        )
    return backend


def db_conn_id(environ: Mapping[str, str] | None = None) -> str:
    """The Airflow connection of the PostgreSQL ledger (``CLOUDOPS_EVIDENCE_DB_CONN_ID``)."""
    env = os.environ if environ is None else environ
    return env.get(DB_CONN_ENV) or DEFAULT_DB_CONN_ID


def open_ledger(
    directory: str | Path | None = None, *, backend: str | None = None, **options: Any
) -> EvidenceLedger:
    """The ledger this deployment writes: a folder given as ``directory`` is always a file ledger;
    otherwise the configured backend (``backend`` overrides the environment).

    :param options: passed to the backend's class (``fsync`` for files, ``schema`` for PostgreSQL).
    """
    if directory is not None:
        return Ledger(directory, **options)
    chosen = backend or configured_backend()
    if chosen == "postgres":
        from cloudops.evidence.pg_ledger import PgLedger

        options.setdefault("schema", os.environ.get(DB_SCHEMA_ENV) or "cloudops_ledger")
        return PgLedger(db_conn_id(), **options)
    return Ledger(None, **options)


__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "DB_CONN_ENV",
    "DB_SCHEMA_ENV",
    "DEFAULT_DB_CONN_ID",
    "EvidenceLedger",
    "configured_backend",
    "db_conn_id",
    "open_ledger",
]
