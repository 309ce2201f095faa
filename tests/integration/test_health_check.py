"""The health check's probes against the real sandbox: healthy targets, and each way a target can fail."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudops.runbooks.health_check import check_databases, check_hosts, report_health

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _sandbox(sandbox_env: dict[str, str]) -> None:
    """Every test here needs the sandbox's connections."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def catalog_file(
    tmp_path: Path, *, databases: list[dict[str, Any]] = (), hosts: list[dict[str, Any]] = ()
) -> str:  # type: ignore[assignment]
    document: dict[str, Any] = {"estate": "probe", "owner": "tests", "databases": list(databases)}
    if hosts:
        document["fleets"] = [{"name": "probe", "os_family": "debian", "hosts": list(hosts)}]
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def connection(conn_id: str, monkeypatch: pytest.MonkeyPatch, **fields: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def sandbox_connection(env: dict[str, str], conn_id: str) -> dict[str, Any]:
    return json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"])


def test_every_sandbox_target_is_healthy(project_root: Path) -> None:
    catalog = str(project_root / "runbooks" / "sandbox.yaml")
    databases = check_databases(catalog, "sandbox")
    hosts = check_hosts(catalog, "sandbox")
    record = report_health("sandbox", databases, hosts)
    assert record["healthy"], record["summary"]
    by_target = {f["target"]: f for f in record["findings"]}
    assert by_target["database orders_pg"]["detail"].startswith("primary, postgres 15")
    assert "1 replica(s) streaming" in by_target["database orders_pg"]["detail"]
    assert by_target["database orders_pg_replica"]["detail"].startswith("replica, postgres 15")
    assert by_target["database inventory_mariadb"]["detail"].startswith("primary, mariadb")
    assert len([t for t in by_target if t.startswith("host ")]) >= 6


def test_missing_connection_is_named(tmp_path: Path) -> None:
    catalog = catalog_file(
        tmp_path,
        databases=[{"name": "ghost", "engine": "postgres", "conn_id": "no_such_conn", "database": "x"}],
    )
    (finding,) = check_databases(catalog, "probe")
    assert finding["status"] == "error"
    assert finding["problem"].startswith(
        "Airflow connection 'no_such_conn' (used by database 'ghost') does not exist"
    )


@pytest.mark.parametrize("engine", ["postgres", "mariadb"])
def test_database_down_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    connection(
        "dead_db", monkeypatch, conn_type=engine, host="127.0.0.1", port=free_port(), login="x", password="y"
    )
    catalog = catalog_file(
        tmp_path, databases=[{"name": "dead", "engine": engine, "conn_id": "dead_db", "database": "x"}]
    )
    (finding,) = check_databases(catalog, "probe")
    assert finding["status"] == "down"
    assert finding["problem"].startswith("unreachable: ")
    with pytest.raises(Exception, match="database dead is down: unreachable"):
        report_health("probe", [finding], [])


def test_replica_listed_as_primary_is_a_role_mismatch(tmp_path: Path, sandbox_env: dict[str, str]) -> None:
    catalog = catalog_file(
        tmp_path,
        databases=[
            {"name": "swapped", "engine": "postgres", "conn_id": "sandbox_pg_replica", "database": "orders"}
        ],
    )
    (finding,) = check_databases(catalog, "probe")
    assert finding["status"] == "degraded"
    assert "the catalog says primary but the server is a replica" in finding["problem"]


def test_changed_host_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox_env: dict[str, str]
) -> None:
    web_1 = sandbox_connection(sandbox_env, "sandbox_ssh_web_1")
    web_2 = sandbox_connection(sandbox_env, "sandbox_ssh_web_2")
    # web-1's address with web-2's key: what an interception (or a rebuilt host) looks like.
    connection(
        "spoofed",
        monkeypatch,
        **{**web_1, "extra": {**web_1["extra"], "host_key": web_2["extra"]["host_key"]}},
    )
    catalog = catalog_file(tmp_path, hosts=[{"name": "spoofed-1", "ssh_conn_id": "spoofed"}])
    (finding,) = check_hosts(catalog, "probe")
    assert finding["status"] == "down"
    assert "does not match the one on record" in finding["problem"]


