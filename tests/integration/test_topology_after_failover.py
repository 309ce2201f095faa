"""Topology discovered, not assumed, against a real PostgreSQL pair of this test's own (the sandbox is
left alone): a primary and a ``pg_basebackup -R`` replica on loopback ports 24500-24599 in a temporary
folder, a moto S3 endpoint of its own there too, a catalog and a ledger in ``tmp_path``.

The replica is promoted (the old primary stopped first, as a drill that does not fail back leaves it);
then the old primary is either gone, rejoined as a replica of the new one (a fresh ``pg_basebackup``),
or started again as a second writer. The backup must read the member that is primary now (or the
rejoined replica, by policy) and say so in its record; the health check must word the move as a warning
naming the drill run the ledger holds, and fail only on a cluster with no single primary.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudops.clusters import TopologyError, discover_roles
from cloudops.engines import engine
from cloudops.engines.postgres import promote
from cloudops.errors import CloudOpsError

pytestmark = pytest.mark.integration

BINDIR = Path("/usr/lib/postgresql/15/bin")
PORTS = range(24500, 24600)
USED_BY = "topology test"
CLUSTER = "topo_pg"
OLD, NEW = "topo_old", "topo_new"  # member databases (and their connection ids)
REGION = "eu-west-1"
RUN_ID = "manual__2026-12-03T05:00:00+00:00"


def _free_ports(count: int) -> list[int]:
    found = []
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    pytest.fail(f"fewer than {count} free ports in {PORTS.start}-{PORTS.stop - 1}")


def _as_postgres(argv: list[str], *, timeout: float = 120) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [*prefix, *argv], capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
    )
    assert done.returncode == 0, f"{argv[0]} failed: {done.stdout}{done.stderr}"


@dataclass
class Server:
    data_dir: Path
    port: int
    name: str

    def settings(self) -> str:
        return (
            f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.data_dir}'\ncluster_name = '{self.name}'\n"
            "wal_level = replica\nmax_wal_senders = 5\nfsync = off\nlogging_collector = off\n"
        )

    def start(self) -> None:
        log = Path(f"{self.data_dir}.log")
        try:
            _as_postgres(
                [str(BINDIR / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(log)]
            )
        except AssertionError as failed:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise AssertionError(f"{failed}\nserver log {log}:\n{tail}") from None

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            _as_postgres(
                [str(BINDIR / "pg_ctl"), "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data_dir)]
            )

    def clone_from(self, source: Server) -> None:
        """Become a streaming replica of ``source`` (a fresh base backup: the old primary rejoining)."""
        shutil.rmtree(self.data_dir, ignore_errors=True)
        _as_postgres(
            [
                str(BINDIR / "pg_basebackup"),
                *("-D", str(self.data_dir), "-R", "-X", "stream", "-c", "fast"),
                *("-h", "127.0.0.1", "-p", str(source.port), "-U", "postgres"),
            ]
        )
        # The source's socket lock file (its sockets live in its data directory) came along: a stale
        # one stops this server starting when a live process holds the PID it names.
        for stale in self.data_dir.glob(".s.PGSQL.*.lock"):
            stale.unlink()
        conf = self.data_dir / "postgresql.conf"
        conf.write_text(conf.read_text() + self.settings())
        self.start()

    def execute(self, sql: str, database: str = "shop") -> Any:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=database, autocommit=True
        ) as s:
            cursor = s.execute(sql)
            return cursor.fetchall() if cursor.description else None

    def connection(self) -> str:
        return json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": self.port, "login": "postgres"}
        )


@dataclass
class Estate:
    old: Server
    new: Server
    file: str
    estate: str
    bucket: str
    evidence: Path

    def source(self, source: str) -> None:
        """Rewrite the catalog with ``backup.source`` set to ``source``."""
        document = yaml.safe_load(Path(self.file).read_text())
        document["databases"][0]["backup"]["source"] = source
        Path(self.file).write_text(yaml.safe_dump(document))


@pytest.fixture
def estate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Estate]:
    from moto.server import ThreadedMotoServer

    if not (BINDIR / "initdb").exists():
        pytest.fail(f"{BINDIR}/initdb is missing: install postgresql-15 (make setup)")
    old_port, new_port, s3_port = _free_ports(3)
    base = Path(tempfile.mkdtemp(prefix="cloudops-topology-", dir="/tmp"))
    base.chmod(0o755)
    shutil.chown(base, "postgres")
    old, new = Server(base / "old", old_port, "old"), Server(base / "new", new_port, "new")
    endpoint = f"http://127.0.0.1:{s3_port}"
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    try:
        _as_postgres(
            [str(BINDIR / "initdb"), "-D", str(old.data_dir), "-U", "postgres", "--auth=trust", "--no-sync"]
        )
        with (old.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(old.settings())
        old.start()
        old.execute("CREATE DATABASE shop", database="postgres")
        old.execute("CREATE TABLE orders (id int PRIMARY KEY, placed_on text)")
        old.execute("INSERT INTO orders SELECT g, 'before' FROM generate_series(1, 100) g")
        new.clone_from(old)
        for name, server in ((OLD, old), (NEW, new)):
            monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", server.connection())
        monkeypatch.setenv(
            "AIRFLOW_CONN_TOPO_AWS",
            json.dumps(
                {
                    "conn_type": "aws",
                    "login": "testing",
                    "password": "testing",
                    "extra": {"region_name": REGION, "endpoint_url": endpoint},
                }
            ),
        )
        monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path / "evidence"))
        import boto3

        # moto's backends live in this process: a later test's server still knows earlier buckets.
        bucket = f"cloudops-topology-{uuid.uuid4().hex[:8]}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        backup = {"repository": "r", "retention": {"keep_last": 5}, "source": "primary"}
        document = {
            "estate": "topo",
            "owner": "tests",
            "clouds": [{"name": "aws", "provider": "aws", "aws_conn_id": "topo_aws", "region": REGION}],
            "repositories": [{"name": "r", "cloud": "aws", "bucket": bucket, "region": REGION}],
            "databases": [
                {
                    "name": OLD,
                    "engine": "postgres",
                    "conn_id": OLD,
                    "database": "shop",
                    "cluster": CLUSTER,
                    "backup": backup,
                },
                {
                    "name": NEW,
                    "engine": "postgres",
                    "conn_id": NEW,
                    "database": "shop",
                    "cluster": CLUSTER,
                    "role": "replica",
                },
            ],
            "clusters": [
                {
                    "name": CLUSTER,
                    "manager": "native-pg",
                    "members": [{"database": OLD}, {"database": NEW}],
                    "probe": {"conn_id": "topo_probe", "routing": "libpq-multihost", "database": "shop"},
                }
            ],
        }
        catalog = tmp_path / "topo.yaml"
        catalog.write_text(yaml.safe_dump(document))
        yield Estate(old, new, str(catalog), "topo", bucket, tmp_path / "evidence")
    finally:
        for server in (new, old):
            with contextlib.suppress(AssertionError):
                server.stop("immediate")
        moto.stop()
        shutil.rmtree(base, ignore_errors=True)


def _until(condition: Any, what: str) -> None:
    for _attempt in range(100):  # at most ~10 s
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"not within 10 s: {what}")


def _healthy() -> bool:
    members = {OLD: OLD, NEW: NEW}
    found = engine("postgres").topology(CLUSTER, members, used_by=USED_BY)
    return found.healthy


def _fail_over(estate: Estate) -> None:
    """What a drill that does not fail back leaves: the old primary stopped, the replica promoted, a
    row written on the new primary only, and the drill's ``failover.drill`` fact in the ledger."""
    from cloudops.evidence.recorder import record_fact
    from cloudops.evidence.runs import FAILOVER_DRILL

    _until(_healthy, "the replica streams")
    estate.old.stop()
    promote(NEW, old_primary_conn_id=OLD, used_by=USED_BY, wait_seconds=30)
    estate.new.execute("INSERT INTO orders VALUES (101, 'after the failover')")
    record_fact(
        FAILOVER_DRILL,
        {"dag_id": f"failover_drill__{CLUSTER}", "run_id": RUN_ID, "task_id": "drill"},
        {"cluster": CLUSTER, "run_id": RUN_ID, "new_primary": NEW, "failed_back": False},
    )


