"""A patch wave task SIGKILLed mid-batch, then its retry, on the sandbox's Debian hosts (fleet app).

The runbook's real ``wave`` callable (``patch_wave._wave_act``) runs in a process of its own, with a
task-instance stand-in (its XComs a JSON file, its try number given) and a private evidence ledger;
everything else is real: sshd hosts, apt, dpkg, the sandbox repository's fault packages. Try 1 is
SIGKILLed (its whole process group: no cleanup, no ``finally``) while batch 1 runs: on app-2 apt is in
demo-slow's postinst (it sleeps), app-3 is still in its pre hook (it sleeps on app-3 only). Try 2 must
find batch 1 started and never finished, wait for the apt try 1 left running on app-2, report app-2
half-done (reboot pending) and app-3 untouched, finish the batch from there, never run batch 0 (the
canary, finished by try 1) again, and leave a ledger holding each try's records once, verified.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudops.patching.model import Classification, PackagePin
from cloudops.patching.wave_run import WaveHost, ssh_host

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
SANDBOX_CATALOG = PROJECT / "runbooks" / "sandbox.yaml"
FLEET = "app"
HOOK_MARKER = "/tmp/cloudops-test-slow-pre-hook"  # the pre hook sleeps where this file exists
SLOW_SECONDS = 8  # demo-slow's postinst on app-2: the window to kill try 1 in, and to outlive it
BOUND_SECONDS = 20.0
RUN_ID = "manual__killed-wave"
OPENSSL = PackagePin("demo-openssl", "1.1", "1.0", Classification.SECURITY)
KERNEL = PackagePin("demo-kernel", "6.1.0-2-demo", "6.1.0-1-demo", Classification.SECURITY)
SLOW = PackagePin("demo-slow", "1.1", "1.0", Classification.UPDATES)
PINS = {"app-1": (OPENSSL,), "app-2": (KERNEL, SLOW), "app-3": (OPENSSL,)}
BATCHES = (("app-1",), ("app-2", "app-3"))

TASK = """
import json
from pathlib import Path

class TaskInstanceStandIn:
    dag_id, task_id, run_id = "patch_wave__app", "wave", {run_id!r}
    def __init__(self, xcoms, try_number):
        self.xcoms, self.try_number = xcoms, try_number
    def xcom_pull(self, task_ids, key="return_value"):
        return json.loads(self.xcoms.read_text()).get(f"{{task_ids}}|{{key}}")

from cloudops.runbooks.patch_wave import _wave_act
ti = TaskInstanceStandIn(Path({xcoms!r}), {try_number})
context = {{"ti": ti, "task_instance": ti, "run_id": {run_id!r}, "dag_id": ti.dag_id, "task_id": "wave",
            "params": {params!r}}}
