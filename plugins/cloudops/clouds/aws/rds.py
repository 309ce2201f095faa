"""RDS DB snapshots of the estate's databases on RDS, and restore drills of them, through the amazon
provider's ``RdsHook``.

A restore drill restores a backup's snapshot into a scratch instance named after the run
(:func:`restore_rds_drill_instance`), checks it through the API (:func:`check_rds_drill_instance`) and
deletes it (:func:`delete_rds_drill_instance`, guarded by :func:`refuse_unless_rds_drill_instance`); the
naming, the choice of the snapshot and the checks are pure functions.

The hook and boto3 are imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cloudops.catalog.models import render_duration
from cloudops.clouds.aws.snapshots import (
    DEFAULT_POLL_INTERVAL,
    TAG_BACKUP_ID,
    TAG_DATABASE,
    TAG_ESTATE,
    TAG_KIND,
    CloudSnapshot,
    CloudSnapshotError,
    SnapshotTargetNotFound,
    aws_tags,
    base_tags,
    check_ownership,
    client_config,
    created_at_or_now,
    current_cost_tags,
    rds_snapshot_identifier,
    tags_from_aws,
    wait_for_snapshots,
)
from cloudops.errors import CloudOpsError, RestoreRefused, aws_error_code

log = logging.getLogger(__name__)

# RDS takes a snapshot only of an instance in one of these states.
_SNAPSHOT_READY_STATES = frozenset({"available", "storage-optimization"})


def snapshot_rds_instance(
    aws_conn_id: str,
    instance_id: str,
    *,
    backup_id: str,
    estate: str,
    database: str,
    wait: bool = True,
    wait_timeout: timedelta = timedelta(minutes=60),
    poll_interval: timedelta = DEFAULT_POLL_INTERVAL,
) -> CloudSnapshot:
    """Take a DB snapshot of an RDS instance for a backup, tagged with it, and wait until it is available.

    The snapshot is named ``cloudops-<database>-<backup_id>`` (see
    :func:`~cloudops.clouds.aws.snapshots.rds_snapshot_identifier`) and tagged ``cloudops:backup-id``,
    ``cloudops:estate``, ``cloudops:database`` and ``cloudops:kind=rds``. Safe to re-run: when the
    backup's snapshot already exists it is not taken again, only waited for.

    The wait polls ``describe_db_snapshots`` and is bounded by ``wait_timeout``. In Airflow, a wait of
    more than a few minutes should not hold a worker slot: call this with ``wait=False`` and wait in the
    amazon provider's ``RdsSnapshotExistenceSensor`` (``airflow.providers.amazon.aws.sensors.rds``;
    ``db_type="instance"``, ``db_snapshot_identifier=snapshot.snapshot_id``) with ``mode="reschedule"``
    and a ``timeout``. In provider 9.39.0 that sensor has no ``deferrable`` option and the provider has
    no RDS snapshot trigger; ``mode="reschedule"`` frees the slot between pokes.

    :param instance_id: the RDS instance (the catalog's ``rds_instance_id``).
    :param database: the catalog database it holds; names and tags the snapshot.
    :param wait: wait for ``available``; with False, return the snapshot as created (``creating``).
    :raises SnapshotTargetNotFound: the instance does not exist.
    :raises CloudSnapshotError: the instance is not in a state RDS snapshots from, the snapshot's name is
        taken by another snapshot, or AWS refused the call.
    :raises SnapshotWaitTimeout: not available by ``wait_timeout``; the error carries the snapshot.
    :raises SnapshotFailed: the snapshot failed.
    """
    from airflow.sdk.exceptions import AirflowNotFoundException
    from botocore.exceptions import BotoCoreError, ClientError

    hook = _hook(aws_conn_id)
    identifier = rds_snapshot_identifier(database, backup_id)
    what = f"RDS instance {instance_id!r} (database {database} of estate {estate})"
    try:
        state = hook.get_db_instance_state(instance_id)
    except AirflowNotFoundException:
        raise SnapshotTargetNotFound(
            f"{what} does not exist in {hook.region_name}: check rds_instance_id in the catalog and the "
            f"region of connection {aws_conn_id!r}"
        ) from None

    existing = _describe(hook, identifier)
    if existing is not None:
        tags = tags_from_aws(existing.get("TagList"))
        if (
            tags.get(TAG_BACKUP_ID) != backup_id
            or tags.get(TAG_DATABASE) != database
            or existing.get("DBInstanceIdentifier") != instance_id
        ):
            raise CloudSnapshotError(
                f"the snapshot name {identifier} is taken by a snapshot of "
                f"{existing.get('DBInstanceIdentifier')} with backup id {tags.get(TAG_BACKUP_ID)!r}, "
                f"not by backup {backup_id} of {what}"
            )
        snapshot = _snapshot(existing, tags)
        log.info("%s already exists (%s): not taken again", snapshot.describe(), snapshot.status)
    else:
        if state not in _SNAPSHOT_READY_STATES:
            raise CloudSnapshotError(
                f"{what} is {state!r}: RDS takes snapshots only of an instance that is available"
            )
        tags = {**base_tags(kind="rds", backup_id=backup_id, estate=estate), TAG_DATABASE: database}
        log.info("taking RDS snapshot %s of %s for backup %s", identifier, what, backup_id)
        try:
            created = hook.conn.create_db_snapshot(
                DBInstanceIdentifier=instance_id, DBSnapshotIdentifier=identifier, Tags=aws_tags(tags)
            )["DBSnapshot"]
        except (ClientError, BotoCoreError) as error:
            raise CloudSnapshotError(
                f"could not take RDS snapshot {identifier} of {what}: {error}"
            ) from error
        snapshot = _snapshot(created, {**tags_from_aws(created.get("TagList")), **tags})

    if not wait:
        return snapshot

    def describe(snapshot_ids: list[str]) -> dict[str, str]:
        statuses = {}
        for snapshot_id in snapshot_ids:
            # A snapshot that is gone is left out: the wait reports it as disappeared.
            with contextlib.suppress(AirflowNotFoundException):
                statuses[snapshot_id] = hook.get_db_snapshot_state(snapshot_id)
        return statuses

    [snapshot] = wait_for_snapshots([snapshot], describe, timeout=wait_timeout, poll_interval=poll_interval)
    log.info("%s is %s", snapshot.describe(), snapshot.status)
    return snapshot


def list_rds_snapshots(aws_conn_id: str, *, estate: str, database: str | None = None) -> list[CloudSnapshot]:
    """List the manual DB snapshots tagged by cloudops for ``estate`` (and ``database``), from their tags."""
    hook = _hook(aws_conn_id)
    found: list[CloudSnapshot] = []
    for page in hook.conn.get_paginator("describe_db_snapshots").paginate(SnapshotType="manual"):
        for item in page.get("DBSnapshots", []):
            tags = tags_from_aws(item.get("TagList"))
            if tags.get(TAG_KIND) != "rds" or tags.get(TAG_ESTATE) != estate:
                continue
            if database is not None and tags.get(TAG_DATABASE) != database:
                continue
            if TAG_BACKUP_ID not in tags or TAG_DATABASE not in tags:
                log.warning(
                    "skipping RDS snapshot %s: tagged for cloudops but without backup id or database",
                    item["DBSnapshotIdentifier"],
                )
                continue
            found.append(_snapshot(item, tags))
    return found


def delete_rds_snapshot(aws_conn_id: str, snapshot: CloudSnapshot, *, dry_run: bool) -> None:
    """Delete one RDS snapshot cloudops took, as :func:`.snapshots.delete_cloud_snapshot` describes."""
    from botocore.exceptions import BotoCoreError, ClientError

    hook = _hook(aws_conn_id)
    current = _describe(hook, snapshot.snapshot_id)
    if current is None:
        log.info("%s: already gone, nothing to delete", snapshot.describe())
        return
    check_ownership(snapshot, tags_from_aws(current.get("TagList")))
    status = str(current.get("Status", "?")).lower()
    if dry_run:
        log.info("dry run: would delete %s, %s, taken %s", snapshot.describe(), status, snapshot.created_at)
        return
    log.info("deleting %s, %s, taken %s", snapshot.describe(), status, snapshot.created_at)
    try:
        hook.conn.delete_db_snapshot(DBSnapshotIdentifier=snapshot.snapshot_id)
    except ClientError as error:
        if aws_error_code(error) == "DBSnapshotNotFound":
            log.info("%s: already gone, nothing to delete", snapshot.describe())
            return
        raise CloudSnapshotError(f"could not delete {snapshot.describe()} ({status}): {error}") from error
    except BotoCoreError as error:
        raise CloudSnapshotError(f"could not delete {snapshot.describe()} ({status}): {error}") from error
    log.info("deleted %s", snapshot.describe())


def _hook(aws_conn_id: str) -> Any:
    from airflow.providers.amazon.aws.hooks.rds import RdsHook

    return RdsHook(aws_conn_id=aws_conn_id, config=client_config(RdsHook(aws_conn_id=aws_conn_id).config))


def _describe(hook: Any, identifier: str) -> Mapping[str, Any] | None:
    """Return the DB snapshot called ``identifier``, or None when there is none."""
    from botocore.exceptions import ClientError

    try:
        snapshots = hook.conn.describe_db_snapshots(DBSnapshotIdentifier=identifier)["DBSnapshots"]
    except ClientError as error:
        if aws_error_code(error) == "DBSnapshotNotFound":
            return None
        raise
    return snapshots[0] if snapshots else None


def _snapshot(item: Mapping[str, Any], tags: Mapping[str, str]) -> CloudSnapshot:
    """Return a DB snapshot, with cloudops's tags, as a CloudSnapshot."""
    return CloudSnapshot(
        kind="rds",
        snapshot_id=item["DBSnapshotIdentifier"],
        backup_id=tags[TAG_BACKUP_ID],
        created_at=created_at_or_now(item.get("SnapshotCreateTime"), item.get("OriginalSnapshotCreateTime")),
        status=str(item.get("Status", "creating")),
        target=tags[TAG_DATABASE],
        instance_id=item.get("DBInstanceIdentifier"),
        tags=dict(tags),
    )


# --- Restore drills of RDS snapshots -----------------------------------------------------------------
#
# A drill restores the backup's RDS snapshot into a scratch instance named after the run, checks it through
# the API and deletes it. Scratch instances are named ``cloudops-drill-<database>-<run hash>`` and tagged
# ``cloudops:drill=<database>``, ``cloudops:estate`` and ``cloudops:run-id``: only an instance with that name
# shape *and* those tags is ever deleted.

DRILL_PREFIX = "cloudops-drill-"
TAG_DRILL = "cloudops:drill"
TAG_RUN_ID = "cloudops:run-id"
TAG_SOURCE_SNAPSHOT = "cloudops:source-snapshot"
DRILL_RESTORE_WAIT = timedelta(minutes=90)
DRILL_SNAPSHOT_WAIT = timedelta(minutes=60)

_INSTANCE_IDENTIFIER_MAX = 63
_RUN_HASH_LENGTH = 10
# cloudops-drill- + stem + - + run hash fits 63 characters.
_MAX_DRILL_STEM = _INSTANCE_IDENTIFIER_MAX - len(DRILL_PREFIX) - 1 - _RUN_HASH_LENGTH
_TAG_VALUE_MAX = 256
_NOT_IDENTIFIER = re.compile(r"[^a-z0-9-]+")
_HYPHENS = re.compile(r"-{2,}")
# Statuses a restoring instance does not leave on its own, or leaves only to be deleted.
_INSTANCE_FAILED_STATES = frozenset(
    {
        "failed",
        "incompatible-restore",
        "incompatible-parameters",
        "incompatible-network",
        "incompatible-option-group",
        "inaccessible-encryption-credentials",
        "restore-error",
        "storage-full",
        "deleting",
    }
)


@dataclass(frozen=True)
class RdsSnapshotChoice:
    """The DB snapshot a drill restores, and why that one.

    :param snapshot: the snapshot as ``describe_db_snapshots`` returns it.
    :param of_backup: it is the snapshot tagged with the drilled backup's id (else a fallback).
    :param reason: the decision in words, for the log and the drill record.
    """

    snapshot: Mapping[str, Any]
    of_backup: bool
    reason: str

    @property
    def snapshot_id(self) -> str:
        return str(self.snapshot["DBSnapshotIdentifier"])


def rds_drill_stem(database: str) -> str:
    """Return the part of a scratch instance's name that stands for ``database`` (made an identifier).

    :raises ValueError: ``database`` has no letter or digit.
    """
    stem = _HYPHENS.sub("-", _NOT_IDENTIFIER.sub("-", database.lower())).strip("-")
    if not stem:
        raise ValueError(f"database {database!r} has no letter or digit to name an RDS instance with")
    if len(stem) <= _MAX_DRILL_STEM:
        return stem
    digest = hashlib.sha256(database.encode()).hexdigest()[:8]
    return f"{stem[: _MAX_DRILL_STEM - 9].rstrip('-')}-{digest}"


def rds_drill_instance_name(database: str, run_id: str) -> str:
    """Return the scratch RDS instance a run restores into, e.g. ``cloudops-drill-orders-pg-1a2b3c4d5e``.

    A valid RDS instance identifier (a letter first, letters, digits and single hyphens, at most 63
    characters): the database's name and the first 10 hex digits of the SHA-256 of the run id, so that
    each run has its own, a retry of the same run finds its own, and the next drill finds the leftovers.

    :raises ValueError: ``run_id`` is empty, or ``database`` has no letter or digit.
    """
    if not run_id:
        raise ValueError("run_id must not be empty: a scratch instance carries the run's id")
    run_hash = hashlib.sha256(run_id.encode()).hexdigest()[:_RUN_HASH_LENGTH]
    return f"{DRILL_PREFIX}{rds_drill_stem(database)}-{run_hash}"


def is_rds_drill_instance_of(identifier: str, database: str) -> bool:
    """Whether ``identifier`` has the name of a scratch instance of ``database`` (of any run).

    Exact: ``cloudops-drill-orders-pg-<hash>`` belongs to ``orders_pg``, not to ``orders``.
    """
    pattern = rf"{re.escape(DRILL_PREFIX + rds_drill_stem(database))}-[0-9a-f]{{{_RUN_HASH_LENGTH}}}"
    return re.fullmatch(pattern, identifier.lower()) is not None


def rds_drill_tags(*, database: str, estate: str, run_id: str, snapshot_id: str) -> dict[str, str]:
    """Return the tags of a scratch instance: what marks it as a drill's, and where it came from."""
    return {
        **current_cost_tags(),
        TAG_DRILL: database,
        TAG_ESTATE: estate,
        TAG_RUN_ID: run_id[:_TAG_VALUE_MAX],
        TAG_SOURCE_SNAPSHOT: snapshot_id,
    }


def refuse_unless_rds_drill_instance(
    identifier: str, tags: Mapping[str, str], *, database: str, estate: str, action: str
) -> None:
    """Refuse ``action`` on an RDS instance unless its name and tags say it is a scratch instance of
    ``database`` in ``estate``.

    :raises RestoreRefused: it is not; nothing was done.
    """
    reasons = []
    if not is_rds_drill_instance_of(identifier, database):
        reasons.append(f"its name is not {DRILL_PREFIX}{rds_drill_stem(database)}-<run hash>")
    if tags.get(TAG_DRILL) != database:
        reasons.append(f"its tag {TAG_DRILL} is {tags.get(TAG_DRILL)!r}, not {database!r}")
    if tags.get(TAG_ESTATE) != estate:
        reasons.append(f"its tag {TAG_ESTATE} is {tags.get(TAG_ESTATE)!r}, not {estate!r}")
    if reasons:
        raise RestoreRefused(
            f"refusing to {action} RDS instance {identifier!r}: {'; '.join(reasons)}. Only scratch instances "
            f"that a restore drill of {database} created are ever deleted by cloudops"
        )


def choose_rds_snapshot(
    snapshots: Sequence[Mapping[str, Any]], *, instance_id: str, database: str, backup_id: str
) -> RdsSnapshotChoice:
    """Choose the DB snapshot to drill: the backup's own (tagged with its id), else the newest available
    snapshot of the instance (manual or automated), saying so.

    :param snapshots: the instance's snapshots as ``describe_db_snapshots`` returns them; those of other
        instances are ignored.
    :raises CloudOpsError: the instance has no available snapshot at all.
    """
    mine = [s for s in snapshots if s.get("DBInstanceIdentifier") == instance_id]
    tagged = [
        s
        for s in mine
        if (tags := tags_from_aws(s.get("TagList"))).get(TAG_BACKUP_ID) == backup_id
        and tags.get(TAG_DATABASE) == database
    ]
    available = [s for s in tagged if str(s.get("Status", "")).lower() == "available"]
    if available:
        snapshot = max(available, key=_snapshot_time)
        return RdsSnapshotChoice(
            snapshot,
            True,
            f"snapshot {snapshot['DBSnapshotIdentifier']} is the one of backup {backup_id} (tagged "
            f"{TAG_BACKUP_ID})",
        )
    why = (
        f"the snapshot of backup {backup_id} ({tagged[0]['DBSnapshotIdentifier']}) is "
        f"{str(tagged[0].get('Status', '?')).lower()!r}"
        if tagged
        else f"no snapshot of {instance_id} is tagged with backup {backup_id}"
    )
    candidates = [s for s in mine if str(s.get("Status", "")).lower() == "available"]
    if not candidates:
        raise CloudOpsError(
            f"{why}, and RDS instance {instance_id!r} has no other available snapshot: nothing to drill. "
            f"Check the backup's snapshot_rds task"
        )
    snapshot = max(candidates, key=_snapshot_time)
    return RdsSnapshotChoice(
        snapshot,
        False,
        f"{why}: drilling the newest available snapshot of {instance_id} instead, "
        f"{snapshot['DBSnapshotIdentifier']} ({snapshot.get('SnapshotType', '?')}, taken "
        f"{_snapshot_time(snapshot).isoformat(timespec='seconds')})",
    )


def pending_backup_snapshot(
    snapshots: Sequence[Mapping[str, Any]], *, instance_id: str, database: str, backup_id: str
) -> CloudSnapshot | None:
    """Return the backup's own snapshot when it is still being created (not final), else None."""
    for item in snapshots:
        tags = tags_from_aws(item.get("TagList"))
        if (
            item.get("DBInstanceIdentifier") == instance_id
            and tags.get(TAG_BACKUP_ID) == backup_id
            and tags.get(TAG_DATABASE) == database
        ):
            snapshot = _snapshot(item, tags)
            if not snapshot.final:
                return snapshot
    return None


def snapshot_facts(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """Return what a restored instance must match: engine, engine version and allocated storage."""
    return {
        "snapshot_id": snapshot["DBSnapshotIdentifier"],
        "engine": snapshot.get("Engine"),
        "engine_version": snapshot.get("EngineVersion"),
        "allocated_storage": snapshot.get("AllocatedStorage"),
    }


def rds_drill_checks(instance: Mapping[str, Any] | None, facts: Mapping[str, Any]) -> list[Any]:
    """Check a restored scratch instance against its snapshot, as far as the RDS API shows it.

    :param instance: the scratch instance as ``describe_db_instances`` returns it (None: it does not exist).
    :param facts: the snapshot's, from :func:`snapshot_facts`.
    :return: :class:`~cloudops.restore.record.Check` entries, named ``rds ...``.
    """
    from cloudops.restore.record import Check

    if instance is None:
        return [Check(name="rds instance exists", passed=False, expected=True, observed=False)]
    status = str(instance.get("DBInstanceStatus", "")).lower()
    endpoint = instance.get("Endpoint") or {}
    address = (
        f"{endpoint['Address']}:{endpoint['Port']}"
        if endpoint.get("Address") and endpoint.get("Port")
        else None
    )
    storage, wanted = instance.get("AllocatedStorage"), facts.get("allocated_storage")
    return [
        Check(name="rds status", passed=status == "available", expected="available", observed=status),
        Check(
            name="rds engine",
            passed=instance.get("Engine") == facts.get("engine"),
            expected=facts.get("engine"),
            observed=instance.get("Engine"),
        ),
        Check(
            name="rds engine version",
            passed=instance.get("EngineVersion") == facts.get("engine_version"),
            expected=facts.get("engine_version"),
            observed=instance.get("EngineVersion"),
        ),
        Check(
            name="rds endpoint",
            passed=address is not None,
            expected="address and port",
            observed=address,
            detail="" if address else "the instance has no endpoint: nothing could connect to it",
        ),
        Check(
            name="rds allocated storage",
            passed=isinstance(storage, int) and isinstance(wanted, int) and storage >= wanted,
            expected=wanted,
            observed=storage,
            detail="GiB, at least the snapshot's",
        ),
    ]


def wait_for_instance(
    describe: Callable[[], Mapping[str, Any] | None],
    identifier: str,
    *,
    timeout: timedelta,
    poll_interval: timedelta = DEFAULT_POLL_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Mapping[str, Any]:
    """Poll ``describe`` until the RDS instance is ``available``; bounded by ``timeout``.

    :param describe: returns the instance as ``describe_db_instances`` does, or None when it is gone.
    :return: the available instance.
    :raises CloudOpsError: it disappeared, reached a failed status, or the deadline passed first; the
        message names the instance and its last status.
    """
    deadline = clock() + timeout.total_seconds()
    polls = 0
    while True:
        instance = describe()
        polls += 1
        if instance is None:
            raise CloudOpsError(
                f"scratch RDS instance {identifier!r} disappeared while being restored "
                "(deleted by someone else?)"
            )
        status = str(instance.get("DBInstanceStatus", "?")).lower()
        if status == "available":
            return instance
        if status in _INSTANCE_FAILED_STATES:
            raise CloudOpsError(f"scratch RDS instance {identifier!r} is {status!r}: the restore failed")
        remaining = deadline - clock()
        if remaining <= 0:
            raise CloudOpsError(
                f"gave up waiting for scratch RDS instance {identifier!r} after {render_duration(timeout)} "
                f"({polls} polls): it is still {status!r}. teardown_rds deletes it; if it could not, "
                "the next drill's prepare does"
            )
        log.info("scratch RDS instance %s is %s: waiting", identifier, status)
        sleep(min(poll_interval.total_seconds(), remaining))


def restore_rds_drill_instance(
    aws_conn_id: str,
    instance_id: str,
    *,
    database: str,
    estate: str,
    backup_id: str,
    run_id: str,
    wait_timeout: timedelta = DRILL_RESTORE_WAIT,
    snapshot_wait: timedelta = DRILL_SNAPSHOT_WAIT,
    poll_interval: timedelta = DEFAULT_POLL_INTERVAL,
) -> dict[str, Any]:
    """Restore the backup's DB snapshot of ``instance_id`` into the run's scratch instance; wait until it
    is available (bounded).

    The snapshot is chosen by :func:`choose_rds_snapshot`; when the backup's own is still being created
    (the drill started on the backup's Asset while ``snapshot_rds`` runs), it is waited for first, at most
    ``snapshot_wait``. The scratch instance takes the source
    instance's subnet group and security groups when the source still exists (so it lands where the
    database lives), is not publicly accessible, single-AZ and without deletion protection (teardown
    deletes it), and carries :func:`rds_drill_tags`. Safe to re-run: a scratch instance this run already
    created is waited for, not restored again.

    In Airflow, the wait holds a worker slot: ``wait_timeout`` bounds it (90 minutes by default).

    :return: ``snapshot_id``, ``snapshot_choice`` (the reason), ``scratch_instance``, ``restore_seconds``
        and the snapshot's ``facts`` (see :func:`snapshot_facts`).
    :raises CloudOpsError: no snapshot to restore, AWS refused the restore, the restore failed or the wait
        ran out (the message names the scratch instance).
    :raises RestoreRefused: the run's scratch name is taken by an instance that is not this drill's.
    """
    from airflow.sdk.exceptions import AirflowNotFoundException
    from botocore.exceptions import BotoCoreError, ClientError

    hook = _hook(aws_conn_id)
    scratch = rds_drill_instance_name(database, run_id)
    started = time.monotonic()

    def list_snapshots() -> list[Mapping[str, Any]]:
        try:
            return [
                item
                for page in hook.conn.get_paginator("describe_db_snapshots").paginate(
                    DBInstanceIdentifier=instance_id
                )
                for item in page.get("DBSnapshots", [])
            ]
        except (ClientError, BotoCoreError) as error:
            raise CloudOpsError(
                f"could not list the DB snapshots of RDS instance {instance_id!r}: {error}"
            ) from error

    snapshots = list_snapshots()
    pending = pending_backup_snapshot(
        snapshots, instance_id=instance_id, database=database, backup_id=backup_id
    )
    if pending is not None:
        # The drill starts on the backup's Asset, maybe while the backup's snapshot_rds is still running.
        log.info("%s is %s: waiting for it (at most %s)", pending.describe(), pending.status, snapshot_wait)

        def describe(snapshot_ids: list[str]) -> dict[str, str]:
            with contextlib.suppress(AirflowNotFoundException):
                return {snapshot_ids[0]: hook.get_db_snapshot_state(snapshot_ids[0])}
            return {}

        with contextlib.suppress(CloudSnapshotError):  # a failed or late snapshot: the choice says so
            wait_for_snapshots([pending], describe, timeout=snapshot_wait, poll_interval=poll_interval)
        snapshots = list_snapshots()
    choice = choose_rds_snapshot(snapshots, instance_id=instance_id, database=database, backup_id=backup_id)
    (log.info if choice.of_backup else log.warning)("%s", choice.reason)

    existing = _describe_instance(hook, scratch)
    if existing is not None:
        tags = tags_from_aws(existing.get("TagList"))
        refuse_unless_rds_drill_instance(scratch, tags, database=database, estate=estate, action="reuse")
        log.info(
            "scratch RDS instance %s already exists (%s), restored from %s by an earlier try of this run: "
            "waiting for it, not restoring again",
            scratch,
            existing.get("DBInstanceStatus"),
            tags.get(TAG_SOURCE_SNAPSHOT),
        )
        created = existing.get("InstanceCreateTime")
        if created is not None:
            started -= max((datetime.now(UTC) - created.astimezone(UTC)).total_seconds(), 0.0)
        if tags.get(TAG_SOURCE_SNAPSHOT) and tags[TAG_SOURCE_SNAPSHOT] != choice.snapshot_id:
            choice = RdsSnapshotChoice(
                {**choice.snapshot, "DBSnapshotIdentifier": tags[TAG_SOURCE_SNAPSHOT]},
                choice.of_backup,
                f"{choice.reason}; the earlier try restored {tags[TAG_SOURCE_SNAPSHOT]}",
            )
    else:
        source = _describe_instance(hook, instance_id)
        placement: dict[str, Any] = {}
        if source is not None:
            if (source.get("DBSubnetGroup") or {}).get("DBSubnetGroupName"):
                placement["DBSubnetGroupName"] = source["DBSubnetGroup"]["DBSubnetGroupName"]
            groups = [
                g["VpcSecurityGroupId"]
                for g in source.get("VpcSecurityGroups") or []
                if g.get("VpcSecurityGroupId")
            ]
            if groups:
                placement["VpcSecurityGroupIds"] = groups
        tags = rds_drill_tags(database=database, estate=estate, run_id=run_id, snapshot_id=choice.snapshot_id)
        log.info(
            "restoring RDS snapshot %s into scratch instance %s (tags %s, %s)",
            choice.snapshot_id,
            scratch,
            tags,
            placement or "default placement",
        )
        try:
            hook.conn.restore_db_instance_from_db_snapshot(
                DBInstanceIdentifier=scratch,
                DBSnapshotIdentifier=choice.snapshot_id,
                Tags=aws_tags(tags),
                MultiAZ=False,
                PubliclyAccessible=False,
                DeletionProtection=False,
                CopyTagsToSnapshot=False,
                **placement,
            )
        except (ClientError, BotoCoreError) as error:
            raise CloudOpsError(
                f"could not restore RDS snapshot {choice.snapshot_id} into scratch instance "
                f"{scratch!r}: {error}"
            ) from error

    wait_for_instance(
        lambda: _describe_instance(hook, scratch), scratch, timeout=wait_timeout, poll_interval=poll_interval
    )
    seconds = time.monotonic() - started
    log.info("scratch RDS instance %s is available after %.1f s", scratch, seconds)
    return {
        "snapshot_id": choice.snapshot_id,
        "snapshot_choice": choice.reason,
        "scratch_instance": scratch,
        "restore_seconds": seconds,
        "facts": snapshot_facts(choice.snapshot),
    }


def check_rds_drill_instance(aws_conn_id: str, scratch: str, facts: Mapping[str, Any]) -> list[Any]:
    """Describe the scratch instance and check it against its snapshot (:func:`rds_drill_checks`)."""
    return rds_drill_checks(_describe_instance(_hook(aws_conn_id), scratch), facts)


def delete_rds_drill_instance(aws_conn_id: str, scratch: str, *, database: str, estate: str) -> bool:
    """Delete a drill's scratch instance, without a final snapshot, after the guard; log the plan first.

    :return: whether a deletion was started (False: it was already gone or being deleted).
    :raises RestoreRefused: the instance's name or tags do not say it is a scratch instance of this drill.
    :raises CloudOpsError: AWS refused the deletion.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    hook = _hook(aws_conn_id)
    instance = _describe_instance(hook, scratch)
    if instance is None:
        log.info("scratch RDS instance %s does not exist: nothing to delete", scratch)
        return False
    tags = tags_from_aws(instance.get("TagList"))
    refuse_unless_rds_drill_instance(scratch, tags, database=database, estate=estate, action="delete")
    status = str(instance.get("DBInstanceStatus", "?")).lower()
    if status == "deleting":
        log.info("scratch RDS instance %s is already being deleted", scratch)
        return False
    log.info(
        "deleting scratch RDS instance %s (%s, run %s, restored from %s) with SkipFinalSnapshot=True",
        scratch,
        status,
        tags.get(TAG_RUN_ID),
        tags.get(TAG_SOURCE_SNAPSHOT),
    )
    try:
        hook.conn.delete_db_instance(
            DBInstanceIdentifier=scratch, SkipFinalSnapshot=True, DeleteAutomatedBackups=True
        )
    except ClientError as error:
        if aws_error_code(error) == "DBInstanceNotFound":
            log.info("scratch RDS instance %s: already gone", scratch)
            return False
        raise CloudOpsError(
            f"could not delete scratch RDS instance {scratch!r} ({status}): {error}"
        ) from error
    except BotoCoreError as error:
        raise CloudOpsError(
            f"could not delete scratch RDS instance {scratch!r} ({status}): {error}"
        ) from error
    return True


def delete_leftover_rds_drill_instances(
    aws_conn_id: str, *, database: str, estate: str, keep: str | None = None
) -> list[str]:
    """Delete the scratch instances of ``database`` that killed drills left (all but ``keep``).

    An instance is a leftover when its name is a scratch name of ``database`` and its tags say a drill of
    ``database`` in ``estate`` created it; any other instance is never touched. One that cannot be deleted
    yet (still being created) is logged and left for the next drill.

    :return: the instances whose deletion was started.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    hook = _hook(aws_conn_id)
    deleted = []
    for page in hook.conn.get_paginator("describe_db_instances").paginate():
        for instance in page.get("DBInstances", []):
            identifier = instance["DBInstanceIdentifier"]
            if identifier == keep or not is_rds_drill_instance_of(identifier, database):
                continue
            tags = tags_from_aws(instance.get("TagList"))
            if tags.get(TAG_DRILL) != database or tags.get(TAG_ESTATE) != estate:
                log.warning(
                    "RDS instance %s has a scratch name of %s but not a drill's tags (%s): left alone",
                    identifier,
                    database,
                    tags,
                )
                continue
            log.info(
                "deleting %s, left by a drill (run %s) that did not finish", identifier, tags.get(TAG_RUN_ID)
            )
            try:
                if delete_rds_drill_instance(aws_conn_id, identifier, database=database, estate=estate):
                    deleted.append(identifier)
            except CloudOpsError as error:
                cause = error.__cause__
                if isinstance(cause, (ClientError, BotoCoreError)):
                    log.warning(
                        "could not delete leftover %s yet, the next drill tries again: %s", identifier, error
                    )
                    continue
                raise
    return deleted


def _describe_instance(hook: Any, identifier: str) -> Mapping[str, Any] | None:
    """Return the DB instance called ``identifier``, or None when there is none."""
    from botocore.exceptions import ClientError

    try:
        instances = hook.conn.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"]
    except ClientError as error:
        if aws_error_code(error) == "DBInstanceNotFound":
            return None
        raise
    return instances[0] if instances else None


def _snapshot_time(snapshot: Mapping[str, Any]) -> datetime:
    return created_at_or_now(snapshot.get("SnapshotCreateTime"), snapshot.get("OriginalSnapshotCreateTime"))


__all__ = [
    "DRILL_PREFIX",
    "TAG_DRILL",
    "TAG_RUN_ID",
    "TAG_SOURCE_SNAPSHOT",
    "RdsSnapshotChoice",
    "check_rds_drill_instance",
    "choose_rds_snapshot",
    "delete_leftover_rds_drill_instances",
    "delete_rds_drill_instance",
    "delete_rds_snapshot",
    "is_rds_drill_instance_of",
    "list_rds_snapshots",
    "pending_backup_snapshot",
    "rds_drill_checks",
    "rds_drill_instance_name",
    "rds_drill_stem",
    "rds_drill_tags",
    "refuse_unless_rds_drill_instance",
    "restore_rds_drill_instance",
    "snapshot_facts",
    "snapshot_rds_instance",
    "wait_for_instance",
]
