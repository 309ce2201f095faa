"""Evidence packs: a period's ledger records, a report arranged by control, and a manifest of hashes.

``cloudops evidence export --from DATE --to DATE --out DIR`` writes a pack of three files:

- ``records.jsonl``: the exact ledger lines (bytes unchanged, so each can be re-hashed) of *every*
  record of the UTC days from ``since`` to the last day that holds a record of a run started in the
  period (``until``, or later when such a run went on past midnight). Whole days keep the pack's
  records one contiguous piece of the chain, which ``verify_pack`` re-checks from the manifest's
  anchors. The pack may therefore hold records of runs that are not in the report (runs started
  before the period, or after it on the extra days); the report says how many.
- ``report.html``: one self-contained page (no scripts, no external assets, readable printed), a
  summary on top, then one section per control: backups (SOC 2 A1.2, ISO 27001 A.8.13), recovery
  tests (SOC 2 A1.3, ISO 27001 A.8.13 and A.5.30), changes and recovery actions (SOC 2 CC8.1 and
  CC7.5). Every value from a record is escaped: records carry untrusted input.
- ``manifest.json``: the period, when it was generated, the chain anchors (first seq and the prev
  hash it follows, last seq and its hash), counts, and every other file's sha256 and size.

A run belongs to the period by the UTC day it started (its ``run.started`` record, or the start
that ``run.finished`` carries when ``run.started`` is missing); all of its records are used.

The API the export command and the auditor view share (keep it stable):

- ``build_pack(ledger, since, until, *, generated_at=None, verified_start=None) -> Pack``: verify
  the whole local chain (refuse a broken one, naming the record), select the records and render;
  nothing is written. ``verified_start`` (seq, hash) is where a caller that has just verified the
  chain up to the period says it ends (the auditor view's cached verdict): the days before the
  period are then not read again; the period's days and later ones always are.
- ``write_pack(pack, out_dir) -> Path``: write the three files into a new or empty directory.
- ``export_pack(ledger, since, until, out_dir, *, generated_at=None) -> Pack``: both of the above.
- ``pack_zip_bytes(pack) -> bytes``: the same three files as a zip (folder ``evidence-<from>_<to>/``).
- ``scope_pack(pack, may_read) -> Pack``: the pack cut down to the records of the DAGs ``may_read``
  accepts (the auditor view's packs for a user who may not read every DAG). Its manifest says so
  (``scope``: the DAG ids and how many records were left out); ``records.jsonl`` is then no longer
  one contiguous piece of chain, so ``verify_pack`` checks each record's own hash, their order
  within the manifest's anchors and their DAG; that they are the ledger's own records takes a
  comparison of their hashes with the ledger or its shipped, signed copy.
- ``verify_pack(directory) -> PackVerdict``: check the manifest's hashes and sizes (naming any file
  edited, added or removed) and the chain of ``records.jsonl`` from the manifest's anchors.
- ``render_report(runs, *, since, until, generated_at, anchors=None, notes=()) -> str`` (from
  ``cloudops.evidence.report``, re-exported here): the HTML report of folded runs
  (``cloudops.evidence.runs.fold_runs``), the per-control summaries being pure functions there.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cloudops.errors import CloudOpsError, InvalidInputError
from cloudops.evidence.backend import EvidenceLedger
from cloudops.evidence.ledger import (
    LedgerError,
    Verdict,
    read_segment,
    utc_stamp,
    verify_segments,
)
from cloudops.evidence.report import ChainAnchors, control_counts, render_report
from cloudops.evidence.runs import Run, fold_runs

PACK_FORMAT = "cloudops-evidence-pack/1"
_PACK_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RECORDS_FILE = "records.jsonl"
REPORT_FILE = "report.html"
MANIFEST_FILE = "manifest.json"


class PackError(CloudOpsError):
    """An evidence pack cannot be built, written or read."""


@dataclass(frozen=True)
class Pack:
    """An evidence pack in memory: the files' contents and the manifest describing them."""

    since: date
    until: date
    generated_at: str
    anchors: ChainAnchors
    records: bytes
    report: str
    manifest: dict[str, Any]
    runs: list[Run] = field(repr=False, default_factory=list)
    # Every DAG with a record in ``records`` (runs outside the report's period included).
    dag_ids: frozenset[str] = frozenset()

    def files(self) -> dict[str, bytes]:
        """Every file of the pack by name, the manifest included."""
        return {
            RECORDS_FILE: self.records,
            REPORT_FILE: self.report.encode(),
            MANIFEST_FILE: _manifest_bytes(self.manifest),
        }


# -- building ------------------------------------------------------------------------------------


