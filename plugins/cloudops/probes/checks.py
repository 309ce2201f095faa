"""The probes themselves: one bounded attempt at a database, a host or an HTTP(S) endpoint.

Every probe returns an :class:`Outcome` and never raises for a target that is down: "down" is its
answer. Its detail is short and scrubbed: the connection's password never appears in it, and
anything else that looks like a secret is masked, because details are stored with the samples.

- database: connect through the database's own connection (the application's), write one row of the
  probe table ``cloudops_probe`` (one row per probing process, updated in place, so the table never
  grows) and read it back; a replica gets the read only (``SELECT 1`` and whether it is in recovery).
- host: log in over SSH with the host key checked against the connection (never auto-added), run the
  fleet's health commands (or ``true``) and judge them as the patch waves' health gate does.
- endpoint: one GET or HEAD, TLS verified unless the catalog says ``verify_tls: false``, the status in
  ``expect_status`` and, when set, ``expect_body`` in the first 64 KiB.
"""

from __future__ import annotations

import base64
import functools
import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cloudops.errors import CloudOpsError, first_line
from cloudops.probes.store import DETAIL_MAX
from cloudops.probes.targets import ProbeTarget
from cloudops.secrets import mask_string

if TYPE_CHECKING:
    from airflow.sdk import Connection

PROBE_TABLE = "cloudops_probe"
BODY_LIMIT = 64 * 1024
_POSTGRES_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (prober text PRIMARY KEY, probed_at timestamptz NOT NULL)"
)
_POSTGRES_WRITE = (
    f"INSERT INTO {PROBE_TABLE} (prober, probed_at) VALUES (%s, %s) "
    "ON CONFLICT (prober) DO UPDATE SET probed_at = EXCLUDED.probed_at"
)
_MARIADB_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} "
    "(prober VARCHAR(200) PRIMARY KEY, probed_at BIGINT NOT NULL) ENGINE=InnoDB"
)
_MARIADB_WRITE = (
    f"INSERT INTO {PROBE_TABLE} (prober, probed_at) VALUES (%s, %s) "
    "ON DUPLICATE KEY UPDATE probed_at = VALUES(probed_at)"
)
_READ = f"SELECT probed_at FROM {PROBE_TABLE} WHERE prober = %s"


@dataclass(frozen=True)
class Outcome:
    """One probe's answer: up or not, how long it took (None: no answer), and a short reason."""

    ok: bool
    latency_ms: int | None
    detail: str


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without the given secrets and anything that looks like one, cut to the store's limit."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return mask_string(text)[:DETAIL_MAX]


def _secrets_of(conn: Connection | None) -> tuple[str, ...]:
    if conn is None:
        return ()
    return (conn.password,) if conn.password else ()


