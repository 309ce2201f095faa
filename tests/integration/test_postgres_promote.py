"""PostgreSQL promotion against a real pair of servers of this test's own (the sandbox's pair is left
alone): a primary and a ``pg_basebackup -R`` replica on free loopback ports, in a temporary folder,
stopped and removed at the end.

The servers trust loopback connections (a throw-away pair on ports nobody else knows for the few
seconds it lives); nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudops.engines import engine
from cloudops.engines.postgres import promote
from cloudops.errors import ReplicationError

pytestmark = pytest.mark.integration

BINDIR = Path("/usr/lib/postgresql/15/bin")
USED_BY = "promotion test"
OLD, NEW = "cloudops_test_promote_old", "cloudops_test_promote_new"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres(argv: list[str], *, timeout: float = 120) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [*prefix, *argv], capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
    )
    assert done.returncode == 0, f"{argv[0]} failed: {done.stdout}{done.stderr}"


@dataclass
class Server:
    data_dir: Path
    port: int
    name: str

    def settings(self) -> str:
        return (
            f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.data_dir}'\ncluster_name = '{self.name}'\n"
            "wal_level = replica\nmax_wal_senders = 5\nfsync = off\nlogging_collector = off\n"
        )

    def start(self) -> None:
        _as_postgres(
            [
                str(BINDIR / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data_dir),
                "-l",
                f"{self.data_dir}.log",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            _as_postgres(
                [str(BINDIR / "pg_ctl"), "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data_dir)]
            )

    def connection(self) -> str:
        return json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": self.port, "login": "postgres"}
        )


@pytest.fixture
def pair(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, Server]]:
    if not (BINDIR / "initdb").exists():
        pytest.fail(f"{BINDIR}/initdb is missing: install postgresql-15 (make setup)")
    base = Path(tempfile.mkdtemp(prefix="cloudops-promote-", dir="/tmp"))
    base.chmod(0o755)
    shutil.chown(base, "postgres")
    old, new = Server(base / "old", _free_port(), "old"), Server(base / "new", _free_port(), "new")
    try:
        _as_postgres(
            [str(BINDIR / "initdb"), "-D", str(old.data_dir), "-U", "postgres", "--auth=trust", "--no-sync"]
        )
        with (old.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(old.settings())
        old.start()
        _as_postgres(
            [
                str(BINDIR / "pg_basebackup"),
                *("-D", str(new.data_dir), "-R", "-X", "stream", "-c", "fast"),
                *("-h", "127.0.0.1", "-p", str(old.port), "-U", "postgres"),
            ]
        )
        (new.data_dir / "postgresql.conf").write_text(
            (new.data_dir / "postgresql.conf").read_text() + new.settings()
        )
        new.start()
        monkeypatch.setenv(f"AIRFLOW_CONN_{OLD.upper()}", old.connection())
        monkeypatch.setenv(f"AIRFLOW_CONN_{NEW.upper()}", new.connection())
        yield old, new
    finally:
        for server in (new, old):
            with contextlib.suppress(AssertionError):
                server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def _streaming(members: dict[str, str]) -> bool:
    for _attempt in range(100):  # at most ~10 s
        found = engine("postgres").topology("pair", members, used_by=USED_BY)
        if found.healthy:
            return True
        time.sleep(0.1)
    return False


def test_promote_refuses_while_the_old_primary_takes_writes_then_promotes_once_it_is_stopped(
    pair: tuple[Server, Server],
) -> None:
    old, new = pair
    members = {"old": OLD, "new": NEW}
    assert _streaming(members)

    with pytest.raises(ReplicationError, match=rf"refusing to promote {NEW} .*{OLD} .* still takes writes"):
        promote(NEW, old_primary_conn_id=OLD, used_by=USED_BY)
    assert engine("postgres").topology("pair", members, used_by=USED_BY).primary == "old"  # nothing moved

    old.stop()
    decision = promote(NEW, old_primary_conn_id=OLD, used_by=USED_BY, wait_seconds=30)
    assert decision.startswith(f"promoted {NEW} (127.0.0.1:{new.port}): now a primary on timeline 2 ")
    assert "(was a replica on timeline 1, replayed up to " in decision

    again = promote(NEW, old_primary_conn_id=OLD, used_by=USED_BY)
    assert (
        again == f"no action: {NEW} (127.0.0.1:{new.port}) is already a primary (not in recovery, timeline 2)"
    )

    found = engine("postgres").topology("pair", members, used_by=USED_BY)
    assert found.primary == "new"
    assert found.problems[0].startswith(f"pair: old (127.0.0.1:{old.port}) cannot be reached: ")


def test_the_old_primary_started_again_after_a_promotion_is_two_writers_and_no_primary(
    pair: tuple[Server, Server],
) -> None:
    old, new = pair
    members = {"old": OLD, "new": NEW}
    assert _streaming(members)
    old.stop()
    promote(NEW, used_by=USED_BY, wait_seconds=30)
    old.start()  # no standby.signal: it comes back as a primary, the split brain a fence prevents

    found = engine("postgres").topology("pair", members, used_by=USED_BY)
    assert found.primary is None
    assert found.problems == (
        f"pair: 2 members take writes: old (127.0.0.1:{old.port}), new (127.0.0.1:{new.port}): two writers; "
        "fence all but one before anything else",
    )
    assert found.member("old").timeline == 1
    assert found.member("new").timeline == 2
    with pytest.raises(ReplicationError, match=rf"{NEW} \(.*\) is not a replica"):
        engine("postgres").lag(OLD, NEW, used_by=USED_BY)
