"""Read what apt, dpkg and a Debian host print, as untrusted input: bounded, strictly matched, never obeyed.

Pure functions over recorded text (unit-tested on output captured from the sandbox's Debian 12 hosts):
the simulation's ``Inst`` lines, ``apt-mark showhold``, ``dpkg-query`` versions, ``dpkg --audit``, the
dpkg lock's holder and apt's errors about unknown packages or versions. A line that does not match is
skipped, never guessed at; names and versions must look like Debian's (policy 5.6.1 and 5.6.12) before
they are used anywhere, so a host cannot smuggle a command into a later step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cloudops.patching.model import Classification, PendingUpdate

MAX_OUTPUT_CHARS = 256 * 1024  # what is read of one command's output; the rest is dropped, and said so
MAX_EXCERPT_CHARS = 4000  # what goes into the ledger of one apt run

PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,127}$")
VERSION = re.compile(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~:-]{0,127}$")
_INST = re.compile(r"^Inst (\S+)(?: \[(\S+)\])? \((\S+) (.*?)(?: \[[^\]]*\])?\)")
_REMV = re.compile(r"^Remv (\S+)")
_LOCK = re.compile(
    r"Could not get lock (?P<path>\S+?)\.? It is held by process (?P<pid>\d+)(?: \((?P<name>[^)]{1,64})\))?"
)
_DPKG_LOCK = re.compile(r"dpkg (?:frontend )?lock (?:was locked by another process with pid (?P<pid>\d+))")
_UNKNOWN_PACKAGE = re.compile(r"^E: Unable to locate package (\S+)", re.MULTILINE)
_UNKNOWN_VERSION = re.compile(r"^E: Version '([^']+)' for '([^']+)' was not found", re.MULTILINE)
_INTERRUPTED = "dpkg was interrupted"
_ON_DISK = "iUFWt"  # dpkg status letters of a package whose files are installed
_UNFINISHED = "UFH"  # unpacked, half-configured, half-installed: dpkg stopped half-way


def bounded(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    """Keep at most ``limit`` characters of host output, saying how much was dropped."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters dropped]"


