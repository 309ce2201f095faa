"""Choose a backup, prove that its manifest is the one the backup wrote, and fetch it byte-checked.

Nothing is restored from a backup that has not been proven whole:

- :func:`prove_backup` checks the manifest against the ledger. Whoever can write to the bucket can
  write a dump *and* a manifest that agree with each other, so the manifest alone proves nothing. The
  backup's ``backup.taken`` record holds the manifest's SHA-256 and S3 version id. The manifest is read
  at that version and its bytes must have that hash, else the backup is refused, naming both hashes.
  Objects are then read at the versions the manifest records, so a new version written over a dump
  later is never what is restored. A backup the ledger has no record of (imported, or taken by a
  machine with another ledger) is refused unless the caller trusts the repository explicitly; that
  choice is recorded (:func:`record_trust`).
- :func:`verify_manifest_matches` refuses a manifest that is not the backup's own (swapped in from
  another backup, or listing objects that are missing or of another size).
- :func:`fetch_backup` recomputes each object's size and SHA-256 *while* downloading it (one read, no
  second pass), decompresses it within the manifest's ``raw_bytes`` (a zstd bomb stops there, before the
  disk fills), and only returns once every object matched.

Each raises :class:`BackupVerificationError` naming the backup and the object, before any database is
touched. The download is decompressed on the fly into a local file because pg_restore's parallel mode
needs a seekable file, not a stream. Importing this module imports neither boto3 nor zstandard.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cloudops.errors import CloudOpsError, RestoreError, aws_error_code, first_line
from cloudops.repository.manifest import Manifest, ManifestError
from cloudops.repository.s3 import COMPRESSED_SUFFIX, BackupNotFound, version_args
from cloudops.restore.record import ObjectChecksum

if TYPE_CHECKING:
    from cloudops.evidence.ledger import Ledger
    from cloudops.repository.manifest import ManifestObject
    from cloudops.repository.s3 import BackupRepository, StoredBackup

log = logging.getLogger(__name__)

LATEST = "latest"
DEFAULT_FETCH_TIMEOUT = timedelta(hours=6)
_CHUNK = 4 * 1024 * 1024
# Room left on the local disk beyond the decompressed dump: the file system must not fill up.
_DISK_MARGIN = 256 * 1024 * 1024
# Compressed bytes given to zstd per call. A zstd block of 4 bytes can stand for 128 KiB, so one call's
# output is at most about 32 MiB: memory stays bounded whatever the object holds. (Feeding 1 KiB at a
# time measured as fast as 4 MiB here: the time goes into decompressing, not into the calls.)
_DECOMPRESS_SLICE = 1024
TRUST_HINT = (
    "to restore it as the repository holds it, say so explicitly (cloudops restore --trust-repository, "
    "the restore_request form's trust_repository, or the drill policy's trust_repository in the "
    "catalog); that choice is recorded in the ledger"
)


class BackupVerificationError(CloudOpsError):
    """A backup does not match its manifest: an object is missing, of another size or another SHA-256,
    or the manifest is not this backup's. Nothing was restored.

    :ivar object_name: the object at fault, when one is.
    :ivar checksums: the objects checked so far, the failing one last (``ok`` False).
    """

    def __init__(
        self, message: str, *, object_name: str | None = None, checksums: Iterable[ObjectChecksum] = ()
    ) -> None:
        super().__init__(message)
        self.object_name = object_name
        self.checksums = list(checksums)


def choose_backup(
    store: BackupRepository,
    database: str,
    backup_id: str = LATEST,
    *,
    skipped: list[StoredBackup] | None = None,
) -> StoredBackup:
    """Return the backup to restore: ``backup_id``, or the newest one that has a manifest.

    "Latest" goes by the backup ids' times. It skips backups without a manifest (still running, or
    failed before writing it: never restorable) and backups whose time cannot be believed (an id in the
    future, a manifest whose ``started_at`` is not its id's time: see
    :func:`cloudops.repository.s3.backup_time_problem`), each with its reason logged: a backup planted
    with a date in the future must not become "latest" for every drill and restore until then. It does
    not skip a newest backup whose manifest exists and disagrees with its objects: that backup is
    damaged, and a drill must fail on it rather than quietly test an older one.

    :param skipped: when given, the backups skipped for their time are appended to it.
    :raises BackupNotFound: no such backup, or no backup of ``database`` has a manifest.
    :raises BackupVerificationError: the chosen backup's manifest cannot be read.
    """
    if backup_id == LATEST:
        chosen: StoredBackup | None = None
        for stored in store.list_backups(database):
            if stored.time_problem:
                log.warning("skipping backup %s of %s: %s", stored.backup_id, database, stored.time_problem)
                if skipped is not None:
                    skipped.append(stored)
                continue
            if store.manifest_key(database, stored.backup_id) in stored.keys:
                chosen = stored
                break
            log.info("skipping backup %s of %s: %s", stored.backup_id, database, "; ".join(stored.problems))
        if chosen is None:
            raise BackupNotFound(
                f"no backup of {store.estate}/{database} has a manifest in s3://{store.bucket}/{store.prefix}"
            )
    else:
        chosen = store.describe_backup(database, backup_id)
        if chosen.time_problem:
            raise BackupVerificationError(
                f"backup {chosen.backup_id} of {store.estate}/{database} cannot be restored: "
                f"{chosen.time_problem}"
            )
    if chosen.manifest is None:
        raise BackupVerificationError(
            f"backup {chosen.backup_id} of {store.estate}/{database} cannot be restored: "
            + "; ".join(chosen.problems)
        )
    log.info(
        "chose backup %s of %s (%s, taken %s)",
        chosen.backup_id,
        database,
        chosen.manifest.format,
        chosen.manifest.started_at.isoformat(),
    )
    return chosen


def verify_manifest_matches(
    store: BackupRepository, database: str, backup_id: str, manifest: Manifest
) -> StoredBackup:
    """Refuse a manifest that is not the one of backup ``backup_id`` of ``database``, or whose objects
    are not all stored with its sizes.

    The backup's folder is listed and judged as the listing does (:meth:`BackupRepository.describe_backup`:
    the stored manifest must name this estate, database and backup and list exactly the stored objects,
    with their keys and sizes); the manifest given must also be that stored one. Sizes are checked
    here; contents (SHA-256) by :func:`fetch_backup` as it downloads.

    :return: the backup as listed.
    :raises BackupVerificationError: naming every problem found, and the first object at fault.
    """
    where = f"backup {backup_id} of {store.estate}/{database}"
    try:
        stored = store.describe_backup(database, backup_id)
    except BackupNotFound as error:
        raise BackupVerificationError(f"{where}: {error}") from None
    problems = list(stored.problems)
    if stored.manifest != manifest:
        given = (manifest.estate, manifest.database, manifest.backup_id)
        if given != (store.estate, database, backup_id):
            problems.insert(0, f"the manifest given is for {'/'.join(given)}")
        else:
            problems.insert(
                0,
                f"the manifest given is not the one stored at "
                f"s3://{store.bucket}/{store.manifest_key(database, backup_id)}",
            )
    if problems:
        names = [item.name for item in manifest.objects]
        if stored.manifest is not None:
            names += [item.name for item in stored.manifest.objects]
        at_fault = next((name for name in names if any(f"'{name}'" in p for p in problems)), None)
        raise BackupVerificationError(
            f"{where} does not match its manifest, nothing was restored: {'; '.join(problems)}",
            object_name=at_fault,
        )
    return stored


@dataclass(frozen=True)
class ProvenBackup:
    """A backup whose manifest was checked against the ledger (or, on request, trusted as stored).

    :param stored: the backup as listed (the repository's current state).
    :param manifest: the manifest as the backup wrote it (read at the recorded version).
    :param manifest_sha256: SHA-256 of the manifest's bytes as read and checked.
    :param manifest_version_id: the S3 version read (None: unversioned, or not recorded).
    :param trusted_repository: no ledger record vouched for it; the caller trusted the repository.
    :param ledger_seq: the ``seq`` of the ``backup.taken`` record checked against (None when trusted).
    :param changed: what was written over the backup after it was taken (current versions that are not
        the recorded ones); empty when nothing was.
    """

    stored: StoredBackup
    manifest: Manifest
    manifest_sha256: str
    manifest_version_id: str | None
    trusted_repository: bool = False
    ledger_seq: int | None = None
    changed: list[str] = field(default_factory=list)

    @property
    def backup_id(self) -> str:
        return self.manifest.backup_id

    def pin(self) -> dict[str, Any]:
        """What later steps of the same run need to read exactly this manifest (XCom-safe)."""
        return {
            "backup_id": self.backup_id,
            "manifest_sha256": self.manifest_sha256,
            "manifest_version_id": self.manifest_version_id,
            "trusted_repository": self.trusted_repository,
        }


def prove_backup(
    store: BackupRepository,
    database: str,
    backup_id: str = LATEST,
    *,
    trust_repository: bool = False,
    on_change: Literal["refuse", "read_recorded"] = "refuse",
    ledger: Ledger | None = None,
) -> ProvenBackup:
    """Choose a backup (:func:`choose_backup`) and prove its manifest is the one the backup wrote.

    With the ledger's ``backup.taken`` record of the backup: the manifest is read at the recorded S3
    version and its bytes must have the recorded SHA-256 (a record written before hashes were recorded:
    its objects' SHA-256 and sizes must be the recorded ones). The objects must exist at the versions
    the manifest records, with its sizes. Then the repository's current state is compared with what was
    recorded: a newer version of the manifest or of an object means someone wrote over the backup.
    ``on_change="refuse"`` (drills: the change must be looked into, not drilled around) refuses the
    backup then, naming both hashes; ``"read_recorded"`` (restores: the data is needed, and the recorded
    versions are intact) logs it and goes on with the recorded versions.

    Without a record, the backup is refused unless ``trust_repository``: then its current manifest is
    used as the repository holds it, and the caller records that choice (:func:`record_trust`).

    :param ledger: the ledger to look in (default: this process's local ledger).
    :raises BackupNotFound: no such backup, or none of ``database`` has a manifest.
    :raises BackupVerificationError: the manifest is not the one recorded, the backup has no record
        and the repository is not trusted, or something was written over it (``on_change="refuse"``).
    """
    from cloudops.evidence.facts import latest_fact
    from cloudops.evidence.recorder import ledger as local_ledger
    from cloudops.evidence.runs import BACKUP_TAKEN

    skipped: list[StoredBackup] = []
    try:
        chosen = choose_backup(store, database, backup_id, skipped=skipped)
    except BackupVerificationError as damaged:
        # A named backup whose current manifest was made unreadable or misdated: a restore can still read
        # the versions the ledger recorded (checked below); a drill, and a backup the ledger does not
        # know, are refused as before.
        if backup_id == LATEST or on_change != "read_recorded":
            raise
        match = {"estate": store.estate, "database": database, "backup_id": backup_id}
        if latest_fact(BACKUP_TAKEN, match, ledger=ledger) is None:
            raise
        log.warning("%s; the ledger recorded this backup: checking the versions it recorded", damaged)
        chosen = store.describe_backup(database, backup_id)
    chosen_id = chosen.backup_id
    where = f"backup {chosen_id} of {store.estate}/{database}"
    key = store.manifest_key(database, chosen_id)
    url = f"s3://{store.bucket}/{key}"

    def recorded(of: str) -> Any:
        match = {"estate": store.estate, "database": database, "backup_id": of}
        return latest_fact(BACKUP_TAKEN, match, ledger=ledger)

    # A backup this ledger recorded that now reads as misdated was altered, not planted: skipping it
    # would drill an older backup and hide that.
    for misdated in skipped:
        if (fact := recorded(misdated.backup_id)) is not None:
            raise BackupVerificationError(
                f"backup {misdated.backup_id} of {store.estate}/{database} was taken here (ledger record "
                f"seq {fact.seq}) but its manifest now reads as misdated ({misdated.time_problem}): it was "
                "changed after the backup wrote it; refusing to drill or restore around it, nothing was "
                "restored"
            )
    fact = recorded(chosen_id)
    ledger_dir = (ledger or local_ledger()).where
    if fact is None:
        if not trust_repository:
            raise BackupVerificationError(
                f"{where} has no backup.taken record in the ledger ({ledger_dir}): it was not taken by "
                "this deployment (an imported backup, or a machine with another ledger), so nothing "
                f"vouches for its manifest; refusing it, nothing was restored: {TRUST_HINT}"
            )
        stored_bytes = _read_manifest_bytes(store, database, chosen_id, None, where=where)
        manifest = _parse(store, database, chosen_id, stored_bytes.data, url, where=where)
        verify_manifest_matches(store, database, chosen_id, manifest)
        log.warning(
            "TRUSTING THE REPOSITORY: %s has no backup.taken record in the ledger (%s); its manifest %s "
            "(version %s, SHA-256 %s) is taken as the repository holds it, as asked",
            where,
            ledger_dir,
            url,
            stored_bytes.version_id,
            stored_bytes.sha256,
        )
        return ProvenBackup(chosen, manifest, stored_bytes.sha256, stored_bytes.version_id, True)

    data = fact.fields.get("data") or {}
    recorded_sha256 = data.get("manifest_sha256")
    recorded_version = data.get("manifest_version_id")
    stored_bytes = _read_manifest_bytes(store, database, chosen_id, recorded_version, where=where)
    read_at = f"{url} (version {stored_bytes.version_id or 'current'})"
    if recorded_sha256 and stored_bytes.sha256 != recorded_sha256:
        raise BackupVerificationError(
            f"{where}: its manifest {read_at} has SHA-256 {stored_bytes.sha256}, the ledger's backup.taken "
            f"record (seq {fact.seq}) says {recorded_sha256}: the manifest is not the one the backup wrote; "
            "refusing it, nothing was restored"
        )
    manifest = _parse(store, database, chosen_id, stored_bytes.data, url, where=where)
    if not recorded_sha256:
        _check_recorded_objects(manifest, data.get("objects") or [], where=where, seq=fact.seq)
    changed = _written_over(store, manifest, recorded_version, stored_bytes.sha256, database=database)
    if changed:
        message = f"{where} was written over after it was taken: {'; '.join(changed)}"
        if on_change == "refuse":
            raise BackupVerificationError(
                f"{message}. The versions the backup wrote are intact (restores read them); refusing to "
                "drill it so that the change is looked into, nothing was restored"
            )
        log.warning("%s; reading the versions the backup wrote, as the ledger recorded them", message)
        _check_versions_exist(store, manifest, where=where)
    else:
        verify_manifest_matches(store, database, chosen_id, manifest)
        _check_versions_exist(store, manifest, where=where)
    log.info(
        "manifest of %s matches the ledger's backup.taken record (seq %s): SHA-256 %s, version %s",
        where,
        fact.seq,
        stored_bytes.sha256,
        stored_bytes.version_id or "none recorded",
    )
    return ProvenBackup(
        chosen, manifest, stored_bytes.sha256, stored_bytes.version_id, False, fact.seq, changed
    )


def read_proven_manifest(store: BackupRepository, database: str, pin: Mapping[str, Any]) -> Manifest:
    """Read again, in a later step of the same run, exactly the manifest :func:`prove_backup` proved.

    :param pin: :meth:`ProvenBackup.pin` (e.g. the prepare step's XCom).
    :raises BackupVerificationError: the manifest read now has other bytes.
    """
    where = f"backup {pin['backup_id']} of {store.estate}/{database}"
    try:
        return store.read_manifest(
            database,
            pin["backup_id"],
            version_id=pin.get("manifest_version_id"),
            sha256=pin["manifest_sha256"],
        )
    except (ManifestError, BackupNotFound) as error:
        raise BackupVerificationError(f"{where}: {error}; nothing was restored") from None


def record_trust(proven: ProvenBackup, *, dag_id: str | None, run_id: str | None, by: str) -> None:
    """Record in the ledger that a backup without a ledger record was used on the caller's say-so.

    :param by: what trusted it, for the record (``restore_drill``, ``restore_request``, ``cloudops restore``).
    """
    from cloudops.evidence.recorder import record
    from cloudops.evidence.runs import REPOSITORY_TRUSTED

    if not proven.trusted_repository:
        return
    record(
        REPOSITORY_TRUSTED,
        dag_id=dag_id,
        run_id=run_id,
        key=f"{REPOSITORY_TRUSTED}|{dag_id}|{run_id}|{proven.backup_id}|{proven.manifest_sha256}",
        data={
            "estate": proven.manifest.estate,
            "database": proven.manifest.database,
            "backup_id": proven.backup_id,
            "manifest_sha256": proven.manifest_sha256,
            "manifest_version_id": proven.manifest_version_id,
            "trusted_repository": True,
            "by": by,
        },
    )


def _read_manifest_bytes(
    store: BackupRepository, database: str, backup_id: str, version_id: str | None, *, where: str
) -> Any:
    try:
        return store.read_manifest_bytes(database, backup_id, version_id=version_id)
    except (ManifestError, BackupNotFound) as error:
        raise BackupVerificationError(f"{where}: {error}; nothing was restored") from None


def _parse(
    store: BackupRepository, database: str, backup_id: str, data: bytes, url: str, *, where: str
) -> Manifest:
    try:
        manifest = Manifest.from_json(data, source=url)
    except ManifestError as error:
        raise BackupVerificationError(f"{where}: {error}; nothing was restored") from None
    found = (manifest.estate, manifest.database, manifest.backup_id)
    if found != (store.estate, database, backup_id):
        raise BackupVerificationError(
            f"{where}: the manifest at {url} is for {'/'.join(found)}; nothing was restored"
        )
    return manifest


def _check_recorded_objects(
    manifest: Manifest, objects: list[Mapping[str, Any]], *, where: str, seq: int
) -> None:
    """For a ledger record without the manifest's hash (written by an older cloudops): the manifest's
    objects must be the recorded ones, with the recorded SHA-256 and size."""
    by_key = {str(item.get("key")): item for item in objects}
    if {item.key for item in manifest.objects} != set(by_key):
        raise BackupVerificationError(
            f"{where}: its manifest lists {manifest.object_names()}, not the objects the ledger's "
            f"backup.taken record (seq {seq}) recorded; refusing it, nothing was restored"
        )
    for item in manifest.objects:
        entry = by_key[item.key]
        if (item.sha256, item.size) != (entry.get("sha256"), entry.get("size")):
            raise BackupVerificationError(
                f"{where}: object {item.name!r} has SHA-256 {item.sha256} ({item.size} bytes) in the "
                f"manifest, the ledger's backup.taken record (seq {seq}) says {entry.get('sha256')} "
                f"({entry.get('size')} bytes); refusing it, nothing was restored"
            )


def _written_over(
    store: BackupRepository,
    manifest: Manifest,
    recorded_version: str | None,
    recorded_sha256: str,
    *,
    database: str,
) -> list[str]:
    """What now stands in the repository in place of the versions the backup wrote."""
    changed: list[str] = []
    key = store.manifest_key(database, manifest.backup_id)
    if recorded_version and store.current_version_id(key) != recorded_version:
        try:
            current = store.read_manifest_bytes(database, manifest.backup_id)
            now = f"version {current.version_id}, SHA-256 {current.sha256}"
        except (ManifestError, BackupNotFound) as error:
            now = str(error)
        changed.append(
            f"its manifest's current version ({now}) is not the one the backup wrote (version "
            f"{recorded_version}, SHA-256 {recorded_sha256}, as the ledger recorded)"
        )
    for item in manifest.objects:
        if item.version_id and (current_id := store.current_version_id(item.key)) != item.version_id:
            changed.append(
                f"object {item.name!r}'s current version ({current_id}) is not the one the backup "
                f"wrote ({item.version_id}, SHA-256 {item.sha256})"
            )
    return changed


def _check_versions_exist(store: BackupRepository, manifest: Manifest, *, where: str) -> None:
    """Each object the manifest names at a version exists at that version, with the manifest's size."""
    for item in manifest.objects:
        if not item.version_id:
            continue
        head = store.head_object_version(item.key, item.version_id)
        if head is None:
            raise BackupVerificationError(
                f"{where}: object {item.name!r} version {item.version_id} is missing "
                f"(s3://{store.bucket}/{item.key}); nothing was restored",
                object_name=item.name,
            )
        if int(head.get("ContentLength", -1)) != item.size:
            raise BackupVerificationError(
                f"{where}: object {item.name!r} version {item.version_id} is {head.get('ContentLength')} "
                f"bytes, the manifest says {item.size}; nothing was restored",
                object_name=item.name,
            )


def local_name(item: ManifestObject) -> str:
    """The name of an object once decompressed (``orders.pgdump.zst`` → ``orders.pgdump``)."""
    return item.name.removesuffix(COMPRESSED_SUFFIX)


def fetch_backup(
    store: BackupRepository,
    manifest: Manifest,
    workdir: Path,
    *,
    timeout: timedelta = DEFAULT_FETCH_TIMEOUT,
) -> Path:
    """Download every object of a backup into ``workdir``, decompressed, checking each against the manifest.

    Each object is read once, at the S3 version the manifest records (the current one in manifests
    without versions): its bytes are counted and hashed (SHA-256) as they arrive and decompressed into
    ``workdir/<name without .zst>``. An object longer than the manifest says is stopped as soon as it
    passes that size, and decompression as soon as it would pass the manifest's ``raw_bytes`` (zstd gets
    small slices, so no single call can return more than about 32 MiB): a zstd bomb neither fills the
    disk nor the memory. When any object is missing, of another size or SHA-256, or does not decompress
    to a whole zstd frame of the manifest's ``raw_bytes``, every file written is removed and nothing is
    returned, so nothing can be restored from it.

    :param workdir: a local folder with room for the decompressed backup (checked first).
    :param timeout: the longest the whole download may take.
    :return: the local file when the backup has one object (every format written today), else ``workdir``.
    :raises BackupVerificationError: naming the object and what differs.
    :raises RestoreError: the object could not be read (S3 failed), time ran out, or the disk lacks room.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    where = f"backup {manifest.backup_id} of {manifest.estate}/{manifest.database}"
    if manifest.estate != store.estate:
        raise BackupVerificationError(
            f"{where}: the manifest is for estate {manifest.estate!r}, this repository's is {store.estate!r}"
        )
    if manifest.compression.algorithm != "zstd":
        raise RestoreError(f"{where}: compression {manifest.compression.algorithm!r} is not supported")
    free = shutil.disk_usage(workdir).free
    if manifest.raw_bytes + _DISK_MARGIN > free:
        raise RestoreError(
            f"{where}: {workdir} has {free} bytes free, the backup needs {manifest.raw_bytes} "
            f"(plus {_DISK_MARGIN} to spare): use a work folder on a larger disk"
        )
    deadline = time.monotonic() + timeout.total_seconds()
    checksums: list[ObjectChecksum] = []
    written: list[Path] = []
    try:
        for item in manifest.objects:
            expected_key = store.object_key(manifest.database, manifest.backup_id, item.name)
            if item.key != expected_key:
                checksums.append(ObjectChecksum(object=item.name, sha256=item.sha256, ok=False))
                raise BackupVerificationError(
                    f"{where}: object {item.name!r} has key {item.key!r}, expected {expected_key!r}",
                    object_name=item.name,
                    checksums=checksums,
                )
            target = workdir / local_name(item)
            written.append(target)
            _fetch_object(store, item, target, where=where, deadline=deadline, checksums=checksums)
            checksums.append(ObjectChecksum(object=item.name, sha256=item.sha256, ok=True))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written[0] if len(written) == 1 else workdir


def _fetch_object(
    store: BackupRepository,
    item: ManifestObject,
    target: Path,
    *,
    where: str,
    deadline: float,
    checksums: list[ObjectChecksum],
) -> None:
    """Stream one object into ``target``, decompressing; raise naming the object when it differs."""
    import zstandard

    url = f"s3://{store.bucket}/{item.key}"

    def mismatch(reason: str, observed_sha256: str | None = None) -> BackupVerificationError:
        checksums.append(ObjectChecksum(object=item.name, sha256=observed_sha256 or item.sha256, ok=False))
        return BackupVerificationError(
            f"{where}: object {item.name!r} ({url}) {reason}; nothing was restored",
            object_name=item.name,
            checksums=checksums,
        )

    started = time.monotonic()
    try:
        response = store.client.get_object(Bucket=store.bucket, Key=item.key, **version_args(item.version_id))
    except Exception as error:
        if aws_error_code(error) in {"NoSuchKey", "NoSuchVersion", "404", "NotFound"}:
            at = f" at version {item.version_id}" if item.version_id else ""
            raise mismatch(f"is missing{at}") from None
        raise RestoreError(
            f"{where}: object {item.name!r} could not be read from {url}: {first_line(error)}"
        ) from error
    body = response["Body"]
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    digest = hashlib.sha256()
    size = raw = 0
    corrupt: str | None = None
    after_frame = False
    try:
        with target.open("wb") as out:
            for chunk in body.iter_chunks(_CHUNK):
                size += len(chunk)
                if size > item.size:
                    raise mismatch(f"is longer than the {item.size} bytes the manifest says (read {size})")
                digest.update(chunk)
                view = memoryview(chunk)
                for offset in range(0, len(view), _DECOMPRESS_SLICE):
                    if corrupt is not None or after_frame:
                        break
                    if decompressor.eof:
                        after_frame = True  # bytes after the end of the frame
                        break
                    try:
                        data = decompressor.decompress(view[offset : offset + _DECOMPRESS_SLICE])
                    except zstandard.ZstdError as error:
                        # Keep hashing: the SHA-256 says whether S3 or the backup is at fault.
                        corrupt = str(error)
                        break
                    if raw + len(data) > item.raw_bytes:
                        # Stop before writing past what the manifest promised: a zstd bomb (or a wrong
                        # manifest) never fills the disk, and is not worth downloading further.
                        raise mismatch(
                            f"decompresses to more than the {item.raw_bytes} bytes the manifest says "
                            f"(stopped at {raw + len(data)} bytes from {size} compressed): a "
                            "decompression bomb or a wrong manifest, not written further",
                            None,
                        )
                    raw += len(data)
                    out.write(data)
                if time.monotonic() > deadline:
                    raise RestoreError(
                        f"{where}: downloading {url} did not finish in time (read {size} bytes)"
                    )
    except (BackupVerificationError, RestoreError):
        raise
    except Exception as error:
        raise RestoreError(
            f"{where}: reading object {item.name!r} from {url} failed after {size} bytes: {first_line(error)}"
        ) from error
    finally:
        with contextlib.suppress(Exception):
            body.close()
    sha256 = digest.hexdigest()
    if size != item.size:
        raise mismatch(f"is {size} bytes, the manifest says {item.size} (truncated)", sha256)
    if sha256 != item.sha256:
        also = f"; it does not decompress either ({corrupt})" if corrupt else ""
        raise mismatch(f"has SHA-256 {sha256}, the manifest says {item.sha256}{also}", sha256)
    if corrupt is not None:
        raise mismatch(
            f"matches its manifest but is not valid zstd ({corrupt}): it was stored corrupt", sha256
        )
    if not decompressor.eof:
        raise mismatch(
            "matches its manifest but its zstd frame is incomplete: it was stored cut short", sha256
        )
    if after_frame or decompressor.unused_data:
        raise mismatch("matches its manifest but holds data after its zstd frame", sha256)
    if raw != item.raw_bytes:
        raise mismatch(f"decompresses to {raw} bytes, the manifest says {item.raw_bytes}", sha256)
    seconds = time.monotonic() - started
    log.info(
        "verified %s: %d bytes, SHA-256 %s as in the manifest; %d bytes decompressed to %s "
        "in %.1f s (%.1f MiB/s)",
        url,
        size,
        sha256,
        raw,
        target,
        seconds,
        size / 1048576 / seconds if seconds else 0.0,
    )


__all__ = [
    "DEFAULT_FETCH_TIMEOUT",
    "LATEST",
    "TRUST_HINT",
    "BackupVerificationError",
    "ProvenBackup",
    "choose_backup",
    "fetch_backup",
    "local_name",
    "prove_backup",
    "read_proven_manifest",
    "record_trust",
    "verify_manifest_matches",
]
