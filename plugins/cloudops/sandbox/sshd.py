"""The sandbox's fleet hosts: one sshd per host, each on its own loopback address with its own host key.

Linux routes all of 127.0.0.0/8 to the loopback interface, so 127.0.0.11, 127.0.0.12, ... need no setup
and each "host" has an address of its own, as the runbooks expect. Every host accepts one client key for
the current OS user; a known_hosts file pins every host key, and readiness is an actual login that rejects
unknown keys (paramiko RejectPolicy), the same check Airflow's SSHHook makes.
"""

from __future__ import annotations

import getpass
import os
import threading
from pathlib import Path
from typing import Any

from cloudops.errors import SandboxError
from cloudops.sandbox.layout import SandboxLayout
from cloudops.sandbox.plan import HostPlan
from cloudops.sandbox.process import (
    RUNNING,
    STALE,
    Binary,
    Daemon,
    Say,
    run,
    stop_daemon,
    wait_until,
    write_if_changed,
)

PRIVSEP_DIR = Path("/run/sshd")  # sshd running as root refuses to start without it


def _new_ed25519_key(comment: str) -> tuple[str, str]:
    """Return (OpenSSH private key text, "ssh-ed25519 AAAA... comment") for a fresh key pair."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, f"{public} {comment}"


class SshKeyring:
    """The client key pair, every host key, authorized_keys and known_hosts of one sandbox."""

    def __init__(self, layout: SandboxLayout, hosts: tuple[HostPlan, ...]) -> None:
        self.layout = layout
        self.hosts = hosts
        self.client_key = layout.ssh_dir / "id_ed25519"
        self.authorized_keys = layout.ssh_dir / "authorized_keys"
        self.known_hosts = layout.ssh_dir / "known_hosts"
        self._ready = False
        self._lock = threading.Lock()

    def host_dir(self, host: HostPlan) -> Path:
        return self.layout.ssh_dir / "hosts" / host.name

    def host_key_file(self, host: HostPlan) -> Path:
        return self.host_dir(host) / "ssh_host_ed25519_key"

    def host_public_key(self, host: HostPlan) -> str:
        """Return "ssh-ed25519 AAAA..." (type and key, no comment): the SSH connection's host_key extra."""
        text = self.host_key_file(host).with_suffix(".pub").read_text().split()
        return f"{text[0]} {text[1]}"

    @staticmethod
    def _ensure_pair(private_path: Path, comment: str) -> None:
        public_path = private_path.with_suffix(".pub")
        if private_path.exists() and public_path.exists():
            return
        private, public = _new_ed25519_key(comment)
        write_if_changed(private_path, private, mode=0o600)
        write_if_changed(public_path, public + "\n", mode=0o644)

    def ensure(self) -> None:
        """Create missing keys and (re)write authorized_keys and known_hosts when they differ."""
        with self._lock:
            if self._ready:
                return
            self.layout.ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._ensure_pair(self.client_key, f"cloudops-sandbox-client@{self.layout.dir}")
            for host in self.hosts:
                self.host_dir(host).mkdir(parents=True, exist_ok=True)
                self._ensure_pair(self.host_key_file(host), f"{host.name}@cloudops-sandbox")
            client_public = self.client_key.with_suffix(".pub").read_text()
            write_if_changed(self.authorized_keys, client_public, mode=0o600)
            lines = [
                f"[{self.layout.ssh_address(i)}]:{self.layout.port('ssh')} {self.host_public_key(host)}"
                for i, host in enumerate(self.hosts)
            ]
            write_if_changed(self.known_hosts, "\n".join(lines) + "\n", mode=0o644)
            self._ready = True


class SshdHost:
    """One fleet host: an sshd with its own address, host key, config, pid file and log."""

    def __init__(self, layout: SandboxLayout, keyring: SshKeyring, host: HostPlan, index: int) -> None:
        self.layout, self.keyring, self.host = layout, keyring, host
        self.name = f"sshd-{host.name}"
        self.ip = layout.ssh_address(index)
        self.port = layout.port("ssh")
        self.address = f"{self.ip}:{self.port}"
        self.config = keyring.host_dir(host) / "sshd_config"
        self.log = layout.log_file(self.name)
        self.daemon = Daemon(layout.pid_file(self.name), marker=f"-f {self.config}")
        self.detail = f"host {host.name} (fleet {host.fleet})"
        self.login = getpass.getuser()

    def binaries(self) -> list[Binary]:
        return [Binary("sshd", self.layout.sshd, "openssh-server")]

    def endpoints(self) -> list[tuple[str, int]]:
        return [(self.ip, self.port)]

    def _config_text(self) -> str:
        lines = [
            f"# Written by `cloudops sandbox up`: sandbox host {self.host.name}.",
            f"ListenAddress {self.address}",
            f"PidFile {self.daemon.pid_file}",
            f"HostKey {self.keyring.host_key_file(self.host)}",
            f"AuthorizedKeysFile {self.keyring.authorized_keys}",
            f"AllowUsers {self.login}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            # The keys live under the sandbox dir, which may sit in a world-writable /tmp (tests).
            "StrictModes no",
            # PAM's session modules (pam_loginuid) fail in containers; key logins do not need PAM.
            "UsePAM no",
            "UseDNS no",
            "PrintMotd no",
            "X11Forwarding no",
            "LogLevel INFO",
            "Subsystem sftp internal-sftp",
            f"SetEnv CLOUDOPS_SANDBOX_HOST={self.host.name} CLOUDOPS_SANDBOX_FLEET={self.host.fleet}",
        ]
        return "\n".join(lines) + "\n"

    def login_works(self) -> bool:
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
                username=self.login,
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
                f"{self.name} on {self.address}: {exc}; see {self.log} "
                f"(delete {self.keyring.known_hosts} and run up again if the keys were regenerated)"
            ) from None
        finally:
            client.close()

    def ensure(self, say: Say) -> None:
        """Start this host's sshd if needed and prove that a pinned-key login works."""
        self.keyring.ensure()
        state, pid = self.daemon.state()
        if state == RUNNING:
            self.login_works()
            say(f"{self.name}: already running (pid {pid}) on {self.address}")
            return
        if state == STALE:
            self.daemon.forget()
        write_if_changed(self.config, self._config_text())
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        # sshd binds, then daemonizes and writes its PidFile; it must be called by absolute path.
        run(
            [str(self.layout.sshd), "-f", str(self.config), "-E", str(self.log)],
            what=f"{self.name}: start",
            log_path=self.log,
            timeout=30,
        )
        wait_until(self.login_works, what=self.name, log_path=self.log, timeout=30)
        say(f"{self.name}: started (pid {self.daemon.recorded_pid()}) on {self.address}")

    def connections(self) -> dict[str, dict[str, Any]]:
        return {
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
        """Stop this host's sshd if this sandbox started it."""
        stop_daemon(self.daemon, what=self.name, say=say, timeout=15)


__all__ = ["SshKeyring", "SshdHost"]
