"""Expectation suite files (ours and malformed ones) and the scan that keeps a MariaDB dump in its target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudops.engines import mariadb
from cloudops.engines.mariadb import dump_scan
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


# -- MariaDB dumps: nothing may run a command or leave the target database ------------------------------

# What mariadb-dump 10.11 writes, pieces of it: the header, a table, its rows (a row a line), a view, a
# trigger, a routine and an event, with strings and comments that would be refused outside quotes.
DUMP_OF_ONE_DATABASE = (Path(__file__).parent / "data" / "mariadb-dump-of-one-database.sql").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dump.sql"
    path.write_bytes(text.encode())
    return path


def test_a_dump_of_one_database_passes_and_its_events_are_named(tmp_path: Path) -> None:
    assert mariadb.check_single_database_dump(write(tmp_path, DUMP_OF_ONE_DATABASE)) == ["tidy"]


@pytest.mark.parametrize(
    ("line", "what", "shown"),
    [
        # Statements that move the load to another database (the former cases).
        ("USE `inventory`;", "a client command", "USE"),
        ("use inventory;", "a client command", "use"),
        (
            "CREATE DATABASE /*!32312 IF NOT EXISTS*/ `inventory`;",
            "a statement on another database",
            "CREATE",
        ),
        ("/*!40000 CREATE DATABASE `x` */;", "a statement on another database", "CREATE"),
        ("DROP SCHEMA inventory;", "a statement on another database", "DROP"),
        ("ALTER DATABASE inventory CHARACTER SET latin1;", "a statement on another database", "ALTER"),
        ("\\u inventory", "a client command", "\\"),
        ("connect inventory", "a client command", "connect"),
        # Client commands, anywhere outside strings.
        ("\\! touch /tmp/x", "a client command", "\\"),
        ("INSERT INTO t VALUES (1); \\! touch /tmp/x", "a client command", "\\"),
        ("system touch /tmp/x", "a client command", "system"),
        ("SELECT 1; system touch /tmp/x", "a client command", "system"),
        ("\\. /etc/passwd", "a client command", "\\"),
        ("source /etc/passwd", "a client command", "source"),
        ("\\T /tmp/out", "a client command", "\\"),
        ("tee /tmp/out", "a client command", "tee"),
        ("pager sh -c 'touch /tmp/x'", "a client command", "pager"),
        ("\\P sh", "a client command", "\\"),
        ("\\r other", "a client command", "\\"),
        ("\\C gbk", "a client command", "\\"),
        ("DELIMITER //", "a delimiter other than ; and ;;", "DELIMITER"),
        # Names in another database.
        ("INSERT INTO otherdb.t VALUES (1);", "a name in another database", "INSERT"),
        ("INSERT INTO `otherdb`.`t` VALUES (1);", "a name in another database", "INSERT"),
        ("INSERT IGNORE INTO `otherdb` . t SELECT 1;", "a name in another database", "INSERT"),
        ("REPLACE otherdb.t VALUES (1);", "a name in another database", "REPLACE"),
        ("UPDATE LOW_PRIORITY `prod`.`users` SET admin = 1;", "a name in another database", "UPDATE"),
        ("DELETE FROM prod.sessions;", "a name in another database", "DELETE"),
        ("DROP TABLE IF EXISTS `t`, `prod`.`orders`;", "a name in another database", "DROP"),
        ("CREATE TABLE prod.t (id int);", "a name in another database", "CREATE"),
        (
            "CREATE OR REPLACE DEFINER=`a`@`b` VIEW prod.v AS SELECT 1;",
            "a name in another database",
            "CREATE",
        ),
        ("ALTER TABLE `prod`.`t` ADD COLUMN x int;", "a name in another database", "ALTER"),
        ("RENAME TABLE `t` TO `prod`.`t`;", "a name in another database", "RENAME"),
        ("TRUNCATE prod.t;", "a name in another database", "TRUNCATE"),
        ("TRUNCATE TABLE `prod`.t;", "a name in another database", "TRUNCATE"),
        ("CALL prod.cleanup();", "a name in another database", "CALL"),
        ("UPDATE t JOIN prod.u ON t.id = u.id SET u.x = 1;", "a name in another database", "JOIN"),
        (
            "CREATE TRIGGER tr AFTER INSERT ON prod.t FOR EACH ROW SET @x = 1;",
            "a name in another database",
            "TRIGGER",
        ),
        ("INSERT/**/INTO/**/prod.t VALUES (1);", "a name in another database", "INSERT"),
        ("/*!50003 INSERT INTO*/ prod.t VALUES (1);", "a name in another database", "INSERT"),
        # What reaches the whole server.
        ("GRANT ALL ON *.* TO 'x'@'%';", "a privilege statement", "GRANT"),
        ("REVOKE ALL ON *.* FROM root;", "a privilege statement", "REVOKE"),
        ("CREATE USER 'x'@'%' IDENTIFIED BY 'p';", "an account or server statement", "CREATE"),
        ("CREATE OR REPLACE USER x;", "an account or server statement", "CREATE"),
        ("SET GLOBAL event_scheduler = ON;", "a server-wide setting", "SET"),
        ("SET @@global.read_only = 0;", "a server-wide setting", "@@global"),
        ("SET PASSWORD FOR root = PASSWORD('x');", "a server-wide setting", "SET"),
        ("SELECT * FROM t INTO OUTFILE '/tmp/x';", "a file access", "INTO"),
        ("SELECT 1 INTO DUMPFILE '/tmp/x';", "a file access", "INTO"),
        ("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t;", "a file access", "LOAD"),
        ("LOAD XML INFILE '/x' INTO TABLE t;", "a file access", "LOAD"),
        ("INSERT INTO t VALUES (LOAD_FILE('/etc/shadow'));", "a file access", "LOAD_FILE"),
        ("INSTALL PLUGIN p SONAME 'p.so';", "a plugin", "INSTALL"),
        ("INSTALL SONAME 'ha_connect';", "a plugin", "INSTALL"),
        ("CREATE FUNCTION f RETURNS STRING SONAME 'udf.so';", "a plugin", "SONAME"),
        ("CHANGE MASTER TO MASTER_HOST='evil';", "a replication or server command", "CHANGE"),
        ("BINLOG 'AAAA';", "a replication or server command", "BINLOG"),
        ("KILL 1;", "a replication or server command", "KILL"),
        (
            "CREATE TABLE t (id int) ENGINE=CONNECT TABLE_TYPE=CSV FILE_NAME='/etc/passwd';",
            "a table stored outside the database",
            "ENGINE",
        ),
        ("CREATE TABLE t (id int) DATA DIRECTORY = '/tmp';", "a table stored outside the database", "DATA"),
        ("EXECUTE IMMEDIATE CONCAT('DROP TABLE prod', '.t');", "dynamic SQL", "EXECUTE"),
        ("PREPARE s FROM @q;", "dynamic SQL", "PREPARE"),
        # Modes and character sets that would make the client read the text otherwise than the scan.
        (
            "SET sql_mode = 'NO_BACKSLASH_ESCAPES';",
            "an SQL mode that changes how strings are read",
            "NO_BACKSLASH_ESCAPES",
        ),
        ("SET SESSION sql_mode = 'ANSI';", "an SQL mode that changes how strings are read", "ANSI"),
        (
            "SET sql_mode = CONCAT('NO_BACKSL', 'ASH_ESCAPES');",
            "an SQL mode that is not one string",
            "sql_mode = CONCAT",
        ),
        ("SET sql_mode = 'NO_BACKSL' 'ASH_ESCAPES';", "an SQL mode that is not one string", "sql_mode = 'NO"),
        (
            "SET @OLD_SQL_MODE = 'X', SQL_MODE = @OLD_SQL_MODE;",
            "a saved SQL mode set by hand",
            "@OLD_SQL_MODE = 'X'",
        ),
        ("SET NAMES gbk;", "a character set whose characters may hold a backslash", "gbk"),
        (
            "SET character_set_client = @x;",
            "a character set that is not one name",
            "character_set_client = @x",
        ),
        # Left open before rows: the rows would be read inside it.
        ("SELECT 'never closed;", "a string, name or comment that is not closed", "'"),
        ("/* never closed", "a string, name or comment that is not closed", "/"),
    ],
)
def test_a_dump_that_leaves_its_database_is_refused(tmp_path: Path, line: str, what: str, shown: str) -> None:
    dump = write(tmp_path, f"CREATE TABLE t (id int);\n\n{line}\nINSERT INTO `t` VALUES\n(1);\n")
    with pytest.raises(RestoreRefused) as refused:
        mariadb.check_single_database_dump(dump)
    message = str(refused.value)
    # The file, the line, what was found, the text found and the text around it.
    prefix = f"dump.sql line 3: {what}: "
    assert message.startswith(prefix), message
    assert message[len(prefix) + 1 :].startswith(repr(shown)[1:-1]), message  # after the opening quote
    assert "is not loaded" in message


@pytest.mark.parametrize(
    "rows",
    [
        # Rows that end their statement to start another, or hold what is not a value.
        "(1),\n(2);GRANT ALL ON *.* TO x;",
        "(1),\n(2); \\! touch /tmp/x",
        "(1),\n(2) \\! touch /tmp/x;",
        "(1,'a'),(2,'b');INSERT INTO prod.t VALUES (1);",
        "(1,'it\\'s'),\n(2,'x\\\\');DROP TABLE prod.t;",
        "(1,''),\n(2,'unclosed);",
    ],
)
def test_rows_that_carry_statements_are_refused(tmp_path: Path, rows: str) -> None:
    dump = write(tmp_path, f"INSERT INTO `t` VALUES\n{rows}\nUNLOCK TABLES;\n")
    with pytest.raises(RestoreRefused, match=r"^dump\.sql line [23]: "):
        mariadb.check_single_database_dump(dump)


def test_a_name_split_over_lines_next_to_rows_is_found(tmp_path: Path) -> None:
    # The client joins the lines: INSERT INTO fade .bead VALUES (1) writes into database fade.
    dump = write(tmp_path, "INSERT INTO `t` VALUES\n(1);\nINSERT INTO fade\n.bead\nVALUES (1);\n")
    with pytest.raises(RestoreRefused, match=r"line 3: a name in another database: 'INSERT INTO fade'"):
        mariadb.check_single_database_dump(dump)


def test_a_string_opened_before_rows_is_refused(tmp_path: Path) -> None:
    # The client would read the rows inside the string, and the GRANT after it as SQL.
    dump = write(tmp_path, "SELECT 'x\nINSERT INTO `t` VALUES\n(1);\n' ; GRANT ALL ON *.* TO x;\n")
    with pytest.raises(RestoreRefused, match=r"line 1: a string, name or comment that is not closed"):
        mariadb.check_single_database_dump(dump)


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_the_scan_finds_a_statement_across_chunk_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(dump_scan, "_SCAN_CHUNK", chunk)
    rows = ",\n".join(f"({n},'row {n}; \\\\! not a command')" for n in range(200))
    dump = write(
        tmp_path,
        DUMP_OF_ONE_DATABASE + f"INSERT INTO `items` VALUES\n{rows};\n" * 3 + "\\! touch /tmp/x\n",
    )
    lines = (DUMP_OF_ONE_DATABASE + f"INSERT INTO `items` VALUES\n{rows};\n" * 3).count("\n") + 1
    with pytest.raises(
        RestoreRefused, match=rf"^dump\.sql line {lines}: a client command: '\\\\! touch /tmp/x'"
    ):
        mariadb.check_single_database_dump(dump)
    # And the same dump without the command passes at that chunk size too.
    mariadb.check_single_database_dump(
        write(tmp_path, DUMP_OF_ONE_DATABASE + f"INSERT INTO `items` VALUES\n{rows};\n" * 3)
    )


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
