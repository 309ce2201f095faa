"""The restore library against the real sandbox: fresh backups of orders and inventory in a private bucket,
fetched byte-checked, restored into scratch databases, compared with their manifests and checked with the
expectation suites; and the faults (a flipped byte, a truncated, deleted or swapped object or manifest)
each refused before anything is restored, naming the object.

The bucket is this module's own and has no Object Lock, so objects can be overwritten to stage faults.
The sandbox's own backups and the orders and inventory databases are only read; every database written
is a scratch database (``drill_<database>_<hash>``), dropped at the end.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudops.catalog import load_catalog_file
from cloudops.engines import mariadb, postgres
from cloudops.engines.mariadb import session as maria_session
from cloudops.engines.scratch import scratch_name
from cloudops.errors import RestoreError, RestoreRefused
from cloudops.repository.manifest import Manifest
from cloudops.repository.s3 import BackupRepository
from cloudops.restore.fetch import (
    BackupVerificationError,
    choose_backup,
    fetch_backup,
    verify_manifest_matches,
)
from cloudops.restore.record import DrillRecord, ObjectChecksum
from cloudops.restore.validation import (
    ExpectationSuiteError,
    compare_with_manifest,
    run_expectation_suite,
    suite_path,
)
from cloudops.runbooks.backup import manifest_of, open_repository, take_backup
from tests.integration.estates import private_estate, sandbox_s3

pytestmark = pytest.mark.integration

# Backups come from the primaries; drills restore onto the scratch servers, never the primaries.
PG_PRIMARY, MARIA_PRIMARY = "sandbox_pg_primary", "sandbox_mariadb"
PG, MARIA = "sandbox_pg_scratch", "sandbox_mariadb_scratch"
ENGINES = {"orders_pg": (postgres, PG, "postgres"), "inventory_mariadb": (mariadb, MARIA, "mariadb")}
# Long enough that the suite's freshness check passes however long ago the sandbox was seeded.
GENEROUS_RPO = timedelta(days=3650)


@dataclass
class Estate:
    """A private catalog and bucket: ``orders_pg`` and ``inventory_mariadb`` backing up into it."""

    file: str
    estate: str
    bucket: str

    def store(self, database: str) -> BackupRepository:
        catalog = load_catalog_file(self.file)
        return open_repository(catalog, catalog.database(database))

    def backup(self, database: str) -> Manifest:
        return manifest_of(take_backup(self.file, self.estate, database, run_id="restore-test"))


@pytest.fixture(scope="module")
def estate(sandbox_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    # No Object Lock (hence no versioning): the fault tests overwrite and delete objects.
    backup = {"repository": "r", "retention": {"keep_last": 5}}
    databases = [
        {
            "name": name,
            "engine": engine,
            "conn_id": conn_id,
            "database": database,
            "rpo": "24h",
            "rto": "1h",
            "backup": backup,
            "drill": {"schedule": "on_backup", "scratch_conn_id": scratch},
        }
        for name, engine, conn_id, scratch, database in (
            ("orders_pg", "postgres", PG_PRIMARY, PG, "orders"),
            ("inventory_mariadb", "mariadb", MARIA_PRIMARY, MARIA, "inventory"),
        )
    ]
    # take_backup records backup.taken: into this module's own evidence folder, not the sandbox's.
    with (
        pytest.MonkeyPatch.context() as patch,
        private_estate(tmp_path_factory.mktemp("restore-estate"), "rt", databases) as made,
    ):
        patch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path_factory.mktemp("restore-evidence")))
        yield Estate(file=made.file, estate=made.estate, bucket=made.bucket)


@dataclass
class Restored:
    """One backup restored into a scratch database, as a drill leaves it before validation."""

    database: str
    manifest: Manifest
    target: str
    checksums: list[ObjectChecksum]
    restore_seconds: float


def restore(estate: Estate, database: str, manifest: Manifest, workdir: Path, run_id: str) -> Restored:
    """The drill's steps up to the restore, in the drill's order: verify, fetch, restore."""
    module, conn_id, _ = ENGINES[database]
    store = estate.store(database)
    started = time.monotonic()
    verify_manifest_matches(store, database, manifest.backup_id, manifest)
    dump = fetch_backup(store, manifest, workdir)
    target = scratch_name(database, run_id)
    module.restore_logical(conn_id, target, dump, used_by=f"restore drill of {database!r}", run_id=run_id)
    checksums = [ObjectChecksum(object=item.name, sha256=item.sha256, ok=True) for item in manifest.objects]
    return Restored(database, manifest, target, checksums, time.monotonic() - started)


@pytest.fixture(scope="module")
def restored(estate: Estate, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Restored]]:
    """Fresh backups of orders and inventory, each restored once into a scratch database."""
    done: dict[str, Restored] = {}
    try:
        for database in ENGINES:
            manifest = estate.backup(database)
            chosen = choose_backup(estate.store(database), database)
            assert chosen.backup_id == manifest.backup_id
            workdir = tmp_path_factory.mktemp(f"fetch-{database}")
            done[database] = restore(estate, database, manifest, workdir, f"test-{uuid.uuid4().hex}")
        yield done
    finally:
        for database, item in done.items():
            module, conn_id, _ = ENGINES[database]
            module.drop_database(conn_id, item.target, used_by="test teardown")


RUN_OF: dict[str, str] = {}  # the run each scratch name of `leftovers` was made for


@pytest.fixture
def leftovers() -> Iterator[Callable[[str, str], str]]:
    """Scratch names handed out to a test; whatever exists of them at the end is dropped."""
    made: list[tuple[str, str]] = []

    def make(database: str, run_id: str) -> str:
        name = scratch_name(database, run_id)
        made.append((database, name))
        RUN_OF[name] = run_id
        return name

    yield make
    for database, name in made:
        module, conn_id, _ = ENGINES[database]
        module.drop_database(conn_id, name, used_by="test teardown")


def password_of(conn_id: str) -> str:
    return str(json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])["password"])


# -- the happy path ------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", list(ENGINES))
def test_restored_copy_matches_its_manifest(restored: dict[str, Restored], database: str) -> None:
    item = restored[database]
    _, conn_id, engine = ENGINES[database]

    checks = compare_with_manifest(conn_id, engine, item.target, item.manifest)

    assert [check.name for check in checks if not check.passed] == []
    names = {check.name for check in checks}
    assert {"schema fingerprint", "tables"} <= names
    assert {f"rows {table}" for table in item.manifest.row_counts} <= names
    assert sum(c.observed for c in checks if c.name.startswith("rows ")) == sum(  # type: ignore[misc]
        item.manifest.row_counts.values()
    )


@pytest.mark.parametrize("database", list(ENGINES))
def test_expectation_suite_passes_on_the_restored_copy(restored: dict[str, Restored], database: str) -> None:
    item = restored[database]
    _, conn_id, engine = ENGINES[database]
    started = time.monotonic()

    checks = run_expectation_suite(
        conn_id,
        engine,
        item.target,
        suite_path(database),
        rpo=GENEROUS_RPO,
        backup_time=item.manifest.started_at,
    )

    print(f"suite of {database}: {len(checks)} checks in {time.monotonic() - started:.2f} s")
    assert checks
    assert [(c.name, c.detail) for c in checks if not c.passed] == []
    assert any("newest_within_rpo" in check.name for check in checks)
    assert password_of(conn_id) not in json.dumps([check.model_dump() for check in checks])


def test_a_stale_backup_fails_newest_within_rpo_only(restored: dict[str, Restored]) -> None:
    item = restored["orders_pg"]
    # The newest order is older than "backup time - 1 second": as if nothing had been written for a while.
    checks = run_expectation_suite(
        PG,
        "postgres",
        item.target,
        suite_path("orders_pg"),
        rpo=timedelta(seconds=1),
        backup_time=item.manifest.started_at + timedelta(days=400),
    )
    failed = [check for check in checks if not check.passed]
    assert [check.name for check in failed] == ["public.orders: newest_within_rpo(ordered_at)"]
    assert "before the backup" in failed[0].detail


def test_suite_errors_are_named_before_anything_runs(restored: dict[str, Restored], tmp_path: Path) -> None:
    item = restored["orders_pg"]
    typo = tmp_path / "typo.json"
    typo.write_text(
        json.dumps({"tables": {"public.orders": [{"expect": "column_values_to_be_uniqe", "column": "x"}]}})
    )
    with pytest.raises(
        ExpectationSuiteError, match=r"tables\.public\.orders\[0\].*did you mean 'column_values_to_be_unique'"
    ):
        run_expectation_suite(
            PG, "postgres", item.target, typo, rpo=GENEROUS_RPO, backup_time=datetime.now(UTC)
        )

    missing_table = tmp_path / "missing.json"
    missing_table.write_text(
        json.dumps({"tables": {"public.nope": [{"expect": "column_values_to_not_be_null", "column": "id"}]}})
    )
    (check,) = run_expectation_suite(
        PG, "postgres", item.target, missing_table, rpo=GENEROUS_RPO, backup_time=datetime.now(UTC)
    )
    assert (check.name, check.passed) == ("public.nope: table exists", False)
    assert password_of(PG) not in check.detail


def test_a_changed_copy_fails_the_comparison(restored: dict[str, Restored]) -> None:
    item = restored["inventory_mariadb"]
    import pymysql

    c = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_MARIADB_SCRATCH"])
    # Only the scratch copy is changed; it is the last test to use this copy's counts.
    with (
        pymysql.connect(
            host=c["host"],
            port=c["port"],
            user=c["login"],
            password=c["password"],
            database=item.target,
            autocommit=True,
        ) as session,
        session.cursor() as cursor,
    ):
        cursor.execute("DELETE FROM stock_levels WHERE warehouse_id = 1 AND item_id = 2")
        cursor.execute("ALTER TABLE warehouses ADD COLUMN note TEXT")
    try:
        checks = compare_with_manifest(MARIA, "mariadb", item.target, item.manifest)
        failed = {check.name: check for check in checks if not check.passed}
        assert set(failed) == {"schema fingerprint", "rows stock_levels"}
        assert failed["rows stock_levels"].observed == item.manifest.row_counts["stock_levels"] - 1
    finally:
        with (
            pymysql.connect(
                host=c["host"],
                port=c["port"],
                user=c["login"],
                password=c["password"],
                database=item.target,
                autocommit=True,
            ) as session,
            session.cursor() as cursor,
        ):
            cursor.execute("ALTER TABLE warehouses DROP COLUMN note")
            cursor.execute("INSERT INTO stock_levels (warehouse_id, item_id, quantity) VALUES (1, 2, 0)")


def test_the_drill_record_of_a_restore(restored: dict[str, Restored]) -> None:
    item = restored["orders_pg"]
    started = datetime.now(UTC)
    checks = compare_with_manifest(PG, "postgres", item.target, item.manifest)
    record = DrillRecord(
        estate=item.manifest.estate,
        database="orders_pg",
        engine="postgres",
        backup_id=item.manifest.backup_id,
        backup_time=item.manifest.started_at,
        run_id="test",
        scratch_target=item.target,
        checksums=item.checksums,
        checks=checks,
        restore_seconds=item.restore_seconds,
        validation_seconds=1.0,
        rto_target_seconds=3600,
        rpo_target_seconds=86400,
        complete_backups_in_window=1,  # the RPO is proven only with the repository listing read
        started_at=started,
        finished_at=datetime.now(UTC),
    )
    assert record.passed
    assert record.targets_met
    table = record.to_table()
    print(table)
    assert item.manifest.backup_id in table
    assert item.manifest.objects[0].sha256 in table
    assert DrillRecord.from_json(record.to_json()) == record


# -- the guards ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("database", "real"), [("orders_pg", "orders"), ("inventory_mariadb", "inventory")])
def test_drop_refuses_a_real_database(database: str, real: str) -> None:
    module, conn_id, _ = ENGINES[database]
    with pytest.raises(RestoreRefused, match=f"refusing to drop database '{real}'"):
        module.drop_database(conn_id, real, used_by="test")
    assert real not in module.leftover_scratch_databases(conn_id, database)


@pytest.mark.parametrize(("database", "real"), [("orders_pg", "orders"), ("inventory_mariadb", "inventory")])
def test_restore_refuses_an_existing_database(database: str, real: str, tmp_path: Path) -> None:
    module, _, _ = ENGINES[database]
    conn_id = PG_PRIMARY if module is postgres else MARIA_PRIMARY  # where the real database is
    dump = tmp_path / "dump"
    dump.write_bytes(b"-- not even read\n")
    with pytest.raises(RestoreRefused, match=f"refusing to restore into database '{real}'.*not a scratch"):
        module.restore_logical(conn_id, real, dump, used_by="test")


def test_a_dump_that_switches_databases_is_refused(
    tmp_path: Path, leftovers: Callable[[str, str], str]
) -> None:
    dump = tmp_path / "inventory.sql"
    dump.write_text("CREATE TABLE t (id INT);\nUSE `inventory`;\nDROP TABLE stock_levels;\n")
    target = leftovers("inventory_mariadb", f"test-{uuid.uuid4().hex}")
    with pytest.raises(RestoreRefused, match=r"inventory\.sql line 2: a client command: 'USE `inventory`;'"):
        mariadb.restore_logical(MARIA, target, dump, used_by="test", run_id=RUN_OF[target])
    assert target not in mariadb.leftover_scratch_databases(MARIA, "inventory_mariadb")


@pytest.mark.parametrize("database", list(ENGINES))
def test_leftover_scratch_databases_are_listed_and_replaced(
    database: str,
    estate: Estate,
    restored: dict[str, Restored],
    tmp_path: Path,
    leftovers: Callable[[str, str], str],
) -> None:
    module, conn_id, _ = ENGINES[database]
    item = restored[database]
    run_id = f"killed-{uuid.uuid4().hex}"
    target = leftovers(database, run_id)
    dump = fetch_backup(estate.store(database), item.manifest, tmp_path)

    first = module.restore_logical(conn_id, target, dump, used_by="a drill killed half-way", run_id=run_id)
    assert target in module.leftover_scratch_databases(conn_id, database)
    assert not first.replaced_leftover
    # The retry of the same run finds its own leftover and replaces it.
    again = module.restore_logical(conn_id, target, dump, used_by="the retry", run_id=run_id)
    assert again.replaced_leftover

    assert module.drop_database(conn_id, target, used_by="cleanup") is True
    assert target not in module.leftover_scratch_databases(conn_id, database)
    assert module.drop_database(conn_id, target, used_by="cleanup again") is False


class ByHand:
    """Create, inspect and drop databases on a scratch server apart from the code under test."""

    def __init__(self, conn_id: str) -> None:
        self.conn = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])
        self.postgres = self.conn["conn_type"] == "postgres"

    def run(self, query: str, *args: str) -> list[tuple[object, ...]]:
        c = self.conn
        if self.postgres:
            import psycopg

            with psycopg.connect(
                host=c["host"],
                port=c["port"],
                user=c["login"],
                password=c["password"],
                dbname="postgres",
                autocommit=True,
            ) as session:
                cursor = session.execute(query, list(args))
                return list(cursor.fetchall()) if cursor.description else []
        import pymysql

        with (
            pymysql.connect(
                host=c["host"], port=c["port"], user=c["login"], password=c["password"], autocommit=True
            ) as session,
            session.cursor() as cursor,
        ):
            cursor.execute(query, args or None)
            return list(cursor.fetchall())

    def create(self, name: str) -> None:
        self.run(f'CREATE DATABASE "{name}"' if self.postgres else f"CREATE DATABASE `{name}`")

    def drop(self, name: str) -> None:
        self.run(
            f'DROP DATABASE IF EXISTS "{name}"' if self.postgres else f"DROP DATABASE IF EXISTS `{name}`"
        )

    def names(self) -> set[str]:
        query = (
            "SELECT datname FROM pg_database"
            if self.postgres
            else "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA"
        )
        return {str(row[0]) for row in self.run(query)}

    def comment(self, name: str) -> str | None:
        query = (
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s"
            if self.postgres
            else "SELECT SCHEMA_COMMENT FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s"
        )
        ((comment,),) = self.run(query, name)
        return None if comment is None else str(comment)


@pytest.mark.parametrize("database", list(ENGINES))
def test_a_scratch_shaped_database_cloudops_did_not_create_is_never_dropped(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    module, conn_id, _ = ENGINES[database]
    by_hand = ByHand(conn_id)
    # Ten digits are hex: both names have the scratch shape, the first even that of this database.
    mine, logs = f"drill_{database}_2024010112", "drill_logs_2024010112"
    for name in (mine, logs):
        by_hand.drop(name)
        by_hand.create(name)
    try:
        with caplog.at_level("WARNING"):
            assert mine not in module.leftover_scratch_databases(conn_id, database)
        assert f"leaving database '{mine}'" in caplog.text
        assert "carries no cloudops marker" in caplog.text
        for name in (mine, logs):
            caplog.clear()
            with pytest.raises(
                RestoreRefused, match=f"refusing to drop database '{name}'.*carries no cloudops marker"
            ):
                module.drop_database(conn_id, name, used_by="test")
            assert f"not dropping database '{name}'" in caplog.text
        assert {mine, logs} <= by_hand.names()
    finally:
        for name in (mine, logs):
            by_hand.drop(name)


@pytest.mark.parametrize("database", list(ENGINES))
def test_a_restore_never_replaces_a_scratch_named_database_without_its_marker(
    database: str, tmp_path: Path
) -> None:
    module, conn_id, _ = ENGINES[database]
    by_hand = ByHand(conn_id)
    run_id = f"by-hand-{uuid.uuid4().hex}"
    name = scratch_name(database, run_id)  # the very name the run would use
    by_hand.create(name)
    dump = tmp_path / "dump"
    dump.write_bytes(b"-- not even read\n")
    try:
        with pytest.raises(RestoreRefused, match=f"refusing to drop database '{name}'"):
            module.restore_logical(conn_id, name, dump, used_by="test", run_id=run_id)
        assert name in by_hand.names()
    finally:
        by_hand.drop(name)


@pytest.mark.parametrize("database", list(ENGINES))
def test_a_restored_scratch_database_carries_its_marker(restored: dict[str, Restored], database: str) -> None:
    from cloudops.engines.scratch import ownership

    _, conn_id, _ = ENGINES[database]
    name = restored[database].target
    verdict = ownership(name, ByHand(conn_id).comment(name))
    assert verdict.owned, verdict.reason
    assert str(verdict.run_id).startswith("test-")


def test_a_broken_restore_fails_clearly(tmp_path: Path, leftovers: Callable[[str, str], str]) -> None:
    dump = tmp_path / "broken.pgdump"
    dump.write_bytes(b"PGDMP this is not a dump")
    target = leftovers("orders_pg", f"test-{uuid.uuid4().hex}")
    with pytest.raises(
        RestoreError, match=r"pg_restore .* into database 'drill_orders_pg_\w+'.*exited with status 1"
    ):
        postgres.restore_logical(PG, target, dump, used_by="test", run_id=RUN_OF[target])


# -- faults: each refused before anything is restored ------------------------------------------------------


@pytest.fixture
def fresh_backup(estate: Estate) -> Manifest:
    """A new inventory backup of this test's own, to damage."""
    return estate.backup("inventory_mariadb")


