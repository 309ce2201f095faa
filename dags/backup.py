"""Nightly backup runbooks: one Airflow DAG per catalog database with a backup policy, `backup__<database>`.

The runbook text is in cloudops.runbooks.backup; this file only builds the DAGs.
"""

from __future__ import annotations

from cloudops.runbooks.backup import build_backup_dags
from cloudops.runbooks.common import build_dags

globals().update(build_dags(build_backup_dags))
