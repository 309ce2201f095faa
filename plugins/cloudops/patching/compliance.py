"""Compliance per host and package after a wave (or from a scan alone): SSM's states plus HELD and EXCLUDED.

One rule decides every package's state, :func:`package_state`, from what is known of that package on
that host (:class:`PackageFacts`); the wave (``wave_run``) and ``cloudops patch status`` (and the
runbook's report) only gather the facts. First rule that applies:

1. the host is excluded from the baseline -> EXCLUDED;
2. dpkg left the package unpacked or half-configured -> FAILED (``dpkg --configure -a`` is due);
3. the host has the pinned version, or a newer one -> INSTALLED_PENDING_REBOOT when a pending reboot
   is attributed to this package (:func:`reboot_attribution`), else INSTALLED;
4. the wave rolled it back and held it, or it is held on the host -> HELD;
5. installing it was tried and failed -> FAILED;
6. it is not installed at all -> NOT_APPLICABLE (never counted as non-compliant);
7. otherwise (an older version) -> MISSING.

Updates the snapshot left out because they are held are reported HELD, on excluded hosts EXCLUDED.
Compliance is not health: a host can be INSTALLED and have failed its health gate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cloudops.patching.debian_version import compare_versions
from cloudops.patching.model import (
    KERNEL_PREFIXES,
    NON_COMPLIANT,
    Classification,
    ComplianceState,
    HostScan,
    PackagePin,
)
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


@dataclass(frozen=True)
class PackageFacts:
    """What is known of one pinned package on one host: everything its compliance state follows from.

    :param found: the installed version ("" when the package is not installed).
    :param excluded: the host is excluded from the baseline.
    :param held: the package is held on the host (``apt-mark hold``).
    :param rolled_back: the wave rolled this update back (previous version reinstalled and held).
    :param failure: why installing it failed, when it was tried and failed (None otherwise).
    :param pending_reboot: why a reboot is pending for this package (None: none is attributed to it).
    :param unfinished: dpkg left it unpacked or half-configured (an interrupted dpkg).
    """

    found: str = ""
    excluded: bool = False
    held: bool = False
    rolled_back: bool = False
    failure: str | None = None
    pending_reboot: str | None = None
    unfinished: bool = False


def reached(found: str, wanted: str) -> bool:
    """Whether ``found`` is ``wanted`` or newer (Debian version order; unparsable: equal only)."""
    if not found:
        return False
    try:
        return compare_versions(found, wanted) >= 0
    except ValueError:
        return found == wanted


def package_state(pin: PackagePin, facts: PackageFacts) -> tuple[ComplianceState, str]:
    """The compliance state of one pinned package on one host, and why (pure; the rule is the module's)."""
    found = facts.found
    if facts.excluded:
        return ComplianceState.EXCLUDED, "host is excluded from the baseline"
    if facts.unfinished:
        return ComplianceState.FAILED, (
            f"{found or pin.package} is unpacked but not configured (dpkg was interrupted): "
            "dpkg --configure -a is due"
        )
    if reached(found, pin.version):
        newer = f", newer than the pinned {pin.version}" if found != pin.version else ""
        if facts.pending_reboot:
            return ComplianceState.INSTALLED_PENDING_REBOOT, (
                f"{found} installed{newer}; a reboot is pending for it: {facts.pending_reboot}"
            )
        return ComplianceState.INSTALLED, f"{found} installed{newer}"
    if facts.rolled_back:
        return ComplianceState.HELD, (
            f"the wave rolled {pin.version} back to {found or 'nothing'} and held it (it broke health)"
        )
    if facts.held:
        return ComplianceState.HELD, f"held at {found or 'nothing'}: {pin.version} not installed"
    if facts.failure is not None:
        return ComplianceState.FAILED, (
            f"install failed ({found or 'not installed'}, {pin.version} wanted): "
            f"{facts.failure or 'no message'}"
        )
    if not found:
        return ComplianceState.NOT_APPLICABLE, "not installed on this host"
    return ComplianceState.MISSING, f"{found} installed, {pin.version} wanted"


def reboot_attribution(
    packages: Collection[str],
    *,
    flag: bool,
    flagged: Collection[str] = (),
    installed_since_boot: Collection[str] = (),
    running_kernel: str = "",
    installed_kernel: str = "",
) -> dict[str, str]:
    """Which of ``packages`` a pending reboot is for, each with the reason (pure).

    A package is pending a reboot when ``/run/reboot-required.pkgs`` names it; when the flag is set
    without naming any package, and it was installed after the current boot; or when it is a kernel
    package and the running kernel is not the newest installed one. Never a package the reboot has
    nothing to do with: a flag set by one package does not make the others pending.

    :param flag: ``/run/reboot-required`` exists.
    :param flagged: the packages ``/run/reboot-required.pkgs`` names.
    :param installed_since_boot: packages installed (or upgraded) after the host's current boot began.
    """
    named = set(flagged)
    stale_kernel = bool(running_kernel and installed_kernel and running_kernel != installed_kernel)
    pending = {}
    for package in packages:
        if package in named:
            pending[package] = "/run/reboot-required.pkgs names it"
        elif flag and not named and package in installed_since_boot:
            pending[package] = (
                "/run/reboot-required is set, names no package, and this one was installed after the boot"
            )
        elif stale_kernel and package.startswith(KERNEL_PREFIXES):
            pending[package] = f"kernel {installed_kernel} is installed but {running_kernel} is running"
    return pending


def assess_packages(
    pins: Sequence[PackagePin], facts: Mapping[str, PackageFacts]
) -> tuple[PackageCompliance, ...]:
    """Every pin's state by :func:`package_state` (a pin without facts: not installed, nothing known)."""
    packages = []
    for pin in pins:
        known = facts.get(pin.package, PackageFacts())
        state, reason = package_state(pin, known)
        packages.append(
            PackageCompliance(pin.package, state, pin.version, known.found, pin.classification, reason)
        )
    return tuple(packages)


def states_of(packages: Sequence[PackageCompliance]) -> dict[str, str]:
    """``{package: state}`` as the wave's records keep it."""
    return {p.package: p.state.value for p in packages}


def assess_host(
    snapshot: Snapshot,
    after: HostScan,
    installs: Sequence[InstallResult] = (),
    boot_started_at: datetime | None = None,
) -> HostCompliance:
    """Compliance of ``after.host`` against the snapshot, from its scan and any install results.

    :param boot_started_at: when the host's current boot began (now - /proc/uptime), to attribute a
        reboot flag without a package list to what was installed after it.
    """
    host = after.host
    pins = snapshot.pins.get(host, ())
    results = {r.package: r for r in installs}
    since_boot = {
        r.package
        for r in installs
        if r.ok and r.installed_at and boot_started_at and r.installed_at > boot_started_at
    }
    pending = reboot_attribution(
        [pin.package for pin in pins],
        flag=after.reboot_required,
        flagged=after.reboot_required_packages,
        installed_since_boot=since_boot,
        running_kernel=after.running_kernel,
        installed_kernel=after.installed_kernel,
    )
    facts = {}
    for pin in pins:
        result = results.get(pin.package)
        facts[pin.package] = PackageFacts(
            found=after.installed.get(pin.package, ""),
            excluded=host in snapshot.excluded_hosts,
            held=pin.package in after.held,
            failure=(result.message or "no message") if result is not None and not result.ok else None,
            pending_reboot=pending.get(pin.package),
            unfinished=pin.package in after.unfinished,
        )
    packages = list(assess_packages(pins, facts))
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
    "PackageFacts",
    "assess_host",
    "assess_packages",
    "package_state",
    "reached",
    "reboot_attribution",
    "states_of",
    "summarise_fleet",
]
