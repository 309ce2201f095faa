"""Evidence shipping: the one Airflow DAG `evidence_ship`, hourly.

The runbook text is in cloudops.runbooks.evidence_ship; this file only builds the DAG.
"""

from __future__ import annotations

from cloudops.catalog import load_catalogs
from cloudops.runbooks.evidence_ship import build_evidence_ship_dag

evidence_ship = build_evidence_ship_dag(load_catalogs())
