"""Load catalog files: YAML with line numbers, secret screening, typed validation, cross-checks.

One bad file never hides the others: :func:`load_catalogs` returns the good catalogs and, apart, one
:class:`CatalogError` per bad file, so that DAG files can build what is valid while the errors surface
as an Airflow import error and in ``cloudops validate``.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import pickle
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from cloudops.catalog.errors import CatalogError, CatalogIssue, did_you_mean, format_path
from cloudops.catalog.models import Catalog, SmtpNotification, SnsNotification
from cloudops.catalog.references import (
    PrimaryServer,
    check_references,
    cross_catalog_duplicates,
    primaries_by_conn,
    primary_scratch_servers,
)
from cloudops.secrets import SECRET_VALUES, is_secret_key, might_hold_secret

log = logging.getLogger(__name__)

CATALOG_ENV = "CLOUDOPS_CATALOG"
# pydantic names the member of a tagged union in error locations: notifications[0].smtp.to
_NOTIFICATION_KINDS: dict[str | int, type[BaseModel]] = {
    "smtp": SmtpNotification,
    "sns": SnsNotification,
}
YamlPath = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedCatalog:
    """A valid catalog and the file it came from."""

    path: Path
    catalog: Catalog


@dataclass
class CatalogSet:
    """The result of loading several catalog files: the valid ones and one error per bad file."""

    catalogs: list[LoadedCatalog] = field(default_factory=list)
    errors: list[CatalogError] = field(default_factory=list)

    @property
    def issues(self) -> list[CatalogIssue]:
        """Every issue of every bad file, in file order."""
        return [issue for error in self.errors for issue in error.issues]


# libyaml's parser when present: catalogs of thousands of hosts are parsed at every DAG parse.
_YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _project_root() -> Path:
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *here.parents]:
        if (parent / "runbooks").is_dir() and (parent / "dags").is_dir():
            return parent
    return Path.cwd()


def catalog_paths(spec: str | Sequence[str | Path] | None = None) -> list[Path]:
    """Return the catalog files to load, sorted.

    :param spec: files or directories; defaults to ``$CLOUDOPS_CATALOG`` (paths separated by
        ``os.pathsep``) and then to the project's ``runbooks/`` directory. A directory contributes
        its ``*.yaml`` and ``*.yml`` files (not those in subdirectories such as ``schema/``).
    """
    if spec is None:
        spec = os.environ.get(CATALOG_ENV) or str(_project_root() / "runbooks")
    entries = spec.split(os.pathsep) if isinstance(spec, str) else list(spec)
    paths: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            paths.extend(sorted([*path.glob("*.yaml"), *path.glob("*.yml")]))
        elif str(entry):
            paths.append(path)
    return paths


def _parse(text: str, file: str) -> tuple[Any, dict[YamlPath, int], list[CatalogIssue]]:
    """Parse YAML into plain data, the line of every key and item, and the issues seen on the way.

    One walk over libyaml's node tree does what PyYAML's constructor would, plus what it cannot:
    it records lines, refuses duplicate keys (PyYAML silently keeps the last) and screens secrets.
    """
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        walk = _Walk(loader, file)
        data = walk.build(node, ())
        return data, walk.lines, walk.issues
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(filter(None, [error.context, error.problem]))
        raise CatalogError([CatalogIssue(file, line, "", f"not valid YAML: {problem}")]) from None
    except yaml.YAMLError as error:
        raise CatalogError([CatalogIssue(file, None, "", f"not valid YAML: {error}")]) from None
    finally:
        loader.dispose()


_STR_TAG = "tag:yaml.org,2002:str"


class _Walk:
    """Build data from YAML nodes while collecting lines, duplicate keys and secret-looking values."""

    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader, self.file = loader, file
        self.lines: dict[YamlPath, int] = {}
        self.issues: list[CatalogIssue] = []

    def build(self, node: yaml.Node, path: YamlPath) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        if node.tag == _STR_TAG:
            value = node.value
            if might_hold_secret(value):
                self._screen_value(value, path)
            return value
        return self.loader.construct_object(node)  # ints, booleans, null: YAML's own rules

    def _mapping(self, node: yaml.MappingNode, path: YamlPath) -> dict[Any, Any]:
        data: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            key_path = (*path, key)
            line = key_node.start_mark.line + 1
            if key_path in self.lines:
                first = self.lines[key_path]
                self._issue(line, key_path, f"key {key!r} appears twice (first on line {first})")
                continue
            self.lines[key_path] = line
            if is_secret_key(key):
                self._issue(
                    line,
                    key_path,
                    "secrets are not allowed in the catalog: store the credential in an Airflow "
                    "connection and name it with a *conn_id field",
                )
                continue
            data[key] = self.build(value_node, key_path)
        return data

    def _screen_value(self, value: str, path: YamlPath) -> None:
        for pattern, what in SECRET_VALUES:
            if pattern.search(value):
                self._issue(
                    self.lines[path],
                    path,
                    f"this value looks like {what}: secrets are not allowed in the catalog; "
                    "store it in an Airflow connection",
                )

    def _issue(self, line: int, path: YamlPath, message: str) -> None:
        self.issues.append(CatalogIssue(self.file, line, format_path(path), message))


def _line_of(lines: dict[YamlPath, int], path: Sequence[str | int]) -> int | None:
    """The line of ``path``, or of its nearest ancestor that has one."""
    path = tuple(path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def _model_at(model: type[BaseModel], path: Sequence[str | int]) -> type[BaseModel] | None:
    """Follow ``path`` through the model's fields and return the model found there, if any."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        if part in _NOTIFICATION_KINDS:
            current = _NOTIFICATION_KINDS[part]
            continue
        if part not in current.model_fields:
            return None
        current = _inner_model(current.model_fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside ``list[X]``, ``X | None`` or ``Annotated[...]``, if there is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _validation_issues(error: ValidationError, lines: dict[YamlPath, int], file: str) -> list[CatalogIssue]:
    """Turn pydantic's errors into issues with a line, a field path and a hint."""
    issues: list[CatalogIssue] = []
    for item in error.errors(include_url=False):
        # Tagged unions add the tag to the location (notifications[0].smtp.to); drop it so the path
        # matches the YAML and the model lookup.
        raw_loc = list(item["loc"])
        loc = [part for part in raw_loc if part not in _NOTIFICATION_KINDS]
        message, hint = item["msg"], None
        if item["type"] == "extra_forbidden":
            owner = _model_at(Catalog, raw_loc[:-1])
            known = list(owner.model_fields) if owner else []
            message = f"unknown key {loc[-1]!r}"
            hint = did_you_mean(str(loc[-1]), known)
            if not hint and known:
                hint = "expected one of: " + ", ".join(known)
        elif item["type"] == "union_tag_invalid":
            expected = re.findall(r"'([^']*)'", str(item.get("ctx", {}).get("expected_tags", "")))
            loc = [*loc, item.get("ctx", {}).get("discriminator", "kind").strip("'")]
            message = (
                f"unknown kind {item.get('ctx', {}).get('tag')!r}; expected one of {', '.join(expected)}"
            )
            hint = did_you_mean(str(item.get("ctx", {}).get("tag")), expected)
        elif item["type"] == "literal_error":
            expected = re.findall(r"'([^']*)'", str(item.get("ctx", {}).get("expected", "")))
            message = f"{message} (got {item['input']!r})"
            hint = did_you_mean(str(item["input"]), expected)
        elif item["type"] == "missing":
            message = "required field is missing"
        elif item["type"] in ("value_error", "assertion_error"):
            message = message.removeprefix("Value error, ")
        elif "input" in item and not isinstance(item["input"], dict | list):
            message = f"{message} (got {item['input']!r})"
        issues.append(CatalogIssue(file, _line_of(lines, loc), format_path(loc), message, hint))
    return issues


def load_catalog_file(path: str | Path) -> Catalog:
    """Load and validate one catalog file.

    :raises CatalogError: naming every problem found, each with file, line and field.
    """
    return _load_cached(str(path), _read_file(str(path)))[0]


def _read_file(file: str) -> bytes:
    try:
        return Path(file).read_bytes()
    except OSError as error:
        raise CatalogError([CatalogIssue(file, None, "", f"cannot read: {error.strerror}")]) from None


# Valid catalogs are cached on disk between processes: Airflow parses each DAG file in a fresh
# process, and re-validating thousands of hosts in each one would cost more than the DAGs themselves.
# The key covers the file's path and the SHA-256 of its bytes (not its mtime and size: a same-size
# edit that keeps the mtime, as rsync -a or tar make, would be served stale), and the code that
# validated it. Hashing the ten files of the 2,000-host benchmark catalog takes 0.25 ms.
#
# The cache is pickle, because it is fast: unpickling the benchmark's ten catalogs takes ~58 ms
# here, JSON with pydantic validation ~144 ms (validate_json ~158 ms), the cold parse ~620 ms. And
# unpickling runs code, so the cache is read only from a folder and a file this process's user owns
# and no one else can write (checked on the open file); anything else is refused with its reason
# logged, and the catalog is validated from its YAML instead.
CACHE_ENV = "CLOUDOPS_CACHE_DIR"
_CODE_FILES = ("models.py", "references.py", "cluster_references.py", "loader.py", "errors.py")
_refusals_logged: set[str] = set()


def _cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cloudops" / "catalog"


@lru_cache(maxsize=1)
def _code_stamp() -> tuple[str, ...]:
    here = Path(__file__).parent
    return tuple(hashlib.sha256((here / name).read_bytes()).hexdigest() for name in _CODE_FILES)


def _cache_path(file: str) -> Path:
    digest = hashlib.sha256(str(Path(file).resolve()).encode()).hexdigest()[:24]
    return _cache_dir() / f"{digest}.pickle"


def _untrusted(info: os.stat_result, what: Path, kind: str) -> str | None:
    """Why ``what`` cannot be trusted to hold a pickle for this user, or None."""
    if info.st_uid != os.geteuid():
        return f"{kind} {what} is owned by uid {info.st_uid}, not by this user ({os.geteuid()})"
    if info.st_mode & 0o022:
        return f"{kind} {what} can be written by others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def _refuse_cache(reason: str) -> None:
    if reason not in _refusals_logged:  # once per process and reason: every DAG file loads catalogs
        _refusals_logged.add(reason)
        log.warning("catalog cache not used: %s; validating the catalog from its YAML instead", reason)


def _read_cache(file: str, key: tuple[object, ...]) -> tuple[Catalog, dict[YamlPath, int]] | None:
    path = _cache_path(file)
    for folder in (path.parent.parent, path.parent):  # cloudops/ and cloudops/catalog/
        try:
            info = folder.lstat()
        except OSError:
            return None  # no cache yet
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            _refuse_cache(f"{folder} is not a directory (a link or a file)")
            return None
        if (reason := _untrusted(info, folder, "folder")) is not None:
            _refuse_cache(reason)
            return None
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as error:
        _refuse_cache(f"{path} cannot be opened safely ({error.strerror})")
        return None
    with os.fdopen(descriptor, "rb") as stream:
        info = os.fstat(stream.fileno())
        reason = "not a regular file" if not stat.S_ISREG(info.st_mode) else _untrusted(info, path, "file")
        if reason is not None:
            _refuse_cache(reason if reason != "not a regular file" else f"{path} is not a regular file")
            return None
        # Unpickling thousands of small objects sets off the cyclic garbage collector again and again,
        # and in a process that has imported Airflow each full pass walks a large heap (about 10x
        # slower). Nothing unpickled here is garbage, so the collector waits until the load is done.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            cached_key, payload = pickle.load(stream)
        except (EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError, TypeError):
            return None
        finally:
            if gc_was_enabled:
                gc.enable()
    return payload if cached_key == key else None


def _write_cache(file: str, key: tuple[object, ...], payload: tuple[Catalog, dict[YamlPath, int]]) -> None:
    target = _cache_path(file)
    try:
        for folder in (target.parent.parent, target.parent):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if folder.stat().st_uid == os.geteuid():
                folder.chmod(0o700)  # an umask (the Airflow image's 002) must not leave it group-writable
        partial = target.with_suffix(f".{os.getpid()}.partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            os.fchmod(stream.fileno(), 0o600)
            stream.write(pickle.dumps((key, payload), protocol=pickle.HIGHEST_PROTOCOL))
        partial.replace(target)
    except OSError as error:  # a read-only home must not stop DAGs from loading
        log.debug("catalog cache not written for %s: %s", file, error)


@lru_cache(maxsize=64)
def _load_cached(file: str, data: bytes) -> tuple[Catalog, dict[YamlPath, int]]:
    """Parse a file once per content, in this process and (when valid) across processes."""
    key = (str(Path(file).resolve()), hashlib.sha256(data).hexdigest(), _code_stamp())
    cached = _read_cache(file, key)
    if cached is not None:
        return cached
    payload = _parse_and_validate(file, data)
    _write_cache(file, key, payload)
    return payload


def _parse_and_validate(file: str, content: bytes) -> tuple[Catalog, dict[YamlPath, int]]:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise CatalogError([CatalogIssue(file, None, "", "not UTF-8 text")]) from None
    data, lines, issues = _parse(text, file)
    if data is None:
        raise CatalogError([CatalogIssue(file, None, "", "the file is empty")])
    if not isinstance(data, dict):
        raise CatalogError([CatalogIssue(file, 1, "", "the top level must be a mapping (estate: ...)")])
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as error:
        # A secret-looking key is also an unknown key: say it once, as the secret it is.
        reported = {issue.field for issue in issues}
        issues += [i for i in _validation_issues(error, lines, file) if i.field not in reported]
    if issues:
        raise CatalogError(sorted(issues, key=lambda issue: issue.line or 0))
    problems = check_references(catalog)
    if problems:
        raise CatalogError(
            [
                CatalogIssue(file, _line_of(lines, p.path), format_path(p.path), p.message, p.hint)
                for p in problems
            ]
        )
    return catalog, lines


def load_catalogs(paths: Iterable[str | Path] | None = None) -> CatalogSet:
    """Load every catalog file; a bad file is reported apart and never stops the others.

    Names that become DAG ids (estates, databases, fleets) must be unique across files: the first
    file that claims a name keeps it, and each later claim is an error of the later file. A drill's
    scratch server must not be another file's primary either (:func:`_refuse_primary_scratch_servers`).
    """
    result = CatalogSet()
    claimed: dict[tuple[str, str], tuple[str, int | None]] = {}
    lines_of: dict[Path, dict[YamlPath, int]] = {}
    for path in catalog_paths(None if paths is None else list(paths)):
        try:
            catalog, lines = _load_cached(str(path), _read_file(str(path)))
        except CatalogError as error:
            result.errors.append(error)
            continue
        clashes = cross_catalog_duplicates(catalog, claimed, str(path), lines)
        if clashes:
            result.errors.append(
                CatalogError(
                    [
                        CatalogIssue(str(path), _line_of(lines, c.path), format_path(c.path), c.message)
                        for c in clashes
                    ]
                )
            )
            continue
        lines_of[path] = lines
        result.catalogs.append(LoadedCatalog(path, catalog))
    _refuse_primary_scratch_servers(result, lines_of)
    return result


def scratch_server_issues(path: str | Path, others: Iterable[str | Path] | None = None) -> list[CatalogIssue]:
    """The drills of catalog file ``path`` whose scratch server is the connection of a primary of another
    catalog file (``others``, default: the files :func:`load_catalogs` reads; those that do not load are
    skipped). For a drill's re-check at run time; the file's own primaries are checked when it loads.

    :raises CatalogError: ``path`` itself is invalid.
    """
    here = Path(path).resolve()
    catalog, lines = _load_cached(str(path), _read_file(str(path)))
    primaries: dict[str, list[PrimaryServer]] = {}
    for other in catalog_paths(None if others is None else list(others)):
        if other.resolve() == here:
            continue
        try:
            other_catalog, _ = _load_cached(str(other), _read_file(str(other)))
        except CatalogError:
            continue
        for conn_id, found in primaries_by_conn(other_catalog, str(other)).items():
            primaries.setdefault(conn_id, []).extend(found)
    return [
        CatalogIssue(str(path), _line_of(lines, p.path), format_path(p.path), p.message, p.hint)
        for p in primary_scratch_servers(catalog, primaries)
    ]


def _refuse_primary_scratch_servers(result: CatalogSet, lines_of: dict[Path, dict[YamlPath, int]]) -> None:
    """Move to ``result.errors`` every catalog whose drill names another file's primary as scratch
    server (each file's own primaries were checked with the file)."""
    everywhere: dict[str, list[tuple[Path, PrimaryServer]]] = {}
    for loaded in result.catalogs:
        for conn_id, primaries in primaries_by_conn(loaded.catalog, str(loaded.path)).items():
            everywhere.setdefault(conn_id, []).extend((loaded.path, p) for p in primaries)
    for loaded in list(result.catalogs):
        others = {
            conn_id: [p for path, p in found if path != loaded.path] for conn_id, found in everywhere.items()
        }
        problems = primary_scratch_servers(loaded.catalog, others)
        if problems:
            lines = lines_of[loaded.path]
            result.catalogs.remove(loaded)
            result.errors.append(
                CatalogError(
                    [
                        CatalogIssue(
                            str(loaded.path), _line_of(lines, p.path), format_path(p.path), p.message, p.hint
                        )
                        for p in problems
                    ]
                )
            )


__all__ = [
    "CACHE_ENV",
    "CATALOG_ENV",
    "CatalogSet",
    "LoadedCatalog",
    "catalog_paths",
    "load_catalog_file",
    "load_catalogs",
    "scratch_server_issues",
]
