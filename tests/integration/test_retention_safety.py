"""Retention's safety rules against the sandbox's S3, through the backup runbook's own steps.

Backups are planted with the repository library (a small object and a real manifest written by
``write_manifest``), so that twenty of them cost milliseconds; unreadable ones get a manifest that a
newer writer would write (``manifest_version`` 2). The ledger is the test's own evidence folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudops.evidence.ledger import Ledger
from cloudops.evidence.runs import BACKUP_VERIFIED, DRILL_RECORDED, RETENTION_DELETED
from cloudops.repository.retention import NEWEST_COMPLETE, NEWEST_DRILL_PASSED, NOT_KEPT, RetentionRefused
from cloudops.runbooks.backup import (
    BackupVerifyFailed,
    RetentionStopped,
    apply_retention,
    open_repository,
    verify_backup,
)
from tests.integration.estates import private_estate

pytestmark = pytest.mark.integration

DATABASE = "inventory"
RUN = {"dag_id": f"backup__{DATABASE}", "run_id": "retention-test-run"}


@dataclass
class Planted:
    """A private estate with one database whose backups the test plants, and the test's ledger."""

    file: str
    estate: str
    write: Any
    document: dict[str, Any]
    ledger_dir: Path

    @functools.cached_property
    def store(self) -> Any:
        """The repository, opened once: a boto3 client costs a good part of a second to build."""
        from cloudops.catalog import load_catalog_file

        catalog = load_catalog_file(self.file)
        return open_repository(catalog, catalog.database(DATABASE))

    def policy(self, retention: dict[str, Any], **backup: Any) -> None:
        """Rewrite the catalog with another retention policy (and backup policy fields)."""
        database = {
            **self.document["databases"][0],
            "backup": {"repository": "r", "retention": retention, **backup},
        }
        self.write(databases=[database])

    def plant(self, days_ago: float, *, unreadable: bool = False) -> str:
        """Store one backup taken ``days_ago``; with ``unreadable`` its manifest is a newer version's."""
        from cloudops.repository.layout import new_backup_id
        from cloudops.repository.manifest import Compression, Manifest, ManifestEncryption, ManifestObject
        from cloudops.repository.pipeline import upload_bytes

        store = self.store
        started = datetime.now(UTC) - timedelta(days=days_ago)
        backup_id = new_backup_id(started)
        data = f"backup {backup_id} {uuid.uuid4().hex}".encode()
        key = store.object_key(DATABASE, backup_id, "dump.sql.zst")
        upload_bytes(store.client, store.bucket, key, data)
        manifest = Manifest(
            backup_id=backup_id,
            estate=self.estate,
            database=DATABASE,
            engine="mariadb",
            engine_version="10.11",
            method="logical",
            format="mariadb-dump",
            started_at=started,
            finished_at=started + timedelta(seconds=1),
            raw_bytes=len(data),
            compressed_bytes=len(data),
            objects=[
                ManifestObject(
                    name="dump.sql.zst",
                    key=key,
                    size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    raw_bytes=len(data),
                )
            ],
            compression=Compression(level=3),
            encryption=ManifestEncryption(mode="sse-s3"),
            tags=["logical"],
        )
        if not unreadable:
            store.write_manifest(manifest)
            return backup_id
        newer = {**json.loads(manifest.model_dump_json()), "manifest_version": 2, "signature": "v2"}
        upload_bytes(
            store.client, store.bucket, store.manifest_key(DATABASE, backup_id), json.dumps(newer).encode()
        )
        return backup_id

    def verify(self, backup_id: str) -> dict[str, Any]:
        return verify_backup(self.file, self.estate, DATABASE, backup_id=backup_id, evidence=RUN)

    def retention(self, **options: Any) -> dict[str, Any]:
        return apply_retention(
            self.file,
            self.estate,
            DATABASE,
            dry_run=options.pop("dry_run", False),
            allow_large_delete=options.pop("allow_large_delete", False),
            evidence=RUN,
            **options,
        )

    def listed(self) -> list[str]:
        return [backup.backup_id for backup in self.store.list_backups(DATABASE)]

    def facts(self, kind: str) -> list[dict[str, Any]]:
        records = Ledger(self.ledger_dir).records()
        return [record.fields for record in records if record.kind == kind]


