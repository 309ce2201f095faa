"""# Health check: `health_check__<estate>`

**What it does.** Every 30 minutes, for every database of the estate: can we connect, is it the
primary or a replica as the catalog says, and how far behind is each replica. For every host of every
fleet: can we reach it over SSH with its verified host key, how long has it been up, and how full are
its disks. The result is a table in the `report` task's log and a record in its XCom.

**What a failure means.** The `report` task fails when any target is not healthy, and its message
names each one and why: *down* (cannot connect), *degraded* (up, but outside policy: wrong role,
replica not streaming or lagging, disk over the fleet's limit) or *error* (could not be checked,
usually an Airflow connection that does not exist).

**What to do next.**
- *down*: check the server or host is running and reachable from the Airflow workers; look at its
  own logs. A host key error means the host's key changed: confirm why before updating the
  connection's `host_key`; never turn host key checking off.
- *degraded, role*: the catalog and the cluster disagree, typically after a failover. Confirm which
  node is primary, then update the catalog or fail back.
- *degraded, lag or not streaming*: look at the replica's log and `pg_stat_wal_receiver`
  (PostgreSQL) or `SHOW SLAVE STATUS` (MariaDB).
- *degraded, disk*: free space before the fleet's limit becomes an outage.
- *error*: create the missing connection (Admin > Connections) or fix its id in the catalog.

Re-running is always safe: the runbook only reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from cloudops.catalog import Catalog, LoadedCatalog
from cloudops.errors import CloudOpsError
from cloudops.health import ERROR, Finding, HealthReport, assess_database, assess_host
from cloudops.runbooks.common import load_estate

if TYPE_CHECKING:
    from airflow.sdk import DAG

log = logging.getLogger(__name__)

KIND = "health_check"
SCHEDULE = "*/30 * * * *"
PROBE_TIMEOUT_SECONDS = 10
MAX_PARALLEL_PROBES = 16
T = TypeVar("T")
NEXT_ACTIONS = {
    "report": "read the summary: each unhealthy target is named with why; see 'What to do next' in the "
    "DAG's docs",
    "*": "a check task failed (not a target): read its log",
}


def _in_parallel(items: Sequence[T], check: Callable[[T], Finding]) -> list[Finding]:
    """Check every item with a bounded pool; each check is itself bounded by its timeouts."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(items))) as pool:
        return list(pool.map(check, items))


def check_databases(catalog_file: str, estate: str) -> list[dict[str, Any]]:
    """Probe every database of the estate; return one finding per database."""
    from cloudops.engines import mariadb, postgres

    catalog = load_estate(catalog_file, estate)
    engines = {"postgres": postgres.probe, "mariadb": mariadb.probe}

    def check(database: Any) -> Finding:
        used_by = f"database {database.name!r}"
        try:
            state = engines[database.engine](
                database.conn_id, database.database, used_by=used_by, timeout_seconds=PROBE_TIMEOUT_SECONDS
            )
        except CloudOpsError as error:
            return Finding(f"database {database.name}", ERROR, "not checked", str(error))
        return assess_database(database, state, catalog)

    findings = _in_parallel(catalog.databases, check)
    return [asdict(finding) for finding in findings]


def check_hosts(catalog_file: str, estate: str) -> list[dict[str, Any]]:
    """Probe every host of every fleet over SSH; return one finding per host."""
    from cloudops.fleet.health import probe_host

    catalog = load_estate(catalog_file, estate)

    def check(fleet_and_host: Any) -> Finding:
        fleet, host = fleet_and_host
        try:
            state = probe_host(
                host.ssh_conn_id, used_by=f"host {host.name!r}", timeout_seconds=PROBE_TIMEOUT_SECONDS
            )
        except CloudOpsError as error:
            return Finding(f"host {host.name}", ERROR, "not checked", str(error))
        return assess_host(fleet, host, state)

    findings = _in_parallel(catalog.hosts, check)
    return [asdict(finding) for finding in findings]


