"""# Nightly backup: `backup__<database>`

**What it does.** On the catalog's schedule (in the estate's time zone), dumps the database and
streams the dump through zstd and SHA-256 into the backup repository (S3), never holding the whole
dump on local disk. PostgreSQL: `pg_dump` custom format (logical) or `pg_basebackup` with WAL
(physical). MariaDB: `mariadb-dump --single-transaction`, recording the binlog position. Row counts
and a schema fingerprint are taken from the same snapshot as the dump. Each object gets Object Lock
retention when the repository has it. The `manifest.json` is written **last**: a backup without one
is incomplete, never counted, never restored. A database on RDS also gets an RDS snapshot tagged
with the backup id. Then retention applies the catalog's policy to backups and snapshots alike.
A successful backup updates the database's backup Asset, which schedules its restore drill.

**What a failure means.**
- `take_backup` failed: **no new backup exists** (nothing without a manifest is ever used); the
  earlier backups are untouched. The message names the step (dump, upload, lock, manifest).
- `apply_retention` failed: the new backup is safe; old backups may not have been pruned yet.
  A refusal ("refusing to delete N of M") means the policy would delete more than the allowed
  share in one run: that is a safety stop, not a bug.
- A Deadline Alert means the backup had not finished by the catalog's deadline.

**What to do next.**
- Dump errors: is the database up (`health_check__<estate>`), is the connection right, is the client
  tool at least as new as the server? Then clear `take_backup` to retry.
- Upload errors: is the S3 endpoint reachable, does the bucket exist, do the credentials allow
  multipart uploads and object retention? Retrying is safe: a failed attempt leaves no manifest.
- Retention refusal: check the policy and the listing (`cloudops backups list <database>`), then
  trigger the DAG with `allow_large_delete` if the deletions are intended. Use `retention_dry_run`
  to see the plan without deleting anything.

Re-running is always safe: every run makes a new backup id and never touches older backups
except through retention, which never deletes the newest complete backup or a locked one.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.catalog import Catalog, Database, LoadedCatalog
from cloudops.errors import CloudOpsError
from cloudops.health import render_table
from cloudops.runbooks.common import load_estate

if TYPE_CHECKING:
    from airflow.sdk import DAG, Asset

    from cloudops.engines import BackupSource
    from cloudops.repository.s3 import BackupRepository

log = logging.getLogger(__name__)

KIND = "backup"
# The longest a dump and its upload may take; the task's own timeout is longer, so that this bound
# (which kills the dump and aborts the upload cleanly) is the one that fires.
DUMP_TIMEOUT = timedelta(hours=5)
RDS_SNAPSHOT_WAIT = timedelta(hours=1)
NEXT_ACTIONS = {
    "take_backup": "check the database is up and reachable (health_check) and the S3 endpoint, then "
    "clear take_backup to retry; no incomplete backup is ever used",
    "snapshot_rds": "the dump is safe in S3; check the RDS instance's state and the snapshot in the AWS "
    "console, then clear snapshot_rds to retry",
    "apply_retention": "the new backup is safe; check the retention plan in the task log, then clear "
    "apply_retention (trigger with allow_large_delete only if the deletions are intended)",
    "*": "read the task log",
}


def backup_asset(catalog: Catalog, database: Database) -> Asset:
    """The Asset a successful backup of ``database`` updates; restore drills schedule on it.

    The URI uses a private ``x-`` scheme: any other scheme makes Airflow load every provider's
    asset URI handlers (the amazon one imports boto3) while parsing the DAG file.
    """
    from airflow.sdk import Asset

    return Asset(
        name=f"backup__{database.name}", uri=f"x-cloudops://backups/{catalog.estate}/{database.name}"
    )


def backed_up_database(catalog_file: str, estate: str, database_name: str) -> tuple[Catalog, Database]:
    """The catalog and the database a task acts on, which must have a backup policy."""
    catalog = load_estate(catalog_file, estate)
    database = catalog.database(database_name)
    if database.backup is None:
        raise CloudOpsError(f"database {database_name!r} has no backup policy in {catalog_file}")
    return catalog, database


def open_repository(catalog: Catalog, database: Database) -> BackupRepository:
    """The repository that holds ``database``'s backups, reached through its cloud's connection."""
    from cloudops.repository.s3 import BackupRepository

    assert database.backup is not None
    repository = catalog.repository(database.backup.repository)
    return BackupRepository(repository, aws_conn_id=aws_conn_id_of(catalog, database), estate=catalog.estate)


def backup_source(database: Database, workdir: Path) -> AbstractContextManager[BackupSource]:
    """What to run to dump ``database`` with its policy's method, and the facts to record."""
    from cloudops.engines import mariadb, postgres

    assert database.backup is not None
    used_by = f"database {database.name!r}"
    if database.engine == "mariadb":
        if database.backup.method != "logical":
            raise CloudOpsError(f"{used_by}: MariaDB backups are logical only")
        return mariadb.logical_backup_source(
            database.conn_id,
            database.database,
            used_by=used_by,
            workdir=workdir,
            max_lock_wait_seconds=int(database.backup.max_lock_wait.total_seconds()),
        )
    if database.backup.method == "physical":
        return postgres.physical_backup_source(database.conn_id, used_by=used_by, workdir=workdir)
    return postgres.logical_backup_source(
        database.conn_id, database.database, used_by=used_by, workdir=workdir
    )


