"""What the write probe saw, judged: pure functions over the list of attempts it recorded.

Terms, as the drill record and on-call use them:

- An attempt is *acked* when the server acknowledged its commit, *failed* when it certainly did not
  commit (it never reached a server: the connection could not be made), *in doubt* when the client
  cannot tell (the connection broke or the server gave up after the statement was sent).
- A *stall* is an acknowledged attempt that took longer than the stall threshold: a blocked commit
  (a synchronous standby gone, a frozen primary) that an error-only probe would report as available.
- A *downtime window* opens at the send time of the first failed, in-doubt or stalled attempt and
  closes at the acknowledgement of the first attempt after it that was acknowledged in time (a stall
  counts as a failed write: its own late acknowledgement does not close the window). Write downtime is
  the longest window; a window still open when the probe stopped means writes never came back.
- *Acked writes lost* are the ids acknowledged to the client but absent when read back from the
  primary after the drill. In-doubt attempts found committed are reported, never counted as lost.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

from cloudops.failover.policy import DrillTargets

Outcome = Literal["acked", "failed", "in_doubt"]
VerdictStatus = Literal["PASS", "FAIL", "ABORTED"]

# A commit on loopback takes about a millisecond; a quarter of a second is no jitter but a blocked write.
DEFAULT_STALL_THRESHOLD_S = 0.25


@dataclass(frozen=True)
class ProbeAttempt:
    """One write the probe tried.

    :param id: the row's number, unique within the drill (client-assigned, in sending order).
    :param sent_mono: ``time.monotonic()`` when the attempt began (connecting, if it had to).
    :param done_mono: when the answer (ack or error) came back.
    :param sent_wall: ``time.time()`` at ``sent_mono``, for the record's timestamps.
    :param outcome: ``acked``, ``failed`` (certainly not committed) or ``in_doubt``.
    :param error_class: the error's kind (SQLSTATE name or driver class, ``AdminShutdown``,
        ``connection failed``); None when acked.
    :param server: the ``host:port`` the attempt reached, None when it reached none.
    """

    id: int
    sent_mono: float
    done_mono: float
    sent_wall: float
    outcome: Outcome
    error_class: str | None = None
    server: str | None = None

    @property
    def seconds(self) -> float:
        """How long the attempt took."""
        return self.done_mono - self.sent_mono


@dataclass(frozen=True)
class DowntimeWindow:
    """A stretch in which writes failed or stalled, as the client saw it.

    :param start_mono: the send time of its first bad attempt.
    :param end_mono: the acknowledgement of the first attempt after it acknowledged in time; for a
        window still open when the probe stopped, the end of the last attempt.
    :param closed: whether an acknowledgement ended it.
    :param first_id: the first bad attempt's id; ``last_id`` the attempt that closed it (or the last one).
    :param failed, in_doubt, stalls: how many attempts of each kind it holds.
    :param error_classes: the errors seen in it, in order of first appearance.
    """

    start_mono: float
    end_mono: float
    start_wall: float
    closed: bool
    first_id: int
    last_id: int
    failed: int
    in_doubt: int
    stalls: int
    error_classes: tuple[str, ...]

    @property
    def seconds(self) -> float:
        """The window's length."""
        return self.end_mono - self.start_mono


@dataclass(frozen=True)
class ProbeAnalysis:
    """The probe's record judged (see the module's terms).

    :param write_downtime_s: the longest window (0 when there was none).
    :param total_write_downtime_s: all windows together.
    :param writes_recovered: no window was left open at the end.
    :param max_ack_gap_s: the longest time between two consecutive acknowledgements.
    :param lost_ids: acknowledged ids absent on read-back; None when nothing was read back.
    :param in_doubt_committed_ids: in-doubt or failed attempts whose row exists anyway.
    """

    attempts: int
    acked: int
    failed: int
    in_doubt: int
    stalls: int
    stall_threshold_s: float
    windows: tuple[DowntimeWindow, ...]
    write_downtime_s: float
    total_write_downtime_s: float
    writes_recovered: bool
    max_ack_gap_s: float
    error_classes: dict[str, int]
    servers: tuple[str, ...]
    in_doubt_ids: tuple[int, ...]
    lost_ids: tuple[int, ...] | None
    in_doubt_committed_ids: tuple[int, ...] = field(default=())

    @property
    def acked_writes_lost(self) -> int | None:
        """How many acknowledged writes are missing; None when nothing was read back."""
        return None if self.lost_ids is None else len(self.lost_ids)


