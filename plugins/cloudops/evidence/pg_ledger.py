"""The evidence ledger in PostgreSQL: one hash chain for every machine of a deployment.

The records are the file ledger's records (``ledger.py``), sealed the same way; each row keeps the
record's exact line, so a day's segment is its rows' lines in ``seq`` order, byte for byte what the file
ledger would hold, and verify, export, shipping and the auditor view read it as they read files.

Tables (schema ``cloudops_ledger`` unless given; created idempotently by the first ledger to connect):

- ``chain_head``: one row, the last record's ``seq``, ``hash`` and ``at``, and the ledger id under which
  the chain ships. Every append locks it (``SELECT ... FOR UPDATE``), so appends from any number of
  processes and hosts are serialized by the database: one transaction per call of ``append_many``.
- ``records``: ``seq`` (primary key), ``day``, ``key``, ``kind``, ``at``, ``prev``, ``hash``, ``line``.
  ``UNIQUE (day, key)``: as in the file ledger, a key is recorded once per UTC day (a retried try that
  fires twice is written once). Row triggers refuse UPDATE, DELETE and TRUNCATE: tampering takes a
  superuser who disables them, and verify still names the record.
- ``shipped``: the days shipped to S3 (what the file ledger keeps in ``<ledger>/shipped/``).

Time: the chain's order is ``seq``, never a timestamp. A record's ``at`` is the database server's clock
(``clock_timestamp()``) read under the head lock, and never earlier than the head's ``at``, so
writers whose clocks differ by seconds (or a day) all append, and days follow one another in ``seq``
order; the writer's own clock reading is kept in the record as ``host_at``.

Reads that must agree with one another (verify, segments for shipping, the auditor view) run in one
REPEATABLE READ transaction. Every wait is bounded: connecting (``connect_timeout``), the head lock
(``lock_timeout``) and each statement (``statement_timeout``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from cloudops.evidence.ledger import (
    GENESIS,
    LedgerError,
    Record,
    Verdict,
    _record,
    read_segment,
    seal,
    utc_stamp,
    verify_segments,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

DEFAULT_SCHEMA = "cloudops_ledger"
DEFAULT_LOCK_TIMEOUT = 5.0
DEFAULT_STATEMENT_TIMEOUT = 120.0
CONNECT_TIMEOUT = 5
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Serializes schema creation between ledgers connecting at once (CREATE ... IF NOT EXISTS races).
_SCHEMA_LOCK = 0x6C656467  # "ledg"


def _schema_sql(schema: str) -> str:
    return f"""
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.chain_head (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    ledger_id text NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL,
    at text NOT NULL,
    day date
);
CREATE TABLE IF NOT EXISTS {schema}.records (
    seq bigint PRIMARY KEY,
    day date NOT NULL,
    key text NOT NULL,
    kind text NOT NULL,
    at text NOT NULL,
    prev text NOT NULL,
    hash text NOT NULL,
    line bytea NOT NULL,
    CONSTRAINT records_key_once_a_day UNIQUE (day, key)
);
CREATE INDEX IF NOT EXISTS records_day_seq ON {schema}.records (day, seq);
CREATE TABLE IF NOT EXISTS {schema}.shipped (
    day date PRIMARY KEY,
    record jsonb NOT NULL
);
CREATE OR REPLACE FUNCTION {schema}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the evidence ledger is append-only: % on %.records refused', TG_OP, TG_TABLE_SCHEMA;
END $$;
DROP TRIGGER IF EXISTS records_append_only ON {schema}.records;
CREATE TRIGGER records_append_only BEFORE UPDATE OR DELETE ON {schema}.records
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_change();
DROP TRIGGER IF EXISTS records_no_truncate ON {schema}.records;
CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON {schema}.records
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_change();
"""


def conninfo_of(conn_id: str) -> str:
    """The libpq connection string of the Airflow connection ``conn_id`` (password included: never log it).

    :raises ConnectionMissingError: no such connection.
    """
    from psycopg.conninfo import make_conninfo

    from cloudops.connections import get_connection

    conn = get_connection(conn_id, "the evidence ledger (CLOUDOPS_EVIDENCE_BACKEND=postgres)")
    extra = conn.extra_dejson or {}
    params: dict[str, str | int | None] = {
        "host": conn.host or "localhost",
        "port": conn.port or 5432,
        "user": conn.login,
        "password": conn.password,
        "dbname": conn.schema or "postgres",
    }
    if extra.get("sslmode"):
        params["sslmode"] = extra["sslmode"]
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


class PgLedger:
    """The ledger in the PostgreSQL database of the Airflow connection ``conn_id``.

    :param schema: the schema holding the ledger's tables (one chain per schema).
    :param conninfo: a libpq connection string instead of looking the connection up (tests, tools).
    :param lock_timeout: seconds to wait for the chain head's lock before giving up (LedgerError).
    """

    def __init__(
        self,
        conn_id: str | None = None,
        *,
        schema: str = DEFAULT_SCHEMA,
        conninfo: str | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise LedgerError(f"evidence ledger schema {schema!r}: not a plain lower-case SQL name")
        if conn_id is None and conninfo is None:
            raise LedgerError("a PostgreSQL ledger needs an Airflow connection id (or a conninfo)")
        self.conn_id, self.schema = conn_id, schema
        self.lock_timeout, self.statement_timeout = lock_timeout, statement_timeout
        self._conninfo = conninfo
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = os.getpid()
        # Connections inherited through fork() are kept, never closed: closing would end the parent's.
        self._inherited: list[Any] = []
        self._read_problem: str | None = None

    # -- connection ---------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        source = f"connection {self.conn_id}" if self.conn_id else "a conninfo"
        return f"PostgreSQL ledger {self.schema} ({source})"

    def segment_where(self, name: str) -> str:
        return f"{self.where} day {name[:10]}"

    def _connection(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._pid != os.getpid():
            if self._conn is not None:
                self._inherited.append(self._conn)
            self._conn, self._pid = None, os.getpid()
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        conninfo = self._conninfo or conninfo_of(str(self.conn_id))
        try:
            conn = psycopg.connect(
                conninfo,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="cloudops-evidence",
                options=(
                    f"-c lock_timeout={int(self.lock_timeout * 1000)} "
                    f"-c statement_timeout={int(self.statement_timeout * 1000)} -c timezone=UTC"
                ),
            )
        except psycopg.OperationalError as error:
            raise LedgerError(f"{self.where}: cannot connect: {str(error).strip()}") from None
        self._ensure_schema(conn)
        self._conn = conn
        return conn

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
            found = conn.execute("SELECT to_regclass(%s)", [f"{self.schema}.chain_head"]).fetchone()
            if found is not None and found[0] is not None:
                return
            conn.execute(_schema_sql(self.schema).encode())
            ledger_id = f"pg-{secrets.token_hex(4)}"
            conn.execute(
                f"INSERT INTO {self.schema}.chain_head (ledger_id, seq, hash, at) VALUES (%s, 0, %s, '') "
                "ON CONFLICT DO NOTHING",
                [ledger_id, GENESIS],
            )
            log.info("evidence: created the tables of the %s (ledger id %s)", self.where, ledger_id)

    def close(self) -> None:
        """Close this process's connection (the next call opens another)."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    @contextlib.contextmanager
    def _transaction(self, *, snapshot: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """One transaction; a broken connection is dropped so that the next call connects again."""
        import psycopg

        conn = self._connection()
        try:
            with conn.transaction():
                if snapshot:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                yield conn
        except psycopg.errors.LockNotAvailable:
            raise LedgerError(
                f"{self.where}: the chain head was not free within {self.lock_timeout:g} s (another "
                "writer holds it: a stuck transaction); not waiting longer"
            ) from None
        except psycopg.OperationalError as error:
            self._conn = None
            raise LedgerError(f"{self.where}: {type(error).__name__}: {str(error).strip()}") from None

    def clock(self) -> datetime:
        with self._transaction() as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        moment: datetime = row[0]
        return moment.astimezone(UTC)

    # -- writing ------------------------------------------------------------------------------------
    def append(
        self, kind: str, *, key: str | None = None, at: datetime | None = None, **fields: Any
    ) -> Record | None:
        """Append one record; return it, or None when a record with the same key is already there today.

        :param at: the writer's time of the event (default: its clock now), kept as ``host_at``.
        """
        written = self.append_many([(kind, key, at, fields)])
        return written[0] if written else None

    def append_many(
        self, entries: Iterable[tuple[str, str | None, datetime | None, Mapping[str, Any]]]
    ) -> list[Record]:
        """Append records ``(kind, key, at, fields)`` in order in one transaction under the head lock.

        :raises LedgerError: the head lock was not free in time, or the database is unreachable.
        """
        batch = [(kind, key, at or datetime.now(UTC), fields) for kind, key, at, fields in entries]
        if not batch:
            return []
        keys = [key for _, key, _, _ in batch if key]
        written: list[Record] = []
        with self._transaction() as conn:
            with conn.pipeline():
                head_cursor = conn.execute(
                    f"SELECT seq, hash, at, day FROM {self.schema}.chain_head FOR UPDATE"
                )
                clock_cursor = conn.execute("SELECT clock_timestamp()")
                # Only the head's day can hold records of the day this batch is written in.
                known_cursor = conn.execute(
                    f"SELECT key FROM {self.schema}.records "
                    f"WHERE day = (SELECT day FROM {self.schema}.chain_head) AND key = ANY(%s)",
                    [keys],
                )
            head, now = head_cursor.fetchone(), clock_cursor.fetchone()
            if head is None or now is None:
                raise LedgerError(f"{self.where}: the chain_head row is missing: the ledger was damaged")
            seq, prev, head_at, head_day = head
            moment = now[0].astimezone(UTC)
            stamp = utc_stamp(moment)
            if head_at and stamp < head_at:  # the database's clock went back: keep days in seq order
                stamp = head_at
            day = date.fromisoformat(stamp[:10])
            known = {row[0] for row in known_cursor.fetchall()} if head_day == day else set()
            rows = []
            for kind, key, host_at, fields in batch:
                record_key = key or f"{kind}|{seq + 1}"
                if record_key in known:
                    log.debug("ledger: %s is already recorded today; not written again", record_key)
                    continue
                known.add(record_key)
                body = {
                    **fields,
                    "host_at": utc_stamp(host_at),
                    "at": stamp,
                    "key": record_key,
                    "kind": kind,
                    "prev": prev,
                    "seq": seq + 1,
                }
                line, digest = seal(body)
                seq, prev = seq + 1, digest
                rows.append((seq, day, record_key, kind, stamp, body["prev"], digest, line))
                written.append(
                    Record(
                        seq,
                        stamp,
                        kind,
                        record_key,
                        body["prev"],
                        digest,
                        {**fields, "host_at": body["host_at"]},
                        f"{day}.jsonl",
                        0,
                    )
                )
            if rows:
                with conn.cursor() as cursor:
                    cursor.executemany(
                        f"INSERT INTO {self.schema}.records (seq, day, key, kind, at, prev, hash, line) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        rows,
                    )
                conn.execute(
                    f"UPDATE {self.schema}.chain_head SET seq = %s, hash = %s, at = %s, day = %s",
                    [seq, prev, stamp, day],
                )
        return written

    # -- reading ------------------------------------------------------------------------------------
    def records(self, *, since: date | None = None, until: date | None = None) -> Iterator[Record]:
        """Every record of the days in [since, until], in chain order (not verified: see verify)."""
        for name, data in self.read_segments(since=since, until=until):
            yield from read_segment(data, name)

    def read_segments(
        self, *, since: date | None = None, until: date | None = None
    ) -> list[tuple[str, bytes]]:
        """The day segments from ``since`` on, rebuilt from the rows in one snapshot; the rows' hash
        columns and the chain head are checked against the lines on the way (see :meth:`confirm`)."""
        with self._transaction(snapshot=True) as conn:
            return list(self._segments(conn, since, until))

    def _segments(
        self, conn: psycopg.Connection[Any], since: date | None, until: date | None
    ) -> Iterator[tuple[str, bytes]]:
        """Yield each day's segment as the server sends it, then set what the rows and the head say.

        The server joins each day's lines (in ``seq`` order, from the ``(day, seq)`` index) into one
        value and streams the days, so the caller's parsing overlaps the server's work: Python handles
        a value per day, not per row, which is what lets verify keep up with the file ledger's.
        """
        self._read_problem = None
        bounds = [since or date.min, until or date.max]
        head = conn.execute(f"SELECT seq, hash FROM {self.schema}.chain_head").fetchone()
        wrong: int | None = None
        cursor = conn.cursor(binary=True)
        for day, data, bad in cursor.stream(
            f"SELECT day, string_agg(line, '\\x0a'::bytea ORDER BY seq), min(seq) FILTER (WHERE "
            "substring(line FROM octet_length(line) - 65 FOR 64) <> convert_to(hash, 'UTF8')) "
            f"FROM {self.schema}.records WHERE day >= %s AND day <= %s GROUP BY day ORDER BY day",
            bounds,
        ):
            if bad is not None and wrong is None:
                wrong = bad
            yield f"{day}.jsonl", bytes(data) + b"\n"
        last = conn.execute(
            f"SELECT seq, hash FROM {self.schema}.records ORDER BY seq DESC LIMIT 1"
        ).fetchone() or (0, GENESIS)
        if wrong is not None:
            self._read_problem = (
                f"record seq {wrong}: its hash column differs from the hash its line ends with"
            )
        elif (
            since is None and until is None and head is not None and (head[0], head[1]) != (last[0], last[1])
        ):
            self._read_problem = (
                f"the chain head says seq {head[0]} (hash {head[1][:12]}…) but the records end at seq "
                f"{last[0]}: records were removed or added around the head"
            )

    def verify(self) -> Verdict:
        """Check the whole chain, the rows' hash columns and the chain head; name the first problem."""
        with self._transaction(snapshot=True) as conn:
            segments = self._segments(conn, None, None)
            verdict = verify_segments(segments)
            for _ in segments:  # a broken chain stops verify early: read on for the head's check
                pass
        return self.confirm(verdict, ())

    def confirm(self, verdict: Verdict, records: Iterable[Record]) -> Verdict:
        """``verdict`` of the segments the last :meth:`read_segments` returned, or what that reading
        found wrong in the rows' columns or the chain head."""
        if not verdict.ok or self._read_problem is None:
            return verdict
        return Verdict(verdict.records, self._read_problem, verdict.last_seq, verdict.last_hash)

    def head(self) -> tuple[Any, ...]:
        """The head row, the row count and the newest row version (an UPDATE of any row changes it)."""
        with self._transaction(snapshot=True) as conn:
            head = conn.execute(f"SELECT seq, hash FROM {self.schema}.chain_head").fetchone()
            rows = conn.execute(
                f"SELECT count(*), max(xmin::text::bigint) FROM {self.schema}.records"
            ).fetchone()
        return (tuple(head or ()), tuple(rows or ()))

    def import_records(self, segments: Iterable[tuple[str, bytes]]) -> int:
        """Copy verified day segments into an empty ledger, record for record (the migration).

        :raises LedgerError: this ledger already holds records (another chain: refused).
        """
        total = 0
        with self._transaction() as conn:
            head = conn.execute(f"SELECT seq, hash FROM {self.schema}.chain_head FOR UPDATE").fetchone()
            held = conn.execute(f"SELECT count(*) FROM {self.schema}.records").fetchone()
            if head is None or head[0] != 0 or (held is not None and held[0]):
                raise LedgerError(
                    f"{self.where} already holds a chain (to seq {head[0] if head else '?'}): refusing to "
                    "copy another ledger into it; migrate into an empty schema"
                )
            last: tuple[int, str, str, date | None] = (0, GENESIS, "", None)
            with (
                conn.cursor() as cursor,
                cursor.copy(
                    f"COPY {self.schema}.records (seq, day, key, kind, at, prev, hash, line) FROM STDIN"
                ) as copy,
            ):
                for name, data in segments:
                    for number, line in enumerate(data.splitlines(), start=1):
                        if not line.strip():
                            continue
                        record = _record(_loads(line, name, number), name, number)
                        day = date.fromisoformat(record.day)
                        copy.write_row(
                            (
                                record.seq,
                                day,
                                record.key,
                                record.kind,
                                record.at,
                                record.prev,
                                record.hash,
                                line,
                            )
                        )
                        last = (record.seq, record.hash, record.at, day)
                        total += 1
            conn.execute(
                f"UPDATE {self.schema}.chain_head SET seq = %s, hash = %s, at = %s, day = %s",
                list(last),
            )
        return total

    # -- shipping state -----------------------------------------------------------------------------
    def stored_ledger_id(self) -> str:
        """The id under which this chain ships (made when the schema was created)."""
        with self._transaction() as conn:
            row = conn.execute(f"SELECT ledger_id FROM {self.schema}.chain_head").fetchone()
        if row is None:
            raise LedgerError(f"{self.where}: the chain_head row is missing: the ledger was damaged")
        return str(row[0])

    def read_shipped(self) -> dict[str, dict[str, Any]]:
        """What was recorded as shipped, by day."""
        with self._transaction() as conn:
            rows = conn.execute(f"SELECT day, record FROM {self.schema}.shipped ORDER BY day").fetchall()
        return {day.isoformat(): dict(record) for day, record in rows}

    def write_shipped(self, day: str, record: Mapping[str, Any]) -> None:
        """Record ``day`` as shipped (after both objects are in S3 and locked)."""
        from psycopg.types.json import Jsonb

        with self._transaction() as conn:
            conn.execute(
                f"INSERT INTO {self.schema}.shipped (day, record) VALUES (%s, %s) "
                "ON CONFLICT (day) DO UPDATE SET record = EXCLUDED.record",
                [date.fromisoformat(day), Jsonb(dict(record))],
            )

    @contextlib.contextmanager
    def shipping_lock(self) -> Iterator[None]:
        """Hold the one shipping of this chain (a session advisory lock; not waited for).

        :raises LedgerError: another shipping holds it.
        """
        key = f"{self.schema}.shipping"
        with self._transaction() as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key]).fetchone()
        if not row or not row[0]:
            raise LedgerError(
                f"another shipping of {self.where} is running (it holds {key}): try again later"
            )
        try:
            yield
        finally:
            with contextlib.suppress(LedgerError), self._transaction() as conn:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])


def _loads(line: bytes, name: str, number: int) -> dict[str, Any]:
    import json

    try:
        record = json.loads(line)
    except ValueError:
        raise LedgerError(f"{name} line {number}: not a JSON record") from None
    if not isinstance(record, dict):
        raise LedgerError(f"{name} line {number}: not a ledger record")
    return record


__all__ = ["DEFAULT_SCHEMA", "PgLedger", "conninfo_of"]
