"""The sandbox's MariaDB servers: the primary with the `inventory` database and the binary log on, its
GTID replica (read_only, a port of its own: cluster inventory_mariadb_cluster), and a scratch server of its
own (no seed, no binary log, events off) for the restore drills' scratch copies.

The primary and the replica are set up alike so that either can be promoted: binary log, ROW format,
``log_slave_updates``, ``gtid_strict_mode``, ``sync_binlog = 1`` (an acknowledged commit is in the binlog);
only ``server_id`` and ``read_only`` differ. The replica is cloned from the primary with ``mariadb-dump
--gtid`` (its databases, not the mysql schema), starts at the dump's GTID position and replicates with
``MASTER_USE_GTID = slave_pos`` as ``cloudops_repl``. Accounts each server needs of its own are made with
``sql_log_bin = 0`` on the replica, so that its binlog holds only what it received. The failover probe logs
in as ``cloudops_probe``, which has no privilege past read_only: a read_only server really refuses its
writes, as it would the application's.

It reads only its own option file (--defaults-file, so /etc/mysql is ignored), runs as the `mysql` OS user
when the sandbox runs as root, and logs to stderr, which the sandbox sends to its log file. The binary log
is on (ROW format, server_id 1) because backups record binlog positions. The scratch server runs with
`event_scheduler = OFF`: events restored from a dump never fire there. Administration goes through the
unix socket as root (unix_socket authentication); Airflow gets the `cloudops`@`127.0.0.1` account over TCP.
"""

from __future__ import annotations

import getpass
import os
import pwd
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.sandbox import seed
from cloudops.sandbox.layout import LOOPBACK, SandboxLayout
from cloudops.sandbox.process import (
    RUNNING,
    STALE,
    Binary,
    Daemon,
    Say,
    run,
    spawn_detached,
    stop_daemon,
    wait_until,
    write_if_changed,
)

if TYPE_CHECKING:
    import pymysql

    from cloudops.sandbox.credentials import CredentialStore
    from cloudops.sandbox.plan import DatabasePlan

USER = "cloudops"
PASSWORD_KEY = "mariadb_cloudops"
REPLICATION_USER = "cloudops_repl"
REPLICATION_PASSWORD_KEY = "mariadb_replication"
PROBE_USER = "cloudops_probe"
PROBE_PASSWORD_KEY = "mariadb_probe"
SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")


