"""# Nightly backup: `backup__<database>`

**What it does.** On the catalog's schedule (in the estate's time zone), dumps the database and
streams the dump through zstd and SHA-256 into the backup repository (S3), never holding the whole
dump on local disk. PostgreSQL: `pg_dump` custom format (logical) or `pg_basebackup` with WAL
(physical). MariaDB: `mariadb-dump --single-transaction`, recording the binlog position. Row counts
and a schema fingerprint are taken from the same snapshot as the dump. Each object gets Object Lock
retention when the repository has it. The `manifest.json` is written **last**: a backup without one
is incomplete, never counted, never restored. A database on RDS also gets an RDS snapshot tagged
with the backup id. `verify_backup` then reads every object of the new backup back and checks its
size and SHA-256 against the manifest, and records that in the ledger (`backup.verified`). Then
retention applies the catalog's policy to backups and snapshots alike, with safety rules on top: only
backups that were verified or that a restore drill passed count toward `keep_*`; a backup whose drill
or verification failed is held for review, never deleted; the newest complete backup and the newest
drill-passed one are always kept; one run deletes at most `max_delete_share` of the backups
(incomplete ones included), and deletes nothing when more incomplete or unreadable backups than that
are due for cleanup. Every deletion is a ledger fact (`retention.deleted`).
A successful backup updates the database's backup Asset, which schedules its restore drill.

**Which server it reads.** A database that is a member of a cluster is backed up from the member that
is the primary *now*, as the members themselves say (after a failover that was not failed back, that
is not the one the catalog calls primary), or, with `backup.source: replica`, from a replica that
streams from it within its `max_replication_lag` (the primary when none is fit). The task log and
the `backup.taken` record's `source` say which member was read and why.

**What a failure means.**
- `take_backup` failed: **no new backup exists** (nothing without a manifest is ever used); the
  earlier backups are untouched. The message names the step (dump, upload, lock, manifest).
  "has no single primary": no member of the database's cluster takes writes, or two do (a split
  brain); nothing was read. Fix the cluster first (`health_check__<estate>` names each member).
- `verify_backup` failed: the new backup's objects differ from its manifest (or could not be read):
  it does not count as a backup, retention did not run, and the backup is held for review.
- `apply_retention` failed: the new backup is safe; old backups may not have been pruned yet.
  A refusal ("refusing to delete N of M") means the policy would delete more than the allowed
  share in one run; "N of M backups are incomplete or unreadable" means so many manifests no longer
  read (a mixed-version rollout, a stricter manifest check) that nothing was deleted. Both are
  safety stops, not bugs.
- A Deadline Alert means the backup had not finished by the catalog's deadline.

**What to do next.**
- Dump errors: is the database up (`health_check__<estate>`), is the connection right, is the client
  tool at least as new as the server? Then clear `take_backup` to retry.
- Upload errors: is the S3 endpoint reachable, does the bucket exist, do the credentials allow
  multipart uploads and object retention? Retrying is safe: a failed attempt leaves no manifest.
  A worker killed mid-upload leaves an open multipart upload (its parts are billed storage): the
  retry aborts it, and names it with its upload id in the log and the ledger
  (`backup.orphan_upload`); one it cannot prove dead (not this run's, younger than the dump's bound)
  is only reported: abort it by hand (`aws s3api abort-multipart-upload`) once no backup runs.
- Verification failure: take a new backup (trigger the DAG again) and find out what altered or lost
  the stored objects; the failed backup stays until someone deletes it by hand.
- Retention refusal: check the policy and the listing (`cloudops backups list <database>`), then
  trigger the DAG with `allow_large_delete` if the deletions are intended. Use `retention_dry_run`
  to see the plan without deleting anything. Unreadable manifests: read their problems in the
  listing; after an upgrade, finish the rollout before pruning. Backups held for review (a failed
  drill): read the drill record, then delete the backup by hand or drill it again.

Re-running is always safe: every run makes a new backup id and never touches older backups
except through retention, which never deletes the newest complete backup or a locked one.

Where retention's proof comes from: the ledger (`backup.verified` and `drill.recorded` facts) is
authoritative. Drill records in the repository's `_drills/` folder are not used: anyone who can write
the bucket can write them. A worker that does not share the ledger with the drills sees only this
run's own verification, so older backups count as unverified there (they are then held while the
policy would keep them, never counted).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.catalog import Catalog, Database, LoadedCatalog
from cloudops.catalog.models import RetentionPolicy
from cloudops.clusters import cluster_of, pick_backup_source
from cloudops.errors import CloudOpsError
from cloudops.health import render_table
from cloudops.runbooks.common import load_estate

if TYPE_CHECKING:
    from airflow.sdk import DAG, Asset

    from cloudops.engines import BackupSource
    from cloudops.repository.manifest import Manifest
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
    "verify_backup": "the new backup's objects differ from its manifest or could not be read: it is held "
    "for review and does not count; take a new backup and find what altered the stored objects",
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


def backup_source(
    database: Database, workdir: Path, *, conn_id: str | None = None
) -> AbstractContextManager[BackupSource]:
    """What to run to dump ``database`` with its policy's method, and the facts to record.

    :param conn_id: the server to read (the cluster member :func:`cloudops.clusters.pick_backup_source`
        chose); the database's own connection when None.
    """
    from cloudops.engines import engine

    assert database.backup is not None
    return engine(database.engine).backup_source(
        conn_id or database.conn_id,
        database.database,
        method=database.backup.method,
        used_by=f"database {database.name!r}",
        workdir=workdir,
        max_lock_wait_seconds=int(database.backup.max_lock_wait.total_seconds()),
    )


# What take_backup's result carries beside the manifest's own fields.
RESULT_EXTRAS = frozenset({"source", "orphan_uploads"})


def manifest_of(result: Mapping[str, Any]) -> Manifest:
    """The manifest part of what :func:`take_backup` returns (it adds the ``source`` it chose and the
    ``orphan_uploads`` it found)."""
    from cloudops.repository.manifest import Manifest

    return Manifest.model_validate({key: value for key, value in result.items() if key not in RESULT_EXTRAS})


def take_backup(
    catalog_file: str,
    estate: str,
    database_name: str,
    *,
    run_id: str | None = None,
    task_id: str | None = None,
    triggered_by: dict[str, str] | None = None,
    try_number: int | None = None,
) -> dict[str, Any]:
    """Dump, compress, hash and upload one backup; lock it; write its manifest last; record it.

    First, the multipart uploads a killed earlier backup left open (:func:`orphan_uploads`) are
    aborted or reported; the result's ``orphan_uploads`` and the ledger say which.

    The ledger's ``backup.taken`` record (:func:`backup_evidence`) holds the manifest's SHA-256 and S3
    version and each object's: drills and restores refuse a manifest that is not the recorded one. It
    is written here, whoever calls (the DAG's task, ``cloudops backups run``), so every backup this
    deployment takes can be proven later. Recording never fails the backup (see
    :mod:`cloudops.evidence.recorder`); a backup whose record could not be written is refused by
    drills and restores unless the repository is trusted explicitly, and this says so in the log.

    :param run_id: the Airflow run (None outside Airflow); ``task_id`` likewise, for the record.
    :param triggered_by: who ran it when no Airflow run did (``triggered_by``, ``triggered_by_user`` of
        a ``cloudops`` command), carried by the record.
    The server it reads is chosen first (:func:`cloudops.clusters.pick_backup_source`): a member of a
    cluster is backed up from the member that is primary now (or a fit replica, by ``backup.source``),
    whatever the catalog's ``role`` says; the choice and its reason go into the record's ``source``.

    :return: the manifest as JSON-ready data (no secrets) and the ``source`` chosen, for the XCom record.
    :raises TopologyError: the database's cluster has no single primary; nothing was dumped.
    :raises CloudOpsError: naming the step that failed; no manifest exists then.
    """
    from cloudops.repository.layout import new_backup_id
    from cloudops.repository.manifest import Compression, Manifest, ManifestEncryption

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    policy = database.backup
    assert policy is not None
    repository = catalog.repository(policy.repository)
    store = open_repository(catalog, database)
    chosen = pick_backup_source(catalog, database, used_by=f"backup of database {database.name!r}")
    started = datetime.now(UTC)
    backup_id = new_backup_id(started)
    orphans = orphan_uploads(store, database.name, run_id=run_id, now=started)
    _record_backup_started(store, database.name, backup_id, run_id=run_id, try_number=try_number)
    log.info(
        "backup %s of database %s (%s, %s) from %s (%s) into s3://%s/%s",
        backup_id,
        database.name,
        database.engine,
        policy.method,
        chosen.member,
        chosen.role,
        repository.bucket,
        repository.prefix,
    )
    with (
        tempfile.TemporaryDirectory(prefix="cloudops-backup-") as workdir,
        backup_source(database, Path(workdir), conn_id=chosen.conn_id) as source,
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
        store.apply_object_lock(
            [stored.key],
            mode=object_lock.mode,
            retain_until=object_lock.retain_until,
            version_ids={stored.key: stored.version_id},
        )
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
    written = store.write_manifest(manifest)
    log.info(
        "backup %s complete: %d bytes raw, %d stored, sha256 %s",
        backup_id,
        stored.raw_bytes,
        stored.size,
        stored.sha256,
    )
    result = {
        **manifest.model_dump(mode="json"),
        "source": chosen.to_evidence(),
        "orphan_uploads": orphans,
    }
    _record_backup_taken(
        backup_evidence(
            result,
            bucket=store.bucket,
            manifest_key=written.key,
            manifest_sha256=written.sha256,
            manifest_version_id=written.version_id,
        ),
        run_id=run_id,
        task_id=task_id,
        triggered_by=triggered_by,
    )
    return result


def _record_backup_started(
    store: BackupRepository, database: str, backup_id: str, *, run_id: str | None, try_number: int | None
) -> None:
    """Record which try of which run streams into which backup, before its upload is created."""
    import os
    import socket

    from cloudops.evidence.recorder import record
    from cloudops.evidence.runs import BACKUP_STARTED

    record(
        BACKUP_STARTED,
        dag_id=f"{KIND}__{database}",
        run_id=run_id,
        key=f"{BACKUP_STARTED}|{store.estate}|{database}|{backup_id}",
        task_id="take_backup",
        try_number=try_number,
        data={
            "estate": store.estate,
            "database": database,
            "backup_id": backup_id,
            "key": store.backup_prefix(database, backup_id),
            "try_number": try_number,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        },
    )


def orphan_uploads(
    store: BackupRepository, database: str, *, run_id: str | None, now: datetime
) -> list[dict[str, Any]]:
    """Abort or report the multipart uploads open under ``database``'s folder with no manifest beside.

    One is aborted when it cannot belong to a backup still running: an earlier try of this run
    started it (the ledger's ``backup.started``; Airflow starts a retry only once the try before has
    ended), or its backup id (the time its backup started) is older than the dump's bound
    (:data:`DUMP_TIMEOUT`: a dump that long is killed and its upload aborted by its own watchdog).
    Any other is reported only (a ``cloudops backups run`` may be streaming into it right now). Each
    is logged with its upload id and recorded (``backup.orphan_upload``); nothing here fails the backup.

    :return: ``[{key, upload_id, initiated, backup_id, action, reason}]``.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from cloudops.evidence.facts import iter_facts
    from cloudops.evidence.recorder import record
    from cloudops.evidence.runs import BACKUP_ORPHAN_UPLOAD, BACKUP_STARTED
    from cloudops.repository import layout

    folder = layout.database_prefix(store.prefix, store.estate, database)
    found: list[dict[str, Any]] = []
    try:
        pages = store.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=store.bucket, Prefix=folder, PaginationConfig={"MaxItems": 1000}
        )
        for page in pages:
            found += [u for u in page.get("Uploads", []) if str(u.get("Key", "")).startswith(folder)]
    except (BotoCoreError, ClientError) as error:
        log.warning("open multipart uploads under s3://%s/%s not listed: %s", store.bucket, folder, error)
        return []
    if not found:
        return []
    ours = {
        str((f.fields.get("data") or {}).get("backup_id"))
        for f in iter_facts(BACKUP_STARTED, {"estate": store.estate, "database": database})
        if run_id is not None and f.fields.get("run_id") == run_id
    }
    outcome = []
    for upload in found:
        key, upload_id = str(upload["Key"]), str(upload["UploadId"])
        backup_id = key[len(folder) :].split("/", 1)[0]
        if store.head_object_version(store.manifest_key(database, backup_id), None) is not None:
            continue  # a complete backup's stray upload is not this check's business
        initiated = upload.get("Initiated")
        # The backup id says when its backup started (moto's Initiated is a fixed date in 2010).
        age = now - layout.backup_time(backup_id) if layout.is_backup_id(backup_id) else None
        if backup_id in ours:
            action, reason = "aborted", f"an earlier try of run {run_id} started it and was killed"
        elif age is not None and age > DUMP_TIMEOUT:
            action, reason = "aborted", f"started {age} ago, longer than any backup may run ({DUMP_TIMEOUT})"
        else:
            action, reason = "reported", "may belong to a backup still running: left alone"
        if action == "aborted":
            try:
                store.client.abort_multipart_upload(Bucket=store.bucket, Key=key, UploadId=upload_id)
            except (BotoCoreError, ClientError) as error:
                action, reason = "reported", f"{reason}; the abort failed: {error}"
        (log.warning if action == "aborted" else log.error)(
            "open multipart upload %s of s3://%s/%s (backup %s, no manifest): %s, %s",
            upload_id,
            store.bucket,
            key,
            backup_id,
            action,
            reason,
        )
        item = {
            "key": key,
            "upload_id": upload_id,
            "initiated": initiated.isoformat() if isinstance(initiated, datetime) else None,
            "backup_id": backup_id,
            "action": action,
            "reason": reason,
        }
        outcome.append(item)
        record(
            BACKUP_ORPHAN_UPLOAD,
            dag_id=f"{KIND}__{database}",
            run_id=run_id,
            key=f"{BACKUP_ORPHAN_UPLOAD}|{upload_id}|{action}",
            data={"estate": store.estate, "database": database, **item},
        )
    return outcome


