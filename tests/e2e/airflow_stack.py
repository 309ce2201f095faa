"""A real running Airflow for e2e tests that need what `airflow dags test` cannot do: users, REST
triggers that carry the requester's name, and Human-in-the-loop answers.

api-server, scheduler and dag-processor (LocalExecutor on SQLite; no triggerer: in Airflow 3.3 a
Human-in-the-loop step parks in AWAITING_INPUT and the API's response resumes it), with a catalog
directory, an evidence ledger and SimpleAuthManager users (role USER) of the test's own. Its process
helpers (start, stop, wait_for) also serve tests/e2e/test_restore_approval.py's own stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIGRATE_TIMEOUT = 120
READY_TIMEOUT = 90  # api-server healthy, scheduler and dag-processor heartbeating
PARSED_TIMEOUT = 90  # the DAG under test serialized by the dag-processor
STOP_TIMEOUT = 20


def wait_for(
    what: str,
    probe: Callable[[], Any],
    *,
    timeout: float,
    done: Callable[[Any], bool] = bool,
    interval: float = 1.0,
) -> Any:
    """Poll ``probe`` until ``done`` of what it returns; fail naming what was awaited and last seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except AssertionError:  # a verdict, not a server still starting
            raise
        except Exception as error:  # a server still starting: keep waiting, report it if it lasts
            last = f"{type(error).__name__}: {error}"
        else:
            if done(last):
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class AirflowStack:
    """The running Airflow and what a test needs to talk to it."""

    url: str
    env: dict[str, str]
    passwords: dict[str, str]
    evidence: Path
    processes: list[Process] = field(default_factory=list)

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.processes)

    def token(self, user: str) -> str:
        import httpx

        response = httpx.post(
            f"{self.url}/auth/token", json={"username": user, "password": self.passwords[user]}, timeout=10
        )
        assert response.status_code in (200, 201), f"token for {user}: {response.status_code} {response.text}"
        return str(response.json()["access_token"])

    def api(
        self, user: str, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        import httpx

        response = httpx.request(
            method,
            f"{self.url}/api/v2{path}",
            headers={**(headers or {}), "Authorization": f"Bearer {self.token(user)}"},
            timeout=20,
            **kwargs,
        )
        assert response.is_success, f"{method} {path} as {user}: {response.status_code} {response.text[:500]}"
        return response.json()

    def trigger(self, user: str, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run = self.api(
            user, "POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}}
        )
        assert run["triggering_user_name"] == user
        return str(run["dag_run_id"])

    def task_states(self, user: str, dag_id: str, run_id: str) -> dict[str, str]:
        found = self.api(user, "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in found}

    def task_log(self, user: str, dag_id: str, run_id: str, task_id: str) -> str:
        ti = self.api(user, "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        logs = self.api(
            user,
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{ti['try_number']}",
            params={"full_content": "true"},
            headers={"Accept": "application/json"},
        )
        return json.dumps(logs)

    def wait_run_end(self, user: str, dag_id: str, run_id: str, timeout: float) -> str:
        def ended() -> str | None:
            state = self.api(user, "GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            return state if state in ("success", "failed") else None

        try:
            return str(wait_for(f"run {run_id} to end", ended, timeout=timeout))
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.tails()}") from None

    def wait_awaiting_input(self, user: str, dag_id: str, run_id: str, task_id: str, timeout: float) -> None:
        """Wait until ``task_id`` parks for its answer, then until the scheduler has taken the exit of the
        process that parked it.

        Airflow 3.3.2 race: parked and resumed execution share one TaskInstanceKey. An answer that comes
        before the scheduler has processed the parking process's exit gets the step re-queued, and then
        that stale "success" fails it. People answer after seconds; the test waits for that signal
        (nothing in the REST API shows it) instead of sleeping a guessed time.
        """

        def states() -> dict[str, str]:
            seen = self.task_states(user, dag_id, run_id)
            assert "failed" not in seen.values(), f"a step failed before the approval: {seen}"
            return seen

        try:
            wait_for(
                f"{task_id} of {run_id} to await input (task states)",
                states,
                done=lambda seen: seen.get(task_id) == "awaiting_input",
                timeout=timeout,
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.tails()}") from None
        scheduler = next(p for p in self.processes if p.name == "scheduler")
        needle = f"task_id='{task_id}', run_id='{run_id}'"
        wait_for(
            f"the scheduler to process the exit of the process that parked {task_id} of {run_id}",
            lambda: any(
                "Received executor event with state success" in line and needle in line
                for line in scheduler.log.read_text(errors="replace").splitlines()
            ),
            timeout=30,
            interval=0.5,
        )

    def answer(self, user: str, dag_id: str, run_id: str, task_id: str, option: str) -> dict[str, Any]:
        return dict(
            self.api(
                user,
                "PATCH",
                f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
                json={"chosen_options": [option], "params_input": {}},
            )
        )


def stop(process: Process) -> None:
    """Stop a process, its process group and every descendant (task supervisors set their own group)."""
    import psutil

    try:
        tree = [
            psutil.Process(process.popen.pid),
            *psutil.Process(process.popen.pid).children(recursive=True),
        ]
    except psutil.NoSuchProcess:
        tree = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, sig)
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(timeout=STOP_TIMEOUT if sig == signal.SIGTERM else 5)
        _, alive = psutil.wait_procs(tree, timeout=5)
        if not alive and process.popen.poll() is not None:
            return


def start(env: dict[str, str], home: Path, name: str, *args: str) -> Process:
    log = home / f"{name}.log"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            ["airflow", *args],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends it with all its workers
        )
    return Process(name, popen, log)


@contextlib.contextmanager
def running_airflow(
    base: Path,
    *,
    project_root: Path,
    sandbox_env: dict[str, str],
    catalog_dir: Path,
    users: tuple[str, ...],
    dag_id: str,
    extra_env: dict[str, str] | None = None,
) -> Iterator[AirflowStack]:
    """Start Airflow on a free port reading ``catalog_dir``; unpause ``dag_id`` once it is parsed.

    Every user has the USER role (the least that may trigger a DAG and answer a Human-in-the-loop step).
    """
    home, evidence = base / "airflow-home", base / "evidence"
    for folder in (home, evidence):
        folder.mkdir(parents=True, exist_ok=True)
    passwords = {name: f"{name}-{secrets.token_hex(6)}" for name in users}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__")}
    env.update(sandbox_env)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(project_root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(project_root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",  # two shared cores
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:user" for u in users),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": url,
            # api-server and scheduler must sign and check the execution API's tokens with one key.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "CLOUDOPS_CATALOG": str(catalog_dir),
            "CLOUDOPS_EVIDENCE_DIR": str(evidence),
            "CLOUDOPS_DEADLINE_ALERTS": "false",
            # Only the DAG under test runs: the others stay paused.
            "CLOUDOPS_PAUSED_AT_CREATION": "true",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **(extra_env or {}),
        }
    )
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps(passwords))
    processes: list[Process] = []
    try:
        migrated = subprocess.run(
            ["airflow", "db", "migrate"], env=env, capture_output=True, text=True, timeout=MIGRATE_TIMEOUT
        )
        assert migrated.returncode == 0, (migrated.stdout + migrated.stderr)[-3000:]
        create_pools(env, home)
        processes.append(start(env, home, "api-server", "api-server", "--workers", "1"))
        processes.append(start(env, home, "scheduler", "scheduler"))
        processes.append(start(env, home, "dag-processor", "dag-processor"))
        stack = AirflowStack(url, env, passwords, evidence, processes)
        try:
            _wait_until_ready(stack, users[0], dag_id)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{stack.tails()}") from None
        stack.api(users[0], "PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        yield stack
    finally:
        for process in processes:
            stop(process)


def create_pools(env: dict[str, str], home: Path) -> None:
    """The pools the runbooks need (one failover drill slot per estate), as `make airflow-db` makes them."""
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "cloudops"), "failover", "pools"],
        env=env,
        capture_output=True,
        text=True,
        timeout=MIGRATE_TIMEOUT,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    if not json.loads(listed.stdout):
        return
    (home / "pools.json").write_text(listed.stdout)
    imported = subprocess.run(
        ["airflow", "pools", "import", str(home / "pools.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=MIGRATE_TIMEOUT,
    )
    assert imported.returncode == 0, (imported.stdout + imported.stderr)[-3000:]


def _wait_until_ready(stack: AirflowStack, user: str, dag_id: str) -> None:
    import httpx

    def healthy() -> dict[str, Any] | None:
        for process in stack.processes:
            assert process.popen.poll() is None, f"{process.name} exited with {process.popen.returncode}"
        health = httpx.get(f"{stack.url}/api/v2/monitor/health", timeout=5).json()
        parts = ("metadatabase", "scheduler", "dag_processor")
        return health if all((health.get(p) or {}).get("status") == "healthy" for p in parts) else None

    wait_for("the api-server, scheduler and dag-processor to report healthy", healthy, timeout=READY_TIMEOUT)

    def parsed() -> bool:
        errors = stack.api(user, "GET", "/importErrors")["import_errors"]
        assert not errors, f"DAG import errors: {errors}"
        return bool(stack.api(user, "GET", "/dags", params={"dag_id_pattern": dag_id})["dags"])

    wait_for(f"{dag_id} to be parsed and serialized by the dag-processor", parsed, timeout=PARSED_TIMEOUT)
