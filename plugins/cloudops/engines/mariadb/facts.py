"""MariaDB facts: what a backup's manifest records and a restored copy must reproduce (exact row counts,
the schema fingerprint), and the newest timestamp the RPO check reads.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cloudops.engines.lifecycle import (
    fingerprint_digest,
)
from cloudops.engines.mariadb.session import (
    _quote,
    _rows,
)

if TYPE_CHECKING:
    import pymysql

log = logging.getLogger(__name__)


FINGERPRINT_VERSION = 1  # part of what is hashed: a change of the algorithm changes every fingerprint

_TABLES = """
SELECT TABLE_NAME, ENGINE, TABLE_COLLATION FROM information_schema.TABLES
WHERE TABLE_SCHEMA = %s AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')
ORDER BY TABLE_NAME
"""
_COLUMNS = """
SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA, GENERATION_EXPRESSION,
       CHARACTER_SET_NAME, COLLATION_NAME
FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, ORDINAL_POSITION
"""
_INDEXES = """
SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME, SUB_PART, INDEX_TYPE, COLLATION
FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX
"""
_CONSTRAINTS = """
SELECT TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE FROM information_schema.TABLE_CONSTRAINTS
WHERE CONSTRAINT_SCHEMA = %s
"""
_KEY_COLUMNS = """
SELECT TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, ORDINAL_POSITION,
       REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME
FROM information_schema.KEY_COLUMN_USAGE WHERE CONSTRAINT_SCHEMA = %s
ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION
"""
_REFERENTIAL_RULES = """
SELECT TABLE_NAME, CONSTRAINT_NAME, UPDATE_RULE, DELETE_RULE FROM information_schema.REFERENTIAL_CONSTRAINTS
WHERE CONSTRAINT_SCHEMA = %s
"""
_CHECKS = """
SELECT TABLE_NAME, CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS
WHERE CONSTRAINT_SCHEMA = %s
"""


def _current_database(session: pymysql.Connection[Any]) -> str:
    (row,) = _rows(session, "SELECT DATABASE()")
    if not row[0]:
        raise ValueError("the session has no current database: connect with database=... or run USE")
    return str(row[0])


def table_row_counts(session: pymysql.Connection[Any], *, savepoint: bool = False) -> dict[str, int]:
    """Count the rows of every base table of the session's current database exactly.

    Keys are bare table names: in MariaDB the database is the schema, and a restore drill loads the
    dump into a database of another name. Run it inside ``START TRANSACTION WITH CONSISTENT SNAPSHOT``
    so that all the counts come from one snapshot.

    :param savepoint: roll back to a savepoint after each table, which gives back its metadata lock
        (the snapshot stays): DDL on a counted table then waits for one count, not for all of them.
    """
    database = _current_database(session)
    counts: dict[str, int] = {}
    if savepoint:
        _rows(session, "SAVEPOINT cloudops_count")
    for table, _engine, _collation in _rows(session, _TABLES, database):
        (row,) = _rows(session, f"SELECT COUNT(*) FROM {_quote(table)}")
        counts[str(table)] = int(row[0])
        if savepoint:
            _rows(session, "ROLLBACK TO SAVEPOINT cloudops_count")
    return counts


def schema_fingerprint(session: pymysql.Connection[Any]) -> str:
    """Return a SHA-256 of the current database's table definitions that a restored copy reproduces.

    What is hashed: per base table (sorted by name), its engine and collation, its columns in order
    (name, type, nullability, default, extra, generation expression, character set, collation), its
    indexes, its constraints (primary key, unique, foreign key with rules, check). Nothing a restore
    changes is in it: no database name (a reference into the same database is recorded as such), no
    AUTO_INCREMENT counter, no sizes or statistics.
    """
    database = _current_database(session)
    tables: dict[str, dict[str, Any]] = {
        str(name): {
            "table": name,
            "engine": engine,
            "collation": collation,
            "columns": [],
            "indexes": [],
            "constraints": {},
        }
        for name, engine, collation in _rows(session, _TABLES, database)
    }

    def of(table: Any) -> dict[str, Any] | None:
        return tables.get(str(table))  # None for views, whose columns and keys are listed too

    for table, *column in _rows(session, _COLUMNS, database):
        if (described := of(table)) is not None:
            described["columns"].append(column)
    for table, *index_column in _rows(session, _INDEXES, database):
        if (described := of(table)) is not None:
            described["indexes"].append(index_column)
    for table, name, kind in _rows(session, _CONSTRAINTS, database):
        if (described := of(table)) is not None:
            described["constraints"][name] = {"type": kind, "columns": []}
    for table, name, column, position, ref_schema, ref_table, ref_column in _rows(
        session, _KEY_COLUMNS, database
    ):
        described = of(table)
        if described is not None and name in described["constraints"]:
            same_database = ref_schema is None or ref_schema == database
            described["constraints"][name]["columns"].append(
                [column, position, None if same_database else ref_schema, ref_table, ref_column]
            )
    for table, name, on_update, on_delete in _rows(session, _REFERENTIAL_RULES, database):
        described = of(table)
        if described is not None and name in described["constraints"]:
            described["constraints"][name].update(on_update=on_update, on_delete=on_delete)
    for table, name, clause in _rows(session, _CHECKS, database):
        described = of(table)
        if described is not None and name in described["constraints"]:
            described["constraints"][name]["check"] = clause
    document = {
        "fingerprint": f"cloudops-mariadb-{FINGERPRINT_VERSION}",
        "tables": [tables[name] for name in sorted(tables)],
    }
    return fingerprint_digest(document)


def newest_timestamp(session: pymysql.Connection[Any], table: str, column: str) -> datetime | None:
    """Return the greatest value of a date or time column of the current database as an aware datetime
    (None: no rows).

    Read in UTC whatever the session's or the server's time zone: TIMESTAMP values are stored in UTC and
    come out exact; DATETIME values carry no time zone and are taken as UTC (what mariadb-dump's
    ``TIME_ZONE='+00:00'`` and applications that store UTC agree on), not shifted by the scratch server's
    zone. The session's time zone is set back afterwards.
    """
    ((zone,),) = _rows(session, "SELECT @@SESSION.time_zone")
    _rows(session, "SET SESSION time_zone = '+00:00'")
    try:
        ((value,),) = _rows(session, f"SELECT UNIX_TIMESTAMP(MAX({_quote(column)})) FROM {_quote(table)}")
    finally:
        _rows(session, "SET SESSION time_zone = %s", zone)
    return None if value is None else datetime.fromtimestamp(float(value), UTC)


__all__ = ["FINGERPRINT_VERSION", "newest_timestamp", "schema_fingerprint", "table_row_counts"]
