"""The sandbox's AWS endpoint: moto's server, detached, on 127.0.0.1.

moto keeps its state in memory, so every `up` checks the seeded resources and recreates what a restart
lost (see `seed.seed_aws`). Account 123456789012, credentials testing/testing.
"""

from __future__ import annotations

import importlib.util
import sys
import urllib.request
from datetime import UTC, datetime
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
    spawn_detached,
    stop_daemon,
    wait_until,
)

if TYPE_CHECKING:
    from cloudops.sandbox.credentials import CredentialStore
    from cloudops.sandbox.plan import EstatePlan

EVIDENCE_SIGNING_CONN_ID = "cloudops_evidence_signing"
EVIDENCE_LOCK_DAYS = "7"  # the sandbox's evidence is thrown away with moto's memory


class MotoServer:
    """moto's server standing in for S3, RDS, EC2, SNS, SSM and Cost Explorer."""

    def __init__(self, layout: SandboxLayout, plan: EstatePlan, store: CredentialStore | None = None) -> None:
        self.layout, self.plan, self.store = layout, plan, store
        self.name = "moto"
        self.port = layout.port("moto")
        self.address = f"{LOOPBACK}:{self.port}"
        self.endpoint = f"http://{self.address}"
        self.log = layout.log_file("moto")
        self.argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)]
        # The port names this sandbox's moto; the interpreter path tells it from another project's.
        self.daemon = Daemon(layout.pid_file("moto"), marker=" ".join(self.argv[1:]))
        self.detail = f"AWS endpoint, region {plan.aws.region}, bucket {plan.aws.bucket}"

    def binaries(self) -> list[Binary]:
        if importlib.util.find_spec("moto.server") is None or importlib.util.find_spec("flask") is None:
            return [
                Binary(
                    "moto server (python -m moto.server)",
                    Path(sys.executable) / "moto[server]",
                    "python3 (pip install 'moto[server]' into this venv)",
                )
            ]
        return []

    def endpoints(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, self.port)]

    def _answers(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint}/", timeout=2) as response:
            return bool(response.status == 200)

    def ensure(self, say: Say) -> None:
        """Start moto if needed and create the seeded AWS resources it is missing."""
        state, pid = self.daemon.state()
        if state == RUNNING:
            self._answers()
            say(f"{self.name}: already running (pid {pid}) on {self.address}")
        else:
            if state == STALE:
                self.daemon.forget()
            proc = spawn_detached(self.argv, log_path=self.log, cwd=self.layout.dir)
            wait_until(
                self._answers,
                what=self.name,
                log_path=self.log,
                timeout=60,
                alive=lambda: proc.poll() is None,
            )
            self.daemon.record(proc.pid)
            say(f"{self.name}: started (pid {proc.pid}) on {self.address}")
        created = seed.seed_aws(self.plan, self.endpoint)
        if self.plan.cost is not None:
            from cloudops.sandbox.billing import seed_billing

            created += seed_billing(
                self.plan.cost, self.endpoint, self.plan.aws.region, now=datetime.now(UTC)
            )
        for line in created:
            say(f"{self.name}: created {line}")
        if not created:
            say(f"{self.name}: AWS resources already seeded")

    def connections(self) -> dict[str, dict[str, Any]]:
        return {
            self.plan.aws.conn_id: {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"region_name": self.plan.aws.region, "endpoint_url": self.endpoint},
            },
            **self._signing_connection(),
        }

    def _signing_connection(self) -> dict[str, dict[str, Any]]:
        """The evidence digests' HMAC key: random per sandbox, kept in the credentials file, never logged."""
        if self.store is None:
            return {}
        return {
            EVIDENCE_SIGNING_CONN_ID: {
                "conn_type": "generic",
                "password": self.store.password("evidence_signing_key"),
                "description": "HMAC key of the evidence digests (the password)",
            }
        }

    def settings(self) -> dict[str, str]:
        """Evidence shipping's deployment settings, for the env file."""
        return {
            "CLOUDOPS_EVIDENCE_BUCKET": seed.EVIDENCE_BUCKET,
            "CLOUDOPS_EVIDENCE_AWS_CONN_ID": self.plan.aws.conn_id,
            "CLOUDOPS_EVIDENCE_SIGNING_CONN_ID": EVIDENCE_SIGNING_CONN_ID,
            "CLOUDOPS_EVIDENCE_LOCK_MODE": "GOVERNANCE",
            "CLOUDOPS_EVIDENCE_LOCK_DAYS": EVIDENCE_LOCK_DAYS,
        }

    def stop(self, say: Say) -> None:
        """Stop moto if this sandbox started it (its state is lost, by design)."""
        stop_daemon(self.daemon, what=self.name, say=say, timeout=30)


__all__ = ["MotoServer"]
