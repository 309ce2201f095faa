"""Restore a PostgreSQL physical backup into a throw-away scratch cluster, check it, stop and remove it.

:func:`restore_scratch_cluster` fetches the backup's one tar (every byte checked against the manifest
by :func:`cloudops.restore.fetch.fetch_backup`, so a damaged backup fails here, before anything is
extracted), extracts it into a fresh data directory, verifies the files against the backup's own
``backup_manifest`` with ``pg_verifybackup`` (which also parses the WAL the backup needs), writes
``recovery.signal``, and starts a server on a free loopback port with the binaries of the backup's major
version (``/usr/lib/postgresql/<major>/bin``). It waits, bounded, until recovery has reached the
backup's consistent point, the server has promoted and accepts the backup's role, and returns a
:class:`ScratchCluster` (data directory, port, pid). Paths and settings are planned by
:mod:`cloudops.restore.physical_plan`.

A scratch cluster belongs to one machine: the one whose task started it. :class:`ScratchOwner` names it
(host name, boot id, the task's pid); it is written into the cluster's folder, carried by
:class:`ScratchCluster`, and recorded in the ledger by the drill. :func:`scratch_connection`,
:func:`check_scratch_cluster` and the drill's teardown refuse to act from another machine, naming the
owner and the server, rather than report a server they never reached as checked or stopped. The drill
runs restore, validate and stop in one task (see :mod:`cloudops.runbooks.restore_drill`), which starts
the server with ``die_with_task``: the kernel SIGKILLs the postmaster when the task's process dies
(``setpriv --pdeathsig``, set after the switch to the server's OS user, so it survives it), and the
task's ``on_kill`` stops it (:func:`stop_clusters_started_here`). As root, initdb-era rules apply: the
data directory is given to, and the server run as, the ``postgres`` OS user.

:func:`stop_and_remove` always works: on a running, half-started or never-started cluster it stops
every process started from the cluster's folder (immediate shutdown, then SIGKILL) and deletes the
folder. :func:`leftover_clusters` finds what a drill killed half-way left, for the next drill to remove.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.errors import CloudOpsError, RestoreError, RestoreRefused, SandboxError, first_line
from cloudops.restore.physical_plan import (
    HBA,
    LOOPBACK,
    SET_ASIDE,
    SET_ASIDE_SUFFIX,
    BackupLabel,
    ClusterPaths,
    bindir_for,
    check_restorable,
    cluster_paths,
    clusters_root,
    command_line_settings,
    databases_check,
    leftover_names,
    parse_backup_label,
    position_check,
    recovery_check,
    render_config,
    server_settings,
    session_options,
    version_check,
)
from cloudops.restore.record import Check
from cloudops.sandbox.process import (
    Binary,
    as_user,
    command_line,
    log_tail,
    run,
    spawn_detached,
    terminate,
    wait_until,
    write_if_changed,
)

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from cloudops.repository.manifest import Manifest
    from cloudops.repository.s3 import BackupRepository

log = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT = timedelta(minutes=30)
DEFAULT_VERIFY_TIMEOUT = timedelta(hours=2)
STOP_TIMEOUT_SECONDS = 30.0
SERVER_USER = "postgres"  # initdb and postgres refuse to run as root
_DISK_MARGIN = 256 * 1024 * 1024


BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
# Clusters this process created and has not removed yet: what the task's on_kill stops.
_STARTED_HERE: dict[str, ClusterPaths] = {}


def boot_id() -> str:
    """This machine's boot id (changes at every boot; each sandbox host has its own)."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class ScratchOwner:
    """The machine (and task process) that started a scratch cluster: the only one that may stop it.

    Two machines are the same when their host name and boot id are: a reboot ends every server the
    machine ran, and two workers with distinct host names never share a scratch cluster, even when
    they share a file system.
    """

    host: str
    boot_id: str
    pid: int

    @classmethod
    def here(cls) -> ScratchOwner:
        return cls(host=socket.gethostname(), boot_id=boot_id(), pid=os.getpid())

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> ScratchOwner:
        return cls(
            host=str(data["host"]), boot_id=str(data.get("boot_id") or ""), pid=int(data.get("pid") or 0)
        )

    def to_data(self) -> dict[str, Any]:
        return asdict(self)

    def is_here(self) -> bool:
        """True on the machine that started the cluster, in the boot that started it."""
        here = ScratchOwner.here()
        return self.host == here.host and (not self.boot_id or self.boot_id == here.boot_id)

    def __str__(self) -> str:
        return f"host {self.host!r} (boot id {self.boot_id[:8] or 'unknown'}, task pid {self.pid})"

    def refuse_elsewhere(self, server: str, doing: str) -> None:
        """Refuse to ``doing`` scratch cluster ``server`` from any machine but its owner.

        :raises RestoreRefused: naming the owner, this machine and the server.
        """
        if self.is_here():
            return
        here = ScratchOwner.here()
        rebooted = self.host == here.host
        raise RestoreRefused(
            f"scratch cluster {server} belongs to {self}; this task runs on {here}: refusing to {doing} it "
            + (
                "(the machine rebooted since: the server stopped with it; the next drill's prepare there "
                "removes its folder)"
                if rebooted
                else f"from here, it may still run on {self.host!r}. Stop it there (kill -QUIT the postgres "
                f"whose -D is under cloudops-scratch-clusters/, then delete the folder), or let the next "
                f"drill's prepare on {self.host!r} remove it"
            )
        )


