"""Ship the ledger to S3 in daily segments closed by signed digests, and verify what was shipped.

Layout in the evidence bucket (``<prefix>`` is ``evidence`` unless set; ``<ledger_id>`` names one host's
ledger, see :func:`ledger_id_of`):

    <prefix>/<ledger_id>/segments/YYYY-MM-DD.jsonl   the day's segment, byte for byte as written locally
    <prefix>/<ledger_id>/digests/YYYY-MM-DD.json     its digest: what the segment holds, signed

A day is shipped once it is closed (the UTC day ended :data:`CLOSE_GRACE` ago, so a worker whose clock
lags a little cannot append to a shipped day). Shipping a day uploads the segment, puts Object Lock
retention on it and reads the lock back (moto ignores lock headers on multipart uploads, and S3 starts a
bucket default at upload time: the lock is applied after the upload, as the backups do), then uploads
the digest and locks it the same way, and only then writes ``<ledger>/shipped/YYYY-MM-DD.json``. An
attempt that fails (the endpoint is down) leaves the day unmarked: the records wait in the local ledger
and the next attempt ships them. An attempt that died between the uploads is resumed: what S3 holds is
compared with the local segment and never overwritten with other bytes.

The digest, like CloudTrail's digest files, lists the segment's key, SHA-256 and size, its record count,
first and last ``seq``, the first record's ``prev`` and the last record's ``hash``, and the previous
day's digest (day, key, SHA-256 of its bytes), so that digests chain as the records do. It is signed
with HMAC-SHA256 over the canonical JSON of every other field, with a key held in an Airflow connection's
password; ``key_fingerprint`` (an HMAC of a fixed text under the key) tells which key signed without
revealing it. A digest is stored as its canonical JSON and a newline.

Settings come from the deployment's environment, not the catalog: see :class:`ShippingSettings`.
Importing this module imports neither Airflow nor boto3.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cloudops.errors import CloudOpsError, aws_error_code, first_line
from cloudops.evidence.backend import EvidenceLedger
from cloudops.evidence.ledger import (
    GENESIS,
    Ledger,
    LedgerError,
    canonical_json,
    read_segment,
    utc_stamp,
    verify_segments,
)

log = logging.getLogger(__name__)

BUCKET_ENV = "CLOUDOPS_EVIDENCE_BUCKET"
PREFIX_ENV = "CLOUDOPS_EVIDENCE_PREFIX"
AWS_CONN_ENV = "CLOUDOPS_EVIDENCE_AWS_CONN_ID"
SIGNING_CONN_ENV = "CLOUDOPS_EVIDENCE_SIGNING_CONN_ID"
LOCK_MODE_ENV = "CLOUDOPS_EVIDENCE_LOCK_MODE"
LOCK_DAYS_ENV = "CLOUDOPS_EVIDENCE_LOCK_DAYS"
KMS_KEY_ENV = "CLOUDOPS_EVIDENCE_KMS_KEY_ID"
LEDGER_ID_ENV = "CLOUDOPS_EVIDENCE_LEDGER_ID"

DEFAULT_PREFIX = "evidence"
DEFAULT_SIGNING_CONN_ID = "cloudops_evidence_signing"
# GOVERNANCE by default: a mistake in a first rollout can still be undone by someone holding
# s3:BypassGovernanceRetention. Production evidence should set COMPLIANCE, which nobody can shorten.
DEFAULT_LOCK_MODE = "GOVERNANCE"
# 400 days: a yearly audit period plus the weeks of fieldwork after it ends.
DEFAULT_LOCK_DAYS = 400
CLOSE_GRACE = timedelta(minutes=10)

ALGORITHM = "HMAC-SHA256"
DIGEST_VERSION = 1
SHIPPED = "shipped"
LEDGER_ID_FILE = "ledger-id"
_FINGERPRINT_TEXT = b"cloudops evidence signing key fingerprint"
_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.(jsonl|json)$")
_LEDGER_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

# What is read back from the bucket is untrusted and read whole into memory, so it is capped. A digest
# is about 1 KB of JSON. A segment is one day of the ledger: 1 GiB is a million records of 1 KB, far
# beyond any day's evidence, and no more than a worker can hold.
MAX_DIGEST_BYTES = 1024 * 1024
MAX_SEGMENT_BYTES = 1024 * 1024 * 1024

# A dead endpoint must fail a shipping attempt in seconds: the records wait locally anyway.
SHIPPING_CLIENT_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 60,
    "retries": {"total_max_attempts": 3, "mode": "standard"},
}


class EvidenceShippingError(CloudOpsError):
    """Shipping was refused or failed; the day named was not marked shipped and waits locally."""


class EvidenceSettingsError(EvidenceShippingError):
    """A deployment setting of evidence shipping is missing or invalid."""


@dataclass(frozen=True)
class ShippingSettings:
    """Where and how the ledger ships, from the environment of the scheduler and workers.

    :param bucket: ``CLOUDOPS_EVIDENCE_BUCKET``: an S3 bucket created with Object Lock enabled.
    :param aws_conn_id: ``CLOUDOPS_EVIDENCE_AWS_CONN_ID``: the Airflow AWS connection to reach it.
    :param prefix: ``CLOUDOPS_EVIDENCE_PREFIX`` (default ``evidence``).
    :param signing_conn_id: ``CLOUDOPS_EVIDENCE_SIGNING_CONN_ID`` (default ``cloudops_evidence_signing``):
        the connection whose password is the HMAC key.
    :param lock_mode: ``CLOUDOPS_EVIDENCE_LOCK_MODE``: GOVERNANCE (default) or COMPLIANCE.
    :param lock_days: ``CLOUDOPS_EVIDENCE_LOCK_DAYS`` (default 400): retention counted from shipping.
    :param kms_key_id: ``CLOUDOPS_EVIDENCE_KMS_KEY_ID``: SSE-KMS with this key; SSE-S3 when unset.
    :param ledger_id: ``CLOUDOPS_EVIDENCE_LEDGER_ID``: overrides the id kept in the ledger folder.
    """

    bucket: str
    aws_conn_id: str
    prefix: str = DEFAULT_PREFIX
    signing_conn_id: str = DEFAULT_SIGNING_CONN_ID
    lock_mode: str = DEFAULT_LOCK_MODE
    lock_days: int = DEFAULT_LOCK_DAYS
    kms_key_id: str | None = None
    ledger_id: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ShippingSettings:
        """Read the settings; raise naming the first setting that is missing or invalid."""
        env = os.environ if environ is None else environ

        def value(name: str) -> str:
            return (env.get(name) or "").strip()

        required = {
            BUCKET_ENV: "the S3 bucket, created with Object Lock enabled, that receives the ledger",
            AWS_CONN_ENV: "the Airflow AWS connection that reaches that bucket",
        }
        for name, meaning in required.items():
            if not value(name):
                raise EvidenceSettingsError(
                    f"evidence shipping is not configured: set {name} ({meaning}) in the environment "
                    "of the Airflow scheduler and workers"
                )
        mode = (value(LOCK_MODE_ENV) or DEFAULT_LOCK_MODE).upper()
        if mode not in ("GOVERNANCE", "COMPLIANCE"):
            raise EvidenceSettingsError(f"{LOCK_MODE_ENV}={mode!r}: use GOVERNANCE or COMPLIANCE")
        days_text = value(LOCK_DAYS_ENV) or str(DEFAULT_LOCK_DAYS)
        if not days_text.isdigit() or not 1 <= int(days_text) <= 36500:
            raise EvidenceSettingsError(f"{LOCK_DAYS_ENV}={days_text!r}: a whole number of days, 1 to 36500")
        ledger_id = value(LEDGER_ID_ENV) or None
        if ledger_id and not _LEDGER_ID.match(ledger_id):
            raise EvidenceSettingsError(
                f"{LEDGER_ID_ENV}={ledger_id!r}: lower-case letters, digits, '.', '_' and '-', at most 63"
            )
        return cls(
            bucket=value(BUCKET_ENV),
            aws_conn_id=value(AWS_CONN_ENV),
            prefix=(value(PREFIX_ENV) or DEFAULT_PREFIX).strip("/"),
            signing_conn_id=value(SIGNING_CONN_ENV) or DEFAULT_SIGNING_CONN_ID,
            lock_mode=mode,
            lock_days=int(days_text),
            kms_key_id=value(KMS_KEY_ENV) or None,
            ledger_id=ledger_id,
        )

    def segment_key(self, ledger_id: str, day: str) -> str:
        return f"{self.prefix}/{ledger_id}/segments/{day}.jsonl"

    def digest_key(self, ledger_id: str, day: str) -> str:
        return f"{self.prefix}/{ledger_id}/digests/{day}.json"

    def digests_prefix(self, ledger_id: str) -> str:
        return f"{self.prefix}/{ledger_id}/digests/"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


# -- signing (pure) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """The HMAC key that signs digests; never printed (``repr`` shows only its fingerprint)."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise EvidenceSettingsError(
                "the evidence signing key is shorter than 16 bytes: use a long random password"
            )

    @property
    def fingerprint(self) -> str:
        """Which key this is, without revealing it: an HMAC of a fixed text, cut to 16 hex digits."""
        return hmac.new(self.secret, _FINGERPRINT_TEXT, hashlib.sha256).hexdigest()[:16]

    def sign(self, payload: bytes) -> str:
        return hmac.new(self.secret, payload, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"SigningKey(fingerprint={self.fingerprint})"

    @classmethod
    def from_connection(cls, conn_id: str) -> SigningKey:
        """The key held in the password of the Airflow connection ``conn_id``."""
        from cloudops.connections import get_connection

        connection = get_connection(conn_id, "evidence digest signing")
        if not connection.password:
            raise EvidenceSettingsError(
                f"Airflow connection {conn_id!r} has no password: its password is the evidence signing key"
            )
        return cls(connection.password.encode())


@dataclass(frozen=True)
class SegmentFacts:
    """What one day segment holds, as its digest states it."""

    sha256: str
    bytes: int
    records: int
    first_seq: int
    last_seq: int
    first_prev_hash: str
    last_hash: str


def segment_facts(name: str, data: bytes) -> SegmentFacts:
    """Count and summarise a segment's records (their hashes are checked by verify_segments)."""
    records = list(read_segment(data, name))
    if not records:
        raise EvidenceShippingError(f"segment {name} holds no record: an empty day is not shipped")
    return SegmentFacts(
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        records=len(records),
        first_seq=records[0].seq,
        last_seq=records[-1].seq,
        first_prev_hash=records[0].prev,
        last_hash=records[-1].hash,
    )


@dataclass(frozen=True)
class DigestLink:
    """The digest a new digest follows: its day, key and the SHA-256 of its stored bytes."""

    day: str
    key: str
    sha256: str


def build_digest(
    *,
    ledger_id: str,
    day: str,
    segment_key: str,
    facts: SegmentFacts,
    previous: DigestLink | None,
    lock_mode: str,
    retain_until: datetime,
    signing_key: SigningKey,
    signed_at: datetime,
) -> dict[str, Any]:
    """Return the signed digest of one shipped day segment."""
    body: dict[str, Any] = {
        "version": DIGEST_VERSION,
        "ledger_id": ledger_id,
        "day": day,
        "segment_key": segment_key,
        "segment_sha256": facts.sha256,
        "segment_bytes": facts.bytes,
        "records": facts.records,
        "first_seq": facts.first_seq,
        "last_seq": facts.last_seq,
        "first_prev_hash": facts.first_prev_hash,
        "last_hash": facts.last_hash,
        "previous_day": previous.day if previous else None,
        "previous_digest_key": previous.key if previous else None,
        "previous_digest_sha256": previous.sha256 if previous else None,
        "object_lock_mode": lock_mode,
        "object_lock_retain_until": utc_stamp(retain_until),
        "signed_at": utc_stamp(signed_at),
        "algorithm": ALGORITHM,
        "key_fingerprint": signing_key.fingerprint,
    }
    return {**body, "signature": signing_key.sign(digest_payload(body))}


def digest_payload(digest: Mapping[str, Any]) -> bytes:
    """The bytes a digest's signature is taken over: the canonical JSON of every field but the signature."""
    return canonical_json({k: v for k, v in digest.items() if k != "signature"})


def encode_digest(digest: Mapping[str, Any]) -> bytes:
    """A digest's stored form: its canonical JSON and a newline."""
    return canonical_json(digest) + b"\n"


def signature_problem(digest: Mapping[str, Any], signing_key: SigningKey) -> str | None:
    """Why a digest's signature does not hold under ``signing_key`` (None when it holds)."""
    if digest.get("algorithm") != ALGORITHM:
        return f"it is signed with {digest.get('algorithm')!r}, not {ALGORITHM}"
    if digest.get("key_fingerprint") != signing_key.fingerprint:
        return (
            f"it was signed with another key (fingerprint {digest.get('key_fingerprint')}; the signing "
            f"connection's key is {signing_key.fingerprint}): a wrong key, or a replaced digest"
        )
    signature = digest.get("signature")
    if not isinstance(signature, str) or not hmac.compare_digest(
        signature, signing_key.sign(digest_payload(digest))
    ):
        return "its signature does not match its content: the digest was altered"
    return None


# -- the local side ----------------------------------------------------------------------------------


def ledger_id_of(
    ledger: EvidenceLedger, settings: ShippingSettings | None = None, *, create: bool = True
) -> str:
    """The id under which this ledger ships: the setting, else ``<ledger>/ledger-id`` (made once), or
    the PostgreSQL ledger's own (``pg-<8 hex digits>``, made with its tables).

    A new id is ``<hostname>-<8 hex digits>``: readable, and never shared with a ledger that was
    lost and started again from the genesis record.
    """
    if settings is not None and settings.ledger_id:
        return settings.ledger_id
    if not isinstance(ledger, Ledger):
        return _pg(ledger).stored_ledger_id()
    path = ledger.directory / LEDGER_ID_FILE
    if not path.exists():
        if not create:
            raise EvidenceShippingError(
                f"{path} does not exist: this ledger never shipped; name the ledger id to verify"
            )
        host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:40] or "host"
        ledger.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError), path.open("x", encoding="utf-8") as handle:
            handle.write(f"{host}-{secrets.token_hex(4)}\n")
    ledger_id = path.read_text(encoding="utf-8").strip()
    if not _LEDGER_ID.match(ledger_id):
        raise EvidenceShippingError(f"{path}: {ledger_id!r} is not a ledger id")
    return ledger_id


