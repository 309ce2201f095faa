# CloudOps Runbooks: `make demo` and `make test` do every set-up step they need on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
BIN := $(VENV)/bin
# The machine's Python (resolved before .venv/bin joins PATH) runs uv; it is installed if missing.
SYSTEM_PYTHON := $(shell command -v python3.11 || command -v python3)
UV := $(SYSTEM_PYTHON) -m uv
export CLOUDOPS_SANDBOX_DIR ?= $(ROOT)/.sandbox
export CLOUDOPS_CATALOG ?= $(ROOT)/runbooks
export AIRFLOW_HOME ?= $(CLOUDOPS_SANDBOX_DIR)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(ROOT)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(ROOT)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__EXECUTOR := LocalExecutor
# A 2-core sandbox machine: a handful of task processes, not the default 32.
export AIRFLOW__CORE__PARALLELISM ?= 8
# A second person approves dangerous steps (restore_request); an auditor only reads.
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS := admin:admin,approver:user,auditor:viewer
export PATH := $(BIN):$(PATH)
ENV_FILE := $(CLOUDOPS_SANDBOX_DIR)/airflow.env
# Every command that talks to the sandbox reads its connections from the environment file.
WITH_SANDBOX_ENV := set -a; . "$(ENV_FILE)"; set +a;

# Debian packages the sandbox runs (servers; debootstrap builds its hosts' Debian root once), the
# runbooks call (ssh, dump tools, zstd), the auditor view's browser test drives (chromium with its
# chromedriver), the monthly report's PDF needs (WeasyPrint: Pango and its fonts) and its visual check
# reads (pdftoppm, in poppler-utils).
# etcd-server is the store of the sandbox's Patroni cluster (the sandbox runs its own etcd on loopback;
# the package's service never starts in a container, where policy-rc.d refuses it).
# redis-server is the broker of `make up-celery`: the sandbox runs its own on a sandbox port, never 6379.
DEBIAN_PACKAGES := postgresql postgresql-client mariadb-server mariadb-client openssh-client debootstrap zstd pgbackrest chromium chromium-driver etcd-server python3-venv libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core poppler-utils redis-server
REQUIRED_BINARIES := /usr/lib/postgresql/15/bin/initdb /usr/sbin/mariadbd /usr/sbin/debootstrap /usr/bin/ssh /usr/bin/zstd /usr/bin/pg_dump /usr/bin/mariadb-dump /usr/bin/chromium /usr/bin/chromedriver /usr/bin/etcd /usr/bin/pdftoppm /usr/bin/redis-server

.PHONY: up-celery bench-celery sandbox-prepare bench-report bench-patch bench-backup bench-evidence bench-pipeline help setup system-packages venv lock sandbox sandbox-down airflow-db demo test test-unit lint schema up down bench clean probes bench-probes bench-failover

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 18

setup: system-packages venv  ## install Debian packages and the Python environment

system-packages:  ## install the Debian packages the sandbox needs, if any is missing
	@missing=""; for b in $(REQUIRED_BINARIES); do [ -x "$$b" ] || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then echo "system packages: present"; exit 0; fi; \
	echo "system packages: missing$$missing; installing: $(DEBIAN_PACKAGES)"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; \
	else echo "run as root or install: apt-get install $(DEBIAN_PACKAGES)" >&2; exit 1; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null

venv: $(VENV)/.installed  ## create .venv with uv from requirements.lock

