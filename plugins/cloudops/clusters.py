"""The catalog's clusters as they are now: which member is the primary, which replicas are fit to read
from, and where a backup of a cluster member reads.

Topology is discovered, never assumed. After a failover that was not failed back (a drill left with
``failback: manual``, or a real one) the catalog still says ``role: primary`` of the old primary; the
members' own answers (:meth:`cloudops.engines.protocol.Engine.topology`) say who takes writes. Backups
read the member that is primary now (or a fit replica, by ``backup.source``), and the health check
reports the move as a warning naming the drill that made it.

The judgements are pure (:func:`current_roles`, :func:`healthy_replicas`, :func:`plan_backup_source`);
:func:`discover_roles` and :func:`pick_backup_source` ask the servers, each member bounded by
``timeout_seconds`` (connect and statements), so a whole discovery takes at most the number of members times
``timeout_seconds``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cloudops.catalog.models import MANAGER_ENGINES, Catalog, Cluster, Database, render_duration
from cloudops.engines.replication import ReplicationLag, Topology, same_server
from cloudops.errors import CloudOpsError, ReplicationError

log = logging.getLogger(__name__)

DISCOVERY_TIMEOUT_SECONDS = 10


class TopologyError(CloudOpsError):
    """A cluster has no single primary (none, or two writers): nothing may pick a server from it."""


def cluster_of(catalog: Catalog, database: str) -> Cluster | None:
    """The cluster whose members include catalog database ``database``, or None."""
    for cluster in catalog.clusters:
        if any(member.database == database for member in cluster.members):
            return cluster
    return None


def member_connections(catalog: Catalog, cluster: Cluster) -> dict[str, str]:
    """Each member's name → its connection id (a catalog database's own, or the member's), in the
    catalog's order."""
    connections = {}
    for member in cluster.members:
        if member.database is not None:
            connections[member.database] = catalog.database(member.database).conn_id
        else:
            assert member.conn_id is not None  # the model requires it with name
            connections[member.member_name] = member.conn_id
    return connections


def cluster_engine(catalog: Catalog, cluster: Cluster) -> str:
    """The engine the cluster's servers run: the manager's, or (RDS managers) its databases'.

    :raises CloudOpsError: an RDS cluster with no catalog database among its members (nothing says).
    """
    engine = MANAGER_ENGINES[cluster.manager]
    if engine is not None:
        return engine
    for member in cluster.members:
        if member.database is not None:
            return catalog.database(member.database).engine
    raise CloudOpsError(
        f"cluster {cluster.name!r} ({cluster.manager}) has no catalog database among its members: its "
        "engine is unknown"
    )


def catalog_primary(catalog: Catalog, cluster: Cluster) -> str | None:
    """The member the catalog says is the primary: the one member database with ``role: primary``.

    None when the catalog declares none (members named by connection only, as Patroni nodes) or several
    (then it states no expectation the health check could compare with).
    """
    declared = [
        member.database
        for member in cluster.members
        if member.database is not None and catalog.database(member.database).role == "primary"
    ]
    return declared[0] if len(declared) == 1 else None


def healthy_replicas(topology: Topology) -> tuple[str, ...]:
    """The members fit to read from besides the primary: reachable replicas that stream from it.

    Pure. Empty when the cluster has no single primary (a replica of nothing in particular is no copy
    of the primary's data one can name).
    """
    if topology.primary is None:
        return ()
    primary = topology.member(topology.primary)
    return tuple(
        state.name
        for state in topology.members
        if state.reachable
        and state.role == "replica"
        and state.streaming
        and (state.upstream is None or same_server(state.upstream, primary.address))
    )


@dataclass(frozen=True)
class ClusterRoles:
    """Who is what in a cluster now, as its members said.

    :param primary: the member that takes writes now; ``primary_conn_id`` its connection.
    :param replicas: the members fit to read from (:func:`healthy_replicas`), in catalog order.
    :param catalog_primary: the member the catalog says is the primary (:func:`catalog_primary`).
    :param connections: every member's connection id.
    :param topology: the members' answers and every problem found in them.
    """

    cluster: str
    manager: str
    engine: str
    primary: str
    primary_conn_id: str
    replicas: tuple[str, ...]
    catalog_primary: str | None
    connections: Mapping[str, str]
    topology: Topology

    @property
    def moved(self) -> bool:
        """The primary is not the member the catalog says (a failover that was not failed back)."""
        return self.catalog_primary is not None and self.primary != self.catalog_primary

    def describe(self) -> str:
        """One line: who is primary now against the catalog, and the topology's summary."""
        if self.moved:
            return (
                f"the primary of cluster {self.cluster} is now {self.primary} (the catalog says "
                f"{self.catalog_primary}): {self.topology.summary}"
            )
        return f"cluster {self.cluster}: {self.topology.summary}"


