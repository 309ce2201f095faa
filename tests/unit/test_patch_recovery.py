"""A retry after a wave task was killed mid-batch: each host's state as found, and the decision (pure)."""

from __future__ import annotations

import pytest

from cloudops.patching.apt_output import parse_lock_pids
from cloudops.patching.model import Classification, PackagePin
from cloudops.patching.recovery import (
    BUSY,
    FINISH,
    FOREIGN,
    HALF_DONE,
    HALT,
    PATCHED,
    UNKNOWN,
    UNTOUCHED,
    FoundHost,
    decide_recovery,
    host_state,
    retry_state,
)
from cloudops.patching.wave_run import FAILED, NOT_STARTED, found_outcome

pytestmark = pytest.mark.unit

OPENSSL = PackagePin("demo-openssl", "1.1", "1.0", Classification.SECURITY)
KERNEL = PackagePin("demo-kernel", "6.1.0-2-demo", "6.1.0-1-demo", Classification.SECURITY)
SLOW = PackagePin("demo-slow", "1.1", "1.0", Classification.UPDATES)
PINS = (KERNEL, SLOW)
BASE = {"demo-kernel": "6.1.0-1-demo", "demo-slow": "1.0", "demo-openssl": "1.0"}
NEW = {"demo-kernel": "6.1.0-2-demo", "demo-slow": "1.1", "demo-openssl": "1.1"}


def found(**kwargs: object) -> FoundHost:
    return FoundHost("app-2", **kwargs)  # type: ignore[arg-type]


def test_untouched_patched_and_half_done_hosts_say_what_they_were_left_in() -> None:
    assert host_state(PINS, found(versions=BASE)).state == UNTOUCHED
    patched = host_state(
        PINS, found(versions=NEW, running_kernel="6.1.0-2-demo", installed_kernel="6.1.0-2-demo")
    )
    assert (patched.state, patched.detail) == (PATCHED, "at the snapshot's version: demo-kernel, demo-slow")
    part = host_state(PINS, found(versions=BASE | {"demo-kernel": "6.1.0-2-demo"}))
    assert (part.state, part.detail) == (
        HALF_DONE,
        "at the snapshot's version: demo-kernel; not yet: demo-slow",
    )
    interrupted = host_state(PINS, found(versions=NEW, unfinished=frozenset({"demo-slow"})))
    assert interrupted.state == HALF_DONE
    assert "dpkg interrupted: demo-slow unpacked or half-configured" in interrupted.detail
    # Unpacked at the old version (interrupted before anything new landed) is still half-done.
    assert host_state(PINS, found(versions=BASE, unfinished=frozenset({"demo-slow"}))).state == HALF_DONE
    pending = host_state(
        PINS,
        found(versions=NEW, reboot_required=True, reboot_packages=frozenset({"demo-kernel"})),
    )
    assert pending.state == HALF_DONE
    assert "reboot pending (/run/reboot-required, by demo-kernel)" in pending.detail
    stale = host_state(
        PINS, found(versions=NEW, running_kernel="6.1.0-1-demo", installed_kernel="6.1.0-2-demo")
    )
    assert (stale.state, "kernel 6.1.0-2-demo installed, 6.1.0-1-demo running" in stale.detail) == (
        HALF_DONE,
        True,
    )


def test_a_newer_version_counts_as_reached_and_an_older_unknown_one_as_changed_elsewhere() -> None:
    newer = host_state((OPENSSL,), found(versions={"demo-openssl": "1.2"}))
    assert newer.state == PATCHED
    other = host_state((OPENSSL,), found(versions={"demo-openssl": "0.9"}))
    assert (other.state, other.detail) == (FOREIGN, "demo-openssl at 0.9 (snapshot 1.1, was 1.0)")


def test_the_wait_for_a_killed_trys_apt_is_said_and_a_lock_still_held_is_busy() -> None:
    waited = host_state(
        PINS, found(versions=NEW, waited_for=("pid 63 (apt-get)",), waited_seconds=6.04, reboot_required=True)
    )
    assert waited.detail.startswith("waited 6.0s for pid 63 (apt-get) to finish; ")
    busy = host_state(PINS, found(versions=BASE, lock_holders=("pid 63 (apt-get)",), waited_seconds=60))
    assert (busy.state, busy.detail) == (BUSY, "dpkg's lock still held after 60s by pid 63 (apt-get)")
    assert host_state(PINS, found(error="read boot id: connection refused")).state == UNKNOWN


def test_the_batch_is_finished_when_every_host_state_is_known_and_settled() -> None:
    decision = decide_recovery(
        1,
        [found(versions=NEW, reboot_required=True), FoundHost("app-3", versions=BASE)],
        {"app-2": PINS, "app-3": (OPENSSL,)},
        started_by=[1],
        try_number=2,
    )
    assert decision.action == FINISH
    assert decision.reason.startswith(
        "batch 1, started by try 1 and never finished (the task was killed): try 2 finishes it, each host "
        "from the state it was found in: app-2: half-done ("
    )
    assert "app-3: untouched (not yet: demo-openssl)" in decision.reason
    assert decision.as_record()["hosts"]["app-3"] == {"state": UNTOUCHED, "detail": "not yet: demo-openssl"}


