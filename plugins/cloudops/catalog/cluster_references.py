"""Checks of the catalog's ``clusters:`` against themselves and the other sections.

Each problem names the field where the author fixes it (``clusters[0].drill.modes[1]``), so the loader can
give its line. The rules, and why:

- a cluster has members enough to fail over (2; a Multi-AZ DB instance 1: its standby is AWS's);
- a member is a catalog database of the manager's engine (or a server named with its own connection), is
  in one cluster only, and agrees with the database's own ``cluster``;
- what only one manager has is set for it and refused elsewhere: Patroni's REST API connection, the RDS
  resource, pg_rewind's connection (PostgreSQL managers);
- the probe connects the way the manager's clients do (``routing``);
- ``crash`` is refused on a manager whose primary cannot be crashed (RDS: AWS offers only the forced
  failover, which is the planned mode), and on a production cluster unless it says
  ``crash_in_production``;
- a backup reads a replica (``backup.source: replica``) only of a database that is a cluster member;
- the guards can be met (no more healthy replicas asked for than there are replicas) and the targets fit
  (the write downtime within the whole drill, the whole drill within the window).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from cloudops.catalog.errors import did_you_mean
from cloudops.catalog.models import (
    CRASH_MANAGERS,
    MANAGER_ENGINES,
    MANAGER_ROUTINGS,
    MIN_MEMBERS,
    RDS_MANAGERS,
    Catalog,
    Cluster,
    Database,
    render_duration,
)

Path = tuple[str | int, ...]


def _problem(path: Path, message: str, hint: str | None = None) -> tuple[Path, str, str | None]:
    return (path, message, hint)


def cluster_problems(catalog: Catalog) -> list[tuple[Path, str, str | None]]:
    """Every problem of the catalog's clusters, as ``(path, message, hint)``; empty when they are sound."""
    databases = {database.name: database for database in catalog.databases}
    hosts = {host.name for _, host in catalog.hosts}
    clouds = {cloud.name for cloud in catalog.clouds}
    problems: list[tuple[Path, str, str | None]] = []
    member_of: dict[str, str] = {}
    for index, cluster in enumerate(catalog.clusters):
        at: Path = ("clusters", index)
        problems += _members(at, cluster, databases, hosts, member_of)
        problems += _manager_settings(at, cluster, clouds)
        problems += _drill(at, cluster)
    names = {cluster.name for cluster in catalog.clusters}
    for index, database in enumerate(catalog.databases):
        if database.cluster in names and member_of.get(database.name) != database.cluster:
            problems.append(
                _problem(
                    ("databases", index, "cluster"),
                    f"database {database.name!r} names cluster {database.cluster!r}, but is not among its "
                    "members",
                    f"add `- database: {database.name}` under that cluster's members",
                )
            )
        if (
            database.backup is not None
            and database.backup.source == "replica"
            and database.name not in member_of
        ):
            problems.append(
                _problem(
                    ("databases", index, "backup", "source"),
                    f"database {database.name!r} is a member of no cluster: it has no replica to back up "
                    "from (source: replica reads a replica of the database's cluster)",
                    "list it under a cluster's members, or use source: primary",
                )
            )
    return problems


