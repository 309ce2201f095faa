"""The bounded wait for cloud snapshots, driven by a scripted describe and a fake clock.

moto reports every snapshot final at once, so the deadline and the polling are tested here: the wait
takes its describe, clock and sleep as arguments, and these tests give it scripted ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

import pytest

from cloudops.clouds.aws.snapshots import (
    CloudSnapshot,
    CloudSnapshotError,
    SnapshotFailed,
    SnapshotWaitTimeout,
    wait_for_snapshots,
)

pytestmark = pytest.mark.unit

TAKEN = datetime(2026, 11, 23, 2, 15, tzinfo=UTC)


def rds(
    snapshot_id: str = "cloudops-orders-pg-20261123t021500z-1a2b3c", status: str = "creating"
) -> CloudSnapshot:
    return CloudSnapshot(
        kind="rds",
        snapshot_id=snapshot_id,
        backup_id="20261123T021500Z-1a2b3c",
        created_at=TAKEN,
        status=status,
        target="orders_pg",
        instance_id="orders-pg",
    )


def ebs(snapshot_id: str, host: str, status: str = "pending") -> CloudSnapshot:
    return CloudSnapshot(
        kind="ebs",
        snapshot_id=snapshot_id,
        backup_id="20261123T021500Z-1a2b3c",
        created_at=TAKEN,
        status=status,
        target=host,
        volume_id=f"vol-{host.encode().hex()}",
    )


class FakeTime:
    """A monotonic clock that only moves when the wait sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedDescribe:
    """Answers each poll with the next status of each snapshot; the last one repeats."""

    def __init__(self, script: Mapping[str, list[str]]) -> None:
        self._script: dict[str, Iterator[str]] = {key: iter(values) for key, values in script.items()}
        self._last: dict[str, str] = {}
        self.calls: list[list[str]] = []

    def __call__(self, snapshot_ids: list[str]) -> dict[str, str]:
        self.calls.append(list(snapshot_ids))
        answer = {}
        for snapshot_id in snapshot_ids:
            if snapshot_id not in self._script:
                continue  # gone
            self._last[snapshot_id] = next(self._script[snapshot_id], self._last.get(snapshot_id, "?"))
            answer[snapshot_id] = self._last[snapshot_id]
        return answer


def test_a_snapshot_reported_final_at_creation_is_still_described_once() -> None:
    time = FakeTime()
    describe = ScriptedDescribe({"s1": ["available"]})
    [done] = wait_for_snapshots(
        [rds("s1", status="available")],
        describe,
        timeout=timedelta(minutes=5),
        clock=time.clock,
        sleep=time.sleep,
    )
    assert describe.calls == [["s1"]]
    assert time.sleeps == []
    assert done.status == "available"
    assert done.complete


def test_polls_until_available_sleeping_the_interval() -> None:
    time = FakeTime()
    describe = ScriptedDescribe({"s1": ["creating", "creating", "available"]})
    [done] = wait_for_snapshots(
        [rds("s1")],
        describe,
        timeout=timedelta(minutes=5),
        poll_interval=timedelta(seconds=30),
        clock=time.clock,
        sleep=time.sleep,
    )
    assert len(describe.calls) == 3
    assert time.sleeps == [30.0, 30.0]
    assert done.complete


def test_only_unfinished_snapshots_are_described_again() -> None:
    time = FakeTime()
    describe = ScriptedDescribe({"a": ["completed"], "b": ["pending", "pending", "completed"]})
    done = wait_for_snapshots(
        [ebs("a", "web-1"), ebs("b", "web-2")],
        describe,
        timeout=timedelta(minutes=5),
        clock=time.clock,
        sleep=time.sleep,
    )
    assert describe.calls == [["a", "b"], ["b"], ["b"]]
    assert [(s.snapshot_id, s.status) for s in done] == [("a", "completed"), ("b", "completed")]