@pytest.mark.parametrize(
    ("host", "cause"),
    [
        (FoundHost("app-3", error="read versions: timed out"), "app-3 unknown: their state is unknown"),
        (
            FoundHost("app-3", versions=BASE, lock_holders=("pid 9 (dpkg)",), waited_seconds=60),
            "app-3 busy: the killed try's apt may still be working",
        ),
        (
            FoundHost("app-3", versions={"demo-openssl": "0.9"}),
            "app-3 changed elsewhere: something other than this wave changed them",
        ),
    ],
)
def test_a_host_whose_state_is_unknown_busy_or_foreign_halts_naming_every_host(
    host: FoundHost, cause: str
) -> None:
    decision = decide_recovery(
        1, [found(versions=NEW), host], {"app-2": PINS, "app-3": (OPENSSL,)}, started_by=[1], try_number=2
    )
    assert decision.action == HALT
    assert f"try 2 does not act on it: {cause}." in decision.reason
    assert "Hosts: app-2: half-done" in decision.reason or "Hosts: app-2: patched" in decision.reason
    assert "app-3: " in decision.reason.split("Hosts: ", 1)[1]


def test_a_batch_interrupted_twice_is_not_started_a_third_time() -> None:
    decision = decide_recovery(2, [found(versions=BASE)], {"app-2": PINS}, started_by=[2, 1], try_number=3)
    assert decision.action == HALT
    assert decision.started_by == (1, 2)
    assert decision.reason.startswith(
        "batch 2, started by try 1, 2 and never finished: tries were killed 2 times"
    )


def test_retry_state_skips_finished_batches_recovers_the_open_one_and_keeps_a_halt() -> None:
    started = [{"batch": 0, "try_number": 1}, {"batch": 1, "try_number": 1}]
    finished = [{"batch": 0, "try_number": 1, "decision": "go", "reason": "batch 0: ok"}]
    state = retry_state(started, finished)
    assert (sorted(state.finished), state.interrupted, state.started_by, state.halted) == ([0], 1, (1,), None)
    # Try 2 finished batch 1 and was killed in batch 2: only batch 2 is open, started by try 2.
    later = retry_state(
        [*started, {"batch": 1, "try_number": 2}, {"batch": 2, "try_number": 2}],
        [*finished, {"batch": 1, "try_number": 2, "decision": "go", "reason": "ok"}],
    )
    assert (later.interrupted, later.started_by) == (2, (2,))
    halted = retry_state(started[:1], [{"batch": 0, "decision": "halt", "reason": "batch 0: 1 failed"}])
    assert (halted.interrupted, halted.halted) == (None, "batch 0: 1 failed")
    assert retry_state([], []).interrupted is None


def test_a_host_found_on_a_halted_recovery_is_reported_with_its_compliance() -> None:
    found_host = found(
        versions=NEW,
        unfinished=frozenset({"demo-slow"}),
        reboot_required=True,
        reboot_packages=frozenset({"demo-kernel"}),
    )
    recovery = host_state(PINS, found_host)
    outcome = found_outcome(PINS, found_host, recovery, batch=1, step="recovery after a killed try")
    assert (outcome.status, outcome.step, outcome.changed) == (FAILED, "recovery after a killed try", True)
    assert outcome.compliance == {"demo-kernel": "INSTALLED_PENDING_REBOOT", "demo-slow": "FAILED"}
    assert outcome.summary().startswith("app-2: FAILED at recovery after a killed try: half-done")
    untouched = FoundHost("app-3", versions=BASE)
    left = found_outcome((OPENSSL,), untouched, host_state((OPENSSL,), untouched), batch=1, step="recovery")
    assert (left.status, left.changed, left.compliance) == (NOT_STARTED, False, {"demo-openssl": "MISSING"})


def test_dpkg_lock_holders_are_read_from_proc_locks_for_dpkgs_lock_files_only() -> None:
    stat = "155 16158082 /var/lib/dpkg/lock-frontend\n155 16158083 /var/lib/dpkg/lock\n"
    locks = (
        "1: POSIX  ADVISORY  WRITE 83 00:9b:16158083 0 EOF\n"
        "2: POSIX  ADVISORY  WRITE 63 00:9b:16148947 0 EOF\n"  # another file (apt's cache lock)
        "3: POSIX  ADVISORY  WRITE 63 00:9b:16158082 0 EOF\n"
        "9: OFDLCK ADVISORY  WRITE -1 fe:00:6071816 0 EOF\n"
        "10: POSIX  ADVISORY  WRITE 77 00:9c:16158082 0 EOF\n"  # same inode, another filesystem
        "garbage line\n"
    )
    assert parse_lock_pids(stat, locks) == (83, 63)
    assert parse_lock_pids(stat, "") == ()
    assert parse_lock_pids("155 1 /etc/passwd\n", locks) == ()
    # A device number above 255 minors: major 259, minor 3 (an NVMe partition).
    assert parse_lock_pids(
        f"{(259 << 8) | 3} 5 /var/lib/dpkg/lock\n", "1: POSIX ADVISORY WRITE 4 103:03:5 0 EOF"
    ) == (4,)
