"""The `patching:` policy of a fleet: what it accepts, and how its errors name file, line and field."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from cloudops.catalog import CatalogError, load_catalog_file

pytestmark = pytest.mark.unit

FLEET = """\
estate: acme
owner: acme-oncall
timezone: Europe/Paris
fleets:
  - name: web
    os_family: debian
    patching:
      window: {days: [sat, sun], start: "02:00", duration: 3h, cutoff: 1h}
      baseline:
        classifications: [security]
        approve_after_days: 7
        approved: [demo-tools]
        rejected: [demo-web]
        excluded_hosts: [web-3]
      waves: {canary_group: canary, batches: [1, "50%"], max_failed_per_batch: "25%", failure_budget: 1}
      reboot: {when: if_needed, timeout: 5m, stable_for: 10s}
      health:
        commands:
          - {command: cat /var/lib/demo-web/health, expect_output: OK}
        soak: 30s
      privilege: sudo
      production: true
    hosts:
      - {name: web-1, ssh_conn_id: acme_web_1, groups: [canary]}
      - {name: web-2, ssh_conn_id: acme_web_2}
      - {name: web-3, ssh_conn_id: acme_web_3}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "acme.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def messages(path: Path) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        load_catalog_file(path)
    return [str(issue) for issue in caught.value.issues]


def test_policy_loads_typed(tmp_path: Path) -> None:
    policy = load_catalog_file(write(tmp_path, FLEET)).fleets[0].patching
    assert policy is not None
    assert policy.window is not None
    assert policy.window.cutoff == timedelta(hours=1)
    assert policy.window.cutoff_behaviour == "finish_batch"
    assert policy.waves.batches == [1, "50%"]
    assert policy.baseline.rejected_action == "block"
    assert policy.health.commands[0].expect_exit == 0
    assert policy.production is True
    assert policy.unreachable == "exclude_and_report"


def test_sandbox_fleets_patch_security_only(project_root: Path) -> None:
    catalog = load_catalog_file(project_root / "runbooks" / "sandbox.yaml")
    for fleet in catalog.fleets:
        assert fleet.patching is not None, fleet.name
        assert fleet.patching.baseline.classifications == ["security"]
        assert fleet.patching.privilege == "sudo"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'batches: [1, "50%"]',
            'batches: [1, "150%"]',
            "acme.yaml:15: fleets[0].patching.waves.batches[1]: '150%' is over 100% of the fleet",
        ),
        ('batches: [1, "50%"]', "batches: [0]", "a number of hosts must be at least 1, not 0"),
        ('batches: [1, "50%"]', "batches: [1, lots]", "'lots' is neither a number of hosts nor a percentage"),
        ("cutoff: 1h", "cutoff: 3h", "cutoff 3h must be shorter than duration 3h: no batch could ever start"),
        ('start: "02:00"', 'start: "25:00"', "fleets[0].patching.window.start"),
        ("days: [sat, sun]", "days: [sat, sunday]", "fleets[0].patching.window.days[1]"),
        ("approve_after_days: 7", "approve_after_days: 361", "less than or equal to 360"),
        ("rejected: [demo-web]", "rejected: [demo-tools]", "both approved and rejected: demo-tools"),
        ("privilege: sudo", "privilege: sudoo", "did you mean 'sudo'?"),
        ("excluded_hosts: [web-3]", "excluded_hosts: [web-4]", "unknown excluded host 'web-4' (did you mean"),
        ("canary_group: canary", "canary_group: canaries", "unknown canary group 'canaries' (did you mean"),
        ("expect_output: OK}", "expect_exit: null}", "a health command must expect something"),
        ("soak: 30s", "soke: 30s", "did you mean 'soak'?"),
    ],
)
def test_bad_policy_names_the_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in FLEET
    found = messages(write(tmp_path, FLEET.replace(old, new)))
    assert any(expected in message for message in found), found


def test_unknown_host_error_names_its_line(tmp_path: Path) -> None:
    found = messages(write(tmp_path, FLEET.replace("excluded_hosts: [web-3]", "excluded_hosts: [web-9]")))
    assert "acme.yaml:14: " in found[0], found
    assert "fleets[0].patching.baseline.excluded_hosts[0]" in found[0]
