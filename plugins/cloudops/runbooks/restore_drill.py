"""# Restore drill: `restore_drill__<database>`

**What it does.** Proves the latest backup can be restored, the way auditors ask for it. After each
backup (on the backup's Asset) or on the catalog's cron:
1. `prepare` drops scratch databases left by a drill killed half-way, chooses the backup (the latest
   complete one by default) and checks its manifest is the one of that backup folder;
2. `restore` downloads every object, checking its size and SHA-256 against the manifest as it arrives
   (a flipped byte, a truncated or missing object fails here, **before any restore**), and restores
   into a scratch database named after the run (`pg_restore -j 2` or `mariadb`);
3. `validate` compares the restored schema fingerprint and per-table row counts with the manifest and
   runs the database's expectation suite (`include/expectations/<database>.json`, with Great
   Expectations): keys not null and unique, newest rows within the RPO, whatever the owner declares;
4. `teardown` always drops the scratch database, whatever happened before;
5. `record` measures RTO (restore + validation) and RPO (the backup's age), compares them with the
   catalog's targets, logs the drill record as a table, stores it as JSON in S3 beside the backups
   (`<prefix>/<estate>/_drills/<database>/<backup_id>/`) and in the local evidence folder, and
   **fails the run when any check failed or a target was missed**.

**What a failure means.** The backup named in the record cannot be trusted as it is: a checksum
mismatch or missing object means the stored backup is damaged; a failed check means the restored
data differs from what was backed up (or breaks the owner's expectations); a missed RTO means a real
restore would take longer than promised; a missed RPO means backups are older than promised.

**What to do next.** Read the record table in the `record` task's log. Damaged backup: take a new
backup now (trigger `backup__<database>`) and find out what altered the stored objects. Failed
checks: compare the failing tables with the source. Missed targets: raise them with the owner, or
speed up the restore path. The drill never touches the source database; re-running is safe.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.catalog import Database, LoadedCatalog
from cloudops.errors import CloudOpsError
from cloudops.runbooks.backup import backed_up_database

if TYPE_CHECKING:
    from airflow.sdk import DAG

log = logging.getLogger(__name__)

KIND = "restore_drill"
EVIDENCE_ENV = "CLOUDOPS_EVIDENCE_DIR"
DRILLS_FOLDER = "_drills"  # never a catalog name (they start with a letter), so never a backup folder
NEXT_ACTIONS = {
    "prepare": "check the repository and the backup listing (cloudops backups list <database>)",
    "restore": "a damaged or missing object fails here: take a new backup now and find what altered it",
    "validate": "read the failed checks in the log and compare those tables with the source",
    "record": "read the drill record in the record task's log: failed checks or missed RTO/RPO targets",
    "*": "read the task log",
}


def evidence_dir() -> Path:
    """Where drill records are kept locally for the evidence ledger to collect."""
    default = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "cloudops-evidence"
    return Path(os.environ.get(EVIDENCE_ENV) or default)


def scratch_conn_id(database: Database) -> str:
    """The server that receives scratch restores: the drill policy's, else the database's own."""
    return (database.drill.scratch_conn_id if database.drill else None) or database.conn_id


def engine_for(database: Database) -> Any:
    """The engine module (postgres or mariadb) that restores and drops databases of ``database``."""
    from cloudops.engines import mariadb, postgres

    return mariadb if database.engine == "mariadb" else postgres


def prepare(
    catalog_file: str, estate: str, database_name: str, *, run_id: str, backup_id: str
) -> dict[str, Any]:
    """Drop leftover scratch databases, choose the backup and check its manifest belongs to it."""
    from cloudops.engines.scratch import scratch_name
    from cloudops.restore.fetch import choose_backup, verify_manifest_matches
    from cloudops.runbooks.backup import open_repository

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    engine, conn_id, used_by = engine_for(database), scratch_conn_id(database), f"database {database_name!r}"
    for leftover in engine.leftover_scratch_databases(conn_id, database.name, used_by=used_by):
        log.info("dropping %s, left by an earlier drill that did not finish", leftover)
        engine.drop_database(conn_id, leftover, used_by=used_by)
    store = open_repository(catalog, database)
    chosen = choose_backup(store, database.name, backup_id)
    if chosen.manifest is None:
        raise CloudOpsError(f"backup {chosen.backup_id} of {database.name} has no readable manifest")
    verify_manifest_matches(store, database.name, chosen.backup_id, chosen.manifest)
    scratch = scratch_name(database.name, run_id)
    log.info("drill of backup %s of %s into scratch database %s", chosen.backup_id, database.name, scratch)
    return {"backup_id": chosen.backup_id, "scratch": scratch, "started_at": datetime.now(UTC).isoformat()}


def restore(
    catalog_file: str, estate: str, database_name: str, *, backup_id: str, scratch: str
) -> dict[str, Any]:
    """Download and verify every object, then restore into the scratch database; return the timings."""
    from cloudops.restore.fetch import fetch_backup
    from cloudops.runbooks.backup import open_repository

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    store = open_repository(catalog, database)
    manifest = store.read_manifest(database.name, backup_id)
    if manifest.method != "logical":
        raise CloudOpsError(
            f"backup {backup_id} of {database.name} is {manifest.method}: drills restore logical backups "
            "(physical restores into a scratch instance are not implemented yet)"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cloudops-drill-") as workdir:
        dump = fetch_backup(store, manifest, Path(workdir))
        log.info("every object matches the manifest: %s", [o.name for o in manifest.objects])
        engine_for(database).restore_logical(
            scratch_conn_id(database), scratch, dump, used_by=f"database {database_name!r}"
        )
    return {
        "restore_seconds": time.monotonic() - started,
        "checksums": [{"object": o.name, "sha256": o.sha256, "ok": True} for o in manifest.objects],
    }


def validate(
    catalog_file: str, estate: str, database_name: str, *, backup_id: str, scratch: str
) -> dict[str, Any]:
    """Compare the scratch copy with the manifest and run the expectation suite; return every check."""
    from cloudops.restore.validation import compare_with_manifest, run_expectation_suite, suite_path
    from cloudops.runbooks.backup import open_repository

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    manifest = open_repository(catalog, database).read_manifest(database.name, backup_id)
    conn_id, used_by = scratch_conn_id(database), f"scratch copy of {database_name!r}"
    started = time.monotonic()
    checks = compare_with_manifest(conn_id, database.engine, scratch, manifest, used_by=used_by)
    suite = suite_path(database.name)
    if suite.exists():
        checks += run_expectation_suite(
            conn_id,
            database.engine,
            scratch,
            suite,
            rpo=database.rpo or timedelta(days=1),
            backup_time=manifest.started_at,
            used_by=used_by,
        )
    else:
        log.warning("no expectation suite at %s: only the manifest checks ran", suite)
    return {
        "checks": [c.model_dump(mode="json") for c in checks],
        "validation_seconds": time.monotonic() - started,
    }


def teardown(catalog_file: str, estate: str, database_name: str, *, scratch: str | None) -> None:
    """Drop the scratch database; the drill's checks are already recorded."""
    if not scratch:
        log.info("no scratch database was named: nothing to drop")
        return
    _, database = backed_up_database(catalog_file, estate, database_name)
    dropped = engine_for(database).drop_database(
        scratch_conn_id(database), scratch, used_by=f"scratch copy of {database_name!r}"
    )
    log.info("scratch database %s %s", scratch, "dropped" if dropped else "did not exist")