def report_health(
    estate: str,
    database_findings: Iterable[dict[str, Any]] | None,
    host_findings: Iterable[dict[str, Any]] | None,
) -> dict[str, Any]:
    """Log the table and return the record; raise with a readable summary when anything is unhealthy.

    A check task that crashed delivers nothing: that is reported as a finding, never as healthy.
    """
    findings: list[Finding] = []
    for name, delivered in (("database checks", database_findings), ("host checks", host_findings)):
        if delivered is None:
            findings.append(Finding(name, ERROR, "did not run", "the check task failed: see its log"))
        else:
            findings.extend(Finding(**item) for item in delivered)
    report = HealthReport(estate, findings)
    log.info("health of estate %s:\n%s", estate, report.table())
    record = {
        "estate": estate,
        "healthy": report.healthy,
        "summary": report.summary(),
        "findings": [asdict(finding) for finding in findings],
    }
    if not report.healthy:
        raise CloudOpsError(report.summary())
    log.info(report.summary())
    return record


def _report_task(estate: str, **context: Any) -> dict[str, Any]:
    ti = context["ti"]
    return report_health(
        estate, ti.xcom_pull(task_ids="check_databases"), ti.xcom_pull(task_ids="check_hosts")
    )


def _targets_doc(catalog: Catalog) -> str:
    databases = "\n".join(f"| {d.name} | {d.engine} | {d.role} | `{d.conn_id}` |" for d in catalog.databases)
    hosts = "\n".join(f"| {h.name} | {f.name} | `{h.ssh_conn_id}` |" for f, h in catalog.hosts)
    return (
        f"## Targets in estate `{catalog.estate}`\n\n"
        "| database | engine | role | connection |\n|---|---|---|---|\n"
        f"{databases or '| (none) | | | |'}\n\n"
        "| host | fleet | connection |\n|---|---|---|\n"
        f"{hosts or '| (none) | | |'}\n\n"
        f"On call: **{catalog.owner}**."
    )


def build_health_check_dag(loaded: LoadedCatalog) -> list[DAG]:
    """Build ``health_check__<estate>`` for one catalog file."""
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG

    from cloudops.runbooks.common import (
        created_paused,
        default_args,
        failure_alerts,
        runbook_doc,
        start_date,
        tags,
    )

    catalog = loaded.catalog
    op_kwargs = {"catalog_file": str(loaded.path), "estate": catalog.estate}
    with DAG(
        dag_id=f"{KIND}__{catalog.estate}",
        description=f"Is every database and host of {catalog.estate} up and within policy?",
        schedule=SCHEDULE,
        start_date=start_date(catalog.timezone),
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(minutes=25),
        default_args=default_args(
            catalog.owner,
            alerts=failure_alerts(loaded, f"estate {catalog.estate}", NEXT_ACTIONS),
            retries=1,
            execution_timeout=timedelta(minutes=10),
        ),
        is_paused_upon_creation=created_paused(),
        doc_md=runbook_doc(__doc__, _targets_doc(catalog)),
        tags=tags(KIND, loaded),
    ) as dag:
        # The variables carry a _task suffix: the task ids are taken by the callables' names.
        check_databases_task = PythonOperator(  # noqa: AIR001
            task_id="check_databases", python_callable=check_databases, op_kwargs=op_kwargs
        )
        check_hosts_task = PythonOperator(  # noqa: AIR001
            task_id="check_hosts", python_callable=check_hosts, op_kwargs=op_kwargs
        )
        report = PythonOperator(
            task_id="report",
            python_callable=_report_task,
            op_kwargs={"estate": catalog.estate},
            trigger_rule="all_done",
            # The verdict is a fact about now; retrying it would only repeat the same failure.
            retries=0,
        )
        [check_databases_task, check_hosts_task] >> report
    return [dag]


__all__ = ["build_health_check_dag", "check_databases", "check_hosts", "report_health"]
