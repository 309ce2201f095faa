"""MariaDB's end of an approved restore over an existing database: one atomic RENAME TABLE, or nothing.

Every database here is this test's own (``existing_<random>``, its ``_before_test`` copy and a scratch
staging database), dropped at the end.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from cloudops.engines import mariadb
from cloudops.engines.scratch import scratch_name
from cloudops.errors import RestoreError, RestoreRefused

pytestmark = pytest.mark.integration
MARIA = "sandbox_mariadb"
USED_BY = "test of replace_database"


def connect(database: str | None = None) -> pymysql.Connection[Any]:
    conn = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_MARIADB"])
    return pymysql.connect(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        password=conn["password"],
        database=database,
        autocommit=True,
        connect_timeout=10,
        read_timeout=60,
    )


def run(session: pymysql.Connection[Any], statement: str) -> list[tuple[Any, ...]]:
    with session.cursor() as cursor:
        cursor.execute(statement)
        return list(cursor.fetchall())


@pytest.fixture
def names(sandbox_env: dict[str, str]) -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    made = {
        "staging": scratch_name("restore_inventory_mariadb", f"test-{suffix}"),
        "target": f"existing_{suffix}",
        "kept": f"existing_{suffix}_before_test",
    }
    with connect() as admin:
        for role in ("staging", "target"):
            run(admin, f"CREATE DATABASE `{made[role]}`")
            for table in ("marker", "items"):
                run(admin, f"CREATE TABLE `{made[role]}`.{table} (what VARCHAR(16)) ENGINE=InnoDB")
                run(admin, f"INSERT INTO `{made[role]}`.{table} VALUES ('{role}')")
    yield made
    with connect() as admin:
        for name in made.values():
            run(admin, f"DROP DATABASE IF EXISTS `{name}`")


def contents(database: str) -> dict[str, str] | None:
    """What each table of ``database`` says it is (None: no such database)."""
    with connect() as session:
        if not run(session, f"SHOW DATABASES LIKE '{database}'"):
            return None
        tables = [
            row[0] for row in run(session, f"SHOW TABLES FROM `{database}`") if row[0] in ("items", "marker")
        ]
        return {table: run(session, f"SELECT what FROM `{database}`.`{table}`")[0][0] for table in tables}


def test_the_staging_copy_takes_the_place_and_the_old_tables_are_kept(names: dict[str, str]) -> None:
    replaced = mariadb.replace_database(
        MARIA, names["staging"], names["target"], keep_as=names["kept"], used_by=USED_BY
    )
    assert replaced is True
    assert contents(names["target"]) == {"items": "staging", "marker": "staging"}
    assert contents(names["kept"]) == {"items": "target", "marker": "target"}
    assert contents(names["staging"]) is None


def test_a_swap_whose_statement_fails_moves_nothing(names: dict[str, str]) -> None:
    # An open transaction that read the target's items holds its metadata lock: the RENAME cannot have it.
    holder = connect(names["target"])
    try:
        run(holder, "START TRANSACTION")
        run(holder, "SELECT COUNT(*) FROM items")
        with pytest.raises(
            RestoreError,
            match=rf"failed and moved nothing .*'{names['target']}' is as it was, '{names['staging']}' still "
            r"holds the restore; transactions kept its tables busy for more than 1 s: end them",
        ):
            mariadb.replace_database(
                MARIA,
                names["staging"],
                names["target"],
                keep_as=names["kept"],
                used_by=USED_BY,
                rename_lock_wait_seconds=1,
            )
    finally:
        holder.close()
    # Not one table moved: neither the target's marker (first in the statement) nor anything else.
    assert contents(names["target"]) == {"items": "target", "marker": "target"}
    assert contents(names["staging"]) == {"items": "staging", "marker": "staging"}
    assert contents(names["kept"]) is None


@pytest.mark.parametrize(
    ("where", "statement", "named"),
    [
        ("target", "CREATE SEQUENCE {db}.ids", "sequence ids"),
        ("staging", "CREATE TABLE {db}.history (x INT) WITH SYSTEM VERSIONING", "system versioned history"),
    ],
)
def test_tables_the_move_cannot_take_are_refused_before_anything_moves(
    names: dict[str, str], where: str, statement: str, named: str
) -> None:
    with connect() as admin:
        run(admin, statement.format(db=f"`{names[where]}`"))
    with pytest.raises(
        RestoreRefused,
        match=rf"database '{names[where]}' holds objects a move of its tables would not take \({named}\): "
        r"nothing was moved",
    ):
        mariadb.replace_database(
            MARIA, names["staging"], names["target"], keep_as=names["kept"], used_by=USED_BY
        )
    assert contents(names["kept"]) is None
    assert contents(names["target"])["marker"] == "target"  # type: ignore[index]
    assert contents(names["staging"])["marker"] == "staging"  # type: ignore[index]
