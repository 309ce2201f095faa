"""Pure planning of a patch wave: snapshot, batches, go/no-go, window, compliance, resume, timing, dnf."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from cloudops.catalog.models import Fleet, PatchBaseline, PatchWaves, PatchWindow
from cloudops.patching.compliance import InstallResult, assess_host, summarise_fleet
from cloudops.patching.debian_version import compare_versions
from cloudops.patching.dnf_output import DnfCheckUpdateError, parse_check_update
from cloudops.patching.model import Advisory, Classification, ComplianceState, HostScan, PendingUpdate
from cloudops.patching.resume import HostOutcome, ResumeRefused, plan_resume
from cloudops.patching.snapshot import (
    SnapshotInvalidError,
    UnknownPackageError,
    plan_snapshot,
    snapshot_from_json,
    snapshot_to_json,
)
from cloudops.patching.timing import HostTiming, wave_timing
from cloudops.patching.waves import Batch, batch_size, decide_after_batch, plan_batches
from cloudops.patching.window import check_window, forecast_batch, next_batch_fits

pytestmark = pytest.mark.unit
DATA = Path(__file__).parent / "data" / "dnf"
TODAY = date(2026, 12, 2)
SEC, UPD = Classification.SECURITY, Classification.UPDATES


def scan(host: str, *, held: frozenset[str] = frozenset(), **extra: object) -> HostScan:
    pending = (
        PendingUpdate("demo-openssl", "1.0", "1.1", "demo-security", SEC),
        PendingUpdate("demo-kernel", "6.1.0-1-demo", "6.1.0-2-demo", "demo-security", SEC),
        PendingUpdate("demo-web", "2.0", "2.1", "demo-updates", UPD),
        PendingUpdate("demo-tools", "1.0", "1.1", "demo-updates", UPD),
    )
    installed = {"demo-openssl": "1.0", "demo-kernel": "6.1.0-1-demo", "demo-web": "2.0", "demo-tools": "1.0"}
    return HostScan(host, pending, installed, held, **extra)  # type: ignore[arg-type]


ADVISORIES = (
    Advisory("DSA-9001-1", "demo-openssl", "1.1", ("CVE-2026-0001",), "high", date(2026, 11, 20)),
    Advisory("DSA-9002-1", "demo-kernel", "6.1.0-2-demo", ("CVE-2026-0002",), "critical", date(2026, 11, 30)),
)
HOSTS = ["web-1", "web-2", "web-3"]


def fleet(count: int = 3, canaries: int = 1) -> Fleet:
    return Fleet.model_validate(
        {
            "name": "web",
            "os_family": "debian",
            "hosts": [
                {"name": f"web-{i}", "ssh_conn_id": f"c{i}", "groups": ["canary"] if i <= canaries else []}
                for i in range(1, count + 1)
            ],
        }
    )


# --- snapshot -------------------------------------------------------------------------------------


def test_security_baseline_leaves_the_breaking_update_out() -> None:
    snapshot = plan_snapshot("web", [scan(h) for h in HOSTS], ADVISORIES, PatchBaseline(), TODAY)
    assert snapshot.versions == {"demo-openssl": "1.1", "demo-kernel": "6.1.0-2-demo"}
    assert all(len(snapshot.pins[h]) == 2 for h in HOSTS)
    web = [o for o in snapshot.left_out if o.package == "demo-web"]
    assert {o.kind for o in web} == {"classification"}
    assert "classification updates is not in the baseline (security)" in web[0].reason


def test_approval_delay_counts_days_from_the_advisory() -> None:
    baseline = PatchBaseline(approve_after_days=7)
    snapshot = plan_snapshot("web", [scan("web-1")], ADVISORIES, baseline, TODAY)
    assert snapshot.versions == {"demo-openssl": "1.1"}
    kernel = next(o for o in snapshot.left_out if o.package == "demo-kernel")
    assert kernel.kind == "not_yet_approved"
    assert "5 day(s) to go (advisory DSA-9002-1 published 2026-11-30" in kernel.reason


def test_no_advisory_needs_explicit_approval_when_delayed() -> None:
    baseline = PatchBaseline(
        classifications=["security", "updates"], approve_after_days=1, approved=["demo-tools"]
    )
    snapshot = plan_snapshot("web", [scan("web-1")], ADVISORIES, baseline, TODAY)
    assert "demo-tools" in snapshot.versions
    web = next(o for o in snapshot.left_out if o.package == "demo-web")
    assert web.kind == "no_advisory"
    assert "list it in baseline.approved" in web.reason


def test_rejected_held_and_excluded_are_left_out_with_reasons() -> None:
    baseline = PatchBaseline(rejected=["demo-kernel"], excluded_hosts=["web-3"])
    scans = [scan("web-1"), scan("web-2", held=frozenset({"demo-openssl"})), scan("web-3")]
    snapshot = plan_snapshot("web", scans, ADVISORIES, baseline, TODAY)
    kinds = {(o.host, o.package): o.kind for o in snapshot.left_out}
    assert kinds[("web-1", "demo-kernel")] == "rejected"
    assert kinds[("web-2", "demo-openssl")] == "held"
    assert kinds[("web-3", "demo-openssl")] == "excluded"
    assert "web-3" not in snapshot.pins
    assert snapshot.pins["web-2"] == ()
    assert snapshot.excluded_hosts == ("web-3",)


def test_fleet_wide_version_is_the_newest_approved_candidate() -> None:
    older = HostScan("web-2", (PendingUpdate("demo-openssl", "1.0", "1.0+deb1", "demo-security", SEC),), {})
    snapshot = plan_snapshot("web", [scan("web-1"), older], ADVISORIES, PatchBaseline(), TODAY)
    assert [p.apt_spec for p in snapshot.pins["web-2"]] == ["demo-openssl=1.1"]


def test_unknown_package_in_the_baseline_is_named() -> None:
    with pytest.raises(UnknownPackageError, match=r"approved names package\(s\).*demo-opensl.*did you mean"):
        plan_snapshot("web", [scan("web-1")], ADVISORIES, PatchBaseline(approved=["demo-opensl"]), TODAY)


def test_all_hosts_excluded_gives_an_empty_snapshot() -> None:
    baseline = PatchBaseline(excluded_hosts=HOSTS)
    snapshot = plan_snapshot("web", [scan(h) for h in HOSTS], ADVISORIES, baseline, TODAY)
    assert snapshot.empty
    assert plan_batches(fleet(), PatchWaves(), snapshot.excluded_hosts) == []


def test_snapshot_id_is_stable_and_content_bound() -> None:
    first = plan_snapshot("web", [scan(h) for h in HOSTS], ADVISORIES, PatchBaseline(), TODAY)
    again = plan_snapshot(
        "web", [scan(h) for h in reversed(HOSTS)], ADVISORIES, PatchBaseline(), date(2026, 12, 3)
    )
    assert first.snapshot_id == again.snapshot_id
    other = plan_snapshot("web", [scan(h) for h in HOSTS], (), PatchBaseline(approved=["demo-web"]), TODAY)
    assert other.snapshot_id != first.snapshot_id


def test_snapshot_round_trips_through_json() -> None:
    snapshot = plan_snapshot("web", [scan(h) for h in HOSTS], ADVISORIES, PatchBaseline(), TODAY)
    data = snapshot_to_json(snapshot)
    back = snapshot_from_json(data, fleet="web", hosts=HOSTS, expected_id=snapshot.snapshot_id)
    assert back == snapshot


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["pins"]["web-1"][0].update(version="9.9"), "it was changed after it was recorded"),
        (lambda d: d["pins"].update({"evil-host": []}), "'evil-host' is not a host of fleet 'web'"),
        (lambda d: d["pins"]["web-1"][0].update(package="x; rm -rf /"), "package"),
        (lambda d: d.update(fleet="app"), "it is for fleet 'app'"),
        (lambda d: d.update(format=2), "not a format 1 snapshot"),
        (lambda d: d["pins"]["web-1"][0].update(classification="urgent"), "unknown classification"),
    ],
)
def test_read_back_snapshot_is_untrusted(change: object, message: str) -> None:
    snapshot = plan_snapshot("web", [scan(h) for h in HOSTS], ADVISORIES, PatchBaseline(), TODAY)
    data = copy.deepcopy(snapshot_to_json(snapshot))
    change(data)  # type: ignore[operator]
    with pytest.raises(SnapshotInvalidError, match=message):
        snapshot_from_json(data, fleet="web", hosts=HOSTS)


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ("1.0", "1.1", -1),
        ("1.1~rc1", "1.1", -1),
        ("1:0.9", "2.0", 1),
        ("6.1.0-2-demo", "6.1.0-1-demo", 1),
        ("2.0", "2.0", 0),
    ],
)
def test_debian_version_order(left: str, right: str, expected: int) -> None:
    assert compare_versions(left, right) == expected


# --- batches and go/no-go -------------------------------------------------------------------------


def test_canaries_first_then_serial_sizes_last_repeats() -> None:
    batches = plan_batches(fleet(10, canaries=1), PatchWaves(batches=[1, "30%"]))
    assert [len(b.hosts) for b in batches] == [1, 1, 3, 3, 2]
    assert batches[0].canary
    assert batches[0].hosts == ("web-1",)
    assert [b.index for b in batches] == [0, 1, 2, 3, 4]


def test_percentages_round_down_never_below_one() -> None:
    assert batch_size("30%", 20) == 6
    assert batch_size("10%", 5) == 1
    assert batch_size("100%", 1) == 1


def test_one_host_fleet_is_one_canary_batch() -> None:
    assert plan_batches(fleet(1, canaries=1), PatchWaves(batches=[1, "100%"])) == [Batch(0, ("web-1",), True)]
    assert plan_batches(fleet(1, canaries=0), PatchWaves(canary_group=None)) == [Batch(0, ("web-1",))]


def test_batch_limit_is_exceeded_not_equalled() -> None:
    waves = PatchWaves(max_failed_per_batch="50%", failure_budget=10)
    batch = Batch(1, ("a", "b", "c", "d"))
    equal = decide_after_batch(waves, batch, ["a", "b"], 2, 10, 2)
    assert equal.go, equal.reason
    over = decide_after_batch(waves, batch, ["a", "b", "c"], 3, 10, 2)
    assert not over.go
    assert (
        "3 of 4 host(s) of the batch 1 failed (a, b, c), more than max_failed_per_batch 50% of 4 hosts = 2"
        in over.reason
    )


def test_zero_limit_halts_on_the_canarys_failure() -> None:
    decision = decide_after_batch(PatchWaves(), Batch(0, ("web-1",), True), ["web-1"], 1, 3, 2)
    assert not decision.go
    assert "canary batch failed (web-1)" in decision.reason


def test_budget_exhausted_mid_wave() -> None:
    waves = PatchWaves(max_failed_per_batch=1, failure_budget=2)
    first = decide_after_batch(waves, Batch(1, ("a", "b")), ["a"], 1, 6, 2)
    second = decide_after_batch(waves, Batch(2, ("c", "d")), ["c"], 2, 6, 1)
    third = decide_after_batch(waves, Batch(3, ("e", "f")), ["e"], 3, 6, 0)
    assert first.go
    assert second.go
    assert not third.go
    assert "3 host(s) failed in the wave so far, more than failure_budget 2" in third.reason


def test_last_batch_ends_the_wave() -> None:
    decision = decide_after_batch(PatchWaves(), Batch(1, ("a",)), [], 0, 2, 0)
    assert not decision.go
    assert decision.reason.startswith("done:")


# --- window -------------------------------------------------------------------------------------


WINDOW = PatchWindow(
    days=["sat", "sun"], start="02:00", duration=timedelta(hours=3), cutoff=timedelta(hours=1)
)


def test_inside_the_window_gives_the_cutoff() -> None:
    now = datetime(2026, 12, 5, 1, 30, tzinfo=UTC)  # Sat 02:30 in Paris (UTC+1)
    check = check_window(WINDOW, "Europe/Paris", now)
    assert check.open, check.reason
    assert check.cutoff_at == datetime(2026, 12, 5, 3, 0, tzinfo=UTC)


def test_past_the_cutoff_refuses_with_a_clear_message() -> None:
    check = check_window(WINDOW, "Europe/Paris", datetime(2026, 12, 5, 3, 15, tzinfo=UTC))
    assert not check.open
    assert "past its cutoff Sat 2026-12-05 04:00 CET" in check.reason
    assert "no batch may start" in check.reason


def test_outside_the_window_names_the_next_opening() -> None:
    check = check_window(WINDOW, "Europe/Paris", datetime(2026, 12, 2, 12, 0, tzinfo=UTC))
    assert not check.open
    assert "the next opens Sat 2026-12-05 02:00 CET" in check.reason


def test_dst_change_inside_a_window_keeps_elapsed_duration() -> None:
    # Sun 2026-03-29: Paris goes from 02:00 CET to 03:00 CEST. A 01:00 window of 3h closes at 05:00 CEST.
    window = PatchWindow(
        days=["sun"], start="01:00", duration=timedelta(hours=3), cutoff=timedelta(minutes=30)
    )
    check = check_window(window, "Europe/Paris", datetime(2026, 3, 29, 0, 30, tzinfo=UTC))
    assert check.open, check.reason
    assert check.opens == datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    assert check.closes == datetime(2026, 3, 29, 3, 0, tzinfo=UTC)
    assert "no new batch after Sun 2026-03-29 04:30 CEST" in check.reason


def test_window_crossing_midnight_is_open_the_next_day() -> None:
    window = PatchWindow(days=["fri"], start="23:00", duration=timedelta(hours=4))
    assert check_window(window, "UTC", datetime(2026, 12, 5, 1, 0, tzinfo=UTC)).open  # Sat 01:00


def test_next_batch_that_would_run_past_the_cutoff_does_not_start() -> None:
    now = datetime(2026, 12, 5, 2, 40, tzinfo=UTC)
    check = check_window(WINDOW, "Europe/Paris", now)
    forecast = forecast_batch(timedelta(minutes=5), [timedelta(minutes=12), timedelta(minutes=30)])
    assert forecast == timedelta(minutes=30)
    decision = next_batch_fits(check, now, forecast)
    assert not decision.go
    assert "forecast to take 30m" in decision.reason
    assert next_batch_fits(check, now, timedelta(minutes=5)).go
    assert forecast_batch(timedelta(minutes=5), []) == timedelta(minutes=5)


def test_no_window_is_always_open() -> None:
    check = check_window(None, "UTC", datetime(2026, 12, 5, tzinfo=UTC))
    assert check.open
    assert next_batch_fits(check, datetime(2026, 12, 5, tzinfo=UTC), timedelta(hours=9)).go


# --- compliance -----------------------------------------------------------------------------------


def _after(host: str, **changes: object) -> HostScan:
    installed = {"demo-openssl": "1.1", "demo-kernel": "6.1.0-2-demo", "demo-web": "2.0", "demo-tools": "1.0"}
    base: dict[str, object] = {
        "installed": installed,
        "running_kernel": "6.1.0-2-demo",
        "installed_kernel": "6.1.0-2-demo",
    }
    base.update(changes)
    return HostScan(host, (), **base)  # type: ignore[arg-type]


def test_compliance_attributes_the_reboot_to_the_package_named() -> None:
    snapshot = plan_snapshot("web", [scan("web-1")], ADVISORIES, PatchBaseline(), TODAY)
    after = _after(
        "web-1",
        reboot_required=True,
        reboot_required_packages=frozenset({"demo-kernel"}),
        running_kernel="6.1.0-1-demo",
    )
    host = assess_host(snapshot, after)
    states = {p.package: p.state for p in host.packages}
    assert states == {
        "demo-kernel": ComplianceState.INSTALLED_PENDING_REBOOT,
        "demo-openssl": ComplianceState.INSTALLED,
    }
    assert host.compliant
    assert not host.kernel_current


def test_reboot_flag_without_a_list_blames_what_was_installed_after_boot() -> None:
    snapshot = plan_snapshot("web", [scan("web-1")], ADVISORIES, PatchBaseline(), TODAY)
    boot = datetime(2026, 12, 2, 19, 0, tzinfo=UTC)
    installs = [
        InstallResult("demo-kernel", True, boot + timedelta(minutes=5)),
        InstallResult("demo-openssl", True, boot - timedelta(minutes=5)),
    ]
    host = assess_host(snapshot, _after("web-1", reboot_required=True), installs, boot)
    states = {p.package: p.state for p in host.packages}
    assert states["demo-kernel"] == ComplianceState.INSTALLED_PENDING_REBOOT
    assert states["demo-openssl"] == ComplianceState.INSTALLED


def test_failed_missing_held_not_applicable_and_fleet_summary() -> None:
    baseline = PatchBaseline(excluded_hosts=["web-3"])
    scans = [scan("web-1"), scan("web-2", held=frozenset({"demo-kernel"})), scan("web-3")]
    snapshot = plan_snapshot("web", scans, ADVISORIES, baseline, TODAY)
    one = assess_host(
        snapshot,
        _after("web-1", installed={"demo-kernel": "6.1.0-1-demo"}),
        [InstallResult("demo-kernel", False, message="E: Could not get lock /var/lib/dpkg/lock-frontend")],
    )
    two = assess_host(
        snapshot, _after("web-2", installed={"demo-openssl": "1.0", "demo-kernel": "6.1.0-1-demo"})
    )
    three = assess_host(snapshot, _after("web-3"))
    states_one = {p.package: p.state for p in one.packages}
    assert states_one == {
        "demo-kernel": ComplianceState.FAILED,
        "demo-openssl": ComplianceState.NOT_APPLICABLE,
    }
    assert "Could not get lock" in next(p.reason for p in one.packages if p.package == "demo-kernel")
    states_two = {p.package: p.state for p in two.packages}
    assert states_two == {"demo-openssl": ComplianceState.MISSING, "demo-kernel": ComplianceState.HELD}
    assert {p.state for p in three.packages} == {ComplianceState.EXCLUDED}
    assert len(three.packages) == 4
    fleet_state = summarise_fleet([one, two, three])
    assert fleet_state.counts == {"FAILED": 1, "NOT_APPLICABLE": 1, "MISSING": 1, "HELD": 1, "EXCLUDED": 4}
    assert fleet_state.percent_compliant == 0.0  # web-3 is wholly excluded: not scored
    assert fleet_state.security_non_compliant == 3  # FAILED kernel, MISSING openssl, HELD kernel
    assert "0% of 2 host(s) compliant" in fleet_state.summary()


def test_not_applicable_is_never_non_compliant() -> None:
    snapshot = plan_snapshot("web", [scan("web-1")], ADVISORIES, PatchBaseline(), TODAY)
    host = assess_host(snapshot, _after("web-1", installed={}))
    assert {p.state for p in host.packages} == {ComplianceState.NOT_APPLICABLE}
    assert host.compliant
    assert summarise_fleet([host]).percent_compliant == 100.0


# --- resume ---------------------------------------------------------------------------------------


def test_resume_after_the_canary_failed_retries_it_first() -> None:
    snapshot = plan_snapshot("web", [scan(h) for h in HOSTS], ADVISORIES, PatchBaseline(), TODAY)
    batches = plan_batches(fleet(), PatchWaves(batches=[1, "100%"]))
    plan = plan_resume(
        snapshot, snapshot.snapshot_id, {"web-1": HostOutcome("web-1", False, "health")}, batches
    )
    assert plan.done == ()
    assert [b.hosts for b in plan.batches] == [("web-1",), ("web-2",), ("web-3",)]
    assert plan.batches[0].canary


def test_resume_skips_done_hosts_and_drops_empty_batches() -> None:
    snapshot = plan_snapshot("web", [scan(h) for h in HOSTS], ADVISORIES, PatchBaseline(), TODAY)
    batches = plan_batches(fleet(), PatchWaves(batches=[1, "100%"]))
    outcomes = {"web-1": HostOutcome("web-1", True), "web-2": HostOutcome("web-2", True)}
    plan = plan_resume(snapshot, snapshot.snapshot_id, outcomes, batches)
    assert [b.hosts for b in plan.batches] == [("web-3",)]
    assert plan.batches[0].index == 0
    assert "2 host(s) done and skipped (web-1, web-2)" in plan.reason


def test_resume_with_another_snapshot_is_refused() -> None:
    snapshot = plan_snapshot("web", [scan("web-1")], ADVISORIES, PatchBaseline(), TODAY)
    with pytest.raises(ResumeRefused, match="the earlier run used snapshot snap-other"):
        plan_resume(snapshot, "snap-other", {}, [])


# --- timing ---------------------------------------------------------------------------------------


def test_ideal_is_the_slowest_host_per_batch() -> None:
    batches = [
        [HostTiming("web-1", {"install": 0.5, "reboot": 4.4, "health": 0.5})],
        [HostTiming("web-2", {"install": 0.4, "reboot": 4.6}), HostTiming("web-3", {"install": 0.7})],
    ]
    timing = wave_timing(batches, [5.6, 5.3])
    assert timing.ideal == pytest.approx(5.4 + 5.0)
    assert timing.actual == pytest.approx(10.9)
    assert timing.overhead == pytest.approx(0.5)
    assert timing.by_phase == pytest.approx({"install": 0.9, "reboot": 9.0, "health": 0.5})
    with pytest.raises(ValueError, match="2 batches but 1 wall times"):
        wave_timing(batches, [1.0])


# --- dnf ------------------------------------------------------------------------------------------


def test_dnf_check_update_lists_updates() -> None:
    output = (DATA / "check-update-updates.txt").read_text()
    updates = parse_check_update(
        "rh-1", 100, output, {"openssl": "1:3.0.7-27.el9"}, security_packages=frozenset({"openssl", "kernel"})
    )
    names = [u.package for u in updates]
    assert names == [
        "NetworkManager",
        "NetworkManager-libnm",
        "kernel",
        "openssl",
        "python3-perf-debuginfo-common-x86_64-extremely-long-name",
        "tzdata",
        "demo-openssl",
    ]
    openssl = updates[3]
    assert (openssl.installed, openssl.candidate, openssl.suite, openssl.classification) == (
        "1:3.0.7-27.el9",
        "1:3.0.7-28.el9_4",
        "baseos",
        SEC,
    )
    assert updates[4].suite == "baseos-debug"
    assert updates[6].classification == SEC  # from its security repository
    assert updates[5].classification == UPD
    assert "grub2-tools" not in names  # the Obsoleting section is not a list of updates


def test_dnf_check_update_exit_0_is_none_and_1_is_an_error() -> None:
    assert parse_check_update("rh-1", 0, (DATA / "check-update-none.txt").read_text(), {}) == ()
    with pytest.raises(
        DnfCheckUpdateError, match=r"rh-1: dnf check-update failed with exit 1: .*Failed to download"
    ):
        parse_check_update("rh-1", 1, (DATA / "check-update-error.txt").read_text(), {})
    with pytest.raises(DnfCheckUpdateError, match=r"exited 100 .* but listed none"):
        parse_check_update("rh-1", 100, (DATA / "check-update-none.txt").read_text(), {})


def test_dst_fall_back_window_starts_at_the_first_of_the_repeated_hour() -> None:
    # Sun 2026-10-25: Paris goes from 03:00 CEST back to 02:00 CET; 02:00 happens twice.
    window = PatchWindow(days=["sun"], start="02:00", duration=timedelta(hours=2))
    check = check_window(window, "Europe/Paris", datetime(2026, 10, 25, 0, 30, tzinfo=UTC))
    assert check.open, check.reason
    assert check.opens == datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # 02:00 CEST
    assert check.closes == datetime(2026, 10, 25, 2, 0, tzinfo=UTC)  # 03:00 CET, two hours later


def test_start_in_the_skipped_hour_opens_after_the_jump() -> None:
    window = PatchWindow(days=["sun"], start="02:30", duration=timedelta(hours=1))
    check = check_window(window, "Europe/Paris", datetime(2026, 3, 29, 1, 45, tzinfo=UTC))
    assert check.open, check.reason
    assert check.opens == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST


def test_nothing_pending_gives_an_empty_snapshot_with_batches_still_planned() -> None:
    scans = [HostScan(h, (), {"demo-openssl": "1.1"}) for h in HOSTS]
    snapshot = plan_snapshot("web", scans, ADVISORIES, PatchBaseline(), TODAY)
    assert snapshot.empty
    assert snapshot.left_out == ()
    assert "nothing on 0 host(s)" in snapshot.summary()
    back = snapshot_from_json(snapshot_to_json(snapshot), fleet="web", hosts=HOSTS)
    assert back.snapshot_id == snapshot.snapshot_id


def test_unreachable_hosts_are_reported_and_get_no_pins() -> None:
    snapshot = plan_snapshot(
        "web", [scan("web-1"), scan("web-2")], ADVISORIES, PatchBaseline(), TODAY, unreachable=["web-3"]
    )
    assert "web-3" not in snapshot.pins
    (entry,) = [o for o in snapshot.left_out if o.host == "web-3"]
    assert (entry.kind, entry.reason) == (
        "unreachable",
        "host did not answer the scan: left out of this wave",
    )
    assert snapshot_from_json(snapshot_to_json(snapshot), fleet="web", hosts=HOSTS) == snapshot
