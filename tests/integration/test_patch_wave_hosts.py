"""Patch waves against the sandbox's Debian hosts (fleet app): the breaking update, rollback, resume, faults.

Each test starts from the hosts' first-boot state (`cloudops sandbox hosts reset`), so the order of tests
does not matter. Library level (no Airflow): :func:`cloudops.patching.wave_run.run_wave`.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudops.catalog import load_catalog_file
from cloudops.errors import InvalidInputError
from cloudops.fleet.ssh import CommandResult
from cloudops.patching.apt_host import (
    AptHost,
    HealthCheck,
    HealthGate,
    HostUnreachable,
    RebootBounds,
    StepLog,
    ssh_runner,
)
from cloudops.patching.model import PackagePin
from cloudops.patching.wave_run import (
    DONE,
    FAILED,
    NOT_STARTED,
    SKIPPED,
    STOP_NOW,
    STOPPED,
    WaveHost,
    WaveSettings,
    resumable_done_hosts,
    run_wave,
    ssh_host,
)
from cloudops.runbooks.patch_wave import FleetTarget, plan_wave

pytestmark = pytest.mark.integration

CATALOG = Path(__file__).resolve().parents[2] / "runbooks" / "sandbox.yaml"

FLEET = "app"
HOSTS = [WaveHost(f"app-{i}", f"sandbox_ssh_app_{i}") for i in (1, 2, 3)]
BATCHES = [HOSTS[:1], HOSTS[1:]]
HEALTH = HealthGate(
    (HealthCheck("cat /var/lib/demo-web/health", expect_output="OK", timeout_seconds=10),), 1.0
)
SETTINGS = WaveSettings(
    health=HEALTH, reboot_bounds=RebootBounds(60, 0.5, 4, 2), lock_timeout=5, privilege="sudo"
)
SECURITY = (
    PackagePin("demo-openssl", "1.1", "1.0", "security"),  # type: ignore[arg-type]
    PackagePin("demo-kernel", "6.1.0-2-demo", "6.1.0-1-demo", "security"),  # type: ignore[arg-type]
)
BREAKING = PackagePin("demo-web", "2.1", "2.0", "updates")  # type: ignore[arg-type]
SLOW = PackagePin("demo-slow", "1.1", "1.0", "updates")  # type: ignore[arg-type]
SLOW_SECONDS = 12  # demo-slow's postinst: long enough for the cutoff to pass during the install
CUTOFF_AHEAD = timedelta(seconds=6)  # reading state and pre-flight take about 1 s here


def _quiet(_: str) -> None:
    pass


@pytest.fixture
def fleet(sandbox_env: dict[str, str]) -> Iterator[list[WaveHost]]:
    from cloudops.sandbox import estate

    estate.reset_hosts(fleet=FLEET, say=_quiet)
    yield HOSTS
    estate.start_hosts(tuple(h.name for h in HOSTS), say=_quiet)


def host(name: str) -> AptHost:
    return ssh_host(next(h for h in HOSTS if h.name == name), "sudo")


def sh(name: str, command: str, timeout: int = 30) -> str:
    result = host(name).run("test set-up", command, timeout)
    assert result.exit_status == 0, f"{name}: {command}: {result.stderr}"
    return result.stdout


def test_breaking_update_halts_at_the_canary_rolls_back_and_resume_completes(fleet: list[WaveHost]) -> None:
    before = {h.name: host(h.name).boot_id() for h in fleet}
    snapshot = {h.name: (*SECURITY, BREAKING) for h in fleet}

    halted = run_wave(BATCHES, snapshot, SETTINGS)

    assert halted.halted
    assert "batch 0: 1 of 1 host(s) failed" in halted.reason
    canary = halted.hosts["app-1"]
    assert canary.status == FAILED
    assert canary.step == "health gate"
    assert "FAIL: 2.1 regression" in canary.error
    assert "rolled back and held demo-web: healthy again" in canary.error
    assert canary.rolled_back == ["demo-web"]
    assert canary.compliance == {"demo-openssl": "INSTALLED", "demo-kernel": "INSTALLED", "demo-web": "HELD"}
    assert host("app-1").installed_versions()["demo-web"] == "2.0"
    assert "demo-web" in host("app-1").holds()
    # The rest untouched: same boot, base versions, nothing recorded as started.
    for name in ("app-2", "app-3"):
        assert halted.hosts[name].status == NOT_STARTED
        assert halted.hosts[name].compliance["demo-web"] == "MISSING"
        assert host(name).boot_id() == before[name]
        assert host(name).installed_versions()["demo-openssl"] == "1.0"

    # Resume with the breaking package rejected: the same snapshot without it, the canary skipped.
    done = resumable_done_hosts(halted.as_record(), rejected={"demo-web"})
    assert done == {"app-1"}
    resumed = run_wave(BATCHES, {h.name: SECURITY for h in fleet}, SETTINGS, done_hosts=done)

    assert resumed.succeeded, resumed.reason
    assert resumed.batches[0].decision == "skipped"
    assert resumed.hosts["app-1"].status == SKIPPED
    for name in ("app-2", "app-3"):
        outcome = resumed.hosts[name]
        assert outcome.status == DONE
        assert outcome.rebooted
        assert outcome.boot_id_after != before[name]
        assert outcome.compliance == {"demo-openssl": "INSTALLED", "demo-kernel": "INSTALLED"}
        assert outcome.running_kernel == outcome.installed_kernel == "6.1.0-2-demo"
        assert set(outcome.timings) >= {"install", "reboot", "health"}
    assert resumed.batches[1].seconds > 0
    # Hosts of a batch run side by side: the wall time of a batch is about its slowest host's.
    assert resumed.ideal_seconds <= resumed.seconds


def test_held_package_is_reported_held_and_an_unknown_package_fails_before_anything_changes(
    fleet: list[WaveHost],
) -> None:
    sh("app-2", "sudo -n apt-mark hold demo-tools")
    tools = PackagePin("demo-tools", "1.1", "1.0", "updates")  # type: ignore[arg-type]
    unknown = PackagePin("demo-nope", "1.0", "", "updates")  # type: ignore[arg-type]
    settings = WaveSettings(health=HEALTH, reboot="never", max_failures_per_batch=1, failure_budget=1)

    result = run_wave([HOSTS[1:]], {"app-2": (tools,), "app-3": (tools, unknown)}, settings)

    held = result.hosts["app-2"]
    assert held.status == DONE
    assert held.compliance == {"demo-tools": "HELD"}
    assert any("demo-tools is held" in note for note in held.notes)
    bad = result.hosts["app-3"]
    assert bad.status == FAILED
    assert bad.step == "install (simulate)"
    assert "the repository has no demo-nope" in bad.error
    assert not bad.changed
    assert host("app-3").installed_versions()["demo-tools"] == "1.0"
    assert "1 failed host(s) within the batch limit of 1" in result.batches[0].reason


def test_dpkg_lock_holder_is_named_and_an_interrupted_dpkg_is_repaired(fleet: list[WaveHost]) -> None:
    # Another apt run holds the lock: demo-slow's postinst sleeps 30 s while dpkg holds it.
    sh("app-1", "echo 30 | sudo -n tee /etc/demo-slow.seconds >/dev/null")
    sh(
        "app-1",
        "sudo -n sh -c "
        + shlex.quote(
            "nohup env DEBIAN_FRONTEND=noninteractive apt-get -y install --reinstall demo-slow "
            ">/tmp/slow.log 2>&1 &"
        ),
    )
    deadline = time.monotonic() + 20
    while "demo-slow" not in sh("app-1", "ps -eo args") and time.monotonic() < deadline:
        time.sleep(0.5)
    result = run_wave([HOSTS[:1]], {"app-1": SECURITY[:1]}, SETTINGS)
    outcome = result.hosts["app-1"]
    assert outcome.status == FAILED
    assert outcome.step.startswith("pre-flight")
    assert "the dpkg lock stayed held for 5s" in outcome.error
    assert "is held by process" in outcome.error
    assert "(apt-get)" in outcome.error or "(dpkg)" in outcome.error
    assert not outcome.changed

    # Power loss during the postinst: the host reboots with demo-slow half configured.
    apt = host("app-1")
    apt.reboot(StepLog(), RebootBounds(60, 0.5, 4, 0))
    assert "demo-slow" in sh("app-1", "sudo -n dpkg --audit || true")
    sh("app-1", "sudo -n rm -f /etc/demo-slow.seconds")
    repaired = run_wave([HOSTS[:1]], {"app-1": SECURITY[:1]}, SETTINGS)
    outcome = repaired.hosts["app-1"]
    assert outcome.status == DONE, outcome.error
    assert any("dpkg was interrupted (demo-slow)" in note and "repaired" in note for note in outcome.notes)
    assert outcome.compliance == {"demo-openssl": "INSTALLED"}


def test_a_host_that_never_comes_back_fails_its_batch_within_the_bound(fleet: list[WaveHost]) -> None:
    from cloudops.sandbox.host_boot import NEVER_COME_BACK
    from cloudops.sandbox.hosts import host_paths
    from cloudops.sandbox.layout import SandboxLayout

    control = host_paths(SandboxLayout.from_environment(), "app-2").control
    (control / NEVER_COME_BACK).touch()
    try:
        settings = WaveSettings(health=HEALTH, reboot_bounds=RebootBounds(8, 0.5, 2, 1), privilege="sudo")
        started = time.monotonic()
        result = run_wave([HOSTS[1:]], {"app-2": SECURITY, "app-3": SECURITY}, settings)
        assert time.monotonic() - started < 60
    finally:
        (control / NEVER_COME_BACK).unlink(missing_ok=True)
        # Let it boot before the next test resets it (bounded by the reboot wait).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                host("app-2").boot_id()
                break
            except HostUnreachable:
                time.sleep(1)
    down = result.hosts["app-2"]
    assert down.status == FAILED
    assert down.step == "reboot"
    assert "did not come back with a new boot id within 8s" in down.error
    assert down.changed
    assert result.hosts["app-3"].status == DONE
    assert result.halted
    assert "app-2: FAILED at reboot" in result.reason


def test_an_unreachable_host_is_named_and_a_wave_past_its_cutoff_starts_nothing(
    fleet: list[WaveHost],
) -> None:
    from cloudops.sandbox import estate

    estate.stop_hosts(("app-3",), say=_quiet)
    with pytest.raises(HostUnreachable, match=r"host app-3: scan \(apt-get update\)"):
        host("app-3").scan()
    # The runbook's plan: excluded and reported (the sandbox's policy), or refused.
    catalog = load_catalog_file(CATALOG)
    target = FleetTarget(str(CATALOG), catalog.estate, FLEET)
    plan = plan_wave(target, catalog, now=datetime.now(UTC))
    assert set(plan.unreachable) == {"app-3"}
    assert "host app-3: scan" in plan.unreachable["app-3"]
    assert all("app-3" not in batch for batch in plan.batches)
    fleet_model = next(f for f in catalog.fleets if f.name == FLEET)
    assert fleet_model.patching is not None
    refusing = fleet_model.patching.model_copy(update={"unreachable": "refuse"})
    strict = catalog.model_copy(
        update={
            "fleets": [
                f.model_copy(update={"patching": refusing}) if f.name == FLEET else f for f in catalog.fleets
            ]
        }
    )
    with pytest.raises(InvalidInputError, match=r"refuses a wave with unreachable hosts: host app-3: scan"):
        plan_wave(target, strict, now=datetime.now(UTC))

    boot = host("app-1").boot_id()
    past = WaveSettings(health=HEALTH, cutoff=datetime.now(UTC) - timedelta(minutes=1))
    result = run_wave(BATCHES, {"app-1": SECURITY}, past)
    assert result.halted
    assert result.batches[0].decision == "stop"
    assert "past the window's cutoff" in result.reason
    assert result.hosts["app-1"].status == NOT_STARTED
    assert host("app-1").boot_id() == boot
    assert host("app-1").installed_versions()["demo-openssl"] == "1.0"


def test_stop_now_stops_a_running_batch_before_its_reboot_and_reports_what_each_host_was_left_in(
    fleet: list[WaveHost],
) -> None:
    # app-2 and app-3 install demo-slow (its postinst sleeps) and the kernel (it asks for a reboot);
    # the cutoff passes while they install: both must stop before their reboot, app-1 never start.
    for name in ("app-2", "app-3"):
        sh(name, f"echo {SLOW_SECONDS} | sudo -n tee /etc/demo-slow.seconds >/dev/null")
    boots = {h.name: host(h.name).boot_id() for h in fleet}
    cutoff = datetime.now(UTC) + CUTOFF_AHEAD
    settings = WaveSettings(
        health=HEALTH,
        reboot_bounds=RebootBounds(60, 0.5, 4, 2),
        lock_timeout=30,
        cutoff=cutoff,
        cutoff_behaviour=STOP_NOW,
    )
    snapshot = {h.name: (SECURITY[1], SLOW) for h in fleet}

    result = run_wave([HOSTS[1:], HOSTS[:1]], snapshot, settings)

    assert result.halted
    assert not result.succeeded
    assert result.batches[0].decision == "stop"
    assert len(result.batches) == 1, "no batch starts after the cutoff"
    for name in ("app-2", "app-3"):
        outcome = result.hosts[name]
        assert outcome.status == STOPPED, outcome.summary()
        assert outcome.step == "reboot"
        assert outcome.timings["install"] >= SLOW_SECONDS  # it was installing when the cutoff passed
        assert outcome.changed
        assert not outcome.rebooted
        assert outcome.compliance == {"demo-kernel": "INSTALLED_PENDING_REBOOT", "demo-slow": "INSTALLED"}
        assert "/run/reboot-required.pkgs names it" in outcome.compliance_reasons["demo-kernel"]
        assert f"stopped before reboot: the window's cutoff {cutoff.isoformat()} passed" in outcome.error
        assert host(name).boot_id() == boots[name], "it did not reboot"
        assert host(name).installed_versions()["demo-kernel"] == "6.1.0-2-demo"
        line = (
            f"{name}: STOPPED before reboot (packages changed: demo-kernel INSTALLED_PENDING_REBOOT, "
            "demo-slow INSTALLED)"
        )
        assert line in result.reason
        assert line in result.left_behind()
    assert "cutoff_behaviour stop_now" in result.reason
    assert "1 host(s) of later batches not started" in result.reason
    assert result.hosts["app-1"].status == NOT_STARTED
    assert "app-1: not started (untouched)" in result.left_behind()
    assert host("app-1").boot_id() == boots["app-1"]
    assert host("app-1").installed_versions()["demo-slow"] == "1.0"

    # The next window: a resume retries the stopped hosts; nothing is left to install, so they
    # take the reboot they stopped before, and pass health.
    assert resumable_done_hosts(result.as_record()) == frozenset()
    resumed = run_wave(
        [HOSTS[1:]], snapshot, WaveSettings(health=HEALTH, reboot_bounds=RebootBounds(60, 0.5, 4, 2))
    )
    assert resumed.succeeded, resumed.reason
    for name in ("app-2", "app-3"):
        outcome = resumed.hosts[name]
        assert outcome.rebooted
        assert outcome.compliance == {"demo-kernel": "INSTALLED", "demo-slow": "INSTALLED"}
        assert "install: nothing to install on this host" in outcome.notes


def test_an_unexpected_error_on_one_host_fails_that_host_and_the_batch_is_still_reported(
    fleet: list[WaveHost],
) -> None:
    # app-2's connection answers the reboot-flag read (after its install) with an error nobody
    # foresaw; without a record of it the wave would lose app-3's outcome too and app-2 would be
    # left with new packages and no word of it.
    def flaky(wave_host: WaveHost, privilege: str) -> AptHost:
        real = ssh_runner(wave_host.ssh_conn_id, used_by=wave_host.name)
        if wave_host.name != "app-2":
            return AptHost(wave_host.name, real, privilege=privilege)

        def run(command: str, timeout: int) -> CommandResult:
            if "reboot-required" in command:
                raise RuntimeError("the channel answered nonsense")
            return real(command, timeout)

        return AptHost(wave_host.name, run, privilege=privilege)

    result = run_wave([HOSTS[1:]], {h.name: SECURITY for h in fleet}, SETTINGS, host_factory=flaky)

    broken = result.hosts["app-2"]
    assert broken.status == FAILED
    assert broken.step == "reboot"
    assert broken.error == "unexpected RuntimeError: the channel answered nonsense"
    assert broken.changed
    # Read back from the host: installed, and the kernel it runs is older than the one installed.
    assert broken.compliance == {"demo-openssl": "INSTALLED", "demo-kernel": "INSTALLED_PENDING_REBOOT"}
    assert "6.1.0-2-demo is installed but 6.1.0-1-demo is running" in broken.compliance_reasons["demo-kernel"]
    assert result.hosts["app-3"].status == DONE
    assert result.halted
    assert (
        "app-2: FAILED at reboot: unexpected RuntimeError: the channel answered nonsense (packages changed: "
        "demo-kernel INSTALLED_PENDING_REBOOT, demo-openssl INSTALLED)"
    ) in result.reason
