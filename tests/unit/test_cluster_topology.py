"""Topology discovered, not assumed: who is the primary now, where a backup reads, and how the health
check words a primary that moved, from members' answers made up here (the pure parts)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cloudops.catalog import CatalogError, load_catalog_file
from cloudops.catalog.models import Catalog
from cloudops.clusters import (
    TopologyError,
    catalog_primary,
    current_roles,
    healthy_replicas,
    plan_backup_source,
)
from cloudops.engines import DatabaseState
from cloudops.engines.replication import MemberState, ReplicationLag, Topology, assemble_topology
from cloudops.health import (
    DEGRADED,
    DOWN,
    OK,
    WARNING,
    FailoverMove,
    Finding,
    assess_cluster,
    assess_database,
)

pytestmark = pytest.mark.unit

A, B, C = "127.0.0.1:5432", "127.0.0.1:5433", "127.0.0.1:5434"


def estate(source: str = "primary", *, third: bool = False) -> Catalog:
    members = [{"database": "shop"}, {"database": "shop_replica"}]
    databases = [
        {
            "name": "shop",
            "engine": "postgres",
            "conn_id": "c_shop",
            "database": "shop",
            "cluster": "shop_pg",
            "backup": {"repository": "r", "retention": {"keep_last": 1}, "source": source},
        },
        {
            "name": "shop_replica",
            "engine": "postgres",
            "conn_id": "c_shop_replica",
            "database": "shop",
            "cluster": "shop_pg",
            "role": "replica",
            "max_replication_lag": "30s",
        },
    ]
    if third:
        members.append({"name": "spare", "conn_id": "c_spare"})
    return Catalog.model_validate(
        {
            "estate": "acme",
            "owner": "ops",
            "databases": databases,
            "clusters": [
                {
                    "name": "shop_pg",
                    "manager": "native-pg",
                    "members": members,
                    "probe": {"conn_id": "p", "routing": "libpq-multihost"},
                }
            ],
        }
    )


def primary(name: str, address: str) -> MemberState:
    return MemberState(name, address, True, "primary", position="0/3000000", timeline=2, read_only=False)


def replica(name: str, address: str, upstream: str | None, *, streaming: bool = True) -> MemberState:
    return MemberState(name, address, True, "replica", upstream=upstream, streaming=streaming, read_only=True)


def down(name: str, address: str) -> MemberState:
    return MemberState(name, address, False, error="connection refused")


def promoted_and_old_gone() -> Topology:
    return assemble_topology("shop_pg", [down("shop", A), primary("shop_replica", B)])


def promoted_and_old_rejoined() -> Topology:
    return assemble_topology("shop_pg", [replica("shop", A, B), primary("shop_replica", B)])


def test_the_primary_is_the_member_that_takes_writes_whatever_the_catalog_says() -> None:
    catalog = estate()
    roles = current_roles(catalog, catalog.clusters[0], promoted_and_old_gone(), used_by="test")
    assert (roles.primary, roles.primary_conn_id, roles.replicas) == ("shop_replica", "c_shop_replica", ())
    assert roles.catalog_primary == "shop"
    assert roles.moved
    assert roles.describe() == (
        "the primary of cluster shop_pg is now shop_replica (the catalog says shop): primary shop_replica "
        "(127.0.0.1:5433); no replicas"
    )


def test_the_old_primary_rejoined_is_a_fit_replica() -> None:
    catalog = estate()
    roles = current_roles(catalog, catalog.clusters[0], promoted_and_old_rejoined(), used_by="test")
    assert (roles.primary, roles.replicas) == ("shop_replica", ("shop",))


def test_two_members_claiming_primary_is_refused_naming_both() -> None:
    catalog = estate()
    both = assemble_topology("shop_pg", [primary("shop", A), primary("shop_replica", B)])
    with pytest.raises(TopologyError) as refused:
        current_roles(catalog, catalog.clusters[0], both, used_by="backup of database 'shop'")
    assert str(refused.value).startswith(
        "backup of database 'shop': cluster 'shop_pg' has no single primary: 2 members claim to be the "
        "primary (shop, shop_replica): two writers; fence all but one"
    )


def test_no_member_claiming_primary_is_refused_with_each_members_answer() -> None:
    catalog = estate()
    none = assemble_topology("shop_pg", [down("shop", A), replica("shop_replica", B, A, streaming=False)])
    with pytest.raises(TopologyError) as refused:
        current_roles(catalog, catalog.clusters[0], none, used_by="test")
    message = str(refused.value)
    assert "cluster 'shop_pg' has no single primary: no member claims to be the primary (" in message
    assert "shop (127.0.0.1:5432) cannot be reached: connection refused" in message
    assert "replica shop_replica (127.0.0.1:5433) is not streaming" in message


def test_a_fit_replica_streams_from_the_primary_itself() -> None:
    found = assemble_topology(
        "c",
        [
            primary("a", A),
            replica("b", B, "localhost:5432"),  # loopback under another name: the same server
            replica("c", C, "10.0.0.9:5432"),  # follows another server
            replica("d", "127.0.0.1:5435", A, streaming=False),
        ],
    )
    assert healthy_replicas(found) == ("b",)
    assert healthy_replicas(assemble_topology("c", [primary("a", A), primary("b", B)])) == ()


def test_catalog_primary_is_the_one_member_database_declared_primary() -> None:
    catalog = estate(third=True)
    assert catalog_primary(catalog, catalog.clusters[0]) == "shop"
    both = Catalog.model_validate(
        {
            **catalog.model_dump(mode="json", exclude_none=True),
            "databases": [
                {**d.model_dump(mode="json", exclude_none=True), "role": "primary"} for d in catalog.databases
            ],
        }
    )
    assert catalog_primary(both, both.clusters[0]) is None  # two declared: no expectation


def lag(seconds: float | None, *, streaming: bool = True) -> ReplicationLag:
    return ReplicationLag("shop_replica", "shop", 128, seconds, streaming, "0/3000080", "0/3000000", "test")


def test_backup_source_primary_follows_the_primary_where_it_moved() -> None:
    catalog = estate()
    roles = current_roles(catalog, catalog.clusters[0], promoted_and_old_gone(), used_by="test")
    chosen = plan_backup_source(catalog, catalog.database("shop"), roles)
    assert (chosen.member, chosen.conn_id, chosen.role, chosen.address) == (
        "shop_replica",
        "c_shop_replica",
        "primary",
        B,
    )
    assert chosen.reason == (
        "source primary: the primary of cluster shop_pg is now shop_replica (the catalog says shop); "
        "backing up shop_replica"
    )
    assert chosen.to_evidence()["topology"] == "primary shop_replica (127.0.0.1:5433); no replicas"


def test_backup_source_primary_where_nothing_moved_says_so() -> None:
    catalog = estate()
    found = assemble_topology("shop_pg", [primary("shop", A), replica("shop_replica", B, A)])
    chosen = plan_backup_source(
        catalog, catalog.database("shop"), current_roles(catalog, catalog.clusters[0], found, used_by="t")
    )
    assert (chosen.member, chosen.reason) == (
        "shop",
        "source primary: shop is the primary of cluster shop_pg; backing up shop",
    )


def test_backup_source_replica_reads_a_replica_within_its_lag_bound() -> None:
    catalog = estate("replica")
    roles = current_roles(catalog, catalog.clusters[0], promoted_and_old_rejoined(), used_by="test")
    chosen = plan_backup_source(catalog, catalog.database("shop"), roles, replica_lags={"shop": lag(0.25)})
    assert (chosen.member, chosen.conn_id, chosen.role, chosen.policy) == (
        "shop",
        "c_shop",
        "replica",
        "replica",
    )
    assert chosen.reason == (
        "source replica: shop streams from the primary shop_replica (127.0.0.1:5433), 128 bytes and "
        "0.250 s behind (bound 5m); backing up shop"
    )


@pytest.mark.parametrize(
    ("measured", "why"),
    [
        (lag(400.0), "shop: 400.000 s behind (bound 5m)"),
        (lag(None), "shop: lag in seconds unknown (test)"),
        (lag(0.0, streaming=False), "shop: not streaming"),
        ("cannot read the lag of c_shop: timeout", "shop: cannot read the lag of c_shop: timeout"),
    ],
)
def test_backup_source_replica_falls_back_to_the_primary_saying_why(
    measured: ReplicationLag | str, why: str
) -> None:
    catalog = estate("replica")
    roles = current_roles(catalog, catalog.clusters[0], promoted_and_old_rejoined(), used_by="test")
    chosen = plan_backup_source(catalog, catalog.database("shop"), roles, replica_lags={"shop": measured})
    assert (chosen.member, chosen.role, chosen.policy) == ("shop_replica", "primary", "replica")
    assert chosen.reason == (
        f"source replica, but no replica is fit ({why}): the primary of cluster shop_pg is now "
        "shop_replica (the catalog says shop); backing up the primary shop_replica instead"
    )


def test_backup_source_replica_with_no_replica_at_all() -> None:
    catalog = estate("replica")
    roles = current_roles(catalog, catalog.clusters[0], promoted_and_old_gone(), used_by="test")
    chosen = plan_backup_source(catalog, catalog.database("shop"), roles)
    assert chosen.member == "shop_replica"
    assert chosen.reason.startswith("source replica, but no replica is fit (no replica streams from it): ")


DRILL = FailoverMove(
    "shop_pg", "manual__2026-12-03T05:00:00+00:00", "shop_replica", False, "2026-12-03T05:01Z"
)


def test_a_primary_moved_by_a_drill_is_a_warning_naming_the_run() -> None:
    findings = assess_cluster("shop_pg", promoted_and_old_rejoined(), catalog_primary="shop", last_move=DRILL)
    assert findings == [
        Finding(
            "cluster shop_pg",
            WARNING,
            "primary shop_replica (catalog: shop)",
            "the primary of cluster shop_pg is now shop_replica (moved by drill run "
            "manual__2026-12-03T05:00:00+00:00, recorded 2026-12-03T05:01Z); backups read it; fail back to "
            "shop, or make shop_replica the catalog's primary",
        )
    ]


@pytest.mark.parametrize(
    ("move", "problem", "how"),
    [
        (None, None, "not recorded: investigate"),
        (
            FailoverMove("shop_pg", "r1", "shop_replica", True),
            None,
            "not recorded: investigate; the last drill, run r1, failed back to shop",
        ),
        (
            FailoverMove("shop_pg", "r2", "spare", False),
            None,
            "not recorded: investigate; the last drill, run r2, left spare primary",
        ),
        (
            None,
            "the ledger could not be read: gone",
            "not recorded: investigate; the ledger could not be read: gone",
        ),
    ],
)
def test_a_primary_moved_by_nothing_recorded_says_investigate(
    move: FailoverMove | None, problem: str | None, how: str
) -> None:
    (finding,) = assess_cluster(
        "shop_pg",
        promoted_and_old_rejoined(),
        catalog_primary="shop",
        last_move=move,
        history_problem=problem,
    )
    assert finding.status == WARNING
    assert finding.problem == (
        f"the primary of cluster shop_pg is now shop_replica ({how}); backups read it; fail back to shop, "
        "or make shop_replica the catalog's primary"
    )


def test_a_moved_primary_with_its_old_one_gone_is_degraded_and_warned() -> None:
    degraded, warning = assess_cluster(
        "shop_pg", promoted_and_old_gone(), catalog_primary="shop", last_move=DRILL
    )
    assert (degraded.status, degraded.detail) == (
        DEGRADED,
        "primary shop_replica (127.0.0.1:5433); no replicas",
    )
    assert degraded.problem == "shop_pg: shop (127.0.0.1:5432) cannot be reached: connection refused"
    assert warning.status == WARNING
    assert "(moved by drill run manual__2026-12-03T05:00:00+00:00" in (warning.problem or "")


def test_the_catalogs_primary_in_place_is_ok_and_a_cluster_with_no_expectation_too() -> None:
    whole = assemble_topology("shop_pg", [primary("shop", A), replica("shop_replica", B, A)])
    assert assess_cluster("shop_pg", whole, catalog_primary="shop") == [
        Finding("cluster shop_pg", OK, "primary shop (127.0.0.1:5432); replicas: shop_replica (streaming)")
    ]
    (finding,) = assess_cluster("shop_pg", promoted_and_old_rejoined(), catalog_primary=None)
    assert finding.status == OK


def test_no_primary_or_two_primaries_fail_the_check() -> None:
    two = assemble_topology("shop_pg", [primary("shop", A), primary("shop_replica", B)])
    (finding,) = assess_cluster("shop_pg", two, catalog_primary="shop", last_move=DRILL)
    assert (finding.status, finding.detail) == (DOWN, "2 primaries: shop, shop_replica")
    assert (finding.problem or "").startswith(
        "2 members claim to be the primary: two writers (a split brain); fence all but one"
    )
    none = assemble_topology("shop_pg", [down("shop", A), down("shop_replica", B)])
    (finding,) = assess_cluster("shop_pg", none, catalog_primary="shop")
    assert (finding.status, finding.detail) == (DOWN, "no primary")
    assert (finding.problem or "").startswith("no member claims to be the primary (shop_pg: shop (")


def test_a_failover_fact_of_the_wrong_shape_reads_as_unknown() -> None:
    move = FailoverMove.from_fact(
        {"cluster": "c", "run_id": 7, "new_primary": "x" * 500, "failed_back": "yes"}
    )
    assert (move.run_id, move.new_primary, move.failed_back) == (None, "x" * 200, False)


def test_a_member_database_that_moved_is_no_role_mismatch() -> None:
    catalog = estate()
    now_primary = assess_database(
        catalog.database("shop_replica"),
        DatabaseState(True, "primary", "15.8", replicas_connected=1),
        catalog,
    )
    assert now_primary == Finding(
        "database shop_replica",
        OK,
        "primary, postgres 15.8 (catalog: replica; see cluster shop_pg), 1 replica(s) streaming",
    )
    alone = assess_database(
        catalog.database("shop_replica"),
        DatabaseState(True, "primary", "15.8", replicas_connected=0),
        catalog,
    )
    assert (alone.status, alone.problem) == (DEGRADED, "no replica is streaming (expected shop)")
    now_replica = assess_database(
        catalog.database("shop"), DatabaseState(True, "replica", "15.8", 2.0, True), catalog
    )
    assert now_replica.status == OK
    assert now_replica.detail == "replica, postgres 15.8 (catalog: primary; see cluster shop_pg), lag 2s"


CATALOG = """\
estate: acme
owner: ops
clouds: [{name: aws, provider: aws, aws_conn_id: aws, region: eu-west-1}]
repositories: [{name: r, cloud: aws, bucket: acme-backups, region: eu-west-1}]
databases:
  - name: solo
    engine: postgres
    conn_id: c_solo
    database: solo
    backup: {repository: r, retention: {keep_last: 1}, source: replica}
"""


def test_backup_source_replica_outside_any_cluster_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(textwrap.dedent(CATALOG))
    with pytest.raises(CatalogError) as refused:
        load_catalog_file(path)
    (issue,) = refused.value.issues
    assert issue.field == "databases[0].backup.source"
    assert "database 'solo' is a member of no cluster: it has no replica to back up from" in issue.message
