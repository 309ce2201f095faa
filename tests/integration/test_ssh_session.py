"""One SSH session per host (cloudops.fleet.ssh.SshSession) against the sandbox's Debian hosts.

The patch wave runs every command of a host through one session: it must outlive the host's reboot
(connecting again, once) and must check the host key again when it does. Uses the web fleet's hosts,
which the patch wave tests (fleet app) leave alone; the rebooted host is reset afterwards.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from cloudops.fleet.ssh import HostKeyError, SshSession
from cloudops.patching.apt_host import AptHost, RebootBounds, StepLog

pytestmark = pytest.mark.integration

REBOOTED = ("web-3", "sandbox_ssh_web_3")


def _quiet(_: str) -> None:
    pass


@pytest.fixture
def rebooted_host(sandbox_env: dict[str, str]) -> Iterator[str]:
    from cloudops.sandbox import estate

    yield REBOOTED[1]
    estate.reset_hosts(names=(REBOOTED[0],), say=_quiet)


def test_one_session_outlives_a_reboot_and_reads_the_new_boot_id(rebooted_host: str) -> None:
    with SshSession(rebooted_host, used_by="test") as session:
        host = AptHost(REBOOTED[0], session, privilege="sudo")
        first = host.boot_id()
        assert host.boot_id() == first
        assert session.connects == 1  # two commands, one handshake

        outcome = host.reboot(StepLog(), RebootBounds(60, 0.5, 1, 1))

        assert outcome.before == first
        assert outcome.after != first
        # Read again through the same session object, on the connection made after the reboot.
        assert host.boot_id() == outcome.after
        assert session.connects == 2


class Forwarder:
    """A TCP relay on 127.0.0.1 whose target can be switched: the same address, another host behind it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every relayed connection (what a reboot does to an open SSH connection)."""
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._open.clear()

    def close(self) -> None:
        self.cut()
        self._server.close()


def test_a_changed_host_key_is_refused_when_the_session_connects_again(
    sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    web1 = json.loads(sandbox_env["AIRFLOW_CONN_SANDBOX_SSH_WEB_1"])
    web2 = json.loads(sandbox_env["AIRFLOW_CONN_SANDBOX_SSH_WEB_2"])
    assert web1["extra"]["host_key"] != web2["extra"]["host_key"]
    relay = Forwarder((web1["host"], web1["port"]))
    try:
        # web-1's connection (its key on record), reached through the relay's address.
        monkeypatch.setenv(
            "AIRFLOW_CONN_TEST_SSH_RELAYED", json.dumps({**web1, "host": "127.0.0.1", "port": relay.port})
        )
        session = SshSession("test_ssh_relayed", used_by="test")
        assert session.run("hostname").stdout.strip() == "web-1"
        assert session.connects == 1

        relay.target = (web2["host"], web2["port"])  # another host answers at the same address
        relay.cut()
        with pytest.raises(HostKeyError, match=r"does not match the one on record"):
            session.run("hostname")
        with pytest.raises(HostKeyError):  # and again on the next command: never trusted once refused
            session.run("hostname")
        assert session.connects == 1

        relay.target = (web1["host"], web1["port"])  # the right host again: the session recovers
        assert session.run("hostname").stdout.strip() == "web-1"
        assert session.connects == 2
        session.close()
    finally:
        relay.close()
