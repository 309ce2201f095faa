"""Failover drill runbooks: one Airflow DAG per cluster with a drill policy, `failover_drill__<cluster>`.

The runbook text is in cloudops.runbooks.failover_drill; this file only builds the DAGs.
"""

from __future__ import annotations

from cloudops.runbooks.common import build_dags
from cloudops.runbooks.failover_drill import build_failover_drill_dags

globals().update(build_dags(build_failover_drill_dags))
