"""A SIGKILLed task takes its children with it (PR_SET_PDEATHSIG), and its retry loses nothing.

A task process is stood in for by a Python subprocess that starts a child through
``client_tools.run_restore_tool`` (pg_restore and mariadb loaders) or ``pipeline.stream_command_to_object``
(pg_dump, mariadb-dump, into the sandbox's S3). The child writes its pid and sleeps; the subprocess is
SIGKILLed, so none of its cleanup runs; the child must be gone soon after. The child's own process
group survives a kill of the task's group, so only the kernel's parent-death signal can end it.

The runbook tests run the DAG's real task callable (``restore_drill._restore_task``...) in a subprocess,
SIGKILL it mid-step, then run the same callable again as try 2, and check what the retry found and
said, and the ledger. ``TaskInstanceStandIn`` plays Airflow's task instance: its XComs are a JSON file
(the metadata database's part); everything else is the real code against the sandbox's servers. A
"worker on another host" is a process in a UTS namespace of its own (``unshare --uts``, another host
name) with a scratch folder of its own (another machine's disk).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudops.sandbox.process import command_line

pytestmark = pytest.mark.integration
BOUND_SECONDS = 20.0

CHILD = "echo $$ > {pid_file}; exec sleep 300"
RESTORE_TOOL = """
from cloudops.engines.client_tools import run_restore_tool
run_restore_tool(["/bin/sh", "-c", {child!r}], env={{}}, timeout_seconds=600, description="loader")
"""
PIPELINE = """
import json, os
from datetime import timedelta
from cloudops.engines import DumpCommand
from cloudops.repository.pipeline import stream_command_to_object
from tests.integration.estates import admin_client
command = DumpCommand(argv=["/bin/sh", "-c", {child!r}], env={{}}, object_name="x", format="raw",
                      description="dump")
stream_command_to_object(command, admin_client(), {bucket!r}, "children/dump.zst", level=1,
                         timeout=timedelta(minutes=10))
"""


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie waiting for its (new) parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _wait(condition: object, what: str) -> None:
    deadline = time.monotonic() + BOUND_SECONDS
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {BOUND_SECONDS:g} s")
        time.sleep(0.05)


def _kill_task_and_watch_child(program: str, pid_file: Path) -> None:
    project = Path(__file__).resolve().parents[2]
    task = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(program)],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project)},
        start_new_session=True,
    )
    try:
        _wait(lambda: pid_file.exists() and pid_file.read_text().strip(), "the child did not start")
        child = int(pid_file.read_text())
        assert "sleep" in (command_line(child) or ""), "the child runs the program itself (exec'd)"
        assert os.getpgid(child) == child, "the child leads a process group of its own"

        os.killpg(task.pid, signal.SIGKILL)  # the task's whole group: none of its cleanup runs
        task.wait(timeout=BOUND_SECONDS)

        _wait(lambda: _gone(child), f"child {child} still runs after its task was SIGKILLed")
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
            task.wait(timeout=BOUND_SECONDS)
        if pid_file.exists() and not _gone(child := int(pid_file.read_text() or 0)) and child:
            os.kill(child, signal.SIGKILL)


def test_a_loader_dies_with_its_sigkilled_task(sandbox_env: dict[str, str], tmp_path: Path) -> None:
    pid_file = tmp_path / "loader.pid"
    _kill_task_and_watch_child(RESTORE_TOOL.format(child=CHILD.format(pid_file=pid_file)), pid_file)


def test_a_dump_dies_with_its_sigkilled_task(
    sandbox_env: dict[str, str], tmp_path: Path, bucket: str
) -> None:
    pid_file = tmp_path / "dump.pid"
    _kill_task_and_watch_child(
        PIPELINE.format(child=CHILD.format(pid_file=pid_file), bucket=bucket), pid_file
    )


# -- a SIGKILLed runbook task, then its retry ----------------------------------------------------------

TASK = """
import json, sys
from pathlib import Path

