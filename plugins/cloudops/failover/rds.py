"""The RDS managers: AWS moves the primary; the drill asks for a forced failover through the amazon
provider's ``RdsHook`` client and waits, bounded, on the failover events AWS writes.

- ``rds-multi-az-instance`` (:class:`RdsMultiAzInstanceManager`): ``reboot_db_instance(ForceFailover=
  True)``; the standby is AWS's and has no endpoint, so the topology names the instance in each
  Availability Zone (``orders@eu-west-1a`` primary, ``orders@eu-west-1b`` its synchronous standby). The
  failover is done when the events say "Multi-AZ instance failover started" then "... completed" and
  the instance is ``available`` with its primary in the other zone. Fail-back is a second forced
  failover (AWS's own advice for returning to the original zone).
- ``rds-multi-az-cluster`` and ``aurora`` (:class:`RdsClusterManager`): ``failover_db_cluster
  (TargetDBInstanceIdentifier=...)``; events RDS-EVENT-0072/0073 (started same-AZ / cross-AZ failover)
  then 0071 (completed failover to the instance), or 0069 (failed) / 0070 (promoting the previous
  primary again); the writer flag (``IsClusterWriter``) names the new primary.
- RDS-EVENT-0034 ("abandoning user requested failover since a failover recently occurred") is AWS's
  own anti-flapping: a :class:`SwitchoverAborted`, nothing moved.

``DescribeEvents`` returns no event id, only the message and categories: :func:`judge_failover_events`
matches ``failover`` events by their messages (pure, tested on the texts AWS documents). The waits are
deferrable-friendly: :func:`poll_failover` reads once and says where the failover is, so a deferrable
trigger can call it on its own schedule; the manager's own loop is bounded by ``wait_timeout_s``.

moto (the sandbox's AWS) accepts ``reboot_db_instance(ForceFailover=True)`` and ``failover_db_cluster``
but emulates no failover: no zone swap, no status change, no failover event. The event handling is
therefore tested against a scripted stand-in of the same client interface (``tests/.../rds_standin.py``),
used only in tests, that emits AWS's event sequence with delays in front of moto.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from cloudops.engines.replication import (
    MemberState,
    ReplicationLag,
    Step,
    SwitchoverAborted,
    SwitchoverResult,
    Topology,
    assemble_topology,
)
from cloudops.errors import InvalidInputError, ReplicationError, aws_error_code, first_line

log = logging.getLogger(__name__)

# AWS documents failovers that take 60-120 s (instance) and < 35 s (Multi-AZ cluster): bound well above.
DEFAULT_WAIT_TIMEOUT_S = 900.0
DEFAULT_POLL_S = 5.0
# Events are filtered from a little before the request: the API's clock is not ours.
CLOCK_MARGIN = timedelta(seconds=30)
MAX_EVENTS = 100


class RdsApi(Protocol):
    """The RDS client calls the managers make (boto3's ``rds`` client as ``RdsHook(...).conn`` gives it;
    the tests' scripted stand-in implements the same names)."""

    def describe_db_instances(self, **kwargs: Any) -> dict[str, Any]: ...

    def describe_db_clusters(self, **kwargs: Any) -> dict[str, Any]: ...

    def describe_events(self, **kwargs: Any) -> dict[str, Any]: ...

    def reboot_db_instance(self, **kwargs: Any) -> dict[str, Any]: ...

    def failover_db_cluster(self, **kwargs: Any) -> dict[str, Any]: ...


def rds_client(aws_conn_id: str) -> RdsApi:
    """The RDS client of the amazon provider's ``RdsHook`` (our bounded botocore defaults)."""
    from airflow.providers.amazon.aws.hooks.rds import RdsHook

    from cloudops.clouds.aws.snapshots import client_config

    hook = RdsHook(aws_conn_id=aws_conn_id, config=client_config(RdsHook(aws_conn_id=aws_conn_id).config))
    return hook.conn  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RdsEvent:
    """One event as ``DescribeEvents`` gives it (no event id: only the message and categories)."""

    date: datetime
    message: str
    categories: tuple[str, ...]
    source: str


Progress = Literal["not_started", "started", "completed", "failed", "abandoned"]


@dataclass(frozen=True)
class FailoverProgress:
    """Where a failover is, judged from its events: ``progress`` and the event that says so."""

    progress: Progress
    reason: str
    events: tuple[RdsEvent, ...] = ()

    @property
    def finished(self) -> bool:
        """No further event will change the outcome."""
        return self.progress in ("completed", "failed", "abandoned")


def judge_failover_events(events: Sequence[RdsEvent]) -> FailoverProgress:
    """Where the failover is after ``events`` (oldest first), from AWS's documented messages (pure).

    - abandoned: "abandoning user requested failover" (RDS-EVENT-0034);
    - failed: "failover failed" (RDS-EVENT-0069) or "promoting previous primary again" (0070);
    - completed: "failover completed" (instance, RDS-EVENT-0049; "failover to standby complete", 0015)
      or "completed failover to DB instance" (cluster, 0071), after a start or on its own;
    - started: "failover started" (instance, 0013) or "started ... failover" (cluster, 0072/0073).
    """
    progress: Progress = "not_started"
    reason = "no failover event yet"
    seen: list[RdsEvent] = []
    for event in sorted(events, key=lambda e: e.date):
        text = event.message.lower()
        if "failover" not in text and "failover" not in event.categories:
            continue
        seen.append(event)
        if "abandon" in text:
            return FailoverProgress("abandoned", event.message, tuple(seen))
        if "failover failed" in text or "promoting previous primary" in text or "failed to fail" in text:
            return FailoverProgress("failed", event.message, tuple(seen))
        if (
            "completed failover" in text
            or "failover completed" in text
            or "failover to standby complete" in text
        ):
            progress, reason = "completed", event.message
        elif ("started" in text or "in progress" in text) and progress != "completed":
            progress, reason = "started", event.message
    return FailoverProgress(progress, reason, tuple(seen))


def read_events(api: RdsApi, *, source_type: str, identifier: str, since: datetime) -> list[RdsEvent]:
    """The ``failover``-category events of one source since ``since`` (bounded to the newest 100)."""
    answer = api.describe_events(
        SourceIdentifier=identifier,
        SourceType=source_type,
        StartTime=since,
        EventCategories=["failover"],
        MaxRecords=MAX_EVENTS,
    )
    found = []
    for item in answer.get("Events") or []:
        date = item.get("Date")
        if not isinstance(date, datetime):
            continue
        found.append(
            RdsEvent(
                date=date if date.tzinfo else date.replace(tzinfo=UTC),
                message=str(item.get("Message") or "")[:500],
                categories=tuple(str(c) for c in item.get("EventCategories") or ()),
                source=str(item.get("SourceIdentifier") or identifier),
            )
        )
    return found


def poll_failover(api: RdsApi, *, source_type: str, identifier: str, since: datetime) -> FailoverProgress:
    """Read the failover events once and judge them: the step a deferrable trigger repeats."""
    return judge_failover_events(
        read_events(api, source_type=source_type, identifier=identifier, since=since)
    )


def _wait_events(
    api: RdsApi,
    *,
    source_type: str,
    identifier: str,
    since: datetime,
    timeout_s: float,
    poll_s: float,
    done: Callable[[], bool] | None = None,
) -> FailoverProgress:
    """Poll until the events say the failover finished and ``done()`` holds, or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    last = FailoverProgress("not_started", "no failover event yet")
    while True:
        last = poll_failover(api, source_type=source_type, identifier=identifier, since=since)
        if last.progress in ("failed", "abandoned"):
            return last
        if last.progress == "completed" and (done is None or done()):
            return last
        if time.monotonic() >= deadline:
            return last
        time.sleep(poll_s)


def _api_error(used_by: str, what: str, error: Exception) -> ReplicationError:
    return ReplicationError(
        f"{used_by}: {what} failed ({aws_error_code(error) or type(error).__name__}): {first_line(error)}"
    )


@dataclass(frozen=True)
class RdsMultiAzInstanceManager:
    """A Multi-AZ DB instance: the primary and AWS's standby, in two Availability Zones."""

    cluster: str
    instance_id: str
    api: RdsApi
    used_by: str
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S
    poll_s: float = DEFAULT_POLL_S
    now: Callable[[], datetime] = field(default=lambda: datetime.now(tz=UTC))

    name = "rds-multi-az-instance"

    def _instance(self) -> Mapping[str, Any]:
        try:
            found = self.api.describe_db_instances(DBInstanceIdentifier=self.instance_id)["DBInstances"]
        except Exception as error:  # botocore ClientError / EndpointConnectionError
            raise _api_error(self.used_by, f"describing DB instance {self.instance_id}", error) from error
        if not found:
            raise ReplicationError(f"{self.used_by}: DB instance {self.instance_id} does not exist")
        return found[0]  # type: ignore[no-any-return]

    def _member(self, zone: str | None) -> str:
        return f"{self.instance_id}@{zone or 'unknown-zone'}"

    def topology(self) -> Topology:
        instance = self._instance()
        status = str(instance.get("DBInstanceStatus") or "unknown")
        available = status == "available"
        zone, standby = instance.get("AvailabilityZone"), instance.get("SecondaryAvailabilityZone")
        address = str((instance.get("Endpoint") or {}).get("Address") or self.instance_id)
        members = [
            MemberState(
                self._member(zone),
                f"{address}:{(instance.get('Endpoint') or {}).get('Port') or ''}",
                available,
                "primary" if available else None,
                read_only=False,
                version=instance.get("EngineVersion"),
                error=None if available else f"instance status {status}",
            )
        ]
        if instance.get("MultiAZ") and standby:
            members.append(
                MemberState(
                    self._member(standby),
                    f"standby in {standby}",
                    available,
                    "replica" if available else None,
                    streaming=available,
                    read_only=True,
                    version=instance.get("EngineVersion"),
                    error=None if available else f"instance status {status}",
                )
            )
        found = assemble_topology(self.cluster, members)
        if not instance.get("MultiAZ"):
            found = Topology(
                found.cluster,
                found.primary,
                found.replicas,
                found.members,
                (
                    *found.problems,
                    f"{self.cluster}: DB instance {self.instance_id} is not Multi-AZ: no standby",
                ),
                found.summary,
            )
        return found

    def lag(self, primary: str, candidate: str) -> ReplicationLag:
        # Multi-AZ instance replication is synchronous (block level): a committed write is on the standby.
        topology = self.topology()
        streaming = candidate in topology.replicas
        return ReplicationLag(
            primary=primary,
            replica=candidate,
            bytes=0 if streaming else None,
            seconds=0.0 if streaming else None,
            streaming=streaming,
            primary_position="-",
            replica_position="-",
            how="Multi-AZ DB instance: synchronous standby (AWS); no lag figure exists",
        )

    def switchover(self, primary: str, candidate: str, *, catch_up_timeout_s: float) -> SwitchoverResult:
        """Forced failover (``reboot_db_instance(ForceFailover=True)``); wait for its events and for the
        primary to be in ``candidate``'s zone.

        :raises ReplicationError: ``primary`` is not where the instance's primary is; nothing was done.
        :raises SwitchoverAborted: AWS abandoned (RDS-EVENT-0034) or failed the failover, or it did not
            finish within ``wait_timeout_s``.
        """
        before = self.topology()
        if before.primary != primary or candidate not in before.replicas:
            raise ReplicationError(
                f"{self.used_by}: {self.cluster}: expected primary {primary} and standby {candidate}, found "
                f"{before.summary}; nothing was done"
            )
        zone = candidate.rpartition("@")[2]
        steps: list[Step] = []
        since = self.now() - CLOCK_MARGIN
        log.info(
            "%s: %s: plan: reboot_db_instance(%s, ForceFailover=True), the primary to %s within %g s",
            self.used_by,
            self.cluster,
            self.instance_id,
            zone,
            self.wait_timeout_s,
        )
        started = time.time()
        try:
            self.api.reboot_db_instance(DBInstanceIdentifier=self.instance_id, ForceFailover=True)
        except Exception as error:
            raise _api_error(
                self.used_by, f"reboot_db_instance({self.instance_id}, ForceFailover)", error
            ) from error
        steps.append(
            Step(
                "request", started, time.time(), f"reboot_db_instance({self.instance_id}, ForceFailover=True)"
            )
        )

        def moved() -> bool:
            instance = self._instance()
            return (
                instance.get("DBInstanceStatus") == "available" and instance.get("AvailabilityZone") == zone
            )

        started = time.time()
        progress = _wait_events(
            self.api,
            source_type="db-instance",
            identifier=self.instance_id,
            since=since,
            timeout_s=self.wait_timeout_s,
            poll_s=self.poll_s,
            done=moved,
        )
        events = "; ".join(e.message for e in progress.events) or "no failover event"
        ok = progress.progress == "completed"
        steps.append(Step("failover_events", started, time.time(), events, ok=ok))
        if not ok:
            result = SwitchoverResult(self.cluster, primary, primary, tuple(steps), aborted=progress.reason)
            what = "did not finish" if progress.progress in ("not_started", "started") else progress.progress
            raise SwitchoverAborted(
                f"{self.used_by}: {self.cluster}: the forced failover of {self.instance_id} {what}: "
                f"{progress.reason} (events: {events}); read the instance in the console before acting",
                result,
            )
        after = self.topology()
        steps.append(Step("verify", time.time(), time.time(), after.summary, ok=after.primary == candidate))
        return SwitchoverResult(
            self.cluster,
            primary,
            candidate,
            tuple(steps),
            rejoin=f"AWS keeps the standby in {primary.rpartition('@')[2]}: {after.summary}",
        )

    def fence(self, member: str) -> str:
        # There is one endpoint: AWS never lets two instances take writes on it.
        return f"no action: {member} is behind the instance's one endpoint; AWS fences the old primary itself"


@dataclass(frozen=True)
class RdsClusterManager:
    """A Multi-AZ DB cluster or an Aurora cluster: a writer and readers, each an instance.

    :param members: catalog member name → DB instance identifier.
    :param lag_seconds: reads a reader's replica lag in seconds (CloudWatch ``ReplicaLag`` /
        ``AuroraReplicaLag``); None: unknown, which the lag guard refuses.
    """

    cluster: str
    cluster_id: str
    members: Mapping[str, str]
    api: RdsApi
    used_by: str
    kind: Literal["rds-multi-az-cluster", "aurora"] = "aurora"
    lag_seconds: Callable[[str], float | None] | None = None
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S
    poll_s: float = DEFAULT_POLL_S
    now: Callable[[], datetime] = field(default=lambda: datetime.now(tz=UTC))

    @property
    def name(self) -> str:
        return self.kind

    def _described(self) -> Mapping[str, Any]:
        try:
            found = self.api.describe_db_clusters(DBClusterIdentifier=self.cluster_id)["DBClusters"]
        except Exception as error:
            raise _api_error(self.used_by, f"describing DB cluster {self.cluster_id}", error) from error
        if not found:
            raise ReplicationError(f"{self.used_by}: DB cluster {self.cluster_id} does not exist")
        return found[0]  # type: ignore[no-any-return]

    def _instance_id(self, member: str) -> str:
        try:
            return self.members[member]
        except KeyError:
            raise InvalidInputError(
                f"{self.used_by}: cluster {self.cluster!r} has no member {member!r} "
                f"(members: {', '.join(self.members)})"
            ) from None

    def _statuses(self) -> dict[str, str]:
        try:
            found = self.api.describe_db_instances(
                Filters=[{"Name": "db-cluster-id", "Values": [self.cluster_id]}]
            )["DBInstances"]
        except Exception as error:
            raise _api_error(self.used_by, f"describing the instances of {self.cluster_id}", error) from error
        return {
            str(i.get("DBInstanceIdentifier")): str(i.get("DBInstanceStatus") or "unknown") for i in found
        }

    def topology(self) -> Topology:
        described = self._described()
        writers = {
            str(m.get("DBInstanceIdentifier")): bool(m.get("IsClusterWriter"))
            for m in described.get("DBClusterMembers") or []
        }
        statuses = self._statuses()
        cluster_ok = described.get("Status") == "available"
        members = []
        for name, instance in self.members.items():
            status = statuses.get(instance, "missing")
            up = status == "available" and instance in writers
            error = (
                None
                if up
                else f"instance {instance} is {status}" + ("" if instance in writers else " (not a member)")
            )
            writer = writers.get(instance, False)
            members.append(
                MemberState(
                    name,
                    instance,
                    up,
                    ("primary" if writer else "replica") if up else None,
                    streaming=None if writer else (up and cluster_ok),
                    read_only=not writer,
                    version=described.get("EngineVersion"),
                    error=error,
                )
            )
        return assemble_topology(self.cluster, members)

    def lag(self, primary: str, candidate: str) -> ReplicationLag:
        topology = self.topology()
        streaming = candidate in topology.replicas and bool(topology.member(candidate).streaming)
        seconds = self.lag_seconds(self._instance_id(candidate)) if self.lag_seconds else None
        metric = "AuroraReplicaLag" if self.kind == "aurora" else "ReplicaLag"
        return ReplicationLag(
            primary=primary,
            replica=candidate,
            # Storage-level replication: RDS exposes no byte figure; the time lag is the bound that holds.
            bytes=0 if seconds is not None else None,
            seconds=seconds,
            streaming=streaming,
            primary_position="-",
            replica_position="-",
            how=f"CloudWatch {metric} of {self._instance_id(candidate)} (RDS exposes no byte figure)",
        )

    def switchover(self, primary: str, candidate: str, *, catch_up_timeout_s: float) -> SwitchoverResult:
        """``failover_db_cluster(TargetDBInstanceIdentifier=candidate)``; wait for RDS-EVENT-0071 and
        the writer flag on ``candidate``, every member available.

        :raises ReplicationError: ``primary`` is not the writer or ``candidate`` not a reader; nothing done.
        :raises SwitchoverAborted: the failover failed, was abandoned, or did not finish in time.
        """
        before = self.topology()
        if before.primary != primary or candidate not in before.replicas:
            raise ReplicationError(
                f"{self.used_by}: {self.cluster}: expected writer {primary} and reader {candidate}, found "
                f"{before.summary}; nothing was done"
            )
        target = self._instance_id(candidate)
        steps: list[Step] = []
        since = self.now() - CLOCK_MARGIN
        log.info(
            "%s: %s: plan: failover_db_cluster(%s, TargetDBInstanceIdentifier=%s) within %g s",
            self.used_by,
            self.cluster,
            self.cluster_id,
            target,
            self.wait_timeout_s,
        )
        started = time.time()
        try:
            self.api.failover_db_cluster(
                DBClusterIdentifier=self.cluster_id, TargetDBInstanceIdentifier=target
            )
        except Exception as error:
            raise _api_error(
                self.used_by, f"failover_db_cluster({self.cluster_id}, {target})", error
            ) from error
        steps.append(
            Step("request", started, time.time(), f"failover_db_cluster({self.cluster_id}, {target})")
        )

        def writer_moved() -> bool:
            found = self.topology()
            return found.primary == candidate and found.healthy

        started = time.time()
        progress = _wait_events(
            self.api,
            source_type="db-cluster",
            identifier=self.cluster_id,
            since=since,
            timeout_s=self.wait_timeout_s,
            poll_s=self.poll_s,
            done=writer_moved,
        )
        events = "; ".join(e.message for e in progress.events) or "no failover event"
        ok = progress.progress == "completed"
        steps.append(Step("failover_events", started, time.time(), events, ok=ok))
        if not ok:
            after = self.topology()
            result = SwitchoverResult(
                self.cluster, primary, after.primary or primary, tuple(steps), aborted=progress.reason
            )
            raise SwitchoverAborted(
                f"{self.used_by}: {self.cluster}: failover of {self.cluster_id} to {target}: "
                f"{progress.progress}: {progress.reason} (events: {events}); now {after.summary}",
                result,
            )
        after = self.topology()
        steps.append(Step("verify", time.time(), time.time(), after.summary, ok=after.primary == candidate))
        return SwitchoverResult(
            self.cluster,
            primary,
            candidate,
            tuple(steps),
            rejoin=f"{primary} is a reader again (AWS): {after.summary}",
        )

    def fence(self, member: str) -> str:
        return (
            f"no action: AWS moves the writer flag of {self.cluster_id}; {member} cannot take writes past it"
        )


def cloudwatch_lag_seconds(
    aws_conn_id: str, *, metric: str, window: timedelta = timedelta(minutes=5)
) -> Callable[[str], float | None]:
    """A reader's newest replica lag in seconds from CloudWatch (``ReplicaLag`` is in seconds,
    ``AuroraReplicaLag`` in milliseconds), None when no datapoint exists in ``window``."""

    def read(instance: str) -> float | None:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        client = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="cloudwatch").conn
        end = datetime.now(tz=UTC)
        answer = client.get_metric_statistics(
            Namespace="AWS/RDS",
            MetricName=metric,
            Dimensions=[{"Name": "DBInstanceIdentifier", "Value": instance}],
            StartTime=end - window,
            EndTime=end,
            Period=60,
            Statistics=["Maximum"],
        )
        points = sorted(answer.get("Datapoints") or [], key=lambda p: p["Timestamp"])
        if not points:
            return None
        value = float(points[-1]["Maximum"])
        return value / 1000.0 if metric == "AuroraReplicaLag" else value

    return read


__all__ = [
    "CLOCK_MARGIN",
    "FailoverProgress",
    "RdsApi",
    "RdsClusterManager",
    "RdsEvent",
    "RdsMultiAzInstanceManager",
    "cloudwatch_lag_seconds",
    "judge_failover_events",
    "poll_failover",
    "rds_client",
    "read_events",
]
