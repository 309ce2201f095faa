"""The catalog's JSON Schema, generated from the models for editors and external validators."""

from __future__ import annotations

import json

from cloudops.catalog.models import Catalog

SCHEMA_ID = "https://cloudops-runbooks.invalid/schema/catalog.schema.json"


def catalog_schema() -> dict[str, object]:
    """Return the JSON Schema of one catalog file."""
    schema = Catalog.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def catalog_schema_text() -> str:
    """The schema as the stable text committed in ``runbooks/schema/``."""
    return json.dumps(catalog_schema(), indent=2, sort_keys=True) + "\n"


__all__ = ["catalog_schema", "catalog_schema_text"]
