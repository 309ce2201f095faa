"""Fixtures of the integration tests: the sandbox's S3 endpoint, a client of it, a bucket of a test's own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.estates import admin_client, create_bucket, empty_and_remove_bucket


@pytest.fixture(scope="module")
def endpoint(sandbox_env: dict[str, str]) -> str:
    return str(json.loads(sandbox_env["AIRFLOW_CONN_SANDBOX_AWS"])["extra"]["endpoint_url"])


@pytest.fixture(scope="module")
def s3(endpoint: str) -> Any:
    return admin_client(endpoint=endpoint)


@pytest.fixture
def bucket(s3: Any) -> Iterator[str]:
    name = create_bucket(s3)
    yield name
    empty_and_remove_bucket(s3, name)
