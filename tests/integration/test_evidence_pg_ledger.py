"""The PostgreSQL evidence ledger against the sandbox's ``cloudops_evidence`` database.

Every test has a schema of its own (one chain per schema), dropped afterwards. Writers in other
processes are started with ``spawn`` (no fork, no inherited connection) and begin together at a barrier.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import queue
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cloudops.cli import main
from cloudops.evidence.export import build_pack
from cloudops.evidence.migration import MigrationError, migrate_to_postgres
from cloudops.evidence.pg_ledger import PgLedger, conninfo_of
from tests.evidence_samples import write_sample_ledger

pytestmark = pytest.mark.integration

CONN_ID = "cloudops_evidence_db"
WRITERS = 4
PER_WRITER = 150
SHARED_KEYS = 40  # every writer tries to record these: each must be written once


@pytest.fixture(scope="module")
def conninfo(sandbox_env: dict[str, str]) -> str:
    if f"AIRFLOW_CONN_{CONN_ID.upper()}" not in sandbox_env:
        pytest.fail(f"the sandbox env file has no {CONN_ID} connection: run `make sandbox` again")
    return conninfo_of(CONN_ID)


@pytest.fixture
def schema(conninfo: str) -> Iterator[str]:
    name = f"itest_{secrets.token_hex(4)}"
    yield name
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def book(schema: str, sandbox_env: dict[str, str]) -> Iterator[PgLedger]:
    ledger = PgLedger(CONN_ID, schema=schema)  # through the Airflow connection, as deployed
    yield ledger
    ledger.close()


def tamper(conninfo: str, schema: str, statement: str, params: list[Any] | None = None) -> None:
    """Change the rows as a superuser would: with the append-only triggers switched off."""
    with psycopg.connect(conninfo) as conn:
        conn.execute(f"ALTER TABLE {schema}.records DISABLE TRIGGER USER")
        conn.execute(statement.format(schema=schema), params or [])
        conn.execute(f"ALTER TABLE {schema}.records ENABLE TRIGGER USER")


def _writer(
    conninfo: str, schema: str, number: int, skew_seconds: float, batch: int, barrier: Any, results: Any
) -> None:
    """One writer process: its own records, the shared keys, with its clock ``skew_seconds`` off."""
    ledger = PgLedger(conninfo=conninfo, schema=schema)
    ledger.clock()  # connected (and the schema there) before the start
    barrier.wait(timeout=60)
    entries = []
    for i in range(PER_WRITER):
        host_clock = datetime.now(UTC) + timedelta(seconds=skew_seconds)
        entries.append(("step.try", f"w{number}|{i}", host_clock, {"data": {"writer": number, "i": i}}))
        if i < SHARED_KEYS:
            entries.append(("step.try", f"shared|{i}", host_clock, {"data": {"writer": number}}))
    written = 0
    for start in range(0, len(entries), batch):
        written += len(ledger.append_many(entries[start : start + batch]))
    ledger.close()
    results.put((number, written))


def run_writers(conninfo: str, schema: str, *, batch: int) -> list[int]:
    """Start the writers (spawned: nothing inherited), wait for each (bounded), return what each wrote."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(WRITERS), context.Queue()
    skews = [-30.0, 30.0, -3.0, 3.0][:WRITERS]  # seconds: the hosts' clocks disagree
    processes = [
        context.Process(target=_writer, args=(conninfo, schema, n, skews[n], batch, barrier, results))
        for n in range(WRITERS)
    ]
    for process in processes:
        process.start()
    written: dict[int, int] = {}
    deadline = time.monotonic() + 180
    while len(written) < WRITERS and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            number, count = results.get(timeout=0.5)
            written[number] = count
            continue
        if not any(process.is_alive() for process in processes):
            break  # a writer died without a result: its exit code below says so
    for process in processes:
        process.join(timeout=30)
    assert [process.exitcode for process in processes] == [0] * WRITERS
    return [written[n] for n in range(WRITERS)]


@pytest.mark.parametrize("batch", [1, 25])
def test_writers_in_several_processes_make_one_chain_without_fork_gap_or_a_key_twice(
    conninfo: str, schema: str, book: PgLedger, batch: int
) -> None:
    written = run_writers(conninfo, schema, batch=batch)

    verdict = book.verify()
    records = list(book.records())
    expected = WRITERS * PER_WRITER + SHARED_KEYS
    assert verdict.ok, verdict.problem
    assert sum(written) == expected == verdict.records == len(records)
    assert [r.seq for r in records] == list(range(1, expected + 1))  # no gap
    assert all(r.prev == before.hash for before, r in itertools.pairwise(records))  # no fork
    keys = [r.key for r in records]
    assert len(set(keys)) == len(keys)
    assert {k for k in keys if k.startswith("shared|")} == {f"shared|{i}" for i in range(SHARED_KEYS)}
    # Sequence order defines the chain; `at` is the database's clock and never goes back along it,
    # while the writers' own clocks (host_at), 60 s apart, interleave out of order.
    assert [r.at for r in records] == sorted(r.at for r in records)
    host_clocks = [r.fields["host_at"] for r in records]
    assert host_clocks != sorted(host_clocks)
    assert {r.fields["data"]["writer"] for r in records} == set(range(WRITERS))


