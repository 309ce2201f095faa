"""The patch wave's safety paths through a real running Airflow, as on-call engineers meet them.

A production fleet (`prod_app`: the sandbox's hosts app-1, the canary, and app-2) in a catalog of the
test's own. Its wave waits at `wave` for a second person's approval, the lock is held meanwhile:
- a second wave of the same fleet started another way (a second Airflow, `airflow dags test`, sharing
  the patch state directory) is refused at `plan` with one message naming the fleet and the run that
  holds the lock, never retried, and leaves that lock alone; the first wave, approved by a second
  person, then runs to the end;
- the requester approving their own wave is refused by the step itself: nothing is installed, the
  hosts keep their boot and their versions, and the run releases its lock.

Users (SimpleAuthManager, role USER): ``oncall`` triggers (and may answer: the step refuses its own
approval), ``approver`` approves.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from cloudops.evidence.ledger import Ledger
from cloudops.evidence.runs import APPROVAL, PATCH_PLANNED, PATCH_WAVE, Run, fold_runs
from tests.e2e.airflow_stack import AirflowStack, running_airflow

pytestmark = pytest.mark.e2e

FLEET = "prod_app"
DAG_ID = f"patch_wave__{FLEET}"
HOSTS = ("app-1", "app-2")
AWAITING_INPUT_TIMEOUT = 180  # plan (scan of two hosts) done, wave parked
RUN_END_TIMEOUT = 180  # after the answer: two batches without reboot, or the refusal
BASE = {"demo-openssl": "1.0", "demo-kernel": "6.1.0-1-demo"}


def _quiet(_: str) -> None:
    pass


def catalog(estate: str) -> dict[str, object]:
    return {
        "estate": estate,
        "owner": "tests",
        "timezone": "UTC",
        "fleets": [
            {
                "name": FLEET,
                "os_family": "debian",
                "patching": {
                    "production": True,
                    "baseline": {"classifications": ["security"], "approve_after_days": 0},
                    "waves": {"canary_group": "canary", "batches": [1, "100%"]},
                    "reboot": {"when": "never"},  # quicker; the kernel stays pending a reboot
                    "health": {
                        "commands": [
                            {
                                "command": "cat /var/lib/demo-web/health",
                                "expect_output": "OK",
                                "timeout": "10s",
                            }
                        ]
                    },
                    "privilege": "sudo",
                },
                "hosts": [
                    {"name": "app-1", "ssh_conn_id": "sandbox_ssh_app_1", "groups": ["canary"]},
                    {"name": "app-2", "ssh_conn_id": "sandbox_ssh_app_2"},
                ],
            }
        ],
    }


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, project_root: Path, sandbox_env: dict[str, str]
) -> Iterator[AirflowStack]:
    base = tmp_path_factory.mktemp("patch-wave-safety")
    catalog_dir, state = base / "catalog", base / "patch-state"
    catalog_dir.mkdir()
    (catalog_dir / "estate.yaml").write_text(yaml.safe_dump(catalog("pw_safety")))
    with running_airflow(
        base,
        project_root=project_root,
        sandbox_env=sandbox_env,
        catalog_dir=catalog_dir,
        users=("oncall", "approver"),
        dag_id=DAG_ID,
        extra_env={"CLOUDOPS_PATCH_STATE_DIR": str(state)},
    ) as running:
        yield running


@pytest.fixture
def hosts(stack: AirflowStack) -> Iterator[None]:
    from cloudops.sandbox import estate

    estate.reset_hosts(fleet="app", say=_quiet)
    yield
    estate.reset_hosts(fleet="app", say=_quiet)


def host_facts() -> dict[str, tuple[str, dict[str, str]]]:
    """Each host's boot id and the versions of the packages the baseline approves."""
    from cloudops.patching.apt_host import AptHost, ssh_runner

    facts = {}
    for name in HOSTS:
        host = AptHost(name, ssh_runner(f"sandbox_ssh_{name.replace('-', '_')}", used_by=name))
        versions = host.installed_versions()
        facts[name] = (host.boot_id(), {p: versions.get(p, "") for p in BASE})
    return facts


def ledger_run(stack: AirflowStack, run_id: str) -> Run:
    runs = [r for r in fold_runs(Ledger(stack.evidence / "ledger").records()) if r.run_id == run_id]
    assert len(runs) == 1, f"expected the ledger to hold run {run_id} once, found {len(runs)}"
    return runs[0]


def lock_holder(stack: AirflowStack) -> str | None:
    path = Path(stack.env["CLOUDOPS_PATCH_STATE_DIR"]) / f"{FLEET}.lock"
    return str(json.loads(path.read_text())["run_id"]) if path.exists() else None


