"""Replication as every engine reports it: what one server says about itself (:class:`MemberState`),
the cluster those answers add up to (:class:`Topology`), and how far a replica is behind its primary
(:class:`ReplicationLag`).

Topology is discovered, never assumed: the primary is the member that says it takes writes, whatever
the catalog's ``role`` says. :func:`assemble_topology` is pure: it judges the members' own answers and
says why (no primary, two writers, a replica that follows another server or does not stream), so that a
failover drill's preflight and the health check can log and assert the same sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cloudops.errors import ReplicationError

Role = Literal["primary", "replica"]


@dataclass(frozen=True)
class Downstream:
    """One replica as its primary sees it (PostgreSQL ``pg_stat_replication``).

    :param name: what the replica calls itself (``application_name``: the sandbox sets ``cluster_name``).
    :param address: where it connects from (client address), None over a local socket.
    :param state: ``streaming``, ``catchup``, ``startup``...
    :param sync_state: ``async``, ``sync``, ``potential`` or ``quorum``.
    :param replay_lag_bytes: how much of the primary's WAL it has not replayed.
    """

    name: str
    address: str | None
    state: str
    sync_state: str
    replay_lag_bytes: int | None = None


@dataclass(frozen=True)
class MemberState:
    """What one server of a cluster says about itself right now (never what the catalog says).

    :param name: the member's name as the caller knows it (the catalog database, or the connection id).
    :param address: the server as connected to (``host:port``).
    :param reachable: a connection and the queries succeeded; otherwise ``error`` says why.
    :param role: ``primary`` (it takes writes) or ``replica`` (PostgreSQL: in recovery; MariaDB: it has a
        replication source configured, or ``read_only`` is on).
    :param upstream: for a replica, the server it replicates from as it reports it (``host:port``).
    :param streaming: for a replica, whether it receives changes now (MariaDB: IO and SQL threads run).
    :param position: where the server is: PostgreSQL the current (primary) or replayed (replica) LSN;
        MariaDB ``@@gtid_binlog_pos`` (primary) or ``@@gtid_slave_pos`` (replica).
    :param timeline: PostgreSQL's timeline id (a promotion starts a new one); None for MariaDB.
    :param read_only: whether the server refuses ordinary writes (PostgreSQL: in recovery;
        MariaDB: ``@@read_only``).
    :param downstream: for a primary, the replicas it serves as it sees them (PostgreSQL only; MariaDB
        lists them only where replicas set ``report_host``, so it stays empty there).
    :param version: the server's version.
    """

    name: str
    address: str
    reachable: bool
    role: Role | None = None
    upstream: str | None = None
    streaming: bool | None = None
    position: str | None = None
    timeline: int | None = None
    read_only: bool | None = None
    downstream: tuple[Downstream, ...] = ()
    version: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Topology:
    """A cluster as its members describe it, and the judgement of it.

    :param primary: the one member that takes writes; None when there is none, or more than one.
    :param replicas: the reachable members that replicate (from the primary or not: see ``problems``).
    :param problems: each sentence names the member and the cause; empty when the cluster is whole.
    :param summary: one line for the log and the drill record (``primary a (h:1); replicas: b (streaming)``,
        ``primary a (h:1); no replicas``).
    """

    cluster: str
    primary: str | None
    replicas: tuple[str, ...]
    members: tuple[MemberState, ...]
    problems: tuple[str, ...] = field(default=())
    summary: str = ""

    @property
    def healthy(self) -> bool:
        """Exactly one primary, every member reachable, every replica streaming from it."""
        return self.primary is not None and not self.problems

    def member(self, name: str) -> MemberState:
        """The state of member ``name``.

        :raises KeyError: no member has that name.
        """
        for state in self.members:
            if state.name == name:
                return state
        raise KeyError(f"cluster {self.cluster!r} has no member {name!r}")


@dataclass(frozen=True)
class ReplicationLag:
    """How far ``replica`` is behind ``primary``, read from both servers.

    :param bytes: how much of the primary's WAL (PostgreSQL) or binlog (MariaDB, same file only) the
        replica has not replayed yet; None when it cannot be told (MariaDB across a binlog rotation).
        Read the replica first and the primary second, so the figure errs on the high side.
    :param seconds: how long ago the newest change the replica has not replayed was made; 0 when
        nothing is left to replay (an idle primary is no lag). MariaDB: ``Seconds_Behind_Master``.
    :param streaming: the replica receives changes now.
    :param primary_position: the primary's position (LSN, or GTID position and binlog file:offset).
    :param replica_position: the replica's replayed position, in the same terms.
    :param how: how the figures were measured, for the record.
    """

    primary: str
    replica: str
    bytes: int | None
    seconds: float | None
    streaming: bool
    primary_position: str
    replica_position: str
    how: str

    def within(self, *, max_bytes: int, max_seconds: float) -> tuple[bool, str]:
        """Whether the lag is within both bounds, and why (or why not): an unknown figure is not within."""
        if not self.streaming:
            return False, f"{self.replica} is not streaming from {self.primary}"
        if self.bytes is None:
            return False, f"{self.replica}'s lag in bytes is unknown ({self.how})"
        if self.seconds is None:
            return False, f"{self.replica}'s lag in seconds is unknown ({self.how})"
        if self.bytes > max_bytes:
            return False, f"{self.replica} is {self.bytes} bytes behind {self.primary} (bound {max_bytes})"
        if self.seconds > max_seconds:
            return (
                False,
                f"{self.replica} is {self.seconds:.3f} s behind {self.primary} (bound {max_seconds:g} s)",
            )
        return True, f"{self.replica} is {self.bytes} bytes and {self.seconds:.3f} s behind {self.primary}"


@dataclass(frozen=True)
class Step:
    """One timed step of a replication verb (stop, catch-up, promote, rewind, rejoin...), for the
    drill record: ``started``/``ended`` are ``time.time()`` values, ``detail`` what the servers said."""

    name: str
    started: float
    ended: float
    detail: str
    ok: bool = True

    @property
    def seconds(self) -> float:
        """The step's length."""
        return self.ended - self.started


