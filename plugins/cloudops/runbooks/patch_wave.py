"""# Patch wave: `patch_wave__<fleet>`

**What it does.** Installs the fleet's approved OS updates, canary first, in batches, without an outage.
Triggered by hand (Trigger DAG, with the form below); nothing is scheduled.
1. `plan` takes the fleet's wave lock (a second wave of the same fleet is refused, naming the run that
   holds it), checks the maintenance window (outside it, or past its cutoff: refused, nothing changes),
   scans every host in parallel (`apt-get update`, a simulation, holds, versions, boot id, reboot flag,
   kernels) and plans the **snapshot**: the exact `package=version` per host from the catalog's
   baseline, with every update left out and why. An unreachable host is left out and reported, or
   the wave refuses, as the fleet's `patching.unreachable` says. The snapshot is logged and recorded in
   the evidence ledger (`patch.planned`) **before anything changes**. With `dry_run` the run ends here.
2. `wave` asks for **a second person's approval** first when the fleet is `production` (Approve /
   Reject on the task's page; never the person who triggered it). Then batch after batch, the hosts
   of a batch in parallel: pre-flight (`dpkg --audit`; an interrupted dpkg is repaired with
   `dpkg --configure -a` and said so; the dpkg lock is waited for within a bound and its holder
   named), pre hook, install of exactly the snapshot's versions (never a removal), reboot when needed
   (the boot id must change within the bound, then stay the same for the stability window), health
   gate with soak, post hook. After each batch: go or halt, with the reason, against the batch limit
   and the wave's failure budget. A canary whose health broke has the bad update rolled back (the
   previous version reinstalled and held) when the repository still has it. No batch starts past the
   window's cutoff; with the window's `cutoff_behaviour: stop_now`, a batch still running at the
   cutoff stops too: each host at its next step boundary (before install, reboot, health gate, ...),
   reported `stopped` with the step it stopped before, whether packages changed and each package's
   state (e.g. INSTALLED_PENDING_REBOOT when it stopped before its reboot). Every host's outcome is
   recorded (`patch.host`), then the wave (`patch.wave`) with the compliance per host and package.
   If the `wave` task is lost mid-batch (worker killed), its one retry reads that batch's hosts again
   (waiting for the apt the killed try left running), logs and records each host's state (untouched,
   patched, half-done: dpkg interrupted, part of the pins, reboot pending) and finishes the batch from
   there, or halts naming the hosts when a state is unknown, still changing or changed by someone else.
   Batches the killed try finished are not run again. Any error fails `wave` for good (no retry).
3. `release` (always runs) releases the wave lock (only when this run holds it).

**What a failure means.** `plan`: refused before anything changed (another wave running, outside the
window, an unreachable host under `refuse`, an unknown package in the baseline): read the message.
A refusal is never retried: trigger again once its cause is gone.
`wave`: a batch failed, the budget ran out or the cutoff stopped it (stop_now); the message names each
failed or stopped host, the step and the cause, and the state it was left in (packages changed or
not, each package's compliance, a pre hook that ran without its post hook). A halted wave leaves
later batches untouched.

**What to do next.** Read the failed hosts in the log or with `cloudops patch status <fleet>`. Fix
the cause (or reject the bad package: form field `reject`), then trigger again with `resume_run_id`
set to the halted run's id: the same snapshot from the ledger (minus what you reject), skipping the
hosts that are done. Re-running is safe: a host already at the snapshot's versions is not touched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cloudops.catalog import Catalog, LoadedCatalog
from cloudops.catalog.models import Fleet, PatchingPolicy
from cloudops.errors import CloudOpsError, InvalidInputError

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from cloudops.patching.apt_host import AptHost
    from cloudops.patching.model import HostScan
    from cloudops.patching.recovery import RecoveryDecision
    from cloudops.patching.snapshot import Snapshot
    from cloudops.patching.wave_run import WaveResult, WaveSettings
    from cloudops.runbooks.approval import Approval

log = logging.getLogger(__name__)

KIND = "patch_wave"
ADVISORIES_PATH = "/srv/cloudops-repo/advisories.json"  # where the sandbox's repository shows it to hosts
MAX_SCAN_THREADS = 32
NEXT_ACTIONS = {
    "plan": "refused before anything changed: read the message (another wave, the window, an unreachable "
    "host, the baseline), fix it and trigger again",
    "wave": "a batch halted the wave: the log names each failed host, the step and the cause; fix or reject "
    "the package, then trigger again with resume_run_id",
    "*": "read the task log",
}


@dataclass(frozen=True)
class FleetTarget:
    """The one target of a patch wave: a fleet of one estate's catalog file."""

    catalog_file: str
    estate: str
    fleet: str


