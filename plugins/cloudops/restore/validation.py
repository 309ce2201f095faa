"""Check a restored database: against its backup's manifest, and against the database's expectation suite.

:func:`compare_with_manifest` recomputes the schema fingerprint and the exact row count of every table
in one snapshot of the restored copy, with the same code the backup used, and compares them with the
manifest. :func:`run_expectation_suite` runs ``include/expectations/<database>.json`` (format in
``include/expectations/README.md``) with Great Expectations, imported inside the function only: it takes
seconds to import and DAG files must stay light.

Passwords never leave the connection: Great Expectations gets its connection string through the
ephemeral context's runtime variables (the data source's configuration holds ``${...}``), and every
message that reaches a :class:`Check` or an error is scrubbed of the password. No value from the
data reaches a check (checks go into drill records, the ledger and its 400-day lock, and values may
be personal data): a Great Expectations result gives its verdict and counts only (unexpected rows
of how many, or the row count of a table-count expectation), never its ``observed_value`` of a
column (a minimum, a mean, the distinct or most common values) nor the failing rows.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from cloudops.catalog.errors import did_you_mean, format_path
from cloudops.catalog.models import render_duration
from cloudops.connections import get_connection
from cloudops.engines import engine as engine_named
from cloudops.errors import DatabaseUnavailableError, InvalidInputError, first_line
from cloudops.restore.record import Check

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from cloudops.engines import Engine
    from cloudops.repository.manifest import Manifest

log = logging.getLogger(__name__)

EXPECTATIONS_DIR_ENV = "CLOUDOPS_EXPECTATIONS_DIR"
NEWEST_WITHIN_RPO = "newest_within_rpo"
# The runtime variable the data source's connection string names; its value never enters a config.
_URL_VARIABLE = "cloudops_validation_url"
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_$]{0,63}"


class ExpectationSuiteError(InvalidInputError):
    """An expectation suite file is unusable; the message names the file, the table and the entry."""


class SuiteExpectation(BaseModel):
    """One entry of a suite: ``expect`` names the expectation, the other keys are its arguments."""

    model_config = ConfigDict(extra="allow", frozen=True)

    expect: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]

    @property
    def arguments(self) -> dict[str, Any]:
        """The expectation's arguments (``column``, ``value_set``, ``min_value`` ...)."""
        return dict(self.model_extra or {})


