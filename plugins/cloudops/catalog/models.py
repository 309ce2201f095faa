"""Typed models of an estate: databases, backup repositories, host fleets, clouds, SLOs, notifications.

The catalog holds no secrets, only Airflow connection ids. Every model forbids unknown keys so that a
misspelt key is an error (with a "did you mean" hint) rather than a silently ignored setting.
Cross-references between sections (a backup naming its repository, say) are checked by
:func:`cloudops.catalog.references.check_references`, which can name the line of the reference.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Literal, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_DURATION = re.compile(r"^(?:\d+[smhdw])+$")
_RESTIC_DURATION = re.compile(r"^(?:\d+[ymdh])+$")


def parse_duration(value: object) -> object:
    """Turn ``90s``, ``30m``, ``24h``, ``7d``, ``2w`` or ``1d12h`` into a timedelta.

    Other values pass through for pydantic to validate (a timedelta, an ISO 8601 duration, seconds).
    """
    if isinstance(value, str) and _DURATION.match(value.strip()):
        parts = {_DURATION_UNITS[unit]: 0 for unit in _DURATION_UNITS}
        for amount, unit in _DURATION_PART.findall(value.strip()):
            parts[_DURATION_UNITS[unit]] += int(amount)
        return timedelta(**parts)
    return value


def render_duration(value: timedelta) -> str:
    """Render a timedelta the way catalog authors write it (``1d12h``)."""
    seconds = int(value.total_seconds())
    text = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            text += f"{amount}{unit}"
    return text or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(render_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _DURATION.pattern,
            "description": "A duration: digits and units s, m (minutes), h, d, w, e.g. 30m, 24h, 1d12h.",
        }
    ),
]
ResticDuration = Annotated[
    str,
    StringConstraints(pattern=_RESTIC_DURATION.pattern, min_length=2),
    Field(description="restic duration: years y, months m, days d, hours h, e.g. 1y2m3d4h."),
]
TargetName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$"),
    Field(description="Lower-case letters, digits and underscores; part of DAG ids."),
]
HostName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")]
ConnId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,250}$"),
    Field(description="An Airflow connection id; the connection holds the credentials."),
]
Cron = Annotated[
    str,
    StringConstraints(min_length=1),
    Field(description="A cron expression or an Airflow preset such as @daily."),
]


class CatalogModel(BaseModel):
    """Base of every catalog model: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


@lru_cache(maxsize=1024)
def _check_cron(value: str) -> str:
    """Refuse a schedule that is neither an Airflow preset nor a five-field cron expression."""
    presets = {"@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@continuous"}
    if value in presets:
        return value
    from croniter import croniter  # a small module: croniter is what Airflow itself uses

    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a five-field cron expression or an Airflow preset")
    return value


class Cloud(CatalogModel):
    """A cloud account the runbooks act in."""

    name: TargetName
    provider: Literal["aws"]
    aws_conn_id: ConnId
    region: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")]


class Encryption(CatalogModel):
    """Server-side encryption of backup objects."""

    mode: Literal["sse-s3", "sse-kms"] = "sse-s3"
    kms_key_id: str | None = Field(default=None, description="KMS key id or ARN, for sse-kms.")

    @model_validator(mode="after")
    def _kms_key_matches_mode(self) -> Encryption:
        if self.mode == "sse-kms" and not self.kms_key_id:
            raise ValueError("sse-kms needs kms_key_id")
        if self.mode == "sse-s3" and self.kms_key_id:
            raise ValueError("kms_key_id is only used with mode sse-kms")
        return self


class ObjectLock(CatalogModel):
    """S3 Object Lock applied to every backup object."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    days: Annotated[int, Field(ge=1, le=36500)]


class Repository(CatalogModel):
    """An S3 (or S3-compatible) bucket and prefix that holds backups."""

    name: TargetName
    cloud: TargetName = Field(description="Name of the cloud account (clouds[].name) that owns it.")
    bucket: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]*$")] = "backups"
    region: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")]
    encryption: Encryption = Encryption()
    object_lock: ObjectLock | None = None


def _keeps_something(rule: object) -> bool:
    """A rule that keeps at least one backup: not unset, not 0, not an empty list, not "0d"."""
    if isinstance(rule, str):
        return any(int(amount) for amount in re.findall(r"\d+", rule))
    return rule not in (None, 0, [])


class RetentionPolicy(CatalogModel):
    """How long backups are kept, in restic's `forget` vocabulary (-1 means unlimited)."""

    keep_last: Annotated[int, Field(ge=-1)] | None = None
    keep_hourly: Annotated[int, Field(ge=-1)] | None = None
    keep_daily: Annotated[int, Field(ge=-1)] | None = None
    keep_weekly: Annotated[int, Field(ge=-1)] | None = None
    keep_monthly: Annotated[int, Field(ge=-1)] | None = None
    keep_yearly: Annotated[int, Field(ge=-1)] | None = None
    keep_within: ResticDuration | None = None
    keep_within_hourly: ResticDuration | None = None
    keep_within_daily: ResticDuration | None = None
    keep_within_weekly: ResticDuration | None = None
    keep_within_monthly: ResticDuration | None = None
    keep_within_yearly: ResticDuration | None = None
    keep_tags: (
        list[Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)]] | None
    ) = Field(default=None, description="Keep backups carrying all tags of any one listed set.")

    @model_validator(mode="after")
    def _not_empty(self) -> RetentionPolicy:
        # restic's empty policy deletes everything; here that is never what anyone meant.
        if not any(_keeps_something(value) for value in self.__dict__.values()):
            raise ValueError(
                "the retention policy keeps nothing: set at least one keep_* rule (e.g. keep_daily: 7)"
            )
        return self