@dataclass(frozen=True)
class WavePlan:
    """What `plan` decided, before anything changes: the snapshot and the batches still to run."""

    snapshot: Snapshot
    batches: tuple[tuple[str, ...], ...]
    canary_batches: int
    unreachable: dict[str, str]
    done_hosts: tuple[str, ...]
    resumed_from: str | None
    window: str
    cutoff_at: datetime | None


def fleet_of(catalog: Catalog, name: str) -> tuple[Fleet, PatchingPolicy]:
    """The fleet and its patching policy. :raises InvalidInputError: no such fleet, or no policy."""
    fleet = next((f for f in catalog.fleets if f.name == name), None)
    if fleet is None:
        raise InvalidInputError(f"estate {catalog.estate} has no fleet {name!r}")
    if fleet.patching is None:
        raise InvalidInputError(f"fleet {name!r} has no patching policy: nothing to do")
    return fleet, fleet.patching


def host_actions(fleet: Fleet, policy: PatchingPolicy) -> dict[str, AptHost]:
    from cloudops.patching.apt_host import AptHost, ssh_runner

    return {
        h.name: AptHost(
            h.name, ssh_runner(h.ssh_conn_id, used_by=f"host {h.name!r}"), privilege=policy.privilege
        )
        for h in fleet.hosts
    }


def scan_fleet(
    fleet: Fleet, policy: PatchingPolicy, names: Sequence[str] | None = None
) -> tuple[list[HostScan], dict[str, str]]:
    """Scan the hosts in parallel; return the scans and, by host, why a host could not be scanned."""
    from cloudops.patching.apt_host import HostActionError

    hosts = host_actions(fleet, policy)
    chosen = [hosts[n] for n in (names or list(hosts))]

    def scan(host: AptHost) -> HostScan | str:
        with host:  # the scan's commands share one SSH session, closed when the host is scanned
            try:
                return host.scan()
            except HostActionError as error:
                return str(error)

    with ThreadPoolExecutor(max_workers=min(MAX_SCAN_THREADS, max(1, len(chosen)))) as pool:
        results = list(pool.map(scan, chosen))
    scans = [r for r in results if not isinstance(r, str)]
    failed = {h.name: r for h, r in zip(chosen, results, strict=True) if isinstance(r, str)}
    return scans, failed


def read_advisories(host: AptHost) -> list[Any]:
    """The repository's advisories as one host sees them (none when the repository publishes none)."""
    from cloudops.patching.advisories import parse_advisories

    with host:
        result = host.run("read advisories", f"cat {ADVISORIES_PATH}", 30)
    if result.exit_status != 0:
        log.info(
            "no advisories file at %s on %s: updates are approved by classification only",
            ADVISORIES_PATH,
            host.name,
        )
        return []
    return list(parse_advisories(result.stdout, f"{host.name}:{ADVISORIES_PATH}"))


def plan_wave(
    target: FleetTarget,
    catalog: Catalog,
    *,
    now: datetime,
    resume: dict[str, Any] | None = None,
    reject: Sequence[str] = (),
    limit_hosts: Sequence[str] = (),
) -> WavePlan:
    """Scan and plan (or read the halted run's snapshot back, for a resume); change nothing.

    :param resume: the halted run's ``patch.planned`` and ``patch.wave`` data (``planned``, ``wave``).
    :raises InvalidInputError: outside the window, an unreachable host under ``refuse``, a bad resume.
    """
    from cloudops.patching import snapshot as snapshots
    from cloudops.patching.wave_run import resumable_done_hosts
    from cloudops.patching.waves import plan_batches
    from cloudops.patching.window import check_window

    fleet, policy = fleet_of(catalog, target.fleet)
    window = check_window(policy.window, catalog.timezone, now)
    if not window.open:
        raise InvalidInputError(f"fleet {fleet.name}: {window.reason}; nothing was changed")
    names = [h.name for h in fleet.hosts]
    unknown = sorted(set(limit_hosts) - set(names))
    if unknown:
        raise InvalidInputError(f"hosts: fleet {fleet.name} has no host {', '.join(unknown)}")
    if resume is not None:
        planned = resume["planned"]
        earlier = snapshots.snapshot_from_json(
            planned["snapshot"], fleet=fleet.name, hosts=names, expected_id=planned["snapshot_id"]
        )
        rejected = set(reject) | set(policy.baseline.rejected)
        pins = {h: tuple(p for p in ps if p.package not in rejected) for h, ps in earlier.pins.items()}
        snap = snapshots.Snapshot(
            earlier.fleet, earlier.planned_on, pins, earlier.left_out, earlier.excluded_hosts
        )
        done = tuple(sorted(resumable_done_hosts(resume.get("wave") or {}, rejected)))
        batches = tuple(tuple(b) for b in planned["batches"])
        log.info(
            "resuming run %s with its snapshot %s%s; done and skipped: %s",
            resume["run_id"],
            earlier.snapshot_id,
            f" minus rejected {', '.join(sorted(rejected & set(earlier.versions)))}" if rejected else "",
            ", ".join(done) or "none",
        )
        return WavePlan(
            snap,
            batches,
            int(planned.get("canary_batches", 1)),
            {},
            done,
            resume["run_id"],
            window.reason,
            window.cutoff_at,
        )
    chosen = [n for n in names if not limit_hosts or n in limit_hosts]
    scans, unreachable = scan_fleet(fleet, policy, chosen)
    if unreachable and policy.unreachable == "refuse":
        raise InvalidInputError(
            f"fleet {fleet.name}: the policy refuses a wave with unreachable hosts: "
            + "; ".join(unreachable.values())
        )
    for cause in unreachable.values():
        log.warning("left out of the wave, unreachable: %s", cause)
    advisories = read_advisories(host_actions(fleet, policy)[scans[0].host]) if scans else []
    snap = snapshots.plan_snapshot(
        fleet.name, scans, advisories, policy.baseline, now.date(), unreachable=sorted(unreachable)
    )
    leave = [*policy.baseline.excluded_hosts, *unreachable, *(n for n in names if n not in chosen)]
    batches = tuple(b.hosts for b in plan_batches(fleet, policy.waves, leave))
    canaries = 1 if batches and plan_batches(fleet, policy.waves, leave)[0].canary else 0
    return WavePlan(snap, batches, canaries, unreachable, (), None, window.reason, window.cutoff_at)


