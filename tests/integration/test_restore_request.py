"""restore_request's library steps against the sandbox's MariaDB (and PostgreSQL for its rename): every
restore stages first and takes the final name only after its checks; a failed one leaves nothing under
that name; two runs for one target are kept apart; an overwrite swaps only with a second person's
approval; a swap whose end is unknown keeps its staging copy."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cloudops.errors import CloudOpsError, InvalidInputError, RestoreRefused
from cloudops.runbooks.backup import take_backup
from tests.integration.estates import private_estate

pytestmark = pytest.mark.integration

DATABASE = "inventory_mariadb"
# Existing databases the tests restore over: the catalog lists each with allow_restore_over (an
# unlisted database on a primary's server can never be overwritten).
OVERWRITTEN = [f"existing_{uuid.uuid4().hex[:6]}" for _ in range(3)]
_UNUSED = iter(OVERWRITTEN[1:])


def maria(sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import pymysql

    conn = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_MARIADB"])
    session = pymysql.connect(
        host=conn["host"], port=conn["port"], user=conn["login"], password=conn["password"], autocommit=True
    )
    try:
        cursor = session.cursor()
        cursor.execute(sql, args or None)
        return list(cursor.fetchall())
    finally:
        session.close()


def exists(name: str) -> bool:
    return bool(maria("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", name))


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, sandbox_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """inventory_mariadb backed up once into a bucket of this module's own; an evidence folder of its own."""
    base = tmp_path_factory.mktemp("restore-request")
    source = {
        "name": DATABASE,
        "engine": "mariadb",
        "conn_id": "sandbox_mariadb",
        "database": "inventory",
        "backup": {"repository": "r", "retention": {"keep_last": 3}},
    }
    listed = [
        {
            "name": f"target_{index}",
            "engine": "mariadb",
            "conn_id": "sandbox_mariadb",
            "database": name,
            "allow_restore_over": True,
        }
        for index, name in enumerate(OVERWRITTEN)
    ]
    with pytest.MonkeyPatch.context() as patch, private_estate(base, "rr", [source, *listed]) as made:
        patch.setenv("CLOUDOPS_EVIDENCE_DIR", str(base / "evidence"))
        patch.setenv("CLOUDOPS_CATALOG", made.file)
        backup_id = take_backup(made.file, made.estate, DATABASE)["backup_id"]
        yield {
            "file": made.file,
            "estate": made.estate,
            "backup_id": backup_id,
            "evidence": base / "evidence",
        }


@pytest.fixture
def target() -> Iterator[str]:
    name = f"restored_{uuid.uuid4().hex[:6]}"
    yield name
    for leftover in [
        name,
        *(row[0] for row in maria("SHOW DATABASES LIKE %s", f"drill\\_restore\\_{name}\\_%")),
    ]:
        maria(f"DROP DATABASE IF EXISTS `{leftover}`")


def request_for(estate: dict[str, Any], target: str, *, overwrite: bool = False) -> Any:
    from cloudops.catalog import load_catalogs
    from cloudops.runbooks.restore_request import check_request

    return check_request(
        load_catalogs([estate["file"]]), database=DATABASE, target=target, confirm_overwrite=overwrite
    )


def test_a_new_database_is_staged_checked_then_renamed(estate: dict[str, Any], target: str) -> None:
    from cloudops.runbooks.restore_request import (
        drop_staging,
        put_in_place,
        restore_backup,
        restored_into,
        verify_restore,
    )

    request = request_for(estate, target)
    restored = restore_backup(request, run_id="manual__new")
    staging = restored["restored_into"]
    assert staging.startswith(f"drill_restore_{target}_")
    assert exists(staging)
    assert not exists(target), "nothing carries the final name before the checks"
    assert verify_restore(request, estate["backup_id"], restored=staging)["checks"] >= 3

    announced: list[str] = []
    placed = put_in_place(
        request, run_id="manual__new", approval=None, requested_by=None, announce=announced.append
    )

    assert placed == {"target": target, "replaced": False, "kept_as": None}
    assert announced == [staging]
    assert not exists(staging)
    assert verify_restore(request, estate["backup_id"])["checks"] >= 3, "the target holds the backup"
    assert drop_staging(request, "manual__new") is False, "nothing is left to drop"
    # a second restore into the now existing name is refused before anything is downloaded
    with pytest.raises(InvalidInputError, match=f"target_database: '{target}' exists on sandbox_mariadb"):
        restore_backup(request, run_id="manual__again")
    assert not exists(restored_into(request, "manual__again"))


