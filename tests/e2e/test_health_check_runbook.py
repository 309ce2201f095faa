"""health_check__<estate> run end to end by Airflow: catalog -> DAG -> tasks -> real services -> verdict."""

from __future__ import annotations

import email
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import yaml

from tests.integration.test_notifications import sqs_queue_on_topic

pytestmark = pytest.mark.e2e

DagsTest = Callable[..., CompletedProcess[str]]


def test_sandbox_health_check_succeeds(dags_test: DagsTest) -> None:
    run = dags_test("health_check__sandbox")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    # 4 databases, 3 clusters (each with one primary, the catalog's), 6 hosts.
    assert "estate sandbox: all 13 targets healthy" in output
    # No api-server to ask under `airflow dags test`: the runbooks' state is a warning, not a failure.
    assert (
        "runbooks of estate sandbox: runbook state unknown: Airflow connection 'cloudops_airflow_api'"
        in output
    )
    for target in ("database orders_pg_replica", "cluster ledger_patroni", "host web-1", "host app-3"):
        assert target in output


def test_health_check_fails_naming_what_is_down(
    dags_test: DagsTest, tmp_path: Path, project_root: Path, sandbox_env: dict[str, str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    catalogs = tmp_path / "runbooks"
    catalogs.mkdir()
    # The sandbox's real SMTP sink and SNS topic (read back through an SQS queue subscribed to it).
    notifications = yaml.safe_load((project_root / "runbooks" / "sandbox.yaml").read_text())["notifications"]
    sqs, queue = sqs_queue_on_topic(next(n for n in notifications if n["kind"] == "sns")["topic_arn"])
    mail_dir = Path(os.environ["CLOUDOPS_SANDBOX_DIR"]) / "mail"
    mails_before = set(mail_dir.glob("*.eml"))
    (catalogs / "broken.yaml").write_text(
        yaml.safe_dump(
            {
                "estate": "broken",
                "owner": "tests",
                "notifications": notifications,
                "databases": [
                    {
                        "name": "orders_copy",
                        "engine": "postgres",
                        "conn_id": "sandbox_pg_primary",
                        "database": "orders",
                    },
                    {"name": "lost_db", "engine": "postgres", "conn_id": "lost_db", "database": "x"},
                ],
                "fleets": [
                    {
                        "name": "edge",
                        "os_family": "debian",
                        "hosts": [
                            {"name": "web-1", "ssh_conn_id": "sandbox_ssh_web_1"},
                            {"name": "ghost-1", "ssh_conn_id": "ghost"},
                        ],
                    }
                ],
            }
        )
    )
    web_1 = json.loads(sandbox_env["AIRFLOW_CONN_SANDBOX_SSH_WEB_1"])
    run = dags_test(
        "health_check__broken",
        CLOUDOPS_CATALOG=str(catalogs),
        AIRFLOW_CONN_LOST_DB=json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": closed_port, "login": "x", "password": "y"}
        ),
        AIRFLOW_CONN_GHOST=json.dumps({**web_1, "port": closed_port}),
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert "estate broken: 2 of 4 targets unhealthy" in output
    assert "database lost_db is down: unreachable" in output
    assert "host ghost-1 is down: unreachable over SSH" in output
    assert sandbox_env["AIRFLOW_CONN_SANDBOX_PG_PRIMARY"] not in output
    password = json.loads(sandbox_env["AIRFLOW_CONN_SANDBOX_PG_PRIMARY"])["password"]
    assert password not in output

    # The failed report alerted the estate's targets: one e-mail and one SNS message, naming the step.
    (mail,) = set(mail_dir.glob("*.eml")) - mails_before
    message = email.message_from_bytes(mail.read_bytes())
    assert message["Subject"] == "[cloudops][broken] health_check__broken failed at report (estate broken)"
    (body,) = [p.get_payload(decode=True).decode() for p in message.walk() if not p.is_multipart()]
    assert "Error: estate broken: 2 of 4 targets unhealthy" in body
    received = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=2, MaxNumberOfMessages=10)
    (notification,) = [json.loads(m["Body"]) for m in received.get("Messages", [])]
    assert notification["Subject"] == message["Subject"]
    assert "Next action: read the summary" in notification["Message"]
    assert password not in body + notification["Message"]
