"""A backup repository in S3: store dumps, write manifests, lock, list, verify and delete backups.

Layout (see :mod:`cloudops.repository.layout`): ``<prefix>/<estate>/<database>/<backup_id>/<name>``,
with ``manifest.json`` written last. A backup is *complete* when its manifest exists, validates, and
lists exactly the objects that are there, with their sizes; anything else is *incomplete* (a failed or
running backup, or a half-deleted one), and :class:`StoredBackup` says why.

What "deleted" means in a versioned bucket: deleting a key only adds a delete marker, which hides the
object but keeps every byte (and the bill). :meth:`BackupRepository.delete_backup` therefore deletes
every *version* of every key under the backup's folder, and their delete markers, so that the storage
is freed and nothing of the backup is left to list. Versions under Object Lock cannot be deleted before
their retain-until date (COMPLIANCE never, GOVERNANCE only with ``bypass_governance``), so the delete
checks every version's lock first and refuses the whole backup rather than leaving part of it.

The boto3 client comes from the amazon provider's ``S3Hook``; it is built on first use, with bounded
timeouts and retries (:data:`DEFAULT_CLIENT_CONFIG`, overridden by the connection's ``config_kwargs``
extra and then by the ``client_config`` argument). Importing this module imports neither Airflow nor
boto3: DAG files may import it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cloudops.errors import CloudOpsError, aws_error_code, first_line
from cloudops.repository import layout
from cloudops.repository.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    ManifestObject,
    ManifestObjectLock,
)
from cloudops.repository.pipeline import (
    DEFAULT_PART_SIZE,
    BackupFailed,
    encryption_args,
    stream_command_to_object,
    upload_bytes,
)
from cloudops.repository.retention import BackupRecord

if TYPE_CHECKING:
    from cloudops.catalog.models import Repository
    from cloudops.engines import DumpCommand

log = logging.getLogger(__name__)

# Every S3 call is bounded: connect and read timeouts, and a fixed number of attempts.
DEFAULT_CLIENT_CONFIG: dict[str, Any] = {
    "connect_timeout": 10,
    "read_timeout": 120,
    "retries": {"total_max_attempts": 4, "mode": "standard"},
}
COMPRESSED_SUFFIX = ".zst"
# The longest one dump may run when the caller gives no bound: long enough for a large logical dump,
# short enough that a hung one is noticed the same day.
DEFAULT_DUMP_TIMEOUT = timedelta(hours=6)
_VERIFY_CHUNK = 1024 * 1024
# How far a backup's time may lie ahead of this clock before it is taken for a planted or misdated
# backup: more than any sane skew between the worker that wrote it and the one reading it.
CLOCK_SKEW = timedelta(minutes=5)


class BackupNotFound(CloudOpsError):
    """The backup, or its manifest, is not in the repository."""


class BackupLocked(CloudOpsError):
    """A delete was refused: object versions of the backup are under Object Lock retention.

    :ivar locked: ``(key, mode, retain_until)`` of each locked version.
    """

    def __init__(self, message: str, *, locked: list[tuple[str, str, datetime]]) -> None:
        super().__init__(message)
        self.locked = locked


class BackupDeleteFailed(CloudOpsError):
    """Deleting a backup stopped part-way; the manifest went first, so the backup now reads incomplete."""


@dataclass(frozen=True)
class StoredBackup:
    """One backup as found in the repository.

    :param backup_id: the folder name; its time is ``time``.
    :param complete: the manifest exists, validates and lists exactly the stored objects and sizes.
    :param manifest: the parsed manifest, when it could be read.
    :param keys: the current keys under the backup's folder, manifest first.
    :param locked_until: the latest Object Lock retain-until among those keys (aware, UTC).
    :param problems: why the backup is incomplete (empty when complete).
    :param size: total stored bytes of the keys.
    :param time_problem: why the backup's time cannot be believed (its id lies in the future, or the
        manifest's ``started_at`` is not its id's time); such a backup is also incomplete, and never
        "latest".
    """

    backup_id: str
    time: datetime
    complete: bool
    manifest: Manifest | None
    keys: list[str]
    locked_until: datetime | None
    problems: list[str] = field(default_factory=list)
    size: int = 0
    time_problem: str | None = None

    @property
    def tags(self) -> frozenset[str]:
        """The manifest's tags (none without a manifest)."""
        return frozenset(self.manifest.tags) if self.manifest else frozenset()

    def to_record(self) -> BackupRecord:
        """Return what the retention planner needs to know about this backup."""
        return BackupRecord(
            id=self.backup_id,
            time=self.time,
            tags=self.tags,
            complete=self.complete,
            locked_until=self.locked_until,
        )