def test_a_failed_restore_leaves_nothing_under_the_final_name_and_a_retry_is_not_refused(
    estate: dict[str, Any], target: str
) -> None:
    from cloudops.runbooks.restore_request import drop_staging, put_in_place, restore_backup, verify_restore

    request = request_for(estate, target)
    staging = restore_backup(request, run_id="manual__failed")["restored_into"]
    (table,) = maria(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME NOT IN "
        "(SELECT REFERENCED_TABLE_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS "
        "WHERE CONSTRAINT_SCHEMA = %s) ORDER BY TABLE_NAME LIMIT 1",
        staging,
        staging,
    )[0]
    maria(f"DELETE FROM `{staging}`.`{table}` LIMIT 1")  # the copy now differs from the backup
    with pytest.raises(CloudOpsError, match=f"restored {staging} differs from backup"):
        verify_restore(request, estate["backup_id"], restored=staging)
    assert drop_staging(request, "manual__failed") is True  # the teardown
    assert not exists(target)
    assert not exists(staging)

    staging = restore_backup(request, run_id="manual__retry")["restored_into"]
    verify_restore(request, estate["backup_id"], restored=staging)
    put_in_place(request, run_id="manual__retry", approval=None, requested_by=None)
    assert exists(target)


def test_two_runs_for_one_target_are_kept_apart(estate: dict[str, Any], target: str) -> None:
    from cloudops.runbooks.restore_request import drop_staging, put_in_place, restore_backup

    request = request_for(estate, target)
    first = restore_backup(request, run_id="manual__first")["restored_into"]
    with pytest.raises(RestoreRefused) as refused:
        restore_backup(request, run_id="manual__second")
    assert f"another restore into '{target}' on sandbox_mariadb is under way or was left behind" in str(
        refused.value
    )
    assert first in str(refused.value)
    # the swap checks again: another run's copy (marked, as cloudops makes them) that appeared
    # meanwhile stops it, and nothing is renamed
    from cloudops.engines.scratch import scratch_marker, scratch_name
    from cloudops.runbooks.restore_request import staging_stem

    other = scratch_name(staging_stem(target), "manual__third")
    maria(f"CREATE DATABASE `{other}` COMMENT %s", scratch_marker(other, "manual__third"))
    try:
        with pytest.raises(RestoreRefused, match="is under way or was left behind"):
            put_in_place(request, run_id="manual__first", approval=None, requested_by=None)
        assert not exists(target)
    finally:
        maria(f"DROP DATABASE `{other}`")
    assert drop_staging(request, "manual__first")
    second = restore_backup(request, run_id="manual__second")["restored_into"]
    assert second != first


@pytest.fixture
def existing() -> Iterator[str]:
    name = next(_UNUSED)
    maria(f"CREATE DATABASE `{name}`")
    maria(f"CREATE TABLE `{name}`.`old_only` (id INT PRIMARY KEY)")
    maria(f"INSERT INTO `{name}`.`old_only` VALUES (1), (2)")
    yield name
    for leftover in maria("SHOW DATABASES LIKE %s", f"{name}%") + maria(
        "SHOW DATABASES LIKE %s", f"drill\\_restore\\_{name}\\_%"
    ):
        maria(f"DROP DATABASE IF EXISTS `{leftover[0]}`")