def object_bytes(estate: Estate, key: str) -> bytes:
    body = sandbox_s3().get_object(Bucket=estate.bucket, Key=key)["Body"]
    with body:
        return bytes(body.read())


def assert_nothing_restored(workdir: Path, target: str) -> None:
    assert list(workdir.iterdir()) == [], "a partly fetched file was left behind"
    assert target not in mariadb.leftover_scratch_databases(MARIA, "inventory_mariadb")


def drill_steps(estate: Estate, backup_id: str, workdir: Path, target: str) -> None:
    """What a drill runs for inventory_mariadb, in order: choose, verify, fetch, then restore."""
    store = estate.store("inventory_mariadb")
    stored = choose_backup(store, "inventory_mariadb", backup_id)
    assert stored.manifest is not None
    verify_manifest_matches(store, "inventory_mariadb", backup_id, stored.manifest)
    dump = fetch_backup(store, stored.manifest, workdir)
    mariadb.restore_logical(MARIA, target, dump, used_by="test", run_id=RUN_OF[target])


def test_a_flipped_byte_is_caught_while_fetching(
    estate: Estate, fresh_backup: Manifest, tmp_path: Path, leftovers: Callable[[str, str], str]
) -> None:
    (item,) = fresh_backup.objects
    data = bytearray(object_bytes(estate, item.key))
    data[len(data) // 2] ^= 0x01
    sandbox_s3().put_object(Bucket=estate.bucket, Key=item.key, Body=bytes(data))
    store = estate.store("inventory_mariadb")
    # Same size: the listing cannot tell, only the bytes can.
    assert store.describe_backup("inventory_mariadb", fresh_backup.backup_id).complete
    target = leftovers("inventory_mariadb", f"test-{uuid.uuid4().hex}")

    with pytest.raises(
        BackupVerificationError,
        match=r"object 'inventory\.sql\.zst' .* has SHA-256 [0-9a-f]{64}, the manifest says",
    ) as caught:
        drill_steps(estate, fresh_backup.backup_id, tmp_path, target)

    assert caught.value.object_name == "inventory.sql.zst"
    assert [(c.object, c.ok) for c in caught.value.checksums] == [("inventory.sql.zst", False)]
    assert_nothing_restored(tmp_path, target)


def test_a_truncated_object_is_caught(
    estate: Estate, fresh_backup: Manifest, tmp_path: Path, leftovers: Callable[[str, str], str]
) -> None:
    (item,) = fresh_backup.objects
    data = object_bytes(estate, item.key)
    sandbox_s3().put_object(Bucket=estate.bucket, Key=item.key, Body=data[: len(data) - 100])
    target = leftovers("inventory_mariadb", f"test-{uuid.uuid4().hex}")

    with pytest.raises(
        BackupVerificationError,
        match=rf"object 'inventory\.sql\.zst' is {item.size - 100} bytes, manifest says {item.size}",
    ) as caught:
        drill_steps(estate, fresh_backup.backup_id, tmp_path, target)
    assert caught.value.object_name == "inventory.sql.zst"
    # Fetching it anyway (no listing first) is refused too, by the bytes.
    with pytest.raises(
        BackupVerificationError,
        match=rf"is {item.size - 100} bytes, the manifest says {item.size} \(truncated\)",
    ):
        fetch_backup(estate.store("inventory_mariadb"), fresh_backup, tmp_path)
    assert_nothing_restored(tmp_path, target)


def test_a_deleted_object_is_caught(
    estate: Estate, fresh_backup: Manifest, tmp_path: Path, leftovers: Callable[[str, str], str]
) -> None:
    (item,) = fresh_backup.objects
    sandbox_s3().delete_object(Bucket=estate.bucket, Key=item.key)
    target = leftovers("inventory_mariadb", f"test-{uuid.uuid4().hex}")

    with pytest.raises(BackupVerificationError, match=r"object 'inventory\.sql\.zst' is missing") as caught:
        drill_steps(estate, fresh_backup.backup_id, tmp_path, target)
    assert caught.value.object_name == "inventory.sql.zst"
    with pytest.raises(BackupVerificationError, match=r"object 'inventory\.sql\.zst' \(s3://.*\) is missing"):
        fetch_backup(estate.store("inventory_mariadb"), fresh_backup, tmp_path)
    assert_nothing_restored(tmp_path, target)


def test_a_swapped_manifest_is_caught(
    estate: Estate, fresh_backup: Manifest, tmp_path: Path, leftovers: Callable[[str, str], str]
) -> None:
    other = estate.backup("inventory_mariadb")
    store = estate.store("inventory_mariadb")
    # The other backup's manifest, copied over this one's.
    sandbox_s3().put_object(
        Bucket=estate.bucket,
        Key=store.manifest_key("inventory_mariadb", fresh_backup.backup_id),
        Body=object_bytes(estate, store.manifest_key("inventory_mariadb", other.backup_id)),
    )
    target = leftovers("inventory_mariadb", f"test-{uuid.uuid4().hex}")

    with pytest.raises(
        BackupVerificationError,
        match=rf"the manifest is for {estate.estate}/inventory_mariadb/{other.backup_id}",
    ) as caught:
        drill_steps(estate, fresh_backup.backup_id, tmp_path, target)
    assert "nothing was restored" in str(caught.value)
    assert_nothing_restored(tmp_path, target)


def test_a_manifest_of_another_backup_is_refused(estate: Estate, restored: dict[str, Restored]) -> None:
    item = restored["inventory_mariadb"]
    other = estate.backup("inventory_mariadb")
    store = estate.store("inventory_mariadb")
    with pytest.raises(
        BackupVerificationError,
        match=rf"the manifest given is for {estate.estate}/inventory_mariadb/{other.backup_id}",
    ):
        verify_manifest_matches(store, "inventory_mariadb", item.manifest.backup_id, other)


# -- the attacker's dumps: rewritten in the bucket, with a manifest to match -----------------------------


def rewrite_dump(estate: Estate, manifest: Manifest, prefix: bytes) -> bytes:
    """Put ``prefix`` before the backup's SQL in the bucket and rewrite its manifest's sizes and hash."""
    import hashlib

    import zstandard

    (item,) = manifest.objects
    with zstandard.ZstdDecompressor().stream_reader(object_bytes(estate, item.key)) as reader:
        sql_text = prefix + reader.read()
    stored = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(sql_text)
    sandbox_s3().put_object(Bucket=estate.bucket, Key=item.key, Body=stored)
    store = estate.store("inventory_mariadb")
    key = store.manifest_key("inventory_mariadb", manifest.backup_id)
    document = json.loads(object_bytes(estate, key))
    document["raw_bytes"] = document["objects"][0]["raw_bytes"] = len(sql_text)
    document["compressed_bytes"] = document["objects"][0]["size"] = len(stored)
    document["objects"][0]["sha256"] = hashlib.sha256(stored).hexdigest()
    sandbox_s3().put_object(Bucket=estate.bucket, Key=key, Body=json.dumps(document).encode())
    return sql_text


@pytest.fixture
def marker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A file the attacker's command would create: it must never exist."""
    path = tmp_path_factory.mktemp("attacker") / "pwned"
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("first_line", "refused"),
    [
        ("\\! touch {marker}", r"line 1: a client command: '\\\\! touch "),
        ("INSERT INTO otherdb.t VALUES (1);", r"line 1: a name in another database: 'INSERT INTO otherdb\.t"),
    ],
)
def test_a_tampered_dump_with_a_matching_manifest_is_refused_and_runs_nothing(
    estate: Estate,
    fresh_backup: Manifest,
    tmp_path: Path,
    leftovers: Callable[[str, str], str],
    marker: Path,
    first_line: str,
    refused: str,
) -> None:
    rewrite_dump(estate, fresh_backup, first_line.format(marker=marker).encode() + b"\n")
    target = leftovers("inventory_mariadb", f"test-{uuid.uuid4().hex}")
    with pytest.raises(RestoreRefused, match=rf"^inventory\.sql {refused}"):
        drill_steps(estate, fresh_backup.backup_id, tmp_path, target)
    assert not marker.exists()
    assert target not in mariadb.leftover_scratch_databases(MARIA, "inventory_mariadb")


