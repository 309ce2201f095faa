"""The sandbox's generated passwords, kept in one 0600 file so that every `up` reuses the same ones.

Passwords are random per sandbox (never in the repository, never printed) and drawn from URL-safe
characters only, so that they survive JSON, DSNs and the single-quoted env file without escaping.
"""

from __future__ import annotations

import json
import secrets
import threading
from pathlib import Path

from cloudops.sandbox.process import write_if_changed


class CredentialStore:
    """Lazily created passwords by name; nothing is written until a password is first asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, str] | None = None
        # `up` starts its chains in threads that share one store: one writer of the file at a time.
        self._lock = threading.Lock()

    def _load(self) -> dict[str, str]:
        if self._cache is None:
            try:
                self._cache = dict(json.loads(self.path.read_text()))
            except FileNotFoundError:
                self._cache = {}
        return self._cache

    def password(self, name: str) -> str:
        """Return the password called `name`, generating and saving it on first use."""
        with self._lock:
            values = self._load()
            if name not in values:
                values[name] = secrets.token_urlsafe(24)
                write_if_changed(self.path, json.dumps(values, indent=2, sort_keys=True) + "\n", mode=0o600)
            return values[name]


__all__ = ["CredentialStore"]
