"""The sandbox's fleet hosts: Debian 12 systems of their own, each booted by its own supervisor.

Each host is an overlayfs over the shared, cached Debian root (debian_root), in its own PID, mount, UTS,
IPC and time namespaces (host_boot), with its own hostname, boot id, uptime, processes, dpkg database and
ed25519 host key, and an sshd on a loopback address of its own (127.0.0.11, .12, ... on the sandbox's ssh
port). The guests share the machine's network namespace: Linux routes all of 127.0.0.0/8 to loopback.

Created once ("first-boot state"): the user ``ops`` (passwordless sudo), root's and ops's
authorized_keys (the sandbox's client key), the sandbox's apt repository as the only apt source, and the
repository's BASE_PACKAGES at their base versions. `cloudops sandbox hosts reset` brings a host back to
that state (its upper layer wiped, then created again); its host key stays the same.

Readiness is an actual login with the client key that trusts only known_hosts (paramiko RejectPolicy),
the same check Airflow's SSHHook makes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudops.errors import SandboxError
from cloudops.sandbox import apt_repo, debian_root
from cloudops.sandbox.host_boot import (
    CONTROL_MOUNT,
    GUEST_INIT,
    POWEROFF_REQUEST,
    REBOOT_REQUEST,
    HostConfig,
    HostPaths,
    namespace_command,
)
from cloudops.sandbox.host_keys import SshKeyring
from cloudops.sandbox.layout import SandboxLayout
from cloudops.sandbox.plan import HostPlan
from cloudops.sandbox.process import (
    RUNNING,
    STALE,
    Binary,
    Daemon,
    Say,
    run,
    spawn_detached,
    stop_daemon,
    wait_until,
    write_if_changed,
)

GUEST_USER = "ops"
GUEST_UID = 1100  # fixed, so that its files can be written from outside the host
REBOOT_DELAY = 2.0
BOOT_TIMEOUT = 60.0
PROVISION_TIMEOUT = 300.0
MIN_KERNEL = (5, 6)  # time namespaces
CAP_SYS_ADMIN = 21
UNSHARE = Path("/usr/bin/unshare")

HTTP_LISTEN = "/etc/cloudops-sandbox/http-listen"
HEALTH_PAGE = "/usr/local/sbin/sandbox-health-page"
HEALTH_STATUS = "/var/lib/sandbox-http/status"
HTTP_HEALTH_PATH = "/health"
# The health page: GET /health answers 200 "OK", or what HEALTH_STATUS says: a status code (e.g. 500),
# or "hang" (accept and never answer), so that tests can break the endpoint from inside the host.
HEALTH_PAGE_SCRIPT = f'''#!/usr/bin/python3
"""Health page of this cloudops sandbox host: GET {HTTP_HEALTH_PATH} -> 200 OK, or as {HEALTH_STATUS} says."""
import http.server
import pathlib
import sys
import time

STATUS = pathlib.Path("{HEALTH_STATUS}")


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "{HTTP_HEALTH_PATH}":
            self.send_error(404)
            return
        try:
            mode = STATUS.read_text().split()[0]
        except (OSError, IndexError):
            mode = "200"
        if mode == "hang":
            time.sleep(3600)
            return
        code = int(mode) if mode.isdigit() and 100 <= int(mode) <= 599 else 500
        body = b"OK\\n" if code == 200 else b"FAIL\\n"
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Page).serve_forever()
'''

SANDBOX_INIT = f"""#!/bin/bash
# PID 1 of this cloudops sandbox host (it has no init system). Started at every boot by the host's
# supervisor outside; when it exits, every process of the host dies and the supervisor decides whether
# the host boots again (see {CONTROL_MOUNT}/ and `reboot`).
trap 'kill -TERM "$sshd" 2>/dev/null; wait "$sshd"; exit 0' TERM INT
mkdir -p -m 0755 /run/sshd /run/lock
/usr/sbin/sshd -D -E /var/log/sshd.log &
sshd=$!
# The health page, on the one host that serves the sandbox's HTTP endpoints (it has this file).
if [ -f {HTTP_LISTEN} ]; then
    /usr/bin/python3 {HEALTH_PAGE} $(cat {HTTP_LISTEN}) >> /var/log/sandbox-http.log 2>&1 &
