"""Check docker-compose.yaml and the Dockerfile it builds, without a Docker engine.

Each check returns a list of problems, one line each, naming the service (or file) and the key, so a
failure says what to fix. The checks read everything relative to the compose file they are given,
which lets the last test run them on broken copies in tmp_path and prove they catch each mistake.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import pytest
import yaml

from cloudops.deployment.topology import LOCATION_SETTINGS, SERVICES, SHARED_SETTINGS, VOLUMES, WORKERS
from cloudops.deployment.topology import service as topology_service

pytestmark = pytest.mark.dags

REPO_ROOT = Path(__file__).resolve().parents[2]

# The Airflow services are the topology's (cloudops.deployment.topology): the local launcher of
# `make up-celery` reads the same description, so compose and the local deployment agree.
API_SERVER = topology_service("api-server").compose_name
SCHEDULER = topology_service("scheduler").compose_name
DAG_PROCESSOR = topology_service("dag-processor").compose_name
TRIGGERER = topology_service("triggerer").compose_name
WORKER_SERVICES = [worker.compose_name for worker in WORKERS]
WORKER = WORKER_SERVICES[0]
INIT = "airflow-init"
POSTGRES = "postgres"
REDIS = "redis"
PROBES = "cloudops-probes"

# The long-running Airflow services: the airflow subcommand each runs, and what its healthcheck
# must probe (any one of the fragments).
HEALTH_PROBES: dict[str, tuple[str, ...]] = {
    "api-server": ("localhost:8080/api/v2/",),
    "scheduler": ("localhost:8974/health", "--job-type SchedulerJob"),
    "dag-processor": ("--job-type DagProcessorJob",),
    "triggerer": ("--job-type TriggererJob",),
    "worker": ("inspect ping",),
}
AIRFLOW_DAEMONS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    s.compose_name: (list(s.argv), HEALTH_PROBES["worker" if s.is_worker else s.name]) for s in SERVICES
}
AIRFLOW_SERVICES = [*AIRFLOW_DAEMONS, INIT]
EXPECTED_SERVICES = [*AIRFLOW_SERVICES, POSTGRES, REDIS, PROBES]
# The probe process (docs/probes.md) writes the samples volume; the monthly report reads it in a worker.
SAMPLES_VOLUME = "cloudops-samples"
SAMPLES_READERS = [*WORKER_SERVICES, API_SERVER]
PROBE_COMMAND = ["python", "-m", "cloudops.cli", "probe", "run"]

# Every long-running Airflow service reads or writes the evidence ledger: the listener records in
# the scheduler, the workers (and wherever a hook fires), and the api-server serves the auditor view.
EVIDENCE_READERS = list(AIRFLOW_DAEMONS)
EVIDENCE_VOLUME = "cloudops-evidence"
# Physical drills run the server binaries of the backup's PostgreSQL major (physical_plan.py).
PG_BINDIR = "/usr/lib/postgresql/{major}/bin"
PG_DRILL_BINARIES = ("postgres", "pg_verifybackup", "pg_waldump")
MIN_PG_MAJOR = 15
API_SERVER_PORT = 8080
CATALOG_IN_CONTAINER = "/opt/airflow/runbooks"
REPO_MOUNTS = {f"./{name}": f"/opt/airflow/{name}" for name in ("dags", "plugins", "runbooks", "include")}
CONNECTIONS_ENV_FILE = ".sandbox/airflow.env"
RESTART_POLICIES = {"always", "unless-stopped", "on-failure"}

# Literal defaults a secret may have: only the local metadata database's dev password.
ALLOWED_SECRET_DEFAULTS = {("POSTGRES_PASSWORD", "airflow")}
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|CREDENTIAL|PRIVATE|FERNET|_KEY$|^KEY$")
# Keys that name where a secret is, or how to get it, rather than holding one.
SECRET_LOCATION_SUFFIXES = ("_FILE", "_PATH", "_DIR", "_CMD")
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^{}]*))?\}")
PLACEHOLDER = "<interpolated>"
URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:(?P<password>[^@/\s]*)@")
RANDOM_LOOKING = re.compile(r"[A-Za-z0-9+/_=-]{24,}")
AIRFLOW_IMAGE = re.compile(
    r"^(?:docker\.io/)?apache/airflow:(?:slim-)?(?P<version>\d+\.\d+\.\d+)(?:-python\d+\.\d+)?$"
)
LOCKED_AIRFLOW = re.compile(r"^apache-airflow==(?P<version>[^\s;#]+)", re.MULTILINE)


@dataclass(frozen=True)
class ComposeFile:
    """A parsed compose file and the directory its relative paths start from."""

    path: Path
    data: dict[str, Any]

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return self.data.get("services") or {}


def load_compose(path: Path) -> ComposeFile:
    """Parse a compose file; safe_load resolves the `<<` merge keys of the x- anchors."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name}: the top level is {type(data).__name__}, not a mapping"
    assert isinstance(data.get("services"), dict), f"{path.name}: services: missing or not a mapping"
    return ComposeFile(path=path, data=data)


