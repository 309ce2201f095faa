"""One failover drill per estate at a time, whoever starts it (the runbook, the CLI, a second Airflow).

The Airflow pool ``failover_drills__<estate>`` (one slot, :func:`pool_name`) queues a second drill
task of the same estate; this lease also refuses a drill started another way while one runs, and
names the run that holds it. It is a file created with ``O_EXCL`` in the drill state directory
(``CLOUDOPS_FAILOVER_STATE_DIR``, default ``<evidence dir>/failover-drills``): on a CeleryExecutor
deployment that directory must be shared by the workers, as the file ledger is. A run that died
without releasing it leaves the file: the refusal names the run and the file, and on-call removes
it once that run is known to be over (and the cluster read: ``cloudops failover drill <cluster>
--dry-run``).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from cloudops.errors import CloudOpsError

STATE_DIR_ENV = "CLOUDOPS_FAILOVER_STATE_DIR"
MAX_LEASE_BYTES = 4096
POOL_PREFIX = "failover_drills__"


class DrillAlreadyRunning(CloudOpsError):
    """Another drill of the same estate holds the lease."""


def pool_name(estate: str) -> str:
    """The Airflow pool (one slot) every drill task of ``estate`` runs in."""
    return f"{POOL_PREFIX}{estate}"


def state_dir() -> Path:
    from cloudops.evidence.ledger import evidence_dir

    configured = os.environ.get(STATE_DIR_ENV)
    return Path(configured) if configured else evidence_dir() / "failover-drills"


def lease_path(estate: str) -> Path:
    return state_dir() / f"{estate}.lease"


def holder(estate: str) -> dict[str, str] | None:
    """Who holds the estate's lease (cluster, run id, since when), or None."""
    try:
        text = lease_path(estate).read_bytes()[:MAX_LEASE_BYTES].decode(errors="replace")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {"cluster": "?", "run_id": "unknown (unreadable lease file)", "since": ""}
    return {
        "cluster": str(data.get("cluster", "?"))[:100],
        "run_id": str(data.get("run_id", "?"))[:250],
        "since": str(data.get("since", ""))[:40],
    }


def acquire(estate: str, cluster: str, run_id: str) -> None:
    """Take the estate's lease for ``run_id`` on ``cluster`` (again, when it already holds it).

    :raises DrillAlreadyRunning: naming the cluster and run that hold it, and the lease file.
    """
    path = lease_path(estate)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"cluster": cluster, "run_id": run_id, "since": datetime.now(UTC).isoformat()})
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        current = holder(estate) or {"cluster": "?", "run_id": "?", "since": ""}
        if current["run_id"] == run_id and current["cluster"] == cluster:
            return
        raise DrillAlreadyRunning(
            f"cluster {cluster}: refused, nothing was moved: a failover drill of estate {estate} is already "
            f"running on cluster {current['cluster']} (run {current['run_id']}, since "
            f"{current['since'] or 'unknown'}); one drill per estate at a time. Wait for it; if that run "
            f"is over and left its lease, read the cluster and remove {path}"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(body)


def release(estate: str, run_id: str) -> bool:
    """Release the estate's lease if ``run_id`` holds it; return whether it did."""
    current = holder(estate)
    if current is None or current["run_id"] != run_id:
        return False
    lease_path(estate).unlink(missing_ok=True)
    return True


__all__ = [
    "POOL_PREFIX",
    "STATE_DIR_ENV",
    "DrillAlreadyRunning",
    "acquire",
    "holder",
    "lease_path",
    "pool_name",
    "release",
]