fi
while kill -0 "$sshd" 2>/dev/null; do wait "$sshd"; done
echo "$(date -u +%FT%TZ) sshd exited: the host goes down" >> /var/log/sandbox-init.log
exit 1
"""

REBOOT = f"""#!/bin/sh
# `reboot` on this cloudops sandbox host: ask the supervisor outside for a reboot, then stop PID 1 after
# 1 s (so that this command returns, as on a real host before the connection drops). The host comes back
# with a new boot id, an uptime near 0 and an empty /run.
if [ "$(id -u)" != 0 ]; then echo "reboot: must be root" >&2; exit 1; fi
request={CONTROL_MOUNT}/${{SANDBOX_REQUEST:-{REBOOT_REQUEST}}}
echo "$(date -u +%FT%TZ) $0 $*" > "$request"
setsid -f /bin/sh -c 'sleep 1; kill -TERM 1' </dev/null >/dev/null 2>&1
exit 0
"""

SHUTDOWN = f"""#!/bin/sh
# `shutdown` on this cloudops sandbox host: -r reboots, -h/-P/poweroff power off (the host stays down
# until `cloudops sandbox hosts start`), -c cancels nothing. The time argument is ignored: it acts now.
action=poweroff
for arg in "$@"; do
    case "$arg" in
        -r|--reboot) action=reboot ;;
        -c) exit 0 ;;
    esac
done
case "$(basename "$0")" in reboot) action=reboot ;; poweroff|halt) action=poweroff ;; esac
if [ "$action" = reboot ]; then exec /usr/local/sbin/reboot; fi
SANDBOX_REQUEST={POWEROFF_REQUEST} exec /usr/local/sbin/reboot
"""

# Created once, chrooted in the new host (the apt steps only when the sandbox has a repository).
PROVISION_USERS = (
    f"set -e; id {GUEST_USER} >/dev/null 2>&1 || useradd --create-home --uid {GUEST_UID} --user-group "
    f"--shell /bin/bash {GUEST_USER}; usermod -p '*' {GUEST_USER}; "
    f"install -d -m 0700 -o root -g root /root/.ssh; "
    f"install -d -m 0700 -o {GUEST_USER} -g {GUEST_USER} /home/{GUEST_USER}/.ssh"
)
APT_OPTIONS = "-q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"


def host_problems() -> list[str]:
    """Say plainly why this machine cannot run sandbox hosts (empty when it can)."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append(
            "sandbox hosts need root (they mount overlayfs and create namespaces): run `cloudops sandbox up` "
            "as root or with sudo"
        )
    else:
        try:
            cap_line = next(
                line
                for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("CapEff:")
            )
            if not int(cap_line.split()[1], 16) >> CAP_SYS_ADMIN & 1:
                problems.append(
                    "sandbox hosts need CAP_SYS_ADMIN (mounts, namespaces), which this process lacks: "
                    "run on a "
                    "machine or in a privileged container"
                )
        except (OSError, StopIteration, ValueError):
            problems.append("cannot read CapEff from /proc/self/status to check for CAP_SYS_ADMIN")
    release = os.uname().release
    match = re.match(r"(\d+)\.(\d+)", release)
    if match is None or (int(match[1]), int(match[2])) < MIN_KERNEL:
        problems.append(
            f"sandbox hosts need Linux {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer (time namespaces); "
            f"this kernel is {release}"
        )
    return problems


def _guest_sshd_config(host: HostPlan, address: str, port: int) -> str:
    lines = [
        f"# Written by `cloudops sandbox up` at every boot: sandbox host {host.name}.",
        f"ListenAddress {address}:{port}",
        "HostKey /etc/ssh/ssh_host_ed25519_key",
        f"AllowUsers root {GUEST_USER}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        # PAM's session modules (pam_loginuid, pam_systemd) need what these hosts lack; keys need no PAM.
        "UsePAM no",
        "UseDNS no",
        "PrintMotd no",
        "X11Forwarding no",
        f"SetEnv CLOUDOPS_SANDBOX_HOST={host.name} CLOUDOPS_SANDBOX_FLEET={host.fleet}",
    ]
    return "\n".join(lines) + "\n"


