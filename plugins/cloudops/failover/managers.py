"""The cluster managers a drill drives, behind one protocol: each knows how to read its cluster,
how far a candidate is behind, how to switch over (and back) and how to fence a node.

One module per manager, chosen by the catalog's manager name through :data:`MANAGERS` and
:func:`manager_for`:

- ``native-pg``: :class:`NativePostgresManager` (here), switching over itself with
  :mod:`cloudops.engines.postgres.switchover`;
- ``patroni``: :class:`cloudops.failover.patroni.PatroniManager` (REST ``POST /switchover``, ``/cluster``);
- ``mariadb-gtid``: :class:`cloudops.failover.mariadb_gtid.MariadbGtidManager` (read_only,
  ``MASTER_GTID_WAIT``, promote, repoint);
- ``rds-multi-az-instance``, ``rds-multi-az-cluster``, ``aurora``: :mod:`cloudops.failover.rds`
  (forced failover, failover events).

The drill (:mod:`cloudops.failover.drill`) does not change for any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from cloudops.errors import InvalidInputError

if TYPE_CHECKING:
    from cloudops.catalog.models import Catalog, Cluster
    from cloudops.engines.postgres.switchover import FenceHow, PostgresNode
    from cloudops.engines.replication import ReplicationLag, SwitchoverResult, Topology


class SwitchoverManager(Protocol):
    """What a drill asks of a cluster's manager. ``members`` are the catalog's member names.

    ``switchover`` raises :class:`~cloudops.engines.postgres.switchover.SwitchoverAborted` (the old
    primary restored) or :class:`~cloudops.engines.postgres.switchover.RejoinFailed` (the new primary
    serves alone) so the drill can record which abort path was taken.
    """

    @property
    def name(self) -> str:
        """The catalog's manager name (``native-pg``, ``patroni``, ``mariadb-gtid``, ``rds-...``)."""
        ...

    @property
    def cluster(self) -> str:
        """The cluster's name, in every message."""
        ...

    def topology(self) -> Topology:
        """Every member's own answer, judged."""
        ...

    def lag(self, primary: str, candidate: str) -> ReplicationLag:
        """How far ``candidate`` is behind ``primary``, read from both now."""
        ...

    def switchover(self, primary: str, candidate: str, *, catch_up_timeout_s: float) -> SwitchoverResult:
        """Planned switchover from ``primary`` to ``candidate``, the old primary rejoined as a replica."""
        ...

    def fence(self, member: str) -> str:
        """Stop ``member`` taking writes; return what was done."""
        ...


@dataclass(frozen=True)
class NativePostgresManager:
    """Native PostgreSQL streaming replication, switched over by us (no Patroni)."""

    cluster: str
    nodes: Mapping[str, PostgresNode]
    used_by: str
    fence_how: FenceHow = "stop"
    rejoin_timeout_s: float = 60.0

    name = "native-pg"

    def _node(self, member: str) -> PostgresNode:
        try:
            return self.nodes[member]
        except KeyError:
            raise InvalidInputError(
                f"{self.used_by}: cluster {self.cluster!r} has no member {member!r} "
                f"(members: {', '.join(self.nodes)})"
            ) from None

    def topology(self) -> Topology:
        from cloudops.engines.postgres import topology

        return topology(
            self.cluster, {name: node.conn_id for name, node in self.nodes.items()}, used_by=self.used_by
        )

    def lag(self, primary: str, candidate: str) -> ReplicationLag:
        from cloudops.engines.postgres import lag

        found = lag(self._node(primary).conn_id, self._node(candidate).conn_id, used_by=self.used_by)
        # Named by member, as every other sentence of the drill is, not by connection id.
        return replace(found, primary=primary, replica=candidate)

    def switchover(self, primary: str, candidate: str, *, catch_up_timeout_s: float) -> SwitchoverResult:
        # The module function rather than the protocol verb: it also takes the rejoin bound.
        from cloudops.engines.postgres.switchover import switchover

        return switchover(
            self._node(primary),
            self._node(candidate),
            cluster=self.cluster,
            used_by=self.used_by,
            catch_up_timeout_s=catch_up_timeout_s,
            rejoin_timeout_s=self.rejoin_timeout_s,
        )

    def crash_unavailable(self) -> str | None:
        """Why this cluster cannot be crashed by a drill, or None: every node's data directory is
        known (the crash kills its postmaster, pg_rewind and pg_ctl run on it) and holds no socket."""
        unknown = [name for name, node in self.nodes.items() if not node.data_dir]
        if unknown:
            return f"the data directory of {', '.join(unknown)} is unknown (its server was not readable)"
        inside = [
            f"{n} ({node.socket_dir})" for n, node in self.nodes.items() if node.socket_inside_data_dir()
        ]
        if inside:
            # After a crash pg_rewind copies files from the new primary's data directory, its live
            # socket too, and fails: the old primary would be left for a person to rebuild.
            return (
                f"the unix socket of {', '.join(inside)} is inside its data directory, which pg_rewind "
                "cannot copy after a crash: move unix_socket_directories out of the data directory"
            )
        return None

    def crash(self, primary: str, candidate: str, *, detect_timeout_s: float = 10.0) -> SwitchoverResult:
        """Crash ``primary`` (SIGKILL of its postmaster and children), promote ``candidate`` as the
        detector would, rewind and rejoin the crashed node as a standby
        (:func:`cloudops.engines.postgres.switchover.crash_failover`)."""
        from cloudops.engines.postgres.switchover import crash_failover

        return crash_failover(
            self._node(primary),
            self._node(candidate),
            cluster=self.cluster,
            used_by=self.used_by,
            detect_timeout_s=detect_timeout_s,
            rejoin_timeout_s=self.rejoin_timeout_s,
        )

    def fence(self, member: str) -> str:
        from cloudops.engines.postgres import ENGINE

        return ENGINE.fence(self._node(member), used_by=self.used_by, how=self.fence_how)

    def running_work(self, member: str, *, longer_than_s: float) -> list[str]:
        """Backups and transactions older than ``longer_than_s`` on ``member`` (see
        :func:`cloudops.engines.postgres.switchover.running_work`); a manager without this method
        is not asked, and the preflight says so."""
        from cloudops.engines.postgres.switchover import running_work

        node = self._node(member)
        return running_work(node.conn_id, name=member, longer_than_s=longer_than_s, used_by=self.used_by)


