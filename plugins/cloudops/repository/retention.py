"""Plan which backups a retention run keeps and which it deletes, with the reason for each decision.

The policy is restic's ``forget`` policy, applied exactly as restic applies it (the cases of restic's own
tests are this module's conformance tests). Safety rules sit on top of it:

- only *proven* complete backups count toward the policy's ``keep_*`` rules: those whose objects were
  read back and matched their manifest (``verified``) or that a restore drill passed (``drill_passed``),
  as the caller found in the ledger (:attr:`BackupRecord.proof`). A complete backup not proven yet
  (``unverified``) does not count, so it can never push a proven one out of ``keep_last``; it is
  deleted only when the policy would not keep it even if it were proven, and held otherwise;
- a backup that failed its verification or its latest restore drill (``verify_failed``,
  ``drill_failed``) is neither counted nor deleted: it is held for review;
- the newest complete backup and the newest drill-passed backup are never deleted;
- an incomplete backup (no readable manifest) is deleted as cleanup once it is older than a grace
  period, and held until then, since it may still be being written; one that was proven before
  (verified, or a drill passed it) is never cleaned up but held for review: its manifest reading as
  incomplete now points at a reader or a manifest that changed, not at leftovers;
- a backup under object lock (``locked_until`` after ``now``) is not deleted: it is held;
- one run never deletes more than ``max_delete_share`` of all the listed backups, incomplete ones
  included, unless told to (:class:`RetentionRefused`);
- when the incomplete backups due for cleanup alone are more than that share allows, the plan deletes
  nothing at all and says why (:attr:`RetentionPlan.stopped`): many unreadable manifests at once mean
  a mixed-version rollout or a stricter manifest check, not leftovers, and must never empty the
  repository.

Everything here is pure: no I/O, no clock read except ``now``'s default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from cloudops.catalog.errors import did_you_mean, format_path
from cloudops.catalog.models import RetentionPolicy, render_duration
from cloudops.errors import CloudOpsError, InvalidInputError

NEWEST_COMPLETE = "newest complete backup"
NEWEST_DRILL_PASSED = "newest backup a restore drill passed"
NOT_KEPT = "not kept by any rule"
PROVEN_BUT_INCOMPLETE = (
    "held for review (a newer manifest format, a stricter check, or an altered manifest?), never cleaned up"
)

# What the caller knows about a backup's contents (the ledger's backup.verified and drill.recorded).
UNVERIFIED = "unverified"
VERIFIED = "verified"
VERIFY_FAILED = "verify_failed"
DRILL_PASSED = "drill_passed"
DRILL_FAILED = "drill_failed"
PROOFS = (UNVERIFIED, VERIFIED, VERIFY_FAILED, DRILL_PASSED, DRILL_FAILED)
PROVEN = frozenset({VERIFIED, DRILL_PASSED})
FAILED = frozenset({VERIFY_FAILED, DRILL_FAILED})

_RESTIC_DURATION_PART = re.compile(r"(\d+)([ymdh])")
_BACKUP_FIELDS = ("id", "time", "tags", "complete", "locked_until", "proof", "proof_detail")


class RetentionInputError(InvalidInputError):
    """A backup list or a retention policy given as JSON is malformed; the message names the field."""


class RetentionRefused(CloudOpsError):
    """The plan would delete a larger share of the backups than one run may.

    :ivar plan: the plan that was refused, for the operator to review.
    :ivar would_delete: how many backups the plan deletes, incomplete ones included.
    :ivar limit: how many one run may delete.
    """

    def __init__(
        self,
        plan: RetentionPlan,
        *,
        would_delete: int,
        limit: int,
        listed: int,
        share: float,
        incomplete: int = 0,
    ):
        of_them = f" ({incomplete} of them incomplete)" if incomplete else ""
        super().__init__(
            f"refusing to delete {would_delete} of {listed} backups in one run{of_them}: "
            f"max_delete_share={share:g} allows at most {limit}. Review the plan; if it is what you want, "
            "run again with allow_large_delete=True (or raise max_delete_share in the backup policy)"
        )
        self.plan = plan
        self.would_delete = would_delete
        self.limit = limit


@dataclass(frozen=True)
class BackupRecord:
    """One backup in a repository, as the planner sees it.

    :param id: unique within the repository.
    :param time: when the backup was taken; must be timezone-aware, kept in UTC.
    :param tags: labels that ``keep_tags`` matches.
    :param complete: False when the backup has no manifest (failed, or still being written).
    :param locked_until: end of its S3 Object Lock retention, if any; aware.
    :param proof: what is known of its contents, one of :data:`PROOFS`: ``unverified`` (nothing yet,
        the safe default), ``verified`` (its objects were read back and matched the manifest),
        ``verify_failed``, ``drill_passed`` or ``drill_failed`` (its latest restore drill).
    :param proof_detail: where the proof comes from (a drill run, a verification), for the reasons.
    """

    id: str
    time: datetime
    tags: frozenset[str] = frozenset()
    complete: bool = True
    locked_until: datetime | None = None
    proof: str = UNVERIFIED
    proof_detail: str = ""

    def __post_init__(self) -> None:
        if self.proof not in PROOFS:
            raise ValueError(
                f"backup {self.id!r} proof must be one of {', '.join(PROOFS)}, got {self.proof!r}"
            )
        object.__setattr__(self, "time", _utc(self.time, f"backup {self.id!r} time"))
        object.__setattr__(self, "tags", frozenset(self.tags))
        if self.locked_until is not None:
            object.__setattr__(
                self, "locked_until", _utc(self.locked_until, f"backup {self.id!r} locked_until")
            )


@dataclass(frozen=True)
class RetentionPlan:
    """What one retention run keeps and deletes, newest first, and why.

    :param keep: ids to keep.
    :param delete: ids to delete.
    :param reasons: for every id, kept or deleted, the reasons for the decision.
    :param held: kept ids that the policy over proven backups would not keep (newest complete or
        drill-passed backup, object lock, incomplete backup inside its grace period, a failed drill or
        verification held for review, an unverified backup the policy would keep once proven, or
        everything when the run stopped); their reasons say which rule held them.
    :param stopped: why this plan deletes nothing at all (too many unreadable backups), or None.
    """

    keep: list[str]
    delete: list[str]
    reasons: dict[str, list[str]]
    held: list[str] = field(default_factory=list)
    stopped: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return ``{"keep", "delete", "held", "stopped", "reasons": {id: [...]}}`` as JSON-ready data."""
        return {
            "keep": list(self.keep),
            "delete": list(self.delete),
            "held": list(self.held),
            "stopped": self.stopped,
            "reasons": {backup_id: list(why) for backup_id, why in self.reasons.items()},
        }


