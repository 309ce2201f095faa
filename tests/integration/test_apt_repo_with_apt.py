"""The machine's own apt and dpkg read the sandbox repository, as a guest would, in a plain directory.

No chroot and no sandbox host: apt's state, sources and dpkg database live under tmp_path (APT_CONFIG
points apt there, so nothing of the machine's /etc/apt applies), and dpkg installs with
``--root --force-script-chrootless``, which the packages' maintainer scripts honour through $DPKG_ROOT.
The sources are guest_sources_list() with the guest path replaced by where the repository was built.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloudops.sandbox.apt_repo import (
    BASE_PACKAGES,
    GUEST_REPO_PATH,
    UPDATES_SUITE,
    ensure_repository_at,
    guest_sources_list,
    publish_at,
)

pytestmark = pytest.mark.integration

TIMEOUT = 60


@dataclass(frozen=True)
class AptRoot:
    """A directory a guest's apt and dpkg would see, and the repository it lists."""

    repo: Path
    root: Path
    env: dict[str, str]

    def apt(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result.stdout + result.stderr

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()


@pytest.fixture
def apt_root(tmp_path: Path) -> AptRoot:
    repo = ensure_repository_at(tmp_path / "apt-repo", now=datetime.now(UTC))
    root, state = tmp_path / "root", tmp_path / "apt"
    for directory in (
        root / "var/lib/dpkg/info",
        root / "var/lib/dpkg/updates",
        root / "run",
        root / "etc",
        state / "etc/apt/apt.conf.d",
        state / "etc/apt/preferences.d",
        state / "etc/apt/sources.list.d",
        state / "var/lib/apt/lists/partial",
        state / "var/cache/apt/archives/partial",
        state / "log",
    ):
        directory.mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    (root / "var/lib/dpkg/available").touch()
    sources = tmp_path / "sources.list"
    sources.write_text(guest_sources_list().replace(f"file:{GUEST_REPO_PATH} ", f"file:{repo} "))
    config = tmp_path / "apt.conf"
    config.write_text(
        f'Dir "{state}/";\n'
        f'Dir::State::status "{root}/var/lib/dpkg/status";\n'
        f'Dir::Etc::SourceList "{sources}";\n'
        f'Dir::Log "{state}/log";\n'
        # tmp_path is private to root: apt's _apt user could not read the repository there.
        'APT::Sandbox::User "root";\n'
        f'DPkg::Options {{ "--root={root}"; "--force-script-chrootless"; "--log={root}/dpkg.log"; }};\n'
        'DPkg::Lock::Timeout "10";\n'
    )
    env = {**os.environ, "APT_CONFIG": str(config), "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    apt_root = AptRoot(repo=repo, root=root, env=env)
    apt_root.apt("apt-get", "-q", "update")
    return apt_root


def test_a_host_created_from_the_base_packages_sees_each_update_with_its_suite(apt_root: AptRoot) -> None:
    apt_root.apt("apt-get", "-y", "install", *BASE_PACKAGES)
    assert apt_root.read("/var/lib/demo-web/health") == "OK 2.0\n"
    assert (apt_root.root / "boot/vmlinuz-6.1.0-1-demo").is_file()
    assert not (apt_root.root / "run/reboot-required").exists(), "a first install asks for no reboot"
    simulated = apt_root.apt("apt-get", "-s", "upgrade")
    for line in (
        "Inst demo-kernel [6.1.0-1-demo] (6.1.0-2-demo CloudOps-Security:cloudops-security [all])",
        "Inst demo-openssl [1.0] (1.1 CloudOps-Security:cloudops-security [all])",
        "Inst demo-slow [1.0] (1.1 CloudOps-Updates:cloudops-updates [all])",
        "Inst demo-tools [1.0] (1.1 CloudOps-Updates:cloudops-updates [all])",
        "Inst demo-web [2.0] (2.1 CloudOps-Updates:cloudops-updates [all])",
    ):
        assert line in simulated
    policy = apt_root.apt("apt-cache", "policy")
    assert (
        "release o=CloudOps-Sandbox,a=cloudops-security,n=cloudops-security,l=CloudOps-Security,c=main,b=all"
        in policy
    )
    assert "a=cloudops-updates" in policy
    assert "a=cloudops-base" in policy


def test_a_held_package_is_kept_back(apt_root: AptRoot) -> None:
    apt_root.apt("apt-get", "-y", "install", *BASE_PACKAGES)
    subprocess.run(
        ["dpkg", f"--root={apt_root.root}", "--set-selections"],
        input="demo-tools hold\n",
        text=True,
        check=True,
        timeout=TIMEOUT,
    )
    simulated = apt_root.apt("apt-get", "-s", "upgrade")
    assert "The following packages have been kept back:\n  demo-tools" in simulated
    assert "Inst demo-tools" not in simulated


def test_the_kernel_asks_for_a_reboot_and_the_bad_web_update_fails_health_until_rolled_back(
    apt_root: AptRoot,
) -> None:
    apt_root.apt("apt-get", "-y", "install", *BASE_PACKAGES)
    apt_root.apt("apt-get", "-y", "install", "demo-kernel=6.1.0-2-demo", "demo-web=2.1")
    assert apt_root.read("/run/reboot-required") == ""
    assert apt_root.read("/run/reboot-required.pkgs") == "demo-kernel\n"
    assert sorted(p.name for p in (apt_root.root / "boot").iterdir()) == ["vmlinuz-6.1.0-2-demo"]
    assert apt_root.read("/var/lib/demo-web/health") == "FAIL: 2.1 regression\n"
    # Rollback: the base suite still has 2.0.
    apt_root.apt("apt-get", "-y", "--allow-downgrades", "install", "demo-web=2.0")
    assert apt_root.read("/var/lib/demo-web/health") == "OK 2.0\n"


def _postinst_sleeps(root: Path, seconds: str) -> bool:
    """Tell whether a `sleep <seconds>` of a maintainer script for `root` runs (dpkg sets DPKG_ROOT)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "cmdline").read_bytes() == f"sleep\0{seconds}\0".encode() and (
                f"DPKG_ROOT={root}\0".encode() in (proc / "environ").read_bytes()
            ):
                return True
        except OSError:
            continue
    return False


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (apt runs dpkg in a session of its own, so a process group is not enough)."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found.extend(children)
        frontier = children
    return found


def test_the_slow_postinst_holds_the_lock_and_power_loss_leaves_dpkg_interrupted(apt_root: AptRoot) -> None:
    apt_root.apt("apt-get", "-y", "install", *BASE_PACKAGES)
    (apt_root.root / "etc/demo-slow.seconds").write_text("120\n")
    slow = subprocess.Popen(
        ["apt-get", "-y", "install", "demo-slow=1.1"],
        env=apt_root.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _postinst_sleeps(apt_root.root, "120"):
            assert slow.poll() is None, f"apt-get exited {slow.returncode} before the postinst slept"
            assert time.monotonic() < deadline, "the demo-slow postinst did not start sleeping"
            time.sleep(0.1)
        blocked = apt_root.apt(
            "apt-get", "-o", "DPkg::Lock::Timeout=0", "-y", "install", "demo-tools=1.1", check=False
        )
        assert "Could not get lock" in blocked
        assert f"It is held by process {slow.pid} (apt-get)" in blocked
    finally:
        # Power loss in the middle of the postinst: apt-get, dpkg and the script all die at once.
        for pid in [slow.pid, *_descendants(slow.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        slow.wait(timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while _postinst_sleeps(apt_root.root, "120") and time.monotonic() < deadline:
            time.sleep(0.1)
    audit = subprocess.run(
        ["dpkg", f"--root={apt_root.root}", "--audit"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert "demo-slow" in audit.stdout
    assert "half configured" in audit.stdout
    refused = apt_root.apt("apt-get", "-y", "install", "demo-tools=1.1", check=False)
    assert "dpkg was interrupted, you must manually run 'dpkg --configure -a'" in refused
    (apt_root.root / "etc/demo-slow.seconds").write_text("0\n")
    subprocess.run(
        ["dpkg", f"--root={apt_root.root}", "--force-script-chrootless", "--configure", "-a"],
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    )
    status = apt_root.apt(
        "dpkg-query", f"--admindir={apt_root.root}/var/lib/dpkg", "-W", "-f=${Status} ${Version}", "demo-slow"
    )
    assert status == "install ok installed 1.1"


def test_a_published_version_reaches_apt_and_the_old_ones_stay_installable(apt_root: AptRoot) -> None:
    apt_root.apt("apt-get", "-y", "install", *BASE_PACKAGES)
    publish_at(apt_root.repo, "demo-web", "2.2", UPDATES_SUITE)
    apt_root.apt("apt-get", "-q", "update")
    policy = apt_root.apt("apt-cache", "policy", "demo-web")
    assert "Candidate: 2.2" in policy
    for version in ("2.2", "2.1", "2.0"):
        assert f"     {version} 500" in policy or f" *** {version} " in policy
    apt_root.apt("apt-get", "-y", "install", "demo-web=2.2")
    assert apt_root.read("/var/lib/demo-web/health") == "OK 2.2\n"
    apt_root.apt("apt-get", "-y", "--allow-downgrades", "install", "demo-web=2.1")
    assert apt_root.read("/var/lib/demo-web/health") == "FAIL: 2.1 regression\n"