Path({out!r}).write_text(json.dumps(_wave_act(context, None), default=str))
"""


def _quiet(_: str) -> None:
    pass


def _sh(name: str, command: str, timeout: int = 30) -> str:
    host = ssh_host(WaveHost(name, f"sandbox_ssh_{name.replace('-', '_')}"), "sudo")
    with host:
        result = host.run("test set-up", command, timeout)
    assert result.exit_status == 0, f"{name}: {command}: {result.stderr}"
    return result.stdout


def _wait(condition: Any, what: str, bound: float = BOUND_SECONDS) -> Any:
    deadline = time.monotonic() + bound
    while not (found := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {bound:g} s")
        time.sleep(0.2)
    return found


@pytest.fixture
def wave_env(sandbox_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Fleet app reset to first boot; a catalog of its own (a pre hook, short soak and stability) and a
    private evidence folder; the wave's plan as the ``plan`` task's XCom."""
    from cloudops.catalog import load_catalog_file
    from cloudops.patching.snapshot import Snapshot
    from cloudops.runbooks.patch_wave import FleetTarget, WavePlan, planned_fact
    from cloudops.sandbox import estate

    estate.reset_hosts(fleet=FLEET, say=_quiet)
    document = yaml.safe_load(SANDBOX_CATALOG.read_text())
    (fleet,) = [f for f in document["fleets"] if f["name"] == FLEET]
    fleet["patching"]["pre_hook"] = [
        {"command": f"sh -c 'if test -e {HOOK_MARKER}; then sleep 30; fi'", "timeout": "1m"}
    ]
    fleet["patching"]["reboot"]["stable_for"] = "1s"
    fleet["patching"]["health"]["soak"] = "0s"
    catalog_file = tmp_path / "estate.yaml"
    catalog_file.write_text(yaml.safe_dump(document))
    catalog = load_catalog_file(catalog_file)
    target = FleetTarget(str(catalog_file), catalog.estate, FLEET)
    snapshot = Snapshot(FLEET, datetime.now(UTC).date(), PINS, (), ())
    plan = WavePlan(snapshot, BATCHES, 1, {}, (), None, "always open", None)
    xcoms = tmp_path / "xcoms.json"
    xcoms.write_text(json.dumps({"plan|return_value": planned_fact(target, plan, dry_run=False)}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLOUDOPS_EVIDENCE_DIR", str(tmp_path / "evidence"))
        yield {"target": target, "xcoms": xcoms, "snapshot_id": snapshot.snapshot_id}
    estate.reset_hosts(fleet=FLEET, say=_quiet)


def _start(
    tmp_path: Path, env: dict[str, Any], try_number: int
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    target = env["target"]
    out, log = tmp_path / f"wave-try{try_number}.json", tmp_path / f"wave-try{try_number}.log"
    params = {"_catalog_file": target.catalog_file, "_estate": target.estate, "_fleet": target.fleet}
    program = TASK.format(
        run_id=RUN_ID, xcoms=str(env["xcoms"]), try_number=try_number, params=params, out=str(out)
    )
    task = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(program)],
        cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
        start_new_session=True,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return task, out, log


def _apt_pids(name: str) -> list[str]:
    """Pids of apt-get processes on the host (the apt a killed try left running)."""
    listing = _sh(name, "ps -eo pid=,comm=")
    return [line.split()[0] for line in listing.splitlines() if line.split()[1:] == ["apt-get"]]


def _facts(kind: str, snapshot_id: str) -> list[dict[str, Any]]:
    from cloudops.evidence.facts import iter_facts

    return [
        r.fields["data"]
        for r in iter_facts(kind, {"snapshot_id": snapshot_id})
        if r.fields.get("run_id") == RUN_ID
    ]


def test_a_wave_killed_mid_batch_is_recovered_by_its_retry_from_each_hosts_real_state(
    wave_env: dict[str, Any], tmp_path: Path
) -> None:
    from cloudops.evidence.recorder import ledger
    from cloudops.evidence.runs import (
        PATCH_BATCH_FINISHED,
        PATCH_BATCH_RECOVERED,
        PATCH_BATCH_STARTED,
        PATCH_HOST,
        PATCH_WAVE,
    )

    _sh("app-2", f"echo {SLOW_SECONDS} | sudo -n tee /etc/demo-slow.seconds >/dev/null")
    _sh("app-3", f"touch {HOOK_MARKER}")
    boot_before = _sh("app-2", "cat /proc/sys/kernel/random/boot_id").strip()

    task, _, log1 = _start(tmp_path, wave_env, 1)
    try:
        # Batch 1 runs once app-2's apt is in demo-slow's postinst (batch 0, the canary, is done by then).
        def in_postinst() -> bool:
            assert task.poll() is None, log1.read_text()[-3000:]
            return "demo-slow.postinst" in _sh("app-2", "ps -eo args")

        _wait(in_postinst, "app-2 never reached demo-slow's postinst", bound=60)
        os.killpg(task.pid, signal.SIGKILL)  # the task's whole group: no cleanup, no finally
        task.wait(timeout=BOUND_SECONDS)
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
            task.wait(timeout=BOUND_SECONDS)
    _sh("app-3", f"rm -f {HOOK_MARKER}")  # its next pre hook passes at once
    orphans = _apt_pids("app-2")
    assert orphans, (
        "the apt try 1 started on app-2 outlives it (sshd gives a session without a tty no SIGHUP)"
    )
    assert [d["batch"] for d in _facts(PATCH_BATCH_FINISHED, wave_env["snapshot_id"])] == [0]
    assert {d["host"] for d in _facts(PATCH_HOST, wave_env["snapshot_id"])} == {"app-1"}

    task, out, log2 = _start(tmp_path, wave_env, 2)
    code = task.wait(timeout=120)
    said = log2.read_text()
    assert code == 0, f"the retry failed (exit {code}):\n{said[-4000:]}"
    result = json.loads(out.read_text())

    recovered = result["recovered"]
    assert (recovered["batch"], recovered["action"], recovered["started_by"]) == (1, "finish", [1])
    app2, app3 = recovered["hosts"]["app-2"], recovered["hosts"]["app-3"]
    assert app2["state"] == "half-done", app2
    assert any(f"pid {pid} (apt-get)" in app2["detail"] for pid in orphans), (orphans, app2)
    assert "waited" in app2["detail"]
    assert "reboot pending" in app2["detail"]
    assert "at the snapshot's version: demo-kernel, demo-slow" in app2["detail"]
    assert app3 == {"state": "untouched", "detail": "not yet: demo-openssl"}
    assert "batch 1, started by try 1 and never finished (the task was killed): try 2 finishes it" in said
    assert result["succeeded"], result

    sid = wave_env["snapshot_id"]
    assert sorted((d["batch"], d["try_number"]) for d in _facts(PATCH_BATCH_STARTED, sid)) == [
        (0, 1),
        (1, 1),
        (1, 2),
    ], "batch 0 never started again"
    assert sorted((d["batch"], d["try_number"]) for d in _facts(PATCH_BATCH_FINISHED, sid)) == [
        (0, 1),
        (1, 2),
    ]
    (recorded,) = _facts(PATCH_BATCH_RECOVERED, sid)
    assert recorded["hosts"] == recovered["hosts"]
    assert recorded["found"]["app-2"]["versions"] == {"demo-kernel": "6.1.0-2-demo", "demo-slow": "1.1"}
    hosts = {d["host"]: d for d in _facts(PATCH_HOST, sid)}
    assert sorted(d["host"] for d in _facts(PATCH_HOST, sid)) == ["app-1", "app-2", "app-3"], "each host once"
    assert hosts["app-2"]["status"] == "done"
    assert hosts["app-2"]["rebooted"], "the reboot the killed try owed app-2 was taken"
    assert hosts["app-2"]["compliance"] == {"demo-kernel": "INSTALLED", "demo-slow": "INSTALLED"}
    assert hosts["app-2"]["notes"][0].startswith(
        "try 2 found this host as try 1 left it when killed mid-batch"
    )
    assert hosts["app-3"]["status"] == "done"
    assert hosts["app-3"]["compliance"] == {"demo-openssl": "INSTALLED"}
    (wave,) = _facts(PATCH_WAVE, sid)
    assert wave["succeeded"]
    assert {n: h["status"] for n, h in wave["hosts"].items()} == {
        "app-1": "done",
        "app-2": "done",
        "app-3": "done",
    }

    assert _sh("app-2", "cat /proc/sys/kernel/random/boot_id").strip() != boot_before
    assert _sh("app-2", "sudo -n dpkg --audit; echo rc=$?").strip() == "rc=0"
    assert "demo-openssl\t1.1" in _sh("app-3", shlex.join(["dpkg-query", "-W", "demo-openssl"]))
    verdict = ledger().verify()
    assert verdict.ok, verdict.problem
