"""Benchmark: 40 backups and their restore drills at once on the Celery deployment, one worker vs two.

Target (issue 13): with both workers, the wall time is at most 0.6x the one-worker wall time on this
2-core machine, or the bound that stops it is explained with figures.

How to run it (the sandbox up; ~30-40 minutes for 40 databases on 2 shared cores):

    export CLOUDOPS_SANDBOX_PORT_OFFSET=...; make bench-celery
    set -a; . .sandbox/airflow.env; set +a
    nice .venv/bin/python tests/benchmarks/bench_celery_scale.py --databases 40
    nice .venv/bin/python tests/benchmarks/bench_celery_scale.py --databases 3 --timeout 600   # smoke
    nice .venv/bin/python tests/benchmarks/bench_celery_scale.py --phases B   # one phase only

Set-up, all done and undone by the script:

- an estate of ``--databases`` PostgreSQL databases ``bench_db_00..`` on the sandbox's primary
  (``sandbox_pg_primary``), one table of ``--rows`` rows each, created here (dropped first if a crashed
  run left them) and dropped at the end;
- a catalog of its own in a temporary folder (estate ``celerybench``): each database has a logical
  backup policy to the sandbox's S3 repository (bucket ``cloudops-sandbox-backups``, a prefix of this
  run: backups stay there under the bucket's Object Lock, a few kB each) and a drill policy
  ``schedule: on_backup`` into the sandbox's scratch server (``sandbox_pg_scratch``), as the sandbox
  catalog wires ``orders_pg``: each successful backup updates the database's Asset, which triggers its
  drill (its ``take_backup`` task carries the Asset, so a drill starts while its backup still runs
  ``verify_backup`` and ``apply_retention``). Unpaused, each backup DAG runs its latest missed cron
  time at once (``scheduled__2026-01-01...``, Airflow 3.3 with ``catchup=False``): the script lets that
  first round (and its drills) end, both workers up, before it measures anything (the "warm-up"); the
  cron (``0 0 1 1 *``) is not due again while it runs, and the measured runs are selected by
  ``run_after`` (their run types are printed). No expectation suite exists for
  these databases: the drills' ``validate`` runs the manifest checks only (schema fingerprint, row
  counts), with a warning in the task log;
- the Celery deployment (``cloudops.deployment.local``, the launcher of `make up-celery`) as instance
  ``celery-e2e`` (the e2e tests'; do not run both at once on one sandbox) on a fresh metadata database,
  reading that catalog, with an evidence schema of its own (dropped at the end), every DAG created
  paused; the benchmark unpauses its 2 x N DAGs only.

Then two phases, A then B, on the same deployment:

A. one worker: worker-b is stopped (the launcher's own ``stop_tree``, warm shutdown) before the
   triggers, so worker-a alone (``WORKER_CONCURRENCY`` = 2 task slots) runs every task;
B. two workers: ``LocalDeployment.up`` starts worker-b again (and waits for it), 4 task slots.

In each phase the N backups are triggered at once through the REST API (4 threads; a trigger that gets
a 5xx is retried, at most 3 tries, and counted), then the script polls the runs (every 5 s, bounded by
``--timeout``) until every backup ended and every successful backup's drill ended.
Measured: the wall time from the first trigger to the last run's ``end_date``;
the scheduler delay of each task instance (``queued_when`` -> ``start_date``: the Celery hand-off, the
worker's pick-up and the task process's start) as median and p95; runs and task instances that
succeeded; which worker ran the tasks; the sum of task durations against wall time x cores; the
machine's CPU busy share (/proc/stat) and load average over the phase; the CPU seconds each service's
process tree used (task processes count under their worker). Then the ratio B/A.

It prints figures and asserts nothing; ``--json FILE`` writes every measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_evidence import machine  # noqa: E402

ESTATE = "celerybench"
PRIMARY_CONN = "sandbox_pg_primary"
SCRATCH_CONN = "sandbox_pg_scratch"
USER = "bench"
# Due once a year: beyond the run unpausing creates (the warm-up), no scheduled run during the benchmark.
BACKUP_CRON = "0 0 1 1 *"
PARSED_TIMEOUT = 300.0  # 2 x N DAGs serialized by the dag-processor
POLL = 5.0
# Under the api-server's database pool (2 + 4 overflow, cloudops.deployment.local): with 8 threads a
# trigger waited 30 s for a connection and failed (500) while the tasks' execution-API calls held them.
TRIGGER_THREADS = 4
TRIGGER_ATTEMPTS = 3
PAGE = 100  # the API's maximum page size ([api] maximum_page_limit)


def say(line: str) -> None:
    print(line, flush=True)


def load_sandbox_env() -> None:
    if f"AIRFLOW_CONN_{PRIMARY_CONN.upper()}" in os.environ:
        return
    from cloudops.sandbox.layout import read_env_file

    env_file = Path(os.environ.get("CLOUDOPS_SANDBOX_DIR", ROOT / ".sandbox")) / "airflow.env"
    if not env_file.exists():
        raise SystemExit(f"{env_file} does not exist: start the sandbox (`make sandbox`) first")
    os.environ.update(read_env_file(env_file))


# -- the estate ----------------------------------------------------------------------------------


def names(count: int) -> list[str]:
    return [f"bench_db_{i:02d}" for i in range(count)]


def _primary() -> Any:
    import psycopg

    conn = json.loads(os.environ[f"AIRFLOW_CONN_{PRIMARY_CONN.upper()}"])
    return psycopg.connect(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        password=conn["password"],
        dbname=conn.get("schema") or "postgres",
        autocommit=True,
    )


def create_databases(databases: list[str], rows: int) -> None:
    """Create each database with one small table (dropping one a crashed run left)."""
    import psycopg
    from psycopg import sql

    with _primary() as admin:
        for name in databases:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn = json.loads(os.environ[f"AIRFLOW_CONN_{PRIMARY_CONN.upper()}"])
    for name in databases:
        with psycopg.connect(
            host=conn["host"], port=conn["port"], user=conn["login"], password=conn["password"], dbname=name
        ) as db:
            db.execute(
                "CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now())"
            )
            db.execute(
                "INSERT INTO items (id, name) SELECT i, md5(i::text) FROM generate_series(1, %s) AS i",
                [rows],
            )


def drop_databases(databases: list[str]) -> None:
    from psycopg import sql

    with _primary() as admin:
        for name in databases:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def write_catalog(folder: Path, databases: list[str], prefix: str) -> Path:
    """The estate's catalog: the sandbox's cloud and repository (on a prefix of this run), notifications,
    and each database with a backup and an on_backup drill into the scratch server."""
    import yaml

    sandbox = yaml.safe_load((ROOT / "runbooks" / "sandbox.yaml").read_text())
    repository = dict(sandbox["repositories"][0], name="bench_backups", prefix=prefix)
    document = {
        "estate": ESTATE,
        "description": "Generated by tests/benchmarks/bench_celery_scale.py; deleted after the run.",
        "owner": "platform-oncall",
        "timezone": "UTC",
        "clouds": sandbox["clouds"],
        "repositories": [repository],
        "databases": [
            {
                "name": name,
                "engine": "postgres",
                "conn_id": PRIMARY_CONN,
                "role": "primary",
                "database": name,
                "rpo": "24h",
                "rto": "1h",
                "backup": {
                    "repository": repository["name"],
                    "schedule": BACKUP_CRON,
                    "retention": {"keep_last": 3},
                },
                "drill": {"schedule": "on_backup", "scratch_conn_id": SCRATCH_CONN},
            }
            for name in databases
        ],
        "notifications": [n for n in sandbox["notifications"] if n["kind"] == "smtp"],
    }
    folder.mkdir(parents=True)
    (folder / f"{ESTATE}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return folder


# -- the REST API ---------------------------------------------------------------------------------


@dataclass
class Api:
    url: str
    password: str
    client: Any = None
    token: str = ""

    def __post_init__(self) -> None:
        import logging

        import httpx

        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def login(self) -> None:
        response = self.client.post("/auth/token", json={"username": USER, "password": self.password})
        response.raise_for_status()
        self.token = response.json()["access_token"]

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        if not self.token:
            self.login()
        response = self.client.request(
            method, f"/api/v2{path}", headers={"Authorization": f"Bearer {self.token}"}, **kwargs
        )
        if not response.is_success:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def listed(self, path: str, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Every item of a batch list endpoint, page by page."""
        found: list[dict[str, Any]] = []
        while True:
            page = self.call("POST", path, json={**body, "page_offset": len(found), "page_limit": PAGE})
            found += page[key]
            if not page[key] or len(found) >= page["total_entries"]:
                return found


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# -- what the machine does ------------------------------------------------------------------------


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def service_cpu(launcher: Any) -> dict[str, float]:
    """CPU seconds of each service's process tree: live processes, plus the children they reaped (task
    processes count under the worker whose pool ran them)."""
    import psutil

    from cloudops.deployment.topology import SERVICES

    used: dict[str, float] = {}
    for service in SERVICES:
        _, pid = launcher.daemon(service).state()
        total = 0.0
        if pid is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        t = proc.cpu_times()
                        total += t.user + t.system + t.children_user + t.children_system
        used[service.name] = total
    return used


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


