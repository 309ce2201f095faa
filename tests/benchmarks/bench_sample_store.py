"""Benchmark: read a month of one-minute probe samples for 50 targets (2.2 million rows) back as grids.

Target (issue 12): the whole monthly report within 30 s and 500 MB; this measures its first step, the
sample store's ``grid`` for one month, and the writer's cost of one minute's batch.

How to run it (no sandbox needed; about 30 s on 2 cores):

    .venv/bin/python tests/benchmarks/bench_sample_store.py [--targets 50] [--month 2026-10]

The month's days are written as compacted ``day.parquet`` files (as a finished day is), except the
last day, left as one batch file per minute (as the probe writes it before compaction); then that
day is compacted and the month read again. It prints the figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from cloudops.probes.store import ProbeSample, SampleStore
from cloudops.reports.period import month_period


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--month", default="2026-10")
    args = parser.parse_args()
    period = month_period(args.month, "Europe/Paris", now=datetime.now(UTC))
    keys = [f"host:web-{index}" for index in range(args.targets)]
    rng = np.random.default_rng(12)
    with tempfile.TemporaryDirectory() as root:
        store = SampleStore(root)
        started = time.perf_counter()
        day = period.start.date()
        rows = 0
        last_day = (period.end - timedelta(seconds=1)).date()
        while day <= last_day:
            begin = max(period.start, datetime(day.year, day.month, day.day, tzinfo=UTC))
            end = min(period.end, begin.replace(hour=0, minute=0) + timedelta(days=1))
            minutes = int((end - begin).total_seconds()) // 60
            seconds = int(begin.timestamp()) + np.repeat(np.arange(minutes) * 60 + 7, len(keys))
            if day != last_day:
                store.append_columns(
                    day,
                    {
                        "target": np.tile(np.array(keys), minutes),
                        "at": seconds.astype("datetime64[s]"),
                        "ok": rng.random(minutes * len(keys)) > 0.001,
                        "latency_ms": rng.integers(1, 50, minutes * len(keys)).astype(np.int32),
                        "detail": [None] * (minutes * len(keys)),
                    },
                )
                store.compact(day)
                rows += minutes * len(keys)
            else:
                for minute in range(minutes):
                    at = begin + timedelta(minutes=minute, seconds=7)
                    store.append([ProbeSample(key, at, True, 5) for key in keys])
                rows += minutes * len(keys)
            day += timedelta(days=1)
        written = time.perf_counter() - started
        size = sum(path.stat().st_size for path in Path(root).rglob("*.parquet"))
        batch_started = time.perf_counter()
        store.append([ProbeSample(key, period.end + timedelta(seconds=3), True, 5) for key in keys])
        one_batch = time.perf_counter() - batch_started
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            grid = store.grid(period, keys)
            timings.append(time.perf_counter() - started)
        assert len(grid) == len(keys)
        compact_started = time.perf_counter()
        store.compact_finished(period.end + timedelta(days=2))
        compacting = time.perf_counter() - compact_started
        compacted = []
        for _ in range(3):
            started = time.perf_counter()
            store.grid(period, keys)
            compacted.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"rows: {rows:,} ({len(keys)} targets x {period.minutes:,} minutes); files {size / 1e6:.1f} MB")
    print(
        f"write (setup): {written:.1f} s; one minute's batch of {len(keys)} samples: "
        f"{one_batch * 1000:.1f} ms"
    )
    print(
        f"grid of the month: median {sorted(timings)[1]:.2f} s "
        f"(min {min(timings):.2f}, max {max(timings):.2f})"
    )
    print(
        f"after compacting the last day ({compacting:.2f} s): median {sorted(compacted)[1]:.2f} s "
        f"(min {min(compacted):.2f}, max {max(compacted):.2f})"
    )
    print(f"peak RSS of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
