"""Benchmark: our PostgreSQL backups against pg_dump and pgBackRest, side by side (issue "Nightly backups").

How to run it (no make needed; as root, with the sandbox up for its moto S3 endpoint):

    cd /work/main
    .venv/bin/python tests/benchmarks/bench_backup.py                 # 3 rounds, sizes small and large
    .venv/bin/python tests/benchmarks/bench_backup.py --rounds 5 --sizes large
    .venv/bin/python tests/benchmarks/bench_backup.py --sizes tiny --rounds 1   # a 1-minute smoke test

It loads ``.sandbox/airflow.env`` itself (the ``sandbox_aws`` connection). It prints figures and asserts
nothing; ``--json FILE`` also writes every measurement. Takes about 10 minutes with the defaults.

MariaDB write stall (``--mariadb-lock``, on the sandbox's MariaDB, no root needed; about 5 minutes the first
time, then the database is kept for the next run):

    .venv/bin/python tests/benchmarks/bench_backup.py --mariadb-lock --mariadb-gib 1

- loads database ``bench_lock`` (four InnoDB tables, ``--mariadb-gib`` of data in all; reused when its size
  already fits) on the sandbox MariaDB (connection ``sandbox_mariadb``);
- a writer thread commits one-row inserts into ``bench_lock.writes`` without pause and times each commit;
- ``--rounds`` times: ``mariadb.logical_backup_source`` of ``bench_lock``, its mariadb-dump read to the end
  in chunks (each chunk shown to the command's ``observe_output``, as the upload pipeline does), then
  ``finish()``. Reported per round: the longest commit of the writer while the backup ran (how long writes
  were blocked), the global read lock time the engine measured itself, and the wall time of the backup.

What it does (PostgreSQL):

- starts its own PostgreSQL 15 (``/usr/lib/postgresql/15/bin``, as the ``postgres`` OS user) in a temporary
  directory under ``--workdir`` (default /var/tmp) on a free loopback port, with ``archive_mode=on``
  and pgBackRest's ``archive-push`` as ``archive_command``; a pgBackRest config in the same directory
  (stanza ``bench``, local ``repo1-path``, ``compress-type=zst``, ``process-max=1``, ``start-fast=y``);
  trust on its own socket, scram-sha-256 on 127.0.0.1 for the role ``bench`` (a password);
- for each size, one after the other in the same instance (the previous size's database is dropped, so
  that a physical backup of the cluster holds one size): a database with pgbench's tables
  (``pgbench -i -s N``: their dump compresses ~100:1) plus data that compresses like real tables
  (``events``: md5 text, random numbers, a jsonb column; ``documents``: a few 1 MiB rows of random hex
  text; ~2:1), about half and half;
- writes a catalog (estate ``bench``, ``conn_id: bench_pg`` given as ``AIRFLOW_CONN_BENCH_PG``, a
  repository on a bucket of its own in the sandbox's moto, created with Object Lock, GOVERNANCE 1 day like
  the sandbox's policy, so that the lock step runs too), checked with ``cloudops validate``;
- one untimed warm-up of everything, then ``--rounds`` rounds of, in this order,
  (a) ``pg_dump -Fc --no-sync -f /dev/null``, (b) ``cloudops backups run <logical>``,
  (c) ``pgbackrest backup --type=full``, (d) ``cloudops backups run <physical>``, then the references:
  ``pg_dump -Fc -Z0 | zstd -3 -T1 > /dev/null``, ``cloudops backups run`` of an empty database (the
  fixed cost of one run: interpreter, Airflow imports, connections, manifest), a plain boto3
  multipart upload to the same moto of as many bytes as (b) stored (moto's own speed), and the empty
  database again without a bytecode cache (our runs get one through ``PYTHONPYCACHEPREFIX`` in the
  temporary directory, as the image has .pyc files; this .venv has none and PYTHONDONTWRITEBYTECODE is set);
- every run is a fresh process under ``/usr/bin/time -v`` (wall time, user+sys CPU of the process and its
  children, "Maximum resident set size"); the CPU seconds the sandbox moto and our PostgreSQL server
  spent during each run are read from /proc;
- after each run of ours, reads the manifest (raw and stored bytes), then deletes the backup
  (``BackupRepository.delete_backup(..., bypass_governance=True)``: every version, the manifest first);
  pgBackRest's older backups are expired after each timed backup (untimed: retention is not part of (b)
  or (d) either). At the end, or on Ctrl-C or an error: the bucket (all versions, open multipart uploads),
  the server and the temporary directory are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
MiB = 1024 * 1024
REGION = "eu-west-1"
AWS_CONN_ID = "sandbox_aws"
PART_SIZE = 16 * MiB
STANZA = "bench"
EMPTY_DB = "bench_empty"


@dataclass(frozen=True)
class Size:
    """One data set: pgbench's scale, rows of ``events`` (~300 bytes each), ~1 MB rows of ``documents``."""

    scale: int
    events: int
    documents: int


SIZES = {
    "tiny": Size(scale=2, events=100_000, documents=4),  # smoke test, ~80 MB
    "small": Size(scale=14, events=800_000, documents=10),  # ~0.5 GB
    "large": Size(scale=34, events=1_900_000, documents=20),  # ~1.2 GB
}


@dataclass
class Run:
    """One measured process."""

    seconds: float
    cpu_seconds: float  # user + sys of the process and the children it waited for
    max_rss_mib: float  # the largest resident set of the process or any child (GNU time -v)
    moto_cpu_seconds: float
    server_cpu_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


