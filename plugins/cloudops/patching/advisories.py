"""The advisories file of a package repository (``advisories.json``): which version fixes which CVEs.

Debian's archive carries no release date per package, so a baseline's ``approve_after_days`` has
nothing to count from; the sandbox repository publishes this sidecar instead::

    {"format": 1, "advisories": [{"id": "CSA-2026-001", "package": "demo-openssl",
      "fixed_version": "1.1", "cves": ["CVE-2026-99001"], "severity": "high",
      "published": "2026-11-22"}]}

The file comes from the repository, so it is input: read with a size bound and strict fields, and an
unusable file is refused whole, naming the file and the entry, rather than half-read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

from cloudops.errors import CloudOpsError
from cloudops.patching.model import Advisory

MAX_ADVISORIES_BYTES = 1024 * 1024
MAX_ADVISORIES = 10_000
MAX_CVES = 100
FORMAT = 1
SEVERITIES = ("critical", "high", "medium", "low", "unknown")
FIELDS = ("id", "package", "fixed_version", "cves", "severity", "published")

ADVISORY_ID = re.compile(r"[A-Z][A-Z0-9]{1,15}(-[A-Za-z0-9]{1,16}){1,4}")
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]{1,63}")  # Debian policy 5.6.1
# Debian policy 5.6.12, without an epoch (the sandbox's versions have none).
VERSION = re.compile(r"[0-9][A-Za-z0-9.+~-]{0,63}")
CVE_ID = re.compile(r"CVE-[0-9]{4}-[0-9]{4,7}")
ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class AdvisoryFileError(CloudOpsError):
    """An advisories file is unreadable, too large or malformed; the message names file and entry."""


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"duplicate key {duplicates[0]!r}")
    return dict(pairs)


def _entry(raw: object, where: str) -> Advisory:
    if not isinstance(raw, dict):
        raise AdvisoryFileError(f"{where}: expected an object, got {type(raw).__name__}")
    missing = [name for name in FIELDS if name not in raw]
    unknown = sorted(set(raw) - set(FIELDS))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else []
        )
        raise AdvisoryFileError(f"{where}: {'; '.join(parts)} (fields are {', '.join(FIELDS)})")
    for name in ("id", "package", "fixed_version", "severity", "published"):
        if not isinstance(raw[name], str):
            raise AdvisoryFileError(f"{where}: {name} must be a string, got {type(raw[name]).__name__}")
    advisory_id, package, version = raw["id"], raw["package"], raw["fixed_version"]
    where = f"{where} ({advisory_id[:40]!r})"
    checks = (
        ("id", advisory_id, ADVISORY_ID, "e.g. CSA-2026-001 or DSA-5800-1"),
        ("package", package, PACKAGE_NAME, "a Debian package name"),
        ("fixed_version", version, VERSION, "a Debian version without epoch, e.g. 1.1"),
        ("published", raw["published"], ISO_DAY, "a day, YYYY-MM-DD"),
    )
    for name, value, pattern, expected in checks:
        if not pattern.fullmatch(value):
            raise AdvisoryFileError(f"{where}: {name} {value[:80]!r} is not {expected}")
    if raw["severity"] not in SEVERITIES:
        raise AdvisoryFileError(
            f"{where}: severity {raw['severity'][:40]!r} is not one of {', '.join(SEVERITIES)}"
        )
    try:
        published = date.fromisoformat(raw["published"])
    except ValueError as error:
        raise AdvisoryFileError(f"{where}: published {raw['published']!r} is not a day: {error}") from None
    cves = raw["cves"]
    if not isinstance(cves, list) or not 0 < len(cves) <= MAX_CVES:
        raise AdvisoryFileError(f"{where}: cves must be a list of 1 to {MAX_CVES} CVE ids")
    for cve in cves:
        if not isinstance(cve, str) or not CVE_ID.fullmatch(cve):
            raise AdvisoryFileError(f"{where}: cve {str(cve)[:40]!r} is not a CVE id (CVE-YYYY-NNNN)")
    if len(set(cves)) != len(cves):
        raise AdvisoryFileError(f"{where}: cves lists an id twice")
    return Advisory(
        id=advisory_id,
        package=package,
        fixed_version=version,
        cves=tuple(cves),
        severity=raw["severity"],
        published=published,
    )


def parse_advisories(text: str | bytes, source: str) -> tuple[Advisory, ...]:
    """Parse an advisories file's text (``source`` names it in errors), in the file's order.

    :raises AdvisoryFileError: on anything but the documented shape: too large, not JSON, a duplicate
        key or id, a missing or unknown field, a malformed id, version, CVE, severity or day.
    """
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_ADVISORIES_BYTES:
        raise AdvisoryFileError(f"{source}: {size} bytes, more than the {MAX_ADVISORIES_BYTES} allowed")
    try:
        document = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except UnicodeDecodeError as error:
        raise AdvisoryFileError(f"{source}: not UTF-8 text ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise AdvisoryFileError(f"{source}:{error.lineno}: not valid JSON: {error.msg}") from None
    except (ValueError, RecursionError) as error:
        raise AdvisoryFileError(f"{source}: not usable JSON: {error}") from None
    if not isinstance(document, dict) or set(document) != {"format", "advisories"}:
        raise AdvisoryFileError(f'{source}: expected an object with exactly "format" and "advisories"')
    if type(document["format"]) is not int or document["format"] != FORMAT:
        raise AdvisoryFileError(f"{source}: format {document['format']!r} is not {FORMAT}")
    entries = document["advisories"]
    if not isinstance(entries, list):
        raise AdvisoryFileError(f"{source}: advisories must be a list")
    if len(entries) > MAX_ADVISORIES:
        raise AdvisoryFileError(f"{source}: {len(entries)} advisories, more than {MAX_ADVISORIES}")
    advisories: list[Advisory] = []
    seen: set[str] = set()
    for index, raw in enumerate(entries):
        advisory = _entry(raw, f"{source}: advisories[{index}]")
        if advisory.id in seen:
            raise AdvisoryFileError(f"{source}: advisories[{index}]: id {advisory.id!r} appears twice")
        seen.add(advisory.id)
        advisories.append(advisory)
    return tuple(advisories)


def load_advisories(path: Path) -> tuple[Advisory, ...]:
    """Read and parse an advisories file of at most MAX_ADVISORIES_BYTES.

    :raises AdvisoryFileError: when it cannot be read or is refused by parse_advisories.
    """
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_ADVISORIES_BYTES + 1)
    except OSError as error:
        raise AdvisoryFileError(f"{path}: cannot read: {error.strerror}") from None
    return parse_advisories(data, str(path))


def render_advisories(advisories: Iterable[Advisory]) -> str:
    """Return the file's text for ``advisories``: sorted by id, one stable rendering."""
    entries = [
        {
            "id": a.id,
            "package": a.package,
            "fixed_version": a.fixed_version,
            "cves": list(a.cves),
            "severity": a.severity,
            "published": a.published.isoformat(),
        }
        for a in sorted(advisories, key=lambda a: a.id)
    ]
    return json.dumps({"format": FORMAT, "advisories": entries}, indent=2) + "\n"


__all__ = [
    "MAX_ADVISORIES_BYTES",
    "SEVERITIES",
    "AdvisoryFileError",
    "load_advisories",
    "parse_advisories",
    "render_advisories",
]