def _record_backup_taken(
    facts: dict[str, Any],
    *,
    run_id: str | None,
    task_id: str | None,
    triggered_by: dict[str, str] | None = None,
) -> None:
    from cloudops.evidence.recorder import record
    from cloudops.evidence.runs import BACKUP_TAKEN

    dag_id = f"{KIND}__{facts['database']}"
    written = record(
        BACKUP_TAKEN,
        dag_id=dag_id,
        run_id=run_id,
        # One record per backup: a retried task that recorded already does not record twice.
        key=f"{BACKUP_TAKEN}|{facts['estate']}|{facts['database']}|{facts['backup_id']}",
        data=facts,
        task_id=task_id,
        **(triggered_by or {}),
    )
    if written is None:
        log.error(
            "backup %s of %s is complete but has no ledger record: drills and restores will refuse it "
            "unless the repository is trusted explicitly",
            facts["backup_id"],
            facts["database"],
        )
    else:
        log.info("evidence recorded: %s (seq %s, hash %s)", BACKUP_TAKEN, written.seq, written.hash[:12])


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


class BackupVerifyFailed(CloudOpsError):
    """Reading a backup's objects back found one missing or different from its manifest."""


class RetentionStopped(CloudOpsError):
    """A retention plan deleted nothing because too many backups are incomplete or unreadable."""