@pytest.fixture
def planted(
    tmp_path: Path, sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Planted]:
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path / "evidence"))
    databases = [
        {
            "name": DATABASE,
            "engine": "mariadb",
            "conn_id": "sandbox_mariadb",
            "database": "inventory",
            "backup": {"repository": "r", "retention": {"keep_last": 3}},
        }
    ]
    with private_estate(tmp_path, "ret", databases) as made:
        yield Planted(made.file, made.estate, made.write, made.document, tmp_path / "evidence" / "ledger")


def test_twenty_backups_with_many_unreadable_manifests_delete_nothing(planted: Planted) -> None:
    # A mixed-version rollout: 12 of 20 manifests are a newer version's. Nothing is deleted, the run
    # says why and fails, and every backup is still there.
    complete = [planted.plant(days_ago=day + 1) for day in range(8)]
    unreadable = [planted.plant(days_ago=day + 10, unreadable=True) for day in range(12)]

    with pytest.raises(RetentionStopped) as stopped:
        planted.retention()

    assert "12 of 20 backups are incomplete or unreadable and due for cleanup" in str(stopped.value)
    assert "allows in one run (10)" in str(stopped.value)
    assert sorted(planted.listed()) == sorted(complete + unreadable)
    assert planted.facts(RETENTION_DELETED) == []


def test_twenty_backups_with_some_unreadable_manifests_delete_at_most_the_cap(
    planted: Planted, caplog: pytest.LogCaptureFixture
) -> None:
    # Verification is beside the point here (the tests below cover it): none is verified, so what
    # keep_last would keep is held rather than counted, and the same backups go.
    complete = [planted.plant(days_ago=day + 1) for day in range(12)]
    unreadable = [planted.plant(days_ago=day + 20, unreadable=True) for day in range(8)]
    # keep_last 9 deletes 3 complete and 8 unreadable: 11 of 20 is over the cap of 10.
    planted.policy({"keep_last": 9})
    with pytest.raises(RetentionRefused, match=r"refusing to delete 11 of 20 backups in one run \(8 of them"):
        planted.retention()
    assert len(planted.listed()) == 20
    # The refused plan is in the log, every backup with its decision and reasons, for the review.
    (logged,) = [r.getMessage() for r in caplog.records if "REFUSED" in r.getMessage()]
    assert logged.startswith("retention plan for inventory (9 keep, 9 of them held, 11 delete, REFUSED):")
    assert all(backup_id in logged for backup_id in complete + unreadable)

    planted.policy({"keep_last": 10})
    done = planted.retention()

    newest_first = sorted(complete, reverse=True)  # backup ids sort in time order
    assert done["deleted"] == [*newest_first[10:], *sorted(unreadable, reverse=True)]
    assert sorted(planted.listed()) == sorted(newest_first[:10])
    facts = planted.facts(RETENTION_DELETED)
    assert [fact["data"]["backup_id"] for fact in facts] == done["deleted"]
    first = facts[0]
    assert (first["dag_id"], first["run_id"]) == (RUN["dag_id"], RUN["run_id"])
    assert first["data"]["what"] == "backup"
    assert first["data"]["reasons"] == [NOT_KEPT]
    assert first["data"]["proof"] == "unverified"
    assert first["data"]["policy"] == {"keep_last": 10}
    assert first["data"]["max_delete_share"] == 0.5
    assert first["data"]["deleted"][0].endswith("/manifest.json"), "the manifest goes first"
    assert facts[-1]["data"]["reasons"] == ["incomplete, older than grace period (1d)"]


def test_verified_backups_whose_manifests_stop_reading_are_never_cleaned_up(planted: Planted) -> None:
    # A stricter manifest check after an upgrade: backups the ledger saw verified now read as
    # incomplete. Even a reviewed large delete leaves them; only a never-proven leftover goes.
    from cloudops.repository.pipeline import upload_bytes

    verified = [planted.plant(days_ago=days) for days in (4, 3, 2)]
    for backup_id in verified:
        planted.verify(backup_id)
    leftover = planted.plant(days_ago=5, unreadable=True)
    store = planted.store
    for backup_id in verified[:2]:
        upload_bytes(
            store.client, store.bucket, store.manifest_key(DATABASE, backup_id), b'{"manifest_version": 2}'
        )

    plan = planted.retention(allow_large_delete=True)

    assert plan["deleted"] == [leftover]
    for backup_id in verified[:2]:
        assert plan["reasons"][backup_id][0].startswith("verified, yet incomplete now: held for review")
    assert sorted(planted.listed()) == sorted(verified)