# Processes and timing.


def ticks_of(pid: int) -> int:
    """utime+stime+cutime+cstime of a process, in clock ticks (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(value) for value in fields[11:15])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def tree_cpu_seconds(pid: int | None) -> float:
    """CPU seconds a process and its current children have used (reaped children included)."""
    if pid is None:
        return 0.0
    total = ticks_of(pid) + sum(ticks_of(child) for child in children_of(pid))
    return total / os.sysconf("SC_CLK_TCK")


def moto_pid() -> int | None:
    pid_file = Path(os.environ.get("CLOUDOPS_SANDBOX_DIR", ROOT / ".sandbox")) / "run" / "moto.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().split()[0])
        if Path(f"/proc/{pid}").exists():
            return pid
    return None


def rss_mib(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    with contextlib.suppress(OSError):
        match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
        if match:
            return int(match.group(1)) / 1024
    return float("nan")


def run_checked(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, **kw: Any
) -> str:
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=kw.pop("timeout", 1800), check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:6])} ... exited {done.returncode}:\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


def run_in_own_group(
    argv: list[str], *, env: dict[str, str], cwd: Path | None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """Run a measured command in its own process group; on Ctrl-C or an error, stop the whole group.

    SIGINT first, so that our CLI cleans up (kills its dump, aborts its multipart upload), then SIGKILL.
    """
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        for sig, wait in ((signal.SIGINT, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=wait)
                break
        raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv]


class Bench:
    """The instance, the bucket, the catalog and the measurements of one benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        base = Path(args.workdir)
        base.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="cloudops-bench-backup-", dir=base))
        self.pgdata = self.dir / "pgdata"
        self.sock = self.dir / "sock"
        self.repo = self.dir / "pgbackrest-repo"
        self.pgbr_conf = self.dir / "pgbackrest.conf"
        self.catalog = self.dir / "catalog" / "bench.yaml"
        for path in (self.sock, self.repo, self.dir / "pgbackrest-log", self.dir / "pgbackrest-lock"):
            path.mkdir(parents=True)
        self.catalog.parent.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        for path in (self.sock, self.repo, self.dir / "pgbackrest-log", self.dir / "pgbackrest-lock"):
            shutil.chown(path, "postgres", "postgres")
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.bucket = f"cloudops-bench-{secrets.token_hex(4)}"
        self.server_started = False
        self.bucket_created = False
        self.s3: Any = None
        self.store: Any = None
        self.env = {
            **os.environ,
            "CLOUDOPS_CATALOG": str(self.catalog),
            "CLOUDOPS_CACHE_DIR": str(self.dir / "catalog-cache"),
            "AIRFLOW_HOME": str(self.dir / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_BENCH_PG": json.dumps(
                {
                    "conn_type": "postgres",
                    "host": "127.0.0.1",
                    "port": self.port,
                    "login": "bench",
                    "password": self.password,
                }
            ),
        }
        # Our runs get a bytecode cache (in the temporary directory, PYTHONPYCACHEPREFIX), as the image
        # has (pip compiles on install). This venv has no .pyc files and PYTHONDONTWRITEBYTECODE=1 is set
        # here, so without a cache every start compiles Airflow's sources again (~2 s more per run): the
        # "no bytecode cache" reference row shows that case.
        self.env_ours = {k: v for k, v in self.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env_ours["PYTHONPYCACHEPREFIX"] = str(self.dir / "pycache")
        self.env_cold = {k: v for k, v in self.env.items() if k != "PYTHONPYCACHEPREFIX"}
        self.env_cold["PYTHONDONTWRITEBYTECODE"] = "1"
        self.results: dict[str, dict[str, list[Run]]] = {}
        self._warm_stored = 0
        self.moto_rss_before = rss_mib(moto_pid())
        self.facts: dict[str, dict[str, Any]] = {}

    # The PostgreSQL instance and pgBackRest.

    def start_server(self) -> None:
        run_checked(
            as_postgres(
                str(PG_BIN / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ),
            cwd=self.dir,
        )
        archive_push = f"pgbackrest --config={self.pgbr_conf} --stanza={STANZA} archive-push %p"
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.sock}'",
            "wal_level": "replica",
            "max_wal_senders": "4",
            "archive_mode": "on",
            # Switched to pgBackRest's archive-push after each data load (loading archives nothing).
            "archive_command": "'/bin/true'",
            "max_wal_size": "4GB",
            "shared_buffers": "256MB",
            "logging_collector": "off",
        }
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n# cloudops bench_backup.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        (self.pgdata / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all bench 127.0.0.1/32 scram-sha-256\n"
            "host replication bench 127.0.0.1/32 scram-sha-256\n"
        )
        self.archive_push = archive_push
        self.pgbr_conf.write_text(
            textwrap.dedent(
                f"""\
                [global]
                repo1-path={self.repo}
                repo1-retention-full=9999999
                compress-type=zst
                compress-level=3
                process-max=1
                start-fast=y
                archive-check=y
                log-path={self.dir / "pgbackrest-log"}
                lock-path={self.dir / "pgbackrest-lock"}
                log-level-console=warn
                log-level-file=info

                [{STANZA}]
                pg1-path={self.pgdata}
                pg1-port={self.port}
                pg1-socket-path={self.sock}
                pg1-user=postgres
                """
            )
        )
        shutil.chown(self.pgbr_conf, "postgres", "postgres")
        self.server_started = True
        run_checked(
            as_postgres(
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.dir / "postgres.log"),
                "-w",
                "start",
            ),
            cwd=self.dir,
        )
        self.sql(f"CREATE ROLE bench LOGIN REPLICATION PASSWORD '{self.password}'")
        self.sql(f"CREATE DATABASE {EMPTY_DB} OWNER bench")

    def stop_server(self) -> None:
        if self.server_started and (self.pgdata / "postmaster.pid").exists():
            subprocess.run(
                as_postgres(
                    str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60", "stop"
                ),
                cwd=self.dir,
                capture_output=True,
                timeout=120,
                check=False,
            )

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        return None

    def sql(self, statement: str, *, database: str = "postgres", user: str = "postgres") -> str:
        return run_checked(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.sock),
                "-p",
                str(self.port),
                "-U",
                user,
                "-d",
                database,
                "-c",
                statement,
            ]
        ).strip()

    def pgbackrest(self, *argv: str, timed: bool = False) -> Run | str:
        command = as_postgres("pgbackrest", f"--config={self.pgbr_conf}", f"--stanza={STANZA}", *argv)
        if timed:
            return self.timed(command, cwd=self.dir)
        return run_checked(command, cwd=self.dir)

    def set_archiving(self, on: bool) -> None:
        command = self.archive_push if on else "/bin/true"
        self.sql(f"ALTER SYSTEM SET archive_command = '{command}'")
        self.sql("SELECT pg_reload_conf()")

    # Data.

    def load(self, name: str, size: Size) -> None:
        """Create database ``name`` with pgbench's tables and poorly compressible ones; report sizes."""
        started = time.perf_counter()
        self.set_archiving(False)
        self.sql(f"CREATE DATABASE {name} OWNER bench")
        run_checked(
            [
                str(PG_BIN / "pgbench"),
                "-i",
                "-q",
                "-s",
                str(size.scale),
                "-h",
                str(self.sock),
                "-p",
                str(self.port),
                "-U",
                "bench",
                name,
            ]
        )
        self.sql(
            """
            CREATE TABLE events (
                id bigint PRIMARY KEY,
                created_at timestamptz NOT NULL,
                account text NOT NULL,
                note text,
                amount numeric(12, 2),
                score double precision,
                payload jsonb
            );
            CREATE TABLE documents (id int PRIMARY KEY, title text, body text)
            """,
            database=name,
            user="bench",
        )
        # Two loaders in parallel (2 CPUs): each inserts half of the rows, in batches of 250,000.
        batches = []
        step = 250_000
        for first in range(1, size.events + 1, step):
            last = min(first + step - 1, size.events)
            batches.append(
                f"""
                INSERT INTO events
                SELECT g,
                       timestamptz '2026-01-01 00:00+00' - random() * interval '365 days',
                       md5(random()::text),
                       md5(random()::text) || ' ' || md5(random()::text),
                       round((random() * 100000)::numeric, 2),
                       random(),
                       jsonb_build_object(
                           'user', md5(random()::text),
                           'n', (random() * 1e6)::int,
                           'tags', jsonb_build_array(left(md5(random()::text), 8), (random() * 100)::int),
                           'ok', random() < 0.5,
                           'ratio', random())
                FROM generate_series({first}, {last}) AS g;
                """
            )
        batches.append(
            f"""
            INSERT INTO documents
            SELECT d, 'document ' || d,
                   (SELECT string_agg(md5(random()::text || d::text || i::text), '')
                    FROM generate_series(1, 32768) AS i)
            FROM generate_series(1, {size.documents}) AS d;
            """
        )
        workers = [batches[0::2], batches[1::2]]
        processes = [
            subprocess.Popen(
                [
                    str(PG_BIN / "psql"),
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    str(self.sock),
                    "-p",
                    str(self.port),
                    "-U",
                    "bench",
                    "-d",
                    name,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in workers
        ]
        for process, work in zip(processes, workers, strict=True):
            assert process.stdin is not None
            process.stdin.write("\n".join(work))
            process.stdin.close()
        for process in processes:
            assert process.stderr is not None
            error = process.stderr.read()
            if process.wait() != 0:
                raise RuntimeError(f"loading {name} failed: {error[-2000:]}")
        self.sql("VACUUM (FREEZE, ANALYZE)", database=name, user="bench")
        self.sql("CHECKPOINT")
        self.set_archiving(True)
        facts = {
            "database_bytes": int(self.sql(f"SELECT pg_database_size('{name}')")),
            "cluster_bytes": int(self.sql("SELECT sum(pg_database_size(oid)) FROM pg_database")),
            "pgbench_bytes": int(
                self.sql(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                    "WHERE c.relname LIKE 'pgbench%' AND c.relkind = 'r'",
                    database=name,
                )
            ),
            "realistic_bytes": int(
                self.sql(
                    "SELECT pg_total_relation_size('events') + pg_total_relation_size('documents')",
                    database=name,
                )
            ),
            "load_seconds": round(time.perf_counter() - started, 1),
            **asdict(size),
        }
        self.facts[name] = facts
        print(
            f"[{name}] loaded in {facts['load_seconds']:.0f} s: "
            f"database {facts['database_bytes'] / 1e9:.2f} GB "
            f"(pgbench tables {facts['pgbench_bytes'] / 1e9:.2f} GB, events+documents "
            f"{facts['realistic_bytes'] / 1e9:.2f} GB), cluster {facts['cluster_bytes'] / 1e9:.2f} GB",
            flush=True,
        )

    def drop(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {name}")
        self.sql("CHECKPOINT")

    # The bucket and the catalog.

    def create_bucket(self) -> None:
        import boto3

        extra = json.loads(os.environ[f"AIRFLOW_CONN_{AWS_CONN_ID.upper()}"])
        self.endpoint = str(extra["extra"]["endpoint_url"])
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=extra.get("login", "testing"),
            aws_secret_access_key=extra.get("password", "testing"),
        )
        self.s3.create_bucket(
            Bucket=self.bucket,
            CreateBucketConfiguration={"LocationConstraint": REGION},
            ObjectLockEnabledForBucket=True,
        )
        self.bucket_created = True

    def delete_bucket(self) -> None:
        if not self.bucket_created:
            return
        s3 = self.s3
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket):
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                with contextlib.suppress(Exception):
                    s3.delete_object(
                        Bucket=self.bucket,
                        Key=item["Key"],
                        VersionId=item["VersionId"],
                        BypassGovernanceRetention=True,
                    )
        for upload in s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []) or []:
            with contextlib.suppress(Exception):
                s3.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        s3.delete_bucket(Bucket=self.bucket)
        self.bucket_created = False

    def write_catalog(self, sizes: list[str]) -> None:
        databases = [(f"{EMPTY_DB}_logical", EMPTY_DB, "logical")]
        for name in sizes:
            databases += [
                (f"bench_{name}_logical", name, "logical"),
                (f"bench_{name}_physical", name, "physical"),
            ]
        entries = "".join(
            f"""
  - name: {entry}
    engine: postgres
    conn_id: bench_pg
    database: {database}
    backup:
      repository: bench_repo
      method: {method}
      retention:
        keep_last: 1
"""
            for entry, database, method in databases
        )
        self.catalog.write_text(
            f"""# Written by tests/benchmarks/bench_backup.py; removed at its end.
estate: bench
description: Backup benchmark (a throwaway PostgreSQL instance and a moto bucket).
owner: bench
timezone: UTC
clouds:
  - name: bench_aws
    provider: aws
    aws_conn_id: {AWS_CONN_ID}
    region: {REGION}
repositories:
  - name: bench_repo
    cloud: bench_aws
    bucket: {self.bucket}
    prefix: bench
    region: {REGION}
    encryption:
      mode: sse-s3
    object_lock:
      mode: GOVERNANCE
      days: 1
databases:{entries}"""
        )
        print(run_checked([str(VENV_BIN / "cloudops"), "validate", str(self.catalog)], env=self.env).strip())
        os.environ.update(
            {k: self.env[k] for k in ("CLOUDOPS_CATALOG", "CLOUDOPS_CACHE_DIR", "AIRFLOW_HOME")}
        )
        # Only this process's own log lines (deleting backups): the measured runs keep the default level.
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
        from cloudops.catalog import load_catalog_file
        from cloudops.repository.s3 import BackupRepository

        catalog = load_catalog_file(self.catalog)
        for logger in ("airflow", "cloudops", "botocore"):
            logging.getLogger(logger).setLevel(logging.WARNING)
        self.store = BackupRepository(
            catalog.repository("bench_repo"), aws_conn_id=AWS_CONN_ID, estate="bench"
        )

    # Measured runs.

    def timed(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
        moto, server = moto_pid(), self.postmaster_pid()
        moto_before, server_before = tree_cpu_seconds(moto), tree_cpu_seconds(server)
        started = time.perf_counter()
        done = run_in_own_group(["/usr/bin/time", "-v", *argv], env=env or self.env, cwd=cwd)
        seconds = time.perf_counter() - started
        time.sleep(0.3)  # let the postmaster reap the backends that served the run (their CPU counts then)
        moto_cpu = tree_cpu_seconds(moto) - moto_before
        server_cpu = tree_cpu_seconds(server) - server_before
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:8])} ... exited {done.returncode}:\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            )

        def number(label: str) -> float:
            match = re.search(rf"{re.escape(label)}: ([\d.]+)", done.stderr)
            return float(match.group(1)) if match else float("nan")

        return Run(
            seconds=seconds,
            cpu_seconds=number("User time (seconds)") + number("System time (seconds)"),
            max_rss_mib=number("Maximum resident set size (kbytes)") / 1024,
            moto_cpu_seconds=moto_cpu,
            server_cpu_seconds=server_cpu,
            extra={"stdout": done.stdout[-500:]},
        )

    def pg_dump(self, database: str, *, zstd: bool) -> Run:
        target = f"-h 127.0.0.1 -p {self.port} -U bench -d {database}"
        env = {**self.env, "PGPASSWORD": self.password}
        if zstd:
            return self.timed(["sh", "-c", f"pg_dump -Fc -Z0 {target} | zstd -3 -T1 -q > /dev/null"], env=env)
        # --no-sync: /dev/null cannot be fsynced (nor is a dump to stdout).
        return self.timed(["pg_dump", "-Fc", "--no-sync", *target.split(), "-f", "/dev/null"], env=env)

    def dump_size(self, database: str, options: list[str], *, zstd: bool = False) -> tuple[int, int]:
        """Bytes of a pg_dump, and of the same through zstd level 3 (untimed, for the compression ratios)."""
        import zstandard

        dump = subprocess.Popen(
            ["pg_dump", *options, "-h", "127.0.0.1", "-p", str(self.port), "-U", "bench", "-d", database],
            stdout=subprocess.PIPE,
            env={**self.env, "PGPASSWORD": self.password},
        )
        assert dump.stdout is not None
        compressor = zstandard.ZstdCompressor(level=3).compressobj()
        raw = compressed = 0
        while chunk := dump.stdout.read(MiB):
            raw += len(chunk)
            if zstd:
                compressed += len(compressor.compress(chunk))
        compressed += len(compressor.flush()) if zstd else 0
        if dump.wait() != 0:
            raise RuntimeError(f"pg_dump {options} of {database} exited {dump.returncode}")
        return raw, compressed

    def ours(self, entry: str, *, bytecode_cache: bool = True) -> Run:
        """``cloudops backups run <entry>``, then read its manifest and delete the backup."""
        run = self.timed(
            [str(VENV_BIN / "cloudops"), "backups", "run", entry],
            env=self.env_ours if bytecode_cache else self.env_cold,
        )
        match = re.search(r"backup (\S+) of (\S+) complete", run.extra["stdout"])
        if not match:
            raise RuntimeError(f"cannot find the backup id in: {run.extra['stdout']!r}")
        backup_id = match.group(1)
        manifest = self.store.read_manifest(entry, backup_id)
        run.extra = {"raw_bytes": manifest.raw_bytes, "stored_bytes": manifest.compressed_bytes}
        self.store.delete_backup(entry, backup_id, dry_run=False, bypass_governance=True)
        return run

    def pgbackrest_backup(self) -> Run:
        run = self.pgbackrest("backup", "--type=full", timed=True)
        assert isinstance(run, Run)
        info = json.loads(str(self.pgbackrest("info", "--output=json")))
        last = info[0]["backup"][-1]["info"]
        run.extra = {"raw_bytes": last["size"], "stored_bytes": last["repository"]["delta"]}
        self.pgbackrest("expire", "--repo1-retention-full=1")  # untimed
        return run

    def moto_upload(self, size: int) -> Run:
        """The reference: ``size`` random bytes uploaded with boto3 alone, parts like ours, one at a time."""
        run = self.timed(
            [sys.executable, __file__, "--moto-upload", str(size), "--bucket", self.bucket], env=self.env_ours
        )
        result = json.loads(run.extra["stdout"].strip().splitlines()[-1])
        run.extra = {"stored_bytes": size, "upload_seconds": result["seconds"]}
        # The whole process, imports included, is the wall time; the upload alone is upload_seconds.
        return run

    def measure(self, name: str, rounds: int) -> None:
        logical, physical = f"bench_{name}_logical", f"bench_{name}_physical"
        plan: list[tuple[str, Any]] = [
            ("a pg_dump -Fc > /dev/null", lambda: self.pg_dump(name, zstd=False)),
            ("b cloudops logical", lambda: self.ours(logical)),
            ("c pgbackrest full", self.pgbackrest_backup),
            ("d cloudops physical", lambda: self.ours(physical)),
            ("a' pg_dump -Fc -Z0, zstd -3", lambda: self.pg_dump(name, zstd=True)),
            ("cloudops logical, empty db", lambda: self.ours(f"{EMPTY_DB}_logical")),
            ("boto3 upload, (b)'s bytes", lambda: self.moto_upload(self._last_stored(name))),
            (
                "empty db, no bytecode cache",
                lambda: self.ours(f"{EMPTY_DB}_logical", bytecode_cache=False),
            ),
        ]
        # Warm-up, untimed: the page cache, Airflow's first start in AIRFLOW_HOME, pgBackRest's archive check.
        started = time.perf_counter()
        self.facts[name]["pg_dump_fc_bytes"] = self.dump_size(name, ["-Fc"])[0]
        self.facts[name]["zstd_pgbench"] = self.dump_size(
            name, ["-Fc", "-Z0", "--table=pgbench_*"], zstd=True
        )
        self.facts[name]["zstd_realistic"] = self.dump_size(
            name, ["-Fc", "-Z0", "--table=events", "--table=documents"], zstd=True
        )
        warm = {label: action() for label, action in plan[1:4]}
        self._warm_stored = int(warm["b cloudops logical"].extra["stored_bytes"])
        self.results[name] = {label: [] for label, _ in plan}
        print(f"[{name}] warm-up done in {time.perf_counter() - started:.0f} s", flush=True)
        for number in range(1, rounds + 1):
            for label, action in plan:
                run = action()
                self.results[name][label].append(run)
                print(
                    f"[{name}] round {number}/{rounds} {label:28s} {run.seconds:7.2f} s  "
                    f"cpu {run.cpu_seconds:6.2f} s  rss {run.max_rss_mib:6.0f} MiB  "
                    f"moto cpu {run.moto_cpu_seconds:5.2f} s  server cpu {run.server_cpu_seconds:5.2f} s",
                    flush=True,
                )
            print(
                f"[{name}] round {number} done; load average {os.getloadavg()[0]:.2f}, "
                f"sandbox moto RSS {rss_mib(moto_pid()):.0f} MiB",
                flush=True,
            )

    def _last_stored(self, name: str) -> int:
        runs = self.results[name]["b cloudops logical"]
        return int(runs[-1].extra["stored_bytes"]) if runs else self._warm_stored


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def load_sandbox_env() -> None:
    if f"AIRFLOW_CONN_{AWS_CONN_ID.upper()}" in os.environ:
        return
    sys.path.insert(0, str(ROOT / "plugins"))
    from cloudops.sandbox.layout import read_env_file

    env_file = Path(os.environ.get("CLOUDOPS_SANDBOX_DIR", ROOT / ".sandbox")) / "airflow.env"
    if not env_file.exists():
        raise SystemExit(f"{env_file} does not exist: start the sandbox (`cloudops sandbox up`) first")
    os.environ.update(read_env_file(env_file))


