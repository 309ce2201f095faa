"""Monthly report runbooks: one Airflow DAG per estate with report settings, `monthly_report__<estate>`.

The runbook text is in cloudops.runbooks.monthly_report; this file only builds the DAGs.
"""

from __future__ import annotations

from cloudops.runbooks.common import build_dags
from cloudops.runbooks.monthly_report import build_monthly_report_dags

globals().update(build_dags(build_monthly_report_dags))
