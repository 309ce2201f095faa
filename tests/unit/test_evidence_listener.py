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
    assert run.conf == {"note": "x", "api_token": "***", "url": "***"}
    text = b"".join(p.read_bytes() for p in ledger.segment_files())
    assert b"s3cr3t" not in text
    assert b"pw@" not in text


def test_a_hook_error_is_counted_not_raised(evidence: Path) -> None:
    listener.on_task_instance_success(None, SimpleNamespace())  # no dag_id: the hook itself fails
    (evidence / "ledger").mkdir()
    (evidence / "ledger" / "segments").write_text("a file where the segments folder belongs")
    listener.on_task_instance_success(None, _ti(1))
    assert [e["kind"] for e in recorded_errors()] == ["step.try", "step.try"]
