"""A SIGKILLed task takes its loaders and dumps with it (PR_SET_PDEATHSIG), through the real code paths.

A task process is stood in for by a Python subprocess that starts a child through
``client_tools.run_restore_tool`` (pg_restore and mariadb loaders) or ``pipeline.stream_command_to_object``
(pg_dump, mariadb-dump, into the sandbox's S3). The child writes its pid and sleeps; the subprocess is
SIGKILLed, so none of its cleanup runs; the child must be gone soon after. The child's own process
group survives a kill of the task's group, so only the kernel's parent-death signal can end it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cloudops.sandbox.process import command_line

pytestmark = pytest.mark.integration
BOUND_SECONDS = 20.0

CHILD = "echo $$ > {pid_file}; exec sleep 300"
RESTORE_TOOL = """
from cloudops.engines.client_tools import run_restore_tool
run_restore_tool(["/bin/sh", "-c", {child!r}], env={{}}, timeout_seconds=600, description="loader")
"""
PIPELINE = """
import json, os
from datetime import timedelta
from cloudops.engines import DumpCommand
from cloudops.repository.pipeline import stream_command_to_object
from tests.integration.estates import admin_client
command = DumpCommand(argv=["/bin/sh", "-c", {child!r}], env={{}}, object_name="x", format="raw",
                      description="dump")
stream_command_to_object(command, admin_client(), {bucket!r}, "children/dump.zst", level=1,
                         timeout=timedelta(minutes=10))
"""


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie waiting for its (new) parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _wait(condition: object, what: str) -> None:
    deadline = time.monotonic() + BOUND_SECONDS
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {BOUND_SECONDS:g} s")
        time.sleep(0.05)


def _kill_task_and_watch_child(program: str, pid_file: Path) -> None:
    project = Path(__file__).resolve().parents[2]
    task = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(program)],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project)},
        start_new_session=True,
    )
    try:
        _wait(lambda: pid_file.exists() and pid_file.read_text().strip(), "the child did not start")
        child = int(pid_file.read_text())
        assert "sleep" in (command_line(child) or ""), "the child runs the program itself (exec'd)"
        assert os.getpgid(child) == child, "the child leads a process group of its own"

        os.killpg(task.pid, signal.SIGKILL)  # the task's whole group: none of its cleanup runs
        task.wait(timeout=BOUND_SECONDS)

        _wait(lambda: _gone(child), f"child {child} still runs after its task was SIGKILLed")
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
            task.wait(timeout=BOUND_SECONDS)
        if pid_file.exists() and not _gone(child := int(pid_file.read_text() or 0)) and child:
            os.kill(child, signal.SIGKILL)


def test_a_loader_dies_with_its_sigkilled_task(sandbox_env: dict[str, str], tmp_path: Path) -> None:
    pid_file = tmp_path / "loader.pid"
    _kill_task_and_watch_child(RESTORE_TOOL.format(child=CHILD.format(pid_file=pid_file)), pid_file)


def test_a_dump_dies_with_its_sigkilled_task(
    sandbox_env: dict[str, str], tmp_path: Path, bucket: str
) -> None:
    pid_file = tmp_path / "dump.pid"
    _kill_task_and_watch_child(
        PIPELINE.format(child=CHILD.format(pid_file=pid_file), bucket=bucket), pid_file
    )
