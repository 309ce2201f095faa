"""Alerts to an estate's notification targets (SMTP e-mail, SNS topics) when a runbook step fails.

An alert names the estate, the target (database, fleet), the step, what happened and what to do next,
so that whoever is on call can act from the message alone. Every target is tried: one unreachable
target never hides the alert from the others, and a failed delivery is logged, never raised into the
runbook (the runbook's own failure is what matters).

The error text comes from a driver, a host or an SDK: it is masked (``cloudops.secrets.mask_secrets``)
before it goes into any message, because e-mail and SNS leave the deployment.

Which targets: a runbook of one estate alerts that estate's ``notifications``. A runbook that serves
every estate (``evidence_ship``: the ledger holds every estate's evidence; ``restore_request`` when its
form names no catalog database) alerts every estate's targets, each destination once: there is no
separate, global setting to forget.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseNotifier

from cloudops.catalog import Catalog, load_catalog_file, load_catalogs
from cloudops.catalog.models import Notification, SmtpNotification, SnsNotification
from cloudops.secrets import MASK, mask_secrets

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
    """Compose the alert for a failed runbook step; the error is masked, never sent as it came."""
    subject = f"[cloudops][{estate}] {runbook} failed at {step} ({target})"
    shown = masked_error(error)
    body = (
        f"Runbook {runbook} failed for {target} in estate {estate}.\n\n"
        f"Step: {step}\n"
        f"Run: {run_id}\n"
        f"Error: {shown}\n\n"
        f"Next action: {next_action}\n"
    )
    return Alert(subject, body)


def masked_error(error: str) -> str:
    """The error line as it may leave the deployment: secret-looking parts masked."""
    shown = mask_secrets(error)
    if shown == MASK:
        return f"{MASK} (the message looked like it held a secret: read it in the task log)"
    return str(shown)


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
    """``on_failure_callback`` of every runbook task: alert the notification targets, naming the step.

    Attached through ``cloudops.runbooks.common.default_args``; the DAG policy test checks every task.

    :param catalog_file: the catalog file the DAG was built from (targets are read at alert time);
        None for a DAG that serves every estate.
    :param estate: the estate the runbook belongs to; None for a DAG that serves every estate.
    :param target: what the runbook acts on, e.g. ``database orders_pg``.
    :param next_actions: by task id, what on-call should do next; ``"*"`` is the fallback.
    :param database_param: the run's conf key naming a catalog database: when it names one, that
        database's estate is alerted (and named) instead of every estate.
    """

    def __init__(
        self,
        *,
        catalog_file: str | None,
        estate: str | None,
        target: str,
        next_actions: dict[str, str],
        database_param: str | None = None,
    ) -> None:
        super().__init__()
        self.catalog_file = catalog_file
        self.estate = estate
        self.target = target
        self.next_actions = next_actions
        self.database_param = database_param

    def notify(self, context: Any) -> None:
        """Build the alert from the failed task's context and send it."""
        ti = context["ti"]
        step = ti.task_id
        error = context.get("exception")
        try:
            estate, target, targets = self._recipients(context)
        except Exception as problem:  # an unreadable catalog must not hide the failure: log it at least
            log.error("alert for %s.%s not sent, its targets are unknown: %s", ti.dag_id, step, problem)
            return
        alert = failure_alert(
            estate=estate,
            target=target,
            runbook=ti.dag_id,
            step=step,
            error=str(error).strip().splitlines()[0] if error and str(error).strip() else _unknown(error),
            run_id=ti.run_id,
            next_action=self.next_actions.get(step) or self.next_actions.get("*", "read the task log"),
        )
        send_alert(targets, alert)

    def _recipients(self, context: Any) -> tuple[str, str, list[Notification]]:
        """The estate named in the alert, the target, and whom to tell."""
        if self.catalog_file is not None and self.estate is not None:
            return self.estate, self.target, _targets(self.catalog_file, self.estate)
        if self.database_param:
            dag_run = context.get("dag_run")
            database = ((getattr(dag_run, "conf", None) or {}) if dag_run else {}).get(self.database_param)
            for loaded in load_catalogs().catalogs:
                if any(d.name == database for d in loaded.catalog.databases):
                    return loaded.catalog.estate, f"database {database}", list(loaded.catalog.notifications)
        return "all estates", self.target, every_estates_targets()


def _unknown(error: object) -> str:
    return f"{type(error).__name__} (see the task log)" if error else "unknown (see the task log)"


def every_estates_targets() -> list[Notification]:
    """Every valid catalog file's notification targets, each destination once."""
    seen: dict[tuple[str, ...], Notification] = {}
    for loaded in load_catalogs().catalogs:
        for target in loaded.catalog.notifications:
            key = (
                ("smtp", target.smtp_conn_id, *sorted(target.to))
                if isinstance(target, SmtpNotification)
                else ("sns", target.aws_conn_id, target.topic_arn)
            )
            seen.setdefault(key, target)
    return list(seen.values())


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
    "every_estates_targets",
    "failure_alert",
    "masked_error",
    "send_alert",
]
