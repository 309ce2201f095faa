"""backup__<database> run by Airflow: a complete backup in S3, and a failure that alerts on-call."""

from __future__ import annotations

import email
import html
import json
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import yaml

pytestmark = pytest.mark.e2e

DagsTest = Callable[..., CompletedProcess[str]]


def test_sandbox_backup_runs_to_a_complete_backup(
    dags_test: DagsTest, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    from cloudops.catalog import load_catalog_file
    from cloudops.evidence.ledger import Ledger
    from cloudops.runbooks.backup import open_repository

    catalog = load_catalog_file(Path(airflow_env["CLOUDOPS_CATALOG"]) / "sandbox.yaml")
    store = open_repository(catalog, catalog.database("inventory_mariadb"))
    before = {b.backup_id for b in store.list_backups("inventory_mariadb")}

    run = dags_test("backup__inventory_mariadb", CLOUDOPS_EVIDENCE_DIR=str(tmp_path / "evidence"))

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    (new,) = [b for b in store.list_backups("inventory_mariadb") if b.backup_id not in before]
    assert new.complete
    assert new.locked_until is not None, "the sandbox repository locks every backup"
    assert "retention plan for inventory_mariadb" in output
    # The new backup was read back before retention ran, and that is in the ledger.
    records = list(Ledger(tmp_path / "evidence" / "ledger").records())
    (verified,) = [r for r in records if r.kind == "backup.verified"]
    assert (verified.fields["data"]["backup_id"], verified.fields["data"]["ok"]) == (new.backup_id, True)
    steps = [r.fields["task_id"] for r in records if r.kind == "step.try"]
    assert steps.index("verify_backup") < steps.index("apply_retention")
    assert json.loads(airflow_env["AIRFLOW_CONN_SANDBOX_MARIADB"])["password"] not in output


def _one_database_catalog(folder: Path, estate: str, database: dict[str, object], **extra: object) -> Path:
    """A catalog folder of its own: ``estate`` with one database backed up to the sandbox's bucket."""
    folder.mkdir()
    document = {
        "estate": estate,
        "owner": "tests",
        "clouds": [{"name": "aws", "provider": "aws", "aws_conn_id": "sandbox_aws", "region": "eu-west-1"}],
        "repositories": [
            {"name": "r", "cloud": "aws", "bucket": "cloudops-sandbox-backups", "region": "eu-west-1"}
        ],
        "databases": [
            {
                "name": f"{estate}_db",
                "engine": "postgres",
                **database,
                "backup": {"repository": "r", "retention": {"keep_last": 3}, "retries": 0},
            }
        ],
        **extra,
    }
    (folder / f"{estate}.yaml").write_text(yaml.safe_dump(document))
    return folder


def test_failed_backup_alerts_on_call_naming_the_step(
    dags_test: DagsTest, tmp_path: Path, airflow_env: dict[str, str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    estate = f"alerting_{uuid.uuid4().hex[:6]}"
    catalogs = _one_database_catalog(
        tmp_path / "runbooks",
        estate,
        {"conn_id": "lost_pg", "database": "x"},
        notifications=[
            {"name": "mail", "kind": "smtp", "smtp_conn_id": "sandbox_smtp", "to": ["oncall@sandbox.example"]}
        ],
    )
    mail_dir = Path(airflow_env["CLOUDOPS_SANDBOX_DIR"]) / "mail"
    before = set(mail_dir.glob("*.eml"))

    run = dags_test(
        f"backup__{estate}_db",
        CLOUDOPS_CATALOG=str(catalogs),
        AIRFLOW_CONN_LOST_PG=json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": closed_port, "login": "x", "password": "y"}
        ),
    )

    assert run.returncode != 0
    messages = [email.message_from_bytes(path.read_bytes()) for path in set(mail_dir.glob("*.eml")) - before]
    subjects = [m["Subject"] for m in messages]
    assert (
        f"[cloudops][{estate}] backup__{estate}_db failed at take_backup (database {estate}_db)" in subjects
    )
    body = html.unescape(
        "".join(
            part.get_payload(decode=True).decode()
            for m in messages
            for part in m.walk()
            if not part.is_multipart()
        )
    )
    assert f"database '{estate}_db' is unavailable at 127.0.0.1:{closed_port}" in body
    assert "Next action: check the database is up" in body


def test_what_a_backup_creates_in_the_cloud_carries_its_cost_tags(
    dags_test: DagsTest, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    """The RDS snapshot a backup takes is tagged runbook, run_id and requested_by, so the monthly
    report's cost by tag shows what each runbook and each requester cost. A small database of the
    sandbox's PostgreSQL stands for an RDS instance (moto's orders-pg), as orders_pg does."""
    import boto3

    from cloudops.evidence.ledger import Ledger

    estate = f"tags_{uuid.uuid4().hex[:6]}"
    catalogs = _one_database_catalog(
        tmp_path / "runbooks",
        estate,
        {"conn_id": "sandbox_pg_primary", "database": "postgres", "rds_instance_id": "orders-pg"},
    )

    run = dags_test(
        f"backup__{estate}_db",
        CLOUDOPS_CATALOG=str(catalogs),
        CLOUDOPS_EVIDENCE_DIR=str(tmp_path / "evidence"),
    )

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    records = list(Ledger(tmp_path / "evidence" / "ledger").records())
    (taken,) = [r for r in records if r.kind == "backup.taken"]
    run_id = taken.fields["run_id"]
    aws = json.loads(airflow_env["AIRFLOW_CONN_SANDBOX_AWS"])
    rds = boto3.client(
        "rds",
        region_name="eu-west-1",
        endpoint_url=aws["extra"]["endpoint_url"],
        aws_access_key_id=aws["login"],
        aws_secret_access_key=aws["password"],
    )
    snapshots = rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
    tagged = [
        {t["Key"]: t["Value"] for t in s.get("TagList", [])}
        for s in snapshots
        if {"Key": "cloudops:backup-id", "Value": taken.fields["data"]["backup_id"]} in s.get("TagList", [])
    ]
    assert len(tagged) == 1, snapshots
    # Who asked: `airflow dags test` sets its run's triggering user to "dag_test" (a schedule: "schedule").
    assert (tagged[0]["runbook"], tagged[0]["run_id"], tagged[0]["requested_by"]) == (
        "backup",
        run_id,
        "dag_test",
    )
    assert tagged[0]["cloudops:estate"] == estate
