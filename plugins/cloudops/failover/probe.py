"""The write probe: one thread, owned by the drill for its whole window, writing a numbered row every
~15 ms through the application's own connection string and recording every attempt.

It connects exactly as the application does (libpq multi-host with ``target_session_attrs=read-write``:
libpq tries each host in turn and keeps the one that takes writes), so what it measures is what the
application sees: how long writes failed or stalled, and which acknowledged writes are gone afterwards.
After any failure it drops the session and reconnects on the next tick; ``connect_timeout`` bounds each
connect and ``statement_timeout`` each write, so a stalled server is seen, not waited on. A commit
blocked on a synchronous standby ignores ``statement_timeout``: it shows as a stall when it returns,
and :meth:`WriteProbe.stop` cancels it if it is still blocked then.

The probe writes into ``cloudops_drill_probe (run_id, id, written_at)``; :meth:`WriteProbe.prepare`
creates it if the probe's role may (else a DBA creates it once, and the role needs only INSERT and
SELECT on it). Rows carry the drill's run id, so drills never read each other's rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloudops.errors import CloudOpsError, InvalidInputError, first_line
from cloudops.failover.analysis import Outcome, ProbeAttempt
from cloudops.failover.record import scrub

log = logging.getLogger(__name__)

PROBE_TABLE = "cloudops_drill_probe"
DEFAULT_INTERVAL_S = 0.015
_CREATE = f"""
CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (
    run_id text NOT NULL,
    id bigint NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, id)
)
"""
_INSERT = f"INSERT INTO {PROBE_TABLE} (run_id, id) VALUES (%s, %s)"
_READ_BACK = f"SELECT id FROM {PROBE_TABLE} WHERE run_id = %s"
_FORGET = f"DELETE FROM {PROBE_TABLE} WHERE run_id = %s"
# Errors the server reports before anything commits: the write certainly did not happen.
_NOT_COMMITTED = {"25006", "57014", "23505", "42P01", "42501", "53300", "57P03"}


class ProbeError(CloudOpsError):
    """The probe cannot do its work: its connection string is wrong, or its table cannot be written."""


@dataclass(frozen=True)
class ProbeTarget:
    """The application's connection string, checked and bounded, and what of it may be recorded.

    :param conninfo: what libpq connects with; holds the password if the application's does, so it
        never appears in ``repr``, logs or the record (:meth:`describe` is what is recorded).
    """

    conninfo: str = field(repr=False)
    hosts: tuple[str, ...]
    ports: tuple[str, ...]
    dbname: str | None
    user: str | None
    target_session_attrs: str
    connect_timeout_s: int

    def describe(self) -> dict[str, Any]:
        """The target without secrets: hosts, ports, database, user, routing and timeouts."""
        return {
            "hosts": list(self.hosts),
            "ports": list(self.ports),
            "dbname": self.dbname,
            "user": self.user,
            "target_session_attrs": self.target_session_attrs,
            "connect_timeout_s": self.connect_timeout_s,
        }

    def writer(self, **kwargs: Any) -> WriteProbe:
        """The write probe for this target (``run_id``, ``used_by``, ``interval_s``, ``max_seconds``)."""
        return WriteProbe(self, **kwargs)


class ProbeEndpoint(Protocol):
    """What the drill needs of a probe's target, whatever the engine: the hosts it tries, a description
    without secrets for the record, and the probe that writes through it."""

    @property
    def hosts(self) -> tuple[str, ...]: ...

    def describe(self) -> dict[str, Any]: ...

    def writer(self, **kwargs: Any) -> WriteProbe: ...


def probe_target(
    dsn: str, *, used_by: str, connect_timeout_s: int = 2, statement_timeout_ms: int = 5000
) -> ProbeTarget:
    """Check the application's connection string and bound it for the probe.

    ``target_session_attrs`` must be ``read-write`` or ``primary`` (it is set to ``read-write`` when
    absent: a probe on a replica measures nothing); ``connect_timeout`` is kept if set, else
    ``connect_timeout_s``; ``statement_timeout`` is added to the session's options.

    :raises InvalidInputError: not a libpq connection string, or one routed to something other than
        the writer; the message names ``used_by`` and never repeats the string.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn)
    except Exception as error:  # psycopg.ProgrammingError; the text may quote the string
        raise InvalidInputError(
            f"{used_by}: the probe's connection string is not a libpq connection string "
            f"({scrub(first_line(error))})"
        ) from None
    attrs = str(params.get("target_session_attrs") or "read-write")
    if attrs not in {"read-write", "primary"}:
        raise InvalidInputError(
            f"{used_by}: the probe's connection string routes with target_session_attrs={attrs}; it must "
            "reach the server that takes writes (read-write or primary), as the application does"
        )
    if "target_session_attrs" not in params:
        log.info("%s: the probe's connection string sets no target_session_attrs: using read-write", used_by)
    hosts = tuple(h.strip() for h in str(params.get("host") or params.get("hostaddr") or "").split(",") if h)
    if not hosts:
        raise InvalidInputError(f"{used_by}: the probe's connection string names no host")
    ports = tuple(p.strip() for p in str(params.get("port") or "5432").split(","))
    if len(ports) not in (1, len(hosts)):
        raise InvalidInputError(
            f"{used_by}: the probe's connection string names {len(hosts)} hosts but {len(ports)} ports"
        )
    timeout = int(params.get("connect_timeout") or connect_timeout_s)
    options = str(params.get("options") or "")
    options = f"{options} -c statement_timeout={statement_timeout_ms}".strip()
    conninfo = make_conninfo(
        dsn,
        target_session_attrs=attrs,
        connect_timeout=str(timeout),
        options=options,
        application_name=str(params.get("application_name") or "cloudops-drill-probe"),
    )
    return ProbeTarget(
        conninfo=conninfo,
        hosts=hosts,
        ports=ports if len(ports) == len(hosts) else ports * len(hosts),
        dbname=None if params.get("dbname") is None else str(params["dbname"]),
        user=None if params.get("user") is None else str(params["user"]),
        target_session_attrs=attrs,
        connect_timeout_s=timeout,
    )


