"""# Evidence shipping: `evidence_ship`

**What it does.** Every hour, ships the evidence ledger's closed days (UTC days that ended more than
10 minutes ago) to S3, then verifies everything shipped so far:
1. `ship` checks the whole local chain first and refuses to ship a broken one; then, for each closed
   day not shipped yet, uploads `<prefix>/<ledger id>/segments/YYYY-MM-DD.jsonl`, puts Object Lock
   retention on it, and uploads its digest `digests/YYYY-MM-DD.json` (record count, first and last
   seq and hash, SHA-256 of the segment, the previous day's digest), signed with HMAC-SHA256 under the
   key in the signing connection's password. A day counts as shipped (`<ledger>/shipped/`) only once
   both are stored and locked.
2. `verify` checks every digest's signature and chain, every shipped segment's record chain and
   SHA-256, and that the local ledger still holds the same bytes.

Settings are the deployment's environment: `CLOUDOPS_EVIDENCE_BUCKET`, `CLOUDOPS_EVIDENCE_AWS_CONN_ID`,
`CLOUDOPS_EVIDENCE_SIGNING_CONN_ID` (default `cloudops_evidence_signing`), `CLOUDOPS_EVIDENCE_PREFIX`
(default `evidence`), `CLOUDOPS_EVIDENCE_LOCK_MODE` / `_LOCK_DAYS` (default GOVERNANCE, 400 days).

**What a failure means.**
- `ship`, *not configured* or *connection ... does not exist*: a setting or the signing connection
  is missing; the message names it.
- `ship`, *day ... not shipped ... Could not connect* (or another S3 error): the endpoint is down or
  refuses. Nothing is lost: the day is not marked shipped, its records wait in the local ledger, and
  the next run ships them.
- `ship`, *not shipping: the local ledger ... is broken* or *changed after it was shipped*: someone
  or something altered the local ledger. The message names the record.
- `verify`: the first problem in what S3 holds, named: a record missing, altered or out of order in a
  shipped segment; a digest altered, signed with another key, or missing from the chain; a local
  segment that no longer matches the shipped one.

Every failed step alerts every estate's notification targets (the ledger holds every estate's
evidence), naming the step and what to do next.

**What to do next.**
- Endpoint down: nothing to do once it is back; the next hourly run catches up (or clear the task).
- A broken chain or a verify failure is a **security incident**, not an operations glitch: do not
  edit or re-ship anything. Keep the local ledger folder as it is, note the record named, and raise it
  with security. `cloudops evidence verify --s3` repeats the check from a shell. Earlier object
  versions stay under Object Lock in the versioned bucket for comparison.
- Wrong key: check that `CLOUDOPS_EVIDENCE_SIGNING_CONN_ID` names the connection whose key signed
  the digests (each digest carries the key's fingerprint, never the key).

Re-running is always safe: a shipped day is never uploaded again, and an attempt that stopped half-way
is resumed without overwriting anything.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cloudops.catalog import CatalogSet
from cloudops.errors import CloudOpsError

if TYPE_CHECKING:
    from airflow.sdk import DAG

log = logging.getLogger(__name__)

DAG_ID = "evidence_ship"
SCHEDULE = "15 * * * *"  # a quarter past: the day just closed is past its grace period at 00:15 UTC
NEXT_ACTIONS = {
    "ship": "a missing setting or connection is named in the message; an S3 error: nothing is lost, the "
    "next run ships the day; a broken or changed local ledger is a security incident: keep the folder",
    "verify": "a SECURITY INCIDENT, not a glitch: edit and re-ship nothing, keep the local ledger folder as "
    "it is, note the record named and raise it with security",
    "*": "read the task log",
}


class EvidenceVerifyFailed(CloudOpsError):
    """What S3 holds of the ledger does not verify; the message names the first problem."""


def ship_evidence() -> dict[str, Any]:
    """Ship the local ledger's closed days; return what was done."""
    from cloudops.evidence.backend import open_ledger
    from cloudops.evidence.shipping import ship_closed_segments

    return ship_closed_segments(open_ledger()).to_json()


def verify_evidence() -> dict[str, Any]:
    """Verify what was shipped, and the local ledger against it; raise naming the first problem."""
    from cloudops.evidence.backend import open_ledger
    from cloudops.evidence.shipping import verify_shipped

    verdict = verify_shipped(open_ledger())
    if not verdict.ok:
        raise EvidenceVerifyFailed(f"shipped evidence does not verify: {verdict.problem}")
    log.info(
        "shipped evidence verifies: %d day(s), %d records, chain intact to seq %d%s",
        verdict.days,
        verdict.records,
        verdict.last_seq,
        f"; closed days waiting: {', '.join(verdict.pending)}" if verdict.pending else "",
    )
    return {"days": verdict.days, "records": verdict.records, "last_seq": verdict.last_seq}


def build_evidence_ship_dag(catalogs: CatalogSet) -> DAG:
    """Build the one ``evidence_ship`` DAG (the ledger is per host, not per estate)."""
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG

    from cloudops.runbooks.common import created_paused, default_args, failure_alerts, runbook_doc, start_date

    owners = sorted({loaded.catalog.owner for loaded in catalogs.catalogs}) or ["cloudops"]
    with DAG(
        dag_id=DAG_ID,
        description="Ship the evidence ledger's closed days to S3 with signed digests, and verify them.",
        schedule=SCHEDULE,
        start_date=start_date("UTC"),
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(minutes=50),
        default_args=default_args(
            ", ".join(owners),
            # The ledger holds every estate's evidence: every estate's targets hear of a failure.
            alerts=failure_alerts(None, "the evidence ledger", NEXT_ACTIONS),
            retries=2,
            execution_timeout=timedelta(minutes=20),
        ),
        is_paused_upon_creation=created_paused(),
        doc_md=runbook_doc(__doc__),
        tags=["cloudops", DAG_ID, "evidence"],
    ) as dag:
        ship = PythonOperator(task_id="ship", python_callable=ship_evidence)
        # A verify failure is a fact about what S3 holds: retrying only repeats it.
        verify = PythonOperator(task_id="verify", python_callable=verify_evidence, retries=0)
        ship >> verify
    return dag


__all__ = ["EvidenceVerifyFailed", "build_evidence_ship_dag", "ship_evidence", "verify_evidence"]
