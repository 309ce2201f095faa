"""Integration tests of the sandbox's fleet hosts: real Debian systems, each in namespaces of its own.

They run against the main sandbox (brought up by the session fixture, reused when it runs). Tests that
change a host (a package installed, a fault injected) use the last hosts of the catalog and reset them
to their first-boot state before they end, so the estate is as `up` left it for the next test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from cloudops.sandbox import estate
from cloudops.sandbox.host_boot import BOOT_DELAY_FILE, NEVER_COME_BACK, HostPaths
from cloudops.sandbox.layout import SandboxLayout, read_env_file
from cloudops.sandbox.plan import EstatePlan, HostPlan, load_plan
from cloudops.sandbox.process import RUNNING, STOPPED

pytestmark = pytest.mark.integration

WAIT = 60.0  # every wait below is bounded by this


def _quiet(_: str) -> None:
    """Swallow progress lines."""


@pytest.fixture(scope="module")
def layout() -> SandboxLayout:
    estate.up(say=_quiet)
    return SandboxLayout.from_environment()


@pytest.fixture(scope="module")
def plan(layout: SandboxLayout) -> EstatePlan:
    return load_plan(layout.catalog_path)


@pytest.fixture(scope="module")
def connections(layout: SandboxLayout) -> dict[str, dict[str, Any]]:
    env = read_env_file(layout.env_file)
    prefix = "AIRFLOW_CONN_"
    return {k[len(prefix) :].lower(): json.loads(v) for k, v in env.items() if k.startswith(prefix)}


class Guest:
    """A shell on one sandbox host over SSH, the host key checked against the sandbox's known_hosts."""

    def __init__(self, layout: SandboxLayout, conn: dict[str, Any]) -> None:
        self.layout, self.conn = layout, conn

    def run(self, command: str, *, user: str | None = None, check: bool = True) -> str:
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.layout.ssh_dir / "known_hosts"))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.conn["host"],
                port=self.conn["port"],
                username=user or self.conn["login"],
                key_filename=self.conn["extra"]["key_file"],
                look_for_keys=False,
                allow_agent=False,
                timeout=5,
                banner_timeout=5,
                auth_timeout=5,
            )
            _, stdout, stderr = client.exec_command(command, timeout=60)
            out = stdout.read().decode()
            status = stdout.channel.recv_exit_status()
            if check and status != 0:
                raise AssertionError(
                    f"{command!r} on {self.conn['host']} exited {status}: {stderr.read().decode()}"
                )
            return out
        finally:
            client.close()

    def boot_id(self) -> str:
        return self.run("cat /proc/sys/kernel/random/boot_id").strip()

    def reachable(self) -> bool:
        try:
            self.run("true")
        except (OSError, paramiko.SSHException, EOFError):
            return False
        return True


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.3)


def _new_boot_id(guest: Guest, old: str) -> Callable[[], bool]:
    def changed() -> bool:
        try:
            return guest.boot_id() not in ("", old)
        except (OSError, paramiko.SSHException, EOFError):
            return False

    return changed


@pytest.fixture(scope="module")
def guests(
    layout: SandboxLayout, plan: EstatePlan, connections: dict[str, dict[str, Any]]
) -> dict[str, Guest]:
    return {h.name: Guest(layout, connections[h.ssh_conn_id]) for h in plan.hosts}


@pytest.fixture
def scratch_host(plan: EstatePlan, layout: SandboxLayout) -> Iterator[HostPlan]:
    """The catalog's last host, reset to its first-boot state (faults removed) after the test."""
    host = plan.hosts[-1]
    yield host
    for fault in HostPaths(layout.dir / "hosts" / host.name).control.glob("*"):
        fault.unlink()
    estate.reset_hosts(names=(host.name,), say=_quiet)


# -- isolation --------------------------------------------------------------------------------------


