"""The database client programs that dumps run: find them, read their versions, hand them credentials.

Credentials reach a client program through a file that only its owner can read, named by an environment
variable or an option: never through argv, which any local user can read in ``ps``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cloudops.errors import ToolMissingError

VERSION_TIMEOUT_SECONDS = 10


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


__all__ = ["VERSION_TIMEOUT_SECONDS", "locate_tool", "private_file", "version_output"]
