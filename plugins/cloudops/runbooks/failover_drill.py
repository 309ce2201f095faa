"""# Failover drill: `failover_drill__<cluster>`

**What it does.** Proves the cluster can lose its primary and keep taking writes within its targets,
measured by a client writing through the application's own connection, then fails back and checks
again. Runs on the catalog's schedule, or by hand (Trigger DAG, with the form below).
1. `preflight` reads every member (the primary is discovered, never assumed) and runs every guard:
   the topology matches the catalog (every member answers, at its catalog address, exactly one
   primary); the candidate is a replica streaming on the primary's timeline; its lag is under the
   bound in bytes and seconds; enough healthy replicas; no backup, base backup or long transaction
   on the primary; not within the cluster's minimum interval since its last drill (read from the
   evidence ledger); inside the drill window; the mode is allowed (`crash` only where the catalog
   allows it) and has a driver; the probe's connection reaches the primary. Each decision is logged
   with its reason, naming cluster and node. With `dry_run` nothing moves: the plan is logged, and the
   run fails at `outcome` when a drill would be refused.
2. `drill` asks for **a second person's approval** first when the cluster is `production` (Approve /
   Reject on the task's page; never the person who triggered it). Then one task owns the probe and the
   actions for the whole window, in the pool `failover_drills__<estate>` (one drill per estate at a
   time; a lease refuses one started another way): the probe writes a numbered row every ~15 ms; the
   candidate's lag is read again within a second of the action; planned switchover (the manager's
   way), or with mode `crash` (only where the catalog's `drill.modes` allows it) the primary crashed:
   Patroni's leader loses Patroni and PostgreSQL together and the drill waits for the candidate to
   lead (the leader key's ttl) and the old node to rejoin; a native PostgreSQL primary's postmaster is
   killed (SIGKILL) and the drill acts as the detector: promote the candidate, `pg_rewind` the
   crashed node and rejoin it as a standby. Verify one writer and that probe writes land; read back
   every acknowledged id (lost writes are counted, never assumed); fail back as the policy says
   (always a planned switchover); verify again. A crash drill is judged against
   `drill.crash_targets` where the catalog sets them.
3. `evaluate` judges each target PASS / FAIL / ABORTED with its reason and names the abort path taken.
4. `record` writes the `failover.drill` fact to the evidence ledger and the JSON record beside the
   backups in S3 (`<prefix>/<estate>/_failover_drills/<cluster>/<run id>.json`, its SHA-256 in the fact).
5. `notify` sends the outcome to the estate's notification targets (a page for the abort paths
   that need a person); `outcome` fails the run when the drill did not PASS.

**What a failure means.** `preflight`: refused, nothing was moved: the message names each guard that
refused (a lagging or down candidate, a backup running, the interval, the mode, the probe). A
refusal is never retried. `drill`: refused at the start (another drill of the estate holds the lease,
or the manager is not available), or the drill stopped on an abort path, recorded: *catch-up
timeout* (the old primary was restarted as primary), *downtime over budget* (no automatic fail-back:
a person decides), *two writers* (the other writer was fenced: page), *rejoin impossible* (the new
primary serves alone: degraded redundancy). `outcome`: a target was missed (the record says which).

**What to do next.** Read the record (the `record` task's log, or the JSON in S3). After *rejoin
impossible*, rebuild the old primary as a replica (`pg_basebackup`) or fail back by hand; after *two
writers* or *downtime over budget*, read both servers before anything else. Check the cluster with
`cloudops failover drill <cluster> --dry-run`, then trigger again once the cause is gone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from cloudops.catalog import Catalog, LoadedCatalog
from cloudops.catalog.models import Cluster, Repository
from cloudops.errors import CloudOpsError, InvalidInputError

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from cloudops.failover.drill import DrillOptions, PlannedDrill
    from cloudops.failover.managers import SwitchoverManager
    from cloudops.failover.policy import DrillGuards, DrillTargets
    from cloudops.failover.probe import ProbeEndpoint
    from cloudops.failover.record import DrillRecord
    from cloudops.runbooks.approval import Approval

log = logging.getLogger(__name__)

KIND = "failover_drill"
RECORD_FOLDER = "_failover_drills"  # never a catalog name (they start with a letter), as _drills
LONG_TRANSACTION_S = 60.0
NEXT_ACTIONS = {
    "preflight": "refused before anything moved: read the guards that refused (names cluster and node), "
    "fix the cause and trigger again",
    "drill": "the drill stopped: read its record for the abort path; after 'rejoin impossible' rebuild the "
    "old primary; after 'two writers' or 'downtime over budget' read both servers first",
    "outcome": "a target was missed: read the record's verdicts",
    "*": "read the task log",
}
# Abort paths after which a person must look now: the alert says "page".
PAGE_PATHS = frozenset({"two writers", "downtime over budget", "rejoin impossible", "switchover failed"})


@dataclass(frozen=True)
class ClusterTarget:
    """The one target of a failover drill: a cluster of one estate's catalog file."""

    catalog_file: str
    estate: str
    cluster: str


