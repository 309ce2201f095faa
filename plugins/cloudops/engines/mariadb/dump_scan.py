"""The scan of a MariaDB SQL dump before it is loaded: a dump is untrusted input, and one of a single
database never holds a client command, a statement on another database or anything server-wide.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from cloudops.errors import (
    RestoreRefused,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


_SCAN_CHUNK = 4 * 1024 * 1024
# No statement can be longer than the server's largest max_allowed_packet (1 GiB).
_LONGEST_LINE = 1024 * 1024 * 1024

# The dump scan reads the dump the way the mariadb client does, without being as slow as a parser in
# Python. Nearly all of a dump is runs of rows, INSERT INTO `t` VALUES followed by its rows; a regular
# expression passes them whole (_ROWS). Between its strings a row holds only numbers, NULL, hex literals
# and commas: no space, quote, backslash, semicolon or comment, so nothing in it can end the statement,
# start a client command or name a database. Everything else goes the exact way: quoted strings ('...',
# "..."), quoted names (`...`) and /* */ comments are blanked (they may span lines), as are -- and #
# comments; the executable comments /*! */ and /*M! */ are SQL, so only their markers are blanked; what
# is left, what the client and the server act on, is searched (_FINDINGS). Blanking keeps offsets and
# newlines, so a finding maps back to its line and text.
_STRING = rb"'[^'\\\n]*(?:\\.[^'\\\n]*)*'"
_VALUES = rb"[0-9a-fA-FxXNUL.,+\-]"
# A row a line since mariadb-dump 10.11, all rows on one line before. Possessive quantifiers: a line that
# is not a row fails in linear time.
_ROW = rb"\((?:" + _VALUES + rb"++|" + _STRING + rb")*+\)"
_ROWS = re.compile(
    rb"^INSERT INTO `(?:[^`\n]|``)+` VALUES(?:\n"
    + _ROW
    + rb",)*+(?:\n| )"
    + _ROW
    + rb"(?:,"
    + _ROW
    + rb")*+;\n",
    re.MULTILINE,
)
_QUOTED = re.compile(
    rb"(?P<string>'[^'\\]*(?:\\.[^'\\]*)*'|\"[^\"\\]*(?:\\.[^\"\\]*)*\")"
    rb"|(?P<name>`[^`]*`)"
    rb"|/\*(?!M?!)[^*]*\*+(?:[^/*][^*]*\*+)*/"
    rb"|(?:--[ \t]|#)[^\n]*",
    re.DOTALL,
)
_EXECUTABLE_MARKER = re.compile(rb"/\*M?!\d*|\*/")
_CREATE_EVENT = re.compile(rb"\bCREATE\b[^;]*?\bEVENT\s+(?:IF\s+NOT\s+EXISTS\s+)?([A-Za-z0-9_$]+)", re.I)
_STILL_OPEN = re.compile(rb"['\"`]|/\*")
_NAME = rb"[A-Za-z0-9_$]+"  # a blanked `name` reads I, a blanked 'string' 0
_OTHER = _NAME + rb"\s*\.\s*" + _NAME  # db.table: a name qualified by a database
_OPTIONS = rb"(?:\s+(?:LOW_PRIORITY|DELAYED|HIGH_PRIORITY|IGNORE|QUICK))*"
_FINDINGS: list[tuple[str, re.Pattern[bytes]]] = [
    (what, re.compile(pattern, re.IGNORECASE | re.MULTILINE))
    for what, pattern in [
        ("a client command", rb"\\(?!-)"),  # \- is the client's sandbox command, which dumps start with
        (
            "a client command",
            rb"(?:^|;)[ \t]*(?:system|source|tee|notee|pager|nopager|connect|use|charset|edit|exit|quit)"
            rb"(?=[\s;]|$)",
        ),
        ("a delimiter other than ; and ;;", rb"^[ \t]*DELIMITER[ \t]+(?!;;?[ \t]*$)"),
        ("a statement on another database", rb"\b(?:CREATE|DROP|ALTER)\s+(?:DATABASE|SCHEMA)\b"),
        ("a name in another database", rb"\b(?:INSERT|REPLACE)" + _OPTIONS + rb"(?:\s+INTO)?\s+" + _OTHER),
        ("a name in another database", rb"\bUPDATE" + _OPTIONS + rb"\s+" + _OTHER),
        ("a name in another database", rb"\bDELETE" + _OPTIONS + rb"(?:\s+FROM)?\s+" + _OTHER),
        (
            "a name in another database",
            rb"\b(?:CREATE|ALTER|DROP)\b[^;]*?\b(?:TABLE|VIEW|TRIGGER|PROCEDURE|FUNCTION|EVENT|SEQUENCE|"
            rb"INDEX|PACKAGE(?:\s+BODY)?)(?:\s+IF(?:\s+NOT)?\s+EXISTS)?\s+" + _OTHER,
        ),
        ("a name in another database", rb"\bDROP(?:\s+TEMPORARY)?\s+TABLES?\b[^;]*?" + _OTHER),
        ("a name in another database", rb"\b(?:RENAME|LOCK)\s+TABLES?\b[^;]*?" + _OTHER),
        ("a name in another database", rb"\bTRUNCATE(?:\s+TABLE)?\s+" + _OTHER),
        ("a name in another database", rb"\b(?:CALL|JOIN)\s+" + _OTHER),
        ("a name in another database", rb"\bTRIGGER\b[^;]*?\bON\s+" + _OTHER),
        ("a privilege statement", rb"\b(?:GRANT|REVOKE)\b"),
        (
            "an account or server statement",
            rb"\b(?:CREATE|ALTER|DROP|RENAME)(?:\s+OR\s+REPLACE)?\s+(?:USER|ROLE|SERVER)\b",
        ),
        ("a server-wide setting", rb"\bSET\s+(?:GLOBAL|PERSIST|PASSWORD|ROLE|DEFAULT\s+ROLE)\b|@@GLOBAL\b"),
        ("a file access", rb"\bINTO\s+(?:OUTFILE|DUMPFILE)\b|\bLOAD\s+(?:DATA|XML)\b|\bLOAD_FILE\s*\("),
        ("a plugin", rb"\b(?:UN)?INSTALL\s+(?:PLUGIN|SONAME)\b|\bSONAME\b"),
        (
            "a replication or server command",
            rb"\bBINLOG\b|\bCHANGE\s+(?:MASTER|REPLICATION)\b|\b(?:START|STOP|RESET)\s+(?:SLAVE|REPLICA|MASTER)\b"
            rb"|\b(?:PURGE|SHUTDOWN|KILL|FLUSH)\b",
        ),
        (
            "a table stored outside the database",
            rb"\bENGINE\s*=\s*(?:CONNECT|FEDERATED|FEDERATEDX|SPIDER)\b|\b(?:DATA|INDEX)\s+DIRECTORY\b",
        ),
        ("dynamic SQL", rb"\b(?:PREPARE|EXECUTE)\b"),
        # The scan reads backslashes as escapes and " as a string: modes that change either are refused.
        (
            "an SQL mode that is not one string",
            rb"\bSQL_MODE\s*:?=\s*+(?!0[ \t]*(?:[,;]|$)|@OLD_SQL_MODE\b|@saved_sql_mode\b|@@SQL_MODE\b)",
        ),
        ("a saved SQL mode set by hand", rb"@(?:OLD_SQL_MODE|saved_sql_mode)\s*:?=\s*+(?!@@SQL_MODE\b)"),
        (
            "a character set that is not one name",
            rb"\bcharacter_set_client\s*:?=\s*+"
            rb"(?![A-Za-z0-9_]+[ \t]*(?:[,;]|$)|@saved_cs_client\b|@OLD_CHARACTER_SET_CLIENT\b)"
            rb"|@(?:saved_cs_client|OLD_CHARACTER_SET_CLIENT)\s*:?=\s*+(?!@@character_set_client\b)",
        ),
    ]
]
# Raw text (strings included): SQL modes and character sets under which the scan would read the dump
# otherwise than the client and the server do.
_RAW_FINDINGS: list[tuple[str, re.Pattern[bytes]]] = [
    (
        "an SQL mode that changes how strings are read",
        re.compile(
            rb"\b(?:NO_BACKSLASH_ESCAPES|ANSI_QUOTES|ANSI|DB2|MAXDB|MSSQL|ORACLE|POSTGRESQL)\b", re.IGNORECASE
        ),
    ),
    (
        "a character set whose characters may hold a backslash",
        re.compile(rb"\b(?:big5|cp932|gbk|sjis)\b", re.I),
    ),
]


def _blanked(statements: bytes) -> bytes:
    """``statements`` with strings, names and comments blanked, offsets and newlines kept."""

    def blank(match: re.Match[bytes]) -> bytes:
        text = match.group()
        head = b"0" if match.lastgroup == "string" else b"I" if match.lastgroup == "name" else b" "
        return head + bytes(c if c == 10 else 32 for c in text[1:])

    text = _QUOTED.sub(blank, statements)
    return _EXECUTABLE_MARKER.sub(lambda marker: b" " * len(marker.group()), text)


class _DumpScan:
    """One scan: the statements that are not rows wait in ``pending`` until they can be checked whole."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[str] = []  # the events the dump defines
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.first_line = 1  # of what is pending

    def text(self, first_line: int, text: bytes) -> None:
        """Take ``text``, whole lines starting at line ``first_line``: runs of rows pass at once."""
        at, line = 0, first_line
        for rows in _ROWS.finditer(text):
            self.statements(line, text[at : rows.start()])
            line += text.count(b"\n", at, rows.start())
            # Nothing may be open before rows: the client would read them inside a string or comment.
            self.check(before_rows=True)
            at = rows.end()
            line += text.count(b"\n", rows.start(), at)
            self.first_line = line
        self.statements(line, text[at:])

    def statements(self, first_line: int, text: bytes) -> None:
        if not text:
            return
        if not self.pending:
            self.first_line = first_line
        self.pending.append(text)
        self.pending_bytes += len(text)
        # A long run of statements is checked at a statement's end (no finding spans a semicolon), unless
        # that semicolon is inside a string or comment that goes on.
        if self.pending_bytes > _SCAN_CHUNK and text.rstrip().endswith(b";"):
            self.check(before_rows=False)
        if self.pending_bytes > _LONGEST_LINE:
            self.refuse(b"".join(self.pending), 0, 1, f"more than {_LONGEST_LINE >> 20} MiB in one statement")

    def end(self) -> None:
        """Check what is left at the end of the file."""
        self.check(before_rows=True)

    def check(self, *, before_rows: bool) -> None:
        """Search the pending statements; keep them if something in them is still open (unless
        ``before_rows`` or at the end, where that is refused).

        :raises RestoreRefused: on a finding.
        """
        if not self.pending:
            return
        raw = b"".join(self.pending)
        text = _blanked(raw)
        findings = [
            (found.start(), found.end(), what)
            for what, pattern in _FINDINGS
            if (found := pattern.search(text))
        ]
        findings += [
            (found.start(), found.end(), what)
            for what, pattern in _RAW_FINDINGS
            if (found := pattern.search(raw))
        ]
        if findings:
            self.refuse(raw, *min(findings))
        if (left_open := _STILL_OPEN.search(text)) is not None:
            if not before_rows:
                return
            self.refuse(
                raw, left_open.start(), left_open.end(), "a string, name or comment that is not closed"
            )
        for event in _CREATE_EVENT.finditer(text):
            start = event.start(1)
            end = raw.find(b"`", start + 1) + 1 if raw[start : start + 1] == b"`" else event.end(1)
            self.events.append(raw[start:end].strip(b"`").decode("utf-8", "replace"))
        self.pending, self.pending_bytes = [], 0

    def refuse(self, raw: bytes, at: int, end: int, what: str) -> NoReturn:
        """Refuse, showing the text from what was found to the end of its line (at most 80 bytes)."""
        line = self.first_line + raw.count(b"\n", 0, at)
        line_end = raw.find(b"\n", at)
        found = raw[at : min(at + 80, len(raw) if line_end < 0 else line_end)].lstrip(b"; \t").rstrip()
        raise RestoreRefused(
            f"{self.name} line {line}: {what}: {found.decode('utf-8', 'replace')!r}: a dump of one database "
            "never holds it, so it is not loaded (it could run a command on this host or write outside the "
            "target database)"
        )


