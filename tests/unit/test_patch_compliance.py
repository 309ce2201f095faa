"""The one compliance rule (``cloudops.patching.compliance.package_state``): every state, its edge cases,
reboot attribution per package, and the two places that use it (a wave's host outcome and
``cloudops patch status``'s ``assess_host``) giving the same answer for the same facts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from cloudops.patching.compliance import (
    InstallResult,
    PackageFacts,
    assess_host,
    assess_packages,
    package_state,
    reached,
    reboot_attribution,
    states_of,
    summarise_fleet,
)
from cloudops.patching.model import Classification, ComplianceState, HostScan, PackagePin
from cloudops.patching.snapshot import Snapshot

pytestmark = pytest.mark.unit

S = ComplianceState
OPENSSL = PackagePin("demo-openssl", "1.1", "1.0", Classification.SECURITY)
KERNEL = PackagePin("demo-kernel", "6.1.0-2-demo", "6.1.0-1-demo", Classification.SECURITY)
WEB = PackagePin("demo-web", "2.1", "2.0", Classification.UPDATES)


@pytest.mark.parametrize(
    ("facts", "state", "reason"),
    [
        (PackageFacts(found="1.1"), S.INSTALLED, "1.1 installed"),
        (PackageFacts(found="1.1+deb12u1"), S.INSTALLED, "newer than the pinned 1.1"),
        (PackageFacts(found="1:0.9"), S.INSTALLED, "newer than the pinned 1.1"),  # an epoch wins
        (
            PackageFacts(found="1.1", pending_reboot="named"),
            S.INSTALLED_PENDING_REBOOT,
            "pending for it: named",
        ),
        (PackageFacts(found="1.0"), S.MISSING, "1.0 installed, 1.1 wanted"),
        (PackageFacts(found="1.1~rc1"), S.MISSING, "1.1~rc1 installed"),  # a tilde sorts before
        (PackageFacts(found=""), S.NOT_APPLICABLE, "not installed on this host"),
        (PackageFacts(found="1.0", held=True), S.HELD, "held at 1.0"),
        (PackageFacts(found="1.0", rolled_back=True, held=True), S.HELD, "rolled 1.1 back to 1.0"),
        (PackageFacts(found="1.0", failure="install: rc 100"), S.FAILED, "install: rc 100"),
        (PackageFacts(found="", failure="install: rc 100"), S.FAILED, "not installed, 1.1 wanted"),
        (PackageFacts(found="1.1", excluded=True), S.EXCLUDED, "excluded"),
        (PackageFacts(found="1.1", unfinished=True), S.FAILED, "dpkg --configure -a is due"),
    ],
)
def test_every_state_follows_from_the_facts_by_one_rule(
    facts: PackageFacts, state: ComplianceState, reason: str
) -> None:
    got, why = package_state(OPENSSL, facts)
    assert got == state
    assert reason in why


def test_the_rule_orders_its_cases() -> None:
    # Excluded beats everything; an unfinished dpkg is never INSTALLED even at the pinned version.
    assert package_state(OPENSSL, PackageFacts(found="1.0", excluded=True, failure="x"))[0] == S.EXCLUDED
    assert (
        package_state(OPENSSL, PackageFacts(found="1.1", unfinished=True, pending_reboot="x"))[0] == S.FAILED
    )
    # Installed beats held and failed: a held package at its version, or a host whose health
    # failed after installing, is INSTALLED (compliance is not health).
    assert package_state(OPENSSL, PackageFacts(found="1.1", held=True))[0] == S.INSTALLED
    assert package_state(OPENSSL, PackageFacts(found="1.1", failure="health gate: FAIL"))[0] == S.INSTALLED
    # Held explains why the wave did not try it: HELD, not FAILED, not NOT_APPLICABLE.
    assert package_state(OPENSSL, PackageFacts(found="1.0", held=True, failure="x"))[0] == S.HELD
    assert package_state(OPENSSL, PackageFacts(found="", held=True))[0] == S.HELD


def test_unparsable_versions_count_only_when_equal() -> None:
    assert reached("1.1", "1.1")
    assert not reached("", "1.1")
    assert reached("weird version", "weird version")
    assert not reached("weird version", "1.1")


def test_a_reboot_is_attributed_per_package_never_to_all() -> None:
    packages = ["demo-openssl", "demo-kernel", "demo-web"]
    named = reboot_attribution(packages, flag=True, flagged={"demo-kernel"}, installed_since_boot=packages)
    assert set(named) == {"demo-kernel"}  # the list names it: the others are not pending
    unnamed = reboot_attribution(packages, flag=True, installed_since_boot={"demo-openssl"})
    assert set(unnamed) == {"demo-openssl"}  # no list: only what was installed since the boot
    assert "installed after the boot" in unnamed["demo-openssl"]
    assert reboot_attribution(packages, flag=False, installed_since_boot=packages) == {}
    stale = reboot_attribution(
        packages, flag=False, running_kernel="6.1.0-1-demo", installed_kernel="6.1.0-2-demo"
    )
    assert stale == {"demo-kernel": "kernel 6.1.0-2-demo is installed but 6.1.0-1-demo is running"}
    # Unknown kernels blame nothing.
    assert reboot_attribution(packages, flag=False, running_kernel="", installed_kernel="6.1.0-2-demo") == {}


def test_not_applicable_is_never_counted_non_compliant() -> None:
    packages = assess_packages([OPENSSL, WEB], {"demo-openssl": PackageFacts(found="1.1")})
    assert states_of(packages) == {"demo-openssl": "INSTALLED", "demo-web": "NOT_APPLICABLE"}
    snapshot = Snapshot("web", date(2026, 12, 2), {"web-1": (OPENSSL, WEB)}, (), ())
    host = assess_host(snapshot, HostScan("web-1", (), {"demo-openssl": "1.1"}))
    assert host.compliant
    assert summarise_fleet([host]).percent_compliant == 100.0


def test_patch_status_and_the_wave_agree_on_the_same_facts() -> None:
    """assess_host (patch status, the runbook's report) and the wave (facts it gathered) give one answer."""
    boot = datetime(2026, 12, 2, 19, 0, tzinfo=UTC)
    scan = HostScan(
        "web-1",
        (),
        {"demo-openssl": "1.1+deb12u1", "demo-kernel": "6.1.0-2-demo", "demo-web": "2.0"},
        held=frozenset({"demo-web"}),
        reboot_required=True,
        running_kernel="6.1.0-2-demo",
        installed_kernel="6.1.0-2-demo",
    )
    snapshot = Snapshot("web", date(2026, 12, 2), {"web-1": (OPENSSL, KERNEL, WEB)}, (), ())
    installs = [
        InstallResult("demo-kernel", True, boot + timedelta(minutes=5)),
        InstallResult("demo-openssl", True, boot - timedelta(minutes=5)),
    ]
    status = {p.package: p.state for p in assess_host(snapshot, scan, installs, boot).packages}
    pending = reboot_attribution(
        ["demo-openssl", "demo-kernel", "demo-web"], flag=True, installed_since_boot={"demo-kernel"}
    )
    wave = assess_packages(
        [OPENSSL, KERNEL, WEB],
        {
            "demo-openssl": PackageFacts(found="1.1+deb12u1", pending_reboot=pending.get("demo-openssl")),
            "demo-kernel": PackageFacts(found="6.1.0-2-demo", pending_reboot=pending.get("demo-kernel")),
            "demo-web": PackageFacts(found="2.0", held=True),
        },
    )
    assert (
        status
        == {p.package: p.state for p in wave}
        == {
            "demo-openssl": S.INSTALLED,  # newer than the pin, installed before the boot
            "demo-kernel": S.INSTALLED_PENDING_REBOOT,
            "demo-web": S.HELD,
        }
    )


def test_a_half_configured_package_is_failed_in_patch_status_too() -> None:
    snapshot = Snapshot("web", date(2026, 12, 2), {"web-1": (OPENSSL,)}, (), ())
    scan = HostScan("web-1", (), {"demo-openssl": "1.1"}, unfinished=frozenset({"demo-openssl"}))
    host = assess_host(snapshot, scan)
    assert [p.state for p in host.packages] == [S.FAILED]
    assert not host.compliant
