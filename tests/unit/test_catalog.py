"""The catalog loader: the sandbox catalog is valid, and every kind of bad input gets one clear message."""

from __future__ import annotations

import os
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from cloudops.catalog import CatalogError, load_catalog_file, load_catalogs

pytestmark = pytest.mark.unit

VALID = """\
estate: acme
owner: acme-oncall
timezone: Europe/Paris
clouds:
  - {name: acme_aws, provider: aws, aws_conn_id: acme_aws, region: eu-west-1}
repositories:
  - name: acme_backups
    cloud: acme_aws
    bucket: acme-backups
    region: eu-west-1
databases:
  - name: shop
    engine: postgres
    conn_id: acme_shop
    database: shop
    rpo: 1d12h
    backup:
      repository: acme_backups
      retention: {keep_daily: 7}
fleets:
  - name: web
    os_family: debian
    hosts:
      - {name: web-1, ssh_conn_id: acme_web_1}
"""


def write(tmp_path: Path, text: str, name: str = "acme.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def messages(path: Path) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        load_catalog_file(path)
    return [str(issue) for issue in caught.value.issues]


def test_sandbox_catalog_is_valid(project_root: Path) -> None:
    catalog = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    assert catalog.estate == "sandbox"
    assert {d.engine for d in catalog.databases} == {"postgres", "mariadb"}
    assert len(catalog.hosts) >= 6


def test_valid_file_loads_typed_values(tmp_path: Path) -> None:
    catalog = load_catalog_file(write(tmp_path, VALID))
    shop = catalog.database("shop")
    assert shop.rpo == timedelta(days=1, hours=12)
    assert shop.backup is not None
    assert shop.backup.retention.keep_daily == 7
    assert shop.backup.schedule == "@daily"


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "estate: acme\nowner: [unclosed\n")
    (message,) = messages(path)
    assert message.startswith(f"{path}:")
    assert "not valid YAML" in message


def test_unknown_key_suggests_the_close_name(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("    engine: postgres", "    engnie: postgres"))
    found = messages(path)
    assert f"{path}:13: databases[0].engnie: unknown key 'engnie' (did you mean 'engine'?)" in found
    assert f"{path}:12: databases[0].engine: required field is missing" in found


def test_wrong_type_names_field_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("retention: {keep_daily: 7}", "retention: {keep_daily: many}"))
    (message,) = messages(path)
    assert message.startswith(f"{path}:19: databases[0].backup.retention.keep_daily:")
    assert "'many'" in message


def test_misspelt_enum_value_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("engine: postgres", "engine: postgress"))
    (message,) = messages(path)
    assert "databases[0].engine" in message
    assert "did you mean 'postgres'?" in message


@pytest.mark.parametrize(
    ("line", "expected_field"),
    [
        ("    password: hunter2", "databases[0].password"),
        ("    aws_secret_access_key: abc", "databases[0].aws_secret_access_key"),
    ],
)
def test_secret_keys_are_refused(tmp_path: Path, line: str, expected_field: str) -> None:
    path = write(tmp_path, VALID.replace("    database: shop\n", f"    database: shop\n{line}\n"))
    (message,) = messages(path)
    assert f"{expected_field}: secrets are not allowed in the catalog" in message


@pytest.mark.parametrize(
    "value",
    [
        "postgres://admin:s3cret@db.example/shop",
        "AKIAIOSFODNN7EXAMPLE",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
    ],
)
def test_secret_values_are_refused(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, VALID.replace("description", "x") + f'description: "{value}"\n')
    (message,) = messages(path)
    assert "description: this value looks like" in message
    assert value not in message, "the error must not echo the secret"


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "owner: someone-else\n")
    (message,) = messages(path)
    assert f"{path}:25: owner: key 'owner' appears twice (first on line 2)" == message


def test_duplicate_target_name_in_one_file(tmp_path: Path) -> None:
    duplicate = """\
  - name: shop
    engine: mariadb
    conn_id: other
    database: shop
"""
    path = write(tmp_path, VALID.replace("fleets:\n", duplicate + "fleets:\n"))
    (message,) = messages(path)
    assert message == f"{path}:20: databases[1].name: duplicate name 'shop' (already used by databases[0])"


