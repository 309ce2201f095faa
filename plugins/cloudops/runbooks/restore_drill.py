"""# Restore drill: `restore_drill__<database>`

**What it does.** Proves the latest backup can be restored, the way auditors ask for it. After each
backup (on the backup's Asset) or on the catalog's cron:
1. `prepare` checks the scratch server (the catalog's `drill.scratch_conn_id`, a server of its own: never
   a catalog primary's connection unless that database sets `scratch_allowed`), drops scratch databases
   (and stops and removes scratch clusters) left by a drill killed half-way, chooses the backup (the
   latest by its id's time; a backup dated in the future or whose manifest's start time is not its id's
   is skipped, with the reason in the log) and **checks its manifest against the ledger**: the backup's
   `backup.taken` record holds the manifest's SHA-256 and S3 version, the manifest is read at that
   version and must have that hash. A backup with no record (imported, or taken with another ledger) is
   refused unless the drill policy sets `trust_repository` (recorded in the ledger); one that was
   written over after it was taken (a newer S3 version of its manifest or dump) is refused, naming both
   hashes, so that the change is looked into. Only databases cloudops created are dropped: a
   `drill_<database>_<run hash>` name **and** the ownership marker written when it was created (a
   database comment naming the run); a scratch-shaped name without a marker is left alone, and the log
   says why;
2. `restore` downloads every object at the S3 version the manifest records, checking its size and
   SHA-256 against the manifest as it arrives and decompressing no more than the manifest's size (a
   flipped byte, a truncated or missing object, a zstd bomb fails here, **before any restore**), checks
   the scratch server again and restores into a scratch database named after the run, created with its
   marker, on the scratch server (`pg_restore -j 2`, as a role that owns only that database, or
   `mariadb`). A PostgreSQL
   **physical** backup (pg_basebackup tar) is instead extracted into a scratch cluster named after the
   run (`$CLOUDOPS_SCRATCH_DIR` or the temp folder, never inside a database server's data directory,
   `cloudops-scratch-clusters/<estate>/<name>/` on the worker), checked with `pg_verifybackup`, and
   started on a free 127.0.0.1 port with the backup's major version (`/usr/lib/postgresql/<major>/bin`);
   it recovers to the backup's consistent point (`recovery_target = 'immediate'`) and promotes (bounded
   wait, 30 minutes; `server.log` in the folder). **A physical drill's scratch server lives in this one
   task**: `restore` starts it, runs every check of step 3 on it and stops and removes it (in a
   `finally`, and in the task's `on_kill` when Airflow stops the task; a SIGKILLed task's server is
   SIGKILLed by the kernel with it, `setpriv --pdeathsig`). So restore, validation and stop always
   happen on the worker that started the server, whatever executor and however many workers run the
   tasks. The task records in the ledger which machine owns the server (`drill.scratch`: host name,
   boot id, task pid) before it makes the folder, and that it removed it. A retry finds what an
   earlier try of the run left: on the same machine it stops and removes it; on another, it says so
   in its log (`left_elsewhere`), and the teardown fails naming that host;
3. `validate` compares the restored schema fingerprint and per-table row counts with the manifest and
   runs the database's expectation suite (`include/expectations/<database>.json`, with Great
   Expectations): keys not null and unique, newest rows within the RPO, whatever the owner declares.
   For a physical backup (no row counts recorded): server version, backup position within the
   manifest's WAL range, pg_verifybackup, recovery ended, every database readable, the schema
   fingerprint, then the suite; these run inside `restore` (above), and `validate` reports them
   (failing when the validation did);
4. `teardown` always drops the scratch database (and the role the restore ran as), or, for a
   physical drill, stops and removes any scratch cluster of the run the ledger (or `restore`'s XCom)
   says is still owned on this machine. One owned by **another machine** is never reported removed:
   teardown fails, naming that host (and boot id) and the cluster;
5. for a database on RDS (`rds_instance_id` in the catalog), a branch beside 2-4 proves the backup's
   RDS snapshot: `restore_rds` restores the snapshot tagged with the backup's id (waiting up to an hour
   while the backup is still taking it; else the newest available snapshot of the instance, with a
   warning in the log and the record) into a scratch
   instance `cloudops-drill-<database>-<run hash>`, tagged `cloudops:drill=<database>` and with the run
   id, and waits until it is `available` (at most 90 minutes); `check_rds` checks through the RDS API
   that it is available, has the snapshot's engine and engine version, an endpoint, and at least the
   snapshot's storage; `teardown_rds` always deletes it (no final snapshot), after checking its name
   and tags say it is this drill's scratch instance. `prepare` deletes scratch instances a killed drill
   left;
6. `record` measures RTO (restore + validation) and RPO (the data loss exposure: the larger of the
   backup's age and the largest gap between consecutive complete backups in the repository over the
   last 30 days, so daily backups miss a 1 h RPO), compares them with the catalog's targets,
   logs the drill record as a table, stores it as JSON in S3 beside the backups
   (`<prefix>/<estate>/_drills/<database>/<backup_id>/`) and in the local evidence folder, and
   **fails the run when any check failed, a step failed (the RDS ones included), a target was missed or
   a scratch RDS instance could not be deleted**.

**What a failure means.** The backup named in the record cannot be trusted as it is: a checksum
mismatch or missing object means the stored backup is damaged; a failed check means the restored
data differs from what was backed up (or breaks the owner's expectations); a missed RTO means a real
restore would take longer than promised; a missed RPO means backups are older than promised. A failed
RDS part means the instance cannot be brought back from its snapshot as it is (or the backup's own
snapshot is missing, when the record says a fallback was drilled).

**What to do next.** A refusal in `prepare` that names two manifest hashes, or a newer version
written over the backup: someone with write access to the bucket changed it; treat it as an incident
(the versions the backup wrote are intact and `restore_request` reads them). "No backup.taken record":
the backup was not taken by this deployment; set the drill policy's `trust_repository` only if you
know where it came from. Read the record table in the `record` task's log. Damaged backup: take a new
backup now (trigger `backup__<database>`) and find out what altered the stored objects. Failed
checks: compare the failing tables with the source. A physical restore that did not start or recover:
read the quoted `server.log` in `restore`'s log. A scratch cluster left running (teardown failed,
naming the host that owns it): the next drill's `prepare` on that host removes it, or stop it yourself
there (`kill -QUIT <pid>` of the `postgres` whose `-D` is under `cloudops-scratch-clusters/`) and
delete its folder. Missed targets: raise them with the
owner, or speed up the restore path. RDS: read `restore_rds`'s log (the snapshot chosen, the instance's last
status); if `teardown_rds` failed, delete the instance it names (`cloudops-drill-...`, tagged
`cloudops:drill`) or let the next drill's `prepare` do it. A scratch database left with no marker (the
log says "never dropped"): cloudops did not create it, or was killed between creating and marking it;
drop it yourself once you know what it is. The drill never touches the source database or its server
(the copy goes to the scratch server); re-running is safe.

**Why one task owns the scratch server.** On the CeleryExecutor the next task of a run may start on
any worker. Pinning `validate` and `teardown` to the worker of `restore` would need a queue per worker
(every worker started with its own queue), a queue chosen per run after `restore` ran (Airflow fixes
a task's queue when the DAG is parsed), and a dead worker's queue would hold the rest of the run
forever. One task that starts, checks and stops the server needs none of that, and its lifetime is
the task's: stopped in `finally`, in `on_kill`, and by the kernel when the task's process is
SIGKILLed. What remains is the rare folder (and, without `setpriv`, server) a killed try leaves,
which the ledger's ownership record lets a retry or teardown on any worker find and report.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudops.catalog import Database, LoadedCatalog
from cloudops.errors import (
    CloudOpsError,
    DatabaseUnavailableError,
    InvalidInputError,
    RestoreError,
    RestoreRefused,
)
from cloudops.evidence.ledger import evidence_dir
from cloudops.runbooks.backup import backed_up_database

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from cloudops.engines import Engine
    from cloudops.restore.physical import ScratchOwner

log = logging.getLogger(__name__)

KIND = "restore_drill"
RDS_RESTORE_WAIT = timedelta(minutes=90)
OWNER_XCOM = "scratch_owner"  # restore's: the machine (and task) a physical drill's scratch cluster runs on
SCRATCH_OWNED, SCRATCH_REMOVED = "owned", "removed"  # the states of a drill.scratch ledger record
DRILLS_FOLDER = "_drills"  # never a catalog name (they start with a letter), so never a backup folder
NEXT_ACTIONS = {
    "prepare": "check the repository and the backup listing (cloudops backups list <database>)",
    "restore": "a damaged or missing object fails here: take a new backup now and find what altered it",
    "validate": "read the failed checks in the log and compare those tables with the source",
    "restore_rds": "read the log: the RDS snapshot chosen and the scratch instance's last status",
    "check_rds": "read the failed RDS checks in the record task's log",
    "teardown_rds": "delete the scratch RDS instance named in the log (cloudops-drill-...) by hand, or let "
    "the next drill's prepare delete it",
    "record": "read the drill record in the record task's log: failed checks or missed RTO/RPO targets",
    "*": "read the task log",
}


def scratch_conn_id(database: Database) -> str:
    """The server that receives scratch restores: the drill policy's (there is no default).

    :raises InvalidInputError: the catalog names none (``cloudops validate`` reports it too).
    """
    conn_id = database.drill.scratch_conn_id if database.drill else None
    if not conn_id:
        raise InvalidInputError(
            f"database {database.name!r} has no drill.scratch_conn_id: a drill restores onto a scratch "
            "server of its own, never the primary"
        )
    return conn_id


def check_scratch_server(catalog_file: str, database: Database) -> None:
    """Re-check, right before a drill creates or drops anything, that its scratch server is allowed:
    named, and no catalog primary's connection (of any catalog file loaded with this one) unless that
    database sets ``scratch_allowed``. The catalog may have changed since the DAG was parsed. A MariaDB
    scratch server must also have its event scheduler off.

    :raises CatalogError: naming the file, line and field, as ``cloudops validate`` does.
    :raises InvalidInputError: the scratch connection reaches a primary's host and port.
    :raises RestoreRefused: a MariaDB scratch server runs its event scheduler.
    """
    from cloudops.catalog.errors import CatalogError
    from cloudops.catalog.loader import load_catalog_file, scratch_server_issues

    load_catalog_file(catalog_file)  # the file's own checks: a scratch_conn_id, not its own primary's
    issues = scratch_server_issues(catalog_file)
    if issues:
        raise CatalogError(issues)
    _refuse_a_primary_behind_another_conn_id(catalog_file, database)
    conn_id = scratch_conn_id(database)
    problem = engine_for(database).scratch_server_problem(
        conn_id, used_by=scratch_server(database.name, conn_id)
    )
    if problem:
        raise RestoreRefused(problem)
    log.info(
        "scratch server of %s: connection %r, no catalog primary's (checked again just now)",
        database.name,
        scratch_conn_id(database),
    )


_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _server_address(conn: Any, engine_name: str) -> tuple[str, int]:
    from cloudops.engines import engine

    host = (conn.host or "localhost").strip().lower()
    return ("loopback" if host in _LOOPBACK else host, int(conn.port or engine(engine_name).default_port))


def _refuse_a_primary_behind_another_conn_id(catalog_file: str, database: Database) -> None:
    """Refuse a scratch connection that reaches the host and port of a catalog primary's connection
    under another id (the catalog check compares ids only). Primaries whose connection is not defined
    here are skipped: this worker could not reach them either.

    :raises InvalidInputError: naming both connections and the primary.
    """
    from cloudops.catalog import CatalogError, catalog_paths, load_catalog_file
    from cloudops.connections import get_connection
    from cloudops.errors import ConnectionMissingError

    scratch_id = scratch_conn_id(database)
    used_by = scratch_server(database.name, scratch_id)
    scratch = _server_address(get_connection(scratch_id, used_by), database.engine)
    here = Path(catalog_file).resolve()
    files = [Path(catalog_file), *(p for p in catalog_paths() if p.resolve() != here)]
    for file in files:
        try:
            catalog = load_catalog_file(file)
        except CatalogError:
            continue  # reported by cloudops validate and the DAG import errors; not this drill's file
        for primary in catalog.databases:
            if (
                primary.role != "primary"
                or primary.engine != database.engine
                or primary.conn_id == scratch_id
                or primary.scratch_allowed
            ):
                continue
            try:
                address = _server_address(get_connection(primary.conn_id, used_by), primary.engine)
            except ConnectionMissingError:
                continue
            if address == scratch:
                raise InvalidInputError(
                    f"{catalog_file}: drill.scratch_conn_id of {database.name!r}: connection {scratch_id!r} "
                    f"reaches {address[0]}:{address[1]}, the server of primary {primary.name!r} (connection "
                    f"{primary.conn_id!r}, {file}): a drill would restore a full copy onto it; point it at "
                    "a scratch server of its own"
                )


def scratch_server(database_name: str, conn_id: str) -> str:
    """Name the scratch server in errors: by its connection, which is not the database's own server."""
    return f"the scratch server of {database_name!r} (connection {conn_id!r})"


