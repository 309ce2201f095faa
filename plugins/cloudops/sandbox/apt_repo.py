"""The sandbox's own apt repository: the only package source of its Debian hosts.

Hosts see it read-only at GUEST_REPO_PATH (bound in from ``<sandbox dir>/apt-repo``) and list it with
``guest_sources_list()``, so that no guest ever contacts the internet. Three suites say what kind of
update a version is, as Debian's own do: ``cloudops-base`` (what hosts are created with,
BASE_PACKAGES), ``cloudops-updates`` (bug fixes) and ``cloudops-security`` (fixes with an advisory in
``advisories.json`` at the repository root). ``apt-get -s`` prints the suite with every update
(``Inst demo-openssl [1.0] (1.1 CloudOps-Security:cloudops-security [all])``), which is what the wave
planner classifies by.

The packages are tiny and each carries one fault a patch wave must handle:

- demo-openssl 1.0 -> 1.1 (security, advisory CSA-2026-001, high, published 10 days before the build);
- demo-kernel 6.1.0-1-demo -> 6.1.0-2-demo (security, CSA-2026-002, 2 days): installs
  /boot/vmlinuz-<version>; configured over an older version, its postinst touches /run/reboot-required
  and adds itself to /run/reboot-required.pkgs (Debian policy 9.12);
- demo-web 2.0 -> 2.1 (updates): the update that breaks the health check. Its postinst writes
  /var/lib/demo-web/health: ``OK 2.0`` for a good version, ``FAIL: 2.1 regression`` for a bad one;
  ``demo-web-health`` prints that line and exits 0 only on ``OK``;
- demo-tools 1.0 -> 1.1 (updates): the package tests hold with ``apt-mark hold``;
- demo-slow 1.0 -> 1.1 (updates): its postinst sleeps, holding the dpkg lock, for as many seconds as
  /etc/demo-slow.seconds says (default 3) whenever it is configured over a version (upgrade,
  downgrade, reinstall) or that file exists: the lock-holder and interrupted-dpkg drills.

Maintainer scripts prefix their paths with ``$DPKG_ROOT``, so ``dpkg --root=<dir>
--force-script-chrootless`` can install them into a plain directory (the tests do); in a guest it is
empty. Old versions stay in the indexes, so a rollback can reinstall the version a host had.

Publishing rewrites the indexes atomically: a new ``.dists-<id>/`` is written whole, then the ``dists``
symlink is replaced by rename, so a guest's ``apt-get update`` reads either the old indexes or the new,
never half of one. apt fetches indexes by hash (Acquire-By-Hash), and each generation also carries the
previous one's, so an update that read the old Release just before the swap still finds its indexes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from cloudops.errors import InvalidInputError, SandboxError
from cloudops.patching.advisories import AdvisoryFileError, parse_advisories, render_advisories
from cloudops.patching.model import Advisory, Classification
from cloudops.sandbox.layout import SandboxLayout
from cloudops.sandbox.process import write_if_changed

log = logging.getLogger(__name__)

GUEST_REPO_PATH = "/srv/cloudops-repo"
BASE_SUITE, UPDATES_SUITE, SECURITY_SUITE = "cloudops-base", "cloudops-updates", "cloudops-security"
SUITES = (BASE_SUITE, UPDATES_SUITE, SECURITY_SUITE)
SUITE_CLASSIFICATION = {
    BASE_SUITE: Classification.OTHER,
    UPDATES_SUITE: Classification.UPDATES,
    SECURITY_SUITE: Classification.SECURITY,
}
ORIGIN = "CloudOps-Sandbox"
SUITE_LABELS = {
    BASE_SUITE: "CloudOps-Base",
    UPDATES_SUITE: "CloudOps-Updates",
    SECURITY_SUITE: "CloudOps-Security",
}
COMPONENT = "main"
ADVISORIES_FILE = "advisories.json"
PUBLISHED_FILE = "published.json"  # versions published after the build, rebuilt with it
INPUTS_FILE = ".inputs.json"  # what the current build was made from (ensure_repository's stamp)
LOCK_FILE = ".lock"
LOCK_TIMEOUT = 60.0
DPKG_DEB_TIMEOUT = 30.0
MAX_PUBLISHED_BYTES = 1024 * 1024
# Every file in the .debs carries this mtime, so the same inputs give the same bytes.
SOURCE_DATE_EPOCH = 1_767_225_600  # 2026-01-01 00:00:00 UTC
MAINTAINER = "CloudOps Sandbox <sandbox@cloudops.invalid>"
SLOW_DEFAULT_SECONDS = 3
HEALTH_FILE = "/var/lib/demo-web/health"
HEALTH_COMMAND = f"cat {HEALTH_FILE}"

PACKAGE_NAME = re.compile(r"demo-[a-z0-9][a-z0-9+.-]{0,40}")
VERSION = re.compile(r"[0-9][A-Za-z0-9.+~]{0,31}(-[A-Za-z0-9.+~]{1,31})*")


@dataclass(frozen=True)
class AdvisoryTerms:
    """An advisory of the table, dated relative to the day the repository is built."""

    id: str
    cves: tuple[str, ...]
    severity: str
    days_before_build: int


@dataclass(frozen=True)
class Release:
    """One version of one demo package in one suite (and its advisory, if it fixes CVEs)."""

    package: str
    version: str
    suite: str
    advisory: AdvisoryTerms | Advisory | None = None
    breaks_health: bool = False  # demo-web only: its postinst writes FAIL to the health file

    @property
    def filename(self) -> str:
        return f"pool/{COMPONENT}/{self.package}/{self.package}_{self.version}_all.deb"

    def dated_advisory(self, build_day: date) -> Advisory | None:
        terms = self.advisory
        if terms is None or isinstance(terms, Advisory):
            return terms
        return Advisory(
            id=terms.id,
            package=self.package,
            fixed_version=self.version,
            cves=terms.cves,
            severity=terms.severity,
            published=build_day - timedelta(days=terms.days_before_build),
        )


# The repository as built: every version, its suite and its advisory. CVE ids are fictitious.
RELEASES: tuple[Release, ...] = (
    Release("demo-openssl", "1.0", BASE_SUITE),
    Release("demo-kernel", "6.1.0-1-demo", BASE_SUITE),
    Release("demo-web", "2.0", BASE_SUITE),
    Release("demo-tools", "1.0", BASE_SUITE),
    Release("demo-slow", "1.0", BASE_SUITE),
    Release(
        "demo-openssl",
        "1.1",
        SECURITY_SUITE,
        AdvisoryTerms("CSA-2026-001", ("CVE-2026-99001",), "high", days_before_build=10),
    ),
    Release(
        "demo-kernel",
        "6.1.0-2-demo",
        SECURITY_SUITE,
        AdvisoryTerms("CSA-2026-002", ("CVE-2026-99002", "CVE-2026-99003"), "medium", days_before_build=2),
    ),
    Release("demo-web", "2.1", UPDATES_SUITE, breaks_health=True),
    Release("demo-tools", "1.1", UPDATES_SUITE),
    Release("demo-slow", "1.1", UPDATES_SUITE),
)

BASE_PACKAGES: tuple[str, ...] = tuple(f"{r.package}={r.version}" for r in RELEASES if r.suite == BASE_SUITE)

SUMMARIES = {
    "demo-openssl": "sandbox library that receives security fixes",
    "demo-kernel": "sandbox kernel: an upgrade asks for a reboot",
    "demo-web": "sandbox web service whose health file the health gate reads",
    "demo-tools": "sandbox tools, the package tests hold",
    "demo-slow": "sandbox package whose postinst holds the dpkg lock for a while",
}
DEMO_PACKAGES = tuple(SUMMARIES)


class PublishRefused(InvalidInputError):
    """A version cannot be published as asked (unknown package or suite, taken version); nothing changed."""


def repository_dir(layout: SandboxLayout) -> Path:
    """Return where the repository lives on this machine: ``<sandbox dir>/apt-repo``."""
    return layout.dir / "apt-repo"


def guest_sources_list() -> str:
    """Return the guests' /etc/apt/sources.list: one trusted file: line per suite, nothing else."""
    return "".join(f"deb [trusted=yes] file:{GUEST_REPO_PATH} {suite} {COMPONENT}\n" for suite in SUITES)


