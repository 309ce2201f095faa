"""The preflight guards of a failover drill, each deciding from facts given to it and saying why:
lag in bytes and seconds, healthy replicas, the candidate, the interval since the last drill, the
window, the mode the catalog allows, and the only synchronous standby."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cloudops.engines.replication import Downstream, MemberState, ReplicationLag, assemble_topology
from cloudops.errors import InvalidInputError
from cloudops.failover.guards import (
    candidate_guard,
    healthy_replicas_guard,
    interval_guard,
    lag_guard,
    mode_guard,
    preflight,
    sync_standby_guard,
    window_guard,
)
from cloudops.failover.policy import DrillGuards, DrillTargets, DrillWindow

pytestmark = pytest.mark.unit

CLUSTER = "orders"


def primary(sync_state: str = "async", downstream: int = 1) -> MemberState:
    return MemberState(
        "n1",
        "127.0.0.1:24401",
        True,
        "primary",
        position="0/3000000",
        timeline=1,
        read_only=False,
        downstream=tuple(
            Downstream(f"n{i + 2}", "127.0.0.1", "streaming", sync_state, 0) for i in range(downstream)
        ),
    )


def replica(
    name: str = "n2", *, streaming: bool = True, timeline: int = 1, reachable: bool = True
) -> MemberState:
    if not reachable:
        return MemberState(name, "127.0.0.1:24402", False, error="connection refused")
    return MemberState(
        name,
        "127.0.0.1:24402",
        True,
        "replica",
        upstream="127.0.0.1:24401",
        streaming=streaming,
        position="0/3000000",
        timeline=timeline,
        read_only=True,
    )


def lag(bytes_: int | None = 0, seconds: float | None = 0.0, streaming: bool = True) -> ReplicationLag:
    return ReplicationLag("n1", "n2", bytes_, seconds, streaming, "0/3000000", "0/3000000", "test")


def test_lag_within_both_bounds_passes_and_over_either_refuses() -> None:
    guards = DrillGuards(max_lag_bytes=1024, max_lag_s=5)
    ok = lag_guard(CLUSTER, lag(100, 0.5), guards)
    assert ok.passed
    assert ok.reason == "orders: n2 is 100 bytes and 0.500 s behind n1"
    over_bytes = lag_guard(CLUSTER, lag(4096, 0.0), guards)
    assert not over_bytes.passed
    assert over_bytes.reason == "orders: n2 is 4096 bytes behind n1 (bound 1024)"
    over_seconds = lag_guard(CLUSTER, lag(0, 7.25), guards)
    assert over_seconds.reason == "orders: n2 is 7.250 s behind n1 (bound 5 s)"
    assert not lag_guard(CLUSTER, lag(None, 0.0), guards).passed
    assert not lag_guard(CLUSTER, lag(0, 0.0, streaming=False), guards).passed


def test_healthy_replicas_counts_only_streaming_replicas_of_the_primary() -> None:
    guards = DrillGuards(min_healthy_replicas=2)
    two = assemble_topology(CLUSTER, [primary(downstream=2), replica("n2"), replica("n3")])
    assert healthy_replicas_guard(two, guards).passed
    one = assemble_topology(CLUSTER, [primary(downstream=2), replica("n2"), replica("n3", streaming=False)])
    decision = healthy_replicas_guard(one, guards)
    assert not decision.passed
    assert decision.reason == (
        "orders: 1 healthy replica(s) of primary n1, 2 required (n3 not streaming from the primary)"
    )
    stale = assemble_topology(CLUSTER, [primary(), replica("n2", timeline=0)])
    assert not healthy_replicas_guard(stale, DrillGuards()).passed
    split = assemble_topology(CLUSTER, [primary(), MemberState("n2", "127.0.0.1:24402", True, "primary")])
    refused = healthy_replicas_guard(split, DrillGuards())
    assert not refused.passed
    assert "two writers" in refused.reason


def test_the_candidate_must_be_up_and_stream_from_the_primary() -> None:
    whole = assemble_topology(CLUSTER, [primary(), replica()])
    assert (
        candidate_guard(whole, "n2").reason
        == "orders: candidate n2 (127.0.0.1:24402) streams from n1 on timeline 1"
    )
    down = assemble_topology(CLUSTER, [primary(), replica(reachable=False)])
    refused = candidate_guard(down, "n2")
    assert not refused.passed
    assert refused.reason == "orders: candidate n2 (127.0.0.1:24402) is down: connection refused"
    assert (
        candidate_guard(whole, "n1").reason
        == "orders: candidate n1 (127.0.0.1:24401) is primary, not a replica"
    )
    assert candidate_guard(whole, "n9").reason == "orders: n9 is no member (members: n1, n2)"
    lagging = assemble_topology(CLUSTER, [primary(), replica(streaming=False)])
    assert not candidate_guard(lagging, "n2").passed


def test_the_minimum_interval_since_the_last_drill() -> None:
    now = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    guards = DrillGuards(min_interval=timedelta(hours=24))
    assert interval_guard(CLUSTER, None, now, guards).reason == "orders: no earlier drill recorded"
    recent = interval_guard(CLUSTER, now - timedelta(hours=2), now, guards)
    assert not recent.passed
    assert recent.reason == (
        "orders: the last drill was at 2026-12-06T01:00:00+00:00, 2 h 00 min ago; the minimum interval is "
        "24 h 00 min (next in 22 h 00 min)"
    )
    assert interval_guard(CLUSTER, now - timedelta(hours=25), now, guards).passed


def test_the_window_including_one_past_midnight() -> None:
    sunday = DrillGuards(window=DrillWindow.parse("Sun 02:00-04:00"))
    inside = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)  # a Sunday
    assert window_guard(CLUSTER, inside, sunday).passed
    outside = window_guard(CLUSTER, inside + timedelta(hours=2), sunday)
    assert not outside.passed
    assert outside.reason == (
        "orders: 2026-12-06T05:00:00+00:00 is outside the drill window Sun 02:00-04:00 UTC"
    )
    night = DrillWindow.parse("Mon-Fri 22:00-02:00")
    assert night.contains(datetime(2026, 12, 4, 23, 0, tzinfo=UTC))  # Friday evening
    assert night.contains(datetime(2026, 12, 5, 1, 0, tzinfo=UTC))  # Saturday morning, Friday's window
    assert not night.contains(datetime(2026, 12, 6, 1, 0, tzinfo=UTC))  # Sunday morning
    assert not night.contains(datetime(2026, 12, 4, 12, 0, tzinfo=UTC))
    assert DrillWindow.parse("daily 02:00-03:00").days == frozenset(range(7))
    assert DrillWindow.parse("Sat,Sun 01:00-05:00").days == frozenset({5, 6})
    assert window_guard(CLUSTER, inside, DrillGuards()).reason == "orders: no drill window set: any time"


def test_a_window_in_a_time_zone() -> None:
    berlin = DrillWindow.parse("Sun 02:00-04:00", timezone="Europe/Berlin")
    assert berlin.contains(datetime(2026, 12, 6, 1, 30, tzinfo=UTC))  # 02:30 in Berlin
    assert not berlin.contains(datetime(2026, 12, 6, 3, 30, tzinfo=UTC))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Sunday at two", "is no window"),
        ("Sun 25:00-26:00", "is no time of day"),
        ("Xyz 02:00-03:00", "'xyz' is no day"),
        ("Sun 02:00-02:00", "starts and ends at the same time"),
    ],
)
def test_a_bad_window_is_refused_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=rf"^guards\.window: .*{message}"):
        DrillWindow.parse(text)


def test_crash_only_where_the_catalog_allows_it() -> None:
    refused = mode_guard(CLUSTER, "crash", DrillGuards())
    assert not refused.passed
    assert refused.reason == "orders: mode 'crash' is not allowed for this cluster (allowed: planned)"
    assert mode_guard(CLUSTER, "crash", DrillGuards(modes_allowed=frozenset({"planned", "crash"}))).passed


def test_the_only_synchronous_standby_is_never_crashed() -> None:
    only_sync = assemble_topology(CLUSTER, [primary("sync"), replica()])
    crash = sync_standby_guard(only_sync, "crash", "n2")
    assert not crash.passed
    assert crash.reason == (
        "orders: n1 replicates synchronously to n2 only; a crash drill needs at least 2 sync-capable "
        "standbys, or writes block once n2 is promoted"
    )
    assert sync_standby_guard(only_sync, "planned", "n2").passed
    two = assemble_topology(CLUSTER, [primary("sync", downstream=2), replica("n2"), replica("n3")])
    assert sync_standby_guard(two, "crash", "n2").passed
    asynchronous = assemble_topology(CLUSTER, [primary(), replica()])
    assert (
        sync_standby_guard(asynchronous, "crash", "n2").reason
        == "orders: replication from n1 is asynchronous"
    )


def test_preflight_keeps_every_decision_and_explains_each_refusal() -> None:
    topology = assemble_topology(CLUSTER, [primary(), replica()])
    now = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    guards = DrillGuards(max_lag_bytes=1024)
    ok = preflight(
        topology, candidate="n2", mode="planned", lag=lag(), last_drill_at=None, now=now, guards=guards
    )
    assert ok.passed
    assert [d.guard for d in ok.decisions] == [
        "mode",
        "window",
        "interval",
        "candidate",
        "healthy_replicas",
        "sync_standby",
        "lag",
    ]
    refused = preflight(
        topology,
        candidate="n2",
        mode="crash",
        lag=None,
        last_drill_at=None,
        now=now,
        guards=guards,
        lag_error="connection refused",
    )
    assert not refused.passed
    assert [d.guard for d in refused.refusals] == ["mode", "lag"]
    assert refused.explain() == (
        "orders: drill refused: orders: mode 'crash' is not allowed for this cluster (allowed: planned); "
        "orders: the lag of n2 could not be read: connection refused"
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DrillTargets(max_write_downtime_s=0), "targets.max_write_downtime_s must be more than 0"),
        (lambda: DrillTargets(max_acked_writes_lost=-1), "targets.max_acked_writes_lost must be 0 or more"),
        (lambda: DrillGuards(min_healthy_replicas=0), "guards.min_healthy_replicas must be at least 1"),
        (lambda: DrillGuards(modes_allowed=frozenset({"chaos"})), "guards.modes_allowed: unknown mode"),
        (lambda: DrillGuards(max_lag_bytes=-5), "guards.max_lag_bytes must be 0 or more"),
    ],
)
def test_bad_policy_values_are_refused_by_name(make: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        make()  # type: ignore[operator]
