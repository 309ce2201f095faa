"""Read the runbooks' own facts back from the ledger: what a backup wrote, what a drill proved.

Guards that act on untrusted input (a manifest read from S3, a backup a retention run is about to count)
check it against what was recorded when it was written. The ledger is that record: these functions find
the facts in it. They read the local ledger of this process's evidence folder (``recorder.ledger()``)
unless given another one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import date
from typing import Any

from cloudops.evidence.backend import EvidenceLedger
from cloudops.evidence.ledger import Record


def _ledger(ledger: EvidenceLedger | None) -> EvidenceLedger:
    if ledger is not None:
        return ledger
    from cloudops.evidence.recorder import ledger as local_ledger

    return local_ledger()


def _matches(data: Mapping[str, Any], match: Mapping[str, Any]) -> bool:
    return all(data.get(field) == value for field, value in match.items())


def iter_facts(
    kind: str,
    match: Mapping[str, Any] | None = None,
    *,
    where: Callable[[Mapping[str, Any]], bool] | None = None,
    since: date | None = None,
    ledger: EvidenceLedger | None = None,
) -> Iterator[Record]:
    """Yield the fact records of `kind`, oldest first, whose ``data`` has every field of `match`.

    :param match: field → value the fact's data must hold (e.g. ``{"backup_id": ..., "database": ...}``).
    :param where: a further test on the data, for what equality cannot say.
    :param since: skip ledger days before this date (faster on a long ledger).
    """
    wanted = match or {}
    for record in _ledger(ledger).records(since=since):
        if record.kind != kind:
            continue
        data = record.fields.get("data") or {}
        if _matches(data, wanted) and (where is None or where(data)):
            yield record


def latest_fact(
    kind: str,
    match: Mapping[str, Any] | None = None,
    *,
    where: Callable[[Mapping[str, Any]], bool] | None = None,
    since: date | None = None,
    ledger: EvidenceLedger | None = None,
) -> Record | None:
    """Return the newest fact record of `kind` matching `match` (see :func:`iter_facts`), or None."""
    found = None
    for found in iter_facts(kind, match, where=where, since=since, ledger=ledger):  # noqa: B007
        pass
    return found


__all__ = ["iter_facts", "latest_fact"]