def test_unknown_host_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox_env: dict[str, str]
) -> None:
    web_1 = sandbox_connection(sandbox_env, "sandbox_ssh_web_1")
    web_2 = sandbox_connection(sandbox_env, "sandbox_ssh_web_2")
    # The worker's known_hosts lists another host only: web-1 is unknown to it.
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(
        f"[{web_2['host']}]:{web_2['port']} {web_2['extra']['host_key']}\n"
    )
    monkeypatch.setenv("HOME", str(home))
    extra = {key: value for key, value in web_1["extra"].items() if key != "host_key"}
    connection("unknown_key", monkeypatch, **{**web_1, "extra": extra})
    catalog = catalog_file(tmp_path, hosts=[{"name": "unknown-1", "ssh_conn_id": "unknown_key"}])
    (finding,) = check_hosts(catalog, "probe")
    assert finding["status"] == "down"
    assert "is unknown" in finding["problem"]


def test_no_host_key_and_no_known_hosts_is_refused_naming_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox_env: dict[str, str]
) -> None:
    web_1 = sandbox_connection(sandbox_env, "sandbox_ssh_web_1")
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    extra = {key: value for key, value in web_1["extra"].items() if key != "host_key"}
    connection("keyless", monkeypatch, **{**web_1, "extra": extra})
    catalog = catalog_file(tmp_path, hosts=[{"name": "keyless-1", "ssh_conn_id": "keyless"}])
    (finding,) = check_hosts(catalog, "probe")
    assert finding["status"] == "error"
    assert finding["problem"] == (
        "connection 'keyless' (host 'keyless-1') has no host_key extra and this worker has no "
        "~/.ssh/known_hosts: the host's key cannot be verified; put it in the host_key extra"
    )


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"no_host_key_check": "true"}, "no_host_key_check='true'"),
        ({"allow_host_key_change": True}, "allow_host_key_change=True"),
        ({"allow_host_key_change": "yes"}, "allow_host_key_change='yes'"),
        ({"ignore_hostkey_verification": "true"}, "ignore_hostkey_verification='true'"),
        ({"known_hosts": "none"}, "known_hosts='none'"),
    ],
)
def test_disabling_host_key_checks_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sandbox_env: dict[str, str],
    extra: dict[str, Any],
    named: str,
) -> None:
    web_1 = sandbox_connection(sandbox_env, "sandbox_ssh_web_1")
    # web-1's own, correct host key stays: with allow_host_key_change the provider would skip the
    # system known_hosts and accept any key of a host verified there.
    connection("careless", monkeypatch, **{**web_1, "extra": {**web_1["extra"], **extra}})
    catalog = catalog_file(tmp_path, hosts=[{"name": "careless-1", "ssh_conn_id": "careless"}])
    (finding,) = check_hosts(catalog, "probe")
    assert finding["status"] == "error"
    assert finding["problem"] == (
        f"connection 'careless' (host 'careless-1') sets {named}: host keys are always checked here; "
        "remove it and put the host's key in the connection's host_key extra"
    )
    with pytest.raises(Exception, match=r"host careless-1 is error: connection 'careless'"):
        report_health("probe", [], [finding])


def test_a_malformed_host_key_is_an_error_naming_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox_env: dict[str, str]
) -> None:
    web_1 = sandbox_connection(sandbox_env, "sandbox_ssh_web_1")
    connection("dss", monkeypatch, **{**web_1, "extra": {**web_1["extra"], "host_key": "ssh-dss AAAAB3Nz"}})
    catalog = catalog_file(tmp_path, hosts=[{"name": "dss-1", "ssh_conn_id": "dss"}])
    (finding,) = check_hosts(catalog, "probe")
    assert finding["status"] == "error"
    assert finding["problem"].startswith("connection 'dss' (host 'dss-1') cannot be used: DSA/DSS host keys")


def test_host_with_nothing_listening_is_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    connection(
        "nowhere",
        monkeypatch,
        conn_type="ssh",
        host="127.0.0.1",
        port=free_port(),
        login="root",
        extra={
            "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEZKFTbP+K9MlSh8rLr9Zqo0e36n8Vr7azjVfSYGUcuE"
        },
    )
    catalog = catalog_file(tmp_path, hosts=[{"name": "nowhere-1", "ssh_conn_id": "nowhere"}])
    (finding,) = check_hosts(catalog, "probe")
    assert finding["status"] == "down"
    assert finding["problem"].startswith("unreachable over SSH: ")


def test_crashed_check_task_is_never_reported_healthy() -> None:
    with pytest.raises(Exception, match="database checks is error: the check task failed"):
        report_health("probe", None, [])
