"""Plan the restore of a PostgreSQL physical backup into a throw-away scratch cluster, and judge it.

A physical backup (``pg_basebackup -Ft -X fetch``, one tar with the WAL it needs) is restored into a
*scratch cluster*: a fresh data directory under the scratch root, started by a throw-away server on a
free loopback port (:mod:`cloudops.restore.physical` does that). This module decides everything that
needs no I/O: where the cluster's files go, the settings the server runs with, what the backup's own
``backup_label`` says, and the checks comparing it with the manifest. Pure: no I/O.

Where: ``<scratch root>/cloudops-scratch-clusters/<estate>/<scratch name>/`` with ``data/`` (the data
directory), ``fetch/`` (the downloaded tar, removed once extracted), ``postgresql.conf``,
``pg_hba.conf``, ``pg_ident.conf`` and ``server.log``. The scratch root is ``$CLOUDOPS_SCRATCH_DIR``,
else the system's temp folder. The scratch name is the drill's (``drill_<database>_<run hash>``,
:mod:`cloudops.engines.scratch`), so a cluster carries its run's id and a drill killed half-way finds
the clusters it left by the catalog database's name.

How it runs: with the drill's settings only (the backup's ``postgresql.conf``, ``pg_hba.conf`` and
``postgresql.auto.conf`` are not used: they may name files, ports, archive commands or libraries of the
source host), no archiving, no unix socket, listening on 127.0.0.1 only, password authentication
(the backup's own roles and passwords), no fsync (nothing in it must survive a crash). Recovery:
``recovery.signal`` with ``recovery_target = 'immediate'``, i.e. stop at the backup's own consistent
point (there is no continuous WAL archive: the backup's tar holds every WAL segment needed), then
promote; ``restore_command`` finds nothing, so WAL is read from the tar's ``pg_wal``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cloudops.engines.scratch import check_scratch, is_scratch_of
from cloudops.errors import RestoreError
from cloudops.restore.record import Check

if TYPE_CHECKING:
    from cloudops.repository.manifest import Manifest

SCRATCH_DIR_ENV = "CLOUDOPS_SCRATCH_DIR"
CLUSTERS_FOLDER = "cloudops-scratch-clusters"
# The Debian layout; one folder per major version, chosen from the backup's PG_VERSION.
DEFAULT_BINDIR = "/usr/lib/postgresql/{major}/bin"
BINDIR_ENV = "CLOUDOPS_PG_BINDIR"
PHYSICAL_FORMAT = "pg_basebackup-tar"
LOOPBACK = "127.0.0.1"
# The backup's files set aside rather than used (see the module docstring); renamed, not deleted.
SET_ASIDE = ("postgresql.auto.conf", "standby.signal")
SET_ASIDE_SUFFIX = ".from-backup"

# The backup's cluster is the attacker's, if anyone's: its pg_db_role_setting (ALTER ROLE/DATABASE
# ... SET) is applied to every session at login, after the server's configuration and command line,
# and may name a library to load into the backend (session_preload_libraries, a file shipped inside
# the data directory) or a search_path that puts its own functions before pg_catalog's. Startup
# options sent by the client take precedence over those settings, so every session cloudops opens
# on a scratch cluster sends these. session_preload_libraries may only be set so by a superuser: a
# backup whose role is not one refuses the connection, and the drill fails rather than load anything.
SESSION_OPTIONS = {
    "session_preload_libraries": "",
    "local_preload_libraries": "",
    "dynamic_library_path": "$libdir",
    "search_path": '"$user",public',
}
# Also on the server's command line (which wins over any configuration file): no library is preloaded
# into the postmaster, whatever a file in the data directory says.
COMMAND_LINE_SETTINGS = {
    "shared_preload_libraries": "",
    "session_preload_libraries": "",
    "local_preload_libraries": "",
    "jit": "off",
}

HBA = """\
# Written by the cloudops restore drill: TCP on 127.0.0.1 only, with the backup's own roles and passwords
# (md5 also accepts SCRAM secrets). No unix socket is opened.
host    all    all    127.0.0.1/32    md5
"""

_ESTATE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


@dataclass(frozen=True)
class ClusterPaths:
    """Where one scratch cluster keeps its files; everything lives inside ``folder``."""

    folder: Path

    @property
    def name(self) -> str:
        """The scratch name (``drill_<database>_<run hash>``), also the server's ``cluster_name``."""
        return self.folder.name

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def fetch_dir(self) -> Path:
        return self.folder / "fetch"

    @property
    def config_file(self) -> Path:
        return self.folder / "postgresql.conf"

    @property
    def hba_file(self) -> Path:
        return self.folder / "pg_hba.conf"

    @property
    def ident_file(self) -> Path:
        return self.folder / "pg_ident.conf"

    @property
    def log_file(self) -> Path:
        return self.folder / "server.log"

    @property
    def description_file(self) -> Path:
        """The cluster's description (port, pids), written as soon as it is known."""
        return self.folder / "cluster.json"