# The moto reference child.


def moto_upload_child(size: int, bucket: str) -> None:
    import boto3

    conn = json.loads(os.environ[f"AIRFLOW_CONN_{AWS_CONN_ID.upper()}"])
    client = boto3.client(
        "s3",
        endpoint_url=conn["extra"]["endpoint_url"],
        region_name=REGION,
        aws_access_key_id=conn.get("login", "testing"),
        aws_secret_access_key=conn.get("password", "testing"),
    )
    key = f"bench/moto-reference/{secrets.token_hex(6)}"
    part = os.urandom(PART_SIZE)
    started = time.perf_counter()
    upload = client.create_multipart_upload(
        Bucket=bucket, Key=key, ServerSideEncryption="AES256", ChecksumAlgorithm="CRC32"
    )
    parts, sent, number = [], 0, 1
    while sent < size:
        body = part[: min(PART_SIZE, size - sent)]
        response = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm="CRC32",
        )
        entry = {"PartNumber": number, "ETag": response["ETag"]}
        if response.get("ChecksumCRC32"):
            entry["ChecksumCRC32"] = response["ChecksumCRC32"]
        parts.append(entry)
        sent += len(body)
        number += 1
    completed = client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    seconds = time.perf_counter() - started
    client.delete_object(Bucket=bucket, Key=key, VersionId=completed["VersionId"])
    print(json.dumps({"seconds": seconds, "bytes": sent}))