class BackupPolicy(CatalogModel):
    """When and how a database is backed up, where to, and for how long backups are kept."""

    repository: TargetName = Field(description="Name of the repository (repositories[].name).")
    schedule: Cron = "@daily"
    paused: bool = Field(
        default=False,
        description="Create backup__<database> paused: no backup runs until someone unpauses it. The "
        "health check reports it as long as it stays paused.",
    )
    method: Literal["logical", "physical"] = "logical"
    source: Literal["primary", "replica"] = Field(
        default="primary",
        description="A cluster member's backups read the server the cluster's topology names now, never "
        "the one the catalog assumed: primary (the member that takes writes now) or replica (a replica "
        "that streams from it within its max_replication_lag, to spare the primary; the primary when no "
        "replica is fit, recorded with the reason). Only for a database that is a member of a cluster.",
    )
    compression_level: Annotated[int, Field(ge=1, le=19)] = 3
    parallel_jobs: Annotated[int, Field(ge=1, le=32)] = 1
    deadline: Duration = Field(
        default=timedelta(hours=2), description="Alert when the backup has not finished by then."
    )
    retention: RetentionPolicy
    max_delete_share: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.5,
        description=(
            "Largest share of the listed backups (incomplete ones included) one retention run may delete; "
            "when more incomplete or unreadable backups than that are due for cleanup, it deletes nothing."
        ),
    )
    retries: Annotated[int, Field(ge=0, le=10)] = Field(
        default=2, description="Retries of a failed step, with exponential backoff from retry_delay."
    )
    retry_delay: Duration = Field(
        default=timedelta(minutes=1),
        description=(
            "The wait before a step's first retry (doubled for each further one, at most 15 minutes), "
            "e.g. after its worker died. 1s to 15m."
        ),
    )
    max_lock_wait: Duration = Field(
        default=timedelta(seconds=2),
        description=(
            "MariaDB: the longest a backup may block writes (its global read lock, from asking for it "
            "until the dump has its snapshot); past it the lock is released and the backup fails. 1s to 60s."
        ),
    )

    _check_schedule = field_validator("schedule")(_check_cron)

    @field_validator("retry_delay")
    @classmethod
    def _check_retry_delay(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(minutes=15):
            raise ValueError("must be between 1s and 15m (the longest wait between retries)")
        return value

    @field_validator("max_lock_wait")
    @classmethod
    def _check_max_lock_wait(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(seconds=60):
            raise ValueError("must be between 1s and 60s: writes wait on the server for that long")
        return value


class DrillPolicy(CatalogModel):
    """Restore drills: when they run and where the scratch restore goes."""

    schedule: str = Field(
        default="on_backup", description="'on_backup' (after each backup) or a cron expression."
    )
    paused: bool = Field(
        default=False,
        description="Create restore_drill__<database> paused; the health check reports it while paused.",
    )
    scratch_conn_id: ConnId | None = Field(
        default=None,
        description="Server that receives the drill's scratch restores, a server of its own: required for "
        "logical backups (there is no default). A catalog primary's conn_id is refused unless that database "
        "sets scratch_allowed. Physical drills restore into a scratch cluster on the worker instead.",
    )
    restore_as_superuser: bool = Field(
        default=False,
        description=(
            "PostgreSQL logical drills: run pg_restore as the scratch connection's own login (a "
            "superuser) instead of a role that owns only the scratch database. Only for dumps that need "
            "it, e.g. extensions only a superuser may create; the dump's SQL (COPY ... TO PROGRAM, "
            "untrusted languages) then runs with the login's privileges, so trust the bucket first."
        ),
    )

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        return value if value == "on_backup" else _check_cron(value)

    trust_repository: bool = Field(
        default=False,
        description=(
            "Drill backups that have no backup.taken record in this deployment's ledger (imported, or "
            "taken by a machine with another ledger), trusting the repository's manifest as stored. Off: "
            "such backups are refused, since anyone who can write to the bucket can write a matching "
            "dump and manifest. Each trusted drill is recorded in the ledger."
        ),
    )


class Database(CatalogModel):
    """A database the estate runs: how to reach it, its role, and its backup and drill policies."""

    name: TargetName
    engine: Literal["postgres", "mariadb"]
    conn_id: ConnId
    role: Literal["primary", "replica"] = "primary"
    cluster: TargetName | None = Field(
        default=None, description="Replication cluster shared by a primary and its replicas."
    )
    # Never a leading - or $: the name goes into client tools' argv (it would read as an option).
    database: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_$-]{0,62}$")]
    rds_instance_id: str | None = Field(default=None, description="Set when the database is on RDS.")
    rpo: Duration | None = None
    rto: Duration | None = None
    max_replication_lag: Duration = Field(
        default=timedelta(minutes=5), description="A replica further behind than this is unhealthy."
    )
    allow_restore_over: bool = Field(
        default=False, description="Allow on-demand restores over this database (never by default)."
    )
    scratch_allowed: bool = Field(
        default=False,
        description="Allow drills to name this primary's conn_id as their scratch_conn_id (never by "
        "default): only for a server that is itself a scratch or test server, since each drill restores a "
        "full copy onto it.",
    )
    backup: BackupPolicy | None = None
    drill: DrillPolicy | None = None


class Host(CatalogModel):
    """One host of a fleet, reached over SSH with a verified host key."""

    name: HostName
    ssh_conn_id: ConnId
    groups: list[TargetName] = Field(default_factory=list)
    ebs_volume_ids: list[Annotated[str, StringConstraints(pattern=r"^vol-[0-9a-f]+$")]] = Field(
        default_factory=list
    )


class FleetSnapshotPolicy(CatalogModel):
    """EBS snapshots of a fleet's volumes: when, in which cloud account, kept for how long."""

    cloud: TargetName = Field(description="Name of the cloud account (clouds[].name) of the volumes.")
    schedule: Cron = "@daily"
    paused: bool = Field(
        default=False,
        description="Create ebs_snapshot__<fleet> paused; the health check reports it while paused.",
    )
    retention: RetentionPolicy
    max_delete_share: Annotated[float, Field(gt=0, le=1)] = 0.5

    _check_schedule = field_validator("schedule")(_check_cron)


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_PERCENT = re.compile(r"^(\d+)%$")
PackageName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9+._-]{0,127}$")]
ShareOrCount = Annotated[
    int | str,
    Field(description="A number of hosts (0 or more) or a percentage of the fleet such as '10%'."),
]


