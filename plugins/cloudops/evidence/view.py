"""The auditor view: runbook runs and their evidence, read from the ledger, inside the Airflow UI.

The plugin mounts this FastAPI app under ``/cloudops`` and links it from the navigation ("Evidence"),
which Airflow shows in a frame of its own UI. Every route is a GET behind Airflow's own login: the
UI's ``_token`` cookie or an ``Authorization: Bearer`` token, for a user allowed to read DAG runs.
Without one the answer is 401 or 403 and never data. Nothing here writes: the ledger is only read.

Each run is shown only to a user the auth manager lets read that DAG's runs
(``is_authorized_dag(GET, RUN, DagDetails(id=dag_id))``: with the FAB auth manager, a role that may
read one estate's DAGs sees that estate's runs only). A pack holds whole days of the chain; for a
user who may not read every DAG with a record in it, it is scoped to their DAGs' records
(``export.scope_pack``: each record still re-hashable, the manifest says what was left out).

The chain is verified once per state of the ledger folder (every segment's name, size and mtime,
and the last record's hash), not per request: pages and packs reuse that verdict and re-read only
what they show.

Pages are server-rendered HTML without scripts or outside assets, and every value from the ledger is
escaped. This module imports FastAPI and Airflow's API security (about a second): only the API server
imports it, through the plugin's ``fastapi_apps``.
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloudops.evidence.backend import EvidenceLedger, configured_backend, open_ledger
from cloudops.evidence.export import build_pack, pack_zip_bytes, scope_pack
from cloudops.evidence.ledger import (
    GENESIS,
    Ledger,
    LedgerError,
    Record,
    Verdict,
    evidence_dir,
    read_segment,
    utc_stamp,
    verify_segments,
)
from cloudops.evidence.runs import DRILL_RECORDED, REPORT_STORED, Run, fold_runs, select_runs

RUNS_PATH = "/runs"
REPORTS_PATH = "/reports"
# What a stored report file is served as: a download, never rendered inside the view's origin.
_REPORT_MEDIA = {"pdf": "application/pdf", "html": "text/html; charset=utf-8"}
# No scripts, no outside assets, forms only to this app, framed only by Airflow's own UI.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def evidence_reader(user: GetUserDep) -> BaseUser:
    """The logged-in user, if Airflow's auth manager lets them read the runs of every DAG; else 403."""
    from airflow.api_fastapi.app import get_auth_manager

    allowed = get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=None), user=user
    )
    if not allowed:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "reading runbook evidence needs read access to DAG runs"
        )
    return user


ReaderDep = Annotated[BaseUser, Depends(evidence_reader)]


def dag_reader(user: BaseUser) -> Callable[[str], bool]:
    """Whether ``user`` may read the runs of a DAG, asked of the auth manager once per DAG id."""
    from airflow.api_fastapi.app import get_auth_manager

    manager, answers = get_auth_manager(), {}

    def may_read(dag_id: str) -> bool:
        if dag_id not in answers:
            answers[dag_id] = bool(
                manager.is_authorized_dag(
                    method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
                )
            )
        return answers[dag_id]

    return may_read


@dataclass(frozen=True)
class LedgerState:
    """The ledger folder as verified once: the verdict, the runs, and where the chain stood at the
    end of each day segment (so a pack need not re-verify the days before its period)."""

    head: tuple[Any, ...]
    verdict: Verdict
    runs: list[Run]
    days: list[str]
    ends: dict[str, tuple[int, str]] = field(default_factory=dict)
    checked_at: str = ""