def test_deadline_names_the_snapshot_and_its_last_status() -> None:
    time = FakeTime()
    describe = ScriptedDescribe({"s1": ["creating"]})
    started = time.now
    with pytest.raises(SnapshotWaitTimeout) as raised:
        wait_for_snapshots(
            [rds("s1")],
            describe,
            timeout=timedelta(seconds=100),
            poll_interval=timedelta(seconds=30),
            clock=time.clock,
            sleep=time.sleep,
        )
    message = str(raised.value)
    assert "s1" in message
    assert "'creating'" in message
    assert "1m40s" in message
    assert "Nothing was deleted" in message
    # The last sleep is cut at the deadline: the wait never runs past it.
    assert time.sleeps == [30.0, 30.0, 30.0, 10.0]
    assert time.now - started == 100
    assert len(describe.calls) == 5  # one more look at the deadline
    assert [(s.snapshot_id, s.status) for s in raised.value.snapshots] == [("s1", "creating")]


def test_zero_timeout_looks_once() -> None:
    time = FakeTime()
    describe = ScriptedDescribe({"s1": ["pending"]})
    with pytest.raises(SnapshotWaitTimeout, match=r"s1.*'pending'"):
        wait_for_snapshots(
            [ebs("s1", "web-1")], describe, timeout=timedelta(0), clock=time.clock, sleep=time.sleep
        )
    assert describe.calls == [["s1"]]
    assert time.sleeps == []


def test_timeout_reports_finished_snapshots_too() -> None:
    time = FakeTime()
    describe = ScriptedDescribe({"a": ["completed"], "b": ["pending"]})
    with pytest.raises(SnapshotWaitTimeout) as raised:
        wait_for_snapshots(
            [ebs("a", "web-1"), ebs("b", "web-2")],
            describe,
            timeout=timedelta(seconds=60),
            clock=time.clock,
            sleep=time.sleep,
        )
    assert "host web-2" in str(raised.value)
    assert "host web-1" not in str(raised.value)
    assert {s.snapshot_id: s.status for s in raised.value.snapshots} == {"a": "completed", "b": "pending"}


def test_a_failed_snapshot_fails_the_wait_after_the_others_finish() -> None:
    time = FakeTime()
    describe = ScriptedDescribe({"a": ["pending", "error"], "b": ["pending", "pending", "completed"]})
    with pytest.raises(SnapshotFailed) as raised:
        wait_for_snapshots(
            [ebs("a", "web-1"), ebs("b", "web-2")],
            describe,
            timeout=timedelta(minutes=5),
            clock=time.clock,
            sleep=time.sleep,
        )
    assert "1 of 2" in str(raised.value)
    assert "host web-1" in str(raised.value)
    assert "'error'" in str(raised.value)
    assert {s.snapshot_id: s.status for s in raised.value.snapshots} == {"a": "error", "b": "completed"}


def test_rds_failure_statuses_end_the_wait() -> None:
    time = FakeTime()
    describe = ScriptedDescribe({"s1": ["creating", "failed"]})
    with pytest.raises(SnapshotFailed, match="'failed'"):
        wait_for_snapshots(
            [rds("s1")], describe, timeout=timedelta(minutes=5), clock=time.clock, sleep=time.sleep
        )


def test_a_snapshot_that_disappears_is_an_error_naming_it() -> None:
    time = FakeTime()
    describe = ScriptedDescribe({"a": ["pending", "completed"]})
    with pytest.raises(CloudSnapshotError, match=r"ebs snapshot gone \(host web-2.*disappeared") as raised:
        wait_for_snapshots(
            [ebs("a", "web-1"), ebs("gone", "web-2")],
            describe,
            timeout=timedelta(minutes=5),
            clock=time.clock,
            sleep=time.sleep,
        )
    assert [s.snapshot_id for s in raised.value.snapshots] == ["a"]


def test_statuses_from_the_cloud_are_compared_in_lower_case() -> None:
    time = FakeTime()
    describe = ScriptedDescribe({"s1": ["Available"]})
    [done] = wait_for_snapshots(
        [rds("s1")], describe, timeout=timedelta(0), clock=time.clock, sleep=time.sleep
    )
    assert done.status == "available"