def check_share_or_count(value: int | str, *, minimum: int) -> int | str:
    """Refuse a count below ``minimum``, a percentage that is not ``N%`` or is over 100%."""
    if isinstance(value, bool):
        raise ValueError("must be a number of hosts or a percentage such as '25%', not a boolean")
    if isinstance(value, int):
        if value < minimum:
            raise ValueError(f"a number of hosts must be at least {minimum}, not {value}")
        return value
    match = _PERCENT.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is neither a number of hosts nor a percentage such as '25%'")
    percent = int(match.group(1))
    if percent > 100:
        raise ValueError(f"{value!r} is over 100% of the fleet")
    if percent < minimum:
        raise ValueError(f"{value!r}: a percentage must be at least {minimum}%")
    return f"{percent}%"


def _check_batch_entry(value: int | str) -> int | str:
    return check_share_or_count(value, minimum=1)


BatchEntry = Annotated[ShareOrCount, AfterValidator(_check_batch_entry)]


class PatchWindow(CatalogModel):
    """When a patch wave may run: on these days, from start (estate time zone) for duration.

    No new batch starts after ``end - cutoff``. At the cutoff, ``finish_batch`` lets the running batch
    finish (SSM's CONTINUE_TASK) and ``stop_now`` stops its hosts at the next step boundary (SSM's
    CANCEL_TASK); either way the wave halts and can be resumed in the next window.
    """

    days: Annotated[list[Weekday], Field(min_length=1)] = Field(
        description="Days the window opens on (mon..sun), in the estate's time zone."
    )
    start: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = Field(
        description="Opening time HH:MM, local time of the estate's `timezone`."
    )
    duration: Duration = Field(description="How long the window stays open, at most 24h, e.g. 3h.")
    cutoff: Duration = Field(
        default=timedelta(0), description="No new batch starts later than end minus cutoff, e.g. 1h."
    )
    cutoff_behaviour: Literal["finish_batch", "stop_now"] = Field(
        default="finish_batch",
        description="At the cutoff: let the running batch finish (finish_batch, SSM CONTINUE_TASK) or stop "
        "its hosts at their next step (stop_now, SSM CANCEL_TASK).",
    )

    @model_validator(mode="after")
    def _cutoff_inside(self) -> PatchWindow:
        if not timedelta(minutes=1) <= self.duration <= timedelta(hours=24):
            raise ValueError(f"duration {render_duration(self.duration)} must be between 1m and 24h")
        if self.cutoff >= self.duration:
            raise ValueError(
                f"cutoff {render_duration(self.cutoff)} must be shorter than duration "
                f"{render_duration(self.duration)}: no batch could ever start"
            )
        if len(set(self.days)) != len(self.days):
            raise ValueError("days lists a day twice")
        return self


class PatchBaseline(CatalogModel):
    """Which updates a wave installs: classifications, an approval delay, explicit lists, excluded hosts.

    ``approve_after_days`` counts from the advisory's published date. An update with no advisory has no
    date: it is approved only when approve_after_days is 0 or the package is listed in ``approved``.
    Packages in ``approved`` are installed whatever their classification or age.
    """

    classifications: Annotated[list[Literal["security", "updates"]], Field(min_length=1)] = Field(
        default_factory=lambda: list[Literal["security", "updates"]](["security"]),
        description="Which updates to include: security (the security suite or a security advisory), "
        "updates (everything else).",
    )
    approve_after_days: Annotated[int, Field(ge=0, le=360)] = Field(
        default=0, description="Days after the advisory's published date before an update is approved."
    )
    approved: list[PackageName] = Field(
        default_factory=list, description="Packages always approved (any classification or age)."
    )
    rejected: list[PackageName] = Field(default_factory=list, description="Packages never installed.")
    rejected_action: Literal["block", "allow_as_dependency"] = Field(
        default="block",
        description="block: a rejected package is never installed, not even as a dependency. "
        "allow_as_dependency: it may come in as another package's dependency, never on its own.",
    )
    excluded_hosts: list[HostName] = Field(
        default_factory=list, description="Hosts of the fleet this wave leaves alone (reported EXCLUDED)."
    )

    @model_validator(mode="after")
    def _lists_disjoint(self) -> PatchBaseline:
        both = sorted(set(self.approved) & set(self.rejected))
        if both:
            raise ValueError(f"package(s) both approved and rejected: {', '.join(both)}")
        return self


class PatchWaves(CatalogModel):
    """How a wave ramps: the canary group first, then batches (Ansible serial), with failure limits.

    ``batches`` is a list of counts or percentages of the fleet (canaries included in the total); the last
    entry repeats for the rest; a batch is never smaller than 1 host. A batch fails when its failed hosts
    EXCEED ``max_failed_per_batch`` (equalling it is allowed: 0 means any failure halts; Ansible
    max_fail_percentage and SSM MaxErrors work the same way). The wave halts when failures over the whole
    wave exceed ``failure_budget``.
    """

    canary_group: TargetName | None = Field(
        default="canary",
        description="Hosts with this group (hosts[].groups) go first, in a batch of their own; null: none.",
    )
    batches: Annotated[list[BatchEntry], Field(min_length=1)] = Field(
        default_factory=lambda: list[int | str](["100%"]),
        description="Batch sizes after the canaries, e.g. [1, '50%', '100%'].",
    )
    max_failed_per_batch: ShareOrCount = Field(
        default=0, description="A batch fails when more hosts than this (count or % of the batch) fail."
    )
    failure_budget: ShareOrCount = Field(
        default=0, description="The wave halts when more hosts than this (count or % of the fleet) fail."
    )

    @field_validator("max_failed_per_batch", "failure_budget")
    @classmethod
    def _check_limit(cls, value: int | str) -> int | str:
        return check_share_or_count(value, minimum=0)


class RebootPolicy(CatalogModel):
    """Whether hosts reboot after installing, and how long to wait for them to come back and stay up."""

    when: Literal["if_needed", "never", "always"] = Field(
        default="if_needed",
        description="if_needed: when /run/reboot-required is set or an installed kernel is not running; "
        "never: report INSTALLED_PENDING_REBOOT; always: after every install.",
    )
    timeout: Duration = Field(
        default=timedelta(minutes=10),
        description="Longest wait for the host to come back with a new boot id.",
    )
    stable_for: Duration = Field(
        default=timedelta(seconds=10), description="The host must stay up (same boot id) this long after."
    )