def _millis(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


# -- databases --------------------------------------------------------------------------------------


def probe_database(target: ProbeTarget, conn: Connection, prober: str) -> Outcome:
    """Connect, write the probe row and read it back (a replica: read only), within the target's bound."""
    started = time.monotonic()
    seconds = max(1, int(target.timeout.total_seconds()))
    try:
        if target.engine == "postgres":
            detail = _postgres(target, conn, prober, seconds)
        elif target.engine == "mariadb":
            detail = _mariadb(target, conn, prober, seconds)
        else:
            return Outcome(False, None, f"no probe for engine {target.engine!r}")
    except _Mismatch as error:
        return Outcome(False, _millis(started), scrub(str(error), _secrets_of(conn)))
    except Exception as error:  # any driver error is the database's answer: down
        return Outcome(False, None, scrub(f"{type(error).__name__}: {first_line(error)}", _secrets_of(conn)))
    return Outcome(True, _millis(started), detail)


class _Mismatch(CloudOpsError):
    """The database answered, but not with what was just written."""


def _postgres(target: ProbeTarget, conn: Connection, prober: str, seconds: int) -> str:
    import datetime as dt

    import psycopg

    with psycopg.connect(
        host=conn.host,
        port=conn.port or 5432,
        user=conn.login,
        password=conn.password,
        dbname=conn.schema or target.database,
        connect_timeout=seconds,
        application_name="cloudops-probe",
        options=f"-c statement_timeout={seconds * 1000} -c lock_timeout={seconds * 1000}",
        autocommit=True,
    ) as session:
        if not target.writable:
            (in_recovery,) = session.execute("SELECT pg_is_in_recovery()").fetchone() or (None,)
            return "read ok (replica)" if in_recovery else "read ok (not in recovery)"
        stamp = dt.datetime.now(dt.UTC).replace(microsecond=0)
        session.execute(_POSTGRES_TABLE)
        session.execute(_POSTGRES_WRITE, (prober, stamp))
        row = session.execute(_READ, (prober,)).fetchone()
        if row is None or row[0] != stamp:
            raise _Mismatch(f"wrote {stamp.isoformat()} to {PROBE_TABLE} but read back {row}")
    return "write and read ok"


def _mariadb(target: ProbeTarget, conn: Connection, prober: str, seconds: int) -> str:
    import pymysql

    session = pymysql.connect(
        host=conn.host,
        port=conn.port or 3306,
        user=conn.login,
        password=conn.password or "",
        database=conn.schema or target.database,
        connect_timeout=seconds,
        read_timeout=seconds,
        write_timeout=seconds,
        autocommit=True,
    )
    try:
        with session.cursor() as cursor:
            if not target.writable:
                cursor.execute("SELECT 1")
                return "read ok (replica)"
            stamp = time.time_ns() // 1000
            cursor.execute(_MARIADB_TABLE)
            cursor.execute(_MARIADB_WRITE, (prober, stamp))
            cursor.execute(_READ, (prober,))
            row = cursor.fetchone()
            if row is None or int(row[0]) != stamp:
                raise _Mismatch(f"wrote {stamp} to {PROBE_TABLE} but read back {row}")
    finally:
        session.close()
    return "write and read ok"


# -- hosts ------------------------------------------------------------------------------------------


def probe_host(target: ProbeTarget) -> Outcome:
    """Log in over SSH (host key checked) and run the target's commands, within its bound."""
    from cloudops.fleet.ssh import run_command
    from cloudops.patching.apt_host import HealthCheck

    started = time.monotonic()
    bound = target.timeout.total_seconds()
    assert target.conn_id is not None  # planned from a host, which always names its connection
    for command in target.commands:
        left = bound - (time.monotonic() - started)
        if left < 1:
            return Outcome(False, None, f"no time left within {bound:g}s for `{command.command}`")
        seconds = max(1, int(min(left, command.timeout.total_seconds())))
        try:
            result = run_command(
                target.conn_id,
                command.command,
                used_by=target.used_by,
                conn_timeout=seconds,
                cmd_timeout=seconds,
            )
        except Exception as error:  # refused, timed out, host key rejected: the host is not up for us
            return Outcome(False, None, scrub(f"{type(error).__name__}: {first_line(error)}"))
        check = HealthCheck(
            command=command.command,
            expect_exit=command.expect_exit,
            expect_output=command.expect_output,
            expect_regex=command.expect_regex,
        )
        failure = check.failure(result)
        if failure is not None:
            return Outcome(False, _millis(started), scrub(failure))
    return Outcome(True, _millis(started), f"{len(target.commands)} command(s) ok")


# -- HTTP(S) endpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    """Where an endpoint probe goes: resolved once from the catalog and, if named, its connection."""

    scheme: str
    host: str
    port: int
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    secrets: tuple[str, ...] = ()

    @property
    def shown(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


def http_request(target: ProbeTarget, conn: Connection | None) -> HttpRequest:
    """Resolve an endpoint target to scheme, host, port and path (and basic auth from its connection).

    :raises CloudOpsError: a connection without a host, or a scheme other than http and https.
    """
    endpoint = target.endpoint
    assert endpoint is not None  # planned from an endpoint
    if endpoint.url is not None:
        parts = urlsplit(endpoint.url)
        path = parts.path or "/"
        if parts.query:
            path += f"?{parts.query}"
        scheme, host, port = parts.scheme, parts.hostname or "", parts.port
        headers: tuple[tuple[str, str], ...] = ()
        secrets: tuple[str, ...] = ()
    else:
        assert conn is not None
        raw_host = conn.host or ""
        if "://" in raw_host:  # the HTTP provider's connections may carry the scheme in the host
            parts = urlsplit(raw_host)
            scheme, host, port = parts.scheme, parts.hostname or "", conn.port or parts.port
        else:
            scheme = (conn.schema or "http").lower()
            host, port = raw_host, conn.port
        path = endpoint.path
        secrets = _secrets_of(conn)
        headers = ()
        if conn.login:
            token = base64.b64encode(f"{conn.login}:{conn.password or ''}".encode()).decode()
            headers = (("Authorization", f"Basic {token}"),)
            secrets = (*secrets, token)
    if scheme not in ("http", "https"):
        raise CloudOpsError(f"{target.used_by}: scheme {scheme!r} is not http or https")
    if not host:
        raise CloudOpsError(f"{target.used_by}: no host to probe (set the connection's host)")
    return HttpRequest(scheme, host, port or (443 if scheme == "https" else 80), path, headers, secrets)


def probe_endpoint(target: ProbeTarget, request: HttpRequest, tls: ssl.SSLContext | None = None) -> Outcome:
    """One request within the endpoint's timeout (the whole exchange, not each read); judge the answer."""
    import http.client

    endpoint = target.endpoint
    assert endpoint is not None
    started = time.monotonic()
    bound = target.timeout.total_seconds()

    def left() -> float:
        remaining = bound - (time.monotonic() - started)
        if remaining <= 0:
            raise TimeoutError(f"no complete answer within {bound:g}s")
        return remaining

    connection: http.client.HTTPConnection
    if request.scheme == "https":
        context = tls or tls_context(verify=endpoint.verify_tls)
        connection = http.client.HTTPSConnection(request.host, request.port, timeout=bound, context=context)
    else:
        connection = http.client.HTTPConnection(request.host, request.port, timeout=bound)
    try:
        headers = {"User-Agent": "cloudops-probe", "Connection": "close", **dict(request.headers)}
        connection.request(endpoint.method, request.path, headers=headers)
        _settimeout(connection, left())
        response = connection.getresponse()
        body = b""
        if endpoint.expect_body is not None and endpoint.method == "GET":
            while len(body) < BODY_LIMIT:
                _settimeout(connection, left())
                chunk = response.read1(BODY_LIMIT - len(body))
                if not chunk:
                    break
                body += chunk
        status = response.status
    except (OSError, http.client.HTTPException) as error:
        reason = "no answer" if isinstance(error, socket.timeout | TimeoutError) else type(error).__name__
        return Outcome(False, None, scrub(f"{reason}: {first_line(error)}", request.secrets))
    finally:
        connection.close()
    latency = _millis(started)
    if status not in endpoint.expect_status:
        return Outcome(False, latency, f"status {status}, expected {endpoint.expect_status}")
    if endpoint.expect_body is not None and endpoint.expect_body.encode() not in body:
        return Outcome(False, latency, f"status {status} but the body lacks the expected text")
    return Outcome(True, latency, f"status {status}")


def _settimeout(connection: Any, seconds: float) -> None:
    if connection.sock is not None:
        connection.sock.settimeout(seconds)


@functools.lru_cache(maxsize=2)
def tls_context(*, verify: bool) -> ssl.SSLContext:
    """The system's trust store with hostname checks; no verification only when the catalog says so.

    One context per setting for the process: loading the trust store costs milliseconds, every minute
    for every HTTPS target otherwise (contexts are safe to share between threads).
    """
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


__all__ = [
    "BODY_LIMIT",
    "PROBE_TABLE",
    "HttpRequest",
    "Outcome",
    "http_request",
    "probe_database",
    "probe_endpoint",
    "probe_host",
    "scrub",
    "tls_context",
]