def verify_backup(
    catalog_file: str,
    estate: str,
    database_name: str,
    *,
    backup_id: str,
    evidence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read every object of a backup back, compare it with the manifest, record ``backup.verified``.

    Retention counts a backup toward ``keep_*`` only once this (or a restore drill) proved it.

    :param evidence: the context the fact is recorded under (a task's, or :func:`cli_run`'s); default:
        the backup runbook, no run.
    :return: ``backup_id``, ``ok``, ``reason``, ``object_name``, ``objects_checked``, ``bytes_checked``.
    :raises BackupVerifyFailed: an object is missing or differs; the fact is recorded first.
    """
    from cloudops.evidence.recorder import record_fact
    from cloudops.evidence.runs import BACKUP_VERIFIED

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    store = open_repository(catalog, database)
    manifest = store.read_manifest(database.name, backup_id)
    log.info(
        "verifying backup %s of %s: reading %d object(s) back",
        backup_id,
        database.name,
        len(manifest.objects),
    )
    verification = store.verify_objects(manifest)
    result = {
        "estate": estate,
        "database": database.name,
        "backup_id": backup_id,
        "ok": verification.ok,
        "reason": verification.reason,
        "object_name": verification.object_name,
        "objects_checked": verification.objects_checked,
        "bytes_checked": verification.bytes_checked,
    }
    record_fact(BACKUP_VERIFIED, evidence or _no_run(database), result)
    if not verification.ok:
        raise BackupVerifyFailed(
            f"backup {backup_id} of {database.name} failed verification: {verification.reason}; it does not "
            "count toward retention and is held for review"
        )
    log.info("backup %s of %s verified: %s", backup_id, database.name, verification.reason)
    return result


def backup_proofs(
    estate: str, database: str, *, verified_now: dict[str, Any] | None = None, ledger: Any = None
) -> dict[str, tuple[str, str]]:
    """What the ledger proves of each backup of ``database``: ``{backup_id: (proof, detail)}``.

    From the ``backup.verified`` and ``drill.recorded`` facts: the latest drill of a backup decides
    (passed or failed); a verification that failed after it, or with no drill, marks it failed; a
    verification that passed, with no drill, marks it verified. Only a later passing drill releases a
    failed one: reading the objects again cannot undo a drill's failed row counts.

    :param verified_now: the result of this run's :func:`verify_backup`, for a worker that does not
        share the ledger with the one that verified.
    :param ledger: read this ledger instead of the local one.
    """
    from cloudops.evidence.facts import iter_facts
    from cloudops.evidence.runs import BACKUP_VERIFIED, DRILL_RECORDED
    from cloudops.repository.retention import DRILL_FAILED, DRILL_PASSED, VERIFIED, VERIFY_FAILED

    match = {"estate": estate, "database": database}
    drills: dict[str, Any] = {}
    verifications: dict[str, Any] = {}
    for record in iter_facts(DRILL_RECORDED, match, ledger=ledger):
        drills[record.fields["data"].get("backup_id")] = record
    for record in iter_facts(BACKUP_VERIFIED, match, ledger=ledger):
        verifications[record.fields["data"].get("backup_id")] = record
    proofs: dict[str, tuple[str, str]] = {}
    for backup_id in set(drills) | set(verifications):
        drill, verify = drills.get(backup_id), verifications.get(backup_id)
        if drill is not None:
            data = drill.fields["data"]
            detail = f"drill run {drill.fields.get('run_id')} at {drill.at}"
            if not data.get("passed"):
                failed = [c.get("name") for c in data.get("checks") or [] if not c.get("passed")]
                why = data.get("error") or (f"failed checks: {', '.join(map(str, failed))}" if failed else "")
                proofs[backup_id] = (DRILL_FAILED, f"{detail}: {why}" if why else detail)
                continue
        if (
            verify is not None
            and not verify.fields["data"].get("ok")
            and (drill is None or verify.seq > drill.seq)
        ):
            proofs[backup_id] = (VERIFY_FAILED, f"at {verify.at}: {verify.fields['data'].get('reason')}")
        elif drill is not None:
            proofs[backup_id] = (DRILL_PASSED, detail)
        elif verify is not None:
            proofs[backup_id] = (VERIFIED, f"read back at {verify.at}")
    if verified_now and verified_now.get("backup_id") not in drills:
        backup_id = str(verified_now["backup_id"])
        if verified_now.get("ok"):
            proofs.setdefault(backup_id, (VERIFIED, "read back by this run"))
        else:
            proofs[backup_id] = (VERIFY_FAILED, f"this run: {verified_now.get('reason')}")
    return proofs


def apply_retention(
    catalog_file: str,
    estate: str,
    database_name: str,
    *,
    dry_run: bool,
    allow_large_delete: bool,
    evidence: dict[str, Any] | None = None,
    verified_now: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan retention with the catalog's policy and the ledger's proofs, log the plan, then delete.

    Every backup or snapshot deleted is recorded as a ``retention.deleted`` fact, with the plan's
    reasons and the policy (nothing is deleted, nor recorded, in a dry run).

    :param evidence: the context deletions are recorded under (a task's, or :func:`cli_run`'s);
        default: the backup runbook, no run.
    :param verified_now: this run's :func:`verify_backup` result (see :func:`backup_proofs`).
    :raises RetentionRefused: when the plan would delete more than the policy's share in one run.
    :raises RetentionStopped: too many backups are incomplete or unreadable; nothing was deleted.
    """
    from dataclasses import replace

    from cloudops.repository.retention import RetentionRefused, plan_retention

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    policy = database.backup
    assert policy is not None
    store = open_repository(catalog, database)
    listed = store.list_backups(database.name)
    proofs = backup_proofs(estate, database.name, verified_now=verified_now)
    records = [
        replace(record, proof=proofs[record.id][0], proof_detail=proofs[record.id][1])
        if record.id in proofs
        else record
        for record in store.as_retention_records(listed)
    ]
    proof_of = {record.id: record.proof for record in records}
    try:
        plan = plan_retention(
            records,
            policy.retention,
            max_delete_share=policy.max_delete_share,
            allow_large_delete=allow_large_delete,
        )
    except RetentionRefused as refused:
        _log_plan(database.name, refused.plan, proof_of, note=", REFUSED")
        raise
    _log_plan(database.name, plan, proof_of, note=", dry run" if dry_run else "")
    if plan.stopped:
        log.warning("retention of %s stopped, nothing deleted: %s", database.name, plan.stopped)
        raise RetentionStopped(f"retention of {database.name}: {plan.stopped}")
    context = evidence or _no_run(database)
    deleted: list[str] = []
    for backup_id in plan.delete:
        keys = store.delete_backup(database.name, backup_id, dry_run=dry_run)
        if dry_run:
            continue
        deleted.append(backup_id)
        record_retention_deletion(
            context,
            estate=estate,
            database=database.name,
            what="backup",
            backup_id=backup_id,
            group=f"backups of database {database.name}",
            deleted=keys,
            reasons=plan.reasons[backup_id],
            proof=proof_of[backup_id],
            policy=policy.retention,
            max_delete_share=policy.max_delete_share,
            allow_large_delete=allow_large_delete,
            bucket=store.bucket,
        )
    result: dict[str, Any] = {**plan.to_json(), "deleted": deleted, "dry_run": dry_run}
    if database.rds_instance_id:
        result["rds_snapshots"] = _apply_rds_snapshot_retention(
            catalog, database, dry_run=dry_run, allow_large_delete=allow_large_delete, evidence=context
        )
    if dry_run:
        log.info("dry run: nothing deleted")
    return result


def _log_plan(database: str, plan: Any, proof_of: dict[str, str], *, note: str) -> None:
    """Log a retention plan as a table: each backup, the decision, its proof and the reasons."""
    held = set(plan.held)
    rows = [
        [
            backup_id,
            "held" if backup_id in held else "keep",
            proof_of[backup_id],
            "; ".join(plan.reasons[backup_id]),
        ]
        for backup_id in plan.keep
    ]
    rows += [[b, "DELETE", proof_of[b], "; ".join(plan.reasons[b])] for b in plan.delete]
    log.info(
        "retention plan for %s (%d keep, %d of them held, %d delete%s):\n%s",
        database,
        len(plan.keep),
        len(plan.held),
        len(plan.delete),
        note,
        render_table(["backup", "decision", "proof", "reasons"], rows) if rows else "(no backups)",
    )


def _no_run(database: Database) -> dict[str, Any]:
    """The evidence context of a library call made outside any run: the runbook, no run id."""
    return {"dag_id": f"{KIND}__{database.name}", "run_id": None}


def record_retention_deletion(
    context: dict[str, Any],
    *,
    estate: str,
    what: str,
    backup_id: str,
    group: str,
    deleted: Any,
    reasons: list[str],
    proof: str | None,
    policy: RetentionPolicy,
    max_delete_share: float,
    allow_large_delete: bool,
    **target: Any,
) -> None:
    """Record one deletion a retention run made (``retention.deleted``): what, why, under which policy.

    :param what: ``backup``, ``rds_snapshot`` or ``ebs_snapshot``.
    :param deleted: the S3 keys deleted, or the snapshot id.
    :param target: ``database=...`` or ``fleet=...`` (and anything else that says where).
    """
    from cloudops.evidence.recorder import record_fact
    from cloudops.evidence.runs import RETENTION_DELETED

    record_fact(
        RETENTION_DELETED,
        context,
        {
            "estate": estate,
            **target,
            "what": what,
            "backup_id": backup_id,
            "group": group,
            "deleted": deleted,
            "reasons": list(reasons),
            "proof": proof,
            "policy": policy.model_dump(exclude_none=True),
            "max_delete_share": max_delete_share,
            "allow_large_delete": allow_large_delete,
        },
    )


def _apply_rds_snapshot_retention(
    catalog: Catalog,
    database: Database,
    *,
    dry_run: bool,
    allow_large_delete: bool,
    evidence: dict[str, Any],
) -> dict[str, Any]:
    """The same policy and safety rules for the database's RDS snapshots as for its backups."""
    from cloudops.clouds.aws import (
        apply_cloud_snapshot_retention,
        list_cloud_snapshots,
        plan_cloud_snapshot_retention,
    )

    policy = database.backup
    assert policy is not None
    aws_conn_id = aws_conn_id_of(catalog, database)
    snapshots = list_cloud_snapshots(aws_conn_id, estate=catalog.estate, kind="rds", database=database.name)
    plans = plan_cloud_snapshot_retention(
        snapshots,
        policy.retention,
        max_delete_share=policy.max_delete_share,
        allow_large_delete=allow_large_delete,
    )

    def recorded(group: Any, snapshot: Any) -> None:
        record_retention_deletion(
            evidence,
            estate=catalog.estate,
            database=database.name,
            what="rds_snapshot",
            backup_id=snapshot.backup_id,
            group=group.group,
            deleted=snapshot.snapshot_id,
            reasons=group.plan.reasons[snapshot.backup_id],
            proof=None,
            policy=policy.retention,
            max_delete_share=policy.max_delete_share,
            allow_large_delete=allow_large_delete,
            instance_id=snapshot.instance_id,
            status=snapshot.status,
        )

    deleted = apply_cloud_snapshot_retention(aws_conn_id, plans, dry_run=dry_run, on_deleted=recorded)
    if stopped := [group for group in plans if group.plan.stopped]:
        raise RetentionStopped("; ".join(f"{group.group}: {group.plan.stopped}" for group in stopped))
    return {
        "keep": [backup_id for group in plans for backup_id in group.plan.keep],
        "delete": [backup_id for group in plans for backup_id in group.plan.delete],
        "deleted": deleted,
    }


def _take_backup_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    # take_backup records the backup.taken fact itself (the CLI's backups run too).
    return take_backup(
        catalog_file,
        estate,
        database_name,
        run_id=context["run_id"],
        task_id="take_backup",
        try_number=getattr(context.get("ti"), "try_number", None),
    )


def backup_evidence(
    manifest: dict[str, Any],
    *,
    bucket: str | None = None,
    manifest_key: str | None = None,
    manifest_sha256: str | None = None,
    manifest_version_id: str | None = None,
) -> dict[str, Any]:
    """The ledger's ``backup.taken`` facts of a manifest (as returned by take_backup) and of the
    manifest object written (:class:`cloudops.repository.s3.WrittenManifest`).

    ``manifest_sha256`` (of the exact bytes written) and ``manifest_version_id`` are what drills and
    restores check the manifest they read against; each object's ``version_id`` is in ``objects``.
    ``source`` is the server dumped and why (:meth:`cloudops.clusters.BackupSourceChoice.to_evidence`),
    None for a manifest read back without it.
    """
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
        "objects": [
            {k: o.get(k) for k in ("name", "key", "size", "sha256", "version_id")}
            for o in manifest["objects"]
        ],
        "locked_until": lock.get("retain_until"),
        "lock_mode": lock.get("mode"),
        "bucket": bucket,
        "manifest_key": manifest_key,
        "manifest_sha256": manifest_sha256,
        "manifest_version_id": manifest_version_id,
        "source": manifest.get("source"),
    }