class HealthCommand(CatalogModel):
    """One health command run on the host; it passes when every expectation set holds."""

    command: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    expect_exit: Annotated[int, Field(ge=0, le=255)] | None = Field(
        default=0, description="Exit status expected; null to ignore it."
    )
    expect_output: str | None = Field(default=None, description="A substring the output must contain.")
    expect_regex: str | None = Field(default=None, description="A regular expression the output must match.")
    timeout: Duration = Field(default=timedelta(seconds=30), description="Bound of the command.")

    @field_validator("expect_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return value

    @model_validator(mode="after")
    def _expects_something(self) -> HealthCommand:
        if self.expect_exit is None and self.expect_output is None and self.expect_regex is None:
            raise ValueError(
                "a health command must expect something: expect_exit, expect_output or expect_regex"
            )
        return self


class HealthGate(CatalogModel):
    """The health gate after each host's install (and reboot): commands, then a soak, then commands again."""

    commands: list[HealthCommand] = Field(default_factory=list)
    soak: Duration = Field(
        default=timedelta(0), description="Wait this long after the first pass, then check once more."
    )


class HookCommand(CatalogModel):
    """A command run on each host before (pre_hook) or after (post_hook) its install; non-zero fails it."""

    command: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    timeout: Duration = timedelta(minutes=5)


class PatchingPolicy(CatalogModel):
    """A fleet's patching policy: the runbook patch_wave__<fleet> follows it."""

    window: PatchWindow | None = Field(default=None, description="Maintenance window; none means any time.")
    baseline: PatchBaseline = Field(default_factory=PatchBaseline)
    waves: PatchWaves = Field(default_factory=PatchWaves)
    reboot: RebootPolicy = Field(default_factory=RebootPolicy)
    health: HealthGate = Field(default_factory=HealthGate)
    pre_hook: list[HookCommand] = Field(default_factory=list)
    post_hook: list[HookCommand] = Field(default_factory=list)
    privilege: Literal["root", "sudo"] = Field(
        default="root", description="root: log in as root; sudo: run package commands through sudo -n."
    )
    production: bool = Field(
        default=False,
        description="A wave waits for a second person's approval (the estate's approvals block), never "
        "the person who started it.",
    )
    unreachable: Literal["exclude_and_report", "refuse"] = Field(
        default="exclude_and_report",
        description="A host unreachable at the scan: leave it out and report it, or refuse the whole wave.",
    )


class Fleet(CatalogModel):
    """A set of hosts patched and checked together."""

    name: TargetName
    os_family: Literal["debian", "ubuntu", "rhel", "amazon_linux"]
    hosts: Annotated[list[Host], Field(min_length=1)]
    disk_used_max_percent: Annotated[int, Field(ge=1, le=100)] = 90
    snapshots: FleetSnapshotPolicy | None = Field(
        default=None,
        description="EBS snapshots of every host's volumes: ebs_volume_ids, or else the volumes of the "
        "EC2 instance tagged Name=<host name>.",
    )
    patching: PatchingPolicy | None = Field(
        default=None, description="How patch_wave__<fleet> patches this fleet; none means no patch wave."
    )


# --- Service levels, HTTP(S) endpoints, cost and report settings (the monthly report reads these) ---

_EMAIL = r"^[^@\s]+@[^@\s]+$"
Percent = Annotated[float, Field(gt=0, lt=100)]


def _check_time_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Paris)") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_check_time_zone)]