def engine_for(database: Database) -> Engine:
    """The engine (:class:`cloudops.engines.Engine`) of catalog database ``database``."""
    from cloudops.engines import engine_of

    return engine_of(database)


def prepare(
    catalog_file: str, estate: str, database_name: str, *, run_id: str, backup_id: str
) -> dict[str, Any]:
    """Drop leftover scratch databases, choose the backup and check its manifest belongs to it."""
    from cloudops.engines.scratch import scratch_name

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    physical = database.backup is not None and database.backup.method == "physical"
    if physical:
        from cloudops.engines.scratch import check_scratch_root
        from cloudops.restore.physical import scratch_root

        check_scratch_root(scratch_root())
    else:
        check_scratch_server(catalog_file, database)
    if database.drill is not None and database.drill.scratch_conn_id:
        # Only what cloudops created (name and marker) is dropped; the engine logs what it leaves alone.
        engine, conn_id = engine_for(database), database.drill.scratch_conn_id
        used_by = scratch_server(database_name, conn_id)
        for leftover in engine.leftover_scratch_databases(conn_id, database.name, used_by=used_by):
            log.info("dropping %s, left by an earlier drill that did not finish", leftover)
            engine.drop_database(conn_id, leftover, used_by=used_by)
    if engine_for(database).physical_backups:
        from cloudops.restore.physical import (
            ScratchOwner,
            folder_owner,
            leftover_clusters,
            stop_and_remove,
        )

        for cluster in leftover_clusters(estate, database.name):
            owner = folder_owner(cluster)
            # Another host's (a shared file system): never stopped from here. Ours from before a
            # reboot: its server stopped with the boot, only the folder is left.
            if owner is not None and owner.host != ScratchOwner.here().host:
                log.warning(
                    "scratch cluster %s belongs to %s, not this machine: left for that host to remove",
                    cluster.folder,
                    owner,
                )
                continue
            log.info(
                "removing scratch cluster %s, left by an earlier drill that did not finish", cluster.folder
            )
            stop_and_remove(cluster)
    if database.rds_instance_id:
        from cloudops.clouds.aws.rds import delete_leftover_rds_drill_instances, rds_drill_instance_name
        from cloudops.runbooks.backup import aws_conn_id_of

        delete_leftover_rds_drill_instances(
            aws_conn_id_of(catalog, database),
            database=database.name,
            estate=estate,
            keep=rds_drill_instance_name(database.name, run_id),
        )
    chosen = prove_drilled_backup(catalog_file, estate, database_name, backup_id=backup_id, run_id=run_id)
    scratch, method = scratch_name(database.name, run_id), chosen.manifest.method
    log.info(
        "drill of %s backup %s of %s into scratch %s %s",
        method,
        chosen.backup_id,
        database.name,
        "cluster" if method == "physical" else "database",
        scratch,
    )
    return {
        **chosen.pin(),
        "scratch": scratch,
        "method": method,
        "started_at": datetime.now(UTC).isoformat(),
    }