def libpq_probe_target(conn_id: str, *, used_by: str, database: str | None = None) -> ProbeTarget:
    """The probe's target from the application's Airflow connection routed ``libpq-multihost``: ``host``
    ``h1,h2``, ``extra.port`` ``p1,p2`` (or the one ``port``), ``extra.target_session_attrs`` and any
    other libpq ``extra`` keys as they are.

    :raises InvalidInputError: see :func:`probe_target`.
    """
    from psycopg.conninfo import make_conninfo

    from cloudops.connections import get_connection

    conn = get_connection(conn_id, used_by)
    extra = dict(conn.extra_dejson or {})
    params = {k: str(v) for k, v in extra.items() if k != "port"}
    params |= {
        "host": conn.host or "",
        "port": str(extra.get("port") or conn.port or 5432),
        "dbname": database or conn.schema or "postgres",
        "user": conn.login or "",
    }
    if conn.password:
        params["password"] = conn.password
    return probe_target(make_conninfo("", **{k: v for k, v in params.items() if v}), used_by=used_by)


def connect_error_class(error: BaseException) -> str:
    """A short kind for a failed connect (the record counts them): no server takes writes, refused,
    timed out, the server is shutting down or starting."""
    text = str(error).lower()
    if "read-only" in text or "hot standby" in text or "not a primary" in text:
        return "connect: no read-write server"
    if "shutting down" in text or "starting up" in text or "recovery mode" in text:
        return "connect: server shutting down or starting"
    if "refused" in text:
        return "connect: refused"
    if "timeout" in text or "timed out" in text:
        return "connect: timeout"
    return f"connect: {type(error).__name__}"


def write_outcome(error: BaseException) -> tuple[Outcome, str]:
    """Whether a write that raised certainly did not commit (``failed``) or might have (``in_doubt``),
    and the error's kind.

    Errors the server reports while running the statement (read-only, cancelled by statement_timeout,
    a constraint) rolled it back. A session killed or lost after the statement was sent
    (``AdminShutdown``, a broken connection) may have committed: only reading back tells.
    """
    sqlstate = getattr(error, "sqlstate", None)
    kind = type(error).__name__
    if sqlstate in _NOT_COMMITTED:
        return "failed", kind
    return "in_doubt", kind if sqlstate else f"connection lost ({kind})"


