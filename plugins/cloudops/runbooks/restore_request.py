"""# On-demand restore: `restore_request`

**What it does.** Restores one backup of a catalog database into a **new** database on the same
server, from a form in the Airflow UI (Trigger DAG): pick the database, the backup (`latest` or a
backup id from `cloudops backups list <database>`), and the target database name. Then:
1. `check_request` refuses bad input before anything runs, naming the field: a database not in the
   catalog, a malformed backup id, a target that is the source database or the database of any
   catalog primary (unless the catalog sets `allow_restore_over` for it **and** the overwrite is
   confirmed), a point in time (not supported yet);
2. `restore` downloads the backup, checks every object's SHA-256 against the manifest before
   restoring, and restores into the target (`pg_restore -j 2` or `mariadb`); an existing target is
   never overwritten;
3. `verify` compares the restored schema fingerprint and row counts with the manifest.

**What a failure means.** `check_request`: the form was refused, nothing ran; read the message.
`restore`: a damaged backup or a failed restore; the target may hold a partial restore: drop it
before trying again. `verify`: the restored data differs from the backup's record.

**What to do next.** Fix the form's input and trigger again; for a damaged backup, pick an older
backup id. The same restore runs from a shell with `cloudops restore <database> --backup latest
--target NAME` when Airflow itself is down.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.catalog import Catalog, CatalogSet, Database, load_catalogs
from cloudops.catalog.errors import did_you_mean
from cloudops.errors import InvalidInputError

if TYPE_CHECKING:
    from airflow.sdk import DAG

log = logging.getLogger(__name__)

DAG_ID = "restore_request"
LATEST = "latest"
_BACKUP_ID = re.compile(r"^(latest|\d{8}T\d{6}Z-[0-9a-f]{6})$")
_TARGET = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class RestoreRequest:
    """A restore request that passed every check."""

    catalog_file: str
    estate: str
    database: str
    backup_id: str
    target: str


def check_request(
    catalogs: CatalogSet,
    *,
    database: str,
    backup_id: str = LATEST,
    target: str,
    point_in_time: str | None = None,
    confirm_overwrite: bool = False,
) -> RestoreRequest:
    """Check a restore request against the catalog; pure apart from reading the catalog set.

    :raises InvalidInputError: naming the field at fault and why.
    """
    found = [
        (loaded, d) for loaded in catalogs.catalogs for d in loaded.catalog.databases if d.name == database
    ]
    if not found:
        names = [d.name for loaded in catalogs.catalogs for d in loaded.catalog.databases]
        hint = did_you_mean(database, names)
        raise InvalidInputError(
            f"database: {database!r} is not in the catalog" + (f" ({hint})" if hint else "")
        )
    loaded, source = found[0]
    if source.backup is None:
        raise InvalidInputError(
            f"database: {database!r} has no backup policy, so it has no backups to restore"
        )
    if not _BACKUP_ID.match(backup_id or ""):
        raise InvalidInputError(
            f"backup_id: {backup_id!r} is neither 'latest' nor a backup id like 20261123T021500Z-1a2b3c"
        )
    if point_in_time:
        raise InvalidInputError(
            "point_in_time: point-in-time restores (PostgreSQL physical backups with WAL) are not supported "
            "yet; leave it empty to restore the backup as taken"
        )
    if not _TARGET.match(target or ""):
        raise InvalidInputError(
            f"target_database: {target!r} must be lower-case letters, digits and underscores, starting "
            "with a letter (at most 63 characters)"
        )
    protected = _protected_targets(loaded.catalog, source)
    if target in protected:
        what = protected[target]
        if not (source.allow_restore_over and confirm_overwrite):
            raise InvalidInputError(
                f"target_database: {target!r} is {what}: refusing to restore over it (the catalog must set "
                f"allow_restore_over for {source.name} and the overwrite must be confirmed)"
            )
        raise InvalidInputError(
            f"target_database: {target!r} is {what}: restoring over an existing database is not supported "
            "yet; restore into a new name and switch over"
        )
    return RestoreRequest(str(loaded.path), loaded.catalog.estate, source.name, backup_id, target)


def _protected_targets(catalog: Catalog, source: Database) -> dict[str, str]:
    """Database names a restore must never land on: the source, and every primary on the estate."""
    protected = {
        d.database: f"the database of catalog primary {d.name}"
        for d in catalog.databases
        if d.role == "primary"
    }
    protected[source.database] = f"the source database of {source.name}"
    return protected


def restore_backup(request: RestoreRequest) -> dict[str, Any]:
    """Download, verify and restore the requested backup into the new target database."""
    from cloudops.catalog import load_catalog_file
    from cloudops.restore.fetch import choose_backup, fetch_backup, verify_manifest_matches
    from cloudops.runbooks.backup import open_repository
    from cloudops.runbooks.restore_drill import engine_for

    catalog = load_catalog_file(request.catalog_file)
    database = catalog.database(request.database)
    store = open_repository(catalog, database)
    chosen = choose_backup(store, database.name, request.backup_id)
    if chosen.manifest is None:
        raise InvalidInputError(f"backup_id: backup {chosen.backup_id} of {database.name} has no manifest")
    manifest = chosen.manifest
    verify_manifest_matches(store, database.name, chosen.backup_id, manifest)
    if manifest.method != "logical":
        raise InvalidInputError(
            f"backup_id: {chosen.backup_id} is a {manifest.method} backup; on-demand restores take logical "
            "backups (physical restores are not implemented yet)"
        )
    log.info(
        "restoring backup %s of %s into new database %s", chosen.backup_id, database.name, request.target
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cloudops-restore-") as workdir:
        dump = fetch_backup(store, manifest, Path(workdir))
        engine_for(database).restore_logical(
            database.conn_id, request.target, dump, used_by=f"database {database.name!r}"
        )
    return {"backup_id": chosen.backup_id, "target": request.target, "seconds": time.monotonic() - started}


def verify_restore(request: RestoreRequest, backup_id: str) -> dict[str, Any]:
    """Compare the restored database with the backup's manifest; raise when any check failed."""
    from cloudops.catalog import load_catalog_file
    from cloudops.errors import CloudOpsError
    from cloudops.restore.validation import compare_with_manifest
    from cloudops.runbooks.backup import open_repository

    catalog = load_catalog_file(request.catalog_file)
    database = catalog.database(request.database)
    manifest = open_repository(catalog, database).read_manifest(database.name, backup_id)
    checks = compare_with_manifest(database.conn_id, database.engine, request.target, manifest)
    failed = [check.name for check in checks if not check.passed]
    for check in checks:
        log.info(
            "%s %s: expected %s, observed %s",
            "pass" if check.passed else "FAIL",
            check.name,
            check.expected,
            check.observed,
        )
    if failed:
        raise CloudOpsError(f"restored {request.target} differs from backup {backup_id}: {', '.join(failed)}")
    return {"checks": len(checks), "target": request.target, "backup_id": backup_id}


