"""Run whole runbooks through Airflow itself: `airflow dags test` against a fresh metadata database."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

DAG_TEST_TIMEOUT_SECONDS = 600


@pytest.fixture(scope="session")
def airflow_env(
    tmp_path_factory: pytest.TempPathFactory, project_root: Path, sandbox_env: dict[str, str]
) -> dict[str, str]:
    """An environment with its own AIRFLOW_HOME (migrated once per session) and the sandbox's connections."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        **sandbox_env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(project_root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(project_root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "CLOUDOPS_CATALOG": str(project_root / "runbooks"),
        # `airflow dags test` cannot run Deadline Alerts: see cloudops.runbooks.common.
        "CLOUDOPS_DEADLINE_ALERTS": "false",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return env


@pytest.fixture
def dags_test(airflow_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `airflow dags test <dag_id>` as an engineer would; return the finished process."""

    def run(dag_id: str, *options: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["airflow", "dags", "test", dag_id, *options],
            env={**airflow_env, **extra_env},
            capture_output=True,
            text=True,
            timeout=DAG_TEST_TIMEOUT_SECONDS,
            check=False,
        )

    return run
