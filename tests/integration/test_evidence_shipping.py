"""Evidence shipping against moto's S3: ship, verify, tamper in S3 and locally, resume, an endpoint outage.

Every test ships a ledger of its own (records dated in the past, in ``tmp_path``) into a bucket of its
own (Object Lock enabled) on the sandbox's moto, signed with the sandbox's signing connection, and
removes the bucket afterwards. The outage test runs a moto server of its own on a free port and stops
it: the sandbox's endpoint is shared and never stopped.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudops.cli import main
from cloudops.evidence.ledger import GENESIS, Ledger, verify_ledger
from cloudops.evidence.shipping import (
    EvidenceShippingError,
    ShippingSettings,
    SigningKey,
    ship_closed_segments,
    shipping_client,
    verify_shipped,
)
from tests.integration.estates import admin_client, create_bucket, empty_and_remove_bucket

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
SIGNING_CONN_ID = "cloudops_evidence_signing"
# Every "now" below is this moment, never the wall clock: a run that crosses midnight must not move days.
TODAY = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
DAYS = [(TODAY - timedelta(days=back)).date().isoformat() for back in (3, 2, 1)]
D1, D2, D3 = DAYS


def versions(s3: Any, bucket: str, key: str) -> int:
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
    return sum(1 for item in listed if item["Key"] == key)


def fill(ledger: Ledger) -> None:
    """Four records on each of three past days, as the listener would have written them then."""
    for number, day in enumerate(DAYS):
        for i in range(4):
            ledger.append(
                "step.try",
                at=TODAY - timedelta(days=3 - number, hours=2, minutes=-i),
                dag_id="backup__orders_pg",
                run_id=f"scheduled__{day}",
                task_id=f"task_{i}",
                data={"state": "success", "try_number": 1},
            )


@pytest.fixture
def settings(bucket: str) -> ShippingSettings:
    return ShippingSettings(
        bucket=bucket,
        aws_conn_id="sandbox_aws",
        signing_conn_id=SIGNING_CONN_ID,
        lock_days=1,
        ledger_id=f"itest-{secrets.token_hex(3)}",
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path / "ledger", fsync=False)
    fill(ledger)
    ledger.append("step.try", at=TODAY, dag_id="backup__orders_pg", run_id="today", task_id="t", data={})
    return ledger


@pytest.fixture
def shipped(ledger: Ledger, settings: ShippingSettings) -> Ledger:
    result = ship_closed_segments(ledger, settings, now=TODAY)
    assert result.shipped == DAYS
    return ledger


def replace_segment(s3: Any, settings: ShippingSettings, day: str, change: Any) -> None:
    """Write a new current version of a shipped segment (Object Lock keeps the old one, not the key)."""
    key = settings.segment_key(str(settings.ledger_id), day)
    lines = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read().splitlines(keepends=True)
    s3.put_object(Bucket=settings.bucket, Key=key, Body=b"".join(change(lines)))


# Shipping and verifying.


def test_closed_days_ship_locked_with_signed_chained_digests_and_verify(
    shipped: Ledger, settings: ShippingSettings, s3: Any
) -> None:
    ledger_id = str(settings.ledger_id)
    key = SigningKey.from_connection(SIGNING_CONN_ID)
    previous_sha = None
    for number, day in enumerate(DAYS):
        segment_key, digest_key = settings.segment_key(ledger_id, day), settings.digest_key(ledger_id, day)
        local = (shipped.segments_dir / f"{day}.jsonl").read_bytes()
        assert s3.get_object(Bucket=settings.bucket, Key=segment_key)["Body"].read() == local
        body = s3.get_object(Bucket=settings.bucket, Key=digest_key)["Body"].read()
        digest = json.loads(body)
        assert digest["segment_sha256"] == hashlib.sha256(local).hexdigest()
        assert (digest["records"], digest["first_seq"], digest["last_seq"]) == (
            4,
            4 * number + 1,
            4 * number + 4,
        )
        assert digest["previous_digest_sha256"] == previous_sha
        assert digest["key_fingerprint"] == key.fingerprint
        if number == 0:
            assert digest["first_prev_hash"] == GENESIS
        previous_sha = hashlib.sha256(body).hexdigest()
        for object_key in (segment_key, digest_key):
            head = s3.head_object(Bucket=settings.bucket, Key=object_key)
            assert head["ObjectLockMode"] == "GOVERNANCE"
            # Locked for lock_days from the shipping's own clock (TODAY, noon): not from the wall clock,
            # which would fail this after 13:00 UTC.
            assert head["ObjectLockRetainUntilDate"] >= TODAY + timedelta(days=settings.lock_days)
            assert head["ServerSideEncryption"] == "AES256"
        recorded = json.loads((shipped.directory / "shipped" / f"{day}.json").read_text())
        assert recorded["digest_sha256"] == previous_sha
    # Today is open: it waits. A second attempt uploads nothing again.
    again = ship_closed_segments(shipped, settings, now=TODAY)
    assert (again.shipped, again.already, again.waiting) == ([], 3, [TODAY.date().isoformat()])
    assert versions(s3, settings.bucket, settings.segment_key(ledger_id, D1)) == 1
    verdict = verify_shipped(shipped, settings, now=TODAY)
    assert verdict.ok, verdict.problem
    assert (verdict.days, verdict.records, verdict.last_seq) == (3, 12, 12)
    assert verdict.pending == ()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda lines: [lines[0], lines[1].replace(b'"task_1"', b'"task_9"'), *lines[2:]],
            "record seq 6 ({segment} line 2) was altered: its hash does not match its content",
        ),
        (
            lambda lines: [lines[0], *lines[2:]],
            "record seq 6 is missing: seq 7 follows seq 5 ({segment} line 2)",
        ),
        (
            lambda lines: [lines[0], lines[2], lines[1], *lines[3:]],
            "record seq 6 is out of order: seq 7 comes before it ({segment} line 2)",
        ),
    ],
    ids=["edited", "deleted", "reordered"],
)
def test_a_record_edited_deleted_or_reordered_in_s3_is_named(
    shipped: Ledger, settings: ShippingSettings, s3: Any, change: Any, problem: str
) -> None:
    replace_segment(s3, settings, D2, change)
    segment = settings.segment_key(str(settings.ledger_id), D2)
    verdict = verify_shipped(None, settings, ledger_id=settings.ledger_id, now=TODAY)
    assert verdict.problem == f"in s3://{settings.bucket}: " + problem.format(segment=segment)
    assert (verdict.days, verdict.last_seq) == (1, 4)  # the first day held


def test_an_edited_digest_or_a_wrong_key_is_named(
    shipped: Ledger, settings: ShippingSettings, s3: Any
) -> None:
    digest_key = settings.digest_key(str(settings.ledger_id), D2)
    digest = json.loads(s3.get_object(Bucket=settings.bucket, Key=digest_key)["Body"].read())
    wrong_key = SigningKey(b"not-the-sandbox-signing-key-0000")
    verdict = verify_shipped(shipped, settings, signing_key=wrong_key, now=TODAY)
    assert f"digest {D1} (s3://{settings.bucket}/" in str(verdict.problem)
    assert "signed with another key" in str(verdict.problem)

    s3.put_object(Bucket=settings.bucket, Key=digest_key, Body=json.dumps({**digest, "records": 3}).encode())
    # Read as S3 holds it now (no local record of what shipped), the signature gives it away...
    verdict = verify_shipped(None, settings, ledger_id=settings.ledger_id, now=TODAY)
    assert verdict.problem == (
        f"digest {D2} (s3://{settings.bucket}/{digest_key}): its signature does not match its content: "
        "the digest was altered"
    )
    # ...and with the local ledger, which recorded the version shipped, the new version itself does.
    verdict = verify_shipped(shipped, settings, now=TODAY)
    assert verdict.problem is not None
    assert verdict.problem.startswith(f"digest {D2} (s3://{settings.bucket}/{digest_key}): its current S3 ")
    assert "is not the one shipped" in verdict.problem
    assert "something wrote over it after shipping" in verdict.problem


def test_verification_reads_the_versions_shipped_and_caps_what_it_reads(
    shipped: Ledger, settings: ShippingSettings, s3: Any
) -> None:
    from cloudops.evidence.shipping import MAX_DIGEST_BYTES, read_shipped

    ledger_id = str(settings.ledger_id)
    segment_key = settings.segment_key(ledger_id, D2)
    recorded = read_shipped(shipped)[D2]
    assert recorded["segment_version_id"]
    assert recorded["digest_version_id"]
    # The shipped version is what verification reads: a version written over it later is named, and
    # the shipped one still verifies as it was shipped (its records are all there).
    replace_segment(s3, settings, D2, lambda lines: lines[:1])
    verdict = verify_shipped(shipped, settings, now=TODAY)
    assert verdict.problem is not None
    assert f"segment {D2}" in verdict.problem
    assert recorded["segment_version_id"] in verdict.problem
    assert (verdict.days, verdict.last_seq) == (1, 4)
    s3.delete_object(
        Bucket=settings.bucket,
        Key=segment_key,
        VersionId=s3.head_object(Bucket=settings.bucket, Key=segment_key)["VersionId"],
    )
    assert verify_shipped(shipped, settings, now=TODAY).ok
    # A digest larger than any digest is refused by its size, unread.
    digest_key = settings.digest_key(ledger_id, D3)
    s3.put_object(Bucket=settings.bucket, Key=digest_key, Body=b" " * (MAX_DIGEST_BYTES + 1))
    alone = verify_shipped(None, settings, ledger_id=ledger_id, now=TODAY)
    assert alone.problem == (
        f"digest {D3}: s3://{settings.bucket}/{digest_key} is {MAX_DIGEST_BYTES + 1} bytes, more than the "
        f"{MAX_DIGEST_BYTES} it may hold: not read"
    )


def test_a_day_deleted_from_s3_is_named(shipped: Ledger, settings: ShippingSettings, s3: Any) -> None:
    ledger_id = str(settings.ledger_id)
    for key in (settings.segment_key(ledger_id, D2), settings.digest_key(ledger_id, D2)):
        s3.delete_object(Bucket=settings.bucket, Key=key)  # a delete marker: Object Lock keeps the version
    # Without the local ledger, the digest chain tells that a day is missing...
    alone = verify_shipped(None, settings, ledger_id=ledger_id, now=TODAY)
    assert (
        f"digest {D3} (s3://{settings.bucket}/{settings.digest_key(ledger_id, D3)}) follows digest {D2}"
        in str(alone.problem)
    )
    assert f"not in S3 after digest {D1}: a day is missing" in str(alone.problem)
    # ...and with it, which one was shipped from here.
    local = verify_shipped(shipped, settings, now=TODAY)
    assert f"day {D2} was shipped" in str(local.problem)
    assert "is not in S3: deleted?" in str(local.problem)


def test_a_local_segment_changed_after_shipping_is_named_and_not_shipped_again(
    shipped: Ledger, settings: ShippingSettings
) -> None:
    # The last record of a shipped day removed locally, with no later record left to betray it:
    # the local chain alone cannot tell, the shipped segment can.
    (shipped.segments_dir / f"{TODAY.date().isoformat()}.jsonl").unlink()
    segment = shipped.segments_dir / f"{D3}.jsonl"
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:-1]))
    assert verify_ledger(shipped).ok
    verdict = verify_shipped(shipped, settings, now=TODAY)
    assert verdict.problem == (
        f"local segment {segment} ends at line 3; the shipped one goes on with record seq 12: "
        "records were removed locally after shipping"
    )
    with pytest.raises(EvidenceShippingError, match=f"{D3}.jsonl changed after it was shipped"):
        ship_closed_segments(shipped, settings, now=TODAY)


def test_an_interrupted_attempt_is_resumed_without_uploading_again(
    shipped: Ledger, settings: ShippingSettings, s3: Any
) -> None:
    ledger_id = str(settings.ledger_id)
    # D2: both uploads done, the local record lost. D3: the segment uploaded, the digest not.
    (shipped.directory / "shipped" / f"{D2}.json").unlink()
    (shipped.directory / "shipped" / f"{D3}.json").unlink()
    digest_key = settings.digest_key(ledger_id, D3)
    for item in s3.list_object_versions(Bucket=settings.bucket, Prefix=digest_key)["Versions"]:
        s3.delete_object(
            Bucket=settings.bucket,
            Key=digest_key,
            VersionId=item["VersionId"],
            BypassGovernanceRetention=True,
        )
    result = ship_closed_segments(shipped, settings, now=TODAY)
    assert (result.resumed, result.shipped, result.already) == ([D2], [D3], 1)
    for day in (D2, D3):
        assert versions(s3, settings.bucket, settings.segment_key(ledger_id, day)) == 1
    assert verify_shipped(shipped, settings, now=TODAY).ok


def test_cli_ship_and_verify_exit_codes(
    ledger: Ledger,
    settings: ShippingSettings,
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_BUCKET", settings.bucket)
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_AWS_CONN_ID", settings.aws_conn_id)
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_SIGNING_CONN_ID", SIGNING_CONN_ID)
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_LEDGER_ID", str(settings.ledger_id))
    directory = str(ledger.directory)
    assert main(["evidence", "ship", "--ledger", directory]) == 0
    assert f"shipped 3 day(s) ({D1}, {D2}, {D3})" in capsys.readouterr().out
    assert main(["evidence", "verify", "--ledger", directory, "--s3"]) == 0
    assert "shipped evidence: 3 day(s), 12 records" in capsys.readouterr().out
    replace_segment(s3, settings, D1, lambda lines: [*lines[:2], *lines[3:]])
    assert main(["evidence", "verify", "--ledger", directory, "--s3"]) == 1
    assert "something wrote over it after shipping" in capsys.readouterr().err
    monkeypatch.delenv("CLOUDOPS_EVIDENCE_BUCKET")
    assert main(["evidence", "ship", "--ledger", directory]) == 1
    assert "set CLOUDOPS_EVIDENCE_BUCKET" in capsys.readouterr().err


# The endpoint down.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_endpoint_down_records_wait_locally_and_ship_later_none_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.server import ThreadedMotoServer

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_EVIDENCE_OUTAGE_AWS",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"region_name": REGION, "endpoint_url": endpoint},
            }
        ),
    )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = admin_client(endpoint=endpoint)
        bucket = create_bucket(s3)
        settings = ShippingSettings(
            bucket=bucket,
            aws_conn_id="evidence_outage_aws",
            signing_conn_id=SIGNING_CONN_ID,
            lock_days=1,
            ledger_id="itest-outage",
        )
        ledger = Ledger(tmp_path / "ledger", fsync=False)
        fill(ledger)
        server.stop()

        started = time.monotonic()
        with pytest.raises(EvidenceShippingError) as failed:
            ship_closed_segments(ledger, settings, now=TODAY)
        assert time.monotonic() - started < 30, "a dead endpoint must fail an attempt in seconds"
        assert f"day {D1} not shipped" in str(failed.value)
        assert endpoint in str(failed.value) or "Could not connect" in str(failed.value)
        assert "wait in the local ledger" in str(failed.value)
        assert not (ledger.directory / "shipped").exists()

        # The listener goes on writing while the endpoint is down: the records wait locally.
        late = ledger.append(
            "step.try", at=TODAY, dag_id="backup__orders_pg", run_id="during-outage", task_id="t", data={}
        )
        assert late is not None
        assert late.seq == 13

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            create_bucket(s3, bucket)  # a moto process that restarted forgot everything
        # The next day, today's record is closed too, and everything ships.
        result = ship_closed_segments(ledger, settings, now=TODAY + timedelta(days=1))
        assert result.shipped == [*DAYS, TODAY.date().isoformat()]
        verdict = verify_shipped(
            ledger, settings, client=shipping_client(settings), now=TODAY + timedelta(days=1)
        )
        assert verdict.ok, verdict.problem
        assert (verdict.records, verdict.last_seq, verdict.pending) == (13, 13, ())
        empty_and_remove_bucket(s3, bucket)
    finally:
        server.stop()
