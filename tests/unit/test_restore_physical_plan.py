"""The pure planning of a physical restore drill: where a scratch cluster lives, the settings its server
runs with, what the backup's backup_label says, and the checks that compare it with the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudops.engines.scratch import scratch_name
from cloudops.errors import RestoreError, RestoreRefused
from cloudops.repository.manifest import Manifest
from cloudops.restore.physical_plan import (
    CLUSTERS_FOLDER,
    BackupLabel,
    bindir_for,
    check_restorable,
    cluster_paths,
    clusters_root,
    databases_check,
    leftover_names,
    major_of,
    parse_backup_label,
    parse_lsn,
    position_check,
    recovery_check,
    render_config,
    server_settings,
    version_check,
)

pytestmark = pytest.mark.unit

BACKUP_ID = "20261123T021500Z-1a2b3c"
KEY = f"backups/sandbox/orders_pg/{BACKUP_ID}/base.tar.zst"
RUN = "scheduled__2026-11-23T02:15:00+00:00"
# As pg_basebackup 15 wrote it for the sandbox primary.
LABEL = """\
START WAL LOCATION: 0/C000028 (file 00000001000000000000000C)
CHECKPOINT LOCATION: 0/C000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-11-23 13:29:11 UTC
LABEL: cloudops
START TIMELINE: 1
"""


def physical_manifest(**changes: Any) -> Manifest:
    data: dict[str, Any] = {
        "backup_id": BACKUP_ID,
        "estate": "sandbox",
        "database": "orders_pg",
        "engine": "postgres",
        "engine_version": "15.20",
        "method": "physical",
        "format": "pg_basebackup-tar",
        "started_at": "2026-11-23T02:15:00Z",
        "finished_at": "2026-11-23T02:16:30Z",
        "raw_bytes": 1000,
        "compressed_bytes": 300,
        "objects": [
            {"name": "base.tar.zst", "key": KEY, "size": 300, "sha256": "ab" * 32, "raw_bytes": 1000}
        ],
        "compression": {"algorithm": "zstd", "level": 3},
        "encryption": {"mode": "sse-s3"},
        "schema_fingerprint": "f" * 64,
        "position": {"lsn_start": "0/B000000", "lsn_end": "0/D000100"},
    }
    data.update(changes)
    return Manifest.model_validate(data)


# -- where -------------------------------------------------------------------------------------------


def test_a_cluster_lives_in_a_folder_named_after_the_estate_and_the_run() -> None:
    scratch = scratch_name("orders_pg", RUN)
    paths = cluster_paths(Path("/scratch/cloudops-scratch-clusters"), "sandbox", scratch)
    assert paths.folder == Path(f"/scratch/cloudops-scratch-clusters/sandbox/{scratch}")
    assert paths.name == scratch
    for inside in (paths.data_dir, paths.fetch_dir, paths.config_file, paths.hba_file, paths.log_file):
        assert inside.parent == paths.folder


@pytest.mark.parametrize("name", ["orders", "../../etc", "drill_orders_pg", "postgres"])
def test_only_scratch_names_become_cluster_folders(name: str) -> None:
    with pytest.raises(RestoreRefused, match="only scratch databases"):
        cluster_paths(Path("/scratch"), "sandbox", name)


def test_an_estate_name_cannot_climb_out_of_the_root() -> None:
    with pytest.raises(ValueError, match="not an estate name"):
        cluster_paths(Path("/scratch"), "../etc", scratch_name("orders_pg", RUN))


def test_the_scratch_root_is_the_environments_or_the_temp_folder() -> None:
    assert clusters_root({}, "/tmp") == Path("/tmp") / CLUSTERS_FOLDER
    assert (
        clusters_root({"CLOUDOPS_SCRATCH_DIR": "/srv/drills"}, "/tmp")
        == Path("/srv/drills") / CLUSTERS_FOLDER
    )


def test_leftovers_are_this_databases_scratch_clusters_only() -> None:
    mine = [scratch_name("orders", "run-1"), scratch_name("orders", "run-2")]
    others = [scratch_name("orders_pg", "run-1"), "notes", "drill_orders"]
    assert leftover_names([*others, *mine], "orders") == sorted(mine)


# -- what can be restored, with what -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "logical", "format": "pg_dump-custom"}, "not a PostgreSQL physical one"),
        ({"engine": "mariadb"}, "not a PostgreSQL physical one"),
        ({"format": "pg_basebackup-plain"}, "one 'pg_basebackup-tar' object"),
    ],
)
def test_only_a_one_tar_postgres_physical_backup_is_restorable(changes: dict[str, Any], message: str) -> None:
    check_restorable(physical_manifest())
    with pytest.raises(RestoreError, match=message):
        check_restorable(physical_manifest(**changes))


@pytest.mark.parametrize(
    ("version", "major"), [("15.20", "15"), ("15", "15"), ("9.6.24", "9.6"), ("16beta1", "16")]
)
def test_major_version(version: str, major: str) -> None:
    assert major_of(version) == major


def test_binaries_of_the_backups_major_version() -> None:
    assert bindir_for("15", {}) == Path("/usr/lib/postgresql/15/bin")
    assert bindir_for("16", {"CLOUDOPS_PG_BINDIR": "/opt/pg{major}/bin"}) == Path("/opt/pg16/bin")


# -- how the server runs -------------------------------------------------------------------------------


def test_the_scratch_server_is_private_never_archives_and_stops_at_the_backups_consistent_point() -> None:
    paths = cluster_paths(Path("/scratch"), "sandbox", scratch_name("orders_pg", RUN))
    settings = server_settings(paths, port=54321)
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["port"] == 54321
    assert settings["unix_socket_directories"] == ""
    assert settings["archive_mode"] == "off"
    assert settings["primary_conninfo"] == ""
    assert settings["hba_file"] == str(paths.hba_file)
    assert settings["cluster_name"] == paths.name  # its processes carry the run's scratch name
    assert settings["recovery_target"] == "immediate"
    assert settings["recovery_target_action"] == "promote"  # the default, pause, would never end recovery
    assert settings["restore_command"]  # archive recovery refuses to start without one


def test_settings_render_as_a_postgresql_conf() -> None:
    text = render_config({"port": 5433, "restore_command": "false", "cluster_name": "it's"})
    assert "port = 5433\n" in text
    assert "restore_command = 'false'\n" in text
    assert "cluster_name = 'it''s'\n" in text


# -- the backup's own label and the checks -----------------------------------------------------------


def test_lsns_compare_as_numbers() -> None:
    assert parse_lsn("0/C000028") == 0xC000028
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")
    with pytest.raises(ValueError, match="not an LSN"):
        parse_lsn("12")


def test_backup_label() -> None:
    label = parse_backup_label(LABEL)
    assert label == BackupLabel(
        start_lsn="0/C000028",
        start_wal_file="00000001000000000000000C",
        checkpoint_lsn="0/C000060",
        timeline=1,
        start_time="2026-11-23 13:29:11 UTC",
        backup_from="primary",
    )
    with pytest.raises(ValueError, match="no START WAL LOCATION"):
        parse_backup_label("LABEL: x\n")


def test_the_backup_must_start_within_the_manifests_wal_range() -> None:
    label = parse_backup_label(LABEL)
    inside = position_check(label, physical_manifest())
    assert inside.passed, inside.detail
    assert inside.expected == "0/B000000 .. 0/D000100"
    later = position_check(
        label, physical_manifest(position={"lsn_start": "0/D000000", "lsn_end": "0/E000000"})
    )
    assert not later.passed
    assert "another backup" in later.detail
    unrecorded = position_check(label, physical_manifest(position={}))
    assert not unrecorded.passed
    assert "records no lsn_start" in unrecorded.detail


def test_the_data_directory_must_be_of_the_manifests_major_version() -> None:
    assert version_check("15\n", physical_manifest()).passed
    other = version_check("14", physical_manifest())
    assert not other.passed
    assert "PostgreSQL 14 cluster" in other.detail


def test_recovery_must_have_ended_on_a_new_timeline() -> None:
    label = parse_backup_label(LABEL)
    assert recovery_check(in_recovery=False, timeline=2, label=label).passed
    assert not recovery_check(in_recovery=True, timeline=1, label=label).passed
    assert not recovery_check(in_recovery=False, timeline=1, label=label).passed


def test_every_database_must_answer_and_the_catalogs_must_exist() -> None:
    fine = databases_check({"orders": None, "postgres": None}, ["orders"])
    assert fine.passed
    assert fine.observed == "orders, postgres"
    missing = databases_check({"postgres": None}, ["orders"])
    assert not missing.passed
    assert "missing: orders" in missing.detail
    broken = databases_check({"orders": None, "crm": "FATAL: could not open file"}, ["orders"])
    assert not broken.passed
    assert "crm: FATAL" in broken.detail


def test_a_database_being_dropped_at_backup_time_is_named_not_held_against_the_backup() -> None:
    check = databases_check({"orders": None}, ["orders"], invalid=["old_copy"])
    assert check.passed
    assert "being dropped when the backup was taken: old_copy" in check.detail
