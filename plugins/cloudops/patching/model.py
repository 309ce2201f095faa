"""The value types every part of a patch wave speaks: what a host has, what it may get, what it got.

Planning (baseline, snapshot, waves, compliance) and acting (scan, install, reboot, health) are written
apart; they meet only through these frozen types, so that the plan can be unit-tested on recorded host
output and the actions against the sandbox's Debian hosts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum


class Classification(StrEnum):
    """Where an update comes from, as the suite (Debian) or the advisory type (dnf) says."""

    SECURITY = "security"
    UPDATES = "updates"  # bug fixes and other non-security updates
    OTHER = "other"


class ComplianceState(StrEnum):
    """The state of one approved package on one host (SSM Patch Manager's states, plus HELD and EXCLUDED).

    NOT_APPLICABLE (the package is not installed on the host) is never counted as non-compliant.
    """

    INSTALLED = "INSTALLED"
    INSTALLED_PENDING_REBOOT = "INSTALLED_PENDING_REBOOT"
    MISSING = "MISSING"
    FAILED = "FAILED"
    HELD = "HELD"
    EXCLUDED = "EXCLUDED"
    NOT_APPLICABLE = "NOT_APPLICABLE"


KERNEL_PREFIXES = ("linux-image", "demo-kernel")  # packages that put a new kernel in /boot

NON_COMPLIANT = frozenset({ComplianceState.MISSING, ComplianceState.FAILED, ComplianceState.HELD})


@dataclass(frozen=True)
class PendingUpdate:
    """One package a host could upgrade: installed version, candidate version and where it comes from."""

    package: str
    installed: str
    candidate: str
    suite: str  # e.g. "demo-security" (apt) or the repository id (dnf)
    classification: Classification


@dataclass(frozen=True)
class Advisory:
    """One advisory of the repository: which package version fixes what, published when, how severe."""

    id: str  # e.g. "DSA-5800-1"
    package: str
    fixed_version: str
    cves: tuple[str, ...]
    severity: str  # critical | high | medium | low | unknown
    published: date


@dataclass(frozen=True)
class HostScan:
    """What one host reported in a scan: pending updates, holds, kernels, reboot flag and boot id."""

    host: str
    pending: tuple[PendingUpdate, ...]
    installed: dict[str, str] = field(default_factory=dict)  # package -> version, for approved packages
    held: frozenset[str] = frozenset()
    unfinished: frozenset[str] = frozenset()  # unpacked or half-configured: dpkg was interrupted
    boot_id: str = ""
    reboot_required: bool = False
    reboot_required_packages: frozenset[str] = frozenset()
    running_kernel: str = ""
    installed_kernel: str = ""


@dataclass(frozen=True)
class PackagePin:
    """One exact `package=version` of a snapshot, with the version it replaces on that host."""

    package: str
    version: str
    previous: str
    classification: Classification

    @property
    def apt_spec(self) -> str:
        return f"{self.package}={self.version}"


__all__ = [
    "KERNEL_PREFIXES",
    "NON_COMPLIANT",
    "Advisory",
    "Classification",
    "ComplianceState",
    "HostScan",
    "PackagePin",
    "PendingUpdate",
]
