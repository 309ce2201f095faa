"""Benchmark: the evidence ledger: append 100,000 records, verify the chain, export a month of 10,000 runs.

Targets (issue "Evidence"): verify ≥ 50,000 records/s; export (a month of 10,000 runs) under 10 s.

How to run it (no sandbox needed; ~1 minute a round on 2 cores):

    .venv/bin/python tests/benchmarks/bench_evidence.py              # 3 rounds, medians
    .venv/bin/python tests/benchmarks/bench_evidence.py --rounds 1 --records 20000   # smoke test
    make bench-evidence

The data are runs as the listener and the runbooks record them: each run is ``run.started`` (conf
masked by ``mask_secrets``), about 4 ``step.try`` (a retry now and then), a ``backup.taken`` fact
(3 objects with sha256) for backups, a ``drill.recorded`` fact (6 checks) for drills, an ``approval``
and a ``restore.performed`` for restores, then ``run.finished``; 333 runs a day (200 backups, 40
drills, 80 health checks, 10 manual backups, 3 restore requests), records of 300-1,500 bytes. The
record bodies are built (and masked) before the clock starts: the figures are the ledger's own.

Each round, in a fresh directory:

1. append: the records of ~45 days of runs, 100,000 records, through ``Ledger.append_many`` in
   batches of 100 (one lock and one fsync per batch), then 2,000 records one ``append`` each (one
   lock and one fsync each, as the listener writes a step's try);
2. verify: ``verify_ledger`` over the 100,000 records (every hash and link);
3. export: ``export_pack`` of the first 30 days (10,000 runs), in this process (the whole chain is
   verified first, as export does), then ``verify_pack`` of the result, then the same export through
   the command line (``cloudops evidence export``, a fresh interpreter, imports included) under
   ``/usr/bin/time -v`` for its peak memory.

It prints figures (medians of the rounds, min-max) and asserts nothing; ``--json FILE`` writes them all.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"

from cloudops.evidence.export import export_pack, verify_pack  # noqa: E402
from cloudops.evidence.ledger import Ledger, verify_ledger  # noqa: E402
from cloudops.evidence.runs import runbook_of  # noqa: E402
from cloudops.secrets import mask_secrets  # noqa: E402

START = datetime(2026, 10, 1, tzinfo=UTC)
RUNS_PER_DAY = 333
Entry = tuple[str, str | None, datetime | None, dict[str, Any]]


def _sha(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def _steps(rng: random.Random, tasks: list[str], failed: bool) -> list[tuple[str, int, str, str | None]]:
    """(task_id, try_number, state, error) of a run's tries: a retry now and then, the last fails."""
    tries = []
    for number, task in enumerate(tasks):
        if rng.random() < 0.05:
            tries.append((task, 1, "failed", "connection reset by peer (server closed the connection)"))
            tries.append((task, 2, "success", None))
        elif failed and number == len(tasks) - 2:
            tries.append((task, 1, "failed", "pg_dump: error: query failed: server closed the connection"))
            tries.append((tasks[-1], 1, "skipped", None))
            break
        else:
            tries.append((task, 1, "success", None))
    return tries


