"""Patch wave benchmark: our wave against ansible-playbook on the same sandbox hosts, and against the ideal.

For each fleet size (6 and 30 by default), 3 rounds of A B: every run starts from hosts reset to their
first-boot state (`cloudops sandbox hosts reset --fleet F`). Both sides install the same snapshot of
exact `package=version` pins in batches [1, 2, "100%"], reboot when /run/reboot-required says so, and run
the fleet's health command. Ansible runs from its own venv under the sandbox dir (ansible-core pinned in
tests/benchmarks/ansible/requirements.txt), with host keys checked against the sandbox's known_hosts.
The ideal is per batch the slowest host's own time measured alone (each host waved on its own), summed.
Also timed: a scan of the whole fleet. Asserts nothing; prints a JSON summary (docs/benchmarks.md).

Run: make bench-patch (BENCH_PATCH_SIZES="6 30" BENCH_PATCH_ROUNDS=3).
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = Path(__file__).resolve().parent / "ansible"
SANDBOX = Path(os.environ.get("CLOUDOPS_SANDBOX_DIR", REPO / ".sandbox"))
CLOUDOPS = [sys.executable, "-m", "cloudops.cli"]
SERIAL = [1, 2, "100%"]


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, failing with its output when it fails."""
    done = subprocess.run(argv, text=True, capture_output=True, check=False, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def bench_fleet(size: int) -> str:
    """A fleet of `size` extra sandbox hosts (bench<size>-1..N), added once."""
    name = f"bench{size}"
    catalog = SANDBOX / "catalog" / f"{name}.yaml"
    run([*CLOUDOPS, "sandbox", "hosts", "add", "--fleet", name, "--count", str(size)])
    # The new hosts' connections were just written to the env file this process was started with.
    from cloudops.sandbox.layout import SandboxLayout, read_env_file

    os.environ.update(read_env_file(SandboxLayout.from_environment().env_file))
    # The added fleet's catalog file sits beside the sandbox's, not in runbooks/: load both.
    known = os.environ.get("CLOUDOPS_CATALOG") or str(REPO / "runbooks")
    if str(catalog) not in known.split(os.pathsep):
        os.environ["CLOUDOPS_CATALOG"] = os.pathsep.join([known, str(catalog)])
    return name


def reset(fleet: str) -> None:
    """Every host of the fleet back to its first-boot state (same host keys)."""
    run([*CLOUDOPS, "sandbox", "hosts", "reset", "--fleet", fleet])


def connection(conn_id: str) -> dict[str, Any]:
    """Host, port, login and key file of a sandbox SSH connection, read from airflow.env."""
    raw = os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"]
    if raw.lstrip().startswith("{"):
        data = json.loads(raw)
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra)
        return {"host": data["host"], "port": data.get("port") or 22, "login": data["login"], **extra}
    url = urlsplit(raw)
    extra = dict(p.split("=", 1) for p in url.query.split("&") if "=" in p)
    extra = {k: unquote(v) for k, v in extra.items()}
    return {"host": url.hostname, "port": url.port or 22, "login": unquote(url.username or ""), **extra}


def ansible_venv() -> Path:
    """ansible-core in its own venv under the sandbox dir, from the pinned requirements file."""
    venv = SANDBOX / "ansible-venv"
    if not (venv / "bin" / "ansible-playbook").exists():
        run(["uv", "venv", "-q", "-p", "3.11", str(venv)])
        run(
            [
                "uv",
                "pip",
                "install",
                "-q",
                "-p",
                str(venv / "bin" / "python"),
                "-r",
                str(ANSIBLE_DIR / "requirements.txt"),
            ]
        )
    return venv


