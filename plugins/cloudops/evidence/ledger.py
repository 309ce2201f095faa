"""The evidence ledger: an append-only, hash-chained record of every runbook run.

Each record is one line of canonical JSON (keys sorted, no spaces, UTF-8) followed by its own hash:

    {"at":"2026-11-23T02:15:00.123456Z","data":{...},"kind":"step.try",...,"prev":"<hex>","seq":42,
     "hash":"<hex>"}

``hash`` is the SHA-256 of the record's canonical JSON without ``hash`` (the exact bytes before
``,"hash":``, closed with ``}``); ``prev`` is the hash of the record before it (64 zeros for the
first). Records live in one file per UTC day (``<ledger>/segments/YYYY-MM-DD.jsonl``); the chain runs
on across days. Anyone can re-check a record with nothing but ``json`` and ``hashlib``:

    body = {k: v for k, v in record.items() if k != "hash"}
    sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())

Writers (the scheduler's and every worker's listener, the runbooks' own facts) append under an
exclusive ``flock`` on ``<ledger>/ledger.lock``, so one host's processes share one chain. The lock
is waited for a bounded time (``lock_timeout``, 5 s by default): a stuck holder (a stopped task, a
stalled network file system) makes the record fail, which the recorder counts, rather than hang
the scheduler. Records carry a ``key``: a record whose key is already in the current day's segment
is not written again (listeners fire on every try, and some events fire twice; each try is
recorded once).

A writer killed mid-line leaves a *torn* last line. The next writer, under the lock, moves the
partial bytes aside into ``<segment>.torn-<offset>`` beside the segment, cuts the segment back to
its last whole line and appends a ``ledger.repaired`` record (segment, offset, size and sha256 of
the bytes moved, the file they went to) before its own, so recording goes on and the chain says
what happened; ``verify`` lists every repair and checks the moved bytes are still there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cloudops.errors import CloudOpsError

log = logging.getLogger(__name__)

GENESIS = "0" * 64
EVIDENCE_ENV = "CLOUDOPS_EVIDENCE_DIR"
SEGMENTS = "segments"
_HASH_SUFFIX = re.compile(rb',"hash":"([0-9a-f]{64})"\}$')
_HASH_SUFFIX_LENGTH = len(',"hash":"') + 64 + len('"}')
_DECODER = json.JSONDecoder()
_SEGMENT_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")
LEDGER_REPAIRED = "ledger.repaired"
DEFAULT_LOCK_TIMEOUT = 5.0
_LOCK_POLL_SECONDS = 0.05


class LedgerError(CloudOpsError):
    """The ledger cannot be written or read as a ledger."""


def evidence_dir() -> Path:
    """The local evidence folder: ``$CLOUDOPS_EVIDENCE_DIR``, else ``$AIRFLOW_HOME/cloudops-evidence``."""
    default = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "cloudops-evidence"
    return Path(os.environ.get(EVIDENCE_ENV) or default)


def canonical_json(value: Any) -> bytes:
    """The one byte form every hash in the evidence is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def seal(body: Mapping[str, Any]) -> tuple[bytes, str]:
    """The ledger line of ``body`` (without newline) and its hash."""
    if "hash" in body:
        raise LedgerError("a record body must not carry its own hash")
    encoded = canonical_json(body)
    digest = hashlib.sha256(encoded).hexdigest()
    return encoded[:-1] + b',"hash":"' + digest.encode() + b'"}', digest


