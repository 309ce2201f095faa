"""What a secret looks like, in one place: the catalog refuses them and the evidence ledger masks them."""

from __future__ import annotations

import re
from typing import Any

# Keys that would hold a secret: the catalog names connections, never credentials.
SECRET_KEY = re.compile(
    r"(^|_)(password|passwd|pwd|secret|secret_key|secret_access_key|token|api_key|apikey|"
    r"private_key|credentials?)($|_)",
    re.IGNORECASE,
)
# Values that are secrets whatever their key, with what they look like.
SECRET_VALUES = [
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"^[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"), "a URL with a password in it"),
]
# Cheap substrings that every secret value above contains: the regexes run only when one is present.
SECRET_HINTS = ("@", "AKIA", "ASIA", "-----BEGIN")
MASK = "***"


def is_secret_key(key: str) -> bool:
    """True for a key that names a credential (``*_conn_id`` names a connection, not a secret)."""
    return bool(SECRET_KEY.search(key)) and not key.endswith("_conn_id")


def secret_kind(value: str) -> str | None:
    """What a string looks like when it is a secret ("a private key", ...), else None."""
    if not any(hint in value for hint in SECRET_HINTS):
        return None
    for pattern, what in SECRET_VALUES:
        if pattern.search(value):
            return what
    return None


def mask_secrets(value: Any) -> Any:
    """A copy of JSON-like ``value`` with secret-named keys and secret-looking strings masked."""
    if isinstance(value, dict):
        return {
            key: MASK if isinstance(key, str) and is_secret_key(key) else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(item) for item in value]
    if isinstance(value, str) and secret_kind(value):
        return MASK
    return value


__all__ = ["MASK", "SECRET_KEY", "SECRET_VALUES", "is_secret_key", "mask_secrets", "secret_kind"]
