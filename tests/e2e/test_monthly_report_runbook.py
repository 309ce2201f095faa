"""monthly_report__sandbox run end to end by Airflow: samples and ledger -> report -> S3 -> ledger -> mail."""

from __future__ import annotations

import email
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from cloudops.evidence.ledger import Ledger

pytestmark = pytest.mark.e2e

DagsTest = Callable[..., CompletedProcess[str]]


def test_a_month_asked_from_the_form_is_reported_stored_recorded_and_mailed(
    dags_test: DagsTest, tmp_path: Path, sandbox_env: dict[str, str]
) -> None:
    from cloudops.sandbox.billing import seeded_month

    mail_dir = Path(sandbox_env["CLOUDOPS_SANDBOX_DIR"]) / "mail"
    before = set(mail_dir.glob("*.eml"))
    # The month the sandbox seeded: moto hands its queued Cost Explorer answers to whichever new request
    # body comes first, so another month's requests would take them from the tests that follow.
    month = seeded_month(datetime.now(UTC))

    run = dags_test(
        "monthly_report__sandbox",
        "-c",
        json.dumps({"month": month}),
        CLOUDOPS_EVIDENCE_DIR=str(tmp_path / "evidence"),
        CLOUDOPS_SAMPLES_DIR=str(tmp_path / "samples"),
    )

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    facts = [r for r in Ledger(tmp_path / "evidence" / "ledger").records() if r.kind == "report.stored"]
    assert [(f.fields["dag_id"], f.fields["data"]["month"]) for f in facts] == [
        ("monthly_report__sandbox", month)
    ]
    files = {item["kind"]: item for item in facts[0].fields["data"]["files"]}
    assert set(files) == {"html", "pdf"}
    assert all(item["lock_mode"] == "GOVERNANCE" and item["version_id"] for item in files.values())
    # The run's own steps were recorded by the listener too: an auditor sees who ran what.
    steps = [r for r in Ledger(tmp_path / "evidence" / "ledger").records() if r.kind == "step.try"]
    assert {s.fields["task_id"] for s in steps} >= {"build", "send"}
    (mail,) = set(mail_dir.glob("*.eml")) - before
    message = email.message_from_bytes(mail.read_bytes())
    assert f"Monthly service report sandbox {month}" in str(message["Subject"])
    assert [part.get_filename() for part in message.walk() if part.get_filename()] == [files["pdf"]["name"]]
