"""An auditor clicks through the evidence view in a real Airflow UI, in Debian's headless Chromium.

One ``airflow api-server`` (no scheduler: the view only reads the ledger) on a free port, with its own
AIRFLOW_HOME, SimpleAuthManager user ``auditor`` (role viewer) and a sample ledger of several runbook
kinds. Selenium drives /usr/bin/chromium through /usr/bin/chromedriver, both given explicitly:
Selenium Manager is kept offline and never downloads a driver or a browser.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.evidence_samples import (
    APPROVER,
    BACKUP_ID,
    CHECKSUMS,
    DRILL_RUN_ID,
    TRIGGERER,
    write_sample_ledger,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
USER, PASSWORD = "auditor", "audit-e2e-password"
SERVER_START_SECONDS = 90
WAIT_SECONDS = 15
BACKUP_RUN = "scheduled__2026-11-20T02:15:00+00:00"
FAILED_RUN = "scheduled__2026-11-21T02:15:00+00:00"
HEALTH_RUN = "scheduled__2026-11-22T12:00:00+00:00"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _wait_until_up(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"airflow api-server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if _get(f"{url}/api/v2/monitor/health")[0] == 200:
                return
        time.sleep(0.5)  # polling, bounded by the deadline
    pytest.fail(f"airflow api-server not up after {SERVER_START_SECONDS} s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Stop the api-server and every worker it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Iterator[str]:
    """A running Airflow API server (UI included) reading a sample ledger; its base URL."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.exists():
            pytest.fail(f"{binary} is missing: `make system-packages` installs chromium and chromium-driver")
    root = tmp_path_factory.mktemp("auditor-view")
    home, evidence = root / "airflow-home", root / "evidence"
    home.mkdir()
    write_sample_ledger(evidence / "ledger")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(project_root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(project_root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
        "AIRFLOW__API__BASE_URL": url,
        "CLOUDOPS_EVIDENCE_DIR": str(evidence),
        "CLOUDOPS_CATALOG": str(project_root / "runbooks"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True, timeout=180)
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({USER: PASSWORD}))
    log = root / "api-server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            ["airflow", "api-server", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_up(url, server, log)
        yield url
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser saves downloads."""
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def new_browser(downloads: Path) -> Iterator[Callable[[], WebDriver]]:
    """Start fresh headless Chromium sessions (no cookies shared); each is quit at the end."""
    drivers: list[WebDriver] = []

    def start() -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in (
            "--headless=new",
            "--no-sandbox",  # root in the sandbox container
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1400,1000",
            "--lang=en-US",
        ):
            options.add_argument(argument)
        options.add_experimental_option(
            "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
        )
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        driver.set_page_load_timeout(30)
        drivers.append(driver)
        return driver

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch anything
        try:
            yield start
        finally:
            for driver in drivers:
                driver.quit()


def _wait(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    return WebDriverWait(driver, WAIT_SECONDS).until(condition, f"waiting for {what}")


def _listed_runs(driver: WebDriver) -> set[str]:
    return {link.text for link in driver.find_elements(By.CSS_SELECTOR, "#runs a")}


def _filter(driver: WebDriver, expected: set[str], **fields: str) -> None:
    """Fill the filter form (inside the frame) as a person would, submit it, wait for the list."""
    form = driver.find_element(By.ID, "filters")
    for name, value in fields.items():
        element = form.find_element(By.NAME, name)
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        else:  # a date input: type the digits in the browser's (en-US) order
            element.clear()
            year, month, day = value.split("-")
            element.send_keys(f"{month}{day}{year}")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(driver, expected_conditions.staleness_of(form), "the filtered page")
    _wait(
        driver,
        lambda d: _listed_runs(d) == expected or (not expected and d.find_elements(By.ID, "no-runs")),
        f"runs {sorted(expected)}",
    )


def _log_in(driver: WebDriver, url: str) -> None:
    driver.get(f"{url}/")
    username = _wait(driver, expected_conditions.element_to_be_clickable((By.NAME, "username")), "login form")
    username.send_keys(USER)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(driver, lambda d: "/auth/login" not in d.current_url, "the login to finish")


def test_an_auditor_logs_in_filters_opens_a_run_and_downloads_a_pack(
    airflow_ui: str, new_browser: Callable[[], WebDriver], downloads: Path
) -> None:
    driver = new_browser()
    _log_in(driver, airflow_ui)

    evidence = _wait(
        driver,
        expected_conditions.element_to_be_clickable((By.XPATH, "//a[normalize-space(.)='Evidence']")),
        'the "Evidence" navigation link',
    )
    evidence.click()
    # Airflow 3.3 shows an external view in a frame of its own page, under /plugin/<url_route>.
    _wait(driver, expected_conditions.url_contains("/plugin/evidence"), "the plugin page")
    frame = _wait(
        driver, expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "iframe")), "frame"
    )
    assert frame.get_attribute("src").endswith("/cloudops/runs")
    driver.switch_to.frame(frame)
    _wait(
        driver, lambda d: _listed_runs(d) == {BACKUP_RUN, FAILED_RUN, DRILL_RUN_ID, HEALTH_RUN}, "every run"
    )
    assert driver.find_element(By.ID, "user").text == USER
    assert "Ledger chain intact: 16 records" in driver.find_element(By.ID, "chain").text
    outcomes = [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#runs tbody td:nth-child(6)")]
    assert sorted(outcomes) == ["failed", "success", "success", "success"]

    _filter(driver, {BACKUP_RUN, FAILED_RUN}, runbook="backup")
    _filter(driver, {BACKUP_RUN}, target="orders_pg")
    _filter(driver, {FAILED_RUN, DRILL_RUN_ID, HEALTH_RUN}, runbook="", target="", **{"from": "2026-11-21"})
    _filter(driver, {FAILED_RUN}, to="2026-11-21")

    driver.find_element(By.ID, "all-runs").click()
    _wait(driver, lambda d: len(_listed_runs(d)) == 4, "every run again")
    driver.find_element(By.LINK_TEXT, BACKUP_RUN).click()
    _wait(
        driver, expected_conditions.presence_of_element_located((By.ID, "records")), "the backup run's page"
    )
    page = driver.find_element(By.TAG_NAME, "body").text
    assert BACKUP_ID in page
    assert all(checksum in page for checksum in CHECKSUMS)
    assert "timetable" in page  # who started it: the schedule

    driver.find_element(By.ID, "all-runs").click()
    _wait(
        driver, expected_conditions.element_to_be_clickable((By.LINK_TEXT, DRILL_RUN_ID)), "the list"
    ).click()
    _wait(driver, expected_conditions.presence_of_element_located((By.ID, "records")), "the drill run's page")
    page = driver.find_element(By.TAG_NAME, "body").text
    assert TRIGGERER in page
    assert APPROVER in page
    assert "Drill passed: RTO 312 s (target 1800 s)" in page
    assert "row_count_orders" in page
    assert len(driver.find_elements(By.CSS_SELECTOR, "#records tr")) == 1 + 5  # header and its 5 records
    assert "/plugin/evidence/cloudops/run" in _parent_url(driver)  # the UI's address follows the frame

    driver.find_element(By.ID, "all-runs").click()
    pack = _wait(driver, expected_conditions.presence_of_element_located((By.ID, "pack")), "the pack form")
    for name, value in (("from", "2026-11-20"), ("to", "2026-11-21")):
        field = pack.find_element(By.NAME, name)
        field.clear()
        year, month, day = value.split("-")
        field.send_keys(f"{month}{day}{year}")
    pack.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    archive = downloads / "evidence-2026-11-20_2026-11-21.zip"
    _wait(
        driver, lambda _: archive.exists() and archive.stat().st_size > 0, f"the download of {archive.name}"
    )
    with zipfile.ZipFile(archive) as pack_zip:
        manifest_name = next(name for name in pack_zip.namelist() if name.endswith("/manifest.json"))
        manifest = json.loads(pack_zip.read(manifest_name))
    assert manifest["period"] == {"from": "2026-11-20", "to": "2026-11-21"}
    assert set(manifest["files"]) >= {"records.jsonl", "report.html"}


def _parent_url(driver: WebDriver) -> str:
    driver.switch_to.default_content()
    try:
        return driver.current_url
    finally:
        driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "iframe"))


def test_without_a_login_the_view_refuses(airflow_ui: str, new_browser: Callable[[], WebDriver]) -> None:
    for path in (
        "/cloudops/runs",
        f"/cloudops/run?dag_id=backup__orders_pg&run_id={BACKUP_RUN}",
        "/cloudops/pack",
    ):
        status, body = _get(f"{airflow_ui}{path}")
        assert status == 401, path
        assert b"orders_pg" not in body  # nor the backup id, nor anything else of a run
    for forged in ({"Authorization": "Bearer not-a-token"}, {"Cookie": "_token=not-a-token"}):
        status, body = _get(f"{airflow_ui}/cloudops/runs", forged)
        assert status in (401, 403), forged
        assert b"orders_pg" not in body

    driver = new_browser()  # a fresh browser: no Airflow session
    driver.get(f"{airflow_ui}/cloudops/runs")
    page = driver.find_element(By.TAG_NAME, "body").text
    assert "Log in to Airflow" in page
    assert "orders_pg" not in page
    driver.get(f"{airflow_ui}/plugin/evidence")
    _wait(driver, expected_conditions.url_contains("/auth/login"), "Airflow's login page")
    assert not driver.find_elements(By.CSS_SELECTOR, "iframe")


def test_the_view_offers_no_way_to_write(airflow_ui: str) -> None:
    request = urllib.request.Request(
        f"{airflow_ui}/auth/token",
        data=json.dumps({"username": USER, "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        token = json.loads(response.read())["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}

    assert _get(f"{airflow_ui}/cloudops/runs", bearer)[0] == 200
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert _get(f"{airflow_ui}/cloudops/runs", bearer, method)[0] == 405, method