# --- Compose value helpers ---------------------------------------------------------------------


def resolve_defaults(value: str) -> str:
    """Interpolate as compose would with no variable set: `${X:-d}` gives d, anything else ''."""
    value = value.replace("$$", "\0")
    previous = None
    while previous != value:
        previous = value
        value = INTERPOLATION.sub(
            lambda m: m["arg"] if m["op"] in ("-", ":-") and m["arg"] is not None else "", value
        )
    return value.replace("\0", "$")


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """Return a service's environment as a mapping, whether it is written as a list or a mapping."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {pair[0]: pair[1] if len(pair) == 2 else None for pair in pairs}
    return {key: None if value is None else str(value) for key, value in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    """Return a service's command as argv, without a leading `airflow` (the image's entrypoint adds it)."""
    raw = service.get("command") or []
    argv = shlex.split(raw) if isinstance(raw, str) else [str(arg) for arg in raw]
    return argv[1:] if argv[:1] == ["airflow"] else argv


def healthcheck_test(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test") or []
    return test if isinstance(test, str) else " ".join(str(part) for part in test)


@dataclass(frozen=True)
class Mount:
    source: str | None
    target: str
    bind: bool
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    """Parse a service's volumes, short or long syntax."""
    parsed = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source = volume.get("source")
            parsed.append(
                Mount(
                    source=source,
                    target=volume["target"],
                    bind=volume.get("type") == "bind",
                    read_only=bool(volume.get("read_only")),
                )
            )
            continue
        parts = volume.split(":")
        if len(parts) == 1:  # an anonymous volume
            parsed.append(Mount(source=None, target=parts[0], bind=False, read_only=False))
            continue
        source, target, *options = parts
        is_path = resolve_defaults(source).startswith((".", "/", "~"))
        parsed.append(Mount(source=source, target=target, bind=is_path, read_only="ro" in options))
    return parsed


def env_files(service: dict[str, Any]) -> dict[str, bool]:
    """Return each env_file path of a service and whether compose requires it to exist."""
    raw = service.get("env_file") or []
    entries = [raw] if isinstance(raw, str | dict) else raw
    files = {}
    for entry in entries:
        if isinstance(entry, str):
            files[entry] = True
        else:
            files[entry["path"]] = bool(entry.get("required", True))
    return files


def url_of(value: str | None) -> SplitResult:
    return urlsplit(resolve_defaults(value or ""))


def dockerfiles(compose: ComposeFile) -> dict[str, Path]:
    """Return the Dockerfile each service with a `build` section builds from."""
    found = {}
    for name, service in compose.services.items():
        build = service.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = compose.root / resolve_defaults(build.get("context", "."))
        found[name] = context / resolve_defaults(build.get("dockerfile", "Dockerfile"))
    return found


def final_base_image(dockerfile: Path) -> str | None:
    """Return the base image of a Dockerfile's last stage, with ARG defaults substituted."""
    args: dict[str, str] = {}
    stages: dict[str, str] = {}
    image = None
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "ARG" and image is None and len(words) > 1 and "=" in words[1]:
            key, default = words[1].split("=", 1)
            args[key] = default.strip("\"'")
        elif instruction == "FROM":
            operands = [word for word in words[1:] if not word.startswith("--")]
            image = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m[1], ""), operands[0])
            image = stages.get(image, image)
            if len(operands) == 3 and operands[1].upper() == "AS":
                stages[operands[2]] = image
    return image


def locked_airflow_version(compose: ComposeFile) -> str | None:
    match = LOCKED_AIRFLOW.search((compose.root / "requirements.lock").read_text())
    return match["version"] if match else None


# --- Checks --------------------------------------------------------------------------------------


def check_services(compose: ComposeFile) -> list[str]:
    return [f"{name}: service missing" for name in EXPECTED_SERVICES if name not in compose.services]


def check_commands(compose: ComposeFile) -> list[str]:
    problems = []
    for name, (expected, _) in AIRFLOW_DAEMONS.items():
        argv = command(compose.services.get(name, {}))
        if argv[: len(expected)] != expected:
            problems.append(f"{name}: command is {argv!r}, expected `airflow {' '.join(expected)}`")
    init_script = " ".join(command(compose.services.get(INIT, {})))
    if "airflow db migrate" not in init_script:
        problems.append(f"{INIT}: command does not run `airflow db migrate`")
    return problems


