"""The Airflow plugin of CloudOps Runbooks, registered through the ``airflow.plugins`` entry point.

It carries what the platform adds to Airflow itself; the evidence listener and the auditor view
join it in their own issues.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class CloudOpsPlugin(AirflowPlugin):
    """CloudOps Runbooks' additions to Airflow."""

    name = "cloudops"


__all__ = ["CloudOpsPlugin"]