def classify_suite(suite: str) -> Classification:
    """Return the classification of an update from its suite (as apt-get -s prints it)."""
    return SUITE_CLASSIFICATION.get(suite, Classification.OTHER)


# --- package contents -------------------------------------------------------------------------------

_SCRIPT_HEAD = '#!/bin/sh\nset -e\nDPKG_ROOT="${DPKG_ROOT:-}"\n'


def _command(package: str, version: str) -> str:
    return f'#!/bin/sh\necho "{package} {version}"\n'


def _contents(release: Release) -> tuple[dict[str, tuple[str, int]], dict[str, str]]:
    """Return the files (path -> text, mode) and maintainer scripts of one release."""
    name, version = release.package, release.version
    files: dict[str, tuple[str, int]] = {f"usr/share/{name}/version": (f"{version}\n", 0o644)}
    scripts: dict[str, str] = {}
    if name == "demo-kernel":
        files[f"boot/vmlinuz-{version}"] = (f"demo kernel {version}\n", 0o644)
        scripts["postinst"] = _SCRIPT_HEAD + (
            "# Configured over an older version: the new kernel runs only after a reboot (policy 9.12).\n"
            'if [ "$1" = configure ] && [ -n "${2:-}" ] && [ -d "$DPKG_ROOT/run" ]; then\n'
            '    touch "$DPKG_ROOT/run/reboot-required"\n'
            f'    grep -qsx {name} "$DPKG_ROOT/run/reboot-required.pkgs" || '
            f'echo {name} >> "$DPKG_ROOT/run/reboot-required.pkgs"\n'
            "fi\n"
        )
    elif name == "demo-web":
        health = f"FAIL: {version} regression" if release.breaks_health else f"OK {version}"
        files["usr/bin/demo-web-health"] = (
            "#!/bin/sh\n# Print demo-web's health; exit 0 only when it says OK.\n"
            f'health=$(cat {HEALTH_FILE} 2>/dev/null) || {{ echo "FAIL: no {HEALTH_FILE}"; exit 1; }}\n'
            'echo "$health"\ncase "$health" in OK*) exit 0 ;; *) exit 1 ;; esac\n',
            0o755,
        )
        scripts["postinst"] = _SCRIPT_HEAD + (
            'if [ "$1" = configure ]; then\n'
            '    mkdir -p "$DPKG_ROOT/var/lib/demo-web"\n'
            f"    printf '%s\\n' '{health}' > \"$DPKG_ROOT{HEALTH_FILE}.new\"\n"
            f'    mv "$DPKG_ROOT{HEALTH_FILE}.new" "$DPKG_ROOT{HEALTH_FILE}"\n'
            "fi\n"
        )
        scripts["postrm"] = _SCRIPT_HEAD + (
            'if [ "$1" = purge ]; then rm -rf "$DPKG_ROOT/var/lib/demo-web"; fi\n'
        )
    elif name == "demo-slow":
        scripts["postinst"] = _SCRIPT_HEAD + (
            "# Holds the dpkg lock while it sleeps: the lock-holder and power-loss drills.\n"
            f'seconds_file="$DPKG_ROOT/etc/demo-slow.seconds"\nseconds={SLOW_DEFAULT_SECONDS}\n'
            'if [ -r "$seconds_file" ]; then seconds=$(tr -cd 0-9 < "$seconds_file" | head -c 4); fi\n'
            f'[ -n "$seconds" ] || seconds={SLOW_DEFAULT_SECONDS}\n'
            'if [ "$1" = configure ] && { [ -n "${2:-}" ] || [ -r "$seconds_file" ]; }; then\n'
            '    sleep "$seconds"\n'
            "fi\n"
        )
    if name in ("demo-openssl", "demo-tools"):
        files[f"usr/bin/{name}"] = (_command(name, version), 0o755)
    return files, scripts


