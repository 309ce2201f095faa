"""Availability probes against the real sandbox targets: what a broken target records, and what it does not
do to the others.

Each test runs its own probe loop (5 s intervals instead of minutes, bounds shortened to fit: 2 s for a
database and the endpoint, 3 s for a host, each still over ten times what a healthy probe here takes)
over a copy of the sandbox catalog, into a sample store of its own; the sandbox's own probe process
keeps running beside it and is not looked at. The restart test runs the real command, whose start-up
(Airflow's imports) must fit in an interval: it keeps 10 s intervals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudops.catalog import load_catalog_file
from cloudops.catalog.models import Catalog, HttpEndpoint, Slo
from cloudops.fleet.ssh import run_command
from cloudops.probes.runner import ProbeRunner
from cloudops.probes.store import SampleStore
from cloudops.probes.targets import plan_targets

pytestmark = pytest.mark.integration

INTERVAL = timedelta(seconds=5)
DATABASE_TIMEOUT = timedelta(seconds=2)
HOST_TIMEOUT = timedelta(seconds=3)
# The catalog's bound of the endpoint is 5 s; the test catalog gives it 2 s to fit the interval.
ENDPOINT_TIMEOUT = timedelta(seconds=2)
ENDPOINT = "endpoint:web_health"
HEALTH_STATUS = "/var/lib/sandbox-http/status"


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def catalog(sandbox_env: dict[str, str], project_root: Path) -> Catalog:
    """The sandbox catalog with one SLO over a target of each kind (and both database engines)."""
    base = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    slo = Slo.model_validate(
        {
            "name": "probe_test",
            "targets": [
                {"kind": "database", "name": "orders_pg"},
                {"kind": "database", "name": "inventory_mariadb"},
                {"kind": "host", "name": "web-2"},
                {"kind": "endpoint", "name": "web_health"},
            ],
            "objectives": [
                {"role": "internal", "target_percent": 99.9},
                {"role": "sla", "target_percent": 99.5},
            ],
            "no_data_policy": "excluded",
        }
    )
    endpoints = [
        HttpEndpoint.model_validate({**endpoint.model_dump(), "timeout": ENDPOINT_TIMEOUT})
        for endpoint in base.endpoints
    ]
    return base.model_copy(update={"slos": [slo], "endpoints": endpoints})


def _runner(catalog: Catalog, root: Path, **kwargs: Any) -> ProbeRunner:
    targets = plan_targets(
        [catalog], interval=INTERVAL, database_timeout=DATABASE_TIMEOUT, host_timeout=HOST_TIMEOUT
    )
    return ProbeRunner(targets, {catalog.estate: SampleStore(root)}, interval=INTERVAL, **kwargs)


def _samples(root: Path) -> list[dict[str, Any]]:
    table = SampleStore(root).read(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    return sorted(table.to_pylist(), key=lambda row: (row["at"], row["target"]))


def _by_target(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        found.setdefault(row["target"], []).append(row)
    return found


def _set_health_page(mode: str | None) -> None:
    """Make web-1's health page answer ``mode`` (a status code, or hang); None: back to 200 OK."""
    command = f"sudo rm -f {HEALTH_STATUS}"
    if mode is not None:
        command = f"sudo mkdir -p /var/lib/sandbox-http && echo {mode} | sudo tee {HEALTH_STATUS} >/dev/null"
    result = run_command("sandbox_ssh_web_1", command, used_by="the probe test")
    assert result.exit_status == 0, result.stderr


@pytest.fixture
def health_page() -> Iterator[Any]:
    yield _set_health_page
    _set_health_page(None)


def test_healthy_targets_record_one_good_sample_per_interval(catalog: Catalog, tmp_path: Path) -> None:
    runner = _runner(catalog, tmp_path)
    runner.run(intervals=2)

    rows = _by_target(_samples(tmp_path))
    assert {key: [row["ok"] for row in found] for key, found in rows.items()} == {
        "database:orders_pg": [True, True],
        "database:inventory_mariadb": [True, True],
        "host:web-2": [True, True],
        ENDPOINT: [True, True],
    }
    assert rows["database:orders_pg"][0]["detail"] == "write and read ok"
    assert rows[ENDPOINT][0]["detail"] == "status 200"
    # One batch file per interval (and estate): two.
    assert len(list(tmp_path.glob("*/batch-*.parquet"))) == 2