def _snapshot_rds_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    backup = context["ti"].xcom_pull(task_ids="take_backup")
    return snapshot_rds(catalog_file, estate, database_name, backup_id=backup["backup_id"])


def _verify_backup_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    backup = context["ti"].xcom_pull(task_ids="take_backup")
    return verify_backup(catalog_file, estate, database_name, backup_id=backup["backup_id"], evidence=context)


def _retention_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    params = context["params"]
    return apply_retention(
        catalog_file,
        estate,
        database_name,
        dry_run=bool(params["retention_dry_run"]),
        allow_large_delete=bool(params["allow_large_delete"]),
        evidence=context,
        verified_now=context["ti"].xcom_pull(task_ids="verify_backup"),
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
    cluster = cluster_of(catalog, database.name)
    source = (
        f"the {policy.source} of cluster `{cluster.name}` when the backup runs (asked, never assumed)"
        if cluster
        else "its own connection (in no cluster)"
    )
    return (
        f"## This database: `{database.name}` ({database.engine}, {database.role})\n\n"
        f"| setting | value |\n|---|---|\n"
        f"| connection | `{database.conn_id}` |\n"
        f"| reads | {source} |\n"
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

    from cloudops.runbooks.common import (
        created_paused,
        deadline_alerts_enabled,
        default_args,
        failure_alerts,
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
        notifier = failure_alerts(loaded, target, NEXT_ACTIONS)
        with DAG(
            dag_id=f"{KIND}__{database.name}",
            description=f"Back up {database.name} ({database.engine}, {policy.method}) to S3, then prune.",
            schedule=policy.schedule,
            start_date=start_date(catalog.timezone),
            catchup=False,
            max_active_runs=1,
            dagrun_timeout=timedelta(hours=12),
            default_args=default_args(
                catalog.owner,
                alerts=notifier,
                retries=policy.retries,
                retry_delay=policy.retry_delay,
                execution_timeout=timedelta(hours=6),
            ),
            is_paused_upon_creation=created_paused(policy.paused),
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
            # Retention runs only once the new backup was read back: an unproven backup must never be
            # what lets retention delete a proven one.
            verify_backup_task = PythonOperator(  # noqa: AIR001
                task_id="verify_backup",
                python_callable=_verify_backup_task,
                op_kwargs=op_kwargs,
                execution_timeout=DUMP_TIMEOUT,
            )
            apply_retention_task = PythonOperator(  # noqa: AIR001
                task_id="apply_retention",
                python_callable=_retention_task,
                op_kwargs=op_kwargs,
                execution_timeout=timedelta(hours=1),
            )
            take_backup_task >> verify_backup_task >> apply_retention_task
            if database.rds_instance_id:
                # After the dump, tagged with its backup id, so that retention prunes both together.
                snapshot_rds_task = PythonOperator(  # noqa: AIR001
                    task_id="snapshot_rds",
                    python_callable=_snapshot_rds_task,
                    op_kwargs=op_kwargs,
                    execution_timeout=RDS_SNAPSHOT_WAIT + timedelta(minutes=10),
                )
                take_backup_task >> snapshot_rds_task >> apply_retention_task
        yield dag


__all__ = [
    "BackupVerifyFailed",
    "RetentionStopped",
    "apply_retention",
    "aws_conn_id_of",
    "backed_up_database",
    "backup_asset",
    "backup_proofs",
    "build_backup_dags",
    "record_retention_deletion",
    "snapshot_rds",
    "take_backup",
    "verify_backup",
]
