"""The monthly report on the sandbox: the seeded bill, S3 under Object Lock, the ledger, the SMTP sink."""

from __future__ import annotations

import email
import hashlib
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from cloudops.catalog import load_catalog_file
from cloudops.evidence.ledger import Ledger
from cloudops.evidence.runs import REPORT_STORED
from cloudops.probes.store import ProbeSample, SampleStore
from cloudops.runbooks import monthly_report
from cloudops.sandbox.billing import sandbox_bill

pytestmark = pytest.mark.integration


def test_a_month_is_stored_locked_recorded_and_mailed(
    sandbox_env: dict[str, str], project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path / "evidence"))
    monkeypatch.setenv(monthly_report.SAMPLES_ENV, str(tmp_path / "samples"))
    catalog = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    now = datetime.now(UTC)
    month = monthly_report.report_month(None, catalog, now)
    from cloudops.reports.period import month_period

    period = month_period(month, catalog.timezone, now=now)
    # One failed sample of orders_pg, the rest of the month unsampled (policy excluded): 0 % measured
    # on one valid minute, which the report and the ledger must both say.
    SampleStore(tmp_path / "samples").append(
        [ProbeSample("database:orders_pg", period.start + timedelta(minutes=90, seconds=5), False)]
    )
    mail_dir = Path(os.environ["CLOUDOPS_SANDBOX_DIR"]) / "mail"
    before = set(mail_dir.glob("*.eml"))
    context = {"dag_id": "monthly_report__sandbox", "run_id": "itest", "task_id": "build"}

    result = monthly_report.produce(catalog, month, context, now=now, out_dir=tmp_path / "out")

    assert result["summary"]["slos"]["orders_availability"]["availability_percent"] == 0.0
    seeded = sum((line.billed for line in sandbox_bill(month)), Decimal(0))
    assert Decimal(result["summary"]["cost_total"]) == seeded
    (fact,) = [r for r in Ledger(tmp_path / "evidence" / "ledger").records() if r.kind == REPORT_STORED]
    assert fact.fields["data"]["files"] == [dict(item) for item in result["files"]]
    s3 = monthly_report._s3(catalog, catalog.repository("sandbox_backups"))
    for item in result["files"]:
        local = (tmp_path / "out" / item["name"]).read_bytes()
        assert hashlib.sha256(local).hexdigest() == item["sha256"]
        head = s3.head_object(Bucket=item["bucket"], Key=item["key"], VersionId=item["version_id"])
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert head["ObjectLockRetainUntilDate"] >= now + timedelta(days=7) - timedelta(seconds=1)
        # Locked: the version cannot be deleted without a governance bypass.
        with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
            s3.delete_object(Bucket=item["bucket"], Key=item["key"], VersionId=item["version_id"])
    pdf_item = next(item for item in result["files"] if item["kind"] == "pdf")
    pdf = monthly_report.fetch_stored(catalog, pdf_item)
    altered = dict(pdf_item, sha256="0" * 64)
    with pytest.raises(monthly_report.ReportStoreError, match="changed since it was stored"):
        monthly_report.fetch_stored(catalog, altered)  # type: ignore[arg-type]

    assert monthly_report.email_report(catalog, result, pdf) == ["customer-reports@sandbox.example"]
    (new_mail,) = set(mail_dir.glob("*.eml")) - before
    message = email.message_from_bytes(new_mail.read_bytes())
    assert f"Monthly service report sandbox {month}" in str(message["Subject"])
    (attached,) = [part for part in message.walk() if part.get_filename() == pdf_item["name"]]
    assert hashlib.sha256(attached.get_payload(decode=True)).hexdigest() == pdf_item["sha256"]


def test_the_auditor_view_lists_the_report_and_serves_only_what_the_ledger_recorded(
    sandbox_env: dict[str, str], project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored through the runbook's own code, listed in the view, downloaded from S3 and checked; a
    version an attacker put under the same key (Object Lock does not stop new versions) is refused."""
    from airflow.api_fastapi.app import _AuthManagerState
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    from cloudops.evidence.recorder import record_fact
    from cloudops.evidence.view import create_app

    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path / "evidence"))
    monkeypatch.setenv(monthly_report.SAMPLES_ENV, str(tmp_path / "samples"))
    monkeypatch.setenv("CLOUDOPS_CATALOG", str(project_root / "runbooks" / "sandbox.yaml"))
    monkeypatch.setattr(_AuthManagerState, "instance", SimpleAuthManager())
    catalog = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    now = datetime.now(UTC)
    month = monthly_report.report_month(None, catalog, now)
    context = {"dag_id": "monthly_report__sandbox", "run_id": "view-itest", "task_id": "build"}
    result = monthly_report.produce(catalog, month, context, now=now)
    pdf_item = next(item for item in result["files"] if item["kind"] == "pdf")

    app = create_app(tmp_path / "evidence" / "ledger")
    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="auditor", role="viewer")
    with TestClient(app) as auditor:
        page = auditor.get("/reports", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert f"<td>sandbox</td><td>{month}</td>" in page.text
        assert pdf_item["sha256"] in page.text
        (link,) = [href for href in _links(page.text) if "kind=pdf" in href]
        download = auditor.get("/" + link)
        assert download.status_code == 200, download.text
        assert download.headers["content-type"] == "application/pdf"
        assert f'filename="{pdf_item["name"]}"' in download.headers["content-disposition"]
        assert hashlib.sha256(download.content).hexdigest() == pdf_item["sha256"]

        # A record that names the key without a version gets whatever S3 holds now: an attacker's new
        # version under the lock's key is read back, fails the SHA-256 and is refused.
        s3 = monthly_report._s3(catalog, catalog.repository("sandbox_backups"))
        s3.put_object(Bucket=pdf_item["bucket"], Key=pdf_item["key"], Body=b"%PDF-1.7 forged")
        unversioned = dict(pdf_item, version_id=None)
        forged = {"dag_id": "monthly_report__sandbox", "run_id": "view-forged", "task_id": "build"}
        record_fact(REPORT_STORED, forged, {"estate": "sandbox", "month": month, "files": [unversioned]})
        page = auditor.get("/reports", headers={"Accept": "text/html"})
        (link,) = [href for href in _links(page.text) if "view-forged" in href and "kind=pdf" in href]
        refused = auditor.get("/" + link)
        assert refused.status_code == 409
        assert "changed since it was stored" in refused.json()["detail"]


def _links(page: str) -> list[str]:
    import html
    import re

    return [html.unescape(href) for href in re.findall(r'class=download href="([^"]+)"', page)]
