"""PostgreSQL facts: what a backup's manifest records and a restored copy must reproduce (exact row
counts, the schema fingerprint, the WAL position), and the newest timestamp the RPO check reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cloudops.engines.lifecycle import fingerprint_digest

if TYPE_CHECKING:
    import psycopg
    from airflow.sdk import Connection

log = logging.getLogger(__name__)


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
    return fingerprint_digest(document)


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


def fingerprinted_database(conn: Connection) -> str:
    """The database whose schema fingerprint a physical backup of ``conn``'s cluster records."""
    return conn.schema or "postgres"


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


__all__ = [
    "FINGERPRINT_VERSION",
    "fingerprinted_database",
    "newest_timestamp",
    "schema_fingerprint",
    "table_row_counts",
]