def prove_drilled_backup(
    catalog_file: str, estate: str, database_name: str, *, backup_id: str, run_id: str | None
) -> Any:
    """Choose the backup and prove its manifest against the ledger (see ``fetch.prove_backup``).

    A drill refuses a backup that was written over after it was taken: the change is to be looked into,
    not drilled around. One without a ledger record is drilled only when the drill policy's
    ``trust_repository`` says so, and that is recorded.
    """
    from cloudops.restore.fetch import prove_backup, record_trust
    from cloudops.runbooks.backup import open_repository

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    trust = bool(database.drill and database.drill.trust_repository)
    proven = prove_backup(
        open_repository(catalog, database),
        database.name,
        backup_id,
        trust_repository=trust,
        on_change="refuse",
    )
    record_trust(proven, dag_id=f"{KIND}__{database.name}", run_id=run_id, by=KIND)
    return proven


def proven_manifest(
    catalog_file: str, estate: str, database_name: str, *, backup_id: str, pin: dict[str, Any] | None
) -> Any:
    """The manifest ``prepare`` proved (``pin``: its XCom), read again byte-checked; without a pin (a
    step called on its own), proven against the ledger again."""
    from cloudops.restore.fetch import read_proven_manifest
    from cloudops.runbooks.backup import open_repository

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    if pin and pin.get("manifest_sha256") and pin.get("backup_id") == backup_id:
        return read_proven_manifest(open_repository(catalog, database), database.name, pin)
    return prove_drilled_backup(
        catalog_file, estate, database_name, backup_id=backup_id, run_id=None
    ).manifest


