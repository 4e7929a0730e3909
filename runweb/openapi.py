"""GET /openapi.yaml and /openapi.json: runweb's API described in OpenAPI (runweb/openapi.yaml).

The document is a file shipped in the package, written by hand next to the
routes it describes; tests/test_runweb_openapi.py checks it validates and
names exactly the routes of ``runweb.app.ROUTES``, so it cannot drift.

The batch request's fields and the batch view's asked fields are declared once
(simx/records.py, StartBatch in simx/protocol.py): at load, every such field the
file does not describe gets a schema derived from its kind (``derive``), so a new
field is documented without an edit; the file refines those it names (bounds
tighter than the kind's, descriptions).  tests/test_declarations.py holds the two to
the same fields.
"""
from __future__ import annotations

import functools
from pathlib import Path

import falcon
import yaml

from simx import protocol, records

PATH = Path(__file__).with_name("openapi.yaml")
COLUMN_TYPES = {"i": "integer", "f": "number", "s": "string", "j": "object"}


@functools.lru_cache(maxsize=1)
def document() -> dict:
    return derive(yaml.safe_load(PATH.read_text(encoding="utf-8")))


def kind_schema(kind: protocol.Kind, doc: str = "") -> dict:
    """The JSON schema of a message field's kind."""
    types = kind.types
    if types == (str,):
        schema = {"type": "string", **({"maxLength": kind.hi - 1} if kind.hi is not None else {})}
    elif types == (bool,):
        schema = {"type": "boolean"}
    elif types == (int,):
        schema = {"type": "integer", "minimum": kind.lo, "maximum": kind.hi - 1}
    elif types == (int, float):
        schema = {"type": "number", "minimum": kind.lo, "maximum": kind.hi}
    elif types in ((dict,), (list,)):
        schema = {"type": "object" if dict in types else "array"}
    else:
        schema = {}
    if kind.nullable and schema:
        schema["nullable"] = True
    return {**schema, **({"description": doc} if doc else {})}


def derive(doc: dict) -> dict:
    """Fill in the declared fields the hand-written schemas leave out."""
    schemas = doc["components"]["schemas"]
    request = schemas["BatchRequest"]["properties"]
    for name, kind in protocol.request_fields("StartBatch").items():
        field = records.BATCH.asked().get(name)
        request.setdefault(name, kind_schema(kind, records.BATCH[name].doc if field is not None else ""))
    view = schemas["Batch"]["properties"]
    for f in records.BATCH.shown("submit"):
        if f.ask is not None and f.name not in view:
            view[f.name] = {"type": COLUMN_TYPES[f.type], "nullable": True, **({"description": f.doc} if f.doc else {})}
            schemas["Batch"]["required"].append(f.name)   # a view always has it (null when not stored)
    workers = schemas["Worker"]["properties"]
    for f in records.WORKER.shown("submit"):
        if f.ask is not None and f.name not in workers:
            workers[f.name] = {"type": COLUMN_TYPES[f.type], "nullable": True, **({"description": f.doc} if f.doc else {})}
    return doc


class Document:
    """The OpenAPI document, as YAML (/openapi.yaml) or JSON (/openapi.json) whatever Accept says."""

    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_YAML + "; charset=utf-8"
        resp.media = document()

    def on_get_json(self, req, resp):
        resp.content_type = falcon.MEDIA_JSON
        resp.media = document()
