"""A PostgreSQL dump is untrusted input: what it carries runs as a role that owns only the scratch database.

The attacker's dump is a real ``pg_dump -Fc`` of a database this module makes: a materialized view over
a PL/pgSQL function that, once it runs in a scratch database (``drill_...``), runs ``COPY ... TO PROGRAM
'touch <file>'``. Refreshing the view at restore time calls the function. Restored the normal way, the
statement fails for lack of privilege and pg_restore stops; restored as the login itself (the catalog's
``restore_as_superuser``), the same dump does run the command, which shows the case is a real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cloudops.engines import postgres
from cloudops.engines.scratch import scratch_name
from cloudops.errors import RestoreError, RestoreRefused

pytestmark = pytest.mark.integration
PG = "sandbox_pg_primary"


def _conn() -> dict[str, Any]:
    return dict(json.loads(os.environ["AIRFLOW_CONN_SANDBOX_PG_PRIMARY"]))


def _connect(dbname: str, **overrides: Any) -> psycopg.Connection[Any]:
    conn = _conn()
    return psycopg.connect(
        **{
            "host": conn["host"],
            "port": conn["port"],
            "user": conn["login"],
            "password": conn.get("password"),
            "dbname": dbname,
            "autocommit": True,
            "connect_timeout": 10,
            **overrides,
        }
    )


@pytest.fixture
def planted(sandbox_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The attacker's dump, and the file its command would create (in a folder the server may write)."""
    drop_zone = Path(tempfile.mkdtemp(prefix="cloudops-attack-"))
    drop_zone.chmod(0o777)  # the server's OS user (postgres) writes there when the command runs
    target = drop_zone / "pwned"
    source = f"attack_source_{uuid.uuid4().hex[:8]}"
    with _connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{source}"')
    try:
        with _connect(source) as session:
            session.execute(
                f"""
                CREATE FUNCTION public.harmless(value int) RETURNS int LANGUAGE plpgsql AS $$
                BEGIN
                    IF current_database() LIKE 'drill\\_%' THEN
                        EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {target}''';
                    END IF;
                    RETURN value;
                END $$;
                CREATE TABLE public.items (id int PRIMARY KEY);
                INSERT INTO public.items VALUES (1), (2);
                CREATE MATERIALIZED VIEW public.report AS SELECT public.harmless(id) FROM public.items;
                """
            )
        dump = tmp_path / "planted.pgdump"
        conn = _conn()
        subprocess.run(
            [
                "pg_dump",
                "-Fc",
                "-h",
                conn["host"],
                "-p",
                str(conn["port"]),
                "-U",
                conn["login"],
                "-f",
                str(dump),
                source,
            ],
            env={**os.environ, "PGPASSWORD": conn.get("password") or ""},
            check=True,
            timeout=60,
        )
        assert not target.exists(), "dumping the source ran nothing"
        yield {"dump": dump, "target": target}
    finally:
        with _connect("postgres") as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{source}" WITH (FORCE)')
        for path in drop_zone.iterdir():
            path.unlink()
        drop_zone.rmdir()


@pytest.fixture
def scratch() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        postgres.drop_database(PG, name, used_by="test cleanup")


def _roles(name: str) -> list[tuple[Any, ...]]:
    with _connect("postgres") as admin:
        return admin.execute(
            "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = %s",
            [name],
        ).fetchall()


def test_a_dump_that_runs_a_program_fails_and_runs_nothing(
    planted: dict[str, Any], scratch: list[str]
) -> None:
    run_id = f"attack-{uuid.uuid4().hex}"
    name = scratch_name("orders_pg", run_id)
    scratch.append(name)

    with pytest.raises(RestoreError) as refused:
        postgres.restore_logical(
            PG, name, planted["dump"], used_by="restore drill of 'orders_pg'", run_id=run_id
        )

    message = str(refused.value)
    assert f"as {name}" in message, "the error names the role pg_restore ran as"
    assert "permission denied" in message or "pg_execute_server_program" in message, message
    assert not planted["target"].exists(), "the command the dump carried did not run"
    with _connect("postgres") as admin:
        owner = admin.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
    assert owner == (name,), "the scratch database is owned by its restore role"
    assert _roles(name) == [(name, False, False, False, False, False)]

    assert postgres.drop_database(PG, name, used_by="teardown")
    assert _roles(name) == [], "teardown drops the restore role with its database"


def test_the_same_dump_restored_as_the_superuser_login_does_run_the_program(
    planted: dict[str, Any], scratch: list[str]
) -> None:
    """The control: the case above fails because of the role, not because the dump is harmless."""
    run_id = f"attack-super-{uuid.uuid4().hex}"
    name = scratch_name("orders_pg", run_id)
    scratch.append(name)

    postgres.restore_logical(PG, name, planted["dump"], used_by="test", as_superuser=True, run_id=run_id)

    assert planted["target"].exists()
    assert _roles(name) == [], "restored as the login: no restore role"


