"""What the sandbox must start, read from runbooks/sandbox.yaml.

Only `plan_from_catalog` knows the catalog's shape; the components consume the EstatePlan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloudops.catalog import Catalog, load_catalog_file
from cloudops.catalog.models import CostSettings, SmtpNotification, SnsNotification
from cloudops.errors import SandboxError


@dataclass(frozen=True)
class DatabasePlan:
    name: str
    engine: str  # postgres | mariadb
    role: str  # primary | replica
    conn_id: str
    database: str
    cluster: str | None


@dataclass(frozen=True)
class MemberPlan:
    """One member of a sandbox cluster: its name, connection and (Patroni) REST API connection."""

    name: str
    conn_id: str
    api_conn_id: str | None = None
    rewind_conn_id: str | None = None
    replication_conn_id: str | None = None


@dataclass(frozen=True)
class ClusterPlan:
    """A sandbox cluster: the servers that make it are started by their own components; the probe's
    connection (the application's way in, every member in one host list) is written from them."""

    name: str
    manager: str
    members: tuple[MemberPlan, ...]
    probe_conn_id: str
    probe_database: str | None


@dataclass(frozen=True)
class HostPlan:
    name: str
    fleet: str
    os_family: str
    ssh_conn_id: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class AwsPlan:
    conn_id: str
    region: str
    bucket: str
    object_lock_mode: str | None
    object_lock_days: int | None
    encryption: str | None
    sns_topics: tuple[str, ...]


@dataclass(frozen=True)
class EstatePlan:
    estate: str
    postgres_primary: DatabasePlan
    postgres_replica: DatabasePlan | None
    mariadb: DatabasePlan
    mariadb_replica: DatabasePlan | None
    # The scratch servers the drills name (drill.scratch_conn_id): no database of their own.
    postgres_scratch: DatabasePlan | None
    mariadb_scratch: DatabasePlan | None
    databases: tuple[DatabasePlan, ...]
    aws: AwsPlan
    hosts: tuple[HostPlan, ...]
    smtp_conn_ids: tuple[str, ...]
    cost: CostSettings | None = None
    clusters: tuple[ClusterPlan, ...] = ()

    @property
    def patroni(self) -> ClusterPlan | None:
        """The Patroni cluster the sandbox runs (at most one, of two nodes), or None."""
        return next((c for c in self.clusters if c.manager == "patroni"), None)

    # HTTP connections of the catalog's endpoints: the sandbox serves them all from its first host.
    http_conn_ids: tuple[str, ...] = ()


def plan_from_catalog(catalog: Catalog) -> EstatePlan:
    """Map the validated sandbox catalog to the components to start.

    The sandbox runs one PostgreSQL cluster (the first postgres primary and its replica), one MariaDB
    server, a scratch server of each engine for the drills' scratch_conn_id, one AWS endpoint for the
    first AWS cloud and its repository, and one sshd per host.

    :raises SandboxError: when the catalog lacks something the sandbox needs.
    """
    databases = tuple(
        DatabasePlan(d.name, d.engine, d.role, d.conn_id, d.database, d.cluster) for d in catalog.databases
    )
    pg_primary = next((d for d in databases if d.engine == "postgres" and d.role == "primary"), None)
    mariadb = next((d for d in databases if d.engine == "mariadb" and d.role == "primary"), None)
    cloud = next((c for c in catalog.clouds if c.provider == "aws"), None)
    repo = next((r for r in catalog.repositories if cloud and r.cloud == cloud.name), None)
    if pg_primary is None or mariadb is None or cloud is None or repo is None:
        raise SandboxError(
            "the sandbox catalog must name a postgres primary, a mariadb database and an aws cloud "
            "with a repository"
        )
    pg_replica = next(
        (
            d
            for d in databases
            if d.engine == "postgres" and d.role == "replica" and d.cluster == pg_primary.cluster
        ),
        None,
    )
    mariadb_replica = next(
        (
            d
            for d in databases
            if d.engine == "mariadb"
            and d.role == "replica"
            and mariadb.cluster
            and d.cluster == mariadb.cluster
        ),
        None,
    )
    aws = AwsPlan(
        conn_id=cloud.aws_conn_id,
        region=cloud.region,
        bucket=repo.bucket,
        object_lock_mode=repo.object_lock.mode if repo.object_lock else None,
        object_lock_days=repo.object_lock.days if repo.object_lock else None,
        encryption=repo.encryption.mode,
        sns_topics=tuple(
            n.topic_arn.rsplit(":", 1)[-1] for n in catalog.notifications if isinstance(n, SnsNotification)
        ),
    )
    hosts = tuple(
        HostPlan(host.name, fleet.name, fleet.os_family, host.ssh_conn_id, tuple(host.groups))
        for fleet, host in catalog.hosts
    )
    smtp = tuple(n.smtp_conn_id for n in catalog.notifications if isinstance(n, SmtpNotification))
    http = tuple(dict.fromkeys(e.http_conn_id for e in catalog.endpoints if e.http_conn_id))
    if http and not hosts:
        raise SandboxError("the sandbox catalog has endpoints but no host to serve them from")
    return EstatePlan(
        estate=catalog.estate,
        postgres_primary=pg_primary,
        postgres_replica=pg_replica,
        mariadb=mariadb,
        mariadb_replica=mariadb_replica,
        postgres_scratch=_scratch_plan(catalog, "postgres", "postgres"),
        mariadb_scratch=_scratch_plan(catalog, "mariadb", ""),
        databases=databases,
        aws=aws,
        hosts=hosts,
        smtp_conn_ids=smtp,
        cost=catalog.cost,
        clusters=_cluster_plans(catalog),
        http_conn_ids=http,
    )


def _cluster_plans(catalog: Catalog) -> tuple[ClusterPlan, ...]:
    """The catalog's clusters as the sandbox starts them.

    :raises SandboxError: a cluster the sandbox cannot run (an RDS manager: moto emulates no failover;
        more than one Patroni cluster, or one that is not two nodes).
    """
    conn_of = {d.name: d.conn_id for d in catalog.databases}
    plans = []
    for cluster in catalog.clusters:
        if cluster.manager not in ("native-pg", "patroni", "mariadb-gtid"):
            raise SandboxError(
                f"cluster {cluster.name!r}: the sandbox runs native-pg, patroni and mariadb-gtid clusters, "
                f"not {cluster.manager}"
            )
        members = tuple(
            MemberPlan(
                m.member_name,
                conn_of[m.database] if m.database else (m.conn_id or ""),
                m.patroni_api_conn_id,
                m.rewind_conn_id,
                m.replication_conn_id,
            )
            for m in cluster.members
        )
        plans.append(
            ClusterPlan(cluster.name, cluster.manager, members, cluster.probe.conn_id, cluster.probe.database)
        )
    patroni = [p for p in plans if p.manager == "patroni"]
    if len(patroni) > 1 or (patroni and len(patroni[0].members) != 2):
        raise SandboxError("the sandbox runs one Patroni cluster of two nodes: change runbooks/sandbox.yaml")
    return tuple(plans)


def _scratch_plan(catalog: Catalog, engine: str, maintenance_database: str) -> DatabasePlan | None:
    """The one scratch server the drills of ``engine`` name, or None when no drill names one.

    :raises SandboxError: the drills of one engine name different scratch servers (the sandbox runs one).
    """
    conn_ids = sorted(
        {
            d.drill.scratch_conn_id
            for d in catalog.databases
            if d.engine == engine and d.drill is not None and d.drill.scratch_conn_id
        }
    )
    if len(conn_ids) > 1:
        raise SandboxError(
            f"the sandbox runs one {engine} scratch server, but its drills name {', '.join(conn_ids)}: "
            "use one scratch_conn_id"
        )
    if not conn_ids:
        return None
    return DatabasePlan(f"{engine}_scratch", engine, "scratch", conn_ids[0], maintenance_database, None)


def load_plan(path: Path) -> EstatePlan:
    """Read and validate the sandbox catalog file and plan the estate from it.

    :raises CatalogError: naming file, line and field when the catalog is invalid.
    """
    return plan_from_catalog(load_catalog_file(path))


__all__ = [
    "AwsPlan",
    "ClusterPlan",
    "DatabasePlan",
    "EstatePlan",
    "HostPlan",
    "MemberPlan",
    "load_plan",
    "plan_from_catalog",
]
