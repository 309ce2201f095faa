"""Backup sources against the real sandbox: each dump run as the pipeline runs it, and its facts checked.

The orders and inventory databases are only read. Everything that writes (fingerprint changes, concurrent
writers, restores, roles with awkward passwords) happens in scratch databases named
``cloudops_test_fp_<random>``, dropped at the end of the test.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from psycopg import sql

from cloudops.engines import BackupSource, DumpCommand, mariadb, postgres
from cloudops.errors import (
    BackupSourceError,
    ConnectionMissingError,
    DatabaseUnavailableError,
    ToolMissingError,
    ToolVersionError,
)

pytestmark = pytest.mark.integration

PG = "sandbox_pg_primary"
MARIA = "sandbox_mariadb"
PG_USED_BY = "database 'orders_pg'"
MARIA_USED_BY = "database 'inventory_mariadb'"
CHANGE_MASTER = re.compile(r"^-- CHANGE MASTER TO MASTER_LOG_FILE='([^']+)', MASTER_LOG_POS=(\d+);$", re.M)
DUMP_TIMEOUT = 600


@pytest.fixture(autouse=True)
def _sandbox(sandbox_env: dict[str, str]) -> None:
    """Every test here needs the sandbox's connections."""


# -- helpers ---------------------------------------------------------------------------------------------


def fields(env: dict[str, str], conn_id: str) -> dict[str, Any]:
    return json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"])


