"""The runbooks on the CeleryExecutor deployment, as `make up-celery` runs it: the sandbox's Redis as
broker, a PostgreSQL metadata database, api-server, scheduler, dag-processor, triggerer and two Celery
workers (worker-a, worker-b), and the PostgreSQL evidence ledger.

One deployment (instance ``celery-e2e``, started by the same launcher as `make up-celery`, on a fresh
metadata database and an evidence schema of its own) serves the whole module. Through the REST API,
as on-call engineers do: a backup of inventory_mariadb, a patch wave of the web fleet and a failover
drill of orders_pg_cluster at once; once the backup is in, a restore drill and a restore request over
an existing database, which the requester cannot approve and the approver does. Then: every run
succeeded, their tasks ran on both workers (TaskInstance.hostname), and the PostgreSQL ledger verifies
with each task try recorded exactly once.

Last (it leaves one worker dead): a backup of orders_pg whose worker is SIGKILLed, with every process
below it, while take_backup streams the dump into S3. The scheduler notices the missing heartbeats
(``task_instance_heartbeat_timeout``, test-sized here), the try fails and is retried on the other
worker, and that retry aborts the multipart upload the killed try left open.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.airflow_stack import AirflowStack, Process, wait_for

# The module's deployment starts inside its first test's setup (45-90 s, more under load).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

BACKUP = "backup__inventory_mariadb"
DRILL = "restore_drill__inventory_mariadb"
RESTORE = "restore_request"
PATCH = "patch_wave__web"
FAILOVER = "failover_drill__orders_pg_cluster"
DAG_IDS = (BACKUP, DRILL, RESTORE, PATCH, FAILOVER)
USERS = {
    "oncall": ("user", f"oncall-{secrets.token_hex(6)}"),
    "approver": ("user", f"ap-{secrets.token_hex(6)}"),
}
TARGET = f"celery_target_{uuid.uuid4().hex[:6]}"
KILLED = "backup__orders_pg"
KILLED_COMPRESSION = 12
# A killed worker's task stops heartbeating: the scheduler fails the try after this many seconds
# (Airflow's default is 300), looking every DETECTION seconds; its retry waits RETRY_DELAY (5 to 10 s
# with Airflow's jitter). Not lower: six services share two cores, and a live task's heartbeat may wait
# on a busy api-server.
HEARTBEAT_TIMEOUT = 20
DETECTION = 5
RETRY_DELAY = "5s"
UPLOAD_TIMEOUT = 60
PARSED_TIMEOUT = 90
RUN_TIMEOUT = 300  # a bound, not an expectation: each run took well under a minute here
AWAITING_INPUT_TIMEOUT = 180


def _maria(sql: str) -> list[tuple[Any, ...]]:
    import pymysql

    conn = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_MARIADB"])
    admin = pymysql.connect(
        host=conn["host"], port=conn["port"], user=conn["login"], password=conn["password"], autocommit=True
    )
    try:
        cursor = admin.cursor()
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        admin.close()


@dataclass
class Deployment:
    """The running deployment, what the module triggered, and how each run ended."""

    stack: AirflowStack
    schema: str
    catalog_file: Path
    launcher: Any
    runs: dict[str, str] = field(default_factory=dict)  # dag_id -> run_id
    states: dict[str, str] = field(default_factory=dict)  # dag_id -> final state
    refused_approval: tuple[int, str] = (0, "")
    seconds: dict[str, float] = field(default_factory=dict)

    def task_instances(self, dag_id: str) -> list[dict[str, Any]]:
        found = self.stack.api("oncall", "GET", f"/dags/{dag_id}/dagRuns/{self.runs[dag_id]}/taskInstances")[
            "task_instances"
        ]
        return list(found)


def _catalog(folder: Path, project_root: Path) -> Path:
    """The sandbox catalog plus one database a restore may go over (allow_restore_over)."""
    document = yaml.safe_load((project_root / "runbooks" / "sandbox.yaml").read_text())
    document["databases"].append(
        {
            "name": "celery_restore_target",
            "engine": "mariadb",
            "conn_id": "sandbox_mariadb",
            "database": TARGET,
            "allow_restore_over": True,
        }
    )
    for database in document["databases"]:
        if f"backup__{database['name']}" == KILLED:
            database["backup"]["retry_delay"] = RETRY_DELAY  # the module's killed try retries soon
            # zstd at level 12 streams orders_pg's ~45 MB dump for a few seconds (level 3: about one),
            # long enough to find its upload open and kill the worker then.
            database["backup"]["compression_level"] = KILLED_COMPRESSION
    for cluster in document["clusters"]:
        if f"failover_drill__{cluster['name']}" == FAILOVER:
            # This module proves routing, retries and the ledger on Celery, not the drill's speed: the
            # drill runs beside a backup and a patch wave on two cores, so its write-downtime target is
            # widened here (the sandbox's 1 s stands in the failover tests and benchmarks).
            cluster["drill"]["targets"]["max_write_downtime_seconds"] = 5
    folder.mkdir()
    (folder / "sandbox.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, project_root: Path, sandbox_env: dict[str, str]
) -> Iterator[Deployment]:
    from cloudops.deployment.local import INSTANCES, LocalDeployment
    from cloudops.deployment.topology import SERVICES
    from cloudops.sandbox import estate
    from cloudops.sandbox.layout import SandboxLayout

    base = tmp_path_factory.mktemp("celery")
    schema = f"e2e_celery_{uuid.uuid4().hex[:8]}"
    launcher = LocalDeployment(
        SandboxLayout.from_environment(),
        INSTANCES["celery-e2e"],
        users=USERS,
        catalog=_catalog(base / "catalog", project_root),
        settings={
            "CLOUDOPS_EVIDENCE_DB_SCHEMA": schema,
            # Only the DAGs under test run: the others stay paused.
            "CLOUDOPS_PAUSED_AT_CREATION": "true",
            "CLOUDOPS_FAILOVER_STATE_DIR": str(base / "leases"),
            "CLOUDOPS_PATCH_STATE_DIR": str(base / "patch-state"),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": str(DETECTION),
        },
    )
    _maria(f"CREATE DATABASE `{TARGET}`")
    _maria(f"CREATE TABLE `{TARGET}`.`old_only` (id INT PRIMARY KEY)")
    estate.reset_hosts(fleet="web", say=lambda line: None)  # the wave has updates to install
    said: list[str] = []
    launcher.down(said.append)  # a deployment a crashed earlier run left behind
    try:
        started = time.monotonic()
        launcher.up(said.append, fresh=True)
        processes = [Process(s.name, None, launcher.log(s)) for s in SERVICES]  # type: ignore[arg-type]
        stack = AirflowStack(
            launcher.url, launcher.environment(), {u: p for u, (_, p) in USERS.items()}, base, processes
        )
        running = Deployment(
            stack,
            schema,
            base / "catalog" / "sandbox.yaml",
            launcher,
            seconds={"up": time.monotonic() - started},
        )

        def parsed() -> bool:
            errors = stack.api("oncall", "GET", "/importErrors")["import_errors"]
            assert not errors, f"DAG import errors: {errors}"
            found = {d["dag_id"] for d in stack.api("oncall", "GET", "/dags", params={"limit": 100})["dags"]}
            return set(DAG_IDS) <= found

        wait_for("the runbook DAGs to be parsed by the dag-processor", parsed, timeout=PARSED_TIMEOUT)
        _run_everything(running)
        yield running
    finally:
        launcher.down(said.append)
        for name in [r[0] for r in _maria(f"SHOW DATABASES LIKE '{TARGET}%'")]:
            _maria(f"DROP DATABASE IF EXISTS `{name}`")
        _drop_schema(schema)


def _drop_schema(schema: str) -> None:
    import psycopg

    from cloudops.evidence.backend import db_conn_id
    from cloudops.evidence.pg_ledger import conninfo_of

    with psycopg.connect(conninfo_of(db_conn_id()), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _run_everything(running: Deployment) -> None:
    """Trigger the runbooks through the REST API and wait for each to end (bounded)."""
    stack = running.stack
    started = time.monotonic()
    # The drill stays paused until the backup is in: unpaused, the backup would trigger one itself
    # (schedule on_backup), beside the one this test triggers.
    for dag_id in (BACKUP, PATCH, FAILOVER, RESTORE):
        stack.api("oncall", "PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    for dag_id in (BACKUP, PATCH, FAILOVER):
        running.runs[dag_id] = stack.trigger("oncall", dag_id)
    running.states[BACKUP] = stack.wait_run_end("oncall", BACKUP, running.runs[BACKUP], RUN_TIMEOUT)
    assert running.states[BACKUP] == "success", stack.tails()

    stack.api("oncall", "PATCH", f"/dags/{DRILL}", json={"is_paused": False})
    running.runs[DRILL] = stack.trigger("oncall", DRILL)
    running.runs[RESTORE] = stack.trigger(
        "oncall",
        RESTORE,
        {
            "database": "inventory_mariadb",
            "backup_id": "latest",
            "target_database": TARGET,
            "confirm_overwrite": True,
        },
    )
    stack.wait_awaiting_input(
        "oncall", RESTORE, running.runs[RESTORE], "put_in_place", AWAITING_INPUT_TIMEOUT
    )
    running.refused_approval = _answer_status(stack, "oncall", running.runs[RESTORE], "Approve")
    answered = stack.answer("approver", RESTORE, running.runs[RESTORE], "put_in_place", "Approve")
    assert answered["responded_by"]["name"] == "approver"
    for dag_id in (PATCH, FAILOVER, DRILL, RESTORE):
        running.states[dag_id] = stack.wait_run_end("oncall", dag_id, running.runs[dag_id], RUN_TIMEOUT)
    running.seconds["runs"] = time.monotonic() - started


def _answer_status(stack: AirflowStack, user: str, run_id: str, option: str) -> tuple[int, str]:
    import httpx

    response = httpx.patch(
        f"{stack.url}/api/v2/dags/{RESTORE}/dagRuns/{run_id}/taskInstances/put_in_place/-1/hitlDetails",
        json={"chosen_options": [option], "params_input": {}},
        headers={"Authorization": f"Bearer {stack.token(user)}"},
        timeout=20,
    )
    return response.status_code, response.text


def test_every_runbook_succeeds_on_celery(deployment: Deployment) -> None:
    print(
        f"celery e2e: deployment up in {deployment.seconds['up']:.1f} s, "
        f"runs in {deployment.seconds['runs']:.1f} s"
    )
    assert deployment.states == dict.fromkeys(DAG_IDS, "success"), deployment.stack.tails()


def test_the_requester_cannot_approve_and_the_approver_does(deployment: Deployment) -> None:
    status, text = deployment.refused_approval
    assert status == 403, text
    assert "User=oncall (id=oncall) is not a respondent for the task" in text
    assert deployment.states[RESTORE] == "success"
    assert _maria(f"SHOW TABLES FROM `{TARGET}`") != [("old_only",)], "the restore is in place"
    kept = [r[0] for r in _maria(f"SHOW DATABASES LIKE '{TARGET}\\_before\\_%'")]
    assert len(kept) == 1, "the old target is kept, renamed"


def test_tasks_ran_on_both_workers(deployment: Deployment) -> None:
    from cloudops.deployment.topology import WORKERS

    hostnames = {
        dag_id: {ti["hostname"] for ti in deployment.task_instances(dag_id) if ti["state"] == "success"}
        for dag_id in DAG_IDS
    }
    workers = {w.name for w in WORKERS}
    assert all(names and names <= workers for names in hostnames.values()), hostnames
    assert set().union(*hostnames.values()) == workers, hostnames


def test_the_postgres_ledger_verifies_with_each_try_once(deployment: Deployment) -> None:
    from cloudops.evidence.backend import open_ledger
    from cloudops.evidence.runs import STEP_TRY

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLOUDOPS_EVIDENCE_DB_SCHEMA", deployment.schema)
        ledger = open_ledger(backend="postgres")
        verdict = ledger.verify()
        records = list(ledger.records())
    assert verdict.ok, verdict.problem
    tries = [
        (r.fields["dag_id"], r.fields["run_id"], r.fields["task_id"], r.fields["try_number"])
        for r in records
        if r.kind == STEP_TRY
    ]
    assert len(tries) == len(set(tries)), "a try recorded twice"
    expected = {
        (dag_id, deployment.runs[dag_id], ti["task_id"], ti["try_number"])
        for dag_id in DAG_IDS
        for ti in deployment.task_instances(dag_id)
        if ti["state"] in ("success", "failed", "skipped")
    }
    assert expected <= set(tries), sorted(expected - set(tries))


def _uploads_of(catalog_file: Path, database: str) -> Callable[[], list[dict[str, Any]]]:
    """A reader of the multipart uploads open under ``database``'s backup folder in S3 (moto's server)."""
    from cloudops.repository import layout
    from cloudops.runbooks.backup import backed_up_database, open_repository

    catalog, target = backed_up_database(str(catalog_file), "sandbox", database)
    store = open_repository(catalog, target)
    folder = layout.database_prefix(store.prefix, store.estate, database)
    client = store.client

    def listed() -> list[dict[str, Any]]:
        found = client.list_multipart_uploads(Bucket=store.bucket, Prefix=folder).get("Uploads", [])
        return [{"key": u["Key"], "upload_id": u["UploadId"]} for u in found]

    return listed


def test_a_worker_killed_mid_upload_loses_nothing(deployment: Deployment) -> None:
    """Runs last: the killed worker stays down (the fixture's teardown stops the rest)."""
    from cloudops.deployment.topology import WORKERS
    from cloudops.evidence.backend import open_ledger
    from cloudops.evidence.runs import BACKUP_ORPHAN_UPLOAD, BACKUP_STARTED, STEP_TRY

    stack = deployment.stack
    database = KILLED.split("__", 1)[1]
    open_uploads = _uploads_of(deployment.catalog_file, database)
    assert open_uploads() == [], "an upload open before the backup"
    started = time.monotonic()
    stack.api("oncall", "PATCH", f"/dags/{KILLED}", json={"is_paused": False})
    run_id = stack.trigger("oncall", KILLED)
    ti_path = f"/dags/{KILLED}/dagRuns/{run_id}/taskInstances/take_backup"

    def uploading() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        ti = stack.api("oncall", "GET", ti_path)
        assert ti["state"] in (None, "scheduled", "queued", "running"), f"take_backup ended: {ti['state']}"
        uploads = open_uploads() if ti["state"] == "running" else []
        return (ti, uploads) if ti["state"] == "running" and ti["hostname"] and uploads else None

    ti, uploads = wait_for("take_backup streaming into S3", uploading, timeout=UPLOAD_TIMEOUT, interval=0.2)
    killed = ti["hostname"]
    assert killed in {w.name for w in WORKERS}, ti
    said: list[str] = []
    pids = deployment.launcher.kill(killed, said.append)
    killed_at = time.monotonic()
    assert len(pids) > 1, f"the worker had no task process below it: {said}"
    assert open_uploads() == uploads, "the upload ended before the kill: not killed mid-upload"
    state = stack.wait_run_end("oncall", KILLED, run_id, RUN_TIMEOUT)
    seconds = time.monotonic() - started
    print(
        f"celery e2e: {killed} killed {killed_at - started:.1f} s after the trigger; run {state} "
        f"{seconds - (killed_at - started):.1f} s after the kill ({seconds:.1f} s in all)"
    )
    assert state == "success", stack.tails()

    tries = stack.api("oncall", "GET", f"{ti_path}/tries")["task_instances"]
    by_try = {t["try_number"]: t for t in tries}
    assert sorted(by_try) == [1, 2], tries
    assert by_try[1]["hostname"] == killed, by_try[1]
    assert by_try[1]["state"] == "failed", by_try[1]
    survivor = by_try[2]["hostname"]
    assert survivor in {w.name for w in WORKERS} - {killed}, by_try[2]
    assert by_try[2]["state"] == "success", by_try[2]

    # The killed try's upload: aborted by the retry, named in the ledger, no longer open in S3.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLOUDOPS_EVIDENCE_DB_SCHEMA", deployment.schema)
        ledger = open_ledger(backend="postgres")
        verdict = ledger.verify()
        records = [r for r in ledger.records() if r.fields.get("run_id") == run_id]
    assert verdict.ok, verdict.problem
    orphans = {
        r.fields["data"]["upload_id"]: r.fields["data"] for r in records if r.kind == BACKUP_ORPHAN_UPLOAD
    }
    for upload in uploads:
        assert orphans.get(upload["upload_id"], {}).get("action") == "aborted", (upload, orphans)
    assert open_uploads() == [], "the killed try's upload is still open"
    started_by = {
        r.fields["data"]["try_number"]: r.fields["data"] for r in records if r.kind == BACKUP_STARTED
    }
    assert sorted(started_by) == [1, 2], started_by
    assert {o["backup_id"] for o in orphans.values()} == {started_by[1]["backup_id"]}

    # Each try at most once; the retry and the steps after it on the surviving worker.
    steps = [(r.fields["task_id"], r.fields["try_number"]) for r in records if r.kind == STEP_TRY]
    assert len(steps) == len(set(steps)), "a try recorded twice"
    hosts = {
        (r.fields["task_id"], r.fields["try_number"]): r.fields["data"]["hostname"]
        for r in records
        if r.kind == STEP_TRY
    }
    assert hosts.get(("take_backup", 2)) == survivor, hosts
    # The killed try is recorded too (Airflow fails it for its missing heartbeats), on the killed worker.
    assert hosts.get(("take_backup", 1)) == killed, hosts
    killed_try = next(
        r
        for r in records
        if r.kind == STEP_TRY and (r.fields["task_id"], r.fields["try_number"]) == ("take_backup", 1)
    )
    assert killed_try.fields["data"]["state"] == "failed", killed_try.fields
    assert {"verify_backup", "apply_retention"} <= {task for task, _ in steps}, steps
