"""Run commands on fleet hosts over SSH through the provider's SSHHook, host keys always verified.

The connection must carry the host's key (the ``host_key`` extra) or the host must be in the
worker's known_hosts. A connection whose extras weaken that is refused before connecting, naming the
connection, never obeyed. In the pinned ssh provider (7.0.1) these are:
- ``no_host_key_check`` (and its deprecated alias ``ignore_hostkey_verification``): auto-adds any key;
- ``allow_host_key_change``: skips the system known_hosts and accepts any key of a host verified there;
- ``known_hosts: none`` (read by the provider's async hook): no verification at all;
- no ``host_key`` while the worker has no known_hosts file: nothing to verify the host against.
Other extras (``look_for_keys``, ``compress``, ``ciphers``, ...) do not touch host keys and are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudops.connections import get_connection
from cloudops.errors import CloudOpsError

# Extras that switch host key checks off when set to anything but false.
WEAKENING_EXTRAS = ("no_host_key_check", "ignore_hostkey_verification", "allow_host_key_change")
_FALSE = ("false", "0", "no", "off", "")
# paramiko's SSHClient.load_system_host_keys() reads this file of the worker's user.
SYSTEM_KNOWN_HOSTS = "~/.ssh/known_hosts"

log = logging.getLogger(__name__)


class HostKeyError(CloudOpsError):
    """The host's key is unknown or differs from the one on record."""


class InsecureConnectionError(CloudOpsError):
    """The SSH connection would not verify the host's key; it is refused, never obeyed."""


class SshCommandTimeout(CloudOpsError):
    """The host accepted the connection but the command did not finish in time."""


class SshConnectionError(CloudOpsError):
    """The SSH connection's settings cannot be used (a malformed host_key, no host)."""


def check_host_key_policy(ssh_conn_id: str, extra: dict[str, Any], *, used_by: str) -> None:
    """Refuse a connection whose extras weaken host key checking; name the connection and the extra.

    :raises InsecureConnectionError: naming every weakening extra, or the missing host key.
    """
    weakening = [
        f"{name}={extra[name]!r}"
        for name in WEAKENING_EXTRAS
        if name in extra and str(extra[name]).strip().lower() not in _FALSE
    ]
    if str(extra.get("known_hosts", "")).strip().lower() == "none":
        weakening.append("known_hosts='none'")
    if weakening:
        raise InsecureConnectionError(
            f"connection {ssh_conn_id!r} ({used_by}) sets {', '.join(weakening)}: host keys are always "
            "checked here; remove it and put the host's key in the connection's host_key extra"
        )
    if not str(extra.get("host_key") or "").strip() and not Path(SYSTEM_KNOWN_HOSTS).expanduser().is_file():
        raise InsecureConnectionError(
            f"connection {ssh_conn_id!r} ({used_by}) has no host_key extra and this worker has no "
            f"{SYSTEM_KNOWN_HOSTS}: the host's key cannot be verified; put it in the host_key extra"
        )


@dataclass(frozen=True)
class CommandResult:
    """What a remote command returned."""

    exit_status: int
    stdout: str
    stderr: str


def _hook(ssh_conn_id: str, *, used_by: str, conn_timeout: int, cmd_timeout: int, attempts: int) -> Any:
    """The provider's SSHHook for ``ssh_conn_id``, after our host key policy passed; and the connection."""
    from airflow.providers.ssh.hooks.ssh import SSHHook
    from airflow.sdk.exceptions import AirflowException

    conn = get_connection(ssh_conn_id, used_by)
    check_host_key_policy(ssh_conn_id, conn.extra_dejson, used_by=used_by)
    try:
        # no_host_key_check=False wins over any extra in provider 7.0.1: a second guard, not the first.
        hook = SSHHook(
            ssh_conn_id=ssh_conn_id,
            conn_timeout=conn_timeout,
            cmd_timeout=cmd_timeout,
            conn_retry_attempts=attempts,
            no_host_key_check=False,
        )
    except (ValueError, AirflowException) as error:  # a malformed host_key, no host: the hook says why
        raise SshConnectionError(f"connection {ssh_conn_id!r} ({used_by}) cannot be used: {error}") from None
    return hook, conn


