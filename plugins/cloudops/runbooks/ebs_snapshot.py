"""# EBS snapshots: `ebs_snapshot__<fleet>`

**What it does.** On the fleet's snapshot schedule, takes one EBS snapshot of every volume of every
host of the fleet (the catalog's `ebs_volume_ids`, or else the volumes attached to the EC2 instance
tagged `Name=<host>`), all tagged with one backup id, and waits (bounded) until they complete. Then
retention applies the fleet's policy per host volume, with the same safety rules as database backups:
the newest complete snapshot is never deleted, one run never deletes more than the allowed share
(unfinished or failed snapshots included), and a volume with more failed snapshots than that share
deletes nothing and fails the task. Every snapshot deleted is a ledger fact (`retention.deleted`).

**What a failure means.**
- `snapshot_volumes` failed: a volume or instance is missing (the message names the host), a snapshot
  failed, or the wait ran out. Snapshots already started are listed in the log; they still count for
  retention once they complete.
- `apply_retention` failed: the new snapshots are safe; older ones may not have been pruned. "N of M
  backups are incomplete or unreadable" means that many snapshots of one volume never completed:
  nothing of that volume was deleted; look at them in the EC2 console before pruning by hand.

**What to do next.** Check the named host's instance and volumes in the AWS console (or fix the
catalog), then clear the failed task. Re-running is safe: a volume that already has this run's
snapshot is not snapshotted again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cloudops.catalog import Catalog, Fleet, LoadedCatalog
from cloudops.errors import CloudOpsError
from cloudops.runbooks.common import load_estate

if TYPE_CHECKING:
    from airflow.sdk import DAG

log = logging.getLogger(__name__)

KIND = "ebs_snapshot"
SNAPSHOT_WAIT = timedelta(hours=2)
NEXT_ACTIONS = {
    "snapshot_volumes": "check the named host's EC2 instance and volumes, then clear snapshot_volumes",
    "apply_retention": "the new snapshots are safe; read the retention plan in the log, then clear the task",
    "*": "read the task log",
}


def _target(catalog_file: str, estate: str, fleet_name: str) -> tuple[Catalog, Fleet, str]:
    catalog = load_estate(catalog_file, estate)
    fleet = next((f for f in catalog.fleets if f.name == fleet_name), None)
    if fleet is None or fleet.snapshots is None:
        raise CloudOpsError(f"fleet {fleet_name!r} has no snapshots policy in {catalog_file}")
    aws_conn_id = next(c.aws_conn_id for c in catalog.clouds if c.name == fleet.snapshots.cloud)
    return catalog, fleet, aws_conn_id


def snapshot_volumes(catalog_file: str, estate: str, fleet_name: str) -> dict[str, Any]:
    """Snapshot every volume of every host of the fleet under one new backup id; wait (bounded)."""
    from cloudops.clouds.aws import snapshot_ebs_volumes
    from cloudops.clouds.aws.ec2 import volumes_of_hosts
    from cloudops.repository.layout import new_backup_id

    _, fleet, aws_conn_id = _target(catalog_file, estate, fleet_name)
    listed = [(host.name, volume) for host in fleet.hosts for volume in host.ebs_volume_ids]
    unlisted = [host.name for host in fleet.hosts if not host.ebs_volume_ids]
    volumes = listed + (volumes_of_hosts(aws_conn_id, unlisted) if unlisted else [])
    backup_id = new_backup_id(datetime.now(UTC))
    log.info("snapshot %s of fleet %s: %d volumes: %s", backup_id, fleet_name, len(volumes), volumes)
    snapshots = snapshot_ebs_volumes(
        aws_conn_id, volumes, backup_id=backup_id, estate=estate, fleet=fleet_name, wait_timeout=SNAPSHOT_WAIT
    )
    return {
        "backup_id": backup_id,
        "snapshots": [
            {"host": s.target, "volume": s.volume_id, "snapshot": s.snapshot_id} for s in snapshots
        ],
    }


def apply_snapshot_retention(
    catalog_file: str,
    estate: str,
    fleet_name: str,
    *,
    dry_run: bool = False,
    allow_large_delete: bool = False,
    evidence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan retention per host volume with the fleet's policy, log it, then delete (unless a dry run).

    Every snapshot deleted is recorded as a ``retention.deleted`` fact with the plan's reasons.

    :param evidence: the context deletions are recorded under (the task's); default: this runbook, no run.
    :raises RetentionStopped: a volume has more unfinished or failed snapshots than one run may delete;
        nothing of it was deleted (the other volumes were pruned).
    """
    from cloudops.clouds.aws import (
        apply_cloud_snapshot_retention,
        list_cloud_snapshots,
        plan_cloud_snapshot_retention,
    )
    from cloudops.runbooks.backup import RetentionStopped, record_retention_deletion

    _, fleet, aws_conn_id = _target(catalog_file, estate, fleet_name)
    policy = fleet.snapshots
    assert policy is not None
    snapshots = list_cloud_snapshots(aws_conn_id, estate=estate, kind="ebs", fleet=fleet_name)
    plans = plan_cloud_snapshot_retention(
        snapshots,
        policy.retention,
        max_delete_share=policy.max_delete_share,
        allow_large_delete=allow_large_delete,
    )
    context = evidence or {"dag_id": f"{KIND}__{fleet_name}", "run_id": None}

    def recorded(group: Any, snapshot: Any) -> None:
        record_retention_deletion(
            context,
            estate=estate,
            fleet=fleet_name,
            host=snapshot.target,
            volume_id=snapshot.volume_id,
            what="ebs_snapshot",
            backup_id=snapshot.backup_id,
            group=group.group,
            deleted=snapshot.snapshot_id,
            reasons=group.plan.reasons[snapshot.backup_id],
            proof=None,
            policy=policy.retention,
            max_delete_share=policy.max_delete_share,
            allow_large_delete=allow_large_delete,
            status=snapshot.status,
        )

    deleted = apply_cloud_snapshot_retention(aws_conn_id, plans, dry_run=dry_run, on_deleted=recorded)
    if stopped := [group for group in plans if group.plan.stopped]:
        raise RetentionStopped("; ".join(f"{group.group}: {group.plan.stopped}" for group in stopped))
    return {"groups": {g.group: g.plan.to_json() for g in plans}, "deleted": deleted, "dry_run": dry_run}


