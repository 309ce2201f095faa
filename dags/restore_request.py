"""On-demand restores from a form in the Airflow UI: the one `restore_request` DAG.

The runbook text is in cloudops.runbooks.restore_request; this file only builds the DAG.
"""

from __future__ import annotations

from cloudops.catalog import load_catalogs
from cloudops.runbooks.restore_request import build_restore_request_dag

restore_request = build_restore_request_dag(load_catalogs())
