"""The auditor view over a real ledger: filters, one run's evidence, the pack, escaping, login, read-only."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from airflow.api_fastapi.app import RESERVED_URL_PREFIXES, _AuthManagerState
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.api_fastapi.core_api.security import get_user
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from cloudops.evidence.ledger import Ledger
from cloudops.evidence.view import create_app
from cloudops.plugin import CloudOpsPlugin
from tests.evidence_samples import (
    APPROVER,
    BACKUP_ID,
    CHECKSUMS,
    DRILL_RUN_ID,
    HOSTILE,
    TRIGGERER,
    write_sample_ledger,
)

pytestmark = pytest.mark.unit
HTML = {"Accept": "text/html"}


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return write_sample_ledger(tmp_path / "ledger")


@pytest.fixture
def auth_manager(monkeypatch: pytest.MonkeyPatch) -> SimpleAuthManager:
    """Airflow's own SimpleAuthManager deciding who may read (not initialised: it would write a file)."""
    manager = SimpleAuthManager()
    monkeypatch.setattr(_AuthManagerState, "instance", manager)
    return manager


def client_as(ledger: Ledger, role: str | None) -> TestClient:
    """A client logged in as ``auditor`` with ``role`` (the login itself is Airflow's: see the e2e test)."""
    app = create_app(ledger.directory)
    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="auditor", role=role)
    return TestClient(app)


@pytest.fixture
def auditor(ledger: Ledger, auth_manager: SimpleAuthManager) -> Iterator[TestClient]:
    with client_as(ledger, "viewer") as client:
        yield client


def run_ids(page: str) -> list[str]:
    return re.findall(r'<a href="run\?dag_id=[^"]*">([^<]*)</a>', page)


def test_run_list_shows_every_run_with_its_outcome_and_triggerer(auditor: TestClient) -> None:
    response = auditor.get("/runs")

    assert response.status_code == 200
    page = response.text
    assert len(run_ids(page)) == 4
    assert run_ids(page)[0] == "scheduled__2026-11-22T12:00:00+00:00"  # newest first
    assert 'class="failed">failed</td>' in page
    assert 'class="success">success</td>' in page
    assert f"{TRIGGERER} (ui)" in page
    assert f"backup.taken {BACKUP_ID}" in page
    assert "Ledger chain intact: 16 records" in page
    assert "<b id=user>auditor</b>" in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            {"runbook": "backup"},
            {"scheduled__2026-11-20T02:15:00+00:00", "scheduled__2026-11-21T02:15:00+00:00"},
        ),
        ({"target": "orders_pg"}, {"scheduled__2026-11-20T02:15:00+00:00", DRILL_RUN_ID}),
        ({"runbook": "backup", "target": "orders_pg"}, {"scheduled__2026-11-20T02:15:00+00:00"}),
        ({"from": "2026-11-21", "to": "2026-11-21"}, {"scheduled__2026-11-21T02:15:00+00:00"}),
        ({"from": "2026-11-22"}, {DRILL_RUN_ID, "scheduled__2026-11-22T12:00:00+00:00"}),
        ({"to": "2026-11-20", "runbook": "", "target": ""}, {"scheduled__2026-11-20T02:15:00+00:00"}),
        ({"runbook": "failover"}, set()),
    ],
)
def test_filters_by_period_runbook_kind_and_target(
    auditor: TestClient, query: dict[str, str], expected: set[str]
) -> None:
    response = auditor.get("/runs", params=query)

    assert response.status_code == 200
    assert set(run_ids(response.text)) == expected
    for value in query.values():
        if value:
            assert f'value="{value}"' in response.text  # the form keeps what was asked


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"from": "22/11/2026"}, "YYYY-MM-DD"),
        ({"from": "2026-11-22", "to": "2026-11-20"}, "before it starts"),
    ],
)
def test_a_bad_period_is_refused_with_the_reason(
    auditor: TestClient, query: dict[str, str], problem: str
) -> None:
    response = auditor.get("/runs", params=query, headers=HTML)

    assert response.status_code == 400
    assert problem in response.text


