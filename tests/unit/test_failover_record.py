"""The drill record as JSON (timestamps, windows, verdicts, no secret) and the probe's pure parts:
checking the application's connection string, and telling a write that failed from one in doubt."""

from __future__ import annotations

import json

import psycopg
import psycopg.errors
import pytest

from cloudops.engines.replication import Step
from cloudops.errors import InvalidInputError
from cloudops.failover.analysis import ProbeAttempt, analyse, verdicts
from cloudops.failover.guards import GuardDecision
from cloudops.failover.policy import DrillTargets
from cloudops.failover.probe import connect_error_class, probe_target, write_outcome
from cloudops.failover.record import DrillRecord, PreState, scrub

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def test_the_record_serialises_with_iso_times_windows_and_verdicts_and_no_secret() -> None:
    attempts = [
        ProbeAttempt(1, 10.0, 10.01, T0, "acked", None, "h1:5432"),
        ProbeAttempt(2, 10.5, 10.52, T0 + 0.5, "in_doubt", "AdminShutdown", "h1:5432"),
        ProbeAttempt(3, 10.6, 10.62, T0 + 0.6, "acked", None, "h2:5432"),
    ]
    analysis = analyse(attempts, present_ids={1, 3})
    target = probe_target("host=h1,h2 port=5432,5432 dbname=app user=app password=hunter2", used_by="t")
    record = DrillRecord(
        run_id="manual__2027-01-15",
        cluster="orders",
        manager="native-pg",
        mode="planned",
        started=T0 - 1,
        finished=T0 + 2,
        probe_target=target.describe(),
        pre_state=PreState("n1", ("n2",), "n2", 0, 0.0, "test", {"n1": 1, "n2": 1}, {}, {}, "s", T0 - 0.5),
        preflight=(GuardDecision("lag", True, "orders: n2 is 0 bytes and 0.000 s behind n1"),),
        phases=[Step("switchover.stop", T0 + 0.5, T0 + 0.63, "stopped n1 (fast)")],
        server_evidence={"note": "connect with postgresql://app:hunter2@h1/app failed; password=hunter2"},
        analysis=analysis,
        bad_attempts=(attempts[1],),
        verdicts=verdicts(analysis, DrillTargets(max_write_downtime_s=1, max_drill_s=10), drill_seconds=3.0),
    )
    text = record.to_json()
    assert "hunter2" not in text
    document = json.loads(text)
    assert document["started"] == "2027-01-15T07:59:59.000+00:00"
    assert document["drill_seconds"] == 3.0
    assert document["probe_target"] == {
        "hosts": ["h1", "h2"],
        "ports": ["5432", "5432"],
        "dbname": "app",
        "user": "app",
        "target_session_attrs": "read-write",
        "connect_timeout_s": 2,
    }
    assert document["phases"][0]["seconds"] == pytest.approx(0.13)
    (window,) = document["analysis"]["windows"]
    assert window["start"] == "2027-01-15T08:00:00.500+00:00"
    assert window["seconds"] == pytest.approx(0.12)
    assert "start_mono" not in window
    assert document["analysis"]["acked_writes_lost"] == 0
    assert document["bad_attempts"][0]["error_class"] == "AdminShutdown"
    assert document["verdict"] == "PASS"
    assert document["server_evidence"]["note"] == (
        "connect with postgresql://app:***@h1/app failed; password=***"
    )


def test_scrub_hides_passwords_in_connection_strings_and_uris() -> None:
    assert scrub("host=a password='x y' user=b") == "host=a password=*** user=b"
    assert scrub("postgresql://u:p@h:1/d") == "postgresql://u:***@h:1/d"
    assert scrub("nothing secret") == "nothing secret"


def test_the_probe_target_adds_routing_and_bounds_and_refuses_a_replica_route() -> None:
    target = probe_target("host=a,b port=1,2 dbname=app", used_by="cluster orders")
    assert (target.hosts, target.ports, target.target_session_attrs) == (("a", "b"), ("1", "2"), "read-write")
    assert "statement_timeout=5000" in target.conninfo
    assert "connect_timeout=2" in target.conninfo
    assert "password" not in repr(target)
    assert probe_target("host=a,b port=5432", used_by="t").ports == ("5432", "5432")
    with pytest.raises(InvalidInputError, match=r"^cluster orders: .*target_session_attrs=standby"):
        probe_target("host=a target_session_attrs=standby", used_by="cluster orders")
    with pytest.raises(InvalidInputError, match=r"^t: the probe's connection string is not a libpq"):
        probe_target("host=a password=hunter2 =broken", used_by="t")
    with pytest.raises(InvalidInputError, match=r"names 3 hosts but 2 ports"):
        probe_target("host=a,b,c port=1,2", used_by="t")
    with pytest.raises(InvalidInputError, match=r"names no host"):
        probe_target("dbname=app", used_by="t")


def test_a_write_the_server_refused_failed_and_a_lost_session_is_in_doubt() -> None:
    assert write_outcome(psycopg.errors.ReadOnlySqlTransaction("read-only")) == (
        "failed",
        "ReadOnlySqlTransaction",
    )
    assert write_outcome(psycopg.errors.QueryCanceled("statement timeout"))[0] == "failed"
    assert write_outcome(psycopg.errors.AdminShutdown("terminating")) == ("in_doubt", "AdminShutdown")
    assert write_outcome(psycopg.OperationalError("server closed the connection unexpectedly")) == (
        "in_doubt",
        "connection lost (OperationalError)",
    )


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ('connection to server at "a" failed: session is read-only', "connect: no read-write server"),
        ("connection to server failed: Connection refused", "connect: refused"),
        ("FATAL: the database system is shutting down", "connect: server shutting down or starting"),
        ("timeout expired", "connect: timeout"),
        ("something else", "connect: OperationalError"),
    ],
)
def test_connect_failures_are_named_by_kind(message: str, kind: str) -> None:
    assert connect_error_class(psycopg.OperationalError(message)) == kind
