"""The sandbox's probe process: `cloudops probe run` over the sandbox catalog, with airflow.env's connections.

It starts last in `up` (it needs the connections every other component contributes to airflow.env) and
stops first in `down` (so that stopping the estate is not recorded as an outage). A running probe
process is restarted when airflow.env changed, since it read its connections when it started.
Samples go to <sandbox>/samples/<estate>/; airflow.env names that directory as CLOUDOPS_PROBE_SAMPLES
for the report and `cloudops probe coverage`.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from cloudops.probes.coverage import SAMPLES_ENV
from cloudops.probes.runner import STATE_FILE, read_state
from cloudops.sandbox.layout import SandboxLayout, read_env_file
from cloudops.sandbox.process import (
    RUNNING,
    STALE,
    Binary,
    Daemon,
    Say,
    spawn_detached,
    stop_daemon,
    terminate,
    wait_until,
)

START_TIMEOUT = 60.0  # importing Airflow's SDK takes ~3 s on a busy machine; planning is instant
READY_LINE = "probing "


class ProbeProcess:
    """The probe process component (no port of its own; it only connects out)."""

    def __init__(self, layout: SandboxLayout) -> None:
        self.layout = layout
        self.name = "probes"
        self.samples = layout.dir / "samples"
        self.address = "-"
        self.log = layout.log_file(self.name)
        self.argv = [
            sys.executable,
            "-m",
            "cloudops.cli",
            "probe",
            "run",
            "--catalog",
            str(layout.catalog_path),
            "--samples",
            str(self.samples),
        ]
        self.daemon = Daemon(layout.pid_file(self.name), marker=f"--samples {self.samples}")

    @property
    def detail(self) -> str:
        state = read_state(self.samples / STATE_FILE)
        if state is None:
            return f"samples in {self.samples} (no batch written yet)"
        at = datetime.fromisoformat(str(state.get("at"))).strftime("%H:%M:%S")
        bad = state.get("last_batch_bad") or []
        said = f", down: {', '.join(bad)}" if bad else ""
        return f"{state.get('targets')} targets, last batch {at} UTC{said}; samples in {self.samples}"

    def binaries(self) -> list[Binary]:
        return []

    def endpoints(self) -> list[tuple[str, int]]:
        return []

    def settings(self) -> dict[str, str]:
        """What airflow.env tells the report and the CLI: where the samples are."""
        return {SAMPLES_ENV: str(self.samples)}

    def connections(self) -> dict[str, dict[str, Any]]:
        return {}

    def ensure(self, say: Say, *, restart: bool = False) -> None:
        """Start the probe process, or restart it when ``restart`` (its connections changed)."""
        state, pid = self.daemon.state()
        if state == RUNNING and pid is not None:
            if not restart:
                say(f"{self.name}: already running (pid {pid})")
                return
            terminate(pid, what=self.name, timeout=30)
            say(f"{self.name}: stopped (pid {pid}) to read the new connections")
        if state == STALE:
            self.daemon.forget()
        plugins_dir = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (plugins_dir, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, **read_env_file(self.layout.env_file), "PYTHONPATH": path}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        proc = spawn_detached(self.argv, log_path=self.log, env=env, cwd=self.layout.dir)

        def ready() -> bool:
            with self.log.open("rb") as handle:
                handle.seek(offset)
                return READY_LINE.encode() in handle.read()

        wait_until(
            ready, what=self.name, log_path=self.log, timeout=START_TIMEOUT, alive=lambda: proc.poll() is None
        )
        self.daemon.record(proc.pid)
        say(f"{self.name}: started (pid {proc.pid}), samples in {self.samples}")

    def stop(self, say: Say) -> None:
        """Stop the probe process (it writes the samples it took first); samples stay on disk."""
        stop_daemon(self.daemon, what=self.name, say=say, timeout=30)


__all__ = ["ProbeProcess"]
