"""The wave's pure parts: go/no-go, compliance per package, which hosts a resume skips, the wave lock,
and the evidence report's patch waves (CC7.1, CC8.1)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from cloudops.evidence.ledger import Ledger
from cloudops.evidence.report import change_rows, patch_rows, render_report
from cloudops.evidence.runs import PATCH_HOST, PATCH_PLANNED, PATCH_WAVE, fold_runs
from cloudops.patching import wave_lock
from cloudops.patching.model import Classification, PackagePin
from cloudops.patching.wave_run import (
    FAILED,
    NOT_STARTED,
    STOP_NOW,
    STOPPED,
    HostOutcome,
    WaveSettings,
    judge_batch,
    resumable_done_hosts,
)

pytestmark = pytest.mark.unit

OPENSSL = PackagePin("demo-openssl", "1.1", "1.0", Classification.SECURITY)
KERNEL = PackagePin("demo-kernel", "6.1.0-2-demo", "6.1.0-1-demo", Classification.SECURITY)
WEB = PackagePin("demo-web", "2.1", "2.0", Classification.UPDATES)


def _failed(name: str) -> HostOutcome:
    return HostOutcome(name, 0, status=FAILED, step="health gate", error="FAIL: 2.1 regression")


def test_a_batch_halts_when_its_failures_exceed_the_limit_not_when_they_equal_it() -> None:
    settings = WaveSettings(max_failures_per_batch=1, failure_budget=1)
    ok = HostOutcome("web-2", 1, status="done")
    decision, reason = judge_batch(1, [ok, _failed("web-3")], 1, settings)
    assert decision == "go"
    assert "within the batch limit of 1" in reason
    decision, reason = judge_batch(2, [_failed("web-4"), _failed("web-5")], 3, settings)
    assert decision == "halt"
    assert "2 of 2 host(s) failed, more than the batch limit of 1" in reason
    assert "web-4: FAILED at health gate: FAIL: 2.1 regression" in reason
    decision, reason = judge_batch(2, [_failed("web-4")], 2, settings)
    assert (decision, "more than its budget of 1" in reason) == ("halt", True)


def test_a_resume_skips_done_hosts_and_a_rolled_back_canary_only_once_its_bad_package_is_rejected() -> None:
    halted = {
        "hosts": {
            "web-1": {
                "status": "failed",
                "rolled_back": ["demo-web"],
                "healthy_after_rollback": True,
                "compliance": {"demo-openssl": "INSTALLED", "demo-web": "HELD"},
            },
            "web-2": {"status": "done"},
            "web-3": {"status": "not_started"},
        }
    }
    assert resumable_done_hosts(halted, rejected={"demo-web"}) == {"web-1", "web-2"}
    assert resumable_done_hosts(halted) == {"web-2"}
    halted["hosts"]["web-1"]["healthy_after_rollback"] = False
    assert resumable_done_hosts(halted, rejected={"demo-web"}) == {"web-2"}


def test_two_waves_of_one_fleet_are_refused_naming_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(wave_lock.STATE_DIR_ENV, str(tmp_path))
    wave_lock.acquire("web", "manual__first")
    wave_lock.acquire("web", "manual__first")  # a retried task of the same run
    with pytest.raises(
        wave_lock.WaveAlreadyRunning, match=r"fleet web: another patch wave is running \(run manual__first"
    ):
        wave_lock.acquire("web", "manual__second")
    wave_lock.acquire("app", "manual__second")  # another fleet is not blocked
    assert not wave_lock.release("web", "manual__second")
    assert wave_lock.release("web", "manual__first")
    wave_lock.acquire("web", "manual__second")


def test_the_evidence_report_shows_each_wave_under_cc71_and_cc81(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger", fsync=False)
    at = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    run = {"dag_id": "patch_wave__web", "run_id": "manual__w1", "runbook": "patch_wave", "target": "web"}
    ledger.append(
        "run.started",
        at=at,
        **run,
        data={"run_type": "manual", "triggered_by": "ui", "triggered_by_user": "alice", "conf": {}},
    )
    snapshot = {"pins": {"web-1": [{"package": "demo-web", "version": "2.1"}]}}
    ledger.append(
        PATCH_PLANNED, at=at, **run, data={"fleet": "web", "snapshot_id": "snap-1", "snapshot": snapshot}
    )
    ledger.append(
        PATCH_HOST,
        at=at,
        **run,
        data={"host": "web-1", "status": "failed", "step": "health gate", "error": "<b>FAIL</b>"},
    )
    ledger.append(
        PATCH_WAVE,
        at=at,
        **run,
        data={
            "fleet": "web",
            "snapshot_id": "snap-1",
            "succeeded": False,
            "reason": "batch 0 halted",
            "compliance": {"HELD": 1},
        },
    )
    runs = fold_runs(ledger.records())
    (row,) = patch_rows(runs)
    assert (row.outcome, row.versions, row.compliance) == ("halted", ("demo-web=2.1",), {"HELD": 1})
    assert row.failed_hosts == ("web-1: health gate: <b>FAIL</b>",)
    assert "patch wave of web halted (snapshot snap-1)" in change_rows(runs)[0].details
    html = render_report(runs, since=at.date(), until=at.date(), generated_at=at.isoformat())
    assert "CC7.1 (vulnerability management)" in html
    assert "&lt;b&gt;FAIL&lt;/b&gt;" in html
    assert "<b>FAIL</b>" not in html


def test_a_resume_reads_the_recorded_snapshot_back_minus_the_rejected_package() -> None:
    from cloudops.catalog import load_catalog_file
    from cloudops.patching.model import HostScan, PendingUpdate
    from cloudops.patching.snapshot import SnapshotInvalidError, plan_snapshot, snapshot_to_json
    from cloudops.runbooks.patch_wave import FleetTarget, plan_wave

    catalog_file = Path(__file__).resolve().parents[2] / "runbooks" / "sandbox.yaml"
    catalog = load_catalog_file(catalog_file)
    web = next(f for f in catalog.fleets if f.name == "web")
    assert web.patching is not None
    baseline = web.patching.baseline.model_copy(update={"classifications": ["security", "updates"]})
    pending = (
        PendingUpdate("demo-openssl", "1.0", "1.1", "cloudops-security", Classification.SECURITY),
        PendingUpdate("demo-web", "2.0", "2.1", "cloudops-updates", Classification.UPDATES),
    )
    scans = [
        HostScan(h.name, pending, installed={"demo-openssl": "1.0", "demo-web": "2.0"}) for h in web.hosts
    ]
    today = datetime.now(UTC)
    snapshot = plan_snapshot("web", scans, [], baseline, today.date())
    planned = {
        "snapshot": snapshot_to_json(snapshot),
        "snapshot_id": snapshot.snapshot_id,
        "batches": [["web-1"], ["web-2"], ["web-3"]],
        "canary_batches": 1,
    }
    wave = {
        "hosts": {
            "web-1": {
                "status": "failed",
                "rolled_back": ["demo-web"],
                "healthy_after_rollback": True,
                "compliance": {"demo-openssl": "INSTALLED", "demo-web": "HELD"},
            }
        }
    }
    target = FleetTarget(str(catalog_file), catalog.estate, "web")
    plan = plan_wave(
        target,
        catalog,
        now=today,
        resume={"run_id": "manual__w1", "planned": planned, "wave": wave},
        reject=["demo-web"],
    )
    assert plan.resumed_from == "manual__w1"
    assert plan.done_hosts == ("web-1",)
    assert {p.package for pins in plan.snapshot.pins.values() for p in pins} == {"demo-openssl"}
    assert plan.batches == (("web-1",), ("web-2",), ("web-3",))
    planned["snapshot"]["pins"]["web-2"][0]["version"] = "9.9"  # altered in the ledger: refused
    with pytest.raises(SnapshotInvalidError):
        plan_wave(
            target, catalog, now=today, resume={"run_id": "manual__w1", "planned": planned, "wave": wave}
        )


def test_stop_now_asks_hosts_to_stop_only_once_the_cutoff_passed() -> None:
    from cloudops.patching.wave_run import _stop_check

    cutoff = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
    clock = [cutoff - timedelta(seconds=1)]
    stop = _stop_check(WaveSettings(cutoff=cutoff, cutoff_behaviour=STOP_NOW), lambda: clock[0])
    assert stop() is None
    clock[0] = cutoff
    assert f"the window's cutoff {cutoff.isoformat()} passed" in (stop() or "")
    # finish_batch, or no cutoff: a running batch is never stopped.
    assert _stop_check(WaveSettings(cutoff=cutoff), lambda: clock[0])() is None
    assert _stop_check(WaveSettings(cutoff_behaviour=STOP_NOW), lambda: clock[0])() is None
    with pytest.raises(ValueError, match="cutoff_behaviour 'cancel' is neither"):
        WaveSettings(cutoff_behaviour="cancel")


def test_a_stopped_host_says_the_step_it_stopped_before_and_what_it_was_left_in() -> None:
    stopped = HostOutcome(
        "app-2",
        0,
        status=STOPPED,
        step="reboot",
        changed=True,
        compliance={"demo-kernel": "INSTALLED_PENDING_REBOOT", "demo-slow": "INSTALLED"},
        pre_hook_ran=True,
    )
    assert stopped.summary() == (
        "app-2: STOPPED before reboot (packages changed: demo-kernel INSTALLED_PENDING_REBOOT, "
        "demo-slow INSTALLED; its pre hook ran and its post hook did not)"
    )
    early = HostOutcome("app-3", 0, status=STOPPED, step="install")
    assert early.summary() == "app-3: STOPPED before install (nothing changed)"
    assert HostOutcome("app-1", 1, status=NOT_STARTED).summary() == "app-1: not started (untouched)"


def test_the_runbook_passes_the_windows_cutoff_behaviour_to_the_wave() -> None:
    from cloudops.catalog.models import PatchingPolicy
    from cloudops.patching.snapshot import Snapshot
    from cloudops.runbooks.patch_wave import WavePlan, settings_for

    window = {"days": ["mon"], "start": "02:00", "duration": "3h", "cutoff": "1h"}
    cutoff = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
    plan = WavePlan(Snapshot("app", date(2026, 12, 7), {}, (), ()), (), 1, {}, (), None, "", cutoff)
    for behaviour in ("stop_now", "finish_batch"):
        policy = PatchingPolicy.model_validate({"window": window | {"cutoff_behaviour": behaviour}})
        settings = settings_for(policy, plan)
        assert (settings.cutoff, settings.cutoff_behaviour) == (cutoff, behaviour)
    assert settings_for(PatchingPolicy.model_validate({}), plan).cutoff_behaviour == "finish_batch"