def check_healthchecks(compose: ComposeFile) -> list[str]:
    problems = []
    for name in [*AIRFLOW_DAEMONS, POSTGRES, REDIS]:
        service = compose.services.get(name, {})
        test = healthcheck_test(service)
        if not test or test.split()[0] == "NONE" or (service.get("healthcheck") or {}).get("disable"):
            problems.append(f"{name}: healthcheck.test missing or disabled")
            continue
        fragments = AIRFLOW_DAEMONS[name][1] if name in AIRFLOW_DAEMONS else ()
        if fragments and not any(fragment in test for fragment in fragments):
            problems.append(f"{name}: healthcheck.test {test!r} probes none of {fragments!r}")
    return problems


def check_shared_environment(compose: ComposeFile) -> list[str]:
    problems = []
    for name in AIRFLOW_SERVICES:
        env = environment(compose.services.get(name, {}))
        db = url_of(env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"))
        broker = url_of(env.get("AIRFLOW__CELERY__BROKER_URL"))
        backend = url_of(env.get("AIRFLOW__CELERY__RESULT_BACKEND"))
        execution = url_of(env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL"))
        expectations = {
            "AIRFLOW__CORE__EXECUTOR": (
                env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor",
                "expected CeleryExecutor",
            ),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                db.scheme.startswith("postgresql") and db.hostname == POSTGRES,
                f"expected a postgresql URL on the {POSTGRES} service",
            ),
            "AIRFLOW__CELERY__BROKER_URL": (
                broker.scheme == "redis" and broker.hostname == REDIS,
                f"expected a redis URL on the {REDIS} service",
            ),
            "AIRFLOW__CELERY__RESULT_BACKEND": (
                backend.hostname == POSTGRES,
                f"expected the {POSTGRES} service",
            ),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": (
                (execution.hostname, execution.port, execution.path)
                == (API_SERVER, API_SERVER_PORT, "/execution/"),
                f"expected http://{API_SERVER}:{API_SERVER_PORT}/execution/",
            ),
            "AIRFLOW__API_AUTH__JWT_SECRET": (
                bool(env.get("AIRFLOW__API_AUTH__JWT_SECRET")),
                "every component must sign and check task tokens with the same secret",
            ),
            "AIRFLOW__CORE__LOAD_EXAMPLES": (
                str(env.get("AIRFLOW__CORE__LOAD_EXAMPLES")).lower() in ("false", "0"),
                "expected False",
            ),
            "CLOUDOPS_CATALOG": (
                env.get("CLOUDOPS_CATALOG") == CATALOG_IN_CONTAINER,
                f"expected {CATALOG_IN_CONTAINER}",
            ),
        }
        problems += [
            f"{name}: environment.{key} is {env.get(key)!r}: {why}"
            for key, (ok, why) in expectations.items()
            if not ok
        ]
        if env_files(compose.services.get(name, {})).get(CONNECTIONS_ENV_FILE) is not False:
            problems.append(
                f"{name}: env_file must list {CONNECTIONS_ENV_FILE} with required: false "
                "(it is written by `cloudops sandbox up` and absent from a fresh clone)"
            )
    return problems


def check_dependencies_and_restart(compose: ComposeFile) -> list[str]:
    problems = []
    wanted = {
        POSTGRES: "service_healthy",
        REDIS: "service_healthy",
        INIT: "service_completed_successfully",
    }
    for name in AIRFLOW_DAEMONS:
        service = compose.services.get(name, {})
        depends_on = service.get("depends_on") or {}
        for dependency, condition in wanted.items():
            actual = (
                (depends_on.get(dependency) or {}).get("condition") if isinstance(depends_on, dict) else None
            )
            if actual != condition:
                problems.append(
                    f"{name}: depends_on.{dependency}.condition is {actual!r}, expected {condition}"
                )
    init_depends = compose.services.get(INIT, {}).get("depends_on") or {}
    if not isinstance(init_depends, dict) or (init_depends.get(POSTGRES) or {}).get("condition") != (
        "service_healthy"
    ):
        problems.append(f"{INIT}: depends_on.{POSTGRES}.condition must be service_healthy")
    if INIT in init_depends:
        problems.append(f"{INIT}: depends_on.{INIT}: the init service waits for itself")
    for name in [*AIRFLOW_DAEMONS, POSTGRES, REDIS]:
        restart = str(compose.services.get(name, {}).get("restart", "no"))
        if restart.split(":")[0] not in RESTART_POLICIES:
            problems.append(f"{name}: restart is {restart!r}, expected one of {sorted(RESTART_POLICIES)}")
    return problems