def test_a_retried_key_is_recorded_once(book: PgLedger) -> None:
    first = book.append("step.try", key="step.try|dag|run|task|1", data={"state": "failed"})
    again = book.append("step.try", key="step.try|dag|run|task|1", data={"state": "failed"})
    batch = book.append_many(
        [("step.try", "step.try|dag|run|task|1", None, {}), ("step.try", "step.try|dag|run|task|2", None, {})]
    )

    assert first is not None
    assert first.seq == 1
    assert again is None
    assert [r.key for r in batch] == ["step.try|dag|run|task|2"]
    assert batch[0].prev == first.hash
    assert book.verify().records == 2


def test_rows_cannot_be_changed_without_switching_the_triggers_off(conninfo: str, book: PgLedger) -> None:
    book.append("x", data={})
    with psycopg.connect(conninfo) as conn, pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute(f"UPDATE {book.schema}.records SET kind = 'y'")
    with psycopg.connect(conninfo) as conn, pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute(f"TRUNCATE {book.schema}.records")


@pytest.fixture
def filled(book: PgLedger) -> PgLedger:
    book.append_many([("step.try", None, None, {"data": {"i": i}}) for i in range(10)])
    assert book.verify().ok
    return book


def test_verify_names_a_record_whose_line_was_altered(conninfo: str, filled: PgLedger) -> None:
    tamper(
        conninfo,
        filled.schema,
        "UPDATE {schema}.records SET line = convert_to(replace(convert_from(line, 'UTF8'), "
        "'\"i\":4', '\"i\":5'), 'UTF8') WHERE seq = 5",
    )

    verdict = filled.verify()

    assert not verdict.ok
    assert "record seq 5" in str(verdict.problem)
    assert "altered" in str(verdict.problem)
    assert verdict.last_seq == 4


def test_verify_names_a_record_removed_from_the_middle(conninfo: str, filled: PgLedger) -> None:
    tamper(conninfo, filled.schema, "DELETE FROM {schema}.records WHERE seq = 7")

    verdict = filled.verify()

    assert not verdict.ok
    assert "record seq 7 is missing" in str(verdict.problem)


def test_verify_names_records_cut_off_at_the_end(conninfo: str, filled: PgLedger) -> None:
    tamper(conninfo, filled.schema, "DELETE FROM {schema}.records WHERE seq >= 9")

    verdict = filled.verify()

    assert not verdict.ok
    assert "chain head says seq 10" in str(verdict.problem)
    assert "end at seq 8" in str(verdict.problem)


def test_verify_names_a_hash_column_that_disagrees_with_its_line(conninfo: str, filled: PgLedger) -> None:
    tamper(conninfo, filled.schema, "UPDATE {schema}.records SET hash = repeat('a', 64) WHERE seq = 3")

    verdict = filled.verify()

    assert not verdict.ok
    assert "record seq 3" in str(verdict.problem)
    assert "hash column" in str(verdict.problem)


