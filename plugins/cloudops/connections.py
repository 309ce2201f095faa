"""Airflow connections, looked up by the ids the catalog names, with errors that say who needs them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloudops.errors import ConnectionMissingError

if TYPE_CHECKING:
    from airflow.sdk import Connection


def get_connection(conn_id: str | Connection, used_by: str) -> Connection:
    """Return the Airflow connection ``conn_id``; a connection given as such is returned as it is.

    Taking a connection too lets code that accepts a conn_id reach a server that exists only for a
    while and has no stored connection (a restore drill's scratch cluster).

    :param used_by: what needs it (``database 'orders_pg'``), named in the error when it is missing.
    :raises ConnectionMissingError: when no secrets backend, environment variable or metadata
        database defines the connection.
    """
    if not isinstance(conn_id, str):
        return conn_id
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        raise ConnectionMissingError(conn_id, used_by) from None


__all__ = ["get_connection"]
