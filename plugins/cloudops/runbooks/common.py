"""What every runbook DAG shares: catalog loading, default arguments (failure alerts included), tags, docs.

Every runbook alerts on failure through one callback, `cloudops.notifications.RunbookFailureNotifier`:
``default_args`` cannot be called without it, and the DAG policy test checks every task of every DAG.
Every runbook DAG is created unpaused (``is_paused_upon_creation=created_paused(...)``) unless the
catalog pauses it: a new database's backup that silently never runs is an outage of the backup.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cloudops.catalog import Catalog, CatalogSet, LoadedCatalog, load_catalog_file, load_catalogs
from cloudops.errors import CloudOpsError

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from cloudops.notifications import RunbookFailureNotifier

log = logging.getLogger(__name__)

# Runbooks never backfill: a missed health check or backup is run now, not replayed for the past.
RUNBOOK_EPOCH = (2026, 1, 1)


DEADLINE_ALERTS_ENV = "CLOUDOPS_DEADLINE_ALERTS"


def deadline_alerts_enabled() -> bool:
    """Whether DAGs carry their Deadline Alerts (default yes).

    `airflow dags test` in Airflow 3.3.2 crashes when a run with a Deadline Alert succeeds
    (``DagRun.update_state`` reads the in-memory alerts as ids: "'dict' object has no attribute
    'hex'"); the scheduler's path is not affected. `make demo` and the e2e tests, which use
    `airflow dags test`, turn the alerts off with ``CLOUDOPS_DEADLINE_ALERTS=false``.
    """
    return os.environ.get(DEADLINE_ALERTS_ENV, "true").strip().lower() not in ("0", "false", "no")


def load_estate(catalog_file: str, estate: str) -> Catalog:
    """Reload a task's catalog file at run time, refusing it if it now describes another estate.

    :raises CloudOpsError: the file was renamed or rewritten for another estate since the DAG was built.
    """
    catalog = load_catalog_file(catalog_file)
    if catalog.estate != estate:
        raise CloudOpsError(f"{catalog_file} now describes estate {catalog.estate!r}, not {estate!r}")
    return catalog


def failure_alerts(
    loaded: LoadedCatalog | None,
    target: str,
    next_actions: dict[str, str],
    *,
    database_param: str | None = None,
) -> RunbookFailureNotifier:
    """The one failure callback of every runbook: alert the notification targets, naming the step.

    :param loaded: the estate's catalog file; None for a DAG that serves every estate (evidence_ship,
        restore_request), which alerts every estate's targets.
    :param target: what the runbook acts on, e.g. ``database orders_pg``.
    :param next_actions: by task id, what on-call should do next; ``"*"`` is the fallback.
    :param database_param: the run's conf key naming a catalog database (restore_request's form): when
        set and it names one, only that database's estate is alerted.
    """
    from cloudops.notifications import RunbookFailureNotifier

    return RunbookFailureNotifier(
        catalog_file=str(loaded.path) if loaded else None,
        estate=loaded.catalog.estate if loaded else None,
        target=target,
        next_actions=next_actions,
        database_param=database_param,
    )


def default_args(
    owner: str,
    *,
    alerts: RunbookFailureNotifier,
    retries: int = 2,
    retry_delay: timedelta = timedelta(minutes=1),
    execution_timeout: timedelta = timedelta(minutes=30),
) -> dict[str, Any]:
    """Task defaults: failure alerts, retries with exponential backoff (1, 2, 4 … minutes, at most 15)
    and a timeout.

    :param alerts: the runbook's failure callback, from :func:`failure_alerts` (required: a runbook
        that fails silently is an outage nobody hears of).
    """
    return {
        "owner": owner,
        "retries": retries,
        "retry_delay": retry_delay,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=15),
        "execution_timeout": execution_timeout,
        # on_failure_callback fires once a task has no retry left, so one failure sends one alert.
        "on_failure_callback": [alerts],
    }


PAUSED_AT_CREATION_ENV = "CLOUDOPS_PAUSED_AT_CREATION"


def created_paused(paused_by_catalog: bool = False) -> bool:
    """``is_paused_upon_creation`` of a runbook DAG: unpaused unless the catalog pauses it.

    Airflow creates DAGs paused by default (``dags_are_paused_at_creation``); a runbook that nobody
    unpauses never runs. Created unpaused, a scheduled runbook runs its latest missed time at once.
    ``CLOUDOPS_PAUSED_AT_CREATION=true`` creates every runbook paused, for an Airflow started to test one
    runbook (the e2e stacks), where the others would compete for its few slots; the health check reports
    every paused runbook DAG all the same, so the switch cannot hide an outage.
    """
    forced = os.environ.get(PAUSED_AT_CREATION_ENV, "false").strip().lower() in ("1", "true", "yes")
    return paused_by_catalog or forced


def start_date(timezone: str) -> datetime:
    """The runbooks' start date, in the estate's time zone so that cron schedules are local."""
    import pendulum

    return pendulum.datetime(*RUNBOOK_EPOCH, tz=timezone)


def tags(kind: str, loaded: LoadedCatalog, *extra: str) -> list[str]:
    """Tags that let the UI filter by platform, runbook kind and estate."""
    return ["cloudops", kind, f"estate:{loaded.catalog.estate}", *extra]


def runbook_doc(text: str | None, *sections: str) -> str:
    """The DAG's ``doc_md``: the runbook text, then sections about this DAG's targets."""
    body = (text or "").strip()
    return "\n\n".join([body, *(section.strip() for section in sections if section)])


def log_catalog_errors(result: CatalogSet) -> None:
    """Log bad catalog files; the ``catalog_errors`` DAG file raises them as an import error."""
    for error in result.errors:
        log.error("catalog file skipped, its runbooks are not built:\n%s", error)


def build_dags(builder: Callable[[LoadedCatalog], Iterable[DAG]]) -> dict[str, DAG]:
    """Build the DAGs of every valid catalog file with ``builder``; bad files are skipped and logged.

    :return: DAGs by dag_id, to be merged into the DAG module's globals.
    """
    result = load_catalogs()
    log_catalog_errors(result)
    return {dag.dag_id: dag for loaded in result.catalogs for dag in builder(loaded)}


__all__ = [
    "PAUSED_AT_CREATION_ENV",
    "build_dags",
    "created_paused",
    "deadline_alerts_enabled",
    "default_args",
    "failure_alerts",
    "load_estate",
    "log_catalog_errors",
    "runbook_doc",
    "start_date",
    "tags",
]