class HostFleet:
    """What the hosts of one sandbox share: the cached root, the apt repository, the SSH keys.

    The root and the repository are made ready once per process, by whichever host needs them first.
    """

    def __init__(self, layout: SandboxLayout, hosts: tuple[HostPlan, ...]) -> None:
        self.layout = layout
        self.hosts = hosts
        self.keyring = SshKeyring(layout, hosts)
        self._lock = threading.Lock()
        self._template_lock = threading.Lock()
        self._template_error: SandboxError | None = None
        self._root: Path | None = None
        self._repository: Path | None = None

    @property
    def dir(self) -> Path:
        return self.layout.dir / "hosts"

    def paths(self, host: HostPlan) -> HostPaths:
        return HostPaths(self.dir / host.name)

    def base_root(self, say: Say) -> Path:
        with self._lock:
            if self._root is None:
                self._root = debian_root.ensure_base_root(say, log=self.layout.log_file("debian-root"))
            return self._root

    def repository(self) -> Path:
        with self._lock:
            if self._repository is None:
                self._repository = apt_repo.ensure_repository(self.layout)
            return self._repository

    @staticmethod
    def first_boot_state(config: HostConfig) -> str:
        """Name what a new host starts from: the root, and a hash of how it is provisioned."""
        recipe = json.dumps([PROVISION_USERS, APT_OPTIONS, list(apt_repo.BASE_PACKAGES)])
        return f"{Path(config.lower).parent.name}+{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"

    def first_boot_layer(self, config: HostConfig, say: Say) -> tuple[Path, str]:
        """Return the upper layer every new host starts from, and its state name; build it once.

        Built like a host (users, then the repository's BASE_PACKAGES installed with apt inside it), in
        ``<sandbox>/hosts/.first-boot-<state>/``; new and reset hosts get a copy of its upper layer, so
        resetting 30 hosts takes seconds instead of 30 apt runs.
        """
        state = self.first_boot_state(config)
        with self._template_lock:
            if self._template_error is not None:
                raise self._template_error
            top = self.dir / f".first-boot-{state}"
            if (top / "upper").is_dir():
                return top / "upper", state
            for stale in self.dir.glob(".first-boot-*"):
                shutil.rmtree(stale, ignore_errors=True)
            started = time.monotonic()
            building = HostPaths(self.dir / f".building-{state}")
            shutil.rmtree(building.top, ignore_errors=True)
            building.make_dirs()
            # The only apt source a host ever has; each host gets it again at every boot (guest/).
            write_if_changed(building.guest / "etc/apt/sources.list", apt_repo.guest_sources_list())
            template = HostConfig(
                name="first-boot",
                lower=config.lower,
                repository=config.repository,
                guest_repository=config.guest_repository,
                reboot_delay_seconds=config.reboot_delay_seconds,
            )
            steps = [PROVISION_USERS]
            if apt_repo.BASE_PACKAGES:
                steps.append(
                    f"apt-get {APT_OPTIONS} update && DEBIAN_FRONTEND=noninteractive apt-get {APT_OPTIONS} "
                    f"install -y --no-install-recommends {' '.join(apt_repo.BASE_PACKAGES)} && apt-get clean"
                )
            log = self.layout.log_file("hosts-first-boot")
            try:
                run(
                    namespace_command(template, building, boottime_offset=None, provision=" && ".join(steps)),
                    what="building the hosts' first-boot state (users, base packages)",
                    log_path=log,
                    timeout=PROVISION_TIMEOUT,
                )
            except SandboxError as exc:
                # Every host waits for this one build: they all fail with one short message, not 36 tries.
                tail = str(exc).rsplit("\n", 3)[-3:]
                self._template_error = SandboxError(
                    f"building the hosts' first-boot state failed; see {log}: " + " | ".join(tail)
                )
                raise self._template_error from None
            building.top.rename(top)
            say(f"hosts: first-boot state {state} built in {time.monotonic() - started:.1f} s")
            return top / "upper", state

    def requirements(self) -> list[str]:
        """Problems that stop any host from starting (checked before anything starts)."""
        problems = host_problems()
        missing_unshare = Binary("unshare", UNSHARE, "util-linux").problem()
        if missing_unshare:
            problems.append(missing_unshare)
        cache = debian_root.cache_root()
        try:
            recipe = debian_root.default_recipe()
        except SandboxError as exc:
            return [*problems, str(exc)]
        if not debian_root.cached_root_dir(recipe, cache).is_dir():
            problems += [p for p in (b.problem() for b in debian_root.builder_binaries()) if p]
        return problems


