"""What a drill or a restore reads is what the backup wrote: the attacker's cases against moto's S3.

Someone who can write to the backup bucket can write a dump *and* a manifest that agree with each other.
These tests do exactly that, and more: a new S3 version of a PostgreSQL dump and of its manifest, the
same in a bucket without versions, a zstd bomb inside the manifest's sizes, a 100 MB manifest, a backup
planted with a date in the future, and a backup this deployment's ledger never recorded. Each is refused
by name, or (for a restore in a versioned bucket) the versions the backup wrote are read instead.

Each test has its own bucket and its own evidence folder (``CLOUDOPS_EVIDENCE_DIR``): take_backup
records the ``backup.taken`` fact there, and the drill and the restore of the same test find it there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard

from cloudops.catalog import load_catalog_file, load_catalogs
from cloudops.cli import main
from cloudops.evidence.facts import latest_fact
from cloudops.repository import layout
from cloudops.repository.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError
from cloudops.restore.fetch import BackupVerificationError, choose_backup, fetch_backup, prove_backup
from cloudops.runbooks.backup import manifest_of, open_repository, take_backup
from cloudops.runbooks.restore_drill import prepare
from cloudops.runbooks.restore_request import (
    check_request,
    drop_staging,
    restore_backup,
    restored_into,
    verify_restore,
)
from tests.integration.estates import PrivateEstate, private_estate, sandbox_s3

pytestmark = pytest.mark.integration

PG = "orders_pg"
MARIA = "inventory_mariadb"
DATABASES = {
    PG: {"engine": "postgres", "conn_id": "sandbox_pg_primary", "database": "orders"},
    MARIA: {"engine": "mariadb", "conn_id": "sandbox_mariadb", "database": "inventory"},
}
SCRATCH = {PG: "sandbox_pg_scratch", MARIA: "sandbox_mariadb_scratch"}  # drills never land on a primary


def catalog_entry(name: str) -> dict[str, Any]:
    return {
        "name": name,
        **DATABASES[name],
        "rpo": "1d",
        "rto": "1h",
        "backup": {"repository": "r", "retention": {"keep_last": 3}},
        "drill": {"schedule": "on_backup", "scratch_conn_id": SCRATCH[name]},
    }


@pytest.fixture
def evidence(tmp_path: Path, sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "evidence"
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(folder))
    return folder


@pytest.fixture
def locked(tmp_path: Path, evidence: Path) -> Iterator[PrivateEstate]:
    """orders_pg and inventory_mariadb backing up into a bucket with Object Lock (hence versions)."""
    with private_estate(tmp_path, "vr", [catalog_entry(PG), catalog_entry(MARIA)], locked=True) as made:
        made.document["repositories"][0]["object_lock"] = {"mode": "GOVERNANCE", "days": 1}
        made.write()
        yield made


@pytest.fixture
def unversioned(tmp_path: Path, evidence: Path) -> Iterator[PrivateEstate]:
    """The same, into a bucket without versions: there a new write replaces the only copy."""
    with private_estate(tmp_path, "vu", [catalog_entry(PG), catalog_entry(MARIA)]) as made:
        yield made


def store_of(estate: PrivateEstate, database: str) -> Any:
    catalog = load_catalog_file(estate.file)
    return open_repository(catalog, catalog.database(database))


def recorded(estate: PrivateEstate, database: str, backup_id: str) -> dict[str, Any]:
    fact = latest_fact(
        "backup.taken", {"estate": estate.estate, "database": database, "backup_id": backup_id}
    )
    assert fact is not None, "take_backup records backup.taken in this test's evidence folder"
    return dict(fact.fields["data"])


def plant(estate: PrivateEstate, manifest: Manifest, raw: bytes) -> Manifest:
    """Write, as an attacker with write access would, a new dump and a manifest that agree with it."""
    s3 = sandbox_s3()
    item = manifest.objects[0]
    stored = zstandard.ZstdCompressor(level=3).compress(raw)
    put = s3.put_object(Bucket=estate.bucket, Key=item.key, Body=stored)
    forged_item = item.model_copy(
        update={
            "size": len(stored),
            "sha256": hashlib.sha256(stored).hexdigest(),
            "raw_bytes": len(raw),
            "version_id": put.get("VersionId"),  # the attacker names the new version too
        }
    )
    forged = manifest.model_copy(
        update={"objects": [forged_item], "raw_bytes": len(raw), "compressed_bytes": len(stored)}
    )
    key = item.key.rsplit("/", 1)[0] + "/" + layout.MANIFEST_NAME
    s3.put_object(Bucket=estate.bucket, Key=key, Body=forged.to_json().encode())
    return forged


def pg_session(dbname: str) -> psycopg.Connection[Any]:
    conn = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_PG_PRIMARY"])
    return psycopg.connect(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        password=conn.get("password"),
        dbname=dbname,
        autocommit=True,
        connect_timeout=10,
    )


@pytest.fixture
def pg_target() -> Iterator[str]:
    name = f"verified_{uuid.uuid4().hex[:8]}"
    yield name
    with pg_session("postgres") as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- a new version of a PostgreSQL dump and its manifest ------------------------------------------------


def test_a_new_version_of_a_dump_and_its_manifest_is_refused_by_the_drill_and_not_restored(
    locked: PrivateEstate, pg_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    original = manifest_of(take_backup(locked.file, locked.estate, PG))
    fact = recorded(locked, PG, original.backup_id)
    assert fact["manifest_sha256"]
    assert fact["manifest_version_id"]
    assert original.objects[0].version_id is not None
    assert fact["objects"][0]["version_id"] == original.objects[0].version_id
    forged = plant(locked, original, b"-- not the orders database\n")
    forged_sha256 = hashlib.sha256(forged.to_json().encode()).hexdigest()

    with pytest.raises(BackupVerificationError) as refused:
        prepare(locked.file, locked.estate, PG, run_id="manual__tampered", backup_id="latest")
    message = str(refused.value)
    assert original.backup_id in message
    assert fact["manifest_sha256"] in message
    assert forged_sha256 in message
    assert "refusing to drill it" in message

    # The restore reads the versions the backup wrote, as the ledger recorded them, and says why.
    request = check_request(load_catalogs([locked.file]), database=PG, target=pg_target)
    run_id = "manual__pinned-restore"
    try:
        with caplog.at_level(logging.WARNING, logger="cloudops.restore.fetch"):
            restored = restore_backup(request, run_id=run_id)
        assert restored["manifest_sha256"] == fact["manifest_sha256"]
        assert restored["manifest_version_id"] == fact["manifest_version_id"]
        warned = caplog.text
        assert forged_sha256 in warned
        assert fact["manifest_sha256"] in warned
        staging = restored["restored_into"]  # the restore is checked there before it takes its name
        assert verify_restore(request, original.backup_id, restored=staging, proven=restored)["checks"] >= 3
        table, rows = next(iter(original.row_counts.items()))
        schema, name = table.split(".")
        with pg_session(staging) as session:
            restored_rows = session.execute(f'SELECT count(*) FROM "{schema}"."{name}"').fetchone()
        assert restored_rows == (rows,), "the original dump was restored, not the planted one"
    finally:
        drop_staging(request, run_id)


def test_a_rewritten_dump_and_manifest_in_a_bucket_without_versions_are_refused(
    unversioned: PrivateEstate, pg_target: str
) -> None:
    original = manifest_of(take_backup(unversioned.file, unversioned.estate, PG))
    fact = recorded(unversioned, PG, original.backup_id)
    assert fact["manifest_version_id"] is None  # nothing to pin: the hash is what decides
    forged = plant(unversioned, original, b"-- not the orders database\n")
    forged_sha256 = hashlib.sha256(forged.to_json().encode()).hexdigest()

    with pytest.raises(BackupVerificationError) as drill:
        prepare(unversioned.file, unversioned.estate, PG, run_id="manual__rewritten", backup_id="latest")
    request = check_request(load_catalogs([unversioned.file]), database=PG, target=pg_target)
    with pytest.raises(BackupVerificationError) as restore:
        restore_backup(request, run_id="manual__rewritten-restore")

    for refused in (drill.value, restore.value):
        message = str(refused)
        assert f"backup {original.backup_id} of {unversioned.estate}/{PG}" in message
        assert f"has SHA-256 {forged_sha256}" in message
        assert f"says {fact['manifest_sha256']}" in message
    staging = restored_into(request, "manual__rewritten-restore")  # where a restore would have landed
    with pg_session("postgres") as admin:
        for name in (pg_target, staging):
            exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            assert exists is None, f"nothing was restored ({name})"


# -- sizes an attacker chooses --------------------------------------------------------------------------


def zstd_bomb(raw_size: int) -> bytes:
    """A zstd frame of ``raw_size`` zero bytes: a few hundred KB that decompress to gigabytes."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(64 * 1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(raw_size // len(zeros))]
    return b"".join([*parts, compressor.flush()])


