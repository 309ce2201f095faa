"""Failure alerts: what leaves the deployment is masked, and DAGs of every estate alert every estate once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cloudops.notifications import every_estates_targets, failure_alert

pytestmark = pytest.mark.unit


def alert_with(error: str) -> str:
    alert = failure_alert(
        estate="acme",
        target="host web-1",
        runbook="health_check__acme",
        step="report",
        error=error,
        run_id="manual__1",
        next_action="read the log",
    )
    return alert.subject + "\n" + alert.body


@pytest.mark.parametrize(
    ("error", "secret"),
    [
        ("boto refused key AKIAIOSFODNN7EXAMPLE for bucket x", "AKIAIOSFODNN7EXAMPLE"),
        ("postgresql://orders:hunter2-s3cret@db.internal:5432/orders refused", "hunter2-s3cret"),
        ("got -----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1rZXk in the reply", "b3BlbnNzaC1rZXk"),
    ],
)
def test_a_secret_in_the_error_never_reaches_the_message(error: str, secret: str) -> None:
    text = alert_with(error)
    assert secret not in text
    (line,) = [line for line in text.splitlines() if line.startswith("Error: ")]
    assert "***" in line, "only the secret is masked: the rest of the error still says what happened"


def test_an_ordinary_error_is_sent_as_it_is() -> None:
    assert "Error: disk use over 90%: / 97%\n" in alert_with("disk use over 90%: / 97%")


def test_every_estate_is_alerted_once_per_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mail = {"name": "oncall_email", "kind": "smtp", "smtp_conn_id": "smtp", "to": ["oncall@example.org"]}
    pager = {
        "name": "pager",
        "kind": "sns",
        "aws_conn_id": "aws",
        "topic_arn": "arn:aws:sns:eu-west-1:123456789012:pager",
    }
    for estate, notifications in (("acme", [mail, pager]), ("globex", [mail]), ("initech", [])):
        (tmp_path / f"{estate}.yaml").write_text(
            yaml.safe_dump({"estate": estate, "owner": "ops", "notifications": notifications})
        )
    monkeypatch.setenv("CLOUDOPS_CATALOG", str(tmp_path))

    targets = every_estates_targets()

    assert sorted(target.name for target in targets) == ["oncall_email", "pager"]
