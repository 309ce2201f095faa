"""Host health facts read over SSH: uptime and disk use."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudops.errors import CloudOpsError, ConnectionMissingError, first_line
from cloudops.fleet.ssh import InsecureConnectionError, run_command

# One round trip: uptime, then every local, real filesystem (no tmpfs, overlay or squashfs).
HEALTH_COMMAND = (
    "cat /proc/uptime && df -P -k -l -x tmpfs -x devtmpfs -x squashfs -x overlay 2>/dev/null || true"
)


@dataclass(frozen=True)
class HostState:
    """What a host says about itself right now."""

    reachable: bool
    uptime_seconds: float | None = None
    disk_used_percent: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def parse_uptime(text: str) -> float:
    """Seconds since boot from the first line of ``/proc/uptime`` (``"350735.47 234388.90"``)."""
    return float(text.split()[0])


def parse_df(text: str) -> dict[str, int]:
    """Used percent per mount point from ``df -P`` output (header line skipped)."""
    usage: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[4].endswith("%") and fields[4][:-1].isdigit():
            usage[" ".join(fields[5:])] = int(fields[4][:-1])
    return usage


def probe_host(ssh_conn_id: str, *, used_by: str, timeout_seconds: int = 10) -> HostState:
    """Connect with a verified host key and read uptime and disk use; never raises for a down host.

    An unknown or changed host key is reported as unreachable with the reason, never bypassed.
    A missing or insecure Airflow connection still raises: that is a deployment error, not a host one.
    """
    try:
        result = run_command(
            ssh_conn_id,
            HEALTH_COMMAND,
            used_by=used_by,
            conn_timeout=timeout_seconds,
            cmd_timeout=timeout_seconds,
        )
    except (ConnectionMissingError, InsecureConnectionError):
        raise
    except (CloudOpsError, OSError, EOFError) as error:
        return HostState(False, error=first_line(error))
    except Exception as error:  # paramiko raises its own hierarchy and plain socket errors
        return HostState(False, error=f"{type(error).__name__}: {first_line(error)}")
    if result.exit_status != 0:
        return HostState(
            False, error=f"health command exited {result.exit_status}: {result.stderr.strip()[:200]}"
        )
    first, _, rest = result.stdout.partition("\n")
    return HostState(True, parse_uptime(first), parse_df(rest))


__all__ = ["HEALTH_COMMAND", "HostState", "parse_df", "parse_uptime", "probe_host"]
