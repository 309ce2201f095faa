"""The sandbox's own apt repository: the only package source of its Debian hosts.

Hosts see it read-only at GUEST_REPO_PATH (bound in from ``<sandbox dir>/apt-repo``) and list it with
``guest_sources_list()``. Three suites say what kind of update a version is, as Debian's own do:
``cloudops-base`` (what hosts are created with, BASE_PACKAGES), ``cloudops-updates`` (bug fixes) and
``cloudops-security`` (fixes with an advisory in ``advisories.json`` at the repository root).
"""

from __future__ import annotations

from pathlib import Path

from cloudops.patching.model import Advisory, Classification
from cloudops.sandbox.layout import SandboxLayout

GUEST_REPO_PATH = "/srv/cloudops-repo"
BASE_SUITE, UPDATES_SUITE, SECURITY_SUITE = "cloudops-base", "cloudops-updates", "cloudops-security"
SUITES = (BASE_SUITE, UPDATES_SUITE, SECURITY_SUITE)
SUITE_CLASSIFICATION = {
    BASE_SUITE: Classification.OTHER,
    UPDATES_SUITE: Classification.UPDATES,
    SECURITY_SUITE: Classification.SECURITY,
}
ADVISORIES_FILE = "advisories.json"

BASE_PACKAGES: tuple[str, ...] = (
    "demo-openssl=1.0",
    "demo-kernel=6.1.0-1-demo",
    "demo-web=2.0",
    "demo-tools=1.0",
    "demo-slow=1.0",
)


def repository_dir(layout: SandboxLayout) -> Path:
    """Return where the repository lives on this machine: ``<sandbox dir>/apt-repo``."""
    return layout.dir / "apt-repo"


def ensure_repository(layout: SandboxLayout) -> Path:
    """Build the repository if it is missing or its inputs changed; return its directory."""
    raise NotImplementedError


def guest_sources_list() -> str:
    """Return the guests' /etc/apt/sources.list: one trusted file: line per suite, nothing else."""
    return "".join(f"deb [trusted=yes] file:{GUEST_REPO_PATH} {suite} main\n" for suite in SUITES)


def publish(
    layout: SandboxLayout,
    package: str,
    version: str,
    suite: str,
    *,
    advisory: Advisory | None = None,
    breaks_health: bool = False,
) -> Path:
    """Publish a new version of a demo package into a suite; return the .deb's path."""
    raise NotImplementedError


__all__ = [
    "ADVISORIES_FILE",
    "BASE_PACKAGES",
    "BASE_SUITE",
    "GUEST_REPO_PATH",
    "SECURITY_SUITE",
    "SUITES",
    "SUITE_CLASSIFICATION",
    "UPDATES_SUITE",
    "ensure_repository",
    "guest_sources_list",
    "publish",
    "repository_dir",
]