def test_a_backup_not_yet_verified_does_not_count_toward_keep_last(planted: Planted) -> None:
    oldest, verified, newest = (planted.plant(days_ago=days) for days in (3, 2, 1))
    planted.verify(oldest)
    planted.verify(verified)
    planted.policy({"keep_last": 1}, max_delete_share=1.0)

    plan = planted.retention()

    # Not counting the unverified newest backup, keep_last 1 keeps the newest verified one.
    assert plan["keep"] == [newest, verified]
    assert plan["reasons"][newest] == [
        NEWEST_COMPLETE,
        "not verified yet: it does not count toward the policy",
    ]
    assert plan["reasons"][verified] == ["last 1"]
    assert plan["deleted"] == [oldest]
    assert [fact["data"]["ok"] for fact in planted.facts(BACKUP_VERIFIED)] == [True, True]


def test_a_failed_drill_backup_is_held_and_the_newest_drill_passed_one_is_kept(planted: Planted) -> None:
    from cloudops.evidence.recorder import record

    ids = [planted.plant(days_ago=days) for days in (5, 4, 3, 2, 1)]
    oldest, drilled, middle, failed, newest = ids
    for backup_id in ids:
        planted.verify(backup_id)
    for backup_id, passed in ((drilled, True), (failed, False)):
        # What restore_drill's record step writes (only the fields retention reads matter here).
        record(
            DRILL_RECORDED,
            dag_id=f"restore_drill__{DATABASE}",
            run_id=f"drill-of-{backup_id}",
            data={
                "estate": planted.estate,
                "database": DATABASE,
                "backup_id": backup_id,
                "passed": passed,
                "error": None,
                "checks": [{"name": "row_counts", "passed": passed}],
            },
        )
    planted.policy({"keep_last": 1}, max_delete_share=1.0)

    plan = planted.retention()

    assert plan["keep"] == [newest, failed, drilled]
    assert plan["reasons"][newest] == ["last 1"]
    (why,) = plan["reasons"][failed]
    assert why.startswith(f"its restore drill failed (drill run drill-of-{failed} at ")
    assert why.endswith(": failed checks: row_counts): held for review, neither counted nor deleted")
    assert plan["reasons"][drilled] == [NEWEST_DRILL_PASSED]
    assert plan["held"] == [failed, drilled]
    assert sorted(plan["deleted"]) == sorted([middle, oldest])
    assert sorted(planted.listed()) == sorted([newest, failed, drilled])


def test_verification_reads_the_objects_back_and_a_changed_one_is_held(planted: Planted) -> None:
    from cloudops.repository.pipeline import upload_bytes

    older, changed = planted.plant(days_ago=2), planted.plant(days_ago=1)
    assert planted.verify(older)["ok"] is True
    store = planted.store
    key = store.object_key(DATABASE, changed, "dump.sql.zst")
    size = store.read_manifest(DATABASE, changed).objects[0].size
    upload_bytes(store.client, store.bucket, key, b"x" * size)  # same size, other bytes

    with pytest.raises(
        BackupVerifyFailed, match=f"backup {changed} of {DATABASE} failed verification: .*SHA-256"
    ):
        planted.verify(changed)
    planted.policy({"keep_last": 1}, max_delete_share=1.0)
    plan = planted.retention()

    facts = planted.facts(BACKUP_VERIFIED)
    assert [(f["data"]["backup_id"], f["data"]["ok"]) for f in facts] == [(older, True), (changed, False)]
    assert facts[1]["data"]["objects_checked"] == 1
    assert plan["keep"] == [changed, older]
    assert plan["reasons"][changed][0].startswith("its verification failed (at ")
    assert plan["reasons"][older] == ["last 1"]
    assert plan["deleted"] == []


