"""The long-running probe process: every target once per interval, concurrently, each within its bound.

How a minute goes (interval 60 s): each target starts at its fixed offset in the minute (spread by
:func:`cloudops.probes.targets.plan_targets`), on a thread of its own, and its sample is the probe's
answer, or "no answer within its bound" once its deadline passes, whichever comes first; the sample's
time is when the probe started, so it always falls in its minute. A target whose previous probe is
still hung past its deadline is not probed again on top of it: its sample says so. When the minute
ends every sample of it is in, and the minute is written to the sample store as one batch (per
estate): a crash or restart loses at most the minute in progress. SIGTERM and SIGINT write the
samples already taken and stop.

Nothing here holds an Airflow worker slot or creates DAG runs; it needs only the connections (as the
workers see them: AIRFLOW_CONN_* variables or a secrets backend) and a directory for the samples.
Connection passwords never reach samples or logs (:func:`cloudops.probes.checks.scrub`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cloudops.errors import CloudOpsError, first_line
from cloudops.probes.checks import Outcome, http_request, probe_database, probe_endpoint, probe_host, scrub
from cloudops.probes.store import ProbeSample, SampleStore
from cloudops.probes.targets import ProbeTarget

log = logging.getLogger(__name__)

STATE_FILE = "probe-state.json"
# Longest single wait of the loop: it wakes at least this often to notice a stop request.
MAX_WAIT = 1.0


@dataclass
class _Job:
    """One probe in flight."""

    target: ProbeTarget
    started_wall: float
    deadline_wall: float
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None
    recorded: bool = False


class _Workers:
    """Daemon threads that run probes; a new one is started whenever none is idle.

    Each target has at most one probe in flight, so there are never more threads than targets. Daemon
    threads, because a probe hung in a driver must never keep the process from stopping.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[_Job, Callable[[], Outcome]] | None] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()
        self.threads = 0

    def submit(self, job: _Job, work: Callable[[], Outcome]) -> None:
        with self._lock:
            if self._idle == 0:
                self.threads += 1
                threading.Thread(target=self._run, name=f"probe-{self.threads}", daemon=True).start()
            else:
                self._idle -= 1
        self._jobs.put((job, work))

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, work = item
            try:
                job.outcome = work()
            except Exception as error:  # a probe bug must cost one sample, never the thread
                job.outcome = Outcome(False, None, scrub(f"probe failed: {type(error).__name__}: {error}"))
            job.done.set()
            with self._lock:
                self._idle += 1


def default_prober() -> str:
    """This process's row key in the databases' probe table: the machine's name."""
    return f"cloudops-probe@{socket.gethostname()}"[:200]