def plan_retention(
    backups: Iterable[BackupRecord],
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    max_delete_share: float = 0.5,
    allow_large_delete: bool = False,
    incomplete_grace: timedelta = timedelta(hours=24),
) -> RetentionPlan:
    """Decide which backups to keep and which to delete, with a reason for each.

    :param backups: the repository's backups, in any order (equal times keep their given order).
    :param policy: restic's keep_* rules; applied to proven complete backups only (see the module).
    :param now: the time the safety rules compare with (object locks, grace period); default: now.
    :param max_delete_share: largest share of the listed backups (incomplete ones included) this run
        may delete.
    :param allow_large_delete: delete even when the plan exceeds ``max_delete_share``, and clean up
        incomplete backups even when there are more of them than that share.
    :param incomplete_grace: how long an incomplete backup is held before it is cleaned up.
    :return: the plan; ``keep`` and ``delete`` are newest first. When the incomplete backups due for
        cleanup exceed the share, it deletes nothing and ``stopped`` says why.
    :raises RetentionRefused: the plan exceeds ``max_delete_share`` and large deletes are not allowed.
    :raises RetentionInputError: two backups share an id.
    """
    now = datetime.now(UTC) if now is None else _utc(now, "now")
    if not 0 < max_delete_share <= 1:
        raise ValueError(f"max_delete_share must be in (0, 1], got {max_delete_share}")
    # Python's sort is stable, as restic's is: backups with equal times keep their given order.
    ordered = sorted(backups, key=lambda backup: backup.time, reverse=True)
    _check_unique_ids(ordered)
    complete = [backup for backup in ordered if backup.complete]
    proven = [backup for backup in complete if backup.proof in PROVEN]
    by_policy = dict(zip((b.id for b in proven), _policy_reasons(proven, policy, now), strict=True))
    # The policy once more, as if every unverified backup were proven: what it keeps may turn out to
    # be good, so it is held; what it does not keep would go even then, so it may be deleted.
    hopeful = [backup for backup in complete if backup.proof not in FAILED]
    if_proven = dict(zip((b.id for b in hopeful), _policy_reasons(hopeful, policy, now), strict=True))
    newest_complete = complete[0].id if complete else None
    # Over every backup, not only complete ones: the ledger's proof outlives a manifest that no longer reads.
    newest_drilled = next((b.id for b in ordered if b.proof == DRILL_PASSED), None)
    grace = render_duration(incomplete_grace)

    keep: list[str] = []
    delete: list[str] = []
    held: list[str] = []
    reasons: dict[str, list[str]] = {}
    for backup in ordered:
        why = by_policy.get(backup.id, [])
        if why:
            keep.append(backup.id)
            reasons[backup.id] = why
            continue
        if backup.proof in FAILED:
            why = [f"{_proof_text(backup)}: held for review, neither counted nor deleted"]
        elif backup.id == newest_complete:
            why = [NEWEST_COMPLETE]
            if backup.proof not in PROVEN:
                why.append("not verified yet: it does not count toward the policy")
        elif backup.id == newest_drilled:
            why = [NEWEST_DRILL_PASSED]
            if not backup.complete:
                why.append(f"incomplete now: {PROVEN_BUT_INCOMPLETE}")
        elif not backup.complete and backup.proof in PROVEN:
            why = [f"{backup.proof.replace('_', ' ')}, yet incomplete now: {PROVEN_BUT_INCOMPLETE}"]
        elif not backup.complete and now - backup.time <= incomplete_grace:
            why = [f"incomplete, younger than grace period ({grace}): it may still be in progress"]
        elif backup.locked_until is not None and backup.locked_until > now:
            why = [f"locked until {_iso(backup.locked_until)}"]
        elif not backup.complete and newest_complete is None:
            # With no complete backup at all, "incomplete" more likely means a listing or manifest
            # problem than leftovers: deleting would risk the only copies there are.
            why = ["incomplete, but no complete backup exists: cleanup waits until one does"]
        elif backup.complete and if_proven.get(backup.id):
            rules = ", ".join(if_proven[backup.id])
            why = [
                f"not verified yet, so it does not count toward the policy; held, as {rules} would keep it"
            ]
        else:
            why = [NOT_KEPT if backup.complete else f"incomplete, older than grace period ({grace})"]
            delete.append(backup.id)
            reasons[backup.id] = why
            continue
        keep.append(backup.id)
        held.append(backup.id)
        reasons[backup.id] = why

    # The epsilon keeps 0.57 * 100 from flooring to 56.
    limit = math.floor(max_delete_share * len(ordered) + 1e-9)
    incomplete = {backup.id for backup in ordered if not backup.complete}
    cleanup = [backup_id for backup_id in delete if backup_id in incomplete]
    if len(cleanup) > limit and not allow_large_delete:
        return _stopped(
            ordered,
            reasons,
            delete=delete,
            held=held,
            cleanup=len(cleanup),
            limit=limit,
            share=max_delete_share,
        )
    plan = RetentionPlan(keep=keep, delete=delete, reasons=reasons, held=held)
    if len(delete) > limit and not allow_large_delete:
        raise RetentionRefused(
            plan,
            would_delete=len(delete),
            limit=limit,
            listed=len(ordered),
            share=max_delete_share,
            incomplete=len(cleanup),
        )
    return plan


