"""Native PostgreSQL planned switchover, fail-back, fence and rejoin: the replication verbs that move
the primary between two servers without a manager (no Patroni), as the failover drill drives them.

A planned switchover loses no acknowledged write when done in this order (measured 12 of 12 times,
``../shared/notes/failover.md`` section 1.2):

1. ``pg_ctl stop -m fast`` on the primary: sessions end, a shutdown checkpoint is written, and the
   walsenders send everything up to it before they exit.
2. ``pg_controldata`` on the stopped primary: state ``shut down`` and its latest checkpoint LSN.
3. Wait, bounded, until the candidate's ``pg_last_wal_replay_lsn()`` is past that LSN. On timeout the
   switchover aborts: the old primary is started again as primary (it was only stopped) and the
   candidate is left as it was.
4. ``pg_promote`` the candidate (:func:`cloudops.engines.postgres.promote`, which refuses while the old
   primary takes writes), then ``CHECKPOINT`` on it (PostgreSQL 15's pg_rewind reads the source's
   timeline from pg_control).
5. Rejoin the old primary (:func:`rejoin`): ``pg_rewind`` from the new primary (``no rewind required``
   after a clean switchover: that message is the evidence of no divergence), its own configuration
   files put back (pg_rewind copies the source's), ``standby.signal`` and ``primary_conninfo``, start,
   and wait until the new primary sees it streaming.

Fail-back is the same switchover with the roles swapped. The server programs run on the node's host
through a :class:`NodeHost`: :class:`LocalNodeHost` runs them on this machine as the server's OS user
(the sandbox and the tests); a fleet host over SSH is the seam for remote clusters.

No password is written anywhere: pg_rewind gets the connection's password in its environment only
(never argv), and the rejoined standby's ``primary_conninfo`` names host, port, user and
application name; its password comes from the node's own ``~/.pgpass`` (or the server trusts it).
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from cloudops.connections import get_connection
from cloudops.engines.postgres.replication import (
    _replication_session,
    lsn_bytes,
    member_state,
    promote,
)
from cloudops.engines.replication import RejoinFailed, Step, SwitchoverAborted, SwitchoverResult
from cloudops.errors import ReplicationError, first_line

if TYPE_CHECKING:
    from airflow.sdk import Connection

log = logging.getLogger(__name__)

DEFAULT_BINDIR = "/usr/lib/postgresql/15/bin"
_POLL_S = 0.02


class NodeNotLocal(ReplicationError):
    """A node's server programs would have to run on another machine, which is not built yet."""


@dataclass(frozen=True)
class CommandResult:
    """What a server program said: exit status and output (never holds a secret)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together, stripped."""
        return (self.stdout + self.stderr).strip()