def planned_fact(target: FleetTarget, plan: WavePlan, *, dry_run: bool) -> dict[str, Any]:
    from cloudops.patching.snapshot import snapshot_to_json

    return {
        "estate": target.estate,
        "fleet": target.fleet,
        "snapshot_id": plan.snapshot.snapshot_id,
        "snapshot": snapshot_to_json(plan.snapshot),
        "batches": [list(b) for b in plan.batches],
        "canary_batches": plan.canary_batches,
        "unreachable": plan.unreachable,
        "done_hosts": list(plan.done_hosts),
        "resumed_from": plan.resumed_from,
        "window": plan.window,
        "cutoff_at": plan.cutoff_at.isoformat() if plan.cutoff_at else None,
        "dry_run": dry_run,
    }


def settings_for(policy: PatchingPolicy, plan: WavePlan) -> WaveSettings:
    from cloudops.patching.apt_host import HealthCheck, HealthGate, Hook, RebootBounds
    from cloudops.patching.wave_run import WaveSettings

    def seconds(value: timedelta) -> int:
        return max(1, int(value.total_seconds()))

    return WaveSettings(
        privilege=policy.privilege,
        reboot=policy.reboot.when,
        reboot_bounds=RebootBounds(
            timeout_seconds=policy.reboot.timeout.total_seconds(),
            stability_seconds=policy.reboot.stable_for.total_seconds(),
        ),
        health=HealthGate(
            tuple(
                HealthCheck(c.command, c.expect_exit, c.expect_output, c.expect_regex, seconds(c.timeout))
                for c in policy.health.commands
            ),
            policy.health.soak.total_seconds(),
        ),
        pre_hook=tuple(Hook(h.command, seconds(h.timeout)) for h in policy.pre_hook),
        post_hook=tuple(Hook(h.command, seconds(h.timeout)) for h in policy.post_hook),
        canary_batches=plan.canary_batches,
        cutoff=plan.cutoff_at,
        cutoff_behaviour=policy.window.cutoff_behaviour if policy.window else "finish_batch",
    )


