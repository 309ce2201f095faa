"""Choose a backup, prove that its manifest belongs to it, and fetch it to local disk byte-checked.

Nothing is restored from a backup that has not been proven whole: :func:`verify_manifest_matches` refuses
a manifest that is not the backup's own (swapped in from another backup, or listing objects that are
missing or of another size), and :func:`fetch_backup` recomputes each object's size and SHA-256 *while*
downloading it (one read, no second pass) and only returns once every object matched. Either raises
:class:`BackupVerificationError` naming the object, before any database is touched.

The download is decompressed on the fly into a local file because pg_restore's parallel mode needs a
seekable file, not a stream. Importing this module imports neither boto3 nor zstandard.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cloudops.errors import CloudOpsError, RestoreError, aws_error_code, first_line
from cloudops.repository.s3 import COMPRESSED_SUFFIX, BackupNotFound
from cloudops.restore.record import ObjectChecksum

if TYPE_CHECKING:
    from cloudops.repository.manifest import Manifest, ManifestObject
    from cloudops.repository.s3 import BackupRepository, StoredBackup

log = logging.getLogger(__name__)

LATEST = "latest"
DEFAULT_FETCH_TIMEOUT = timedelta(hours=6)
_CHUNK = 4 * 1024 * 1024
# Room left on the local disk beyond the decompressed dump: the file system must not fill up.
_DISK_MARGIN = 256 * 1024 * 1024


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


def choose_backup(store: BackupRepository, database: str, backup_id: str = LATEST) -> StoredBackup:
    """Return the backup to restore: ``backup_id``, or the newest one that has a manifest.

    "Latest" skips backups without a manifest (still running, or failed before writing it: never
    restorable) but not a newest backup whose manifest exists and disagrees with its objects: that
    backup is damaged, and a drill must fail on it rather than quietly test an older one.

    :raises BackupNotFound: no such backup, or no backup of ``database`` has a manifest.
    :raises BackupVerificationError: the chosen backup's manifest cannot be read.
    """
    if backup_id == LATEST:
        chosen: StoredBackup | None = None
        for stored in store.list_backups(database):
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

    Each object is read once: its bytes are counted and hashed (SHA-256) as they arrive and decompressed
    into ``workdir/<name without .zst>``. An object longer than the manifest says is stopped as soon as
    it passes that size. When any object is missing, of another size or SHA-256, or does not decompress
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
        response = store.client.get_object(Bucket=store.bucket, Key=item.key)
    except Exception as error:
        if aws_error_code(error) in {"NoSuchKey", "404", "NotFound"}:
            raise mismatch("is missing") from None
        raise RestoreError(
            f"{where}: object {item.name!r} could not be read from {url}: {first_line(error)}"
        ) from error
    body = response["Body"]
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    digest = hashlib.sha256()
    size = raw = 0
    corrupt: str | None = None
    try:
        with target.open("wb") as out:
            for chunk in body.iter_chunks(_CHUNK):
                size += len(chunk)
                if size > item.size:
                    raise mismatch(f"is longer than the {item.size} bytes the manifest says (read {size})")
                digest.update(chunk)
                if corrupt is None:
                    try:
                        data = decompressor.decompress(chunk)
                    except zstandard.ZstdError as error:
                        corrupt = str(
                            error
                        )  # keep hashing: the SHA-256 says whether S3 or the backup is at fault
                    else:
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
    if decompressor.unused_data:
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
    "BackupVerificationError",
    "choose_backup",
    "fetch_backup",
    "local_name",
    "verify_manifest_matches",
]
