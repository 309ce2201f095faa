"""Actions in the estate's cloud accounts, one subpackage per provider (only ``aws`` so far).

Importing these packages imports neither Airflow nor boto3: the provider's hooks are imported inside the
functions that call them, so DAG files may import from here at parse time.
"""

from __future__ import annotations
