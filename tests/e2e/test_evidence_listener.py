"""The evidence listener inside a real Airflow run: every step try and the run's end reach the ledger,
and a broken ledger never fails the runbook."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from cloudops.evidence.ledger import Ledger, verify_ledger
from cloudops.evidence.runs import fold_runs

pytestmark = pytest.mark.e2e

DagsTest = Callable[..., CompletedProcess[str]]


def test_a_run_and_each_step_try_are_in_the_ledger(dags_test: DagsTest, tmp_path: Path) -> None:
    run = dags_test("health_check__sandbox", CLOUDOPS_EVIDENCE_DIR=str(tmp_path))
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    ledger = Ledger(tmp_path / "ledger")
    verdict = verify_ledger(ledger)
    assert verdict.ok, verdict.problem
    (recorded,) = fold_runs(ledger.records())
    assert (recorded.dag_id, recorded.runbook, recorded.target) == (
        "health_check__sandbox",
        "health_check",
        "sandbox",
    )
    assert recorded.state == "success"
    assert recorded.triggered_by == "test"
    steps = {(s.fields["task_id"], s.fields["try_number"], s.fields["data"]["state"]) for s in recorded.steps}
    assert steps == {
        ("check_databases", 1, "success"),
        ("check_clusters", 1, "success"),
        ("check_hosts", 1, "success"),
        ("check_runbooks", 1, "success"),
        ("report", 1, "success"),
    }
    assert len(recorded.steps) == 5  # each try once


def test_a_broken_ledger_is_logged_and_counted_but_never_fails_the_runbook(
    dags_test: DagsTest, tmp_path: Path
) -> None:
    (tmp_path / "ledger").write_text("not a directory")  # the ledger cannot be written at all
    run = dags_test("health_check__sandbox", CLOUDOPS_EVIDENCE_DIR=str(tmp_path))
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "EVIDENCE NOT RECORDED" in output
    errors = (tmp_path / "record-errors.jsonl").read_text().splitlines()
    assert len(errors) >= 6  # five step tries and the run's end, each counted
    assert all('"dag_id": "health_check__sandbox"' in line for line in errors)