def test_the_engine_refuses_a_shell_escape_before_it_connects(
    tmp_path: Path, leftovers: Callable[[str, str], str], marker: Path
) -> None:
    dump = tmp_path / "inventory.sql"
    dump.write_text(f"CREATE TABLE t (id INT);\nINSERT INTO t VALUES (1); \\! touch {marker}\n")
    target = leftovers("inventory_mariadb", f"test-{uuid.uuid4().hex}")
    with pytest.raises(RestoreRefused, match=r"inventory\.sql line 2: a client command: '\\\\! touch"):
        mariadb.restore_logical(MARIA, target, dump, used_by="test", run_id=RUN_OF[target])
    assert not marker.exists()
    assert target not in mariadb.leftover_scratch_databases(MARIA, "inventory_mariadb")


@pytest.mark.parametrize("command", ["\\! touch {marker}", "system touch {marker}", "\\T {marker}"])
def test_the_client_refuses_client_commands_even_past_the_scan(
    tmp_path: Path, leftovers: Callable[[str, str], str], marker: Path, command: str
) -> None:
    """The client as the restore runs it (its argv from load_command), fed a dump the scan never saw."""
    import subprocess

    from cloudops.connections import get_connection
    from cloudops.engines.client_tools import private_file
    from cloudops.engines.scratch import scratch_marker

    conn = get_connection(MARIA, "test")
    target = leftovers("inventory_mariadb", f"test-{uuid.uuid4().hex}")
    with maria_session._admin_session(
        conn, used_by="test", connect_timeout_seconds=10, what="create"
    ) as admin:
        # Marked as cloudops's, as a restore makes it, so that the fixture's teardown may drop it.
        maria_session._rows(
            admin, f"CREATE DATABASE `{target}` COMMENT %s", scratch_marker(target, RUN_OF[target])
        )
    dump = tmp_path / "dump.sql"
    dump.write_text(f"CREATE TABLE t (id INT);\n{command.format(marker=marker)}\nINSERT INTO t VALUES (1);\n")
    with (
        private_file(tmp_path, ".my-", maria_session._option_file(conn)) as option_file,
        dump.open("rb") as stdin,
    ):
        argv = mariadb.load_command("mariadb", option_file, conn, target, 10)
        done = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=60, check=False)
    assert {"--sandbox", "--binary-mode"} <= set(argv)
    assert done.returncode != 0
    assert not marker.exists()


