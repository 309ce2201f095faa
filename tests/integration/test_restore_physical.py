"""restore_drill__<database> on a PostgreSQL *physical* backup, against the sandbox: a pg_basebackup of the
sandbox primary taken into a private bucket, restored into a throw-away scratch cluster, validated and
removed; a damaged backup refused before anything is extracted or started; and the scratch cluster a
killed drill left, removed by the next drill's prepare; and a half-started cluster (the wait given up
while the server still recovers, or a folder killed while downloading) stopped and removed all the same.

The catalog database is ``orders_physical`` (not ``orders_pg``) so that its prepare never drops the
scratch databases other tests create for ``orders_pg`` on the same server; its expectation suite is the
orders suite, copied under that name into a folder of this module's own. Scratch clusters go into a
scratch root of this module's own (``CLOUDOPS_SCRATCH_DIR``), removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudops.catalog import load_catalog_file
from cloudops.connections import get_connection
from cloudops.engines.scratch import scratch_name
from cloudops.errors import CloudOpsError, RestoreError
from cloudops.restore.fetch import BackupVerificationError
from cloudops.restore.physical import (
    ScratchCluster,
    cluster_processes,
    leftover_clusters,
    restore_scratch_cluster,
    scratch_root,
    stop_and_remove,
)
from cloudops.restore.physical_plan import cluster_paths
from cloudops.runbooks.backup import manifest_of, open_repository, take_backup
from cloudops.runbooks.restore_drill import prepare, record_drill, restore, teardown, validate
from cloudops.sandbox.process import command_line
from tests.integration.estates import private_estate, sandbox_s3

pytestmark = pytest.mark.integration

DATABASE = "orders_physical"
PHYSICAL_CHECKS = {
    "server version",
    "backup position",
    "pg_verifybackup",
    "recovery ended",
    "databases",
    "schema fingerprint",
}


@pytest.fixture(scope="module")
def estate(sandbox_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """orders (the whole sandbox primary, physically) backed up into a bucket of this module's own."""
    work = tmp_path_factory.mktemp("physical")
    expectations = work / "expectations"
    expectations.mkdir()
    project = Path(__file__).resolve().parents[2]
    shutil.copy(project / "include" / "expectations" / "orders_pg.json", expectations / f"{DATABASE}.json")
    # The server runs as the postgres OS user when the tests run as root: it must reach the scratch
    # root, which pytest's private tmp folders do not allow.
    scratch = Path(tempfile.mkdtemp(prefix="cloudops-test-scratch-"))
    scratch.chmod(0o755)
    database = {
        "name": DATABASE,
        "engine": "postgres",
        "conn_id": "sandbox_pg_primary",
        "database": "orders",
        # Long enough that the suite's freshness check passes however long ago the sandbox was seeded.
        "rpo": "3650d",
        "rto": "1h",
        "backup": {"repository": "r", "method": "physical", "retention": {"keep_last": 5}},
        "drill": {"schedule": "on_backup"},
    }
    with private_estate(work, "ph", [database]) as made, pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLOUDOPS_SCRATCH_DIR", str(scratch))
        patch.setenv("CLOUDOPS_EXPECTATIONS_DIR", str(expectations))
        patch.setenv("CLOUDOPS_EVIDENCE_DIR", str(work / "evidence"))
        yield {
            "file": made.file,
            "estate": made.estate,
            "bucket": made.bucket,
            "evidence": work / "evidence",
            "scratch": scratch,
        }
        for leftover in leftover_clusters(made.estate, DATABASE):
            stop_and_remove(leftover)
    shutil.rmtree(scratch, ignore_errors=True)


def backup(estate: dict[str, Any]) -> dict[str, Any]:
    return take_backup(estate["file"], estate["estate"], DATABASE, run_id="physical-test")


