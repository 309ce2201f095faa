"""Every catalog target has its DAG, every DAG follows the runbook policy, and parsing stays light."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloudops.catalog import load_catalogs
from cloudops.runbooks.restore_request import MAX_ACTIVE_RUNS

pytestmark = pytest.mark.dags

# Modules that make parsing slow or need services: they belong inside tasks.
HEAVY_MODULES = [
    "boto3",
    "botocore",
    "paramiko",
    "great_expectations",
    "pandas",
    "psycopg",
    "pymysql",
    "moto",
]


def parse(dags_folder: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(dags_folder))


@pytest.fixture(scope="module")
def dagbag(project_root: Path) -> Any:
    return parse(project_root / "dags")


def test_no_import_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}


def expected_dag_ids(catalog: Any) -> set[str]:
    """Every runbook DAG the catalog's targets call for: one list, from the catalog alone."""
    dag_ids = {f"health_check__{catalog.estate}"}
    for database in catalog.databases:
        if database.backup:
            dag_ids.add(f"backup__{database.name}")
            if database.drill:
                dag_ids.add(f"restore_drill__{database.name}")
    dag_ids |= {f"ebs_snapshot__{fleet.name}" for fleet in catalog.fleets if fleet.snapshots}
    dag_ids |= {f"failover_drill__{cluster.name}" for cluster in catalog.clusters if cluster.drill}
    return dag_ids


def test_every_catalog_target_has_its_runbooks(dagbag: Any) -> None:
    catalogs = load_catalogs().catalogs
    assert catalogs, "no catalog file was loaded"
    for loaded in catalogs:
        expected = expected_dag_ids(loaded.catalog)
        missing = expected - set(dagbag.dag_ids)
        assert not missing, f"{loaded.path}: no DAG for {sorted(missing)}"
    # The sandbox estate has every kind: a builder that stopped yielding would show here.
    kinds = {dag_id.split("__")[0] for dag_id in dagbag.dag_ids}
    assert {"backup", "restore_drill", "ebs_snapshot", "health_check", "failover_drill"} <= kinds
    assert {"evidence_ship", "restore_request"} <= set(dagbag.dag_ids)


def test_every_dag_follows_the_runbook_policy(dagbag: Any) -> None:
    from cloudops.health import RUNBOOK_GRACE
    from cloudops.notifications import RunbookFailureNotifier

    owners = {loaded.catalog.owner for loaded in load_catalogs().catalogs}
    assert dagbag.dags, "no DAG was built"
    for dag_id, dag in dagbag.dags.items():
        kind = dag_id.split("__")[0]
        doc = dag.doc_md or ""
        for heading in ("What it does", "What a failure means", "What to do next"):
            assert heading in doc, f"{dag_id}: doc_md lacks {heading!r}"
        assert {"cloudops", kind} <= set(dag.tags), f"{dag_id}: tags {dag.tags}"
        # restore_request keeps two runs for one target apart itself (staging copies, M5 of issue 9)
        expected_runs = MAX_ACTIVE_RUNS if dag_id == "restore_request" else 1
        assert dag.max_active_runs == expected_runs, f"{dag_id}: two runs at once would conflict"
        assert dag.catchup is False, f"{dag_id}: runbooks never backfill"
        assert dag.default_args["retries"] >= 1, f"{dag_id}: no retries"
        assert dag.default_args["retry_exponential_backoff"] >= 2, f"{dag_id}: no backoff"
        # The sandbox catalog pauses nothing: every runbook starts active.
        assert dag.is_paused_upon_creation is False, f"{dag_id}: would be created paused"
        if kind in RUNBOOK_GRACE:
            # The health check calls a run late only after the time the run itself may take.
            assert dag.dagrun_timeout <= RUNBOOK_GRACE[kind], f"{dag_id}: dagrun_timeout beyond its grace"
        estate = next((tag.removeprefix("estate:") for tag in dag.tags if tag.startswith("estate:")), None)
        for task in dag.tasks:
            assert task.owner in owners, f"{dag_id}.{task.task_id}: owner {task.owner!r}"
            assert task.execution_timeout is not None, f"{dag_id}.{task.task_id}: no execution timeout"
            alerts = [
                callback
                for callback in task.on_failure_callback or []
                if isinstance(callback, RunbookFailureNotifier)
            ]
            assert len(alerts) == 1, f"{dag_id}.{task.task_id}: a failure would alert nobody"
            # An estate's runbook alerts that estate; one serving every estate alerts every estate.
            assert alerts[0].estate == estate, f"{dag_id}.{task.task_id}: alerts estate {alerts[0].estate}"
            assert alerts[0].next_actions.get("*"), f"{dag_id}.{task.task_id}: no fallback next action"