def restore(
    catalog_file: str,
    estate: str,
    database_name: str,
    *,
    backup_id: str,
    scratch: str,
    proven: dict[str, Any] | None = None,
    run_id: str | None = None,
    die_with_task: bool = False,
) -> dict[str, Any]:
    """Download and verify every object, then restore into the scratch database (a logical backup) or
    a scratch cluster started on this worker (a physical one); return the timings (and the cluster).

    :param proven: what ``prepare`` returned: the manifest it proved is read again by version and hash.
    :param run_id: the run ``scratch`` is named after: the scratch database's marker records it.
    :param die_with_task: a physical backup's server dies with the calling thread (see
        :func:`drill_physical`, which owns it); False leaves it running for the caller to stop.
    """
    from cloudops.restore.fetch import fetch_backup
    from cloudops.runbooks.backup import open_repository

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    store = open_repository(catalog, database)
    manifest = proven_manifest(catalog_file, estate, database_name, backup_id=backup_id, pin=proven)
    started = time.monotonic()
    if manifest.method == "physical":
        from cloudops.connections import get_connection
        from cloudops.engines.scratch import check_scratch_root
        from cloudops.restore.physical import restore_scratch_cluster, scratch_root

        check_scratch_root(scratch_root())  # again, right before the cluster's folder is made

        used_by = f"database {database_name!r}"
        cluster, checks = restore_scratch_cluster(
            store,
            manifest,
            scratch=scratch,
            source=get_connection(database.conn_id, used_by),
            used_by=used_by,
            die_with_task=die_with_task,
        )
        return {
            "restore_seconds": time.monotonic() - started,
            "checksums": [{"object": o.name, "sha256": o.sha256, "ok": True} for o in manifest.objects],
            "cluster": cluster.to_xcom(),
            "checks": [c.model_dump(mode="json") for c in checks],
        }
    with tempfile.TemporaryDirectory(prefix="cloudops-drill-") as workdir:
        dump = fetch_backup(store, manifest, Path(workdir))
        log.info("every object matches the manifest: %s", [o.name for o in manifest.objects])
        check_scratch_server(catalog_file, database)  # again, right before the scratch database is made
        engine_for(database).restore_logical(
            scratch_conn_id(database),
            scratch,
            dump,
            used_by=scratch_server(database_name, scratch_conn_id(database)),
            **restore_role_options(database),
            run_id=run_id,
        )
    return {
        "restore_seconds": time.monotonic() - started,
        "checksums": [{"object": o.name, "sha256": o.sha256, "ok": True} for o in manifest.objects],
    }


