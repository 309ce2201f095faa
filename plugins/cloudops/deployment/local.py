"""Run the CeleryExecutor deployment (``topology.SERVICES``) on this machine, against the sandbox.

`make up-celery` (``cloudops deployment up``) and the e2e tests start it the same way: the sandbox's
Redis as broker, a metadata database of its own on the sandbox's PostgreSQL scratch server (never the
primary, which failover drills promote and rewind), then api-server, scheduler, dag-processor,
triggerer and the two Celery workers, each a process of its own in a session of its own, recorded in a
pid file under <sandbox>/run/ and logging to <sandbox>/logs/<instance>-<service>.log. The evidence
ledger is the PostgreSQL one (``CLOUDOPS_EVIDENCE_BACKEND=postgres``), the hash chain every worker
appends to.

Two instances can run side by side on one sandbox, each with its own ports, metadata database and
broker database: ``celery`` (`make up-celery`) and ``celery-e2e`` (the tests).

`down` stops the workers first (a worker stopping lets its running tasks finish, for a bounded time),
then the other services; every wait is bounded, and what outlives SIGTERM gets SIGKILL, with the task
processes below it. `cloudops sandbox down` (and `make down`) stops every instance before the servers
it depends on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudops.deployment.topology import SERVICES, SHARED_SETTINGS, WORKERS, Service
from cloudops.deployment.topology import service as service_named
from cloudops.errors import SandboxError
from cloudops.sandbox.credentials import CredentialStore
from cloudops.sandbox.layout import LOOPBACK, SandboxLayout, read_env_file
from cloudops.sandbox.process import (
    RUNNING,
    STALE,
    Daemon,
    Say,
    command_line,
    log_tail,
    port_conflict,
    port_in_use,
    run,
    spawn_detached,
    wait_until,
)

MIGRATE_TIMEOUT = 300.0
READY_TIMEOUT = 120.0  # api-server answering, scheduler, triggerer and dag-processor heartbeating
WORKER_STOP_TIMEOUT = 30.0  # a worker's warm shutdown: its running tasks may finish
STOP_TIMEOUT = 20.0
KILL_TIMEOUT = 10.0
WORKER_READY = " ready."  # Celery's "worker-a@host ready." line
# Both workers share two cores with everything else: two task slots each.
WORKER_CONCURRENCY = 2
# Small connection pools: six services share the scratch server's max_connections (50).
POOL_SETTINGS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "2",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "4",
}
# `make up`'s logins: an admin, a second person who approves dangerous steps, an auditor who reads.
DEFAULT_USERS: dict[str, tuple[str, str]] = {
    "admin": ("admin", "admin"),
    "approver": ("user", "approver"),
    "auditor": ("viewer", "auditor"),
}


@dataclass(frozen=True)
class Instance:
    """One local deployment: its metadata database, broker database and the prefix of its ports."""

    name: str
    database: str
    redis_database: int
    ports: str


INSTANCES = {
    "celery": Instance("celery", "airflow", 0, "celery"),
    "celery-e2e": Instance("celery-e2e", "airflow_e2e", 1, "celery_e2e"),
}


def instance(name: str) -> Instance:
    """:raises SandboxError: naming the instances there are."""
    try:
        return INSTANCES[name]
    except KeyError:
        raise SandboxError(f"no local deployment {name!r}: one of {', '.join(INSTANCES)}") from None


@dataclass
class LocalDeployment:
    """The CeleryExecutor deployment ``instance`` on the sandbox of ``layout``.

    :param users: login -> (SimpleAuthManager role, password).
    :param catalog: the catalog folder the DAGs are built from (default: the project's runbooks/).
    :param settings: further environment of every service (a test's evidence schema, paused DAGs).
    """

    layout: SandboxLayout
    instance: Instance = INSTANCES["celery"]
    users: Mapping[str, tuple[str, str]] = field(default_factory=lambda: dict(DEFAULT_USERS))
    catalog: Path | None = None
    settings: Mapping[str, str] = field(default_factory=dict)

    # -- where things are ------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        return self.layout.dir / self.instance.name

    @property
    def api_port(self) -> int:
        return self.layout.port(f"{self.instance.ports}_api")

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    def daemon(self, service: Service) -> Daemon:
        # The pid file's path is also on the command line (`--pid`, written by nobody else in the
        # foreground): the marker that tells this deployment's process from a reused pid.
        path = self.layout.pid_file(f"{self.instance.name}-{service.name}")
        if service.name == "api-server":
            # It retitles itself "airflow api_server -- host:H port:P": the port is this instance's.
            return Daemon(path, marker=f"api_server -- host:{LOOPBACK} port:{self.api_port}")
        return Daemon(path, marker=f"--pid {path}")

    def log(self, service: Service) -> Path:
        return self.layout.log_file(f"{self.instance.name}-{service.name}")

    def endpoints(self) -> list[tuple[Service, int]]:
        return [(SERVICES[0], self.api_port)]

    # -- the environment -------------------------------------------------------------------------

    def _scratch(self) -> Any:
        from cloudops.sandbox.plan import load_plan
        from cloudops.sandbox.postgres import PostgresServer

        plan = load_plan(self.layout.catalog_path)
        if plan.postgres_scratch is None:
            raise SandboxError("the sandbox catalog names no PostgreSQL scratch server for the metadata DB")
        return PostgresServer(
            self.layout, plan.postgres_scratch, CredentialStore(self.layout.credentials_file)
        )

    def _redis(self) -> Any:
        from cloudops.sandbox.redis import RedisServer

        return RedisServer(self.layout, CredentialStore(self.layout.credentials_file))

    def environment(self) -> dict[str, str]:
        """The environment every service of this deployment runs with (holds secrets: never log it)."""
        from cloudops.sandbox.postgres import PASSWORD_KEY, ROLE

        store = CredentialStore(self.layout.credentials_file)
        scratch = self._scratch()
        database = (
            f"postgresql+psycopg2://{ROLE}:{store.password(PASSWORD_KEY)}@{LOOPBACK}:{scratch.port}/"
            f"{self.instance.database}"
        )
        root = self.layout.project_root
        # The caller's AIRFLOW__* settings (the Makefile's LocalExecutor ones) are not this deployment's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        env.update(read_env_file(self.layout.env_file))
        env.update(SHARED_SETTINGS)
        env.update(POOL_SETTINGS)
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
                "AIRFLOW__CELERY__BROKER_URL": self._redis().broker_url(self.instance.redis_database),
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{database}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                    f"{login}:{role}" for login, (role, _) in self.users.items()
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
                "AIRFLOW__API__HOST": LOOPBACK,
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API_AUTH__JWT_SECRET": store.password(f"{self.instance.name}_jwt_secret"),
                "AIRFLOW__API__SECRET_KEY": store.password(f"{self.instance.name}_secret_key"),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                # Six services and every task process share two cores: a task's calls to the
                # execution API may wait longer than the default 5 s while the api-server is busy.
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
                "CLOUDOPS_CATALOG": str(self.catalog or root / "runbooks"),
                "CLOUDOPS_EVIDENCE_DIR": str(self.home / "evidence"),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        if "auditor" in self.users:
            # The health check reads the runbook DAGs' state through the REST API, as the auditor.
            env["AIRFLOW_CONN_CLOUDOPS_AIRFLOW_API"] = json.dumps(
                {
                    "conn_type": "http",
                    "host": self.url,
                    "login": "auditor",
                    "password": self.users["auditor"][1],
                }
            )
        env.update(self.settings)
        return env

    def argv(self, service: Service) -> list[str]:
        """The command of ``service`` here: the topology's, plus where it listens and its pid file."""
        argv = [*service.command(), "--pid", str(self.daemon(service).pid_file)]
        if service.name == "api-server":
            argv += ["--host", LOOPBACK, "--port", str(self.api_port), "--workers", "1"]
        if service.is_worker:
            argv += ["--concurrency", str(WORKER_CONCURRENCY)]
        if service.is_worker or service.name == "triggerer":
            # One machine, one log folder: the api-server reads every task's log from it. A log
            # server would listen on every interface (Airflow binds it so), for nothing.
            argv += ["--skip-serve-logs"]
        return argv

    def service_environment(self, service: Service, base: Mapping[str, str]) -> dict[str, str]:
        return {**base, **service.settings}

    # -- actions ---------------------------------------------------------------------------------

    def _preflight(self) -> None:
        """Refuse to start without the sandbox servers it needs, or when a port is someone else's."""
        needed = [self._redis(), self._scratch()]
        down = [c.name for c in needed if c.daemon.state()[0] != RUNNING]
        if down:
            raise SandboxError(
                f"{self.instance.name}: the sandbox's {', '.join(down)} is not running: "
                "run `make sandbox` first"
            )
        taken = [
            port_conflict(LOOPBACK, port, self.layout.port_offset)
            for service, port in self.endpoints()
            if self.daemon(service).state()[0] != RUNNING and port_in_use(LOOPBACK, port)
        ]
        if taken:
            raise SandboxError("; ".join(taken))

    def _ensure_database(self, say: Say, *, fresh: bool) -> None:
        from psycopg import sql

        name = sql.Identifier(self.instance.database)
        with self._scratch().tcp_connect() as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [self.instance.database]
            ).fetchone()
            if exists and fresh:
                say(f"{self.instance.name}: dropping metadata database {self.instance.database} (fresh)")
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))
                exists = None
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
                say(f"{self.instance.name}: created metadata database {self.instance.database}")

    def _airflow(self, env: Mapping[str, str], *args: str, what: str) -> None:
        run(
            ["airflow", *args],
            what=f"{self.instance.name}: {what}",
            log_path=self.layout.log_file(f"{self.instance.name}-setup"),
            timeout=MIGRATE_TIMEOUT,
            env=env,
            cwd=self.home,
        )

    def _prepare(self, env: Mapping[str, str], say: Say) -> None:
        """Migrate the metadata database and create the runbooks' pools."""
        started = time.monotonic()
        self._airflow(env, "db", "migrate", what="airflow db migrate")
        listed = subprocess.run(
            [str(Path(sys.executable).parent / "cloudops"), "failover", "pools"],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=MIGRATE_TIMEOUT,
            check=False,
        )
        if listed.returncode != 0:
            raise SandboxError(f"{self.instance.name}: cloudops failover pools: {listed.stderr[-2000:]}")
        if json.loads(listed.stdout or "{}"):
            pools = self.home / "pools.json"
            pools.write_text(listed.stdout)
            self._airflow(env, "pools", "import", str(pools), what="airflow pools import")
        say(
            f"{self.instance.name}: metadata database {self.instance.database} ready in "
            f"{time.monotonic() - started:.1f} s"
        )

    def _write_passwords(self) -> None:
        path = self.home / "passwords.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({login: password for login, (_, password) in self.users.items()}, handle)

    def up(self, say: Say, *, fresh: bool = False) -> float:
        """Start what is not running and wait until the deployment is ready; return the seconds taken.

        :param fresh: drop and recreate the metadata database first (tests; never `make up-celery`).
        :raises SandboxError: naming the service and its log when something does not start in time.
        """
        started = time.monotonic()
        self._preflight()
        for folder in (self.home, self.home / "logs", self.home / "evidence"):
            folder.mkdir(parents=True, exist_ok=True)
        self._write_passwords()
        running = {s.name for s in SERVICES if self.daemon(s).state()[0] == RUNNING}
        if fresh and running:
            raise SandboxError(
                f"{self.instance.name}: runs already ({', '.join(sorted(running))}): stop it first"
            )
        base = self.environment()
        self._ensure_database(say, fresh=fresh)
        if not running:
            self._prepare(base, say)
        offsets: dict[str, int] = {}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        for service in SERVICES:
            daemon = self.daemon(service)
            state, pid = daemon.state()
            if state == RUNNING:
                say(f"{self.instance.name} {service.name}: already running (pid {pid})")
                continue
            if state == STALE:
                daemon.forget()
            log = self.log(service)
            offsets[service.name] = log.stat().st_size if log.exists() else 0
            proc = spawn_detached(
                self.argv(service), log_path=log, env=self.service_environment(service, base), cwd=self.home
            )
            daemon.record(proc.pid)
            procs[service.name] = proc
        self._wait_ready(procs, offsets)
        seconds = time.monotonic() - started
        say(f"{self.instance.name}: ready in {seconds:.1f} s")
        return seconds

    def _wait_ready(self, procs: Mapping[str, subprocess.Popen[bytes]], offsets: Mapping[str, int]) -> None:
        import logging

        import httpx

        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise

        def alive() -> bool:
            dead = [name for name, proc in procs.items() if proc.poll() is not None]
            if dead:
                service = next(s for s in SERVICES if s.name == dead[0])
                raise SandboxError(
                    f"{self.instance.name} {dead[0]} exited with {procs[dead[0]].returncode}; see "
                    f"{self.log(service)}:\n{log_tail(self.log(service))}"
                )
            return True

        def healthy() -> bool:
            alive()
            health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            return all((health.get(p) or {}).get("status") == "healthy" for p in parts)

        api = SERVICES[0]
        wait_until(
            healthy,
            what=f"{self.instance.name}: api-server health (database, scheduler, triggerer, dag-processor)",
            log_path=self.log(api),
            timeout=READY_TIMEOUT,
        )
        for worker in WORKERS:
            if worker.name not in procs:
                continue
            log = self.log(worker)

            def ready(log: Path = log, offset: int = offsets[worker.name]) -> bool:
                alive()
                with log.open("rb") as handle:
                    handle.seek(offset)
                    return WORKER_READY.encode() in handle.read()

            wait_until(ready, what=f"{self.instance.name} {worker.name}", log_path=log, timeout=READY_TIMEOUT)

    def down(self, say: Say) -> None:
        """Stop every service of this deployment, workers first; the metadata database stays.

        :raises SandboxError: when a process outlived SIGKILL (the others are still stopped).
        """
        from concurrent.futures import ThreadPoolExecutor

        errors: list[str] = []

        def stop(service: Service) -> None:
            daemon = self.daemon(service)
            state, pid = daemon.state()
            what = f"{self.instance.name} {service.name}"
            if state == RUNNING and pid is not None:
                try:
                    stop_tree(pid, timeout=WORKER_STOP_TIMEOUT if service.is_worker else STOP_TIMEOUT)
                    say(f"{what}: stopped (pid {pid})")
                except SandboxError as error:
                    errors.append(f"{what}: {error}")
            elif state == STALE:
                say(f"{what}: pid {pid} is not this deployment's process; pid file removed, nothing stopped")
            daemon.forget()

        # The workers first (so that nothing hands them new tasks while they stop), then the rest; each
        # group at once, so that a stop takes the slowest service's time, not the sum of them all.
        for group in (list(WORKERS), [s for s in reversed(SERVICES) if not s.is_worker]):
            with ThreadPoolExecutor(max_workers=len(group)) as pool:
                list(pool.map(stop, group))
        if errors:
            raise SandboxError("\n".join(errors))

    def kill(self, name: str, say: Say) -> list[int]:
        """SIGKILL one service and every process below it at once, as a lost machine ends them: no
        warm shutdown, no task cleanup. For drills and tests of what a lost worker leaves behind;
        `up` starts the service again.

        :return: the pids killed (the service's first).
        :raises SandboxError: the service is not running, or a process outlived SIGKILL.
        """
        import psutil

        try:
            found = service_named(name)
        except KeyError as error:
            raise SandboxError(str(error.args[0])) from None
        daemon = self.daemon(found)
        state, pid = daemon.state()
        what = f"{self.instance.name} {found.name}"
        if state != RUNNING or pid is None:
            raise SandboxError(f"{what} is not running ({state}): nothing killed")
        # Collected before the first signal: task processes may sit in sessions of their own.
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(signal.SIGKILL)
        _, alive = psutil.wait_procs(tree, timeout=KILL_TIMEOUT)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        daemon.forget()
        if alive:
            raise SandboxError(
                f"{what}: pids {[p.pid for p in alive]} outlived SIGKILL: look at them by hand"
            )
        pids = [p.pid for p in tree]
        say(f"{what}: killed (SIGKILL) pids {pids}")
        return pids

    def status(self) -> list[tuple[str, str, int | None, str]]:
        """(service, address, pid, state) of each service, from the pid files alone."""
        rows = []
        ports = dict((s.name, p) for s, p in self.endpoints())
        for service in SERVICES:
            state, pid = self.daemon(service).state()
            port = ports.get(service.name)
            rows.append(
                (f"{self.instance.name}-{service.name}", f"{LOOPBACK}:{port}" if port else "-", pid, state)
            )
        return rows

    def started(self) -> bool:
        """Tell whether any service of this deployment has a pid file."""
        return any(self.daemon(s).pid_file.exists() for s in SERVICES)

    def banner(self) -> str:
        """Where the UI is and who may log in (`make up-celery` prints it)."""
        logins = ", ".join(f"{login}/{password} ({role})" for login, (role, password) in self.users.items())
        workers = "; ".join(f"{w.name} queues {','.join(w.queues)}" for w in WORKERS)
        return (
            f"Airflow UI (CeleryExecutor): {self.url}  logins: {logins}\n"
            f"workers: {workers}; logs in {self.layout.logs_dir}/{self.instance.name}-*.log; "
            "stop with `make down`"
        )


def stop_tree(pid: int, *, timeout: float) -> None:
    """SIGTERM a service's process group and every process below it, bounded; SIGKILL what is left.

    Task processes may run in sessions of their own: they are found as descendants before signalling.

    :raises SandboxError: a process still alive after SIGKILL.
    """
    import psutil

    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, KILL_TIMEOUT)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(sig)
        _, alive = psutil.wait_procs(tree, timeout=wait)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not alive:
            return
    left = [p.pid for p in tree if command_line(p.pid) is not None]
    if left:
        raise SandboxError(f"pids {left} outlived SIGKILL: look at them by hand")


def stop_all(layout: SandboxLayout, say: Say) -> list[str]:
    """Stop every local deployment started on this sandbox; return the errors (sandbox down goes on)."""
    errors = []
    for known in INSTANCES.values():
        deployment = LocalDeployment(layout, known)
        if deployment.started():
            try:
                deployment.down(say)
            except SandboxError as error:
                errors.append(str(error))
    return errors


__all__ = ["DEFAULT_USERS", "INSTANCES", "Instance", "LocalDeployment", "instance", "stop_all", "stop_tree"]