@dataclass(frozen=True)
class DrillSettings:
    """The catalog's drill policy of one cluster, as the failover library takes it."""

    targets: DrillTargets
    guards: DrillGuards
    options: DrillOptions
    expected_members: dict[str, str | None]


class Judgement(TypedDict):
    """What `evaluate` decided from the record."""

    cluster: str
    verdict: str
    abort_path: str | None
    page: bool
    summary: str


# -- the catalog, mapped onto the library (pure) ----------------------------------------------------


def cluster_of(catalog: Catalog, name: str) -> Cluster:
    """The cluster called ``name`` with a drill policy. :raises InvalidInputError: none, or no policy."""
    from cloudops.catalog.errors import did_you_mean

    found = next((c for c in catalog.clusters if c.name == name), None)
    if found is None:
        hint = did_you_mean(name, [c.name for c in catalog.clusters])
        raise InvalidInputError(
            f"estate {catalog.estate} has no cluster {name!r}" + (f" ({hint})" if hint else "")
        )
    if found.drill is None:
        raise InvalidInputError(f"cluster {name!r} has no drill policy (clusters[].drill): no drill")
    return found


def policy_window(cluster: Cluster, timezone: str) -> Any:
    """The catalog's window as the library's :class:`~cloudops.failover.policy.DrillWindow` (None: any time).

    A 24 h window on every day is no limit at all; a 24 h window on some days ends a minute early
    (the library's window needs an end that is not its start).
    """
    from cloudops.failover.policy import DrillWindow

    assert cluster.drill is not None
    window = cluster.drill.guards.window
    if window is None:
        return None
    days = frozenset(("mon", "tue", "wed", "thu", "fri", "sat", "sun").index(d) for d in window.days)
    if window.duration >= timedelta(hours=24):
        if len(days) == 7:
            return None
        duration = timedelta(hours=24) - timedelta(minutes=1)
    else:
        duration = window.duration
    hours, minutes = (int(part) for part in window.start.split(":"))
    start = datetime(2000, 1, 1, hours, minutes, tzinfo=UTC)  # a clock time only: the date is any
    minutes_open = int(window.duration.total_seconds() // 60)
    text = f"{','.join(d.title() for d in window.days)} {window.start} for {minutes_open} min"
    return DrillWindow(days, start.time(), (start + duration).time(), timezone, text)


def settings_of(catalog: Catalog, cluster: Cluster, mode: str = "planned") -> DrillSettings:
    """Targets, guards and options of the cluster's drill policy (one catalog field each); a crash
    drill is judged against ``crash_targets`` where the catalog sets them."""
    from cloudops.failover.drill import DrillOptions
    from cloudops.failover.policy import DrillGuards, DrillTargets

    policy = cluster.drill
    assert policy is not None
    declared = policy.crash_targets if mode == "crash" and policy.crash_targets else policy.targets
    targets = DrillTargets(
        max_write_downtime_s=max(declared.max_write_downtime_seconds, 0.001),
        max_acked_writes_lost=declared.max_acknowledged_writes_lost,
        max_drill_s=declared.max_drill_seconds,
    )
    guards = DrillGuards(
        max_lag_bytes=policy.guards.max_lag_bytes,
        max_lag_s=policy.guards.max_lag_seconds,
        min_healthy_replicas=max(1, policy.guards.min_healthy_replicas),
        min_interval=policy.guards.min_interval,
        window=policy_window(cluster, catalog.timezone),
        modes_allowed=frozenset(policy.modes),
    )
    options = DrillOptions(
        fail_back=policy.failback == "auto",
        probe_interval_s=cluster.probe.interval_ms / 1000,
    )
    expected = {m.member_name: (m.address or None) for m in cluster.members}
    return DrillSettings(targets, guards, options, expected)


def probe_dsn(cluster: Cluster, *, used_by: str) -> str | ProbeEndpoint:
    """The probe's way in, as the application connects: a libpq connection string from the cluster's
    probe connection (host and port lists, ``target_session_attrs=read-write``), or for MariaDB's
    first-writable routing the MariaDB write probe's target (the first server with read_only off).
    """
    from psycopg.conninfo import make_conninfo

    from cloudops.connections import get_connection

    if cluster.probe.routing == "first-writable":
        from cloudops.failover.probe_mariadb import mariadb_probe_target

        return mariadb_probe_target(cluster.probe.conn_id, used_by=used_by)
    conn = get_connection(cluster.probe.conn_id, used_by)
    extra = dict(conn.extra_dejson or {})
    params: dict[str, str] = {
        "host": conn.host or "",
        "port": str(extra.pop("port", "") or conn.port or ""),
        "user": conn.login or "",
        "dbname": cluster.probe.database or conn.schema or "postgres",
    }
    if conn.password:
        params["password"] = conn.password
    for key, value in extra.items():
        if key in ("target_session_attrs", "connect_timeout", "sslmode", "application_name"):
            params[key] = str(value)
    return make_conninfo("", **{k: v for k, v in params.items() if v})


def record_location(catalog: Catalog, cluster: Cluster) -> tuple[Repository, str] | None:
    """Where the drill's JSON goes: the backup repository of the first member database that has one
    (else the estate's only repository), and the aws connection of its cloud; None when there is none."""
    repositories: list[str] = []
    for member in cluster.members:
        if member.database:
            try:
                database = catalog.database(member.database)
            except KeyError:
                continue
            if database.backup is not None:
                repositories.append(database.backup.repository)
    if not repositories and len(catalog.repositories) == 1:
        repositories.append(catalog.repositories[0].name)
    if not repositories:
        return None
    repository = catalog.repository(repositories[0])
    conn = next((c.aws_conn_id for c in catalog.clouds if c.name == repository.cloud), None)
    return (repository, conn) if conn else None


def record_key(repository: Repository, estate: str, cluster: str, run_id: str) -> str:
    """``<prefix>/<estate>/_failover_drills/<cluster>/<run id>.json`` (the run id made key-safe)."""
    from cloudops.repository.layout import normalize_prefix

    safe = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in run_id)
    prefix = normalize_prefix(repository.prefix)
    return f"{prefix}/{estate}/{RECORD_FOLDER}/{cluster}/{safe}.json".lstrip("/")


