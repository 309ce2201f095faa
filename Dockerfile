# The CloudOps Runbooks image: the official Airflow image plus the locked dependencies, the
# `cloudops` package and the client tools the runbooks shell out to. docker-compose.yaml builds it.
#
#   docker build -t cloudops-runbooks:0.1.0 .
#
# Keep the tag's Airflow version equal to `apache-airflow==` in requirements.lock
# (tests/dags/test_docker_compose.py checks it).
FROM apache/airflow:3.3.2-python3.11

# Tools the runbooks run: PostgreSQL clients and servers, mariadb-dump/mariadb, ssh/scp, zstd.
#
# PostgreSQL comes from the PGDG repository (apt.postgresql.org; its signing key ships in Debian's
# postgresql-common, so nothing is fetched to trust it), which has every supported major for
# whichever Debian release the Airflow image is built on. For each major in PG_MAJORS the image gets
# the server package, postgresql-<major>: /usr/lib/postgresql/<major>/bin holds postgres,
# pg_verifybackup and pg_waldump, which physical drills run (restore/physical_plan.py's default
# CLOUDOPS_PG_BINDIR), and the client tools of that major. /usr/bin/pg_dump and friends run the
# newest major installed.
#
# Version bound: a logical backup needs a pg_dump at least as new as the server (an older one is
# refused with ToolVersionError), and a physical drill needs the server binaries of exactly the
# backup's major. With the default PG_MAJORS, servers of PostgreSQL 15 to 17 can be backed up and
# drilled; for a newer server, build with e.g. --build-arg PG_MAJORS="15 16 17 18".
# The server packages would create and start a "main" cluster: create_main_cluster = false stops it.
ARG PG_MAJORS="15 16 17"
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates postgresql-common \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && sed -i 's/^#* *create_main_cluster *=.*/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends \
        $(for major in ${PG_MAJORS}; do echo "postgresql-${major}"; done) \
        mariadb-client \
        openssh-client \
        zstd \
    && for major in ${PG_MAJORS}; do \
        for binary in postgres pg_verifybackup pg_waldump pg_dump pg_restore; do \
            test -x "/usr/lib/postgresql/${major}/bin/${binary}" \
                || { echo "PostgreSQL ${major}: ${binary} missing" >&2; exit 1; }; \
        done; \
    done \
    && apt-get autoremove -yqq --purge \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# The SimpleAuthManager passwords file lives here (a named volume in docker-compose.yaml, seeded by
# airflow-init). Creating it in the image lets the volume inherit an owner the airflow user can write,
# whatever AIRFLOW_UID is (the image's convention: group 0, group-writable).
RUN install -d -o airflow -g 0 -m 0770 /opt/airflow/auth

USER airflow

# Dependencies first, from the lock only, so code changes do not reinstall them. Every requirement in
# the lock is pinned (apache-airflow==3.3.2 included), and the lock is also passed as constraints.
COPY --chown=airflow:0 requirements.lock /opt/airflow/requirements.lock
RUN pip install --no-cache-dir -r /opt/airflow/requirements.lock -c /opt/airflow/requirements.lock

# CeleryExecutor needs the celery provider. It ships with the base image and is not in the lock:
# fail the build here rather than at the first task if that ever stops being true.
RUN pip show --quiet apache-airflow-providers-celery

# The package, installed editable into /opt/airflow/plugins: the ./plugins bind mount of
# docker-compose.yaml then replaces this copy with the checkout's code, and an image without the
# mount runs the copy baked in here. --no-deps: everything it needs came from the lock above.
COPY --chown=airflow:0 pyproject.toml /opt/airflow/pyproject.toml
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
# The editable build leaves plugins/*.egg-info, which Airflow (plugins/ on sys.path) would read as a
# second copy of the entry point ("Plugin 'cloudops' already registered"): the installed dist-info stays.
RUN pip install --no-cache-dir --no-deps -e /opt/airflow \
    && rm -rf /opt/airflow/plugins/*.egg-info \
    && command -v cloudops

ENV CLOUDOPS_CATALOG=/opt/airflow/runbooks
