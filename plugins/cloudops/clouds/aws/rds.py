"""RDS DB snapshots of the estate's databases on RDS, through the amazon provider's ``RdsHook``.

The hook and boto3 are imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

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
    rds_snapshot_identifier,
    tags_from_aws,
    wait_for_snapshots,
)
from cloudops.errors import aws_error_code

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


__all__ = ["delete_rds_snapshot", "list_rds_snapshots", "snapshot_rds_instance"]