def test_a_second_wave_of_the_fleet_is_refused_naming_the_run_that_holds_it_and_the_first_goes_on(
    stack: AirflowStack,
    hosts: None,
    dags_test: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    first = stack.trigger("oncall", DAG_ID)
    stack.wait_awaiting_input("oncall", DAG_ID, first, "wave", AWAITING_INPUT_TIMEOUT)
    assert lock_holder(stack) == first, "the waiting wave holds the fleet's lock"
    before = host_facts()

    # A second Airflow (its own metadata database and ledger, the same patch state directory).
    second = dags_test(
        DAG_ID,
        CLOUDOPS_CATALOG=stack.env["CLOUDOPS_CATALOG"],
        CLOUDOPS_PATCH_STATE_DIR=stack.env["CLOUDOPS_PATCH_STATE_DIR"],
        CLOUDOPS_EVIDENCE_DIR=str(tmp_path / "second-evidence"),
    )
    output = second.stdout + second.stderr
    expected = f"fleet {FLEET}: another patch wave is running (run {first}, since "
    assert expected in output, output[-4000:]
    assert "refused, nothing was changed" in output
    assert "two waves of one fleet never run at once" in output
    assert output.count(expected) == 1, "refused once: a refusal is not retried"
    second_records = list(Ledger(tmp_path / "second-evidence" / "ledger").records())
    assert [r for r in second_records if r.kind == PATCH_PLANNED] == [], "the second wave planned nothing"

    # The first is unharmed: still waiting, still holding its lock, the hosts as they were.
    assert stack.task_states("oncall", DAG_ID, first)["wave"] == "awaiting_input"
    assert lock_holder(stack) == first
    assert host_facts() == before

    answered = stack.answer("approver", DAG_ID, first, "wave", "Approve")
    assert answered["responded_by"]["name"] == "approver"
    assert stack.wait_run_end("oncall", DAG_ID, first, RUN_END_TIMEOUT) == "success"
    recorded = ledger_run(stack, first)
    approval = next(r for r in recorded.approvals if r.kind == APPROVAL).fields["data"]
    assert (approval["approver"], approval["requested_by"], approval["accepted"]) == (
        "approver",
        "oncall",
        True,
    )
    wave = recorded.facts_of(PATCH_WAVE)[-1].fields["data"]
    assert wave["succeeded"]
    assert wave["approved_by"] == "approver"
    for name in HOSTS:
        # reboot: never, so the kernel is attributed a pending reboot, openssl is plainly installed
        assert wave["hosts"][name]["compliance"] == {
            "demo-kernel": "INSTALLED_PENDING_REBOOT",
            "demo-openssl": "INSTALLED",
        }
    assert {name: facts[1] for name, facts in host_facts().items()} == {
        name: {"demo-openssl": "1.1", "demo-kernel": "6.1.0-2-demo"} for name in HOSTS
    }
    assert lock_holder(stack) is None, "released at the end"


def test_the_requester_cannot_approve_their_own_production_wave(stack: AirflowStack, hosts: None) -> None:
    before = host_facts()
    run_id = stack.trigger("oncall", DAG_ID)
    stack.wait_awaiting_input("oncall", DAG_ID, run_id, "wave", AWAITING_INPUT_TIMEOUT)
    assert lock_holder(stack) == run_id

    # oncall may answer (no approver list), so Airflow takes it; the wave step refuses it.
    answered = stack.answer("oncall", DAG_ID, run_id, "wave", "Approve")
    assert answered["responded_by"]["name"] == "oncall"
    assert stack.wait_run_end("oncall", DAG_ID, run_id, RUN_END_TIMEOUT) == "failed"
    states = stack.task_states("oncall", DAG_ID, run_id)
    assert (states["plan"], states["wave"], states["release"]) == ("success", "failed", "success")
    log = stack.task_log("oncall", DAG_ID, run_id, "wave")
    assert f"approval refused: run {run_id}: requested by oncall, answered Approve by oncall" in log
    assert "a second person must approve this step; nothing was changed" in log

    assert host_facts() == before, "nothing installed, no reboot"
    assert {name: facts[1] for name, facts in before.items()} == dict.fromkeys(HOSTS, BASE)
    recorded = ledger_run(stack, run_id)
    assert recorded.facts_of(PATCH_WAVE) == [], "no wave ran"
    approval = next(r for r in recorded.approvals if r.kind == APPROVAL).fields["data"]
    assert (approval["approver"], approval["accepted"]) == ("oncall", False)
    assert "cannot approve it" in approval["refusal"]
    assert lock_holder(stack) is None, "the release step freed the fleet"
