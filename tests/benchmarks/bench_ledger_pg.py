"""Benchmark: the PostgreSQL evidence ledger with two writers at once, side by side with the file ledger.

Targets (issue 13): two processes appending at once ≥ 1,000 records/s in batches and ≥ 200 records/s one
by one; verify ≥ 50,000 records/s, as for the file ledger.

How to run it (the sandbox's ``cloudops_evidence`` database; ~3 minutes for 3 rounds on 2 cores):

    export CLOUDOPS_SANDBOX_PORT_OFFSET=...; set -a; . .sandbox/airflow.env; set +a
    .venv/bin/python tests/benchmarks/bench_ledger_pg.py
    .venv/bin/python tests/benchmarks/bench_ledger_pg.py --rounds 1 --records 4000 --single 200   # smoke
    make bench-ledger-pg

Each round, for the PostgreSQL ledger (a fresh schema of its own) and then the file ledger (a fresh
folder, fsync on), in turn (A B A B ...):

1. batches: two writer processes (spawned, started together at a barrier) each append ``--records``
   records in ``append_many`` batches of 100: records/s = both writers' records over the time from the
   first start to the last end (``time.monotonic``, one clock for every process on Linux);
2. one by one: the same two writers each append ``--single`` records with one ``append`` each (one
   transaction, or one lock and fsync, per record, as the listener writes a step's try);
3. verify: the whole chain so written, in this process.

The records are the ones bench_evidence.py generates (runs as the listener and runbooks record them,
300-1,500 bytes), without their dates: both backends stamp the time of writing. The writers connect
(and import) before the barrier, so only appends are timed. It prints medians (min-max), asserts
nothing; ``--json FILE`` writes every measurement.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_evidence import generate, machine  # noqa: E402

CONN_ID = "cloudops_evidence_db"
WRITERS = 2
BATCH = 100


def _open(backend: str, where: str) -> Any:
    if backend == "postgres":
        from cloudops.evidence.pg_ledger import PgLedger

        conninfo, schema = where.split("\n", 1)
        return PgLedger(conninfo=conninfo, schema=schema)
    from cloudops.evidence.ledger import Ledger

    return Ledger(where)


def _writer(
    backend: str, where: str, number: int, records: int, single: int, barriers: Any, results: Any
) -> None:
    """One writer: batches after the first barrier, one by one after the second; report its times."""
    entries, _ = generate(records + single, seed=100 + number)
    bodies = [(kind, f"w{number}|{key}" if key else None, None, fields) for kind, key, _at, fields in entries]
    batch, one_by_one = bodies[:records], bodies[records:]
    ledger = _open(backend, where)
    if backend == "postgres":
        ledger.clock()  # connected before the clock starts
    times: dict[str, tuple[float, float, int]] = {}
    barriers[0].wait(timeout=120)
    started, written = time.monotonic(), 0
    for i in range(0, len(batch), BATCH):
        written += len(ledger.append_many(batch[i : i + BATCH]))
    times["batch"] = (started, time.monotonic(), written)
    barriers[1].wait(timeout=300)
    started, written = time.monotonic(), 0
    for kind, key, at, fields in one_by_one:
        written += ledger.append(kind, key=key, at=at, **fields) is not None
    times["single"] = (started, time.monotonic(), written)
    results.put((number, times))


def _two_writers(backend: str, where: str, records: int, single: int) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    barriers = (context.Barrier(WRITERS), context.Barrier(WRITERS))
    results = context.Queue()
    processes = [
        context.Process(target=_writer, args=(backend, where, n, records, single, barriers, results))
        for n in range(WRITERS)
    ]
    for process in processes:
        process.start()
    reports: list[dict[str, tuple[float, float, int]]] = []
    deadline = time.monotonic() + 900
    while len(reports) < WRITERS and time.monotonic() < deadline:
        try:
            reports.append(results.get(timeout=1)[1])
        except queue.Empty:
            if not any(p.is_alive() for p in processes):
                break
    for process in processes:
        process.join(timeout=30)
    if len(reports) < WRITERS:
        raise SystemExit(f"{backend}: a writer died (exit codes {[p.exitcode for p in processes]})")
    figures: dict[str, float] = {}
    for phase in ("batch", "single"):
        first = min(r[phase][0] for r in reports)
        last = max(r[phase][1] for r in reports)
        total = sum(r[phase][2] for r in reports)
        figures[f"{phase}_records"] = total
        figures[f"{phase}_per_s"] = total / (last - first)
    return figures


def one_round(backend: str, conninfo: str, workdir: Path, records: int, single: int) -> dict[str, float]:
    if backend == "postgres":
        schema = f"bench_{secrets.token_hex(4)}"
        where = f"{conninfo}\n{schema}"
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        where = str(workdir / "ledger")
    try:
        figures = _two_writers(backend, where, records, single)
        ledger = _open(backend, where)
        started = time.perf_counter()
        verdict = ledger.verify()
        figures["verify_seconds"] = time.perf_counter() - started
        assert verdict.ok, verdict.problem
        assert verdict.records == figures["batch_records"] + figures["single_records"]
        figures["verify_records"] = verdict.records
        figures["verify_per_s"] = verdict.records / figures["verify_seconds"]
        return figures
    finally:
        if backend == "postgres":
            import psycopg

            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=20_000, help="records per writer in batches")
    parser.add_argument("--single", type=int, default=1_000, help="records per writer one by one")
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    args = parser.parse_args()

    from cloudops.evidence.pg_ledger import conninfo_of

    conninfo = conninfo_of(CONN_ID)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ledger-pg-"))
    rounds: dict[str, list[dict[str, float]]] = {"postgres": [], "file": []}
    try:
        for number in range(args.rounds):
            for backend in ("postgres", "file"):
                figures = one_round(backend, conninfo, workdir / backend, args.records, args.single)
                rounds[backend].append(figures)
                print(
                    f"round {number + 1} {backend:8}: batches {figures['batch_per_s']:9,.0f}/s, one by one "
                    f"{figures['single_per_s']:7,.0f}/s, verify {figures['verify_per_s']:9,.0f}/s "
                    f"({figures['verify_records']:,.0f} records)",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def line(what: str, key: str) -> str:
        cells = []
        for backend in ("postgres", "file"):
            values = [r[key] for r in rounds[backend]]
            cells.append(f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})")
        ratio = statistics.median(r[key] for r in rounds["postgres"]) / statistics.median(
            r[key] for r in rounds["file"]
        )
        return f"| {what} | {cells[0]} | {cells[1]} | {ratio:.2f} |"

    print(f"\nmachine: {json.dumps(machine())}")
    print(
        f"{WRITERS} writers at once, {args.records:,} records each in batches of {BATCH}, "
        f"{args.single:,} each one by one"
    )
    print("| what (records/s, median of rounds, min-max) | PostgreSQL | file | PG / file |")
    print("|---|---|---|---|")
    print(line("append in batches of 100", "batch_per_s"))
    print(line("append one by one", "single_per_s"))
    print(line("verify the whole chain", "verify_per_s"))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
