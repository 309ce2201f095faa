"""The sandbox's apt repository as files: it builds, its indexes are valid and deterministic, publish adds.

apt itself reads the repository in tests/integration/test_apt_repo_with_apt.py.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from cloudops.patching.advisories import load_advisories
from cloudops.patching.model import Advisory, Classification
from cloudops.sandbox import apt_repo
from cloudops.sandbox.apt_repo import (
    BASE_PACKAGES,
    GUEST_REPO_PATH,
    RELEASES,
    SECURITY_SUITE,
    SUITES,
    UPDATES_SUITE,
    PublishRefused,
    classify_suite,
    deb_control,
    ensure_repository_at,
    guest_sources_list,
    publish_at,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return ensure_repository_at(tmp_path / "apt-repo", now=NOW)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file the guests read, by path through the dists link, with its bytes."""
    files = {}
    for path in sorted((root / "dists").resolve().rglob("*")):
        if path.is_file():
            files["dists/" + str(path.relative_to((root / "dists").resolve()))] = path.read_bytes()
    for path in sorted((root / "pool").rglob("*.deb")):
        files[str(path.relative_to(root))] = path.read_bytes()
    files["advisories.json"] = (root / "advisories.json").read_bytes()
    return files


def _stanzas(root: Path, suite: str) -> list[dict[str, str]]:
    text = (root / "dists" / suite / "main" / "binary-all" / "Packages").read_text()
    stanzas = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if not line.startswith(" "):
                key, _, value = line.partition(": ")
                assert key not in fields, f"{key} twice in {suite}"
                fields[key] = value
        stanzas.append(fields)
    return stanzas


def test_guests_list_every_suite_of_the_bound_repository_and_nothing_else() -> None:
    assert guest_sources_list().splitlines() == [
        f"deb [trusted=yes] file:{GUEST_REPO_PATH} {suite} main" for suite in SUITES
    ]
    assert GUEST_REPO_PATH == "/srv/cloudops-repo"


def test_base_packages_are_the_base_suite_of_the_table() -> None:
    assert BASE_PACKAGES == (
        "demo-openssl=1.0",
        "demo-kernel=6.1.0-1-demo",
        "demo-web=2.0",
        "demo-tools=1.0",
        "demo-slow=1.0",
    )
    assert classify_suite(SECURITY_SUITE) is Classification.SECURITY
    assert classify_suite(UPDATES_SUITE) is Classification.UPDATES
    assert classify_suite("bookworm") is Classification.OTHER


def test_every_index_lists_its_suite_s_debs_with_their_true_size_and_hashes(repo: Path) -> None:
    listed = set()
    for suite in SUITES:
        for stanza in _stanzas(repo, suite):
            deb = repo / stanza["Filename"]
            data = deb.read_bytes()
            assert stanza["Size"] == str(len(data))
            assert stanza["SHA256"] == hashlib.sha256(data).hexdigest()
            assert stanza["MD5sum"] == hashlib.md5(data).hexdigest()
            assert stanza["Architecture"] == "all"
            control = deb_control(deb)
            assert f"Package: {stanza['Package']}\nVersion: {stanza['Version']}\n" in control
            listed.add((stanza["Package"], stanza["Version"], suite))
    assert listed == {(r.package, r.version, r.suite) for r in RELEASES}


def test_every_release_file_names_origin_suite_and_the_true_hashes_of_its_indexes(repo: Path) -> None:
    for suite in SUITES:
        release = (repo / "dists" / suite / "Release").read_text()
        assert "Origin: CloudOps-Sandbox\n" in release
        assert f"Suite: {suite}\nCodename: {suite}\n" in release
        assert "Date: Wed, 02 Dec 2026 10:00:00 UTC\n" in release
        sha256 = release.split("SHA256:\n", 1)[1].splitlines()
        assert len(sha256) == 2
        for line in sha256:
            digest, size, name = line.split()
            data = (repo / "dists" / suite / name).read_bytes()
            assert (digest, int(size)) == (hashlib.sha256(data).hexdigest(), len(data))
            by_hash = repo / "dists" / suite / name.rpartition("/")[0] / "by-hash" / "SHA256" / digest
            assert by_hash.read_bytes() == data


def test_the_same_inputs_build_the_same_bytes(tmp_path: Path, repo: Path) -> None:
    again = ensure_repository_at(tmp_path / "again", now=NOW)
    assert _tree(again) == _tree(repo)


def test_guests_can_read_every_file_without_being_root(repo: Path) -> None:
    # The guests' apt reads as user _apt through a read-only bind: world-readable, nothing writable.
    for path in [repo, *repo.rglob("*")]:
        if path.is_symlink() or path.name == ".lock":
            continue
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path} has mode {mode:o}"


