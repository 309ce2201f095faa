"""restore_drill__<database>'s steps against the sandbox: a drill that passes, one that must fail on a
damaged backup before restoring anything, the cleanup of a drill killed half-way (only what cloudops
created and marked), and where the copy lands: the scratch server, never the primary (restore_request's
steps are in test_restore_request.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudops.errors import CloudOpsError
from cloudops.runbooks.backup import open_repository, take_backup
from cloudops.runbooks.restore_drill import prepare, record_drill, restore, teardown, validate
from tests.integration.estates import private_estate, sandbox_s3

pytestmark = pytest.mark.integration

PRIMARY, SCRATCH = "sandbox_mariadb", "sandbox_mariadb_scratch"


@pytest.fixture
def estate(
    tmp_path: Path, sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """inventory_mariadb backed up into a bucket of this test's own, without Object Lock (tests alter it)."""
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path / "evidence"))
    database = {
        "name": "inventory_mariadb",
        "engine": "mariadb",
        "conn_id": "sandbox_mariadb",
        "database": "inventory",
        "rpo": "1d",
        "rto": "1h",
        "backup": {"repository": "r", "retention": {"keep_last": 3}},
        "drill": {"schedule": "on_backup", "scratch_conn_id": SCRATCH},
    }
    with private_estate(tmp_path, "dr", [database]) as made:
        yield {
            "file": made.file,
            "estate": made.estate,
            "bucket": made.bucket,
            "evidence": tmp_path / "evidence",
        }


