"""Evidence packs: the report's figures by control, masking and escaping, and verify_pack naming damage."""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudops.cli import main
from cloudops.evidence.export import (
    MANIFEST_FILE,
    RECORDS_FILE,
    REPORT_FILE,
    build_pack,
    export_pack,
    pack_zip_bytes,
    scope_pack,
    verify_pack,
    write_pack,
)
from cloudops.evidence.ledger import Ledger, LedgerError
from cloudops.evidence.report import backup_summaries, change_rows, drill_rows
from cloudops.evidence.runs import fold_runs, runbook_of
from cloudops.secrets import mask_secrets

pytestmark = pytest.mark.unit

NOV = date(2026, 11, 1), date(2026, 11, 30)
GENERATED = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
SECRET = "hunter2-very-secret"


class Recorder:
    """Writes records as cloudops.evidence.recorder does: run fields, and data through mask_secrets."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def __call__(
        self, kind: str, dag_id: str, run_id: str, at: datetime, data: dict[str, Any], **fields: Any
    ):
        runbook, target = runbook_of(dag_id)
        body = {"dag_id": dag_id, "run_id": run_id, "runbook": runbook, "target": target, **fields}
        self.ledger.append(kind, at=at, **body, data=mask_secrets(data))

    def run(
        self,
        dag_id: str,
        start: datetime,
        *,
        state: str = "success",
        user: str | None = None,
        conf: dict[str, Any] | None = None,
        steps: tuple[tuple[str, str, str | None], ...] = (("work", "success", None),),
        facts: tuple[tuple[str, dict[str, Any]], ...] = (),
        minutes: int = 10,
    ) -> str:
        run_id = f"{'manual' if user else 'scheduled'}__{start.isoformat()}"
        triggered_by = "ui" if user else "timetable"
        started = {
            "run_type": "manual" if user else "scheduled",
            "triggered_by": triggered_by,
            "triggered_by_user": user,
            "conf": conf or {},
            "logical_date": start.isoformat(),
        }
        self("run.started", dag_id, run_id, start, started)
        at = start
        for number, (task_id, step_state, error) in enumerate(steps, start=1):
            at = start + timedelta(minutes=number)
            self(
                "step.try",
                dag_id,
                run_id,
                at,
                {"state": step_state, "error": error, "duration_seconds": 30.0, "hostname": "worker-1"},
                task_id=task_id,
                map_index=-1,
                try_number=1,
            )
        for kind, data in facts:
            at += timedelta(seconds=5)
            self(kind, dag_id, run_id, at, data)
        self(
            "run.finished",
            dag_id,
            run_id,
            start + timedelta(minutes=minutes),
            {"state": state, "triggered_by_user": user, "duration_seconds": minutes * 60.0},
        )
        return run_id


def _backup(database: str, backup_id: str) -> tuple[str, dict[str, Any]]:
    return "backup.taken", {
        "estate": "prod",
        "database": database,
        "engine": "postgres",
        "method": "logical",
        "backup_id": backup_id,
        "bucket": "backups",
        "manifest_key": f"prod/{database}/{backup_id}/manifest.json",
        "size_bytes": 5 * 1024**3,
        "objects": [{"name": "dump.zst", "size": 5 * 1024**3, "sha256": "ab" * 32}],
        "locked_until": "2026-12-30T02:00:00Z",
    }


def _drill(passed: bool, rto: float, checks: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return "drill.recorded", {
        "estate": "prod",
        "database": "orders_pg",
        "backup_id": "20261110T020000Z-aaaaaa",
        "passed": passed,
        "rto_seconds": rto,
        "rpo_seconds": 7200.0,
        "rto_target_seconds": 3600,
        "rpo_target_seconds": 86400,
        "targets_met": rto <= 3600,
        "checksums_verified": True,
        "checks": checks,
        "record_uri": "s3://x/y.json",
    }


def at(day: int, hour: int = 2, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """A November of runs, with a run straddling each end of the month."""
    ledger = Ledger(tmp_path / "ledger", fsync=False)
    rec = Recorder(ledger)
    # Started before the period (Oct 31), finished in it: not in the report, its records are.
    rec.run("backup__orders_pg", at(31, 23, 55, month=10), minutes=20, facts=(_backup("orders_pg", "b-oct"),))
    rec.run("backup__orders_pg", at(2), facts=(_backup("orders_pg", "20261102T020000Z-a1"),))
    rec.run("backup__orders_pg", at(3), facts=(_backup("orders_pg", "20261103T020000Z-a2"),))
    rec.run(
        "backup__orders_pg",
        at(4),
        state="failed",
        steps=(("dump", "failed", "pg_dump: error: connection to server lost"),),
    )
    rec.run("backup__billing_my", at(4, 3), facts=(_backup("billing_my", "20261104T030000Z-b1"),))
    rec.run(
        "restore_drill__orders_pg",
        at(10, 4),
        minutes=40,
        facts=(
            _drill(
                True,
                312.5,
                [
                    {"name": "row_count_orders", "passed": True, "expected": 1000, "observed": 1000},
                    {"name": "checksums", "passed": True, "expected": "all", "observed": "all"},
                ],
            ),
        ),
    )
    rec.run(
        "restore_drill__orders_pg",
        at(17, 4),
        state="failed",
        minutes=90,
        facts=(
            _drill(
                False,
                4000.0,
                [
                    {"name": "row_count_orders", "passed": False, "expected": 1000, "observed": 998},
                    {"name": "checksums", "passed": True, "expected": "all", "observed": "all"},
                ],
            ),
        ),
    )
    rec.run(
        "restore_request",
        at(20, 14),
        user="alice",
        conf={
            "database": "orders_pg",
            "target": "orders_restored",
            "password": SECRET,
            "source": f"postgres://admin:{SECRET}@db.internal/orders",
            "note": HOSTILE,
        },
        steps=(("approve", "success", None), ("restore", "success", None)),
        facts=(
            (
                "approval",
                {
                    "subject": "restore orders_pg",
                    "decision": "Approve",
                    "approver": "bob",
                    "requested_by": "alice",
                    "responded_at": "2026-11-20T14:05:00Z",
                    "accepted": True,
                },
            ),
            (
                "restore.performed",
                {
                    "estate": "prod",
                    "database": "orders_pg",
                    "backup_id": "20261103T020000Z-a2",
                    "target_database": "orders_restored",
                    "overwrite": False,
                    "requested_by": "alice",
                    "approved_by": "bob",
                },
            ),
        ),
    )
    rec.run(
        "backup__orders_pg",
        at(25, 16),
        user=HOSTILE,
        conf={"reason": "before migration"},
        facts=(_backup("orders_pg", "20261125T160000Z-a3"),),
    )
    # Started on the last day, finished on Dec 1: in the report, and Dec 1 joins the pack.
    rec.run(
        "restore_drill__billing_my",
        at(30, 23, 50),
        minutes=30,
        state="failed",
        steps=(("restore", "failed", "mariadb: ERROR 2013 lost connection"),),
    )
    # Started on Dec 1, between the two: in records.jsonl, not in the report.
    rec.run("backup__billing_my", at(1, 0, 5, month=12), minutes=5)
    rec.run("backup__billing_my", at(2, 0, 5, month=12), minutes=5)
    return ledger


def _export(ledger: Ledger, tmp_path: Path) -> Path:
    out = tmp_path / "pack"
    export_pack(ledger, *NOV, out, generated_at=GENERATED)
    return out


def _cells(html: str, first_cell: str) -> list[str]:
    """The cells of the table row that starts with ``first_cell``."""
    for row in re.findall(r"<tr>(.*?)</tr>", html):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row for {first_cell}")


def test_report_shows_success_rates_drills_and_approvals(ledger: Ledger, tmp_path: Path) -> None:
    html = (_export(ledger, tmp_path) / REPORT_FILE).read_text()
    orders = _cells(html, "orders_pg")
    # 4 backup runs of orders_pg started in November (the October one is not), 3 successful.
    assert orders[3:8] == ["4", "3", '<span class="bad">1</span>', "0", "75.0 %"]
    assert _cells(html, "billing_my")[3:8] == ["1", "1", "0", "0", "100.0 %"]
    assert "pg_dump: error: connection to server lost" in html
    assert "312.5 s (5 min 12 s) / target 3,600 s (1 h 00 min): " in html
    assert "4,000 s (1 h 06 min) / target" in html
    assert "row_count_orders (expected <code>1000</code>, observed <code>998</code>)" in html
    assert "no drill record: failed at restore: mariadb: ERROR 2013 lost connection" in html
    assert "bob: Approve" in html
    assert "restored orders_pg backup 20261103T020000Z-a2 into orders_restored" in html
    assert "none recorded" in html, "the manual backup without approval is flagged"
    assert "b-oct" not in html
    assert "1 run(s) have records in this pack but started before 2026-11-01" in html


def test_summaries_are_pure_functions_of_runs(ledger: Ledger) -> None:
    runs = [
        r for r in fold_runs(ledger.records()) if "2026-11-01" <= (r.started_at or "")[:10] <= "2026-11-30"
    ]
    rates = {s.target: s.success_rate for s in backup_summaries(runs)}
    assert rates == {"billing_my": 1.0, "orders_pg": 0.75}
    assert [(d.target, d.passed, d.rto_seconds) for d in drill_rows(runs)] == [
        ("billing_my", False, None),
        ("orders_pg", True, 312.5),
        ("orders_pg", False, 4000.0),
    ]
    changes = change_rows(runs)
    assert [(c.runbook, c.triggered_by_user, c.approved) for c in changes] == [
        ("restore_request", "alice", True),
        ("backup", HOSTILE, False),
    ]


def test_secrets_are_masked_when_recorded_and_never_reach_the_pack(ledger: Ledger, tmp_path: Path) -> None:
    out = _export(ledger, tmp_path)
    for name in (RECORDS_FILE, REPORT_FILE, MANIFEST_FILE):
        assert SECRET.encode() not in (out / name).read_bytes(), name
    assert "&quot;password&quot;: &quot;***&quot;" in (out / REPORT_FILE).read_text()


def test_hostile_values_are_escaped_and_the_page_needs_nothing_outside(
    ledger: Ledger, tmp_path: Path
) -> None:
    html = (_export(ledger, tmp_path) / REPORT_FILE).read_text()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script" not in html
    assert "<img" not in html
    assert not re.search(r"""<[a-z]+[^>]*\s(src|href)=|@import|url\(""", html), "no external asset"


def test_pack_holds_whole_days_as_one_contiguous_piece_of_chain(ledger: Ledger, tmp_path: Path) -> None:
    out = _export(ledger, tmp_path)
    segments = {p.name: p.read_bytes() for p in ledger.segment_files()}
    days = sorted(segments)
    assert days[0] == "2026-10-31.jsonl"
    assert days[-1] == "2026-12-02.jsonl"
    # Nov days, and Dec 1 because the drill of Nov 30 finished then; not Oct 31 nor Dec 2.
    assert (out / RECORDS_FILE).read_bytes() == b"".join(segments[d] for d in days[1:-1])
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    october = [json.loads(line) for line in segments[days[0]].splitlines()]
    assert manifest["chain"]["first_prev"] == october[-1]["hash"]
    assert manifest["chain"]["first_seq"] == october[-1]["seq"] + 1
    assert manifest["period"] == {"from": "2026-11-01", "to": "2026-11-30"}
    assert manifest["counts"]["backup_runs"] == 5
    assert manifest["counts"]["drills"] == 3
    assert set(manifest["files"]) == {RECORDS_FILE, REPORT_FILE}
    verdict = verify_pack(out)
    assert verdict.ok, verdict.problems
    assert verdict.records == manifest["chain"]["records"]


def test_verify_pack_names_an_edited_report(ledger: Ledger, tmp_path: Path) -> None:
    out = _export(ledger, tmp_path)
    data = bytearray((out / REPORT_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / REPORT_FILE).write_bytes(bytes(data))
    assert [p.split(":")[0] for p in verify_pack(out).problems] == [REPORT_FILE]


def test_verify_pack_names_an_altered_record(ledger: Ledger, tmp_path: Path) -> None:
    out = _export(ledger, tmp_path)
    lines = (out / RECORDS_FILE).read_bytes().splitlines(keepends=True)
    number = next(i for i, line in enumerate(lines) if b'"state":"success"' in line)
    seq = json.loads(lines[number])["seq"]
    lines[number] = lines[number].replace(b'"state":"success"', b'"state":"failed!"', 1)
    (out / RECORDS_FILE).write_bytes(b"".join(lines))
    problems = verify_pack(out).problems
    assert problems[0].startswith(f"{RECORDS_FILE}: edited")
    assert f"record seq {seq} ({RECORDS_FILE} line {number + 1}) was altered" in problems[1]


@pytest.mark.parametrize("line", [7, -1], ids=["a middle line", "the last line"])
def test_verify_pack_names_a_lost_record(ledger: Ledger, tmp_path: Path, line: int) -> None:
    out = _export(ledger, tmp_path)
    lines = (out / RECORDS_FILE).read_bytes().splitlines(keepends=True)
    lost = json.loads(lines[line])["seq"]
    del lines[line]
    (out / RECORDS_FILE).write_bytes(b"".join(lines))
    problems = verify_pack(out).problems
    assert problems[0].startswith(f"{RECORDS_FILE}: edited")
    expected = f"record seq {lost} is missing" if line > 0 else f"the chain ends at seq {lost - 1}"
    assert expected in problems[1]


def test_verify_pack_names_files_added_and_removed(ledger: Ledger, tmp_path: Path) -> None:
    out = _export(ledger, tmp_path)
    (out / "extra.html").write_text("<p>trust me</p>")
    (out / REPORT_FILE).unlink()
    assert verify_pack(out).problems == [
        "extra.html: added (not in the manifest)",
        f"{REPORT_FILE}: removed (listed in the manifest)",
    ]


def test_export_refuses_a_broken_chain_naming_the_record(ledger: Ledger, tmp_path: Path) -> None:
    segment = ledger.segments_dir / "2026-11-10.jsonl"
    segment.write_bytes(segment.read_bytes().replace(b'"passed":true', b'"passed":false', 1))
    with pytest.raises(LedgerError, match=r"record seq \d+ \(2026-11-10.jsonl line \d+\) was altered"):
        export_pack(ledger, *NOV, tmp_path / "pack")
    assert not (tmp_path / "pack").exists()


def test_a_period_without_evidence_says_so_and_still_verifies(ledger: Ledger, tmp_path: Path) -> None:
    pack = build_pack(ledger, date(2026, 9, 1), date(2026, 9, 30), generated_at=GENERATED)
    assert pack.records == b""
    assert pack.anchors.first_seq == 1
    assert pack.anchors.last_seq == 0
    # backups, restore drills, failover drills, changes, patch waves
    assert pack.report.count("No evidence in this period") == 5
    out = tmp_path / "empty"
    export_pack(ledger, date(2026, 9, 1), date(2026, 9, 30), out)
    assert verify_pack(out).ok


def test_zip_holds_the_same_files(ledger: Ledger) -> None:
    pack = build_pack(ledger, *NOV, generated_at=GENERATED)
    with zipfile.ZipFile(io.BytesIO(pack_zip_bytes(pack))) as archive:
        files = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}
        assert {name.split("/")[0] for name in archive.namelist()} == {"evidence-2026-11-01_2026-11-30"}
    assert files == pack.files()


def test_cli_exports_and_verifies_a_pack(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pack"
    common = ["--ledger", str(ledger.directory)]
    assert (
        main(["evidence", "export", "--from", "2026-11-01", "--to", "2026-11-30", "--out", str(out), *common])
        == 0
    )
    assert "3 drills" in capsys.readouterr().out
    assert main(["evidence", "verify", "--pack", str(out)]) == 0
    (out / REPORT_FILE).write_text((out / REPORT_FILE).read_text().replace("75.0 %", "99.0 %"))
    assert main(["evidence", "verify", "--pack", str(out)]) == 1
    assert f"pack {out}: {REPORT_FILE}: edited" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--from", "2026-11-31", "--to", "2026-11-30"],
            "argument --from: not a date (YYYY-MM-DD): '2026-11-31'",
        ),
        (["--from", "2026-12-01", "--to", "2026-11-30"], "--from 2026-12-01 is after --to 2026-11-30"),
        (["--from", "2026-11-01", "--to", "2026-11-30"], "--out "),
    ],
    ids=["bad date", "from after to", "out not empty"],
)
def test_cli_names_the_option_of_bad_input(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    out = tmp_path / "full"
    out.mkdir()
    (out / "something").write_text("x")
    argv = ["evidence", "export", *arguments, "--out", str(out), "--ledger", str(ledger.directory)]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors
        code = int(stop.code or 0)
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_pack_from_a_verified_start_is_the_same_pack(ledger: Ledger) -> None:
    *_, last_of_october = ledger.records(until=date(2026, 10, 31))  # the day before the period
    full = build_pack(ledger, *NOV, generated_at=GENERATED)
    resumed = build_pack(
        ledger, *NOV, generated_at=GENERATED, verified_start=(last_of_october.seq, last_of_october.hash)
    )

    assert resumed.files() == full.files()
    assert "backup__orders_pg" in resumed.dag_ids


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/hostname", "sub/records.jsonl", ".hidden"])
def test_verify_pack_refuses_names_that_leave_the_pack(ledger: Ledger, tmp_path: Path, name: str) -> None:
    out = _export(ledger, tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the pack")
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(outside.read_bytes()).hexdigest(), "size": 20}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))

    problems = verify_pack(out).problems

    assert problems == [f"{name!r}: not a file name of the pack (listed in the manifest); not read"]


def test_verify_pack_does_not_follow_a_link_out_of_the_pack(ledger: Ledger, tmp_path: Path) -> None:
    out = _export(ledger, tmp_path)
    kept = tmp_path / "kept-report.html"
    kept.write_bytes((out / REPORT_FILE).read_bytes())
    (out / REPORT_FILE).unlink()
    (out / REPORT_FILE).symlink_to(kept)

    assert verify_pack(out).problems == [
        f"{REPORT_FILE!r}: not a file name of the pack (listed in the manifest); not read"
    ]


def test_a_scoped_pack_keeps_its_dags_records_and_still_verifies(ledger: Ledger, tmp_path: Path) -> None:
    full = build_pack(ledger, *NOV, generated_at=GENERATED)
    keep = sorted(full.dag_ids)[0]
    scoped = scope_pack(full, lambda dag_id: dag_id == keep)
    out = write_pack(scoped, tmp_path / "scoped")

    lines = (out / RECORDS_FILE).read_bytes().splitlines(keepends=True)
    assert lines, "the kept DAG has records in the period"
    assert all(json.loads(line)["dag_id"] == keep for line in lines)
    assert set(lines) <= set(full.records.splitlines(keepends=True)), "the ledger's own bytes"
    assert scoped.manifest["scope"] == {
        "dag_ids": [keep],
        "records": len(lines),
        "records_left_out": full.anchors.records - len(lines),
    }
    assert verify_pack(out).ok, verify_pack(out).problems

    # A record of another DAG slipped in, or one of the kept ones altered, is named.
    other = next(
        line for line in full.records.splitlines(keepends=True) if json.loads(line)["dag_id"] != keep
    )
    (out / RECORDS_FILE).write_bytes(b"".join([*lines, other]))
    problems = verify_pack(out).problems
    assert any("outside the scope" in p or "out of order" in p for p in problems), problems
    (out / RECORDS_FILE).write_bytes(b"".join([lines[0].replace(b'"dag_id"', b'"dag_id" ', 1), *lines[1:]]))
    assert any("line 1" in p for p in verify_pack(out).problems)
