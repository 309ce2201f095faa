"""Health check runbooks: one Airflow DAG per estate, `health_check__<estate>`.

The runbook text is in cloudops.runbooks.health_check; this file only builds the DAGs.
"""

from __future__ import annotations

from cloudops.runbooks.common import build_dags
from cloudops.runbooks.health_check import build_health_check_dag

globals().update(build_dags(build_health_check_dag))
