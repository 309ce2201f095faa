"""The advisories file is repository input: the parser reads the documented shape and refuses the rest."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from cloudops.patching.advisories import (
    MAX_ADVISORIES_BYTES,
    AdvisoryFileError,
    load_advisories,
    parse_advisories,
    render_advisories,
)
from cloudops.patching.model import Advisory

pytestmark = pytest.mark.unit

GOOD = {
    "id": "CSA-2026-001",
    "package": "demo-openssl",
    "fixed_version": "1.1",
    "cves": ["CVE-2026-99001"],
    "severity": "high",
    "published": "2026-11-22",
}


def _text(*entries: dict[str, Any], **top: Any) -> str:
    return json.dumps({"format": 1, "advisories": list(entries), **top})


def test_a_good_file_parses_into_advisories_and_renders_back_the_same() -> None:
    advisories = parse_advisories(_text(GOOD), "advisories.json")
    assert advisories == (
        Advisory("CSA-2026-001", "demo-openssl", "1.1", ("CVE-2026-99001",), "high", date(2026, 11, 22)),
    )
    assert parse_advisories(render_advisories(advisories), "rendered") == advisories


def test_load_reads_a_file_and_names_it_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "advisories.json"
    path.write_text(_text(GOOD))
    assert load_advisories(path)[0].id == "CSA-2026-001"
    with pytest.raises(AdvisoryFileError, match=r"nope\.json: cannot read"):
        load_advisories(tmp_path / "nope.json")


def test_a_file_over_the_size_bound_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "advisories.json"
    path.write_text(" " * (MAX_ADVISORIES_BYTES + 1))
    with pytest.raises(AdvisoryFileError, match=rf"advisories\.json: {MAX_ADVISORIES_BYTES + 1} bytes"):
        load_advisories(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", r"repo\.json:1: not valid JSON"),
        ("[]", 'exactly "format" and "advisories"'),
        (_text(extra=1), 'exactly "format" and "advisories"'),
        (json.dumps({"format": 2, "advisories": []}), "format 2 is not 1"),
        (json.dumps({"format": True, "advisories": []}), "format True is not 1"),
        (json.dumps({"format": 1, "advisories": {}}), "advisories must be a list"),
        ('{"format": 1, "format": 1, "advisories": []}', "duplicate key 'format'"),
        (_text("x"), r"advisories\[0\]: expected an object, got str"),
        (_text({**GOOD, "score": 9}), r"advisories\[0\]: unknown score"),
        (_text({k: v for k, v in GOOD.items() if k != "cves"}), r"advisories\[0\]: missing cves"),
        (
            _text(GOOD, {**GOOD, "severity": "urgent"}),
            r"advisories\[1\] \('CSA-2026-001'\): severity 'urgent'",
        ),
        (_text({**GOOD, "id": "csa 1"}), "id 'csa 1' is not e.g. CSA-2026-001"),
        (_text({**GOOD, "package": "Demo_SSL"}), "package 'Demo_SSL' is not a Debian package name"),
        (_text({**GOOD, "fixed_version": "1:1.1"}), "fixed_version '1:1.1' is not a Debian version"),
        (_text({**GOOD, "fixed_version": 1.1}), "fixed_version must be a string, got float"),
        (_text({**GOOD, "published": "20261122"}), "published '20261122' is not a day"),
        (
            _text({**GOOD, "published": "2026-02-30"}),
            "published '2026-02-30' is not a day: day is out of range",
        ),
        (_text({**GOOD, "cves": []}), "cves must be a list of 1 to 100"),
        (_text({**GOOD, "cves": ["CVE-26-1"]}), "cve 'CVE-26-1' is not a CVE id"),
        (_text({**GOOD, "cves": ["CVE-2026-1234", "CVE-2026-1234"]}), "cves lists an id twice"),
        (_text(GOOD, GOOD), r"advisories\[1\]: id 'CSA-2026-001' appears twice"),
    ],
)
def test_a_malformed_file_is_refused_naming_file_and_entry(text: str, message: str) -> None:
    with pytest.raises(AdvisoryFileError, match=message) as caught:
        parse_advisories(text, "repo.json")
    assert str(caught.value).startswith("repo.json")


def test_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(AdvisoryFileError, match=r"repo\.json: not UTF-8"):
        parse_advisories(b'{"format": 1, "advisories": ["\xff"]}', "repo.json")