def write_ansible_side(fleet: Any, policy: Any, plan: Any, work: Path) -> Path:
    """Inventory (from the sandbox's connections), ansible.cfg (host keys checked) and the playbook."""
    work.mkdir(parents=True, exist_ok=True)
    lines = ["[fleet]"]
    for host in fleet.hosts:
        c = connection(host.ssh_conn_id)
        key = c.get("key_file") or c.get("private_key_file", "")
        become = "" if c["login"] == "root" else " ansible_become=true"
        lines.append(
            f"{host.name} ansible_host={c['host']} ansible_port={c['port']} ansible_user={c['login']}"
            f" ansible_ssh_private_key_file={key} ansible_python_interpreter=/usr/bin/python3{become}"
        )
    (work / "inventory.ini").write_text("\n".join(lines) + "\n")
    (work / "ansible.cfg").write_text(
        "[defaults]\ncallbacks_enabled = batch_timer\n"
        f"callback_plugins = {ANSIBLE_DIR}\nforks = {max(5, len(fleet.hosts))}\ngathering = explicit\n"
        f"[ssh_connection]\nssh_args = -o UserKnownHostsFile={SANDBOX / 'ssh' / 'known_hosts'}"
        " -o StrictHostKeyChecking=yes -o ControlMaster=auto -o ControlPersist=60s\npipelining = true\n"
    )
    health = policy.health.commands[0]
    soak = int(policy.health.soak.total_seconds())
    stable = int(policy.reboot.stable_for.total_seconds())
    pins = {h: [f"{p.package}={p.version}" for p in pins] for h, pins in plan.snapshot.pins.items()}
    play = [
        {
            "hosts": "fleet",
            "serial": SERIAL,
            "max_fail_percentage": 0,
            "vars": {"pins": pins},
            "tasks": [
                {
                    "name": "install the snapshot's pins",
                    "ansible.builtin.apt": {
                        "name": "{{ pins[inventory_hostname] }}",
                        "update_cache": True,
                        "lock_timeout": 60,
                    },
                    "when": "pins[inventory_hostname] | length > 0",
                },
                {
                    "name": "reboot needed?",
                    "ansible.builtin.stat": {"path": "/run/reboot-required"},
                    "register": "reboot_flag",
                },
                {
                    "name": "reboot",
                    # Our wave waits the policy's stability window after a host is back; so does this.
                    "ansible.builtin.reboot": {"reboot_timeout": 120, "post_reboot_delay": stable},
                    "when": "reboot_flag.stat.exists",
                },
                *[
                    # Our health gate: the command, the soak, the command again.
                    step
                    for again in (False, True)
                    for step in (
                        [{"name": "soak", "ansible.builtin.pause": {"seconds": soak}}]
                        if again and soak
                        else []
                    )
                    + [
                        {
                            "name": "health" + (" after the soak" if again else ""),
                            "ansible.builtin.command": health.command,
                            "register": "health",
                            "changed_when": False,
                            "failed_when": f"'{health.expect_output}' not in health.stdout",
                        }
                    ]
                ],
            ],
        }
    ]
    (work / "playbook.json").write_text(json.dumps(play, indent=1))  # JSON is YAML
    return work


