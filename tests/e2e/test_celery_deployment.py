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
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.airflow_stack import AirflowStack, Process, wait_for

pytestmark = pytest.mark.e2e

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
        running = Deployment(stack, schema, seconds={"up": time.monotonic() - started})

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
