"""AptHost on recorded host answers: sudo that asks for a password, quoting, the reboot bound."""

from __future__ import annotations

import pytest

from cloudops.errors import CloudOpsError
from cloudops.fleet.ssh import CommandResult
from cloudops.patching.apt_host import AptHost, HostActionError, RebootBounds, StepLog
from cloudops.patching.model import Classification, PackagePin

pytestmark = pytest.mark.unit


class Recorded:
    """Answers commands from recorded (prefix -> result) pairs, keeping what was asked."""

    def __init__(self, answers: list[tuple[str, CommandResult]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, command: str, timeout: int) -> CommandResult:
        self.asked.append(command)
        for prefix, result in self.answers:
            if command.startswith(prefix):
                return result
        raise ConnectionRefusedError(111, "Connection refused")


def test_sudo_that_asks_for_a_password_is_a_clear_error() -> None:
    runner = Recorded([("sudo -n", CommandResult(1, "", "sudo: a password is required\n"))])
    host = AptHost("web-1", runner, privilege="sudo")
    with pytest.raises(
        HostActionError, match=r"host web-1: pre-flight \(dpkg --audit\): sudo asks for a password"
    ):
        host.preflight(StepLog())
    assert runner.asked == ["sudo -n dpkg --audit"]


def test_a_malformed_pin_is_refused_before_any_command() -> None:
    runner = Recorded([])
    host = AptHost("web-1", runner, privilege="root")
    bad = PackagePin("demo-web", "2.1; reboot", "2.0", Classification.UPDATES)
    with pytest.raises(HostActionError, match="refusing malformed pin"):
        host.install([bad], StepLog())
    assert runner.asked == []


def test_a_host_that_never_comes_back_fails_within_the_bound() -> None:
    boot = CommandResult(0, "11111111-2222-3333-4444-555555555555\n", "")
    runner = Recorded([("cat /proc/sys/kernel/random/boot_id", boot), ("reboot", CommandResult(0, "", ""))])
    calls = 0

    def down_after_reboot(command: str, timeout: int) -> CommandResult:
        nonlocal calls
        if command == "reboot":
            calls += 1
        if calls:
            raise ConnectionRefusedError(111, "Connection refused")
        return runner(command, timeout)

    host = AptHost("web-2", down_after_reboot, privilege="root")
    slept: list[float] = []
    with pytest.raises(HostActionError) as raised:
        host.reboot(StepLog(), RebootBounds(0.2, 0.05, 0.1, 0), sleep=slept.append)
    assert "host web-2: reboot: did not come back with a new boot id within 0s" in str(raised.value)
    assert "Connection refused" in str(raised.value)
    assert slept
    assert max(slept) <= 0.1  # backoff capped at max_delay_seconds


def test_unknown_privilege_is_refused() -> None:
    with pytest.raises(CloudOpsError, match="privilege 'admin'"):
        AptHost("web-1", Recorded([]), privilege="admin")