def run_ansible(venv: Path, work: Path) -> dict[str, Any]:
    """One ansible-playbook run: wall time, and per batch from the batch_timer callback."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(work / "ansible.cfg")}
    started = time.monotonic()
    done = subprocess.run(
        [
            str(venv / "bin" / "ansible-playbook"),
            "-i",
            str(work / "inventory.ini"),
            str(work / "playbook.json"),
        ],
        text=True,
        capture_output=True,
        env=env,
        check=False,
        timeout=1800,
    )
    wall = time.monotonic() - started
    batches = [
        json.loads(line[6:])["seconds"] for line in done.stderr.splitlines() if line.startswith("BATCH ")
    ]
    return {
        "ok": done.returncode == 0,
        "seconds": wall,
        "batches": batches,
        "error": "" if done.returncode == 0 else done.stdout[-2000:] + done.stderr[-2000:],
    }


def run_ours(target: Any, catalog: Any, plan: Any) -> dict[str, Any]:
    """One run of our wave through the library entry point."""
    from cloudops.runbooks.patch_wave import execute_wave

    started = time.monotonic()
    result = execute_wave(target, catalog, plan)
    return {
        "ok": not result.halted,
        # Wall time around the whole call, as ansible-playbook's is around its process.
        "seconds": time.monotonic() - started,
        "wave_seconds": result.seconds,
        "batches": [b.seconds for b in result.batches],
        "reason": result.reason,
        "phases": {n: h.timings for n, h in result.hosts.items()},
    }


def ideal(target: Any, catalog: Any, plan: Any, fleet_name: str) -> dict[str, Any]:
    """Per batch the slowest host's own time, each host waved alone from first-boot state."""
    from dataclasses import replace

    from cloudops.runbooks.patch_wave import execute_wave

    own: dict[str, float] = {}
    for batch in plan.batches:
        for host in batch:
            reset(fleet_name)
            alone = replace(plan, batches=((host,),), canary_batches=0)
            own[host] = execute_wave(target, catalog, alone).hosts[host].seconds
    per_batch = [max(own[h] for h in batch) for batch in plan.batches]
    return {"batches": per_batch, "seconds": sum(per_batch)}


def bench_size(size: int, rounds: int, venv: Path) -> dict[str, Any]:
    """A B rounds at one fleet size, then the ideal and the scan."""
    from cloudops.runbooks.patch_wave import FleetTarget, find_fleet, plan_wave, scan_fleet

    name = bench_fleet(size)
    reset(name)
    loaded, fleet, policy = find_fleet(name)
    target = FleetTarget(catalog_file=str(loaded.path), estate=loaded.catalog.estate, fleet=name)
    started = time.monotonic()
    scan_fleet(fleet, policy)
    scan_seconds = time.monotonic() - started
    plan = plan_wave(target, loaded.catalog, now=datetime.now(UTC))
    work = write_ansible_side(fleet, policy, plan, SANDBOX / "bench-patch" / name)
    ours, theirs = [], []
    for _ in range(rounds):
        reset(name)
        ours.append(run_ours(target, loaded.catalog, plan))
        reset(name)
        theirs.append(run_ansible(venv, work))
    best = ideal(target, loaded.catalog, plan, name)
    ours_median = statistics.median(r["seconds"] for r in ours)
    theirs_median = statistics.median(r["seconds"] for r in theirs)
    return {
        "hosts": size,
        "scan_seconds": scan_seconds,
        "ours": ours,
        "ansible": theirs,
        "ideal": best,
        "ours_median": ours_median,
        "ansible_median": theirs_median,
        "ours_vs_ansible": ours_median / theirs_median,
        "ours_vs_ideal": ours_median / best["seconds"],
    }


def main() -> None:
    """Run every size and print the summary."""
    import logging

    # The SSH hook logs every command at INFO; the benchmark's output is its summary.
    logging.basicConfig(level=logging.WARNING, force=True)
    for name in ("paramiko", "airflow", "cloudops"):
        logging.getLogger(name).setLevel(logging.WARNING)
    sizes = [int(s) for s in os.environ.get("BENCH_PATCH_SIZES", "6 30").split()]
    rounds = int(os.environ.get("BENCH_PATCH_ROUNDS", "3"))
    venv = ansible_venv()
    out = {
        "date": datetime.now(UTC).isoformat(),
        "cores": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "sizes": [],
    }
    for size in sizes:
        out["sizes"].append(bench_size(size, rounds, venv))
        # Each size's figures are kept as soon as they exist: a later size that fails loses nothing.
        partial = SANDBOX / "bench-patch" / f"result-{size}.json"
        partial.write_text(json.dumps(out["sizes"][-1], indent=1, default=str) + "\n")
    text = json.dumps(out, indent=1, default=str)
    result = SANDBOX / "bench-patch" / "result.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(text + "\n")
    print(text)
    print(f"written to {result}", file=sys.stderr)


if __name__ == "__main__":
    main()
