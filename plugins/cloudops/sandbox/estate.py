"""Start, stop and inspect the whole sandbox estate described by runbooks/sandbox.yaml.

`up` is idempotent: it checks binaries and ports of everything that is not running before it starts
anything, then brings the components up in independent chains run side by side (PostgreSQL primary then
replica; the PostgreSQL scratch server; MariaDB then its GTID replica; the MariaDB scratch server; etcd
then the two Patroni nodes; moto; each fleet host, a Debian system of its own booted by its supervisor; the
SMTP sink; Redis, the broker of the local Celery deployments), reusing what runs and seeding what is
missing, and finally writes the Airflow connections to <sandbox>/airflow.env: one per server, plus each
cluster's probe connection (all its members in one host list, as the application connects) and the
pg_rewind source connections; then it starts the probe process (`cloudops probe run`, one sample per SLO
target per minute) with them. `down` stops only processes whose pid file and command line say this sandbox
started them, the Celery deployments (cloudops.deployment.local) and the probes first, and keeps all data
on disk.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cloudops.errors import SandboxError
from cloudops.sandbox.credentials import CredentialStore
from cloudops.sandbox.extra_hosts import extra_hosts
from cloudops.sandbox.hosts import HostFleet, SandboxHost, unmount_leftovers
from cloudops.sandbox.layout import SandboxLayout, render_env_file
from cloudops.sandbox.mariadb import MariadbServer
from cloudops.sandbox.moto import MotoServer
from cloudops.sandbox.patroni import EtcdServer, PatroniCluster
from cloudops.sandbox.plan import EstatePlan, load_plan
from cloudops.sandbox.postgres import PostgresServer
from cloudops.sandbox.probes import ProbeProcess
from cloudops.sandbox.process import (
    POLL_INTERVAL,
    RUNNING,
    Binary,
    Daemon,
    Say,
    port_conflict,
    port_in_use,
    write_if_changed,
)
from cloudops.sandbox.redis import RedisServer
from cloudops.sandbox.smtp import SmtpSink

LOCK_TIMEOUT = 600.0  # a cold `up` by another process may hold the lock this long


class Component(Protocol):
    """What every sandbox component offers the orchestration."""

    name: str
    address: str
    detail: str
    daemon: Daemon
    log: Path

    def binaries(self) -> list[Binary]: ...
    def endpoints(self) -> list[tuple[str, int]]: ...
    def ensure(self, say: Say) -> None: ...
    def stop(self, say: Say) -> None: ...
    def connections(self) -> dict[str, dict[str, Any]]: ...


@dataclass(frozen=True)
class ComponentStatus:
    """One row of `cloudops sandbox status`."""

    component: str
    address: str
    pid: int | None
    state: str  # running | stopped | stale pid
    detail: str = ""


def say(line: str) -> None:
    """Print one progress line of the sandbox."""
    print(f"sandbox: {line}", flush=True)


_say = say


def _chains(layout: SandboxLayout) -> list[list[Component]]:
    """Build the components, grouped in chains that may start in parallel (in order within a chain)."""
    plan = load_plan(layout.catalog_path)
    store = CredentialStore(layout.credentials_file)
    primary = PostgresServer(layout, plan.postgres_primary, store)
    postgres: list[Component] = [primary]
    if plan.postgres_replica is not None:
        postgres.append(PostgresServer(layout, plan.postgres_replica, store, primary=primary))
    mariadb_primary = MariadbServer(layout, plan.mariadb, store)
    mariadb: list[Component] = [mariadb_primary]
    if plan.mariadb_replica is not None:
        mariadb.append(MariadbServer(layout, plan.mariadb_replica, store, primary=mariadb_primary))
    patroni: list[list[Component]] = []
    if plan.patroni is not None:
        etcd = EtcdServer(layout)
        patroni.append([etcd, *PatroniCluster(layout, plan.patroni, store, etcd).start_order()])
    all_hosts = (*plan.hosts, *extra_hosts(layout))
    fleet = HostFleet(layout, all_hosts)
    # The first host also serves the catalog's HTTP endpoints (its health page).
    hosts: list[list[Component]] = [
        [SandboxHost(fleet, host, i, plan.http_conn_ids if i == 0 else ())]
        for i, host in enumerate(all_hosts)
    ]
    scratch: list[list[Component]] = []
    if plan.postgres_scratch is not None:
        scratch.append([PostgresServer(layout, plan.postgres_scratch, store)])
    if plan.mariadb_scratch is not None:
        scratch.append([MariadbServer(layout, plan.mariadb_scratch, store)])
    return [
        postgres,
        mariadb,
        *patroni,
        *scratch,
        [MotoServer(layout, plan, store)],
        *hosts,
        [SmtpSink(layout, plan.smtp_conn_ids)],
        [RedisServer(layout, store)],
    ]


@contextmanager
def _locked(layout: SandboxLayout) -> Iterator[None]:
    """Serialise `up` and `down` of one sandbox across processes (the lock dies with its holder)."""
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    with (layout.run_dir / "sandbox.lock").open("a") as handle:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SandboxError(
                        f"another `cloudops sandbox` command still holds {handle.name} after "
                        f"{LOCK_TIMEOUT:.0f} s: wait for it to finish"
                    ) from None
                time.sleep(POLL_INTERVAL)
        yield


def _preflight(layout: SandboxLayout, components: list[Component]) -> None:
    """Fail before starting anything when a binary is missing or a port is taken by someone else."""
    to_start = [c for c in components if c.daemon.state()[0] != RUNNING]
    missing: list[str] = []
    hosts = [c for c in to_start if isinstance(c, SandboxHost)]
    if hosts:
        missing += hosts[0].fleet.requirements()
    for component in to_start:
        for binary in component.binaries():
            problem = binary.problem()
            if problem and problem not in missing:
                missing.append(problem)
    if missing:
        raise SandboxError("; ".join(missing))
    taken = [
        port_conflict(host, port, layout.port_offset)
        for component in to_start
        for host, port in component.endpoints()
        if port_in_use(host, port)
    ]
    if taken:
        raise SandboxError("; ".join(taken))


def _ensure_chain(chain: list[Component], say: Say) -> None:
    for component in chain:
        try:
            component.ensure(say)
        except SandboxError:
            raise
        except Exception as exc:
            raise SandboxError(f"{component.name}: {type(exc).__name__}: {exc}; see {component.log}") from exc


def up(say: Say = _say) -> None:
    """Start what is not running, reuse what is, seed what is missing, and write airflow.env.

    :raises SandboxError: naming the component, and how to fix it, when something cannot start.
    """
    started = time.monotonic()
    layout = SandboxLayout.from_environment()
    chains = _chains(layout)
    components = [c for chain in chains for c in chain]
    with _locked(layout):
        _preflight(layout, components)
        layout.ensure_dirs()  # only now, so a failed preflight leaves no data directory behind
        layout.record_port_offset()
        with ThreadPoolExecutor(max_workers=len(chains), thread_name_prefix="sandbox") as pool:
            futures = [pool.submit(_ensure_chain, chain, say) for chain in chains]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise SandboxError("\n".join(str(e) for e in errors)) from errors[0]
        connections: dict[str, dict[str, Any]] = {}
        probes = ProbeProcess(layout)
        settings: dict[str, str] = probes.settings()
        for component in components:
            connections.update(component.connections())
            if isinstance(component, MotoServer):
                settings.update(component.settings())
            if isinstance(component, PostgresServer) and component.role != "scratch":
                connections.update(_rewind_connections(load_plan(layout.catalog_path), component))
            if isinstance(component, MariadbServer) and not component.scratch:
                connections.update(_replication_connections(load_plan(layout.catalog_path), component))
        connections.update(
            cluster_connections(
                load_plan(layout.catalog_path), connections, CredentialStore(layout.credentials_file)
            )
        )
        changed = write_if_changed(
            layout.env_file, render_env_file(layout.dir, connections, settings), mode=0o600
        )
        # Last: it reads the connections just written (and again whenever they change).
        probes.ensure(say, restart=changed)
    if layout.data_root_is_fallback:
        say(layout.data_note)
    say(f"{'wrote' if changed else 'unchanged:'} {layout.env_file} ({len(connections)} connections)")
    say(f"ready in {time.monotonic() - started:.1f} s")


def _replication_connections(plan: EstatePlan, server: MariadbServer) -> dict[str, dict[str, Any]]:
    """The replication source connection of ``server`` (the account its replicas log in with), under
    the name its cluster member gives it."""
    return {
        member.replication_conn_id: server.replication_connection()
        for cluster in plan.clusters
        for member in cluster.members
        if member.replication_conn_id and member.conn_id == server.plan.conn_id
    }


def _rewind_connections(plan: EstatePlan, server: PostgresServer) -> dict[str, dict[str, Any]]:
    """The pg_rewind source connection of ``server``, under the name its cluster member gives it."""
    return {
        member.rewind_conn_id: server.rewind_connection()
        for cluster in plan.clusters
        for member in cluster.members
        if member.rewind_conn_id and member.conn_id == server.plan.conn_id
    }


def cluster_connections(
    plan: EstatePlan, connections: dict[str, dict[str, Any]], store: CredentialStore
) -> dict[str, dict[str, Any]]:
    """Each cluster's probe connection, the application's way in: every member in one host list.

    PostgreSQL (libpq multi-host): ``host`` ``h1,h2``, ``extra.port`` ``p1,p2`` and
    ``extra.target_session_attrs`` ``read-write``, so libpq itself finds the primary. MariaDB
    (first-writable): the same lists; the probe takes the first server whose read_only is off, and logs in
    as an account that read_only refuses.

    :raises SandboxError: a member's connection is not one the sandbox writes.
    """
    from cloudops.sandbox.mariadb import PROBE_PASSWORD_KEY, PROBE_USER

    found: dict[str, dict[str, Any]] = {}
    for cluster in plan.clusters:
        missing = [m.conn_id for m in cluster.members if m.conn_id not in connections]
        if missing:
            raise SandboxError(
                f"cluster {cluster.name}: the sandbox starts no server for connection(s) {', '.join(missing)}"
            )
        members = [connections[m.conn_id] for m in cluster.members]
        first = members[0]
        hosts = ",".join(str(c["host"]) for c in members)
        ports = ",".join(str(c["port"]) for c in members)
        database = cluster.probe_database or first.get("schema")
        if cluster.manager == "mariadb-gtid":
            found[cluster.probe_conn_id] = {
                "conn_type": "mysql",
                "host": hosts,
                "login": PROBE_USER,
                "password": store.password(PROBE_PASSWORD_KEY),
                "schema": database,
                "extra": {
                    "port": ports,
                    "routing": "first-writable",
                    "connect_timeout": 2,
                    "charset": "utf8mb4",
                },
            }
        else:
            found[cluster.probe_conn_id] = {
                "conn_type": "postgres",
                "host": hosts,
                "login": first["login"],
                "password": first["password"],
                "schema": database,
                "extra": {"port": ports, "target_session_attrs": "read-write", "connect_timeout": "2"},
            }
    return found


def down(say: Say = _say) -> None:
    """Stop what `up` started (recorded in pid files), replica before primary; keep all data on disk.

    :raises SandboxError: when a component could not be stopped (the others are still stopped).
    """
    layout = SandboxLayout.from_environment()
    chains = _chains(layout)
    errors: list[str] = []
    with _locked(layout):
        # The Celery deployments first: their services need the broker and databases stopped below.
        from cloudops.deployment.local import stop_all

        errors += stop_all(layout, say)
        # The probes next: stopping the estate is not an outage to record.
        try:
            ProbeProcess(layout).stop(say)
        except SandboxError as exc:
            errors.append(str(exc))
        # Hosts next and side by side: each waits for its own PID 1 to exit (30 hosts would take long).
        hosts = [c for chain in chains for c in chain if isinstance(c, SandboxHost)]
        if hosts:
            with ThreadPoolExecutor(max_workers=min(len(hosts), 8), thread_name_prefix="down") as pool:
                futures = [pool.submit(host.stop, say) for host in hosts]
            errors += [str(f.exception()) for f in futures if f.exception() is not None]
        for chain in reversed(chains):
            for component in reversed(chain):
                if isinstance(component, SandboxHost):
                    continue
                try:
                    component.stop(say)
                except SandboxError as exc:
                    errors.append(str(exc))
        try:
            unmount_leftovers(layout, say)
        except SandboxError as exc:
            errors.append(str(exc))
        if not errors:
            layout.forget_port_offset()
    if errors:
        raise SandboxError("\n".join(errors))


def status() -> list[ComponentStatus]:
    """Report every component from its pid file alone (fast; connects to nothing)."""
    layout = SandboxLayout.from_environment()
    rows = []
    for chain in _chains(layout):
        for component in chain:
            state, pid = component.daemon.state()
            detail = component.status_detail if isinstance(component, SandboxHost) else component.detail
            rows.append(ComponentStatus(component.name, component.address, pid, state, detail))
    probes = ProbeProcess(layout)
    state, pid = probes.daemon.state()
    rows.append(ComponentStatus(probes.name, probes.address, pid, state, probes.detail))
    from cloudops.deployment.local import INSTANCES, LocalDeployment

    for known in INSTANCES.values():
        deployment = LocalDeployment(layout, known)
        if deployment.started():
            rows += [ComponentStatus(*row) for row in deployment.status()]
    return rows


def format_status(rows: list[ComponentStatus]) -> str:
    """Render status rows as an aligned text table."""
    header = ("COMPONENT", "ADDRESS", "PID", "STATE", "DETAIL")
    table = [header] + [
        (r.component, r.address, str(r.pid) if r.pid is not None else "-", r.state, r.detail) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
        for row in table
    )


__all__ = ["ComponentStatus", "cluster_connections", "down", "format_status", "status", "up"]


# -- fleet hosts on their own ---------------------------------------------------------------------------


def _host_components(layout: SandboxLayout) -> list[SandboxHost]:
    return [c for chain in _chains(layout) for c in chain if isinstance(c, SandboxHost)]


def _select_hosts(
    layout: SandboxLayout, *, fleet: str | None = None, names: tuple[str, ...] = ()
) -> list[SandboxHost]:
    """The hosts of ``fleet`` and/or named ``names`` (every host when neither is given).

    :raises SandboxError: naming a host or fleet the sandbox does not have.
    """
    hosts = _host_components(layout)
    known_fleets = {h.host.fleet for h in hosts}
    if fleet is not None and fleet not in known_fleets:
        raise SandboxError(f"the sandbox has no fleet {fleet!r} (fleets: {', '.join(sorted(known_fleets))})")
    unknown = sorted(set(names) - {h.host.name for h in hosts})
    if unknown:
        raise SandboxError(
            f"the sandbox has no host {', '.join(unknown)} (hosts: {', '.join(h.host.name for h in hosts)})"
        )
    return [
        h for h in hosts if (fleet is None or h.host.fleet == fleet) and (not names or h.host.name in names)
    ]


def _each_in_parallel(hosts: list[SandboxHost], act: str, say: Say) -> None:
    def one(host: SandboxHost) -> None:
        getattr(host, act)(say)

    with ThreadPoolExecutor(max_workers=max(1, min(len(hosts), 8)), thread_name_prefix="hosts") as pool:
        futures = [pool.submit(one, h) for h in hosts]
    errors = [str(f.exception()) for f in futures if f.exception() is not None]
    if errors:
        raise SandboxError("\n".join(errors))


def add_hosts(fleet: str, count: int, say: Say = _say) -> Path:
    """Add a fleet of ``count`` hosts to the sandbox, start them and rewrite airflow.env.

    :return: the fleet's catalog file under the sandbox dir.
    """
    from cloudops.sandbox.extra_hosts import add_fleet

    layout = SandboxLayout.from_environment()
    plan = load_plan(layout.catalog_path)
    with _locked(layout):
        path = add_fleet(layout, fleet, count, {h.fleet for h in plan.hosts})
    say(f"fleet {fleet}: {count} hosts; catalog {path}")
    up(say)
    return path


def remove_hosts(fleet: str, say: Say = _say) -> None:
    """Stop the hosts of a fleet added with add_hosts, forget the fleet and drop its connections from
    airflow.env (the hosts' files stay on disk)."""
    from cloudops.sandbox.extra_hosts import remove_fleet

    layout = SandboxLayout.from_environment()
    with _locked(layout):
        _each_in_parallel(_select_hosts(layout, fleet=fleet), "stop", say)
        remove_fleet(layout, fleet)
    say(f"fleet {fleet}: removed")
    up(say)  # rewrites airflow.env without the fleet's connections


def reset_hosts(*, fleet: str | None = None, names: tuple[str, ...] = (), say: Say = _say) -> None:
    """Bring hosts back to their first-boot state (upper layer wiped, created again) and boot them."""
    layout = SandboxLayout.from_environment()
    with _locked(layout):
        hosts = _select_hosts(layout, fleet=fleet, names=names)
        started = time.monotonic()
        _each_in_parallel(hosts, "reset", say)
    say(f"reset {len(hosts)} hosts in {time.monotonic() - started:.1f} s")


def stop_hosts(names: tuple[str, ...], say: Say = _say) -> None:
    """Stop hosts (a host that is down, for fault tests); `start_hosts` or `up` boots them again."""
    layout = SandboxLayout.from_environment()
    with _locked(layout):
        _each_in_parallel(_select_hosts(layout, names=names), "stop", say)


def start_hosts(names: tuple[str, ...], say: Say = _say) -> None:
    """Boot hosts stopped by `stop_hosts`, or powered off from inside (`shutdown -h`)."""
    from cloudops.sandbox.host_boot import POWEROFF_REQUEST

    layout = SandboxLayout.from_environment()
    with _locked(layout):
        hosts = _select_hosts(layout, names=names)
        for host in hosts:
            (host.paths.control / POWEROFF_REQUEST).unlink(missing_ok=True)
        _each_in_parallel(hosts, "ensure", say)


__all__ += ["add_hosts", "remove_hosts", "reset_hosts", "start_hosts", "stop_hosts"]
