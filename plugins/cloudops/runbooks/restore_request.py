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
from datetime import UTC, datetime
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
# What the failure alert tells on-call to do, by step (the runbook text above says more).
NEXT_ACTIONS = {
    "check_request": "the form was refused and nothing ran: read the message, fix the input, trigger again",
    "restore": "a damaged backup or a failed restore: read the log; pick an older backup id if damaged",
    "verify": "the restored data differs from the backup's record: read the failed checks in the log",
    "approve_overwrite": "the approval was not given in time or was refused: nothing was overwritten",
    "put_in_place": "the swap did not complete: check the target and its _before_ copy NOW, see the log",
    "*": "read the task log",
}


@dataclass(frozen=True)
class RestoreRequest:
    """A restore request that passed every check."""

    catalog_file: str
    estate: str
    database: str
    backup_id: str
    target: str
    overwrite: bool = False


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
    if target in protected and not (source.allow_restore_over and confirm_overwrite):
        raise InvalidInputError(
            f"target_database: {target!r} is {protected[target]}: refusing to restore over it (the catalog "
            f"must set allow_restore_over for {source.name} and the overwrite must be confirmed)"
        )
    return RestoreRequest(
        str(loaded.path), loaded.catalog.estate, source.name, backup_id, target, overwrite=confirm_overwrite
    )


def _protected_targets(catalog: Catalog, source: Database) -> dict[str, str]:
    """Database names a restore must never land on: the source, and every primary on the estate."""
    protected = {
        d.database: f"the database of catalog primary {d.name}"
        for d in catalog.databases
        if d.role == "primary"
    }
    protected[source.database] = f"the source database of {source.name}"
    return protected


def restored_into(request: RestoreRequest, run_id: str | None) -> str:
    """Where the restore lands first: the target itself, or for an overwrite a scratch database that
    only takes the target's place after the checks and a second person's approval."""
    from cloudops.engines.scratch import scratch_name

    if not request.overwrite:
        return request.target
    if not run_id:
        raise InvalidInputError("confirm_overwrite: a restore over an existing database runs only in Airflow")
    # Named for "restore_<database>", not "<database>": a restore drill of the same database cleans
    # its own leftovers and must never take this staging copy for one.
    return scratch_name(f"restore_{request.database}"[:63], run_id)


