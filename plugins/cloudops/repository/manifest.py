"""The manifest of a backup: what was dumped, how, and how to check every stored byte.

The manifest is the last object a backup writes: its presence is what makes the backup complete, and it
is all a restore or a restore drill needs (object keys, sizes, SHA-256, compression, encryption, the
database's position and row counts to compare with). It is stored as canonical JSON (sorted keys, UTC
times) so that the same backup always gives the same bytes, and it is read back strictly: a manifest
that does not validate is reported with the field at fault, never half-used.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from cloudops.catalog.errors import did_you_mean, format_path
from cloudops.errors import CloudOpsError
from cloudops.repository.layout import MANIFEST_NAME, is_backup_id

# Bumped when a change would make an older reader misread a manifest; readers refuse other versions.
MANIFEST_VERSION = 1
# Larger than any database dump (1 PiB), and below 2**53 so that every size stays exact in any JSON
# reader; a manifest from the bucket is untrusted, and an absurd size must not pass as a number.
MAX_BYTES = 1 << 50
# The most a manifest may weigh. One object per dump plus a row count per table: 100,000 tables come to
# about 10 MB of JSON. Beyond that it is not a manifest this code wrote, and reading it would only cost
# memory (a parsed JSON document takes several times its size).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

_Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
_ObjectName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")]
_Text = Annotated[str, StringConstraints(min_length=1, max_length=500)]
_Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
_Size = Annotated[int, Field(ge=0, le=MAX_BYTES)]
# S3 version ids are opaque, URL-safe text of at most 1024 characters ("null" in an unversioned bucket).
_VersionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._+/=-]{1,1024}$")]


class ManifestError(CloudOpsError):
    """A manifest cannot be read or does not validate; the message names the manifest and the field."""


def _utc(value: datetime) -> datetime:
    """Store every time in UTC so that the JSON is the same whatever zone the writer ran in."""
    return value.astimezone(UTC)


class _ManifestModel(BaseModel):
    """Base of the manifest's parts: immutable, and unknown fields are errors (a typo is not data)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ManifestObject(_ManifestModel):
    """One stored object of a backup.

    :param name: the object's name inside the backup (the last segment of its key).
    :param key: its full key in the bucket.
    :param size: stored (compressed) size in bytes.
    :param sha256: SHA-256 of the stored bytes, hex: what :meth:`BackupRepository.verify_objects` checks.
    :param raw_bytes: size of the dump before compression.
    :param version_id: the S3 version the upload created (None in an unversioned bucket, and in
        manifests written before versions were recorded): restores read exactly this version, so a
        newer version written over the key later is never what they restore.
    """

    name: _ObjectName
    key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    size: _Size
    sha256: _Sha256
    raw_bytes: _Size
    version_id: _VersionId | None = None

    @field_validator("name")
    @classmethod
    def _not_the_manifest(cls, value: str) -> str:
        if value == MANIFEST_NAME:
            raise ValueError(f"{MANIFEST_NAME!r} is the manifest's own name, not a backup object")
        return value


class Compression(_ManifestModel):
    """How the objects are compressed (zstd frames: ``zstd -d`` reads them)."""

    algorithm: Literal["zstd"] = "zstd"
    level: Annotated[int, Field(ge=1, le=22)]


class ManifestEncryption(_ManifestModel):
    """The server-side encryption the objects were written with."""

    mode: Literal["sse-s3", "sse-kms"]
    kms_key_id: str | None = None

    @model_validator(mode="after")
    def _kms_key_matches_mode(self) -> ManifestEncryption:
        if self.mode == "sse-kms" and not self.kms_key_id:
            raise ValueError("sse-kms needs kms_key_id")
        if self.mode == "sse-s3" and self.kms_key_id:
            raise ValueError("kms_key_id is only used with mode sse-kms")
        return self