def check_mounts(compose: ComposeFile) -> list[str]:
    problems = []
    declared_volumes = compose.data.get("volumes") or {}
    for name, service in compose.services.items():
        for mount in mounts(service):
            if mount.bind:
                host_path = (compose.root / resolve_defaults(mount.source or "")).resolve()
                if not host_path.exists():
                    problems.append(
                        f"{name}: volumes: {mount.source}:{mount.target}: {host_path} does not exist"
                    )
            elif mount.source is not None and mount.source not in declared_volumes:
                problems.append(f"{name}: volumes: named volume {mount.source!r} is not declared")
    for name in AIRFLOW_DAEMONS:
        binds = {m.source: m.target for m in mounts(compose.services.get(name, {})) if m.bind}
        for source, target in REPO_MOUNTS.items():
            if binds.get(source) != target:
                problems.append(f"{name}: volumes: expected {source}:{target}, found {binds.get(source)!r}")
    return problems


def check_evidence_mounts(compose: ComposeFile) -> list[str]:
    """Every service that reads the ledger mounts the one evidence volume where CLOUDOPS_EVIDENCE_DIR
    points (a service with its own volumes: list loses the common one)."""
    problems = []
    for name in EVIDENCE_READERS:
        service = compose.services.get(name, {})
        directory = environment(service).get("CLOUDOPS_EVIDENCE_DIR")
        if not directory:
            problems.append(f"{name}: environment.CLOUDOPS_EVIDENCE_DIR is not set")
            continue
        found = [m for m in mounts(service) if m.target == directory]
        if not found:
            problems.append(
                f"{name}: volumes: nothing mounted at {directory} (CLOUDOPS_EVIDENCE_DIR): it would read and "
                f"write a ledger of its own, inside the container; mount {EVIDENCE_VOLUME}:{directory}"
            )
        elif found[0].bind or found[0].source != EVIDENCE_VOLUME or found[0].read_only:
            problems.append(
                f"{name}: volumes: {found[0].source}:{directory} is not the shared, writable "
                f"{EVIDENCE_VOLUME} volume"
            )
    return problems


def check_probe_service(compose: ComposeFile) -> list[str]:
    """One probe process: `cloudops probe run` with the workers' connections, writing the samples volume
    the report reads; restarted when it dies, and unhealthy when its minutes stop coming."""
    service = compose.services.get(PROBES)
    if service is None:
        return []  # check_services says it
    problems = []
    if command(service) != PROBE_COMMAND:
        problems.append(f"{PROBES}: command is {command(service)}, expected {PROBE_COMMAND}")
    if "probe status" not in healthcheck_test(service):
        problems.append(
            f"{PROBES}: healthcheck must run `cloudops probe status` (its last minute must be recent)"
        )
    if service.get("restart") not in RESTART_POLICIES:
        problems.append(
            f"{PROBES}: restart is {service.get('restart')!r}: a dead probe loses every minute after"
        )
    replicas = (service.get("deploy") or {}).get("replicas", 1)
    if replicas != 1:
        problems.append(f"{PROBES}: deploy.replicas is {replicas}: run exactly one probe process")
    if CONNECTIONS_ENV_FILE not in env_files(service):
        problems.append(f"{PROBES}: env_file: {CONNECTIONS_ENV_FILE} missing: it would have no connections")
    worker_env = environment(compose.services.get(WORKER, {}))
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY"):
        if environment(service).get(key) != worker_env.get(key):
            problems.append(
                f"{PROBES}: environment.{key} differs from {WORKER}'s: connections must resolve alike"
            )
    for name in [PROBES, *SAMPLES_READERS]:
        other = compose.services.get(name, {})
        directory = environment(other).get("CLOUDOPS_PROBE_SAMPLES")
        if not directory:
            problems.append(f"{name}: environment.CLOUDOPS_PROBE_SAMPLES is not set")
            continue
        found = [m for m in mounts(other) if m.target == directory]
        if not found or found[0].bind or found[0].source != SAMPLES_VOLUME:
            problems.append(f"{name}: volumes: {SAMPLES_VOLUME}:{directory} missing (CLOUDOPS_PROBE_SAMPLES)")
        elif name == PROBES and found[0].read_only:
            problems.append(f"{name}: volumes: {SAMPLES_VOLUME} is read-only: it writes the samples")
    return problems


def _arg_default(dockerfile: Path, name: str) -> str | None:
    match = re.search(
        rf'^ARG {name}=(?P<q>"?)(?P<value>[^"\n]*)(?P=q)\s*$', dockerfile.read_text(), re.MULTILINE
    )
    return match["value"] if match else None


