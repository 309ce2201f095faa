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
