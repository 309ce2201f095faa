"""Evidence shipping without S3: settings, signed digests, and what is refused before any upload."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudops.evidence.ledger import GENESIS, Ledger, canonical_json
from cloudops.evidence.shipping import (
    ALGORITHM,
    DEFAULT_LOCK_DAYS,
    DigestLink,
    EvidenceSettingsError,
    EvidenceShippingError,
    ShippingSettings,
    SigningKey,
    build_digest,
    digest_payload,
    encode_digest,
    segment_facts,
    ship_closed_segments,
    signature_problem,
)

pytestmark = pytest.mark.unit

KEY = SigningKey(b"unit-test-signing-key-0123456789")
OTHER_KEY = SigningKey(b"another-signing-key-9876543210xx")
DAY0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SIGNED_AT = datetime(2026, 3, 4, 0, 15, tzinfo=UTC)
RETAIN_UNTIL = datetime(2027, 4, 8, 0, 15, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """Three past days of four records each."""
    ledger = Ledger(tmp_path / "ledger", fsync=False)
    for day in range(3):
        for i in range(4):
            ledger.append(
                "step.try",
                at=DAY0 + timedelta(days=day, minutes=i),
                dag_id="backup__orders_pg",
                run_id=f"run-{day}",
                task_id=f"task-{i}",
                data={"state": "success"},
            )
    return ledger


def digest_of(ledger: Ledger, day: str, previous: DigestLink | None = None, key: SigningKey = KEY) -> dict:
    name = f"{day}.jsonl"
    return build_digest(
        ledger_id="host-1",
        day=day,
        segment_key=f"evidence/host-1/segments/{name}",
        facts=segment_facts(name, (ledger.segments_dir / name).read_bytes()),
        previous=previous,
        lock_mode="GOVERNANCE",
        retain_until=RETAIN_UNTIL,
        signing_key=key,
        signed_at=SIGNED_AT,
    )


# Settings.


def test_settings_name_the_first_missing_setting() -> None:
    with pytest.raises(EvidenceSettingsError, match="set CLOUDOPS_EVIDENCE_BUCKET"):
        ShippingSettings.from_environment({"CLOUDOPS_EVIDENCE_AWS_CONN_ID": "aws"})
    with pytest.raises(EvidenceSettingsError, match="set CLOUDOPS_EVIDENCE_AWS_CONN_ID"):
        ShippingSettings.from_environment({"CLOUDOPS_EVIDENCE_BUCKET": "evidence-bucket"})


def test_settings_defaults_and_overrides() -> None:
    required = {"CLOUDOPS_EVIDENCE_BUCKET": "evidence-bucket", "CLOUDOPS_EVIDENCE_AWS_CONN_ID": "aws"}
    settings = ShippingSettings.from_environment(required)
    assert (settings.prefix, settings.signing_conn_id) == ("evidence", "cloudops_evidence_signing")
    assert (settings.lock_mode, settings.lock_days) == ("GOVERNANCE", DEFAULT_LOCK_DAYS)
    assert settings.segment_key("host-1", "2026-03-01") == "evidence/host-1/segments/2026-03-01.jsonl"
    assert settings.digest_key("host-1", "2026-03-01") == "evidence/host-1/digests/2026-03-01.json"
    custom = ShippingSettings.from_environment(
        {
            **required,
            "CLOUDOPS_EVIDENCE_PREFIX": "/audit/",
            "CLOUDOPS_EVIDENCE_LOCK_MODE": "compliance",
            "CLOUDOPS_EVIDENCE_LOCK_DAYS": "2555",
        }
    )
    assert (custom.prefix, custom.lock_mode, custom.lock_days) == ("audit", "COMPLIANCE", 2555)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CLOUDOPS_EVIDENCE_LOCK_MODE", "LEGAL_HOLD", "use GOVERNANCE or COMPLIANCE"),
        ("CLOUDOPS_EVIDENCE_LOCK_DAYS", "0", "1 to 36500"),
        ("CLOUDOPS_EVIDENCE_LOCK_DAYS", "a year", "1 to 36500"),
        ("CLOUDOPS_EVIDENCE_LEDGER_ID", "Host/1", "CLOUDOPS_EVIDENCE_LEDGER_ID"),
    ],
)
def test_settings_refuse_invalid_values(name: str, value: str, message: str) -> None:
    env = {"CLOUDOPS_EVIDENCE_BUCKET": "evidence-bucket", "CLOUDOPS_EVIDENCE_AWS_CONN_ID": "aws", name: value}
    with pytest.raises(EvidenceSettingsError, match=message):
        ShippingSettings.from_environment(env)


# The signing key.


def test_signing_key_is_never_shown_and_its_fingerprint_does_not_reveal_it() -> None:
    secret = b"unit-test-signing-key-0123456789"
    assert secret.decode() not in repr(KEY)
    assert KEY.fingerprint in repr(KEY)
    assert KEY.fingerprint != OTHER_KEY.fingerprint
    assert KEY.fingerprint not in hashlib.sha256(secret).hexdigest()  # not a plain hash of the key
    with pytest.raises(EvidenceSettingsError, match="shorter than 16 bytes"):
        SigningKey(b"short")


# Digests.


def test_digest_states_the_segment_and_is_signed_over_everything_else(ledger: Ledger) -> None:
    data = (ledger.segments_dir / "2026-03-01.jsonl").read_bytes()
    digest = digest_of(ledger, "2026-03-01")
    first, last = json.loads(data.splitlines()[0]), json.loads(data.splitlines()[-1])
    assert digest["segment_sha256"] == hashlib.sha256(data).hexdigest()
    assert digest["segment_bytes"] == len(data)
    assert (digest["records"], digest["first_seq"], digest["last_seq"]) == (4, 1, 4)
    assert (digest["first_prev_hash"], digest["last_hash"]) == (GENESIS, last["hash"])
    assert first["prev"] == GENESIS
    assert digest["previous_day"] is digest["previous_digest_sha256"] is None
    assert (digest["algorithm"], digest["key_fingerprint"]) == (ALGORITHM, KEY.fingerprint)
    assert digest["signed_at"] == "2026-03-04T00:15:00.000000Z"
    # Anyone holding the key re-checks it with hmac over the canonical JSON of the other fields.
    body = {k: v for k, v in digest.items() if k != "signature"}
    assert digest_payload(digest) == canonical_json(body)
    assert digest["signature"] == KEY.sign(canonical_json(body))
    assert signature_problem(digest, KEY) is None
    assert encode_digest(digest) == canonical_json(digest) + b"\n"


def test_digests_chain_like_the_records(ledger: Ledger) -> None:
    first = digest_of(ledger, "2026-03-01")
    link = DigestLink("2026-03-01", "evidence/host-1/digests/2026-03-01.json", "ab" * 32)
    second = digest_of(ledger, "2026-03-02", previous=link)
    assert second["first_prev_hash"] == first["last_hash"]
    assert second["first_seq"] == first["last_seq"] + 1
    assert (second["previous_day"], second["previous_digest_sha256"]) == ("2026-03-01", "ab" * 32)
    assert second["previous_digest_key"] == link.key


@pytest.mark.parametrize(
    ("field", "value"),
    [("records", 3), ("last_hash", "0" * 64), ("previous_digest_sha256", "cd" * 32), ("signed_at", "x")],
)
def test_an_edited_digest_is_named_altered(ledger: Ledger, field: str, value: object) -> None:
    digest = {**digest_of(ledger, "2026-03-01"), field: value}
    assert (
        signature_problem(digest, KEY) == "its signature does not match its content: the digest was altered"
    )


def test_a_digest_checked_with_another_key_is_named(ledger: Ledger) -> None:
    problem = signature_problem(digest_of(ledger, "2026-03-01"), OTHER_KEY)
    assert problem is not None
    assert f"signed with another key (fingerprint {KEY.fingerprint}" in problem
    # A digest re-signed with another key but claiming ours fails on its signature.
    forged = {**digest_of(ledger, "2026-03-01", key=OTHER_KEY), "key_fingerprint": KEY.fingerprint}
    assert "the digest was altered" in str(signature_problem(forged, KEY))


def test_an_empty_segment_has_no_digest() -> None:
    with pytest.raises(EvidenceShippingError, match="holds no record"):
        segment_facts("2026-03-01.jsonl", b"")


# Refusals before anything is uploaded (no S3 client is built: none is reachable here).


def test_a_broken_local_chain_is_not_shipped_and_the_record_is_named(ledger: Ledger) -> None:
    segment = ledger.segments_dir / "2026-03-02.jsonl"
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(lines[0] + lines[1].replace(b'"task-1"', b'"task-X"') + b"".join(lines[2:]))
    settings = ShippingSettings(bucket="unreachable-bucket", aws_conn_id="no_such_conn", ledger_id="host-1")
    with pytest.raises(EvidenceShippingError) as refused:
        ship_closed_segments(ledger, settings, now=datetime(2026, 3, 10, tzinfo=UTC), signing_key=KEY)
    assert "not shipping" in str(refused.value)
    assert "record seq 6 (2026-03-02.jsonl line 2) was altered" in str(refused.value)
    assert not (ledger.directory / "shipped").exists()


def test_a_shipped_segment_that_changed_locally_is_not_shipped_again(ledger: Ledger) -> None:
    # What a ship recorded for the first day, with another SHA-256 than the segment has now.
    shipped = ledger.directory / "shipped"
    shipped.mkdir()
    (shipped / "2026-03-01.json").write_text(
        json.dumps({"segment_sha256": "ef" * 32, "digest_key": "k", "digest_sha256": "0" * 64})
    )
    settings = ShippingSettings(bucket="unreachable-bucket", aws_conn_id="no_such_conn", ledger_id="host-1")
    with pytest.raises(EvidenceShippingError, match=r"2026-03-01.jsonl changed after it was shipped"):
        ship_closed_segments(ledger, settings, now=datetime(2026, 3, 10, tzinfo=UTC), signing_key=KEY)


def test_open_days_wait(ledger: Ledger) -> None:
    # At 00:05 on March 4th the 3rd is within the grace period: a lagging clock may still write to it.
    settings = ShippingSettings(bucket="unreachable-bucket", aws_conn_id="no_such_conn", ledger_id="host-1")
    shipped = ledger.directory / "shipped"
    shipped.mkdir()
    for day in ("2026-03-01", "2026-03-02"):
        data = (ledger.segments_dir / f"{day}.jsonl").read_bytes()
        (shipped / f"{day}.json").write_text(
            json.dumps(
                {"segment_sha256": hashlib.sha256(data).hexdigest(), "digest_key": "k", "digest_sha256": "0"}
            )
        )
    result = ship_closed_segments(
        ledger, settings, now=datetime(2026, 3, 4, 0, 5, tzinfo=UTC), signing_key=KEY
    )
    assert (result.shipped, result.already, result.waiting) == ([], 2, ["2026-03-03"])
    assert "2026-03-03 still open" in result.summary()
