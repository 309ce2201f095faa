"""# On-demand restore: `restore_request`

**What it does.** Restores one backup of a catalog database on its own server, from a form in the
Airflow UI (Trigger DAG): pick the database, the backup (`latest` or a backup id from `cloudops
backups list <database>`), and the target database name. Then:
1. `check_request` refuses bad input before anything runs, naming the field: a database not in the
   catalog, a malformed backup id, a point in time (not supported yet), a target named like a scratch
   database (`drill_...`) or a system database (`postgres`, `template0/1`, `mysql`, `sys`,
   `information_schema`, `performance_schema`). Names are compared per server (connection id). A target
   that is a catalog database on that server is refused unless the overwrite is confirmed **and** that
   very catalog entry (not the source) sets `allow_restore_over`: one entry's flag never unlocks another
   database. An overwrite of a database the catalog does not list, on a server that holds a catalog
   primary, is refused (list it with `allow_restore_over` first). An overwrite whose requester is not
   an Airflow user (the scheduler, a service account, `airflow dags trigger` from a shell) is refused;
2. `restore` checks the backup's manifest against the ledger (its `backup.taken` record holds the
   manifest's SHA-256 and S3 version: another manifest is refused, naming both hashes; a backup the
   ledger has no record of, imported or taken by a machine with another ledger, is refused unless the
   form's `trust_repository` is set, which is recorded), downloads the objects at the versions the
   backup wrote (a newer version written over them later is logged and ignored), checks every object's
   SHA-256 against the manifest, and restores into a **staging** database
   `drill_restore_<target>_<run hash>`, never under the final name. It refuses
   while another run's staging copy for the same target exists (one restore per target at a time;
   restores of other targets run side by side), and a new-database restore whose target exists;
3. `verify` compares the staged schema fingerprint and row counts with the manifest;
4. `put_in_place` gives the staging copy its final name. A new database: renamed at once. An
   overwrite: the step first waits (up to 4 h) for **a second person's approval** on its own page
   (Approve / Reject; the estate's `approvals` list may name who), then checks again, from the answer
   Airflow resumes it with (decision, the approver as logged in, the run's requester) and against the
   catalog as it is now, that it is an Approve by someone other than the requester; only then are
   sessions on the target ended, the target renamed `<target>_before_<time>` (kept, not dropped) and
   the staging copy renamed into its place. Marking the step "success" by hand skips the swap;
5. `confirm_in_place` checks on the server that the target exists and the staging copy is gone (so a
   `put_in_place` marked "success" by hand fails the run here);
6. `drop_staging` (a teardown: it always runs) drops a staging copy that did not go into place. When a
   swap was started and its end is unknown, it keeps the staging copy and says so (log and ledger).

**What a failure means.** `check_request`: the form was refused, nothing ran; read the message.
`restore`: a damaged backup or a failed restore; nothing carries the final name, the staging copy is
dropped; trigger again. `verify`: the restored data differs from the backup's record. `put_in_place`:
refused or rejected approval (the message names the run, the requester and the approver; nothing
changed), an approval timeout, or a failed rename. **A rejection ends the run failed**: it did not do
what was asked. If the log of `drop_staging` says the staging copy was kept, look at the target and the
`<target>_before_<time>` copy before anything else: the swap's end is unknown. `confirm_in_place`:
the restore is not in place although `put_in_place` reads success (its state was set by hand).

**What to do next.** Fix the form's input and trigger again; for a damaged backup, pick an older
backup id; for an approval, ask someone on the approver list. The same restore into a new database
runs from a shell with `cloudops restore <database> --backup latest --target NAME` when Airflow itself
is down (overwrites only here: they need the approval).
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.catalog import CatalogSet, Database, load_catalogs
from cloudops.catalog.errors import did_you_mean
from cloudops.errors import InvalidInputError, RestoreRefused

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from cloudops.engines import Engine
    from cloudops.runbooks.approval import Approval

log = logging.getLogger(__name__)

DAG_ID = "restore_request"
LATEST = "latest"
_BACKUP_ID = re.compile(r"^(latest|\d{8}T\d{6}Z-[0-9a-f]{6})$")
_TARGET = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# Never a restore target, whatever the catalog says: the servers' own databases.
SYSTEM_DATABASES = frozenset(
    {"template0", "template1", "postgres", "mysql", "information_schema", "performance_schema", "sys"}
)
# Restores of different targets run side by side (one waiting for an approval blocks no other); two
# runs for one target are kept apart by their staging copies (see restore_backup and put_in_place).
MAX_ACTIVE_RUNS = 8
SWAP_STARTED = "swap_started"  # XCom key put_in_place writes right before it renames anything
# What the failure alert tells on-call to do, by step (the runbook text above says more).
NEXT_ACTIONS = {
    "check_request": "the form was refused and nothing ran: read the message, fix the input, trigger again",
    "restore": "a damaged backup or a failed restore: read the log; pick an older backup id if damaged",
    "verify": "the restored data differs from the backup's record: read the failed checks in the log",
    "put_in_place": (
        "the approval was refused, rejected or timed out (nothing was overwritten), or the swap did not "
        "complete: if the log says a rename started, check the target and its _before_ copy NOW"
    ),
    "confirm_in_place": "the restore is not in place although put_in_place reads success: see the log",
    "drop_staging": "a staging copy could not be dropped or was kept: read the log before anything else",
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
    trust_repository: bool = False


def check_request(
    catalogs: CatalogSet,
    *,
    database: str,
    backup_id: str = LATEST,
    target: str,
    point_in_time: str | None = None,
    confirm_overwrite: bool = False,
    trust_repository: bool = False,
) -> RestoreRequest:
    """Check a restore request against the catalog; pure apart from reading the catalog set.

    :raises InvalidInputError: naming the field at fault and why.
    """
    from cloudops.engines.scratch import SCRATCH_PREFIX

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
    if target.startswith(SCRATCH_PREFIX):
        raise InvalidInputError(
            f"target_database: {target!r} is named like a scratch database ({SCRATCH_PREFIX}...), which "
            "restore drills and staging copies drop without asking: choose another name"
        )
    if target in SYSTEM_DATABASES:
        raise InvalidInputError(
            f"target_database: {target!r} is a system database of the server: never a restore target"
        )
    refusal = overwrite_refusal(catalogs, source, target, confirm_overwrite=confirm_overwrite)
    if refusal:
        raise InvalidInputError(f"target_database: {refusal}")
    return RestoreRequest(
        str(loaded.path),
        loaded.catalog.estate,
        source.name,
        backup_id,
        target,
        overwrite=confirm_overwrite,
        trust_repository=trust_repository,
    )


def overwrite_refusal(
    catalogs: CatalogSet, source: Database, target: str, *, confirm_overwrite: bool
) -> str | None:
    """Why restoring ``source``'s backup under the name ``target`` on ``source``'s server is refused
    (None when it is not). Names count per server (connection id), across every estate: the same
    server may appear in several catalog files.
    """
    server = source.conn_id
    everything = [d for loaded in catalogs.catalogs for d in loaded.catalog.databases]
    listed = [d for d in everything if d.conn_id == server and d.database == target]
    if listed:
        # The flag of the entry that owns the target decides, never the source's: one entry's
        # allow_restore_over unlocks its own database on its own server, nothing else.
        entry = next((d for d in listed if d.name == source.name), listed[0])
        what = (
            f"the source database of {source.name}"
            if entry.name == source.name
            else f"the database of catalog {entry.role} {entry.name}"
        )
        if not (entry.allow_restore_over and confirm_overwrite):
            return (
                f"{target!r} on {server} is {what}: refusing to restore over it (the catalog must set "
                f"allow_restore_over for {entry.name} and the overwrite must be confirmed)"
            )
        return None
    if confirm_overwrite:
        primaries = sorted(d.name for d in everything if d.conn_id == server and d.role == "primary")
        if primaries:
            return (
                f"{target!r} on {server} is not in the catalog, and {server} holds catalog primary "
                f"{', '.join(primaries)}: refusing to restore over a production server's database that no "
                "catalog entry allows (add it to the catalog with allow_restore_over)"
            )
    return None


def staging_stem(target: str) -> str:
    """The catalog-like name staging copies for ``target`` are named after: ``restore_<target>``.

    Named for the target, so that two runs restoring into one target find each other's copy; and
    for "restore_..." so that a restore drill of the source, which cleans its own leftovers, never takes
    it for one.
    """
    stem = f"restore_{target}"
    if len(stem) > 63:
        stem = f"restore_{target[:45]}_{hashlib.sha256(target.encode()).hexdigest()[:8]}"
    return stem


def restored_into(request: RestoreRequest, run_id: str | None) -> str:
    """Where the restore lands first: a staging scratch database of this run, which takes the target's
    name only after the checks (and, for an overwrite, a second person's approval)."""
    from cloudops.engines.scratch import scratch_name

    if not run_id:
        raise InvalidInputError("a restore stages under a name carrying its run id: give it one")
    return scratch_name(staging_stem(request.target), run_id)


def _others_staging(engine: Engine, database: Database, request: RestoreRequest, own: str) -> list[str]:
    """Staging copies of other runs for the same target on the server."""
    found = engine.leftover_scratch_databases(
        database.conn_id,
        staging_stem(request.target),
        used_by=f"restores into {request.target!r} of database {database.name!r}",
    )
    return [name for name in found if name != own]


def _refuse_parallel(database: Database, request: RestoreRequest, others: list[str]) -> None:
    if others:
        raise RestoreRefused(
            f"another restore into {request.target!r} on {database.conn_id} is under way or was left behind "
            f"(staging {', '.join(others)}): wait for that run to end (its teardown drops its copy), or "
            "reject its approval; a copy no run holds any more is dropped by hand"
        )


def restore_backup(request: RestoreRequest, *, run_id: str) -> dict[str, Any]:
    """Download, verify and restore the requested backup into this run's staging database."""
    from cloudops.catalog import load_catalog_file
    from cloudops.clusters import refuse_unless_primary_now
    from cloudops.engines import engine_of
    from cloudops.restore.fetch import fetch_backup
    from cloudops.runbooks.backup import open_repository
    from cloudops.runbooks.restore_drill import restore_role_options

    catalog = load_catalog_file(request.catalog_file)
    database = catalog.database(request.database)
    refuse_unless_primary_now(catalog, database, used_by=f"restore of database {database.name!r}")
    engine = engine_of(database)
    into = restored_into(request, run_id)
    _refuse_parallel(database, request, _others_staging(engine, database, request, into))
    if not request.overwrite and engine.database_exists(
        database.conn_id, request.target, used_by=f"restore of database {database.name!r}"
    ):
        raise InvalidInputError(
            f"target_database: {request.target!r} exists on {database.conn_id}: without confirm_overwrite a "
            "restore only creates a new database; choose a new name"
        )
    store = open_repository(catalog, database)
    chosen = prove_requested_backup(request, store, run_id=run_id)
    manifest = chosen.manifest
    if manifest.method != "logical":
        raise InvalidInputError(
            f"backup_id: {chosen.backup_id} is a {manifest.method} backup; on-demand restores take logical "
            "backups (a physical backup restores a whole server: see the restore drill's scratch cluster)"
        )
    log.info(
        "restoring backup %s of %s into staging %s; it takes the name %s only after the checks%s",
        chosen.backup_id,
        database.name,
        into,
        request.target,
        " and an approval (an overwrite)" if request.overwrite else " (a new database)",
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cloudops-restore-") as workdir:
        dump = fetch_backup(store, manifest, Path(workdir))
        engine.restore_logical(
            database.conn_id,
            into,
            dump,
            used_by=f"database {database.name!r}",
            run_id=run_id,
            # as a role owning only the staging copy, unless the catalog says this dump needs more
            **restore_role_options(database),
        )
    return {
        **chosen.pin(),
        "target": request.target,
        "restored_into": into,
        "seconds": time.monotonic() - started,
    }


def prove_requested_backup(request: RestoreRequest, store: Any, *, run_id: str | None) -> Any:
    """Choose the backup and prove its manifest against the ledger (``fetch.prove_backup``).

    A restore reads the versions the backup wrote even when newer ones were written over it (logged:
    the data is needed, and those versions are intact). A backup without a ledger record is restored
    only with ``trust_repository``, and that is recorded.
    """
    from cloudops.restore.fetch import prove_backup, record_trust

    proven = prove_backup(
        store,
        request.database,
        request.backup_id,
        trust_repository=request.trust_repository,
        on_change="read_recorded",
    )
    record_trust(
        proven,
        dag_id=DAG_ID if run_id else None,
        run_id=run_id,
        by=DAG_ID if run_id else "cloudops restore",
    )
    return proven


def verify_restore(
    request: RestoreRequest,
    backup_id: str,
    *,
    restored: str | None = None,
    proven: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare the restored database with the backup's manifest; raise when any check failed.

    :param proven: what ``restore_backup`` returned: the manifest it proved is read again by version
        and hash (without it, the backup is proven against the ledger again).
    """
    from cloudops.catalog import load_catalog_file
    from cloudops.errors import CloudOpsError
    from cloudops.restore.validation import compare_with_manifest
    from cloudops.runbooks.backup import open_repository

    catalog = load_catalog_file(request.catalog_file)
    database = catalog.database(request.database)
    store = open_repository(catalog, database)
    if proven and proven.get("manifest_sha256") and proven.get("backup_id") == backup_id:
        from cloudops.restore.fetch import read_proven_manifest

        manifest = read_proven_manifest(store, database.name, proven)
    else:
        pinned = RestoreRequest(**{**request.__dict__, "backup_id": backup_id})
        manifest = prove_requested_backup(pinned, store, run_id=None).manifest
    restored = restored or request.target
    from cloudops.engines import engine_of

    # PostgreSQL: as the copy's restore role, so nothing the dump defined runs with the login's privileges.
    checking = engine_of(database).checking_connection(
        database.conn_id, restored, used_by=f"restore_request check of {restored}"
    )
    checks = compare_with_manifest(checking, database.engine, restored, manifest)
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


def approvers_of(catalog_file: str) -> list[str] | None:
    """Who may approve an overwrite in this estate (catalog ``approvals``); None: anyone but the
    requester."""
    from cloudops.catalog import load_catalog_file
    from cloudops.runbooks.approval import users_of_role

    approvals = load_catalog_file(catalog_file).approvals
    users = set(approvals.approvers)
    if approvals.approver_role:
        users.update(users_of_role(approvals.approver_role))
    return sorted(users) or None


def put_in_place(
    request: RestoreRequest,
    *,
    run_id: str,
    approval: Approval | None,
    requested_by: str | None,
    announce: Callable[[str], None] = lambda staging: None,
) -> dict[str, Any]:
    """Give this run's staging copy the target's name: a new database at once; over an existing one
    only with an accepted approval by a second person, checked here again right before acting.

    :param approval: the answer the approval step resumed with (None: none was given).
    :param requested_by: the user who triggered the run, as Airflow recorded it.
    :param announce: called with the staging name right before anything is renamed (the teardown then
        knows the swap's end may be unknown).
    :raises CloudOpsError: the approval is missing or does not count (the message names the run, the
        requester and the approver); nothing was changed.
    """
    from cloudops.catalog import load_catalog_file
    from cloudops.clusters import refuse_unless_primary_now
    from cloudops.engines import engine_of
    from cloudops.errors import CloudOpsError

    catalog = load_catalog_file(request.catalog_file)
    database = catalog.database(request.database)
    engine = engine_of(database)
    staging = restored_into(request, run_id)
    used_by = f"restore into {request.target!r} of database {database.name!r}"

    def refuse_unless_primary() -> None:
        # Re-checked right before the rename: a failover since the restore would rename on a replica.
        refuse_unless_primary_now(catalog, database, used_by=f"putting {request.target!r} in place")

    if not request.overwrite:
        refuse_unless_primary()
        _refuse_parallel(database, request, _others_staging(engine, database, request, staging))
        announce(staging)
        engine.rename_into_new(database.conn_id, staging, request.target, used_by=used_by)
        return {"target": request.target, "replaced": False, "kept_as": None}
    if approval is None:
        raise CloudOpsError(
            f"run {run_id}: no approval reached the swap (requested by {requested_by or 'an unknown user'}, "
            f"approved by nobody): refusing to restore over {request.target!r}; nothing was changed"
        )
    if approval.run_id != run_id or (approval.requested_by or "") != (requested_by or ""):
        raise CloudOpsError(
            f"run {run_id}: the approval belongs to run {approval.run_id} (requested by "
            f"{approval.requested_by}), not to this one (requested by {requested_by}): nothing was changed"
        )
    refusal = approval.refusal(approvers_of(request.catalog_file))
    if refusal:
        raise CloudOpsError(
            f"approval refused at the swap: {approval.describe()}: {refusal}; nothing was changed"
        )
    refuse_unless_primary()
    _refuse_parallel(database, request, _others_staging(engine, database, request, staging))
    keep_as = kept_name(request.target, datetime.now(UTC))
    log.info(
        "%s: approved; %s takes the place of %s; the current %s is kept as %s",
        approval.describe(),
        staging,
        request.target,
        request.target,
        keep_as,
    )
    announce(staging)
    replaced = engine.replace_database(
        database.conn_id, staging, request.target, keep_as=keep_as, used_by=used_by
    )
    return {"target": request.target, "replaced": replaced, "kept_as": keep_as if replaced else None}


def confirm_in_place(request: RestoreRequest, run_id: str) -> dict[str, Any]:
    """Check on the server that the restore is in place: the target exists and this run's staging copy
    does not any more. A put_in_place marked "success" by hand (which renames nothing) fails here.

    :raises CloudOpsError: naming the run, the target and the staging copy.
    """
    from cloudops.catalog import load_catalog_file
    from cloudops.engines import engine_of
    from cloudops.errors import CloudOpsError

    database = load_catalog_file(request.catalog_file).database(request.database)
    engine = engine_of(database)
    staging = restored_into(request, run_id)
    used_by = f"restore into {request.target!r} of database {database.name!r}"
    if engine.database_exists(database.conn_id, staging, used_by=used_by) or not engine.database_exists(
        database.conn_id, request.target, used_by=used_by
    ):
        raise CloudOpsError(
            f"run {run_id}: the restore is not in place: the staging copy {staging!r} is still there or "
            f"{request.target!r} is missing on {database.conn_id}. put_in_place did not rename it (was its "
            "state set by hand?); the teardown drops the staging copy and the target is as it was"
        )
    log.info("%s is in place on %s; no staging copy is left", request.target, database.conn_id)
    return {"target": request.target, "in_place": True}


def drop_staging(request: RestoreRequest, run_id: str) -> bool:
    """Drop this run's staging copy (one that did not go into place: failed, refused, rejected); safe
    to repeat."""
    from cloudops.catalog import load_catalog_file
    from cloudops.engines import engine_of

    database = load_catalog_file(request.catalog_file).database(request.database)
    staging = restored_into(request, run_id)
    return bool(
        engine_of(database).drop_database(
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
        trust_repository=bool(params.get("trust_repository")),
    )


def _requester(context: dict[str, Any]) -> str | None:
    return getattr(context["dag_run"], "triggering_user_name", None)


def _check_task(**context: Any) -> dict[str, str]:
    from cloudops.runbooks.approval import airflow_users, requester_refusal

    request = _request_from_params(context["params"])
    refusal = requester_refusal(_requester(context), airflow_users()) if request.overwrite else None
    if refusal:
        raise InvalidInputError(f"confirm_overwrite: run {context['run_id']}: {refusal}")
    log.info("restore request accepted: %s", request)
    return request.__dict__


def _request(context: dict[str, Any]) -> RestoreRequest:
    # From the run's own form, checked again against the catalog, never from check_request's XCom:
    # anyone with edit rights can rewrite an XCom (and so what the approver reads, or where a restore
    # lands); nobody can rewrite a run's conf.
    return _request_from_params(context["params"])


def _restore_task(**context: Any) -> dict[str, Any]:
    return restore_backup(_request(context), run_id=context["run_id"])


def _verify_task(**context: Any) -> dict[str, Any]:
    restored = context["ti"].xcom_pull(task_ids="restore")
    request = _request(context)
    return verify_restore(
        request,
        restored["backup_id"],
        restored=restored_into(request, context["run_id"]),
        proven=restored,
    )


def _approval_body(context: dict[str, Any]) -> str | None:
    """What the approver reads; None (no approval needed) when the restore goes into a new database."""
    request = _request(context)
    if not request.overwrite:
        return None
    restored = context["ti"].xcom_pull(task_ids="restore")
    verified = context["ti"].xcom_pull(task_ids="verify")
    requester = _requester(context) or "unknown"
    return (
        f"**{requester}** asks to restore over database `{request.target}` of catalog database "
        f"`{request.database}` (estate {request.estate}), run `{context['run_id']}`.\n\n"
        f"- Backup `{restored['backup_id']}` is restored in `{restored_into(request, context['run_id'])}` "
        f"and passed {verified['checks']} checks against its manifest.\n"
        f"- On approval, `{request.target}` is renamed `{request.target}_before_<time>` (kept, not dropped) "
        f"and the restored copy takes its name. Sessions on `{request.target}` are ended.\n"
        "- On rejection nothing changes, the restored copy is dropped and the run ends failed.\n\n"
        "Only someone other than the requester can approve."
    )


def _approvers(context: dict[str, Any]) -> list[str] | None:
    return approvers_of(_request(context).catalog_file)


def _put_in_place_act(context: dict[str, Any], approval: Approval | None) -> dict[str, Any]:
    """The swap, in the approval step's own task: after an accepted answer, or at once for a new
    database. The request is checked again from the run's own form (not from an XCom) and the catalog
    as it is now."""
    from cloudops.evidence.recorder import record_fact
    from cloudops.evidence.runs import RESTORE_PERFORMED

    request = _request(context)
    restored = context["ti"].xcom_pull(task_ids="restore") or {}
    requester = _requester(context)

    def announce(staging: str) -> None:
        context["ti"].xcom_push(key=SWAP_STARTED, value=staging)

    placed = put_in_place(
        request, run_id=context["run_id"], approval=approval, requested_by=requester, announce=announce
    )
    record_fact(
        RESTORE_PERFORMED,
        context,
        {
            "estate": request.estate,
            "database": request.database,
            "backup_id": restored.get("backup_id"),
            "target_database": request.target,
            "overwrite": request.overwrite,
            "replaced": placed["replaced"],
            "kept_as": placed["kept_as"],
            "requested_by": requester,
            "approved_by": approval.approver if approval else None,
            "manifest_sha256": restored.get("manifest_sha256"),
            "trusted_repository": bool(restored.get("trusted_repository")),
        },
    )
    return placed


def _confirm_task(**context: Any) -> dict[str, Any]:
    return confirm_in_place(_request(context), context["run_id"])


def _drop_staging_task(**context: Any) -> None:
    from cloudops.evidence.recorder import record_fact
    from cloudops.evidence.runs import RESTORE_PERFORMED

    pulled = context["ti"].xcom_pull(task_ids="check_request")
    if not pulled:
        log.info("the request was refused: no staging copy was made")
        return
    try:
        request = _request(context)
    except InvalidInputError as error:  # the catalog changed meanwhile: the staging name is still known
        log.warning("the request no longer passes its checks (%s): dropping its staging copy anyway", error)
        request = RestoreRequest(**pulled)
    placed = context["ti"].xcom_pull(task_ids="put_in_place")
    started = context["ti"].xcom_pull(task_ids="put_in_place", key=SWAP_STARTED)
    if started and not placed:
        # The rename began and did not report its end (a lost connection, a killed worker): the staging
        # copy may hold the only restored data, or be half moved. Dropping it could lose it.
        log.error(
            "KEPT the staging copy %s: put_in_place started renaming it into %s and its end is unknown. "
            "Check %s (and %s_before_*) by hand before dropping anything.",
            started,
            request.target,
            request.target,
            request.target,
        )
        record_fact(
            RESTORE_PERFORMED,
            context,
            {
                "estate": request.estate,
                "database": request.database,
                "target_database": request.target,
                "overwrite": request.overwrite,
                "outcome": "unknown",
                "staging_kept": started,
                "requested_by": _requester(context),
            },
        )
        return
    if drop_staging(request, context["run_id"]):
        log.info("the staging copy was not put in place (refused, rejected or failed): dropped it")
    elif placed:
        log.info("the staging copy is in place as %s: nothing to drop", request.target)


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
        description="Restore a backup into a new database, or over one with a second person's approval.",
        schedule=None,
        catchup=False,
        max_active_runs=MAX_ACTIVE_RUNS,
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
                description="A NEW database on the same server; never the source or a catalog primary "
                "unless the catalog allows it and the overwrite is confirmed.",
            ),
            "confirm_overwrite": Param(
                False,
                type="boolean",
                title="I confirm the target will be overwritten",
                description="Required, with the catalog's allow_restore_over, to restore over a database.",
            ),
            "trust_repository": Param(
                False,
                type="boolean",
                title="Trust the repository for a backup the ledger does not know",
                description=(
                    "Only for a backup with no backup.taken record in this deployment's ledger (imported, "
                    "or taken by a machine with another ledger): restore it as the bucket holds it. Off, "
                    "such a backup is refused, since anyone who can write to the bucket can write a "
                    "matching dump and manifest. The choice is recorded in the ledger."
                ),
            ),
        },
    ) as dag:
        from cloudops.runbooks.approval import SecondPersonApproval

        check_request_task = PythonOperator(  # noqa: AIR001 - check_request is the library function
            task_id="check_request", python_callable=_check_task, retries=0
        )
        restore = PythonOperator(task_id="restore", python_callable=_restore_task)
        verify = PythonOperator(task_id="verify", python_callable=_verify_task, retries=0)
        # The approval and the swap are one task: the swap runs on the resume that carries the
        # answer, so only a real answer (never a hand-set "success" or an edited XCom) can reach it.
        put_in_place_task = SecondPersonApproval(
            task_id="put_in_place",
            subject="Approve a restore over an existing database",
            needed=_approval_body,
            act=_put_in_place_act,
            approvers=_approvers,
            retries=0,
            response_timeout=timedelta(hours=4),
            # The wait for an answer is bounded by response_timeout; this only bounds the step as a whole.
            execution_timeout=timedelta(hours=4, minutes=10),
        )
        # A teardown (runs once everything upstream is done, as all_done): a failed, refused or rejected
        # restore never leaves its staging copy behind. Unlike a plain all_done leaf it does not decide
        # the run's state, so the run fails whenever put_in_place did not succeed (a rejection too).
        # The run's last word, on the server and not on task states (which the REST API lets anyone
        # with edit rights set): the restore is in place and no staging copy is left.
        confirm_in_place_task = PythonOperator(  # noqa: AIR001 - confirm_in_place is the library function
            task_id="confirm_in_place", python_callable=_confirm_task, retries=0
        )
        drop_staging_task = PythonOperator(
            task_id="drop_staging", python_callable=_drop_staging_task, retries=2
        ).as_teardown()
        (
            check_request_task
            >> restore
            >> verify
            >> put_in_place_task
            >> confirm_in_place_task
            >> drop_staging_task
        )
    return dag


__all__ = [
    "MAX_ACTIVE_RUNS",
    "SYSTEM_DATABASES",
    "RestoreRequest",
    "approvers_of",
    "build_restore_request_dag",
    "check_request",
    "confirm_in_place",
    "drop_staging",
    "kept_name",
    "overwrite_refusal",
    "put_in_place",
    "restore_backup",
    "restored_into",
    "staging_stem",
    "verify_restore",
]
