"""Ansible callback: wall time of each serial batch and of the whole play, as JSON lines on stderr."""

from __future__ import annotations

import json
import sys
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    """Print one JSON line per batch (a batch is one run of the play over its hosts)."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "batch_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._batch = -1
        self._started = 0.0
        self._hosts: list[str] = []
        self._play_started = time.monotonic()

    def _close(self) -> None:
        if self._batch >= 0:
            line = {"batch": self._batch, "hosts": self._hosts, "seconds": time.monotonic() - self._started}
            sys.stderr.write("BATCH " + json.dumps(line) + "\n")

    def v2_playbook_on_play_start(self, play):  # type: ignore[no-untyped-def]
        # With serial, the strategy starts the play again for every batch.
        self._close()
        self._batch += 1
        self._started = time.monotonic()
        self._hosts = []

    def v2_runner_on_ok(self, result):  # type: ignore[no-untyped-def]
        if result._host.name not in self._hosts:
            self._hosts.append(result._host.name)

    def v2_playbook_on_stats(self, stats):  # type: ignore[no-untyped-def]
        self._close()
        sys.stderr.write("TOTAL " + json.dumps({"seconds": time.monotonic() - self._play_started}) + "\n")