def clusters_root(environ: Mapping[str, str], temp_dir: str) -> Path:
    """The folder of every scratch cluster: ``<$CLOUDOPS_SCRATCH_DIR or temp_dir>/cloudops-scratch-clusters``.

    :param temp_dir: the system's temp folder (``tempfile.gettempdir()``).
    """
    return Path(environ.get(SCRATCH_DIR_ENV) or temp_dir) / CLUSTERS_FOLDER


def cluster_paths(root: Path, estate: str, scratch: str) -> ClusterPaths:
    """Return the paths of scratch cluster ``scratch`` of ``estate`` under ``root`` (:func:`clusters_root`).

    :raises RestoreRefused: ``scratch`` is not a scratch name (the guard every removal relies on).
    :raises ValueError: ``estate`` is not a catalog estate name.
    """
    check_scratch(scratch, action="create or remove a scratch cluster for")
    if not _ESTATE.match(estate):
        raise ValueError(f"{estate!r} is not an estate name (lower-case letters, digits, _)")
    return ClusterPaths(root / estate / scratch)


def leftover_names(names: Iterable[str], database: str) -> list[str]:
    """Of the folder names in an estate's scratch folder, the scratch clusters of ``database``, sorted."""
    return sorted(name for name in names if is_scratch_of(name, database))


def check_restorable(manifest: Manifest) -> None:
    """Refuse a backup this module cannot restore into a scratch cluster, before anything is fetched.

    :raises RestoreError: not a PostgreSQL physical backup in the one-tar format, or not one object.
    """
    where = f"backup {manifest.backup_id} of {manifest.estate}/{manifest.database}"
    if manifest.engine != "postgres" or manifest.method != "physical":
        raise RestoreError(
            f"{where} is a {manifest.engine} {manifest.method} backup, not a PostgreSQL physical one"
        )
    if manifest.format != PHYSICAL_FORMAT or len(manifest.objects) != 1:
        raise RestoreError(
            f"{where} has format {manifest.format!r} with {len(manifest.objects)} object(s): a scratch "
            f"cluster is restored from one {PHYSICAL_FORMAT!r} object"
        )


def major_of(version: str) -> str:
    """The major version of a PostgreSQL version text: ``15.8`` → ``15``, ``9.6.24`` → ``9.6``.

    :raises ValueError: not a version.
    """
    found = re.match(r"^\s*(\d+)(?:\.(\d+))?", version)
    if not found:
        raise ValueError(f"{version!r} is not a PostgreSQL version")
    major = int(found.group(1))
    return str(major) if major >= 10 else f"{major}.{found.group(2) or 0}"


def bindir_for(major: str, environ: Mapping[str, str]) -> Path:
    """The server binaries of PostgreSQL ``major``: ``$CLOUDOPS_PG_BINDIR`` (``{major}`` is filled in)
    or the Debian folder."""
    return Path((environ.get(BINDIR_ENV) or DEFAULT_BINDIR).format(major=major))