class HttpEndpoint(CatalogModel):
    """An HTTP(S) endpoint an SLO can cover: probed once a minute with one request.

    A sample is good when the answer comes within ``timeout`` with a status in ``expect_status`` and,
    when set, a body containing ``expect_body``. Credentials never go in the URL.
    """

    name: TargetName
    url: (
        Annotated[str, StringConstraints(pattern=r"^https?://[A-Za-z0-9.\[\]:-]+(/\S*)?$", max_length=2000)]
        | None
    ) = Field(
        default=None,
        description="http:// or https:// URL, without user or password (no '@' before the host).",
    )
    http_conn_id: ConnId | None = Field(
        default=None,
        description="Instead of url: an Airflow HTTP connection (schema, host, port, any auth) plus path.",
    )
    path: Annotated[str, StringConstraints(pattern=r"^/\S*$")] = "/"
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: Annotated[list[Annotated[int, Field(ge=100, le=599)]], Field(min_length=1)] = Field(
        default_factory=lambda: [200], description="Statuses that count as up."
    )
    expect_body: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="A substring the first 64 KiB of the body must contain."
    )
    timeout: Duration = Field(default=timedelta(seconds=10), description="Bound of one request, 1s to 50s.")
    verify_tls: bool = Field(default=True, description="Check the server's certificate (https).")

    @field_validator("timeout")
    @classmethod
    def _timeout_inside_the_minute(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(seconds=50):
            raise ValueError("must be between 1s and 50s: one sample a minute, answered within it")
        return value

    @model_validator(mode="after")
    def _url_or_connection(self) -> HttpEndpoint:
        if (self.url is None) == (self.http_conn_id is None):
            raise ValueError("set exactly one of url and http_conn_id")
        if self.url is not None and self.path != "/":
            raise ValueError("path goes with http_conn_id; put it in the url instead")
        return self


class SloTarget(CatalogModel):
    """One thing an SLO measures: a database, a host or an endpoint, by its catalog name."""

    kind: Literal["database", "host", "endpoint"]
    name: HostName = Field(description="databases[].name, a host name of a fleet, or endpoints[].name.")

    @property
    def key(self) -> str:
        """The id its samples are stored under, e.g. ``database:orders_pg``."""
        return f"{self.kind}:{self.name}"


class SloCalendar(CatalogModel):
    """OpenSLO ``calendar``: the month is the calendar month in this time zone."""

    time_zone: TimeZoneName | None = Field(default=None, description="IANA name; default: the estate's.")


class SloTimeWindow(CatalogModel):
    """OpenSLO ``timeWindow``: a calendar-aligned month (the only window a monthly contract uses)."""

    duration: Literal["1M"] = "1M"
    is_rolling: Literal[False] = False
    calendar: SloCalendar = Field(default_factory=SloCalendar)


class SloObjective(CatalogModel):
    """One OpenSLO objective: the internal objective or the contractual SLA target.

    A one-minute slice is good when the share of good samples of its targets is at least
    ``time_slice_target`` (1.0: every target up).
    """

    role: Literal["internal", "sla"] = Field(
        description="internal: what the team aims for; sla: what the contract promises (credits)."
    )
    display_name: str = ""
    target_percent: Percent
    time_slice_target: Annotated[float, Field(gt=0, le=1)] = 1.0
    time_slice_window: Literal["1m"] = Field(default="1m", description="One-minute slices, as probed.")


class CreditTier(CatalogModel):
    """Credit owed when the month's availability is below ``below`` (and at least ``at_least``)."""

    below: Annotated[float, Field(gt=0, le=100)]
    at_least: Annotated[float, Field(ge=0, lt=100)] | None = Field(
        default=None, description="Lower bound of the tier; default: the next tier's `below`, or 0."
    )
    credit_pct: Annotated[float, Field(gt=0, le=100)] = Field(description="Percent of the monthly fee.")


class MaintenanceWindow(CatalogModel):
    """A one-off maintenance window announced to the customer: excluded from availability in full.

    Times carry their UTC offset (``2026-11-08T01:00:00+01:00``); quote them in YAML.
    """

    change_id: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    start: AwareDatetime
    end: AwareDatetime
    announced_at: AwareDatetime = Field(description="When the customer was told.")
    description: str = ""

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, value: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("start")
        if start is not None and value <= start:
            raise ValueError(f"end {value.isoformat()} is not after start {start.isoformat()}")
        return value


class StandingWindow(CatalogModel):
    """A recurring window (e.g. the weekly patch night), in the SLO's time zone.

    Unlike a one-off window it is excluded only while the ledger shows a patch wave or failover drill
    running inside it; an idle standing window counts like any other time.
    """

    days: Annotated[list[Weekday], Field(min_length=1)]
    start: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
    duration: Duration

    @field_validator("duration")
    @classmethod
    def _duration_in_a_day(cls, value: timedelta) -> timedelta:
        if not timedelta(minutes=1) <= value <= timedelta(hours=24):
            raise ValueError(f"duration {render_duration(value)} must be between 1m and 24h")
        return value


class Slo(CatalogModel):
    """An availability SLO shaped like OpenSLO v1 (budgeting Timeslices, a calendar month), with the
    contract's extensions: a no-data policy, credit tiers and maintenance windows."""

    name: TargetName
    description: str = ""
    budgeting_method: Literal["Timeslices"] = "Timeslices"
    time_window: SloTimeWindow = Field(default_factory=SloTimeWindow)
    targets: Annotated[list[SloTarget], Field(min_length=1)]
    objectives: Annotated[list[SloObjective], Field(min_length=2, max_length=2)] = Field(
        description="Two objectives: role internal and role sla."
    )
    no_data_policy: Literal["good", "bad", "excluded"] = Field(
        description="A minute with no sample: good (benefit of the doubt), bad, or excluded from the month."
    )
    credit_tiers: list[CreditTier] = Field(
        default_factory=list, description="Highest `below` first, e.g. [{below: 99.9, credit_pct: 10}, ...]."
    )
    monthly_fee: Annotated[Decimal, Field(ge=0, decimal_places=2)] | None = Field(
        default=None, description="The monthly fee credits are a share of."
    )
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "EUR"
    maintenance_notice: Duration = Field(
        default=timedelta(0), description="Least notice before a one-off window for it to be excluded."
    )
    maintenance_windows: list[MaintenanceWindow] = Field(default_factory=list)
    standing_windows: list[StandingWindow] = Field(default_factory=list)

    @field_validator("objectives")
    @classmethod
    def _internal_and_sla(cls, value: list[SloObjective]) -> list[SloObjective]:
        roles = sorted(objective.role for objective in value)
        if roles != ["internal", "sla"]:
            raise ValueError(f"needs one objective of role internal and one of role sla, got {roles}")
        internal, sla = sorted(value, key=lambda objective: objective.role)
        if internal.target_percent < sla.target_percent:
            raise ValueError(
                f"the internal objective {internal.target_percent} is below the SLA target "
                f"{sla.target_percent}: the team would aim under what the contract promises"
            )
        if internal.time_slice_target != sla.time_slice_target:
            raise ValueError("both objectives must share time_slice_target: the month has one set of minutes")
        return value

    @field_validator("credit_tiers")
    @classmethod
    def _tiers_do_not_overlap(cls, value: list[CreditTier], info: ValidationInfo) -> list[CreditTier]:
        for index, tier in enumerate(value):
            lower = value[index + 1].below if index + 1 < len(value) else 0.0
            if index + 1 < len(value) and value[index + 1].below >= tier.below:
                raise ValueError(
                    f"credit_tiers[{index + 1}] (below {value[index + 1].below}) overlaps "
                    f"credit_tiers[{index}] (below {tier.below}): list tiers from the highest `below` "
                    "down, each below the last"
                )
            if tier.at_least is not None and tier.at_least >= tier.below:
                raise ValueError(f"credit_tiers[{index}]: at_least {tier.at_least} is not below {tier.below}")
            if tier.at_least is not None and tier.at_least < lower:
                raise ValueError(
                    f"credit_tiers[{index}] (from {tier.at_least} below {tier.below}) overlaps "
                    f"credit_tiers[{index + 1}] (below {lower})"
                )
            if tier.at_least is not None and tier.at_least > lower:
                raise ValueError(
                    f"credit_tiers[{index}] starts at {tier.at_least} but the next tier ends at {lower}: "
                    "availability in between would earn no credit; add a tier or widen one"
                )
            if index and tier.credit_pct < value[index - 1].credit_pct:
                raise ValueError(
                    f"credit_tiers[{index}] gives {tier.credit_pct}% for a worse month than "
                    f"credit_tiers[{index - 1}] ({value[index - 1].credit_pct}%)"
                )
        objectives = info.data.get("objectives") or []
        sla = [objective.target_percent for objective in objectives if objective.role == "sla"]
        if value and sla and value[0].below > sla[0]:
            raise ValueError(
                f"credit_tiers[0] starts below {value[0].below}, above the SLA target {sla[0]}: "
                "credit would be owed in a month that met the contract"
            )
        return value

    def objective(self, role: Literal["internal", "sla"]) -> SloObjective:
        """The objective of ``role`` (both exist, checked on load)."""
        return next(objective for objective in self.objectives if objective.role == role)


class FocusExport(CatalogModel):
    """Where the FOCUS 1.x billing export lands: ``s3://bucket/prefix/data/BILLING_PERIOD=YYYY-MM/``."""

    cloud: TargetName = Field(description="clouds[].name whose connection reads the bucket.")
    bucket: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]*$")] = ""
    format: Literal["parquet", "csv"] = "parquet"


CostTagKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/=+@ -]{1,128}$")]


class CostSettings(CatalogModel):
    """How the monthly report reads the estate's cloud cost (Cost Explorer, and a FOCUS export)."""

    cloud: TargetName = Field(description="clouds[].name of the payer account Cost Explorer is asked in.")
    metric: Literal[
        "NetUnblendedCost", "UnblendedCost", "NetAmortizedCost", "AmortizedCost", "BlendedCost"
    ] = Field(default="NetUnblendedCost", description="Cost Explorer metric: invoice basis by default.")
    tag_keys: list[CostTagKey] = Field(
        default_factory=list,
        description="Activated cost allocation tag keys to break the month down by (case-sensitive), "
        "e.g. customer, requested_by.",
    )
    linked_accounts: list[Annotated[str, StringConstraints(pattern=r"^\d{12}$")]] = Field(
        default_factory=list, description="Only these linked accounts; empty: every account of the payer."
    )
    focus_export: FocusExport | None = None


class ReportSettings(CatalogModel):
    """Who receives the estate's monthly report, and through which SMTP notification."""

    recipients: Annotated[list[Annotated[str, StringConstraints(pattern=_EMAIL)]], Field(min_length=1)]
    smtp_notification: TargetName | None = Field(
        default=None,
        description="notifications[].name (kind smtp) that sends it; default: the first smtp one.",
    )
    repository: TargetName | None = Field(
        default=None,
        description="repositories[].name whose bucket keeps the reports under its Object Lock "
        "(mode and days); required to store them.",
    )
    prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$")] = Field(
        default="reports", description="Key prefix of the reports: <prefix>/<estate>/<YYYY-MM>/."
    )


# --- end of service levels, endpoints, cost and report settings ---


class SmtpNotification(CatalogModel):
    """E-mail through an SMTP connection."""

    name: TargetName
    kind: Literal["smtp"]
    smtp_conn_id: ConnId
    to: Annotated[list[Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+$")]], Field(min_length=1)]


class SnsNotification(CatalogModel):
    """A message on an SNS topic."""

    name: TargetName
    kind: Literal["sns"]
    aws_conn_id: ConnId
    topic_arn: Annotated[str, StringConstraints(pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:\S+$")]


Notification = Annotated[SmtpNotification | SnsNotification, Field(discriminator="kind")]


class Approvals(CatalogModel):
    """Who may approve this estate's dangerous steps (a restore over an existing database)."""

    approvers: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        description="User ids allowed to approve, as the auth manager knows them (SimpleAuthManager: the "
        "login name). Empty (and no approver_role): anyone allowed to answer, except the requester.",
    )
    approver_role: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None,
        description="An Airflow role whose users may approve too (resolved under SimpleAuthManager only).",
    )


ClusterManager = Literal[
    "native-pg", "patroni", "mariadb-gtid", "rds-multi-az-instance", "rds-multi-az-cluster", "aurora"
]
CLUSTER_MANAGERS: tuple[str, ...] = get_args(ClusterManager)
# The engine each manager runs; None: RDS managers run either (the members' databases say which).
MANAGER_ENGINES: dict[str, str | None] = {
    "native-pg": "postgres",
    "patroni": "postgres",
    "mariadb-gtid": "mariadb",
    "rds-multi-az-instance": None,
    "rds-multi-az-cluster": None,
    "aurora": None,
}
# Managers whose primary a drill can crash: their servers are processes on hosts we reach. AWS offers no
# crash of an RDS primary, only the forced failover that is the planned mode here (FIS runs the same call).
CRASH_MANAGERS: frozenset[str] = frozenset({"native-pg", "patroni", "mariadb-gtid"})
RDS_MANAGERS: frozenset[str] = frozenset({"rds-multi-az-instance", "rds-multi-az-cluster", "aurora"})
# Members a cluster needs at least: a primary and a replica to fail over to. A Multi-AZ DB instance has one
# endpoint; its standby is AWS's and cannot be addressed.
MIN_MEMBERS: dict[str, int] = {manager: 2 for manager in CLUSTER_MANAGERS} | {"rds-multi-az-instance": 1}
# How each manager's clients find the primary, as the probe must (see ClusterProbe.routing).
MANAGER_ROUTINGS: dict[str, frozenset[str]] = {
    "native-pg": frozenset({"libpq-multihost", "endpoint"}),
    "patroni": frozenset({"libpq-multihost", "endpoint"}),
    "mariadb-gtid": frozenset({"first-writable", "endpoint"}),
    "rds-multi-az-instance": frozenset({"endpoint"}),
    "rds-multi-az-cluster": frozenset({"endpoint"}),
    "aurora": frozenset({"endpoint"}),
}
HostPort = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}:\d{1,5}$"),
    Field(description="host:port, e.g. db-1.internal:5432."),
]


