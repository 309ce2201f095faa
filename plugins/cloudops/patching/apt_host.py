"""Act on one Debian host over SSH for a patch wave: scan, pre-flight, install, reboot, health, rollback.

Every command goes through one ``Runner`` (in the runbook: one :class:`cloudops.fleet.ssh.SshSession` per
host for the whole wave, host keys always checked, connected again after a reboot) and is built here
from constants and values that passed :mod:`cloudops.patching.apt_output`'s checks, quoted with
:func:`shlex.quote`: nothing a host prints ever chooses a command. Output is bounded before it is read.
With privilege ``sudo`` every command that needs root runs under ``sudo -n``: a host that asks for a
password is a clear error, never a hang.

Each step says what it did and why it did nothing (``notes``), so the wave's record of a host reads as
the runbook text: "dpkg was interrupted (demo-slow half configured): repaired with dpkg --configure -a".
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cloudops.errors import CloudOpsError
from cloudops.fleet.ssh import CommandResult, SshSession
from cloudops.patching import apt_output
from cloudops.patching.model import KERNEL_PREFIXES, HostScan, PackagePin
from cloudops.patching.recovery import FoundHost

log = logging.getLogger(__name__)

# (command, timeout in seconds) -> result; raises on connection failures.
Runner = Callable[[str, int], CommandResult]

ROOT = "root"
SUDO = "sudo"
APT_ENV = "DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l APT_LISTCHANGES_FRONTEND=none"
DPKG_CONF = "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
SCAN_TIMEOUT = 120
DEFAULT_LOCK_TIMEOUT = 60
HOOK_TIMEOUT = 300
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


class HostActionError(CloudOpsError):
    """A step on a host failed; the message names the host, the step and the cause."""

    def __init__(self, host: str, step: str, cause: str) -> None:
        super().__init__(f"host {host}: {step}: {cause}")
        self.host = host
        self.step = step
        self.cause = cause


class HostUnreachable(HostActionError):
    """The host could not be reached over SSH (down, refused, or its host key did not verify)."""


@dataclass(frozen=True)
class HealthCheck:
    """One health command and what it must show: an exit status, a substring, a regular expression."""

    command: str
    expect_exit: int | None = 0
    expect_output: str | None = None
    expect_regex: str | None = None
    timeout_seconds: int = 30

    def failure(self, result: CommandResult) -> str | None:
        """Why the result fails this check (None when it passes)."""
        shown = (result.stdout + result.stderr).strip()[:200]
        if self.expect_exit is not None and result.exit_status != self.expect_exit:
            return f"`{self.command}` exited {result.exit_status}, not {self.expect_exit}: {shown}"
        if self.expect_output is not None and self.expect_output not in result.stdout:
            return f"`{self.command}` did not print {self.expect_output!r}: {shown}"
        if self.expect_regex is not None and not re.search(self.expect_regex, result.stdout):
            return f"`{self.command}` did not match /{self.expect_regex}/: {shown}"
        return None


@dataclass(frozen=True)
class HealthGate:
    """Checks that must pass on a host, then pass again after ``soak_seconds``."""

    checks: tuple[HealthCheck, ...] = ()
    soak_seconds: float = 0.0


@dataclass(frozen=True)
class Hook:
    """A catalog hook command and its bound."""

    command: str
    timeout_seconds: int = HOOK_TIMEOUT


@dataclass(frozen=True)
class RebootBounds:
    """How long a reboot may take: boot id polls with backoff until ``timeout_seconds``, then stability."""

    timeout_seconds: float = 120.0
    first_delay_seconds: float = 0.5
    # A poll is one SSH connection attempt; on a host back in ~3 s, a 4 s cap cost up to 4 s per reboot.
    max_delay_seconds: float = 1.0
    stability_seconds: float = 3.0


@dataclass
class StepLog:
    """What happened on one host, step by step: notes for people, timings for the benchmark."""

    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def note(self, text: str) -> None:
        self.notes.append(text)


@dataclass(frozen=True)
class RebootOutcome:
    before: str
    after: str
    seconds: float
    running_kernel: str
    installed_kernel: str


@dataclass(frozen=True)
class DpkgState:
    """What dpkg says of the host's packages: versions on disk, unfinished ones, held ones."""

    versions: dict[str, str]
    unfinished: frozenset[str]
    held: frozenset[str]


