"""Benchmark: the whole restore drill against a raw ``pg_restore -j 2`` (issue "Restore drills").

How to run it (as root, with the sandbox up for its moto S3 endpoint):

    cd /work/main
    .venv/bin/python tests/benchmarks/bench_restore_drill.py                 # 3 rounds, the large database
    .venv/bin/python tests/benchmarks/bench_restore_drill.py --size tiny --rounds 1   # smoke test

It prints figures and asserts nothing; ``--json FILE`` also writes every measurement. It reuses
``bench_backup.py``'s set-up (imported, not copied): its own PostgreSQL 15 under ``--workdir`` on a free
loopback port, the same data (``large``: ~1.25 GB, pgbench tables + md5/jsonb ``events`` + 1 MiB
``documents``), a temporary catalog (estate ``bench``, ``AIRFLOW_CONN_BENCH_PG``) with a repository on a
bucket of its own in the sandbox's moto (Object Lock, GOVERNANCE 1 day). Here the catalog entry also has
a drill policy (``scratch_conn_id: bench_pg``: scratch restores go into the benchmark's instance) and the
role ``bench`` may create databases. WAL archiving is off (no pgBackRest here).

Then: one ``cloudops backups run bench_<size>_logical`` (kept for the whole run); its dump is downloaded
once, decompressed, to a local file (the reference's input); one untimed warm-up of each side; then
``--rounds`` rounds of, in turn,

(A) the whole drill: ``prepare`` + ``restore`` (download, verify, ``pg_restore -j 2``) + ``validate`` +
    ``teardown`` of ``cloudops.runbooks.restore_drill``, in a fresh process (``python -c`` driver under
    ``/usr/bin/time -v``) that reports the time of its imports and of each step. The expectation suite
    is a tiny one written by this script (``CLOUDOPS_EXPECTATIONS_DIR`` = a temporary folder holding
    ``bench_<size>_logical.json``: 5 expectations on ``events`` and ``pgbench_accounts``); its time,
    Great Expectations' import included, is measured apart (the driver wraps
    ``run_expectation_suite``) so that A can be given with and without it;
(B) ``createdb -T template0`` + ``pg_restore -j 2 --no-owner -d <new db> <local dump>`` + ``dropdb``.

At the end, or on Ctrl-C or an error: the bucket (every version), the server and the temporary directory
are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backup import (  # a sibling script, not a package
    PG_BIN,
    SIZES,
    VENV_BIN,
    Bench,
    Run,
    load_sandbox_env,
    med,
    moto_pid,
    rss_mib,
    run_checked,
)

# The drill, in a fresh process. argv[1]: a JSON object (catalog, entry, run_id, out); it writes its
# timings as JSON to ``out``.
DRIVER = r"""
import json, resource, sys, time
t0 = time.perf_counter()
args = json.loads(sys.argv[1])
marks = {}
def lap(name, since):
    now = time.perf_counter(); marks[name] = now - since; return now
# Imports: everything the steps would otherwise import lazily on first use.
import cloudops.runbooks.restore_drill as drill
import cloudops.restore.fetch as fetch, cloudops.restore.validation as validation
import cloudops.engines.postgres, cloudops.engines.scratch, cloudops.runbooks.backup, cloudops.repository.s3
import airflow.sdk, boto3, zstandard
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
t = lap("imports", t0)
original_fetch, original_suite = fetch.fetch_backup, validation.run_expectation_suite
def timed_fetch(*a, **k):
    s = time.perf_counter()
    result = original_fetch(*a, **k)
    marks["download_verify"] = time.perf_counter() - s
    return result
