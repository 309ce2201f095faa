"""# Monthly report: `monthly_report__<estate>`

**What it does.** On the 1st of each month (06:00 in the estate's time zone) for the month before, or
from the form for any complete month (`month`, `YYYY-MM`):
1. `build` reads the month's probe samples (the sample store), the evidence ledger's runs and the
   cloud bill (Cost Explorer, plus the FOCUS export's per-resource cost when the catalog names one),
   computes availability per SLO (downtime, excluded and unknown minutes, coverage, error budget,
   worst burn, credit owed), incidents with the runbook runs around them, maintenance, backups,
   restore and failover drills, patch compliance and cost, renders the HTML (inline SVG charts, no
   script) and its PDF, stores both in S3 under the report repository's Object Lock
   (`<prefix>/<estate>/<YYYY-MM>/`), reads the lock back, and records `report.stored` in the ledger
   with each file's SHA-256 and S3 version.
2. `send` reads the PDF back from S3 by that version, checks its SHA-256 against the ledger, and
   e-mails it to the estate's report recipients (`reports.recipients`).
The auditor view lists every stored report with its figures and a download link (`/cloudops/reports`):
each download is read from S3 by the recorded version and served only if its SHA-256 is the recorded one.

**What a failure means.**
- `build`, *month ...: it is in the future / has not ended yet*: the form's `month` names a month
  that is not over; a report covers a whole month.
- `build`, *reports.repository is not set* or *has no object_lock*: the catalog cannot keep the
  report; fix `reports:` in the catalog.
- `build`, *Cost Explorer refused* or *FOCUS ...*: the bill could not be read. The report is still
  made, with the cost section saying why; only a failure to store it fails the task.
- `build`, *S3 refused* / *lock read back*: the bucket refused the upload or its lock.
- `send`, *changed since it was stored*: the PDF read back is not the one the ledger recorded: a
  security incident; do not re-send.
- `send`, *SMTP*: the mail server refused; the report is stored, re-run `send` (clear the task).

**What to do next.**
- Wrong month: trigger again with a month that is over.
- Catalog: set `reports.repository` to a repository with `object_lock`, `reports.recipients`.
- A cost error: check the payer account's connection (`cost.cloud`); the rest of the report stands.
- Storage or mail: once S3 or SMTP is back, clear the failed task; re-running `build` stores a new
  version (earlier ones stay locked), and the ledger records each.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from cloudops.catalog import Catalog, LoadedCatalog
from cloudops.errors import CloudOpsError, InvalidInputError

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from cloudops.evidence.backend import EvidenceLedger
    from cloudops.reports.monthly import MonthlyReport

log = logging.getLogger(__name__)

KIND = "monthly_report"
SCHEDULE = "0 6 1 * *"  # the 1st, 06:00 local: the month before has ended everywhere in the zone
SAMPLES_ENV = "CLOUDOPS_SAMPLES_DIR"
MAX_REPORT_BYTES = 50 * 1024**2
NEXT_ACTIONS = {
    "build": "a future or unfinished month: trigger again with a month that is over; a catalog problem is "
    "named (reports.repository, object_lock); an S3 error: clear the task once S3 answers",
    "send": "SMTP refused: clear the task; 'changed since it was stored' is a security incident: "
    "do not re-send",
    "*": "read the task log",
}


class ReportStoreError(CloudOpsError):
    """The report could not be stored under Object Lock, or what S3 holds is not what was stored."""


class StoredFile(TypedDict):
    """One stored report file, as the ledger records it."""

    kind: str
    name: str
    bucket: str
    key: str
    version_id: str | None
    sha256: str
    size: int
    lock_mode: str
    locked_until: str


class ReportResult(TypedDict):
    """What ``build`` hands to ``send``."""

    estate: str
    month: str
    files: list[StoredFile]
    summary: dict[str, Any]


def samples_dir() -> Path:
    """The probe sample store: ``$CLOUDOPS_SAMPLES_DIR``, else ``$CLOUDOPS_SANDBOX_DIR/samples``,
    else ``$AIRFLOW_HOME/cloudops-samples``."""
    if os.environ.get(SAMPLES_ENV):
        return Path(os.environ[SAMPLES_ENV])
    if os.environ.get("CLOUDOPS_SANDBOX_DIR"):
        return Path(os.environ["CLOUDOPS_SANDBOX_DIR"]) / "samples"
    return Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "cloudops-samples"


def report_month(month: str | None, catalog: Catalog, now: datetime) -> str:
    """The month to report: the form's ``month``, else the month before ``now`` in the estate's zone."""
    from cloudops.reports.period import month_period, previous_month

    chosen = (month or "").strip() or previous_month(now, catalog.timezone)
    try:
        return month_period(chosen, catalog.timezone, now=now).month
    except InvalidInputError as error:
        raise InvalidInputError(f"form field month: {error}") from None


@dataclass
class Rendered:
    """A report made: the model, and its two files' bytes."""

    report: MonthlyReport
    html: bytes
    pdf: bytes


