"""PostgreSQL's end of an approved restore over an existing database: the swap keeps the old one."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cloudops.engines import postgres
from cloudops.engines.scratch import scratch_name
from cloudops.errors import RestoreRefused

pytestmark = pytest.mark.integration
USED_BY = "test of replace_database"


def _connect(dbname: str) -> psycopg.Connection[Any]:
    conn = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_PG_PRIMARY"])
    return psycopg.connect(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        password=conn.get("password"),
        dbname=dbname,
        autocommit=True,
        connect_timeout=10,
    )


@pytest.fixture
def names(sandbox_env: dict[str, str]) -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    made = {
        "staging": scratch_name("restore_orders_pg", f"test-{suffix}"),
        "target": f"existing_{suffix}",
        "kept": f"existing_{suffix}_before_test",
    }
    admin = _connect("postgres")
    for role in ("staging", "target"):
        admin.execute(f'CREATE DATABASE "{made[role]}"')
        with _connect(made[role]) as session:
            session.execute(f"CREATE TABLE marker (what text); INSERT INTO marker VALUES ('{role}')")
    yield made
    for name in made.values():
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def _marker(dbname: str) -> str:
    with _connect(dbname) as session:
        return session.execute("SELECT what FROM marker").fetchone()[0]  # type: ignore[index]


def test_the_staging_copy_takes_the_place_and_the_old_target_is_kept(names: dict[str, str]) -> None:
    holder = _connect(names["target"])  # a session on the target: it is ended, not waited for
    replaced = postgres.replace_database(
        "sandbox_pg_primary", names["staging"], names["target"], keep_as=names["kept"], used_by=USED_BY
    )
    assert replaced
    assert _marker(names["target"]) == "staging"
    assert _marker(names["kept"]) == "target"
    assert holder.closed or holder.broken or _is_gone(holder)


def _is_gone(session: psycopg.Connection[Any]) -> bool:
    try:
        session.execute("SELECT 1")
    except psycopg.Error:
        return True
    return False


def test_only_a_scratch_database_is_put_in_place_and_nothing_is_overwritten(names: dict[str, str]) -> None:
    with pytest.raises(RestoreRefused, match="scratch"):
        postgres.replace_database(
            "sandbox_pg_primary", names["target"], names["staging"], keep_as=names["kept"], used_by=USED_BY
        )
    with pytest.raises(RestoreRefused, match="refusing to overwrite"):
        postgres.replace_database(
            "sandbox_pg_primary", names["staging"], names["target"], keep_as=names["target"], used_by=USED_BY
        )
    assert _marker(names["target"]) == "target"
    assert _marker(names["staging"]) == "staging"
