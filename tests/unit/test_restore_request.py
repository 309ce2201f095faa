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
        (
            {"target": "orders"},
            "target_database: 'orders' on sandbox_pg_primary is the source database of orders_pg: refusing",
        ),
        (
            {"database": "inventory_mariadb", "target": "inventory"},
            "target_database: 'inventory' on sandbox_mariadb is the source database of inventory_mariadb",
        ),
        ({"target": "orders", "confirm_overwrite": True}, "allow_restore_over for orders_pg"),
        # a scratch-shaped name that no drill created is still never a target (H4)
        ({"target": "drill_logs_2024010112"}, "is named like a scratch database (drill_...)"),
        ({"target": "drill_orders_pg_1a2b3c4d5e"}, "is named like a scratch database"),
        ({"target": "template1", "confirm_overwrite": True}, "'template1' is a system database"),
        ({"target": "postgres"}, "'postgres' is a system database"),
        ({"database": "inventory_mariadb", "target": "mysql"}, "'mysql' is a system database"),
        ({"database": "inventory_mariadb", "target": "sys"}, "'sys' is a system database"),
        (
            {"target": "payments", "confirm_overwrite": True},
            "'payments' on sandbox_pg_primary is not in the catalog, and sandbox_pg_primary holds catalog "
            "primary orders_pg: refusing",
        ),
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


def test_names_are_compared_per_server(catalogs) -> None:  # type: ignore[no-untyped-def]
    # "inventory" is the MariaDB primary's database, not a database of orders_pg's PostgreSQL server:
    # there it is a new name
    request = check_request(catalogs, database="orders_pg", target="inventory")
    assert (request.target, request.overwrite) == ("inventory", False)


ESTATE = """
estate: t
owner: tests
clouds: [{name: aws, provider: aws, aws_conn_id: a, region: eu-west-1}]
repositories: [{name: r, cloud: aws, bucket: backups-t, region: eu-west-1}]
databases:
  - {name: orders_pg, engine: postgres, conn_id: pg1, database: orders, allow_restore_over: true,
     backup: {repository: r, retention: {keep_last: 3}}}
  - {name: billing_pg, engine: postgres, conn_id: pg1, database: billing, allow_restore_over: true,
     backup: {repository: r, retention: {keep_last: 3}}}
  - {name: ledger_pg, engine: postgres, conn_id: pg1, database: ledger}
  - {name: archive_pg, engine: postgres, conn_id: pg2, database: archive,
     backup: {repository: r, retention: {keep_last: 3}}}
"""


@pytest.mark.parametrize(
    ("database", "target", "refused"),
    [
        ("orders_pg", "orders", None),  # its own flag, its own database, confirmed
        # the target's own entry allows it (the backup may be another entry's)
        ("orders_pg", "billing", None),
        # orders_pg's flag never unlocks another entry's database
        (
            "orders_pg",
            "ledger",
            "'ledger' on pg1 is the database of catalog primary ledger_pg: refusing to restore "
            "over it (the catalog must set allow_restore_over for ledger_pg",
        ),
        # unlisted, on a server that holds catalog primaries: no flag can allow it
        ("billing_pg", "payments", "'payments' on pg1 is not in the catalog, and pg1 holds catalog primary "),
        # "orders" on pg2 is not the catalog's orders (that one lives on pg1): an unlisted database there
        (
            "archive_pg",
            "orders",
            "'orders' on pg2 is not in the catalog, and pg2 holds catalog primary archive_pg",
        ),
        ("archive_pg", "archive", "allow_restore_over for archive_pg"),
    ],
)
def test_allow_restore_over_unlocks_only_its_own_database_on_its_own_server(
    tmp_path: Path, database: str, target: str, refused: str | None
) -> None:
    (tmp_path / "t.yaml").write_text(ESTATE)
    catalogs = load_catalogs([tmp_path / "t.yaml"])
    if refused is None:
        request = check_request(catalogs, database=database, target=target, confirm_overwrite=True)
        assert (request.database, request.target, request.overwrite) == (database, target, True)
        return
    with pytest.raises(InvalidInputError) as error:
        check_request(catalogs, database=database, target=target, confirm_overwrite=True)
    assert refused in str(error.value)
    # unconfirmed, a listed database is refused too; an unlisted name is a new database
    if "is not in the catalog" in refused:
        assert not check_request(catalogs, database=database, target=target).overwrite
    else:
        with pytest.raises(InvalidInputError, match="refusing to restore"):
            check_request(catalogs, database=database, target=target)