def utc_stamp(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a Z: sorts as text in time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Record:
    """One ledger record as read back, with where it was found."""

    seq: int
    at: str
    kind: str
    key: str
    prev: str
    hash: str
    fields: dict[str, Any]
    segment: str
    line: int

    @property
    def day(self) -> str:
        return self.at[:10]


@dataclass
class _Tail:
    """What an appender knows about the end of the chain, refreshed from the files under the lock."""

    segment: Path | None = None
    offset: int = 0
    seq: int = 0
    hash: str = GENESIS
    keys: set[str] = field(default_factory=set)


class Ledger:
    """The local ledger in ``directory`` (default ``<evidence dir>/ledger``).

    :param lock_timeout: seconds to wait for the writers' lock before giving up (LedgerError).
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        fsync: bool = True,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self.directory = Path(directory) if directory else evidence_dir() / "ledger"
        self.segments_dir = self.directory / SEGMENTS
        self.fsync = fsync
        self.lock_timeout = lock_timeout
        self._tail = _Tail()
        self._repairs: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def locked(self, *, shared: bool = False) -> Iterator[None]:
        """Hold the writers' lock (exclusive, or shared for a consistent read), waiting at most
        ``lock_timeout`` seconds.

        :raises LedgerError: the lock was not free in time (naming the lock file).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        attempts = max(1, int(self.lock_timeout / _LOCK_POLL_SECONDS) + 1)
        with (self.directory / "ledger.lock").open("a+b") as lock:
            for attempt in range(attempts):
                try:
                    fcntl.flock(lock, mode)
                    break
                except BlockingIOError:
                    if attempt + 1 == attempts:
                        raise LedgerError(
                            f"ledger {self.directory}: the lock {lock.name} was not free within "
                            f"{self.lock_timeout:g} s (another writer holds it: a stopped or stuck "
                            "process); not waiting longer"
                        ) from None
                    time.sleep(_LOCK_POLL_SECONDS)  # bounded: attempts x poll = lock_timeout
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- writing -------------------------------------------------------------------------------
    def append(
        self, kind: str, *, key: str | None = None, at: datetime | None = None, **fields: Any
    ) -> Record | None:
        """Append one record; return it, or None when a record with the same key is already there."""
        written = self.append_many([(kind, key, at, fields)])
        return written[0] if written else None

    def append_many(
        self, entries: Iterable[tuple[str, str | None, datetime | None, Mapping[str, Any]]]
    ) -> list[Record]:
        """Append records ``(kind, key, at, fields)`` in order under one lock and one fsync.

        :raises LedgerError: the lock was not free in time, or the clock went back.
        """
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        written: list[Record] = []
        with self.locked():
            handle, tail, refreshed = None, self._tail, False
            try:
                for kind, key, at, fields in entries:
                    moment = at or datetime.now(UTC)
                    segment = self.segments_dir / f"{moment.astimezone(UTC).date().isoformat()}.jsonl"
                    # Others write only under this lock: read the files once, then follow our own writes.
                    if not refreshed or segment != tail.segment:
                        refreshed = True
                        tail = self._refresh(segment)
                    pending = [(LEDGER_REPAIRED, None, repair) for repair in self._repairs]
                    self._repairs = []
                    for entry_kind, entry_key, entry_fields in [*pending, (kind, key, fields)]:
                        record_key = entry_key or f"{entry_kind}|{tail.seq + 1}"
                        if record_key in tail.keys:
                            log.debug("ledger: %s is already recorded; not written again", record_key)
                            continue
                        handle, record = self._write(
                            handle, segment, tail, entry_kind, record_key, moment, entry_fields
                        )
                        written.append(record)
            finally:
                if handle is not None:
                    self._close(handle)
        return written

    def _write(
        self,
        handle: Any,
        segment: Path,
        tail: _Tail,
        kind: str,
        key: str,
        moment: datetime,
        fields: Mapping[str, Any],
    ) -> tuple[Any, Record]:
        """Write one sealed line at the tail of ``segment``; return the open handle and the record."""
        body = {
            **fields,
            "at": utc_stamp(moment),
            "key": key,
            "kind": kind,
            "prev": tail.hash,
            "seq": tail.seq + 1,
        }
        line, digest = seal(body)
        if handle is None or handle.name != str(segment):
            if handle is not None:
                self._close(handle)
            handle = segment.open("ab")  # closed by append_many, after fsync
        handle.write(line + b"\n")
        handle.flush()
        tail.segment, tail.offset = segment, handle.tell()
        tail.seq, tail.hash = body["seq"], digest
        tail.keys.add(key)
        record = Record(
            body["seq"], body["at"], kind, key, body["prev"], digest, dict(fields), segment.name, 0
        )
        return handle, record

    def _close(self, handle: Any) -> None:
        if self.fsync:
            os.fsync(handle.fileno())
        handle.close()

    def _refresh(self, segment: Path) -> _Tail:
        """Bring the cached tail up to date with the files: read only what others appended since."""
        latest = self._latest_segment()
        if latest is not None and latest.name > segment.name:
            raise LedgerError(
                f"ledger {self.directory}: segment {latest.name} is newer than this record's day "
                f"({segment.name}): the clock went back; not writing out of order"
            )
        if latest is None:
            self._tail = _Tail()
        elif self._tail.segment == latest:
            self._read_tail(latest, self._tail)
        else:
            self._tail = _Tail()
            self._read_tail(latest, self._tail)
        if latest != segment:  # a new day: a new segment, keys are unique per day
            self._tail.segment, self._tail.offset, self._tail.keys = segment, 0, set()
        return self._tail

    def _read_tail(self, segment: Path, tail: _Tail) -> None:
        """Read ``segment`` from ``tail.offset`` on, moving the tail to its end (a torn last line is
        moved aside first: see the module's docstring)."""
        with segment.open("rb") as handle:
            handle.seek(tail.offset)
            data = handle.read()
        if data and not data.endswith(b"\n"):
            whole = data.rfind(b"\n") + 1
            self._move_torn_line_aside(segment, tail.offset + whole, data[whole:])
            data = data[:whole]
        for line in data.splitlines():
            record = json.loads(line)
            tail.seq, tail.hash = record["seq"], record["hash"]
            tail.keys.add(record["key"])
        tail.segment, tail.offset = segment, tail.offset + len(data)

    def _move_torn_line_aside(self, segment: Path, offset: int, torn: bytes) -> None:
        """Keep the torn bytes in a file beside the segment, cut the segment back to ``offset`` and
        queue the ``ledger.repaired`` record (called under the writers' lock)."""
        aside = segment.with_name(f"{segment.name}.torn-{offset}")
        with aside.open("xb") as handle:  # never overwrite an earlier repair's bytes
            handle.write(torn)
            handle.flush()
            os.fsync(handle.fileno())
        os.truncate(segment, offset)
        if self.fsync:
            with segment.open("rb") as handle:
                os.fsync(handle.fileno())
        repair = {
            "data": {
                "segment": segment.name,
                "offset": offset,
                "line": None,
                "bytes": len(torn),
                "sha256": hashlib.sha256(torn).hexdigest(),
                "moved_to": aside.name,
                "reason": "torn last line (a writer was cut off mid-write)",
            }
        }
        with segment.open("rb") as handle:
            repair["data"]["line"] = handle.read().count(b"\n") + 1
        log.warning(
            "ledger %s: the last line of %s was torn (%d bytes at offset %d, a writer was cut off): "
            "moved aside to %s and recorded as %s",
            self.directory,
            segment.name,
            len(torn),
            offset,
            aside.name,
            LEDGER_REPAIRED,
        )
        self._repairs.append(repair)

    def _latest_segment(self) -> Path | None:
        days = self.segment_files()
        return days[-1] if days else None

    # -- reading -------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        """The ledger as messages name it: its folder."""
        return str(self.directory)

    def segment_where(self, name: str) -> str:
        """Where one day segment is, as messages name it."""
        return str(self.segments_dir / name)

    def clock(self) -> datetime:
        """The time the ledger stamps records with: this host's clock."""
        return datetime.now(UTC)

    def read_segments(self, *, since: date | None = None) -> list[tuple[str, bytes]]:
        """Every day segment's ``(name, bytes)`` from ``since`` on, read under the writers' shared lock so
        no line is caught half-written."""
        if not self.segments_dir.is_dir():
            return []
        first = since.isoformat() if since else ""
        with self.locked(shared=True):  # bounded, like the writers' wait
            return [(p.name, p.read_bytes()) for p in self.segment_files() if p.name[:10] >= first]

    def verify(self) -> Verdict:
        """Check the whole chain (see :func:`verify_ledger`)."""
        return verify_ledger(self)

    def confirm(self, verdict: Verdict, records: Iterable[Record]) -> Verdict:
        """``verdict`` of segments read by :meth:`read_segments`, with what only the folder can check:
        the bytes each ``ledger.repaired`` record moved aside are still there."""
        if not verdict.ok or not verdict.repairs:
            return verdict
        return check_repairs(self.segments_dir, records, verdict)

    def head(self) -> tuple[Any, ...]:
        """What identifies the folder's content, for caches: every segment's name, size and mtime, and
        the last line's bytes. Any append, truncation or rewrite changes it."""
        stats = []
        for path in self.segment_files():
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            stats.append((path.name, info.st_size, info.st_mtime_ns))
        last = b""
        if stats:
            with (self.segments_dir / stats[-1][0]).open("rb") as handle:
                handle.seek(max(stats[-1][1] - 100, 0))
                last = handle.read()
        return (tuple(stats), last)

    def segment_files(self) -> list[Path]:
        """The day segments in day order."""
        if not self.segments_dir.is_dir():
            return []
        return sorted(p for p in self.segments_dir.iterdir() if _SEGMENT_NAME.match(p.name))

    def records(self, *, since: date | None = None, until: date | None = None) -> Iterator[Record]:
        """Every record of the days in [since, until], in ledger order (not verified: see verify)."""
        for segment in self.segment_files():
            day = segment.name[:10]
            if (since and day < since.isoformat()) or (until and day > until.isoformat()):
                continue
            yield from read_segment(segment.read_bytes(), segment.name)


def read_segment(data: bytes, name: str) -> Iterator[Record]:
    """Parse one segment's bytes into records (no hash checks: see verify_segments)."""
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        yield _record(record, name, number)


def _record(record: dict[str, Any], segment: str, line: int) -> Record:
    fields = {k: v for k, v in record.items() if k not in ("seq", "at", "kind", "key", "prev", "hash")}
    return Record(
        record["seq"],
        record["at"],
        record["kind"],
        record["key"],
        record["prev"],
        record["hash"],
        fields,
        segment,
        line,
    )


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a chain: how many records were good and the first problem, if any."""

    records: int
    problem: str | None = None
    last_seq: int = 0
    last_hash: str = GENESIS
    # What the ``ledger.repaired`` records of the chain say was repaired, one line each.
    repairs: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_segments(
    segments: Iterable[tuple[str, bytes]], *, start_seq: int = 1, start_prev: str = GENESIS
) -> Verdict:
    """Check the chain across ``(name, bytes)`` day segments in order; name the first bad record.

    A record is *altered* when its hash does not match its own bytes, *missing* when the sequence
    skips it, *out of order* when it appears after a later one (or in another day's segment), and
    the chain is *broken* when its ``prev`` is not the hash of the record before it.
    """
    expected_seq, prev, count, previous_day = start_seq, start_prev, 0, ""
    repairs: list[str] = []
    for name, data in segments:
        match = _SEGMENT_NAME.match(name.rsplit("/", 1)[-1])
        day = match.group(1) if match else ""
        if day and previous_day and day <= previous_day:
            return Verdict(
                count, f"segment {name} is out of order (after {previous_day})", expected_seq - 1, prev
            )
        previous_day = day or previous_day
        if data and not data.endswith(b"\n"):
            last = data.count(b"\n") + 1
            return Verdict(
                count,
                f"{name} line {last}: incomplete last line (a writer was cut off)",
                expected_seq - 1,
                prev,
            )
        lines = data.splitlines()
        for number, line in enumerate(lines, start=1):
            where = f"{name} line {number}"
            # The suffix has a fixed length: match it at its place rather than search the line.
            found = _HASH_SUFFIX.match(line, max(len(line) - _HASH_SUFFIX_LENGTH, 0))
            try:
                # Lines are UTF-8 and canonical: decode once and skip json.loads' encoding sniffing.
                text = line.decode()
                record, end = _DECODER.raw_decode(text)
                if end != len(text):
                    raise ValueError("trailing data")
            except ValueError:
                return Verdict(
                    count, f"{where}: not a JSON record (altered or damaged)", expected_seq - 1, prev
                )
            seq = record.get("seq") if isinstance(record, dict) else None
            if found is None or not isinstance(seq, int):
                return Verdict(
                    count, f"{where}: not a ledger record (no seq or hash)", expected_seq - 1, prev
                )
            if hashlib.sha256(line[: found.start()] + b"}").hexdigest() != found.group(1).decode():
                return Verdict(
                    count,
                    f"record seq {seq} ({where}) was altered: its hash does not match its content",
                    expected_seq - 1,
                    prev,
                )
            if seq != expected_seq:
                if seq < expected_seq:
                    problem = (
                        f"record seq {seq} ({where}) is out of order: it comes after seq {expected_seq - 1}"
                    )
                elif _seq_appears(lines[number:], expected_seq):
                    problem = (
                        f"record seq {expected_seq} is out of order: seq {seq} comes before it ({where})"
                    )
                else:
                    problem = (
                        f"record seq {expected_seq} is missing: seq {seq} follows seq {expected_seq - 1} "
                        f"({where})"
                    )
                return Verdict(count, problem, expected_seq - 1, prev)
            if record.get("prev") != prev:
                return Verdict(
                    count,
                    f"record seq {seq} ({where}) does not follow seq {seq - 1}: its prev hash differs "
                    f"(seq {seq - 1} was replaced or removed)",
                    expected_seq - 1,
                    prev,
                )
            if day and not str(record.get("at", "")).startswith(day):
                return Verdict(
                    count,
                    f"record seq {seq} ({where}) is out of order: dated {record.get('at')} in segment {day}",
                    expected_seq - 1,
                    prev,
                )
            if record.get("kind") == LEDGER_REPAIRED:
                repairs.append(_repair_line(seq, record.get("data")))
            prev, expected_seq, count = found.group(1).decode(), expected_seq + 1, count + 1
    return Verdict(count, None, expected_seq - 1, prev, tuple(repairs))


def _repair_line(seq: int, data: Any) -> str:
    data = data if isinstance(data, dict) else {}
    return (
        f"seq {seq}: {data.get('segment')} line {data.get('line')}: a torn last line of {data.get('bytes')} "
        f"bytes (sha256 {str(data.get('sha256'))[:12]}…) was moved aside to {data.get('moved_to')}"
    )


def _seq_appears(lines: list[bytes], seq: int) -> bool:
    needle = b'"seq":' + str(seq).encode() + b","
    needle_end = b'"seq":' + str(seq).encode() + b"}"
    return any(needle in line or needle_end in line for line in lines)


def verify_ledger(ledger: Ledger) -> Verdict:
    """Check the local ledger's whole chain, and that the bytes each repair moved aside are still
    beside their segment as recorded (a repair whose file is gone or changed is a problem)."""
    verdict = verify_segments((p.name, p.read_bytes()) for p in ledger.segment_files())
    if not verdict.ok or not verdict.repairs:
        return verdict
    return check_repairs(ledger.segments_dir, ledger.records(), verdict)


def check_repairs(segments_dir: Path, records: Iterable[Record], verdict: Verdict) -> Verdict:
    """``verdict``, or the first ``ledger.repaired`` record among ``records`` whose moved-aside file in
    ``segments_dir`` is missing or changed, as its problem."""
    for record in records:
        if record.kind != LEDGER_REPAIRED:
            continue
        data = record.fields.get("data") or {}
        aside = segments_dir / str(data.get("moved_to"))
        if not _SEGMENT_NAME.match(str(data.get("segment"))) or not str(data.get("moved_to")).startswith(
            f"{data.get('segment')}.torn-"
        ):
            problem = f"record seq {record.seq} ({LEDGER_REPAIRED}) names no torn-line file of a segment"
        elif not aside.is_file():
            problem = f"record seq {record.seq} ({LEDGER_REPAIRED}): the moved-aside {aside.name} is missing"
        elif hashlib.sha256(aside.read_bytes()).hexdigest() != data.get("sha256"):
            problem = f"record seq {record.seq} ({LEDGER_REPAIRED}): the moved-aside {aside.name} was changed"
        else:
            continue
        return Verdict(verdict.records, problem, verdict.last_seq, verdict.last_hash, verdict.repairs)
    return verdict


__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "EVIDENCE_ENV",
    "GENESIS",
    "LEDGER_REPAIRED",
    "Ledger",
    "LedgerError",
    "Record",
    "Verdict",
    "canonical_json",
    "check_repairs",
    "evidence_dir",
    "read_segment",
    "seal",
    "utc_stamp",
    "verify_ledger",
    "verify_segments",
]
