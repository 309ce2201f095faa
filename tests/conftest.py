"""Shared fixtures: the project's paths and the sandbox's connections for the layers that need them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_CATALOG = ROOT / "runbooks" / "sandbox.yaml"


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository's root directory (read-only for tests)."""
    return ROOT


@pytest.fixture(scope="session")
def sandbox_env() -> dict[str, str]:
    """The sandbox's Airflow connections, loaded into this process's environment.

    Fails, never skips, when the sandbox is not running: `make test` starts it first.
    """
    from cloudops.sandbox.layout import read_env_file

    sandbox_dir = Path(os.environ.get("CLOUDOPS_SANDBOX_DIR", ROOT / ".sandbox"))
    env_file = sandbox_dir / "airflow.env"
    if not env_file.exists():
        pytest.fail(f"{env_file} does not exist: start the sandbox with `make sandbox` first")
    values = read_env_file(env_file)
    os.environ.update(values)
    return values


# Airflow writes its config into AIRFLOW_HOME on first import: keep a bare `pytest` run out of ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".sandbox" / "airflow"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
