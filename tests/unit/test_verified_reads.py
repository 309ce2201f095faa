"""The pure parts of verified reads: bounded sizes and version ids in the manifest, the backup time check,
the ledger facts of a backup, and the checks of a manifest against an older ledger record."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from cloudops.repository.manifest import MAX_BYTES, MAX_MANIFEST_BYTES, Manifest, ManifestError
from cloudops.repository.s3 import CLOCK_SKEW, backup_time_problem, real_version, version_args
from cloudops.restore.fetch import BackupVerificationError, ProvenBackup, _check_recorded_objects
from cloudops.runbooks.backup import backup_evidence
from tests.unit.test_repository_layout import BACKUP_ID, KEY, SHA, manifest_data

pytestmark = pytest.mark.unit

ID_TIME = datetime(2026, 11, 23, 2, 15, tzinfo=UTC)


def manifest(**changes: object) -> Manifest:
    return Manifest.model_validate(manifest_data(**changes))


def test_sizes_have_an_upper_bound() -> None:
    too_big = MAX_BYTES + 1
    item = {**manifest_data()["objects"][0], "size": too_big}
    with pytest.raises(ManifestError, match=r"objects\[0\]\.size: Input should be less than or equal to"):
        Manifest.from_json(json.dumps(manifest_data(objects=[item], compressed_bytes=too_big)))
    with pytest.raises(ManifestError, match=r"row_counts\.public\.orders: Input should be less than"):
        Manifest.from_json(json.dumps(manifest_data(row_counts={"public.orders": too_big})))


def test_a_manifest_larger_than_a_manifest_may_be_is_refused_before_parsing() -> None:
    huge = b" " * (MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ManifestError) as refused:
        Manifest.from_json(huge, source="s3://b/manifest.json")
    assert str(refused.value) == (
        f"s3://b/manifest.json: {MAX_MANIFEST_BYTES + 1} bytes, more than the {MAX_MANIFEST_BYTES} a "
        "manifest may hold: not a manifest cloudops wrote"
    )


def test_objects_carry_their_version_and_older_manifests_without_one_still_read() -> None:
    old = manifest()
    assert old.objects[0].version_id is None
    item = {**manifest_data()["objects"][0], "version_id": "3/L4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY="}
    assert manifest(objects=[item]).objects[0].version_id == item["version_id"]
    bad = {**item, "version_id": "v1\nInjected: header"}
    with pytest.raises(ManifestError, match=r"objects\[0\]\.version_id: String should match pattern"):
        Manifest.from_json(json.dumps(manifest_data(objects=[bad])))


@pytest.mark.parametrize(
    ("started_at", "now", "problem"),
    [
        (ID_TIME, ID_TIME, None),
        (ID_TIME + timedelta(microseconds=900_000), ID_TIME + timedelta(hours=1), None),
        (ID_TIME, ID_TIME - CLOCK_SKEW + timedelta(seconds=1), None),  # a slightly slow reader's clock
        (ID_TIME, ID_TIME - CLOCK_SKEW - timedelta(seconds=1), "its id's time 2026-11-23T02:15:00Z lies in"),
        (ID_TIME + timedelta(days=30), ID_TIME, "the manifest's started_at 2026-12-23T02:15:00Z is not"),
        (ID_TIME - timedelta(seconds=1), ID_TIME, "the manifest's started_at 2026-11-23T02:14:59Z is not"),
    ],
    ids=["same", "sub-second", "within-skew", "future-id", "future-manifest", "earlier-manifest"],
)
def test_a_backup_time_is_believed_only_when_id_and_manifest_agree_and_it_is_not_ahead(
    started_at: datetime, now: datetime, problem: str | None
) -> None:
    found = manifest(started_at=started_at.isoformat(), finished_at=(started_at + timedelta(1)).isoformat())
    answer = backup_time_problem(BACKUP_ID, found, now=now)
    if problem is None:
        assert answer is None
    else:
        assert answer is not None
        assert answer.startswith(problem)
        assert answer.endswith("misdated or planted, never taken as the latest")


def test_a_listing_without_a_manifest_is_judged_by_its_id_alone() -> None:
    assert backup_time_problem(BACKUP_ID, None, now=ID_TIME) is None
    assert backup_time_problem(BACKUP_ID, None, now=ID_TIME - timedelta(days=1)) is not None


def test_null_versions_are_no_versions() -> None:
    assert real_version("null") is None
    assert real_version(None) is None
    assert real_version("abc") == "abc"
    assert version_args("null") == {}
    assert version_args(None) == {}
    assert version_args("abc") == {"VersionId": "abc"}


def test_the_backup_taken_fact_holds_the_manifest_hash_and_every_version() -> None:
    item = {**manifest_data()["objects"][0], "version_id": "v-object"}
    facts = backup_evidence(
        manifest(objects=[item]).model_dump(mode="json"),
        bucket="b",
        manifest_key="backups/sandbox/orders_pg/x/manifest.json",
        manifest_sha256="cd" * 32,
        manifest_version_id="v-manifest",
    )
    assert (facts["manifest_sha256"], facts["manifest_version_id"]) == ("cd" * 32, "v-manifest")
    assert (facts["bucket"], facts["manifest_key"]) == ("b", "backups/sandbox/orders_pg/x/manifest.json")
    assert facts["objects"] == [
        {"name": "orders.pgdump.zst", "key": KEY, "size": 300, "sha256": SHA, "version_id": "v-object"}
    ]


def test_an_older_ledger_record_decides_by_its_objects() -> None:
    found = manifest()
    same = [{"key": KEY, "size": 300, "sha256": SHA}]
    _check_recorded_objects(found, same, where="backup x", seq=7)
    with pytest.raises(BackupVerificationError) as other:
        _check_recorded_objects(
            found, [{"key": KEY, "size": 300, "sha256": "ef" * 32}], where="backup x", seq=7
        )
    assert str(other.value) == (
        f"backup x: object 'orders.pgdump.zst' has SHA-256 {SHA} (300 bytes) in the manifest, the ledger's "
        f"backup.taken record (seq 7) says {'ef' * 32} (300 bytes); refusing it, nothing was restored"
    )
    with pytest.raises(BackupVerificationError, match=r"not the objects the ledger.s backup\.taken record"):
        _check_recorded_objects(found, [{"key": "elsewhere", "size": 300, "sha256": SHA}], where="x", seq=7)


def test_a_proven_backup_pins_what_later_steps_read() -> None:
    from cloudops.repository.s3 import StoredBackup

    found = manifest()
    stored = StoredBackup(BACKUP_ID, ID_TIME, True, found, [KEY], None)
    proven = ProvenBackup(stored, found, "cd" * 32, "v1", trusted_repository=False, ledger_seq=3)
    assert proven.pin() == {
        "backup_id": BACKUP_ID,
        "manifest_sha256": "cd" * 32,
        "manifest_version_id": "v1",
        "trusted_repository": False,
    }
    assert json.loads(json.dumps(proven.pin())) == proven.pin()  # XCom-safe
