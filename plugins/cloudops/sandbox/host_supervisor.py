"""The supervisor of one sandbox host: boots it, boots it again after a reboot, stops it.

Run as ``python -m cloudops.sandbox.host_supervisor <host dir>`` by `cloudops sandbox up` (one
supervisor per host, recorded in <sandbox>/run/host-<name>.pid like the other daemons). It boots the
host in new namespaces (see host_boot) and waits for the host's PID 1 to exit. Then:

- if the supervisor itself is stopping (SIGTERM from `cloudops sandbox down` / `hosts stop`): done;
- if the guest asked to power off (``control/poweroff-requested``, from `shutdown -h`/`poweroff`): the
  host stays down until that file is removed (`cloudops sandbox hosts start`);
- otherwise (a `reboot` / `shutdown -r` in the guest, or PID 1 died): it waits the boot delay and boots
  again, with a new boot id, an uptime near 0 and an empty /run, as a real machine would.

Fault injection, for tests (files in the host's ``control/`` dir, read at every reboot):

- ``never-come-back``: the host does not come back from its next reboot; it stays down (state
  ``held``) for as long as the file exists, and boots once it is removed;
- ``boot-delay``: seconds (a decimal number) to wait before booting after a reboot, instead of the
  default 2 s: a slow boot.

``unshare --fork`` ignores SIGTERM, so the host is stopped by signalling its PID 1 (unshare's child):
SIGTERM first (the guest's init stops sshd and exits), SIGKILL after STOP_GRACE seconds. If the
supervisor dies, unshare dies with it (parent-death signal) and takes the host's processes with it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from cloudops.sandbox.host_boot import (
    BOOT_DELAY_FILE,
    NEVER_COME_BACK,
    POWEROFF_REQUEST,
    REBOOT_REQUEST,
    HostPaths,
    namespace_command,
)

STOP_GRACE = 10.0
POLL = 0.1
MAX_QUICK_FAILURES = 5  # boots that die within QUICK_FAILURE seconds in a row: give up, say why
QUICK_FAILURE = 3.0
MAX_BOOT_DELAY = 600.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL it when the supervisor dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _log(line: str) -> None:
    print(f"{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')[:-4]}Z {line}", flush=True)


def machine_uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


class HostSupervisor:
    """Boot loop of one host (see the module docstring)."""

    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths
        self.config = paths.read_config()
        self.stopping = False
        self.unshare: subprocess.Popen[bytes] | None = None
        self.boots = 0

    def _write_state(self, state: str, **extra: object) -> None:
        record = {
            "state": state,
            "since": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "boots": self.boots,
            "supervisor_pid": os.getpid(),
            **extra,
        }
        tmp = self.paths.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, sort_keys=True) + "\n")
        tmp.replace(self.paths.state_file)
        _log(f"{self.config.name}: {state}" + (f" {extra}" if extra else ""))

    def _boot_delay(self) -> float:
        try:
            delay = float((self.paths.control / BOOT_DELAY_FILE).read_text().strip())
        except (OSError, ValueError):
            return self.config.reboot_delay_seconds
        return min(max(delay, 0.0), MAX_BOOT_DELAY)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(POLL, max(deadline - time.monotonic(), 0)))

    def _wait_while(self, flag: str, state: str) -> None:
        path = self.paths.control / flag
        if path.exists() and not self.stopping:
            self._write_state(state, because=f"{path} exists")
        while path.exists() and not self.stopping:
            time.sleep(POLL)

    def guest_pid1(self) -> int | None:
        if self.unshare is None or self.unshare.poll() is not None:
            return None
        found = children_of(self.unshare.pid)
        return found[0] if found else None

    def _boot(self) -> subprocess.Popen[bytes]:
        self.paths.boot_id_file.unlink(missing_ok=True)
        for request in (REBOOT_REQUEST, POWEROFF_REQUEST):
            (self.paths.control / request).unlink(missing_ok=True)
        offset = -int(machine_uptime())
        argv = namespace_command(self.config, self.paths, boottime_offset=offset)
        self.boots += 1
        # Inherits the supervisor's stdout (its log) for the boot script's complaints.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.paths.guest_pid_file.write_text(f"{proc.pid}\n")
        return proc

    def stop_guest(self) -> None:
        """Ask the guest's PID 1 to exit; SIGKILL it after STOP_GRACE seconds (bounded)."""
        pid1 = self.guest_pid1()
        if pid1 is None:
            return
        try:
            os.kill(pid1, signal.SIGTERM)
        except ProcessLookupError:
            return

        def kill_late() -> None:
            time.sleep(STOP_GRACE)
            if self.guest_pid1() == pid1:
                _log(f"{self.config.name}: PID 1 ({pid1}) ignored SIGTERM for {STOP_GRACE:.0f} s: SIGKILL")
                os.kill(pid1, signal.SIGKILL)

        threading.Thread(target=kill_late, daemon=True).start()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        self.stop_guest()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        quick_failures = 0
        first = True
        while not self.stopping:
            if not first:
                self._wait_while(POWEROFF_REQUEST, "powered off")
                delay = self._boot_delay()
                self._write_state("rebooting", boot_delay_seconds=delay)
                self._sleep(delay)
                self._wait_while(NEVER_COME_BACK, "held")
                if self.stopping:
                    break
            first = False
            started = time.monotonic()
            self.unshare = self._boot()
            self._write_state("booted", guest_pid=self.unshare.pid)
            returncode = self.unshare.wait()
            lived = time.monotonic() - started
            if self.stopping:
                break
            rebooted = (self.paths.control / REBOOT_REQUEST).exists()
            powered_off = (self.paths.control / POWEROFF_REQUEST).exists()
            reason = "reboot" if rebooted else "poweroff" if powered_off else f"PID 1 exited ({returncode})"
            self._write_state("down", reason=reason, lived_seconds=round(lived, 2))
            if (self.paths.control / POWEROFF_REQUEST).exists():
                continue
            if lived < QUICK_FAILURE and not rebooted:
                quick_failures += 1
                if quick_failures >= MAX_QUICK_FAILURES:
                    self._write_state(
                        "failed", reason=f"{quick_failures} boots died within {QUICK_FAILURE} s"
                    )
                    return 1
            else:
                quick_failures = 0
        self._write_state("stopped")
        self.paths.guest_pid_file.unlink(missing_ok=True)
        return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m cloudops.sandbox.host_supervisor <host dir>", file=sys.stderr)
        return 2
    return HostSupervisor(HostPaths(Path(argv[1]))).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))


__all__ = ["HostSupervisor", "children_of", "machine_uptime", "main"]