def test_a_zstd_bomb_inside_the_stated_size_stops_at_the_bound_without_filling_the_disk(
    unversioned: PrivateEstate, tmp_path: Path
) -> None:
    store = store_of(unversioned, MARIA)
    backup_id = layout.new_backup_id(datetime.now(UTC))
    bomb = zstd_bomb(5 * 1024**3)
    claimed_raw = 50_000_000
    key = store.object_key(MARIA, backup_id, "inventory.sql.zst")
    sandbox_s3().put_object(Bucket=unversioned.bucket, Key=key, Body=bomb)
    item = {
        "name": "inventory.sql.zst",
        "key": key,
        "size": len(bomb),
        "sha256": hashlib.sha256(bomb).hexdigest(),
        "raw_bytes": claimed_raw,
    }
    started = layout.backup_time(backup_id)
    manifest = Manifest.model_validate(
        {
            "backup_id": backup_id,
            "estate": unversioned.estate,
            "database": MARIA,
            "engine": "mariadb",
            "engine_version": "10.11",
            "method": "logical",
            "format": "sql",
            "started_at": started.isoformat(),
            "finished_at": (started + timedelta(seconds=1)).isoformat(),
            "raw_bytes": claimed_raw,
            "compressed_bytes": len(bomb),
            "objects": [item],
            "compression": {"level": 1},
            "encryption": {"mode": "sse-s3"},
        }
    )
    workdir = tmp_path / "fetch"

    with pytest.raises(BackupVerificationError) as stopped:
        fetch_backup(store, manifest, workdir)
    left = sum(path.stat().st_size for path in workdir.rglob("*") if path.is_file())

    message = str(stopped.value)
    assert "inventory.sql.zst" in message
    assert f"decompresses to more than the {claimed_raw} bytes the manifest says" in message
    assert "decompression bomb" in message
    stopped_at = int(message.split("stopped at ")[1].split(" ")[0])
    # Stopped within one decompress call (at most about 32 MiB) past the bound, never near 5 GiB.
    assert claimed_raw < stopped_at <= claimed_raw + 33 * 1024 * 1024
    assert left == 0, "the partial file is removed"
    assert stopped.value.object_name == "inventory.sql.zst"