@dataclass(frozen=True)
class Verdict:
    """One target judged: ``PASS``, ``FAIL`` or ``ABORTED``, and the sentence saying why."""

    target: str
    status: VerdictStatus
    measured: float | None
    limit: float
    reason: str


def analyse(
    attempts: Sequence[ProbeAttempt],
    *,
    present_ids: Collection[int] | None,
    stall_threshold_s: float = DEFAULT_STALL_THRESHOLD_S,
) -> ProbeAnalysis:
    """Judge the probe's attempts, and compare the acknowledged ids with those read back.

    :param present_ids: the probe ids found on the primary after the drill; None when they could not
        be read back (the loss is then unknown, never 0).
    :param stall_threshold_s: an acknowledged attempt slower than this is a stall.
    """
    ordered = sorted(attempts, key=lambda a: (a.sent_mono, a.id))
    windows: list[DowntimeWindow] = []
    opened: list[ProbeAttempt] = []

    def close(last: ProbeAttempt, end: float, closed: bool) -> None:
        first = opened[0]
        classes: list[str] = []
        for attempt in opened:
            if attempt.error_class and attempt.error_class not in classes:
                classes.append(attempt.error_class)
        windows.append(
            DowntimeWindow(
                start_mono=first.sent_mono,
                end_mono=end,
                start_wall=first.sent_wall,
                closed=closed,
                first_id=first.id,
                last_id=last.id,
                failed=sum(a.outcome == "failed" for a in opened),
                in_doubt=sum(a.outcome == "in_doubt" for a in opened),
                stalls=sum(a.outcome == "acked" and a.seconds > stall_threshold_s for a in opened),
                error_classes=tuple(classes),
            )
        )
        opened.clear()

    for attempt in ordered:
        stalled = attempt.outcome == "acked" and attempt.seconds > stall_threshold_s
        if attempt.outcome != "acked" or stalled:
            opened.append(attempt)
        elif opened:
            close(attempt, attempt.done_mono, closed=True)
    if opened:
        close(opened[-1], max(a.done_mono for a in ordered), closed=False)

    acks = sorted(a.done_mono for a in ordered if a.outcome == "acked")
    gaps = [later - earlier for earlier, later in pairwise(acks)]
    errors: dict[str, int] = {}
    for attempt in ordered:
        if attempt.outcome != "acked":
            key = attempt.error_class or "unknown"
            errors[key] = errors.get(key, 0) + 1
    servers: list[str] = []
    for attempt in ordered:
        if attempt.outcome == "acked" and attempt.server and attempt.server not in servers:
            servers.append(attempt.server)
    acked_ids = {a.id for a in ordered if a.outcome == "acked"}
    unsure = {a.id for a in ordered if a.outcome != "acked"}
    lost: tuple[int, ...] | None = None
    committed_anyway: tuple[int, ...] = ()
    if present_ids is not None:
        present = set(present_ids)
        lost = tuple(sorted(acked_ids - present))
        committed_anyway = tuple(sorted(unsure & present))
    lengths = [w.seconds for w in windows]
    return ProbeAnalysis(
        attempts=len(ordered),
        acked=len(acked_ids),
        failed=sum(a.outcome == "failed" for a in ordered),
        in_doubt=sum(a.outcome == "in_doubt" for a in ordered),
        stalls=sum(w.stalls for w in windows),
        stall_threshold_s=stall_threshold_s,
        windows=tuple(windows),
        write_downtime_s=max(lengths, default=0.0),
        total_write_downtime_s=sum(lengths),
        writes_recovered=all(w.closed for w in windows),
        max_ack_gap_s=max(gaps, default=0.0),
        error_classes=errors,
        servers=tuple(servers),
        in_doubt_ids=tuple(sorted(a.id for a in ordered if a.outcome == "in_doubt")),
        lost_ids=lost,
        in_doubt_committed_ids=committed_anyway,
    )