@contextlib.contextmanager
def _host_key_errors(where: str, used_by: str) -> Iterator[None]:
    """Turn paramiko's host key refusals into :class:`HostKeyError` naming the host; the rest passes."""
    import paramiko

    try:
        yield
    except paramiko.BadHostKeyException as error:
        raise HostKeyError(
            f"host key of {where} ({used_by}) does not match the one on record "
            f"(got {error.key.get_name()}): refusing to connect"
        ) from None
    except paramiko.SSHException as error:
        if "not found in known_hosts" in str(error):
            raise HostKeyError(
                f"host key of {where} ({used_by}) is unknown: add it to the "
                "connection's host_key extra or to known_hosts"
            ) from None
        raise


def run_command(
    ssh_conn_id: str,
    command: str,
    *,
    used_by: str,
    conn_timeout: int = 10,
    cmd_timeout: int = 30,
    attempts: int = 1,
) -> CommandResult:
    """Run ``command`` on the host of ``ssh_conn_id`` over a connection of its own and return its result.

    Several commands on one host: use :class:`SshSession` (one handshake instead of one per command).

    :raises HostKeyError: when the host key is unknown or changed (possible interception).
    :raises ConnectionMissingError: when the Airflow connection does not exist.
    :raises InsecureConnectionError: when the connection weakens host key checking.
    :raises SshConnectionError: when the provider refuses the connection's settings.
    """
    from airflow.sdk.exceptions import AirflowException

    hook, conn = _hook(
        ssh_conn_id, used_by=used_by, conn_timeout=conn_timeout, cmd_timeout=cmd_timeout, attempts=attempts
    )
    with _host_key_errors(f"{conn.host}:{conn.port}", used_by), hook.get_conn() as client:
        try:
            status, stdout, stderr = hook.exec_ssh_client_command(
                client, command, get_pty=False, environment=None, timeout=cmd_timeout
            )
        except AirflowException as error:  # the provider's only one here: "SSH command timed out"
            raise SshCommandTimeout(
                f"command on {conn.host}:{conn.port} ({used_by}) gave no answer within {cmd_timeout}s: "
                f"{error}"
            ) from None
    return CommandResult(status, stdout.decode(errors="replace"), stderr.decode(errors="replace"))