def take_backup(
    catalog_file: str, estate: str, database_name: str, *, run_id: str | None = None
) -> dict[str, Any]:
    """Dump, compress, hash and upload one backup; lock it; write its manifest last.

    :return: the manifest as JSON-ready data (no secrets), for the XCom record.
    :raises CloudOpsError: naming the step that failed; no manifest exists then.
    """
    from cloudops.repository.layout import new_backup_id
    from cloudops.repository.manifest import Compression, Manifest, ManifestEncryption

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    policy = database.backup
    assert policy is not None
    repository = catalog.repository(policy.repository)
    store = open_repository(catalog, database)
    started = datetime.now(UTC)
    backup_id = new_backup_id(started)
    log.info(
        "backup %s of database %s (%s, %s) into s3://%s/%s",
        backup_id,
        database.name,
        database.engine,
        policy.method,
        repository.bucket,
        repository.prefix,
    )
    with (
        tempfile.TemporaryDirectory(prefix="cloudops-backup-") as workdir,
        backup_source(database, Path(workdir)) as source,
    ):
        log.info("running %s", source.command.description)
        stored = store.store_object(
            database.name, backup_id, source.command, level=policy.compression_level, timeout=DUMP_TIMEOUT
        )
        facts = {**source.facts, **source.finish()}
    finished = datetime.now(UTC)
    object_lock = store.object_lock_for(finished)
    if object_lock is not None:
        log.info("locking %s in %s mode until %s", stored.key, object_lock.mode, object_lock.retain_until)
        store.apply_object_lock([stored.key], mode=object_lock.mode, retain_until=object_lock.retain_until)
    manifest = Manifest(
        backup_id=backup_id,
        estate=estate,
        database=database.name,
        engine=database.engine,
        engine_version=str(facts["engine_version"]),
        method=policy.method,
        format=source.command.format,
        started_at=started,
        finished_at=finished,
        raw_bytes=stored.raw_bytes,
        compressed_bytes=stored.size,
        objects=[stored],
        compression=Compression(algorithm="zstd", level=policy.compression_level),
        encryption=ManifestEncryption(**repository.encryption.model_dump(exclude_none=True)),
        object_lock=object_lock,
        row_counts=facts.get("row_counts", {}),
        schema_fingerprint=facts.get("schema_fingerprint"),
        position=facts.get("position", {}),
        tool_versions=facts.get("tool_versions", {}),
        airflow_run_id=run_id,
        tags=[policy.method],
    )
    store.write_manifest(manifest)
    log.info(
        "backup %s complete: %d bytes raw, %d stored, sha256 %s",
        backup_id,
        stored.raw_bytes,
        stored.size,
        stored.sha256,
    )
    return manifest.model_dump(mode="json")


def aws_conn_id_of(catalog: Catalog, database: Database) -> str:
    """The AWS connection of the cloud that holds ``database``'s backup repository (and its RDS instance)."""
    assert database.backup is not None
    repository = catalog.repository(database.backup.repository)
    return next(cloud.aws_conn_id for cloud in catalog.clouds if cloud.name == repository.cloud)


def snapshot_rds(catalog_file: str, estate: str, database_name: str, *, backup_id: str) -> dict[str, Any]:
    """Take an RDS snapshot of the database's instance, tagged with the backup id; wait (bounded).

    :raises CloudOpsError: the instance is missing, the snapshot failed, or the wait ran out.
    """
    from cloudops.clouds.aws import snapshot_rds_instance

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    if not database.rds_instance_id:
        raise CloudOpsError(f"database {database_name!r} has no rds_instance_id in {catalog_file}")
    snapshot = snapshot_rds_instance(
        aws_conn_id_of(catalog, database),
        database.rds_instance_id,
        backup_id=backup_id,
        estate=estate,
        database=database.name,
        wait_timeout=RDS_SNAPSHOT_WAIT,
    )
    log.info("RDS snapshot %s of %s is %s", snapshot.snapshot_id, database.rds_instance_id, snapshot.status)
    return {"snapshot_id": snapshot.snapshot_id, "backup_id": backup_id, "status": snapshot.status}


