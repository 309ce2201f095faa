"""Benchmark: parse every DAG file against a catalog of 500 databases and 50 fleets of 40 hosts.

Targets (issue 2): all DAG files under 2 s in total, none over 200 ms. Each round runs Airflow's
DagBag in a fresh interpreter, as the dag-processor does, once over the whole folder and once per
file on its own (a file parsed alone cannot reuse a catalog another file already loaded).
Run by hand or with `make bench`; it prints figures and asserts nothing.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from generate_catalog import write_catalog  # noqa: E402

PARSE = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
total = time.perf_counter() - started
print(json.dumps({
    "total": total,
    "files": {s.file: s.duration.total_seconds() for s in bag.dagbag_stats},
    "dags": len(bag.dag_ids),
    "errors": list(bag.import_errors),
}))
"""


def parse_in_fresh_process(target: Path, catalog: Path, cache: Path) -> dict[str, object]:
    env = {
        **os.environ,
        # Deployments run with bytecode caches (the Docker image compiles them); this machine sets
        # PYTHONDONTWRITEBYTECODE, so give every parse one shared cache, warmed by the first parse.
        "PYTHONPYCACHEPREFIX": str(cache.parent / "pycache"),
        "CLOUDOPS_CATALOG": str(catalog),
        "CLOUDOPS_CACHE_DIR": str(cache),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    output = subprocess.run(
        [sys.executable, "-c", PARSE, str(target)], env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def report(title: str, values: list[float], target: str = "") -> None:
    print(
        f"  {title:34s} {statistics.median(values) * 1000:6.0f} ms "
        f"({min(values) * 1000:.0f}-{max(values) * 1000:.0f})  {target}"
    )


def main(rounds: int = 5) -> None:
    dags = ROOT / "dags"
    files = sorted(path.name for path in dags.glob("*.py"))
    cold_whole: list[float] = []
    warm_whole: list[float] = []
    cold_file: dict[str, list[float]] = {name: [] for name in files}
    warm_file: dict[str, list[float]] = {name: [] for name in files}
    dag_count = 0
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "runbooks"
        write_catalog(catalog)
        parse_in_fresh_process(dags, catalog, Path(tmp) / "cache-warmup")  # fills the bytecode cache
        for round_number in range(rounds):
            # Cold: an empty catalog cache, as after a deploy that changed every catalog file.
            cache = Path(tmp) / f"cache-{round_number}"
            result = parse_in_fresh_process(dags, catalog, cache)
            if result["errors"]:
                raise SystemExit(f"import errors: {result['errors']}")
            dag_count = int(result["dags"])
            cold_whole.append(float(result["total"]))
            warm_whole.append(float(parse_in_fresh_process(dags, catalog, cache)["total"]))
            for name in files:
                cold = parse_in_fresh_process(dags / name, catalog, Path(tmp) / f"cold-{round_number}-{name}")
                cold_file[name].append(sum(cold["files"].values()))
                warm = parse_in_fresh_process(dags / name, catalog, cache)
                warm_file[name].append(sum(warm["files"].values()))
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}")
    print("catalog: 10 estates, 500 databases, 50 fleets x 40 hosts (2000 hosts)")
    print(f"rounds: {rounds}; median (min-max); each parse in a fresh interpreter\n")
    print(f"whole dags folder, one DagBag ({dag_count} DAGs)")
    report("cold (empty catalog cache)", cold_whole, "target < 2000 ms")
    report("warm (catalog unchanged)", warm_whole, "target < 2000 ms")
    print("\neach DAG file parsed alone (as Airflow's dag-processor does)")
    for name in files:
        report(f"{name}, cold", cold_file[name], "target < 200 ms")
        report(f"{name}, warm", warm_file[name], "target < 200 ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
