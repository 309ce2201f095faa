"""PostgreSQL's end of an approved restore over an existing database: the swap keeps the old one."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cloudops.engines import postgres
from cloudops.engines.scratch import scratch_name
from cloudops.errors import RestoreError, RestoreRefused

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


class _Reconnecting:
    """A client that holds a session on a database and reconnects at once when it loses it, as an
    application's connection pool does after its sessions were ended."""

    def __init__(self, dbname: str) -> None:
        import threading

        self.dbname, self.stop = dbname, threading.Event()
        self.connected = 0
        self.refused: list[str] = []
        self.markers: list[str] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                with _connect(self.dbname) as session:
                    self.connected += 1
                    row = session.execute("SELECT what FROM marker").fetchone()
                    self.markers.append(row[0] if row else "")
                    while not self.stop.wait(0.02):  # held, as a pool holds it, until it is ended
                        session.execute("SELECT 1")
            except psycopg.Error as error:
                self.refused.append(str(error).splitlines()[0])

    def __enter__(self) -> _Reconnecting:
        self.thread.start()
        while self.connected == 0 and self.thread.is_alive():  # bounded: the thread stops on its own error
            self.stop.wait(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def test_a_client_reconnecting_in_a_loop_cannot_break_the_swap(names: dict[str, str]) -> None:
    with _Reconnecting(names["target"]) as client:
        replaced = postgres.replace_database(
            "sandbox_pg_primary", names["staging"], names["target"], keep_as=names["kept"], used_by=USED_BY
        )
        deadline = time.monotonic() + 30
        while client.markers[-1] != "staging" and time.monotonic() < deadline:
            client.stop.wait(0.01)

    assert replaced
    assert _marker(names["target"]) == "staging"
    assert _marker(names["kept"]) == "target"
    assert client.markers[-1] == "staging", "the client is back, on the restored database"
    assert set(client.markers) <= {"target", "staging"}
    assert _allows_connections(names["target"])
    assert _allows_connections(names["kept"])


def test_a_swap_that_fails_leaves_the_target_in_place_and_connectable(names: dict[str, str]) -> None:
    # Another session commenting on the staging copy holds a lock the second rename needs: it times out.
    blocker = _connect("postgres")
    blocker.autocommit = False
    blocker.execute(f"COMMENT ON DATABASE \"{names['staging']}\" IS 'being looked at'")
    try:
        with _Reconnecting(names["target"]) as client, pytest.raises(RestoreError, match="lock timeout"):
            postgres.replace_database(
                "sandbox_pg_primary",
                names["staging"],
                names["target"],
                keep_as=names["kept"],
                used_by=USED_BY,
                # Long enough for the client's reconnect to land inside the wait on a loaded machine.
                lock_timeout_seconds=3,
            )
    finally:
        blocker.rollback()
        blocker.close()

    assert _marker(names["target"]) == "target", "the first rename was rolled back with the second"
    assert _marker(names["staging"]) == "staging"
    assert _allows_connections(names["target"])
    assert _allows_connections(names["staging"])
    assert set(client.markers) == {"target"}, "the client only ever saw the old target"
    # Its sessions were ended while the swap waited (3 s, the lock timeout): it was refused, not
    # let in to hold the database the rename needed to itself.
    assert any("not currently accepting connections" in refusal for refusal in client.refused), client.refused
    with _connect("postgres") as admin:
        assert (
            admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [names["kept"]]).fetchone() is None
        )


def _allows_connections(dbname: str) -> bool:
    with _connect("postgres") as admin:
        row = admin.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", [dbname]).fetchone()
    return bool(row and row[0])
