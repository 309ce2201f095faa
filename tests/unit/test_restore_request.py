"""The restore request's checks: every bad field is refused with its name, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudops.catalog import load_catalogs
from cloudops.errors import InvalidInputError
from cloudops.runbooks.restore_request import check_request

pytestmark = pytest.mark.unit


@pytest.fixture
def catalogs(project_root: Path):  # type: ignore[no-untyped-def]
    return load_catalogs([project_root / "runbooks" / "sandbox.yaml"])


def test_a_new_target_is_accepted(catalogs) -> None:  # type: ignore[no-untyped-def]
    request = check_request(catalogs, database="orders_pg", target="orders_restored")
    assert (request.estate, request.database, request.backup_id, request.target) == (
        "sandbox",
        "orders_pg",
        "latest",
        "orders_restored",
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"database": "orders"}, "database: 'orders' is not in the catalog (did you mean 'orders_pg'?)"),
        ({"database": "orders_pg_replica"}, "database: 'orders_pg_replica' has no backup policy"),
        ({"backup_id": "yesterday"}, "backup_id: 'yesterday' is neither 'latest' nor a backup id"),
        ({"point_in_time": "2026-11-22T10:00:00Z"}, "point_in_time: point-in-time restores"),
        ({"target": "Orders-Copy"}, "target_database: 'Orders-Copy' must be lower-case"),
        ({"target": "orders"}, "target_database: 'orders' is the source database of orders_pg: refusing"),
        (
            {"target": "inventory"},
            "target_database: 'inventory' is the database of catalog primary inventory_mariadb",
        ),
        ({"target": "orders", "confirm_overwrite": True}, "allow_restore_over for orders_pg"),
    ],
)
def test_bad_fields_are_refused_by_name(catalogs, fields: dict[str, object], message: str) -> None:  # type: ignore[no-untyped-def]
    request = {"database": "orders_pg", "target": "orders_restored", **fields}
    with pytest.raises(InvalidInputError) as refused:
        check_request(catalogs, **request)  # type: ignore[arg-type]
    assert message in str(refused.value)
