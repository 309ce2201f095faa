"""A human approval for a dangerous step, given by someone other than whoever started the run, checked
by the step that makes the change, in the same task.

Built on Airflow's ApprovalOperator (the task waits in "awaiting input"; approve or reject it from the
task's page in the Airflow UI, or through the REST API). On top of it:
- the step asks only when the run needs it (``needed(context)``); otherwise it does its work (``act``)
  at once and says why in its log;
- the change (``act``) runs inside the same task, on the resume that carries the answer. Airflow 3.3
  builds that resume event from the task's own Human-in-the-loop record (decision, the responding user
  as the API server authenticated them, when): nothing a user can edit through the REST API. Marking
  the step "success" by hand, or writing its XCom, never reaches ``act``. (Task code cannot read
  another task's HITL record: the execution API's ``/hitlDetails/{ti_id}`` routes answer only the task
  instance itself, scope ``ti:self``, in task-sdk 1.3.2; so the check lives where the record arrives.)
- the approval counts only when it is an accepted *Approve*, by a user other than the requester, from
  the estate's approver list when the catalog has one (``approvals.approvers`` / ``approver_role``:
  passed to Airflow as ``assigned_users``, so Airflow refuses anyone else's answer, and checked again
  here). A run whose requester is unknown (started by the scheduler, the CLI or an API service account
  with no user name) is refused before anyone is asked: no second person can be told apart;
- a *Reject* fails the step (and so the run): nothing was changed, and the run says so;
- every decision goes into the evidence ledger as an ``approval`` record: subject, decision,
  approver, requester, when, and whether it was accepted;
- the wait is bounded (``response_timeout``): no answer in time fails the step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from cloudops.errors import CloudOpsError
from cloudops.evidence.recorder import record_fact
from cloudops.evidence.runs import APPROVAL

log = logging.getLogger(__name__)

APPROVE = ApprovalOperator.APPROVE
REJECT = ApprovalOperator.REJECT


@dataclass(frozen=True)
class Approval:
    """One answer to an approval step, as Airflow's Human-in-the-loop record holds it."""

    run_id: str
    decision: str
    approver_id: str | None
    approver_name: str | None
    requested_by: str | None
    responded_at: str | None = None

    @property
    def approver(self) -> str | None:
        """The approver as people read it (the name, else the id)."""
        return self.approver_name or self.approver_id

    def refusal(self, approvers: Collection[str] | None) -> str | None:
        """Why this answer does not allow the change (None when it does), against the auth manager's
        users as they are now."""
        return approval_refusal(
            self.requested_by,
            self.approver_id,
            self.approver_name,
            self.decision,
            approvers,
            known_users=airflow_users(),
        )

    def describe(self) -> str:
        return (
            f"run {self.run_id}: requested by {self.requested_by or 'an unknown user'}, "
            f"answered {self.decision or 'nothing'} by {self.approver or 'nobody'}"
        )


def approval_refusal(
    requester: str | None,
    approver_id: str | None,
    approver_name: str | None,
    decision: str,
    approvers: Collection[str] | None = None,
    *,
    known_users: Collection[str] | None = None,
) -> str | None:
    """Why an answer does not allow the change (None when it does): it must be an Approve, for a run
    a known Airflow user started, by a second person, from the approver list when there is one.

    :param approvers: user ids or names allowed to approve; None or empty: anyone but the requester.
    :param known_users: the auth manager's user names when they can be read (:func:`airflow_users`).
    """
    if decision != APPROVE:
        return f"the answer is {decision or 'missing'!r}, not {APPROVE!r}"
    unknown = requester_refusal(requester, known_users)
    if unknown or requester is None:
        return unknown or "the run's requester is unknown"
    who = {name.strip().lower() for name in (approver_id, approver_name) if name and name.strip()}
    if not who:
        return "the approval names no approver"
    if requester.strip().lower() in who:
        return (
            f"{approver_name or approver_id} triggered this run and cannot approve it: a second person "
            "must approve this step"
        )
    if approvers and not who & {name.strip().lower() for name in approvers}:
        return (
            f"{approver_name or approver_id} is not on this estate's approver list "
            f"({', '.join(sorted(approvers))})"
        )
    return None


def requester_refusal(requester: str | None, known_users: Collection[str] | None) -> str | None:
    """Why the run's requester cannot be told apart from an approver (None when they can).

    A run started through the UI or the REST API carries the logged-in user's name. One started by
    the scheduler carries none, and one started with ``airflow dags trigger`` carries the *operating
    system* user's name (``root``), which anyone with a shell can be, approver included.
    """
    if requester is None or not requester.strip():
        return (
            "the run's requester is unknown (started by the scheduler or an API service account without a "
            "user name): a second person cannot be told apart; trigger it as yourself in the UI"
        )
    if known_users is not None and requester.strip().lower() not in {u.lower() for u in known_users}:
        return (
            f"the run's requester {requester!r} is not an Airflow user (a run started with `airflow dags "
            "trigger` carries the shell's user name): a second person cannot be told apart; trigger it as "
            "yourself in the UI"
        )
    return None


