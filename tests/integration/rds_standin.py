"""A scripted stand-in for RDS failovers, used ONLY in tests: moto accepts ``reboot_db_instance
(ForceFailover=True)`` and ``failover_db_cluster`` but emulates no failover (no zone swap, no status
change, no failover event; ``describe_events`` never returns one). This class sits in front of a real
moto client, behind the same interface the RDS managers call (:class:`cloudops.failover.rds.RdsApi`),
passes every call to moto, and adds what AWS would do after the call, on a script:

- the events of the script, each ``delay_s`` after the call, with AWS's documented messages and the
  ``failover`` category (``describe_events`` returns moto's own events plus those whose time has come);
- while the failover runs, the instance's status ``rebooting`` (instance) or the cluster's ``failing-over``;
- at ``completes_after_s``, the instance's primary moves to the standby's zone (moto has no
  ``SecondaryAvailabilityZone``: the stand-in gives it one), or the cluster's writer flag moves (moto's
  own ``failover_db_cluster`` flips it, called only then). A script without completion never moves.

It is not a model of RDS: the tests use it to show that the managers wait on the events, bounded, and
read success, failure (RDS-EVENT-0069), abandonment (RDS-EVENT-0034) and silence correctly.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

INSTANCE_STARTED = "Multi-AZ instance failover started."
INSTANCE_COMPLETED = "Multi-AZ instance failover completed."
INSTANCE_ABANDONED = (
    "Abandoning user requested failover since a failover recently occurred on the database instance."
)
CLUSTER_STARTED = "Started cross AZ failover to DB instance: {target}"
CLUSTER_COMPLETED = "Completed failover to DB instance: {target}"
CLUSTER_FAILED = "Failover failed. Promoting previous primary again."


@dataclass
class Script:
    """What AWS does after the call: events ``(delay_s, message)`` and when the primary moves."""

    events: list[tuple[float, str]]
    completes_after_s: float | None


@dataclass
class ScriptedRds:
    """moto's RDS client plus the scripted failover (see the module docstring)."""

    moto: Any
    script: Script
    standby_zone: str = "eu-west-1b"
    calls: list[str] = field(default_factory=list)
    _started: float | None = None
    _source: str = ""
    _source_type: str = ""
    _target: str = ""
    _flipped: bool = False

    def _elapsed(self) -> float | None:
        return None if self._started is None else time.monotonic() - self._started

    def _completed(self) -> bool:
        elapsed = self._elapsed()
        done = self.script.completes_after_s
        return elapsed is not None and done is not None and elapsed >= done

    def _running(self) -> bool:
        elapsed = self._elapsed()
        return (
            elapsed is not None
            and not self._completed()
            and (self.script.completes_after_s is not None or elapsed < 1.0)
        )

    # -- the calls the managers make -------------------------------------------------------------------

    def reboot_db_instance(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(f"reboot_db_instance({kwargs})")
        answer = self.moto.reboot_db_instance(**kwargs)  # accepted, and ignored, by moto
        self._started, self._source, self._source_type = (
            time.monotonic(),
            kwargs["DBInstanceIdentifier"],
            "db-instance",
        )
        return answer

    def failover_db_cluster(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(f"failover_db_cluster({kwargs})")
        self._started, self._source, self._source_type = (
            time.monotonic(),
            kwargs["DBClusterIdentifier"],
            "db-cluster",
        )
        self._target = kwargs["TargetDBInstanceIdentifier"]
        return {"DBCluster": self.describe_db_clusters(DBClusterIdentifier=self._source)["DBClusters"][0]}

    def describe_db_instances(self, **kwargs: Any) -> dict[str, Any]:
        answer = copy.deepcopy(self.moto.describe_db_instances(**kwargs))
        for instance in answer.get("DBInstances", []):
            if self._source_type != "db-instance" or instance["DBInstanceIdentifier"] != self._source:
                if instance.get("MultiAZ") and not instance.get("SecondaryAvailabilityZone"):
                    instance["SecondaryAvailabilityZone"] = self.standby_zone
                continue
            zone = instance.get("AvailabilityZone")
            instance["SecondaryAvailabilityZone"] = self.standby_zone
            if self._running():
                instance["DBInstanceStatus"] = "rebooting"
            if self._completed():
                instance["AvailabilityZone"], instance["SecondaryAvailabilityZone"] = self.standby_zone, zone
        return answer

    def describe_db_clusters(self, **kwargs: Any) -> dict[str, Any]:
        if self._source_type == "db-cluster" and self._completed() and not self._flipped:
            self._flipped = True
            self.moto.failover_db_cluster(
                DBClusterIdentifier=self._source, TargetDBInstanceIdentifier=self._target
            )
        answer = copy.deepcopy(self.moto.describe_db_clusters(**kwargs))
        for cluster in answer.get("DBClusters", []):
            if (
                self._source_type == "db-cluster"
                and cluster["DBClusterIdentifier"] == self._source
                and self._running()
            ):
                cluster["Status"] = "failing-over"
        return answer

    def describe_events(self, **kwargs: Any) -> dict[str, Any]:
        answer = copy.deepcopy(self.moto.describe_events(**kwargs))
        events = list(answer.get("Events", []))
        elapsed = self._elapsed()
        if elapsed is not None and kwargs.get("SourceIdentifier") == self._source:
            since = kwargs.get("StartTime") or datetime.min.replace(tzinfo=UTC)
            now = datetime.now(tz=UTC)
            for delay, message in self.script.events:
                if delay <= elapsed:
                    date = now - timedelta(seconds=elapsed - delay)
                    if date >= since:
                        events.append(
                            {
                                "SourceIdentifier": self._source,
                                "SourceType": self._source_type,
                                "Message": message.format(target=self._target),
                                "EventCategories": ["failover"],
                                "Date": date,
                            }
                        )
        return {"Events": events}


__all__ = [
    "CLUSTER_COMPLETED",
    "CLUSTER_FAILED",
    "CLUSTER_STARTED",
    "INSTANCE_ABANDONED",
    "INSTANCE_COMPLETED",
    "INSTANCE_STARTED",
    "Script",
    "ScriptedRds",
]
