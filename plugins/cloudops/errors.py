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


__all__ = ["CloudOpsError", "ConnectionMissingError", "InvalidInputError", "SandboxError"]