class ProbeRunner:
    """Probe ``targets`` every ``interval`` and write each interval's samples into per-estate stores.

    :param stores: the sample store of each estate the targets belong to.
    :param connection: looks an Airflow connection up by id (``Connection.get``); raising means the
        connection is missing, and the target is not sampled (unknown, not down) until it appears.
    :param state_file: where the process says how it is doing (for ``cloudops sandbox status``).
    """

    def __init__(
        self,
        targets: Sequence[ProbeTarget],
        stores: dict[str, SampleStore],
        *,
        interval: timedelta = timedelta(minutes=1),
        connection: Callable[[str, str], Any] | None = None,
        prober: str | None = None,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        missing = sorted({target.estate for target in targets} - set(stores))
        if missing:
            raise CloudOpsError(f"no sample store for estate(s) {', '.join(missing)}")
        self.targets = list(targets)
        self.stores = stores
        self.interval = interval.total_seconds()
        self.prober = prober or default_prober()
        self.state_file = state_file
        self._clock = clock
        self._connection = connection or _airflow_connection
        self._stop = threading.Event()
        self._workers = _Workers()
        self._in_flight: dict[str, _Job] = {}
        self._taken: list[tuple[str, ProbeSample]] = []
        self._resolved: dict[str, Any] = {}
        self._unresolved: dict[str, str] = {}
        self._last_ok: dict[str, bool] = {}
        self.batches_written = 0
        self.samples_written = 0
        self._compacted_day: str | None = None

    # -- control ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to write what it has and return (safe from a signal handler)."""
        self._stop.set()

    def run(self, *, intervals: int | None = None) -> None:
        """Probe until :meth:`stop` (or for ``intervals`` whole intervals), writing each one as it ends."""
        now = self._clock()
        start = (now // self.interval + 1) * self.interval  # the next whole interval
        log.info(
            "probing %d target(s) every %gs, first interval at %s",
            len(self.targets),
            self.interval,
            datetime.fromtimestamp(start, UTC).isoformat(),
        )
        self.warm_up()
        if self._clock() >= start + self.interval:  # a warm-up slower than a whole interval
            start = (self._clock() // self.interval + 1) * self.interval
        done = 0
        while not self._stop.is_set() and (intervals is None or done < intervals):
            if not self._wait_until(start):
                break
            self._interval(start)
            start += self.interval
            done += 1
            now = self._clock()
            if now >= start + self.interval:
                # Suspended, or the clock jumped: never replay missed minutes in a burst.
                log.warning(
                    "skipping %d interval(s): the process was paused or the clock jumped",
                    int((now - start) // self.interval),
                )
                start = (now // self.interval + 1) * self.interval
        self._collect(final=True)
        self._flush(self._clock())

    def warm_up(self) -> None:
        """Import the drivers and look the connections up before the first interval.

        A first probe would otherwise spend seconds of its bound importing psycopg, pymysql or
        paramiko (under the import lock, on every thread at once) and record a healthy target as down.
        """
        import http.client  # noqa: F401
        import ssl  # noqa: F401

        kinds = {(target.kind, target.engine) for target in self.targets}
        if ("database", "postgres") in kinds:
            import psycopg  # noqa: F401
        if ("database", "mariadb") in kinds:
            import pymysql  # noqa: F401
        if any(kind == "host" for kind, _ in kinds):
            import paramiko  # noqa: F401
            from airflow.providers.ssh.hooks.ssh import SSHHook  # noqa: F401

            from cloudops.patching.apt_host import HealthCheck  # noqa: F401
        self._resolve_connections()

    # -- one interval -------------------------------------------------------------------------------
    def _interval(self, start: float) -> None:
        """Start every target at its offset, record answers and deadlines, then write the batch."""
        end = start + self.interval
        self._resolve_connections()
        pending = sorted(self.targets, key=lambda target: target.offset)
        index = 0
        while not self._stop.is_set():
            now = self._clock()
            while index < len(pending) and start + pending[index].offset <= now:
                self._launch(pending[index], start)
                index += 1
            self._collect(final=False)
            if index >= len(pending) and now >= end:
                break
            wake = [end]
            if index < len(pending):
                wake.append(start + pending[index].offset)
            wake += [job.deadline_wall for job in self._in_flight.values() if not job.recorded]
            if not self._wait_until(min(wake)):
                break
        self._flush(end)

    def _launch(self, target: ProbeTarget, interval_start: float) -> None:
        now = self._clock()
        previous = self._in_flight.get(target.key_in_estate)
        if previous is not None and not previous.done.is_set():
            # Hung past its deadline (recorded then): never stack a second probe on it.
            self._record(target, now, Outcome(False, None, "the previous probe is still hung; not probed"))
            return
        work = self._work(target)
        if work is None:
            return  # its connection is missing: no sample (unknown), said once in the log
        job = _Job(target, started_wall=now, deadline_wall=interval_start + target.deadline)
        self._in_flight[target.key_in_estate] = job
        self._workers.submit(job, work)

    def _work(self, target: ProbeTarget) -> Callable[[], Outcome] | None:
        if target.kind == "host":
            return lambda: probe_host(target)
        if target.conn_id is None:
            resolved = self._resolved.get(target.key_in_estate)
            if resolved is None:
                resolved = self._resolved[target.key_in_estate] = http_request(target, None)
            return lambda: probe_endpoint(target, resolved)
        conn = self._resolved.get(target.key_in_estate)
        if conn is None:
            return None
        if target.kind == "database":
            return lambda: probe_database(target, conn, self.prober)
        return lambda: probe_endpoint(target, conn)

    def _resolve_connections(self) -> None:
        """Look up the connections not resolved yet (once at start; missing ones every interval)."""
        for target in self.targets:
            if target.kind == "host" or target.conn_id is None or target.key_in_estate in self._resolved:
                continue
            try:
                conn = self._connection(target.conn_id, target.used_by)
                self._resolved[target.key_in_estate] = (
                    http_request(target, conn) if target.kind == "endpoint" else conn
                )
            except Exception as error:
                reason = first_line(error)
                if self._unresolved.get(target.key_in_estate) != reason:
                    log.warning("%s is not probed until this is fixed: %s", target.used_by, scrub(reason))
                self._unresolved[target.key_in_estate] = reason
                continue
            if self._unresolved.pop(target.key_in_estate, None) is not None:
                log.info("%s: its connection %r is there now", target.used_by, target.conn_id)

    def _collect(self, *, final: bool) -> None:
        """Record finished probes, and those past their deadline as "no answer"."""
        now = self._clock()
        for job in list(self._in_flight.values()):
            if job.recorded:
                if job.done.is_set():
                    del self._in_flight[job.target.key_in_estate]
                continue
            if job.done.is_set() and job.outcome is not None:
                self._record(job.target, job.started_wall, job.outcome)
                job.recorded = True
                del self._in_flight[job.target.key_in_estate]
            elif now >= job.deadline_wall and not final:
                bound = job.target.timeout.total_seconds()
                self._record(
                    job.target, job.started_wall, Outcome(False, None, f"no answer within {bound:g}s")
                )
                job.recorded = True  # kept in flight until its thread lets go

    def _record(self, target: ProbeTarget, at: float, outcome: Outcome) -> None:
        sample = ProbeSample(
            target.key, datetime.fromtimestamp(at, UTC), outcome.ok, outcome.latency_ms, outcome.detail
        )
        self._taken.append((target.estate, sample))
        before = self._last_ok.get(target.key_in_estate)
        if before is None or before != outcome.ok:
            level = logging.INFO if outcome.ok else logging.WARNING
            log.log(level, "%s is %s: %s", target.used_by, "up" if outcome.ok else "DOWN", outcome.detail)
        self._last_ok[target.key_in_estate] = outcome.ok

    def _flush(self, now: float) -> None:
        """Write the samples taken so far, one batch per estate; then say how the process is doing."""
        taken, self._taken = self._taken, []
        by_estate: dict[str, list[ProbeSample]] = {}
        for estate, sample in taken:
            by_estate.setdefault(estate, []).append(sample)
        for estate, samples in by_estate.items():
            try:
                self.stores[estate].append(samples)
            except Exception as error:  # a full disk must not stop probing; the next minute retries
                log.error("could not write %d sample(s) of estate %r: %s", len(samples), estate, error)
                continue
            self.batches_written += 1
            self.samples_written += len(samples)
        self._compact_after_midnight(now)
        self._write_state(now, taken)

    def _compact_after_midnight(self, now: float) -> None:
        """Once per UTC day, merge the finished days' batch files (on a thread: it may take a second)."""
        today = datetime.fromtimestamp(now, UTC).date().isoformat()
        if self._compacted_day == today:
            return
        self._compacted_day = today

        def compact() -> None:
            for store in self.stores.values():
                try:
                    store.compact_finished(datetime.fromtimestamp(now, UTC))
                except Exception as error:
                    log.error("compacting the samples under %s failed: %s", store.root, error)

        threading.Thread(target=compact, name="probe-compact", daemon=True).start()

    def _write_state(self, now: float, taken: list[tuple[str, ProbeSample]]) -> None:
        if self.state_file is None:
            return
        state = {
            "pid": os.getpid(),
            "at": datetime.fromtimestamp(now, UTC).isoformat(),
            "targets": len(self.targets),
            "interval_seconds": self.interval,
            "last_batch_samples": len(taken),
            "last_batch_bad": sorted({f"{estate}/{s.target}" for estate, s in taken if not s.ok}),
            "not_probed": sorted(self._unresolved),
            "samples_written": self.samples_written,
            "threads": self._workers.threads,
        }
        temporary = self.state_file.with_name(f".{self.state_file.name}.tmp")
        temporary.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(state, indent=1) + "\n")
        temporary.replace(self.state_file)

    def _wait_until(self, moment: float) -> bool:
        """Sleep until ``moment`` (in slices of at most MAX_WAIT); False when asked to stop."""
        while True:
            left = moment - self._clock()
            if left <= 0:
                return not self._stop.is_set()
            if self._stop.wait(min(left, MAX_WAIT)):
                return False


def _airflow_connection(conn_id: str, used_by: str) -> Any:
    from cloudops.connections import get_connection

    return get_connection(conn_id, used_by)


def read_state(path: Path) -> dict[str, Any] | None:
    """What a probe process last said about itself, or None when it has not written yet."""
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


__all__ = ["STATE_FILE", "ProbeRunner", "default_prober", "read_state"]
