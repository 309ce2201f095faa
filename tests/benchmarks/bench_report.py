"""Benchmark: the monthly report (HTML + PDF) of a month of 1-minute samples for 50 targets (2.2 million
samples) and 10,000 runbook runs in the ledger.

Target (issue 12): under 30 s and 500 MB peak. How to run it (no sandbox needed): ``make bench-report``.

The data is written first (compacted day files, a ledger of 10,000 backup runs with their facts);
then a fresh process makes the report from them, as the runbook's ``build`` does (store compaction,
grids, ledger fold, model, HTML, PDF; cost from the seeded sandbox bill, no S3), and reports its
wall time, CPU time and peak RSS. It prints the figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONTH = "2026-10"
NOW = datetime(2026, 11, 2, tzinfo=UTC)


def catalog(targets: int) -> Any:
    from cloudops.catalog.models import Catalog

    document = yaml.safe_load((ROOT / "runbooks" / "sandbox.yaml").read_text())
    document["endpoints"] = [{"name": f"api_{n}", "url": f"http://127.0.0.1/{n}"} for n in range(targets)]
    slo = document["slos"][0]
    document["slos"] = [
        dict(
            slo,
            name=f"api_{group}",
            targets=[{"kind": "endpoint", "name": f"api_{n}"} for n in range(group, targets, 5)],
        )
        for group in range(5)
    ]
    return Catalog.model_validate(document)


def write_data(root: Path, targets: int, runs: int) -> None:
    import numpy as np

    from cloudops.evidence.ledger import Ledger
    from cloudops.probes.store import SampleStore
    from cloudops.reports.period import month_period

    found = catalog(targets)
    period = month_period(MONTH, found.timezone, now=NOW)
    keys = [target.key for slo in found.slos for target in slo.targets]
    store = SampleStore(root / "samples")
    rng = np.random.default_rng(7)
    day = (period.start - timedelta(minutes=1)).date()
    while datetime(day.year, day.month, day.day, tzinfo=UTC) < period.end + timedelta(minutes=1):
        begin = datetime(day.year, day.month, day.day, tzinfo=UTC)
        seconds = int(begin.timestamp()) + np.repeat(np.arange(1440) * 60 + 7, len(keys))
        store.append_columns(
            day,
            {
                "target": np.tile(np.array(keys), 1440),
                "at": seconds.astype("datetime64[s]"),
                "ok": rng.random(1440 * len(keys)) > 0.0005,
                "latency_ms": rng.integers(1, 50, 1440 * len(keys)).astype(np.int32),
                "detail": [None] * (1440 * len(keys)),
            },
        )
        store.compact(day)
        day += timedelta(days=1)
    ledger = Ledger(root / "evidence" / "ledger", fsync=False)
    entries = []
    step = (period.end - period.start) / runs
    for number in range(runs):
        at = period.start + step * number
        database = ("orders_pg", "inventory_mariadb")[number % 2]
        base = {
            "dag_id": f"backup__{database}",
            "run_id": f"r{number}",
            "runbook": "backup",
            "target": database,
        }
        entries.append(("run.started", None, at, {**base, "data": {"triggered_by": "timetable"}}))
        entries.append(
            (
                "step.try",
                None,
                at + timedelta(seconds=20),
                {**base, "task_id": "backup", "data": {"state": "success"}},
            )
        )
        taken = {
            "database": database,
            "finished_at": (at + timedelta(seconds=40)).isoformat(),
            "size_bytes": 1000,
        }
        entries.append(("backup.taken", None, at + timedelta(seconds=40), {**base, "data": taken}))
        entries.append(
            ("run.finished", None, at + timedelta(seconds=60), {**base, "data": {"state": "success"}})
        )
    ledger.append_many(entries)


def make(root: Path, targets: int) -> dict[str, Any]:
    from cloudops.evidence.ledger import Ledger
    from cloudops.reports.cost import cost_explorer_requests, cost_month_from_explorer
    from cloudops.runbooks.monthly_report import make_report
    from cloudops.sandbox.billing import explorer_answers, sandbox_bill

    found = catalog(targets)
    started = time.perf_counter()
    assert found.cost is not None
    answers = explorer_answers(found.cost, MONTH, sandbox_bill(MONTH), sandbox_bill("2026-09"))
    pages = {r.purpose: [a] for r, a in zip(cost_explorer_requests(found.cost, MONTH), answers, strict=True)}
    cost = cost_month_from_explorer(found.cost, MONTH, pages)
    rendered = make_report(
        found,
        MONTH,
        now=NOW,
        ledger=Ledger(root / "evidence" / "ledger", fsync=False),
        cost=cost,
        store_dir=root / "samples",
    )
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": round(seconds, 2),
        # CPU time of the whole process (imports included): steadier than wall time on shared cores.
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "html_bytes": len(rendered.html),
        "pdf_bytes": len(rendered.pdf),
        "runs_in_month": rendered.report.runs_in_month,
        "targets": sum(len(slo.targets) for slo in found.slos),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--make", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        print(json.dumps(make(Path(args.make), args.targets)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        write_data(root, args.targets, args.runs)
        print(f"data written in {time.perf_counter() - started:.1f} s", flush=True)
        output = subprocess.run(
            [sys.executable, __file__, "--make", str(root), "--targets", str(args.targets)],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
        figures = json.loads(output.strip().splitlines()[-1])
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