class WriteProbe:
    """Write numbered rows every ``interval_s`` on one thread until stopped, recording each attempt.

    Use as a context manager (``with WriteProbe(...) as probe:``) or call :meth:`start` and
    :meth:`stop`. It never runs longer than ``max_seconds``.
    """

    def __init__(
        self,
        target: ProbeTarget,
        *,
        run_id: str,
        used_by: str,
        interval_s: float = DEFAULT_INTERVAL_S,
        max_seconds: float = 900.0,
    ) -> None:
        if not 0.001 <= interval_s <= 10:
            raise InvalidInputError(f"{used_by}: the probe interval must be 1 ms to 10 s, not {interval_s}")
        self.target = target
        self.run_id = run_id
        self.used_by = used_by
        self.interval_s = interval_s
        self.max_seconds = max_seconds
        self._attempts: list[ProbeAttempt] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: Any = None
        self.cancelled_at_stop = False

    # -- set-up and read-back ------------------------------------------------------------------------

    # -- the driver: PostgreSQL here, overridden by other engines' probes -------------------------------

    def _open(self) -> Any:
        """A new autocommit session on the server that takes writes (raises the driver's error)."""
        import psycopg

        return psycopg.connect(self.target.conninfo, autocommit=True)

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    def _where(self, session: Any) -> str:
        """The ``host:port`` the session reached."""
        return f"{session.info.host}:{session.info.port}"

    def _exec(self, session: Any, statement: str, args: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (empty when it returns none)."""
        cursor = session.execute(statement, args)
        return list(cursor.fetchall()) if cursor.description else []

    def _statements(self) -> tuple[str, str, str, str]:
        """CREATE, INSERT, read-back and forget statements of the probe's table."""
        return _CREATE, _INSERT, _READ_BACK, _FORGET

    def _connect_error(self, error: BaseException) -> str:
        return connect_error_class(error)

    def _write_error(self, error: BaseException) -> tuple[Outcome, str]:
        return write_outcome(error)

    def _cancel(self, session: Any) -> None:
        session.cancel_safe(timeout=5)

    @contextmanager
    def _short_session(self) -> Iterator[Any]:
        try:
            session = self._open()
        except self._driver_errors() as error:
            raise ProbeError(
                f"{self.used_by}: the probe cannot reach a read-write server through its connection "
                f"string (hosts {', '.join(self.target.hosts)}): {scrub(first_line(error))}"
            ) from error
        try:
            yield session
        except self._driver_errors() as error:
            raise ProbeError(
                f"{self.used_by}: the probe's statement failed on {self._where(session)}: "
                f"{scrub(first_line(error))}"
            ) from error
        finally:
            try:
                session.close()
            except Exception as error:  # a broken session closes with an error; it is gone either way
                log.debug("closing the probe's session: %s", first_line(error))

    def reach(self) -> str:
        """Connect as the application does and return the server reached (``host:port``); write nothing.

        :raises ProbeError: the connection string reaches no writer.
        """
        with self._short_session() as session:
            return self._where(session)

    def prepare(self) -> str:
        """Make sure the probe's table exists and this run can write to it; return the server reached.

        :raises ProbeError: the connection string reaches no writer, or the table cannot be written.
        """
        create, _, _, forget = self._statements()
        with self._short_session() as session:
            self._exec(session, create)
            self._exec(session, forget, [self.run_id])
            return self._where(session)

    def read_back(self, *, within_s: float = 30.0) -> tuple[set[int], str]:
        """The ids of this run found on the server that takes writes now, and that server.

        Retried for at most ``within_s`` (the new primary may be seconds old).

        :raises ProbeError: no writer answered within ``within_s``.
        """
        deadline = time.monotonic() + within_s
        while True:
            try:
                with self._short_session() as session:
                    rows = self._exec(session, self._statements()[2], [self.run_id])
                    return {int(r[0]) for r in rows}, self._where(session)
            except ProbeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)  # bounded by the deadline above

    def forget(self) -> None:
        """Delete this run's rows (the record keeps what mattered); a role that may not is logged."""
        try:
            with self._short_session() as session:
                self._exec(session, self._statements()[3], [self.run_id])
        except (ProbeError, Exception) as error:  # a probe role with INSERT and SELECT only
            log.warning(
                "%s: the probe's rows of run %s stay: %s", self.used_by, self.run_id, first_line(error)
            )

    # -- the running probe ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start writing (one thread, daemon, so a crashed drill never keeps the worker alive)."""
        if self._thread is not None:
            raise ProbeError(f"{self.used_by}: the probe of run {self.run_id} is already running")
        self._thread = threading.Thread(target=self._run, name=f"drill-probe-{self.run_id}", daemon=True)
        self._thread.start()

    def stop(self, *, within_s: float = 10.0) -> tuple[ProbeAttempt, ...]:
        """Stop writing and return every attempt. A write still blocked after ``within_s`` is
        cancelled (its attempt then ends with the server's answer to the cancel)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(within_s)
            if thread.is_alive() and self._session is not None:
                self.cancelled_at_stop = True
                log.warning(
                    "%s: the probe's write is still blocked after %s s: cancelling it", self.used_by, within_s
                )
                try:
                    self._cancel(self._session)
                except Exception as error:  # the session may be gone already
                    log.warning("%s: cancelling the probe's write: %s", self.used_by, first_line(error))
                thread.join(within_s)
            if thread.is_alive():
                raise ProbeError(f"{self.used_by}: the probe thread did not stop within {2 * within_s} s")
        return self.attempts()

    def attempts(self) -> tuple[ProbeAttempt, ...]:
        """The attempts so far (a copy)."""
        with self._lock:
            return tuple(self._attempts)

    def wait_for_acks(self, count: int, *, within_s: float) -> bool:
        """Wait (at most ``within_s``) until ``count`` more writes were acknowledged; whether they were."""
        start = sum(a.outcome == "acked" for a in self.attempts())
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if sum(a.outcome == "acked" for a in self.attempts()) - start >= count:
                return True
            time.sleep(min(0.05, self.interval_s * 2))
        return False

    def __enter__(self) -> WriteProbe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.stop()

    def _record(self, attempt: ProbeAttempt) -> None:
        with self._lock:
            self._attempts.append(attempt)

    def _run(self) -> None:
        errors = self._driver_errors()
        insert = self._statements()[1]
        deadline = time.monotonic() + self.max_seconds
        tick = time.monotonic()
        number = 0
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                number += 1
                sent, wall = time.monotonic(), time.time()
                if self._session is None:
                    try:
                        self._session = self._open()
                    except errors as error:
                        self._record(
                            ProbeAttempt(
                                number, sent, time.monotonic(), wall, "failed", self._connect_error(error)
                            )
                        )
                        self._session = None
                if self._session is not None:
                    server = self._where(self._session)
                    try:
                        self._exec(self._session, insert, [self.run_id, number])
                        self._record(
                            ProbeAttempt(number, sent, time.monotonic(), wall, "acked", None, server)
                        )
                    except errors as error:
                        outcome, kind = self._write_error(error)
                        self._record(
                            ProbeAttempt(number, sent, time.monotonic(), wall, outcome, kind, server)
                        )
                        self._close()
                tick += self.interval_s
                delay = tick - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    tick = time.monotonic()  # overran (a slow write): the next one goes now
        finally:
            self._close()

    def _close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except Exception as error:  # a broken session closes with an error; it is gone either way
                log.debug("closing the probe's session: %s", first_line(error))


__all__ = [
    "DEFAULT_INTERVAL_S",
    "PROBE_TABLE",
    "ProbeEndpoint",
    "ProbeError",
    "ProbeTarget",
    "WriteProbe",
    "connect_error_class",
    "libpq_probe_target",
    "probe_target",
    "write_outcome",
]
