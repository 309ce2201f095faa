"""A catalog of the test's own that backs up the sandbox's databases into a bucket of its own.

Tests that alter, lock or count backups must not share the sandbox's bucket: each gets a fresh bucket
in the sandbox's S3 endpoint and a catalog file naming it, and the bucket (every version, locked or
not) is removed afterwards.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REGION = "eu-west-1"
REPOSITORY = "r"


def admin_client(service: str = "s3", endpoint: str | None = None) -> Any:
    """A plain boto3 client of the sandbox's AWS endpoint (or ``endpoint``, e.g. a test's own moto
    server) for setting up, inspecting and tampering, apart from the code under test."""
    import boto3

    # The sandbox's endpoint as its connection names it (a sandbox may run with a port offset).
    endpoint = endpoint or json.loads(os.environ["AIRFLOW_CONN_SANDBOX_AWS"])["extra"]["endpoint_url"]
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def create_bucket(s3: Any, name: str | None = None, *, locked: bool = True) -> str:
    """Create bucket ``name`` (default: a new random name), with Object Lock unless told otherwise."""
    name = name or f"cloudops-itest-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(
        Bucket=name,
        ObjectLockEnabledForBucket=locked,
        CreateBucketConfiguration={"LocationConstraint": REGION},
    )
    return name


def empty_and_remove_bucket(s3: Any, bucket: str) -> None:
    """Abort pending uploads, delete every version (locked ones too, in GOVERNANCE mode), then the bucket."""
    for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) or []:
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            s3.delete_object(
                Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"], BypassGovernanceRetention=True
            )
    s3.delete_bucket(Bucket=bucket)


def sandbox_s3() -> Any:
    """The S3 client of the sandbox's AWS connection, apart from the code under test."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id="sandbox_aws").get_conn()


@dataclass
class PrivateEstate:
    """The catalog file, its document and the bucket its repository writes into."""

    path: Path
    document: dict[str, Any]
    bucket: str

    @property
    def file(self) -> str:
        return str(self.path)

    @property
    def estate(self) -> str:
        return str(self.document["estate"])

    def write(self, **changes: Any) -> str:
        """Rewrite the catalog file with top-level ``changes``; return its path."""
        self.path.write_text(yaml.safe_dump({**self.document, **changes}))
        return self.file


@contextmanager
def private_estate(
    directory: Path,
    short: str,
    databases: list[dict[str, Any]],
    *,
    locked: bool = False,
    repository: str = REPOSITORY,
) -> Iterator[PrivateEstate]:
    """A catalog ``<directory>/estate.yaml`` of estate ``<short>_<random>`` with ``databases``, whose
    repository (``r`` unless named) is a new bucket: with Object Lock when ``locked``; without it,
    tests may overwrite and delete objects."""
    suffix = uuid.uuid4().hex[:8]
    bucket = f"cloudops-{short.replace('_', '-')}-{suffix}"
    client = sandbox_s3()
    create_bucket(client, bucket, locked=locked)
    document: dict[str, Any] = {
        "estate": f"{short}_{suffix}",
        "owner": "tests",
        "clouds": [{"name": "aws", "provider": "aws", "aws_conn_id": "sandbox_aws", "region": REGION}],
        "repositories": [{"name": repository, "cloud": "aws", "bucket": bucket, "region": REGION}],
        "databases": databases,
    }
    estate = PrivateEstate(directory / "estate.yaml", document, bucket)
    estate.write()
    try:
        yield estate
    finally:
        empty_and_remove_bucket(client, bucket)
