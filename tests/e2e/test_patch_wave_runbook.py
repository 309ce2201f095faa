"""`patch_wave__web` through Airflow (`airflow dags test`) on the sandbox's Debian hosts.

The sandbox's baseline takes security updates only, so demo-web 2.1 (the update that breaks health)
is left out and the wave succeeds: canary web-1, then web-2, then web-3, each rebooted for its
new demo-kernel. The breaking update itself, rollback and resume are tested at library level
(tests/integration/test_patch_wave_hosts.py), as are the faults.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

pytestmark = pytest.mark.e2e


def _quiet(_: str) -> None:
    pass


def test_patch_wave_succeeds_and_records_snapshot_hosts_and_compliance(
    dags_test: Callable[..., CompletedProcess[str]], tmp_path: Path
) -> None:
    from cloudops.evidence.ledger import Ledger
    from cloudops.evidence.runs import PATCH_HOST, PATCH_PLANNED, PATCH_WAVE
    from cloudops.sandbox import estate

    estate.reset_hosts(fleet="web", say=_quiet)
    run = dags_test(
        "patch_wave__web",
        CLOUDOPS_EVIDENCE_DIR=str(tmp_path / "evidence"),
        CLOUDOPS_PATCH_STATE_DIR=str(tmp_path / "state"),
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    records = list(Ledger(tmp_path / "evidence" / "ledger").records())
    kinds = [r.kind for r in records]
    # The snapshot is recorded before any host's outcome.
    assert kinds.index(PATCH_PLANNED) < kinds.index(PATCH_HOST)
    planned = next(r for r in records if r.kind == PATCH_PLANNED).fields["data"]
    versions = {p["package"]: p["version"] for pins in planned["snapshot"]["pins"].values() for p in pins}
    assert versions == {"demo-kernel": "6.1.0-2-demo", "demo-openssl": "1.1"}
    assert planned["batches"] == [["web-1"], ["web-2"], ["web-3"]]  # serial [1, "100%"] after the canary
    hosts = {r.fields["data"]["host"]: r.fields["data"] for r in records if r.kind == PATCH_HOST}
    assert set(hosts) == {"web-1", "web-2", "web-3"}
    for data in hosts.values():
        assert data["status"] == "done"
        assert data["rebooted"]
        assert data["boot_id_after"] != data["boot_id_before"]
        assert data["compliance"] == {"demo-kernel": "INSTALLED", "demo-openssl": "INSTALLED"}
    wave = next(r for r in records if r.kind == PATCH_WAVE).fields["data"]
    assert wave["succeeded"]
    assert wave["compliance"] == {"INSTALLED": 6}
    assert [b["decision"] for b in wave["batches"]] == ["go", "go", "go"]
    assert not (tmp_path / "state" / "web.lock").exists()
    for record in records:
        assert "BEGIN OPENSSH PRIVATE KEY" not in str(record.fields)