def check_postgres_for_drills(compose: ComposeFile) -> list[str]:
    """The image has the PostgreSQL server binaries physical drills run, and says its version bound."""
    problems = []
    for name, dockerfile in dockerfiles(compose).items():
        if name != WORKER or not dockerfile.is_file():
            continue
        text = dockerfile.read_text()
        majors = (_arg_default(dockerfile, "PG_MAJORS") or "").split()
        if not majors or not all(major.isdigit() for major in majors):
            problems.append(
                f"{name}: build: {dockerfile.name}: no ARG PG_MAJORS default (the majors installed)"
            )
            continue
        if str(MIN_PG_MAJOR) not in majors or min(int(m) for m in majors) < MIN_PG_MAJOR:
            problems.append(
                f"{name}: build: {dockerfile.name}: PG_MAJORS {majors} must start at {MIN_PG_MAJOR}"
            )
        if '"postgresql-${major}"' not in text:
            problems.append(
                f"{name}: build: {dockerfile.name}: the postgresql-<major> server packages are not installed"
            )
        bindir = PG_BINDIR.format(major="${major}")
        for binary in PG_DRILL_BINARIES:
            if binary not in text or bindir not in text:
                problems.append(
                    f"{name}: build: {dockerfile.name}: {bindir}/{binary} is not checked after install"
                )
        if "create_main_cluster = false" not in text:
            problems.append(
                f"{name}: build: {dockerfile.name}: the server packages would create a main cluster"
            )
        if "Version bound" not in text:
            problems.append(
                f"{name}: build: {dockerfile.name}: the supported PostgreSQL versions are not documented"
            )
    return problems


def check_build(compose: ComposeFile) -> list[str]:
    problems = []
    built = dockerfiles(compose)
    for name in AIRFLOW_SERVICES:
        if name not in built:
            problems.append(f"{name}: build: missing, the service would run an image without cloudops")
    for name, dockerfile in built.items():
        if not dockerfile.is_file():
            problems.append(f"{name}: build: {dockerfile} does not exist")
            continue
        image = final_base_image(dockerfile)
        match = AIRFLOW_IMAGE.match(image or "")
        if not match or not match["version"].startswith("3.3."):
            problems.append(f"{name}: build: {dockerfile.name}: FROM {image!r} is not apache/airflow:3.3.x")
    return problems


def check_airflow_version(compose: ComposeFile) -> list[str]:
    locked = locked_airflow_version(compose)
    if locked is None:
        return ["requirements.lock: no apache-airflow== pin"]
    problems = []
    for name, dockerfile in dockerfiles(compose).items():
        if dockerfile.is_file():
            match = AIRFLOW_IMAGE.match(final_base_image(dockerfile) or "")
            if match and match["version"] != locked:
                problems.append(
                    f"{name}: build: {dockerfile.name}: FROM apache/airflow:{match['version']}, "
                    f"but requirements.lock pins apache-airflow=={locked}"
                )
    for name, service in compose.services.items():
        match = AIRFLOW_IMAGE.match(resolve_defaults(str(service.get("image", ""))))
        if match and match["version"] != locked:
            problems.append(
                f"{name}: image is apache/airflow:{match['version']}, "
                f"but requirements.lock pins apache-airflow=={locked}"
            )
    return problems


def literal_secret_problems(where: str, value: str, *, secret_key: bool) -> list[str]:
    """Name what in `value` looks like a secret written into the file."""
    problems = []
    value = value.replace("$$", "")
    for match in INTERPOLATION.finditer(value):
        default = match["arg"] if match["op"] in ("-", ":-", "+", ":+") else ""
        if not default:
            continue
        if (secret_key or SECRET_NAME.search(match["name"])) and (
            match["name"],
            default,
        ) not in ALLOWED_SECRET_DEFAULTS:
            problems.append(f"{where}: ${{{match['name']}}} has the literal default {default!r}")
        problems += literal_secret_problems(
            f"{where} (default of ${{{match['name']}}})", default, secret_key=False
        )
    literal = INTERPOLATION.sub(PLACEHOLDER, value)
    if secret_key and literal.replace(PLACEHOLDER, "").strip():
        problems.append(f"{where}: is a literal; take it from the environment with ${{...}}")
    for match in URL_PASSWORD.finditer(literal):
        if match["password"] not in ("", PLACEHOLDER):
            problems.append(f"{where}: a URL carries the literal password {match['password']!r}")
    for token in RANDOM_LOOKING.findall(literal.replace(PLACEHOLDER, " ")):
        if re.search(r"\d", token) and re.search(r"[A-Za-z]", token):
            problems.append(f"{where}: {token[:6]}... looks like a key or token")
    return problems


def check_no_literal_secrets(compose: ComposeFile) -> list[str]:
    problems = []
    for name, service in compose.services.items():
        for key, value in environment(service).items():
            if value is None:  # passed through from the caller's environment
                continue
            secret_key = bool(SECRET_NAME.search(key)) and not key.endswith(SECRET_LOCATION_SUFFIXES)
            problems += literal_secret_problems(f"{name}: environment.{key}", value, secret_key=secret_key)
    return problems