def read_cost(catalog: Catalog, month: str) -> tuple[Any, str | None]:
    """The month's bill from Cost Explorer (and per resource from the FOCUS export), or why not."""
    from cloudops.clouds.aws.cost_explorer import CostSourceError, explorer_cost_month, focus_cost_month

    settings = catalog.cost
    if settings is None:
        return None, "the estate has no cost settings (cost: in the catalog)"
    clouds = {cloud.name: cloud for cloud in catalog.clouds}
    try:
        cost = explorer_cost_month(clouds[settings.cloud].aws_conn_id, settings, month)
    except (CostSourceError, InvalidInputError) as error:
        log.warning("cost of %s not read from Cost Explorer: %s", month, error)
        return None, f"Cost Explorer: {error}"
    if settings.focus_export is not None:
        try:
            focus = focus_cost_month(clouds[settings.focus_export.cloud].aws_conn_id, settings, month)
        except (CostSourceError, InvalidInputError) as error:
            cost.discrepancies.append(f"FOCUS export not read: {error}")
        else:
            cost.by_resource = focus.by_resource
            if focus.total != cost.total:
                cost.discrepancies.append(
                    f"the FOCUS export totals {focus.total}, Cost Explorer {cost.total} {cost.currency}"
                )
    return cost, None


def read_forecast(catalog: Catalog, month: str, cost: Any, now: datetime) -> tuple[Any, str]:
    """Cost Explorer's forecast of the month after ``month`` as a projection, or None and why not."""
    from cloudops.clouds.aws.cost_explorer import explorer_forecast
    from cloudops.reports.cost import month_bounds
    from cloudops.reports.monthly import CostProjection

    settings = catalog.cost
    if settings is None or cost is None:
        return None, "no bill was read"
    conn_id = next(cloud.aws_conn_id for cloud in catalog.clouds if cloud.name == settings.cloud)
    amount, what = explorer_forecast(conn_id, settings, month, now.astimezone(UTC).date(), cost.currency)
    if amount is None:
        log.info("next month's cost: no Cost Explorer forecast (%s); a linear projection is stated", what)
        return None, what
    _, following = month_bounds(month)
    return CostProjection(f"{following:%Y-%m}", amount, what), what


def make_report(
    catalog: Catalog,
    month: str,
    *,
    now: datetime,
    ledger: EvidenceLedger,
    cost: Any = None,
    cost_problem: str | None = None,
    forecast: Any = None,
    no_forecast: str = "Cost Explorer's forecast was not available",
    store_dir: Path | None = None,
) -> Rendered:
    """Read samples and ledger, compute the report of ``month`` and render both files."""
    from cloudops.reports.render import render_html, render_pdf

    report = _month_report(
        catalog,
        month,
        now=now,
        ledger=ledger,
        cost=cost,
        cost_problem=cost_problem,
        forecast=forecast,
        no_forecast=no_forecast,
        store_dir=store_dir,
    )
    # The ledger's records and the sample grids are gone by now: WeasyPrint reuses their memory.
    html = render_html(report)
    return Rendered(report, html.encode(), render_pdf(html))


