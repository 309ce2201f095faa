"""The Patroni manager (``patroni``): Patroni moves the primary; the drill reads the cluster through
each node's REST API, asks for the switchover and waits, bounded, for what Patroni reports.

- **Topology**: every node's own ``GET /patroni`` (role, state, timeline, WAL positions, its
  replicas), judged like every other cluster (:func:`cloudops.engines.replication.assemble_topology`).
  A node whose API does not answer is unreachable, whatever its PostgreSQL does.
- **Lag**: the candidate's replayed location against the leader's current one, from ``/patroni``
  (candidate first, leader second, so the figure errs high); seconds from the candidate's
  ``pg_last_xact_replay_timestamp()`` only when bytes are left to replay.
- **Planned switchover**: ``POST /switchover {"leader", "candidate"}`` with the API's login (the
  ``patroni_api_conn_id`` connection), then wait, bounded, for the candidate to lead and the old leader
  to stream (Patroni rewinds it itself with ``use_pg_rewind``). A refusal (412, 400) moved nothing: it is
  a :class:`SwitchoverAborted`. ``503 Switchover status unknown`` means Patroni is still at it
  (Patroni #743): the wait goes on rather than retrying.
- **Crash** (only where the catalog allows it): stop Patroni and PostgreSQL of the leader together
  (:class:`NodeControl`), so that what is measured is the leader key's TTL path; killing PostgreSQL
  alone is no failover (Patroni restarts it in place in ~3.5 s). The node is then started again and
  waited for until it streams.
- **Fail-back**: the switchover back. **Fence**: ``default_transaction_read_only`` on the node and its
  client sessions ended (Patroni leaves ``postgresql.auto.conf`` alone); the two-writers case also pages.

Every HTTP call has a timeout; every wait a deadline. The API's password never appears in a message.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloudops.connections import get_connection
from cloudops.engines.replication import (
    Downstream,
    MemberState,
    RejoinFailed,
    ReplicationLag,
    Step,
    SwitchoverAborted,
    SwitchoverResult,
    Topology,
    assemble_topology,
)
from cloudops.errors import InvalidInputError, ReplicationError, first_line

log = logging.getLogger(__name__)

_POLL_S = 0.05
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class PatroniMember:
    """One Patroni node: its PostgreSQL connection (``conn_id``) and REST API connection (``api_conn_id``,
    an HTTP connection: host, port, schema ``http``/``https``, login and password of the API)."""

    name: str
    conn_id: str
    api_conn_id: str


@dataclass(frozen=True)
class ApiAnswer:
    """What a Patroni REST API answered: HTTP status and the body (JSON when it was, else text)."""

    status: int
    body: Any

    @property
    def text(self) -> str:
        """The body as one bounded line, for messages and the record."""
        value = self.body if isinstance(self.body, str) else json.dumps(self.body)
        return value.strip().replace("\n", " ")[:500]


class NodeControl(Protocol):
    """Where a node's Patroni and PostgreSQL run, for the crash mode: stop both at once, start again."""

    def crash(self, member: str) -> str:
        """Kill the member's Patroni and PostgreSQL together (SIGKILL); return what was done."""
        ...

    def start(self, member: str) -> str:
        """Start the member's Patroni again (it starts, rewinds or clones its PostgreSQL)."""
        ...