def test_the_cli_records_its_backup_run_and_deletions_in_the_ledger(
    planted: Planted, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloudops.cli import main
    from cloudops.evidence.recorder import os_user

    old = planted.plant(days_ago=3)
    planted.verify(old)
    planted.policy({"keep_last": 1}, max_delete_share=1.0)
    monkeypatch.setenv("CLOUDOPS_CATALOG", str(Path(planted.file).parent))

    assert main(["backups", "run", DATABASE, "--retention"]) == 0, capsys.readouterr().err

    (new,) = set(planted.listed())
    assert new != old
    started, finished = planted.facts("run.started"), planted.facts("run.finished")
    assert len(started) == len(finished) == 1
    run_id = started[0]["run_id"]
    assert run_id.startswith("cli__")
    assert started[0]["dag_id"] == f"backup__{DATABASE}"
    assert started[0]["data"]["triggered_by"] == "cli"
    assert started[0]["data"]["triggered_by_user"] == os_user()
    assert started[0]["data"]["conf"] == {"database": DATABASE, "retention": True, "dry_run": False}
    assert finished[0]["data"]["state"] == "success"
    (taken,) = planted.facts("backup.taken")
    assert (taken["run_id"], taken["data"]["backup_id"], taken["triggered_by"]) == (run_id, new, "cli")
    verified = [f for f in planted.facts(BACKUP_VERIFIED) if f["run_id"] == run_id]
    assert [(f["data"]["backup_id"], f["data"]["ok"]) for f in verified] == [(new, True)]
    (deleted,) = planted.facts(RETENTION_DELETED)
    assert deleted["run_id"] == run_id
    assert deleted["triggered_by_user"] == os_user()
    assert deleted["data"]["backup_id"] == old


def test_a_failed_cli_restore_is_recorded_as_a_failed_run(
    planted: Planted, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloudops.cli import main

    monkeypatch.setenv("CLOUDOPS_CATALOG", str(Path(planted.file).parent))

    code = main(["restore", DATABASE, "--backup", "not-an-id", "--target", f"restored_{os.getpid()}"])

    assert code == 2
    assert "backup_id: 'not-an-id'" in capsys.readouterr().err
    (started,) = planted.facts("run.started")
    (finished,) = planted.facts("run.finished")
    assert started["dag_id"] == "restore_request"
    assert started["data"]["triggered_by"] == "cli"
    assert started["data"]["conf"]["backup"] == "not-an-id"
    assert finished["run_id"] == started["run_id"]
    assert finished["data"]["state"] == "failed"
    assert finished["data"]["message"].startswith("InvalidInputError: backup_id: 'not-an-id'")


@pytest.fixture
def dropped_afterwards() -> Iterator[list[str]]:
    """MariaDB databases a test restores into; dropped at the end (they are not scratch-named)."""
    import pymysql

    names: list[str] = []
    yield names
    conn = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_MARIADB"])
    with (
        pymysql.connect(
            host=conn["host"], port=int(conn["port"]), user=conn["login"], password=conn["password"]
        ) as session,
        session.cursor() as cursor,
    ):
        for name in names:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_a_cli_restore_records_its_run_and_the_restore(
    planted: Planted,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    dropped_afterwards: list[str],
) -> None:
    from cloudops.cli import main
    from cloudops.evidence.recorder import os_user

    monkeypatch.setenv("CLOUDOPS_CATALOG", str(Path(planted.file).parent))
    assert main(["backups", "run", DATABASE]) == 0, capsys.readouterr().err
    (backup_id,) = planted.listed()
    target = f"restored_{uuid.uuid4().hex[:8]}"
    dropped_afterwards.append(target)

    assert main(["restore", DATABASE, "--target", target]) == 0, capsys.readouterr().err

    runs = {f["run_id"]: f for f in planted.facts("run.finished")}
    restore_run = next(f for f in runs.values() if f["dag_id"] == "restore_request")
    assert restore_run["data"]["state"] == "success"
    assert restore_run["data"]["triggered_by_user"] == os_user()
    (performed,) = planted.facts("restore.performed")
    assert performed["run_id"] == restore_run["run_id"]
    assert performed["triggered_by"] == "cli"
    assert performed["data"]["backup_id"] == backup_id
    assert performed["data"]["target_database"] == target
    assert performed["data"]["requested_by"] == os_user()
    assert performed["data"]["overwrite"] is False
    assert performed["data"]["checks"] > 0