def execute_wave(
    target: FleetTarget,
    catalog: Catalog,
    plan: WavePlan,
    *,
    record: Any = None,
    try_number: int = 1,
    retry: Retry | None = None,
) -> WaveResult:
    """Run the planned wave (library entry point: the runbook, the CLI and the benchmark call it).

    :param record: ``record(kind, data)`` for evidence (None: record nothing). Each batch is recorded
        as started (``patch.batch_started``) before its hosts start, and as finished
        (``patch.batch_finished``) after their ``patch.host`` records.
    :param try_number: the task's try (recorded with each batch).
    :param retry: what :func:`prepare_retry` found of earlier tries of this run (a retry only).
    """
    from cloudops.evidence.runs import PATCH_BATCH_FINISHED, PATCH_BATCH_STARTED, PATCH_HOST
    from cloudops.patching.wave_run import FAILED, WaveHost, run_wave
    from cloudops.patching.waves import Batch, decide_after_batch

    fleet, policy = fleet_of(catalog, target.fleet)
    conn = {h.name: h.ssh_conn_id for h in fleet.hosts}
    batches = [[WaveHost(n, conn[n]) for n in b] for b in plan.batches]
    total = sum(len(b) for b in batches)
    settings = settings_for(policy, plan)

    def judge(index: int, outcomes: Sequence[Any], failures: int) -> tuple[str, str]:
        batch = Batch(index, plan.batches[index], canary=index < plan.canary_batches)
        failed = [o.host for o in outcomes if o.status == FAILED]
        decision = decide_after_batch(policy.waves, batch, failed, failures, total, len(batches) - index - 1)
        halted = not decision.go and decision.reason.startswith("halt")
        details = "; ".join(o.summary() for o in outcomes if o.status == FAILED)
        return ("halt" if halted else "go"), decision.reason + (f": {details}" if details else "")

    ids = {"estate": target.estate, "fleet": target.fleet, "snapshot_id": plan.snapshot.snapshot_id}

    def before_batch(index: int, hosts: Sequence[WaveHost]) -> None:
        if record is None:
            return
        pins = {h.name: [p.apt_spec for p in plan.snapshot.pins.get(h.name, ())] for h in hosts}
        record(
            PATCH_BATCH_STARTED,
            ids | {"batch": index, "hosts": [h.name for h in hosts], "pins": pins, "try_number": try_number},
        )

    def on_batch(batch: Any, outcomes: Sequence[Any]) -> None:
        if record is None:
            return
        for outcome in outcomes:
            record(PATCH_HOST, ids | asdict(outcome))
        record(
            PATCH_BATCH_FINISHED,
            ids
            | asdict(batch)
            | {
                "batch": batch.index,
                "try_number": try_number,
                "statuses": {o.host: o.status for o in outcomes},
            },
        )

    snapshot = {host: tuple(pins) for host, pins in plan.snapshot.pins.items()}
    return run_wave(
        batches,
        snapshot,
        settings,
        done_hosts=plan.done_hosts,
        on_batch=on_batch,
        judge=judge,
        before_batch=before_batch,
        earlier=retry.earlier if retry else None,
        host_notes=retry.host_notes if retry else None,
    )


RECOVERY_LOCK_WAIT_SECONDS = 60.0  # how long a retry waits for the apt a killed try left running


@dataclass(frozen=True)
class Retry:
    """What a retry of ``wave`` found of its earlier tries: batches they finished, and the interrupted one.

    :param earlier: batch index -> (its outcome, its hosts' outcomes) as recorded, never run again;
        when the recovery halts, the interrupted batch too, with each host as found.
    :param host_notes: host -> what the retry found on it (the interrupted batch, when it is finished).
    :param decision: the recovery's decision on the interrupted batch (None: none was interrupted).
    """

    earlier: dict[int, tuple[Any, list[Any]]]
    host_notes: dict[str, list[str]]
    decision: RecoveryDecision | None


