"""Catalog errors that name the file, the line and the field, with a hint when a name is close."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cloudops.errors import InvalidInputError


@dataclass(frozen=True)
class CatalogIssue:
    """One problem in one catalog file.

    :param file: the file as the user named it.
    :param line: 1-based line of the offending key or value, or None when the file cannot be read.
    :param field: dotted path to the field, e.g. ``databases[0].engine``; empty for the whole file.
    :param message: what is wrong, in words the author of the file understands.
    :param hint: a suggestion such as ``did you mean 'engine'?``.
    """

    file: str
    line: int | None
    field: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.field}:" if self.field else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}:{field} {self.message}{hint}"


class CatalogError(InvalidInputError):
    """One or more catalog files are invalid; each issue names file, line and field."""

    def __init__(self, issues: Sequence[CatalogIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """Return a ``did you mean 'x'?`` hint for the closest candidate, or None when none is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {matches[0]!r}?" if matches else None


def format_path(path: Sequence[str | int]) -> str:
    """Render a path like ``('databases', 0, 'engine')`` as ``databases[0].engine``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


__all__ = ["CatalogError", "CatalogIssue", "did_you_mean", "format_path"]
