"""Run every runbook DAG once against the sandbox with `airflow dags test` and tabulate the outcome.

This is `make demo`: each run is a separate `airflow dags test` process, exactly as an engineer
would run it, bounded by a timeout, its full output kept in a log file beside the summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudops.health import render_table

DAG_TEST_TIMEOUT_SECONDS = 900
# Runbooks that only run from a form with an engineer's input are not part of the demo.
TRIGGER_ONLY = frozenset({"restore_request"})


@dataclass(frozen=True)
class DemoResult:
    """The outcome of one runbook's demo run."""

    dag_id: str
    state: str
    seconds: float
    log_file: Path


def runbook_dag_ids(dags_folder: str) -> list[str]:
    """The DAG ids the dags folder builds, sorted; import errors are fatal to the demo."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=dags_folder)
    if bag.import_errors:
        errors = "\n".join(f"{file}:\n{error}" for file, error in bag.import_errors.items())
        raise SystemExit(f"DAG import errors, fix them first:\n{errors}")
    return sorted(dag_id for dag_id in bag.dag_ids if dag_id not in TRIGGER_ONLY)


def run_dag_test(dag_id: str, log_dir: Path, timeout: int = DAG_TEST_TIMEOUT_SECONDS) -> DemoResult:
    """Run ``airflow dags test <dag_id>`` and classify it: success, failed or timed out."""
    log_file = log_dir / f"{dag_id}.log"
    started = time.monotonic()
    with log_file.open("w") as output:
        try:
            completed = subprocess.run(
                ["airflow", "dags", "test", dag_id],
                # `airflow dags test` cannot run Deadline Alerts: see deadline_alerts_enabled().
                env={**os.environ, "CLOUDOPS_DEADLINE_ALERTS": "false"},
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
            state = "success" if completed.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            state = f"timed out after {timeout}s"
    return DemoResult(dag_id, state, time.monotonic() - started, log_file)


PATCH_WAVE_PREFIX = "patch_wave__"


def reset_fleet_hosts(dag_id: str) -> None:
    """Before a patch wave's demo run, bring its fleet's hosts back to first-boot state, so that every
    demo shows the same wave (a second run would otherwise find nothing left to install)."""
    from cloudops.sandbox import estate

    estate.reset_hosts(fleet=dag_id.removeprefix(PATCH_WAVE_PREFIX), say=lambda line: None)


def patch_compliance_tables(dag_ids: list[str]) -> str:
    """The compliance table of each patch wave the demo ran, from its latest patch.host facts."""
    from cloudops.evidence.ledger import Ledger, evidence_dir
    from cloudops.evidence.runs import PATCH_HOST, PATCH_WAVE

    waves = [d for d in dag_ids if d.startswith(PATCH_WAVE_PREFIX)]
    if not waves:
        return ""
    latest_run: dict[str, str] = {}
    hosts: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for record in Ledger(evidence_dir() / "ledger").records():
        dag_id, run_id = str(record.fields.get("dag_id")), str(record.fields.get("run_id"))
        if dag_id not in waves:
            continue
        if record.kind == PATCH_WAVE:
            latest_run[dag_id] = run_id
        elif record.kind == PATCH_HOST:
            data = record.fields.get("data") or {}
            hosts.setdefault((dag_id, run_id), {})[str(data.get("host"))] = data
    parts = []
    for dag_id in waves:
        if dag_id not in latest_run:
            parts.append(f"{dag_id}: no wave recorded")
            continue
        run_id = latest_run[dag_id]
        rows = [
            [
                host,
                str(data.get("status")),
                ", ".join(f"{p} {s}" for p, s in sorted((data.get("compliance") or {}).items())) or "-",
                "yes" if data.get("rebooted") else "no",
                str(data.get("running_kernel") or "-"),
            ]
            for host, data in sorted(hosts.get((dag_id, run_id), {}).items())
        ]
        parts.append(
            f"compliance after {dag_id} ({run_id}):\n"
            + render_table(["host", "status", "packages", "rebooted", "running kernel"], rows)
        )
    return "\n\n".join(parts)


FAILOVER_DRILL_PREFIX = "failover_drill__"


def unavailable_drills(dag_ids: list[str]) -> dict[str, str]:
    """The failover drills the demo leaves out, each with why: their cluster's manager has no driver yet."""
    from cloudops.failover.registry import manager_available
    from cloudops.runbooks.failover_drill import find_cluster

    left_out = {}
    for dag_id in dag_ids:
        if not dag_id.startswith(FAILOVER_DRILL_PREFIX):
            continue
        _, cluster = find_cluster(dag_id.removeprefix(FAILOVER_DRILL_PREFIX))
        available, reason = manager_available(cluster.manager)
        if not available:
            left_out[dag_id] = f"manager {cluster.manager} not available: {reason}"
    return left_out


