"""Writing evidence without ever failing a runbook: the one way the listener and the runbooks record.

An error while recording (a full disk, an unwritable evidence folder, a broken ledger) must never
fail the runbook whose evidence it is. It is logged loudly (ERROR, with ``EVIDENCE NOT RECORDED``),
counted in the Airflow metric ``cloudops.evidence.record_errors`` and in
``<evidence dir>/record-errors.jsonl`` (one line per lost record: when, which kind and run, why),
which ``cloudops evidence verify`` reports. Every record's ``data`` passes through
``cloudops.secrets.mask_evidence``: our own key and value rules, then Airflow's secrets masker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from cloudops.evidence.backend import (
    DB_SCHEMA_ENV,
    EvidenceLedger,
    configured_backend,
    db_conn_id,
    open_ledger,
)
from cloudops.evidence.ledger import Ledger, Record, canonical_json, evidence_dir, utc_stamp
from cloudops.evidence.runs import RUN_FINISHED, RUN_STARTED, runbook_of
from cloudops.secrets import mask_evidence

log = logging.getLogger("cloudops.evidence")

ERRORS_FILE = "record-errors.jsonl"
_ledgers: dict[tuple[str, str], EvidenceLedger] = {}


def ledger() -> EvidenceLedger:
    """The ledger this process records to: the configured backend (``backend.py``), the file ledger of
    its evidence folder by default. One object per ledger: it caches the tail, or the connection."""
    if configured_backend() == "postgres":
        where = ("postgres", f"{db_conn_id()}/{os.environ.get(DB_SCHEMA_ENV, '')}")
        if where not in _ledgers:
            _ledgers[where] = open_ledger(backend="postgres")
        return _ledgers[where]
    directory = evidence_dir() / "ledger"
    if ("file", str(directory)) not in _ledgers:
        _ledgers["file", str(directory)] = Ledger(directory)
    return _ledgers["file", str(directory)]


def record(
    kind: str,
    *,
    dag_id: str | None,
    run_id: str | None,
    key: str | None = None,
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> Record | None:
    """Append one record for a run; never raises. Returns it, or None when not written."""
    try:
        runbook, target = runbook_of(dag_id) if dag_id else (None, None)
        body = {
            "dag_id": dag_id,
            "run_id": run_id,
            "runbook": runbook,
            "target": target,
            **fields,
            "data": mask_evidence(_json_safe(data or {})),
        }
        return ledger().append(kind, key=key, **body)
    except Exception as error:
        count_error(kind, dag_id, run_id, error)
        return None


def record_fact(kind: str, context: dict[str, Any], data: dict[str, Any], *, key: str | None = None) -> None:
    """Record a runbook's own fact (a backup taken, a drill's result...) from inside a task.

    :param context: the task's Airflow context, or the context of a ``cloudops`` command
        (:func:`cli_run`), whose ``triggered_by`` and ``triggered_by_user`` the record carries.
    """
    ti = context.get("ti") or context.get("task_instance")
    dag_id = (
        getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", None) or context.get("dag_id")
    )
    run_id = context.get("run_id") or getattr(ti, "run_id", None)
    task_id = getattr(ti, "task_id", None) or context.get("task_id")
    who = {field: context[field] for field in ("triggered_by", "triggered_by_user") if field in context}
    written = record(
        kind,
        dag_id=dag_id,
        run_id=run_id,
        key=key or f"{kind}|{dag_id}|{run_id}|{task_id}|{_digest(data)}",
        data=data,
        task_id=task_id,
        **who,
    )
    if written:
        log.info("evidence recorded: %s (seq %s, hash %s)", kind, written.seq, written.hash[:12])


def os_user() -> str:
    """The effective OS user of this process (from the password database, not from $USER)."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


@contextmanager
def cli_run(dag_id: str, *, conf: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Record a ``cloudops`` command doing a runbook's work outside Airflow as a run of that runbook.

    Writes ``run.started`` now and ``run.finished`` when the block ends (success; failed with the
    error's first line, or when the block set ``context["exit_code"]`` to anything but 0), both with
    ``triggered_by`` ``cli``, the OS user and the host, so that the ledger, reports and the auditor
    view show the command like a manual DAG run. Recording never raises; the block's errors pass on.

    :param dag_id: the runbook's DAG id, e.g. ``backup__orders_pg``.
    :param conf: the command's options, recorded as the run's parameters (secrets masked).
    :return: yields the context to pass to :func:`record_fact` (and to the runbook functions).
    """
    started = datetime.now(UTC)
    run_id = f"cli__{utc_stamp(started)}"
    user = os_user()
    who = {
        "run_type": "manual",
        "triggered_by": "cli",
        "triggered_by_user": user,
        "conf": dict(conf or {}),
        "logical_date": None,
        "hostname": socket.gethostname(),
    }
    record(RUN_STARTED, dag_id=dag_id, run_id=run_id, key=f"{RUN_STARTED}|{dag_id}|{run_id}", data=who)
    context = {"dag_id": dag_id, "run_id": run_id, "triggered_by": "cli", "triggered_by_user": user}
    state, message = "failed", None
    try:
        yield context
        state = "success" if context.get("exit_code") in (None, 0) else "failed"
    except BaseException as error:
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise
    finally:
        finished = datetime.now(UTC)
        record(
            RUN_FINISHED,
            dag_id=dag_id,
            run_id=run_id,
            key=f"{RUN_FINISHED}|{dag_id}|{run_id}",
            data={
                "state": state,
                "message": message,
                "started_at": started.isoformat(),
                "finished_at": finished.isoformat(),
                "duration_seconds": (finished - started).total_seconds(),
                **who,
            },
        )


def count_error(kind: str, dag_id: str | None, run_id: str | None, error: BaseException) -> None:
    """Log an evidence record that could not be written, loudly, and count it."""
    log.error(
        "EVIDENCE NOT RECORDED: %s of %s / %s: %s: %s (the runbook goes on; "
        "see %s and `cloudops evidence verify`)",
        kind,
        dag_id,
        run_id,
        type(error).__name__,
        error,
        evidence_dir() / ERRORS_FILE,
        exc_info=error,
    )
    try:
        from airflow.observability.stats import Stats

        Stats.incr("cloudops.evidence.record_errors")
    except Exception:
        pass
    try:
        line = {
            "at": datetime.now(UTC).isoformat(),
            "kind": kind,
            "dag_id": dag_id,
            "run_id": run_id,
            "error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        path = evidence_dir() / ERRORS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
    except Exception:
        log.error("EVIDENCE NOT RECORDED and the error count could not be written either")


def recorded_errors() -> list[dict[str, Any]]:
    """The records that could not be written, as counted by count_error."""
    path = evidence_dir() / ERRORS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(_json_safe(data))).hexdigest()[:16]


def _json_safe(value: Any) -> Any:
    """Dates as ISO text, tuples as lists, anything else unknown as its text."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


__all__ = ["cli_run", "count_error", "ledger", "os_user", "record", "record_fact", "recorded_errors"]
