"""apt, dpkg and host output as the wave reads it: recorded from Debian 12 (this machine and the sandbox)."""

from __future__ import annotations

import pytest

from cloudops.patching import apt_output
from cloudops.patching.model import Classification

pytestmark = pytest.mark.unit

# `apt-get -s -q --ignore-hold dist-upgrade` on a sandbox host, and on this machine (Debian's archive).
LIBGCRYPT = (
    "Inst libgcrypt20-dev [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, "
    "Debian-Security:12/oldstable-security [amd64]) []"
)
SIMULATION = f"""\
Reading package lists...
Building dependency tree...
Calculating upgrade...
The following packages will be upgraded:
  demo-kernel demo-openssl demo-tools demo-web
4 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.
Inst demo-kernel [6.1.0-1-demo] (6.1.0-2-demo CloudOps-Security:cloudops-security [all])
Inst demo-openssl [1.0] (1.1 CloudOps-Security:cloudops-security [all])
Inst demo-tools [1.0] (1.1 CloudOps:cloudops-updates [all])
Inst demo-web [2.0] (2.1 CloudOps:cloudops-updates [all])
{LIBGCRYPT}
Inst bash [5.2.15-2+b8] (5.2.15-2+b13 Debian:12.15/oldstable [amd64])
Inst newpkg (1.0 CloudOps:cloudops-updates [all])
Conf demo-kernel (6.1.0-2-demo CloudOps-Security:cloudops-security [all])
Inst $(reboot) [1.0] (2.0 Evil:evil [all])
Inst demo-evil [1.0] (;rm -rf / Evil:evil [all])
Remv demo-old [0.9]
"""


def test_simulation_reads_every_valid_inst_line_with_its_classification() -> None:
    updates = {u.package: u for u in apt_output.parse_simulation(SIMULATION)}
    assert set(updates) == {
        "bash",
        "demo-kernel",
        "demo-openssl",
        "demo-tools",
        "demo-web",
        "libgcrypt20-dev",
        "newpkg",
    }
    assert updates["demo-openssl"].installed == "1.0"
    assert updates["demo-openssl"].candidate == "1.1"
    assert updates["demo-openssl"].suite == "cloudops-security"
    assert updates["demo-openssl"].classification is Classification.SECURITY
    assert updates["demo-web"].classification is Classification.UPDATES
    # Published in both the point release and security: a security fix.
    assert updates["libgcrypt20-dev"].classification is Classification.SECURITY
    assert updates["bash"].classification is Classification.OTHER
    assert updates["bash"].suite == "oldstable"
    assert updates["newpkg"].installed == ""


def test_simulation_never_takes_a_name_or_version_that_could_be_a_command() -> None:
    names = {u.package for u in apt_output.parse_simulation(SIMULATION)}
    assert "$(reboot)" not in names
    assert "demo-evil" not in names


def test_removals_are_seen() -> None:
    assert apt_output.parse_removals(SIMULATION) == ("demo-old",)


def test_holds_and_installed_versions() -> None:
    assert apt_output.parse_holds("demo-tools\nlibc6:amd64\n\n`id`\n") == frozenset({"demo-tools", "libc6"})
    installed = apt_output.parse_installed(
        "demo-web\t2.0\tii \ndemo-gone\t1.0\trc \ndemo-slow\t1.1\tiU \ndemo-tools\t1.0\thi \n"
        "broken line\nlibc6:amd64\t2.36-9\tii \n"
    )
    assert installed == {"demo-web": "2.0", "demo-slow": "1.1", "demo-tools": "1.0", "libc6": "2.36-9"}


def test_unfinished_packages_are_the_ones_dpkg_left_half_way() -> None:
    listing = (
        "demo-web\t2.0\tii \ndemo-slow\t1.1\tiU \ndemo-kernel\t6.1.0-2-demo\tiF \n"
        "demo-half\t1.0\tiH \ndemo-trig\t1.0\tiW \ndemo-gone\t1.0\trc \n`id`\t1\tiF \n"
    )
    assert apt_output.parse_unfinished(listing) == frozenset({"demo-slow", "demo-kernel", "demo-half"})
    # Half-installed packages are not on disk at any version; the others still show theirs.
    assert "demo-half" not in apt_output.parse_installed(listing)
    assert apt_output.parse_installed(listing)["demo-kernel"] == "6.1.0-2-demo"


def test_newest_kernel_compares_versions_not_strings() -> None:
    listing = "config-6.1.0-2-demo\nvmlinuz-6.1.0-9-demo\nvmlinuz-6.1.0-10-demo\nSystem.map\n"
    assert apt_output.newest_kernel(listing) == "6.1.0-10-demo"
    assert apt_output.newest_kernel("") == ""


@pytest.mark.parametrize(
    ("text", "pid", "process", "described"),
    [
        (
            "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 85 (apt-get)\n"
            "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), "
            "is another process using it?",
            85,
            "apt-get",
            "/var/lib/dpkg/lock-frontend is held by process 85 (apt-get)",
        ),
        (
            "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 0\n",
            0,
            "",
            "/var/lib/dpkg/lock-frontend is held by process 0, outside this host's process namespace",
        ),
        ("dpkg: error: dpkg frontend lock was locked by another process with pid 4242\n", 4242, "", None),
    ],
)
def test_lock_holder_is_named(text: str, pid: int, process: str, described: str | None) -> None:
    holder = apt_output.parse_lock_holder(text)
    assert holder is not None
    assert (holder.pid, holder.process) == (pid, process)
    if described:
        assert holder.describe() == described


def test_no_lock_holder_in_other_errors() -> None:
    assert apt_output.parse_lock_holder("E: Unable to locate package demo-nope") is None


def test_dpkg_audit_names_half_configured_packages() -> None:
    audit = (
        "The following packages are only half configured, probably due to problems\n"
        "configuring them the first time.  The configuration should be retried using\n"
        "dpkg --configure <package> or the configure menu option in dselect:\n"
        " demo-slow            sandbox package whose postinst holds the dpkg lock for a while\n"
    )
    assert apt_output.audit_problems(audit) == ("demo-slow",)
    assert apt_output.audit_problems("") == ()
    assert apt_output.dpkg_interrupted(
        "E: dpkg was interrupted, you must manually run 'dpkg --configure -a' to correct the problem."
    )


def test_unknown_pins_are_named() -> None:
    text = "E: Unable to locate package demo-nope\nE: Version '9.9' for 'demo-web' was not found\n"
    assert apt_output.unknown_pins(text) == ("demo-nope", "demo-web=9.9")


def test_output_is_bounded() -> None:
    big = "x" * (apt_output.MAX_OUTPUT_CHARS + 10)
    assert apt_output.bounded(big).endswith("[... 10 more characters dropped]")
    assert apt_output.excerpt("a" * 5000, 100).startswith("[... 4900 earlier characters dropped]")


def test_holds_read_from_dpkg_status_are_the_hold_selections() -> None:
    listing = "demo-web\t2.0\thi \ndemo-tools\t1.0\tii \ndemo-kernel\t6.1.0-1-demo\thF \nbad\n"
    assert apt_output.parse_selection_holds(listing) == frozenset({"demo-web", "demo-kernel"})
