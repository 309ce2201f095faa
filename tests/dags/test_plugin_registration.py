"""The CloudOps plugin loads once, with its listener and auditor view, and without import errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.dags


def test_the_plugin_registers_once_without_import_errors(project_root: Path, tmp_path: Path) -> None:
    # A fresh interpreter with Airflow's plugins folder on sys.path, as every Airflow process has it.
    code = (
        "from airflow import plugins_manager as pm\n"
        "pm.ensure_plugins_loaded()\n"
        "print(repr(pm.get_import_errors()))\n"
        "plugins, _ = pm._get_plugins()\n"
        "print(sorted(p.name for p in plugins))\n"
        "(cloudops,) = [p for p in plugins if p.name == 'cloudops']\n"
        "print([l.__name__ for l in cloudops.listeners])\n"
    )
    env = {
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(project_root / "plugins"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(project_root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PATH": "/usr/bin:/bin",
    }
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    errors, names, listeners = run.stdout.strip().splitlines()[-3:]
    assert errors == "{}", errors
    assert names.count("'cloudops'") == 1
    assert listeners == "['cloudops.evidence.listener']"
