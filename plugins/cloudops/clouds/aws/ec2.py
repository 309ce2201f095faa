"""EBS snapshots of the fleets' data volumes, through the amazon provider's ``EC2Hook`` (client API).

The hook and boto3 are imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from cloudops.clouds.aws.snapshots import (
    DEFAULT_POLL_INTERVAL,
    TAG_BACKUP_ID,
    TAG_ESTATE,
    TAG_FLEET,
    TAG_HOST,
    TAG_KIND,
    CloudSnapshot,
    CloudSnapshotError,
    SnapshotTargetNotFound,
    aws_tags,
    base_tags,
    check_ownership,
    client_config,
    created_at_or_now,
    tags_from_aws,
    wait_for_snapshots,
)
from cloudops.errors import aws_error_code

log = logging.getLogger(__name__)


def snapshot_ebs_volumes(
    aws_conn_id: str,
    volumes: Sequence[tuple[str, str]],
    *,
    backup_id: str,
    estate: str,
    fleet: str,
    wait: bool = True,
    wait_timeout: timedelta = timedelta(hours=2),
    poll_interval: timedelta = DEFAULT_POLL_INTERVAL,
) -> list[CloudSnapshot]:
    """Take one EBS snapshot per volume for a backup, tagged with it, and wait until all are completed.

    Each snapshot is tagged ``cloudops:backup-id``, ``cloudops:estate``, ``cloudops:fleet``,
    ``cloudops:host`` and ``cloudops:kind=ebs``. Safe to re-run: a volume that already has a snapshot of
    this backup (not failed) is not snapshotted again, only waited for. A missing volume does not cost the
    other hosts their snapshots: every volume that exists is snapshotted and waited for, then the call
    raises naming each missing host and volume, with the snapshots it took. The first snapshot of a large
    volume can take hours; for long waits in Airflow, call with ``wait=False`` and poll in a sensor with
    ``mode="reschedule"`` (the amazon provider has no EBS snapshot sensor or trigger).

    :param volumes: ``(host name, volume id)`` pairs, e.g. from the catalog's hosts' ``ebs_volume_ids``.
    :param wait: wait for ``completed``; with False, return the snapshots as started (``pending``).
    :raises SnapshotTargetNotFound: a volume does not exist; ``snapshots`` holds those taken.
    :raises SnapshotWaitTimeout: not all completed by ``wait_timeout``; ``snapshots`` holds them all.
    :raises SnapshotFailed: a snapshot ended in ``error``; ``snapshots`` holds them all.
    :raises CloudSnapshotError: AWS refused a call; ``snapshots`` holds those already started.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    if not volumes:
        return []
    seen: set[str] = set()
    for host, volume_id in volumes:
        if volume_id in seen:
            raise ValueError(f"volume {volume_id} (host {host}) is listed twice")
        seen.add(volume_id)
    client = _client(aws_conn_id)
    existing_volumes = _existing_volumes(client, list(seen))
    already = {
        snapshot.volume_id: snapshot
        for snapshot in _list(client, estate=estate, backup_id=backup_id)
        if not snapshot.failed
    }

    started: list[CloudSnapshot] = []
    missing: list[tuple[str, str]] = []
    for host, volume_id in volumes:
        if volume_id not in existing_volumes:
            missing.append((host, volume_id))
            continue
        if volume_id in already:
            snapshot = already[volume_id]
            log.info("%s already exists (%s): not taken again", snapshot.describe(), snapshot.status)
            started.append(snapshot)
            continue
        tags = {
            **base_tags(kind="ebs", backup_id=backup_id, estate=estate),
            TAG_FLEET: fleet,
            TAG_HOST: host,
        }
        description = f"cloudops backup {backup_id} of host {host} (fleet {fleet}, estate {estate})"
        log.info("taking EBS snapshot of volume %s of host %s for backup %s", volume_id, host, backup_id)
        try:
            created = client.create_snapshot(
                VolumeId=volume_id,
                Description=description[:255],
                TagSpecifications=[{"ResourceType": "snapshot", "Tags": aws_tags(tags)}],
            )
        except ClientError as error:
            if aws_error_code(error) == "InvalidVolume.NotFound":  # deleted since it was listed
                missing.append((host, volume_id))
                continue
            raise _failed_call(volume_id, host, error, started) from error
        except BotoCoreError as error:
            raise _failed_call(volume_id, host, error, started) from error
        started.append(_snapshot(created, {**tags_from_aws(created.get("Tags")), **tags}))

    missing_text = "; ".join(
        f"EBS volume {volume_id} of host {host} (fleet {fleet}, estate {estate}) does not exist"
        for host, volume_id in missing
    )
    if missing:
        log.error("%s: check ebs_volume_ids in the catalog", missing_text)
    if wait and started:
        try:
            started = wait_for_snapshots(
                started,
                lambda snapshot_ids: _statuses(client, snapshot_ids),
                timeout=wait_timeout,
                poll_interval=poll_interval,
            )
        except CloudSnapshotError as error:
            if not missing:
                raise
            raise type(error)(f"{error}. Also: {missing_text}", snapshots=error.snapshots) from error
    if missing:
        taken = ", ".join(f"{s.snapshot_id} ({s.target}, {s.status})" for s in started) or "none"
        raise SnapshotTargetNotFound(
            f"{missing_text}: check ebs_volume_ids in the catalog. Snapshots taken of the other volumes "
            f"of backup {backup_id}: {taken}",
            snapshots=started,
        )
    return started