def run_entries(rng: random.Random, dag_id: str, start: datetime, *, user: str | None = None) -> list[Entry]:
    """The records of one run, as the listener and the runbooks write them."""
    runbook, target = runbook_of(dag_id)
    run_id = f"{'manual' if user else 'scheduled'}__{start.isoformat()}"
    base = {"dag_id": dag_id, "run_id": run_id, "runbook": runbook, "target": target}
    conf: dict[str, Any] = {}
    if user:
        conf = {"reason": f"ticket OPS-{rng.randint(1000, 9999)}: before the schema migration"}
        if runbook == "restore_request":
            conf = {
                "database": target or "orders_pg",
                "backup_id": "latest",
                "target": f"restored_{rng.randint(1, 99)}",
                "password": "s3cr3t-" + _sha(rng)[:12],
                "confirm_overwrite": False,
            }
    started = {
        "run_type": "manual" if user else "scheduled",
        "triggered_by": "ui" if user else "timetable",
        "triggered_by_user": user,
        "conf": conf,
        "logical_date": start.isoformat(),
    }
    failed = rng.random() < (0.1 if runbook == "restore_drill" else 0.03)
    tasks = {
        "backup": ["probe", "dump", "upload", "retention"],
        "restore_drill": ["prepare", "restore", "validate", "teardown"],
        "restore_request": ["check", "approve", "restore", "verify"],
    }.get(runbook, ["probe", "judge", "report"])
    entries: list[Entry] = [
        ("run.started", f"{dag_id}|{run_id}|started", start, {**base, "data": mask_secrets(started)})
    ]
    at = start
    for task, try_number, state, error in _steps(rng, tasks, failed):
        seconds = rng.uniform(2, 240)
        finished = at + timedelta(seconds=seconds)
        data = {
            "state": state,
            "error": error,
            "started_at": at.isoformat(),
            "finished_at": finished.isoformat(),
            "duration_seconds": round(seconds, 3),
            "hostname": f"worker-{rng.randint(1, 4)}.cloudops.internal",
        }
        entries.append(
            (
                "step.try",
                f"{dag_id}|{run_id}|{task}|-1|{try_number}|{state}",
                finished,
                {
                    **base,
                    "task_id": task,
                    "map_index": -1,
                    "try_number": try_number,
                    "data": mask_secrets(data),
                },
            )
        )
        at = finished
    if runbook == "backup" and not failed:
        backup_id = f"{start:%Y%m%dT%H%M%SZ}-{_sha(rng)[:6]}"
        objects = [
            {"name": name, "size": rng.randint(10**6, 10**10), "sha256": _sha(rng)}
            for name in ("dump.zst", "globals.sql.zst", "manifest.json")
        ]
        fact = {
            "estate": "prod",
            "database": target,
            "engine": "postgres",
            "method": "logical",
            "backup_id": backup_id,
            "bucket": "cloudops-backups-prod",
            "manifest_key": f"cloudops/prod/{target}/{backup_id}/manifest.json",
            "size_bytes": sum(o["size"] for o in objects),
            "objects": objects,
            "locked_until": (start + timedelta(days=35)).isoformat(),
        }
        entries.append(("backup.taken", f"{dag_id}|{run_id}|backup", at, {**base, "data": fact}))
    if runbook == "restore_drill":
        rto = rng.uniform(60, 5000)
        checks = [
            {
                "name": name,
                "passed": not (failed and name == "row_count_orders"),
                "expected": 123456,
                "observed": 123456 if not failed else 123001,
            }
            for name in (
                "checksums",
                "row_count_orders",
                "row_count_customers",
                "max_updated_at",
                "no_null_ids",
                "foreign_keys",
            )
        ]
        fact = {
            "estate": "prod",
            "database": target,
            "backup_id": f"{start:%Y%m%d}T020000Z-{_sha(rng)[:6]}",
            "passed": not failed,
            "rto_seconds": round(rto, 1),
            "rpo_seconds": round(rng.uniform(600, 90000), 1),
            "rto_target_seconds": 3600,
            "rpo_target_seconds": 86400,
            "targets_met": rto <= 3600,
            "checksums_verified": True,
            "checks": checks,
            "record_uri": f"s3://cloudops-backups-prod/cloudops/prod/_drills/{target}/x.json",
        }
        entries.append(("drill.recorded", f"{dag_id}|{run_id}|drill", at, {**base, "data": fact}))
    if runbook == "restore_request":
        approval = {
            "subject": f"restore {target}",
            "decision": "Approve",
            "approver": "bob@example.com",
            "requested_by": user,
            "responded_at": at.isoformat(),
            "accepted": True,
        }
        entries.append(
            ("approval", f"{dag_id}|{run_id}|approval", at, {**base, "task_id": "approve", "data": approval})
        )
        restored = {
            "estate": "prod",
            "database": "orders_pg",
            "backup_id": "latest",
            "target_database": "restored",
            "overwrite": False,
            "requested_by": user,
            "approved_by": "bob@example.com",
        }
        entries.append(("restore.performed", f"{dag_id}|{run_id}|restore", at, {**base, "data": restored}))
    finished = {
        "state": "failed" if failed else "success",
        "started_at": start.isoformat(),
        "finished_at": at.isoformat(),
        "duration_seconds": (at - start).total_seconds(),
        "triggered_by_user": user,
    }
    entries.append(
        ("run.finished", f"{dag_id}|{run_id}|finished", at + timedelta(seconds=1), {**base, "data": finished})
    )
    return entries


