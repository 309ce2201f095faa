"""The write probe's record judged by hand-computed examples: downtime windows (errors and stalls),
the largest gap between acknowledgements, acknowledged writes lost on read-back, in-doubt commits, and
each target's verdict with its reason."""

from __future__ import annotations

import pytest

from cloudops.failover.analysis import ProbeAttempt, analyse, overall, verdicts
from cloudops.failover.policy import DrillTargets

pytestmark = pytest.mark.unit

WALL0 = 1_800_000_000.0


def attempt(
    id: int, sent: float, took: float, outcome: str = "acked", error: str | None = None, server: str = "a:1"
) -> ProbeAttempt:
    return ProbeAttempt(
        id=id,
        sent_mono=sent,
        done_mono=sent + took,
        sent_wall=WALL0 + sent,
        outcome=outcome,  # type: ignore[arg-type]
        error_class=error,
        server=None if outcome == "failed" else server,
    )


# A switchover as the probe sees it: a killed session (in doubt), two refused connections, then the
# other server.
SWITCHOVER = [
    attempt(1, 0.0, 0.01),
    attempt(2, 1.0, 0.01),
    attempt(3, 2.0, 0.01),
    attempt(4, 3.0, 0.02, "in_doubt", "AdminShutdown"),
    attempt(5, 3.1, 0.05, "failed", "connection failed"),
    attempt(6, 3.2, 0.05, "failed", "connection failed"),
    attempt(7, 3.3, 0.02, server="b:2"),
    attempt(8, 4.0, 0.01, server="b:2"),
]


def test_a_switchover_window_runs_from_the_first_failure_to_the_next_ack() -> None:
    found = analyse(SWITCHOVER, present_ids={1, 3, 4, 7, 8})
    assert len(found.windows) == 1
    window = found.windows[0]
    assert window.seconds == pytest.approx(0.32)  # 3.0 sent -> 3.32 acked
    assert (window.first_id, window.last_id, window.failed, window.in_doubt, window.stalls) == (4, 7, 2, 1, 0)
    assert window.error_classes == ("AdminShutdown", "connection failed")
    assert window.closed
    assert found.write_downtime_s == pytest.approx(0.32)
    assert found.writes_recovered
    # acks at 0.01, 1.01, 2.01, 3.32, 4.01: the longest gap is 2.01 -> 3.32.
    assert found.max_ack_gap_s == pytest.approx(1.31)
    assert (found.attempts, found.acked, found.failed, found.in_doubt) == (8, 5, 2, 1)
    assert found.error_classes == {"AdminShutdown": 1, "connection failed": 2}
    assert found.servers == ("a:1", "b:2")
    # id 2 was acknowledged and is gone; id 4 was in doubt and did commit.
    assert found.lost_ids == (2,)
    assert found.acked_writes_lost == 1
    assert found.in_doubt_ids == (4,)
    assert found.in_doubt_committed_ids == (4,)


def test_a_blocked_commit_is_downtime_though_no_error_was_seen() -> None:
    # The sync standby vanished: one commit took 5.66 s and succeeded.
    found = analyse(
        [attempt(1, 0.0, 0.01), attempt(2, 0.02, 5.66), attempt(3, 5.7, 0.01)], present_ids={1, 2, 3}
    )
    assert found.failed == found.in_doubt == 0
    assert found.stalls == 1
    assert found.write_downtime_s == pytest.approx(5.69)  # 0.02 sent -> 5.71, the next ack in time
    assert found.max_ack_gap_s == pytest.approx(5.67)  # 0.01 -> 5.68
    assert found.acked_writes_lost == 0


def test_a_stall_then_failures_make_one_window() -> None:
    found = analyse(
        [
            attempt(1, 0.0, 0.01),
            attempt(2, 1.0, 0.5),
            attempt(3, 1.6, 0.05, "failed", "connection failed"),
            attempt(4, 1.7, 0.01),
            attempt(5, 2.0, 0.01),
            attempt(6, 9.0, 0.3),  # a second, lone stall
            attempt(7, 9.4, 0.01),
        ],
        present_ids=set(range(1, 8)),
    )
    assert [round(w.seconds, 6) for w in found.windows] == [0.71, 0.41]
    assert (found.windows[0].stalls, found.windows[0].failed) == (1, 1)
    assert found.stalls == 2
    assert found.write_downtime_s == pytest.approx(0.71)
    assert found.total_write_downtime_s == pytest.approx(1.12)