class ManifestObjectLock(_ManifestModel):
    """The S3 Object Lock retention applied to every object of the backup, manifest included."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    retain_until: AwareDatetime

    _in_utc = field_validator("retain_until")(_utc)


class Manifest(_ManifestModel):
    """Everything known about one backup; written last, so its presence means the backup is complete.

    :param position: where in the database's history the dump stands (an LSN, a binlog file and
        position, a GTID set), for point-in-time recovery and for drills to report.
    :param row_counts: rows per table at dump time, for a restore drill to compare with.
    :param schema_fingerprint: a hash of the schema, for drills to check the restored schema.
    :param tool_versions: e.g. ``{"pg_dump": "15.8", "zstandard": "0.25.0"}``.
    :param tags: labels the retention policy's ``keep_tags`` matches.
    """

    manifest_version: Literal[1] = 1  # MANIFEST_VERSION
    backup_id: str
    estate: _Name
    database: _Name
    engine: _Text
    engine_version: _Text
    method: Literal["logical", "physical"]
    format: _Text
    started_at: AwareDatetime
    finished_at: AwareDatetime
    raw_bytes: _Size
    compressed_bytes: _Size
    objects: Annotated[list[ManifestObject], Field(min_length=1)]
    compression: Compression
    encryption: ManifestEncryption
    object_lock: ManifestObjectLock | None = None
    row_counts: dict[Annotated[str, StringConstraints(min_length=1)], _Size] = Field(default_factory=dict)
    schema_fingerprint: str | None = None
    position: dict[str, JsonValue] = Field(default_factory=dict)
    tool_versions: dict[str, str] = Field(default_factory=dict)
    airflow_run_id: str | None = None
    tags: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)

    _times_in_utc = field_validator("started_at", "finished_at")(_utc)

    @field_validator("backup_id")
    @classmethod
    def _backup_id(cls, value: str) -> str:
        if not is_backup_id(value):
            raise ValueError(f"{value!r} is not a backup id of the form YYYYMMDDTHHMMSSZ-xxxxxx")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.finished_at < self.started_at:
            raise ValueError(
                f"finished_at {self.finished_at.isoformat()} is before started_at "
                f"{self.started_at.isoformat()}"
            )
        names = [item.name for item in self.objects]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"objects: names must be unique, repeated: {', '.join(duplicates)}")
        # A manifest that points outside its own backup's folder would let a restore read another backup.
        folder = f"{self.estate}/{self.database}/{self.backup_id}/"
        for index, item in enumerate(self.objects):
            if not item.key.endswith(folder + item.name):
                raise ValueError(f"objects[{index}].key {item.key!r} is not inside .../{folder}{item.name}")
        if self.raw_bytes != sum(item.raw_bytes for item in self.objects):
            raise ValueError(f"raw_bytes {self.raw_bytes} is not the sum of the objects' raw_bytes")
        if self.compressed_bytes != sum(item.size for item in self.objects):
            raise ValueError(f"compressed_bytes {self.compressed_bytes} is not the sum of the objects' sizes")
        return self

    def object(self, name: str) -> ManifestObject:
        """Return the object called ``name``.

        :raises KeyError: naming the objects there are.
        """
        for item in self.objects:
            if item.name == name:
                return item
        raise KeyError(f"{name!r} is not an object of backup {self.backup_id} (has: {self.object_names()})")

    def object_names(self) -> str:
        """The objects' names, comma-separated, for messages."""
        return ", ".join(item.name for item in self.objects)

    def to_json(self) -> str:
        """Return the canonical JSON: sorted keys, UTC times, two-space indent, final newline."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, data: str | bytes, *, source: str = "manifest") -> Manifest:
        """Parse and validate a manifest.

        :param source: what to call it in errors, e.g. its key.
        :raises ManifestError: larger than :data:`MAX_MANIFEST_BYTES`, not JSON, not an object, or a
            field is invalid (each one named).
        """
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"{source}: {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may hold: "
                "not a manifest cloudops wrote"
            )
        try:
            document = json.loads(data)
        except UnicodeDecodeError as error:
            raise ManifestError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from None
        except json.JSONDecodeError as error:
            raise ManifestError(
                f"{source}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
            ) from None
        if not isinstance(document, dict):
            raise ManifestError(f"{source}: expected a JSON object, got {type(document).__name__}")
        version = document.get("manifest_version")
        if version != MANIFEST_VERSION:
            raise ManifestError(
                f"{source}: manifest_version {version!r} is not supported (this code reads version "
                f"{MANIFEST_VERSION}); upgrade cloudops to read it"
            )
        try:
            return cls.model_validate(document)
        except ValidationError as error:
            problems = "; ".join(_describe(dict(detail)) for detail in error.errors())
            raise ManifestError(f"{source}: invalid manifest: {problems}") from None


def _describe(detail: dict[str, Any]) -> str:
    """Render one validation error as ``objects[0].sha256: <message>`` with a hint for unknown fields."""
    location = format_path(detail["loc"]) or "manifest"
    message = str(detail["msg"]).removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        field_name = str(detail["loc"][-1])
        parent: Any = Manifest
        if len(detail["loc"]) > 1:
            parent = {
                "objects": ManifestObject,
                "compression": Compression,
                "encryption": ManifestEncryption,
                "object_lock": ManifestObjectLock,
            }.get(str(detail["loc"][0]), Manifest)
        hint = did_you_mean(field_name, parent.model_fields)
        return f"{location}: unknown field{f' ({hint})' if hint else ''}"
    if detail["type"] == "missing":
        return f"{location}: missing"
    return f"{location}: {message}"


__all__ = [
    "MANIFEST_VERSION",
    "MAX_BYTES",
    "MAX_MANIFEST_BYTES",
    "Compression",
    "Manifest",
    "ManifestEncryption",
    "ManifestError",
    "ManifestObject",
    "ManifestObjectLock",
]
