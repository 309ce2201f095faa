"""Scratch database names and the guard that keeps every real database out of reach of a drop."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cloudops.engines.scratch import (
    MARKER_PREFIX,
    MAX_NAME_LENGTH,
    Ownership,
    check_scratch,
    check_scratch_root,
    is_scratch_name,
    is_scratch_of,
    like_pattern,
    ownership,
    scratch_marker,
    scratch_name,
)
from cloudops.errors import RestoreRefused

pytestmark = pytest.mark.unit

RUN = "scheduled__2026-11-23T02:15:00+00:00"


def test_a_run_always_gets_the_same_name_and_another_run_another() -> None:
    name = scratch_name("orders_pg", RUN)
    assert name == scratch_name("orders_pg", RUN)
    assert re.fullmatch(r"drill_orders_pg_[0-9a-f]{10}", name)
    assert scratch_name("orders_pg", RUN + "x") != name
    assert scratch_name("orders", RUN) != name


@pytest.mark.parametrize(
    "run_id",
    [
        RUN,
        "manual__2026-11-23T11:00:00.123456+00:00",
        "asset_triggered__x y'; DROP DATABASE orders;--",
        "é" * 300,
    ],
)
def test_names_are_plain_identifiers_whatever_the_run_id(run_id: str) -> None:
    name = scratch_name("inventory_mariadb", run_id)
    assert re.fullmatch(r"[a-z0-9_]+", name)
    assert len(name) <= MAX_NAME_LENGTH
    assert is_scratch_name(name)


def test_long_database_names_are_cut_with_a_hash_and_stay_apart() -> None:
    long_a, long_b = "a" * 55 + "_one", "a" * 55 + "_two"
    name_a, name_b = scratch_name(long_a, RUN), scratch_name(long_b, RUN)
    assert len(name_a) == len(name_b) == MAX_NAME_LENGTH
    assert name_a != name_b
    assert is_scratch_of(name_a, long_a)
    assert not is_scratch_of(name_a, long_b)


@pytest.mark.parametrize(
    "name",
    [
        "orders",
        "inventory",
        "postgres",
        "mysql",
        "drill_orders_pg",
        "drill_orders_pg_1a2b3c4d5",
        "drill_Orders_1a2b3c4d5e",
        "drill_orders_pg_1a2b3c4d5e_x",
        "xdrill_orders_pg_1a2b3c4d5e",
        "drill__1a2b3c4d5e",
        "",
    ],
)
def test_real_and_malformed_names_are_not_scratch(name: str) -> None:
    assert not is_scratch_name(name)
    with pytest.raises(RestoreRefused, match="refusing to drop database"):
        check_scratch(name, action="drop")


def test_scratch_of_is_exact() -> None:
    name = scratch_name("orders_pg", RUN)
    assert is_scratch_of(name, "orders_pg")
    assert not is_scratch_of(name, "orders")  # drill_orders_<pg_...> is not a scratch of orders
    assert not is_scratch_of(scratch_name("orders", RUN), "orders_pg")
    check_scratch(name, action="drop")  # no error


def test_like_pattern_escapes_underscores() -> None:
    assert like_pattern("orders_pg") == r"drill\_orders\_pg\_%"


@pytest.mark.parametrize(("database", "run_id"), [("Orders", RUN), ("orders-pg", RUN), ("orders_pg", "")])
def test_bad_input_is_refused(database: str, run_id: str) -> None:
    with pytest.raises(ValueError, match=r"catalog database name|run_id"):
        scratch_name(database, run_id)


def test_a_marker_proves_ownership_of_its_own_name_only() -> None:
    name = scratch_name("orders_pg", RUN)
    marker = scratch_marker(name, RUN)
    assert marker.startswith(MARKER_PREFIX)
    assert ownership(name, marker) == Ownership(True, f"created by cloudops for run {RUN!r}", RUN)
    # The same run's scratch database of another catalog database: the run hash matches, the seal not.
    other = scratch_name("inventory_mariadb", RUN)
    verdict = ownership(other, marker)
    assert not verdict.owned
    assert "seal does not match its name" in verdict.reason
    assert not ownership(scratch_name("orders_pg", RUN + "x"), marker).owned


@pytest.mark.parametrize(
    ("comment", "reason"),
    [
        (None, "carries no cloudops marker"),
        ("", "carries no cloudops marker"),
        ("hourly logs of 2024-01-01 10h", "not a cloudops marker"),
        (MARKER_PREFIX + "{not json", "malformed"),
        (MARKER_PREFIX + '{"run_id": "r", "seal": "x", "more": 1}', "malformed"),
        (MARKER_PREFIX + '{"run_id": "r", "seal": "x"}', "whose scratch databases have another name"),
        (MARKER_PREFIX + "x" * 2000, "not a cloudops marker"),
    ],
)
def test_a_date_stamped_name_without_a_valid_marker_is_not_ours(comment: str | None, reason: str) -> None:
    name = "drill_logs_2024010112"  # ten digits are hex: the name alone looks like a scratch database
    assert is_scratch_name(name)
    verdict = ownership(name, comment)
    assert not verdict.owned
    assert reason in verdict.reason


def test_a_marker_is_only_made_for_the_runs_own_name() -> None:
    with pytest.raises(ValueError, match="not a scratch database of run"):
        scratch_marker("drill_logs_2024010112", RUN)
    with pytest.raises(ValueError, match="not a scratch database name"):
        scratch_marker("logs", RUN)


def test_a_scratch_root_inside_a_server_data_directory_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("15\n")
    with pytest.raises(RestoreRefused, match=f"inside the database server data directory {data_dir}"):
        check_scratch_root(data_dir / "scratch")
    check_scratch_root(tmp_path / "scratch")  # a folder of its own: no error