def test_advisories_are_dated_from_the_build_day_and_read_by_the_planners_parser(repo: Path) -> None:
    advisories = {a.id: a for a in load_advisories(repo / "advisories.json")}
    assert advisories["CSA-2026-001"] == Advisory(
        "CSA-2026-001", "demo-openssl", "1.1", ("CVE-2026-99001",), "high", date(2026, 11, 22)
    )
    assert advisories["CSA-2026-002"].package == "demo-kernel"
    assert advisories["CSA-2026-002"].published == date(2026, 11, 30)


def test_a_second_ensure_builds_nothing_and_a_new_day_rebuilds_only_the_indexes(repo: Path) -> None:
    debs = {p: p.stat().st_mtime_ns for p in (repo / "pool").rglob("*.deb")}
    link = (repo / "dists").readlink()
    ensure_repository_at(repo, now=NOW + timedelta(hours=1))
    assert (repo / "dists").readlink() == link
    ensure_repository_at(repo, now=NOW + timedelta(days=1))
    assert (repo / "dists").readlink() != link
    assert {p: p.stat().st_mtime_ns for p in (repo / "pool").rglob("*.deb")} == debs
    advisory = {a.id: a for a in load_advisories(repo / "advisories.json")}["CSA-2026-001"]
    assert advisory.published == date(2026, 11, 23)


def test_a_changed_template_rebuilds_every_deb(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _tree(repo)
    monkeypatch.setattr(apt_repo, "_module_digest", lambda: "changed")
    monkeypatch.setattr(apt_repo, "MAINTAINER", "Someone Else <else@cloudops.invalid>")
    ensure_repository_at(repo, now=NOW)
    after = _tree(repo)
    assert {k for k in after if "by-hash" not in k} == {k for k in before if "by-hash" not in k}
    assert (
        after["pool/main/demo-web/demo-web_2.0_all.deb"] != before["pool/main/demo-web/demo-web_2.0_all.deb"]
    )


def test_publish_adds_a_version_and_keeps_the_old_ones(repo: Path) -> None:
    advisory = Advisory(
        "CSA-2026-010", "demo-openssl", "1.2", ("CVE-2026-99010",), "critical", date(2026, 12, 1)
    )
    old_generation = (repo / "dists").resolve()
    old_packages = (old_generation / SECURITY_SUITE / "main/binary-all/Packages").read_bytes()
    deb = publish_at(repo, "demo-openssl", "1.2", SECURITY_SUITE, advisory=advisory, now=NOW)
    assert deb == repo / "pool/main/demo-openssl/demo-openssl_1.2_all.deb"
    versions = [(s["Package"], s["Version"]) for s in _stanzas(repo, SECURITY_SUITE)]
    assert ("demo-openssl", "1.1") in versions
    assert ("demo-openssl", "1.2") in versions
    assert ("demo-openssl", "1.0") in [(s["Package"], s["Version"]) for s in _stanzas(repo, "cloudops-base")]
    assert advisory in load_advisories(repo / "advisories.json")
    # The generation a reader opened just before stays whole; the link moved by rename; dates move on.
    assert (old_generation / SECURITY_SUITE / "main/binary-all/Packages").read_bytes() == old_packages
    assert (repo / "dists").resolve() != old_generation
    assert "Date: Wed, 02 Dec 2026 10:00:01 UTC" in (repo / "dists" / SECURITY_SUITE / "Release").read_text()
    # apt fetches indexes by hash: one that read the old Release just before the swap still finds them.
    old_by_hash = f"main/binary-all/by-hash/SHA256/{hashlib.sha256(old_packages).hexdigest()}"
    assert (repo / "dists" / SECURITY_SUITE / old_by_hash).read_bytes() == old_packages
    assert "Acquire-By-Hash: yes" in (repo / "dists" / SECURITY_SUITE / "Release").read_text()
    assert not list(repo.glob("*.partial*"))
    assert not list(repo.glob(".build-*"))
    # Publishing it again is a no-op; a rebuild (a new day) keeps it.
    link = (repo / "dists").readlink()
    assert publish_at(repo, "demo-openssl", "1.2", SECURITY_SUITE, advisory=advisory, now=NOW) == deb
    assert (repo / "dists").readlink() == link
    ensure_repository_at(repo, now=NOW + timedelta(days=1))
    assert ("demo-openssl", "1.2") in [(s["Package"], s["Version"]) for s in _stanzas(repo, SECURITY_SUITE)]
    assert advisory in load_advisories(repo / "advisories.json")


def test_a_published_breaking_version_writes_fail_and_a_good_one_ok(repo: Path) -> None:
    publish_at(repo, "demo-web", "2.2", UPDATES_SUITE, now=NOW)
    publish_at(repo, "demo-web", "2.3", UPDATES_SUITE, breaks_health=True, now=NOW)
    assert [s["Version"] for s in _stanzas(repo, UPDATES_SUITE) if s["Package"] == "demo-web"] == [
        "2.1",
        "2.2",
        "2.3",
    ]
    published = json.loads((repo / "published.json").read_text())
    assert [(e["version"], e["breaks_health"]) for e in published] == [("2.2", False), ("2.3", True)]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (
            ("demo-nginx", "1.0", UPDATES_SUITE),
            {},
            "unknown package 'demo-nginx': publish one of demo-openssl",
        ),
        (("demo-web", "2.1", UPDATES_SUITE), {}, r"demo-web 2\.1 is already published in cloudops-updates"),
        (("demo-web", "2.0", SECURITY_SUITE), {}, "already published in cloudops-base"),
        (("demo-web", "1:2.2", UPDATES_SUITE), {}, "not a Debian version without epoch"),
        (("demo-web", "2.2/../x", UPDATES_SUITE), {}, "not a Debian version without epoch"),
        (("demo-web", "2.2", "bookworm"), {}, "unknown suite 'bookworm'"),
        (("demo-web", "2.2", "cloudops-base"), {}, "cloudops-base is what hosts are created with"),
        (("demo-tools", "1.2", UPDATES_SUITE), {"breaks_health": True}, "only demo-web has a health check"),
        (
            ("demo-openssl", "1.2", SECURITY_SUITE),
            {
                "advisory": Advisory(
                    "CSA-2026-011", "demo-web", "1.2", ("CVE-2026-1",), "high", date(2026, 1, 1)
                )
            },
            "advisory CSA-2026-011 is for demo-web 1.2, not demo-openssl 1.2",
        ),
        (
            ("demo-openssl", "1.2", SECURITY_SUITE),
            {
                "advisory": Advisory(
                    "CSA-2026-011", "demo-openssl", "1.2", ("CVE-1",), "high", date(2026, 1, 1)
                )
            },
            "cve 'CVE-1' is not a CVE id",
        ),
        (
            ("demo-openssl", "1.2", SECURITY_SUITE),
            {
                "advisory": Advisory(
                    "CSA-2026-001", "demo-openssl", "1.2", ("CVE-2026-1234",), "low", date(2026, 1, 1)
                )
            },
            "advisory id CSA-2026-001 is already used by demo-openssl",
        ),
    ],
)
def test_publish_refuses_what_it_cannot_publish_and_changes_nothing(
    repo: Path, args: tuple[str, str, str], kwargs: dict[str, object], message: str
) -> None:
    before = _tree(repo)
    with pytest.raises(PublishRefused, match=message):
        publish_at(repo, *args, now=NOW, **kwargs)  # type: ignore[arg-type]
    assert _tree(repo) == before