def _members(
    at: Path,
    cluster: Cluster,
    databases: dict[str, Database],
    hosts: set[str],
    member_of: dict[str, str],
) -> list[tuple[Path, str, str | None]]:
    problems: list[tuple[Path, str, str | None]] = []
    manager = cluster.manager
    needed = MIN_MEMBERS[manager]
    if len(cluster.members) < needed:
        problems.append(
            _problem(
                (*at, "members"),
                f"cluster {cluster.name!r} has {len(cluster.members)} member; manager {manager} needs at "
                f"least {needed}: a primary and a replica to fail over to",
            )
        )
    engine = MANAGER_ENGINES[manager]
    engines_seen: set[str] = set()
    counts = Counter(member.member_name for member in cluster.members)
    conn_ids_seen: set[str] = set()
    for number, member in enumerate(cluster.members):
        here: Path = (*at, "members", number)
        name = member.member_name
        if counts[name] > 1 and [m.member_name for m in cluster.members].index(name) != number:
            problems.append(_problem(here, f"member {name!r} is listed twice in cluster {cluster.name!r}"))
            continue
        database = databases.get(member.database) if member.database else None
        if member.database and database is None:
            hint = did_you_mean(member.database, databases) or (
                f"databases defines: {', '.join(sorted(databases))}"
                if databases
                else "the catalog defines no databases"
            )
            problems.append(_problem((*here, "database"), f"unknown database {member.database!r}", hint))
        conn_id = database.conn_id if database else member.conn_id
        if conn_id and conn_id in conn_ids_seen:
            problems.append(
                _problem(
                    here,
                    f"member {name!r} uses connection {conn_id!r} like another member of cluster "
                    f"{cluster.name!r}: each member is a server of its own",
                )
            )
        if conn_id:
            conn_ids_seen.add(conn_id)
        if database is not None:
            engines_seen.add(database.engine)
            if engine is not None and database.engine != engine:
                problems.append(
                    _problem(
                        (*here, "database"),
                        f"database {database.name!r} is {database.engine}, but manager {manager} runs "
                        f"{engine}",
                    )
                )
            if database.cluster is not None and database.cluster != cluster.name:
                problems.append(
                    _problem(
                        (*here, "database"),
                        f"database {database.name!r} says it belongs to cluster {database.cluster!r}, not "
                        f"{cluster.name!r}",
                        "make the database's cluster field and the cluster's members agree",
                    )
                )
        if name in member_of and member_of[name] != cluster.name:
            problems.append(
                _problem(
                    here,
                    f"{name!r} is already a member of cluster {member_of[name]!r}: a server is in one "
                    "cluster",
                )
            )
        member_of.setdefault(name, cluster.name)
        if member.host is not None and member.host not in hosts:
            hint = did_you_mean(member.host, hosts) or "hosts are defined under fleets[].hosts"
            problems.append(_problem((*here, "host"), f"unknown host {member.host!r}", hint))
        if manager == "patroni" and member.patroni_api_conn_id is None:
            problems.append(
                _problem(
                    (*here, "patroni_api_conn_id"),
                    f"member {name!r} of Patroni cluster {cluster.name!r} needs patroni_api_conn_id: the "
                    "drill reads the cluster and switches over through each node's REST API",
                )
            )
        if manager != "patroni" and member.patroni_api_conn_id is not None:
            problems.append(
                _problem(
                    (*here, "patroni_api_conn_id"), f"only a patroni cluster has a REST API, not {manager}"
                )
            )
        if member.rewind_conn_id is not None and engine != "postgres":
            problems.append(
                _problem(
                    (*here, "rewind_conn_id"),
                    f"pg_rewind serves PostgreSQL clusters (native-pg, patroni), not {manager}",
                )
            )
        if manager != "mariadb-gtid" and member.replication_conn_id is not None:
            problems.append(
                _problem(
                    (*here, "replication_conn_id"),
                    f"only a mariadb-gtid cluster repoints replicas with CHANGE MASTER, not {manager}",
                )
            )
        rds_id = member.rds_instance_id or (database.rds_instance_id if database else None)
        if manager in RDS_MANAGERS and rds_id is None:
            problems.append(
                _problem(
                    (*here, "rds_instance_id"),
                    f"member {name!r} of RDS cluster {cluster.name!r} needs an RDS instance id (its own "
                    "rds_instance_id, or its database's)",
                )
            )
        if manager not in RDS_MANAGERS and member.rds_instance_id is not None:
            problems.append(
                _problem((*here, "rds_instance_id"), f"only RDS managers have RDS instances, not {manager}")
            )
    if engine is None and len(engines_seen) > 1:
        problems.append(
            _problem(
                (*at, "members"),
                f"the members of cluster {cluster.name!r} run different engines "
                f"({', '.join(sorted(engines_seen))})",
            )
        )
    return problems