def test_every_host_is_a_system_of_its_own(plan: EstatePlan, guests: dict[str, Guest]) -> None:
    machine_boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    machine_uptime = float(Path("/proc/uptime").read_text().split()[0])
    boot_ids = set()
    for host in plan.hosts:
        guest = guests[host.name]
        out = guest.run(
            "hostname; cat /proc/sys/kernel/random/boot_id; cut -d' ' -f1 /proc/uptime; "
            "ps -e -o pid=,comm=; . /etc/os-release; echo $VERSION_CODENAME; id -un"
        ).split("\n")
        hostname, boot_id, uptime = out[0], out[1], float(out[2])
        assert hostname == host.name
        assert boot_id != machine_boot_id
        boot_ids.add(boot_id)
        assert uptime < machine_uptime
        processes = [line.split(None, 1) for line in out[3:] if line.strip() and line.strip()[0].isdigit()]
        assert ["1", "sandbox-init"] in [[p[0], p[1].strip()] for p in processes]
        assert len(processes) < 15, (
            processes
        )  # the host's own init, sshd and this session, nothing of the machine
        assert "bookworm" in out
        assert out[-2] == "ops"
        assert guest.run("sudo -n id -u").strip() == "0"
        assert guest.run("id -u", user="root").strip() == "0"
    assert len(boot_ids) == len(plan.hosts)


def test_a_package_installed_in_one_host_is_in_no_other(
    plan: EstatePlan, guests: dict[str, Guest], scratch_host: HostPlan
) -> None:
    import shutil
    import subprocess

    one = guests[scratch_host.name]
    other = guests[plan.hosts[0].name]
    assert one.run("dpkg-query -W -f='${Version}' demo-tools") == "1.0"
    one.run("apt-get update -qq && apt-get install -y -qq demo-tools=1.1 >/dev/null", user="root")
    assert one.run("dpkg-query -W -f='${Version}' demo-tools") == "1.1"
    assert other.run("dpkg-query -W -f='${Version}' demo-tools") == "1.0"
    if shutil.which("dpkg-query"):
        machine = subprocess.run(["dpkg-query", "-W", "demo-tools"], capture_output=True, check=False)
        assert machine.returncode != 0  # the machine's own dpkg database never saw it


def test_only_the_sandbox_repository_is_an_apt_source(guests: dict[str, Guest], plan: EstatePlan) -> None:
    from cloudops.sandbox.apt_repo import GUEST_REPO_PATH, guest_sources_list

    guest = guests[plan.hosts[0].name]
    assert guest.run("cat /etc/apt/sources.list") == guest_sources_list()
    assert guest.run("ls /etc/apt/sources.list.d | wc -l").strip() == "0"
    assert "ro" in guest.run(f"grep ' {GUEST_REPO_PATH} ' /proc/mounts").split()[3].split(",")


# -- reboot -----------------------------------------------------------------------------------------


def test_reboot_gives_a_new_boot_id_an_empty_run_and_the_newest_kernel(
    guests: dict[str, Guest], scratch_host: HostPlan
) -> None:
    guest = guests[scratch_host.name]
    assert guest.run("cat /proc/sys/kernel/osrelease").strip() == "6.1.0-1-demo"
    guest.run("apt-get update -qq && apt-get install -y -qq demo-kernel=6.1.0-2-demo >/dev/null", user="root")
    assert guest.run("test -e /run/reboot-required && echo yes").strip() == "yes"
    # Installed but not running until the host boots again, as on a real host.
    assert guest.run("cat /proc/sys/kernel/osrelease").strip() == "6.1.0-1-demo"
    before = guest.boot_id()
    assert guest.run("sudo shutdown -r 0 'Reboot initiated by a test'; echo rc=$?").strip() == "rc=0"
    _wait_for(_new_boot_id(guest, before), "the host back with a new boot id")
    after = guest.run("cut -d' ' -f1 /proc/uptime; ls -A /run; cat /proc/sys/kernel/osrelease").split()
    assert float(after[0]) < WAIT
    assert "reboot-required" not in after
    assert after[-1] == "6.1.0-2-demo"


def test_a_host_that_never_comes_back_until_the_fault_is_lifted(
    layout: SandboxLayout, guests: dict[str, Guest], scratch_host: HostPlan
) -> None:
    guest = guests[scratch_host.name]
    paths = HostPaths(layout.dir / "hosts" / scratch_host.name)
    (paths.control / NEVER_COME_BACK).write_text("test\n")
    (paths.control / BOOT_DELAY_FILE).write_text("0.5\n")
    before = guest.boot_id()
    guest.run("reboot", user="root")
    _wait_for(lambda: paths.read_state().get("state") == "held", "the supervisor holding the host down")
    assert not guest.reachable()
    assert paths.read_state()["because"] == f"{paths.control / NEVER_COME_BACK} exists"
    (paths.control / NEVER_COME_BACK).unlink()
    _wait_for(_new_boot_id(guest, before), "the host back once the fault is lifted")