@dataclass(frozen=True)
class Verification:
    """The result of re-reading a backup's objects and comparing them with its manifest.

    :param ok: every object is there with the manifest's size and SHA-256.
    :param reason: what was found, for the log and the drill report.
    :param object_name: the first object that is missing or differs, when not ok.
    """

    ok: bool
    reason: str
    object_name: str | None = None
    objects_checked: int = 0
    bytes_checked: int = 0


@dataclass(frozen=True)
class ManifestBytes:
    """A manifest as stored: its exact bytes, their SHA-256, and the S3 version they were read from.

    :param version_id: the version read (None when the store reports none: an unversioned bucket).
    """

    key: str
    data: bytes
    sha256: str
    version_id: str | None


@dataclass(frozen=True)
class WrittenManifest:
    """What :meth:`BackupRepository.write_manifest` wrote: the ledger records it, restores check it.

    :param sha256: SHA-256 of the exact bytes written.
    :param version_id: the S3 version created (None in an unversioned bucket).
    """

    key: str
    sha256: str
    version_id: str | None
    size: int


def bounded_s3_client(
    aws_conn_id: str,
    *,
    region: str | None = None,
    client_config: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] = DEFAULT_CLIENT_CONFIG,
) -> Any:
    """Return a boto3 S3 client from an Airflow AWS connection, every call bounded in time and attempts.

    The connection's own ``config_kwargs`` extra wins over ``defaults``; ``client_config`` over both.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.config import Config

    config = Config(**dict(defaults)).merge(S3Hook(aws_conn_id=aws_conn_id).config)
    if client_config:
        config = config.merge(Config(**dict(client_config)))
    return S3Hook(aws_conn_id=aws_conn_id, region_name=region, config=config).get_conn()


def as_retention_records(backups: Iterable[StoredBackup]) -> list[BackupRecord]:
    """Return the retention planner's view of listed backups."""
    return [backup.to_record() for backup in backups]