def apply_retention(
    catalog_file: str, estate: str, database_name: str, *, dry_run: bool, allow_large_delete: bool
) -> dict[str, Any]:
    """Plan retention with the catalog's policy, log the plan, then delete (unless a dry run).

    :raises RetentionRefused: when the plan would delete more than the policy's share in one run.
    """
    from cloudops.repository.retention import plan_retention

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    policy = database.backup
    assert policy is not None
    store = open_repository(catalog, database)
    records = store.as_retention_records(store.list_backups(database.name))
    plan = plan_retention(
        records,
        policy.retention,
        max_delete_share=policy.max_delete_share,
        allow_large_delete=allow_large_delete,
    )
    rows = [[backup_id, "keep", "; ".join(plan.reasons[backup_id])] for backup_id in plan.keep]
    rows += [[backup_id, "DELETE", "; ".join(plan.reasons[backup_id])] for backup_id in plan.delete]
    log.info(
        "retention plan for %s (%d keep, %d delete%s):\n%s",
        database.name,
        len(plan.keep),
        len(plan.delete),
        ", dry run" if dry_run else "",
        render_table(["backup", "decision", "reasons"], rows) if rows else "(no backups)",
    )
    deleted: list[str] = []
    for backup_id in plan.delete:
        store.delete_backup(database.name, backup_id, dry_run=dry_run)
        if not dry_run:
            deleted.append(backup_id)
    result: dict[str, Any] = {**plan.to_json(), "deleted": deleted, "dry_run": dry_run}
    if database.rds_instance_id:
        result["rds_snapshots"] = _apply_rds_snapshot_retention(
            catalog, database, dry_run=dry_run, allow_large_delete=allow_large_delete
        )
    if dry_run:
        log.info("dry run: nothing deleted")
    return result


def _apply_rds_snapshot_retention(
    catalog: Catalog, database: Database, *, dry_run: bool, allow_large_delete: bool
) -> dict[str, Any]:
    """The same policy and safety rules for the database's RDS snapshots as for its backups."""
    from cloudops.clouds.aws import (
        apply_cloud_snapshot_retention,
        list_cloud_snapshots,
        plan_cloud_snapshot_retention,
    )

    assert database.backup is not None
    aws_conn_id = aws_conn_id_of(catalog, database)
    snapshots = list_cloud_snapshots(aws_conn_id, estate=catalog.estate, kind="rds", database=database.name)
    plans = plan_cloud_snapshot_retention(
        snapshots,
        database.backup.retention,
        max_delete_share=database.backup.max_delete_share,
        allow_large_delete=allow_large_delete,
    )
    deleted = apply_cloud_snapshot_retention(aws_conn_id, plans, dry_run=dry_run)
    return {
        "keep": [backup_id for group in plans for backup_id in group.plan.keep],
        "delete": [backup_id for group in plans for backup_id in group.plan.delete],
        "deleted": deleted,
    }


def _take_backup_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    from cloudops.evidence.recorder import record_fact
    from cloudops.evidence.runs import BACKUP_TAKEN

    manifest = take_backup(catalog_file, estate, database_name, run_id=context["run_id"])
    record_fact(BACKUP_TAKEN, context, backup_evidence(manifest))
    return manifest


def backup_evidence(manifest: dict[str, Any]) -> dict[str, Any]:
    """The ledger's ``backup.taken`` facts of a manifest (as returned by take_backup)."""
    lock = manifest.get("object_lock") or {}
    return {
        "estate": manifest["estate"],
        "database": manifest["database"],
        "engine": manifest["engine"],
        "method": manifest["method"],
        "backup_id": manifest["backup_id"],
        "started_at": manifest["started_at"],
        "finished_at": manifest["finished_at"],
        "size_bytes": manifest["compressed_bytes"],
        "raw_bytes": manifest["raw_bytes"],
        "objects": [{k: o.get(k) for k in ("key", "size", "sha256")} for o in manifest["objects"]],
        "locked_until": lock.get("retain_until"),
        "lock_mode": lock.get("mode"),
    }


def _snapshot_rds_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    backup = context["ti"].xcom_pull(task_ids="take_backup")
    return snapshot_rds(catalog_file, estate, database_name, backup_id=backup["backup_id"])


def _retention_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    params = context["params"]
    return apply_retention(
        catalog_file,
        estate,
        database_name,
        dry_run=bool(params["retention_dry_run"]),
        allow_large_delete=bool(params["allow_large_delete"]),
    )


