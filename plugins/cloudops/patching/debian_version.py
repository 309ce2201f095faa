"""Compare Debian package versions ([epoch:]upstream[-revision]) the way dpkg does, without apt_pkg."""

from __future__ import annotations

import re

_VERSION = re.compile(r"^(?:(\d+):)?([A-Za-z0-9.+~:-]+?)(?:-([A-Za-z0-9.+~]+))?$")


def _order(char: str) -> int:
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(left: str, right: str) -> int:
    while left or right:
        left_text = re.match(r"\D*", left).group(0)  # type: ignore[union-attr]
        right_text = re.match(r"\D*", right).group(0)  # type: ignore[union-attr]
        for index in range(max(len(left_text), len(right_text))):
            a = _order(left_text[index]) if index < len(left_text) else 0
            b = _order(right_text[index]) if index < len(right_text) else 0
            if a != b:
                return -1 if a < b else 1
        left, right = left[len(left_text) :], right[len(right_text) :]
        left_digits = re.match(r"\d*", left).group(0)  # type: ignore[union-attr]
        right_digits = re.match(r"\d*", right).group(0)  # type: ignore[union-attr]
        a, b = int(left_digits or 0), int(right_digits or 0)
        if a != b:
            return -1 if a < b else 1
        left, right = left[len(left_digits) :], right[len(right_digits) :]
    return 0


def compare_versions(left: str, right: str) -> int:
    """Return -1, 0 or 1 as ``left`` is older than, equal to or newer than ``right`` (dpkg order).

    :raises ValueError: for a string that is not a Debian version.
    """
    parsed = []
    for version in (left, right):
        match = _VERSION.match(version.strip())
        if not match:
            raise ValueError(f"{version!r} is not a Debian package version")
        parsed.append((int(match.group(1) or 0), match.group(2), match.group(3) or ""))
    (epoch_a, up_a, rev_a), (epoch_b, up_b, rev_b) = parsed
    if epoch_a != epoch_b:
        return -1 if epoch_a < epoch_b else 1
    return _compare_part(up_a, up_b) or _compare_part(rev_a, rev_b)


__all__ = ["compare_versions"]