@dataclass(frozen=True)
class SwitchoverResult:
    """What a planned switchover did, step by step.

    :param old_primary: the member that was primary; ``new_primary`` the one that is now (equal to
        ``old_primary`` after an abort that restored it).
    :param switch_position: where the old primary stopped (PostgreSQL: its shutdown checkpoint LSN;
        MariaDB: its ``gtid_binlog_pos``), which the candidate replayed past before it was promoted.
    :param replayed_position: the candidate's replayed position when it was seen past it.
    :param rejoin: how the old primary came back as a replica (``pg_rewind``'s own message is the
        evidence that the servers had not diverged), None when it did not.
    :param aborted: why the switchover was rolled back (the old primary restored), None when it was not.
    :param degraded: why the cluster is left with less redundancy (the old primary could not rejoin).
    """

    cluster: str
    old_primary: str
    new_primary: str
    steps: tuple[Step, ...]
    switch_position: str | None = None
    replayed_position: str | None = None
    timeline: int | None = None
    rejoin: str | None = None
    aborted: str | None = None
    degraded: str | None = None

    @property
    def seconds(self) -> float:
        """From the first step's start to the last one's end."""
        return self.steps[-1].ended - self.steps[0].started if self.steps else 0.0


class SwitchoverAborted(ReplicationError):
    """The switchover was rolled back: the old primary is primary again (``result.aborted`` says why).
    Every engine and manager raises this one, so the drill tells the abort path the same way."""

    def __init__(self, message: str, result: SwitchoverResult) -> None:
        super().__init__(message)
        self.result = result


