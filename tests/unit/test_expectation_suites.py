"""Expectation suite files (ours and malformed ones) and the scan that keeps a MariaDB dump in its target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudops.engines import mariadb
from cloudops.errors import RestoreRefused
from cloudops.restore.validation import NEWEST_WITHIN_RPO, ExpectationSuiteError, load_suite, suite_path

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("database", ["orders_pg", "inventory_mariadb"])
def test_the_sandbox_suites_load(project_root: Path, database: str) -> None:
    path = suite_path(database, directory=project_root / "include" / "expectations")
    suite = load_suite(path)
    entries = [entry for table in suite.tables.values() for entry in table]
    assert any(entry.expect == NEWEST_WITHIN_RPO for entry in entries)
    assert any(entry.expect == "column_values_to_be_unique" for entry in entries)


def test_suites_are_found_in_the_project_by_default(
    project_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLOUDOPS_EXPECTATIONS_DIR", raising=False)
    assert suite_path("orders_pg") == project_root / "include" / "expectations" / "orders_pg.json"
    monkeypatch.setenv("CLOUDOPS_EXPECTATIONS_DIR", "/srv/suites")
    assert suite_path("orders_pg") == Path("/srv/suites/orders_pg.json")


def test_arguments_are_kept_apart_from_the_name(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {"tables": {"t": [{"expect": "column_values_to_be_in_set", "column": "c", "value_set": [1]}]}}
        )
    )
    (entry,) = load_suite(path).tables["t"]
    assert entry.expect == "column_values_to_be_in_set"
    assert entry.arguments == {"column": "c", "value_set": [1]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", r"not valid JSON: .* line 1"),
        ('{"tables": {}}', r"tables: .*at least 1"),
        ('{"table": {"t": [{"expect": "x"}]}}', r"table: Extra inputs are not permitted"),
        ('{"tables": {"t": []}}', r"tables\.t: .*at least 1"),
        ('{"tables": {"t": [{"column": "c"}]}}', r"tables\.t\[0\]\.expect: Field required"),
        ('{"tables": {"t": [{"expect": "Not Snake"}]}}', r"tables\.t\[0\]\.expect: String should match"),
        ('{"tables": {"a b": [{"expect": "x"}]}}', r"tables\.a b"),
    ],
)
def test_malformed_suites_name_the_place(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ExpectationSuiteError, match=message):
        load_suite(path)


def test_a_missing_suite_says_where_it_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(ExpectationSuiteError, match=r"nope\.json: no expectation suite"):
        load_suite(tmp_path / "nope.json")


# -- MariaDB dumps: nothing may switch out of the target database ------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dump.sql"
    path.write_bytes(text.encode())
    return path


def test_a_dump_of_one_database_passes(tmp_path: Path) -> None:
    dump = (
        "/*M!999999\\- enable the sandbox mode */ \n-- Host: 127.0.0.1    Database: inventory\n"
        "DROP TABLE IF EXISTS `items`;\nCREATE TABLE `items` (`id` int);\nINSERT INTO `items` VALUES\n"
        "(1,'USE the force\\nCREATE DATABASE x'),\n(2,'user');\n-- USE inventory (a comment)\n"
    )
    mariadb.check_single_database_dump(write(tmp_path, dump))


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("USE `inventory`;", "USE"),
        ("use inventory;", "use"),
        ("CREATE DATABASE /*!32312 IF NOT EXISTS*/ `inventory`;", "CREATE DATABASE"),
        ("/*!40000 CREATE DATABASE `x` */;", "/*!40000 CREATE DATABASE"),
        ("DROP SCHEMA inventory;", "DROP SCHEMA"),
        ("ALTER DATABASE inventory CHARACTER SET latin1;", "ALTER DATABASE"),
        ("\\u inventory", "\\u"),
        ("connect inventory", "connect"),
    ],
)
def test_a_dump_that_leaves_its_database_is_refused(tmp_path: Path, line: str, shown: str) -> None:
    dump = write(tmp_path, f"CREATE TABLE t (id int);\n\n{line}\nINSERT INTO t VALUES (1);\n")
    with pytest.raises(RestoreRefused, match="line 3 starts with") as refused:
        mariadb.check_single_database_dump(dump)
    assert f"starts with {shown!r}" in str(refused.value)


def test_the_scan_finds_a_statement_across_a_chunk_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mariadb, "_SCAN_CHUNK", 7)
    dump = write(tmp_path, "INSERT INTO t VALUES (1);\n" * 5 + "USE `inventory`;\n")
    with pytest.raises(RestoreRefused, match="line 6 starts with 'USE'"):
        mariadb.check_single_database_dump(dump)


@pytest.mark.parametrize(
    ("expect", "result", "observed", "detail"),
    [
        # distinct values, a maximum, a most common value: data, so never recorded
        ("column_distinct_values_to_be_in_set", {"observed_value": ["alice@example.com"]}, None, "not"),
        ("column_max_to_be_between", {"observed_value": 18250.5}, None, "not recorded"),
        ("column_most_common_value_to_be_in_set", {"observed_value": ["4111-1111"]}, None, "not recorded"),
        # counts are evidence
        ("column_values_to_be_in_set", {"unexpected_count": 2, "element_count": 10}, 2, "2 of 10 row(s)"),
        ("table_row_count_to_be_between", {"observed_value": 1000}, 1000, ""),
    ],
)
def test_a_gx_result_gives_counts_and_verdicts_never_data_values(
    expect: str, result: dict[str, object], observed: object, detail: str
) -> None:
    from great_expectations.core import ExpectationValidationResult

    from cloudops.restore.validation import SuiteExpectation, _gx_check

    spec = SuiteExpectation.model_validate({"expect": expect, "column": "email"})
    outcome = ExpectationValidationResult(success=False, result=result)
    check = _gx_check("customers", spec, outcome, secrets=[])

    assert check.observed == observed
    assert detail in check.detail
    assert check.passed is False
    for value in ("alice@example.com", "18250.5", "4111-1111"):
        assert value not in repr(check)