def _targets_doc(catalog: Catalog, database: Database) -> str:
    assert database.backup is not None
    policy, repository = database.backup, catalog.repository(database.backup.repository)
    lock = (
        f"{repository.object_lock.mode} for {repository.object_lock.days} days"
        if repository.object_lock
        else "none"
    )
    retention = ", ".join(f"{k} {v}" for k, v in policy.retention.model_dump(exclude_none=True).items())
    return (
        f"## This database: `{database.name}` ({database.engine}, {database.role})\n\n"
        f"| setting | value |\n|---|---|\n"
        f"| connection | `{database.conn_id}` |\n"
        f"| method | {policy.method}, zstd level {policy.compression_level} |\n"
        f"| schedule | `{policy.schedule}` ({catalog.timezone}), deadline {policy.deadline} |\n"
        f"| repository | `s3://{repository.bucket}/{repository.prefix}` ({repository.encryption.mode}) |\n"
        f"| object lock | {lock} |\n"
        f"| retention | {retention}; at most {policy.max_delete_share:.0%} deleted per run |\n\n"
        f"On call: **{catalog.owner}**."
    )


def _deadline_alert(loaded: LoadedCatalog, database: Database) -> Any:
    """Alert the estate's targets when the backup has not finished by the catalog's deadline."""
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    assert database.backup is not None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=database.backup.deadline,
        callback=AsyncCallback(
            "cloudops.notifications.deadline_missed",
            kwargs={
                "catalog_file": str(loaded.path),
                "estate": loaded.catalog.estate,
                "target": f"database {database.name}",
                "runbook": f"{KIND}__{database.name}",
                "deadline": str(database.backup.deadline),
                "next_action": "check whether take_backup is still running or stuck; see its log",
            },
        ),
    )


def build_backup_dags(loaded: LoadedCatalog) -> Iterator[DAG]:
    """Build ``backup__<database>`` for every database of the catalog that has a backup policy."""
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG, Param

    from cloudops.notifications import RunbookFailureNotifier
    from cloudops.runbooks.common import (
        deadline_alerts_enabled,
        default_args,
        runbook_doc,
        start_date,
        tags,
    )

    catalog = loaded.catalog
    for database in catalog.databases:
        policy = database.backup
        if policy is None:
            continue
        op_kwargs = {
            "catalog_file": str(loaded.path),
            "estate": catalog.estate,
            "database_name": database.name,
        }
        target = f"database {database.name}"
        notifier = RunbookFailureNotifier(
            catalog_file=str(loaded.path), estate=catalog.estate, target=target, next_actions=NEXT_ACTIONS
        )
        with DAG(
            dag_id=f"{KIND}__{database.name}",
            description=f"Back up {database.name} ({database.engine}, {policy.method}) to S3, then prune.",
            schedule=policy.schedule,
            start_date=start_date(catalog.timezone),
            catchup=False,
            max_active_runs=1,
            dagrun_timeout=timedelta(hours=12),
            default_args={
                **default_args(catalog.owner, retries=policy.retries, execution_timeout=timedelta(hours=6)),
                "on_failure_callback": [notifier],
            },
            deadline=_deadline_alert(loaded, database) if deadline_alerts_enabled() else None,
            params={
                "retention_dry_run": Param(
                    False,
                    type="boolean",
                    title="Retention dry run",
                    description="Log the retention plan but delete nothing.",
                ),
                "allow_large_delete": Param(
                    False,
                    type="boolean",
                    title="Allow a large delete",
                    description=(
                        f"Let retention delete more than {policy.max_delete_share:.0%} of the backups in "
                        "this run. Only after reading the plan of a dry run."
                    ),
                ),
            },
            doc_md=runbook_doc(__doc__, _targets_doc(catalog, database)),
            tags=tags(KIND, loaded, database.engine),
        ) as dag:
            # The variables carry a _task suffix: the task ids are the library functions' names.
            take_backup_task = PythonOperator(  # noqa: AIR001
                task_id="take_backup",
                python_callable=_take_backup_task,
                op_kwargs=op_kwargs,
                outlets=[backup_asset(catalog, database)],
            )
            apply_retention_task = PythonOperator(  # noqa: AIR001
                task_id="apply_retention",
                python_callable=_retention_task,
                op_kwargs=op_kwargs,
                execution_timeout=timedelta(hours=1),
            )
            if database.rds_instance_id:
                # After the dump, tagged with its backup id, so that retention prunes both together.
                snapshot_rds_task = PythonOperator(  # noqa: AIR001
                    task_id="snapshot_rds",
                    python_callable=_snapshot_rds_task,
                    op_kwargs=op_kwargs,
                    execution_timeout=RDS_SNAPSHOT_WAIT + timedelta(minutes=10),
                )
                take_backup_task >> snapshot_rds_task >> apply_retention_task
            else:
                take_backup_task >> apply_retention_task
        yield dag


__all__ = [
    "apply_retention",
    "aws_conn_id_of",
    "backed_up_database",
    "backup_asset",
    "build_backup_dags",
    "snapshot_rds",
    "take_backup",
]