def _stopped(
    ordered: list[BackupRecord],
    reasons: dict[str, list[str]],
    *,
    delete: list[str],
    held: list[str],
    cleanup: int,
    limit: int,
    share: float,
) -> RetentionPlan:
    """The plan that deletes nothing, because too many backups at once are incomplete or unreadable."""
    stopped = (
        f"{cleanup} of {len(ordered)} backups are incomplete or unreadable and due for cleanup, more than "
        f"max_delete_share={share:g} allows in one run ({limit}): that many at once more likely means a "
        "mixed-version rollout or a stricter manifest check than leftovers, so nothing is deleted. Read "
        "their problems (cloudops backups list <database>); if they are garbage, run again with "
        "allow_large_delete=True"
    )
    for backup_id in delete:
        reasons[backup_id] = [*reasons[backup_id], "held: this run deletes nothing (see why it stopped)"]
    newly_held = set(held) | set(delete)
    return RetentionPlan(
        keep=[backup.id for backup in ordered],
        delete=[],
        reasons=reasons,
        held=[backup.id for backup in ordered if backup.id in newly_held],
        stopped=stopped,
    )


def _proof_text(backup: BackupRecord) -> str:
    what = "its restore drill failed" if backup.proof == DRILL_FAILED else "its verification failed"
    return f"{what} ({backup.proof_detail})" if backup.proof_detail else what