def test_failover_drill_task_owns_the_window_in_the_estate_pool(dagbag: Any) -> None:
    from cloudops.runbooks.approval import SecondPersonApproval

    dag = dagbag.dags["failover_drill__orders_pg_cluster"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "preflight",
        "drill",
        "evaluate",
        "record",
        "notify",
        "outcome",
    ]
    drill = dag.get_task("drill")
    # One task holds the probe and the actions; never retried blindly; one drill per estate at a time.
    assert isinstance(drill, SecondPersonApproval)
    assert drill.pool == "failover_drills__sandbox"
    assert drill.retries == 0
    assert dag.get_task("preflight").retries == 0
    assert set(dag.params.keys()) >= {"mode", "dry_run", "candidate"}
    assert dag.params["mode"] == "planned"


def test_a_patch_wave_is_retried_once_when_its_task_is_lost_and_never_on_an_error(dagbag: Any) -> None:
    from airflow.sdk import RetryAction
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags["patch_wave__app"]
    wave = dag.get_task("wave")
    # A lost task (SIGKILL, worker gone) raises nothing: the supervisor or the scheduler retries it, and
    # the retry recovers the batch it left. Any exception (a halt, a refusal, a reject) fails for good.
    assert wave.retries == 1
    for error in (RuntimeError("halted"), ValueError("bad input")):
        assert wave.retry_policy.evaluate(error, 1, 2).action == RetryAction.FAIL
    assert DagSerialization.to_dict(dag)["dag"]["tasks"], "the DAG with its retry policy serializes"


def test_a_runbook_paused_in_the_catalog_is_created_paused_and_retried_as_it_says(
    tmp_path: Path, project_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    import yaml

    catalogs = tmp_path / "runbooks"
    catalogs.mkdir()
    document = yaml.safe_load((project_root / "runbooks" / "sandbox.yaml").read_text())
    orders = next(d for d in document["databases"] if d["name"] == "orders_pg")
    orders["backup"]["paused"] = True
    orders["backup"]["retry_delay"] = "5s"
    web = next(f for f in document["fleets"] if f["name"] == "web")
    web["snapshots"]["paused"] = True
    (catalogs / "sandbox.yaml").write_text(yaml.safe_dump(document))
    monkeypatch.setenv("CLOUDOPS_CATALOG", str(catalogs))

    bag = parse(project_root / "dags")

    paused = {dag_id for dag_id, dag in bag.dags.items() if dag.is_paused_upon_creation}
    assert paused == {"backup__orders_pg", "ebs_snapshot__web"}
    # A lost take_backup (its worker killed) is retried: the retry aborts the upload it left open.
    assert bag.dags["backup__orders_pg"].get_task("take_backup").retry_delay == timedelta(seconds=5)
    assert bag.dags["backup__inventory_mariadb"].get_task("take_backup").retry_delay == timedelta(minutes=1)


def test_parsing_imports_no_heavy_module(project_root: Path) -> None:
    # A fresh interpreter: this test process may have imported anything already.
    script = (
        "import sys, json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(project_root / 'dags')!r})\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert json.loads(output.strip().splitlines()[-1]) == []


def test_bad_catalog_file_is_an_import_error_and_the_others_still_load(
    tmp_path: Path, project_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalogs = tmp_path / "runbooks"
    catalogs.mkdir()
    shutil.copy(project_root / "runbooks" / "sandbox.yaml", catalogs / "sandbox.yaml")
    (catalogs / "acme.yaml").write_text("estate: acme\nowner: ops\nfleets: [{name: web, os_family: beos}]\n")
    monkeypatch.setenv("CLOUDOPS_CATALOG", str(catalogs))

    bag = parse(project_root / "dags")

    assert "health_check__sandbox" in bag.dag_ids
    assert "health_check__acme" not in bag.dag_ids
    (error_file, message), *others = bag.import_errors.items()
    assert others == []
    assert error_file.endswith("catalog_errors.py")
    assert f"{catalogs / 'acme.yaml'}:3: fleets[0].os_family: Input should be" in message
    assert f"{catalogs / 'acme.yaml'}:3: fleets[0].hosts: required field is missing" in message
