"""The Debian 12 root every sandbox host boots from: built once with debootstrap, then cached read-only.

The root is a minbase bookworm plus openssh-server, python3, python3-apt (Ansible drives the hosts too)
and sudo, fetched from the mirror this machine's apt already uses. It lives in a cache shared by every
sandbox on the machine (``$CLOUDOPS_SANDBOX_CACHE``, default ``${XDG_CACHE_HOME:-~/.cache}/cloudops-sandbox``)
under a name that carries a hash of everything that went into it (suite, mirror, packages, this module's
BUILD_VERSION): change any of them and a new root is built beside the old one, never over it.

A build happens in a temporary directory that is renamed into place only when complete, under a lock, so
two `up`s never both build and nobody ever boots a half-built root. Once in place the root is never
written again: hosts see it as the read-only lower layer of their overlayfs.

If the build breaks: read the build log it names, delete the ``.tmp-*`` directory it left in the cache
(a later build removes stale ones too) and run `cloudops sandbox up` again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cloudops.errors import SandboxError
from cloudops.sandbox.process import POLL_INTERVAL, Binary, Say, run

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("openssh-server", "python3", "python3-apt", "sudo")
# Bump when the build steps below change what ends up in the root: the cache key changes with it.
BUILD_VERSION = 1
CACHE_ENV = "CLOUDOPS_SANDBOX_CACHE"
DEBOOTSTRAP = Path("/usr/sbin/debootstrap")
APT_SOURCES_DIR = Path("/etc/apt")
BUILD_LOCK_TIMEOUT = 900.0  # a cold build by another sandbox takes 1 to 3 minutes on a busy 2-core machine
DEBOOTSTRAP_TIMEOUT = 900.0
INSTALL_TIMEOUT = 600.0
MIRROR_PROBE_TIMEOUT = 10.0

# What a service's postinst runs to start it: 101 means "not allowed". Without it openssh-server's
# postinst would start an sshd on port 22 of this machine (the hosts share its network). It stays in the
# root on purpose: guests have no init system and share the machine's network, so a package update in a
# guest must never start a daemon on the machine's ports either.
POLICY_RC_D = (
    "#!/bin/sh\n# cloudops sandbox: package scripts never start services (no init system here)\nexit 101\n"
)
GUEST_SOURCES_NOTE = "# cloudops sandbox: no Debian sources; the host's apt sources are written per host\n"


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """Return the machine-wide cache directory of sandbox roots (created on demand)."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser().resolve()
    xdg = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(xdg).expanduser().resolve() / "cloudops-sandbox"


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, ""
        elif line[0] in " \t" and key:
            stanza[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()


def apt_mirror(suite: str = SUITE, apt_dir: Path = APT_SOURCES_DIR) -> str:
    """Return the URI of the first apt source of this machine that serves ``suite`` (plain ``deb``).

    Reads ``sources.list.d/*.sources`` (deb822) first, then ``sources.list`` and ``sources.list.d/*.list``.

    :raises SandboxError: when no source serves the suite.
    """
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in _deb822_stanzas(path.read_text(errors="replace")):
            if stanza.get("enabled", "yes").lower() == "no" or "deb" not in stanza.get("types", "").split():
                continue
            if suite in stanza.get("suites", "").split() and stanza.get("uris"):
                return stanza["uris"].split()[0].rstrip("/")
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] != ["deb"]:
                continue
            words = _drop_options(words[1:])
            if len(words) >= 2 and words[1] == suite:
                return words[0].rstrip("/")
    raise SandboxError(
        f"no apt source of this machine serves Debian {suite} (looked in {apt_dir}/sources.list.d/*.sources "
        f"and {apt_dir}/sources.list): add one, the sandbox hosts' root is built from it"
    )


def _drop_options(words: list[str]) -> list[str]:
    """Remove a one-line source's ``[option=value ...]`` block."""
    rest: list[str] = []
    inside = False
    for word in words:
        if word.startswith("["):
            inside = True
        if not inside:
            rest.append(word)
        if word.endswith("]"):
            inside = False
    return rest


@dataclass(frozen=True)
class RootRecipe:
    """Everything that decides what the root holds; its hash names the cached root."""

    suite: str
    mirror: str
    packages: tuple[str, ...]
    variant: str = VARIANT
    build_version: int = BUILD_VERSION

    def as_dict(self) -> dict[str, object]:
        return {
            "suite": self.suite,
            "mirror": self.mirror,
            "packages": sorted(self.packages),
            "variant": self.variant,
            "build_version": self.build_version,
        }

    @property
    def key(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return f"debian-{self.suite}-{self.key}"


def default_recipe() -> RootRecipe:
    """The recipe of this machine: bookworm from the mirror apt uses, with the hosts' packages."""
    return RootRecipe(SUITE, apt_mirror(SUITE), PACKAGES)


def cached_root_dir(recipe: RootRecipe, cache: Path) -> Path:
    """Where the recipe's root lives once built (``<cache>/<name>/root``)."""
    return cache / recipe.name / "root"


def debootstrap_path(environ: Mapping[str, str] | None = None) -> Path:
    """debootstrap, or ``$CLOUDOPS_SANDBOX_DEBOOTSTRAP`` when set."""
    env = os.environ if environ is None else environ
    return Path(env.get("CLOUDOPS_SANDBOX_DEBOOTSTRAP") or DEBOOTSTRAP)


def builder_binaries() -> list[Binary]:
    return [Binary("debootstrap", debootstrap_path(), "debootstrap")]


def _probe_mirror(recipe: RootRecipe) -> None:
    """Fail plainly, naming the mirror, when the archive cannot be reached (before debootstrap's noise)."""
    url = f"{recipe.mirror}/dists/{recipe.suite}/Release"
    try:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=MIRROR_PROBE_TIMEOUT):
            return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SandboxError(
            f"cannot reach the Debian archive at {recipe.mirror} ({url}: {reason}): the sandbox hosts' root "
            f"is not cached yet and must be built from it once; connect this machine to the mirror "
            f"(or copy a built root into the cache) and run `cloudops sandbox up` again"
        ) from None