def parse_backups(items: object) -> list[BackupRecord]:
    """Turn a JSON list of ``{"id", "time", "tags"?, "complete"?, "locked_until"?, "proof"?}`` into records.

    A backup without ``proof`` is ``unverified``, as in :class:`BackupRecord`: it counts toward no
    ``keep_*`` rule (the plan holds what the policy would keep once it is proven).

    :raises RetentionInputError: naming the item's index and field, e.g. ``backups[3].time``.
    """
    if not isinstance(items, list):
        raise RetentionInputError(f"backups: expected a JSON list of backups, got {_kind(items)}")
    records: list[BackupRecord] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        where = f"backups[{index}]"
        if not isinstance(item, Mapping):
            raise RetentionInputError(f"{where}: expected an object with id and time, got {_kind(item)}")
        for key in item:
            if key not in _BACKUP_FIELDS:
                hint = did_you_mean(str(key), _BACKUP_FIELDS)
                expected = ", ".join(_BACKUP_FIELDS)
                raise RetentionInputError(
                    f"{where}.{key}: unknown field ({hint or f'expected one of {expected}'})"
                )
        backup_id = item.get("id")
        if not isinstance(backup_id, str) or not backup_id:
            got = "missing" if backup_id is None else f"got {backup_id!r}"
            raise RetentionInputError(f"{where}.id: expected a non-empty string, {got}")
        if backup_id in seen:
            raise RetentionInputError(
                f"{where}.id: duplicate id {backup_id!r} (also backups[{seen[backup_id]}])"
            )
        seen[backup_id] = index
        tags = item.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise RetentionInputError(f"{where}.tags: expected a list of strings, got {tags!r}")
        complete = item.get("complete", True)
        if not isinstance(complete, bool):
            raise RetentionInputError(f"{where}.complete: expected true or false, got {complete!r}")
        locked_until = item.get("locked_until")
        if locked_until is not None:
            locked_until = _parse_time(locked_until, f"{where}.locked_until")
        proof = item.get("proof", UNVERIFIED)
        if proof not in PROOFS:
            hint = did_you_mean(str(proof), PROOFS) if isinstance(proof, str) else None
            raise RetentionInputError(
                f"{where}.proof: expected one of {', '.join(PROOFS)}, got {proof!r}"
                + (f" ({hint})" if hint else "")
            )
        detail = item.get("proof_detail", "")
        if not isinstance(detail, str):
            raise RetentionInputError(f"{where}.proof_detail: expected a string, got {detail!r}")
        records.append(
            BackupRecord(
                id=backup_id,
                time=_parse_time(item.get("time"), f"{where}.time"),
                tags=frozenset(tags),
                complete=complete,
                locked_until=locked_until,
                proof=proof,
                proof_detail=detail,
            )
        )
    return records


