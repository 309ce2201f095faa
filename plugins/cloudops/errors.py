"""The exceptions every part of cloudops raises, rooted in one base class."""

from __future__ import annotations


class CloudOpsError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInputError(CloudOpsError):
    """Input from a person (a catalog file, a form, a command-line file) is unusable as given."""


class SandboxError(CloudOpsError):
    """The local sandbox estate could not be started, stopped or inspected."""


class ConnectionMissingError(CloudOpsError):
    """An Airflow connection named in the catalog does not exist at run time."""

    def __init__(self, conn_id: str, used_by: str) -> None:
        super().__init__(
            f"Airflow connection {conn_id!r} (used by {used_by}) does not exist: create it in the "
            f"Airflow UI (Admin > Connections) or as AIRFLOW_CONN_{conn_id.upper()}"
        )
        self.conn_id = conn_id
        self.used_by = used_by


class DatabaseUnavailableError(CloudOpsError):
    """A database could not be reached (or queried) to prepare work on it; nothing was started."""

    def __init__(self, used_by: str, address: str, detail: str) -> None:
        super().__init__(f"{used_by} is unavailable at {address}: {detail}")
        self.used_by = used_by
        self.address = address
        self.detail = detail


class ToolMissingError(CloudOpsError):
    """A client program (pg_dump, mariadb-dump, ...) that a runbook runs is not installed."""

    def __init__(
        self, tool: str, package: str, problem: str = "was not found (not on PATH, or not executable)"
    ) -> None:
        super().__init__(
            f"client program {tool!r} {problem}: install the Debian package {package} on the Airflow workers"
        )
        self.tool = tool
        self.package = package


class ToolVersionError(CloudOpsError):
    """A client program is older than the server it would work on, so its output cannot be trusted."""

    def __init__(self, tool: str, tool_version: str, server_version: str, used_by: str, package: str) -> None:
        super().__init__(
            f"{tool} {tool_version} is older than the server of {used_by} ({server_version}): "
            f"upgrade the Debian package {package} on the Airflow workers"
        )
        self.tool = tool
        self.tool_version = tool_version
        self.server_version = server_version
        self.package = package


class BackupSourceError(CloudOpsError):
    """A backup cannot be made, or could not record facts that match what it dumped."""


class RestoreRefused(CloudOpsError):
    """A guard refused a destructive step (drop a database, restore into one that exists); nothing done."""


class RestoreError(CloudOpsError):
    """A restore could not be prepared or did not complete; the message names the step and the target."""


class ReplicationError(CloudOpsError):
    """A replication fact cannot be read or a replication verb cannot act: the server is not what the
    caller said (a lag asked of a server that replicates from nothing), or it cannot be reached."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message: driver and SDK errors add noise below it."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def aws_error_code(error: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (empty for any other error)."""
    response = getattr(error, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


__all__ = [
    "BackupSourceError",
    "CloudOpsError",
    "ConnectionMissingError",
    "DatabaseUnavailableError",
    "InvalidInputError",
    "ReplicationError",
    "RestoreError",
    "RestoreRefused",
    "SandboxError",
    "ToolMissingError",
    "ToolVersionError",
    "aws_error_code",
    "first_line",
]
