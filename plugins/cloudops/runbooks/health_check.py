"""# Health check: `health_check__<estate>`

**What it does.** Every 30 minutes, for every database of the estate: can we connect, is it the
primary or a replica as the catalog says, and how far behind is each replica. For every cluster: ask
each member what it is now (the primary is discovered, never assumed), and when the primary is not
the one the catalog names, read the ledger for the failover drill that moved it. For every host of every
fleet: can we reach it over SSH with its verified host key, how long has it been up, and how full are
its disks. The result is a table in the `report` task's log and a record in its XCom.

**What a failure means.** The `report` task fails when any target is not healthy, and its message
names each one and why: *down* (cannot connect), *degraded* (up, but outside policy: wrong role,
replica not streaming or lagging, disk over the fleet's limit) or *error* (could not be checked,
usually an Airflow connection that does not exist).

A cluster's findings: *down* when no member takes writes, or two do (a split brain); *degraded*
when a member is unreachable or a replica does not stream; a **warning** "the primary of cluster X is
now Y (moved by drill run R)" when a failover drill left it there without failing back, or "(not
recorded: investigate)" when no drill explains it (a real failover, or a move nobody recorded).
A warning does not fail the check: backups already read the new primary. A member database whose
role differs from the catalog's is judged as what it is now, never as a role mismatch.

**What to do next.**
- *cluster warning, moved by a drill*: fail back (`failover_drill__<cluster>`, or by hand), or make
  the new primary the catalog's (`role: primary` on it, `role: replica` on the old one).
- *cluster warning, not recorded*: find out what moved it (the manager's log: Patroni's `/history`,
  the servers' logs), then as above. *Cluster down*: with two writers, fence all but one now.
- *down*: check the server or host is running and reachable from the Airflow workers; look at its
  own logs. A host key error means the host's key changed: confirm why before updating the
  connection's `host_key`; never turn host key checking off.
- *degraded, role* (a database in no cluster): the catalog and the server disagree, typically after
  a failover. Confirm which node is primary, then update the catalog or fail back.
- *degraded, lag or not streaming*: look at the replica's log and `pg_stat_wal_receiver`
  (PostgreSQL) or `SHOW SLAVE STATUS` (MariaDB).
- *degraded, disk*: free space before the fleet's limit becomes an outage.
- *error*: create the missing connection (Admin > Connections) or fix its id in the catalog.

**Runbooks.** `check_runbooks` asks the Airflow REST API (connection `cloudops_airflow_api`, or the
one `CLOUDOPS_AIRFLOW_API_CONN_ID` names: host = the api-server's URL, login and password of a user
who may read DAGs) about every runbook DAG the catalog's targets call for (`backup__`,
`restore_drill__`, `ebs_snapshot__`): *down* when Airflow has no such DAG, *degraded* when it is
paused (a paused backup is an outage of the backup) or when its last success is older than its
schedule allows (the latest scheduled time plus the backup's deadline, the drill's 8 h or the
snapshots' 3 h; an `on_backup` drill must have succeeded after the backup's last success). A runbook
the catalog pauses (`paused: true`) is a *warning*, as is "runbook state unknown" when the API cannot
be asked (no connection, api-server down, e.g. under `airflow dags test`): warnings are listed but do
not fail the check.
- *runbook missing*: read the DAG import errors (UI, or `airflow dags list-import-errors`).
- *runbook paused*: unpause it, or set `paused: true` in the catalog if that is intended.
- *runbook stale*: read its last runs: failed (their alerts said why) or never created (scheduler).

Re-running is always safe: the runbook only reads.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from cloudops.catalog import Catalog, LoadedCatalog
from cloudops.errors import CloudOpsError, ConnectionMissingError
from cloudops.health import (
    ERROR,
    FailoverMove,
    Finding,
    HealthReport,
    RunbookState,
    assess_cluster,
    assess_database,
    assess_host,
    assess_runbook,
    expected_runbooks,
    runbook_state_unknown,
)
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
    from cloudops.engines import engine

    catalog = load_estate(catalog_file, estate)

    def check(database: Any) -> Finding:
        used_by = f"database {database.name!r}"
        try:
            state = engine(database.engine).probe(
                database.conn_id, database.database, used_by=used_by, timeout_seconds=PROBE_TIMEOUT_SECONDS
            )
        except CloudOpsError as error:
            return Finding(f"database {database.name}", ERROR, "not checked", str(error))
        return assess_database(database, state, catalog)

    findings = _in_parallel(catalog.databases, check)
    return [asdict(finding) for finding in findings]


def last_failover_move(cluster: str) -> tuple[FailoverMove | None, str | None]:
    """The cluster's newest ``failover.drill`` fact in the ledger, and why it could not be read (None
    when it could: then a None move means no drill of the cluster was recorded)."""
    from cloudops.evidence.facts import latest_fact
    from cloudops.evidence.runs import FAILOVER_DRILL

    try:
        found = latest_fact(FAILOVER_DRILL, {"cluster": cluster})
    except (CloudOpsError, OSError, ValueError) as error:
        log.warning("the ledger could not be read for cluster %s's failover drills: %s", cluster, error)
        return None, f"the ledger could not be read: {error}"
    if found is None:
        return None, None
    data = found.fields.get("data") or {}
    return FailoverMove.from_fact(data, at=found.at or None), None


def check_clusters(catalog_file: str, estate: str) -> list[dict[str, Any]]:
    """Ask every member of every cluster what it is now; judge each cluster (one primary, wherever it
    moved); read the ledger's drill facts only for a cluster whose primary is not the catalog's."""
    from cloudops.clusters import catalog_primary, read_topology

    catalog = load_estate(catalog_file, estate)

    def check(cluster: Any) -> list[Finding]:
        used_by = f"the health check of cluster {cluster.name!r}"
        try:
            topology = read_topology(catalog, cluster, used_by=used_by, timeout_seconds=PROBE_TIMEOUT_SECONDS)
        except CloudOpsError as error:
            return [Finding(f"cluster {cluster.name}", ERROR, "not checked", str(error))]
        expected = catalog_primary(catalog, cluster)
        move, history_problem = None, None
        if topology.primary is not None and expected is not None and topology.primary != expected:
            move, history_problem = last_failover_move(cluster.name)
        return assess_cluster(
            cluster.name,
            topology,
            catalog_primary=expected,
            last_move=move,
            history_problem=history_problem,
        )

    if not catalog.clusters:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(catalog.clusters))) as pool:
        per_cluster = list(pool.map(check, catalog.clusters))
    return [asdict(finding) for findings in per_cluster for finding in findings]


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


AIRFLOW_API_CONN_ENV = "CLOUDOPS_AIRFLOW_API_CONN_ID"
DEFAULT_AIRFLOW_API_CONN_ID = "cloudops_airflow_api"
API_TIMEOUT_SECONDS = 10
API_ATTEMPTS = 3
API_RETRY_DELAY_SECONDS = 2


class AirflowApiError(CloudOpsError):
    """The Airflow REST API could not be asked, or refused; the message says which call and why."""


def airflow_api_base(conn: Any) -> str:
    """The api-server's base URL from an Airflow connection (host may be a whole URL)."""
    host = (conn.host or "").rstrip("/")
    if not host:
        raise AirflowApiError(f"connection {conn.conn_id!r} has no host (the api-server's URL)")
    if "://" not in host:
        host = f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
    return host