class MariadbServer:
    """A MariaDB server of the sandbox: the primary, or the scratch server (a `plan` with role scratch)."""

    def __init__(
        self,
        layout: SandboxLayout,
        plan: DatabasePlan,
        store: CredentialStore,
        primary: MariadbServer | None = None,
    ) -> None:
        self.layout, self.plan, self.store, self.primary = layout, plan, store, primary
        self.scratch = plan.role == "scratch"
        self.replica = primary is not None
        self.name = "mariadb-scratch" if self.scratch else "mariadb-replica" if self.replica else "mariadb"
        self.port = layout.port(self.name.replace("-", "_"))
        self.address = f"{LOOPBACK}:{self.port}"
        self.base = layout.data_root / self.name
        self.data_dir = self.base / "data"
        self.socket = self.base / "run" / "mariadbd.sock"
        # A temp folder of its own: servers bootstrapped side by side in a shared /tmp removed each
        # other's temporary tables (mariadb-install-db: "Unknown table 'mysql.tmp_user_sys'").
        self.tmp_dir = self.base / "tmp"
        self.option_file = self.base / "my.cnf"
        self.log = layout.log_file(self.name)
        self.daemon = Daemon(
            layout.pid_file(self.name),
            marker=f"--defaults-file={self.option_file}",
            server_pid_file=self.base / "run" / "mariadbd.pid",
        )
        self.os_user = layout.os_user("mysql")
        self.detail = layout.data_note

    def binaries(self) -> list[Binary]:
        found = [
            Binary("mariadbd", self.layout.mariadbd, "mariadb-server"),
            Binary("mariadb-install-db", self.layout.mariadb_install_db, "mariadb-server"),
        ]
        if self.replica:
            found += [
                Binary("mariadb-dump", Path("/usr/bin/mariadb-dump"), "mariadb-client"),
                Binary("mariadb", Path("/usr/bin/mariadb"), "mariadb-client"),
            ]
        return found

    def endpoints(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, self.port)]

    def _options(self) -> str:
        lines = [
            "# Written by `cloudops sandbox up`: the only option file this server reads.",
            "[mariadbd]",
            *([f"user = {self.os_user}"] if self.os_user else []),
            f"datadir = {self.data_dir}",
            f"socket = {self.socket}",
            f"tmpdir = {self.tmp_dir}",
            f"pid-file = {self.daemon.server_pid_file}",
            f"port = {self.port}",
            f"bind-address = {LOOPBACK}",
            "skip-name-resolve",
            # The scratch server loads dumps and is dropped again: no binary log, and restored events
            # never run (they could name other databases, or change the copy under the drill's checks).
            *(
                ["skip-log-bin", "server_id = 2", "event_scheduler = OFF"]
                if self.scratch
                else [
                    "log-bin = mariadb-bin",
                    "binlog_format = ROW",
                    f"server_id = {3 if self.replica else 1}",
                    "log_slave_updates = ON",
                    "gtid_strict_mode = ON",
                    "sync_binlog = 1",
                    f"read_only = {'ON' if self.replica else 'OFF'}",
                    "relay-log = mariadb-relay",
                ]
            ),
            "innodb_buffer_pool_size = 128M",
            "performance_schema = OFF",
            "character-set-server = utf8mb4",
            "collation-server = utf8mb4_unicode_ci",
        ]
        return "\n".join(lines) + "\n"

    def _admin_connect(self) -> pymysql.Connection[Any]:
        import pymysql

        user = "root" if os.geteuid() == 0 else getpass.getuser()
        return pymysql.connect(unix_socket=str(self.socket), user=user, autocommit=True, connect_timeout=5)

    def tcp_connect(self, database: str | None = None) -> pymysql.Connection[Any]:
        """Connect over TCP as the cloudops account, the way Airflow will."""
        import pymysql

        return pymysql.connect(
            host=LOOPBACK,
            port=self.port,
            user=USER,
            password=self.store.password(PASSWORD_KEY),
            database=database,
            autocommit=True,
            connect_timeout=5,
        )

    def ensure(self, say: Say) -> None:
        """Start the server if needed, then make sure the cloudops account and inventory data exist."""
        state, pid = self.daemon.state()
        if state == RUNNING and pid is not None:
            with self._admin_connect() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
            self.daemon.record(pid)
            if write_if_changed(self.option_file, self._options()):
                # Options only a restart applies (the GTID settings, on a sandbox made before them).
                say(f"{self.name}: options changed: restarting")
                stop_daemon(self.daemon, what=self.name, say=say, timeout=90)
                self._start(say)
            else:
                say(f"{self.name}: already running (pid {pid}) on {self.address}")
        else:
            if state == STALE:
                self.daemon.forget()
            self._prepare(say)
            self._start(say)
        self._ensure_account(say)
        if self.replica:
            self._ensure_replicating(say)
        elif not self.scratch:
            self._ensure_seed(say)
            self._ensure_cluster_accounts(say)

    def _chown(self, path: Path) -> None:
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _prepare(self, say: Say) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.socket.parent.mkdir(exist_ok=True)
        self._chown(self.socket.parent)
        self.tmp_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.tmp_dir)
        write_if_changed(self.option_file, self._options())
        if (self.data_dir / "mysql").is_dir():
            return
        say(f"{self.name}: mariadb-install-db into {self.data_dir}")
        started = time.monotonic()
        argv = [
            str(self.layout.mariadb_install_db),
            f"--defaults-file={self.option_file}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            "--basedir=/usr",
            *([f"--user={self.os_user}"] if self.os_user else []),
        ]
        run(argv, what=f"{self.name}: mariadb-install-db", log_path=self.log, timeout=300, cwd=self.base)
        say(f"{self.name}: data directory ready in {time.monotonic() - started:.1f} s")

    def _start(self, say: Say) -> None:
        proc = spawn_detached(
            [str(self.layout.mariadbd), f"--defaults-file={self.option_file}"],
            log_path=self.log,
            cwd=self.base,
        )

        def ready() -> bool:
            with self._admin_connect() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
            return True

        wait_until(ready, what=self.name, log_path=self.log, timeout=90, alive=lambda: proc.poll() is None)
        self.daemon.record(proc.pid)
        say(f"{self.name}: started (pid {proc.pid}) on {self.address}")

    def _ensure_account(self, say: Say) -> None:
        import pymysql

        try:
            with self.tcp_connect():
                return
        except pymysql.err.OperationalError:
            pass  # missing account or a password from an earlier sandbox: (re)set it below
        password = self.store.password(PASSWORD_KEY)
        account = f"'{USER}'@'{LOOPBACK}'"
        with self._admin_connect() as conn, conn.cursor() as cur:
            if self.replica:
                cur.execute("SET SESSION sql_log_bin = 0")  # the replica's binlog holds only what it received
            cur.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY %s", [password])
            cur.execute(f"ALTER USER {account} IDENTIFIED BY %s", [password])
            cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO {account} WITH GRANT OPTION")
        say(f"{self.name}: account {USER}@{LOOPBACK} ready")

    def _ensure_seed(self, say: Say) -> None:
        database = self.plan.database
        with self.tcp_connect() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                [database, seed.INVENTORY_MARKER_TABLE],
            )
            row = cur.fetchone()
            if row and row[0]:
                cur.execute(f"SELECT COUNT(*) FROM `{database}`.`{seed.INVENTORY_MARKER_TABLE}`")
                filled = cur.fetchone()
                if filled and filled[0]:
                    say(f"{self.name}: database {database} already seeded")
                    return
            started = time.monotonic()
            # A half-made database (interrupted seed) is rebuilt whole.
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
            cur.execute(f"CREATE DATABASE `{database}`")
            cur.execute(f"USE `{database}`")
            for statement in seed.INVENTORY_SQL:
                cur.execute(statement)
            cur.execute(f"SELECT COUNT(*) FROM `{seed.INVENTORY_MARKER_TABLE}`")
            count = cur.fetchone()
        rows = count[0] if count else 0
        say(
            f"{self.name}: seeded database {database} ({rows} stock levels) in "
            f"{time.monotonic() - started:.1f} s"
        )

    def _ensure_cluster_accounts(self, say: Say) -> None:
        """The replication and probe accounts (on the replica too: either server may become the primary)."""
        replication = self.store.password(REPLICATION_PASSWORD_KEY)
        probe = self.store.password(PROBE_PASSWORD_KEY)
        database = self.plan.database
        with self._admin_connect() as conn, conn.cursor() as cur:
            if self.replica:
                cur.execute("SET SESSION sql_log_bin = 0")
            for user, password in ((REPLICATION_USER, replication), (PROBE_USER, probe)):
                account = f"'{user}'@'{LOOPBACK}'"
                cur.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY %s", [password])
                cur.execute(f"ALTER USER {account} IDENTIFIED BY %s", [password])
            cur.execute(f"GRANT REPLICATION SLAVE, SLAVE MONITOR ON *.* TO '{REPLICATION_USER}'@'{LOOPBACK}'")
            # Rows only, no READ ONLY ADMIN: read_only refuses the probe's writes as the application's.
            rights = "SELECT, INSERT, UPDATE, DELETE, CREATE"
            cur.execute(f"GRANT {rights} ON `{database}`.* TO '{PROBE_USER}'@'{LOOPBACK}'")

    def _slave_status(self) -> dict[str, Any] | None:
        import pymysql

        with self._admin_connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone()
        return dict(row) if row else None

    def _ensure_replicating(self, say: Say) -> None:
        """Clone the primary once (its databases, at the dump's GTID position), then make sure the
        replication threads run and follow the primary."""
        from cloudops.errors import SandboxError

        assert self.primary is not None
        primary = self.primary
        status = self._slave_status()
        if status is None:
            with self._admin_connect() as conn, conn.cursor() as cur:
                cur.execute("SELECT @@GLOBAL.read_only, @@GLOBAL.gtid_binlog_pos")
                read_only, own = cur.fetchone() or (1, "")
            if not int(read_only) or own:
                raise SandboxError(
                    f"{self.name} on {self.address} replicates from nothing and has writes of its own "
                    f"(read_only {read_only}, gtid_binlog_pos {own!r}): was it promoted? Fail back, or stop "
                    f"the sandbox and delete {self.base} to clone it again"
                )
            self._clone(say)
        elif status.get("Slave_IO_Running") != "Yes" or status.get("Slave_SQL_Running") != "Yes":
            with self._admin_connect() as conn, conn.cursor() as cur:
                cur.execute("START SLAVE")
        self._ensure_cluster_accounts(say)

        def streaming() -> bool:
            row = self._slave_status() or {}
            if row.get("Last_SQL_Error") or row.get("Last_IO_Error"):
                error = row.get("Last_SQL_Error") or row.get("Last_IO_Error")
                if row.get("Slave_SQL_Running") == "No" or row.get("Slave_IO_Running") == "No":
                    raise SandboxError(f"{self.name}: replication from {primary.address} stopped: {error}")
            return row.get("Slave_IO_Running") == "Yes" and row.get("Slave_SQL_Running") == "Yes"

        wait_until(
            streaming, what=f"{self.name} replicating from {primary.address}", log_path=self.log, timeout=60
        )
        say(f"{self.name}: replicating from {primary.address} (GTID, read_only)")

    def _clone(self, say: Say) -> None:
        """Load the primary's databases with their GTID position and point the replica at the primary."""
        import re
        import subprocess

        from cloudops.errors import SandboxError

        assert self.primary is not None
        primary = self.primary
        started = time.monotonic()
        with primary._admin_connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT schema_name FROM information_schema.schemata")
            databases = sorted(str(row[0]) for row in cur.fetchall() if row[0] not in SYSTEM_SCHEMAS)
        admin = "root" if os.geteuid() == 0 else getpass.getuser()
        dump_argv = [
            "/usr/bin/mariadb-dump",
            f"--socket={primary.socket}",
            f"--user={admin}",
            "--single-transaction",
            "--gtid",
            "--master-data=2",
            "--routines",
            "--events",
            "--triggers",
            "--databases",
            *databases,
        ]
        dump = subprocess.run(dump_argv, capture_output=True, timeout=300, check=False)
        if dump.returncode != 0:
            raise SandboxError(
                f"{self.name}: mariadb-dump of {primary.name} failed: {dump.stderr.decode()[-500:]}"
            )
        found = re.search(rb"gtid_slave_pos\s*=\s*'([^']*)'", dump.stdout)
        if found is None:
            raise SandboxError(f"{self.name}: the dump of {primary.name} names no GTID position")
        position = found.group(1).decode()
        load = subprocess.run(
            [
                "/usr/bin/mariadb",
                f"--socket={self.socket}",
                f"--user={admin}",
                "--init-command=SET sql_log_bin=0",
            ],
            input=dump.stdout,
            capture_output=True,
            timeout=300,
            check=False,
        )
        if load.returncode != 0:
            raise SandboxError(
                f"{self.name}: loading {primary.name}'s dump failed: {load.stderr.decode()[-500:]}"
            )
        password = self.store.password(REPLICATION_PASSWORD_KEY)
        with self._admin_connect() as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL gtid_slave_pos = %s", [position])
            cur.execute(
                "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
                "MASTER_PASSWORD = %s, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1",
                [LOOPBACK, primary.port, REPLICATION_USER, password],
            )
            cur.execute("START SLAVE")
        say(
            f"{self.name}: cloned {', '.join(databases) or 'nothing'} from {primary.name} at GTID "
            f"{position or '-'} in {time.monotonic() - started:.1f} s"
        )

    def connections(self) -> dict[str, dict[str, Any]]:
        return {
            self.plan.conn_id: {
                "conn_type": "mysql",
                "host": LOOPBACK,
                "port": self.port,
                "login": USER,
                "password": self.store.password(PASSWORD_KEY),
                **({"schema": self.plan.database} if self.plan.database else {}),
                "extra": {"charset": "utf8mb4"},
            }
        }

    def replication_connection(self) -> dict[str, Any]:
        """This server as a replication source: the account its replicas log in with, and its address."""
        return {
            "conn_type": "mysql",
            "host": LOOPBACK,
            "port": self.port,
            "login": REPLICATION_USER,
            "password": self.store.password(REPLICATION_PASSWORD_KEY),
            "extra": {},
        }

    def stop(self, say: Say) -> None:
        """Shut the server down cleanly (SIGTERM), if this sandbox started it."""
        stop_daemon(self.daemon, what=self.name, say=say, timeout=90)


__all__ = ["MariadbServer"]
