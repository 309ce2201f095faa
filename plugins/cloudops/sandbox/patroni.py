"""The sandbox's Patroni cluster (``ledger_patroni``): one etcd (Debian's ``etcd-server``) as Patroni's
store, and two PostgreSQL 15 nodes, each managed by its own Patroni from PyPI.

Patroni runs from a venv of its own built on the machine's Python (``/usr/bin/python3``), because it runs
as the ``postgres`` OS user and that user cannot execute an interpreter under root's 0700 home. The venv
is built once by ``make sandbox`` (:func:`prepare_patroni_venv`, ``cloudops sandbox prepare``) from the
pinned ``include/sandbox/patroni-requirements.txt`` and shared by every sandbox on the machine; ``up``
never downloads anything and refuses, naming the remedy, when the venv is missing.

Settings chosen for a drill sandbox, not for production: ``ttl`` 20 s, ``loop_wait`` 2 s and
``retry_timeout`` 5 s (loop_wait + 2 x retry_timeout <= ttl, as Patroni requires), so a cluster forms and
a replica follows a new leader within seconds; a crash is detected when the leader key expires (20 s).
``use_pg_rewind`` with ``wal_log_hints`` and data checksums, so that an old leader rejoins by itself. The
REST API asks for a login on its unsafe endpoints (``/switchover``...): the ``*_api`` connections carry it.

``up`` starts the node that led last first (recorded at ``down``) and waits until it leads, so that a
warm restart keeps the same leader; ``down`` stops replicas before the leader, so that none takes over.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import pwd
import shlex
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cloudops.errors import SandboxError
from cloudops.sandbox.layout import LOOPBACK, SandboxLayout
from cloudops.sandbox.postgres import PASSWORD_KEY as CLOUDOPS_PASSWORD_KEY
from cloudops.sandbox.postgres import ROLE as CLOUDOPS_ROLE
from cloudops.sandbox.process import (
    RUNNING,
    STALE,
    Binary,
    Daemon,
    Say,
    as_user,
    command_line,
    run,
    spawn_detached,
    stop_daemon,
    terminate,
    wait_until,
    write_if_changed,
)

if TYPE_CHECKING:
    from cloudops.sandbox.credentials import CredentialStore
    from cloudops.sandbox.plan import ClusterPlan, MemberPlan

VENV_LOCK_TIMEOUT = 600.0
VENV_MARKER = ".cloudops-complete"
VENV_REMEDY = "run `make sandbox` (or `cloudops sandbox prepare`): it builds Patroni's venv once"
API_LOGIN = "cloudops"
API_PASSWORD_KEY = "patroni_api"
SUPERUSER_PASSWORD_KEY = "patroni_superuser"
REPLICATION_PASSWORD_KEY = "patroni_replication"
REWIND_PASSWORD_KEY = "patroni_rewind"
DEFAULT_DATABASE = "ledger"
LEADER_FILE = "patroni-leader"
SOCKET_PATH_MAX = 100


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def _flock(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (bounded wait): two sandboxes never build the venv together."""
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SandboxError(
                        f"{path} is still locked after {timeout:.0f} s: another sandbox builds Patroni's venv"
                    ) from None
                time.sleep(0.5)
        yield


def _venv_ready(venv: Path, digest: str) -> bool:
    try:
        return (venv / VENV_MARKER).read_text().strip() == digest and (venv / "bin" / "patroni").is_file()
    except OSError:
        return False


