"""The sandbox's mail sink: a tiny SMTP server that writes every message it receives to <sandbox>/mail/.

It speaks just enough SMTP for smtplib and Airflow's SmtpHook (no TLS, no AUTH), so notification runbooks
can be tested end to end by reading files. Run as `python -m cloudops.sandbox.smtp --host H --port P
--mail-dir D`; the `SmtpSink` component starts it detached like the other servers. stdlib `smtpd` is
deprecated (gone in 3.12) and aiosmtpd is not a dependency, hence this small asyncio server.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import smtplib
import sys
from pathlib import Path
from typing import Any

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
)

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
IDLE_TIMEOUT = 300.0
_sequence = itertools.count(1)


def _save(mail_dir: Path, sender: str, recipients: list[str], data: bytes) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = mail_dir / f"{stamp}-{next(_sequence):05d}.eml"
    envelope = f"X-Sandbox-Envelope-From: {sender}\r\nX-Sandbox-Envelope-To: {', '.join(recipients)}\r\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(envelope.encode() + data)
    tmp.replace(path)  # readers never see half a message
    return path


async def _read_data(reader: asyncio.StreamReader) -> bytes | None:
    """Read a DATA body up to the lone dot, undoing dot-stuffing; None when it is too large."""
    chunks: list[bytes] = []
    size = 0
    while True:
        line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
        if not line or line in (b".\r\n", b".\n"):
            break
        if line.startswith(b".."):
            line = line[1:]
        size += len(line)
        if size <= MAX_MESSAGE_BYTES:
            chunks.append(line)
    return b"".join(chunks) if size <= MAX_MESSAGE_BYTES else None


async def _session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mail_dir: Path) -> None:
    def reply(text: str) -> None:
        writer.write(text.encode() + b"\r\n")

    sender: str | None = None
    recipients: list[str] = []
    reply("220 cloudops-sandbox ESMTP mail sink")
    try:
        while True:
            await writer.drain()
            raw = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip("\r\n")
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                reply(f"250-cloudops-sandbox\r\n250-8BITMIME\r\n250 SIZE {MAX_MESSAGE_BYTES}")
            elif verb == "HELO":
                reply("250 cloudops-sandbox")
            elif verb == "MAIL":
                sender, recipients = arg.partition(":")[2].split(" ")[0].strip("<>"), []
                reply("250 OK")
            elif verb == "RCPT":
                recipients.append(arg.partition(":")[2].split(" ")[0].strip("<>"))
                reply("250 OK")
            elif verb == "DATA":
                if sender is None or not recipients:
                    reply("503 need MAIL and RCPT first")
                    continue
                reply("354 end data with <CR><LF>.<CR><LF>")
                await writer.drain()
                data = await _read_data(reader)
                if data is None:
                    reply("552 message too large")
                else:
                    saved = _save(mail_dir, sender, recipients, data)
                    reply(f"250 OK saved as {saved.name}")
                sender, recipients = None, []
            elif verb == "RSET":
                sender, recipients = None, []
                reply("250 OK")
            elif verb == "NOOP":
                reply("250 OK")
            elif verb == "VRFY":
                reply("252 cannot verify, will accept")
            elif verb == "QUIT":
                reply("221 bye")
                break
            else:
                reply("502 command not implemented")
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, mail_dir: Path) -> None:
    """Accept SMTP sessions forever."""
    mail_dir.mkdir(parents=True, exist_ok=True)
    server = await asyncio.start_server(lambda r, w: _session(r, w, mail_dir), host, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="cloudops sandbox SMTP sink")
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mail-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.mail_dir))


class SmtpSink:
    """The SMTP sink component: receives what notification runbooks send."""

    def __init__(self, layout: SandboxLayout, smtp_conn_ids: tuple[str, ...]) -> None:
        self.layout, self.conn_ids = layout, smtp_conn_ids
        self.name = "smtp-sink"
        self.port = layout.port("smtp")
        self.address = f"{LOOPBACK}:{self.port}"
        self.log = layout.log_file(self.name)
        self.argv = [
            sys.executable,
            "-m",
            "cloudops.sandbox.smtp",
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--mail-dir",
            str(layout.mail_dir),
        ]
        self.daemon = Daemon(layout.pid_file(self.name), marker=f"--mail-dir {layout.mail_dir}")
        self.detail = f"messages in {layout.mail_dir}"

    def binaries(self) -> list[Binary]:
        return []

    def endpoints(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, self.port)]

    def _answers(self) -> bool:
        with smtplib.SMTP(LOOPBACK, self.port, timeout=2) as client:
            return bool(client.noop()[0] == 250)

    def ensure(self, say: Say) -> None:
        """Start the sink if needed."""
        state, pid = self.daemon.state()
        if state == RUNNING:
            self._answers()
            say(f"{self.name}: already running (pid {pid}) on {self.address}")
            return
        if state == STALE:
            self.daemon.forget()
        # The sink imports this package: make it importable even before `pip install -e .`.
        plugins_dir = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (plugins_dir, os.environ.get("PYTHONPATH", "")) if p)
        proc = spawn_detached(
            self.argv, log_path=self.log, env={**os.environ, "PYTHONPATH": path}, cwd=self.layout.dir
        )
        wait_until(
            self._answers, what=self.name, log_path=self.log, timeout=30, alive=lambda: proc.poll() is None
        )
        self.daemon.record(proc.pid)
        say(f"{self.name}: started (pid {proc.pid}) on {self.address}")

    def connections(self) -> dict[str, dict[str, Any]]:
        return {
            conn_id: {
                "conn_type": "smtp",
                "host": LOOPBACK,
                "port": self.port,
                "extra": {
                    "disable_ssl": True,
                    "disable_tls": True,
                    "from_email": "cloudops@sandbox.example",
                    "timeout": 10,
                    "retry_limit": 1,
                },
            }
            for conn_id in self.conn_ids
        }

    def stop(self, say: Say) -> None:
        """Stop the sink if this sandbox started it; received mail stays on disk."""
        stop_daemon(self.daemon, what=self.name, say=say, timeout=15)


__all__ = ["SmtpSink", "main", "serve"]


if __name__ == "__main__":
    main()
