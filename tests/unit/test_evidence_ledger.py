"""The ledger's chain: appends, once-per-key records, and verify naming the first bad record."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudops.evidence.ledger import GENESIS, Ledger, LedgerError, canonical_json, verify_ledger

pytestmark = pytest.mark.unit

DAY = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def _fill(ledger: Ledger, count: int, start: datetime = DAY) -> None:
    ledger.append_many(
        ("step.try", f"k{i}", start + timedelta(seconds=i), {"dag_id": "backup__orders_pg", "data": {"i": i}})
        for i in range(count)
    )


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_records_chain_and_rehash_with_json_and_hashlib_alone(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    _fill(ledger, 3)
    records = [json.loads(line) for line in _lines(ledger.segment_files()[0])]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == GENESIS
    for before, record in zip([None, *records], records, strict=False):
        body = {k: v for k, v in record.items() if k != "hash"}
        assert hashlib.sha256(canonical_json(body)).hexdigest() == record["hash"]
        if before:
            assert record["prev"] == before["hash"]
    verdict = verify_ledger(ledger)
    assert verdict.ok
    assert verdict.records == 3


def test_same_key_is_recorded_once_even_from_another_ledger_object(tmp_path: Path) -> None:
    first = Ledger(tmp_path).append("step.try", key="dag|run|task|-1|1|failed", at=DAY)
    again = Ledger(tmp_path).append("step.try", key="dag|run|task|-1|1|failed", at=DAY)
    retry = Ledger(tmp_path).append("step.try", key="dag|run|task|-1|2|success", at=DAY)
    assert first is not None
    assert again is None
    assert retry is not None
    assert retry.seq == 2


def test_chain_runs_on_across_days_and_refuses_a_clock_going_back(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    _fill(ledger, 2)
    ledger.append("run.started", at=DAY + timedelta(days=1))
    assert [p.name for p in ledger.segment_files()] == ["2026-11-23.jsonl", "2026-11-24.jsonl"]
    assert verify_ledger(ledger).records == 3
    with pytest.raises(LedgerError, match="clock went back"):
        Ledger(tmp_path).append("run.started", at=DAY)


def _append_from_process(directory: str, worker: int) -> None:
    ledger = Ledger(directory, fsync=False)
    for i in range(50):
        ledger.append("step.try", key=f"w{worker}-{i}", at=DAY + timedelta(minutes=1))


def test_concurrent_writers_share_one_unbroken_chain(tmp_path: Path) -> None:
    processes = [
        multiprocessing.Process(target=_append_from_process, args=(str(tmp_path), n)) for n in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    verdict = verify_ledger(Ledger(tmp_path))
    assert verdict.ok, verdict.problem
    assert verdict.records == 200


@pytest.fixture
def ledger_of_five(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path)
    _fill(ledger, 5)
    return ledger


def _rewrite(ledger: Ledger, lines: list[bytes]) -> None:
    ledger.segment_files()[0].write_bytes(b"".join(lines))


def test_an_edited_record_is_named(ledger_of_five: Ledger) -> None:
    lines = _lines(ledger_of_five.segment_files()[0])
    lines[2] = lines[2].replace(b'"i":2', b'"i":7')
    _rewrite(ledger_of_five, lines)
    verdict = verify_ledger(ledger_of_five)
    assert not verdict.ok
    assert verdict.records == 2
    assert "record seq 3 (2026-11-23.jsonl line 3) was altered" in verdict.problem


def test_a_deleted_record_is_named(ledger_of_five: Ledger) -> None:
    lines = _lines(ledger_of_five.segment_files()[0])
    del lines[1]
    _rewrite(ledger_of_five, lines)
    assert "record seq 2 is missing: seq 3 follows seq 1" in verify_ledger(ledger_of_five).problem


def test_reordered_records_are_named(ledger_of_five: Ledger) -> None:
    lines = _lines(ledger_of_five.segment_files()[0])
    lines[1], lines[3] = lines[3], lines[1]
    _rewrite(ledger_of_five, lines)
    assert "record seq 2 is out of order: seq 4 comes before it" in verify_ledger(ledger_of_five).problem


def test_a_forged_record_with_a_fresh_hash_breaks_the_chain_after_it(ledger_of_five: Ledger) -> None:
    from cloudops.evidence.ledger import seal

    lines = _lines(ledger_of_five.segment_files()[0])
    body = json.loads(lines[1])
    body.pop("hash")
    body["data"] = {"i": 99}
    lines[1] = seal(body)[0] + b"\n"
    _rewrite(ledger_of_five, lines)
    problem = verify_ledger(ledger_of_five).problem
    assert "record seq 3" in problem
    assert "seq 2 was replaced or removed" in problem


def test_a_torn_last_line_is_moved_aside_recorded_and_writing_goes_on(ledger_of_five: Ledger) -> None:
    segment = ledger_of_five.segment_files()[0]
    whole = segment.read_bytes()
    torn = b'{"at":"2026-11-23T'
    segment.write_bytes(whole + torn)
    assert "line 6: incomplete last line" in verify_ledger(ledger_of_five).problem

    written = Ledger(segment.parent.parent).append("run.started", key="after the tear", at=DAY)

    assert written is not None
    records = list(ledger_of_five.records())
    repair, after = records[-2], records[-1]
    assert (repair.kind, repair.seq, after.seq, after.key) == ("ledger.repaired", 6, 7, "after the tear")
    assert repair.fields["data"]["bytes"] == len(torn)
    assert repair.fields["data"]["offset"] == len(whole)
    aside = segment.parent / repair.fields["data"]["moved_to"]
    assert aside.read_bytes() == torn, "the torn bytes are kept, not thrown away"
    assert segment.read_bytes().startswith(whole)
    verdict = verify_ledger(ledger_of_five)
    assert verdict.ok, verdict.problem
    assert verdict.records == 7
    assert verdict.repairs == (
        f"seq 6: {segment.name} line 6: a torn last line of {len(torn)} bytes "
        f"(sha256 {hashlib.sha256(torn).hexdigest()[:12]}…) was moved aside to {aside.name}",
    )

    aside.write_bytes(b"something else")
    assert "the moved-aside" in verify_ledger(ledger_of_five).problem
    assert "was changed" in verify_ledger(ledger_of_five).problem
    aside.unlink()
    assert "is missing" in verify_ledger(ledger_of_five).problem


def test_a_lock_held_by_another_writer_is_waited_for_a_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    from cloudops.evidence import recorder

    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path))
    ledger = recorder.ledger()
    ledger.lock_timeout = 0.2
    ledger.directory.mkdir(parents=True)
    with (ledger.directory / "ledger.lock").open("a+b") as held:  # a stuck writer (another open file)
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LedgerError, match=r"was not free within 0.2 s"):
            ledger.append("run.started", at=DAY)
        assert recorder.record("run.started", dag_id="backup__orders_pg", run_id="r1") is None
        fcntl.flock(held, fcntl.LOCK_UN)
    (lost,) = recorder.recorded_errors()
    assert lost["run_id"] == "r1"
    assert "was not free within" in lost["error"]
    assert recorder.record("run.started", dag_id="backup__orders_pg", run_id="r1") is not None
