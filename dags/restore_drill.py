"""Restore drill runbooks: one Airflow DAG per database with a drill policy, `restore_drill__<database>`.

The runbook text is in cloudops.runbooks.restore_drill; this file only builds the DAGs.
"""

from __future__ import annotations

from cloudops.runbooks.common import build_dags
from cloudops.runbooks.restore_drill import build_restore_drill_dags

globals().update(build_dags(build_restore_drill_dags))
