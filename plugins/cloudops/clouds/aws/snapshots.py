"""Cloud snapshots taken with the nightly backups: RDS DB snapshots and EBS volume snapshots.

A cloud snapshot belongs to a backup: it carries the backup's id in the tag ``cloudops:backup-id``, with
``cloudops:estate``, ``cloudops:kind`` (``rds`` or ``ebs``) and its target (``cloudops:database``, or
``cloudops:host`` and ``cloudops:fleet``). Listings are built from these tags only, so snapshots that
cloudops did not take (RDS automated snapshots, AMIs' snapshots) are never listed, planned or deleted.

The same retention applies as to the backups in the repository: :func:`plan_cloud_snapshot_retention`
groups snapshots per database (RDS) and per host volume (EBS) and runs
:func:`cloudops.repository.retention.plan_retention` on each group, with its safety rules (newest complete
snapshot kept, incomplete ones held for a grace period, a cap on the share deleted in one run).
A snapshot is *complete* when its status is final and good: ``available`` (RDS) or ``completed`` (EBS).

Taking snapshots is in :mod:`cloudops.clouds.aws.rds` and :mod:`cloudops.clouds.aws.ec2`; this module
holds what both share: the model, the tags, the bounded wait, listing, deletion and retention.
Importing it imports neither Airflow nor boto3.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cloudops.catalog.models import RetentionPolicy, render_duration
from cloudops.errors import CloudOpsError
from cloudops.repository.retention import (
    UNVERIFIED,
    VERIFIED,
    BackupRecord,
    RetentionPlan,
    RetentionRefused,
    plan_retention,
)

log = logging.getLogger(__name__)

SnapshotKind = Literal["rds", "ebs"]

TAG_BACKUP_ID = "cloudops:backup-id"
TAG_ESTATE = "cloudops:estate"
TAG_KIND = "cloudops:kind"
TAG_DATABASE = "cloudops:database"
TAG_HOST = "cloudops:host"
TAG_FLEET = "cloudops:fleet"

# Final statuses: a snapshot in one of them no longer changes on its own.
COMPLETE_STATUS: Mapping[str, str] = {"rds": "available", "ebs": "completed"}
FAILED_STATUSES: Mapping[str, frozenset[str]] = {
    "rds": frozenset({"failed", "error", "incompatible-parameters", "incompatible-restore"}),
    "ebs": frozenset({"error"}),
}
# Every AWS call is bounded: connect and read timeouts, and a fixed number of attempts. The connection's
# own config_kwargs extra overrides these.
DEFAULT_CLIENT_CONFIG: dict[str, Any] = {
    "connect_timeout": 10,
    "read_timeout": 60,
    "retries": {"total_max_attempts": 4, "mode": "standard"},
}
DEFAULT_POLL_INTERVAL = timedelta(seconds=30)

_RDS_IDENTIFIER_MAX = 255
_NOT_IDENTIFIER = re.compile(r"[^a-z0-9-]+")
_HYPHENS = re.compile(r"-{2,}")


class CloudSnapshotError(CloudOpsError):
    """A cloud snapshot could not be taken, waited for, listed or deleted.

    :ivar snapshots: the snapshots the failed call had already started, with their last known status:
        they exist in the cloud and count in retention (as incomplete until they finish).
    """

    def __init__(self, message: str, *, snapshots: Sequence[CloudSnapshot] = ()) -> None:
        super().__init__(message)
        self.snapshots = list(snapshots)


class SnapshotTargetNotFound(CloudSnapshotError):
    """The RDS instance or EBS volume to snapshot does not exist (or is not visible to the connection)."""


class SnapshotWaitTimeout(CloudSnapshotError):
    """Snapshots did not reach a final status before the wait's deadline; they were left as they are."""


class SnapshotFailed(CloudSnapshotError):
    """A snapshot reached a failed status (``failed``/``error``): it is no backup."""


class CloudRetentionRefused(RetentionRefused):
    """The retention plan of one snapshot group would delete more than one run may; names the group."""

    def __init__(self, group: str, refused: RetentionRefused) -> None:
        CloudOpsError.__init__(self, f"{group}: {refused}")
        self.group = group
        self.plan = refused.plan
        self.would_delete = refused.would_delete
        self.limit = refused.limit


