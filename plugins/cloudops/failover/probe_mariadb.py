"""The write probe for MariaDB clusters routed ``first-writable``: the same thread, numbering and record
as :class:`~cloudops.failover.probe.WriteProbe`, connecting as a MariaDB application with a host list
does (Connector/J's sequential mode with read-only checks): the first server of the list whose
``@@read_only`` is off takes the session.

The probe's account must have no privilege past ``read_only`` (no ``READ ONLY ADMIN``, ``SUPER``,
``ALL PRIVILEGES``): then a read_only server refuses its writes with error 1290, as it refuses the
application's, and a fenced old primary cannot hide a two-writers fault.

Outcomes: 1290 (read-only) and any other error the server returns for the statement did not commit
(``failed``); a connection lost after the INSERT was sent (2006, 2013, a closed socket) is ``in_doubt``
(only reading back tells).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudops.connections import get_connection
from cloudops.errors import InvalidInputError
from cloudops.failover.analysis import Outcome
from cloudops.failover.probe import PROBE_TABLE, WriteProbe

if TYPE_CHECKING:
    from airflow.sdk import Connection

log = logging.getLogger(__name__)

_CREATE = f"""
CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (
    run_id varchar(64) NOT NULL,
    id bigint NOT NULL,
    written_at timestamp(6) NOT NULL DEFAULT current_timestamp(6),
    PRIMARY KEY (run_id, id)
) ENGINE=InnoDB
"""
_INSERT = f"INSERT INTO {PROBE_TABLE} (run_id, id) VALUES (%s, %s)"
_READ_BACK = f"SELECT id FROM {PROBE_TABLE} WHERE run_id = %s"
_FORGET = f"DELETE FROM {PROBE_TABLE} WHERE run_id = %s"
ER_READ_ONLY = 1290
# Client errors after which the statement may have committed.
_LOST = {2006, 2013, 2014, 2055}


class NoWritableServer(Exception):
    """Every server of the list answered, none with read_only off (or none answered)."""


@dataclass(frozen=True)
class MariadbProbeTarget:
    """The application's MariaDB host list, its account and database (the password never recorded)."""

    hosts: tuple[str, ...]
    ports: tuple[int, ...]
    user: str
    password: str = field(repr=False)
    database: str
    connect_timeout_s: int = 2
    statement_timeout_s: int = 5

    def describe(self) -> dict[str, Any]:
        """The target without secrets, for the record."""
        return {
            "hosts": list(self.hosts),
            "ports": list(self.ports),
            "dbname": self.database,
            "user": self.user,
            "routing": "first-writable",
            "connect_timeout_s": self.connect_timeout_s,
        }

    def writer(self, **kwargs: Any) -> MariadbWriteProbe:
        """The write probe for this target."""
        return MariadbWriteProbe(self, **kwargs)


def mariadb_probe_target(
    conn_id: str | Connection, *, used_by: str, database: str | None = None
) -> MariadbProbeTarget:
    """The probe's target from the application's Airflow connection: ``host`` ``h1,h2``, ``extra.port``
    ``p1,p2`` (or the one ``port`` for every host), ``schema`` or ``database`` the database.

    :raises InvalidInputError: no host, no database, no login, or host and port lists of different length.
    """
    conn = get_connection(conn_id, used_by)
    name = conn_id if isinstance(conn_id, str) else conn.conn_id
    hosts = tuple(h.strip() for h in (conn.host or "").split(",") if h.strip())
    if not hosts:
        raise InvalidInputError(f"{used_by}: the probe's connection {name!r} names no host")
    extra = conn.extra_dejson or {}
    raw_ports = str(extra.get("port") or conn.port or 3306)
    try:
        ports = tuple(int(p) for p in raw_ports.split(","))
    except ValueError:
        raise InvalidInputError(
            f"{used_by}: the probe's connection {name!r} has ports {raw_ports!r}: numbers separated by commas"
        ) from None
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        raise InvalidInputError(
            f"{used_by}: the probe's connection {name!r} names {len(hosts)} hosts but {len(ports)} ports"
        )
    dbname = database or conn.schema
    if not dbname:
        raise InvalidInputError(f"{used_by}: the probe's connection {name!r} names no database (schema)")
    if not conn.login:
        raise InvalidInputError(f"{used_by}: the probe's connection {name!r} has no login")
    return MariadbProbeTarget(
        hosts=hosts,
        ports=ports,
        user=conn.login,
        password=conn.password or "",
        database=dbname,
        connect_timeout_s=int(extra.get("connect_timeout") or 2),
    )


class MariadbWriteProbe(WriteProbe):
    """:class:`WriteProbe` over pymysql, routing to the first server of the list with read_only off."""

    target: MariadbProbeTarget  # type: ignore[assignment]

    def __init__(self, target: MariadbProbeTarget, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)  # type: ignore[arg-type]

    def _open(self) -> Any:
        import pymysql

        tried: list[str] = []
        for host, port in zip(self.target.hosts, self.target.ports, strict=True):
            try:
                session = pymysql.connect(
                    host=host,
                    port=port,
                    user=self.target.user,
                    password=self.target.password,
                    database=self.target.database,
                    connect_timeout=self.target.connect_timeout_s,
                    read_timeout=self.target.statement_timeout_s,
                    write_timeout=self.target.statement_timeout_s,
                    autocommit=True,
                )
            except pymysql.MySQLError as error:
                tried.append(f"{host}:{port} {error.args[0] if error.args else type(error).__name__}")
                continue
            try:
                with session.cursor() as cursor:
                    cursor.execute("SELECT @@GLOBAL.read_only")
                    row = cursor.fetchone()
            except pymysql.MySQLError as error:
                session.close()
                tried.append(f"{host}:{port} {type(error).__name__}")
                continue
            if row is not None and int(row[0]) == 0:
                session.cloudops_where = f"{host}:{port}"  # type: ignore[attr-defined]
                return session
            session.close()
            tried.append(f"{host}:{port} read_only")
        raise NoWritableServer("no server with read_only off: " + ", ".join(tried))

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        import pymysql

        return (pymysql.MySQLError, NoWritableServer)

    def _where(self, session: Any) -> str:
        return str(getattr(session, "cloudops_where", f"{session.host}:{session.port}"))

    def _exec(self, session: Any, statement: str, args: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with session.cursor() as cursor:
            cursor.execute(statement, args)
            return list(cursor.fetchall() or [])

    def _statements(self) -> tuple[str, str, str, str]:
        return _CREATE, _INSERT, _READ_BACK, _FORGET

    def _connect_error(self, error: BaseException) -> str:
        if isinstance(error, NoWritableServer):
            text = str(error)
            return "connect: no read-write server" if "read_only" in text else "connect: refused"
        code = error.args[0] if error.args else None
        if code == 2003:
            return "connect: refused"
        return f"connect: {type(error).__name__} {code or ''}".strip()

    def _write_error(self, error: BaseException) -> tuple[Outcome, str]:
        import pymysql

        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        if code == ER_READ_ONLY:
            return "failed", "read_only (1290)"
        if isinstance(error, pymysql.err.InterfaceError) or code in _LOST:
            return "in_doubt", f"connection lost ({code or type(error).__name__})"
        if code is not None and code < 2000:
            return "failed", f"{type(error).__name__} {code}"
        return "in_doubt", f"{type(error).__name__} {code or ''}".strip()

    def _cancel(self, session: Any) -> None:
        # pymysql has no cancel: closing the socket ends the blocked read (the outcome is in doubt).
        session.close()


__all__ = ["MariadbProbeTarget", "MariadbWriteProbe", "NoWritableServer", "mariadb_probe_target"]
