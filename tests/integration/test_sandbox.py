"""Integration tests of the sandbox estate (cloudops.sandbox) with real servers on loopback.

Most tests run against the main sandbox, which a session fixture brings up with `up()` (a no-op when it
already runs). Fault and lifecycle tests use a second sandbox in tmp_path with a port offset, so they
never touch the first; the lifecycle test removes the data directory it made under /var/tmp.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import paramiko
import psycopg
import pymysql
import pytest

from cloudops.errors import SandboxError
from cloudops.sandbox import estate
from cloudops.sandbox.extra_hosts import extra_hosts
from cloudops.sandbox.hosts import sandbox_mounts
from cloudops.sandbox.layout import SandboxLayout, read_env_file
from cloudops.sandbox.moto import EVIDENCE_SIGNING_CONN_ID
from cloudops.sandbox.plan import EstatePlan, load_plan
from cloudops.sandbox.postgres import EVIDENCE_DATABASE, EVIDENCE_DB_CONN_ID
from cloudops.sandbox.process import RUNNING, STALE, STOPPED

pytestmark = pytest.mark.integration

EXPECTED_COMPONENTS = {
    "postgres-primary",
    "postgres-replica",
    "postgres-scratch",
    "mariadb",
    "mariadb-replica",
    "mariadb-scratch",
    # The Patroni cluster (ledger_patroni) and its store.
    "etcd",
    "patroni-a",
    "patroni-b",
    "moto",
    "smtp-sink",
    "probes",  # `cloudops probe run`, started last (docs/probes.md)
    "redis",  # the Celery broker of `make up-celery` and the Celery e2e tests
}


def _quiet(_: str) -> None:
    """Swallow progress lines."""


@pytest.fixture(scope="session")
def layout() -> SandboxLayout:
    """Bring the main sandbox up (reused when it already runs) and return its layout."""
    estate.up(say=_quiet)
    return SandboxLayout.from_environment()


@pytest.fixture(scope="session")
def plan(layout: SandboxLayout) -> EstatePlan:
    return load_plan(layout.catalog_path)


@pytest.fixture(scope="session")
def connections(layout: SandboxLayout) -> dict[str, dict[str, Any]]:
    """The Airflow connections of the env file, by conn id (lower case, as in the catalog)."""
    env = read_env_file(layout.env_file)
    prefix = "AIRFLOW_CONN_"
    return {k[len(prefix) :].lower(): json.loads(v) for k, v in env.items() if k.startswith(prefix)}


def _pg(conn: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        password=conn["password"],
        dbname=conn["schema"],
        connect_timeout=5,
        autocommit=True,
    )


def _ssh_client(known_hosts: Path) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


@pytest.fixture
def second_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the environment at a second sandbox in tmp_path whose ports sit 3000 above the main one."""
    sandbox_dir = tmp_path / "sandbox"
    monkeypatch.setenv("CLOUDOPS_SANDBOX_DIR", str(sandbox_dir))
    monkeypatch.setenv("CLOUDOPS_SANDBOX_PORT_OFFSET", "3000")
    return sandbox_dir


# -- the main sandbox ------------------------------------------------------------------------------------


def test_every_component_is_running(layout: SandboxLayout, plan: EstatePlan) -> None:
    rows = estate.status()
    names = {row.component for row in rows}
    hosts = (*plan.hosts, *extra_hosts(layout))  # and any fleet added with `sandbox hosts add`
    assert names == EXPECTED_COMPONENTS | {f"host-{host.name}" for host in hosts}
    assert len(plan.hosts) >= 6
    assert {row.component: row.state for row in rows if row.state != RUNNING} == {}
    table = estate.format_status(rows)
    assert table.splitlines()[0].split() == ["COMPONENT", "ADDRESS", "PID", "STATE", "DETAIL"]
    assert all(row.component in table and str(row.pid) in table for row in rows)


