"""Which :class:`~cloudops.failover.managers.SwitchoverManager` drives a catalog cluster, chosen by
the catalog's ``manager`` name.

:data:`MANAGER_BUILDERS` maps each manager name to the builder that makes a manager from the
catalog, as ``"module:function"``, imported only when a drill needs it (DAG parsing imports no
driver). A builder is called as ``build(cluster, catalog, used_by=...)`` and returns a
``SwitchoverManager``. A manager is added by writing its module and naming its builder here; a name
with no builder, or whose module is not there yet, is refused with :class:`ManagerNotAvailable`
before anything is read or moved.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cloudops.errors import CloudOpsError

if TYPE_CHECKING:
    from cloudops.catalog.models import Catalog, Cluster
    from cloudops.failover.managers import SwitchoverManager

    ManagerBuilder = Callable[..., SwitchoverManager]

# Every manager name of the catalog (cloudops.catalog.models.CLUSTER_MANAGERS): its builder, or None
# while none is written. The builders of the other managers plug in here.
MANAGER_BUILDERS: dict[str, str | None] = {
    "native-pg": "cloudops.failover.native_pg:build_manager",
    # The managers that need nothing the catalog does not hold, built by cloudops.failover.managers.
    "patroni": "cloudops.failover.managers:build_from_catalog",
    "mariadb-gtid": "cloudops.failover.managers:build_from_catalog",
    "rds-multi-az-instance": "cloudops.failover.managers:build_from_catalog",
    "rds-multi-az-cluster": "cloudops.failover.managers:build_from_catalog",
    "aurora": "cloudops.failover.managers:build_from_catalog",
}


class ManagerNotAvailable(CloudOpsError):
    """The cluster's manager has no switchover driver (yet): no drill can run on it."""


def _builder(manager: str) -> tuple[Callable[..., Any] | None, str]:
    spec = MANAGER_BUILDERS.get(manager)
    if spec is None:
        known = ", ".join(name for name, found in MANAGER_BUILDERS.items() if found)
        return None, (
            f"no switchover manager for {manager!r} is registered in cloudops.failover.registry yet "
            f"(available: {known or 'none'})"
        )
    module_name, _, function = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            return None, f"the switchover manager for {manager!r} ({module_name}) is not installed yet"
        raise
    found = getattr(module, function, None)
    if not callable(found):
        return None, f"{module_name} has no builder {function!r} for manager {manager!r}"
    return found, f"{manager!r} is driven by {spec}"


def manager_available(manager: str) -> tuple[bool, str]:
    """Whether a drill can run on a cluster of this manager, and why (or why not)."""
    builder, reason = _builder(manager)
    return builder is not None, reason


def manager_for(cluster: Cluster, catalog: Catalog, *, used_by: str) -> SwitchoverManager:
    """The switchover manager of ``cluster``, built from the catalog.

    :raises ManagerNotAvailable: naming the cluster and its manager; nothing was read or moved.
    """
    builder, reason = _builder(cluster.manager)
    if builder is None:
        raise ManagerNotAvailable(
            f"cluster {cluster.name}: manager {cluster.manager!r} is not available: {reason}; "
            "nothing was read or moved"
        )
    manager: SwitchoverManager = builder(cluster, catalog, used_by=used_by)
    return manager


__all__ = ["MANAGER_BUILDERS", "ManagerNotAvailable", "manager_available", "manager_for"]