def run_drill(
    estate: dict[str, Any], run_id: str, *, before_teardown: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """The DAG's steps in its order, with its trigger rules: teardown and record always run."""
    args = (estate["file"], estate["estate"], DATABASE)
    prepared = prepare(*args, run_id=run_id, backup_id="latest")
    restored = validated = None
    failure: BaseException | None = None
    try:
        restored = restore(*args, backup_id=prepared["backup_id"], scratch=prepared["scratch"])
        validated = validate(
            *args, backup_id=prepared["backup_id"], scratch=prepared["scratch"], restored=restored
        )
    except CloudOpsError as error:
        failure = error
    finally:
        if before_teardown is not None:
            before_teardown({"prepared": prepared, "restored": restored, "failure": failure})
        teardown(*args, scratch=prepared["scratch"], method=prepared["method"])
    outcome: dict[str, Any] = {"prepared": prepared, "restored": restored, "failure": failure}
    try:
        outcome["result"] = record_drill(
            *args, run_id=run_id, prepared=prepared, restored=restored, validated=validated
        )
    except CloudOpsError as error:
        outcome["result"], outcome["verdict"] = None, str(error)
    return outcome


def folder_of(estate: dict[str, Any], prepared: dict[str, Any]) -> Path:
    return cluster_paths(scratch_root(), estate["estate"], prepared["scratch"]).folder


def alive(pid: int) -> bool:
    return command_line(pid) is not None


def test_physical_drill_restores_validates_and_removes_the_scratch_cluster(estate: dict[str, Any]) -> None:
    import psycopg

    backup_id = backup(estate)["backup_id"]
    seen: dict[str, Any] = {}

    def while_running(state: dict[str, Any]) -> None:
        assert state["failure"] is None, state["failure"]
        cluster = ScratchCluster.from_xcom(state["restored"]["cluster"])
        seen["cluster"] = cluster
        seen["running"] = alive(cluster.pid)
        conn = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_PG_PRIMARY"])
        with psycopg.connect(
            host=cluster.host,
            port=cluster.port,
            user=conn["login"],
            password=conn["password"],
            dbname="orders",
        ) as session:
            seen["orders"] = session.execute("SELECT count(*) FROM orders").fetchone()

    outcome = run_drill(estate, "manual__physical-pass", before_teardown=while_running)

    assert outcome["prepared"]["method"] == "physical"
    assert outcome["failure"] is None
    assert outcome["result"]["passed"], outcome.get("verdict")
    cluster = seen["cluster"]
    assert seen["running"]
    assert seen["orders"][0] > 0
    assert cluster.port not in (15432, 15433)
    assert Path(cluster.data_dir).is_relative_to(estate["scratch"])
    (local,) = (estate["evidence"] / "drills").rglob("*.json")
    record = json.loads(local.read_text())
    assert record["backup_id"] == backup_id
    names = {check["name"] for check in record["checks"]}
    assert names >= PHYSICAL_CHECKS
    assert not any(name.startswith("rows ") for name in names), "a physical backup records no row counts"
    assert any(name.startswith("public.orders: ") for name in names), "the expectation suite ran"
    assert all(check["passed"] for check in record["checks"]), [
        c for c in record["checks"] if not c["passed"]
    ]
    assert not alive(cluster.pid), "teardown stopped the scratch server"
    assert not Path(cluster.folder).exists(), "teardown removed the scratch cluster's files"
    assert leftover_clusters(estate["estate"], DATABASE) == []


def test_flipped_byte_fails_before_any_restore_and_teardown_still_runs(estate: dict[str, Any]) -> None:
    manifest = backup(estate)
    item = manifest["objects"][0]
    data = bytearray(sandbox_s3().get_object(Bucket=estate["bucket"], Key=item["key"])["Body"].read())
    data[len(data) // 2] ^= 0xFF
    sandbox_s3().put_object(Bucket=estate["bucket"], Key=item["key"], Body=bytes(data))
    seen: dict[str, Any] = {}

    def before_teardown(state: dict[str, Any]) -> None:
        data_dir = folder_of(estate, state["prepared"]) / "data"
        seen["extracted"] = sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []
        seen["server_log"] = (folder_of(estate, state["prepared"]) / "server.log").exists()

    outcome = run_drill(estate, "manual__physical-flip", before_teardown=before_teardown)

    assert isinstance(outcome["failure"], BackupVerificationError)
    assert item["name"] in str(outcome["failure"])
    assert "SHA-256" in str(outcome["failure"])
    assert seen == {"extracted": [], "server_log": False}, "nothing was extracted, no server was started"
    assert "failed" in outcome["verdict"]
    assert not folder_of(estate, outcome["prepared"]).exists()
    assert leftover_clusters(estate["estate"], DATABASE) == []


def test_next_prepare_removes_the_scratch_cluster_a_killed_drill_left(estate: dict[str, Any]) -> None:
    backup(estate)  # a whole one: the flipped-byte test may have damaged the latest
    args = (estate["file"], estate["estate"], DATABASE)
    killed = prepare(*args, run_id="manual__physical-killed", backup_id="latest")
    left = ScratchCluster.from_xcom(
        restore(*args, backup_id=killed["backup_id"], scratch=killed["scratch"])["cluster"]
    )
    assert alive(left.pid)
    assert [c.name for c in leftover_clusters(estate["estate"], DATABASE)] == [killed["scratch"]]

    again = prepare(*args, run_id="manual__physical-after-kill", backup_id="latest")

    assert not alive(left.pid), "prepare stopped the killed drill's server"
    assert not Path(left.folder).exists()
    assert leftover_clusters(estate["estate"], DATABASE) == []
    teardown(*args, scratch=again["scratch"], method=again["method"])  # nothing was started: a no-op


def test_stop_and_remove_works_on_a_half_started_cluster(estate: dict[str, Any]) -> None:
    manifest = backup(estate)
    catalog = load_catalog_file(estate["file"])
    store = open_repository(catalog, catalog.database(DATABASE))
    scratch = scratch_name(DATABASE, "manual__physical-half")
    paths = cluster_paths(scratch_root(), estate["estate"], scratch)
    # No time to start: the wait gives up while the server is still recovering, as a killed drill would.
    with pytest.raises(RestoreError, match="not ready after 0 s"):
        restore_scratch_cluster(
            store,
            manifest_of(manifest),
            scratch=scratch,
            source=get_connection("sandbox_pg_primary", "test"),
            used_by="test",
            start_timeout=timedelta(0),
        )
    # The postmaster may take a moment to show up (postmaster.pid, its argv): look for a bounded while.
    deadline = time.monotonic() + 10
    while not (started := cluster_processes(paths)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started, "the server was left starting"

    assert stop_and_remove(paths)

    assert not any(alive(pid) for pid in started)
    assert cluster_processes(paths) == []
    assert not paths.folder.exists()
    assert not stop_and_remove(paths), "a second call finds nothing and says so"


def test_stop_and_remove_works_on_a_folder_without_a_server(estate: dict[str, Any]) -> None:
    paths = cluster_paths(
        scratch_root(), estate["estate"], scratch_name(DATABASE, "manual__physical-fetching")
    )
    paths.fetch_dir.mkdir(parents=True)  # killed while downloading
    (paths.fetch_dir / "base.tar").write_bytes(b"partial")

    assert stop_and_remove(paths)
    assert not paths.folder.exists()


def _connect_primary(dbname: str) -> Any:
    import psycopg

    conn = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_PG_PRIMARY"])
    return psycopg.connect(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        password=conn["password"],
        dbname=dbname,
        autocommit=True,
        connect_timeout=10,
    )


def _no_access_for_others(folder: Path) -> list[str]:
    """Every entry under ``folder`` that grants its group or others anything."""
    return [
        f"{path} {oct(path.lstat().st_mode & 0o777)}"
        for path in [folder, *folder.rglob("*")]
        if not path.is_symlink() and path.lstat().st_mode & 0o077
    ]


def test_the_backups_per_role_settings_never_reach_the_drills_sessions(estate: dict[str, Any]) -> None:
    """A library to preload and a search_path, set for the backup's role in one of its databases, are in
    the restored cluster's pg_db_role_setting; cloudops's sessions override both at login (PG 15).
    And while the drill runs, its cluster's folder is the server's OS user's alone (0700, nothing
    in it open to others)."""
    import pwd

    import psycopg

    from cloudops.engines.postgres import snapshot_session
    from cloudops.restore.physical import scratch_connection

    planted = "attack_settings"
    login = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_PG_PRIMARY"])["login"]
    with _connect_primary("postgres") as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {planted} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {planted}")
        admin.execute(
            f"ALTER ROLE {login} IN DATABASE {planted} SET session_preload_libraries = 'cloudops_no_such_lib'"
        )
        admin.execute(f"ALTER ROLE {login} IN DATABASE {planted} SET search_path = attacker, pg_catalog")
        try:
            backup(estate)
        finally:
            admin.execute(f"ALTER ROLE {login} IN DATABASE {planted} RESET ALL")
            admin.execute(f"DROP DATABASE IF EXISTS {planted} WITH (FORCE)")
    seen: dict[str, Any] = {}

    def while_running(state: dict[str, Any]) -> None:
        folder = folder_of(estate, state["prepared"])
        seen["mode"] = folder.stat().st_mode & 0o777
        seen["owner"] = pwd.getpwuid(folder.stat().st_uid).pw_name
        seen["open"] = _no_access_for_others(folder)
        seen["entries"] = sorted(p.name for p in folder.iterdir())
        cluster = ScratchCluster.from_xcom(state["restored"]["cluster"])
        source = get_connection("sandbox_pg_primary", "test")
        # The control: a plain session gets the planted settings, so the case is a real one.
        try:
            psycopg.connect(
                host=cluster.host,
                port=cluster.port,
                user=source.login,
                password=source.password,
                dbname=planted,
                connect_timeout=10,
            ).close()
            seen["plain"] = "connected"
        except psycopg.Error as error:
            seen["plain"] = str(error)
        with snapshot_session(
            scratch_connection(cluster, source, database=planted), planted, used_by="t"
        ) as s:
            seen["settings"] = s.execute(
                "SELECT current_setting('search_path'), current_setting('session_preload_libraries')"
            ).fetchone()

    outcome = run_drill(estate, "manual__physical-settings", before_teardown=while_running)

    assert "cloudops_no_such_lib" in seen["plain"], seen["plain"]
    assert seen["settings"] == ('"$user",public', "")
    assert outcome["failure"] is None, outcome["failure"]
    assert outcome["result"]["passed"], outcome.get("verdict")
    assert seen["mode"] == 0o700
    assert seen["owner"] == ("postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name)
    assert "data" in seen["entries"]
    assert seen["open"] == [], "nothing in the cluster's folder is open to others"


def test_teardown_stops_only_its_own_server_and_only_on_its_worker(estate: dict[str, Any]) -> None:
    """On another worker (another host name, or this one after a reboot), teardown fails naming the
    one holding the cluster and stops nothing; on its own, it signals the postmaster of
    postmaster.pid, not an operator's ``tail -f`` of server.log."""
    import subprocess

    from cloudops.errors import RestoreRefused
    from cloudops.restore.physical import ScratchOwner

    backup(estate)
    args = (estate["file"], estate["estate"], DATABASE)
    prepared = prepare(*args, run_id="manual__physical-elsewhere", backup_id="latest")
    cluster = ScratchCluster.from_xcom(
        restore(*args, backup_id=prepared["backup_id"], scratch=prepared["scratch"])["cluster"]
    )
    paths = cluster_paths(scratch_root(), estate["estate"], cluster.name)
    reader = subprocess.Popen(["tail", "-f", cluster.log_file], stdout=subprocess.DEVNULL)
    try:
        elsewhere = ScratchOwner(host="worker-7", boot_id=cluster.boot_id, pid=4242)
        refused = rf"{cluster.name} belongs to host 'worker-7'.*may still run"
        with pytest.raises(RestoreRefused, match=refused):
            teardown(*args, scratch=prepared["scratch"], method="physical", owner=elsewhere.to_data())
        rebooted = ScratchOwner(host=cluster.worker, boot_id="0" * 32, pid=cluster.owner_pid)
        with pytest.raises(RestoreRefused, match="rebooted since"):
            teardown(*args, scratch=prepared["scratch"], method="physical", owner=rebooted)
        assert alive(cluster.pid), "a teardown elsewhere stops nothing here"
        assert cluster_processes(paths)[0] == cluster.pid, "the postmaster of postmaster.pid comes first"
        assert reader.pid not in cluster_processes(paths)

        teardown(*args, scratch=prepared["scratch"], method="physical", owner=cluster.owner)

        assert not alive(cluster.pid)
        assert not Path(cluster.folder).exists()
        assert reader.poll() is None, "the operator's tail -f of server.log still runs"
    finally:
        reader.kill()
        reader.wait(timeout=10)
        stop_and_remove(paths)


def test_a_scratch_root_inside_a_catalog_servers_data_directory_is_refused(
    estate: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudops.errors import RestoreRefused
    from cloudops.sandbox.layout import SandboxLayout

    primary_data = SandboxLayout.from_environment().data_root / "postgres" / "primary"
    assert (primary_data / "PG_VERSION").is_file(), "the sandbox primary's data directory"
    before = sorted(p.name for p in primary_data.iterdir())
    monkeypatch.setenv("CLOUDOPS_SCRATCH_DIR", str(primary_data / "scratch"))
    with pytest.raises(RestoreRefused, match=f"inside the database server data directory {primary_data}"):
        prepare(estate["file"], estate["estate"], DATABASE, run_id="manual__in-pgdata", backup_id="latest")
    assert sorted(p.name for p in primary_data.iterdir()) == before, "nothing was made there"