@dataclass(frozen=True)
class ScratchCluster:
    """A scratch cluster that runs: what later steps need to reach, check and remove it (XCom-ready)."""

    name: str
    estate: str
    folder: str
    data_dir: str
    host: str
    port: int
    pid: int
    worker: str
    log_file: str
    backup_label: dict[str, Any]
    boot_id: str = ""  # with ``worker``, the machine that owns it (empty in XComs of older versions)
    owner_pid: int = 0

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: dict[str, Any]) -> ScratchCluster:
        return cls(**data)

    @property
    def label(self) -> BackupLabel:
        return BackupLabel(**self.backup_label)

    @property
    def owner(self) -> ScratchOwner:
        return ScratchOwner(host=self.worker, boot_id=self.boot_id, pid=self.owner_pid)

    def check_here(self) -> None:
        """Refuse to work on a cluster that runs on another machine than this one.

        :raises RestoreRefused: naming both machines and the cluster.
        """
        self.owner.refuse_elsewhere(self.name, "reach")


def scratch_root() -> Path:
    """The folder of every scratch cluster on this machine (``$CLOUDOPS_SCRATCH_DIR`` or the temp folder)."""
    return clusters_root(os.environ, tempfile.gettempdir())


def server_user() -> str | None:
    """The OS user the server runs as: ``postgres`` when this process is root, else this process's."""
    return SERVER_USER if os.geteuid() == 0 else None