def prepare_patroni_venv(layout: SandboxLayout, say: Say) -> Path:
    """Build Patroni's venv from the pinned requirements unless it is already there (idempotent).

    The only step of the sandbox that downloads (from PyPI), called by ``make sandbox``. A venv cannot be
    moved once built (its scripts name their interpreter), so it is built in place under a lock, and a
    marker holding the requirements' digest says it is complete; an unfinished one is built again.
    Installs with uv when ``CLOUDOPS_SANDBOX_UV`` names it (the Makefile does), else with pip.

    :raises SandboxError: the system Python cannot make a venv, or the install fails.
    """
    venv = layout.patroni_venv
    requirements = layout.patroni_requirements
    digest = _digest(requirements)
    if _venv_ready(venv, digest):
        say(f"patroni venv: {venv} (cached)")
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    venv.parent.chmod(0o755)  # the postgres OS user runs Patroni from here
    log = layout.log_file("patroni-venv")
    with _flock(venv.parent / f"{venv.name}.lock", VENV_LOCK_TIMEOUT):
        if _venv_ready(venv, digest):
            say(f"patroni venv: {venv} (built by another sandbox meanwhile)")
            return venv
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        uv = os.environ.get("CLOUDOPS_SANDBOX_UV")
        python = str(layout.system_python)
        create = [python, "-m", "venv", *(["--without-pip"] if uv else []), str(venv)]
        run(create, what=f"patroni venv: {python} -m venv", log_path=log, timeout=120)
        if uv:
            install = [
                *shlex.split(uv),
                "pip",
                "install",
                "--quiet",
                "--python",
                str(venv / "bin" / "python"),
            ]
        else:
            install = [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ]
        run(
            [*install, "--no-deps", "-r", str(requirements)],
            what="patroni venv: install the pinned requirements",
            log_path=log,
            timeout=600,
        )
        run([str(venv / "bin" / "patroni"), "--version"], what="patroni --version", log_path=log, timeout=60)
        (venv / VENV_MARKER).write_text(f"{digest}\n")
        venv.chmod(0o755)
    say(f"patroni venv: built {venv} in {time.monotonic() - started:.1f} s")
    return venv


def _http_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET a JSON document from a local REST API: (status, body); Patroni answers 503 with a body too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


log = logging.getLogger(__name__)


class EtcdServer:
    """Patroni's store: a one-member etcd on loopback, data under the sandbox's data root."""

    def __init__(self, layout: SandboxLayout) -> None:
        self.layout = layout
        self.name = "etcd"
        self.port = layout.port("etcd_client")
        self.peer_port = layout.port("etcd_peer")
        self.address = f"{LOOPBACK}:{self.port}"
        self.data_dir = layout.data_root / "etcd"
        self.log = layout.log_file(self.name)
        self.daemon = Daemon(layout.pid_file(self.name), marker=f"--data-dir={self.data_dir}")
        self.detail = f"store of the Patroni cluster; peer {LOOPBACK}:{self.peer_port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def binaries(self) -> list[Binary]:
        return [Binary("etcd", self.layout.etcd, "etcd-server")]

    def endpoints(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, self.port), (LOOPBACK, self.peer_port)]

    def _healthy(self) -> bool:
        status, body = _http_json(f"{self.url}/health")
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"

    def ensure(self, say: Say) -> None:
        state, pid = self.daemon.state()
        if state == RUNNING and pid is not None:
            wait_until(self._healthy, what=self.name, log_path=self.log, timeout=30)
            say(f"{self.name}: already running (pid {pid}) on {self.address}")
            return
        if state == STALE:
            self.daemon.forget()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        member = f"sandbox-{self.layout.port_offset}"
        proc = spawn_detached(
            [
                str(self.layout.etcd),
                f"--name={member}",
                f"--data-dir={self.data_dir}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={member}={peer}",
                f"--initial-cluster-token=cloudops-{member}",
                "--initial-cluster-state=new",
                # One member on loopback: elect itself quickly (the defaults, 100 ms and 1 s, are for
                # networks), which is most of the time etcd takes to become healthy.
                "--heartbeat-interval=50",
                "--election-timeout=250",
                "--logger=zap",
                "--log-outputs=stderr",
                "--log-level=warn",
            ],
            log_path=self.log,
            cwd=self.data_dir.parent,
        )
        wait_until(
            self._healthy, what=self.name, log_path=self.log, timeout=30, alive=lambda: proc.poll() is None
        )
        self.daemon.record(proc.pid)
        say(f"{self.name}: started (pid {proc.pid}) on {self.address}")

    def connections(self) -> dict[str, dict[str, Any]]:
        return {}

    def stop(self, say: Say) -> None:
        stop_daemon(self.daemon, what=self.name, say=say, timeout=30)


