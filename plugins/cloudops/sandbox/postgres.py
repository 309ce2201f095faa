"""The sandbox's PostgreSQL 15 servers: a primary, a streaming replica cloned with `pg_basebackup -R`, and
a scratch server of its own (no seed) that receives the restore drills' scratch copies.

Both run as the `postgres` OS user when the sandbox runs as root (initdb and postgres refuse root), listen
on 127.0.0.1 only, and keep their unix socket inside their 0700 data directory, which is why pg_hba can
trust local connections: only the owner and root reach that socket. TCP uses scram-sha-256 for the
`cloudops` role whose password the sandbox generates.
"""

from __future__ import annotations

import os
import pwd
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.errors import SandboxError
from cloudops.sandbox import seed
from cloudops.sandbox.layout import LOOPBACK, SandboxLayout
from cloudops.sandbox.process import (
    RUNNING,
    STALE,
    Binary,
    Daemon,
    Say,
    as_user,
    run,
    wait_until,
    write_if_changed,
)

if TYPE_CHECKING:
    import psycopg

    from cloudops.sandbox.credentials import CredentialStore
    from cloudops.sandbox.plan import DatabasePlan

ROLE = "cloudops"
PASSWORD_KEY = "postgres_cloudops"
# A role that may serve as pg_rewind's source (not a superuser): the functions pg_rewind calls, granted in
# the maintenance database its connections name. The replica has it too (physical replication).
REWIND_ROLE = "cloudops_rewind"
REWIND_PASSWORD_KEY = "postgres_rewind"
REWIND_DATABASE = "postgres"
REWIND_GRANTS = (
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
)
CONF_NAME = "cloudops_sandbox.conf"
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; PostgreSQL refuses longer socket paths
# The evidence ledger's PostgreSQL backend (cloudops.evidence.pg_ledger) gets a database of its own on
# the scratch server: never the primary, which failover drills promote, fence and rewind.
EVIDENCE_DATABASE = "cloudops_evidence"
EVIDENCE_DB_CONN_ID = "cloudops_evidence_db"

PG_HBA = """\
# Written by `cloudops sandbox up`.
# The unix socket lives inside this 0700 data directory: only its owner (and root) can reach it.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
"""