# The report.


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def span(values: list[float], digits: int = 2) -> str:
    return f"{med(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def seconds_of(runs: list[Run]) -> list[float]:
    return [run.seconds for run in runs]


def report(bench: Bench, args: argparse.Namespace, started: datetime, load: tuple[float, float]) -> None:
    cpus = os.cpu_count()
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    model = ""
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = match.group(1).strip() if match else ""
    versions = "; ".join(
        run_checked(argv).strip() for argv in (["pg_dump", "--version"], ["pgbackrest", "version"])
    )
    print(
        f"\n## Backup benchmark, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"machine: {cpus} CPUs ({model}), {memory_kb / 1024 / 1024:.0f} GiB RAM, {platform.platform()}; "
        f"load average {load[0]:.2f} at start, {load[1]:.2f} at end (shared machine)\n"
        f"{versions}; Python {platform.python_version()}; zstd level 3 everywhere, parts of 16 MiB; "
        f"medians of {args.rounds} rounds (min-max), interleaved a b c d + references in each round\n"
        f"command: .venv/bin/python tests/benchmarks/bench_backup.py --rounds {args.rounds} "
        f"--sizes {','.join(args.sizes)}\n"
    )
    for name in args.sizes:
        facts, runs = bench.facts[name], bench.results[name]
        pgbench_ratio = facts["zstd_pgbench"][0] / facts["zstd_pgbench"][1]
        realistic_ratio = facts["zstd_realistic"][0] / facts["zstd_realistic"][1]
        print(
            f"### {name}: database {facts['database_bytes'] / 1e9:.2f} GB (pg_database_size), cluster "
            f"{facts['cluster_bytes'] / 1e9:.2f} GB\n\n"
            f"pgbench -s {facts['scale']}: {facts['pgbench_bytes'] / 1e9:.2f} GB, its dump compresses "
            f"{pgbench_ratio:.1f}:1 with zstd -3; events ({facts['events']:,} rows) + documents "
            f"({facts['documents']} rows of 1 MiB): {facts['realistic_bytes'] / 1e9:.2f} GB, "
            f"{realistic_ratio:.1f}:1; pg_dump -Fc (gzip) output {facts['pg_dump_fc_bytes'] / 1e6:.0f} MB\n"
        )
        print(
            "| run | wall s | CPU s (process) | peak RSS MiB | moto CPU s | server CPU s | raw → stored MB |"
        )
        print("|---|---|---|---|---|---|---|")
        for label, measured in runs.items():
            last, stored = measured[-1].extra, ""
            if last.get("raw_bytes", 0) > 1e6:
                raw, kept = last["raw_bytes"], last["stored_bytes"]
                stored = f"{raw / 1e6:.0f} → {kept / 1e6:.0f} ({raw / kept:.2f}:1)"
            elif "upload_seconds" in last:
                upload = med([run.extra["upload_seconds"] for run in measured])
                mb = last["stored_bytes"] / 1e6
                stored = f"{mb:.0f}; the upload alone: {upload:.2f} s, {mb / upload:.0f} MB/s"
            print(
                f"| {label} | {span(seconds_of(measured))} | {med([r.cpu_seconds for r in measured]):.2f} "
                f"| {max(r.max_rss_mib for r in measured):.0f} "
                f"| {med([r.moto_cpu_seconds for r in measured]):.2f} "
                f"| {med([r.server_cpu_seconds for r in measured]):.2f} | {stored} |"
            )
        a, b = seconds_of(runs["a pg_dump -Fc > /dev/null"]), seconds_of(runs["b cloudops logical"])
        c, d = seconds_of(runs["c pgbackrest full"]), seconds_of(runs["d cloudops physical"])
        a_zstd = seconds_of(runs["a' pg_dump -Fc -Z0, zstd -3"])
        fixed = med(seconds_of(runs["cloudops logical, empty db"]))
        per_round_ba = [y / x for x, y in zip(a, b, strict=True)]
        per_round_dc = [y / x for x, y in zip(c, d, strict=True)]
        rss_b = max(r.max_rss_mib for r in runs["b cloudops logical"])
        rss_d = max(r.max_rss_mib for r in runs["d cloudops physical"])
        print(
            f"\n(b)/(a) = {med(b) / med(a):.2f} (per round {min(per_round_ba):.2f}-{max(per_round_ba):.2f}; "
            f"target ≤ 1.15); (d)/(c) = {med(d) / med(c):.2f} (per round {min(per_round_dc):.2f}-"
            f"{max(per_round_dc):.2f}; target ≤ 1.2); peak RSS (b) {rss_b:.0f} MiB, (d) {rss_d:.0f} MiB "
            f"(target ≤ 300 MB)\n"
            f"(b)/(a') = {med(b) / med(a_zstd):.2f} against pg_dump -Z0 piped to the zstd CLI (no upload); "
            f"fixed cost of one `cloudops backups run` (empty database) {fixed:.2f} s; without it "
            f"(b)/(a) = {(med(b) - fixed) / med(a):.2f}, (b)/(a') = {(med(b) - fixed) / med(a_zstd):.2f}, "
            f"(d)/(c) = {(med(d) - fixed) / med(c):.2f}\n"
        )
    print(f"sandbox moto RSS: {bench.moto_rss_before:.0f} MiB before, {rss_mib(moto_pid()):.0f} MiB after")