def restore_scratch_cluster(
    store: BackupRepository,
    manifest: Manifest,
    *,
    scratch: str,
    source: Connection,
    used_by: str,
    root: Path | None = None,
    start_timeout: timedelta = DEFAULT_START_TIMEOUT,
    verify_timeout: timedelta = DEFAULT_VERIFY_TIMEOUT,
    die_with_task: bool = False,
) -> tuple[ScratchCluster, list[Check]]:
    """Restore physical backup ``manifest`` into scratch cluster ``scratch`` and start it.

    A folder of the same name (an earlier try of the same run) is stopped and removed first, unless
    its folder names another machine as its owner (a shared file system): that is refused. On any
    failure the folder is left for :func:`stop_and_remove` (the drill's teardown), with ``server.log``.

    :param die_with_task: the kernel SIGKILLs the server when the thread calling this dies (keep it
        alive while the server is used, as the drill's one task does); False: the server outlives it.

    :param source: the connection of the backed-up server: its role and password (restored with the
        cluster) are how the scratch server is reached.
    :return: the running cluster, and the checks made before it started (server version, backup
        position, pg_verifybackup).
    :raises BackupVerificationError: an object differs from the manifest; nothing was extracted.
    :raises RestoreError: the backup cannot be restored, pg_verifybackup failed, or the server did not
        start or finish recovery in time (the message quotes its log).
    """
    from cloudops.restore.fetch import fetch_backup

    check_restorable(manifest)
    paths = cluster_paths(root or scratch_root(), manifest.estate, scratch)
    if paths.folder.exists():
        owner = folder_owner(paths)
        if owner is not None:
            owner.refuse_elsewhere(paths.name, "replace")
        log.warning(
            "scratch cluster %s exists, left by an earlier try (%s): removing it first",
            paths.folder,
            owner or "owner unknown",
        )
        stop_and_remove(paths)
    user = server_user()
    _STARTED_HERE[str(paths.folder)] = paths
    _create_folder(paths, user)
    tar = fetch_backup(store, manifest, paths.fetch_dir)
    tar.chmod(0o600)
    log.info("every object matches the manifest; extracting %s into %s", tar.name, paths.data_dir)
    _extract(tar, paths, needed=manifest.raw_bytes)
    shutil.rmtree(paths.fetch_dir)
    _give_to(paths.data_dir, user)

    pg_version = (paths.data_dir / "PG_VERSION").read_text().strip()
    label = parse_backup_label((paths.data_dir / "backup_label").read_text())
    checks = [version_check(pg_version, manifest), position_check(label, manifest)]
    bindir = bindir_for(pg_version, os.environ)
    _require_binaries(bindir, pg_version, ["postgres", "pg_verifybackup", "pg_waldump"])
    checks.append(_verify_backup(paths, bindir, user, verify_timeout))
    paths.log_file.chmod(0o600)  # made by the first command logged into it, with this process's umask

    for name in SET_ASIDE:
        found = paths.data_dir / name
        if found.exists():
            log.info("setting the backup's %s aside: the scratch server runs with the drill's settings", name)
            found.rename(found.with_name(name + SET_ASIDE_SUFFIX))
    port = _free_port()
    for path, text in (
        (paths.config_file, render_config(server_settings(paths, port=port))),
        (paths.hba_file, HBA),
        (paths.ident_file, "# Written by the cloudops restore drill: no user name maps.\n"),
    ):
        write_if_changed(path, text, mode=0o600)
        _give_to(path, user)
    signal_file = paths.data_dir / "recovery.signal"
    signal_file.write_text("")
    _give_to(signal_file, user)

    argv = [
        str(bindir / "postgres"),
        "-D",
        str(paths.data_dir),
        "-c",
        f"config_file={paths.config_file}",
        *command_line_settings(),
    ]
    argv = _dying_with_this_thread(argv, user) if die_with_task else as_user(argv, user)
    log.info("starting scratch server %s on %s:%d: %s", paths.name, LOOPBACK, port, " ".join(argv))
    launcher = spawn_detached(argv, log_path=paths.log_file, cwd=paths.folder)
    _describe(paths, port=port, launcher_pid=launcher.pid)
    started = time.monotonic()
    try:
        wait_until(
            lambda: _postmaster_status(paths) == "ready",
            what=f"scratch server {paths.name} (recovery to the backup's consistent point, then promotion)",
            log_path=paths.log_file,
            timeout=start_timeout.total_seconds(),
            alive=lambda: launcher.poll() is None,
        )
    except SandboxError as error:
        raise RestoreError(f"{used_by}: {error}") from None
    pid = int((paths.data_dir / "postmaster.pid").read_text().split()[0])
    _describe(paths, port=port, launcher_pid=launcher.pid, pid=pid)
    owner = ScratchOwner.here()
    cluster = ScratchCluster(
        name=paths.name,
        estate=manifest.estate,
        folder=str(paths.folder),
        data_dir=str(paths.data_dir),
        host=LOOPBACK,
        port=port,
        pid=pid,
        worker=owner.host,
        log_file=str(paths.log_file),
        backup_label=asdict(label),
        boot_id=owner.boot_id,
        owner_pid=owner.pid,
    )
    with _session(cluster, source, source.schema or "postgres", used_by) as session:
        row = session.execute("SELECT pg_is_in_recovery()").fetchone()
    if row != (False,):
        raise RestoreError(f"{used_by}: scratch server {paths.name} is still in recovery after promotion")
    log.info(
        "scratch cluster %s (pid %d) on %s:%d recovered and promoted in %.1f s",
        paths.name,
        pid,
        LOOPBACK,
        port,
        time.monotonic() - started,
    )
    return cluster, checks