def test_an_approved_overwrite_swaps_and_keeps_the_old_database(
    estate: dict[str, Any], existing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudops.runbooks.approval import Approval
    from cloudops.runbooks.restore_request import drop_staging, put_in_place, restore_backup, verify_restore

    monkeypatch.setenv(
        "AIRFLOW__CORE__AUTH_MANAGER",
        "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
    )
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "alice:user,bob:user")
    request = request_for(estate, existing, overwrite=True)
    staging = restore_backup(request, run_id="manual__overwrite")["restored_into"]
    assert maria(f"SELECT COUNT(*) FROM `{existing}`.`old_only`") == [(2,)], "untouched before the swap"
    verify_restore(request, estate["backup_id"], restored=staging)
    own = Approval("manual__overwrite", "Approve", "alice", "alice", requested_by="alice")
    with pytest.raises(CloudOpsError, match="alice triggered this run and cannot approve it"):
        put_in_place(request, run_id="manual__overwrite", approval=own, requested_by="alice")
    assert maria(f"SELECT COUNT(*) FROM `{existing}`.`old_only`") == [(2,)]

    bob = Approval("manual__overwrite", "Approve", "bob", "bob", requested_by="alice")
    placed = put_in_place(request, run_id="manual__overwrite", approval=bob, requested_by="alice")

    assert placed["replaced"]
    kept = placed["kept_as"]
    assert kept.startswith(f"{existing}_before_")
    assert maria(f"SELECT COUNT(*) FROM `{kept}`.`old_only`") == [(2,)], "the old data is kept"
    assert verify_restore(request, estate["backup_id"])["checks"] >= 3
    assert not exists(staging)
    assert drop_staging(request, "manual__overwrite") is False


class TeardownInstance:
    """The part of Airflow's task instance the teardown reads: the XComs its steps left."""

    dag_id, task_id = "restore_request", "drop_staging"

    def __init__(self, xcoms: dict[tuple[str, str], Any]) -> None:
        self.xcoms = xcoms

    def xcom_pull(self, *, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_ids, key))


class Requested:
    triggering_user_name = "alice"


def teardown_context(run_id: str, xcoms: dict[tuple[str, str], Any], request: Any) -> dict[str, Any]:
    params = {
        "database": request.database,
        "backup_id": request.backup_id,
        "target_database": request.target,
        "confirm_overwrite": request.overwrite,
    }
    return {"run_id": run_id, "ti": TeardownInstance(xcoms), "dag_run": Requested(), "params": params}


def test_the_teardown_keeps_a_staging_copy_whose_swap_did_not_report_its_end(
    estate: dict[str, Any], existing: str
) -> None:
    from cloudops.evidence.facts import latest_fact
    from cloudops.evidence.ledger import Ledger
    from cloudops.evidence.runs import RESTORE_PERFORMED
    from cloudops.runbooks.restore_request import SWAP_STARTED, _drop_staging_task, restore_backup

    request = request_for(estate, existing, overwrite=True)
    staging = restore_backup(request, run_id="manual__lost")["restored_into"]
    checked = {("check_request", "return_value"): request.__dict__}

    # put_in_place started renaming (its announcement is there) and never returned: keep the copy
    _drop_staging_task(
        **teardown_context("manual__lost", {**checked, ("put_in_place", SWAP_STARTED): staging}, request)
    )
    assert exists(staging), "a staging copy whose swap may be half done is never dropped"
    kept = latest_fact(
        RESTORE_PERFORMED, {"outcome": "unknown"}, ledger=Ledger(estate["evidence"] / "ledger")
    )
    assert kept is not None
    assert kept.fields["data"]["staging_kept"] == staging
    assert kept.fields["data"]["target_database"] == existing

    # no swap started (refused, rejected, or the step was marked success by hand): dropped
    _drop_staging_task(**teardown_context("manual__lost", checked, request))
    assert not exists(staging)
    assert maria(f"SELECT COUNT(*) FROM `{existing}`.`old_only`") == [(2,)]