def validate(
    catalog_file: str,
    estate: str,
    database_name: str,
    *,
    backup_id: str,
    scratch: str,
    restored: dict[str, Any] | None = None,
    proven: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare the scratch copy with the manifest and run the expectation suite; return every check.

    :param restored: what ``restore`` returned: for a physical backup, the scratch cluster to check
        and the checks made before it started.
    :param proven: what ``prepare`` returned (see :func:`restore`).
    """
    from cloudops.restore.validation import compare_with_manifest, run_expectation_suite, suite_path

    _, database = backed_up_database(catalog_file, estate, database_name)
    manifest = proven_manifest(catalog_file, estate, database_name, backup_id=backup_id, pin=proven)
    used_by = f"scratch copy of {database_name!r}"
    started = time.monotonic()
    target: Any
    if manifest.method == "physical":
        target, checks = _check_physical(database, manifest, restored, used_by=used_by)
        target_database = database.database
    else:
        target, target_database = _checking_connection(database, scratch, used_by), scratch
        checks = compare_with_manifest(target, database.engine, scratch, manifest, used_by=used_by)
    suite = suite_path(database.name)
    if suite.exists():
        checks += run_expectation_suite(
            target,
            database.engine,
            target_database,
            suite,
            rpo=database.rpo or timedelta(days=1),
            backup_time=manifest.started_at,
            used_by=used_by,
        )
    else:
        log.warning("no expectation suite at %s: only the manifest checks ran", suite)
    return {
        "checks": [c.model_dump(mode="json") for c in checks],
        "validation_seconds": time.monotonic() - started,
    }


def restore_role_options(database: Database) -> dict[str, Any]:
    """PostgreSQL restores run as a role owning only the scratch database, unless the catalog says
    (``drill.restore_as_superuser``); MariaDB loads have no restore role and ignore the option."""
    return {"as_superuser": bool(database.drill and database.drill.restore_as_superuser)}


def _checking_connection(database: Database, scratch: str, used_by: str) -> Any:
    """What the checks of a logical restore connect as: on PostgreSQL the scratch database's restore
    role, so that nothing the dump defined runs with the scratch server's login's privileges."""
    return engine_for(database).checking_connection(scratch_conn_id(database), scratch, used_by=used_by)


def _check_physical(
    database: Database, manifest: Any, restored: dict[str, Any] | None, *, used_by: str
) -> tuple[Any, list[Any]]:
    """The scratch cluster's checks (those made before it started included) and a connection to the
    catalog's database on it, for the expectation suite."""
    from cloudops.connections import get_connection
    from cloudops.engines.postgres import fingerprinted_database
    from cloudops.restore.physical import ScratchCluster, check_scratch_cluster, scratch_connection
    from cloudops.restore.record import Check
    from cloudops.restore.validation import compare_with_manifest

    if not restored or "cluster" not in restored:
        raise CloudOpsError(
            f"backup {manifest.backup_id} of {database.name} is physical and no scratch cluster was "
            "started: the restore step failed (see its log)"
        )
    source = get_connection(database.conn_id, f"database {database.name!r}")
    cluster = ScratchCluster.from_xcom(restored["cluster"])
    # The database the backup fingerprinted, decided as physical_backup_source decides it.
    fingerprinted = fingerprinted_database(source)
    checks = [Check(**c) for c in restored.get("checks", [])]
    checks += check_scratch_cluster(
        cluster, source, required_databases=[database.database, fingerprinted], used_by=used_by
    )
    checks += compare_with_manifest(
        scratch_connection(cluster, source, database=fingerprinted),
        "postgres",
        fingerprinted,
        manifest,
        used_by=used_by,
    )
    return scratch_connection(cluster, source, database=database.database), checks


def teardown(
    catalog_file: str,
    estate: str,
    database_name: str,
    *,
    scratch: str | None,
    method: str | None = None,
    owner: ScratchOwner | dict[str, Any] | None = None,
    run_id: str | None = None,
) -> None:
    """Drop the scratch database, or stop and remove the scratch cluster (``method`` physical, from
    ``prepare``: also a half-started one); the drill's checks are already recorded.

    A scratch cluster lives on the machine whose task started it. Its owners are the tries the ledger
    says took it (``drill.scratch`` ``owned``) and have no ``removed`` record, and ``owner`` (the
    restore step's XCom). Each owned here is stopped and removed (and that recorded); one owned by
    another machine is refused, naming it and the server, rather than find nothing here and report
    a server that still runs there as removed.

    :param owner: the machine the restore step ran on (:class:`ScratchOwner` or its data; None: the
        step never started).
    :raises RestoreRefused: a scratch cluster belongs to another machine (after those here were removed).
    :raises RestoreError: the scratch database or cluster could not be removed.
    """
    if not scratch:
        log.info("no scratch database was named: nothing to drop")
        return
    _, database = backed_up_database(catalog_file, estate, database_name)
    if method == "physical":
        from cloudops.restore.physical import ScratchOwner, scratch_root, stop_and_remove
        from cloudops.restore.physical_plan import cluster_paths

        owners = scratch_tries_left(estate, database_name, scratch)
        given = ScratchOwner.from_data(owner) if isinstance(owner, dict) else owner
        if given is not None and given not in owners.values():
            owners[0] = given
        paths = cluster_paths(scratch_root(), estate, scratch)
        elsewhere = [(t, o) for t, o in sorted(owners.items()) if not o.is_here()]
        if any(o.is_here() for o in owners.values()) or not owners:
            removed = stop_and_remove(paths)
            log.info("scratch cluster %s %s", scratch, "stopped and removed" if removed else "did not exist")
            for tried, found in sorted(owners.items()):
                if found.is_here() and tried:
                    record_scratch(
                        SCRATCH_REMOVED,
                        estate,
                        database_name,
                        scratch,
                        run_id=run_id,
                        try_number=tried,
                        owner=found,
                        by="teardown",
                    )
        for tried, found in elsewhere:
            log.error("scratch cluster %s of try %s belongs to %s", scratch, tried or "?", found)
        if elsewhere:
            elsewhere[0][1].refuse_elsewhere(scratch, "stop")
        return
    try:
        dropped = engine_for(database).drop_database(
            scratch_conn_id(database),
            scratch,
            used_by=scratch_server(database_name, scratch_conn_id(database)),
        )
    except DatabaseUnavailableError as error:
        # Say what is at stake: the scratch database may remain, whatever failed before.
        raise RestoreError(
            f"could not drop scratch database {scratch!r}, it may remain: {error}. The next drill's prepare "
            "drops it once the server is reachable"
        ) from error
    log.info("scratch database %s %s", scratch, "dropped" if dropped else "did not exist")


def record_scratch(
    state: str,
    estate: str,
    database_name: str,
    scratch: str,
    *,
    run_id: str | None,
    try_number: int,
    owner: ScratchOwner,
    by: str,
) -> None:
    """Record in the ledger that try ``try_number`` took (``owned``) or that ``by`` removed
    (``removed``) scratch cluster ``scratch``: what a retry or a teardown on any worker reads back.
    One record per try and state (a repeated call records nothing)."""
    from cloudops.evidence.recorder import record as record_evidence
    from cloudops.evidence.runs import DRILL_SCRATCH

    dag_id = f"{KIND}__{database_name}"
    written = record_evidence(
        DRILL_SCRATCH,
        dag_id=dag_id,
        run_id=run_id,
        key=f"{DRILL_SCRATCH}|{estate}|{scratch}|try {try_number}|{state}",
        task_id="restore",
        try_number=try_number,
        data={
            "estate": estate,
            "database": database_name,
            "scratch": scratch,
            "state": state,
            "try_number": try_number,
            "owner": owner.to_data(),
            "by": by,
        },
    )
    if written is None and state == SCRATCH_OWNED:
        log.warning(
            "the ledger did not record that %s owns scratch cluster %s: a retry on another worker will not "
            "know of it (the teardown still does, from the restore step's XCom)",
            owner,
            scratch,
        )


def scratch_tries_left(estate: str, database_name: str, scratch: str) -> dict[int, ScratchOwner]:
    """The tries whose scratch cluster ``scratch`` the ledger says was owned and never removed."""
    from cloudops.evidence.facts import iter_facts
    from cloudops.evidence.runs import DRILL_SCRATCH
    from cloudops.restore.physical import ScratchOwner

    owned: dict[int, ScratchOwner] = {}
    removed: set[int] = set()
    match = {"estate": estate, "database": database_name, "scratch": scratch}
    for fact in iter_facts(DRILL_SCRATCH, match):
        data = fact.fields.get("data") or {}
        if data.get("state") == SCRATCH_OWNED:
            owned[int(data["try_number"])] = ScratchOwner.from_data(data["owner"])
        elif data.get("state") == SCRATCH_REMOVED:
            removed.add(int(data["try_number"]))
    return {tried: found for tried, found in owned.items() if tried not in removed}


def drill_physical(
    catalog_file: str,
    estate: str,
    database_name: str,
    *,
    backup_id: str,
    scratch: str,
    proven: dict[str, Any] | None = None,
    run_id: str | None = None,
    try_number: int = 1,
) -> dict[str, Any]:
    """Restore a physical backup into a scratch cluster, validate it and stop it, in this one step.

    The server lives from here to the ``finally`` below, on this machine only: nothing has to find
    it later on another worker. First, what earlier tries of the same run left (the ledger's
    ``drill.scratch`` records): stopped and removed when here, named in the log and the result
    (``left_elsewhere``) when on another machine, where this step cannot reach it (the teardown then
    refuses, naming it, and the run fails). The ownership is recorded before the folder is made.

    :return: what :func:`restore` returns, without a live cluster to reach, plus ``validated`` (what
        :func:`validate` returned, None when it failed), ``validate_error``, ``left_elsewhere``.
    :raises CloudOpsError: the restore failed (the cluster was stopped and removed all the same).
    """
    from cloudops.restore.physical import ScratchOwner, scratch_root, stop_and_remove
    from cloudops.restore.physical_plan import cluster_paths

    here = ScratchOwner.here()
    paths = cluster_paths(scratch_root(), estate, scratch)
    left_elsewhere = []
    for tried, found in sorted(scratch_tries_left(estate, database_name, scratch).items()):
        if tried == try_number:
            continue
        if found.is_here():
            log.warning(
                "try %d (%s) left scratch cluster %s: stopping and removing it", tried, found, scratch
            )
            stop_and_remove(paths)
            record_scratch(
                SCRATCH_REMOVED,
                estate,
                database_name,
                scratch,
                run_id=run_id,
                try_number=tried,
                owner=found,
                by=f"try {try_number}",
            )
        else:
            log.error(
                "try %d left scratch cluster %s on %s: this try (on %s) cannot stop it; it may still run "
                "there, and the teardown will say so",
                tried,
                scratch,
                found,
                here,
            )
            left_elsewhere.append({"try_number": tried, "owner": found.to_data(), "scratch": scratch})
    record_scratch(
        SCRATCH_OWNED,
        estate,
        database_name,
        scratch,
        run_id=run_id,
        try_number=try_number,
        owner=here,
        by=f"try {try_number}",
    )
    args = (catalog_file, estate, database_name)
    try:
        restored = restore(
            *args, backup_id=backup_id, scratch=scratch, proven=proven, run_id=run_id, die_with_task=True
        )
        validated, validate_error = None, None
        try:
            validated = validate(
                *args, backup_id=backup_id, scratch=scratch, restored=restored, proven=proven
            )
        except CloudOpsError as error:
            log.error("validation of scratch cluster %s failed: %s", scratch, error)
            validate_error = str(error)
    finally:
        removed = stop_and_remove(paths)
        log.info("scratch cluster %s %s", scratch, "stopped and removed" if removed else "did not exist")
        record_scratch(
            SCRATCH_REMOVED,
            estate,
            database_name,
            scratch,
            run_id=run_id,
            try_number=try_number,
            owner=here,
            by=f"try {try_number}",
        )
    return {
        **restored,
        "validated": validated,
        "validate_error": validate_error,
        "left_elsewhere": left_elsewhere,
        "stopped": True,
    }


def restore_rds(
    catalog_file: str, estate: str, database_name: str, *, backup_id: str, run_id: str
) -> dict[str, Any]:
    """Restore the backup's RDS snapshot into the run's scratch instance; wait (bounded) until available."""
    from cloudops.clouds.aws.rds import restore_rds_drill_instance
    from cloudops.runbooks.backup import aws_conn_id_of

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    if not database.rds_instance_id:
        raise CloudOpsError(f"database {database_name!r} has no rds_instance_id in {catalog_file}")
    return restore_rds_drill_instance(
        aws_conn_id_of(catalog, database),
        database.rds_instance_id,
        database=database.name,
        estate=estate,
        backup_id=backup_id,
        run_id=run_id,
        wait_timeout=RDS_RESTORE_WAIT,
    )


def check_rds(
    catalog_file: str, estate: str, database_name: str, *, restored: dict[str, Any]
) -> dict[str, Any]:
    """Check the scratch RDS instance against its snapshot through the RDS API; return every check."""
    from cloudops.clouds.aws.rds import check_rds_drill_instance
    from cloudops.runbooks.backup import aws_conn_id_of

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    checks = check_rds_drill_instance(
        aws_conn_id_of(catalog, database), restored["scratch_instance"], restored["facts"]
    )
    for check in checks:
        (log.info if check.passed else log.warning)(
            "%s: %s (expected %s, observed %s)",
            check.name,
            "pass" if check.passed else "FAIL",
            check.expected,
            check.observed,
        )
    return {"checks": [c.model_dump(mode="json") for c in checks]}


def teardown_rds(catalog_file: str, estate: str, database_name: str, *, run_id: str) -> dict[str, Any]:
    """Delete the run's scratch RDS instance (guarded: only a drill's own); safe when it never existed."""
    from cloudops.clouds.aws.rds import delete_rds_drill_instance, rds_drill_instance_name
    from cloudops.runbooks.backup import aws_conn_id_of

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    scratch = rds_drill_instance_name(database.name, run_id)
    deleted = delete_rds_drill_instance(
        aws_conn_id_of(catalog, database), scratch, database=database.name, estate=estate
    )
    return {"scratch_instance": scratch, "deleted": deleted}


def record_drill(
    catalog_file: str,
    estate: str,
    database_name: str,
    *,
    run_id: str,
    prepared: dict[str, Any] | None,
    restored: dict[str, Any] | None,
    validated: dict[str, Any] | None,
    rds_restored: dict[str, Any] | None = None,
    rds_checked: dict[str, Any] | None = None,
    rds_torn_down: dict[str, Any] | None = None,
    scratch_left: bool = False,
    error: str | None = None,
) -> dict[str, Any]:
    """Build, log and store the drill record; raise when the drill did not pass.

    The ``rds_*`` results (of ``restore_rds``, ``check_rds``, ``teardown_rds``) are read only for a
    database with ``rds_instance_id``; there, None means that step failed. ``scratch_left``: teardown
    failed, so the scratch target may remain.

    :raises CloudOpsError: a step failed, a check failed, a target was missed or a scratch target or
        RDS instance could not be removed.
    """
    from cloudops.restore.record import Check, DrillRecord, ObjectChecksum, RdsDrill
    from cloudops.runbooks.backup import open_repository

    catalog, database = backed_up_database(catalog_file, estate, database_name)
    if prepared is None:
        raise CloudOpsError(
            f"the drill of {database_name} failed in step prepare, before choosing a backup (no drill record "
            "was stored): see prepare's log"
        )
    store = open_repository(catalog, database)
    manifest = proven_manifest(
        catalog_file, estate, database_name, backup_id=prepared["backup_id"], pin=prepared
    )
    started_at = datetime.fromisoformat(prepared["started_at"])
    gap = _backup_gap(store, database.name, until=started_at)
    missing = [name for name, step in (("restore", restored), ("validate", validated)) if step is None]
    rds = None
    if database.rds_instance_id:
        from cloudops.clouds.aws.rds import rds_drill_instance_name

        rds_scratch = rds_drill_instance_name(database.name, run_id)
        rds_missing = [n for n, s in (("restore_rds", rds_restored), ("check_rds", rds_checked)) if s is None]
        rds = RdsDrill(
            instance_id=database.rds_instance_id,
            snapshot_id=(rds_restored or {}).get("snapshot_id"),
            snapshot_choice=(rds_restored or {}).get("snapshot_choice", ""),
            scratch_instance=rds_scratch,
            checks=[Check(**c) for c in (rds_checked or {}).get("checks", [])],
            restore_seconds=(rds_restored or {}).get("restore_seconds"),
            error=f"step(s) {', '.join(rds_missing)} failed: see their logs" if rds_missing else None,
            cleanup_error=None
            if rds_torn_down is not None
            else f"teardown_rds failed: scratch RDS instance {rds_scratch} may still exist; delete it, or "
            "let the next drill's prepare delete it",
        )
    record = DrillRecord(
        estate=estate,
        database=database.name,
        engine=database.engine,
        backup_id=prepared["backup_id"],
        backup_time=manifest.started_at,
        run_id=run_id,
        scratch_target=prepared["scratch"],
        checksums=[ObjectChecksum(**c) for c in (restored or {}).get("checksums", [])],
        checks=[Check(**c) for c in (validated or {}).get("checks", [])],
        restore_seconds=(restored or {}).get("restore_seconds"),
        validation_seconds=(validated or {}).get("validation_seconds"),
        rto_target_seconds=database.rto.total_seconds() if database.rto else None,
        rpo_target_seconds=database.rpo.total_seconds() if database.rpo else None,
        largest_backup_gap_seconds=gap.seconds if gap else None,
        complete_backups_in_window=gap.backups if gap else None,
        error=error or (f"step(s) {', '.join(missing)} failed: see their logs" if missing else None),
        rds=rds,
        cleanup_error=f"teardown failed: scratch {prepared['scratch']} may remain (see teardown's log); the "
        "next drill's prepare removes it"
        if scratch_left
        else None,
        started_at=started_at,
        finished_at=datetime.now(UTC),
    )
    log.info("restore drill record:\n%s", record.to_table())
    text = record.to_json()
    run_name = run_id.replace(":", "_").replace("+", "_")
    folder = "/".join(
        p for p in (store.prefix.strip("/"), estate, DRILLS_FOLDER, database.name, record.backup_id) if p
    )
    key = f"{folder}/{run_name}.json"
    from cloudops.repository.pipeline import encryption_args, upload_bytes

    upload_bytes(
        store.client,
        store.bucket,
        key,
        text.encode(),
        extra_args=encryption_args(store.repository.encryption),
        content_type="application/json",
    )
    local = evidence_dir() / "drills" / estate / database.name / f"{key.rsplit('/', 1)[-1]}"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(text)
    log.info("drill record stored at s3://%s/%s and %s", store.bucket, key, local)
    from cloudops.evidence.recorder import record as record_evidence
    from cloudops.evidence.runs import DRILL_RECORDED

    record_evidence(
        DRILL_RECORDED,
        dag_id=f"{KIND}__{database.name}",
        run_id=run_id,
        key=f"{DRILL_RECORDED}|{KIND}__{database.name}|{run_id}",
        data={
            **json.loads(text),
            "record_uri": f"s3://{store.bucket}/{key}",
            # True only when every object was re-hashed and matched; None when none was reached.
            "checksums_verified": all(c.ok for c in record.checksums) if record.checksums else None,
            # The manifest drilled, as checked against the ledger (or trusted without a record).
            "manifest_sha256": prepared.get("manifest_sha256"),
            "trusted_repository": bool(prepared.get("trusted_repository")),
        },
    )
    rds_problems = [record.rds.error, record.rds.cleanup_error] if record.rds else []
    if not record.passed or record.cleanup_error or any(rds_problems):
        failed = [c.name for c in record.failed_checks]
        raise CloudOpsError(
            f"restore drill of {database.name} (backup {record.backup_id}) failed: "
            + "; ".join(
                filter(
                    None,
                    [
                        record.error,
                        record.cleanup_error,
                        *(f"RDS: {problem}" for problem in rds_problems if problem),
                        f"failed checks: {', '.join(failed)}" if failed else None,
                        None if record.targets_met else "RTO/RPO target missed",
                    ],
                )
            )
        )
    return {"record": f"s3://{store.bucket}/{key}", "passed": True}


def _backup_gap(store: Any, database_name: str, *, until: datetime) -> Any:
    """The largest gap between complete backups before the drill, from the repository listing.

    :return: a ``BackupGap``, or None when the listing could not be read (the record then says the
        RPO is not proven, and the run fails on it).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from cloudops.restore.record import largest_backup_gap

    try:
        listing = store.list_backups(database_name)
    except (CloudOpsError, BotoCoreError, ClientError, OSError) as error:
        log.warning("backup gap of %s not measured: the listing failed: %s", database_name, error)
        return None
    gap = largest_backup_gap([b.time for b in listing if b.complete], until=until)
    log.info(
        "backup gap of %s: %d complete backup(s) since %s, largest gap %s s",
        database_name,
        gap.backups,
        gap.since.isoformat(timespec="seconds"),
        gap.seconds,
    )
    return gap


def _ti_pull(context: dict[str, Any], task_id: str) -> Any:
    return context["ti"].xcom_pull(task_ids=task_id)


def _prepare_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    return prepare(catalog_file, estate, database_name, run_id=context["run_id"], backup_id="latest")


def _restore_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    prepared = _ti_pull(context, "prepare")
    common = {
        "backup_id": prepared["backup_id"],
        "scratch": prepared["scratch"],
        "proven": prepared,
        "run_id": context["run_id"],
    }
    if prepared.get("method") != "physical":
        return restore(catalog_file, estate, database_name, **common)
    from cloudops.restore.physical import ScratchOwner

    # Before anything is started: teardown must know where a (half-)started scratch cluster lives,
    # even when this step is killed and returns nothing.
    context["ti"].xcom_push(key=OWNER_XCOM, value=ScratchOwner.here().to_data())
    return drill_physical(
        catalog_file, estate, database_name, try_number=int(context["ti"].try_number or 1), **common
    )


def _validate_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    prepared = _ti_pull(context, "prepare")
    restored = _ti_pull(context, "restore")
    if prepared.get("method") == "physical":
        # Validated inside restore, on the machine that ran the scratch server (now stopped).
        if (restored or {}).get("validated") is None:
            raise CloudOpsError(
                f"validation of scratch cluster {prepared['scratch']} failed in the restore step: "
                f"{(restored or {}).get('validate_error') or 'see its log'}"
            )
        return dict(restored["validated"])
    return validate(
        catalog_file,
        estate,
        database_name,
        backup_id=prepared["backup_id"],
        scratch=prepared["scratch"],
        restored=restored,
        proven=prepared,
    )


def _teardown_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    prepared = _ti_pull(context, "prepare")
    teardown(
        catalog_file,
        estate,
        database_name,
        scratch=(prepared or {}).get("scratch"),
        method=(prepared or {}).get("method"),
        owner=context["ti"].xcom_pull(task_ids="restore", key=OWNER_XCOM),
        run_id=context["run_id"],
    )
    # record reads this: no XCom means teardown failed, which must fail the run (record is the leaf).
    return {"scratch": (prepared or {}).get("scratch"), "torn_down": True}


def _restore_rds_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    prepared = _ti_pull(context, "prepare")
    return restore_rds(
        catalog_file, estate, database_name, backup_id=prepared["backup_id"], run_id=context["run_id"]
    )


def _check_rds_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    return check_rds(catalog_file, estate, database_name, restored=_ti_pull(context, "restore_rds"))


def _teardown_rds_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    return teardown_rds(catalog_file, estate, database_name, run_id=context["run_id"])


def _record_task(catalog_file: str, estate: str, database_name: str, **context: Any) -> dict[str, Any]:
    return record_drill(
        catalog_file,
        estate,
        database_name,
        run_id=context["run_id"],
        prepared=_ti_pull(context, "prepare"),
        restored=_ti_pull(context, "restore"),
        validated=_ti_pull(context, "validate"),
        scratch_left=_ti_pull(context, "teardown") is None,
        rds_restored=_ti_pull(context, "restore_rds"),
        rds_checked=_ti_pull(context, "check_rds"),
        rds_torn_down=_ti_pull(context, "teardown_rds"),
    )


def build_restore_drill_dags(loaded: LoadedCatalog) -> list[DAG]:
    """Build ``restore_drill__<database>`` for every database with a backup and a drill policy."""
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG

    from cloudops.runbooks.backup import backup_asset
    from cloudops.runbooks.common import (
        created_paused,
        default_args,
        failure_alerts,
        runbook_doc,
        start_date,
        tags,
    )
    from cloudops.runbooks.scratch_operator import PostgresRestoreScratchClusterOperator

    catalog, dags = loaded.catalog, []
    for database in catalog.databases:
        if database.backup is None or database.drill is None:
            continue
        op_kwargs = {
            "catalog_file": str(loaded.path),
            "estate": catalog.estate,
            "database_name": database.name,
        }
        notifier = failure_alerts(loaded, f"database {database.name}", NEXT_ACTIONS)
        schedule: Any = (
            [backup_asset(catalog, database)]
            if database.drill.schedule == "on_backup"
            else database.drill.schedule
        )
        with DAG(
            dag_id=f"{KIND}__{database.name}",
            description=f"Restore the latest backup of {database.name} into a scratch database and prove it.",
            schedule=schedule,
            start_date=start_date(catalog.timezone),
            catchup=False,
            max_active_runs=1,
            dagrun_timeout=timedelta(hours=8),
            default_args=default_args(
                catalog.owner, alerts=notifier, retries=1, execution_timeout=timedelta(hours=4)
            ),
            is_paused_upon_creation=created_paused(database.drill.paused),
            doc_md=runbook_doc(
                __doc__,
                f"## This database: `{database.name}` ({database.engine})\n\n"
                + (
                    "Physical backups: restored into a scratch cluster on the worker"
                    if database.backup.method == "physical"
                    else f"Scratch restores on connection `{scratch_conn_id(database)}`"
                )
                + "; RTO target "
                f"{database.rto or 'none'}, RPO target {database.rpo or 'none'}.\n\n"
                + (
                    f"RDS instance `{database.rds_instance_id}`: its snapshot is restored into a scratch "
                    "instance `cloudops-drill-...` and deleted after the checks.\n\n"
                    if database.rds_instance_id
                    else ""
                )
                + f"On call: **{catalog.owner}**.",
            ),
            tags=tags(KIND, loaded, database.engine),
        ) as dag:

            def task(task_id: str, callable_: Any, kwargs: dict[str, str] = op_kwargs, **extra: Any) -> Any:
                return PythonOperator(task_id=task_id, python_callable=callable_, op_kwargs=kwargs, **extra)

            prepare_task = task("prepare", _prepare_task)
            # Its on_kill stops a physical drill's scratch server, which lives in this task only.
            restore_task = PostgresRestoreScratchClusterOperator(
                task_id="restore", python_callable=_restore_task, op_kwargs=op_kwargs
            )
            validate_task = task("validate", _validate_task)
            # Scratch databases never leak, and the verdict is recorded whatever failed before.
            teardown_task = task("teardown", _teardown_task, trigger_rule="all_done", retries=2)
            record_task = task("record", _record_task, trigger_rule="all_done", retries=0)
            prepare_task >> restore_task >> validate_task >> teardown_task >> record_task
            if database.rds_instance_id:
                # The RDS snapshot is proven beside the logical backup; its scratch instance never leaks.
                restore_rds_task = task("restore_rds", _restore_rds_task)
                check_rds_task = task("check_rds", _check_rds_task)
                teardown_rds_task = task(
                    "teardown_rds", _teardown_rds_task, trigger_rule="all_done", retries=2
                )
                prepare_task >> restore_rds_task >> check_rds_task >> teardown_rds_task >> record_task
        dags.append(dag)
    return dags


__all__ = [
    "build_restore_drill_dags",
    "check_rds",
    "drill_physical",
    "engine_for",
    "prepare",
    "record_drill",
    "record_scratch",
    "restore",
    "restore_rds",
    "restore_role_options",
    "scratch_tries_left",
    "teardown",
    "teardown_rds",
    "validate",
]