def read_runbook_states(conn_id: str, dag_ids: Sequence[str]) -> dict[str, RunbookState]:
    """Ask the Airflow REST API about each DAG: exists, paused, last success, any run, next run.

    Task code cannot open metadata-DB sessions in Airflow 3, and the task SDK's execution API cannot
    find asset-triggered runs (they have no logical date): the public REST API can.

    :raises ConnectionMissingError: the connection does not exist.
    :raises AirflowApiError: the API cannot be reached or refuses (the message names the call).
    """
    import httpx

    from cloudops.connections import get_connection

    conn = get_connection(conn_id, "the health check's runbook checks")
    base = airflow_api_base(conn)
    with httpx.Client(base_url=base, timeout=API_TIMEOUT_SECONDS) as client:

        def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
            # A busy metadata database answers 500 or slowly now and then: a few tries, then a warning.
            for attempt in range(1, API_ATTEMPTS + 1):
                try:
                    response = client.request(method, path, **kwargs)
                except httpx.TimeoutException as error:
                    problem = f"{type(error).__name__}: {error}"
                except httpx.HTTPError as error:
                    raise AirflowApiError(f"{method} {base}{path}: {type(error).__name__}: {error}") from None
                else:
                    if response.status_code < 500:
                        break
                    problem = f"HTTP {response.status_code}"
                if attempt == API_ATTEMPTS:
                    raise AirflowApiError(f"{method} {base}{path}: {problem} ({API_ATTEMPTS} attempts)")
                time.sleep(API_RETRY_DELAY_SECONDS)
            if response.status_code >= 400 and response.status_code != 404:
                raise AirflowApiError(f"{method} {base}{path}: HTTP {response.status_code}")
            return response

        token = call("POST", "/auth/token", json={"username": conn.login, "password": conn.password})
        if token.status_code == 404:
            raise AirflowApiError(f"POST {base}/auth/token: HTTP 404 (is {base} an Airflow api-server?)")
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        states = {}
        for dag_id in dag_ids:
            dag = call("GET", f"/api/v2/dags/{dag_id}")
            if dag.status_code == 404 or dag.json().get("is_stale"):
                states[dag_id] = RunbookState(dag_id, exists=False)
                continue
            runs = f"/api/v2/dags/{dag_id}/dagRuns"
            success = call("GET", runs, params={"state": "success", "order_by": "-end_date", "limit": 1})
            newest = call("GET", runs, params={"order_by": "-run_after", "limit": 1})
            last = (success.json().get("dag_runs") or [{}])[0].get("end_date")
            next_run = dag.json().get("next_dagrun_run_after")
            newest_run = (newest.json().get("dag_runs") or [{}])[0]
            going = newest_run.get("state") in ("queued", "running")
            since = newest_run.get("start_date") or newest_run.get("queued_at") or newest_run.get("run_after")
            states[dag_id] = RunbookState(
                dag_id,
                exists=True,
                is_paused=bool(dag.json().get("is_paused")),
                last_success=datetime.fromisoformat(last) if last else None,
                runs=bool(newest.json().get("dag_runs")),
                next_run=datetime.fromisoformat(next_run) if next_run else None,
                running_since=datetime.fromisoformat(since) if going and since else None,
            )
    return states