def build_pack(
    ledger: EvidenceLedger,
    since: date,
    until: date,
    *,
    generated_at: datetime | None = None,
    verified_start: tuple[int, str] | None = None,
) -> Pack:
    """The pack of the runs started from ``since`` to ``until`` (UTC days, inclusive); writes nothing.

    :param verified_start: the (seq, hash) the verified chain has reached at the end of the day
        before ``since``; the earlier days are then not re-verified.
    :raises InvalidInputError: ``since`` is after ``until``.
    :raises LedgerError: the local chain is broken (the message names the first bad record).
    """
    if since > until:
        raise InvalidInputError(f"the period starts ({since}) after it ends ({until})")
    stamp = utc_stamp(generated_at or datetime.now(UTC))
    anchors, records_bytes, runs, dag_ids = _select(ledger, since, until, verified_start)
    first, last = since.isoformat(), until.isoformat()
    selected = [run for run in runs if first <= (run.started_at or "")[:10] <= last]
    notes = _notes(runs, since, until)
    report = render_report(
        selected, since=since, until=until, generated_at=stamp, anchors=anchors, notes=notes
    )
    files = {RECORDS_FILE: records_bytes, REPORT_FILE: report.encode()}
    manifest = {
        "format": PACK_FORMAT,
        "period": {"from": since.isoformat(), "to": until.isoformat()},
        "generated_at": stamp,
        "chain": anchors.as_json(),
        "counts": control_counts(selected),
        "files": {name: {"sha256": _sha256(data), "size": len(data)} for name, data in files.items()},
    }
    return Pack(since, until, stamp, anchors, records_bytes, report, manifest, selected, dag_ids)


def scope_pack(pack: Pack, may_read: Callable[[str], bool]) -> Pack:
    """``pack`` with only the records (and runs) of DAGs that ``may_read`` accepts; records of no DAG
    (a ledger repair, a command line's fact) are left out too, as they may concern any estate."""
    kept_lines: list[bytes] = []
    dag_ids: set[str] = set()
    for line in pack.records.splitlines(keepends=True):
        dag_id = json.loads(line).get("dag_id")
        if isinstance(dag_id, str) and may_read(dag_id):
            kept_lines.append(line)
            dag_ids.add(dag_id)
    left_out = pack.anchors.records - len(kept_lines)
    records_bytes = b"".join(kept_lines)
    runs = [run for run in pack.runs if run.dag_id in dag_ids]
    notes = [
        f"This pack is scoped to the {len(dag_ids)} DAG(s) whose runs its requester may read: "
        f"{left_out} record(s) of other DAGs in these days are left out. Each record here can be "
        "re-hashed on its own and found by its seq in the ledger or its shipped, signed copy; the "
        "chain between them cannot be checked from this pack alone."
    ]
    report = render_report(
        runs,
        since=pack.since,
        until=pack.until,
        generated_at=pack.generated_at,
        anchors=pack.anchors,
        notes=notes,
    )
    files = {RECORDS_FILE: records_bytes, REPORT_FILE: report.encode()}
    manifest = {
        **pack.manifest,
        "counts": control_counts(runs),
        "scope": {"dag_ids": sorted(dag_ids), "records": len(kept_lines), "records_left_out": left_out},
        "files": {name: {"sha256": _sha256(data), "size": len(data)} for name, data in files.items()},
    }
    return Pack(
        pack.since,
        pack.until,
        pack.generated_at,
        pack.anchors,
        records_bytes,
        report,
        manifest,
        runs,
        frozenset(dag_ids),
    )


def write_pack(pack: Pack, out_dir: str | Path) -> Path:
    """Write the pack's files into ``out_dir`` (created; it must not hold anything yet).

    :raises InvalidInputError: ``out_dir`` is a file or a directory that is not empty.
    """
    out = _check_out_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in pack.files().items():
        (out / name).write_bytes(data)
    return out


def export_pack(
    ledger: EvidenceLedger,
    since: date,
    until: date,
    out_dir: str | Path,
    *,
    generated_at: datetime | None = None,
) -> Pack:
    """Build the pack of a period and write it into ``out_dir`` (see build_pack and write_pack)."""
    out = _check_out_dir(out_dir)  # before the work, not after it
    pack = build_pack(ledger, since, until, generated_at=generated_at)
    write_pack(pack, out)
    return pack


def _check_out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInputError(
            f"{out} is not an empty directory: a pack is written into a new or empty one, so that "
            "nothing else is mistaken for part of it"
        )
    return out


def pack_zip_bytes(pack: Pack) -> bytes:
    """The pack's files as a zip archive, under the folder ``evidence-<from>_<to>/``."""
    folder = f"evidence-{pack.since.isoformat()}_{pack.until.isoformat()}"
    buffer = io.BytesIO()
    stamp = datetime.fromisoformat(pack.generated_at.replace("Z", "+00:00")).timetuple()[:6]
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in pack.files().items():
            entry = zipfile.ZipInfo(f"{folder}/{name}", date_time=stamp)
            entry.compress_type = zipfile.ZIP_DEFLATED  # a ZipInfo does not take the archive's default
            archive.writestr(entry, data)
    return buffer.getvalue()


