"""The cluster managers a drill drives, behind one protocol: each knows how to read its cluster,
how far a candidate is behind, how to switch over (and back) and how to fence a node.

:class:`NativePostgresManager` (``native-pg``) switches over itself with
:mod:`cloudops.engines.postgres.switchover`. Patroni (``POST /switchover``, poll ``/cluster``),
MariaDB GTID (read_only, ``MASTER_GTID_WAIT``, promote, repoint) and RDS (forced failover, failover
events) implement the same :class:`SwitchoverManager`; the drill (:mod:`cloudops.failover.drill`)
does not change for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from cloudops.errors import InvalidInputError

if TYPE_CHECKING:
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


__all__ = ["NativePostgresManager", "SwitchoverManager"]