def policy_from_json(obj: object) -> RetentionPolicy:
    """Validate a retention policy given as JSON.

    :raises RetentionInputError: one message naming each offending field.
    """
    if not isinstance(obj, Mapping):
        raise RetentionInputError(
            f'retention policy: expected an object such as {{"keep_daily": 7}}, got {_kind(obj)}'
        )
    try:
        return RetentionPolicy.model_validate(obj)
    except ValidationError as error:
        problems = "; ".join(_describe_policy_error(dict(detail)) for detail in error.errors())
        raise RetentionInputError(f"invalid retention policy: {problems}") from None


# The policy: restic's ApplyPolicy (internal/data/snapshot_policy.go), rule by rule.


def _hour(time: datetime) -> str:
    return time.strftime("%Y-%m-%dT%H")


def _day(time: datetime) -> str:
    return time.strftime("%Y-%m-%d")


def _week(time: datetime) -> str:
    year, week, _ = time.isocalendar()
    return f"{year}-W{week:02d}"


def _month(time: datetime) -> str:
    return time.strftime("%Y-%m")


def _year(time: datetime) -> str:
    return f"{time.year}"


_BUCKETS: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("hourly", _hour),
    ("daily", _day),
    ("weekly", _week),
    ("monthly", _month),
    ("yearly", _year),
)


def _policy_reasons(backups: list[BackupRecord], policy: RetentionPolicy, now: datetime) -> list[list[str]]:
    """Return, for each backup (complete, newest first), the policy rules that keep it."""
    reasons: list[list[str]] = [[] for _ in backups]
    if not backups:
        return reasons
    oldest = len(backups) - 1

    for tags in policy.keep_tags or []:
        wanted = frozenset(tags)
        label = f"tags {','.join(tags)}" if tags else "tags [] (an empty set matches every backup)"
        for index, backup in enumerate(backups):
            if wanted <= backup.tags:
                reasons[index].append(label)

    # Windows end at the newest backup, not at `now`; one from the future (clock skew) does not count.
    newest = max((backup.time for backup in backups if backup.time <= now), default=None)
    if policy.keep_within and (amounts := _restic_duration(policy.keep_within)):
        start = _window_start(newest, amounts)
        for index, backup in enumerate(backups):
            if start is None or backup.time > start:
                reasons[index].append(f"within {policy.keep_within}")

    counted: list[tuple[str, int | None, Callable[[datetime], str] | None]] = [
        ("last", policy.keep_last, None),
        ("hourly", policy.keep_hourly, _hour),
        ("daily", policy.keep_daily, _day),
        ("weekly", policy.keep_weekly, _week),
        ("monthly", policy.keep_monthly, _month),
        ("yearly", policy.keep_yearly, _year),
    ]
    for name, count, bucket in counted:
        if not count:
            continue
        left, previous = count, None
        for index, backup in enumerate(backups):
            if left == 0:
                break
            key = str(index) if bucket is None else bucket(backup.time)
            if key != previous:
                reasons[index].append(f"last {count}" if bucket is None else f"{name} {key}")
                previous = key
                left = left - 1 if left > 0 else left
            elif index == oldest:
                # restic keeps the oldest backup while a count is left, to keep the longest history.
                reasons[index].append(f"{name} {key}: oldest backup, keep_{name} not used up")

    for name, bucket in _BUCKETS:
        duration = getattr(policy, f"keep_within_{name}")
        if not duration or not (amounts := _restic_duration(duration)):
            continue
        start, previous = _window_start(newest, amounts), None
        for index, backup in enumerate(backups):
            if start is not None and backup.time <= start:
                break
            key = bucket(backup.time)
            if key != previous:
                reasons[index].append(f"{name} {key} within {duration}")
                previous = key
            elif index == oldest:
                reasons[index].append(f"{name} {key} within {duration}: oldest backup")
    return reasons