def record_drill(
    catalog_file: str,
    estate: str,
    database_name: str,
    *,
    run_id: str,
    prepared: dict[str, Any] | None,
    restored: dict[str, Any] | None,
    validated: dict[str, Any] | None,
    error: str | None = None,
) -> dict[str, Any]:
    """Build, log and store the drill record; raise when the drill did not pass.

    :raises CloudOpsError: a step failed, a check failed or a target was missed.
    """
    from cloudops.restore.record import Check, DrillRecord, ObjectChecksum
    from cloudops.runbooks.backup import open_repository

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    if prepared is None:
        raise CloudOpsError(
            f"the drill of {database_name} stopped before choosing a backup: see prepare's log"
        )
    store = open_repository(catalog, database)
    manifest = store.read_manifest(database.name, prepared["backup_id"])
    missing = [name for name, step in (("restore", restored), ("validate", validated)) if step is None]
    record = DrillRecord(
        estate=estate,
        database=database.name,
        engine=database.engine,
        backup_id=prepared["backup_id"],
        backup_time=manifest.started_at,
        run_id=run_id,
        scratch_target=prepared["scratch"],
        checksums=[ObjectChecksum(**c) for c in (restored or {}).get("checksums", [])],
        checks=[Check(**c) for c in (validated or {}).get("checks", [])],
        restore_seconds=(restored or {}).get("restore_seconds"),
        validation_seconds=(validated or {}).get("validation_seconds"),
        rto_target_seconds=database.rto.total_seconds() if database.rto else None,
        rpo_target_seconds=database.rpo.total_seconds() if database.rpo else None,
        error=error or (f"step(s) {', '.join(missing)} failed: see their logs" if missing else None),
        started_at=datetime.fromisoformat(prepared["started_at"]),
        finished_at=datetime.now(UTC),
    )
    log.info("restore drill record:\n%s", record.to_table())
    text = record.to_json()
    run_name = run_id.replace(":", "_").replace("+", "_")
    folder = "/".join(
        p for p in (store.prefix.strip("/"), estate, DRILLS_FOLDER, database.name, record.backup_id) if p
    )
    key = f"{folder}/{run_name}.json"
    from cloudops.repository.pipeline import encryption_args, upload_bytes

    upload_bytes(
        store.client,
        store.bucket,
        key,
        text.encode(),
        extra_args=encryption_args(store.repository.encryption),
        content_type="application/json",
    )
    local = evidence_dir() / "drills" / estate / database.name / f"{key.rsplit('/', 1)[-1]}"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(text)
    log.info("drill record stored at s3://%s/%s and %s", store.bucket, key, local)
    if not record.passed:
        failed = [c.name for c in record.failed_checks]
        raise CloudOpsError(
            f"restore drill of {database.name} (backup {record.backup_id}) failed: "
            + "; ".join(
                filter(
                    None,
                    [
                        record.error,
                        f"failed checks: {', '.join(failed)}" if failed else None,
                        None if record.targets_met else "RTO/RPO target missed",
                    ],
                )
            )
        )
    return {"record": f"s3://{store.bucket}/{key}", "passed": True}


