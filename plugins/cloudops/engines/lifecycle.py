"""What every engine's restores check the same way: the names a restore may create, the guards before a
staging copy takes its final name, the bound on a restore, and how a schema fingerprint is hashed.

Each engine supplies only its SQL, through the one admin session it already gives the scratch lifecycle
(:class:`cloudops.engines.scratch.ScratchServer`: ``exists`` and ``where`` are all these guards read).
Apart from the functions taking a ScratchServer, this module is pure.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from typing import Any

from cloudops.engines.scratch import ScratchServer
from cloudops.errors import RestoreRefused

# The longest a restore's client program (pg_restore, mariadb) may run before it is killed.
DEFAULT_RESTORE_TIMEOUT = timedelta(hours=6)
# A new database's name: the catalog's database names, without a leading "-" that argv could misread.
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_$-]{0,62}$")  # never a leading - or $


def check_target_name(name: str) -> None:
    """Refuse a database name no restore may create (it could be read as an option, or is too long).

    :raises RestoreRefused: naming the rule.
    """
    if not _TARGET_NAME.match(name):
        raise RestoreRefused(
            f"{name!r} is not a database name a restore may create "
            "(letters, digits, _ $ -, at most 63, not starting with - or $)"
        )


def fingerprint_digest(document: dict[str, Any]) -> str:
    """The SHA-256 of ``document`` as sorted, compact JSON: a schema fingerprint's value.

    The document names its engine and algorithm version (``cloudops-postgres-1``), so that fingerprints
    of two engines or two versions never compare equal by accident.
    """
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_swap(server: ScratchServer, staging: str, target: str, *, keep_as: str, used_by: str) -> bool:
    """Check, before a staging copy takes the place of ``target``, that it can: ``staging`` exists and
    ``keep_as`` (where the current ``target`` goes) does not; return whether ``target`` exists.

    :raises RestoreRefused: the staging copy is missing or ``keep_as`` is taken; nothing was changed.
    """
    if not server.exists(staging):
        raise RestoreRefused(f"{used_by}: the restored database {staging!r} does not exist on {server.where}")
    if server.exists(keep_as):
        raise RestoreRefused(
            f"{used_by}: database {keep_as!r} exists on {server.where}: refusing to overwrite it"
        )
    return server.exists(target)


def check_rename(server: ScratchServer, staging: str, target: str, *, used_by: str) -> None:
    """Check, before a staging copy takes the new name ``target``, that ``staging`` exists and ``target``
    does not: a restore into a new database never replaces one.

    :raises RestoreRefused: naming which; nothing was changed.
    """
    if not server.exists(staging):
        raise RestoreRefused(f"{used_by}: the restored database {staging!r} does not exist on {server.where}")
    if server.exists(target):
        raise RestoreRefused(
            f"{used_by}: database {target!r} exists on {server.where}: a restore into a new database "
            f"never replaces one (the restored copy stays {staging!r} until the teardown drops it)"
        )


__all__ = ["DEFAULT_RESTORE_TIMEOUT", "check_rename", "check_swap", "check_target_name", "fingerprint_digest"]