def _restic_duration(duration: str) -> dict[str, int]:
    """Return the years, months, days and hours of ``duration``; empty when all are zero (no rule)."""
    amounts = {"y": 0, "m": 0, "d": 0, "h": 0}
    for amount, unit in _RESTIC_DURATION_PART.findall(duration):
        amounts[unit] = int(amount)  # as in restic, a repeated unit replaces the earlier one
    return amounts if any(amounts.values()) else {}


def _window_start(newest: datetime | None, amounts: Mapping[str, int]) -> datetime | None:
    """Return the exclusive start of the window reaching ``amounts`` back from ``newest``.

    The arithmetic is Go's ``AddDate``, as in restic: shift year and month, then let the day overflow
    (Mar 31 minus 1m is Mar 3). None means the window holds every backup: it reaches back before year 1,
    or there is no newest backup to measure from (restic measures from its zero time then).
    """
    if newest is None:
        return None
    months = newest.year * 12 + newest.month - 1 - 12 * amounts["y"] - amounts["m"]
    year, month = divmod(months, 12)
    if year < 1:
        return None
    try:
        first = newest.replace(year=year, month=month + 1, day=1)
        return first + timedelta(days=newest.day - 1 - amounts["d"], hours=-amounts["h"])
    except OverflowError:
        return None


# Input checks and formatting.


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _check_unique_ids(backups: list[BackupRecord]) -> None:
    seen: set[str] = set()
    for backup in backups:
        if backup.id in seen:
            raise RetentionInputError(f"backup id {backup.id!r} appears more than once")
        seen.add(backup.id)


def _parse_time(value: object, where: str) -> datetime:
    example = "an ISO 8601 time with an offset, e.g. 2026-11-20T03:00:00Z"
    if value is None:
        raise RetentionInputError(f"{where}: missing ({example})")
    if not isinstance(value, str):
        raise RetentionInputError(f"{where}: expected {example}, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RetentionInputError(f"{where}: {value!r} is not {example}") from None
    if parsed.tzinfo is None:
        raise RetentionInputError(f"{where}: {value!r} has no UTC offset (append Z for UTC)")
    return parsed.astimezone(UTC)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _describe_policy_error(detail: dict[str, Any]) -> str:
    location = format_path(detail["loc"])
    message = str(detail["msg"]).removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        hint = did_you_mean(str(detail["loc"][-1]), RetentionPolicy.model_fields)
        return f"{location}: unknown rule{f' ({hint})' if hint else ''}"
    if detail["type"] == "string_pattern_mismatch" and location.startswith("keep_within"):
        message = "expected a restic duration: digits with y, m (months), d, h, e.g. 7d, 1m14d, 1y2m3d4h"
    if not location:
        return message
    return f"{location}: {message} (got {detail['input']!r})"


__all__ = [
    "DRILL_FAILED",
    "DRILL_PASSED",
    "FAILED",
    "NEWEST_COMPLETE",
    "NEWEST_DRILL_PASSED",
    "NOT_KEPT",
    "PROOFS",
    "PROVEN",
    "PROVEN_BUT_INCOMPLETE",
    "UNVERIFIED",
    "VERIFIED",
    "VERIFY_FAILED",
    "BackupRecord",
    "RetentionInputError",
    "RetentionPlan",
    "RetentionRefused",
    "parse_backups",
    "plan_retention",
    "policy_from_json",
]
