"""`cloudops validate` and `cloudops schema` as a user runs them: exit codes and messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cloudops.catalog.schema import catalog_schema_text
from cloudops.cli import main
from cloudops.evidence.ledger import Ledger
from tests.evidence_samples import BACKUP_ID, DRILL_RUN_ID, write_sample_ledger

pytestmark = pytest.mark.unit


def test_validate_accepts_the_sandbox_catalog(project_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(project_root / "runbooks")]) == 0
    assert "estate 'sandbox'" in capsys.readouterr().out


def test_validate_refuses_a_bad_file_with_exit_2(
    tmp_path: Path, project_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "estate: bad\nowner: ops\ndatabases:\n  - {name: x, engine: oracle, conn_id: c, database: d}\n"
    )
    assert main(["validate", str(project_root / "runbooks"), str(bad)]) == 2
    out = capsys.readouterr()
    assert f"{bad}:4: databases[0].engine: Input should be 'postgres' or 'mariadb' (got 'oracle')" in out.err
    assert "ok " in out.out, "the good file is still reported valid"


def test_validate_with_nothing_to_read_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert out.err == "no catalog files found\n"
    assert out.out == ""


def test_committed_schema_is_current(project_root: Path) -> None:
    committed = (project_root / "runbooks" / "schema" / "catalog.schema.json").read_text()
    assert committed == catalog_schema_text(), "run `make schema` and commit runbooks/schema/"


def test_sandbox_catalog_matches_the_json_schema(project_root: Path) -> None:
    import jsonschema

    schema = json.loads(catalog_schema_text())
    document = yaml.safe_load((project_root / "runbooks" / "sandbox.yaml").read_text())
    jsonschema.validate(document, schema)
    document["databases"][0]["engine"] = "oracle"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)


def test_schema_check_detects_a_stale_file(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    assert main(["schema", "--output", str(target)]) == 0
    assert main(["schema", "--output", str(target), "--check"]) == 0
    target.write_text("{}\n")
    assert main(["schema", "--output", str(target), "--check"]) == 1


def test_retention_plan_prints_the_plan_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"keep_last": 2}))
    backups = tmp_path / "backups.json"
    backups.write_text(
        json.dumps(
            [
                {"id": "a", "time": "2026-11-20T02:00:00Z", "proof": "verified"},
                {"id": "b", "time": "2026-11-21T02:00:00Z", "tags": ["nightly"], "proof": "drill_passed"},
                {"id": "c", "time": "2026-11-22T02:00:00Z"},
            ]
        )
    )
    assert main(["retention", "plan", "--policy", str(policy), "--backups", str(backups)]) == 0
    plan = json.loads(capsys.readouterr().out)
    # c is not proven: it does not count, so keep_last 2 keeps a and b, and c is held as the newest.
    assert plan["keep"] == ["c", "b", "a"]
    assert plan["delete"] == []
    assert plan["held"] == ["c"]
    assert set(plan) == {"keep", "delete", "held", "stopped", "reasons"}
    assert plan["reasons"]["a"] == ["last 2"]
    assert plan["reasons"]["c"] == [
        "newest complete backup",
        "not verified yet: it does not count toward the policy",
    ]


@pytest.mark.parametrize(
    ("policy", "backups", "expected"),
    [
        ("{}", "[]", "keeps nothing"),
        ('{"keep_dialy": 3}', "[]", "did you mean 'keep_daily'?"),
        ('{"keep_last": 1}', '[{"id": "a", "time": "yesterday"}]', "backups[0].time"),
        ('{"keep_last": 1', "[]", "not valid JSON"),
    ],
)
def test_retention_plan_refuses_bad_input_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str, backups: str, expected: str
) -> None:
    (tmp_path / "p.json").write_text(policy)
    (tmp_path / "b.json").write_text(backups)
    args = ["retention", "plan", "--policy", str(tmp_path / "p.json"), "--backups", str(tmp_path / "b.json")]
    assert main(args) == 2
    assert expected in capsys.readouterr().err


def test_retention_plan_refuses_a_large_delete_without_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.json").write_text('{"keep_last": 1}')
    times = [f"2026-11-{day:02d}T02:00:00Z" for day in range(1, 11)]
    (tmp_path / "b.json").write_text(json.dumps([{"id": t, "time": t, "proof": "verified"} for t in times]))
    args = ["retention", "plan", "--policy", str(tmp_path / "p.json"), "--backups", str(tmp_path / "b.json")]
    assert main(args) == 1
    assert "refusing to delete 9 of 10" in capsys.readouterr().err
    assert main([*args, "--allow-large-delete"]) == 0


# -- cloudops evidence runs, and stdout for the output only ---------------------------------------------
@pytest.fixture
def sample_ledger(tmp_path: Path) -> Ledger:
    return write_sample_ledger(tmp_path / "ledger")


def _runs(capsys: pytest.CaptureFixture[str], ledger: Ledger, *args: str) -> list[dict[str, object]]:
    assert main(["evidence", "runs", "--json", "--ledger", str(ledger.directory), *args]) == 0
    out = capsys.readouterr()
    return json.loads(out.out)  # stdout is the JSON document and nothing else


def test_evidence_runs_lists_runs_with_outcome_and_facts(
    sample_ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = _runs(capsys, sample_ledger)

    assert [run["run_id"] for run in runs][-1] == "scheduled__2026-11-20T02:15:00+00:00"  # newest first
    assert len(runs) == 4
    backup = next(run for run in runs if run["dag_id"] == "backup__orders_pg")
    assert backup["outcome"] == "success"
    assert [(f["kind"], f["data"]["backup_id"]) for f in backup["facts"]] == [("backup.taken", BACKUP_ID)]
    failed = next(run for run in runs if run["dag_id"] == "backup__billing_maria")
    assert failed["outcome"] == "failed"
    assert failed["failed_steps"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--kind", "restore_drill"], {DRILL_RUN_ID}),
        (["--target", "orders_pg"], {DRILL_RUN_ID, "scheduled__2026-11-20T02:15:00+00:00"}),
        (["--since", "2026-11-22", "--kind", "backup"], set()),
        (["--since", "2026-11-21", "--target", "billing_maria"], {"scheduled__2026-11-21T02:15:00+00:00"}),
    ],
)
def test_evidence_runs_filters_by_kind_target_and_day(
    sample_ledger: Ledger, capsys: pytest.CaptureFixture[str], args: list[str], expected: set[str]
) -> None:
    assert {run["run_id"] for run in _runs(capsys, sample_ledger, *args)} == expected


def test_evidence_runs_as_a_table(sample_ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["evidence", "runs", "--ledger", str(sample_ledger.directory), "--kind", "restore_drill"]) == 0
    )
    out = capsys.readouterr().out
    assert "restore_drill  orders_pg" in out
    assert "drill.recorded passed" in out
    assert out.endswith("1 run(s)\n")


def test_evidence_runs_refuses_bad_input_naming_the_option(
    sample_ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["evidence", "runs", "--json", "--ledger", str(sample_ledger.directory)]
    assert main([*command, "--kind", "backups"]) == 2
    out = capsys.readouterr()
    assert out.err == "error: --kind backups: not a runbook kind (did you mean 'backup'?)\n"
    assert out.out == ""
    with pytest.raises(SystemExit, match="2"):
        main([*command, "--since", "22/11/2026"])
    out = capsys.readouterr()
    assert "argument --since: not a date (YYYY-MM-DD): '22/11/2026'" in out.err
    assert out.out == ""


def test_evidence_runs_of_a_broken_chain_fails_and_says_so(
    sample_ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    segment = sample_ledger.segment_files()[0]
    segment.write_bytes(segment.read_bytes().replace(b'"size_bytes":1048576', b'"size_bytes":1048577'))

    assert main(["evidence", "runs", "--json", "--ledger", str(sample_ledger.directory)]) == 1
    out = capsys.readouterr()
    assert len(json.loads(out.out)) == 4
    assert "record seq 3" in out.err
    assert "does not verify" in out.err


def test_the_console_script_keeps_airflow_logs_off_stdout(sample_ledger: Ledger, project_root: Path) -> None:
    """In a fresh process that has imported Airflow (its logging writes to stdout), a --json command
    still prints only JSON on stdout: the logs go to stderr."""
    script = (
        "import logging, sys, airflow\n"
        "logging.getLogger('airflow.probe').warning('airflow log line before the command')\n"
        "from cloudops.cli import main\n"
        "code = main(['evidence', 'runs', '--json', '--ledger', sys.argv[1]])\n"
        "logging.getLogger('airflow.probe').warning('airflow log line after the command')\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(sample_ledger.directory)],
        cwd=project_root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False"},
    )

    assert done.returncode == 0, done.stderr[-2000:]
    # Airflow's own handler writes to stdout outside the command (the lines before and after) ...
    lines = done.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if "log line before the command" in line)
    last = next(i for i, line in enumerate(lines) if "log line after the command" in line)
    # ... and in between, stdout holds exactly the JSON document.
    runs = json.loads("\n".join(lines[first + 1 : last]))
    assert len(runs) == 4
    assert "run(s) of 16 records" in done.stderr
    assert "run(s) of 16 records" not in done.stdout