class TaskInstanceStandIn:
    def __init__(self, xcoms, try_number):
        self.xcoms, self.try_number = xcoms, try_number
    def xcom_pull(self, task_ids, key="return_value"):
        return json.loads(self.xcoms.read_text()).get(f"{{task_ids}}|{{key}}")
    def xcom_push(self, key, value):
        data = json.loads(self.xcoms.read_text())
        data[f"{task_id}|{{key}}"] = value
        self.xcoms.write_text(json.dumps(data))

from {module} import {callable}
ti = TaskInstanceStandIn(Path({xcoms!r}), {try_number})
result = {callable}(*{args!r}, ti=ti, run_id={run_id!r}, task_instance=ti, params={params!r})
Path({out!r}).write_text(json.dumps(result, default=str))
"""


def start_task(
    tmp_path: Path,
    module: str,
    callable_: str,
    task_id: str,
    args: tuple[str, ...],
    *,
    run_id: str,
    try_number: int,
    params: dict[str, Any] | None = None,
    host: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start try ``try_number`` of a task's real callable in a process of its own session (and host
    name, when ``host``); its XComs are ``tmp_path/xcoms.json``. Returns the process and its result file."""
    project = Path(__file__).resolve().parents[2]
    xcoms, out = tmp_path / "xcoms.json", tmp_path / f"{task_id}-try{try_number}.json"
    if not xcoms.exists():
        xcoms.write_text("{}")
    program = TASK.format(
        module=module,
        callable=callable_,
        task_id=task_id,
        xcoms=str(xcoms),
        try_number=try_number,
        args=args,
        run_id=run_id,
        params=params or {},
        out=str(out),
    )
    argv = [sys.executable, "-c", textwrap.dedent(program)]
    if host is not None:
        argv = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *argv]
    log = (tmp_path / f"{task_id}-try{try_number}.log").open("wb")
    task = subprocess.Popen(
        argv,
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project), **(env or {})},
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return task, out


def push_xcom(tmp_path: Path, task_id: str, value: Any, key: str = "return_value") -> None:
    xcoms = tmp_path / "xcoms.json"
    data = json.loads(xcoms.read_text()) if xcoms.exists() else {}
    data[f"{task_id}|{key}"] = value
    xcoms.write_text(json.dumps(data, default=str))


def kill_task(task: subprocess.Popen[bytes]) -> None:
    """SIGKILL the task's whole process group: none of its cleanup, no on_kill, no finally."""
    os.killpg(task.pid, signal.SIGKILL)
    task.wait(timeout=BOUND_SECONDS)


def run_to_end(task: subprocess.Popen[bytes], out: Path, log: Path) -> Any:
    code = task.wait(timeout=120)
    assert code == 0, f"the retry failed (exit {code}):\n{log.read_text()[-3000:]}"
    return json.loads(out.read_text())


DRILLED = "killed_physical"


