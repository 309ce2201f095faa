"""The sandbox's Redis: the Celery broker of the local CeleryExecutor deployment (`make up-celery`).

Debian's ``/usr/bin/redis-server`` (package redis-server) with a config file of its own under
<sandbox>/redis/ (0600: it holds the password), listening on 127.0.0.1 on a sandbox port, never the
machine's 6379. A password is required (``requirepass``, from the sandbox's credential store), and
nothing is persisted: a broker restarted empty loses only queued messages, which the scheduler
queues again (``[scheduler] task_queued_timeout``).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from cloudops.sandbox.credentials import CredentialStore
from cloudops.sandbox.layout import LOOPBACK, SandboxLayout
from cloudops.sandbox.process import (
    RUNNING,
    STALE,
    Binary,
    Daemon,
    Say,
    spawn_detached,
    stop_daemon,
    wait_until,
    write_if_changed,
)

DEFAULT_REDIS_SERVER = Path("/usr/bin/redis-server")
PASSWORD_KEY = "redis_broker"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# The logical databases of the broker: one per local deployment (its queues never mix with another's).
DATABASES = 16


class RedisServer:
    """The sandbox's Redis component."""

    def __init__(self, layout: SandboxLayout, store: CredentialStore) -> None:
        self.layout, self.store = layout, store
        self.name = "redis"
        self.port = layout.port("redis")
        self.address = f"{LOOPBACK}:{self.port}"
        self.dir = layout.dir / "redis"
        self.config = self.dir / "redis.conf"
        self.log = layout.log_file(self.name)
        # Redis rewrites its process title; the template keeps the config path in it, the marker.
        self.daemon = Daemon(layout.pid_file(self.name), marker=str(self.config))
        self.binary = DEFAULT_REDIS_SERVER
        self.detail = "Celery broker (make up-celery)"

    def binaries(self) -> list[Binary]:
        return [Binary("redis-server", self.binary, "redis-server")]

    def endpoints(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, self.port)]

    def broker_url(self, database: int) -> str:
        """The Celery broker URL of logical database ``database`` (holds the password: never log it)."""
        if not 0 <= database < DATABASES:
            raise ValueError(f"redis database {database}: the sandbox's Redis has 0..{DATABASES - 1}")
        return f"redis://:{self.store.password(PASSWORD_KEY)}@{LOOPBACK}:{self.port}/{database}"

    def _config_text(self) -> str:
        return "\n".join(
            [
                "# Written by `cloudops sandbox up`: the sandbox's Celery broker.",
                f"bind {LOOPBACK}",
                f"port {self.port}",
                "protected-mode yes",
                f"requirepass {self.store.password(PASSWORD_KEY)}",
                f"dir {self.dir}",
                'save ""',
                "appendonly no",
                f"databases {DATABASES}",
                "daemonize no",
                "loglevel notice",
                'proc-title-template "{title} {listen-addr} {config-file}"',
                "",
            ]
        )

    def ping(self) -> bool:
        """Tell whether the server answers an authenticated PING (RESP over a plain socket)."""
        password = self.store.password(PASSWORD_KEY)
        with socket.create_connection((LOOPBACK, self.port), timeout=2) as conn:
            conn.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = conn.recv(256)
                if not chunk:
                    break
                reply += chunk
        return reply.split(b"\r\n")[:2] == [b"+OK", b"+PONG"]

    def ensure(self, say: Say) -> None:
        """Start Redis if it is not running; a running one must answer with the sandbox's password."""
        self.dir.mkdir(parents=True, exist_ok=True)
        changed = write_if_changed(self.config, self._config_text(), mode=0o600)
        state, pid = self.daemon.state()
        if state == RUNNING and not changed:
            wait_until(self.ping, what=self.name, log_path=self.log, timeout=START_TIMEOUT)
            say(f"{self.name}: already running (pid {pid}) on {self.address}")
            return
        if state == RUNNING:
            stop_daemon(
                self.daemon, what=f"{self.name} (its settings changed)", say=say, timeout=STOP_TIMEOUT
            )
        elif state == STALE:
            self.daemon.forget()
        proc = spawn_detached([str(self.binary), str(self.config)], log_path=self.log, cwd=self.dir)
        wait_until(
            self.ping,
            what=self.name,
            log_path=self.log,
            timeout=START_TIMEOUT,
            alive=lambda: proc.poll() is None,
        )
        self.daemon.record(proc.pid)
        say(f"{self.name}: started (pid {proc.pid}) on {self.address}")

    def connections(self) -> dict[str, dict[str, Any]]:
        return {}

    def stop(self, say: Say) -> None:
        """Stop Redis if this sandbox started it (queued messages are lost: nothing is persisted)."""
        stop_daemon(self.daemon, what=self.name, say=say, timeout=STOP_TIMEOUT)


__all__ = ["RedisServer"]