def test_every_host_key_verifies_against_known_hosts(
    layout: SandboxLayout, plan: EstatePlan, connections: dict[str, dict[str, Any]]
) -> None:
    known_hosts = layout.ssh_dir / "known_hosts"
    for host in plan.hosts:
        conn = connections[host.ssh_conn_id]
        client = _ssh_client(known_hosts)
        try:
            client.connect(
                conn["host"],
                port=conn["port"],
                username=conn["login"],
                key_filename=conn["extra"]["key_file"],
                look_for_keys=False,
                allow_agent=False,
                timeout=5,
            )
            assert client.get_transport().get_remote_server_key().get_base64() in conn["extra"]["host_key"]
            _, stdout, _ = client.exec_command("echo $CLOUDOPS_SANDBOX_HOST", timeout=10)
            assert stdout.read().decode().strip() == host.name
        finally:
            client.close()


def test_a_wrong_or_unknown_host_key_is_rejected(
    layout: SandboxLayout, plan: EstatePlan, connections: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    conn = connections[plan.hosts[0].ssh_conn_id]
    impostor = paramiko.Ed25519Key.from_private_key_file(
        str(layout.ssh_dir / "hosts" / plan.hosts[1].name / "ssh_host_ed25519_key")
    )
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[{conn['host']}]:{conn['port']} {impostor.get_name()} {impostor.get_base64()}\n")
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    kwargs = {
        "port": conn["port"],
        "username": conn["login"],
        "key_filename": conn["extra"]["key_file"],
        "look_for_keys": False,
        "allow_agent": False,
        "timeout": 5,
    }
    with pytest.raises(paramiko.BadHostKeyException):
        _ssh_client(wrong).connect(conn["host"], **kwargs)
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        _ssh_client(empty).connect(conn["host"], **kwargs)


def test_replica_is_in_recovery_and_streaming(
    plan: EstatePlan, connections: dict[str, dict[str, Any]]
) -> None:
    assert plan.postgres_replica is not None
    with _pg(connections[plan.postgres_replica.conn_id]) as replica:
        assert replica.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert replica.execute("SELECT status FROM pg_stat_wal_receiver").fetchone() == ("streaming",)
    with _pg(connections[plan.postgres_primary.conn_id]) as primary:
        row = primary.execute(
            "SELECT state FROM pg_stat_replication WHERE application_name = %s", [plan.postgres_replica.name]
        ).fetchone()
    assert row == ("streaming",)


def test_orders_database_is_seeded(plan: EstatePlan, connections: dict[str, dict[str, Any]]) -> None:
    with _pg(connections[plan.postgres_primary.conn_id]) as conn:
        (orders,) = conn.execute("SELECT count(*) FROM orders").fetchone() or (0,)
        (customers,) = conn.execute("SELECT count(*) FROM customers").fetchone() or (0,)
        (orphans,) = conn.execute(
            "SELECT count(*) FROM orders o LEFT JOIN customers c USING (customer_id) WHERE c IS NULL"
        ).fetchone() or (1,)
    assert orders >= 200_000
    assert customers >= 10_000
    assert orphans == 0


def test_mariadb_inventory_is_seeded_with_binlog_on(
    plan: EstatePlan, connections: dict[str, dict[str, Any]]
) -> None:
    conn = connections[plan.mariadb.conn_id]
    assert conn["conn_type"] == "mysql"
    with (
        pymysql.connect(
            host=conn["host"],
            port=conn["port"],
            user=conn["login"],
            password=conn["password"],
            database=conn["schema"],
            connect_timeout=5,
        ) as db,
        db.cursor() as cur,
    ):
        cur.execute("SELECT COUNT(*) FROM stock_levels")
        assert (cur.fetchone() or (0,))[0] >= 1000
        cur.execute("SELECT @@log_bin, @@binlog_format, @@server_id")
        assert cur.fetchone() == (1, "ROW", 1)
        cur.execute("SHOW MASTER STATUS")
        assert (cur.fetchone() or ("",))[0].startswith("mariadb-bin.")


def test_drills_restore_on_scratch_servers_of_their_own(
    layout: SandboxLayout, plan: EstatePlan, connections: dict[str, dict[str, Any]]
) -> None:
    from cloudops.catalog import load_catalog_file

    catalog = load_catalog_file(layout.catalog_path)
    drills = {d.engine: d.drill.scratch_conn_id for d in catalog.databases if d.drill}
    assert plan.postgres_scratch is not None
    assert plan.mariadb_scratch is not None
    assert drills == {"postgres": plan.postgres_scratch.conn_id, "mariadb": plan.mariadb_scratch.conn_id}
    primaries = {
        connections[plan.postgres_primary.conn_id]["port"],
        connections[plan.mariadb.conn_id]["port"],
    }
    pg = connections[plan.postgres_scratch.conn_id]
    maria = connections[plan.mariadb_scratch.conn_id]
    assert {pg["port"], maria["port"]}.isdisjoint(primaries)
    with _pg(pg) as scratch:
        names = {row[0] for row in scratch.execute("SELECT datname FROM pg_database").fetchall()}
    assert plan.postgres_primary.database not in names  # a server of its own, nothing seeded
    with (
        pymysql.connect(
            host=maria["host"], port=maria["port"], user=maria["login"], password=maria["password"]
        ) as db,
        db.cursor() as cur,
    ):
        # Restored events never fire on the scratch server.
        cur.execute("SELECT @@event_scheduler, @@log_bin")
        assert cur.fetchone() == ("OFF", 0)
        cur.execute(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
            [plan.mariadb.database],
        )
        assert cur.fetchall() == ()


def test_the_evidence_ledger_has_a_database_of_its_own_on_the_scratch_server(
    plan: EstatePlan, connections: dict[str, dict[str, Any]]
) -> None:
    assert plan.postgres_scratch is not None
    ledger_db = connections[EVIDENCE_DB_CONN_ID]
    assert ledger_db["schema"] == EVIDENCE_DATABASE
    assert ledger_db["port"] == connections[plan.postgres_scratch.conn_id]["port"]
    assert ledger_db["port"] != connections[plan.postgres_primary.conn_id]["port"]
    with _pg(ledger_db) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (EVIDENCE_DATABASE,)


def test_aws_endpoint_is_seeded(plan: EstatePlan, connections: dict[str, dict[str, Any]]) -> None:
    import boto3

    conn = connections[plan.aws.conn_id]
    session = boto3.session.Session(
        aws_access_key_id=conn["login"],
        aws_secret_access_key=conn["password"],
        region_name=conn["extra"]["region_name"],
    )
    endpoint = conn["extra"]["endpoint_url"]
    s3 = session.client("s3", endpoint_url=endpoint)
    lock = s3.get_object_lock_configuration(Bucket=plan.aws.bucket)["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    assert lock["Rule"]["DefaultRetention"]["Mode"] == plan.aws.object_lock_mode
    assert lock["Rule"]["DefaultRetention"]["Days"] == plan.aws.object_lock_days
    assert s3.get_bucket_versioning(Bucket=plan.aws.bucket)["Status"] == "Enabled"
    topics = session.client("sns", endpoint_url=endpoint).list_topics()["Topics"]
    assert {t["TopicArn"].rsplit(":", 1)[-1] for t in topics} >= set(plan.aws.sns_topics)
    engines = {
        db["Engine"]
        for db in session.client("rds", endpoint_url=endpoint).describe_db_instances()["DBInstances"]
    }
    assert engines >= {"postgres", "mariadb"}
    reservations = session.client("ec2", endpoint_url=endpoint).describe_instances(
        Filters=[{"Name": "tag:Estate", "Values": [plan.estate]}]
    )["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    assert len(instances) >= len(plan.hosts)
    assert all(len(i["BlockDeviceMappings"]) >= 2 for i in instances)  # root volume + the data volume


def test_env_file_is_private_complete_and_shell_sourceable(
    layout: SandboxLayout, plan: EstatePlan, connections: dict[str, dict[str, Any]]
) -> None:
    assert layout.env_file.stat().st_mode & 0o777 == 0o600
    expected = {d.conn_id for d in plan.databases} | {plan.aws.conn_id} | set(plan.smtp_conn_ids)
    expected |= {h.ssh_conn_id for h in (*plan.hosts, *extra_hosts(layout))}
    expected |= {s.conn_id for s in (plan.postgres_scratch, plan.mariadb_scratch) if s}  # the drills' servers
    expected.add(EVIDENCE_SIGNING_CONN_ID)  # the evidence digests' HMAC key
    for (
        cluster
    ) in plan.clusters:  # each member, its REST API, rewind or replication source, the probe's way in
        expected |= {cluster.probe_conn_id}
        expected |= {
            c
            for m in cluster.members
            for c in (m.conn_id, m.api_conn_id, m.rewind_conn_id, m.replication_conn_id)
            if c
        }
    expected |= set(plan.http_conn_ids)  # the endpoints the first host's health page serves
    expected.add(EVIDENCE_DB_CONN_ID)  # the PostgreSQL evidence ledger's database
    assert set(connections) == expected
    assert connections["sandbox_http_web"] == {
        "conn_type": "http",
        "host": "127.0.0.11",
        "port": layout.port("http"),
        "schema": "http",
    }
    assert len(connections[EVIDENCE_SIGNING_CONN_ID]["password"]) >= 32
    assert connections[plan.postgres_primary.conn_id]["conn_type"] == "postgres"
    assert connections[plan.aws.conn_id]["extra"]["endpoint_url"].startswith("http://127.0.0.1:")
    parsed = read_env_file(layout.env_file)
    assert parsed["CLOUDOPS_SANDBOX_DIR"] == str(layout.dir)
    assert parsed["CLOUDOPS_PROBE_SAMPLES"] == str(layout.dir / "samples")
    script = f'set -a; . "{layout.env_file}"; set +a; env -0'
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"}
    )
    from_shell = dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
    assert {k: from_shell.get(k) for k in parsed} == parsed


def test_up_again_is_fast_and_changes_nothing(layout: SandboxLayout) -> None:
    before = {row.component: row.pid for row in estate.status()}
    env_mtime = layout.env_file.stat().st_mtime_ns
    lines: list[str] = []
    started = time.monotonic()
    estate.up(say=lines.append)
    elapsed = time.monotonic() - started
    assert {row.component: row.pid for row in estate.status()} == before
    assert layout.env_file.stat().st_mtime_ns == env_mtime
    assert elapsed < 5, f"warm up took {elapsed:.1f} s"
    assert not [line for line in lines if "started" in line or "created" in line or "seeded database" in line]
    secrets = json.loads(layout.credentials_file.read_text()).values()
    assert not [line for line in lines for secret in secrets if secret in line]


def _guest_pid1(layout: SandboxLayout, host: str) -> int:
    """The PID (in the machine's namespace) of a running host's PID 1: the child of its unshare."""
    unshare = int((layout.dir / "hosts" / host / "state" / "guest.pid").read_text())
    return int(Path(f"/proc/{unshare}/task/{unshare}/children").read_text().split()[0])


def _processes_naming(path: Path) -> list[str]:
    """Command lines of live processes that mention path (the sandbox's daemons all do)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmdline:
                found.append(cmdline)
    return found


# -- a second sandbox: faults and lifecycle --------------------------------------------------------------


def test_port_in_use_is_refused_before_anything_starts(second_sandbox: Path) -> None:
    port = 15432 + 3000
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(
            SandboxError, match=f"port {port} on 127.0.0.1 is already in use by another process"
        ):
            estate.up(say=_quiet)
    assert {row.state for row in estate.status()} == {STOPPED}
    assert not SandboxLayout.from_environment().data_root.joinpath("postgres").exists()


def test_missing_binary_is_named_with_its_package(
    second_sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No cached root yet, and no debootstrap to build one: said before anything starts.
    monkeypatch.setenv("CLOUDOPS_SANDBOX_CACHE", str(second_sandbox.parent / "empty-cache"))
    missing = second_sandbox.parent / "bin" / "debootstrap"
    monkeypatch.setenv("CLOUDOPS_SANDBOX_DEBOOTSTRAP", str(missing))
    with pytest.raises(
        SandboxError, match=f"debootstrap not found at {missing}: install the Debian package debootstrap"
    ):
        estate.up(say=_quiet)
    assert {row.state for row in estate.status()} == {STOPPED}


def test_bad_port_offset_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDOPS_SANDBOX_PORT_OFFSET", "lots")
    with pytest.raises(SandboxError, match="CLOUDOPS_SANDBOX_PORT_OFFSET='lots' is not an integer"):
        estate.status()


def test_down_never_signals_a_process_it_did_not_start(second_sandbox: Path) -> None:
    layout = SandboxLayout.from_environment()
    pid_file = layout.pid_file("moto")
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{os.getpid()}\n")  # this pytest process: alive, but not the sandbox's moto
    assert {row.component: row.state for row in estate.status()}["moto"] == STALE
    lines: list[str] = []
    estate.down(say=lines.append)
    assert any("moto: pid" in line and "nothing stopped" in line for line in lines)
    assert not pid_file.exists()


def test_a_second_sandbox_comes_up_goes_down_and_comes_back(
    second_sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = SandboxLayout.from_environment()
    plan = load_plan(layout.catalog_path)
    assert plan.postgres_replica is not None
    try:
        estate.up(say=_quiet)
        assert {row.state for row in estate.status()} == {RUNNING}
        # The offset up used is remembered: status (and down) find the sandbox without being told,
        # and a different explicit offset is refused instead of losing track of running servers.
        with monkeypatch.context() as untold:
            untold.delenv("CLOUDOPS_SANDBOX_PORT_OFFSET")
            assert SandboxLayout.from_environment().port_offset == 3000
            assert {row.state for row in estate.status()} == {RUNNING}
            untold.setenv("CLOUDOPS_SANDBOX_PORT_OFFSET", "2000")
            with pytest.raises(SandboxError, match="was started with CLOUDOPS_SANDBOX_PORT_OFFSET=3000"):
                estate.down(say=_quiet)
        assert {row.state for row in estate.status()} == {RUNNING}
        env = {
            k: json.loads(v) for k, v in read_env_file(layout.env_file).items() if k.startswith("AIRFLOW_")
        }
        assert env[f"AIRFLOW_CONN_{plan.postgres_primary.conn_id.upper()}"]["port"] == 15432 + 3000
        with smtplib.SMTP("127.0.0.1", layout.port("smtp"), timeout=5) as smtp:
            smtp.sendmail(
                "runbook@sandbox.example", ["oncall@sandbox.example"], b"Subject: drill\r\n\r\nok\r\n"
            )
        assert len(list(layout.mail_dir.glob("*.eml"))) == 1

        # Each host's mounts live in its own mount namespace only; the machine's has none of them.
        guest_pids = [_guest_pid1(layout, host.name) for host in plan.hosts]
        guest_mounts = Path(f"/proc/{guest_pids[0]}/mounts").read_text()
        assert {"overlay", "proc", "devpts"} <= {line.split()[2] for line in guest_mounts.splitlines()}
        assert sandbox_mounts(layout) == []

        estate.down(say=_quiet)
        assert {row.state for row in estate.status()} == {STOPPED}
        assert (layout.data_root / "postgres" / "primary" / "PG_VERSION").exists()
        # Nothing `up` made is left: no host process, no overlay, proc or bind mount anywhere.
        assert [pid for pid in guest_pids if Path(f"/proc/{pid}").exists()] == []
        assert _processes_naming(layout.dir) == []
        assert sandbox_mounts(layout) == []
        assert str(layout.dir) not in Path("/proc/self/mountinfo").read_text()

        lines: list[str] = []
        estate.up(say=lines.append)
        assert {row.state for row in estate.status()} == {RUNNING}
        assert any("orders already seeded" in line for line in lines)
        conn = json.loads(
            read_env_file(layout.env_file)[f"AIRFLOW_CONN_{plan.postgres_replica.conn_id.upper()}"]
        )
        with _pg(conn) as replica:
            assert replica.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    finally:
        estate.down(say=_quiet)
        if layout.data_root_is_fallback:
            shutil.rmtree(layout.data_root, ignore_errors=True)
