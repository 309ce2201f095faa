"""Plan a wave's snapshot: the exact ``package=version`` every host gets, and what was left out and why.

The snapshot is fleet-wide (SSM Patch Manager's Snapshot ID): one version per package for every host,
the newest approved candidate any host reported. It is recorded in the ledger and in XCom before any
host changes, and read back to resume a halted wave; what is read back is untrusted and validated by
:func:`snapshot_from_json`.

Approval, per pending update, first rule that applies:
1. the host is in ``excluded_hosts`` -> left out (``excluded``);
2. the package is ``rejected`` -> left out (``rejected``);
3. the package is held on the host (``apt-mark hold``) -> left out (``held``);
4. the package is ``approved`` -> in, whatever its classification or age;
5. its classification is not in ``classifications`` -> left out (``classification``);
6. an advisory for that version exists: in once ``approve_after_days`` have passed since it was
   published, otherwise left out (``not_yet_approved``, with the days to go);
7. no advisory: in when approve_after_days is 0, else left out (``no_advisory``): with no date the age
   cannot be known, so list the package in ``approved`` to take it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from cloudops.catalog.errors import did_you_mean
from cloudops.catalog.models import PatchBaseline
from cloudops.errors import InvalidInputError
from cloudops.patching.debian_version import compare_versions
from cloudops.patching.model import Advisory, Classification, HostScan, PackagePin

SNAPSHOT_FORMAT = 1
MAX_SNAPSHOT_HOSTS = 10_000
MAX_PINS_PER_HOST = 5_000
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+._-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9.+~:_-]{1,128}$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
LEFT_OUT_KINDS = frozenset(
    {"excluded", "unreachable", "rejected", "held", "classification", "not_yet_approved", "no_advisory"}
)


class UnknownPackageError(InvalidInputError):
    """The baseline's approved or rejected list names a package no host of the fleet has or can get."""


class SnapshotInvalidError(InvalidInputError):
    """A snapshot read back (from the ledger or XCom) is malformed or does not match its id."""


@dataclass(frozen=True)
class LeftOut:
    """One pending update the snapshot does not install on one host, and why (``kind`` in LEFT_OUT_KINDS)."""

    host: str
    package: str
    version: str
    kind: str
    reason: str
    classification: Classification = Classification.OTHER


@dataclass(frozen=True)
class Snapshot:
    """The fleet-wide plan: pins per host (sorted by package), what was left out, the hosts excluded."""

    fleet: str
    planned_on: date
    pins: Mapping[str, tuple[PackagePin, ...]]
    left_out: tuple[LeftOut, ...]
    excluded_hosts: tuple[str, ...]

    @property
    def snapshot_id(self) -> str:
        """A stable id: the hash of what would be installed where (not of when it was planned)."""
        content = json.dumps(
            {"fleet": self.fleet, "pins": _pins_json(self.pins), "excluded": list(self.excluded_hosts)},
            sort_keys=True,
            separators=(",", ":"),
        )
        return "snap-" + hashlib.sha256(content.encode()).hexdigest()[:20]

    @property
    def versions(self) -> dict[str, str]:
        """package -> version of the snapshot (the same on every host)."""
        return {pin.package: pin.version for pins in self.pins.values() for pin in pins}

    @property
    def empty(self) -> bool:
        return not any(self.pins.values())

    def summary(self) -> str:
        """One line for the log: the id, how many pins on how many hosts, how many left out."""
        hosts = sum(1 for pins in self.pins.values() if pins)
        versions = ", ".join(f"{p}={v}" for p, v in sorted(self.versions.items())) or "nothing"
        return (
            f"snapshot {self.snapshot_id} of fleet {self.fleet!r}: {versions} on {hosts} host(s); "
            f"{len(self.left_out)} update(s) left out; excluded: {', '.join(self.excluded_hosts) or 'none'}"
        )


def _pins_json(pins: Mapping[str, Sequence[PackagePin]]) -> dict[str, list[dict[str, str]]]:
    return {
        host: [
            {
                "package": p.package,
                "version": p.version,
                "previous": p.previous,
                "classification": str(p.classification),
            }
            for p in host_pins
        ]
        for host, host_pins in sorted(pins.items())
    }


def _advisory_for(advisories: Iterable[Advisory], package: str, version: str) -> Advisory | None:
    """The advisory of exactly that version, else the newest advisory fixed at or below it."""
    candidates = [a for a in advisories if a.package == package]
    exact = [a for a in candidates if a.fixed_version == version]
    if exact:
        return min(exact, key=lambda a: a.published)
    older = [a for a in candidates if _safe_compare(a.fixed_version, version) <= 0]
    return max(older, key=lambda a: a.published) if older else None


def _safe_compare(left: str, right: str) -> int:
    try:
        return compare_versions(left, right)
    except ValueError:
        return 1  # an unparsable advisory version never approves anything