def day_entries(rng: random.Random, day: date) -> list[Entry]:
    """A day of runs (333), in time order as the ledger receives them."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    plan = (
        [f"backup__db{n:03d}" for n in range(200)]
        + [f"restore_drill__db{n:03d}" for n in range(40)]
        + [f"health_check__estate{n:02d}" for n in range(80)]
    )
    runs = [(dag_id, midnight + timedelta(seconds=rng.randint(0, 20 * 3600)), None) for dag_id in plan]
    runs += [
        (f"backup__db{rng.randrange(200):03d}", midnight + timedelta(hours=rng.uniform(8, 18)), "carol")
        for _ in range(10)
    ]
    runs += [("restore_request", midnight + timedelta(hours=rng.uniform(8, 18)), "alice") for _ in range(3)]
    entries = [e for dag_id, start, user in runs for e in run_entries(rng, dag_id, start, user=user)]
    entries.sort(key=lambda e: e[2] or midnight)
    # A day's records stay in its segment: a run going on past midnight is recorded the next day in
    # reality; here its late records are moved to 23:59:59 to keep the generator simple.
    last = midnight + timedelta(hours=23, minutes=59, seconds=59)
    return [(kind, key, min(at, last) if at else at, fields) for kind, key, at, fields in entries]


def generate(records: int, seed: int = 7) -> tuple[list[Entry], int]:
    """At least ``records`` records of whole days from START; and how many days that is."""
    rng = random.Random(seed)
    entries: list[Entry] = []
    day = START.date()
    days = 0
    while len(entries) < records:
        entries.extend(day_entries(rng, day))
        day += timedelta(days=1)
        days += 1
    return entries[:records], days


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(memory / 1024**2, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
        "load": os.getloadavg(),
    }


def one_round(entries: list[Entry], single: list[Entry], workdir: Path) -> dict[str, float]:
    ledger_dir = workdir / "ledger"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    ledger = Ledger(ledger_dir)
    figures: dict[str, float] = {}

    started = time.perf_counter()
    for i in range(0, len(entries), 100):
        ledger.append_many(entries[i : i + 100])
    figures["append_batch_seconds"] = time.perf_counter() - started
    figures["append_batch_per_s"] = len(entries) / figures["append_batch_seconds"]

    started = time.perf_counter()
    for kind, key, at, fields in single:
        ledger.append(kind, key=key, at=at, **fields)
    figures["append_single_per_s"] = len(single) / (time.perf_counter() - started)

    started = time.perf_counter()
    verdict = verify_ledger(ledger)
    figures["verify_seconds"] = time.perf_counter() - started
    assert verdict.ok, verdict.problem
    figures["verify_records"] = verdict.records
    figures["verify_per_s"] = verdict.records / figures["verify_seconds"]

    since, until = START.date(), START.date() + timedelta(days=29)
    started = time.perf_counter()
    pack = export_pack(ledger, since, until, workdir / "pack")
    figures["export_seconds"] = time.perf_counter() - started
    figures["export_runs"] = pack.manifest["counts"]["runs"]
    figures["export_records"] = pack.anchors.records
    figures["export_report_mib"] = len(pack.report.encode()) / 2**20
    figures["export_records_mib"] = len(pack.records) / 2**20

    started = time.perf_counter()
    checked = verify_pack(workdir / "pack")
    figures["verify_pack_seconds"] = time.perf_counter() - started
    assert checked.ok, checked.problems

    command = [
        str(VENV_BIN / "cloudops"),
        "evidence",
        "export",
        "--from",
        since.isoformat(),
        "--to",
        until.isoformat(),
        "--out",
        str(workdir / "pack-cli"),
        "--ledger",
        str(ledger_dir),
    ]
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=True)
    figures["export_cli_seconds"] = time.perf_counter() - started
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    figures["export_cli_peak_mib"] = int(rss.group(1)) / 1024 if rss else float("nan")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--single", type=int, default=2_000, help="records appended one by one")
    parser.add_argument("--workdir", default=None, help="default: a temporary directory (removed)")
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    args = parser.parse_args()

    entries, days = generate(args.records + args.single)
    batch, single = entries[: args.records], entries[args.records :]
    # The generated data are long-lived: keep the collector from walking them in every measurement.
    gc.collect()
    gc.freeze()
    sizes = [len(json.dumps(fields)) for _, _, _, fields in batch]
    print(f"machine: {machine()}")
    print(
        f"data: {len(batch):,} records over {days} days (+{len(single):,} one by one), "
        f"body sizes median {statistics.median(sizes):.0f} B (min {min(sizes)}, max {max(sizes)})"
    )
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-evidence-"))
    rounds = []
    try:
        for number in range(1, args.rounds + 1):
            figures = one_round(batch, single, base / "round")
            rounds.append(figures)
            print(f"round {number}: " + ", ".join(f"{k} {v:,.2f}" for k, v in figures.items()), flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)

    def med(key: str) -> str:
        values = [r[key] for r in rounds]
        return f"{statistics.median(values):,.2f} ({min(values):,.2f}-{max(values):,.2f})"

    print(f"\nmedians of {len(rounds)} rounds (min-max):")
    print(f"  append, batches of 100 (fsync each): {med('append_batch_per_s')} records/s")
    print(f"  append, one by one (fsync each):     {med('append_single_per_s')} records/s")
    print(
        f"  verify {rounds[0]['verify_records']:,.0f} records: {med('verify_seconds')} s = "
        f"{med('verify_per_s')} records/s (target ≥ 50,000/s)"
    )
    print(
        f"  export {rounds[0]['export_runs']:,.0f} runs ({rounds[0]['export_records']:,.0f} records): "
        f"{med('export_seconds')} s in-process, {med('export_cli_seconds')} s by the CLI (target < 10 s); "
        f"peak {med('export_cli_peak_mib')} MiB; report {rounds[0]['export_report_mib']:.1f} MiB, "
        f"records {rounds[0]['export_records_mib']:.1f} MiB"
    )
    print(f"  verify_pack: {med('verify_pack_seconds')} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
