"""DAG builders, one module per runbook kind: which steps a runbook has and how they are wired.

The modules in ``dags/`` only call :func:`cloudops.runbooks.common.build_dags` with a builder from
here, so that parsing stays fast and everything that acts lives in tested library code.
"""
