"""The repository's pure parts: key layout, backup ids, the manifest's JSON, and the pipeline's sizing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from cloudops.catalog.models import Encryption, ObjectLock, Repository
from cloudops.repository import layout
from cloudops.repository.manifest import MANIFEST_VERSION, Manifest, ManifestError
from cloudops.repository.pipeline import (
    DEFAULT_PART_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    encryption_args,
    part_size_for,
)
from cloudops.repository.s3 import BackupRepository, StoredBackup

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 2, 15, tzinfo=UTC)
BACKUP_ID = "20261123T021500Z-1a2b3c"
KEY = f"backups/sandbox/orders_pg/{BACKUP_ID}/orders.pgdump.zst"
SHA = "ab" * 32


def manifest_data(**changes: Any) -> dict[str, Any]:
    """A valid manifest as JSON data; ``changes`` replace top-level fields."""
    data: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "backup_id": BACKUP_ID,
        "estate": "sandbox",
        "database": "orders_pg",
        "engine": "postgres",
        "engine_version": "15.8",
        "method": "logical",
        "format": "pg_dump-custom",
        "started_at": "2026-11-23T02:15:00Z",
        "finished_at": "2026-11-23T02:16:30+00:00",
        "raw_bytes": 1000,
        "compressed_bytes": 300,
        "objects": [{"name": "orders.pgdump.zst", "key": KEY, "size": 300, "sha256": SHA, "raw_bytes": 1000}],
        "compression": {"algorithm": "zstd", "level": 3},
        "encryption": {"mode": "sse-s3"},
        "object_lock": {"mode": "GOVERNANCE", "retain_until": "2026-11-30T02:16:30Z"},
        "row_counts": {"public.orders": 1200, "public.customers": 40},
        "schema_fingerprint": "sha256:0f0f",
        "position": {"lsn": "0/3000060", "timeline": 1},
        "tool_versions": {"pg_dump": "15.8", "zstandard": "0.25.0"},
        "airflow_run_id": "scheduled__2026-11-23T02:00:00+00:00",
        "tags": ["nightly"],
    }
    data.update(changes)
    return data


# Layout.


def test_new_backup_id_is_utc_sortable_and_parses_back() -> None:
    paris = timezone(timedelta(hours=1))
    backup_id = layout.new_backup_id(datetime(2026, 11, 23, 3, 15, tzinfo=paris))
    assert backup_id.startswith("20261123T021500Z-")
    assert layout.is_backup_id(backup_id)
    assert layout.backup_time(backup_id) == NOW
    later = layout.new_backup_id(NOW + timedelta(seconds=1))
    assert sorted([later, backup_id]) == [backup_id, later]
    assert layout.new_backup_id(NOW) != layout.new_backup_id(NOW)  # same second, different suffix


def test_new_backup_id_refuses_naive_time() -> None:
    with pytest.raises(layout.LayoutError, match="timezone-aware"):
        layout.new_backup_id(datetime(2026, 11, 23, 2, 15))  # noqa: DTZ001


@pytest.mark.parametrize("bad", ["20261123-1a2b3c", "20261323T021500Z-1a2b3c", "20261123T021500Z-XYZ123", ""])
def test_bad_backup_ids_are_refused(bad: str) -> None:
    assert not layout.is_backup_id(bad)
    with pytest.raises(layout.LayoutError, match="backup id"):
        layout.backup_time(bad)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("backups", f"backups/sandbox/orders_pg/{BACKUP_ID}/"),
        ("/backups/", f"backups/sandbox/orders_pg/{BACKUP_ID}/"),
        ("team/a/backups", f"team/a/backups/sandbox/orders_pg/{BACKUP_ID}/"),
        ("", f"sandbox/orders_pg/{BACKUP_ID}/"),
    ],
)
def test_backup_prefix_and_keys_round_trip(prefix: str, expected: str) -> None:
    assert layout.backup_prefix(prefix, "sandbox", "orders_pg", BACKUP_ID) == expected
    key = layout.object_key(prefix, "sandbox", "orders_pg", BACKUP_ID, "orders.pgdump.zst")
    assert key == expected + "orders.pgdump.zst"
    parts = layout.parse_key(prefix, key)
    assert parts == layout.BackupKey("sandbox", "orders_pg", BACKUP_ID, "orders.pgdump.zst")
    assert not parts.is_manifest
    manifest = layout.parse_key(prefix, layout.manifest_key(prefix, "sandbox", "orders_pg", BACKUP_ID))
    assert manifest.is_manifest
    assert manifest.name == layout.MANIFEST_NAME == "manifest.json"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (f"other/sandbox/orders_pg/{BACKUP_ID}/x.zst", "not under the repository prefix"),
        (f"backups/sandbox/orders_pg/{BACKUP_ID}/deeper/x.zst", "does not have the layout"),
        ("backups/sandbox/orders_pg/x.zst", "does not have the layout"),
        ("backups/sandbox/orders_pg/not-an-id/x.zst", "is not a backup id"),
        (f"backups/Sandbox/orders_pg/{BACKUP_ID}/x.zst", "estate in key"),
        (f"backups/sandbox/orders_pg/{BACKUP_ID}/", "object name in key"),
    ],
)
def test_parse_key_names_what_is_wrong(key: str, message: str) -> None:
    with pytest.raises(layout.LayoutError, match=message):
        layout.parse_key("backups", key)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("backups", "Sandbox", "orders_pg", BACKUP_ID, "x"), "estate"),
        (("backups", "sandbox", "orders-pg", BACKUP_ID, "x"), "database"),
        (("backups", "sandbox", "orders_pg", "latest", "x"), "backup id"),
        (("backups", "sandbox", "orders_pg", BACKUP_ID, "a/b"), "object name"),
        (("backups", "sandbox", "orders_pg", BACKUP_ID, ".hidden"), "object name"),
        (("a//b", "sandbox", "orders_pg", BACKUP_ID, "x"), "empty"),
        (("a/../b", "sandbox", "orders_pg", BACKUP_ID, "x"), "'..'"),
    ],
)
def test_keys_are_never_built_from_bad_parts(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(layout.LayoutError, match=message):
        layout.object_key(*args)


# Manifest.


def test_manifest_round_trips_through_canonical_json() -> None:
    manifest = Manifest.from_json(json.dumps(manifest_data()))
    text = manifest.to_json()
    assert Manifest.from_json(text) == manifest
    assert Manifest.from_json(text.encode()).to_json() == text
    document = json.loads(text)
    assert list(document) == sorted(document)
    assert document["finished_at"] == "2026-11-23T02:16:30Z"  # UTC, whatever the writer's zone
    assert document["position"] == {"lsn": "0/3000060", "timeline": 1}
    assert manifest.object("orders.pgdump.zst").sha256 == SHA
    assert manifest.started_at.tzinfo is not None


def test_manifest_times_are_stored_in_utc() -> None:
    data = manifest_data(started_at="2026-11-23T03:15:00+01:00", finished_at="2026-11-23T03:16:30+01:00")
    manifest = Manifest.from_json(json.dumps(data))
    assert json.loads(manifest.to_json())["started_at"] == "2026-11-23T02:15:00Z"


def test_manifest_is_frozen_and_strict() -> None:
    manifest = Manifest.model_validate(manifest_data())
    with pytest.raises(ValueError, match="frozen"):
        manifest.database = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON: .* at line 1 column 2"),
        (b"\xff\xfe{}", "not"),
        (b"[]", "expected a JSON object, got list"),
        (json.dumps(manifest_data(manifest_version=2)), "manifest_version 2 is not supported"),
        (json.dumps({k: v for k, v in manifest_data().items() if k != "engine"}), r"engine: missing"),
        (json.dumps(manifest_data(enigne="postgres")), r"enigne: unknown field \(did you mean 'engine'\?\)"),
        (json.dumps(manifest_data(started_at="2026-11-23T02:15:00")), "started_at: .*timezone"),
        (json.dumps(manifest_data(method="incremental")), "method: Input should be 'logical' or 'physical'"),
        (json.dumps(manifest_data(backup_id="latest")), "backup_id: 'latest' is not a backup id"),
        (
            json.dumps(manifest_data(finished_at="2026-11-23T02:00:00Z")),
            "finished_at .* is before started_at",
        ),
        (json.dumps(manifest_data(objects=[])), "objects: List should have at least 1 item"),
        (json.dumps(manifest_data(raw_bytes=5)), "raw_bytes 5 is not the sum"),
        (json.dumps(manifest_data(compressed_bytes=5)), "compressed_bytes 5 is not the sum"),
        (json.dumps(manifest_data(encryption={"mode": "sse-kms"})), "sse-kms needs kms_key_id"),
        (json.dumps(manifest_data(compression={"algorithm": "gzip", "level": 3})), "compression.algorithm"),
    ],
)
def test_manifest_errors_name_the_field(data: str | bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as caught:
        Manifest.from_json(data, source="s3://bucket/manifest.json")
    assert str(caught.value).startswith("s3://bucket/manifest.json: ")


def test_manifest_object_errors_name_the_object() -> None:
    good = manifest_data()["objects"][0]
    cases = [
        ([{**good, "sha256": "nothex"}], r"objects\[0\]\.sha256"),
        ([{**good, "size": -1}], r"objects\[0\]\.size"),
        ([{**good, "sha265": SHA}], r"objects\[0\]\.sha265: unknown field \(did you mean 'sha256'\?\)"),
        (
            [{**good, "name": "manifest.json", "key": KEY.replace("orders.pgdump.zst", "manifest.json")}],
            "own name",
        ),
        ([{**good, "key": "backups/sandbox/other/x.zst"}], r"objects\[0\]\.key .* is not inside"),
        ([good, good], "names must be unique, repeated: orders.pgdump.zst"),
    ]
    for objects, message in cases:
        size = sum(item.get("size", 0) for item in objects)
        raw = sum(item["raw_bytes"] for item in objects)
        data = manifest_data(objects=objects, compressed_bytes=size, raw_bytes=raw)
        with pytest.raises(ManifestError, match=message):
            Manifest.from_json(json.dumps(data))


def test_manifest_object_lookup_names_the_objects_there_are() -> None:
    manifest = Manifest.model_validate(manifest_data())
    with pytest.raises(KeyError, match=r"has: orders\.pgdump\.zst"):
        manifest.object("missing.zst")


# The pipeline's pure helpers and the repository's pure views.


def test_encryption_args_follow_the_catalog() -> None:
    assert encryption_args(Encryption()) == {"ServerSideEncryption": "AES256"}
    kms = Encryption(mode="sse-kms", kms_key_id="arn:aws:kms:eu-west-1:123456789012:key/abc")
    assert encryption_args(kms) == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "arn:aws:kms:eu-west-1:123456789012:key/abc",
    }


def test_part_size_grows_so_that_large_dumps_fit_in_10000_parts() -> None:
    assert part_size_for(1, DEFAULT_PART_SIZE) == DEFAULT_PART_SIZE
    assert part_size_for(2000, DEFAULT_PART_SIZE) == DEFAULT_PART_SIZE
    assert part_size_for(2001, DEFAULT_PART_SIZE) == 2 * DEFAULT_PART_SIZE
    assert part_size_for(MAX_PARTS, DEFAULT_PART_SIZE) == 16 * DEFAULT_PART_SIZE
    capacity = sum(part_size_for(n, DEFAULT_PART_SIZE) for n in range(1, MAX_PARTS + 1))
    assert capacity > 900 * 1024**3
    assert part_size_for(MAX_PARTS, 1024**3) == MAX_PART_SIZE


def test_object_lock_is_counted_from_the_end_of_the_backup() -> None:
    repository = Repository(
        name="r",
        cloud="c",
        bucket="some-bucket",
        region="eu-west-1",
        object_lock=ObjectLock(mode="GOVERNANCE", days=7),
    )
    store = BackupRepository(repository, aws_conn_id="unused", estate="sandbox")
    lock = store.object_lock_for(NOW + timedelta(microseconds=500))
    assert lock is not None
    assert lock.mode == "GOVERNANCE"
    assert lock.retain_until == NOW + timedelta(days=7)
    unlocked = BackupRepository(
        repository.model_copy(update={"object_lock": None}), aws_conn_id="x", estate="e"
    )
    assert unlocked.object_lock_for(NOW) is None


def test_stored_backup_becomes_a_retention_record() -> None:
    manifest = Manifest.model_validate(manifest_data())
    until = NOW + timedelta(days=7)
    stored = StoredBackup(
        backup_id=BACKUP_ID,
        time=NOW,
        complete=True,
        manifest=manifest,
        keys=[KEY],
        locked_until=until,
    )
    record = stored.to_record()
    assert (record.id, record.time, record.complete, record.locked_until) == (BACKUP_ID, NOW, True, until)
    assert record.tags == frozenset({"nightly"})
    incomplete = StoredBackup(BACKUP_ID, NOW, False, None, [KEY], None, ["no manifest"])
    assert incomplete.to_record().tags == frozenset()
    assert not incomplete.to_record().complete