def airflow_users() -> list[str] | None:
    """The user names of the auth manager, when task code can read them: SimpleAuthManager's
    configuration (no users at all when it lets everyone in as admin). None under other auth managers,
    whose users live in their own store: there the requester's name is taken as Airflow recorded it.
    """
    from airflow.configuration import conf

    if not conf.get("core", "auth_manager", fallback="").endswith("SimpleAuthManager"):
        return None
    if conf.getboolean("core", "simple_auth_manager_all_admins", fallback=False):
        return []
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    return sorted(user.username for user in SimpleAuthManager.get_users())


def users_of_role(role: str) -> list[str]:
    """The users of an Airflow role, as SimpleAuthManager's configuration lists them.

    Other auth managers keep roles in their own store, out of reach of task code: list the approvers
    by id (``approvals.approvers``) there.

    :raises CloudOpsError: the auth manager is not SimpleAuthManager.
    """
    from airflow.configuration import conf

    manager = conf.get("core", "auth_manager", fallback="")
    if not manager.endswith("SimpleAuthManager"):
        raise CloudOpsError(
            f"approvals.approver_role {role!r}: roles resolve to users only under SimpleAuthManager "
            f"(this Airflow uses {manager or 'an unknown auth manager'}); list the approvers by user id in "
            "approvals.approvers instead"
        )
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    return sorted(
        user.username for user in SimpleAuthManager.get_users() if (user.role or "").lower() == role.lower()
    )


class SecondPersonApproval(ApprovalOperator):
    """Do ``act`` once a second person approved, when ``needed(context)`` says so (see the module
    docstring); ``act``'s result is the step's XCom.

    :param needed: returns None when no approval is needed, else the body (Markdown) the approver reads.
    :param act: the change, called with the context and the accepted :class:`Approval` (None when no
        approval was needed). It must check the approval again right before acting.
    :param approvers: returns the user ids allowed to approve this run, or None for anyone but the
        requester; called when asking and again on the answer.
    """

    def __init__(
        self,
        *,
        needed: Callable[[dict[str, Any]], str | None],
        act: Callable[[dict[str, Any], Approval | None], Any],
        approvers: Callable[[dict[str, Any]], list[str] | None] = lambda context: None,
        response_timeout: timedelta = timedelta(hours=4),
        **kwargs: Any,
    ) -> None:
        # A Reject fails the step: the run did not do what was asked, and must not read "success".
        super().__init__(response_timeout=response_timeout, fail_on_reject=True, **kwargs)
        self.needed = needed
        self.act = act
        self.approvers = approvers

    def execute(self, context: Any) -> Any:
        body = self.needed(context)
        if body is None:
            log.info("no approval needed for this run: going on")
            return self.act(context, None)
        requester = getattr(context["dag_run"], "triggering_user_name", None)
        refusal = requester_refusal(requester, airflow_users())
        if refusal:
            self._record(context, Approval(context["run_id"], "", None, None, requester), refusal)
            raise CloudOpsError(
                f"approval refused before asking: run {context['run_id']}, requested by "
                f"{requester or 'an unknown user'}, approved by nobody: {refusal}"
            )
        allowed = self.approvers(context)
        if allowed:
            # Airflow itself then refuses an answer by anyone else (403); the answer is checked again.
            self.assigned_users = [{"id": user, "name": user} for user in allowed]
        self.body = body + (f"\n\nApprovers: {', '.join(allowed)}." if allowed else "")
        log.info(
            "waiting up to %s for a second person's approval (requested by %s, approvers: %s): %s",
            self.response_timeout,
            requester,
            ", ".join(allowed) if allowed else "anyone but the requester",
            self.subject,
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" in event:
            return super().execute_complete(context, event)  # raises: a timeout or a trigger error
        self.validate_chosen_options(event.get("chosen_options") or [])
        responder = event.get("responded_by_user") or {}
        responded_at = event.get("responded_at")
        approval = Approval(
            run_id=context["run_id"],
            decision=(event.get("chosen_options") or [""])[0],
            approver_id=responder.get("id"),
            approver_name=responder.get("name"),
            requested_by=getattr(context["dag_run"], "triggering_user_name", None),
            responded_at=responded_at.isoformat() if isinstance(responded_at, datetime) else responded_at,
        )
        refusal = None if approval.decision == REJECT else approval.refusal(self.approvers(context))
        self._record(context, approval, refusal)
        if approval.decision == REJECT:
            raise CloudOpsError(f"rejected: {approval.describe()}; nothing was changed")
        if refusal:
            raise CloudOpsError(f"approval refused: {approval.describe()}: {refusal}; nothing was changed")
        log.info("%s: accepted", approval.describe())
        return self.act(context, approval)

    def _record(self, context: Any, approval: Approval, refusal: str | None) -> None:
        record_fact(
            APPROVAL,
            context,
            {
                "subject": self.subject,
                "decision": approval.decision or None,
                "approver": approval.approver,
                "requested_by": approval.requested_by,
                "responded_at": approval.responded_at,
                "accepted": approval.decision == APPROVE and refusal is None,
                "refusal": refusal,
            },
        )


__all__ = [
    "APPROVE",
    "REJECT",
    "Approval",
    "SecondPersonApproval",
    "airflow_users",
    "approval_refusal",
    "requester_refusal",
    "users_of_role",
]
