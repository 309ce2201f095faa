"""``cloudops probe run``: load the catalogs, plan the targets and run the probe loop until stopped."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType

from cloudops.errors import InvalidInputError
from cloudops.probes.coverage import estate_store, samples_root
from cloudops.probes.runner import STATE_FILE, ProbeRunner
from cloudops.probes.targets import DATABASE_TIMEOUT, HOST_TIMEOUT, plan_targets

log = logging.getLogger(__name__)
# Libraries that log every connection and command: a line per target per minute would bury what matters
# (a target going down or coming back, said once by the runner). Airflow's logging (structlog) takes
# per-logger levels from [logging] namespace_levels, read when Airflow first configures its logging.
QUIET_LOGGERS = {
    "paramiko": "WARNING",
    "airflow.task.hooks.airflow.providers.ssh.hooks.ssh.SSHHook": "WARNING",
    # "Skipping masking for a secret as it's too short", at every connection lookup.
    "airflow.sdk._shared.secrets_masker": "ERROR",
}


def quiet_library_logs() -> None:
    """Quiet the per-connection chatter of the drivers; call before Airflow is first imported."""
    wanted = " ".join(f"{name}={level}" for name, level in QUIET_LOGGERS.items())
    current = os.environ.get("AIRFLOW__LOGGING__NAMESPACE_LEVELS", "")
    os.environ["AIRFLOW__LOGGING__NAMESPACE_LEVELS"] = f"{current} {wanted}".strip()
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def build_runner(
    catalog_paths: Sequence[str] | None,
    *,
    samples: str | Path | None = None,
    interval: timedelta = timedelta(minutes=1),
    database_timeout: timedelta = DATABASE_TIMEOUT,
    host_timeout: timedelta = HOST_TIMEOUT,
    estates: Sequence[str] = (),
) -> ProbeRunner:
    """A runner for every SLO target of the catalogs (of ``estates`` only, when given).

    A catalog file that does not load is logged and left out, as in Airflow; the others are probed.

    :raises InvalidInputError: no catalog loads, an estate that is not there, no SLO target at all.
    """
    from cloudops.catalog import load_catalogs

    loaded = load_catalogs(list(catalog_paths) if catalog_paths else None)
    for error in loaded.errors:
        log.error("catalog left out of probing: %s", error)
    catalogs = [item.catalog for item in loaded.catalogs]
    if estates:
        unknown = sorted(set(estates) - {catalog.estate for catalog in catalogs})
        if unknown:
            known = ", ".join(sorted(catalog.estate for catalog in catalogs)) or "none"
            raise InvalidInputError(f"no estate {', '.join(unknown)} in the catalogs (estates: {known})")
        catalogs = [catalog for catalog in catalogs if catalog.estate in estates]
    if not catalogs:
        raise InvalidInputError("no catalog loaded: nothing to probe")
    targets = plan_targets(
        catalogs, interval=interval, database_timeout=database_timeout, host_timeout=host_timeout
    )
    if not targets:
        raise InvalidInputError("the catalogs define no SLO targets: nothing to probe")
    root = samples_root(samples)
    stores = {catalog.estate: estate_store(catalog.estate, root) for catalog in catalogs}
    return ProbeRunner(targets, stores, interval=interval, state_file=root / STATE_FILE)


def run_forever(runner: ProbeRunner) -> None:
    """Run until SIGTERM or SIGINT, then write the samples taken and return."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: writing the samples taken and stopping", signal.Signals(signum).name)
        runner.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped after %d sample(s) in %d batch(es)", runner.samples_written, runner.batches_written)


__all__ = ["build_runner", "quiet_library_logs", "run_forever"]