def plan_snapshot(
    fleet: str,
    scans: Sequence[HostScan],
    advisories: Sequence[Advisory],
    baseline: PatchBaseline,
    today: date,
    unreachable: Sequence[str] = (),
) -> Snapshot:
    """Plan the snapshot of ``fleet`` from every reachable host's scan, as of ``today``.

    ``unreachable`` hosts (no scan; the policy said exclude_and_report) get no pins and one left-out
    entry of kind ``unreachable`` so the report names them.

    :raises UnknownPackageError: when approved or rejected names a package no scanned host has
        installed or pending (a typo would otherwise silently approve or reject nothing).
    """
    known = {u.package for scan in scans for u in scan.pending} | {
        package for scan in scans for package in scan.installed
    }
    for listed, what in ((baseline.approved, "approved"), (baseline.rejected, "rejected")):
        unknown = sorted(set(listed) - known)
        if unknown:
            hints = [h for h in (did_you_mean(name, known) for name in unknown) if h]
            raise UnknownPackageError(
                f"fleet {fleet!r}: patching.baseline.{what} names package(s) no host has installed or "
                f"pending: {', '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else "")
            )

    excluded = set(baseline.excluded_hosts)
    approved_candidates: dict[str, list[tuple[str, Classification]]] = {}
    left_out: list[LeftOut] = []
    chosen: dict[str, list[tuple[str, str, Classification]]] = {}  # host -> (package, installed, class)
    classifications: set[str] = {str(c) for c in baseline.classifications}
    for scan in sorted(scans, key=lambda s: s.host):
        for update in sorted(scan.pending, key=lambda u: u.package):
            out = _leave_out(
                scan,
                update.package,
                update.candidate,
                update.classification,
                excluded,
                baseline,
                classifications,
                advisories,
                today,
            )
            if out is not None:
                left_out.append(
                    LeftOut(
                        scan.host, update.package, update.candidate, out[0], out[1], update.classification
                    )
                )
                continue
            approved_candidates.setdefault(update.package, []).append(
                (update.candidate, update.classification)
            )
            chosen.setdefault(scan.host, []).append((update.package, update.installed, update.classification))

    fleet_version: dict[str, tuple[str, Classification]] = {}
    for package, candidates in approved_candidates.items():
        newest = candidates[0]
        for candidate in candidates[1:]:
            if compare_versions(candidate[0], newest[0]) > 0:
                newest = candidate
        fleet_version[package] = newest

    pins: dict[str, tuple[PackagePin, ...]] = {}
    for scan in sorted(scans, key=lambda s: s.host):
        if scan.host in excluded:
            continue
        pins[scan.host] = tuple(
            PackagePin(package, fleet_version[package][0], installed, fleet_version[package][1])
            for package, installed, _ in chosen.get(scan.host, [])
        )
    for scan in scans:
        if scan.host in excluded and not any(o.host == scan.host for o in left_out):
            left_out.append(LeftOut(scan.host, "*", "", "excluded", "host is in baseline.excluded_hosts"))
    for host in sorted(set(unreachable)):
        left_out.append(
            LeftOut(host, "*", "", "unreachable", "host did not answer the scan: left out of this wave")
        )
    return Snapshot(fleet, today, pins, tuple(left_out), tuple(sorted(excluded)))


def _leave_out(
    scan: HostScan,
    package: str,
    version: str,
    classification: Classification,
    excluded: set[str],
    baseline: PatchBaseline,
    classifications: set[str],
    advisories: Sequence[Advisory],
    today: date,
) -> tuple[str, str] | None:
    """Why this update stays out of the snapshot (kind, reason), or None when it is approved."""
    if scan.host in excluded:
        return "excluded", "host is in baseline.excluded_hosts"
    if package in baseline.rejected:
        return "rejected", f"{package} is in baseline.rejected ({baseline.rejected_action})"
    if package in scan.held:
        return (
            "held",
            f"{package} is held on {scan.host} (apt-mark hold); "
            f"it stays at {scan.installed.get(package, '?')}",
        )
    if package in baseline.approved:
        return None
    if str(classification) not in classifications:
        return "classification", (
            f"classification {classification} is not in the baseline ({', '.join(sorted(classifications))})"
        )
    advisory = _advisory_for(advisories, package, version)
    if advisory is None:
        if baseline.approve_after_days == 0:
            return None
        return "no_advisory", (
            f"no advisory dates {package} {version}, so approve_after_days={baseline.approve_after_days} "
            "cannot be counted; list it in baseline.approved to take it"
        )
    approved_on = advisory.published + timedelta(days=baseline.approve_after_days)
    if today < approved_on:
        days = (approved_on - today).days
        return "not_yet_approved", (
            f"not approved yet: {days} day(s) to go (advisory {advisory.id} published "
            f"{advisory.published.isoformat()}, approve_after_days={baseline.approve_after_days})"
        )
    return None


def snapshot_to_json(snapshot: Snapshot) -> dict[str, Any]:
    """The snapshot as plain JSON values, for the ledger and XCom; read back with snapshot_from_json."""
    return {
        "format": SNAPSHOT_FORMAT,
        "snapshot_id": snapshot.snapshot_id,
        "fleet": snapshot.fleet,
        "planned_on": snapshot.planned_on.isoformat(),
        "pins": _pins_json(snapshot.pins),
        "left_out": [
            {
                "host": o.host,
                "package": o.package,
                "version": o.version,
                "kind": o.kind,
                "reason": o.reason,
                "classification": str(o.classification),
            }
            for o in snapshot.left_out
        ],
        "excluded_hosts": list(snapshot.excluded_hosts),
    }