$(VENV)/.installed: requirements.lock pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || $(SYSTEM_PYTHON) -m pip install --quiet uv
	@[ -x $(BIN)/python ] || $(UV) venv --quiet --python 3.11 $(VENV)
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	@# The editable build leaves plugins/*.egg-info; with plugins/ on sys.path Airflow would find the
	@# entry point twice and show "Plugin 'cloudops' already registered". The venv's dist-info remains.
	@rm -rf $(ROOT)/plugins/*.egg-info
	@touch $@

lock:  ## re-resolve requirements.lock from pyproject.toml
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

sandbox-prepare: setup  ## build what the sandbox cannot download at `up`: Patroni's venv on the system Python (cached, include/sandbox/patroni-requirements.txt)
	CLOUDOPS_SANDBOX_UV="$(UV)" $(BIN)/cloudops sandbox prepare

sandbox: sandbox-prepare  ## start the local sandbox estate (idempotent)
	$(BIN)/cloudops sandbox up

sandbox-down:  ## stop what the sandbox started
	$(BIN)/cloudops sandbox down

airflow-db: sandbox  ## create or upgrade the Airflow metadata database of the sandbox
	@mkdir -p "$(AIRFLOW_HOME)"
	@$(WITH_SANDBOX_ENV) airflow db migrate >"$(AIRFLOW_HOME)/db-migrate.log" 2>&1 || { tail -20 "$(AIRFLOW_HOME)/db-migrate.log"; exit 1; }
	@# One failover drill per estate at a time: the drill tasks run in a one-slot pool per estate.
	@$(WITH_SANDBOX_ENV) $(BIN)/cloudops failover pools 2>/dev/null >"$(AIRFLOW_HOME)/pools.json" && airflow pools import "$(AIRFLOW_HOME)/pools.json" >>"$(AIRFLOW_HOME)/db-migrate.log" 2>&1 || { tail -20 "$(AIRFLOW_HOME)/db-migrate.log"; exit 1; }
	@echo "airflow metadata database ready in $(AIRFLOW_HOME)"

demo: airflow-db  ## run every runbook once on the sandbox and print a summary table
	@$(WITH_SANDBOX_ENV) $(BIN)/python -m cloudops.sandbox.demo

test: sandbox  ## run every test layer: unit, dags, integration, e2e
	@$(WITH_SANDBOX_ENV) $(BIN)/python -m pytest -m "unit or dags or integration or e2e" --durations=25 $(PYTEST_ARGS)

test-unit: venv  ## only the tests that need no service
	$(BIN)/python -m pytest -m "unit or dags" $(PYTEST_ARGS)

lint: venv  ## ruff and mypy
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

schema: venv  ## regenerate runbooks/schema/ from the catalog models
	$(BIN)/cloudops schema --output runbooks/schema/catalog.schema.json

up: airflow-db  ## run Airflow (standalone) against the sandbox, its probe process alongside: http://localhost:8080, admin / admin (+ approver, auditor)
	@echo '{"admin": "admin", "approver": "approver", "auditor": "auditor"}' > "$(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated"
	@# `cloudops sandbox up` (the sandbox target) started the probe process; it keeps sampling when Airflow stops.
	@$(BIN)/cloudops sandbox status | grep -E "^(COMPONENT|probes) "
	@echo "Airflow UI: http://localhost:8080  logins: admin/admin, approver/approver (approves), auditor/auditor (reads)  (Ctrl-C stops it)"
	@# The health check reads the runbook DAGs' state through the REST API, as the read-only auditor.
	@$(WITH_SANDBOX_ENV) AIRFLOW_CONN_CLOUDOPS_AIRFLOW_API='{"conn_type": "http", "host": "http://localhost:8080", "login": "auditor", "password": "auditor"}' exec airflow standalone

up-celery: sandbox  ## run Airflow on the CeleryExecutor against the sandbox: Redis broker, PostgreSQL metadata DB, api-server, scheduler, dag-processor, triggerer, two workers (in the background; make down stops them)
	@$(BIN)/cloudops deployment up

down: sandbox-down  ## stop the Celery deployment (make up-celery), the sandbox and its probe process (Airflow standalone stops with Ctrl-C)

probes: venv  ## run the probe process in the foreground on $$CLOUDOPS_CATALOG (the sandbox runs its own)
	$(BIN)/cloudops probe run --samples "$${CLOUDOPS_PROBE_SAMPLES:-$(CLOUDOPS_SANDBOX_DIR)/samples}"

bench-probes: venv  ## one probe process, 500 local HTTP targets, 3 minutes: CPU in % of a core (~5 min)
	$(BIN)/python tests/benchmarks/bench_probes.py

bench: sandbox  ## DAG parsing and evidence ledger benchmarks (tests/benchmarks; by hand, asserts nothing)
	@$(WITH_SANDBOX_ENV) $(BIN)/python tests/benchmarks/bench_dag_parsing.py
	$(BIN)/python tests/benchmarks/bench_evidence.py

bench-backup: sandbox  ## backups vs pg_dump and pgBackRest, ~10 min (docs/benchmarks.md)
	@$(WITH_SANDBOX_ENV) $(BIN)/python tests/benchmarks/bench_backup.py

bench-evidence: venv  ## evidence ledger: append 100k, verify, export a month (~3 min)
	$(BIN)/python tests/benchmarks/bench_evidence.py

bench-ledger-pg: sandbox  ## PostgreSQL ledger vs file ledger, two writers at once: batches, one by one, verify (~3 min)
	@$(WITH_SANDBOX_ENV) $(BIN)/python tests/benchmarks/bench_ledger_pg.py

bench-celery: sandbox  ## 40 backups and their drills at once on the Celery deployment, one worker vs two (~40 min; BENCH_ARGS="--databases 10")
	@$(WITH_SANDBOX_ENV) nice -n 10 $(BIN)/python tests/benchmarks/bench_celery_scale.py $(BENCH_ARGS)

bench-patch: sandbox  ## patch wave vs ansible-playbook and the ideal, 6 and 30 hosts (ansible-core in its own venv under the sandbox dir)
	@$(WITH_SANDBOX_ENV) nice -n 10 $(BIN)/python tests/benchmarks/bench_patch_wave.py

bench-report: venv  ## monthly report of 50 targets x a month of 1-minute samples + 10k runs: time and peak memory
	$(BIN)/python tests/benchmarks/bench_report.py

bench-failover: sandbox  ## write downtime and drill time: native PG, patronictl alone, our Patroni drill, MariaDB (5 rounds, ~5 min)
	@$(WITH_SANDBOX_ENV) $(BIN)/python tests/benchmarks/bench_failover.py

bench-pipeline: sandbox  ## peak memory of the streaming upload pipeline
	@$(WITH_SANDBOX_ENV) $(BIN)/python tests/benchmarks/bench_pipeline_memory.py

clean: sandbox-down  ## stop the sandbox and delete its state and the venv
	rm -rf "$(CLOUDOPS_SANDBOX_DIR)" $(VENV)