def list_ebs_snapshots(aws_conn_id: str, *, estate: str, fleet: str | None = None) -> list[CloudSnapshot]:
    """List the EBS snapshots tagged by cloudops for ``estate`` (and ``fleet``), from their tags."""
    return _list(_client(aws_conn_id), estate=estate, fleet=fleet)


def delete_ebs_snapshot(aws_conn_id: str, snapshot: CloudSnapshot, *, dry_run: bool) -> None:
    """Delete one EBS snapshot cloudops took, as :func:`.snapshots.delete_cloud_snapshot` describes."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = _client(aws_conn_id)
    current = _describe(client, [snapshot.snapshot_id]).get(snapshot.snapshot_id)
    if current is None:
        log.info("%s: already gone, nothing to delete", snapshot.describe())
        return
    check_ownership(snapshot, tags_from_aws(current.get("Tags")))
    state = current.get("State", "?")
    if dry_run:
        log.info("dry run: would delete %s, %s, taken %s", snapshot.describe(), state, snapshot.created_at)
        return
    log.info("deleting %s, %s, taken %s", snapshot.describe(), state, snapshot.created_at)
    try:
        client.delete_snapshot(SnapshotId=snapshot.snapshot_id)
    except ClientError as error:
        if aws_error_code(error) == "InvalidSnapshot.NotFound":
            log.info("%s: already gone, nothing to delete", snapshot.describe())
            return
        raise CloudSnapshotError(f"could not delete {snapshot.describe()} ({state}): {error}") from error
    except BotoCoreError as error:
        raise CloudSnapshotError(f"could not delete {snapshot.describe()} ({state}): {error}") from error
    log.info("deleted %s", snapshot.describe())


def volumes_of_hosts(aws_conn_id: str, host_names: Sequence[str]) -> list[tuple[str, str]]:
    """The EBS volumes attached to the EC2 instances whose ``Name`` tag is one of ``host_names``.

    :return: ``(host, volume_id)`` pairs, in ``host_names`` order, then by device name.
    :raises SnapshotTargetNotFound: a host has no instance with its name, naming every such host.
    """
    client = _client(aws_conn_id)
    devices: dict[str, list[tuple[str, str]]] = {name: [] for name in host_names}
    found: set[str] = set()
    pages = client.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": "tag:Name", "Values": list(host_names)},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        ]
    )
    for page in pages:
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                name = next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == "Name"), None)
                if name not in devices:
                    continue
                found.add(name)
                for mapping in instance.get("BlockDeviceMappings", []):
                    if "Ebs" in mapping:
                        devices[name].append((mapping["DeviceName"], mapping["Ebs"]["VolumeId"]))
    if missing := [name for name in host_names if name not in found]:
        raise SnapshotTargetNotFound(
            f"no EC2 instance tagged Name={', '.join(missing)}: tag the hosts' instances with their "
            "catalog names or list their ebs_volume_ids in the catalog"
        )
    return [(name, volume) for name in host_names for _, volume in sorted(devices[name])]


def _client(aws_conn_id: str) -> Any:
    from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook

    config = client_config(EC2Hook(aws_conn_id=aws_conn_id, api_type="client_type").config)
    return EC2Hook(aws_conn_id=aws_conn_id, api_type="client_type", config=config).conn


def _existing_volumes(client: Any, volume_ids: list[str]) -> set[str]:
    # A filter, unlike VolumeIds=, answers for the volumes that exist instead of failing the whole call.
    found: set[str] = set()
    paginator = client.get_paginator("describe_volumes")
    for page in paginator.paginate(Filters=[{"Name": "volume-id", "Values": volume_ids}]):
        found.update(volume["VolumeId"] for volume in page.get("Volumes", []))
    return found


def _describe(client: Any, snapshot_ids: list[str]) -> dict[str, Mapping[str, Any]]:
    """Return the snapshots among ``snapshot_ids`` that exist, by id."""
    pages = client.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"], Filters=[{"Name": "snapshot-id", "Values": snapshot_ids}]
    )
    return {item["SnapshotId"]: item for page in pages for item in page.get("Snapshots", [])}


def _statuses(client: Any, snapshot_ids: list[str]) -> dict[str, str]:
    return {snapshot_id: item["State"] for snapshot_id, item in _describe(client, snapshot_ids).items()}


def _list(
    client: Any, *, estate: str, fleet: str | None = None, backup_id: str | None = None
) -> list[CloudSnapshot]:
    selected = {TAG_KIND: "ebs", TAG_ESTATE: estate, TAG_FLEET: fleet, TAG_BACKUP_ID: backup_id}
    filters = [{"Name": f"tag:{key}", "Values": [value]} for key, value in selected.items() if value]
    found: list[CloudSnapshot] = []
    for page in client.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=filters):
        for item in page.get("Snapshots", []):
            tags = tags_from_aws(item.get("Tags"))
            if TAG_BACKUP_ID not in tags or TAG_HOST not in tags:
                log.warning(
                    "skipping EBS snapshot %s: tagged for cloudops but without backup id or host",
                    item["SnapshotId"],
                )
                continue
            found.append(_snapshot(item, tags))
    return found


def _snapshot(item: Mapping[str, Any], tags: Mapping[str, str]) -> CloudSnapshot:
    """Return an EBS snapshot, with cloudops's tags, as a CloudSnapshot."""
    return CloudSnapshot(
        kind="ebs",
        snapshot_id=item["SnapshotId"],
        backup_id=tags[TAG_BACKUP_ID],
        created_at=created_at_or_now(item.get("StartTime")),
        status=str(item.get("State", "pending")),
        target=tags[TAG_HOST],
        volume_id=item.get("VolumeId"),
        tags=dict(tags),
    )


def _failed_call(
    volume_id: str, host: str, error: Exception, started: list[CloudSnapshot]
) -> CloudSnapshotError:
    taken = ", ".join(snapshot.snapshot_id for snapshot in started) or "none"
    return CloudSnapshotError(
        f"could not snapshot EBS volume {volume_id} of host {host}: {error}. Snapshots already started in "
        f"this call: {taken}",
        snapshots=started,
    )


__all__ = ["delete_ebs_snapshot", "list_ebs_snapshots", "snapshot_ebs_volumes", "volumes_of_hosts"]