def prepare_retry(
    target: FleetTarget,
    catalog: Catalog,
    plan: WavePlan,
    *,
    dag_id: str,
    run_id: str,
    try_number: int,
    record: Any = None,
    lock_wait_seconds: float = RECOVERY_LOCK_WAIT_SECONDS,
) -> Retry:
    """Read what earlier tries of this run recorded, and recover the batch one left unfinished.

    Batches they finished are taken as recorded. A batch started and never finished (the task was
    killed) has each of its hosts read again (:meth:`AptHost.found_after_kill`), and
    :func:`cloudops.patching.recovery.decide_recovery` decides: finish it from each host's state, or
    halt naming every host. The finding is logged with its reason and recorded
    (``patch.batch_recovered``); on a halt each host's state is recorded as its ``patch.host``.
    """
    from cloudops.evidence.recorder import ledger
    from cloudops.evidence.runs import (
        PATCH_BATCH_FINISHED,
        PATCH_BATCH_RECOVERED,
        PATCH_BATCH_STARTED,
        PATCH_HOST,
    )
    from cloudops.patching.recovery import HALT, decide_recovery, retry_state
    from cloudops.patching.wave_run import BatchOutcome, HostOutcome, found_outcome

    ids = {"estate": target.estate, "fleet": target.fleet, "snapshot_id": plan.snapshot.snapshot_id}
    started, finished, host_records = [], [], []
    for rec in ledger().records():
        data = rec.fields.get("data") or {}
        if rec.fields.get("dag_id") != dag_id or rec.fields.get("run_id") != run_id:
            continue
        if data.get("snapshot_id") != plan.snapshot.snapshot_id:
            continue
        if rec.kind == PATCH_BATCH_STARTED:
            started.append(data)
        elif rec.kind == PATCH_BATCH_FINISHED:
            finished.append(data)
        elif rec.kind == PATCH_HOST:
            host_records.append(data)
    state = retry_state(started, finished)
    fields = {f for f in HostOutcome.__dataclass_fields__}
    batch_fields = {f for f in BatchOutcome.__dataclass_fields__}
    earlier: dict[int, tuple[Any, list[Any]]] = {}
    for index, data in state.finished.items():
        latest = {h["host"]: h for h in host_records if h.get("batch") == index}
        outcomes = []
        for name, status in (data.get("statuses") or {}).items():
            if name in latest:
                outcomes.append(HostOutcome(**{k: v for k, v in latest[name].items() if k in fields}))
            else:
                outcomes.append(
                    HostOutcome(name, index, status=status, notes=["only its status was recorded"])
                )
        batch = BatchOutcome(**{k: v for k, v in data.items() if k in batch_fields})
        earlier[index] = (batch, outcomes)
        log.info(
            "try %s: batch %s was finished by try %s: %s",
            try_number,
            index,
            data.get("try_number"),
            batch.reason,
        )
    if state.interrupted is None:
        log.info("try %s: no earlier try of run %s left a batch unfinished", try_number, run_id)
        return Retry(earlier, {}, None)
    index = state.interrupted
    fleet, policy = fleet_of(catalog, target.fleet)
    names = list(plan.batches[index])
    hosts = host_actions(fleet, policy)

    def read(name: str) -> Any:
        with hosts[name] as host:
            return host.found_after_kill(wait_seconds=lock_wait_seconds)

    log.warning(
        "try %s: batch %s (%s) was started by try %s and never finished: reading its hosts again",
        try_number,
        index,
        ", ".join(names),
        ", ".join(map(str, state.started_by)),
    )
    with ThreadPoolExecutor(max_workers=min(MAX_SCAN_THREADS, max(1, len(names)))) as pool:
        found = list(pool.map(read, names))
    decision = decide_recovery(
        index, found, plan.snapshot.pins, started_by=state.started_by, try_number=try_number
    )
    (log.error if decision.action == HALT else log.warning)("%s: %s", decision.action, decision.reason)
    if record is not None:
        record(
            PATCH_BATCH_RECOVERED,
            ids
            | {"try_number": try_number}
            | decision.as_record()
            | {"found": {f.host: _found_record(f, plan.snapshot.pins.get(f.host, ())) for f in found}},
        )
    if decision.action != HALT:
        notes = {
            h.host: [
                f"try {try_number} found this host as try {', '.join(map(str, decision.started_by))} "
                f"left it when killed mid-batch: {h.state} ({h.detail}); patched from there"
            ]
            for h in decision.hosts
        }
        return Retry(earlier, notes, decision)
    outcomes = [
        found_outcome(
            plan.snapshot.pins.get(f.host, ()), f, h, batch=index, step="recovery after a killed try"
        )
        for f, h in zip(found, decision.hosts, strict=True)
    ]
    for outcome in outcomes:
        if record is not None:
            record(PATCH_HOST, ids | asdict(outcome))
    failed = [o.host for o in outcomes if o.status == "failed"]
    earlier[index] = (BatchOutcome(index, names, 0.0, failed, "halt", decision.reason), outcomes)
    return Retry(earlier, {}, decision)


def _found_record(found: Any, pins: Sequence[Any]) -> dict[str, Any]:
    """What the retry read on a host, bounded to the snapshot's packages (the ledger's record)."""
    return {
        "error": found.error,
        "versions": {p.package: found.versions.get(p.package, "") for p in pins},
        "unfinished": sorted(found.unfinished),
        "reboot_required": found.reboot_required,
        "reboot_packages": sorted(found.reboot_packages),
        "running_kernel": found.running_kernel,
        "installed_kernel": found.installed_kernel,
        "lock_holders": list(found.lock_holders),
        "waited_for": list(found.waited_for),
        "waited_seconds": found.waited_seconds,
    }


