"""Scratch database names and the guard that keeps every real database out of reach of a drop."""

from __future__ import annotations

import re

import pytest

from cloudops.engines.scratch import (
    MAX_NAME_LENGTH,
    check_scratch,
    is_scratch_name,
    is_scratch_of,
    like_pattern,
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