def run_drill(estate: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The DAG's steps in its order, with its trigger rules: teardown and record always run."""
    args = (estate["file"], estate["estate"], "inventory_mariadb")
    prepared = prepare(*args, run_id=run_id, backup_id="latest")
    restored = validated = None
    try:
        restored = restore(*args, backup_id=prepared["backup_id"], scratch=prepared["scratch"], run_id=run_id)
        validated = validate(*args, backup_id=prepared["backup_id"], scratch=prepared["scratch"])
    except CloudOpsError as error:
        failure = str(error)
    else:
        failure = None
    finally:
        teardown(*args, scratch=prepared["scratch"])
    try:
        return {
            "result": record_drill(
                *args, run_id=run_id, prepared=prepared, restored=restored, validated=validated
            ),
            "failure": failure,
        }
    except CloudOpsError as error:
        return {"result": None, "failure": failure, "verdict": str(error)}


def scratch_databases(conn_id: str = SCRATCH) -> list[str]:
    from cloudops.engines import mariadb

    return mariadb.leftover_scratch_databases(conn_id, "inventory_mariadb")


def test_drill_passes_and_records_evidence(estate: dict[str, Any]) -> None:
    # Two backups: the record measures the gap between them from the repository listing.
    take_backup(estate["file"], estate["estate"], "inventory_mariadb")
    backup_id = take_backup(estate["file"], estate["estate"], "inventory_mariadb")["backup_id"]

    outcome = run_drill(estate, "manual__drill-pass")

    assert outcome["failure"] is None
    assert outcome["result"]["passed"]
    (local,) = (estate["evidence"] / "drills").rglob("*.json")
    record = json.loads(local.read_text())
    assert record["backup_id"] == backup_id
    assert record["checks"]
    assert all(check["passed"] for check in record["checks"])
    key = outcome["result"]["record"].removeprefix(f"s3://{estate['bucket']}/")
    assert json.loads(sandbox_s3().get_object(Bucket=estate["bucket"], Key=key)["Body"].read()) == record
    assert scratch_databases() == []
    from cloudops.evidence.ledger import Ledger, verify_ledger

    ledger = Ledger(estate["evidence"] / "ledger")
    assert verify_ledger(ledger).ok
    (fact,) = [r for r in ledger.records() if r.kind == "drill.recorded"]
    assert fact.fields["run_id"] == "manual__drill-pass"
    assert fact.fields["data"]["backup_id"] == backup_id
    assert fact.fields["data"]["passed"] is True
    assert fact.fields["data"]["checksums_verified"] is True
    assert fact.fields["data"]["record_uri"] == outcome["result"]["record"]
    from cloudops.catalog import load_catalog_file

    catalog = load_catalog_file(estate["file"])
    newer, older = open_repository(catalog, catalog.database("inventory_mariadb")).list_backups(
        "inventory_mariadb"
    )
    assert newer.complete, "the drill record must not make a backup look incomplete"
    assert older.complete
    assert record["complete_backups_in_window"] == 2
    assert record["largest_backup_gap_seconds"] == round((newer.time - older.time).total_seconds(), 3)
    assert record["rpo_seconds"] == max(record["backup_age_seconds"], record["largest_backup_gap_seconds"])


def test_flipped_byte_fails_before_any_restore_and_teardown_still_runs(estate: dict[str, Any]) -> None:
    manifest = take_backup(estate["file"], estate["estate"], "inventory_mariadb")
    key = manifest["objects"][0]["key"]
    data = bytearray(sandbox_s3().get_object(Bucket=estate["bucket"], Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    sandbox_s3().put_object(Bucket=estate["bucket"], Key=key, Body=bytes(data))

    outcome = run_drill(estate, "manual__drill-flip")

    assert manifest["objects"][0]["name"] in outcome["failure"]
    assert "sha256" in outcome["failure"].lower() or "SHA-256" in outcome["failure"]
    assert "failed" in outcome["verdict"]
    assert scratch_databases() == [], "nothing was restored, and nothing is left"


def test_next_drill_drops_what_a_killed_drill_left(estate: dict[str, Any]) -> None:
    take_backup(estate["file"], estate["estate"], "inventory_mariadb")
    args = (estate["file"], estate["estate"], "inventory_mariadb")
    killed = prepare(*args, run_id="manual__killed", backup_id="latest")
    restore(*args, backup_id=killed["backup_id"], scratch=killed["scratch"], run_id="manual__killed")
    assert scratch_databases() == [killed["scratch"]]

    outcome = run_drill(estate, "manual__after-kill")

    assert outcome["result"]["passed"]
    assert scratch_databases() == []


def _run_sql(conn_id: str, query: str, *args: str) -> list[tuple[Any, ...]]:
    import os

    import pymysql

    c = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])
    with (
        pymysql.connect(
            host=c["host"], port=c["port"], user=c["login"], password=c["password"], autocommit=True
        ) as session,
        session.cursor() as cursor,
    ):
        cursor.execute(query, args or None)
        return list(cursor.fetchall())


def _databases(conn_id: str) -> set[str]:
    return {row[0] for row in _run_sql(conn_id, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")}


def test_the_drill_restores_on_the_scratch_server_and_the_primary_never_holds_a_copy(
    estate: dict[str, Any],
) -> None:
    take_backup(estate["file"], estate["estate"], "inventory_mariadb")
    # The primary's binary log records every CREATE DATABASE: read it from here on afterwards.
    ((binlog, position, *_),) = _run_sql(PRIMARY, "SHOW MASTER STATUS")
    args, run_id = (estate["file"], estate["estate"], "inventory_mariadb"), "manual__where-it-lands"
    prepared = prepare(*args, run_id=run_id, backup_id="latest")
    scratch = prepared["scratch"]
    try:
        restore(*args, backup_id=prepared["backup_id"], scratch=scratch, run_id=run_id)
        assert scratch in _databases(SCRATCH)
        assert not {name for name in _databases(PRIMARY) if name.startswith("drill_")}
        validate(*args, backup_id=prepared["backup_id"], scratch=scratch)
    finally:
        teardown(*args, scratch=scratch)
    assert scratch not in _databases(SCRATCH)
    events = _run_sql(PRIMARY, f"SHOW BINLOG EVENTS IN '{binlog}' FROM {int(position)}")
    assert not [event for event in events if "drill_" in str(event[-1])], (
        "the primary never held a drill copy"
    )


def test_prepare_cleans_marked_leftovers_and_never_a_database_it_did_not_create(
    estate: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from cloudops.engines import mariadb
    from cloudops.errors import RestoreRefused

    take_backup(estate["file"], estate["estate"], "inventory_mariadb")
    args = (estate["file"], estate["estate"], "inventory_mariadb")
    killed = prepare(*args, run_id="manual__killed-marked", backup_id="latest")
    restore(*args, backup_id=killed["backup_id"], scratch=killed["scratch"], run_id="manual__killed-marked")
    # Made by hand: scratch-shaped names (ten digits are hex), no cloudops marker.
    by_hand = ["drill_inventory_mariadb_2024010112", "drill_logs_2024010112"]
    for name in by_hand:
        _run_sql(SCRATCH, f"CREATE DATABASE IF NOT EXISTS `{name}`")
    try:
        with caplog.at_level("INFO"):
            prepare(*args, run_id="manual__after-kill-marked", backup_id="latest")
        assert killed["scratch"] not in _databases(SCRATCH), "the marked leftover is cleaned"
        assert set(by_hand) <= _databases(SCRATCH), "what cloudops did not create survives"
        assert "leaving database 'drill_inventory_mariadb_2024010112'" in caplog.text
        assert "carries no cloudops marker" in caplog.text
        caplog.clear()
        with caplog.at_level("WARNING"), pytest.raises(RestoreRefused, match="carries no cloudops marker"):
            teardown(*args, scratch="drill_inventory_mariadb_2024010112")
        assert "not dropping database 'drill_inventory_mariadb_2024010112'" in caplog.text
        with pytest.raises(RestoreRefused, match="refusing to drop database 'drill_logs_2024010112'"):
            mariadb.drop_database(SCRATCH, "drill_logs_2024010112", used_by="test")
        assert set(by_hand) <= _databases(SCRATCH)
    finally:
        for name in by_hand:
            _run_sql(SCRATCH, f"DROP DATABASE IF EXISTS `{name}`")


def test_a_drill_without_a_scratch_server_is_refused_with_one_clear_message(estate: dict[str, Any]) -> None:
    from cloudops.catalog import CatalogError

    document = yaml.safe_load(Path(estate["file"]).read_text())
    document["databases"][0]["drill"] = {"schedule": "on_backup"}
    Path(estate["file"]).write_text(yaml.safe_dump(document))
    with pytest.raises(CatalogError) as caught:
        prepare(
            estate["file"], estate["estate"], "inventory_mariadb", run_id="manual__none", backup_id="latest"
        )
    (issue,) = caught.value.issues
    assert issue.file == estate["file"]
    assert issue.line is not None
    assert issue.field == "databases[0].drill.scratch_conn_id"
    assert "a drill needs a scratch_conn_id" in issue.message


def test_a_primary_as_scratch_server_is_refused_unless_every_catalog_allows_it(
    estate: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudops.catalog import CatalogError

    take_backup(estate["file"], estate["estate"], "inventory_mariadb")
    path = Path(estate["file"])
    document = yaml.safe_load(path.read_text())
    document["databases"][0]["drill"]["scratch_conn_id"] = PRIMARY
    path.write_text(yaml.safe_dump(document))
    args = (estate["file"], estate["estate"], "inventory_mariadb")
    with pytest.raises(CatalogError, match="scratch_conn_id 'sandbox_mariadb' is the connection of primary"):
        prepare(*args, run_id="manual__on-primary", backup_id="latest")
    document["databases"][0]["scratch_allowed"] = True
    path.write_text(yaml.safe_dump(document))
    # This file allows it; runbooks/sandbox.yaml, loaded with it, has a primary there that does not.
    with pytest.raises(CatalogError) as caught:
        prepare(*args, run_id="manual__on-primary", backup_id="latest")
    (issue,) = caught.value.issues
    assert "sandbox.yaml databases[2]" in issue.message
    monkeypatch.setenv("CLOUDOPS_CATALOG", estate["file"])
    assert prepare(*args, run_id="manual__on-primary", backup_id="latest")["scratch"]


def test_a_second_connection_id_for_a_primary_is_refused_as_scratch_server(
    estate: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from cloudops.errors import InvalidInputError

    take_backup(estate["file"], estate["estate"], "inventory_mariadb")
    # Another id, the primary's host and port: the catalog sees two names, the drill one server.
    monkeypatch.setenv("AIRFLOW_CONN_INVENTORY_COPY_TARGET", os.environ["AIRFLOW_CONN_SANDBOX_MARIADB"])
    path = Path(estate["file"])
    document = yaml.safe_load(path.read_text())
    document["databases"][0]["drill"]["scratch_conn_id"] = "inventory_copy_target"
    path.write_text(yaml.safe_dump(document))
    port = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_MARIADB"])["port"]
    with pytest.raises(InvalidInputError) as caught:
        prepare(
            estate["file"], estate["estate"], "inventory_mariadb", run_id="manual__alias", backup_id="latest"
        )
    assert f"connection 'inventory_copy_target' reaches loopback:{port}, the server of primary" in str(
        caught.value
    )
    assert "(connection 'sandbox_mariadb'" in str(caught.value)


def test_a_mariadb_scratch_server_running_its_event_scheduler_is_refused(estate: dict[str, Any]) -> None:
    from cloudops.errors import RestoreRefused

    take_backup(estate["file"], estate["estate"], "inventory_mariadb")
    args = (estate["file"], estate["estate"], "inventory_mariadb")
    _run_sql(SCRATCH, "SET GLOBAL event_scheduler = ON")
    try:
        with pytest.raises(
            RestoreRefused, match=r"event_scheduler is ON on 127\.0\.0\.1:.*set event_scheduler=OFF"
        ):
            prepare(*args, run_id="manual__events-on", backup_id="latest")
    finally:
        _run_sql(SCRATCH, "SET GLOBAL event_scheduler = OFF")
    assert _run_sql(SCRATCH, "SELECT @@GLOBAL.event_scheduler") == [("OFF",)]