def failover_figures(dag_ids: list[str]) -> str:
    """The figures of each failover drill the demo ran, from its latest failover.drill fact."""
    from cloudops.evidence.ledger import Ledger, evidence_dir
    from cloudops.evidence.runs import FAILOVER_DRILL
    from cloudops.runbooks.failover_drill import figures_table

    drills = [d for d in dag_ids if d.startswith(FAILOVER_DRILL_PREFIX)]
    if not drills:
        return ""
    latest: dict[str, dict[str, Any]] = {}
    for record in Ledger(evidence_dir() / "ledger").records():
        if record.kind == FAILOVER_DRILL and record.fields.get("dag_id") in drills:
            latest[str(record.fields.get("dag_id"))] = record.fields.get("data") or {}
    rows = [latest[d] for d in drills if d in latest]
    if not rows:
        return "failover drills: none recorded"
    return "failover drills (client-observed, switchover and fail-back):\n" + figures_table(rows)


def evidence_summary(log_dir: Path) -> str:
    """Verify the ledger the runs wrote and export today's evidence pack beside the demo logs."""
    import shutil
    from datetime import UTC, datetime

    from cloudops.evidence.export import export_pack
    from cloudops.evidence.ledger import Ledger, evidence_dir, verify_ledger

    ledger = Ledger(evidence_dir() / "ledger")
    verdict = verify_ledger(ledger)
    if not verdict.ok:
        return f"evidence ledger {ledger.directory}: BROKEN: {verdict.problem}"
    today = datetime.now(UTC).date()
    pack_dir = log_dir / "evidence-pack"
    shutil.rmtree(pack_dir, ignore_errors=True)
    pack = export_pack(ledger, today, today, pack_dir)
    return (
        f"evidence ledger {ledger.directory}: {verdict.records} records, hash chain intact\n"
        f"evidence pack for {today}: {pack_dir}/report.html ({len(pack.runs)} runs; "
        f"check it with `cloudops evidence verify --pack {pack_dir}`)"
    )


def main() -> int:
    """Run the demo; exit non-zero when any runbook failed."""
    dags_folder = os.environ.get("AIRFLOW__CORE__DAGS_FOLDER", "dags")
    log_dir = Path(os.environ.get("CLOUDOPS_DEMO_LOG_DIR", ".sandbox/demo"))
    log_dir.mkdir(parents=True, exist_ok=True)
    only = sys.argv[1:]
    dag_ids = only or runbook_dag_ids(dags_folder)
    left_out = unavailable_drills(dag_ids)
    for dag_id, reason in left_out.items():
        print(f"not run: {dag_id}: {reason}", flush=True)
    dag_ids = [d for d in dag_ids if d not in left_out]
    results = []
    for dag_id in dag_ids:
        print(f"running {dag_id} ...", flush=True)
        if dag_id.startswith(PATCH_WAVE_PREFIX):
            reset_fleet_hosts(dag_id)
        results.append(run_dag_test(dag_id, log_dir))
    print()
    print(
        render_table(
            ["runbook", "state", "duration", "log"],
            [[r.dag_id, r.state, f"{r.seconds:.1f}s", str(r.log_file)] for r in results],
        )
    )
    tables = patch_compliance_tables(dag_ids)
    if tables:
        print()
        print(tables)
    drills = failover_figures(dag_ids)
    if drills:
        print()
        print(drills)
    print()
    print(evidence_summary(log_dir))
    failed = [r for r in results if r.state != "success"]
    if failed:
        print(f"\n{len(failed)} of {len(results)} runbooks failed: read their logs above.")
        return 1
    print(f"\nall {len(results)} runbooks succeeded.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