def server_settings(paths: ClusterPaths, *, port: int) -> dict[str, str | int]:
    """Every setting the scratch server runs with (its ``postgresql.conf``), recovery included."""
    return {
        "listen_addresses": LOOPBACK,
        "port": port,
        "unix_socket_directories": "",
        "hba_file": str(paths.hba_file),
        "ident_file": str(paths.ident_file),
        "cluster_name": paths.name,
        # Never archive into the source's archive, never stream from its primary.
        "archive_mode": "off",
        "primary_conninfo": "",
        # Off: the source's max_connections and friends need not be matched while recovering.
        "hot_standby": "off",
        "max_connections": 20,
        "shared_buffers": "64MB",
        "shared_preload_libraries": "",
        "fsync": "off",
        "full_page_writes": "off",
        "synchronous_commit": "off",
        "autovacuum": "off",
        "jit": "off",
        "logging_collector": "off",
        "log_destination": "stderr",
        "log_line_prefix": "%m [%p] %q%u@%d ",
        **recovery_settings(),
    }


def recovery_settings() -> dict[str, str]:
    """Recover to the backup's consistent point, then promote; read WAL from ``pg_wal`` only."""
    return {
        "recovery_target": "immediate",
        "recovery_target_action": "promote",
        # Archive recovery needs a restore_command; there is no archive, so it finds nothing and the
        # server reads the WAL segments the backup's tar holds in pg_wal.
        "restore_command": "false",
    }


def session_options() -> str:
    """:data:`SESSION_OPTIONS` as libpq's ``options``: ``-c name=value`` each (no value holds a space)."""
    return " ".join(f"-c {name}={value}" for name, value in SESSION_OPTIONS.items())


def command_line_settings() -> list[str]:
    """:data:`COMMAND_LINE_SETTINGS` as ``postgres`` arguments (``-c name=value`` each)."""
    return [arg for name, value in COMMAND_LINE_SETTINGS.items() for arg in ("-c", f"{name}={value}")]


def render_config(settings: Mapping[str, str | int]) -> str:
    """Render settings as a ``postgresql.conf`` (values quoted, one per line)."""
    lines = ["# Written by the cloudops restore drill: this scratch cluster's only settings."]
    for name, value in settings.items():
        text = str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"


