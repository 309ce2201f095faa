"""A human approval step for dangerous runbooks, given by someone other than whoever started the run.

Built on Airflow's ApprovalOperator (the run waits in "awaiting input"; approve or reject it from the
task's page in the Airflow UI, or through the REST API). On top of it:
- the step asks only when the run needs it (``needed(context)``; otherwise it passes at once and
  says why in its log);
- the approver must be a second person: an approval by the user who triggered the run fails the step
  (nothing destructive has happened yet; trigger again and ask a colleague);
- every decision goes into the evidence ledger as an ``approval`` record: subject, decision,
  approver, requester, when, and whether it was accepted;
- the wait is bounded (``response_timeout``): no answer in time fails the step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from cloudops.errors import CloudOpsError
from cloudops.evidence.recorder import record_fact
from cloudops.evidence.runs import APPROVAL

log = logging.getLogger(__name__)


def approval_refusal(requester: str | None, approver: str | None, decision: str) -> str | None:
    """Why an approval does not count (None when it does): an approval must come from a second person."""
    if decision != ApprovalOperator.APPROVE:
        return None
    if not approver:
        return "the approval names no approver"
    if requester and approver.strip().lower() == requester.strip().lower():
        return f"{approver} triggered this run and cannot approve it: a second person must approve this step"
    return None


class SecondPersonApproval(ApprovalOperator):
    """Wait for a second person's approval when ``needed(context)`` says so (see the module docstring).

    :param needed: returns None when no approval is needed, else the body (Markdown) the approver reads.
    """

    def __init__(
        self,
        *,
        needed: Callable[[dict[str, Any]], str | None],
        response_timeout: timedelta = timedelta(hours=4),
        **kwargs: Any,
    ) -> None:
        super().__init__(response_timeout=response_timeout, **kwargs)
        self.needed = needed

    def execute(self, context: Any) -> Any:
        body = self.needed(context)
        if body is None:
            log.info("no approval needed for this run: going on")
            return None
        self.body = body
        requester = getattr(context["dag_run"], "triggering_user_name", None)
        log.info(
            "waiting up to %s for a second person's approval (requested by %s): %s",
            self.response_timeout,
            requester or "the scheduler",
            self.subject,
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" not in event:
            responder = event.get("responded_by_user") or {}
            approver = responder.get("name") or responder.get("id")
            decision = (event.get("chosen_options") or [""])[0]
            requester = getattr(context["dag_run"], "triggering_user_name", None)
            refusal = approval_refusal(requester, approver, decision)
            responded_at = event.get("responded_at")
            record_fact(
                APPROVAL,
                context,
                {
                    "subject": self.subject,
                    "decision": decision,
                    "approver": approver,
                    "requested_by": requester,
                    "responded_at": responded_at,  # the recorder writes datetimes as ISO text
                    "accepted": refusal is None,
                    "refusal": refusal,
                },
            )
            if refusal:
                raise CloudOpsError(f"approval refused: {refusal}")
            log.info("%s by %s (requested by %s)", decision, approver, requester)
        return super().execute_complete(context, event)


__all__ = ["SecondPersonApproval", "approval_refusal"]
