"""One patch wave per fleet at a time, whoever starts it (the runbook, the CLI, a second Airflow).

``max_active_runs=1`` keeps a second run of one DAG queued; this lock also refuses a wave started
another way while one runs, and names the run that holds it. The lock is a file created with
``O_EXCL`` in the patch state directory (``CLOUDOPS_PATCH_STATE_DIR``, default
``<evidence dir>/patch-waves``): on a CeleryExecutor deployment that directory must be shared by the
workers, as the file ledger is. A run that died without releasing it leaves the file: the refusal
names the run and the file, and on-call removes it once that run is known to be over.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from cloudops.errors import CloudOpsError

STATE_DIR_ENV = "CLOUDOPS_PATCH_STATE_DIR"
MAX_LOCK_BYTES = 4096


class WaveAlreadyRunning(CloudOpsError):
    """Another wave of the same fleet holds the lock."""


def state_dir() -> Path:
    from cloudops.evidence.ledger import evidence_dir

    configured = os.environ.get(STATE_DIR_ENV)
    return Path(configured) if configured else evidence_dir() / "patch-waves"


def lock_path(fleet: str) -> Path:
    return state_dir() / f"{fleet}.lock"


def holder(fleet: str) -> dict[str, str] | None:
    """Who holds the fleet's lock (run id, since when), or None."""
    path = lock_path(fleet)
    try:
        text = path.read_bytes()[:MAX_LOCK_BYTES].decode(errors="replace")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {"run_id": "unknown (unreadable lock file)", "since": ""}
    return {"run_id": str(data.get("run_id", "?"))[:250], "since": str(data.get("since", ""))[:40]}


def acquire(fleet: str, run_id: str) -> None:
    """Take the fleet's lock for ``run_id`` (again, when it already holds it: a retried task).

    :raises WaveAlreadyRunning: naming the run that holds it and the lock file.
    """
    path = lock_path(fleet)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"run_id": run_id, "since": datetime.now(UTC).isoformat()}).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        current = holder(fleet) or {"run_id": "?", "since": ""}
        if current["run_id"] == run_id:
            return
        raise WaveAlreadyRunning(
            f"fleet {fleet}: another patch wave is running (run {current['run_id']}, since "
            f"{current['since'] or 'unknown'}): two waves of one fleet never run at once. Wait for it; "
            f"if that run is over and left its lock, remove {path}"
        ) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(body)


def release(fleet: str, run_id: str) -> bool:
    """Release the fleet's lock if ``run_id`` holds it; return whether it did."""
    current = holder(fleet)
    if current is None or current["run_id"] != run_id:
        return False
    lock_path(fleet).unlink(missing_ok=True)
    return True


__all__ = ["STATE_DIR_ENV", "WaveAlreadyRunning", "acquire", "holder", "lock_path", "release"]
