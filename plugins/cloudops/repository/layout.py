"""Where a backup's objects live in a repository: ``<prefix>/<estate>/<database>/<backup_id>/<name>``.

Everything a listing needs is in the key, so a repository can be read without any index: the backup id
starts with its UTC time and sorts in time order, and the manifest (written last) marks the backup
complete. Pure: no I/O, no clock read other than the ``now`` a caller passes.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from cloudops.errors import InvalidInputError

MANIFEST_NAME = "manifest.json"

_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_BACKUP_ID = re.compile(r"^(?P<time>\d{8}T\d{6}Z)-(?P<suffix>[0-9a-f]{6})$")
# The catalog's TargetName: estates and databases are also parts of DAG ids.
_TARGET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# One path segment: an object name never contains "/", so a key parses back without ambiguity.
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_./-]*$")


class LayoutError(InvalidInputError):
    """A key, backup id or name does not follow the repository layout."""


@dataclass(frozen=True)
class BackupKey:
    """The parts of one object key.

    :param estate: the catalog's estate.
    :param database: the catalog's database name.
    :param backup_id: see :func:`new_backup_id`.
    :param name: the object's name inside the backup (``manifest.json`` for the manifest).
    """

    estate: str
    database: str
    backup_id: str
    name: str

    @property
    def is_manifest(self) -> bool:
        """Whether this key is the backup's manifest, the marker of a complete backup."""
        return self.name == MANIFEST_NAME


def new_backup_id(now: datetime) -> str:
    """Return a new backup id such as ``20261123T021500Z-1a2b3c``.

    The UTC time first makes ids sort in time order as plain strings (S3 lists keys in that order);
    the random suffix keeps two backups started in the same second apart (a retry, a manual run).

    :param now: when the backup starts; must be timezone-aware.
    :raises LayoutError: ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise LayoutError(f"backup time must be timezone-aware, got {now.isoformat()}")
    return f"{now.astimezone(UTC).strftime(_TIME_FORMAT)}-{secrets.token_hex(3)}"


def backup_time(backup_id: str) -> datetime:
    """Return the UTC time a backup id was made from (to the second).

    :raises LayoutError: the id is not ``YYYYMMDDTHHMMSSZ-xxxxxx``.
    """
    match = _BACKUP_ID.match(backup_id)
    if match is None:
        raise LayoutError(
            f"backup id {backup_id!r} is not of the form YYYYMMDDTHHMMSSZ-xxxxxx "
            "(e.g. 20261123T021500Z-1a2b3c)"
        )
    try:
        return datetime.strptime(match["time"], _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise LayoutError(f"backup id {backup_id!r} does not start with a valid UTC time") from None


def is_backup_id(value: str) -> bool:
    """Whether ``value`` is a well-formed backup id."""
    try:
        backup_time(value)
    except LayoutError:
        return False
    return True


def normalize_prefix(prefix: str) -> str:
    """Return the repository prefix without leading or trailing slashes ("" for the bucket's root).

    :raises LayoutError: the prefix has characters the catalog does not allow, or empty segments.
    """
    if not _PREFIX.match(prefix):
        raise LayoutError(f"repository prefix {prefix!r} may only hold letters, digits and _ . / -")
    stripped = prefix.strip("/")
    segments = stripped.split("/") if stripped else []
    if any(segment in ("", ".", "..") for segment in segments):
        raise LayoutError(f"repository prefix {prefix!r} has an empty, '.' or '..' segment")
    return stripped


def database_prefix(prefix: str, estate: str, database: str) -> str:
    """Return ``<prefix>/<estate>/<database>/``: where a database's backups are listed."""
    _check_name(estate, "estate", _TARGET_NAME)
    _check_name(database, "database", _TARGET_NAME)
    root = normalize_prefix(prefix)
    return f"{root}/{estate}/{database}/" if root else f"{estate}/{database}/"


def backup_prefix(prefix: str, estate: str, database: str, backup_id: str) -> str:
    """Return ``<prefix>/<estate>/<database>/<backup_id>/``: the folder of one backup.

    :raises LayoutError: a part is malformed (so no key is ever built that cannot be parsed back).
    """
    backup_time(backup_id)
    return f"{database_prefix(prefix, estate, database)}{backup_id}/"


def object_key(prefix: str, estate: str, database: str, backup_id: str, name: str) -> str:
    """Return the key of object ``name`` of a backup."""
    _check_name(name, "object name", _OBJECT_NAME)
    return f"{backup_prefix(prefix, estate, database, backup_id)}{name}"


def manifest_key(prefix: str, estate: str, database: str, backup_id: str) -> str:
    """Return the key of a backup's manifest."""
    return object_key(prefix, estate, database, backup_id, MANIFEST_NAME)


def parse_key(prefix: str, key: str) -> BackupKey:
    """Split a key written by :func:`object_key` back into its parts.

    :param prefix: the repository's prefix, as in the catalog.
    :raises LayoutError: the key is outside the prefix or does not have the layout's shape.
    """
    root = normalize_prefix(prefix)
    rest = key
    if root:
        if not key.startswith(f"{root}/"):
            raise LayoutError(f"key {key!r} is not under the repository prefix {root + '/'!r}")
        rest = key[len(root) + 1 :]
    parts = rest.split("/")
    if len(parts) != 4:
        raise LayoutError(
            f"key {key!r} does not have the layout <prefix>/<estate>/<database>/<backup_id>/<name>"
        )
    estate, database, backup_id, name = parts
    _check_name(estate, f"estate in key {key!r}", _TARGET_NAME)
    _check_name(database, f"database in key {key!r}", _TARGET_NAME)
    _check_name(name, f"object name in key {key!r}", _OBJECT_NAME)
    if not is_backup_id(backup_id):
        raise LayoutError(f"key {key!r}: {backup_id!r} is not a backup id (YYYYMMDDTHHMMSSZ-xxxxxx)")
    return BackupKey(estate=estate, database=database, backup_id=backup_id, name=name)


def _check_name(value: str, what: str, pattern: re.Pattern[str]) -> None:
    if not pattern.match(value):
        raise LayoutError(f"{what} {value!r} does not match {pattern.pattern}")


__all__ = [
    "MANIFEST_NAME",
    "BackupKey",
    "LayoutError",
    "backup_prefix",
    "backup_time",
    "database_prefix",
    "is_backup_id",
    "manifest_key",
    "new_backup_id",
    "normalize_prefix",
    "object_key",
    "parse_key",
]