def _select(
    ledger: EvidenceLedger, since: date, until: date, verified_start: tuple[int, str] | None = None
) -> tuple[ChainAnchors, bytes, list[Run], frozenset[str]]:
    """Verify the whole chain; return the period's anchors, its records' bytes, its runs and the DAGs
    its records belong to."""
    first, last = since.isoformat(), until.isoformat()
    # With a verified start the days before the period are not read again.
    segments = ledger.read_segments(since=since if verified_start is not None else None)
    before = [s for s in segments if s[0][:10] < first]
    period = [s for s in segments if first <= s[0][:10] <= last]
    after = [s for s in segments if s[0][:10] > last]

    if verified_start is None:
        verdict = _checked(verify_segments(before))
    else:
        verdict = Verdict(0, None, *verified_start)
    start_seq, start_prev = verdict.last_seq + 1, verdict.last_hash
    chunks = list(period)
    verdict = _checked(verify_segments(chunks, start_seq=start_seq, start_prev=start_prev))
    records = [record for name, data in chunks for record in read_segment(data, name)]
    runs = fold_runs(records)
    open_runs = {
        _run_needle(run): run
        for run in runs
        if run.started_at and run.started_at[:10] >= first and run.finished_at is None
    }
    # Runs started in the period that went on past its last day: take whole days up to their end.
    pending: list[tuple[str, bytes]] = []
    for name, data in after:
        verdict = _checked(
            verify_segments([(name, data)], start_seq=verdict.last_seq + 1, start_prev=verdict.last_hash)
        )
        if not open_runs:
            continue
        pending.append((name, data))
        if not any(needle in data for needle in open_runs):
            continue
        for pending_name, pending_data in pending:
            chunks.append((pending_name, pending_data))
            records.extend(read_segment(pending_data, pending_name))
        pending = []
        runs = fold_runs(records)
        open_runs = {
            needle: run
            for run in runs
            if (needle := _run_needle(run)) in open_runs and run.finished_at is None
        }
    # What the backend checks beyond the bytes (the PostgreSQL chain head, a file's repairs).
    verdict = _checked(ledger.confirm(verdict, records))
    data = b"".join(chunk for _, chunk in chunks)
    anchors = ChainAnchors(
        first_seq=records[0].seq if records else start_seq,
        first_prev=records[0].prev if records else start_prev,
        last_seq=records[-1].seq if records else start_seq - 1,
        last_hash=records[-1].hash if records else start_prev,
        records=len(records),
        first_day=records[0].day if records else None,
        last_day=records[-1].day if records else None,
    )
    dag_ids = frozenset(str(r.fields["dag_id"]) for r in records if r.fields.get("dag_id"))
    return anchors, data, runs, dag_ids


def _checked(verdict: Verdict) -> Verdict:
    if not verdict.ok:
        raise LedgerError(
            f"the ledger's chain is broken: {verdict.problem}; not exporting evidence from it "
            "(run `cloudops evidence verify`)"
        )
    return verdict


def _run_needle(run: Run) -> bytes:
    """The bytes every record of the run holds (canonical JSON), to find them without parsing."""
    return b'"run_id":' + json.dumps(run.run_id, ensure_ascii=False).encode() + b","


def _notes(runs: Sequence[Run], since: date, until: date) -> list[str]:
    earlier = [run for run in runs if (run.started_at or "")[:10] < since.isoformat()]
    later = [run for run in runs if (run.started_at or "")[:10] > until.isoformat()]
    notes = []
    if earlier:
        notes.append(
            f"{len(earlier)} run(s) have records in this pack but started before {since.isoformat()} "
            "(or their start was never recorded): they are not in the tables below; their records "
            "are in records.jsonl."
        )
    if later:
        notes.append(
            f"{len(later)} run(s) started after {until.isoformat()}, on the extra day(s) this pack holds "
            "so that runs of the period are complete; they are not in the tables below."
        )
    return notes


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


