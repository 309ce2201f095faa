"""Where the sandbox keeps its files, which ports it listens on, and which binaries it runs.

Everything that depends on the environment (CLOUDOPS_SANDBOX_DIR, CLOUDOPS_SANDBOX_PORT_OFFSET, binary
overrides, running as root) is resolved once here, so that every component reads the same answers and a
second sandbox (tests) can run beside the first by changing only the environment.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudops.errors import SandboxError

CATALOG_RELPATH = Path("runbooks") / "sandbox.yaml"
LOOPBACK = "127.0.0.1"
SSH_FIRST_ADDRESS = 11  # hosts get 127.0.0.11, 127.0.0.12, ... so each has an address of its own

# Every port, at every allowed offset (0..9000), stays below Linux's ephemeral range (32768-60999): a port
# in it can be held at any moment by some process's outgoing connection, and `up` would then refuse it.
EPHEMERAL_PORTS_START = 32768
BASE_PORTS = {
    "postgres_primary": 15432,
    "postgres_replica": 15433,
    # Servers of their own for restore drills' scratch copies: never the primaries'.
    "postgres_scratch": 15434,
    "mariadb": 13306,
    "mariadb_scratch": 13307,
    # The GTID replica of `mariadb` (cluster inventory_mariadb_cluster).
    "mariadb_replica": 13308,
    # The Patroni cluster (ledger_patroni): its etcd, and each node's PostgreSQL and REST API.
    "etcd_client": 12379,
    "etcd_peer": 12380,
    "patroni_a_postgres": 15442,
    "patroni_b_postgres": 15443,
    "patroni_a_api": 18008,
    "patroni_b_api": 18009,
    "moto": 15000,
    "ssh": 2222,
    "smtp": 15025,
    # The health page the first fleet host serves (the catalog's endpoints), on that host's address.
    "http": 18080,
    # The Celery broker of the local CeleryExecutor deployments (cloudops.deployment.local).
    "redis": 16390,
    # The api-server of each local deployment: `make up-celery`'s ("celery") and the e2e tests'
    # ("celery_e2e"), so both can run side by side.
    "celery_api": 18090,
    "celery_e2e_api": 18094,
}

DEFAULT_PG_BINDIR = "/usr/lib/postgresql/15/bin"
DEFAULT_MARIADBD = "/usr/sbin/mariadbd"
DEFAULT_MARIADB_INSTALL_DB = "/usr/bin/mariadb-install-db"
DEFAULT_ETCD = "/usr/bin/etcd"
# Patroni runs as the postgres OS user: its venv is built on the machine's own Python, which that user can
# execute (an interpreter under a 0700 home directory, such as pyenv's, it cannot).
DEFAULT_SYSTEM_PYTHON = "/usr/bin/python3"
PATRONI_REQUIREMENTS = Path("include") / "sandbox" / "patroni-requirements.txt"


def find_project_root(start_points: list[Path] | None = None) -> Path:
    """Return the nearest ancestor of this package, or else of the cwd, that holds runbooks/sandbox.yaml.

    :raises SandboxError: when neither has one.
    """
    starts = start_points or [Path(__file__).resolve().parent, Path.cwd().resolve()]
    for start in starts:
        for candidate in (start, *start.parents):
            if (candidate / CATALOG_RELPATH).is_file():
                return candidate
    where = " or ".join(str(s) for s in starts)
    raise SandboxError(f"{CATALOG_RELPATH} not found in any parent of {where}: run from the project checkout")


def can_traverse(path: Path, user: str) -> bool:
    """Tell whether OS user `user` can reach `path` (x permission on every existing ancestor)."""
    entry = pwd.getpwnam(user)
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    for part in (path, *path.parents):
        try:
            st = part.stat()
        except FileNotFoundError:
            continue  # created later by the sandbox itself with mode 0755
        if st.st_uid == entry.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


PORT_OFFSET_FILE = "port-offset"


def _recorded_offset(sandbox_dir: Path) -> int | None:
    try:
        return int((sandbox_dir / "run" / PORT_OFFSET_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class SandboxLayout:
    """Paths, ports, binaries and OS users of one sandbox."""

    project_root: Path
    dir: Path
    data_root: Path
    data_root_is_fallback: bool
    port_offset: int
    pg_bindir: Path
    mariadbd: Path
    mariadb_install_db: Path
    as_root: bool
    etcd: Path = Path(DEFAULT_ETCD)
    system_python: Path = Path(DEFAULT_SYSTEM_PYTHON)
    patroni_venv_override: Path | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SandboxLayout:
        """Resolve the layout from the environment.

        CLOUDOPS_SANDBOX_DIR (default <project>/.sandbox), CLOUDOPS_SANDBOX_PORT_OFFSET (default 0), the
        binary overrides CLOUDOPS_SANDBOX_PG_BINDIR, CLOUDOPS_SANDBOX_MARIADBD,
        CLOUDOPS_SANDBOX_MARIADB_INSTALL_DB, CLOUDOPS_SANDBOX_ETCD and CLOUDOPS_SANDBOX_SYSTEM_PYTHON, and
        CLOUDOPS_SANDBOX_PATRONI_VENV (where Patroni's venv is; default: see ``patroni_venv``).
        """
        env = os.environ if environ is None else environ
        root = find_project_root()
        sandbox_dir = Path(env.get("CLOUDOPS_SANDBOX_DIR") or root / ".sandbox").resolve()
        # The offset `up` used is recorded, so that `down` and `status` find the same ports without
        # being told again; an explicit, different offset for a running sandbox is refused.
        recorded = _recorded_offset(sandbox_dir)
        raw_offset = env.get("CLOUDOPS_SANDBOX_PORT_OFFSET") or str(recorded or 0)
        try:
            offset = int(raw_offset)
        except ValueError:
            raise SandboxError(
                f"CLOUDOPS_SANDBOX_PORT_OFFSET={raw_offset!r} is not an integer: set it to e.g. 1000"
            ) from None
        if not 0 <= offset <= 9000:
            raise SandboxError(f"CLOUDOPS_SANDBOX_PORT_OFFSET={offset} is out of range: use 0..9000")
        if recorded is not None and offset != recorded:
            raise SandboxError(
                f"the sandbox in {sandbox_dir} was started with CLOUDOPS_SANDBOX_PORT_OFFSET={recorded}, "
                f"not {offset}: use the same offset, or run `cloudops sandbox down` with it first"
            )
        as_root = os.geteuid() == 0
        data_root, fallback = sandbox_dir, False
        if as_root and not all(
            can_traverse(sandbox_dir, u) for u in ("postgres", "mysql") if _user_exists(u)
        ):
            # postgres and mysql cannot reach e.g. /root/...: keep their data where they can.
            digest = hashlib.sha256(str(sandbox_dir).encode()).hexdigest()[:10]
            data_root, fallback = Path(f"/var/tmp/cloudops-sandbox-{digest}"), True
        return cls(
            project_root=root,
            dir=sandbox_dir,
            data_root=data_root,
            data_root_is_fallback=fallback,
            port_offset=offset,
            pg_bindir=Path(env.get("CLOUDOPS_SANDBOX_PG_BINDIR", DEFAULT_PG_BINDIR)),
            mariadbd=Path(env.get("CLOUDOPS_SANDBOX_MARIADBD", DEFAULT_MARIADBD)),
            mariadb_install_db=Path(
                env.get("CLOUDOPS_SANDBOX_MARIADB_INSTALL_DB", DEFAULT_MARIADB_INSTALL_DB)
            ),
            as_root=as_root,
            etcd=Path(env.get("CLOUDOPS_SANDBOX_ETCD", DEFAULT_ETCD)),
            system_python=Path(env.get("CLOUDOPS_SANDBOX_SYSTEM_PYTHON", DEFAULT_SYSTEM_PYTHON)),
            patroni_venv_override=(
                Path(env["CLOUDOPS_SANDBOX_PATRONI_VENV"])
                if env.get("CLOUDOPS_SANDBOX_PATRONI_VENV")
                else None
            ),
        )

    @property
    def catalog_path(self) -> Path:
        return self.project_root / CATALOG_RELPATH

    def record_port_offset(self) -> None:
        """Remember the offset `up` uses, for `down` and `status` (see from_environment)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / PORT_OFFSET_FILE).write_text(f"{self.port_offset}\n")

    def forget_port_offset(self) -> None:
        """Forget the recorded offset once everything is stopped: the next `up` may choose another."""
        (self.run_dir / PORT_OFFSET_FILE).unlink(missing_ok=True)

    @property
    def patroni_requirements(self) -> Path:
        return self.project_root / PATRONI_REQUIREMENTS

    @property
    def patroni_venv(self) -> Path:
        """Patroni's venv, shared by every sandbox on the machine and keyed by the pinned requirements:
        built once by `make sandbox` (``cloudops sandbox prepare``), never at `up`.

        As root it lives under /var/cache/cloudops-sandbox, which the postgres OS user can traverse (root's
        ~/.cache it cannot); otherwise under ~/.cache/cloudops-sandbox (Patroni then runs as this user).
        """
        if self.patroni_venv_override is not None:
            return self.patroni_venv_override
        try:
            digest = hashlib.sha256(self.patroni_requirements.read_bytes()).hexdigest()[:12]
        except OSError:
            digest = "missing-requirements"
        base = (
            Path("/var/cache/cloudops-sandbox")
            if self.as_root
            else Path.home() / ".cache" / "cloudops-sandbox"
        )
        return base / f"patroni-{digest}"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def ssh_dir(self) -> Path:
        return self.dir / "ssh"

    @property
    def mail_dir(self) -> Path:
        return self.dir / "mail"

    @property
    def env_file(self) -> Path:
        return self.dir / "airflow.env"

    @property
    def credentials_file(self) -> Path:
        return self.dir / "credentials.json"

    def port(self, service: str) -> int:
        """Return the port of `service` (a key of BASE_PORTS) shifted by the port offset."""
        return BASE_PORTS[service] + self.port_offset

    def ssh_address(self, index: int) -> str:
        """Return the loopback address of the index-th fleet host (0-based)."""
        if SSH_FIRST_ADDRESS + index > 254:
            raise SandboxError(f"too many sandbox hosts ({index + 1}): at most {255 - SSH_FIRST_ADDRESS}")
        return f"127.0.0.{SSH_FIRST_ADDRESS + index}"

    def pid_file(self, component: str) -> Path:
        return self.run_dir / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    def os_user(self, name: str) -> str | None:
        """Return the service account to run a server as (postgres, mysql), or None when not root."""
        return name if self.as_root else None

    @property
    def data_note(self) -> str:
        """Say where database data lives when it is not inside the sandbox dir."""
        if not self.data_root_is_fallback:
            return ""
        return f"data in {self.data_root} (sandbox dir not reachable by postgres/mysql)"

    def ensure_dirs(self) -> None:
        """Create the sandbox directories; the data root stays traversable by the service accounts."""
        for path in (self.dir, self.run_dir, self.logs_dir, self.mail_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.ssh_dir.mkdir(mode=0o700, exist_ok=True)
        if self.data_root_is_fallback:
            self.data_root.mkdir(mode=0o755, exist_ok=True)
            owner = self.data_root / "SANDBOX_DIR"
            if not owner.exists():
                owner.write_text(f"{self.dir}\n")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def read_env_file(path: Path | str) -> dict[str, str]:
    """Parse a KEY='value' env file the way a POSIX shell would (comments, quotes, `export`).

    :raises SandboxError: on a line that is not a single KEY=value assignment.
    """
    values: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise SandboxError(f"{path}:{number}: cannot parse ({exc})") from None
        if tokens[:1] == ["export"]:
            tokens = tokens[1:]
        if not tokens:
            continue
        key, sep, value = tokens[0].partition("=")
        if len(tokens) != 1 or not sep or not key.isidentifier():
            raise SandboxError(f"{path}:{number}: expected one KEY=value assignment")
        values[key] = value
    return values


def format_env_line(key: str, value: str) -> str:
    """Return `KEY='value'`: single quotes keep JSON literal for sh, docker compose and shlex alike."""
    if "'" in value or "\n" in value:
        raise SandboxError(f"value of {key} contains a quote or newline and cannot go in an env file")
    return f"{key}='{value}'"


def render_env_file(
    sandbox_dir: Path,
    connections: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, str] | None = None,
) -> str:
    """Return the env file text: CLOUDOPS_SANDBOX_DIR and the deployment ``settings``, then one
    AIRFLOW_CONN_<ID> JSON line per connection."""
    lines = [
        "# Airflow connections of the cloudops sandbox, written by `cloudops sandbox up`.",
        "# Holds passwords: keep it private. Load with: set -a; . ./airflow.env; set +a",
        format_env_line("CLOUDOPS_SANDBOX_DIR", str(sandbox_dir)),
        *(format_env_line(key, value) for key, value in sorted((settings or {}).items())),
    ]
    for conn_id in sorted(connections):
        value = json.dumps(connections[conn_id], separators=(",", ":"))
        lines.append(format_env_line(f"AIRFLOW_CONN_{conn_id.upper()}", value))
    return "\n".join(lines) + "\n"


__all__ = ["SandboxLayout", "find_project_root", "format_env_line", "read_env_file", "render_env_file"]
