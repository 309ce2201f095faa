"""The runbook catalog: typed models of an estate, loaded from `runbooks/*.yaml`."""

from __future__ import annotations

from cloudops.catalog.errors import CatalogError, CatalogIssue
from cloudops.catalog.loader import (
    CatalogSet,
    LoadedCatalog,
    catalog_paths,
    load_catalog_file,
    load_catalogs,
)
from cloudops.catalog.models import Catalog, Database, Fleet, Host, Repository

__all__ = [
    "Catalog",
    "CatalogError",
    "CatalogIssue",
    "CatalogSet",
    "Database",
    "Fleet",
    "Host",
    "LoadedCatalog",
    "Repository",
    "catalog_paths",
    "load_catalog_file",
    "load_catalogs",
]
