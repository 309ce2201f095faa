"""What the ledger's records mean: the record kinds, and runs folded from them for reports and views.

Every record has ``seq``, ``at``, ``kind``, ``key``, ``prev``, ``hash`` (see ledger.py) and, for the
kinds below, ``dag_id``, ``run_id``, ``runbook`` (the runbook kind: ``backup``, ``restore_drill``,
...), ``target`` (the database, fleet or estate the run is for; None for one-off DAGs) and ``data``:

- ``run.started``: data ``run_type``, ``triggered_by`` (timetable, asset, ui, rest_api, cli, test...),
  ``triggered_by_user`` (None when the scheduler started it), ``conf`` (secrets masked),
  ``logical_date``. A ``cloudops`` command that does a runbook's work outside Airflow records itself
  as a run of that runbook (:func:`cloudops.evidence.recorder.cli_run`): run id ``cli__<UTC time>``,
  ``triggered_by`` ``cli``, ``triggered_by_user`` the OS user, ``hostname``; its facts carry
  ``triggered_by`` and ``triggered_by_user`` too;
- ``run.finished``: data ``state`` (success or failed), ``message``, ``started_at``, ``finished_at``,
  ``duration_seconds``, and again ``run_type``, ``triggered_by``, ``triggered_by_user``, ``conf``,
  ``logical_date`` (a run is complete even where ``run.started`` did not fire, as in ``dags test``);
- ``step.try``: also ``task_id``, ``map_index``, ``try_number``; data ``state`` (success, failed,
  skipped), ``error`` (first line, secrets masked), ``started_at``, ``finished_at``,
  ``duration_seconds``, ``hostname``;
- ``backup.taken``: data ``estate``, ``database``, ``engine``, ``method``, ``backup_id``, ``bucket``,
  ``manifest_key``, ``manifest_sha256`` (of the exact bytes written), ``manifest_version_id`` (the S3
  version; None in an unversioned bucket), ``size_bytes``, ``raw_bytes``, ``started_at``,
  ``finished_at``, ``objects`` ([{name, key, size, sha256, version_id}]), ``locked_until``,
  ``lock_mode``, ``source`` (which server was dumped and why: ``member``, ``conn_id``, ``role``,
  ``address``, ``cluster``, ``policy``, ``reason``, ``topology``; a cluster member's backup reads the
  member the cluster's topology says now, :mod:`cloudops.clusters`). Drills and restores check the
  manifest they read against it;
- ``backup.started``: also ``try_number``; data ``estate``, ``database``, ``backup_id``, ``key`` (the
  object the dump streams into), ``try_number``, ``host``, ``pid``: recorded before the multipart
  upload is created, so that a retry knows which upload an earlier try of its run left;
- ``backup.orphan_upload``: one per multipart upload a backup found open under its database's folder
  with no manifest beside it: data ``estate``, ``database``, ``backup_id``, ``key``, ``upload_id``,
  ``initiated``, ``action`` (``aborted`` or ``reported``: left alone, as it may belong to a backup still
  running) and ``reason``;
- ``repository.trusted``: data ``estate``, ``database``, ``backup_id``, ``manifest_sha256``,
  ``manifest_version_id``, ``trusted_repository`` (True), ``by``: a backup without a ``backup.taken``
  record was drilled or restored because the caller trusted the repository explicitly;
- ``drill.recorded``: data is the whole drill record (``cloudops.restore.record.DrillRecord`` as
  JSON: ``estate``, ``database``, ``backup_id``, ``passed``, ``rto_seconds``, ``rpo_seconds``,
  ``rto_target_seconds``, ``rpo_target_seconds``, ``targets_met``, ``checksums``, ``checks``
  ([{name, passed, expected, observed, detail}]), ``rds``...) plus ``record_uri``,
  ``checksums_verified`` (every object re-hashed and matching; None when none was reached),
  ``manifest_sha256`` (the manifest drilled) and ``trusted_repository``;
- ``drill.scratch``: also ``task_id`` (``restore``) and ``try_number``; data ``estate``, ``database``,
  ``scratch`` (the scratch cluster's name), ``state`` (``owned``: that try of a physical drill took
  the cluster, recorded before its folder is made; ``removed``: it was stopped and removed, ``by``
  that try, a later one, or the teardown), ``try_number`` (the try that owned it), ``owner`` (``host``,
  ``boot_id``, ``pid`` of the task that started it). An ``owned`` without its ``removed`` is a
  scratch server that may still run on that host: the retry and the teardown report it;
- ``backup.verified``: data ``estate``, ``database``, ``backup_id``, ``ok`` (every object read back
  and matching the manifest's size and SHA-256), ``reason``, ``object_name`` (the first that did not),
  ``objects_checked``, ``bytes_checked``; retention counts a backup toward ``keep_*`` only after it;
- ``retention.deleted``: one per backup or cloud snapshot a retention run deleted; data ``estate``,
  ``what`` (``backup``, ``rds_snapshot``, ``ebs_snapshot``), ``backup_id``, ``database`` or ``fleet``,
  ``group``, ``deleted`` (S3 keys, or the snapshot id), ``reasons`` (the plan's), ``proof``, ``policy``
  (the keep_* rules), ``max_delete_share``, ``allow_large_delete``;
- ``restore.performed``: data ``estate``, ``database``, ``backup_id``, ``target_database``,
  ``overwrite``, ``requested_by``, ``approved_by``, ``manifest_sha256``, ``trusted_repository``;
- ``patch.planned``: data ``estate``, ``fleet``, ``snapshot_id``, ``snapshot`` (the whole snapshot:
  pins per host, what was left out and why), ``batches``, ``unreachable`` (host -> cause),
  ``excluded``, ``resumed_from``, ``done_hosts``, ``dry_run``; recorded before any host changes;
- ``patch.host``: one per host a wave acted on: ``estate``, ``fleet``, ``snapshot_id``, ``host``,
  ``batch``, ``status``, ``step`` and ``error`` (when it failed), ``changed``, versions before and
  after, boot ids, kernels, ``compliance`` (package -> state), ``held``, ``rolled_back``, health
  output, ``apt_log`` (bounded excerpt), ``notes``, ``timings``;
- ``patch.wave``: ``estate``, ``fleet``, ``snapshot_id``, ``halted``, ``succeeded``, ``reason``,
  ``batches`` (hosts, seconds, decision, reason), ``compliance`` (state counts), ``seconds``;
- ``patch.batch_started``: before a batch's hosts start: ``estate``, ``fleet``, ``snapshot_id``,
  ``batch``, ``hosts``, ``pins`` (host -> ``package=version``), ``try_number``;
- ``patch.batch_finished``: once the batch's ``patch.host`` records are written: ``estate``,
  ``fleet``, ``snapshot_id``, ``batch``, ``try_number``, ``decision``, ``reason``, ``failed``,
  ``seconds``, ``statuses`` (host -> status); a started batch without one was interrupted;
- ``patch.batch_recovered``: a retry's finding on a batch an earlier try started and never finished:
  ``estate``, ``fleet``, ``snapshot_id``, ``try_number``, ``batch``, ``started_by`` (tries),
  ``action`` (finish or halt), ``reason``, ``hosts`` (host -> state and detail), ``found`` (what was
  read on each host: versions of the pins, unfinished packages, reboot flag, kernels, lock holders);
- ``failover.drill``: one per failover drill (``failover_drill__<cluster>``) that got past its dry
  run, refused ones included: data ``cluster``, ``run_id``, ``manager``, ``mode``, ``refused`` (and
  ``refusal``, ``refusals``), ``moved`` (a switchover was attempted), ``started``, ``finished``,
  ``original_primary``, ``new_primary`` (the member that was primary when the drill ended),
  ``failed_back`` (True when the original primary is primary again), ``verdict`` (PASS, FAIL,
  ABORTED, REFUSED), ``abort_path``, ``page``, ``lag_bytes_at_injection``, ``lag_seconds_at_injection``,
  ``figures`` (write downtime, acked writes lost, whole drill...), ``lost_ids``, ``targets`` (each
  target's verdict and reason), ``record_key`` and ``record_sha256`` (the JSON record in S3). The next
  drill reads the newest one that moved for its minimum interval; the health check for where the
  primary is;
- ``report.stored``: one per monthly report stored: ``estate``, ``month``, ``time_zone``, ``files``
  ([{kind (html or pdf), name, bucket, key, version_id, sha256, size, lock_mode, locked_until}]),
  ``summary`` (availability and credit per SLO, cost total), ``generated_at``;
- ``approval``: also ``task_id``; data ``subject``, ``decision`` (Approve or Reject), ``approver``,
  ``requested_by``, ``responded_at``, ``accepted`` (False when the approver was the requester).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from cloudops.evidence.ledger import Record

RUN_STARTED = "run.started"
RUN_FINISHED = "run.finished"
STEP_TRY = "step.try"
BACKUP_TAKEN = "backup.taken"
DRILL_RECORDED = "drill.recorded"
RESTORE_PERFORMED = "restore.performed"
APPROVAL = "approval"
BACKUP_VERIFIED = "backup.verified"
RETENTION_DELETED = "retention.deleted"
REPOSITORY_TRUSTED = "repository.trusted"
PATCH_PLANNED = "patch.planned"
PATCH_HOST = "patch.host"
PATCH_WAVE = "patch.wave"
FAILOVER_DRILL = "failover.drill"
REPORT_STORED = "report.stored"
DRILL_SCRATCH = "drill.scratch"
BACKUP_STARTED = "backup.started"
BACKUP_ORPHAN_UPLOAD = "backup.orphan_upload"
PATCH_BATCH_STARTED = "patch.batch_started"
PATCH_BATCH_FINISHED = "patch.batch_finished"
PATCH_BATCH_RECOVERED = "patch.batch_recovered"
FACT_KINDS = (
    BACKUP_TAKEN,
    DRILL_RECORDED,
    RESTORE_PERFORMED,
    APPROVAL,
    BACKUP_VERIFIED,
    RETENTION_DELETED,
    REPOSITORY_TRUSTED,
    PATCH_PLANNED,
    PATCH_HOST,
    PATCH_WAVE,
    FAILOVER_DRILL,
    REPORT_STORED,
    DRILL_SCRATCH,
    BACKUP_STARTED,
    BACKUP_ORPHAN_UPLOAD,
    PATCH_BATCH_STARTED,
    PATCH_BATCH_FINISHED,
    PATCH_BATCH_RECOVERED,
)

# The runbook kinds cloudops builds DAGs for: ``<kind>__<target>``, or the kind alone for one-off
# DAGs. The listener records only these DAGs' runs (their params are cloudops's own, and other
# DAGs' conf and errors may hold anything); a new runbook kind is added here
# (tests/unit/test_evidence_listener.py checks every runbook module's KIND or DAG_ID is listed).
RUNBOOK_KINDS = frozenset(
    {
        "backup",
        "restore_drill",
        "restore_request",
        "ebs_snapshot",
        "health_check",
        "evidence_ship",
        "patch_wave",
        "monthly_report",
        "failover_drill",
    }
)
# Every cloudops runbook DAG carries this tag (runbooks/common.py tags()).
RUNBOOK_TAG = "cloudops"


def runbook_of(dag_id: str) -> tuple[str, str | None]:
    """``backup__orders_pg`` -> (``backup``, ``orders_pg``); a one-off DAG has no target."""
    kind, _, target = dag_id.partition("__")
    return kind, target or None


def is_runbook_dag(dag_id: str | None, tags: object = None) -> bool:
    """True for a DAG cloudops built: its id is ``<runbook kind>[__<target>]``, and its tags (when
    known: the listener does not always see the DAG object) include ``cloudops``."""
    if not dag_id or runbook_of(dag_id)[0] not in RUNBOOK_KINDS:
        return False
    if tags is None:
        return True
    try:
        return RUNBOOK_TAG in tags  # type: ignore[operator]
    except TypeError:
        return True


@dataclass
class Run:
    """One runbook run as the ledger tells it."""

    dag_id: str
    run_id: str
    runbook: str
    target: str | None
    started_at: str | None = None
    finished_at: str | None = None
    state: str = "running"
    triggered_by: str | None = None
    triggered_by_user: str | None = None
    conf: dict[str, Any] = field(default_factory=dict)
    steps: list[Record] = field(default_factory=list)
    facts: list[Record] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)

    @property
    def day(self) -> str:
        return (self.started_at or self.finished_at or (self.records[0].at if self.records else ""))[:10]

    @property
    def manual(self) -> bool:
        """Started by a person (UI, REST API, CLI) rather than by a schedule or an asset."""
        return bool(self.triggered_by_user) or self.triggered_by in ("ui", "rest_api", "cli")

    @property
    def approvals(self) -> list[Record]:
        return [f for f in self.facts if f.kind == APPROVAL]

    def facts_of(self, kind: str) -> list[Record]:
        return [f for f in self.facts if f.kind == kind]


def fold_runs(records: Iterable[Record]) -> list[Run]:
    """Group records by run, in the order runs first appear; records without a run are left out."""
    runs: dict[tuple[str, str], Run] = {}
    for record in records:
        dag_id, run_id = record.fields.get("dag_id"), record.fields.get("run_id")
        if not dag_id or not run_id:
            continue
        run = runs.get((dag_id, run_id))
        if run is None:
            runbook, target = runbook_of(dag_id)
            run = runs[(dag_id, run_id)] = Run(
                dag_id, run_id, record.fields.get("runbook") or runbook, record.fields.get("target") or target
            )
        run.records.append(record)
        data = record.fields.get("data") or {}
        if record.kind == RUN_STARTED:
            run.started_at = record.at
            run.triggered_by = data.get("triggered_by")
            run.triggered_by_user = data.get("triggered_by_user")
            run.conf = data.get("conf") or {}
        elif record.kind == RUN_FINISHED:
            run.finished_at = record.at
            run.started_at = run.started_at or data.get("started_at")
            run.state = data.get("state", run.state)
            run.triggered_by = run.triggered_by or data.get("triggered_by")
            run.triggered_by_user = run.triggered_by_user or data.get("triggered_by_user")
            run.conf = run.conf or data.get("conf") or {}
        elif record.kind == STEP_TRY:
            run.steps.append(record)
        elif record.kind in FACT_KINDS:
            run.facts.append(record)
    return list(runs.values())


def select_runs(
    runs: Iterable[Run],
    *,
    since: date | None = None,
    until: date | None = None,
    runbook: str | None = None,
    target: str | None = None,
) -> list[Run]:
    """The runs of a period, a runbook kind and a target (each optional)."""
    return [
        run
        for run in runs
        if (since is None or run.day >= since.isoformat())
        and (until is None or run.day <= until.isoformat())
        and (not runbook or run.runbook == runbook)
        and (not target or run.target == target)
    ]


__all__ = [
    "APPROVAL",
    "BACKUP_TAKEN",
    "BACKUP_VERIFIED",
    "DRILL_RECORDED",
    "FACT_KINDS",
    "FAILOVER_DRILL",
    "PATCH_BATCH_FINISHED",
    "PATCH_BATCH_RECOVERED",
    "PATCH_BATCH_STARTED",
    "PATCH_HOST",
    "PATCH_PLANNED",
    "PATCH_WAVE",
    "REPORT_STORED",
    "REPOSITORY_TRUSTED",
    "RESTORE_PERFORMED",
    "RETENTION_DELETED",
    "RUNBOOK_KINDS",
    "RUNBOOK_TAG",
    "RUN_FINISHED",
    "RUN_STARTED",
    "STEP_TRY",
    "Run",
    "fold_runs",
    "is_runbook_dag",
    "runbook_of",
    "select_runs",
]
