"""Native PostgreSQL planned switchover, fail-back, abort and fence on a throw-away pair of this test's
own (the sandbox is left alone): a primary initialised with ``wal_log_hints=on`` (pg_rewind needs it)
and a ``pg_basebackup -R`` replica on loopback ports 24401/24402 (moved by
``CLOUDOPS_SANDBOX_PORT_OFFSET``, so that two runs side by side do not collide), in a temporary folder,
stopped and removed at the end of each test. The crash drills kill the primary's postmaster (SIGKILL).

The write probe connects as an application would: both hosts, ``target_session_attrs=read-write``.
The figures (write downtime, acknowledged writes lost) are printed for the report and compared with
the note's 0.29 s / 0 (``../shared/notes/failover.md``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from cloudops.engines.postgres import member_state
from cloudops.engines.postgres.switchover import (
    PostgresNode,
    RejoinFailed,
    SwitchoverAborted,
    fence,
    rejoin,
    server_running,
    switchover,
    unfence,
)
from cloudops.failover.analysis import analyse
from cloudops.failover.drill import DrillOptions, DrillRefused, run_drill, run_planned_drill
from cloudops.failover.managers import NativePostgresManager
from cloudops.failover.policy import DrillGuards, DrillTargets
from cloudops.failover.probe import ProbeError, WriteProbe, probe_target

pytestmark = pytest.mark.integration

BINDIR = Path("/usr/lib/postgresql/15/bin")
_OFFSET = int(os.environ.get("CLOUDOPS_SANDBOX_PORT_OFFSET") or 0)
PORTS = (24401 + _OFFSET, 24402 + _OFFSET)
CLUSTER = "drill_pair"
USED_BY = "failover drill test"
# The servers trust loopback; the password is there to prove it never reaches the record.
SECRET = "probe-s3cret"


def _as_postgres(argv: list[str], *, timeout: float = 120) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [*prefix, *argv], capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
    )
    assert done.returncode == 0, f"{argv[0]} failed: {done.stdout}{done.stderr}"


@dataclass
class Pair:
    n1: PostgresNode
    n2: PostgresNode
    dsn: str

    @property
    def manager(self) -> NativePostgresManager:
        return NativePostgresManager(CLUSTER, {"n1": self.n1, "n2": self.n2}, used_by=USED_BY)


def _settings(name: str, port: int, data_dir: Path) -> str:
    return (
        # The socket beside the data directory: pg_rewind after a crash cannot copy one inside it.
        f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{data_dir.parent}'\n"
        f"cluster_name = '{name}'\nwal_level = replica\nwal_log_hints = on\nmax_wal_senders = 5\n"
        "wal_keep_size = 64MB\nfsync = off\nlogging_collector = off\nwal_receiver_status_interval = 1s\n"
    )


@pytest.fixture
def pair(monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    if not (BINDIR / "initdb").exists():
        pytest.fail(f"{BINDIR}/initdb is missing: install postgresql-15 (make setup)")
    base = Path(tempfile.mkdtemp(prefix="cloudops-drill-", dir="/tmp"))
    base.chmod(0o755)
    shutil.chown(base, "postgres")
    dirs = (base / "n1", base / "n2")
    nodes = []
    for index, (name, data_dir, port) in enumerate(zip(("n1", "n2"), dirs, PORTS, strict=True)):
        conn_id = f"cloudops_test_drill_{name}"
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": port, "login": "postgres"}),
        )
        nodes.append(PostgresNode(name, conn_id, str(data_dir), bin_dir=str(BINDIR)))
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
        text = conf.read_text()
        # The replica's copy carries the primary's settings: its own come last and win.
        conf.write_text(text + _settings(name, port, data_dir))
        _as_postgres(
            [str(BINDIR / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data_dir), "-l", f"{data_dir}.log"]
        )
    dsn = (
        f"host=127.0.0.1,127.0.0.1 port={PORTS[0]},{PORTS[1]} dbname=postgres user=postgres "
        f"target_session_attrs=read-write connect_timeout=2 password={SECRET}"
    )
    try:
        yield Pair(nodes[0], nodes[1], dsn)
    finally:
        for data_dir in reversed(dirs):
            if (data_dir / "postmaster.pid").exists():
                with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                    _as_postgres(
                        [
                            str(BINDIR / "pg_ctl"),
                            "stop",
                            "-w",
                            "-t",
                            "30",
                            "-m",
                            "immediate",
                            "-D",
                            str(data_dir),
                        ]
                    )
        shutil.rmtree(base, ignore_errors=True)


def _sql(node: PostgresNode, statement: str) -> list[tuple[object, ...]]:
    import psycopg

    port = PORTS[0] if node.name == "n1" else PORTS[1]
    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
    ) as s:
        cursor = s.execute(statement)
        return cursor.fetchall() if cursor.description else []


def test_a_planned_drill_switches_over_and_back_losing_no_acknowledged_write(pair: Pair) -> None:
    record = run_planned_drill(
        pair.manager,
        run_id="it-planned-1",
        probe_dsn=pair.dsn,
        targets=DrillTargets(max_write_downtime_s=5, max_drill_s=60),
        guards=DrillGuards(catch_up_timeout_s=10),
        options=DrillOptions(baseline_acks=30, settle_s=1.0),
    )
    analysis = record.analysis
    assert analysis is not None
    print(
        f"\nnative PG planned drill: windows {[round(w.seconds, 3) for w in analysis.windows]} s, "
        f"max ack gap {analysis.max_ack_gap_s:.3f} s, acked {analysis.acked}, "
        f"lost {analysis.acked_writes_lost}, "
        f"in doubt {analysis.in_doubt}, errors {analysis.error_classes}, drill {record.drill_seconds:.2f} s"
    )
    assert record.aborted is None, record.aborted
    assert record.degraded_redundancy is None
    assert [v.status for v in record.verdicts] == ["PASS", "PASS", "PASS"], record.verdicts
    assert analysis.acked_writes_lost == 0
    assert len(analysis.windows) == 2  # switchover and fail-back
    assert all(w.closed for w in analysis.windows)
    assert analysis.write_downtime_s < 5
    assert set(analysis.servers) == {f"127.0.0.1:{PORTS[0]}", f"127.0.0.1:{PORTS[1]}"}
    evidence = record.server_evidence
    assert "no rewind required" in evidence["switchover.rejoin"]
    assert "no rewind required" in evidence["fail_back.rejoin"]
    assert evidence["switchover.timeline"] == "2"
    assert evidence["fail_back.timeline"] == "3"
    names = [p.name for p in record.phases]
    for step in (
        "switchover.stop",
        "switchover.catch_up",
        "switchover.promote",
        "switchover.rewind",
        "switchover.streaming",
        "fail_back.streaming",
    ):
        assert step in names
    # Back where it started: n1 primary, n2 streaming from it.
    topology = pair.manager.topology()
    assert topology.primary == "n1"
    assert topology.healthy, topology.problems
    assert record.pre_state is not None
    assert record.pre_state.primary == "n1"
    assert record.pre_state.lag_bytes is not None
    document = json.loads(record.to_json())
    assert document["verdict"] == "PASS"
    assert document["probe_target"]["hosts"] == ["127.0.0.1", "127.0.0.1"]
    assert SECRET not in record.to_json()


def test_a_catch_up_timeout_restores_the_old_primary_and_leaves_the_replica(pair: Pair) -> None:
    # Replay paused: the replica receives the shutdown checkpoint but never replays past it.
    _sql(pair.n2, "SELECT pg_wal_replay_pause()")
    with pytest.raises(SwitchoverAborted, match=r"did not replay past n1's shutdown checkpoint") as caught:
        switchover(pair.n1, pair.n2, cluster=CLUSTER, used_by=USED_BY, catch_up_timeout_s=1.0)
    result = caught.value.result
    assert result.new_primary == "n1"
    assert [s.name for s in result.steps] == ["stop", "shutdown_checkpoint", "catch_up", "abort_restart_old"]
    assert not result.steps[2].ok
    assert member_state(pair.n1.conn_id, name="n1", used_by=USED_BY).role == "primary"
    replica = member_state(pair.n2.conn_id, name="n2", used_by=USED_BY)
    assert replica.role == "replica"
    assert replica.timeline == 1
    _sql(pair.n2, "SELECT pg_wal_replay_resume()")
    # Writes go to n1 again, through the application's routing.
    probe = WriteProbe(probe_target(pair.dsn, used_by=USED_BY), run_id="it-abort", used_by=USED_BY)
    assert probe.prepare() == f"127.0.0.1:{PORTS[0]}"


def test_a_lagging_replica_is_refused_before_anything_moves(pair: Pair) -> None:
    _sql(pair.n2, "SELECT pg_wal_replay_pause()")
    _sql(pair.n1, "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
    with pytest.raises(DrillRefused, match=r"drill_pair: n2 is \d+ bytes behind n1 \(bound 1024\)") as caught:
        run_planned_drill(
            pair.manager,
            run_id="it-refused",
            probe_dsn=pair.dsn,
            targets=DrillTargets(),
            guards=DrillGuards(max_lag_bytes=1024),
        )
    assert [d.guard for d in caught.value.record.preflight if not d.passed] == ["lag"]
    assert server_running(pair.n1)
    assert member_state(pair.n1.conn_id, name="n1", used_by=USED_BY).role == "primary"


def test_a_drill_inside_the_minimum_interval_or_with_the_candidate_down_is_refused(pair: Pair) -> None:
    from datetime import UTC, datetime

    now = datetime.now(tz=UTC)
    with pytest.raises(DrillRefused, match=r"the minimum interval is 24 h 00 min"):
        run_planned_drill(
            pair.manager,
            run_id="it-twice",
            probe_dsn=pair.dsn,
            targets=DrillTargets(),
            guards=DrillGuards(min_interval=timedelta(hours=24)),
            last_drill_at=now - timedelta(minutes=5),
            now=now,
        )
    _as_postgres([str(BINDIR / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", pair.n2.data_dir])
    with pytest.raises(DrillRefused, match=rf"candidate n2 \(127.0.0.1:{PORTS[1]}\) is down"):
        run_planned_drill(
            pair.manager,
            run_id="it-down",
            probe_dsn=pair.dsn,
            targets=DrillTargets(),
            guards=DrillGuards(),
            candidate="n2",
        )


def test_a_wrong_probe_connection_is_refused_by_name(pair: Pair) -> None:
    from cloudops.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=r"target_session_attrs=read-only; it must reach the server"):
        probe_target(pair.dsn.replace("read-write", "read-only"), used_by=USED_BY)
    wrong = WriteProbe(
        probe_target(f"host=127.0.0.1 port={PORTS[1]} user=postgres dbname=postgres", used_by=USED_BY),
        run_id="it-wrong",
        used_by=USED_BY,
    )
    with pytest.raises(ProbeError, match=r"cannot reach a read-write server .*hosts 127.0.0.1"):
        wrong.prepare()


def test_a_read_only_fence_turns_the_applications_writes_away(pair: Pair) -> None:
    target = probe_target(pair.dsn, used_by=USED_BY)
    probe = WriteProbe(target, run_id="it-fence", used_by=USED_BY)
    probe.prepare()
    with probe:
        assert probe.wait_for_acks(10, within_s=10)
        decision = fence(pair.n1, used_by=USED_BY, how="read-only")
        assert decision == "fenced n1: default_transaction_read_only=on, client sessions ended"
        time.sleep(0.5)
        refused_from = len(probe.attempts())
        time.sleep(0.5)
        after = probe.attempts()[refused_from:]
        unfence(pair.n1, used_by=USED_BY)
        assert probe.wait_for_acks(5, within_s=10)
    assert after
    assert all(a.outcome == "failed" for a in after), {a.error_class for a in after}
    assert {a.error_class for a in after} == {"connect: no read-write server"}
    found = analyse(probe.attempts(), present_ids=probe.read_back()[0])
    assert found.acked_writes_lost == 0
    assert found.windows
    assert found.writes_recovered
    stopped = fence(pair.n1, used_by=USED_BY)
    assert stopped.startswith("fenced n1: stopped (fast); cluster state shut down, shutdown checkpoint ")
    assert fence(pair.n1, used_by=USED_BY) == "no action: n1 is not running (nothing to fence)"


def test_a_commit_blocked_on_a_missing_sync_standby_is_a_stall_not_availability(pair: Pair) -> None:
    _sql(pair.n1, "ALTER SYSTEM SET synchronous_standby_names = 'n2'")
    _sql(pair.n1, "SELECT pg_reload_conf()")
    probe = WriteProbe(probe_target(pair.dsn, used_by=USED_BY), run_id="it-stall", used_by=USED_BY)
    probe.prepare()
    with probe:
        assert probe.wait_for_acks(10, within_s=10)
        _as_postgres([str(BINDIR / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", pair.n2.data_dir])
        time.sleep(1.0)
        _as_postgres(
            [
                str(BINDIR / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                pair.n2.data_dir,
                "-l",
                f"{pair.n2.data_dir}.log",
            ]
        )
        assert probe.wait_for_acks(10, within_s=20)
    found = analyse(probe.attempts(), present_ids=probe.read_back()[0])
    print(f"\nsync standby gone ~1 s: {found.failed} failed, stall window {found.write_downtime_s:.3f} s")
    assert found.failed == found.in_doubt == 0  # an error-only probe would call this fully available
    assert found.stalls >= 1
    assert found.write_downtime_s > 1.0
    assert found.max_ack_gap_s > 1.0
    assert found.acked_writes_lost == 0


def test_a_rewind_that_cannot_work_is_degraded_redundancy_left_to_a_person(
    pair: Pair, tmp_path: Path
) -> None:
    stranger_dir = Path(pair.n1.data_dir).parent / "stranger"
    _as_postgres(
        [str(BINDIR / "initdb"), "-D", str(stranger_dir), "-U", "postgres", "--auth=trust", "--no-sync"]
    )
    stranger = PostgresNode("stranger", pair.n2.conn_id, str(stranger_dir), bin_dir=str(BINDIR))
    with pytest.raises(
        RejoinFailed, match=r"pg_rewind of stranger from n1 failed: .*degraded redundancy"
    ) as caught:
        rejoin(stranger, new_primary=pair.n1, used_by=USED_BY)
    assert [s.name for s in caught.value.steps] == ["checkpoint", "rewind"]
    assert not caught.value.steps[-1].ok
    assert not server_running(stranger)
    assert member_state(pair.n1.conn_id, name="n1", used_by=USED_BY).role == "primary"


CRASH_GUARDS = DrillGuards(catch_up_timeout_s=10, modes_allowed=frozenset({"planned", "crash"}))


def test_a_crash_drill_kills_the_primary_promotes_rewinds_and_fails_back(pair: Pair) -> None:
    record = run_drill(
        pair.manager,
        run_id="it-crash-1",
        probe_dsn=pair.dsn,
        targets=DrillTargets(max_write_downtime_s=3, max_drill_s=90),
        guards=CRASH_GUARDS,
        options=DrillOptions(baseline_acks=30, settle_s=1.0),
        mode="crash",
    )
    analysis = record.analysis
    assert analysis is not None
    print(
        f"\nnative PG crash drill: windows {[round(w.seconds, 3) for w in analysis.windows]} s, "
        f"max ack gap {analysis.max_ack_gap_s:.3f} s, acked {analysis.acked}, "
        f"lost {analysis.acked_writes_lost}, in doubt {analysis.in_doubt}, errors {analysis.error_classes}, "
        f"drill {record.drill_seconds:.2f} s; phases "
        + ", ".join(f"{p.name} {p.ended - p.started:.2f}" for p in record.phases)
    )
    assert record.mode == "crash"
    assert record.aborted is None, record.aborted
    assert record.degraded_redundancy is None
    assert [v.status for v in record.verdicts] == ["PASS", "PASS", "PASS"], record.verdicts
    # Measured, not assumed: every acknowledged id was read back from the new primary and the final one.
    assert analysis.lost_ids == ()
    assert record.server_evidence["crash.read_back_from"] == f"127.0.0.1:{PORTS[1]}"
    assert len(analysis.windows) == 2  # the crash and the planned fail-back
    assert all(w.closed for w in analysis.windows)
    names = [p.name for p in record.phases]
    crash_steps = ("kill", "detect", "promote", "gone", "rewind", "streaming")
    for step in (f"crash.{name}" for name in crash_steps):
        assert step in names
    for step in ("fail_back.stop", "fail_back.catch_up", "fail_back.promote", "fail_back.streaming"):
        assert step in names
    kill = next(p for p in record.phases if p.name == "crash.kill")
    assert kill.detail.startswith("SIGKILL to n1's postmaster "), kill.detail
    # pg_rewind ran the crashed node's recovery and says what it did (its message is the evidence).
    assert record.server_evidence["crash.rejoin"]
    assert record.server_evidence["crash.timeline"] == "2"
    assert record.server_evidence["fail_back.timeline"] == "3"
    topology = pair.manager.topology()
    assert topology.primary == "n1"
    assert topology.healthy, topology.problems
    assert json.loads(record.to_json())["mode"] == "crash"
    assert SECRET not in record.to_json()


def test_a_crash_with_replication_stalled_loses_acknowledged_writes_and_the_read_back_names_them(
    pair: Pair,
) -> None:
    import signal

    probe = WriteProbe(probe_target(pair.dsn, used_by=USED_BY), run_id="it-crash-lag", used_by=USED_BY)
    probe.prepare()
    with probe:
        assert probe.wait_for_acks(20, within_s=10)
        walsender = int(
            _sql(pair.n1, "SELECT pid FROM pg_stat_replication WHERE application_name = 'n2'")[0][0]
        )
        # The walsender stops sending (as a congested link would); the primary goes on acknowledging.
        os.kill(walsender, signal.SIGSTOP)
        try:
            assert probe.wait_for_acks(30, within_s=10)
            result = pair.manager.crash("n1", "n2")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(walsender, signal.SIGCONT)
        assert probe.wait_for_acks(10, within_s=20)
    present, server = probe.read_back()
    found = analyse(probe.attempts(), present_ids=present)
    print(f"\nnative PG crash, walsender stopped: {found.acked_writes_lost} acknowledged writes lost")
    assert server == f"127.0.0.1:{PORTS[1]}"
    assert found.acked_writes_lost is not None
    assert found.acked_writes_lost >= 20
    assert found.lost_ids is not None
    assert all(i not in present for i in found.lost_ids)
    assert [s.name for s in result.steps][:4] == ["kill", "detect", "promote", "gone"]
    assert member_state(pair.n1.conn_id, name="n1", used_by=USED_BY).role == "replica"


def test_a_crash_drill_is_refused_where_crash_is_not_allowed_and_moves_nothing(pair: Pair) -> None:
    with pytest.raises(DrillRefused) as refused:
        run_drill(
            pair.manager,
            run_id="it-crash-refused",
            probe_dsn=pair.dsn,
            targets=DrillTargets(max_write_downtime_s=3, max_drill_s=90),
            guards=DrillGuards(catch_up_timeout_s=10),
            mode="crash",
        )
    assert f"{CLUSTER}: mode 'crash' is not allowed for this cluster (allowed: planned)" in str(refused.value)
    assert refused.value.record.mode == "crash"
    assert server_running(pair.n1)
    assert pair.manager.topology().primary == "n1"