def test_a_reader_during_publishes_always_sees_a_whole_index(repo: Path) -> None:
    index = repo / "dists" / UPDATES_SUITE / "main" / "binary-all" / "Packages"
    seen: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(index.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    generations = [index.read_bytes()]
    try:
        for minor in range(2, 8):
            publish_at(repo, "demo-tools", f"1.{minor}", UPDATES_SUITE, now=NOW)
            generations.append(index.read_bytes())
    finally:
        done.set()
        reader.join(timeout=30)
    assert not reader.is_alive()
    assert seen
    assert set(seen) <= set(generations), "a reader saw an index that was never whole"


def test_the_cli_publishes_with_an_advisory_and_refuses_bad_input_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloudops.cli import main

    monkeypatch.setenv("CLOUDOPS_SANDBOX_DIR", str(tmp_path / "sandbox"))
    monkeypatch.delenv("CLOUDOPS_SANDBOX_PORT_OFFSET", raising=False)
    argv = ["sandbox", "publish", "demo-openssl", "1.2", "--suite", SECURITY_SUITE]
    advisory = ["--advisory", "CSA-2026-020", "--cve", "CVE-2026-99020", "--severity", "critical"]
    assert main([*argv, *advisory, "--published", "2026-12-01"]) == 0
    out = capsys.readouterr().out
    repo = tmp_path / "sandbox" / "apt-repo"
    assert f"published demo-openssl 1.2 in {SECURITY_SUITE}: {repo}/pool/main/demo-openssl/" in out
    assert Advisory(
        "CSA-2026-020", "demo-openssl", "1.2", ("CVE-2026-99020",), "critical", date(2026, 12, 1)
    ) in load_advisories(repo / "advisories.json")

    assert (
        main(["sandbox", "publish", "demo-openssl", "1.3", "--suite", SECURITY_SUITE, "--cve", "CVE-2026-1"])
        == 2
    )
    assert "give its id with --advisory" in capsys.readouterr().err
    assert main([*argv[:3], "1.3", *argv[4:], "--advisory", "CSA-2026-021", "--severity", "bad"]) == 2
    assert "('CSA-2026-021'): severity 'bad' is not one of" in capsys.readouterr().err
    assert main(["sandbox", "publish", "demo-nginx", "1.0", "--suite", UPDATES_SUITE]) == 2
    assert "unknown package 'demo-nginx'" in capsys.readouterr().err
