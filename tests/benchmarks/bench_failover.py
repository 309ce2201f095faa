"""Failover benchmark: client-observed write downtime and whole drill time, side by side, round by round.

Four sides, each measured by the same write probe (a numbered row every 15 ms through the application's
connection string, every attempt recorded, stalls counted):

(a) our native PostgreSQL drill (switchover and fail-back) on a throw-away ``wal_log_hints`` pair of
    this benchmark's own (the sandbox's pair holds the seeded orders; a pair of our own is restarted at
    will), loopback ports 24401/24402 plus the sandbox's port offset;
(b) ``patronictl switchover --force`` alone on the sandbox's Patroni cluster (patronictl from the
    sandbox's Patroni venv), there and back, the probe running around it; the time until the old leader
    streams again is read from ``GET /cluster`` (what patronictl itself does not wait for);
(c) our drill driving that Patroni cluster (``POST /switchover`` through the manager);
(d) our MariaDB GTID drill on the sandbox's MariaDB pair.

Write downtime is per switchover (each drill has two: there and back); "switch and back" is from the
first switchover request to the old primary replicating again after the fail-back, 1 s of settling
between (our drills and (b) alike); "whole drill" is our drill's record from preflight to the last
read-back. Targets (issue 11): (a) <= 1 s and <= 0.5 x (b); (c) <= 1.1 x (b); (d) <= 1 s; 0 acknowledged
writes lost everywhere; (a) whole drill with fail-back <= 10 s. Asserts nothing: prints a table and the
JSON summary (also written to $CLOUDOPS_SANDBOX_DIR/bench-failover/results.json).

Run: make bench-failover (BENCH_FAILOVER_ROUNDS=5).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SANDBOX = Path(os.environ.get("CLOUDOPS_SANDBOX_DIR", REPO / ".sandbox"))
BINDIR = Path("/usr/lib/postgresql/15/bin")
OFFSET = int(os.environ.get("CLOUDOPS_SANDBOX_PORT_OFFSET", "0"))
PORTS = (24401 + OFFSET, 24402 + OFFSET)
ROUNDS = int(os.environ.get("BENCH_FAILOVER_ROUNDS", "5"))
SETTLE_S = 1.0
USED_BY = "failover benchmark"


def _as_postgres(argv: list[str]) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=120, check=False, cwd="/")
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stdout}{done.stderr}")


@contextlib.contextmanager
def native_pair() -> Iterator[tuple[Any, str]]:
    """A primary and a ``pg_basebackup -R`` replica of our own, with wal_log_hints; removed at the end."""
    from cloudops.engines.postgres.switchover import PostgresNode
    from cloudops.failover.managers import NativePostgresManager

    base = Path(tempfile.mkdtemp(prefix="cloudops-bench-failover-", dir="/tmp"))
    base.chmod(0o755)
    shutil.chown(base, "postgres")
    dirs = (base / "n1", base / "n2")
    nodes = {}
    for index, (name, data_dir, port) in enumerate(zip(("n1", "n2"), dirs, PORTS, strict=True)):
        conn_id = f"cloudops_bench_failover_{name}"
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": port, "login": "postgres"}
        )
        nodes[name] = PostgresNode(name, conn_id, str(data_dir), bin_dir=str(BINDIR))
        if index == 0:
            _as_postgres(
                [str(BINDIR / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "--no-sync"]
            )
        else:
            _as_postgres(
                [
                    str(BINDIR / "pg_basebackup"),
                    *("-D", str(data_dir), "-R", "-X", "stream", "-c", "fast"),
                    *("-h", "127.0.0.1", "-p", str(PORTS[0]), "-U", "postgres"),
                ]
            )
        conf = data_dir / "postgresql.conf"
        conf.write_text(
            conf.read_text()
            + f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{data_dir}'\n"
            f"cluster_name = '{name}'\nwal_level = replica\nwal_log_hints = on\nmax_wal_senders = 5\n"
            "wal_keep_size = 64MB\nlogging_collector = off\nwal_receiver_status_interval = 1s\n"
        )
        _as_postgres(
            [str(BINDIR / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data_dir), "-l", f"{data_dir}.log"]
        )
    dsn = (
        f"host=127.0.0.1,127.0.0.1 port={PORTS[0]},{PORTS[1]} dbname=postgres user=postgres "
        "target_session_attrs=read-write connect_timeout=2"
    )
    try:
        yield NativePostgresManager("bench_pair", nodes, used_by=USED_BY), dsn
    finally:
        for data_dir in reversed(dirs):
            if (data_dir / "postmaster.pid").exists():
                with contextlib.suppress(SystemExit):
                    _as_postgres(
                        [str(BINDIR / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(data_dir)]
                    )
        shutil.rmtree(base, ignore_errors=True)


def _windows(analysis: Any) -> list[float]:
    return [round(w.seconds, 3) for w in analysis.windows]


def _switch_and_back(record: Any) -> float | None:
    steps = [p for p in record.phases if p.name.startswith(("switchover.", "fail_back."))]
    return round(steps[-1].ended - steps[0].started, 3) if steps else None


def our_drill(manager: Any, probe: Any, run_id: str) -> dict[str, Any]:
    """One of our drills (switchover and fail-back) under the probe."""
    from cloudops.failover.drill import DrillOptions, run_planned_drill
    from cloudops.failover.policy import DrillGuards, DrillTargets

    record = run_planned_drill(
        manager,
        run_id=run_id,
        probe_dsn=probe,
        targets=DrillTargets(max_write_downtime_s=30, max_drill_s=600),
        guards=DrillGuards(min_interval=timedelta(0), catch_up_timeout_s=30),
        options=DrillOptions(baseline_acks=30, settle_s=SETTLE_S),
    )
    analysis = record.analysis
    return {
        "windows_s": _windows(analysis),
        "downtime_s": round(analysis.write_downtime_s, 3),
        "max_ack_gap_s": round(analysis.max_ack_gap_s, 3),
        "lost": analysis.acked_writes_lost,
        "in_doubt": analysis.in_doubt,
        "switch_and_back_s": _switch_and_back(record),
        "whole_drill_s": round(record.drill_seconds or 0, 3),
        "aborted": record.aborted,
        "degraded": record.degraded_redundancy,
    }


def patronictl_alone(manager: Any, probe: Any, run_id: str) -> dict[str, Any]:
    """``patronictl switchover --force`` there and back with the probe running; the old leader's
    streaming read from ``GET /cluster`` (bounded)."""
    from cloudops.failover.analysis import analyse
    from cloudops.sandbox.layout import SandboxLayout

    layout = SandboxLayout.from_environment()
    patronictl = layout.patroni_venv / "bin" / "patronictl"
    topology = manager.topology()
    leader, replica = topology.primary, topology.replicas[0]
    config = layout.data_root / "patroni" / leader / "patroni.yml"

    def switch(old: str, new: str) -> tuple[float, float]:
        started = time.monotonic()
        done = subprocess.run(
            [
                str(patronictl),
                "-c",
                str(config),
                "switchover",
                "--leader",
                old,
                "--candidate",
                new,
                "--force",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        returned = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"patronictl switchover failed: {done.stdout}{done.stderr}")
        ok, seen = manager.wait_streaming(old, timeout_s=60)
        if not ok:
            raise SystemExit(f"after patronictl, {old} does not stream: {seen}")
        return returned, time.monotonic() - started

    writer = probe.writer(run_id=run_id, used_by=USED_BY, interval_s=0.015, max_seconds=300)
    writer.prepare()
    with writer:
        writer.wait_for_acks(30, within_s=30)
        began = time.monotonic()
        there = switch(leader, replica)
        time.sleep(SETTLE_S)
        back = switch(replica, leader)
        switch_and_back = time.monotonic() - began
        writer.wait_for_acks(10, within_s=30)
        attempts = writer.stop()
    present, _ = writer.read_back()
    analysis = analyse(attempts, present_ids=present)
    return {
        "windows_s": _windows(analysis),
        "downtime_s": round(analysis.write_downtime_s, 3),
        "max_ack_gap_s": round(analysis.max_ack_gap_s, 3),
        "lost": analysis.acked_writes_lost,
        "in_doubt": analysis.in_doubt,
        "patronictl_returned_s": [round(there[0], 3), round(back[0], 3)],
        "until_old_streams_s": [round(there[1], 3), round(back[1], 3)],
        "switch_and_back_s": round(switch_and_back, 3),
    }


def summary(rows: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    values = [
        v for row in rows for v in (row[key] if isinstance(row[key], list) else [row[key]]) if v is not None
    ]
    if not values:
        return None
    return {"min": min(values), "median": round(statistics.median(values), 3), "max": max(values)}


def main() -> None:
    from cloudops.catalog.loader import load_catalog_file
    from cloudops.failover.managers import manager_for
    from cloudops.failover.probe import libpq_probe_target, probe_target
    from cloudops.failover.probe_mariadb import mariadb_probe_target

    catalog = load_catalog_file(REPO / "runbooks" / "sandbox.yaml")
    patroni = catalog.cluster("ledger_patroni")
    mariadb = catalog.cluster("inventory_mariadb_cluster")
    patroni_manager = manager_for(catalog, patroni, used_by=USED_BY)
    mariadb_manager = manager_for(catalog, mariadb, used_by=USED_BY)
    patroni_probe = libpq_probe_target(
        patroni.probe.conn_id, used_by=USED_BY, database=patroni.probe.database
    )
    mariadb_probe = mariadb_probe_target(
        mariadb.probe.conn_id, used_by=USED_BY, database=mariadb.probe.database
    )
    results: dict[str, list[dict[str, Any]]] = {
        "a_native_pg": [],
        "b_patronictl": [],
        "c_our_patroni": [],
        "d_mariadb": [],
    }
    stamp = datetime.now(tz=UTC).strftime("%H%M%S")
    with native_pair() as (native_manager, dsn):
        native_probe = probe_target(dsn, used_by=USED_BY)
        sides: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
            ("a_native_pg", lambda run: our_drill(native_manager, native_probe, run)),
            ("b_patronictl", lambda run: patronictl_alone(patroni_manager, patroni_probe, run)),
            ("c_our_patroni", lambda run: our_drill(patroni_manager, patroni_probe, run)),
            ("d_mariadb", lambda run: our_drill(mariadb_manager, mariadb_probe, run)),
        ]
        for round_no in range(1, ROUNDS + 1):
            for side, measure in sides:
                row = measure(f"bench-{stamp}-{side}-{round_no}")
                results[side].append(row)
                print(
                    f"round {round_no} {side:14} windows {row['windows_s']} s, lost {row['lost']}, "
                    f"switch and back {row['switch_and_back_s']} s"
                    + (f", whole drill {row['whole_drill_s']} s" if "whole_drill_s" in row else ""),
                    flush=True,
                )
    report: dict[str, Any] = {"rounds": ROUNDS, "load_average": os.getloadavg(), "sides": {}}
    for side, rows in results.items():
        report["sides"][side] = {
            "windows_s": summary(rows, "windows_s"),
            "max_ack_gap_s": summary(rows, "max_ack_gap_s"),
            "switch_and_back_s": summary(rows, "switch_and_back_s"),
            "whole_drill_s": summary(rows, "whole_drill_s") if "whole_drill_s" in rows[0] else None,
            "lost_total": sum(r["lost"] for r in rows),
            "in_doubt_total": sum(r["in_doubt"] for r in rows),
            "rows": rows,
        }
    s = report["sides"]
    median = {side: s[side]["windows_s"]["median"] for side in s}
    report["targets"] = {
        "a_downtime_le_1s": median["a_native_pg"] <= 1.0,
        "a_le_half_b": median["a_native_pg"] <= 0.5 * median["b_patronictl"],
        "c_le_1_1_b": median["c_our_patroni"] <= 1.1 * median["b_patronictl"],
        "d_downtime_le_1s": median["d_mariadb"] <= 1.0,
        "zero_acked_lost": all(s[side]["lost_total"] == 0 for side in s),
        "a_whole_drill_le_10s": s["a_native_pg"]["whole_drill_s"]["max"] <= 10.0,
    }
    out = SANDBOX / "bench-failover"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "sides"}, indent=2))
    print(
        json.dumps({side: {k: v for k, v in val.items() if k != "rows"} for side, val in s.items()}, indent=2)
    )


if __name__ == "__main__":
    sys.exit(main())