# -- events: loaded only where the event scheduler does not run ----------------------------------------

EVENT_DUMP = (
    "CREATE TABLE t (id INT);\n"
    "DELIMITER ;;\n"
    "/*!50106 CREATE*/ /*!50106 EVENT `purge_prod` ON SCHEDULE EVERY 1 SECOND ON COMPLETION PRESERVE "
    "ENABLE DO DELETE FROM t */ ;;\n"
    "DELIMITER ;\n"
)


@pytest.fixture
def event_scheduler_on() -> Iterator[None]:
    """This sandbox's MariaDB with its event scheduler running, as a production primary that uses events."""
    from cloudops.connections import get_connection

    conn = get_connection(MARIA, "test")
    with maria_session._admin_session(
        conn, used_by="test", connect_timeout_seconds=10, what="scheduler"
    ) as admin:
        maria_session._rows(admin, "SET GLOBAL event_scheduler = ON")
        try:
            yield
        finally:
            maria_session._rows(admin, "SET GLOBAL event_scheduler = OFF")


def test_a_dump_with_events_is_refused_where_the_scheduler_runs(
    tmp_path: Path, leftovers: Callable[[str, str], str], event_scheduler_on: None
) -> None:
    dump = tmp_path / "inventory.sql"
    dump.write_text(EVENT_DUMP)
    target = leftovers("inventory_mariadb", f"test-{uuid.uuid4().hex}")
    with pytest.raises(
        RestoreRefused,
        match=r"inventory\.sql defines 1 event\(s\) \(purge_prod\) and the event scheduler of .* is ON: "
        r"loaded there, they would run .* restore onto a server whose event_scheduler is OFF",
    ):
        mariadb.restore_logical(MARIA, target, dump, used_by="test", run_id=RUN_OF[target])
    assert target not in mariadb.leftover_scratch_databases(MARIA, "inventory_mariadb")


def test_a_dump_with_events_loads_where_the_scheduler_is_off(
    tmp_path: Path, leftovers: Callable[[str, str], str]
) -> None:
    dump = tmp_path / "inventory.sql"
    dump.write_text(EVENT_DUMP)
    target = leftovers("inventory_mariadb", f"test-{uuid.uuid4().hex}")
    mariadb.restore_logical(MARIA, target, dump, used_by="test", run_id=RUN_OF[target])
    from cloudops.connections import get_connection

    conn = get_connection(MARIA, "test")
    with maria_session._admin_session(
        conn, used_by="test", connect_timeout_seconds=10, what="events"
    ) as admin:
        assert maria_session._rows(admin, "SELECT @@GLOBAL.event_scheduler") == [("OFF",)]
        events = maria_session._rows(
            admin, "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s", target
        )
    assert events == [("purge_prod",)]
