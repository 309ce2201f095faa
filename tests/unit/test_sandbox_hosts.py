"""Unit tests of the sandbox hosts' pure parts: the root's mirror and cache key, extra fleets, boot argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudops.catalog import load_catalog_file
from cloudops.errors import SandboxError
from cloudops.sandbox import debian_root
from cloudops.sandbox.debian_root import RootRecipe, apt_mirror, cached_root_dir, ensure_base_root
from cloudops.sandbox.extra_hosts import add_fleet, catalog_file, extra_hosts, remove_fleet
from cloudops.sandbox.host_boot import HostConfig, HostPaths, namespace_command
from cloudops.sandbox.layout import BASE_PORTS, EPHEMERAL_PORTS_START, SandboxLayout

pytestmark = pytest.mark.unit

DEB822 = """\
Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Enabled: no
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm

Types: deb
# a comment inside the stanza
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
"""


def test_the_mirror_is_the_first_enabled_binary_source_of_the_suite(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    assert apt_mirror("bookworm", tmp_path) == "http://mirror.example/debian"


def test_a_one_line_source_with_options_is_read_too(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://one.example/debian bookworm main\n"
    )
    assert apt_mirror("bookworm", tmp_path) == "http://one.example/debian"


def test_no_source_of_the_suite_is_said_plainly(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb http://one.example/debian trixie main\n")
    with pytest.raises(SandboxError, match="no apt source of this machine serves Debian bookworm"):
        apt_mirror("bookworm", tmp_path)


def test_the_cache_key_changes_with_every_input() -> None:
    base = RootRecipe("bookworm", "http://a.example/debian", ("openssh-server", "sudo"))
    assert base.key == RootRecipe("bookworm", "http://a.example/debian", ("sudo", "openssh-server")).key
    others = [
        RootRecipe("trixie", base.mirror, base.packages),
        RootRecipe(base.suite, "http://b.example/debian", base.packages),
        RootRecipe(base.suite, base.mirror, (*base.packages, "python3")),
        RootRecipe(base.suite, base.mirror, base.packages, build_version=base.build_version + 1),
    ]
    assert len({base.key, *(r.key for r in others)}) == 5
    assert base.name == f"debian-bookworm-{base.key}"


def test_an_unreachable_archive_is_named_when_nothing_is_cached(tmp_path: Path) -> None:
    if debian_root.builder_binaries()[0].problem():
        pytest.skip("debootstrap is not installed here")
    recipe = RootRecipe("bookworm", "http://127.0.0.1:9/debian", ("sudo",))
    with pytest.raises(
        SandboxError, match=r"cannot reach the Debian archive at http://127\.0\.0\.1:9/debian"
    ):
        ensure_base_root(
            lambda _: None,
            log=tmp_path / "build.log",
            environ={"CLOUDOPS_SANDBOX_CACHE": str(tmp_path / "cache")},
            recipe=recipe,
        )
    assert not cached_root_dir(recipe, tmp_path / "cache").exists()


def test_a_cached_root_is_used_without_the_archive(tmp_path: Path) -> None:
    recipe = RootRecipe("bookworm", "http://127.0.0.1:9/debian", ("sudo",))
    cached = cached_root_dir(recipe, tmp_path / "cache")
    cached.mkdir(parents=True)
    found = ensure_base_root(
        lambda _: None,
        log=tmp_path / "build.log",
        environ={"CLOUDOPS_SANDBOX_CACHE": str(tmp_path / "cache")},
        recipe=recipe,
    )
    assert found == cached
    assert not (tmp_path / "build.log").exists()


def _layout(tmp_path: Path) -> SandboxLayout:
    root = Path(__file__).resolve().parents[2]
    return SandboxLayout(
        project_root=root,
        dir=tmp_path / "sandbox",
        data_root=tmp_path / "sandbox",
        data_root_is_fallback=False,
        port_offset=0,
        pg_bindir=Path("/nonexistent"),
        mariadbd=Path("/nonexistent"),
        mariadb_install_db=Path("/nonexistent"),
        as_root=False,
    )


def test_an_added_fleet_has_a_valid_catalog_of_its_own(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    path = add_fleet(layout, "bench", 3, {"web", "app"})
    assert path == catalog_file(layout, "bench")
    assert path.is_relative_to(layout.dir)
    catalog = load_catalog_file(path)
    (fleet,) = catalog.fleets
    assert [(h.name, h.ssh_conn_id, h.groups) for h in fleet.hosts] == [
        ("bench-1", "sandbox_ssh_bench_1", ["canary"]),
        ("bench-2", "sandbox_ssh_bench_2", []),
        ("bench-3", "sandbox_ssh_bench_3", []),
    ]
    add_fleet(layout, "more", 2, {"web", "app"})
    assert [h.name for h in extra_hosts(layout)] == ["bench-1", "bench-2", "bench-3", "more-1", "more-2"]
    remove_fleet(layout, "bench")
    assert [h.name for h in extra_hosts(layout)] == ["more-1", "more-2"]
    assert not path.exists()


@pytest.mark.parametrize(
    ("fleet", "count", "message"),
    [
        ("web", 2, "already in runbooks/sandbox.yaml"),
        ("Bench!", 2, "use lower-case letters"),
        ("bench", 0, "between 1 and"),
        ("bench", 10_000, "between 1 and"),
    ],
)
def test_a_bad_fleet_request_is_refused(tmp_path: Path, fleet: str, count: int, message: str) -> None:
    with pytest.raises(SandboxError, match=message):
        add_fleet(_layout(tmp_path), fleet, count, {"web", "app"})


def test_a_boot_gets_a_time_namespace_and_provisioning_none(tmp_path: Path) -> None:
    config = HostConfig("web-1", "/cache/root", "/repo", "/srv/cloudops-repo", 2.0)
    paths = HostPaths(tmp_path / "web-1")
    boot = namespace_command(config, paths, boottime_offset=-4242)
    assert boot[:7] == ["unshare", "--fork", "--kill-child", "--pid", "--mount", "--uts", "--ipc"]
    assert boot[7:10] == ["--time", "--boottime", "-4242"]
    assert boot[-6:] == ["boot", "/cache/root", str(paths.top), "web-1", "/repo", "/srv/cloudops-repo"]
    provision = namespace_command(config, paths, boottime_offset=None, provision="true")
    assert "--time" not in provision
    assert provision[-7:] == [
        "provision",
        "/cache/root",
        str(paths.top),
        "web-1",
        "/repo",
        "/srv/cloudops-repo",
        "true",
    ]


def test_a_machine_that_cannot_run_hosts_is_told_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from cloudops.sandbox.hosts import host_problems

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(
        os, "uname", lambda: os.uname_result(("Linux", "h", "5.4.0-200-generic", "#1", "x86_64"))
    )
    problems = host_problems()
    assert problems[0].startswith("sandbox hosts need root (they mount overlayfs and create namespaces)")
    assert problems[1] == (
        "sandbox hosts need Linux 5.6 or newer (time namespaces); this kernel is 5.4.0-200-generic"
    )


def test_a_supervisors_pid_file_matches_its_own_host_only(tmp_path: Path) -> None:
    import subprocess
    import sys

    from cloudops.sandbox.hosts import SupervisorDaemon
    from cloudops.sandbox.process import RUNNING, STALE

    hosts = tmp_path / "hosts"
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "host_supervisor", str(hosts / "web-10")]
    )
    try:
        for name, expected in (("web-1", STALE), ("web-10", RUNNING)):
            daemon = SupervisorDaemon(tmp_path / f"{name}.pid", marker=f"host_supervisor {hosts / name}")
            daemon.record(stand_in.pid)
            assert daemon.state() == (expected, stand_in.pid)
    finally:
        stand_in.kill()
        stand_in.wait()


@pytest.mark.parametrize("offset", [0, 1000, 3000, 9000])
def test_no_sandbox_port_falls_in_the_ephemeral_range(
    offset: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An outgoing connection may hold any ephemeral port at any moment; a sandbox port there would
    # make `up` refuse it now and then (CI saw 58434, the scratch server at offset 3000, once).
    monkeypatch.setenv("CLOUDOPS_SANDBOX_DIR", str(tmp_path / "sandbox"))
    monkeypatch.setenv("CLOUDOPS_SANDBOX_PORT_OFFSET", str(offset))
    layout = SandboxLayout.from_environment()
    assert {service: layout.port(service) < EPHEMERAL_PORTS_START for service in BASE_PORTS} == {
        service: True for service in BASE_PORTS
    }


def test_sandboxes_at_different_offsets_share_no_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Two sandboxes run side by side (make test's second sandbox at offset 3000, a demo at 1000, helpers'
    # worktrees): one's port must never be another's (Redis at 16379 was etcd's 12379 at +4000).
    monkeypatch.setenv("CLOUDOPS_SANDBOX_DIR", str(tmp_path / "sandbox"))
    taken: dict[int, tuple[int, str]] = {}
    clashes = []
    for offset in range(0, 10_000, 1000):
        monkeypatch.setenv("CLOUDOPS_SANDBOX_PORT_OFFSET", str(offset))
        layout = SandboxLayout.from_environment()
        for service in BASE_PORTS:
            port = layout.port(service)
            if port in taken:
                clashes.append((port, taken[port], (offset, service)))
            taken[port] = (offset, service)
    assert clashes == []