def timed_suite(*a, **k):
    marks["rss_before_suite_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = time.perf_counter()
    import great_expectations
    marks["gx_import"] = time.perf_counter() - s
    result = original_suite(*a, **k)
    marks["suite"] = time.perf_counter() - s
    marks["suite_checks"] = [[c.name, c.passed] for c in result]
    return result
fetch.fetch_backup, validation.run_expectation_suite = timed_fetch, timed_suite
where = (args["catalog"], "bench", args["entry"])
prepared = drill.prepare(*where, run_id=args["run_id"], backup_id="latest")
t = lap("prepare", t)
try:
    restored = drill.restore(
        *where, backup_id=prepared["backup_id"], scratch=prepared["scratch"], run_id=args["run_id"]
    )
    t = lap("restore", t)
    validated = drill.validate(*where, backup_id=prepared["backup_id"], scratch=prepared["scratch"])
    t = lap("validate", t)
finally:
    drill.teardown(*where, scratch=prepared["scratch"])
    t = lap("teardown", t)
failed = [c["name"] for c in validated["checks"] if not c.get("passed", True)]
marks.update(
    restore_seconds=restored["restore_seconds"], validation_seconds=validated["validation_seconds"],
    checks=len(validated["checks"]), failed_checks=failed,
    rss_self_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    rss_children_mib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    inside=time.perf_counter() - t0,
)
open(args["out"], "w").write(json.dumps(marks))
"""

# A tiny suite: the kinds of check a real one holds (keys not null and unique, values in range, rows).
SUITE = {
    "description": "bench_restore_drill.py: a tiny suite on the benchmark's data.",
    "tables": {
        "public.events": [
            {"expect": "column_values_to_not_be_null", "column": "id"},
            {"expect": "column_values_to_be_unique", "column": "id"},
            {"expect": "column_values_to_be_between", "column": "score", "min_value": 0, "max_value": 1},
        ],
        "public.pgbench_accounts": [
            {"expect": "table_row_count_to_be_between", "min_value": 1},
            {"expect": "column_values_to_not_be_null", "column": "aid"},
        ],
    },
}

A, B = "A drill (prepare+restore+validate+teardown)", "B createdb + pg_restore -j 2 + dropdb"


class DrillBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.entry = f"bench_{args.size}_logical"
        self.database = args.size
        self.tmp = self.dir / "tmp"  # the drill's own download folder (TMPDIR) and the reference's dump
        self.tmp.mkdir()
        expectations = self.dir / "expectations"
        expectations.mkdir()
        (expectations / f"{self.entry}.json").write_text(json.dumps(SUITE, indent=2))
        self.env_ours["CLOUDOPS_EXPECTATIONS_DIR"] = str(expectations)
        self.env_ours["TMPDIR"] = str(self.tmp)
        self.results: dict[str, list[Run]] = {A: [], B: []}  # type: ignore[assignment]
        self.dump: Path | None = None
        self.backup_run: Run | None = None
        self.download_seconds = 0.0

    def start_server(self) -> None:
        super().start_server()
        self.sql("ALTER ROLE bench CREATEDB")  # the drill creates and drops its scratch databases

    def write_catalog(self, sizes: list[str]) -> None:
        """bench_backup's catalog, plus a drill policy on every entry (scratch restores on bench_pg, the
        benchmark's throw-away instance: its entries set scratch_allowed)."""
        super().write_catalog(sizes)
        text = self.catalog.read_text()
        policy = "      retention:\n        keep_last: 1\n"
        drill = "    drill:\n      schedule: on_backup\n      scratch_conn_id: bench_pg\n"
        text = text.replace(policy, policy + drill)
        self.catalog.write_text(
            text.replace("    conn_id: bench_pg\n", "    conn_id: bench_pg\n    scratch_allowed: true\n")
        )
        print(run_checked([str(VENV_BIN / "cloudops"), "validate", str(self.catalog)], env=self.env).strip())

    def backup_and_download(self) -> None:
        from cloudops.restore.fetch import fetch_backup

        self.backup_run = self.timed(
            [str(VENV_BIN / "cloudops"), "backups", "run", self.entry], env=self.env_ours
        )
        match = re.search(r"backup (\S+) of (\S+) complete", self.backup_run.extra["stdout"])
        if not match:
            raise RuntimeError(f"cannot find the backup id in: {self.backup_run.extra['stdout']!r}")
        self.backup_id = match.group(1)
        self.manifest = self.store.read_manifest(self.entry, self.backup_id)
        started = time.perf_counter()
        (self.dir / "reference").mkdir()
        self.dump = fetch_backup(self.store, self.manifest, self.dir / "reference")
        self.download_seconds = time.perf_counter() - started
        print(
            f"backup {self.backup_id}: {self.manifest.raw_bytes / 1e6:.0f} MB dump, "
            f"{self.manifest.compressed_bytes / 1e6:.0f} MB stored, in {self.backup_run.seconds:.1f} s; "
            f"downloaded and verified to {self.dump} in {self.download_seconds:.1f} s",
            flush=True,
        )

    def drill(self, label: str) -> Run:
        request = {
            "catalog": str(self.catalog),
            "entry": self.entry,
            "run_id": f"bench_{label}_{secrets.token_hex(4)}",
        }
        out = self.dir / "drill-timings.json"
        request["out"] = str(out)
        run = self.timed([str(VENV_BIN / "python"), "-c", DRIVER, json.dumps(request)], env=self.env_ours)
        run.extra = json.loads(out.read_text())
        return run

    def reference(self) -> Run:
        assert self.dump is not None
        target = f"bench_reference_{secrets.token_hex(3)}"
        where = f"-h 127.0.0.1 -p {self.port} -U bench"
        script = (
            "set -e; t0=$(date +%s%N); "
            f"createdb -T template0 {where} {target}; t1=$(date +%s%N); "
            f"pg_restore -j 2 --no-owner {where} -d {target} {self.dump}; t2=$(date +%s%N); "
            f"dropdb {where} {target}; t3=$(date +%s%N); "
            'echo "{\\"createdb\\": $(( (t1 - t0) / 1000000 )), '
            '\\"pg_restore\\": $(( (t2 - t1) / 1000000 )), '
            '\\"dropdb\\": $(( (t3 - t2) / 1000000 ))}"'
        )
        run = self.timed(
            ["sh", "-c", script],
            env={**self.env, "PGPASSWORD": self.password, "PATH": f"{PG_BIN}:{os.environ['PATH']}"},
        )
        run.extra = {k: v / 1000 for k, v in json.loads(run.extra["stdout"].strip().splitlines()[-1]).items()}
        return run

    def measure(self, rounds: int) -> None:  # type: ignore[override]
        plan = [(A, lambda: self.drill("a")), (B, self.reference)]
        started = time.perf_counter()
        for label, action in plan:  # warm-up, untimed: bytecode cache, page cache, Airflow's first start
            run = action()
            print(f"warm-up {label}: {run.seconds:.1f} s", flush=True)
        print(f"warm-up done in {time.perf_counter() - started:.0f} s", flush=True)
        for number in range(1, rounds + 1):
            for label, action in plan:
                run = action()
                self.results[label].append(run)
                steps = {k: round(v, 2) for k, v in run.extra.items() if isinstance(v, float)}
                print(
                    f"round {number}/{rounds} {label[:40]:40s} {run.seconds:7.2f} s  "
                    f"cpu {run.cpu_seconds:6.2f} s  "
                    f"rss {run.max_rss_mib:5.0f} MiB  server cpu {run.server_cpu_seconds:5.2f} s  moto cpu "
                    f"{run.moto_cpu_seconds:5.2f} s  {steps}",
                    flush=True,
                )
            print(f"round {number} done; load average {os.getloadavg()[0]:.2f}", flush=True)


def spread(values: list[float]) -> str:
    return f"{med(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def report(bench: DrillBench, args: argparse.Namespace, started: datetime, load: tuple[float, float]) -> None:
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    model = ""
    with contextlib.suppress(OSError, AttributeError):
        model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M).group(1)  # type: ignore[union-attr]
    facts = bench.facts[bench.database]
    assert bench.backup_run is not None
    print(
        f"\n## Restore drill benchmark, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"machine: {os.cpu_count()} CPUs ({model}), {memory_kb / 1024 / 1024:.0f} GiB RAM, "
        f"{platform.platform()}; "
        f"load average {load[0]:.2f} at start, {load[1]:.2f} at end\n"
        f"{run_checked(['pg_restore', '--version']).strip()}; Python {platform.python_version()}; "
        f"medians of {args.rounds} rounds (min-max), interleaved A B\n"
        f"command: .venv/bin/python tests/benchmarks/bench_restore_drill.py --rounds {args.rounds} "
        f"--size {args.size}\n"
        f"database {facts['database_bytes'] / 1e9:.2f} GB; dump {bench.manifest.raw_bytes / 1e6:.0f} MB raw, "
        f"{bench.manifest.compressed_bytes / 1e6:.0f} MB stored (zstd); "
        f"backup {bench.backup_run.seconds:.1f} s; "
        f"one download+verify in the benchmark's process {bench.download_seconds:.1f} s\n"
    )
    a, b = bench.results[A], bench.results[B]
    wall_a, wall_b = [r.seconds for r in a], [r.seconds for r in b]
    x = lambda key: [float(r.extra.get(key, 0.0)) for r in a]  # noqa: E731
    startup = [r.seconds - r.extra["inside"] + r.extra["imports"] for r in a]  # interpreter start + imports
    suite = x("suite")
    steps_only = [r.extra["inside"] - r.extra["imports"] for r in a]
    pg_restore_in_drill = [r.extra["restore"] - r.extra["download_verify"] for r in a]
    print("| run | wall s | CPU s | peak RSS MiB | server CPU s | moto CPU s |")
    print("|---|---|---|---|---|---|")
    for label, runs in ((A, a), (B, b)):
        print(
            f"| {label} | {spread([r.seconds for r in runs])} | {med([r.cpu_seconds for r in runs]):.2f} "
            f"| {max(r.max_rss_mib for r in runs):.0f} | {med([r.server_cpu_seconds for r in runs]):.2f} "
            f"| {med([r.moto_cpu_seconds for r in runs]):.2f} |"
        )
    print("\nInside A (fresh process each):\n\n| part | s |\n|---|---|")
    rows = [
        ("interpreter start + imports (wall - inside + imports)", startup),
        ("  of which imports", x("imports")),
        ("prepare", x("prepare")),
        ("restore", x("restore")),
        ("  download + verify (fetch_backup)", x("download_verify")),
        ("  createdb + pg_restore -j 2 (the rest of restore)", pg_restore_in_drill),
        ("validate", x("validate")),
        ("  expectation suite (Great Expectations, 5 expectations)", suite),
        ("    of which importing great_expectations", x("gx_import")),
        ("  manifest checks (validate - suite)", [v - s for v, s in zip(x("validate"), suite, strict=True)]),
        ("teardown", x("teardown")),
    ]
    for name, values in rows:
        print(f"| {name} | {spread(values)} |")
    print("\nInside B:\n\n| part | s |\n|---|---|")
    for key in ("createdb", "pg_restore", "dropdb"):
        print(f"| {key} | {spread([float(r.extra[key]) for r in b])} |")
    ratio = lambda num: [n / d for n, d in zip(num, wall_b, strict=True)]  # noqa: E731
    variants = [
        ("A/B, whole process", wall_a),
        ("A/B, without interpreter start + imports", [w - s for w, s in zip(wall_a, startup, strict=True)]),
        ("A/B, without the expectation suite", [w - s for w, s in zip(wall_a, suite, strict=True)]),
        ("A/B, without start-up, imports and suite", [s - q for s, q in zip(steps_only, suite, strict=True)]),
    ]
    print("\n| ratio (target ≤ 1.3) | medians | per round |\n|---|---|---|")
    for name, values in variants:
        per_round = ratio(values)
        print(f"| {name} | {med(values) / med(wall_b):.2f} | {min(per_round):.2f}-{max(per_round):.2f} |")
    print(
        f"\nchecks in A: {a[-1].extra['checks']}, failed {a[-1].extra['failed_checks']}; suite checks "
        f"{a[-1].extra.get('suite_checks')}\npeak RSS of the drill's python process: "
        f"{max(x('rss_self_mib')):.0f} MiB ({max(x('rss_before_suite_mib')):.0f} MiB before the suite); "
        f"largest child {max(x('rss_children_mib')):.0f} MiB (children forked from it count its pages); "
        f"sandbox moto RSS {bench.moto_rss_before:.0f} → {rss_mib(moto_pid()):.0f} MiB"
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="large", choices=list(SIZES))
    parser.add_argument("--workdir", default="/var/tmp")
    parser.add_argument("--json", help="also write every measurement to this file")
    args = parser.parse_args()
    load_sandbox_env()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the PostgreSQL instance runs as the postgres OS user (runuser)")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    started, load_start = datetime.now(UTC), os.getloadavg()[0]
    bench = DrillBench(args)
    print(f"workdir {bench.dir}, port {bench.port}, bucket {bench.bucket}", flush=True)
    try:
        bench.create_bucket()
        bench.start_server()
        bench.write_catalog([args.size])
        bench.load(args.size, SIZES[args.size])
        bench.set_archiving(False)  # no pgBackRest stanza here: restores must not pile up WAL to archive
        bench.backup_and_download()
        bench.measure(args.rounds)
        report(bench, args, started, (load_start, os.getloadavg()[0]))
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "started": started.isoformat(),
                        "facts": bench.facts,
                        "results": {k: [asdict(r) for r in v] for k, v in bench.results.items()},
                    },
                    indent=2,
                )
            )
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for step in (bench.delete_bucket, bench.stop_server, lambda: shutil.rmtree(bench.dir)):
            try:
                step()
            except Exception as error:
                print(f"clean-up step failed: {error}", file=sys.stderr)
        print(f"cleaned up: bucket {bench.bucket}, the server on port {bench.port}, {bench.dir}")


if __name__ == "__main__":
    main()
