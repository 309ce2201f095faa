"""Alerts reach the sandbox's real SMTP sink and SNS topic (delivered on to an SQS queue), and one
unreachable target never stops the others."""

from __future__ import annotations

import email
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cloudops.catalog import load_catalog_file
from cloudops.catalog.models import SmtpNotification, SnsNotification
from cloudops.notifications import failure_alert, send_alert

pytestmark = pytest.mark.integration


@pytest.fixture
def alert() -> Any:
    return failure_alert(
        estate="sandbox",
        target="database orders_pg",
        runbook="backup__orders_pg",
        step="take_backup",
        error="pg_dump exited 1: connection refused",
        run_id=f"test__{time.time_ns()}",
        next_action="check the primary is up, then clear the task to retry",
    )


def sqs_queue_on_topic(topic_arn: str) -> tuple[Any, str]:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    sqs = AwsBaseHook(aws_conn_id="sandbox_aws", client_type="sqs").conn
    sns = AwsBaseHook(aws_conn_id="sandbox_aws", client_type="sns").conn
    url = sqs.create_queue(QueueName=f"alerts-{time.time_ns()}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn)
    return sqs, url


def test_alert_reaches_email_and_sns(sandbox_env: dict[str, str], project_root: Path, alert: Any) -> None:
    catalog = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    sns_target = next(t for t in catalog.notifications if isinstance(t, SnsNotification))
    sqs, queue = sqs_queue_on_topic(sns_target.topic_arn)
    mail_dir = Path(os.environ["CLOUDOPS_SANDBOX_DIR"]) / "mail"
    before = set(mail_dir.glob("*.eml"))

    deliveries = send_alert(catalog.notifications, alert)

    assert [(d.target, d.delivered) for d in deliveries] == [("oncall_email", True), ("oncall_sns", True)]
    (new_mail,) = set(mail_dir.glob("*.eml")) - before
    message = email.message_from_bytes(new_mail.read_bytes())
    assert message["Subject"] == alert.subject
    assert message["To"] == "oncall@sandbox.example"
    bodies = [part.get_payload(decode=True).decode() for part in message.walk() if not part.is_multipart()]
    assert any("Next action: check the primary is up" in body for body in bodies)
    received = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", [])
    (notification,) = [json.loads(m["Body"]) for m in received]
    assert notification["Subject"].startswith("[cloudops][sandbox] backup__orders_pg failed at take_backup")
    assert "Next action: check the primary is up" in notification["Message"]


def test_unreachable_target_does_not_stop_the_others(
    sandbox_env: dict[str, str], project_root: Path, alert: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_DEAD_SMTP",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": 1,
                "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 2, "retry_limit": 1},
            }
        ),
    )
    catalog = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    dead = SmtpNotification(name="dead_mail", kind="smtp", smtp_conn_id="dead_smtp", to=["x@example.org"])
    sns_target = next(t for t in catalog.notifications if isinstance(t, SnsNotification))

    deliveries = send_alert([dead, sns_target], alert)

    assert [(d.target, d.delivered) for d in deliveries] == [("dead_mail", False), ("oncall_sns", True)]
    assert "Connection refused" in deliveries[0].detail or "Errno" in deliveries[0].detail


def test_a_secret_in_the_error_reaches_neither_email_nor_sns(
    sandbox_env: dict[str, str], project_root: Path
) -> None:
    catalog = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    sns_target = next(t for t in catalog.notifications if isinstance(t, SnsNotification))
    sqs, queue = sqs_queue_on_topic(sns_target.topic_arn)
    mail_dir = Path(os.environ["CLOUDOPS_SANDBOX_DIR"]) / "mail"
    before = set(mail_dir.glob("*.eml"))
    secret = f"AKIA{uuid.uuid4().hex[:16].upper()}"  # what an AWS access key id looks like
    leaky = failure_alert(
        estate="sandbox",
        target="fleet web",
        runbook="ebs_snapshot__web",
        step="snapshot_volumes",
        error=f"InvalidClientTokenId: the security token {secret} is not valid",
        run_id=f"test__{time.time_ns()}",
        next_action="check the AWS connection",
    )

    deliveries = send_alert(catalog.notifications, leaky)

    assert all(d.delivered for d in deliveries), deliveries
    (new_mail,) = set(mail_dir.glob("*.eml")) - before
    assert secret not in new_mail.read_text(errors="replace")
    (notification,) = [
        json.loads(m["Body"])
        for m in sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", [])
    ]
    assert secret not in notification["Message"]
    # Only the secret is masked: the rest of the error still tells on-call what happened.
    assert "Error: InvalidClientTokenId: the security token *** is not valid" in notification["Message"]
