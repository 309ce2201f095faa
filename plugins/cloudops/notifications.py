"""Alerts to an estate's notification targets (SMTP e-mail, SNS topics) when a runbook step fails.

An alert names the estate, the target (database, fleet), the step, what happened and what to do next,
so that whoever is on call can act from the message alone. Every target is tried: one unreachable
target never hides the alert from the others, and a failed delivery is logged, never raised into the
runbook (the runbook's own failure is what matters).
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseNotifier

from cloudops.catalog import Catalog, load_catalog_file
from cloudops.catalog.models import Notification, SmtpNotification, SnsNotification

log = logging.getLogger(__name__)

# SNS caps subjects at 100 characters and refuses line breaks in them.
SNS_SUBJECT_LIMIT = 100


@dataclass(frozen=True)
class Alert:
    """What to tell the on-call engineer."""

    subject: str
    body: str


@dataclass(frozen=True)
class Delivery:
    """The outcome of sending one alert to one target."""

    target: str
    delivered: bool
    detail: str = ""


def failure_alert(
    *, estate: str, target: str, runbook: str, step: str, error: str, run_id: str, next_action: str
) -> Alert:
    """Compose the alert for a failed runbook step."""
    subject = f"[cloudops][{estate}] {runbook} failed at {step} ({target})"
    body = (
        f"Runbook {runbook} failed for {target} in estate {estate}.\n\n"
        f"Step: {step}\n"
        f"Run: {run_id}\n"
        f"Error: {error}\n\n"
        f"Next action: {next_action}\n"
    )
    return Alert(subject, body)


def _send_smtp(target: SmtpNotification, alert: Alert) -> None:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=target.smtp_conn_id) as hook:
        hook.send_email_smtp(
            to=list(target.to),
            subject=alert.subject,
            html_content=f"<pre>{html.escape(alert.body)}</pre>",
        )


def _send_sns(target: SnsNotification, alert: Alert) -> None:
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    subject = " ".join(alert.subject.split())[:SNS_SUBJECT_LIMIT]
    SnsHook(aws_conn_id=target.aws_conn_id).publish_to_target(
        target_arn=target.topic_arn, message=alert.body, subject=subject
    )


def send_alert(targets: Sequence[Notification], alert: Alert) -> list[Delivery]:
    """Send ``alert`` to every target; return one delivery outcome per target."""
    deliveries = []
    for target in targets:
        try:
            if isinstance(target, SmtpNotification):
                _send_smtp(target, alert)
            else:
                _send_sns(target, alert)
        except Exception as error:  # any provider or network error: log it, try the next target
            log.error("alert not delivered to %s (%s): %s", target.name, target.kind, error)
            deliveries.append(Delivery(target.name, False, f"{type(error).__name__}: {error}"))
        else:
            log.info("alert delivered to %s (%s): %s", target.name, target.kind, alert.subject)
            deliveries.append(Delivery(target.name, True))
    if not targets:
        log.warning("no notification targets in the catalog: alert only logged: %s", alert.subject)
    return deliveries


class RunbookFailureNotifier(BaseNotifier):
    """``on_failure_callback`` of runbook tasks: alert the estate's targets, naming the failed step.

    :param catalog_file: the catalog file the DAG was built from (targets are read at alert time).
    :param estate: the estate the runbook belongs to.
    :param target: what the runbook acts on, e.g. ``database orders_pg``.
    :param next_actions: by task id, what on-call should do next; ``"*"`` is the fallback.
    """

    def __init__(self, *, catalog_file: str, estate: str, target: str, next_actions: dict[str, str]) -> None:
        super().__init__()
        self.catalog_file = catalog_file
        self.estate = estate
        self.target = target
        self.next_actions = next_actions

    def notify(self, context: Any) -> None:
        """Build the alert from the failed task's context and send it."""
        ti = context["ti"]
        step = ti.task_id
        error = context.get("exception")
        alert = failure_alert(
            estate=self.estate,
            target=self.target,
            runbook=ti.dag_id,
            step=step,
            error=str(error).splitlines()[0] if error else "unknown (see the task log)",
            run_id=ti.run_id,
            next_action=self.next_actions.get(step) or self.next_actions.get("*", "read the task log"),
        )
        send_alert(_targets(self.catalog_file, self.estate), alert)


def _targets(catalog_file: str, estate: str) -> list[Notification]:
    catalog: Catalog = load_catalog_file(catalog_file)
    if catalog.estate != estate:
        log.error(
            "%s now describes estate %s, not %s: alert only logged", catalog_file, catalog.estate, estate
        )
        return []
    return list(catalog.notifications)


async def deadline_missed(
    *, catalog_file: str, estate: str, target: str, runbook: str, deadline: str, next_action: str
) -> None:
    """Deadline Alert callback (runs in the triggerer): the runbook has not finished in time."""
    alert = Alert(
        f"[cloudops][{estate}] {runbook} missed its deadline ({target})",
        f"Runbook {runbook} for {target} in estate {estate} has not finished within {deadline}.\n\n"
        f"Next action: {next_action}\n",
    )
    await asyncio.to_thread(send_alert, _targets(catalog_file, estate), alert)


__all__ = [
    "Alert",
    "Delivery",
    "RunbookFailureNotifier",
    "deadline_missed",
    "failure_alert",
    "send_alert",
]
