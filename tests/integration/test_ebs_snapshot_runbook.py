"""ebs_snapshot__<fleet>'s steps against moto's EC2: every host volume snapshotted, pruned by policy."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudops.clouds.aws import SnapshotTargetNotFound, delete_cloud_snapshot, list_cloud_snapshots
from cloudops.runbooks.ebs_snapshot import apply_snapshot_retention, snapshot_volumes

pytestmark = pytest.mark.integration


def catalog(tmp_path: Path, estate: str, hosts: list[str], retention: dict[str, Any]) -> str:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "estate": estate,
                "owner": "tests",
                "clouds": [
                    {"name": "aws", "provider": "aws", "aws_conn_id": "sandbox_aws", "region": "eu-west-1"}
                ],
                "fleets": [
                    {
                        "name": "web",
                        "os_family": "debian",
                        "snapshots": {"cloud": "aws", "retention": retention, "max_delete_share": 1.0},
                        "hosts": [{"name": host, "ssh_conn_id": f"ssh_{i}"} for i, host in enumerate(hosts)],
                    }
                ],
            }
        )
    )
    return str(path)


def test_every_volume_is_snapshotted_and_old_snapshots_pruned(
    tmp_path: Path, sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path / "evidence"))
    estate = f"ebs_{uuid.uuid4().hex[:6]}"
    path = catalog(tmp_path, estate, ["web-1", "web-2"], {"keep_last": 1})
    try:
        first = snapshot_volumes(path, estate, "web")
        # A backup id carries the second it was taken in, and retention orders backups by it: two runs
        # in one second (a quiet machine) would tie for "newest". The second run starts in a later one.
        taken = int(time.time())
        while int(time.time()) == taken:
            time.sleep(0.05)
        second = snapshot_volumes(path, estate, "web")
        assert {s["host"] for s in first["snapshots"]} == {"web-1", "web-2"}
        assert len(second["snapshots"]) == len(first["snapshots"]) >= 2

        dry = apply_snapshot_retention(path, estate, "web", dry_run=True)
        assert dry["deleted"] == []
        run = {"dag_id": "ebs_snapshot__web", "run_id": "ebs-retention-test"}
        result = apply_snapshot_retention(path, estate, "web", evidence=run)

        assert sorted(result["deleted"]) == sorted(s["snapshot"] for s in first["snapshots"])
        # Every snapshot deleted is a ledger fact of this run, with the plan's reason and the policy.
        from cloudops.evidence.ledger import Ledger

        facts = [
            r.fields
            for r in Ledger(tmp_path / "evidence" / "ledger").records()
            if r.kind == "retention.deleted"
        ]
        assert sorted(f["data"]["deleted"] for f in facts) == sorted(result["deleted"])
        assert {(f["dag_id"], f["run_id"]) for f in facts} == {("ebs_snapshot__web", "ebs-retention-test")}
        assert {f["data"]["what"] for f in facts} == {"ebs_snapshot"}
        assert {f["data"]["backup_id"] for f in facts} == {first["backup_id"]}
        assert all(f["data"]["reasons"] == ["not kept by any rule"] for f in facts)
        assert all(f["data"]["policy"] == {"keep_last": 1} for f in facts)
        assert {f["data"]["host"] for f in facts} == {"web-1", "web-2"}
        left = list_cloud_snapshots("sandbox_aws", estate=estate, kind="ebs", fleet="web")
        assert {s.backup_id for s in left} == {second["backup_id"]}
    finally:
        for snapshot in list_cloud_snapshots("sandbox_aws", estate=estate, kind="ebs", fleet="web"):
            delete_cloud_snapshot("sandbox_aws", snapshot, dry_run=False)


def test_host_without_an_instance_is_named(tmp_path: Path, sandbox_env: dict[str, str]) -> None:
    estate = f"ebs_{uuid.uuid4().hex[:6]}"
    path = catalog(tmp_path, estate, ["web-1", "ghost-9"], {"keep_last": 1})
    with pytest.raises(SnapshotTargetNotFound, match="ghost-9"):
        snapshot_volumes(path, estate, "web")
    assert list_cloud_snapshots("sandbox_aws", estate=estate, kind="ebs", fleet="web") == []
