"""`failover_drill__orders_pg_cluster` through Airflow (`airflow dags test`) on the sandbox's native
PostgreSQL pair: a planned drill passes, fails back, and records its fact and its S3 record; a dry run
moves nothing and records no drill; and two faults end the run with a message naming cluster and
cause: the crash mode on a cluster whose catalog allows only planned drills, and a drill started
while another one of the estate holds the lease. The other faults are tested on the library path
(tests/integration/test_failover_drill_runbook.py).
"""

from __future__ import annotations

import email
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

DAG_ID = "failover_drill__orders_pg_cluster"


def _records(evidence: Path) -> list[Any]:
    from cloudops.evidence.ledger import Ledger

    return list(Ledger(evidence / "ledger").records())


def _dags_test_with_conf(
    airflow_env: dict[str, str], conf: dict[str, Any], **extra_env: str
) -> CompletedProcess[str]:
    return subprocess.run(
        ["airflow", "dags", "test", "--conf", json.dumps(conf), DAG_ID],
        env={**airflow_env, **extra_env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_planned_drill_passes_through_airflow_and_is_recorded(
    dags_test: Callable[..., CompletedProcess[str]], tmp_path: Path, airflow_env: dict[str, str]
) -> None:
    from cloudops.evidence.runs import FAILOVER_DRILL, RUN_FINISHED

    evidence = tmp_path / "evidence"
    mail_dir = Path(airflow_env["CLOUDOPS_SANDBOX_DIR"]) / "mail"
    before = set(mail_dir.glob("*.eml"))
    run = dags_test(
        DAG_ID, CLOUDOPS_EVIDENCE_DIR=str(evidence), CLOUDOPS_FAILOVER_STATE_DIR=str(tmp_path / "leases")
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    records = _records(evidence)
    facts = [r.fields["data"] for r in records if r.kind == FAILOVER_DRILL]
    assert len(facts) == 1
    fact = facts[0]
    assert fact["verdict"] == "PASS", fact
    assert fact["failed_back"] is True
    assert fact["figures"]["acked_writes_lost"] == 0
    assert fact["record_key"].startswith("s3://cloudops-sandbox-backups/backups/sandbox/_failover_drills/")
    finished = [r.fields["data"] for r in records if r.kind == RUN_FINISHED]
    assert finished[-1]["state"] == "success"
    assert not (tmp_path / "leases" / "sandbox.lease").exists()
    # notify: the outcome reached the estate's e-mail target (the sandbox's SMTP sink).
    messages = [email.message_from_bytes(p.read_bytes()) for p in set(mail_dir.glob("*.eml")) - before]
    assert "[cloudops][sandbox] failover drill PASS (orders_pg_cluster)" in [m["Subject"] for m in messages]


def test_dry_run_moves_nothing_and_records_no_drill(
    airflow_env: dict[str, str], tmp_path: Path, sandbox_env: dict[str, str]
) -> None:
    from cloudops.evidence.runs import FAILOVER_DRILL

    evidence = tmp_path / "evidence"
    run = _dags_test_with_conf(airflow_env, {"dry_run": True}, CLOUDOPS_EVIDENCE_DIR=str(evidence))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    output = run.stdout + run.stderr
    assert (
        "plan (dry run: nothing moves): orders_pg_cluster (native-pg): planned switchover orders_pg ->"
        in output
    )
    assert not [r for r in _records(evidence) if r.kind == FAILOVER_DRILL]


def test_crash_mode_refused_where_the_catalog_allows_only_planned(
    airflow_env: dict[str, str], tmp_path: Path, project_root: Path
) -> None:
    document = yaml.safe_load((project_root / "runbooks" / "sandbox.yaml").read_text())
    cluster = next(c for c in document["clusters"] if c["name"] == "orders_pg_cluster")
    cluster["drill"]["modes"] = ["planned"]
    catalogs = tmp_path / "runbooks"
    catalogs.mkdir()
    (catalogs / "sandbox.yaml").write_text(yaml.safe_dump(document))
    run = _dags_test_with_conf(
        airflow_env,
        {"mode": "crash"},
        CLOUDOPS_CATALOG=str(catalogs),
        CLOUDOPS_EVIDENCE_DIR=str(tmp_path / "evidence"),
    )
    assert run.returncode != 0
    assert (
        "refused, nothing was moved: orders_pg_cluster: drill refused: orders_pg_cluster: mode 'crash' is "
        "not allowed for this cluster (allowed: planned)"
    ) in run.stdout + run.stderr


def test_a_drill_started_while_another_holds_the_estate_lease_fails_naming_it(
    dags_test: Callable[..., CompletedProcess[str]], tmp_path: Path
) -> None:
    leases = tmp_path / "leases"
    leases.mkdir()
    (leases / "sandbox.lease").write_text(
        json.dumps({"cluster": "ledger_patroni", "run_id": "other-run", "since": "2026-12-03T07:00:00+00:00"})
    )
    run = dags_test(
        DAG_ID, CLOUDOPS_EVIDENCE_DIR=str(tmp_path / "evidence"), CLOUDOPS_FAILOVER_STATE_DIR=str(leases)
    )
    assert run.returncode != 0
    assert (
        "cluster orders_pg_cluster: refused, nothing was moved: a failover drill of estate sandbox is "
        "already running on cluster ledger_patroni (run other-run, since 2026-12-03T07:00:00+00:00)"
    ) in run.stdout + run.stderr
    assert (leases / "sandbox.lease").exists()  # never taken over
