"""Benchmark: one probe process sampling 500 HTTP targets once a minute; its CPU use in % of one core.

Target (issue 12): under 5 % of a core for 500 targets at one sample a minute.

How to run it (no sandbox needed; about 5 minutes, most of it waiting for minutes to pass):

    .venv/bin/python tests/benchmarks/bench_probes.py [--targets 500] [--minutes 3] [--hung 0]

The targets are cheap local HTTP endpoints: a child process of this script serves ``/ok/N`` (200 "OK")
and ``/hang/N`` (accepts, never answers) with asyncio on one loopback port. A catalog of ``--targets``
endpoints (``--hung`` of them hanging; bound 5 s, body checked) in SLOs of 50 is written to a temporary
directory, and ``cloudops probe run`` is started on it as a process of its own. Its CPU time (user +
system, from /proc) is read once its first minute is written, and again ``--minutes`` later; the figure
is the difference over the wall time between. Also printed: start-up CPU, peak RSS, threads, samples
written per minute, samples that failed, and how late samples started after their planned offset. It
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
TICKS = os.sysconf("SC_CLK_TCK")


def serve(port: int, ready: Any) -> None:
    """The targets: one asyncio HTTP server; /ok/* answers at once, /hang/* never does."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        if request.startswith(b"GET /hang/"):
            await asyncio.sleep(3600)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nOK\n")
        try:
            await writer.drain()
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", port, backlog=1024)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def catalog(targets: int, hung: int, port: int) -> dict[str, object]:
    endpoints = [
        {
            "name": f"t{index:04d}",
            "url": f"http://127.0.0.1:{port}/{'hang' if index < hung else 'ok'}/{index}",
            "expect_body": "OK",
            "timeout": "5s",
        }
        for index in range(targets)
    ]
    slos = [
        {
            "name": f"bench_{start // 50:02d}",
            "targets": [{"kind": "endpoint", "name": e["name"]} for e in endpoints[start : start + 50]],
            "objectives": [
                {"role": "internal", "target_percent": 99.9},
                {"role": "sla", "target_percent": 99.5},
            ],
            "no_data_policy": "excluded",
        }
        for start in range(0, targets, 50)
    ]
    return {"estate": "bench", "owner": "bench", "endpoints": endpoints, "slos": slos}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15)


def status_value(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=500)
    parser.add_argument("--minutes", type=int, default=3)
    parser.add_argument("--hung", type=int, default=0, help="how many of the targets never answer")
    parser.add_argument("--port", type=int, default=28411)
    args = parser.parse_args()

    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(args.port, ready), daemon=True)
    server.start()
    if not ready.wait(10):
        raise SystemExit("the target server did not start in 10 s")
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        (root / "bench.yaml").write_text(yaml.safe_dump(catalog(args.targets, args.hung, args.port)))
        samples = root / "samples"
        argv = [sys.executable, "-m", "cloudops.cli", "probe", "run"]
        argv += ["--catalog", str(root / "bench.yaml"), "--samples", str(samples)]
        env = {**os.environ, "AIRFLOW_HOME": str(root / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
        with (root / "probe.log").open("wb") as log:
            probe = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            state = samples / "probe-state.json"
            deadline = time.monotonic() + 150
            while not state.exists():
                if probe.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"no first minute written; log:\n{(root / 'probe.log').read_text()[-3000:]}"
                    )
                time.sleep(0.5)
            first_cpu, first_wall = cpu_seconds(probe.pid), time.monotonic()
            time.sleep(60 * args.minutes)
            last_cpu, last_wall = cpu_seconds(probe.pid), time.monotonic()
            rss = status_value(probe.pid, "VmHWM")
            threads = status_value(probe.pid, "Threads")
        finally:
            probe.send_signal(signal.SIGTERM)
            probe.wait(timeout=30)
        server.terminate()

        from cloudops.probes.store import SampleStore
        from cloudops.probes.targets import plan_targets

        table = SampleStore(samples / "bench").read(
            datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        )
        rows = table.to_pylist()
        from cloudops.catalog import load_catalog_file

        planned = {t.key: t for t in plan_targets([load_catalog_file(root / "bench.yaml")])}
        late = [
            row["at"].timestamp() % 60 - planned[row["target"]].offset
            for row in rows
            if row["target"] in planned
        ]
        per_minute: dict[int, int] = {}
        for row in rows:
            minute = int(row["at"].timestamp() // 60)
            per_minute[minute] = per_minute.get(minute, 0) + 1
        failed = sum(1 for row in rows if not row["ok"])
        answering = {
            key for key, target in planned.items() if target.endpoint and "/ok/" in str(target.endpoint.url)
        }
        failed_answering = sum(1 for row in rows if not row["ok"] and row["target"] in answering)

    used = last_cpu - first_cpu
    wall = last_wall - first_wall
    print(f"targets: {args.targets} ({args.hung} hung), measured over {wall:.0f} s after the first minute")
    print(f"CPU: {used:.2f} s in {wall:.0f} s = {100 * used / wall:.2f} % of one core (target < 5 %)")
    print(f"start-up and first minute CPU: {first_cpu:.2f} s; peak RSS {rss}; threads {threads}")
    print(f"samples per minute: {sorted(per_minute.values())}")
    print(f"failed samples: {failed} ({failed_answering} of them of answering targets)")
    if late:
        # The store keeps whole seconds, so each figure is the lateness rounded down to a second (-1..0 is
        # "on time").
        print(
            f"sample time minus planned offset (whole seconds): min {min(late):.2f} s, "
            f"median {statistics.median(late):.2f} s, max {max(late):.2f} s"
        )


if __name__ == "__main__":
    main()