def abort_path(record: Mapping[str, Any]) -> str | None:
    """Which abort path a drill record took (the issue's names), or None when it ran through."""
    aborted = str(record.get("aborted") or "")
    fail_back = str((record.get("server_evidence") or {}).get("fail_back") or "")
    if record.get("degraded_redundancy"):
        return "rejoin impossible"
    if "two writers" in aborted:
        return "two writers"
    if fail_back.startswith("skipped: write downtime"):
        return "downtime over budget"
    if aborted.startswith(("switchover failed", "fail_back failed")):
        return "switchover failed"
    if aborted.startswith(("switchover:", "fail_back:")):
        return "catch-up timeout"
    if aborted.startswith(("lag re-check", "the lag re-check")):
        return "lag at the re-check"
    if aborted:
        return "aborted"
    return None


def judge(record: Mapping[str, Any], *, dry_run: bool = False) -> Judgement:
    """The drill's outcome from its record (pure): verdict, abort path, whether to page, one line."""
    cluster = str(record.get("cluster") or "?")
    if dry_run:
        if record.get("refused"):
            return Judgement(
                cluster=cluster,
                verdict="REFUSED",
                abort_path=None,
                page=False,
                summary=f"{cluster}: dry run: a drill would be refused: {record.get('refusal')}",
            )
        return Judgement(
            cluster=cluster, verdict="DRY RUN", abort_path=None, page=False, summary=f"{cluster}: dry run"
        )
    if record.get("refused"):
        return Judgement(
            cluster=cluster,
            verdict="REFUSED",
            abort_path=None,
            page=False,
            summary=f"{cluster}: refused, nothing was moved: {record.get('refusal')}",
        )
    path = abort_path(record)
    verdict = str(record.get("verdict") or "ABORTED")
    figures = drill_figures(record)
    parts = [f"{cluster}: {verdict}"]
    if path:
        parts.append(f"abort path: {path}")
    parts.append(
        f"write downtime {_shown(figures['write_downtime_s'], 's')}, acked writes lost "
        f"{_shown(figures['acked_writes_lost'], '')}, drill {_shown(figures['drill_seconds'], 's')}"
    )
    for verdict_row in record.get("verdicts") or []:
        if verdict_row.get("status") != "PASS":
            parts.append(
                f"{verdict_row.get('target')} {verdict_row.get('status')}: {verdict_row.get('reason')}"
            )
    return Judgement(
        cluster=cluster, verdict=verdict, abort_path=path, page=path in PAGE_PATHS, summary="; ".join(parts)
    )