def _control(release: Release, installed_kib: int) -> str:
    return (
        f"Package: {release.package}\nVersion: {release.version}\nArchitecture: all\n"
        f"Maintainer: {MAINTAINER}\nInstalled-Size: {installed_kib}\nSection: misc\n"
        f"Priority: optional\nDescription: {SUMMARIES[release.package]}\n"
        " Part of the CloudOps sandbox's local repository (cloudops.sandbox.apt_repo).\n"
    )


def _build_deb(release: Release, target: Path, scratch: Path) -> None:
    """Build one .deb with dpkg-deb (root-owned files, fixed mtimes) and rename it into place."""
    files, scripts = _contents(release)
    stage = Path(tempfile.mkdtemp(prefix=f"{release.package}_", dir=scratch))
    try:
        for relpath, (text, mode) in files.items():
            path = stage / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(mode)
        installed_kib = max(1, sum((len(text) + 1023) // 1024 for text, _ in files.values()))
        control = stage / "DEBIAN"
        control.mkdir()
        (control / "control").write_text(_control(release, installed_kib))
        for script, text in scripts.items():
            (control / script).write_text(text)
            (control / script).chmod(0o755)
        for path in sorted(stage.rglob("*"), reverse=True):
            if path.is_dir():
                path.chmod(0o755)
            os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
        stage.chmod(0o755)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), "LC_ALL": "C"}
        argv = ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(stage), str(partial)]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=DPKG_DEB_TIMEOUT, check=False
            )
        except FileNotFoundError:
            raise SandboxError(
                "dpkg-deb not found: install the Debian package dpkg (it builds the sandbox's packages)"
            ) from None
        except subprocess.TimeoutExpired:
            raise SandboxError(
                f"dpkg-deb building {target.name}: timed out after {DPKG_DEB_TIMEOUT:.0f} s"
            ) from None
        if result.returncode != 0:
            raise SandboxError(f"dpkg-deb building {target.name} failed: {result.stderr.strip()}")
        partial.chmod(0o644)
        partial.replace(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _build_debs(root: Path, releases: list[Release]) -> None:
    """Build the releases' .debs into the pool, which stays readable by the guests' apt."""
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        for release in releases:
            _build_deb(release, root / release.filename, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    pool = root / "pool"
    for directory in (pool, *(p for p in pool.rglob("*") if p.is_dir())):
        directory.chmod(0o755)


# --- indexes ----------------------------------------------------------------------------------------


def deb_control(path: Path) -> str:
    """Return the control file of a .deb (an ar archive holding control.tar.{gz,xz}).

    :raises SandboxError: when the file is not such an archive.
    """
    data = path.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise SandboxError(f"{path} is not a .deb (no ar header)")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or 0)
        body = data[offset + 60 : offset + 60 + size]
        if name.startswith("control.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as archive:
                for member in archive.getmembers():
                    if member.isfile() and member.name.lstrip("./") == "control":
                        extracted = archive.extractfile(member)
                        if extracted is not None:
                            return extracted.read().decode()
            break
        offset += 60 + size + (size % 2)
    raise SandboxError(f"{path} has no control file")


def _packages_stanza(root: Path, release: Release) -> str:
    path = root / release.filename
    control = deb_control(path).rstrip("\n")
    head, _, description = control.partition("\nDescription:")
    data = path.read_bytes()
    return (
        f"{head}\nFilename: {release.filename}\nSize: {len(data)}\n"
        f"MD5sum: {hashlib.md5(data).hexdigest()}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        f"Description:{description}\n"
    )


def _release_date(moment: datetime) -> str:
    # RFC 2822 in English whatever the locale, as apt expects.
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    moment = moment.astimezone(UTC)
    return (
        f"{days[moment.weekday()]}, {moment.day:02d} {months[moment.month - 1]} {moment.year} "
        f"{moment:%H:%M:%S} UTC"
    )


def _release_file(suite: str, indexes: dict[str, bytes], moment: datetime) -> str:
    lines = [
        f"Origin: {ORIGIN}",
        f"Label: {SUITE_LABELS[suite]}",
        f"Suite: {suite}",
        f"Codename: {suite}",
        f"Date: {_release_date(moment)}",
        "Architectures: all",
        f"Components: {COMPONENT}",
        "Acquire-By-Hash: yes",
        f"Description: CloudOps sandbox repository, {suite.removeprefix('cloudops-')} suite",
    ]
    for title, algorithm in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        lines.append(f"{title}:")
        lines.extend(
            f" {algorithm(data).hexdigest()} {len(data):>8} {name}" for name, data in sorted(indexes.items())
        )
    return "\n".join(lines) + "\n"


def render_indexes(root: Path, releases: tuple[Release, ...], moment: datetime) -> dict[str, bytes]:
    """Return every file of a dists/ tree (path relative to dists/ -> bytes) for the pool's .debs."""
    tree: dict[str, bytes] = {}
    for suite in SUITES:
        members = sorted((r for r in releases if r.suite == suite), key=lambda r: (r.package, r.filename))
        packages = "\n".join(_packages_stanza(root, r) for r in members).encode()
        indexes = {
            f"{COMPONENT}/binary-all/Packages": packages,
            f"{COMPONENT}/binary-all/Packages.gz": gzip.compress(packages, mtime=0),
        }
        for name, data in indexes.items():
            tree[f"{suite}/{name}"] = data
            tree[_by_hash(f"{suite}/{name}", data)] = data
        tree[f"{suite}/Release"] = _release_file(suite, indexes, moment).encode()
    return tree


def _by_hash(name: str, data: bytes) -> str:
    """Where apt fetches an index by its hash (Acquire-By-Hash), next to its plain name."""
    return f"{name.rpartition('/')[0]}/by-hash/SHA256/{hashlib.sha256(data).hexdigest()}"


def _previous_by_hash(previous: Path) -> dict[str, bytes]:
    """The previous generation's indexes under their by-hash names.

    An apt-get update that read the old Release just before the swap then fetches the old indexes
    by hash through the new ``dists``: they must still be there.
    """
    carried: dict[str, bytes] = {}
    for path in previous.rglob("Packages*"):
        if path.is_file() and "by-hash" not in path.parts:
            data = path.read_bytes()
            carried[_by_hash(str(path.relative_to(previous)), data)] = data
    return carried


def _swap_dists(root: Path, tree: dict[str, bytes]) -> str:
    """Write ``.dists-<id>/`` whole, then point the ``dists`` symlink at it by rename; return the id."""
    link = root / "dists"
    previous = str(link.readlink()) if link.is_symlink() else None
    if previous is not None and (root / previous).is_dir():
        tree = {**_previous_by_hash(root / previous), **tree}
    digest = hashlib.sha256()
    for name in sorted(tree):
        digest.update(name.encode() + b"\0" + tree[name] + b"\0")
    generation = f".dists-{digest.hexdigest()[:16]}"
    if previous == generation:
        return generation
    final = root / generation
    if not final.is_dir():
        partial = Path(tempfile.mkdtemp(prefix=f"{generation}.partial-", dir=root))
        for name, data in tree.items():
            path = partial / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o644)
        for path in (partial, *(p for p in partial.rglob("*") if p.is_dir())):
            path.chmod(0o755)
        partial.rename(final)
    new_link = root / ".dists.new"
    new_link.unlink(missing_ok=True)
    new_link.symlink_to(generation)
    new_link.replace(link)  # rename(2): readers see the old tree or the new one, never a mix
    for stale in root.glob(".dists-*"):
        if stale.name not in (generation, previous):
            shutil.rmtree(stale, ignore_errors=True)
    return generation


# --- state ------------------------------------------------------------------------------------------


@dataclass
class _State:
    inputs: dict[str, str] = field(default_factory=dict)
    last_date: datetime | None = None


def _module_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _read_state(root: Path) -> _State:
    try:
        raw = json.loads((root / INPUTS_FILE).read_text())
        return _State(inputs=dict(raw["inputs"]), last_date=datetime.fromisoformat(raw["last_date"]))
    except (OSError, ValueError, KeyError, TypeError):
        return _State()  # no build yet, or a torn one: build again


def _write_state(root: Path, state: _State) -> None:
    last = state.last_date.isoformat() if state.last_date else None
    write_if_changed(root / INPUTS_FILE, json.dumps({"inputs": state.inputs, "last_date": last}) + "\n")


def _published(root: Path) -> tuple[Release, ...]:
    """Read the versions published since the build (our own file, still read strictly)."""
    path = root / PUBLISHED_FILE
    if not path.exists():
        return ()
    source = str(path)
    with path.open("rb") as stream:
        data = stream.read(MAX_PUBLISHED_BYTES + 1)
    if len(data) > MAX_PUBLISHED_BYTES:
        raise SandboxError(f"{source}: larger than {MAX_PUBLISHED_BYTES} bytes")
    try:
        entries = json.loads(data)
    except ValueError as error:
        raise SandboxError(
            f"{source}: not valid JSON ({error}): remove it to drop the published versions"
        ) from None
    if not isinstance(entries, list):
        raise SandboxError(f"{source}: expected a list of published versions")
    releases = []
    for index, entry in enumerate(entries):
        where = f"{source}: entry {index}"
        if not isinstance(entry, dict) or set(entry) != {
            "package",
            "version",
            "suite",
            "breaks_health",
            "advisory",
        }:
            raise SandboxError(f"{where}: expected package, version, suite, breaks_health, advisory")
        advisory = None
        if entry["advisory"] is not None:
            try:
                (advisory,) = parse_advisories(
                    json.dumps({"format": 1, "advisories": [entry["advisory"]]}), where
                )
            except (AdvisoryFileError, ValueError) as error:
                raise SandboxError(str(error)) from None
        release = Release(
            str(entry["package"]),
            str(entry["version"]),
            str(entry["suite"]),
            advisory,
            entry["breaks_health"] is True,
        )
        _check_release(release, where, SandboxError)
        releases.append(release)
    return tuple(releases)


def _published_entry(release: Release) -> dict[str, Any]:
    advisory = release.advisory
    rendered = None
    if isinstance(advisory, Advisory):
        rendered = json.loads(render_advisories([advisory]))["advisories"][0]
    return {
        "package": release.package,
        "version": release.version,
        "suite": release.suite,
        "breaks_health": release.breaks_health,
        "advisory": rendered,
    }


def _check_release(release: Release, where: str, refuse: type[Exception] = PublishRefused) -> None:
    if release.package not in DEMO_PACKAGES:
        raise refuse(
            f"{where}: unknown package {release.package!r}: publish one of {', '.join(DEMO_PACKAGES)}"
        )
    if not VERSION.fullmatch(release.version):
        raise refuse(
            f"{where}: version {release.version!r} is not a Debian version without epoch "
            "(e.g. 2.2 or 6.1.0-3-demo)"
        )
    if release.suite not in SUITES:
        raise refuse(f"{where}: unknown suite {release.suite!r}: one of {', '.join(SUITES)}")
    if release.breaks_health and release.package != "demo-web":
        raise refuse(f"{where}: only demo-web has a health check to break, not {release.package}")


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold the repository's lock (bounded wait): one build or publish at a time, across processes."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a") as handle:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise SandboxError(
                        f"{root / LOCK_FILE}: another build or publish has held the repository's lock "
                        f"for more than {LOCK_TIMEOUT:.0f} s"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)