class PostgresServer:
    """One PostgreSQL instance of the sandbox: the primary, the replica of `primary`, or the scratch
    server (a `plan` with role scratch)."""

    def __init__(
        self,
        layout: SandboxLayout,
        plan: DatabasePlan,
        store: CredentialStore,
        primary: PostgresServer | None = None,
    ) -> None:
        self.layout, self.plan, self.store, self.primary = layout, plan, store, primary
        self.role = "replica" if primary else ("scratch" if plan.role == "scratch" else "primary")
        self.key = f"postgres-{self.role}"
        self.name = self.key
        self.port = layout.port(f"postgres_{self.role}")
        self.address = f"{LOOPBACK}:{self.port}"
        self.data_dir = layout.data_root / "postgres" / self.role
        # The unix socket lives beside the data directory, never in it: after a crash pg_rewind copies the
        # new primary's data directory, and a live socket there makes it fail (a crash drill needs it).
        self.socket_dir = layout.data_root / "postgres" / f"{self.role}.socket"
        self.log = layout.log_file(self.key)
        self.daemon = Daemon(
            layout.pid_file(self.key),
            marker=str(self.data_dir),
            server_pid_file=self.data_dir / "postmaster.pid",
        )
        self.user = layout.os_user("postgres")
        self.detail = layout.data_note

    def _bin(self, name: str) -> str:
        return str(self.layout.pg_bindir / name)

    def binaries(self) -> list[Binary]:
        names = ["pg_ctl", "postgres", "pg_basebackup" if self.primary else "initdb"]
        found = [Binary(n, self.layout.pg_bindir / n, "postgresql-15") for n in names]
        if self.user:
            found.append(
                Binary("runuser", Path(shutil.which("runuser") or "/usr/sbin/runuser"), "util-linux")
            )
        return found

    def endpoints(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, self.port)]

    # -- facts ---------------------------------------------------------------------------------------

    def _initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def _socket_connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user="postgres",
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def tcp_connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """Connect over TCP as the cloudops role, the way Airflow will."""
        import psycopg

        return psycopg.connect(
            host=LOOPBACK,
            port=self.port,
            user=ROLE,
            password=self.store.password(PASSWORD_KEY),
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    # -- actions -------------------------------------------------------------------------------------

    def ensure(self, say: Say) -> None:
        """Start the instance if needed, then make sure its role, data or replication are in place."""
        state, pid = self.daemon.state()
        self._ensure_socket_dir()
        if state == RUNNING and pid is not None and not (self.socket_dir / f".s.PGSQL.{self.port}").exists():
            # A sandbox made before the socket moved out of the data directory: restart it there.
            say(f"{self.name}: restarting to move its unix socket to {self.socket_dir}")
            self._configure()
            self._restart(say)
            state, pid = self.daemon.state()
        if state == RUNNING and pid is not None:
            self._configure()
            with self._socket_connect() as conn:
                # pg_file_settings reads the files at query time, so it needs no reload to have happened
                # first (pg_settings.pending_restart does, and a reload is asynchronous).
                pending = [
                    str(row[0])
                    for row in conn.execute(
                        "SELECT DISTINCT name FROM pg_file_settings "
                        "WHERE error = 'setting could not be applied'"
                    )
                ]
                conn.execute("SELECT pg_reload_conf()")
            self.daemon.record(pid)
            if pending:
                # A setting that only a restart applies (wal_log_hints on a sandbox made before it).
                say(f"{self.name}: restarting for {', '.join(pending)}")
                self._restart(say)
            else:
                say(f"{self.name}: already running (pid {pid}) on {self.address}")
        else:
            if state == STALE:
                self.daemon.forget()
            if not self._initialized():
                self._create(say)
            self._configure()
            self._start(say)
        if self.primary is None:
            self._ensure_role(say)
            if self.role == "primary":
                self._ensure_rewind_role(say)
                self._ensure_seed(say)
            elif self.role == "scratch":
                self._ensure_evidence_database(say)
        else:
            self._wait_streaming(say)

    def _chown(self, path: Path) -> None:
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _ensure_socket_dir(self) -> None:
        self.socket_dir.parent.mkdir(parents=True, exist_ok=True)
        self._chown(self.socket_dir.parent)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.socket_dir)

    def _create(self, say: Say) -> None:
        parent = self.data_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        self._chown(parent)
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket_path)) > SOCKET_PATH_MAX:
            raise SandboxError(
                f"{self.name}: socket path {socket_path} is too long for a unix socket: "
                "set CLOUDOPS_SANDBOX_DIR to a shorter path"
            )
        started = time.monotonic()
        if self.primary is None:
            say(f"{self.name}: initdb {self.data_dir}")
            argv = [
                self._bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ]
            run(
                as_user(argv, self.user),
                what=f"{self.name}: initdb",
                log_path=self.log,
                timeout=180,
                cwd=parent,
            )
        else:
            say(f"{self.name}: pg_basebackup -R from {self.primary.address}")
            # Through the primary's socket (trusted): the primary_conninfo that -R writes then holds no
            # password, so a reset of the cloudops password never breaks replication.
            argv = [
                self._bin("pg_basebackup"),
                *("-D", str(self.data_dir), "-R", "-X", "stream", "-c", "fast"),
                *(
                    "-h",
                    str(self.primary.socket_dir),
                    "-p",
                    str(self.primary.port),
                    "-U",
                    ROLE,
                    "--no-password",
                ),
            ]
            run(
                as_user(argv, self.user),
                what=f"{self.name}: pg_basebackup",
                log_path=self.log,
                timeout=600,
                cwd=parent,
            )
        say(f"{self.name}: data directory ready in {time.monotonic() - started:.1f} s")

    def _configure(self) -> None:
        """Write the instance's own settings; pg_basebackup copied the primary's, so rewrite them."""
        conf = [
            "# Written by `cloudops sandbox up`: the settings of this sandbox instance.",
            f"listen_addresses = '{LOOPBACK}'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.socket_dir}'",
            "unix_socket_permissions = 0700",
            f"cluster_name = '{self.plan.name}'",  # also the replica's application_name upstream
            "wal_level = replica",
            # pg_rewind needs hint-bit changes in the WAL: an old primary is rewound to follow the new one.
            "wal_log_hints = on",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "wal_keep_size = '512MB'",
            "hot_standby = on",
            "hot_standby_feedback = on",
            "password_encryption = 'scram-sha-256'",
            "shared_buffers = '128MB'",
            "max_connections = 50",
            "logging_collector = off",
            "log_line_prefix = '%m [%p] %q%u@%d '",
        ]
        for name, text in ((CONF_NAME, "\n".join(conf) + "\n"), ("pg_hba.conf", PG_HBA)):
            if write_if_changed(self.data_dir / name, text, mode=0o600):
                self._chown(self.data_dir / name)
        auto_conf = self.data_dir / "postgresql.auto.conf"
        if self.primary is not None and auto_conf.exists():
            # pg_basebackup -R wrote where the primary's socket was; a sandbox made before the socket moved
            # out of the data directory streams again once its primary_conninfo names the new place.
            before = f"host=''{self.primary.data_dir}''"
            text = auto_conf.read_text()
            if before in text:
                auto_conf.write_text(text.replace(before, f"host=''{self.primary.socket_dir}''"))
        main_conf = self.data_dir / "postgresql.conf"
        include = f"include_if_exists = '{CONF_NAME}'"
        if include not in main_conf.read_text():
            with main_conf.open("a") as handle:
                handle.write(f"\n{include}\n")

    def _start(self, say: Say) -> None:
        argv = [self._bin("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data_dir)]
        run(
            as_user(argv, self.user),
            what=f"{self.name}: pg_ctl start",
            log_path=self.log,
            timeout=90,
            cwd=self.data_dir.parent,
        )
        pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        self.daemon.record(pid)
        say(f"{self.name}: started (pid {pid}) on {self.address}")

    def _restart(self, say: Say) -> None:
        argv = [self._bin("pg_ctl"), "restart", "-w", "-t", "60", "-m", "fast", "-D", str(self.data_dir)]
        run(
            as_user(argv, self.user),
            what=f"{self.name}: pg_ctl restart",
            log_path=self.log,
            timeout=90,
            cwd=self.data_dir.parent,
        )
        pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        self.daemon.record(pid)
        say(f"{self.name}: restarted (pid {pid}) on {self.address}")

    def _ensure_rewind_role(self, say: Say) -> None:
        """The role pg_rewind connects as to its source; its grants are idempotent."""
        from psycopg import sql

        password = self.store.password(REWIND_PASSWORD_KEY)
        with self._socket_connect(REWIND_DATABASE) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [REWIND_ROLE]).fetchone()
            if exists and self._rewind_login_works(password):
                return
            conn.execute(
                sql.SQL("{} ROLE {} WITH LOGIN PASSWORD {}").format(
                    sql.SQL("ALTER" if exists else "CREATE"),
                    sql.Identifier(REWIND_ROLE),
                    sql.Literal(password),
                )
            )
            for function in REWIND_GRANTS:
                conn.execute(
                    sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
                        sql.SQL(function), sql.Identifier(REWIND_ROLE)
                    )
                )
        say(f"{self.name}: role {REWIND_ROLE} (pg_rewind source) {'reset' if exists else 'created'}")

    def _rewind_login_works(self, password: str) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host=LOOPBACK,
                port=self.port,
                user=REWIND_ROLE,
                password=password,
                dbname=REWIND_DATABASE,
                connect_timeout=5,
            ):
                return True
        except psycopg.OperationalError:
            return False

    def rewind_connection(self) -> dict[str, Any]:
        """The Airflow connection of this server as the pg_rewind source role."""
        return {
            "conn_type": "postgres",
            "host": LOOPBACK,
            "port": self.port,
            "login": REWIND_ROLE,
            "password": self.store.password(REWIND_PASSWORD_KEY),
            "schema": REWIND_DATABASE,
            "extra": {},
        }

    def _ensure_role(self, say: Say) -> None:
        import psycopg
        from psycopg import sql

        try:
            with self.tcp_connect():
                return
        except psycopg.OperationalError:
            pass  # missing role or a password from an earlier sandbox: (re)set it below
        password = self.store.password(PASSWORD_KEY)
        with self._socket_connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [ROLE]).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL("{} ROLE {} WITH LOGIN SUPERUSER REPLICATION PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(ROLE), sql.Literal(password)
                )
            )
        say(f"{self.name}: role {ROLE} {'password reset' if exists else 'created'}")

    def _ensure_seed(self, say: Say) -> None:
        from psycopg import sql

        database = self.plan.database
        with self.tcp_connect() as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(ROLE)
                    )
                )
        with self.tcp_connect(database) as conn:
            if conn.execute("SELECT to_regclass(%s)", [seed.ORDERS_MARKER_TABLE]).fetchone() != (None,):
                say(f"{self.name}: database {database} already seeded")
                return
            started = time.monotonic()
            with conn.transaction():
                conn.execute(seed.ORDERS_SQL)
            conn.execute("ANALYZE")
            counts = {
                t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()
                for t in ("customers", "orders", "order_items")
            }
        summary = ", ".join(f"{row[0] if row else 0} {t}" for t, row in counts.items())
        say(f"{self.name}: seeded database {database} ({summary}) in {time.monotonic() - started:.1f} s")

    def _ensure_evidence_database(self, say: Say) -> None:
        """Create the evidence ledger's database if missing (its tables are the ledger's to create)."""
        from psycopg import sql

        with self.tcp_connect() as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [EVIDENCE_DATABASE]).fetchone():
                return
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(EVIDENCE_DATABASE), sql.Identifier(ROLE)
                )
            )
        say(f"{self.name}: created database {EVIDENCE_DATABASE} for the evidence ledger")

    def _wait_streaming(self, say: Say) -> None:
        assert self.primary is not None
        primary = self.primary
        with self._socket_connect() as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        if row != (True,):
            raise SandboxError(
                f"{self.name} on {self.address} is not in recovery (was it promoted?): stop the sandbox "
                f"and delete {self.data_dir} to rebuild it from the primary"
            )

        def streaming() -> bool:
            with primary._socket_connect() as conn:
                found = conn.execute(
                    "SELECT 1 FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
                    [self.plan.name],
                ).fetchone()
            return found is not None

        wait_until(
            streaming, what=f"{self.name} streaming from {primary.address}", log_path=self.log, timeout=60
        )
        say(f"{self.name}: streaming from {primary.address}")

    def connections(self) -> dict[str, dict[str, Any]]:
        found = {self.plan.conn_id: self._connection(self.plan.database)}
        if self.role == "scratch":
            found[EVIDENCE_DB_CONN_ID] = self._connection(EVIDENCE_DATABASE)
        return found

    def _connection(self, database: str) -> dict[str, Any]:
        return {
            "conn_type": "postgres",
            "host": LOOPBACK,
            "port": self.port,
            "login": ROLE,
            "password": self.store.password(PASSWORD_KEY),
            "schema": database,
            "extra": {},
        }

    def stop(self, say: Say) -> None:
        """Stop the instance with a fast shutdown, if this sandbox started it."""
        state, pid = self.daemon.state()
        if state == RUNNING:
            argv = [self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60"]
            run(
                as_user(argv, self.user),
                what=f"{self.name}: pg_ctl stop",
                log_path=self.log,
                timeout=90,
                cwd=self.data_dir.parent,
            )
            say(f"{self.name}: stopped (pid {pid})")
        elif state == STALE:
            say(f"{self.name}: pid {pid} is not this sandbox's postgres; pid file removed, nothing stopped")
        else:
            say(f"{self.name}: not running")
        self.daemon.forget()


__all__ = ["PostgresServer"]