@dataclass
class Phase:
    name: str
    workers: int
    triggered: int = 0
    wall: float = float("nan")
    timed_out: bool = False
    runs: dict[str, Counter[str]] = field(default_factory=dict)  # kind -> state counts
    run_types: Counter[str] = field(default_factory=Counter)
    tis: Counter[str] = field(default_factory=Counter)
    hostnames: Counter[str] = field(default_factory=Counter)
    delay_median: float = float("nan")
    delay_p95: float = float("nan")
    delay_max: float = float("nan")
    task_seconds: float = 0.0
    busy_share: float = float("nan")
    load: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    trigger_seconds: float = float("nan")
    trigger_errors: list[str] = field(default_factory=list)


def wait_runs(
    api: Api, what: str, body: dict[str, Any], backups: int, deadline: float, load: list[float]
) -> tuple[list[dict[str, Any]], bool]:
    """Poll the runs ``body`` selects until ``backups`` backup runs ended, each successful backup's drill
    ended and nothing else is queued or running; return them and whether ``deadline`` passed first."""
    started, last_report = time.monotonic(), time.monotonic()
    while True:
        load.append(os.getloadavg()[0])
        runs = api.listed("/dags/~/dagRuns/list", "dag_runs", body)
        ended = [r for r in runs if r["state"] in ("success", "failed")]
        backups_ended = [r for r in ended if r["dag_id"].startswith("backup__")]
        backups_ok = sum(r["state"] == "success" for r in backups_ended)
        drills_ended = [r for r in ended if r["dag_id"].startswith("restore_drill__")]
        backup_runs = sum(r["dag_id"].startswith("backup__") for r in runs)
        if len(backups_ended) >= backups and len(drills_ended) >= backups_ok and len(ended) == len(runs):
            return runs, False
        if time.monotonic() > deadline:
            say(f"{what}: timed out after {time.monotonic() - started:.0f} s")
            return runs, True
        if time.monotonic() - last_report > 60:
            last_report = time.monotonic()
            say(
                f"{what}: {time.monotonic() - started:.0f} s: backups ended {len(backups_ended)}, "
                f"drills ended {len(drills_ended)} of {len(runs) - backup_runs} created, "
                f"load {os.getloadavg()[0]:.1f}"
            )
        time.sleep(POLL)