def test_one_run_shows_its_whole_evidence(auditor: TestClient, ledger: Ledger) -> None:
    response = auditor.get("/run", params={"dag_id": "restore_drill__orders_pg", "run_id": DRILL_RUN_ID})

    assert response.status_code == 200
    page = response.text
    assert TRIGGERER in page
    assert "quarterly drill" in page  # the params it was triggered with
    assert "Drill passed: RTO 312 s (target 1800 s), RPO 25200 s (target 86400 s)" in page
    assert "row_count_orders" in page
    assert APPROVER in page
    assert "restore_scratch" in page
    records = [r for r in ledger.records() if r.fields.get("run_id") == DRILL_RUN_ID]
    for record in records:  # each record's seq and full hash, to re-check against the ledger
        assert f"<td>{record.seq}</td>" in page
        assert record.hash in page
    assert 'href="pack?from=2026-11-22&amp;to=2026-11-22"' in page


def test_a_backup_run_shows_its_backup_id_and_checksums(auditor: TestClient) -> None:
    response = auditor.get(
        "/run", params={"dag_id": "backup__orders_pg", "run_id": "scheduled__2026-11-20T02:15:00+00:00"}
    )

    assert response.status_code == 200
    assert BACKUP_ID in response.text
    assert all(checksum in response.text for checksum in CHECKSUMS)
    assert "timetable" in response.text


def test_an_unknown_run_is_not_found(auditor: TestClient) -> None:
    response = auditor.get("/run", params={"dag_id": "backup__orders_pg", "run_id": "nope"})

    assert response.status_code == 404


def test_everything_from_the_ledger_is_escaped(auditor: TestClient) -> None:
    run = {"dag_id": "backup__billing_maria", "run_id": "scheduled__2026-11-21T02:15:00+00:00"}
    page = auditor.get("/run", params=run).text

    assert HOSTILE not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "<script" not in page
    response = auditor.get("/run", params={"dag_id": "<b>x</b>", "run_id": "1"}, headers=HTML)
    assert "<b>x</b>" not in response.text


def test_pages_forbid_scripts_and_framing_by_others(auditor: TestClient) -> None:
    response = auditor.get("/runs")

    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "frame-ancestors 'self'" in policy
    assert response.headers["cache-control"] == "no-store"