class SshSession:
    """One SSH connection to one host, kept open for many commands; each command runs on a new channel.

    A patch wave runs ~15 commands per host: one handshake (key exchange and authentication) each cost
    about 1 s per host on a loaded worker. The session connects on its first command, through the
    provider's SSHHook with the same host key checks and error mapping as :func:`run_command`.
    When the connection is gone (the host rebooted, sshd restarted), the next command connects again,
    at most once per command, with the host key checked again: a host that comes back with another
    key is refused (:class:`HostKeyError`), and a host that does not come back fails that command
    within ``conn_timeout`` (the caller's wait, e.g. the reboot's polling, stays bounded by its own
    deadline). A command that was sent is never sent again: only opening its channel is retried.

    Use it as a context manager, or call :meth:`close`. One thread at a time per session.

    :raises HostKeyError, ConnectionMissingError, InsecureConnectionError, SshConnectionError: as
        :func:`run_command` (the last three when the session is made).
    """

    def __init__(self, ssh_conn_id: str, *, used_by: str, conn_timeout: int = 10) -> None:
        self.ssh_conn_id = ssh_conn_id
        self.used_by = used_by
        self.conn_timeout = conn_timeout
        self._hook, conn = _hook(
            ssh_conn_id, used_by=used_by, conn_timeout=conn_timeout, cmd_timeout=30, attempts=1
        )
        self._where = f"{conn.host}:{conn.port}"
        self._lock = threading.Lock()
        self.connects = 0  # how many times the session connected (tests and logs read it)

    def __enter__(self) -> SshSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __call__(self, command: str, timeout: int) -> CommandResult:
        """Run ``command`` (the ``Runner`` shape of :mod:`cloudops.patching.apt_host`)."""
        return self.run(command, cmd_timeout=timeout)

    def close(self) -> None:
        """Close the connection (a later command would connect again)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        client, self._hook.client = self._hook.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _transport(self, *, fresh: bool) -> tuple[Any, bool]:
        """The open transport and whether it is new; connects when there is none, it is gone, or ``fresh``."""
        client = self._hook.client
        transport = client.get_transport() if client is not None else None
        new = fresh or transport is None or not transport.is_active()
        if new:
            self._drop()
            with _host_key_errors(self._where, self.used_by):
                client = self._hook.get_conn()
            self.connects += 1
            if self.connects > 1:
                log.info("%s (%s): connected again (connection %d)", self._where, self.used_by, self.connects)
            transport = client.get_transport()
        return transport, new

    def run(self, command: str, *, cmd_timeout: int = 30) -> CommandResult:
        """Run ``command``; fail with :class:`SshCommandTimeout` when it prints nothing for ``cmd_timeout`` s.

        :raises HostKeyError: when (re)connecting meets an unknown or changed host key.
        """
        import paramiko

        with self._lock:
            transport, new = self._transport(fresh=False)
            try:
                channel = transport.open_session(timeout=self.conn_timeout)
            except (paramiko.SSHException, EOFError, OSError) as error:
                if new:  # a connection just made that gives no channel: no second connection this call
                    self._drop()
                    raise
                # The transport looked alive but is not (the host went down in between): the command was
                # not sent, so connecting again and sending it once is safe.
                log.info("%s (%s): no channel (%s): connecting again", self._where, self.used_by, error)
                channel = self._transport(fresh=True)[0].open_session(timeout=self.conn_timeout)
            try:
                return self._exchange(channel, command, cmd_timeout)
            except Exception:
                # A timeout or a broken exchange may mean a dead transport: the next command connects
                # again rather than trust it (one handshake, against a command hanging on a dead link).
                self._drop()
                raise
            finally:
                with contextlib.suppress(Exception):
                    channel.close()

    def _exchange(self, channel: Any, command: str, cmd_timeout: int) -> CommandResult:
        channel.exec_command(command)
        channel.shutdown_write()
        out, err = bytearray(), bytearray()

        def drain() -> None:
            while channel.recv_ready():
                _bounded_append(out, channel.recv(65536))
            while channel.recv_stderr_ready():
                _bounded_append(err, channel.recv_stderr(65536))

        timed_out = SshCommandTimeout(
            f"command on {self._where} ({self.used_by}) gave no answer within {cmd_timeout}s"
        )
        with selectors.DefaultSelector() as selector:  # select() breaks on descriptors >= 1024
            selector.register(channel, selectors.EVENT_READ)
            while not (channel.eof_received or channel.closed or channel.exit_status_ready()):
                drain()
                if not selector.select(cmd_timeout):
                    raise timed_out
        drain()
        # The exit status follows the output's end; a channel closed without one reads -1.
        if not channel.status_event.wait(cmd_timeout):
            raise timed_out
        drain()
        status = channel.exit_status
        return CommandResult(status, out.decode(errors="replace"), err.decode(errors="replace"))


# What a session keeps of one command's output stream; the callers bound it further before reading.
MAX_OUTPUT_BYTES = 8 * 1024 * 1024


def _bounded_append(buffer: bytearray, data: bytes) -> None:
    room = MAX_OUTPUT_BYTES - len(buffer)
    if room > 0:
        buffer += data[:room]


__all__ = [
    "WEAKENING_EXTRAS",
    "CommandResult",
    "HostKeyError",
    "InsecureConnectionError",
    "SshCommandTimeout",
    "SshConnectionError",
    "SshSession",
    "check_host_key_policy",
    "run_command",
]