def _next_date(state: _State, now: datetime) -> datetime:
    # apt may refuse a Release older than the one it has: dates only move forward.
    if state.last_date is not None and now <= state.last_date:
        return state.last_date + timedelta(seconds=1)
    return now


def _write_indexes(root: Path, releases: tuple[Release, ...], build_day: date, moment: datetime) -> None:
    advisories = [a for a in (r.dated_advisory(build_day) for r in releases) if a is not None]
    # Advisories first: any version an index offers already has its advisory in place.
    write_if_changed(root / ADVISORIES_FILE, render_advisories(advisories))
    _swap_dists(root, render_indexes(root, releases, moment))


def _ensure_locked(root: Path, now: datetime) -> tuple[Release, ...]:
    root.chmod(0o755)
    state = _read_state(root)
    published = _published(root)
    releases = RELEASES + published
    inputs = {"module": _module_digest(), "day": now.date().isoformat()}
    complete = (root / "dists").is_dir() and all((root / r.filename).is_file() for r in releases)
    if state.inputs == inputs and complete:
        return releases
    started = time.monotonic()
    rebuild_debs = state.inputs.get("module") != inputs["module"]
    _build_debs(root, [r for r in releases if rebuild_debs or not (root / r.filename).is_file()])
    wanted = {root / r.filename for r in releases}
    for stale in (root / "pool").rglob("*.deb"):
        if stale not in wanted:
            stale.unlink()
    moment = _next_date(state, now)
    _write_indexes(root, releases, now.date(), moment)
    _write_state(root, _State(inputs=inputs, last_date=moment))
    log.info(
        "apt repository %s built: %d versions in %s, %.2f s (%s)",
        root,
        len(releases),
        ", ".join(SUITES),
        time.monotonic() - started,
        "inputs changed" if state.inputs else "first build",
    )
    return releases