class PatroniCluster:
    """The two nodes of the sandbox's Patroni cluster and what concerns them together: which starts first,
    when the cluster has formed, the roles and database Airflow uses, and the order of stopping."""

    def __init__(
        self, layout: SandboxLayout, plan: ClusterPlan, store: CredentialStore, etcd: EtcdServer
    ) -> None:
        self.layout, self.plan, self.store, self.etcd = layout, plan, store, etcd
        self.database = plan.probe_database or DEFAULT_DATABASE
        self.nodes = [PatroniNode(self, index, member) for index, member in enumerate(plan.members)]
        self._stopped = False
        try:
            last = self._leader_file().read_text().strip()
        except OSError:
            last = ""
        # Fixed once: settle() rewrites the file while the nodes still ask who is first and last.
        self._order = sorted(self.nodes, key=lambda node: node.member.name != last)

    def _leader_file(self) -> Path:
        return self.layout.run_dir / LEADER_FILE

    def start_order(self) -> list[PatroniNode]:
        """The node that led when the cluster was last stopped first (it takes the lead again at once)."""
        return list(self._order)

    def is_first(self, node: PatroniNode) -> bool:
        return self.start_order()[0] is node

    def is_last(self, node: PatroniNode) -> bool:
        return self.start_order()[-1] is node

    def members(self) -> list[dict[str, Any]]:
        """Patroni's own view (``GET /cluster``), from the first node that answers."""
        for node in self.nodes:
            try:
                status, body = _http_json(f"{node.api_url}/cluster")
            except (OSError, ValueError):
                continue
            if status == 200 and isinstance(body, dict):
                return list(body.get("members") or [])
        return []

    def leader(self) -> str | None:
        return next((m["name"] for m in self.members() if m.get("role") == "leader"), None)

    def settle(self, say: Say) -> None:
        """Wait until one leader runs and every other node streams from it, then make sure of the role and
        database Airflow's connections use (created on the leader; replication brings them to the others).
        """
        expected = len(self.nodes) - 1

        def formed() -> bool:
            members = self.members()
            leaders = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
            streaming = [m for m in members if m.get("role") != "leader" and m.get("state") == "streaming"]
            return len(leaders) == 1 and len(streaming) == expected

        started = time.monotonic()
        last = self.nodes[-1]
        wait_until(
            formed, what=f"{self.plan.name}: a leader and a streaming replica", log_path=last.log, timeout=180
        )
        leader_name = self.leader()
        leader = next(node for node in self.nodes if node.member.name == leader_name)
        self._ensure_role_and_database(leader, say)
        self._leader_file().write_text(f"{leader_name}\n")
        roles = ", ".join(f"{m.get('name')} {m.get('role')} ({m.get('state')})" for m in self.members())
        say(f"{self.plan.name}: {roles}; formed in {time.monotonic() - started:.1f} s")

    def _ensure_role_and_database(self, leader: PatroniNode, say: Say) -> None:
        import psycopg
        from psycopg import sql

        password = self.store.password(CLOUDOPS_PASSWORD_KEY)
        try:
            with psycopg.connect(
                host=LOOPBACK, port=leader.pg_port, user=CLOUDOPS_ROLE, password=password, dbname="postgres"
            ):
                login_works = True
        except psycopg.OperationalError:
            login_works = False  # no role yet, or a password from an earlier sandbox: (re)set below
        with psycopg.connect(
            host=str(leader.base), port=leader.pg_port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            if not login_works:
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [CLOUDOPS_ROLE]).fetchone()
                conn.execute(
                    sql.SQL("{} ROLE {} WITH LOGIN SUPERUSER REPLICATION PASSWORD {}").format(
                        sql.SQL("ALTER" if exists else "CREATE"),
                        sql.Identifier(CLOUDOPS_ROLE),
                        sql.Literal(password),
                    )
                )
                say(f"{self.plan.name}: role {CLOUDOPS_ROLE} {'password reset' if exists else 'created'}")
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.database]).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(self.database), sql.Identifier(CLOUDOPS_ROLE)
                    )
                )
                say(f"{self.plan.name}: database {self.database} created on {leader.member.name}")

    def stop_all(self, say: Say) -> None:
        """Stop replicas before the leader (so that none takes over), once; record who led."""
        if self._stopped:
            return
        self._stopped = True
        leader = self.leader()
        if leader:
            self.layout.run_dir.mkdir(parents=True, exist_ok=True)
            self._leader_file().write_text(f"{leader}\n")
        for node in sorted(self.nodes, key=lambda n: n.member.name == leader):
            node.stop_self(say)


