"""The CeleryExecutor deployment's topology: which Airflow services run, with which queues, volumes and
settings. The one description both places read:

- ``cloudops.deployment.local`` starts it on this machine against the sandbox (`make up-celery`, and
  the e2e tests), and
- docker-compose.yaml lays it out for Docker; tests/dags/test_docker_compose.py compares that file
  against this description, so the two cannot drift apart.

What differs between them is only *where* things are (a URL's host and port, a volume's path), never
*what* runs: the same services, the same commands and queues, the same settings.

Queues: every worker serves ``default`` (where every runbook task goes unless it says otherwise), and
each has a queue of its own named after it, for a task that must run on that very worker (a step whose
state lives on one host). A task instance's ``hostname`` is the worker's name (``worker-a``): Compose
gives each worker container that hostname; locally, where both share one machine, the hostname
callable :func:`worker_hostname` reads it from ``CLOUDOPS_WORKER_HOSTNAME``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

DEFAULT_QUEUE = "default"
WORKER_HOSTNAME_ENV = "CLOUDOPS_WORKER_HOSTNAME"
HOSTNAME_CALLABLE = "cloudops.deployment.topology.worker_hostname"

# Settings with the same value wherever the deployment runs.
SHARED_SETTINGS: dict[str, str] = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__OPERATORS__DEFAULT_QUEUE": DEFAULT_QUEUE,
    # Many workers, one hash chain: the PostgreSQL ledger (connection cloudops_evidence_db).
    "CLOUDOPS_EVIDENCE_BACKEND": "postgres",
}

# Settings every Airflow service has, whose value says where something is (differs per place).
LOCATION_SETTINGS: dict[str, str] = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "the metadata database (PostgreSQL)",
    "AIRFLOW__CELERY__BROKER_URL": "the Celery broker (Redis)",
    "AIRFLOW__CELERY__RESULT_BACKEND": "Celery's result backend (the metadata database)",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "the api-server's execution API, which tasks call",
    "AIRFLOW__API_AUTH__JWT_SECRET": "signs task and API tokens: one value for every service",
    "AIRFLOW__API__SECRET_KEY": "signs the api-server's log requests: one value for every service",
    "CLOUDOPS_CATALOG": "the runbook catalog folder",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": "the task logs every service shares",
    "CLOUDOPS_EVIDENCE_DIR": "the evidence folder (lost-record reports beside the PostgreSQL ledger)",
    "CLOUDOPS_PROBE_SAMPLES": "the probe samples the monthly report reads",
}

# Volumes every Airflow service shares (name -> the setting that names where it is mounted): Compose
# mounts each named volume there; locally every service gets the same folder.
VOLUMES: dict[str, str] = {
    "airflow-logs": "AIRFLOW__LOGGING__BASE_LOG_FOLDER",  # written by workers, read by the api-server
    "cloudops-evidence": "CLOUDOPS_EVIDENCE_DIR",
    "cloudops-samples": "CLOUDOPS_PROBE_SAMPLES",
}
AIRFLOW_VOLUMES = tuple(VOLUMES)


@dataclass(frozen=True)
class Service:
    """One long-running Airflow service of the deployment.

    :param name: its name here and in `make up-celery`'s pid and log files (``scheduler``).
    :param compose_name: its service name in docker-compose.yaml (``airflow-scheduler``).
    :param argv: the ``airflow`` subcommand it runs, with the arguments that define its role.
    :param queues: the Celery queues a worker serves (empty for other services).
    """

    name: str
    compose_name: str
    argv: tuple[str, ...]
    queues: tuple[str, ...] = ()
    volumes: tuple[str, ...] = AIRFLOW_VOLUMES
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def is_worker(self) -> bool:
        return self.argv[:2] == ("celery", "worker")

    @property
    def celery_hostname(self) -> str | None:
        """The Celery node name (``worker-a@<host>``; Celery expands ``%h``)."""
        return f"{self.name}@%h" if self.is_worker else None

    def command(self) -> list[str]:
        """The full ``airflow ...`` command, as both places run it."""
        argv = ["airflow", *self.argv]
        if self.is_worker:
            argv += ["--queues", ",".join(self.queues), "--celery-hostname", str(self.celery_hostname)]
        return argv


def _worker(name: str) -> Service:
    return Service(
        name=name,
        compose_name=f"airflow-{name}",
        argv=("celery", "worker"),
        queues=(DEFAULT_QUEUE, name),
        settings={WORKER_HOSTNAME_ENV: name, "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE},
    )


SERVICES: tuple[Service, ...] = (
    Service("api-server", "airflow-apiserver", ("api-server",)),
    Service("scheduler", "airflow-scheduler", ("scheduler",)),
    Service("dag-processor", "airflow-dag-processor", ("dag-processor",)),
    Service("triggerer", "airflow-triggerer", ("triggerer",)),
    _worker("worker-a"),
    _worker("worker-b"),
)
WORKERS: tuple[Service, ...] = tuple(s for s in SERVICES if s.is_worker)


def service(name: str) -> Service:
    """The service called ``name`` (here or in compose).

    :raises KeyError: naming the services there are.
    """
    for found in SERVICES:
        if name in (found.name, found.compose_name):
            return found
    raise KeyError(f"no service {name!r} in the deployment: {', '.join(s.name for s in SERVICES)}")


def worker_hostname() -> str:
    """The hostname a task instance records (``[core] hostname_callable`` of the workers): the worker's
    name from ``CLOUDOPS_WORKER_HOSTNAME``, else the machine's FQDN (Airflow's default)."""
    return os.environ.get(WORKER_HOSTNAME_ENV) or socket.getfqdn()


__all__ = [
    "AIRFLOW_VOLUMES",
    "DEFAULT_QUEUE",
    "HOSTNAME_CALLABLE",
    "LOCATION_SETTINGS",
    "SERVICES",
    "SHARED_SETTINGS",
    "VOLUMES",
    "WORKERS",
    "WORKER_HOSTNAME_ENV",
    "Service",
    "service",
    "worker_hostname",
]
