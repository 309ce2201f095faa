"""Host health facts read over SSH: uptime and disk use."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudops.errors import CloudOpsError, ConnectionMissingError, first_line
from cloudops.fleet.ssh import CommandResult, InsecureConnectionError, SshConnectionError, run_command

# One round trip: uptime, then every local, real filesystem (no tmpfs or squashfs). df's exit status and
# complaints come back as they are: a host whose disks cannot be read is not healthy. The type column
# lets parse_df drop overlay mounts (container layers) except the root: a container's or a sandbox
# host's / is an overlay, and it is that host's disk.
HEALTH_COMMAND = (
    "cat /proc/uptime && "
    "df -k -l --output=source,fstype,size,used,pcent,target -x tmpfs -x devtmpfs -x squashfs"
)


@dataclass(frozen=True)
class HostState:
    """What a host says about itself right now.

    :param disk_error: why disk use is not known (df failed or listed nothing); None when it is.
    """

    reachable: bool
    uptime_seconds: float | None = None
    disk_used_percent: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    disk_error: str | None = None


def parse_uptime(text: str) -> float:
    """Seconds since boot from the first line of ``/proc/uptime`` (``"350735.47 234388.90"``)."""
    return float(text.split()[0])


def parse_df(text: str) -> dict[str, int]:
    """Used percent per mount point from ``df -P`` output, or from HEALTH_COMMAND's typed columns
    (source, fstype, size, used, pcent, target), where overlay mounts other than / are left out."""
    usage: dict[str, int] = {}
    lines = text.splitlines()
    typed = bool(lines) and "Type" in lines[0].split()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[4].endswith("%") and fields[4][:-1].isdigit():
            mount = " ".join(fields[5:])
            if typed and fields[1] == "overlay" and mount != "/":
                continue
            usage[mount] = int(fields[4][:-1])
    return usage


def host_state(result: CommandResult) -> HostState:
    """Read the health command's output: uptime first, then df; what is missing is said, not assumed."""
    first, _, rest = result.stdout.partition("\n")
    try:
        uptime = parse_uptime(first)
    except (ValueError, IndexError):
        return HostState(
            False, error=f"health command exited {result.exit_status}: {result.stderr.strip()[:200]}"
        )
    disks = parse_df(rest)
    complaint = " ".join(result.stderr.split())[:200]
    disk_error = None
    if result.exit_status != 0:
        disk_error = f"df exited {result.exit_status}" + (f": {complaint}" if complaint else "")
    elif not disks:
        disk_error = "df listed no filesystem" + (f": {complaint}" if complaint else "")
    return HostState(True, uptime, disks, disk_error=disk_error)


def probe_host(ssh_conn_id: str, *, used_by: str, timeout_seconds: int = 10) -> HostState:
    """Connect with a verified host key and read uptime and disk use; never raises for a down host.

    An unknown or changed host key is reported as unreachable with the reason, never bypassed.
    A missing, insecure or unusable Airflow connection still raises: that is a deployment error, not a
    host one. So does any other exception: a bug is not a host that is down.
    """
    import paramiko

    try:
        result = run_command(
            ssh_conn_id,
            HEALTH_COMMAND,
            used_by=used_by,
            conn_timeout=timeout_seconds,
            cmd_timeout=timeout_seconds,
        )
    except (ConnectionMissingError, InsecureConnectionError, SshConnectionError):
        raise
    # What a host that is down, slow or hostile looks like: sockets, SSH protocol, host key errors.
    except (CloudOpsError, OSError, EOFError) as error:
        return HostState(False, error=first_line(error))
    except paramiko.SSHException as error:
        return HostState(False, error=f"{type(error).__name__}: {first_line(error)}")
    return host_state(result)


__all__ = ["HEALTH_COMMAND", "HostState", "host_state", "parse_df", "parse_uptime", "probe_host"]
