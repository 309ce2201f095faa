"""Compliance per host and package after a wave (or from a scan alone): SSM's states plus HELD and EXCLUDED.

For each package the snapshot pinned on a host, first rule that applies:
- the host is excluded -> EXCLUDED; the install of that package failed -> FAILED;
- the host has the pinned version (or newer) -> INSTALLED_PENDING_REBOOT when the reboot is attributed
  to it (``/run/reboot-required.pkgs`` names it, or the flag is set without a package list and it was
  installed after the current boot), else INSTALLED;
- the package is held on the host -> HELD; it is not installed at all -> NOT_APPLICABLE (never
  non-compliant); otherwise MISSING.
Updates the snapshot left out because they are held are reported HELD, on excluded hosts EXCLUDED.
Compliance is not health: a host can be INSTALLED and have failed its health gate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cloudops.patching.debian_version import compare_versions
from cloudops.patching.model import NON_COMPLIANT, Classification, ComplianceState, HostScan
from cloudops.patching.snapshot import Snapshot


@dataclass(frozen=True)
class InstallResult:
    """What installing one pinned package on one host did (from the host actions)."""

    package: str
    ok: bool
    installed_at: datetime | None = None
    message: str = ""


@dataclass(frozen=True)
class PackageCompliance:
    package: str
    state: ComplianceState
    wanted: str
    found: str
    classification: Classification
    reason: str


@dataclass(frozen=True)
class HostCompliance:
    """One host's packages, its kernels and whether it is compliant (no MISSING, FAILED or HELD)."""

    host: str
    packages: tuple[PackageCompliance, ...]
    running_kernel: str = ""
    installed_kernel: str = ""

    @property
    def compliant(self) -> bool:
        return not any(p.state in NON_COMPLIANT for p in self.packages)

    @property
    def kernel_current(self) -> bool:
        """The running kernel is the newest installed one (unknown kernels count as current)."""
        return not self.installed_kernel or self.running_kernel == self.installed_kernel

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(str(p.state) for p in self.packages))


@dataclass(frozen=True)
class FleetCompliance:
    hosts: tuple[HostCompliance, ...]
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def assessed_hosts(self) -> list[HostCompliance]:
        """Hosts with at least one package that is not EXCLUDED (excluded hosts are not scored)."""
        return [h for h in self.hosts if any(p.state != ComplianceState.EXCLUDED for p in h.packages)]

    @property
    def percent_compliant(self) -> float:
        assessed = self.assessed_hosts
        if not assessed:
            return 100.0
        return round(100 * sum(1 for h in assessed if h.compliant) / len(assessed), 1)

    @property
    def security_non_compliant(self) -> int:
        return sum(
            1
            for h in self.hosts
            for p in h.packages
            if p.state in NON_COMPLIANT and p.classification == Classification.SECURITY
        )

    @property
    def kernel_pending(self) -> list[str]:
        return [h.host for h in self.hosts if not h.kernel_current]

    def summary(self) -> str:
        states = ", ".join(f"{state} {count}" for state, count in sorted(self.counts.items())) or "nothing"
        return (
            f"{self.percent_compliant:g}% of {len(self.assessed_hosts)} host(s) compliant; "
            f"packages: {states}; "
            f"security non-compliant: {self.security_non_compliant}; running an older kernel: "
            f"{', '.join(self.kernel_pending) or 'none'}"
        )


def _reached(found: str, wanted: str) -> bool:
    try:
        return compare_versions(found, wanted) >= 0
    except ValueError:
        return found == wanted


def assess_host(
    snapshot: Snapshot,
    after: HostScan,
    installs: Sequence[InstallResult] = (),
    boot_started_at: datetime | None = None,
) -> HostCompliance:
    """Compliance of ``after.host`` against the snapshot, from its scan after the wave and install results.

    :param boot_started_at: when the host's current boot began (now - /proc/uptime), to attribute a
        reboot flag without a package list to what was installed after it.
    """
    host = after.host
    excluded = host in snapshot.excluded_hosts
    results = {r.package: r for r in installs}
    packages = []
    for pin in snapshot.pins.get(host, ()):
        found = after.installed.get(pin.package, "")
        result = results.get(pin.package)
        if excluded:
            state, reason = ComplianceState.EXCLUDED, "host is excluded from the baseline"
        elif result is not None and not result.ok:
            state, reason = ComplianceState.FAILED, f"install failed: {result.message or 'no message'}"
        elif found and _reached(found, pin.version):
            pending = pin.package in after.reboot_required_packages or (
                after.reboot_required
                and not after.reboot_required_packages
                and result is not None
                and result.installed_at is not None
                and boot_started_at is not None
                and result.installed_at > boot_started_at
            )
            if pending:
                state, reason = (
                    ComplianceState.INSTALLED_PENDING_REBOOT,
                    (f"{found} installed; the host needs a reboot for it"),
                )
            else:
                state, reason = ComplianceState.INSTALLED, f"{found} installed"
        elif pin.package in after.held:
            state, reason = ComplianceState.HELD, f"held at {found or 'nothing'}"
        elif not found:
            state, reason = ComplianceState.NOT_APPLICABLE, "not installed on this host"
        else:
            state, reason = ComplianceState.MISSING, f"{found} installed, {pin.version} wanted"
        packages.append(PackageCompliance(pin.package, state, pin.version, found, pin.classification, reason))
    for out in snapshot.left_out:
        if out.host != host or out.kind not in ("held", "excluded") or out.package == "*":
            continue
        state = ComplianceState.HELD if out.kind == "held" else ComplianceState.EXCLUDED
        found = after.installed.get(out.package, "")
        packages.append(
            PackageCompliance(out.package, state, out.version, found, out.classification, out.reason)
        )
    return HostCompliance(host, tuple(packages), after.running_kernel, after.installed_kernel)


def summarise_fleet(hosts: Sequence[HostCompliance]) -> FleetCompliance:
    """Counts per state over every host's packages; percent compliant of the hosts not wholly excluded."""
    counts = Counter(str(p.state) for h in hosts for p in h.packages)
    return FleetCompliance(tuple(hosts), dict(counts))


__all__ = [
    "FleetCompliance",
    "HostCompliance",
    "InstallResult",
    "PackageCompliance",
    "assess_host",
    "summarise_fleet",
]