class LedgerStates:
    """The last verified state of one ledger folder, reused while its head is unchanged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: LedgerState | None = None

    def current(self, book: EvidenceLedger) -> LedgerState:
        head = ledger_head(book)
        with self._lock:  # one verification at a time; a second request for the same head waits for it
            if self._state is None or self._state.head != head:
                self._state = _verify_and_fold(book, head)
            return self._state


def ledger_head(book: EvidenceLedger) -> tuple[Any, ...]:
    """What identifies the ledger's content for the cache (a folder's segment sizes and mtimes and its
    last line; the PostgreSQL chain head and row versions). Any append, truncation or rewrite changes it."""
    return book.head()


def _verify_and_fold(book: EvidenceLedger, head: tuple[Any, ...]) -> LedgerState:
    """One pass over the ledger: verify each segment on from the one before, parse its records."""
    records: list[Record] = []
    ends: dict[str, tuple[int, str]] = {}
    seq, prev, count, problem = 0, GENESIS, 0, None
    repairs: list[str] = []
    segments = book.read_segments()
    for name, data in segments:
        if problem is None:
            verdict = verify_segments([(name, data)], start_seq=seq + 1, start_prev=prev)
            count += verdict.records
            repairs.extend(verdict.repairs)
            if verdict.ok:
                seq, prev = verdict.last_seq, verdict.last_hash
                ends[name[:10]] = (seq, prev)
            else:
                problem = verdict.problem
        try:
            records.extend(read_segment(data, name))
        except (ValueError, KeyError, TypeError):  # a damaged line: the verdict names it
            continue
    verdict = Verdict(count, problem, seq, prev, tuple(repairs))
    # As `cloudops evidence verify` does: a file's moved-aside bytes, the PostgreSQL chain head.
    verdict = book.confirm(verdict, records)
    return LedgerState(
        head=head,
        verdict=verdict,
        runs=fold_runs(records),
        days=[name[:10] for name, _ in segments],
        ends=ends,
        checked_at=utc_stamp(datetime.now(UTC)),
    )


def create_app(ledger_dir: str | Path | None = None) -> FastAPI:
    """The auditor view of the ledger in ``ledger_dir``; without one, of the configured backend (the
    file ledger in ``<evidence dir>/ledger``, per request, or the PostgreSQL ledger: one connection per
    server thread, as a connection carries one transaction at a time)."""
    app = FastAPI(
        title="CloudOps evidence",
        dependencies=[Depends(evidence_reader)],
        # The schema and docs routes would be unauthenticated: there are none.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    per_thread = threading.local()

    def ledger() -> EvidenceLedger:
        if ledger_dir is None and configured_backend() == "postgres":
            if getattr(per_thread, "book", None) is None:
                per_thread.book = open_ledger(backend="postgres")
            book: EvidenceLedger = per_thread.book
            return book
        return Ledger(ledger_dir or evidence_dir() / "ledger", fsync=False)

    states: dict[str, LedgerStates] = {}
    states_lock = threading.Lock()

    def state() -> LedgerState:
        book = ledger()
        with states_lock:
            found = states.setdefault(book.where, LedgerStates())
        return found.current(book)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def refuse(request: Request, error: StarletteHTTPException) -> Response:
        if "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": error.detail}, status_code=error.status_code)
        body = f"<p class=bad>{_e(error.detail)}</p>"
        if error.status_code == status.HTTP_401_UNAUTHORIZED:
            body += f'<p><a href="{_e(_login_url())}">Log in to Airflow</a> to read the evidence.</p>'
        return _page(f"Refused ({error.status_code})", body, status_code=error.status_code)

    @app.get("/", include_in_schema=False)
    def root(request: Request, user: ReaderDep) -> RedirectResponse:
        return RedirectResponse(request.url_for("runs").path)

    @app.get(RUNS_PATH, name="runs", response_class=HTMLResponse)
    def runs_page(
        user: ReaderDep,
        since: Annotated[str | None, Query(alias="from")] = None,
        until: Annotated[str | None, Query(alias="to")] = None,
        runbook: str | None = None,
        target: str | None = None,
    ) -> HTMLResponse:
        period = _period(since, until)
        current, may_read = state(), dag_reader(user)
        every = [run for run in current.runs if may_read(run.dag_id)]
        chosen = select_runs(every, since=period[0], until=period[1], runbook=runbook, target=target)
        chosen.sort(key=lambda run: run.started_at or run.day, reverse=True)
        return _page(
            "Runbook runs",
            _user_line(user)
            + _chain_line(current)
            + _filter_form(every, period, runbook, target)
            + _runs_table(chosen)
            + _pack_form(period, current.days),
        )

    @app.get("/run", name="run", response_class=HTMLResponse)
    def run_page(user: ReaderDep, dag_id: str, run_id: str) -> HTMLResponse:
        # Asked before looking: the answer says nothing of whether such a run exists.
        if not dag_reader(user)(dag_id):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"you may not read the runs of {dag_id}")
        found = [r for r in state().runs if r.dag_id == dag_id and r.run_id == run_id]
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no evidence of run {run_id} of {dag_id}")
        return _page(f"{dag_id} / {run_id}", _user_line(user) + _run_evidence(found[0]))

    @app.get("/pack", name="pack")
    def pack(
        user: ReaderDep,
        since: Annotated[str | None, Query(alias="from")] = None,
        until: Annotated[str | None, Query(alias="to")] = None,
    ) -> Response:
        first, last = _period(since, until)
        book, current = ledger(), state()
        days = [date.fromisoformat(day) for day in current.days]
        if not days:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "the ledger holds no records yet")
        if not current.verdict.ok:  # a broken chain: the pack would not verify, so none is made
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"the ledger's chain is broken: {current.verdict.problem}; not exporting evidence from it",
            )
        first, last = first or days[0], last or days[-1]
        before = [day for day in current.ends if day < first.isoformat()]
        start = current.ends[max(before)] if before else (0, GENESIS)
        try:
            pack = build_pack(book, first, last, verified_start=start)
        except LedgerError as error:  # changed since it was verified, and broken
            raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
        may_read = dag_reader(user)
        if not all(may_read(dag_id) for dag_id in pack.dag_ids):
            # Whole days hold other DAGs' records: this user gets their own DAGs' records only.
            pack = scope_pack(pack, may_read)
        archive = pack_zip_bytes(pack)
        name = f"evidence-{first.isoformat()}_{last.isoformat()}.zip"
        return Response(
            archive,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get(REPORTS_PATH, name="reports", response_class=HTMLResponse)
    def reports_page(user: ReaderDep) -> HTMLResponse:
        current, may_read = state(), dag_reader(user)
        stored = [
            (run, fact)
            for run in current.runs
            if may_read(run.dag_id)
            for fact in run.facts
            if fact.kind == REPORT_STORED
        ]
        stored.sort(key=lambda item: (_data(item[1]).get("month") or "", item[1].seq), reverse=True)
        return _page("Monthly reports", _user_line(user) + _chain_line(current) + _reports_table(stored))

    @app.get("/report", name="report_file")
    def report_file(user: ReaderDep, dag_id: str, run_id: str, seq: int, kind: str) -> Response:
        """One stored report file, read from S3 by the version the ledger recorded and served only when
        its SHA-256 is the recorded one (what S3 returns is untrusted: a changed object is refused)."""
        if not dag_reader(user)(dag_id):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"you may not read the runs of {dag_id}")
        current = state()
        found = [
            fact
            for run in current.runs
            if run.dag_id == dag_id and run.run_id == run_id
            for fact in run.facts
            if fact.kind == REPORT_STORED and fact.seq == seq
        ]
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report stored by run {run_id} of {dag_id}")
        if not current.verdict.ok:  # the recorded SHA-256 itself cannot be trusted
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"the ledger's chain is broken: {current.verdict.problem}; "
                "not serving a report it vouches for",
            )
        data = _data(found[0])
        files = [
            item for item in data.get("files") or [] if isinstance(item, dict) and item.get("kind") == kind
        ]
        if not files or kind not in _REPORT_MEDIA:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"report seq {seq} has no {kind!r} file")
        body = _fetch_report(str(data.get("estate")), files[0])
        name = str(files[0].get("name") or f"report.{kind}").replace('"', "")
        return Response(
            body,
            media_type=_REPORT_MEDIA[kind],
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return app


def _fetch_report(estate: str, stored: dict[str, Any]) -> bytes:
    """The file from S3 through the estate's catalog (its repository and cloud connection), checked."""
    from cloudops.catalog import load_catalogs
    from cloudops.runbooks.monthly_report import ReportStoreError, fetch_stored

    catalogs = [loaded.catalog for loaded in load_catalogs().catalogs if loaded.catalog.estate == estate]
    if not catalogs:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"estate {estate!r} is not in this server's catalog: its S3 is unknown"
        )
    try:
        return fetch_stored(catalogs[0], stored)  # type: ignore[arg-type]
    except ReportStoreError as error:
        changed = "changed since it was stored" in str(error)
        code = status.HTTP_409_CONFLICT if changed else status.HTTP_502_BAD_GATEWAY
        raise HTTPException(code, str(error)) from None