def test_a_stopped_database_records_bad_samples_and_the_others_stay_good(
    catalog: Catalog, tmp_path: Path
) -> None:
    from cloudops.sandbox.credentials import CredentialStore
    from cloudops.sandbox.layout import SandboxLayout
    from cloudops.sandbox.mariadb import MariadbServer
    from cloudops.sandbox.plan import load_plan

    layout = SandboxLayout.from_environment()
    server = MariadbServer(
        layout, load_plan(layout.catalog_path).mariadb, CredentialStore(layout.credentials_file)
    )
    server.stop(_quiet)
    try:
        _runner(catalog, tmp_path).run(intervals=2)
    finally:
        server.ensure(_quiet)

    rows = _by_target(_samples(tmp_path))
    assert [row["ok"] for row in rows["database:inventory_mariadb"]] == [False, False]
    assert "OperationalError" in rows["database:inventory_mariadb"][0]["detail"]
    assert [row["ok"] for row in rows["database:orders_pg"]] == [True, True]
    assert [row["ok"] for row in rows[ENDPOINT]] == [True, True]


def test_a_host_that_is_down_records_bad_samples(catalog: Catalog, tmp_path: Path) -> None:
    from cloudops.sandbox import estate

    estate.stop_hosts(("web-2",), say=_quiet)
    try:
        _runner(catalog, tmp_path).run(intervals=2)
    finally:
        estate.start_hosts(("web-2",), say=_quiet)

    rows = _by_target(_samples(tmp_path))
    assert [row["ok"] for row in rows["host:web-2"]] == [False, False]
    assert rows["host:web-2"][0]["latency_ms"] is None
    assert [row["ok"] for row in rows["database:orders_pg"]] == [True, True]


def test_an_endpoint_answering_500_records_bad_samples(
    catalog: Catalog, tmp_path: Path, health_page: Any
) -> None:
    health_page("500")
    _runner(catalog, tmp_path).run(intervals=2)

    rows = _by_target(_samples(tmp_path))
    assert [(row["ok"], row["detail"]) for row in rows[ENDPOINT]] == [
        (False, "status 500, expected [200]"),
        (False, "status 500, expected [200]"),
    ]
    assert [row["ok"] for row in rows["host:web-2"]] == [True, True]


