"""The listener's hooks write one record per run end and per task try, masked, and never raise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from cloudops.evidence import listener
from cloudops.evidence.ledger import Ledger, verify_ledger
from cloudops.evidence.recorder import recorded_errors
from cloudops.evidence.runs import fold_runs

pytestmark = pytest.mark.unit

START = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


@pytest.fixture
def evidence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path))
    return tmp_path


def _ti(try_number: int) -> SimpleNamespace:
    return SimpleNamespace(
        dag_id="backup__orders_pg",
        run_id="manual__1",
        task_id="take_backup",
        map_index=-1,
        try_number=try_number,
        start_date=START,
        end_date=START + timedelta(seconds=5),
        hostname="worker-1",
    )


def _dag_run() -> SimpleNamespace:
    return SimpleNamespace(
        dag_id="backup__orders_pg",
        run_id="manual__1",
        run_type="manual",
        triggered_by="ui",
        triggering_user_name="alice",
        conf={"note": "x", "api_token": "s3cr3t", "url": "postgres://u:pw@h/db"},
        logical_date=None,
        start_date=START,
        end_date=START + timedelta(minutes=1),
    )


def test_each_try_is_recorded_once_and_the_run_is_complete(evidence: Path) -> None:
    listener.on_dag_run_running(_dag_run(), "")
    listener.on_task_instance_failed(None, _ti(1), RuntimeError("dump failed\nsecond line"))
    listener.on_task_instance_failed(None, _ti(1), RuntimeError("dump failed"))  # fired again: same try
    listener.on_task_instance_success(None, _ti(2))
    listener.on_dag_run_success(_dag_run(), "success")
    ledger = Ledger(evidence / "ledger")
    assert verify_ledger(ledger).ok
    (run,) = fold_runs(ledger.records())
    assert [(s.fields["try_number"], s.fields["data"]["state"]) for s in run.steps] == [
        (1, "failed"),
        (2, "success"),
    ]
    assert run.steps[0].fields["data"]["error"] == "RuntimeError: dump failed"
    assert (run.state, run.triggered_by, run.triggered_by_user) == ("success", "ui", "alice")
    assert run.conf == {"note": "x", "api_token": "***", "url": "postgres://***@h/db"}
    text = b"".join(p.read_bytes() for p in ledger.segment_files())
    assert b"s3cr3t" not in text
    assert b"pw@" not in text


def test_a_hook_error_is_counted_not_raised(evidence: Path) -> None:
    # A runbook's try without run or task id: the hook itself fails on it.
    listener.on_task_instance_success(None, SimpleNamespace(dag_id="backup__orders_pg"))
    (evidence / "ledger").mkdir()
    (evidence / "ledger" / "segments").write_text("a file where the segments folder belongs")
    listener.on_task_instance_success(None, _ti(1))
    errors = recorded_errors()
    assert [(e["kind"], e["dag_id"]) for e in errors] == [("step.try", "backup__orders_pg")] * 2
    assert errors[0]["error"].startswith("AttributeError:")
    assert "run_id" in errors[0]["error"]
    assert errors[1]["run_id"] == "manual__1"
    assert errors[1]["error"].startswith(("FileExistsError", "NotADirectoryError"))


@pytest.mark.parametrize(
    ("dag_id", "tags"),
    [
        ("customer_etl", None),  # not a runbook kind
        ("backupjob__orders", None),  # looks alike, is not one
        ("backup__orders_pg", ["etl", "team:data"]),  # a runbook's name on a DAG cloudops did not build
    ],
)
def test_runs_of_other_dags_are_not_recorded(evidence: Path, dag_id: str, tags: list[str] | None) -> None:
    dag = SimpleNamespace(tags=tags) if tags is not None else None
    run = SimpleNamespace(**{**vars(_dag_run()), "dag_id": dag_id, "dag": dag})
    ti = SimpleNamespace(**{**vars(_ti(1)), "dag_id": dag_id, "task": SimpleNamespace(dag=dag)})
    listener.on_dag_run_running(run, "")
    listener.on_task_instance_failed(None, ti, RuntimeError("password=hunter22 in their own DAG"))
    listener.on_dag_run_failed(run, "failed")

    assert not (evidence / "ledger").exists() or not list(Ledger(evidence / "ledger").records())
    assert recorded_errors() == []


def test_a_runbook_dag_with_its_tag_is_recorded(evidence: Path) -> None:
    dag = SimpleNamespace(tags=["cloudops", "backup", "estate:sandbox"])
    listener.on_dag_run_running(SimpleNamespace(**{**vars(_dag_run()), "dag": dag}), "")
    (run,) = fold_runs(Ledger(evidence / "ledger").records())
    assert run.dag_id == "backup__orders_pg"


def test_every_runbook_module_kind_is_recorded() -> None:
    from cloudops.evidence.runs import RUNBOOK_KINDS
    from cloudops.runbooks import (
        backup,
        ebs_snapshot,
        evidence_ship,
        health_check,
        restore_drill,
        restore_request,
    )

    modules = (backup, ebs_snapshot, evidence_ship, health_check, restore_drill, restore_request)
    kinds = {getattr(m, "KIND", None) or m.DAG_ID for m in modules}
    assert kinds <= RUNBOOK_KINDS, f"add {sorted(kinds - RUNBOOK_KINDS)} to runs.RUNBOOK_KINDS"


def test_conf_and_errors_are_masked_by_shape_and_by_airflow(evidence: Path) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret("told-airflow-9f3e")  # as a task's Connection.get registers a connection's password
    conf = {
        "db_pass": "p1-secret-value",
        "signing_key": "k1-secret-value",
        "x-auth-token": "t1-secret-value",
        "note": "from https://svc/x?dsn=postgres://app:s/ec@ret@db:5432/app and told-airflow-9f3e",
        "jdbc": "jdbc:sqlserver://db;user=app;Password=j1-secret-value;encrypt=true",
        "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
    }
    listener.on_dag_run_running(SimpleNamespace(**{**vars(_dag_run()), "conf": conf}), "")
    listener.on_task_instance_failed(
        None, _ti(1), RuntimeError("connect failed: Bearer ghp_abcdefghijklmnopqrstuvwxyz0123 refused")
    )
    ledger = Ledger(evidence / "ledger")
    text = b"".join(p.read_bytes() for p in ledger.segment_files()).decode()
    for secret in ("secret-value", "s/ec@ret", "told-airflow-9f3e", "c2lnbmF0dXJl", "ghp_abc"):
        assert secret not in text
    (run,) = fold_runs(ledger.records())
    assert run.conf["db_pass"] == "***"
    assert run.conf["jdbc"] == "jdbc:sqlserver://db;user=app;Password=***;encrypt=true"
    assert "postgres://***@db:5432/app" in run.conf["note"]
    assert run.steps[0].fields["data"]["error"] == "RuntimeError: connect failed: Bearer *** refused"