def excerpt(text: str, limit: int = MAX_EXCERPT_CHARS) -> str:
    """The tail of an apt run's output (where its errors are), at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} earlier characters dropped]\n" + text[-limit:]


def is_package_name(name: str) -> bool:
    return bool(PACKAGE_NAME.match(name))


def is_version(version: str) -> bool:
    return bool(VERSION.match(version))


def classify_origin(origin: str) -> Classification:
    """Classify an update by the suites apt names for it (``Origin:suite, Origin:suite``).

    Security wins over updates: a version published in both is a security fix.
    """
    suites = [part.split(":", 1)[-1].strip().lower() for part in origin.split(",")]
    if any("security" in suite for suite in suites):
        return Classification.SECURITY
    if any("updates" in suite or "backports" in suite for suite in suites):
        return Classification.UPDATES
    return Classification.OTHER


def _suite(origin: str) -> str:
    first = origin.split(",", 1)[0].strip()
    return first.split(":", 1)[-1].split("/", 1)[-1] if ":" in first else first


def parse_simulation(output: str) -> tuple[PendingUpdate, ...]:
    """The updates an ``apt-get -s`` run would install: one per ``Inst`` line that names a valid package.

    ``Inst demo-openssl [1.0] (1.1 CloudOps-Security:cloudops-security [all])`` reads: package
    demo-openssl, installed 1.0, candidate 1.1 from suite cloudops-security (a security update). A new
    package (no ``[installed]``) has installed version "".
    """
    updates: dict[str, PendingUpdate] = {}
    for line in bounded(output).splitlines():
        match = _INST.match(line.strip())
        if not match:
            continue
        package, installed, candidate, origin = match.groups()
        if not is_package_name(package) or not is_version(candidate):
            continue
        if installed and not is_version(installed):
            continue
        updates[package] = PendingUpdate(
            package=package,
            installed=installed or "",
            candidate=candidate,
            suite=_suite(origin),
            classification=classify_origin(origin),
        )
    return tuple(updates[name] for name in sorted(updates))


def parse_removals(output: str) -> tuple[str, ...]:
    """Packages an ``apt-get -s`` run would remove (``Remv`` lines): a wave never removes anything."""
    names = {m.group(1) for line in bounded(output).splitlines() if (m := _REMV.match(line.strip()))}
    return tuple(sorted(n for n in names if is_package_name(n)))


def parse_holds(output: str) -> frozenset[str]:
    """``apt-mark showhold``: one held package per line (``name`` or ``name:arch``)."""
    held = set()
    for line in bounded(output).splitlines():
        name = line.strip().split(":", 1)[0]
        if is_package_name(name):
            held.add(name)
    return frozenset(held)


def parse_installed(output: str) -> dict[str, str]:
    """``dpkg-query -W -f='${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'``: installed packages.

    The abbreviation is the wanted state (i install, h hold, ...) then the status: a package counts when
    its status says it is on disk (i installed; U, F, W, t: unpacked or half-configured, still
    there); ``hi`` is a held, installed package; removed ones with config files left (``rc``) do not.
    """
    installed: dict[str, str] = {}
    for line in bounded(output).splitlines():
        fields = line.rstrip("\n").split("\t")
        if len(fields) != 3:
            continue
        name, version, status = (field.strip() for field in fields)
        name = name.split(":", 1)[0]
        if (
            len(status) < 2
            or status[1] not in _ON_DISK
            or not is_package_name(name)
            or not is_version(version)
        ):
            continue
        installed[name] = version
    return installed


def parse_unfinished(output: str) -> frozenset[str]:
    """The same ``dpkg-query`` output: packages dpkg left unpacked, half-configured or half-installed.

    Such a package is on disk (possibly at its new version) but not configured: an interrupted dpkg,
    e.g. a power loss or a stopped run during a maintainer script. Never count it as installed.
    """
    unfinished = set()
    for line in bounded(output).splitlines():
        fields = line.rstrip("\n").split("\t")
        if len(fields) != 3:
            continue
        name, _, status = (field.strip() for field in fields)
        name = name.split(":", 1)[0]
        if len(status) >= 2 and status[1] in _UNFINISHED and is_package_name(name):
            unfinished.add(name)
    return frozenset(unfinished)


def parse_selection_holds(output: str) -> frozenset[str]:
    """The same ``dpkg-query`` output: packages whose selection is ``hold`` (what ``apt-mark hold`` sets)."""
    held = set()
    for line in bounded(output).splitlines():
        fields = line.rstrip("\n").split("\t")
        if len(fields) != 3:
            continue
        name, status = fields[0].strip().split(":", 1)[0], fields[2].strip()
        if status.startswith("h") and is_package_name(name):
            held.add(name)
    return frozenset(held)


def parse_reboot_packages(output: str) -> frozenset[str]:
    """``/run/reboot-required.pkgs``: the packages that asked for a reboot, one per line."""
    return frozenset(line.strip() for line in bounded(output).splitlines() if is_package_name(line.strip()))


def newest_kernel(boot_listing: str) -> str:
    """The newest installed kernel from ``ls /boot`` lines such as ``vmlinuz-6.1.0-2-demo`` (Debian sorts
    kernel versions; here the highest by version comparison of the dotted and dashed numbers)."""
    versions = []
    for line in bounded(boot_listing).splitlines():
        name = line.strip().rsplit("/", 1)[-1]
        if name.startswith("vmlinuz-") and is_version(name[len("vmlinuz-") :]):
            versions.append(name[len("vmlinuz-") :])
    if not versions:
        return ""
    return max(versions, key=_version_key)


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.+~-]", version))


@dataclass(frozen=True)
class LockHolder:
    """Who holds the dpkg lock, as apt names it (pid 0 means: a process outside the host's PID namespace)."""

    path: str
    pid: int
    process: str

    def describe(self) -> str:
        who = f"process {self.pid}" + (f" ({self.process})" if self.process else "")
        if self.pid == 0:
            who += ", outside this host's process namespace"
        return f"{self.path} is held by {who}"


def parse_lock_holder(output: str) -> LockHolder | None:
    """The lock apt could not get and its holder, from apt's or dpkg's error text."""
    text = bounded(output)
    match = _LOCK.search(text)
    if match:
        name = match.group("name") or ""
        return LockHolder(match.group("path"), int(match.group("pid")), name if _printable(name) else "")
    dpkg = _DPKG_LOCK.search(text)
    if dpkg:
        return LockHolder("/var/lib/dpkg/lock-frontend", int(dpkg.group("pid")), "")
    return None


DPKG_LOCK_FILES = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock")


def parse_lock_pids(stat_output: str, proc_locks: str) -> tuple[int, ...]:
    """The pids holding a POSIX lock on dpkg's lock files, from ``stat -c '%d %i %n'`` and /proc/locks.

    apt and dpkg lock with fcntl, so ``/proc/locks`` names the holder (``1: POSIX ADVISORY WRITE 63
    00:9b:16158082 0 EOF``: pid, then major:minor in hex and the inode) without taking the lock.
    Only locks on the files ``stat`` printed count; OFD locks (pid -1) have no holder to name.
    """
    files = set()
    for line in bounded(stat_output, 4096).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] in DPKG_LOCK_FILES and parts[0].isdigit() and parts[1].isdigit():
            dev = int(parts[0])
            major, minor = (dev >> 8) & 0xFFF, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
            files.add((major, minor, int(parts[1])))
    pids = []
    for line in bounded(proc_locks, 64 * 1024).splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] != "POSIX" or not parts[4].isdigit():
            continue
        where = parts[5].split(":")
        if len(where) != 3 or not where[2].isdigit():
            continue
        try:
            key = (int(where[0], 16), int(where[1], 16), int(where[2]))
        except ValueError:
            continue
        if key in files:
            pids.append(int(parts[4]))
    return tuple(dict.fromkeys(pids))