def verdicts(
    analysis: ProbeAnalysis,
    targets: DrillTargets,
    *,
    drill_seconds: float | None,
    aborted: str | None = None,
) -> tuple[Verdict, ...]:
    """Each target judged against what was measured, with the reason.

    A drill that aborted (``aborted`` says why) measured no switchover: downtime and drill time are
    ABORTED. Lost acknowledged writes are judged whatever happened, because an abort that loses data is
    a failure all the same; only when nothing could be read back is the loss ABORTED (unknown).

    :param drill_seconds: the whole drill's time; None when it never finished.
    """
    out: list[Verdict] = []
    limit = targets.max_write_downtime_s
    worst = analysis.write_downtime_s
    if aborted:
        out.append(Verdict("write_downtime_s", "ABORTED", worst, limit, f"drill aborted: {aborted}"))
    elif not analysis.writes_recovered:
        out.append(
            Verdict(
                "write_downtime_s",
                "FAIL",
                worst,
                limit,
                f"writes never came back: the last window was still open after {worst:.3f} s when the "
                "probe stopped",
            )
        )
    else:
        stalls = f", {analysis.stalls} stalled" if analysis.stalls else ""
        how = (
            f"longest of {len(analysis.windows)} window(s): {worst:.3f} s "
            f"({analysis.failed} failed, {analysis.in_doubt} in doubt{stalls})"
        )
        status: VerdictStatus = "PASS" if worst <= limit else "FAIL"
        word = "within" if status == "PASS" else "over"
        out.append(Verdict("write_downtime_s", status, worst, limit, f"{how}, {word} {limit:g} s"))

    lost = analysis.acked_writes_lost
    bound = targets.max_acked_writes_lost
    if lost is None:
        out.append(
            Verdict(
                "acked_writes_lost",
                "ABORTED",
                None,
                bound,
                "the probe's rows could not be read back: the loss is unknown"
                + (f" (drill aborted: {aborted})" if aborted else ""),
            )
        )
    else:
        shown = ", ".join(str(i) for i in (analysis.lost_ids or ())[:20])
        more = "" if lost <= 20 else f" and {lost - 20} more"
        detail = f": ids {shown}{more}" if lost else ""
        status = "PASS" if lost <= bound else "FAIL"
        out.append(
            Verdict(
                "acked_writes_lost",
                status,
                lost,
                bound,
                f"{lost} of {analysis.acked} acknowledged writes missing on read-back{detail} "
                f"(allowed {bound})",
            )
        )

    span = targets.max_drill_s
    if aborted:
        out.append(Verdict("drill_s", "ABORTED", drill_seconds, span, f"drill aborted: {aborted}"))
    elif drill_seconds is None:
        out.append(Verdict("drill_s", "FAIL", None, span, "the drill did not finish"))
    else:
        status = "PASS" if drill_seconds <= span else "FAIL"
        word = "within" if status == "PASS" else "over"
        reason = f"{drill_seconds:.3f} s, {word} {span:g} s"
        out.append(Verdict("drill_s", status, drill_seconds, span, reason))
    return tuple(out)


def overall(found: Iterable[Verdict]) -> VerdictStatus:
    """The drill's verdict: ABORTED if any target was, else FAIL if any failed, else PASS."""
    statuses = {v.status for v in found}
    if "ABORTED" in statuses:
        return "ABORTED"
    return "FAIL" if "FAIL" in statuses else "PASS"


__all__ = [
    "DEFAULT_STALL_THRESHOLD_S",
    "DowntimeWindow",
    "Outcome",
    "ProbeAnalysis",
    "ProbeAttempt",
    "Verdict",
    "VerdictStatus",
    "analyse",
    "overall",
    "verdicts",
]