def test_duplicate_target_across_files_keeps_the_first(tmp_path: Path) -> None:
    first = write(tmp_path, VALID, "a.yaml")
    second = write(tmp_path, VALID.replace("estate: acme", "estate: acme_two"), "b.yaml")
    result = load_catalogs([tmp_path])
    assert [loaded.path for loaded in result.catalogs] == [first]
    issues = [str(issue) for issue in result.issues]
    assert f"{second}:12: databases[0].name: database name 'shop' is already defined in {first}:12" in issues
    assert f"{second}:21: fleets[0].name: fleet name 'web' is already defined in {first}:21" in issues


def test_one_bad_file_does_not_stop_the_others(tmp_path: Path) -> None:
    write(tmp_path, VALID, "a.yaml")
    write(tmp_path, "estate: broken\n", "b.yaml")
    result = load_catalogs([tmp_path])
    assert [loaded.catalog.estate for loaded in result.catalogs] == ["acme"]
    assert [str(i) for i in result.issues] == [f"{tmp_path / 'b.yaml'}:1: owner: required field is missing"]


def test_unknown_reference_suggests_a_name(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("repository: acme_backups", "repository: acme_backup"))
    (message,) = messages(path)
    assert message == (
        f"{path}:18: databases[0].backup.repository: unknown repository 'acme_backup' "
        "(did you mean 'acme_backups'?)"
    )


def test_empty_retention_policy_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("retention: {keep_daily: 7}", "retention: {}"))
    (message,) = messages(path)
    assert "databases[0].backup.retention: the retention policy keeps nothing" in message


def test_cluster_needs_exactly_one_primary(tmp_path: Path) -> None:
    replica = """\
  - {name: shop_replica, engine: postgres, conn_id: r, database: shop, role: replica, cluster: shop}
"""
    path = write(tmp_path, VALID.replace("fleets:\n", replica + "fleets:\n"))
    (message,) = messages(path)
    assert "databases[1].cluster: cluster 'shop' has 0 primaries; it needs exactly one" in message


DRILL = "      retention: {keep_daily: 7}\n    drill:\n      schedule: on_backup\n"


def test_a_drill_without_a_scratch_server_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("      retention: {keep_daily: 7}\n", DRILL))
    (message,) = messages(path)
    assert message == (
        f"{path}:20: databases[0].drill.scratch_conn_id: a drill needs a scratch_conn_id: it restores a full "
        "copy of the database, which must land on a scratch server of its own, never on the primary (there "
        "is no default) (add `scratch_conn_id: <connection of a scratch server>` under drill)"
    )


def test_a_primary_is_refused_as_scratch_server_unless_scratch_allowed(tmp_path: Path) -> None:
    drill = DRILL + "      scratch_conn_id: acme_shop\n"
    path = write(tmp_path, VALID.replace("      retention: {keep_daily: 7}\n", drill))
    (message,) = messages(path)
    assert message.startswith(
        f"{path}:22: databases[0].drill.scratch_conn_id: scratch_conn_id 'acme_shop' is the connection of "
        "primary 'shop' (databases[0]): a drill would restore a full copy onto that server"
    )
    assert "set `scratch_allowed: true` on that database" in message
    allowed = write(
        tmp_path,
        path.read_text().replace("    database: shop\n", "    database: shop\n    scratch_allowed: true\n"),
    )
    assert load_catalog_file(allowed).databases[0].scratch_allowed


def test_another_files_primary_is_refused_as_scratch_server(tmp_path: Path) -> None:
    write(tmp_path, VALID, "a.yaml")
    other = (
        VALID.replace("estate: acme", "estate: acme_two")
        .replace("name: shop", "name: shop_two")
        .replace("conn_id: acme_shop", "conn_id: acme_shop_two")
        .replace("name: web\n", "name: web_two\n")
        .replace("      retention: {keep_daily: 7}\n", DRILL + "      scratch_conn_id: acme_shop\n")
    )
    second = write(tmp_path, other, "b.yaml")
    result = load_catalogs([tmp_path])
    assert [loaded.path.name for loaded in result.catalogs] == ["a.yaml"]
    (issue,) = result.issues
    assert str(issue).startswith(
        f"{second}:22: databases[0].drill.scratch_conn_id: scratch_conn_id 'acme_shop' is the connection of "
        f"primary 'shop' ({tmp_path / 'a.yaml'} databases[0])"
    )
    second.write_text(other.replace("acme_shop\n", "acme_scratch\n"))
    assert len(load_catalogs([tmp_path]).catalogs) == 2


