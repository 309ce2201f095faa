"""What a secret looks like, in one place: the catalog refuses them and the evidence ledger masks them.

Two kinds of rule. A *key* names a credential (``db_pass``, ``signing_key``, ``secretKey``,
``x-auth-token``...): its whole value is masked. A *value* looks like a credential whatever its key
(a private key, an AWS key id, a JWT, a GitHub or Slack token, a URL with a password, a JDBC/ADO
``Password=``...): only the secret part is masked, so that an error line keeps what went wrong.

Evidence also goes through Airflow's own secrets masker (:func:`airflow_redact`), which knows the
values this process was told about (connection passwords and sensitive extras a task fetched,
``mask_secret`` calls, ``[core] sensitive_var_conn_names``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import sys
from typing import Any

log = logging.getLogger(__name__)

MASK = "***"

# Words that make a key a credential's name, matched as whole words of the key once it is split
# (``db_pass``, ``dbPass``, ``db-pass`` all give ``db``, ``pass``): ``passed`` or ``bypass_cache``
# are not credentials.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "pgpass",
        "secret",
        "secrets",
        "token",
        "apikey",
        "credential",
        "credentials",
        "authorization",
        "bearer",
        "dsn",
        "cookie",
    }
)
# Two-word names that are credentials only together (``access_key``, but not ``access_log``).
_SECRET_PAIRS = frozenset(
    {
        ("api", "key"),
        ("access", "key"),
        ("secret", "key"),
        ("private", "key"),
        ("signing", "key"),
        ("ssh", "key"),
        ("client", "secret"),
        ("session", "key"),
        ("master", "key"),
        ("encryption", "key"),
        ("hmac", "key"),
    }
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_WORD = re.compile(r"[^a-z0-9]+")

# Values that are secrets whatever their key: (pattern, what it is). The group named ``secret`` is
# the part masked; a pattern without one is masked whole.
SECRET_VALUES = [
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?:.*?-----END [A-Z ]*PRIVATE KEY-----|.*)", re.DOTALL
        ),
        "a private key",
    ),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    # user:password@ after a scheme, anywhere in the text; the password may hold "/" or "@" (greedy
    # up to the last "@" before a space).
    (
        re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://(?P<secret>[^\s/@:]*:\S*)@"),
        "a URL with a password in it",
    ),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "a JSON web token"),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"), "a GitHub token"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{8,}"), "a Slack token"),
    (re.compile(r"\b(?:sk|rk)_live_[A-Za-z0-9]{16,}"), "a Stripe key"),
    (re.compile(r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9._~+/=-]{8,})"), "a bearer token"),
    # JDBC/ADO/ODBC connection strings and key=value settings: Password=p; pwd={a;b}; token: x
    (
        re.compile(
            r"(?i)\b(?:password|passwd|pwd|passphrase|secret|token|api[_-]?key|access[_-]?key)"
            r"\s*[=:]\s*(?P<secret>\{[^}]*\}|\"[^\"]*\"|'[^']*'|[^;&\s]+)"
        ),
        "a password setting",
    ),
]
# Cheap substrings of the lower-cased value, one tuple per pattern above: a pattern runs only when
# one of its hints is present (every string of every evidence record passes through here).
_VALUE_HINTS = [
    ("-----begin",),
    ("akia", "asia"),
    ("@",),
    ("eyj",),
    ("gh",),
    ("xox",),
    ("_live_",),
    ("bearer",),
    ("pass", "pwd", "secret", "token", "key"),
]
SECRET_HINTS = tuple(dict.fromkeys(hint for hints in _VALUE_HINTS for hint in hints))


def might_hold_secret(value: str) -> bool:
    """False when no value pattern can match ``value`` (a cheap test before the regexes): most
    strings of a record (timestamps, ids, hashes) stop here."""
    lowered = value.lower()
    return any(hint in lowered for hint in SECRET_HINTS)  # faster than one case-blind regex


def _words(key: str) -> list[str]:
    return [word for word in _NOT_WORD.split(_CAMEL.sub("_", key).lower()) if word]


@functools.lru_cache(maxsize=4096)  # the same few keys recur in every record
def is_secret_key(key: str) -> bool:
    """True for a key that names a credential (``*_conn_id`` names a connection, not a secret)."""
    words = _words(key)
    if words[-2:] == ["conn", "id"]:
        return False
    if any(word in _SECRET_WORDS for word in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def secret_kind(value: str) -> str | None:
    """What a string looks like when it is a secret ("a private key", ...), else None."""
    if not might_hold_secret(value):
        return None
    lowered = value.lower()
    for (pattern, what), hints in zip(SECRET_VALUES, _VALUE_HINTS, strict=True):
        if any(hint in lowered for hint in hints) and pattern.search(value):
            return what
    return None


def _mask_match(match: re.Match[str]) -> str:
    if "secret" not in match.re.groupindex or match.start("secret") < 0:
        return MASK
    whole, start = match.group(0), match.start()
    return whole[: match.start("secret") - start] + MASK + whole[match.end("secret") - start :]


def mask_string(value: str) -> str:
    """``value`` with every secret-looking part replaced by ``***`` (the rest kept)."""
    if not might_hold_secret(value):
        return value
    lowered = value.lower()
    for (pattern, _), hints in zip(SECRET_VALUES, _VALUE_HINTS, strict=True):
        if any(hint in lowered for hint in hints):
            value = pattern.sub(_mask_match, value)
    return value


def mask_secrets(value: Any) -> Any:
    """A copy of JSON-like ``value`` with secret-named keys and secret-looking strings masked."""
    if isinstance(value, dict):
        return {
            key: MASK if isinstance(key, str) and is_secret_key(key) else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(item) for item in value]
    if isinstance(value, str):
        return mask_string(value)
    return value


# Airflow keeps one masker per import path: the task SDK's (tasks: connections and variables a
# task fetched register there) and the core's (scheduler, API server). Only a masker this process
# has loaded can hold secrets of this process, so a module not imported yet is not imported here:
# that would cost seconds in the CLI and add nothing but the key names, which mask_secrets covers.
_AIRFLOW_MASKERS = ("airflow.sdk._shared.secrets_masker", "airflow._shared.secrets_masker")


def airflow_redact(value: Any) -> Any:
    """``value`` through every Airflow secrets masker loaded in this process (``redact``)."""
    for name in _AIRFLOW_MASKERS:
        module = sys.modules.get(name)
        redact = getattr(module, "redact", None)
        if redact is None:
            continue
        try:
            value = redact(value)
        except Exception as error:  # a masker bug must not stop recording; ours has run already
            log.warning("Airflow's secrets masker (%s) failed: %s: %s", name, type(error).__name__, error)
    return value


def mask_evidence(value: Any) -> Any:
    """What evidence records hold: ``value`` through mask_secrets, then Airflow's own maskers."""
    return airflow_redact(mask_secrets(value))


__all__ = [
    "MASK",
    "SECRET_VALUES",
    "airflow_redact",
    "is_secret_key",
    "mask_evidence",
    "mask_secrets",
    "mask_string",
    "might_hold_secret",
    "secret_kind",
]
