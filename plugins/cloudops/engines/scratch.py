"""Scratch databases: the names restore drills give them, and the guard that keeps real databases safe.

A scratch database is named ``drill_<database>_<hash>``: the catalog's database name (so that a drill
killed half-way can find its leftovers) and the first 10 hex digits of the SHA-256 of the run's id (so
that each run has its own, a retry of the same run finds its own, and the name stays a plain identifier
whatever characters the run id holds). Names stay within 63 characters, PostgreSQL's limit (MariaDB
allows 64): a database name longer than 46 characters is cut to 37 and a hash of the whole name added.

Every destructive step on a database goes through :func:`check_scratch`: a drop of a name that is not a
scratch name is refused before any connection is opened, so no code path can drop a real database.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re

from cloudops.errors import RestoreRefused

SCRATCH_PREFIX = "drill_"
MAX_NAME_LENGTH = 63
_RUN_HASH_LENGTH = 10
# drill_ + stem + _ + hash fits 63 characters.
_MAX_STEM = MAX_NAME_LENGTH - len(SCRATCH_PREFIX) - 1 - _RUN_HASH_LENGTH
_DATABASE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")  # the catalog's TargetName
_SCRATCH = re.compile(
    rf"^{SCRATCH_PREFIX}(?P<stem>[a-z][a-z0-9_]{{0,{_MAX_STEM - 1}}})"
    rf"_(?P<run>[0-9a-f]{{{_RUN_HASH_LENGTH}}})$"
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def scratch_stem(database: str) -> str:
    """Return the part of a scratch name that stands for ``database`` (the name, or a cut plus a hash).

    :raises ValueError: ``database`` is not a catalog database name.
    """
    if not _DATABASE.match(database):
        raise ValueError(f"{database!r} is not a catalog database name (lower-case letters, digits, _)")
    if len(database) <= _MAX_STEM:
        return database
    return f"{database[: _MAX_STEM - 9]}_{_digest(database)[:8]}"


def scratch_name(database: str, run_id: str) -> str:
    """Return the scratch database a run restores ``database`` into, e.g. ``drill_orders_pg_1a2b3c4d5e``.

    :param database: the catalog's database name (not the engine's), so that scratch databases of
        two catalog entries on the same server never mix.
    :param run_id: the Airflow run id (any text): the same run always gets the same name.
    :raises ValueError: ``database`` is not a catalog database name, or ``run_id`` is empty.
    """
    if not run_id:
        raise ValueError("run_id must not be empty: a scratch name carries the run's id")
    return f"{SCRATCH_PREFIX}{scratch_stem(database)}_{_digest(run_id)[:_RUN_HASH_LENGTH]}"


def is_scratch_name(name: str) -> bool:
    """Whether ``name`` has the shape of a scratch database name (of any database, any run)."""
    return len(name) <= MAX_NAME_LENGTH and _SCRATCH.match(name) is not None


def is_scratch_of(name: str, database: str) -> bool:
    """Whether ``name`` is a scratch database of ``database`` (of any run).

    Exact: ``drill_orders_pg_<hash>`` is a scratch database of ``orders_pg``, not of ``orders``.
    """
    found = _SCRATCH.match(name)
    return found is not None and found["stem"] == scratch_stem(database)


def like_pattern(database: str) -> str:
    """A SQL ``LIKE`` pattern that finds at least the scratch databases of ``database`` (filter with
    :func:`is_scratch_of`: ``_`` is a wildcard in LIKE)."""
    return f"{SCRATCH_PREFIX}{scratch_stem(database)}_%".replace("_", "\\_")


def check_scratch(name: str, *, action: str) -> None:
    """Refuse ``action`` on ``name`` unless it is a scratch database name.

    :param action: what would be done, for the message (``drop``).
    :raises RestoreRefused: ``name`` is not a scratch name; nothing was done.
    """
    if not is_scratch_name(name):
        raise RestoreRefused(
            f"refusing to {action} database {name!r}: only scratch databases (named "
            f"{SCRATCH_PREFIX}<database>_<run hash>) are ever dropped or replaced by cloudops"
        )


__all__ = [
    "MAX_NAME_LENGTH",
    "SCRATCH_PREFIX",
    "check_scratch",
    "is_scratch_name",
    "is_scratch_of",
    "like_pattern",
    "scratch_name",
    "scratch_stem",
]