def _data(fact: Record) -> dict[str, Any]:
    data = fact.fields.get("data")
    return data if isinstance(data, dict) else {}


def _reports_table(stored: list[tuple[Run, Record]]) -> str:
    if not stored:
        return "<p id=no-reports>No monthly report is recorded in the ledger (or none you may read).</p>"
    rows = []
    for run, fact in stored:
        data = _data(fact)
        summary: dict[str, Any] = data["summary"] if isinstance(data.get("summary"), dict) else {}
        slos: dict[str, Any] = summary["slos"] if isinstance(summary.get("slos"), dict) else {}
        availability = "<br>".join(
            f'{_e(name)}: <span class="{"ok" if figures.get("sla_met") else "bad"}">'
            f"{_e(_percent(figures.get('availability_percent')))}</span>"
            + (
                f" (credit {_e(figures.get('credit_owed'))} {_e(figures.get('currency'))})"
                if figures.get("credit_owed") not in (None, "0", "0.00")
                else ""
            )
            for name, figures in sorted(slos.items())
            if isinstance(figures, dict)
        )
        cost = (
            f"{_e(summary.get('cost_total'))} {_e(summary.get('cost_currency'))}"
            if summary.get("cost_total")
            else f"<span class=bad>{_e(summary.get('cost_problem') or 'no cost')}</span>"
        )
        links = []
        for item in data.get("files") or []:
            if not isinstance(item, dict) or item.get("kind") not in _REPORT_MEDIA:
                continue
            query = urlencode(
                {"dag_id": run.dag_id, "run_id": run.run_id, "seq": fact.seq, "kind": item["kind"]}
            )
            links.append(
                f'<a class=download href="report?{_e(query)}">{_e(item.get("name"))}</a> '
                f"<span class=muted>{_e(item.get('size'))} bytes, SHA-256 "
                f"<code class=hash>{_e(item.get('sha256'))}</code>, {_e(item.get('lock_mode'))} lock until "
                f"{_e(item.get('locked_until'))}</span>"
            )
        run_link = "run?" + urlencode({"dag_id": run.dag_id, "run_id": run.run_id})
        rows.append(
            f"<tr><td>{_e(data.get('estate'))}</td><td>{_e(data.get('month'))}</td>"
            f"<td>{_e(data.get('generated_at'))}</td>"
            f'<td><a href="{_e(run_link)}">{_e(run.run_id)}</a>'
            f"<br><span class=muted>{_e(_triggerer(run))}</span></td>"
            f"<td>{availability or '<span class=muted>no SLO</span>'}</td>"
            f"<td>{_e(summary.get('incidents'))}</td><td>{cost}</td><td>{'<br>'.join(links)}</td></tr>"
        )
    return (
        f"<p>{len(stored)} report(s). Each download is read from S3 by the version the ledger recorded "
        "and served only if its SHA-256 is the recorded one.</p>"
        "<table id=reports><thead><tr><th>Estate</th><th>Month</th><th>Generated</th><th>Run</th>"
        "<th>Availability (SLA met / missed)</th><th>Incidents</th><th>Cost</th><th>Files</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _percent(value: Any) -> str:
    return "no data" if value is None else f"{float(value):.3f} %"


def _login_url() -> str:
    try:
        from airflow.api_fastapi.app import get_auth_manager

        return get_auth_manager().get_url_login()
    except Exception:  # no auth manager in this process: Airflow's root sends to its login
        return "/"


def _period(since: str | None, until: str | None) -> tuple[date | None, date | None]:
    """The period of the ``from`` and ``to`` dates (YYYY-MM-DD, each optional); 400 when not dates."""
    try:
        first = date.fromisoformat(since) if since else None
        last = date.fromisoformat(until) if until else None
    except ValueError as error:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"from and to are dates (YYYY-MM-DD): {error}"
        ) from None
    if first and last and first > last:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"the period ends ({last}) before it starts ({first})"
        )
    return first, last


