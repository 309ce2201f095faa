"""Start, recognise, wait for and stop the sandbox's own daemons.

A daemon is recorded in a pid file under <sandbox>/run/ together with a marker (a path unique to this
sandbox) that its command line must contain: a pid that was reused by an unrelated process is then reported
as a stale pid and never signalled. Every wait has a deadline and names the component and its log file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudops.errors import SandboxError

RUNNING = "running"
STOPPED = "stopped"
STALE = "stale pid"

POLL_INTERVAL = 0.2

Say = Callable[[str], None]
"""How components report progress: one line per step (print in the CLI, a list in tests)."""


@dataclass(frozen=True)
class Binary:
    """A program a component needs, and the Debian package that provides it."""

    label: str
    path: Path
    package: str
    # How to get it when it is not a Debian package's (Patroni's venv): replaces the apt advice.
    remedy: str | None = None

    def problem(self) -> str | None:
        """Return why the binary cannot be used, or None when it can."""
        if self.path.is_file() and os.access(self.path, os.X_OK):
            return None
        if self.remedy:
            return f"{self.label} not found at {self.path}: {self.remedy}"
        return (
            f"{self.label} not found at {self.path}: install the Debian package {self.package} "
            f"(or run `make setup`)"
        )


def command_line(pid: int) -> str | None:
    """Return the command line of a live, non-zombie process, or None."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if status.rpartition(")")[2].split()[:1] == ["Z"]:
        # A zombie child of this very process (e.g. `down` right after `up` in one test run): reap it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None


@dataclass(frozen=True)
class Daemon:
    """A pid file plus the marker that the recorded process's command line must contain.

    `server_pid_file` is the pid file the server writes itself (postmaster.pid, mariadbd.pid): when the
    sandbox's own record is lost but the server still runs, the daemon is found again through it instead
    of being reported as stopped while its port is taken.
    """

    pid_file: Path
    marker: str
    server_pid_file: Path | None = None

    @staticmethod
    def _read_pid(path: Path | None) -> int | None:
        try:
            return int(path.read_text().split()[0]) if path else None
        except (FileNotFoundError, PermissionError, ValueError, IndexError):
            return None

    def recorded_pid(self) -> int | None:
        return self._read_pid(self.pid_file)

    def _matches(self, pid: int) -> bool:
        cmdline = command_line(pid)
        return cmdline is not None and self.marker in cmdline

    def state(self) -> tuple[str, int | None]:
        """Return (RUNNING | STOPPED | STALE, pid)."""
        pid = self.recorded_pid()
        if pid is not None and self._matches(pid):
            return RUNNING, pid
        server_pid = self._read_pid(self.server_pid_file)
        if server_pid is not None and server_pid != pid and self._matches(server_pid):
            return RUNNING, server_pid
        return (STOPPED, None) if pid is None else (STALE, pid)

    def record(self, pid: int) -> None:
        if self.recorded_pid() == pid:
            return
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{pid}\n")

    def forget(self) -> None:
        self.pid_file.unlink(missing_ok=True)


def as_user(argv: Sequence[str], user: str | None) -> list[str]:
    """Prefix argv with runuser when a service account must run it (initdb refuses root)."""
    return ["runuser", "-u", user, "--", *argv] if user else list(argv)


def log_tail(log_path: Path, lines: int = 12) -> str:
    try:
        text = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log yet)"
    return "\n".join(text[-lines:])


def run(
    argv: Sequence[str],
    *,
    what: str,
    log_path: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run a command to completion, appending its output to log_path.

    :raises SandboxError: naming `what` and the log file when it fails or outlives `timeout`.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        log.flush()
        try:
            result = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                timeout=timeout,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise SandboxError(f"{what}: timed out after {timeout:.0f} s; see {log_path}") from None
    if result.returncode != 0:
        raise SandboxError(
            f"{what}: failed with exit code {result.returncode}; see {log_path}:\n{log_tail(log_path)}"
        )


def spawn_detached(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running server in its own session so that it outlives this process.

    :param user: run it as this OS user (and its group only), exec'd directly: the pid returned is the
        server's own, not a wrapper's (``runuser`` would stand between, and signals would reach it first).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        log.flush()
        uid = gid = None
        groups: list[int] | None = None
        if user is not None:
            entry = pwd.getpwnam(user)
            uid, gid, groups = entry.pw_uid, entry.pw_gid, []
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            user=uid,
            group=gid,
            extra_groups=groups,
        )


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    log_path: Path,
    timeout: float,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll `ready` every POLL_INTERVAL until it returns True, or fail at the deadline.

    Exceptions from `ready` count as "not yet" (a refused connection while a server starts).

    :raises SandboxError: at the deadline, or as soon as `alive` says the server has died.
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            if ready():
                return
        except SandboxError:
            raise  # `ready` found something that waiting will not fix
        except Exception as exc:  # every failure to connect means the same thing here: not ready yet
            last_error = f" (last error: {type(exc).__name__}: {exc})"
        if alive is not None and not alive():
            raise SandboxError(f"{what} exited while starting; see {log_path}:\n{log_tail(log_path)}")
        if time.monotonic() >= deadline:
            raise SandboxError(
                f"{what} not ready after {timeout:.0f} s{last_error}; see {log_path}:\n{log_tail(log_path)}"
            )
        time.sleep(POLL_INTERVAL)


def terminate(pid: int, *, what: str, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to pid and wait, bounded, until the process is gone.

    :raises SandboxError: when it is still alive at the deadline.
    """
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while command_line(pid) is not None:
        if time.monotonic() >= deadline:
            raise SandboxError(f"{what} (pid {pid}) did not stop within {timeout:.0f} s: kill it by hand")
        time.sleep(POLL_INTERVAL)


def stop_daemon(daemon: Daemon, *, what: str, say: Say, timeout: float) -> None:
    """Stop a daemon with SIGTERM if its pid file names this sandbox's process; forget the pid file."""
    state, pid = daemon.state()
    if state == RUNNING and pid is not None:
        terminate(pid, what=what, timeout=timeout)
        say(f"{what}: stopped (pid {pid})")
    elif state == STALE:
        say(f"{what}: pid {pid} is not this sandbox's process; pid file removed, nothing stopped")
    else:
        say(f"{what}: not running")
    daemon.forget()


def port_in_use(host: str, port: int) -> bool:
    """Tell whether something already listens on (or holds) host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR ignores TIME_WAIT leftovers of our own previous run but not a live socket.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def port_conflict(host: str, port: int, offset: int) -> str:
    """Return the message for a port that something outside the sandbox holds."""
    return (
        f"port {port} on {host} is already in use by another process; stop it or set "
        f"CLOUDOPS_SANDBOX_PORT_OFFSET={offset + 1000}"
    )


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write a file only when its content differs, so a warm `up` touches nothing; return True if written."""
    try:
        if path.read_text() == text:
            if path.stat().st_mode & 0o777 != mode:
                path.chmod(mode)
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.chmod(mode)  # O_CREAT's mode is filtered by the umask
    tmp.replace(path)
    return True


__all__ = [
    "RUNNING",
    "STALE",
    "STOPPED",
    "Binary",
    "Daemon",
    "Say",
    "as_user",
    "command_line",
    "log_tail",
    "port_conflict",
    "port_in_use",
    "run",
    "spawn_detached",
    "stop_daemon",
    "terminate",
    "wait_until",
    "write_if_changed",
]
