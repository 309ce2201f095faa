"""restore_drill__<database> when its scratch server cannot be reached: the drill fails with a message that
names the scratch connection and its address (not the database's own server), teardown still runs and says
what may remain, and the drill record reports the failed steps.

The scratch server is the drill policy's ``scratch_conn_id``, defined for each test through an
``AIRFLOW_CONN_<ID>`` variable pointing to a loopback port nothing listens on.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudops.errors import CloudOpsError, DatabaseUnavailableError, RestoreError
from cloudops.runbooks.backup import take_backup
from cloudops.runbooks.restore_drill import prepare, record_drill, restore, teardown
from tests.integration.estates import private_estate

pytestmark = pytest.mark.integration

DATABASE = "inventory_mariadb"
SCRATCH_CONN = "drill_scratch_closed"
SCRATCH_ENV = f"AIRFLOW_CONN_{SCRATCH_CONN.upper()}"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def estate(
    tmp_path: Path, sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """inventory_mariadb backed up into a bucket of this test's own; scratch restores on SCRATCH_CONN."""
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path / "evidence"))
    port = closed_port()
    closed = {"conn_type": "mysql", "host": "127.0.0.1", "port": port, "login": "cloudops", "password": "x"}
    monkeypatch.setenv(SCRATCH_ENV, json.dumps(closed))
    database = {
        "name": DATABASE,
        "engine": "mariadb",
        "conn_id": "sandbox_mariadb",
        "database": "inventory",
        "backup": {"repository": "r", "retention": {"keep_last": 3}},
        "drill": {"schedule": "on_backup", "scratch_conn_id": SCRATCH_CONN},
    }
    with private_estate(tmp_path, "unreach", [database]) as made:
        take_backup(made.file, made.estate, DATABASE)
        yield {
            "args": (made.file, made.estate, DATABASE),
            "address": f"127.0.0.1:{port}",
            "closed": json.dumps(closed),
            "evidence": tmp_path / "evidence",
        }


def test_unreachable_scratch_server_fails_prepare_with_its_connection_and_address(
    estate: dict[str, Any],
) -> None:
    args = estate["args"]
    with pytest.raises(DatabaseUnavailableError) as failure:
        prepare(*args, run_id="manual__unreachable", backup_id="latest")

    message = str(failure.value)
    assert message.startswith(
        f"the scratch server of '{DATABASE}' (connection '{SCRATCH_CONN}') is unavailable at "
        f"{estate['address']}: "
    ), message
    assert "refused" in message.lower()
    # The DAG's teardown (all_done) gets no scratch name from the failed prepare: it runs and does nothing.
    teardown(*args, scratch=None)
    with pytest.raises(CloudOpsError, match=f"the drill of {DATABASE} failed in step prepare"):
        record_drill(*args, run_id="manual__unreachable", prepared=None, restored=None, validated=None)


def test_scratch_server_lost_after_prepare_fails_restore_and_teardown_and_the_record_says_so(
    estate: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    args, run_id = estate["args"], "manual__lost-scratch"
    # Reachable for prepare, then gone.
    monkeypatch.setenv(SCRATCH_ENV, os.environ["AIRFLOW_CONN_SANDBOX_MARIADB_SCRATCH"])
    prepared = prepare(*args, run_id=run_id, backup_id="latest")
    monkeypatch.setenv(SCRATCH_ENV, estate["closed"])

    with pytest.raises(DatabaseUnavailableError) as restore_failure:
        restore(*args, backup_id=prepared["backup_id"], scratch=prepared["scratch"], run_id=run_id)
    assert f"(connection '{SCRATCH_CONN}') is unavailable at {estate['address']}" in str(
        restore_failure.value
    )

    # teardown runs anyway (all_done): it cannot drop the scratch database either, and says what is at stake.
    with pytest.raises(RestoreError) as teardown_failure:
        teardown(*args, scratch=prepared["scratch"])
    assert str(teardown_failure.value).startswith(
        f"could not drop scratch database '{prepared['scratch']}', it may remain: the scratch server of "
        f"'{DATABASE}' (connection '{SCRATCH_CONN}') is unavailable at {estate['address']}"
    )

    with pytest.raises(CloudOpsError) as verdict:
        record_drill(
            *args, run_id=run_id, prepared=prepared, restored=None, validated=None, scratch_left=True
        )
    assert "step(s) restore, validate failed" in str(verdict.value)
    assert f"teardown failed: scratch {prepared['scratch']} may remain" in str(verdict.value)
    (local,) = (estate["evidence"] / "drills").rglob("*.json")
    record = json.loads(local.read_text())
    assert record["passed"] is False
    assert record["error"] == "step(s) restore, validate failed: see their logs"
    assert record["cleanup_error"].startswith("teardown failed")
