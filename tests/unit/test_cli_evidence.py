"""`cloudops` commands that do a runbook's work record themselves in the ledger like a DAG run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudops.evidence.ledger import Ledger, verify_ledger
from cloudops.evidence.recorder import cli_run, os_user, record_fact
from cloudops.evidence.runs import fold_runs

pytestmark = pytest.mark.unit


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path))
    return Ledger(tmp_path / "ledger")


def test_a_cli_run_is_a_manual_run_of_its_runbook_with_its_facts(ledger: Ledger) -> None:
    with cli_run("backup__orders", conf={"retention": True}) as context:
        record_fact("retention.deleted", context, {"backup_id": "20261123T021500Z-1a2b3c"})

    (run,) = fold_runs(ledger.records())
    assert (run.dag_id, run.runbook, run.target) == ("backup__orders", "backup", "orders")
    assert run.run_id.startswith("cli__")
    assert run.state == "success"
    assert (run.triggered_by, run.triggered_by_user) == ("cli", os_user())
    assert run.manual
    assert run.conf == {"retention": True}
    (fact,) = run.facts_of("retention.deleted")
    assert (fact.fields["triggered_by"], fact.fields["triggered_by_user"]) == ("cli", os_user())
    assert verify_ledger(ledger).ok


def test_a_cli_run_that_raises_or_exits_non_zero_is_recorded_as_failed(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError, match="disk full"), cli_run("restore_request"):
        raise RuntimeError("disk full\nmore detail")
    with cli_run("restore_request") as context:
        context["exit_code"] = 2

    first, second = fold_runs(ledger.records())
    assert first.state == second.state == "failed"
    finished = [r for r in ledger.records() if r.kind == "run.finished"]
    assert finished[0].fields["data"]["message"] == "RuntimeError: disk full"
    assert finished[1].fields["data"]["message"] is None
    assert first.target is None  # restore_request is a one-off DAG: no target in its id


def test_os_user_is_the_effective_user_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import pwd

    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.setenv("LOGNAME", "someone-else")

    assert os_user() == pwd.getpwuid(os.geteuid()).pw_name
