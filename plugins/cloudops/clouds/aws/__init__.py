"""Snapshots in AWS for the nightly backups: RDS DB snapshots and EBS volume snapshots, with retention.

One import point for the runbooks::

    from cloudops.clouds.aws import snapshot_rds_instance, list_cloud_snapshots, plan_cloud_snapshot_retention

Importing this package imports neither Airflow nor boto3.
"""

from __future__ import annotations

from cloudops.clouds.aws.ec2 import snapshot_ebs_volumes
from cloudops.clouds.aws.rds import snapshot_rds_instance
from cloudops.clouds.aws.snapshots import (
    CloudRetentionRefused,
    CloudSnapshot,
    CloudSnapshotError,
    CloudSnapshotRetention,
    SnapshotFailed,
    SnapshotTargetNotFound,
    SnapshotWaitTimeout,
    apply_cloud_snapshot_retention,
    as_retention_records,
    delete_cloud_snapshot,
    list_cloud_snapshots,
    plan_cloud_snapshot_retention,
    rds_snapshot_identifier,
    wait_for_snapshots,
)

__all__ = [
    "CloudRetentionRefused",
    "CloudSnapshot",
    "CloudSnapshotError",
    "CloudSnapshotRetention",
    "SnapshotFailed",
    "SnapshotTargetNotFound",
    "SnapshotWaitTimeout",
    "apply_cloud_snapshot_retention",
    "as_retention_records",
    "delete_cloud_snapshot",
    "list_cloud_snapshots",
    "plan_cloud_snapshot_retention",
    "rds_snapshot_identifier",
    "snapshot_ebs_volumes",
    "snapshot_rds_instance",
    "wait_for_snapshots",
]