def _month_report(
    catalog: Catalog,
    month: str,
    *,
    now: datetime,
    ledger: EvidenceLedger,
    cost: Any,
    cost_problem: str | None,
    forecast: Any,
    no_forecast: str,
    store_dir: Path | None,
) -> MonthlyReport:
    """The report's model: the month's sample grids and the ledger's runs, read and folded."""
    from cloudops.evidence.runs import fold_runs
    from cloudops.probes.store import SampleStore
    from cloudops.reports.monthly import build_monthly_report
    from cloudops.reports.period import month_period

    period = month_period(month, catalog.timezone, now=now)
    keys = list(dict.fromkeys(target.key for slo in catalog.slos for target in slo.targets))
    store = SampleStore(store_dir or samples_dir())
    store.compact_finished(now)
    grids = store.grid(period, keys)
    records = list(ledger.records(until=(period.end + timedelta(days=1)).date()))
    anchor = {"last_seq": records[-1].seq, "last_hash": records[-1].hash} if records else {}
    return build_monthly_report(
        catalog,
        period,
        grids,
        fold_runs(records),
        generated_at=now,
        cost=cost,
        cost_problem=cost_problem,
        forecast=forecast,
        no_forecast=no_forecast,
        ledger_anchor=anchor,
    )


def summary_of(report: MonthlyReport) -> dict[str, Any]:
    """The figures the ledger and the e-mail carry: availability and credit per SLO, cost total."""
    return {
        "slos": {
            month.slo: {
                "availability_percent": None
                if month.availability_percent is None
                else float(month.availability_percent),
                "sla_met": month.sla.met,
                "downtime_minutes": month.downtime_minutes,
                "credit_owed": str(month.credit.owed) if month.credit.owed is not None else None,
                "currency": month.credit.currency,
            }
            for month in report.slos
        },
        "incidents": len(report.incidents),
        "cost_total": str(report.cost.total) if report.cost else None,
        "cost_currency": report.cost.currency if report.cost else None,
        "cost_problem": report.cost_problem,
    }


def _repository(catalog: Catalog) -> Any:
    settings = catalog.reports
    if settings is None or settings.repository is None:
        raise InvalidInputError(
            f"estate {catalog.estate}: reports.repository is not set: the report cannot be stored "
            "under Object Lock"
        )
    repository = catalog.repository(settings.repository)
    if repository.object_lock is None:
        raise InvalidInputError(f"reports.repository {repository.name!r} has no object_lock")
    return repository


def _s3(catalog: Catalog, repository: Any) -> Any:
    from cloudops.repository.s3 import bounded_s3_client

    cloud = next(cloud for cloud in catalog.clouds if cloud.name == repository.cloud)
    return bounded_s3_client(cloud.aws_conn_id, region=repository.region)


def store_report(catalog: Catalog, month: str, files: dict[str, bytes], *, now: datetime) -> list[StoredFile]:
    """Put each file under ``<prefix>/<estate>/<month>/`` with Object Lock, and read the lock back."""
    from cloudops.reports.render import report_names

    settings = catalog.reports
    assert settings is not None  # checked by _repository
    repository = _repository(catalog)
    lock = repository.object_lock
    client = _s3(catalog, repository)
    until = (now + timedelta(days=lock.days)).astimezone(UTC).replace(microsecond=0)
    names = report_names(month, catalog.estate)
    stored: list[StoredFile] = []
    for kind, body in files.items():
        key = f"{settings.prefix}/{catalog.estate}/{month}/{names[kind]}"
        digest = hashlib.sha256(body).hexdigest()
        try:
            answer = client.put_object(
                Bucket=repository.bucket,
                Key=key,
                Body=body,
                ContentType="text/html; charset=utf-8" if kind == "html" else "application/pdf",
                ObjectLockMode=lock.mode,
                ObjectLockRetainUntilDate=until,
                ChecksumAlgorithm="SHA256",
                Metadata={"sha256": digest, "estate": catalog.estate, "month": month},
            )
            version = answer.get("VersionId")
            head = client.head_object(
                Bucket=repository.bucket, Key=key, **({"VersionId": version} if version else {})
            )
        except Exception as error:
            raise ReportStoreError(f"S3 refused s3://{repository.bucket}/{key}: {error}") from error
        # get_object_retention fails in moto; head_object reports the same lock.
        mode, retained = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        if mode != lock.mode or retained is None or retained < until:
            raise ReportStoreError(
                f"s3://{repository.bucket}/{key}: asked for {lock.mode} until {until.isoformat()}, "
                f"the lock read back is {mode} until {retained}"
            )
        log.info(
            "stored s3://%s/%s (version %s, %d bytes, locked %s until %s)",
            repository.bucket,
            key,
            version,
            len(body),
            mode,
            retained.isoformat(),
        )
        stored.append(
            StoredFile(
                kind=kind,
                name=names[kind],
                bucket=repository.bucket,
                key=key,
                version_id=version,
                sha256=digest,
                size=len(body),
                lock_mode=str(mode),
                locked_until=retained.isoformat(),
            )
        )
    return stored