# -- verifying -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackVerdict:
    """The outcome of checking a pack: every problem found (empty when the pack is intact)."""

    problems: list[str]
    records: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_pack(directory: str | Path) -> PackVerdict:
    """Check a pack: the manifest's hashes and sizes, and the chain of its records from its anchors.

    A file edited (hash or size differs), added (not in the manifest) or removed is named; so is the
    first bad record of ``records.jsonl`` (altered, missing, out of order, or a chain that does not
    end at the manifest's last record). This proves the pack is whole and its records chain; that
    they are the ledger's own takes one comparison with the ledger or its shipped copy: the hash of
    record ``last_seq`` there must be the manifest's ``last_hash``.
    """
    folder = Path(directory)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        return PackVerdict([f"{manifest_path}: no manifest (not an evidence pack, or it was removed)"])
    try:
        manifest = json.loads(manifest_path.read_bytes())
        listed: dict[str, Any] = manifest["files"]
        chain = manifest["chain"]
        first_seq, first_prev = int(chain["first_seq"]), str(chain["first_prev"])
        last_seq, last_hash = int(chain["last_seq"]), str(chain["last_hash"])
    except (ValueError, KeyError, TypeError) as error:
        return PackVerdict([f"{manifest_path}: not a pack manifest ({error})"])
    problems = []
    present = {p.name for p in folder.iterdir() if p.name != MANIFEST_FILE}
    for name in sorted(present - set(listed)):
        problems.append(f"{name}: added (not in the manifest)")
    for name, entry in sorted(listed.items()):
        # The manifest is untrusted: a listed name is one plain file of this folder, or it is refused
        # (never followed to ../x, an absolute path, a subfolder or a link out of the pack).
        if not _PACK_FILE_NAME.match(name) or (folder / name).is_symlink():
            problems.append(f"{name!r}: not a file name of the pack (listed in the manifest); not read")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{name}: its manifest entry is not an object")
            continue
        path = folder / name
        if name not in present or not path.is_file():
            problems.append(f"{name}: removed (listed in the manifest)")
            continue
        data = path.read_bytes()
        if len(data) != entry.get("size") or _sha256(data) != entry.get("sha256"):
            problems.append(
                f"{name}: edited (sha256 {_sha256(data)[:12]}…, {len(data)} bytes; the manifest says "
                f"{str(entry.get('sha256'))[:12]}…, {entry.get('size')} bytes)"
            )
    records = 0
    records_path = folder / RECORDS_FILE
    scope = manifest.get("scope")
    if scope is not None and records_path.is_file() and not records_path.is_symlink():
        found, scoped_problems = _verify_scoped(records_path.read_bytes(), scope, first_seq, last_seq)
        records = found
        problems += [f"{RECORDS_FILE}: {problem}" for problem in scoped_problems]
    elif records_path.is_file() and not records_path.is_symlink():
        verdict = verify_segments(
            [(RECORDS_FILE, records_path.read_bytes())], start_seq=first_seq, start_prev=first_prev
        )
        records = verdict.records
        if not verdict.ok:
            problems.append(f"{RECORDS_FILE}: {verdict.problem}")
        elif (verdict.last_seq, verdict.last_hash) != (last_seq, last_hash):
            problems.append(
                f"{RECORDS_FILE}: the chain ends at seq {verdict.last_seq}, the manifest's last record is "
                f"seq {last_seq} (records at the end were removed or added)"
            )
    elif RECORDS_FILE not in listed:
        problems.append(f"{RECORDS_FILE}: removed (and from the manifest too)")
    return PackVerdict(problems, records, manifest)


def _verify_scoped(data: bytes, scope: Any, first_seq: int, last_seq: int) -> tuple[int, list[str]]:
    """Check a scoped pack's records: each one's own hash, rising seqs within the anchors, DAGs in
    the scope, and as many records as the scope says."""
    if not isinstance(scope, dict) or not isinstance(scope.get("dag_ids"), list):
        return 0, ["the manifest's scope is not {dag_ids: [...], records: N}"]
    allowed, problems, previous, count = set(scope["dag_ids"]), [], first_seq - 1, 0
    for number, line in enumerate(data.splitlines(), start=1):
        where = f"line {number}"
        try:
            record = json.loads(line)
            seq, prev = int(record["seq"]), str(record["prev"])
        except (ValueError, KeyError, TypeError):
            problems.append(f"{where}: not a ledger record")
            continue
        verdict = verify_segments([(RECORDS_FILE, line + b"\n")], start_seq=seq, start_prev=prev)
        if not verdict.ok:
            problems.append(f"{where}: {verdict.problem}")
        elif not previous < seq <= last_seq:
            problems.append(
                f"{where}: record seq {seq} is out of order or outside seq {first_seq} to {last_seq}"
            )
        elif record.get("dag_id") not in allowed:
            problems.append(
                f"{where}: record seq {seq} is of DAG {record.get('dag_id')!r}, outside the scope"
            )
        previous, count = max(previous, seq), count + 1
    if not problems and count != scope.get("records"):
        problems.append(f"{count} records, the manifest's scope says {scope.get('records')}")
    return count, problems


__all__ = [
    "MANIFEST_FILE",
    "PACK_FORMAT",
    "RECORDS_FILE",
    "REPORT_FILE",
    "ChainAnchors",
    "Pack",
    "PackError",
    "PackVerdict",
    "build_pack",
    "export_pack",
    "pack_zip_bytes",
    "render_report",
    "scope_pack",
    "verify_pack",
    "write_pack",
]