def _text(value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise SnapshotInvalidError(f"snapshot: {what} {str(value)[:80]!r} is not valid")
    return value


def snapshot_from_json(
    data: object, *, fleet: str, hosts: Iterable[str], expected_id: str | None = None
) -> Snapshot:
    """Read a snapshot back from the ledger or XCom, trusting nothing in it.

    Checks the shape, sizes, names and versions, that it is ``fleet``'s and names only ``hosts`` of
    the catalog, and that its content still hashes to its id (and to ``expected_id`` when given).

    :raises SnapshotInvalidError: naming the first thing wrong.
    """
    if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotInvalidError(f"snapshot: not a format {SNAPSHOT_FORMAT} snapshot object")
    if data.get("fleet") != fleet:
        raise SnapshotInvalidError(
            f"snapshot: it is for fleet {str(data.get('fleet'))[:80]!r}, not {fleet!r}"
        )
    known_hosts = set(hosts)
    raw_pins = data.get("pins")
    if not isinstance(raw_pins, dict) or len(raw_pins) > MAX_SNAPSHOT_HOSTS:
        raise SnapshotInvalidError("snapshot: pins must be an object of at most 10000 hosts")
    pins: dict[str, tuple[PackagePin, ...]] = {}
    for host, items in raw_pins.items():
        _text(host, _HOST, "host")
        if host not in known_hosts:
            raise SnapshotInvalidError(f"snapshot: host {host!r} is not a host of fleet {fleet!r}")
        if not isinstance(items, list) or len(items) > MAX_PINS_PER_HOST:
            raise SnapshotInvalidError(f"snapshot: pins of {host!r} must be a list of at most 5000")
        host_pins = []
        for item in items:
            if not isinstance(item, dict):
                raise SnapshotInvalidError(f"snapshot: a pin of {host!r} is not an object")
            try:
                classification = Classification(str(item.get("classification")))
            except ValueError:
                raise SnapshotInvalidError(
                    f"snapshot: a pin of {host!r} has an unknown classification"
                ) from None
            previous = item.get("previous")
            host_pins.append(
                PackagePin(
                    _text(item.get("package"), _PACKAGE, "package"),
                    _text(item.get("version"), _VERSION, "version"),
                    "" if previous == "" else _text(previous, _VERSION, "previous version"),
                    classification,
                )
            )
        pins[host] = tuple(host_pins)
    left_out = []
    raw_left = data.get("left_out", [])
    if not isinstance(raw_left, list) or len(raw_left) > MAX_SNAPSHOT_HOSTS * 10:
        raise SnapshotInvalidError("snapshot: left_out must be a bounded list")
    for item in raw_left:
        if not isinstance(item, dict) or item.get("kind") not in LEFT_OUT_KINDS:
            raise SnapshotInvalidError("snapshot: a left_out entry is malformed")
        reason = item.get("reason")
        if not isinstance(reason, str) or len(reason) > 1000:
            raise SnapshotInvalidError("snapshot: a left_out reason is not a short string")
        package = item.get("package")
        try:
            left_classification = Classification(str(item.get("classification", "other")))
        except ValueError:
            raise SnapshotInvalidError("snapshot: a left_out entry has an unknown classification") from None
        left_out.append(
            LeftOut(
                _text(item.get("host"), _HOST, "host"),
                "*" if package == "*" else _text(package, _PACKAGE, "package"),
                "" if item.get("version") == "" else _text(item.get("version"), _VERSION, "version"),
                str(item["kind"]),
                reason,
                left_classification,
            )
        )
    excluded = data.get("excluded_hosts", [])
    if not isinstance(excluded, list) or any(h not in known_hosts for h in excluded):
        raise SnapshotInvalidError(f"snapshot: excluded_hosts must list hosts of fleet {fleet!r}")
    try:
        planned_on = date.fromisoformat(str(data.get("planned_on")))
    except ValueError:
        raise SnapshotInvalidError("snapshot: planned_on is not a date") from None
    snapshot = Snapshot(fleet, planned_on, pins, tuple(left_out), tuple(str(h) for h in excluded))
    for claimed, what in ((data.get("snapshot_id"), "its recorded id"), (expected_id, "the expected id")):
        if claimed is not None and claimed != snapshot.snapshot_id:
            raise SnapshotInvalidError(
                f"snapshot: content hashes to {snapshot.snapshot_id}, not {str(claimed)[:40]!r} ({what}): "
                "it was changed after it was recorded"
            )
    return snapshot


__all__ = [
    "LEFT_OUT_KINDS",
    "LeftOut",
    "Snapshot",
    "SnapshotInvalidError",
    "UnknownPackageError",
    "plan_snapshot",
    "snapshot_from_json",
    "snapshot_to_json",
]