# The MariaDB write stall.

MARIA_CONN_ID = "sandbox_mariadb"
MARIA_BENCH_DB = "bench_lock"
MARIA_TABLES = 4


def maria_session(database: str | None = None) -> Any:
    import pymysql

    conn = json.loads(os.environ[f"AIRFLOW_CONN_{MARIA_CONN_ID.upper()}"])
    return pymysql.connect(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        password=conn["password"],
        database=database,
        autocommit=True,
        read_timeout=3600,
    )


def maria_load(gib: float) -> int:
    """Create ``bench_lock`` with ``gib`` GiB of rows in four tables, unless it already holds that much."""
    with maria_session() as session, session.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME LIKE 'rows_%%'",
            (MARIA_BENCH_DB,),
        )
        (size,) = cursor.fetchone()
        if 0.9 * gib * 1024**3 <= int(size) <= 1.6 * gib * 1024**3:
            print(f"mariadb: {MARIA_BENCH_DB} already holds {int(size) / MiB:.0f} MiB", flush=True)
            return int(size)
        started = time.monotonic()
        cursor.execute(f"DROP DATABASE IF EXISTS {MARIA_BENCH_DB}")
        cursor.execute(f"CREATE DATABASE {MARIA_BENCH_DB}")
        cursor.execute(f"USE {MARIA_BENCH_DB}")
        cursor.execute(
            "CREATE TABLE writes (id BIGINT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6)) ENGINE=InnoDB"
        )
        # ~145 bytes a row on disk (measured): four tables of gib/4 each.
        rows = int(gib * 1024**3 / 145 / MARIA_TABLES)
        for table in range(MARIA_TABLES):
            cursor.execute(
                f"CREATE TABLE rows_{table} (id BIGINT PRIMARY KEY, k INT NOT NULL, payload VARCHAR(200), "
                "KEY k (k)) ENGINE=InnoDB"
            )
            for start in range(0, rows, 500_000):
                end = min(start + 500_000, rows)
                cursor.execute(
                    f"INSERT INTO rows_{table} SELECT seq, seq % 100000, "
                    f"CONCAT(MD5(seq), MD5(seq + {table}), SHA1(seq), MD5(RAND())) "
                    f"FROM seq_{start + 1}_to_{end}"
                )
        cursor.execute(
            "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
            (MARIA_BENCH_DB,),
        )
        (size,) = cursor.fetchone()
        print(
            f"mariadb: loaded {MARIA_BENCH_DB}: {int(size) / MiB:.0f} MiB "
            f"in {time.monotonic() - started:.0f} s",
            flush=True,
        )
        return int(size)