@dataclass(frozen=True)
class CloudSnapshot:
    """One snapshot cloudops took, as listed from the cloud.

    :param kind: ``rds`` (a DB snapshot) or ``ebs`` (a volume snapshot).
    :param snapshot_id: the DB snapshot identifier, or the EBS ``snap-...`` id.
    :param backup_id: the backup it belongs to (tag ``cloudops:backup-id``); its id in retention plans.
    :param created_at: when it was taken (aware, UTC).
    :param status: the cloud's status, lower-case: ``creating``/``available`` (RDS),
        ``pending``/``completed`` (EBS), or a failed one.
    :param target: the catalog database (RDS) or host (EBS) it is a backup of.
    :param instance_id: the RDS instance it was taken of (RDS only).
    :param volume_id: the EBS volume it was taken of (EBS only).
    :param tags: all of its tags.
    """

    kind: SnapshotKind
    snapshot_id: str
    backup_id: str
    created_at: datetime
    status: str
    target: str
    instance_id: str | None = None
    volume_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in COMPLETE_STATUS:
            raise ValueError(f"snapshot {self.snapshot_id}: kind must be rds or ebs, got {self.kind!r}")
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise ValueError(f"snapshot {self.snapshot_id}: created_at must be timezone-aware")
        object.__setattr__(self, "created_at", self.created_at.astimezone(UTC))
        object.__setattr__(self, "status", self.status.lower())

    @property
    def complete(self) -> bool:
        """The snapshot finished and is usable: ``available`` (RDS) or ``completed`` (EBS)."""
        return self.status == COMPLETE_STATUS[self.kind]

    @property
    def failed(self) -> bool:
        """The snapshot reached a failed status."""
        return self.status in FAILED_STATUSES[self.kind]

    @property
    def final(self) -> bool:
        """The status will not change on its own any more."""
        return self.complete or self.failed

    @property
    def source_id(self) -> str:
        """The RDS instance or EBS volume it was taken of."""
        return (self.instance_id if self.kind == "rds" else self.volume_id) or "?"

    def describe(self) -> str:
        """Say what the snapshot is, for logs and errors."""
        of = f"database {self.target}" if self.kind == "rds" else f"host {self.target}"
        return f"{self.kind} snapshot {self.snapshot_id} ({of}, {self.source_id}, backup {self.backup_id})"


@dataclass(frozen=True)
class CloudSnapshotRetention:
    """The retention plan of one group of snapshots: one database's, or one host volume's.

    :param group: what the group is, e.g. ``rds snapshots of database orders_pg``.
    :param plan: the plan, by backup id, with the reason for each decision.
    :param snapshots: the group's snapshots by backup id.
    """

    group: str
    plan: RetentionPlan
    snapshots: Mapping[str, CloudSnapshot]

    @property
    def to_delete(self) -> list[CloudSnapshot]:
        """The snapshots the plan deletes, newest first."""
        return [self.snapshots[backup_id] for backup_id in self.plan.delete]


def base_tags(*, kind: SnapshotKind, backup_id: str, estate: str) -> dict[str, str]:
    """Return the tags every cloudops snapshot carries (with the running runbook's cost tags)."""
    return {**current_cost_tags(), TAG_BACKUP_ID: backup_id, TAG_ESTATE: estate, TAG_KIND: kind}


# Cost allocation: what a runbook creates in the cloud carries these, so the monthly report's cost by
# tag (the catalog's cost.tag_keys, e.g. requested_by) shows what each runbook and each requester cost.
COST_TAG_RUNBOOK = "runbook"
COST_TAG_RUN_ID = "run_id"
COST_TAG_REQUESTED_BY = "requested_by"
SCHEDULED = "schedule"
_TAG_VALUE_LIMIT = 256
_TAG_VALUE_UNSAFE = re.compile(r"[^\w .:/=+\-@]")


def cost_tags(*, dag_id: str, run_id: str, requested_by: str | None) -> dict[str, str]:
    """The cost-allocation tags of a run: the runbook kind, the run id, and who asked for it
    (``schedule`` when nobody did). Characters AWS refuses in a tag value become ``_``."""

    def value(text: str) -> str:
        return _TAG_VALUE_UNSAFE.sub("_", text)[:_TAG_VALUE_LIMIT]

    return {
        COST_TAG_RUNBOOK: value(dag_id.partition("__")[0]),
        COST_TAG_RUN_ID: value(run_id),
        COST_TAG_REQUESTED_BY: value(requested_by or SCHEDULED),
    }


def current_cost_tags() -> dict[str, str]:
    """The cost tags of the task running now, read from Airflow's task context; none outside a task
    (the CLI, tests): the resource then carries only its cloudops tags."""
    try:
        from airflow.sdk import get_current_context

        context = get_current_context()
    except Exception:  # not inside a running task
        return {}
    dag_run = context.get("dag_run")
    if dag_run is None:
        return {}
    return cost_tags(
        dag_id=str(dag_run.dag_id),
        run_id=str(dag_run.run_id),
        requested_by=getattr(dag_run, "triggering_user_name", None),
    )