def compliance_counts(result: WaveResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in result.hosts.values():
        for state in outcome.compliance.values():
            counts[state] = counts.get(state, 0) + 1
    return counts


def compliance_table(result: WaveResult) -> str:
    """The per-host compliance table the log and `make demo` print."""
    rows = [("host", "status", "packages", "reboot", "kernel")]
    for name, o in sorted(result.hosts.items()):
        packages = ", ".join(f"{p} {s}" for p, s in sorted(o.compliance.items())) or "-"
        kernel = o.running_kernel + (
            "" if o.running_kernel == o.installed_kernel else f" (installed {o.installed_kernel})"
        )
        status = f"{o.status} before {o.step}" if o.status == "stopped" else o.status
        rows.append((name, status, packages, "yes" if o.rebooted else "no", kernel or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- Airflow ----------------------------------------------------------------------------------------


def _target(context: dict[str, Any]) -> FleetTarget:
    params = context["params"]
    return FleetTarget(params["_catalog_file"], params["_estate"], params["_fleet"])


def _form_list(value: Any) -> list[str]:
    if not value:
        return []
    items = value if isinstance(value, list) else str(value).replace(",", " ").split()
    return [str(item).strip() for item in items if str(item).strip()]


def _earlier_run(target: FleetTarget, run_id: str) -> dict[str, Any]:
    """The halted run's planned and wave facts from the ledger. :raises InvalidInputError: not found."""
    from cloudops.evidence.recorder import ledger
    from cloudops.evidence.runs import PATCH_PLANNED, PATCH_WAVE

    dag_id = f"{KIND}__{target.fleet}"
    found: dict[str, Any] = {"run_id": run_id}
    for rec in ledger().records():
        if rec.fields.get("dag_id") != dag_id or rec.fields.get("run_id") != run_id:
            continue
        if rec.kind == PATCH_PLANNED:
            found["planned"] = rec.fields.get("data") or {}
        elif rec.kind == PATCH_WAVE:
            found["wave"] = rec.fields.get("data") or {}
    if "planned" not in found:
        raise InvalidInputError(
            f"resume_run_id: the ledger has no planned wave of {dag_id} with run id {run_id!r}"
        )
    if (found.get("wave") or {}).get("succeeded"):
        raise InvalidInputError(f"resume_run_id: run {run_id} completed: nothing to resume")
    return found


def plan_task(**context: Any) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    from cloudops.evidence.recorder import record_fact
    from cloudops.evidence.runs import PATCH_PLANNED
    from cloudops.patching import wave_lock
    from cloudops.runbooks.common import load_estate

    target = _target(context)
    params = context["params"]
    try:
        # A refusal is final, never retried: a retry a minute later could start this wave unasked,
        # once the other one is over, or once the window opened.
        wave_lock.acquire(target.fleet, context["run_id"])
        catalog = load_estate(target.catalog_file, target.estate)
        resume_id = params.get("resume_run_id") or None
        resume = _earlier_run(target, resume_id) if resume_id else None
        plan = plan_wave(
            target,
            catalog,
            now=datetime.now(UTC),
            resume=resume,
            reject=_form_list(params.get("reject")),
            limit_hosts=_form_list(params.get("hosts")),
        )
    except (wave_lock.WaveAlreadyRunning, InvalidInputError) as refused:
        raise AirflowFailException(f"refused, nothing was changed: {refused}") from None
    log.info("%s", plan.snapshot.summary())
    for left in plan.snapshot.left_out:
        log.info("left out on %s: %s %s (%s)", left.host, left.package, left.version, left.reason)
    log.info("batches: %s", " | ".join(", ".join(b) for b in plan.batches) or "none")
    fact = planned_fact(target, plan, dry_run=bool(params.get("dry_run")))
    record_fact(PATCH_PLANNED, context, fact)
    return fact


def _approval_body(context: dict[str, Any]) -> str | None:
    from cloudops.runbooks.common import load_estate

    target = _target(context)
    _, policy = fleet_of(load_estate(target.catalog_file, target.estate), target.fleet)
    planned = context["ti"].xcom_pull(task_ids="plan") or {}
    if not policy.production or planned.get("dry_run"):
        return None
    versions = sorted(
        {f"{p['package']}={p['version']}" for pins in planned["snapshot"]["pins"].values() for p in pins}
    )
    return (
        f"Patch wave of production fleet `{target.fleet}` (estate {target.estate}), "
        f"run `{context['run_id']}`: "
        f"snapshot `{planned['snapshot_id']}` installs {', '.join(versions) or 'nothing'} in batches "
        f"{' | '.join(', '.join(b) for b in planned['batches'])}."
    )


def _wave_act(context: dict[str, Any], approval: Approval | None) -> dict[str, Any]:
    from cloudops.evidence.recorder import record_fact
    from cloudops.evidence.runs import PATCH_WAVE
    from cloudops.patching.snapshot import snapshot_from_json
    from cloudops.runbooks.common import load_estate

    target = _target(context)
    catalog = load_estate(target.catalog_file, target.estate)
    fleet, _ = fleet_of(catalog, target.fleet)
    planned = context["ti"].xcom_pull(task_ids="plan") or {}
    if planned.get("dry_run"):
        log.info("dry run: the snapshot is planned and recorded; nothing is installed")
        return {"dry_run": True, "snapshot_id": planned.get("snapshot_id")}
    snap = snapshot_from_json(
        planned.get("snapshot"),
        fleet=target.fleet,
        hosts=[h.name for h in fleet.hosts],
        expected_id=planned.get("snapshot_id"),
    )
    plan = WavePlan(
        snap,
        tuple(tuple(b) for b in planned["batches"]),
        int(planned.get("canary_batches", 1)),
        dict(planned.get("unreachable") or {}),
        tuple(planned.get("done_hosts") or ()),
        planned.get("resumed_from"),
        str(planned.get("window", "")),
        datetime.fromisoformat(planned["cutoff_at"]) if planned.get("cutoff_at") else None,
    )

    def record(kind: str, data: dict[str, Any]) -> None:
        record_fact(kind, context, data)

    try_number = int(getattr(context["ti"], "try_number", 1) or 1)
    retry = None
    if try_number > 1:
        retry = prepare_retry(
            target,
            catalog,
            plan,
            dag_id=f"{KIND}__{target.fleet}",
            run_id=context["run_id"],
            try_number=try_number,
            record=record,
        )
    result = execute_wave(target, catalog, plan, record=record, try_number=try_number, retry=retry)
    summary = {
        "estate": target.estate,
        "fleet": target.fleet,
        "snapshot_id": snap.snapshot_id,
        "compliance": compliance_counts(result),
        "unreachable": plan.unreachable,
        "approved_by": approval.approver if approval else None,
    } | {k: v for k, v in result.as_record().items() if k != "hosts"}
    summary["hosts"] = {
        name: {
            k: asdict(o)[k]
            for k in (
                "status",
                "step",
                "error",
                "changed",
                "compliance",
                "pre_hook_ran",
                "post_hook_ran",
                "rolled_back",
                "healthy_after_rollback",
            )
        }
        for name, o in result.hosts.items()
    }
    record_fact(PATCH_WAVE, context, summary)
    log.info("compliance of fleet %s:\n%s", target.fleet, compliance_table(result))
    for cause in plan.unreachable.values():
        log.warning("not patched, unreachable before the wave: %s", cause)
    if result.halted:
        left = "\n".join(f"  {line}" for line in result.left_behind())
        raise CloudOpsError(
            f"fleet {target.fleet}: the wave halted: {result.reason}\nhosts left behind:\n{left}"
        )
    return {
        "succeeded": True,
        "reason": result.reason,
        "seconds": result.seconds,
        "recovered": retry.decision.as_record() if retry and retry.decision else None,
    }


def release_task(**context: Any) -> None:
    from cloudops.patching import wave_lock

    target = _target(context)
    if wave_lock.release(target.fleet, context["run_id"]):
        log.info("released the wave lock of fleet %s", target.fleet)
    else:
        log.info("this run did not hold the wave lock of fleet %s: nothing to release", target.fleet)


def build_patch_wave_dags(loaded: LoadedCatalog) -> list[DAG]:
    """Build ``patch_wave__<fleet>`` for every fleet with a patching policy."""
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG, ExceptionRetryPolicy, Param, RetryAction

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
    for fleet in catalog.fleets:
        if fleet.patching is None:
            continue
        with DAG(
            dag_id=f"{KIND}__{fleet.name}",
            description=f"OS updates of fleet {fleet.name}, canary first, in batches with health gates",
            schedule=None,
            start_date=start_date(catalog.timezone),
            catchup=False,
            max_active_runs=1,
            dagrun_timeout=timedelta(hours=12),
            default_args=default_args(
                catalog.owner,
                alerts=failure_alerts(loaded, f"fleet {fleet.name}", NEXT_ACTIONS),
                retries=1,
                execution_timeout=timedelta(hours=8),
            ),
            is_paused_upon_creation=created_paused(),
            doc_md=runbook_doc(__doc__, f"Fleet `{fleet.name}`: {', '.join(h.name for h in fleet.hosts)}."),
            tags=tags(KIND, loaded, f"fleet:{fleet.name}"),
            params={
                "_catalog_file": Param(str(loaded.path), type="string", const=str(loaded.path)),
                "_estate": Param(catalog.estate, type="string", const=catalog.estate),
                "_fleet": Param(fleet.name, type="string", const=fleet.name),
                "dry_run": Param(False, type="boolean", title="Dry run", description="Scan and plan only."),
                "resume_run_id": Param(
                    None,
                    type=["null", "string"],
                    title="Resume run id",
                    description="Resume this halted run with its snapshot, skipping hosts that are done.",
                ),
                "reject": Param(
                    None,
                    type=["null", "string"],
                    title="Reject packages",
                    description="Packages (space or comma separated) left out of this wave, e.g. the bad "
                    "update.",
                ),
                "hosts": Param(
                    None,
                    type=["null", "string"],
                    title="Only these hosts",
                    description="Limit a new wave to these hosts (space or comma separated).",
                ),
            },
        ) as dag:
            plan = PythonOperator(task_id="plan", python_callable=plan_task)
            wave = SecondPersonApproval(
                task_id="wave",
                subject=f"Approve the patch wave of production fleet {fleet.name}",
                needed=_approval_body,
                act=_wave_act,
                response_timeout=timedelta(hours=4),
                # A lost task (worker killed, SIGKILL) is retried once: the retry recovers the batch it
                # left (cloudops.patching.recovery). An error is a decision, never retried: resume it
                # from the form.
                retries=1,
                retry_policy=ExceptionRetryPolicy(rules=[], default=RetryAction.FAIL),
            )
            release = PythonOperator(task_id="release", python_callable=release_task).as_teardown(setups=plan)
            plan >> wave >> release
        dags.append(dag)
    return dags


__all__ = [
    "KIND",
    "FleetTarget",
    "WavePlan",
    "build_patch_wave_dags",
    "compliance_table",
    "execute_wave",
    "find_fleet",
    "plan_wave",
    "scan_fleet",
    "scan_report",
    "status_report",
]


# -- Command line (cloudops patch scan | status) ----------------------------------------------------


def find_fleet(name: str) -> tuple[LoadedCatalog, Fleet, PatchingPolicy]:
    """The catalog file, fleet and policy called ``name`` across every catalog file."""
    from cloudops.catalog import load_catalogs
    from cloudops.catalog.errors import did_you_mean

    names = []
    for loaded in load_catalogs().catalogs:
        for fleet in loaded.catalog.fleets:
            if fleet.name == name:
                if fleet.patching is None:
                    raise InvalidInputError(f"fleet {name!r} has no patching policy in {loaded.path}")
                return loaded, fleet, fleet.patching
            names.append(fleet.name)
    hint = did_you_mean(name, names)
    raise InvalidInputError(f"no fleet {name!r} in the catalog" + (f" ({hint})" if hint else ""))


def scan_report(name: str) -> dict[str, Any]:
    """Pending updates per host with their classification, holds, reboot flag and kernels."""
    _, fleet, policy = find_fleet(name)
    scans, unreachable = scan_fleet(fleet, policy)
    hosts: dict[str, Any] = {}
    for scan in sorted(scans, key=lambda s: s.host):
        hosts[scan.host] = {
            "pending": [
                {
                    "package": u.package,
                    "installed": u.installed,
                    "candidate": u.candidate,
                    "suite": u.suite,
                    "classification": str(u.classification),
                    "held": u.package in scan.held,
                }
                for u in scan.pending
            ],
            "held": sorted(scan.held),
            "reboot_required": scan.reboot_required,
            "reboot_required_packages": sorted(scan.reboot_required_packages),
            "running_kernel": scan.running_kernel,
            "installed_kernel": scan.installed_kernel,
            "boot_id": scan.boot_id,
        }
    return {"fleet": name, "hosts": hosts, "unreachable": unreachable}


def latest_snapshot(fleet: Fleet, dag_id: str) -> Snapshot | None:
    """The snapshot of the fleet's latest planned wave in the ledger (None when none is recorded)."""
    from cloudops.evidence.recorder import ledger
    from cloudops.evidence.runs import PATCH_PLANNED
    from cloudops.patching.snapshot import SnapshotInvalidError, snapshot_from_json

    latest = None
    for rec in ledger().records():
        if rec.kind == PATCH_PLANNED and rec.fields.get("dag_id") == dag_id:
            latest = rec
    if latest is None:
        return None
    data = latest.fields.get("data") or {}
    try:
        return snapshot_from_json(
            data.get("snapshot"),
            fleet=fleet.name,
            hosts=[h.name for h in fleet.hosts],
            expected_id=data.get("snapshot_id"),
        )
    except SnapshotInvalidError as error:
        log.warning("the latest recorded snapshot of %s cannot be read back (%s): ignored", dag_id, error)
        return None


def status_report(name: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Compliance read from the hosts: against the latest recorded snapshot and what is approved now."""
    from cloudops.patching import snapshot as snapshots
    from cloudops.patching.compliance import assess_host, summarise_fleet

    _, fleet, policy = find_fleet(name)
    today = (now or datetime.now(UTC)).date()
    scans, unreachable = scan_fleet(fleet, policy)
    advisories = read_advisories(host_actions(fleet, policy)[scans[0].host]) if scans else []
    fresh = snapshots.plan_snapshot(
        fleet.name, scans, advisories, policy.baseline, today, unreachable=sorted(unreachable)
    )
    recorded = latest_snapshot(fleet, f"{KIND}__{fleet.name}")
    pins: dict[str, tuple[Any, ...]] = {}
    for host in fleet.hosts:
        merged = {p.package: p for p in (recorded.pins.get(host.name, ()) if recorded else ())}
        merged.update({p.package: p for p in fresh.pins.get(host.name, ())})
        pins[host.name] = tuple(merged[k] for k in sorted(merged))
    against = snapshots.Snapshot(fleet.name, today, pins, fresh.left_out, fresh.excluded_hosts)
    assessed = [assess_host(against, scan) for scan in sorted(scans, key=lambda s: s.host)]
    summary = summarise_fleet(assessed)
    return {
        "fleet": name,
        "snapshot_id": recorded.snapshot_id if recorded else None,
        "summary": summary.summary(),
        "counts": dict(summary.counts),
        "percent_compliant": summary.percent_compliant,
        "hosts": {
            h.host: {
                "compliant": h.compliant,
                "running_kernel": h.running_kernel,
                "installed_kernel": h.installed_kernel,
                "packages": [
                    {
                        "package": p.package,
                        "state": str(p.state),
                        "wanted": p.wanted,
                        "found": p.found,
                        "classification": str(p.classification),
                        "reason": p.reason,
                    }
                    for p in h.packages
                ],
            }
            for h in assessed
        },
        "unreachable": unreachable,
    }