def test_a_100_mb_manifest_is_refused_by_its_size_without_being_read(unversioned: PrivateEstate) -> None:
    store = store_of(unversioned, MARIA)
    backup_id = layout.new_backup_id(datetime.now(UTC))
    huge = 100 * 1024 * 1024
    key = store.manifest_key(MARIA, backup_id)
    sandbox_s3().put_object(Bucket=unversioned.bucket, Key=key, Body=b"{" + b" " * (huge - 2) + b"}")

    assert store.client.head_object(Bucket=unversioned.bucket, Key=key)["ContentLength"] == huge
    tracemalloc.start()  # the client is built (its service model loaded): what follows is the read
    try:
        with pytest.raises(ManifestError) as refused:
            store.read_manifest_bytes(MARIA, backup_id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(refused.value) == (
        f"s3://{unversioned.bucket}/{key}: the manifest is {huge} bytes, more than the "
        f"{MAX_MANIFEST_BYTES} a manifest may hold: refused without reading it"
    )
    assert peak < 8 * 1024 * 1024, f"{peak} bytes were allocated: the body was read"
    # The listing refuses it from the size it lists, without a GET; a restore names it.
    listed = store.describe_backup(MARIA, backup_id)
    assert not listed.complete
    assert listed.problems == [
        f"manifest unreadable: it is {huge} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may "
        "hold (not read)"
    ]
    with pytest.raises(BackupVerificationError, match=f"backup {backup_id} .* cannot be restored"):
        choose_backup(store, MARIA, backup_id)


def test_a_backup_planted_with_a_future_date_never_becomes_latest(
    unversioned: PrivateEstate, caplog: pytest.LogCaptureFixture
) -> None:
    real = take_backup(unversioned.file, unversioned.estate, MARIA)
    original = manifest_of(real)
    store = store_of(unversioned, MARIA)
    s3 = sandbox_s3()

    def plant_copy(backup_id: str, started_at: datetime) -> None:
        item = original.objects[0]
        key = store.object_key(MARIA, backup_id, item.name)
        s3.copy_object(
            Bucket=unversioned.bucket, Key=key, CopySource={"Bucket": unversioned.bucket, "Key": item.key}
        )
        copy = original.model_copy(
            update={
                "backup_id": backup_id,
                "started_at": started_at,
                "finished_at": started_at + timedelta(seconds=5),
                "objects": [item.model_copy(update={"key": key, "version_id": None})],
            }
        )
        s3.put_object(
            Bucket=unversioned.bucket, Key=store.manifest_key(MARIA, backup_id), Body=copy.to_json().encode()
        )

    future = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    dated_ahead = layout.new_backup_id(future)
    plant_copy(dated_ahead, future)  # consistent with its id, but in the future
    backdated = layout.new_backup_id(datetime.now(UTC) + timedelta(seconds=2))
    plant_copy(backdated, future)  # an id of now, a manifest that claims the future

    with caplog.at_level(logging.WARNING):
        chosen = choose_backup(store, MARIA)
    assert chosen.backup_id == original.backup_id
    assert f"skipping backup {dated_ahead} of {MARIA}: its id's time" in caplog.text
    assert "lies in the future" in caplog.text
    assert f"skipping backup {backdated} of {MARIA}: the manifest's started_at" in caplog.text
    listed = {backup.backup_id: backup for backup in store.list_backups(MARIA)}
    assert listed[dated_ahead].time == layout.backup_time(dated_ahead)
    assert not listed[dated_ahead].complete, "never counted as a complete backup either"
    assert not listed[backdated].complete
    assert prove_backup(store, MARIA).backup_id == original.backup_id


# -- a backup the ledger never recorded -----------------------------------------------------------------


def test_a_backup_without_a_ledger_record_is_refused_unless_the_repository_is_trusted(
    unversioned: PrivateEstate,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backup_id = take_backup(unversioned.file, unversioned.estate, MARIA)["backup_id"]
    # Another machine's ledger: it never saw this backup (as for an imported one).
    elsewhere = tmp_path / "other-evidence"
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(elsewhere))
    monkeypatch.setenv("CLOUDOPS_CATALOG", unversioned.file)
    args = (unversioned.file, unversioned.estate, MARIA)

    with pytest.raises(BackupVerificationError) as drill:
        prepare(*args, run_id="manual__untrusted", backup_id="latest")
    assert f"backup {backup_id} of {unversioned.estate}/{MARIA} has no backup.taken record" in str(
        drill.value
    )
    assert "trust_repository" in str(drill.value)
    target = f"trusted_{uuid.uuid4().hex[:6]}"
    assert main(["restore", MARIA, "--target", target]) == 1
    assert "--trust-repository" in capsys.readouterr().err

    # Trusted, and recorded: by the drill policy...
    document = unversioned.document
    document["databases"][1]["drill"]["trust_repository"] = True
    unversioned.write()
    prepared = prepare(*args, run_id="manual__trusted", backup_id="latest")
    assert prepared["trusted_repository"] is True
    trusted = latest_fact("repository.trusted", {"backup_id": backup_id, "by": "restore_drill"})
    assert trusted is not None
    assert trusted.fields["run_id"] == "manual__trusted"
    assert trusted.fields["data"]["manifest_sha256"] == prepared["manifest_sha256"]

    # ...and by the restore's form field.
    request = check_request(
        load_catalogs([unversioned.file]), database=MARIA, target=target, trust_repository=True
    )
    try:
        restored = restore_backup(request, run_id="manual__trusted-restore")
        assert restored["trusted_repository"] is True
        fact = latest_fact("repository.trusted", {"backup_id": backup_id, "by": "restore_request"})
        assert fact is not None
        assert fact.fields["data"]["manifest_sha256"] == restored["manifest_sha256"]
    finally:
        drop_staging(request, "manual__trusted-restore")  # the copy the restore staged
        session = mariadb_admin()
        session.cursor().execute(f"DROP DATABASE IF EXISTS `{target}`")
        session.close()


def mariadb_admin() -> Any:
    import pymysql

    conn = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_MARIADB"])
    return pymysql.connect(
        host=conn["host"], port=conn["port"], user=conn["login"], password=conn["password"], autocommit=True
    )


def test_a_restore_reads_the_recorded_versions_of_a_backup_whose_current_manifest_was_spoilt(
    locked: PrivateEstate, tmp_path: Path
) -> None:
    original = manifest_of(take_backup(locked.file, locked.estate, MARIA))
    store = store_of(locked, MARIA)
    key = store.manifest_key(MARIA, original.backup_id)
    sandbox_s3().put_object(Bucket=locked.bucket, Key=key, Body=b"not a manifest")
    spoilt = hashlib.sha256(b"not a manifest").hexdigest()

    with pytest.raises(BackupVerificationError, match="cannot be restored: manifest unreadable"):
        prove_backup(store, MARIA, original.backup_id, on_change="refuse")
    proven = prove_backup(store, MARIA, original.backup_id, on_change="read_recorded")

    assert proven.manifest == original
    assert any(spoilt in change for change in proven.changed)
    dump = fetch_backup(store, proven.manifest, tmp_path / "fetch")
    assert dump.stat().st_size == original.objects[0].raw_bytes
