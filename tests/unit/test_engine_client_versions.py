"""Reading client and server versions: what counts as older, for each engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudops.engines import mariadb, postgres
from cloudops.engines.mariadb import session as mariadb_session
from cloudops.errors import ToolMissingError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", (15,)),
        ("pg_basebackup (PostgreSQL) 16.4", (16,)),
        ("pg_dump (PostgreSQL) 17beta1", (17,)),
        ("pg_dump (PostgreSQL) 9.6.24", (9, 6)),
    ],
)
def test_postgres_client_major(text: str, major: tuple[int, ...]) -> None:
    assert postgres.client_major(text) == major


def test_postgres_client_major_refuses_other_programs() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL client version"):
        postgres.client_major("mysqldump  Ver 8.0.36")


@pytest.mark.parametrize(("num", "major"), [(150020, (15,)), (100023, (10,)), (90624, (9, 6))])
def test_postgres_server_major(num: int, major: tuple[int, ...]) -> None:
    assert postgres.server_major(num) == major


def test_postgres_minor_releases_are_not_older() -> None:
    assert not postgres.client_major("pg_dump (PostgreSQL) 15.1") < postgres.server_major(150020)
    assert postgres.client_major("pg_dump (PostgreSQL) 14.12") < postgres.server_major(150020)


@pytest.mark.parametrize(
    ("text", "release"),
    [
        ("mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)", (10, 11, 19)),
        ("mariadb-dump from 11.4.2-MariaDB, client 10.19 for debian-linux-gnu (x86_64)", (11, 4, 2)),
        ("mysqldump  Ver 10.19 Distrib 10.5.2-MariaDB, for Linux (x86_64)", (10, 5, 2)),
    ],
)
def test_mariadb_client_release(text: str, release: tuple[int, int, int]) -> None:
    assert mariadb.client_release(text) == release


def test_mariadb_server_release() -> None:
    assert mariadb.server_release("10.11.19-MariaDB-0+deb12u1-log") == (10, 11, 19)
    with pytest.raises(ValueError, match="not a MariaDB server version"):
        mariadb.server_release("MariaDB")


def fake_client(tmp_path: Path, help_text: str) -> Path:
    """A program that answers --version as MariaDB 10.11.5 does and --help with ``help_text``."""
    path = tmp_path / "mariadb"
    path.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "mariadb  Ver 15.1 Distrib 10.11.5-MariaDB, for debian"; '
        f"else printf '%s\\n' '{help_text}'; fi\n"
    )
    path.chmod(0o755)
    return path


def test_a_mariadb_client_without_sandbox_is_refused_before_anything_is_loaded(tmp_path: Path) -> None:
    old = fake_client(tmp_path, "  --batch             Do not use history file.")
    dump = tmp_path / "dump.sql"
    dump.write_text("CREATE TABLE t (id int);\n")
    with pytest.raises(
        ToolMissingError,
        match=r"client program '.*/mariadb' \(MariaDB 10\.11\.5\) has no --sandbox option, without which a "
        r"dump could run commands on this host, so no dump is loaded with it \(the option came with "
        r"10\.5\.25, 10\.6\.18, 10\.11\.8, 11\.0\.6 and later\): install the Debian package mariadb-client",
    ):
        mariadb.restore_logical("no_such_conn", "drill_x_0123456789", dump, used_by="test", mariadb=str(old))


def test_a_mariadb_client_with_sandbox_passes_the_check(tmp_path: Path) -> None:
    new = fake_client(tmp_path, "  --sandbox           Disallow commands that access the file system")
    mariadb_session._require_sandbox(str(new), (10, 11, 8))  # no error
