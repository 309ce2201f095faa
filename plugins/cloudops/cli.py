"""The `cloudops` command: validate catalogs, run the local sandbox, and act when Airflow is down.

Exit codes: 0 success, 1 the action failed, 2 invalid input (a bad catalog, a bad argument).
Standard output carries the command's output only (with ``--json``, one JSON document); logs,
progress and errors go to standard error, so that ``cloudops ... --json | jq`` always parses.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any, TextIO

from cloudops.errors import CloudOpsError, InvalidInputError

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
Handler = Callable[[argparse.Namespace], int]
log = logging.getLogger("cloudops.cli")

# The stream the running command's output goes to: stdout as main() found it. While a command runs,
# sys.stdout itself points at stderr, so that whatever else writes to "stdout" (Airflow's log
# handler, configured when a command first imports Airflow; libraries' progress output; the
# sandbox's progress lines) lands on stderr and never in the output.
_output: TextIO | None = None


# Shadows the builtin on purpose: every print of this module is the command's output.
def print(
    *values: object, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False
) -> None:
    """The command's output (to the real stdout), or ``file`` when one is given (stderr)."""
    builtins.print(*values, sep=sep, end=end, file=file or _output or sys.stdout, flush=flush)


def _validate(args: argparse.Namespace) -> int:
    """Validate catalog files; print every issue with file, line and field."""
    from cloudops.catalog import load_catalogs

    result = load_catalogs(args.paths or None)
    for issue in result.issues:
        print(issue, file=sys.stderr)
    for loaded in result.catalogs:
        catalog = loaded.catalog
        print(
            f"ok {loaded.path}: estate {catalog.estate!r}, {len(catalog.databases)} databases, "
            f"{len(catalog.fleets)} fleets, {len(catalog.hosts)} hosts"
        )
    if not result.catalogs and not result.errors:
        print("no catalog files found", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_INVALID if result.errors else EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    """Write the catalog's JSON Schema, or check that the written one is current."""
    from cloudops.catalog.schema import catalog_schema_text

    text = catalog_schema_text()
    target = Path(args.output)
    if args.check:
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            print(f"{target} is out of date: run `cloudops schema --output {target}`", file=sys.stderr)
            return EXIT_FAILED
        print(f"{target} is current")
        return EXIT_OK
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return EXIT_OK


def _sandbox(args: argparse.Namespace) -> int:
    """Start, stop or show the local sandbox estate."""
    from cloudops.sandbox import estate

    if args.action == "prepare":
        from cloudops.sandbox.layout import SandboxLayout
        from cloudops.sandbox.patroni import prepare_patroni_venv

        prepare_patroni_venv(SandboxLayout.from_environment(), estate.say)
        return EXIT_OK
    if args.action == "up":
        estate.up()
    elif args.action == "down":
        estate.down()
    rows = estate.status()
    print(estate.format_status(rows))
    return EXIT_OK


def _deployment(args: argparse.Namespace) -> int:
    """Start, stop or show the local CeleryExecutor deployment on the sandbox (`make up-celery`)."""
    from cloudops.deployment.local import LocalDeployment, instance
    from cloudops.sandbox import estate
    from cloudops.sandbox.layout import SandboxLayout

    deployment = LocalDeployment(SandboxLayout.from_environment(), instance(args.instance))
    if args.action == "up":
        deployment.up(estate.say)
    elif args.action == "down":
        deployment.down(estate.say)
    rows = [
        estate.ComponentStatus(name, address, pid, state) for name, address, pid, state in deployment.status()
    ]
    print(estate.format_status(rows))
    if args.action == "up":
        print(deployment.banner())
    return EXIT_OK


def _sandbox_hosts(args: argparse.Namespace) -> int:
    """More hosts for benchmarks, their reset to first-boot state, and stopping/starting single hosts."""
    from cloudops.sandbox import estate

    names = tuple(getattr(args, "names", ()) or ())
    fleet = getattr(args, "fleet", None)
    if args.hosts_action == "add":
        estate.add_hosts(args.fleet, args.count)
    elif args.hosts_action == "remove":
        estate.remove_hosts(args.fleet)
    elif args.hosts_action == "reset":
        estate.reset_hosts(fleet=fleet, names=names)
    elif args.hosts_action == "stop":
        estate.stop_hosts(names)
    else:
        estate.start_hosts(names)
    print(estate.format_status([row for row in estate.status() if row.component.startswith("host-")]))
    return EXIT_OK


def _sandbox_publish(args: argparse.Namespace) -> int:
    """Publish a demo package version into the sandbox's apt repository, with its advisory if any."""
    from datetime import UTC, datetime

    from cloudops.patching.advisories import AdvisoryFileError, parse_advisories
    from cloudops.sandbox import apt_repo
    from cloudops.sandbox.layout import SandboxLayout

    advisory = None
    if args.advisory is not None:
        entry = {
            "id": args.advisory,
            "package": args.package,
            "fixed_version": args.version,
            "cves": args.cve,
            "severity": args.severity,
            "published": (args.published or datetime.now(UTC).date()).isoformat(),
        }
        try:
            (advisory,) = parse_advisories(json.dumps({"format": 1, "advisories": [entry]}), "--advisory")
        except AdvisoryFileError as error:
            raise InvalidInputError(str(error)) from None
    elif args.cve or args.published:
        raise InvalidInputError("--cve and --published describe an advisory: give its id with --advisory")
    layout = SandboxLayout.from_environment()
    deb = apt_repo.publish(
        layout, args.package, args.version, args.suite, advisory=advisory, breaks_health=args.breaks_health
    )
    print(f"published {args.package} {args.version} in {args.suite}: {deb}")
    if advisory is not None:
        print(
            f"advisory {advisory.id} ({advisory.severity}, {', '.join(advisory.cves)}) in "
            f"{apt_repo.repository_dir(layout) / apt_repo.ADVISORIES_FILE}"
        )
    return EXIT_OK


def _read_json(path: str, what: str) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidInputError(f"{what} {path}: cannot read: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{what} {path}:{error.lineno}: not valid JSON: {error.msg}") from None


def _retention_plan(args: argparse.Namespace) -> int:
    """Print the retention plan for a policy and a list of backups, as JSON."""
    from cloudops.repository.retention import parse_backups, plan_retention, policy_from_json

    policy = policy_from_json(_read_json(args.policy, "policy"))
    backups = parse_backups(_read_json(args.backups, "backups"))
    plan = plan_retention(
        backups,
        policy,
        max_delete_share=args.max_delete_share,
        allow_large_delete=args.allow_large_delete,
    )
    print(json.dumps(plan.to_json(), indent=2))
    return EXIT_OK


def _find_database(name: str) -> tuple[Any, Any]:
    """The catalog and database called ``name``, across every catalog file."""
    from cloudops.catalog import load_catalogs
    from cloudops.catalog.errors import did_you_mean

    result = load_catalogs()
    names = []
    for loaded in result.catalogs:
        for database in loaded.catalog.databases:
            if database.name == name:
                return loaded.catalog, database
            names.append(database.name)
    hint = did_you_mean(name, names)
    raise InvalidInputError(f"no database {name!r} in the catalog" + (f" ({hint})" if hint else ""))


def _failover(args: argparse.Namespace) -> int:
    """A failover drill without Airflow, or the pools the drills need."""
    from cloudops.runbooks import failover_drill

    if args.failover_command == "pools":
        from cloudops.catalog import load_catalogs

        print(json.dumps(failover_drill.required_pools(load_catalogs().catalogs), indent=2))
        return 0
    return failover_drill.cli_drill(
        args.cluster, dry_run=args.dry_run, mode=args.mode, candidate=args.candidate
    )


def _patch(args: argparse.Namespace) -> int:
    """Scan a fleet's hosts for pending updates, or read their compliance (nothing is changed)."""
    from cloudops.health import render_table
    from cloudops.runbooks import patch_wave

    if args.patch_command == "scan":
        report = patch_wave.scan_report(args.fleet)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            rows = [
                [
                    host,
                    u["package"],
                    u["installed"],
                    u["candidate"],
                    u["classification"],
                    "held" if u["held"] else "",
                ]
                for host, data in report["hosts"].items()
                for u in data["pending"]
            ]
            print(render_table(["host", "package", "installed", "candidate", "classification", "hold"], rows))
            for host, data in report["hosts"].items():
                if data["reboot_required"]:
                    print(
                        f"{host}: reboot required "
                        f"({', '.join(data['reboot_required_packages']) or 'no package named'})"
                    )
    else:
        report = patch_wave.status_report(args.fleet)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            rows = [
                [host, p["package"], p["state"], p["found"] or "-", p["wanted"], p["classification"]]
                for host, data in report["hosts"].items()
                for p in data["packages"]
            ]
            print(render_table(["host", "package", "state", "installed", "snapshot", "classification"], rows))
            print(report["summary"])
    for cause in report["unreachable"].values():
        print(f"unreachable: {cause}", file=sys.stderr)
    return EXIT_FAILED if report["unreachable"] else EXIT_OK


def _backups_list(args: argparse.Namespace) -> int:
    """List what the repository holds for one database, newest first."""
    from cloudops.health import render_table
    from cloudops.runbooks.backup import open_repository

    catalog, database = _find_database(args.database)
    if database.backup is None:
        raise InvalidInputError(f"database {database.name!r} has no backup policy in the catalog")
    backups = sorted(open_repository(catalog, database).list_backups(database.name), key=lambda b: b.time)
    backups.reverse()
    if args.json:
        print(json.dumps([_backup_json(b) for b in backups], indent=2))
        return EXIT_OK
    rows = [
        [
            b.backup_id,
            "complete" if b.complete else "INCOMPLETE",
            f"{b.size / 1e6:.1f} MB",
            b.locked_until.isoformat() if b.locked_until else "-",
            "; ".join(b.problems) or (b.manifest.format if b.manifest else ""),
        ]
        for b in backups
    ]
    print(render_table(["backup", "state", "stored", "locked until", "format / problems"], rows))
    print(f"{len(backups)} backups of {database.name}, {sum(b.complete for b in backups)} complete")
    return EXIT_OK


def _report_monthly(args: argparse.Namespace) -> int:
    """Make an estate's monthly report without Airflow: what monthly_report__<estate> does (store under
    Object Lock, record in the ledger, e-mail the PDF), with the two files also written to --out."""
    from datetime import UTC, datetime

    from cloudops.catalog import load_catalogs
    from cloudops.catalog.errors import did_you_mean
    from cloudops.evidence.recorder import cli_run
    from cloudops.runbooks import monthly_report

    estates = {loaded.catalog.estate: loaded.catalog for loaded in load_catalogs().catalogs}
    if args.estate not in estates:
        hint = did_you_mean(args.estate, estates) or "estates: " + ", ".join(sorted(estates))
        raise InvalidInputError(f"no estate {args.estate!r} in the catalog ({hint})")
    catalog = estates[args.estate]
    now = datetime.now(UTC)
    month = monthly_report.report_month(args.month, catalog, now)
    out = Path(args.out)
    conf = {"month": month, "out": str(out), "send": not args.no_email}
    with cli_run(f"{monthly_report.KIND}__{catalog.estate}", conf=conf) as context:
        result = monthly_report.produce(catalog, month, context, now=now, out_dir=out)
        for item in result["files"]:
            print(f"{out / item['name']}  sha256 {item['sha256']}  s3://{item['bucket']}/{item['key']}")
        if not args.no_email:
            stored = next(item for item in result["files"] if item["kind"] == "pdf")
            sent = monthly_report.email_report(catalog, result, monthly_report.fetch_stored(catalog, stored))
            print(f"sent to {', '.join(sent)}")
    return EXIT_OK


def _backup_run(args: argparse.Namespace) -> int:
    """Take one backup now, outside Airflow: backup__<database>'s steps, recorded in the ledger as a run
    of that runbook by this OS user (take_backup, verify_backup, then apply_retention if asked)."""
    from cloudops.evidence.recorder import cli_run
    from cloudops.runbooks.backup import apply_retention, take_backup, verify_backup

    catalog, database = _find_database(args.database)
    if database.backup is None:
        raise InvalidInputError(f"database {database.name!r} has no backup policy in the catalog")
    catalog_file = _catalog_file_of(catalog.estate)
    conf = {"database": database.name, "retention": args.retention, "dry_run": args.dry_run}
    with cli_run(f"backup__{database.name}", conf=conf) as context:
        manifest = take_backup(
            catalog_file,
            catalog.estate,
            database.name,
            run_id=context["run_id"],
            # who ran the command, as the command's other facts carry it
            triggered_by={k: context[k] for k in ("triggered_by", "triggered_by_user")},
        )
        # take_backup itself records backup.taken (manifest hash and version) under this run's id.
        stored = manifest["compressed_bytes"]
        source = manifest["source"]
        print(
            f"backup {manifest['backup_id']} of {database.name} complete: {stored} bytes stored, read from "
            f"{source['member']} ({source['role']}): {source['reason']}"
        )
        verified = verify_backup(
            catalog_file, catalog.estate, database.name, backup_id=manifest["backup_id"], evidence=context
        )
        print(f"backup {manifest['backup_id']} verified: {verified['reason']}")
        if args.retention:
            plan = apply_retention(
                catalog_file,
                catalog.estate,
                database.name,
                dry_run=args.dry_run,
                allow_large_delete=False,
                evidence=context,
                verified_now=verified,
            )
            print(json.dumps(plan, indent=2))
    return EXIT_OK


def _recorded_as(dag_id: str) -> Callable[[Handler], Handler]:
    """Record a command as a run of the runbook ``dag_id`` in the ledger (see ``recorder.cli_run``).

    The handler finds the run's context in ``args.evidence``, for its facts; an exit code other than 0
    records the run as failed, as an error does.
    """

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            from cloudops.evidence.recorder import cli_run

            conf = {k: v for k, v in vars(args).items() if k not in ("handler", "evidence")}
            with cli_run(dag_id, conf=conf) as context:
                args.evidence = context
                code = handler(args)
                context["exit_code"] = code
                return code

        return run

    return wrap


@_recorded_as("restore_request")
def _restore(args: argparse.Namespace) -> int:
    """Restore a backup into a new database without Airflow (the same checks as restore_request): into a
    staging copy first, renamed to the target only after the checks pass."""
    from cloudops.catalog import load_catalogs
    from cloudops.runbooks.restore_request import (
        check_request,
        drop_staging,
        put_in_place,
        restore_backup,
        restored_into,
        verify_restore,
    )

    request = check_request(
        load_catalogs(),
        database=args.database,
        backup_id=args.backup,
        target=args.target,
        point_in_time=args.point_in_time,
        confirm_overwrite=args.confirm_overwrite,
        trust_repository=args.trust_repository,
    )
    if request.overwrite:
        raise InvalidInputError(
            "--confirm-overwrite: a restore over an existing database needs a second person's approval, "
            "which only the restore_request runbook in Airflow records; from a shell, restore into a new "
            "database (--target NEW_NAME) and switch over"
        )
    # The ledger's run id for this command (cloudops.evidence.recorder.cli_run): the staging copy is
    # named after it, like a restore_request run's.
    run_id = args.evidence["run_id"]
    staging = restored_into(request, run_id)
    renaming: list[str] = []
    try:
        restored = restore_backup(request, run_id=run_id)
        verified = verify_restore(request, restored["backup_id"], restored=staging, proven=restored)
        placed = put_in_place(
            request, run_id=run_id, approval=None, requested_by=None, announce=renaming.append
        )
    except BaseException:
        if renaming:
            # The rename began and did not report its end: the staging copy may hold the restore.
            log.error(
                "KEPT the staging copy %s: renaming it to %s started and its end is unknown; check both",
                staging,
                request.target,
            )
        else:
            try:
                drop_staging(request, run_id)  # nothing under the final name; a retry starts clean
            except Exception as error:
                log.error("could not drop the staging copy %s: %s", staging, error)
        raise
    from cloudops.evidence.recorder import record_fact
    from cloudops.evidence.runs import RESTORE_PERFORMED

    # The same fact restore_request records, so that auditors see shell restores too.
    record_fact(
        RESTORE_PERFORMED,
        args.evidence,
        {
            "estate": request.estate,
            "database": request.database,
            "backup_id": restored["backup_id"],
            "target_database": request.target,
            "overwrite": False,
            "replaced": placed["replaced"],
            "kept_as": None,
            "requested_by": args.evidence["triggered_by_user"],
            "approved_by": None,
            "via": "cloudops restore",
            "checks": verified["checks"],
            "manifest_sha256": restored.get("manifest_sha256"),
            "trusted_repository": bool(restored.get("trusted_repository")),
        },
    )
    print(
        f"restored backup {restored['backup_id']} of {request.database} into {request.target} in "
        f"{restored['seconds']:.1f} s; {verified['checks']} checks against the manifest passed"
    )
    return EXIT_OK


def _catalog_file_of(estate: str) -> str:
    from cloudops.catalog import load_catalogs

    return next(str(loaded.path) for loaded in load_catalogs().catalogs if loaded.catalog.estate == estate)


def _backup_json(backup: Any) -> dict[str, Any]:
    return {
        "id": backup.backup_id,
        "time": backup.time.isoformat(),
        "complete": backup.complete,
        "size": backup.size,
        "locked_until": backup.locked_until.isoformat() if backup.locked_until else None,
        "tags": sorted(backup.tags),
        "problems": backup.problems,
    }


def _evidence_verify(args: argparse.Namespace) -> int:
    """Check the ledger's chain (with --s3 also what was shipped); name the first problem."""
    from cloudops.evidence.backend import open_ledger

    if args.pack:
        return _evidence_verify_pack(args.pack)
    ledger = open_ledger(args.ledger)
    verdict = ledger.verify()
    if not verdict.ok:
        print(f"local ledger {ledger.where}: {verdict.problem}", file=sys.stderr)
        return EXIT_FAILED
    print(f"local ledger {ledger.where}: {verdict.records} records, chain intact to seq {verdict.last_seq}")
    for repair in verdict.repairs:
        print(f"local ledger {ledger.where}: repaired at {repair}")
    return _evidence_verify_s3(ledger, args.ledger_id) if args.s3 else EXIT_OK


def _evidence_verify_pack(directory: str) -> int:
    """Check an evidence pack: its manifest's hashes and sizes, and the chain of its records."""
    from cloudops.evidence.export import verify_pack

    if not Path(directory).is_dir():
        raise InvalidInputError(f"--pack {directory}: not a directory")
    verdict = verify_pack(directory)
    for problem in verdict.problems:
        print(f"pack {directory}: {problem}", file=sys.stderr)
    if not verdict.ok:
        return EXIT_FAILED
    print(f"pack {directory}: every file matches the manifest; {verdict.records} records, chain intact")
    return EXIT_OK


def _day(text: str) -> date:
    """An argparse type: a YYYY-MM-DD date (argparse names the option in its error)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _evidence_export(args: argparse.Namespace) -> int:
    """Write the evidence pack of a period (records, report by control, manifest of hashes)."""
    from cloudops.evidence.backend import open_ledger
    from cloudops.evidence.export import export_pack

    if args.since > args.until:
        raise InvalidInputError(f"--from {args.since} is after --to {args.until}")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInputError(f"--out {out}: not an empty directory (a pack goes into a new or empty one)")
    pack = export_pack(open_ledger(args.ledger), args.since, args.until, out)
    counts = pack.manifest["counts"]
    print(
        f"evidence pack {out}: {pack.anchors.records} records (seq {pack.anchors.first_seq} to "
        f"{pack.anchors.last_seq}), {counts['runs']} runs, {counts['backup_runs']} backup runs, "
        f"{counts['drills']} drills, {counts['changes']} changes"
    )
    return EXIT_OK


def _evidence_runs(args: argparse.Namespace) -> int:
    """List the ledger's runbook runs (newest first) with their outcome and facts."""
    from cloudops.catalog.errors import did_you_mean
    from cloudops.evidence.backend import open_ledger
    from cloudops.evidence.runs import RUNBOOK_KINDS, fold_runs, select_runs

    if args.kind and args.kind not in RUNBOOK_KINDS:
        hint = did_you_mean(args.kind, RUNBOOK_KINDS) or "one of " + ", ".join(sorted(RUNBOOK_KINDS))
        raise InvalidInputError(f"--kind {args.kind}: not a runbook kind ({hint})")
    ledger = open_ledger(args.ledger)
    verdict = ledger.verify()
    runs = select_runs(fold_runs(ledger.records()), since=args.since, runbook=args.kind, target=args.target)
    runs.sort(key=lambda run: run.started_at or run.day, reverse=True)
    log.info(
        "%d run(s) of %d records in %s match (kind %s, target %s, since %s)",
        len(runs),
        verdict.records,
        ledger.where,
        args.kind or "any",
        args.target or "any",
        args.since or "the start",
    )
    if args.json:
        print(json.dumps([_run_json(run) for run in runs], indent=2, ensure_ascii=False))
    else:
        from cloudops.health import render_table

        rows = [
            [
                run.started_at or run.day,
                run.runbook,
                run.target or "-",
                run.state,
                run.triggered_by_user or run.triggered_by or "-",
                ", ".join(_fact_summary(fact) for fact in run.facts) or "-",
                run.run_id,
            ]
            for run in runs
        ]
        print(render_table(["started", "runbook", "target", "outcome", "triggered by", "facts", "run"], rows))
        print(f"{len(runs)} run(s)")
    if not verdict.ok:
        print(
            f"error: local ledger {ledger.where}: {verdict.problem}: the runs above come from a chain "
            "that does not verify",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _run_json(run: Any) -> dict[str, Any]:
    return {
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "runbook": run.runbook,
        "target": run.target,
        "outcome": run.state,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "triggered_by": run.triggered_by,
        "triggered_by_user": run.triggered_by_user,
        "conf": run.conf,
        "step_tries": len(run.steps),
        "failed_steps": sorted(
            {
                str(s.fields.get("task_id"))
                for s in run.steps
                if (s.fields.get("data") or {}).get("state") == "failed"
            }
        ),
        "facts": [
            {"kind": f.kind, "seq": f.seq, "at": f.at, "hash": f.hash, "data": f.fields.get("data") or {}}
            for f in run.facts
        ],
    }


def _fact_summary(fact: Any) -> str:
    data = fact.fields.get("data") or {}
    if "passed" in data:
        return f"{fact.kind} {'passed' if data['passed'] else 'FAILED'}"
    return f"{fact.kind} {data['backup_id']}" if data.get("backup_id") else fact.kind


def _evidence_verify_s3(ledger: Any, ledger_id: str | None) -> int:
    """Check the shipped segments and their signed digests in S3, and compare them with the ledger."""
    from cloudops.evidence.shipping import verify_shipped

    verdict = verify_shipped(ledger, ledger_id=ledger_id)
    if not verdict.ok:
        print(f"shipped evidence: {verdict.problem}", file=sys.stderr)
        return EXIT_FAILED
    waiting = f"; {len(verdict.pending)} closed day(s) not shipped yet" if verdict.pending else ""
    print(
        f"shipped evidence: {verdict.days} day(s), {verdict.records} records, digests signed and chained, "
        f"chain intact to seq {verdict.last_seq}{waiting}"
    )
    return EXIT_OK


def _evidence_ship(args: argparse.Namespace) -> int:
    """Ship the ledger's closed day segments to S3, each closed by a signed digest."""
    from cloudops.evidence.backend import open_ledger
    from cloudops.evidence.shipping import ship_closed_segments

    print(ship_closed_segments(open_ledger(args.ledger)).summary())
    return EXIT_OK


def _evidence_migrate(args: argparse.Namespace) -> int:
    """Copy the file ledger into the PostgreSQL ledger and verify the copy record for record."""
    from cloudops.evidence.backend import DB_SCHEMA_ENV, db_conn_id
    from cloudops.evidence.ledger import Ledger
    from cloudops.evidence.migration import migrate_to_postgres
    from cloudops.evidence.pg_ledger import PgLedger

    source = Ledger(args.ledger)
    schema = args.schema or os.environ.get(DB_SCHEMA_ENV) or "cloudops_ledger"
    target = PgLedger(args.conn_id or db_conn_id(), schema=schema)
    print(migrate_to_postgres(source, target).summary())
    return EXIT_OK


def _probe_run(args: argparse.Namespace) -> int:
    """Sample every SLO target once a minute until stopped (SIGTERM or Ctrl-C)."""
    from datetime import timedelta

    from cloudops.probes.process import build_runner, quiet_library_logs, run_forever

    quiet_library_logs()
    runner = build_runner(
        args.catalog or None,
        samples=args.samples,
        interval=timedelta(seconds=args.interval),
        database_timeout=timedelta(seconds=args.database_timeout),
        host_timeout=timedelta(seconds=args.host_timeout),
        estates=args.estate or (),
    )
    for target in runner.targets:
        log.info(
            "will probe %s at +%.1fs (bound %gs)",
            target.used_by,
            target.offset,
            target.timeout.total_seconds(),
        )
    run_forever(runner)
    return EXIT_OK


def _probe_status(args: argparse.Namespace) -> int:
    """What the probe process last said; exit 1 when it said nothing for longer than --max-age."""
    from datetime import UTC, datetime

    from cloudops.probes.coverage import samples_root
    from cloudops.probes.runner import STATE_FILE, read_state

    path = samples_root(args.samples) / STATE_FILE
    state = read_state(path)
    if state is None:
        print(f"no probe process has written {path} yet", file=sys.stderr)
        return EXIT_FAILED
    age = (datetime.now(UTC) - datetime.fromisoformat(str(state["at"]))).total_seconds()
    print(json.dumps({**state, "age_seconds": round(age, 1)}, indent=1))
    if age > args.max_age:
        print(f"the probe process last wrote {age:.0f} s ago (more than {args.max_age:g} s)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _probe_coverage(args: argparse.Namespace) -> int:
    """Expected vs recorded samples per SLO target of one estate over the last hours."""
    from datetime import UTC, datetime, timedelta

    from cloudops.catalog import load_catalogs
    from cloudops.probes.coverage import coverage, estate_store, minute_floor

    loaded = load_catalogs(args.catalog or None)
    catalog = next((item.catalog for item in loaded.catalogs if item.catalog.estate == args.estate), None)
    if catalog is None:
        raise InvalidInputError(f"no estate {args.estate!r} in the catalogs")
    keys = list(dict.fromkeys(target.key for slo in catalog.slos for target in slo.targets))
    end = minute_floor(datetime.now(UTC))
    start = end - timedelta(hours=args.hours)
    rows = coverage(estate_store(catalog.estate, args.samples), keys, start, end)
    if args.json:
        document = [
            {**vars(row), "percent": float(row.percent), "start": start.isoformat(), "end": end.isoformat()}
            for row in rows
        ]
        print(json.dumps(document, indent=1))
        return EXIT_OK
    print(f"{'TARGET':<32} {'EXPECTED':>8} {'RECORDED':>8} {'FAILED':>6} {'COVERAGE':>8}")
    for row in rows:
        print(
            f"{row.target:<32} {row.expected:>8} {row.recorded:>8} {row.failed:>6} "
            f"{float(row.percent):>7.2f}%"
        )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="cloudops", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="validate catalog files (exit 2 when invalid)")
    validate.add_argument(
        "paths", nargs="*", help="files or directories (default: $CLOUDOPS_CATALOG or runbooks/)"
    )
    validate.set_defaults(handler=_validate)

    schema = commands.add_parser("schema", help="write the catalog JSON Schema")
    schema.add_argument("--output", default="runbooks/schema/catalog.schema.json")
    schema.add_argument("--check", action="store_true", help="fail when the file is out of date")
    schema.set_defaults(handler=_schema)

    retention = commands.add_parser("retention", help="retention planning")
    retention_commands = retention.add_subparsers(dest="retention_command", required=True)
    plan = retention_commands.add_parser(
        "plan", help="print which backups a policy keeps and deletes, as JSON (deletes nothing)"
    )
    plan.add_argument("--policy", required=True, help="JSON object of keep_* rules")
    plan.add_argument(
        "--backups",
        required=True,
        help='JSON list of {"id", "time", "tags"?, "complete"?, "locked_until"?, "proof"?}; only backups '
        'with proof "verified" or "drill_passed" count toward keep_* (default "unverified")',
    )
    plan.add_argument("--max-delete-share", type=float, default=0.5, help="default 0.5")
    plan.add_argument("--allow-large-delete", action="store_true", help="allow deleting more than the share")
    plan.set_defaults(handler=_retention_plan)

    patch = commands.add_parser("patch", help="OS updates of a fleet: pending updates and compliance")
    patch_commands = patch.add_subparsers(dest="patch_command", required=True)
    for name, text in (
        ("scan", "pending updates per host with their classification (apt-get update + a simulation)"),
        ("status", "compliance per host and package, read from the hosts"),
    ):
        command = patch_commands.add_parser(name, help=text)
        command.add_argument("fleet", help="a catalog fleet with a patching policy")
        command.add_argument("--json", action="store_true", help="print one JSON document")
        command.set_defaults(handler=_patch)

    failover = commands.add_parser("failover", help="failover drills of the catalog's clusters")
    failover_commands = failover.add_subparsers(dest="failover_command", required=True)
    drill = failover_commands.add_parser(
        "drill", help="run failover_drill__<cluster> without Airflow (recorded in the ledger)"
    )
    drill.add_argument("cluster", help="a catalog cluster with a drill policy")
    drill.add_argument("--dry-run", action="store_true", help="preflight only: log the plan, move nothing")
    drill.add_argument("--mode", choices=["planned", "crash"], default="planned")
    drill.add_argument(
        "--candidate", default=None, help="the replica to promote (default: the first streaming)"
    )
    drill.set_defaults(handler=_failover)
    pools = failover_commands.add_parser(
        "pools", help="the Airflow pools the drills need, as JSON for `airflow pools import`"
    )
    pools.set_defaults(handler=_failover)

    backups = commands.add_parser("backups", help="what the backup repositories hold")
    backups_commands = backups.add_subparsers(dest="backups_command", required=True)
    listing = backups_commands.add_parser("list", help="list a database's backups, newest first")
    listing.add_argument("database", help="a catalog database name")
    listing.add_argument("--json", action="store_true", help="print JSON (usable as retention plan input)")
    listing.set_defaults(handler=_backups_list)

    run = backups_commands.add_parser("run", help="take a backup now, outside Airflow")
    run.add_argument("database", help="a catalog database name")
    run.add_argument("--retention", action="store_true", help="apply the retention policy afterwards")
    run.add_argument("--dry-run", action="store_true", help="with --retention: only print the plan")
    run.set_defaults(handler=_backup_run)

    restore = commands.add_parser("restore", help="restore a backup into a new database, without Airflow")
    restore.add_argument("database", help="a catalog database name")
    restore.add_argument("--backup", default="latest", help="'latest' (default) or a backup id")
    restore.add_argument("--target", required=True, help="the new database to restore into")
    restore.add_argument("--point-in-time", default=None, help="not supported yet")
    restore.add_argument(
        "--confirm-overwrite",
        action="store_true",
        help="refused here: overwrites need restore_request's approval",
    )
    restore.add_argument(
        "--trust-repository",
        action="store_true",
        help="restore a backup that has no backup.taken record in this ledger (imported, or taken by "
        "another machine) as the bucket holds it; refused without this, and recorded in the ledger",
    )
    restore.set_defaults(handler=_restore)

    report = commands.add_parser("report", help="the monthly report of an estate")
    report_commands = report.add_subparsers(dest="report_command", required=True)
    monthly = report_commands.add_parser(
        "monthly", help="make, store (Object Lock), record and e-mail a month's report, without Airflow"
    )
    monthly.add_argument("estate", help="the catalog's estate name")
    monthly.add_argument("--month", help="YYYY-MM, a month that is over (default: the month before)")
    monthly.add_argument("--out", required=True, help="folder the HTML and PDF are written to")
    monthly.add_argument("--no-email", action="store_true", help="store and record, but send no e-mail")
    monthly.set_defaults(handler=_report_monthly)

    sandbox = commands.add_parser("sandbox", help="the local sandbox estate")
    sandbox_commands = sandbox.add_subparsers(dest="action", required=True)
    for action, text in (
        ("prepare", "build what `up` needs and cannot download itself: Patroni's venv (cached)"),
        ("up", "start what runbooks/sandbox.yaml describes (idempotent)"),
        ("down", "stop what up started"),
        ("status", "show what runs where"),
    ):
        sandbox_commands.add_parser(action, help=text).set_defaults(handler=_sandbox)
    publish = sandbox_commands.add_parser(
        "publish",
        help="publish a new version of a demo package into the sandbox's apt repository "
        "(hosts see it after apt-get update; older versions stay)",
    )
    publish.add_argument("package", help="a demo package: demo-openssl, demo-kernel, demo-web, ...")
    publish.add_argument("version", help="a Debian version without epoch, e.g. 1.2")
    publish.add_argument(
        "--suite", required=True, choices=["cloudops-updates", "cloudops-security"], help="where it goes"
    )
    publish.add_argument("--breaks-health", action="store_true", help="demo-web only: its health says FAIL")
    publish.add_argument("--advisory", default=None, metavar="ID", help="an advisory id, e.g. CSA-2026-010")
    publish.add_argument("--cve", action="append", default=[], help="with --advisory: a CVE id (repeatable)")
    publish.add_argument(
        "--severity", default="unknown", help="with --advisory: critical, high, medium, low or unknown"
    )
    publish.add_argument(
        "--published", type=_day, default=None, metavar="DATE", help="with --advisory: default today (UTC)"
    )
    publish.set_defaults(handler=_sandbox_publish)
    hosts = sandbox_commands.add_parser(
        "hosts", help="more hosts, hosts back to their first-boot state, one host down and back"
    )
    hosts_commands = hosts.add_subparsers(dest="hosts_action", required=True)
    hosts_add = hosts_commands.add_parser("add", help="a fleet of more hosts (connections in airflow.env)")
    hosts_add.add_argument("--fleet", required=True, help="the fleet's name, e.g. bench")
    hosts_add.add_argument("--count", type=int, required=True, help="how many hosts")
    hosts_remove = hosts_commands.add_parser("remove", help="stop and forget a fleet added with add")
    hosts_remove.add_argument("--fleet", required=True)
    hosts_reset = hosts_commands.add_parser("reset", help="hosts back to their first-boot state")
    hosts_reset.add_argument("--fleet", default=None, help="only this fleet's hosts")
    hosts_reset.add_argument("names", nargs="*", help="only these hosts (default: every host)")
    for verb, text in (("stop", "stop hosts (they become unreachable)"), ("start", "boot stopped hosts")):
        one = hosts_commands.add_parser(verb, help=text)
        one.add_argument("names", nargs="+", help="host names")
    for sub in hosts_commands.choices.values():
        sub.set_defaults(handler=_sandbox_hosts)

    deployment = commands.add_parser(
        "deployment", help="the local CeleryExecutor deployment on the sandbox (make up-celery)"
    )
    deployment_commands = deployment.add_subparsers(dest="action", required=True)
    for action, text in (
        ("up", "start api-server, scheduler, dag-processor, triggerer and two Celery workers (idempotent)"),
        ("down", "stop them (the metadata database stays)"),
        ("status", "show what runs where"),
    ):
        sub = deployment_commands.add_parser(action, help=text)
        sub.add_argument("--instance", default="celery", help="celery (make up-celery) or celery-e2e (tests)")
        sub.set_defaults(handler=_deployment)

    evidence = commands.add_parser("evidence", help="the evidence ledger")
    evidence_commands = evidence.add_subparsers(dest="evidence_command", required=True)
    evidence_verify = evidence_commands.add_parser(
        "verify", help="check the ledger's chain and name the first bad record (exit 1)"
    )
    evidence_verify.add_argument(
        "--ledger",
        default=None,
        help="a file ledger folder; default: the configured backend ($CLOUDOPS_EVIDENCE_BACKEND)",
    )
    evidence_verify.add_argument(
        "--pack", default=None, metavar="DIR", help="check an evidence pack instead of the ledger"
    )
    evidence_verify.set_defaults(handler=_evidence_verify)
    evidence_verify.add_argument(
        "--s3", action="store_true", help="also check the segments and signed digests shipped to S3"
    )
    evidence_verify.add_argument("--ledger-id", default=None, help="with --s3: default the ledger's own")
    ship = evidence_commands.add_parser(
        "ship", help="ship closed day segments to S3 with signed digests (settings: CLOUDOPS_EVIDENCE_*)"
    )
    ship.add_argument(
        "--ledger",
        default=None,
        help="a file ledger folder; default: the configured backend ($CLOUDOPS_EVIDENCE_BACKEND)",
    )
    ship.set_defaults(handler=_evidence_ship)
    export = evidence_commands.add_parser(
        "export", help="write an evidence pack of a period: records, report by control, manifest"
    )
    export.add_argument("--from", dest="since", type=_day, required=True, metavar="DATE", help="first day")
    export.add_argument("--to", dest="until", type=_day, required=True, metavar="DATE", help="last day (UTC)")
    export.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    export.add_argument(
        "--ledger",
        default=None,
        help="a file ledger folder; default: the configured backend ($CLOUDOPS_EVIDENCE_BACKEND)",
    )
    export.set_defaults(handler=_evidence_export)
    runs = evidence_commands.add_parser(
        "runs", help="list runbook runs with their outcome and facts, newest first (exit 1: chain broken)"
    )
    runs.add_argument("--kind", default=None, help="a runbook kind: backup, restore_drill, ...")
    runs.add_argument("--target", default=None, help="a target: database, fleet or estate name")
    runs.add_argument(
        "--since", type=_day, default=None, metavar="DATE", help="runs started on or after (UTC)"
    )
    runs.add_argument("--json", action="store_true", help="print a JSON list (and nothing else on stdout)")
    runs.add_argument(
        "--ledger",
        default=None,
        help="a file ledger folder; default: the configured backend ($CLOUDOPS_EVIDENCE_BACKEND)",
    )
    runs.set_defaults(handler=_evidence_runs)
    migrate = evidence_commands.add_parser(
        "migrate",
        help="copy the file ledger into the PostgreSQL ledger and verify the copy (refuses another chain)",
    )
    migrate.add_argument("--to", dest="to", required=True, choices=["postgres"], help="the target backend")
    migrate.add_argument(
        "--ledger", default=None, help="the file ledger; default: $CLOUDOPS_EVIDENCE_DIR/ledger"
    )
    migrate.add_argument(
        "--conn-id",
        default=None,
        help="the target's Airflow connection; default: $CLOUDOPS_EVIDENCE_DB_CONN_ID",
    )
    migrate.add_argument(
        "--schema", default="cloudops_ledger", help="the target schema (default cloudops_ledger)"
    )
    migrate.set_defaults(handler=_evidence_migrate)

    probe = commands.add_parser("probe", help="minute-level availability probes of the SLO targets")
    probe_commands = probe.add_subparsers(dest="probe_command", required=True)
    probe_run = probe_commands.add_parser("run", help="sample every SLO target once a minute until stopped")
    probe_cov = probe_commands.add_parser("coverage", help="expected vs recorded samples per target")
    for sub in (probe_run, probe_cov):
        sub.add_argument(
            "--catalog",
            action="append",
            help="catalog file or directory (repeatable; default $CLOUDOPS_CATALOG)",
        )
        sub.add_argument("--samples", default=None, help="sample directory (default $CLOUDOPS_PROBE_SAMPLES)")
    probe_run.add_argument("--estate", action="append", help="only this estate (repeatable; default: all)")
    probe_run.add_argument(
        "--interval", type=float, default=60.0, help="seconds between samples (default 60)"
    )
    probe_run.add_argument(
        "--database-timeout", type=float, default=10.0, help="bound of a database probe (s)"
    )
    probe_run.add_argument("--host-timeout", type=float, default=15.0, help="bound of a host probe (s)")
    probe_run.set_defaults(handler=_probe_run)
    probe_status = probe_commands.add_parser(
        "status", help="what the probe process last wrote (a health check)"
    )
    probe_status.add_argument(
        "--samples", default=None, help="sample directory (default $CLOUDOPS_PROBE_SAMPLES)"
    )
    probe_status.add_argument(
        "--max-age", type=float, default=150.0, help="exit 1 when its last batch is older (s; default 150)"
    )
    probe_status.set_defaults(handler=_probe_status)
    probe_cov.add_argument("estate")
    probe_cov.add_argument("--hours", type=float, default=24.0, help="how far back from now (default 24)")
    probe_cov.add_argument("--json", action="store_true")
    probe_cov.set_defaults(handler=_probe_coverage)
    return parser


@contextlib.contextmanager
def _output_only_on_stdout() -> Iterator[None]:
    """Send logs to stderr and keep stdout for the command's output, for the command's duration.

    Logging goes to stderr: our own handler when nothing is configured yet, and any handler already
    writing to stdout (Airflow's, when Airflow was imported first) is pointed at stderr meanwhile.
    """
    global _output
    real_stdout, stderr = sys.stdout, sys.stderr
    root = logging.getLogger()
    ours: logging.Handler | None = None
    moved: list[logging.StreamHandler[Any]] = []
    if not root.handlers:
        ours = logging.StreamHandler(stderr)
        ours.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(ours)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (real_stdout, sys.__stdout__):
            handler.setStream(stderr)
            moved.append(handler)
    _output, sys.stdout = real_stdout, stderr
    try:
        yield
    finally:
        sys.stdout, _output = real_stdout, None
        if ours is not None:
            root.removeHandler(ours)
        for handler in moved:
            handler.setStream(real_stdout)
        for handler in root.handlers:  # Airflow configured its logging during the command
            if (
                isinstance(handler, logging.StreamHandler)
                and handler.stream is stderr
                and handler not in moved
            ):
                handler.setStream(sys.__stderr__ or stderr)
        with contextlib.suppress(Exception):
            real_stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors of ours print one clear message instead of a traceback."""
    args = build_parser().parse_args(argv)
    with _output_only_on_stdout():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.handler(args))
    except InvalidInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except CloudOpsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "main"]