def scratch_connection(cluster: ScratchCluster, source: Connection, *, database: str) -> Connection:
    """An Airflow connection to ``database`` on the scratch cluster, as the source connection's role.

    Built at run time, never stored: the validation functions take it wherever they take a conn_id.

    :raises RestoreError: the cluster runs on another worker.
    """
    from airflow.sdk import Connection

    cluster.check_here()
    return Connection(
        conn_id=f"scratch_{cluster.name}",
        conn_type="postgres",
        host=cluster.host,
        port=cluster.port,
        login=source.login,
        password=source.password,
        schema=database,
        # Sent at login by every session on it (see physical_plan.SESSION_OPTIONS).
        extra=json.dumps({"options": session_options()}),
    )


def check_scratch_cluster(
    cluster: ScratchCluster, source: Connection, *, required_databases: list[str], used_by: str
) -> list[Check]:
    """Check the running scratch cluster itself: recovery ended, and every database answers a query.

    :param required_databases: databases that must exist (the catalog's, the fingerprinted one).
    :raises DatabaseUnavailableError, RestoreError: the cluster cannot be reached at all.
    """
    import psycopg

    cluster.check_here()
    maintenance = source.schema or "postgres"
    with _session(cluster, source, maintenance, used_by) as session:
        in_recovery, timeline = session.execute(
            "SELECT pg_is_in_recovery(), (SELECT timeline_id FROM pg_control_checkpoint())"
        ).fetchone() or (True, 0)
        # datconnlimit -2: a database whose DROP DATABASE had begun (PostgreSQL 15.4 and later).
        rows = session.execute(
            "SELECT datname, datconnlimit = -2 FROM pg_database WHERE datallowconn ORDER BY datname"
        ).fetchall()
    invalid = [str(name) for name, is_invalid in rows if is_invalid]
    readable: dict[str, str | None] = {}
    for name in (str(name) for name, is_invalid in rows if not is_invalid):
        try:
            with _session(cluster, source, name, used_by) as session:
                session.execute("SELECT count(*) FROM pg_class").fetchone()
            readable[name] = None
        except (psycopg.Error, CloudOpsError) as error:
            readable[name] = first_line(error).replace(source.password or "\0", "***")
    return [
        recovery_check(in_recovery=bool(in_recovery), timeline=int(timeline), label=cluster.label),
        databases_check(readable, required_databases, invalid=invalid),
    ]