def _request_from_params(params: dict[str, Any]) -> RestoreRequest:
    return check_request(
        load_catalogs(),
        database=params["database"],
        backup_id=params["backup_id"],
        target=params["target_database"],
        point_in_time=params.get("point_in_time"),
        confirm_overwrite=bool(params.get("confirm_overwrite")),
    )


def _check_task(**context: Any) -> dict[str, str]:
    request = _request_from_params(context["params"])
    log.info("restore request accepted: %s", request)
    return request.__dict__


def _restore_task(**context: Any) -> dict[str, Any]:
    return restore_backup(RestoreRequest(**context["ti"].xcom_pull(task_ids="check_request")))


def _verify_task(**context: Any) -> dict[str, Any]:
    ti = context["ti"]
    restored = ti.xcom_pull(task_ids="restore")
    return verify_restore(RestoreRequest(**ti.xcom_pull(task_ids="check_request")), restored["backup_id"])


def build_restore_request_dag(catalogs: CatalogSet) -> DAG:
    """Build the one ``restore_request`` DAG, its form listing every catalog database with backups."""
    from datetime import timedelta

    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG, Param

    from cloudops.runbooks.common import default_args, runbook_doc

    names = sorted(d.name for loaded in catalogs.catalogs for d in loaded.catalog.databases if d.backup)
    owners = sorted({loaded.catalog.owner for loaded in catalogs.catalogs}) or ["cloudops"]
    with DAG(
        dag_id=DAG_ID,
        description="Restore a backup into a new database, from a form.",
        schedule=None,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(", ".join(owners), retries=1, execution_timeout=timedelta(hours=6)),
        doc_md=runbook_doc(__doc__),
        tags=["cloudops", DAG_ID],
        params={
            "database": Param(
                names[0] if names else "",
                type="string",
                enum=names or [""],
                title="Database",
                description="The catalog database whose backup to restore.",
            ),
            "backup_id": Param(
                LATEST,
                type="string",
                pattern=_BACKUP_ID.pattern,
                title="Backup",
                description="'latest', or a backup id from `cloudops backups list <database>`.",
            ),
            "point_in_time": Param(
                None,
                type=["null", "string"],
                format="date-time",
                title="Point in time",
                description="PostgreSQL physical backups with WAL only: not supported yet, leave empty.",
            ),
            "target_database": Param(
                type="string",
                pattern=_TARGET.pattern,
                title="Target database",
                description="A NEW database on the same server; never the source or a catalog primary.",
            ),
            "confirm_overwrite": Param(
                False,
                type="boolean",
                title="I confirm the target will be overwritten",
                description="Required, with the catalog's allow_restore_over, to restore over a database.",
            ),
        },
    ) as dag:
        check_request_task = PythonOperator(  # noqa: AIR001 - check_request is the library function
            task_id="check_request", python_callable=_check_task, retries=0
        )
        restore = PythonOperator(task_id="restore", python_callable=_restore_task)
        verify = PythonOperator(task_id="verify", python_callable=_verify_task, retries=0)
        check_request_task >> restore >> verify
    return dag


__all__ = ["RestoreRequest", "build_restore_request_dag", "check_request", "restore_backup", "verify_restore"]