def check_single_database_dump(sql_file: Path) -> list[str]:
    """Refuse a SQL dump that could run a client command or write outside the database it is loaded into.

    Reads the file once, in chunks (see the comment above :data:`_STRING` for how), and refuses, outside
    strings and comments: client commands (``\\!``, ``\\.``, ``\\T``, ``\\u``, ``\\r``, any backslash
    command but the sandbox's own ``\\-``, and ``system``, ``source``, ``tee``, ``pager``, ``connect``,
    ``use``... at a statement's start); statements on another database (``CREATE``, ``DROP`` or ``ALTER
    DATABASE``) or on a name qualified by a database (``other.t`` after ``INSERT``, ``UPDATE``,
    ``DELETE``, ``REPLACE``, ``CREATE``, ``ALTER``, ``DROP``, ``RENAME``, ``TRUNCATE``, ``LOCK``,
    ``CALL``, ``JOIN``, a trigger's ``ON``); server-wide statements (``GRANT``, ``REVOKE``, accounts,
    ``SET GLOBAL``, plugins, replication, ``FLUSH``, ``KILL``); file access (``INTO OUTFILE`` or
    ``DUMPFILE``, ``LOAD DATA`` or ``XML``, ``LOAD_FILE``); tables kept outside the database (CONNECT,
    FEDERATED, SPIDER, ``DATA DIRECTORY``); dynamic SQL (``PREPARE``, ``EXECUTE``); and SQL modes or
    character sets under which the client would read the text otherwise than this scan does. The
    client's ``--sandbox`` and ``--binary-mode`` stop client commands again while loading; this scan
    also stops the SQL, which they cannot.

    :return: the names of the events the dump defines (see :func:`restore_logical`).
    :raises RestoreRefused: naming the file, the line and what was found there.
    """
    scan = _DumpScan(sql_file.name)
    line = 1
    carry = b""
    with sql_file.open("rb") as handle:
        while chunk := handle.read(_SCAN_CHUNK):
            text = carry + chunk
            # Cut after the last whole INSERT, so that runs of rows are not split, or else after the last
            # line once a statement grows past what one chunk holds.
            cut = text.rfind(b");\n") + 3  # 2: not found
            if cut == 2 and len(text) > 2 * _SCAN_CHUNK:
                cut = text.rfind(b"\n") + 1
                if cut == 0 and len(text) > _LONGEST_LINE:
                    scan.first_line = line
                    scan.refuse(text, 0, 1, f"a line longer than {_LONGEST_LINE >> 20} MiB")
            elif cut == 2:
                cut = 0  # carry it all into the next chunk
            whole, carry = text[:cut], text[cut:]
            scan.text(line, whole)
            line += whole.count(b"\n")
    scan.text(line, carry)
    scan.end()
    return scan.events


__all__ = ["check_single_database_dump"]