def run_dump(command: DumpCommand, out: Path, *, started: bool = False) -> subprocess.CompletedProcess[bytes]:
    """Run the command as the pipeline does: its ``before_start``, then the program with env merged over
    ours, stdout read in pieces, each into the stream (a file here) and shown to ``observe_output``."""
    if command.before_start is not None and not started:
        command.before_start()
    process = subprocess.Popen(
        command.argv, env={**os.environ, **command.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        with out.open("wb") as stream:
            while chunk := process.stdout.read1(1024 * 1024):
                stream.write(chunk)
                if command.observe_output is not None:
                    command.observe_output(chunk)
        _, errors = process.communicate(timeout=DUMP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    return subprocess.CompletedProcess(command.argv, process.returncode, b"", errors)


def credential_files(workdir: Path) -> list[Path]:
    return sorted(workdir.iterdir()) if workdir.exists() else []


def assert_no_secret(source: BackupSource, password: str) -> None:
    shown = [*source.command.argv, source.command.description, json.dumps(source.facts)]
    shown += [f"{key}={value}" for key, value in source.command.env.items()]
    assert not [text for text in shown if password in text]


def pg_connect(env: dict[str, str], dbname: str) -> psycopg.Connection[Any]:
    c = fields(env, PG)
    return psycopg.connect(
        host=c["host"],
        port=c["port"],
        user=c["login"],
        password=c["password"],
        dbname=dbname,
        autocommit=True,
        connect_timeout=10,
    )


def maria_connect(env: dict[str, str], database: str | None) -> pymysql.Connection[Any]:
    c = fields(env, MARIA)
    return pymysql.connect(
        host=c["host"],
        port=c["port"],
        user=c["login"],
        password=c["password"],
        database=database,
        autocommit=True,
        connect_timeout=10,
        read_timeout=120,
    )


def maria_rows(session: pymysql.Connection[Any], query: str, *args: Any) -> list[tuple[Any, ...]]:
    with session.cursor() as cursor:
        cursor.execute(query, args or None)
        return list(cursor.fetchall())


def pg_direct_counts(env: dict[str, str], dbname: str, tables: list[str]) -> dict[str, int]:
    with pg_connect(env, dbname) as session:
        counts = {}
        for name in tables:
            schema, table = name.split(".")
            row = session.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            ).fetchone()
            counts[name] = row[0] if row else -1
        return counts


def pg_restore(env: dict[str, str], dump: Path, dbname: str) -> None:
    c = fields(env, PG)
    argv = ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "-h", c["host"]]
    argv += ["-p", str(c["port"]), "-U", c["login"], "-d", dbname, str(dump)]
    done = subprocess.run(
        argv,
        env={**os.environ, "PGPASSWORD": c["password"]},
        capture_output=True,
        text=True,
        timeout=DUMP_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def maria_restore(env: dict[str, str], dump: Path, database: str, tmp_path: Path) -> None:
    """Pipe the SQL into the ``mariadb`` client, the way a restore drill loads it."""
    c = fields(env, MARIA)
    option_file = tmp_path / "restore.cnf"
    option_file.write_text(f'[client]\npassword="{c["password"]}"\n')
    option_file.chmod(0o600)
    argv = [
        "mariadb",
        f"--defaults-extra-file={option_file}",
        "--protocol=TCP",
        f"--host={c['host']}",
        f"--port={c['port']}",
        f"--user={c['login']}",
        database,
    ]
    with dump.open("rb") as sql_text:
        done = subprocess.run(argv, stdin=sql_text, capture_output=True, timeout=DUMP_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr.decode()


def scratch_name() -> str:
    return f"cloudops_test_fp_{secrets.token_hex(4)}"


@pytest.fixture
def pg_scratch(sandbox_env: dict[str, str]) -> Iterator[Callable[[], str]]:
    """Create scratch PostgreSQL databases on demand; drop them all at the end."""
    created: list[str] = []

    def make() -> str:
        name = scratch_name()
        with pg_connect(sandbox_env, "postgres") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return name

    yield make
    with pg_connect(sandbox_env, "postgres") as admin:
        for name in created:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def maria_scratch(sandbox_env: dict[str, str]) -> Iterator[Callable[[], str]]:
    """Create scratch MariaDB databases on demand; drop them all at the end."""
    created: list[str] = []

    def make() -> str:
        name = scratch_name()
        with maria_connect(sandbox_env, None) as admin:
            maria_rows(admin, f"CREATE DATABASE `{name}`")
        created.append(name)
        return name

    yield make
    with maria_connect(sandbox_env, None) as admin:
        for name in created:
            maria_rows(admin, f"DROP DATABASE IF EXISTS `{name}`")


def pg_scratch_with_table(env: dict[str, str], make: Callable[[], str]) -> str:
    name = make()
    with pg_connect(env, name) as session:
        session.execute(
            """
            CREATE TABLE events (
                id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                kind text NOT NULL DEFAULT 'note',
                at timestamptz NOT NULL DEFAULT now()
            );
            CREATE INDEX events_kind_idx ON events (kind);
            INSERT INTO events (kind) SELECT 'seed' FROM generate_series(1, 100);
            """
        )
    return name


def maria_scratch_with_table(env: dict[str, str], make: Callable[[], str]) -> str:
    name = make()
    with maria_connect(env, name) as session:
        maria_rows(
            session,
            """CREATE TABLE events (
                   id BIGINT AUTO_INCREMENT PRIMARY KEY,
                   kind VARCHAR(16) NOT NULL DEFAULT 'note',
                   at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                   KEY events_kind_idx (kind)
               ) ENGINE=InnoDB""",
        )
        maria_rows(session, "INSERT INTO events (kind) SELECT 'seed' FROM seq_1_to_100")
    return name


class Writer:
    """A client that keeps committing single-row inserts until stopped: the busy application."""

    def __init__(self, connect: Callable[[], Any], insert: Callable[[Any], None]) -> None:
        self.connect, self.insert = connect, insert
        self.inserted = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the writer did not stop"

    def wait_for(self, count: int, timeout: float = 30) -> None:
        """Wait until ``count`` more rows have been committed; fail after ``timeout`` seconds."""
        target = self.inserted + count
        deadline = time.monotonic() + timeout
        while self.inserted < target and self.error is None and time.monotonic() < deadline:
            self._stop.wait(0.01)
        assert self.error is None, self.error
        assert self.inserted >= target, f"the writer committed {self.inserted} rows, wanted {target}"

    def _run(self) -> None:
        try:
            session = self.connect()
            try:
                while not self._stop.is_set():
                    self.insert(session)
                    self.inserted += 1
            finally:
                session.close()
        except BaseException as error:
            self.error = error


# -- PostgreSQL: logical ----------------------------------------------------------------------------------


@dataclass
class DumpRun:
    source: BackupSource
    output: Path
    returncode: int
    stderr: str
    finished: dict[str, Any]
    credentials_during: list[Path]
    modes_during: list[int]
    credentials_after: list[Path]


def dump_through(source_cm: Any, workdir: Path, output: Path) -> DumpRun:
    with source_cm as source:
        during = credential_files(workdir)
        modes = [stat.S_IMODE(path.stat().st_mode) for path in during]
        done = run_dump(source.command, output)
        finished = source.finish() if done.returncode == 0 else {}
    return DumpRun(
        source,
        output,
        done.returncode,
        done.stderr.decode(),
        finished,
        during,
        modes,
        credential_files(workdir),
    )


@pytest.fixture(scope="module")
def orders_dump(sandbox_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> DumpRun:
    """One logical dump of the orders database, shared by the tests that read it."""
    base = tmp_path_factory.mktemp("orders")
    workdir = base / "work"
    return dump_through(
        postgres.logical_backup_source(PG, "orders", used_by=PG_USED_BY, workdir=workdir),
        workdir,
        base / "orders.pgdump",
    )


def test_pg_logical_dump_is_a_custom_archive(orders_dump: DumpRun) -> None:
    assert orders_dump.returncode == 0, orders_dump.stderr
    listing = subprocess.run(
        ["pg_restore", "--list", str(orders_dump.output)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for table in ("customers", "orders", "order_items", "products"):
        assert re.search(rf"TABLE DATA public {table} ", listing), table
    command = orders_dump.source.command
    assert command.format == "pg_dump-custom"
    assert command.object_name == "orders.pgdump.zst"
    assert command.argv[1:4] == ["-Fc", "-Z0", command.argv[3]]
    assert command.argv[3].startswith("--snapshot=")
    assert orders_dump.finished == {}


def test_pg_logical_facts(orders_dump: DumpRun, sandbox_env: dict[str, str]) -> None:
    facts = orders_dump.source.facts
    json.dumps(facts)  # JSON-serialisable as it is
    assert facts["engine"] == "postgres"
    assert facts["engine_version"].startswith("15.")
    assert facts["tool_versions"]["pg_dump"].startswith("15.")
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", facts["position"]["lsn_start"])
    assert re.fullmatch(r"[0-9a-f]{64}", facts["schema_fingerprint"])
    counts = facts["row_counts"]
    seeded = {"public.customers", "public.orders", "public.order_items", "public.products"}
    # Beside the seeded tables, only our own probes' (the minute availability probe and the failover
    # drill's write probe write there, as the application would); they grow while the test runs.
    assert seeded <= set(counts)
    assert {t for t in counts if t not in seeded} <= {"public.cloudops_probe", "public.cloudops_drill_probe"}
    app = {t: n for t, n in counts.items() if t in seeded}
    assert app == pg_direct_counts(sandbox_env, "orders", list(app))


def test_pg_logical_password_only_in_a_private_file_that_is_removed(
    orders_dump: DumpRun, sandbox_env: dict[str, str]
) -> None:
    assert_no_secret(orders_dump.source, fields(sandbox_env, PG)["password"])
    (pgpass,) = orders_dump.credentials_during
    assert orders_dump.modes_during == [0o600]
    assert orders_dump.source.command.env["PGPASSFILE"] == str(pgpass)
    assert "--no-password" in orders_dump.source.command.argv
    assert orders_dump.credentials_after == []


def test_pg_logical_restore_reproduces_fingerprint_and_counts(
    orders_dump: DumpRun, sandbox_env: dict[str, str], pg_scratch: Callable[[], str]
) -> None:
    restored = pg_scratch()
    pg_restore(sandbox_env, orders_dump.output, restored)
    with pg_connect(sandbox_env, restored) as session:
        assert postgres.schema_fingerprint(session) == orders_dump.source.facts["schema_fingerprint"]
        assert postgres.table_row_counts(session) == orders_dump.source.facts["row_counts"]


def test_pg_logical_counts_and_dump_share_the_snapshot(
    sandbox_env: dict[str, str], pg_scratch: Callable[[], str], tmp_path: Path
) -> None:
    source_db = pg_scratch_with_table(sandbox_env, pg_scratch)

    def insert(session: psycopg.Connection[Any]) -> None:
        session.execute("INSERT INTO events (kind) VALUES ('live')")

    with Writer(lambda: pg_connect(sandbox_env, source_db), insert) as writer:
        writer.wait_for(20)
        run = dump_through(
            postgres.logical_backup_source(
                PG, source_db, used_by="database 'scratch'", workdir=tmp_path / "w"
            ),
            tmp_path / "w",
            tmp_path / "scratch.pgdump",
        )
        writer.wait_for(20)  # and it kept committing while the dump ran
    assert run.returncode == 0, run.stderr
    counted = run.source.facts["row_counts"]["public.events"]
    restored = pg_scratch()
    pg_restore(sandbox_env, run.output, restored)
    with pg_connect(sandbox_env, restored) as session:
        assert postgres.table_row_counts(session) == {"public.events": counted}
    assert pg_direct_counts(sandbox_env, source_db, ["public.events"])["public.events"] > counted


# -- PostgreSQL: physical ---------------------------------------------------------------------------------


def test_pg_physical_backup_is_a_tar_with_wal(sandbox_env: dict[str, str], tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    run = dump_through(
        postgres.physical_backup_source(PG, used_by=PG_USED_BY, workdir=workdir),
        workdir,
        tmp_path / "base.tar",
    )
    assert run.returncode == 0, run.stderr
    with tarfile.open(run.output) as archive:
        names = archive.getnames()
    run.output.unlink()  # 150 MB: not worth keeping in tmp
    assert "PG_VERSION" in names
    assert "backup_manifest" in names
    assert [n for n in names if re.fullmatch(r"pg_wal/[0-9A-F]{24}", n)]
    facts = run.source.facts
    assert run.source.command.format == "pg_basebackup-tar"
    assert run.source.command.object_name == "base.tar.zst"
    assert facts["tool_versions"]["pg_basebackup"].startswith("15.")
    assert facts["fingerprint_database"] == "orders"
    with pg_connect(sandbox_env, "orders") as session:
        assert facts["schema_fingerprint"] == postgres.schema_fingerprint(session)
    position = run.finished["position"]
    assert position["lsn_start"] == facts["position"]["lsn_start"]

    def lsn(text: str) -> int:
        high, low = text.split("/")
        return (int(high, 16) << 32) + int(low, 16)

    assert lsn(position["lsn_end"]) > lsn(position["lsn_start"])
    assert position["wal_file_start"] <= position["wal_file_end"]
    assert_no_secret(run.source, fields(sandbox_env, PG)["password"])
    assert run.modes_during == [0o600]
    assert run.credentials_after == []


# -- PostgreSQL: fingerprint ------------------------------------------------------------------------------


def test_pg_fingerprint_is_stable_and_sees_a_new_column(
    sandbox_env: dict[str, str], pg_scratch: Callable[[], str]
) -> None:
    first = pg_scratch_with_table(sandbox_env, pg_scratch)
    twin = pg_scratch_with_table(sandbox_env, pg_scratch)  # same DDL, other name and OIDs
    with pg_connect(sandbox_env, first) as session, pg_connect(sandbox_env, twin) as other:
        before = postgres.schema_fingerprint(session)
        assert postgres.schema_fingerprint(session) == before
        assert postgres.schema_fingerprint(other) == before
        session.execute("SET search_path = pg_catalog, public")  # a session setting changes nothing
        assert postgres.schema_fingerprint(session) == before
        assert session.execute("SHOW search_path").fetchone() == ("pg_catalog, public",)
        session.execute("ALTER TABLE public.events ADD COLUMN note text")
        after = postgres.schema_fingerprint(session)
        assert after != before
        session.execute("ALTER TABLE public.events DROP COLUMN note")
        assert postgres.schema_fingerprint(session) == before


# -- MariaDB ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inventory_dump(sandbox_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> DumpRun:
    """One dump of the inventory database, shared by the tests that read it."""
    base = tmp_path_factory.mktemp("inventory")
    workdir = base / "work"
    return dump_through(
        mariadb.logical_backup_source(MARIA, "inventory", used_by=MARIA_USED_BY, workdir=workdir),
        workdir,
        base / "inventory.sql",
    )


def test_maria_dump_is_sql_with_the_recorded_binlog_position(inventory_dump: DumpRun) -> None:
    assert inventory_dump.returncode == 0, inventory_dump.stderr
    text = inventory_dump.output.read_text()
    for table in ("items", "stock_levels", "warehouses"):
        assert f"CREATE TABLE `{table}`" in text
    (written,) = CHANGE_MASTER.findall(text)
    position = inventory_dump.source.facts["position"]
    assert written == (position["binlog_file"], str(position["binlog_position"]))
    command = inventory_dump.source.command
    assert command.format == "mariadb-dump-sql"
    assert command.object_name == "inventory.sql.zst"
    assert {"--single-transaction", "--master-data=2", "--routines", "--triggers", "--events"} <= set(
        command.argv
    )
    assert command.argv[-2:] == ["--", "inventory"]
    assert inventory_dump.finished["global_read_lock_seconds"] >= 0


def test_maria_facts(inventory_dump: DumpRun, sandbox_env: dict[str, str]) -> None:
    facts = inventory_dump.source.facts
    json.dumps(facts)
    assert facts["engine"] == "mariadb"
    assert facts["engine_version"].startswith("10.11.")
    assert facts["tool_versions"]["mariadb-dump"].startswith("10.11.")
    assert re.fullmatch(r"[0-9a-f]{64}", facts["schema_fingerprint"])
    counts = inventory_dump.finished["row_counts"]  # known once the dump has its snapshot
    assert "row_counts" not in facts
    seeded = {"items", "stock_levels", "warehouses"}
    # Beside the seeded tables, only our own probes' (minute availability, failover drill), which grow.
    assert seeded <= set(counts)
    assert {t for t in counts if t not in seeded} <= {"cloudops_probe", "cloudops_drill_probe"}
    app = {t: n for t, n in counts.items() if t in seeded}
    with maria_connect(sandbox_env, "inventory") as session:
        direct = {t: maria_rows(session, f"SELECT COUNT(*) FROM `{t}`")[0][0] for t in app}
    assert app == direct


def test_maria_password_only_in_a_private_option_file_that_is_removed(
    inventory_dump: DumpRun, sandbox_env: dict[str, str]
) -> None:
    assert_no_secret(inventory_dump.source, fields(sandbox_env, MARIA)["password"])
    (option_file,) = inventory_dump.credentials_during
    assert inventory_dump.modes_during == [0o600]
    assert inventory_dump.source.command.argv[1] == f"--defaults-extra-file={option_file}"
    assert inventory_dump.credentials_after == []


def test_maria_restore_reproduces_fingerprint_and_counts(
    inventory_dump: DumpRun, sandbox_env: dict[str, str], maria_scratch: Callable[[], str], tmp_path: Path
) -> None:
    restored = maria_scratch()
    maria_restore(sandbox_env, inventory_dump.output, restored, tmp_path)
    with maria_connect(sandbox_env, restored) as session:
        assert mariadb.schema_fingerprint(session) == inventory_dump.source.facts["schema_fingerprint"]
        assert mariadb.table_row_counts(session) == inventory_dump.finished["row_counts"]


def maria_insert(session: pymysql.Connection[Any]) -> None:
    maria_rows(session, "INSERT INTO events (kind) VALUES ('live')")


def test_maria_counts_and_dump_see_the_same_data_under_writes(
    sandbox_env: dict[str, str], maria_scratch: Callable[[], str], tmp_path: Path
) -> None:
    source_db = maria_scratch_with_table(sandbox_env, maria_scratch)
    workdir = tmp_path / "w"
    with Writer(lambda: maria_connect(sandbox_env, source_db), maria_insert) as writer:
        writer.wait_for(20)
        with mariadb.logical_backup_source(
            MARIA, source_db, used_by="database 'scratch'", workdir=workdir
        ) as source:
            # A slow pipeline start: the writer is held back by the lock until the dump has its snapshot.
            threading.Event().wait(0.3)
            done = run_dump(source.command, tmp_path / "scratch.sql")
            assert done.returncode == 0, done.stderr.decode()
            finished = source.finish()
        writer.wait_for(20)
    counted = finished["row_counts"]["events"]
    (written,) = CHANGE_MASTER.findall((tmp_path / "scratch.sql").read_text())
    assert written == (
        source.facts["position"]["binlog_file"],
        str(source.facts["position"]["binlog_position"]),
    )
    restored = maria_scratch()
    maria_restore(sandbox_env, tmp_path / "scratch.sql", restored, tmp_path)
    with maria_connect(sandbox_env, restored) as session:
        assert mariadb.table_row_counts(session) == {"events": counted}
    with maria_connect(sandbox_env, source_db) as session:
        assert maria_rows(session, "SELECT COUNT(*) FROM events")[0][0] > counted


def test_maria_lock_is_released_as_soon_as_the_dump_has_its_snapshot(
    sandbox_env: dict[str, str], maria_scratch: Callable[[], str], tmp_path: Path
) -> None:
    source_db = maria_scratch_with_table(sandbox_env, maria_scratch)
    with maria_connect(sandbox_env, source_db) as session:  # a few MB: more than the pipe and sockets hold
        maria_rows(session, "INSERT INTO events (kind) SELECT REPEAT('x', 16) FROM seq_1_to_100000")
    with mariadb.logical_backup_source(
        MARIA, source_db, used_by="database 'scratch'", workdir=tmp_path / "w", max_lock_wait_seconds=30
    ) as source:
        command = source.command
        assert command.observe_output is not None
        assert command.before_start is not None
        command.before_start()
        dump = subprocess.Popen(
            command.argv, env={**os.environ, **command.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert dump.stdout is not None
            first = dump.stdout.read1(64 * 1024)
            command.observe_output(first)  # the position comment is in the first piece
            # Nobody reads the rest yet, so the dump is stuck in its rows: this insert can only go
            # through because the comment was seen and the lock released, long before the 30 s bound.
            with maria_connect(sandbox_env, source_db) as writer:
                maria_rows(writer, "SET SESSION lock_wait_timeout = 20")
                maria_insert(writer)
            assert dump.poll() is None, "the dump ended before the lock was released"
            rest, errors = dump.communicate(timeout=DUMP_TIMEOUT)
            command.observe_output(rest)
        finally:
            if dump.poll() is None:
                dump.kill()
                dump.wait(timeout=30)
        assert dump.returncode == 0, errors.decode()
        finished = source.finish()
    assert finished["global_read_lock_seconds"] < 20
    output = first + rest
    (tmp_path / "rows.sql").write_bytes(output)
    (written,) = CHANGE_MASTER.findall(output.decode())
    assert written == (
        source.facts["position"]["binlog_file"],
        str(source.facts["position"]["binlog_position"]),
    )
    restored = maria_scratch()
    maria_restore(sandbox_env, tmp_path / "rows.sql", restored, tmp_path)
    with maria_connect(sandbox_env, restored) as session:
        assert mariadb.table_row_counts(session) == {"events": 100_100} == finished["row_counts"]


def test_maria_dump_not_seen_within_the_bound_fails_the_backup(
    sandbox_env: dict[str, str], maria_scratch: Callable[[], str], tmp_path: Path
) -> None:
    source_db = maria_scratch_with_table(sandbox_env, maria_scratch)
    workdir = tmp_path / "w"
    with mariadb.logical_backup_source(
        MARIA, source_db, used_by="database 'scratch'", workdir=workdir, max_lock_wait_seconds=1
    ) as source:
        assert source.command.before_start is not None
        source.command.before_start()  # the lock: the pipeline would start the dump right after
        # This insert waits for the lock, which is released when no dump showed up within 1 s ...
        with maria_connect(sandbox_env, source_db) as writer:
            maria_rows(writer, "SET SESSION lock_wait_timeout = 20")
            maria_insert(writer)
        # ... so the dump that starts now sees a row the counts would not: the backup fails as it reads.
        with pytest.raises(
            BackupSourceError,
            match=r"database 'scratch': mariadb-dump had not opened its snapshot within "
            r"backup\.max_lock_wait \(1 s\) .* released then so as not to block writes any longer",
        ):
            run_dump(source.command, tmp_path / "late.sql", started=True)
        with pytest.raises(BackupSourceError, match=r"the row counts cannot be vouched for"):
            source.finish()
    (written,) = CHANGE_MASTER.findall((tmp_path / "late.sql").read_text())
    assert int(written[1]) > source.facts["position"]["binlog_position"]
    assert credential_files(workdir) == []


def test_maria_lock_not_had_within_the_bound_fails_before_the_dump_starts(
    sandbox_env: dict[str, str], maria_scratch: Callable[[], str], tmp_path: Path
) -> None:
    source_db = maria_scratch_with_table(sandbox_env, maria_scratch)
    with maria_connect(sandbox_env, source_db) as slow:
        # A long write: FLUSH TABLES WITH READ LOCK waits for it, and every other write would queue behind.
        running = threading.Thread(
            target=maria_rows, args=(slow, "UPDATE events SET kind = IF(SLEEP(4) = 0, kind, kind) LIMIT 1")
        )
        running.start()
        try:
            threading.Event().wait(0.5)
            with mariadb.logical_backup_source(
                MARIA,
                source_db,
                used_by="database 'scratch'",
                workdir=tmp_path / "w",
                max_lock_wait_seconds=1,
            ) as source:
                assert source.command.before_start is not None
                with pytest.raises(
                    BackupSourceError,
                    match=r"database 'scratch': the global read lock .* could not be taken within "
                    r"backup\.max_lock_wait \(1 s\): a long write or DDL is running; .* nothing was dumped",
                ):
                    source.command.before_start()
        finally:
            running.join(timeout=30)
    assert credential_files(tmp_path / "w") == []


def test_maria_schema_changed_during_the_backup_fails_it(
    sandbox_env: dict[str, str], maria_scratch: Callable[[], str], tmp_path: Path
) -> None:
    source_db = maria_scratch_with_table(sandbox_env, maria_scratch)
    with mariadb.logical_backup_source(
        MARIA, source_db, used_by="database 'scratch'", workdir=tmp_path / "w"
    ) as source:
        done = run_dump(source.command, tmp_path / "ddl.sql")
        assert done.returncode == 0, done.stderr.decode()
        with maria_connect(sandbox_env, source_db) as session:
            maria_rows(session, "SET SESSION lock_wait_timeout = 20")
            maria_rows(session, "ALTER TABLE events ADD COLUMN note TEXT NULL")
        with pytest.raises(BackupSourceError, match=r"the schema changed during the backup \(DDL ran\)"):
            source.finish()


def test_maria_fingerprint_is_stable_and_sees_a_new_column(
    sandbox_env: dict[str, str], maria_scratch: Callable[[], str]
) -> None:
    first = maria_scratch_with_table(sandbox_env, maria_scratch)
    twin = maria_scratch_with_table(sandbox_env, maria_scratch)
    with maria_connect(sandbox_env, first) as session, maria_connect(sandbox_env, twin) as other:
        before = mariadb.schema_fingerprint(session)
        assert mariadb.schema_fingerprint(session) == before
        assert mariadb.schema_fingerprint(other) == before
        maria_rows(session, "ALTER TABLE events ADD COLUMN note TEXT NULL")
        assert mariadb.schema_fingerprint(session) != before
        maria_rows(session, "ALTER TABLE events DROP COLUMN note")
        assert mariadb.schema_fingerprint(session) == before


def test_maria_newest_timestamp_is_read_in_utc_whatever_the_session_zone(
    sandbox_env: dict[str, str], maria_scratch: Callable[[], str]
) -> None:
    from datetime import UTC, datetime

    database = maria_scratch()
    with maria_connect(sandbox_env, database) as session:
        maria_rows(session, "SET SESSION time_zone = '+00:00'")
        maria_rows(session, "CREATE TABLE stamps (at_ts TIMESTAMP NULL, at_dt DATETIME NULL)")
        maria_rows(session, "INSERT INTO stamps VALUES ('2024-03-01 12:00:00', '2024-03-01 12:00:00')")
        maria_rows(session, "SET SESSION time_zone = '+05:00'")  # a scratch server in another zone
        expected = datetime(2024, 3, 1, 12, tzinfo=UTC)
        assert mariadb.newest_timestamp(session, "stamps", "at_ts") == expected
        assert mariadb.newest_timestamp(session, "stamps", "at_dt") == expected
        assert maria_rows(session, "SELECT @@SESSION.time_zone") == [("+05:00",)]  # set back


# -- credentials with awkward characters -----------------------------------------------------------------

AWKWARD_PASSWORD = 'we:ird\\pa"ss #;*'


def test_pg_awkward_password_reaches_pg_dump(
    sandbox_env: dict[str, str],
    pg_scratch: Callable[[], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = pg_scratch_with_table(sandbox_env, pg_scratch)
    role = f"cloudops_test_{secrets.token_hex(4)}"
    with pg_connect(sandbox_env, database) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(AWKWARD_PASSWORD)
            )
        )
    try:
        with pg_connect(sandbox_env, database) as admin:
            # What a backup role needs on PostgreSQL 14+: read everything, own nothing.
            admin.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(role)))
        c = fields(sandbox_env, PG)
        monkeypatch.setenv(
            "AIRFLOW_CONN_AWKWARD_PG", json.dumps({**c, "login": role, "password": AWKWARD_PASSWORD})
        )
        run = dump_through(
            postgres.logical_backup_source(
                "awkward_pg", database, used_by="database 'awkward'", workdir=tmp_path / "w"
            ),
            tmp_path / "w",
            tmp_path / "awkward.pgdump",
        )
        assert run.returncode == 0, run.stderr
        assert run.source.facts["row_counts"] == {"public.events": 100}
        assert_no_secret(run.source, AWKWARD_PASSWORD)
    finally:
        with pg_connect(sandbox_env, database) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_maria_awkward_password_reaches_mariadb_dump(
    sandbox_env: dict[str, str],
    maria_scratch: Callable[[], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = maria_scratch_with_table(sandbox_env, maria_scratch)
    user = f"cloudops_test_{secrets.token_hex(4)}"
    c = fields(sandbox_env, MARIA)
    account = f"'{user}'@'{c['host']}'"
    with maria_connect(sandbox_env, None) as admin:
        maria_rows(admin, f"CREATE USER {account} IDENTIFIED BY %s", AWKWARD_PASSWORD)
    try:
        with maria_connect(sandbox_env, None) as admin:
            # The least a backup account needs: RELOAD for the global read lock, the rest to read.
            maria_rows(admin, f"GRANT RELOAD ON *.* TO {account}")
            maria_rows(
                admin, f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON `{database}`.* TO {account}"
            )
        monkeypatch.setenv(
            "AIRFLOW_CONN_AWKWARD_MARIA", json.dumps({**c, "login": user, "password": AWKWARD_PASSWORD})
        )
        run = dump_through(
            mariadb.logical_backup_source(
                "awkward_maria", database, used_by="database 'awkward'", workdir=tmp_path / "w"
            ),
            tmp_path / "w",
            tmp_path / "awkward.sql",
        )
        assert run.returncode == 0, run.stderr
        assert run.finished["row_counts"] == {"events": 100}
        assert_no_secret(run.source, AWKWARD_PASSWORD)
    finally:
        with maria_connect(sandbox_env, None) as admin:
            maria_rows(admin, f"DROP USER IF EXISTS {account}")


# -- faults -----------------------------------------------------------------------------------------------

SOURCES: dict[str, Callable[..., Any]] = {
    "pg_logical": lambda conn_id, workdir, **tool: postgres.logical_backup_source(
        conn_id, "orders", used_by="database 'target'", workdir=workdir, **tool
    ),
    "pg_physical": lambda conn_id, workdir, **tool: postgres.physical_backup_source(
        conn_id, used_by="database 'target'", workdir=workdir, **tool
    ),
    "mariadb": lambda conn_id, workdir, **tool: mariadb.logical_backup_source(
        conn_id, "inventory", used_by="database 'target'", workdir=workdir, **tool
    ),
}
TOOL_PARAMETER = {"pg_logical": "pg_dump", "pg_physical": "pg_basebackup", "mariadb": "mariadb_dump"}
PACKAGE = {"pg_logical": "postgresql-client", "pg_physical": "postgresql-client", "mariadb": "mariadb-client"}
OLD_VERSION_OUTPUT = {
    "pg_logical": "pg_dump (PostgreSQL) 11.22",
    "pg_physical": "pg_basebackup (PostgreSQL) 11.22",
    "mariadb": "mariadb-dump  Ver 10.19 Distrib 10.5.2-MariaDB, for debian-linux-gnu (x86_64)",
}
SANDBOX_CONN = {"pg_logical": PG, "pg_physical": PG, "mariadb": MARIA}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fake_tool(tmp_path: Path, name: str, version_output: str) -> Path:
    script = tmp_path / "bin" / name
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!/bin/sh\necho '{version_output}'\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("kind", list(SOURCES))
def test_unreachable_server_is_named_before_anything_starts(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = "mysql" if kind == "mariadb" else "postgres"
    port = free_port()
    monkeypatch.setenv(
        "AIRFLOW_CONN_DEAD_DB",
        json.dumps({"conn_type": engine, "host": "127.0.0.1", "port": port, "login": "x", "password": "y"}),
    )
    with pytest.raises(DatabaseUnavailableError) as raised, SOURCES[kind]("dead_db", tmp_path / "w"):
        pytest.fail("a source for a dead server was created")
    message = str(raised.value)
    assert message.startswith(f"database 'target' is unavailable at 127.0.0.1:{port}: ")
    assert "refused" in message.lower()
    assert "\n" not in message
    assert credential_files(tmp_path / "w") == []


@pytest.mark.parametrize("kind", list(SOURCES))
def test_missing_connection_is_named(kind: str, tmp_path: Path) -> None:
    with (
        pytest.raises(ConnectionMissingError, match="'no_such_conn' \\(used by database 'target'\\)"),
        SOURCES[kind]("no_such_conn", tmp_path / "w"),
    ):
        pytest.fail("a source without a connection was created")


@pytest.mark.parametrize("kind", list(SOURCES))
def test_missing_tool_names_the_package(kind: str, tmp_path: Path) -> None:
    tool = {TOOL_PARAMETER[kind]: str(tmp_path / "nowhere" / "dump-tool")}
    with pytest.raises(ToolMissingError) as raised, SOURCES[kind](SANDBOX_CONN[kind], tmp_path / "w", **tool):
        pytest.fail("a source with a missing tool was created")
    assert "dump-tool" in str(raised.value)
    assert f"install the Debian package {PACKAGE[kind]}" in str(raised.value)


@pytest.mark.parametrize("kind", list(SOURCES))
def test_too_old_tool_is_refused_with_both_versions(kind: str, tmp_path: Path) -> None:
    old = fake_tool(tmp_path, TOOL_PARAMETER[kind], OLD_VERSION_OUTPUT[kind])
    tool = {TOOL_PARAMETER[kind]: str(old)}
    with pytest.raises(ToolVersionError) as raised, SOURCES[kind](SANDBOX_CONN[kind], tmp_path / "w", **tool):
        pytest.fail("a source with an old tool was created")
    message = str(raised.value)
    if kind == "mariadb":
        assert re.search(r"mariadb-dump 10\.5\.2 is older than .*\(MariaDB 10\.11\.\d+\)", message), message
        assert "upgrade the Debian package mariadb-client (10.11 or newer)" in message
    else:
        assert re.search(r"11\.22 is older than .*\(PostgreSQL 15\.\d+\)", message), message
        assert "upgrade the Debian package postgresql-client-15 (or newer)" in message
    assert credential_files(tmp_path / "w") == []


def test_newer_tool_is_accepted(
    sandbox_env: dict[str, str], pg_scratch: Callable[[], str], tmp_path: Path
) -> None:
    newer = fake_tool(tmp_path, "pg_dump", "pg_dump (PostgreSQL) 16.4")
    database = pg_scratch_with_table(sandbox_env, pg_scratch)
    with postgres.logical_backup_source(
        PG, database, used_by="database 'scratch'", workdir=tmp_path / "w", pg_dump=str(newer)
    ) as source:
        assert source.command.argv[0] == str(newer)
        assert source.facts["tool_versions"] == {"pg_dump": "16.4"}


@pytest.mark.parametrize("kind", ["pg_logical", "mariadb"])
def test_credentials_and_lock_are_dropped_when_the_pipeline_fails(
    kind: str,
    sandbox_env: dict[str, str],
    pg_scratch: Callable[[], str],
    maria_scratch: Callable[[], str],
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "w"
    if kind == "mariadb":
        database = maria_scratch_with_table(sandbox_env, maria_scratch)
        source_cm = mariadb.logical_backup_source(
            MARIA, database, used_by="database 'scratch'", workdir=workdir
        )
    else:
        database = pg_scratch_with_table(sandbox_env, pg_scratch)
        source_cm = postgres.logical_backup_source(
            PG, database, used_by="database 'scratch'", workdir=workdir
        )
    inside: list[Path] = []

    def pipeline_fails() -> None:
        with source_cm:
            inside.extend(credential_files(workdir))
            raise RuntimeError("upload failed")

    with pytest.raises(RuntimeError, match="upload failed"):
        pipeline_fails()
    assert len(inside) == 1
    assert credential_files(workdir) == []
    if kind == "mariadb":  # the global read lock went with the context: writes go through at once
        with maria_connect(sandbox_env, database) as writer:
            maria_rows(writer, "SET SESSION lock_wait_timeout = 5")
            maria_insert(writer)
