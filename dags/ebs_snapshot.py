"""EBS snapshot runbooks: one Airflow DAG per fleet with a snapshots policy, `ebs_snapshot__<fleet>`.

The runbook text is in cloudops.runbooks.ebs_snapshot; this file only builds the DAGs.
"""

from __future__ import annotations

from cloudops.runbooks.common import build_dags
from cloudops.runbooks.ebs_snapshot import build_ebs_snapshot_dags

globals().update(build_dags(build_ebs_snapshot_dags))
