"""The Airflow listener that writes every runbook run into the evidence ledger.

Registered by the CloudOps plugin (plugin.py). It records the runs of cloudops's own runbook DAGs
only (``runs.is_runbook_dag``: a runbook kind's DAG id, with the ``cloudops`` tag when the DAG is at
hand); other DAGs of the same Airflow are not its business, and their conf and errors may hold
anything. What it records (see runs.py for the fields):
``run.started`` and ``run.finished`` for every runbook run (in the scheduler, or in ``airflow dags test``),
who triggered it and with which parameters (secrets masked), and one ``step.try`` per task try that
ends (success, failed, skipped; in the worker, or in the scheduler when it fails a task itself).
Listeners fire on every try and some events fire in two processes: each record's key names the run,
the task, the map index and the try, so a second firing of the same event is not written again.
Nothing here can fail a runbook: recorder.record logs and counts its own errors, and every hook
below catches anything else.
"""

from __future__ import annotations

import logging
import socket
from datetime import datetime
from typing import Any

from airflow.listeners import hookimpl

from cloudops.errors import first_line
from cloudops.evidence import recorder
from cloudops.evidence.runs import RUN_FINISHED, RUN_STARTED, STEP_TRY, is_runbook_dag

log = logging.getLogger("cloudops.evidence")


def _tags(run_or_try: Any) -> Any:
    """The DAG's tags when the object at hand carries its DAG (no database query), else None."""
    dag = getattr(run_or_try, "dag", None) or getattr(getattr(run_or_try, "task", None), "dag", None)
    return getattr(dag, "tags", None) if dag is not None else None


def _guarded(kind: str, build: Any, *args: Any) -> None:
    try:
        if not is_runbook_dag(getattr(args[0], "dag_id", None), _tags(args[0])):
            return
        build(*args)
    except Exception as error:
        recorder.count_error(kind, getattr(args[0], "dag_id", None), getattr(args[0], "run_id", None), error)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _timing(run_or_try: Any) -> dict[str, Any]:
    """When a run or a try started and ended, and how long it took (None where unknown)."""
    started, ended = getattr(run_or_try, "start_date", None), getattr(run_or_try, "end_date", None)
    return {
        "started_at": _iso(started),
        "finished_at": _iso(ended),
        "duration_seconds": (ended - started).total_seconds() if started and ended else None,
    }


def _enum_text(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def _who_and_how(dag_run: Any) -> dict[str, Any]:
    """Who started the run, how, and with which parameters: in both run records, so that a run is
    complete in the ledger even where ``on_dag_run_running`` does not fire (``airflow dags test``)."""
    return {
        "run_type": _enum_text(getattr(dag_run, "run_type", None)),
        "triggered_by": _enum_text(getattr(dag_run, "triggered_by", None)),
        "triggered_by_user": getattr(dag_run, "triggering_user_name", None),
        "conf": dict(getattr(dag_run, "conf", None) or {}),
        "logical_date": _iso(getattr(dag_run, "logical_date", None)),
    }


def _run_started(dag_run: Any) -> None:
    recorder.record(
        RUN_STARTED,
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        key=f"{RUN_STARTED}|{dag_run.dag_id}|{dag_run.run_id}",
        data=_who_and_how(dag_run),
    )


def _run_finished(dag_run: Any, state: str, msg: str | None) -> None:
    recorder.record(
        RUN_FINISHED,
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        key=f"{RUN_FINISHED}|{dag_run.dag_id}|{dag_run.run_id}",
        data={
            "state": state,
            "message": msg,
            **_timing(dag_run),
            **_who_and_how(dag_run),
        },
    )


def _step_try(task_instance: Any, state: str, error: Any = None) -> None:
    ti = task_instance
    map_index = getattr(ti, "map_index", -1)
    try_number = getattr(ti, "try_number", None)
    message = None
    if isinstance(error, BaseException):
        message = f"{type(error).__name__}: {first_line(error)}"
    elif error:
        message = str(error).strip().splitlines()[0]
    recorder.record(
        STEP_TRY,
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        key=f"{STEP_TRY}|{ti.dag_id}|{ti.run_id}|{ti.task_id}|{map_index}|{try_number}",
        task_id=ti.task_id,
        map_index=map_index,
        try_number=try_number,
        data={
            "state": state,
            "error": message,
            **_timing(ti),
            "hostname": getattr(ti, "hostname", None) or socket.gethostname(),
        },
    )


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    _guarded(RUN_STARTED, _run_started, dag_run)


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    _guarded(RUN_FINISHED, _run_finished, dag_run, "success", msg)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _guarded(RUN_FINISHED, _run_finished, dag_run, "failed", msg)


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    _guarded(STEP_TRY, _step_try, task_instance, "success")


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    _guarded(STEP_TRY, _step_try, task_instance, "failed", error)


@hookimpl
def on_task_instance_skipped(previous_state: Any, task_instance: Any) -> None:
    _guarded(STEP_TRY, _step_try, task_instance, "skipped")