def _ti_pull(context: dict[str, Any], task_id: str) -> Any:
    return context["ti"].xcom_pull(task_ids=task_id)


def _prepare_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    return prepare(catalog_file, estate, database_name, run_id=context["run_id"], backup_id="latest")


def _restore_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    prepared = _ti_pull(context, "prepare")
    return restore(
        catalog_file, estate, database_name, backup_id=prepared["backup_id"], scratch=prepared["scratch"]
    )


def _validate_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    prepared = _ti_pull(context, "prepare")
    return validate(
        catalog_file, estate, database_name, backup_id=prepared["backup_id"], scratch=prepared["scratch"]
    )


def _teardown_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> None:
    prepared = _ti_pull(context, "prepare")
    teardown(catalog_file, estate, database_name, scratch=(prepared or {}).get("scratch"))


def _record_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    return record_drill(
        catalog_file,
        estate,
        database_name,
        run_id=context["run_id"],
        prepared=_ti_pull(context, "prepare"),
        restored=_ti_pull(context, "restore"),
        validated=_ti_pull(context, "validate"),
    )


def build_restore_drill_dags(loaded: LoadedCatalog) -> list[DAG]:
    """Build ``restore_drill__<database>`` for every database with a backup and a drill policy."""
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG

    from cloudops.notifications import RunbookFailureNotifier
    from cloudops.runbooks.backup import backup_asset
    from cloudops.runbooks.common import default_args, runbook_doc, start_date, tags

    catalog, dags = loaded.catalog, []
    for database in catalog.databases:
        if database.backup is None or database.drill is None:
            continue
        op_kwargs = {
            "catalog_file": str(loaded.path),
            "estate": catalog.estate,
            "database_name": database.name,
        }
        notifier = RunbookFailureNotifier(
            catalog_file=str(loaded.path),
            estate=catalog.estate,
            target=f"database {database.name}",
            next_actions=NEXT_ACTIONS,
        )
        schedule: Any = (
            [backup_asset(catalog, database)]
            if database.drill.schedule == "on_backup"
            else database.drill.schedule
        )
        with DAG(
            dag_id=f"{KIND}__{database.name}",
            description=f"Restore the latest backup of {database.name} into a scratch database and prove it.",
            schedule=schedule,
            start_date=start_date(catalog.timezone),
            catchup=False,
            max_active_runs=1,
            dagrun_timeout=timedelta(hours=8),
            default_args={
                **default_args(catalog.owner, retries=1, execution_timeout=timedelta(hours=4)),
                "on_failure_callback": [notifier],
            },
            doc_md=runbook_doc(
                __doc__,
                f"## This database: `{database.name}` ({database.engine})\n\n"
                f"Scratch restores on connection `{scratch_conn_id(database)}`; RTO target "
                f"{database.rto or 'none'}, RPO target {database.rpo or 'none'}.\n\n"
                f"On call: **{catalog.owner}**.",
            ),
            tags=tags(KIND, loaded, database.engine),
        ) as dag:

            def task(task_id: str, callable_: Any, kwargs: dict[str, str] = op_kwargs, **extra: Any) -> Any:
                return PythonOperator(task_id=task_id, python_callable=callable_, op_kwargs=kwargs, **extra)

            prepare_task = task("prepare", _prepare_task)
            restore_task = task("restore", _restore_task)
            validate_task = task("validate", _validate_task)
            # Scratch databases never leak, and the verdict is recorded whatever failed before.
            teardown_task = task("teardown", _teardown_task, trigger_rule="all_done", retries=2)
            record_task = task("record", _record_task, trigger_rule="all_done", retries=0)
            prepare_task >> restore_task >> validate_task >> teardown_task >> record_task
        dags.append(dag)
    return dags


__all__ = [
    "build_restore_drill_dags",
    "engine_for",
    "evidence_dir",
    "prepare",
    "record_drill",
    "restore",
    "teardown",
    "validate",
]
