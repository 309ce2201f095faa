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


def run_command(
    ssh_conn_id: str,
    command: str,
    *,
    used_by: str,
    conn_timeout: int = 10,
    cmd_timeout: int = 30,
    attempts: int = 1,
) -> CommandResult:
    """Run ``command`` on the host of ``ssh_conn_id`` and return its result.

    :raises HostKeyError: when the host key is unknown or changed (possible interception).
    :raises ConnectionMissingError: when the Airflow connection does not exist.
    :raises InsecureConnectionError: when the connection weakens host key checking.
    :raises SshConnectionError: when the provider refuses the connection's settings.
    """
    import paramiko
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
    try:
        with hook.get_conn() as client:
            try:
                status, stdout, stderr = hook.exec_ssh_client_command(
                    client, command, get_pty=False, environment=None, timeout=cmd_timeout
                )
            except AirflowException as error:  # the provider's only one here: "SSH command timed out"
                raise SshCommandTimeout(
                    f"command on {conn.host}:{conn.port} ({used_by}) gave no answer within {cmd_timeout}s: "
                    f"{error}"
                ) from None
    except paramiko.BadHostKeyException as error:
        raise HostKeyError(
            f"host key of {conn.host}:{conn.port} ({used_by}) does not match the one on record "
            f"(got {error.key.get_name()}): refusing to connect"
        ) from None
    except paramiko.SSHException as error:
        if "not found in known_hosts" in str(error):
            raise HostKeyError(
                f"host key of {conn.host}:{conn.port} ({used_by}) is unknown: add it to the "
                "connection's host_key extra or to known_hosts"
            ) from None
        raise
    return CommandResult(status, stdout.decode(errors="replace"), stderr.decode(errors="replace"))


__all__ = [
    "WEAKENING_EXTRAS",
    "CommandResult",
    "HostKeyError",
    "InsecureConnectionError",
    "SshCommandTimeout",
    "SshConnectionError",
    "check_host_key_policy",
    "run_command",
]