def fetch_stored(catalog: Catalog, stored: StoredFile) -> bytes:
    """Read one stored file back by its version; refuse it unless its SHA-256 is the one recorded."""
    repository = _repository(catalog)
    client = _s3(catalog, repository)
    version = {"VersionId": stored["version_id"]} if stored.get("version_id") else {}
    try:
        body = client.get_object(Bucket=stored["bucket"], Key=stored["key"], **version)["Body"].read(
            MAX_REPORT_BYTES + 1
        )
    except Exception as error:
        raise ReportStoreError(f"S3 refused s3://{stored['bucket']}/{stored['key']}: {error}") from error
    if hashlib.sha256(body).hexdigest() != stored["sha256"]:
        raise ReportStoreError(
            f"s3://{stored['bucket']}/{stored['key']} changed since it was stored: its SHA-256 is not the "
            "one the ledger recorded"
        )
    return bytes(body)


def recipients_and_conn(catalog: Catalog) -> tuple[list[str], str]:
    """The report's recipients and the SMTP connection that sends to them."""
    from cloudops.catalog.models import SmtpNotification

    settings = catalog.reports
    if settings is None:
        raise InvalidInputError(f"estate {catalog.estate}: no reports: settings (recipients) in the catalog")
    smtp = [n for n in catalog.notifications if isinstance(n, SmtpNotification)]
    chosen = [n for n in smtp if settings.smtp_notification in (None, n.name)]
    if not chosen:
        raise InvalidInputError(f"estate {catalog.estate}: no smtp notification to send the report with")
    return list(settings.recipients), chosen[0].smtp_conn_id


def email_report(catalog: Catalog, result: ReportResult, pdf: bytes) -> list[str]:
    """E-mail the PDF to the estate's report recipients; return them."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    from cloudops.reports.render import percent

    recipients, conn_id = recipients_and_conn(catalog)
    stored = next(item for item in result["files"] if item["kind"] == "pdf")
    lines = [
        f"<li>{name}: {percent(figures['availability_percent'])}"
        f"{' (SLA breached)' if figures['sla_met'] is False else ''}</li>"
        for name, figures in result["summary"]["slos"].items()
    ]
    body = (
        f"<p>The monthly service report of {catalog.estate} for {result['month']} is attached.</p>"
        f"<ul>{''.join(lines)}</ul><p>SHA-256 of the PDF: <code>{stored['sha256']}</code></p>"
    )
    with tempfile.TemporaryDirectory(prefix="cloudops-report-") as scratch:
        path = Path(scratch) / stored["name"]
        path.write_bytes(pdf)
        with SmtpHook(smtp_conn_id=conn_id) as hook:
            hook.send_email_smtp(
                to=recipients,
                subject=f"Monthly service report {catalog.estate} {result['month']}",
                html_content=body,
                files=[str(path)],
            )
    log.info("report of %s %s sent to %s", catalog.estate, result["month"], ", ".join(recipients))
    return recipients


def produce(
    catalog: Catalog, month: str, context: dict[str, Any], *, now: datetime, out_dir: Path | None = None
) -> ReportResult:
    """Make, store and record the month's report (what ``build`` and the CLI do)."""
    from cloudops.evidence.recorder import ledger, record_fact
    from cloudops.evidence.runs import REPORT_STORED

    _repository(catalog)  # refuse before an hour of work when it cannot be kept
    cost, problem = read_cost(catalog, month)
    forecast, why = read_forecast(catalog, month, cost, now)
    rendered = make_report(
        catalog,
        month,
        now=now,
        ledger=ledger(),
        cost=cost,
        cost_problem=problem,
        forecast=forecast,
        no_forecast=why,
    )
    files = {"html": rendered.html, "pdf": rendered.pdf}
    if out_dir is not None:
        from cloudops.reports.render import report_names

        out_dir.mkdir(parents=True, exist_ok=True)
        for kind, name in report_names(month, catalog.estate).items():
            (out_dir / name).write_bytes(files[kind])
    stored = store_report(catalog, month, files, now=now)
    summary = summary_of(rendered.report)
    record_fact(
        REPORT_STORED,
        context,
        {
            "estate": catalog.estate,
            "month": month,
            "time_zone": catalog.timezone,
            "files": [dict(item) for item in stored],
            "summary": summary,
            "generated_at": now.isoformat(),
        },
    )
    return ReportResult(estate=catalog.estate, month=month, files=stored, summary=summary)