def _manager_settings(at: Path, cluster: Cluster, clouds: set[str]) -> list[tuple[Path, str, str | None]]:
    problems: list[tuple[Path, str, str | None]] = []
    manager = cluster.manager
    routings = MANAGER_ROUTINGS[manager]
    if cluster.probe.routing not in routings:
        problems.append(
            _problem(
                (*at, "probe", "routing"),
                f"manager {manager}'s clients do not connect with {cluster.probe.routing}: the probe must "
                "connect as the application does",
                f"use one of: {', '.join(sorted(routings))}",
            )
        )
    if manager in RDS_MANAGERS:
        if cluster.rds is None:
            identifier = (
                "db_instance_identifier" if manager == "rds-multi-az-instance" else "db_cluster_identifier"
            )
            problems.append(_problem((*at, "rds"), f"manager {manager} needs rds: {{cloud, {identifier}}}"))
            return problems
        if cluster.rds.cloud not in clouds:
            hint = did_you_mean(cluster.rds.cloud, clouds) or (
                f"clouds defines: {', '.join(sorted(clouds))}" if clouds else "the catalog defines no clouds"
            )
            problems.append(_problem((*at, "rds", "cloud"), f"unknown cloud {cluster.rds.cloud!r}", hint))
        if manager == "rds-multi-az-instance":
            if cluster.rds.db_instance_identifier is None:
                problems.append(
                    _problem(
                        (*at, "rds", "db_instance_identifier"),
                        "rds-multi-az-instance fails over a DB instance: name it",
                    )
                )
            if cluster.rds.db_cluster_identifier is not None:
                problems.append(
                    _problem(
                        (*at, "rds", "db_cluster_identifier"),
                        "rds-multi-az-instance has no DB cluster: use db_instance_identifier",
                    )
                )
        else:
            if cluster.rds.db_cluster_identifier is None:
                problems.append(
                    _problem(
                        (*at, "rds", "db_cluster_identifier"), f"{manager} fails over a DB cluster: name it"
                    )
                )
            if cluster.rds.db_instance_identifier is not None:
                problems.append(
                    _problem(
                        (*at, "rds", "db_instance_identifier"),
                        f"{manager} fails over its DB cluster: its instances are the members",
                    )
                )
    elif cluster.rds is not None:
        problems.append(_problem((*at, "rds"), f"only RDS managers fail over an RDS resource, not {manager}"))
    return problems


def _drill(at: Path, cluster: Cluster) -> list[tuple[Path, str, str | None]]:
    drill = cluster.drill
    if drill is None:
        return []
    problems: list[tuple[Path, str, str | None]] = []
    manager = cluster.manager
    if "crash" in drill.modes:
        where: Path = (*at, "drill", "modes", drill.modes.index("crash"))
        if manager not in CRASH_MANAGERS:
            problems.append(
                _problem(
                    where,
                    f"manager {manager} cannot be crashed: AWS offers only the forced failover, which is the "
                    "planned mode; drill it with modes: [planned]",
                )
            )
        elif cluster.production and not drill.crash_in_production:
            problems.append(
                _problem(
                    where,
                    f"cluster {cluster.name!r} is production: the crash mode needs crash_in_production: true "
                    "under drill, an explicit acknowledgement",
                )
            )
    elif drill.crash_in_production:
        problems.append(
            _problem((*at, "drill", "crash_in_production"), "set, but modes does not allow crash")
        )
    replicas = len(cluster.members) - 1
    guards = drill.guards
    if manager != "rds-multi-az-instance" and guards.min_healthy_replicas > replicas:
        problems.append(
            _problem(
                (*at, "drill", "guards", "min_healthy_replicas"),
                f"asks for {guards.min_healthy_replicas} healthy replicas, but cluster {cluster.name!r} has "
                f"{max(replicas, 0)} besides its primary: no drill could ever start",
            )
        )
    targets = drill.targets
    if targets.max_write_downtime_seconds > targets.max_drill_seconds:
        problems.append(
            _problem(
                (*at, "drill", "targets", "max_write_downtime_seconds"),
                f"{targets.max_write_downtime_seconds:g} s is longer than the whole drill's "
                f"max_drill_seconds ({targets.max_drill_seconds:g} s)",
            )
        )
    window = guards.window
    if window is not None and timedelta(seconds=targets.max_drill_seconds) > window.duration:
        problems.append(
            _problem(
                (*at, "drill", "targets", "max_drill_seconds"),
                f"{targets.max_drill_seconds:g} s does not fit in the drill window "
                f"({render_duration(window.duration)}): a drill that started could not finish in it",
            )
        )
    return problems


__all__ = ["cluster_problems"]