class BackupRepository:
    """The backups of one estate in one catalog repository (bucket and prefix).

    :param repository: the catalog's repository: bucket, prefix, region, encryption, object lock.
    :param aws_conn_id: the Airflow AWS connection to reach it with.
    :param estate: the catalog's estate; every key this writes or reads is under ``<prefix>/<estate>/``.
    :param client_config: botocore ``Config`` options that override the defaults and the connection's.
    :param part_size: multipart part size; memory use of a streamed backup is about twice this.
    :param threads: zstd worker threads for :meth:`store_object` (0: none; -1: one per CPU).
    """

    def __init__(
        self,
        repository: Repository,
        *,
        aws_conn_id: str,
        estate: str,
        client_config: Mapping[str, Any] | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        threads: int = 0,
    ) -> None:
        self.repository = repository
        self.bucket = repository.bucket
        self.prefix = layout.normalize_prefix(repository.prefix)
        self.aws_conn_id = aws_conn_id
        self.estate = estate
        self.part_size = part_size
        self.threads = threads
        self._client_config = dict(client_config or {})
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The boto3 S3 client, built from the Airflow connection on first use."""
        if self._client is None:
            self._client = bounded_s3_client(
                self.aws_conn_id, region=self.repository.region, client_config=self._client_config
            )
        return self._client

    def __repr__(self) -> str:
        return f"BackupRepository(s3://{self.bucket}/{self.prefix}, estate={self.estate!r})"

    # Keys.

    def backup_prefix(self, database: str, backup_id: str) -> str:
        """Return the folder of one backup, ``<prefix>/<estate>/<database>/<backup_id>/``."""
        return layout.backup_prefix(self.prefix, self.estate, database, backup_id)

    def object_key(self, database: str, backup_id: str, name: str) -> str:
        """Return the key of object ``name`` of a backup."""
        return layout.object_key(self.prefix, self.estate, database, backup_id, name)

    def manifest_key(self, database: str, backup_id: str) -> str:
        """Return the key of a backup's manifest."""
        return layout.manifest_key(self.prefix, self.estate, database, backup_id)

    def object_lock_for(self, finished_at: datetime) -> ManifestObjectLock | None:
        """Return the catalog's Object Lock for a backup that finished at ``finished_at`` (None: no lock).

        Retain-until is counted from the end of the backup and cut to the second, as S3 stores it.
        """
        lock = self.repository.object_lock
        if lock is None:
            return None
        until = (finished_at.astimezone(UTC) + timedelta(days=lock.days)).replace(microsecond=0)
        return ManifestObjectLock(mode=lock.mode, retain_until=until)

    # Writing a backup: objects, lock, manifest last.

    def store_object(
        self,
        database: str,
        backup_id: str,
        command: DumpCommand,
        *,
        level: int,
        timeout: timedelta = DEFAULT_DUMP_TIMEOUT,
    ) -> ManifestObject:
        """Stream ``command``'s output, zstd-compressed, into the backup as ``<object_name>.zst``.

        :param level: zstd level (the backup policy's ``compression_level``).
        :param timeout: the longest the dump and upload may take; the dump is killed after it.
        :return: the manifest entry of the stored object.
        :raises BackupFailed: the dump or the upload failed (nothing is left behind), or the backup is
            already complete (its manifest exists: a complete backup is never changed).
        """
        name = command.object_name
        if not name.endswith(COMPRESSED_SUFFIX):
            name += COMPRESSED_SUFFIX
        key = self.object_key(database, backup_id, name)
        manifest_key = self.manifest_key(database, backup_id)
        try:
            complete = self._head(manifest_key) is not None
        except Exception as error:
            raise BackupFailed(
                step="check backup", key=f"s3://{self.bucket}/{key}", reason=first_line(error)
            ) from error
        if complete:
            raise BackupFailed(
                step="check backup",
                key=f"s3://{self.bucket}/{key}",
                reason=f"backup {backup_id} is already complete (its manifest exists): start a new backup id",
            )
        result = stream_command_to_object(
            command,
            self.client,
            self.bucket,
            key,
            level=level,
            part_size=self.part_size,
            extra_args=encryption_args(self.repository.encryption),
            timeout=timeout,
            threads=self.threads,
        )
        return ManifestObject(
            name=name,
            key=key,
            size=result.compressed_bytes,
            sha256=result.sha256,
            raw_bytes=result.raw_bytes,
            version_id=real_version(result.version_id),
        )

    def apply_object_lock(
        self,
        keys: Iterable[str],
        *,
        mode: str,
        retain_until: datetime,
        version_ids: Mapping[str, str | None] | None = None,
    ) -> dict[str, datetime]:
        """Put Object Lock retention on each key's version, and read it back.

        Multipart uploads get no lock headers in moto (and bucket defaults start at upload time), so the
        lock is applied after the upload. A key already locked at least as long in the same mode is left
        alone: shortening a GOVERNANCE lock would need a bypass, and is never what is meant here.

        :param version_ids: the version of each key to lock (the one the upload created), so that a
            version written over the key in between is not what gets locked; the current version of
            keys not named.

        :return: the retain-until date read back for each key.
        :raises BackupFailed: S3 refused, or the lock read back is not the one asked for.
        """
        if retain_until.tzinfo is None:
            raise ValueError("retain_until must be timezone-aware")
        until = retain_until.astimezone(UTC).replace(microsecond=0)
        if until <= datetime.now(UTC):
            raise ValueError(f"retain_until {until.isoformat()} is not in the future")
        applied: dict[str, datetime] = {}
        for key in keys:
            url = f"s3://{self.bucket}/{key}"
            version = (version_ids or {}).get(key)
            pinned = version_args(version)
            current = self._lock_of(self._head_or_fail(key, step="object lock", version_id=version))
            if current is not None and current[0] == mode and current[1] >= until:
                log.info("%s: already locked (%s) until %s, not changed", url, mode, _iso(current[1]))
                applied[key] = current[1]
                continue
            try:
                self.client.put_object_retention(
                    Bucket=self.bucket, Key=key, Retention={"Mode": mode, "RetainUntilDate": until}, **pinned
                )
            except Exception as error:
                raise BackupFailed(step="object lock", key=url, reason=first_line(error)) from error
            # get_object_retention is broken in moto (500); head_object reports the same facts.
            after = self._lock_of(self._head_or_fail(key, step="object lock", version_id=version))
            if after is None or after[0] != mode or after[1] < until:
                raise BackupFailed(
                    step="object lock",
                    key=url,
                    reason=f"asked for {mode} until {_iso(until)}, the object reports {after or 'no lock'}",
                )
            log.info("%s: locked (%s) until %s", url, mode, _iso(after[1]))
            applied[key] = after[1]
        return applied

    def write_manifest(self, manifest: Manifest) -> WrittenManifest:
        """Write the manifest, the last step of a backup: from now on the backup is complete.

        Checks first that it belongs here and that every object it lists is stored with its size, so
        that a manifest never vouches for objects that are not there. The manifest gets the same
        encryption and Object Lock as the objects. A manifest is never overwritten: the PUT is
        conditional (``If-None-Match: *``), so a manifest written between the check and the PUT makes
        S3 refuse it instead of adding a version over it. (The check stays: its message is clearer, and
        an S3-compatible store that ignores the condition is still checked.)

        :return: the key, the SHA-256 of the bytes written and the version S3 created: what the
            ledger records, and what restores check the manifest against.
        :raises BackupFailed: the manifest is for another estate or place, an object is missing or has
            another size, a manifest already exists, or the write failed.
        """
        key = self.manifest_key(manifest.database, manifest.backup_id)
        url = f"s3://{self.bucket}/{key}"

        def refuse(reason: str) -> BackupFailed:
            return BackupFailed(step="write manifest", key=url, reason=reason)

        if manifest.estate != self.estate:
            raise refuse(
                f"the manifest is for estate {manifest.estate!r}, this repository's is {self.estate!r}"
            )
        for item in manifest.objects:
            expected = self.object_key(manifest.database, manifest.backup_id, item.name)
            if item.key != expected:
                raise refuse(f"object {item.name!r} has key {item.key!r}, expected {expected!r}")
            head = self._head_or_fail(
                item.key, step="write manifest", missing=f"object {item.name!r} is not stored"
            )
            if head["ContentLength"] != item.size:
                raise refuse(
                    f"object {item.name!r} is {head['ContentLength']} bytes, the manifest says {item.size}"
                )
        try:
            exists = self._head(key) is not None
        except Exception as error:
            raise refuse(first_line(error)) from error
        if exists:
            raise refuse("a manifest already exists: a complete backup is never changed")
        extra_args: dict[str, Any] = {**encryption_args(self.repository.encryption), "IfNoneMatch": "*"}
        if manifest.object_lock is not None:
            extra_args["ObjectLockMode"] = manifest.object_lock.mode
            extra_args["ObjectLockRetainUntilDate"] = manifest.object_lock.retain_until
        data = manifest.to_json().encode()
        try:
            result = upload_bytes(
                self.client, self.bucket, key, data, extra_args=extra_args, content_type="application/json"
            )
        except BackupFailed as error:
            cause = error.__cause__
            if cause is not None and aws_error_code(cause) in {"PreconditionFailed", "412"}:
                raise refuse(
                    "a manifest was written while this backup ran (S3 refused the conditional PUT): "
                    "a complete backup is never changed"
                ) from error
            raise
        log.info(
            "backup %s of %s complete: manifest %s (%d object(s), %d bytes stored), manifest SHA-256 %s, "
            "version %s",
            manifest.backup_id,
            manifest.database,
            url,
            len(manifest.objects),
            manifest.compressed_bytes,
            result.sha256,
            result.version_id or "none (unversioned bucket)",
        )
        return WrittenManifest(
            key=key, sha256=result.sha256, version_id=real_version(result.version_id), size=len(data)
        )

    # Reading.

    def read_manifest(
        self,
        database: str,
        backup_id: str,
        *,
        version_id: str | None = None,
        sha256: str | None = None,
    ) -> Manifest:
        """Read and validate a backup's manifest (at most :data:`MAX_MANIFEST_BYTES`).

        :param version_id: read this S3 version (default: the current one).
        :param sha256: the SHA-256 its bytes must have (what the ledger recorded, or what an earlier
            step of the same run checked), else it is refused.
        :raises BackupNotFound: there is no manifest (the backup is incomplete or does not exist).
        :raises ManifestError: the manifest is too large, invalid, has other bytes than ``sha256``, or
            belongs to another backup.
        """
        stored = self.read_manifest_bytes(database, backup_id, version_id=version_id)
        url = f"s3://{self.bucket}/{stored.key}"
        if sha256 is not None and stored.sha256 != sha256:
            raise ManifestError(
                f"{url} (version {stored.version_id}): SHA-256 {stored.sha256}, expected {sha256}: "
                "not the manifest that was checked"
            )
        manifest = Manifest.from_json(stored.data, source=url)
        if (manifest.estate, manifest.database, manifest.backup_id) != (self.estate, database, backup_id):
            raise ManifestError(
                f"{url}: the manifest is for {manifest.estate}/{manifest.database}/{manifest.backup_id}"
            )
        return manifest

    def read_manifest_bytes(
        self, database: str, backup_id: str, *, version_id: str | None = None
    ) -> ManifestBytes:
        """Read a backup's manifest as stored, without parsing it: exact bytes, SHA-256 and version.

        The size S3 reports is checked before the body is read, and the read stops one byte past
        :data:`MAX_MANIFEST_BYTES` whatever it reported, so a huge object is refused without being read.

        :param version_id: read this S3 version (default: the current one).
        :raises BackupNotFound: there is no manifest (or no such version of it).
        :raises ManifestError: the manifest is larger than a manifest may be.
        """
        key = self.manifest_key(database, backup_id)
        url = f"s3://{self.bucket}/{key}"
        data, read_version = self._get_capped(key, MAX_MANIFEST_BYTES, version_id=version_id, what="manifest")
        if data is None:
            where = f" version {version_id}" if version_id else ""
            raise BackupNotFound(
                f"backup {backup_id} of {self.estate}/{database} has no manifest at {url}{where}: it is "
                "incomplete or does not exist"
            )
        return ManifestBytes(
            key, data, hashlib.sha256(data).hexdigest(), real_version(read_version or version_id)
        )

    def current_version_id(self, key: str) -> str | None:
        """The version id of ``key``'s current version (None: no such key, or an unversioned bucket)."""
        head = self._head(key)
        return None if head is None else real_version(head.get("VersionId"))

    def head_object_version(self, key: str, version_id: str | None) -> dict[str, Any] | None:
        """head_object of one version of ``key`` (the current one when ``version_id`` is None);
        None when it does not exist."""
        if not version_id or version_id == "null":
            return self._head(key)
        try:
            return self._head_version(key, version_id)
        except Exception as error:
            if aws_error_code(error) in {"NoSuchKey", "NoSuchVersion", "404", "NotFound", "400"}:
                return None
            raise

    def list_backups(self, database: str) -> list[StoredBackup]:
        """List a database's backups, newest first, each marked complete or incomplete with the reason.

        Keys under the database's folder that do not follow the layout are logged and skipped.
        """
        folder = layout.database_prefix(self.prefix, self.estate, database)
        sizes: dict[str, dict[str, int]] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
            for item in page.get("Contents", []):
                try:
                    parts = layout.parse_key(self.prefix, item["Key"])
                except layout.LayoutError as error:
                    log.warning("skipping a key outside the backup layout: %s", error)
                    continue
                sizes.setdefault(parts.backup_id, {})[parts.name] = int(item["Size"])
        backups = [self._stored_backup(database, backup_id, objects) for backup_id, objects in sizes.items()]
        return sorted(backups, key=lambda backup: (backup.time, backup.backup_id), reverse=True)

    def describe_backup(self, database: str, backup_id: str) -> StoredBackup:
        """Judge one backup as :meth:`list_backups` does, listing only its own folder.

        :raises BackupNotFound: nothing is stored under the backup's folder.
        """
        folder = self.backup_prefix(database, backup_id)
        objects: dict[str, int] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
            for item in page.get("Contents", []):
                try:
                    parts = layout.parse_key(self.prefix, item["Key"])
                except layout.LayoutError as error:
                    log.warning("skipping a key outside the backup layout: %s", error)
                    continue
                objects[parts.name] = int(item["Size"])
        if not objects:
            raise BackupNotFound(
                f"backup {backup_id} of {self.estate}/{database}: nothing is stored under "
                f"s3://{self.bucket}/{folder}"
            )
        return self._stored_backup(database, backup_id, objects)

    @staticmethod
    def as_retention_records(backups: Iterable[StoredBackup]) -> list[BackupRecord]:
        """Return the retention planner's records of listed backups (list once, plan, then delete by id)."""
        return as_retention_records(backups)

    def verify_objects(self, manifest: Manifest) -> Verification:
        """Re-read every object of a backup and compare its size and SHA-256 with the manifest.

        Each object is read at the version the manifest records (the current one in manifests without
        versions). Stops at the first object that is missing or differs and names it: a restore drill
        reports that, and a restore must not start from it.
        """
        checked = total = 0
        for item in manifest.objects:
            expected = self.object_key(manifest.database, manifest.backup_id, item.name)
            if item.key != expected:
                return Verification(
                    ok=False,
                    reason=f"object {item.name!r}: key {item.key!r} is not where this repository keeps it",
                    object_name=item.name,
                    objects_checked=checked,
                    bytes_checked=total,
                )
            try:
                response = self.client.get_object(
                    Bucket=self.bucket, Key=item.key, **version_args(item.version_id)
                )
            except Exception as error:
                if aws_error_code(error) in {"NoSuchKey", "NoSuchVersion", "404"}:
                    version = f" version {item.version_id}" if item.version_id else ""
                    reason = f"object {item.name!r} is missing (s3://{self.bucket}/{item.key}{version})"
                else:
                    reason = f"object {item.name!r} could not be read: {first_line(error)}"
                return Verification(False, reason, item.name, checked, total)
            digest, size = hashlib.sha256(), 0
            body = response["Body"]
            try:
                for chunk in body.iter_chunks(_VERIFY_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
            except Exception as error:
                reason = f"object {item.name!r}: reading failed after {size} bytes: {first_line(error)}"
                return Verification(False, reason, item.name, checked, total + size)
            finally:
                body.close()
            total += size
            checked += 1
            if size != item.size:
                reason = f"object {item.name!r} is {size} bytes, the manifest says {item.size}"
                return Verification(False, reason, item.name, checked, total)
            if digest.hexdigest() != item.sha256:
                reason = (
                    f"object {item.name!r}: SHA-256 {digest.hexdigest()} differs from the manifest's "
                    f"{item.sha256}"
                )
                return Verification(False, reason, item.name, checked, total)
        reason = f"all {checked} object(s) of backup {manifest.backup_id} match the manifest ({total} bytes)"
        return Verification(True, reason, None, checked, total)

    # Deleting.

    def delete_backup(
        self, database: str, backup_id: str, *, dry_run: bool, bypass_governance: bool = False
    ) -> list[str]:
        """Delete every version of every key of a backup, manifest first; refuse if any is locked.

        The plan (keys, versions, delete markers) is logged before anything is deleted. The manifest's
        versions go first so that a delete interrupted half-way leaves an incomplete backup, which the
        next retention run cleans up, never one that looks complete with objects missing.

        :param dry_run: log the plan and return the keys, delete nothing.
        :param bypass_governance: delete versions under GOVERNANCE retention (needs the
            ``s3:BypassGovernanceRetention`` permission). COMPLIANCE retention can never be bypassed.
        :return: the keys deleted (or, in a dry run, that would be), manifest first.
        :raises BackupLocked: a version is under retention that may not be bypassed; nothing is deleted.
        :raises BackupDeleteFailed: a delete failed part-way.
        """
        folder = self.backup_prefix(database, backup_id)
        manifest_key = self.manifest_key(database, backup_id)
        versions, markers = self._versions(folder)
        if not versions and not markers:
            log.info("backup %s of %s: nothing under %s, nothing to delete", backup_id, database, folder)
            return []

        now = datetime.now(UTC)
        locked: list[tuple[str, str, datetime]] = []
        for key, version_id in versions:
            try:
                lock = self._lock_of(self._head_version(key, version_id))
            except Exception as error:
                raise BackupDeleteFailed(
                    f"cannot delete backup {backup_id} of {self.estate}/{database}: reading the lock of "
                    f"s3://{self.bucket}/{key} version {version_id} failed ({first_line(error)}); "
                    "nothing was deleted"
                ) from error
            if lock is not None and lock[1] > now:
                locked.append((key, lock[0], lock[1]))
        if locked:
            compliance = [entry for entry in locked if entry[1] == "COMPLIANCE"]
            if compliance or not bypass_governance:
                latest = max(until for _, _, until in locked)
                kind = "COMPLIANCE (cannot be bypassed)" if compliance else "GOVERNANCE"
                raise BackupLocked(
                    f"refusing to delete backup {backup_id} of {self.estate}/{database}: "
                    f"{len(locked)} object version(s) are under {kind} retention until {_iso(latest)}, "
                    f"first {locked[0][0]}",
                    locked=locked,
                )

        def order(entry: tuple[str, str]) -> tuple[bool, str]:
            return (entry[0] != manifest_key, entry[0])

        plan = sorted(versions + markers, key=order)
        keys = list(dict.fromkeys(key for key, _ in plan))
        log.info(
            "%s backup %s of %s: %d key(s), %d version(s), %d delete marker(s) under s3://%s/%s%s: %s",
            "dry run, would delete" if dry_run else "deleting",
            backup_id,
            database,
            len(keys),
            len(versions),
            len(markers),
            self.bucket,
            folder,
            f" (bypassing GOVERNANCE retention of {len(locked)} version(s))" if locked else "",
            ", ".join(keys),
        )
        if dry_run:
            return keys
        extra: dict[str, Any] = {"BypassGovernanceRetention": True} if locked else {}
        done = 0
        for key, version_id in plan:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id, **extra)
            except Exception as error:
                raise BackupDeleteFailed(
                    f"deleting backup {backup_id} of {self.estate}/{database} stopped after {done} of "
                    f"{len(plan)} version(s): s3://{self.bucket}/{key} version {version_id}: "
                    f"{first_line(error)}. The manifest went first: the backup now lists as incomplete"
                ) from error
            done += 1
        log.info("deleted backup %s of %s: %d version(s) of %d key(s)", backup_id, database, done, len(keys))
        return keys

    # Facts.

    def _stored_backup(self, database: str, backup_id: str, objects: dict[str, int]) -> StoredBackup:
        """Judge one listed backup: complete only if the manifest and the stored objects agree."""
        problems: list[str] = []
        manifest: Manifest | None = None
        manifest_key = self.manifest_key(database, backup_id)
        if layout.MANIFEST_NAME not in objects:
            problems.append("no manifest: the backup failed, is still running, or was partly deleted")
        elif objects[layout.MANIFEST_NAME] > MAX_MANIFEST_BYTES:
            problems.append(
                f"manifest unreadable: it is {objects[layout.MANIFEST_NAME]} bytes, more than the "
                f"{MAX_MANIFEST_BYTES} a manifest may hold (not read)"
            )
        else:
            try:
                manifest = self._read_manifest_key(manifest_key)
            except ManifestError as error:
                problems.append(f"manifest unreadable: {error}")
            if manifest is None and not problems:
                problems.append("the manifest disappeared while listing")
        if manifest is not None:
            if (manifest.estate, manifest.database, manifest.backup_id) != (self.estate, database, backup_id):
                problems.append(
                    f"the manifest is for {manifest.estate}/{manifest.database}/{manifest.backup_id}"
                )
            stored = {name: size for name, size in objects.items() if name != layout.MANIFEST_NAME}
            for item in manifest.objects:
                if item.key != (expected := self.object_key(database, backup_id, item.name)):
                    problems.append(f"object {item.name!r} has key {item.key!r}, expected {expected!r}")
                if item.name not in stored:
                    problems.append(f"object {item.name!r} is missing")
                elif stored[item.name] != item.size:
                    problems.append(
                        f"object {item.name!r} is {stored[item.name]} bytes, manifest says {item.size}"
                    )
            listed = {item.name for item in manifest.objects}
            if extra := sorted(set(stored) - listed):
                problems.append(f"objects not in the manifest: {', '.join(extra)}")
        keys = [self.object_key(database, backup_id, name) for name in objects]
        keys.sort(key=lambda key: (key != manifest_key, key))
        lock_dates = [lock[1] for key in keys if (lock := self._lock_of(self._head(key) or {})) is not None]
        # A manifest of another backup is a problem of its own (above); its time says nothing of this one.
        own = manifest if manifest is not None and manifest.backup_id == backup_id else None
        time_problem = backup_time_problem(backup_id, own, now=datetime.now(UTC))
        if time_problem:
            log.warning("backup %s of %s is not trusted as dated: %s", backup_id, database, time_problem)
            problems.append(time_problem)
        # Order comes from the id's time, which the key carries. The manifest's start time, exact, only
        # breaks ties of backups started in the same second (a retry, a manual run), and only once it
        # was checked to be the id's time: a manifest cannot date its backup where it likes.
        started = (
            manifest.started_at if manifest is not None and not problems else layout.backup_time(backup_id)
        )
        return StoredBackup(
            backup_id=backup_id,
            time=started,
            complete=not problems,
            manifest=manifest,
            keys=keys,
            locked_until=max(lock_dates, default=None),
            problems=problems,
            size=sum(objects.values()),
            time_problem=time_problem,
        )

    def _read_manifest_key(self, key: str) -> Manifest | None:
        data, _ = self._get_capped(key, MAX_MANIFEST_BYTES, what="manifest")
        if data is None:
            return None
        return Manifest.from_json(data, source=f"s3://{self.bucket}/{key}")

    def _get_capped(
        self, key: str, limit: int, *, version_id: str | None = None, what: str
    ) -> tuple[bytes | None, str | None]:
        """GET a small object (a version of it) whole, refusing one over ``limit`` bytes without
        reading it; return its bytes and version id, or ``(None, None)`` when it does not exist."""
        url = f"s3://{self.bucket}/{key}"
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key, **version_args(version_id))
        except Exception as error:
            if aws_error_code(error) in {"NoSuchKey", "NoSuchVersion", "404"}:
                return None, None
            raise
        body = response["Body"]
        try:
            length = response.get("ContentLength")
            if length is not None and int(length) > limit:
                raise ManifestError(
                    f"{url}: the {what} is {length} bytes, more than the {limit} a {what} may hold: "
                    "refused without reading it"
                )
            data = bytes(body.read(limit + 1))
        finally:
            body.close()
        if len(data) > limit:
            raise ManifestError(f"{url}: the {what} is more than the {limit} bytes a {what} may hold")
        return data, response.get("VersionId")

    def _versions(self, folder: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Return ``(key, version_id)`` of the object versions and of the delete markers under a folder."""
        versions: list[tuple[str, str]] = []
        markers: list[tuple[str, str]] = []
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
            versions += [(item["Key"], item["VersionId"]) for item in page.get("Versions", [])]
            markers += [(item["Key"], item["VersionId"]) for item in page.get("DeleteMarkers", [])]
        return versions, markers

    def _head(self, key: str) -> dict[str, Any] | None:
        """Return head_object's answer, or None when the key does not exist."""
        try:
            response: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            if aws_error_code(error) in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise
        return response

    def _head_or_fail(
        self,
        key: str,
        *,
        step: str,
        missing: str = "the object does not exist",
        version_id: str | None = None,
    ) -> dict[str, Any]:
        """Return head_object's answer (of one version); raise BackupFailed when it is missing or S3 fails."""
        url = f"s3://{self.bucket}/{key}"
        try:
            head = self.head_object_version(key, version_id)
        except Exception as error:
            raise BackupFailed(step=step, key=url, reason=first_line(error)) from error
        if head is None:
            raise BackupFailed(step=step, key=url, reason=missing)
        return head

    def _head_version(self, key: str, version_id: str) -> dict[str, Any]:
        # moto answers 400 to VersionId=null (an unversioned bucket's only version); S3 accepts it.
        if version_id == "null":
            return self._head(key) or {}
        response: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        return response

    @staticmethod
    def _lock_of(head: Mapping[str, Any]) -> tuple[str, datetime] | None:
        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        if not mode or until is None:
            return None
        return str(mode), until.astimezone(UTC)


def real_version(version_id: str | None) -> str | None:
    """A version id worth recording: None for none, and for "null" (what an unversioned bucket, or
    moto's multipart upload into one, calls its only version)."""
    return version_id if version_id and version_id != "null" else None


def version_args(version_id: str | None) -> dict[str, str]:
    """The ``VersionId`` argument of a GET or HEAD of one version; none for the current version.

    "null" (the only version in an unversioned bucket) is left out too: moto answers 400 to it, and
    there the current version is the only one.
    """
    return {"VersionId": version_id} if version_id and version_id != "null" else {}


def backup_time_problem(backup_id: str, manifest: Manifest | None, *, now: datetime) -> str | None:
    """Why a listed backup's time cannot be believed, or None.

    The id's time lies more than :data:`CLOCK_SKEW` in the future (a misdated or planted backup, which
    would otherwise be "latest" for every drill and restore until then), or the manifest's
    ``started_at`` is not the id's time (the writer makes the id from its start time, to the second).
    """
    try:
        id_time = layout.backup_time(backup_id)
    except layout.LayoutError as error:
        return str(error)
    if id_time > now + CLOCK_SKEW:
        return (
            f"its id's time {_iso(id_time)} lies in the future (now {_iso(now.replace(microsecond=0))}): "
            "misdated or planted, never taken as the latest"
        )
    if manifest is not None and manifest.started_at.replace(microsecond=0) != id_time:
        return (
            f"the manifest's started_at {_iso(manifest.started_at)} is not its id's time {_iso(id_time)}: "
            "misdated or planted, never taken as the latest"
        )
    return None


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


__all__ = [
    "CLOCK_SKEW",
    "COMPRESSED_SUFFIX",
    "DEFAULT_CLIENT_CONFIG",
    "DEFAULT_DUMP_TIMEOUT",
    "BackupDeleteFailed",
    "BackupLocked",
    "BackupNotFound",
    "BackupRepository",
    "ManifestBytes",
    "StoredBackup",
    "Verification",
    "WrittenManifest",
    "as_retention_records",
    "backup_time_problem",
    "bounded_s3_client",
    "real_version",
    "version_args",
]
