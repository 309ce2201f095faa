"""restore_drill__<database> run by Airflow against the sandbox's latest backup."""

from __future__ import annotations

from collections.abc import Callable
from subprocess import CompletedProcess

import pytest

pytestmark = pytest.mark.e2e


def test_sandbox_drill_restores_validates_and_records(
    dags_test: Callable[..., CompletedProcess[str]], airflow_env: dict[str, str]
) -> None:
    # The drill needs a backup: the e2e backup test makes one, but do not depend on test order.
    assert dags_test("backup__inventory_mariadb").returncode == 0

    run = dags_test("restore_drill__inventory_mariadb")

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "Restore drill of sandbox/inventory_mariadb (mariadb): PASSED, targets met" in output
    assert "schema fingerprint" in output
    assert (
        "drill record stored at s3://cloudops-sandbox-backups/backups/sandbox/_drills/inventory_mariadb/"
        in output
    )