def check_runbooks(catalog_file: str, estate: str) -> list[dict[str, Any]]:
    """Judge every runbook DAG the estate's targets call for; a warning when Airflow cannot be asked."""
    catalog = load_estate(catalog_file, estate)
    expected = expected_runbooks(catalog)
    if not expected:
        return []
    conn_id = os.environ.get(AIRFLOW_API_CONN_ENV) or DEFAULT_AIRFLOW_API_CONN_ID
    try:
        states = read_runbook_states(conn_id, [e.dag_id for e in expected])
    except (ConnectionMissingError, AirflowApiError) as error:
        log.warning("runbook state unknown: %s", error)
        return [asdict(runbook_state_unknown(estate, str(error)))]
    now = datetime.now(UTC)
    findings = [assess_runbook(e, states[e.dag_id], states, now=now) for e in expected]
    return [asdict(finding) for finding in findings]


def report_health(
    estate: str,
    database_findings: Iterable[dict[str, Any]] | None,
    host_findings: Iterable[dict[str, Any]] | None,
    runbook_findings: Iterable[dict[str, Any]] | None = (),
    cluster_findings: Iterable[dict[str, Any]] | None = (),
) -> dict[str, Any]:
    """Log the table and return the record; raise with a readable summary when anything is unhealthy.

    A check task that crashed delivers nothing: that is reported as a finding, never as healthy.
    Warnings are listed and kept in the record, but do not fail the check.
    """
    findings: list[Finding] = []
    for name, delivered in (
        ("database checks", database_findings),
        ("cluster checks", cluster_findings),
        ("host checks", host_findings),
        ("runbook checks", runbook_findings),
    ):
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
        estate,
        ti.xcom_pull(task_ids="check_databases"),
        ti.xcom_pull(task_ids="check_hosts"),
        ti.xcom_pull(task_ids="check_runbooks"),
        ti.xcom_pull(task_ids="check_clusters"),
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
        check_clusters_task = PythonOperator(  # noqa: AIR001
            task_id="check_clusters", python_callable=check_clusters, op_kwargs=op_kwargs
        )
        check_hosts_task = PythonOperator(  # noqa: AIR001
            task_id="check_hosts", python_callable=check_hosts, op_kwargs=op_kwargs
        )
        check_runbooks_task = PythonOperator(  # noqa: AIR001
            task_id="check_runbooks", python_callable=check_runbooks, op_kwargs=op_kwargs
        )
        report = PythonOperator(
            task_id="report",
            python_callable=_report_task,
            op_kwargs={"estate": catalog.estate},
            trigger_rule="all_done",
            # The verdict is a fact about now; retrying it would only repeat the same failure.
            retries=0,
        )
        [check_databases_task, check_clusters_task, check_hosts_task, check_runbooks_task] >> report
    return [dag]


__all__ = [
    "AirflowApiError",
    "build_health_check_dag",
    "check_clusters",
    "check_databases",
    "check_hosts",
    "check_runbooks",
    "last_failover_move",
    "read_runbook_states",
    "report_health",
]