def restore_backup(request: RestoreRequest, *, run_id: str | None = None) -> dict[str, Any]:
    """Download, verify and restore the requested backup (into a new target, or a staging scratch
    database when the target is to be overwritten)."""
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
            "backups (a physical backup restores a whole server: see the restore drill's scratch cluster)"
        )
    into = restored_into(request, run_id)
    log.info(
        "restoring backup %s of %s into %s%s",
        chosen.backup_id,
        database.name,
        into,
        f" (staging: it replaces {request.target} only after the checks and an approval)"
        if request.overwrite
        else " (a new database)",
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cloudops-restore-") as workdir:
        dump = fetch_backup(store, manifest, Path(workdir))
        engine_for(database).restore_logical(
            database.conn_id, into, dump, used_by=f"database {database.name!r}"
        )
    return {
        "backup_id": chosen.backup_id,
        "target": request.target,
        "restored_into": into,
        "seconds": time.monotonic() - started,
    }


def verify_restore(request: RestoreRequest, backup_id: str, *, restored: str | None = None) -> dict[str, Any]:
    """Compare the restored database with the backup's manifest; raise when any check failed."""
    from cloudops.catalog import load_catalog_file
    from cloudops.errors import CloudOpsError
    from cloudops.restore.validation import compare_with_manifest
    from cloudops.runbooks.backup import open_repository

    catalog = load_catalog_file(request.catalog_file)
    database = catalog.database(request.database)
    manifest = open_repository(catalog, database).read_manifest(database.name, backup_id)
    restored = restored or request.target
    checks = compare_with_manifest(database.conn_id, database.engine, restored, manifest)
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
        raise CloudOpsError(f"restored {restored} differs from backup {backup_id}: {', '.join(failed)}")
    return {
        "checks": len(checks),
        "target": request.target,
        "restored_into": restored,
        "backup_id": backup_id,
    }


def kept_name(target: str, now: datetime) -> str:
    """The name the replaced database keeps: ``<target>_before_<UTC stamp>``, within 63 characters."""
    suffix = f"_before_{now.astimezone(UTC):%Y%m%d%H%M%S}"
    return target[: 63 - len(suffix)] + suffix


def put_in_place(
    request: RestoreRequest, restored: dict[str, Any], *, approved_by: str | None
) -> dict[str, Any]:
    """After the approval: the staging copy takes the target's place; the old target is kept renamed."""
    from cloudops.catalog import load_catalog_file
    from cloudops.runbooks.restore_drill import engine_for

    if not request.overwrite:
        log.info("%s was restored as a new database: nothing to put in place", request.target)
        return {"target": request.target, "replaced": False, "kept_as": None}
    database = load_catalog_file(request.catalog_file).database(request.database)
    keep_as = kept_name(request.target, datetime.now(UTC))
    log.info(
        "approved by %s: %s takes the place of %s; the current %s is kept as %s",
        approved_by,
        restored["restored_into"],
        request.target,
        request.target,
        keep_as,
    )
    replaced = engine_for(database).replace_database(
        database.conn_id,
        restored["restored_into"],
        request.target,
        keep_as=keep_as,
        used_by=f"restore over {request.target!r} of database {database.name!r}",
    )
    return {"target": request.target, "replaced": replaced, "kept_as": keep_as if replaced else None}


def drop_staging(request: RestoreRequest, run_id: str) -> bool:
    """Drop the staging copy of an overwrite that did not go into place (failed, rejected); safe to repeat."""
    from cloudops.catalog import load_catalog_file
    from cloudops.runbooks.restore_drill import engine_for

    if not request.overwrite:
        return False
    database = load_catalog_file(request.catalog_file).database(request.database)
    staging = restored_into(request, run_id)
    return bool(
        engine_for(database).drop_database(
            database.conn_id, staging, used_by=f"staging copy of {database.name!r}"
        )
    )


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


def _request(context: dict[str, Any]) -> RestoreRequest:
    return RestoreRequest(**context["ti"].xcom_pull(task_ids="check_request"))


def _restore_task(**context: Any) -> dict[str, Any]:
    return restore_backup(_request(context), run_id=context["run_id"])


def _verify_task(**context: Any) -> dict[str, Any]:
    restored = context["ti"].xcom_pull(task_ids="restore")
    return verify_restore(_request(context), restored["backup_id"], restored=restored["restored_into"])


def _approval_body(context: dict[str, Any]) -> str | None:
    """What the approver reads; None (no approval needed) when the restore went into a new database."""
    request = _request(context)
    if not request.overwrite:
        return None
    restored = context["ti"].xcom_pull(task_ids="restore")
    verified = context["ti"].xcom_pull(task_ids="verify")
    requester = getattr(context["dag_run"], "triggering_user_name", None) or "unknown"
    return (
        f"**{requester}** asks to restore over database `{request.target}` of catalog database "
        f"`{request.database}` (estate {request.estate}).\n\n"
        f"- Backup `{restored['backup_id']}` is restored in `{restored['restored_into']}` and passed "
        f"{verified['checks']} checks against its manifest.\n"
        f"- On approval, `{request.target}` is renamed `{request.target}_before_<time>` (kept, not dropped) "
        f"and the restored copy takes its name. Sessions on `{request.target}` are ended.\n"
        "- On rejection nothing changes and the restored copy is dropped.\n\n"
        "Only someone other than the requester can approve."
    )


def _put_in_place_task(**context: Any) -> dict[str, Any]:
    from cloudops.evidence.recorder import record_fact
    from cloudops.evidence.runs import RESTORE_PERFORMED

    request = _request(context)
    restored = context["ti"].xcom_pull(task_ids="restore")
    # The approval step's XCom is the response (None when no approval was needed).
    approval = context["ti"].xcom_pull(task_ids="approve_overwrite") or {}
    approver = (approval.get("responded_by_user") or {}).get("name")
    placed = put_in_place(request, restored, approved_by=approver)
    record_fact(
        RESTORE_PERFORMED,
        context,
        {
            "estate": request.estate,
            "database": request.database,
            "backup_id": restored["backup_id"],
            "target_database": request.target,
            "overwrite": request.overwrite,
            "replaced": placed["replaced"],
            "kept_as": placed["kept_as"],
            "requested_by": getattr(context["dag_run"], "triggering_user_name", None),
            "approved_by": approver,
        },
    )
    return placed


def _drop_staging_task(**context: Any) -> None:
    pulled = context["ti"].xcom_pull(task_ids="check_request")
    if pulled and drop_staging(RestoreRequest(**pulled), context["run_id"]):
        log.info("the staging copy was not put in place (failed or rejected): dropped it")


def build_restore_request_dag(catalogs: CatalogSet) -> DAG:
    """Build the one ``restore_request`` DAG, its form listing every catalog database with backups."""
    from datetime import timedelta

    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG, Param

    from cloudops.runbooks.common import created_paused, default_args, failure_alerts, runbook_doc

    names = sorted(d.name for loaded in catalogs.catalogs for d in loaded.catalog.databases if d.backup)
    owners = sorted({loaded.catalog.owner for loaded in catalogs.catalogs}) or ["cloudops"]
    with DAG(
        dag_id=DAG_ID,
        description="Restore a backup into a new database, from a form.",
        schedule=None,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(
            ", ".join(owners),
            # The form names the database: its estate is alerted (every estate's when it names none).
            alerts=failure_alerts(None, "the requested restore", NEXT_ACTIONS, database_param="database"),
            retries=1,
            execution_timeout=timedelta(hours=6),
        ),
        # Paused, a triggered restore would wait in "queued" while the incident goes on.
        is_paused_upon_creation=created_paused(),
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
        from cloudops.runbooks.approval import SecondPersonApproval

        check_request_task = PythonOperator(  # noqa: AIR001 - check_request is the library function
            task_id="check_request", python_callable=_check_task, retries=0
        )
        restore = PythonOperator(task_id="restore", python_callable=_restore_task)
        verify = PythonOperator(task_id="verify", python_callable=_verify_task, retries=0)
        approve = SecondPersonApproval(
            task_id="approve_overwrite",
            subject="Approve a restore over an existing database",
            needed=_approval_body,
            retries=0,
            response_timeout=timedelta(hours=4),
            # The wait for an answer is bounded by response_timeout; this only bounds the step as a whole.
            execution_timeout=timedelta(hours=4, minutes=10),
        )
        put_in_place_task = PythonOperator(  # noqa: AIR001 - put_in_place is the library function
            task_id="put_in_place", python_callable=_put_in_place_task, retries=0
        )
        # A teardown (runs once everything upstream is done, as all_done): a failed, refused or rejected
        # overwrite never leaves its staging copy behind. A plain all_done leaf would also decide the
        # run's state: a refused approval would end in a "successful" run. A teardown does not, so the
        # run fails whenever put_in_place did not succeed.
        drop_staging_task = PythonOperator(
            task_id="drop_staging", python_callable=_drop_staging_task, retries=2
        ).as_teardown()
        check_request_task >> restore >> verify >> approve >> put_in_place_task >> drop_staging_task
    return dag


__all__ = [
    "RestoreRequest",
    "build_restore_request_dag",
    "check_request",
    "drop_staging",
    "kept_name",
    "put_in_place",
    "restore_backup",
    "restored_into",
    "verify_restore",
]