def _retention_task(catalog_file: str, estate: str, fleet_name: str, **context: Any) -> dict[str, Any]:
    return apply_snapshot_retention(catalog_file, estate, fleet_name, evidence=context)


def build_ebs_snapshot_dags(loaded: LoadedCatalog) -> Iterator[DAG]:
    """Build ``ebs_snapshot__<fleet>`` for every fleet of the catalog with a snapshots policy."""
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG

    from cloudops.runbooks.common import (
        created_paused,
        default_args,
        failure_alerts,
        runbook_doc,
        start_date,
        tags,
    )

    catalog = loaded.catalog
    for fleet in catalog.fleets:
        if fleet.snapshots is None:
            continue
        op_kwargs = {"catalog_file": str(loaded.path), "estate": catalog.estate, "fleet_name": fleet.name}
        notifier = failure_alerts(loaded, f"fleet {fleet.name}", NEXT_ACTIONS)
        hosts = ", ".join(host.name for host in fleet.hosts)
        with DAG(
            dag_id=f"{KIND}__{fleet.name}",
            description=f"Snapshot the EBS volumes of fleet {fleet.name}, then prune old snapshots.",
            schedule=fleet.snapshots.schedule,
            start_date=start_date(catalog.timezone),
            catchup=False,
            max_active_runs=1,
            dagrun_timeout=SNAPSHOT_WAIT + timedelta(hours=1),
            default_args=default_args(
                catalog.owner,
                alerts=notifier,
                retries=2,
                execution_timeout=SNAPSHOT_WAIT + timedelta(minutes=10),
            ),
            is_paused_upon_creation=created_paused(fleet.snapshots.paused),
            doc_md=runbook_doc(
                __doc__, f"## This fleet: `{fleet.name}`\n\nHosts: {hosts}.\n\nOn call: **{catalog.owner}**."
            ),
            tags=tags(KIND, loaded),
        ):
            snapshot_task = PythonOperator(  # noqa: AIR001
                task_id="snapshot_volumes", python_callable=snapshot_volumes, op_kwargs=op_kwargs
            )
            retention_task = PythonOperator(  # noqa: AIR001
                task_id="apply_retention", python_callable=_retention_task, op_kwargs=op_kwargs
            )
            snapshot_task >> retention_task
            yield retention_task.dag


__all__ = ["apply_snapshot_retention", "build_ebs_snapshot_dags", "snapshot_volumes"]