def drill_figures(record: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures of a record: write downtime, acked writes lost, whole drill, and more."""
    analysis = record.get("analysis") or {}
    return {
        "write_downtime_s": analysis.get("write_downtime_s"),
        "total_write_downtime_s": analysis.get("total_write_downtime_s"),
        "max_ack_gap_s": analysis.get("max_ack_gap_s"),
        "acked_writes_lost": analysis.get("acked_writes_lost"),
        "in_doubt": analysis.get("in_doubt"),
        "acked": analysis.get("acked"),
        "drill_seconds": record.get("drill_seconds"),
    }


def _shown(value: Any, unit: str) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:.3f}{(' ' + unit) if unit else ''}"
    return f"{value}{(' ' + unit) if unit else ''}"


# -- acting: the library entry points the runbook and the CLI call ----------------------------------


def last_drill_at(dag_id: str, cluster: str) -> datetime | None:
    """When the cluster's last drill that acted started, from the evidence ledger (None: never)."""
    from cloudops.evidence.recorder import ledger
    from cloudops.evidence.runs import FAILOVER_DRILL

    latest: datetime | None = None
    for rec in ledger().records():
        if rec.kind != FAILOVER_DRILL:
            continue
        data = rec.fields.get("data") or {}
        if data.get("cluster") != cluster or not data.get("moved"):
            continue
        try:
            at = datetime.fromisoformat(str(data.get("started") or rec.at))
        except ValueError:
            continue
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        latest = at if latest is None or at > latest else latest
    return latest


def prepare(
    target: ClusterTarget, catalog: Catalog, *, run_id: str, mode: str = "planned"
) -> tuple[Cluster, SwitchoverManager, DrillSettings, str | ProbeEndpoint]:
    """The cluster, its manager, its settings and the probe's connection string.

    :raises ManagerNotAvailable: the cluster's manager has no driver yet.
    """
    from cloudops.failover.registry import manager_for

    cluster = cluster_of(catalog, target.cluster)
    used_by = f"failover drill {run_id} of {cluster.name}"
    manager = manager_for(cluster, catalog, used_by=used_by)
    return cluster, manager, settings_of(catalog, cluster, mode), probe_dsn(cluster, used_by=used_by)


def run_preflight(
    target: ClusterTarget,
    catalog: Catalog,
    *,
    run_id: str,
    mode: str = "planned",
    candidate: str | None = None,
    now: datetime | None = None,
) -> PlannedDrill:
    """Read the cluster and run every guard (a dry run is this alone); move nothing."""
    from cloudops.failover.drill import preflight_drill

    cluster, manager, settings, dsn = prepare(target, catalog, run_id=run_id, mode=mode)
    planned = preflight_drill(
        manager,
        run_id=run_id,
        probe_dsn=dsn,
        guards=settings.guards,
        mode=mode,
        candidate=candidate,
        last_drill_at=last_drill_at(f"{KIND}__{cluster.name}", cluster.name),
        now=now,
        expected_members=settings.expected_members,
        long_transaction_s=LONG_TRANSACTION_S,
    )
    log.info("%s", planned.plan())
    return planned


def run_drill(
    target: ClusterTarget,
    catalog: Catalog,
    *,
    run_id: str,
    mode: str = "planned",
    candidate: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Run the drill under the estate's lease and return its record as JSON types, with ``refused``
    (and ``refusal``) when the preflight at the start refused it (nothing moved then).

    :raises DrillAlreadyRunning: another drill of the estate holds the lease.
    :raises ManagerNotAvailable: the cluster's manager has no driver yet.
    """
    from cloudops.failover import lease
    from cloudops.failover.drill import DrillRefused
    from cloudops.failover.drill import run_drill as drive

    lease.acquire(target.estate, target.cluster, run_id)
    try:
        cluster, manager, settings, dsn = prepare(target, catalog, run_id=run_id, mode=mode)
        # Any mode goes through the same preflight: a mode the catalog does not allow, or one the
        # manager has no driver for, is refused there and nothing moves.
        try:
            record = drive(
                manager,
                run_id=run_id,
                probe_dsn=dsn,
                targets=settings.targets,
                guards=settings.guards,
                mode=mode,
                candidate=candidate,
                last_drill_at=last_drill_at(f"{KIND}__{cluster.name}", cluster.name),
                now=now,
                options=settings.options,
                expected_members=settings.expected_members,
                long_transaction_s=LONG_TRANSACTION_S,
            )
        except DrillRefused as refused:
            return _refused(refused.record, str(refused))
        body = record.to_dict()
        body["refused"] = False
        body["moved"] = any(p.name.startswith(("switchover.", "crash.")) for p in record.phases)
        body["final_primary"] = _final_primary(manager)
        return body
    finally:
        lease.release(target.estate, run_id)


def _refused(record: DrillRecord, reason: str) -> dict[str, Any]:
    from cloudops.failover.record import scrub

    body = record.to_dict()
    body.update(refused=True, refusal=scrub(reason), moved=False, verdict="REFUSED")
    body["final_primary"] = (body.get("pre_state") or {}).get("primary")
    return body


def _final_primary(manager: SwitchoverManager) -> str | None:
    try:
        return manager.topology().primary
    except CloudOpsError as error:
        log.warning("the cluster could not be read after the drill: %s", error)
        return None


def fact_of(
    record: Mapping[str, Any], judgement: Judgement, *, dry_run: bool, stored: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``failover.drill`` fact: what the health check, the report and the next drill read."""
    pre = record.get("pre_state") or {}
    original = pre.get("primary") or None
    final = record.get("final_primary") or original
    return {
        "cluster": record.get("cluster"),
        "run_id": record.get("run_id"),
        "manager": record.get("manager"),
        "mode": record.get("mode"),
        "dry_run": dry_run,
        "refused": bool(record.get("refused")),
        "refusal": record.get("refusal"),
        "moved": bool(record.get("moved")),
        "started": record.get("started"),
        "finished": record.get("finished"),
        "original_primary": original,
        "new_primary": final,
        "failed_back": bool(record.get("moved")) and final is not None and final == original,
        "verdict": judgement["verdict"],
        "abort_path": judgement["abort_path"],
        "page": judgement["page"],
        "aborted": record.get("aborted"),
        "degraded_redundancy": record.get("degraded_redundancy"),
        "lag_bytes_at_injection": pre.get("lag_bytes"),
        "lag_seconds_at_injection": pre.get("lag_seconds"),
        "figures": drill_figures(record),
        "lost_ids": ((record.get("analysis") or {}).get("lost_ids") or [])[:1000],
        "targets": [
            {k: v.get(k) for k in ("target", "status", "measured", "limit", "reason")}
            for v in record.get("verdicts") or []
        ],
        "refusals": [d.get("reason") for d in record.get("preflight") or [] if not d.get("passed")],
        "record_key": stored.get("key"),
        "record_sha256": stored.get("sha256"),
        "record_version_id": stored.get("version_id"),
        "record_not_stored": stored.get("not_stored"),
    }


def store_record(catalog: Catalog, cluster: Cluster, record: Mapping[str, Any]) -> dict[str, Any]:
    """Write the record's JSON beside the backups; return its key, SHA-256 and version (or why not)."""
    from cloudops.repository.pipeline import encryption_args, upload_bytes
    from cloudops.repository.s3 import bounded_s3_client

    body = json.dumps(record, sort_keys=True, indent=2).encode()
    digest = hashlib.sha256(body).hexdigest()
    where = record_location(catalog, cluster)
    if where is None:
        reason = "no backup repository for the cluster's members, and not exactly one in the estate"
        log.warning("cluster %s: the record is kept in the ledger only: %s", cluster.name, reason)
        return {"key": None, "sha256": digest, "version_id": None, "not_stored": reason}
    repository, aws_conn_id = where
    key = record_key(repository, catalog.estate, cluster.name, str(record.get("run_id")))
    client = bounded_s3_client(aws_conn_id, region=repository.region)
    result = upload_bytes(
        client,
        repository.bucket,
        key,
        body,
        extra_args=encryption_args(repository.encryption),
        content_type="application/json",
    )
    log.info("drill record written to s3://%s/%s (sha256 %s)", repository.bucket, key, digest)
    return {"key": f"s3://{repository.bucket}/{key}", "sha256": digest, "version_id": result.version_id}


def alert_of(estate: str, judgement: Judgement, run_id: str, stored: Mapping[str, Any]) -> Any:
    """The message to the estate's notification targets."""
    from cloudops.notifications import Alert, masked_error

    cluster = judgement["cluster"]
    page = " PAGE" if judgement["page"] else ""
    subject = f"[cloudops][{estate}]{page} failover drill {judgement['verdict']} ({cluster})"
    body = (
        f"Failover drill of cluster {cluster} in estate {estate}: {judgement['verdict']}.\n\n"
        f"Run: {run_id}\n{masked_error(judgement['summary'])}\n"
        f"Record: {stored.get('key') or 'ledger only'} (sha256 {stored.get('sha256')})\n"
    )
    if judgement["page"]:
        body += f"\nA person must act now ({judgement['abort_path']}): {NEXT_ACTIONS['drill']}\n"
    return Alert(subject, body)


def figures_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The demo's and the CLI's table of drills: verdict and the headline figures."""
    from cloudops.health import render_table

    return render_table(
        ["cluster", "verdict", "write downtime", "acked lost", "drill time", "abort path"],
        [
            [
                str(r.get("cluster")),
                str(r.get("verdict")),
                _shown((r.get("figures") or {}).get("write_downtime_s"), "s"),
                _shown((r.get("figures") or {}).get("acked_writes_lost"), ""),
                _shown((r.get("figures") or {}).get("drill_seconds"), "s"),
                str(r.get("abort_path") or "-"),
            ]
            for r in rows
        ],
    )


# -- Airflow ----------------------------------------------------------------------------------------


def _target(context: Mapping[str, Any]) -> ClusterTarget:
    params = context["params"]
    return ClusterTarget(params["_catalog_file"], params["_estate"], params["_cluster"])


def _form(context: Mapping[str, Any]) -> tuple[str, str | None, bool]:
    params = context["params"]
    return (
        str(params.get("mode") or "planned"),
        (params.get("candidate") or None),
        bool(params.get("dry_run")),
    )


def preflight_task(**context: Any) -> dict[str, Any]:
    """Run every guard and log the plan; a refusal fails the step, never retried."""
    from airflow.sdk.exceptions import AirflowFailException

    from cloudops.failover.registry import ManagerNotAvailable
    from cloudops.runbooks.common import load_estate

    target = _target(context)
    mode, candidate, dry_run = _form(context)
    catalog = load_estate(target.catalog_file, target.estate)
    try:
        planned = run_preflight(target, catalog, run_id=context["run_id"], mode=mode, candidate=candidate)
    except (ManagerNotAvailable, InvalidInputError) as refused:
        raise AirflowFailException(f"refused, nothing was moved: {refused}") from None
    if not planned.passed:
        if dry_run:
            log.warning("dry run: the drill would be refused: %s", planned.checked.explain())
        else:
            raise AirflowFailException(f"refused, nothing was moved: {planned.checked.explain()}")
    log.info("plan%s: %s", " (dry run: nothing moves)" if dry_run else "", planned.plan())
    return {
        "dry_run": dry_run,
        "mode": mode,
        "passed": planned.passed,
        "primary": planned.primary,
        "candidate": planned.candidate,
        "plan": planned.plan(),
        "guards": [
            {"guard": d.guard, "passed": d.passed, "reason": d.reason} for d in planned.checked.decisions
        ],
    }


def _approval_body(context: dict[str, Any]) -> str | None:
    from cloudops.runbooks.common import load_estate

    target = _target(context)
    cluster = cluster_of(load_estate(target.catalog_file, target.estate), target.cluster)
    planned = context["ti"].xcom_pull(task_ids="preflight") or {}
    if not cluster.production or planned.get("dry_run"):
        return None
    return (
        f"Failover drill of production cluster `{cluster.name}` (estate {target.estate}, manager "
        f"{cluster.manager}), run `{context['run_id']}`: {planned.get('plan')}. Client writes will fail "
        "for up to the write downtime target, twice (switchover and fail-back)."
    )


def _drill_act(context: dict[str, Any], approval: Approval | None) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    from cloudops.failover.lease import DrillAlreadyRunning
    from cloudops.failover.registry import ManagerNotAvailable
    from cloudops.runbooks.common import load_estate

    target = _target(context)
    mode, candidate, dry_run = _form(context)
    if dry_run:
        log.info("dry run: preflight only; nothing moves")
        planned = context["ti"].xcom_pull(task_ids="preflight") or {}
        refusals = [g["reason"] for g in planned.get("guards") or [] if not g.get("passed")]
        return {
            "cluster": target.cluster,
            "run_id": context["run_id"],
            "dry_run": True,
            "refused": bool(refusals),
            "refusal": "; ".join(refusals) or None,
        }
    catalog = load_estate(target.catalog_file, target.estate)
    try:
        record = run_drill(target, catalog, run_id=context["run_id"], mode=mode, candidate=candidate)
    except (DrillAlreadyRunning, ManagerNotAvailable) as refused:
        raise AirflowFailException(str(refused)) from None
    record["approved_by"] = approval.approver if approval else None
    return record


def evaluate_task(record: dict[str, Any]) -> Judgement:
    judgement = judge(record, dry_run=bool(record.get("dry_run")))
    log.info("%s", judgement["summary"])
    return judgement


def record_task(record: dict[str, Any], judgement: Judgement, **context: Any) -> dict[str, Any]:
    from cloudops.evidence.recorder import record_fact
    from cloudops.evidence.runs import FAILOVER_DRILL
    from cloudops.runbooks.common import load_estate

    if record.get("dry_run"):
        log.info("dry run: nothing to record beyond the run itself")
        return {"key": None, "sha256": None}
    target = _target(context)
    catalog = load_estate(target.catalog_file, target.estate)
    stored = store_record(catalog, cluster_of(catalog, target.cluster), record)
    record_fact(FAILOVER_DRILL, context, fact_of(record, judgement, dry_run=False, stored=stored))
    return stored


def record_is_dry_run(judgement: Judgement) -> bool:
    """A dry run's judgement (passed or refused): nothing to send."""
    return judgement["summary"].startswith(f"{judgement['cluster']}: dry run")


def notify_task(judgement: Judgement, stored: dict[str, Any], **context: Any) -> None:
    from cloudops.notifications import send_alert
    from cloudops.runbooks.common import load_estate

    if record_is_dry_run(judgement):
        log.info("dry run: no notification")
        return
    target = _target(context)
    alert = alert_of(target.estate, judgement, context["run_id"], stored)
    send_alert(load_estate(target.catalog_file, target.estate).notifications, alert)


def outcome_task(judgement: Judgement) -> str:
    if judgement["verdict"] not in ("PASS", "DRY RUN"):
        raise CloudOpsError(judgement["summary"])
    return judgement["verdict"]


def build_failover_drill_dags(loaded: LoadedCatalog) -> list[DAG]:
    """Build ``failover_drill__<cluster>`` for every cluster with a drill policy."""
    from airflow.sdk import DAG, Param, task

    from cloudops.failover.lease import pool_name
    from cloudops.runbooks.approval import SecondPersonApproval
    from cloudops.runbooks.common import (
        created_paused,
        default_args,
        failure_alerts,
        runbook_doc,
        start_date,
        tags,
    )

    catalog = loaded.catalog
    dags = []
    for cluster in catalog.clusters:
        policy = cluster.drill
        if policy is None:
            continue
        members = ", ".join(m.member_name for m in cluster.members)
        with DAG(
            dag_id=f"{KIND}__{cluster.name}",
            description=f"Failover drill of cluster {cluster.name} ({cluster.manager}): switchover, verify, "
            "fail back, measured by a client",
            schedule=policy.schedule,
            start_date=start_date(catalog.timezone),
            catchup=False,
            max_active_runs=1,
            dagrun_timeout=timedelta(hours=6),
            default_args=default_args(
                catalog.owner,
                alerts=failure_alerts(loaded, f"cluster {cluster.name}", NEXT_ACTIONS),
                retries=1,
                execution_timeout=timedelta(minutes=10),
            ),
            is_paused_upon_creation=created_paused(policy.paused),
            doc_md=runbook_doc(
                __doc__,
                f"Cluster `{cluster.name}` ({cluster.manager}"
                f"{', production' if cluster.production else ''}): {members}. Modes allowed: "
                f"{', '.join(policy.modes)}. Targets: write downtime "
                f"{policy.targets.max_write_downtime_seconds:g} s, acknowledged writes lost "
                f"{policy.targets.max_acknowledged_writes_lost}, whole drill "
                f"{policy.targets.max_drill_seconds:g} s.",
            ),
            tags=tags(KIND, loaded, f"cluster:{cluster.name}"),
            params={
                "_catalog_file": Param(str(loaded.path), type="string", const=str(loaded.path)),
                "_estate": Param(catalog.estate, type="string", const=catalog.estate),
                "_cluster": Param(cluster.name, type="string", const=cluster.name),
                "mode": Param(
                    "planned",
                    type="string",
                    enum=["planned", "crash"],
                    title="Mode",
                    description="planned: a switchover; crash: the primary stops dead (only where the "
                    "catalog allows it).",
                ),
                "dry_run": Param(
                    False, type="boolean", title="Dry run", description="Preflight only: log the plan."
                ),
                "candidate": Param(
                    None,
                    type=["null", "string"],
                    title="Candidate",
                    description="The replica to promote; empty: the first streaming one.",
                    enum=[None, *[m.member_name for m in cluster.members]],
                ),
            },
        ) as dag:
            preflight = task(task_id="preflight", retries=0)(preflight_task)()
            drill = SecondPersonApproval(
                task_id="drill",
                subject=f"Approve the failover drill of production cluster {cluster.name}",
                needed=_approval_body,
                act=_drill_act,
                response_timeout=timedelta(hours=4),
                retries=0,  # a drill is never re-run blindly: the cluster is read first
                pool=pool_name(catalog.estate),
                # The approval's wait, then the drill with its bound.
                execution_timeout=timedelta(hours=4, seconds=policy.targets.max_drill_seconds + 300),
            )
            # TaskFlow passes each result on as an XComArg (typed Any here: mypy sees the plain functions).
            evaluate: Any = task(task_id="evaluate")(evaluate_task)
            store: Any = task(task_id="record")(record_task)
            notify: Any = task(task_id="notify")(notify_task)
            conclude: Any = task(task_id="outcome", retries=0)(outcome_task)
            judged = evaluate(drill.output)
            stored = store(drill.output, judged)
            notified = notify(judged, stored)
            verdict = conclude(judged)
            preflight >> drill
            notified >> verdict
        dags.append(dag)
    return dags


def required_pools(catalogs: list[LoadedCatalog]) -> dict[str, dict[str, Any]]:
    """The Airflow pools the drills need (one slot per estate), as ``airflow pools import`` reads them:
    ``{name: {slots, description, include_deferred}}`` (a list is refused by the import)."""
    from cloudops.failover.lease import pool_name

    estates = sorted({c.catalog.estate for c in catalogs if any(cl.drill for cl in c.catalog.clusters)})
    return {
        pool_name(estate): {
            "slots": 1,
            "description": f"one failover drill at a time in estate {estate}",
            "include_deferred": False,
        }
        for estate in estates
    }


# -- Command line (cloudops failover drill) -----------------------------------------------------------


def find_cluster(name: str) -> tuple[LoadedCatalog, Cluster]:
    """The catalog file and cluster called ``name`` across every catalog file."""
    from cloudops.catalog import load_catalogs
    from cloudops.catalog.errors import did_you_mean

    names = []
    for loaded in load_catalogs().catalogs:
        for cluster in loaded.catalog.clusters:
            if cluster.name == name:
                return loaded, cluster
            names.append(cluster.name)
    hint = did_you_mean(name, names)
    raise InvalidInputError(f"no cluster {name!r} in the catalog" + (f" ({hint})" if hint else ""))


def cli_drill(
    name: str,
    *,
    dry_run: bool = False,
    mode: str = "planned",
    candidate: str | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """``cloudops failover drill <cluster> [--dry-run]``: the runbook's steps without Airflow, recorded
    in the ledger as a run of ``failover_drill__<cluster>``; 0 when the drill passed (or the dry run's
    preflight did)."""
    from cloudops.evidence.recorder import cli_run, record_fact
    from cloudops.evidence.runs import FAILOVER_DRILL

    loaded, cluster = find_cluster(name)
    catalog = loaded.catalog
    target = ClusterTarget(str(loaded.path), catalog.estate, cluster.name)
    conf = {"mode": mode, "dry_run": dry_run, "candidate": candidate}
    with cli_run(f"{KIND}__{cluster.name}", conf=conf) as context:
        planned = run_preflight(target, catalog, run_id=context["run_id"], mode=mode, candidate=candidate)
        for decision in planned.checked.decisions:
            say(f"  {'pass' if decision.passed else 'REFUSED':7} {decision.guard}: {decision.reason}")
        say(f"plan: {planned.plan()}")
        if dry_run or not planned.passed:
            say(
                "dry run: nothing moved"
                if dry_run
                else f"refused, nothing was moved: {planned.checked.explain()}"
            )
            context["exit_code"] = 0 if planned.passed else 1
            return int(context["exit_code"])
        started = time.monotonic()
        record = run_drill(target, catalog, run_id=context["run_id"], mode=mode, candidate=candidate)
        judgement = judge(record)
        stored = store_record(catalog, cluster, record)
        fact = fact_of(record, judgement, dry_run=False, stored=stored)
        record_fact(FAILOVER_DRILL, context, fact)
        say(figures_table([fact]))
        say(
            f"{judgement['summary']} ({time.monotonic() - started:.1f} s); "
            f"record {stored.get('key') or 'ledger only'}"
        )
        context["exit_code"] = 0 if judgement["verdict"] == "PASS" else 1
        return int(context["exit_code"])


__all__ = [
    "KIND",
    "ClusterTarget",
    "DrillSettings",
    "Judgement",
    "abort_path",
    "build_failover_drill_dags",
    "cli_drill",
    "cluster_of",
    "drill_figures",
    "fact_of",
    "figures_table",
    "find_cluster",
    "judge",
    "last_drill_at",
    "policy_window",
    "probe_dsn",
    "record_is_dry_run",
    "record_key",
    "record_location",
    "required_pools",
    "run_drill",
    "run_preflight",
    "settings_of",
    "store_record",
]
