"""Patch wave runbooks: one Airflow DAG per fleet with a patching policy, `patch_wave__<fleet>`.

The runbook text is in cloudops.runbooks.patch_wave; this file only builds the DAGs.
"""

from __future__ import annotations

from cloudops.runbooks.common import build_dags
from cloudops.runbooks.patch_wave import build_patch_wave_dags

globals().update(build_dags(build_patch_wave_dags))
