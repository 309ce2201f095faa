"""Scratch databases: the names restore drills give them, and the guard that keeps real databases safe.

A scratch database is named ``drill_<database>_<hash>``: the catalog's database name (so that a drill
killed half-way can find its leftovers) and the first 10 hex digits of the SHA-256 of the run's id (so
that each run has its own, a retry of the same run finds its own, and the name stays a plain identifier
whatever characters the run id holds). Names stay within 63 characters, PostgreSQL's limit (MariaDB
allows 64): a database name longer than 46 characters is cut to 37 and a hash of the whole name added.

A name alone proves nothing: ``drill_logs_2024010112`` (a date) has the shape too. So a scratch database
also carries an **ownership marker**, written when cloudops creates it (PostgreSQL: ``COMMENT ON
DATABASE``; MariaDB: ``CREATE DATABASE ... COMMENT``)::

    cloudops-scratch/v1 {"run_id":"<the run's id>","seal":"<SHA-256 of a fixed tag, the name, the run id>"}

The marker is valid only for its own name: the run id must hash to the name's run part (for an existing
name that takes a 40-bit preimage search, so no marker is guessed from the name alone) and the seal binds
name and run id (a marker copied onto, or renamed with, another database does not verify). Every drop
(a teardown, the leftover cleanup of each drill's prepare, the leftover of an earlier try) requires both
the scratch-shaped name and a valid marker, read right before the statement; a database without one is
never dropped, and the decision is logged with its reason.

The lifecycle (create with a marker, drop only what is marked, list the marked leftovers) lives here once;
each engine gives it one admin session through the small :class:`ScratchServer` protocol. Apart from the
functions taking a ScratchServer, this module is pure. :func:`check_scratch_root` applies the same rule
to physical drills' scratch clusters on the worker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloudops.errors import RestoreRefused

log = logging.getLogger(__name__)

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


MARKER_PREFIX = "cloudops-scratch/v1 "
# MariaDB's limit on a database comment: a longer comment was not written by cloudops.
MARKER_MAX_LENGTH = 1024
_SEAL_TAG = b"cloudops scratch database marker v1"


def _seal(name: str, run_id: str) -> str:
    return hashlib.sha256(b"\0".join((_SEAL_TAG, name.encode(), run_id.encode()))).hexdigest()


def scratch_marker(name: str, run_id: str) -> str:
    """Return the ownership marker that scratch database ``name`` of run ``run_id`` carries.

    :raises ValueError: ``name`` is not the scratch name of ``run_id`` (its run part is another run's
        hash), or the marker would not fit a MariaDB database comment.
    """
    found = _SCRATCH.match(name)
    if found is None or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{name!r} is not a scratch database name")
    if found["run"] != _digest(run_id)[:_RUN_HASH_LENGTH]:
        raise ValueError(
            f"{name!r} is not a scratch database of run {run_id!r}: its run part is another run's"
        )
    text = MARKER_PREFIX + json.dumps({"run_id": run_id, "seal": _seal(name, run_id)}, separators=(",", ":"))
    if len(text) > MARKER_MAX_LENGTH:
        raise ValueError(f"run id {run_id[:80]!r}... is too long for a scratch marker")
    return text


@dataclass(frozen=True)
class Ownership:
    """Whether cloudops created a database (its name and marker say so), and why (or why not)."""

    owned: bool
    reason: str
    run_id: str | None = None


def ownership(name: str, marker: str | None) -> Ownership:
    """Decide from the database's name and its comment (untrusted: read from the server) whether
    cloudops created it as a scratch database."""
    if not is_scratch_name(name):
        return Ownership(False, "its name is not a scratch name (drill_<database>_<run hash>)")
    if not marker:
        return Ownership(
            False, "it carries no cloudops marker (its comment is empty): cloudops did not create it"
        )
    if len(marker) > MARKER_MAX_LENGTH or not marker.startswith(MARKER_PREFIX):
        return Ownership(False, "its comment is not a cloudops marker: cloudops did not create it")
    try:
        fields = json.loads(marker[len(MARKER_PREFIX) :])
    except ValueError:
        fields = None
    if (
        not isinstance(fields, dict)
        or set(fields) != {"run_id", "seal"}
        or not all(isinstance(value, str) for value in fields.values())
    ):
        return Ownership(False, "its cloudops marker is malformed")
    run_id = fields["run_id"]
    try:
        expected = scratch_marker(name, run_id)
    except ValueError:
        return Ownership(
            False, f"its marker names run {run_id[:80]!r}, whose scratch databases have another name"
        )
    if not hmac.compare_digest(marker, expected):
        return Ownership(
            False, "its marker's seal does not match its name (a marker copied from another database?)"
        )
    return Ownership(True, f"created by cloudops for run {run_id!r}", run_id)


class ScratchServer(Protocol):
    """One admin session on a database server, as the scratch lifecycle needs it (one per engine)."""

    where: str  # the server, for messages

    def exists(self, name: str) -> bool: ...
    def marker(self, name: str) -> str | None:
        """The database's comment, cut to MARKER_MAX_LENGTH + 1 characters; None when it has none."""
        ...

    def create(self, name: str, marker: str) -> None:
        """Create database ``name`` carrying ``marker``."""
        ...

    def drop(self, name: str) -> None:
        """Drop database ``name`` (the statement only: the guards ran before)."""
        ...

    def names_like(self, pattern: str) -> list[str]:
        """The databases whose name is LIKE ``pattern``."""
        ...