def test_the_stall_threshold_decides_what_is_slow() -> None:
    record = [attempt(1, 0.0, 0.01), attempt(2, 1.0, 0.2), attempt(3, 1.3, 0.01)]
    assert analyse(record, present_ids={1, 2, 3}).windows == ()
    strict = analyse(record, present_ids={1, 2, 3}, stall_threshold_s=0.1)
    assert strict.write_downtime_s == pytest.approx(0.31)


def test_writes_that_never_came_back_leave_an_open_window_and_fail() -> None:
    found = analyse(
        [
            attempt(1, 0.0, 0.01),
            attempt(2, 1.0, 0.05, "failed", "connection failed"),
            attempt(3, 2.0, 0.05, "failed", "connection failed"),
        ],
        present_ids={1},
    )
    assert not found.writes_recovered
    assert found.write_downtime_s == pytest.approx(1.05)
    (downtime, lost, drill) = verdicts(found, DrillTargets(max_write_downtime_s=30), drill_seconds=5.0)
    assert downtime.status == "FAIL"
    assert "writes never came back" in downtime.reason
    assert lost.status == "PASS"
    assert drill.status == "PASS"


def test_unread_rows_make_the_loss_unknown_not_zero() -> None:
    found = analyse(SWITCHOVER, present_ids=None)
    assert found.lost_ids is None
    assert found.acked_writes_lost is None
    assert found.in_doubt_committed_ids == ()
    loss = verdicts(found, DrillTargets(), drill_seconds=1.0)[1]
    assert loss.status == "ABORTED"
    assert "loss is unknown" in loss.reason


def test_verdicts_pass_and_fail_with_the_measured_figure_in_the_reason() -> None:
    found = analyse(SWITCHOVER, present_ids={1, 2, 3, 4, 7, 8})
    passed = verdicts(found, DrillTargets(max_write_downtime_s=1, max_drill_s=10), drill_seconds=3.2)
    assert [v.status for v in passed] == ["PASS", "PASS", "PASS"]
    assert passed[0].reason == "longest of 1 window(s): 0.320 s (2 failed, 1 in doubt), within 1 s"
    assert passed[1].reason == "0 of 5 acknowledged writes missing on read-back (allowed 0)"
    assert overall(passed) == "PASS"

    lossy = analyse(SWITCHOVER, present_ids={1, 4})
    failed = verdicts(lossy, DrillTargets(max_write_downtime_s=0.3, max_drill_s=3), drill_seconds=3.2)
    assert [v.status for v in failed] == ["FAIL", "FAIL", "FAIL"]
    assert "over 0.3 s" in failed[0].reason
    assert failed[1].reason == "4 of 5 acknowledged writes missing on read-back: ids 2, 3, 7, 8 (allowed 0)"
    assert failed[1].measured == 4
    assert failed[2].reason == "3.200 s, over 3 s"
    assert overall(failed) == "FAIL"


def test_an_aborted_drill_is_aborted_but_a_loss_still_fails() -> None:
    found = analyse(SWITCHOVER[:3], present_ids={1, 3})
    judged = verdicts(found, DrillTargets(), drill_seconds=None, aborted="catch-up timeout after 30 s")
    assert [v.status for v in judged] == ["ABORTED", "FAIL", "ABORTED"]
    assert judged[0].reason == "drill aborted: catch-up timeout after 30 s"
    assert overall(judged) == "ABORTED"


def test_an_empty_record_has_no_downtime() -> None:
    found = analyse([], present_ids=set())
    assert (found.write_downtime_s, found.max_ack_gap_s, found.acked_writes_lost) == (0.0, 0.0, 0)
    assert found.writes_recovered
