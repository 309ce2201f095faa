"""The health check's runbook checks against a real running Airflow (api-server, scheduler,
dag-processor: the stack of test_restore_approval, started once for this module): a paused backup DAG
is an outage of the backup, a runbook DAG Airflow does not have is down, and both fail the check."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudops.errors import CloudOpsError
from cloudops.runbooks.health_check import check_runbooks, report_health
from tests.e2e.test_restore_approval import DATABASE, USERS, Stack, stack, wait_for

pytestmark = pytest.mark.e2e

__all__ = ["stack"]  # the fixture, imported to be used here

BACKUP_DAG = f"backup__{DATABASE}"
PARSED_TIMEOUT = 60


@pytest.fixture
def api_connection(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection the health check asks the REST API through, as a deployment would define it."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDOPS_AIRFLOW_API",
        json.dumps({"conn_type": "http", "host": stack.url, "login": "oncall", "password": USERS["oncall"]}),
    )


def by_target(findings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {finding["target"]: finding for finding in findings}


def set_paused(stack: Stack, paused: bool) -> None:
    import httpx

    # SQLite under a scheduler, a dag-processor and a running backup: a write may meet a lock (500).
    for _attempt in range(5):
        response = httpx.patch(
            f"{stack.url}/api/v2/dags/{BACKUP_DAG}",
            json={"is_paused": paused},
            headers={"Authorization": f"Bearer {stack.token('oncall')}"},
            timeout=20,
        )
        if response.is_success:
            return
        assert response.status_code == 500, f"PATCH {BACKUP_DAG}: {response.status_code} {response.text}"
        time.sleep(1)
    raise AssertionError(f"PATCH {BACKUP_DAG} kept failing: {response.status_code} {response.text[:300]}")


@pytest.mark.usefixtures("api_connection")
def test_a_paused_backup_dag_fails_the_health_check_and_unpausing_clears_it(stack: Stack) -> None:
    wait_for(
        f"{BACKUP_DAG} to be parsed by the dag-processor",
        lambda: stack.api("oncall", "GET", "/dags", params={"dag_id_pattern": BACKUP_DAG})["dags"],
        timeout=PARSED_TIMEOUT,
    )
    # This Airflow creates runbooks paused (CLOUDOPS_PAUSED_AT_CREATION, see the stack): a paused backup
    # as a deployment would have it after someone paused it.
    set_paused(stack, True)
    try:
        findings = check_runbooks(str(stack.catalog_file), stack.estate)
        finding = by_target(findings)[f"runbook {BACKUP_DAG}"]
        assert finding["status"] == "degraded"
        assert finding["problem"].startswith(f"paused in Airflow: it does not run for database {DATABASE}")
        with pytest.raises(CloudOpsError, match=f"runbook {BACKUP_DAG} is degraded: paused in Airflow"):
            report_health(stack.estate, [], [], findings)
    finally:
        set_paused(stack, False)

    # Unpaused, it is active again: its catch-up run (it runs the missed day at once)
    # is in progress or has succeeded.
    (finding,) = check_runbooks(str(stack.catalog_file), stack.estate)
    assert finding["target"] == f"runbook {BACKUP_DAG}"
    assert finding["status"] == "ok", finding
    assert finding["detail"].startswith("active, ")


@pytest.mark.usefixtures("api_connection")
def test_a_runbook_dag_airflow_does_not_have_is_down(stack: Stack, tmp_path: Path) -> None:
    # The same estate as Airflow's catalog, plus a database whose DAG Airflow never built.
    document = yaml.safe_load(stack.catalog_file.read_text())
    ghost = {**document["databases"][0], "name": "ghost_db"}
    document["databases"].append(ghost)
    catalog = tmp_path / "estate.yaml"
    catalog.write_text(yaml.safe_dump(document))

    findings = by_target(check_runbooks(str(catalog), stack.estate))

    assert findings["runbook backup__ghost_db"]["status"] == "down"
    assert findings["runbook backup__ghost_db"]["problem"].startswith(
        "Airflow has no DAG backup__ghost_db for database ghost_db"
    )


def test_without_the_api_connection_the_runbook_state_is_a_warning(stack: Stack) -> None:
    (finding,) = check_runbooks(str(stack.catalog_file), stack.estate)
    assert finding["status"] == "warning"
    assert finding["problem"].startswith(
        "runbook state unknown: Airflow connection 'cloudops_airflow_api' (used by the health check's "
        "runbook checks) does not exist"
    )
    assert report_health(stack.estate, [], [], [finding])["healthy"]


def test_a_wrong_password_is_a_warning_naming_the_call(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDOPS_AIRFLOW_API",
        json.dumps({"conn_type": "http", "host": stack.url, "login": "oncall", "password": "wrong"}),
    )
    (finding,) = check_runbooks(str(stack.catalog_file), stack.estate)
    assert finding["status"] == "warning"
    assert finding["problem"] == f"runbook state unknown: POST {stack.url}/auth/token: HTTP 401"
