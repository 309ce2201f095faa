"""backup__<database>'s steps against the real sandbox: PostgreSQL and MariaDB into moto's S3, manifests
that match the database, retention with its safety rules, and failures that leave no backup behind."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudops.errors import CloudOpsError
from cloudops.repository.retention import RetentionRefused
from cloudops.runbooks.backup import apply_retention, open_repository, take_backup, verify_backup
from tests.integration.estates import private_estate

pytestmark = pytest.mark.integration


@pytest.fixture
def estate(
    tmp_path: Path, sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """A catalog of the sandbox's databases backing up into a bucket of this test's own; the facts
    (verifications, deletions) go into a ledger of its own."""
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path / "evidence"))
    backup = {"repository": "test_backups", "retention": {"keep_last": 2}}
    databases = [
        {
            "name": "orders",
            "engine": "postgres",
            "conn_id": "sandbox_pg_primary",
            "database": "orders",
            "backup": backup,
        },
        {
            "name": "orders_physical",
            "engine": "postgres",
            "conn_id": "sandbox_pg_primary",
            "database": "orders",
            "backup": {**backup, "method": "physical"},
        },
        {
            "name": "inventory",
            "engine": "mariadb",
            "conn_id": "sandbox_mariadb",
            "database": "inventory",
            "backup": backup,
        },
        {"name": "down", "engine": "postgres", "conn_id": "closed_pg", "database": "x", "backup": backup},
    ]
    with private_estate(tmp_path, "bk", databases, locked=True, repository="test_backups") as made:
        yield {
            "file": made.file,
            "estate": made.estate,
            "bucket": made.bucket,
            "document": made.document,
            "write": made.write,
        }


def direct_counts(tables: list[str]) -> dict[str, int]:
    import psycopg

    conn = json.loads(__import__("os").environ["AIRFLOW_CONN_SANDBOX_PG_PRIMARY"])
    with psycopg.connect(
        host=conn["host"], port=conn["port"], user=conn["login"], password=conn["password"], dbname="orders"
    ) as session:
        return {t: session.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}  # type: ignore[index]


def test_logical_postgres_backup_is_complete_and_matches_the_database(estate: dict[str, Any]) -> None:
    manifest = take_backup(estate["file"], estate["estate"], "orders", run_id="test-run-1")

    assert manifest["format"] == "pg_dump-custom"
    assert manifest["airflow_run_id"] == "test-run-1"
    assert manifest["row_counts"] == direct_counts(list(manifest["row_counts"]))
    assert sum(manifest["row_counts"].values()) >= 200_000
    assert len(manifest["schema_fingerprint"]) == 64
    assert manifest["raw_bytes"] > manifest["compressed_bytes"] > 0
    from cloudops.catalog import load_catalog_file

    catalog = load_catalog_file(estate["file"])
    store = open_repository(catalog, catalog.database("orders"))
    (listed,) = store.list_backups("orders")
    assert listed.complete
    assert listed.backup_id == manifest["backup_id"]
    assert store.verify_objects(listed.manifest).ok  # type: ignore[arg-type]
    assert "password" not in json.dumps(manifest).lower()


def test_physical_postgres_backup_records_its_wal_range(estate: dict[str, Any]) -> None:
    manifest = take_backup(estate["file"], estate["estate"], "orders_physical")
    assert manifest["format"] == "pg_basebackup-tar"
    assert manifest["method"] == "physical"
    assert {"lsn_start", "lsn_end"} <= set(manifest["position"])


def test_mariadb_backup_records_the_binlog_position(estate: dict[str, Any]) -> None:
    manifest = take_backup(estate["file"], estate["estate"], "inventory")
    assert manifest["format"] == "mariadb-dump-sql"
    assert {"binlog_file", "binlog_position"} <= set(manifest["position"])
    assert manifest["row_counts"]


def test_database_down_fails_clearly_and_lists_no_backup(
    estate: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOSED_PG",
        json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": port, "login": "x", "password": "y"}
        ),
    )
    with pytest.raises(CloudOpsError, match="database 'down'"):
        take_backup(estate["file"], estate["estate"], "down")
    from cloudops.catalog import load_catalog_file

    catalog = load_catalog_file(estate["file"])
    assert open_repository(catalog, catalog.database("down")).list_backups("down") == []


def test_retention_keeps_policy_and_refuses_large_deletes(estate: dict[str, Any]) -> None:
    ids = [take_backup(estate["file"], estate["estate"], "inventory")["backup_id"] for _ in range(4)]
    newest_first = list(reversed(ids))

    for backup_id in ids:  # as the DAG's verify_backup does after each take_backup
        verify_backup(estate["file"], estate["estate"], "inventory", backup_id=backup_id)

    dry = apply_retention(
        estate["file"], estate["estate"], "inventory", dry_run=True, allow_large_delete=False
    )
    assert dry["keep"] == newest_first[:2]
    assert dry["reasons"][newest_first[1]] == ["last 2"], "verified backups count toward the policy"
    assert dry["delete"] == newest_first[2:]
    assert dry["deleted"] == []

    estate["write"](
        databases=[
            {
                **estate["document"]["databases"][2],
                "backup": {"repository": "test_backups", "retention": {"keep_last": 1}},
            }
        ]
    )
    with pytest.raises(RetentionRefused, match="refusing to delete 3 of 4 backups"):
        apply_retention(
            estate["file"], estate["estate"], "inventory", dry_run=False, allow_large_delete=False
        )

    done = apply_retention(
        estate["file"], estate["estate"], "inventory", dry_run=False, allow_large_delete=True
    )
    assert done["deleted"] == newest_first[1:]
    from cloudops.catalog import load_catalog_file

    catalog = load_catalog_file(estate["file"])
    listed = open_repository(catalog, catalog.database("inventory")).list_backups("inventory")
    assert [b.backup_id for b in listed] == newest_first[:1]


def test_locked_backups_are_held_not_deleted(estate: dict[str, Any]) -> None:
    repository = {**estate["document"]["repositories"][0], "object_lock": {"mode": "GOVERNANCE", "days": 1}}
    inventory = {
        **estate["document"]["databases"][2],
        "backup": {"repository": "test_backups", "retention": {"keep_last": 1}, "max_delete_share": 1.0},
    }
    estate["write"](repositories=[repository], databases=[inventory])
    ids = [take_backup(estate["file"], estate["estate"], "inventory")["backup_id"] for _ in range(2)]

    plan = apply_retention(
        estate["file"], estate["estate"], "inventory", dry_run=False, allow_large_delete=False
    )

    assert plan["delete"] == []
    assert plan["keep"] == list(reversed(ids))
    assert plan["reasons"][ids[0]][0].startswith("locked until ")


def test_rds_snapshot_is_tagged_and_pruned_with_the_backups(estate: dict[str, Any]) -> None:
    from cloudops.clouds.aws import list_cloud_snapshots
    from cloudops.runbooks.backup import snapshot_rds

    orders = {**estate["document"]["databases"][0], "rds_instance_id": "orders-pg"}
    estate["write"](databases=[orders])
    backup_ids = []
    for _ in range(3):
        backup_id = take_backup(estate["file"], estate["estate"], "orders")["backup_id"]
        snapshot = snapshot_rds(estate["file"], estate["estate"], "orders", backup_id=backup_id)
        assert snapshot["status"] == "available"
        backup_ids.append(backup_id)

    plan = apply_retention(
        estate["file"], estate["estate"], "orders", dry_run=False, allow_large_delete=False
    )

    assert plan["rds_snapshots"]["keep"] == list(reversed(backup_ids))[:2]
    assert plan["rds_snapshots"]["delete"] == backup_ids[:1]
    from cloudops.evidence.ledger import Ledger

    ledger = Ledger(Path(estate["file"]).parent / "evidence" / "ledger")
    facts = [r.fields["data"] for r in ledger.records() if r.kind == "retention.deleted"]
    assert [(f["what"], f["backup_id"]) for f in facts] == [
        ("backup", backup_ids[0]),
        ("rds_snapshot", backup_ids[0]),
    ]
    assert facts[1]["deleted"] == plan["rds_snapshots"]["deleted"][0]
    assert facts[1]["instance_id"] == "orders-pg"
    left = list_cloud_snapshots("sandbox_aws", estate=estate["estate"], kind="rds", database="orders")
    assert sorted(s.backup_id for s in left) == sorted(backup_ids[1:])
    estate["write"](
        databases=[
            {
                **orders,
                "backup": {
                    "repository": "test_backups",
                    "retention": {"keep_last": 1},
                    "max_delete_share": 1.0,
                },
            }
        ]
    )
    apply_retention(estate["file"], estate["estate"], "orders", dry_run=False, allow_large_delete=False)
    (last,) = list_cloud_snapshots("sandbox_aws", estate=estate["estate"], kind="rds", database="orders")
    assert last.backup_id == backup_ids[-1]
    from cloudops.clouds.aws import delete_cloud_snapshot

    delete_cloud_snapshot("sandbox_aws", last, dry_run=False)


def test_missing_rds_instance_is_named(estate: dict[str, Any]) -> None:
    from cloudops.runbooks.backup import snapshot_rds

    estate["write"](databases=[{**estate["document"]["databases"][0], "rds_instance_id": "no-such-instance"}])
    with pytest.raises(CloudOpsError, match="no-such-instance"):
        snapshot_rds(estate["file"], estate["estate"], "orders", backup_id="20261123T000000Z-000000")