def ensure_repository(layout: SandboxLayout, *, now: datetime | None = None) -> Path:
    """Build the repository if it is missing or its inputs changed; return its directory.

    The inputs are this module (its table and package templates) and the day, since the table's
    advisories are dated relative to it; versions published since are kept and rebuilt too.
    """
    return ensure_repository_at(repository_dir(layout), now=now)


def ensure_repository_at(root: Path, *, now: datetime | None = None) -> Path:
    """ensure_repository for a repository directory of one's own (tests)."""
    with _locked(root):
        _ensure_locked(root, _now(now))
    return root


def publish(
    layout: SandboxLayout,
    package: str,
    version: str,
    suite: str,
    *,
    advisory: Advisory | None = None,
    breaks_health: bool = False,
    now: datetime | None = None,
) -> Path:
    """Publish a new version of a demo package into a suite; return the .deb's path.

    Older versions stay in their suites (rollback needs them). Publishing the same version into the
    same suite again changes nothing.

    :raises PublishRefused: for an unknown package or suite, a malformed version, a version already
        published elsewhere or differently, or an advisory that does not name this package and version.
    :raises SandboxError: when dpkg-deb fails or another publish holds the lock too long.
    """
    return publish_at(
        repository_dir(layout),
        package,
        version,
        suite,
        advisory=advisory,
        breaks_health=breaks_health,
        now=now,
    )


