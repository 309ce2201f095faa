"""The retention planner: restic's forget policy case by case, the safety rules, the JSON inputs."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cloudops.catalog.models import RetentionPolicy
from cloudops.errors import CloudOpsError
from cloudops.repository.retention import (
    DRILL_FAILED,
    DRILL_PASSED,
    NEWEST_COMPLETE,
    NEWEST_DRILL_PASSED,
    NOT_KEPT,
    PROOFS,
    PROVEN,
    PROVEN_BUT_INCOMPLETE,
    UNVERIFIED,
    VERIFIED,
    VERIFY_FAILED,
    BackupRecord,
    RetentionInputError,
    RetentionPlan,
    RetentionRefused,
    parse_backups,
    plan_retention,
    policy_from_json,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parent / "data" / "retention-restic.json"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "retention-restic.json"
CONFORMANCE: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))
NOW = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)

# restic's snapshots carry no ids: number them in restic's order, which decides ties between equal times.
# restic trusts every snapshot: here each is verified, so that every one counts toward the policy.
RESTIC_BACKUPS = parse_backups(
    [
        {"id": f"restic-{index:03d}", **item, "proof": VERIFIED}
        for index, item in enumerate(CONFORMANCE["backups"])
    ]
)
RESTIC_BY_ID = {backup.id: backup for backup in RESTIC_BACKUPS}
RESTIC_NEWEST = "restic-102"  # 2016-01-18T12:02:03Z, untagged
KEEPS_NEWEST_TOO = {18, 19, 20}  # keep_tags only: restic deletes the newest backup, we never do
UNORDERED_DURATION = 26  # keep_within "1y1d1m": units in any order, as restic takes them


def _case_id(index: int, policy: dict[str, Any]) -> str:
    def render(value: Any) -> str:
        return "|".join("+".join(tags) for tags in value) if isinstance(value, list) else str(value)

    rules = ",".join(f"{key}={render(value)}" for key, value in policy.items())
    return f"case-{index:02d}-{rules or 'empty'}"


def _conformance_cases() -> list[Any]:
    params = []
    for index, case in enumerate(CONFORMANCE["cases"]):
        if index == 0:
            continue  # the empty policy is refused: test_case_00_empty_policy_is_refused
        params.append(pytest.param(index, case, id=_case_id(index, case["policy"])))
    return params


def _restic_entry(item: dict[str, Any]) -> tuple[datetime, frozenset[str]]:
    return datetime.fromisoformat(item["time"]), frozenset(item.get("tags", []))


def _kept_entries(plan: RetentionPlan) -> list[tuple[datetime, frozenset[str]]]:
    return [(RESTIC_BY_ID[backup_id].time, RESTIC_BY_ID[backup_id].tags) for backup_id in plan.keep]


def _plan_restic(policy: RetentionPolicy) -> RetentionPlan:
    return plan_retention(RESTIC_BACKUPS, policy, now=NOW, allow_large_delete=True)


def _assert_partition(plan: RetentionPlan, backups: list[BackupRecord]) -> None:
    ids = [backup.id for backup in backups]
    assert sorted(plan.keep + plan.delete) == sorted(ids)
    assert not set(plan.keep) & set(plan.delete)
    assert set(plan.reasons) == set(ids)
    assert all(plan.reasons[backup_id] for backup_id in ids), "every decision has a reason"


# restic's own cases


@pytest.mark.parametrize(("index", "case"), _conformance_cases())
def test_restic_case(index: int, case: dict[str, Any]) -> None:
    plan = _plan_restic(RetentionPolicy.model_validate(case["policy"]))

    expected = [_restic_entry(item) for item in case["keep"]]
    if index in KEEPS_NEWEST_TOO:
        expected.insert(0, (RESTIC_BY_ID[RESTIC_NEWEST].time, frozenset()))
    assert _kept_entries(plan) == expected
    _assert_partition(plan, RESTIC_BACKUPS)
    assert plan.held == ([RESTIC_NEWEST] if index in KEEPS_NEWEST_TOO else [])


def test_case_00_empty_policy_is_refused() -> None:
    assert CONFORMANCE["cases"][0]["policy"] == {}
    with pytest.raises(ValidationError, match="keeps nothing"):
        RetentionPolicy.model_validate({})
    with pytest.raises(RetentionInputError, match="keeps nothing"):
        policy_from_json({})


def test_case_26_with_units_in_catalog_order() -> None:
    case = CONFORMANCE["cases"][UNORDERED_DURATION]
    assert case["policy"] == {"keep_within": "1y1d1m"}

    plan = _plan_restic(RetentionPolicy(keep_within="1y1m1d"))

    assert _kept_entries(plan) == [_restic_entry(item) for item in case["keep"]]


def test_newest_backup_kept_by_tags_rule_says_why() -> None:
    plan = _plan_restic(RetentionPolicy(keep_tags=[["foo"]]))

    assert plan.reasons[RESTIC_NEWEST] == [NEWEST_COMPLETE]
    assert plan.reasons["restic-035"] == ["tags foo"]  # 2014-11-15, tagged foo and bar
    assert plan.reasons["restic-034"] == [NOT_KEPT]  # 2014-11-13T10:20:30.1, tagged bar only


def test_reasons_name_the_rule_and_the_bucket() -> None:
    plan = _plan_restic(RetentionPolicy(keep_last=1, keep_daily=3, keep_monthly=-1, keep_within="7d"))

    assert plan.reasons[RESTIC_NEWEST] == ["within 7d", "last 1", "daily 2016-01-18", "monthly 2016-01"]
    assert plan.reasons["restic-101"] == ["within 7d", "daily 2016-01-12"]
    assert plan.reasons["restic-100"] == ["within 7d"]  # the same day as restic-101, older
    assert plan.reasons["restic-083"] == ["monthly 2015-11"]


def test_oldest_backup_kept_while_counts_remain() -> None:
    plan = _plan_restic(RetentionPolicy(keep_monthly=-1, keep_yearly=10))

    # restic-010 (2014-08-08) is the oldest; restic-019 (2014-08-22) already holds August 2014.
    assert plan.reasons["restic-019"] == ["monthly 2014-08"]
    assert plan.reasons["restic-010"] == [
        "monthly 2014-08: oldest backup, keep_monthly not used up",
        "yearly 2014: oldest backup, keep_yearly not used up",
    ]


def test_within_buckets_reach_back_before_year_one() -> None:
    plan = _plan_restic(RetentionPolicy(keep_within_yearly="9999y"))

    assert plan.keep == [RESTIC_NEWEST, "restic-083", "restic-039", "restic-010"]
    assert plan.reasons["restic-039"] == ["yearly 2014 within 9999y"]
    assert plan.reasons["restic-010"] == ["yearly 2014 within 9999y: oldest backup"]


def test_conformance_copy_matches_shared_file() -> None:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is not here (a clean clone): nothing to compare the copy with")
    assert DATA.read_bytes() == SHARED.read_bytes(), f"copy {SHARED} to {DATA} again"


# Time windows


def _at(time: str, backup_id: str | None = None, **fields: Any) -> BackupRecord:
    fields.setdefault("proof", VERIFIED)
    return BackupRecord(id=backup_id or time, time=datetime.fromisoformat(time), **fields)


def test_within_uses_calendar_months_with_day_overflow() -> None:
    # As Go's AddDate: 2026-03-31 minus one month is "2026-02-31", that is 2026-03-03.
    backups = [
        _at("2026-03-31T12:00:00Z"),
        _at("2026-03-03T12:00:01Z"),
        _at("2026-03-03T12:00:00Z"),
        _at("2026-02-28T12:00:00Z"),
    ]
    plan = plan_retention(backups, RetentionPolicy(keep_within="1m"), now=NOW, allow_large_delete=True)

    assert plan.keep == ["2026-03-31T12:00:00Z", "2026-03-03T12:00:01Z"]


def test_within_ignores_backups_from_the_future() -> None:
    # A backup dated after `now` (clock skew) does not stretch the window, as in restic.
    backups = [_at("2026-12-30T00:00:00Z"), _at("2026-11-19T00:00:00Z"), _at("2026-11-10T00:00:00Z")]
    plan = plan_retention(backups, RetentionPolicy(keep_within="2d"), now=NOW, allow_large_delete=True)

    assert plan.reasons["2026-11-19T00:00:00Z"] == ["within 2d"]
    assert plan.delete == ["2026-11-10T00:00:00Z"]


# Safety rules


def _daily(count: int, **overrides: dict[str, Any]) -> list[BackupRecord]:
    """``count`` complete, verified backups, one a day, ``day-00`` an hour before NOW; fields overridden
    by id."""
    backups = []
    for day in range(count):
        backup_id = f"day-{day:02d}"
        fields: dict[str, Any] = {
            "time": NOW - timedelta(days=day, hours=1),
            "proof": VERIFIED,
            **overrides.get(backup_id, {}),
        }
        backups.append(BackupRecord(id=backup_id, **fields))
    return backups


def test_newest_complete_backup_is_kept_even_when_no_rule_keeps_it() -> None:
    backups = _daily(4, **{"day-02": {"tags": frozenset({"monthly"})}})

    plan = plan_retention(backups, RetentionPolicy(keep_tags=[["monthly"]]), now=NOW)

    assert plan.keep == ["day-00", "day-02"]
    assert plan.reasons["day-00"] == [NEWEST_COMPLETE]
    assert plan.held == ["day-00"]


def test_incomplete_backups_do_not_count_for_the_policy() -> None:
    # The newest backup is still being written: keep_last 1 keeps the newest complete one instead.
    backups = [*_daily(3), BackupRecord(id="running", time=NOW - timedelta(minutes=5), complete=False)]

    plan = plan_retention(backups, RetentionPolicy(keep_last=1), now=NOW, allow_large_delete=True)

    assert plan.keep == ["running", "day-00"]
    assert plan.reasons["day-00"] == ["last 1"]
    assert plan.reasons["running"] == [
        "incomplete, younger than grace period (1d): it may still be in progress"
    ]
    assert plan.held == ["running"]


@pytest.mark.parametrize(
    ("age", "grace", "deleted"),
    [
        pytest.param(timedelta(hours=23), timedelta(hours=24), False, id="23h-inside-24h"),
        pytest.param(timedelta(hours=25), timedelta(hours=24), True, id="25h-outside-24h"),
        pytest.param(timedelta(hours=25), timedelta(hours=48), False, id="25h-inside-48h"),
        pytest.param(-timedelta(hours=1), timedelta(hours=24), False, id="from-the-future"),
    ],
)
def test_incomplete_backups_are_cleaned_up_after_the_grace_period(
    age: timedelta, grace: timedelta, deleted: bool
) -> None:
    backups = [*_daily(2), BackupRecord(id="partial", time=NOW - age, complete=False)]

    plan = plan_retention(backups, RetentionPolicy(keep_last=-1), now=NOW, incomplete_grace=grace)

    assert ("partial" in plan.delete) is deleted
    if deleted:
        assert plan.reasons["partial"] == ["incomplete, older than grace period (1d)"]
    else:
        assert plan.reasons["partial"][0].startswith("incomplete, younger than grace period")


def _unreadable(count: int) -> list[BackupRecord]:
    """``count`` incomplete backups (an unreadable manifest, say), a month old: due for cleanup."""
    old = NOW - timedelta(days=30)
    return [
        BackupRecord(id=f"unreadable-{n:02d}", time=old - timedelta(hours=n), complete=False)
        for n in range(count)
    ]


def test_incomplete_cleanup_counts_against_the_share_limit() -> None:
    # 20 backups, 6 unreadable: cleaning them up is 6 deletions of 20, within the half one run may delete.
    backups = [*_daily(14), *_unreadable(6)]

    plan = plan_retention(backups, RetentionPolicy(keep_last=-1), now=NOW)

    assert plan.delete == [f"unreadable-{n:02d}" for n in range(6)]
    assert plan.stopped is None
    # The cleanup and the policy's deletions together: 6 + 6 of 20 are more than half.
    with pytest.raises(RetentionRefused) as refused:
        plan_retention(backups, RetentionPolicy(keep_last=8), now=NOW)
    assert str(refused.value).startswith(
        "refusing to delete 12 of 20 backups in one run (6 of them incomplete): max_delete_share=0.5 allows "
        "at most 10"
    )
    assert len(refused.value.plan.delete) == 12


def test_too_many_unreadable_backups_stop_the_run_and_it_says_why() -> None:
    # A mixed-version rollout: 12 of 20 manifests no longer read. The plan deletes nothing at all, not even
    # the complete backup the policy lets go, and every backup it would have deleted says it was held.
    backups = [*_daily(8), *_unreadable(12)]

    plan = plan_retention(backups, RetentionPolicy(keep_last=7), now=NOW)

    assert plan.delete == []
    assert plan.keep == [backup.id for backup in backups]
    assert plan.stopped is not None
    assert plan.stopped.startswith(
        "12 of 20 backups are incomplete or unreadable and due for cleanup, more than max_delete_share=0.5 "
        "allows in one run (10)"
    )
    assert "mixed-version rollout" in plan.stopped
    assert "allow_large_delete=True" in plan.stopped
    assert plan.reasons["day-07"] == [NOT_KEPT, "held: this run deletes nothing (see why it stopped)"]
    assert plan.reasons["unreadable-11"] == [
        "incomplete, older than grace period (1d)",
        "held: this run deletes nothing (see why it stopped)",
    ]
    assert plan.held == ["day-07", *(f"unreadable-{n:02d}" for n in range(12))]
    assert plan.to_json()["stopped"] == plan.stopped

    reviewed = plan_retention(backups, RetentionPolicy(keep_last=7), now=NOW, allow_large_delete=True)
    assert reviewed.delete == ["day-07", *(f"unreadable-{n:02d}" for n in range(12))]
    assert reviewed.stopped is None


def test_unreadable_backups_alone_stop_the_run_even_with_no_complete_deletions() -> None:
    backups = [*_daily(2), *_unreadable(5)]

    plan = plan_retention(backups, RetentionPolicy(keep_last=-1), now=NOW, max_delete_share=0.5)

    assert plan.delete == []
    assert plan.stopped is not None
    assert plan.stopped.startswith("5 of 7 backups are incomplete or unreadable")


# Proof: verified backups, drills


def test_a_backup_not_verified_yet_does_not_count_toward_keep_last() -> None:
    # The newest backup was not read back yet: keep_last 2 keeps the two newest verified ones, and holds it.
    backups = _daily(4, **{"day-00": {"proof": UNVERIFIED}})

    plan = plan_retention(backups, RetentionPolicy(keep_last=2), now=NOW)

    assert plan.keep == ["day-00", "day-01", "day-02"]
    assert plan.delete == ["day-03"]
    assert plan.reasons["day-00"] == [
        NEWEST_COMPLETE,
        "not verified yet: it does not count toward the policy",
    ]
    assert plan.reasons["day-02"] == ["last 2"]
    assert plan.held == ["day-00"]


def test_an_unverified_backup_the_policy_would_keep_is_held_one_it_would_not_may_go() -> None:
    # Upgraded from a version that recorded no verifications: only day-00 is proven.
    backups = _daily(7, **{f"day-{day:02d}": {"proof": UNVERIFIED} for day in range(1, 7)})

    plan = plan_retention(backups, RetentionPolicy(keep_last=3), now=NOW, max_delete_share=1.0)

    assert plan.keep == ["day-00", "day-01", "day-02"]
    assert plan.reasons["day-00"] == ["last 3"]
    assert plan.reasons["day-01"] == [
        "not verified yet, so it does not count toward the policy; held, as last 3 would keep it"
    ]
    assert plan.delete == ["day-03", "day-04", "day-05", "day-06"]
    assert all(plan.reasons[backup_id] == [NOT_KEPT] for backup_id in plan.delete)


@pytest.mark.parametrize(
    ("proof", "says"),
    [
        pytest.param(
            DRILL_FAILED, "its restore drill failed (drill run r1: failed checks: row_counts)", id="drill"
        ),
        pytest.param(
            VERIFY_FAILED, "its verification failed (drill run r1: failed checks: row_counts)", id="verify"
        ),
    ],
)
def test_a_failed_backup_is_held_for_review_and_does_not_count(proof: str, says: str) -> None:
    detail = "drill run r1: failed checks: row_counts"
    failed = {"proof": proof, "proof_detail": detail}
    backups = _daily(5, **{"day-00": failed, "day-03": failed})

    plan = plan_retention(backups, RetentionPolicy(keep_last=1), now=NOW, max_delete_share=1.0)

    # day-00 does not fill keep_last 1: day-01 is kept by the policy; day-03 is held though no rule keeps it.
    assert plan.reasons["day-01"] == ["last 1"]
    assert plan.reasons["day-00"] == [f"{says}: held for review, neither counted nor deleted"]
    assert plan.reasons["day-03"] == plan.reasons["day-00"]
    assert plan.keep == ["day-00", "day-01", "day-03"]
    assert plan.delete == ["day-02", "day-04"]
    assert plan.held == ["day-00", "day-03"]


def test_the_newest_drill_passed_backup_is_always_kept() -> None:
    backups = _daily(5, **{"day-03": {"proof": DRILL_PASSED}, "day-04": {"proof": DRILL_PASSED}})

    plan = plan_retention(backups, RetentionPolicy(keep_last=2), now=NOW)

    assert plan.keep == ["day-00", "day-01", "day-03"]
    assert plan.reasons["day-03"] == [NEWEST_DRILL_PASSED]
    assert plan.delete == ["day-02", "day-04"]
    assert plan.held == ["day-03"]


def test_drill_passed_backups_count_toward_the_policy() -> None:
    backups = _daily(2, **{"day-00": {"proof": DRILL_PASSED}})

    plan = plan_retention(backups, RetentionPolicy(keep_last=1), now=NOW)

    assert plan.reasons["day-00"] == ["last 1"]
    assert plan.held == []


def test_a_proven_backup_whose_manifest_no_longer_reads_is_held_not_cleaned_up() -> None:
    # After an upgrade, two backups the ledger proved read as incomplete: they are no leftovers.
    backups = [
        *_daily(3),
        BackupRecord(id="was-verified", time=NOW - timedelta(days=5), complete=False, proof=VERIFIED),
        BackupRecord(id="was-drilled", time=NOW - timedelta(days=6), complete=False, proof=DRILL_PASSED),
        BackupRecord(id="leftover", time=NOW - timedelta(days=7), complete=False),
    ]

    plan = plan_retention(backups, RetentionPolicy(keep_last=3), now=NOW)

    assert plan.delete == ["leftover"]
    assert plan.reasons["was-verified"] == [f"verified, yet incomplete now: {PROVEN_BUT_INCOMPLETE}"]
    assert plan.reasons["was-drilled"] == [NEWEST_DRILL_PASSED, f"incomplete now: {PROVEN_BUT_INCOMPLETE}"]
    assert plan.held == ["was-verified", "was-drilled"]


def test_with_nothing_proven_the_policy_decides_only_what_may_go() -> None:
    # No backup is proven (the ledger is elsewhere): nothing counts, what the policy keeps is held.
    backups = _daily(4, **{f"day-{day:02d}": {"proof": UNVERIFIED} for day in range(4)})

    plan = plan_retention(backups, RetentionPolicy(keep_last=2), now=NOW)

    assert plan.keep == ["day-00", "day-01"]
    assert plan.held == ["day-00", "day-01"]
    assert plan.delete == ["day-02", "day-03"]


def test_large_delete_is_refused_with_numbers_and_the_way_out() -> None:
    backups = _daily(10)

    with pytest.raises(RetentionRefused) as refused:
        plan_retention(backups, RetentionPolicy(keep_last=2), now=NOW)

    message = str(refused.value)
    assert "refusing to delete 8 of 10 backups in one run:" in message
    assert "max_delete_share=0.5 allows at most 5" in message
    assert "allow_large_delete=True" in message
    assert isinstance(refused.value, CloudOpsError)
    assert (refused.value.would_delete, refused.value.limit) == (8, 5)
    assert len(refused.value.plan.delete) == 8


def test_large_delete_is_allowed_when_asked_or_within_the_share() -> None:
    backups = _daily(10)

    allowed = plan_retention(backups, RetentionPolicy(keep_last=2), now=NOW, allow_large_delete=True)
    at_limit = plan_retention(backups, RetentionPolicy(keep_last=2), now=NOW, max_delete_share=0.8)
    half = plan_retention(backups, RetentionPolicy(keep_last=5), now=NOW)

    assert allowed.delete == [f"day-{day:02d}" for day in range(2, 10)]
    assert at_limit.delete == allowed.delete
    assert half.delete == [f"day-{day:02d}" for day in range(5, 10)]


def test_share_limit_rounds_down() -> None:
    with pytest.raises(RetentionRefused, match=r"delete 2 of 3 .* at most 1"):
        plan_retention(_daily(3), RetentionPolicy(keep_last=1), now=NOW)


def test_locked_backups_are_held_until_the_lock_expires() -> None:
    backups = _daily(
        4,
        **{
            "day-02": {"locked_until": datetime(2026, 12, 1, tzinfo=UTC)},
            "day-03": {"locked_until": NOW - timedelta(seconds=1)},
        },
    )

    plan = plan_retention(backups, RetentionPolicy(keep_last=1), now=NOW)

    assert plan.keep == ["day-00", "day-02"]
    assert plan.delete == ["day-01", "day-03"]
    assert plan.reasons["day-02"] == ["locked until 2026-12-01T00:00:00Z"]
    assert plan.reasons["day-03"] == [NOT_KEPT]
    assert plan.held == ["day-02"]


def test_locked_incomplete_backup_is_held_too() -> None:
    stale = BackupRecord(
        id="partial", time=NOW - timedelta(days=3), complete=False, locked_until=NOW + timedelta(days=1)
    )

    plan = plan_retention([*_daily(1), stale], RetentionPolicy(keep_last=1), now=NOW)

    assert plan.reasons["partial"] == ["locked until 2026-11-21T03:00:00Z"]


def test_plan_to_json() -> None:
    backups = [*_daily(3), BackupRecord(id="partial", time=NOW - timedelta(days=5), complete=False)]

    plan = plan_retention(backups, RetentionPolicy(keep_last=2), now=NOW)

    assert plan.to_json() == {
        "keep": ["day-00", "day-01"],
        "delete": ["day-02", "partial"],
        "held": [],
        "stopped": None,
        "reasons": {
            "day-00": ["last 2"],
            "day-01": ["last 2"],
            "day-02": [NOT_KEPT],
            "partial": ["incomplete, older than grace period (1d)"],
        },
    }
    assert json.loads(json.dumps(plan.to_json())) == plan.to_json()


def test_no_backups_no_plan() -> None:
    plan = plan_retention([], RetentionPolicy(keep_daily=7), now=NOW)

    assert plan == RetentionPlan(keep=[], delete=[], reasons={}, held=[], stopped=None)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        BackupRecord(id="naive", time=datetime(2026, 11, 20))  # noqa: DTZ001
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        plan_retention(_daily(1), RetentionPolicy(keep_last=1), now=datetime(2026, 11, 20))  # noqa: DTZ001
    with pytest.raises(ValueError, match="max_delete_share"):
        plan_retention(_daily(1), RetentionPolicy(keep_last=1), now=NOW, max_delete_share=0)
    with pytest.raises(RetentionInputError, match="'day-00' appears more than once"):
        plan_retention([*_daily(1), *_daily(1)], RetentionPolicy(keep_last=1), now=NOW)
    with pytest.raises(ValueError, match="proof must be one of unverified, verified"):
        BackupRecord(id="x", time=NOW, proof="trusted")


# JSON inputs

T = "2026-11-20T03:00:00Z"


def test_parse_backups() -> None:
    records = parse_backups(
        [
            {"id": "a", "time": "2026-11-20T04:00:00+01:00", "tags": ["daily"]},
            {"id": "b", "time": T, "complete": False, "locked_until": "2026-12-01T00:00:00Z"},
            {"id": "c", "time": T, "proof": "drill_failed", "proof_detail": "drill run r1"},
        ]
    )

    assert records == [
        BackupRecord(id="a", time=NOW, tags=frozenset({"daily"})),
        BackupRecord(id="b", time=NOW, complete=False, locked_until=datetime(2026, 12, 1, tzinfo=UTC)),
        BackupRecord(id="c", time=NOW, proof=DRILL_FAILED, proof_detail="drill run r1"),
    ]
    assert records[0].proof == UNVERIFIED
    assert records[0].time.tzinfo is UTC


@pytest.mark.parametrize(
    ("items", "message"),
    [
        pytest.param(
            {"id": "a", "time": T}, "backups: expected a JSON list of backups, got dict", id="not-list"
        ),
        pytest.param(["a"], "backups[0]: expected an object with id and time, got str", id="not-object"),
        pytest.param([{"time": T}], "backups[0].id: expected a non-empty string, missing", id="no-id"),
        pytest.param([{"id": "", "time": T}], "backups[0].id: expected a non-empty string", id="empty-id"),
        pytest.param(
            [{"id": "a", "time": T}, {"id": "a", "time": T}],
            "backups[1].id: duplicate id 'a' (also backups[0])",
            id="duplicate-id",
        ),
        pytest.param([{"id": "a"}], "backups[0].time: missing", id="no-time"),
        pytest.param([{"id": "a", "time": 1}], "backups[0].time: expected an ISO 8601 time", id="int-time"),
        pytest.param(
            [{"id": "a", "time": T}, {"id": "b", "time": "yesterday"}],
            "backups[1].time: 'yesterday' is not an ISO 8601 time",
            id="bad-time",
        ),
        pytest.param(
            [{"id": "a", "time": "2026-11-20T03:00:00"}],
            "backups[0].time: '2026-11-20T03:00:00' has no UTC offset",
            id="naive-time",
        ),
        pytest.param(
            [{"id": "a", "time": T, "tags": "daily"}],
            "backups[0].tags: expected a list of strings",
            id="tags",
        ),
        pytest.param(
            [{"id": "a", "time": T, "tag": ["daily"]}],
            "backups[0].tag: unknown field (did you mean 'tags'?)",
            id="unknown-field",
        ),
        pytest.param(
            [{"id": "a", "time": T, "complete": "yes"}],
            "backups[0].complete: expected true or false",
            id="complete",
        ),
        pytest.param(
            [{"id": "a", "time": T, "locked_until": "soon"}],
            "backups[0].locked_until: 'soon' is not an ISO 8601 time",
            id="locked-until",
        ),
        pytest.param(
            [{"id": "a", "time": T, "proof": "verifed"}],
            "backups[0].proof: expected one of unverified, verified, verify_failed, drill_passed, "
            "drill_failed, got 'verifed' (did you mean 'verified'?)",
            id="proof",
        ),
        pytest.param(
            [{"id": "a", "time": T, "proof_detail": 3}],
            "backups[0].proof_detail: expected a string, got 3",
            id="proof-detail",
        ),
    ],
)
def test_parse_backups_names_the_item_and_field(items: object, message: str) -> None:
    with pytest.raises(RetentionInputError) as error:
        parse_backups(items)

    assert message in str(error.value)


def test_policy_from_json() -> None:
    policy = policy_from_json({"keep_daily": 7, "keep_within": "1y2m", "keep_tags": [["a", "b"]]})

    assert policy == RetentionPolicy(keep_daily=7, keep_within="1y2m", keep_tags=[["a", "b"]])


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        pytest.param(
            [], 'retention policy: expected an object such as {"keep_daily": 7}, got list', id="list"
        ),
        pytest.param({}, "the retention policy keeps nothing", id="empty"),
        pytest.param({"keep_dialy": 7}, "keep_dialy: unknown rule (did you mean 'keep_daily'?)", id="typo"),
        pytest.param({"keep_last": -2}, "keep_last: Input should be greater than or equal to -1", id="count"),
        pytest.param({"keep_weekly": "four"}, "keep_weekly: Input should be a valid integer", id="word"),
        pytest.param(
            {"keep_within_daily": "7days"},
            "keep_within_daily: expected a restic duration: digits with y, m (months), d, h",
            id="duration",
        ),
    ],
)
def test_policy_from_json_names_the_field(obj: object, message: str) -> None:
    with pytest.raises(RetentionInputError) as error:
        policy_from_json(obj)

    assert str(error.value).startswith(("invalid retention policy: ", "retention policy: "))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


# Randomized properties (fixed seeds; hypothesis is not a dependency)

COUNT_RULES = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
WITHIN_RULES = ("keep_within", *(f"keep_within_{name}" for name in ("hourly", "daily", "weekly", "monthly")))
DURATIONS = ("2h", "1d", "3d", "7d", "1m", "1m14d", "1y", "2y3m")
TAGS = ("a", "b", "c")


def _random_rules(rng: random.Random, count: int) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    for name in rng.sample([*COUNT_RULES, *WITHIN_RULES, "keep_tags"], count):
        if name == "keep_tags":
            rules[name] = [rng.sample(TAGS, rng.randint(1, 2)) for _ in range(rng.randint(1, 2))]
        elif name in COUNT_RULES:
            rules[name] = rng.choice((-1, 1, 2, 3, 5, 10))
        else:
            rules[name] = rng.choice(DURATIONS)
    return rules


def _random_backups(rng: random.Random) -> list[BackupRecord]:
    hours_ago = rng.sample(range(-48, 3 * 365 * 24), rng.randint(1, 60))  # a few from the future
    backups = []
    for number, hours in enumerate(hours_ago):
        locked_until = NOW + timedelta(days=rng.randint(-30, 30)) if rng.random() < 0.1 else None
        backups.append(
            BackupRecord(
                id=f"backup-{number:02d}",
                time=NOW - timedelta(hours=hours, minutes=rng.randint(0, 59)),
                tags=frozenset(rng.sample(TAGS, rng.randint(0, 2))),
                complete=rng.random() < 0.85,
                locked_until=locked_until,
                proof=rng.choices(PROOFS, weights=(2, 6, 1, 2, 1))[0],
            )
        )
    return backups


@pytest.mark.parametrize("seed", range(60), ids=lambda seed: f"seed-{seed}")
def test_random_plans_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    backups = _random_backups(rng)
    rules = _random_rules(rng, rng.randint(2, 5))
    split = rng.randint(1, len(rules) - 1)
    first, second = dict(list(rules.items())[:split]), dict(list(rules.items())[split:])
    plan = plan_retention(backups, RetentionPolicy(**rules), now=NOW, allow_large_delete=True)

    _assert_partition(plan, backups)
    by_id = {backup.id: backup for backup in backups}
    for ids in (plan.keep, plan.delete):
        times = [by_id[backup_id].time for backup_id in ids]
        assert times == sorted(times, reverse=True), "newest first"
    complete = sorted((b for b in backups if b.complete), key=lambda backup: backup.time, reverse=True)
    if complete:
        assert complete[0].id in plan.keep
    if drilled := sorted(
        (b for b in backups if b.proof == DRILL_PASSED), key=lambda backup: backup.time, reverse=True
    ):
        assert drilled[0].id in plan.keep
    for backup in backups:
        if backup.id in plan.delete:
            assert backup.locked_until is None or backup.locked_until <= NOW
            assert backup.complete or NOW - backup.time > timedelta(hours=24)
            assert backup.proof not in (DRILL_FAILED, VERIFY_FAILED), "failed backups are held for review"
            assert backup.complete or backup.proof not in PROVEN, (
                "only unproven incomplete ones are cleaned up"
            )
        if backup.id in plan.keep and backup.id not in plan.held:
            assert backup.complete, "only complete backups count for the policy"
            assert backup.proof in PROVEN, "only proven backups count for the policy"
        if not backup.complete and backup.id in plan.keep:
            assert backup.id in plan.held, "incomplete backups are kept by safety rules only"
    assert set(plan.held) <= set(plan.keep)

    # A backup is kept by the policy if any rule keeps it: the rules split in two keep the same backups.
    halves = [
        plan_retention(backups, RetentionPolicy(**part), now=NOW, allow_large_delete=True)
        for part in (first, second)
    ]
    counted = set(plan.keep) - set(plan.held)
    assert counted == (set(halves[0].keep) - set(halves[0].held)) | (
        set(halves[1].keep) - set(halves[1].held)
    )

    # The input order does not matter (times are distinct here).
    shuffled = rng.sample(backups, len(backups))
    assert plan_retention(shuffled, RetentionPolicy(**rules), now=NOW, allow_large_delete=True) == plan

    # Without the override: more incomplete backups to clean up than half the listing stop the run; a plan
    # deleting more than half of the backups is refused; any other plan is the same.
    if sum(not by_id[backup_id].complete for backup_id in plan.delete) > len(backups) // 2:
        stopped = plan_retention(backups, RetentionPolicy(**rules), now=NOW)
        assert stopped.delete == []
        assert stopped.stopped is not None
        assert set(stopped.keep) == set(by_id)
    elif len(plan.delete) > len(backups) // 2:
        with pytest.raises(RetentionRefused):
            plan_retention(backups, RetentionPolicy(**rules), now=NOW)
    else:
        assert plan_retention(backups, RetentionPolicy(**rules), now=NOW) == plan


def test_incomplete_backups_are_held_when_no_complete_backup_exists() -> None:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    backups = [BackupRecord(f"b{day}", now - timedelta(days=day), complete=False) for day in range(3, 6)]
    plan = plan_retention(backups, RetentionPolicy(keep_daily=7), now=now)
    assert plan.delete == []
    assert all("no complete backup exists" in plan.reasons[b.id][0] for b in backups)


@pytest.mark.parametrize("policy", [{"keep_within": "0d"}, {"keep_tags": [[]]}, {"keep_last": 0}])
def test_policies_that_keep_nothing_are_refused(policy: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RetentionPolicy.model_validate(policy)