@dataclass(frozen=True)
class HealthOutcome:
    healthy: bool
    output: str
    reason: str


class AptHost:
    """One Debian host, reached through ``runner``; every method is one bounded step of the wave.

    :param name: the host's catalog name (used in every message).
    :param runner: runs one command on the host (see ``Runner``).
    :param privilege: ``root`` (the connection logs in as root) or ``sudo`` (``sudo -n`` for root steps).
    """

    def __init__(self, name: str, runner: Runner, *, privilege: str = SUDO) -> None:
        if privilege not in (ROOT, SUDO):
            raise CloudOpsError(f"host {name}: privilege {privilege!r} is neither 'root' nor 'sudo'")
        self.name = name
        self._runner = runner
        self._privilege = privilege

    def __enter__(self) -> AptHost:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the runner's connection when it keeps one (an :class:`~cloudops.fleet.ssh.SshSession`)."""
        close = getattr(self._runner, "close", None)
        if callable(close):
            close()

    # -- plumbing ---------------------------------------------------------------------------------

    def _root(self, command: str) -> str:
        return command if self._privilege == ROOT else f"sudo -n {command}"

    def run(self, step: str, command: str, timeout: int) -> CommandResult:
        """Run one command; connection failures become :class:`HostUnreachable` naming host and step."""
        try:
            result = self._runner(command, timeout)
        except HostActionError:
            raise
        except (CloudOpsError, OSError, EOFError) as error:
            raise HostUnreachable(self.name, step, f"{type(error).__name__}: {error}") from None
        except Exception as error:  # paramiko's SSHException and friends: not importable at parse time
            if type(error).__module__.startswith("paramiko"):
                raise HostUnreachable(self.name, step, f"{type(error).__name__}: {error}") from None
            raise
        out = CommandResult(
            result.exit_status, apt_output.bounded(result.stdout), apt_output.bounded(result.stderr)
        )
        if self._privilege == SUDO and out.exit_status == 1 and "sudo: a password is required" in out.stderr:
            raise HostActionError(
                self.name, step, "sudo asks for a password (privilege 'sudo' needs passwordless sudo -n)"
            )
        return out

    def _sections(self, step: str, parts: Sequence[tuple[str, str]], timeout: int) -> dict[str, str]:
        """Run several read-only commands in one session, split by a random marker the host cannot guess."""
        marker = f"--cloudops-{secrets.token_hex(8)}--"
        script = "; ".join(f"echo {marker}{name}; {command}" for name, command in parts)
        result = self.run(step, f"sh -c {shlex.quote(script)}", timeout)
        sections: dict[str, str] = {}
        current = None
        for line in result.stdout.splitlines(keepends=True):
            if line.startswith(marker):
                current = line[len(marker) :].strip()
                sections[current] = ""
            elif current is not None:
                sections[current] += line
        return sections

    # -- facts --------------------------------------------------------------------------------------

    def boot_id(self, step: str = "read boot id", timeout: int = 15) -> str:
        result = self.run(step, f"cat {BOOT_ID_FILE}", timeout)
        boot_id = result.stdout.strip()
        if result.exit_status != 0 or not boot_id or len(boot_id) > 64:
            raise HostActionError(self.name, step, f"no boot id in {BOOT_ID_FILE} (rc {result.exit_status})")
        return boot_id

    def installed_versions(self, step: str = "read installed versions") -> dict[str, str]:
        return self.package_states(step).versions

    def package_states(self, step: str = "read installed versions") -> DpkgState:
        """Installed versions, the packages dpkg left unpacked or half-configured, and the held ones."""
        result = self.run(step, "dpkg-query -W -f='${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'", 60)
        return DpkgState(
            apt_output.parse_installed(result.stdout),
            apt_output.parse_unfinished(result.stdout),
            apt_output.parse_selection_holds(result.stdout),
        )

    def holds(self) -> frozenset[str]:
        return apt_output.parse_holds(self.run("read holds", "apt-mark showhold", 30).stdout)

    def scan(self, *, update: bool = True) -> HostScan:
        """Refresh the package lists and read what could be upgraded, holds, versions, boot and kernels.

        The simulation ignores holds (``--ignore-hold``) so that a held package's update is still seen;
        ``held`` says which ones ``apt-mark`` holds (``apt list --upgradable`` would list them as if
        they could go). A simulation needs no lock: a scan never waits for a running apt.
        """
        started = time.monotonic()
        if update:
            refreshed = self.run(
                "scan (apt-get update)", self._root(f"env {APT_ENV} apt-get -q update"), SCAN_TIMEOUT
            )
            if refreshed.exit_status != 0:
                raise HostActionError(
                    self.name,
                    "scan (apt-get update)",
                    f"rc {refreshed.exit_status}: "
                    f"{apt_output.excerpt(refreshed.stderr or refreshed.stdout, 600)}",
                )
        sections = self._sections(
            "scan",
            [
                ("simulate", "apt-get -s -q --ignore-hold dist-upgrade 2>&1"),
                ("holds", "apt-mark showhold"),
                ("installed", "dpkg-query -W -f='${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'"),
                ("boot_id", f"cat {BOOT_ID_FILE}"),
                ("reboot", "test -e /run/reboot-required && echo yes"),
                ("reboot_pkgs", "cat /run/reboot-required.pkgs 2>/dev/null"),
                ("running", "cat /proc/sys/kernel/osrelease"),
                ("boot", "ls -1 /boot 2>/dev/null"),
            ],
            SCAN_TIMEOUT,
        )
        if "boot_id" not in sections:
            raise HostActionError(self.name, "scan", "the host's answer was cut short (no boot id)")
        pending = apt_output.parse_simulation(sections.get("simulate", ""))
        scan = HostScan(
            host=self.name,
            pending=pending,
            installed=apt_output.parse_installed(sections.get("installed", "")),
            unfinished=apt_output.parse_unfinished(sections.get("installed", "")),
            held=apt_output.parse_holds(sections.get("holds", "")),
            boot_id=sections["boot_id"].strip()[:64],
            reboot_required=sections.get("reboot", "").strip() == "yes",
            reboot_required_packages=apt_output.parse_reboot_packages(sections.get("reboot_pkgs", "")),
            running_kernel=sections.get("running", "").strip()[:128],
            installed_kernel=apt_output.newest_kernel(sections.get("boot", "")),
        )
        log.info(
            "host %s: scanned in %.2fs: %d pending, %d held, reboot required: %s",
            self.name,
            time.monotonic() - started,
            len(pending),
            len(scan.held),
            scan.reboot_required,
        )
        return scan

    def dpkg_lock_holders(self) -> tuple[str, ...]:
        """Processes holding dpkg's locks now (``pid 63 (apt-get)``), read from /proc/locks: takes no lock."""
        files = " ".join(apt_output.DPKG_LOCK_FILES)
        sections = self._sections(
            "read the dpkg lock",
            [("stat", f"stat -c '%d %i %n' {files} 2>/dev/null"), ("locks", "cat /proc/locks")],
            15,
        )
        pids = apt_output.parse_lock_pids(sections.get("stat", ""), sections.get("locks", ""))
        return tuple(
            f"pid {pid}" + (f" ({name})" if (name := self._process_name(pid)) else "") for pid in pids
        )

    def found_after_kill(
        self, *, wait_seconds: float, sleep: Callable[[float], None] = time.sleep
    ) -> FoundHost:
        """Read the host as a killed wave task left it (never raises: an unreadable host says why).

        An apt the killed try started may still run (sshd sends a session without a terminal no
        hangup): wait for dpkg's lock to be free, within ``wait_seconds``, before reading the state
        it leaves, so that a retry never acts on a state that is still changing.
        """
        started = time.monotonic()
        try:
            first = holders = self.dpkg_lock_holders()
            while holders and time.monotonic() - started < wait_seconds:
                sleep(1.0)
                holders = self.dpkg_lock_holders()
            waited = round(time.monotonic() - started, 1) if first else 0.0
            dpkg = self.package_states("read versions after a killed try")
            flag, flagged = self.reboot_flag()
            running, newest = self.kernels()
        except HostActionError as error:
            return FoundHost(self.name, error=f"{error.step}: {error.cause}")
        return FoundHost(
            self.name,
            versions=dpkg.versions,
            unfinished=dpkg.unfinished,
            reboot_required=flag,
            reboot_packages=flagged,
            running_kernel=running,
            installed_kernel=newest,
            lock_holders=holders,
            waited_for=first,
            waited_seconds=waited,
        )

    # -- pre-flight -------------------------------------------------------------------------------

    def preflight(self, steps: StepLog, *, lock_timeout: int = DEFAULT_LOCK_TIMEOUT) -> None:
        """Check dpkg is sound before installing: repair an interrupted dpkg (and say so), name a lock holder.

        :raises HostActionError: dpkg could not be repaired, or the lock stayed held past ``lock_timeout``.
        """
        audit = self.run("pre-flight (dpkg --audit)", self._root("dpkg --audit"), 60)
        problems = apt_output.audit_problems(audit.stdout)
        if not problems and audit.exit_status == 0:
            steps.note("pre-flight: dpkg --audit is clean")
            return
        shown = ", ".join(problems) or apt_output.excerpt(audit.stdout, 300).strip()
        log.warning("host %s: dpkg --audit reports %s: repairing with dpkg --configure -a", self.name, shown)
        # dpkg itself never waits for its lock: while another run holds it (its packages look unfinished
        # to --audit), try again each second, within the lock timeout.
        deadline = time.monotonic() + lock_timeout
        waited = False
        while True:
            repair = self.run(
                "pre-flight (dpkg --configure -a)",
                self._root(f"env {APT_ENV} dpkg {_dpkg_force()} --configure -a"),
                600,
            )
            holder = apt_output.parse_lock_holder(repair.stdout + "\n" + repair.stderr)
            if repair.exit_status == 0 or holder is None:
                break
            if time.monotonic() >= deadline:
                process = holder.process or self._process_name(holder.pid)
                named = apt_output.LockHolder(holder.path, holder.pid, process)
                raise HostActionError(
                    self.name,
                    "pre-flight (dpkg --configure -a)",
                    f"dpkg --audit reports {shown} unfinished and the dpkg lock stayed held for "
                    f"{lock_timeout}s: {named.describe()}",
                )
            waited = True
            time.sleep(1.0)
        if waited:
            steps.note(
                f"pre-flight: another process held the dpkg lock; it was released within {lock_timeout}s"
            )
        if repair.exit_status != 0:
            raise HostActionError(
                self.name,
                "pre-flight (dpkg --configure -a)",
                f"dpkg was interrupted ({shown}) and the repair failed, rc {repair.exit_status}: "
                f"{apt_output.excerpt(repair.stderr or repair.stdout, 600)}",
            )
        again = apt_output.audit_problems(
            self.run("pre-flight (dpkg --audit)", self._root("dpkg --audit"), 60).stdout
        )
        if again:
            raise HostActionError(
                self.name, "pre-flight", f"dpkg --audit still reports {', '.join(again)} after the repair"
            )
        steps.note(f"pre-flight: dpkg was interrupted ({shown}): repaired with dpkg --configure -a")

    def _raise_if_locked(self, step: str, result: CommandResult, lock_timeout: int) -> None:
        if result.exit_status == 0:
            return
        holder = apt_output.parse_lock_holder(result.stdout + "\n" + result.stderr)
        if holder is None:
            return
        process = holder.process or self._process_name(holder.pid)
        named = apt_output.LockHolder(holder.path, holder.pid, process)
        raise HostActionError(
            self.name, step, f"the dpkg lock stayed held for {lock_timeout}s: {named.describe()}"
        )

    def _process_name(self, pid: int) -> str:
        if pid <= 0:
            return ""
        try:
            comm = self.run("name the lock holder", f"cat /proc/{int(pid)}/comm", 10).stdout.strip()
        except HostActionError:
            return ""
        return comm[:64] if comm.isprintable() else ""

    # -- hooks ------------------------------------------------------------------------------------

    def run_hook(self, which: str, hooks: Sequence[Hook], steps: StepLog) -> None:
        """Run the catalog's pre or post hook commands in order; the first failure stops the host.

        Hook commands come from the catalog (reviewed like code), never from a host.
        """
        for hook in hooks:
            command = hook.command
            result = self.run(f"{which} hook", command, hook.timeout_seconds)
            if result.exit_status != 0:
                raise HostActionError(
                    self.name,
                    f"{which} hook",
                    f"`{command}` failed, rc {result.exit_status}: "
                    f"{apt_output.excerpt(result.stderr or result.stdout, 400).strip()}",
                )
            steps.note(f"{which} hook: `{command}` passed")

    # -- install ----------------------------------------------------------------------------------

    def install(
        self, pins: Sequence[PackagePin], steps: StepLog, *, lock_timeout: int = DEFAULT_LOCK_TIMEOUT
    ) -> str:
        """Install exactly the pins' ``package=version``s, refusing any removal; return the apt log excerpt.

        A simulation of the same request runs first: a package or version the repository lacks, or a
        removal apt would make, stops the host before anything changes.

        :raises HostActionError: naming the unknown pins, the removals, the lock holder or apt's error.
        """
        if not pins:
            steps.note("install: nothing to install on this host")
            return ""
        specs = []
        for pin in pins:
            if not apt_output.is_package_name(pin.package) or not apt_output.is_version(pin.version):
                raise HostActionError(self.name, "install", f"refusing malformed pin {pin.apt_spec!r}")
            specs.append(shlex.quote(pin.apt_spec))
        request = " ".join(specs)
        options = f"-q -y --no-remove --no-install-recommends {DPKG_CONF}"
        simulated = self.run("install (simulate)", f"apt-get -s {options} install {request} 2>&1", 120)
        unknown = apt_output.unknown_pins(simulated.stdout)
        if unknown:
            raise HostActionError(
                self.name,
                "install (simulate)",
                f"the repository has no {', '.join(unknown)}: nothing installed",
            )
        removals = apt_output.parse_removals(simulated.stdout)
        if simulated.exit_status != 0 or removals:
            cause = (
                f"it would remove {', '.join(removals)}"
                if removals
                else f"rc {simulated.exit_status}: {apt_output.excerpt(simulated.stdout, 600).strip()}"
            )
            raise HostActionError(self.name, "install (simulate)", f"{cause}: nothing installed")
        started = time.monotonic()
        result = self.run(
            "install",
            self._root(
                f"env {APT_ENV} apt-get -o DPkg::Lock::Timeout={int(lock_timeout)} {options} "
                f"install {request}"
            ),
            int(lock_timeout) + 600,
        )
        steps.timings["install"] = round(time.monotonic() - started, 3)
        output = apt_output.excerpt(result.stdout + ("\n" + result.stderr if result.stderr else ""))
        self._raise_if_locked("install", result, lock_timeout)
        if result.exit_status != 0:
            hint = (
                " (dpkg was interrupted: the next pre-flight repairs it)"
                if apt_output.dpkg_interrupted(output)
                else ""
            )
            raise HostActionError(
                self.name,
                "install",
                f"apt-get failed, rc {result.exit_status}{hint}: {apt_output.excerpt(output, 600).strip()}",
            )
        steps.note(f"install: {', '.join(pin.apt_spec for pin in pins)} in {steps.timings['install']}s")
        return output

    # -- reboot -----------------------------------------------------------------------------------

    def reboot_flag(self) -> tuple[bool, frozenset[str]]:
        sections = self._sections(
            "read reboot flag",
            [
                ("flag", "test -e /run/reboot-required && echo yes"),
                ("pkgs", "cat /run/reboot-required.pkgs 2>/dev/null"),
            ],
            15,
        )
        return sections.get("flag", "").strip() == "yes", apt_output.parse_reboot_packages(
            sections.get("pkgs", "")
        )

    def kernels(self) -> tuple[str, str]:
        sections = self._sections(
            "read kernels",
            [("running", "cat /proc/sys/kernel/osrelease"), ("boot", "ls -1 /boot 2>/dev/null")],
            15,
        )
        return sections.get("running", "").strip()[:128], apt_output.newest_kernel(sections.get("boot", ""))

    def reboot(
        self, steps: StepLog, bounds: RebootBounds, *, sleep: Callable[[float], None] = time.sleep
    ) -> RebootOutcome:
        """Reboot and wait, within ``bounds``, until the boot id changed and stays the same for the
        stability window; then compare the running kernel with the newest installed one.

        :raises HostActionError: the host did not come back with a new boot id within the bound, or
            rebooted again during the stability window.
        """
        before = self.boot_id("reboot (boot id before)")
        started = time.monotonic()
        # The connection may drop before the command answers: the boot id tells.
        with contextlib.suppress(HostUnreachable):
            self.run("reboot", self._root("reboot"), 15)
        deadline = started + bounds.timeout_seconds
        delay = bounds.first_delay_seconds
        polls = 0
        last_problem = "no answer yet"
        after = ""
        while True:
            sleep(min(delay, max(0.0, deadline - time.monotonic())))
            polls += 1
            try:
                current = self.boot_id("reboot (waiting for the new boot id)", timeout=10)
            except HostActionError as error:
                last_problem = error.cause
            else:
                if current != before:
                    after = current
                    break
                last_problem = "still the old boot id (not rebooted yet)"
            if time.monotonic() >= deadline:
                raise HostActionError(
                    self.name,
                    "reboot",
                    f"did not come back with a new boot id within {bounds.timeout_seconds:.0f}s "
                    f"({polls} polls; last: {last_problem}); the packages are installed, the host is down",
                )
            delay = min(delay * 2, bounds.max_delay_seconds)
        back = time.monotonic() - started
        if bounds.stability_seconds > 0:
            sleep(bounds.stability_seconds)
            again = self.boot_id("reboot (stability window)")
            if again != after:
                raise HostActionError(
                    self.name,
                    "reboot",
                    f"rebooted again within the {bounds.stability_seconds:.0f}s stability window "
                    f"(boot id {after} then {again})",
                )
        running, installed = self.kernels()
        seconds = round(time.monotonic() - started, 3)
        steps.timings["reboot"] = seconds
        kernel = (
            f"running kernel {running} is the newest installed"
            if not installed or running == installed
            else f"running kernel {running}, newest installed {installed}"
        )
        steps.note(f"reboot: back after {back:.1f}s with boot id {after} ({polls} polls), stable; {kernel}")
        return RebootOutcome(before, after, seconds, running, installed)

    # -- health -----------------------------------------------------------------------------------

    def health(
        self, gate: HealthGate, steps: StepLog, *, sleep: Callable[[float], None] = time.sleep
    ) -> HealthOutcome:
        """Run the gate's checks, wait the soak time, run them again: both rounds must pass.

        Missing or ambiguous health is a failure: a check that cannot run (host unreachable), exits
        otherwise than expected, or does not print what is expected fails the gate at once.
        """
        if not gate.checks:
            steps.note("health: the fleet has no health gate")
            return HealthOutcome(True, "", "no health gate")
        started = time.monotonic()
        output = ""
        rounds = 2 if gate.soak_seconds > 0 else 1
        for round_ in range(rounds):
            if round_:
                sleep(gate.soak_seconds)
            for check in gate.checks:
                try:
                    result = self.run("health gate", check.command, check.timeout_seconds)
                except HostUnreachable as error:
                    return self._unhealthy(steps, started, output, f"`{check.command}`: {error.cause}")
                output = apt_output.excerpt(result.stdout + result.stderr, 1000)
                failure = check.failure(result)
                if failure:
                    when = " after the soak" if round_ else ""
                    return self._unhealthy(steps, started, output, failure + when)
        steps.timings["health"] = round(time.monotonic() - started, 3)
        soak = f" before and after {gate.soak_seconds:.0f}s of soak" if rounds == 2 else ""
        steps.note(f"health: {len(gate.checks)} check(s) passed{soak}")
        return HealthOutcome(True, output, f"{len(gate.checks)} check(s) passed{soak}")

    def _unhealthy(self, steps: StepLog, started: float, output: str, reason: str) -> HealthOutcome:
        steps.timings["health"] = round(time.monotonic() - started, 3)
        steps.note(f"health: FAILED: {reason}")
        return HealthOutcome(False, output, reason)

    # -- rollback ---------------------------------------------------------------------------------

    def available_versions(self, package: str) -> tuple[str, ...]:
        if not apt_output.is_package_name(package):
            return ()
        result = self.run("read available versions", f"apt-cache madison {shlex.quote(package)}", 30)
        versions = []
        for line in result.stdout.splitlines():
            parts = [part.strip() for part in line.split("|")]
            if len(parts) >= 2 and parts[0] == package and apt_output.is_version(parts[1]):
                versions.append(parts[1])
        return tuple(versions)

    def downgrade_and_hold(
        self, pin: PackagePin, steps: StepLog, *, lock_timeout: int = DEFAULT_LOCK_TIMEOUT
    ) -> None:
        """Reinstall ``pin.previous`` with ``--allow-downgrades`` and ``apt-mark hold`` the package."""
        if not apt_output.is_version(pin.previous):
            raise HostActionError(
                self.name, "rollback", f"{pin.package} had no previous version to go back to"
            )
        spec = shlex.quote(f"{pin.package}={pin.previous}")
        result = self.run(
            "rollback",
            self._root(
                f"env {APT_ENV} apt-get -o DPkg::Lock::Timeout={int(lock_timeout)} -q -y --no-remove "
                f"--allow-downgrades {DPKG_CONF} install {spec}"
            ),
            int(lock_timeout) + 300,
        )
        self._raise_if_locked("rollback", result, lock_timeout)
        if result.exit_status != 0:
            raise HostActionError(
                self.name,
                "rollback",
                f"reinstalling {pin.package}={pin.previous} failed, rc {result.exit_status}: "
                f"{apt_output.excerpt(result.stderr or result.stdout, 400).strip()}",
            )
        hold = self.run("rollback (hold)", self._root(f"apt-mark hold {shlex.quote(pin.package)}"), 30)
        if hold.exit_status != 0:
            raise HostActionError(self.name, "rollback (hold)", f"apt-mark hold {pin.package} failed")
        steps.note(f"rollback: {pin.package} {pin.version} -> {pin.previous}, held")

    def reinstall(self, pin: PackagePin, steps: StepLog, *, lock_timeout: int = DEFAULT_LOCK_TIMEOUT) -> None:
        """Put a package tried in rollback back to its snapshot version and release its hold."""
        self.run("rollback (unhold)", self._root(f"apt-mark unhold {shlex.quote(pin.package)}"), 30)
        result = self.run(
            "rollback (reinstall)",
            self._root(
                f"env {APT_ENV} apt-get -o DPkg::Lock::Timeout={int(lock_timeout)} -q -y --no-remove "
                f"{DPKG_CONF} install {shlex.quote(pin.apt_spec)}"
            ),
            int(lock_timeout) + 300,
        )
        if result.exit_status != 0:
            raise HostActionError(
                self.name,
                "rollback (reinstall)",
                f"putting {pin.apt_spec} back failed, rc {result.exit_status}",
            )
        steps.note(f"rollback: {pin.package} was not the cause; back to {pin.version}")

    def roll_back_bad_update(
        self,
        pins: Sequence[PackagePin],
        gate: HealthGate,
        steps: StepLog,
        *,
        lock_timeout: int = DEFAULT_LOCK_TIMEOUT,
    ) -> tuple[PackagePin, ...]:
        """Find the update that broke health and roll it back (previous version reinstalled and held).

        One package at a time (kernels last: they need a reboot to tell), each only when the
        repository still has its previous version: roll it back, check health; healthy means that
        was the bad update; otherwise it goes back to its snapshot version and the next is tried.
        When no single package explains it, every package that can be is rolled back and held.

        :return: the pins rolled back and held (empty: nothing could be rolled back).
        """
        quick = HealthGate(gate.checks, 0.0)
        candidates = [
            pin for pin in pins if pin.previous and pin.previous in self.available_versions(pin.package)
        ]
        missing = [pin.package for pin in pins if pin not in candidates]
        if missing:
            steps.note(f"rollback: the repository no longer has the previous version of {', '.join(missing)}")
        candidates.sort(key=lambda pin: pin.package.startswith(KERNEL_PREFIXES))
        for pin in candidates:
            if pin.package.startswith(KERNEL_PREFIXES):
                continue
            self.downgrade_and_hold(pin, steps, lock_timeout=lock_timeout)
            if self.health(quick, StepLog()).healthy:
                steps.note(f"rollback: {pin.package} {pin.version} was the bad update; health passes again")
                return (pin,)
            self.reinstall(pin, steps, lock_timeout=lock_timeout)
        rolled = []
        for pin in candidates:
            self.downgrade_and_hold(pin, steps, lock_timeout=lock_timeout)
            rolled.append(pin)
        if rolled:
            verdict = self.health(quick, StepLog())
            steps.note(
                "rollback: no single update explains the failure; rolled back and held "
                f"{', '.join(p.package for p in rolled)}; "
                f"health {'passes' if verdict.healthy else 'still FAILS'}"
            )
        return tuple(rolled)


def _dpkg_force() -> str:
    return "--force-confdef --force-confold"


def ssh_runner(ssh_conn_id: str, *, used_by: str) -> SshSession:
    """A ``Runner`` over one :class:`cloudops.fleet.ssh.SshSession` (host key always verified).

    One connection serves every command of the host (one handshake, not one per command); it connects
    again when the host rebooted. Close it when the host is done (:meth:`AptHost.close`).
    """
    from cloudops.fleet.ssh import SshSession

    # The provider's hook logs every line a command prints at INFO: a host's whole package list in the
    # task log. What the wave keeps of host output is bounded and goes into its own record instead.
    logging.getLogger("airflow.task.hooks.airflow.providers.ssh.hooks.ssh.SSHHook").setLevel(logging.WARNING)
    return SshSession(ssh_conn_id, used_by=used_by, conn_timeout=10)


__all__ = [
    "ROOT",
    "SUDO",
    "AptHost",
    "DpkgState",
    "HealthCheck",
    "HealthGate",
    "HealthOutcome",
    "Hook",
    "HostActionError",
    "HostUnreachable",
    "RebootBounds",
    "RebootOutcome",
    "Runner",
    "StepLog",
    "ssh_runner",
]
