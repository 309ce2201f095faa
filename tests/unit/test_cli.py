"""`cloudops validate` and `cloudops schema` as a user runs them: exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cloudops.catalog.schema import catalog_schema_text
from cloudops.cli import main

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


def test_validate_with_nothing_to_read_is_an_error(tmp_path: Path) -> None:
    assert main(["validate", str(tmp_path)]) == 2


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
