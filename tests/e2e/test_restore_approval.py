"""A restore over an existing database through a real running Airflow, as on-call engineers do it: the
requester triggers ``restore_request`` through the REST API, the run waits in "awaiting input" at
``put_in_place``, and only a second person's approval, checked by that step itself, puts the restored
copy in place. The careless cases: the requester approves, an approver off the estate's list answers,
the requester marks the step "success" by hand, a run started from the shell (no Airflow user), a
rejection. None of them touches the target.

One Airflow (api-server, scheduler, dag-processor; LocalExecutor on SQLite; no triggerer: in Airflow
3.3 a Human-in-the-loop step parks in AWAITING_INPUT and the API's response resumes it) runs for the
whole module against the sandbox's MariaDB and moto S3, with a catalog of its own (inventory_mariadb
backed up into a bucket of its own, the databases it restores over listed with allow_restore_over, and
``approvals.approvers: [oncall, approver]``) and an evidence ledger of its own. SimpleAuthManager users
with the USER role (the least role that may trigger a DAG and answer a Human-in-the-loop step):
``oncall`` triggers (and, being on the list, may answer: the step refuses its own approval),
``approver`` approves, ``outsider`` is not on the list.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cloudops.evidence.ledger import Ledger, verify_ledger
from cloudops.evidence.runs import APPROVAL, RESTORE_PERFORMED, STEP_TRY, Run, fold_runs
from tests.e2e.airflow_stack import Process, free_port, start, stop, wait_for
from tests.integration.estates import private_estate

pytestmark = pytest.mark.e2e

DAG_ID = "restore_request"
DATABASE = "inventory_mariadb"
USERS = {name: f"{name}-{secrets.token_hex(6)}" for name in ("oncall", "approver", "outsider")}
# The databases the tests restore over, one each: the catalog lists them with allow_restore_over.
TARGETS = [f"existing_{uuid.uuid4().hex[:6]}" for _ in range(5)]
_UNUSED_TARGETS = iter(TARGETS)
MIGRATE_TIMEOUT = 120
READY_TIMEOUT = 90  # api-server healthy, scheduler and dag-processor heartbeating
PARSED_TIMEOUT = 90  # restore_request serialized by the dag-processor
AWAITING_INPUT_TIMEOUT = 120  # check_request, restore and verify done, put_in_place parked
RUN_END_TIMEOUT = 90  # after the answer: the run reaches success or failed


# -- helpers ----------------------------------------------------------------------------------------
def maria_admin() -> Any:
    import pymysql

    conn = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_MARIADB"])
    return pymysql.connect(
        host=conn["host"], port=conn["port"], user=conn["login"], password=conn["password"], autocommit=True
    )


def query(sql: str, *args: Any) -> list[tuple[Any, ...]]:
    admin = maria_admin()
    try:
        cursor = admin.cursor()
        cursor.execute(sql, args or None)
        return list(cursor.fetchall())
    finally:
        admin.close()


def databases_like(pattern: str) -> list[str]:
    return sorted(
        row[0]
        for row in query(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s", pattern
        )
    )


def tables_of(database: str) -> list[str]:
    return sorted(
        row[0]
        for row in query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", database)
    )


@dataclass
class Stack:
    """The running Airflow and what the test needs to talk to it and check its work."""

    url: str
    env: dict[str, str]
    catalog_file: Path
    estate: str
    evidence: Path
    backup_id: str
    processes: list[Process] = field(default_factory=list)

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.processes)

    def token(self, user: str) -> str:
        import httpx

        response = httpx.post(
            f"{self.url}/auth/token", json={"username": user, "password": USERS[user]}, timeout=10
        )
        assert response.status_code in (200, 201), f"token for {user}: {response.status_code} {response.text}"
        return str(response.json()["access_token"])

    def api(
        self, user: str, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        import httpx

        response = httpx.request(
            method,
            f"{self.url}/api/v2{path}",
            headers={**(headers or {}), "Authorization": f"Bearer {self.token(user)}"},
            timeout=20,
            **kwargs,
        )
        assert response.is_success, f"{method} {path} as {user}: {response.status_code} {response.text[:500]}"
        return response.json()

    def ledger_run(self, run_id: str) -> Run:
        runs = [run for run in fold_runs(Ledger(self.evidence / "ledger").records()) if run.run_id == run_id]
        assert len(runs) == 1, f"expected the ledger to hold run {run_id} once, found {len(runs)}"
        return runs[0]


# -- the estate and the running Airflow -----------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, project_root: Path, sandbox_env: dict[str, str]
) -> Iterator[Stack]:
    from cloudops.runbooks.backup import take_backup

    base = tmp_path_factory.mktemp("restore-approval")
    home, catalog_dir, evidence = base / "airflow-home", base / "catalog", base / "evidence"
    for folder in (home, catalog_dir, evidence):
        folder.mkdir()

    database = {
        "name": DATABASE,
        "engine": "mariadb",
        "conn_id": "sandbox_mariadb",
        "database": "inventory",
        "rpo": "1d",
        "rto": "1h",
        "backup": {"repository": "r", "retention": {"keep_last": 3}},
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__")}
    env.update(sandbox_env)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(project_root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(project_root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",  # two shared cores
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "oncall:user,approver:user,outsider:user",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": url,
            # api-server and scheduler must sign and check the execution API's tokens with one key.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "CLOUDOPS_CATALOG": str(catalog_dir),
            "CLOUDOPS_EVIDENCE_DIR": str(evidence),
            "CLOUDOPS_DEADLINE_ALERTS": "false",
            # Runbook DAGs start unpaused: here only the ones under test run, or the health check,
            # evidence_ship and backup runs would take the two slots and lock SQLite.
            "CLOUDOPS_PAUSED_AT_CREATION": "true",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps(USERS))

    # The catalog Airflow reads (CLOUDOPS_CATALOG) is this estate's file, in a bucket of its own.
    targets = [
        {"name": f"target_{i}", "engine": "mariadb", "conn_id": "sandbox_mariadb", "database": name}
        | {"allow_restore_over": True}
        for i, name in enumerate(TARGETS)
    ]
    with private_estate(catalog_dir, "ap", [database, *targets]) as made:
        made.write(approvals={"approvers": ["oncall", "approver"]})
        catalog_file, estate = made.path, made.estate
        processes: list[Process] = []
        try:
            # Recorded in the run's own ledger: the restore checks the manifest against backup.taken.
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("CLOUDOPS_EVIDENCE_DIR", str(evidence))
                backup_id = take_backup(str(catalog_file), estate, DATABASE)["backup_id"]
            migrated = subprocess.run(
                ["airflow", "db", "migrate"], env=env, capture_output=True, text=True, timeout=MIGRATE_TIMEOUT
            )
            assert migrated.returncode == 0, (migrated.stdout + migrated.stderr)[-3000:]

            processes.append(start(env, home, "api-server", "api-server", "--workers", "1"))
            processes.append(start(env, home, "scheduler", "scheduler"))
            processes.append(start(env, home, "dag-processor", "dag-processor"))
            running = Stack(url, env, catalog_file, estate, evidence, backup_id, processes)
            try:
                _wait_until_ready(running)
            except AssertionError as error:
                raise AssertionError(f"{error}\n{running.tails()}") from None
            running.api("oncall", "PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
            yield running
        finally:
            for process in processes:
                stop(process)


def _wait_until_ready(stack: Stack) -> None:
    import httpx

    def healthy() -> dict[str, Any] | None:
        for process in stack.processes:
            assert process.popen.poll() is None, f"{process.name} exited with {process.popen.returncode}"
        health = httpx.get(f"{stack.url}/api/v2/monitor/health", timeout=5).json()
        parts = ("metadatabase", "scheduler", "dag_processor")
        return health if all((health.get(p) or {}).get("status") == "healthy" for p in parts) else None

    wait_for("the api-server, scheduler and dag-processor to report healthy", healthy, timeout=READY_TIMEOUT)

    def parsed() -> bool:
        errors = stack.api("oncall", "GET", "/importErrors")["import_errors"]
        assert not errors, f"DAG import errors: {errors}"
        return bool(stack.api("oncall", "GET", "/dags", params={"dag_id_pattern": DAG_ID})["dags"])

    wait_for(f"{DAG_ID} to be parsed and serialized by the dag-processor", parsed, timeout=PARSED_TIMEOUT)


@pytest.fixture
def existing_target(stack: Stack) -> Iterator[str]:
    """A database already on the server, holding a marker table the restore must keep (or not touch)."""
    target = next(_UNUSED_TARGETS)
    query(f"CREATE DATABASE `{target}`")
    query(f"CREATE TABLE `{target}`.`old_only` (id INT PRIMARY KEY)")
    query(f"INSERT INTO `{target}`.`old_only` VALUES (1), (2)")
    yield target
    for name in [
        target,
        *databases_like(f"{target}\\_before\\_%"),
        *databases_like(f"drill\\_restore\\_{target}\\_%"),
    ]:
        query(f"DROP DATABASE IF EXISTS `{name}`")


# -- the steps an on-call engineer takes --------------------------------------------------------------
def trigger_overwrite(stack: Stack, target: str) -> str:
    run = stack.api(
        "oncall",
        "POST",
        f"/dags/{DAG_ID}/dagRuns",
        json={
            "logical_date": None,
            "conf": {
                "database": DATABASE,
                "backup_id": "latest",
                "target_database": target,
                "confirm_overwrite": True,
            },
        },
    )
    assert run["triggering_user_name"] == "oncall"
    return str(run["dag_run_id"])


def task_state(stack: Stack, run_id: str, task_id: str) -> dict[str, Any]:
    return dict(stack.api("oncall", "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}"))


def wait_awaiting_input(stack: Stack, run_id: str) -> None:
    def states() -> dict[str, str]:
        seen = {
            ti["task_id"]: ti["state"]
            for ti in stack.api("oncall", "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")[
                "task_instances"
            ]
        }
        assert "failed" not in seen.values(), f"a step failed before the approval: {seen}"
        return seen

    try:
        wait_for(
            f"put_in_place of {run_id} to await input (task states)",
            states,
            done=lambda seen: seen.get("put_in_place") == "awaiting_input",
            timeout=AWAITING_INPUT_TIMEOUT,
        )
    except AssertionError as error:
        raise AssertionError(f"{error}\n{stack.tails()}") from None


def wait_parking_settled(stack: Stack, run_id: str) -> None:
    """Wait until the scheduler has taken the executor's "success" for the try that parked the step.

    Airflow 3.3.2 race: parked and resumed execution share one TaskInstanceKey. An answer that comes
    before the scheduler has processed the parking process's exit gets the step re-queued, and then
    that stale "success" fails it ("finished with state success, but the task instance's state
    attribute is queued"). People answer after seconds, not within the scheduler's next loop; this
    test waits for that signal (nothing in the REST API shows it) instead of sleeping a guessed time.
    """
    scheduler = next(p for p in stack.processes if p.name == "scheduler")
    needle = f"task_id='put_in_place', run_id='{run_id}'"

    def settled() -> bool:
        return any(
            "Received executor event with state success" in line and needle in line
            for line in scheduler.log.read_text(errors="replace").splitlines()
        )

    wait_for(
        f"the scheduler to process the exit of the process that parked put_in_place of {run_id}",
        settled,
        timeout=30,
        interval=0.5,
    )


def answer(stack: Stack, run_id: str, user: str, option: str) -> dict[str, Any]:
    return dict(
        stack.api(
            user,
            "PATCH",
            f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/put_in_place/-1/hitlDetails",
            json={"chosen_options": [option], "params_input": {}},
        )
    )


def answer_refused(stack: Stack, run_id: str, user: str, option: str) -> tuple[int, str]:
    """Answer as ``user`` and return the API's status and text (for answers Airflow refuses)."""
    import httpx

    response = httpx.patch(
        f"{stack.url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/put_in_place/-1/hitlDetails",
        json={"chosen_options": [option], "params_input": {}},
        headers={"Authorization": f"Bearer {stack.token(user)}"},
        timeout=20,
    )
    return response.status_code, response.text


def wait_run_end(stack: Stack, run_id: str) -> str:
    def ended() -> str | None:
        state = stack.api("oncall", "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

    try:
        return str(wait_for(f"run {run_id} to end", ended, timeout=RUN_END_TIMEOUT))
    except AssertionError as error:
        raise AssertionError(f"{error}\n{stack.tails()}") from None


def task_log(stack: Stack, run_id: str, task_id: str, try_number: int) -> str:
    logs = stack.api(
        "oncall",
        "GET",
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
        params={"full_content": "true"},
        headers={"Accept": "application/json"},
    )
    return json.dumps(logs)


def staging_of(stack: Stack, target: str, run_id: str) -> str:
    from cloudops.runbooks.restore_request import RestoreRequest, restored_into

    request = RestoreRequest(
        str(stack.catalog_file), stack.estate, DATABASE, "latest", target, overwrite=True
    )
    return restored_into(request, run_id)


def the_only(records: list[Any], what: str) -> Any:
    assert len(records) == 1, f"expected one {what} record, found {len(records)}: {records}"
    return records[0]


# -- the tests ------------------------------------------------------------------------------------
def assert_untouched(stack: Stack, run_id: str, target: str) -> None:
    """The target holds what it held, nothing was kept aside, the staging copy is gone, no restore."""
    assert tables_of(target) == ["old_only"], "the target is untouched"
    assert query(f"SELECT COUNT(*) FROM `{target}`.`old_only`") == [(2,)]
    assert databases_like(f"{target}\\_before\\_%") == []
    assert databases_like(staging_of(stack, target, run_id)) == [], "the staging copy is dropped"
    assert stack.ledger_run(run_id).facts_of(RESTORE_PERFORMED) == []


def failed_step_error(recorded: Run, task_id: str) -> str:
    step = the_only(
        [
            s
            for s in recorded.steps
            if s.fields["task_id"] == task_id and s.fields["data"]["state"] == "failed"
        ],
        f"failed {STEP_TRY} {task_id}",
    )
    return str(step.fields["data"]["error"])


def test_the_requester_cannot_approve_their_own_overwrite(stack: Stack, existing_target: str) -> None:
    run_id = trigger_overwrite(stack, existing_target)
    wait_awaiting_input(stack, run_id)
    wait_parking_settled(stack, run_id)
    staging = staging_of(stack, existing_target, run_id)
    assert databases_like(staging) == [staging], "the restore is staged beside the target before approval"

    # oncall is on the estate's approver list, so Airflow takes the answer; the swap step refuses it
    answered = answer(stack, run_id, "oncall", "Approve")
    assert answered["responded_by"]["name"] == "oncall"

    assert wait_run_end(stack, run_id) == "failed"
    step = task_state(stack, run_id, "put_in_place")
    assert step["state"] == "failed"
    assert task_state(stack, run_id, "confirm_in_place")["state"] == "upstream_failed"
    assert task_state(stack, run_id, "drop_staging")["state"] == "success"
    log = task_log(stack, run_id, "put_in_place", step["try_number"])
    assert f"approval refused: run {run_id}: requested by oncall, answered Approve by oncall" in log
    assert "a second person must approve this step; nothing was changed" in log
    assert_untouched(stack, run_id, existing_target)

    recorded = stack.ledger_run(run_id)
    assert recorded.state == "failed"
    assert recorded.triggered_by_user == "oncall"
    approval = the_only(recorded.approvals, APPROVAL).fields
    assert approval["task_id"] == "put_in_place"
    assert approval["data"]["decision"] == "Approve"
    assert approval["data"]["approver"] == "oncall"
    assert approval["data"]["requested_by"] == "oncall"
    assert approval["data"]["accepted"] is False
    assert "second person" in approval["data"]["refusal"]
    assert "second person" in failed_step_error(recorded, "put_in_place")
    verdict = verify_ledger(Ledger(stack.evidence / "ledger"))
    assert verdict.ok, verdict.problem


def test_a_second_persons_approval_puts_the_restore_in_place(stack: Stack, existing_target: str) -> None:
    from cloudops.runbooks.restore_request import RestoreRequest, verify_restore

    run_id = trigger_overwrite(stack, existing_target)
    wait_awaiting_input(stack, run_id)
    wait_parking_settled(stack, run_id)
    assert tables_of(existing_target) == ["old_only"], "nothing is touched before the approval"

    answered = answer(stack, run_id, "approver", "Approve")
    assert answered["responded_by"]["name"] == "approver"

    assert wait_run_end(stack, run_id) == "success", stack.tails()
    for task_id in ("check_request", "restore", "verify", "put_in_place", "confirm_in_place", "drop_staging"):
        assert task_state(stack, run_id, task_id)["state"] == "success", task_id

    (kept,) = databases_like(f"{existing_target}\\_before\\_%")
    assert tables_of(kept) == ["old_only"], "the old target is kept, renamed"
    assert query(f"SELECT COUNT(*) FROM `{kept}`.`old_only`") == [(2,)]
    assert "old_only" not in tables_of(existing_target)
    placed = RestoreRequest(str(stack.catalog_file), stack.estate, DATABASE, "latest", existing_target)
    with pytest.MonkeyPatch.context() as patch:  # the manifest is checked against the run's ledger
        patch.setenv("CLOUDOPS_EVIDENCE_DIR", str(stack.evidence))
        assert verify_restore(placed, stack.backup_id)["checks"] >= 3, "the target holds the backup"
    assert databases_like(staging_of(stack, existing_target, run_id)) == []

    recorded = stack.ledger_run(run_id)
    assert recorded.state == "success"
    assert recorded.triggered_by_user == "oncall"
    finished = [r for r in recorded.records if r.kind == "run.finished"]
    assert [r.fields["data"]["triggered_by_user"] for r in finished] == ["oncall"]
    approval = the_only(recorded.approvals, APPROVAL).fields["data"]
    assert (approval["decision"], approval["approver"], approval["requested_by"], approval["accepted"]) == (
        "Approve",
        "approver",
        "oncall",
        True,
    )
    performed = the_only(recorded.facts_of(RESTORE_PERFORMED), RESTORE_PERFORMED).fields["data"]
    assert performed["approved_by"] == "approver"
    assert performed["requested_by"] == "oncall"
    assert performed["backup_id"] == stack.backup_id
    assert performed["target_database"] == existing_target
    assert performed["replaced"] is True
    assert performed["kept_as"] == kept
    verdict = verify_ledger(Ledger(stack.evidence / "ledger"))
    assert verdict.ok, verdict.problem


def test_an_outsider_cannot_answer_and_a_rejection_fails_the_run_leaving_the_target(
    stack: Stack, existing_target: str
) -> None:
    run_id = trigger_overwrite(stack, existing_target)
    wait_awaiting_input(stack, run_id)
    wait_parking_settled(stack, run_id)

    # not on the estate's approver list: Airflow itself refuses the answer (assigned_users)
    status, text = answer_refused(stack, run_id, "outsider", "Approve")
    assert status == 403, text
    assert "User=outsider (id=outsider) is not a respondent for the task" in text
    assert task_state(stack, run_id, "put_in_place")["state"] == "awaiting_input"

    answer(stack, run_id, "approver", "Reject")

    # A rejection ends the run failed (L13): it did not do what was asked, and alerts say so.
    assert wait_run_end(stack, run_id) == "failed"
    step = task_state(stack, run_id, "put_in_place")
    assert step["state"] == "failed"
    assert task_state(stack, run_id, "drop_staging")["state"] == "success"
    log = task_log(stack, run_id, "put_in_place", step["try_number"])
    assert (
        f"rejected: run {run_id}: requested by oncall, answered Reject by approver; nothing was changed"
        in log
    )
    assert_untouched(stack, run_id, existing_target)
    recorded = stack.ledger_run(run_id)
    assert recorded.state == "failed"
    approval = the_only(recorded.approvals, APPROVAL).fields["data"]
    assert (approval["decision"], approval["approver"], approval["requested_by"], approval["accepted"]) == (
        "Reject",
        "approver",
        "oncall",
        False,
    )


def test_the_approval_step_marked_success_by_hand_never_swaps(stack: Stack, existing_target: str) -> None:
    run_id = trigger_overwrite(stack, existing_target)
    wait_awaiting_input(stack, run_id)
    wait_parking_settled(stack, run_id)

    # The requester has the rights to set a task's state (DAG-run edit): Airflow 3.3.2 lets them set
    # an awaiting-input step to success.
    stack.api(
        "oncall",
        "PATCH",
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/put_in_place",
        json={"new_state": "success"},
    )

    assert wait_run_end(stack, run_id) == "failed"
    assert task_state(stack, run_id, "put_in_place")["state"] == "success"
    confirm = task_state(stack, run_id, "confirm_in_place")
    assert confirm["state"] == "failed"
    assert task_state(stack, run_id, "drop_staging")["state"] == "success"
    log = task_log(stack, run_id, "confirm_in_place", confirm["try_number"])
    assert f"run {run_id}: the restore is not in place: the staging copy" in log
    assert_untouched(stack, run_id, existing_target)
    assert stack.ledger_run(run_id).approvals == [], "nobody answered"


def test_a_run_started_from_the_shell_is_refused_before_anything_runs(
    stack: Stack, existing_target: str
) -> None:
    conf = {
        "database": DATABASE,
        "backup_id": "latest",
        "target_database": existing_target,
        "confirm_overwrite": True,
    }
    run_id = f"manual__shell_{uuid.uuid4().hex[:6]}"
    triggered = subprocess.run(
        ["airflow", "dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", json.dumps(conf)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert triggered.returncode == 0, (triggered.stdout + triggered.stderr)[-2000:]
    shell_user = stack.api("oncall", "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["triggering_user_name"]
    assert shell_user, "airflow dags trigger records the shell's user name"

    assert wait_run_end(stack, run_id) == "failed"
    step = task_state(stack, run_id, "check_request")
    assert step["state"] == "failed"
    assert task_state(stack, run_id, "restore")["state"] == "upstream_failed"
    log = task_log(stack, run_id, "check_request", step["try_number"])
    assert (
        f"confirm_overwrite: run {run_id}: the run's requester {shell_user!r} is not an Airflow user" in log
    )
    assert tables_of(existing_target) == ["old_only"]
    assert databases_like(staging_of(stack, existing_target, run_id)) == [], "nothing was staged"
