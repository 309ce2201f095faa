"""The Airflow plugin of CloudOps Runbooks, registered through the ``airflow.plugins`` entry point.

It carries what the platform adds to Airflow itself: the evidence listener that writes every run
into the ledger, and the auditor view.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from cloudops.evidence import listener as evidence_listener

AUDITOR_VIEW_PREFIX = "/cloudops"


class CloudOpsPlugin(AirflowPlugin):
    """CloudOps Runbooks' additions to Airflow."""

    name = "cloudops"
    # Every run, step try and runbook fact goes into the evidence ledger (cloudops.evidence).
    listeners = [evidence_listener]
    # The auditor view: read-only, behind Airflow's login, shown in a frame from the "Evidence" nav link.
    external_views = [
        {
            "name": "Evidence",
            "href": f"{AUDITOR_VIEW_PREFIX}/runs",
            "url_route": "evidence",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        # Only the API server asks for it: the view's imports (FastAPI, Airflow's API security) stay
        # out of the scheduler, the workers and DAG parsing, which import this module too.
        return [{"app": _auditor_view(), "url_prefix": AUDITOR_VIEW_PREFIX, "name": "cloudops-evidence"}]


@cache
def _auditor_view() -> Any:
    from cloudops.evidence.view import create_app

    return create_app()


__all__ = ["CloudOpsPlugin"]
