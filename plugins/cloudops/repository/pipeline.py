"""Stream a dump command's output through zstd into an S3 object, never holding the dump on disk.

The dump's stdout is read in chunks, compressed with zstd, hashed (SHA-256 of the stored bytes) and sent
as S3 multipart parts while the dump runs. One part uploads in a background thread while the next one
fills, so memory stays near two part sizes whatever the size of the database, and compression overlaps
the network. A failed dump never becomes an object: the dump's exit status is checked before the
multipart upload is completed, and any failure aborts the upload and raises :class:`BackupFailed`
naming the step, the key and the first lines of the dump's stderr. The command's environment (where
producers put passwords) is never logged or put into an error.

Every wait is bounded: the whole stream by ``timeout`` (the dump is killed when it passes), each S3 call
by the client's connect/read timeouts and retry count (see ``BackupRepository`` for the defaults).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from cloudops.engines.client_tools import dies_with_parent
from cloudops.errors import CloudOpsError, first_line

if TYPE_CHECKING:
    from cloudops.catalog.models import Encryption
    from cloudops.engines import DumpCommand

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MiB
# S3's limits: every part but the last at least 5 MiB, at most 5 GiB, at most 10,000 parts.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
# The part size doubles every this many parts, so a dump far larger than 10,000 parts of the first
# size still fits: 16 MiB parts reach ~970 GiB of compressed dump (and then cost ~2 x 256 MiB of memory).
PARTS_PER_SIZE_STEP = 2_000
CHECKSUM_ALGORITHM = "CRC32"

_READ_SIZE = 1 * MiB
_PIPE_SIZE = 1 * MiB
_STDERR_KEEP = 64 * 1024
_STDERR_LINES = 10
_STDERR_CHARS = 2_000
# How long a failure waits for an in-flight part before aborting, and for the dump to die once killed.
_CLEANUP_WAIT = 10.0
_F_SETPIPE_SZ = 1031  # fcntl constant on Linux; Python 3.11's fcntl does not export it
_SECRET_ENV = re.compile(r"PASS|PWD|SECRET|TOKEN|KEY|CREDENTIAL|AUTH", re.IGNORECASE)


class BackupFailed(CloudOpsError):
    """A step of writing a backup failed; the upload was aborted and nothing usable was left behind.

    :ivar step: what was being done (``dump``, ``upload part 3``, ``timeout``, ...).
    :ivar key: the object that was being written.
    :ivar stderr_head: the first lines of the dump's stderr (secrets from its env redacted).
    :ivar returncode: the dump's exit status, when it exited.
    """

    def __init__(
        self,
        *,
        step: str,
        key: str,
        reason: str,
        description: str = "",
        stderr_head: str = "",
        returncode: int | None = None,
    ) -> None:
        what = f" ({description})" if description else ""
        message = f"backup failed at step {step!r} for {key}{what}: {reason}"
        if stderr_head:
            message += f"\ndump stderr (first lines):\n{stderr_head}"
        super().__init__(message)
        self.step = step
        self.key = key
        self.stderr_head = stderr_head
        self.returncode = returncode


@dataclass(frozen=True)
class StreamResult:
    """What one streamed object holds.

    :param raw_bytes: bytes the command wrote to stdout.
    :param compressed_bytes: bytes stored (the object's size).
    :param sha256: hex SHA-256 of the stored bytes.
    :param seconds: wall time from start to the completed upload.
    :param parts: multipart parts uploaded (1 for :func:`upload_bytes`).
    :param version_id: the object version S3 created, in a versioned bucket.
    """

    raw_bytes: int
    compressed_bytes: int
    sha256: str
    seconds: float
    parts: int = 1
    version_id: str | None = None


def encryption_args(encryption: Encryption) -> dict[str, str]:
    """Return the S3 request arguments for the catalog's server-side encryption setting.

    Passed on every write rather than left to the bucket's default, so that a bucket whose default
    changed (or an S3-compatible store without defaults) still stores the backup as the catalog says.
    """
    if encryption.mode == "sse-kms":
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": str(encryption.kms_key_id)}
    return {"ServerSideEncryption": "AES256"}


def part_size_for(part_number: int, base: int) -> int:
    """Return the size of part ``part_number`` (1-based): ``base``, doubling every 2,000 parts."""
    return min(base << ((part_number - 1) // PARTS_PER_SIZE_STEP), MAX_PART_SIZE)


def stream_command_to_object(
    command: DumpCommand,
    client: Any,
    bucket: str,
    key: str,
    *,
    level: int,
    part_size: int = DEFAULT_PART_SIZE,
    extra_args: Mapping[str, Any] | None = None,
    timeout: timedelta,
    threads: int = 0,
) -> StreamResult:
    """Run ``command`` and stream its stdout, zstd-compressed, into ``s3://bucket/key``.

    :param command: the dump to run; its ``env`` is merged over this process's environment.
    :param client: a boto3 S3 client (``S3Hook.get_conn()``) with bounded timeouts and retries.
    :param level: zstd compression level (1-22).
    :param part_size: size of the multipart parts; memory use is about twice this.
    :param extra_args: extra ``create_multipart_upload`` arguments (encryption, metadata).
    :param timeout: the longest the dump and upload together may take; the dump is killed after it.
    :param threads: zstd worker threads (0: compress in this thread; -1: one per CPU).
    :return: sizes, SHA-256 and duration of the stored object.
    :raises BackupFailed: the dump failed or exited non-zero, an S3 call failed, or time ran out; the
        multipart upload was aborted (best effort, bounded by the client's timeouts).
    """
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ValueError(f"part_size must be between 5 MiB and 5 GiB, got {part_size}")
    if timeout.total_seconds() <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    stream = _CommandStream(
        command=command,
        client=client,
        bucket=bucket,
        key=key,
        level=level,
        part_size=part_size,
        extra_args=dict(extra_args or {}),
        timeout=timeout,
        threads=threads,
    )
    return stream.run()


def upload_bytes(
    client: Any,
    bucket: str,
    key: str,
    data: bytes,
    *,
    extra_args: Mapping[str, Any] | None = None,
    content_type: str = "application/octet-stream",
) -> StreamResult:
    """Store a small object (a manifest) in one ``put_object`` call.

    :raises BackupFailed: the call failed (step ``put object``).
    """
    started = time.monotonic()
    try:
        response = client.put_object(
            Bucket=bucket, Key=key, Body=data, ContentType=content_type, **dict(extra_args or {})
        )
    except Exception as error:
        raise BackupFailed(step="put object", key=_s3_url(bucket, key), reason=first_line(error)) from error
    return StreamResult(
        raw_bytes=len(data),
        compressed_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        seconds=time.monotonic() - started,
        version_id=response.get("VersionId"),
    )


class _StderrHead:
    """Drain a pipe in a thread, keeping only its first bytes: a chatty dump must neither block on a
    full stderr pipe nor fill memory."""

    def __init__(self, pipe: io.BufferedReader) -> None:
        self._pipe = pipe
        self._kept = bytearray()
        self._thread = threading.Thread(target=self._drain, name="cloudops-dump-stderr", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := self._pipe.read1(64 * 1024):
                if len(self._kept) < _STDERR_KEEP:
                    self._kept += chunk[: _STDERR_KEEP - len(self._kept)]

    def head(self, *, wait: float, secrets: list[str]) -> str:
        """Return the first lines, waiting at most ``wait`` seconds for the pipe to close."""
        self._thread.join(timeout=wait)
        text = bytes(self._kept).decode("utf-8", errors="replace")
        for secret in secrets:
            text = text.replace(secret, "***")
        lines = [line.rstrip() for line in text.splitlines() if line.strip()][:_STDERR_LINES]
        head = "\n".join(lines)
        return head if len(head) <= _STDERR_CHARS else head[:_STDERR_CHARS] + " ..."


class _CommandStream:
    """One run of :func:`stream_command_to_object`: the dump process, the upload, and their cleanup."""

    def __init__(
        self,
        *,
        command: DumpCommand,
        client: Any,
        bucket: str,
        key: str,
        level: int,
        part_size: int,
        extra_args: dict[str, Any],
        timeout: timedelta,
        threads: int,
    ) -> None:
        self.command, self.client, self.bucket, self.key = command, client, bucket, key
        self.url = _s3_url(bucket, key)
        self.level, self.part_size, self.threads = level, part_size, threads
        self.extra_args = {"ChecksumAlgorithm": CHECKSUM_ALGORITHM, **extra_args}
        self.timeout = timeout
        self.deadline = 0.0
        self.step = "create multipart upload"
        self.upload_id: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr: _StderrHead | None = None
        self.timed_out = threading.Event()
        self.parts: list[dict[str, Any]] = []
        self.in_flight: Future[dict[str, Any]] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloudops-upload")

    # The run and its failure path.

    def run(self) -> StreamResult:
        started = time.monotonic()
        self.deadline = started + self.timeout.total_seconds()
        watchdog = threading.Timer(self.timeout.total_seconds(), self._on_deadline)
        watchdog.daemon = True
        log.info(
            "streaming %s to %s (zstd level %d, parts of %d MiB)",
            self.command.description,
            self.url,
            self.level,
            self.part_size // MiB,
        )
        try:
            watchdog.start()
            # The upload is created first: no point running a long dump into an unreachable bucket.
            response = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, **self.extra_args
            )
            self.upload_id = response["UploadId"]
            self.step = "start dump"
            if self.command.before_start is not None:
                self.command.before_start()
            self._start_process()
            self.step = "dump and upload"
            raw_bytes, compressed_bytes, sha256 = self._pump()
            self.step = "upload parts"
            self._wait_in_flight()
            self.step = "dump"
            returncode = self._wait_process()
            if returncode != 0:
                raise self._failure(_exit_reason(returncode), returncode=returncode)
            self._check_deadline()
            self.step = "complete multipart upload"
            completed = self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
            self.upload_id = None  # completed: nothing to abort any more
        except BaseException as error:
            self._clean_up()
            if isinstance(error, BackupFailed):
                raise
            if not isinstance(error, Exception):
                raise  # KeyboardInterrupt, SystemExit, a task being killed: cleaned up, not re-labelled
            if self.timed_out.is_set():
                raise self._timeout_failure() from error
            raise self._failure(first_line(error)) from error
        finally:
            watchdog.cancel()
            self.executor.shutdown(wait=False, cancel_futures=True)
            self._release()
        seconds = time.monotonic() - started
        log.info(
            "stored %s: %d bytes from %d raw (%.1f%%) in %d part(s), %.1f s, %.1f MiB/s raw, sha256 %s",
            self.url,
            compressed_bytes,
            raw_bytes,
            100.0 * compressed_bytes / raw_bytes if raw_bytes else 100.0,
            len(self.parts),
            seconds,
            raw_bytes / MiB / seconds if seconds else 0.0,
            sha256,
        )
        return StreamResult(
            raw_bytes=raw_bytes,
            compressed_bytes=compressed_bytes,
            sha256=sha256,
            seconds=seconds,
            parts=len(self.parts),
            version_id=completed.get("VersionId"),
        )

    def _failure(self, reason: str, *, returncode: int | None = None) -> BackupFailed:
        return BackupFailed(
            step=self.step,
            key=self.url,
            reason=reason,
            description=self.command.description,
            stderr_head=self._stderr_head(),
            returncode=returncode,
        )

    def _timeout_failure(self) -> BackupFailed:
        self.timed_out.set()
        self._kill()
        self.step = "timeout"
        return self._failure(f"dump and upload did not finish within {self.timeout}: the dump was killed")

    def _check_deadline(self) -> None:
        if self.timed_out.is_set() or time.monotonic() > self.deadline:
            raise self._timeout_failure()

    def _stderr_head(self) -> str:
        if self.stderr is None:
            return ""
        secrets = [
            value for name, value in self.command.env.items() if _SECRET_ENV.search(name) and len(value) >= 3
        ]
        return self.stderr.head(wait=2.0, secrets=secrets)

    def _on_deadline(self) -> None:
        """Kill the dump when the time is up: its stdout closes, so the read loop ends at once."""
        self.timed_out.set()
        self._kill()

    def _clean_up(self) -> None:
        """Stop the dump and abort the upload; never raises, every wait bounded."""
        self._kill()
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=_CLEANUP_WAIT)
        if self.in_flight is not None:
            # An abort racing with a part still being sent can leave that part behind: wait a little.
            wait_futures([self.in_flight], timeout=_CLEANUP_WAIT)
        if self.upload_id is None:
            return
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            log.info("aborted the multipart upload of %s", self.url)
        except Exception as error:
            log.warning(
                "could not abort the multipart upload %s of %s (%s): its parts stay until a bucket "
                "lifecycle rule (AbortIncompleteMultipartUpload) removes them",
                self.upload_id,
                self.url,
                first_line(error),
            )

    # The dump process.

    def _start_process(self) -> None:
        env = {**os.environ, **self.command.env}
        try:
            if shutil.which(self.command.argv[0], path=env.get("PATH")) is None:  # the child's PATH
                raise OSError(errno.ENOENT, "not an executable file")
            self.process = subprocess.Popen(
                # Killed by the kernel with this task, even a SIGKILLed one (no cleanup runs then).
                dies_with_parent(self.command.argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                # Its own process group, so that a timeout kills a shell pipeline's children too.
                start_new_session=True,
            )
        except OSError as error:
            raise self._failure(f"could not start {self.command.argv[0]!r}: {error.strerror}") from None
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        with contextlib.suppress(OSError):
            import fcntl

            # A bigger pipe means fewer, larger reads (Linux; best effort elsewhere).
            fcntl.fcntl(self.process.stdout.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
        self.stderr = _StderrHead(cast("io.BufferedReader", self.process.stderr))

    def _kill(self) -> None:
        """Kill the dump's process group (a shell pipeline's children too).

        Only while the dump has not been reaped: until then its pid (the group's id) cannot be reused,
        so the signal reaches nothing but our own processes.
        """
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def _release(self) -> None:
        """Close the dump's pipes; on success, log what it wrote to stderr (warnings, redacted)."""
        if self.process is None:
            return
        assert self.process.stdout is not None
        self.process.stdout.close()
        if self.stderr is not None and self.process.returncode == 0 and (head := self._stderr_head()):
            log.warning("%s wrote to stderr:\n%s", self.command.description, head)
        assert self.process.stderr is not None
        with contextlib.suppress(OSError):
            self.process.stderr.close()

    def _wait_process(self) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=max(self.deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            raise self._timeout_failure() from None

    # Compression and parts.

    def _pump(self) -> tuple[int, int, str]:
        """Read, compress, hash and hand parts to the uploader until the dump closes its stdout."""
        import zstandard

        assert self.process is not None
        assert self.process.stdout is not None
        stdout = cast("io.BufferedReader", self.process.stdout)
        compressor = zstandard.ZstdCompressor(level=self.level, threads=self.threads, write_checksum=True)
        stream = compressor.compressobj()
        digest = hashlib.sha256()
        pieces: list[bytes] = []
        pending = raw_bytes = compressed_bytes = 0
        part_number = 1

        def keep(piece: bytes) -> None:
            nonlocal pending, compressed_bytes
            if piece:
                digest.update(piece)
                pieces.append(piece)
                pending += len(piece)
                compressed_bytes += len(piece)

        observe = self.command.observe_output
        while chunk := stdout.read1(_READ_SIZE):
            raw_bytes += len(chunk)
            if observe is not None:
                observe(chunk)
            keep(stream.compress(chunk))
            if pending >= part_size_for(part_number, self.part_size):
                self._send(part_number, pieces)
                pieces, pending = [], 0
                part_number += 1
            elif self.in_flight is not None and self.in_flight.done():
                self.in_flight.result()  # fail fast: a part's error surfaces while the dump still runs
        if self.timed_out.is_set():
            raise self._timeout_failure()
        keep(stream.flush())
        self._send(part_number, pieces)  # a zstd frame is never empty: there is always a last part
        return raw_bytes, compressed_bytes, digest.hexdigest()

    def _send(self, part_number: int, pieces: list[bytes]) -> None:
        if part_number > MAX_PARTS:
            raise self._failure(f"the dump needs more than {MAX_PARTS} parts: raise part_size")
        self._wait_in_flight()  # at most one part in flight: memory stays near two parts
        body = b"".join(pieces)
        pieces.clear()
        self.step = f"upload part {part_number}"
        self.in_flight = self.executor.submit(self._upload_part, part_number, body)
        self.step = "dump and upload"

    def _wait_in_flight(self) -> None:
        if self.in_flight is None:
            return
        future, self.in_flight = self.in_flight, None
        try:
            future.result(timeout=max(self.deadline - time.monotonic(), 0.0))
        except FutureTimeout:
            self.in_flight = future
            raise self._timeout_failure() from None

    def _upload_part(self, part_number: int, body: bytes) -> dict[str, Any]:
        try:
            response = self.client.upload_part(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=part_number,
                Body=body,
                ChecksumAlgorithm=self.extra_args["ChecksumAlgorithm"],
            )
        except Exception as error:
            raise BackupFailed(
                step=f"upload part {part_number}",
                key=self.url,
                reason=first_line(error),
                description=self.command.description,
            ) from error
        part = {"PartNumber": part_number, "ETag": response["ETag"]}
        checksum_field = f"Checksum{self.extra_args['ChecksumAlgorithm']}"
        if response.get(checksum_field):
            part[checksum_field] = response[checksum_field]
        self.parts.append(part)
        return part


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the dump was killed by {name}"
    return f"the dump exited with status {returncode}"


def _s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


__all__ = [
    "CHECKSUM_ALGORITHM",
    "DEFAULT_PART_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "BackupFailed",
    "StreamResult",
    "encryption_args",
    "part_size_for",
    "stream_command_to_object",
    "upload_bytes",
]