def current_roles(catalog: Catalog, cluster: Cluster, topology: Topology, *, used_by: str) -> ClusterRoles:
    """Judge the members' answers: the one primary now, the fit replicas.

    Pure. Other problems (a member down, a replica not streaming) do not stop it: the primary is still
    known, and ``topology.problems`` says what else is wrong.

    :raises TopologyError: no member takes writes, or two do (never resolved by picking one).
    """
    if topology.primary is None:
        writers = [s.name for s in topology.members if s.reachable and s.role == "primary"]
        if len(writers) > 1:
            cause = (
                f"{len(writers)} members claim to be the primary ({', '.join(writers)}): two writers; fence "
                "all but one before anything reads from or writes to it"
            )
        else:
            cause = "no member claims to be the primary"
        raise TopologyError(
            f"{used_by}: cluster {cluster.name!r} has no single primary: {cause} ("
            + "; ".join(topology.problems)
            + ")"
        )
    connections = member_connections(catalog, cluster)
    return ClusterRoles(
        cluster=cluster.name,
        manager=cluster.manager,
        engine=cluster_engine(catalog, cluster),
        primary=topology.primary,
        primary_conn_id=connections[topology.primary],
        replicas=healthy_replicas(topology),
        catalog_primary=catalog_primary(catalog, cluster),
        connections=connections,
        topology=topology,
    )


def read_topology(
    catalog: Catalog, cluster: Cluster, *, used_by: str, timeout_seconds: int = DISCOVERY_TIMEOUT_SECONDS
) -> Topology:
    """Ask every member of ``cluster`` what it is now (each bounded by ``timeout_seconds``).

    :raises ConnectionMissingError: a member's Airflow connection does not exist.
    """
    from cloudops.engines import engine

    return engine(cluster_engine(catalog, cluster)).topology(
        cluster.name, member_connections(catalog, cluster), used_by=used_by, timeout_seconds=timeout_seconds
    )


def discover_roles(
    catalog: Catalog, cluster_name: str, *, used_by: str, timeout_seconds: int = DISCOVERY_TIMEOUT_SECONDS
) -> ClusterRoles:
    """The primary of cluster ``cluster_name`` now, and its fit replicas, from the members' answers.

    Bounded: each member is asked once, within ``timeout_seconds``.

    :raises KeyError: the estate has no such cluster.
    :raises TopologyError: no member, or more than one, takes writes.
    :raises ConnectionMissingError: a member's Airflow connection does not exist.
    """
    cluster = catalog.cluster(cluster_name)
    roles = current_roles(
        catalog,
        cluster,
        read_topology(catalog, cluster, used_by=used_by, timeout_seconds=timeout_seconds),
        used_by=used_by,
    )
    if roles.moved:
        log.warning("%s: %s", used_by, roles.describe())
    else:
        log.info("%s: %s", used_by, roles.describe())
    return roles


@dataclass(frozen=True)
class BackupSourceChoice:
    """The server a backup reads, and why.

    :param member: the cluster member (or the database itself, outside any cluster).
    :param role: what that server is now (``primary``/``replica``), as it said; the catalog's role for a
        database in no cluster (nothing was asked).
    :param policy: the backup policy's ``source``.
    :param reason: the sentence logged and recorded.
    :param topology: the cluster's summary when it was read, None outside any cluster.
    """

    member: str
    conn_id: str
    role: str
    policy: str
    reason: str
    cluster: str | None = None
    address: str | None = None
    topology: str | None = None

    def to_evidence(self) -> dict[str, Any]:
        """The choice as the ``backup.taken`` record's ``source`` (connection ids, no secret)."""
        return {
            "member": self.member,
            "conn_id": self.conn_id,
            "role": self.role,
            "address": self.address,
            "cluster": self.cluster,
            "policy": self.policy,
            "reason": self.reason,
            "topology": self.topology,
        }


def _lag_fit(lag: ReplicationLag | str, bound: timedelta) -> tuple[bool, str]:
    if isinstance(lag, str):
        return False, lag
    if not lag.streaming:
        return False, "not streaming"
    if lag.seconds is None:
        return False, f"lag in seconds unknown ({lag.how})"
    if lag.seconds > bound.total_seconds():
        return False, f"{lag.seconds:.3f} s behind (bound {render_duration(bound)})"
    behind = "unknown bytes" if lag.bytes is None else f"{lag.bytes} bytes"
    return True, f"{behind} and {lag.seconds:.3f} s behind (bound {render_duration(bound)})"


