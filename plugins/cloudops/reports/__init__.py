"""Monthly reports: the SLA arithmetic (pure), the probe sample store, and the cost sources.

- :mod:`cloudops.reports.period`: the calendar month in the estate's time zone, cut in one-minute slices.
- :mod:`cloudops.reports.maintenance`: which slices maintenance excludes, and why.
- :mod:`cloudops.reports.availability`: per SLO, the month's figures, incidents and credit owed.
"""

from __future__ import annotations
