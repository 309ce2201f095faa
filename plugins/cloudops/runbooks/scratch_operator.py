"""The restore drill's ``restore`` task: a PythonOperator whose ``on_kill`` stops the scratch cluster.

Airflow stops a task with SIGTERM (a timeout, a cleared or marked task, a worker's warm shutdown) and
calls the operator's ``on_kill``; none of the task's ``finally`` blocks run then. A physical drill's
scratch server lives in this task only (:func:`cloudops.runbooks.restore_drill.drill_physical`), so
``on_kill`` stops and removes every scratch cluster this task process started. A SIGKILL runs nothing
at all: the kernel's parent-death signal ends the server (``die_with_task``), and the retry, the
teardown and the next drill's ``prepare`` find what is left through the ledger and the folder.
"""

from __future__ import annotations

import logging

from airflow.providers.standard.operators.python import PythonOperator

log = logging.getLogger(__name__)


class PostgresRestoreScratchClusterOperator(PythonOperator):
    """Run the restore step; on kill, stop the scratch clusters it started (a logical restore starts
    none: its loader dies with the task by its own parent-death signal)."""

    def on_kill(self) -> None:
        from cloudops.restore.physical import stop_clusters_started_here

        stopped = stop_clusters_started_here()
        log.warning(
            "task killed: stopped scratch cluster(s) %s", ", ".join(stopped) or "none (none was started)"
        )
        super().on_kill()


__all__ = ["PostgresRestoreScratchClusterOperator"]