@dataclass(frozen=True)
class ManagerSite:
    """What the catalog does not hold and a manager needs where it runs.

    :param data_dirs: native-pg: each member's data directory on its host (member name → path).
    :param node_control: patroni: where the nodes' processes run, for the crash mode.
    :param rds_api: RDS managers: the client to use instead of ``RdsHook(aws_conn_id).conn`` (the tests'
        scripted stand-in; None in production).
    :param rds_lag_seconds: RDS cluster managers: a reader's replica lag (default: CloudWatch).
    """

    data_dirs: Mapping[str, str] = field(default_factory=dict)
    node_control: Any = None
    rds_api: Any = None
    rds_lag_seconds: Callable[[str], float | None] | None = None


def member_conn_id(catalog: Catalog, cluster: Cluster, member: str) -> str:
    """The connection of a cluster member: its catalog database's, or its own."""
    found = cluster.member(member)
    if found.database:
        return catalog.database(found.database).conn_id
    return found.conn_id or ""


def _native_pg(catalog: Catalog, cluster: Cluster, site: ManagerSite, used_by: str) -> SwitchoverManager:
    from cloudops.engines.postgres.switchover import PostgresNode

    missing = [m.member_name for m in cluster.members if m.member_name not in site.data_dirs]
    if missing:
        raise InvalidInputError(
            f"{used_by}: cluster {cluster.name!r} (native-pg): the data directory of {', '.join(missing)} is "
            "unknown: the switchover stops, rewinds and starts the servers, so it needs them"
        )
    nodes = {
        m.member_name: PostgresNode(
            m.member_name, member_conn_id(catalog, cluster, m.member_name), site.data_dirs[m.member_name]
        )
        for m in cluster.members
    }
    return NativePostgresManager(cluster.name, nodes, used_by=used_by)


def _patroni(catalog: Catalog, cluster: Cluster, site: ManagerSite, used_by: str) -> SwitchoverManager:
    from cloudops.failover.patroni import PatroniManager, PatroniMember

    members = {
        m.member_name: PatroniMember(
            m.member_name, member_conn_id(catalog, cluster, m.member_name), m.patroni_api_conn_id or ""
        )
        for m in cluster.members
    }
    # The crash mode only where the catalog allows it: without a control, crash() refuses. Where the
    # site names none, the sandbox's own when the sandbox runs this very cluster (its name and API ports).
    crash_allowed = cluster.drill is not None and "crash" in cluster.drill.modes
    control = site.node_control if crash_allowed else None
    if crash_allowed and control is None:
        from cloudops.connections import get_connection
        from cloudops.sandbox.patroni import sandbox_node_control

        ports = {name: get_connection(m.api_conn_id, used_by).port for name, m in members.items()}
        control = sandbox_node_control(cluster.name, ports)
    return PatroniManager(cluster.name, members, used_by=used_by, control=control)