def _printable(text: str) -> bool:
    return all(ch.isprintable() for ch in text)


def dpkg_interrupted(output: str) -> bool:
    """Whether apt refused because an earlier dpkg run was interrupted (``dpkg --configure -a`` needed)."""
    return _INTERRUPTED in bounded(output)


def audit_problems(output: str) -> tuple[str, ...]:
    """``dpkg --audit``: the packages it reports (half-configured, half-installed, ...); empty when clean.

    Its report lists each package indented under a paragraph that says what is wrong with them.
    """
    names = []
    for line in bounded(output).splitlines():
        if line.startswith(" "):
            name = line.strip().split(" ", 1)[0]
            if is_package_name(name):
                names.append(name)
    return tuple(dict.fromkeys(names))


def unknown_pins(output: str) -> tuple[str, ...]:
    """What apt could not find of an install request: ``package`` or ``package=version`` as it says."""
    text = bounded(output)
    found = [name for name in _UNKNOWN_PACKAGE.findall(text)]
    found += [f"{name}={version}" for version, name in _UNKNOWN_VERSION.findall(text)]
    return tuple(dict.fromkeys(item for item in found if _printable(item)))


__all__ = [
    "DPKG_LOCK_FILES",
    "MAX_EXCERPT_CHARS",
    "MAX_OUTPUT_CHARS",
    "LockHolder",
    "audit_problems",
    "bounded",
    "classify_origin",
    "dpkg_interrupted",
    "excerpt",
    "is_package_name",
    "is_version",
    "newest_kernel",
    "parse_holds",
    "parse_installed",
    "parse_lock_holder",
    "parse_lock_pids",
    "parse_reboot_packages",
    "parse_removals",
    "parse_simulation",
    "unknown_pins",
]
