"""`failover_drill__<cluster>`'s library path (what the runbook's tasks and `cloudops failover drill`
call) on the sandbox's native PostgreSQL pair, orders_pg_cluster: a planned drill passes and leaves
its record in the ledger and in S3 beside the backups; and the faults, each refused before anything
moves with a message naming cluster, node and cause: a replica lagging past the bound (its replay
paused), the candidate down, a drill started twice, the crash mode where the catalog does not allow
it (and where it does, the sandbox pair's socket in its data directory), the probe's connection
wrong, a manager not available.

The sandbox's pair is switched over and failed back by the passing drill: it ends as it began
(orders_pg primary, orders_pg_replica streaming), which the test checks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudops.catalog import load_catalog_file
from cloudops.failover import lease
from cloudops.failover.registry import MANAGER_BUILDERS, ManagerNotAvailable
from cloudops.runbooks import failover_drill as runbook

pytestmark = pytest.mark.integration

CLUSTER = "orders_pg_cluster"
USED_BY = "failover drill runbook test"


@pytest.fixture
def evidence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox_env: dict[str, str]) -> Path:
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path / "evidence"))
    monkeypatch.setenv(lease.STATE_DIR_ENV, str(tmp_path / "leases"))
    return tmp_path / "evidence"


def _catalog_file(tmp_path: Path, project_root: Path, edit: Any = None) -> Path:
    document = yaml.safe_load((project_root / "runbooks" / "sandbox.yaml").read_text())
    if edit is not None:
        edit(next(c for c in document["clusters"] if c["name"] == CLUSTER))
    folder = tmp_path / "runbooks"
    folder.mkdir(exist_ok=True)
    path = folder / "sandbox.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _target(path: Path) -> tuple[runbook.ClusterTarget, Any]:
    catalog = load_catalog_file(path)
    return runbook.ClusterTarget(str(path), catalog.estate, CLUSTER), catalog


def _primary_now() -> str | None:
    from cloudops.engines.postgres import topology

    found = topology(
        CLUSTER,
        {"orders_pg": "sandbox_pg_primary", "orders_pg_replica": "sandbox_pg_replica"},
        used_by=USED_BY,
    )
    return found.primary


@pytest.fixture
def sandbox_pair(sandbox_env: dict[str, str]) -> Iterator[None]:
    assert _primary_now() == "orders_pg", "the sandbox's orders_pg must be primary before the test"
    yield
    assert _primary_now() == "orders_pg", "the test left the sandbox's pair switched over"


def _refusals(planned: Any) -> list[str]:
    return [d.reason for d in planned.checked.decisions if not d.passed]


def test_planned_drill_passes_and_is_recorded_in_the_ledger_and_s3(
    evidence: Path,
    tmp_path: Path,
    project_root: Path,
    sandbox_pair: None,
    s3: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cloudops.evidence.ledger import Ledger
    from cloudops.evidence.runs import FAILOVER_DRILL

    monkey_catalog = _catalog_file(tmp_path, project_root)
    monkeypatch.setenv("CLOUDOPS_CATALOG", str(monkey_catalog.parent))
    exit_code = runbook.cli_drill(CLUSTER, say=print)
    printed = capsys.readouterr().out
    assert exit_code == 0, printed
    facts = [r for r in Ledger(evidence / "ledger").records() if r.kind == FAILOVER_DRILL]
    assert len(facts) == 1
    fact = facts[0].fields["data"]
    assert fact["verdict"] == "PASS", fact
    assert (fact["original_primary"], fact["new_primary"], fact["failed_back"], fact["moved"]) == (
        "orders_pg",
        "orders_pg",
        True,
        True,
    )
    figures = fact["figures"]
    assert figures["acked_writes_lost"] == 0
    assert 0 < figures["write_downtime_s"] <= 1.0
    assert figures["drill_seconds"] <= 60
    assert fact["lag_bytes_at_injection"] is not None
    print(
        f"\nrunbook drill on the sandbox pair: write downtime {figures['write_downtime_s']:.3f} s, "
        f"{figures['acked_writes_lost']} acked lost of {figures['acked']}, "
        f"drill {figures['drill_seconds']:.2f} s"
    )
    # The JSON record beside the backups, byte for byte what the fact's hash says.
    bucket, key = fact["record_key"].removeprefix("s3://").split("/", 1)
    assert key.startswith(f"backups/sandbox/_failover_drills/{CLUSTER}/")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == fact["record_sha256"]
    record = json.loads(body)
    assert record["verdict"] == "PASS"
    assert float(record["server_evidence"]["lag_recheck_to_action_s"]) < 1.0
    assert [p["name"] for p in record["phases"] if p["name"].endswith(".promote")] == [
        "switchover.promote",
        "fail_back.promote",
    ]
    assert "no rewind required" in record["server_evidence"]["switchover.rejoin"]
    assert {d["guard"] for d in record["preflight"]} >= {
        "catalog_topology",
        "running_work",
        "probe",
        "lag",
        "interval",
    }
    password = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_ORDERS_PG_PROBE"])["password"]
    assert password not in body.decode()
    # A second drill right after is inside the minimum interval (1 min): refused, read from the ledger.
    target, catalog = _target(monkey_catalog)
    again = runbook.run_preflight(target, catalog, run_id="second")
    assert not again.passed
    assert any(
        r.startswith(f"{CLUSTER}: the last drill was at ") and "minimum interval is 1 min" in r
        for r in _refusals(again)
    )


def _replica_session(dbname: str = "postgres") -> Any:
    import psycopg

    from cloudops.connections import get_connection

    conn = get_connection("sandbox_pg_replica", USED_BY)
    return psycopg.connect(
        host=conn.host,
        port=conn.port,
        user=conn.login,
        password=conn.password,
        dbname=dbname,
        autocommit=True,
    )


def _primary_session() -> Any:
    import psycopg

    from cloudops.connections import get_connection

    conn = get_connection("sandbox_pg_primary", USED_BY)
    return psycopg.connect(
        host=conn.host,
        port=conn.port,
        user=conn.login,
        password=conn.password,
        dbname="postgres",
        autocommit=True,
    )


def test_a_replica_lagging_past_the_bound_is_refused_before_anything_moves(
    evidence: Path, tmp_path: Path, project_root: Path, sandbox_pair: None
) -> None:
    def tight(cluster: dict[str, Any]) -> None:
        cluster["drill"]["guards"]["max_lag_bytes"] = 1024

    target, catalog = _target(_catalog_file(tmp_path, project_root, tight))
    with _replica_session() as replica:
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            with _primary_session() as primary:
                primary.execute("CREATE TABLE cloudops_test_lag AS SELECT generate_series(1, 5000) AS n")
                primary.execute("DROP TABLE cloudops_test_lag")
            record = runbook.run_drill(target, catalog, run_id="lagging")
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")
    assert record["refused"] is True
    assert record["moved"] is False
    lag = next(d for d in record["preflight"] if d["guard"] == "lag")
    assert not lag["passed"]
    assert lag["reason"].startswith(f"{CLUSTER}: orders_pg_replica is ")
    assert "bytes behind orders_pg (bound 1024)" in lag["reason"]
    assert runbook.judge(record)["verdict"] == "REFUSED"


def test_candidate_down_is_refused_naming_it_and_the_cause(
    evidence: Path, tmp_path: Path, project_root: Path, sandbox_pair: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDOPS_TEST_GHOST_PG",
        json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": 1, "login": "cloudops", "password": "x"}
        ),
    )

    def ghost(cluster: dict[str, Any]) -> None:
        cluster["members"].append({"name": "ghost_pg", "conn_id": "cloudops_test_ghost_pg"})

    target, catalog = _target(_catalog_file(tmp_path, project_root, ghost))
    planned = runbook.run_preflight(target, catalog, run_id="ghost", candidate="ghost_pg")
    refusals = _refusals(planned)
    assert any(r.startswith(f"{CLUSTER}: candidate ghost_pg (127.0.0.1:1) is down: ") for r in refusals), (
        refusals
    )
    assert any("ghost_pg (127.0.0.1:1) is down" in r and "does not match the catalog" in r for r in refusals)


def test_a_drill_started_twice_is_refused_naming_the_running_one(
    evidence: Path, tmp_path: Path, project_root: Path, sandbox_pair: None
) -> None:
    target, catalog = _target(_catalog_file(tmp_path, project_root))
    lease.acquire("sandbox", CLUSTER, "first-run")
    try:
        with pytest.raises(lease.DrillAlreadyRunning) as refused:
            runbook.run_drill(target, catalog, run_id="second-run")
    finally:
        lease.release("sandbox", "first-run")
    assert str(refused.value).startswith(
        f"cluster {CLUSTER}: refused, nothing was moved: a failover drill of estate sandbox is already "
        f"running on cluster {CLUSTER} (run first-run, since "
    )


def test_crash_mode_is_refused_where_the_catalog_does_not_allow_it(
    evidence: Path, tmp_path: Path, project_root: Path, sandbox_pair: None
) -> None:
    def planned_only(cluster: dict[str, Any]) -> None:
        cluster["drill"]["modes"] = ["planned"]

    target, catalog = _target(_catalog_file(tmp_path, project_root, planned_only))
    record = runbook.run_drill(target, catalog, run_id="crash", mode="crash")
    assert record["refused"] is True
    reasons = [d["reason"] for d in record["preflight"] if not d["passed"]]
    assert f"{CLUSTER}: mode 'crash' is not allowed for this cluster (allowed: planned)" in reasons
    assert record["moved"] is False


def test_a_crash_drill_of_the_sandbox_pair_kills_the_primary_rewinds_it_and_fails_back(
    evidence: Path, tmp_path: Path, project_root: Path, sandbox_pair: None
) -> None:
    """Where the catalog allows it: the primary's postmaster is killed (-9), the replica promoted, the
    crashed node rewound (its socket lives beside its data directory, so pg_rewind can copy) and
    rejoined, then failed back; the crash targets of the catalog judge it."""
    target, catalog = _target(_catalog_file(tmp_path, project_root))
    record = runbook.run_drill(target, catalog, run_id="crash-sandbox", mode="crash")

    assert record["refused"] is False, [d for d in record["preflight"] if not d["passed"]]
    assert record["verdict"] == "PASS", record.get("verdicts")
    assert (record["mode"], record["pre_state"]["primary"], record["moved"], record["final_primary"]) == (
        "crash",
        "orders_pg",
        True,
        "orders_pg",  # failed back
    )
    figures = runbook.drill_figures(record)
    assert figures["acked_writes_lost"] == 0
    assert figures["write_downtime_s"] <= 3.0  # the catalog's crash target
    print(
        f"\ncrash drill on the sandbox pair: write downtime {figures['write_downtime_s']:.3f} s, "
        f"{figures['acked_writes_lost']} acked lost of {figures['acked']}, "
        f"drill {figures['drill_seconds']:.2f} s"
    )


def test_a_wrong_probe_connection_is_refused_naming_hosts_and_cause(
    evidence: Path, tmp_path: Path, project_root: Path, sandbox_pair: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_ORDERS_PG_PROBE"])
    replica_port = json.loads(os.environ["AIRFLOW_CONN_SANDBOX_PG_REPLICA"])["port"]
    # Only the replica in the host list: read-write routing finds no writer.
    wrong = {**probe, "host": "127.0.0.1", "extra": {**probe["extra"], "port": str(replica_port)}}
    monkeypatch.setenv("AIRFLOW_CONN_SANDBOX_ORDERS_PG_PROBE", json.dumps(wrong))
    target, catalog = _target(_catalog_file(tmp_path, project_root))
    record = runbook.run_drill(target, catalog, run_id="probe")
    assert record["refused"] is True
    assert record["moved"] is False
    reason = next(d["reason"] for d in record["preflight"] if d["guard"] == "probe")
    assert reason.startswith(f"{CLUSTER}: the probe's connection reaches no writer: ")
    assert "(hosts 127.0.0.1)" in reason
    assert probe["password"] not in json.dumps(record)


def test_a_cluster_whose_manager_is_not_available_is_refused(
    evidence: Path, tmp_path: Path, project_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(MANAGER_BUILDERS, "patroni", None)
    catalog = load_catalog_file(_catalog_file(tmp_path, project_root))
    target = runbook.ClusterTarget(str(tmp_path / "runbooks" / "sandbox.yaml"), "sandbox", "ledger_patroni")
    with pytest.raises(
        ManagerNotAvailable, match=r"^cluster ledger_patroni: manager 'patroni' is not available"
    ):
        runbook.run_drill(target, catalog, run_id="patroni")
    assert lease.holder("sandbox") is None  # the lease is given back
