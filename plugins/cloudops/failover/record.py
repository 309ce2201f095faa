"""The drill record: one JSON document per drill, for the evidence ledger and the estate's S3
evidence repository beside the backups.

It holds what an auditor or on-call needs to trust the figures (the state before, each phase's
timestamps, what the servers said, the probe's judgement, each target's verdict and its reason) and no
secret: the probe's connection appears only as hosts, ports, database and user, and every free text is
passed through :func:`scrub` before it is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudops.engines.replication import Step
from cloudops.failover.analysis import ProbeAnalysis, ProbeAttempt, Verdict, overall
from cloudops.failover.guards import GuardDecision

RECORD_VERSION = 1
# Monotonic clock readings mean nothing outside the process that took them.
_MONOTONIC = {"start_mono", "end_mono", "start_wall"}
# The bad attempts kept verbatim: enough for every window of a drill, bounded for a probe left running.
MAX_ATTEMPTS_KEPT = 500

_SECRETS = (
    (re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE), r"\1***"),
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
    (re.compile(r"(PGPASSWORD\s*=\s*)\S+"), r"\1***"),
)


def scrub(text: str) -> str:
    """``text`` with anything shaped like a password (``password=...``, ``user:pw@`` in a URI)
    replaced by ``***``."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def iso(wall: float | None) -> str | None:
    """A ``time.time()`` value as an ISO 8601 UTC timestamp with milliseconds."""
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class PreState:
    """The cluster just before the action: who was primary, who replicated, how far behind the
    candidate was at injection (the loss figure is only as meaningful as the lag it met)."""

    primary: str
    replicas: tuple[str, ...]
    candidate: str
    lag_bytes: int | None
    lag_seconds: float | None
    lag_how: str
    timelines: dict[str, int | None]
    positions: dict[str, str | None]
    sync_states: dict[str, str]
    summary: str
    read_at: float


# A drill's phase is a replication verb's step, or one of the drill's own (probe baseline, verify).
Phase = Step


@dataclass
class DrillRecord:
    """Everything one drill proved (or failed to), serialisable with :meth:`to_json`."""

    run_id: str
    cluster: str
    manager: str
    mode: str
    started: float
    probe_target: dict[str, Any]
    engine_version: str | None = None
    finished: float | None = None
    pre_state: PreState | None = None
    preflight: tuple[GuardDecision, ...] = ()
    phases: list[Phase] = field(default_factory=list)
    server_evidence: dict[str, str] = field(default_factory=dict)
    analysis: ProbeAnalysis | None = None
    bad_attempts: tuple[ProbeAttempt, ...] = ()
    verdicts: tuple[Verdict, ...] = ()
    aborted: str | None = None
    degraded_redundancy: str | None = None

    @property
    def drill_seconds(self) -> float | None:
        """From start to finish; None while unfinished."""
        return None if self.finished is None else self.finished - self.started

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON types, timestamps in ISO 8601 UTC, free text scrubbed."""
        analysis = None
        if self.analysis is not None:
            analysis = asdict(self.analysis)
            analysis["acked_writes_lost"] = self.analysis.acked_writes_lost
            analysis["windows"] = [
                {
                    **{k: v for k, v in asdict(w).items() if k not in _MONOTONIC},
                    "start": iso(w.start_wall),
                    "seconds": round(w.seconds, 4),
                }
                for w in self.analysis.windows
            ]
        first_mono = self.bad_attempts[0].sent_mono if self.bad_attempts else 0.0
        body: dict[str, Any] = {
            "record_version": RECORD_VERSION,
            "kind": "failover_drill",
            "run_id": self.run_id,
            "cluster": self.cluster,
            "manager": self.manager,
            "mode": self.mode,
            "engine_version": self.engine_version,
            "started": iso(self.started),
            "finished": iso(self.finished),
            "drill_seconds": None if self.drill_seconds is None else round(self.drill_seconds, 4),
            "probe_target": self.probe_target,
            "pre_state": None
            if self.pre_state is None
            else {**asdict(self.pre_state), "read_at": iso(self.pre_state.read_at)},
            "preflight": [asdict(d) for d in self.preflight],
            "phases": [
                {
                    "name": p.name,
                    "started": iso(p.started),
                    "ended": iso(p.ended),
                    "seconds": round(p.seconds, 4),
                    "ok": p.ok,
                    "detail": p.detail,
                }
                for p in self.phases
            ],
            "server_evidence": dict(self.server_evidence),
            "analysis": analysis,
            "bad_attempts": [
                {
                    "id": a.id,
                    "sent": iso(a.sent_wall),
                    "offset_s": round(a.sent_mono - first_mono, 4),
                    "seconds": round(a.seconds, 4),
                    "outcome": a.outcome,
                    "error_class": a.error_class,
                    "server": a.server,
                }
                for a in self.bad_attempts[:MAX_ATTEMPTS_KEPT]
            ],
            "bad_attempts_left_out": max(0, len(self.bad_attempts) - MAX_ATTEMPTS_KEPT),
            "verdicts": [asdict(v) for v in self.verdicts],
            "verdict": overall(self.verdicts) if self.verdicts else None,
            "aborted": self.aborted,
            "degraded_redundancy": self.degraded_redundancy,
        }
        return _scrubbed(body)

    def to_json(self) -> str:
        """The record as one JSON document (sorted keys, so its hash is stable)."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {str(k): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value]
    return value


__all__ = ["MAX_ATTEMPTS_KEPT", "RECORD_VERSION", "DrillRecord", "Phase", "PreState", "iso", "scrub"]