class RejoinFailed(ReplicationError):
    """The old primary could not come back as a replica: the new primary serves alone (degraded
    redundancy) and fail-back is left to a person; ``steps`` says how far it got."""

    def __init__(self, message: str, steps: Sequence[Step]) -> None:
        super().__init__(message)
        self.steps = tuple(steps)


_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


def same_server(one: str | None, other: str | None) -> bool:
    """Whether two ``host:port`` addresses name the same server (every loopback name is one host)."""
    if not one or not other:
        return False

    def normal(address: str) -> tuple[str, str]:
        host, _, port = address.rpartition(":")
        host = host.strip().lower()
        return ("loopback" if host in _LOOPBACK else host, port)

    return normal(one) == normal(other)


def assemble_topology(cluster: str, members: list[MemberState]) -> Topology:
    """Judge a cluster from its members' own answers: which one is the primary, which replicate from it,
    and every problem, each naming the member and the cause.

    Pure. A member that cannot be reached is a problem but decides nothing; two members that both take
    writes leave ``primary`` None (a split brain is never resolved by picking one); a replica whose
    upstream is another server than the primary, or that does not stream, is a problem. One reachable
    primary and nothing else is a whole cluster of one: the summary says "no replicas".
    """
    problems: list[str] = []
    for state in members:
        if not state.reachable:
            problems.append(f"{cluster}: {state.name} ({state.address}) cannot be reached: {state.error}")
    writers = [s for s in members if s.reachable and s.role == "primary"]
    replicas = [s for s in members if s.reachable and s.role == "replica"]
    primary = writers[0] if len(writers) == 1 else None
    if not writers:
        problems.append(
            f"{cluster}: no member takes writes (asked {', '.join(s.name for s in members) or 'none'})"
        )
    elif len(writers) > 1:
        problems.append(
            f"{cluster}: {len(writers)} members take writes: "
            + ", ".join(f"{s.name} ({s.address})" for s in writers)
            + ": two writers; fence all but one before anything else"
        )
    for state in members:
        if state.reachable and state.role is None:
            problems.append(
                f"{cluster}: {state.name} ({state.address}) takes no writes (read_only) and replicates from "
                "nothing: a fenced or half-switched server"
            )
    for replica in replicas:
        if replica.streaming is False:
            problems.append(f"{cluster}: replica {replica.name} ({replica.address}) is not streaming")
        if primary is not None and replica.upstream and not same_server(replica.upstream, primary.address):
            problems.append(
                f"{cluster}: replica {replica.name} replicates from {replica.upstream}, not from the primary "
                f"{primary.name} ({primary.address})"
            )
    if primary is not None:
        head = f"primary {primary.name} ({primary.address})"
    elif writers:
        head = "no single primary (" + ", ".join(s.name for s in writers) + " take writes)"
    else:
        head = "no primary"
    tail = (
        "replicas: "
        + ", ".join(f"{s.name} ({'streaming' if s.streaming else 'not streaming'})" for s in replicas)
        if replicas
        else "no replicas"
    )
    return Topology(
        cluster=cluster,
        primary=primary.name if primary else None,
        replicas=tuple(s.name for s in replicas),
        members=tuple(members),
        problems=tuple(problems),
        summary=f"{head}; {tail}",
    )


def discover_topology(
    cluster: str,
    members: Mapping[str, str],
    read_member: Callable[[str, str], MemberState],
) -> Topology:
    """Ask every member (name → connection id) about itself with ``read_member(name, conn_id)`` (an
    engine's :meth:`~cloudops.engines.protocol.Engine.member_state`), then judge the answers."""
    return assemble_topology(cluster, [read_member(name, conn_id) for name, conn_id in members.items()])


__all__ = [
    "Downstream",
    "MemberState",
    "RejoinFailed",
    "ReplicationLag",
    "Role",
    "Step",
    "SwitchoverAborted",
    "SwitchoverResult",
    "Topology",
    "assemble_topology",
    "discover_topology",
    "same_server",
]
