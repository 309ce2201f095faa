"""MariaDB GTID planned switchover, rejoin and fence: the replication verbs that move the primary between
two servers replicating with ``MASTER_USE_GTID = slave_pos``, as the failover drill drives them.

A planned switchover loses no acknowledged write when done in this order (6 of 6 in
``../shared/notes/failover.md`` section 2.3):

1. Old primary: ``SET GLOBAL read_only = 1`` (ordinary accounts' writes now fail with 1290, and a
   commit in flight finishes first), ``FLUSH TABLES``, then read its ``@@gtid_binlog_pos``: the switch
   position, which holds every acknowledged write.
2. Candidate: ``MASTER_GTID_WAIT(position, bound)``. On timeout the switchover aborts: ``read_only = 0``
   on the old primary again (orchestrator #1482 is what happens when a tool leaves that undone) and the
   candidate is left replicating.
3. Candidate: ``STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0``: it takes writes.
4. Old primary (:func:`rejoin`): ``SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos``, ``CHANGE MASTER TO``
   the new primary with the replication account (``replication_conn_id``: the account a replica of that
   server logs in with), ``MASTER_USE_GTID = slave_pos``, ``START SLAVE``, and wait until both threads
   run. Error 1236 (the old primary has transactions the new one never received, typical after a
   crash) is :class:`RejoinFailed`: the new primary serves alone, degraded redundancy, and the
   diverged GTIDs are in the message; fail-back needs a flashback or a rebuild, by a person.

The replication password goes to the server in ``CHANGE MASTER`` only (never a log or a message).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from cloudops.connections import get_connection
from cloudops.engines.mariadb.replication import _address, _one, _replication_session, member_state
from cloudops.engines.replication import RejoinFailed, Step, SwitchoverAborted, SwitchoverResult
from cloudops.errors import ReplicationError, first_line

log = logging.getLogger(__name__)

_POLL_S = 0.02
# ER_MASTER_FATAL_ERROR_READING_BINLOG: the source cannot serve the replica's position (diverged).
ERROR_BINLOG_POSITION = 1236


@dataclass(frozen=True)
class MariadbNode:
    """A MariaDB server a drill may promote and repoint.

    :param name: the member's name (the catalog's).
    :param conn_id: an account on it allowed to change replication (``SUPER`` or ``REPLICATION SLAVE
        ADMIN``, ``READ_ONLY ADMIN``, ``SLAVE MONITOR``, ``BINLOG MONITOR``).
    :param replication_conn_id: the account a replica of *this* server logs in with, and the address
        it reaches this server at (host, port); None: nothing can be pointed at it.
    """

    name: str
    conn_id: str
    replication_conn_id: str | None = None


def _now() -> float:
    return time.time()


# Sessions held open for one switchover (conn_id -> session): its steps then cost no new connection,
# which is most of a step's time on a busy machine.
_HELD: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("mariadb_held", default=None)


@contextmanager
def _session(node: MariadbNode, *, used_by: str, timeout_s: int) -> Iterator[Any]:
    held = _HELD.get()
    if held is not None and node.conn_id in held:
        yield held[node.conn_id]
        return
    with _replication_session(get_connection(node.conn_id, used_by), timeout_s) as session:
        yield session


@contextmanager
def _holding(nodes: list[MariadbNode], *, used_by: str, timeout_s: int) -> Iterator[None]:
    """Keep one session per node open while the block runs (a session that breaks is opened again)."""
    with ExitStack() as stack:
        held: dict[str, Any] = {}
        for node in nodes:
            conn = get_connection(node.conn_id, used_by)
            held[node.conn_id] = stack.enter_context(_replication_session(conn, timeout_s))
        token = _HELD.set(held)
        try:
            yield
        finally:
            _HELD.reset(token)


def _execute(
    node: MariadbNode, statements: list[str | tuple[str, list[Any]]], *, used_by: str, what: str
) -> None:
    import pymysql

    try:
        with _session(node, used_by=used_by, timeout_s=30) as session, session.cursor() as cursor:
            for statement in statements:
                if isinstance(statement, tuple):
                    cursor.execute(statement[0], statement[1])
                else:
                    cursor.execute(statement)
    except pymysql.MySQLError as error:
        raise ReplicationError(f"{used_by}: {what} on {node.name} failed: {first_line(error)}") from error


def _query(node: MariadbNode, query: str, *, used_by: str, timeout_s: int = 10) -> dict[str, Any] | None:
    import pymysql

    try:
        with _session(node, used_by=used_by, timeout_s=timeout_s) as session:
            return _one(session, query)
    except pymysql.MySQLError as error:
        raise ReplicationError(f"{used_by}: reading {node.name} failed: {first_line(error)}") from error


def fence(node: MariadbNode, *, used_by: str, how: str = "read-only") -> str:
    """Stop ``node`` taking writes: ``read_only = 1`` and every other client session ended, so
    first-writable clients move on; return what was done. Undo with :func:`unfence`.

    MariaDB has no ``stop`` fence here: the server's processes are not ours to stop (``how`` is accepted
    for the protocol; anything but ``read-only`` is refused).
    """
    if how != "read-only":
        raise ReplicationError(f"{used_by}: MariaDB nodes are fenced read-only, not {how!r}")
    log.info("%s: plan: fence %s read-only and end its client sessions", used_by, node.name)
    import pymysql

    conn = get_connection(node.conn_id, used_by)
    ended = 0
    try:
        with _replication_session(conn, 30) as session, session.cursor() as cursor:
            cursor.execute("SET GLOBAL read_only = 1")
            cursor.execute(
                "SELECT id FROM information_schema.processlist WHERE id <> CONNECTION_ID() "
                "AND command NOT IN ('Daemon', 'Binlog Dump', 'Slave_IO', 'Slave_SQL', 'Slave_worker') "
                "AND user NOT IN ('system user', 'event_scheduler')"
            )
            for row in cursor.fetchall():
                try:
                    cursor.execute("KILL CONNECTION %s", [int(row["id"])])
                    ended += 1
                except pymysql.MySQLError:
                    pass  # the session ended by itself meanwhile
    except pymysql.MySQLError as error:
        raise ReplicationError(f"{used_by}: fencing {node.name} failed: {first_line(error)}") from error
    decision = f"fenced {node.name}: read_only=1, {ended} client session(s) ended"
    log.info("%s: %s", used_by, decision)
    return decision


def unfence(node: MariadbNode, *, used_by: str) -> str:
    """Undo a fence: ``read_only = 0`` (refused on a server that replicates: it would be a second writer).

    :raises ReplicationError: the node replicates from another server.
    """
    if _query(node, "SHOW SLAVE STATUS", used_by=used_by):
        raise ReplicationError(
            f"{used_by}: refusing to unfence {node.name}: it replicates from another server "
            "(read_only off there would make two writers)"
        )
    _execute(node, ["SET GLOBAL read_only = 0"], used_by=used_by, what="unfencing")
    decision = f"unfenced {node.name}: read_only=0"
    log.info("%s: %s", used_by, decision)
    return decision


def gtid_wait(node: MariadbNode, position: str, *, used_by: str, timeout_s: float) -> tuple[bool, str]:
    """``MASTER_GTID_WAIT(position, timeout_s)`` on the replica: whether it applied ``position`` in
    time, and its ``@@gtid_slave_pos`` afterwards."""
    import pymysql

    try:
        with _session(node, used_by=used_by, timeout_s=int(timeout_s) + 10) as session:
            with session.cursor() as cursor:
                cursor.execute("SELECT MASTER_GTID_WAIT(%s, %s) AS waited", [position, float(timeout_s)])
                row = cursor.fetchone()
            seen = _one(session, "SELECT @@GLOBAL.gtid_slave_pos AS pos") or {}
    except pymysql.MySQLError as error:
        raise ReplicationError(
            f"{used_by}: MASTER_GTID_WAIT on {node.name} failed: {first_line(error)}"
        ) from error
    waited = (row or {}).get("waited")
    return waited is not None and int(waited) == 0, str(seen.get("pos") or "")


def _source(node: MariadbNode, *, used_by: str) -> tuple[str, int, str, str]:
    """Where replicas reach ``node`` and as whom: (host, port, user, password)."""
    if node.replication_conn_id is None:
        raise ReplicationError(
            f"{used_by}: {node.name} has no replication_conn_id: nothing can replicate from it (give the "
            "member the account its replicas log in with)"
        )
    conn = get_connection(node.replication_conn_id, used_by)
    if not conn.host or not conn.login:
        raise ReplicationError(
            f"{used_by}: connection {node.replication_conn_id!r} (replication source {node.name}) needs "
            "host and login"
        )
    return conn.host, int(conn.port or 3306), conn.login, conn.password or ""


def _wait_replicating(node: MariadbNode, *, used_by: str, timeout_s: float) -> tuple[bool, str, int | None]:
    """Wait until both replication threads run: (whether they do, the last status seen, IO errno)."""
    deadline = time.monotonic() + timeout_s
    last, errno = "no replication status", None
    while True:
        row = _query(node, "SHOW SLAVE STATUS", used_by=used_by) or {}
        io, sql = row.get("Slave_IO_Running"), row.get("Slave_SQL_Running")
        errno = int(row.get("Last_IO_Errno") or 0) or None
        error = row.get("Last_IO_Error") or row.get("Last_SQL_Error") or ""
        last = f"IO {io}, SQL {sql}" + (f", error {errno}: {error}" if error else "")
        if io == "Yes" and sql == "Yes":
            return True, last, None
        if errno == ERROR_BINLOG_POSITION or (io == "No" and error):
            return False, last, errno
        if time.monotonic() >= deadline:
            return False, last, errno
        time.sleep(_POLL_S * 5)


def rejoin(
    node: MariadbNode, *, new_primary: MariadbNode, used_by: str, timeout_s: float = 60
) -> tuple[tuple[Step, ...], str]:
    """Point ``node`` (the old primary, read_only) at ``new_primary`` from its own GTID position; return
    the steps and what replication said.

    :raises RejoinFailed: error 1236 (``node`` has transactions ``new_primary`` never had: the diverged
        GTIDs are in the message) or the threads do not run within ``timeout_s``; ``node`` is left
        read_only with replication stopped, ``new_primary`` serving alone (degraded redundancy).
    """
    steps: list[Step] = []
    host, port, user, password = _source(new_primary, used_by=used_by)
    own = (
        _query(node, "SELECT @@GLOBAL.gtid_binlog_pos AS binlog, @@GLOBAL.read_only AS ro", used_by=used_by)
        or {}
    )
    if not int(own.get("ro") or 0):
        raise RejoinFailed(
            f"{used_by}: refusing to repoint {node.name}: read_only is off (it may take writes: fence it "
            "first)",
            steps,
        )
    started = _now()
    log.info(
        "%s: plan: repoint %s (gtid_binlog_pos %s) at %s (%s:%s as %s), MASTER_USE_GTID=slave_pos",
        used_by,
        node.name,
        own.get("binlog"),
        new_primary.name,
        host,
        port,
        user,
    )
    _execute(
        node,
        [
            "STOP SLAVE",
            "RESET SLAVE ALL",
            "SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos",
            (
                "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
                "MASTER_PASSWORD = %s, "
                "MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1",
                [host, port, user, password],
            ),
            "START SLAVE",
        ],
        used_by=used_by,
        what=f"repointing at {new_primary.name}",
    )
    steps.append(
        Step(
            "repoint",
            started,
            _now(),
            f"{node.name} from gtid {own.get('binlog')} at {host}:{port} as {user}",
        )
    )
    started = _now()
    running, last, errno = _wait_replicating(node, used_by=used_by, timeout_s=timeout_s)
    steps.append(Step("replicating", started, _now(), f"{node.name}: {last}", ok=running))
    if running:
        return tuple(steps), f"{node.name} replicates from {new_primary.name} from gtid {own.get('binlog')}"
    _execute(node, ["STOP SLAVE"], used_by=used_by, what="stopping the failed replication")
    theirs = _query(new_primary, "SELECT @@GLOBAL.gtid_binlog_pos AS binlog", used_by=used_by) or {}
    if errno == ERROR_BINLOG_POSITION:
        raise RejoinFailed(
            f"{used_by}: {node.name} cannot rejoin {new_primary.name} (error 1236): it holds transactions "
            f"{new_primary.name} never received (its gtid_binlog_pos {own.get('binlog')}, "
            f"{new_primary.name}'s {theirs.get('binlog')}); {new_primary.name} serves alone (degraded "
            f"redundancy): flash back or rebuild {node.name} (mariadb-dump --gtid) by hand",
            steps,
        )
    raise RejoinFailed(
        f"{used_by}: {node.name} does not replicate from {new_primary.name} within {timeout_s:g} s "
        f"({last}); {new_primary.name} serves alone (degraded redundancy)",
        steps,
    )


def switchover(
    old: MariadbNode,
    new: MariadbNode,
    *,
    cluster: str,
    used_by: str,
    catch_up_timeout_s: float = 30,
    rejoin_timeout_s: float = 60,
) -> SwitchoverResult:
    """Planned switchover from primary ``old`` to replica ``new`` (the module's four steps); return
    each step with its timing and what the servers said.

    :raises ReplicationError: a precondition failed; nothing was done.
    :raises SwitchoverAborted: ``new`` did not apply ``old``'s position within ``catch_up_timeout_s``
        (or could not be promoted): ``old`` takes writes again, ``new`` is left replicating.
    :raises RejoinFailed: ``new`` is primary; ``old`` could not rejoin (degraded redundancy).
    """
    steps: list[Step] = []
    before_old = member_state(old.conn_id, name=old.name, used_by=used_by)
    before_new = member_state(new.conn_id, name=new.name, used_by=used_by)
    if not (before_old.reachable and before_old.role == "primary"):
        raise ReplicationError(
            f"{used_by}: {cluster}: {old.name} is not a reachable primary "
            f"({before_old.error or before_old.role or 'read_only and replicating from nothing'}); "
            "nothing was done"
        )
    if not (before_new.reachable and before_new.role == "replica" and before_new.streaming):
        raise ReplicationError(
            f"{used_by}: {cluster}: {new.name} is not a replicating replica "
            f"({before_new.error or before_new.role}, threads running {before_new.streaming}); "
            "nothing was done"
        )
    old_address = _address(get_connection(old.conn_id, used_by))
    _source(new, used_by=used_by)  # refuse before anything moves when the old one could not follow it
    log.info(
        "%s: %s: plan: switchover %s (gtid %s) -> %s (gtid %s); catch-up bound %g s",
        used_by,
        cluster,
        old.name,
        before_old.position,
        new.name,
        before_new.position,
        catch_up_timeout_s,
    )

    def abort(reason: str) -> SwitchoverAborted:
        log.warning(
            "%s: %s: aborting the switchover: %s; read_only=0 on %s again", used_by, cluster, reason, old.name
        )
        started = _now()
        _execute(old, ["SET GLOBAL read_only = 0"], used_by=used_by, what="restoring writes")
        after = member_state(old.conn_id, name=old.name, used_by=used_by)
        steps.append(
            Step(
                "abort_restore_old",
                started,
                _now(),
                f"{old.name} is {after.role or after.error} again",
                after.role == "primary",
            )
        )
        result = SwitchoverResult(cluster, old.name, old.name, tuple(steps), aborted=reason)
        return SwitchoverAborted(
            f"{used_by}: {cluster}: switchover {old.name} -> {new.name} aborted: {reason}; {old.name} takes "
            f"writes again ({after.role or after.error}), {new.name} left replicating",
            result,
        )

    with _holding([old, new], used_by=used_by, timeout_s=int(max(catch_up_timeout_s, rejoin_timeout_s)) + 30):
        return _switch(
            old,
            new,
            cluster=cluster,
            used_by=used_by,
            steps=steps,
            abort=abort,
            catch_up_timeout_s=catch_up_timeout_s,
            rejoin_timeout_s=rejoin_timeout_s,
            old_address=old_address,
        )


def _switch(
    old: MariadbNode,
    new: MariadbNode,
    *,
    cluster: str,
    used_by: str,
    steps: list[Step],
    abort: Callable[[str], SwitchoverAborted],
    catch_up_timeout_s: float,
    rejoin_timeout_s: float,
    old_address: str,
) -> SwitchoverResult:
    """The acting part of :func:`switchover`, on held sessions."""
    started = _now()
    _execute(old, ["SET GLOBAL read_only = 1", "FLUSH TABLES"], used_by=used_by, what="making it read_only")
    position = str(
        (_query(old, "SELECT @@GLOBAL.gtid_binlog_pos AS pos", used_by=used_by) or {}).get("pos") or ""
    )
    steps.append(
        Step(
            "read_only", started, _now(), f"{old.name}: read_only=1, FLUSH TABLES; gtid_binlog_pos {position}"
        )
    )
    started = _now()
    try:
        caught_up, applied = gtid_wait(new, position, used_by=used_by, timeout_s=catch_up_timeout_s)
    except ReplicationError as error:
        steps.append(Step("catch_up", started, _now(), first_line(error), ok=False))
        raise abort(first_line(error)) from error
    steps.append(
        Step(
            "catch_up",
            started,
            _now(),
            f"{new.name} applied {applied} (waited for {position}: {caught_up})",
            caught_up,
        )
    )
    if not caught_up:
        raise abort(
            f"{new.name} did not apply {old.name}'s position {position} within {catch_up_timeout_s:g} s "
            f"(applied {applied})"
        )
    started = _now()
    try:
        _execute(
            new,
            ["STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = 0"],
            used_by=used_by,
            what="promoting",
        )
    except ReplicationError as error:
        steps.append(Step("promote", started, _now(), first_line(error), ok=False))
        now_new = member_state(new.conn_id, name=new.name, used_by=used_by)
        if now_new.reachable and now_new.role != "primary":
            # Put it back under the old primary before the old one takes writes again.
            _execute(new, ["SET GLOBAL read_only = 1"], used_by=used_by, what="re-fencing")
            raise abort(f"promoting {new.name} failed: {first_line(error)}") from error
        raise ReplicationError(
            f"{used_by}: {cluster}: promoting {new.name} failed half-way ({now_new.role or now_new.error}); "
            f"{old.name} stays read_only (not restored: it could make two writers): read both servers"
        ) from error
    after = member_state(new.conn_id, name=new.name, used_by=used_by)
    steps.append(
        Step(
            "promote", started, _now(), f"{new.name}: STOP SLAVE, RESET SLAVE ALL, read_only=0 ({after.role})"
        )
    )
    log.info("%s: %s: %s takes writes; repointing %s (%s)", used_by, cluster, new.name, old.name, old_address)
    try:
        rejoin_steps, message = rejoin(old, new_primary=new, used_by=used_by, timeout_s=rejoin_timeout_s)
    except RejoinFailed as error:
        error.steps = (*steps, *error.steps)
        raise
    steps.extend(rejoin_steps)
    return SwitchoverResult(
        cluster,
        old.name,
        new.name,
        tuple(steps),
        switch_position=position,
        replayed_position=applied,
        rejoin=message,
    )


__all__ = ["ERROR_BINLOG_POSITION", "MariadbNode", "fence", "gtid_wait", "rejoin", "switchover", "unfence"]
