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


def test_an_overwrite_needs_the_catalog_permission_and_the_confirmation(
    tmp_path: Path, project_root: Path
) -> None:
    text = (project_root / "runbooks" / "sandbox.yaml").read_text()
    allowed = tmp_path / "sandbox.yaml"
    allowed.write_text(
        text.replace(
            "    rds_instance_id: orders-pg\n",
            "    rds_instance_id: orders-pg\n    allow_restore_over: true\n",
        )
    )
    catalogs = load_catalogs([allowed])
    with pytest.raises(InvalidInputError, match="the overwrite must be confirmed"):
        check_request(catalogs, database="orders_pg", target="orders")
    request = check_request(catalogs, database="orders_pg", target="orders", confirm_overwrite=True)
    assert request.overwrite
    assert request.target == "orders"
    # inventory_mariadb does not allow it, whatever is confirmed
    with pytest.raises(InvalidInputError, match="allow_restore_over for inventory_mariadb"):
        check_request(catalogs, database="inventory_mariadb", target="inventory", confirm_overwrite=True)


def test_an_overwrite_stages_under_a_name_no_drill_cleans_up() -> None:
    from cloudops.engines.scratch import is_scratch_name, is_scratch_of
    from cloudops.runbooks.restore_request import RestoreRequest, kept_name, restored_into

    request = RestoreRequest("c.yaml", "sandbox", "orders_pg", "latest", "orders", overwrite=True)
    staging = restored_into(request, "manual__2026-11-23T10:00:00+00:00")
    assert is_scratch_name(staging)
    assert not is_scratch_of(staging, "orders_pg")  # a drill of orders_pg never drops it
    assert restored_into(RestoreRequest("c.yaml", "sandbox", "orders_pg", "latest", "copy"), "r") == "copy"
    from datetime import UTC, datetime

    assert kept_name("orders", datetime(2026, 11, 23, 10, 0, tzinfo=UTC)) == "orders_before_20261123100000"
    assert len(kept_name("x" * 63, datetime(2026, 11, 23, tzinfo=UTC))) == 63


@pytest.mark.parametrize(
    ("requester", "approver", "decision", "refused"),
    [
        ("alice", "bob", "Approve", None),
        # the same person, whatever the case
        ("alice", "Alice", "Approve", "Alice triggered this run and cannot approve it"),
        ("alice", "alice", "Reject", None),  # rejecting your own request is always allowed
        ("alice", None, "Approve", "names no approver"),
        (None, "bob", "Approve", None),  # started by the scheduler or the CLI
    ],
)
def test_an_approval_counts_only_from_a_second_person(
    requester: str | None, approver: str | None, decision: str, refused: str | None
) -> None:
    from cloudops.runbooks.approval import approval_refusal

    reason = approval_refusal(requester, approver, decision)
    assert (reason is None) == (refused is None)
    if refused:
        assert refused in reason