def test_migration_copies_the_file_ledger_byte_for_byte_and_refuses_another_chain(
    tmp_path: Path,
    conninfo: str,
    schema: str,
    sandbox_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_sample_ledger(tmp_path / "ledger")
    expected = source.verify()

    code = main(
        ["evidence", "migrate", "--to", "postgres", "--ledger", str(source.directory), "--schema", schema]
    )

    out = capsys.readouterr().out
    assert code == 0, out
    assert f"copied {expected.records} records" in out
    target = PgLedger(conninfo=conninfo, schema=schema)
    copy = target.verify()
    assert copy.ok
    assert (copy.last_seq, copy.last_hash) == (expected.last_seq, expected.last_hash)
    assert target.read_segments() == source.read_segments()
    # The same export from either backend: the same records, byte for byte, the same anchors.
    days = [date.fromisoformat(name[:10]) for name, _ in source.read_segments()]
    ours, theirs = build_pack(target, days[0], days[-1]), build_pack(source, days[0], days[-1])
    assert ours.files()["records.jsonl"] == theirs.files()["records.jsonl"]
    assert ours.anchors == theirs.anchors

    # Again: the same chain is already there, nothing is copied.
    assert migrate_to_postgres(source, target).already
    # Another chain in the target is refused, and left as it was.
    other = write_sample_ledger(tmp_path / "other")
    other.append("step.try", data={"one": "more"})
    with pytest.raises(MigrationError, match="already holds another chain"):
        migrate_to_postgres(other, target)
    assert target.verify().last_hash == expected.last_hash


def test_migration_refuses_a_file_ledger_that_does_not_verify(
    tmp_path: Path, conninfo: str, schema: str
) -> None:
    source = write_sample_ledger(tmp_path / "ledger")
    segment = source.segment_files()[0]
    segment.write_bytes(segment.read_bytes().replace(b'"state":"success"', b'"state":"failed!"', 1))
    target = PgLedger(conninfo=conninfo, schema=schema)

    with pytest.raises(MigrationError, match="does not verify"):
        migrate_to_postgres(source, target)
    assert target.verify().records == 0


def test_the_auditor_view_reads_the_postgres_ledger(
    tmp_path: Path, conninfo: str, schema: str, monkeypatch: pytest.MonkeyPatch, sandbox_env: dict[str, str]
) -> None:
    from airflow.api_fastapi.app import _AuthManagerState
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    from cloudops.evidence.view import create_app

    source = write_sample_ledger(tmp_path / "ledger")
    migrate_to_postgres(source, PgLedger(conninfo=conninfo, schema=schema))
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_BACKEND", "postgres")
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DB_SCHEMA", schema)
    monkeypatch.setattr(_AuthManagerState, "instance", SimpleAuthManager())
    app = create_app()
    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="auditor", role="viewer")
    with TestClient(app) as client:
        page = client.get("/runs", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert f"{source.verify().records} records" in page.text.replace(",", "")
        assert page.text.count('<a href="run?dag_id=') == 4
        tamper(conninfo, schema, "DELETE FROM {schema}.records WHERE seq = 3")
        broken = client.get("/runs", headers={"Accept": "text/html"})
        assert "record seq 3 is missing" in broken.text
        assert client.get("/pack").status_code == 409


def test_shipping_from_the_postgres_ledger(
    tmp_path: Path, conninfo: str, schema: str, bucket: str, sandbox_env: dict[str, str]
) -> None:
    from cloudops.evidence.shipping import ShippingSettings, ship_closed_segments, verify_shipped

    source = write_sample_ledger(tmp_path / "ledger")
    book = PgLedger(conninfo=conninfo, schema=schema)
    migrate_to_postgres(source, book)
    book.append("step.try", key="today", data={})  # today, by the database's clock: not closed yet
    settings = ShippingSettings(
        bucket=bucket,
        aws_conn_id="sandbox_aws",
        signing_conn_id="cloudops_evidence_signing",
        lock_days=1,
    )

    result = ship_closed_segments(book, settings)

    days = [name[:10] for name, _ in source.read_segments()]
    assert result.shipped == days
    assert result.ledger_id == book.stored_ledger_id()
    assert result.waiting == [book.clock().date().isoformat()]
    assert sorted(book.read_shipped()) == days
    verdict = verify_shipped(book, settings)
    assert verdict.ok, verdict.problem
    assert verdict.days == len(days)
    assert verdict.last_seq == source.verify().last_seq
    # Shipped again: nothing new. A shipped day changed in the database is named, not shipped again.
    assert ship_closed_segments(book, settings).already == len(days)
    tamper(
        conninfo,
        schema,
        "UPDATE {schema}.records SET line = convert_to(replace(convert_from(line, 'UTF8'), "
        "'success', 'failure'), 'UTF8') WHERE seq = 2",
    )
    after = verify_shipped(book, settings)
    assert not after.ok
    assert "record seq 2" in str(after.problem) or "differs" in str(after.problem)
    assert json.loads(json.dumps(result.to_json()))["shipped"] == days


def test_the_recorder_and_the_cli_use_the_postgres_ledger_when_configured(
    conninfo: str, schema: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloudops.evidence import recorder

    monkeypatch.setenv("CLOUDOPS_EVIDENCE_BACKEND", "postgres")
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DB_SCHEMA", schema)
    monkeypatch.setattr(recorder, "_ledgers", {})
    for try_number in (1, 1, 2):  # the first try's hook fires twice
        recorder.record(
            "step.try",
            dag_id="backup__orders_pg",
            run_id="manual__1",
            key=f"step.try|backup__orders_pg|manual__1|dump|-1|{try_number}",
            data={"try_number": try_number, "password": "hunter2"},
        )

    book = PgLedger(conninfo=conninfo, schema=schema)
    records = list(book.records())
    assert [r.fields["data"]["try_number"] for r in records] == [1, 2]
    assert "hunter2" not in json.dumps([r.fields for r in records])  # masked as with files
    assert main(["evidence", "verify"]) == 0
    assert f"PostgreSQL ledger {schema} (connection {CONN_ID}): 2 records" in capsys.readouterr().out
    tamper(conninfo, schema, "DELETE FROM {schema}.records WHERE seq = 2")
    assert main(["evidence", "verify"]) == 1
    assert "chain head says seq 2" in capsys.readouterr().err


def test_a_forked_child_neither_reuses_nor_ends_the_parents_connection(book: PgLedger) -> None:
    import os

    book.append("parent", data={"n": 1})
    child = os.fork()  # as LocalExecutor starts a task: the ledger object comes along
    if child == 0:
        code = 1
        try:
            code = 0 if book.append("child", data={"pid": os.getpid()}) is not None else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)

    after = book.append("parent", data={"n": 2})  # the parent's session survived the child's exit

    assert os.waitstatus_to_exitcode(status) == 0
    assert after is not None
    assert [r.kind for r in book.records()] == ["parent", "child", "parent"]
    assert book.verify().ok