class ClusterMember(CatalogModel):
    """One server of a cluster: a catalog database (``database``), or a server named here (``name`` and
    ``conn_id``, optionally its ``address``).

    The member's role is never declared: the drill asks every member what it is.
    """

    database: TargetName | None = Field(
        default=None, description="A catalog database (databases[].name): its conn_id and engine are used."
    )
    name: TargetName | None = Field(
        default=None, description="The member's name, for a server that is not a catalog database."
    )
    conn_id: ConnId | None = Field(
        default=None, description="Connection to the server (for a member that is not a catalog database)."
    )
    address: HostPort | None = Field(
        default=None,
        description="host:port the server is expected at, when the catalog knows it: the topology check "
        "compares it with what the member's connection reaches.",
    )
    patroni_api_conn_id: ConnId | None = Field(
        default=None,
        description="Patroni only: an HTTP connection to this node's REST API (host, port, and the API's "
        "login and password when it asks for them).",
    )
    rewind_conn_id: ConnId | None = Field(
        default=None,
        description="PostgreSQL: a connection to this server as a role allowed to serve pg_rewind (the "
        "source of a rewind of the other members).",
    )
    replication_conn_id: ConnId | None = Field(
        default=None,
        description="mariadb-gtid: the account a replica of this server logs in with, and the address it "
        "reaches this server at (host, port): the old primary is pointed at the new one with it; none: a "
        "drill refuses before anything moves.",
    )
    rds_instance_id: str | None = Field(
        default=None, description="RDS: the DB instance identifier (else the database's rds_instance_id)."
    )
    host: HostName | None = Field(
        default=None,
        description="The fleet host (fleets[].hosts[].name) the server runs on, reached over SSH to stop or "
        "crash it; none: the drill cannot crash it.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ClusterMember:
        if self.database is not None and (self.name is not None or self.conn_id is not None):
            raise ValueError(
                "a member is either a catalog database (database: ...) or a server of its own (name: and "
                "conn_id:), not both"
            )
        if self.database is None and (self.name is None or self.conn_id is None):
            raise ValueError(
                "a member needs database: <a catalog database>, or both name: and conn_id: for a server "
                "that is not a catalog database"
            )
        return self

    @property
    def member_name(self) -> str:
        """The member's name in topologies and drill records."""
        return self.database or self.name or ""


class ClusterProbe(CatalogModel):
    """How the drill's probe connects: exactly as the application does, so that it sees what it sees."""

    conn_id: ConnId = Field(
        description="The application's way in, as an Airflow connection (never a password here). "
        "libpq-multihost: host holds the hosts (h1,h2), extra.port the ports (5432,5432) and "
        "extra.target_session_attrs read-write; first-writable: the same lists, the probe uses the first "
        "server with read_only off; endpoint: the manager's endpoint (RDS, a proxy, a virtual IP)."
    )
    routing: Literal["libpq-multihost", "first-writable", "endpoint"] = Field(
        description="How the application finds the primary: libpq multi-host with "
        "target_session_attrs=read-write (PostgreSQL), the first writable server of a list (MariaDB), or "
        "the manager's endpoint."
    )
    database: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_$-]{0,62}$")] | None = Field(
        default=None, description="Database the probe writes its numbered rows in (else the connection's)."
    )
    interval_ms: Annotated[int, Field(ge=5, le=1000)] = Field(
        default=15, description="One write every this many milliseconds."
    )


class DrillTargets(CatalogModel):
    """What a drill must show to pass: each target is PASS, FAIL or ABORTED in the record."""

    max_write_downtime_seconds: Annotated[float, Field(ge=0)] = Field(
        default=30.0,
        description="Client-observed write downtime: first failed or stalled write to the next acknowledged.",
    )
    max_acknowledged_writes_lost: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Acknowledged writes missing on the final primary."
    )
    max_drill_seconds: Annotated[float, Field(gt=0)] = Field(
        default=600.0, description="The whole drill, fail-back and verification included."
    )


class DrillWindow(CatalogModel):
    """When a failover drill may start: on these days, from start (estate time zone) for duration."""

    days: Annotated[list[Weekday], Field(min_length=1)]
    start: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = Field(
        description="Opening time HH:MM, local time of the estate's `timezone`."
    )
    duration: Duration = Field(description="How long the window stays open, 1m to 24h.")

    @model_validator(mode="after")
    def _sane(self) -> DrillWindow:
        if not timedelta(minutes=1) <= self.duration <= timedelta(hours=24):
            raise ValueError(f"duration {render_duration(self.duration)} must be between 1m and 24h")
        if len(set(self.days)) != len(self.days):
            raise ValueError("days lists a day twice")
        return self


class DrillGuards(CatalogModel):
    """What must hold before (and again right before) the drill moves the primary."""

    max_lag_bytes: Annotated[int, Field(ge=0)] = Field(
        default=1048576, description="The candidate's replication lag in bytes, at most."
    )
    max_lag_seconds: Annotated[float, Field(ge=0)] = Field(
        default=5.0, description="The candidate's replication lag in seconds, at most."
    )
    min_healthy_replicas: Annotated[int, Field(ge=0)] = Field(
        default=1,
        description="Streaming replicas within the lag bounds, at least (members minus one, at most).",
    )
    min_interval: Duration = Field(
        default=timedelta(hours=24), description="Since the cluster's previous drill, at least (e.g. 24h)."
    )
    window: DrillWindow | None = Field(default=None, description="When a drill may start; none: any time.")