def build_monthly_report_dags(loaded: LoadedCatalog) -> list[DAG]:
    """Build ``monthly_report__<estate>`` for an estate with SLOs or cost settings and report recipients."""
    from airflow.sdk import DAG, Param, task

    from cloudops.runbooks.common import (
        created_paused,
        default_args,
        failure_alerts,
        load_estate,
        runbook_doc,
        start_date,
        tags,
    )

    catalog = loaded.catalog
    if catalog.reports is None:
        return []
    catalog_file, estate = str(loaded.path), catalog.estate
    with DAG(
        dag_id=f"{KIND}__{estate}",
        description=f"Monthly availability, operations and cost report of estate {estate}",
        schedule=SCHEDULE,
        start_date=start_date(catalog.timezone),
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(hours=2),
        default_args=default_args(
            catalog.owner,
            alerts=failure_alerts(loaded, f"estate {estate}", NEXT_ACTIONS),
            retries=2,
            execution_timeout=timedelta(minutes=30),
        ),
        is_paused_upon_creation=created_paused(),
        doc_md=runbook_doc(__doc__, f"Recipients: {', '.join(catalog.reports.recipients)}."),
        tags=tags(KIND, loaded),
        params={
            "month": Param(
                None,
                type=["null", "string"],
                pattern=r"^\d{4}-\d{2}$",
                title="Month",
                description="YYYY-MM, a month that is over; empty: the month before this run.",
            ),
        },
    ) as dag:

        @task(task_id="build")
        def build(**context: Any) -> ReportResult:
            """Make the month's report, store it under Object Lock and record it in the ledger."""
            found = load_estate(catalog_file, estate)
            now = datetime.now(UTC)
            logical = context.get("logical_date") or now
            month = report_month(context["params"].get("month"), found, min(now, logical) if logical else now)
            log.info("reporting %s of estate %s (%s)", month, estate, found.timezone)
            return produce(found, month, context, now=now)

        @task(task_id="send")
        def send(result: ReportResult) -> list[str]:
            """E-mail the stored PDF, read back and checked against the ledger's SHA-256."""
            found = load_estate(catalog_file, estate)
            stored = next(item for item in result["files"] if item["kind"] == "pdf")
            return email_report(found, result, fetch_stored(found, stored))

        send(build())  # type: ignore[arg-type]  # Airflow passes the XCom value
    return [dag]


__all__ = [
    "KIND",
    "ReportResult",
    "ReportStoreError",
    "StoredFile",
    "build_monthly_report_dags",
    "email_report",
    "fetch_stored",
    "make_report",
    "produce",
    "read_cost",
    "report_month",
    "samples_dir",
    "store_report",
]