def aws_tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """Return tags in the AWS APIs' ``[{"Key": ..., "Value": ...}]`` form."""
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def tags_from_aws(tags: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    """Return AWS's ``[{"Key": ..., "Value": ...}]`` tags as a dict."""
    return {tag["Key"]: tag["Value"] for tag in tags or []}


def rds_snapshot_identifier(database: str, backup_id: str) -> str:
    """Return the RDS DB snapshot identifier ``cloudops-<database>-<backup_id>``, made valid.

    RDS identifiers are ASCII letters, digits and hyphens, start with a letter, have no two hyphens in a
    row, do not end with a hyphen and are at most 255 characters; RDS stores them in lower case. Other
    characters become hyphens, hyphen runs collapse, and an identifier too long is cut and ends with a hash
    of the full name, so that two long names stay distinct. Case is lost: the backup id is read back from
    the snapshot's tag, never from its identifier.

    :raises ValueError: the database or backup id has no letter or digit to build a name from.
    """
    parts = []
    for what, value in (("database", database), ("backup id", backup_id)):
        part = _HYPHENS.sub("-", _NOT_IDENTIFIER.sub("-", value.lower())).strip("-")
        if not part:
            raise ValueError(f"{what} {value!r} has no letter or digit to name an RDS snapshot with")
        parts.append(part)
    identifier = f"cloudops-{parts[0]}-{parts[1]}"
    if len(identifier) > _RDS_IDENTIFIER_MAX:
        digest = hashlib.sha256(f"{database}\0{backup_id}".encode()).hexdigest()[:10]
        identifier = f"{identifier[: _RDS_IDENTIFIER_MAX - 11].rstrip('-')}-{digest}"
    return identifier


def wait_for_snapshots(
    snapshots: Sequence[CloudSnapshot],
    describe: Callable[[list[str]], Mapping[str, str]],
    *,
    timeout: timedelta,
    poll_interval: timedelta = DEFAULT_POLL_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[CloudSnapshot]:
    """Poll ``describe`` until every snapshot has a final status, or until ``timeout`` has passed.

    Every snapshot is described at least once, even one whose creation already reported it final. The
    wait is bounded by ``timeout``: no sleep reaches past the deadline, and at the deadline the wait stops
    and leaves the snapshots as they are (they keep being created in the cloud; retention treats them as
    incomplete until they finish). Waits longer than a few minutes should not hold an Airflow worker
    slot: see :func:`cloudops.clouds.aws.rds.snapshot_rds_instance` for the sensor to use instead.

    :param snapshots: the snapshots to wait for.
    :param describe: given snapshot ids, returns their current statuses; an id missing from the answer
        means the snapshot no longer exists.
    :param clock: monotonic seconds; ``sleep``: waits that many seconds. Both for tests.
    :return: the snapshots with their final statuses, in the given order.
    :raises SnapshotFailed: a snapshot ended in a failed status (after all others were final).
    :raises SnapshotWaitTimeout: the deadline passed first; names each unfinished snapshot and its status.
    :raises CloudSnapshotError: a snapshot disappeared while being waited for.
    """
    deadline = clock() + timeout.total_seconds()
    current = {snapshot.snapshot_id: snapshot for snapshot in snapshots}
    pending = list(current)
    polls = 0
    while pending:
        statuses = describe(pending)
        polls += 1
        for snapshot_id in pending:
            if snapshot_id not in statuses:
                raise CloudSnapshotError(
                    f"{current[snapshot_id].describe()} disappeared while waiting for it to finish "
                    "(deleted by someone else?)",
                    snapshots=[s for s in current.values() if s.snapshot_id != snapshot_id],
                )
            current[snapshot_id] = replace(current[snapshot_id], status=statuses[snapshot_id])
        pending = [snapshot_id for snapshot_id in pending if not current[snapshot_id].final]
        if not pending:
            break
        remaining = deadline - clock()
        if remaining <= 0:
            unfinished = "; ".join(
                f"{current[snapshot_id].describe()} is still {current[snapshot_id].status!r}"
                for snapshot_id in pending
            )
            raise SnapshotWaitTimeout(
                f"gave up waiting after {render_duration(timeout)} ({polls} polls): {unfinished}. "
                "Nothing was deleted: the snapshot keeps being created in the cloud, and retention counts "
                "it as incomplete until it finishes",
                snapshots=list(current.values()),
            )
        statuses_now = ", ".join(f"{snapshot_id}: {current[snapshot_id].status}" for snapshot_id in pending)
        log.info("waiting for %d snapshot(s) (%s)", len(pending), statuses_now)
        sleep(min(poll_interval.total_seconds(), remaining))

    done = list(current.values())
    failed = [snapshot for snapshot in done if snapshot.failed]
    if failed:
        names = "; ".join(f"{snapshot.describe()} is {snapshot.status!r}" for snapshot in failed)
        raise SnapshotFailed(
            f"{len(failed)} of {len(done)} snapshot(s) failed: {names}. A failed snapshot is no backup; "
            "retention deletes it once its grace period has passed",
            snapshots=done,
        )
    return done


def list_cloud_snapshots(
    aws_conn_id: str,
    *,
    estate: str,
    kind: SnapshotKind,
    database: str | None = None,
    fleet: str | None = None,
) -> list[CloudSnapshot]:
    """List the snapshots cloudops took for ``estate``, from their tags, oldest first.

    :param kind: ``rds`` (optionally of one ``database``) or ``ebs`` (optionally of one ``fleet``).
    :raises ValueError: ``database`` given with ``ebs``, or ``fleet`` with ``rds``.
    """
    # rds and ec2 build on this module's model, so they are imported here rather than at the top.
    from cloudops.clouds.aws import ec2, rds

    if kind == "rds":
        if fleet is not None:
            raise ValueError("fleet selects EBS snapshots; RDS snapshots are selected by database")
        found = rds.list_rds_snapshots(aws_conn_id, estate=estate, database=database)
    elif kind == "ebs":
        if database is not None:
            raise ValueError("database selects RDS snapshots; EBS snapshots are selected by fleet")
        found = ec2.list_ebs_snapshots(aws_conn_id, estate=estate, fleet=fleet)
    else:
        raise ValueError(f"kind must be 'rds' or 'ebs', got {kind!r}")
    return sorted(found, key=lambda snapshot: (snapshot.created_at, snapshot.snapshot_id))


def delete_cloud_snapshot(aws_conn_id: str, snapshot: CloudSnapshot, *, dry_run: bool) -> None:
    """Delete one snapshot cloudops took, after checking it still is one; log the plan before acting.

    The snapshot is read again first: it must still exist and carry the same ``cloudops:backup-id`` and
    ``cloudops:kind`` tags, so that a stale listing can never delete something else. A snapshot already
    gone is logged and left at that (a re-run is safe).

    :param dry_run: log what would be deleted and delete nothing.
    :raises CloudSnapshotError: the snapshot's tags do not say cloudops took it for this backup, or the
        cloud refused the delete (an RDS snapshot still ``creating`` cannot be deleted).
    """
    from cloudops.clouds.aws import ec2, rds

    if snapshot.kind == "rds":
        rds.delete_rds_snapshot(aws_conn_id, snapshot, dry_run=dry_run)
    else:
        ec2.delete_ebs_snapshot(aws_conn_id, snapshot, dry_run=dry_run)


def check_ownership(snapshot: CloudSnapshot, tags_now: Mapping[str, str]) -> None:
    """Refuse to act on a snapshot whose current tags do not match the listed one's backup and kind."""
    expected = {TAG_BACKUP_ID: snapshot.backup_id, TAG_KIND: snapshot.kind}
    found = {key: tags_now.get(key) for key in expected}
    if found != expected:
        raise CloudSnapshotError(
            f"refusing to delete {snapshot.describe()}: its tags are now {found}, expected {expected}; "
            "list the snapshots again"
        )


def as_retention_records(snapshots: Iterable[CloudSnapshot]) -> list[BackupRecord]:
    """Return the retention planner's view of snapshots: id = backup id, time = creation time.

    A complete snapshot counts as verified: its bytes cannot be read back as a repository's objects can,
    and ``available``/``completed`` is the cloud's own word that it is whole (a restore drill of the RDS
    snapshot goes further, and fails the drill run when it does not restore).

    Only snapshots of one group (one database, or one host volume) may be planned together: use
    :func:`plan_cloud_snapshot_retention` for a listing that mixes targets.
    """
    return [
        BackupRecord(
            id=snapshot.backup_id,
            time=snapshot.created_at,
            complete=snapshot.complete,
            proof=VERIFIED if snapshot.complete else UNVERIFIED,
        )
        for snapshot in snapshots
    ]


def apply_cloud_snapshot_retention(
    aws_conn_id: str,
    plans: Iterable[CloudSnapshotRetention],
    *,
    dry_run: bool,
    on_deleted: Callable[[CloudSnapshotRetention, CloudSnapshot], None] | None = None,
) -> list[str]:
    """Log each group's plan with its reasons, then delete what it deletes (nothing in a dry run).

    A group whose plan stopped (too many incomplete snapshots) deletes nothing; the caller decides
    whether that fails the run.

    :param on_deleted: called after each snapshot is deleted (the runbooks record it in the ledger).
    :return: the ids of the snapshots deleted.
    """
    deleted: list[str] = []
    for group in plans:
        reasons = "; ".join(
            f"{backup_id}: {', '.join(group.plan.reasons[backup_id])}"
            for backup_id in [*group.plan.keep, *group.plan.delete]
        )
        log.info(
            "retention plan for %s: keep %s, delete %s (%s)",
            group.group,
            group.plan.keep,
            group.plan.delete,
            reasons or "no snapshots",
        )
        if group.plan.stopped:
            log.warning("retention of %s stopped, nothing deleted: %s", group.group, group.plan.stopped)
        for snapshot in group.to_delete:
            delete_cloud_snapshot(aws_conn_id, snapshot, dry_run=dry_run)
            if not dry_run:
                deleted.append(snapshot.snapshot_id)
                if on_deleted is not None:
                    on_deleted(group, snapshot)
    return deleted


def plan_cloud_snapshot_retention(
    snapshots: Iterable[CloudSnapshot], policy: RetentionPolicy, **safety: Any
) -> list[CloudSnapshotRetention]:
    """Plan retention per database (RDS) and per host volume (EBS), with the backups' policy and rules.

    :param safety: passed to :func:`cloudops.repository.retention.plan_retention`: ``now``,
        ``max_delete_share``, ``allow_large_delete``, ``incomplete_grace``.
    :return: one plan per group, in the order groups are sorted (kind, target, volume).
    :raises CloudRetentionRefused: a group's plan deletes more than ``max_delete_share`` allows; it names
        the group. Nothing is planned for the other groups then either: the run needs review.
    :raises RetentionInputError: two snapshots of one group carry the same backup id.
    """
    groups: dict[tuple[str, str, str], list[CloudSnapshot]] = {}
    for snapshot in snapshots:
        key = (snapshot.kind, snapshot.target, snapshot.volume_id or "")
        groups.setdefault(key, []).append(snapshot)
    plans: list[CloudSnapshotRetention] = []
    for (kind, target, volume_id), members in sorted(groups.items()):
        group = (
            f"rds snapshots of database {target}"
            if kind == "rds"
            else f"ebs snapshots of host {target} volume {volume_id}"
        )
        try:
            plan = plan_retention(as_retention_records(members), policy, **safety)
        except RetentionRefused as refused:
            raise CloudRetentionRefused(group, refused) from refused
        plans.append(
            CloudSnapshotRetention(
                group=group, plan=plan, snapshots={snapshot.backup_id: snapshot for snapshot in members}
            )
        )
    return plans


def client_config(hook_config: Any) -> Any:
    """Return the botocore config: our bounded defaults, overridden by the connection's own."""
    from botocore.config import Config

    config = Config(**DEFAULT_CLIENT_CONFIG)
    return config.merge(hook_config) if hook_config is not None else config


def created_at_or_now(*candidates: datetime | None) -> datetime:
    """Return the first creation time the cloud gave, in UTC; the listing time when it gave none.

    A snapshot still being created may have no creation time yet; it is incomplete, so retention holds
    it for its grace period whatever time it is given.
    """
    for candidate in candidates:
        if candidate is not None:
            return candidate.astimezone(UTC)
    return datetime.now(UTC)


__all__ = [
    "COMPLETE_STATUS",
    "DEFAULT_CLIENT_CONFIG",
    "DEFAULT_POLL_INTERVAL",
    "FAILED_STATUSES",
    "TAG_BACKUP_ID",
    "TAG_DATABASE",
    "TAG_ESTATE",
    "TAG_FLEET",
    "TAG_HOST",
    "TAG_KIND",
    "CloudRetentionRefused",
    "CloudSnapshot",
    "CloudSnapshotError",
    "CloudSnapshotRetention",
    "SnapshotFailed",
    "SnapshotKind",
    "SnapshotTargetNotFound",
    "SnapshotWaitTimeout",
    "apply_cloud_snapshot_retention",
    "as_retention_records",
    "delete_cloud_snapshot",
    "list_cloud_snapshots",
    "plan_cloud_snapshot_retention",
    "rds_snapshot_identifier",
    "wait_for_snapshots",
]
