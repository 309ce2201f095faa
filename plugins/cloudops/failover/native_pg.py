"""The ``native-pg`` manager built from the catalog: each member's server is asked where it lives
(data directory, programs, configuration files, how a standby follows it), so that nothing about a
node is assumed; pg_rewind's source is the member's ``rewind_conn_id`` when the catalog names one.

A member that cannot be read is kept with what the catalog knows (its connection): the topology shows
it down and the preflight refuses a drill that needs it; nothing is done to it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cloudops.errors import CloudOpsError, ReplicationError, first_line

if TYPE_CHECKING:
    from cloudops.catalog.models import Catalog, Cluster
    from cloudops.failover.managers import NativePostgresManager

log = logging.getLogger(__name__)


def member_conn_id(cluster: Cluster, catalog: Catalog, name: str) -> str:
    """The connection of member ``name``: its own, or its catalog database's."""
    member = cluster.member(name)
    if member.conn_id:
        return member.conn_id
    return catalog.database(member.member_name).conn_id


def build_manager(cluster: Cluster, catalog: Catalog, *, used_by: str) -> NativePostgresManager:
    """A :class:`~cloudops.failover.managers.NativePostgresManager` for the catalog's cluster.

    :raises CloudOpsError: a member's server is not on this machine (the drill runs pg_ctl and
        pg_rewind next to it) or names a fleet host (SSH is not built for this manager yet).
    """
    from cloudops.engines.postgres.switchover import NodeNotLocal, PostgresNode, discover_node
    from cloudops.failover.managers import NativePostgresManager

    nodes: dict[str, PostgresNode] = {}
    for member in cluster.members:
        name = member.member_name
        conn_id = member_conn_id(cluster, catalog, name)
        if member.host is not None:
            raise CloudOpsError(
                f"cluster {cluster.name}: member {name} runs on fleet host {member.host}: running its "
                "server programs over SSH is not built for the native-pg manager yet; nothing was moved"
            )
        try:
            nodes[name] = discover_node(name, conn_id, used_by=used_by, rewind_conn_id=member.rewind_conn_id)
        except NodeNotLocal as error:
            raise CloudOpsError(f"cluster {cluster.name}: {first_line(error)}; nothing was moved") from error
        except ReplicationError as error:
            log.warning("cluster %s: %s (the preflight judges it)", cluster.name, first_line(error))
            nodes[name] = PostgresNode(name, conn_id, data_dir="", rewind_conn_id=member.rewind_conn_id)
    return NativePostgresManager(cluster.name, nodes, used_by=used_by)


__all__ = ["build_manager", "member_conn_id"]