def stop_and_remove(paths: ClusterPaths, *, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """Stop the scratch cluster's server and delete its folder; safe to repeat.

    Works whatever state the cluster is in (running, half-started, crashed, never started), and
    signals only what the drill started (:func:`cluster_processes`): the postmaster named by the data
    directory's ``postmaster.pid`` once it is proven to serve that data directory, else the server
    whose argv is ``-D <data dir>`` (just launched). Never a process that merely names a file of the
    folder (an operator's ``tail -f server.log``). It is stopped with an immediate shutdown (SIGQUIT;
    nothing in a scratch cluster needs a checkpoint), then SIGKILL; the server's children go with it.

    :return: whether there was anything to stop or remove.
    :raises RestoreRefused: the folder is a symbolic link (never followed).
    :raises RestoreError: a process did not stop even after SIGKILL.
    """
    if paths.folder.is_symlink():
        raise RestoreRefused(f"refusing to remove scratch cluster {paths.folder}: it is a symbolic link")
    pids = cluster_processes(paths)
    if not pids and not paths.folder.exists():
        log.info("scratch cluster %s does not exist: nothing to stop or remove", paths.folder)
        _STARTED_HERE.pop(str(paths.folder), None)
        return False
    children = _children_of(pids)
    for pid in pids:  # the server first: the launcher (runuser) exits with it
        log.info("stopping process %d of scratch cluster %s: %s", pid, paths.name, command_line(pid))
        _stop(pid, what=f"process of scratch cluster {paths.name}", timeout=timeout)
    for pid in children:  # normally gone with the server; named after the cluster (cluster_name)
        if paths.name in (command_line(pid) or ""):
            _stop(pid, what=f"server process of scratch cluster {paths.name}", timeout=timeout)
    if paths.folder.exists():
        log.info("removing scratch cluster folder %s", paths.folder)
        shutil.rmtree(paths.folder)
    _STARTED_HERE.pop(str(paths.folder), None)
    return True


def stop_clusters_started_here() -> list[str]:
    """Stop and remove every scratch cluster this process created and has not removed (the task's
    ``on_kill``: Airflow stops the task with SIGTERM and runs none of its ``finally`` blocks).

    :return: the names of the clusters stopped.
    """
    stopped = []
    for paths in list(_STARTED_HERE.values()):
        log.warning("the task is being killed: stopping scratch cluster %s it started", paths.name)
        try:
            stop_and_remove(paths)
            stopped.append(paths.name)
        except CloudOpsError as error:
            log.error("could not stop scratch cluster %s: %s", paths.name, error)
    return stopped


def folder_owner(paths: ClusterPaths) -> ScratchOwner | None:
    """The owner written in the cluster's folder (``cluster.json``), or None (no folder, an older one)."""
    try:
        document = json.loads(paths.description_file.read_text())
        return ScratchOwner.from_data(
            {"host": document["worker"], "boot_id": document.get("boot_id"), "pid": document.get("owner_pid")}
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def leftover_clusters(estate: str, database: str, *, root: Path | None = None) -> list[ClusterPaths]:
    """The scratch clusters of catalog database ``database`` of ``estate`` on this machine, sorted.

    What a drill killed half-way leaves behind; the next drill removes them (:func:`stop_and_remove`).
    """
    base = (root or scratch_root()) / estate
    names = [entry.name for entry in base.iterdir()] if base.is_dir() else []
    return [cluster_paths(root or scratch_root(), estate, name) for name in leftover_names(names, database)]


def cluster_processes(paths: ClusterPaths) -> list[int]:
    """The server processes the drill started for the cluster: the postmaster first, then its launcher.

    The postmaster is the pid in ``postmaster.pid`` when that process runs in the data directory
    (the postmaster's working directory is its data directory) and is a ``postgres``; a stale file
    naming a reused pid is ignored. Besides, any process whose argv holds ``-D <data dir>`` exactly:
    the postmaster before it wrote its pid file, and the ``runuser`` that launched it.
    """
    data_dir = str(paths.data_dir)
    found: list[tuple[bool, int]] = []
    postmaster = _postmaster_pid(paths)
    if postmaster is not None:
        found.append((False, postmaster))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), postmaster):
            continue
        try:
            argv = [arg.decode(errors="replace") for arg in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        serves = any(a == "-D" and b == data_dir for a, b in itertools.pairwise(argv))
        if serves and command_line(int(entry.name)):
            found.append((Path(argv[0]).name != "postgres", int(entry.name)))
    return [pid for _, pid in sorted(found)]


def _postmaster_pid(paths: ClusterPaths) -> int | None:
    """The pid ``postmaster.pid`` names, if that process is a postgres running in the data directory."""
    try:
        lines = (paths.data_dir / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
        cwd = Path(f"/proc/{pid}/cwd").readlink()
        name = Path(f"/proc/{pid}/exe").readlink().name
    except (OSError, ValueError, IndexError):
        return None
    serves = len(lines) > 1 and lines[1] == str(paths.data_dir) and cwd == paths.data_dir.resolve()
    if not serves or name != "postgres":
        log.warning(
            "%s/postmaster.pid names pid %d, which is not a server of %s: not signalling it",
            paths.data_dir,
            pid,
            paths.data_dir,
        )
        return None
    return pid


# -- acting helpers ------------------------------------------------------------------------------------


def _create_folder(paths: ClusterPaths, user: str | None) -> None:
    """Create the cluster's folder (and the root, reachable by the server's OS user) and describe it."""
    base = paths.folder.parent.parent
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    if base.is_symlink() or base.stat().st_uid != os.geteuid():
        raise RestoreRefused(
            f"{base} is not a folder of this OS user (a symbolic link, or another user's): set "
            "CLOUDOPS_SCRATCH_DIR to a folder of this user's"
        )
    paths.folder.parent.mkdir(mode=0o755, exist_ok=True)
    paths.folder.parent.chmod(0o755)  # the umask may have taken bits the server's user needs to get through
    # The cluster's own folder holds a whole copy of the source cluster (pg_authid's password hashes
    # too), from the first downloaded byte to the removal: only the server's user may enter it.
    paths.folder.mkdir(mode=0o700)
    paths.folder.chmod(0o700)
    if user is not None:
        from cloudops.sandbox.layout import can_traverse

        entry = pwd.getpwnam(user)
        os.chown(paths.folder, entry.pw_uid, entry.pw_gid)
        if not can_traverse(paths.folder, user):
            raise RestoreError(
                f"OS user {user!r} cannot reach {paths.folder}: set CLOUDOPS_SCRATCH_DIR to a folder "
                f"every parent of which {user!r} may traverse"
            )
    _describe(paths)
    paths.data_dir.mkdir(mode=0o700)
    paths.fetch_dir.mkdir(mode=0o700)


def _describe(paths: ClusterPaths, **facts: Any) -> None:
    """Write what is known about the cluster so far into its folder (for the on-call person)."""
    document = {
        "name": paths.name,
        "data_dir": str(paths.data_dir),
        "worker": socket.gethostname(),
        "boot_id": boot_id(),
        "owner_pid": os.getpid(),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **facts,
    }
    write_if_changed(paths.description_file, json.dumps(document, indent=2) + "\n", mode=0o600)


def _extract(tar: Path, paths: ClusterPaths, *, needed: int) -> None:
    """Extract the base backup's tar into the data directory (paths inside it only, no device files)."""
    free = shutil.disk_usage(paths.folder).free
    if needed + _DISK_MARGIN > free:
        raise RestoreError(
            f"{paths.folder} has {free} bytes free, extracting the backup needs {needed} (plus "
            f"{_DISK_MARGIN} to spare): set CLOUDOPS_SCRATCH_DIR to a folder on a larger disk"
        )
    started = time.monotonic()
    with tarfile.open(tar) as archive:
        archive.extractall(paths.data_dir, filter="data")
    # The server refuses a data directory others can read; and nothing of the copy (pg_authid's
    # password hashes included) is for anyone but its owner, whatever modes the tar carries.
    for folder, dirs, files in os.walk(paths.data_dir):
        for name in dirs + files:
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(path.lstat().st_mode & 0o700)
    paths.data_dir.chmod(0o700)
    log.info("extracted %s in %.1f s", tar.name, time.monotonic() - started)


def _give_to(path: Path, user: str | None) -> None:
    """Make ``user`` own ``path`` and everything under it (nothing to do when not root)."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    if path.is_dir():
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(Path(folder) / name, entry.pw_uid, entry.pw_gid)


def _require_binaries(bindir: Path, major: str, names: list[str]) -> None:
    problems = [
        problem
        for name in names
        if (problem := Binary(name, bindir / name, f"postgresql-{major}").problem()) is not None
    ]
    if problems:
        raise RestoreError(
            f"the backup is of PostgreSQL {major}, whose server programs are missing: {'; '.join(problems)} "
            "(or set CLOUDOPS_PG_BINDIR)"
        )


def _verify_backup(paths: ClusterPaths, bindir: Path, user: str | None, timeout: timedelta) -> Check:
    """Run pg_verifybackup: every file against the backup's own backup_manifest, and the WAL it needs.

    :raises RestoreError: it failed (its output is quoted); the backup is damaged, nothing was started.
    """
    argv = [str(bindir / "pg_verifybackup"), str(paths.data_dir)]
    started = time.monotonic()
    try:
        run(
            as_user(argv, user),
            what=f"pg_verifybackup of {paths.data_dir}",
            log_path=paths.log_file,
            timeout=timeout.total_seconds(),
            cwd=paths.folder,
        )
    except SandboxError as error:
        raise RestoreError(
            f"the restored files do not match the backup's own backup_manifest, nothing was started: {error}"
        ) from None
    seconds = time.monotonic() - started
    log.info("pg_verifybackup: every file and the WAL needed match the backup_manifest (%.1f s)", seconds)
    return Check(
        name="pg_verifybackup",
        passed=True,
        expected="every file and WAL segment as in backup_manifest",
        observed=log_tail(paths.log_file, lines=1),
        detail=f"{seconds:.1f} s",
    )


def _dying_with_this_thread(argv: list[str], user: str | None) -> list[str]:
    """``argv`` run (as ``user``) under ``setpriv --pdeathsig KILL``: the parent-death signal is set
    after the switch of user (a change of credentials clears one set before), and ``setpriv`` execs
    the server, so the postmaster itself dies when this thread does; its backends follow it."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning(
            "setpriv (util-linux) not found: scratch server %s will outlive a killed task (the retry, the "
            "teardown or the next drill's prepare stops it)",
            argv,
        )
        return as_user(argv, user)
    who = ["--reuid", user, "--regid", user, "--clear-groups"] if user else []
    return [setpriv, *who, "--pdeathsig", "KILL", "--", *argv]


def _free_port() -> int:
    """A TCP port free on the loopback address right now (the server binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _postmaster_status(paths: ClusterPaths) -> str:
    """The server's status line in postmaster.pid (``starting``, ``ready`` once it runs, promoted)."""
    lines = (paths.data_dir / "postmaster.pid").read_text().splitlines()
    return lines[7].strip() if len(lines) > 7 else "starting"


@contextmanager
def _session(cluster: ScratchCluster, source: Connection, database: str, used_by: str) -> Iterator[Any]:
    """A psycopg session on the scratch cluster as the source's role; a refusal names the cluster."""
    import psycopg

    try:
        session = psycopg.connect(
            host=cluster.host,
            port=cluster.port,
            user=source.login,
            password=source.password,
            dbname=database,
            connect_timeout=10,
            autocommit=True,
            application_name="cloudops-drill",
            options=session_options(),  # over the backup's own per-role and per-database settings
        )
    except psycopg.Error as error:
        detail = first_line(error).replace(source.password or "\0", "***")
        raise RestoreError(
            f"{used_by}: cannot connect to database {database!r} of scratch cluster {cluster.name} on "
            f"{cluster.host}:{cluster.port} as role {source.login!r} (the backup's own role and password): "
            f"{detail}; see {cluster.log_file}"
        ) from None
    try:
        yield session
    finally:
        session.close()


def _children_of(pids: list[int]) -> list[int]:
    """The direct children of ``pids`` (the server's background processes), read before it stops."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent in pids:
            children.append(int(entry.name))
    return [pid for pid in children if pid not in pids]


def _stop(pid: int, *, what: str, timeout: float) -> None:
    try:
        terminate(pid, what=what, timeout=timeout, sig=signal.SIGQUIT)
    except SandboxError:
        log.warning("%s (pid %d) ignored SIGQUIT for %.0f s: killing it", what, pid, timeout)
        try:
            terminate(pid, what=what, timeout=timeout, sig=signal.SIGKILL)
        except SandboxError as error:
            raise RestoreError(str(error)) from None


__all__ = [
    "DEFAULT_START_TIMEOUT",
    "ScratchCluster",
    "ScratchOwner",
    "boot_id",
    "check_scratch_cluster",
    "cluster_processes",
    "folder_owner",
    "leftover_clusters",
    "restore_scratch_cluster",
    "scratch_connection",
    "scratch_root",
    "server_user",
    "stop_and_remove",
    "stop_clusters_started_here",
]