class PatroniApi:
    """A node's REST API through its Airflow connection (HTTP basic authentication when it has a login)."""

    def __init__(self, conn_id: str, *, used_by: str, timeout_s: float = 5.0) -> None:
        conn = get_connection(conn_id, used_by)
        scheme = (conn.schema or "http").lower()
        if scheme not in {"http", "https"}:
            raise InvalidInputError(
                f"{used_by}: connection {conn_id!r} (Patroni REST API) has schema {scheme!r}; "
                "use http or https"
            )
        if not conn.host:
            raise InvalidInputError(f"{used_by}: connection {conn_id!r} (Patroni REST API) names no host")
        self.conn_id = conn_id
        self.url = f"{scheme}://{conn.host}:{conn.port or 8008}"
        self.used_by = used_by
        self.timeout_s = timeout_s
        self._auth = (
            "Basic " + base64.b64encode(f"{conn.login}:{conn.password or ''}".encode()).decode()
            if conn.login
            else None
        )

    def call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> ApiAnswer:
        """One request; an HTTP error status is an answer, a connection that fails raises.

        :raises ReplicationError: the API cannot be reached within the timeout.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._auth and method != "GET":
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                status, raw = response.status, response.read(MAX_BODY)
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read(MAX_BODY)
        except (OSError, ValueError) as error:
            raise ReplicationError(
                f"{self.used_by}: the Patroni REST API {self.url} ({self.conn_id}) cannot be reached: "
                f"{first_line(error)}"
            ) from error
        text = raw.decode("utf-8", "replace")
        try:
            return ApiAnswer(status, json.loads(text) if text.strip() else None)
        except json.JSONDecodeError:
            return ApiAnswer(status, text)


def member_from_patroni(name: str, address: str, answer: ApiAnswer) -> MemberState:
    """A member's state from its own ``GET /patroni`` answer (pure).

    Patroni answers 200 on the leader and a healthy replica, 503 with the same document otherwise. A
    node whose PostgreSQL is not ``running`` takes no writes and streams nothing.
    """
    body = answer.body if isinstance(answer.body, dict) else {}
    if not body:
        return MemberState(
            name, address, False, error=f"GET /patroni answered {answer.status}: {answer.text}"
        )
    state = str(body.get("state") or "unknown")
    role_said = str(body.get("role") or "")
    running = state == "running"
    xlog = _xlog(body)
    version = body.get("server_version")
    version_text = f"{int(version) // 10000}.{int(version) % 10000}" if isinstance(version, int) else None
    if role_said in {"primary", "master", "standby_leader"} and running:
        downstream = tuple(
            Downstream(
                name=str(r.get("application_name") or ""),
                address=r.get("client_addr"),
                state=str(r.get("state") or ""),
                sync_state=str(r.get("sync_state") or ""),
            )
            for r in body.get("replication") or []
            if isinstance(r, dict)
        )
        return MemberState(
            name,
            address,
            True,
            "primary",
            position=_lsn(xlog.get("location")),
            timeline=body.get("timeline"),
            read_only=False,
            downstream=downstream,
            version=version_text,
        )
    if role_said in {"replica", "sync_standby", "quorum_standby"}:
        return MemberState(
            name,
            address,
            True,
            "replica",
            streaming=running and body.get("replication_state") == "streaming",
            position=_lsn(xlog.get("replayed_location")),
            timeline=body.get("timeline"),
            read_only=True,
            version=version_text,
        )
    return MemberState(
        name, address, False, error=f"Patroni says {role_said or 'no role'}, PostgreSQL {state}"
    )


def _lsn(location: object) -> str | None:
    """Patroni's integer WAL location as PostgreSQL writes an LSN (``0/3474C70``)."""
    if not isinstance(location, int):
        return None
    return f"{location >> 32:X}/{location & 0xFFFFFFFF:X}"


def _xlog(body: dict[str, Any]) -> dict[str, Any]:
    found = body.get("xlog")
    return found if isinstance(found, dict) else {}


def _location(answer: ApiAnswer, key: str) -> int | None:
    body = answer.body if isinstance(answer.body, dict) else {}
    xlog = _xlog(body)
    value = xlog.get(key)
    return value if isinstance(value, int) else None