def test_the_pack_of_a_period_downloads_as_a_zip_with_its_manifest(auditor: TestClient) -> None:
    response = auditor.get("/pack", params={"from": "2026-11-20", "to": "2026-11-21"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert 'filename="evidence-2026-11-20_2026-11-21.zip"' in response.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    names = archive.namelist()
    manifest_name = next(n for n in names if n.endswith("/manifest.json"))
    manifest = json.loads(archive.read(manifest_name))
    assert manifest["period"] == {"from": "2026-11-20", "to": "2026-11-21"}
    assert {n.rsplit("/", 1)[-1] for n in names} == {"manifest.json", *manifest["files"]}


def test_the_pack_without_a_period_covers_the_whole_ledger(auditor: TestClient) -> None:
    response = auditor.get("/pack")

    assert response.status_code == 200
    assert "evidence-2026-11-20_2026-11-22.zip" in response.headers["content-disposition"]


def test_a_request_without_login_is_refused_and_gets_no_data(ledger: Ledger) -> None:
    client = TestClient(create_app(ledger.directory))  # no dependency override: Airflow's get_user

    for path in ("/", "/runs", "/run?dag_id=backup__orders_pg&run_id=x", "/pack"):
        response = client.get(path, headers=HTML, follow_redirects=False)
        assert response.status_code == 401, path
        assert BACKUP_ID not in response.text
        assert "Log in to Airflow" in response.text
    assert client.get("/runs").json() == {"detail": "Not authenticated"}


def test_a_user_without_read_access_to_runs_is_forbidden(
    ledger: Ledger, auth_manager: SimpleAuthManager
) -> None:
    with client_as(ledger, None) as client:
        response = client.get("/runs")

    assert response.status_code == 403
    assert BACKUP_ID not in response.text


def test_the_view_has_only_get_routes_and_no_unguarded_schema(ledger: Ledger) -> None:
    app = create_app(ledger.directory)
    routes = [route for route in app.routes if isinstance(route, APIRoute)]

    assert {route.path for route in routes} == {"/", "/runs", "/run", "/pack", "/reports", "/report"}
    assert all(route.methods == {"GET"} for route in routes)
    assert len(routes) == len(app.routes)  # no docs, no openapi.json: nothing outside the login
    with TestClient(app) as client:
        assert client.post("/runs").status_code in (401, 405)


def test_reading_the_view_writes_nothing(auditor: TestClient, ledger: Ledger) -> None:
    before = {p.name: p.read_bytes() for p in ledger.segment_files()}

    auditor.get("/runs")
    auditor.get(
        "/run", params={"dag_id": "backup__orders_pg", "run_id": "scheduled__2026-11-20T02:15:00+00:00"}
    )
    auditor.get("/pack")

    assert {p.name: p.read_bytes() for p in ledger.segment_files()} == before


def test_the_plugin_links_the_view_and_mounts_it_on_a_free_prefix() -> None:
    plugin = CloudOpsPlugin()
    [mounted] = plugin.fastapi_apps
    [link] = plugin.external_views

    assert not any(mounted["url_prefix"].startswith(prefix) for prefix in RESERVED_URL_PREFIXES)
    paths = {route.path for route in mounted["app"].routes}
    assert paths == {"/", "/runs", "/run", "/pack", "/reports", "/report"}
    assert link["name"] == "Evidence"
    assert link["href"] == f"{mounted['url_prefix']}/runs"
    assert link["destination"] == "nav"


def test_importing_the_plugin_leaves_the_view_unimported(project_root: Path) -> None:
    """Every Airflow process imports the plugin; only the API server needs the view (and FastAPI)."""
    check = (
        "import sys, cloudops.plugin\n"
        "assert 'cloudops.evidence.view' not in sys.modules\n"
        "assert 'airflow.api_fastapi.core_api.security' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=project_root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-2000:]


def test_a_broken_chain_is_shown_and_no_pack_is_made_from_it(auditor: TestClient, ledger: Ledger) -> None:
    segment = ledger.segment_files()[0]
    segment.write_bytes(segment.read_bytes().replace(b'"size_bytes":1048576', b'"size_bytes":1048577'))

    page = auditor.get("/runs").text
    pack = auditor.get("/pack", params={"from": "2026-11-20", "to": "2026-11-20"})

    assert "Ledger chain NOT intact: record seq 3" in page
    assert "was altered" in page
    assert pack.status_code == 409
    assert "record seq 3" in pack.json()["detail"]


# -- per-DAG authorization with the FAB auth manager ---------------------------------------------------
ORDERS_DAGS = ("backup__orders_pg", "restore_drill__orders_pg")


@pytest.fixture
def fab_orders_reader(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """A FAB user whose role may read the runs of the orders DAGs only (as `access_control` grants).

    The decisions are the FAB auth manager's own (is_authorized_dag over the user's role permissions);
    the user and role are FAB's models, built without a metadata database.
    """
    from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager
    from airflow.providers.fab.auth_manager.models import Action, Permission, Resource, Role, User

    monkeypatch.setattr(_AuthManagerState, "instance", FabAuthManager())
    read = Action(name="can_read")
    grants = ["DAG Runs", *(f"DAG:{dag_id}" for dag_id in ORDERS_DAGS)]
    role = Role(
        name="orders_reader", permissions=[Permission(action=read, resource=Resource(name=g)) for g in grants]
    )
    user = User(
        username="orders-auditor", first_name="O", last_name="A", email="o@x", active=True, roles=[role]
    )
    app = create_app(ledger.directory)
    app.dependency_overrides[get_user] = lambda: user
    with TestClient(app) as client:
        yield client


def test_a_fab_role_for_one_estate_sees_only_its_runs(fab_orders_reader: TestClient) -> None:
    page = fab_orders_reader.get("/runs").text

    assert set(run_ids(page)) == {"scheduled__2026-11-20T02:15:00+00:00", DRILL_RUN_ID}
    assert "billing_maria" not in page  # not in the table, nor among the filter's targets
    assert "health_check__estate" not in page
    assert fab_orders_reader.get("/runs", params={"target": "billing_maria"}).text.count("run?dag_id") == 0


def test_a_fab_role_for_one_estate_cannot_open_another_estates_run(fab_orders_reader: TestClient) -> None:
    mine = fab_orders_reader.get(
        "/run", params={"dag_id": "restore_drill__orders_pg", "run_id": DRILL_RUN_ID}
    )
    other = fab_orders_reader.get(
        "/run", params={"dag_id": "backup__billing_maria", "run_id": "scheduled__2026-11-21T02:15:00+00:00"}
    )
    unknown = fab_orders_reader.get("/run", params={"dag_id": "backup__billing_maria", "run_id": "nope"})

    assert mine.status_code == 200
    assert other.status_code == 403
    assert "backup__billing_maria" in other.json()["detail"]
    assert unknown.status_code == 403  # refused before looking: a 404 would tell the run does not exist


def test_a_fab_role_for_one_estate_gets_packs_of_its_own_records_only(
    fab_orders_reader: TestClient, tmp_path: Path
) -> None:
    from cloudops.evidence.export import verify_pack

    own = fab_orders_reader.get("/pack", params={"from": "2026-11-20", "to": "2026-11-20"})
    mixed = fab_orders_reader.get("/pack", params={"from": "2026-11-22", "to": "2026-11-22"})
    other = fab_orders_reader.get("/pack", params={"from": "2026-11-21", "to": "2026-11-21"})

    assert [r.status_code for r in (own, mixed, other)] == [200, 200, 200]
    for response in (own, mixed, other):
        assert b"billing_maria" not in response.content
        assert b"health_check__estate" not in response.content
    packs = {}
    for name, response in {"own": own, "mixed": mixed, "other": other}.items():
        folder = tmp_path / name
        zipfile.ZipFile(io.BytesIO(response.content)).extractall(folder)
        (packs[name],) = folder.iterdir()
    own_manifest = json.loads((packs["own"] / "manifest.json").read_text())
    assert "scope" not in own_manifest, "only the user's DAGs in these days: the whole, contiguous pack"
    mixed_manifest = json.loads((packs["mixed"] / "manifest.json").read_text())
    assert mixed_manifest["scope"]["dag_ids"] == ["restore_drill__orders_pg"]
    assert mixed_manifest["scope"]["records_left_out"] > 0
    assert json.loads((packs["other"] / "manifest.json").read_text())["scope"]["dag_ids"] == []
    for folder in packs.values():
        verdict = verify_pack(folder)
        assert verdict.ok, verdict.problems
    assert "scoped to the 1 DAG(s)" in (packs["mixed"] / "report.html").read_text()


# -- one verification per ledger state --------------------------------------------------------------------
def _checked_at(page: str) -> str:
    return re.search(r"\(checked ([^)]*)\)", page).group(1)  # type: ignore[union-attr]


def test_the_chain_is_verified_once_per_ledger_state(auditor: TestClient, ledger: Ledger) -> None:
    first = auditor.get("/runs").text
    again = auditor.get("/runs").text
    auditor.get("/pack")

    assert _checked_at(again) == _checked_at(first), "an unchanged ledger is not verified again"
    assert "Ledger chain intact: 16 records" in again
    ledger.append("run.started", at=datetime(2026, 11, 22, 23, 0, tzinfo=UTC), dag_id="backup__orders_pg")
    after = auditor.get("/runs").text
    assert _checked_at(after) != _checked_at(first)
    assert "Ledger chain intact: 17 records" in after


def test_every_page_says_what_the_chain_check_proves_and_what_not(auditor: TestClient) -> None:
    page = auditor.get("/runs").text

    assert "does not prove that nobody who can write that folder rewrote and re-sealed the chain" in page
    assert "cloudops evidence verify --s3" in page


# -- monthly reports -----------------------------------------------------------------------------------
REPORT_RUN = {"dag_id": "monthly_report__sandbox", "run_id": "scheduled__2026-11-01T05:00:00+00:00"}


def _add_report(ledger: Ledger, estate: str = "sandbox") -> None:
    pdf = {
        "kind": "pdf",
        "name": "sandbox-2026-10.pdf",
        "bucket": "reports",
        "key": "reports/sandbox/2026-10/sandbox-2026-10.pdf",
        "version_id": "v1",
        "sha256": "a" * 64,
        "size": 1234,
        "lock_mode": "GOVERNANCE",
        "locked_until": "2027-11-01T05:00:00+00:00",
    }
    summary = {
        "slos": {
            "orders_availability": {
                "availability_percent": 99.9,
                "sla_met": False,
                "credit_owed": "120.00",
                "currency": "USD",
            },
        },
        "incidents": 2,
        "cost_total": "412.37",
        "cost_currency": "USD",
    }
    at = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    ledger.append("run.started", at=at, **REPORT_RUN, data={"triggered_by": "timetable"})
    ledger.append(
        "report.stored",
        at=at,
        task_id="build",
        **REPORT_RUN,
        data={"estate": estate, "month": "2026-10", "files": [pdf], "summary": summary},
    )


def test_the_reports_page_lists_each_stored_report_with_its_figures_and_files(
    auditor: TestClient, ledger: Ledger
) -> None:
    _add_report(ledger, estate=HOSTILE)

    page = auditor.get("/reports", headers=HTML).text

    assert "1 report(s)." in page
    assert "<td>2026-10</td>" in page
    assert '<span class="bad">99.900 %</span> (credit 120.00 USD)' in page
    assert "412.37 USD" in page
    assert "a" * 64 in page
    assert HOSTILE not in page  # escaped like everything else read from the ledger
    assert 'href="report?dag_id=monthly_report__sandbox&amp;' in page
    assert 'id=all-reports href="reports"' in auditor.get("/runs").text


def test_a_report_download_is_refused_for_an_unknown_record_or_a_broken_chain(
    auditor: TestClient, ledger: Ledger
) -> None:
    _add_report(ledger)
    (seq,) = [r.seq for r in ledger.records() if r.kind == "report.stored"]

    unknown = auditor.get("/report", params={**REPORT_RUN, "seq": seq + 1, "kind": "pdf"})
    no_html = auditor.get("/report", params={**REPORT_RUN, "seq": seq, "kind": "html"})
    segment = ledger.segment_files()[0]
    segment.write_bytes(segment.read_bytes().replace(b'"size_bytes":1048576', b'"size_bytes":1048577'))
    broken = auditor.get("/report", params={**REPORT_RUN, "seq": seq, "kind": "pdf"})

    assert unknown.status_code == 404
    assert no_html.status_code == 404
    assert "has no 'html' file" in no_html.json()["detail"]
    assert broken.status_code == 409
    assert "not serving a report it vouches for" in broken.json()["detail"]


def test_a_fab_role_for_one_estate_sees_no_other_estates_report(
    fab_orders_reader: TestClient, ledger: Ledger
) -> None:
    _add_report(ledger)

    page = fab_orders_reader.get("/reports", headers=HTML).text
    download = fab_orders_reader.get("/report", params={**REPORT_RUN, "seq": 1, "kind": "pdf"})

    assert "id=no-reports" in page
    assert download.status_code == 403