def check_topology(compose: ComposeFile) -> list[str]:
    """Compose runs the topology's services (cloudops.deployment.topology), as the local deployment
    does: the same commands and queues, shared settings and volumes, and each worker's hostname."""
    problems = []
    for spec in SERVICES:
        service = compose.services.get(spec.compose_name)
        if service is None:
            continue  # check_services says it
        name = spec.compose_name
        raw = service.get("command") or []
        argv = shlex.split(raw) if isinstance(raw, str) else [str(arg) for arg in raw]
        if argv != spec.command():
            problems.append(f"{name}: command is {argv!r}, the topology runs {spec.command()!r}")
        env = environment(service)
        for key, value in {**SHARED_SETTINGS, **spec.settings}.items():
            if env.get(key) != value:
                problems.append(f"{name}: environment.{key} is {env.get(key)!r}, the topology says {value!r}")
        for key, what in LOCATION_SETTINGS.items():
            if not env.get(key):
                problems.append(f"{name}: environment.{key} is not set ({what})")
        by_target = {m.target: m for m in mounts(service)}
        for volume, key in VOLUMES.items():
            found = by_target.get(env.get(key) or "")
            if found is None or found.bind or found.source != volume:
                problems.append(f"{name}: volumes: {volume} is not mounted at {key} ({env.get(key)!r})")
        if spec.is_worker and service.get("hostname") != spec.name:
            problems.append(
                f"{name}: hostname is {service.get('hostname')!r}, expected {spec.name!r} (what task "
                "instances record as their hostname)"
            )
    known = {spec.compose_name for spec in SERVICES}
    for name, service in compose.services.items():
        if command(service)[:2] == ["celery", "worker"] and name not in known:
            problems.append(
                f"{name}: a Celery worker the topology does not list: add it to "
                "cloudops/deployment/topology.py (the local deployment runs the same workers)"
            )
    return problems


ALL_CHECKS: list[Callable[[ComposeFile], list[str]]] = [
    check_topology,
    check_services,
    check_commands,
    check_healthchecks,
    check_shared_environment,
    check_dependencies_and_restart,
    check_mounts,
    check_evidence_mounts,
    check_probe_service,
    check_build,
    check_postgres_for_drills,
    check_airflow_version,
    check_no_literal_secrets,
]


# --- Tests on the repository's file ------------------------------------------------------------


@pytest.fixture
def compose_path() -> Path:
    return REPO_ROOT / "docker-compose.yaml"


@pytest.fixture
def compose(compose_path: Path) -> ComposeFile:
    return load_compose(compose_path)


def test_compose_file_parses(compose: ComposeFile) -> None:
    assert compose.services, f"{compose.path.name}: services: empty"


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_compose_file(compose: ComposeFile, check: Callable[[ComposeFile], list[str]]) -> None:
    problems = check(compose)
    assert not problems, "\n".join(problems)


def test_locked_airflow_is_3_3(compose: ComposeFile) -> None:
    locked = locked_airflow_version(compose)
    assert locked is not None, "requirements.lock: no apache-airflow== pin"
    assert locked.startswith("3.3."), f"requirements.lock: apache-airflow=={locked}, expected 3.3.x"


# --- The checks catch a broken copy -------------------------------------------------------------