def plan_backup_source(
    catalog: Catalog,
    database: Database,
    roles: ClusterRoles,
    *,
    replica_lags: Mapping[str, ReplicationLag | str] | None = None,
) -> BackupSourceChoice:
    """Which member a backup of ``database`` (a member of ``roles``' cluster) reads, and why.

    Pure. ``source: primary`` reads the primary now, wherever it moved. ``source: replica`` reads the
    first fit replica (in catalog order) whose lag, measured in ``replica_lags`` (the figure, or why it
    could not be read), is within the replica's ``max_replication_lag`` (its catalog database's, else
    the backed-up database's); the primary when none is, saying why each was passed over: a backup
    taken from the primary is better than none.
    """
    assert database.backup is not None
    policy = database.backup.source
    primary_state = roles.topology.member(roles.primary)
    moved = (
        f"the primary of cluster {roles.cluster} is now {roles.primary} (the catalog says "
        f"{roles.catalog_primary})"
        if roles.moved
        else f"{roles.primary} is the primary of cluster {roles.cluster}"
    )

    def choice(member: str, role: str, reason: str) -> BackupSourceChoice:
        return BackupSourceChoice(
            member=member,
            conn_id=roles.connections[member],
            role=role,
            policy=policy,
            reason=reason,
            cluster=roles.cluster,
            address=roles.topology.member(member).address,
            topology=roles.topology.summary,
        )

    if policy == "primary":
        return choice(roles.primary, "primary", f"source primary: {moved}; backing up {roles.primary}")
    passed_over = []
    lags = replica_lags or {}
    databases = {d.name: d for d in catalog.databases}
    for replica in roles.replicas:
        bound = databases.get(replica, database).max_replication_lag
        fit, how = _lag_fit(lags.get(replica, "lag not measured"), bound)
        if fit:
            return choice(
                replica,
                "replica",
                f"source replica: {replica} streams from the primary {roles.primary} "
                f"({primary_state.address}), {how}; backing up {replica}",
            )
        passed_over.append(f"{replica}: {how}")
    why = "; ".join(passed_over) if passed_over else "no replica streams from it"
    return choice(
        roles.primary,
        "primary",
        f"source replica, but no replica is fit ({why}): {moved}; backing up the primary {roles.primary} "
        "instead",
    )


def pick_backup_source(
    catalog: Catalog,
    database: Database,
    *,
    used_by: str,
    timeout_seconds: int = DISCOVERY_TIMEOUT_SECONDS,
) -> BackupSourceChoice:
    """The server a backup of ``database`` reads now: its own connection outside any cluster, else the
    member :func:`plan_backup_source` picks from the cluster's topology read now (and, for
    ``source: replica``, each fit replica's lag, each read bounded by ``timeout_seconds``).

    :raises TopologyError: the cluster has no single primary; no backup is taken from it.
    """
    from cloudops.engines import engine

    assert database.backup is not None
    cluster = cluster_of(catalog, database.name)
    if cluster is None:
        return BackupSourceChoice(
            member=database.name,
            conn_id=database.conn_id,
            role=database.role,
            policy=database.backup.source,
            reason=f"database {database.name} is in no cluster: backing up its own connection",
        )
    roles = discover_roles(catalog, cluster.name, used_by=used_by, timeout_seconds=timeout_seconds)
    lags: dict[str, ReplicationLag | str] = {}
    if database.backup.source == "replica":
        for replica in roles.replicas:
            try:
                lags[replica] = engine(roles.engine).lag(
                    roles.primary_conn_id,
                    roles.connections[replica],
                    used_by=used_by,
                    timeout_seconds=timeout_seconds,
                )
            except ReplicationError as error:
                lags[replica] = str(error)
    chosen = plan_backup_source(catalog, database, roles, replica_lags=lags)
    if roles.moved or chosen.policy != chosen.role:
        log.warning("%s: %s", used_by, chosen.reason)
    else:
        log.info("%s: %s", used_by, chosen.reason)
    return chosen


def refuse_unless_primary_now(
    catalog: Catalog, database: Database, *, used_by: str, timeout_seconds: int = DISCOVERY_TIMEOUT_SECONDS
) -> None:
    """Refuse a write to ``database``'s own server (a restore) unless, in its cluster, that member is the
    primary now. Outside any cluster there is nothing to ask.

    :raises TopologyError: the cluster has no single primary, or the primary moved to another member
        (a drill that did not fail back): the message says who is primary and what to do.
    """
    cluster = cluster_of(catalog, database.name)
    if cluster is None:
        return
    roles = discover_roles(catalog, cluster.name, used_by=used_by, timeout_seconds=timeout_seconds)
    if roles.primary != database.name:
        raise TopologyError(
            f"{used_by}: {database.name} ({database.conn_id}) is not the primary of cluster {cluster.name} "
            f"now, {roles.primary} is ({roles.describe()}); a restore writes to {database.conn_id}'s server, "
            f"a replica now: nothing was written. Fail back to {database.name} (failover_drill__"
            f"{cluster.name}), or restore the backup through {roles.primary}'s catalog entry"
        )
    log.info("%s: %s is the primary of cluster %s now", used_by, database.name, cluster.name)


__all__ = [
    "DISCOVERY_TIMEOUT_SECONDS",
    "BackupSourceChoice",
    "ClusterRoles",
    "TopologyError",
    "catalog_primary",
    "cluster_engine",
    "cluster_of",
    "current_roles",
    "discover_roles",
    "healthy_replicas",
    "member_connections",
    "pick_backup_source",
    "plan_backup_source",
    "read_topology",
    "refuse_unless_primary_now",
]
