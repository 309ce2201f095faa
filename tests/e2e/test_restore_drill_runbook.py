"""restore_drill__<database> run by Airflow against the sandbox's latest backup."""

from __future__ import annotations

import json
import re
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
    # The copy went to the scratch server the catalog names, with its ownership marker.
    scratch = json.loads(airflow_env["AIRFLOW_CONN_SANDBOX_MARIADB_SCRATCH"])
    assert re.search(
        rf"creating scratch database 'drill_inventory_mariadb_[0-9a-f]{{10}}' on "
        rf"127\.0\.0\.1:{scratch['port']} .*marked as created for run",
        output,
    ), output[-3000:]
    assert (
        "drill record stored at s3://cloudops-sandbox-backups/backups/sandbox/_drills/inventory_mariadb/"
        in output
    )
