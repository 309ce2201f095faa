"""What the probe process samples: every SLO target of every estate, planned once (pure, no I/O).

Each target gets a bound (its timeout) and a fixed offset inside the minute, so that a minute's probes
are spread out instead of all starting at :00, and every probe's deadline (offset + timeout + grace)
falls before the minute ends: the minute's batch is complete when the next minute starts, and a hung
target can never push another target's sample out of its minute.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Literal

from cloudops.catalog.models import Catalog, HealthCommand, HttpEndpoint
from cloudops.errors import InvalidInputError

DATABASE_TIMEOUT = timedelta(seconds=10)
HOST_TIMEOUT = timedelta(seconds=15)
# Time the process allows itself past a probe's own timeout before recording "no answer": drivers
# enforce their timeouts per socket operation, so a probe may overrun its bound by a little.
GRACE = timedelta(seconds=2)
# The command a host probe runs when its fleet has no health commands: proves a shell answers.
DEFAULT_HOST_COMMAND = HealthCommand(command="true", expect_exit=0)


@dataclass(frozen=True)
class ProbeTarget:
    """One target to sample every interval.

    :param estate: the estate whose sample store receives its samples.
    :param key: the SLO target key the samples are stored under (``database:orders_pg``).
    :param used_by: how messages name it (``database 'orders_pg' of estate 'sandbox'``).
    :param conn_id: the Airflow connection (database, SSH or HTTP); None for an endpoint with a url.
    :param timeout: the probe's own bound.
    :param offset: seconds after the interval's start at which it is probed.
    """

    estate: str
    kind: Literal["database", "host", "endpoint"]
    name: str
    key: str
    used_by: str
    conn_id: str | None
    timeout: timedelta
    offset: float = 0.0
    engine: str | None = None
    database: str | None = None
    writable: bool = True
    commands: tuple[HealthCommand, ...] = ()
    endpoint: HttpEndpoint | None = field(default=None, compare=False)

    @property
    def key_in_estate(self) -> str:
        """``estate/key``: unique across every estate the process probes."""
        return f"{self.estate}/{self.key}"

    @property
    def deadline(self) -> float:
        """Seconds after the interval's start by which its sample is recorded, answer or not."""
        return self.offset + self.timeout.total_seconds() + GRACE.total_seconds()


def _stagger(key: str, spread: float) -> float:
    """A fixed offset in [0, spread) for ``key``: the same every minute and in every process."""
    if spread <= 0:
        return 0.0
    return (zlib.crc32(key.encode()) % 10_000) / 10_000 * spread


def plan_targets(
    catalogs: Iterable[Catalog],
    *,
    interval: timedelta = timedelta(minutes=1),
    database_timeout: timedelta = DATABASE_TIMEOUT,
    host_timeout: timedelta = HOST_TIMEOUT,
) -> list[ProbeTarget]:
    """Every distinct SLO target of ``catalogs``, with its bound and its offset in the interval.

    A target several SLOs share is probed once. References were checked when the catalog loaded;
    one that still does not resolve is refused here, naming the SLO.

    :raises InvalidInputError: a target that does not resolve, or a bound that does not fit in the
        interval (one sample per interval, answered within it).
    """
    planned: dict[tuple[str, str], ProbeTarget] = {}
    for catalog in catalogs:
        for slo in catalog.slos:
            for index, slo_target in enumerate(slo.targets):
                if (catalog.estate, slo_target.key) in planned:
                    continue
                where = f"estate {catalog.estate!r}, slos[{slo.name}].targets[{index}]"
                planned[(catalog.estate, slo_target.key)] = _target(
                    catalog, slo_target.kind, slo_target.name, where, database_timeout, host_timeout
                )
    targets = []
    for target in planned.values():
        spread = (interval - target.timeout - GRACE).total_seconds()
        if spread < 0:
            raise InvalidInputError(
                f"{target.used_by}: its probe bound {target.timeout.total_seconds():g}s plus "
                f"{GRACE.total_seconds():g}s grace does not fit the {interval.total_seconds():g}s interval"
            )
        targets.append(replace(target, offset=_stagger(f"{target.estate}/{target.key}", spread)))
    return sorted(targets, key=lambda target: (target.offset, target.estate, target.key))


def _target(
    catalog: Catalog,
    kind: str,
    name: str,
    where: str,
    database_timeout: timedelta,
    host_timeout: timedelta,
) -> ProbeTarget:
    estate = catalog.estate
    if kind == "database":
        database = next((item for item in catalog.databases if item.name == name), None)
        if database is None:
            raise InvalidInputError(f"{where}: no database {name!r} in the estate")
        return ProbeTarget(
            estate=estate,
            kind="database",
            name=name,
            key=f"database:{name}",
            used_by=f"database {name!r} of estate {estate!r}",
            conn_id=database.conn_id,
            timeout=database_timeout,
            engine=database.engine,
            database=database.database,
            # A replica refuses writes by design: it is probed with a read only.
            writable=database.role == "primary",
        )
    if kind == "host":
        found = next(((fleet, host) for fleet, host in catalog.hosts if host.name == name), None)
        if found is None:
            raise InvalidInputError(f"{where}: no host {name!r} in any fleet of the estate")
        fleet, host = found
        health = fleet.patching.health.commands if fleet.patching and fleet.patching.health else []
        return ProbeTarget(
            estate=estate,
            kind="host",
            name=name,
            key=f"host:{name}",
            used_by=f"host {name!r} of estate {estate!r}",
            conn_id=host.ssh_conn_id,
            timeout=host_timeout,
            commands=tuple(health) or (DEFAULT_HOST_COMMAND,),
        )
    if kind == "endpoint":
        endpoint = next((item for item in catalog.endpoints if item.name == name), None)
        if endpoint is None:
            raise InvalidInputError(f"{where}: no endpoint {name!r} in the estate")
        return ProbeTarget(
            estate=estate,
            kind="endpoint",
            name=name,
            key=f"endpoint:{name}",
            used_by=f"endpoint {name!r} of estate {estate!r}",
            conn_id=endpoint.http_conn_id,
            timeout=endpoint.timeout,
            endpoint=endpoint,
        )
    raise InvalidInputError(f"{where}: unknown target kind {kind!r}")


__all__ = [
    "DATABASE_TIMEOUT",
    "DEFAULT_HOST_COMMAND",
    "GRACE",
    "HOST_TIMEOUT",
    "ProbeTarget",
    "plan_targets",
]