@dataclass(frozen=True)
class PatroniManager:
    """A Patroni cluster, switched over by Patroni through its REST API.

    :param members: the catalog's members by name (the names Patroni knows them by).
    :param switch_timeout_s: how long Patroni may take to make the candidate lead (beyond its own
        ``POST /switchover`` answer, which can come back 503 "status unknown" while it goes on).
    :param rejoin_timeout_s: how long the old leader may take to stream from the new one.
    :param control: where the nodes' processes run, for the crash mode; None: no crash.
    """

    cluster: str
    members: Mapping[str, PatroniMember]
    used_by: str
    switch_timeout_s: float = 60.0
    rejoin_timeout_s: float = 60.0
    control: NodeControl | None = None
    _apis: dict[str, PatroniApi] = field(default_factory=dict, repr=False, compare=False)

    name = "patroni"

    def api(self, member: str) -> PatroniApi:
        """The REST API of ``member``.

        :raises InvalidInputError: no such member.
        """
        if member not in self.members:
            raise InvalidInputError(
                f"{self.used_by}: cluster {self.cluster!r} has no member {member!r} "
                f"(members: {', '.join(self.members)})"
            )
        if member not in self._apis:
            self._apis[member] = PatroniApi(self.members[member].api_conn_id, used_by=self.used_by)
        return self._apis[member]

    def _address(self, member: str) -> str:
        conn = get_connection(self.members[member].conn_id, self.used_by)
        return f"{conn.host or 'localhost'}:{conn.port or 5432}"

    def _state(self, member: str) -> tuple[MemberState, ApiAnswer | None]:
        try:
            answer = self.api(member).call("GET", "/patroni")
        except ReplicationError as error:
            return MemberState(member, self._address(member), False, error=first_line(error)), None
        return member_from_patroni(member, self._address(member), answer), answer

    def topology(self) -> Topology:
        found = assemble_topology(self.cluster, [self._state(name)[0] for name in self.members])
        log.info("%s (%s): %s", self.cluster, self.used_by, found.summary)
        for problem in found.problems:
            log.warning("%s", problem)
        return found

    def cluster_view(self) -> dict[str, dict[str, Any]]:
        """Patroni's own view (``GET /cluster``) by member name, from the first node that answers; empty
        when none does."""
        for name in self.members:
            try:
                answer = self.api(name).call("GET", "/cluster")
            except ReplicationError:
                continue
            if answer.status == 200 and isinstance(answer.body, dict):
                return {
                    str(m.get("name")): m for m in answer.body.get("members") or [] if isinstance(m, dict)
                }
        return {}

    def lag(self, primary: str, candidate: str) -> ReplicationLag:
        replica_state, replica_answer = self._state(candidate)
        primary_state, primary_answer = self._state(primary)
        if replica_answer is None or primary_answer is None:
            broken = replica_state if replica_answer is None else primary_state
            raise ReplicationError(f"{self.used_by}: {self.cluster}: cannot read the lag: {broken.error}")
        if replica_state.role != "replica":
            raise ReplicationError(
                f"{self.used_by}: {self.cluster}: {candidate} is no replica "
                f"({replica_state.role or replica_state.error})"
            )
        if primary_state.role != "primary":
            raise ReplicationError(
                f"{self.used_by}: {self.cluster}: {primary} is not the leader "
                f"({primary_state.role or primary_state.error})"
            )
        replayed = _location(replica_answer, "replayed_location")
        current = _location(primary_answer, "location")
        behind = None if replayed is None or current is None else max(0, current - replayed)
        seconds: float | None = 0.0 if behind == 0 else None
        how = "Patroni REST /patroni xlog locations (replayed vs current)"
        if behind:
            seconds = self._replay_delay(candidate)
            how += "; seconds from pg_last_xact_replay_timestamp() on the replica"
        return ReplicationLag(
            primary=primary,
            replica=candidate,
            bytes=behind,
            seconds=seconds,
            streaming=bool(replica_state.streaming),
            primary_position=primary_state.position or "-",
            replica_position=replica_state.position or "-",
            how=how,
        )

    def _replay_delay(self, member: str) -> float | None:
        import psycopg

        conn = get_connection(self.members[member].conn_id, self.used_by)
        try:
            with psycopg.connect(
                host=conn.host,
                port=conn.port or 5432,
                user=conn.login,
                password=conn.password or None,
                dbname=conn.schema or "postgres",
                connect_timeout=5,
                autocommit=True,
            ) as session:
                row = session.execute(
                    "SELECT extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())"
                ).fetchone()
        except psycopg.Error as error:
            log.warning("%s: reading %s's replay delay: %s", self.used_by, member, first_line(error))
            return None
        return None if row is None or row[0] is None else float(row[0])

    # -- acting --------------------------------------------------------------------------------------

    def _wait(self, what: str, test: Any, timeout_s: float) -> tuple[bool, str]:
        """Poll ``test(view)`` on ``GET /cluster`` until it holds or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        last = "no node answered GET /cluster"
        while True:
            view = self.cluster_view()
            if view:
                last = "; ".join(f"{n} {m.get('role')} ({m.get('state')})" for n, m in sorted(view.items()))
                if test(view):
                    return True, last
            if time.monotonic() >= deadline:
                log.warning(
                    "%s: %s: %s not seen within %g s: %s", self.used_by, self.cluster, what, timeout_s, last
                )
                return False, last
            time.sleep(_POLL_S)

    @staticmethod
    def _leads(view: Mapping[str, Mapping[str, Any]], member: str) -> bool:
        found = view.get(member) or {}
        leaders = [n for n, m in view.items() if m.get("role") == "leader"]
        return leaders == [member] and found.get("state") == "running"

    @staticmethod
    def _streams(view: Mapping[str, Mapping[str, Any]], member: str) -> bool:
        found = view.get(member) or {}
        return (
            found.get("role") in {"replica", "sync_standby", "quorum_standby"}
            and found.get("state") == "streaming"
        )

    def wait_streaming(self, member: str, *, timeout_s: float) -> tuple[bool, str]:
        """Wait (at most ``timeout_s``) until Patroni reports ``member`` streaming; whether it does and
        the cluster as last seen."""
        return self._wait(f"{member} streaming", lambda view: self._streams(view, member), timeout_s)

    def _history(self, member: str) -> tuple[str | None, int | None, str]:
        """The last entry of ``GET /history``: (switch LSN, new timeline, the entry as text)."""
        try:
            answer = self.api(member).call("GET", "/history")
        except ReplicationError as error:
            return None, None, first_line(error)
        entries = answer.body if isinstance(answer.body, list) else []
        if not entries or not isinstance(entries[-1], list):
            return None, None, "no history"
        last = entries[-1]
        lsn = _lsn(last[1]) if len(last) > 1 else None
        timeline = int(last[0]) + 1 if last and isinstance(last[0], int) else None
        return lsn, timeline, json.dumps(last)[:300]

    def _preconditions(self, primary: str, candidate: str) -> None:
        for member in (primary, candidate):
            self.api(member)  # an unknown member is bad input, named before any request
        view = self.cluster_view()
        if not view:
            raise ReplicationError(
                f"{self.used_by}: {self.cluster}: no Patroni REST API answers; nothing was done"
            )
        if not self._leads(view, primary):
            raise ReplicationError(
                f"{self.used_by}: {self.cluster}: {primary} is not the running leader "
                f"({view.get(primary, {}).get('role')}); nothing was done"
            )
        if not self._streams(view, candidate):
            raise ReplicationError(
                f"{self.used_by}: {self.cluster}: {candidate} is not a streaming replica "
                f"({view.get(candidate, {}).get('role')}, {view.get(candidate, {}).get('state')}); "
                "nothing was done"
            )
        if (view[candidate].get("tags") or {}).get("nofailover"):
            raise ReplicationError(
                f"{self.used_by}: {self.cluster}: {candidate} carries the nofailover tag; nothing was done"
            )

    def switchover(self, primary: str, candidate: str, *, catch_up_timeout_s: float) -> SwitchoverResult:
        """``POST /switchover`` from ``primary`` to ``candidate``; wait until it leads and ``primary``
        streams.

        :raises ReplicationError: a precondition failed; nothing was done.
        :raises SwitchoverAborted: Patroni refused the switchover or ``candidate`` did not lead within
            the bound (Patroni keeps ``primary`` leading, or puts it back, itself).
        :raises RejoinFailed: ``candidate`` leads but ``primary`` does not stream within the bound.
        """
        self._preconditions(primary, candidate)
        steps: list[Step] = []
        log.info(
            "%s: %s: plan: POST /switchover leader %s -> candidate %s; the new leader within %g s, "
            "the old one streaming within %g s",
            self.used_by,
            self.cluster,
            primary,
            candidate,
            max(self.switch_timeout_s, catch_up_timeout_s),
            self.rejoin_timeout_s,
        )
        started = time.time()
        try:
            answer = self.api(primary).call(
                "POST",
                "/switchover",
                {"leader": primary, "candidate": candidate},
                timeout_s=max(self.switch_timeout_s, catch_up_timeout_s),
            )
            said = f"{answer.status} {answer.text}"
        except ReplicationError as error:
            # The request may have reached Patroni before the connection broke: watch the cluster.
            answer, said = None, f"no answer: {first_line(error)}"
        accepted = answer is None or answer.status in (200, 202, 503)
        steps.append(Step("request", started, time.time(), f"POST /switchover: {said}", ok=accepted))
        if answer is not None and answer.status == 401:
            raise ReplicationError(
                f"{self.used_by}: {self.cluster}: the Patroni REST API of {primary} refused the login of "
                f"{self.members[primary].api_conn_id} (401); nothing was done"
            )
        if not accepted:
            result = SwitchoverResult(
                self.cluster, primary, primary, tuple(steps), aborted=f"Patroni refused: {said}"
            )
            raise SwitchoverAborted(
                f"{self.used_by}: {self.cluster}: Patroni refused the switchover {primary} -> {candidate}: "
                f"{said}; {primary} still leads",
                result,
            )
        started = time.time()
        led, seen = self._wait(
            f"{candidate} leading",
            lambda view: self._leads(view, candidate),
            max(self.switch_timeout_s, catch_up_timeout_s),
        )
        steps.append(Step("new_leader", started, time.time(), seen, ok=led))
        if not led:
            result = SwitchoverResult(
                self.cluster, primary, primary, tuple(steps), aborted=f"{candidate} did not lead: {seen}"
            )
            raise SwitchoverAborted(
                f"{self.used_by}: {self.cluster}: {candidate} did not become leader within "
                f"{self.switch_timeout_s:g} s ({seen}); Patroni keeps or restores {primary}",
                result,
            )
        started = time.time()
        streaming, seen = self._wait(
            f"{primary} streaming", lambda view: self._streams(view, primary), self.rejoin_timeout_s
        )
        steps.append(Step("old_leader_streaming", started, time.time(), seen, ok=streaming))
        if not streaming:
            raise RejoinFailed(
                f"{self.used_by}: {self.cluster}: {candidate} leads but {primary} does not stream within "
                f"{self.rejoin_timeout_s:g} s ({seen}); redundancy is degraded: read Patroni's log of "
                f"{primary}",
                steps,
            )
        lsn, timeline, entry = self._history(candidate)
        replayed = self._state(candidate)[0].position
        return SwitchoverResult(
            self.cluster,
            primary,
            candidate,
            tuple(steps),
            switch_position=lsn,
            replayed_position=replayed,
            timeline=timeline,
            rejoin=f"Patroni rewound and restarted {primary} itself (use_pg_rewind); /history: {entry}",
        )

    def crash_unavailable(self) -> str | None:
        """Why a drill cannot crash this cluster's leader, or None: a :class:`NodeControl` is there."""
        if self.control is None:
            return (
                "nothing controls its nodes' processes (the catalog does not allow crash, or no node "
                "control is known for its hosts)"
            )
        return None

    def crash(self, primary: str, candidate: str, *, detect_timeout_s: float = 60.0) -> SwitchoverResult:
        """Crash the leader (Patroni and PostgreSQL together), wait for ``candidate`` to lead (the TTL
        path), start the old leader again and wait until it streams.

        :raises ReplicationError: no :class:`NodeControl` (the catalog names no host), or ``primary``
            does not lead; nothing was done.
        :raises RejoinFailed: ``candidate`` leads, the old leader does not stream within the bound.
        """
        if self.control is None:
            raise ReplicationError(
                f"{self.used_by}: {self.cluster}: cannot crash {primary}: the catalog does not allow the "
                "crash mode for this cluster, or nothing controls its host (give the member a fleet host); "
                "nothing was done"
            )
        self._preconditions(primary, candidate)
        steps: list[Step] = []
        log.info(
            "%s: %s: plan: crash %s (Patroni and PostgreSQL together)", self.used_by, self.cluster, primary
        )
        started = time.time()
        said = self.control.crash(primary)
        steps.append(Step("crash", started, time.time(), said))
        started = time.time()
        led, seen = self._wait(
            f"{candidate} leading", lambda view: self._leads(view, candidate), detect_timeout_s
        )
        steps.append(Step("new_leader", started, time.time(), seen, ok=led))
        started = time.time()
        said = self.control.start(primary)
        steps.append(Step("restart_old", started, time.time(), said))
        if not led:
            raise RejoinFailed(
                f"{self.used_by}: {self.cluster}: no new leader within {detect_timeout_s:g} s of crashing "
                f"{primary} ({seen}); {primary} was started again: read both nodes before acting",
                steps,
            )
        started = time.time()
        streaming, seen = self._wait(
            f"{primary} streaming", lambda view: self._streams(view, primary), self.rejoin_timeout_s
        )
        steps.append(Step("old_leader_streaming", started, time.time(), seen, ok=streaming))
        if not streaming:
            raise RejoinFailed(
                f"{self.used_by}: {self.cluster}: {candidate} leads but the crashed {primary} does not "
                f"stream within {self.rejoin_timeout_s:g} s ({seen}); redundancy is degraded",
                steps,
            )
        lsn, timeline, entry = self._history(candidate)
        return SwitchoverResult(
            self.cluster,
            primary,
            candidate,
            tuple(steps),
            switch_position=lsn,
            timeline=timeline,
            rejoin=f"Patroni rejoined {primary} after the crash; /history: {entry}",
        )

    def fence(self, member: str) -> str:
        from cloudops.engines.postgres.switchover import PostgresNode
        from cloudops.engines.postgres.switchover import fence as fence_node

        # Only the SQL fence: the data directory belongs to Patroni, which would restart a stopped server.
        node = PostgresNode(member, self.members[member].conn_id, data_dir="")
        return fence_node(node, used_by=self.used_by, how="read-only")


__all__ = ["ApiAnswer", "NodeControl", "PatroniApi", "PatroniManager", "PatroniMember", "member_from_patroni"]