class Suite(BaseModel):
    """An expectation suite of one catalog database (``include/expectations/<database>.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    tables: Annotated[
        dict[
            Annotated[str, StringConstraints(pattern=rf"^(?:{_IDENTIFIER}\.)?{_IDENTIFIER}$")],
            Annotated[list[SuiteExpectation], Field(min_length=1)],
        ],
        Field(min_length=1),
    ]


def expectations_dir() -> Path:
    """Where suites live: ``$CLOUDOPS_EXPECTATIONS_DIR``, else ``include/expectations`` of the project."""
    if configured := os.environ.get(EXPECTATIONS_DIR_ENV):
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "include" / "expectations"


def suite_path(database_name: str, *, directory: Path | None = None) -> Path:
    """Return the suite file of catalog database ``database_name`` (it may not exist)."""
    return (directory or expectations_dir()) / f"{database_name}.json"


def load_suite(path: Path) -> Suite:
    """Read and validate a suite file (its structure; expectation names are checked when it runs).

    :raises ExpectationSuiteError: the file is missing, not JSON, or an entry is invalid (named).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExpectationSuiteError(
            f"{path}: no expectation suite (see include/expectations/README.md)"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ExpectationSuiteError(
            f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    try:
        return Suite.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{format_path(detail['loc']) or 'suite'}: {detail['msg']}" for detail in error.errors()
        )
        raise ExpectationSuiteError(f"{path}: {problems}") from None


def compare_with_manifest(
    conn_id: str | Connection,
    engine: str,
    database_name: str,
    manifest: Manifest,
    *,
    used_by: str | None = None,
) -> list[Check]:
    """Compare the restored database's schema fingerprint and row counts with the backup's manifest.

    Counted and fingerprinted in one snapshot, by the same functions that filled the manifest. A
    physical backup records no row counts (no snapshot matches a copy only consistent at its end): its
    schema fingerprint alone is compared.

    :param conn_id: the server's connection id, or a connection built at run time (a scratch cluster).
    :param database_name: the restored database (the scratch target), on ``conn_id``'s server.
    :return: ``schema fingerprint``, ``tables`` (the same set of tables) and ``rows <table>`` per table;
        ``schema fingerprint`` only for a physical backup.
    :raises DatabaseUnavailableError: the restored database cannot be reached.
    """
    if manifest.engine != engine:
        raise ValueError(f"backup {manifest.backup_id} is a {manifest.engine} backup, not {engine}")
    used_by = used_by or f"restored copy {database_name!r} of {manifest.database!r}"
    verbs = engine_named(engine)
    with verbs.snapshot_session(conn_id, database_name, used_by=used_by) as session:
        fingerprint = verbs.schema_fingerprint(session)
        # Exact counts read every row: only worth it when the manifest has counts to compare with.
        counts: dict[str, int] = {} if manifest.method == "physical" else verbs.table_row_counts(session)
    checks = [
        Check(
            name="schema fingerprint",
            passed=manifest.schema_fingerprint is not None and fingerprint == manifest.schema_fingerprint,
            expected=manifest.schema_fingerprint,
            observed=fingerprint,
            detail=(
                "the manifest records no schema fingerprint"
                if manifest.schema_fingerprint is None
                else ""
                if fingerprint == manifest.schema_fingerprint
                else "tables, columns, constraints or indexes differ from the backed-up database"
            ),
        )
    ]
    if manifest.method == "physical":
        log.info(
            "%s against the manifest of physical backup %s: schema fingerprint %s",
            database_name,
            manifest.backup_id,
            "matches" if checks[0].passed else "FAILED",
        )
        return checks
    expected_tables, observed_tables = set(manifest.row_counts), set(counts)
    missing, extra = sorted(expected_tables - observed_tables), sorted(observed_tables - expected_tables)
    detail = "; ".join(
        part
        for part in (
            f"missing: {', '.join(missing)}" if missing else "",
            f"not in the backup: {', '.join(extra)}" if extra else "",
            "the manifest records no row counts" if not expected_tables else "",
        )
        if part
    )
    checks.append(
        Check(
            name="tables",
            passed=bool(expected_tables) and not missing and not extra,
            expected=len(expected_tables),
            observed=len(observed_tables),
            detail=detail,
        )
    )
    for table in sorted(expected_tables):
        observed = counts.get(table)
        checks.append(
            Check(
                name=f"rows {table}",
                passed=observed == manifest.row_counts[table],
                expected=manifest.row_counts[table],
                observed=observed,
                detail="" if observed is not None else "the table is missing",
            )
        )
    failed = [check.name for check in checks if not check.passed]
    log.info(
        "%s against the manifest of backup %s: %d check(s), %s",
        database_name,
        manifest.backup_id,
        len(checks),
        f"failed: {', '.join(failed)}" if failed else "all passed",
    )
    return checks


def run_expectation_suite(
    conn_id: str | Connection,
    engine: str,
    database_name: str,
    suite_path: Path,
    *,
    rpo: timedelta,
    backup_time: datetime,
    used_by: str | None = None,
) -> list[Check]:
    """Run an expectation suite against a (restored) database with Great Expectations.

    Every entry becomes one :class:`Check` named ``<table>: <expect>(<column>)``. Great Expectations'
    own expectations run through an ephemeral context on a SQL data source (one table asset per table,
    whole table); ``newest_within_rpo`` is ours: the column's greatest value must be no older than
    ``backup_time - rpo``, i.e. the backup holds data written within the RPO before it was taken.
    A table that cannot be read is one failed check (``<table>: table exists``).

    :param suite_path: the suite file (:func:`suite_path`).
    :param rpo: the database's RPO (the catalog's ``rpo``).
    :param backup_time: when the backup's snapshot was taken (its manifest's ``started_at``).
    :raises ExpectationSuiteError: the suite file is invalid or names an unknown expectation (before
        anything runs).
    :raises DatabaseUnavailableError: the database cannot be reached.
    """
    if backup_time.tzinfo is None:
        raise ValueError("backup_time must be timezone-aware")
    suite = load_suite(suite_path)
    verbs = engine_named(engine)
    if verbs.schema_is_database and (qualified := [table for table in suite.tables if "." in table]):
        # In MariaDB the schema is the database: a qualified name would read another database.
        raise ExpectationSuiteError(
            f"{suite_path}: tables.{qualified[0]}: MariaDB tables are named without a database"
        )
    used_by = used_by or f"validation of {database_name!r}"
    conn = get_connection(conn_id, used_by)
    secrets = [conn.password] if conn.password else []
    address = f"{conn.host}:{conn.port}"

    started = time.monotonic()
    gx = _import_great_expectations()
    imported = time.monotonic()
    built = _build_expectations(gx, suite, suite_path)

    checks: list[Check] = []
    with _data_source(gx, conn, verbs, database_name, used_by, address, secrets) as (context, datasource):
        for table, entries in built.items():
            schema, _, name = table.rpartition(".")
            try:
                asset = datasource.add_table_asset(
                    name=table,
                    table_name=name,
                    **({"schema_name": schema} if schema else {}),
                )
            except Exception as error:
                checks.append(
                    Check(
                        name=f"{table}: table exists",
                        passed=False,
                        expected=table,
                        detail=_scrub(first_line(error), secrets),
                    )
                )
                continue
            gx_entries = [(spec, expectation) for spec, expectation in entries if expectation is not None]
            outcomes: dict[str, Any] = {}
            if gx_entries:
                gx_suite = context.suites.add(gx.ExpectationSuite(name=f"{database_name}.{table}"))
                ids = [gx_suite.add_expectation(expectation).id for _, expectation in gx_entries]
                definition = context.validation_definitions.add(
                    gx.ValidationDefinition(
                        name=f"{database_name}.{table}",
                        data=asset.add_batch_definition_whole_table("whole table"),
                        suite=gx_suite,
                    )
                )
                result = definition.run(result_format="BASIC")
                outcomes = {outcome.expectation_config.id: outcome for outcome in result.results}
                for (spec, _), expectation_id in zip(gx_entries, ids, strict=True):
                    checks.append(_gx_check(table, spec, outcomes.get(expectation_id), secrets))
            for spec, expectation in entries:
                if expectation is None:  # newest_within_rpo, ours
                    checks.append(
                        _newest_within_rpo(
                            verbs, conn_id, database_name, table, spec, rpo, backup_time, used_by, secrets
                        )
                    )
    finished = time.monotonic()
    failed = [check.name for check in checks if not check.passed]
    log.info(
        "expectation suite %s on %s: %d check(s), %s (great_expectations import %.1f s, run %.1f s)",
        suite_path.name,
        database_name,
        len(checks),
        f"failed: {', '.join(failed)}" if failed else "all passed",
        imported - started,
        finished - imported,
    )
    return checks


def _import_great_expectations() -> ModuleType:
    """Import Great Expectations quietly: no progress bars, no analytics, warnings only in the log."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    # Before the import, which itself logs hundreds of INFO lines (Airflow's task log shows INFO).
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


def _build_expectations(
    gx: ModuleType, suite: Suite, path: Path
) -> dict[str, list[tuple[SuiteExpectation, Any]]]:
    """Turn every entry into a Great Expectations expectation (None for ours), refusing unknown ones."""
    available = {
        _snake(name.removeprefix("Expect")): getattr(gx.expectations, name)
        for name in dir(gx.expectations)
        if name.startswith("Expect") and isinstance(getattr(gx.expectations, name), type)
    }
    built: dict[str, list[tuple[SuiteExpectation, Any]]] = {}
    for table, entries in suite.tables.items():
        built[table] = []
        for index, spec in enumerate(entries):
            where = f"{path}: tables.{table}[{index}]"
            if spec.expect == NEWEST_WITHIN_RPO:
                if set(spec.arguments) != {"column"}:
                    raise ExpectationSuiteError(
                        f"{where}: {NEWEST_WITHIN_RPO} takes exactly one argument, column"
                    )
                built[table].append((spec, None))
                continue
            expectation_class = available.get(spec.expect)
            if expectation_class is None:
                hint = did_you_mean(spec.expect, [*available, NEWEST_WITHIN_RPO])
                raise ExpectationSuiteError(
                    f"{where}: unknown expectation {spec.expect!r}{f' ({hint})' if hint else ''}"
                )
            try:
                built[table].append((spec, expectation_class(**spec.arguments)))
            except Exception as error:
                problems = " ".join(str(error).split())
                raise ExpectationSuiteError(f"{where}: {spec.expect}: {problems}") from None
    return built


@contextmanager
def _data_source(
    gx: ModuleType,
    conn: Any,
    engine: Engine,
    database_name: str,
    used_by: str,
    address: str,
    secrets: list[str],
) -> Iterator[tuple[Any, Any]]:
    """An ephemeral context and a SQL data source on the database; the engine is disposed on exit."""
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )
    from sqlalchemy.engine import URL

    url = URL.create(
        engine.sqlalchemy_driver,
        username=conn.login,
        password=conn.password,
        host=conn.host,
        port=conn.port or engine.default_port,
        database=database_name,
        # Startup options a run-time connection carries (a physical drill's scratch cluster).
        query={"options": conn.extra_dejson["options"]} if conn.extra_dejson.get("options") else {},
    )
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        ),
        runtime_environment={_URL_VARIABLE: url.render_as_string(hide_password=False)},
    )
    # Great Expectations has a data source of its own for PostgreSQL; other dialects take its generic one.
    dialect = engine.sqlalchemy_driver.partition("+")[0]
    add = context.data_sources.add_postgres if dialect == "postgresql" else context.data_sources.add_sql
    try:
        datasource = add(name=database_name, connection_string="${" + _URL_VARIABLE + "}")
    except Exception as error:
        raise DatabaseUnavailableError(used_by, address, _scrub(first_line(error), secrets)) from None
    try:
        yield context, datasource
    finally:
        try:
            datasource.get_engine().dispose()
        except Exception as error:  # the checks are done; a failed dispose only leaves pooled connections
            log.warning(
                "could not close the validation's connections: %s", _scrub(first_line(error), secrets)
            )


# Expectations whose observed_value is a count of rows or columns, not a value from the data.
_COUNT_EXPECTATIONS = frozenset(
    {
        "table_row_count_to_be_between",
        "table_row_count_to_equal",
        "table_row_count_to_equal_other_table",
        "table_column_count_to_be_between",
        "table_column_count_to_equal",
    }
)


def _gx_check(table: str, spec: SuiteExpectation, outcome: Any, secrets: list[str]) -> Check:
    """One Great Expectations result as a Check: its verdict and counts, never a value of the data."""
    arguments = spec.arguments
    name = f"{table}: {spec.expect}({_columns(arguments)})"
    expected = {key: value for key, value in arguments.items() if key not in ("column", "column_list")} or (
        "every row"
    )
    if outcome is None:
        return Check(
            name=name, passed=False, expected=expected, detail="Great Expectations returned no result"
        )
    result = dict(outcome.result or {})
    message = _exception_message(outcome.exception_info)
    observed: Any = None
    if "unexpected_count" in result:
        observed = result["unexpected_count"]
        detail = f"{result['unexpected_count']} of {result.get('element_count', '?')} row(s) unexpected"
    elif spec.expect in _COUNT_EXPECTATIONS and isinstance(result.get("observed_value"), int):
        observed, detail = result["observed_value"], ""
    elif result.get("observed_value") is not None:
        detail = "observed value not recorded: it is a value of the data"
    else:
        detail = "not measured"
    if message:
        detail = _scrub(f"{detail}: {message}" if detail else message, secrets)
    return Check(
        name=name,
        passed=bool(outcome.success),
        expected=expected,
        observed=_json_safe(observed),
        detail=detail,
    )


def _newest_within_rpo(
    engine: Engine,
    conn_id: str | Connection,
    database_name: str,
    table: str,
    spec: SuiteExpectation,
    rpo: timedelta,
    backup_time: datetime,
    used_by: str,
    secrets: list[str],
) -> Check:
    column = str(spec.arguments["column"])
    bound = backup_time - rpo
    name = f"{table}: {NEWEST_WITHIN_RPO}({column})"
    expected = f">= {_iso(bound)} (backup time - RPO {render_duration(rpo)})"
    try:
        with engine.snapshot_session(conn_id, database_name, used_by=used_by) as session:
            newest = engine.newest_timestamp(session, table, column)
    except DatabaseUnavailableError:
        raise
    except Exception as error:
        return Check(name=name, passed=False, expected=expected, detail=_scrub(first_line(error), secrets))
    if newest is None:
        return Check(name=name, passed=False, expected=expected, detail="the table has no rows")
    age = backup_time - newest
    when = f"{_age(age)} before the backup" if age >= timedelta(0) else f"{_age(-age)} after the backup time"
    return Check(
        name=name,
        passed=newest >= bound,
        expected=expected,
        observed=_iso(newest),
        detail=f"newest value {when}",
    )


def _exception_message(info: Any) -> str:
    """The first exception message anywhere in Great Expectations' ``exception_info`` (nested per metric)."""
    if isinstance(info, dict):
        if info.get("raised_exception") and info.get("exception_message"):
            return " ".join(str(info["exception_message"]).split())[:300]
        for value in info.values():
            if found := _exception_message(value):
                return found
    return ""


def _columns(arguments: dict[str, Any]) -> str:
    if "column" in arguments:
        return str(arguments["column"])
    if "column_list" in arguments:
        return ", ".join(str(column) for column in arguments["column_list"])
    return ""


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _age(age: timedelta) -> str:
    hours, rest = divmod(int(age.total_seconds()), 3600)
    return f"{hours}h{rest // 60:02d}m"


__all__ = [
    "EXPECTATIONS_DIR_ENV",
    "NEWEST_WITHIN_RPO",
    "ExpectationSuiteError",
    "Suite",
    "SuiteExpectation",
    "compare_with_manifest",
    "expectations_dir",
    "load_suite",
    "run_expectation_suite",
    "suite_path",
]