def test_a_postgres_staging_copy_takes_a_new_name_and_never_an_existing_one(
    sandbox_env: dict[str, str],
) -> None:
    import psycopg

    from cloudops.engines import postgres
    from cloudops.engines.scratch import scratch_name

    conn = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_PG_PRIMARY"])
    suffix = uuid.uuid4().hex[:6]
    staging, target, taken = (
        scratch_name(f"restore_pg_{suffix}", "r"),
        f"pg_new_{suffix}",
        f"pg_taken_{suffix}",
    )
    with psycopg.connect(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        password=conn["password"],
        dbname="postgres",
        autocommit=True,
    ) as admin:
        try:
            for name in (staging, taken):
                admin.execute(f'CREATE DATABASE "{name}"')
            with pytest.raises(
                RestoreRefused, match=f"database '{taken}' exists on .*: a restore into a new"
            ):
                postgres.rename_into_new("sandbox_pg_primary", staging, taken, used_by="test")
            assert postgres.database_exists("sandbox_pg_primary", staging, used_by="test")
            postgres.rename_into_new("sandbox_pg_primary", staging, target, used_by="test")
            assert postgres.database_exists("sandbox_pg_primary", target, used_by="test")
            assert not postgres.database_exists("sandbox_pg_primary", staging, used_by="test")
            with pytest.raises(RestoreRefused, match="refusing to rename into place database"):
                postgres.rename_into_new("sandbox_pg_primary", taken, f"{target}_x", used_by="test")
        finally:
            for name in (staging, target, taken):
                admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_cloudops_restore_stages_then_renames_and_refuses_overwrites(
    estate: dict[str, Any], target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloudops.cli import EXIT_INVALID, main
    from cloudops.evidence.facts import latest_fact
    from cloudops.evidence.ledger import Ledger
    from cloudops.evidence.runs import RESTORE_PERFORMED

    assert main(["restore", DATABASE, "--target", target]) == 0
    assert f"into {target} in" in capsys.readouterr().out
    assert exists(target)
    fact = latest_fact(
        RESTORE_PERFORMED, {"target_database": target}, ledger=Ledger(estate["evidence"] / "ledger")
    )
    assert fact is not None, "a shell restore is in the ledger too"
    assert (fact.fields["data"]["via"], fact.fields["data"]["backup_id"]) == (
        "cloudops restore",
        estate["backup_id"],
    )
    assert maria("SHOW DATABASES LIKE %s", f"drill\\_restore\\_{target}\\_%") == [], "no staging copy is left"
    assert main(["restore", DATABASE, "--target", target]) == EXIT_INVALID
    assert f"error: target_database: '{target}' exists on sandbox_mariadb" in capsys.readouterr().err
    # an overwrite the catalog allows is still refused from a shell: nobody approves it there
    assert main(["restore", DATABASE, "--target", OVERWRITTEN[0], "--confirm-overwrite"]) == EXIT_INVALID
    assert "error: --confirm-overwrite: a restore over an existing database needs a second person" in (
        capsys.readouterr().err
    )
    assert maria("SHOW DATABASES LIKE %s", f"drill\\_restore\\_{OVERWRITTEN[0]}\\_%") == []


def test_a_mariadb_staging_copy_moves_whole_or_not_at_all(sandbox_env: dict[str, str]) -> None:
    from cloudops.engines import mariadb
    from cloudops.engines.scratch import scratch_name

    suffix = uuid.uuid4().hex[:6]
    staging, target, taken = scratch_name(f"restore_m_{suffix}", "r"), f"m_new_{suffix}", f"m_taken_{suffix}"
    try:
        for name in (staging, taken):
            maria(f"CREATE DATABASE `{name}` CHARACTER SET latin1 COLLATE latin1_swedish_ci")
        maria(f"CREATE TABLE `{staging}`.`t` (id INT PRIMARY KEY)")
        maria(f"INSERT INTO `{staging}`.`t` VALUES (1)")
        maria(f"CREATE VIEW `{staging}`.`v` AS SELECT id FROM `{staging}`.`t`")
        with pytest.raises(RestoreRefused, match=r"holds objects RENAME TABLE cannot move \(view v\)"):
            mariadb.rename_into_new("sandbox_mariadb", staging, target, used_by="test")
        assert not exists(target), "nothing is created before the checks pass"
        maria(f"DROP VIEW `{staging}`.`v`")
        with pytest.raises(RestoreRefused, match=f"database '{taken}' exists on .*: a restore into a new"):
            mariadb.rename_into_new("sandbox_mariadb", staging, taken, used_by="test")

        mariadb.rename_into_new("sandbox_mariadb", staging, target, used_by="test")

        assert not exists(staging)
        assert maria(f"SELECT id FROM `{target}`.`t`") == [(1,)]
        assert maria(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
            "WHERE SCHEMA_NAME = %s",
            target,
        ) == [("latin1", "latin1_swedish_ci")], "the new database keeps the restored copy's character set"
    finally:
        for name in (staging, target, taken):
            maria(f"DROP DATABASE IF EXISTS `{name}`")