def _env(service: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda data: data["services"][service]["environment"]


def _set_env(service: str, key: str, value: str) -> Callable[[dict[str, Any], Path], None]:
    return lambda data, root: _env(service)(data).__setitem__(key, value)


def _rewrite(file: str, old: str, new: str) -> Callable[[dict[str, Any], Path], None]:
    def rewrite(data: dict[str, Any], root: Path) -> None:
        path = root / file
        text = path.read_text()
        assert old in text, f"{file}: {old!r} not found; the breakage no longer applies"
        path.write_text(text.replace(old, new))

    return rewrite


BREAKAGES: dict[str, tuple[Callable[[dict[str, Any], Path], None], list[str]]] = {
    "executor": (
        _set_env(WORKER, "AIRFLOW__CORE__EXECUTOR", "LocalExecutor"),
        [WORKER, "AIRFLOW__CORE__EXECUTOR"],
    ),
    "database-elsewhere": (
        _set_env(SCHEDULER, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite:////tmp/airflow.db"),
        [SCHEDULER, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
    ),
    "broker-elsewhere": (
        _set_env(WORKER, "AIRFLOW__CELERY__BROKER_URL", "redis://localhost:6379/0"),
        [WORKER, "AIRFLOW__CELERY__BROKER_URL"],
    ),
    "missing-service": (lambda data, root: data["services"].pop(REDIS), [REDIS, "service missing"]),
    "wrong-command": (
        lambda data, root: data["services"][TRIGGERER].__setitem__("command", ["airflow", "scheduler"]),
        [TRIGGERER, "command"],
    ),
    "no-healthcheck": (
        lambda data, root: data["services"][SCHEDULER].pop("healthcheck"),
        [SCHEDULER, "healthcheck"],
    ),
    "no-restart": (
        lambda data, root: data["services"][DAG_PROCESSOR].pop("restart"),
        [DAG_PROCESSOR, "restart"],
    ),
    "missing-mount-source": (
        lambda data, root: data["services"][API_SERVER]["volumes"].append("./missing:/opt/airflow/missing"),
        [API_SERVER, "volumes", "./missing"],
    ),
    "env-file-required": (
        lambda data, root: data["services"][WORKER].__setitem__("env_file", [CONNECTIONS_ENV_FILE]),
        [WORKER, "env_file"],
    ),
    "literal-jwt-secret": (
        _set_env(SCHEDULER, "AIRFLOW__API_AUTH__JWT_SECRET", "not-so-secret"),
        [SCHEDULER, "AIRFLOW__API_AUTH__JWT_SECRET", "literal"],
    ),
    "secret-with-default": (
        _set_env(TRIGGERER, "AIRFLOW__API_AUTH__JWT_SECRET", "${AIRFLOW__API_AUTH__JWT_SECRET:-changeme}"),
        [TRIGGERER, "AIRFLOW__API_AUTH__JWT_SECRET", "changeme"],
    ),
    "password-in-url": (
        _set_env(
            API_SERVER,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "postgresql+psycopg2://airflow:hunter2@postgres/airflow",
        ),
        [API_SERVER, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "hunter2"],
    ),
    "key-in-unnamed-variable": (
        _set_env(WORKER, "EXTRA_SETTING", "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg=="),
        [WORKER, "EXTRA_SETTING", "looks like a key"],
    ),
    "airflow-2-base-image": (
        _rewrite("Dockerfile", "apache/airflow:3.3.2-python3.11", "apache/airflow:2.10.5-python3.11"),
        [API_SERVER, "build", "Dockerfile", "FROM"],
    ),
    "api-server-without-evidence": (
        lambda data, root: data["services"][API_SERVER].__setitem__(
            "volumes",
            [v for v in data["services"][API_SERVER]["volumes"] if not v.startswith(f"{EVIDENCE_VOLUME}:")],
        ),
        [API_SERVER, "nothing mounted at /opt/airflow/evidence"],
    ),
    "worker-evidence-on-a-bind-mount": (
        lambda data, root: data["services"][WORKER].__setitem__(
            "volumes",
            [
                "./dags:/opt/airflow/evidence" if v.startswith(f"{EVIDENCE_VOLUME}:") else v
                for v in data["services"][WORKER]["volumes"]
            ],
        ),
        [WORKER, "is not the shared, writable"],
    ),
    "no-postgres-server": (
        _rewrite("Dockerfile", '"postgresql-${major}"', '"postgresql-client-${major}"'),
        [WORKER, "server packages are not installed"],
    ),
    "postgres-14-only": (
        _rewrite("Dockerfile", 'ARG PG_MAJORS="15 16 17"', 'ARG PG_MAJORS="14"'),
        [WORKER, "PG_MAJORS", "must start at 15"],
    ),
    "no-probe-service": (lambda data, root: data["services"].pop(PROBES), [PROBES, "service missing"]),
    "probe-runs-airflow": (
        lambda data, root: data["services"][PROBES].__setitem__("command", ["airflow", "scheduler"]),
        [PROBES, "command"],
    ),
    "probe-without-samples-volume": (
        lambda data, root: data["services"][PROBES].__setitem__(
            "volumes",
            [v for v in data["services"][PROBES]["volumes"] if not v.startswith(f"{SAMPLES_VOLUME}:")],
        ),
        [PROBES, "cloudops-samples", "missing"],
    ),
    "two-probe-processes": (
        lambda data, root: data["services"][PROBES].__setitem__("deploy", {"replicas": 2}),
        [PROBES, "deploy.replicas"],
    ),
    "probe-without-connections": (
        lambda data, root: data["services"][PROBES].pop("env_file"),
        [PROBES, "env_file"],
    ),
    "worker-without-default-queue": (
        lambda data, root: data["services"][WORKER_SERVICES[1]].__setitem__(
            "command",
            ["airflow", "celery", "worker", "--queues", "worker-b", "--celery-hostname", "worker-b@%h"],
        ),
        [WORKER_SERVICES[1], "command", "the topology runs"],
    ),
    "evidence-on-files": (
        _set_env(SCHEDULER, "CLOUDOPS_EVIDENCE_BACKEND", "file"),
        [SCHEDULER, "CLOUDOPS_EVIDENCE_BACKEND"],
    ),
    "worker-not-in-topology": (
        lambda data, root: data["services"].__setitem__(
            "airflow-worker-c", json.loads(json.dumps(data["services"][WORKER_SERVICES[1]]))
        ),
        ["airflow-worker-c", "topology does not list"],
    ),
    "worker-hostname": (
        lambda data, root: data["services"][WORKER].__setitem__("hostname", "some-container"),
        [WORKER, "hostname", "some-container"],
    ),
    "logs-not-shared": (
        lambda data, root: data["services"][TRIGGERER].__setitem__(
            "volumes",
            [v for v in data["services"][TRIGGERER]["volumes"] if not v.startswith("airflow-logs:")],
        ),
        [TRIGGERER, "airflow-logs is not mounted"],
    ),
    "lock-disagrees": (
        _rewrite("requirements.lock", "apache-airflow==3.3.2\n", "apache-airflow==3.3.1\n"),
        [WORKER, "build", "requirements.lock", "apache-airflow==3.3.1"],
    ),
}


@pytest.fixture
def compose_copy(compose_path: Path, tmp_path: Path) -> Path:
    """Lay out a copy of the compose file, with the files and directories it refers to, in tmp_path."""
    for name in ("Dockerfile", "requirements.lock"):
        shutil.copy(compose_path.parent / name, tmp_path / name)
    for source in REPO_MOUNTS:
        (tmp_path / source).mkdir()
    # A plain JSON round trip drops the anchors, so a breakage changes one service only.
    data = json.loads(json.dumps(yaml.safe_load(compose_path.read_text())))
    copy = tmp_path / "docker-compose.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    return copy


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_checks_catch_a_broken_copy(compose_copy: Path, breakage: str) -> None:
    intact = load_compose(compose_copy)
    assert not [problem for check in ALL_CHECKS for problem in check(intact)], (
        "the intact copy must pass, or this test proves nothing"
    )
    break_it, expected = BREAKAGES[breakage]
    data = yaml.safe_load(compose_copy.read_text())
    break_it(data, compose_copy.parent)
    compose_copy.write_text(yaml.safe_dump(data, sort_keys=False))

    problems = [problem for check in ALL_CHECKS for problem in check(load_compose(compose_copy))]

    assert any(all(fragment in problem for fragment in expected) for problem in problems), (
        f"{breakage}: no problem names all of {expected!r}; found {problems!r}"
    )


# --- The local deployment (make up-celery) runs the same topology ------------------------------------


def test_local_deployment_runs_the_topology(tmp_path: Path) -> None:
    """What `cloudops deployment up` would start, read without starting it: the topology's commands,
    its shared settings, one folder per shared volume for every service, and each worker's hostname."""
    from cloudops.deployment.local import LocalDeployment
    from cloudops.sandbox.layout import SandboxLayout

    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "airflow.env").write_text(f"CLOUDOPS_PROBE_SAMPLES='{sandbox / 'samples'}'\n")
    layout = SandboxLayout(
        project_root=REPO_ROOT,
        dir=sandbox,
        data_root=sandbox,
        data_root_is_fallback=False,
        port_offset=0,
        pg_bindir=Path("/usr/lib/postgresql/15/bin"),
        mariadbd=Path("/usr/sbin/mariadbd"),
        mariadb_install_db=Path("/usr/bin/mariadb-install-db"),
        as_root=False,
    )
    deployment = LocalDeployment(layout)
    base = deployment.environment()
    folders: dict[str, set[str]] = {volume: set() for volume in VOLUMES}
    for spec in SERVICES:
        argv = deployment.argv(spec)
        assert argv[: len(spec.command())] == spec.command(), spec.name
        env = deployment.service_environment(spec, base)
        for key, value in {**SHARED_SETTINGS, **spec.settings}.items():
            assert env.get(key) == value, f"{spec.name}: {key}"
        assert not [key for key in LOCATION_SETTINGS if not env.get(key)], spec.name
        for volume, key in VOLUMES.items():
            folders[volume].add(env[key])
        if spec.is_worker:
            assert env["CLOUDOPS_WORKER_HOSTNAME"] == spec.name
            assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "cloudops.deployment.topology.worker_hostname"
    assert {volume: len(paths) for volume, paths in folders.items()} == dict.fromkeys(VOLUMES, 1), folders
    assert [w.queues for w in WORKERS] == [("default", "worker-a"), ("default", "worker-b")]
    assert base["AIRFLOW__CELERY__BROKER_URL"].endswith(f"@127.0.0.1:{layout.port('redis')}/0")
    assert base["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith(f":{layout.port('postgres_scratch')}/airflow")


def test_worker_hostname_is_the_workers_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from cloudops.deployment.topology import worker_hostname

    monkeypatch.setenv("CLOUDOPS_WORKER_HOSTNAME", "worker-b")
    assert worker_hostname() == "worker-b"
    monkeypatch.delenv("CLOUDOPS_WORKER_HOSTNAME")
    assert worker_hostname() == socket.getfqdn()
