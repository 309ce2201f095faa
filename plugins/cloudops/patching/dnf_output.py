"""Parse ``dnf check-update`` (RHEL family) into PendingUpdates.

Exit status: 100 means updates are listed, 0 none, anything else (1) an error. The listing is
``name.arch  version-release  repository``; a long name wraps onto its own line with the rest on the
next. The "Obsoleting Packages" section that may follow is not a list of updates and is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from cloudops.errors import CloudOpsError
from cloudops.patching.model import Classification, PendingUpdate

MAX_OUTPUT = 4_000_000
_ARCHES = ("noarch", "x86_64", "aarch64", "i686", "ppc64le", "s390x", "src")
_LINE = re.compile(r"^(?P<name>\S+)\.(?P<arch>[a-z0-9_]+)\s+(?P<version>\S+)\s+(?P<repo>\S+)$")


class DnfCheckUpdateError(CloudOpsError):
    """``dnf check-update`` failed (exit 1) or printed something that is not a listing."""


def parse_check_update(
    host: str,
    exit_status: int,
    output: str,
    installed: Mapping[str, str],
    security_packages: frozenset[str] = frozenset(),
) -> tuple[PendingUpdate, ...]:
    """The pending updates of ``host`` from ``dnf check-update``'s exit status and output.

    :param installed: package -> installed version (``rpm -q``), for PendingUpdate.installed.
    :param security_packages: names ``dnf updateinfo list --security`` listed: these, and updates
        from a repository whose id contains "security", are SECURITY; the rest UPDATES.
    :raises DnfCheckUpdateError: on exit 1 (or any status but 0/100), naming the host and dnf's error.
    """
    if exit_status == 0:
        return ()
    if exit_status != 100:
        last = " ".join(output.strip().splitlines()[-3:])[:300]
        raise DnfCheckUpdateError(f"{host}: dnf check-update failed with exit {exit_status}: {last}")
    updates = []
    pending_name = ""
    for raw in output[:MAX_OUTPUT].splitlines():
        line = raw.strip()
        if line.startswith(("Obsoleting Packages", "Security:")):
            break
        if not line or line.startswith(("Last metadata expiration", "Updating Subscription")):
            continue
        if pending_name:
            line, pending_name = f"{pending_name} {line}", ""
        parts = line.split()
        if len(parts) == 1 and parts[0].rsplit(".", 1)[-1] in _ARCHES:
            pending_name = parts[0]
            continue
        match = _LINE.match(" ".join(parts))
        if not match or match.group("arch") not in _ARCHES:
            continue  # dnf's chatter ("Waiting for process...", plugin banners)
        name, repo = match.group("name"), match.group("repo")
        classification = (
            Classification.SECURITY
            if name in security_packages or "security" in repo.lower()
            else Classification.UPDATES
        )
        updates.append(
            PendingUpdate(name, installed.get(name, ""), match.group("version"), repo, classification)
        )
    if pending_name:
        raise DnfCheckUpdateError(f"{host}: dnf check-update output ends inside an entry ({pending_name})")
    if not updates:
        raise DnfCheckUpdateError(f"{host}: dnf check-update exited 100 (updates) but listed none")
    return tuple(updates)


__all__ = ["DnfCheckUpdateError", "parse_check_update"]