def test_bad_schedule_and_timezone(tmp_path: Path) -> None:
    text = VALID.replace("Europe/Paris", "Europe/Pariss").replace(
        "      repository: acme_backups", '      repository: acme_backups\n      schedule: "0 25 * * *"'
    )
    found = messages(write(tmp_path, text))
    assert any("timezone: unknown time zone 'Europe/Pariss'" in m for m in found)
    assert any("backup.schedule: '0 25 * * *' is not a five-field cron expression" in m for m in found)


def test_empty_file_and_wrong_top_level(tmp_path: Path) -> None:
    assert messages(write(tmp_path, "", "empty.yaml")) == [f"{tmp_path / 'empty.yaml'}: the file is empty"]
    (message,) = messages(write(tmp_path, "- a\n- b\n", "list.yaml"))
    assert "the top level must be a mapping" in message


def test_cache_serves_unchanged_files_and_never_stale_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow parses each DAG file in a new process: valid catalogs are cached on disk, keyed on content."""
    from cloudops.catalog import loader

    monkeypatch.setenv("CLOUDOPS_CACHE_DIR", str(tmp_path / "cache"))
    path = write(tmp_path, VALID)
    assert load_catalog_file(path).estate == "acme"
    assert list((tmp_path / "cache").rglob("*.pickle")), "a valid catalog is cached"

    loader._load_cached.cache_clear()  # as a new process would start
    assert load_catalog_file(path).estate == "acme"

    path.write_text(VALID.replace("estate: acme", "estate: acme_renamed"))
    loader._load_cached.cache_clear()
    assert load_catalog_file(path).estate == "acme_renamed"

    path.write_text(VALID.replace("engine: postgres", "engine: oracle"))
    loader._load_cached.cache_clear()
    with pytest.raises(CatalogError):
        load_catalog_file(path)


def test_a_same_size_edit_that_keeps_the_mtime_is_not_served_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rsync -a, tar and config-sync tools keep mtimes: the cache key is the content's hash."""
    from cloudops.catalog import loader

    monkeypatch.setenv("CLOUDOPS_CACHE_DIR", str(tmp_path / "cache"))
    path = write(tmp_path, VALID)
    assert load_catalog_file(path).estate == "acme"
    before = path.stat()

    path.write_text(VALID.replace("estate: acme\n", "estate: acmf\n"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    assert load_catalog_file(path).estate == "acmf", "the same process sees the edit"
    loader._load_cached.cache_clear()  # and so does a new one, through the disk cache
    assert load_catalog_file(path).estate == "acmf"


class _Planted:
    """What an attacker writes into a cache folder they can write: unpickling it runs a call."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize(
    ("make_untrusted", "reason"),
    [
        (lambda folder, file: folder.chmod(0o777), "can be written by others (mode 0777)"),
        (lambda folder, file: folder.parent.chmod(0o775), "can be written by others (mode 0775)"),
        (lambda folder, file: file.chmod(0o666), "can be written by others (mode 0666)"),
        (
            lambda folder, file: (
                file.rename(folder.parent / "elsewhere"),
                file.symlink_to(folder.parent / "elsewhere"),
            ),
            "cannot be opened safely",
        ),
    ],
    ids=["folder-world-writable", "parent-group-writable", "file-world-writable", "file-is-a-link"],
)
def test_a_cache_others_can_write_is_never_unpickled(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    make_untrusted: object,
    reason: str,
) -> None:
    import pickle

    from cloudops.catalog import loader

    monkeypatch.setenv("CLOUDOPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(loader, "_refusals_logged", set())
    path = write(tmp_path, VALID)
    load_catalog_file(path)  # writes the cache with this user's safe modes
    cache_file = loader._cache_path(str(path))
    marker = tmp_path / "code-ran"

    def plant() -> None:
        cache_file.write_bytes(pickle.dumps(_Planted(marker)))
        loader._load_cached.cache_clear()

    plant()  # the same planted file in a folder only this user can write: it is read (and runs)
    load_catalog_file(path)
    assert marker.is_dir(), "the trusted cache is read; otherwise this test proves nothing"
    marker.rmdir()

    plant()
    make_untrusted(cache_file.parent, cache_file)  # type: ignore[operator]
    with caplog.at_level("WARNING", logger="cloudops.catalog.loader"):
        assert load_catalog_file(path).estate == "acme"  # validated from the YAML instead

    assert not marker.exists(), "an untrusted cache file was unpickled"
    assert reason in caplog.text
    assert "catalog cache not used" in caplog.text


def test_the_cache_is_written_for_this_user_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudops.catalog import loader

    monkeypatch.setenv("CLOUDOPS_CACHE_DIR", str(tmp_path / "cache"))
    old = os.umask(0o002)  # the Airflow image's umask
    try:
        path = write(tmp_path, VALID)
        load_catalog_file(path)
    finally:
        os.umask(old)
    cache_file = loader._cache_path(str(path))
    assert oct(cache_file.stat().st_mode & 0o777) == oct(0o600)
    assert oct(cache_file.parent.stat().st_mode & 0o777) == oct(0o700)


def test_unwritable_cache_directory_does_not_stop_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("CLOUDOPS_CACHE_DIR", str(blocker))
    assert load_catalog_file(write(tmp_path, VALID)).estate == "acme"


@pytest.mark.parametrize("name", ["-shop", "$shop", "--help"])
def test_a_database_name_never_starts_like_an_option(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, VALID.replace("    database: shop", f"    database: '{name}'"))
    (message,) = messages(path)
    assert "databases[0].database" in message


def test_the_backup_retry_delay_defaults_to_a_minute_and_stays_between_1s_and_15m(tmp_path: Path) -> None:
    shop = load_catalog_file(write(tmp_path, VALID)).database("shop")
    assert shop.backup is not None
    assert shop.backup.retry_delay == timedelta(minutes=1)
    for written, expected in (("5s", timedelta(seconds=5)), ("15m", timedelta(minutes=15))):
        text = VALID.replace(
            "      retention: {keep_daily: 7}",
            f"      retention: {{keep_daily: 7}}\n      retry_delay: {written}",
        )
        backup = load_catalog_file(write(tmp_path, text)).database("shop").backup
        assert backup is not None
        assert backup.retry_delay == expected
    for refused in ("0s", "16m"):
        text = VALID.replace(
            "      retention: {keep_daily: 7}",
            f"      retention: {{keep_daily: 7}}\n      retry_delay: {refused}",
        )
        (message,) = messages(write(tmp_path, text))
        assert "databases[0].backup.retry_delay" in message
        assert "between 1s and 15m" in message


def test_the_backup_lock_bound_defaults_to_2s_and_stays_between_1s_and_60s(tmp_path: Path) -> None:
    shop = load_catalog_file(write(tmp_path, VALID)).database("shop")
    assert shop.backup is not None
    assert shop.backup.max_lock_wait == timedelta(seconds=2)
    allowed = VALID.replace(
        "      retention: {keep_daily: 7}", "      retention: {keep_daily: 7}\n      max_lock_wait: 5s"
    )
    backup = load_catalog_file(write(tmp_path, allowed)).database("shop").backup
    assert backup is not None
    assert backup.max_lock_wait == timedelta(seconds=5)
    for refused in ("0s", "2m"):
        text = VALID.replace(
            "      retention: {keep_daily: 7}",
            f"      retention: {{keep_daily: 7}}\n      max_lock_wait: {refused}",
        )
        (message,) = messages(write(tmp_path, text))
        assert "databases[0].backup.max_lock_wait" in message
        assert "between 1s and 60s" in message
