"""The durable store of probe samples: Parquet batch files per UTC day under one directory.

Layout (``root`` is e.g. ``$CLOUDOPS_SANDBOX_DIR/samples``)::

    root/2026-11-08/batch-1794105600-3f2a9c1e.parquet   one file per append (a probe's minute)
    root/2026-11-08/day.parquet                         the day's batches merged, once compacted

An append writes one new file per UTC day it touches, through a temporary name, fsync and rename, so a
crash loses at most the batch being written (the current minute) and never leaves half a file under a
name a reader opens. Compaction merges a finished day's batches into ``day.parquet`` the same way and
then removes them; a crash in between leaves samples twice, which the grid absorbs (a failed sample wins
its minute, and a repeat changes nothing).

Columns: ``target`` (an SLO target key such as ``database:orders_pg``), ``at`` (UTC, seconds), ``ok``,
``latency_ms`` (null when no answer) and ``detail`` (a short reason, at most 200 characters: the probe
must never put a secret there). Files are our own but still input: a file whose columns are not these
is refused, named.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from cloudops.errors import CloudOpsError, InvalidInputError
from cloudops.reports.availability import BAD, GOOD, TargetSamples
from cloudops.reports.period import MonthPeriod

DETAIL_MAX = 200
_DAY_FILE = "day.parquet"


class SampleStoreError(CloudOpsError):
    """A sample file is unreadable or not one this store wrote."""


@dataclass(frozen=True)
class ProbeSample:
    """One probe answer: the target key, when (aware), whether it was up, and how it went."""

    target: str
    at: datetime
    ok: bool
    latency_ms: int | None = None
    detail: str | None = None


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("target", pa.dictionary(pa.int32(), pa.string()), nullable=False),
            pa.field("at", pa.timestamp("s", tz="UTC"), nullable=False),
            pa.field("ok", pa.bool_(), nullable=False),
            pa.field("latency_ms", pa.int32()),
            pa.field("detail", pa.string()),
        ]
    )


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class SampleStore:
    """Append probe samples in batches and read a month back as per-target slice grids."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- writing -------------------------------------------------------------------------------
    def append(self, samples: Sequence[ProbeSample]) -> list[Path]:
        """Write ``samples`` durably, one new file per UTC day they fall on; return the files written.

        :raises InvalidInputError: a sample without a time zone, or an empty target.
        """
        by_day: dict[date, list[ProbeSample]] = {}
        for sample in samples:
            if sample.at.tzinfo is None:
                raise InvalidInputError(
                    f"probe sample of {sample.target!r}: time {sample.at} has no time zone"
                )
            if not sample.target:
                raise InvalidInputError("probe sample without a target")
            by_day.setdefault(sample.at.astimezone(UTC).date(), []).append(sample)
        written = []
        for day, rows in sorted(by_day.items()):
            columns = {
                "target": [row.target for row in rows],
                "at": [row.at.astimezone(UTC).replace(microsecond=0) for row in rows],
                "ok": [row.ok for row in rows],
                "latency_ms": [row.latency_ms for row in rows],
                "detail": [row.detail[:DETAIL_MAX] if row.detail else row.detail for row in rows],
            }
            written.append(self.append_columns(day, columns))
        return written

    def append_columns(self, day: date, columns: dict[str, Any]) -> Path:
        """Write one batch of one UTC ``day`` from columns (lists or arrays); return its file."""
        import pyarrow as pa

        schema = _schema()
        target = pa.array(columns["target"], pa.string()).dictionary_encode()
        arrays = [target.cast(schema.field("target").type)]
        arrays += [pa.array(columns[field.name], field.type) for field in list(schema)[1:]]
        table = pa.Table.from_arrays(arrays, schema=schema)
        stamp = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
        return self._write(self._day_dir(day), f"batch-{stamp}-{uuid.uuid4().hex[:8]}.parquet", table)

    def _day_dir(self, day: date) -> Path:
        return self.root / day.isoformat()

    def _write(self, directory: Path, name: str, table: Any) -> Path:
        import pyarrow.parquet as pq

        directory.mkdir(parents=True, exist_ok=True)
        final = directory / name
        temporary = directory / f".{name}.tmp"
        with temporary.open("wb") as handle:
            pq.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(final)
        _fsync_dir(directory)
        return final

    def compact(self, day: date) -> Path | None:
        """Merge a day's batch files (and any earlier ``day.parquet``) into one ``day.parquet``.

        Returns the day file, or None when the day has no files.
        """
        directory = self._day_dir(day)
        batches = sorted(directory.glob("batch-*.parquet")) if directory.is_dir() else []
        if not batches:
            existing = directory / _DAY_FILE
            return existing if existing.exists() else None
        parts = [self._read_file(path) for path in [*self._day_files(directory, batches_only=False)]]
        import pyarrow as pa

        merged = (
            pa.concat_tables(parts)
            .unify_dictionaries()
            .sort_by([("at", "ascending")])  # a dictionary column cannot be a sort key
        )
        target = self._write(directory, _DAY_FILE, merged.combine_chunks())
        for path in batches:
            path.unlink()
        _fsync_dir(directory)
        return target

    def compact_finished(self, now: datetime) -> list[Path]:
        """Compact every UTC day before ``now``'s that still has batch files; return the day files.

        The probe process calls it after midnight UTC, the report before it reads: a day of one batch
        a minute is 1,440 files, read about 1 ms each, where a compacted day is one.
        """
        today = now.astimezone(UTC).date()
        done = []
        for directory in sorted(self.root.glob("????-??-??")) if self.root.is_dir() else []:
            try:
                day = date.fromisoformat(directory.name)
            except ValueError:
                continue
            if day < today and any(directory.glob("batch-*.parquet")):
                compacted = self.compact(day)
                if compacted is not None:
                    done.append(compacted)
        return done

    # -- reading -------------------------------------------------------------------------------
    def _day_files(self, directory: Path, *, batches_only: bool = False) -> list[Path]:
        files = sorted(directory.glob("batch-*.parquet"))
        day_file = directory / _DAY_FILE
        if not batches_only and day_file.exists():
            files.insert(0, day_file)
        return files

    def _read_file(self, path: Path, columns: Sequence[str] | None = None) -> Any:
        """One sample file as a table of ``columns`` (all by default), refused unless it is ours.

        The schema is checked from the file's footer before any data is read, so a report reads only
        the columns it needs (``detail`` strings are never turned into objects for a grid).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        expected = _schema()
        try:
            # ParquetFile, not read_table: read_table loads pyarrow.dataset and pandas (~55 MB here).
            with pq.ParquetFile(path) as file:
                names = file.schema_arrow.names
                if names != expected.names:
                    raise SampleStoreError(
                        f"sample file {path} has columns {names}, expected {expected.names}"
                    )
                wanted = list(columns) if columns is not None else expected.names
                table = file.read(columns=wanted)
        except SampleStoreError:
            raise
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise SampleStoreError(f"sample file {path} is unreadable: {error}") from error
        try:
            return table.cast(pa.schema([expected.field(name) for name in wanted]))
        except Exception as error:
            raise SampleStoreError(f"sample file {path} has wrong column types: {error}") from error

    def read(self, start: datetime, end: datetime, targets: Iterable[str] | None = None) -> Any:
        """The samples with ``start <= at < end`` (of ``targets`` when given), as a pyarrow Table."""
        import pyarrow as pa
        import pyarrow.compute as pc

        tables = [self._read_file(path) for path in self._files_between(start, end)]
        if not tables:
            return _schema().empty_table()
        table = pa.concat_tables(tables).unify_dictionaries()
        at = table.column("at")
        keep = pc.and_(
            pc.greater_equal(at, pa.scalar(start.astimezone(UTC), pa.timestamp("s", tz="UTC"))),
            pc.less(at, pa.scalar(end.astimezone(UTC), pa.timestamp("s", tz="UTC"))),
        )
        if targets is not None:
            wanted = pa.array(sorted(set(targets)), pa.string())
            keep = pc.and_(keep, pc.is_in(table.column("target").cast(pa.string()), value_set=wanted))
        return table.filter(keep)

    def grid(self, period: MonthPeriod, targets: Sequence[str]) -> dict[str, TargetSamples]:
        """Lay the month's samples (and the minute on either side) on slices, as ``samples_grid`` does.

        Reads one file at a time and only its ``target``, ``at`` and ``ok`` columns, so memory stays
        at one day's samples plus the grid (one byte per target and minute), whatever the month holds.
        """
        import numpy as np

        size = period.minutes
        keys = list(dict.fromkeys(targets))
        positions = {key: index for index, key in enumerate(keys)}
        cells = np.zeros((len(keys), size + 2), dtype=np.uint8)  # column 0: minute before; size+1: after
        flat = cells.reshape(-1)
        first = int(period.start.timestamp())
        low, high = first - 60, int(period.end.timestamp()) + 60
        for path in self._files_between(
            period.start - timedelta(minutes=1), period.end + timedelta(minutes=1)
        ):
            table = self._read_file(path, ("target", "at", "ok"))
            if not table.num_rows:
                continue
            seconds, ok, rows = _grid_columns(table, positions)
            keep = (rows >= 0) & (seconds >= low) & (seconds < high)
            slot = (seconds[keep] - first) // 60 + 1
            index = rows[keep] * (size + 2) + slot
            failed = ~ok[keep]
            # A failed sample wins its minute: mark the answered minutes first, then the failed ones.
            flat[index[~failed]] = np.maximum(flat[index[~failed]], GOOD)
            flat[index[failed]] = BAD
        return {
            key: TargetSamples(
                cells[index, 1 : size + 1].tobytes(), int(cells[index, 0]), int(cells[index, size + 1])
            )
            for index, key in enumerate(keys)
        }

    def _files_between(self, start: datetime, end: datetime) -> list[Path]:
        """The files of every UTC day from ``start``'s to the day holding the instant before ``end``."""
        files = []
        day = start.astimezone(UTC).date()
        while day <= (end - timedelta(microseconds=1)).astimezone(UTC).date():
            directory = self._day_dir(day)
            if directory.is_dir():
                files += self._day_files(directory)
            day += timedelta(days=1)
        return files


def _grid_columns(table: Any, positions: dict[str, int]) -> tuple[Any, Any, Any]:
    """A file's (epoch seconds, ok, grid row or -1 for a target not asked for) as numpy arrays."""
    import numpy as np
    import pyarrow as pa

    target = table.column("target").combine_chunks()
    if not isinstance(target, pa.DictionaryArray):
        target = target.dictionary_encode()
    mapping = np.array([positions.get(name, -1) for name in target.dictionary.to_pylist()], dtype=np.int64)
    rows = (
        mapping[target.indices.to_numpy(zero_copy_only=False)] if len(mapping) else np.full(len(target), -1)
    )
    seconds = table.column("at").combine_chunks().cast(pa.int64()).to_numpy()
    ok = table.column("ok").combine_chunks().to_numpy(zero_copy_only=False)
    return seconds, ok, rows


__all__ = ["DETAIL_MAX", "ProbeSample", "SampleStore", "SampleStoreError"]