def _backup_taken(estate: Estate) -> list[dict[str, Any]]:
    from cloudops.evidence.facts import iter_facts
    from cloudops.evidence.ledger import Ledger
    from cloudops.evidence.runs import BACKUP_TAKEN

    return [r.fields["data"] for r in iter_facts(BACKUP_TAKEN, ledger=Ledger(estate.evidence / "ledger"))]


def _by_status(findings: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for finding in findings:
        grouped.setdefault(finding["status"], []).append(finding)
    return grouped


def test_old_primary_gone_the_backup_reads_the_new_primary_and_the_health_check_names_the_drill(
    estate: Estate,
) -> None:
    from cloudops.runbooks.backup import take_backup, verify_backup
    from cloudops.runbooks.health_check import check_clusters, check_databases, report_health

    _fail_over(estate)

    manifest = take_backup(estate.file, estate.estate, OLD, run_id="backup-after-failover")
    assert manifest["database"] == OLD  # the backups of the database stay together
    assert manifest["row_counts"] == {"public.orders": 101}  # the row only the new primary has
    source = manifest["source"]
    assert (source["member"], source["conn_id"], source["role"], source["address"]) == (
        NEW,
        NEW,
        "primary",
        f"127.0.0.1:{estate.new.port}",
    )
    assert source["reason"] == (
        f"source primary: the primary of cluster {CLUSTER} is now {NEW} (the catalog says {OLD}); "
        f"backing up {NEW}"
    )
    (recorded,) = _backup_taken(estate)
    assert recorded["source"] == source
    assert recorded["backup_id"] == manifest["backup_id"]
    assert verify_backup(estate.file, estate.estate, OLD, backup_id=manifest["backup_id"])["ok"]

    clusters = check_clusters(estate.file, estate.estate)
    assert [(f["status"], f["target"]) for f in clusters] == [
        ("degraded", f"cluster {CLUSTER}"),
        ("warning", f"cluster {CLUSTER}"),
    ]
    assert clusters[0]["problem"].startswith(
        f"{CLUSTER}: {OLD} (127.0.0.1:{estate.old.port}) cannot be reached: "
    )
    warning = clusters[1]["problem"]
    assert warning.startswith(
        f"the primary of cluster {CLUSTER} is now {NEW} (moved by drill run {RUN_ID}, recorded "
    )
    databases = {f["target"]: f for f in check_databases(estate.file, estate.estate)}
    assert databases[f"database {OLD}"]["status"] == "down"  # it is gone: that fails the check, rightly
    # A primary now, no role mismatch; alone, since its replica is gone.
    assert databases[f"database {NEW}"]["status"] == "degraded"
    assert databases[f"database {NEW}"]["problem"] == f"no replica is streaming (expected {OLD})"
    assert "(catalog: replica; see cluster topo_pg)" in databases[f"database {NEW}"]["detail"]
    with pytest.raises(CloudOpsError) as unhealthy:
        report_health(estate.estate, list(databases.values()), [], [], clusters)
    summary = str(unhealthy.value)
    assert f"- database {OLD} is down: unreachable" in summary
    assert f"- cluster {CLUSTER}: {warning}" in summary
    assert "the catalog says" not in summary.replace(f"(the catalog says {OLD})", "")


def test_old_primary_rejoined_as_replica_is_a_warning_only_and_replica_backups_read_it(
    estate: Estate,
) -> None:
    from cloudops.runbooks.backup import take_backup
    from cloudops.runbooks.health_check import check_clusters, check_databases, report_health

    _fail_over(estate)
    estate.old.clone_from(estate.new)
    _until(_healthy, "the old primary streams from the new one")

    clusters = check_clusters(estate.file, estate.estate)
    (warning,) = clusters
    assert warning["status"] == "warning"
    assert warning["problem"] == (
        f"the primary of cluster {CLUSTER} is now {NEW} (moved by drill run {RUN_ID}, recorded "
        + warning["problem"].split(", recorded ")[1].split(")")[0]
        + f"); backups read it; fail back to {OLD}, or make {NEW} the catalog's primary"
    )
    databases = check_databases(estate.file, estate.estate)
    assert {f["status"] for f in databases} == {"ok"}
    record = report_health(estate.estate, databases, [], [], clusters)
    assert record["healthy"]
    assert (
        f"- cluster {CLUSTER}: the primary of cluster {CLUSTER} is now {NEW} (moved by drill run {RUN_ID}"
        in (record["summary"])
    )

    primary_backup = take_backup(estate.file, estate.estate, OLD)
    assert (primary_backup["source"]["member"], primary_backup["source"]["role"]) == (NEW, "primary")
    estate.source("replica")
    replica_backup = take_backup(estate.file, estate.estate, OLD)
    source = replica_backup["source"]
    assert (source["member"], source["role"], source["policy"]) == (OLD, "replica", "replica")
    assert source["reason"].startswith(f"source replica: {OLD} streams from the primary {NEW} (127.0.0.1:")
    assert replica_backup["row_counts"] == {"public.orders": 101}
    assert [r["source"]["member"] for r in _backup_taken(estate)] == [NEW, OLD]


def test_two_writers_refuse_the_backup_and_fail_the_health_check(estate: Estate) -> None:
    from cloudops.catalog import load_catalog_file
    from cloudops.runbooks.backup import take_backup
    from cloudops.runbooks.health_check import check_clusters

    _fail_over(estate)
    estate.old.start()  # no standby.signal: back as a primary, the split brain a fence prevents

    with pytest.raises(TopologyError) as refused:
        take_backup(estate.file, estate.estate, OLD)
    assert str(refused.value).startswith(
        f"backup of database {OLD!r}: cluster {CLUSTER!r} has no single primary: 2 members claim to be the "
        f"primary ({OLD}, {NEW}): two writers"
    )
    assert _backup_taken(estate) == []
    (finding,) = check_clusters(estate.file, estate.estate)
    assert (finding["status"], finding["detail"]) == ("down", f"2 primaries: {OLD}, {NEW}")

    estate.old.stop()
    roles = discover_roles(load_catalog_file(estate.file), CLUSTER, used_by=USED_BY)
    assert (roles.primary, roles.moved) == (NEW, True)


def test_a_restore_is_refused_while_its_database_is_not_the_primary_of_its_cluster(
    estate: Estate,
) -> None:
    """A restore writes to the database's own server: after a failover that was not failed back that
    server is a replica, so the restore is refused naming the primary, before anything is written."""
    from cloudops.catalog import load_catalog_file, load_catalogs
    from cloudops.runbooks.backup import take_backup
    from cloudops.runbooks.restore_request import check_request, restore_backup

    take_backup(estate.file, estate.estate, OLD, run_id="backup-before-failover")
    request = check_request(load_catalogs([estate.file]), database=OLD, target="shop_restored")
    _fail_over(estate)
    estate.old.clone_from(estate.new)
    _until(_healthy, "the old primary streams from the new one")

    with pytest.raises(TopologyError) as refused:
        restore_backup(request, run_id="manual__restore-1")
    assert str(refused.value).startswith(
        f"restore of database {OLD!r}: {OLD} ({OLD}) is not the primary of cluster {CLUSTER} now, {NEW} is"
    )
    assert "nothing was written. Fail back to topo_old (failover_drill__topo_pg)" in str(refused.value)
    databases = estate.old.execute("SELECT datname FROM pg_database", database="postgres")
    assert not [name for (name,) in databases if "restore" in name]
    # The topology the guard read is the servers', not the catalog's: the catalog still says OLD.
    assert load_catalog_file(estate.file).database(OLD).role == "primary"