@dataclass(frozen=True)
class SupervisorDaemon(Daemon):
    """A host supervisor's pid file: its command line must end with exactly this host's directory
    (a plain substring test would take web-10's supervisor for web-1's)."""

    def _matches(self, pid: int) -> bool:
        if not super()._matches(pid):
            return False
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            return False
        return self.marker.endswith(" " + argv[-1].decode(errors="replace"))


class SandboxHost:
    """One fleet host: its supervisor daemon, its files, its Airflow connection."""

    def __init__(
        self, fleet: HostFleet, host: HostPlan, index: int, http_conn_ids: tuple[str, ...] = ()
    ) -> None:
        self.fleet, self.layout, self.host = fleet, fleet.layout, host
        self.name = f"host-{host.name}"
        self.paths = fleet.paths(host)
        self.ip = self.layout.ssh_address(index)
        self.port = self.layout.port("ssh")
        self.address = f"{self.ip}:{self.port}"
        self.log = self.layout.log_file(self.name)
        # The supervisor's command line names the host's directory: unique to this sandbox.
        self.daemon: Daemon = SupervisorDaemon(
            self.layout.pid_file(self.name), marker=f"host_supervisor {self.paths.top}"
        )
        self.detail = f"host {host.name} (fleet {host.fleet})"
        self.login = GUEST_USER
        # The catalog's HTTP endpoints, served by this host's health page (the first host only).
        self.http_conn_ids = http_conn_ids
        self.http_port = self.layout.port("http") if http_conn_ids else None
        if self.http_port is not None:
            self.detail += f", health page http://{self.ip}:{self.http_port}{HTTP_HEALTH_PATH}"

    @property
    def keyring(self) -> SshKeyring:
        return self.fleet.keyring

    def binaries(self) -> list[Binary]:
        return []

    def endpoints(self) -> list[tuple[str, int]]:
        return [(self.ip, self.port)] + ([(self.ip, self.http_port)] if self.http_port else [])

    # -- what goes into the host ---------------------------------------------------------------------

    def _write_guest_files(self) -> None:
        """(Re)write guest/, copied into the host at every boot; touch nothing that did not change."""
        guest = self.paths.guest
        client_public = self.keyring.client_key.with_suffix(".pub").read_text()
        key = self.keyring.host_key_file(self.host)
        files: list[tuple[str, str, int, int]] = [
            ("etc/hostname", f"{self.host.name}\n", 0o644, 0),
            ("etc/hosts", f"127.0.0.1 localhost\n{self.ip} {self.host.name}\n", 0o644, 0),
            ("etc/ssh/ssh_host_ed25519_key", key.read_text(), 0o600, 0),
            ("etc/ssh/ssh_host_ed25519_key.pub", key.with_suffix(".pub").read_text(), 0o644, 0),
            (
                "etc/ssh/sshd_config.d/cloudops-sandbox.conf",
                _guest_sshd_config(self.host, self.ip, self.port),
                0o644,
                0,
            ),
            ("etc/sudoers.d/cloudops-ops", f"{GUEST_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n", 0o440, 0),
            ("etc/apt/sources.list", apt_repo.guest_sources_list(), 0o644, 0),
            ("root/.ssh/authorized_keys", client_public, 0o600, 0),
            (f"home/{GUEST_USER}/.ssh/authorized_keys", client_public, 0o600, GUEST_UID),
            (GUEST_INIT.lstrip("/"), SANDBOX_INIT, 0o755, 0),
            ("usr/local/sbin/reboot", REBOOT, 0o755, 0),
            ("usr/local/sbin/shutdown", SHUTDOWN, 0o755, 0),
            (HEALTH_PAGE.lstrip("/"), HEALTH_PAGE_SCRIPT, 0o755, 0),
        ]
        if self.http_port is not None:
            files.append((HTTP_LISTEN.lstrip("/"), f"{self.ip} {self.http_port}\n", 0o644, 0))
        # Directories as the guest has them (tar keeps existing ones as they are; these are for new ones).
        for relative, mode, uid in (
            ("root", 0o700, 0),
            ("root/.ssh", 0o700, 0),
            ("home", 0o755, 0),
            (f"home/{GUEST_USER}", 0o755, GUEST_UID),
            (f"home/{GUEST_USER}/.ssh", 0o700, GUEST_UID),
        ):
            path = guest / relative
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(mode)
            os.chown(path, uid, uid)
        for relative, text, mode, uid in files:
            path = guest / relative
            write_if_changed(path, text, mode=mode)
            if path.stat().st_uid != uid:
                os.chown(path, uid, uid)
        # Where tools look for them by absolute path (Ansible searches /sbin, /usr/sbin, ...).
        for name, target in (
            ("reboot", "/usr/local/sbin/reboot"),
            ("shutdown", "/usr/local/sbin/shutdown"),
            ("poweroff", "/usr/local/sbin/shutdown"),
            ("halt", "/usr/local/sbin/shutdown"),
        ):
            link = guest / "usr/sbin" / name
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.unlink(missing_ok=True)
                link.symlink_to(target)

    def _config(self, root: Path, repository: Path) -> HostConfig:
        return HostConfig(
            name=self.host.name,
            lower=str(root),
            repository=str(repository),
            guest_repository=apt_repo.GUEST_REPO_PATH,
            reboot_delay_seconds=REBOOT_DELAY,
        )

    def _create(self, config: HostConfig, say: Say) -> None:
        """Give the host its first-boot state: a real copy (never hardlinks) of the first-boot layer."""
        started = time.monotonic()
        template, state = self.fleet.first_boot_layer(config, say)
        for layer in (self.paths.upper, self.paths.work):
            shutil.rmtree(layer, ignore_errors=True)
        # cp -a keeps owners, modes, xattrs and overlayfs whiteouts; the host then writes in its own copy.
        run(
            ["cp", "-a", str(template), str(self.paths.upper)],
            what=f"{self.name}: copying its first-boot state",
            log_path=self.log,
            timeout=PROVISION_TIMEOUT,
        )
        self.paths.make_dirs()
        write_if_changed(self.paths.created_file, state + "\n")
        say(f"{self.name}: created ({state}) in {time.monotonic() - started:.1f} s")

    def _created_from(self) -> str | None:
        try:
            return self.paths.created_file.read_text().strip()
        except FileNotFoundError:
            return None

    def prepare(self, say: Say) -> None:
        """Make the host's files ready to boot: keys, guest files, config; create it when it is new."""
        self.keyring.ensure()
        root = self.fleet.base_root(say)
        repository = self.fleet.repository()
        self.paths.make_dirs()
        self._write_guest_files()
        config = self._config(root, repository)
        write_if_changed(self.paths.config_file, self.paths.config_text(config))
        created_from = self._created_from()
        wanted = self.fleet.first_boot_state(config)
        if created_from != wanted:
            if created_from is not None:
                say(f"{self.name}: its first-boot state was {created_from}, it is now {wanted}: recreating")
            self._create(config, say)

    # -- running it ----------------------------------------------------------------------------------

    def login_works(self, user: str | None = None) -> bool:
        """Log in with the client key, trusting only known_hosts, and run `true`.

        :raises SandboxError: when the host key does not match or the key is refused.
        """
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(str(self.keyring.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.ip,
                port=self.port,
                username=user or self.login,
                key_filename=str(self.keyring.client_key),
                look_for_keys=False,
                allow_agent=False,
                timeout=5,
                banner_timeout=5,
                auth_timeout=5,
            )
            _, stdout, _ = client.exec_command("true", timeout=10)
            return bool(stdout.channel.recv_exit_status() == 0)
        except (paramiko.BadHostKeyException, paramiko.AuthenticationException) as exc:
            raise SandboxError(
                f"{self.name} on {self.address}: {exc}; see {self.log} and "
                f"{self.paths.upper}/var/log/sshd.log "
                f"(delete {self.keyring.known_hosts} and run up again if the keys were regenerated)"
            ) from None
        finally:
            client.close()

    def health_page_answers(self) -> bool:
        """Whether the health page answers at all (any status: tests set it to 500 on purpose)."""
        import http.client

        if self.http_port is None:
            return True
        connection = http.client.HTTPConnection(self.ip, self.http_port, timeout=2)
        try:
            connection.request("GET", HTTP_HEALTH_PATH)
            return connection.getresponse().status > 0
        finally:
            connection.close()

    def _wait_for_health_page(self, say: Say) -> None:
        if self.http_port is None:
            return
        try:
            wait_until(
                self.health_page_answers, what=f"{self.name} health page", log_path=self.log, timeout=20
            )
        except SandboxError:
            # A host booted before it had a health page: it gets one at its next boot.
            say(
                f"{self.name}: its health page on {self.ip}:{self.http_port} does not answer; "
                f"`cloudops sandbox hosts stop {self.host.name}` and `start` it to boot it with one"
            )

    def ensure(self, say: Say) -> None:
        """Start this host's supervisor if needed (creating the host first) and prove a pinned-key login."""
        state, pid = self.daemon.state()
        if state == RUNNING:
            self.keyring.ensure()
            self.fleet.repository()  # kept current for running hosts too (bound in, so they see it)
            # It may be rebooting, or just powered on again by `hosts start`: give it its boot time.
            wait_until(
                self.login_works,
                what=f"{self.name} (supervisor says: {self.paths.read_state().get('state', 'unknown')})",
                log_path=self.log,
                timeout=BOOT_TIMEOUT,
                alive=lambda: self.daemon.state()[0] == RUNNING,
            )
            self._wait_for_health_page(say)
            say(f"{self.name}: already running (supervisor pid {pid}) on {self.address}")
            return
        if state == STALE:
            self.daemon.forget()
        self.prepare(say)
        started = time.monotonic()
        proc = spawn_detached(
            [sys.executable, "-m", "cloudops.sandbox.host_supervisor", str(self.paths.top)],
            log_path=self.log,
        )
        self.daemon.record(proc.pid)
        wait_until(
            self.login_works,
            what=self.name,
            log_path=self.log,
            timeout=BOOT_TIMEOUT,
            # The child itself, not its pid file: right after the fork its command line is still ours.
            alive=lambda: proc.poll() is None,
        )
        self._wait_for_health_page(say)
        say(
            f"{self.name}: booted in {time.monotonic() - started:.1f} s "
            f"(supervisor pid {proc.pid}) on {self.address}"
        )

    def connections(self) -> dict[str, dict[str, Any]]:
        http = {
            conn_id: {"conn_type": "http", "host": self.ip, "port": self.http_port, "schema": "http"}
            for conn_id in self.http_conn_ids
        }
        return http | {
            self.host.ssh_conn_id: {
                "conn_type": "ssh",
                "host": self.ip,
                "port": self.port,
                "login": self.login,
                "extra": {
                    "key_file": str(self.keyring.client_key),
                    "host_key": self.keyring.host_public_key(self.host),
                    "conn_timeout": 10,
                },
            }
        }

    def stop(self, say: Say) -> None:
        """Stop this host (its supervisor stops its PID 1, which ends every process of the host)."""
        stop_daemon(self.daemon, what=self.name, say=say, timeout=30)

    def reset(self, say: Say) -> None:
        """Bring the host back to its first-boot state: stop it, wipe its upper layer, create and boot it."""
        self.stop(say)
        self.paths.created_file.unlink(missing_ok=True)
        for layer in (self.paths.upper, self.paths.work):
            shutil.rmtree(layer, ignore_errors=True)
        for leftover in self.paths.control.glob("*"):
            leftover.unlink()
        self.ensure(say)

    @property
    def status_detail(self) -> str:
        state = self.paths.read_state()
        if not state:
            return self.detail
        return f"{self.detail}: {state.get('state')} (boot {state.get('boots')})"


def host_paths(layout: SandboxLayout, host_name: str) -> HostPaths:
    """The files of one host of this sandbox; ``.control`` is where tests drop fault files
    (host_boot.NEVER_COME_BACK, host_boot.BOOT_DELAY_FILE) and ``read_state()`` what its supervisor says."""
    return HostPaths(layout.dir / "hosts" / host_name)


def sandbox_mounts(layout: SandboxLayout) -> list[str]:
    """Mount points under the sandbox dir in this process's mount namespace (none while hosts run)."""
    prefix = str(layout.dir) + "/"
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2:
            point = fields[1].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return found


def unmount_leftovers(layout: SandboxLayout, say: Say) -> None:
    """Unmount anything still mounted under the sandbox dir (deepest first); say what was left."""
    for point in sorted(sandbox_mounts(layout), key=len, reverse=True):
        run(
            ["umount", "-l", point], what=f"unmounting {point}", log_path=layout.log_file("hosts"), timeout=30
        )
        say(f"unmounted a leftover mount {point}")


__all__ = [
    "GUEST_USER",
    "HostFleet",
    "SandboxHost",
    "host_paths",
    "host_problems",
    "sandbox_mounts",
    "unmount_leftovers",
]