def publish_at(
    root: Path,
    package: str,
    version: str,
    suite: str,
    *,
    advisory: Advisory | None = None,
    breaks_health: bool = False,
    now: datetime | None = None,
) -> Path:
    """publish for a repository directory of one's own (tests)."""
    where = f"publishing {package} {version} into {suite}"
    release = Release(package, version, suite, advisory, breaks_health)
    _check_release(release, where)
    if suite == BASE_SUITE:
        raise PublishRefused(
            f"{where}: {BASE_SUITE} is what hosts are created with; "
            f"publish into {UPDATES_SUITE} or {SECURITY_SUITE}"
        )
    if advisory is not None:
        if (advisory.package, advisory.fixed_version) != (package, version):
            raise PublishRefused(
                f"{where}: advisory {advisory.id} is for {advisory.package} {advisory.fixed_version}, "
                f"not {package} {version}"
            )
        try:
            parse_advisories(render_advisories([advisory]), f"advisory {advisory.id}")
        except AdvisoryFileError as error:
            raise PublishRefused(f"{where}: {error}") from None
    moment = _now(now)
    with _locked(root):
        releases = _ensure_locked(root, moment)
        for existing in releases:
            if (existing.package, existing.version) == (package, version):
                if existing == release:
                    log.info("%s: already published, nothing to do", where)
                    return root / existing.filename
                raise PublishRefused(
                    f"{where}: {package} {version} is already published in {existing.suite}"
                    f"{' (breaking the health check)' if existing.breaks_health else ''}"
                    f"{' with advisory ' + existing.advisory.id if existing.advisory else ''}: "
                    "publish another version"
                )
            other = existing.dated_advisory(moment.date())
            if advisory is not None and other is not None and other.id == advisory.id:
                raise PublishRefused(
                    f"{where}: advisory id {advisory.id} is already used by {existing.package}"
                )
        _build_debs(root, [release])
        published = (*_published(root), release)
        write_if_changed(
            root / PUBLISHED_FILE, json.dumps([_published_entry(r) for r in published], indent=2) + "\n"
        )
        state = _read_state(root)
        date_ = _next_date(state, moment)
        _write_indexes(root, RELEASES + published, date.fromisoformat(state.inputs["day"]), date_)
        _write_state(root, _State(inputs=state.inputs, last_date=date_))
        log.info("%s: published %s", where, release.filename)
        return root / release.filename


__all__ = [
    "ADVISORIES_FILE",
    "BASE_PACKAGES",
    "BASE_SUITE",
    "DEMO_PACKAGES",
    "GUEST_REPO_PATH",
    "HEALTH_COMMAND",
    "HEALTH_FILE",
    "ORIGIN",
    "RELEASES",
    "SECURITY_SUITE",
    "SUITES",
    "SUITE_CLASSIFICATION",
    "SUITE_LABELS",
    "UPDATES_SUITE",
    "AdvisoryTerms",
    "PublishRefused",
    "Release",
    "classify_suite",
    "deb_control",
    "ensure_repository",
    "ensure_repository_at",
    "guest_sources_list",
    "publish",
    "publish_at",
    "render_indexes",
    "repository_dir",
]