def run_phase(api: Api, launcher: Any, phase: Phase, databases: list[str], timeout: float) -> Phase:
    """Trigger every backup at once, wait (bounded) until the backups and their drills ended, measure."""
    backups = [f"backup__{n}" for n in databases]
    drills = [f"restore_drill__{n}" for n in databases]
    cpu_before, (busy0, total0) = service_cpu(launcher), cpu_jiffies()
    t0 = datetime.now(UTC)
    started = time.monotonic()

    def trigger(dag_id: str) -> str:
        for attempt in range(1, TRIGGER_ATTEMPTS + 1):
            try:
                run = api.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None})
                return str(run["dag_run_id"])
            except RuntimeError as error:  # a 5xx: the api-server found no database connection in time
                if attempt == TRIGGER_ATTEMPTS or ": 5" not in str(error)[:80]:
                    raise
                phase.trigger_errors.append(str(error)[:200])
        raise AssertionError("unreachable")

    with ThreadPoolExecutor(TRIGGER_THREADS) as pool:
        phase.triggered = len(list(pool.map(trigger, backups)))
    phase.trigger_seconds = time.monotonic() - started
    say(f"{phase.name}: {phase.triggered} backups triggered in {phase.trigger_seconds:.1f} s")

    body = {"dag_ids": backups + drills, "run_after_gte": t0.isoformat()}
    runs, phase.timed_out = wait_runs(api, phase.name, body, len(backups), started + timeout, phase.load)
    busy1, total1 = cpu_jiffies()
    cpu_after = service_cpu(launcher)
    phase.cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    phase.busy_share = (busy1 - busy0) / max(1, total1 - total0)

    ends = [parse_time(r["end_date"]) for r in runs if r["end_date"]]
    if ends:
        phase.wall = (max(e for e in ends if e) - t0).total_seconds()
    for kind in ("backup", "restore_drill"):
        phase.runs[kind] = Counter(r["state"] for r in runs if r["dag_id"].startswith(f"{kind}__"))
    phase.run_types = Counter(f"{r['dag_id'].split('__')[0]}:{r['run_type']}" for r in runs)

    tis = api.listed("/dags/~/dagRuns/~/taskInstances/list", "task_instances", {**body, "page_limit": PAGE})
    delays = []
    for ti in tis:
        phase.tis[str(ti["state"])] += 1
        phase.hostnames[ti.get("hostname") or "-"] += 1
        queued, start = parse_time(ti.get("queued_when")), parse_time(ti.get("start_date"))
        if queued and start:
            delays.append((start - queued).total_seconds())
        phase.task_seconds += ti.get("duration") or 0.0
    phase.delay_median = statistics.median(delays) if delays else float("nan")
    phase.delay_p95 = percentile(delays, 0.95)
    phase.delay_max = max(delays) if delays else float("nan")
    return phase