def test_the_checks_connect_as_the_restore_role_which_cannot_read_server_files(
    sandbox_env: dict[str, str], tmp_path: Path, scratch: list[str]
) -> None:
    conn = _conn()
    dump = tmp_path / "orders.pgdump"
    subprocess.run(
        [
            "pg_dump",
            "-Fc",
            "-t",
            "public.customers",
            "-h",
            conn["host"],
            "-p",
            str(conn["port"]),
            "-U",
            conn["login"],
            "-f",
            str(dump),
            "orders",
        ],
        env={**os.environ, "PGPASSWORD": conn.get("password") or ""},
        check=True,
        timeout=120,
    )
    run_id = f"checks-{uuid.uuid4().hex}"
    name = scratch_name("orders_pg", run_id)
    scratch.append(name)
    postgres.restore_logical(PG, name, dump, used_by="test", run_id=run_id)

    checking = postgres.restored_database_connection(PG, name, used_by="test")

    assert checking.login == name
    assert checking.password
    assert checking.password != conn.get("password")
    with postgres.snapshot_session(checking, name, used_by="test") as session:
        assert postgres.table_row_counts(session)["public.customers"] > 0, "it reads every restored table"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            session.execute("SELECT pg_read_file('/etc/hostname')")


def test_a_role_of_the_scratch_name_that_no_restore_made_is_refused(
    planted: dict[str, Any], scratch: list[str]
) -> None:
    run_id = f"squatted-{uuid.uuid4().hex}"
    name = scratch_name("orders_pg", run_id)
    with _connect("postgres") as admin:
        admin.execute(f'CREATE ROLE "{name}" NOLOGIN')
    try:
        with pytest.raises(RestoreRefused, match="not made by a cloudops restore"):
            postgres.restore_logical(PG, name, planted["dump"], used_by="test", run_id=run_id)
        with _connect("postgres") as admin:
            assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None
        assert _roles(name), "a role cloudops did not make is left alone"
    finally:
        with _connect("postgres") as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture
def createrole_login(sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A scratch server login that is no superuser (CREATEDB CREATEROLE only), as production's may be."""
    login, password = f"cloudops_scratch_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    with _connect("postgres") as admin:
        admin.execute(f"CREATE ROLE {login} LOGIN CREATEDB CREATEROLE PASSWORD '{password}'")
    conn = {**_conn(), "login": login, "password": password}
    monkeypatch.setenv("AIRFLOW_CONN_SCRATCH_NOT_SUPER", json.dumps(conn))
    yield "scratch_not_super"
    with _connect("postgres") as admin:
        for (name,) in admin.execute(
            "SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) = %s", [login]
        ).fetchall():
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f"DROP OWNED BY {login}")
        admin.execute(f"DROP ROLE {login}")


def test_a_login_that_is_no_superuser_restores_checks_and_swaps_through_the_restore_role(
    createrole_login: str, tmp_path: Path, scratch: list[str]
) -> None:
    conn = _conn()
    dump = tmp_path / "customers.pgdump"
    subprocess.run(
        [
            "pg_dump",
            "-Fc",
            "-t",
            "public.customers",
            "-h",
            conn["host"],
            "-p",
            str(conn["port"]),
            "-U",
            conn["login"],
            "-f",
            str(dump),
            "orders",
        ],
        env={**os.environ, "PGPASSWORD": conn.get("password") or ""},
        check=True,
        timeout=120,
    )
    run_id = f"not-super-{uuid.uuid4().hex}"
    staging = scratch_name("restore_orders_pg", run_id)
    scratch.append(staging)  # dropped (with its role) by the fixture if a step below fails
    target = f"restored_{uuid.uuid4().hex[:6]}"

    postgres.restore_logical(createrole_login, staging, dump, used_by="test", run_id=run_id)
    checking = postgres.restored_database_connection(createrole_login, staging, used_by="test")
    with postgres.snapshot_session(checking, staging, used_by="test") as session:
        assert postgres.table_row_counts(session)["public.customers"] > 0
    assert (
        postgres.replace_database(createrole_login, staging, target, keep_as=f"{target}_kept", used_by="t")
        is False
    )

    with _connect("postgres") as admin:
        owner = admin.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [target]
        ).fetchone()
    assert owner == (json.loads(os.environ["AIRFLOW_CONN_SCRATCH_NOT_SUPER"])["login"],)
    assert _roles(staging) == [], "the restore role is gone once the copy is in place"