def parse_lsn(text: str) -> int:
    """An LSN (``0/C000028``) as a number.

    :raises ValueError: not an LSN.
    """
    found = _LSN.match(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not an LSN")
    return int(found.group(1), 16) << 32 | int(found.group(2), 16)


@dataclass(frozen=True)
class BackupLabel:
    """What the backup's ``backup_label`` says (written by the server when the backup started)."""

    start_lsn: str
    start_wal_file: str
    checkpoint_lsn: str
    timeline: int
    start_time: str
    backup_from: str


def parse_backup_label(text: str) -> BackupLabel:
    """Parse a ``backup_label`` file.

    :raises ValueError: a line the label must have is missing or malformed.
    """
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    try:
        start = re.match(r"^(\S+) \(file ([0-9A-F]{24})\)$", fields["START WAL LOCATION"])
        if not start:
            raise ValueError(f"START WAL LOCATION {fields['START WAL LOCATION']!r} is malformed")
        parse_lsn(start.group(1))
        parse_lsn(fields["CHECKPOINT LOCATION"])
        return BackupLabel(
            start_lsn=start.group(1),
            start_wal_file=start.group(2),
            checkpoint_lsn=fields["CHECKPOINT LOCATION"],
            timeline=int(fields.get("START TIMELINE", "1")),
            start_time=fields.get("START TIME", ""),
            backup_from=fields.get("BACKUP FROM", "primary"),
        )
    except KeyError as missing:
        raise ValueError(f"backup_label has no {missing.args[0]} line") from None


def version_check(pg_version: str, manifest: Manifest) -> Check:
    """The data directory's PG_VERSION must be the major version the manifest records."""
    expected = major_of(manifest.engine_version)
    observed = pg_version.strip()
    return Check(
        name="server version",
        passed=observed == expected,
        expected=expected,
        observed=observed,
        detail=(
            f"PG_VERSION of the restored data directory (the manifest says {manifest.engine_version})"
            if observed == expected
            else f"the backup holds a PostgreSQL {observed} cluster, the manifest says "
            f"{manifest.engine_version}"
        ),
    )


def position_check(label: BackupLabel, manifest: Manifest) -> Check:
    """The backup's start (its ``backup_label``) must lie in the WAL range the manifest records.

    The manifest's ``lsn_start`` was read before the backup started and ``lsn_end`` after it ended, so
    a backup_label outside that range belongs to another backup than the one the manifest describes.
    """
    start, end = manifest.position.get("lsn_start"), manifest.position.get("lsn_end")
    expected = f"{start} .. {end}"
    if not isinstance(start, str) or not isinstance(end, str):
        return Check(
            name="backup position",
            passed=False,
            expected=expected,
            observed=label.start_lsn,
            detail="the manifest records no lsn_start/lsn_end",
        )
    inside = parse_lsn(start) <= parse_lsn(label.start_lsn) <= parse_lsn(end)
    return Check(
        name="backup position",
        passed=inside,
        expected=expected,
        observed=label.start_lsn,
        detail=(
            f"backup_label start (timeline {label.timeline}, WAL file {label.start_wal_file}) within the "
            "manifest's range"
            if inside
            else "backup_label's start is outside the manifest's WAL range: this tar is another backup"
        ),
    )


def recovery_check(*, in_recovery: bool, timeline: int, label: BackupLabel) -> Check:
    """Recovery must have ended (promoted onto a new timeline) before anything is validated."""
    ended = not in_recovery and timeline > label.timeline
    return Check(
        name="recovery ended",
        passed=ended,
        expected=f"promoted after the backup's consistent point (timeline > {label.timeline})",
        observed=f"{'in recovery' if in_recovery else 'promoted'}, timeline {timeline}",
        detail="" if ended else "the scratch server did not finish recovery",
    )


def databases_check(
    readable: Mapping[str, str | None], required: Iterable[str], *, invalid: Iterable[str] = ()
) -> Check:
    """Every database of the restored cluster must answer a query, and the ``required`` ones must exist.

    :param readable: each database that allows connections → None, or why it could not be read.
    :param required: the catalog's database and the one the manifest's fingerprint is of.
    :param invalid: databases PostgreSQL marks invalid (a DROP DATABASE was under way when the backup
        was taken): unusable on the source too, so named but not held against the backup.
    """
    missing = sorted(set(required) - set(readable))
    broken = {name: error for name, error in sorted(readable.items()) if error is not None}
    passed = not missing and not broken and bool(readable)
    notes = [
        *([f"missing: {', '.join(missing)}"] if missing else []),
        *(f"{name}: {error}" for name, error in broken.items()),
        *(["every database answered a query"] if passed else []),
    ]
    if skipped := sorted(invalid):
        notes.append(f"skipped, being dropped when the backup was taken: {', '.join(skipped)}")
    return Check(
        name="databases",
        passed=passed,
        expected=", ".join(sorted(set(required))),
        observed=", ".join(sorted(readable)),
        detail="; ".join(notes),
    )


__all__ = [
    "BINDIR_ENV",
    "CLUSTERS_FOLDER",
    "COMMAND_LINE_SETTINGS",
    "DEFAULT_BINDIR",
    "HBA",
    "PHYSICAL_FORMAT",
    "SCRATCH_DIR_ENV",
    "SESSION_OPTIONS",
    "SET_ASIDE",
    "BackupLabel",
    "ClusterPaths",
    "bindir_for",
    "check_restorable",
    "cluster_paths",
    "clusters_root",
    "command_line_settings",
    "databases_check",
    "leftover_names",
    "major_of",
    "parse_backup_label",
    "parse_lsn",
    "position_check",
    "recovery_check",
    "recovery_settings",
    "render_config",
    "server_settings",
    "session_options",
    "version_check",
]