def _mariadb_gtid(catalog: Catalog, cluster: Cluster, site: ManagerSite, used_by: str) -> SwitchoverManager:
    from cloudops.engines.mariadb.switchover import MariadbNode
    from cloudops.failover.mariadb_gtid import MariadbGtidManager

    nodes = {
        m.member_name: MariadbNode(
            m.member_name, member_conn_id(catalog, cluster, m.member_name), m.replication_conn_id
        )
        for m in cluster.members
    }
    return MariadbGtidManager(cluster.name, nodes, used_by=used_by)


def _rds_api(catalog: Catalog, cluster: Cluster, site: ManagerSite) -> Any:
    if site.rds_api is not None:
        return site.rds_api
    from cloudops.failover.rds import rds_client

    if cluster.rds is None:  # the catalog refuses an RDS cluster without rds: (a model built by hand)
        raise InvalidInputError(f"cluster {cluster.name!r} ({cluster.manager}) names no rds: resource")
    cloud = next(c for c in catalog.clouds if c.name == cluster.rds.cloud)
    return rds_client(cloud.aws_conn_id)


def _rds_identifier(cluster: Cluster, field_name: str, used_by: str) -> str:
    value = getattr(cluster.rds, field_name, None) if cluster.rds is not None else None
    if not value:
        raise InvalidInputError(
            f"{used_by}: cluster {cluster.name!r} ({cluster.manager}) needs rds.{field_name}"
        )
    return str(value)


def _rds_instance(catalog: Catalog, cluster: Cluster, site: ManagerSite, used_by: str) -> SwitchoverManager:
    from cloudops.failover.rds import RdsMultiAzInstanceManager

    instance = _rds_identifier(cluster, "db_instance_identifier", used_by)
    return RdsMultiAzInstanceManager(cluster.name, instance, _rds_api(catalog, cluster, site), used_by)


def _rds_cluster(catalog: Catalog, cluster: Cluster, site: ManagerSite, used_by: str) -> SwitchoverManager:
    from cloudops.failover.rds import RdsClusterManager, cloudwatch_lag_seconds

    cluster_id = _rds_identifier(cluster, "db_cluster_identifier", used_by)
    members = {
        m.member_name: m.rds_instance_id
        or (catalog.database(m.database).rds_instance_id if m.database else None)
        or ""
        for m in cluster.members
    }
    lag = site.rds_lag_seconds
    if lag is None and site.rds_api is None and cluster.rds is not None:
        cloud = next(c for c in catalog.clouds if c.name == cluster.rds.cloud)
        metric = "AuroraReplicaLag" if cluster.manager == "aurora" else "ReplicaLag"
        lag = cloudwatch_lag_seconds(cloud.aws_conn_id, metric=metric)
    return RdsClusterManager(
        cluster.name,
        cluster_id,
        members,
        _rds_api(catalog, cluster, site),
        used_by,
        kind="aurora" if cluster.manager == "aurora" else "rds-multi-az-cluster",
        lag_seconds=lag,
    )


ManagerBuilder = Callable[["Catalog", "Cluster", ManagerSite, str], SwitchoverManager]
# The catalog's manager name → its builder. One line per manager; the builders import their module
# only when called, so choosing a manager imports no driver.
MANAGERS: dict[str, ManagerBuilder] = {
    "native-pg": _native_pg,
    "patroni": _patroni,
    "mariadb-gtid": _mariadb_gtid,
    "rds-multi-az-instance": _rds_instance,
    "rds-multi-az-cluster": _rds_cluster,
    "aurora": _rds_cluster,
}


def manager_for(
    catalog: Catalog, cluster: Cluster, *, used_by: str, site: ManagerSite | None = None
) -> SwitchoverManager:
    """The manager of ``cluster``, chosen by its catalog manager name.

    :raises InvalidInputError: a manager no builder is registered for, or what it needs is missing.
    """
    builder = MANAGERS.get(cluster.manager)
    if builder is None:
        raise InvalidInputError(
            f"{used_by}: cluster {cluster.name!r}: no manager is registered for {cluster.manager!r} "
            f"(registered: {', '.join(sorted(MANAGERS))})"
        )
    return builder(catalog, cluster, site or ManagerSite(), used_by)


def build_from_catalog(cluster: Cluster, catalog: Catalog, *, used_by: str) -> SwitchoverManager:
    """The runbook's builder (:data:`cloudops.failover.registry.MANAGER_BUILDERS`) for the managers
    that need nothing beyond the catalog: Patroni, MariaDB GTID, RDS."""
    return manager_for(catalog, cluster, used_by=used_by)


__all__ = [
    "MANAGERS",
    "ManagerBuilder",
    "ManagerSite",
    "NativePostgresManager",
    "SwitchoverManager",
    "build_from_catalog",
    "manager_for",
    "member_conn_id",
]
