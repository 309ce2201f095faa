"""The probe sample store: durable batches per UTC day, compaction, and the month read back as grids."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cloudops.errors import InvalidInputError
from cloudops.probes.store import ProbeSample, SampleStore, SampleStoreError
from cloudops.reports.availability import BAD, GOOD, MISSING, samples_grid
from cloudops.reports.period import month_period

pytestmark = pytest.mark.unit

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
NOW = datetime(2027, 3, 15, tzinfo=UTC)


def minute_samples(
    key: str, start: datetime, minutes: int, *, failing: set[int] = frozenset()
) -> list[ProbeSample]:
    return [
        ProbeSample(
            key,
            start + timedelta(minutes=i, seconds=5),
            i not in failing,
            12,
            None if i not in failing else "timeout",
        )
        for i in range(minutes)
    ]


def test_batches_land_per_utc_day_and_read_back_as_the_same_grid(tmp_path: Path) -> None:
    store = SampleStore(tmp_path)
    period = month_period("2026-11", "Europe/Paris", now=NOW)
    # Paris midnight on 1 November is 23:00 UTC on 31 October: the first hour lands in October's UTC day.
    first = minute_samples("database:shop", period.start - timedelta(minutes=1), 120, failing={0, 30})
    second = minute_samples("host:web-1", period.start, 90, failing={89})
    written = store.append(first) + store.append(second)
    assert sorted(path.parent.name for path in written) == [
        "2026-10-31",
        "2026-10-31",
        "2026-11-01",
        "2026-11-01",
    ]
    grid = store.grid(period, ["database:shop", "host:web-1", "endpoint:none"])
    expected = samples_grid(
        period,
        ["database:shop", "host:web-1", "endpoint:none"],
        [(s.target, s.at, s.ok) for s in first + second],
    )
    assert grid == expected
    shop = grid["database:shop"]
    assert shop.before == BAD  # the minute before the month failed
    assert shop.codes[29] == BAD
    assert shop.codes[:2] == bytes([GOOD, GOOD])
    assert shop.codes[119] == MISSING
    assert grid["endpoint:none"].codes == bytes(period.minutes)
    table = store.read(period.start, period.start + timedelta(minutes=10), ["host:web-1"])
    assert table.num_rows == 10
    assert set(table.column("latency_ms").to_pylist()) == {12}


def test_compaction_merges_a_day_and_a_repeat_changes_nothing(tmp_path: Path) -> None:
    store = SampleStore(tmp_path)
    start = datetime(2026, 11, 5, 10, tzinfo=UTC)
    store.append(minute_samples("host:web-1", start, 30))
    store.append(minute_samples("host:web-1", start + timedelta(minutes=30), 30, failing={3}))
    period = month_period("2026-11", "Europe/Paris", now=NOW)
    before = store.grid(period, ["host:web-1"])
    day_file = store.compact(date(2026, 11, 5))
    assert day_file is not None
    assert sorted(p.name for p in day_file.parent.iterdir()) == ["day.parquet"]
    assert pq.read_table(day_file).num_rows == 60
    # A crash after writing day.parquet but before removing a batch leaves samples twice: same grid.
    store.append(minute_samples("host:web-1", start + timedelta(minutes=30), 30, failing={3}))
    assert store.grid(period, ["host:web-1"]) == before
    assert store.compact(date(2026, 11, 5)) == day_file
    assert pq.read_table(day_file).num_rows == 90
    assert store.compact(date(2026, 11, 6)) is None


def test_a_half_written_batch_is_never_read(tmp_path: Path) -> None:
    store = SampleStore(tmp_path)
    start = datetime(2026, 11, 5, 10, tzinfo=UTC)
    store.append(minute_samples("host:web-1", start, 5))
    (tmp_path / "2026-11-05" / ".batch-1-dead.parquet.tmp").write_bytes(b"PAR1 torn")
    assert store.read(start, start + timedelta(hours=1)).num_rows == 5


def test_a_foreign_or_damaged_file_is_refused_by_name(tmp_path: Path) -> None:
    store = SampleStore(tmp_path)
    day = tmp_path / "2026-11-05"
    day.mkdir()
    pq.write_table(pa.table({"target": ["x"], "when": [1]}), day / "batch-1-aaaa.parquet")
    start = datetime(2026, 11, 5, tzinfo=UTC)
    with pytest.raises(SampleStoreError, match=r"batch-1-aaaa.parquet has columns \['target', 'when'\]"):
        store.read(start, start + timedelta(days=1))
    (day / "batch-1-aaaa.parquet").write_bytes(b"not parquet")
    with pytest.raises(SampleStoreError, match=r"batch-1-aaaa\.parquet is unreadable"):
        store.read(start, start + timedelta(days=1))


def test_a_sample_without_time_zone_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="has no time zone"):
        SampleStore(tmp_path).append([ProbeSample("host:web-1", datetime(2026, 11, 5, 10), True)])  # noqa: DTZ001


def test_detail_is_bounded(tmp_path: Path) -> None:
    store = SampleStore(tmp_path)
    at = datetime(2026, 11, 5, 10, tzinfo=PARIS)
    store.append([ProbeSample("host:web-1", at, False, None, "x" * 5000)])
    (detail,) = store.read(at, at + timedelta(minutes=1)).column("detail").to_pylist()
    assert len(detail) == 200


def test_compact_finished_leaves_today_alone(tmp_path: Path) -> None:
    store = SampleStore(tmp_path)
    store.append(minute_samples("host:web-1", datetime(2026, 11, 4, 23, 58, tzinfo=UTC), 4))
    done = store.compact_finished(datetime(2026, 11, 5, 12, tzinfo=UTC))
    assert [path.parent.name for path in done] == ["2026-11-04"]
    (left,) = (tmp_path / "2026-11-05").iterdir()
    assert left.name.startswith("batch-")
