"""The database client programs that dumps run: find them, read their versions, hand them credentials.

Credentials reach a client program through a file that only its owner can read, named by an environment
variable or an option: never through argv, which any local user can read in ``ps``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from cloudops.errors import RestoreError, ToolMissingError

VERSION_TIMEOUT_SECONDS = 10
_OUTPUT_LINES = 10
_OUTPUT_CHARS = 2_000
_KILL_WAIT_SECONDS = 10
# The few lines a child runs before it becomes the client program: PR_SET_PDEATHSIG (1) makes the
# kernel SIGKILL it when the thread that started it dies, however that dies (a SIGKILLed or OOM-killed
# task never runs its cleanup). Set after fork, in the child, so no Python runs between fork and exec
# in the parent's process (preexec_fn is not safe with threads); the parent's pid is checked after the
# prctl, so a parent that died in between is noticed too. Exec replaces the interpreter: what runs is
# the program itself, with its own argv.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit("cannot set PR_SET_PDEATHSIG: " + os.strerror(ctypes.get_errno()))
if os.getppid() != int(sys.argv[1]):
    os.kill(os.getpid(), signal.SIGKILL)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as error:
    sys.exit(f"cannot run {sys.argv[2]}: {error.strerror}")
"""


def locate_tool(tool: str, package: str) -> str:
    """Return the absolute path of ``tool`` (a name looked up on PATH, or a path).

    The path goes into argv, so the command runs the program whose version was checked, whatever the
    runner's PATH.

    :raises ToolMissingError: when it is not found or not executable.
    """
    found = shutil.which(tool)
    if found is None:
        raise ToolMissingError(tool, package)
    return str(Path(found).absolute())


def version_output(path: str, package: str) -> str:
    """Return what ``<path> --version`` prints, to be parsed by the engine that knows its format.

    :raises ToolMissingError: when the program cannot run or fails: a broken install is a missing one.
    """
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ToolMissingError(path, package, f"cannot run ({error})") from None
    if done.returncode != 0:
        raise ToolMissingError(path, package, f"failed: `--version` exited {done.returncode}")
    return done.stdout.strip()


def dies_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that the kernel kills it when this process (the thread starting it) dies.

    Linux only (``prctl``); pass the program's path (as :func:`locate_tool` returns it). A parent
    that runs to its end still stops and reaps the child itself: this is for the deaths that run no
    cleanup (SIGKILL, the OOM killer). Keep the starting thread alive while the child runs (the
    callers wait for it in that thread).
    """
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


@contextmanager
def private_file(workdir: Path, prefix: str, content: str) -> Iterator[Path]:
    """Write ``content`` to a new file in ``workdir`` that only this user can read; remove it on exit.

    ``mkstemp`` creates the file with mode 0600 before anything is written, so the secret is never
    readable by others, not even for an instant.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=workdir, prefix=prefix)
    path = Path(name)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(content)
        yield path
    finally:
        path.unlink(missing_ok=True)


def run_restore_tool(
    argv: list[str],
    *,
    env: Mapping[str, str],
    timeout_seconds: float,
    description: str,
    stdin: Path | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Run a client program that loads data (pg_restore, mariadb) to completion, within a bound.

    The program runs in its own process group, killed whole when time runs out, so that no loader keeps
    writing into a database that teardown is about to drop, and dies with this process even when that
    is SIGKILLed (:func:`dies_with_parent`). Its output is kept only for the error.

    :param env: extra environment, merged over ``os.environ`` (where the credential files are named).
    :param description: what runs, safe to log (``pg_restore -j 2 into 'drill_orders_pg_…' on host:5432``).
    :param stdin: a file to feed on standard input (the SQL of a MariaDB dump).
    :param secrets: strings to redact from the output before it goes into the error.
    :raises RestoreError: the program could not start, exited non-zero, or ran out of time.
    """
    with contextlib.ExitStack() as stack:
        feed = stack.enter_context(stdin.open("rb")) if stdin is not None else subprocess.DEVNULL
        if shutil.which(argv[0]) is None:  # the wrapper would only say so in the program's output
            raise RestoreError(f"{description}: could not start {argv[0]!r}: not an executable file")
        try:
            process = subprocess.Popen(
                dies_with_parent(argv),
                stdin=feed,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )
        except OSError as error:
            raise RestoreError(f"{description}: could not start {argv[0]!r}: {error.strerror}") from None
        try:
            output, _ = process.communicate(timeout=timeout_seconds)
        except BaseException as error:
            # A timeout, or the task being killed: stop the loader before anything else happens.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=_KILL_WAIT_SECONDS)
            if isinstance(error, subprocess.TimeoutExpired):
                raise RestoreError(
                    f"{description}: did not finish within {timeout_seconds:g} s and was killed"
                ) from None
            raise
    if process.returncode != 0:
        how = (
            f"was killed by signal {-process.returncode}"
            if process.returncode < 0
            else f"exited with status {process.returncode}"
        )
        head = output_head(output.decode("utf-8", errors="replace"), secrets=secrets)
        raise RestoreError(f"{description}: {how}" + (f"\n{head}" if head else ""))


def output_head(text: str, *, secrets: Iterable[str] = ()) -> str:
    """The first non-empty lines of a program's output, with ``secrets`` replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    lines = [line.rstrip() for line in text.splitlines() if line.strip()][:_OUTPUT_LINES]
    head = "\n".join(lines)
    return head if len(head) <= _OUTPUT_CHARS else head[:_OUTPUT_CHARS] + " ..."


__all__ = [
    "VERSION_TIMEOUT_SECONDS",
    "dies_with_parent",
    "locate_tool",
    "output_head",
    "private_file",
    "run_restore_tool",
    "version_output",
]
