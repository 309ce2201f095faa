"""The sandbox's PostgreSQL pair is set up for a failover and its fail-back: built here by the sandbox's own
component (`PostgresServer`, the same settings and roles as `sandbox up` gives orders_pg and its replica)
in a folder and on ports of this test's own, the replica is promoted, the old primary is rewound with
pg_rewind as the sandbox's `cloudops_rewind` role and rejoins as a streaming replica.

The sandbox's own pair is left alone: the other tests need its primary where it is. The step-by-step
drill (fencing, the probe, fail-back) is the failover library's; this proves the ground it stands on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudops.engines import engine
from cloudops.engines.postgres import promote
from cloudops.sandbox.credentials import CredentialStore
from cloudops.sandbox.layout import BASE_PORTS, SandboxLayout
from cloudops.sandbox.plan import DatabasePlan
from cloudops.sandbox.postgres import ROLE, PostgresServer
from cloudops.sandbox.process import as_user

pytestmark = pytest.mark.integration

USED_BY = "pg_rewind readiness test"
OLD, NEW = "cloudops_test_rewind_old", "cloudops_test_rewind_new"


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_offset() -> int:
    """An offset at which this test's primary and replica ports are both free (others run sandboxes)."""
    for offset in range(8900, 5000, -100):
        if all(_free(BASE_PORTS[s] + offset) for s in ("postgres_primary", "postgres_replica")):
            return offset
    pytest.fail("no free pair of ports for a throw-away PostgreSQL pair")


@pytest.fixture
def pair(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[PostgresServer, PostgresServer]]:
    # Under /var/tmp and traversable, so that the postgres OS user reaches the data (pytest's tmp is 0700).
    base = Path(tempfile.mkdtemp(prefix="cloudops-rewind-", dir="/var/tmp"))
    base.chmod(0o755)
    layout = SandboxLayout.from_environment(
        {"CLOUDOPS_SANDBOX_DIR": str(base / "sandbox"), "CLOUDOPS_SANDBOX_PORT_OFFSET": str(_free_offset())}
    )
    layout.ensure_dirs()
    store = CredentialStore(layout.credentials_file)
    primary = PostgresServer(layout, DatabasePlan(OLD, "postgres", "primary", OLD, "drill", "c"), store)
    replica = PostgresServer(
        layout, DatabasePlan(NEW, "postgres", "replica", NEW, "drill", "c"), store, primary
    )
    try:
        for server in (primary, replica):
            server.ensure(lambda _line: None)
            for conn_id, fields in server.connections().items():
                monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
        yield primary, replica
    finally:
        for server in (replica, primary):
            if (server.data_dir / "postmaster.pid").exists():
                server.stop(lambda _line: None)
        shutil.rmtree(base, ignore_errors=True)
        if layout.data_root_is_fallback:
            shutil.rmtree(layout.data_root, ignore_errors=True)


def _pg(server: PostgresServer, *args: str, env: dict[str, str] | None = None) -> str:
    argv = as_user([str(server.layout.pg_bindir / args[0]), *args[1:]], server.user)
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, f"{args[0]} failed: {done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def test_replica_promoted_then_old_primary_rewound_and_streaming(
    pair: tuple[PostgresServer, PostgresServer],
) -> None:
    old, new = pair
    # Writes the replica has replayed, then a clean stop of the primary, as a planned switchover does.
    with old.tcp_connect("drill") as session:
        session.execute("CREATE TABLE rewind_probe (id int PRIMARY KEY)")
        session.execute("INSERT INTO rewind_probe SELECT generate_series(1, 100)")
        (hints,) = session.execute("SHOW wal_log_hints").fetchone() or (None,)
    assert hints == "on"
    old.stop(lambda _line: None)

    decision = promote(NEW, used_by=USED_BY, old_primary_conn_id=OLD)
    assert decision.startswith(f"promoted {NEW}")
    assert "now a primary on timeline 2" in decision
    with new.tcp_connect() as session:
        session.execute("CHECKPOINT")  # pg_rewind reads the source's timeline from its control file

    rewind = new.rewind_connection()
    output = _pg(
        old,
        "pg_rewind",
        f"--target-pgdata={old.data_dir}",
        f"--source-server=host={rewind['host']} port={rewind['port']} user={rewind['login']} "
        f"dbname={rewind['schema']}",
        "--progress",
        env={"PGPASSWORD": str(rewind["password"])},
    )
    assert "Done!" in output or "no rewind required" in output, output
    # Follow the new primary through its socket (trusted), as the replica followed the old one.
    (old.data_dir / "standby.signal").touch()
    if old.user:
        shutil.chown(old.data_dir / "standby.signal", old.user, old.user)
    with (old.data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            f"\nprimary_conninfo = 'host={new.socket_dir} port={new.port} user={ROLE} "
            f"application_name={OLD}'\n"
        )
    log = old.data_dir.parent / "rejoin.log"  # the postgres OS user writes it (the sandbox log is root's)
    _pg(old, "pg_ctl", "start", "-w", "-t", "60", "-D", str(old.data_dir), "-l", str(log))

    deadline = time.monotonic() + 30
    while True:
        found = engine("postgres").topology("rewind_test", {OLD: OLD, NEW: NEW}, used_by=USED_BY)
        if found.healthy or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert found.healthy, found.problems
    assert found.primary == NEW
    assert found.replicas == (OLD,)
    assert found.member(OLD).timeline == 2
    with new.tcp_connect("drill") as session:
        (rows,) = session.execute("SELECT count(*) FROM rewind_probe").fetchone() or (None,)
    assert rows == 100
