"""Database engines: one module per engine, each with the same verbs (probe now; dump, restore later)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatabaseState:
    """What a database server says about itself right now.

    :param reachable: a connection and a query succeeded.
    :param role: ``primary`` or ``replica`` as the server reports it (not as the catalog says).
    :param replication_lag_seconds: for a replica, how far replay is behind (0 when caught up).
    :param streaming: for a replica, whether it receives changes from its primary.
    :param replicas_connected: for a primary, how many replicas stream from it.
    :param error: why the server could not be reached or queried.
    """

    reachable: bool
    role: str | None = None
    version: str | None = None
    replication_lag_seconds: float | None = None
    streaming: bool | None = None
    replicas_connected: int | None = None
    error: str | None = None


def first_line(error: BaseException) -> str:
    """The first line of an error's message: driver errors add noise below it."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


__all__ = ["DatabaseState", "first_line"]