@pytest.fixture(scope="module")
def physical(
    sandbox_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A physical backup of the sandbox primary in a bucket of this module's own; no expectation suite
    (the drill's checks are the manifest's), scratch clusters in a root of this module's own."""
    from cloudops.restore.physical import leftover_clusters, stop_and_remove
    from cloudops.runbooks.backup import take_backup
    from tests.integration.estates import private_estate

    work = tmp_path_factory.mktemp("killed")
    (work / "expectations").mkdir()
    # The server runs as the postgres OS user when the tests run as root: it must reach the roots.
    roots = [Path(tempfile.mkdtemp(prefix="cloudops-test-kill-")) for _ in range(2)]
    for root in roots:
        root.chmod(0o755)
    database = {
        "name": DRILLED,
        "engine": "postgres",
        "conn_id": "sandbox_pg_primary",
        "database": "orders",
        "rpo": "3650d",
        "rto": "1h",
        "backup": {"repository": "r", "method": "physical", "retention": {"keep_last": 5}},
        "drill": {"schedule": "on_backup"},
    }
    with private_estate(work, "kp", [database]) as made, pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLOUDOPS_SCRATCH_DIR", str(roots[0]))
        patch.setenv("CLOUDOPS_EXPECTATIONS_DIR", str(work / "expectations"))
        patch.setenv("CLOUDOPS_EVIDENCE_DIR", str(work / "evidence"))
        take_backup(str(made.file), made.estate, DRILLED, run_id="killed-test")
        yield {"file": str(made.file), "estate": made.estate, "here": roots[0], "elsewhere": roots[1]}
        for root in roots:
            patch.setenv("CLOUDOPS_SCRATCH_DIR", str(root))
            for leftover in leftover_clusters(made.estate, DRILLED):
                stop_and_remove(leftover)
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def _started(paths: Any) -> list[int]:
    from cloudops.restore.physical import cluster_processes

    return cluster_processes(paths) if paths.data_dir.exists() else []


def _scratch_records(estate: str, scratch: str) -> list[tuple[int, str]]:
    from cloudops.evidence.facts import iter_facts
    from cloudops.evidence.runs import DRILL_SCRATCH

    return sorted(
        (f.fields["data"]["try_number"], f.fields["data"]["state"])
        for f in iter_facts(DRILL_SCRATCH, {"estate": estate, "scratch": scratch})
    )


def _kill_the_drill_while_its_server_starts(
    physical: dict[str, Any], tmp_path: Path, run_id: str, *, host: str | None = None, root: Path
) -> tuple[dict[str, Any], list[int], Any]:
    """prepare, then try 1 of restore SIGKILLed once its scratch server runs; return prepare's XCom,
    the server's pids (checked gone) and the cluster's paths."""
    from cloudops.restore.physical_plan import cluster_paths, clusters_root
    from cloudops.runbooks.restore_drill import prepare

    args = (physical["file"], physical["estate"], DRILLED)
    prepared = prepare(*args, run_id=run_id, backup_id="latest")
    push_xcom(tmp_path, "prepare", prepared)
    paths = cluster_paths(
        clusters_root({"CLOUDOPS_SCRATCH_DIR": str(root)}, ""), physical["estate"], prepared["scratch"]
    )
    task, _ = start_task(
        tmp_path,
        "cloudops.runbooks.restore_drill",
        "_restore_task",
        "restore",
        args,
        run_id=run_id,
        try_number=1,
        host=host,
        env={"CLOUDOPS_SCRATCH_DIR": str(root)},
    )
    try:
        _wait(lambda: task.poll() is not None or _started(paths), "the scratch server did not start")
        assert task.poll() is None, (tmp_path / "restore-try1.log").read_text()[-3000:]
        server = _started(paths)
        kill_task(task)
    finally:
        if task.poll() is None:
            kill_task(task)
    _wait(lambda: all(_gone(pid) for pid in server), f"scratch server {server} outlived its SIGKILLed task")
    return prepared, server, paths


def test_a_sigkilled_drill_takes_its_scratch_server_along_and_the_retry_removes_what_is_left(
    physical: dict[str, Any], tmp_path: Path
) -> None:
    from cloudops.evidence.recorder import ledger
    from cloudops.restore.physical import leftover_clusters
    from cloudops.runbooks.restore_drill import scratch_tries_left, teardown

    run_id = "manual__killed-drill-here"
    prepared, _, paths = _kill_the_drill_while_its_server_starts(
        physical, tmp_path, run_id, root=physical["here"]
    )
    scratch = prepared["scratch"]
    assert paths.folder.exists(), "the killed try left its folder (no cleanup ran)"
    (left,) = scratch_tries_left(physical["estate"], DRILLED, scratch).items()
    assert left[0] == 1, left
    assert left[1].is_here(), left

    task, out = start_task(
        tmp_path,
        "cloudops.runbooks.restore_drill",
        "_restore_task",
        "restore",
        (physical["file"], physical["estate"], DRILLED),
        run_id=run_id,
        try_number=2,
    )
    retried = run_to_end(task, out, tmp_path / "restore-try2.log")

    said = (tmp_path / "restore-try2.log").read_text()
    assert f"try 1 ({left[1]}) left scratch cluster {scratch}: stopping and removing it" in said
    assert retried["stopped"]
    assert retried["left_elsewhere"] == []
    assert retried["validated"]["checks"]
    assert all(c["passed"] for c in retried["validated"]["checks"])
    assert not paths.folder.exists()
    assert leftover_clusters(physical["estate"], DRILLED) == []
    assert scratch_tries_left(physical["estate"], DRILLED, scratch) == {}
    assert _scratch_records(physical["estate"], scratch) == [
        (1, "owned"),
        (1, "removed"),
        (2, "owned"),
        (2, "removed"),
    ], "each try's ownership and removal recorded once"
    teardown(*(physical["file"], physical["estate"], DRILLED), scratch=scratch, method="physical")
    verdict = ledger().verify()
    assert verdict.ok, verdict.problem


def test_a_drill_killed_on_another_host_is_reported_by_the_retry_and_never_torn_down_from_here(
    physical: dict[str, Any], tmp_path: Path
) -> None:
    from cloudops.errors import CloudOpsError, RestoreRefused
    from cloudops.evidence.recorder import ledger
    from cloudops.restore.physical import ScratchOwner, stop_and_remove
    from cloudops.runbooks.restore_drill import record_drill, scratch_tries_left, teardown

    run_id = "manual__killed-drill-elsewhere"
    args = (physical["file"], physical["estate"], DRILLED)
    prepared, _, paths = _kill_the_drill_while_its_server_starts(
        physical, tmp_path, run_id, host="drill-worker-a", root=physical["elsewhere"]
    )
    scratch = prepared["scratch"]
    try:
        owners = scratch_tries_left(physical["estate"], DRILLED, scratch)
        assert [o.host for o in owners.values()] == ["drill-worker-a"]
        assert not owners[1].is_here()

        task, out = start_task(
            tmp_path,
            "cloudops.runbooks.restore_drill",
            "_restore_task",
            "restore",
            args,
            run_id=run_id,
            try_number=2,
        )
        retried = run_to_end(task, out, tmp_path / "restore-try2.log")

        assert [(e["try_number"], e["owner"]["host"]) for e in retried["left_elsewhere"]] == [
            (1, "drill-worker-a")
        ], "the retry names what it could not reach"
        assert "try 1 left scratch cluster" in (tmp_path / "restore-try2.log").read_text()
        assert paths.folder.exists(), "another machine's folder is not this retry's to remove"
        here = ScratchOwner.here()
        refused = (
            rf"scratch cluster {scratch} belongs to host 'drill-worker-a'.*task runs on host {here.host!r}"
        )
        with pytest.raises(RestoreRefused, match=refused):
            teardown(*args, scratch=scratch, method="physical", owner=here, run_id=run_id)
        with pytest.raises(CloudOpsError, match=f"teardown failed: scratch {scratch} may remain"):
            record_drill(
                *args,
                run_id=run_id,
                prepared=prepared,
                restored=retried,
                validated=retried["validated"],
                scratch_left=True,
            )
        assert _scratch_records(physical["estate"], scratch) == [(1, "owned"), (2, "owned"), (2, "removed")]
        verdict = ledger().verify()
        assert verdict.ok, verdict.problem
    finally:
        stop_and_remove(paths)


def _open_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def test_a_backup_killed_mid_upload_leaves_an_upload_its_retry_aborts_and_records(
    physical: dict[str, Any], tmp_path: Path
) -> None:
    from cloudops.catalog import load_catalog_file
    from cloudops.evidence.facts import iter_facts
    from cloudops.evidence.recorder import ledger
    from cloudops.evidence.runs import BACKUP_ORPHAN_UPLOAD, BACKUP_STARTED, BACKUP_TAKEN
    from tests.integration.estates import sandbox_s3

    s3, run_id = sandbox_s3(), "manual__killed-backup"
    bucket = load_catalog_file(physical["file"]).repositories[0].bucket
    args = (physical["file"], physical["estate"], DRILLED)
    task, _ = start_task(
        tmp_path,
        "cloudops.runbooks.backup",
        "_take_backup_task",
        "take_backup",
        args,
        run_id=run_id,
        try_number=1,
    )
    try:
        # A physical backup of the sandbox primary streams for seconds: kill it once its upload is
        # open (created before the dump starts; the first part follows within the second).
        def a_part_is_in() -> bool:
            return task.poll() is not None or bool(_open_uploads(s3, bucket))

        _wait(a_part_is_in, "the backup's multipart upload was not created")
        assert task.poll() is None, (tmp_path / "take_backup-try1.log").read_text()[-3000:]
        kill_task(task)
    finally:
        if task.poll() is None:
            kill_task(task)
    (orphan,) = _open_uploads(s3, bucket)

    task, out = start_task(
        tmp_path,
        "cloudops.runbooks.backup",
        "_take_backup_task",
        "take_backup",
        args,
        run_id=run_id,
        try_number=2,
    )
    result = run_to_end(task, out, tmp_path / "take_backup-try2.log")

    (reported,) = result["orphan_uploads"]
    assert reported["upload_id"] == orphan["UploadId"]
    assert reported["key"] == orphan["Key"]
    assert reported["action"] == "aborted", reported
    assert f"an earlier try of run {run_id}" in reported["reason"]
    assert orphan["UploadId"] in (tmp_path / "take_backup-try2.log").read_text()
    assert _open_uploads(s3, bucket) == [], "no multipart upload is left open"
    recorded = [f.fields["data"] for f in iter_facts(BACKUP_ORPHAN_UPLOAD, {"estate": physical["estate"]})]
    assert [(r["upload_id"], r["action"]) for r in recorded] == [(orphan["UploadId"], "aborted")]
    started = [
        f for f in iter_facts(BACKUP_STARTED, {"estate": physical["estate"]}) if f.fields["run_id"] == run_id
    ]
    assert [f.fields["try_number"] for f in started] == [1, 2], "each try recorded once"
    taken = [
        f for f in iter_facts(BACKUP_TAKEN, {"estate": physical["estate"]}) if f.fields["run_id"] == run_id
    ]
    assert [f.fields["data"]["backup_id"] for f in taken] == [result["backup_id"]], "one backup, of try 2"
    verdict = ledger().verify()
    assert verdict.ok, verdict.problem


def test_an_open_upload_that_may_still_be_running_is_reported_not_aborted(
    physical: dict[str, Any], tmp_path: Path
) -> None:
    from cloudops.catalog import load_catalog_file
    from cloudops.repository.layout import new_backup_id
    from cloudops.runbooks.backup import open_repository, orphan_uploads
    from tests.integration.estates import sandbox_s3

    catalog = load_catalog_file(physical["file"])
    store = open_repository(catalog, catalog.database(DRILLED))
    s3 = sandbox_s3()
    from datetime import UTC, datetime

    key = store.object_key(DRILLED, new_backup_id(datetime.now(UTC)), "base.tar.zst")
    upload = s3.create_multipart_upload(Bucket=store.bucket, Key=key)["UploadId"]
    try:
        (found,) = orphan_uploads(store, DRILLED, run_id="manual__another-run", now=datetime.now(UTC))
        assert (found["upload_id"], found["action"]) == (upload, "reported")
        assert [u["UploadId"] for u in _open_uploads(s3, store.bucket)] == [upload], "left alone"
    finally:
        s3.abort_multipart_upload(Bucket=store.bucket, Key=key, UploadId=upload)