def test_every_restore_stages_under_a_name_no_drill_cleans_up() -> None:
    from cloudops.engines.scratch import is_scratch_name, is_scratch_of
    from cloudops.runbooks.restore_request import RestoreRequest, kept_name, restored_into, staging_stem

    request = RestoreRequest("c.yaml", "sandbox", "orders_pg", "latest", "orders", overwrite=True)
    staging = restored_into(request, "manual__2026-11-23T10:00:00+00:00")
    assert is_scratch_name(staging)
    assert is_scratch_of(staging, "restore_orders")  # named for the target: runs for it find each other
    assert not is_scratch_of(staging, "orders_pg")  # a drill of orders_pg never drops it
    assert not is_scratch_of(staging, "orders")  # nor a drill of a catalog database named "orders"
    new = restored_into(RestoreRequest("c.yaml", "sandbox", "orders_pg", "latest", "copy"), "r")
    assert is_scratch_of(new, "restore_copy"), "a new database is staged too, never under its final name"
    assert restored_into(request, "run-a") != restored_into(request, "run-b")
    # long targets keep distinct stems within a catalog name's 63 characters
    long_a, long_b = "a" * 60 + "_x", "a" * 60 + "_y"
    assert staging_stem(long_a) != staging_stem(long_b)
    assert (
        max(
            len(staging_stem(long_a)),
            len(restored_into(RestoreRequest("c", "e", "d", "latest", long_a), "r")),
        )
        <= 63
    )
    from datetime import UTC, datetime

    assert kept_name("orders", datetime(2026, 11, 23, 10, 0, tzinfo=UTC)) == "orders_before_20261123100000"
    assert len(kept_name("x" * 63, datetime(2026, 11, 23, tzinfo=UTC))) == 63


@pytest.mark.parametrize(
    ("requester", "approver", "decision", "approvers", "refused"),
    [
        ("alice", "bob", "Approve", None, None),
        # the same person, whatever the case
        ("alice", "Alice", "Approve", None, "Alice triggered this run and cannot approve it"),
        ("alice", "alice", "Reject", None, "the answer is 'Reject', not 'Approve'"),
        ("alice", None, "Approve", None, "names no approver"),
        # started by the scheduler, the CLI or an API service account: nobody can be told apart
        (None, "bob", "Approve", None, "the run's requester is unknown"),
        ("  ", "bob", "Approve", None, "the run's requester is unknown"),
        ("alice", "bob", "Approve", ["carol"], "bob is not on this estate's approver list (carol)"),
        ("alice", "Carol", "Approve", ["carol", "dave"], None),
        # an approver list never lets the requester approve
        ("carol", "carol", "Approve", ["carol"], "carol triggered this run and cannot approve it"),
    ],
)
def test_an_approval_counts_only_from_a_known_second_person_on_the_list(
    requester: str | None,
    approver: str | None,
    decision: str,
    approvers: list[str] | None,
    refused: str | None,
) -> None:
    from cloudops.runbooks.approval import approval_refusal

    reason = approval_refusal(requester, approver, approver, decision, approvers)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None
        assert refused in reason


