"""More sandbox hosts on request (benchmarks): fleets beyond runbooks/sandbox.yaml, kept in the sandbox dir.

`cloudops sandbox hosts add --fleet bench --count 30` records the fleet in
``<sandbox>/hosts/extra-fleets.json`` and writes a catalog file for it, ``<sandbox>/catalog/<fleet>.yaml``
(never into runbooks/): estate ``sandbox_<fleet>``, one fleet of hosts ``<fleet>-1`` ... ``<fleet>-N``
with connections ``sandbox_ssh_<fleet>_<n>`` (written into airflow.env by `up`, like the catalog hosts'
connections). The hosts take the loopback addresses after the catalog's hosts, in the order the fleets
were added; the first host of a fleet is in group ``canary``. Every later `up`, `down`, `status` and
`hosts reset` includes them; `hosts remove --fleet F` stops a fleet's hosts and forgets the fleet.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cloudops.errors import SandboxError
from cloudops.sandbox.layout import SandboxLayout
from cloudops.sandbox.plan import HostPlan
from cloudops.sandbox.process import write_if_changed

FLEET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
MAX_COUNT = 200


def registry_file(layout: SandboxLayout) -> Path:
    return layout.dir / "hosts" / "extra-fleets.json"


def catalog_file(layout: SandboxLayout, fleet: str) -> Path:
    return layout.dir / "catalog" / f"{fleet}.yaml"


def extra_fleets(layout: SandboxLayout) -> dict[str, int]:
    """Return {fleet: host count} of the fleets added on request, in the order they were added."""
    try:
        raw = json.loads(registry_file(layout).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise SandboxError(f"{registry_file(layout)} is not valid JSON ({exc}): fix or delete it") from None
    return {str(name): int(count) for name, count in raw.items()}


def fleet_hosts(fleet: str, count: int) -> tuple[HostPlan, ...]:
    return tuple(
        HostPlan(
            name=f"{fleet.replace('_', '-')}-{n}",
            fleet=fleet,
            os_family="debian",
            ssh_conn_id=f"sandbox_ssh_{fleet}_{n}",
            groups=("canary",) if n == 1 else (),
        )
        for n in range(1, count + 1)
    )


def extra_hosts(layout: SandboxLayout) -> tuple[HostPlan, ...]:
    """Every host of the fleets added on request, in address order."""
    return tuple(host for fleet, count in extra_fleets(layout).items() for host in fleet_hosts(fleet, count))


def _catalog_text(fleet: str, hosts: tuple[HostPlan, ...]) -> str:
    lines = [
        f"# Written by `cloudops sandbox hosts add --fleet {fleet}`: hosts of the sandbox, for benchmarks.",
        f"estate: sandbox_{fleet}",
        f"description: Sandbox fleet {fleet} ({len(hosts)} hosts), started by `cloudops sandbox up`.",
        "owner: platform-oncall",
        "fleets:",
        f"  - name: {fleet}",
        "    os_family: debian",
        # The benchmark's policy: the sandbox fleets' baseline, health and reboot; the canary and then
        # [2, 100%] make the batches Ansible's serial [1, 2, "100%"] makes (1, 2, the rest).
        "    patching:",
        '      window: {days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", duration: 24h}',
        "      baseline: {classifications: [security], approve_after_days: 0}",
        '      waves: {canary_group: canary, batches: [2, "100%"],',
        "              max_failed_per_batch: 0, failure_budget: 0}",
        "      reboot: {when: if_needed, timeout: 2m, stable_for: 3s}",
        "      health:",
        "        commands:",
        "          - {command: cat /var/lib/demo-web/health, expect_output: OK, timeout: 10s}",
        "        soak: 2s",
        "      privilege: sudo",
        "      unreachable: exclude_and_report",
        "    hosts:",
    ]
    for host in hosts:
        groups = f", groups: [{', '.join(host.groups)}]" if host.groups else ""
        lines.append(f"      - {{name: {host.name}, ssh_conn_id: {host.ssh_conn_id}{groups}}}")
    return "\n".join(lines) + "\n"


def add_fleet(layout: SandboxLayout, fleet: str, count: int, catalog_fleets: set[str]) -> Path:
    """Record a fleet of ``count`` hosts (replacing its earlier count) and write its catalog file.

    :raises SandboxError: for a bad name or count, or a fleet the sandbox catalog already has.
    """
    if not FLEET_NAME.match(fleet):
        raise SandboxError(f"fleet name {fleet!r}: use lower-case letters, digits and _ (e.g. bench)")
    if fleet in catalog_fleets:
        raise SandboxError(f"fleet {fleet!r} is already in runbooks/sandbox.yaml: choose another name")
    if not 1 <= count <= MAX_COUNT:
        raise SandboxError(f"--count {count}: between 1 and {MAX_COUNT} hosts")
    fleets = extra_fleets(layout)
    fleets[fleet] = count
    write_if_changed(registry_file(layout), json.dumps(fleets, indent=2) + "\n")
    path = catalog_file(layout, fleet)
    write_if_changed(path, _catalog_text(fleet, fleet_hosts(fleet, count)))
    return path


def remove_fleet(layout: SandboxLayout, fleet: str) -> None:
    """Forget a fleet added on request and delete its catalog file (its hosts' dirs stay on disk)."""
    fleets = extra_fleets(layout)
    if fleet not in fleets:
        raise SandboxError(f"no fleet {fleet!r} was added (added: {', '.join(fleets) or 'none'})")
    del fleets[fleet]
    write_if_changed(registry_file(layout), json.dumps(fleets, indent=2) + "\n")
    catalog_file(layout, fleet).unlink(missing_ok=True)


__all__ = ["add_fleet", "catalog_file", "extra_fleets", "extra_hosts", "fleet_hosts", "remove_fleet"]