class CommitTimer:
    """A writer committing one-row inserts without pause; keeps every commit's start and duration."""

    def __init__(self) -> None:
        import threading

        self.commits: list[tuple[float, float]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-writer", daemon=True)

    def __enter__(self) -> CommitTimer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        try:
            with maria_session(MARIA_BENCH_DB) as session, session.cursor() as cursor:
                while not self._stop.is_set():
                    began = time.monotonic()
                    cursor.execute("INSERT INTO writes (at) VALUES (NOW(6))")
                    self.commits.append((began, time.monotonic() - began))
        except BaseException as error:
            self.error = error

    def longest_between(self, start: float, end: float) -> float:
        """The longest commit that overlapped ``[start, end]`` (a commit still blocked counts too)."""
        return max(
            (took for began, took in self.commits if began <= end and began + took >= start), default=0.0
        )


def maria_backup_round(workdir: Path) -> dict[str, float]:
    """One backup of ``bench_lock`` through the engine, its dump read to the end like the pipeline does."""
    from cloudops.engines import mariadb

    started = time.monotonic()
    with mariadb.logical_backup_source(
        MARIA_CONN_ID, MARIA_BENCH_DB, used_by="bench", workdir=workdir
    ) as source:
        observe = getattr(source.command, "observe_output", None)  # absent before the lock rework
        if (before_start := getattr(source.command, "before_start", None)) is not None:
            before_start()
        process = subprocess.Popen(
            source.command.argv,
            env={**os.environ, **source.command.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        raw = 0
        while chunk := process.stdout.read1(1024 * 1024):
            raw += len(chunk)
            if observe is not None:
                observe(chunk)
        if process.wait(timeout=3600) != 0:
            raise RuntimeError(f"mariadb-dump exited {process.returncode}")
        finished = source.finish()
    return {
        "seconds": time.monotonic() - started,
        "started": started,
        "ended": time.monotonic(),
        "raw_mib": raw / MiB,
        "lock_seconds": float(finished.get("global_read_lock_seconds", -1)),
    }


def mariadb_lock_bench(args: argparse.Namespace) -> None:
    """Measure how long a MariaDB backup blocks writes (see the module docstring)."""
    sys.path.insert(0, str(ROOT / "plugins"))
    logging.basicConfig(level=logging.WARNING)
    size = maria_load(args.mariadb_gib)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-maria-") as workdir, CommitTimer() as writer:
        time.sleep(2)  # the writer's steady state first
        idle = writer.longest_between(time.monotonic() - 2, time.monotonic())
        for number in range(1, args.rounds + 1):
            result = maria_backup_round(Path(workdir))
            result["longest_commit"] = writer.longest_between(result["started"], result["ended"])
            rounds.append(result)
            print(
                f"mariadb round {number}: backup {result['seconds']:.1f} s "
                f"({result['raw_mib']:.0f} MiB of SQL), "
                f"global read lock {result['lock_seconds']:.3f} s (engine's own timing), "
                f"longest writer commit {result['longest_commit']:.3f} s",
                flush=True,
            )
        if writer.error is not None:
            raise SystemExit(f"the writer failed: {writer.error}")
    print(
        f"mariadb {MARIA_BENCH_DB} ({size / MiB:.0f} MiB on disk), {args.rounds} round(s): longest writer "
        f"commit median {med([r['longest_commit'] for r in rounds]):.3f} s "
        f"(idle writer: {idle:.3f} s), lock median {med([r['lock_seconds'] for r in rounds]):.3f} s, "
        f"backup median {med([r['seconds'] for r in rounds]):.1f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"mariadb_lock": rounds, "size_bytes": size}, indent=2))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of a b c d + references (default 3)")
    parser.add_argument(
        "--sizes",
        default="small,large",
        help=f"comma-separated, in order, among {', '.join(SIZES)} (default small,large)",
    )
    parser.add_argument(
        "--workdir", default="/var/tmp", help="where the temporary directory goes (default /var/tmp)"
    )
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--keep", action="store_true", help="keep the instance and the directory (debugging)")
    parser.add_argument(
        "--mariadb-lock", action="store_true", help="only measure how long a MariaDB backup blocks writes"
    )
    parser.add_argument("--mariadb-gib", type=float, default=1.0, help="size of its database (default 1)")
    parser.add_argument("--moto-upload", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    args = parser.parse_args()
    load_sandbox_env()
    if args.moto_upload is not None:
        moto_upload_child(args.moto_upload, args.bucket)
        return
    if args.mariadb_lock:
        mariadb_lock_bench(args)
        return
    args.sizes = [name.strip() for name in args.sizes.split(",") if name.strip()]
    if unknown := [name for name in args.sizes if name not in SIZES]:
        parser.error(f"unknown size(s) {unknown}; choose among {list(SIZES)}")
    if os.geteuid() != 0:
        raise SystemExit("run as root: the PostgreSQL instance runs as the postgres OS user (runuser)")
    # SIGTERM cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored (nohup, `&` in a script)
    started = datetime.now(UTC)
    load_start = os.getloadavg()[0]
    bench = Bench(args)
    print(f"workdir {bench.dir}, port {bench.port}, bucket {bench.bucket}", flush=True)
    try:
        bench.create_bucket()
        bench.start_server()
        bench.write_catalog(args.sizes)
        stanza_ready = False
        previous = None
        for name in args.sizes:
            if previous:
                bench.drop(previous)
            bench.load(name, SIZES[name])
            if not stanza_ready:
                bench.pgbackrest("stanza-create")
                bench.pgbackrest("check")
                stanza_ready = True
            bench.measure(name, args.rounds)
            previous = name
        report(bench, args, started, (load_start, os.getloadavg()[0]))
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "started": started.isoformat(),
                        "facts": bench.facts,
                        "results": {
                            name: {label: [asdict(run) for run in runs] for label, runs in by_label.items()}
                            for name, by_label in bench.results.items()
                        },
                    },
                    indent=2,
                )
            )
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if args.keep:
            env_file = bench.dir / "bench.env"
            env_file.write_text(
                "".join(
                    f"{key}={shlex.quote(bench.env[key])}\n"
                    for key in (
                        "CLOUDOPS_CATALOG",
                        "CLOUDOPS_CACHE_DIR",
                        "AIRFLOW_HOME",
                        "AIRFLOW_CONN_BENCH_PG",
                    )
                )
            )
            env_file.chmod(0o600)
            print(f"kept: {bench.dir} (port {bench.port}, env in {env_file}), bucket {bench.bucket}")
        else:
            for step in (bench.delete_bucket, bench.stop_server, lambda: shutil.rmtree(bench.dir)):
                try:
                    step()
                except Exception as error:
                    print(f"clean-up step failed: {error}", file=sys.stderr)
            print(f"cleaned up: bucket {bench.bucket}, the server on port {bench.port}, {bench.dir}")


if __name__ == "__main__":
    main()