@pytest.fixture
def airflow_users(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Airflow users the swap knows (SimpleAuthManager reads them from its configuration)."""
    monkeypatch.setenv(
        "AIRFLOW__CORE__AUTH_MANAGER",
        "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
    )
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,oncall:user,approver:user")


def test_a_requester_the_auth_manager_does_not_know_is_refused() -> None:
    from cloudops.runbooks.approval import approval_refusal

    known = ["admin", "oncall", "approver"]
    # `airflow dags trigger` records the shell's user, which anyone with a shell can be
    reason = approval_refusal("root", "approver", "approver", "Approve", known_users=known)
    assert reason is not None
    assert "the run's requester 'root' is not an Airflow user" in reason
    assert approval_refusal("Oncall", "approver", "approver", "Approve", known_users=known) is None


def _overwrite(project_root: Path):  # type: ignore[no-untyped-def]
    from cloudops.runbooks.restore_request import RestoreRequest

    return RestoreRequest(
        str(project_root / "runbooks" / "sandbox.yaml"),
        "sandbox",
        "orders_pg",
        "latest",
        "orders",
        overwrite=True,
    )


@pytest.mark.parametrize(
    ("approval", "requested_by", "refused"),
    [
        # the careless cases of issue 9, each reaching the swap step: nothing may be changed
        (None, "oncall", "run r1: no approval reached the swap (requested by oncall, approved by nobody)"),
        (
            {"approver_id": "oncall", "approver_name": "oncall", "requested_by": "oncall"},
            "oncall",
            "run r1: requested by oncall, answered Approve by oncall: oncall triggered this run and cannot "
            "approve it",
        ),
        (
            {"approver_id": "approver", "approver_name": "approver", "requested_by": None},
            None,
            "run r1: requested by an unknown user, answered Approve by approver: the run's requester is "
            "unknown",
        ),
        (
            {"approver_id": "approver", "approver_name": "approver", "requested_by": "root"},
            "root",
            "run r1: requested by root, answered Approve by approver: the run's requester 'root' is not an "
            "Airflow user",
        ),
        # sandbox.yaml names `approver` as the only approver
        (
            {"approver_id": "admin", "approver_name": "admin", "requested_by": "oncall"},
            "oncall",
            "admin is not on this estate's approver list (approver)",
        ),
        (
            {
                "approver_id": "approver",
                "approver_name": "approver",
                "requested_by": "oncall",
                "decision": "Reject",
            },
            "oncall",
            "the answer is 'Reject'",
        ),
        # an answer given in another run, or for another requester, never counts here
        (
            {
                "approver_id": "approver",
                "approver_name": "approver",
                "requested_by": "oncall",
                "run_id": "r0",
            },
            "oncall",
            "the approval belongs to run r0",
        ),
        (
            {"approver_id": "approver", "approver_name": "approver", "requested_by": "oncall"},
            "mallory",
            "the approval belongs to run r1 (requested by oncall), not to this one (requested by mallory)",
        ),
    ],
)
@pytest.mark.usefixtures("airflow_users")
def test_the_swap_refuses_without_an_accepted_second_persons_approval(
    project_root: Path, approval: dict[str, str] | None, requested_by: str | None, refused: str
) -> None:
    """put_in_place checks the approval itself, before it connects anywhere (no server is needed here:
    a refusal that came after connecting would fail on the missing sandbox connection instead)."""
    from cloudops.errors import CloudOpsError
    from cloudops.runbooks.approval import Approval
    from cloudops.runbooks.restore_request import put_in_place

    given = Approval(**{"run_id": "r1", "decision": "Approve", **approval}) if approval else None
    announced: list[str] = []
    with pytest.raises(CloudOpsError) as error:
        put_in_place(
            _overwrite(project_root),
            run_id="r1",
            approval=given,
            requested_by=requested_by,
            announce=announced.append,
        )
    assert refused in str(error.value)
    assert "nothing was changed" in str(error.value)
    assert announced == [], "the swap never started"


def test_an_approver_role_resolves_to_its_users_under_simple_auth_manager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cloudops.errors import CloudOpsError
    from cloudops.runbooks.approval import users_of_role

    monkeypatch.setenv(
        "AIRFLOW__CORE__AUTH_MANAGER",
        "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
    )
    monkeypatch.setenv(
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,approver:user,carol:User,eve:viewer"
    )
    assert users_of_role("user") == ["approver", "carol"]
    assert users_of_role("op") == []
    monkeypatch.setenv(
        "AIRFLOW__CORE__AUTH_MANAGER", "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
    )
    with pytest.raises(CloudOpsError, match=r"list the approvers by user id in approvals\.approvers"):
        users_of_role("user")