def create_scratch(server: ScratchServer, name: str, *, run_id: str | None, used_by: str) -> bool:
    """Create scratch database ``name`` for run ``run_id``, marked as cloudops's; return whether a
    leftover of an earlier try (marked, of the same run) was dropped first.

    :raises RestoreRefused: ``name`` is not the scratch name of ``run_id``, or a database of that name
        exists that cloudops did not create (it is left as it is).
    """
    if not run_id:
        raise RestoreRefused(
            f"{used_by}: scratch database {name!r} is created only for a run: its marker records the run id"
        )
    try:
        marker = scratch_marker(name, run_id)
    except ValueError as error:
        raise RestoreRefused(
            f"{used_by}: cannot create scratch database on {server.where}: {error}"
        ) from None
    replaced = False
    if server.exists(name):
        log.warning(
            "scratch database %r on %s exists, left by an earlier try of this run", name, server.where
        )
        _drop_owned(server, name, used_by=used_by)
        replaced = True
    log.info(
        "creating scratch database %r on %s for %s, marked as created for run %r",
        name,
        server.where,
        used_by,
        run_id,
    )
    server.create(name, marker)
    return replaced


def drop_scratch(server: ScratchServer, name: str, *, used_by: str) -> bool:
    """Drop scratch database ``name`` when cloudops created it; return whether it existed.

    :raises RestoreRefused: ``name`` is not a scratch name, or the database carries no valid marker
        (it is left as it is, and the reason is logged).
    """
    check_scratch(name, action="drop")
    if not server.exists(name):
        log.info("scratch database %r does not exist on %s: nothing to drop", name, server.where)
        return False
    _drop_owned(server, name, used_by=used_by)
    return True


def _drop_owned(server: ScratchServer, name: str, *, used_by: str) -> None:
    check_scratch(name, action="drop")
    verdict = ownership(name, server.marker(name))  # read right before the statement
    if not verdict.owned:
        log.warning("not dropping database %r on %s (%s): %s", name, server.where, used_by, verdict.reason)
        raise RestoreRefused(
            f"{used_by}: refusing to drop database {name!r} on {server.where}: {verdict.reason}. cloudops "
            "drops only the scratch databases it created (a drill_ name and its marker); drop it yourself "
            "if it is not needed"
        )
    log.info("dropping scratch database %r on %s (%s): %s", name, server.where, used_by, verdict.reason)
    server.drop(name)


def leftover_scratch(server: ScratchServer, database: str) -> list[str]:
    """The scratch databases of catalog database ``database`` that cloudops created, sorted.

    A database with a scratch-shaped name but no valid marker is left out, and that is logged with
    its reason: it is never dropped.
    """
    owned = []
    for name in sorted(n for n in server.names_like(like_pattern(database)) if is_scratch_of(n, database)):
        verdict = ownership(name, server.marker(name))
        if verdict.owned:
            owned.append(name)
        else:
            log.warning(
                "leaving database %r on %s alone: its name looks like a scratch database of %r, but %s; it "
                "is never dropped",
                name,
                server.where,
                database,
                verdict.reason,
            )
    return owned


# What marks a folder as a database server's data directory (PostgreSQL; MariaDB/MySQL).
_DATA_DIR_SIGNS = ("PG_VERSION", "postmaster.pid", "ibdata1", "aria_log_control", "mysql/user.frm")


def check_scratch_root(root: Path) -> None:
    """Refuse a scratch root for physical drills' clusters that lies in, or is, a database server's
    data directory (a catalog server's, on the worker): a scratch cluster never goes there.

    :raises RestoreRefused: naming the data directory found.
    """
    resolved = root.resolve()
    for folder in (resolved, *resolved.parents):
        for sign in _DATA_DIR_SIGNS:
            if (folder / sign).exists():
                raise RestoreRefused(
                    f"scratch root {root} is inside the database server data directory {folder} ({sign} "
                    "found there): set CLOUDOPS_SCRATCH_DIR to a folder of its own"
                )


__all__ = [
    "MARKER_MAX_LENGTH",
    "MARKER_PREFIX",
    "MAX_NAME_LENGTH",
    "SCRATCH_PREFIX",
    "Ownership",
    "ScratchServer",
    "check_scratch",
    "check_scratch_root",
    "create_scratch",
    "drop_scratch",
    "is_scratch_name",
    "is_scratch_of",
    "leftover_scratch",
    "like_pattern",
    "ownership",
    "scratch_marker",
    "scratch_name",
    "scratch_stem",
]