class NodeHost(Protocol):
    """Where a node's server programs run (``pg_ctl``, ``pg_controldata``, ``pg_rewind``, ``cat``)."""

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` as the server's OS user; a timeout is exit status -1 with a message."""
        ...


@dataclass(frozen=True)
class LocalNodeHost:
    """This machine: programs run as ``os_user`` (through ``runuser`` when we are root)."""

    os_user: str = "postgres"

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        prefix: list[str] = []
        if pwd.getpwuid(os.geteuid()).pw_name != self.os_user:
            if os.geteuid() != 0:
                raise ReplicationError(
                    f"cannot run {argv[0]} as {self.os_user}: this process is neither {self.os_user} nor root"
                )
            prefix = ["runuser", "-u", self.os_user, "--"]
        try:
            done = subprocess.run(
                [*prefix, *argv],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
                cwd="/",
                env={**os.environ, **(env or {})},
                # A server started here (pg_ctl start) must outlive the task that started it: a task's
                # process group is signalled when the task ends or is killed.
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            return CommandResult(-1, "", f"{argv[0]} did not finish within {timeout_s:g} s")
        return CommandResult(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class PostgresNode:
    """A PostgreSQL server a drill may stop, start and rewind.

    :param name: the member's name (the catalog's); the rejoined standby's ``application_name``.
    :param conn_id: the Airflow connection id of a superuser on it.
    :param data_dir: its data directory on ``host``.
    :param log_file: where ``pg_ctl start`` writes the server's output; beside the data directory when
        not given (inside it, pg_rewind would overwrite it with the source's).
    :param keep_files: the node's own configuration files in the data directory, put back after
        pg_rewind (which copies the source's): its port, its listen address, its ALTER SYSTEM settings.
    :param rewind_conn_id: a connection to this server as a role allowed to be pg_rewind's source when
        it is the new primary (the catalog's ``rewind_conn_id``); None: ``conn_id``.
    :param follow_conninfo: how a standby of this server connects to it when it is the primary (no
        password: the standby's ``~/.pgpass`` or the server's trust gives it); None: built from
        ``conn_id``'s host, port and user.
    :param socket_dir: the server's first unix socket directory, as it said (None: not read).
    """

    def socket_inside_data_dir(self) -> bool:
        """Whether the server's unix socket lives in its data directory: pg_rewind after a crash copies
        the source's changed files and fails on the socket there ("No such device or address")."""
        if not self.socket_dir:
            return False
        return f"{self.socket_dir.rstrip('/')}/".startswith(f"{self.data_dir.rstrip('/')}/")

    name: str
    conn_id: str
    data_dir: str
    bin_dir: str = DEFAULT_BINDIR
    host: NodeHost = field(default_factory=LocalNodeHost)
    log_file: str | None = None
    keep_files: tuple[str, ...] = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")
    rewind_conn_id: str | None = None
    follow_conninfo: str | None = None
    socket_dir: str | None = None

    @staticmethod
    def keep_files_default() -> tuple[str, ...]:
        """The configuration files every node keeps over a pg_rewind."""
        return ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")

    def tool(self, name: str) -> str:
        """The path of server program ``name``."""
        return f"{self.bin_dir.rstrip('/')}/{name}"


def _now() -> float:
    return time.time()


def _run(node: PostgresNode, argv: list[str], *, timeout_s: float, **kwargs: object) -> CommandResult:
    return node.host.run(argv, timeout_s=timeout_s, **kwargs)  # type: ignore[arg-type]


def controldata(node: PostgresNode, *, used_by: str) -> dict[str, str]:
    """``pg_controldata`` of the node's data directory as a mapping (``Database cluster state``,
    ``Latest checkpoint location``, ``Latest checkpoint's TimeLineID``...).

    :raises ReplicationError: the program failed (no data directory, not readable).
    """
    done = _run(node, [node.tool("pg_controldata"), "-D", node.data_dir], timeout_s=30)
    if done.returncode != 0:
        raise ReplicationError(f"{used_by}: pg_controldata on {node.name} failed: {done.output[:500]}")
    fields: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields[key.strip()] = value.strip()
    return fields


def server_running(node: PostgresNode) -> bool:
    """Whether a server runs on the node's data directory (``pg_ctl status``)."""
    return _run(node, [node.tool("pg_ctl"), "status", "-D", node.data_dir], timeout_s=30).returncode == 0


def _log_file(node: PostgresNode) -> str:
    return node.log_file or f"{node.data_dir.rstrip('/')}.log"


def start_server(node: PostgresNode, *, used_by: str, timeout_s: float = 60) -> Step:
    """``pg_ctl start -w``: start the node's server and wait (bounded) until it accepts connections.

    :raises ReplicationError: it did not start within ``timeout_s``.
    """
    started = _now()
    done = _run(
        node,
        [
            node.tool("pg_ctl"),
            "start",
            "-w",
            "-t",
            str(int(timeout_s)),
            "-D",
            node.data_dir,
            "-l",
            _log_file(node),
        ],
        timeout_s=timeout_s + 10,
    )
    if done.returncode != 0:
        raise ReplicationError(
            f"{used_by}: starting {node.name} failed: {done.output[:500]} (server log: {_log_file(node)})"
        )
    return Step("start", started, _now(), f"started {node.name}")


def stop_fast(node: PostgresNode, *, used_by: str, timeout_s: float = 60) -> Step:
    """``pg_ctl stop -m fast -w``: end every session, write the shutdown checkpoint, stop.

    :raises ReplicationError: it did not stop within ``timeout_s`` (it may still be running).
    """
    started = _now()
    argv = [node.tool("pg_ctl"), "stop", "-w", "-t", str(int(timeout_s)), "-m", "fast", "-D", node.data_dir]
    done = _run(node, argv, timeout_s=timeout_s + 10)
    if done.returncode != 0:
        raise ReplicationError(f"{used_by}: stopping {node.name} (fast) failed: {done.output[:500]}")
    return Step("stop", started, _now(), f"stopped {node.name} (fast)")


def shutdown_checkpoint(node: PostgresNode, *, used_by: str) -> tuple[str, str]:
    """The stopped node's cluster state and latest checkpoint LSN, read from pg_control."""
    fields = controldata(node, used_by=used_by)
    return fields.get("Database cluster state", "unknown"), fields.get("Latest checkpoint location", "")


def wait_replayed_past(conn_id: str, lsn: str, *, used_by: str, timeout_s: float) -> tuple[bool, str | None]:
    """Wait (at most ``timeout_s``) until the replica's replay LSN is past ``lsn``; whether it got
    there and the last replay LSN seen."""
    import psycopg

    conn = get_connection(conn_id, used_by)
    target = lsn_bytes(lsn)
    deadline = time.monotonic() + timeout_s
    seen: str | None = None
    while True:
        try:
            with _replication_session(conn, 5) as session:
                while True:
                    row = session.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
                    seen = None if row is None or row[0] is None else str(row[0])
                    if seen is not None and lsn_bytes(seen) > target:
                        return True, seen
                    if time.monotonic() >= deadline:
                        return False, seen
                    time.sleep(_POLL_S)
        except psycopg.Error as error:
            log.warning("%s: reading the replay position: %s", used_by, first_line(error))
            if time.monotonic() >= deadline:
                return False, seen
            time.sleep(0.2)


def _sql(conn_id: str, statement: str, *, used_by: str, what: str) -> None:
    import psycopg

    conn = get_connection(conn_id, used_by)
    try:
        with _replication_session(conn, 60) as session:
            session.execute(statement)
    except psycopg.Error as error:
        raise ReplicationError(f"{used_by}: {what} failed: {first_line(error)}") from error


FenceHow = Literal["stop", "read-only"]


def fence(node: PostgresNode, *, used_by: str, how: FenceHow = "stop", timeout_s: float = 60) -> str:
    """Stop a node taking writes (two writers were seen, or before a promotion); return what was done.

    ``stop``: ``pg_ctl stop -m fast`` (the strongest fence; the answer gives its shutdown checkpoint).
    ``read-only``: where the server must stay up, ``default_transaction_read_only=on`` through ALTER
    SYSTEM and a reload, and every other client session terminated: clients routing with
    ``target_session_attrs=read-write`` then refuse the server. Undo with :func:`unfence`.
    """
    if how == "stop":
        if not server_running(node):
            decision = f"no action: {node.name} is not running (nothing to fence)"
        else:
            log.info("%s: plan: fence %s by stopping it (fast)", used_by, node.name)
            stop_fast(node, used_by=used_by, timeout_s=timeout_s)
            state, lsn = shutdown_checkpoint(node, used_by=used_by)
            decision = f"fenced {node.name}: stopped (fast); cluster state {state}, shutdown checkpoint {lsn}"
        log.info("%s: %s", used_by, decision)
        return decision
    log.info("%s: plan: fence %s read-only and end its client sessions", used_by, node.name)
    _sql(
        node.conn_id,
        "ALTER SYSTEM SET default_transaction_read_only = on",
        used_by=used_by,
        what=f"fencing {node.name}",
    )
    _sql(node.conn_id, "SELECT pg_reload_conf()", used_by=used_by, what=f"reloading {node.name}")
    _sql(
        node.conn_id,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND pid <> pg_backend_pid()",
        used_by=used_by,
        what=f"ending the client sessions of {node.name}",
    )
    decision = f"fenced {node.name}: default_transaction_read_only=on, client sessions ended"
    log.info("%s: %s", used_by, decision)
    return decision


def unfence(node: PostgresNode, *, used_by: str) -> str:
    """Undo a ``read-only`` fence: reset ``default_transaction_read_only`` and reload."""
    _sql(
        node.conn_id,
        "ALTER SYSTEM RESET default_transaction_read_only",
        used_by=used_by,
        what=f"unfencing {node.name}",
    )
    _sql(node.conn_id, "SELECT pg_reload_conf()", used_by=used_by, what=f"reloading {node.name}")
    decision = f"unfenced {node.name}: default_transaction_read_only reset"
    log.info("%s: %s", used_by, decision)
    return decision


def _quote_setting(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _conninfo(conn: Connection, *, application_name: str | None = None) -> str:
    from psycopg.conninfo import make_conninfo

    params = {"host": conn.host or "", "port": str(conn.port or 5432), "user": conn.login or ""}
    if application_name:
        params["application_name"] = application_name
    else:
        params["dbname"] = conn.schema or "postgres"
    return make_conninfo("", **{k: v for k, v in params.items() if v})


def _follow_conninfo(primary: PostgresNode, application_name: str, *, used_by: str) -> str:
    """What a standby of ``primary`` writes in ``primary_conninfo`` (never a password)."""
    if primary.follow_conninfo:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = {k: v for k, v in conninfo_to_dict(primary.follow_conninfo).items() if k != "password"}
        return make_conninfo("", **{**params, "application_name": application_name})
    return _conninfo(get_connection(primary.conn_id, used_by), application_name=application_name)


def _read_file(node: PostgresNode, name: str) -> str | None:
    path = f"{node.data_dir.rstrip('/')}/{name}"
    done = _run(node, ["cat", path], timeout_s=30)
    return done.stdout if done.returncode == 0 else None


def _write_file(node: PostgresNode, name: str, text: str, *, used_by: str) -> None:
    path = f"{node.data_dir.rstrip('/')}/{name}"
    done = _run(node, ["sh", "-c", 'cat > "$1"', "sh", path], timeout_s=30, stdin=text)
    if done.returncode != 0:
        raise ReplicationError(f"{used_by}: writing {path} on {node.name} failed: {done.output[:300]}")


def _wait_streaming(
    primary: PostgresNode, standby: PostgresNode, *, used_by: str, timeout_s: float
) -> tuple[bool, str]:
    """Wait until the primary lists the standby (by application name) as streaming."""
    import psycopg

    conn = get_connection(primary.conn_id, used_by)
    deadline = time.monotonic() + timeout_s
    last = "not connected"
    while time.monotonic() < deadline:
        try:
            with _replication_session(conn, 5) as session:
                row = session.execute(
                    "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                    [standby.name],
                ).fetchone()
        except psycopg.Error as error:
            row, last = None, first_line(error)
        if row is not None:
            last = f"{row[0]} ({row[1]})"
            if row[0] == "streaming":
                return True, last
        time.sleep(_POLL_S * 2)
    return False, last


def rejoin(
    node: PostgresNode, *, new_primary: PostgresNode, used_by: str, timeout_s: float = 60
) -> tuple[tuple[Step, ...], str]:
    """Bring the stopped old primary back as a replica of ``new_primary``; return the steps and
    pg_rewind's message (the evidence of divergence or its absence).

    :raises RejoinFailed: pg_rewind failed, or the node did not start or stream within ``timeout_s``;
        the new primary is left serving alone (degraded redundancy) and the node stopped.
    """
    steps: list[Step] = []
    if server_running(node):
        raise RejoinFailed(
            f"{used_by}: refusing to rewind {node.name}: it is running (stop or fence it first)", steps
        )
    source = get_connection(new_primary.rewind_conn_id or new_primary.conn_id, used_by)
    started = _now()
    _sql(new_primary.conn_id, "CHECKPOINT", used_by=used_by, what=f"CHECKPOINT on {new_primary.name}")
    steps.append(Step("checkpoint", started, _now(), f"CHECKPOINT on {new_primary.name}"))

    kept = {name: _read_file(node, name) for name in node.keep_files}
    started = _now()
    log.info(
        "%s: plan: pg_rewind %s from %s, keeping its own %s",
        used_by,
        node.name,
        new_primary.name,
        ", ".join(n for n, text in kept.items() if text is not None),
    )
    env = {"PGPASSWORD": source.password} if source.password else {}
    done = _run(
        node,
        [node.tool("pg_rewind"), "--target-pgdata", node.data_dir, "--source-server", _conninfo(source)],
        timeout_s=max(timeout_s, 600),
        env=env,
    )
    message = " / ".join(line.removeprefix("pg_rewind: ") for line in done.output.splitlines() if line)
    if done.returncode != 0:
        # The end of its output says why (after a crash, the stand-alone recovery's log comes first).
        why = message if len(message) <= 500 else "..." + message[-500:]
        steps.append(Step("rewind", started, _now(), why, ok=False))
        raise RejoinFailed(
            f"{used_by}: pg_rewind of {node.name} from {new_primary.name} failed: {why}; "
            f"{new_primary.name} serves alone (degraded redundancy): rebuild {node.name} as a replica "
            "(pg_basebackup) or fail back by hand",
            steps,
        )
    steps.append(Step("rewind", started, _now(), message))

    started = _now()
    for name, text in kept.items():
        if text is not None:
            _write_file(node, name, text, used_by=used_by)
    auto = kept.get("postgresql.auto.conf") or _read_file(node, "postgresql.auto.conf") or ""
    lines = [line for line in auto.splitlines() if not line.strip().startswith("primary_conninfo")]
    follow = _follow_conninfo(new_primary, node.name, used_by=used_by)
    lines.append(f"primary_conninfo = {_quote_setting(follow)}")
    _write_file(node, "postgresql.auto.conf", "\n".join(lines) + "\n", used_by=used_by)
    _write_file(node, "standby.signal", "", used_by=used_by)
    steps.append(
        Step("standby_config", started, _now(), f"standby.signal; primary_conninfo {follow} (no password)")
    )
    try:
        steps.append(start_server(node, used_by=used_by, timeout_s=timeout_s))
    except ReplicationError as error:
        raise RejoinFailed(
            f"{error}; {new_primary.name} serves alone (degraded redundancy)", steps
        ) from error
    started = _now()
    streaming, state = _wait_streaming(new_primary, node, used_by=used_by, timeout_s=timeout_s)
    steps.append(
        Step("streaming", started, _now(), f"{node.name} as seen by {new_primary.name}: {state}", streaming)
    )
    if not streaming:
        raise RejoinFailed(
            f"{used_by}: {node.name} started as a standby but does not stream from {new_primary.name} "
            f"within {timeout_s:g} s (last seen: {state}); redundancy is degraded",
            steps,
        )
    return tuple(steps), message


def switchover(
    old: PostgresNode,
    new: PostgresNode,
    *,
    cluster: str,
    used_by: str,
    catch_up_timeout_s: float = 30,
    promote_wait_s: int = 60,
    rejoin_timeout_s: float = 60,
) -> SwitchoverResult:
    """Planned switchover from primary ``old`` to replica ``new`` (the module's five steps); return
    each step with its timing and what the servers said.

    :raises ReplicationError: a precondition failed (nothing was done) or the old primary would not stop.
    :raises SwitchoverAborted: the candidate did not replay the shutdown checkpoint in
        ``catch_up_timeout_s`` (or the stopped primary was not cleanly shut down, or the promotion
        failed): the old primary was started again as primary, the candidate left as it was.
    :raises RejoinFailed: promoted, but the old primary could not rejoin (degraded redundancy).
    """
    steps: list[Step] = []
    before_old = member_state(old.conn_id, name=old.name, used_by=used_by)
    before_new = member_state(new.conn_id, name=new.name, used_by=used_by)
    if not (before_old.reachable and before_old.role == "primary"):
        raise ReplicationError(
            f"{used_by}: {cluster}: {old.name} is not a reachable primary "
            f"({before_old.error or before_old.role}); nothing was done"
        )
    if not (before_new.reachable and before_new.role == "replica" and before_new.streaming):
        raise ReplicationError(
            f"{used_by}: {cluster}: {new.name} is not a streaming replica "
            f"({before_new.error or before_new.role}, streaming {before_new.streaming}); nothing was done"
        )
    log.info(
        "%s: %s: plan: switchover %s (timeline %s, %s) -> %s (replayed %s); catch-up bound %g s",
        used_by,
        cluster,
        old.name,
        before_old.timeline,
        before_old.position,
        new.name,
        before_new.position,
        catch_up_timeout_s,
    )

    def abort(reason: str) -> SwitchoverAborted:
        log.warning(
            "%s: %s: aborting the switchover: %s; restarting %s as primary",
            used_by,
            cluster,
            reason,
            old.name,
        )
        restarted = start_server(old, used_by=used_by)
        after = member_state(old.conn_id, name=old.name, used_by=used_by)
        steps.append(
            Step(
                "abort_restart_old",
                restarted.started,
                _now(),
                f"{old.name} is {after.role or after.error} again",
                ok=after.role == "primary",
            )
        )
        result = SwitchoverResult(cluster, old.name, old.name, tuple(steps), aborted=reason)
        return SwitchoverAborted(
            f"{used_by}: {cluster}: switchover {old.name} -> {new.name} aborted: {reason}; {old.name} was "
            f"started again as primary ({after.role or after.error}), {new.name} left as it was",
            result,
        )

    steps.append(stop_fast(old, used_by=used_by))
    started = _now()
    state, lsn = shutdown_checkpoint(old, used_by=used_by)
    steps.append(
        Step(
            "shutdown_checkpoint",
            started,
            _now(),
            f"{old.name}: {state}, checkpoint {lsn}",
            ok=state == "shut down",
        )
    )
    if state != "shut down" or not lsn:
        raise abort(f"{old.name} stopped in state {state!r}, not 'shut down'")
    started = _now()
    caught_up, replayed = wait_replayed_past(new.conn_id, lsn, used_by=used_by, timeout_s=catch_up_timeout_s)
    steps.append(
        Step(
            "catch_up",
            started,
            _now(),
            f"{new.name} replayed {replayed} (past {lsn}: {caught_up})",
            ok=caught_up,
        )
    )
    if not caught_up:
        raise abort(
            f"{new.name} did not replay past {old.name}'s shutdown checkpoint {lsn} within "
            f"{catch_up_timeout_s:g} s (replayed {replayed})"
        )
    started = _now()
    try:
        decision = promote(
            new.conn_id,
            used_by=used_by,
            old_primary_conn_id=old.conn_id,
            wait_seconds=promote_wait_s,
        )
    except ReplicationError as error:
        now_new = member_state(new.conn_id, name=new.name, used_by=used_by)
        steps.append(Step("promote", started, _now(), first_line(error), ok=False))
        if now_new.reachable and now_new.role == "replica":
            raise abort(f"promoting {new.name} failed: {first_line(error)}") from error
        raise ReplicationError(
            f"{used_by}: {cluster}: promoting {new.name} failed and it is now "
            f"{now_new.role or now_new.error}; {old.name} is stopped and was NOT restarted (it could make "
            "two writers): read both servers before acting"
        ) from error
    after = member_state(new.conn_id, name=new.name, used_by=used_by)
    steps.append(Step("promote", started, _now(), decision))
    log.info(
        "%s: %s: %s is primary on timeline %s; rejoining %s",
        used_by,
        cluster,
        new.name,
        after.timeline,
        old.name,
    )
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
        switch_position=lsn,
        replayed_position=replayed,
        timeline=after.timeline,
        rejoin=message,
    )


def kill_server(node: PostgresNode, *, used_by: str) -> tuple[Step, tuple[str, ...]]:
    """Crash the node's server: SIGKILL to its postmaster and every child at once, as a host that
    loses power would leave it (no shutdown checkpoint, no walsender flushing); return the step and
    the pids signalled (:func:`wait_gone` waits for them).

    The postmaster is the process ``postmaster.pid`` names, and only when its working directory is the
    node's data directory (a stale pid file never gets another process killed).

    :raises ReplicationError: no server runs there, or the signal could not be sent.
    """
    started = _now()
    text = _read_file(node, "postmaster.pid") or ""
    first = text.split("\n", 1)[0].strip()
    if not first.isdigit():
        raise ReplicationError(
            f"{used_by}: cannot crash {node.name}: no postmaster.pid in {node.data_dir}; nothing was done"
        )
    postmaster = first
    cwd = _run(node, ["readlink", f"/proc/{postmaster}/cwd"], timeout_s=10).stdout.strip()
    if cwd.rstrip("/") != node.data_dir.rstrip("/"):
        raise ReplicationError(
            f"{used_by}: cannot crash {node.name}: pid {postmaster} from postmaster.pid is not the server "
            f"of {node.data_dir} (its directory: {cwd or 'gone'}); nothing was done"
        )
    log.info("%s: plan: SIGKILL the postmaster %s of %s and its children", used_by, postmaster, node.name)
    # Children first read, then all killed in one call: once the postmaster dies they are reparented.
    script = 'pm=$1; kids=$(ps -o pid= --ppid "$pm"); kill -KILL "$pm" $kids; echo "$pm" $kids'
    done = _run(node, ["sh", "-c", script, "sh", postmaster], timeout_s=10)
    pids = done.stdout.split()
    if done.returncode != 0 or not pids:
        raise ReplicationError(f"{used_by}: SIGKILL of {node.name}'s server failed: {done.output[:300]}")
    # A killed process stays a zombie until its parent (often init, in a container slow to reap) waits
    # for it: dead all the same, it holds no shared memory and no file.
    step = Step(
        "kill",
        started,
        _now(),
        f"SIGKILL to {node.name}'s postmaster {postmaster} and {len(pids) - 1} children",
    )
    return step, tuple(pids)


def wait_gone(node: PostgresNode, pids: Sequence[str], *, used_by: str, timeout_s: float = 60) -> Step:
    """Wait, bounded, until every killed process of the node is gone (reaped: the server's lock file
    names the postmaster's pid, and a zombie still counts there, so pg_rewind's recovery waits too).

    :raises ReplicationError: some are still there after ``timeout_s``.
    """
    started = _now()
    alive = 'for p; do kill -0 "$p" 2>/dev/null && exit 0; done; exit 1'
    deadline = time.monotonic() + timeout_s
    while _run(node, ["sh", "-c", alive, "sh", *pids], timeout_s=10).returncode == 0:
        if time.monotonic() >= deadline:
            raise ReplicationError(
                f"{used_by}: {node.name}: processes {' '.join(pids)} still exist {timeout_s:g} s "
                "after SIGKILL"
            )
        time.sleep(_POLL_S * 5)
    return Step("gone", started, _now(), f"{len(pids)} processes of {node.name} gone")


def crash_failover(
    old: PostgresNode,
    new: PostgresNode,
    *,
    cluster: str,
    used_by: str,
    detect_timeout_s: float = 10,
    promote_wait_s: int = 60,
    rejoin_timeout_s: float = 60,
) -> SwitchoverResult:
    """Unplanned failover drill: crash the primary ``old`` (:func:`kill_server`), act as the detector
    (the old primary no longer answers), promote ``new``, then ``pg_rewind`` the crashed node (which
    runs its crash recovery first, and says what diverged) and rejoin it as a standby of ``new``.

    What the old primary had written and not yet sent is lost; the drill measures that with its
    probe, this function does not assume it.

    :raises ReplicationError: a precondition failed (nothing was done), the old server is still
        answering after the kill, or the promotion failed (the old server is NOT restarted: read both).
    :raises RejoinFailed: promoted, but the old primary could not rejoin (degraded redundancy).
    """
    steps: list[Step] = []
    before_old = member_state(old.conn_id, name=old.name, used_by=used_by)
    before_new = member_state(new.conn_id, name=new.name, used_by=used_by)
    if not (before_old.reachable and before_old.role == "primary"):
        raise ReplicationError(
            f"{used_by}: {cluster}: {old.name} is not a reachable primary "
            f"({before_old.error or before_old.role}); nothing was done"
        )
    if not (before_new.reachable and before_new.role == "replica" and before_new.streaming):
        raise ReplicationError(
            f"{used_by}: {cluster}: {new.name} is not a streaming replica "
            f"({before_new.error or before_new.role}, streaming {before_new.streaming}); nothing was done"
        )
    log.info(
        "%s: %s: plan: crash %s (timeline %s, %s), promote %s (replayed %s), rewind and rejoin %s",
        used_by,
        cluster,
        old.name,
        before_old.timeline,
        before_old.position,
        new.name,
        before_new.position,
        old.name,
    )
    killed, pids = kill_server(old, used_by=used_by)
    steps.append(killed)
    started = _now()
    deadline = time.monotonic() + detect_timeout_s
    seen = member_state(old.conn_id, name=old.name, used_by=used_by, timeout_seconds=1)
    while seen.reachable:
        if time.monotonic() >= deadline:
            steps.append(Step("detect", started, _now(), f"{old.name} still answers", ok=False))
            raise ReplicationError(
                f"{used_by}: {cluster}: {old.name} still answers {detect_timeout_s:g} s after SIGKILL; "
                f"{new.name} was NOT promoted"
            )
        time.sleep(_POLL_S)
        seen = member_state(old.conn_id, name=old.name, used_by=used_by, timeout_seconds=1)
    steps.append(Step("detect", started, _now(), f"{old.name} down: {seen.error}"))
    started = _now()
    replayed_before = member_state(new.conn_id, name=new.name, used_by=used_by).position
    try:
        decision = promote(
            new.conn_id, used_by=used_by, old_primary_conn_id=old.conn_id, wait_seconds=promote_wait_s
        )
    except ReplicationError as error:
        steps.append(Step("promote", started, _now(), first_line(error), ok=False))
        raise ReplicationError(
            f"{used_by}: {cluster}: promoting {new.name} after crashing {old.name} failed: "
            f"{first_line(error)}; {old.name} is down and was NOT restarted: read both servers before acting"
        ) from error
    after = member_state(new.conn_id, name=new.name, used_by=used_by)
    steps.append(Step("promote", started, _now(), decision))
    try:
        # Only now: the writes move as soon as the old server stops answering, not once it is reaped.
        steps.append(wait_gone(old, pids, used_by=used_by, timeout_s=rejoin_timeout_s))
    except ReplicationError as error:
        raise RejoinFailed(f"{error}; {new.name} serves alone (degraded redundancy)", steps) from error
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
        switch_position=before_old.position,
        replayed_position=replayed_before,
        timeline=after.timeline,
        rejoin=message,
    )


# What a node's own server says about where it lives: the programs, data and configuration files the
# drill acts on are read from it, never assumed (superuser, or pg_read_all_settings and pg_monitor).
_NODE_FACTS = """
SELECT current_setting('data_directory'),
       current_setting('server_version_num')::int,
       split_part(current_setting('unix_socket_directories'), ',', 1),
       current_setting('port')::int,
       ARRAY(SELECT DISTINCT sourcefile FROM pg_file_settings WHERE sourcefile IS NOT NULL)
         || ARRAY[current_setting('hba_file'), current_setting('ident_file')]
"""
# Whether a standby may follow over the local socket without a password: the first local rule that
# covers replication for the role (pg_hba is read top down; this approximates its first match).
_LOCAL_REPLICATION_RULE = """
SELECT auth_method FROM pg_hba_file_rules
WHERE type = 'local' AND error IS NULL
  AND 'replication' = ANY(database)
  AND ('all' = ANY(user_name) OR %s = ANY(user_name))
ORDER BY line_number LIMIT 1
"""
_LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _is_local(host: str | None) -> bool:
    import socket

    if not host or host.startswith("/") or host in _LOCAL_HOSTS or host.startswith("127."):
        return True
    try:
        return socket.gethostbyname(host).startswith("127.")
    except OSError:
        return False


def discover_node(
    name: str,
    conn_id: str,
    *,
    used_by: str,
    rewind_conn_id: str | None = None,
    node_host: NodeHost | None = None,
) -> PostgresNode:
    """A :class:`PostgresNode` read from the running server: its data directory, the programs of its
    major version, the configuration files it reads from inside its data directory (kept over a
    pg_rewind), and how a standby follows it (the local socket when ``pg_hba`` trusts replication
    there, else TCP with the standby's own ``~/.pgpass``).

    :param node_host: where its programs run; None: this machine, which the server must be on.
    :raises ReplicationError: the server cannot be read, or it is not on this machine and no host
        says where its programs run.
    """
    import psycopg

    conn = get_connection(conn_id, used_by)
    if node_host is None and not _is_local(conn.host):
        raise NodeNotLocal(
            f"{used_by}: member {name} ({conn.host}:{conn.port or 5432}) is not on this machine, and "
            "running pg_ctl and pg_rewind on another host (over SSH) is not built yet: run the drill on "
            "the servers' machine"
        )
    try:
        with _replication_session(conn, 10) as session:
            row = session.execute(_NODE_FACTS).fetchone()
            assert row is not None
            data_dir, version_num, socket_dir, port, files = row
            rule = session.execute(_LOCAL_REPLICATION_RULE, [conn.login or ""]).fetchone()
    except psycopg.Error as error:
        raise ReplicationError(
            f"{used_by}: member {name} ({conn.host}:{conn.port or 5432}) cannot tell where it lives "
            f"(data directory, version, configuration files): {first_line(error)}"
        ) from error
    data_dir = str(data_dir).rstrip("/")
    inside = {str(f)[len(data_dir) + 1 :] for f in files or () if f and str(f).startswith(data_dir + "/")}
    keep = tuple(dict.fromkeys([*PostgresNode.keep_files_default(), *sorted(inside)]))
    host = node_host
    if host is None:
        owner = Path(data_dir).owner()
        host = LocalNodeHost(os_user=owner)
    follow = None
    if socket_dir and rule is not None and rule[0] == "trust":
        follow = f"host={socket_dir} port={int(port)} user={conn.login or 'postgres'}"
    return PostgresNode(
        name,
        conn_id,
        data_dir,
        bin_dir=f"/usr/lib/postgresql/{int(version_num) // 10000}/bin",
        host=host,
        keep_files=keep,
        rewind_conn_id=rewind_conn_id,
        follow_conninfo=follow,
        socket_dir=str(socket_dir) if socket_dir else None,
    )


# Work a switchover would cut short: a dump or base backup, or a transaction open longer than the
# bound (a fast stop ends it). Only what identifies it is read, never the query text.
_RUNNING_WORK = """
SELECT pid, backend_type, COALESCE(application_name, ''), COALESCE(usename, ''),
       COALESCE(EXTRACT(EPOCH FROM now() - COALESCE(xact_start, backend_start)), 0)::float8
FROM pg_stat_activity
WHERE pid <> pg_backend_pid()
  AND (application_name IN ('pg_dump', 'pg_dumpall', 'pg_basebackup', 'cloudops-backup', 'pgbackrest')
       OR (backend_type = 'client backend' AND xact_start < now() - make_interval(secs => %s)))
ORDER BY pid
"""


def running_work(conn_id: str, *, name: str, longer_than_s: float, used_by: str) -> list[str]:
    """Backups and long transactions running on the server now, one sentence each (empty: none).

    :raises ReplicationError: the server cannot be asked.
    """
    import psycopg

    conn = get_connection(conn_id, used_by)
    try:
        with _replication_session(conn, 10) as session:
            rows = session.execute(_RUNNING_WORK, [float(longer_than_s)]).fetchall()
            progress = session.execute("SELECT pid, phase FROM pg_stat_progress_basebackup").fetchall()
    except psycopg.Error as error:
        raise ReplicationError(
            f"{used_by}: the running work on {name} cannot be read: {first_line(error)}"
        ) from error
    found = [f"{name}: base backup of pid {pid} in phase {phase!r}" for pid, phase in progress]
    for pid, backend_type, app, user, age in rows:
        what = f"{app} ({backend_type})" if app else backend_type
        found.append(f"{name}: pid {pid} {what} as {user or '?'} running for {float(age):.0f} s")
    return found


__all__ = [
    "DEFAULT_BINDIR",
    "CommandResult",
    "FenceHow",
    "LocalNodeHost",
    "NodeHost",
    "NodeNotLocal",
    "PostgresNode",
    "RejoinFailed",
    "SwitchoverAborted",
    "controldata",
    "crash_failover",
    "discover_node",
    "fence",
    "kill_server",
    "rejoin",
    "running_work",
    "server_running",
    "shutdown_checkpoint",
    "start_server",
    "stop_fast",
    "switchover",
    "unfence",
    "wait_gone",
    "wait_replayed_past",
]