class PatroniNode:
    """One node: a Patroni (as the postgres OS user) and the PostgreSQL 15 it manages."""

    def __init__(self, cluster: PatroniCluster, index: int, member: MemberPlan) -> None:
        layout = cluster.layout
        self.cluster, self.member, self.layout = cluster, member, layout
        letter = "ab"[index]
        self.name = f"patroni-{letter}"
        self.pg_port = layout.port(f"patroni_{letter}_postgres")
        self.api_port = layout.port(f"patroni_{letter}_api")
        self.address = f"{LOOPBACK}:{self.pg_port}"
        self.base = layout.data_root / "patroni" / member.name
        self.data_dir = self.base / "data"
        self.config = self.base / "patroni.yml"
        self.log = layout.log_file(self.name)
        self.daemon = Daemon(layout.pid_file(self.name), marker=str(self.config))
        self.user = layout.os_user("postgres")
        self.detail = f"{member.name} of {cluster.plan.name}; REST API {LOOPBACK}:{self.api_port}"

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    def binaries(self) -> list[Binary]:
        bindir = self.layout.pg_bindir
        return [
            Binary("patroni", self.layout.patroni_venv / "bin" / "patroni", "", remedy=VENV_REMEDY),
            *(Binary(name, bindir / name, "postgresql-15") for name in ("initdb", "pg_ctl", "pg_rewind")),
        ]

    def endpoints(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, self.pg_port), (LOOPBACK, self.api_port)]

    def _settings(self) -> dict[str, Any]:
        store = self.cluster.store
        others = [n for n in self.cluster.nodes if n is not self]
        return {
            "scope": self.cluster.plan.name,
            "namespace": "/cloudops-sandbox/",
            "name": self.member.name,
            "log": {"level": "INFO", "format": "%(asctime)s %(levelname)s: %(message)s"},
            "restapi": {
                "listen": f"{LOOPBACK}:{self.api_port}",
                "connect_address": f"{LOOPBACK}:{self.api_port}",
                "authentication": {"username": API_LOGIN, "password": store.password(API_PASSWORD_KEY)},
            },
            "ctl": {"insecure": False},
            "etcd3": {"hosts": [self.cluster.etcd.address]},
            "bootstrap": {
                "dcs": {
                    "ttl": 20,
                    "loop_wait": 2,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 1048576,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "512MB",
                            "max_connections": 50,
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"{LOOPBACK}:{self.pg_port}",
                "connect_address": f"{LOOPBACK}:{self.pg_port}",
                "data_dir": str(self.data_dir),
                "bin_dir": str(self.layout.pg_bindir),
                "pgpass": str(self.base / "pgpass"),
                "use_unix_socket": True,
                "authentication": {
                    "superuser": {"username": "postgres", "password": store.password(SUPERUSER_PASSWORD_KEY)},
                    "replication": {
                        "username": "replicator",
                        "password": store.password(REPLICATION_PASSWORD_KEY),
                    },
                    "rewind": {
                        "username": "cloudops_rewind",
                        "password": store.password(REWIND_PASSWORD_KEY),
                    },
                },
                "parameters": {
                    "unix_socket_directories": str(self.base),
                    "unix_socket_permissions": "0700",
                    "shared_buffers": "64MB",
                    "logging_collector": "off",
                    "log_line_prefix": "%m [%p] %q%u@%d ",
                },
                "pg_hba": [
                    "local all all trust",
                    "local replication all trust",
                    "host all all 127.0.0.1/32 scram-sha-256",
                    "host replication all 127.0.0.1/32 scram-sha-256",
                ],
                "basebackup": [{"checkpoint": "fast"}],
            },
            "watchdog": {"mode": "off"},
            "tags": {"clonefrom": False, "nofailover": False, "noloadbalance": False, "nosync": False},
            # Not a Patroni setting: who else is in the cluster, for the on-call reading this file.
            "x-cloudops": {"peers": [f"{n.member.name} {n.address}" for n in others]},
        }

    def _chown(self, path: Path) -> None:
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _prepare(self) -> bool:
        """Write the node's folder and configuration; whether the configuration changed."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o700)
        self._chown(self.base.parent)
        self._chown(self.base)
        socket_path = self.base / f".s.PGSQL.{self.pg_port}"
        if len(str(socket_path)) > SOCKET_PATH_MAX:
            raise SandboxError(
                f"{self.name}: socket path {socket_path} is too long for a unix socket: "
                "set CLOUDOPS_SANDBOX_DIR to a shorter path"
            )
        changed = write_if_changed(self.config, yaml.safe_dump(self._settings(), sort_keys=False), mode=0o600)
        self._chown(self.config)
        return changed

    def _api_up(self) -> bool:
        status, _ = _http_json(f"{self.api_url}/patroni")
        return status in (200, 503)

    def _leads(self) -> bool:
        status, body = _http_json(f"{self.api_url}/patroni")
        return (
            status == 200
            and isinstance(body, dict)
            and body.get("role") in ("primary", "master")
            and (body.get("state") == "running")
        )

    def ensure(self, say: Say) -> None:
        """Start Patroni if it does not run (it starts, bootstraps or clones its PostgreSQL); the first node
        is waited for until it leads, the last until the whole cluster has formed."""
        changed = self._prepare()
        state, pid = self.daemon.state()
        if state == RUNNING and pid is not None:
            if changed:
                os.kill(pid, signal.SIGHUP)  # Patroni reloads its configuration on SIGHUP
                say(f"{self.name}: configuration changed: Patroni reloads it")
            wait_until(self._api_up, what=f"{self.name} REST API", log_path=self.log, timeout=30)
            say(f"{self.name}: already running (pid {pid}) on {self.address}")
        else:
            if state == STALE:
                self.daemon.forget()
            venv = self.layout.patroni_venv
            env = {
                "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
                "HOME": str(self.base),
                "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8",
            }
            proc = spawn_detached(
                [str(venv / "bin" / "patroni"), str(self.config)],
                log_path=self.log,
                env=env,
                cwd=self.base,
                user=self.user,
            )
            wait_until(
                self._api_up,
                what=f"{self.name} REST API",
                log_path=self.log,
                timeout=60,
                alive=lambda: proc.poll() is None,
            )
            self.daemon.record(proc.pid)
            say(
                f"{self.name}: Patroni started (pid {proc.pid}); PostgreSQL on {self.address}, "
                f"API {self.api_url}"
            )
            if self.cluster.is_first(self):
                wait_until(
                    lambda: self.cluster.leader() is not None,
                    what=f"{self.name}: a leader of {self.cluster.plan.name}",
                    log_path=self.log,
                    timeout=120,
                    alive=lambda: proc.poll() is None,
                )
        if self.cluster.is_last(self):
            self.cluster.settle(say)

    def connections(self) -> dict[str, dict[str, Any]]:
        store = self.cluster.store
        found: dict[str, dict[str, Any]] = {
            self.member.conn_id: {
                "conn_type": "postgres",
                "host": LOOPBACK,
                "port": self.pg_port,
                "login": CLOUDOPS_ROLE,
                "password": store.password(CLOUDOPS_PASSWORD_KEY),
                "schema": self.cluster.database,
                "extra": {},
            }
        }
        if self.member.api_conn_id:
            found[self.member.api_conn_id] = {
                "conn_type": "http",
                "host": LOOPBACK,
                "port": self.api_port,
                "schema": "http",
                "login": API_LOGIN,
                "password": store.password(API_PASSWORD_KEY),
                "extra": {},
            }
        return found

    def stop(self, say: Say) -> None:
        """Stop the cluster's nodes, replicas first (see :meth:`PatroniCluster.stop_all`)."""
        self.cluster.stop_all(say)

    def stop_self(self, say: Say) -> None:
        """Stop this node's Patroni (which stops its PostgreSQL), then any PostgreSQL it left running."""
        state, pid = self.daemon.state()
        if state == RUNNING and pid is not None:
            terminate(pid, what=f"{self.name} (Patroni)", timeout=90)
            say(f"{self.name}: stopped (pid {pid})")
        elif state == STALE:
            say(f"{self.name}: pid {pid} is not this sandbox's Patroni; pid file removed, nothing stopped")
        else:
            say(f"{self.name}: not running")
        self.daemon.forget()
        try:
            leftover: int | None = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            leftover = None
        if leftover is not None and str(self.data_dir) in (command_line(leftover) or ""):
            argv = [
                str(self.layout.pg_bindir / "pg_ctl"),
                "stop",
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
            ]
            run(as_user(argv, self.user), what=f"{self.name}: pg_ctl stop", log_path=self.log, timeout=90)
            say(f"{self.name}: stopped the PostgreSQL Patroni left running (pid {leftover})")


class SandboxPatroniControl:
    """The crash mode's :class:`~cloudops.failover.patroni.NodeControl` for the sandbox's Patroni nodes:
    ``crash`` kills a node's Patroni and its PostgreSQL together (SIGKILL, Patroni first so that it
    cannot restart the server), ``start`` starts the node's Patroni again as ``up`` does (it rewinds or
    clones its PostgreSQL and rejoins). Only processes this sandbox recorded are signalled."""

    def __init__(self, layout: SandboxLayout | None = None) -> None:
        from cloudops.sandbox.credentials import CredentialStore
        from cloudops.sandbox.plan import load_plan

        self.layout = layout or SandboxLayout.from_environment()
        plan = load_plan(self.layout.catalog_path)
        if plan.patroni is None:
            raise SandboxError("the sandbox catalog has no Patroni cluster: nothing to crash")
        self.cluster = PatroniCluster(
            self.layout, plan.patroni, CredentialStore(self.layout.credentials_file), EtcdServer(self.layout)
        )

    def _node(self, member: str) -> PatroniNode:
        for node in self.cluster.nodes:
            if node.member.name == member:
                return node
        raise SandboxError(f"the sandbox's Patroni cluster has no node {member!r}")

    def crash(self, member: str) -> str:
        node = self._node(member)
        state, patroni_pid = node.daemon.state()
        try:
            postmaster: int | None = int((node.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            postmaster = None
        if postmaster is not None and str(node.data_dir) not in (command_line(postmaster) or ""):
            postmaster = None
        killed = []
        for pid, what in ((patroni_pid if state == RUNNING else None, "Patroni"), (postmaster, "PostgreSQL")):
            if pid is not None:
                terminate(pid, what=f"{node.name} ({what})", timeout=30, sig=signal.SIGKILL)
                killed.append(f"{what} (pid {pid})")
        node.daemon.forget()
        return f"{member}: killed {' and '.join(killed) or 'nothing (not running)'} with SIGKILL"

    def start(self, member: str) -> str:
        node = self._node(member)
        said: list[str] = []
        node.ensure(said.append)
        return f"{member}: " + "; ".join(said)


def sandbox_node_control(cluster: str, api_ports: Mapping[str, int | None]) -> SandboxPatroniControl | None:
    """The sandbox's node control when the sandbox runs ``cluster`` itself: the same cluster name and
    every member's REST API on the port the sandbox gave that node; None otherwise (no sandbox here,
    or another cluster), so that a production cluster is never signalled through the sandbox.

    :param api_ports: member name → the port of its REST API connection.
    """
    try:
        control = SandboxPatroniControl()
    except (SandboxError, OSError) as error:
        log.info("no sandbox node control for %s: %s", cluster, error)
        return None
    nodes = {node.member.name: node.api_port for node in control.cluster.nodes}
    if control.cluster.plan.name != cluster or nodes != dict(api_ports):
        log.info(
            "no sandbox node control for %s: the sandbox runs %s %s",
            cluster,
            control.cluster.plan.name,
            nodes,
        )
        return None
    return control


def api_answer(url: str) -> tuple[int, Any]:
    """What a Patroni REST API (or etcd) answers to a GET, for status lines and tests."""
    return _http_json(url)


__all__ = [
    "EtcdServer",
    "PatroniCluster",
    "PatroniNode",
    "SandboxPatroniControl",
    "api_answer",
    "prepare_patroni_venv",
    "sandbox_node_control",
]
