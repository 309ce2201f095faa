"""Cross-checks between catalog sections and across catalog files: names exist and are unique."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from cloudops.catalog.cluster_references import cluster_problems
from cloudops.catalog.errors import did_you_mean
from cloudops.catalog.models import Catalog, Fleet

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class ReferenceProblem:
    """A broken or duplicated name, at ``path`` in the catalog."""

    path: Path
    message: str
    hint: str | None = None


def _duplicates(section: str, names: list[str]) -> list[ReferenceProblem]:
    counts = Counter(names)
    seen: set[str] = set()
    problems = []
    for index, name in enumerate(names):
        if counts[name] > 1 and name in seen:
            first = names.index(name)
            problems.append(
                ReferenceProblem(
                    (section, index, "name"),
                    f"duplicate name {name!r} (already used by {section}[{first}])",
                )
            )
        seen.add(name)
    return problems


def _missing(path: Path, section: str, what: str, name: str, known: Iterable[str]) -> ReferenceProblem:
    """An unknown name used at ``path``: ``what`` is one item of ``section`` (a repository)."""
    names = sorted(known)
    hint = did_you_mean(name, names) or (
        f"{section} defines: {', '.join(names)}" if names else f"the catalog defines no {section}"
    )
    return ReferenceProblem(path, f"unknown {what} {name!r}", hint)


def check_references(catalog: Catalog) -> list[ReferenceProblem]:
    """Check that every name used is defined once and that clusters have one primary."""
    problems: list[ReferenceProblem] = []
    for section in (
        "clouds",
        "repositories",
        "databases",
        "clusters",
        "fleets",
        "slos",
        "notifications",
        "endpoints",
    ):
        problems += _duplicates(section, [item.name for item in getattr(catalog, section)])
    host_names = [host.name for _, host in catalog.hosts]
    for index, (fleet, host) in enumerate(catalog.hosts):
        if host_names.index(host.name) != index:
            at = fleet.hosts.index(host)
            problems.append(
                ReferenceProblem(
                    ("fleets", catalog.fleets.index(fleet), "hosts", at, "name"),
                    f"duplicate host name {host.name!r}: host names are unique across fleets",
                )
            )

    clouds = {cloud.name for cloud in catalog.clouds}
    for index, repository in enumerate(catalog.repositories):
        if repository.cloud not in clouds:
            problems.append(
                _missing(("repositories", index, "cloud"), "clouds", "cloud", repository.cloud, clouds)
            )

    for index, fleet in enumerate(catalog.fleets):
        if fleet.snapshots and fleet.snapshots.cloud not in clouds:
            problems.append(
                _missing(
                    ("fleets", index, "snapshots", "cloud"), "clouds", "cloud", fleet.snapshots.cloud, clouds
                )
            )

    for index, fleet in enumerate(catalog.fleets):
        problems += _patching_references(index, fleet)

    repositories = {repository.name for repository in catalog.repositories}
    for index, database in enumerate(catalog.databases):
        if database.backup and database.backup.repository not in repositories:
            problems.append(
                _missing(
                    ("databases", index, "backup", "repository"),
                    "repositories",
                    "repository",
                    database.backup.repository,
                    repositories,
                )
            )
        if database.role == "replica" and not database.cluster:
            problems.append(
                ReferenceProblem(
                    ("databases", index, "role"),
                    "a replica needs a cluster: name the cluster it shares with its primary",
                )
            )
    problems += service_level_references(catalog)

    primaries = Counter(d.cluster for d in catalog.databases if d.cluster and d.role == "primary")
    for index, database in enumerate(catalog.databases):
        if database.cluster and primaries[database.cluster] != 1:
            count = primaries[database.cluster]
            problems.append(
                ReferenceProblem(
                    ("databases", index, "cluster"),
                    f"cluster {database.cluster!r} has {count} primaries; it needs exactly one",
                )
            )
    problems += [ReferenceProblem(path, message, hint) for path, message, hint in cluster_problems(catalog)]
    problems += _missing_scratch_servers(catalog)
    problems += primary_scratch_servers(catalog, primaries_by_conn(catalog, ""))
    return problems


def _patching_references(index: int, fleet: Fleet) -> list[ReferenceProblem]:
    """A patching policy names hosts and a canary group of its own fleet."""
    policy = fleet.patching
    if policy is None:
        return []
    problems = []
    names = [host.name for host in fleet.hosts]
    for at, name in enumerate(policy.baseline.excluded_hosts):
        if name not in names:
            problems.append(
                _missing(
                    ("fleets", index, "patching", "baseline", "excluded_hosts", at),
                    f"hosts of fleet {fleet.name!r}",
                    "excluded host",
                    name,
                    names,
                )
            )
    group = policy.waves.canary_group
    groups = {g for host in fleet.hosts for g in host.groups}
    if group is not None and group not in groups:
        problems.append(
            _missing(
                ("fleets", index, "patching", "waves", "canary_group"),
                f"host groups of fleet {fleet.name!r}",
                "canary group",
                group,
                groups,
            )
        )
    return problems


def service_level_references(catalog: Catalog) -> list[ReferenceProblem]:
    """SLO targets, the cost settings' clouds and the report's SMTP notification exist."""
    problems: list[ReferenceProblem] = []
    known = {
        "database": ("databases", {database.name for database in catalog.databases}),
        "host": ("hosts of the fleets", {host.name for _, host in catalog.hosts}),
        "endpoint": ("endpoints", {endpoint.name for endpoint in catalog.endpoints}),
    }
    for index, slo in enumerate(catalog.slos):
        seen: set[str] = set()
        for at, target in enumerate(slo.targets):
            section, names = known[target.kind]
            if target.name not in names:
                problems.append(
                    _missing(("slos", index, "targets", at, "name"), section, target.kind, target.name, names)
                )
            if target.key in seen:
                problems.append(
                    ReferenceProblem(("slos", index, "targets", at), f"target {target.key} is listed twice")
                )
            seen.add(target.key)
    clouds = {cloud.name for cloud in catalog.clouds}
    if catalog.cost is not None:
        if catalog.cost.cloud not in clouds:
            problems.append(_missing(("cost", "cloud"), "clouds", "cloud", catalog.cost.cloud, clouds))
        export = catalog.cost.focus_export
        if export is not None and export.cloud not in clouds:
            problems.append(
                _missing(("cost", "focus_export", "cloud"), "clouds", "cloud", export.cloud, clouds)
            )
    smtp = {n.name for n in catalog.notifications if n.kind == "smtp"}
    wanted = catalog.reports.smtp_notification if catalog.reports else None
    if wanted is not None and wanted not in smtp:
        problems.append(
            _missing(("reports", "smtp_notification"), "smtp notifications", "notification", wanted, smtp)
        )
    repositories = {repository.name: repository for repository in catalog.repositories}
    keeper = catalog.reports.repository if catalog.reports else None
    if keeper is not None:
        if keeper not in repositories:
            problems.append(
                _missing(("reports", "repository"), "repositories", "repository", keeper, repositories)
            )
        elif repositories[keeper].object_lock is None:
            problems.append(
                ReferenceProblem(
                    ("reports", "repository"),
                    f"repository {keeper!r} has no object_lock: reports are kept under Object Lock",
                )
            )
    return problems


@dataclass(frozen=True)
class PrimaryServer:
    """A primary (production data): where it is defined, and whether drills may restore onto its server."""

    where: str
    database: str
    scratch_allowed: bool


def primaries_by_conn(catalog: Catalog, where: str) -> dict[str, list[PrimaryServer]]:
    """The catalog's primaries by connection id; ``where`` names the file in messages ("" for the file
    being checked)."""
    found: dict[str, list[PrimaryServer]] = {}
    for index, database in enumerate(catalog.databases):
        if database.role == "primary":
            found.setdefault(database.conn_id, []).append(
                PrimaryServer(f"{where} databases[{index}]".lstrip(), database.name, database.scratch_allowed)
            )
    return found


def _missing_scratch_servers(catalog: Catalog) -> list[ReferenceProblem]:
    """A drill of a logical backup names its scratch server: there is no default (the primary was)."""
    return [
        ReferenceProblem(
            ("databases", index, "drill", "scratch_conn_id"),
            "a drill needs a scratch_conn_id: it restores a full copy of the database, which must land "
            "on a scratch server of its own, never on the primary (there is no default)",
            "add `scratch_conn_id: <connection of a scratch server>` under drill",
        )
        for index, database in enumerate(catalog.databases)
        if database.drill is not None
        and database.drill.scratch_conn_id is None
        and (database.backup is None or database.backup.method == "logical")
    ]


def primary_scratch_servers(
    catalog: Catalog, primaries: dict[str, list[PrimaryServer]]
) -> list[ReferenceProblem]:
    """Refuse a drill whose scratch server is a primary's connection (``primaries``, from
    :func:`primaries_by_conn` of this file or of every other file loaded together), unless every
    primary on that connection sets ``scratch_allowed``."""
    problems = []
    for index, database in enumerate(catalog.databases):
        conn_id = database.drill.scratch_conn_id if database.drill else None
        refused = [p for p in primaries.get(conn_id or "", []) if not p.scratch_allowed]
        if refused:
            named = ", ".join(f"{p.database!r} ({p.where})" for p in refused)
            problems.append(
                ReferenceProblem(
                    ("databases", index, "drill", "scratch_conn_id"),
                    f"scratch_conn_id {conn_id!r} is the connection of primary {named}: a drill would "
                    "restore a full copy onto that server",
                    "name a scratch server of its own, or set `scratch_allowed: true` on that database "
                    "if its server is meant to receive scratch restores",
                )
            )
    return problems


def cross_catalog_duplicates(
    catalog: Catalog,
    claimed: dict[tuple[str, str], tuple[str, int | None]],
    file: str,
    lines: dict[Path, int],
) -> list[ReferenceProblem]:
    """Claim this catalog's DAG-id names in ``claimed``; report names another file claimed first.

    A catalog with a clash claims nothing, so that its DAGs are not built at all.
    """
    wanted: list[tuple[tuple[str, str], Path]] = [(("estate", catalog.estate), ("estate",))]
    wanted += [(("database", d.name), ("databases", i, "name")) for i, d in enumerate(catalog.databases)]
    wanted += [(("fleet", f.name), ("fleets", i, "name")) for i, f in enumerate(catalog.fleets)]
    wanted += [(("cluster", c.name), ("clusters", i, "name")) for i, c in enumerate(catalog.clusters)]
    problems = []
    for key, path in wanted:
        if key in claimed:
            other_file, other_line = claimed[key]
            where = f"{other_file}:{other_line}" if other_line else other_file
            problems.append(ReferenceProblem(path, f"{key[0]} name {key[1]!r} is already defined in {where}"))
    if not problems:
        for key, path in wanted:
            claimed[key] = (file, lines.get(path))
    return problems


__all__ = [
    "PrimaryServer",
    "ReferenceProblem",
    "check_references",
    "cross_catalog_duplicates",
    "primaries_by_conn",
    "primary_scratch_servers",
    "service_level_references",
]
