"""The sandbox's SSH keys: one client key, one ed25519 host key per host, authorized_keys, known_hosts.

Host keys live outside the hosts (under <sandbox>/ssh/hosts/<name>/) and are copied into each host at
every boot, so a host reset to its first-boot state keeps its key and every pinned connection and the
known_hosts file stay valid.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cloudops.sandbox.layout import SandboxLayout
from cloudops.sandbox.plan import HostPlan
from cloudops.sandbox.process import write_if_changed


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
    """The client key pair, every host key, authorized_keys and known_hosts of one sandbox.

    A host's address is ``layout.ssh_address(i)`` for its position i in ``hosts``.
    """

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


__all__ = ["SshKeyring"]
