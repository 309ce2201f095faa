"""Surface invalid catalog files as an Airflow DAG import error, apart from every runbook's DAGs.

The runbook DAG files skip a bad catalog file and keep building the DAGs of the good ones; this file
raises the bad files' errors (file, line, field) so that they show in the UI's import errors and in
`airflow dags list-import-errors`. It defines no DAG of its own.
"""

from __future__ import annotations

from cloudops.catalog import CatalogError, load_catalogs

_result = load_catalogs()
if _result.errors:
    raise CatalogError(_result.issues)