def test_slow_boot_waits_the_delay_of_the_control_file(
    layout: SandboxLayout, guests: dict[str, Guest], scratch_host: HostPlan
) -> None:
    guest = guests[scratch_host.name]
    paths = HostPaths(layout.dir / "hosts" / scratch_host.name)
    (paths.control / BOOT_DELAY_FILE).write_text("4.5\n")
    before = guest.boot_id()
    guest.run("sudo reboot")
    _wait_for(lambda: paths.read_state().get("state") == "rebooting", "the supervisor waiting to boot")
    assert paths.read_state()["boot_delay_seconds"] == 4.5
    _wait_for(_new_boot_id(guest, before), "the slow host back")


def test_one_host_stops_and_starts_while_the_others_run(
    plan: EstatePlan, guests: dict[str, Guest], scratch_host: HostPlan
) -> None:
    guest = guests[scratch_host.name]
    before = guest.boot_id()
    estate.stop_hosts((scratch_host.name,), say=_quiet)
    states = {row.component: row.state for row in estate.status()}
    assert states[f"host-{scratch_host.name}"] == STOPPED
    assert {states[f"host-{h.name}"] for h in plan.hosts if h != scratch_host} == {RUNNING}
    assert not guest.reachable()
    assert guests[plan.hosts[0].name].reachable()
    estate.start_hosts((scratch_host.name,), say=_quiet)
    assert guest.boot_id() != before


def test_a_host_powered_off_from_inside_stays_down_until_started(
    layout: SandboxLayout, guests: dict[str, Guest], scratch_host: HostPlan
) -> None:
    guest = guests[scratch_host.name]
    paths = HostPaths(layout.dir / "hosts" / scratch_host.name)
    before = guest.boot_id()
    guest.run("sudo shutdown -h now")
    _wait_for(lambda: paths.read_state().get("state") == "powered off", "the host powered off")
    assert not guest.reachable()
    estate.start_hosts((scratch_host.name,), say=_quiet)
    assert guest.boot_id() != before


def test_reset_brings_a_host_back_to_its_first_boot_state_with_the_same_key(
    layout: SandboxLayout,
    connections: dict[str, dict[str, Any]],
    guests: dict[str, Guest],
    scratch_host: HostPlan,
) -> None:
    guest = guests[scratch_host.name]
    guest.run(
        "apt-get update -qq && apt-get install -y -qq demo-openssl=1.1 >/dev/null; touch /root/marker",
        user="root",
    )
    estate.reset_hosts(names=(scratch_host.name,), say=_quiet)
    # The same pinned key still verifies (Guest checks known_hosts), and the changes are gone.
    assert guest.run("dpkg-query -W -f='${Version}' demo-openssl") == "1.0"
    assert guest.run("test -e /root/marker && echo kept || echo gone", user="root").strip() == "gone"
    assert (
        connections[scratch_host.ssh_conn_id]["extra"]["host_key"].split()[1]
        in (layout.ssh_dir / "known_hosts").read_text()
    )


def test_nothing_of_a_host_is_mounted_in_the_machines_namespace(layout: SandboxLayout) -> None:
    from cloudops.sandbox.hosts import sandbox_mounts

    assert sandbox_mounts(layout) == []


def test_more_hosts_on_request_get_connections_and_a_catalog_of_their_own(layout: SandboxLayout) -> None:
    from cloudops.catalog import load_catalog_file

    try:
        catalog_path = estate.add_hosts("extra", 2, say=_quiet)
        assert catalog_path.is_relative_to(layout.dir)
        (fleet,) = load_catalog_file(catalog_path).fleets
        env = read_env_file(layout.env_file)
        for host in fleet.hosts:
            conn = json.loads(env[f"AIRFLOW_CONN_{host.ssh_conn_id.upper()}"])
            assert Guest(layout, conn).run("hostname").strip() == host.name
        rows = {row.component: row.state for row in estate.status()}
        assert rows["host-extra-1"] == rows["host-extra-2"] == RUNNING
    finally:
        estate.remove_hosts("extra", say=_quiet)
    assert "host-extra-1" not in {row.component for row in estate.status()}
    assert "SANDBOX_SSH_EXTRA_1" not in layout.env_file.read_text()
