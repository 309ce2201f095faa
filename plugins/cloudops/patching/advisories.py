"""The advisories file of a package repository (``advisories.json``): which version fixes which CVEs.

The file comes from the repository, so it is input: read with a size bound and strict fields, and an
unusable file is refused whole, naming the file and the entry, rather than half-read.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cloudops.errors import CloudOpsError
from cloudops.patching.model import Advisory

MAX_ADVISORIES_BYTES = 1024 * 1024


class AdvisoryFileError(CloudOpsError):
    """An advisories file is unreadable, too large or malformed; the message names file and entry."""


def parse_advisories(text: str | bytes, source: str) -> tuple[Advisory, ...]:
    """Parse an advisories file's text (``source`` names it in errors)."""
    raise NotImplementedError


def load_advisories(path: Path) -> tuple[Advisory, ...]:
    """Read and parse an advisories file of at most MAX_ADVISORIES_BYTES."""
    raise NotImplementedError


def render_advisories(advisories: Iterable[Advisory]) -> str:
    """Return the file's text for ``advisories``: sorted, one stable rendering (parse_advisories reads it)."""
    raise NotImplementedError


__all__ = [
    "MAX_ADVISORIES_BYTES",
    "AdvisoryFileError",
    "load_advisories",
    "parse_advisories",
    "render_advisories",
]
