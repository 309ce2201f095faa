"""Move a machine's file ledger into the PostgreSQL ledger, record for record, and prove the copy.

``cloudops evidence migrate --to postgres`` verifies the file ledger first (a broken chain is not copied),
copies every record's exact line into an empty PostgreSQL ledger in one transaction, then verifies the
copy and compares it with the source day by day, byte for byte: the copy holds the same chain, with the
same hashes, so digests already shipped from the files stay valid. A target that already holds another
chain is refused; one that already holds exactly this chain is reported as migrated (safe to re-run).

Stop the writers (scheduler, workers) before migrating and switch them to the PostgreSQL backend after:
records appended to the files meanwhile are not in the copy, and the command says so when it sees them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cloudops.errors import CloudOpsError
from cloudops.evidence.ledger import GENESIS, Ledger
from cloudops.evidence.pg_ledger import PgLedger

log = logging.getLogger(__name__)


class MigrationError(CloudOpsError):
    """The ledger was not migrated (the message says why and what holds now)."""


@dataclass(frozen=True)
class MigrationResult:
    """What a migration did: records copied (0 when the target already held this chain), the chain's
    end, and how many days compared equal."""

    source: str
    target: str
    records: int
    days: int
    last_seq: int
    last_hash: str
    already: bool = False

    def summary(self) -> str:
        if self.already:
            return (
                f"{self.target} already holds the chain of {self.source} ({self.last_seq} records, last hash "
                f"{self.last_hash[:12]}…): nothing copied"
            )
        return (
            f"copied {self.records} records ({self.days} days) from {self.source} into {self.target}; the "
            f"copy verifies and equals the source byte for byte to seq {self.last_seq} (hash "
            f"{self.last_hash[:12]}…). Set CLOUDOPS_EVIDENCE_BACKEND=postgres on every writer now"
        )


def migrate_to_postgres(source: Ledger, target: PgLedger) -> MigrationResult:
    """Copy the file ledger ``source`` into the empty ``target`` and verify the copy.

    :raises MigrationError: the source does not verify (nothing copied), the target holds another chain
        (refused, nothing copied), or the copy differs from the source (named; the copy is kept for
        inspection and must be dropped before another attempt).
    """
    verdict = source.verify()
    if not verdict.ok:
        raise MigrationError(
            f"not migrating: the file ledger {source.where} does not verify: {verdict.problem}; "
            "nothing copied"
        )
    segments = source.read_segments()
    held = target.verify()
    if held.records:
        if held.ok and (held.last_seq, held.last_hash) == (verdict.last_seq, verdict.last_hash):
            _compare(segments, target)
            log.info("evidence: %s already holds the chain of %s", target.where, source.where)
            return MigrationResult(
                source.where, target.where, 0, len(segments), held.last_seq, held.last_hash, already=True
            )
        raise MigrationError(
            f"not migrating: {target.where} already holds another chain ({held.records} records to seq "
            f"{held.last_seq}, {'intact' if held.ok else held.problem}); the source {source.where} ends at "
            f"seq {verdict.last_seq}. Migrate into an empty schema (--schema)"
        )
    if verdict.records == 0:
        raise MigrationError(f"not migrating: the file ledger {source.where} holds no records")
    try:
        copied = target.import_records(segments)
    except CloudOpsError as error:
        raise MigrationError(f"not migrated: {error}") from error
    copy = target.verify()
    if not copy.ok:
        raise MigrationError(f"the copy in {target.where} does not verify: {copy.problem}; drop it and retry")
    _compare(segments, target)
    after = source.verify()
    if (after.last_seq, after.last_hash) != (verdict.last_seq, verdict.last_hash):
        log.warning(
            "evidence: %s was appended to during the migration (now to seq %d, copied to seq %d): "
            "those records are not in %s; stop the writers and migrate into an empty schema again",
            source.where,
            after.last_seq,
            verdict.last_seq,
            target.where,
        )
    return MigrationResult(
        source.where, target.where, copied, len(segments), copy.last_seq, copy.last_hash or GENESIS
    )


def _compare(segments: list[tuple[str, bytes]], target: PgLedger) -> None:
    """Raise naming the first day whose bytes differ between the source and the copy."""
    copied = dict(target.read_segments())
    names = [name for name, _ in segments]
    if sorted(copied) != sorted(names):
        extra = sorted(set(copied) ^ set(names))
        raise MigrationError(
            f"the copy in {target.where} holds other days than the source: {', '.join(extra)}"
        )
    for name, data in segments:
        if copied[name] != data:
            raise MigrationError(
                f"the copy of day {name[:10]} in {target.where} differs from the source's bytes"
            )


__all__ = ["MigrationError", "MigrationResult", "migrate_to_postgres"]