@contextlib.contextmanager
def _build_lock(cache: Path, recipe: RootRecipe, say: Say) -> Iterator[None]:
    """Hold the cache's build lock for this recipe (bounded wait; the lock dies with its holder)."""
    lock_path = cache / f".{recipe.name}.lock"
    with lock_path.open("a") as handle:
        deadline = time.monotonic() + BUILD_LOCK_TIMEOUT
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    say(f"debian root: another sandbox is building {recipe.name}; waiting for it")
                    told = True
                if time.monotonic() >= deadline:
                    raise SandboxError(
                        f"another process still builds {cache / recipe.name} "
                        f"after {BUILD_LOCK_TIMEOUT:.0f} s "
                        f"(lock {lock_path}): wait for it, or stop it and run `cloudops sandbox up` again"
                    ) from None
                time.sleep(POLL_INTERVAL * 5)
        yield


def _in_build_namespace(root: Path, command: str) -> list[str]:
    """Run ``command`` chrooted in root, with its own /proc, in throw-away mount and PID namespaces."""
    script = 'mount -t proc proc "$1/proc" && exec chroot "$1" /bin/sh -c "$2"'
    return [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--",
        "/bin/sh",
        "-c",
        script,
        "build",
        str(root),
        command,
    ]


def _build(recipe: RootRecipe, tmp_top: Path, log: Path, say: Say) -> None:
    root = tmp_top / "root"
    root.mkdir(parents=True)
    started = time.monotonic()
    say(
        f"debian root: debootstrap --variant={recipe.variant} {recipe.suite} from {recipe.mirror} "
        "(about a minute)"
    )
    try:
        run(
            [str(debootstrap_path()), f"--variant={recipe.variant}", recipe.suite, str(root), recipe.mirror],
            what=f"debootstrap {recipe.suite} from {recipe.mirror}",
            log_path=log,
            timeout=DEBOOTSTRAP_TIMEOUT,
        )
    except SandboxError as exc:
        raise SandboxError(
            f"building the sandbox hosts' root from the Debian archive at {recipe.mirror} failed: {exc}"
        ) from None
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    install = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends " + " ".join(
        sorted(recipe.packages)
    )
    run(
        _in_build_namespace(root, install),
        what=f"installing {', '.join(recipe.packages)} into the sandbox hosts' root",
        log_path=log,
        timeout=INSTALL_TIMEOUT,
    )
    run(
        _in_build_namespace(root, "apt-get clean"),
        what="cleaning the sandbox hosts' root",
        log_path=log,
        timeout=120,
    )
    _clean(root)
    manifest = {**recipe.as_dict(), "built_seconds": round(time.monotonic() - started, 1)}
    (tmp_top / "recipe.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _clean(root: Path) -> None:
    """Remove what must differ per host or must not reach a guest (keys, Debian sources, DNS)."""
    lists = root / "var/lib/apt/lists"
    for entry in lists.iterdir():
        if entry.is_file() and entry.name != "lock":
            entry.unlink()
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/apt/sources.list").write_text(GUEST_SOURCES_NOTE)
    for extra in (root / "etc/apt/sources.list.d").glob("*"):
        extra.unlink()
    for per_host in ("etc/hostname", "etc/resolv.conf", "etc/machine-id", "var/lib/dbus/machine-id"):
        path = root / per_host
        if path.is_file() or path.is_symlink():
            path.unlink()


def ensure_base_root(
    say: Say, *, log: Path, environ: Mapping[str, str] | None = None, recipe: RootRecipe | None = None
) -> Path:
    """Return the cached root of this machine's recipe, building it first when it is not cached.

    :raises SandboxError: when it must be built but the archive cannot be reached, debootstrap is
        missing or the build fails (naming the mirror and the log).
    """
    cache = cache_root(environ)
    recipe = recipe or default_recipe()
    final = cached_root_dir(recipe, cache)
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache, recipe, say):
        if final.is_dir():  # built by whoever held the lock before us
            return final
        problems = [p for p in (b.problem() for b in builder_binaries()) if p]
        if problems:
            raise SandboxError("; ".join(problems) + " (it builds the sandbox hosts' root once)")
        _probe_mirror(recipe)
        for stale in cache.glob(f".tmp-{recipe.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp_top = cache / f".tmp-{recipe.name}-{os.getpid()}"
        started = time.monotonic()
        try:
            _build(recipe, tmp_top, log, say)
            tmp_top.rename(final.parent)
        except BaseException:
            shutil.rmtree(tmp_top, ignore_errors=True)
            raise
        say(f"debian root: built {final} in {time.monotonic() - started:.0f} s (log {log})")
    return final


__all__ = [
    "CACHE_ENV",
    "PACKAGES",
    "SUITE",
    "RootRecipe",
    "apt_mirror",
    "builder_binaries",
    "cache_root",
    "cached_root_dir",
    "default_recipe",
    "ensure_base_root",
]