def stop_worker(launcher: Any, name: str) -> None:
    from cloudops.deployment.local import WORKER_STOP_TIMEOUT, stop_tree
    from cloudops.deployment.topology import service

    daemon = launcher.daemon(service(name))
    _, pid = daemon.state()
    if pid is not None:
        stop_tree(pid, timeout=WORKER_STOP_TIMEOUT)
    daemon.forget()
    say(f"{name}: stopped (pid {pid})")


def wait_parsed(api: Api, dag_ids: list[str]) -> float:
    started = time.monotonic()
    wanted = set(dag_ids)
    while True:
        errors = api.call("GET", "/importErrors")["import_errors"]
        if errors:
            raise SystemExit(f"DAG import errors: {errors}")
        found = {d["dag_id"] for d in api.call("GET", "/dags", params={"limit": 1000})["dags"]}
        if wanted <= found:
            return time.monotonic() - started
        if time.monotonic() - started > PARSED_TIMEOUT:
            raise SystemExit(
                f"after {PARSED_TIMEOUT:.0f} s, DAGs not parsed: {sorted(wanted - found)[:5]}..."
            )
        time.sleep(2)


def drop_schema(schema: str) -> None:
    import psycopg

    from cloudops.evidence.backend import db_conn_id
    from cloudops.evidence.pg_ledger import conninfo_of

    with psycopg.connect(conninfo_of(db_conn_id()), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# -- the report -----------------------------------------------------------------------------------


def report(phases: list[Phase], cores: int) -> None:
    def row(label: str, *values: str) -> None:
        print(f"  {label:<44}" + "".join(f"{v:>22}" for v in values))

    print()
    row("", *(f"{p.name} ({p.workers} worker{'s' if p.workers > 1 else ''})" for p in phases))
    row("wall time, first trigger -> last end (s)", *(f"{p.wall:.1f}" for p in phases))
    row("triggering the backups (s)", *(f"{p.trigger_seconds:.1f}" for p in phases))
    row("triggers retried after a 5xx", *(str(len(p.trigger_errors)) for p in phases))
    row("timed out", *(str(p.timed_out) for p in phases))
    for kind in ("backup", "restore_drill"):
        row(
            f"{kind} runs (state: count)",
            *(", ".join(f"{s}: {c}" for s, c in sorted(p.runs.get(kind, Counter()).items())) for p in phases),
        )
    row("run types", *(", ".join(f"{k}={c}" for k, c in sorted(p.run_types.items())) for p in phases))
    row(
        "task instances (state: count)",
        *(", ".join(f"{s}: {c}" for s, c in sorted(p.tis.items())) for p in phases),
    )
    row("tasks per worker", *(", ".join(f"{h}: {c}" for h, c in sorted(p.hostnames.items())) for p in phases))
    row("queued -> start, median (s)", *(f"{p.delay_median:.1f}" for p in phases))
    row("queued -> start, p95 (s)", *(f"{p.delay_p95:.1f}" for p in phases))
    row("queued -> start, max (s)", *(f"{p.delay_max:.1f}" for p in phases))
    row("sum of task durations (s)", *(f"{p.task_seconds:.0f}" for p in phases))
    row(f"  / (wall x {cores} cores)", *(f"{p.task_seconds / (p.wall * cores):.2f}" for p in phases))
    row("machine CPU busy share (/proc/stat)", *(f"{p.busy_share:.0%}" for p in phases))
    row(
        "load average (1 min) median / max",
        *(f"{statistics.median(p.load):.1f} / {max(p.load):.1f}" if p.load else "-" for p in phases),
    )
    for name in phases[0].cpu:
        row(f"CPU s: {name}", *(f"{p.cpu.get(name, 0.0):.0f}" for p in phases))
    row("CPU s: the deployment, all", *(f"{sum(p.cpu.values()):.0f}" for p in phases))
    if len(phases) == 2 and phases[0].wall > 0:
        ratio = phases[1].wall / phases[0].wall
        verdict = "met" if ratio <= 0.6 else "missed"
        print(f"\n  ratio B/A (two workers / one worker): {ratio:.2f}  (target <= 0.6: {verdict})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--databases", type=int, default=40)
    parser.add_argument("--rows", type=int, default=1000, help="rows of each database's one table")
    parser.add_argument("--timeout", type=float, default=3600.0, help="bound of each phase's wait (s)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--phases", default="A,B", help="A (one worker), B (two workers) or both")
    args = parser.parse_args()

    load_sandbox_env()
    from cloudops.deployment.local import INSTANCES, LocalDeployment
    from cloudops.sandbox.layout import SandboxLayout

    databases = names(args.databases)
    at_start = machine()
    say(f"machine: {at_start}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-celery-"))
    schema = f"bench_celery_{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(12)
    launcher = LocalDeployment(
        SandboxLayout.from_environment(),
        INSTANCES["celery-e2e"],
        users={USER: ("user", password)},
        catalog=write_catalog(workdir / "catalog", databases, f"bench-celery/{uuid.uuid4().hex[:8]}"),
        settings={
            "CLOUDOPS_EVIDENCE_DB_SCHEMA": schema,
            # Only the benchmark's DAGs run: every DAG is created paused, the benchmark unpauses its own.
            "CLOUDOPS_PAUSED_AT_CREATION": "true",
        },
    )
    phases: list[Phase] = []
    said: list[str] = []
    try:
        started = time.monotonic()
        create_databases(databases, args.rows)
        say(f"{len(databases)} databases created on {PRIMARY_CONN} in {time.monotonic() - started:.1f} s")
        launcher.down(said.append)  # one a crashed earlier run left behind
        up = launcher.up(said.append, fresh=True)
        say(f"deployment {launcher.instance.name} up in {up:.1f} s at {launcher.url}")
        api = Api(launcher.url, password)
        dag_ids = [f"{kind}__{n}" for n in databases for kind in ("backup", "restore_drill")]
        say(f"{len(dag_ids)} DAGs parsed in {wait_parsed(api, dag_ids):.1f} s")
        for dag_id in dag_ids:
            api.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        # Unpaused, each backup DAG runs its latest missed cron time at once (scheduled__...), and its
        # drill follows: let that first round end (both workers) before anything is measured.
        started = time.monotonic()
        _, late = wait_runs(api, "warm-up", {"dag_ids": dag_ids}, len(databases), started + args.timeout, [])
        say(f"warm-up (the runs unpausing created): {time.monotonic() - started:.0f} s, timed out: {late}")

        wanted = {p.strip().upper() for p in args.phases.split(",")}
        if "A" in wanted:
            stop_worker(launcher, "worker-b")
            phases.append(run_phase(api, launcher, Phase("A", 1), databases, args.timeout))
            report(phases, os.cpu_count() or 1)
        if "B" in wanted:
            launcher.up(said.append)  # starts worker-b again (if stopped), waits until it is ready
            phases.append(run_phase(api, launcher, Phase("B", 2), databases, args.timeout))
        print(f"\n{len(databases)} databases, {args.rows} rows each; load at start {at_start['load']}")
        report(phases, os.cpu_count() or 1)
    finally:
        with contextlib.suppress(Exception):
            launcher.down(said.append)
        with contextlib.suppress(Exception):
            drop_databases(databases)
        with contextlib.suppress(Exception):
            drop_schema(schema)
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": at_start,
                    "databases": len(databases),
                    "rows": args.rows,
                    "phases": [p.__dict__ for p in phases],
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