def test_a_hung_endpoint_times_out_within_its_bound_while_the_others_keep_their_interval(
    catalog: Catalog, tmp_path: Path, health_page: Any
) -> None:
    health_page("hang")  # the page accepts and never answers (for an hour)
    runner = _runner(catalog, tmp_path)
    endpoint = next(target for target in runner.targets if target.key == ENDPOINT)
    started = time.monotonic()
    runner.run(intervals=3)
    elapsed = time.monotonic() - started

    # Three intervals plus the wait for the first boundary: the hang delayed nothing.
    seconds = INTERVAL.total_seconds()
    assert elapsed < 4 * seconds + 2
    rows = _samples(tmp_path)
    first = min(row["at"] for row in rows).timestamp() // seconds * seconds
    by_interval: dict[int, set[str]] = {}
    for row in rows:
        index = int((row["at"].timestamp() - first) // seconds)
        by_interval.setdefault(index, set()).add(row["target"])
        # Each sample is stamped inside its interval, at the target's own offset (stored to the second).
        target = next(t for t in runner.targets if t.key == row["target"])
        assert row["at"].timestamp() - (first + seconds * index) == pytest.approx(target.offset, abs=1.0)
    every = {"database:orders_pg", "database:inventory_mariadb", "host:web-2", ENDPOINT}
    assert by_interval == {0: every, 1: every, 2: every}
    hung = [row for row in rows if row["target"] == ENDPOINT]
    assert [(row["ok"], row["latency_ms"]) for row in hung] == [(False, None)] * 3
    assert hung[0]["detail"].startswith("no answer")
    assert endpoint.deadline < INTERVAL.total_seconds()
    others = [row for row in rows if row["target"] != ENDPOINT]
    assert all(row["ok"] for row in others), [row for row in others if not row["ok"]]


def test_no_secret_reaches_a_sample_or_the_log(
    catalog: Catalog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    wrong = "Wr0ng-probe-Passw0rd"
    real = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_MARIADB"])
    os.environ["AIRFLOW_CONN_PROBE_WRONG_PASSWORD"] = json.dumps({**real, "password": wrong})
    database = catalog.database("inventory_mariadb").model_copy(update={"conn_id": "probe_wrong_password"})
    bad = catalog.model_copy(update={"databases": [database]})
    slo = catalog.slos[0].model_copy(update={"targets": [catalog.slos[0].targets[1]]})
    bad = bad.model_copy(update={"slos": [slo]})
    try:
        with caplog.at_level("INFO"):
            _runner(bad, tmp_path, state_file=tmp_path / "probe-state.json").run(intervals=1)
    finally:
        del os.environ["AIRFLOW_CONN_PROBE_WRONG_PASSWORD"]

    (row,) = _samples(tmp_path)
    assert row["ok"] is False
    assert "Access denied" in row["detail"]
    for text in (row["detail"], caplog.text, (tmp_path / "probe-state.json").read_text()):
        assert wrong not in text
        assert real["password"] not in text


def test_a_restart_loses_at_most_the_interval_in_progress(tmp_path: Path, project_root: Path) -> None:
    """The probe process is killed (SIGKILL: no chance to write) 2 s into the interval after its first
    batch and started again; it is stopped (SIGTERM) once the new process has written a batch."""
    from cloudops.probes.runner import read_state

    interval = 10  # the real command's start-up and warm-up must fit in one
    state_file = tmp_path / "probe-state.json"
    argv = [
        *(sys.executable, "-m", "cloudops.cli", "probe", "run"),
        *("--catalog", str(project_root / "runbooks" / "sandbox.yaml"), "--samples", str(tmp_path)),
        *("--interval", str(interval), "--database-timeout", "3", "--host-timeout", "5"),
    ]

    def wait_for_batch(pid: int) -> None:
        deadline = time.monotonic() + 40
        while True:
            state = read_state(state_file) or {}
            if state.get("pid") == pid and state.get("last_batch_samples"):
                return
            assert time.monotonic() < deadline, f"process {pid} wrote no batch in 40 s: {state}"
            threading.Event().wait(0.2)

    def into_interval(seconds: float) -> float:
        """Sleep until ``seconds`` into the interval in progress (the next one when that moment is
        past); return that interval's start."""
        now = time.time()
        start = now // interval * interval
        if now > start + seconds:
            start += interval
        threading.Event().wait(start + seconds - time.time())
        return start

    processes = []
    try:
        first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(first)
        wait_for_batch(first.pid)
        killed_in = into_interval(2.0)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(second)
        wait_for_batch(second.pid)
        # Stop in the interval after the new process's first batch: that interval is not counted.
        end = time.time() // interval * interval
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()

    rows = _samples(tmp_path / "sandbox")
    begin = min(row["at"].timestamp() for row in rows) // interval * interval
    keys = {
        target.key
        for slo in load_catalog_file(project_root / "runbooks" / "sandbox.yaml").slos
        for target in slo.targets
    }
    assert {row["target"] for row in rows} == keys
    expected = {begin + interval * i for i in range(int((end - begin) // interval))}
    # The first process's batch, the interval the kill hit, the new process's batch.
    assert len(expected) >= 3
    assert killed_in in expected
    for key in sorted(keys):
        seen = {row["at"].timestamp() // interval * interval for row in rows if row["target"] == key}
        # Only the interval the kill hit is missing (its samples taken before the kill included).
        assert expected - seen <= {killed_in}, (key, sorted(expected - seen), killed_in)


def test_the_sandbox_runs_the_probe_process_and_it_writes_minutes(sandbox_env: dict[str, str]) -> None:
    """`cloudops sandbox up` started the probe process; its samples are in CLOUDOPS_PROBE_SAMPLES."""
    from cloudops.sandbox import estate

    (row,) = [row for row in estate.status() if row.component == "probes"]
    assert row.state == "running", row
    root = Path(sandbox_env["CLOUDOPS_PROBE_SAMPLES"])
    deadline = time.monotonic() + 130  # a fresh sandbox writes its first minute within two
    while not list((root / "sandbox").glob("*/*.parquet")):
        assert time.monotonic() < deadline, f"no sample batch under {root} after 130 s"
        threading.Event().wait(2)
    rows = _samples(root / "sandbox")
    assert {row["target"] for row in rows} >= {"database:orders_pg", "host:web-1", ENDPOINT}