# -- HTML ---------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    """Escape any value for HTML text and attributes."""
    return html.escape("" if value is None else str(value), quote=True)


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1rem;color:#1a1a1a}
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #ccc;padding:.2rem .5rem;
text-align:left;vertical-align:top}th{background:#f2f2f2}code,pre{font:12px ui-monospace,monospace}
code.hash{word-break:break-all}.success,.ok{color:#116611;font-weight:600}
.failed,.bad{color:#b00020;font-weight:600}.running,.skipped{color:#666}
form{margin:.5rem 0}label{margin-right:.75rem}h2{margin-top:1.5rem}.muted{color:#666}
"""


def _page(title: str, body: str, *, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>{body}</body></html>",
        status_code=status_code,
    )


def _user_line(user: BaseUser) -> str:
    # Links are relative: every page sits at the app's root, so they hold under any url_prefix.
    return (
        f"<p class=muted>Read-only evidence from the ledger; you are <b id=user>{_e(user.get_name())}</b>. "
        '<a id=all-runs href="runs">All runs</a> · <a id=all-reports href="reports">Monthly reports</a></p>'
    )


# What the chain check proves and what it does not (M8 of the safety review): said on every page.
CHAIN_SCOPE = (
    "This check proves that every record in this server's evidence folder matches its own hash and "
    "follows the one before it, from the first record to the last. It does not prove that nobody "
    "who can write that folder rewrote and re-sealed the chain, nor that today's records (signed "
    "only when the day is shipped, after UTC midnight) are the ones first written: for that, "
    "compare with the shipped, signed digests (<code>cloudops evidence verify --s3</code>)."
)


def _chain_line(current: LedgerState) -> str:
    verdict = current.verdict
    checked = f" <span class=muted>(checked {_e(current.checked_at)})</span>"
    if verdict.ok:
        line = (
            f"<p id=chain class=ok>Ledger chain intact: {verdict.records} records, "
            f"last seq {verdict.last_seq}, hash <code class=hash>{_e(verdict.last_hash)}</code>{checked}</p>"
        )
    else:
        line = f"<p id=chain class=bad>Ledger chain NOT intact: {_e(verdict.problem)}{checked}</p>"
    return line + f"<p id=chain-scope class=muted>{CHAIN_SCOPE}</p>"


def _options(values: Iterable[str], chosen: str | None) -> str:
    items = ['<option value="">any</option>']
    items += [
        f'<option value="{_e(v)}"{" selected" if v == chosen else ""}>{_e(v)}</option>'
        for v in sorted({*values, *([chosen] if chosen else [])})  # a filter that matches nothing stays shown
    ]
    return "".join(items)


def _filter_form(
    runs: list[Run], period: tuple[date | None, date | None], runbook: str | None, target: str | None
) -> str:
    first, last = period
    return (
        '<form id=filters method=get action="runs">'
        f'<label>From <input type=date name=from value="{_e(first or "")}"></label>'
        f'<label>To <input type=date name=to value="{_e(last or "")}"></label>'
        f"<label>Runbook <select name=runbook>{_options((r.runbook for r in runs), runbook)}</select></label>"
        "<label>Target <select name=target>"
        f"{_options((r.target for r in runs if r.target), target)}</select></label>"
        "<button type=submit>Filter</button></form>"
    )


def _runs_table(runs: list[Run]) -> str:
    if not runs:
        return "<p id=no-runs>No runs in the ledger match these filters.</p>"
    rows = []
    for run in runs:
        link = "run?" + urlencode({"dag_id": run.dag_id, "run_id": run.run_id})
        rows.append(
            "<tr>"
            f"<td>{_e(_moment(run.started_at) or run.day)}</td><td>{_e(run.runbook)}</td>"
            f"<td>{_e(run.target or '')}</td>"
            f'<td><a href="{_e(link)}">{_e(run.run_id)}</a><br><span class=muted>{_e(run.dag_id)}</span></td>'
            f'<td>{_e(_triggerer(run))}</td><td class="{_e(run.state)}">{_e(run.state)}</td>'
            f"<td>{len(run.steps)}</td><td>{_e(_facts_summary(run))}</td></tr>"
        )
    return (
        f"<p>{len(runs)} run(s).</p><table id=runs><thead><tr><th>Started</th><th>Runbook</th><th>Target</th>"
        "<th>Run</th><th>Triggered by</th><th>Outcome</th><th>Step tries</th><th>Evidence</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _pack_form(period: tuple[date | None, date | None], days: list[str]) -> str:
    first = period[0] or (days[0] if days else "")
    last = period[1] or (days[-1] if days else "")
    return (
        "<h2>Evidence pack</h2><form id=pack method=get action=pack>"
        f'<label>From <input type=date name=from value="{_e(first)}"></label>'
        f'<label>To <input type=date name=to value="{_e(last)}"></label>'
        "<button type=submit>Download pack (zip)</button></form>"
    )


def _moment(stamp: str | None) -> str:
    """``2026-11-20T02:15:00.123456Z`` as ``2026-11-20 02:15:00Z`` (the run page shows the exact stamps)."""
    return f"{stamp[:10]} {stamp[11:19]}Z" if stamp else ""


def _triggerer(run: Run) -> str:
    if run.triggered_by_user:
        return f"{run.triggered_by_user} ({run.triggered_by or 'manual'})"
    return run.triggered_by or "unknown"


def _facts_summary(run: Run) -> str:
    parts = []
    for fact in run.facts:
        data = fact.fields.get("data") or {}
        if fact.kind == DRILL_RECORDED:
            parts.append(f"drill {'passed' if data.get('passed') else 'FAILED'}")
        elif data.get("backup_id"):
            parts.append(f"{fact.kind} {data['backup_id']}")
        else:
            parts.append(fact.kind)
    return ", ".join(parts)


def _json(value: Any) -> str:
    return _e(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str))


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return f"<pre>{_json(value)}</pre>"
    if isinstance(value, bool):
        return f'<span class="{"ok" if value else "bad"}">{"yes" if value else "no"}</span>'
    return _e(value)


def _kv_table(values: Mapping[str, Any], *, skip: Iterable[str] = (), css_id: str = "") -> str:
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_cell(v)}</td></tr>" for k, v in values.items() if k not in skip
    )
    id_attribute = f' id="{_e(css_id)}"' if css_id else ""
    return f"<table{id_attribute}>{rows}</table>"


def _list_table(items: list[Any], columns: list[str], css_class: str) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(_get(item, c))}</td>" for c in columns) + "</tr>" for item in items
    )
    return f'<table class="{_e(css_class)}"><tr>{head}</tr>{rows}</table>'


def _get(item: Any, column: str) -> Any:
    return item.get(column) if isinstance(item, dict) else item


def _run_evidence(run: Run) -> str:
    summary = {
        "runbook": run.runbook,
        "target": run.target,
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "outcome": run.state,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "triggered_by": run.triggered_by,
        "triggered_by_user": run.triggered_by_user,
        "params (conf)": run.conf,
    }
    pack = "pack?" + urlencode({"from": run.day, "to": run.day})
    return (
        _kv_table(summary, css_id="summary")
        + f'<p><a id=run-pack href="{_e(pack)}">Download the evidence pack of {_e(run.day)}</a></p>'
        + "<h2>Step tries</h2>"
        + _steps_table(run.steps)
        + "<h2>Facts</h2>"
        + ("".join(_fact(f) for f in run.facts) or "<p>No facts recorded.</p>")
        + "<h2>Records</h2>"
        + _records_table(run.records)
    )


def _steps_table(steps: list[Record]) -> str:
    if not steps:
        return "<p>No step tries recorded.</p>"
    rows = []
    for step in steps:
        data = step.fields.get("data") or {}
        map_index = step.fields.get("map_index")
        task = f"{step.fields.get('task_id')}" + (f"[{map_index}]" if map_index not in (None, -1) else "")
        state = data.get("state")
        rows.append(
            f"<tr><td>{_e(step.seq)}</td><td>{_e(task)}</td><td>{_e(step.fields.get('try_number'))}</td>"
            f'<td class="{_e(state)}">{_e(state)}</td><td>{_e(data.get("started_at"))}</td>'
            f"<td>{_e(data.get('finished_at'))}</td><td>{_e(data.get('duration_seconds'))}</td>"
            f"<td>{_e(data.get('hostname'))}</td><td>{_e(data.get('error') or '')}</td></tr>"
        )
    return (
        "<table id=steps><tr><th>Seq</th><th>Task</th><th>Try</th><th>Outcome</th><th>Started</th>"
        f"<th>Finished</th><th>Seconds</th><th>Host</th><th>Error</th></tr>{''.join(rows)}</table>"
    )


def _fact(fact: Record) -> str:
    data = fact.fields.get("data") or {}
    head = f"<h3>{_e(fact.kind)} <span class=muted>seq {_e(fact.seq)}, {_e(fact.at)}</span></h3>"
    line = ""
    if fact.kind == DRILL_RECORDED:
        passed = bool(data.get("passed"))
        line = (
            f'<p class="{"ok" if passed else "bad"}">Drill {"passed" if passed else "FAILED"}'
            f": RTO {_e(data.get('rto_seconds'))} s (target {_e(data.get('rto_target_seconds'))} s), "
            f"RPO {_e(data.get('rpo_seconds'))} s (target {_e(data.get('rpo_target_seconds'))} s)</p>"
        )
    body = _kv_table({"task_id": fact.fields.get("task_id"), **data}, skip=("objects", "checks"))
    if isinstance(data.get("objects"), list):
        body += _list_table(data["objects"], ["name", "size", "sha256"], "objects")
    if isinstance(data.get("checks"), list):
        body += _list_table(data["checks"], ["name", "passed", "expected", "observed"], "checks")
    return f"<section class=fact>{head}{line}{body}</section>"


def _records_table(records: list[Record]) -> str:
    rows = "".join(
        f"<tr><td>{_e(r.seq)}</td><td>{_e(r.at)}</td><td>{_e(r.kind)}</td><td><code>{_e(r.key)}</code></td>"
        f"<td><code class=hash>{_e(r.hash)}</code></td><td><code class=hash>{_e(r.prev)}</code></td>"
        f"<td><details><summary>fields</summary><pre>{_json(r.fields)}</pre></details></td></tr>"
        for r in records
    )
    return (
        "<table id=records><tr><th>Seq</th><th>At</th><th>Kind</th><th>Key</th><th>Hash</th><th>Prev</th>"
        f"<th>Fields</th></tr>{rows}</table>"
    )


__all__ = [
    "CHAIN_SCOPE",
    "LedgerState",
    "LedgerStates",
    "create_app",
    "dag_reader",
    "evidence_reader",
    "ledger_head",
]
