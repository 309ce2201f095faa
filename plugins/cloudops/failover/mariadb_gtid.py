"""The MariaDB GTID manager (``mariadb-gtid``): we move the primary ourselves with the engine's verbs
(:mod:`cloudops.engines.mariadb.switchover`: read_only + FLUSH, ``MASTER_GTID_WAIT``, promote,
``CHANGE MASTER ... MASTER_USE_GTID = slave_pos``), topology and lag from the servers
(``SHOW SLAVE STATUS``, the GTID positions). Fail-back is the same switchover with the roles swapped;
fence is ``read_only``; an old primary that cannot rejoin (error 1236) is degraded redundancy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from cloudops.errors import InvalidInputError

if TYPE_CHECKING:
    from cloudops.engines.mariadb.switchover import MariadbNode
    from cloudops.engines.replication import ReplicationLag, SwitchoverResult, Topology


@dataclass(frozen=True)
class MariadbGtidManager:
    """MariaDB servers replicating with GTIDs, switched over by us (no MaxScale)."""

    cluster: str
    nodes: Mapping[str, MariadbNode]
    used_by: str
    rejoin_timeout_s: float = 60.0

    name = "mariadb-gtid"

    def _node(self, member: str) -> MariadbNode:
        try:
            return self.nodes[member]
        except KeyError:
            raise InvalidInputError(
                f"{self.used_by}: cluster {self.cluster!r} has no member {member!r} "
                f"(members: {', '.join(self.nodes)})"
            ) from None

    def topology(self) -> Topology:
        from cloudops.engines.mariadb import topology

        return topology(
            self.cluster, {name: node.conn_id for name, node in self.nodes.items()}, used_by=self.used_by
        )

    def lag(self, primary: str, candidate: str) -> ReplicationLag:
        from cloudops.engines.mariadb import lag

        found = lag(self._node(primary).conn_id, self._node(candidate).conn_id, used_by=self.used_by)
        return replace(found, primary=primary, replica=candidate)

    def switchover(self, primary: str, candidate: str, *, catch_up_timeout_s: float) -> SwitchoverResult:
        from cloudops.engines.mariadb.switchover import switchover

        return switchover(
            self._node(primary),
            self._node(candidate),
            cluster=self.cluster,
            used_by=self.used_by,
            catch_up_timeout_s=catch_up_timeout_s,
            rejoin_timeout_s=self.rejoin_timeout_s,
        )

    def rejoin(self, member: str, *, new_primary: str) -> str:
        """Point the (read_only) ``member`` at ``new_primary``; what replication said.

        :raises RejoinFailed: error 1236 or no running threads (degraded redundancy).
        """
        from cloudops.engines.mariadb.switchover import rejoin

        _, message = rejoin(
            self._node(member),
            new_primary=self._node(new_primary),
            used_by=self.used_by,
            timeout_s=self.rejoin_timeout_s,
        )
        return message

    def fence(self, member: str) -> str:
        from cloudops.engines.mariadb.switchover import fence

        return fence(self._node(member), used_by=self.used_by)


__all__ = ["MariadbGtidManager"]
