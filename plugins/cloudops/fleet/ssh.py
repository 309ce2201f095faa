"""Run commands on fleet hosts over SSH through the provider's SSHHook, host keys always verified.

The connection must carry the host's key (the ``host_key`` extra) or the host must be in the
worker's known_hosts; a connection asking for ``no_host_key_check`` is refused, never obeyed.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudops.connections import get_connection
from cloudops.errors import CloudOpsError


class HostKeyError(CloudOpsError):
    """The host's key is unknown or differs from the one on record."""


class InsecureConnectionError(CloudOpsError):
    """The SSH connection asks to skip host key checking, which is never obeyed."""


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
    :raises InsecureConnectionError: when the connection disables host key checking.
    """
    import paramiko
    from airflow.providers.ssh.hooks.ssh import SSHHook

    conn = get_connection(ssh_conn_id, used_by)
    if str(conn.extra_dejson.get("no_host_key_check", "false")).lower() == "true":
        raise InsecureConnectionError(
            f"connection {ssh_conn_id!r} ({used_by}) sets no_host_key_check: host keys are always "
            "checked here; put the host's key in the connection's host_key extra instead"
        )
    hook = SSHHook(
        ssh_conn_id=ssh_conn_id,
        conn_timeout=conn_timeout,
        cmd_timeout=cmd_timeout,
        conn_retry_attempts=attempts,
        no_host_key_check=False,
    )
    try:
        with hook.get_conn() as client:
            status, stdout, stderr = hook.exec_ssh_client_command(
                client, command, get_pty=False, environment=None, timeout=cmd_timeout
            )
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


__all__ = ["CommandResult", "HostKeyError", "InsecureConnectionError", "run_command"]