def _pg(ledger: EvidenceLedger) -> Any:
    """The PostgreSQL ledger, whose shipping state lives in its own tables (``pg_ledger.py``)."""
    from cloudops.evidence.pg_ledger import PgLedger

    if not isinstance(ledger, PgLedger):
        raise EvidenceShippingError(f"{ledger.where}: no known ledger backend keeps its shipping state")
    return ledger


def _read_segments(ledger: EvidenceLedger) -> list[tuple[str, bytes]]:
    """Every day segment's bytes as one consistent reading (no line caught half-written)."""
    return ledger.read_segments()


def _shipped_dir(ledger: Ledger) -> Path:
    return ledger.directory / SHIPPED


def read_shipped(ledger: EvidenceLedger) -> dict[str, dict[str, Any]]:
    """What this ledger recorded as shipped, by day."""
    if not isinstance(ledger, Ledger):
        return dict(_pg(ledger).read_shipped())
    folder = _shipped_dir(ledger)
    if not folder.is_dir():
        return {}
    shipped: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.iterdir()):
        match = _DAY_FILE.match(path.name)
        if match and match.group(2) == "json":
            shipped[match.group(1)] = json.loads(path.read_text(encoding="utf-8"))
    return shipped


def _write_shipped(ledger: EvidenceLedger, day: str, record: Mapping[str, Any]) -> None:
    if not isinstance(ledger, Ledger):
        _pg(ledger).write_shipped(day, record)
        return
    folder = _shipped_dir(ledger)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{day}.json.tmp"
    with temporary.open("wb") as handle:
        handle.write(json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(folder / f"{day}.json")


@contextlib.contextmanager
def _shipping_lock(ledger: EvidenceLedger) -> Iterator[None]:
    if not isinstance(ledger, Ledger):
        try:
            with _pg(ledger).shipping_lock():
                yield
        except LedgerError as error:
            raise EvidenceShippingError(str(error)) from None
        return
    ledger.directory.mkdir(parents=True, exist_ok=True)
    with (ledger.directory / "shipping.lock").open("a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EvidenceShippingError(
                f"another shipping of {ledger.directory} is running (it holds {lock.name}): try again later"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- S3 ----------------------------------------------------------------------------------------------


def shipping_client(settings: ShippingSettings) -> Any:
    """The S3 client of the evidence connection, bounded so a dead endpoint fails in seconds."""
    from cloudops.repository.s3 import bounded_s3_client

    return bounded_s3_client(settings.aws_conn_id, defaults=SHIPPING_CLIENT_CONFIG)


def _get(client: Any, bucket: str, key: str, *, limit: int, version_id: str | None = None) -> bytes | None:
    """An object's bytes (of ``version_id``, else the current version), or None when it does not exist.

    :raises EvidenceShippingError: it is larger than ``limit``; refused without reading it.
    """
    from cloudops.repository.s3 import version_args

    try:
        response = client.get_object(Bucket=bucket, Key=key, **version_args(version_id))
    except Exception as error:
        if aws_error_code(error) in {"NoSuchKey", "NoSuchVersion", "404", "NotFound"}:
            return None
        raise
    body = response["Body"]
    try:
        length = response.get("ContentLength")
        if length is not None and int(length) > limit:
            raise EvidenceShippingError(
                f"s3://{bucket}/{key} is {length} bytes, more than the {limit} it may hold: not read"
            )
        data = bytes(body.read(limit + 1))
    finally:
        body.close()
    if len(data) > limit:
        raise EvidenceShippingError(f"s3://{bucket}/{key} is more than the {limit} bytes it may hold")
    return data


def _current_version(client: Any, bucket: str, key: str) -> str | None:
    """The version id of the key's current version (None: no versions, or no such key)."""
    from cloudops.repository.s3 import real_version

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception as error:
        if aws_error_code(error) in {"NoSuchKey", "404", "NotFound"}:
            return None
        raise
    return real_version(head.get("VersionId"))


def _lock(client: Any, bucket: str, key: str, mode: str, until: datetime) -> datetime:
    """Put Object Lock retention on the key's current version and read it back; return retain-until.

    A version already locked at least as long in the same mode is left alone (shortening a
    GOVERNANCE lock would need a bypass, and is never meant here).
    """

    def current() -> tuple[str, datetime] | None:
        # get_object_retention answers 500 in moto; head_object reports the same facts.
        head = client.head_object(Bucket=bucket, Key=key)
        found, retain = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        return (str(found), retain.astimezone(UTC)) if found and retain else None

    before = current()
    if before is not None and before[0] == mode and before[1] >= until:
        return before[1]
    client.put_object_retention(Bucket=bucket, Key=key, Retention={"Mode": mode, "RetainUntilDate": until})
    after = current()
    if after is None or after[0] != mode or after[1] < until:
        raise EvidenceShippingError(
            f"s3://{bucket}/{key}: asked for Object Lock {mode} until {utc_stamp(until)}, the object "
            f"reports {after or 'no lock'}: is Object Lock enabled on the bucket?"
        )
    return after[1]


def _put(client: Any, settings: ShippingSettings, key: str, data: bytes, content_type: str) -> str | None:
    """Upload one small object with the evidence encryption; return its version id."""
    from cloudops.catalog.models import Encryption
    from cloudops.repository.pipeline import BackupFailed, encryption_args, upload_bytes

    encryption = (
        Encryption(mode="sse-kms", kms_key_id=settings.kms_key_id) if settings.kms_key_id else Encryption()
    )
    try:
        result = upload_bytes(
            client,
            settings.bucket,
            key,
            data,
            extra_args=encryption_args(encryption),
            content_type=content_type,
        )
    except BackupFailed as error:
        raise EvidenceShippingError(
            f"uploading {settings.url(key)} failed: {first_line(error.__cause__ or error)}"
        ) from error
    return result.version_id


# -- shipping ----------------------------------------------------------------------------------------


@dataclass
class ShipResult:
    """What one shipping attempt did.

    :param shipped: days uploaded by this attempt.
    :param resumed: days an earlier attempt had put in S3 whole without recording it; recorded now.
    :param already: days shipped before this attempt.
    :param waiting: days not closed yet (they ship once the UTC day is over).
    """

    ledger_id: str
    shipped: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    already: int = 0
    waiting: list[str] = field(default_factory=list)

    def summary(self) -> str:
        done = ", ".join(self.shipped) or "none"
        text = f"ledger {self.ledger_id}: shipped {len(self.shipped)} day(s) ({done})"
        if self.resumed:
            text += f", recorded {len(self.resumed)} found whole in S3 ({', '.join(self.resumed)})"
        text += f"; {self.already} shipped before"
        if self.waiting:
            text += f"; {', '.join(self.waiting)} still open, ships when the UTC day is over"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "ledger_id": self.ledger_id,
            "shipped": self.shipped,
            "resumed": self.resumed,
            "already": self.already,
            "waiting": self.waiting,
        }


def ship_closed_segments(
    ledger: EvidenceLedger,
    settings: ShippingSettings | None = None,
    *,
    now: datetime | None = None,
    client: Any = None,
    signing_key: SigningKey | None = None,
) -> ShipResult:
    """Ship every closed day segment not shipped yet, oldest first, each with its signed digest.

    :param now: the time that decides which days are closed (default: now by the ledger's clock: the
        database's for the PostgreSQL ledger, whose records it stamps).
    :param client: an S3 client (default: :func:`shipping_client`); ``signing_key`` likewise.
    :raises EvidenceShippingError: the local chain is broken (naming the record), a shipped segment
        changed locally, S3 holds other bytes for a day, or S3 failed; days not marked shipped wait.
    """
    settings = settings or ShippingSettings.from_environment()
    moment = now or ledger.clock()
    closed_before = (moment.astimezone(UTC) - CLOSE_GRACE).date().isoformat()
    with _shipping_lock(ledger):
        ledger_id = ledger_id_of(ledger, settings)
        result = ShipResult(ledger_id)
        segments = _read_segments(ledger)
        verdict = ledger.confirm(verify_segments(segments), ())
        if not verdict.ok:
            raise EvidenceShippingError(
                f"not shipping: the local ledger {ledger.where} is broken: {verdict.problem}. "
                "Nothing was shipped; find out what changed it before anything else"
            )
        shipped = read_shipped(ledger)
        previous: DigestLink | None = None
        for name, data in segments:
            day = name[:10]
            if day >= closed_before:
                result.waiting.append(day)
                continue
            if not data:
                log.info("evidence: %s is empty; nothing to ship for %s", name, day)
                continue
            record = shipped.get(day)
            if record is not None:
                sha256 = hashlib.sha256(data).hexdigest()
                if sha256 != record["segment_sha256"]:
                    raise EvidenceShippingError(
                        f"local segment {ledger.segment_where(name)} changed after it was shipped "
                        f"(shipped SHA-256 {record['segment_sha256']}, now {sha256}): it is not shipped "
                        "again; run `cloudops evidence verify --s3` to name the record"
                    )
                result.already += 1
            else:
                if client is None:
                    client = shipping_client(settings)
                if signing_key is None:
                    signing_key = SigningKey.from_connection(settings.signing_conn_id)
                record, resumed = _ship_day(
                    client, settings, signing_key, ledger_id, day, name, data, previous, moment
                )
                _write_shipped(ledger, day, record)
                (result.resumed if resumed else result.shipped).append(day)
            previous = DigestLink(day, record["digest_key"], record["digest_sha256"])
    log.info("evidence: %s", result.summary())
    return result


def _ship_day(
    client: Any,
    settings: ShippingSettings,
    signing_key: SigningKey,
    ledger_id: str,
    day: str,
    name: str,
    data: bytes,
    previous: DigestLink | None,
    moment: datetime,
) -> tuple[dict[str, Any], bool]:
    """Upload and lock one day's segment, then its digest; return the shipped record and whether an
    earlier attempt had already done it all."""
    segment_key, digest_key = settings.segment_key(ledger_id, day), settings.digest_key(ledger_id, day)
    facts = segment_facts(name, data)
    step = f"reading {settings.url(digest_key)}"
    try:
        stored_digest = _get(client, settings.bucket, digest_key, limit=MAX_DIGEST_BYTES)
        if stored_digest is not None:
            return _resume(settings, signing_key, day, digest_key, stored_digest, facts), True
        step = f"reading {settings.url(segment_key)}"
        # One byte more than the local segment is enough to tell that S3 holds other bytes.
        stored_segment = _get(client, settings.bucket, segment_key, limit=len(data) + 1)
        segment_version = None
        if stored_segment is None:
            step = f"uploading {settings.url(segment_key)}"
            segment_version = _put(client, settings, segment_key, data, "application/x-ndjson")
        elif stored_segment != data:
            raise EvidenceShippingError(
                f"{settings.url(segment_key)} already holds other bytes than the local segment {name} "
                f"(SHA-256 {hashlib.sha256(stored_segment).hexdigest()}, local {facts.sha256}) and has no "
                "digest: it is not overwritten; compare the two before anything else"
            )
        else:
            log.info("evidence: %s was uploaded by an earlier attempt; not uploaded again", segment_key)
        until = (moment.astimezone(UTC) + timedelta(days=settings.lock_days)).replace(microsecond=0)
        step = f"locking {settings.url(segment_key)}"
        locked_until = _lock(client, settings.bucket, segment_key, settings.lock_mode, until)
        digest = build_digest(
            ledger_id=ledger_id,
            day=day,
            segment_key=segment_key,
            facts=facts,
            previous=previous,
            lock_mode=settings.lock_mode,
            retain_until=locked_until,
            signing_key=signing_key,
            signed_at=datetime.now(UTC),
        )
        body = encode_digest(digest)
        step = f"uploading {settings.url(digest_key)}"
        digest_version = _put(client, settings, digest_key, body, "application/json")
        step = f"locking {settings.url(digest_key)}"
        _lock(client, settings.bucket, digest_key, settings.lock_mode, until)
    except EvidenceShippingError as error:
        raise EvidenceShippingError(f"day {day} not shipped: {error}") from error
    except Exception as error:
        raise EvidenceShippingError(
            f"day {day} not shipped, {step} failed: {first_line(error)}. "
            "Its records wait in the local ledger and ship on the next attempt"
        ) from error
    log.info(
        "evidence: shipped %s (%d records, seq %d-%d), digest %s, locked %s until %s",
        settings.url(segment_key),
        facts.records,
        facts.first_seq,
        facts.last_seq,
        digest_key,
        settings.lock_mode,
        utc_stamp(locked_until),
    )
    return _shipped_record(settings, day, digest, body, segment_version, digest_version), False


def _resume(
    settings: ShippingSettings,
    signing_key: SigningKey,
    day: str,
    digest_key: str,
    stored: bytes,
    facts: SegmentFacts,
) -> dict[str, Any]:
    """Record a day that S3 already holds whole (an attempt died after its uploads); never re-upload."""
    url = settings.url(digest_key)
    try:
        digest = json.loads(stored)
    except ValueError:
        raise EvidenceShippingError(f"{url} already exists and is not a digest: not overwritten") from None
    problem = signature_problem(digest, signing_key)
    if problem:
        raise EvidenceShippingError(f"{url} already exists and {problem}: not overwritten")
    if digest.get("segment_sha256") != facts.sha256:
        raise EvidenceShippingError(
            f"{url} already exists for other segment bytes (SHA-256 {digest.get('segment_sha256')}, "
            f"local {facts.sha256}): not overwritten; run `cloudops evidence verify --s3`"
        )
    log.info("evidence: %s was shipped by an earlier attempt that did not record it; recorded now", day)
    return _shipped_record(settings, day, digest, stored, None, None)


def _shipped_record(
    settings: ShippingSettings,
    day: str,
    digest: Mapping[str, Any],
    body: bytes,
    segment_version: str | None,
    digest_version: str | None,
) -> dict[str, Any]:
    return {
        "day": day,
        "bucket": settings.bucket,
        "segment_key": digest["segment_key"],
        "segment_sha256": digest["segment_sha256"],
        "segment_bytes": digest["segment_bytes"],
        "segment_version_id": segment_version,
        "digest_key": settings.digest_key(digest["ledger_id"], day),
        "digest_sha256": hashlib.sha256(body).hexdigest(),
        "digest_version_id": digest_version,
        "records": digest["records"],
        "last_seq": digest["last_seq"],
        "last_hash": digest["last_hash"],
        "object_lock_mode": digest["object_lock_mode"],
        "object_lock_retain_until": digest["object_lock_retain_until"],
        "recorded_at": utc_stamp(datetime.now(UTC)),
    }


# -- verifying ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShippedVerdict:
    """The outcome of checking what was shipped: days and records that held, and the first problem.

    :param pending: closed local days not shipped yet (not a problem: they wait for the next attempt).
    """

    days: int
    records: int
    problem: str | None = None
    last_seq: int = 0
    last_hash: str = GENESIS
    pending: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_shipped(
    ledger: EvidenceLedger | None = None,
    settings: ShippingSettings | None = None,
    *,
    ledger_id: str | None = None,
    client: Any = None,
    signing_key: SigningKey | None = None,
    now: datetime | None = None,
) -> ShippedVerdict:
    """Check every shipped day in S3 and name the first problem.

    For each digest in day order: its signature (a wrong key or an edited digest is named), that it
    follows the previous digest (a digest missing, replaced or out of order is named), the record chain
    of its segment from the previous day's last record (a record missing, altered or out of order is
    named, with its line in the S3 segment), and the segment's size and SHA-256 against the digest.
    With a local ledger: a local segment that differs from the shipped one, and a day recorded as
    shipped whose digest is not in S3, are named too; and the digest and segment are read at the S3
    versions recorded when they shipped (``shipped/DAY.json``), so a version written over them later is
    not what is checked, and is named as a problem itself. Digests are read up to
    :data:`MAX_DIGEST_BYTES`, segments up to the size their signed digest states.

    :raises EvidenceShippingError: S3 cannot be read (nothing could be checked).
    """
    settings = settings or ShippingSettings.from_environment()
    if ledger_id is None:
        if ledger is None:
            raise EvidenceShippingError("name the ledger id, or the local ledger, whose shipping to verify")
        ledger_id = ledger_id_of(ledger, settings, create=False)
    client = client or shipping_client(settings)
    signing_key = signing_key or SigningKey.from_connection(settings.signing_conn_id)
    local = dict(_read_segments(ledger)) if ledger is not None else {}
    shipped = read_shipped(ledger) if ledger is not None else {}
    try:
        stored_days = _digest_days(client, settings, ledger_id)
    except Exception as error:
        raise EvidenceShippingError(
            f"cannot list {settings.url(settings.digests_prefix(ledger_id))}: {first_line(error)}"
        ) from error

    days = records = 0
    last_seq, last_hash = 0, GENESIS
    previous: DigestLink | None = None

    def verdict(problem: str | None, pending: tuple[str, ...] = ()) -> ShippedVerdict:
        return ShippedVerdict(days, records, problem, last_seq, last_hash, pending)

    for day in sorted(set(stored_days) | set(shipped)):
        if day not in stored_days:
            return verdict(
                f"day {day} was shipped (recorded in {SHIPPED}/{day}.json of the local ledger) "
                f"but its digest {settings.url(settings.digest_key(ledger_id, day))} is not in S3: deleted?"
            )
        digest_key = settings.digest_key(ledger_id, day)
        digest_url = settings.url(digest_key)
        recorded = shipped.get(day) or {}
        try:
            over = _written_over(client, settings, digest_key, recorded.get("digest_version_id"))
            if over:
                return verdict(f"digest {day} ({digest_url}): {over}")
            body = _get(
                client,
                settings.bucket,
                digest_key,
                limit=MAX_DIGEST_BYTES,
                version_id=recorded.get("digest_version_id"),
            )
        except EvidenceShippingError as error:
            return verdict(f"digest {day}: {error}")
        except Exception as error:
            raise EvidenceShippingError(f"cannot read {digest_url}: {first_line(error)}") from error
        if body is None:
            return verdict(f"digest {day} ({digest_url}) disappeared while verifying")
        try:
            digest = json.loads(body)
        except ValueError:
            return verdict(f"digest {day} ({digest_url}) is not valid JSON: altered or damaged")
        if not isinstance(digest, dict):
            return verdict(f"digest {day} ({digest_url}) is not a digest object: altered or damaged")
        problem = signature_problem(digest, signing_key)
        if problem:
            return verdict(f"digest {day} ({digest_url}): {problem}")
        segment_key = settings.segment_key(ledger_id, day)
        if digest.get("day") != day or digest.get("segment_key") != segment_key:
            return verdict(
                f"digest {day} ({digest_url}) is out of place: it is the digest of day {digest.get('day')} "
                f"({digest.get('segment_key')})"
            )
        sha256 = hashlib.sha256(body).hexdigest()
        if day in shipped and shipped[day].get("digest_sha256") != sha256:
            return verdict(
                f"digest {day} ({digest_url}) is not the one shipped from here (SHA-256 {sha256}, shipped "
                f"{shipped[day].get('digest_sha256')}): it was replaced"
            )
        if (previous.sha256 if previous else None) != digest.get("previous_digest_sha256"):
            if digest.get("previous_day") != (previous.day if previous else None):
                before = f"after digest {previous.day}" if previous else "as the first digest found"
                return verdict(
                    f"digest {day} ({digest_url}) follows digest {digest.get('previous_day')}, which is "
                    f"not in S3 {before}: a day is missing"
                )
            return verdict(
                f"digest {day} ({digest_url}) does not follow digest {digest.get('previous_day')}: "
                "the previous digest was replaced"
            )
        segment_url = settings.url(segment_key)
        stated_bytes = digest.get("segment_bytes")
        limit = min(stated_bytes, MAX_SEGMENT_BYTES) if isinstance(stated_bytes, int) else MAX_SEGMENT_BYTES
        try:
            over = _written_over(client, settings, segment_key, recorded.get("segment_version_id"))
            if over:
                return verdict(f"segment {day} ({segment_url}): {over}")
            # One byte past what the signed digest states is enough to tell the segment differs.
            data = _get(
                client,
                settings.bucket,
                segment_key,
                limit=limit + 1,
                version_id=recorded.get("segment_version_id"),
            )
        except EvidenceShippingError as error:
            return verdict(f"segment {day}: {error}")
        except Exception as error:
            raise EvidenceShippingError(f"cannot read {segment_url}: {first_line(error)}") from error
        if data is None:
            return verdict(f"segment {day} ({segment_url}) is missing: its digest names it")
        start_seq = last_seq + 1 if previous else int(digest.get("first_seq", 1))
        start_prev = last_hash if previous else str(digest.get("first_prev_hash", GENESIS))
        chain = verify_segments([(segment_key, data)], start_seq=start_seq, start_prev=start_prev)
        if not chain.ok:
            return verdict(f"in s3://{settings.bucket}: {chain.problem}")
        stated = (
            digest.get("segment_sha256"),
            digest.get("segment_bytes"),
            digest.get("records"),
            digest.get("last_seq"),
            digest.get("last_hash"),
        )
        found = (hashlib.sha256(data).hexdigest(), len(data), chain.records, chain.last_seq, chain.last_hash)
        if stated != found:
            return verdict(
                f"segment {day} ({segment_url}) differs from its signed digest: the digest states "
                f"{stated[2]} records to seq {stated[3]}, {stated[1]} bytes, SHA-256 "
                f"{stated[0]}; S3 holds {found[2]} records to seq {found[3]}, {found[1]} bytes, SHA-256 "
                f"{found[0]}"
            )
        local_data = local.get(f"{day}.jsonl")
        if local_data is not None and local_data != data:
            return verdict(_local_difference(ledger, day, local_data, data))
        days, records = days + 1, records + chain.records
        last_seq, last_hash = chain.last_seq, chain.last_hash
        previous = DigestLink(day, digest_key, sha256)

    closed_before = ((now or datetime.now(UTC)).astimezone(UTC) - CLOSE_GRACE).date().isoformat()
    pending = tuple(
        name[:10]
        for name, data in sorted(local.items())
        if data and name[:10] < closed_before and name[:10] not in stored_days
    )
    return verdict(None, pending)


def _written_over(client: Any, settings: ShippingSettings, key: str, shipped_version: str | None) -> str:
    """Why the key's current version is not the one shipped ('' when it is, or none was recorded).

    Nothing ever writes a shipped key again, so a newer version is someone else's: the locked shipped
    version is still there and is what is verified, but the change is itself a problem to report.
    """
    if not shipped_version or shipped_version == "null":
        return ""
    current = _current_version(client, settings.bucket, key)
    if current == shipped_version:
        return ""
    return (
        f"its current S3 version ({current}) is not the one shipped ({shipped_version}): something wrote "
        "over it after shipping (the shipped version is still what is verified)"
    )


def _digest_days(client: Any, settings: ShippingSettings, ledger_id: str) -> list[str]:
    prefix = settings.digests_prefix(ledger_id)
    days = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            match = _DAY_FILE.match(item["Key"][len(prefix) :])
            if match and match.group(2) == "json":
                days.append(match.group(1))
            else:
                log.warning("evidence: skipping %s: not a digest name", item["Key"])
    return sorted(days)


def _local_difference(ledger: EvidenceLedger | None, day: str, local: bytes, shipped: bytes) -> str:
    """Name the first line where the local segment and the shipped one part."""
    where = ledger.segment_where(f"{day}.jsonl") if ledger else f"{day}.jsonl"
    local_lines, shipped_lines = local.splitlines(), shipped.splitlines()
    for number, (mine, theirs) in enumerate(zip(local_lines, shipped_lines, strict=False), start=1):
        if mine != theirs:
            return (
                f"local segment {where} line {number} ({_seq_of(mine)}) differs from the shipped one "
                f"({_seq_of(theirs)}): the local ledger was changed after shipping"
            )
    number = min(len(local_lines), len(shipped_lines)) + 1
    if len(local_lines) < len(shipped_lines):
        return (
            f"local segment {where} ends at line {number - 1}; the shipped one goes on with "
            f"{_seq_of(shipped_lines[number - 1])}: records were removed locally after shipping"
        )
    return (
        f"local segment {where} line {number} ({_seq_of(local_lines[number - 1])}) is not in the shipped "
        "one: records were added locally after shipping"
    )


def _seq_of(line: bytes) -> str:
    try:
        return f"record seq {json.loads(line)['seq']}"
    except (ValueError, KeyError, TypeError):
        return "not a record"


__all__ = [
    "ALGORITHM",
    "CLOSE_GRACE",
    "DEFAULT_LOCK_DAYS",
    "DEFAULT_LOCK_MODE",
    "DEFAULT_PREFIX",
    "DEFAULT_SIGNING_CONN_ID",
    "MAX_DIGEST_BYTES",
    "MAX_SEGMENT_BYTES",
    "SHIPPING_CLIENT_CONFIG",
    "DigestLink",
    "EvidenceSettingsError",
    "EvidenceShippingError",
    "SegmentFacts",
    "ShipResult",
    "ShippedVerdict",
    "ShippingSettings",
    "SigningKey",
    "build_digest",
    "digest_payload",
    "encode_digest",
    "ledger_id_of",
    "read_shipped",
    "segment_facts",
    "ship_closed_segments",
    "shipping_client",
    "signature_problem",
    "verify_shipped",
]
