"""The backup repository against moto's S3: streaming, Object Lock, listing, verification, deletion, faults.

Every test writes into its own bucket (random suffix, Object Lock enabled, hence versioned) on the
sandbox's moto, and empties and removes it afterwards, so the sandbox bucket is never touched. The fault
test runs a second moto server of its own on a free port and kills it in the middle of an upload.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import zstandard

from cloudops.catalog.models import ObjectLock, Repository
from cloudops.engines import DumpCommand
from cloudops.repository import layout
from cloudops.repository.manifest import Compression, Manifest, ManifestEncryption, ManifestObject
from cloudops.repository.pipeline import MIN_PART_SIZE, BackupFailed
from cloudops.repository.s3 import BackupLocked, BackupNotFound, BackupRepository
from tests.integration.estates import admin_client, create_bucket

pytestmark = pytest.mark.integration

ESTATE = "itest"
DATABASE = "orders_pg"
REGION = "eu-west-1"
SECRET = "s3cr3t-Pa55word"


def bounded_wait(condition: Callable[[], bool], *, what: str, timeout: float, interval: float = 0.1) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def repository_for(bucket: str, *, lock_days: int | None = 7) -> Repository:
    return Repository(
        name="itest_backups",
        cloud="sandbox_aws",
        bucket=bucket,
        prefix="backups",
        region=REGION,
        object_lock=ObjectLock(mode="GOVERNANCE", days=lock_days) if lock_days else None,
    )


def shell(script: str, *, name: str = "dump.bin", description: str = "test dump") -> DumpCommand:
    # The secret sits in env, where producers put passwords: it must never reach a log or an error.
    return DumpCommand(
        argv=["sh", "-c", script],
        env={"PGPASSWORD": SECRET},
        object_name=name,
        format="raw",
        description=description,
    )


def download(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def decompressed_digest(data: bytes) -> tuple[int, str]:
    """Size and SHA-256 of the zstd stream's content, decompressed in a stream."""
    digest, size = hashlib.sha256(), 0
    reader = zstandard.ZstdDecompressor().stream_reader(data)
    while chunk := reader.read(1024 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def build_manifest(store: BackupRepository, backup_id: str, objects: list[ManifestObject]) -> Manifest:
    started = layout.backup_time(backup_id)
    finished = datetime.now(UTC)
    return Manifest(
        backup_id=backup_id,
        estate=ESTATE,
        database=DATABASE,
        engine="postgres",
        engine_version="15.8",
        method="logical",
        format="raw",
        started_at=started,
        finished_at=finished,
        raw_bytes=sum(item.raw_bytes for item in objects),
        compressed_bytes=sum(item.size for item in objects),
        objects=objects,
        compression=Compression(level=3),
        encryption=ManifestEncryption(mode="sse-s3"),
        object_lock=store.object_lock_for(finished),
        row_counts={"public.orders": 3},
        tags=["itest"],
    )


def complete_backup(
    store: BackupRepository, script: str = "printf 'row 1\\nrow 2\\n'", *, lock: bool = True
) -> Manifest:
    """Take a whole backup as a runbook would: objects, lock, manifest last."""
    backup_id = layout.new_backup_id(datetime.now(UTC))
    item = store.store_object(DATABASE, backup_id, shell(script), level=3, timeout=timedelta(minutes=2))
    manifest = build_manifest(store, backup_id, [item])
    if lock and manifest.object_lock is not None:
        store.apply_object_lock(
            [item.key], mode=manifest.object_lock.mode, retain_until=manifest.object_lock.retain_until
        )
    store.write_manifest(manifest if lock else manifest.model_copy(update={"object_lock": None}))
    return manifest


@pytest.fixture
def store(bucket: str) -> BackupRepository:
    return BackupRepository(repository_for(bucket), aws_conn_id="sandbox_aws", estate=ESTATE)


# Streaming.


def test_random_dump_is_stored_whole_with_its_sha256_and_encryption(
    store: BackupRepository, s3: Any, bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "random.bin"
    source.write_bytes(os.urandom(50_000_000))
    backup_id = layout.new_backup_id(datetime.now(UTC))
    item = store.store_object(
        DATABASE, backup_id, shell(f"cat {source}"), level=3, timeout=timedelta(minutes=2)
    )
    assert item.name == "dump.bin.zst"
    assert item.key == f"backups/{ESTATE}/{DATABASE}/{backup_id}/dump.bin.zst"
    assert item.raw_bytes == 50_000_000
    stored = download(s3, bucket, item.key)
    assert len(stored) == item.size
    assert hashlib.sha256(stored).hexdigest() == item.sha256
    assert decompressed_digest(stored) == (50_000_000, hashlib.sha256(source.read_bytes()).hexdigest())
    head = s3.head_object(Bucket=bucket, Key=item.key)
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ETag"].endswith('-3"'), "50 MB in parts of 16 MiB: three parts"


def test_compressible_dump_streams_through_zstd(store: BackupRepository, s3: Any, bucket: str) -> None:
    backup_id = layout.new_backup_id(datetime.now(UTC))
    command = shell("yes cloudops | head -c 200000000")
    item = store.store_object(DATABASE, backup_id, command, level=3, timeout=timedelta(minutes=2))
    assert item.raw_bytes == 200_000_000
    assert item.size < 1_000_000
    stored = download(s3, bucket, item.key)
    assert hashlib.sha256(stored).hexdigest() == item.sha256
    expected = hashlib.sha256(b"cloudops\n" * (200_000_000 // 9) + b"cloudops\n"[: 200_000_000 % 9])
    assert decompressed_digest(stored) == (200_000_000, expected.hexdigest())


def test_failing_dump_leaves_no_object_and_no_pending_upload(
    store: BackupRepository, s3: Any, bucket: str
) -> None:
    backup_id = layout.new_backup_id(datetime.now(UTC))
    command = shell(
        f"head -c 3000000 /dev/urandom; echo 'pg_dump: error: connection failed (password {SECRET})' >&2; "
        "echo 'second line' >&2; exit 3",
        description="pg_dump of orders",
    )
    with pytest.raises(BackupFailed) as caught:
        store.store_object(DATABASE, backup_id, command, level=3, timeout=timedelta(minutes=1))
    error = caught.value
    key = store.object_key(DATABASE, backup_id, "dump.bin.zst")
    assert error.step == "dump"
    assert error.returncode == 3
    message = str(error)
    assert f"s3://{bucket}/{key}" in message
    assert "pg_dump of orders" in message
    assert "exited with status 3" in message
    assert "pg_dump: error: connection failed" in message
    assert "second line" in message
    assert SECRET not in message
    assert "PGPASSWORD" not in message
    assert s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions") is None
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads") or []
    assert [upload for upload in uploads if upload["Key"] == key] == []


def test_dump_that_cannot_start_is_named(store: BackupRepository) -> None:
    command = DumpCommand(
        argv=["/nonexistent/pg_dump"], env={}, object_name="x", format="raw", description="missing tool"
    )
    with pytest.raises(BackupFailed, match=r"step 'start dump'.*could not start '/nonexistent/pg_dump'"):
        store.store_object(
            DATABASE, layout.new_backup_id(datetime.now(UTC)), command, level=3, timeout=timedelta(seconds=30)
        )


def test_dump_past_its_deadline_is_killed(store: BackupRepository, s3: Any, bucket: str) -> None:
    backup_id = layout.new_backup_id(datetime.now(UTC))
    started = time.monotonic()
    with pytest.raises(BackupFailed) as caught:
        store.store_object(
            DATABASE, backup_id, shell("echo partial; sleep 60"), level=3, timeout=timedelta(seconds=2)
        )
    assert caught.value.step == "timeout"
    assert time.monotonic() - started < 15
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads") is None


# Writing, locking and listing.


def test_complete_backup_is_locked_listed_and_verified(store: BackupRepository, s3: Any, bucket: str) -> None:
    manifest = complete_backup(store)
    assert manifest.object_lock is not None
    for key in [manifest.objects[0].key, store.manifest_key(DATABASE, manifest.backup_id)]:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert head["ObjectLockRetainUntilDate"].astimezone(UTC) == manifest.object_lock.retain_until
        assert head["ServerSideEncryption"] == "AES256"
    assert store.read_manifest(DATABASE, manifest.backup_id) == manifest
    [listed] = store.list_backups(DATABASE)
    assert listed.complete, listed.problems
    assert listed.manifest == manifest
    assert listed.locked_until == manifest.object_lock.retain_until
    assert listed.keys[0].endswith("/manifest.json")
    [record] = store.as_retention_records(store.list_backups(DATABASE))
    assert (record.id, record.complete, record.tags) == (manifest.backup_id, True, frozenset({"itest"}))
    check = store.verify_objects(manifest)
    assert check.ok, check.reason
    assert check.bytes_checked == manifest.compressed_bytes


def test_lock_is_not_shortened(store: BackupRepository, s3: Any, bucket: str) -> None:
    manifest = complete_backup(store)
    key = manifest.objects[0].key
    assert manifest.object_lock is not None
    sooner = manifest.object_lock.retain_until - timedelta(days=1)
    applied = store.apply_object_lock([key], mode="GOVERNANCE", retain_until=sooner)
    assert applied[key] == manifest.object_lock.retain_until


def test_backup_without_manifest_is_incomplete(store: BackupRepository) -> None:
    done = complete_backup(store)
    backup_id = layout.new_backup_id(datetime.now(UTC) + timedelta(seconds=1))
    store.store_object(DATABASE, backup_id, shell("echo half"), level=3, timeout=timedelta(minutes=1))
    backups = store.list_backups(DATABASE)
    assert [backup.backup_id for backup in backups] == [backup_id, done.backup_id]
    newest = backups[0]
    assert not newest.complete
    assert newest.manifest is None
    assert newest.problems == ["no manifest: the backup failed, is still running, or was partly deleted"]
    assert [record.complete for record in store.as_retention_records(backups)] == [False, True]
    with pytest.raises(BackupNotFound, match="has no manifest"):
        store.read_manifest(DATABASE, backup_id)


def test_manifest_is_refused_for_objects_that_are_not_stored(store: BackupRepository) -> None:
    backup_id = layout.new_backup_id(datetime.now(UTC))
    item = store.store_object(DATABASE, backup_id, shell("echo data"), level=3, timeout=timedelta(minutes=1))
    wrong_size = item.model_copy(update={"size": item.size + 1})
    manifest = build_manifest(store, backup_id, [wrong_size])
    with pytest.raises(BackupFailed, match="the manifest says"):
        store.write_manifest(manifest)
    missing = ManifestObject(
        name="other.zst",
        key=store.object_key(DATABASE, backup_id, "other.zst"),
        size=1,
        sha256="0" * 64,
        raw_bytes=1,
    )
    with pytest.raises(BackupFailed, match=r"'other\.zst' is not stored"):
        store.write_manifest(build_manifest(store, backup_id, [item, missing]))
    assert not store.list_backups(DATABASE)[0].complete
    # Once complete, a backup is never written into again.
    store.write_manifest(build_manifest(store, backup_id, [item]))
    with pytest.raises(BackupFailed, match="already complete"):
        store.store_object(DATABASE, backup_id, shell("echo more"), level=3, timeout=timedelta(minutes=1))


def test_extra_or_resized_objects_make_a_backup_incomplete(
    store: BackupRepository, s3: Any, bucket: str
) -> None:
    manifest = complete_backup(store)
    key = manifest.objects[0].key
    s3.put_object(Bucket=bucket, Key=key.replace("dump.bin.zst", "stray.bin"), Body=b"stray")
    s3.put_object(Bucket=bucket, Key=key, Body=b"different size")  # a new version on top
    [listed] = store.list_backups(DATABASE)
    assert not listed.complete
    assert any("manifest says" in problem for problem in listed.problems)
    assert "objects not in the manifest: stray.bin" in listed.problems


# Verification.


def test_verify_names_a_tampered_object(store: BackupRepository, s3: Any, bucket: str) -> None:
    backup_id = layout.new_backup_id(datetime.now(UTC))
    items = [
        store.store_object(
            DATABASE, backup_id, shell(f"echo {name}", name=name), level=3, timeout=timedelta(minutes=1)
        )
        for name in ("schema.sql", "data.bin")
    ]
    manifest = build_manifest(store, backup_id, items)
    store.write_manifest(manifest)
    assert all(item.version_id for item in manifest.objects), "the upload's version is recorded"
    assert store.verify_objects(manifest).ok
    # Same size, other bytes: only the hash can tell. In a versioned bucket this is a new version.
    original = download(s3, bucket, items[1].key)
    s3.put_object(Bucket=bucket, Key=items[1].key, Body=bytes(reversed(original)))

    # The manifest names the version the backup wrote: that one is read, and it is intact.
    assert store.verify_objects(manifest).ok
    # A manifest without versions (as written before they were recorded) reads the current version.
    unversioned = manifest.model_copy(
        update={"objects": [item.model_copy(update={"version_id": None}) for item in items]}
    )
    check = store.verify_objects(unversioned)
    assert not check.ok
    assert check.object_name == "data.bin.zst"
    assert "SHA-256" in check.reason
    assert check.objects_checked == 2


def test_verify_names_a_missing_object(store: BackupRepository, s3: Any, bucket: str) -> None:
    manifest = complete_backup(store, lock=False)
    (item,) = manifest.objects
    s3.delete_object(Bucket=bucket, Key=item.key)  # a delete marker hides the current version only
    assert store.verify_objects(manifest).ok, "the version the backup wrote is still there"
    s3.delete_object(Bucket=bucket, Key=item.key, VersionId=item.version_id)
    check = store.verify_objects(manifest)
    assert (check.ok, check.object_name) == (False, "dump.bin.zst")
    assert "is missing" in check.reason
    assert item.version_id in check.reason


# Deletion.


def versions_under(s3: Any, bucket: str, prefix: str) -> list[tuple[str, str]]:
    answer = s3.list_object_versions(Bucket=bucket, Prefix=prefix)
    return [
        (item["Key"], item["VersionId"])
        for item in answer.get("Versions", []) + answer.get("DeleteMarkers", [])
    ]


def test_delete_refuses_a_locked_backup(store: BackupRepository, s3: Any, bucket: str) -> None:
    manifest = complete_backup(store)
    folder = store.backup_prefix(DATABASE, manifest.backup_id)
    before = versions_under(s3, bucket, folder)
    for dry_run in (True, False):
        with pytest.raises(BackupLocked, match="GOVERNANCE retention until") as caught:
            store.delete_backup(DATABASE, manifest.backup_id, dry_run=dry_run)
        assert len(caught.value.locked) == 2
    assert versions_under(s3, bucket, folder) == before
    assert store.list_backups(DATABASE)[0].complete


def test_dry_run_deletes_nothing_and_delete_removes_every_version(
    store: BackupRepository, s3: Any, bucket: str
) -> None:
    manifest = complete_backup(store, lock=False)
    folder = store.backup_prefix(DATABASE, manifest.backup_id)
    object_key = manifest.objects[0].key
    # Give it history: an older version, and a delete marker over a stray key, which a plain delete
    # would leave behind (and keep paying for).
    s3.put_object(Bucket=bucket, Key=object_key, Body=download(s3, bucket, object_key))
    stray_key = f"{folder}stray.bin"
    s3.put_object(Bucket=bucket, Key=stray_key, Body=b"stray")
    s3.delete_object(Bucket=bucket, Key=stray_key)
    before = versions_under(s3, bucket, folder)
    assert len(before) == 5
    manifest_key = store.manifest_key(DATABASE, manifest.backup_id)
    keys = store.delete_backup(DATABASE, manifest.backup_id, dry_run=True)
    assert keys == [manifest_key, object_key, stray_key]
    assert versions_under(s3, bucket, folder) == before
    # This test's bucket has no default retention, so nothing here is locked.
    assert store.delete_backup(DATABASE, manifest.backup_id, dry_run=False) == keys
    assert versions_under(s3, bucket, folder) == []
    assert store.list_backups(DATABASE) == []
    assert store.delete_backup(DATABASE, manifest.backup_id, dry_run=False) == []


def test_governance_lock_can_be_bypassed_on_request(store: BackupRepository, s3: Any, bucket: str) -> None:
    manifest = complete_backup(store)
    folder = store.backup_prefix(DATABASE, manifest.backup_id)
    keys = store.delete_backup(DATABASE, manifest.backup_id, dry_run=False, bypass_governance=True)
    assert keys[0].endswith("/manifest.json")
    assert versions_under(s3, bucket, folder) == []


# Faults: the S3 endpoint dies in the middle of an upload.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OwnMoto:
    """A moto server of this test's own, which it may kill (the sandbox's is shared)."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        bounded_wait(self._answers, what=f"moto on port {self.port}", timeout=30)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"moto exited: {self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.endpoint}/", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def own_moto(tmp_path: Path) -> Iterator[OwnMoto]:
    server = OwnMoto(free_port(), tmp_path / "moto.log")
    server.start()
    yield server
    server.kill()


SLOW_DUMP = textwrap.dedent(
    """
    import os, sys, time
    open(sys.argv[1], "w").write(str(os.getpid()))
    for _ in range(300):
        sys.stdout.buffer.write(os.urandom(1024 * 1024))
        sys.stdout.buffer.flush()
        time.sleep(0.2)
    """
)


def test_endpoint_dying_mid_upload_fails_fast_and_a_retry_succeeds(
    own_moto: OwnMoto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small timeouts and few attempts through the connection's own extra, as an operator would set them.
    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {
            "region_name": REGION,
            "endpoint_url": own_moto.endpoint,
            "config_kwargs": {
                "connect_timeout": 1,
                "read_timeout": 5,
                "retries": {"total_max_attempts": 2, "mode": "standard"},
            },
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_FAULT_AWS", json.dumps(connection))
    s3 = admin_client(endpoint=own_moto.endpoint)
    bucket = create_bucket(s3, locked=False)
    store = BackupRepository(
        repository_for(bucket, lock_days=None),
        aws_conn_id="fault_aws",
        estate=ESTATE,
        part_size=MIN_PART_SIZE,
    )
    assert store.client.meta.config.connect_timeout == 1
    pid_file = tmp_path / "dump.pid"
    script = tmp_path / "slow_dump.py"
    script.write_text(SLOW_DUMP)
    command = DumpCommand(
        argv=[sys.executable, str(script), str(pid_file)],
        env={"PGPASSWORD": SECRET},
        object_name="slow.bin",
        format="raw",
        description="slow dump",
    )
    failed_id = layout.new_backup_id(datetime.now(UTC))
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            store.store_object(DATABASE, failed_id, command, level=1, timeout=timedelta(minutes=2))
        except BaseException as error:
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    key = store.object_key(DATABASE, failed_id, "slow.bin.zst")

    def a_part_is_stored() -> bool:
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads") or []
        return any(
            s3.list_parts(Bucket=bucket, Key=key, UploadId=u["UploadId"]).get("Parts") for u in uploads
        )

    bounded_wait(a_part_is_stored, what="the first part to be stored", timeout=30, interval=0.2)
    own_moto.kill()
    killed_at = time.monotonic()
    worker.join(timeout=60)
    assert not worker.is_alive(), "store_object did not return within 60 s of the endpoint dying"
    assert time.monotonic() - killed_at < 30
    error = outcome.get("error")
    assert isinstance(error, BackupFailed), repr(error)
    assert error.step.startswith(("upload part", "dump and upload")), str(error)
    assert f"s3://{bucket}/{key}" in str(error)
    assert SECRET not in str(error)
    dump_pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(dump_pid, 0)  # the dump was killed and reaped, not left writing into a closed pipe

    # A fresh endpoint (moto keeps no state: the bucket is gone) and a retry under a new backup id.
    own_moto.start()
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    retry_id = layout.new_backup_id(datetime.now(UTC))
    item = store.store_object(
        DATABASE, retry_id, shell("head -c 12000000 /dev/urandom"), level=1, timeout=timedelta(minutes=2)
    )
    store.write_manifest(build_manifest(store, retry_id, [item]))
    backups = {backup.backup_id: backup for backup in store.list_backups(DATABASE)}
    assert backups[retry_id].complete
    assert failed_id not in backups
    with pytest.raises(BackupNotFound):
        store.read_manifest(DATABASE, failed_id)
    assert hashlib.sha256(download(s3, bucket, item.key)).hexdigest() == item.sha256