class FailoverDrillPolicy(CatalogModel):
    """The cluster's failover drills (failover_drill__<cluster>): when, how, and what they must show."""

    schedule: Cron | None = Field(
        default=None, description="Cron expression or preset; none: only when someone starts it."
    )
    paused: bool = Field(default=False, description="Create failover_drill__<cluster> paused.")
    modes: Annotated[list[Literal["planned", "crash"]], Field(min_length=1)] = Field(
        default_factory=lambda: list[Literal["planned", "crash"]](["planned"]),
        description="Modes a drill may run: planned (a switchover) on every manager; crash (the primary "
        "stops dead) only where the manager can be crashed (native-pg, patroni, mariadb-gtid).",
    )
    crash_in_production: bool = Field(
        default=False,
        description="Allow the crash mode on a production cluster: an explicit acknowledgement, never the "
        "default.",
    )
    targets: DrillTargets = Field(default_factory=DrillTargets)
    crash_targets: DrillTargets | None = Field(
        default=None,
        description="What a crash drill must show, where it differs from a planned one (a manager that "
        "detects the crash itself waits for its leader key to expire: Patroni's ttl); none: targets.",
    )
    guards: DrillGuards = Field(default_factory=DrillGuards)
    failback: Literal["auto", "manual"] = Field(
        default="auto",
        description="auto: the drill fails back to the original primary and verifies again; manual: it "
        "leaves the new primary in place and a person fails back.",
    )

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        return value if value is None else _check_cron(value)

    @field_validator("modes")
    @classmethod
    def _modes_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("modes lists a mode twice")
        return value


class RdsClusterEndpoint(CatalogModel):
    """The RDS resource an RDS manager fails over, in a catalog cloud account."""

    cloud: TargetName = Field(description="Name of the cloud account (clouds[].name).")
    db_instance_identifier: str | None = Field(
        default=None, description="rds-multi-az-instance: the DB instance."
    )
    db_cluster_identifier: str | None = Field(
        default=None, description="rds-multi-az-cluster, aurora: the DB cluster."
    )


class Cluster(CatalogModel):
    """A replicated database cluster: its members, the manager that moves its primary, how the
    application connects, and its failover drill policy.

    The primary is discovered at run time from the members, never declared.
    """

    name: TargetName
    manager: ClusterManager = Field(
        description="What moves the primary: native-pg (PostgreSQL streaming replication, pg_promote and "
        "pg_rewind), patroni, mariadb-gtid, rds-multi-az-instance, rds-multi-az-cluster or aurora."
    )
    members: Annotated[list[ClusterMember], Field(min_length=1)]
    probe: ClusterProbe
    rds: RdsClusterEndpoint | None = Field(
        default=None, description="RDS managers: the instance or cluster to fail over."
    )
    production: bool = Field(
        default=False,
        description="A drill waits for a second person's approval (the estate's approvals); crash needs "
        "drill.crash_in_production as well.",
    )
    drill: FailoverDrillPolicy | None = Field(
        default=None, description="Failover drills of this cluster; none: no drill."
    )

    def member(self, name: str) -> ClusterMember:
        """The member called ``name`` (its database or its own name).

        :raises KeyError: naming the cluster.
        """
        for member in self.members:
            if member.member_name == name:
                return member
        raise KeyError(f"cluster {self.name!r} has no member {name!r}")


class Catalog(CatalogModel):
    """One estate (a customer or an environment): everything its runbooks act on."""

    estate: TargetName
    description: str = ""
    owner: Annotated[str, StringConstraints(min_length=1)] = Field(
        description="Who is on call for this estate; the owner of its DAGs."
    )
    timezone: str = "UTC"
    clouds: list[Cloud] = Field(default_factory=list)
    repositories: list[Repository] = Field(default_factory=list)
    databases: list[Database] = Field(default_factory=list)
    clusters: list[Cluster] = Field(
        default_factory=list,
        description="Replicated clusters of databases, with their manager and failover drill policy.",
    )
    fleets: list[Fleet] = Field(default_factory=list)
    slos: list[Slo] = Field(default_factory=list)
    notifications: list[Notification] = Field(default_factory=list)
    approvals: Approvals = Field(
        default_factory=Approvals,
        description="Who may approve restores over existing databases; never the requester.",
    )
    endpoints: list[HttpEndpoint] = Field(default_factory=list, description="HTTP(S) endpoints SLOs cover.")
    cost: CostSettings | None = None
    reports: ReportSettings | None = None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Paris)") from None
        return value

    def database(self, name: str) -> Database:
        """Return the database called ``name``; raise KeyError naming the estate otherwise."""
        for database in self.databases:
            if database.name == name:
                return database
        raise KeyError(f"no database {name!r} in estate {self.estate!r}")

    def cluster(self, name: str) -> Cluster:
        """Return the cluster called ``name``; raise KeyError naming the estate otherwise."""
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(f"no cluster {name!r} in estate {self.estate!r}")

    def repository(self, name: str) -> Repository:
        """Return the repository called ``name``; raise KeyError naming the estate otherwise."""
        for repository in self.repositories:
            if repository.name == name:
                return repository
        raise KeyError(f"no repository {name!r} in estate {self.estate!r}")

    @property
    def hosts(self) -> list[tuple[Fleet, Host]]:
        """Every host of every fleet, with its fleet."""
        return [(fleet, host) for fleet in self.fleets for host in fleet.hosts]


__all__ = [
    "CLUSTER_MANAGERS",
    "CRASH_MANAGERS",
    "MANAGER_ENGINES",
    "MANAGER_ROUTINGS",
    "MIN_MEMBERS",
    "RDS_MANAGERS",
    "WEEKDAYS",
    "Approvals",
    "BackupPolicy",
    "Catalog",
    "Cloud",
    "Cluster",
    "ClusterManager",
    "ClusterMember",
    "ClusterProbe",
    "CostSettings",
    "CreditTier",
    "Database",
    "DrillGuards",
    "DrillPolicy",
    "DrillTargets",
    "DrillWindow",
    "Duration",
    "Encryption",
    "FailoverDrillPolicy",
    "Fleet",
    "FleetSnapshotPolicy",
    "FocusExport",
    "HealthCommand",
    "HealthGate",
    "HookCommand",
    "Host",
    "HttpEndpoint",
    "MaintenanceWindow",
    "Notification",
    "ObjectLock",
    "PatchBaseline",
    "PatchWaves",
    "PatchWindow",
    "PatchingPolicy",
    "RdsClusterEndpoint",
    "RebootPolicy",
    "ReportSettings",
    "Repository",
    "RetentionPolicy",
    "Slo",
    "SloObjective",
    "SloTarget",
    "SloTimeWindow",
    "SmtpNotification",
    "SnsNotification",
    "StandingWindow",
    "check_share_or_count",
    "parse_duration",
    "render_duration",
]
